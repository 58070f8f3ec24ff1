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
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.config import SiteConfig
from openbess.data import read_household_pv_fit, read_timeseries_csv
from openbess.data.timeseries import DAY_S, to_unix_s
from openbess.errors import DataError
from openbess.ems.forecast import FORECAST_COLUMNS

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

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

    def interval_mean(f: object, hold: bool) -> FloatArray:
        fn = f if callable(f) else None
        if fn is None:  # pragma: no cover - internal misuse
            raise TypeError("not callable")
        if hold:
            return np.asarray(fn(times), dtype=np.float64)
        pts = (times[:, None] + offsets[None, :]).ravel()
        return np.asarray(fn(pts), dtype=np.float64).reshape(times.size, sub).mean(axis=1)

    lc = config.load
    annual_wh = lc.annual_energy_kwh * 1000.0 if lc.annual_energy_kwh else None
    if lc.source == "household":
        load = LoadModel.household(annual_energy_wh=annual_wh)
    elif lc.source == "commercial":
        load = LoadModel.commercial(annual_wh if annual_wh is not None else 400e6)
    else:
        load = LoadModel.from_csv(lc.source, "load_w", annual_energy_wh=annual_wh)
    load_w = interval_mean(load.power_w, hold=False)
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
        source = "measured" if pv_cfg.source == "household" else "clearsky_index"
        model = PvModel(plant, source=source, cache_step_s=0.0 if source == "measured" else 300.0)
        pv_w = interval_mean(model.power_w, hold=False)
    g = config.grid
    tariff = Tariff.from_zone(
        g.price_zone,
        import_adder_eur_per_kwh=g.import_adder_eur_per_kwh,
        vat_fraction=g.import_vat,
        export_mode="spot" if g.export_tariff_eur_per_kwh is None else "fixed",
        feed_in_tariff_eur_per_kwh=g.export_tariff_eur_per_kwh or 0.0,
    )
    imp, exp = tariff.prices(times)
    index = pd.DatetimeIndex(
        pd.to_datetime(np.round(times * 1e9).astype(np.int64), unit="ns", utc=True), name="time"
    )
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


_ = math
