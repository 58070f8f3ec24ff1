"""The command gate: table of cases and property tests (Hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.contract import Command, Limits, Mode, Outcome, Reason
from openbess.gate import Gate

LIMITS = Limits(
    charge_current_a=100.0,
    discharge_current_a=120.0,
    charge_power_w=5000.0,
    discharge_power_w=4000.0,
)


def decide(gate: Gate, now: float, cmd: Command | None, limits: Limits = LIMITS, soc: float = 0.5):
    early = gate.submit(now, cmd) if cmd is not None else None
    act, dec = gate.decide(now, limits, soc)
    return early, act, dec


@pytest.mark.parametrize(
    ("mode", "power_w", "outcome", "reason", "granted"),
    [
        (Mode.POWER, 3000.0, Outcome.ACCEPTED, Reason.NONE, 3000.0),
        (Mode.POWER, 9000.0, Outcome.CLAMPED, Reason.DISCHARGE_LIMIT, 4000.0),
        (Mode.POWER, -9000.0, Outcome.CLAMPED, Reason.CHARGE_LIMIT, -5000.0),
        (Mode.CHARGE, 2000.0, Outcome.ACCEPTED, Reason.NONE, -2000.0),
        (Mode.DISCHARGE, -2000.0, Outcome.ACCEPTED, Reason.NONE, 2000.0),
        (Mode.HOLD, 3000.0, Outcome.ACCEPTED, Reason.NONE, 0.0),
        (Mode.IDLE, -3000.0, Outcome.ACCEPTED, Reason.NONE, 0.0),
    ],
)
def test_modes_and_clamps(mode, power_w, outcome, reason, granted):
    _, act, dec = decide(Gate(), 0.0, Command(seq=1, mode=mode, power_w=power_w))
    assert (dec.outcome, dec.reason, dec.granted_w) == (outcome, reason, granted)
    assert act.ac_power_setpoint_w == granted
    assert act.charge_current_limit_a == 100.0
    assert act.discharge_current_limit_a == 120.0


def test_reserve_soc_refuses_discharge_but_allows_charge():
    gate = Gate()
    _, _, dec = decide(gate, 0.0, Command(1, Mode.POWER, 1000.0, reserve_soc=0.6), soc=0.6)
    assert (dec.outcome, dec.reason, dec.granted_w) == (Outcome.REFUSED, Reason.RESERVE_SOC, 0.0)
    _, _, dec = decide(gate, 1.0, Command(2, Mode.POWER, -1000.0, reserve_soc=0.6), soc=0.6)
    assert dec.outcome is Outcome.ACCEPTED
    assert dec.granted_w == -1000.0


def test_out_of_order_and_expired_are_dropped_and_previous_stays():
    gate = Gate()
    decide(gate, 0.0, Command(5, Mode.POWER, 1000.0))
    early, _, dec = decide(gate, 1.0, Command(5, Mode.POWER, 3000.0))
    assert early is not None
    assert (early.outcome, early.reason) == (Outcome.DROPPED, Reason.OUT_OF_ORDER)
    assert dec.granted_w == 1000.0
    early, _, dec = decide(gate, 2.0, Command(6, Mode.POWER, 3000.0, valid_until_s=1.5))
    assert early is not None
    assert (early.outcome, early.reason) == (Outcome.DROPPED, Reason.EXPIRED)
    assert dec.granted_w == 1000.0


def test_sequence_numbers_are_per_source():
    gate = Gate()
    decide(gate, 0.0, Command(10, Mode.POWER, 1000.0, source="ems"))
    early, _, dec = decide(
        gate, 1.0, Command(1, Mode.POWER, 2000.0, valid_until_s=60.0, source="operator")
    )
    assert early is None
    assert dec.granted_w == 2000.0


def test_override_wins_until_it_expires_then_the_ems_applies_again():
    gate = Gate(timeout_s=10.0)
    decide(gate, 0.0, Command(1, Mode.POWER, 1000.0, source="ems"))
    decide(gate, 1.0, Command(1, Mode.CHARGE, 3000.0, valid_until_s=30.0, source="modbus"))
    # the EMS keeps sending; the override still wins
    _, _, dec = decide(gate, 2.0, Command(2, Mode.POWER, 500.0, source="ems"))
    assert (dec.source, dec.granted_w) == ("modbus", -3000.0)
    assert gate.override is not None
    # the override expires: the EMS command applies again (it is fresh)
    _, _, dec = decide(gate, 30.0, Command(3, Mode.POWER, 700.0, source="ems"))
    assert (dec.source, dec.granted_w) == ("ems", 700.0)
    assert gate.override is None


def test_override_is_not_subject_to_the_ems_timeout_but_limits_still_apply():
    gate = Gate(timeout_s=5.0)
    decide(gate, 0.0, Command(1, Mode.DISCHARGE, 9000.0, valid_until_s=100.0, source="mqtt"))
    _, act, dec = decide(gate, 50.0, None)
    assert (dec.outcome, dec.reason, dec.granted_w) == (
        Outcome.CLAMPED,
        Reason.DISCHARGE_LIMIT,
        4000.0,
    )
    assert act.ac_power_setpoint_w == 4000.0
    # no EMS command for 50 s: the EMS link age is still infinite
    assert gate.command_age_s(50.0) == math.inf


def test_override_without_expiry_is_refused_and_can_be_cancelled():
    gate = Gate()
    early = gate.submit(0.0, Command(1, Mode.POWER, 100.0, source="http"))
    assert early is not None
    assert (early.outcome, early.reason) == (Outcome.REFUSED, Reason.INVALID)
    assert gate.override is None
    gate.submit(0.0, Command(2, Mode.POWER, 100.0, valid_until_s=10.0, source="http"))
    assert not gate.cancel_override("mqtt")
    assert gate.cancel_override("http")
    _, dec = gate.decide(1.0, LIMITS, 0.5)
    assert dec.outcome is Outcome.SAFE_IDLE


def test_active_command_expires_to_safe_idle():
    gate = Gate(timeout_s=100.0)
    decide(gate, 0.0, Command(1, Mode.POWER, 1000.0, valid_until_s=5.0))
    _, _, dec = decide(gate, 4.0, None)
    assert dec.granted_w == 1000.0
    _, act, dec = decide(gate, 5.0, None)
    assert (dec.outcome, dec.reason) == (Outcome.SAFE_IDLE, Reason.EXPIRED)
    assert act.ac_power_setpoint_w == 0.0


def test_no_command_for_timeout_means_safe_idle():
    gate = Gate(timeout_s=10.0)
    decide(gate, 0.0, Command(1, Mode.POWER, -1000.0))
    _, _, dec = decide(gate, 10.0, None)
    assert dec.granted_w == -1000.0
    _, act, dec = decide(gate, 10.5, None)
    assert (dec.outcome, dec.reason) == (Outcome.SAFE_IDLE, Reason.NO_COMMAND)
    assert act.ac_power_setpoint_w == 0.0


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (Limits(10.0, 10.0, 1000.0, 1000.0, contactor_closed=False), Reason.CONTACTOR_OPEN),
        (Limits(10.0, 10.0, 1000.0, 1000.0, tripped=True), Reason.PROTECTION_TRIP),
        (Limits(10.0, 0.0, 1000.0, 0.0), Reason.DISCHARGE_LIMIT),
    ],
)
def test_refusals(limits, reason):
    _, act, dec = decide(Gate(), 0.0, Command(1, Mode.POWER, 500.0), limits=limits)
    assert (dec.outcome, dec.reason, dec.granted_w) == (Outcome.REFUSED, reason, 0.0)
    assert act.ac_power_setpoint_w == 0.0
    if reason is not Reason.DISCHARGE_LIMIT:
        assert act.charge_current_limit_a == 0.0
        assert act.discharge_current_limit_a == 0.0


def test_invalid_command_is_refused():
    _, _, dec = decide(Gate(), 0.0, Command(1, Mode.POWER, math.nan))
    assert dec.outcome is Outcome.SAFE_IDLE
    gate = Gate()
    early = gate.submit(0.0, Command(1, Mode.POWER, 1.0, reserve_soc=1.5))
    assert early is not None
    assert (early.outcome, early.reason) == (Outcome.REFUSED, Reason.INVALID)


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s"):
        Gate(timeout_s=0.0)


finite = st.floats(min_value=-1e7, max_value=1e7, allow_nan=False)
anyfloat = st.floats(allow_nan=True, allow_infinity=True)
commands = st.builds(
    Command,
    seq=st.integers(-5, 50),
    mode=st.sampled_from(Mode),
    power_w=anyfloat,
    valid_until_s=st.floats(min_value=-10, max_value=200, allow_nan=False),
    reserve_soc=st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
    source=st.sampled_from(["ems", "operator", "modbus"]),
)
limits_st = st.builds(
    Limits,
    charge_current_a=st.floats(0, 500, allow_nan=False),
    discharge_current_a=st.floats(0, 500, allow_nan=False),
    charge_power_w=st.floats(0, 1e6, allow_nan=False),
    discharge_power_w=st.floats(0, 1e6, allow_nan=False),
    contactor_closed=st.booleans(),
    tripped=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.one_of(st.none(), commands), limits_st, st.floats(0, 1)),
        min_size=1,
        max_size=40,
    )
)
def test_actuation_never_exceeds_the_limits_of_that_cycle(steps):
    gate = Gate(timeout_s=5.0)
    for k, (cmd, limits, soc) in enumerate(steps):
        now = float(k)
        if cmd is not None:
            gate.submit(now, cmd)
        act, dec = gate.decide(now, limits, soc)
        p = act.ac_power_setpoint_w
        assert math.isfinite(p)
        assert -limits.charge_power_w <= p <= limits.discharge_power_w
        assert 0.0 <= act.charge_current_limit_a <= limits.charge_current_a
        assert 0.0 <= act.discharge_current_limit_a <= limits.discharge_current_a
        if not limits.contactor_closed or limits.tripped:
            assert p == 0.0
            assert act.charge_current_limit_a == act.discharge_current_limit_a == 0.0
        if dec.outcome in (Outcome.SAFE_IDLE, Outcome.REFUSED):
            assert p == 0.0
        assert dec.granted_w == p
