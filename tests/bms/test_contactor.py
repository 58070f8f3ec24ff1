"""Contactor state machine: cycle tables with a leaping clock (OpenEMS style)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.bms.contactor import (
    ContactorInputs,
    ContactorMachine,
    ContactorOutput,
    ContactorRequest,
)
from openbess.bms.defaults import default_params
from openbess.contract import ContactorState

# LFP 100 Ah: break 5 A, welded 2 A, precharge 95 % in 5 s, 3 attempts 5 s apart,
# zero-current timeout 7 s, feedback delay 0.5 s, reclose delay 10 s.
PARAMS = default_params("lfp", 100.0).contactor
S = ContactorState
R = ContactorRequest
PACK_V = 52.8


def make_inputs(**kw: float | bool) -> ContactorInputs:
    base = ContactorInputs(
        close_request=True,
        trip=False,
        pack_voltage_v=PACK_V,
        bus_voltage_v=0.0,
        current_a=0.0,
        feedback_closed=False,
    )
    return dataclasses.replace(base, **kw)


class Cycle:
    """Drives the machine through (leap_s, inputs) steps; the clock starts at 1.7e9 s."""

    def __init__(self) -> None:
        self.machine = ContactorMachine(PARAMS)
        self.t = 1.7e9
        self.events: list[str] = []

    def step(self, leap_s: float, **kw: float | bool) -> ContactorOutput:
        self.t += leap_s
        out = self.machine.step(self.t, make_inputs(**kw))
        self.events += [e.code for e in out.events]
        return out

    def check(self, table):
        """Rows of (leap_s, inputs, state, request, needs_zero_current)."""
        for k, (leap, kw, state, request, zero) in enumerate(table):
            out = self.step(leap, **kw)
            assert (out.state, out.request, out.needs_zero_current) == (state, request, zero), k


def close(cy: Cycle) -> None:
    """OPEN -> PRECHARGE -> CLOSED in two 1 s steps."""
    cy.check(
        [
            (0, {}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {"bus_voltage_v": 0.97 * PACK_V}, S.CLOSED, R.CLOSE, False),
        ]
    )


def test_precharge_success():
    cy = Cycle()
    cy.check(
        [
            (0, {"close_request": False}, S.OPEN, R.OPEN, False),
            (1, {}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {"bus_voltage_v": 33.0, "current_a": 0.3}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {"bus_voltage_v": 45.0, "current_a": 0.1}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {"bus_voltage_v": 0.95 * PACK_V}, S.CLOSED, R.CLOSE, False),
            (1, {"bus_voltage_v": PACK_V, "feedback_closed": True}, S.CLOSED, R.CLOSE, False),
        ]
    )
    assert cy.events == ["precharge_started", "closed"]


def test_precharge_timeout_with_retries_then_fault_and_reset():
    cy = Cycle()
    cy.check(
        [
            (0, {}, S.PRECHARGE, R.PRECHARGE, False),  # attempt 1
            (4, {}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {}, S.PRECHARGE, R.OPEN, False),  # 5 s: timed out, relay open, wait
            (4, {}, S.PRECHARGE, R.OPEN, False),
            (1, {}, S.PRECHARGE, R.PRECHARGE, False),  # attempt 2
            (5, {"bus_voltage_v": 0.5 * PACK_V}, S.PRECHARGE, R.OPEN, False),
            (5, {}, S.PRECHARGE, R.PRECHARGE, False),  # attempt 3
            (5, {"bus_voltage_v": 0.9 * PACK_V}, S.FAULT, R.OPEN, False),
            (3600, {}, S.FAULT, R.OPEN, False),  # stays until reset
        ]
    )
    assert cy.machine.fault_code == "precharge_failed"
    assert cy.events == [
        "precharge_started",
        "precharge_timeout",
        "precharge_started",
        "precharge_timeout",
        "precharge_started",
        "precharge_failed",
    ]
    ok, reason = cy.machine.reset(cy.t, make_inputs())
    assert (ok, reason) == (True, "fault precharge_failed reset")
    assert cy.machine.state is S.OPEN
    cy.check(
        [
            (5, {}, S.OPEN, R.OPEN, False),  # reclose delay 10 s after the reset
            (5, {}, S.PRECHARGE, R.PRECHARGE, False),
        ]
    )


def test_leaping_clock_of_60_s_precharges_in_one_step_and_times_out_per_step():
    cy = Cycle()
    cy.check(
        [
            (0, {}, S.PRECHARGE, R.PRECHARGE, False),
            (60, {"bus_voltage_v": PACK_V}, S.CLOSED, R.CLOSE, False),  # success before timeout
        ]
    )
    cy = Cycle()
    cy.check(
        [
            (0, {}, S.PRECHARGE, R.PRECHARGE, False),
            (60, {}, S.PRECHARGE, R.OPEN, False),
            (60, {}, S.PRECHARGE, R.PRECHARGE, False),
            (60, {}, S.PRECHARGE, R.OPEN, False),
            (60, {}, S.PRECHARGE, R.PRECHARGE, False),
            (60, {}, S.FAULT, R.OPEN, False),
        ]
    )


def test_normal_open_waits_for_current_below_break_current():
    cy = Cycle()
    close(cy)
    on = {"bus_voltage_v": PACK_V, "feedback_closed": True}
    cy.check(
        [
            (1, {**on, "close_request": False, "current_a": 50.0}, S.OPENING, R.CLOSE, True),
            (1, {**on, "close_request": False, "current_a": 20.0}, S.OPENING, R.CLOSE, True),
            (1, {**on, "close_request": False, "current_a": -4.0}, S.OPEN, R.OPEN, False),
            (1, {"close_request": False}, S.OPEN, R.OPEN, False),
        ]
    )
    assert cy.events[-2:] == ["opening", "opened"]


def test_unknown_current_counts_as_above_break_current():
    cy = Cycle()
    close(cy)
    on = {"bus_voltage_v": PACK_V, "feedback_closed": True, "close_request": False}
    cy.check([(1, {**on, "current_a": math.nan}, S.OPENING, R.CLOSE, True)])


def test_open_after_zero_current_timeout_and_withdrawn_open_request():
    cy = Cycle()
    close(cy)
    on = {"bus_voltage_v": PACK_V, "feedback_closed": True, "current_a": 80.0}
    cy.check(
        [
            (1, {**on, "close_request": False}, S.OPENING, R.CLOSE, True),
            (1, on, S.CLOSED, R.CLOSE, False),  # request withdrawn: stay closed
            (1, {**on, "close_request": False}, S.OPENING, R.CLOSE, True),
            (6, {**on, "close_request": False}, S.OPENING, R.CLOSE, True),
            (1, {**on, "close_request": False}, S.OPEN, R.OPEN, False),  # 7 s: opens anyway
        ]
    )
    assert cy.events[-1] == "opened_above_break_current"


def test_msl_trip_opens_at_once_above_break_current():
    for state_before in ("closed", "opening"):
        cy = Cycle()
        close(cy)
        on = {"bus_voltage_v": PACK_V, "feedback_closed": True, "current_a": 150.0}
        if state_before == "opening":
            cy.check([(1, {**on, "close_request": False}, S.OPENING, R.CLOSE, True)])
        cy.check([(0.2, {**on, "trip": True}, S.OPEN, R.OPEN, False)])
        assert cy.events[-1] == "opened_on_trip"


def test_trip_blocks_closing_and_reclose_delay_prevents_oscillation():
    cy = Cycle()
    cy.check([(0, {"trip": True}, S.OPEN, R.OPEN, False)])
    close(cy)
    on = {"bus_voltage_v": PACK_V, "feedback_closed": True}
    cy.check(
        [
            (1, {**on, "close_request": False}, S.OPEN, R.OPEN, False),
            (1, {}, S.OPEN, R.OPEN, False),  # close again at once: refused for 10 s
            (8, {}, S.OPEN, R.OPEN, False),
            (1, {}, S.PRECHARGE, R.PRECHARGE, False),  # 10 s after opening
        ]
    )


def test_welded_contactor_detected_by_feedback_and_reset_refused_while_closed():
    cy = Cycle()
    close(cy)
    welded = {"bus_voltage_v": PACK_V, "feedback_closed": True}
    cy.check(
        [
            (1, {**welded, "close_request": False}, S.OPEN, R.OPEN, False),
            (1, {**welded, "close_request": False}, S.OPEN, R.OPEN, False),  # seen once
            (1, {**welded, "close_request": False}, S.FAULT, R.OPEN, False),  # 1 s > 0.5 s
            (1, {**welded, "close_request": True}, S.FAULT, R.OPEN, False),  # no closing
        ]
    )
    assert cy.machine.fault_code == "contactor_welded"
    assert cy.events.count("contactor_welded") == 1
    ok, reason = cy.machine.reset(cy.t, make_inputs(feedback_closed=True))
    assert not ok
    assert reason == "auxiliary feedback still reports the main contactor closed"
    ok, _ = cy.machine.reset(cy.t, make_inputs(feedback_closed=False))
    assert ok


def test_welded_contactor_detected_by_current_but_not_during_precharge():
    cy = Cycle()
    cy.check(
        [
            (0, {}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {"current_a": -3.0, "bus_voltage_v": 30.0}, S.PRECHARGE, R.PRECHARGE, False),
            (1, {"current_a": -3.0, "bus_voltage_v": 40.0}, S.PRECHARGE, R.PRECHARGE, False),
        ]
    )
    cy = Cycle()
    cy.check(
        [
            (0, {"close_request": False}, S.OPEN, R.OPEN, False),
            (1, {"close_request": False, "current_a": 30.0}, S.OPEN, R.OPEN, False),
            (1, {"close_request": False, "current_a": 30.0}, S.FAULT, R.OPEN, False),
        ]
    )
    assert cy.events == ["contactor_welded"]


def test_one_sample_feedback_glitch_is_not_a_fault():
    cy = Cycle()
    close(cy)
    on = {"bus_voltage_v": PACK_V, "feedback_closed": True}
    cy.check(
        [
            (1, {**on, "feedback_closed": False}, S.CLOSED, R.CLOSE, False),  # glitch
            (1, on, S.CLOSED, R.CLOSE, False),
            (1, {**on, "feedback_closed": False}, S.CLOSED, R.CLOSE, False),
            (1, {**on, "feedback_closed": False}, S.FAULT, R.OPEN, False),  # persistent
        ]
    )
    assert cy.machine.fault_code == "contactor_feedback_lost"


def test_reset_outside_fault_and_time_going_backwards():
    m = ContactorMachine(PARAMS)
    assert m.reset(0.0, make_inputs()) == (False, "contactor is open, not in fault")
    m.step(10.0, make_inputs())
    with pytest.raises(ValueError, match="backwards"):
        m.step(9.0, make_inputs())


# ---------------------------------------------------------------------- output reuse


class FreshOutputMachine(ContactorMachine):
    """Reference: a new output object every step (no reuse of the standing one)."""

    def step(self, time_s, inputs):
        self._steady = None
        return super().step(time_s, inputs)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.1, 0.5, 1.0, 5.0, 8.0, 60.0]),
            st.booleans(),
            st.booleans(),
            st.sampled_from([0.0, 0.5 * PACK_V, PACK_V, math.nan]),
            st.sampled_from([0.0, 1.0, -3.0, 6.0, -40.0, math.nan]),
            st.booleans(),
            st.integers(0, 9),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_reused_outputs_equal_fresh_ones(steps):
    reused, fresh = ContactorMachine(PARAMS), FreshOutputMachine(PARAMS)
    t = 1.7e9
    for leap, close, trip, bus_v, current, feedback, reset in steps:
        t += leap
        inputs = ContactorInputs(
            close_request=close,
            trip=trip and close,
            pack_voltage_v=PACK_V,
            bus_voltage_v=bus_v,
            current_a=current,
            feedback_closed=feedback,
        )
        if reset == 0:
            assert reused.reset(t, inputs) == fresh.reset(t, inputs)
        assert reused.step(t, inputs) == fresh.step(t, inputs)
        assert (reused.state, reused.fault_code) == (fresh.state, fresh.fault_code)
