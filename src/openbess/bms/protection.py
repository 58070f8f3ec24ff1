"""Protection: one declarative fault table, evaluated once per BMS cycle.

Each row of the table (:class:`FaultRule`) watches one quantity against up to three tiers, as in
foxBMS 2: MOL (maximum operating limit: warning), RSL (recommended safety limit: the affected
direction is blocked, charge and/or discharge) and MSL (maximum safety limit: the contactors
open; the fault latches until :meth:`Protection.reset` confirms that the cause is gone).

Timing works with any cycle length ``dt``:

- a tier is raised when its condition has held on consecutive evaluations spanning at least its
  ``set_delay_s`` (measured from the first evaluation that saw it; a single sample never raises
  a tier with a delay > 0, whatever ``dt``);
- a tier is lowered when the value has been back inside ``threshold -/+ hysteresis`` for
  ``clear_delay_s``; the row then drops to the highest tier still warranted.

Invalid readings (NaN, inf, a current marked invalid) never clear a fault and never stop a
pending one: the row keeps its last valid exceedance (its timers keep running, clearing stops),
and a separate row per sensor kind (``cell_voltage_invalid``, ``temperature_invalid``,
``current_invalid``) raises its own alarm: one alarm per cause. Readings the monitor
(:mod:`openbess.bms.monitor`) finds implausible although the hardware flags them valid have
their own rows (``cell_voltage_stuck``, ``current_sensor_implausible``), so one broken sensor
gives one alarm that names the cause. A row may instead substitute a
value for an invalid reading (``nan_as``): the EMS link age treats "unknown" as "lost".

Reactions are fixed by tier: MOL warns, RSL blocks ``rule.blocks``, MSL opens the contactors
(only while current flows in ``rule.msl_only_while`` when that is set: a cold battery at rest is
not a trip, charging it is).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from itertools import pairwise

from openbess.bms.defaults import ProtectionParams
from openbess.errors import ConfigError

logger = logging.getLogger(__name__)

#: Tolerance of delay comparisons [s]: float sums of cycle times are not exact.
TIME_EPS_S = 1e-6

__all__ = [
    "Blocks",
    "Direction",
    "EventKind",
    "FaultRule",
    "Flow",
    "Protection",
    "ProtectionEvent",
    "ProtectionInputs",
    "ProtectionResult",
    "Quantity",
    "Tier",
    "fault_table",
    "quantity_value",
    "quantity_values",
]


class Tier(IntEnum):
    """Severity tier of an active fault (foxBMS limit levels)."""

    MOL = 1
    RSL = 2
    MSL = 3

    @property
    def severity(self) -> str:
        """``warning`` (MOL), ``derate`` (RSL) or ``trip`` (MSL)."""
        return {1: "warning", 2: "derate", 3: "trip"}[int(self)]

    @property
    def label(self) -> str:
        """Lower-case tier name: ``mol``, ``rsl``, ``msl``."""
        return self.name.lower()


class Direction(StrEnum):
    """Which side of the threshold is the fault."""

    ABOVE = "above"
    BELOW = "below"


class Blocks(StrEnum):
    """What an RSL fault blocks."""

    NONE = "none"
    CHARGE = "charge"
    DISCHARGE = "discharge"
    BOTH = "both"


class Flow(StrEnum):
    """When an MSL condition counts: always, or only while current flows that way."""

    ANY = "any"
    CHARGING = "charging"
    DISCHARGING = "discharging"


class Quantity(StrEnum):
    """Quantities the table can watch (see :func:`quantity_value`)."""

    CELL_VOLTAGE_MAX = "cell_voltage_max_v"
    CELL_VOLTAGE_MIN = "cell_voltage_min_v"
    TEMPERATURE_MAX = "temperature_max_degc"
    TEMPERATURE_MIN = "temperature_min_degc"
    CHARGE_CURRENT = "charge_current_a"
    DISCHARGE_CURRENT = "discharge_current_a"
    PACK_VOLTAGE_MISMATCH = "pack_voltage_mismatch_v"
    INVALID_VOLTAGE = "invalid_voltage"
    INVALID_TEMPERATURE = "invalid_temperature"
    INVALID_CURRENT = "invalid_current"
    STUCK_VOLTAGE = "stuck_voltage"
    IMPLAUSIBLE_CURRENT = "implausible_current"
    EMS_LINK_AGE = "ems_link_age_s"

    @property
    def unit(self) -> str:
        """Unit of the quantity, for messages."""
        return _UNITS.get(self, "")


_UNITS = {
    Quantity.CELL_VOLTAGE_MAX: "V",
    Quantity.CELL_VOLTAGE_MIN: "V",
    Quantity.TEMPERATURE_MAX: "degC",
    Quantity.TEMPERATURE_MIN: "degC",
    Quantity.CHARGE_CURRENT: "A",
    Quantity.DISCHARGE_CURRENT: "A",
    Quantity.PACK_VOLTAGE_MISMATCH: "V",
    Quantity.EMS_LINK_AGE: "s",
}


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One row of the fault table.

    Parameters
    ----------
    code : str
        Alarm code, e.g. ``cell_overvoltage`` (unique in a table).
    quantity : Quantity
        What is watched.
    direction : Direction
        ``above``: fault when value > threshold; ``below``: value < threshold.
    thresholds : tuple of (float or None)
        ``(MOL, RSL, MSL)`` in the unit of the quantity; ``None`` = tier unused. Ordered from
        mild to severe (rising for ``above``, falling for ``below``).
    set_delay_s : tuple of float
        Per tier, how long the condition must hold before the tier is raised [s].
    hysteresis : float
        Return distance before a tier may clear, in the unit of the quantity.
    clear_delay_s : float
        How long the value must stay back inside before the tier is lowered [s].
    blocks : Blocks
        Direction blocked at RSL and above.
    latching : bool
        MSL latches until :meth:`Protection.reset` (default True).
    msl_only_while : Flow
        MSL counts only while the pack charges / discharges (or the current is unknown).
    nan_as : float or None
        Value used when the reading is invalid; ``None`` keeps the row's last valid state.
    description : str
        What the row protects against, for the logbook.
    """

    code: str
    quantity: Quantity
    direction: Direction
    thresholds: tuple[float | None, float | None, float | None]
    set_delay_s: tuple[float, float, float]
    hysteresis: float
    clear_delay_s: float
    blocks: Blocks
    latching: bool = True
    msl_only_while: Flow = Flow.ANY
    nan_as: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"fault rule {self.code!r}"
        if not self.code.isidentifier():
            raise ConfigError(f"{where}: code must be an identifier like 'cell_overvoltage'")
        if len(self.thresholds) != 3 or len(self.set_delay_s) != 3:
            raise ConfigError(f"{where}: thresholds and set_delay_s need 3 entries (MOL, RSL, MSL)")
        used = [t for t in self.thresholds if t is not None]
        if not used:
            raise ConfigError(f"{where}: at least one tier threshold is needed")
        if not all(math.isfinite(t) for t in used):
            raise ConfigError(f"{where}: thresholds must be finite, got {self.thresholds}")
        sign = 1.0 if self.direction is Direction.ABOVE else -1.0
        if any(sign * (b - a) < 0 for a, b in pairwise(used)):
            order = "rise" if self.direction is Direction.ABOVE else "fall"
            raise ConfigError(
                f"{where}: thresholds must {order} from MOL to MSL for direction "
                f"{self.direction.value!r}, got {self.thresholds}"
            )
        for name, value in (("hysteresis", self.hysteresis), ("clear_delay_s", self.clear_delay_s)):
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{where}: {name} must be finite and >= 0, got {value!r}")
        if not all(math.isfinite(d) and d >= 0.0 for d in self.set_delay_s):
            raise ConfigError(
                f"{where}: set_delay_s must be finite and >= 0, got {self.set_delay_s}"
            )


@dataclass(frozen=True, slots=True)
class ProtectionInputs:
    """The monitoring summary the protection evaluates each cycle.

    NaN (or inf) marks a reading as invalid. Voltages [V], temperatures [degC], currents [A].

    Parameters
    ----------
    cell_voltage_max_v, cell_voltage_min_v : float
        Highest / lowest valid cell voltage [V]; NaN if no cell voltage is valid.
    temperature_max_degc, temperature_min_degc : float
        Highest / lowest valid cell temperature [degC]; NaN if no temperature is valid.
    pack_current_a : float
        Pack current [A], positive = discharge.
    pack_voltage_v : float
        Measured pack voltage [V].
    sum_cell_voltage_v : float
        Sum of the cell voltages [V]; NaN if any cell voltage is invalid.
    ems_link_age_s : float
        Time since the last valid EMS command [s]; inf (or NaN) if none yet.
    n_invalid_voltage, n_invalid_temperature : int
        Number of invalid cell-voltage / temperature readings (flagged by the hardware, not
        finite, out of the physical range, open wire, implausible jump).
    current_valid : bool
        False when the current reading is invalid (flagged, not finite, out of range).
    n_stuck_voltage : int
        Number of cell-voltage readings frozen while their string's current changed (excluded
        from the voltage extremes, not counted in ``n_invalid_voltage``).
    current_implausible : bool
        The current reading is valid but disagrees with the other strings or reads current
        through an open contactor; ``pack_current_a`` is then NaN.
    """

    cell_voltage_max_v: float
    cell_voltage_min_v: float
    temperature_max_degc: float
    temperature_min_degc: float
    pack_current_a: float
    pack_voltage_v: float
    sum_cell_voltage_v: float
    ems_link_age_s: float
    n_invalid_voltage: int = 0
    n_invalid_temperature: int = 0
    current_valid: bool = True
    n_stuck_voltage: int = 0
    current_implausible: bool = False


class EventKind(StrEnum):
    """Logbook event kinds."""

    RAISED = "raised"
    LOWERED = "lowered"
    CLEARED = "cleared"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class ProtectionEvent:
    """A change of one alarm, for the logbook.

    Parameters
    ----------
    time_s : float
        When [s, Unix UTC].
    code : str
        Alarm code.
    kind : EventKind
        Raised (higher tier), lowered, cleared (no tier left) or reset (latch released).
    tier : Tier or None
        The tier after the change (None when cleared).
    value : float
        The watched value at that time, in the unit of the quantity (NaN if invalid).
    message : str
        Human-readable line.
    """

    time_s: float
    code: str
    kind: EventKind
    tier: Tier | None
    value: float
    message: str


@dataclass(frozen=True, slots=True)
class ProtectionResult:
    """Outcome of one evaluation.

    Parameters
    ----------
    alarms : tuple of (str, Tier)
        Active alarms in table order, one per code.
    open_contactors : bool
        An MSL fault is active (latched or not): the contactors must open now.
    allow_charge, allow_discharge : bool
        False when an RSL (or MSL) fault blocks that direction.
    events : tuple of ProtectionEvent
        Changes since the previous evaluation (including resets).
    latched : tuple of str
        Codes of latched faults (they need :meth:`Protection.reset`).
    """

    alarms: tuple[tuple[str, Tier], ...]
    open_contactors: bool
    allow_charge: bool
    allow_discharge: bool
    events: tuple[ProtectionEvent, ...]
    latched: tuple[str, ...]

    def labels(self) -> tuple[str, ...]:
        """Alarms as ``code:tier`` strings (for ``Telemetry.alarms``)."""
        return tuple(f"{code}:{tier.label}" for code, tier in self.alarms)


def fault_table(p: ProtectionParams) -> tuple[FaultRule, ...]:
    """The openbess fault table, filled with one parameter set.

    Parameters
    ----------
    p : ProtectionParams
        Thresholds, hysteresis and delays (see :func:`openbess.bms.defaults.default_params`).

    Returns
    -------
    tuple of FaultRule
        The rows, in the order alarms are reported.
    """
    v_delay = (p.cell_voltage_set_delay_s,) * 3
    t_delay = (p.temperature_set_delay_s,) * 3
    i_delay = (p.current_set_delay_s, p.current_set_delay_s, p.current_trip_delay_s)
    s_delay = (p.sensor_warn_delay_s, p.sensor_block_delay_s, p.sensor_trip_delay_s)
    v_hys, t_hys = p.cell_voltage_hysteresis_v, p.temperature_hysteresis_degc
    i_hys = p.current_hysteresis_a
    v_clr, t_clr, i_clr = (
        p.cell_voltage_clear_delay_s,
        p.temperature_clear_delay_s,
        p.current_clear_delay_s,
    )
    s_clr = p.sensor_clear_delay_s
    above, below = Direction.ABOVE, Direction.BELOW
    q = Quantity
    # fmt: off
    return (
        FaultRule("cell_overvoltage", q.CELL_VOLTAGE_MAX, above, p.cell_voltage_max_v.as_tuple(),
                  v_delay, v_hys, v_clr, Blocks.CHARGE,
                  description="highest cell voltage above its limit"),
        FaultRule("cell_undervoltage", q.CELL_VOLTAGE_MIN, below, p.cell_voltage_min_v.as_tuple(),
                  v_delay, v_hys, v_clr, Blocks.DISCHARGE,
                  description="lowest cell voltage below its limit"),
        FaultRule("charge_overtemperature", q.TEMPERATURE_MAX, above,
                  p.charge_temperature_max_degc.as_tuple(), t_delay, t_hys, t_clr, Blocks.CHARGE,
                  msl_only_while=Flow.CHARGING, description="too hot to charge"),
        FaultRule("charge_undertemperature", q.TEMPERATURE_MIN, below,
                  p.charge_temperature_min_degc.as_tuple(), t_delay, t_hys, t_clr, Blocks.CHARGE,
                  msl_only_while=Flow.CHARGING, description="too cold to charge"),
        FaultRule("discharge_overtemperature", q.TEMPERATURE_MAX, above,
                  p.discharge_temperature_max_degc.as_tuple(), t_delay, t_hys, t_clr,
                  Blocks.DISCHARGE, description="too hot to discharge (trips at rest too)"),
        FaultRule("discharge_undertemperature", q.TEMPERATURE_MIN, below,
                  p.discharge_temperature_min_degc.as_tuple(), t_delay, t_hys, t_clr,
                  Blocks.DISCHARGE, msl_only_while=Flow.DISCHARGING,
                  description="too cold to discharge"),
        FaultRule("charge_overcurrent", q.CHARGE_CURRENT, above, p.charge_current_a.as_tuple(),
                  i_delay, i_hys, i_clr, Blocks.CHARGE, description="charge current too high"),
        FaultRule("discharge_overcurrent", q.DISCHARGE_CURRENT, above,
                  p.discharge_current_a.as_tuple(), i_delay, i_hys, i_clr, Blocks.DISCHARGE,
                  description="discharge current too high"),
        FaultRule("pack_voltage_mismatch", q.PACK_VOLTAGE_MISMATCH, above,
                  (p.pack_voltage_mismatch_v, None, None),
                  (p.pack_voltage_mismatch_delay_s, 0.0, 0.0), 0.0, s_clr, Blocks.NONE,
                  description="pack voltage disagrees with the sum of the cells"),
        # Any invalid cell voltage: that cell is unprotected -> warn, stop, then open.
        FaultRule("cell_voltage_invalid", q.INVALID_VOLTAGE, above, (0.0, 0.0, 0.0), s_delay,
                  0.0, s_clr, Blocks.BOTH, description="cell voltage reading(s) invalid"),
        # A frozen reading leaves its cell as unprotected as a missing one: same reaction.
        FaultRule("cell_voltage_stuck", q.STUCK_VOLTAGE, above, (0.0, 0.0, 0.0), s_delay,
                  0.0, s_clr, Blocks.BOTH,
                  description="cell voltage reading(s) frozen while the current changed"),
        # 1 = some temperature sensors invalid (warn); 2 = none valid (no charging).
        FaultRule("temperature_invalid", q.INVALID_TEMPERATURE, above, (0.0, 1.0, None),
                  (p.sensor_warn_delay_s, p.sensor_block_delay_s, 0.0), 0.0, s_clr, Blocks.CHARGE,
                  description="temperature reading(s) invalid"),
        FaultRule("current_invalid", q.INVALID_CURRENT, above, (0.0, 0.0, 0.0), s_delay, 0.0,
                  s_clr, Blocks.BOTH, description="pack current reading invalid"),
        FaultRule("current_sensor_implausible", q.IMPLAUSIBLE_CURRENT, above, (0.0, 0.0, 0.0),
                  s_delay, 0.0, s_clr, Blocks.BOTH,
                  description="current reading disagrees with the other strings or reads "
                  "current through the open contactor"),
        # One warning; the gate's safe idle handles the stale command (not a fault storm).
        FaultRule("ems_link_lost", q.EMS_LINK_AGE, above, (p.ems_link_timeout_s, None, None),
                  (0.0, 0.0, 0.0), 0.0, 0.0, Blocks.NONE, nan_as=math.inf,
                  description="no valid EMS command for too long"),
    )
    # fmt: on


def _ok(x: float) -> bool:
    return math.isfinite(x)


def quantity_values(inputs: ProtectionInputs) -> dict[Quantity, float]:
    """Value of every watched quantity, computed once (NaN when the reading is invalid).

    Parameters
    ----------
    inputs : ProtectionInputs
        The monitoring summary.

    Returns
    -------
    dict of Quantity to float
        One entry per :class:`Quantity`; see :func:`quantity_value` for the meanings.
    """
    i = inputs
    nan = math.nan
    isfinite = math.isfinite
    v_max, v_min = i.cell_voltage_max_v, i.cell_voltage_min_v
    t_max, t_min = i.temperature_max_degc, i.temperature_min_degc
    current = i.pack_current_a
    implausible = bool(i.current_implausible)
    current_ok = bool(i.current_valid) and not implausible and isfinite(current)
    v_max_ok, v_min_ok = isfinite(v_max), isfinite(v_min)
    t_max_ok, t_min_ok = isfinite(t_max), isfinite(t_min)
    pack_v, sum_v = i.pack_voltage_v, i.sum_cell_voltage_v
    if not (t_max_ok and t_min_ok):
        invalid_t = 2.0
    else:
        invalid_t = 1.0 if i.n_invalid_temperature > 0 else 0.0
    return {
        Quantity.CELL_VOLTAGE_MAX: v_max if v_max_ok else nan,
        Quantity.CELL_VOLTAGE_MIN: v_min if v_min_ok else nan,
        Quantity.TEMPERATURE_MAX: t_max if t_max_ok else nan,
        Quantity.TEMPERATURE_MIN: t_min if t_min_ok else nan,
        Quantity.CHARGE_CURRENT: -current if current_ok else nan,
        Quantity.DISCHARGE_CURRENT: current if current_ok else nan,
        Quantity.PACK_VOLTAGE_MISMATCH: (
            abs(pack_v - sum_v) if isfinite(pack_v) and isfinite(sum_v) else nan
        ),
        Quantity.INVALID_VOLTAGE: (
            1.0 if i.n_invalid_voltage > 0 or not (v_max_ok and v_min_ok) else 0.0
        ),
        Quantity.INVALID_TEMPERATURE: invalid_t,
        # An implausible reading (NaN by design) is its own cause, not an invalid one.
        Quantity.INVALID_CURRENT: (
            0.0 if i.current_valid and (implausible or isfinite(current)) else 1.0
        ),
        Quantity.STUCK_VOLTAGE: 1.0 if i.n_stuck_voltage > 0 else 0.0,
        Quantity.IMPLAUSIBLE_CURRENT: 1.0 if implausible else 0.0,
        Quantity.EMS_LINK_AGE: i.ems_link_age_s if not math.isnan(i.ems_link_age_s) else nan,
    }


def quantity_value(quantity: Quantity, inputs: ProtectionInputs) -> float:
    """Value of one watched quantity; NaN when the reading is invalid.

    Parameters
    ----------
    quantity : Quantity
        Which quantity.
    inputs : ProtectionInputs
        The monitoring summary.

    Returns
    -------
    float
        Voltages [V], temperatures [degC], currents [A] (magnitude in the named direction, may
        be negative when flowing the other way), link age [s]; the ``invalid_*`` quantities are
        0 (all valid), 1 (some invalid) or, for temperatures, 2 (none valid);
        ``stuck_voltage`` and ``implausible_current`` are 0 (plausible) or 1.

    Raises
    ------
    ValueError
        Unknown quantity.
    """
    values = quantity_values(inputs)
    if quantity not in values:
        raise ValueError(f"unknown quantity {quantity!r}")  # pragma: no cover
    return values[quantity]


def _mildest(rule: FaultRule) -> float:
    """The first used threshold (MOL if set): every other tier lies beyond it."""
    return next(t for t in rule.thresholds if t is not None)


def _beyond(direction: Direction, value: float, threshold: float) -> bool:
    return value > threshold if direction is Direction.ABOVE else value < threshold


class _Row:
    """Mutable state of one rule."""

    __slots__ = ("clear_since", "exceeded", "latched", "since", "tier")

    def __init__(self) -> None:
        self.tier = 0
        self.latched = False
        self.exceeded = [False, False, False]
        self.since: list[float | None] = [None, None, None]
        self.clear_since: float | None = None


class Protection:
    """Evaluates a fault table once per BMS cycle and keeps the alarm states.

    Parameters
    ----------
    table : sequence of FaultRule
        The rows (see :func:`fault_table`); codes must be unique.
    rest_current_a : float
        Current magnitude below which the pack counts as neither charging nor discharging [A]
        (for rows whose MSL counts only while current flows).

    Raises
    ------
    ConfigError
        Duplicate codes or a negative rest current.
    """

    def __init__(self, table: Sequence[FaultRule], rest_current_a: float = 0.0) -> None:
        codes = [r.code for r in table]
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise ConfigError(f"fault table has duplicate codes: {', '.join(dupes)}")
        if not (math.isfinite(rest_current_a) and rest_current_a >= 0.0):
            raise ConfigError(f"rest_current_a must be finite and >= 0, got {rest_current_a!r}")
        self._table = tuple(table)
        self._rows = [_Row() for _ in self._table]
        self._index = {r.code: k for k, r in enumerate(self._table)}
        self._rest_current_a = float(rest_current_a)
        self._last_time_s: float | None = None
        self._pending: list[ProtectionEvent] = []
        # Per row: the mildest threshold and the direction, for the quiet-row check.
        self._quiet_check = tuple(
            (rule, row, _mildest(rule), rule.direction is Direction.ABOVE)
            for rule, row in zip(self._table, self._rows, strict=True)
        )
        #: The result of the last evaluation without events (reused while nothing changes).
        self._steady: ProtectionResult | None = None

    @classmethod
    def from_params(cls, params: ProtectionParams) -> Protection:
        """Build from a parameter set with the standard :func:`fault_table`."""
        return cls(fault_table(params), params.rest_current_a)

    @property
    def table(self) -> tuple[FaultRule, ...]:
        """The fault table."""
        return self._table

    @property
    def latched(self) -> tuple[str, ...]:
        """Codes of latched faults."""
        return tuple(r.code for r, s in zip(self._table, self._rows, strict=True) if s.latched)

    def tier(self, code: str) -> Tier | None:
        """Current tier of one alarm (None if inactive).

        Raises
        ------
        KeyError
            Unknown code.
        """
        t = self._rows[self._index[code]].tier
        return Tier(t) if t else None

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, time_s: float, inputs: ProtectionInputs) -> ProtectionResult:
        """Evaluate every row at ``time_s``.

        Parameters
        ----------
        time_s : float
            Evaluation time [s, Unix UTC]; never earlier than the previous call.
        inputs : ProtectionInputs
            The monitoring summary (invalid readings as NaN).

        Returns
        -------
        ProtectionResult
            Alarms, reactions and the events since the previous call.

        Raises
        ------
        ValueError
            ``time_s`` not finite or earlier than the previous evaluation.
        """
        if not math.isfinite(time_s):
            raise ValueError(f"time_s must be finite, got {time_s!r}")
        if self._last_time_s is not None and time_s < self._last_time_s:
            raise ValueError(f"time_s went backwards: {time_s!r} < {self._last_time_s!r}")
        self._last_time_s = time_s
        events = self._pending
        self._pending = []
        current_ok = (
            bool(inputs.current_valid)
            and not inputs.current_implausible
            and _ok(inputs.pack_current_a)
        )
        charging = not current_ok or inputs.pack_current_a < -self._rest_current_a
        discharging = not current_ok or inputs.pack_current_a > self._rest_current_a
        values = quantity_values(inputs)
        for rule, row, mildest, above in self._quiet_check:
            value = values[rule.quantity]
            if value != value and rule.nan_as is not None:
                value = rule.nan_as
            # A row without a tier whose (valid) value is inside its mildest threshold: no
            # tier is exceeded, none is pending, none can change. Same state as _step gives.
            if row.tier == 0 and (value <= mildest if above else value >= mildest):
                if row.exceeded[0] or row.exceeded[1] or row.exceeded[2]:
                    row.exceeded[:] = (False, False, False)
                    row.since[:] = (None, None, None)
                row.clear_since = None
                continue
            flow_ok = (
                rule.msl_only_while is Flow.ANY
                or (rule.msl_only_while is Flow.CHARGING and charging)
                or (rule.msl_only_while is Flow.DISCHARGING and discharging)
            )
            event = self._step(rule, row, time_s, value, flow_ok)
            if event is not None:
                events.append(event)
                log = logger.warning if event.kind is EventKind.RAISED else logger.info
                log("%s", event.message)
        if not events and self._steady is not None:
            return self._steady  # no tier, latch or event changed since it was built
        result = self._result(events)
        self._steady = result if not events else self._result([])
        return result

    @staticmethod
    def _value(rule: FaultRule, inputs: ProtectionInputs) -> float:
        value = quantity_value(rule.quantity, inputs)
        if math.isnan(value) and rule.nan_as is not None:
            return rule.nan_as
        return value

    def _step(
        self, rule: FaultRule, row: _Row, time_s: float, value: float, flow_ok: bool
    ) -> ProtectionEvent | None:
        valid = not math.isnan(value)
        if valid:
            for k, threshold in enumerate(rule.thresholds):
                row.exceeded[k] = (
                    threshold is not None
                    and _beyond(rule.direction, value, threshold)
                    and (k < 2 or flow_ok)
                )
        # Invalid: keep the last valid exceedance (sample and hold), so timers keep running.
        target = 0
        for k in range(3):
            if not row.exceeded[k]:
                row.since[k] = None
                continue
            if row.since[k] is None:
                row.since[k] = time_s
            since = row.since[k]
            if since is not None and time_s - since >= rule.set_delay_s[k] - TIME_EPS_S:
                target = k + 1
        if row.latched:
            return None
        held = self._held_tier(rule, value, flow_ok) if valid else row.tier
        new = row.tier
        if target > row.tier:
            new = target
            row.clear_since = None
        elif max(target, held) < row.tier:
            if row.clear_since is None:
                row.clear_since = time_s
            if time_s - row.clear_since >= rule.clear_delay_s - TIME_EPS_S:
                new = max(target, held)
                row.clear_since = None
        else:
            row.clear_since = None
        if new == row.tier:
            return None
        old, row.tier = row.tier, new
        if new == Tier.MSL and rule.latching:
            row.latched = True
        return self._event(rule, time_s, value, old, new)

    @staticmethod
    def _held_tier(rule: FaultRule, value: float, flow_ok: bool) -> int:
        """Highest tier whose clear condition (threshold -/+ hysteresis) is not yet met."""
        held = 0
        sign = 1.0 if rule.direction is Direction.ABOVE else -1.0
        for k, threshold in enumerate(rule.thresholds):
            if threshold is None or (k == 2 and not flow_ok):
                continue
            if _beyond(rule.direction, value, threshold - sign * rule.hysteresis):
                held = k + 1
        return held

    @staticmethod
    def _event(rule: FaultRule, time_s: float, value: float, old: int, new: int) -> ProtectionEvent:
        unit = rule.quantity.unit
        shown = f"{rule.quantity.value} = {value:.4g}{' ' + unit if unit else ''}"
        if new > old:
            kind = EventKind.RAISED
            threshold = rule.thresholds[new - 1]
            sign = ">" if rule.direction is Direction.ABOVE else "<"
            tier = Tier(new)
            message = (
                f"{rule.code} raised to {tier.name} ({tier.severity}): {shown} {sign} "
                f"{threshold:.4g}{' ' + unit if unit else ''} ({rule.description})"
            )
        elif new > 0:
            kind = EventKind.LOWERED
            tier = Tier(new)
            message = f"{rule.code} lowered to {tier.name} ({tier.severity}): {shown}"
        else:
            kind = EventKind.CLEARED
            message = f"{rule.code} cleared: {shown}"
        return ProtectionEvent(time_s, rule.code, kind, Tier(new) if new else None, value, message)

    def _result(self, events: list[ProtectionEvent]) -> ProtectionResult:
        alarms = tuple(
            (r.code, Tier(s.tier)) for r, s in zip(self._table, self._rows, strict=True) if s.tier
        )
        open_contactors = any(t is Tier.MSL for _, t in alarms)
        allow_charge = allow_discharge = not open_contactors
        for rule, row in zip(self._table, self._rows, strict=True):
            if row.tier >= Tier.RSL:
                if rule.blocks in (Blocks.CHARGE, Blocks.BOTH):
                    allow_charge = False
                if rule.blocks in (Blocks.DISCHARGE, Blocks.BOTH):
                    allow_discharge = False
        return ProtectionResult(
            alarms=alarms,
            open_contactors=open_contactors,
            allow_charge=allow_charge,
            allow_discharge=allow_discharge,
            events=tuple(events),
            latched=self.latched,
        )

    # ------------------------------------------------------------------ reset
    def reset(self, code: str, time_s: float, inputs: ProtectionInputs) -> tuple[bool, str]:
        """Release a latched fault, only if its cause is gone.

        The cause is gone when the reading is valid and back inside the MSL threshold by the
        hysteresis (whatever the current direction). The row then restarts from the tier the
        present value warrants (MOL/RSL at once, MSL only after its delay again). The reset is
        reported in the events of the next :meth:`evaluate`.

        Parameters
        ----------
        code : str
            Alarm code.
        time_s : float
            Time of the request [s, Unix UTC].
        inputs : ProtectionInputs
            Present monitoring summary.

        Returns
        -------
        ok : bool
            True if the latch was released.
        reason : str
            Why not (or what was done).
        """
        k = self._index.get(code)
        if k is None:
            return False, f"unknown fault code {code!r}; known: {', '.join(self._index)}"
        rule, row = self._table[k], self._rows[k]
        if not row.latched:
            return False, f"{code} is not latched"
        value = self._value(rule, inputs)
        if math.isnan(value):
            return (
                False,
                f"{code}: {rule.quantity.value} reading is invalid; cause not confirmed gone",
            )
        msl = rule.thresholds[2]
        if msl is None:  # pragma: no cover - only MSL latches
            return False, f"{code} has no MSL tier"
        sign = 1.0 if rule.direction is Direction.ABOVE else -1.0
        clear_at = msl - sign * rule.hysteresis
        if _beyond(rule.direction, value, clear_at):
            unit = f" {rule.quantity.unit}" if rule.quantity.unit else ""
            return False, (
                f"{code}: {rule.quantity.value} = {value:.4g}{unit} still {rule.direction.value} "
                f"{clear_at:.4g}{unit} (MSL {msl:.4g}{unit} with hysteresis {rule.hysteresis:.4g})"
            )
        row.latched = False
        self._steady = None
        held = self._held_tier(rule, value, flow_ok=False)
        row.tier = held
        row.clear_since = None
        for j, threshold in enumerate(rule.thresholds):
            row.exceeded[j] = (
                j < 2 and threshold is not None and _beyond(rule.direction, value, threshold)
            )
            row.since[j] = time_s if row.exceeded[j] else None
        unit = f" {rule.quantity.unit}" if rule.quantity.unit else ""
        message = f"{code} reset at {rule.quantity.value} = {value:.4g}{unit}"
        self._pending.append(
            ProtectionEvent(
                time_s, code, EventKind.RESET, Tier(held) if held else None, value, message
            )
        )
        logger.info("%s", message)
        return True, message
