"""Battery power conversion system (openbess.twin.converter)."""

from __future__ import annotations

import math

import numpy as np
import pvlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.twin.converter import (
    Converter,
    ConverterParams,
    ac_from_dc_w,
    ac_power_limits_w,
    convert,
    current_for_dc_power_a,
    dc_from_ac_w,
    fit_loss_coefficients,
    operating_loss_w,
)

HOME = ConverterParams.typical(5000.0)
RAMPED = ConverterParams.typical(5000.0, ramp_rate_w_per_s=500.0)

setpoints = st.floats(-2e4, 2e4, allow_nan=False)
caps = st.floats(0.0, 300.0, allow_nan=False)
e_values = st.floats(20.0, 900.0)
r_values = st.floats(0.0, 2.0)


def test_typical_efficiency_curve() -> None:
    assert float(HOME.efficiency(5000.0)) == pytest.approx(1 / 1.029, abs=1e-4)
    assert float(HOME.efficiency(500.0)) == pytest.approx(500 / (500 + 25.75), abs=1e-4)
    peak = np.linspace(100.0, 5000.0, 491)
    eta = HOME.efficiency(peak)
    assert 0.97 < eta.max() < 0.98
    assert 2000.0 < peak[eta.argmax()] < 3200.0
    # charging: |P_dc| = |P_ac| - loss
    assert float(HOME.efficiency(-5000.0)) == pytest.approx(1 - 0.029, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(p=st.floats(-1e4, 1e4))
def test_ac_dc_inverse(p: float) -> None:
    assert float(ac_from_dc_w(dc_from_ac_w(p, HOME), HOME)) == pytest.approx(p, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(p=st.floats(-1e5, 1e5), e=e_values, r=r_values)
def test_current_solves_thevenin(p: float, e: float, r: float) -> None:
    i = float(current_for_dc_power_a(p, e, r))
    p_max = e * e / (4.0 * r) if r > 0.0 else math.inf
    if p <= p_max:
        assert (e - r * i) * i == pytest.approx(p, rel=1e-9, abs=1e-6)
        # the physical root: the voltage stays above E/2
        assert e - r * i >= e / 2.0 - 1e-9
    else:
        assert i == pytest.approx(e / (2.0 * r))


@settings(max_examples=500, deadline=None)
@given(
    sp=setpoints,
    ccl=caps,
    dcl=caps,
    closed=st.booleans(),
    e=e_values,
    r=r_values,
    prev=setpoints,
    dt=st.floats(0.0, 100.0),
    ramped=st.booleans(),
)
def test_caps_are_hard_and_energy_balances(
    sp: float,
    ccl: float,
    dcl: float,
    closed: bool,
    e: float,
    r: float,
    prev: float,
    dt: float,
    ramped: bool,
) -> None:
    params = RAMPED if ramped else HOME
    out = convert(sp, ccl, dcl, closed, e, r, params, prev, dt)
    i, ac, loss, dc = (float(x) for x in out)
    # hard DC current caps, zero current with the contactor open
    assert -ccl <= i <= dcl
    if not closed:
        assert i == 0.0
    # DC power is what the pack delivers through its Thevenin equivalent
    assert dc == pytest.approx((e - r * i) * i, rel=1e-12, abs=1e-9)
    # energy balance: P_ac = P_dc - loss (discharge), |P_dc| = |P_ac| - loss (charge)
    assert ac == pytest.approx(dc - loss, abs=1e-9)
    assert loss >= 0.0
    if i == 0.0:
        assert ac == -params.standby_w
        assert loss == params.standby_w
    else:
        assert loss == pytest.approx(float(operating_loss_w(ac, params)), rel=1e-9, abs=1e-6)
        assert math.copysign(1.0, i) == math.copysign(1.0, dc)
        # battery and AC side flow in the requested direction
        assert math.copysign(1.0, i) == math.copysign(1.0, ac)
    # AC ratings and ramp
    assert -params.max_charge_power_w - 1e-9 <= ac <= params.max_discharge_power_w + 1e-9
    if ramped and i != 0.0:
        step = params.ramp_rate_w_per_s * dt
        assert abs(ac - prev) <= step + 1e-6 or abs(ac) < abs(prev)
    # never more than asked (or than the ramp still holds) in the discharge direction
    if i != 0.0 and sp >= 0.0:
        assert ac <= (max(sp, prev) if ramped else sp) + 1e-6


def test_follows_setpoint_when_nothing_limits() -> None:
    out = convert(3000.0, 100.0, 100.0, True, 400.0, 0.05, HOME)
    assert float(out.ac_power_w) == pytest.approx(3000.0)
    loss = float(operating_loss_w(3000.0, HOME))
    assert float(out.dc_power_w) == pytest.approx(3000.0 + loss)
    out = convert(-3000.0, 100.0, 100.0, True, 400.0, 0.05, HOME)
    assert float(out.ac_power_w) == pytest.approx(-3000.0)
    assert float(out.dc_power_w) == pytest.approx(-3000.0 + loss)  # battery gets less
    assert float(out.current_a) < 0.0


def test_current_cap_limits_power() -> None:
    # 5 kW asked from a 50 V pack capped at 20 A: about 1 kW DC
    out = convert(5000.0, 100.0, 20.0, True, 50.0, 0.01, HOME)
    assert float(out.current_a) == 20.0
    assert float(out.dc_power_w) == pytest.approx((50.0 - 0.2) * 20.0)
    assert float(out.ac_power_w) == pytest.approx(float(ac_from_dc_w(996.0, HOME)))
    out = convert(-5000.0, 10.0, 100.0, True, 50.0, 0.01, HOME)
    assert float(out.current_a) == -10.0
    # zero cap: the converter idles on standby
    out = convert(-5000.0, 0.0, 100.0, True, 50.0, 0.01, HOME)
    assert float(out.current_a) == 0.0
    assert float(out.ac_power_w) == -HOME.standby_w


def test_contactor_open_means_no_current() -> None:
    out = convert(4000.0, 100.0, 100.0, False, 0.0, 0.0, HOME)
    assert float(out.current_a) == 0.0
    assert float(out.dc_power_w) == 0.0
    assert float(out.ac_power_w) == -HOME.standby_w


def test_ramp_rate_applies_to_ac_power() -> None:
    conv = Converter(RAMPED)
    acs = [float(conv.step(5000.0, 100.0, 100.0, True, 400.0, 0.05, 1.0).ac_power_w)]
    for _ in range(12):
        acs.append(float(conv.step(5000.0, 100.0, 100.0, True, 400.0, 0.05, 1.0).ac_power_w))
    assert acs[:3] == pytest.approx([500.0, 1000.0, 1500.0])
    assert acs[-1] == pytest.approx(5000.0)
    # reversal ramps through zero
    down = float(conv.step(-5000.0, 100.0, 100.0, True, 400.0, 0.05, 2.0).ac_power_w)
    assert down == pytest.approx(4000.0)
    # contactor opening drops the power at once and resets the ramp
    assert float(conv.step(5000.0, 100.0, 100.0, False, 400.0, 0.05, 1.0).current_a) == 0.0
    assert conv.operating_ac_w == 0.0
    assert float(conv.step(5000.0, 100.0, 100.0, True, 400.0, 0.05, 1.0).ac_power_w) == 500.0


def test_max_power_transfer() -> None:
    # E = 100 V, R = 1 ohm: at most 2.5 kW DC at 50 A
    out = convert(5000.0, 1000.0, 1000.0, True, 100.0, 1.0, HOME)
    assert float(out.current_a) == pytest.approx(50.0)
    assert float(out.dc_power_w) == pytest.approx(2500.0)


def test_ac_power_limits_match_convert() -> None:
    chg, dis = ac_power_limits_w(400.0, 0.1, 5.0, 8.0, HOME)
    out = convert(1e9, 5.0, 8.0, True, 400.0, 0.1, HOME)
    assert dis == pytest.approx(float(out.ac_power_w))
    out = convert(-1e9, 5.0, 8.0, True, 400.0, 0.1, HOME)
    assert chg == pytest.approx(-float(out.ac_power_w))
    assert ac_power_limits_w(400.0, 0.1, 100.0, 100.0, HOME) == (5000.0, 5000.0)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="magnitudes"):
        convert(1000.0, -1.0, 10.0, True, 400.0, 0.1, HOME)
    with pytest.raises(ValueError, match="e_v must be > 0"):
        convert(1000.0, 1.0, 10.0, True, 0.0, 0.1, HOME)
    with pytest.raises(ValueError, match="setpoint_ac_w must not be NaN"):
        convert(float("nan"), 1.0, 10.0, True, 400.0, 0.1, HOME)
    with pytest.raises(ValueError, match=r"ConverterParams\.linear_loss_fraction"):
        ConverterParams(5000.0, 5000.0, 10.0, 0.6, 0.0)


def test_fit_to_a_sandia_inverter_curve() -> None:
    """Fit the quadratic loss model to pvlib's Sandia model of a 5 kW CEC inverter."""
    inv = pvlib.pvsystem.retrieve_sam("cecinverter")["SolarEdge_Technologies_Ltd___SE5000__240V_"]
    pdc = np.linspace(0.05, 1.0, 20) * float(inv["Pdco"])
    pac = np.asarray(pvlib.inverter.sandia(float(inv["Vdco"]), pdc, inv), dtype=float)
    p0, k1, k2 = fit_loss_coefficients(pac, pac / pdc)
    params = ConverterParams(
        float(inv["Paco"]), float(inv["Paco"]), p0, k1, k2, standby_w=float(inv["Pnt"])
    )
    model_pdc = dc_from_ac_w(pac, params)
    np.testing.assert_allclose(model_pdc, pdc, rtol=2e-3)
    eta = params.efficiency(pac)
    assert 0.96 < eta.max() < 0.99


def test_charge_request_below_losses_idles() -> None:
    # charging 10 W through a converter with 20 W no-load loss would discharge the battery
    out = convert(-10.0, 100.0, 100.0, True, 400.0, 0.05, HOME)
    assert float(out.current_a) == 0.0
    assert float(out.ac_power_w) == -HOME.standby_w
    out = convert(-100.0, 100.0, 100.0, True, 400.0, 0.05, HOME)
    assert float(out.current_a) < 0.0


def test_vectorised_over_many_packs() -> None:
    sp = np.array([3000.0, -3000.0, 3000.0, 0.0])
    closed = np.array([True, True, False, True])
    out = convert(sp, 100.0, np.array([100.0, 100.0, 100.0, 0.0]), closed, 400.0, 0.05, HOME)
    assert out.current_a.shape == (4,)  # type: ignore[union-attr]
    np.testing.assert_allclose(out.ac_power_w, [3000.0, -3000.0, -10.0, -10.0])
