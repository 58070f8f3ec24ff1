"""MPC strategy: horizon, re-planning, dispatch rules at the meter, and a day on the twin."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from openbess.config import load_site, parse_site
from openbess.contract import ContactorState, Mode, Telemetry
from openbess.data import read_household, read_prices
from openbess.ems.live import MeasuredForecastProvider
from openbess.ems.mpc import (
    MpcStrategy,
    PerfectForecast,
    forecast_arrays,
    twin_perfect_forecast,
)
from openbess.ems.optimizer import OptimizerConfig
from openbess.ems.realtime import RealtimeConfig
from openbess.gate import NO_DECISION
from openbess.plant import SiteMeasurements
from openbess.simulate import build_site, run_kpis

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 900.0)

SITE = parse_site(
    {
        "battery": {
            "capacity_wh": 10000,
            "max_charge_power_w": 5000,
            "max_discharge_power_w": 4750,
            "soc_min": 0.1,
            "soc_max": 0.9,
        },
        "grid": {"max_import_w": 9000, "max_export_w": 6000},
    }
)


def telemetry(soc: float = 0.5, **kw) -> Telemetry:
    base = {
        "time_s": T0,
        "soc": soc,
        "soc_cell_min": soc,
        "soc_cell_max": soc,
        "soh": 1.0,
        "energy_available_wh": soc * 10000.0,
        "capacity_wh": 10000.0,
        "pack_voltage_v": 52.0,
        "pack_current_a": 0.0,
        "cell_voltage_min_v": 3.3,
        "cell_voltage_max_v": 3.31,
        "cell_voltage_avg_v": 3.305,
        "temperature_min_degc": 20.0,
        "temperature_max_degc": 21.0,
        "temperature_avg_degc": 20.5,
        "charge_current_limit_a": 100.0,
        "discharge_current_limit_a": 100.0,
        "charge_power_limit_w": 5000.0,
        "discharge_power_limit_w": 5000.0,
        "contactor": ContactorState.CLOSED,
        "alarms": (),
        "balancing_cells": 0,
        "gate": NO_DECISION,
    }
    base.update(kw)
    return Telemetry(**base)


def meter(grid_w: float, battery_w: float, t: float = T0) -> SiteMeasurements:
    return SiteMeasurements(t, grid_w, 0.0, 0.0, battery_w, 0.3, 0.1)


class Recorder:
    """A forecast provider that records its calls: evening price peak, flat load."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int, float]] = []

    def __call__(self, start_s: float, n: int, step_s: float) -> pd.DataFrame:
        self.calls.append((start_s, n, step_s))
        hour = ((start_s + step_s * np.arange(n)) % 86400.0) / 3600.0
        return pd.DataFrame(
            {
                "load_w": np.full(n, 500.0),
                "pv_w": np.zeros(n),
                "import_price_eur_per_kwh": np.where(hour >= 18, 0.5, 0.1),
                "export_price_eur_per_kwh": np.full(n, 0.0),
            }
        )


def strategy(**kw) -> MpcStrategy:
    opts = kw.pop("options", OptimizerConfig(step_s=900.0, horizon_s=6 * 3600.0))
    kw.setdefault("realtime", RealtimeConfig(ramp_w_per_s=math.inf))  # rules without the ramp
    return MpcStrategy(SITE, kw.pop("forecast", Recorder()), opts, **kw)


def test_horizon_starts_now_and_stays_on_the_step_grid():
    rec = Recorder()
    s = strategy(forecast=rec)
    inputs = s.build_inputs(T0 + 300.0)
    assert rec.calls == [(T0, 24, 900.0)]
    assert inputs.time_s[0] == T0 + 300.0
    assert inputs.step_s[0] == 600.0
    assert np.all(inputs.step_s[1:] == 900.0)
    assert inputs.time_s[1] == T0 + 900.0
    # less than a second before a boundary: the next step starts the horizon
    inputs = s.build_inputs(T0 + 899.5)
    assert rec.calls[-1][0] == T0 + 900.0
    assert inputs.step_s[0] == 900.0


def test_plan_starts_from_the_telemetry():
    s = strategy()
    s.replan(T0, telemetry(soc=0.3, capacity_wh=8000.0, discharge_power_limit_w=1000.0))
    assert s.plan is not None
    assert s.plan.soc_initial == 0.3
    assert s.plan.capacity_wh == 8000.0
    assert s.plan.discharge_power_w[0] <= 1000.0 + 1e-6
    assert s.plans == 1


def test_replans_when_the_soc_departs_from_the_plan():
    s = strategy()
    s.replan(T0, telemetry(soc=0.5))
    planned = s.plan.soc_at(T0 + 120.0)
    s.dispatch(T0 + 120.0, telemetry(soc=planned + 0.01), meter(0.0, 0.0, T0 + 120.0))
    assert (s.plans, s.replans_on_deviation) == (1, 0)
    s.dispatch(T0 + 120.0, telemetry(soc=planned + 0.2), meter(0.0, 0.0, T0 + 120.0))
    assert (s.plans, s.replans_on_deviation) == (2, 1)
    assert s.plan.soc_initial == pytest.approx(planned + 0.2)
    # not again within min_replan_interval_s
    s.dispatch(T0 + 130.0, telemetry(soc=0.9), meter(0.0, 0.0, T0 + 130.0))
    assert s.plans == 2


def fixed_plan(s: MpcStrategy, battery_w: float, import_w: float, export_w: float) -> None:
    s.replan(T0, telemetry())
    n = s.plan.n_steps
    s.plan = dataclasses.replace(
        s.plan,
        battery_power_w=np.full(n, battery_w),
        grid_import_w=np.full(n, import_w),
        grid_export_w=np.full(n, export_w),
        soc=np.full(n, 0.5),
        soc_initial=0.5,
    )


@pytest.mark.parametrize(
    ("plan", "grid_w", "battery_w", "expected_w"),
    [
        # the plan balances the site: keep the grid at zero whatever the load does
        ((0.0, 0.0, 0.0), 700.0, 300.0, 1000.0),
        ((0.0, 0.0, 0.0), -1200.0, 0.0, -1200.0),
        # the plan charges from the grid: follow the battery power, the grid takes the error
        ((-3000.0, 3500.0, 0.0), 4200.0, -3000.0, -3000.0),
        # unexpected PV surplus while the plan imports: soak it up instead of exporting
        ((-1000.0, 1500.0, 0.0), -1500.0, -1000.0, -2500.0),
        # the plan exports 2 kW: more PV than forecast is stored, not exported
        ((3000.0, 0.0, 2000.0), -4000.0, 3000.0, 1000.0),
        # a load surge: discharge to keep the import at the 9 kW connection limit
        ((0.0, 1000.0, 0.0), 10000.0, 0.0, 1000.0),
    ],
)
def test_dispatch_follows_the_plan_and_absorbs_errors_at_the_meter(
    plan, grid_w, battery_w, expected_w
):
    s = strategy()
    fixed_plan(s, *plan)
    cmd = s.dispatch(T0 + 10.0, telemetry(), meter(grid_w, battery_w, T0 + 10.0))
    assert cmd.mode is Mode.POWER
    assert cmd.power_w == pytest.approx(expected_w)
    assert cmd.valid_until_s == pytest.approx(T0 + 10.0 + s.validity_s)


def test_dispatch_respects_the_export_limit_and_the_bms():
    s = strategy()
    fixed_plan(s, 4000.0, 0.0, 3000.0)
    # PV surplus of 3 kW: discharging 4 kW would export 7 kW > 6 kW limit (and > planned 3 kW)
    cmd = s.dispatch(T0 + 1.0, telemetry(), meter(-7000.0, 4000.0, T0 + 1.0))
    assert cmd.power_w == pytest.approx(0.0)
    fixed_plan(s, 4000.0, 0.0, 0.0)
    cmd = s.dispatch(T0 + 2.0, telemetry(discharge_power_limit_w=800.0), meter(3000.0, 0.0))
    assert cmd.power_w == pytest.approx(800.0)
    cmd = s.dispatch(T0 + 3.0, telemetry(soc=0.1), meter(3000.0, 0.0))
    assert cmd.power_w == 0.0  # at soc_min: no discharge
    fixed_plan(s, -4000.0, 4500.0, 0.0)
    cmd = s.dispatch(T0 + 4.0, telemetry(soc=0.9), meter(4500.0, -4000.0))
    assert cmd.power_w == 0.0  # at soc_max: no charge


def test_demand_charge_caps_the_import_at_the_planned_peak():
    opts = OptimizerConfig(step_s=900.0, horizon_s=3600.0, demand_charge_eur_per_kw=10.0)
    s = strategy(options=opts)
    fixed_plan(s, 0.0, 2000.0, 0.0)
    s.plan = dataclasses.replace(s.plan, peak_import_w=2500.0)
    cmd = s.dispatch(T0 + 1.0, telemetry(), meter(4000.0, 0.0, T0 + 1.0))
    assert cmd.power_w == pytest.approx(1500.0)


def test_a_failing_forecast_does_not_stop_dispatch():
    def broken(start_s: float, n: int, step_s: float) -> dict[str, np.ndarray]:
        return {"load_w": np.zeros(n)}

    s = strategy(forecast=broken)
    with pytest.raises(ValueError, match="no column 'pv_w'"):
        s.replan(T0, telemetry())
    cmd = s.dispatch(T0 + 100.0, telemetry(), meter(600.0, 0.0, T0 + 100.0))
    assert cmd.power_w == pytest.approx(600.0)  # balances the site without a plan
    assert s.plan_failures == 2


def test_forecast_arrays_checks_the_answer():
    with pytest.raises(ValueError, match="has 2 values, need 3"):
        forecast_arrays({c: np.zeros(2) for c in ("load_w", "pv_w")}, 3)


def test_perfect_forecast_averages_held_series_exactly():
    index = pd.date_range("2023-01-01T00:00Z", periods=3, freq="1h")
    frame = pd.DataFrame(
        {
            "load_w": [100.0, 300.0, 500.0],
            "pv_w": [0.0, 0.0, 0.0],
            "import_price_eur_per_kwh": [0.1, 0.2, 0.3],
            "export_price_eur_per_kwh": [0.0, 0.0, 0.0],
        },
        index=index,
    )
    fc = PerfectForecast(frame)
    t = index[0].timestamp()
    out = fc(t + 1800.0, 3, 1800.0)
    assert np.allclose(out["load_w"], [100.0, 300.0, 300.0])
    out = fc(t + 1800.0, 1, 7200.0)
    assert out["import_price_eur_per_kwh"][0] == pytest.approx((0.1 / 2 + 0.2 + 0.3 / 2) / 2)
    with pytest.raises(ValueError, match="outside the series"):
        fc(t, 4, 3600.0)


def test_perfect_forecast_on_the_bundled_series():
    hh = read_household().loc["2024-06-03T00:00Z":"2024-06-03T23:30Z"]
    spot = read_prices("DE_LU")["price_eur_per_kwh"].iloc[: len(hh) // 2].to_numpy()
    frame = pd.DataFrame(
        {
            "load_w": hh["load_w"].to_numpy(),
            "pv_w": hh["pv_w"].to_numpy(),
            "import_price_eur_per_kwh": np.repeat(spot, 2) + 0.15,
            "export_price_eur_per_kwh": np.repeat(spot, 2),
        },
        index=hh.index,
    )
    fc = PerfectForecast(frame)
    out = fc(hh.index[0].timestamp(), 24, 3600.0)
    hourly = hh["load_w"].to_numpy().reshape(24, 2).mean(axis=1)
    assert np.allclose(out["load_w"], hourly)
    assert np.allclose(out["export_price_eur_per_kwh"], spot)


# -- a day on the twin ---------------------------------------------------------------------------

WINTER_START_S = pd.Timestamp("2024-12-02T00:00:00+01:00").timestamp()
STEP_S = 60.0


def run_day(forecast: str | None) -> tuple[dict[str, float], MpcStrategy | None, float]:
    """A winter day at 60 s: self-consumption (None), or the MPC on perfect or model forecasts."""
    cfg = load_site("home")
    if forecast == "model":  # built from the site file, as `openbess run` does
        ems = cfg.ems.model_copy(update={"strategy": "mpc", "forecast": "model"})
        cfg = cfg.model_copy(update={"ems": ems})
    site = build_site(cfg, WINTER_START_S, STEP_S)
    twin = site.twin
    mpc: MpcStrategy | None = None
    if forecast == "perfect":
        mpc = MpcStrategy(
            cfg, twin_perfect_forecast(twin), OptimizerConfig(reserve_soc=cfg.ems.reserve_soc)
        )
        site.controller.strategy = mpc
    elif forecast == "model":
        assert isinstance(site.controller.strategy, MpcStrategy)
        mpc = site.controller.strategy
    soc0 = twin.pack.soc
    for k in range(round(86400.0 / STEP_S) + 1):
        site.controller.cycle(WINTER_START_S + k * STEP_S)
    imp, _ = twin.tariff.prices(WINTER_START_S + np.arange(0.0, 86400.0, 900.0))
    value = cfg.battery.discharge_efficiency * float(np.median(imp))  # EUR per stored kWh
    kpis = run_kpis(site, soc0, 0.0)
    return kpis, mpc, value


@pytest.fixture(scope="module")
def winter_day():
    return run_day("perfect"), run_day(None)


@pytest.fixture(scope="module")
def winter_day_model():
    return run_day("model")


def check_physics_and_limits(k: dict[str, float]) -> None:
    """The invariants of a day on the twin: energy balance, cell and grid limits, no errors."""
    assert k["energy_balance_error_fraction"] < 1e-9
    assert k["cell_limits_respected"] is True
    assert k["ems_errors"] == 0
    assert k["bms_errors"] == 0
    assert k["peak_import_w"] <= 9000.0


def valued_cost(k: dict[str, float], value: float) -> float:
    """Cost of a day with the change of stored energy valued at what it will save later."""
    return k["cost_eur"] - value * k["stored_energy_change_kwh"]


def test_mpc_day_on_the_twin_keeps_the_physics_and_the_limits(winter_day):
    (k, mpc, _), _ = winter_day
    check_physics_and_limits(k)
    assert mpc is not None
    stats = mpc.stats()
    assert stats["plans"] >= 96  # every 15 minutes for a day
    assert stats["plan_failures"] == 0
    assert mpc.plan is not None
    assert mpc.plan.relaxed == ()
    # it really cycled the battery
    assert k["energy_discharged_ac_kwh"] > 5.0
    assert 0.0 < k["soc_end"] < 1.0


def test_mpc_beats_self_consumption_when_prices_vary(winter_day):
    (k_mpc, _, value), (k_sc, _, _) = winter_day
    mpc_cost = valued_cost(k_mpc, value)
    sc_cost = valued_cost(k_sc, value)
    assert mpc_cost < sc_cost - 0.3
    assert k_mpc["savings_eur"] > k_sc["savings_eur"]
    assert math.isfinite(mpc_cost)


def test_mpc_on_model_forecasts_learns_from_the_meter_and_keeps_the_limits(
    winter_day_model, winter_day
):
    k, mpc, value = winter_day_model
    check_physics_and_limits(k)
    assert k["gate_clamped"] == 0
    assert mpc is not None
    assert isinstance(mpc.forecast, MeasuredForecastProvider)
    assert mpc.stats()["plans"] >= 96
    assert mpc.stats()["plan_failures"] == 0
    # the day's 96 intervals were measured by the strategy itself
    assert mpc.forecast.intervals_recorded == 96
    measured = mpc.forecast.measured()
    today = measured[measured.index >= pd.Timestamp(WINTER_START_S, unit="s", tz="UTC")]
    assert len(today) == 96
    assert np.isfinite(today.to_numpy()).all()
    # the plans hedge over the forecasts' own errors of the last days
    assert mpc.plan is not None
    assert mpc.plan.deviation_share is not None
    # and these are forecasts, not the twin's future: the plan's load differs from perfect
    (k_perfect, _, _), (k_sc, _, _) = winter_day
    assert k["cost_eur"] != k_perfect["cost_eur"]
    # still worth more than self-consumption on a day of varying prices
    assert valued_cost(k, value) < valued_cost(k_sc, value)
