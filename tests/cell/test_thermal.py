"""Lumped thermal model: energy conservation, exactness, steady state, gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.cell.params import load_cell_params
from openbess.cell.thermal import ThermalNetwork, heat_capacity_j_per_k, thermal_step


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    dt_s=st.floats(0.01, 1e5),
    coupled=st.booleans(),
)
def test_energy_conservation(n: int, seed: int, dt_s: float, coupled: bool) -> None:
    """sum C dT == sum heat - sum heat_to_coolant; neighbour exchange only moves heat."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(50.0, 1000.0, n)
    g = rng.uniform(0.0, 2.0, n) * (rng.uniform(size=n) > 0.3)
    links = rng.uniform(0.0, 5.0, n - 1) * (rng.uniform(size=n - 1) > 0.2) if coupled else None
    net = ThermalNetwork(c, g, links)
    t0 = rng.uniform(-10.0, 50.0, n)
    heat = rng.uniform(-50.0, 500.0, n) * dt_s / 100.0
    tc = rng.uniform(0.0, 40.0, n)
    res = net.step(t0, heat, dt_s, tc)
    stored = float(np.sum(c * (res.temperature_degc - t0)))
    balance = float(np.sum(heat) - np.sum(res.heat_to_coolant_j))
    scale = max(1.0, float(np.sum(np.abs(heat))), float(np.sum(np.abs(c * t0))) * 1e-6)
    assert stored == pytest.approx(balance, abs=1e-8 * scale)


def test_one_long_step_equals_many_short_steps_coupled() -> None:
    rng = np.random.default_rng(4)
    n = 10
    c = rng.uniform(60.0, 90.0, n)
    g = np.full(n, 0.3)
    links = np.full(n - 1, 2.0)
    links[4] = 0.0  # two modules of five cells
    net = ThermalNetwork(c, g, links)
    t0 = rng.uniform(20.0, 30.0, n)
    power = rng.uniform(0.0, 3.0, n)
    tc = np.linspace(18.0, 22.0, n)
    one = net.step(t0, power * 600.0, 600.0, tc)
    t = t0.copy()
    to_coolant = np.zeros(n)
    for _ in range(600):
        r = net.step(t, power * 1.0, 1.0, tc)
        t = r.temperature_degc
        to_coolant += r.heat_to_coolant_j
    np.testing.assert_allclose(one.temperature_degc, t, atol=1e-9)
    np.testing.assert_allclose(one.heat_to_coolant_j, to_coolant, rtol=1e-8, atol=1e-8)


def test_uncoupled_matches_scalar_exponential_and_steady_state() -> None:
    c, g, tc, p = 80.0, 0.4, 20.0, 2.0
    res = thermal_step(np.array([35.0]), np.array([p * 120.0]), 120.0, c, g, tc)
    t_inf = tc + p / g
    expected = t_inf + (35.0 - t_inf) * np.exp(-g / c * 120.0)
    assert res.temperature_degc[0] == pytest.approx(expected, rel=1e-12)
    steady = thermal_step(np.array([35.0]), np.array([p * 1e7]), 1e7, c, g, tc)
    assert steady.temperature_degc[0] == pytest.approx(t_inf, rel=1e-9)
    assert 20.0 < res.mean_temperature_degc[0] < 35.0


def test_insulated_chain_spreads_heat_to_uniform() -> None:
    """No coolant: heat injected in cell 0 spreads along the module to a uniform temperature."""
    n = 6
    net = ThermalNetwork(np.full(n, 100.0), 0.0, np.full(n - 1, 1.0))
    heat = np.zeros(n)
    heat[0] = 600.0
    short = net.step(np.full(n, 25.0), heat, 10.0, 25.0)
    assert np.all(np.diff(short.temperature_degc) < 0)  # gradient along the module
    rest = net.step(short.temperature_degc, np.zeros(n), 1e5, 25.0)
    np.testing.assert_allclose(rest.temperature_degc, 25.0 + 600.0 / (n * 100.0), rtol=1e-9)
    np.testing.assert_allclose(rest.heat_to_coolant_j, 0.0, atol=1e-9)


def test_cooled_at_one_end_reaches_the_analytic_gradient() -> None:
    """Cells heated evenly, cooled only at cell 0: steady flux through each link."""
    n, power, g_end, link = 8, 1.0, 5.0, 0.5
    g = np.zeros(n)
    g[0] = g_end
    net = ThermalNetwork(np.full(n, 80.0), g, np.full(n - 1, link))
    dt = 1e6
    res = net.step(np.full(n, 25.0), np.full(n, power * dt), dt, 20.0)
    expected = np.empty(n)
    expected[0] = 20.0 + n * power / g_end
    for k in range(n - 1):
        expected[k + 1] = expected[k] + (n - 1 - k) * power / link
    np.testing.assert_allclose(res.temperature_degc, expected, rtol=1e-9)


def test_heat_capacity_of_builtin_cells_and_bad_arguments() -> None:
    assert heat_capacity_j_per_k(load_cell_params("lfp")) == pytest.approx(0.076 * 1100.0)
    with pytest.raises(ValueError, match="dt_s"):
        thermal_step(np.array([25.0]), np.array([1.0]), 0.0, 80.0, 0.1, 20.0)
    with pytest.raises(ValueError, match="heat capacity"):
        ThermalNetwork(np.array([0.0, 1.0]), 0.1)
