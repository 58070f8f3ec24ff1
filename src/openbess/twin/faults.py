"""Fault injection for the digital twin: faults switched on at a chosen time on a chosen target.

A :class:`FaultInjector` holds the list of injected faults. The pack, the sensors and the
contactor of the twin consult it at every step (``active(time_s, kind)``), so a scenario script
can break things while a run is in progress::

    faults = FaultInjector(n_cells=96, n_strings=1, n_temperature_sensors=16)
    faults.inject(FaultKind.INTERNAL_SHORT, target=17, at_time_s=t0 + 3600, resistance_ohm=2.0)
    faults.inject(FaultKind.LINK_LOST, target=0, at_time_s=t0 + 7200)

Targets by kind (indices start at 0):

=========================  =====================  ============================================
kind                       target                 parameters (defaults)
=========================  =====================  ============================================
``stuck_cell_voltage``     cell                   none (the reading freezes at its last value)
``open_wire``              cell (its upper tap)   none
``current_sensor_drift``   string                 ``rate_a_per_s`` (0.01): offset growth [A/s]
``temperature_sensor_lost`` temperature sensor    none
``internal_short``         cell                   ``resistance_ohm`` (1.0): short path [ohm]
``cooling_failure``        string                 ``remaining_fraction`` (0.05): share of the
                                                  cell-to-coolant conductance left [fraction]
``welded_contactor``       0 (main contactor)     none
``link_lost``              0 (EMS link)           none
=========================  =====================  ============================================
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from openbess.twin.pack import PackTopology

logger = logging.getLogger(__name__)


class FaultKind(StrEnum):
    """Kinds of fault the twin can simulate."""

    STUCK_CELL_VOLTAGE = "stuck_cell_voltage"
    OPEN_WIRE = "open_wire"
    CURRENT_SENSOR_DRIFT = "current_sensor_drift"
    TEMPERATURE_SENSOR_LOST = "temperature_sensor_lost"
    INTERNAL_SHORT = "internal_short"
    COOLING_FAILURE = "cooling_failure"
    WELDED_CONTACTOR = "welded_contactor"
    LINK_LOST = "link_lost"


#: What each kind is applied to (used for the target range check).
TARGET_OF: dict[FaultKind, str] = {
    FaultKind.STUCK_CELL_VOLTAGE: "cell",
    FaultKind.OPEN_WIRE: "cell",
    FaultKind.CURRENT_SENSOR_DRIFT: "string",
    FaultKind.TEMPERATURE_SENSOR_LOST: "temperature_sensor",
    FaultKind.INTERNAL_SHORT: "cell",
    FaultKind.COOLING_FAILURE: "string",
    FaultKind.WELDED_CONTACTOR: "contactor",
    FaultKind.LINK_LOST: "link",
}

#: Parameters each kind accepts, with their defaults, and the allowed open interval check.
DEFAULT_PARAMS: dict[FaultKind, dict[str, float]] = {
    FaultKind.STUCK_CELL_VOLTAGE: {},
    FaultKind.OPEN_WIRE: {},
    FaultKind.CURRENT_SENSOR_DRIFT: {"rate_a_per_s": 0.01},
    FaultKind.TEMPERATURE_SENSOR_LOST: {},
    FaultKind.INTERNAL_SHORT: {"resistance_ohm": 1.0},
    FaultKind.COOLING_FAILURE: {"remaining_fraction": 0.05},
    FaultKind.WELDED_CONTACTOR: {},
    FaultKind.LINK_LOST: {},
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault.

    Parameters
    ----------
    kind : FaultKind
        What breaks.
    target : int
        Index of the cell, string, temperature sensor (or 0 for the contactor and the link).
    at_time_s : float
        Onset [s, Unix UTC]; the fault is active from this time on until cleared.
    params : Mapping[str, float]
        Kind-specific parameters, defaults filled in (see the module table).
    """

    kind: FaultKind
    target: int
    at_time_s: float
    params: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def active_at(self, time_s: float) -> bool:
        """True when the fault is in force at ``time_s`` [s]."""
        return time_s >= self.at_time_s


class FaultInjector:
    """Run-time fault list consulted by the pack, the sensors and the contactor.

    Parameters
    ----------
    n_cells : int
        Number of series cells (parallel groups) in the pack.
    n_strings : int
        Number of parallel strings.
    n_temperature_sensors : int
        Number of temperature sensors.
    """

    def __init__(self, n_cells: int, n_strings: int, n_temperature_sensors: int) -> None:
        for name, value in (
            ("n_cells", n_cells),
            ("n_strings", n_strings),
            ("n_temperature_sensors", n_temperature_sensors),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self._sizes = {
            "cell": int(n_cells),
            "string": int(n_strings),
            "temperature_sensor": int(n_temperature_sensors),
            "contactor": 1,
            "link": 1,
        }
        self._faults: dict[tuple[FaultKind, int], Fault] = {}
        #: Incremented on every inject/clear, so consumers can cache derived arrays.
        self.version = 0

    @classmethod
    def for_topology(cls, topology: PackTopology, n_temperature_sensors: int) -> FaultInjector:
        """Injector sized for a pack topology.

        Parameters
        ----------
        topology : PackTopology
            The pack layout.
        n_temperature_sensors : int
            Number of temperature sensors (``SensorConfig.n_temperature_sensors(topology)``).

        Returns
        -------
        FaultInjector
            An empty injector.
        """
        return cls(topology.n_cells, topology.n_strings, n_temperature_sensors)

    @staticmethod
    def _kind(kind: FaultKind | str) -> FaultKind:
        try:
            return FaultKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault kind {kind!r}; known kinds: {known}") from None

    def _check_target(self, kind: FaultKind, target: int) -> int:
        what = TARGET_OF[kind]
        size = self._sizes[what]
        if isinstance(target, bool) or int(target) != target or not 0 <= int(target) < size:
            raise ValueError(
                f"fault {kind.value}: target {target!r} out of range for a {what} "
                f"(valid: 0..{size - 1})"
            )
        return int(target)

    def inject(
        self, kind: FaultKind | str, target: int, at_time_s: float, **params: float
    ) -> Fault:
        """Schedule a fault (replaces a fault of the same kind on the same target).

        Parameters
        ----------
        kind : FaultKind or str
            What breaks.
        target : int
            Cell, string or sensor index (0 for the contactor and the link).
        at_time_s : float
            Onset [s, Unix UTC].
        **params : float
            Kind-specific parameters (see the module table).

        Returns
        -------
        Fault
            The stored fault.

        Raises
        ------
        ValueError
            Unknown kind, target out of range, unknown or invalid parameter (named).
        """
        k = self._kind(kind)
        tgt = self._check_target(k, target)
        if not math.isfinite(at_time_s):
            raise ValueError(f"fault {k.value}: at_time_s must be finite, got {at_time_s!r}")
        allowed = DEFAULT_PARAMS[k]
        for name, value in params.items():
            if name not in allowed:
                ok = ", ".join(allowed) or "none"
                raise ValueError(f"fault {k.value}: unknown parameter {name!r} (accepted: {ok})")
            if not math.isfinite(value):
                raise ValueError(f"fault {k.value}: parameter {name} must be finite, got {value}")
        merged = {**allowed, **{n: float(v) for n, v in params.items()}}
        if "resistance_ohm" in merged and merged["resistance_ohm"] <= 0:
            raise ValueError(f"fault {k.value}: resistance_ohm must be > 0")
        frac = merged.get("remaining_fraction", 0.0)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"fault {k.value}: remaining_fraction must be in [0, 1], got {frac}")
        fault = Fault(k, tgt, float(at_time_s), MappingProxyType(merged))
        self._faults[(k, tgt)] = fault
        self.version += 1
        logger.info(
            "fault injected: %s on %s %d at t=%.1f s", k.value, TARGET_OF[k], tgt, at_time_s
        )
        return fault

    def clear(self, kind: FaultKind | str, target: int) -> bool:
        """Remove a fault (takes effect at once).

        Parameters
        ----------
        kind : FaultKind or str
            Kind of the fault.
        target : int
            Its target.

        Returns
        -------
        bool
            True if such a fault was present.

        Raises
        ------
        ValueError
            Unknown kind or target out of range.
        """
        k = self._kind(kind)
        tgt = self._check_target(k, target)
        removed = self._faults.pop((k, tgt), None) is not None
        if removed:
            self.version += 1
            logger.info("fault cleared: %s on %s %d", k.value, TARGET_OF[k], tgt)
        return removed

    @property
    def faults(self) -> list[Fault]:
        """Every injected fault, active or still scheduled, in injection order."""
        return list(self._faults.values())

    def active(self, time_s: float, kind: FaultKind | None = None) -> list[Fault]:
        """Faults in force at ``time_s``, optionally of one kind.

        Parameters
        ----------
        time_s : float
            Time [s, Unix UTC].
        kind : FaultKind, optional
            Only this kind.

        Returns
        -------
        list of Fault
            The active faults.
        """
        return [
            f
            for f in self._faults.values()
            if f.active_at(time_s) and (kind is None or f.kind is kind)
        ]

    def is_active(self, kind: FaultKind | str, target: int, time_s: float) -> bool:
        """True when the fault ``kind`` on ``target`` is in force at ``time_s``.

        Parameters
        ----------
        kind : FaultKind or str
            Kind of the fault.
        target : int
            Its target.
        time_s : float
            Time [s, Unix UTC].

        Returns
        -------
        bool
            Whether it is active.
        """
        f = self._faults.get((self._kind(kind), int(target)))
        return f is not None and f.active_at(time_s)

    def link_lost(self, time_s: float) -> bool:
        """True when the EMS link is down at ``time_s`` (the loop reads this flag)."""
        return self.is_active(FaultKind.LINK_LOST, 0, time_s)

    def __len__(self) -> int:
        return len(self._faults)
