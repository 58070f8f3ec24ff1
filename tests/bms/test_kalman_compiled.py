"""The compiled filter, count/update split and state of power against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from openbess.bms.kalman import (
    CapacityEstimator,
    KalmanConfig,
    SocKalmanFilter,
    power_limits,
    power_limits_compiled,
)
from openbess.cell.ecm import CellModel, CellState, step
from openbess.cell.params import load_cell_params, scale_to_capacity

FIELDS = (
    "x",
    "P",
    "innovation_std_v",
    "open_circuit_prior_v",
    "open_circuit_post_v",
    "r0_table_ohm",
    "charge_ah",
)


def pair(cell: str, n: int, **kw: object) -> tuple[SocKalmanFilter, SocKalmanFilter]:
    model = CellModel(load_cell_params(cell))
    fs = [SocKalmanFilter(model, n, KalmanConfig(compiled=c, **kw)) for c in (True, False)]  # type: ignore[arg-type]
    return fs[0], fs[1]


@pytest.mark.parametrize("cell", ["lfp", "nmc"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"method": "ekf"},
        {"estimate_bias": False},
        {"bias_in_voltage": True},
        {"ocv_soc_error": 0.01, "current_noise_a": 0.05, "polarisation_error": 0.0},
    ],
)
def test_compiled_step_equals_numpy(cell: str, kw: dict[str, object]) -> None:
    rng = np.random.default_rng(1)
    n = 200
    compiled, reference = pair(cell, n, **kw)
    z0 = rng.uniform(0.0, 1.0, n)
    r_scale = rng.uniform(0.8, 1.3, n)
    for f in (compiled, reference):
        f.initialise(z0, 0.1)
        f.r_scale[:] = r_scale
    temp = rng.uniform(-10.0, 50.0, n)
    model = compiled.model
    for _ in range(30):
        i = rng.uniform(-3.0, 3.0, n)
        i[rng.random(n) < 0.05] = np.nan  # counted as 0 by both
        v = model.ocv(rng.uniform(0.0, 1.0, n), 25.0) + rng.normal(0.0, 0.01, n)
        v[rng.random(n) < 0.03] = np.nan
        valid = rng.random(n) > 0.05
        leak = rng.uniform(0.0, 0.1, n)
        dt = float(rng.choice([0.0, 1.0, 10.0, 60.0]))
        for f in (compiled, reference):
            f.step(dt, i, v, temp, valid, leak_current_a=leak)
    tol = 1e-7 if kw.get("method") == "ekf" else 1e-11  # EKF: finite-difference Jacobian
    for name in FIELDS:
        np.testing.assert_allclose(
            getattr(compiled, name), getattr(reference, name), rtol=tol, atol=tol, err_msg=name
        )
    np.testing.assert_array_equal(np.isnan(compiled.innovation_v), np.isnan(reference.innovation_v))


def test_grouped_inputs_equal_per_cell_inputs() -> None:
    """One current per string and one temperature per module: the same as per-cell arrays."""
    rng = np.random.default_rng(2)
    n_str, n_ser, per_mod = 3, 8, 4
    n = n_str * n_ser
    model = CellModel(load_cell_params("lfp"))
    a, b = (SocKalmanFilter(model, n) for _ in range(2))
    for f in (a, b):
        f.initialise(0.6, 0.1)
    for _ in range(20):
        i_str = rng.uniform(-50.0, 50.0, n_str)
        t_mod = rng.uniform(0.0, 40.0, n // per_mod)
        v = rng.uniform(3.2, 3.4, n)
        a.step(1.0, i_str, v, t_mod, current_group=n_ser, temperature_group=per_mod)
        b.step(1.0, i_str.repeat(n_ser), v, t_mod.repeat(per_mod))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.P, b.P)
    with pytest.raises(ValueError, match="divide"):
        a.step(1.0, np.zeros(5), v, 25.0, current_group=5)


def test_count_moves_the_soc_by_the_exact_charge() -> None:
    model = CellModel(scale_to_capacity(load_cell_params("nmc"), 50.0))
    f = SocKalmanFilter(model, 4)
    z0 = np.array([0.5, 0.5, 0.5, 0.02])
    f.initialise(z0, 0.05, bias_a=0.1)
    eta = float(model.coulombic_efficiency(np.array([25.0]))[0])
    i = np.array([10.0, -10.0, 0.0, 50.0])
    leak = np.array([0.0, 0.0, 0.5, 0.0])
    f.count(360.0, i, 25.0, leak_current_a=leak)
    i_eff = i - 0.1
    dz = np.where(i_eff < 0, eta, 1.0) * i_eff * 0.1 / 50.0 + leak * 0.1 / 50.0
    np.testing.assert_allclose(f.soc, np.clip(z0 - dz, 0.0, 1.0), rtol=1e-12)
    assert f.soc[3] == 0.0  # clipped at empty
    np.testing.assert_allclose(f.charge_ah, dz * 50.0, rtol=1e-12)
    # Nothing else moved yet: the covariance waits for update_counted.
    assert np.all(f.P[0, 0] == 0.05**2)


def test_update_in_blocks_tracks_like_the_plain_step() -> None:
    """Counting every second and a full update every 5 s tracks like the plain filter.

    Data from the filter's own model (so no model error in the tuning) from a 20 % error.
    """
    params = scale_to_capacity(load_cell_params("nmc"), 2.0)
    model = CellModel(params)
    rng = np.random.default_rng(11)
    n, cells = 1800, 4
    cur = np.repeat(rng.uniform(-3.0, 5.0, (n // 30, cells)), 30, axis=0) + 0.5
    state = CellState.initial(params, np.full(cells, 0.8))
    temp = np.full(cells, 25.0)
    volt = np.empty((n, cells))
    soc = np.empty((n, cells))
    for k in range(n):
        res = step(model, state, cur[k], 1.0, temp, params.capacity_ah)
        volt[k] = res.voltage_v + rng.normal(0.0, 0.002, cells)
        soc[k] = state.soc
    exact = KalmanConfig(model_error_v=0.003, model_error_time_s=60.0, polarisation_error=0.0)
    plain = SocKalmanFilter(model, cells, exact)
    blocks = SocKalmanFilter(model, cells, exact)
    for f in (plain, blocks):
        f.initialise(0.6, 0.2)
    last = [0, 0]
    err_plain, err_blocks = [], []
    for k in range(1, n):
        plain.step(1.0, cur[k], volt[k], 25.0)
        blocks.count(1.0, cur[k], 25.0)
        # Two blocks of two cells, each updated every 5 s, staggered.
        for b, (start, stop) in enumerate(((0, 2), (2, 4))):
            if (k + 2 * b) % 5 == 0:
                blocks.update_counted(
                    float(k - last[b]), cur[k], volt[k], 25.0, start=start, stop=stop
                )
                last[b] = k
        err_plain.append(plain.soc - soc[k])
        err_blocks.append(blocks.soc - soc[k])
    late = slice(600, None)
    rmse_plain = np.sqrt(np.mean(np.square(err_plain[late])))
    rmse_blocks = np.sqrt(np.mean(np.square(err_blocks[late])))
    assert rmse_plain < 0.002
    assert rmse_blocks < 0.002


def test_update_counted_checks_the_range() -> None:
    f = SocKalmanFilter(CellModel(load_cell_params("nmc")), 4)
    with pytest.raises(ValueError, match="initialise"):
        f.update_counted(1.0, 0.0, np.full(4, 3.7), 25.0)
    f.initialise(0.5, 0.1)
    with pytest.raises(ValueError, match="outside"):
        f.update_counted(1.0, 0.0, np.full(4, 3.7), 25.0, start=2, stop=6)


def test_zero_current_update_acts_on_its_range_only() -> None:
    model = CellModel(load_cell_params("nmc"))
    f = SocKalmanFilter(model, 4)
    f.initialise(0.5, 0.05)
    for _ in range(30):
        f.zero_current_update(np.full(4, 0.03), start=0, stop=2)
    np.testing.assert_allclose(f.bias_a[:2], 0.03, atol=0.002)
    np.testing.assert_array_equal(f.bias_a[2:], 0.0)


@pytest.mark.parametrize("horizon", [10.0, 60.0])
@pytest.mark.parametrize("cell", ["lfp", "nmc"])
def test_compiled_power_limits_equal_numpy(horizon: float, cell: str) -> None:
    params = scale_to_capacity(load_cell_params(cell), 2.0)
    model = CellModel(params)
    rng = np.random.default_rng(3)
    n = 60
    soc = rng.uniform(0.0, 1.0, n)
    v_rc = rng.normal(0.0, 0.02, (params.n_rc, n))
    h = rng.uniform(-1.0, 1.0, n)
    temp = rng.uniform(-10.0, 50.0, n)
    kw = {
        "capacity_ah": rng.uniform(1.5, 2.5, n),
        "r_scale": rng.uniform(0.8, 1.5, n),
        "max_discharge_current_a": rng.uniform(5.0, 50.0, n),
    }
    a = power_limits(model, soc, v_rc, h, temp, horizon, **kw)  # type: ignore[arg-type]
    b = power_limits_compiled(model, soc, v_rc, h, temp, horizon, **kw)  # type: ignore[arg-type]
    for name in (
        "discharge_current_a",
        "charge_current_a",
        "discharge_voltage_v",
        "charge_voltage_v",
        "discharge_power_w",
        "charge_power_w",
        "discharge_resistance_ohm",
        "charge_resistance_ohm",
    ):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-9)


def test_capacity_kernel_ignores_an_implausible_measurement() -> None:
    est = CapacityEstimator(np.array([2.0]), np.array([0.2]), min_delta_soc=0.3)
    est.update(np.zeros(1), np.array([0.9]), np.array([0.01]))
    est.update(np.array([0.0]), np.array([0.4]), np.array([0.01]))  # no charge for 0.5 SoC
    assert est.measurements[0] == 0
    assert est.capacity_ah[0] < 2.0 + 1e-12  # only the forgetting widened the std
    assert est.capacity_std_ah[0] > 0.2
