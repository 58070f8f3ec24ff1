"""Real-time load management: the battery setpoint every dispatch, decided at the meter.

Both EMS strategies end their fast path here. A strategy states its :class:`Wish` (the battery
power it would like: the plan's, or "balance the site"; the export it tolerates before it
stores PV surplus; its own import limit, e.g. the plan's peak under a demand charge), and
:class:`RealtimeLayer` turns it into the setpoint with a small table of rules, evaluated in
this order (:data:`RULES`); each rule sees the value left by the ones before it:

========== =========================================================================
rule       what it does
========== =========================================================================
wish       the strategy's battery power
event      a grid event that asks for a battery power replaces the wish (and the wish's
           export tolerance and import limit)
soak_pv    export no more than the wish tolerates: store the PV surplus instead
import_cap import at most min(connection, ``peak_import_w``, the wish's limit, event caps):
           discharge more
export_cap export at most min(connection, event caps): discharge less, or charge
zero_band  setpoints below ``stop_power_w`` are 0; from 0 (or to the other sign) the
           setpoint must reach ``start_power_w`` (hysteresis, no chattering around 0)
ramp       the setpoint moves from the battery's present power by at most
           ``ramp_w_per_s`` per second, except the move the two caps need (a cap at the
           meter is a hard limit, the ramp a comfort)
bms        the Telemetry's charge and discharge power limits and the AC ratings; no
           discharge at or below the reserve or ``soc_min``, no charge at or above
           ``soc_max`` (last: the BMS limits always win)
========== =========================================================================

"Net load" below is what the meter sees without the battery: ``grid + battery`` (load minus
PV). Grid events come from :class:`openbess.io.hub.GridEvent`; only events active now matter
here (the MPC plans around the future ones). Several active events combine: the lowest caps
apply, and the battery power of the event that started last.

Everything is measured, nothing is predicted: a forecast error, a clamp by the gate or a load
step is absorbed at the next dispatch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from openbess.contract import Telemetry
from openbess.plant import SiteMeasurements

if TYPE_CHECKING:
    from openbess.config import SiteConfig

log = logging.getLogger(__name__)


class EventLike(Protocol):
    """What the EMS reads of a grid event (:class:`openbess.io.hub.GridEvent` fits)."""

    @property
    def event_id(self) -> str:
        """Identifier."""

    @property
    def start_s(self) -> float:
        """Start of the window [s, Unix UTC]."""

    @property
    def end_s(self) -> float:
        """End of the window [s, Unix UTC]."""

    @property
    def max_import_w(self) -> float | None:
        """Cap on the import at the meter [W]."""

    @property
    def max_export_w(self) -> float | None:
        """Cap on the export at the meter [W]."""

    @property
    def battery_power_w(self) -> float | None:
        """Battery AC power to hold [W], positive = discharge."""


#: ``now_s -> events not yet over`` (e.g. :meth:`openbess.io.hub.Hub.grid_events`).
EventSource = Callable[[float], Sequence[Any]]


class RealtimeConfig(BaseModel):
    """Settings of the real-time layer (every field has a default).

    Parameters
    ----------
    ramp_w_per_s : float
        Largest change of the battery setpoint per second [W/s] (``inf``: no ramp), except
        where the import or export cap needs a larger move.
    deadband_w : float
        Grid power treated as zero when balancing the site [W]: inside it the battery keeps
        its present power.
    stop_power_w : float
        A running battery stops below this setpoint [W].
    start_power_w : float
        An idle battery (or one about to change sign) starts only at or above this [W],
        ``>= stop_power_w``.
    peak_import_w : float or None
        Site peak limit at the meter [W] below the connection's ``max_import_w`` (peak
        shaving), held by discharging; None for the connection limit only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ramp_w_per_s: float = Field(1000.0, gt=0)
    deadband_w: float = Field(10.0, ge=0)
    stop_power_w: float = Field(30.0, ge=0)
    start_power_w: float = Field(60.0, ge=0)
    peak_import_w: float | None = Field(None, ge=0)

    def model_post_init(self, context: Any, /) -> None:
        """Check that the start threshold is not below the stop threshold."""
        if self.start_power_w < self.stop_power_w:
            raise ValueError(
                f"start_power_w ({self.start_power_w}) must be >= stop_power_w "
                f"({self.stop_power_w})"
            )


def realtime_config_for(config: SiteConfig) -> RealtimeConfig:
    """The site's real-time settings (``[ems.realtime]``; defaults if the site has none).

    Parameters
    ----------
    config : SiteConfig
        Site configuration.

    Returns
    -------
    RealtimeConfig
        The settings.
    """
    found = getattr(config.ems, "realtime", None)
    return found if isinstance(found, RealtimeConfig) else RealtimeConfig()


@dataclass(frozen=True, slots=True)
class Wish:
    """What a strategy would like this dispatch.

    Parameters
    ----------
    power_w : float
        Battery AC power [W], positive = discharge.
    max_export_w : float
        Export tolerated before the PV surplus is stored [W] (``inf``: never soak).
    max_import_w : float
        The strategy's own import limit [W] (``inf``: none), e.g. the plan's peak.
    """

    power_w: float
    max_export_w: float = math.inf
    max_import_w: float = math.inf


@dataclass(frozen=True, slots=True)
class ActiveEvents:
    """The grid events in force now, combined.

    Parameters
    ----------
    max_import_w, max_export_w : float
        Lowest caps at the meter [W] (``inf``: none).
    battery_power_w : float or None
        Battery power to hold [W] (of the event that started last), None for none.
    ids : tuple of str
        Identifiers of the active events.
    """

    max_import_w: float = math.inf
    max_export_w: float = math.inf
    battery_power_w: float | None = None
    ids: tuple[str, ...] = ()


NO_EVENTS = ActiveEvents()


def active_events(events: Sequence[EventLike], now_s: float) -> ActiveEvents:
    """Combine the events active at ``now_s``.

    Parameters
    ----------
    events : sequence of GridEvent
        Events (any order; those not active are ignored).
    now_s : float
        Time [s, Unix UTC].

    Returns
    -------
    ActiveEvents
        Lowest caps, the battery power of the latest-started event, the ids.
    """
    imp = exp = math.inf
    hold: float | None = None
    hold_start = -math.inf
    ids: list[str] = []
    for e in events:
        if not (e.start_s <= now_s < e.end_s):
            continue
        ids.append(e.event_id)
        if e.max_import_w is not None:
            imp = min(imp, float(e.max_import_w))
        if e.max_export_w is not None:
            exp = min(exp, float(e.max_export_w))
        if e.battery_power_w is not None and e.start_s >= hold_start:
            hold, hold_start = float(e.battery_power_w), e.start_s
    if not ids:
        return NO_EVENTS
    return ActiveEvents(imp, exp, hold, tuple(ids))


def read_events(source: EventSource | None, now_s: float) -> Sequence[EventLike]:
    """Events from ``source`` (an empty tuple when there is none or it fails).

    A failing source is logged and ignored: the EMS keeps dispatching without events.

    Parameters
    ----------
    source : callable or None
        ``now_s -> events``.
    now_s : float
        Time [s, Unix UTC].

    Returns
    -------
    sequence of GridEvent
        The events.
    """
    if source is None:
        return ()
    try:
        return tuple(source(now_s))
    except Exception:
        log.exception("grid events could not be read at t=%.0f; ignoring them", now_s)
        return ()


@dataclass(frozen=True, slots=True)
class RealtimeDecision:
    """The setpoint of one dispatch and why.

    Parameters
    ----------
    power_w : float
        Battery AC setpoint [W], positive = discharge.
    rule : str
        Last rule that changed the value (``wish`` if none did; a cap that needed a larger
        move than the ramp allows counts as that cap).
    import_cap_w, export_cap_w : float
        Caps applied at the meter [W].
    events : tuple of str
        Active grid events.
    """

    power_w: float
    rule: str
    import_cap_w: float
    export_cap_w: float
    events: tuple[str, ...] = ()


@dataclass
class _Cycle:
    """What the rules of one dispatch see (and the value they pass along)."""

    wish: Wish
    events: ActiveEvents
    net_w: float
    origin_w: float
    last_w: float
    dt_s: float
    soc: float
    max_charge_w: float
    max_discharge_w: float
    discharge_floor_soc: float
    soc_max: float
    import_cap_w: float
    export_cap_w: float
    settings: RealtimeConfig
    target_w: float = 0.0
    yielded_to: str = ""

    def cap_band(self) -> tuple[float, float]:
        """Battery powers that keep the meter within both caps [W]."""
        return self.net_w - self.import_cap_w, self.net_w + self.export_cap_w


def _rule_wish(c: _Cycle) -> float:
    return c.wish.power_w


def _rule_event(c: _Cycle) -> float:
    if c.events.battery_power_w is not None:
        return c.events.battery_power_w
    return c.target_w


def _rule_soak_pv(c: _Cycle) -> float:
    if c.events.battery_power_w is not None:
        return c.target_w
    export = c.target_w - c.net_w
    if export > c.wish.max_export_w + c.settings.deadband_w:
        return c.net_w + c.wish.max_export_w
    return c.target_w


def _rule_import_cap(c: _Cycle) -> float:
    lo, _ = c.cap_band()
    return max(c.target_w, lo)


def _rule_export_cap(c: _Cycle) -> float:
    _, hi = c.cap_band()
    return min(c.target_w, hi)


def _rule_zero_band(c: _Cycle) -> float:
    t = c.target_w
    if c.events.battery_power_w is not None:
        return t  # the event asks for exactly this power
    running = abs(c.last_w) >= c.settings.stop_power_w and c.last_w * t > 0.0
    threshold = c.settings.stop_power_w if running else c.settings.start_power_w
    lo, hi = c.cap_band()
    if abs(t) < threshold and lo <= 0.0 <= hi:
        return 0.0
    return t


def _rule_ramp(c: _Cycle) -> float:
    step = c.settings.ramp_w_per_s * c.dt_s
    lo, hi = c.cap_band()
    r_lo, r_hi = c.origin_w - step, c.origin_w + step
    if r_hi < lo:  # the import cap needs a larger move than the ramp allows
        c.yielded_to = "import_cap"
        return lo
    if r_lo > hi:  # the export cap does
        c.yielded_to = "export_cap"
        return hi
    return min(max(c.target_w, max(r_lo, lo)), min(r_hi, hi))


def _rule_bms(c: _Cycle) -> float:
    t = min(max(c.target_w, -c.max_charge_w), c.max_discharge_w)
    if t > 0.0 and c.soc <= c.discharge_floor_soc:
        return 0.0
    if t < 0.0 and c.soc >= c.soc_max:
        return 0.0
    return t


#: The rules, in the order they are applied (see the module docstring).
RULES: tuple[tuple[str, Callable[[_Cycle], float]], ...] = (
    ("wish", _rule_wish),
    ("event", _rule_event),
    ("soak_pv", _rule_soak_pv),
    ("import_cap", _rule_import_cap),
    ("export_cap", _rule_export_cap),
    ("zero_band", _rule_zero_band),
    ("ramp", _rule_ramp),
    ("bms", _rule_bms),
)


def balance_w(site: SiteMeasurements, deadband_w: float) -> float:
    """Battery power that brings the grid exchange to zero [W], positive = discharge.

    Inside the dead band the battery keeps its present power (no hunting on meter noise).

    Parameters
    ----------
    site : SiteMeasurements
        Site meters now.
    deadband_w : float
        Grid power treated as zero [W].

    Returns
    -------
    float
        The power.
    """
    if abs(site.grid_power_w) < deadband_w:
        return site.battery_ac_power_w
    return site.grid_power_w + site.battery_ac_power_w


@dataclass
class RealtimeLayer:
    """The rules of the module docstring, with the little state they need.

    Parameters
    ----------
    settings : RealtimeConfig
        Ramp, dead bands, peak limit.
    max_import_w, max_export_w : float
        Grid connection limits [W].
    max_charge_power_w, max_discharge_power_w : float
        AC ratings of the battery [W].
    soc_min, soc_max : float
        Operating window [fraction].
    reserve_soc : float
        SoC kept for backup: no discharge at or below it [fraction].
    nominal_dt_s : float
        Time assumed since the previous setpoint at the first dispatch [s].
    """

    settings: RealtimeConfig = field(default_factory=RealtimeConfig)
    max_import_w: float = math.inf
    max_export_w: float = math.inf
    max_charge_power_w: float = math.inf
    max_discharge_power_w: float = math.inf
    soc_min: float = 0.0
    soc_max: float = 1.0
    reserve_soc: float = 0.0
    nominal_dt_s: float = 1.0
    last: RealtimeDecision | None = None
    counts: dict[str, int] = field(default_factory=dict)
    _last_time_s: float | None = None

    def setpoint(
        self,
        now_s: float,
        telemetry: Telemetry,
        site: SiteMeasurements,
        wish: Wish,
        events: Sequence[EventLike] = (),
    ) -> RealtimeDecision:
        """The battery setpoint of this dispatch.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].
        telemetry : Telemetry
            Latest BMS telemetry (power limits, SoC).
        site : SiteMeasurements
            Site meters now.
        wish : Wish
            What the strategy would like.
        events : sequence of GridEvent
            Grid events (those active at ``now_s`` apply).

        Returns
        -------
        RealtimeDecision
            The setpoint and the rule that decided it.
        """
        s = self.settings
        ev = active_events(events, now_s) if events else NO_EVENTS
        import_cap = min(self.max_import_w, ev.max_import_w)
        if ev.battery_power_w is None:
            import_cap = min(import_cap, wish.max_import_w)
            if s.peak_import_w is not None:
                import_cap = min(import_cap, s.peak_import_w)
        export_cap = min(self.max_export_w, ev.max_export_w)
        measured = site.battery_ac_power_w
        last_w = self.last.power_w if self.last is not None else 0.0
        origin = measured if math.isfinite(measured) else last_w
        dt = self.nominal_dt_s if self._last_time_s is None else now_s - self._last_time_s
        net = site.grid_power_w + (measured if math.isfinite(measured) else 0.0)
        if not math.isfinite(net):  # a bad meter reading: hold still, the BMS rule still runs
            net = origin
            import_cap = export_cap = math.inf
        cycle = _Cycle(
            wish=wish,
            events=ev,
            net_w=net,
            origin_w=origin,
            last_w=last_w,
            dt_s=max(dt, 0.0),
            soc=telemetry.soc,
            max_charge_w=max(min(self.max_charge_power_w, telemetry.charge_power_limit_w), 0.0),
            max_discharge_w=max(
                min(self.max_discharge_power_w, telemetry.discharge_power_limit_w), 0.0
            ),
            discharge_floor_soc=max(self.reserve_soc, self.soc_min),
            soc_max=self.soc_max,
            import_cap_w=max(import_cap, 0.0),
            export_cap_w=max(export_cap, 0.0),
            settings=s,
        )
        rule = "wish"
        for name, fn in RULES:
            value = fn(cycle)
            if not math.isfinite(value):
                value = 0.0
            if value != cycle.target_w and name != "wish":
                rule = cycle.yielded_to or name  # a cap that overrode the ramp decided
            cycle.target_w = value
            cycle.yielded_to = ""
        decision = RealtimeDecision(cycle.target_w, rule, import_cap, export_cap, ev.ids)
        self.counts[rule] = self.counts.get(rule, 0) + 1
        self.last = decision
        self._last_time_s = now_s
        return decision
