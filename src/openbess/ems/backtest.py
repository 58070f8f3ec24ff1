"""Backtest of the EMS: a rolling MPC over a whole input series, forecasts from the past only.

Inputs: a regular series of ``load_w``, ``pv_w`` [W], ``import_price_eur_per_kwh`` and
``export_price_eur_per_kwh`` [EUR/kWh] (:func:`read_inputs_csv`, or :func:`site_inputs` for a
site's bundled data). Every ``replan_s`` the planner gets forecasts (perfect, or from a
:class:`~openbess.ems.forecast.HistoryForecastProvider`) and the measured SoC; the first
interval of the plan is then executed against the actual load and PV: the battery follows the
planned power where its power and energy limits allow, the grid absorbs the difference.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from tqdm import tqdm

from openbess.config import SiteConfig
from openbess.data import read_household_pv_fit, read_timeseries_csv
from openbess.data.timeseries import DAY_S, WEEK_S, to_datetime_index, to_unix_s
from openbess.ems.forecast import (
    FORECAST_COLUMNS,
    AnalogForecaster,
    ClearSkyPv,
    ClearSkyPvForecaster,
    Forecaster,
    HistoryForecastProvider,
    HoltWintersForecaster,
    PerfectForecastProvider,
    SeasonalNaiveForecaster,
    SeasonalProfileForecaster,
    seasonal_naive,
    skill_score,
)
from openbess.ems.mpc import PLAN_FLOW_TOL_W
from openbess.ems.optimizer import (
    OptimizerConfig,
    PlanBattery,
    PlanInputs,
    PlanResult,
    PlanScenarios,
    PlanSolver,
    default_degradation_cost,
    default_terminal_value,
    optimize,
    optimizer_config_for,
    plan_battery,
    plan_request,
)
from openbess.errors import DataError

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

INPUT_COLUMNS: tuple[str, ...] = FORECAST_COLUMNS


def pv_plant_for(config: SiteConfig) -> object:
    """The PV plant a site's PV series comes from (for the clear-sky forecast).

    With ``pv.source = "household"`` the twin replays the measured household PV scaled to
    ``peak_power_w``, so the plant has the fitted household orientation; otherwise the
    configured tilt and azimuth.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.

    Returns
    -------
    openbess.twin.pv.PvPlant
        The plant.
    """
    from openbess.twin.pv import PvPlant

    pv = config.pv
    ac = pv.inverter_ac_w if pv.inverter_ac_w is not None else pv.peak_power_w
    tilt, azimuth = pv.tilt_deg, pv.azimuth_deg
    lat, lon, alt = config.latitude_deg, config.longitude_deg, config.altitude_m
    if pv.source == "household":
        fit = read_household_pv_fit()
        tilt, azimuth = fit["tilt_deg"], fit["azimuth_deg"]
        lat, lon, alt = fit["latitude_deg"], fit["longitude_deg"], fit["altitude_m"]
    return PvPlant(
        max(pv.peak_power_w, 1.0),
        max(ac, 1.0),
        tilt_deg=tilt,
        azimuth_deg=azimuth,
        latitude_deg=lat,
        longitude_deg=lon,
        altitude_m=alt,
    )


def site_inputs(
    config: SiteConfig,
    start: datetime | pd.Timestamp | str,
    days: float,
    *,
    step_s: float = 900.0,
) -> pd.DataFrame:
    """Backtest inputs of a site from its bundled data (the series its twin runs on).

    Load, PV and prices come from the same models as :class:`openbess.twin.site.SiteTwin`
    (bundled household or commercial load, measured or clear-sky-index PV, day-ahead prices
    of the site's zone with its import adder, VAT and export tariff); times outside a bundled
    year are mapped onto it by whole weeks. Each value is the interval average.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    start : datetime, pandas.Timestamp or str
        Start of the first interval (tz-aware, or ISO 8601 with an offset).
    days : float
        Length [days], > 0, a whole number of steps.
    step_s : float
        Interval length [s], dividing a day.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`INPUT_COLUMNS`, UTC index ``time`` of interval starts.

    Raises
    ------
    ValueError
        If ``start`` is naive or the lengths are invalid.
    """
    from openbess.twin.grid import Tariff
    from openbess.twin.load import LoadModel
    from openbess.twin.pv import PvModel

    t0 = pd.Timestamp(start)
    if t0.tzinfo is None:
        raise ValueError(f"start must carry a UTC offset, got {start!r}")
    if not (step_s > 0 and abs(DAY_S / step_s - round(DAY_S / step_s)) < 1e-9):
        raise ValueError(f"step_s must divide a day, got {step_s!r}")
    n = days * DAY_S / step_s
    if not (days > 0 and abs(n - round(n)) < 1e-6):
        raise ValueError(f"days must be > 0 and a whole number of steps, got {days!r}")
    start_s = float(to_unix_s(t0))
    times = start_s + np.arange(round(n)) * step_s
    sub = max(1, round(step_s / 300.0))
    offsets = (np.arange(sub) + 0.5) / sub * step_s

    def interval_mean(fn: Callable[[FloatArray], FloatArray]) -> FloatArray:
        pts = (times[:, None] + offsets[None, :]).ravel()
        out: FloatArray = (
            np.asarray(fn(pts), dtype=np.float64).reshape(times.size, sub).mean(axis=1)
        )
        return out

    lc = config.load
    annual_wh = lc.annual_energy_kwh * 1000.0 if lc.annual_energy_kwh else None
    if lc.source == "household":
        load = LoadModel.household(annual_energy_wh=annual_wh)
    elif lc.source == "commercial":
        load = LoadModel.commercial(annual_wh if annual_wh is not None else 400e6)
    else:
        load = LoadModel.from_csv(lc.source, "load_w", annual_energy_wh=annual_wh)
    load_w = interval_mean(load.power_w)
    pv_cfg = config.pv
    pv_w = np.zeros(times.size)
    if pv_cfg.enabled and pv_cfg.peak_power_w > 0:
        from openbess.twin.pv import PvPlant

        plant = PvPlant(
            pv_cfg.peak_power_w,
            pv_cfg.inverter_ac_w if pv_cfg.inverter_ac_w is not None else pv_cfg.peak_power_w,
            tilt_deg=pv_cfg.tilt_deg,
            azimuth_deg=pv_cfg.azimuth_deg,
            latitude_deg=config.latitude_deg,
            longitude_deg=config.longitude_deg,
            altitude_m=config.altitude_m,
        )
        if pv_cfg.source == "household":
            model = PvModel(plant, source="measured", cache_step_s=0.0)
        else:
            model = PvModel(plant, source="clearsky_index", cache_step_s=300.0)
        pv_w = interval_mean(model.power_w)
    tariff = Tariff.for_grid(config.grid)
    imp, exp = tariff.prices(times)
    index = to_datetime_index(times).rename("time")
    return pd.DataFrame(
        {
            "load_w": load_w,
            "pv_w": pv_w,
            "import_price_eur_per_kwh": np.asarray(imp, dtype=np.float64),
            "export_price_eur_per_kwh": np.asarray(exp, dtype=np.float64),
        },
        index=index,
    )


def write_inputs_csv(frame: pd.DataFrame, path: str | os.PathLike[str], tz: str = "UTC") -> None:
    """Write backtest inputs as CSV (``time`` ISO 8601 with offset, then the input columns).

    Parameters
    ----------
    frame : pandas.DataFrame
        Inputs with the columns :data:`INPUT_COLUMNS` and a tz-aware index.
    path : str or os.PathLike
        Output file.
    tz : str
        Time zone in which the times are written (the offset is always included).
    """
    out = frame[list(INPUT_COLUMNS)].copy()
    idx = pd.DatetimeIndex(out.index).tz_convert(tz)
    out.index = pd.Index([t.isoformat() for t in idx], name="time")
    out.to_csv(path, float_format="%.6g")


def read_inputs_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read backtest (or plan) inputs and check them.

    Parameters
    ----------
    path : str or os.PathLike
        CSV with ``time`` (ISO 8601 with a UTC offset) and the columns :data:`INPUT_COLUMNS`;
        each row is the average over the step that starts at ``time``.

    Returns
    -------
    pandas.DataFrame
        The columns as float64, UTC index.

    Raises
    ------
    DataError
        Naming the file, the line and the column: missing column, unparsable or empty cell,
        non-finite value, negative load or PV, time not increasing or not regularly spaced.
    """
    name = os.fspath(path)
    frame = read_timeseries_csv(name, INPUT_COLUMNS, allow_missing=False)

    def line_of(i: int) -> int:
        # data row i is on physical line header + 1 + i when the file has no comments/blanks
        return _data_line_numbers(name)[i]

    for col in INPUT_COLUMNS:
        v = frame[col].to_numpy()
        bad = ~np.isfinite(v)
        if col in ("load_w", "pv_w"):
            bad |= v < 0.0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "not finite" if not np.isfinite(v[i]) else "negative power"
            raise DataError(f"{name}: line {line_of(i)}, column '{col}': {what} ({v[i]!r})")
    if len(frame) < 2:
        raise DataError(f"{name}: need at least two rows to know the step")
    t = to_unix_s(pd.DatetimeIndex(frame.index))
    steps = np.diff(t)
    irregular = np.flatnonzero(np.abs(steps - steps[0]) > 1e-6)
    if irregular.size:
        i = int(irregular[0]) + 1
        raise DataError(
            f"{name}: line {line_of(i)}, column 'time': step of {steps[i - 1]:g} s where the "
            f"file starts with {steps[0]:g} s (rows must be regularly spaced)"
        )
    return frame


def _data_line_numbers(path: str) -> list[int]:
    """Physical line numbers of the data rows (after the header; blanks and # skipped)."""
    import csv

    lines: list[int] = []
    header_seen = False
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if not header_seen:
                header_seen = True
                continue
            lines.append(reader.line_num)
    return lines


# --------------------------------------------------------------------------------------------
# The rolling MPC
# --------------------------------------------------------------------------------------------
ForecastKind = Literal["perfect", "model"]
Execution = Literal["follow", "dispatch"]


@dataclass(frozen=True)
class BacktestOptions:
    """Settings of a backtest.

    Parameters
    ----------
    forecast : {"perfect", "model"}
        Perfect foresight of the inputs, or forecasts from the past
        (:func:`default_provider`).
    replan_s : float
        Time between two plans [s], a whole number of input intervals.
    horizon_s : float
        Plan horizon [s] (cut at the end of the series).
    fine_horizon_s : float
        First part of the horizon planned at the input resolution [s] (>= ``replan_s``).
    coarse_step_s : float
        Step beyond ``fine_horizon_s`` [s], a whole number of input intervals (values are
        averaged over it; hourly matches hourly day-ahead prices).
    execution : {"follow", "dispatch"}
        ``follow``: the battery follows the planned power where its limits allow and the grid
        absorbs the forecast error. ``dispatch``: the rules of
        :meth:`openbess.ems.mpc.MpcStrategy.dispatch` applied to interval averages (balance the
        site where the plan does, soak up PV surplus beyond the planned export, grid limits).
    history_s : float
        Leading part of the series used only as history for the forecasts (not scored) [s].
    perfect_foresight : bool
        Also solve the single-shot optimum over the scored window (the reference of
        ``capture_ratio``).
    perfect_time_limit_s : float
        Solver time limit of that single-shot problem [s].
    progress : bool
        Show a progress bar on stderr.
    scenario_days : int
        With model forecasts: hedge each plan against the errors the forecasts made at the same
        time on each of the last ``scenario_days`` days (:class:`PlanScenarios`, from
        :meth:`HistoryForecastProvider.residual_scenarios`); 0 for deterministic plans.
    """

    forecast: ForecastKind = "model"
    replan_s: float = 900.0
    horizon_s: float = 36.0 * 3600.0
    fine_horizon_s: float = 4.0 * 3600.0
    coarse_step_s: float = 3600.0
    execution: Execution = "follow"
    history_s: float = 0.0
    perfect_foresight: bool = True
    perfect_time_limit_s: float = 900.0
    progress: bool = False
    scenario_days: int = 21

    def __post_init__(self) -> None:
        """Check values; raise ValueError naming the field."""
        if self.forecast not in ("perfect", "model"):
            raise ValueError(f"forecast must be 'perfect' or 'model', got {self.forecast!r}")
        if self.execution not in ("follow", "dispatch"):
            raise ValueError(f"execution must be 'follow' or 'dispatch', got {self.execution!r}")
        for name in ("replan_s", "horizon_s", "fine_horizon_s", "coarse_step_s"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"BacktestOptions.{name} must be > 0, got {v!r}")
        if self.fine_horizon_s < self.replan_s:
            raise ValueError("BacktestOptions.fine_horizon_s must be >= replan_s")
        if not (math.isfinite(self.history_s) and self.history_s >= 0):
            raise ValueError(f"BacktestOptions.history_s must be >= 0, got {self.history_s!r}")
        if not 0 <= self.scenario_days <= 28:
            raise ValueError(
                f"BacktestOptions.scenario_days must be in [0, 28], got {self.scenario_days!r}"
            )


class OptimizerPlanner:
    """The planner of the backtest: :func:`openbess.ems.optimizer.optimize` for a site.

    Parameters
    ----------
    config : SiteConfig
        Site configuration (battery, grid limits).
    options : OptimizerConfig or None
        Planner settings (default: the site's).
    """

    def __init__(self, config: SiteConfig, options: OptimizerConfig | None = None) -> None:
        self.config = config
        self.options = options if options is not None else optimizer_config_for(config)
        self.battery0 = plan_battery(config)
        self.degradation_eur_per_kwh = default_degradation_cost(config, self.options)
        self.solver = PlanSolver()

    def battery(self, soc: float) -> PlanBattery:
        """The battery at a SoC [fraction]."""
        return replace(self.battery0, soc_initial=min(max(soc, 0.0), 1.0))

    def __call__(
        self,
        inputs: PlanInputs,
        soc: float,
        *,
        time_limit_s: float | None = None,
        scenarios: PlanScenarios | None = None,
    ) -> PlanResult:
        """Optimal plan from ``soc`` over ``inputs``.

        Parameters
        ----------
        inputs : PlanInputs
            Forecasts per step.
        soc : float
            SoC at the start [fraction].
        time_limit_s : float or None
            Solver time limit [s] (default: the options').
        scenarios : PlanScenarios or None
            Load and PV scenarios to hedge against.

        Returns
        -------
        PlanResult
            The plan.
        """
        battery = self.battery(soc)
        request = plan_request(
            self.config,
            self.options,
            inputs,
            battery,
            degradation_cost_eur_per_kwh=self.degradation_eur_per_kwh,
        )
        if time_limit_s is not None:  # a one-off problem: not worth keeping warm
            return optimize(inputs, battery, replace(request, time_limit_s=time_limit_s))
        return optimize(inputs, battery, request, solver=self.solver, scenarios=scenarios)


def default_provider(config: SiteConfig, actuals: pd.DataFrame) -> HistoryForecastProvider:
    """The model forecasts of a backtest (chosen on the bundled ``home`` year, see docs).

    - load: analog ensemble (:class:`AnalogForecaster`): the 10 days of the last 8 weeks
      whose last hour at this local time looked most like today's, their continuations
      shifted to the last measurement (30 min time constant), blended with a 2 h time
      constant into the mean of every day over the last two weeks at the same local time
      (see ``docs/forecasting.md``);
    - PV: clear-sky PV of the site's plant times a persisted clearness index (the last
      15 min's, decaying with a 4 h time constant to a blend of yesterday's and the last
      week's);
    - prices: published day-ahead prices (tomorrow's after 13:00 CET), beyond them additive
      Holt-Winters exponential smoothing with a daily season.

    Parameters
    ----------
    config : SiteConfig
        Site configuration (time zone, PV plant).
    actuals : pandas.DataFrame
        The input series (only its past is read at each forecast).

    Returns
    -------
    HistoryForecastProvider
        The provider.
    """
    tz = config.timezone
    load = AnalogForecaster(
        days=56,
        k=10,
        match_s=3600.0,
        blend_tau_s=2.0 * 3600.0,
        anchor_tau_s=0.5 * 3600.0,
        base=SeasonalProfileForecaster(weeks=2, by="day", tz=tz),
        tz=tz,
        nonnegative=True,
    )
    pv: Forecaster
    if config.pv.enabled and config.pv.peak_power_w > 0:
        pv = ClearSkyPvForecaster(
            ClearSkyPv(pv_plant_for(config)), recent_s=900.0, tau_s=4.0 * 3600.0
        )
    else:
        pv = SeasonalNaiveForecaster(DAY_S, nonnegative=True)
    price = HoltWintersForecaster(alpha=0.1, beta=0.0, gamma=0.3)
    return HistoryForecastProvider(actuals, load=load, pv=pv, price=price)


@dataclass
class _Limits:
    capacity_wh: float
    soc_min: float
    soc_max: float
    max_charge_w: float
    max_discharge_w: float
    eta_c: float
    eta_d: float
    max_import_w: float
    max_export_w: float


def _execute(
    target_w: float,
    load_w: float,
    pv_w: float,
    export_price: float,
    soc: float,
    dt_s: float,
    lim: _Limits,
) -> tuple[float, float, float, float]:
    """Battery power within its limits, grid power, PV curtailed and the new SoC."""
    dt_h = dt_s / 3600.0
    p = min(max(target_w, -lim.max_charge_w), lim.max_discharge_w)
    if p > 0.0:
        p = min(p, max(soc - lim.soc_min, 0.0) * lim.capacity_wh * lim.eta_d / dt_h)
        soc_new = soc - p * dt_h / lim.eta_d / lim.capacity_wh
    else:
        p = max(p, -max(lim.soc_max - soc, 0.0) * lim.capacity_wh / (lim.eta_c * dt_h))
        soc_new = soc - p * dt_h * lim.eta_c / lim.capacity_wh
    grid = load_w - pv_w - p
    curtailed = 0.0
    if grid < 0.0:
        # curtail PV above the export limit, and any PV export at a negative price
        allowed = 0.0 if export_price < 0.0 else lim.max_export_w
        if -grid > allowed:
            curtailed = min(pv_w, -grid - allowed)
            grid += curtailed
    return p, grid, curtailed, soc_new


def _dispatch_target(
    plan: PlanResult, j: int, load_w: float, pv_w: float, lim: _Limits, deadband_w: float = 10.0
) -> float:
    """The rules of MpcStrategy.dispatch on interval averages (see BacktestOptions)."""
    net = load_w - pv_w
    planned_import = float(plan.grid_import_w[j])
    planned_export = float(plan.grid_export_w[j])
    if j == 0 and plan.deviation_share is not None:
        forecast_net = float(plan.load_w[0] - plan.pv_w[0])
        target = float(plan.battery_power_w[0]) + plan.deviation_share * (net - forecast_net)
    elif planned_import < PLAN_FLOW_TOL_W and planned_export < PLAN_FLOW_TOL_W:
        target = net
    else:
        target = float(plan.battery_power_w[j])
    if net - target < -planned_export - deadband_w:
        target = net + planned_export
    if net - target > lim.max_import_w:
        target = net - lim.max_import_w
    if net - target < -lim.max_export_w:
        target = net + lim.max_export_w
    return target


@dataclass
class _ErrorSums:
    """Running sums of absolute forecast errors (model and seasonal naive) per column."""

    abs_err: FloatArray = field(default_factory=lambda: np.zeros(4))
    abs_err_naive: FloatArray = field(default_factory=lambda: np.zeros(4))
    count: FloatArray = field(default_factory=lambda: np.zeros(4))
    first_err: FloatArray = field(default_factory=lambda: np.zeros(4))
    first_err_naive: FloatArray = field(default_factory=lambda: np.zeros(4))
    first_count: FloatArray = field(default_factory=lambda: np.zeros(4))

    def add(self, fc: FloatArray, naive: FloatArray, act: FloatArray) -> None:
        ok = np.isfinite(fc) & np.isfinite(naive) & np.isfinite(act)
        e = np.where(ok, np.abs(fc - act), 0.0)
        en = np.where(ok, np.abs(naive - act), 0.0)
        self.abs_err += e.sum(axis=1)
        self.abs_err_naive += en.sum(axis=1)
        self.count += ok.sum(axis=1)
        self.first_err += e[:, 0]
        self.first_err_naive += en[:, 0]
        self.first_count += ok[:, 0]

    def report(self) -> dict[str, dict[str, float | int]]:
        out: dict[str, dict[str, float | int]] = {}
        for i, col in enumerate(FORECAST_COLUMNS):
            n = int(self.count[i])
            n1 = int(self.first_count[i])
            mae = float(self.abs_err[i] / n) if n else math.nan
            mae_n = float(self.abs_err_naive[i] / n) if n else math.nan
            mae1 = float(self.first_err[i] / n1) if n1 else math.nan
            mae1_n = float(self.first_err_naive[i] / n1) if n1 else math.nan
            out[col] = {
                "mae": mae,
                "mae_naive": mae_n,
                "skill": skill_score(mae, mae_n),
                "mae_first_step": mae1,
                "mae_naive_first_step": mae1_n,
                "skill_first_step": skill_score(mae1, mae1_n),
                "n": n,
            }
        return out


@dataclass
class BacktestResult:
    """Outcome of :func:`run_backtest`.

    ``frame`` holds one row per scored interval: actual ``load_w``, ``pv_w``, prices, the
    executed ``battery_power_w`` (AC, positive = discharge), ``grid_power_w`` (positive =
    import), ``pv_curtailed_w``, ``planned_battery_power_w`` and ``soc`` at the end of the
    interval. ``summary`` holds the figures printed by ``openbess backtest``.
    """

    frame: pd.DataFrame
    summary: dict[str, Any]


def _horizon_blocks(n_left: int, horizon: int, fine: int, coarse: int) -> IntArray:
    """Sizes (in data intervals) of the plan steps: ``fine`` singles, then ``coarse`` blocks."""
    total = min(horizon, n_left)
    n_fine = min(fine, total)
    rest = total - n_fine
    blocks = [1] * n_fine + [coarse] * (rest // coarse)
    if rest % coarse:
        blocks.append(rest % coarse)
    return np.asarray(blocks, dtype=np.int64)


def _costs(grid_w: FloatArray, imp: FloatArray, exp: FloatArray, dt_h: float) -> float:
    return float(np.sum(np.where(grid_w > 0, grid_w * imp, grid_w * exp)) * dt_h / 1000.0)


def _baseline_grid(load: FloatArray, pv: FloatArray, exp: FloatArray, lim: _Limits) -> FloatArray:
    grid = load - pv
    allowed = np.where(exp < 0.0, 0.0, lim.max_export_w)
    out: FloatArray = np.where(grid < -allowed, np.minimum(-allowed, grid + pv), grid)
    return out


def run_backtest(
    config: SiteConfig,
    inputs: pd.DataFrame,
    options: BacktestOptions | None = None,
    *,
    planner: OptimizerPlanner | None = None,
    provider: HistoryForecastProvider | PerfectForecastProvider | None = None,
) -> BacktestResult:
    """Rolling MPC over a whole input series (see the module docstring).

    Parameters
    ----------
    config : SiteConfig
        Site configuration (battery, grid limits, initial SoC, time zone, PV plant).
    inputs : pandas.DataFrame
        Regular series with the columns :data:`INPUT_COLUMNS` and a UTC index.
    options : BacktestOptions or None
        Settings (default :class:`BacktestOptions`).
    planner : OptimizerPlanner or None
        The planner (default: the site's optimiser settings).
    provider : forecast provider or None
        Overrides the forecasts chosen by ``options.forecast``.

    Returns
    -------
    BacktestResult
        Per-interval record and summary figures.

    Raises
    ------
    ValueError
        If the series is too short or the steps do not fit the input interval.
    """
    opts = options if options is not None else BacktestOptions()
    plan_fn = planner if planner is not None else OptimizerPlanner(config)
    start_s, dt_s, values = _series(inputs)
    n_all = values.shape[1]
    i0 = _whole(opts.history_s, dt_s, "history_s", allow_zero=True)
    if n_all - i0 < 1:
        raise ValueError(f"the series ({n_all} intervals) is no longer than history_s")
    replan = _whole(opts.replan_s, dt_s, "replan_s")
    fine = max(math.ceil(opts.fine_horizon_s / dt_s - 1e-9), replan)
    coarse = _whole(max(opts.coarse_step_s, dt_s), dt_s, "coarse_step_s")
    horizon = max(math.ceil(opts.horizon_s / dt_s - 1e-9), replan)
    prov: HistoryForecastProvider | PerfectForecastProvider
    if provider is not None:
        prov = provider
    elif opts.forecast == "perfect":
        prov = PerfectForecastProvider(inputs)
    else:
        prov = default_provider(config, inputs)
    b0 = plan_fn.battery0
    lim = _Limits(
        capacity_wh=b0.capacity_wh,
        soc_min=max(b0.soc_min, plan_fn.options.reserve_soc),
        soc_max=b0.soc_max,
        max_charge_w=b0.max_charge_power_w,
        max_discharge_w=b0.max_discharge_power_w,
        eta_c=b0.charge_efficiency,
        eta_d=b0.discharge_efficiency,
        max_import_w=config.grid.max_import_w,
        max_export_w=config.grid.max_export_w,
    )
    load, pv, imp, exp = values
    n = n_all - i0
    battery_w = np.zeros(n)
    planned_w = np.zeros(n)
    grid_w = np.zeros(n)
    curtailed_w = np.zeros(n)
    soc_end = np.zeros(n)
    soc = float(b0.soc_initial)
    soc_start = soc
    solve_times: list[float] = []
    relaxed = 0
    forecast_time = 0.0
    errors = _ErrorSums()
    is_model = isinstance(prov, HistoryForecastProvider)
    day, week = round(DAY_S / dt_s), round(WEEK_S / dt_s)
    lags = tuple(range(1, opts.scenario_days + 1)) if is_model else ()
    wall0 = time.perf_counter()
    if lags and isinstance(prov, HistoryForecastProvider):
        prov.keep_days = max(prov.keep_days, len(lags) + 1.0)
        # the forecasts of the last days of history, for the first plans' scenarios
        m0 = int(_horizon_blocks(n_all - i0, horizon, fine, coarse).sum())
        for i in range(max(i0 - len(lags) * day, 1), i0):
            prov.forecast_arrays(start_s + i * dt_s, m0)
    replans = range(i0, n_all, replan)
    bar = tqdm(
        replans,
        total=len(replans),
        desc=f"backtest ({opts.forecast})",
        unit="plan",
        disable=not opts.progress,
        file=sys.stderr,
        mininterval=0.5,
    )
    for i in bar:
        now_s = start_s + i * dt_s
        blocks = _horizon_blocks(n_all - i, horizon, fine, coarse)
        m = int(blocks.sum())
        tf = time.perf_counter()
        fc = prov.forecast_arrays(now_s, m)
        forecast_time += time.perf_counter() - tf
        if is_model and isinstance(prov, HistoryForecastProvider):
            _, kp = prov.known_index(now_s)
            naive = np.empty_like(fc)
            naive[0] = seasonal_naive(load[:i], m, week)
            naive[1] = seasonal_naive(pv[:i], m, day)
            known = min(kp - i, m)
            for row in (2, 3):
                naive[row, :known] = values[row, i : i + known]
                naive[row, known:] = seasonal_naive(values[row, :kp], m - known, day)
            errors.add(fc, naive, values[:, i : i + m])
        starts = np.concatenate([[0], np.cumsum(blocks)[:-1]])
        agg = np.add.reduceat(fc, starts, axis=1) / blocks[None, :]
        step_s = blocks.astype(np.float64) * dt_s
        plan_inputs = PlanInputs(
            time_s=now_s + starts.astype(np.float64) * dt_s,
            step_s=step_s,
            load_w=np.maximum(agg[0], 0.0),
            pv_w=np.maximum(agg[1], 0.0),
            import_price_eur_per_kwh=agg[2],
            export_price_eur_per_kwh=agg[3],
        )
        scenarios: PlanScenarios | None = None
        if lags and isinstance(prov, HistoryForecastProvider):
            dev = prov.residual_scenarios(now_s, m, lags)
            if dev.shape[0]:
                agg_dev = np.add.reduceat(dev, starts, axis=2) / blocks[None, None, :]
                scenarios = PlanScenarios(
                    load_w=np.maximum(plan_inputs.load_w[None, :] + agg_dev[:, 0], 0.0),
                    pv_w=np.maximum(plan_inputs.pv_w[None, :] + agg_dev[:, 1], 0.0),
                )
        plan = plan_fn(plan_inputs, soc, scenarios=scenarios)
        solve_times.append(plan.solve_time_s)
        relaxed += len(plan.relaxed)
        for j in range(min(replan, n_all - i)):
            k = i + j
            if opts.execution == "dispatch":
                target = _dispatch_target(plan, j, float(load[k]), float(pv[k]), lim)
            else:
                target = float(plan.battery_power_w[j])
            p, g, cut, soc = _execute(
                target, float(load[k]), float(pv[k]), float(exp[k]), soc, dt_s, lim
            )
            r = k - i0
            battery_w[r], grid_w[r], curtailed_w[r], soc_end[r] = p, g, cut, soc
            planned_w[r] = float(plan.battery_power_w[j])
    bar.close()
    wall = time.perf_counter() - wall0
    sl = slice(i0, n_all)
    dt_h = dt_s / 3600.0
    cost = _costs(grid_w, imp[sl], exp[sl], dt_h)
    base_grid = _baseline_grid(load[sl], pv[sl], exp[sl], lim)
    baseline = _costs(base_grid, imp[sl], exp[sl], dt_h)
    cap_kwh = lim.capacity_wh / 1000.0
    whole = PlanInputs(
        time_s=start_s + np.arange(i0, n_all, dtype=np.float64) * dt_s,
        step_s=np.full(n, dt_s),
        load_w=load[sl],
        pv_w=pv[sl],
        import_price_eur_per_kwh=imp[sl],
        export_price_eur_per_kwh=exp[sl],
    )
    value_eur_per_kwh = default_terminal_value(whole, b0)
    stored_value = value_eur_per_kwh * (float(soc_end[-1]) - soc_start) * cap_kwh
    savings = baseline - cost
    charged = float(np.sum(np.maximum(-battery_w, 0.0)) * dt_h / 1000.0)
    discharged = float(np.sum(np.maximum(battery_w, 0.0)) * dt_h / 1000.0)
    throughput = charged + discharged
    summary: dict[str, Any] = {
        "forecast": opts.forecast,
        "execution": opts.execution,
        "start": str(inputs.index[i0]),
        "days": n * dt_s / DAY_S,
        "step_s": dt_s,
        "replan_s": replan * dt_s,
        "horizon_s": horizon * dt_s,
        "cost_eur": cost,
        "baseline_cost_eur": baseline,
        "savings_eur": savings,
        "stored_energy_change_kwh": (float(soc_end[-1]) - soc_start) * cap_kwh,
        "stored_energy_value_eur": stored_value,
        "stored_energy_value_eur_per_kwh": value_eur_per_kwh,
        "degradation_cost_eur": throughput * plan_fn.degradation_eur_per_kwh,
        "equivalent_full_cycles": throughput / (2.0 * cap_kwh),
        "throughput_kwh": throughput,
        "charged_kwh": charged,
        "discharged_kwh": discharged,
        "pv_curtailed_kwh": float(np.sum(curtailed_w) * dt_h / 1000.0),
        "import_limit_exceeded_steps": int(np.sum(grid_w > lim.max_import_w + 1e-6)),
        "soc_initial": soc_start,
        "soc_final": float(soc_end[-1]),
        "solves": len(solve_times),
        "plans_relaxed": relaxed,
        "solve_time_s": float(np.sum(solve_times)),
        "solve_time_per_solve_s": float(np.mean(solve_times)),
        "solve_time_max_s": float(np.max(solve_times)),
        "forecast_time_s": forecast_time,
        "wall_time_s": wall,
        "scenario_days": len(lags),
    }
    solver = getattr(plan_fn, "solver", None)
    if isinstance(solver, PlanSolver):
        summary["warm_solves"] = solver.warm_solves
        summary["warm_solve_failures"] = solver.warm_failures
    if is_model:
        summary["forecast_error"] = errors.report()
    if opts.perfect_foresight:
        t_pf = time.perf_counter()
        best = plan_fn(whole, soc_start, time_limit_s=opts.perfect_time_limit_s)
        pf_grid = best.grid_import_w - best.grid_export_w
        pf_cost = _costs(pf_grid, imp[sl], exp[sl], dt_h)
        pf_value = value_eur_per_kwh * (float(best.soc[-1]) - soc_start) * cap_kwh
        pf_savings = baseline - pf_cost
        summary["perfect_foresight_cost_eur"] = pf_cost
        summary["perfect_foresight_savings_eur"] = pf_savings
        summary["perfect_foresight_stored_energy_value_eur"] = pf_value
        summary["perfect_foresight_solve_time_s"] = time.perf_counter() - t_pf
        denominator = pf_savings + pf_value
        summary["capture_ratio"] = (
            (savings + stored_value) / denominator if denominator > 1e-9 else math.nan
        )
    index = pd.DatetimeIndex(inputs.index[i0:n_all], name="time")
    frame = pd.DataFrame(
        {
            "load_w": load[sl],
            "pv_w": pv[sl],
            "import_price_eur_per_kwh": imp[sl],
            "export_price_eur_per_kwh": exp[sl],
            "battery_power_w": battery_w,
            "planned_battery_power_w": planned_w,
            "grid_power_w": grid_w,
            "pv_curtailed_w": curtailed_w,
            "soc": soc_end,
        },
        index=index,
    )
    return BacktestResult(frame=frame, summary=summary)


def _whole(duration_s: float, dt_s: float, name: str, *, allow_zero: bool = False) -> int:
    n = duration_s / dt_s
    if abs(n - round(n)) > 1e-6 or (round(n) < 1 and not allow_zero):
        raise ValueError(
            f"{name} ({duration_s:g} s) must be a whole number of input steps ({dt_s:g} s)"
        )
    return round(n)


def _series(inputs: pd.DataFrame) -> tuple[float, float, FloatArray]:
    missing = [c for c in INPUT_COLUMNS if c not in inputs.columns]
    if missing:
        raise ValueError(f"inputs miss column(s) {missing}")
    t = to_unix_s(pd.DatetimeIndex(inputs.index))
    if t.size < 2:
        raise ValueError("inputs need at least two intervals")
    steps = np.diff(t)
    if not np.allclose(steps, steps[0], rtol=0.0, atol=1e-6) or steps[0] <= 0:
        raise ValueError("inputs must be regularly spaced and increasing")
    values = inputs[list(INPUT_COLUMNS)].to_numpy(dtype=np.float64).T.copy()
    if not np.isfinite(values).all():
        raise ValueError("inputs hold non-finite values")
    return float(t[0]), float(steps[0]), values


def plot_backtest(result: BacktestResult, path: str | os.PathLike[str]) -> None:
    """Write a PNG chart of a backtest: prices, SoC, battery power and grid power.

    matplotlib (Agg backend) is imported here, so the rest of openbess runs without it.

    Parameters
    ----------
    result : BacktestResult
        The backtest.
    path : str or os.PathLike
        Output PNG file.

    Raises
    ------
    ModuleNotFoundError
        If matplotlib is not installed.
    OSError
        If the file cannot be written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result.frame
    s = result.summary
    t = pd.DatetimeIndex(f.index).tz_convert("UTC").tz_localize(None)
    fig, axes = plt.subplots(4, 1, figsize=(12, 9), sharex=True, constrained_layout=True)
    ax = axes[0]
    ax.step(t, f["import_price_eur_per_kwh"], where="post", lw=0.8, label="import")
    ax.step(t, f["export_price_eur_per_kwh"], where="post", lw=0.8, label="export")
    ax.set_ylabel("price [EUR/kWh]")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(
        f"backtest ({s['forecast']} forecasts, {s['days']:.1f} days): savings "
        f"{s['savings_eur']:.2f} EUR, capture ratio {s.get('capture_ratio', float('nan')):.3f}"
    )
    axes[1].plot(t, 100.0 * f["soc"], lw=0.8, color="tab:green")
    axes[1].set_ylabel("SoC [%]")
    axes[1].set_ylim(0, 100)
    axes[2].step(t, f["battery_power_w"] / 1000.0, where="post", lw=0.8, label="executed")
    axes[2].step(
        t, f["planned_battery_power_w"] / 1000.0, where="post", lw=0.6, alpha=0.6, label="planned"
    )
    axes[2].axhline(0.0, color="k", lw=0.4)
    axes[2].set_ylabel("battery [kW]\n(+ discharge)")
    axes[2].legend(loc="upper right", fontsize=8)
    axes[3].step(t, f["grid_power_w"] / 1000.0, where="post", lw=0.8, color="tab:red")
    axes[3].step(
        t,
        (f["load_w"] - f["pv_w"]) / 1000.0,
        where="post",
        lw=0.6,
        alpha=0.5,
        color="tab:gray",
        label="without battery",
    )
    axes[3].axhline(0.0, color="k", lw=0.4)
    axes[3].set_ylabel("grid [kW]\n(+ import)")
    axes[3].set_xlabel("time (UTC)")
    axes[3].legend(loc="upper right", fontsize=8)
    fig.savefig(os.fspath(path), dpi=100)
    plt.close(fig)
