"""Passive (bleed resistor) cell balancing: charge-driven, with a voltage-driven alternative.

A passive balancer can only take charge out of a cell, through a resistor switched across it
(about 0.1 A for 33 ohm on a 3.3 V cell). It works by bleeding the cells that hold more charge
than the string's lowest cell, until they line up with it.

Strategies (:attr:`BalancingConfig.strategy`):

``"soc"`` (default): the charge imbalance from the estimated per-cell SoC ``z`` and capacity
    ``C``. With ``alignment="soc"`` (default) a cell's excess is the charge it must lose to come
    down to the SoC of its string's lowest cell, ``excess_k = (z_k - min_j z_j) C_k``. With
    ``alignment="top"`` the cells are lined up at the top of charge instead (each becomes full
    when the string's limiting cell does)::

        q_k = z_k C_k,   h_k = C_k - q_k,   excess_k = (min_j C_j - min_j q_j) - h_k

    Both are ``(z_k - min_j z_j) C`` for equal capacities. ``"top"`` is the right target when
    the capacities differ (it does not move when the series current flows, and bleeding every
    cell to ``excess_k <= 0`` gives the string its largest possible usable charge,
    ``min_j C_j``; see ``docs/balancing.md``), but it needs capacity estimates better than the
    threshold: an error of 2 % in one cell's capacity shifts its target by about 2 % of SoC at
    the bottom of charge. A cell starts bleeding when ``excess_k`` exceeds ``soc_threshold *
    C_k`` and stops below ``(soc_threshold - soc_hysteresis) * C_k``.

    The SoC estimates are read only after ``settle_s`` of rest, when the estimator has been
    able to correct them from the open-circuit voltage; while charging (and just after) the
    excess of each cell is carried from that reading minus the charge bled since (counted
    here). A coulomb count drifts during a charge by the error of each cell's capacity
    estimate, and chasing that drift bleeds the wrong cells.
``"voltage"``: the simple alternative: a cell whose voltage exceeds its string's lowest by
    ``voltage_threshold_v`` bleeds (stops below ``voltage_threshold_v - voltage_hysteresis_v``),
    and only at or above ``min_voltage_v``. The LFP OCV is flat: in the project's fitted A123
    curve it rises from 3.24 V at 20 % SoC to 3.35 V at 90 %, 1.6 mV per 1 % of SoC, less than
    the spread of resistance drops and of the OCV hysteresis (10 to 40 mV), but by 42 mV per
    1 % between 95 and 100 %. Only near the top of charge does a voltage difference mean a
    charge difference, hence the minimum voltage (3.40 V, about 96 % SoC): voltage balancing
    of LFP works only when the pack is charged to the top and rests there.

Gates (every strategy): nothing bleeds while the pack discharges above ``rest_current_a`` (with
the contactors closed; while charging too if ``allow_charging`` is False), when the hottest cell
is above ``max_temperature_degc`` (or unknown), or for a cell whose voltage reading is invalid.
The bleed power is limited to ``max_bleed_power_w`` per module (or per pack): each module bleeds
at most ``floor(max_bleed_power_w / (V_max^2 / R))`` cells (``V_max`` the highest cell voltage,
so the limit holds whatever the voltages), those furthest above their target first. The duty
cycle switches the resistors off for a fraction ``1 - duty_cycle`` of the time (the cell
voltages are measured unloaded then), as a sigma-delta sequence over the BMS cycles (4 cycles
on, 1 off for 0.8).

Everything is vectorised over the cells, and a standing decision costs no array work beyond
the threshold comparison: :meth:`Balancer.update` takes about 7 us for 16 cells and 12 us for
1,152 (``benchmarks/balancing.py`` measures it; ``docs/balancing.md`` has the figures).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

Strategy = Literal["soc", "voltage"]
Alignment = Literal["soc", "top"]
PowerScope = Literal["module", "pack"]

#: Why nothing bleeds now (:attr:`Balancer.inhibit`); ``""`` while cells bleed.
INHIBIT_REASONS = (
    "disabled",
    "temperature",
    "temperature_unknown",
    "discharging",
    "charging",
    "current_unknown",
    "settling",
    "power_limit",
    "balanced",
    "measuring",
)

#: Seconds between re-selections of the cells that bleed (and refreshes of their currents)
#: while the selection would otherwise stand.
RESELECT_S = 60.0


@dataclass(frozen=True)
class BalancingConfig:
    """Parameters of :class:`Balancer` (defaults for LFP; see :meth:`for_chemistry`).

    Parameters
    ----------
    strategy : {"soc", "voltage"}
        Charge imbalance from the SoC estimates, or voltage difference.
    alignment : {"soc", "top"}
        SoC strategy: equalise the SoC, or line the cells up at the top of charge (uses the
        capacity estimates; right when they are better than ``soc_threshold``).
    soc_threshold : float
        Excess charge that starts bleeding a cell, as a fraction of its capacity [fraction].
    soc_hysteresis : float
        A bleeding cell stops below ``soc_threshold - soc_hysteresis`` [fraction], in
        ``[0, soc_threshold)``.
    settle_s : float
        SoC strategy: rest needed before the SoC estimates are read [s] >= 0; in between,
        each cell's excess is carried from the last reading minus the charge bled since.
    voltage_threshold_v : float
        Voltage above the string's lowest cell that starts bleeding (voltage strategy) [V].
    voltage_hysteresis_v : float
        A bleeding cell stops below ``voltage_threshold_v - voltage_hysteresis_v`` [V], and
        below ``min_voltage_v - voltage_hysteresis_v``; in ``[0, voltage_threshold_v)``.
    min_voltage_v : float
        Voltage strategy: a cell bleeds only at or above this voltage [V] (LFP: the steep part
        of the OCV near the top of charge).
    max_temperature_degc : float
        No bleeding while the hottest cell is above this temperature [degC].
    bleed_resistance_ohm : float
        Bleed resistor [ohm], > 0 (bleed current = cell voltage / resistance).
    max_bleed_power_w : float
        Total bleed power allowed per module or per pack (``power_scope``) [W], > 0; ``inf``
        for no limit.
    power_scope : {"module", "pack"}
        What ``max_bleed_power_w`` applies to (a module's balancing board, or the whole pack).
    duty_cycle : float
        Fraction of the time the resistors of the cells selected are switched on, in (0, 1];
        off for the rest while the cell voltages are measured.
    rest_current_a : float
        Pack current below which the pack is at rest [A] >= 0; bleeding stops while it
        discharges above it (contactors closed; open contactors mean rest).
    allow_charging : bool
        Also bleed while charging (False: at rest only).
    enabled : bool
        Master switch.
    """

    strategy: Strategy = "soc"
    alignment: Alignment = "soc"
    soc_threshold: float = 0.003
    soc_hysteresis: float = 0.002
    settle_s: float = 1800.0
    voltage_threshold_v: float = 0.010
    voltage_hysteresis_v: float = 0.005
    min_voltage_v: float = 3.40
    max_temperature_degc: float = 45.0
    bleed_resistance_ohm: float = 33.0
    max_bleed_power_w: float = 4.0
    power_scope: PowerScope = "module"
    duty_cycle: float = 0.8
    rest_current_a: float = 1.0
    allow_charging: bool = True
    enabled: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (
            ("strategy", ("soc", "voltage")),
            ("alignment", ("soc", "top")),
            ("power_scope", ("module", "pack")),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"BalancingConfig.{name} must be one of {', '.join(allowed)}; got {value!r}"
                )
        for name, sign in (
            ("soc_threshold", "positive"),
            ("voltage_threshold_v", "positive"),
            ("bleed_resistance_ohm", "positive"),
            ("max_bleed_power_w", "positive"),
            ("soc_hysteresis", "non-negative"),
            ("voltage_hysteresis_v", "non-negative"),
            ("settle_s", "non-negative"),
            ("rest_current_a", "non-negative"),
        ):
            value = getattr(self, name)
            finite = name == "max_bleed_power_w" or math.isfinite(value)
            ok = value > 0 if sign == "positive" else value >= 0
            if not (finite and ok):
                raise ValueError(f"BalancingConfig.{name} must be finite and {sign}, got {value!r}")
        for name in ("min_voltage_v", "max_temperature_degc"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"BalancingConfig.{name} must be finite, got {value!r}")
        if not self.soc_hysteresis < self.soc_threshold:
            raise ValueError(
                "BalancingConfig.soc_hysteresis must be below soc_threshold (the stop level "
                f"must stay above 0), got {self.soc_hysteresis!r} >= {self.soc_threshold!r}"
            )
        if not self.voltage_hysteresis_v < self.voltage_threshold_v:
            raise ValueError(
                "BalancingConfig.voltage_hysteresis_v must be below voltage_threshold_v (the "
                f"stop level must stay above 0), got {self.voltage_hysteresis_v!r} >= "
                f"{self.voltage_threshold_v!r}"
            )
        if not 0.0 < self.duty_cycle <= 1.0:
            raise ValueError(
                f"BalancingConfig.duty_cycle must be in (0, 1], got {self.duty_cycle!r}"
            )

    @classmethod
    def for_chemistry(cls, chemistry: str, **overrides: Any) -> BalancingConfig:
        """Defaults for a chemistry, with overrides.

        Parameters
        ----------
        chemistry : str
            ``"lfp"`` or ``"nmc"`` (case-insensitive; names starting with LFP, NMC or NCA).
        **overrides
            Any :class:`BalancingConfig` field.

        Returns
        -------
        BalancingConfig
            LFP: voltage balancing from 3.40 V (the top of charge). NMC/NCA: from 3.90 V; the
            OCV is steep enough there for 10 mV to mean about 1 % of SoC.
        """
        chem = chemistry.strip().lower()
        if chem.startswith("lfp"):
            base: dict[str, Any] = {"min_voltage_v": 3.40}
        elif chem.startswith(("nmc", "nca")):
            base = {"min_voltage_v": 3.90}
        else:
            raise ValueError(f"unknown chemistry {chemistry!r}: expected 'lfp' or 'nmc'")
        base.update(overrides)
        return cls(**base)


@dataclass
class BalancingEvent:
    """A change of the balancing state, for the event log.

    Parameters
    ----------
    time_s : float
        When [s, Unix UTC].
    code : str
        ``"balancing_started"`` or ``"balancing_finished"``.
    message : str
        Details.
    """

    time_s: float
    code: str
    message: str


def select_top(
    candidate: BoolArray, priority: FloatArray, k: int, group_size: int
) -> tuple[BoolArray, int]:
    """At most ``k`` candidates per group: those of highest priority.

    Parameters
    ----------
    candidate : numpy.ndarray of bool
        Cells that want to bleed, shape ``(n,)``.
    priority : numpy.ndarray
        Distance above the target (any unit; higher goes first), shape ``(n,)``.
    k : int
        Cells allowed per group, >= 0.
    group_size : int
        Cells per group (consecutive), dividing ``n``.

    Returns
    -------
    tuple of (numpy.ndarray of bool, int)
        The selected cells (a subset of ``candidate``, shape ``(n,)``) and the largest number
        selected in one group.
    """
    n = candidate.size
    if k <= 0 or n == 0:
        return np.zeros(n, dtype=bool), 0
    per_group = np.add.reduce(candidate.reshape(-1, group_size), axis=1, dtype=np.intp)
    most = int(per_group.max())
    if most <= k:
        return candidate.copy(), most
    p2 = np.where(candidate, priority, -np.inf).reshape(-1, group_size)
    top = np.argpartition(p2, group_size - k, axis=1)[:, group_size - k :]
    out = np.zeros(p2.shape, dtype=bool)
    np.put_along_axis(out, top, True, axis=1)
    sel = out.reshape(-1)
    sel &= candidate
    return sel, k


_A = TypeVar("_A", bound=npt.NDArray[Any])


def _frozen(a: _A) -> _A:
    """The array, made read-only (it is handed out and must not change under its holders)."""
    a.flags.writeable = False
    return a


class Balancer:
    """Decide, every BMS cycle, which bleed resistors to switch on.

    Parameters
    ----------
    config : BalancingConfig
        Rules and limits.
    n_strings : int
        Strings in parallel, >= 1.
    n_series : int
        Series cells per string, >= 1.
    cells_per_module : int, optional
        Cells per module (for a per-module power limit), dividing ``n_series``; default: one
        module per string.

    Attributes
    ----------
    mask : numpy.ndarray of bool
        The last decision (cells bleeding over the next interval), shape ``(n_cells,)``,
        read-only (the same array is handed out while the decision stands).
    wanted : numpy.ndarray of bool
        Cells above their target (the hysteresis state), whether or not allowed to bleed now.
    bleed_current_a : numpy.ndarray
        Bleed current each cell draws over the next interval [A] (0 where off), read-only.
        The SoC estimator must count it: subtract ``bleed_current_a * dt / 3600`` [Ah] from
        each cell's charge at the next cycle.
    bleeding : bool
        Any cell in ``mask``.
    n_balancing : int
        Cells in ``mask`` (for the Telemetry).
    n_wanted : int
        Cells in ``wanted``.
    inhibit : str
        Why nothing bleeds (one of :data:`INHIBIT_REASONS`), ``""`` while cells bleed.
    rest_s : float
        Time the pack has been at rest [s].

    Notes
    -----
    The cells to bleed are re-selected when one of them reaches its target, when the wanted
    set changes and the power limit does not bind, when the limit no longer allows as many,
    and every :data:`RESELECT_S` seconds (which also refreshes their bleed currents from the
    measured voltages). In between, the decision stands and costs no array work; the counters
    are booked when it changes (or when they are read).
    """

    def __init__(
        self,
        config: BalancingConfig,
        n_strings: int,
        n_series: int,
        cells_per_module: int | None = None,
    ) -> None:
        for name, value in (("n_strings", n_strings), ("n_series", n_series)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        per_module = n_series if cells_per_module is None else cells_per_module
        if (
            isinstance(per_module, bool)
            or not isinstance(per_module, int)
            or per_module < 1
            or n_series % per_module
        ):
            raise ValueError(
                f"cells_per_module must be an integer >= 1 dividing n_series={n_series}, "
                f"got {cells_per_module!r}"
            )
        self.config = config
        self.n_strings = n_strings
        self.n_series = n_series
        self.n_cells = n = n_strings * n_series
        self.cells_per_module = per_module
        self._group = per_module if config.power_scope == "module" else n
        self._no_current: FloatArray = _frozen(np.zeros(n))
        self._no_mask: BoolArray = _frozen(np.zeros(n, dtype=bool))
        self.mask: BoolArray = self._no_mask
        self.wanted: BoolArray = self._no_mask
        self.bleed_current_a: FloatArray = self._no_current
        self.bleeding = False
        self.n_balancing = 0
        self.n_wanted = 0
        self.inhibit = "settling" if config.strategy == "soc" else "balanced"
        self.time_s = math.nan
        self.rest_s = 0.0
        self.events: list[BalancingEvent] = []
        # Counters in the units cheapest to accumulate (s, A s, A^2 s), and the time the
        # present decision has held without being booked yet.
        self._time_s: FloatArray = np.zeros(n)
        self._charge_as: FloatArray = np.zeros(n)
        self._i2_s: FloatArray = np.zeros(n)
        self._pending_s = 0.0
        self._credit_s = 0.0
        # The standing selection (kept through measuring cycles), its bleed currents, when it
        # was made, the most cells it puts in one group, and whether the power limit bound.
        self._sel: BoolArray | None = None
        self._sel_current: FloatArray = self._no_current
        self._sel_time_s = -math.inf
        self._sel_most = 0
        self._sel_bound = False
        self._sel_src: BoolArray | None = None
        # SoC strategy: the last reading of the estimates at a settled rest (relative excess
        # and capacities), and once past it, the excess in Ah and the bleed counter then.
        self._ref_rel: FloatArray | None = None
        self._ref_cap: FloatArray = np.ones(n)
        self._ref_open = False
        self._ref_ah: FloatArray = np.zeros(n)
        self._ref_bled_as: FloatArray = np.zeros(n)
        self._inv_r = 1.0 / config.bleed_resistance_ohm
        self._one_string = n_strings == 1
        self._soc = config.strategy == "soc"
        self._top = config.alignment == "top"
        self._limit_power = math.isfinite(config.max_bleed_power_w)
        if self._soc:
            self._start = config.soc_threshold
            self._hyst = config.soc_hysteresis
        else:
            self._start = config.voltage_threshold_v
            self._hyst = config.voltage_hysteresis_v
        self._vmin_start = config.min_voltage_v
        self._level: FloatArray = np.full(n, self._start)
        self._vmin_level: FloatArray = np.full(n, self._vmin_start)

    # ------------------------------------------------------------------ counters
    def _flush(self) -> None:
        """Book the time the present decision has held into the counters."""
        dt = self._pending_s
        if dt > 0.0:
            self._pending_s = 0.0
            np.add(self._time_s, dt, out=self._time_s, where=self.mask)
            i = self.bleed_current_a
            i_dt = i * dt
            self._charge_as += i_dt
            i_dt *= i
            self._i2_s += i_dt

    @property
    def balancing_time_s(self) -> FloatArray:
        """Time each cell's resistor was on [s]."""
        self._flush()
        return self._time_s.copy()

    @property
    def charge_bled_ah(self) -> FloatArray:
        """Charge bled from each cell [Ah]."""
        self._flush()
        out: FloatArray = self._charge_as / 3600.0
        return out

    @property
    def energy_bled_wh(self) -> FloatArray:
        """Energy dissipated in each cell's resistor [Wh] (``R`` times the integral of i^2)."""
        self._flush()
        out: FloatArray = self._i2_s * (self.config.bleed_resistance_ohm / 3600.0)
        return out

    @property
    def total_energy_bled_wh(self) -> float:
        """Energy dissipated in all resistors [Wh]."""
        self._flush()
        return float(self._i2_s.sum()) * self.config.bleed_resistance_ohm / 3600.0

    def pop_events(self) -> list[BalancingEvent]:
        """Return and clear the events gathered since the last call."""
        ev, self.events = self.events, []
        return ev

    # ------------------------------------------------------------------ decision
    def update(
        self,
        time_s: float,
        dt_s: float,
        cell_soc: FloatArray,
        cell_capacity_ah: FloatArray,
        cell_voltage_v: FloatArray,
        voltage_valid: BoolArray,
        pack_current_a: float,
        temperature_max_degc: float,
        contactor_closed: bool,
    ) -> BoolArray:
        """Book the last interval's bleeding and decide the next one.

        Parameters
        ----------
        time_s : float
            Cycle time [s, Unix UTC].
        dt_s : float
            Time since the previous call [s] (the previous mask was applied over it).
        cell_soc : numpy.ndarray
            Estimated SoC of each cell [fraction], shape ``(n_cells,)``; NaN (not estimated
            yet) stops the SoC strategy in that string.
        cell_capacity_ah : numpy.ndarray
            Estimated capacity of each cell [Ah], shape ``(n_cells,)``.
        cell_voltage_v : numpy.ndarray
            Measured cell voltages [V], shape ``(n_cells,)``.
        voltage_valid : numpy.ndarray of bool
            Validity of each voltage; a cell with an invalid reading never bleeds.
        pack_current_a : float
            Pack current [A], positive = discharge.
        temperature_max_degc : float
            Hottest valid cell temperature [degC] (NaN: unknown, no bleeding).
        contactor_closed : bool
            Main contactors closed (open: the pack is at rest whatever the current reads).

        Returns
        -------
        numpy.ndarray of bool
            Cells whose resistor is on over the next interval, shape ``(n_cells,)``, read-only
            (also :attr:`mask`).
        """
        cfg = self.config
        self.time_s = time_s
        dt = dt_s if 0.0 < dt_s < math.inf else 0.0
        if self.bleeding:
            self._pending_s += dt
        i_pack = pack_current_a
        at_rest = not contactor_closed or abs(i_pack) <= cfg.rest_current_a
        self.rest_s = self.rest_s + dt if at_rest else 0.0
        settled = at_rest and self.rest_s >= cfg.settle_s
        if self._ref_open and not settled:
            self._close_reference(dt)

        if not cfg.enabled:
            return self._off("disabled")
        t_max = temperature_max_degc
        if not t_max <= cfg.max_temperature_degc:
            return self._off("temperature" if t_max == t_max else "temperature_unknown")
        if contactor_closed and not at_rest:
            if not i_pack <= cfg.rest_current_a:
                return self._off("discharging" if i_pack == i_pack else "current_unknown")
            if not cfg.allow_charging:
                return self._off("charging")

        v = cell_voltage_v
        n_bad = voltage_valid.size - int(np.count_nonzero(voltage_valid))
        if self._soc:
            cap = cell_capacity_ah
            if settled:
                rel = self._relative_excess(cell_soc, cap)
                self._ref_rel = rel
                self._ref_cap = cap  # copied when the reading is closed
                self._ref_open = True
            elif self._ref_rel is None:
                return self._off("settling")
            else:
                self._flush()
                cap = self._ref_cap
                rel = self._charge_as - self._ref_bled_as
                rel *= -1.0 / 3600.0
                rel += self._ref_ah
                rel /= cap
            # NaN SoC or capacity in a string makes its excess NaN: no bleeding there.
            want: BoolArray = rel > self._level
            if n_bad:
                want &= voltage_valid
            excess = rel
        else:
            want, excess = self._want_voltage(v, voltage_valid, n_bad)
        want = self._set_wanted(want)
        if self.n_wanted == 0:
            return self._off("balanced")

        # Cells allowed per group by the power limit (each at the highest cell voltage).
        k = self.n_cells
        if self._limit_power:
            v_top = float(np.fmax.reduce(v))
            k = min(k, int(cfg.max_bleed_power_w / (v_top * v_top * self._inv_r) * (1 + 1e-12)))
            if k <= 0:
                return self._off("power_limit")
        sel: BoolArray | None = self._sel
        if (
            sel is None
            or not time_s - self._sel_time_s < RESELECT_S
            or k < self._sel_most
            or self._needs_reselect(sel, want)
        ):
            priority = excess
            if self._hyst > 0.0 and sel is not None:
                # Cells already bleeding keep their place against others less than the
                # hysteresis further from their target: the selection does not flip-flop.
                priority = excess + np.where(sel, self._hyst, 0.0)
            if self._soc:  # charge [Ah] first: the time each cell still needs to bleed
                priority = priority * cap
            chosen, most = select_top(want, priority, k, self._group)
            sel = self._sel = _frozen(chosen)
            self._sel_src = want
            self._sel_most = most
            self._sel_bound = most >= k and k < self._group
            self._sel_time_s = time_s
            self._sel_current = _frozen(np.where(sel, v * self._inv_r, 0.0))

        # Duty cycle: a sigma-delta sequence of on and off (measuring) cycles.
        credit = self._credit_s + cfg.duty_cycle * dt
        if not (dt > 0.0 and credit >= dt * (1.0 - 1e-9)):
            self._credit_s = credit
            return self._off("measuring", keep_selection=True)
        self._credit_s = credit - dt
        if sel is not self.mask:
            self._flush()
            self.mask = sel
            self.bleed_current_a = self._sel_current
            self.n_balancing = int(np.count_nonzero(sel))
        elif self.bleed_current_a is not self._sel_current:  # refreshed currents
            self._flush()
            self.bleed_current_a = self._sel_current
        self.bleeding = self.n_balancing > 0
        self.inhibit = ""
        return sel

    def _close_reference(self, dt: float) -> None:
        """Leaving a settled rest: turn the last reading into a charge to bleed [Ah]."""
        self._ref_open = False
        self._flush()
        ref = self._ref_rel
        if ref is None:  # pragma: no cover - opened only with a reading
            return
        self._ref_cap = self._ref_cap.copy()
        # The interval just ended bled at the currents decided at that reading.
        self._ref_ah = ref * self._ref_cap - self.bleed_current_a * (dt / 3600.0)
        self._ref_bled_as = self._charge_as.copy()

    def _needs_reselect(self, sel: BoolArray, want: BoolArray) -> bool:
        """A selected cell is no longer wanted, or wanted cells wait while there is room."""
        if want is self._sel_src:  # the wanted set has not changed since it was checked
            return False
        if self._sel_bound:
            changed = int(np.count_nonzero(sel > want)) > 0
        else:
            changed = int(np.count_nonzero(sel != want)) > 0
        if not changed:
            self._sel_src = want
        return changed

    def _off(self, reason: str, keep_selection: bool = False) -> BoolArray:
        if not keep_selection:
            self._credit_s = 0.0
            self._sel = None
        self.inhibit = reason
        if self.mask is not self._no_mask:
            self._flush()
            self.mask = self._no_mask
            self.bleed_current_a = self._no_current
            self.n_balancing = 0
            self.bleeding = False
        return self.mask

    def _set_wanted(self, want: BoolArray) -> BoolArray:
        """Take the new wanted set; return it (the previous array object if it is unchanged,
        so that what depends on it is not recomputed)."""
        old = self.wanted
        if not int(np.count_nonzero(want != old)):
            return old
        n_before = self.n_wanted
        self.wanted = want
        # Thresholds: the start level, lowered by the hysteresis for the cells wanted.
        self._level = np.where(want, self._start - self._hyst, self._start)
        self._vmin_level = np.where(want, self._vmin_start - self._hyst, self._vmin_start)
        self.n_wanted = n = int(np.count_nonzero(want))
        if n and not n_before:
            self.events.append(
                BalancingEvent(self.time_s, "balancing_started", f"{n} cells above target")
            )
            log.debug("balancing started: %d cells above target", n)
        elif n_before and not n:
            self.events.append(
                BalancingEvent(self.time_s, "balancing_finished", "all cells within target")
            )
            log.debug("balancing finished")
        return want

    def _relative_excess(self, z: FloatArray, cap: FloatArray) -> FloatArray:
        """Each cell's excess charge as a fraction of its capacity (NaN where unknown)."""
        rel: FloatArray
        if self._one_string:
            if self._top:
                # excess / C_k = z_k - 1 + (min C - min q) / C_k
                h_target = float(np.minimum.reduce(cap)) - float(np.minimum.reduce(z * cap))
                rel = h_target / cap
                rel += z
                rel -= 1.0
            else:
                rel = z - float(np.minimum.reduce(z))
            return rel
        shape = (self.n_strings, self.n_series)
        z2 = z.reshape(shape)
        if self._top:
            c2 = cap.reshape(shape)
            h2 = np.minimum.reduce(c2, axis=1, keepdims=True)
            h2 -= np.minimum.reduce(z2 * c2, axis=1, keepdims=True)
            r2 = h2 / c2
            r2 += z2
            r2 -= 1.0
        else:
            r2 = z2 - np.minimum.reduce(z2, axis=1, keepdims=True)
        rel = r2.reshape(-1)
        return rel

    def _want_voltage(
        self, v: FloatArray, valid: BoolArray, n_bad: int
    ) -> tuple[BoolArray, FloatArray]:
        """Cells above their string's lowest valid voltage by the threshold, and the excess."""
        vv = np.where(valid, v, np.inf) if n_bad else v
        if self._one_string:
            excess = v - float(np.minimum.reduce(vv))
        else:
            v2 = vv.reshape(self.n_strings, self.n_series)
            floor = np.minimum.reduce(v2, axis=1, keepdims=True)
            excess = (v.reshape(v2.shape) - floor).reshape(-1)
        want: BoolArray = excess > self._level
        want &= v >= self._vmin_level
        if n_bad:
            want &= valid
        return want, excess


__all__ = [
    "INHIBIT_REASONS",
    "RESELECT_S",
    "Balancer",
    "BalancingConfig",
    "BalancingEvent",
    "select_top",
]
