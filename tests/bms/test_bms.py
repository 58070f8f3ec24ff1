"""BMS cycle: the monitoring summary and the pack SoC against plain reference computations."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.bms import BatteryManagementSystem, BmsSetup, _pack_soc
from openbess.bms.contactor import ContactorOutput
from openbess.bms.defaults import default_params
from openbess.bms.estimator import string_soc
from openbess.cell.params import load_cell_params, scale_to_capacity
from openbess.contract import (
    Actuation,
    ContactorRequest,
    ContactorState,
    GateDecision,
    Outcome,
    Reason,
)
from openbess.plant import Measurements

CELL = scale_to_capacity(load_cell_params("lfp"), 100.0)
NO_DECISION = GateDecision(Outcome.SAFE_IDLE, Reason.NO_COMMAND, -1, 0.0, 0.0, "")


def make_bms(n_strings: int, modules_per_string: int, cells_per_module: int):
    setup = BmsSetup(
        cell=CELL,
        n_strings=n_strings,
        n_series=modules_per_string * cells_per_module,
        modules_per_string=modules_per_string,
        params=default_params("lfp", 100.0 * n_strings),
        max_charge_power_w=5000.0,
        max_discharge_power_w=5000.0,
    )
    return BatteryManagementSystem(setup)


def reference_temperatures(m: Measurements, n_cells: int, n_mod: int):
    """The per-cell temperature rule written out with numpy's NaN-aware functions.

    A reading counts when it is flagged valid and finite (the monitor excludes the others;
    every finite reading of the snapshots lies inside the plausible range).
    """
    ok = m.cell_temperature_valid & np.isfinite(m.cell_temperature_degc)
    t = np.where(ok, m.cell_temperature_degc, np.nan)
    if not np.any(ok):
        return np.full(n_cells, 25.0), math.nan, math.nan, math.nan
    per_mod = n_cells // n_mod
    module = m.temperature_sensor_cell // per_mod
    sums = np.bincount(module, np.nan_to_num(t), minlength=n_mod)
    counts = np.bincount(module, ok, minlength=n_mod)
    mean_all = float(np.nanmean(t))
    mod_t = np.where(counts > 0, sums / np.maximum(counts, 1), mean_all)
    return np.repeat(mod_t, per_mod), float(np.nanmin(t)), float(np.nanmax(t)), mean_all


def reference_voltages(v, ok):
    good = v[ok]
    if good.size == 0:
        return math.nan, math.nan, math.nan
    return float(good.min()), float(good.max()), float(good.mean())


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


reading = st.one_of(
    st.floats(-20.0, 60.0), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
)


@st.composite
def snapshot(draw):
    n_strings = draw(st.sampled_from([1, 2]))
    mps = draw(st.sampled_from([1, 3]))
    cpm = draw(st.sampled_from([4, 12]))
    n_cells = n_strings * mps * cpm
    n_mod = n_strings * mps
    # 0..3 sensors per module at random cells of the module (some modules have none).
    sensor_cell = [
        mod * cpm + draw(st.integers(0, cpm - 1))
        for mod in range(n_mod)
        for _ in range(draw(st.integers(0 if n_mod > 1 else 1, 3)))
    ]
    n_t = len(sensor_cell)
    rare = st.floats(0.0, 1.0)
    p_bad_t, p_bad_v, p_odd = draw(rare), draw(rare), draw(rare)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    temps = rng.uniform(-20.0, 60.0, n_t)
    temps[rng.random(n_t) < 0.2 * p_odd] = draw(reading)
    volts = rng.uniform(2.8, 3.6, n_cells)
    volts[rng.random(n_cells) < 0.1 * p_odd] = draw(st.sampled_from([math.nan, math.inf]))
    cells = np.array(sensor_cell, dtype=np.intp)
    cells.flags.writeable = draw(st.booleans())
    currents = rng.uniform(-100.0, 100.0, n_strings)
    m = Measurements(
        time_s=0.0,
        cell_voltage_v=volts,
        cell_voltage_valid=rng.random(n_cells) >= 0.3 * p_bad_v,
        cell_temperature_degc=temps,
        cell_temperature_valid=rng.random(n_t) >= 0.5 * p_bad_t,
        temperature_sensor_cell=cells,
        string_current_a=currents,
        string_current_valid=rng.random(n_strings) >= 0.2 * p_odd,
        pack_voltage_v=float(rng.uniform(40.0, 60.0)),
        contactor_closed=False,
        bus_voltage_v=0.0,
    )
    return (n_strings, mps, cpm), m


@settings(max_examples=200, deadline=None, derandomize=True)
@given(case=snapshot())
def test_monitoring_summary_matches_the_reference(case):
    (n_strings, mps, cpm), m = case
    bms = make_bms(n_strings, mps, cpm)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices, inf - inf
        tel, _ = bms.update(1.7e9, m, NO_DECISION)
        # The same snapshot a second time: the cached sensor layout gives the same answer.
        tel2, _ = bms.update(1.7e9 + 1.0, m, NO_DECISION)
        cell_t, t_min, t_max, t_avg = reference_temperatures(m, bms.setup.n_cells, n_strings * mps)
    np.testing.assert_array_equal(bms.cell_temperature_degc, cell_t)
    for got in (tel, tel2):
        assert same(got.temperature_min_degc, t_min)
        assert same(got.temperature_max_degc, t_max)
        assert same(got.temperature_avg_degc, t_avg)
        v_ok = m.cell_voltage_valid & np.isfinite(m.cell_voltage_v)
        v_min, v_max, v_avg = reference_voltages(m.cell_voltage_v, v_ok)
        assert same(got.cell_voltage_min_v, v_min)
        assert same(got.cell_voltage_max_v, v_max)
        assert same(got.cell_voltage_avg_v, v_avg)
        expected_i = float(np.where(m.string_current_valid, m.string_current_a, 0.0).sum())
        assert got.pack_current_a == expected_i


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    n_strings=st.sampled_from([1, 2, 4]),
    n_series=st.sampled_from([1, 3, 16, 40]),
    seed=st.integers(0, 2**32 - 1),
    flat=st.booleans(),
)
def test_pack_soc_matches_string_soc_mean(n_strings, n_series, seed, flat):
    rng = np.random.default_rng(seed)
    soc = np.full(n_strings * n_series, 0.5) if flat else rng.random(n_strings * n_series)
    if not flat:
        soc[rng.random(soc.size) < 0.1] = rng.choice([0.0, 1.0])
    pack, lo, hi, string_min = _pack_soc(soc, n_strings)
    assert pack == float(string_soc(soc, n_strings).mean())
    assert (lo, hi) == (float(soc.min()), float(soc.max()))
    np.testing.assert_array_equal(string_min, soc.reshape(n_strings, -1).min(axis=1))


@pytest.mark.parametrize(
    ("main", "precharge", "opening", "wanted", "setpoint"),
    [
        (True, False, False, ContactorRequest.CLOSE, 1500.0),
        (False, True, False, ContactorRequest.PRECHARGE, 1500.0),
        (False, False, False, ContactorRequest.OPEN, 1500.0),
        (True, False, True, ContactorRequest.CLOSE, 0.0),  # opening: the converter goes to 0
    ],
)
def test_actuation_adds_contactor_request_and_balancing(main, precharge, opening, wanted, setpoint):
    bms = make_bms(1, 1, 16)
    gated = Actuation(1500.0, 20.0, 30.0)
    before = bms.actuation(gated)
    assert before.contactor is ContactorRequest.OPEN  # nothing decided yet: open
    assert before.ac_power_setpoint_w == 1500.0
    state = ContactorState.OPENING if opening else ContactorState.CLOSED
    bms.contactor_out = ContactorOutput(state, main, precharge, opening, (), 1)
    bms.balancing = np.arange(16) % 2 == 0
    out = bms.actuation(gated)
    assert type(out) is Actuation
    assert out.contactor is wanted
    assert out.ac_power_setpoint_w == setpoint
    assert (out.charge_current_limit_a, out.discharge_current_limit_a) == (20.0, 30.0)
    assert out.balancing is bms.balancing
