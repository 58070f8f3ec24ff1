"""Fitting: recover known parameters from ECM-generated data, and sane fits on measured data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from openbess.cell.fit import (
    PlettScripts,
    fit_ecm_dynamic,
    fit_ocv_plett,
    ocv_points_from_rests,
    ocv_table_from_points,
    simulate_log,
    soc_from_ocv,
    with_dynamics,
)
from openbess.cell.io import CellLog, read_cell_log
from openbess.cell.params import CellParams, load_cell_params
from openbess.errors import EstimationError

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


def _known_params() -> CellParams:
    """LFP OCV with simple, known dynamics (piecewise linear on knots 0, 0.5, 1)."""
    p = load_cell_params("lfp")
    nt, ns = p.r0_ohm.shape
    grid = p.soc_grid
    r0_row = np.interp(grid, [0.0, 0.5, 1.0], [0.014, 0.010, 0.012])
    r1_row = np.interp(grid, [0.0, 0.5, 1.0], [0.008, 0.005, 0.006])
    r2_row = np.full(ns, 0.012)
    return replace(
        p,
        r0_ohm=np.tile(r0_row, (nt, 1)),
        rc_r_ohm=np.stack([np.tile(r1_row, (nt, 1)), np.tile(r2_row, (nt, 1))]),
        rc_tau_s=np.array([[8.0] * nt, [150.0] * nt]),
        hysteresis_rate=40.0,
        coulombic_efficiency=np.full(nt, 0.995),
    )


def _synthetic(
    params: CellParams, current_a: np.ndarray, dt_s: float, soc0: float, h0: float = 0.0
) -> CellLog:
    n = current_a.size
    t = np.arange(n) * dt_s
    blank = CellLog(t, current_a, np.zeros(n), np.full(n, 25.0))
    sim = simulate_log(params, blank, soc0, hysteresis0=h0, temperature_degc=25.0)
    return replace(blank, voltage_v=sim.voltage_v)


def _pulse_profile(seed: int, n: int, capacity_ah: float) -> np.ndarray:
    """Random 5-60 s pulses (-2C..+3C) and rests, net discharge about 0.6 of the capacity."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    k = 0
    while k < n:
        length = int(rng.integers(5, 60))
        level = rng.choice([0.0, rng.uniform(-2.0, 3.0)], p=[0.3, 0.7])
        out[k : k + length] = level * capacity_ah
        k += length
    # Shift so the total discharge is 0.6 capacity.
    out += (0.6 * capacity_ah * 3600.0 - out.sum()) / n
    return out


def test_dynamic_fit_recovers_known_parameters() -> None:
    truth = _known_params()
    current = _pulse_profile(7, 3600, truth.capacity_ah)
    data = _synthetic(truth, current, 1.0, soc0=0.9, h0=1.0)
    fit = fit_ecm_dynamic(
        data,
        truth,
        soc0=0.9,
        temperature_degc=25.0,
        hysteresis0=1.0,
        tau_guess_s=(3.0, 60.0),
        soc_knots=3,
        smoothing=0.0,
        gamma_guess=10.0,
        max_evaluations=300,
    )
    # Noise-free data from the same model: recovery is essentially exact.
    assert fit.rmse_v < 1e-5
    np.testing.assert_allclose(fit.rc_tau_s, [8.0, 150.0], rtol=0.01)
    visited = (truth.soc_grid >= 0.3) & (truth.soc_grid <= 0.9)
    np.testing.assert_allclose(fit.r0_ohm[visited], truth.r0_ohm[2, visited], rtol=0.01)
    np.testing.assert_allclose(fit.rc_r_ohm[0, visited], truth.rc_r_ohm[0, 2, visited], rtol=0.02)
    np.testing.assert_allclose(fit.rc_r_ohm[1, visited], truth.rc_r_ohm[1, 2, visited], rtol=0.02)
    assert fit.hysteresis_rate == pytest.approx(40.0, rel=0.02)
    assert fit.hysteresis_scale == pytest.approx(1.0, rel=0.01)


def test_regression_model_is_the_ecm() -> None:
    """The fit's own residual equals the residual of the real ECM run with the fitted set."""
    truth = _known_params()
    current = _pulse_profile(3, 1200, truth.capacity_ah)
    noisy = _synthetic(truth, current, 2.0, soc0=0.8)
    rng = np.random.default_rng(0)
    noisy = replace(noisy, voltage_v=noisy.voltage_v + rng.normal(0, 2e-3, len(noisy)))
    fit = fit_ecm_dynamic(
        noisy, truth, soc0=0.8, temperature_degc=25.0, soc_knots=3, max_evaluations=60
    )
    fitted = with_dynamics(truth, {25.0: fit})
    sim = simulate_log(fitted, noisy, 0.8, temperature_degc=25.0)
    assert sim.rmse_v == pytest.approx(fit.rmse_v, rel=1e-6)
    assert fit.rmse_v == pytest.approx(2e-3, rel=0.15)  # the noise, no more


def test_knots_must_lie_on_the_grid() -> None:
    truth = _known_params()
    data = _synthetic(truth, np.ones(20), 1.0, 0.5)
    with pytest.raises(EstimationError, match="not on the 21-point"):
        fit_ecm_dynamic(data, truth, soc0=0.5, soc_knots=[0.0, 0.33, 1.0])


def _plett_scripts(params: CellParams, dt_s: float = 10.0) -> PlettScripts:
    q = params.capacity_ah
    i = q / 20.0
    eta = float(params.coulombic_efficiency[2])
    rest = np.zeros(int(3600 / dt_s))
    n_dis = round(q / i * 3600.0 / dt_s)
    s1 = _synthetic(params, np.concatenate([rest, np.full(n_dis, i), rest]), dt_s, 1.0, 1.0)
    s2 = _synthetic(params, np.concatenate([rest, rest]), dt_s, 0.0, -1.0)
    n_chg = round(q / (eta * i) * 3600.0 / dt_s)
    s3 = _synthetic(params, np.concatenate([rest, np.full(n_chg, -i), rest]), dt_s, 0.0, -1.0)
    s4 = _synthetic(params, np.concatenate([rest, rest]), dt_s, 1.0, 1.0)
    return PlettScripts(s1, s2, s3, s4)


def test_plett_ocv_recovers_ocv_hysteresis_efficiency() -> None:
    truth = replace(_known_params(), hysteresis_rate=200.0)
    fit = fit_ocv_plett({25.0: _plett_scripts(truth)}, smooth_min_temperature_degc=None)
    assert fit.capacity_ah[0] == pytest.approx(truth.capacity_ah, rel=2e-3)
    assert fit.coulombic_efficiency[0] == pytest.approx(0.995, abs=2e-4)
    mid = (fit.soc >= 0.15) & (fit.soc <= 0.85)
    np.testing.assert_allclose(fit.ocv_v[0, mid], truth.ocv_v[2, mid], atol=3e-3)
    np.testing.assert_allclose(fit.hysteresis_v[0, mid], truth.hysteresis_v[2, mid], atol=3e-3)


def test_plett_on_measured_25c_scripts() -> None:
    logs = [read_cell_log(BENCH / f"a123_ocv_25c_s{k}.csv.gz")[0] for k in (1, 2, 3, 4)]
    fit = fit_ocv_plett({25.0: PlettScripts(*logs)}, smooth_min_temperature_degc=None)
    assert fit.capacity_ah[0] == pytest.approx(2.073, abs=0.01)
    assert 0.99 < fit.coulombic_efficiency[0] <= 1.0
    assert fit.ocv_v[0, 10] == pytest.approx(3.30, abs=0.02)
    assert np.all(np.diff(fit.ocv_v[0]) >= 0)
    mid = (fit.soc >= 0.2) & (fit.soc <= 0.8)
    assert np.all(fit.hysteresis_v[0, mid] > 0.0)
    assert np.all(fit.hysteresis_v[0, mid] < 0.03)
    # The built-in set was fitted from the same data (plus other temperatures).
    builtin = load_cell_params("lfp")
    np.testing.assert_allclose(fit.ocv_v[0, mid], builtin.ocv_v[2, mid], atol=5e-3)


def test_builtin_lfp_on_measured_dynamic_test_start() -> None:
    (dyn,) = read_cell_log(BENCH / "a123_dyn_25c_s1.csv.gz")
    part = dyn.select(slice(0, 7200))
    sim = simulate_log(load_cell_params("lfp"), part, 1.0, hysteresis0=1.0, temperature_degc=25.0)
    assert sim.rmse_v < 0.02


def test_rest_points_of_measured_hppc() -> None:
    (hppc,) = read_cell_log(BENCH / "leaf_hppc_25c.csv.gz")
    cap = float(hppc.discharged_ah()[-1])
    pts = ocv_points_from_rests(hppc, cap, 1.0, min_rest_s=1800.0)
    assert pts.soc.size == 9
    assert np.all(np.diff(pts.soc) < 0)
    assert np.all(np.diff(pts.voltage_v) < 0)
    assert np.all(pts.previous_sign == 1)
    assert pts.soc[0] == pytest.approx(0.9, abs=0.01)
    table = ocv_table_from_points(pts.soc, pts.voltage_v, np.linspace(0, 1, 21))
    assert np.all(np.diff(table) >= 0)


def test_soc_from_ocv_inverts_the_table() -> None:
    p = load_cell_params("nmc")
    v = float(p.ocv_v[1, 12])
    assert soc_from_ocv(p, v, 25.0) == pytest.approx(p.soc_grid[12], abs=1e-3)
