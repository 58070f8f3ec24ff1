"""The fast ECM paths agree with their references.

- :meth:`CellModel.lookup` (bilinear coefficients per grid cell) against a direct
  lerp-of-lerps on the tables;
- :meth:`CellModel.stored_energy_j` against the integral of the reference OCV;
- :func:`step_compiled` (one compiled loop; plain Python without numba) against the numpy
  reference :func:`step`, to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.cell.ecm import CellModel, CellState, step, step_compiled
from openbess.cell.params import load_cell_params

MODELS = {name: CellModel(load_cell_params(name)) for name in ("lfp", "nmc")}


def lerp_tables(model: CellModel, soc: np.ndarray, temp: np.ndarray) -> np.ndarray:
    """Direct bilinear interpolation, cell by cell (clipped to the grids)."""
    p = model.params
    grid_z, grid_t = p.soc_grid, p.temperature_grid_degc
    tables = np.stack([p.ocv_v, p.hysteresis_v, p.r0_ohm, *p.rc_r_ohm], axis=0)
    out = np.empty((tables.shape[0], soc.size))
    for k, (z, t) in enumerate(zip(soc, temp, strict=True)):
        z = min(max(z, 0.0), 1.0)
        t = min(max(t, grid_t[0]), grid_t[-1])
        rows = np.array(
            [[np.interp(z, grid_z, tab[j]) for j in range(grid_t.size)] for tab in tables]
        )
        out[:, k] = [np.interp(t, grid_t, row) for row in rows]
    return out


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_lookup_matches_direct_interpolation(name: str) -> None:
    model = MODELS[name]
    rng = np.random.default_rng(3)
    grid_t = model.params.temperature_grid_degc
    soc = np.concatenate([rng.uniform(-0.1, 1.1, 200), model.params.soc_grid, [0.0, 1.0]])
    temp = np.concatenate(
        [rng.uniform(grid_t[0] - 10, grid_t[-1] + 10, 200), rng.choice(grid_t, soc.size - 200)]
    )
    got = model.tables(soc, temp)
    np.testing.assert_allclose(got, lerp_tables(model, soc, temp), rtol=1e-12, atol=1e-15)
    # The extra row of lookup() is the reference OCV at the same SoC.
    ref = np.interp(np.clip(soc, 0, 1), model.params.soc_grid, model.ocv_ref_v)
    np.testing.assert_allclose(model.lookup(soc, temp)[-1], ref, rtol=1e-13)


def test_reference_temperature_ocv_is_the_reference_ocv_exactly() -> None:
    """At 25 degC the OCV row and the reference row coincide bit for bit (no entropic term)."""
    model = MODELS["lfp"]
    soc = np.linspace(0.0, 1.0, 1001)
    look = model.lookup(soc, np.full(soc.size, 25.0))
    assert np.array_equal(look[0], look[-1])


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_stored_energy_is_the_integral_of_the_reference_ocv(name: str) -> None:
    model = MODELS[name]
    grid = model.params.soc_grid
    soc = np.linspace(0.0, 1.0, 401)
    fine = np.linspace(0.0, 1.0, 400_001)
    ocv = np.interp(fine, grid, model.ocv_ref_v)
    cumulative = np.concatenate(([0.0], np.cumsum(0.5 * (ocv[1:] + ocv[:-1]) * np.diff(fine))))
    expected = 3600.0 * 2.5 * np.interp(soc, fine, cumulative)
    np.testing.assert_allclose(model.stored_energy_j(soc, 2.5), expected, rtol=1e-9)
    assert model.stored_energy_j(np.array([1.3, -0.2]), 2.5).tolist() == pytest.approx(
        model.stored_energy_j(np.array([1.0, 0.0]), 2.5).tolist()
    )


def _states(model: CellModel, n: int, rng: np.random.Generator) -> tuple[CellState, CellState]:
    soc = rng.uniform(0.0, 1.0, n)
    soc[:2] = [0.0, 1.0]
    a = CellState.initial(model.params, soc)
    a.hysteresis = rng.uniform(-1.0, 1.0, n)
    a.v_rc = rng.normal(0.0, 0.01, (model.params.n_rc, n))
    b = CellState(a.soc.copy(), a.v_rc.copy(), a.hysteresis.copy())
    return a, b


def _assert_same(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["lfp", "nmc"]),
    seed=st.integers(0, 10_000),
    dt_s=st.floats(0.1, 900.0),
    c_rate=st.floats(-3.0, 3.0),
    temperature_degc=st.floats(-15.0, 55.0),
    leak_a=st.floats(0.0, 0.05),
)
def test_compiled_step_agrees_with_the_reference(
    name: str, seed: int, dt_s: float, c_rate: float, temperature_degc: float, leak_a: float
) -> None:
    model = MODELS[name]
    p = model.params
    rng = np.random.default_rng(seed)
    n = 9
    ref_state, fast_state = _states(model, n, rng)
    current = c_rate * p.capacity_ah * rng.uniform(0.5, 1.5, n)
    current[2] = 0.0  # an idle cell
    temp = temperature_degc + rng.normal(0.0, 2.0, n)
    capacity = p.capacity_ah * rng.uniform(0.9, 1.1, n)
    r_scale = rng.uniform(0.8, 1.5, n)
    leak = leak_a * rng.uniform(0.0, 1.0, n)
    for _ in range(3):
        ref = step(model, ref_state, current, dt_s, temp, capacity, r_scale, leak)
        fast = step_compiled(model, fast_state, current, dt_s, temp, capacity, r_scale, leak)
        energy_scale = float(np.abs(ref.stored_energy_change_j).max()) + 1.0
        for field in (
            "terminal_energy_j",
            "stored_energy_change_j",
            "heat_j",
            "leak_energy_j",
            "stored_energy_end_j",
        ):
            _assert_same(getattr(fast, field), getattr(ref, field), energy_scale)
        for field in ("voltage_v", "source_voltage_end_v", "resistance_end_ohm"):
            _assert_same(getattr(fast, field), getattr(ref, field))
        _assert_same(fast_state.soc, ref_state.soc)
        _assert_same(fast_state.v_rc, ref_state.v_rc)
        _assert_same(fast_state.hysteresis, ref_state.hysteresis)
        # Both close the per-cell energy identity.
        total = fast.terminal_energy_j + fast.heat_j + fast.leak_energy_j
        np.testing.assert_allclose(total, -fast.stored_energy_change_j, atol=1e-9 * energy_scale)


def test_compiled_step_takes_scalars_and_the_start_energy() -> None:
    model = MODELS["lfp"]
    p = model.params
    a = CellState.initial(p, np.array([0.3, 0.6, 0.9]))
    b = CellState.initial(p, np.array([0.3, 0.6, 0.9]))
    e0 = model.stored_energy_j(a.soc, p.capacity_ah)
    ref = step(model, a, np.array([1.0, -2.0, 0.0]), 30.0, np.array([25.0]), p.capacity_ah)
    fast = step_compiled(
        model, b, np.array([1.0, -2.0, 0.0]), 30.0, 25.0, p.capacity_ah, stored_energy_start_j=e0
    )
    _assert_same(fast.voltage_v, ref.voltage_v)
    _assert_same(fast.stored_energy_change_j, ref.stored_energy_change_j, 1e3)
    with pytest.raises(ValueError, match="dt_s"):
        step_compiled(model, b, np.zeros(3), 0.0, 25.0, p.capacity_ah)
