"""Model forecasts for the running MPC, learnt from the site's own meter readings.

:class:`MeasuredForecastProvider` is what ``[ems] forecast = "model"`` plugs into
:class:`~openbess.ems.mpc.MpcStrategy`, on the twin and on real hardware alike. It holds a
regular series of 15-min intervals: the load and PV the site measured (each interval's mean of
the samples :meth:`MeasuredForecastProvider.observe` received while it ran; an interval with no
sample stays a gap) and the tariff's import and export prices. At each re-plan it forecasts
with the same models as ``openbess backtest`` (:func:`openbess.ems.backtest.default_provider`:
analog-ensemble load, clear-sky PV with a persisted clearness index, published day-ahead
prices and Holt-Winters beyond them), from the intervals that have ended only, and it keeps
its own past forecasts for the plan's residual scenarios.

History: forecasts need days of past measurements. A series to start from (the site's meter
history, the format of ``openbess backtest --inputs``) can be given; on the twin,
:func:`openbess.simulate.build_strategy` passes the twin's own series of the
``[ems] history_days`` before the start, as a real site would import its meter's history.
Without any, the first days are forecast from what has been measured so far (the load as the
mean of the last day, PV as clear-sky PV times a default clearness index).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.config import SiteConfig
from openbess.data.timeseries import DAY_S, to_datetime_index, to_unix_s
from openbess.ems.forecast import FORECAST_COLUMNS, HistoryForecastProvider

FloatArray = npt.NDArray[np.float64]
PriceFunction = Callable[[FloatArray], tuple[FloatArray, FloatArray]]

#: Intervals added at a time when the series must grow [s].
CHUNK_S = 14.0 * DAY_S


class MeasuredForecastProvider:
    """Forecasts for the MPC from the site's measured load and PV (see the module docstring).

    Parameters
    ----------
    config : SiteConfig
        Site configuration (time zone, PV plant, tariff).
    start_s : float
        Start of the run [s, Unix UTC]; the series begins here if there is no history.
    history : pandas.DataFrame or None
        Past intervals with the columns of :data:`openbess.ems.forecast.FORECAST_COLUMNS`
        (UTC index of interval starts, step ``step_s``), ending at or before ``start_s``.
    step_s : float
        Interval of the series [s] (the plan step must be a whole multiple of it).
    prices : callable or None
        ``times_s -> (import, export)`` [EUR/kWh] for the intervals ahead (default: the
        site's tariff, :meth:`openbess.twin.grid.Tariff.for_grid`).
    scenario_days : int
        Days of its own past forecasts kept for residual scenarios; with a history, the
        forecasts of its last ``scenario_days`` days are made at once, so that the first
        plans have their scenarios.

    Raises
    ------
    ValueError
        If the history is not on the ``step_s`` grid or ends after ``start_s``.
    """

    name = "measured"

    def __init__(
        self,
        config: SiteConfig,
        start_s: float,
        *,
        history: pd.DataFrame | None = None,
        step_s: float = 900.0,
        prices: PriceFunction | None = None,
        scenario_days: int = 21,
    ) -> None:
        from openbess.ems.backtest import default_provider
        from openbess.twin.grid import Tariff

        if not (math.isfinite(step_s) and step_s > 0 and DAY_S % step_s == 0):
            raise ValueError(f"step_s must divide a day, got {step_s!r}")
        self.step_s = float(step_s)
        self._prices = prices if prices is not None else Tariff.for_grid(config.grid).prices
        if history is not None and len(history) >= 2:
            frame = history[list(FORECAST_COLUMNS)].astype(np.float64)
            t = to_unix_s(pd.DatetimeIndex(frame.index))
            if not np.allclose(np.diff(t), self.step_s):
                raise ValueError(f"history must be on a {self.step_s:.0f} s grid")
            if float(t[-1]) + self.step_s > start_s + 1e-6:
                raise ValueError("history must end at or before the start of the run")
            origin = float(t[0])
            # the gap up to the start of the run, and the run's first days, are unmeasured
            n_more = math.ceil((start_s + CHUNK_S - float(t[-1])) / self.step_s)
            more = self._blank(float(t[-1]) + self.step_s, max(n_more - 1, 1))
            values = np.concatenate([frame.to_numpy().T, more], axis=1)
        else:
            origin = math.floor(start_s / self.step_s) * self.step_s
            values = self._blank(origin, math.ceil(CHUNK_S / self.step_s))
        self.origin_s = origin
        self._provider: HistoryForecastProvider = default_provider(
            config, _as_frame(origin, self.step_s, values)
        )
        self._provider.keep_days = scenario_days + 1.0
        if history is not None and len(history) >= 2 and scenario_days > 0:
            per_day = round(DAY_S / self.step_s)
            n_hist = len(history)
            n_ahead = math.ceil(2.0 * DAY_S / self.step_s)
            for k in range(max(n_hist - scenario_days * per_day, 1), n_hist + 1):
                self._provider.forecast_arrays(origin + k * self.step_s, n_ahead)
        self._errors: dict[str, dict[str, float | int]] = {}
        self._errors_hour = -1
        self._interval = -1
        self._sums = np.zeros(2)
        self._count = 0
        self.samples = 0
        self.intervals_recorded = 0

    def _blank(self, first_s: float, n: int) -> FloatArray:
        """Intervals from ``first_s``: unmeasured load and PV, the tariff's prices."""
        times = first_s + np.arange(n, dtype=np.float64) * self.step_s
        imp, exp = self._prices(times)
        out = np.full((len(FORECAST_COLUMNS), n), np.nan)
        out[2], out[3] = imp, exp
        return out

    def _ensure(self, until_s: float) -> None:
        """Hold the intervals (prices) up to ``until_s``."""
        p = self._provider
        end_s = self.origin_s + p.n * self.step_s
        if until_s > end_s:
            n = math.ceil((until_s - end_s + CHUNK_S) / self.step_s)
            p.extend(self._blank(end_s, n))

    @property
    def provider(self) -> HistoryForecastProvider:
        """The underlying history provider (its forecasters and error report)."""
        return self._provider

    def errors(self, now_s: float) -> dict[str, dict[str, float | int]]:
        """MAE and skill of the load and PV forecasts the plans got over the last 7 days.

        Recomputed at most once per hour of site time
        (:meth:`HistoryForecastProvider.used_forecast_errors`).

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].

        Returns
        -------
        dict
            ``{"load_w": {"mae", "mae_naive", "skill", "n"}, "pv_w": {...}}`` ([W]; skill
            against the seasonal-naive baseline; NaN while nothing can be scored).
        """
        hour = math.floor(now_s / 3600.0)
        if hour != self._errors_hour:
            report = self._provider.used_forecast_errors(now_s)
            self._errors = {col: e.as_dict() for col, e in report.items()}
            self._errors_hour = hour
        return self._errors

    def measured(self) -> pd.DataFrame:
        """The load and PV intervals held up to the last one stored (NaN: a gap).

        Returns
        -------
        pandas.DataFrame
            ``load_w``, ``pv_w`` [W], UTC index of interval starts.
        """
        last = self._interval if self._interval >= 0 else 0
        n = min(last, self._provider.n)
        values = self._provider.series(n)
        return _as_frame(self.origin_s, self.step_s, values).iloc[:, :2]

    def observe(self, time_s: float, load_w: float, pv_w: float) -> None:
        """Take one meter sample; an interval is stored when the first sample after it comes.

        Parameters
        ----------
        time_s : float
            Sample time [s, Unix UTC].
        load_w, pv_w : float
            Site load and PV power [W]; non-finite samples are skipped.
        """
        if not (math.isfinite(load_w) and math.isfinite(pv_w)):
            return
        index = math.floor((time_s - self.origin_s) / self.step_s + 1e-9)
        if index < 0:
            return
        if index != self._interval:
            self._flush()
            self._interval = index
            self._ensure(self.origin_s + (index + 1) * self.step_s)
        self._sums += (max(load_w, 0.0), max(pv_w, 0.0))
        self._count += 1
        self.samples += 1

    def _flush(self) -> None:
        if self._count and 0 <= self._interval < self._provider.n:
            mean = self._sums / self._count
            self._provider.record(self._interval, float(mean[0]), float(mean[1]))
            self.intervals_recorded += 1
        self._sums[:] = 0.0
        self._count = 0

    def __call__(self, start_s: float, horizon_steps: int, step_s: float) -> pd.DataFrame:
        """Forecast frame for the MPC (see :class:`HistoryForecastProvider`).

        Parameters
        ----------
        start_s : float
            Start of the first step [s, Unix UTC].
        horizon_steps : int
            Number of steps.
        step_s : float
            Step [s], a whole multiple of the series interval.

        Returns
        -------
        pandas.DataFrame
            ``load_w``, ``pv_w`` [W], ``import_price_eur_per_kwh``,
            ``export_price_eur_per_kwh`` [EUR/kWh].
        """
        self._ensure(start_s + (horizon_steps + 1) * step_s)
        return self._provider(start_s, horizon_steps, step_s)

    def residual_scenarios(
        self, now_s: float, n_steps: int, lags_days: Sequence[int] = (1, 2, 3)
    ) -> FloatArray:
        """Load and PV errors of the forecasts made ``lag`` days ago (see the provider)."""
        self._provider.keep_days = max(self._provider.keep_days, max(lags_days, default=0) + 1.0)
        self._ensure(now_s + (n_steps + 1) * self.step_s)
        return self._provider.residual_scenarios(now_s, n_steps, lags_days)


def _as_frame(origin_s: float, step_s: float, values: FloatArray) -> pd.DataFrame:
    times = origin_s + np.arange(values.shape[1], dtype=np.float64) * step_s
    index = to_datetime_index(times).rename("time")
    return pd.DataFrame(dict(zip(FORECAST_COLUMNS, values, strict=True)), index=index)
