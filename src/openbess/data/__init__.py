"""Bundled site data and time-series readers.

The package ships one year of each series openbess needs to run a site without any network or
external folder (sources and licences in ``README.md`` beside this file):

- day-ahead prices for the bidding zones DE-LU and NL (:func:`read_prices`),
- a measured household load and PV series from north-east France with a derived clearness
  index for PV simulation (:func:`read_household`, :func:`read_household_pv_fit`),
- a commercial standard load profile (BDEW G25 via demandlib, :func:`read_commercial_load`;
  :func:`generate_commercial_load` regenerates one for any year if demandlib is installed).

Every reader returns a :class:`pandas.DataFrame` with a tz-aware UTC :class:`DatetimeIndex`
named ``time``; each row is the average over ``[time, time + step)``. User files are read with
:func:`read_timeseries_csv`, whose errors name the file, the line and the column.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import os
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from openbess.data.timeseries import (
    DAY_S,
    WEEK_S,
    YEAR_S,
    sample,
    to_datetime_index,
    to_unix_s,
    wrap_times_s,
)
from openbess.errors import DataError

__all__ = [
    "DAY_S",
    "PRICE_ZONES",
    "WEEK_S",
    "YEAR_S",
    "generate_commercial_load",
    "german_public_holidays",
    "read_commercial_load",
    "read_household",
    "read_household_pv_fit",
    "read_prices",
    "read_timeseries_csv",
    "sample",
    "to_datetime_index",
    "to_unix_s",
    "wrap_times_s",
]

PRICE_ZONES: dict[str, str] = {"DE_LU": "prices_de_lu.csv", "NL": "prices_nl.csv"}
HOUSEHOLD_FILE = "household_fr.csv"
HOUSEHOLD_PV_FIT_FILE = "household_pv_fit.csv"
COMMERCIAL_FILE = "commercial_load_g25.csv"
COMMERCIAL_REFERENCE_ENERGY_WH = 400e6

_OFFSET_RE = r"(?:Z|[+-]\d{2}(?::?\d{2})?)$"


def _fail(path: str, line: int, column: str | None, message: str) -> DataError:
    where = f"{path}: line {line}" + (f", column '{column}'" if column is not None else "")
    return DataError(f"{where}: {message}")


def read_timeseries_csv(
    path: str | os.PathLike[str],
    columns: Sequence[str],
    *,
    allow_missing: bool = True,
) -> pd.DataFrame:
    """Read a CSV time series with a ``time`` column (ISO 8601 with a UTC offset).

    Blank lines and lines starting with ``#`` are skipped. Other columns than ``time`` and
    ``columns`` are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.
    columns : sequence of str
        Numeric columns to read.
    allow_missing : bool
        Empty cells become NaN if True, else they are an error.

    Returns
    -------
    pandas.DataFrame
        The requested columns as float64, indexed by a tz-aware UTC DatetimeIndex ``time``,
        strictly increasing.

    Raises
    ------
    DataError
        If the file cannot be opened, a column is missing, or a cell cannot be parsed, naming
        the file, the line (1-based, header included) and the column.
    """
    name = os.fspath(path)
    wanted = list(columns)
    try:
        with open(name, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header: list[str] | None = None
            header_line = 0
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                if header is None:
                    header = [c.strip() for c in row]
                    header_line = reader.line_num
                    continue
                if len(row) != len(header):
                    raise _fail(
                        name,
                        reader.line_num,
                        None,
                        f"expected {len(header)} fields as in the header, got {len(row)}",
                    )
                rows.append(row)
                lines.append(reader.line_num)
    except OSError as exc:
        raise DataError(f"{name}: cannot read the file: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DataError(f"{name}: malformed CSV: {exc}") from exc
    if header is None:
        raise DataError(f"{name}: line 1: empty file, expected a header with a 'time' column")
    missing = [c for c in ["time", *wanted] if c not in header]
    if missing:
        raise _fail(
            name,
            header_line,
            None,
            f"missing column(s) {', '.join(repr(m) for m in missing)}; header has {header}",
        )
    if not rows:
        raise DataError(f"{name}: no data rows after the header (line {header_line})")
    line_no = np.asarray(lines)

    raw_time = pd.Series([r[header.index("time")].strip() for r in rows], dtype=object)
    parsed = pd.to_datetime(raw_time, format="ISO8601", utc=True, errors="coerce")
    has_offset = raw_time.str.contains(_OFFSET_RE, regex=True)
    bad = parsed.isna().to_numpy() | ~has_offset.to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        why = "no UTC offset" if not has_offset.iloc[i] else "not an ISO 8601 time"
        raise _fail(
            name,
            int(line_no[i]),
            "time",
            f"{why}: {raw_time.iloc[i]!r} (expected e.g. 2024-01-01T00:00:00+01:00)",
        )
    index = pd.DatetimeIndex(parsed, name="time")
    t_ns = index.as_unit("ns").asi8
    not_increasing = np.flatnonzero(np.diff(t_ns) <= 0)
    if not_increasing.size:
        i = int(not_increasing[0]) + 1
        kind = "duplicate" if t_ns[i] == t_ns[i - 1] else "earlier than the line before"
        raise _fail(name, int(line_no[i]), "time", f"time {raw_time.iloc[i]!r} is {kind}")

    data: dict[str, np.ndarray] = {}
    for col in wanted:
        k = header.index(col)
        text = pd.Series([r[k].strip() for r in rows], dtype=object)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        empty = (text == "").to_numpy(dtype=bool)
        bad = np.isnan(values) & ~empty & ~text.str.lower().isin(["nan"]).to_numpy(dtype=bool)
        if not allow_missing:
            bad |= empty
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "empty cell" if empty[i] else f"cannot parse {text.iloc[i]!r} as a number"
            raise _fail(name, int(line_no[i]), col, what)
        data[col] = values
    return pd.DataFrame(data, index=index)


def _bundled_path(filename: str) -> Path:
    path = Path(str(resources.files("openbess.data").joinpath(filename)))
    if not path.is_file():
        raise DataError(f"bundled data file {filename!r} is missing from the openbess package")
    return path


@functools.lru_cache(maxsize=16)
def _read_bundled(filename: str, columns: tuple[str, ...]) -> pd.DataFrame:
    return read_timeseries_csv(_bundled_path(filename), columns)


def read_prices(zone: str = "DE_LU") -> pd.DataFrame:
    """Day-ahead spot prices of one bidding zone, one year, hourly.

    DE-LU and NL: 2022-07-01 .. 2023-06-30 (local days, Europe/Berlin and Europe/Amsterdam:
    8760 hours, including one 23 h and one 25 h day).

    Parameters
    ----------
    zone : str
        ``"DE_LU"`` (also ``"DE-LU"``) or ``"NL"``.

    Returns
    -------
    pandas.DataFrame
        Column ``price_eur_per_kwh`` [EUR/kWh] (negative values are real), UTC index at the
        start of each hour.

    Raises
    ------
    ValueError
        If the zone is unknown.
    """
    key = zone.upper().replace("-", "_")
    if key not in PRICE_ZONES:
        raise ValueError(f"unknown price zone {zone!r}; known: {sorted(PRICE_ZONES)}")
    return _read_bundled(PRICE_ZONES[key], ("price_eur_per_kwh",)).copy()


def read_household() -> pd.DataFrame:
    """Measured household load and PV, north-east France, 30 min, 2024-02-29 .. 2025-02-27.

    Gaps are filled (see ``README.md``): night-time PV gaps are zero production, daytime PV
    gaps come from the interpolated clearness index, load gaps from the same time one week
    before (or after). The flags say which values were filled.

    Returns
    -------
    pandas.DataFrame
        ``load_w`` [W], ``pv_w`` [W] (>= 0), ``clearness_index`` [1] (measured GHI over
        Ineichen clear-sky GHI, derived from the PV), ``load_filled``, ``pv_filled`` (bool);
        UTC index at the start of each 30-min interval.
    """
    cols = ("load_w", "pv_w", "clearness_index", "load_filled", "pv_filled")
    df = _read_bundled(HOUSEHOLD_FILE, cols).copy()
    df["load_filled"] = df["load_filled"].to_numpy() != 0.0
    df["pv_filled"] = df["pv_filled"].to_numpy() != 0.0
    return df


@functools.lru_cache(maxsize=1)
def _household_pv_fit() -> dict[str, float]:
    path = _bundled_path(HOUSEHOLD_PV_FIT_FILE)
    out: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not row or row[0].startswith("#") or row[0] == "key":
                continue
            try:
                out[row[0]] = float(row[1])
            except (IndexError, ValueError) as exc:
                raise _fail(str(path), reader.line_num, "value", "not a number") from exc
    return out


def read_household_pv_fit() -> dict[str, float]:
    """Parameters of the household PV plant as fitted by ``scripts/build_data.py``.

    Returns
    -------
    dict of str to float
        ``latitude_deg``, ``longitude_deg``, ``altitude_m``, ``tilt_deg``, ``azimuth_deg``,
        ``dc_capacity_w`` [W] (effective, before the 14 % system losses), ``ac_limit_w`` [W]
        (highest measured 30-min output), and fit diagnostics.
    """
    return dict(_household_pv_fit())


def read_commercial_load() -> pd.DataFrame:
    """Commercial load profile (BDEW G25 standard load profile), 15 min, calendar year 2023.

    Generated by ``scripts/build_data.py`` with demandlib on German local time
    (Europe/Berlin, German public holidays) and scaled to 400 MWh per year.

    Returns
    -------
    pandas.DataFrame
        Column ``load_w`` [W], UTC index at the start of each 15-min interval.
    """
    return _read_bundled(COMMERCIAL_FILE, ("load_w",)).copy()


def german_public_holidays(year: int) -> list[dt.date]:
    """Nationwide German public holidays of one year.

    Parameters
    ----------
    year : int
        Calendar year.

    Returns
    -------
    list of datetime.date
        New Year, Good Friday, Easter Monday, Labour Day, Ascension, Whit Monday, German Unity
        Day, Christmas Day and St Stephen's Day.
    """
    e = (pd.Timestamp(year, 1, 1) + pd.offsets.Easter()).date()
    return sorted(
        [
            dt.date(year, 1, 1),
            e - dt.timedelta(days=2),
            e + dt.timedelta(days=1),
            dt.date(year, 5, 1),
            e + dt.timedelta(days=39),
            e + dt.timedelta(days=50),
            dt.date(year, 10, 3),
            dt.date(year, 12, 25),
            dt.date(year, 12, 26),
        ]
    )


def generate_commercial_load(
    year: int,
    annual_energy_wh: float,
    *,
    tz: str = "Europe/Berlin",
    holidays: Iterable[dt.date] | None = None,
) -> pd.DataFrame:
    """Generate a commercial load profile with demandlib (BDEW G25), 15 min, one year.

    demandlib is imported here, so openbess runs without it; the bundled
    :func:`read_commercial_load` was made by this function.

    Parameters
    ----------
    year : int
        Calendar year (local time ``tz``).
    annual_energy_wh : float
        Energy over the year [Wh], > 0.
    tz : str
        Time zone of the profile's wall clock.
    holidays : iterable of datetime.date or None
        Days treated as Sundays/holidays; default :func:`german_public_holidays`.

    Returns
    -------
    pandas.DataFrame
        Column ``load_w`` [W], UTC index at the start of each 15-min interval; the energy
        over the year equals ``annual_energy_wh``.

    Raises
    ------
    ModuleNotFoundError
        If demandlib is not installed.
    ValueError
        If ``annual_energy_wh`` is not positive.
    """
    if not annual_energy_wh > 0.0:
        raise ValueError(f"annual_energy_wh must be > 0, got {annual_energy_wh!r}")
    try:
        from demandlib.bdew import G25
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "generate_commercial_load needs demandlib (pip install demandlib); "
            "the bundled profile is available through read_commercial_load()"
        ) from exc
    index = pd.date_range(
        pd.Timestamp(year, 1, 1, tz=tz),
        pd.Timestamp(year + 1, 1, 1, tz=tz),
        freq="15min",
        inclusive="left",
    )
    days = list(german_public_holidays(year) if holidays is None else holidays)
    with warnings.catch_warnings():
        # demandlib 0.2.2 uses pandas APIs deprecated in pandas 3 (inplace=...): not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        profile = G25(index, holidays=[pd.Timestamp(d) for d in days])
    power = np.asarray(profile.to_numpy(), dtype=np.float64)
    energy_wh = float(power.sum()) * 0.25  # 15-min intervals: arbitrary unit * h
    load_w = power * (annual_energy_wh / energy_wh)
    out = pd.DataFrame({"load_w": load_w}, index=index.tz_convert("UTC"))
    out.index.name = "time"
    return out
