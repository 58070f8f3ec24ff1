"""SoC estimator: the one-string (float current) path equals the per-cell array path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.estimator import SocEstimator, string_soc
from openbess.cell.ecm import CellModel
from openbess.cell.params import load_cell_params, scale_to_capacity

N_CELLS = 16
MODEL = CellModel(scale_to_capacity(load_cell_params("lfp"), 100.0))


def state(est: SocEstimator) -> tuple[object, ...]:
    return (
        est.soc,
        est.capacity_ah,
        est.rest_s,
        est.v_rc,
        est.hysteresis,
        est._anchor_soc,
        est._anchor_ah,
        est.throughput_ah,
        est.net_ah,
        est.corrections,
        est.initialised,
    )


def assert_same(a: SocEstimator, b: SocEstimator) -> None:
    for x, y in zip(state(a), state(b), strict=True):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)  # NaN == NaN here, values bit for bit
        else:
            assert x == y


current = st.one_of(
    st.floats(-150.0, 150.0),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, math.nan, math.inf, -math.inf]),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 1.0, 10.0, 60.0, 900.0, 2000.0]),
            current,
            st.floats(2.9, 3.5),
            st.floats(-10.0, 50.0),
            st.booleans(),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_float_current_gives_the_same_estimate_as_an_array_of_it(steps):
    by_float = SocEstimator(MODEL, N_CELLS)
    by_array = SocEstimator(MODEL, N_CELLS)
    rng = np.random.default_rng(7)
    for dt, i, v, t, all_valid in steps:
        volts = v + 0.01 * rng.standard_normal(N_CELLS)
        valid = np.ones(N_CELLS, dtype=bool) if all_valid else rng.random(N_CELLS) > 0.3
        temps = np.full(N_CELLS, t)
        # numpy warns on inf * dt; the float path computes the same values silently.
        with np.errstate(over="ignore", invalid="ignore"):
            a = by_float.update(dt, i, volts, valid, temps)
            b = by_array.update(dt, np.full(N_CELLS, i), volts, valid, temps)
        np.testing.assert_array_equal(a, b)
        assert_same(by_float, by_array)
        assert by_float.initialised == bool(np.all(np.isfinite(by_float.soc)))


def test_long_rest_corrects_from_ocv_and_charging_counts_efficiency():
    est = SocEstimator(MODEL, N_CELLS)
    # At 10 % SoC the LFP OCV is steep enough to be trusted (not on the flat plateau).
    ocv_10 = float(np.interp(0.1, MODEL.params.soc_grid, MODEL.ocv_ref_v))
    temps = np.full(N_CELLS, 25.0)
    valid = np.ones(N_CELLS, dtype=bool)
    est.update(0.0, 0.0, np.full(N_CELLS, ocv_10), valid, temps)
    assert est.initialised
    start = est.soc.copy()
    # One hour of charge at 10 A on 100 Ah: +0.1 SoC, times the coulombic efficiency.
    est.update(3600.0, -10.0, np.full(N_CELLS, ocv_10), valid, temps)
    eta = float(MODEL.coulombic_efficiency(np.array([25.0]))[0])
    np.testing.assert_allclose(est.soc - start, 10.0 * eta / est.capacity_ah)
    assert est.corrections == 0
    # A rest longer than rest_time_s pulls the SoC back towards the OCV reading.
    before = est.soc.copy()
    est.update(4000.0, 0.0, np.full(N_CELLS, ocv_10), valid, temps)
    assert est.corrections == 1
    assert np.all(np.abs(est.soc - start) < np.abs(before - start))


def test_initialised_follows_a_replaced_soc_array():
    est = SocEstimator(MODEL, N_CELLS)
    assert not est.initialised
    est.update(0.0, 0.0, np.full(N_CELLS, 3.3), np.ones(N_CELLS, dtype=bool), np.full(16, 25.0))
    assert est.initialised
    est.soc = np.full(N_CELLS, np.nan)
    assert not est.initialised


@pytest.mark.parametrize("n_strings", [1, 2, 4])
def test_string_soc_is_limited_by_the_weakest_cells(n_strings):
    rng = np.random.default_rng(n_strings)
    soc = rng.random(8 * n_strings)
    out = string_soc(soc, n_strings)
    per = soc.reshape(n_strings, -1)
    lo, hi = per.min(axis=1), per.max(axis=1)
    np.testing.assert_allclose(out, lo / (lo + 1.0 - hi))
    assert np.all(out <= per.max(axis=1) + 1e-12)
