"""Current limits: derating values, properties (Hypothesis) and the anti-chatter ramp."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.defaults import Curve, default_params, known_chemistries
from openbess.bms.limits import (
    LimitCalculator,
    _curve_points,
    _factor_scalar,
    _temperature_factor_scalar,
    charge_limit_a,
    derating_factor,
    discharge_limit_a,
    temperature_factor,
)
from openbess.errors import ConfigError

LFP = default_params("lfp", 100.0).limits
NMC = default_params("nmc", 60.0).limits
NAN = math.nan


def test_known_values_lfp_100ah():
    # Nominal: no derating.
    assert charge_limit_a(LFP, 3.30, 24.0, 26.0, 0.5) == pytest.approx(100.0)
    assert discharge_limit_a(LFP, 3.28, 24.0, 26.0, 0.5) == pytest.approx(100.0)
    # dbus-serialbattery steps: 3.400 V -> 0.25; 2.900 V -> 0.005.
    assert charge_limit_a(LFP, 3.40, 24.0, 26.0, 0.5) == pytest.approx(25.0)
    assert discharge_limit_a(LFP, 2.90, 24.0, 26.0, 0.5) == pytest.approx(0.5)
    # Cold 2 degC: charge 0.25; discharge between 0 degC (0.25) and 5 degC (0.5): 0.35.
    assert charge_limit_a(LFP, 3.30, 2.0, 3.0, 0.5) == pytest.approx(25.0)
    assert discharge_limit_a(LFP, 3.30, 2.0, 3.0, 0.5) == pytest.approx(35.0)
    # LFP charge derates earlier in the cold: at 0 degC no charge, discharge still allowed.
    assert charge_limit_a(LFP, 3.30, 0.0, 5.0, 0.5) == 0.0
    assert discharge_limit_a(LFP, 3.30, 0.0, 5.0, 0.5) == pytest.approx(25.0)
    # SoC: 0.95 -> charge 0.2; 0.10 -> discharge 0.2; the hottest cell sets the hot derating.
    assert charge_limit_a(LFP, 3.30, 24.0, 26.0, 0.95) == pytest.approx(20.0)
    assert discharge_limit_a(LFP, 3.30, 24.0, 26.0, 0.10) == pytest.approx(20.0)
    assert charge_limit_a(LFP, 3.30, 24.0, 50.0, 0.5) == pytest.approx(25.0)


def test_invalid_inputs_never_raise_a_limit():
    assert charge_limit_a(LFP, NAN, 24.0, 26.0, 0.5) == 0.0
    assert discharge_limit_a(LFP, NAN, 24.0, 26.0, 0.5) == 0.0
    assert charge_limit_a(LFP, 3.30, NAN, NAN, 0.5) == 0.0
    # Unknown temperature: discharge at the limp-home share only.
    assert discharge_limit_a(LFP, 3.30, NAN, NAN, 0.5) == pytest.approx(10.0)
    assert charge_limit_a(LFP, 3.30, 24.0, 26.0, NAN) == 0.0
    assert discharge_limit_a(LFP, 3.30, 24.0, 26.0, NAN) == 0.0


def test_vectorised_over_arrays():
    v = np.array([3.30, 3.40, 3.50, NAN])
    out = charge_limit_a(LFP, v, 25.0, 25.0, 0.5)
    np.testing.assert_allclose(out, [100.0, 25.0, 0.0, 0.0])
    f = temperature_factor(np.array([-20.0, 20.0]), np.array([20.0, 60.0]), LFP.charge_temperature)
    np.testing.assert_allclose(f, [0.0, 0.0])


@pytest.mark.parametrize("chem", known_chemistries())
def test_derating_reaches_zero_no_later_than_the_protection_rsl(chem):
    params = default_params(chem, 10.0)
    lim, pro = params.limits, params.protection
    assert lim.charge_voltage.zero_above() <= pro.cell_voltage_max_v.mol
    assert lim.discharge_voltage.zero_below() >= pro.cell_voltage_min_v.mol
    assert lim.charge_temperature.zero_above() <= pro.charge_temperature_max_degc.rsl
    assert lim.charge_temperature.zero_below() >= pro.charge_temperature_min_degc.rsl
    assert lim.discharge_temperature.zero_above() <= pro.discharge_temperature_max_degc.rsl
    assert lim.discharge_temperature.zero_below() >= pro.discharge_temperature_min_degc.rsl


def test_bad_curves_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match="strictly increasing"):
        Curve((1.0, 1.0), (1.0, 0.0))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Curve((1.0, 2.0), (1.0, 1.5))
    open_ended = Curve((0.0, 10.0, 40.0), (0.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match=r"LimitParams\.charge_temperature"):
        dataclasses.replace(LFP, charge_temperature=open_ended)
    with pytest.raises(ConfigError, match=r"LimitParams\.charge_voltage must be non-increasing"):
        dataclasses.replace(LFP, charge_voltage=Curve((3.0, 3.4, 3.5), (0.5, 1.0, 0.0)))
    with pytest.raises(ConfigError, match="unknown chemistry 'lto'; known: lfp, nmc"):
        default_params("lto", 10.0)
    with pytest.raises(ConfigError, match="capacity_ah"):
        default_params("lfp", 0.0)


# ---------------------------------------------------------------------------------- properties

volts = st.floats(2.0, 4.5)
temps = st.floats(-40.0, 80.0)
socs = st.floats(0.0, 1.0)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    chem=st.sampled_from([LFP, NMC]),
    v=volts,
    v2=volts,
    t_lo=temps,
    t_hi=temps,
    soc=socs,
    soc2=socs,
)
def test_limits_bounded_and_monotone(chem, v, v2, t_lo, t_hi, soc, soc2):
    t_lo, t_hi = min(t_lo, t_hi), max(t_lo, t_hi)
    c = float(charge_limit_a(chem, v, t_lo, t_hi, soc))
    d = float(discharge_limit_a(chem, v, t_lo, t_hi, soc))
    assert 0.0 <= c <= chem.rated_charge_current_a
    assert 0.0 <= d <= chem.rated_discharge_current_a
    lo, hi = min(v, v2), max(v, v2)
    # Charge falls as the highest cell rises; discharge rises with the lowest cell.
    assert charge_limit_a(chem, hi, t_lo, t_hi, soc) <= charge_limit_a(chem, lo, t_lo, t_hi, soc)
    assert discharge_limit_a(chem, lo, t_lo, t_hi, soc) <= discharge_limit_a(
        chem, hi, t_lo, t_hi, soc
    )
    s_lo, s_hi = min(soc, soc2), max(soc, soc2)
    assert charge_limit_a(chem, v, t_lo, t_hi, s_hi) <= charge_limit_a(chem, v, t_lo, t_hi, s_lo)
    assert discharge_limit_a(chem, v, t_lo, t_hi, s_lo) <= discharge_limit_a(
        chem, v, t_lo, t_hi, s_hi
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chem=st.sampled_from([LFP, NMC]), a=temps, b=temps)
def test_temperature_derating_is_monotone_on_each_side_of_the_plateau(chem, a, b):
    for curve in (chem.charge_temperature, chem.discharge_temperature):
        f = curve.factor
        first, last = f.index(1.0), len(f) - 1 - f[::-1].index(1.0)
        cold_end, hot_start = curve.x[first], curve.x[last]
        lo, hi = min(a, b), max(a, b)
        f_lo, f_hi = derating_factor(lo, curve), derating_factor(hi, curve)
        if hi <= cold_end:
            assert f_lo <= f_hi  # warming up in the cold never lowers the limit
        if lo >= hot_start:
            assert f_hi <= f_lo  # heating up in the heat never raises it


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chem=st.sampled_from([LFP, NMC]), v=volts, t=temps, soc=socs)
def test_zero_beyond_every_cut_off(chem, v, t, soc):
    z = 0.0
    v_top = chem.charge_voltage.zero_above()
    assert charge_limit_a(chem, v_top + abs(v - 2.0), t, t, soc) == z
    assert (
        discharge_limit_a(chem, chem.discharge_voltage.zero_below() - abs(v - 2.0), t, t, soc) == z
    )
    hot = chem.charge_temperature.zero_above() + abs(t)
    cold = chem.charge_temperature.zero_below() - abs(t)
    assert charge_limit_a(chem, v, 20.0, hot, soc) == z
    assert charge_limit_a(chem, v, cold, 20.0, soc) == z
    assert (
        discharge_limit_a(chem, v, 20.0, chem.discharge_temperature.zero_above() + abs(t), soc) == z
    )
    assert (
        discharge_limit_a(chem, v, chem.discharge_temperature.zero_below() - abs(t), 20.0, soc) == z
    )
    assert charge_limit_a(chem, v, t, t, 1.0) == z
    assert discharge_limit_a(chem, v, t, t, 0.0) == z


step = st.tuples(
    st.floats(0.0, 90.0),  # leap [s]
    st.one_of(st.just(NAN), st.floats(3.0, 3.7)),  # cell voltage max
    st.one_of(st.just(NAN), st.floats(2.6, 3.4)),  # cell voltage min
    st.one_of(st.just(NAN), temps),
    socs,
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(steps=st.lists(step, min_size=1, max_size=40))
def test_calculator_never_rises_faster_than_the_rate_and_never_exceeds_the_target(steps):
    calc = LimitCalculator(LFP)
    t = 1.7e9
    prev: tuple[float, float, float] | None = None
    for leap, vmax, vmin, temp, soc, allow_c, allow_d in steps:
        t += leap
        c, d = calc.update(t, vmax, vmin, temp, temp, soc, soc, allow_c, allow_d)
        target_c = float(charge_limit_a(LFP, vmax, temp, temp, soc)) if allow_c else 0.0
        target_d = float(discharge_limit_a(LFP, vmin, temp, temp, soc)) if allow_d else 0.0
        assert 0.0 <= c <= min(target_c, LFP.rated_charge_current_a)
        assert 0.0 <= d <= min(target_d, LFP.rated_discharge_current_a)
        if prev is not None:
            elapsed = t - prev[2]  # the clock as the calculator sees it (floats at 1.7e9 s)
            assert c - prev[0] <= LFP.recovery_rate_a_per_s * elapsed + 1e-9
            assert d - prev[1] <= LFP.recovery_rate_a_per_s * elapsed + 1e-9
        prev = (c, d, t)


# ------------------------------------------------------------------- the calculator's scalars

any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([NAN, math.inf, -math.inf, 0.0, -0.0]),
)


def _curves(chem):
    return (
        chem.charge_voltage,
        chem.discharge_voltage,
        chem.charge_temperature,
        chem.discharge_temperature,
        chem.charge_soc,
        chem.discharge_soc,
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chem=st.sampled_from([LFP, NMC]), x=any_float, k=st.integers(0, 7), frac=st.floats(0, 1))
def test_scalar_derating_equals_numpy_interp_exactly(chem, x, k, frac):
    for curve in _curves(chem):
        xs, fs = _curve_points(curve)
        # Also on and between the break points, where the interpolation branches.
        j = k % len(xs)
        between = xs[j] + frac * (xs[min(j + 1, len(xs) - 1)] - xs[j])
        for value in (x, xs[j], between):
            assert _factor_scalar(value, xs, fs) == float(derating_factor(value, curve))
        for lo, hi in ((x, between), (between, x), (xs[j], x)):
            expected = float(temperature_factor(lo, hi, curve, 0.3))
            assert _temperature_factor_scalar(lo, hi, xs, fs, 0.3) == expected


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    chem=st.sampled_from([LFP, NMC]),
    v=st.one_of(st.just(NAN), volts),
    t_lo=st.one_of(st.just(NAN), temps),
    t_hi=st.one_of(st.just(NAN), temps),
    soc=st.one_of(st.just(NAN), socs),
    allow=st.tuples(st.booleans(), st.booleans()),
)
def test_calculator_settles_on_the_array_functions_values(chem, v, t_lo, t_hi, soc, allow):
    calc = LimitCalculator(chem)
    calc.update(0.0, v, v, t_lo, t_hi, soc, soc)
    # Long enough for any ramp: the limits are exactly the targets (or 0 below the resume
    # threshold, where a limit at 0 stays).
    c, d = calc.update(1e6, v, v, t_lo, t_hi, soc, soc, *allow)
    c_target = float(charge_limit_a(chem, v, t_lo, t_hi, soc)) if allow[0] else 0.0
    d_target = float(discharge_limit_a(chem, v, t_lo, t_hi, soc)) if allow[1] else 0.0
    resume = chem.resume_fraction
    assert c == (c_target if c_target > resume * chem.rated_charge_current_a else 0.0)
    assert d == (d_target if d_target > resume * chem.rated_discharge_current_a else 0.0)


def test_calculator_follows_replaced_params():
    calc = LimitCalculator(LFP)
    calc.update(0.0, 3.3, 3.3, 25.0, 25.0, 0.5, 0.5)
    calc.params = NMC
    c, d = calc.update(1e6, 3.7, 3.7, 25.0, 25.0, 0.5, 0.5)
    assert c == float(charge_limit_a(NMC, 3.7, 25.0, 25.0, 0.5)) == NMC.rated_charge_current_a
    assert d == float(discharge_limit_a(NMC, 3.7, 25.0, 25.0, 0.5))
    assert d == NMC.rated_discharge_current_a


# ---------------------------------------------------------------------------------- the ramp


def test_ramp_hold_and_resume_cycle_table():
    # LFP 100 Ah: rate 10 A/s, hold 30 s, resume above 1.5 A.
    calc = LimitCalculator(LFP)
    nominal = (3.30, 3.28, 24.0, 26.0, 0.5, 0.5)
    t0 = 1.7e9
    table = [
        # (t - t0, cell_voltage_max_v, allow_charge, expected charge limit)
        (0.0, 3.30, True, 0.0),  # starts at 0
        (1.0, 3.30, True, 10.0),  # ramps 10 A/s
        (5.0, 3.30, True, 50.0),
        (20.0, 3.30, True, 100.0),
        (21.0, 3.40, True, 25.0),  # reduction at once
        (22.0, 3.30, True, 25.0),  # hold: no rise for 30 s
        (50.0, 3.30, True, 25.0),
        (52.0, 3.30, True, 35.0),  # hold ended at 51 s: 1 s of ramp
        (53.0, 3.30, False, 0.0),  # blocked by the protection: 0 at once
        (90.0, 3.499, True, 0.0),  # target 0.1 A < 1.5 A: stays 0 (no flapping near 0)
        (91.0, 3.30, True, 10.0),  # hold (53 + 30 s) is over: ramp from 0
        (151.0, 3.30, True, 100.0),  # a 60 s leap: full
    ]
    for dt, vmax, allow, expected in table:
        c, _ = calc.update(t0 + dt, vmax, *nominal[1:], allow_charge=allow)
        assert c == pytest.approx(expected), (dt, vmax, allow)


def test_calculator_rejects_time_going_backwards():
    calc = LimitCalculator(LFP)
    calc.update(10.0, 3.3, 3.3, 25.0, 25.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="backwards"):
        calc.update(9.0, 3.3, 3.3, 25.0, 25.0, 0.5, 0.5)
