"""The fixed-phase cycle: plant/measure -> BMS -> EMS -> gate -> actuate -> log.

One :meth:`Controller.cycle` per BMS period. Each phase is isolated: an exception in the EMS is
logged and counted and the cycle goes on without a new command (the gate then holds the last
valid one until it expires, then idles); an exception in the BMS is a fault that puts the
battery in the safe state (0 W, zero current caps, contactor open request). The same code runs
against the digital twin and against real hardware: it only sees the :class:`~openbess.plant.Plant`
protocol.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from openbess.contract import (
    Actuation,
    Command,
    ContactorRequest,
    GateDecision,
    Limits,
    Outcome,
    Reason,
    Telemetry,
)
from openbess.ems.strategy import Strategy
from openbess.gate import Gate
from openbess.io.hub import Hub, Pending
from openbess.plant import Measurements, Plant, SiteMeasurements

log = logging.getLogger(__name__)

SAFE_ACTUATION = Actuation(0.0, 0.0, 0.0, contactor=ContactorRequest.OPEN)


class Bms(Protocol):
    """What the cycle needs from the BMS."""

    def update(
        self,
        now_s: float,
        measurements: Measurements,
        last_decision: GateDecision,
        ems_link_age_s: float = ...,
    ) -> tuple[Telemetry, Limits]:
        """Monitor, estimate, protect; return the Telemetry and this cycle's limits."""

    def actuation(self, gated: Actuation) -> Actuation:
        """Add the BMS's own outputs (contactor request, balancing) to the gated actuation."""

    def safe_state(self, now_s: float, error: BaseException) -> None:
        """Record that the BMS phase failed (a fault) so the next cycles stay safe."""


class Recorder(Protocol):
    """What the cycle needs from the run store (log phase)."""

    def record_cycle(
        self,
        telemetry: Telemetry,
        site: SiteMeasurements,
        measurements: Measurements,
        command: Command | None,
        decision: GateDecision,
    ) -> None:
        """Append one cycle to the log."""

    def record_event(
        self,
        time_s: float,
        kind: str,
        code: str,
        severity: str,
        message: str,
        data: dict[str, object] | None = None,
    ) -> None:
        """Append one event to the log."""


@dataclass
class CycleCounters:
    """Counters of one controller (visible in KPIs and metrics)."""

    cycles: int = 0
    ems_errors: int = 0
    bms_errors: int = 0
    log_errors: int = 0
    commands_lost: int = 0
    overruns: int = 0
    gate: dict[str, int] = field(default_factory=dict)


@dataclass
class Controller:
    """The cycle that makes the BMS and the EMS work together.

    Parameters
    ----------
    plant : Plant
        The twin or real hardware.
    bms : Bms
        The battery management system.
    strategy : Strategy
        The EMS strategy.
    gate : Gate
        The command gate.
    recorder : Recorder or None
        Where each cycle is logged.
    dispatch_s : float
        EMS dispatch period [s].
    replan_s : float
        EMS re-plan period [s].
    link_up : callable or None
        Returns False while the EMS-BMS link is down (commands are lost in transit).
    hub : Hub or None
        Where outside interfaces queue their commands; they pass the same gate, after the
        EMS's command of the cycle, and each gets its decision back.
    """

    plant: Plant
    bms: Bms
    strategy: Strategy
    gate: Gate
    recorder: Recorder | None = None
    dispatch_s: float = 1.0
    replan_s: float = 900.0
    link_up: Callable[[], bool] | None = None
    hub: Hub | None = None
    counters: CycleCounters = field(default_factory=CycleCounters)
    telemetry: Telemetry | None = None
    site: SiteMeasurements | None = None
    measurements: Measurements | None = None
    last_command: Command | None = None
    _first_cycle_s: float | None = None
    _next_dispatch_s: float = -math.inf
    _next_replan_s: float = -math.inf

    def cycle(self, now_s: float) -> Telemetry | None:
        """Run one cycle at ``now_s``.

        Parameters
        ----------
        now_s : float
            Cycle time [s, Unix UTC].

        Returns
        -------
        Telemetry or None
            This cycle's Telemetry (None if the BMS phase failed).
        """
        self.counters.cycles += 1
        if self._first_cycle_s is None:
            self._first_cycle_s = now_s
        # 1. plant / measure
        self.plant.advance_to(now_s)
        meas, site = self.plant.read()
        self.site = site
        self.measurements = meas
        # 2. BMS
        try:
            telemetry, limits = self.bms.update(
                now_s, meas, self.gate.last_decision, self._link_age_s(now_s)
            )
        except Exception as err:  # a BMS failure is a fault: safe state
            self.counters.bms_errors += 1
            log.exception("BMS phase failed at t=%.0f: safe state", now_s)
            self.bms.safe_state(now_s, err)
            self.plant.write(SAFE_ACTUATION)
            self._event(now_s, "fault", "bms_exception", "error", f"BMS phase failed: {err!r}")
            return None
        self.telemetry = telemetry
        # 3. EMS (isolated)
        command: Command | None = None
        if now_s >= self._next_replan_s:
            self._next_replan_s = now_s + self.replan_s
            try:
                self.strategy.replan(now_s, telemetry)
            except Exception as err:
                self.counters.ems_errors += 1
                log.exception("EMS re-plan failed at t=%.0f", now_s)
                self._event(now_s, "ems", "replan_exception", "warning", repr(err))
        if now_s >= self._next_dispatch_s:
            self._next_dispatch_s = now_s + self.dispatch_s
            try:
                command = self.strategy.dispatch(now_s, telemetry, site)
            except Exception as err:
                self.counters.ems_errors += 1
                log.exception("EMS dispatch failed at t=%.0f", now_s)
                self._event(now_s, "ems", "dispatch_exception", "warning", repr(err))
        # 4. gate
        if command is not None:
            if self.link_up is not None and not self.link_up():
                self.counters.commands_lost += 1
                command = None
            else:
                early = self.gate.submit(now_s, command)
                if early is not None:
                    self._event(
                        now_s,
                        "gate",
                        early.reason.value,
                        "info",
                        f"command {early.seq} from {early.source} {early.outcome.value}",
                    )
        if command is not None:
            self.last_command = command
        waiting = self._take_external(now_s)
        gated, decision = self.gate.decide(now_s, limits, telemetry.soc)
        for pending in waiting:
            cmd = pending.command
            if decision.source == cmd.source and decision.seq == cmd.seq:
                Hub.answer(pending, decision)
            else:  # a newer command from the same source replaced it within this cycle
                Hub.answer(
                    pending,
                    GateDecision(Outcome.DROPPED, Reason.SUPERSEDED, cmd.seq, 0.0, 0.0, cmd.source),
                )
        # 5. actuate
        self.plant.write(self.bms.actuation(gated))
        self.counters.gate = self.gate.counts
        # 6. log
        if self.recorder is not None:
            try:
                self.recorder.record_cycle(telemetry, site, meas, command, decision)
            except Exception:
                self.counters.log_errors += 1
                log.exception("log phase failed at t=%.0f", now_s)
        return telemetry

    def _take_external(self, now_s: float) -> list[Pending]:
        """Submit the interfaces' queued commands; answer the early refusals at once."""
        if self.hub is None:
            return []
        waiting: list[Pending] = []
        for pending in self.hub.take_commands():
            early = self.gate.submit(now_s, pending.command)
            if early is None:
                waiting.append(pending)
                self.last_command = pending.command
            else:
                Hub.answer(pending, early)
                self._event(
                    now_s,
                    "gate",
                    early.reason.value,
                    "info",
                    f"command {early.seq} from {early.source} {early.outcome.value}",
                )
        return waiting

    def _link_age_s(self, now_s: float) -> float:
        # The link's age counts from the controller's start, not from the epoch.
        start = self._first_cycle_s if self._first_cycle_s is not None else now_s
        return min(self.gate.command_age_s(now_s), now_s - start)

    def _event(self, now_s: float, kind: str, code: str, severity: str, message: str) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.record_event(now_s, kind, code, severity, message)
        except Exception:
            self.counters.log_errors += 1
            log.exception("could not record event %s", code)
