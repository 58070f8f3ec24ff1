"""Time helpers shared by the data readers and the twin's site models.

Inside openbess, times are Unix seconds UTC (``time_s``, float) or tz-aware pandas timestamps.
The bundled series cover one year each (different years); :func:`wrap_times_s` maps any
simulation time onto a series' window by a whole number of weeks, so that weekdays stay
weekdays and the season drifts by at most a few days. :func:`sample` reads a series at
arbitrary times, either as a zero-order hold over each interval (the right choice for interval
averages such as prices or metered power) or linearly between interval midpoints.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.errors import SimulationError

FloatArray = npt.NDArray[np.float64]
TimesLike = pd.DatetimeIndex | pd.Timestamp | pd.Series | npt.ArrayLike

DAY_S = 86_400.0
WEEK_S = 7.0 * DAY_S
YEAR_S = 365.2425 * DAY_S
_MIN_YEAR_SPAN_S = 358.0 * DAY_S


def to_unix_s(times: TimesLike) -> FloatArray:
    """Convert times to Unix seconds UTC.

    Parameters
    ----------
    times : pandas.DatetimeIndex, pandas.Timestamp, pandas.Series or array_like
        Tz-aware timestamps, or numbers that already are Unix seconds UTC [s].

    Returns
    -------
    numpy.ndarray
        Unix seconds UTC [s], float64, same shape as the input (0-d for a scalar).

    Raises
    ------
    ValueError
        If timestamps are naive (no time zone).
    """
    if isinstance(times, pd.Timestamp):
        if times.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware (UTC inside openbess)")
        return np.asarray(times.as_unit("ns").value / 1e9, dtype=np.float64)
    if isinstance(times, pd.Series) and isinstance(times.dtype, pd.DatetimeTZDtype):
        times = pd.DatetimeIndex(times)
    if isinstance(times, pd.Series) and pd.api.types.is_datetime64_dtype(times.dtype):
        raise ValueError("timestamps must be timezone-aware (UTC inside openbess)")
    if isinstance(times, pd.DatetimeIndex):
        if times.tz is None:
            raise ValueError("timestamps must be timezone-aware (UTC inside openbess)")
        return times.as_unit("ns").asi8.astype(np.float64) / 1e9
    arr = np.asarray(times)
    if np.issubdtype(arr.dtype, np.datetime64):
        raise ValueError("numpy datetime64 values are naive: pass tz-aware pandas timestamps")
    return np.asarray(arr, dtype=np.float64)


def to_datetime_index(time_s: npt.ArrayLike) -> pd.DatetimeIndex:
    """Convert Unix seconds to a UTC :class:`pandas.DatetimeIndex`.

    Parameters
    ----------
    time_s : array_like
        Unix seconds UTC [s].

    Returns
    -------
    pandas.DatetimeIndex
        Tz-aware (UTC) timestamps, nanosecond resolution.
    """
    ns = np.round(np.atleast_1d(np.asarray(time_s, dtype=np.float64)) * 1e9).astype(np.int64)
    return pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True))


def wrap_times_s(time_s: npt.ArrayLike, start_s: float, end_s: float) -> FloatArray:
    """Map times onto the window ``[start_s, end_s)`` of a data series.

    Times inside the window are unchanged. A time outside it is shifted by a whole number of
    weeks: for a window of about a year or more, the shift is the whole number of weeks closest
    to a whole number of years (weekday kept, season within 3.5 days, or 10.5 days for the
    few times that the rounding puts just outside the window and one more week brings back);
    for a shorter window of at least a week, by multiples of the window's whole weeks; for a
    window under a week, by multiples of the window.

    Parameters
    ----------
    time_s : array_like
        Times [s, Unix UTC].
    start_s, end_s : float
        Window [s, Unix UTC], ``end_s > start_s`` (end excluded).

    Returns
    -------
    numpy.ndarray
        Times inside the window [s].

    Raises
    ------
    ValueError
        If the window is empty.
    """
    t = np.asarray(time_s, dtype=np.float64)
    span = float(end_s - start_s)
    if not span > 0.0:
        raise ValueError(f"empty window: start_s={start_s!r}, end_s={end_s!r}")
    outside = (t < start_s) | (t >= end_s)
    if not np.any(outside):
        return t.copy()
    if span >= _MIN_YEAR_SPAN_S:
        n_years = np.floor((t - start_s) / YEAR_S)
        shifted = t - np.round(n_years * YEAR_S / WEEK_S) * WEEK_S
        # bring the few that land just outside back by one week (or more for short windows)
        below = shifted < start_s
        shifted = np.where(below, shifted + np.ceil((start_s - shifted) / WEEK_S) * WEEK_S, shifted)
        above = shifted >= end_s
        shifted = np.where(
            above, shifted - np.floor((shifted - end_s) / WEEK_S + 1.0) * WEEK_S, shifted
        )
    else:
        period = np.floor(span / WEEK_S) * WEEK_S if span >= WEEK_S else span
        shifted = start_s + np.mod(t - start_s, period)
    out: FloatArray = np.where(outside, shifted, t)
    return out


def sample(
    index_s: npt.ArrayLike,
    values: npt.ArrayLike,
    time_s: npt.ArrayLike,
    *,
    method: Literal["hold", "linear"] = "hold",
    wrap: bool = True,
    step_s: float | None = None,
    name: str = "series",
) -> FloatArray:
    """Read a regular interval series at arbitrary times.

    Each value is the average over ``[index_s[i], index_s[i] + step_s)``.

    Parameters
    ----------
    index_s : array_like
        Interval start times [s, Unix UTC], strictly increasing.
    values : array_like
        Interval values (any unit), same length.
    time_s : array_like
        Query times [s, Unix UTC].
    method : {"hold", "linear"}
        ``hold``: the value of the interval containing the time (keeps interval energies);
        ``linear``: linear between interval midpoints (smoother).
    wrap : bool
        Map times outside the series onto it with :func:`wrap_times_s`; if False they raise.
    step_s : float or None
        Interval length [s]; default the median spacing of ``index_s``.
    name : str
        Name used in error messages.

    Returns
    -------
    numpy.ndarray
        Values at ``time_s``, same shape as ``time_s``.

    Raises
    ------
    SimulationError
        If ``wrap`` is False and a time lies outside the series.
    ValueError
        If the series is empty or the method unknown.
    """
    idx = np.asarray(index_s, dtype=np.float64)
    val = np.asarray(values, dtype=np.float64)
    if idx.size == 0 or idx.shape != val.shape:
        raise ValueError(f"{name}: index and values must be non-empty and of equal length")
    step = float(np.median(np.diff(idx))) if step_s is None and idx.size > 1 else step_s
    if step is None or not step > 0.0:
        raise ValueError(f"{name}: cannot infer the interval length, pass step_s")
    start, end = float(idx[0]), float(idx[-1]) + step
    t = np.asarray(time_s, dtype=np.float64)
    if wrap:
        t = wrap_times_s(t, start, end)
    else:
        bad = (t < start) | (t >= end)
        if np.any(bad):
            first = float(np.asarray(t)[bad].flat[0])
            raise SimulationError(
                f"{name} covers {to_datetime_index(start)[0]} .. {to_datetime_index(end)[0]}"
                f" (end excluded), asked for {to_datetime_index(first)[0]}"
            )
    if method == "hold":
        i = np.clip(np.searchsorted(idx, t, side="right") - 1, 0, idx.size - 1)
        out: FloatArray = val[i]
        return out
    if method == "linear":
        out = np.interp(t, idx + 0.5 * step, val)
        return np.asarray(out, dtype=np.float64)
    raise ValueError(f"method must be 'hold' or 'linear', got {method!r}")
