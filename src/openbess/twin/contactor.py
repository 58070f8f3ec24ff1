"""The main contactor and precharge circuit of the twin (the physical switches, not the BMS logic).

Circuit: the pack (battery side) connects to the converter's DC link (capacitance ``C``) through
the main contactor, or through the precharge relay in series with a resistor ``R``. With the
precharge relay closed the DC-link voltage rises exponentially towards the pack voltage,
``v(t) = v_pack + (v0 - v_pack) exp(-t / (R C))``; with everything open it decays through the
converter's discharge resistor. The BMS commands ``precharge``, ``close`` (main closes, the
precharge relay opens) and ``open``. The auxiliary contact reports the true position of the main
contacts, so a welded contactor (injected fault: stays closed when commanded open) is seen by the
BMS as "aux closed while commanded open".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from openbess.contract import ContactorState
from openbess.errors import SimulationError
from openbess.twin.faults import FaultKind

if TYPE_CHECKING:
    from openbess.twin.faults import FaultInjector

logger = logging.getLogger(__name__)

#: Current through open main contacts above which the twin reports a wiring error [A].
OPEN_CURRENT_TOLERANCE_A = 1e-6


class ContactorCommand(StrEnum):
    """Commands the BMS can give to the contactor circuit."""

    OPEN = "open"
    PRECHARGE = "precharge"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class ContactorConfig:
    """Electrical parameters of the contactor circuit.

    Parameters
    ----------
    dc_link_capacitance_f : float
        Converter DC-link capacitance [F], > 0.
    precharge_resistance_ohm : float
        Precharge resistor [ohm], > 0.
    discharge_time_constant_s : float
        Time constant of the DC link's passive discharge when disconnected [s], > 0.
    hard_close_threshold_v : float
        Voltage difference across the main contacts at closing above which the closing is
        logged as a hard (un-precharged) close [V].
    initial_bus_voltage_v : float
        DC-link voltage at start [V].
    """

    dc_link_capacitance_f: float = 0.01
    precharge_resistance_ohm: float = 100.0
    discharge_time_constant_s: float = 60.0
    hard_close_threshold_v: float = 20.0
    initial_bus_voltage_v: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "dc_link_capacitance_f",
            "precharge_resistance_ohm",
            "discharge_time_constant_s",
            "hard_close_threshold_v",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ContactorConfig.{name} must be finite and > 0, got {value!r}")

    @property
    def precharge_time_constant_s(self) -> float:
        """``R C`` of the precharge circuit [s]."""
        return self.precharge_resistance_ohm * self.dc_link_capacitance_f


def precharge_voltage_v(
    time_s: float, pack_voltage_v: float, start_voltage_v: float, tau_s: float
) -> float:
    """DC-link voltage after ``time_s`` of precharge from ``start_voltage_v`` [V].

    Parameters
    ----------
    time_s : float
        Time since the precharge relay closed [s], >= 0.
    pack_voltage_v : float
        Pack voltage [V] (held constant).
    start_voltage_v : float
        DC-link voltage when the relay closed [V].
    tau_s : float
        Time constant ``R C`` [s], > 0.

    Returns
    -------
    float
        The DC-link voltage [V].
    """
    return pack_voltage_v + (start_voltage_v - pack_voltage_v) * math.exp(-time_s / tau_s)


class Contactor:
    """Main contactor + precharge relay + DC-link capacitance.

    Parameters
    ----------
    config : ContactorConfig, optional
        Electrical parameters.
    faults : FaultInjector, optional
        Consulted for ``welded_contactor`` when an ``open`` command arrives.
    """

    def __init__(
        self, config: ContactorConfig | None = None, faults: FaultInjector | None = None
    ) -> None:
        self.config = config if config is not None else ContactorConfig()
        self.faults = faults
        self._main_closed = False
        self._precharge_closed = False
        self._bus_voltage_v = float(self.config.initial_bus_voltage_v)
        self._current_a = 0.0
        self._commanded = ContactorCommand.OPEN
        #: Number of main closings with more than ``hard_close_threshold_v`` across the contacts.
        self.hard_close_count = 0
        #: Voltage across the main contacts at the last closing [V].
        self.last_close_delta_v = 0.0
        #: Number of ``open`` commands refused by a welded contact.
        self.welded_refusals = 0
        self._last_pack_voltage_v: float | None = None

    # ------------------------------------------------------------------ commands
    def command(self, cmd: ContactorCommand | str, time_s: float = 0.0) -> None:
        """Apply a BMS command (takes effect at once).

        Parameters
        ----------
        cmd : ContactorCommand or str
            ``open``, ``precharge`` or ``close``.
        time_s : float
            Time of the command [s, Unix UTC] (for the welded fault).

        Raises
        ------
        ValueError
            Unknown command.
        """
        try:
            c = cmd if type(cmd) is ContactorCommand else ContactorCommand(cmd)
        except ValueError:
            known = ", ".join(k.value for k in ContactorCommand)
            raise ValueError(f"unknown contactor command {cmd!r}; known: {known}") from None
        self._commanded = c
        if c is ContactorCommand.OPEN:
            self._precharge_closed = False
            if self._main_closed and self._is_welded(time_s):
                self.welded_refusals += 1
                logger.warning("contactor welded: stays closed although commanded open")
            else:
                self._main_closed = False
        elif c is ContactorCommand.PRECHARGE:
            self._precharge_closed = True
        else:
            if not self._main_closed:
                pack_v = self._last_pack_voltage_v
                if pack_v is not None:
                    delta = abs(pack_v - self._bus_voltage_v)
                    self.last_close_delta_v = delta
                    if delta > self.config.hard_close_threshold_v:
                        self.hard_close_count += 1
                        logger.warning("main contactor closed with %.1f V across it", delta)
            self._main_closed = True
            self._precharge_closed = False

    def _is_welded(self, time_s: float) -> bool:
        return self.faults is not None and self.faults.is_active(
            FaultKind.WELDED_CONTACTOR, 0, time_s
        )

    # ------------------------------------------------------------------ physics
    def step(self, dt_s: float, pack_voltage_v: float, pack_current_a: float = 0.0) -> float:
        """Advance the DC link by ``dt_s``.

        Parameters
        ----------
        dt_s : float
            Step [s], > 0.
        pack_voltage_v : float
            Pack voltage on the battery side during the step [V].
        pack_current_a : float
            Current drawn through the main contacts [A], positive = discharge; must be 0 when
            they are open.

        Returns
        -------
        float
            Mean current drawn from the pack by the precharge circuit during the step [A]
            (``C dV / dt``; 0 unless precharging with the main contacts open).

        Raises
        ------
        ValueError
            ``dt_s <= 0`` or a non-finite voltage.
        SimulationError
            Current asked through open main contacts.
        """
        if not dt_s > 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s!r}")
        if not math.isfinite(pack_voltage_v):
            raise ValueError(f"pack_voltage_v must be finite, got {pack_voltage_v!r}")
        self._last_pack_voltage_v = float(pack_voltage_v)
        cfg = self.config
        if self._main_closed:
            self._bus_voltage_v = float(pack_voltage_v)
            self._current_a = float(pack_current_a)
            return 0.0
        if abs(pack_current_a) > OPEN_CURRENT_TOLERANCE_A:
            raise SimulationError(f"{pack_current_a:.3g} A asked through the open main contactor")
        v0 = self._bus_voltage_v
        if self._precharge_closed:
            v1 = precharge_voltage_v(dt_s, pack_voltage_v, v0, cfg.precharge_time_constant_s)
            i_mean = cfg.dc_link_capacitance_f * (v1 - v0) / dt_s
        else:
            v1 = v0 * math.exp(-dt_s / cfg.discharge_time_constant_s)
            i_mean = 0.0
        self._bus_voltage_v = v1
        self._current_a = 0.0
        return i_mean

    # ------------------------------------------------------------------ read-back
    @property
    def main_closed(self) -> bool:
        """True position of the main contacts."""
        return self._main_closed

    @property
    def precharge_closed(self) -> bool:
        """True position of the precharge relay."""
        return self._precharge_closed

    @property
    def aux_closed(self) -> bool:
        """Auxiliary-contact feedback (mirrors the main contacts, welded or not)."""
        return self._main_closed

    @property
    def commanded(self) -> ContactorCommand:
        """Last command received."""
        return self._commanded

    @property
    def conducting(self) -> bool:
        """True when the pack current may flow to the converter."""
        return self._main_closed

    @property
    def bus_voltage_v(self) -> float:
        """DC-link voltage on the converter side [V]."""
        return self._bus_voltage_v

    @property
    def current_a(self) -> float:
        """Current through the main contacts in the last step [A] (= pack current)."""
        return self._current_a

    @property
    def state(self) -> ContactorState:
        """Physical state: ``closed``, ``precharge``, ``open``, or ``fault`` when welded shut
        against an ``open`` command."""
        if self._main_closed:
            if self._commanded is ContactorCommand.OPEN:
                return ContactorState.FAULT
            return ContactorState.CLOSED
        if self._precharge_closed:
            return ContactorState.PRECHARGE
        return ContactorState.OPEN
