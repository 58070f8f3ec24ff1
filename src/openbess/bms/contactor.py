"""Main contactor state machine with precharge, safe opening and welded-contact detection.

States (:class:`openbess.contract.ContactorState`)::

    OPEN --close_request--> PRECHARGE --bus >= ratio * pack--> CLOSED
      ^                      |  timeout: relay open, wait, retry; after N attempts -> FAULT
      |                      +--(close_request dropped / trip)--> OPEN
      +--|I| <= break------ OPENING <--close_request dropped, |I| > break-- CLOSED
      +--trip (MSL), at once, whatever the current ------------------------ CLOSED / OPENING
    FAULT: everything open; left only by :meth:`ContactorMachine.reset`.

The machine is stepped once per BMS cycle with the measurements of that cycle and returns what
to request from the hardware (the twin's ``open`` / ``precharge`` / ``close`` commands). A
request made at step ``k`` is seen in the measurements of step ``k + 1``, so every check of the
hardware's answer (precharge voltage, feedback) looks at least one step after the request, and
timeouts are checked after success: the machine works with any step length.

Rules:

- Precharge succeeds when the bus (DC-link) voltage reaches ``precharge_voltage_ratio`` of the
  pack voltage within ``precharge_timeout_s``; then the main contactor closes and the precharge
  relay opens. A failed attempt opens the relay, waits ``precharge_retry_wait_s`` and retries;
  after ``precharge_attempts`` failures the machine goes to FAULT (``precharge_failed``).
- A normal open (close request dropped) never breaks more than ``break_current_a``: the machine
  goes to OPENING and sets ``needs_zero_current`` so the gate commands 0 W; it opens when the
  current is below the break current, or after ``zero_current_timeout_s``. A trip (MSL fault)
  opens at once.
- Welded contact: commanded open but the auxiliary feedback says closed, or current flows,
  for ``feedback_delay_s`` -> FAULT (``contactor_welded``). Commanded closed but feedback open
  -> FAULT (``contactor_feedback_lost``).
- After an opening a new precharge waits ``reclose_delay_s`` (no close/open oscillation).
- Sampled measurements: when the sensors are read every ``sample_period_s`` and held in
  between, a reading may predate the last command by up to one sample period. The machine then
  judges the hardware's answer only on readings at least ``sample_period_s`` after the command
  (feedback mismatch counted from then, precharge success), and extends the precharge and
  zero-current timeouts by one sample period. Without it, a held "open" feedback right after
  closing read as ``contactor_feedback_lost``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum

from openbess.bms.defaults import ContactorParams
from openbess.contract import ContactorState

logger = logging.getLogger(__name__)

#: Tolerance of timer comparisons [s]: float sums of cycle times are not exact.
TIME_EPS_S = 1e-6

__all__ = [
    "ContactorEvent",
    "ContactorInputs",
    "ContactorMachine",
    "ContactorOutput",
    "ContactorRequest",
]


class ContactorRequest(StrEnum):
    """What to ask of the contactor circuit (same values as the twin's commands)."""

    OPEN = "open"
    PRECHARGE = "precharge"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class ContactorInputs:
    """Inputs of one step.

    Parameters
    ----------
    close_request : bool
        The BMS wants the pack connected (operation allowed). False asks for a normal open.
    trip : bool
        An MSL fault: open now, whatever the current.
    pack_voltage_v : float
        Pack voltage, battery side [V] (NaN if invalid).
    bus_voltage_v : float
        DC-link voltage, converter side [V] (NaN if invalid).
    current_a : float
        Pack current [A], positive = discharge (NaN if invalid).
    feedback_closed : bool
        Auxiliary contact of the main contactor.
    """

    close_request: bool
    trip: bool
    pack_voltage_v: float
    bus_voltage_v: float
    current_a: float
    feedback_closed: bool


@dataclass(frozen=True, slots=True)
class ContactorEvent:
    """A noteworthy change, for the logbook.

    Parameters
    ----------
    time_s : float
        When [s, Unix UTC].
    code : str
        ``precharge_started``, ``closed``, ``opening``, ``opened``, ``opened_on_trip``,
        ``opened_above_break_current``, ``precharge_timeout``, ``precharge_failed``,
        ``contactor_welded``, ``contactor_feedback_lost``, ``reset``.
    state : ContactorState
        State after the event.
    message : str
        Human-readable line.
    """

    time_s: float
    code: str
    state: ContactorState
    message: str


@dataclass(frozen=True, slots=True)
class ContactorOutput:
    """What the machine asks for after one step.

    Parameters
    ----------
    state : ContactorState
        State after the step.
    main_close : bool
        Main contactor commanded closed.
    precharge_close : bool
        Precharge relay commanded closed.
    needs_zero_current : bool
        Waiting to open: the gate must command 0 W.
    events : tuple of ContactorEvent
        Events of this step.
    attempt : int
        Precharge attempt in progress or last made (0 when none).
    """

    state: ContactorState
    main_close: bool
    precharge_close: bool
    needs_zero_current: bool
    events: tuple[ContactorEvent, ...]
    attempt: int

    @property
    def request(self) -> ContactorRequest:
        """The request as one command: ``close``, ``precharge`` or ``open``."""
        if self.main_close:
            return ContactorRequest.CLOSE
        if self.precharge_close:
            return ContactorRequest.PRECHARGE
        return ContactorRequest.OPEN

    @property
    def closed(self) -> bool:
        """True when current may flow (state CLOSED or OPENING)."""
        return self.state in (ContactorState.CLOSED, ContactorState.OPENING)


class ContactorMachine:
    """The contactor state machine; step it once per BMS cycle.

    Parameters
    ----------
    params : ContactorParams
        Timing and thresholds.
    sample_period_s : float
        Time between fresh samples of the measurements (feedback, voltages, current) when they
        are held in between [s]; 0: every step reads a fresh sample.

    Raises
    ------
    ValueError
        ``sample_period_s`` negative or not finite.
    """

    def __init__(self, params: ContactorParams, sample_period_s: float = 0.0) -> None:
        if not (math.isfinite(sample_period_s) and sample_period_s >= 0.0):
            raise ValueError(f"sample_period_s must be finite and >= 0, got {sample_period_s!r}")
        self.params = params
        #: Sample period of the measurements the machine reads [s].
        self.sample_period_s = float(sample_period_s)
        self._commanded_s: float | None = None  # last change of the relay commands
        self._state = ContactorState.OPEN
        self._main = False
        self._precharge = False
        self._entered_s: float | None = None  # entry into the present state / phase
        self._waiting = False  # PRECHARGE: relay open, waiting to retry
        self._attempt = 0
        self._opened_s: float | None = None
        self._mismatch_since: float | None = None
        self._fault_code = ""
        self._last_time_s: float | None = None
        self._events: list[ContactorEvent] = []
        self._handlers = {
            ContactorState.OPEN: self._on_open,
            ContactorState.PRECHARGE: self._on_precharge,
            ContactorState.CLOSED: self._on_closed,
            ContactorState.OPENING: self._on_opening,
            ContactorState.FAULT: self._on_fault,
        }
        #: The last output without events (reused while the machine stands still).
        self._steady: ContactorOutput | None = None

    @property
    def state(self) -> ContactorState:
        """Present state."""
        return self._state

    @property
    def fault_code(self) -> str:
        """Why the machine is in FAULT (empty otherwise)."""
        return self._fault_code

    # ------------------------------------------------------------------ helpers
    def _emit(self, time_s: float, code: str, message: str) -> None:
        event = ContactorEvent(time_s, code, self._state, message)
        self._events.append(event)
        bad = code in ("precharge_failed", "contactor_welded", "contactor_feedback_lost")
        (logger.error if bad else logger.info)("contactor %s: %s", code, message)

    def _go(self, state: ContactorState, time_s: float, main: bool, precharge: bool) -> None:
        if state is ContactorState.OPEN and self._state is not ContactorState.OPEN:
            self._opened_s = time_s
        if main != self._main or precharge != self._precharge:
            self._commanded_s = time_s
        self._state = state
        self._main = main
        self._precharge = precharge
        self._entered_s = time_s
        self._mismatch_since = None

    def _fault(self, time_s: float, code: str, message: str) -> None:
        self._go(ContactorState.FAULT, time_s, main=False, precharge=False)
        self._fault_code = code
        self._emit(time_s, code, message)

    def _elapsed(self, time_s: float) -> float:
        """Time in the present state or phase [s], rounded up by :data:`TIME_EPS_S`."""
        return 0.0 if self._entered_s is None else time_s - self._entered_s + TIME_EPS_S

    def _answered(self, time_s: float) -> bool:
        """True if a reading at ``time_s`` was sampled after the last command change."""
        since = self._commanded_s
        if since is None:
            return True
        if self.sample_period_s <= 0.0:
            return time_s > since
        return time_s - since + TIME_EPS_S >= self.sample_period_s

    def _current_below_break(self, current_a: float) -> bool:
        return math.isfinite(current_a) and abs(current_a) <= self.params.break_current_a

    # ------------------------------------------------------------------ step
    def step(self, time_s: float, inputs: ContactorInputs) -> ContactorOutput:
        """Advance the machine to ``time_s`` with this cycle's inputs.

        Parameters
        ----------
        time_s : float
            Step time [s, Unix UTC]; never earlier than the previous step.
        inputs : ContactorInputs
            Requests and measurements of this cycle.

        Returns
        -------
        ContactorOutput
            State, relay requests, ``needs_zero_current`` and the events of this step.

        Raises
        ------
        ValueError
            ``time_s`` not finite or earlier than the previous step.
        """
        if not math.isfinite(time_s):
            raise ValueError(f"time_s must be finite, got {time_s!r}")
        if self._last_time_s is not None and time_s < self._last_time_s:
            raise ValueError(f"time_s went backwards: {time_s!r} < {self._last_time_s!r}")
        first = self._last_time_s is None
        self._last_time_s = time_s
        if not first:
            self._check_feedback(time_s, inputs)
        self._handlers[self._state](time_s, inputs)
        steady = self._steady
        if (
            not self._events
            and steady is not None
            and steady.state is self._state
            and steady.main_close == self._main
            and steady.precharge_close == self._precharge
            and steady.attempt == self._attempt
        ):
            return steady
        events, self._events = tuple(self._events), []
        out = ContactorOutput(
            state=self._state,
            main_close=self._main,
            precharge_close=self._precharge,
            needs_zero_current=self._state is ContactorState.OPENING,
            events=events,
            attempt=self._attempt,
        )
        if events:
            self._steady = None
        else:
            self._steady = out
        return out

    def _check_feedback(self, time_s: float, i: ContactorInputs) -> None:
        """Compare the hardware with the request made at the previous step."""
        p = self.params
        if self._main:
            mismatch = not i.feedback_closed
        else:
            # Through the precharge resistor current flows by design: judge the feedback only.
            flowing = (
                not self._precharge
                and math.isfinite(i.current_a)
                and abs(i.current_a) > p.welded_current_a
            )
            mismatch = i.feedback_closed or flowing
        if not mismatch or not self._answered(time_s):
            # A reading sampled before the command cannot show its effect yet.
            self._mismatch_since = None
            return
        if self._mismatch_since is None:
            self._mismatch_since = time_s
        if time_s - self._mismatch_since + TIME_EPS_S < p.feedback_delay_s:
            return
        if self._main:
            self._fault(time_s, "contactor_feedback_lost", "commanded closed, feedback open")
        elif self._state is not ContactorState.FAULT or self._fault_code != "contactor_welded":
            what = "feedback closed" if i.feedback_closed else f"{i.current_a:.3g} A flowing"
            self._fault(time_s, "contactor_welded", f"commanded open but {what}")

    def _on_open(self, time_s: float, i: ContactorInputs) -> None:
        if not i.close_request or i.trip:
            return
        if (
            self._opened_s is not None
            and time_s - self._opened_s + TIME_EPS_S < self.params.reclose_delay_s
        ):
            return
        self._attempt = 1
        self._waiting = False
        self._go(ContactorState.PRECHARGE, time_s, main=False, precharge=True)
        self._emit(time_s, "precharge_started", "precharge attempt 1")

    def _on_precharge(self, time_s: float, i: ContactorInputs) -> None:
        p = self.params
        if not i.close_request or i.trip:
            self._go(ContactorState.OPEN, time_s, main=False, precharge=False)
            self._emit(time_s, "opened", "precharge aborted")
            return
        if self._waiting:
            if self._elapsed(time_s) >= p.precharge_retry_wait_s:
                self._attempt += 1
                self._waiting = False
                self._go(ContactorState.PRECHARGE, time_s, main=False, precharge=True)
                self._emit(time_s, "precharge_started", f"precharge attempt {self._attempt}")
            return
        stepped = self._entered_s is not None and time_s > self._entered_s
        if stepped and self._answered(time_s) and self._precharged(i):
            self._go(ContactorState.CLOSED, time_s, main=True, precharge=False)
            self._emit(
                time_s,
                "closed",
                f"precharged to {i.bus_voltage_v:.4g} V of {i.pack_voltage_v:.4g} V; main closed",
            )
            return
        if self._elapsed(time_s) >= p.precharge_timeout_s + self.sample_period_s:
            if self._attempt >= p.precharge_attempts:
                self._fault(
                    time_s,
                    "precharge_failed",
                    f"bus {i.bus_voltage_v:.4g} V below {p.precharge_voltage_ratio:.0%} of pack "
                    f"{i.pack_voltage_v:.4g} V after {self._attempt} attempts",
                )
                return
            self._emit(time_s, "precharge_timeout", f"attempt {self._attempt} timed out")
            self._go(ContactorState.PRECHARGE, time_s, main=False, precharge=False)
            self._waiting = True

    def _precharged(self, i: ContactorInputs) -> bool:
        if not (math.isfinite(i.pack_voltage_v) and math.isfinite(i.bus_voltage_v)):
            return False
        return i.pack_voltage_v > 0.0 and (
            i.bus_voltage_v >= self.params.precharge_voltage_ratio * i.pack_voltage_v
        )

    def _open_now(self, time_s: float, i: ContactorInputs, code: str, why: str) -> None:
        self._go(ContactorState.OPEN, time_s, main=False, precharge=False)
        self._emit(time_s, code, f"{why}; current {i.current_a:.3g} A")

    def _on_closed(self, time_s: float, i: ContactorInputs) -> None:
        if i.trip:
            self._open_now(time_s, i, "opened_on_trip", "MSL trip")
        elif not i.close_request:
            if self._current_below_break(i.current_a):
                self._open_now(time_s, i, "opened", "open requested")
            else:
                self._go(ContactorState.OPENING, time_s, main=True, precharge=False)
                self._emit(
                    time_s, "opening", f"waiting for current {i.current_a:.3g} A to reach zero"
                )

    def _on_opening(self, time_s: float, i: ContactorInputs) -> None:
        if i.trip:
            self._open_now(time_s, i, "opened_on_trip", "MSL trip")
        elif i.close_request:
            self._go(ContactorState.CLOSED, time_s, main=True, precharge=False)
            self._emit(time_s, "closed", "open request withdrawn")
        elif self._current_below_break(i.current_a):
            self._open_now(time_s, i, "opened", "current below break current")
        elif self._elapsed(time_s) >= self.params.zero_current_timeout_s + self.sample_period_s:
            self._open_now(time_s, i, "opened_above_break_current", "zero-current timeout expired")

    def _on_fault(self, time_s: float, i: ContactorInputs) -> None:
        return None

    # ------------------------------------------------------------------ reset
    def reset(self, time_s: float, inputs: ContactorInputs) -> tuple[bool, str]:
        """Leave FAULT for OPEN, if the contactor is seen open.

        Parameters
        ----------
        time_s : float
            Time of the request [s, Unix UTC].
        inputs : ContactorInputs
            Present measurements.

        Returns
        -------
        ok : bool
            True if the machine is now OPEN.
        reason : str
            Why not (or what was done).
        """
        if self._state is not ContactorState.FAULT:
            return False, f"contactor is {self._state.value}, not in fault"
        if inputs.feedback_closed:
            return False, "auxiliary feedback still reports the main contactor closed"
        if math.isfinite(inputs.current_a) and abs(inputs.current_a) > self.params.welded_current_a:
            return False, f"{inputs.current_a:.3g} A still flowing"
        code = self._fault_code
        self._fault_code = ""
        self._attempt = 0
        self._waiting = False
        self._go(ContactorState.OPEN, time_s, main=False, precharge=False)
        self._emit(time_s, "reset", f"fault {code} reset")
        return True, f"fault {code} reset"
