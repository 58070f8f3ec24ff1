"""Monitoring: plausibility of raw readings (range, jump, stuck, open wire, currents)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.bms import BatteryManagementSystem, BmsSetup
from openbess.bms.defaults import MonitorParams, default_params
from openbess.bms.monitor import (
    STUCK_SCAN_EVERY,
    Monitor,
    _extremes_and_jump_kernel,
    _extremes_and_jump_numpy,
    _scan_stuck_kernel,
    _scan_stuck_numpy,
    _track_cells_kernel,
    _track_cells_numpy,
    jumps,
    outside,
    string_current_outliers,
    worst_string_sum,
)
from openbess.bms.protection import Protection, ProtectionInputs, Quantity, quantity_values
from openbess.cell.params import load_cell_params, scale_to_capacity
from openbess.contract import ContactorState, GateDecision, Outcome, Reason
from openbess.errors import ConfigError
from openbess.plant import Measurements

CELL = scale_to_capacity(load_cell_params("lfp"), 100.0)
R0_MIN = float(np.min(CELL.r0_ohm))
T0 = 1.7e9
NO_DECISION = GateDecision(Outcome.SAFE_IDLE, Reason.NO_COMMAND, -1, 0.0, 0.0, "")


def make_monitor(n_strings: int = 1, n_series: int = 16) -> Monitor:
    return Monitor.for_pack(default_params("lfp", 100.0 * n_strings), CELL, n_strings, n_series)


def sample(
    v,
    i=(10.0,),
    t=(25.0, 25.5),
    v_ok=None,
    t_ok=None,
    i_ok=None,
    pack_v=None,
    closed=True,
    time_s=T0,
) -> Measurements:
    v = np.asarray(v, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    i = np.asarray(i, dtype=np.float64)
    ns = i.size
    return Measurements(
        time_s=time_s,
        cell_voltage_v=v,
        cell_voltage_valid=np.ones(v.size, bool) if v_ok is None else np.asarray(v_ok, bool),
        cell_temperature_degc=t,
        cell_temperature_valid=np.ones(t.size, bool) if t_ok is None else np.asarray(t_ok, bool),
        temperature_sensor_cell=np.arange(t.size, dtype=np.intp),
        string_current_a=i,
        string_current_valid=np.ones(ns, bool) if i_ok is None else np.asarray(i_ok, bool),
        pack_voltage_v=float(np.nansum(v[np.isfinite(v)]) / ns) if pack_v is None else pack_v,
        contactor_closed=closed,
        bus_voltage_v=0.0,
    )


class Pack:
    """A healthy pack the way sensors read it: OCV - R0 * I (+ noise), quantised to 1 mV.

    Every cell's ohmic resistance lies in [R0_MIN, 2 R0_MIN] (a real cell's never falls below
    the table's smallest value), so a current step of the monitor's ``stuck_current_step_a``
    moves every reading by at least 2 mV.
    """

    def __init__(self, n_strings=1, n_series=16, noise_v=0.001, seed=0):
        self.rng = np.random.default_rng(seed)
        self.n = n_strings * n_series
        self.ns = n_strings
        self.ocv = 3.30 + self.rng.uniform(-0.01, 0.01, self.n)
        self.r0 = R0_MIN * self.rng.uniform(1.0, 2.0, self.n)
        self.noise_v = noise_v

    def read(self, current_a, k, **kw) -> Measurements:
        cur = np.broadcast_to(np.asarray(current_a, dtype=np.float64), (self.ns,))
        v = self.ocv - self.r0 * np.repeat(cur, self.n // self.ns)
        v = np.round((v + self.noise_v * self.rng.standard_normal(self.n)) / 0.001) * 0.001
        return sample(v, i=cur.copy(), time_s=T0 + k, **kw)


# ------------------------------------------------------------------------------- pure helpers


def test_outside_and_jumps_handle_nan():
    x = np.array([0.2, 3.3, np.nan, np.inf, 9.0])
    np.testing.assert_array_equal(outside(x, 0.5, 5.5), [True, False, True, True, True])
    ref = np.array([3.3, 3.0, np.nan, 3.3])
    v = np.array([3.5, 3.05, 3.3, 3.62])
    # Moved 0.2 inside the window: a jump; 0.05: not; no reference: never; beyond the window
    # (3.62 > 3.55): never a jump, the fault table decides.
    np.testing.assert_array_equal(jumps(v, ref, 0.1, 2.8, 3.55), [True, False, False, False])


def test_string_current_outliers_names_the_broken_string():
    ok4 = np.ones(4, bool)
    i = np.array([50.0, 50.5, 62.0, 49.8])
    np.testing.assert_array_equal(string_current_outliers(i, ok4, 2.8, 0.1), [0, 0, 1, 0])
    # Within 10 % of the others' 50 A: no outlier.
    i = np.array([50.0, 50.5, 54.0, 49.8])
    assert not string_current_outliers(i, ok4, 2.8, 0.1).any()
    # Two strings: which one is wrong is unknown, both are marked.
    np.testing.assert_array_equal(
        string_current_outliers(np.array([10.0, 20.0]), np.ones(2, bool), 2.8, 0.1), [1, 1]
    )
    # Invalid strings are left out of the comparison.
    mask = np.array([True, True, False, True])
    i = np.array([50.0, 50.5, 500.0, 49.8])
    assert not string_current_outliers(i, mask, 2.8, 0.1).any()


def test_worst_string_sum_skips_incomplete_strings():
    v = np.array([3.3, 3.3, 3.3, 3.3, 3.2, 3.2])
    ok = np.ones(6, bool)
    assert worst_string_sum(v, ok, 3, 6.6) == pytest.approx(6.4)
    ok[4] = False
    assert worst_string_sum(v, ok, 3, 6.6) == pytest.approx(6.6)
    assert math.isnan(worst_string_sum(v, ok, 3, math.nan))
    assert math.isnan(worst_string_sum(v, np.zeros(6, bool), 3, 6.6))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    n_strings=st.sampled_from([1, 3, 4]),
    n_series=st.sampled_from([1, 5, 16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_kernels_match_their_numpy_versions(n_strings, n_series, seed):
    rng = np.random.default_rng(seed)
    n = n_strings * n_series
    v = np.round(3.3 + rng.normal(0, 0.002, n), 3)
    prev = np.where(rng.random(n) < 0.5, v, np.round(3.3 + rng.normal(0, 0.002, n), 3))
    k = int(rng.integers(10, 1000))
    lc_a = rng.integers(0, k, n).astype(np.int32)
    lc_b = lc_a.copy()
    h_a = rng.normal(3.3, 0.01, (n_strings, 256))
    h_b = h_a.copy()
    a = _track_cells_kernel(v, prev, lc_a, k, h_a, 16.5)
    b = _track_cells_numpy(v, prev, lc_b, k, h_b, 16.5)
    np.testing.assert_array_equal(lc_a, lc_b)
    np.testing.assert_allclose(h_a, h_b, rtol=1e-12)
    assert a[:4] == b[:4]
    assert a[4] == pytest.approx(b[4], rel=1e-12)
    hist_i = rng.normal(0.0, 40.0, (n_strings, 256))
    ok = rng.random(n) < 0.9
    st_a = rng.random(n) < 0.1
    st_b = st_a.copy()
    found_a = _scan_stuck_kernel(lc_a, k, 3, hist_i, h_a, 20.0, 0.003, ok, st_a)
    found_b = _scan_stuck_numpy(lc_b, k, 3, hist_i, h_b, 20.0, 0.003, ok, st_b)
    np.testing.assert_array_equal(st_a, st_b)
    assert bool(found_a) == bool(found_b)
    t = rng.normal(25.0, 3.0, n)
    assert _extremes_and_jump_kernel(t, prev) == pytest.approx(_extremes_and_jump_numpy(t, prev))


def test_monitor_params_are_checked():
    with pytest.raises(ConfigError, match="cell_voltage_plausible_max_v must exceed"):
        MonitorParams(open_wire_v=3.0, cell_voltage_plausible_max_v=2.0)
    with pytest.raises(ConfigError, match="current_samples must be >= 1"):
        MonitorParams(current_samples=0)
    with pytest.raises(ValueError, match="n_strings and n_series"):
        Monitor(MonitorParams(), 0, 16, 100.0, 1e-4, 1e-3, (2.8, 3.55), (-5.0, 50.0))
    with pytest.raises(ValueError, match="cell_voltage_v has shape"):
        make_monitor().check(T0, sample(np.full(15, 3.3)), False)


# ------------------------------------------------------------------------------- clean data


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n_strings=st.sampled_from([1, 4]),
    noise_v=st.sampled_from([0.0, 0.0003, 0.001]),
    seed=st.integers(0, 2**32 - 1),
)
def test_healthy_pack_passes_untouched(n_strings, noise_v, seed):
    """A healthy pack (with or without noise, resting or with current steps) is never touched:
    masks are the flags, the summary is numpy's, nothing is counted."""
    pack = Pack(n_strings, 16, noise_v, seed)
    mon = make_monitor(n_strings, 16)
    rng = np.random.default_rng(seed)
    step = mon.stuck_current_step_a
    current = 0.0
    for k in range(120):
        if rng.random() < 0.2:  # steps, some larger than the stuck-check step
            current = float(rng.choice([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])) * step
        m = pack.read(current + rng.normal(0.0, 0.1, n_strings), k)
        r = mon.check(m.time_s, m, expect_zero_current=False)
        v = m.cell_voltage_v
        assert r.cell_voltage_valid is m.cell_voltage_valid
        assert r.temperature_valid is m.cell_temperature_valid
        assert r.string_current_valid is m.string_current_valid
        assert (r.n_invalid_voltage, r.n_stuck_voltage, r.n_invalid_temperature) == (0, 0, 0)
        assert r.current_valid
        assert not r.current_implausible
        assert r.current_trusted
        assert r.voltage_sum_v == float(np.add.reduce(v))
        assert (r.voltage_min_v, r.voltage_max_v) == (float(v.min()), float(v.max()))
        if n_strings == 1:
            assert r.string_voltage_sum_v == r.voltage_sum_v
        assert not r.causes
    assert mon.counts == {}


reading = st.one_of(
    st.floats(-1.0, 8.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 3.3, 3.31, 3.6]),
)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(reading, min_size=4, max_size=4),
            st.lists(st.booleans(), min_size=4, max_size=4),
            st.one_of(st.floats(-200.0, 200.0), st.just(math.nan), st.just(1e6)),
            st.floats(-80.0, 200.0) | st.just(math.nan),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_any_readings_never_raise_and_masks_stay_consistent(steps):
    mon = make_monitor(1, 4)
    for k, (volts, flags, current, temp, zero) in enumerate(steps):
        m = sample(volts, i=(current,), t=(temp, 25.0), v_ok=flags, time_s=T0 + k)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no RuntimeWarning either
            r = mon.check(m.time_s, m, expect_zero_current=zero)
        ok = r.cell_voltage_valid
        v = m.cell_voltage_v
        assert not np.any(ok & ~m.cell_voltage_valid)
        assert np.all(np.isfinite(v[ok]))
        assert np.all((v[ok] >= 0.5) & (v[ok] <= 5.475))
        assert r.n_invalid_voltage + r.n_stuck_voltage + int(ok.sum()) == 4
        t_ok = r.temperature_valid
        assert np.all(np.isfinite(m.cell_temperature_degc[t_ok]))
        assert r.current_valid == (math.isfinite(current) and abs(current) <= 1000.0)
        assert not np.any(r.string_current_valid & ~m.string_current_valid)


# ------------------------------------------------------------------------------- voltages


def test_open_wire_pair_is_excluded_even_when_the_hardware_flags_it_valid():
    mon = make_monitor()
    v = np.full(16, 3.30)
    mon.check(T0, sample(v), False)
    v2 = v.copy()
    v2[3], v2[4] = 0.004, 6.60  # floating input; its partner reads two cells
    r = mon.check(T0 + 1, sample(v2), False)
    assert r.n_invalid_voltage == 2
    assert not r.cell_voltage_valid[3]
    assert not r.cell_voltage_valid[4]
    assert dict(r.causes) == {"cell_voltage_open_wire": 1, "cell_voltage_range": 1}
    assert math.isnan(r.voltage_sum_v)
    assert math.isnan(r.string_voltage_sum_v)
    # Repaired: both readings are accepted again at once.
    r = mon.check(T0 + 2, sample(v), False)
    assert r.n_invalid_voltage == 0
    assert r.cell_voltage_valid.all()
    assert mon.counts == {"cell_voltage_open_wire": 1, "cell_voltage_range": 1}


def test_a_glitch_is_rejected_a_current_step_explains_a_jump_and_limits_always_reach_protection():
    mon = make_monitor()
    v = np.full(16, 3.30)
    mon.check(T0, sample(v, i=(10.0,)), False)
    glitch = v.copy()
    glitch[5] = 3.45  # +150 mV in 1 s at a constant current: impossible
    r = mon.check(T0 + 1, sample(glitch, i=(10.0,)), False)
    assert not r.cell_voltage_valid[5]
    assert r.causes == {"cell_voltage_jump": 1}
    r = mon.check(T0 + 2, sample(v, i=(10.0,)), False)  # back: accepted
    assert r.cell_voltage_valid.all()
    # The same change with a 100 A current step is the cell's resistance at work.
    r = mon.check(T0 + 3, sample(glitch, i=(-90.0,)), False)
    assert r.cell_voltage_valid.all()
    # A reading beyond the over-voltage MOL (3.55 V) is never rejected as a jump.
    high = v.copy()
    high[2] = 3.70
    mon2 = make_monitor()
    mon2.check(T0, sample(v), False)
    r = mon2.check(T0 + 1, sample(high), False)
    assert r.cell_voltage_valid.all()
    assert r.voltage_max_v == 3.70


def test_a_level_that_persists_is_accepted_again():
    mon = make_monitor()
    v = np.full(16, 3.30)
    mon.check(T0, sample(v), False)
    shifted = v.copy()
    shifted[7] = 3.50  # 0.2 V: the allowance (0.11 V per second) grows until it explains it
    valid = [mon.check(T0 + k, sample(shifted), False).cell_voltage_valid[7] for k in (1, 2, 3)]
    assert valid == [False, True, True]


def test_stuck_reading_found_after_a_current_step_and_released_when_it_moves():
    mon = make_monitor()
    pack = Pack(noise_v=0.001, seed=3)
    frozen = None
    k = 0
    for k in range(40):  # a frozen reading at constant current is not (yet) evidence
        m = pack.read(10.0, k)
        if k >= 5:
            frozen = m.cell_voltage_v[7] if frozen is None else frozen
            v = m.cell_voltage_v.copy()
            v[7] = frozen
            m = sample(v, i=m.string_current_a, time_s=m.time_s)
        r = mon.check(m.time_s, m, False)
        assert r.n_stuck_voltage == 0
    step_k = k + 1
    found = None
    for k in range(step_k, step_k + 20):
        m = pack.read(10.0 + 2.0 * mon.stuck_current_step_a, k)
        v = m.cell_voltage_v.copy()
        v[7] = frozen
        r = mon.check(m.time_s, sample(v, i=m.string_current_a, time_s=m.time_s), False)
        if r.n_stuck_voltage:
            found = k
            break
    assert found is not None
    assert found - step_k <= STUCK_SCAN_EVERY
    assert not r.cell_voltage_valid[7]
    assert r.cell_voltage_valid.sum() == 15
    assert r.causes == {"cell_voltage_stuck": 1}
    assert r.n_invalid_voltage == 0  # its own cause, not "invalid"
    m = pack.read(10.0, found + 1)  # thawed
    assert mon.check(m.time_s, m, False).cell_voltage_valid.all()


def test_noise_free_pack_relaxing_at_rest_is_never_stuck():
    """Without noise every reading stays constant at rest, while cells at a knee relax: the
    string's mean moves, but without a current change nothing is evidence of a frozen value."""
    mon = make_monitor()
    v = np.full(16, 3.300)
    for k in range(400):
        v = v.copy()
        v[:3] = np.round(3.45 - 0.1 * (1 - math.exp(-k / 60.0)), 3)  # knee cells relax
        r = mon.check(T0 + k, sample(v, i=(0.05,)), False)
        assert r.n_stuck_voltage == 0
        assert r.n_invalid_voltage == 0


def test_held_sample_adds_no_evidence():
    mon = make_monitor()
    pack = Pack(noise_v=0.0, seed=1)
    m = pack.read(0.0, 0)
    for arr in (m.cell_voltage_v, m.cell_temperature_degc, m.string_current_a):
        arr.flags.writeable = False
    first = mon.check(T0, m, False)
    for k in range(1, 10):
        again = mon.check(T0 + k, m, False)
        assert again.cell_voltage_valid is first.cell_voltage_valid
    assert mon._k == 0  # one sample seen


# ------------------------------------------------------------------------------- temperatures


def test_temperature_checks():
    v = np.full(16, 3.3)
    cases = [
        ((math.nan, 25.0), (True, True), {"temperature_not_finite": 1}),
        ((-60.0, 25.0), (True, True), {"temperature_range": 1}),
        ((40.0, 25.0), (True, True), {"temperature_jump": 1}),  # +15 K in 1 s
        ((25.0, 25.0), (False, True), {"temperature_flagged": 1}),
    ]
    for temps, flags, causes in cases:
        mon = make_monitor()
        mon.check(T0, sample(v, t=(25.0, 25.0)), False)
        r = mon.check(T0 + 1, sample(v, t=temps, t_ok=flags), False)
        assert r.n_invalid_temperature == 1
        assert not r.temperature_valid[0]
        assert dict(r.causes) == causes
    # A jump beyond the over-temperature MOL (50 degC) is kept: the fault table decides.
    mon2 = make_monitor()
    mon2.check(T0, sample(v, t=(25.0, 25.0)), False)
    r = mon2.check(T0 + 1, sample(v, t=(70.0, 25.0)), False)
    assert r.temperature_valid.all()


# ------------------------------------------------------------------------------- currents


def test_current_range_and_not_finite():
    mon = make_monitor()
    v = np.full(16, 3.3)
    r = mon.check(T0, sample(v, i=(math.nan,)), False)
    assert not r.current_valid
    assert r.causes == {"current_not_finite": 1}
    r = mon.check(T0 + 1, sample(v, i=(5000.0,)), False)  # 50 C of 100 Ah
    assert not r.current_valid
    assert r.causes == {"current_range": 1}
    assert not r.string_current_valid[0]


def test_current_through_the_open_contactor_is_an_offset_until_it_reads_zero_again():
    mon = make_monitor()  # 100 Ah: tolerance 0.01 C = 1 A
    n = mon.params.current_samples
    v = np.full(16, 3.3)
    verdicts = []
    for k in range(n):
        r = mon.check(T0 + k, sample(v, i=(3.0,), closed=False), expect_zero_current=True)
        verdicts.append((r.current_trusted, r.current_implausible))
    # Not trusted for contactor decisions at once; implausible after n samples.
    assert verdicts[0] == (False, False)
    assert verdicts[-1] == (False, True)
    assert r.causes == {"current_zero": 1}
    assert not r.string_current_valid[0]
    assert r.current_valid  # the hardware reading is fine: its own cause
    # The contactor closes: the verdict sticks (the offset is still there).
    r = mon.check(T0 + n, sample(v, i=(50.0,)), expect_zero_current=False)
    assert r.current_implausible
    # Open again and reading zero for n samples: plausible again.
    for k in range(n):
        r = mon.check(T0 + n + 1 + k, sample(v, i=(0.1,), closed=False), True)
    assert not r.current_implausible
    assert r.current_trusted


@pytest.mark.parametrize(("n_strings", "marked"), [(4, [False, False, True, False]), (2, None)])
def test_string_current_mismatch(n_strings, marked):
    mon = make_monitor(n_strings, 4)
    n = mon.params.current_samples
    v = np.full(4 * n_strings, 3.3)
    currents = np.full(n_strings, 40.0)
    currents[-2] += 12.0  # a 12 A offset (tolerance: 2 A or 10 %)
    results = [mon.check(T0 + k, sample(v, i=currents), False) for k in range(n)]
    assert not results[n - 2].current_implausible  # n - 1 samples: not yet
    r = results[-1]
    assert r.current_implausible
    assert r.current_valid
    assert not r.current_trusted
    expected = np.array(marked if marked is not None else [True, True])
    np.testing.assert_array_equal(~r.string_current_valid, expected)
    # Agreement again for n samples: plausible again.
    for k in range(n):
        r = mon.check(T0 + n + k, sample(v, i=np.full(n_strings, 40.0)), False)
    assert not r.current_implausible


# ------------------------------------------------------------------------------- protection


def test_new_protection_quantities_are_one_cause_each():
    base = {
        "cell_voltage_max_v": 3.32,
        "cell_voltage_min_v": 3.30,
        "temperature_max_degc": 26.0,
        "temperature_min_degc": 24.0,
        "pack_current_a": 5.0,
        "pack_voltage_v": 52.9,
        "sum_cell_voltage_v": 52.9,
        "ems_link_age_s": 1.0,
    }
    nan_current = {**base, "pack_current_a": math.nan}
    implausible = quantity_values(ProtectionInputs(**nan_current, current_implausible=True))
    assert implausible[Quantity.IMPLAUSIBLE_CURRENT] == 1.0
    assert implausible[Quantity.INVALID_CURRENT] == 0.0  # not counted twice
    assert math.isnan(implausible[Quantity.DISCHARGE_CURRENT])
    invalid = quantity_values(ProtectionInputs(**base, current_valid=False))
    assert invalid[Quantity.INVALID_CURRENT] == 1.0
    assert invalid[Quantity.IMPLAUSIBLE_CURRENT] == 0.0
    stuck = quantity_values(ProtectionInputs(**base, n_stuck_voltage=1))
    assert stuck[Quantity.STUCK_VOLTAGE] == 1.0
    assert stuck[Quantity.INVALID_VOLTAGE] == 0.0
    p = default_params("lfp", 100.0).protection
    prot = Protection.from_params(p)
    t = 0.0
    for _ in range(40):
        r = prot.evaluate(t, ProtectionInputs(**base, n_stuck_voltage=1))
        t += 1.0
    assert r.alarms == (("cell_voltage_stuck", r.alarms[0][1]),)
    assert r.open_contactors  # 30 s of an unprotected cell


# ------------------------------------------------------------------------------- in the BMS


def make_bms() -> BatteryManagementSystem:
    return BatteryManagementSystem(
        BmsSetup(
            cell=CELL,
            n_strings=1,
            n_series=16,
            modules_per_string=1,
            params=default_params("lfp", 100.0),
            max_charge_power_w=5000.0,
            max_discharge_power_w=5000.0,
        )
    )


def test_bms_excludes_a_stuck_cell_and_raises_one_alarm():
    bms = make_bms()
    pack = Pack(noise_v=0.001, seed=5)
    step = 2.0 * bms.monitor.stuck_current_step_a
    frozen = 3.40  # frozen high: it must not set the pack's maximum once found
    tel = None
    for k in range(60):
        current = 10.0 if (k // 5) % 2 == 0 else 10.0 + step
        m = pack.read(current, k)
        v = m.cell_voltage_v.copy()
        v[9] = frozen
        m = sample(v, i=m.string_current_a, time_s=T0 + k)
        tel, _ = bms.update(T0 + k, m, NO_DECISION, ems_link_age_s=1.0)
    assert tel is not None
    assert tel.cell_voltage_max_v < frozen
    assert [code for code, _ in bms.result.alarms] == ["cell_voltage_stuck"]
    assert bms.alarm_counts.get("cell_voltage_invalid", 0) == 0


def test_bms_does_not_call_the_contactor_welded_for_a_current_offset():
    """Contactor held open by an over-temperature trip; the current sensor then reads 4 A
    (the welded-contact threshold is 0.02 C = 2 A) with the auxiliary contact open."""
    bms = make_bms()
    v = np.full(16, 3.3)
    hot = (70.0, 70.0)
    for k in range(10):
        bms.update(T0 + k, sample(v, i=(0.0,), t=hot, closed=False), NO_DECISION, 1.0)
    assert bms.contactor.state is ContactorState.OPEN
    assert bms.result.open_contactors
    for k in range(10, 50):
        bms.update(T0 + k, sample(v, i=(4.0,), t=hot, closed=False), NO_DECISION, 1.0)
    assert bms.contactor.state is ContactorState.OPEN
    assert not any(ev.code == "contactor_welded" for ev in bms.events)
    assert "current_sensor_implausible" in dict(bms.result.alarms)
    assert bms.monitor.counts["current_zero"] >= 35
