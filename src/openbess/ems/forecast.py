"""EMS forecasts of load, PV and prices, from history only, with their error on history.

Every forecaster works on a regular interval series: ``history[i]`` is the average over
``[start_s + i * step_s, start_s + (i + 1) * step_s)``, and a forecast covers the ``n_ahead``
intervals that follow the last one. A forecaster is never handed anything else, so a forecast
made at time ``t`` can only use intervals that ended by ``t`` (no peeking by construction; the
provider enforces the same rule on the series it holds, see :class:`HistoryForecastProvider`).

Forecasters (all :class:`Forecaster`):

- :class:`SeasonalNaiveForecaster`: the value one season earlier (the baseline of every skill
  score);
- :class:`SeasonalProfileForecaster`: the mean of the same local weekday (or day type) and time
  of day over the last N weeks, optionally anchored to the latest measurement;
- :class:`HoltWintersForecaster`: additive exponential smoothing (damped trend, daily season),
  updated incrementally as history grows;
- :class:`GradientBoostingForecaster`: scikit-learn ``HistGradientBoostingRegressor`` on calendar
  features, deterministic weather features (climatological air temperature, clear-sky PV) and
  the value one week earlier; retrained at most daily, anchored to the latest measurement;
- :class:`ClearSkyPvForecaster`: pvlib clear-sky PV of the plant times a persisted clearness
  index (recent, yesterday's and the last days' energy ratios).

Prices: day-ahead prices are published the day before (EPEX SDAC results about 12:45 CET); the
provider uses the published prices where they are known (:func:`day_ahead_known_until_s`) and a
forecaster beyond them.

Errors: :func:`mean_absolute_error`, :func:`skill_score` (``1 - MAE / MAE_naive``) and
:func:`evaluate_forecaster`, which replays a forecaster over a history at rolling origins.
The provider also keeps its own recent forecasts, and
:meth:`HistoryForecastProvider.residual_scenarios` turns what they got wrong on the last days
into scenarios the planner hedges against.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.data.timeseries import DAY_S, WEEK_S, to_unix_s

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Columns of a forecast frame (and of the backtest inputs).
FORECAST_COLUMNS: tuple[str, ...] = (
    "load_w",
    "pv_w",
    "import_price_eur_per_kwh",
    "export_price_eur_per_kwh",
)
PRICE_COLUMNS: tuple[str, ...] = ("import_price_eur_per_kwh", "export_price_eur_per_kwh")

_EPS_S = 1e-6


# --------------------------------------------------------------------------------------------
# Error measures
# --------------------------------------------------------------------------------------------
def mean_absolute_error(actual: npt.ArrayLike, forecast: npt.ArrayLike) -> float:
    """Mean absolute error over the pairs where both values are finite.

    Parameters
    ----------
    actual, forecast : array_like
        Values of the same shape (any unit).

    Returns
    -------
    float
        MAE in the unit of the inputs; NaN if no pair is finite.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    a = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    if a.shape != f.shape:
        raise ValueError(f"actual and forecast shapes differ: {a.shape} vs {f.shape}")
    ok = np.isfinite(a) & np.isfinite(f)
    if not ok.any():
        return math.nan
    return float(np.mean(np.abs(a[ok] - f[ok])))


def skill_score(mae: float, mae_naive: float) -> float:
    """Skill against a baseline: ``1 - MAE / MAE_naive``.

    Parameters
    ----------
    mae : float
        Error of the forecast (>= 0).
    mae_naive : float
        Error of the baseline on the same pairs (>= 0).

    Returns
    -------
    float
        1 for a perfect forecast, 0 for as good as the baseline, negative if worse; NaN if the
        baseline is perfect (``mae_naive == 0``) or either input is NaN.
    """
    if not (math.isfinite(mae) and math.isfinite(mae_naive)) or mae_naive <= 0.0:
        return math.nan
    return 1.0 - mae / mae_naive


@dataclass(frozen=True, slots=True)
class ForecastError:
    """Error of a forecast on history.

    Parameters
    ----------
    mae : float
        Mean absolute error (unit of the series, e.g. [W] or [EUR/kWh]).
    mae_naive : float
        MAE of the seasonal-naive baseline on the same targets.
    skill : float
        ``1 - mae / mae_naive`` (NaN if the baseline is perfect).
    n : int
        Number of (origin, lead) pairs scored.
    mae_by_lead : tuple of float
        MAE per lead step (step 0 = the interval starting at the origin).
    """

    mae: float
    mae_naive: float
    skill: float
    n: int
    mae_by_lead: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, float | int]:
        """The scalar fields as a JSON-friendly dict."""
        return {"mae": self.mae, "mae_naive": self.mae_naive, "skill": self.skill, "n": self.n}


def forecast_error(
    actual: npt.ArrayLike, forecast: npt.ArrayLike, naive: npt.ArrayLike
) -> ForecastError:
    """MAE, baseline MAE and skill of forecasts against actual values.

    Arrays of shape ``(origins, leads)`` (or 1-D for a single lead) are scored over the pairs
    where all three are finite.

    Parameters
    ----------
    actual, forecast, naive : array_like
        Actual values, the forecast and the baseline forecast, same shape.

    Returns
    -------
    ForecastError
        The scores (``mae_by_lead`` filled for 2-D input).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    a = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    b = np.asarray(naive, dtype=np.float64)
    if not (a.shape == f.shape == b.shape):
        raise ValueError(f"shapes differ: actual {a.shape}, forecast {f.shape}, naive {b.shape}")
    ok = np.isfinite(a) & np.isfinite(f) & np.isfinite(b)
    n = int(ok.sum())
    if n == 0:
        return ForecastError(math.nan, math.nan, math.nan, 0)
    err = np.where(ok, np.abs(a - f), 0.0)
    err_b = np.where(ok, np.abs(a - b), 0.0)
    mae = float(err.sum() / n)
    mae_b = float(err_b.sum() / n)
    by_lead: tuple[float, ...] = ()
    if a.ndim == 2:
        counts = ok.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(counts > 0, err.sum(axis=0) / np.maximum(counts, 1), np.nan)
        by_lead = tuple(float(v) for v in per)
    return ForecastError(mae, mae_b, skill_score(mae, mae_b), n, by_lead)


def seasonal_naive(history: npt.ArrayLike, n_ahead: int, season_steps: int) -> FloatArray:
    """Seasonal-naive forecast: each interval takes the value one (or more) seasons earlier.

    Interval ``j`` after the history takes ``history[n + j - k * season_steps]`` with the
    smallest ``k >= 1`` that lands inside the history.

    Parameters
    ----------
    history : array_like
        Past interval values, oldest first.
    n_ahead : int
        Number of intervals to forecast.
    season_steps : int
        Season length in intervals (e.g. 96 for a day of 15-min intervals), >= 1.

    Returns
    -------
    numpy.ndarray
        Forecast of length ``n_ahead``; NaN where the history is shorter than one season.

    Raises
    ------
    ValueError
        If ``season_steps < 1`` or ``n_ahead < 0``.
    """
    if season_steps < 1:
        raise ValueError(f"season_steps must be >= 1, got {season_steps}")
    if n_ahead < 0:
        raise ValueError(f"n_ahead must be >= 0, got {n_ahead}")
    h = np.asarray(history, dtype=np.float64)
    n = h.size
    j = np.arange(n_ahead)
    k = j // season_steps + 1
    src = n + j - k * season_steps
    out = np.full(n_ahead, np.nan)
    ok = src >= 0
    out[ok] = h[src[ok]]
    return out


# --------------------------------------------------------------------------------------------
# Local calendar
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _offset_table(tz: str, first_year: int, last_year: int) -> tuple[FloatArray, FloatArray]:
    """UTC offsets of a time zone from ``first_year - 1`` to ``last_year + 1``.

    Returns the times [s] where an offset starts and the offsets [s] (the first entry starts
    the table).
    """
    index = pd.date_range(
        pd.Timestamp(first_year - 1, 1, 1, tz="UTC"),
        pd.Timestamp(last_year + 2, 1, 1, tz="UTC"),
        freq="h",
        inclusive="left",
    )
    local = index.tz_convert(tz).tz_localize(None)
    offset = (local - index.tz_localize(None)).total_seconds().to_numpy(dtype=np.float64)
    t = index.as_unit("s").asi8.astype(np.float64)
    change = np.flatnonzero(np.diff(offset) != 0.0) + 1
    keep = np.concatenate([[0], change])
    return t[keep], offset[keep]


_YEAR_S = 365.2425 * DAY_S


class LocalCalendar:
    """Local wall-clock features of UTC times: slot of day, weekday, day type.

    DST is handled exactly (offsets from the IANA database, switched on the hour, which is when
    every European transition happens).

    Parameters
    ----------
    tz : str
        IANA time zone, e.g. ``"Europe/Paris"``.
    holidays : iterable of datetime.date
        Local dates treated as Sundays (day type 2).

    Raises
    ------
    ValueError
        If the time zone is unknown.
    """

    def __init__(self, tz: str = "UTC", holidays: Iterable[Any] = ()) -> None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {tz!r}") from err
        self.tz = tz
        days = [pd.Timestamp(d) for d in holidays]
        self._holiday_days = np.asarray(
            sorted({int(d.value // 86_400_000_000_000) for d in days}), dtype=np.int64
        )

    def offset_s(self, time_s: npt.ArrayLike) -> FloatArray:
        """UTC offset of local time at the given times [s] (e.g. 7200 in CEST).

        Parameters
        ----------
        time_s : array_like
            Unix seconds UTC [s].

        Returns
        -------
        numpy.ndarray
            Offsets [s], shape of ``time_s``.
        """
        t = np.asarray(time_s, dtype=np.float64)
        if t.size == 0:
            return np.zeros(t.shape)
        if self.tz == "UTC":
            return np.zeros(t.shape)
        lo = int(float(t.min()) / _YEAR_S + 1970.0)
        hi = int(float(t.max()) / _YEAR_S + 1970.0)
        # tables in blocks of 8 years, so that a year-long run reuses one table
        first = lo - lo % 8
        last = hi - hi % 8 + 7
        tt, oo = _offset_table(self.tz, first, last)
        i = np.searchsorted(tt, t, side="right") - 1
        out: FloatArray = oo[np.maximum(i, 0)]
        return out

    def local_s(self, time_s: npt.ArrayLike) -> FloatArray:
        """Local wall-clock time as seconds since 1970-01-01 local [s]."""
        t = np.asarray(time_s, dtype=np.float64)
        out: FloatArray = t + self.offset_s(t)
        return out

    def slot_of_day(self, time_s: npt.ArrayLike, step_s: float) -> IntArray:
        """Index of the ``step_s`` interval of the local day (0 at local midnight)."""
        local = self.local_s(time_s)
        n = max(1, round(DAY_S / step_s))
        out: IntArray = np.clip(
            np.floor(np.mod(local, DAY_S) / step_s + _EPS_S).astype(np.int64), 0, n - 1
        )
        return out

    def day_number(self, time_s: npt.ArrayLike) -> IntArray:
        """Local day number (days since 1970-01-01 local)."""
        out: IntArray = np.floor(self.local_s(time_s) / DAY_S).astype(np.int64)
        return out

    def weekday(self, time_s: npt.ArrayLike) -> IntArray:
        """Local weekday, 0 = Monday .. 6 = Sunday."""
        out: IntArray = np.mod(self.day_number(time_s) + 3, 7)
        return out

    def day_type(self, time_s: npt.ArrayLike) -> IntArray:
        """0 = working day, 1 = Saturday, 2 = Sunday or holiday."""
        day = self.day_number(time_s)
        wd = np.mod(day + 3, 7)
        out: IntArray = np.where(wd == 6, 2, np.where(wd == 5, 1, 0)).astype(np.int64)
        if self._holiday_days.size:
            out = np.where(np.isin(day, self._holiday_days), 2, out).astype(np.int64)
        return out


# --------------------------------------------------------------------------------------------
# Forecasters
# --------------------------------------------------------------------------------------------
def _check_args(history: npt.ArrayLike, step_s: float, n_ahead: int) -> FloatArray:
    if not (step_s > 0.0 and math.isfinite(step_s)):
        raise ValueError(f"step_s must be > 0, got {step_s!r}")
    if n_ahead < 0:
        raise ValueError(f"n_ahead must be >= 0, got {n_ahead}")
    h = np.asarray(history, dtype=np.float64)
    if h.ndim != 1:
        raise ValueError(f"history must be 1-D, got shape {h.shape}")
    return h


def _grid(start_s: float, step_s: float, first: int, n: int) -> FloatArray:
    """Start times of ``n`` intervals from interval ``first`` of a grid [s]."""
    out: FloatArray = start_s + (first + np.arange(n, dtype=np.float64)) * step_s
    return out


def _steps(duration_s: float, step_s: float, what: str) -> int:
    n = duration_s / step_s
    if abs(n - round(n)) > 1e-9 or round(n) < 1:
        raise ValueError(f"{what} ({duration_s} s) must be a whole number of steps ({step_s} s)")
    return round(n)


class _GridCache:
    """Values of a function of interval start times, cached on one regular grid.

    Parameters
    ----------
    fn : callable
        ``(start_times_s, step_s) -> values`` (deterministic: calendar keys, clear-sky PV).
    chunk_s : float
        Extra span computed ahead on a miss [s].
    """

    def __init__(
        self, fn: Callable[[FloatArray, float], npt.NDArray[Any]], chunk_s: float = 8.0 * DAY_S
    ) -> None:
        self.fn = fn
        self.chunk_s = chunk_s
        self._key: tuple[float, float] = (math.nan, math.nan)
        self._lo = 0
        self._values: npt.NDArray[Any] = np.zeros(0)

    def get(self, start_s: float, step_s: float, lo: int, hi: int) -> npt.NDArray[Any]:
        """Values of the grid intervals ``lo .. hi - 1`` (grid ``start_s + i * step_s``)."""
        if hi <= lo:
            return self._values[:0]
        cached_hi = self._lo + self._values.size
        if self._key != (start_s, step_s) or lo < self._lo or hi > cached_hi:
            chunk = max(1, round(self.chunk_s / step_s))
            new_lo = lo if self._key != (start_s, step_s) or lo < self._lo else self._lo
            new_lo = max(new_lo, hi - 8 * chunk)  # keep the cache bounded
            new_lo = min(new_lo, lo)
            new_hi = hi + chunk
            self._values = np.asarray(
                self.fn(_grid(start_s, step_s, new_lo, new_hi - new_lo), step_s)
            )
            self._lo = new_lo
            self._key = (start_s, step_s)
        return self._values[lo - self._lo : hi - self._lo]


class Forecaster(ABC):
    """A forecaster of one interval series (see the module docstring for the contract)."""

    name: str = "forecaster"
    #: Clip forecasts at 0 (load and PV powers).
    nonnegative: bool = False

    @abstractmethod
    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        """Forecast from validated arguments."""

    def forecast(
        self, history: npt.ArrayLike, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        """Forecast the ``n_ahead`` intervals after the history.

        Parameters
        ----------
        history : array_like
            Past interval averages, oldest first; ``history[i]`` covers
            ``[start_s + i * step_s, start_s + (i + 1) * step_s)``. NaN marks a gap.
        start_s : float
            Start of the first history interval [s, Unix UTC].
        step_s : float
            Interval length [s].
        n_ahead : int
            Number of intervals to forecast, starting at ``start_s + len(history) * step_s``.

        Returns
        -------
        numpy.ndarray
            Forecast values (unit of the history), length ``n_ahead``, finite.
        """
        h = _check_args(history, step_s, n_ahead)
        if n_ahead == 0:
            return np.zeros(0)
        out = self._forecast(h, float(start_s), float(step_s), int(n_ahead))
        if not np.isfinite(out).all():
            out = np.nan_to_num(out, nan=_fallback(h), posinf=0.0, neginf=0.0)
        if self.nonnegative:
            out = np.maximum(out, 0.0)
        return out


def _fallback(h: FloatArray) -> float:
    """Value used where a model has nothing: the mean of the last day of finite history."""
    tail = h[-96:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if tail.size else 0.0


def _anchor(
    forecast: FloatArray,
    residual: float,
    step_s: float,
    tau_s: float | None,
) -> FloatArray:
    """Add a residual that decays exponentially with the lead time (tau_s)."""
    if tau_s is None or not math.isfinite(residual) or residual == 0.0:
        return forecast
    lead_s = (np.arange(forecast.size) + 0.5) * step_s
    out: FloatArray = forecast + residual * np.exp(-lead_s / tau_s)
    return out


@dataclass
class SeasonalNaiveForecaster(Forecaster):
    """The value one season earlier (one week by default): the baseline of every skill score.

    Parameters
    ----------
    season_s : float
        Season length [s] (a whole number of steps).
    nonnegative : bool
        Clip at 0.
    """

    season_s: float = WEEK_S
    nonnegative: bool = False
    name: str = "seasonal_naive"

    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        return seasonal_naive(history, n_ahead, _steps(self.season_s, step_s, "season_s"))


@dataclass
class SeasonalProfileForecaster(Forecaster):
    """Mean of the same local weekday (or day type) and time of day over the last N weeks.

    Parameters
    ----------
    weeks : int
        Number of past weeks averaged, >= 1.
    by : {"weekday", "day_type", "day"}
        ``weekday``: same weekday (N values per slot); ``day_type``: working days, Saturdays,
        Sundays/holidays (up to 5N values); ``day``: every day (7N values).
    tz : str
        Time zone of the wall clock.
    holidays : tuple of datetime.date
        Local dates treated as Sundays.
    anchor_tau_s : float or None
        If set, the gap between the latest measured intervals and the profile is added to the
        forecast, decaying with this time constant [s].
    anchor_s : float
        Length of history used for that gap [s].
    nonnegative : bool
        Clip at 0.
    """

    weeks: int = 4
    by: Literal["weekday", "day_type", "day"] = "weekday"
    tz: str = "UTC"
    holidays: tuple[Any, ...] = ()
    anchor_tau_s: float | None = None
    anchor_s: float = 3600.0
    nonnegative: bool = False
    name: str = "seasonal_profile"
    _key_cache: _GridCache | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the arguments."""
        if self.weeks < 1:
            raise ValueError(f"weeks must be >= 1, got {self.weeks}")
        if self.by not in ("weekday", "day_type", "day"):
            raise ValueError(f"by must be 'weekday', 'day_type' or 'day', got {self.by!r}")
        calendar = LocalCalendar(self.tz, self.holidays)
        by = self.by

        def keys(time_s: FloatArray, step_s: float) -> IntArray:
            slots = max(1, round(DAY_S / step_s))
            slot = calendar.slot_of_day(time_s, step_s)
            if by == "weekday":
                out: IntArray = calendar.weekday(time_s) * slots + slot
            elif by == "day_type":
                out = calendar.day_type(time_s) * slots + slot
            else:
                out = slot
            return out

        self._key_cache = _GridCache(keys)

    def _n_keys(self, step_s: float) -> int:
        slots = max(1, round(DAY_S / step_s))
        return {"weekday": 7, "day_type": 3, "day": 1}[self.by] * slots

    def profile(
        self, history: FloatArray, start_s: float, step_s: float, idx: IntArray
    ) -> FloatArray:
        """Profile value of grid intervals, from the last ``weeks`` of the history.

        Parameters
        ----------
        history : numpy.ndarray
            Past interval averages.
        start_s : float
            Start of the first history interval [s].
        step_s : float
            Interval length [s].
        idx : numpy.ndarray of int
            Grid indices of the intervals to evaluate (0 = the first history interval).

        Returns
        -------
        numpy.ndarray
            Profile values (NaN where no history matches and nothing falls back).
        """
        cache = self._key_cache
        if cache is None:  # pragma: no cover - set in __post_init__
            raise RuntimeError("key cache missing")
        n_window = min(history.size, round(self.weeks * WEEK_S / step_s))
        lo = history.size - n_window
        window = history[lo:]
        hi = max(history.size, int(idx.max()) + 1 if idx.size else 0)
        first = min(lo, int(idx.min()) if idx.size else lo)
        all_keys = np.asarray(cache.get(start_s, step_s, first, hi), dtype=np.int64)
        ok = np.isfinite(window)
        keys = all_keys[lo - first : history.size - first][ok]
        n_keys = self._n_keys(step_s)
        sums = np.bincount(keys, weights=window[ok], minlength=n_keys)
        counts = np.bincount(keys, minlength=n_keys)
        slots = max(1, round(DAY_S / step_s))
        slot_sums = sums.reshape(-1, slots).sum(axis=0)
        slot_counts = counts.reshape(-1, slots).sum(axis=0)
        target_keys = all_keys[idx - first]
        with np.errstate(invalid="ignore", divide="ignore"):
            by_key = sums / counts
            by_slot = slot_sums / slot_counts
        out: FloatArray = by_key[target_keys]
        missing = ~np.isfinite(out)
        if missing.any():
            out[missing] = by_slot[target_keys[missing] % slots]
        return out

    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        n = history.size
        if self.anchor_tau_s is None:
            return self.profile(history, start_s, step_s, np.arange(n, n + n_ahead))
        m = min(n, max(1, round(self.anchor_s / step_s)))
        # the profile leaves out the anchoring window, so that the gap is not biased by it
        both = self.profile(history[: n - m], start_s, step_s, np.arange(n - m, n + n_ahead))
        gap = history[n - m :] - both[:m]
        gap = gap[np.isfinite(gap)]
        residual = float(gap.mean()) if gap.size else math.nan
        return _anchor(both[m:], residual, step_s, self.anchor_tau_s)


@dataclass
class AnalogForecaster(Forecaster):
    """What followed on the past days that looked most like the last hour (analog ensemble).

    At each forecast the last ``match_s`` of history is compared with the same local time of
    day on each of the last ``days`` days; the ``k`` closest days (mean squared difference)
    are the analogs. Their continuations, shifted by the gap between the last measured
    interval and theirs (decaying with ``anchor_tau_s``), are averaged, and the average is
    blended into the ``base`` profile with a weight ``exp(-lead / blend_tau_s)``. A load that
    has just started (a water heater, a heat pump's defrost) is thus carried for as long as it
    ran on the days it started the same way, instead of a fixed time constant.

    Parameters
    ----------
    days : int
        Past days searched, >= 1.
    k : int
        Analogs averaged, >= 1.
    match_s : float
        Length of history compared [s].
    blend_tau_s : float
        Time constant of the weight of the analogs against the base profile [s].
    anchor_tau_s : float or None
        Time constant of the level shift to the last measured interval [s]; None for none.
    base : SeasonalProfileForecaster
        Forecast for long leads (and where no analog has a continuation).
    tz : str
        Time zone of the wall clock (days are matched at the same local time).
    nonnegative : bool
        Clip at 0.
    """

    days: int = 56
    k: int = 10
    match_s: float = 3600.0
    blend_tau_s: float = 2.0 * 3600.0
    anchor_tau_s: float | None = 1800.0
    base: SeasonalProfileForecaster = field(
        default_factory=lambda: SeasonalProfileForecaster(weeks=2, by="day")
    )
    tz: str = "UTC"
    nonnegative: bool = False
    name: str = "analog"
    _calendar: LocalCalendar = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the arguments."""
        if self.days < 1 or self.k < 1:
            raise ValueError(f"days and k must be >= 1, got {self.days}, {self.k}")
        if not (self.match_s > 0 and self.blend_tau_s > 0):
            raise ValueError("match_s and blend_tau_s must be > 0")
        self._calendar = LocalCalendar(self.tz)

    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        n = history.size
        base = self.base.forecast(history, start_s, step_s, n_ahead)
        m = max(1, round(self.match_s / step_s))
        per_day = max(1, round(DAY_S / step_s))
        if n < per_day + m:
            return base
        now_s = start_s + n * step_s
        lags = np.arange(1, self.days + 1, dtype=np.float64)
        then_s = now_s - lags * DAY_S
        off = self._calendar.offset_s(np.concatenate([[now_s], then_s]))
        # end (exclusive) of the same local time on each past day
        ends = (
            n
            - lags.astype(np.int64) * per_day
            + np.round((off[0] - off[1:]) / step_s).astype(np.int64)
        )
        ends = ends[(ends - m >= 0) & (ends < n)]
        if ends.size == 0:
            return base
        recent = history[n - m :]
        windows = history[ends[:, None] - m + np.arange(m)[None, :]]
        sq = (windows - recent[None, :]) ** 2
        both = np.isfinite(sq)
        pairs = both.sum(axis=1)
        dist = np.where(both, sq, 0.0).sum(axis=1) / np.maximum(pairs, 1)
        ok = (pairs > 0) & np.isfinite(windows[:, -1])
        if not ok.any() or not math.isfinite(float(recent[-1])):
            return base
        ends, dist, last = ends[ok], dist[ok], windows[ok, -1]
        pick = np.argsort(dist, kind="stable")[: self.k]
        ends, last = ends[pick], last[pick]
        idx = ends[:, None] + np.arange(n_ahead)[None, :]
        cont = np.full(idx.shape, np.nan)
        seen = idx < n
        cont[seen] = history[idx[seen]]
        lead_s = (np.arange(n_ahead) + 0.5) * step_s
        if self.anchor_tau_s is not None:
            shift = (float(recent[-1]) - last)[:, None] * np.exp(-lead_s / self.anchor_tau_s)
            cont = cont + shift
        with np.errstate(invalid="ignore"):
            count = np.isfinite(cont).sum(axis=0)
            analog = np.where(count > 0, np.nansum(cont, axis=0) / np.maximum(count, 1), base)
        w = np.exp(-lead_s / self.blend_tau_s) * (count > 0)
        out: FloatArray = w * analog + (1.0 - w) * base
        return out


@dataclass
class HoltWintersForecaster(Forecaster):
    """Additive Holt-Winters (damped trend, one season) updated incrementally.

    The state (level, trend, season) is carried from call to call while the history only
    grows; any other history (shorter, another start) restarts it from ``init_days``.
    The season is aligned to the UTC interval grid (a daily season in UTC).

    Parameters
    ----------
    alpha, beta, gamma : float
        Smoothing of level, trend and season, in [0, 1].
    phi : float
        Trend damping, in [0, 1].
    season_s : float
        Season length [s].
    init_days : float
        Days of history used for the initial state (the last ``init_days`` before the first
        call's end; seasons earlier than that are ignored).
    nonnegative : bool
        Clip at 0.
    """

    alpha: float = 0.1
    beta: float = 0.0
    gamma: float = 0.1
    phi: float = 0.9
    season_s: float = DAY_S
    init_days: float = 14.0
    nonnegative: bool = False
    name: str = "holt_winters"
    _state: tuple[float, float, float, float, int] | None = field(default=None, repr=False)
    _season: FloatArray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        """Check the arguments."""
        for k in ("alpha", "beta", "gamma", "phi"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{k} must be in [0, 1], got {v!r}")

    def _init(self, history: FloatArray, start_s: float, step_s: float, m: int) -> int:
        n_init = min(history.size, max(m, round(self.init_days * DAY_S / step_s)))
        first = history.size - n_init
        seg = history[first:]
        level = float(np.nanmean(seg)) if np.isfinite(seg).any() else 0.0
        pos = (round(start_s / step_s) + first + np.arange(n_init)) % m
        ok = np.isfinite(seg)
        sums = np.bincount(pos[ok], weights=seg[ok] - level, minlength=m)
        counts = np.bincount(pos[ok], minlength=m)
        with np.errstate(invalid="ignore", divide="ignore"):
            season = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        self._season = season
        self._state = (start_s, step_s, level, 0.0, history.size)
        return history.size

    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        m = _steps(self.season_s, step_s, "season_s")
        st = self._state
        if (
            st is None
            or self._season is None
            or st[0] != start_s
            or st[1] != step_s
            or st[4] > history.size
        ):
            self._init(history, start_s, step_s, m)
        st = self._state
        season = self._season
        if st is None or season is None:  # pragma: no cover - set by _init
            raise RuntimeError("Holt-Winters state missing")
        _, _, level, trend, done = st
        a, b, g, phi = self.alpha, self.beta, self.gamma, self.phi
        base = round(start_s / step_s)
        for i in range(done, history.size):
            y = history[i]
            if not math.isfinite(y):
                level = level + phi * trend
                trend = phi * trend
                continue
            p = (base + i) % m
            new_level = a * (y - season[p]) + (1.0 - a) * (level + phi * trend)
            trend = b * (new_level - level) + (1.0 - b) * phi * trend
            season[p] = g * (y - new_level) + (1.0 - g) * season[p]
            level = new_level
        self._state = (start_s, step_s, level, trend, history.size)
        h = np.arange(1, n_ahead + 1)
        if phi == 1.0:
            damp = h.astype(np.float64)
        else:
            damp = np.asarray(phi * (1.0 - phi**h) / (1.0 - phi), dtype=np.float64)
        pos = (base + history.size + np.arange(n_ahead)) % m
        out: FloatArray = level + damp * trend + season[pos]
        return out


def climatological_air_temperature_degc(
    time_s: npt.ArrayLike, longitude_deg: float = 6.86
) -> FloatArray:
    """Climatological air temperature of north-east France (a deterministic weather feature).

    Parameters
    ----------
    time_s : array_like
        Unix seconds UTC [s].
    longitude_deg : float
        Longitude for local solar time [deg].

    Returns
    -------
    numpy.ndarray
        Air temperature [degC] (monthly normal plus a diurnal swing of +-4 K).
    """
    from openbess.twin.pv import NE_FRANCE_MONTHLY_AIR_TEMPERATURE_DEGC, air_temperature_degc

    return air_temperature_degc(time_s, longitude_deg, NE_FRANCE_MONTHLY_AIR_TEMPERATURE_DEGC, 4.0)


#: A deterministic feature function: interval start times [s] and step [s] -> (n, k) matrix.
FeatureFunction = Callable[[FloatArray, float], FloatArray]


@dataclass
class GradientBoostingForecaster(Forecaster):
    """Gradient boosting (scikit-learn ``HistGradientBoostingRegressor``) on calendar features.

    Features of a target interval: local slot of day, weekday, day type, day of year (sine and
    cosine), the deterministic weather features of ``weather`` (no weather archive is bundled,
    so by default the climatological air temperature), and the value one week earlier. The
    model is trained on the last ``train_weeks`` of history, retrained when ``retrain_s`` has
    passed; at each training it predicts the whole span it will be asked for until the next
    one, so a forecast costs a lookup. The gap between the latest measured intervals and the
    model is added, decaying with ``anchor_tau_s``.

    Parameters
    ----------
    tz : str
        Time zone of the wall clock.
    holidays : tuple of datetime.date
        Local dates treated as Sundays.
    weather : callable or None
        ``(start_times_s, step_s) -> (n, k)`` deterministic features; None for the climatological
        air temperature.
    train_weeks : float
        Training window [weeks].
    retrain_s : float
        Minimum time between trainings [s] (>= 1 day keeps it cheap).
    max_horizon_s : float
        Longest forecast asked for [s] (for the precomputed span).
    anchor_tau_s : float or None
        Time constant of the anchoring to the latest measurement [s]; None for none.
    anchor_s : float
        History used for the anchoring gap [s].
    max_iter, max_leaf_nodes, learning_rate : int, int, float
        Boosting settings.
    seed : int
        Random state.
    nonnegative : bool
        Clip at 0.
    """

    tz: str = "UTC"
    holidays: tuple[Any, ...] = ()
    weather: FeatureFunction | None = None
    train_weeks: float = 8.0
    retrain_s: float = DAY_S
    max_horizon_s: float = 2.0 * DAY_S
    anchor_tau_s: float | None = 3.0 * 3600.0
    anchor_s: float = 3600.0
    max_iter: int = 60
    max_leaf_nodes: int = 15
    learning_rate: float = 0.1
    seed: int = 0
    nonnegative: bool = False
    name: str = "gradient_boosting"
    _fit_end: int = field(default=-1, repr=False)
    _fit_key: tuple[float, float] = field(default=(math.nan, math.nan), repr=False)
    _pred_start: int = field(default=0, repr=False)
    _pred: FloatArray | None = field(default=None, repr=False)
    n_trainings: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        """Check the arguments."""
        if not self.retrain_s > 0.0:
            raise ValueError(f"retrain_s must be > 0, got {self.retrain_s!r}")
        if not self.train_weeks >= 1.0:
            raise ValueError(f"train_weeks must be >= 1, got {self.train_weeks!r}")

    def _features(
        self, history: FloatArray, start_s: float, step_s: float, idx: IntArray
    ) -> FloatArray:
        t = np.asarray(start_s + idx * step_s, dtype=np.float64)
        cal = LocalCalendar(self.tz, self.holidays)
        local = cal.local_s(t)
        doy = np.mod(local / DAY_S, 365.2425) / 365.2425 * 2.0 * np.pi
        week = round(WEEK_S / step_s)
        lag_idx = idx - week
        lag = np.full(idx.size, np.nan)
        ok = (lag_idx >= 0) & (lag_idx < history.size)
        lag[ok] = history[lag_idx[ok]]
        cols = [
            cal.slot_of_day(t, step_s).astype(np.float64),
            cal.weekday(t).astype(np.float64),
            cal.day_type(t).astype(np.float64),
            np.sin(doy),
            np.cos(doy),
            lag,
        ]
        weather = (
            self.weather(t, step_s)
            if self.weather is not None
            else climatological_air_temperature_degc(t + 0.5 * step_s)[:, None]
        )
        w = np.asarray(weather, dtype=np.float64).reshape(idx.size, -1)
        return np.column_stack([*cols, w])

    def _train(self, history: FloatArray, start_s: float, step_s: float) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor  # type: ignore[import-untyped]
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        n = history.size
        n_train = min(n, round(self.train_weeks * WEEK_S / step_s))
        idx = np.arange(n - n_train, n, dtype=np.int64)
        y = history[idx]
        ok = np.isfinite(y)
        horizon = round((self.retrain_s + self.max_horizon_s) / step_s) + 1
        future = np.arange(n, n + horizon, dtype=np.int64)
        # at least a day of targets with their value one week earlier, else the recent mean
        lagged = ok & (idx >= round(WEEK_S / step_s))
        if lagged.sum() < round(DAY_S / step_s):
            self._pred = np.full(horizon, _fallback(history))
        else:
            x = self._features(history, start_s, step_s, idx)
            model = HistGradientBoostingRegressor(
                max_iter=self.max_iter,
                max_leaf_nodes=self.max_leaf_nodes,
                learning_rate=self.learning_rate,
                random_state=self.seed,
                categorical_features=None,
            )
            tail = round(self.anchor_s / step_s)
            span = np.arange(max(0, n - tail), n + horizon, dtype=np.int64)
            x_span = self._features(history, start_s, step_s, span)
            # one thread: OpenMP threads on a shared 2-core machine slow a small fit 10-50x
            with threadpool_limits(limits=1):
                model.fit(x[ok], y[ok])
                pred = np.asarray(model.predict(x_span), dtype=np.float64)
            self._pred = pred
            future = span
            self.n_trainings += 1
        self._pred_start = int(future[0])
        self._fit_end = n
        self._fit_key = (start_s, step_s)

    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        n = history.size
        retrain = round(self.retrain_s / step_s)
        if (
            self._pred is None
            or self._fit_key != (start_s, step_s)
            or n < self._fit_end
            or n - self._fit_end >= retrain
            or n + n_ahead > self._pred_start + self._pred.size
        ):
            self._train(history, start_s, step_s)
        pred = self._pred
        if pred is None:  # pragma: no cover - set by _train
            raise RuntimeError("model prediction missing")
        out = pred[n - self._pred_start : n - self._pred_start + n_ahead].copy()
        if self.anchor_tau_s is None:
            return out
        m = round(self.anchor_s / step_s)
        lo = max(n - m, self._pred_start)
        if lo >= n:
            return out
        resid = history[lo:n] - pred[lo - self._pred_start : n - self._pred_start]
        residual = float(np.nanmean(resid)) if np.isfinite(resid).any() else math.nan
        return _anchor(out, residual, step_s, self.anchor_tau_s)


#: Clear-sky PV: interval start times [s] and step [s] -> interval-average clear-sky power [W].
ClearSkyFunction = Callable[[FloatArray, float], FloatArray]


class ClearSkyPv:
    """Clear-sky AC power of a PV plant (pvlib chain of :mod:`openbess.twin.pv`, k = 1).

    Parameters
    ----------
    plant : openbess.twin.pv.PvPlant
        The plant (location, orientation, size, inverter).
    """

    def __init__(self, plant: Any) -> None:
        from openbess.twin.pv import PvModel

        times = pd.date_range("2024-01-01", periods=2 * 7 * 48, freq="30min", tz="UTC")
        weather = pd.DataFrame({"clearness_index": np.ones(times.size)}, index=times)
        self.plant = plant
        self._model = PvModel(plant, source="clearsky_index", weather=weather, cache_step_s=300.0)

    def __call__(self, start_s: FloatArray, step_s: float) -> FloatArray:
        """Interval-average clear-sky power [W] (mean of four points in each interval)."""
        t = np.asarray(start_s, dtype=np.float64)
        offsets = (np.arange(4) + 0.5) / 4.0 * step_s
        out: FloatArray = (
            self._model.power_w((t[:, None] + offsets[None, :]).ravel())
            .reshape(t.size, 4)
            .mean(axis=1)
        )
        return out


@dataclass
class ClearSkyPvForecaster(Forecaster):
    """PV = clear-sky PV of the plant times a persisted clearness index.

    The clearness index is an energy ratio (measured over clear-sky PV): ``k_recent`` over the
    last ``recent_s`` (when the sun is up enough), ``k_day`` over the last day and ``k_days``
    over the last ``days`` days. The forecast index is
    ``k_base + (k_recent - k_base) * exp(-lead / tau_s)`` with
    ``k_base = day_weight * k_day + (1 - day_weight) * k_days``.

    Parameters
    ----------
    clear_sky : callable
        ``(start_times_s, step_s) -> clear-sky power [W]`` (e.g. :class:`ClearSkyPv`).
    recent_s : float
        Window of the recent index [s].
    tau_s : float
        Decay of the recent index with the lead time [s].
    days : float
        Window of the multi-day index [days].
    day_weight : float
        Weight of the last day in the base index, in [0, 1].
    max_index : float
        Cap on the index.
    shape_days : float or None
        If set, the clear-sky power is also corrected by time of day (UTC interval of the
        day): the ratio of measured to clear-sky energy in that interval over the last
        ``shape_days`` days, relative to the ratio over all intervals. This learns what the
        clear-sky model of the plant gets wrong at some hours (shading, orientation) [days].
    """

    clear_sky: ClearSkyFunction | None = None
    recent_s: float = 3600.0
    tau_s: float = 2.0 * 3600.0
    days: float = 7.0
    day_weight: float = 0.3
    max_index: float = 1.3
    shape_days: float | None = None
    nonnegative: bool = True
    name: str = "clear_sky_pv"
    _cache: _GridCache | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the arguments."""
        if self.clear_sky is None:
            raise ValueError("ClearSkyPvForecaster needs a clear_sky function")
        if not 0.0 <= self.day_weight <= 1.0:
            raise ValueError(f"day_weight must be in [0, 1], got {self.day_weight!r}")
        self._cache = _GridCache(self.clear_sky)

    def _forecast(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int
    ) -> FloatArray:
        cache = self._cache
        if cache is None:  # pragma: no cover - set in __post_init__
            raise ValueError("no clear_sky function")
        n = history.size
        n_days = min(n, round(self.days * DAY_S / step_s))
        clear = np.asarray(cache.get(start_s, step_s, n - n_days, n + n_ahead), dtype=np.float64)
        past, future = clear[:n_days], clear[n_days:]
        seg = history[n - n_days :]
        peak = max(float(clear.max()) if clear.size else 0.0, 1.0)

        def ratio(m: int, min_fraction: float) -> float:
            if m <= 0:
                return math.nan
            h, c = seg[-m:], past[-m:]
            ok = np.isfinite(h)
            e_clear = float(c[ok].sum())
            if e_clear < min_fraction * peak * m:
                return math.nan
            return float(np.clip(h[ok].sum() / e_clear, 0.0, self.max_index))

        k_days = ratio(n_days, 0.02)
        k_day = ratio(min(n_days, round(DAY_S / step_s)), 0.02)
        k_recent = ratio(min(n_days, max(1, round(self.recent_s / step_s))), 0.1)
        if not math.isfinite(k_days):
            k_days = 0.7
        if not math.isfinite(k_day):
            k_day = k_days
        k_base = self.day_weight * k_day + (1.0 - self.day_weight) * k_days
        lead_s = (np.arange(n_ahead) + 0.5) * step_s
        k = np.full(n_ahead, k_base)
        if math.isfinite(k_recent):
            k = k_base + (k_recent - k_base) * np.exp(-lead_s / self.tau_s)
        out: FloatArray = np.clip(k, 0.0, self.max_index) * future
        if self.shape_days:
            out = out * self._shape(history, start_s, step_s, n_ahead, cache)
        return out

    def _shape(
        self, history: FloatArray, start_s: float, step_s: float, n_ahead: int, cache: _GridCache
    ) -> FloatArray:
        """Time-of-day correction of the clear-sky power (see ``shape_days``), in [0.3, 2]."""
        n = history.size
        per_day = max(1, round(DAY_S / step_s))
        m = min(n, round(float(self.shape_days or 0.0) * per_day))
        if m < per_day:
            return np.ones(n_ahead)
        past = np.asarray(cache.get(start_s, step_s, n - m, n), dtype=np.float64)
        h = history[n - m :]
        first = round(start_s / step_s)
        slot = (first + np.arange(n - m, n)) % per_day
        ok = np.isfinite(h)
        measured = np.bincount(slot[ok], weights=h[ok], minlength=per_day)
        clear = np.bincount(slot[ok], weights=past[ok], minlength=per_day)
        total = measured.sum() / max(clear.sum(), 1e-9)
        with np.errstate(invalid="ignore", divide="ignore"):
            shape = np.where(
                clear > 0.02 * max(clear.max(), 1e-9), measured / clear / max(total, 1e-9), 1.0
            )
        shape = np.clip(shape, 0.3, 2.0)
        out: FloatArray = shape[(first + np.arange(n, n + n_ahead)) % per_day]
        return out


# --------------------------------------------------------------------------------------------
# Day-ahead price publication
# --------------------------------------------------------------------------------------------
def day_ahead_known_until_s(
    now_s: npt.ArrayLike,
    *,
    publish_hour: float = 13.0,
    tz: str = "Europe/Berlin",
) -> FloatArray:
    """End of the span whose day-ahead prices are published at ``now_s``.

    Before ``publish_hour`` (local) the prices of today are known, after it also tomorrow's.

    Parameters
    ----------
    now_s : array_like
        Times [s, Unix UTC].
    publish_hour : float
        Local hour when tomorrow's prices are out (EPEX day-ahead: about 12:45 CET) [h].
    tz : str
        Time zone of the market day (CET/CEST for the European day-ahead market).

    Returns
    -------
    numpy.ndarray
        Unix seconds UTC [s] of the local midnight that ends the known span.
    """
    cal = LocalCalendar(tz)
    t = np.asarray(now_s, dtype=np.float64)
    local = cal.local_s(t)
    day = np.floor(local / DAY_S)
    after = np.mod(local, DAY_S) >= publish_hour * 3600.0 - _EPS_S
    end_local = (day + 1.0 + after) * DAY_S
    # local midnight -> UTC: subtract the offset in force just before that midnight
    out: FloatArray = end_local - cal.offset_s(end_local - cal.offset_s(t) - 1.0)
    return out


# --------------------------------------------------------------------------------------------
# Providers
# --------------------------------------------------------------------------------------------
def _regular_frame(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[float, float, FloatArray]:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"series needs columns {list(columns)}, missing {missing}")
    t = to_unix_s(pd.DatetimeIndex(frame.index))
    if t.size < 2:
        raise ValueError("series needs at least two intervals")
    steps = np.diff(t)
    if not np.allclose(steps, steps[0]) or steps[0] <= 0:
        raise ValueError("series must be on a regular, strictly increasing time grid")
    values = frame[list(columns)].to_numpy(dtype=np.float64).T.copy()
    return float(t[0]), float(steps[0]), values


class PerfectForecastProvider:
    """Perfect foresight: the actual values (peeks on purpose; the reference of a backtest).

    Parameters
    ----------
    actuals : pandas.DataFrame
        Regular series with the columns of :data:`FORECAST_COLUMNS`, UTC index.
    """

    name = "perfect"

    def __init__(self, actuals: pd.DataFrame) -> None:
        self.start_s, self.step_s, self._values = _regular_frame(actuals, FORECAST_COLUMNS)

    @property
    def n(self) -> int:
        """Number of intervals held."""
        return int(self._values.shape[1])

    def forecast_arrays(self, now_s: float, n_steps: int) -> FloatArray:
        """Values of the ``n_steps`` data intervals from ``now_s``: shape (4, n) (NaN-padded)."""
        k = math.floor((now_s - self.start_s) / self.step_s + _EPS_S)
        out = np.full((len(FORECAST_COLUMNS), n_steps), np.nan)
        lo, hi = max(k, 0), min(k + n_steps, self.n)
        if hi > lo:
            out[:, lo - k : hi - k] = self._values[:, lo:hi]
        return out

    def __call__(self, now_s: float, horizon_steps: int, step_s: float) -> pd.DataFrame:
        """Forecast frame, see :meth:`HistoryForecastProvider.__call__`."""
        return _as_frame(self, now_s, horizon_steps, step_s)


def _as_frame(
    provider: PerfectForecastProvider | HistoryForecastProvider,
    now_s: float,
    horizon_steps: int,
    step_s: float,
) -> pd.DataFrame:
    if horizon_steps < 1:
        raise ValueError(f"horizon_steps must be >= 1, got {horizon_steps}")
    ratio = _steps(step_s, provider.step_s, "step_s")
    k = math.floor((now_s - provider.start_s) / provider.step_s + _EPS_S)
    arrays = provider.forecast_arrays(now_s, horizon_steps * ratio)
    agg = arrays.reshape(len(FORECAST_COLUMNS), horizon_steps, ratio).mean(axis=2)
    t0 = provider.start_s + k * provider.step_s
    index = pd.DatetimeIndex(
        pd.to_datetime(
            np.round((t0 + np.arange(horizon_steps) * step_s) * 1e9).astype(np.int64),
            unit="ns",
            utc=True,
        ),
        name="time",
    )
    return pd.DataFrame({c: agg[i] for i, c in enumerate(FORECAST_COLUMNS)}, index=index)


@dataclass
class ProviderErrorReport:
    """Error of each forecaster of a provider on history (see :meth:`error_report`)."""

    errors: dict[str, ForecastError]
    origins: int
    horizon_steps: int

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        """JSON-friendly form: column -> {mae, mae_naive, skill, n}."""
        return {k: v.as_dict() for k, v in self.errors.items()}


class HistoryForecastProvider:
    """Forecasts of load, PV and prices for the MPC, made from the past of a series only.

    The provider holds a regular series (the measurements as they arrive; in a backtest the
    whole input series). At ``now_s`` the load and PV forecasters see only the intervals that
    ended by ``now_s``; the price columns see the published day-ahead prices (up to
    :func:`day_ahead_known_until_s`) and are forecast beyond them.

    Parameters
    ----------
    actuals : pandas.DataFrame
        Regular series with the columns of :data:`FORECAST_COLUMNS`, UTC index.
    load : Forecaster
        Load forecaster [W].
    pv : Forecaster
        PV forecaster [W].
    price : Forecaster
        Forecaster of each price column beyond the published span [EUR/kWh].
    price_publish_hour : float or None
        Local hour of the day-ahead publication; None if no price is known ahead (every price
        forecast).
    price_tz : str
        Time zone of the market day.
    keep_days : float
        Days of its own past load and PV forecasts the provider keeps, for
        :meth:`residual_scenarios`.
    """

    name = "model"

    def __init__(
        self,
        actuals: pd.DataFrame,
        *,
        load: Forecaster,
        pv: Forecaster,
        price: Forecaster,
        price_publish_hour: float | None = 13.0,
        price_tz: str = "Europe/Berlin",
        keep_days: float = 8.0,
    ) -> None:
        self.start_s, self.step_s, self._values = _regular_frame(actuals, FORECAST_COLUMNS)
        self.keep_days = keep_days
        self._past: dict[int, FloatArray] = {}
        self.load = load
        self.pv = pv
        self.price_forecasters = [price, copy.deepcopy(price)]
        self.price_publish_hour = price_publish_hour
        self.price_tz = price_tz

    @property
    def n(self) -> int:
        """Number of intervals held."""
        return int(self._values.shape[1])

    def known_index(self, now_s: float) -> tuple[int, int]:
        """Number of intervals measured by ``now_s`` and of prices published by then.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].

        Returns
        -------
        tuple of int
            ``(k_measured, k_prices)``: intervals ``[0, k)`` are usable.
        """
        k = math.floor((now_s - self.start_s) / self.step_s + _EPS_S)
        k = min(max(k, 0), self.n)
        if self.price_publish_hour is None:
            return k, k
        until = float(
            day_ahead_known_until_s(now_s, publish_hour=self.price_publish_hour, tz=self.price_tz)
        )
        kp = math.floor((until - self.start_s) / self.step_s + _EPS_S)
        return k, min(max(kp, k), self.n)

    def forecast_arrays(self, now_s: float, n_steps: int) -> FloatArray:
        """Forecast of the ``n_steps`` data intervals from ``now_s``.

        Parameters
        ----------
        now_s : float
            Time of the forecast [s, Unix UTC].
        n_steps : int
            Number of data intervals (of ``step_s``).

        Returns
        -------
        numpy.ndarray
            Shape ``(4, n_steps)``: load [W], PV [W], import and export price [EUR/kWh].
        """
        k, kp = self.known_index(now_s)
        out = np.empty((len(FORECAST_COLUMNS), n_steps))
        v = self._values
        out[0] = self.load.forecast(v[0, :k], self.start_s, self.step_s, n_steps)
        out[1] = self.pv.forecast(v[1, :k], self.start_s, self.step_s, n_steps)
        self._remember(k, out[:2])
        known = min(kp - k, n_steps)
        for row, fc in zip((2, 3), self.price_forecasters, strict=True):
            out[row, :known] = v[row, k : k + known]
            if n_steps > known:
                out[row, known:] = fc.forecast(
                    v[row, :kp], self.start_s, self.step_s, n_steps - known
                )
        return out

    def extend(self, values: FloatArray) -> None:
        """Append intervals after the last one held (a live series growing with time).

        Parameters
        ----------
        values : numpy.ndarray
            Shape ``(4, m)``: load [W] and PV [W] (NaN until measured), import and export
            price [EUR/kWh], in the order of :data:`FORECAST_COLUMNS`.

        Raises
        ------
        ValueError
            If the shape is wrong.
        """
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] != len(FORECAST_COLUMNS):
            raise ValueError(f"extend needs shape (4, m), got {v.shape}")
        self._values = np.concatenate([self._values, v], axis=1)

    def used_forecast_errors(
        self, now_s: float, *, days: float = 7.0, horizon_steps: int | None = None
    ) -> dict[str, ForecastError]:
        """Error of the load and PV forecasts this provider made over the last ``days``.

        The forecasts it kept (for :meth:`residual_scenarios`) are scored, lead by lead, on
        the intervals measured by ``now_s``, one origin per hour, against the seasonal-naive
        baseline (one week earlier for load, one day for PV) at the same origins: what the
        plans were actually given, not a replay.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC]; only intervals measured by then are scored.
        days : float
            Window of origins [days].
        horizon_steps : int or None
            Leads scored (default one day).

        Returns
        -------
        dict of str to ForecastError
            ``load_w`` and ``pv_w`` (``n = 0`` and NaN while nothing can be scored).
        """
        k_now, _ = self.known_index(now_s)
        per_day = round(DAY_S / self.step_s)
        h = horizon_steps if horizon_steps is not None else per_day
        every = max(1, round(3600.0 / self.step_s))
        first = k_now - round(days * DAY_S / self.step_s)
        origins = [k for k in sorted(self._past) if first <= k < k_now and k % every == 0]
        shape = (len(origins), h)
        fc, act, naive = np.full((3, 2, *shape), np.nan)
        for j, k in enumerate(origins):
            kept = self._past[k]
            m = min(h, kept.shape[1], k_now - k)
            fc[:, j, :m] = kept[:, :m]
            act[:, j, :m] = self._values[:2, k : k + m]
            naive[0, j] = seasonal_naive(self._values[0, :k], h, 7 * per_day)
            naive[1, j] = seasonal_naive(self._values[1, :k], h, per_day)
        return {
            col: forecast_error(act[i], fc[i], naive[i])
            for i, col in enumerate(FORECAST_COLUMNS[:2])
        }

    def series(self, n: int | None = None) -> FloatArray:
        """A copy of the first ``n`` intervals held (all by default), shape ``(4, n)``."""
        out: FloatArray = self._values[:, : self.n if n is None else n].copy()
        return out

    def record(self, index: int, load_w: float, pv_w: float) -> None:
        """Store the measured load and PV of interval ``index`` (0 = the first held).

        Parameters
        ----------
        index : int
            Interval index, ``0 <= index < n``.
        load_w, pv_w : float
            Interval averages [W].

        Raises
        ------
        IndexError
            If the interval is not held.
        """
        if not 0 <= index < self.n:
            raise IndexError(f"interval {index} is outside the {self.n} held")
        self._values[0, index] = load_w
        self._values[1, index] = pv_w

    def _remember(self, k: int, load_pv: FloatArray) -> None:
        """Keep the load and PV forecast made at interval ``k`` (for residual scenarios)."""
        if self.keep_days <= 0:
            return
        self._past[k] = load_pv.copy()
        oldest = k - round(self.keep_days * DAY_S / self.step_s)
        if len(self._past) > 4 * round(DAY_S / self.step_s) and min(self._past) < oldest:
            for key in [key for key in self._past if key < oldest]:
                del self._past[key]

    def residual_scenarios(
        self, now_s: float, n_steps: int, lags_days: Sequence[int] = (1, 2, 3)
    ) -> FloatArray:
        """What the load and PV forecasts got wrong ``lag`` days ago, as deviations for now.

        For each lag, the forecast this provider made at ``now_s - lag days`` (kept from that
        call) is compared with what was then measured, lead by lead; leads not yet measured at
        ``now_s`` count as no error. Added to the present forecast, each gives a scenario of
        the same error pattern (a late evening load, a cloudy afternoon) that a plan can hedge
        against (:class:`openbess.ems.optimizer.PlanScenarios`). Uses only the past.

        Parameters
        ----------
        now_s : float
            Time of the present forecast [s, Unix UTC].
        n_steps : int
            Data intervals wanted.
        lags_days : sequence of int
            Whole days back.

        Returns
        -------
        numpy.ndarray
            Shape ``(n_scenarios, 2, n_steps)``: load and PV deviations [W]; lags without a
            kept forecast are left out (shape ``(0, 2, n_steps)`` if none).
        """
        k, _ = self.known_index(now_s)
        per_day = round(DAY_S / self.step_s)
        out: list[FloatArray] = []
        for lag in lags_days:
            j = k - int(lag) * per_day
            past = self._past.get(j)
            if j < 0 or past is None:
                continue
            known = min(k - j, n_steps, past.shape[1])
            dev = np.zeros((2, n_steps))
            dev[:, :known] = self._values[:2, j : j + known] - past[:, :known]
            if np.isfinite(dev).all():
                out.append(dev)
        if not out:
            return np.zeros((0, 2, n_steps))
        return np.stack(out)

    def __call__(self, now_s: float, horizon_steps: int, step_s: float) -> pd.DataFrame:
        """Forecast frame for the MPC.

        Parameters
        ----------
        now_s : float
            Time of the forecast [s, Unix UTC]; the first step starts at the data interval that
            contains it.
        horizon_steps : int
            Number of steps.
        step_s : float
            Step length [s], a whole multiple of the data interval (values are step means).

        Returns
        -------
        pandas.DataFrame
            Columns ``load_w`` [W], ``pv_w`` [W], ``import_price_eur_per_kwh``,
            ``export_price_eur_per_kwh`` [EUR/kWh]; UTC index of step starts.
        """
        return _as_frame(self, now_s, horizon_steps, step_s)

    def error_report(
        self,
        now_s: float,
        *,
        days: float = 14.0,
        horizon_steps: int | None = None,
        origin_every_s: float = 6.0 * 3600.0,
    ) -> ProviderErrorReport:
        """Error of the load, PV and price forecasts on the ``days`` before ``now_s``.

        Copies of the forecasters are replayed at origins every ``origin_every_s``; each
        forecast is scored against what happened, and against the seasonal-naive baseline
        (one week earlier for load, one day earlier for PV and prices; prices already
        published count as known for both).

        Parameters
        ----------
        now_s : float
            End of the evaluation [s, Unix UTC]; nothing after it is used.
        days : float
            Length of the evaluation window [days].
        horizon_steps : int or None
            Forecast length in data intervals (default one day).
        origin_every_s : float
            Spacing of the forecast origins [s].

        Returns
        -------
        ProviderErrorReport
            MAE, baseline MAE and skill per column.
        """
        h = horizon_steps if horizon_steps is not None else round(DAY_S / self.step_s)
        k_now, _ = self.known_index(now_s)
        every = max(1, round(origin_every_s / self.step_s))
        first = max(0, k_now - round(days * DAY_S / self.step_s))
        origins = [k for k in range(first, k_now - h + 1, every) if k > 0]
        clone = HistoryForecastProvider.__new__(HistoryForecastProvider)
        clone.__dict__.update(copy.deepcopy(self.__dict__))
        n_cols = len(FORECAST_COLUMNS)
        fc = np.full((n_cols, len(origins), h), np.nan)
        naive = np.full_like(fc, np.nan)
        act = np.full_like(fc, np.nan)
        day, week = round(DAY_S / self.step_s), round(WEEK_S / self.step_s)
        for j, k in enumerate(origins):
            t = self.start_s + k * self.step_s
            fc[:, j] = clone.forecast_arrays(t, h)
            act[:, j] = self._values[:, k : k + h]
            _, kp = clone.known_index(t)
            naive[0, j] = seasonal_naive(self._values[0, :k], h, week)
            naive[1, j] = seasonal_naive(self._values[1, :k], h, day)
            for row in (2, 3):
                known = min(kp - k, h)
                naive[row, j, :known] = self._values[row, k : k + known]
                naive[row, j, known:] = seasonal_naive(self._values[row, :kp], h - known, day)
        errors = {
            c: forecast_error(act[i], fc[i], naive[i]) for i, c in enumerate(FORECAST_COLUMNS)
        }
        return ProviderErrorReport(errors, len(origins), h)


def evaluate_forecaster(
    forecaster: Forecaster,
    series: npt.ArrayLike,
    start_s: float,
    step_s: float,
    *,
    horizon_steps: int,
    first_origin: int,
    origin_every: int = 1,
    naive_season_s: float = WEEK_S,
) -> ForecastError:
    """Replay a forecaster over a series at rolling origins and score it.

    At each origin ``k`` (``first_origin, first_origin + origin_every, ...``) a copy of the
    forecaster sees ``series[:k]`` and forecasts ``horizon_steps`` intervals, scored against
    ``series[k:k + horizon_steps]`` and against :func:`seasonal_naive` with ``naive_season_s``.

    Parameters
    ----------
    forecaster : Forecaster
        The forecaster (copied; the original is not touched).
    series : array_like
        The whole series.
    start_s, step_s : float
        Start of its first interval and interval length [s].
    horizon_steps : int
        Forecast length [intervals].
    first_origin : int
        First origin (number of history intervals), >= 1.
    origin_every : int
        Spacing of the origins [intervals].
    naive_season_s : float
        Season of the baseline [s].

    Returns
    -------
    ForecastError
        Scores over all origins and leads (origins whose horizon runs past the end are
        skipped).

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    y = np.asarray(series, dtype=np.float64)
    if horizon_steps < 1 or first_origin < 1 or origin_every < 1:
        raise ValueError("horizon_steps, first_origin and origin_every must be >= 1")
    season = _steps(naive_season_s, step_s, "naive_season_s")
    model = copy.deepcopy(forecaster)
    origins = range(first_origin, y.size - horizon_steps + 1, origin_every)
    fc = np.full((len(origins), horizon_steps), np.nan)
    nv = np.full_like(fc, np.nan)
    act = np.full_like(fc, np.nan)
    for j, k in enumerate(origins):
        fc[j] = model.forecast(y[:k], start_s, step_s, horizon_steps)
        nv[j] = seasonal_naive(y[:k], horizon_steps, season)
        act[j] = y[k : k + horizon_steps]
    return forecast_error(act, fc, nv)
