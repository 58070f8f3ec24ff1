"""The optimal schedule (LP/MIP on HiGHS): known optima, bounds, negative prices, relaxations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openbess.cell.params import load_cell_params
from openbess.config import parse_site
from openbess.contract import ContactorState, Telemetry
from openbess.ems import optimizer as opt
from openbess.ems.optimizer import (
    OptimizerConfig,
    PlanBattery,
    PlanInputs,
    PlanRequest,
    degradation_cost_from_ageing,
    optimize,
    plan_battery,
    plan_request,
    target_step,
)
from openbess.gate import NO_DECISION

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600.0)


def inputs(load_kw, pv_kw, imp, exp, step_h=1.0) -> PlanInputs:
    n = len(load_kw)
    return PlanInputs(
        time_s=T0 + np.arange(n) * step_h * 3600.0,
        step_s=np.full(n, step_h * 3600.0),
        load_w=np.asarray(load_kw, float) * 1000.0,
        pv_w=np.asarray(pv_kw, float) * 1000.0,
        import_price_eur_per_kwh=np.asarray(imp, float),
        export_price_eur_per_kwh=np.asarray(exp, float),
    )


def battery(**kw) -> PlanBattery:
    base = {
        "capacity_wh": 4000.0,
        "soc_initial": 0.0,
        "soc_min": 0.0,
        "soc_max": 1.0,
        "max_charge_power_w": 10000.0,
        "max_discharge_power_w": 10000.0,
        "charge_efficiency": 0.9,
        "discharge_efficiency": 0.9,
    }
    base.update(kw)
    return PlanBattery(**base)


def no_simultaneous_flows(r) -> None:
    assert np.all(np.minimum(r.charge_power_w, r.discharge_power_w) <= 1.0)
    assert np.all(np.minimum(r.grid_import_w, r.grid_export_w) <= 1.0)


def balance_residual_w(r) -> float:
    pv_used = r.pv_w - r.pv_curtailed_w
    return float(np.max(np.abs(r.load_w - pv_used - r.battery_power_w - r.grid_power_w)))


# -- small cases with a known optimum ----------------------------------------------------------


def test_two_step_arbitrage_with_losses_known_optimum():
    # Charge the empty 4 kWh battery at 0.10, sell it back at 0.40: 4/0.9 kWh bought,
    # 4*0.9 kWh sold. 0.10/0.81 < 0.40, so the round trip pays.
    r = optimize(inputs([0, 0], [0, 0], [0.10, 0.50], [0.0, 0.40]), battery())
    assert r.status == "Optimal"
    assert r.charge_power_w[0] == pytest.approx(4000 / 0.9, rel=1e-7)
    assert r.discharge_power_w[1] == pytest.approx(3600.0, rel=1e-7)
    assert r.cost_eur == pytest.approx(0.4 / 0.9 - 1.44, abs=1e-7)
    assert r.soc[0] == pytest.approx(1.0)
    assert r.soc[1] == pytest.approx(0.0, abs=1e-9)
    assert r.baseline_cost_eur == 0.0
    assert r.binaries == 0
    assert r.relaxed == ()
    no_simultaneous_flows(r)


def test_round_trip_that_does_not_pay_is_not_made():
    # 0.10 / 0.81 = 0.1235 > 0.12: losses eat the spread.
    r = optimize(inputs([0, 0], [0, 0], [0.10, 0.50], [0.0, 0.12]), battery())
    assert np.all(r.charge_power_w < 1e-6)
    assert r.cost_eur == pytest.approx(0.0, abs=1e-9)


def test_import_limit_binds():
    r = optimize(
        inputs([0, 0], [0, 0], [0.10, 0.50], [0.0, 0.40]),
        battery(),
        PlanRequest(max_import_w=2000.0, max_export_w=9000.0),
    )
    assert r.grid_import_w[0] == pytest.approx(2000.0)
    assert r.cost_eur == pytest.approx(0.2 - 2.0 * 0.9 * 0.9 * 0.40, abs=1e-7)


def test_battery_serves_the_evening_load_from_cheap_energy():
    # 3 kWh needed at 0.50; buying it earlier at 0.10 (lossless battery) costs 0.30.
    b = battery(capacity_wh=10000.0, charge_efficiency=1.0, discharge_efficiency=1.0)
    r = optimize(inputs([0, 3], [0, 0], [0.10, 0.50], [0.0, 0.0]), b)
    assert r.cost_eur == pytest.approx(0.30, abs=1e-7)
    assert r.baseline_cost_eur == pytest.approx(1.50)
    assert r.grid_import_w[1] == pytest.approx(0.0, abs=1e-6)


def test_degradation_cost_stops_a_marginal_round_trip():
    # gain per stored kWh 0.36 - 0.111 = 0.249 < wear 0.2 * (1/0.9 + 0.9) = 0.402
    r = optimize(
        inputs([0, 0], [0, 0], [0.10, 0.50], [0.0, 0.40]),
        battery(),
        PlanRequest(degradation_cost_eur_per_kwh=0.2),
    )
    assert np.all(r.charge_power_w < 1e-6)
    r = optimize(
        inputs([0, 0], [0, 0], [0.10, 0.50], [0.0, 0.40]),
        battery(),
        PlanRequest(degradation_cost_eur_per_kwh=0.05),
    )
    assert r.degradation_cost_eur == pytest.approx(0.05 * (4 / 0.9 + 3.6), rel=1e-7)


@pytest.mark.parametrize(("value", "charged"), [(0.2, True), (0.1, False)])
def test_terminal_value_decides_whether_to_store(value, charged):
    # Storing 4 kWh costs 4/0.9 * 0.10 = 0.444 EUR.
    r = optimize(
        inputs([0], [0], [0.10], [0.0]),
        battery(),
        PlanRequest(terminal_value_eur_per_kwh=value),
    )
    assert bool(r.soc[-1] > 0.99) is charged
    if charged:
        assert r.objective_eur == pytest.approx(0.4 / 0.9 - 0.8, abs=1e-7)
        assert r.terminal_value_eur == pytest.approx(0.8)


def test_demand_charge_shaves_the_peak():
    b = battery(
        capacity_wh=10000.0, soc_initial=0.5, charge_efficiency=1.0, discharge_efficiency=1.0
    )
    data = inputs([1, 1, 6, 1], [0, 0, 0, 0], [0.2] * 4, [0.0] * 4)
    flat = optimize(data, b, PlanRequest(demand_charge_eur_per_kw=10.0))
    # 5 kWh shave the 6 kW step to 1 kW, and the other steps cannot go lower
    assert flat.peak_import_w == pytest.approx(1000.0, abs=1e-6)
    assert flat.demand_charge_eur == pytest.approx(10.0, abs=1e-6)
    assert np.max(flat.grid_import_w) <= 1000.0 + 1e-6
    billed = optimize(
        data, b, PlanRequest(demand_charge_eur_per_kw=10.0, demand_charge_peak_w=3000.0)
    )
    assert billed.peak_import_w == pytest.approx(3000.0)


def test_reserve_is_held_when_the_battery_starts_above_it():
    b = battery(capacity_wh=10000.0, soc_initial=0.6)
    r = optimize(inputs([0, 5], [0, 0], [0.1, 0.9], [0.0, 0.8]), b, PlanRequest(reserve_soc=0.5))
    assert r.soc.min() >= 0.5 - 1e-9
    assert r.relaxed == ()


def test_first_step_uses_the_bms_limits():
    b = battery(
        capacity_wh=10000.0,
        soc_initial=0.8,
        first_discharge_power_w=500.0,
        first_charge_power_w=0.0,
        first_limits_s=1800.0,
    )
    data = inputs([3, 3, 3, 3], [0] * 4, [0.5] * 4, [0.0] * 4, step_h=0.5)
    r = optimize(data, b)
    assert r.discharge_power_w[0] == pytest.approx(500.0)
    assert r.discharge_power_w[1] == pytest.approx(3000.0)


def test_variable_step_lengths():
    data = PlanInputs(
        time_s=np.array([T0, T0 + 600.0]),
        step_s=np.array([600.0, 3600.0]),
        load_w=np.array([0.0, 0.0]),
        pv_w=np.array([0.0, 0.0]),
        import_price_eur_per_kwh=np.array([0.1, 0.5]),
        export_price_eur_per_kwh=np.array([0.0, 0.4]),
    )
    b = battery(max_charge_power_w=6000.0, max_discharge_power_w=6000.0)
    r = optimize(data, b)
    # 10 min at 6 kW stores 0.9 kWh; all of it is sold in the hour after
    assert r.energy_wh[0] == pytest.approx(900.0)
    assert r.cost_eur == pytest.approx(0.1 - 0.9 * 0.9 * 0.4, abs=1e-7)
    assert r.soc_at(T0 + 300.0) == pytest.approx(0.1125)


# -- negative prices: physically valid, binaries only where needed -------------------------------


def negative_price_case() -> PlanInputs:
    # A sunny afternoon where the import price goes negative for two hours.
    return inputs(
        [1, 1, 1, 1, 1, 1],
        [0, 3, 4, 4, 3, 0],
        [0.20, 0.10, -0.20, -0.10, 0.15, 0.40],
        [0.05, 0.02, -0.25, -0.15, 0.02, 0.30],
    )


def test_negative_prices_never_charge_and_discharge_at_once():
    data = negative_price_case()
    b = battery(capacity_wh=10000.0, soc_initial=0.3, max_charge_power_w=3000.0)
    req = PlanRequest(max_import_w=9000.0, max_export_w=9000.0)
    r = optimize(data, b, req)
    no_simultaneous_flows(r)
    assert balance_residual_w(r) < 1e-6
    # binaries at the two negative-import steps only (and no import < export step here)
    assert r.binaries == 2
    # PV is curtailed at a negative export price and the grid pays us to import
    assert np.all(r.pv_curtailed_w[2:4] > 0)
    assert np.all(r.grid_export_w[2:4] < 1e-6)
    assert np.all(r.grid_import_w[2:4] > 1000.0)
    assert r.cost_eur < r.baseline_cost_eur


def test_a_full_battery_does_not_burn_paid_for_energy():
    # Full battery, import paid at -0.20: the pure LP would import more and burn it by
    # charging and discharging at once (losses); the plan must not.
    data = inputs([1], [0], [-0.20], [-0.25])
    b = battery(capacity_wh=10000.0, soc_initial=1.0, max_charge_power_w=3000.0)
    req = PlanRequest(max_import_w=9000.0, max_export_w=9000.0)
    model = opt._build(data, b, req)
    values, _ = opt._solve(model, np.zeros(0, np.int64), req)
    burnt = np.minimum(values[model.c], values[model.d])
    assert np.allclose(burnt, 0.9 * 0.9 * 3.0)  # kW, what the LP relaxation does
    r = optimize(data, b, req)
    no_simultaneous_flows(r)
    assert r.binaries == 1
    assert np.allclose(r.grid_import_w, 1000.0)
    assert r.cost_eur == pytest.approx(-0.2)


def test_positive_prices_need_no_binaries():
    data = negative_price_case()
    data = dataclasses.replace(
        data,
        import_price_eur_per_kwh=np.abs(data.import_price_eur_per_kwh) + 0.3,
        export_price_eur_per_kwh=np.abs(data.export_price_eur_per_kwh),
    )
    r = optimize(data, battery(capacity_wh=10000.0, soc_initial=0.3))
    assert r.binaries == 0
    no_simultaneous_flows(r)


def test_import_below_export_price_never_imports_and_exports_at_once():
    data = inputs([1, 1], [2, 2], [0.05, 0.30], [0.10, 0.10])
    r = optimize(data, battery(capacity_wh=10000.0), PlanRequest(9000.0, 9000.0))
    no_simultaneous_flows(r)
    assert r.binaries >= 1
    assert balance_residual_w(r) < 1e-6


# -- never infeasible: relaxed and reported ------------------------------------------------------


def test_unreachable_target_is_relaxed_and_reported():
    # 2 kW for one hour into 10 kWh from 20 %: at most 0.2 + 1.8/10 = 0.38 by the deadline.
    b = battery(capacity_wh=10000.0, soc_initial=0.2, max_charge_power_w=2000.0)
    req = PlanRequest(target_soc=0.9, target_step=0)
    r = optimize(inputs([0, 0], [0, 0], [0.3, 0.3], [0.0, 0.0]), b, req)
    assert r.status == "Optimal"
    assert r.soc[0] == pytest.approx(0.38)
    (relax,) = r.relaxed
    assert relax.constraint == "target_soc"
    assert relax.max_violation == pytest.approx(0.52)
    assert relax.energy_kwh == pytest.approx(5.2)
    assert relax.first_step == 0
    assert relax.penalty_eur == pytest.approx(5.2 * 10.0)
    assert r.objective_eur == pytest.approx(r.cost_eur + relax.penalty_eur, abs=1e-9)


def test_reachable_target_is_met_at_least_cost():
    b = battery(capacity_wh=10000.0, soc_initial=0.2, max_charge_power_w=5000.0)
    req = PlanRequest(target_soc=0.6, target_step=2)
    r = optimize(inputs([0] * 3, [0] * 3, [0.3, 0.1, 0.2], [0.0] * 3), b, req)
    assert r.soc[2] == pytest.approx(0.6)
    assert r.relaxed == ()
    # 4 kWh stored at 0.9 efficiency: 4.444 kWh, as much as possible in the cheapest hour
    assert r.charge_power_w[1] == pytest.approx(4444.444, rel=1e-6)


def test_unreachable_final_soc_is_relaxed():
    b = battery(capacity_wh=10000.0, soc_initial=0.5, max_charge_power_w=1000.0)
    r = optimize(inputs([0], [0], [0.2], [0.0]), b, PlanRequest(final_soc=0.9))
    (relax,) = r.relaxed
    assert relax.constraint == "final_soc"
    assert relax.max_violation == pytest.approx(0.9 - 0.59)


def test_soc_below_the_window_recovers_instead_of_failing():
    # 200 W of charge lifts 10 kWh by 1.8 % an hour: from 5 % it takes three hours to 10 %.
    b = battery(capacity_wh=10000.0, soc_initial=0.05, soc_min=0.1, max_charge_power_w=200.0)
    r = optimize(inputs([1, 1, 1], [0, 0, 0], [0.3, 0.3, 0.3], [0.0] * 3), b)
    assert r.status == "Optimal"
    assert r.discharge_power_w.max() < 1e-6
    # at full power until the window is reached, then only what it takes (no terminal value)
    assert np.allclose(r.charge_power_w, [200.0, 200.0, 0.014e6 / 0.9 / 100.0])
    assert np.allclose(r.soc, [0.068, 0.086, 0.1])
    (relax,) = r.relaxed
    assert relax.constraint == "soc_min"
    assert relax.max_violation == pytest.approx(0.032)
    assert (relax.steps, relax.first_step) == (2, 0)


def test_soc_above_the_window_comes_down():
    b = battery(capacity_wh=10000.0, soc_initial=0.97, soc_max=0.9, max_discharge_power_w=500.0)
    r = optimize(inputs([1, 1, 1], [0] * 3, [0.3] * 3, [0.0] * 3), b)
    assert [x.constraint for x in r.relaxed] == ["soc_max"]
    assert r.charge_power_w.max() < 1e-6


def test_load_above_the_connection_is_relaxed_not_infeasible():
    b = battery(capacity_wh=10000.0, soc_initial=0.15, soc_min=0.1, max_discharge_power_w=2000.0)
    req = PlanRequest(max_import_w=9000.0, max_export_w=9000.0)
    r = optimize(inputs([12, 12], [0, 0], [0.3, 0.3], [0.0, 0.0]), b, req)
    (relax,) = r.relaxed
    assert relax.constraint == "import_limit"
    # 0.5 kWh of battery energy (0.45 kWh AC) covers part of the first hour only
    assert relax.max_violation == pytest.approx(3000.0)
    assert relax.energy_kwh == pytest.approx(3.0 - 0.45 + 3.0)
    assert balance_residual_w(r) < 1e-6


# -- property: every plan respects every bound ---------------------------------------------------


@st.composite
def cases(draw):
    n = draw(st.integers(1, 12))
    floats = st.floats(0.0, 8.0, allow_nan=False)
    prices = st.floats(-0.3, 0.8, allow_nan=False)
    load = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    pv = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    imp = np.array(draw(st.lists(prices, min_size=n, max_size=n)))
    spread = np.array(draw(st.lists(st.floats(0.0, 0.3), min_size=n, max_size=n)))
    exp = (
        imp - spread
        if draw(st.booleans())
        else np.array(draw(st.lists(prices, min_size=n, max_size=n)))
    )
    step_h = draw(st.sampled_from([0.25, 0.5, 1.0]))
    soc_min = draw(st.floats(0.0, 0.4))
    soc_max = draw(st.floats(0.6, 1.0))
    b = PlanBattery(
        capacity_wh=draw(st.floats(1000.0, 20000.0)),
        soc_initial=draw(st.floats(soc_min, soc_max)),
        soc_min=soc_min,
        soc_max=soc_max,
        max_charge_power_w=draw(st.floats(0.0, 6000.0)),
        max_discharge_power_w=draw(st.floats(0.0, 6000.0)),
        charge_efficiency=draw(st.floats(0.8, 1.0)),
        discharge_efficiency=draw(st.floats(0.8, 1.0)),
        first_charge_power_w=draw(st.none() | st.floats(0.0, 3000.0)),
        first_discharge_power_w=draw(st.none() | st.floats(0.0, 3000.0)),
        first_limits_s=draw(st.sampled_from([0.0, 900.0, 3600.0])),
    )
    reserve = draw(st.sampled_from([0.0, b.soc_initial, min(b.soc_initial + 0.1, soc_max)]))
    target_soc = draw(st.none() | st.floats(0.0, 1.0))
    req = PlanRequest(
        reserve_soc=reserve,
        target_soc=target_soc,
        target_step=None if target_soc is None else draw(st.integers(0, n - 1)),
        final_soc=draw(st.none() | st.floats(0.0, 1.0)),
        max_import_w=draw(st.floats(1000.0, 12000.0)),
        max_export_w=draw(st.floats(0.0, 12000.0)),
        degradation_cost_eur_per_kwh=draw(st.floats(0.0, 0.1)),
        terminal_value_eur_per_kwh=draw(st.floats(0.0, 0.5)),
        allow_grid_charging=draw(st.booleans()),
        allow_battery_export=draw(st.booleans()),
    )
    return inputs(load, pv, imp, exp, step_h), b, req


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_plan_respects_every_bound(case):
    data, b, req = case
    r = optimize(data, b, req)
    tol_w = 1e-3
    chg_lim, dis_lim = opt._power_limits_kw(data, b)
    assert np.all(r.charge_power_w <= chg_lim * 1000.0 + tol_w)
    assert np.all(r.discharge_power_w <= dis_lim * 1000.0 + tol_w)
    assert np.all(r.charge_power_w >= -tol_w)
    assert np.all(r.discharge_power_w >= -tol_w)
    relaxed = {x.constraint for x in r.relaxed}
    assert relaxed <= {"import_limit", "reserve_soc", "target_soc", "final_soc"}
    if "reserve_soc" not in relaxed:
        assert np.all(r.soc >= min(req.reserve_soc, b.soc_max) - 1e-6)
    if req.target_soc is not None and "target_soc" not in relaxed:
        assert r.soc[req.target_step] >= req.target_soc - 1e-6
    if req.final_soc is not None and "final_soc" not in relaxed:
        assert r.soc[-1] == pytest.approx(req.final_soc, abs=1e-6)
    if "import_limit" not in relaxed:
        assert np.all(r.grid_import_w <= req.max_import_w + tol_w)
    assert np.all(r.grid_export_w <= req.max_export_w + tol_w)
    assert np.all(r.pv_curtailed_w <= data.pv_w + tol_w)
    assert np.all(r.soc >= b.soc_min - 1e-6)
    assert np.all(r.soc <= b.soc_max + 1e-6)
    no_simultaneous_flows(r)
    assert balance_residual_w(r) < 1e-2  # W: solver tolerances (1e-7 kW scaled)
    # stored energy follows the flows
    dt_h = data.step_s / 3600.0
    delta = (
        b.charge_efficiency * r.charge_power_w - r.discharge_power_w / b.discharge_efficiency
    ) * dt_h
    e = b.soc_initial * b.capacity_wh + np.cumsum(delta)
    assert np.allclose(r.energy_wh, e, atol=1e-2)  # Wh
    if not req.allow_grid_charging:
        assert np.all(r.charge_power_w <= np.maximum(data.pv_w - data.load_w, 0) + tol_w)
    # staying idle is feasible, so the optimum is never worse than no battery
    requests = req.target_soc is not None or req.final_soc is not None
    idle_ok = bool(np.all(data.load_w - data.pv_w <= req.max_import_w))
    if idle_ok and not requests and req.reserve_soc <= b.soc_initial:
        assert r.objective_eur <= r.baseline_cost_eur + 1e-6


# -- inputs, parameters, helpers --------------------------------------------------------------


def test_inputs_are_checked_and_name_the_field():
    with pytest.raises(ValueError, match=r"PlanInputs.pv_w\[1\] is negative"):
        inputs([0, 0], [0, -1], [0.1, 0.1], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"PlanInputs.load_w has 1 values, expected 2"):
        PlanInputs(
            np.array([0.0, 1.0]),
            np.array([1.0, 1.0]),
            np.array([0.0]),
            np.zeros(2),
            np.zeros(2),
            np.zeros(2),
        )
    with pytest.raises(ValueError, match=r"PlanBattery\.soc_min"):
        battery(soc_min=0.9, soc_max=0.5)
    with pytest.raises(ValueError, match=r"PlanRequest\.target_soc and target_step"):
        PlanRequest(target_soc=0.5)


def test_target_step_maps_a_deadline_to_the_step_that_ends_at_it():
    data = inputs([0] * 4, [0] * 4, [0.1] * 4, [0.0] * 4)
    assert target_step(data, T0 + 3600.0) == 0
    assert target_step(data, T0 + 3601.0) == 1
    assert target_step(data, T0 + 4 * 3600.0) == 3
    assert target_step(data, T0 + 4 * 3600.0 + 1) is None
    assert target_step(data, T0 - 10.0) is None


def test_degradation_cost_from_the_ageing_model():
    cell = load_cell_params("lfp")
    new = degradation_cost_from_ageing(cell, battery_price_eur_per_kwh=400.0)
    # independent: cycle law q = r FEC^z at 25 degC, C/2, 80 % depth; life to SoH 0.8
    from openbess.cell.ageing import ageing_params, cycle_rate

    law = ageing_params(cell.ageing).cyc_q
    r = float(cycle_rate(law, np.array(0.8), np.array(0.5), np.array(25.0)))
    fec_eol = (0.2 / r) ** (1 / law.z)
    assert new == pytest.approx(400.0 / (2 * fec_eol), rel=1e-12)
    assert 0.0005 < new < 0.05
    # a concave law: an aged battery wears more slowly per kWh
    assert degradation_cost_from_ageing(cell, soh=0.9) < new
    assert degradation_cost_from_ageing(cell, battery_price_eur_per_kwh=800.0) == pytest.approx(
        2 * new
    )
    no_ageing = dataclasses.replace(cell, ageing={})
    assert degradation_cost_from_ageing(no_ageing) == 0.0
    with pytest.raises(ValueError, match="soh"):
        degradation_cost_from_ageing(cell, soh=0.0)


MINIMAL_SITE = {
    "battery": {
        "capacity_wh": 10000,
        "max_charge_power_w": 5000,
        "max_discharge_power_w": 4750,
        "charge_efficiency": 0.95,
        "discharge_efficiency": 0.95,
        "soc_min": 0.1,
        "soc_max": 0.9,
        "initial_soc": 0.5,
    },
    "grid": {"max_import_w": 9000, "max_export_w": 9000},
}


def telemetry(**kw) -> Telemetry:
    base = {
        "time_s": T0,
        "soc": 0.42,
        "soc_cell_min": 0.41,
        "soc_cell_max": 0.43,
        "soh": 0.9,
        "energy_available_wh": 3780.0,
        "capacity_wh": 9000.0,
        "pack_voltage_v": 52.0,
        "pack_current_a": 0.0,
        "cell_voltage_min_v": 3.3,
        "cell_voltage_max_v": 3.31,
        "cell_voltage_avg_v": 3.305,
        "temperature_min_degc": 20.0,
        "temperature_max_degc": 21.0,
        "temperature_avg_degc": 20.5,
        "charge_current_limit_a": 20.0,
        "discharge_current_limit_a": 30.0,
        "charge_power_limit_w": 1000.0,
        "discharge_power_limit_w": 1500.0,
        "contactor": ContactorState.CLOSED,
        "alarms": (),
        "balancing_cells": 0,
        "gate": NO_DECISION,
    }
    base.update(kw)
    return Telemetry(**base)


def test_plan_battery_starts_from_the_telemetry():
    cfg = parse_site(MINIMAL_SITE)
    b = plan_battery(cfg)
    assert (b.capacity_wh, b.soc_initial, b.first_limits_s) == (10000.0, 0.5, 0.0)
    b = plan_battery(cfg, telemetry(), first_limits_s=900.0)
    assert b.capacity_wh == 9000.0  # SoH-adjusted, from the BMS
    assert b.soc_initial == 0.42
    assert b.first_charge_power_w == 1000.0
    assert b.first_discharge_power_w == 1500.0
    assert b.max_discharge_power_w == 4750.0


def test_plan_request_from_the_site_and_options():
    cfg = parse_site(MINIMAL_SITE)
    data = inputs([0] * 4, [0] * 4, [0.1, 0.2, 0.3, 0.4], [0.0] * 4)
    b = plan_battery(cfg)
    req = plan_request(cfg, OptimizerConfig(), data, b)
    assert req.max_import_w == 9000.0
    assert req.terminal_value_eur_per_kwh == pytest.approx(0.95 * 0.25)
    assert req.degradation_cost_eur_per_kwh > 0.0  # derived from the LFP ageing law
    assert req.final_soc is None
    opts = OptimizerConfig(
        degradation_cost_eur_per_kwh=0.0,
        terminal_value_eur_per_kwh=0.05,
        target_soc=0.8,
        target_time="2025-06-15T17:00:00+00:00",
    )
    start = pd.Timestamp("2025-06-15T14:00:00Z").timestamp()
    data = dataclasses.replace(data, time_s=start + np.arange(4) * 3600.0)
    req = plan_request(cfg, opts, data, b, final_soc=0.5)
    assert req.degradation_cost_eur_per_kwh == 0.0
    assert req.terminal_value_eur_per_kwh == 0.05
    assert (req.target_soc, req.target_step) == (0.8, 2)
    assert req.final_soc == 0.5


def test_optimizer_config_checks_fields():
    with pytest.raises(ValueError, match="target_soc and target_time go together"):
        OptimizerConfig(target_soc=0.5)
    with pytest.raises(ValueError, match="UTC offset"):
        OptimizerConfig(target_soc=0.5, target_time="2025-01-01T07:00:00")
    with pytest.raises(ValueError, match="reserve_soc"):
        OptimizerConfig(reserve_soc=1.5)


def test_summary_and_frame():
    r = optimize(inputs([0, 0], [0, 0], [0.10, 0.50], [0.0, 0.40]), battery())
    s = r.summary()
    for key in ("objective_eur", "cost_eur", "baseline_cost_eur", "solve_time_s", "relaxed"):
        assert key in s
    assert s["savings_eur"] == pytest.approx(1.44 - 0.4 / 0.9)
    f = r.to_frame()
    assert list(f.columns[:2]) == ["load_w", "pv_w"]
    assert str(f.index.tz) == "UTC"
    assert f["battery_power_w"].iloc[1] == pytest.approx(3600.0)
    assert math.isfinite(r.solve_time_s)
