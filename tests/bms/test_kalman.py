"""Sigma-point Kalman filter, SoH and SoP on synthetic data from the ECM itself."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.kalman import (
    BatteryStateEstimator,
    CapacityEstimator,
    KalmanConfig,
    ResistanceEstimator,
    SocKalmanFilter,
    _Tables,
    power_limits,
    replay,
    string_power_limits,
)
from openbess.cell.ecm import CellModel, CellState, step
from openbess.cell.params import CellParams, load_cell_params, scale_to_capacity

# The synthetic data come from the filter's own model: no model error, so a small one.
EXACT = {"model_error_v": 0.003, "model_error_time_s": 60.0, "polarisation_error": 0.0}


def _nmc() -> CellParams:
    return scale_to_capacity(load_cell_params("nmc"), 2.0)


def _profile(rng: np.random.Generator, n: int, cells: int, capacity_ah: float) -> np.ndarray:
    """Random pulses (-1.5C..2.5C, 5-120 s) and rests, net discharge about C/4."""
    out = np.zeros((n, cells))
    for c in range(cells):
        k = 0
        while k < n:
            d = int(rng.integers(5, 120))
            level = rng.choice([0.0, rng.uniform(-1.5, 2.5)])
            out[k : k + d, c] = level * capacity_ah
            k += d
    return out + 0.25 * capacity_ah


def _simulate(
    params: CellParams,
    current_a: np.ndarray,
    dt_s: float,
    soc0: np.ndarray,
    *,
    hysteresis0: float = 0.0,
    r_scale: float = 1.0,
    capacity_ah: float | None = None,
    keep_soc: tuple[float, float] = (0.05, 0.97),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voltage and true SoC of N cells under a current (reversed near the SoC limits)."""
    model = CellModel(params)
    cap = params.capacity_ah if capacity_ah is None else capacity_ah
    n, cells = current_a.shape
    cur = current_a.copy()
    state = CellState.initial(params, soc0)
    state.hysteresis[:] = hysteresis0
    temp = np.full(cells, 25.0)
    volt = np.empty((n, cells))
    soc = np.empty((n, cells))
    tab = model.tables(state.soc, temp)
    volt[0] = tab[0] + tab[1] * state.hysteresis
    soc[0] = state.soc
    for k in range(1, n):
        low = (state.soc < keep_soc[0]) & (cur[k] > 0)
        high = (state.soc > keep_soc[1]) & (cur[k] < 0)
        cur[k] = np.where(low | high, -cur[k], cur[k])
        res = step(model, state, cur[k], dt_s, temp, cap, r_scale=r_scale)
        volt[k] = res.voltage_v
        soc[k] = state.soc
    return cur, volt, soc


def _run(
    f: SocKalmanFilter, cur: np.ndarray, volt: np.ndarray, dt_s: float
) -> tuple[np.ndarray, np.ndarray]:
    n = cur.shape[0]
    est = np.empty_like(cur)
    std = np.empty_like(cur)
    est[0], std[0] = f.soc, f.soc_std
    for k in range(1, n):
        f.step(dt_s, cur[k], volt[k], 25.0)
        est[k], std[k] = f.soc, f.soc_std
    return est, std


# -- the interpolation is the CellModel's -----------------------------------------------------


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_tables_match_cell_model(name: str) -> None:
    params = load_cell_params(name)
    model = CellModel(params)
    tab = _Tables(model)
    rng = np.random.default_rng(3)
    soc = np.concatenate([rng.uniform(-0.1, 1.1, 500), params.soc_grid, [0.0, 1.0]])
    t_grid = params.temperature_grid_degc
    temp = np.concatenate(
        [rng.uniform(t_grid[0] - 10, t_grid[-1] + 10, 500), np.full(params.soc_grid.size + 2, 25.0)]
    )
    temp[:5] = t_grid[-1]
    temp[5:10] = t_grid[0]
    jb, ft = tab.temperature_weights(temp)
    idx, fz = tab.soc_index(soc, jb)
    want = model.tables(soc, temp)
    for k in range(want.shape[0]):
        np.testing.assert_allclose(tab.value(k, idx, fz, ft), want[k], rtol=1e-12, atol=1e-12)
    for k in range(params.n_rc):
        np.testing.assert_allclose(
            tab.along_temperature(tab.tau[k], jb, ft), model.rc_tau(temp)[k], rtol=1e-12
        )
    np.testing.assert_allclose(
        tab.along_temperature(tab.eta, jb, ft), model.coulombic_efficiency(temp), rtol=1e-12
    )


# -- convergence, consistency, bias ----------------------------------------------------------


@pytest.mark.parametrize("method", ["spkf", "ekf"])
def test_converges_from_20_percent_error(method: str) -> None:
    params = _nmc()
    rng = np.random.default_rng(11)
    cells, n, dt = 6, 720, 5.0  # one hour
    truth0 = rng.uniform(0.4, 0.9, cells)
    cur, volt, soc = _simulate(params, _profile(rng, n, cells, 2.0), dt, truth0)
    volt = volt + rng.normal(0.0, 0.002, volt.shape)
    f = SocKalmanFilter(CellModel(params), cells, KalmanConfig(method=method, **EXACT))
    wrong = np.clip(truth0 + np.where(np.arange(cells) % 2, 0.2, -0.2), 0.0, 1.0)
    f.initialise(wrong, 0.2)
    est, std = _run(f, cur * 1.005, volt, dt)
    err = est - soc
    assert np.all(np.abs(err[0]) > 0.09)
    late = slice(n // 3, None)  # after 20 minutes
    assert np.sqrt(np.mean(err[late] ** 2)) < 0.01
    assert np.max(np.abs(err[late])) < 0.03
    # The std shrinks from the prior and covers the error.
    assert np.all(std[-1] < 0.03)
    assert np.all(std[-1] < 0.2 * std[0])
    assert np.mean(np.abs(err[late]) <= 3.0 * std[late]) > 0.95


def test_flat_lfp_from_full_converges() -> None:
    """LFP (flat OCV) starting full: the steep top end corrects a 20 % error at once."""
    params = load_cell_params("lfp")
    rng = np.random.default_rng(5)
    cells, n, dt = 3, 1440, 5.0  # two hours, down the plateau
    cur, volt, soc = _simulate(
        params, _profile(rng, n, cells, params.capacity_ah), dt, np.ones(cells), hysteresis0=1.0
    )
    volt = volt + rng.normal(0.0, 0.002, volt.shape)
    f = SocKalmanFilter(CellModel(params), cells, KalmanConfig(**EXACT))
    f.initialise(0.8, 0.2)
    est, std = _run(f, cur * 1.005, volt, dt)
    err = est - soc
    assert np.max(np.abs(err[120:])) < 0.03  # from 10 minutes on
    assert np.sqrt(np.mean(err[120:] ** 2)) < 0.015
    assert np.all(std[-1] < 0.05)


def test_bias_state_learns_an_offset() -> None:
    params = _nmc()
    rng = np.random.default_rng(21)
    cells, n, dt = 4, 2160, 10.0  # six hours
    cur, volt, soc = _simulate(params, _profile(rng, n, cells, 2.0), dt, np.full(cells, 0.8))
    volt = volt + rng.normal(0.0, 0.002, volt.shape)
    offset = 0.04  # A, 2 % of the capacity per hour
    f = SocKalmanFilter(CellModel(params), cells, KalmanConfig())
    f.initialise(soc[0], 0.05)
    b0_std = float(f.bias_std_a[0])
    est, _ = _run(f, cur + offset, volt, dt)
    assert np.all(np.abs(f.bias_a - offset) < 0.3 * offset)
    assert np.all(f.bias_std_a < 0.5 * b0_std)
    # Without the offset state the SoC drifts; with it, it does not.
    g = SocKalmanFilter(CellModel(params), cells, KalmanConfig(estimate_bias=False))
    g.initialise(soc[0], 0.05)
    est_nb, _ = _run(g, cur + offset, volt, dt)
    late = slice(n // 2, None)
    rmse = np.sqrt(np.mean((est[late] - soc[late]) ** 2))
    rmse_nb = np.sqrt(np.mean((est_nb[late] - soc[late]) ** 2))
    assert rmse < 0.004
    assert rmse < 0.5 * rmse_nb
    # Shared current sensor: the fused offset of the string is as good.
    fused, fused_std = f.string_bias(np.zeros(cells, dtype=np.intp))
    assert abs(fused[0] - offset) < 0.3 * offset
    assert fused_std[0] < f.bias_std_a.min()


def test_invalid_voltage_is_not_used() -> None:
    params = _nmc()
    model = CellModel(params)
    f = SocKalmanFilter(model, 2, KalmanConfig())
    f.initialise(np.array([0.5, 0.5]), 0.1)
    v = model.ocv(np.array([0.9, 0.9]), 25.0)  # far from the estimate
    f.step(1.0, np.zeros(2), np.array([v[0], np.nan]), 25.0, valid=np.array([True, True]))
    assert f.soc[0] > 0.5
    assert f.soc[1] == pytest.approx(0.5, abs=1e-6)
    assert np.isnan(f.innovation_v[1])
    f.step(1.0, np.zeros(2), v, 25.0, valid=np.array([False, True]))
    assert f.soc[1] > 0.5


def test_step_before_initialise_raises() -> None:
    f = SocKalmanFilter(CellModel(_nmc()), 1)
    with pytest.raises(ValueError, match="initialise"):
        f.step(1.0, np.zeros(1), np.full(1, 3.7), 25.0)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="method"):
        KalmanConfig(method="ukf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_error_v"):
        KalmanConfig(model_error_v=-1.0)
    with pytest.raises(ValueError, match="sigma_step"):
        KalmanConfig(sigma_step=0.5)


def test_wake_up_from_voltage() -> None:
    params = _nmc()
    model = CellModel(params)
    z = np.array([0.15, 0.5, 0.85])
    f = SocKalmanFilter(model, 3)
    f.initialise_from_voltage(model.ocv(z, 25.0), np.zeros(3), np.full(3, 25.0))
    np.testing.assert_allclose(f.soc, z, atol=0.01)
    assert np.all(f.soc_std < 0.1)
    lfp = load_cell_params("lfp")
    g = SocKalmanFilter(CellModel(lfp), 1)
    g.initialise_from_voltage(CellModel(lfp).ocv(np.array([0.5]), 25.0), np.zeros(1), 25.0)
    assert g.soc_std[0] > 0.05  # the LFP plateau says little


@settings(max_examples=40, deadline=None)
@given(
    soc0=st.floats(0.0, 1.0),
    std0=st.floats(0.001, 0.6),
    currents=st.lists(st.floats(-200.0, 200.0), min_size=1, max_size=12),
    voltages=st.lists(
        st.one_of(st.floats(0.0, 6.0), st.just(float("nan"))), min_size=12, max_size=12
    ),
    dt=st.floats(0.01, 3600.0),
    method=st.sampled_from(["spkf", "ekf"]),
    cell=st.sampled_from(["lfp", "nmc"]),
)
def test_soc_stays_in_bounds(
    soc0: float,
    std0: float,
    currents: list[float],
    voltages: list[float],
    dt: float,
    method: str,
    cell: str,
) -> None:
    model = CellModel(load_cell_params(cell))
    f = SocKalmanFilter(model, 1, KalmanConfig(method=method))  # type: ignore[arg-type]
    f.initialise(soc0, std0)
    for k, i in enumerate(currents):
        f.step(dt, np.array([i]), np.array([voltages[k]]), 25.0)
        assert 0.0 <= f.soc[0] <= 1.0
        assert np.isfinite(f.soc_std[0])
        assert f.soc_std[0] > 0.0
        assert -1.0 <= f.hysteresis[0] <= 1.0
        assert np.all(np.isfinite(f.x))


# -- SoH ---------------------------------------------------------------------------------------


def test_capacity_from_throughput_between_confident_soc() -> None:
    est = CapacityEstimator(np.array([2.0, 2.0]), np.array([0.2, 0.2]), min_delta_soc=0.3)
    true_q = np.array([1.8, 2.0])
    soc = np.array([0.9, 0.9])
    est.update(np.zeros(2), soc, np.full(2, 0.01))  # anchor
    for _ in range(60):  # discharge 0.6 of the capacity, SoC not confident on the way
        dq = 0.01 * true_q
        soc = soc - 0.01
        est.update(dq, soc, np.full(2, 0.05))
    assert np.all(est.measurements == 0)
    est.update(np.zeros(2), soc, np.full(2, 0.01))
    assert np.all(est.measurements == 1)
    np.testing.assert_allclose(est.capacity_ah, true_q, rtol=0.03)
    assert np.all(est.capacity_std_ah < 0.1)


def test_resistance_from_current_steps() -> None:
    params = _nmc()
    rng = np.random.default_rng(8)
    n, dt = 1800, 1.0
    cur, volt, _ = _simulate(params, _profile(rng, n, 1, 2.0), dt, np.array([0.7]), r_scale=1.3)
    volt = volt + rng.normal(0.0, 0.002, volt.shape)
    est = BatteryStateEstimator(CellModel(params), 1, KalmanConfig(**EXACT))
    for k in range(n):
        res = est.step(dt, cur[k], volt[k], 25.0, initial_soc=0.7, initial_soc_std=0.05)
    assert est.resistance.measurements[0] > 10
    assert res.resistance_ohm[0] == pytest.approx(
        1.3 * CellModel(params).tables(res.soc, np.array([25.0]))[2][0], rel=0.1
    )
    assert res.resistance_std_ohm[0] < 0.1 * res.resistance_ohm[0]


def test_resistance_estimator_ignores_small_steps_and_long_gaps() -> None:
    r = ResistanceEstimator(1)
    r.update(1.0, np.array([0.01]), np.array([-0.001]), np.zeros(1), np.array([0.01]), np.ones(1))
    r.update(60.0, np.array([1.0]), np.array([-0.05]), np.zeros(1), np.array([0.01]), np.ones(1))
    assert r.measurements[0] == 0
    r.update(1.0, np.array([1.0]), np.array([-0.02]), np.zeros(1), np.array([0.01]), np.ones(1))
    assert r.measurements[0] == 1
    assert r.scale[0] > 1.0


# -- SoP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon", [10.0, 60.0])
@pytest.mark.parametrize("cell", ["lfp", "nmc"])
def test_power_limits_hold_the_voltage_window(horizon: float, cell: str) -> None:
    params = scale_to_capacity(load_cell_params(cell), 2.0)
    model = CellModel(params)
    soc = np.array([0.15, 0.5, 0.9])
    v_rc = np.zeros((params.n_rc, 3))
    h = np.zeros(3)
    temp = np.full(3, 25.0)
    lim = power_limits(model, soc, v_rc, h, temp, horizon, max_discharge_current_a=40.0)
    assert np.all(lim.discharge_current_a > 0)
    assert np.all(lim.discharge_power_w > 0)
    assert np.all(lim.charge_power_w >= 0)
    for direction, sign, bound in (
        ("discharge", 1.0, params.voltage_min_v),
        ("charge", -1.0, params.voltage_max_v),
    ):
        i_lim = getattr(lim, f"{direction}_current_a")
        for factor, inside in ((1.0, True), (1.1, False)):
            state = CellState.initial(params, soc)
            i = sign * i_lim * factor
            vmin, vmax = np.full(3, np.inf), np.full(3, -np.inf)
            for _ in range(int(horizon)):
                r = step(model, state, i, 1.0, temp, params.capacity_ah)
                vmin = np.minimum(vmin, r.voltage_v)
                vmax = np.maximum(vmax, r.voltage_v)
            # Cells not limited by the current cap must reach the voltage bound.
            free = i_lim < (40.0 if sign > 0 else np.inf) * 0.999
            free &= (soc > 0.2) if sign > 0 else (soc < 0.85)
            worst = vmin if sign > 0 else vmax
            if inside:
                # closed form vs step-by-step ECM: resistances at the mid-horizon SoC
                assert np.all(sign * (worst - bound) >= -5e-3)
            else:
                assert np.all(sign * (worst[free] - bound) < 0)
    assert np.all(lim.discharge_current_a <= 40.0)


def test_power_shrinks_with_horizon_and_soc() -> None:
    params = _nmc()
    model = CellModel(params)
    soc = np.array([0.2, 0.5, 0.8])
    args = (np.zeros((params.n_rc, 3)), np.zeros(3), np.full(3, 25.0))
    p10 = power_limits(model, soc, *args, 10.0)
    p60 = power_limits(model, soc, *args, 60.0)
    assert np.all(p60.discharge_power_w <= p10.discharge_power_w + 1e-9)
    assert np.all(p60.charge_power_w <= p10.charge_power_w + 1e-9)
    assert np.all(np.diff(p10.discharge_power_w) > 0)  # more SoC, more discharge power
    assert np.all(np.diff(p10.charge_power_w) < 0)
    p_dis, _ = string_power_limits(p10, 1)
    assert p_dis[0] <= p10.discharge_power_w.sum() + 1e-9
    assert p_dis[0] > 0
    same = power_limits(model, np.full(3, 0.5), *args, 10.0)
    p_dis, _ = string_power_limits(same, 1)
    assert p_dis[0] == pytest.approx(same.discharge_power_w.sum(), rel=1e-9)


def test_estimator_power_limits_and_replay() -> None:
    params = _nmc()
    rng = np.random.default_rng(2)
    n, dt = 200, 1.0
    cur, volt, soc = _simulate(params, _profile(rng, n, 2, 2.0), dt, np.array([0.5, 0.6]))
    t = np.arange(n) * dt
    rep = replay(
        CellModel(params),
        t,
        cur,
        volt,
        np.full((n, 2), 25.0),
        config=KalmanConfig(**EXACT),
        power_horizons_s=(10.0, 60.0),
    )
    assert rep.soc.shape == (n, 2)
    assert np.all(np.abs(rep.soc[-1] - soc[-1]) < 0.03)  # from the first voltage
    assert np.all(rep.power["discharge_10s_w"] >= rep.power["discharge_60s_w"] - 1e-9)
    assert np.all(rep.power["charge_10s_w"] > 0)


def test_zero_current_calibrates_the_offset() -> None:
    params = _nmc()
    model = CellModel(params)
    f = SocKalmanFilter(model, 2, KalmanConfig())
    f.initialise(0.5, 0.05)
    v = model.ocv(np.full(2, 0.5), 25.0)
    offset = np.array([0.03, -0.02])
    for _ in range(30):  # contactors open: the true current is zero, the sensor reads its offset
        f.step(1.0, offset, v, 25.0, zero_current=np.array([True, True]))
    np.testing.assert_allclose(f.bias_a, offset, atol=0.002)
    assert np.all(f.bias_std_a < 0.003)
    np.testing.assert_allclose(f.soc, 0.5, atol=0.002)  # the offset was not counted as charge
