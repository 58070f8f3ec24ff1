"""The command gate: the BMS's last word on every command.

Every command, from the EMS or from outside (operator, Modbus, MQTT), passes here once per
cycle. The gate

1. drops a command that is out of order (sequence number not above the last one seen from the
   same source) or already expired, and refuses one with unusable fields;
2. keeps two tiers: the EMS's own commands (source ``ems``) and overrides from anyone else
   (operator, Modbus, MQTT, HTTP); a valid override wins over the EMS until it expires, then
   the EMS's command applies again. An override must carry a finite ``valid_until_s``;
3. falls back to safe idle (0 W) when no valid EMS command arrived for ``timeout_s`` (a lost
   EMS link), or when the active command expired;
4. refuses any power while the contactor is open or a protection trip is active, and refuses
   discharge at or below the command's reserve SoC;
5. clamps the rest to this cycle's charge and discharge power limits;
6. always passes this cycle's DC current limits to the converter as hard caps.

It is a small table of rules evaluated in that order; :class:`GateDecision` says which rule
decided and is carried back to the EMS in the Telemetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from openbess.contract import Actuation, Command, GateDecision, Limits, Mode, Outcome, Reason
from openbess.errors import ContractError

NO_DECISION = GateDecision(Outcome.SAFE_IDLE, Reason.NO_COMMAND, -1, 0.0, 0.0, "")

#: The source of the EMS's own commands; every other source is an override.
EMS_SOURCE = "ems"


@dataclass
class Gate:
    """Stateful command gate.

    Parameters
    ----------
    timeout_s : float
        Seconds without a new valid command after which the gate goes to safe idle [s].
    """

    timeout_s: float = 10.0
    _last_seq: dict[str, int] = field(default_factory=dict)
    _active: Command | None = None
    _active_since_s: float = -math.inf
    _override: Command | None = None
    last_decision: GateDecision = NO_DECISION
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"gate timeout_s must be > 0, got {self.timeout_s}")

    def _count(self, decision: GateDecision) -> GateDecision:
        key = decision.outcome.value
        self.counts[key] = self.counts.get(key, 0) + 1
        self.last_decision = decision
        return decision

    @property
    def override(self) -> Command | None:
        """The override in force (None when the EMS's command applies)."""
        return self._override

    def command_age_s(self, now_s: float) -> float:
        """Time since the last EMS command became active [s] (inf if none yet).

        Parameters
        ----------
        now_s : float
            Current time [s, Unix UTC].

        Returns
        -------
        float
            Age [s].
        """
        return now_s - self._active_since_s

    def submit(self, now_s: float, command: Command) -> GateDecision | None:
        """Offer a new command; return a decision if it is dropped or refused at once.

        Parameters
        ----------
        now_s : float
            Current time [s, Unix UTC].
        command : Command
            The command.

        Returns
        -------
        GateDecision or None
            ``None`` if the command became the active one (its fate is decided by
            :meth:`decide`), else the drop/refusal decision.
        """
        last = self._last_seq.get(command.source)
        req = 0.0
        try:
            command.check()
            req = command.requested_power_w()
        except ContractError:
            return self._count(
                GateDecision(Outcome.REFUSED, Reason.INVALID, command.seq, 0.0, 0.0, command.source)
            )
        if last is not None and command.seq <= last:
            return self._count(
                GateDecision(
                    Outcome.DROPPED, Reason.OUT_OF_ORDER, command.seq, req, 0.0, command.source
                )
            )
        self._last_seq[command.source] = command.seq
        if command.valid_until_s <= now_s:
            return self._count(
                GateDecision(Outcome.DROPPED, Reason.EXPIRED, command.seq, req, 0.0, command.source)
            )
        if command.source != EMS_SOURCE:
            if not math.isfinite(command.valid_until_s):
                return self._count(
                    GateDecision(
                        Outcome.REFUSED, Reason.INVALID, command.seq, req, 0.0, command.source
                    )
                )
            self._override = command
            return None
        self._active = command
        self._active_since_s = now_s
        return None

    def decide(self, now_s: float, limits: Limits, soc: float) -> tuple[Actuation, GateDecision]:
        """Decide this cycle's actuation from the active command and this cycle's limits.

        Parameters
        ----------
        now_s : float
            Current time [s, Unix UTC].
        limits : Limits
            This cycle's limits from the BMS.
        soc : float
            Pack SoC now [fraction] (for the reserve rule).

        Returns
        -------
        tuple of (Actuation, GateDecision)
            What to write to the converter, and why.
        """
        closed = limits.contactor_closed
        chg_a = max(limits.charge_current_a, 0.0) if closed else 0.0
        dis_a = max(limits.discharge_current_a, 0.0) if closed else 0.0
        chg_w = max(limits.charge_power_w, 0.0) if closed and not limits.tripped else 0.0
        dis_w = max(limits.discharge_power_w, 0.0) if closed and not limits.tripped else 0.0
        if limits.tripped:
            chg_a = dis_a = 0.0
        # math.isnan guards a NaN limit: NaN compares false and would otherwise pass through.
        if math.isnan(chg_w) or math.isnan(dis_w) or math.isnan(chg_a) or math.isnan(dis_a):
            chg_w = dis_w = chg_a = dis_a = 0.0

        override = self._override
        if override is not None and override.valid_until_s <= now_s:
            self._override = override = None
        if override is not None:
            return self._actuate(self._limit(override, limits, soc, chg_w, dis_w), chg_a, dis_a)
        cmd = self._active
        if cmd is None:
            decision = GateDecision(Outcome.SAFE_IDLE, Reason.NO_COMMAND, -1, 0.0, 0.0, "")
        elif cmd.valid_until_s <= now_s:
            decision = GateDecision(
                Outcome.SAFE_IDLE, Reason.EXPIRED, cmd.seq, 0.0, 0.0, cmd.source
            )
            self._active = None
        elif now_s - self._active_since_s > self.timeout_s:
            decision = GateDecision(
                Outcome.SAFE_IDLE, Reason.NO_COMMAND, cmd.seq, 0.0, 0.0, cmd.source
            )
            self._active = None
        else:
            decision = self._limit(cmd, limits, soc, chg_w, dis_w)
        return self._actuate(decision, chg_a, dis_a)

    def _actuate(
        self, decision: GateDecision, chg_a: float, dis_a: float
    ) -> tuple[Actuation, GateDecision]:
        actuation = Actuation(
            ac_power_setpoint_w=decision.granted_w,
            charge_current_limit_a=chg_a,
            discharge_current_limit_a=dis_a,
        )
        return actuation, self._count(decision)

    def cancel_override(self, source: str) -> bool:
        """Withdraw the override of ``source`` (the EMS's command applies again).

        Parameters
        ----------
        source : str
            Source whose override to cancel.

        Returns
        -------
        bool
            True if an override of that source was in force.
        """
        if self._override is not None and self._override.source == source:
            self._override = None
            return True
        return False

    @staticmethod
    def _limit(
        cmd: Command, limits: Limits, soc: float, chg_w: float, dis_w: float
    ) -> GateDecision:
        req = cmd.requested_power_w()
        seq, src = cmd.seq, cmd.source

        def out(outcome: Outcome, reason: Reason, granted: float) -> GateDecision:
            return GateDecision(outcome, reason, seq, req, granted, src)

        if req == 0.0 or cmd.mode in (Mode.HOLD, Mode.IDLE):
            return out(Outcome.ACCEPTED, Reason.NONE, 0.0)
        if limits.tripped:
            return out(Outcome.REFUSED, Reason.PROTECTION_TRIP, 0.0)
        if not limits.contactor_closed:
            return out(Outcome.REFUSED, Reason.CONTACTOR_OPEN, 0.0)
        if req > 0.0:
            if soc <= cmd.reserve_soc:
                return out(Outcome.REFUSED, Reason.RESERVE_SOC, 0.0)
            if dis_w <= 0.0:
                return out(Outcome.REFUSED, Reason.DISCHARGE_LIMIT, 0.0)
            if req > dis_w:
                return out(Outcome.CLAMPED, Reason.DISCHARGE_LIMIT, dis_w)
            return out(Outcome.ACCEPTED, Reason.NONE, req)
        if chg_w <= 0.0:
            return out(Outcome.REFUSED, Reason.CHARGE_LIMIT, 0.0)
        if -req > chg_w:
            return out(Outcome.CLAMPED, Reason.CHARGE_LIMIT, -chg_w)
        return out(Outcome.ACCEPTED, Reason.NONE, req)
