"""Tests of the twin's battery pack: topology, current sharing, energy and heat accounting."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openbess.cell.ageing import calendar_fade
from openbess.cell.params import CellParams, load_cell_params, scale_to_capacity
from openbess.cell.thermal import thermal_step
from openbess.errors import ConfigError
from openbess.twin.faults import FaultInjector, FaultKind
from openbess.twin.pack import (
    CellAgeing,
    CoolingConfig,
    FloatArray,
    NoAgeing,
    Pack,
    PackTopology,
    SpreadConfig,
    draw_spread,
    lumped_thermal_step,
    parallel_group_params,
    share_current,
)

SPREAD = SpreadConfig(
    capacity_rel_std=0.02,
    resistance_rel_std=0.1,
    self_discharge_per_day_mean=0.002,
    self_discharge_rel_std=0.5,
    initial_soc_std=0.02,
    seed=7,
)


def make_pack(
    cell: CellParams,
    topology: PackTopology | None = None,
    spread: SpreadConfig | None = None,
    **kwargs: object,
) -> Pack:
    topo = topology if topology is not None else PackTopology(2, 2, 3, 2)
    return Pack(
        cell,
        topo,
        spread if spread is not None else SPREAD,
        kwargs.pop("cooling", CoolingConfig(coolant_degc=20.0)),  # type: ignore[arg-type]
        initial_soc=kwargs.pop("initial_soc", 0.5),  # type: ignore[arg-type]
        ambient_degc=25.0,
        ageing_window_s=math.inf,
        **kwargs,  # type: ignore[arg-type]
    )


# -------------------------------------------------------------------------------- topology
def test_topology_counts_and_indices() -> None:
    topo = PackTopology(n_strings=2, modules_per_string=3, cells_series_per_module=4)
    assert topo.n_series == 12
    assert topo.n_cells == 24
    assert topo.n_modules == 6
    mod = topo.module_of_cell()
    strg = topo.string_of_cell()
    assert mod.tolist() == [k // 4 for k in range(24)]
    assert strg.tolist() == [0] * 12 + [1] * 12
    k = topo.cell_index(string=1, module=2, position=3)
    assert k == 23
    assert mod[k] == 5
    assert strg[k] == 1
    assert topo.position_in_module()[k] == 3
    assert topo.module_in_string()[k] == 2


@pytest.mark.parametrize("field", ["n_strings", "modules_per_string", "cells_series_per_module"])
def test_topology_rejects_zero(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PackTopology(**{field: 0})


def test_cell_index_out_of_range_names_the_axis() -> None:
    with pytest.raises(ValueError, match="module 5"):
        PackTopology(1, 2, 3).cell_index(0, 5, 0)


def test_spread_is_seeded_and_has_the_requested_statistics() -> None:
    a = draw_spread(SPREAD, 20000)
    b = draw_spread(SPREAD, 20000)
    np.testing.assert_array_equal(a.capacity_factor, b.capacity_factor)
    assert np.std(a.capacity_factor) == pytest.approx(0.02, rel=0.05)
    assert np.std(a.resistance_factor) == pytest.approx(0.1, rel=0.05)
    assert np.mean(a.self_discharge_per_day) == pytest.approx(0.002, rel=0.02)
    assert np.std(a.soc_offset) == pytest.approx(0.02, rel=0.05)
    c = draw_spread(SPREAD, 20000, seed=8)
    assert not np.array_equal(a.capacity_factor, c.capacity_factor)


def test_spread_rejects_negative_std() -> None:
    with pytest.raises(ValueError, match="resistance_rel_std"):
        SpreadConfig(resistance_rel_std=-0.1)


def test_parallel_group_scales_capacity_resistance_and_thermal(cell: CellParams) -> None:
    g = parallel_group_params(cell, 4)
    assert g.capacity_ah == pytest.approx(4 * cell.capacity_ah)
    np.testing.assert_allclose(g.r0_ohm, cell.r0_ohm / 4)
    np.testing.assert_allclose(g.rc_r_ohm, cell.rc_r_ohm / 4)
    assert g.thermal.mass_kg == pytest.approx(4 * cell.thermal.mass_kg)
    assert g.thermal.conductance_to_coolant_w_per_k == pytest.approx(
        4 * cell.thermal.conductance_to_coolant_w_per_k
    )
    np.testing.assert_array_equal(g.ocv_v, cell.ocv_v)


# -------------------------------------------------------------------------------- sharing
def test_share_current_common_bus_and_exact_sum() -> None:
    e = np.array([100.0, 100.5, 99.8])
    r = np.array([0.1, 0.2, 0.15])
    i, v = share_current(30.0, e, r)
    np.testing.assert_allclose(e - r * i, v, atol=1e-9)
    assert math.fsum(i) == 30.0


def test_unequal_strings_share_by_resistance(cell: CellParams) -> None:
    topo = PackTopology(2, 1, 4)
    pack = make_pack(cell, topo, SpreadConfig(), initial_soc=0.5)
    growth = np.zeros(topo.n_cells)
    growth[topo.n_series :] = 1.0  # second string: double resistance
    pack.set_ageing(np.zeros(topo.n_cells), growth)
    e_s, r_s = pack.string_thevenin()
    assert r_s[1] == pytest.approx(2 * r_s[0])
    res = pack.step(10.0, 1e-3)
    assert res.string_current_a.sum() == pytest.approx(10.0, rel=0, abs=1e-12)
    # Same source voltage -> currents in inverse ratio of the resistances.
    assert res.string_current_a[0] == pytest.approx(2 * res.string_current_a[1], rel=1e-3)
    # For a short step the bus voltage is common to both strings, at start and end.
    v_start = e_s - r_s * res.string_current_a
    assert v_start[0] == pytest.approx(v_start[1], abs=1e-5)
    assert res.string_voltage_v[0] == pytest.approx(res.string_voltage_v[1], abs=1e-5)


def test_strings_at_different_soc_equalise_at_zero_current(cell: CellParams) -> None:
    topo = PackTopology(2, 1, 4)
    pack = make_pack(cell, topo, SpreadConfig())
    pack.set_cell_soc(np.repeat([0.8, 0.5], topo.n_series))
    res = pack.step(0.0, 1.0)
    assert res.string_current_a[0] > 0.1  # the fuller string discharges into the other
    assert res.string_current_a.sum() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dt_s", [1.0, 60.0, 900.0, 3600.0])
def test_long_steps_equalise_strings_without_oscillation(cell: CellParams, dt_s: float) -> None:
    topo = PackTopology(2, 1, 4)
    pack = make_pack(cell, topo, SpreadConfig())
    pack.set_cell_soc(np.repeat([0.95, 0.05], topo.n_series))
    gap = [0.9]
    n_steps = min(int(12 * 3600 / dt_s), 1500)
    for _ in range(n_steps):
        res = pack.step(0.0, dt_s)
        assert res.string_current_a[0] >= -1e-9  # never reverses: no overshoot
        soc = pack.cell_soc.reshape(2, 4).mean(axis=1)
        gap.append(soc[0] - soc[1])
        assert abs(res.string_current_a[0]) < 50.0
    assert np.all(np.diff(gap) <= 1e-12)
    assert gap[-1] >= 0.0
    if dt_s >= 60.0:  # 12 hours simulated
        assert gap[-1] < 0.2
    assert pack.cell_temperature_degc.max() < 40.0
    eb = pack.energy_balance()
    assert abs(eb.residual_j) / eb.throughput_j < 1e-9


def test_thevenin_predicts_the_bus_voltage(cell: CellParams) -> None:
    pack = make_pack(cell)
    e, r = pack.thevenin()
    res = pack.step(5.0, 1e-3)
    assert res.bus_voltage_start_v == pytest.approx(e - r * 5.0, rel=1e-12)
    # After a tiny step the terminal voltage is still the Thevenin prediction.
    assert res.pack_voltage_v == pytest.approx(e - r * 5.0, rel=1e-5)


def test_soc_follows_coulomb_counting(cell: CellParams) -> None:
    pack = make_pack(cell, PackTopology(1, 1, 4, 3), SpreadConfig())
    soc0 = pack.cell_soc
    q_ah = 3 * cell.capacity_ah
    for _ in range(60):
        pack.step(3.0, 10.0)
    np.testing.assert_allclose(soc0 - pack.cell_soc, 3.0 * 600.0 / (3600 * q_ah), rtol=1e-9)
    assert pack.voltage_min_seen_v < pack.voltage_max_seen_v


# -------------------------------------------------------------------------------- energy
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    profile=st.lists(
        st.tuples(
            st.floats(-12.0, 12.0, allow_nan=False),
            st.floats(0.1, 120.0, allow_nan=False),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    short=st.booleans(),
)
def test_energy_balance_closes(
    cell: CellParams, profile: list[tuple[float, float, bool]], short: bool
) -> None:
    faults = FaultInjector(12, 2, 0)
    if short:
        faults.inject(FaultKind.INTERNAL_SHORT, 4, at_time_s=30.0, resistance_ohm=5.0)
    pack = make_pack(cell, faults=faults, initial_soc=0.6)
    bal = np.zeros(pack.n_cells, dtype=np.bool_)
    bal[::3] = True
    for current, dt, balance in profile:
        res = pack.step(current, dt, 25.0, bal if balance else None, 20.0)
        assert math.fsum(res.string_current_a) == pytest.approx(current, rel=1e-14, abs=1e-13)
    eb = pack.energy_balance()
    assert eb.throughput_j > 0
    assert abs(eb.residual_j) / eb.throughput_j < 1e-9
    lhs = eb.stored_start_j - eb.stored_now_j
    rhs = eb.dc_out_j + eb.cell_heat_j + eb.self_discharge_j + eb.bleed_j + eb.capacity_fade_j
    assert lhs - rhs == pytest.approx(eb.residual_j, abs=1e-6)
    tb = pack.thermal_balance()
    assert abs(tb.residual_j) < 1e-9 * (abs(tb.generated_j) + abs(tb.to_coolant_j) + 1.0)
    assert np.all(pack.cell_soc >= 0)
    assert np.all(pack.cell_soc <= 1)


def test_energy_balance_with_capacity_fade(cell: CellParams) -> None:
    pack = make_pack(cell)
    for _ in range(10):
        pack.step(4.0, 30.0)
    fade = np.linspace(0.0, 0.1, pack.n_cells)
    pack.set_ageing(fade, 1.5 * fade)
    for _ in range(10):
        pack.step(-4.0, 30.0)
    eb = pack.energy_balance()
    assert eb.capacity_fade_j > 0
    assert abs(eb.residual_j) / eb.throughput_j < 1e-9
    np.testing.assert_allclose(pack.cell_soh, 1.0 - fade)
    assert pack.soh < 1.0


def test_dc_energy_matches_bus_power(cell: CellParams) -> None:
    pack = make_pack(cell)
    res = pack.step(6.0, 0.5)
    mean_v = 0.5 * (res.bus_voltage_start_v + res.pack_voltage_v)
    assert res.dc_energy_j == pytest.approx(mean_v * 6.0 * 0.5, rel=1e-4)


def test_balancing_bleeds_only_selected_cells(cell: CellParams) -> None:
    pack = make_pack(cell, spread=SpreadConfig())
    bal = np.zeros(pack.n_cells, dtype=np.bool_)
    bal[[1, 7]] = True
    soc0 = pack.cell_soc
    res = pack.step(0.0, 600.0, balancing=bal, bleed_resistance_ohm=10.0)
    drop = soc0 - pack.cell_soc
    assert drop[1] > 1e-4
    assert drop[7] > 1e-4
    assert np.all(np.abs(np.delete(drop, [1, 7])) < 1e-9)
    v = 3.15  # about the cell voltage at 50 %
    assert res.bleed_j == pytest.approx(2 * v * v / 10.0 * 600.0, rel=0.05)


def test_step_rejects_bad_arguments(cell: CellParams) -> None:
    pack = make_pack(cell)
    with pytest.raises(ValueError, match="dt_s"):
        pack.step(1.0, 0.0)
    with pytest.raises(ValueError, match="current_a"):
        pack.step(math.nan, 1.0)
    with pytest.raises(ValueError, match="balancing"):
        pack.step(1.0, 1.0, balancing=np.ones(3, dtype=np.bool_))
    with pytest.raises(ValueError, match="initial_soc"):
        make_pack(cell, initial_soc=1.5)


# -------------------------------------------------------------------------------- thermal
def test_thermal_step_is_exact_under_constant_heat() -> None:
    t0 = np.array([25.0, 40.0])
    args = (np.array([70.0, 70.0]), np.array([0.3, 0.1]), 20.0, np.array([0.02, 0.02]), 30.0)
    heat_w = np.array([2.0, 0.5])
    t_one, qc_one, qa_one = lumped_thermal_step(t0, heat_w * 100.0, 100.0, *args)
    t_half, qc1, qa1 = lumped_thermal_step(t0, heat_w * 50.0, 50.0, *args)
    t_two, qc2, qa2 = lumped_thermal_step(t_half, heat_w * 50.0, 50.0, *args)
    np.testing.assert_allclose(t_two, t_one, rtol=1e-13)
    np.testing.assert_allclose(qc1 + qc2, qc_one, rtol=1e-10)
    np.testing.assert_allclose(qa1 + qa2, qa_one, rtol=1e-10)
    np.testing.assert_allclose(70.0 * (t_one - t0), heat_w * 100.0 - qc_one - qa_one, atol=1e-9)


def test_temperature_gradient_along_flow_and_module(cell: CellParams) -> None:
    topo = PackTopology(1, 4, 8)
    cooling = CoolingConfig(coolant_degc=20.0, coolant_capacity_rate_w_per_k=0.5)
    pack = make_pack(cell, topo, SpreadConfig(), cooling=cooling)
    for k in range(240):
        pack.step(8.0 if k % 2 else -8.0, 15.0, 20.0)
    t = pack.cell_temperature_degc.reshape(4, 8)
    # Coolant warms along the flow: each module warmer than the previous one.
    assert np.all(np.diff(t.mean(axis=1)) > 0.01)
    assert np.all(np.diff(pack.coolant_module_degc[0]) > 0)
    # Middle cells warmer than the edge cells of the same module.
    assert np.all(t[:, 3] > t[:, 0] + 0.01)
    assert np.all(t[:, 4] > t[:, 7] + 0.01)
    assert pack.cell_temperature_degc.min() > 20.0


def test_internal_short_heats_and_drains_the_cell(cell: CellParams) -> None:
    topo = PackTopology(1, 2, 6)
    faults = FaultInjector(topo.n_cells, 1, 0)
    faults.inject(FaultKind.INTERNAL_SHORT, 3, at_time_s=600.0, resistance_ohm=5.0)
    pack = make_pack(cell, topo, SpreadConfig(), faults=faults, time_s=0.0)
    for _ in range(60):
        pack.step(0.0, 60.0)
    t = pack.cell_temperature_degc
    soc = pack.cell_soc
    assert int(np.argmax(t)) == 3
    # About 0.64 A through 5 ohm: 2 W in the cell, 0.3 Ah in 50 min.
    assert t[3] > np.delete(t, 3).max() + 3.0
    assert soc[3] < np.delete(soc, 3).min() - 0.2
    assert pack.energy_balance().self_discharge_j > 0
    faults.clear(FaultKind.INTERNAL_SHORT, 3)
    soc_cleared = pack.cell_soc
    pack.step(0.0, 600.0)
    assert soc_cleared[3] - pack.cell_soc[3] < 1e-6


def test_cooling_failure_heats_its_string(cell: CellParams) -> None:
    topo = PackTopology(2, 1, 6)
    faults = FaultInjector(topo.n_cells, 2, 0)
    faults.inject(FaultKind.COOLING_FAILURE, 1, at_time_s=0.0, remaining_fraction=0.0)
    pack = make_pack(cell, topo, SpreadConfig(), faults=faults)
    for k in range(120):
        pack.step(10.0 if k % 2 else -10.0, 30.0, 20.0)
    t = pack.cell_temperature_degc.reshape(2, 6)
    assert t[1].min() > t[0].max() + 1.0


def test_real_lfp_parameters_run() -> None:
    params = scale_to_capacity(load_cell_params("lfp"), 100.0)
    pack = Pack(params, PackTopology(2, 2, 8), SpreadConfig(seed=3), CoolingConfig(), 0.5, 20.0)
    pack.ageing_window_s = math.inf
    e, r = pack.thevenin()
    assert 16 * 3.0 < e < 16 * 3.5  # 2 strings of 2 x 8 series cells
    assert 0 < r < 0.1
    res = pack.step(50.0, 10.0)
    assert res.pack_voltage_v < e


def test_thevenin_calls_do_not_change_the_trajectory(cell: CellParams) -> None:
    a = make_pack(cell)
    b = make_pack(cell)
    bal = np.zeros(a.n_cells, dtype=np.bool_)
    bal[2] = True
    for k in range(20):
        current = 5.0 * math.sin(k)
        e, r = a.thevenin()
        res_a = a.step(current, 7.0, 25.0, bal, 20.0)
        res_b = b.step(current, 7.0, 25.0, bal, 20.0)
        assert res_a.bus_voltage_start_v == pytest.approx(e - r * current, rel=1e-12)
        np.testing.assert_array_equal(res_a.string_current_a, res_b.string_current_a)
    np.testing.assert_array_equal(a.cell_voltage_v, b.cell_voltage_v)
    np.testing.assert_array_equal(a.cell_temperature_degc, b.cell_temperature_degc)


def test_ageing_changes_are_seen_by_thevenin(cell: CellParams) -> None:
    pack = make_pack(cell)
    _, r0 = pack.thevenin()
    pack.set_ageing(np.zeros(pack.n_cells), np.full(pack.n_cells, 0.5))
    _, r1 = pack.thevenin()
    assert r1 == pytest.approx(1.5 * r0)


# -------------------------------------------------------------------------------- ageing
def test_cell_ageing_adapter_matches_the_closed_form(cell: CellParams) -> None:
    n = 3
    model = CellAgeing.from_cell(cell, np.full(n, 2.0), np.full(n, 0.5))
    temp = np.array([25.0, 25.0, 45.0])
    soc = np.array([0.5, 0.9, 0.5])
    for _ in range(365):
        fade, growth = model.advance(86400.0, temp, soc, soc, np.zeros(n))
    law = model.params.cal_q
    expected = calendar_fade(law, np.full(n, 365 * 86400.0), soc, temp)
    np.testing.assert_allclose(fade, expected, rtol=1e-9)
    assert fade[1] > fade[0]  # high SoC ages faster
    assert fade[2] > 2 * fade[0]  # and so does heat
    assert np.all(growth > 0)


def test_cell_ageing_counts_cycles_from_windows(cell: CellParams) -> None:
    model = CellAgeing.from_cell(cell, np.array([2.0]), np.array([0.5]))
    soc = 0.5
    for k in range(200):  # 1 C cycles between 10 % and 90 %, one window per 0.1 of SoC
        going_down = (k // 8) % 2 == 0
        soc += -0.1 if going_down else 0.1
        model.advance(360.0, np.array([25.0]), np.array([soc]), np.array([soc]), np.array([0.2]))
    fade, _ = model.close()
    assert model.state.throughput_ah[0] == pytest.approx(40.0)
    assert fade[0] > model.state.q_cal[0]  # cycle wear was booked on top of calendar


def test_invalid_ageing_table_is_named(cell: CellParams) -> None:
    bad = replace(cell, ageing={"cal_q_k": 0.001})
    with pytest.raises(ConfigError, match="cal_q_z"):
        Pack(bad, PackTopology(1, 1, 2))
    quiet = Pack(replace(cell, ageing={}), PackTopology(1, 1, 2))
    assert isinstance(quiet.ageing, NoAgeing)


class RecordingAgeing:
    def __init__(self, n: int) -> None:
        self.calls: list[tuple[float, FloatArray, FloatArray, FloatArray]] = []
        self.n = n

    def advance(
        self,
        duration_s: float,
        temperature_degc: FloatArray,
        soc: FloatArray,
        soc_end: FloatArray,
        ah: FloatArray,
    ) -> tuple[FloatArray, FloatArray]:
        assert np.all(soc_end <= soc)  # discharging
        self.calls.append((duration_s, temperature_degc.copy(), soc.copy(), ah.copy()))
        fade = np.full(self.n, 0.01 * len(self.calls))
        return fade, 2.0 * fade


def test_pack_ages_on_windows_and_feeds_back(cell: CellParams) -> None:
    topo = PackTopology(2, 1, 3)
    rec = RecordingAgeing(topo.n_cells)
    pack = Pack(cell, topo, SpreadConfig(), CoolingConfig(), 0.5, 25.0, ageing=rec)
    q0 = pack.cell_capacity_ah
    for _ in range(25):
        pack.step(4.0, 10.0)  # 250 s: windows close at 60, 120, 180, 240 s
    assert len(rec.calls) == 4
    duration, temp, soc, ah = rec.calls[0]
    assert duration == pytest.approx(60.0)
    np.testing.assert_allclose(ah, 2.0 * 60.0 / 3600.0, rtol=1e-6)  # 2 A per string
    assert np.all(soc < 0.5)
    assert np.all(temp >= 25.0)
    np.testing.assert_allclose(pack.cell_capacity_ah, q0 * 0.96)
    np.testing.assert_allclose(pack.cell_resistance_scale, 1.08)
    eb = pack.energy_balance()
    assert eb.capacity_fade_j > 0
    assert abs(eb.residual_j) / eb.throughput_j < 1e-9


def test_default_ageing_fades_a_hot_pack_faster(cell: CellParams) -> None:
    cool = Pack(cell, PackTopology(1, 1, 2), ambient_degc=15.0, ageing_window_s=3600.0)
    hot = Pack(cell, PackTopology(1, 1, 2), ambient_degc=40.0, ageing_window_s=3600.0)
    for pack in (cool, hot):
        for _ in range(48):
            pack.step(0.0, 3600.0)
    assert 0.0 < 1.0 - cool.soh < 1.0 - hot.soh


def test_pack_thermal_agrees_with_cell_thermal() -> None:
    t0 = np.array([25.0, 40.0, 18.0])
    heat = np.array([200.0, 0.0, 50.0])
    c = np.array([77.0, 77.0, 150.0])
    gc = np.array([0.2, 0.1, 0.3])
    ga = np.array([0.01, 0.01, 0.02])
    t1, qc, qa = lumped_thermal_step(t0, heat, 30.0, c, gc, 20.0, ga, 30.0)
    # One conductance to the conductance-weighted environment is the same problem.
    t_env = (gc * 20.0 + ga * 30.0) / (gc + ga)
    ref = thermal_step(t0, heat, 30.0, c, gc + ga, t_env)
    np.testing.assert_allclose(t1, ref.temperature_degc, rtol=1e-12)
    np.testing.assert_allclose(qc + qa, ref.heat_to_coolant_j, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_fitted_cells_run_a_day_and_age(name: str) -> None:
    params = scale_to_capacity(load_cell_params(name), 50.0)
    topo = PackTopology(2, 2, 4)
    pack = Pack(params, topo, SPREAD, CoolingConfig(coolant_degc=25.0), 0.5, 25.0)
    for k in range(96):  # a day of 15 min steps: C/4 for 2 h each way, rest in between
        pack.step([12.5, 0.0, -12.5, 0.0][k // 8 % 4], 900.0)
    pack.close_ageing()
    eb = pack.energy_balance()
    assert abs(eb.residual_j) / eb.throughput_j < 1e-9
    assert 0.0 < 1.0 - pack.soh < 0.01
    assert np.all(pack.cell_resistance_scale >= pack.cell_spread.resistance_factor)
    assert pack.voltage_min_seen_v > params.voltage_min_v


def test_held_ecm_temperature_changes_little(cell: CellParams) -> None:
    exact = make_pack(cell, ecm_temperature_tolerance_k=0.0)
    held = make_pack(cell, ecm_temperature_tolerance_k=0.05)
    for k in range(300):
        current = 8.0 if (k // 50) % 2 == 0 else -8.0
        exact.step(current, 10.0)
        held.step(current, 10.0)
    assert exact.cell_temperature_degc.max() > 21.0  # it did heat up: the tables moved
    np.testing.assert_allclose(held.cell_voltage_v, exact.cell_voltage_v, atol=2e-4)
    np.testing.assert_allclose(held.cell_temperature_degc, exact.cell_temperature_degc, atol=0.01)
    np.testing.assert_allclose(held.cell_soc, exact.cell_soc, atol=3e-5)


def test_thermal_interval_keeps_balances_and_tracks_temperatures(cell: CellParams) -> None:
    every = make_pack(cell)
    sub = make_pack(cell, thermal_interval_s=10.0)
    for k in range(600):
        current = 9.0 if (k // 100) % 2 == 0 else -9.0
        every.step(current, 1.0)
        sub.step(current, 1.0)
    tb = sub.thermal_balance()
    assert tb.pending_j == pytest.approx(0.0, abs=1e-9)  # 600 s: the last interval just closed
    assert abs(tb.residual_j) < 1e-9 * (abs(tb.generated_j) + abs(tb.to_coolant_j))
    sub.step(9.0, 1.0)
    tb = sub.thermal_balance()
    assert tb.pending_j > 0
    assert abs(tb.residual_j) < 1e-9 * (abs(tb.generated_j) + abs(tb.to_coolant_j))
    np.testing.assert_allclose(sub.cell_temperature_degc, every.cell_temperature_degc, atol=0.02)
    eb = sub.energy_balance()
    assert abs(eb.residual_j) / eb.throughput_j < 1e-9
