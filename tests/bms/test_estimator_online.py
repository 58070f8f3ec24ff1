"""The BMS's online estimator: pack SoC and energy, blocks with counting, SoP, SoH."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.estimator import OnlineEstimator, OnlineEstimatorConfig, string_soc
from openbess.bms.kalman import KalmanConfig, power_limits
from openbess.cell.ecm import CellModel, CellState, step
from openbess.cell.params import load_cell_params, scale_to_capacity

NMC = scale_to_capacity(load_cell_params("nmc"), 50.0)
LFP = scale_to_capacity(load_cell_params("lfp"), 100.0)


def started(
    params, n_strings: int, n_series: int, per_module: int, soc, **config: object
) -> OnlineEstimator:
    """An estimator woken up at rest at ``soc`` (exact OCV readings), then set to it."""
    model = CellModel(params)
    est = OnlineEstimator(model, n_strings, n_series, per_module, OnlineEstimatorConfig(**config))  # type: ignore[arg-type]
    n = n_strings * n_series
    z = np.broadcast_to(np.asarray(soc, dtype=np.float64), (n,))
    v = model.ocv(z, 25.0)
    est.update(0.0, np.zeros(n_strings), v, np.ones(n, dtype=bool), np.full(n // per_module, 25.0))
    est.filter.x[0] = z
    est.filter.P[0, 0] = 0.01**2
    est.refresh()
    return est


def test_pack_soc_and_energy_against_a_reference() -> None:
    rng = np.random.default_rng(4)
    est = started(NMC, 3, 4, 2, rng.uniform(0.2, 0.9, 12))
    cap = rng.uniform(45.0, 52.0, 12)
    est.capacity.capacity_ah[:] = cap
    pack = est.pack()
    z = est.soc.reshape(3, 4)
    q = cap.reshape(3, 4)
    d = (z * q).min(axis=1)
    c = ((1.0 - z) * q).min(axis=1)
    assert pack.soc == pytest.approx(d.sum() / (d + c).sum(), rel=1e-12)
    assert pack.capacity_ah == pytest.approx((d + c).sum(), rel=1e-12)
    assert pack.soc_cell_min == z.min()
    assert pack.soc_cell_max == z.max()
    # Energy: the open-circuit (25 degC) curve integrated over each cell's usable window.
    model = est.model
    grid = np.linspace(0.0, 1.0, 20001)
    ocv = np.interp(grid, NMC.soc_grid, model.ocv_ref_v)
    cum = np.concatenate(([0.0], np.cumsum(0.5 * (ocv[1:] + ocv[:-1]) * np.diff(grid))))

    def energy_wh(lo: np.ndarray, hi: np.ndarray, q_ah: np.ndarray) -> float:
        return float(np.sum(q_ah * (np.interp(hi, grid, cum) - np.interp(lo, grid, cum))))

    e_dis = sum(energy_wh(z[s] - d[s] / q[s], z[s], q[s]) for s in range(3))
    e_chg = sum(energy_wh(z[s], z[s] + c[s] / q[s], q[s]) for s in range(3))
    assert pack.energy_available_wh == pytest.approx(e_dis, rel=1e-6)
    assert pack.energy_chargeable_wh == pytest.approx(e_chg, rel=1e-6)
    assert 0.0 < pack.soc_std < 0.01


def test_one_string_of_equal_cells_is_string_soc() -> None:
    z = np.array([0.31, 0.52, 0.47, 0.9])
    est = started(LFP, 1, 4, 4, z)
    assert est.pack().soc == pytest.approx(float(string_soc(z, 1)[0]), rel=1e-12)


def test_blocks_count_exactly_between_updates() -> None:
    """Without usable voltages the SoC moves by the coulomb count alone, block or not."""
    est = started(NMC, 2, 8, 4, 0.6, max_filter_cells=4)
    assert est.block_start.size == 4
    eta = float(est.model.coulombic_efficiency(np.array([25.0]))[0])
    invalid = np.zeros(16, dtype=bool)
    bleed = np.zeros(16)
    bleed[3] = 0.2
    z = np.full(16, 0.6)
    t = 0.0
    for k in range(40):
        i_str = np.array([20.0, -15.0]) * (1 if k % 2 else 0.5)
        t += 2.0
        est.update(t, i_str, np.full(16, 3.7), invalid, np.full(4, 25.0), bleed_current_a=bleed)
        i = i_str.repeat(8)
        z -= (np.where(i < 0, eta, 1.0) * i + bleed) * 2.0 / 3600.0 / 50.0
    np.testing.assert_allclose(est.soc, z, rtol=0, atol=1e-12)
    # Every block was updated in turn (its time advanced), the std grew with the count.
    assert np.all(est.block_time_s > 60.0)
    assert np.all(est.soc_std > 0.01)


def ecm_run(params, currents, soc0, r_scale=1.0):
    """Voltages of cells under a per-cell current sequence (1 s steps) from rest."""
    model = CellModel(params)
    state = CellState.initial(params, np.asarray(soc0, dtype=np.float64))
    n = state.soc.size
    temp = np.full(n, 25.0)
    volts, socs = [], []
    for i in currents:
        res = step(model, state, np.full(n, i), 1.0, temp, params.capacity_ah, r_scale=r_scale)
        volts.append(res.voltage_v)
        socs.append(state.soc.copy())
    return np.array(volts), np.array(socs)


def test_resistance_from_the_current_steps_of_a_string() -> None:
    rng = np.random.default_rng(9)
    levels = rng.choice([-40.0, 0.0, 30.0, 60.0], 80)
    currents = np.repeat(levels, 60)  # 60 s per level (the RC pairs settle between steps)
    volts, _ = ecm_run(NMC, currents, np.full(4, 0.7), r_scale=1.3)
    volts = volts + rng.normal(0.0, 0.001, volts.shape)
    est = started(NMC, 1, 4, 4, 0.7)
    valid = np.ones(4, dtype=bool)
    for k, i in enumerate(currents):
        est.update(float(k + 1), np.array([i]), volts[k], valid, np.array([25.0]))
    assert np.all(est.resistance.measurements > 20)
    np.testing.assert_allclose(est.resistance.scale, 1.3, rtol=0.1)
    pack = est.pack()
    assert pack.resistance_growth == pytest.approx(1.3, rel=0.1)
    assert pack.resistance_std_ohm < 0.1 * pack.resistance_ohm


@pytest.mark.parametrize("horizon", [10.0, 60.0])
def test_pack_power_is_the_weakest_cells_exact_limit(horizon: float) -> None:
    z = np.array([0.55, 0.3, 0.62, 0.48, 0.9, 0.7])
    est = started(NMC, 1, 6, 3, z)
    f = est.filter
    sop = est.power_limits()
    key = f"{horizon:g}s"
    std = f.soc_std
    model = est.model
    temp = np.full(6, 25.0)
    lo = power_limits(model, z - std, f.v_rc, f.hysteresis, temp, horizon, capacity_ah=50.0)
    hi = power_limits(model, z + std, f.v_rc, f.hysteresis, temp, horizon, capacity_ah=50.0)
    assert sop[f"sop_discharge_{key}_a"] == pytest.approx(lo.discharge_current_a.min(), rel=1e-9)
    assert sop[f"sop_charge_{key}_a"] == pytest.approx(hi.charge_current_a.min(), rel=1e-9)
    # At that current for the horizon, the weakest cell ends at its voltage limit and the
    # power is the current times the sum of the cell voltages (within the linear model).
    for direction, sign in (("discharge", 1.0), ("charge", -1.0)):
        i_lim = sop[f"sop_{direction}_{key}_a"]
        zz = z - sign * std
        volts, _ = ecm_run(NMC, np.full(int(horizon), sign * i_lim), zz)
        limit = NMC.voltage_min_v if sign > 0 else NMC.voltage_max_v
        worst = volts.min() if sign > 0 else volts.max()
        assert abs(worst - limit) < 0.01
        assert sop[f"sop_{direction}_{key}_w"] == pytest.approx(
            i_lim * float(volts[-1].sum()), rel=0.03
        )
    capped = est.power_limits(charge_current_limit_a=5.0, discharge_current_limit_a=7.0)
    assert capped[f"sop_discharge_{key}_a"] == pytest.approx(7.0)
    assert capped[f"sop_charge_{key}_a"] == pytest.approx(5.0)


def test_sop_shrinks_with_the_horizon_and_strings_add() -> None:
    one = started(NMC, 1, 4, 4, 0.5)
    two = started(NMC, 2, 4, 4, 0.5)
    a, b = one.power_limits(), two.power_limits()
    assert a["sop_discharge_60s_w"] < a["sop_discharge_10s_w"]
    assert a["sop_charge_60s_w"] < a["sop_charge_10s_w"]
    assert b["sop_discharge_10s_w"] == pytest.approx(2.0 * a["sop_discharge_10s_w"], rel=1e-9)


def test_wakes_up_from_the_first_valid_voltage() -> None:
    model = CellModel(NMC)
    est = OnlineEstimator(model, 1, 4, 2)
    assert not est.initialised
    assert math.isnan(est.pack().soc)
    v = model.ocv(np.array([0.2, 0.4, 0.6, 0.8]), 25.0)
    est.update(0.0, np.zeros(1), v, np.zeros(4, dtype=bool), np.full(2, 25.0))
    assert not est.initialised
    est.update(1.0, np.zeros(1), v, np.ones(4, dtype=bool), np.full(2, 25.0))
    assert est.initialised
    np.testing.assert_allclose(est.soc, [0.2, 0.4, 0.6, 0.8], atol=0.01)
    pack = est.pack()
    assert pack.soc == pytest.approx(0.2 / (0.2 + 0.2), abs=0.02)
    assert pack.resistance_ohm > 0


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_filter_cells"):
        OnlineEstimatorConfig(max_filter_cells=0)
    with pytest.raises(ValueError, match="sop_horizons_s"):
        OnlineEstimatorConfig(sop_horizons_s=(10.0, -1.0))
    with pytest.raises(ValueError, match="layout"):
        OnlineEstimator(CellModel(NMC), 1, 10, 4)
    assert OnlineEstimatorConfig(kalman=KalmanConfig(method="ekf")).kalman.method == "ekf"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    socs=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
    caps=st.lists(st.floats(30.0, 60.0), min_size=6, max_size=6),
)
def test_pack_figures_stay_in_their_bounds(socs: list[float], caps: list[float]) -> None:
    est = started(NMC, 2, 3, 3, np.array(socs))
    est.capacity.capacity_ah[:] = caps
    pack = est.pack()
    assert 0.0 <= pack.soc <= 1.0
    assert pack.energy_available_wh >= 0.0
    assert pack.energy_chargeable_wh >= 0.0
    # Never more than the cells hold between empty and full.
    ocv = est.model.ocv_ref_v
    full_wh = float(np.sum(caps)) * float(np.trapezoid(ocv, NMC.soc_grid))
    assert pack.energy_available_wh + pack.energy_chargeable_wh <= full_wh * (1 + 1e-12)
    assert pack.capacity_ah <= 2.0 * max(caps) + 1e-9
    assert pack.soc_cell_min == min(socs)
    assert pack.soc_cell_max == max(socs)
