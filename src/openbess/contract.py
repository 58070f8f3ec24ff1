"""The BMS-EMS contract: what the BMS tells the EMS, what the EMS asks of the BMS.

This module is the only coupling between the two brains. It is versioned by
:data:`CONTRACT_VERSION`; a change that removes or re-means a field bumps the major number.

Sign conventions (see ``docs/glossary.md``): battery power and current are positive when
discharging; limits are magnitudes (>= 0). Times are Unix seconds UTC (``time_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from openbess.errors import ContractError

CONTRACT_VERSION = "1.0"

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class Mode(StrEnum):
    """What the EMS asks the battery to do.

    ``power``: follow ``power_w`` (signed, positive = discharge).
    ``charge`` / ``discharge``: charge or discharge at ``abs(power_w)``.
    ``hold``: keep the stored energy: no discharge, no charge (0 W).
    ``idle``: standby at 0 W (the safe state the gate falls back to).
    """

    POWER = "power"
    CHARGE = "charge"
    DISCHARGE = "discharge"
    HOLD = "hold"
    IDLE = "idle"


class ContactorState(StrEnum):
    """State of the main contactor state machine."""

    OPEN = "open"
    PRECHARGE = "precharge"
    CLOSED = "closed"
    OPENING = "opening"
    FAULT = "fault"


class ContactorRequest(StrEnum):
    """What the BMS asks of the contactor circuit."""

    OPEN = "open"
    PRECHARGE = "precharge"
    CLOSE = "close"


class Outcome(StrEnum):
    """What the gate did with the latest command."""

    ACCEPTED = "accepted"
    CLAMPED = "clamped"
    REFUSED = "refused"
    DROPPED = "dropped"
    SAFE_IDLE = "safe_idle"


class Reason(StrEnum):
    """Why the gate clamped, refused or dropped a command (``none`` when accepted)."""

    NONE = "none"
    CHARGE_LIMIT = "charge_limit"
    DISCHARGE_LIMIT = "discharge_limit"
    RESERVE_SOC = "reserve_soc"
    CONTACTOR_OPEN = "contactor_open"
    PROTECTION_TRIP = "protection_trip"
    EXPIRED = "expired"
    OUT_OF_ORDER = "out_of_order"
    NO_COMMAND = "no_command"
    INVALID = "invalid"
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class Command:
    """EMS to BMS: one request, valid until ``valid_until_s``.

    Parameters
    ----------
    seq : int
        Sequence number, strictly increasing per source; an older or repeated number is dropped.
    mode : Mode
        What to do.
    power_w : float
        AC power [W], positive = discharge. Used by ``power`` (signed) and by ``charge`` /
        ``discharge`` (magnitude). Ignored by ``hold`` and ``idle``.
    valid_until_s : float
        Expiry time [s, Unix UTC]; the gate drops the command after it.
    reserve_soc : float
        Pack SoC [fraction] the battery must not be discharged below (0 = no reserve).
    source : str
        Who sent it (``ems``, ``operator``, ``modbus``...), for the log.
    """

    seq: int
    mode: Mode
    power_w: float = 0.0
    valid_until_s: float = math.inf
    reserve_soc: float = 0.0
    source: str = "ems"

    def requested_power_w(self) -> float:
        """Signed AC power the command asks for [W], positive = discharge.

        Returns
        -------
        float
            The request after applying the mode.
        """
        if self.mode is Mode.POWER:
            return self.power_w
        if self.mode is Mode.DISCHARGE:
            return abs(self.power_w)
        if self.mode is Mode.CHARGE:
            return -abs(self.power_w)
        return 0.0

    def check(self) -> None:
        """Raise :class:`ContractError` if a field is not usable.

        Raises
        ------
        ContractError
            Naming the field and the value.
        """
        if not math.isfinite(self.power_w):
            raise ContractError(f"Command.power_w must be finite, got {self.power_w!r}")
        if not (0.0 <= self.reserve_soc <= 1.0):
            raise ContractError(f"Command.reserve_soc must be in [0, 1], got {self.reserve_soc!r}")
        if math.isnan(self.valid_until_s):
            raise ContractError("Command.valid_until_s must not be NaN")
        if not isinstance(self.mode, Mode):
            raise ContractError(f"Command.mode must be one of {[m.value for m in Mode]}")


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The gate's verdict on the command of this cycle.

    Parameters
    ----------
    outcome : Outcome
        Accepted, clamped, refused, dropped, or safe idle (no valid command).
    reason : Reason
        Why (``none`` when accepted).
    seq : int
        Sequence number of the command decided on (-1 when there was none).
    requested_w : float
        AC power asked for [W], positive = discharge.
    granted_w : float
        AC power setpoint actuated [W], positive = discharge.
    source : str
        Source of the command.
    """

    outcome: Outcome
    reason: Reason
    seq: int
    requested_w: float
    granted_w: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class Limits:
    """What the battery may do now, computed by the BMS each cycle.

    Parameters
    ----------
    charge_current_a, discharge_current_a : float
        DC pack current limits [A], magnitudes >= 0.
    charge_power_w, discharge_power_w : float
        AC-side power limits [W], magnitudes >= 0 (DC limit through the converter rating).
    contactor_closed : bool
        False: no current may flow, both limits are 0.
    tripped : bool
        A protection fault that forbids operation is active.
    """

    charge_current_a: float
    discharge_current_a: float
    charge_power_w: float
    discharge_power_w: float
    contactor_closed: bool = True
    tripped: bool = False


@dataclass(frozen=True, slots=True)
class Actuation:
    """What is written to the power converter and the pack each cycle.

    Parameters
    ----------
    ac_power_setpoint_w : float
        AC power [W], positive = discharge.
    charge_current_limit_a, discharge_current_limit_a : float
        Hard DC current caps [A] the converter must honour whatever the setpoint (as real
        inverters do with a BMS's CCL/DCL).
    contactor : ContactorRequest
        Request for the contactor circuit: ``open``, ``precharge`` or ``close``.
    balancing : numpy.ndarray of bool or None
        Per cell: bleed resistor on.
    """

    ac_power_setpoint_w: float
    charge_current_limit_a: float
    discharge_current_limit_a: float
    contactor: ContactorRequest = ContactorRequest.CLOSE
    balancing: BoolArray | None = None


@dataclass(frozen=True, slots=True)
class Telemetry:
    """BMS to EMS: the state of the battery and what it may do now.

    All voltages [V], temperatures [degC], currents [A], powers [W], energies [Wh];
    SoC and SoH are fractions 0..1.
    """

    time_s: float
    soc: float
    soc_cell_min: float
    soc_cell_max: float
    soh: float
    energy_available_wh: float
    capacity_wh: float
    pack_voltage_v: float
    pack_current_a: float
    cell_voltage_min_v: float
    cell_voltage_max_v: float
    cell_voltage_avg_v: float
    temperature_min_degc: float
    temperature_max_degc: float
    temperature_avg_degc: float
    charge_current_limit_a: float
    discharge_current_limit_a: float
    charge_power_limit_w: float
    discharge_power_limit_w: float
    contactor: ContactorState
    alarms: tuple[str, ...]
    balancing_cells: int
    gate: GateDecision
    version: str = CONTRACT_VERSION
    extra: dict[str, float] = field(default_factory=dict)
