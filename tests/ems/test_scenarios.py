"""Plans that hedge against forecast errors: scenarios, the first-step share, residuals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from openbess.config import parse_site
from openbess.contract import ContactorState, Telemetry
from openbess.data.timeseries import DAY_S
from openbess.ems.backtest import _dispatch_target, _Limits
from openbess.ems.forecast import (
    ClearSkyPvForecaster,
    HistoryForecastProvider,
    SeasonalProfileForecaster,
)
from openbess.ems.mpc import MpcStrategy
from openbess.ems.optimizer import (
    OptimizerConfig,
    PlanBattery,
    PlanInputs,
    PlanRequest,
    PlanScenarios,
    PlanSolver,
    optimize,
)
from openbess.ems.realtime import RealtimeConfig
from openbess.gate import NO_DECISION
from openbess.plant import SiteMeasurements

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600.0)
H = 3600.0


def inputs(load_kw, imp, pv_kw=None) -> PlanInputs:
    n = len(load_kw)
    return PlanInputs(
        time_s=T0 + np.arange(n) * H,
        step_s=np.full(n, H),
        load_w=np.asarray(load_kw, float) * 1000.0,
        pv_w=np.asarray(pv_kw if pv_kw is not None else [0.0] * n, float) * 1000.0,
        import_price_eur_per_kwh=np.asarray(imp, float),
        export_price_eur_per_kwh=np.zeros(n),
    )


def battery(soc: float = 0.5) -> PlanBattery:
    return PlanBattery(
        capacity_wh=4000.0,
        soc_initial=soc,
        soc_min=0.0,
        soc_max=1.0,
        max_charge_power_w=5000.0,
        max_discharge_power_w=5000.0,
        charge_efficiency=1.0,
        discharge_efficiency=1.0,
    )


REQ = PlanRequest(max_import_w=9000.0, terminal_value_eur_per_kwh=0.0)


def scenarios(point: PlanInputs, first_step_kw: list[float]) -> PlanScenarios:
    load = np.repeat(point.load_w[None, :], len(first_step_kw), axis=0)
    load[:, 0] = np.asarray(first_step_kw) * 1000.0
    return PlanScenarios(load_w=load, pv_w=np.zeros_like(load))


def test_identical_scenarios_change_nothing():
    inp = inputs([1, 2, 1, 3], [0.2, 0.3, 0.1, 0.5])
    det = optimize(inp, battery(), REQ)
    sc = PlanScenarios(
        load_w=np.repeat(inp.load_w[None, :], 3, axis=0), pv_w=np.zeros((3, inp.n_steps))
    )
    r = optimize(inp, battery(), REQ, scenarios=sc)
    assert r.objective_eur == pytest.approx(det.objective_eur, abs=1e-9)
    assert r.scenarios == 3
    assert r.deviation_share is not None
    assert 0.0 <= r.deviation_share <= 1.0
    assert det.deviation_share is None


def test_the_battery_takes_the_deviation_when_the_present_price_is_the_highest():
    # 2 kWh stored, dear now, cheap later: whatever the load now, the battery should serve it
    inp = inputs([1, 1], [0.5, 0.1])
    r = optimize(inp, battery(0.5), REQ, scenarios=scenarios(inp, [0.5, 1.5]))
    assert r.battery_power_w[0] == pytest.approx(1000.0)
    assert r.deviation_share == pytest.approx(1.0)


def test_the_grid_takes_the_deviation_when_the_energy_is_worth_more_later():
    # 1 kWh stored, exactly what the dear hour needs: a surprise now is met from the grid
    inp = inputs([1, 1], [0.2, 0.6])
    r = optimize(inp, battery(0.25), REQ, scenarios=scenarios(inp, [0.5, 1.5]))
    assert r.battery_power_w[0] == pytest.approx(0.0, abs=1e-6)
    assert r.deviation_share == pytest.approx(0.0, abs=1e-9)
    assert r.battery_power_w[1] == pytest.approx(1000.0)


def test_scenarios_are_checked():
    with pytest.raises(ValueError, match="pv_w has shape"):
        PlanScenarios(load_w=np.zeros((2, 3)), pv_w=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="load_w must be finite"):
        PlanScenarios(load_w=-np.ones((1, 3)), pv_w=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="weights"):
        PlanScenarios(load_w=np.zeros((1, 3)), pv_w=np.zeros((1, 3)), weights=np.array([1.0]))
    inp = inputs([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="has 3 steps, the inputs 2"):
        optimize(inp, battery(), REQ, scenarios=PlanScenarios(np.zeros((1, 3)), np.zeros((1, 3))))


def test_warm_re_solves_with_new_deviations_give_the_cold_optimum():
    rng = np.random.default_rng(11)
    solver = PlanSolver()
    for _ in range(10):
        n = 12
        inp = inputs(rng.uniform(0.2, 3.0, n), rng.uniform(0.1, 0.5, n), rng.uniform(0, 2, n))
        dev = rng.normal(0.0, 400.0, (3, n))
        sc = PlanScenarios(
            load_w=np.maximum(inp.load_w + dev, 0.0),
            pv_w=np.maximum(inp.pv_w - dev, 0.0),
        )
        b = battery(float(rng.uniform(0.1, 0.9)))
        warm = optimize(inp, b, REQ, solver=solver, scenarios=sc)
        cold = optimize(inp, b, REQ, scenarios=sc)
        assert warm.objective_eur == pytest.approx(cold.objective_eur, abs=1e-7)
    assert solver.warm_solves == 9
    assert solver.warm_failures == 0


def test_dispatch_in_the_backtest_applies_the_share():
    inp = inputs([1, 1], [0.5, 0.1])
    plan = dataclasses.replace(
        optimize(inp, battery(0.5), REQ),
        deviation_share=0.25,
        battery_power_w=np.array([800.0, 0.0]),
    )
    lim = _Limits(4000.0, 0.0, 1.0, 5000.0, 5000.0, 1.0, 1.0, 9000.0, 9000.0)
    # forecast net load 1000 W; actual 1400 W: a quarter of the 400 W surprise to the battery
    assert _dispatch_target(plan, 0, 1400.0, 0.0, lim) == pytest.approx(900.0)


# -- residual scenarios from the provider's own past forecasts ---------------------------------
STEP_S = 900.0
START_S = 1_704_067_200.0  # 2024-01-01T00:00Z


def series(days: int, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 96
    t = START_S + np.arange(n) * STEP_S
    hour = np.mod(t / 3600.0, 24.0)
    load = 500.0 + 300.0 * (hour > 17) + rng.gamma(2.0, 100.0, n)
    pv = np.maximum(0.0, 3000.0 * np.sin(np.pi * (hour - 6.0) / 12.0)) * rng.uniform(0.3, 1.0, n)
    index = pd.DatetimeIndex(pd.to_datetime(t, unit="s", utc=True), name="time")
    return pd.DataFrame(
        {
            "load_w": load,
            "pv_w": pv,
            "import_price_eur_per_kwh": np.full(n, 0.3),
            "export_price_eur_per_kwh": np.full(n, 0.1),
        },
        index=index,
    )


def clear_sky(start_s: np.ndarray, step_s: float) -> np.ndarray:
    hour = np.mod((np.asarray(start_s) + step_s / 2) / 3600.0, 24.0)
    return np.maximum(0.0, 3000.0 * np.sin(np.pi * (hour - 6.0) / 12.0))


def history_provider(frame: pd.DataFrame) -> HistoryForecastProvider:
    return HistoryForecastProvider(
        frame,
        load=SeasonalProfileForecaster(weeks=1, by="day"),
        pv=ClearSkyPvForecaster(clear_sky),
        price=SeasonalProfileForecaster(weeks=1, by="day"),
    )


def test_residual_scenarios_are_the_past_errors_and_use_only_the_past():
    actual = series(12)
    now_s = START_S + 10 * DAY_S + 18 * 3600.0
    n = 144  # 36 h
    clean, poisoned_frame = history_provider(actual), actual.copy()
    k = round((now_s - START_S) / STEP_S)
    poisoned_frame.iloc[k:, 0:2] = 1e9  # nothing measured after now may matter
    poisoned = history_provider(poisoned_frame)
    for p in (clean, poisoned):
        for lag in (2, 1):
            p.forecast_arrays(now_s - lag * DAY_S, n)
    a = clean.residual_scenarios(now_s, n, (1, 2, 3))
    b = poisoned.residual_scenarios(now_s, n, (1, 2, 3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 2, n)  # no forecast was kept three days back
    # lag 1: the errors of the forecast made a day ago, for the 96 intervals measured since
    past = clean.forecast_arrays(now_s - DAY_S, n)[:2]
    j = k - 96
    np.testing.assert_allclose(a[0, :, :96], actual.iloc[j:k, 0:2].to_numpy().T - past[:, :96])
    assert np.all(a[0, :, 96:] == 0.0)  # not measured yet: no error assumed
    assert np.any(a[1, 0, 96:] != 0.0)  # lag 2: all 144 leads were measured by now


def test_the_mpc_plans_over_scenarios_and_dispatches_with_the_share():
    site = parse_site(
        {
            "battery": {
                "capacity_wh": 10000,
                "max_charge_power_w": 5000,
                "max_discharge_power_w": 5000,
                "soc_min": 0.1,
                "soc_max": 0.9,
            },
            "grid": {"max_import_w": 9000, "max_export_w": 6000},
        }
    )
    actual = series(12)
    prov = history_provider(actual)
    now_s = START_S + 10 * DAY_S + 18 * 3600.0
    opts = OptimizerConfig(step_s=STEP_S, horizon_s=6 * 3600.0)
    mpc = MpcStrategy(site, prov, opts, realtime=RealtimeConfig(ramp_w_per_s=1e9), scenario_days=2)
    for lag in (2, 1):  # the provider's forecasts of the days before
        prov(now_s - lag * DAY_S, 24, STEP_S)
    tel = Telemetry(
        time_s=now_s,
        soc=0.5,
        soc_cell_min=0.5,
        soc_cell_max=0.5,
        soh=1.0,
        energy_available_wh=5000.0,
        capacity_wh=10000.0,
        pack_voltage_v=52.0,
        pack_current_a=0.0,
        cell_voltage_min_v=3.3,
        cell_voltage_max_v=3.3,
        cell_voltage_avg_v=3.3,
        temperature_min_degc=20.0,
        temperature_max_degc=20.0,
        temperature_avg_degc=20.0,
        charge_current_limit_a=100.0,
        discharge_current_limit_a=100.0,
        charge_power_limit_w=5000.0,
        discharge_power_limit_w=5000.0,
        contactor=ContactorState.CLOSED,
        alarms=(),
        balancing_cells=0,
        gate=NO_DECISION,
    )
    mpc.replan(now_s, tel)
    plan = mpc.plan
    assert plan is not None
    assert plan.scenarios == 2
    assert plan.deviation_share is not None
    forecast_net = float(plan.load_w[0] - plan.pv_w[0])
    site_now = SiteMeasurements(now_s, forecast_net + 700.0, 0.0, 0.0, 0.0, 0.3, 0.1)
    wish = mpc.wish(now_s + 1.0, site_now)
    expected = float(plan.battery_power_w[0]) + plan.deviation_share * 700.0
    assert wish.power_w == pytest.approx(expected)
