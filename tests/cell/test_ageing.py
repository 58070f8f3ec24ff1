"""Ageing: monotone in every stress, exact at constant stress, cycles counted online."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.cell.ageing import (
    AgeingState,
    ageing_params,
    ageing_table,
    calendar_fade,
    close_half_cycles,
    cycle_fade,
    update,
)
from openbess.cell.params import load_cell_params

PARAMS = {name: ageing_params(load_cell_params(name).ageing) for name in ("lfp", "nmc")}
YEAR_S = 365.25 * 86400.0


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_calendar_fade_monotone_in_time_temperature_soc(name: str) -> None:
    law = PARAMS[name].cal_q
    days = np.array([30.0, 365.0, 3650.0]) * 86400.0
    fade_t = calendar_fade(law, days, 0.5, 25.0)
    assert np.all(np.diff(fade_t) > 0)
    fade_temp = calendar_fade(law, YEAR_S, 0.5, np.array([0.0, 25.0, 45.0]))
    assert np.all(np.diff(fade_temp) > 0)
    fade_soc = calendar_fade(law, YEAR_S, np.array([0.5, 0.8, 1.0]), 25.0)
    assert np.all(np.diff(fade_soc) > 0)
    # Sanity of magnitude: a year at 25 degC, 50 % SoC costs between 0.3 % and 6 %.
    assert 0.003 < float(fade_t[1]) < 0.06


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_cycle_fade_monotone_in_throughput_depth_temperature(name: str) -> None:
    law = PARAMS[name].cyc_q
    fec = cycle_fade(law, np.array([100.0, 1000.0, 3000.0]), 0.8, 1.0, 25.0)
    assert np.all(np.diff(fec) > 0)
    depth = cycle_fade(law, 1000.0, np.array([0.2, 0.6, 1.0]), 1.0, 25.0)
    assert np.all(np.diff(depth) > 0)
    temp = cycle_fade(law, 1000.0, 0.8, 1.0, np.array([15.0, 25.0, 40.0]))
    assert np.all(np.diff(temp) > 0)
    # 1000 full cycles at 25 degC lose between 1 % and 25 % of the capacity.
    assert 0.01 < float(fec[1]) < 0.25


def test_lfp_cycle_fade_grows_with_c_rate() -> None:
    law = PARAMS["lfp"].cyc_q
    fade = cycle_fade(law, 1000.0, 0.8, np.array([0.5, 1.0, 2.0]), 25.0)
    assert np.all(np.diff(fade) > 0)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["lfp", "nmc"]),
    soc=st.floats(0.0, 1.0),
    temperature_degc=st.floats(-10.0, 55.0),
    steps=st.integers(2, 30),
)
def test_virtual_age_stepping_matches_closed_form(
    name: str, soc: float, temperature_degc: float, steps: int
) -> None:
    p = PARAMS[name]
    state = AgeingState.new(np.array([soc]))
    dt = YEAR_S / steps
    for _ in range(steps):
        state = update(state, p, dt, np.array([soc]), temperature_degc, 0.0, 2.0)
    q = calendar_fade(p.cal_q, YEAR_S, soc, temperature_degc)
    r = calendar_fade(p.cal_r, YEAR_S, soc, temperature_degc)
    assert state.q_cal[0] == pytest.approx(float(q), rel=1e-9, abs=1e-15)
    assert state.r_cal[0] == pytest.approx(float(r), rel=1e-9, abs=1e-15)
    assert state.q_cyc[0] == 0.0


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["lfp", "nmc"]),
    seed=st.integers(0, 10_000),
    dt_s=st.floats(1.0, 3600.0),
)
def test_fade_never_decreases_under_random_use(name: str, seed: int, dt_s: float) -> None:
    p = PARAMS[name]
    rng = np.random.default_rng(seed)
    n = 16
    soc = rng.uniform(0.1, 0.9, n)
    state = AgeingState.new(soc)
    for _ in range(40):
        current = rng.uniform(-2.0, 2.0, n) * 2.0
        soc = np.clip(soc - current * dt_s / 3600.0 / 2.0, 0.0, 1.0)
        new = update(state, p, dt_s, soc, rng.uniform(0.0, 45.0, n), current, 2.0)
        for attr in ("q_cal", "q_cyc", "r_cal", "r_cyc"):
            assert np.all(getattr(new, attr) >= getattr(state, attr))
        state = new
    closed = close_half_cycles(state, p, 2.0)
    assert np.all(closed.q_cyc >= state.q_cyc)
    assert np.all(closed.capacity_factor <= 1.0)
    assert np.all(closed.resistance_factor >= 1.0)


def _triangle_cycles(
    n_cycles: int, depth: float, c_rate: float, dt_s: float, capacity_ah: float, n_cells: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """SoC and current of full cycles between 0.5 +- depth/2 at a constant C-rate."""
    half_steps = round(depth / c_rate * 3600.0 / dt_s)
    i_half = np.concatenate([np.full(half_steps, c_rate), np.full(half_steps, -c_rate)])
    current = np.tile(i_half, n_cycles) * capacity_ah
    soc = 0.5 + depth / 2 - np.cumsum(current) * dt_s / 3600.0 / capacity_ah
    return np.tile(soc[:, None], (1, n_cells)), np.tile(current[:, None], (1, n_cells))


@pytest.mark.parametrize("name", ["lfp", "nmc"])
def test_online_cycle_counting_matches_closed_form(name: str) -> None:
    p = PARAMS[name]
    cap, depth, c_rate, dt = 2.0, 0.8, 1.0, 60.0
    soc, current = _triangle_cycles(20, depth, c_rate, dt, cap)
    state = AgeingState.new(np.array([0.5 + depth / 2]))
    for k in range(soc.shape[0]):
        state = update(state, p, dt, soc[k], 40.0, current[k], cap)
    state = close_half_cycles(state, p, cap)
    fec = float(state.throughput_ah[0]) / (2 * cap)
    assert fec == pytest.approx(20 * depth, rel=1e-9)  # 20 cycles of 0.8 depth = 16 FEC
    expected = cycle_fade(p.cyc_q, fec, depth, c_rate, 40.0)
    assert state.q_cyc[0] == pytest.approx(float(expected), rel=0.02)
    expected_r = cycle_fade(p.cyc_r, fec, depth, c_rate, 40.0)
    assert state.r_cyc[0] == pytest.approx(float(expected_r), rel=0.02)


def test_more_stress_more_fade_in_a_fleet() -> None:
    """1,000 cells in one call per step: hotter and deeper-cycled cells age faster."""
    p = PARAMS["lfp"]
    n = 1000
    temps = np.where(np.arange(n) < n // 2, 25.0, 40.0)
    depth_small, depth_big = 0.2, 0.8
    dt, cap = 120.0, 2.0
    soc_s, cur_s = _triangle_cycles(5, depth_small, 1.0, dt, cap, n // 2)
    soc_b, cur_b = _triangle_cycles(5, depth_big, 1.0, dt, cap, n // 2)
    steps = soc_b.shape[0]
    reps = steps // soc_s.shape[0]
    soc_s = np.tile(soc_s, (reps, 1))[:steps]
    cur_s = np.tile(cur_s, (reps, 1))[:steps]
    # Columns 0..499 small cycles, 500..999 big cycles; temps split the other way round
    # inside each group so every combination exists.
    soc = np.hstack([soc_s, soc_b])
    cur = np.hstack([cur_s, cur_b])
    temps = np.tile(np.where(np.arange(n // 2) % 2 == 0, 25.0, 40.0), 2)
    state = AgeingState.new(soc[0])
    for k in range(steps):
        state = update(state, p, dt, soc[k], temps, cur[k], cap)
    state = close_half_cycles(state, p, cap)
    q = 1.0 - state.capacity_factor
    small_cool, small_hot = q[0:500:2].mean(), q[1:500:2].mean()
    big_cool, big_hot = q[500::2].mean(), q[501::2].mean()
    assert small_hot > small_cool
    assert big_hot > big_cool
    # Per unit throughput the deep cycles wear more (Naumann's depth factor).
    tp = state.throughput_ah
    assert big_cool / tp[500] > small_cool / tp[0]


def test_ageing_table_round_trip() -> None:
    p = PARAMS["nmc"]
    assert ageing_params(ageing_table(p)) == p


def test_update_rejects_negative_step() -> None:
    with pytest.raises(ValueError, match="dt_s"):
        update(AgeingState.new(np.array([0.5])), PARAMS["lfp"], -1.0, np.array([0.5]), 25, 0, 2)
