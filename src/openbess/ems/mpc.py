"""Model-predictive control: re-plan with the optimiser, dispatch every second from the plan.

:class:`MpcStrategy` implements :class:`~openbess.ems.strategy.Strategy`:

- **Slow path** (:meth:`MpcStrategy.replan`, every ``ems.replan_s``, 15 min by default, and
  whenever the measured SoC departs from the planned one by more than
  ``replan_soc_deviation``): ask the forecast provider for load, PV and prices over the
  horizon, and solve :func:`~openbess.ems.optimizer.optimize` from the latest Telemetry (real
  SoC, SoH-adjusted capacity, present BMS power limits for the first step). The first step
  runs from now to the next step boundary, so plans stay aligned to the price grid.
- **Fast path** (:meth:`MpcStrategy.dispatch`, every ``ems.dispatch_s``): follow the plan's
  battery power, corrected with the meter so that forecast errors are absorbed at once. The
  strategy's wish is the plan's battery power, or, where the plan balances the site (no
  planned import or export), the power that keeps the grid at zero (self-consumption within
  the plan); it tolerates the planned export (more PV than forecast is stored) and, under a
  demand charge, no import above the plan's peak. The shared real-time layer
  (:mod:`openbess.ems.realtime`) then applies the peak and export limits, grid events, the
  ramp and the BMS limits, as for :class:`~openbess.ems.strategy.SelfConsumption`.
- **Grid events** (``events``, e.g. :meth:`openbess.io.hub.Hub.grid_events`): a change in
  the set of events triggers a re-plan; the plan caps the import and export and holds the
  battery power during each window (relaxed by priced slack if it cannot, reported in
  ``plan.relaxed``), and the real-time layer enforces the active ones at the meter.
- **Scenarios** (``scenario_days``, with a provider that keeps its past forecasts): each plan
  hedges against the errors the forecasts made at the same time on the last days, and the
  first step follows the plan's ``deviation_share`` of the net load's surprise.

A forecast provider is any callable ``(start_s, n_steps, step_s) -> frame`` returning, for the
``n_steps`` intervals ``[start_s + k * step_s, start_s + (k + 1) * step_s)``, the averages of
``load_w``, ``pv_w``, ``import_price_eur_per_kwh`` and ``export_price_eur_per_kwh`` (a pandas
DataFrame or a mapping of arrays). ``start_s`` is a multiple of ``step_s``; a provider must use
only data known at ``start_s`` unless it is meant as perfect foresight.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.config import SiteConfig
from openbess.contract import Command, Mode, Telemetry
from openbess.data.timeseries import to_unix_s
from openbess.ems.optimizer import (
    INPUT_COLUMNS,
    OptimizerConfig,
    PlanInputs,
    PlanResult,
    PlanScenarios,
    PlanSolver,
    default_degradation_cost,
    optimize,
    plan_battery,
    plan_request,
)
from openbess.ems.realtime import (
    RealtimeConfig,
    RealtimeLayer,
    Wish,
    balance_w,
    read_events,
    realtime_config_for,
)
from openbess.plant import SiteMeasurements

if TYPE_CHECKING:
    from openbess.io.hub import GridEvent
    from openbess.twin.site import SiteTwin

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
#: ``(start_s, n_steps, step_s) -> frame`` with the columns of :data:`INPUT_COLUMNS`.
ForecastProvider = Callable[[float, int, float], Any]
#: Planned flows below this are "none" when deciding whether a step balances the site [W].
PLAN_FLOW_TOL_W = 1.0


def forecast_arrays(frame: Any, n_steps: int) -> dict[str, FloatArray]:
    """The four input columns of a provider's answer as float arrays of ``n_steps`` values.

    Parameters
    ----------
    frame : pandas.DataFrame or mapping of array_like
        The provider's answer.
    n_steps : int
        Steps asked for.

    Returns
    -------
    dict of str to numpy.ndarray
        Column name to values.

    Raises
    ------
    ValueError
        Naming the missing column, a short answer or a non-finite value.
    """
    out: dict[str, FloatArray] = {}
    for col in INPUT_COLUMNS:
        try:
            values = np.asarray(frame[col], dtype=np.float64).reshape(-1)
        except (KeyError, IndexError):
            raise ValueError(f"forecast has no column {col!r}") from None
        if values.size < n_steps:
            raise ValueError(f"forecast column {col!r} has {values.size} values, need {n_steps}")
        values = values[:n_steps]
        if not np.isfinite(values).all():
            raise ValueError(f"forecast column {col!r} has non-finite values")
        out[col] = values
    return out


@dataclass
class PerfectForecast:
    """Perfect foresight from known series (e.g. the bundled ones in :mod:`openbess.data`).

    The series are held over each of their intervals (zero-order hold, as interval averages
    are) and averaged exactly over each requested step.

    Parameters
    ----------
    frame : pandas.DataFrame
        The columns of :data:`INPUT_COLUMNS`, indexed by tz-aware interval starts, strictly
        increasing; the last interval is as long as the one before it.
    """

    frame: pd.DataFrame
    _edges_s: FloatArray = field(init=False, repr=False)
    _cum: dict[str, FloatArray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Precompute cumulative integrals of each column."""
        t = to_unix_s(pd.DatetimeIndex(self.frame.index))
        if t.size < 2 or (np.diff(t) <= 0).any():
            raise ValueError("PerfectForecast needs a strictly increasing index of >= 2 rows")
        self._edges_s = np.concatenate([t, [t[-1] + (t[-1] - t[-2])]])
        widths = np.diff(self._edges_s)
        self._cum = {}
        for col in INPUT_COLUMNS:
            if col not in self.frame.columns:
                raise ValueError(f"PerfectForecast: missing column {col!r}")
            v = self.frame[col].to_numpy(dtype=np.float64)
            self._cum[col] = np.concatenate([[0.0], np.cumsum(v * widths)])

    def __call__(self, start_s: float, n_steps: int, step_s: float) -> dict[str, FloatArray]:
        """Step averages over ``[start_s + k step_s, start_s + (k+1) step_s)``.

        Parameters
        ----------
        start_s : float
            Start of the first step [s, Unix UTC].
        n_steps : int
            Number of steps.
        step_s : float
            Step length [s].

        Returns
        -------
        dict of str to numpy.ndarray
            Column name to step averages.

        Raises
        ------
        ValueError
            If the steps are not inside the series.
        """
        edges = start_s + step_s * np.arange(n_steps + 1)
        if edges[0] < self._edges_s[0] - 1e-6 or edges[-1] > self._edges_s[-1] + 1e-6:
            raise ValueError("PerfectForecast: the requested horizon is outside the series")
        return {
            col: np.diff(np.interp(edges, self._edges_s, cum)) / step_s
            for col, cum in self._cum.items()
        }


@dataclass
class FunctionForecast:
    """Perfect foresight from functions of time (e.g. the twin's own load, PV and tariff).

    Parameters
    ----------
    load_w : callable
        Unix seconds array -> load [W].
    pv_w : callable or None
        Unix seconds array -> PV [W] (None: no PV).
    prices : callable
        Unix seconds array -> (import price, export price) [EUR/kWh].
    sample_s : float
        Sub-sampling interval for the step averages [s].
    """

    load_w: Callable[[FloatArray], npt.ArrayLike]
    pv_w: Callable[[FloatArray], npt.ArrayLike] | None
    prices: Callable[[FloatArray], tuple[npt.ArrayLike, npt.ArrayLike]]
    sample_s: float = 60.0

    def __call__(self, start_s: float, n_steps: int, step_s: float) -> dict[str, FloatArray]:
        """Step averages of the functions, sampled every ``sample_s`` (midpoints).

        Parameters
        ----------
        start_s : float
            Start of the first step [s, Unix UTC].
        n_steps : int
            Number of steps.
        step_s : float
            Step length [s].

        Returns
        -------
        dict of str to numpy.ndarray
            Column name to step averages.
        """
        m = max(1, round(step_s / self.sample_s))
        times: FloatArray = start_s + (np.arange(n_steps * m, dtype=np.float64) + 0.5) * (
            step_s / m
        )

        def avg(values: npt.ArrayLike) -> FloatArray:
            out: FloatArray = np.asarray(values, dtype=np.float64).reshape(n_steps, m).mean(axis=1)
            return out

        imp, exp = self.prices(times)
        return {
            "load_w": avg(self.load_w(times)),
            "pv_w": avg(self.pv_w(times)) if self.pv_w is not None else np.zeros(n_steps),
            "import_price_eur_per_kwh": avg(imp),
            "export_price_eur_per_kwh": avg(exp),
        }


def twin_perfect_forecast(twin: SiteTwin, sample_s: float = 60.0) -> FunctionForecast:
    """Perfect foresight of a digital twin's own load, PV and tariff (for runs on the twin).

    Parameters
    ----------
    twin : SiteTwin
        The twin whose models are sampled.
    sample_s : float
        Sub-sampling interval of the step averages [s].

    Returns
    -------
    FunctionForecast
        The provider.
    """
    pv = twin.series.pv
    return FunctionForecast(
        twin.load.power_w,
        pv.power_w if pv is not None else None,
        twin.tariff.prices,
        sample_s=sample_s,
    )


@dataclass
class MpcStrategy:
    """Receding-horizon optimal control (see the module docstring).

    Parameters
    ----------
    config : SiteConfig
        Site configuration (battery ratings, window, grid limits).
    forecast : callable
        Forecast provider ``(start_s, n_steps, step_s) -> frame``.
    options : OptimizerConfig
        Planner settings (step, horizon, costs, reserve, replan threshold).
    capacity_wh : float or None
        Capacity to plan with [Wh] (default: the Telemetry's SoH-adjusted capacity).
    validity_s : float
        Lifetime of each command [s].
    min_replan_interval_s : float
        Least time between two plans triggered by a SoC deviation [s].
    realtime : RealtimeConfig or None
        Settings of the real-time layer (default: the site's).
    events : callable or None
        ``now_s -> grid events not yet over`` (e.g. :meth:`openbess.io.hub.Hub.grid_events`).
    scenario_days : int
        With a forecast provider that keeps its past forecasts
        (:class:`~openbess.ems.forecast.HistoryForecastProvider`): hedge each plan against the
        errors it made at the same time on each of the last ``scenario_days`` days
        (:class:`~openbess.ems.optimizer.PlanScenarios`); the first step then follows the
        plan's ``deviation_share`` of the net-load deviation. 0: deterministic plans.
    """

    config: SiteConfig
    forecast: ForecastProvider
    options: OptimizerConfig = field(default_factory=OptimizerConfig)
    capacity_wh: float | None = None
    validity_s: float = 5.0
    min_replan_interval_s: float = 60.0
    realtime: RealtimeConfig | None = None
    events: Callable[[float], Sequence[GridEvent]] | None = None
    scenario_days: int = 0
    name: str = "mpc"
    layer: RealtimeLayer = field(init=False)
    plan: PlanResult | None = None
    plans: int = 0
    replans_on_deviation: int = 0
    plan_failures: int = 0
    solve_time_total_s: float = 0.0
    solve_time_max_s: float = 0.0
    replans_on_events: int = 0
    _seq: int = 0
    _last_plan_s: float = -math.inf
    _degradation_cache: dict[float, float] = field(default_factory=dict)
    _events_key: tuple[tuple[Any, ...], ...] = ()
    _solver: PlanSolver = field(default_factory=PlanSolver, repr=False)

    def __post_init__(self) -> None:
        """Build the real-time layer from the site's ratings, window and grid limits."""
        if self.realtime is None:
            self.realtime = realtime_config_for(self.config)
        b, g = self.config.battery, self.config.grid
        self.layer = RealtimeLayer(
            settings=self.realtime,
            max_import_w=g.max_import_w,
            max_export_w=g.max_export_w,
            max_charge_power_w=b.max_charge_power_w,
            max_discharge_power_w=b.max_discharge_power_w,
            soc_min=b.soc_min,
            soc_max=b.soc_max,
            reserve_soc=self.options.reserve_soc,
        )

    # -- slow path ---------------------------------------------------------------------------
    def replan(self, now_s: float, telemetry: Telemetry) -> None:
        """Plan from ``now_s`` with fresh forecasts and the Telemetry.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].
        telemetry : Telemetry
            Latest BMS telemetry.
        """
        self._make_plan(now_s, telemetry, read_events(self.events, now_s))

    def _degradation(self, soh: float) -> float:
        key = round(min(max(soh, 0.01), 1.0), 2)
        if key not in self._degradation_cache:
            self._degradation_cache[key] = default_degradation_cost(self.config, self.options, key)
        return self._degradation_cache[key]

    def build_inputs(self, now_s: float) -> PlanInputs:
        """The horizon from ``now_s``: a first step up to the next boundary, then full steps.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].

        Returns
        -------
        PlanInputs
            Forecasts for the horizon.
        """
        step = self.options.step_s
        n = max(1, math.ceil(self.options.horizon_s / step - 1e-9))
        start = math.floor(now_s / step) * step
        if start + step - now_s < 1.0:  # less than a second left in this step
            start += step
        data = forecast_arrays(self.forecast(start, n, step), n)
        times: FloatArray = start + step * np.arange(n, dtype=np.float64)
        lengths = np.full(n, step)
        lengths[0] = start + step - max(now_s, start)
        times[0] = max(now_s, start)
        return PlanInputs(time_s=times, step_s=lengths, **data)

    def _make_plan(self, now_s: float, telemetry: Telemetry, events: Sequence[Any] = ()) -> None:
        self._events_key = _events_key(events, now_s)
        try:
            inputs = self.build_inputs(now_s)
            battery = plan_battery(
                self.config,
                telemetry,
                capacity_wh=self.capacity_wh,
                first_limits_s=self.options.first_step_limits_s,
            )
            request = plan_request(
                self.config,
                self.options,
                inputs,
                battery,
                soh=telemetry.soh,
                degradation_cost_eur_per_kwh=self._degradation(telemetry.soh),
            )
            peak = self.layer.settings.peak_import_w
            request = replace(
                request,
                max_import_w=request.max_import_w
                if peak is None
                else min(request.max_import_w, peak),
                events=tuple(events),
            )
            result = optimize(
                inputs,
                battery,
                request,
                solver=self._solver,
                scenarios=self._scenarios(inputs),
            )
        except ValueError:
            self.plan_failures += 1
            log.exception("MPC: could not plan at t=%.0f; keeping the previous plan", now_s)
            self._last_plan_s = now_s
            raise
        self.plan = result
        self.plans += 1
        self._last_plan_s = now_s
        self.solve_time_total_s += result.solve_time_s
        self.solve_time_max_s = max(self.solve_time_max_s, result.solve_time_s)
        for r in result.relaxed:
            log.info(
                "MPC plan at t=%.0f relaxed %s by %.4g (penalty %.2f EUR)",
                now_s,
                r.constraint,
                r.max_violation,
                r.penalty_eur,
            )

    def _scenarios(self, inputs: PlanInputs) -> PlanScenarios | None:
        """Residual scenarios from the provider's past forecasts (None if it keeps none)."""
        source = getattr(self.forecast, "residual_scenarios", None)
        data_step = getattr(self.forecast, "step_s", None)
        if self.scenario_days <= 0 or source is None or not data_step:
            return None
        step = self.options.step_s
        ratio = max(1, round(step / float(data_step)))
        start = math.floor(float(inputs.time_s[0]) / step + 1e-9) * step  # the forecast origin
        n = inputs.n_steps
        dev = np.asarray(
            source(start, n * ratio, tuple(range(1, self.scenario_days + 1))), dtype=np.float64
        )
        if dev.ndim != 3 or dev.shape[0] == 0:
            return None
        agg = dev.reshape(dev.shape[0], 2, n, ratio).mean(axis=3)
        return PlanScenarios(
            load_w=np.maximum(inputs.load_w[None, :] + agg[:, 0], 0.0),
            pv_w=np.maximum(inputs.pv_w[None, :] + agg[:, 1], 0.0),
        )

    # -- fast path ---------------------------------------------------------------------------
    def _needs_plan(self, now_s: float, telemetry: Telemetry, events: Sequence[Any]) -> bool:
        plan = self.plan
        if plan is not None and _events_key(events, now_s) != self._events_key:
            self.replans_on_events += 1
            log.info("MPC: the grid events changed: re-plan")
            return True
        if now_s - self._last_plan_s < self.min_replan_interval_s:
            return False  # also rate-limits retries after a failed plan
        if plan is None or now_s >= float(plan.time_s[-1] + plan.step_s[-1]):
            return True
        deviation = abs(telemetry.soc - plan.soc_at(now_s))
        if deviation > self.options.replan_soc_deviation:
            self.replans_on_deviation += 1
            log.info("MPC: SoC %.3f is %.3f off the plan: re-plan", telemetry.soc, deviation)
            return True
        return False

    def wish(self, now_s: float, site: SiteMeasurements) -> Wish:
        """What the plan asks for now, before the real-time rules.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].
        site : SiteMeasurements
            Site meters now.

        Returns
        -------
        Wish
            The plan's battery power (or the balancing power where the plan balances the
            site; in the first step of a plan over scenarios, the planned power plus the
            plan's ``deviation_share`` of the net load's deviation from its forecast), the
            planned export as the export tolerated, and under a demand charge the plan's
            peak as the import limit. Without a valid plan: balance the site.
        """
        balance = balance_w(site, self.layer.settings.deadband_w)
        plan = self.plan
        if plan is None or now_s >= float(plan.time_s[-1] + plan.step_s[-1]):
            return Wish(balance, max_export_w=0.0)
        k = plan.step_at(now_s)
        planned_import = float(plan.grid_import_w[k])
        planned_export = float(plan.grid_export_w[k])
        if k == 0 and plan.deviation_share is not None:
            net = site.grid_power_w + site.battery_ac_power_w
            deviation = net - float(plan.load_w[0] - plan.pv_w[0])
            power = float(plan.battery_power_w[0]) + plan.deviation_share * deviation
        elif planned_import < PLAN_FLOW_TOL_W and planned_export < PLAN_FLOW_TOL_W:
            power = balance
        else:
            power = float(plan.battery_power_w[k])
        import_limit = math.inf
        if self.options.demand_charge_eur_per_kw > 0:
            import_limit = max(plan.peak_import_w, planned_import)
        return Wish(power, max_export_w=planned_export, max_import_w=import_limit)

    def dispatch(self, now_s: float, telemetry: Telemetry, site: SiteMeasurements) -> Command:
        """The battery power for the next seconds: the plan, corrected with the meter.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].
        telemetry : Telemetry
            Latest BMS telemetry.
        site : SiteMeasurements
            Site meters now.

        Returns
        -------
        Command
            A ``power`` command valid for ``validity_s``.
        """
        observe = getattr(self.forecast, "observe", None)
        if observe is not None:  # a provider that learns from the meter readings
            observe(now_s, site.load_power_w, site.pv_power_w)
        events = read_events(self.events, now_s)
        if self._needs_plan(now_s, telemetry, events):
            with contextlib.suppress(ValueError):  # logged; use the old plan or balance
                self._make_plan(now_s, telemetry, events)
        decision = self.layer.setpoint(now_s, telemetry, site, self.wish(now_s, site), events)
        self._seq += 1
        return Command(
            seq=self._seq,
            mode=Mode.POWER,
            power_w=decision.power_w,
            valid_until_s=now_s + self.validity_s,
            reserve_soc=self.options.reserve_soc,
            source="ems",
        )

    def stats(self) -> Mapping[str, float]:
        """Counters of the planner.

        Returns
        -------
        mapping
            ``plans``, ``replans_on_deviation``, ``replans_on_events``, ``plan_failures``,
            ``solve_time_total_s``, ``solve_time_mean_s``, ``solve_time_max_s``.
        """
        return {
            "plans": float(self.plans),
            "replans_on_deviation": float(self.replans_on_deviation),
            "replans_on_events": float(self.replans_on_events),
            "plan_failures": float(self.plan_failures),
            "solve_time_total_s": self.solve_time_total_s,
            "solve_time_mean_s": self.solve_time_total_s / self.plans if self.plans else 0.0,
            "solve_time_max_s": self.solve_time_max_s,
        }


def _events_key(events: Sequence[Any], now_s: float) -> tuple[tuple[Any, ...], ...]:
    """What identifies a set of grid events for re-planning (those not over at ``now_s``)."""
    keys = [
        (
            str(getattr(e, "source", "")),
            str(e.event_id),
            float(e.start_s),
            float(e.end_s),
            e.max_import_w,
            e.max_export_w,
            e.battery_power_w,
        )
        for e in events
        if e.end_s > now_s
    ]
    return tuple(sorted(keys, key=lambda k: k[:4]))
