"""The plan around grid events (import/export caps, battery holds) and the warm re-solve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from openbess.ems.optimizer import (
    PlanBattery,
    PlanInputs,
    PlanRequest,
    PlanSolver,
    event_step_limits,
    optimize,
)
from openbess.io.hub import GridEvent

T0 = 1_750_000_000.0 - (1_750_000_000.0 % 3600.0)
H = 3600.0


def inputs(load_kw, pv_kw, imp, exp=None) -> PlanInputs:
    n = len(load_kw)
    return PlanInputs(
        time_s=T0 + np.arange(n) * H,
        step_s=np.full(n, H),
        load_w=np.asarray(load_kw, float) * 1000.0,
        pv_w=np.asarray(pv_kw, float) * 1000.0,
        import_price_eur_per_kwh=np.asarray(imp, float),
        export_price_eur_per_kwh=np.asarray(exp if exp is not None else [0.0] * n, float),
    )


def battery(**kw) -> PlanBattery:
    base = {
        "capacity_wh": 10000.0,
        "soc_initial": 0.5,
        "soc_min": 0.1,
        "soc_max": 0.9,
        "max_charge_power_w": 5000.0,
        "max_discharge_power_w": 5000.0,
        "charge_efficiency": 0.95,
        "discharge_efficiency": 0.95,
    }
    base.update(kw)
    return PlanBattery(**base)


def req(*events: GridEvent, **kw) -> PlanRequest:
    base = {"max_import_w": 9000.0, "max_export_w": 6000.0, "terminal_value_eur_per_kwh": 0.2}
    base.update(kw)
    return PlanRequest(events=events, **base)


def test_an_import_cap_is_planned_for_by_discharging():
    # flat 2 kW load at a flat price; the stored energy is worth 0.15 EUR/kWh, so neither
    # charging (0.15 / 0.95 per stored kWh) nor discharging (saves 0.95 * 0.15) pays; during
    # hours 1-2 the import may not exceed 0.5 kW
    inp = inputs([2, 2, 2, 2], [0] * 4, [0.15] * 4)
    free = optimize(inp, battery(), req(terminal_value_eur_per_kwh=0.15))
    assert np.allclose(free.battery_power_w, 0.0, atol=1e-6)
    ev = GridEvent("dr", T0 + H, T0 + 3 * H, max_import_w=500.0)
    r = optimize(inp, battery(), req(ev, terminal_value_eur_per_kwh=0.15))
    assert r.relaxed == ()
    assert r.grid_import_w[1:3] == pytest.approx([500.0, 500.0], abs=1e-6)
    assert r.battery_power_w[1:3] == pytest.approx([1500.0, 1500.0], abs=1e-6)
    assert r.grid_import_w[[0, 3]] == pytest.approx([2000.0, 2000.0], abs=1e-6)


def test_a_cap_the_battery_cannot_meet_is_relaxed_and_reported():
    # 4 h at 3 kW with a 0 W cap, but only (0.5 - 0.1) * 10 kWh * 0.95 = 3.8 kWh to give
    inp = inputs([3, 3, 3, 3], [0] * 4, [0.3] * 4)
    ev = GridEvent("dr", T0, T0 + 4 * H, max_import_w=0.0)
    r = optimize(inp, battery(), req(ev))
    (relax,) = r.relaxed
    assert relax.constraint == "event_import_limit"
    assert relax.energy_kwh == pytest.approx(12.0 - 3.8, rel=1e-6)
    assert relax.max_violation > 0.0  # W
    assert relax.penalty_eur == pytest.approx(50.0 * relax.energy_kwh, rel=1e-6)
    assert r.soc[-1] == pytest.approx(0.1)  # the battery gave all it had


def test_a_battery_hold_is_planned_and_the_surplus_exported():
    inp = inputs([1, 1, 1], [0] * 3, [0.3] * 3, [0.05] * 3)
    ev = GridEvent("hold", T0 + H, T0 + 2 * H, battery_power_w=3000.0)
    r = optimize(inp, battery(), req(ev))
    assert r.relaxed == ()
    assert r.battery_power_w[1] == pytest.approx(3000.0)
    assert r.grid_export_w[1] == pytest.approx(2000.0)


def test_a_hold_that_empties_the_battery_is_relaxed():
    inp = inputs([0, 0, 0], [0] * 3, [0.3] * 3)
    ev = GridEvent("hold", T0, T0 + 3 * H, battery_power_w=4000.0)
    r = optimize(inp, battery(soc_initial=0.3), req(ev))
    (relax,) = r.relaxed
    assert relax.constraint == "event_battery_power"
    # 12 kWh asked, 0.2 * 10 kWh * 0.95 = 1.9 kWh available
    assert relax.energy_kwh == pytest.approx(12.0 - 1.9, rel=1e-6)
    assert r.soc.min() >= 0.1 - 1e-9


def test_an_export_cap_stores_the_surplus():
    # exporting (0.10) pays more than storing (worth 0.05): without the event all is exported
    inp = inputs([0.5, 0.5], [4.5, 4.5], [0.3, 0.3], [0.1, 0.1])
    b = battery(soc_initial=0.1, soc_max=1.0)
    free = optimize(inp, b, req(terminal_value_eur_per_kwh=0.05))
    assert free.grid_export_w == pytest.approx([4000.0, 4000.0])
    ev = GridEvent("cap", T0, T0 + 2 * H, max_export_w=1000.0)
    r = optimize(inp, b, req(ev, terminal_value_eur_per_kwh=0.05))
    assert r.relaxed == ()
    assert np.all(r.grid_export_w <= 1000.0 + 1e-6)
    assert r.charge_power_w[0] == pytest.approx(3000.0)


def test_partial_overlap_constrains_the_step_average():
    inp = inputs([2, 2], [0, 0], [0.15, 0.15])
    ev = GridEvent("dr", T0 + 0.5 * H, T0 + H, max_import_w=0.0)
    imp, exp, lo, hi = event_step_limits(inp, (ev,), (9000.0, 6000.0))
    assert imp[0] == pytest.approx(4500.0)  # half the hour at 0 W, half at the 9 kW limit
    assert np.isinf(imp[1])
    assert np.isinf(exp).all()
    assert np.isinf(lo).all()
    assert np.isinf(hi).all()
    ev2 = GridEvent("dr", T0 + 0.5 * H, T0 + H, max_import_w=0.0)
    r = optimize(inp, battery(), req(ev2, max_import_w=2000.0))
    assert r.grid_import_w[0] == pytest.approx(1000.0, abs=1e-6)  # (0 + 2000) / 2


def test_events_outside_the_horizon_change_nothing():
    inp = inputs([2, 2], [0, 0], [0.15, 0.25])
    ev = GridEvent("later", T0 + 5 * H, T0 + 6 * H, max_import_w=0.0)
    a, b = optimize(inp, battery(), req()), optimize(inp, battery(), req(ev))
    assert np.allclose(a.battery_power_w, b.battery_power_w)


def test_bad_events_are_refused_naming_the_field():
    bad = dataclasses.replace(GridEvent("x", T0, T0 + H), max_import_w=-1.0)
    with pytest.raises(ValueError, match=r"events\[0\].max_import_w"):
        req(bad)
    with pytest.raises(ValueError, match="end_s"):
        req(GridEvent("x", T0 + H, T0))


def test_the_warm_solver_gives_the_cold_optimum():
    rng = np.random.default_rng(4)
    solver = PlanSolver()
    for _ in range(12):
        n = 24
        inp = inputs(
            rng.uniform(0.2, 3.0, n),
            np.clip(rng.normal(1.0, 1.5, n), 0.0, None),
            rng.uniform(0.1, 0.5, n),
            rng.uniform(0.0, 0.1, n),
        )
        b = battery(soc_initial=float(rng.uniform(0.1, 0.9)))
        warm = optimize(inp, b, req(), solver=solver)
        cold = optimize(inp, b, req())
        assert warm.objective_eur == pytest.approx(cold.objective_eur, rel=1e-9, abs=1e-9)
        assert warm.status == "Optimal"
    assert solver.solves == 12
    assert solver.warm_solves == 11  # the first one builds the instance
    # another structure is passed whole, then warm again
    optimize(inputs([1, 1], [0, 0], [0.1, 0.2]), battery(), req(), solver=solver)
    assert solver.warm_solves == 11
