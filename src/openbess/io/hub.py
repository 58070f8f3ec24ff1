"""The hub: where the control loop and the outside interfaces meet.

The control loop (one thread) publishes a :class:`Snapshot` after every cycle and, at the gate
phase, takes the commands the interfaces queued. The interfaces (Modbus, MQTT, HTTP, OpenADR,
the dashboard; each in its own thread or event loop) only ever

* read the latest :class:`Snapshot` (immutable, so no lock is held while they encode it),
* queue a :class:`~openbess.contract.Command` with :meth:`Hub.submit` and get the gate's
  :class:`~openbess.contract.GateDecision` back (the same gate as the EMS's commands),
* ask for a fault reset or a twin fault drill (applied by the loop at the next cycle),
* post or cancel grid events (demand response) that the EMS plans around,
* count the bad input they refused (:meth:`Hub.reject`), per interface and reason.

Nothing an interface does can reach the battery except through the gate.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openbess.contract import Command, GateDecision, Outcome, Reason, Telemetry
from openbess.plant import SiteMeasurements

if TYPE_CHECKING:
    from openbess.config import SiteConfig

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Sources that may not be used by an interface (reserved for the EMS inside the loop).
RESERVED_SOURCES = frozenset({"ems"})


@dataclass(frozen=True, slots=True)
class CellView:
    """Per-cell state for displays and per-string registers.

    Parameters
    ----------
    voltage_v : numpy.ndarray
        Measured voltage of every series cell [V], shape ``(n_cells,)``, NaN when invalid.
    temperature_degc : numpy.ndarray
        Temperature the BMS assigns to every cell [degC], shape ``(n_cells,)``.
    soc : numpy.ndarray
        Estimated SoC of every cell [fraction], shape ``(n_cells,)``.
    balancing : numpy.ndarray of bool
        Bleed resistor on, per cell.
    string_current_a : numpy.ndarray
        Current of each string [A], positive = discharge, shape ``(n_strings,)``.
    n_strings : int
        Parallel strings; cells are string-major (``cell = string * n_series + k``).
    modules_per_string : int
        Modules in each string.
    """

    voltage_v: FloatArray
    temperature_degc: FloatArray
    soc: FloatArray
    balancing: BoolArray
    string_current_a: FloatArray
    n_strings: int
    modules_per_string: int


@dataclass(frozen=True, slots=True)
class PlanView:
    """The EMS's current plan (empty arrays when the strategy does not plan).

    Parameters
    ----------
    created_s : float
        When the plan was made [s, Unix UTC].
    time_s : numpy.ndarray
        Start of each step [s, Unix UTC].
    step_s : numpy.ndarray
        Length of each step [s].
    battery_power_w : numpy.ndarray
        Planned battery AC power [W], positive = discharge.
    soc : numpy.ndarray
        Planned SoC at the end of each step [fraction].
    grid_import_w, grid_export_w : numpy.ndarray
        Planned grid import and export [W], >= 0.
    load_w, pv_w : numpy.ndarray
        Forecast load and PV [W].
    import_price_eur_per_kwh, export_price_eur_per_kwh : numpy.ndarray
        Prices used [EUR/kWh].
    relaxed : tuple of str
        Constraints the planner had to relax.
    forecast_errors : mapping
        Error of the forecasts the plans were given, per column (``mae``, ``mae_naive``,
        ``skill``, ``n``; empty without model forecasts).
    """

    created_s: float
    time_s: FloatArray
    step_s: FloatArray
    battery_power_w: FloatArray
    soc: FloatArray
    grid_import_w: FloatArray
    grid_export_w: FloatArray
    load_w: FloatArray
    pv_w: FloatArray
    import_price_eur_per_kwh: FloatArray
    export_price_eur_per_kwh: FloatArray
    relaxed: tuple[str, ...] = ()
    forecast_errors: Mapping[str, Mapping[str, float | int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything an interface may show after one cycle.

    Parameters
    ----------
    time_s : float
        Cycle time [s, Unix UTC].
    telemetry : Telemetry
        The BMS's Telemetry (with this cycle's gate decision).
    site : SiteMeasurements
        Site meters.
    cells : CellView
        Per-cell state.
    command : Command or None
        The command that the EMS or an interface last got accepted by the gate.
    plan : PlanView or None
        The EMS plan, when the strategy plans.
    counters : dict
        Loop and interface counters (cycles, errors, gate outcomes, rejected input).
    alarm_severity : dict
        Active alarm code (bare, without the ``:tier`` of ``Telemetry.alarms``) -> severity
        (``warning``, ``derate``, ``trip``).
    latched : tuple of str
        Faults that need a reset.
    """

    time_s: float
    telemetry: Telemetry
    site: SiteMeasurements
    cells: CellView
    command: Command | None
    plan: PlanView | None
    counters: dict[str, float]
    alarm_severity: dict[str, str] = field(default_factory=dict)
    latched: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GridEvent:
    """A request from the grid side (demand response, operator schedule) for a time window.

    The EMS plans around it and the real-time layer enforces it; the battery still only moves
    through the gate, so the BMS limits always win.

    Parameters
    ----------
    event_id : str
        Identifier (unique per source).
    start_s, end_s : float
        Window [s, Unix UTC], ``start_s < end_s``.
    max_import_w : float or None
        Cap on grid import at the meter during the window [W].
    max_export_w : float or None
        Cap on grid export during the window [W].
    battery_power_w : float or None
        Battery AC power to hold during the window [W], positive = discharge.
    source : str
        Who asked (``openadr``, ``operator``...).
    """

    event_id: str
    start_s: float
    end_s: float
    max_import_w: float | None = None
    max_export_w: float | None = None
    battery_power_w: float | None = None
    source: str = "operator"

    def check(self) -> None:
        """Raise ValueError naming the field that is not usable."""
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)):
            raise ValueError("GridEvent start_s and end_s must be finite")
        if self.end_s <= self.start_s:
            raise ValueError(f"GridEvent end_s {self.end_s} must be after start_s {self.start_s}")
        for name in ("max_import_w", "max_export_w"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"GridEvent {name} must be a finite value >= 0, got {v!r}")
        if self.battery_power_w is not None and not math.isfinite(self.battery_power_w):
            raise ValueError(
                f"GridEvent battery_power_w must be finite, got {self.battery_power_w}"
            )

    def active(self, now_s: float) -> bool:
        """True when ``now_s`` is inside the window."""
        return self.start_s <= now_s < self.end_s


@dataclass
class Pending:
    command: Command
    done: threading.Event = field(default_factory=threading.Event)
    decision: GateDecision | None = None


@dataclass
class ResetRequest:
    code: str
    source: str
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[bool, str] = (False, "not processed")


@dataclass
class DrillRequest:
    spec: str
    source: str
    clear: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[bool, str] = (False, "not processed")


class Hub:
    """Thread-safe meeting point of the control loop and the interfaces.

    Parameters
    ----------
    site_name : str
        Name of the site (topic and device names).
    max_queue : int
        Commands queued between two cycles beyond which new ones are refused (flood guard).
    config : SiteConfig or None
        The site configuration.
    db_path : pathlib.Path or None
        The run database (SQLite, WAL: interfaces open their own read-only connection).
    """

    def __init__(
        self,
        site_name: str,
        max_queue: int = 1000,
        config: SiteConfig | None = None,
        db_path: Path | None = None,
    ) -> None:
        self.site_name = site_name
        #: The site configuration (ratings for nameplates and discovery), when known.
        self.config = config
        #: The run database (history, events), when the run has one.
        self.db_path = db_path
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._commands: deque[Pending] = deque()
        self._resets: deque[ResetRequest] = deque()
        self._drills: deque[DrillRequest] = deque()
        self._events: dict[tuple[str, str], GridEvent] = {}
        self._rejected: dict[str, int] = {}
        self._subscribers: list[Callable[[Snapshot], None]] = []
        self._event_subscribers: list[Callable[[dict[str, Any]], None]] = []
        self._heartbeats: dict[str, float] = {}
        self._cancels: deque[str] = deque()
        self._log: deque[dict[str, Any]] = deque(maxlen=10000)
        self._cycle = threading.Condition(self._lock)
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ loop side
    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the latest and notify subscribers (called by the loop).

        A subscriber that raises is logged and skipped; it never stops the loop.

        Parameters
        ----------
        snapshot : Snapshot
            This cycle's snapshot.
        """
        with self._lock:
            self._snapshot = snapshot
            subs = list(self._subscribers)
            self._cycle.notify_all()
        for fn in subs:
            try:
                fn(snapshot)
            except Exception:
                log.exception("hub subscriber %r failed", fn)

    def publish_event(self, event: dict[str, Any]) -> None:
        """Pass an event record (BMS alarm, gate refusal, interface error) to subscribers.

        Parameters
        ----------
        event : dict
            ``time_s``, ``kind``, ``code``, ``severity``, ``message`` and optional ``data``.
        """
        with self._lock:
            subs = list(self._event_subscribers)
        for fn in subs:
            try:
                fn(event)
            except Exception:
                log.exception("hub event subscriber %r failed", fn)

    def take_commands(self) -> list[Pending]:
        """Remove and return the queued commands, oldest first (called by the loop)."""
        with self._lock:
            out = list(self._commands)
            self._commands.clear()
        return out

    @staticmethod
    def answer(pending: Pending, decision: GateDecision) -> None:
        """Give a queued command its gate decision and wake the waiting interface."""
        pending.decision = decision
        pending.done.set()

    def take_cancels(self) -> list[str]:
        """Remove and return the sources whose override is to be cancelled (called by the loop)."""
        with self._lock:
            out = list(self._cancels)
            self._cancels.clear()
        return out

    def take_log(self) -> list[dict[str, Any]]:
        """Remove and return the events the interfaces logged (the loop records them)."""
        with self._lock:
            out = list(self._log)
            self._log.clear()
        return out

    def take_resets(self) -> list[ResetRequest]:
        """Remove and return the queued reset requests (called by the loop)."""
        with self._lock:
            out = list(self._resets)
            self._resets.clear()
        return out

    def take_drills(self) -> list[DrillRequest]:
        """Remove and return the queued fault-drill requests (called by the loop)."""
        with self._lock:
            out = list(self._drills)
            self._drills.clear()
        return out

    @staticmethod
    def finish(request: ResetRequest | DrillRequest, ok: bool, message: str) -> None:
        """Answer a reset or drill request."""
        request.result = (ok, message)
        request.done.set()

    # ------------------------------------------------------------------ interface side
    def latest(self) -> Snapshot | None:
        """The latest snapshot (None before the first cycle)."""
        with self._lock:
            return self._snapshot

    def wait_next(self, after_s: float, timeout_s: float) -> Snapshot | None:
        """Block until a snapshot newer than ``after_s`` exists or ``timeout_s`` passed.

        Parameters
        ----------
        after_s : float
            Cycle time already seen [s, Unix UTC].
        timeout_s : float
            Longest wait [s, wall].

        Returns
        -------
        Snapshot or None
            The newest snapshot (may be the old one after a timeout).
        """
        with self._cycle:
            self._cycle.wait_for(
                lambda: self._snapshot is not None and self._snapshot.time_s > after_s,
                timeout=timeout_s,
            )
            return self._snapshot

    def subscribe(self, fn: Callable[[Snapshot], None]) -> None:
        """Call ``fn(snapshot)`` after every cycle, in the loop's thread: keep it short."""
        with self._lock:
            self._subscribers.append(fn)

    def unsubscribe(self, fn: Callable[[Snapshot], None]) -> None:
        """Stop calling ``fn`` after every cycle (no error if it was not subscribed)."""
        with self._lock:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

    def unsubscribe_events(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Stop calling ``fn`` for events (no error if it was not subscribed)."""
        with self._lock:
            if fn in self._event_subscribers:
                self._event_subscribers.remove(fn)

    def cancel_override(self, source: str) -> None:
        """Withdraw the override of ``source`` at the next cycle: the EMS's command applies."""
        with self._lock:
            self._cancels.append(source)

    def log_event(
        self, kind: str, code: str, severity: str, message: str, time_s: float | None = None
    ) -> None:
        """Record an interface event (e.g. a lost heartbeat) in the run database.

        The loop writes it at the next cycle (site time of that cycle unless ``time_s`` is
        given) and passes it to the event subscribers.

        Parameters
        ----------
        kind, code, severity, message : str
            As for every event (severity ``info``, ``warning`` or ``error``).
        time_s : float or None
            Site time of the event [s, Unix UTC].
        """
        event: dict[str, Any] = {
            "time_s": time_s,
            "kind": kind,
            "code": code,
            "severity": severity,
            "message": message,
        }
        with self._lock:
            self._log.append(event)

    def subscribe_events(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(event)`` for every event, in the loop's thread: keep it short."""
        with self._lock:
            self._event_subscribers.append(fn)

    def submit(self, command: Command, wait_s: float = 0.0) -> GateDecision | None:
        """Queue ``command`` for the gate; optionally wait for its decision.

        Parameters
        ----------
        command : Command
            The command (its ``source`` names the interface; ``ems`` is reserved).
        wait_s : float
            Wall seconds to wait for the loop's decision (0: do not wait).

        Returns
        -------
        GateDecision or None
            The gate's decision, a refusal if the queue is full or the source is reserved, or
            None if the loop did not decide within ``wait_s``.
        """
        if command.source in RESERVED_SOURCES:
            self.reject(command.source, "reserved_source")
            return GateDecision(
                Outcome.REFUSED, Reason.INVALID, command.seq, 0.0, 0.0, command.source
            )
        pending = Pending(command)
        with self._lock:
            if len(self._commands) >= self.max_queue:
                full = True
            else:
                full = False
                self._commands.append(pending)
        if full:
            self.reject(command.source, "queue_full")
            return GateDecision(
                Outcome.REFUSED, Reason.INVALID, command.seq, 0.0, 0.0, command.source
            )
        if wait_s > 0:
            pending.done.wait(wait_s)
        return pending.decision

    def request_reset(self, code: str, source: str, wait_s: float = 0.0) -> tuple[bool, str]:
        """Ask the BMS to reset a latched fault (``all`` for every latched fault).

        Parameters
        ----------
        code : str
            Fault code, or ``all``.
        source : str
            Interface asking.
        wait_s : float
            Wall seconds to wait for the answer.

        Returns
        -------
        tuple of (bool, str)
            Whether the reset was done, and why not.
        """
        req = ResetRequest(code, source)
        with self._lock:
            self._resets.append(req)
        if wait_s > 0:
            req.done.wait(wait_s)
        return req.result

    def request_drill(
        self, spec: str, source: str, wait_s: float = 0.0, clear: bool = False
    ) -> tuple[bool, str]:
        """Ask the twin to inject (or clear) a fault now: ``KIND[:TARGET][:name=value...]``.

        Parameters
        ----------
        spec : str
            Fault specification as for ``--fault`` but without ``@SECONDS`` (it starts at the
            next cycle); the target defaults to 0.
        source : str
            Interface asking.
        wait_s : float
            Wall seconds to wait for the answer.
        clear : bool
            Remove that fault instead (the twin recovers; latched BMS faults still need a
            reset).

        Returns
        -------
        tuple of (bool, str)
            Whether the fault was injected, and the message.
        """
        req = DrillRequest(spec, source, clear)
        with self._lock:
            self._drills.append(req)
        if wait_s > 0:
            req.done.wait(wait_s)
        return req.result

    def post_event(self, event: GridEvent) -> None:
        """Add or replace (same source and id) a grid event.

        Raises
        ------
        ValueError
            If the event is not usable.
        """
        event.check()
        with self._lock:
            self._events[(event.source, event.event_id)] = event

    def cancel_event(self, source: str, event_id: str) -> bool:
        """Remove a grid event; True if it existed."""
        with self._lock:
            return self._events.pop((source, event_id), None) is not None

    def grid_events(self, now_s: float | None = None) -> Sequence[GridEvent]:
        """Grid events not yet over at ``now_s`` (all if None), sorted by start."""
        with self._lock:
            events = list(self._events.values())
        if now_s is not None:
            events = [e for e in events if e.end_s > now_s]
        return sorted(events, key=lambda e: (e.start_s, e.event_id))

    def heartbeat(self, source: str, wall_s: float) -> None:
        """Record that ``source`` is alive (e.g. a Modbus heartbeat write) [s, monotonic]."""
        with self._lock:
            self._heartbeats[source] = wall_s

    def last_heartbeat(self, source: str) -> float:
        """Monotonic time of the last heartbeat of ``source`` (-inf if none)."""
        with self._lock:
            return self._heartbeats.get(source, -math.inf)

    def reject(self, interface: str, reason: str) -> None:
        """Count one piece of bad input refused by ``interface`` for ``reason``."""
        key = f"{interface}.{reason}"
        with self._lock:
            self._rejected[key] = self._rejected.get(key, 0) + 1
        log.debug("rejected input on %s: %s", interface, reason)

    def rejected(self) -> dict[str, int]:
        """Counts of refused input, ``interface.reason`` -> count."""
        with self._lock:
            return dict(self._rejected)
