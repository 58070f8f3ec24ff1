"""Regenerate the data bundled in ``src/openbess/data`` from the raw sources.

Usage::

    .venv/bin/python scripts/build_data.py [--source /work/shared/data] [--out src/openbess/data]
        [--only prices,household,commercial]

Inputs (see ``/work/shared/data/README.md`` and ``src/openbess/data/README.md``):

- ``prices/entsoe_day_ahead_{DE_LU,NL}.csv``: ENTSO-E day-ahead prices (CC0), naive local time
  (CET/CEST) in EUR/MWh. One year of local days, 2022-07-01 .. 2023-06-30, is converted to UTC
  and EUR/kWh. The source has exactly one row per local wall-clock hour: at the autumn change
  the repeated 02:00 hour holds the average of the two real hours (used for both UTC hours), at
  the spring change the non-existent 02:00 row is a fill (dropped).
- ``household/household_load_pv_fr_2024.csv``: EMHASS household (MIT), 30-min load and PV.
  The PV plant's orientation and capacity are fitted to the clearest days, the clearness index
  is obtained by inverting the PV chain of :mod:`openbess.twin.pv`, and gaps are filled.
- demandlib (MIT) BDEW G25 commercial profile for 2023, scaled to 400 MWh/a.

The script logs a summary (gaps, zero prices, fit quality) that ``README.md`` quotes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.data import (
    COMMERCIAL_FILE,
    COMMERCIAL_REFERENCE_ENERGY_WH,
    HOUSEHOLD_FILE,
    HOUSEHOLD_PV_FIT_FILE,
    PRICE_ZONES,
    generate_commercial_load,
)
from openbess.data.timeseries import to_unix_s
from openbess.twin.pv import (
    MAX_CLEARNESS_INDEX,
    NE_FRANCE_MONTHLY_AIR_TEMPERATURE_DEGC,
    SolarGeometry,
    ac_power_from_poa_w,
    air_temperature_degc,
    clearsky_ghi_w_m2,
    linke_turbidity_daily,
    plane_of_array_w_m2,
    solar_geometry,
)

log = logging.getLogger("build_data")
FloatArray = npt.NDArray[np.float64]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = Path("/work/shared/data")
DEFAULT_OUT = ROOT / "src" / "openbess" / "data"

PRICE_SOURCES = {
    "DE_LU": ("entsoe_day_ahead_DE_LU.csv", "Europe/Berlin"),
    "NL": ("entsoe_day_ahead_NL.csv", "Europe/Amsterdam"),
}
PRICE_FIRST_DAY = "2022-07-01"
PRICE_END_DAY = "2023-07-01"  # excluded

SITE_LAT_DEG, SITE_LON_DEG, SITE_ALT_M = 48.83, 6.86, 300.0
HOUSEHOLD_START = "2024-02-28T23:00:00Z"  # 2024-02-29 00:00 Europe/Paris
HOUSEHOLD_END = "2025-02-27T23:00:00Z"  # excluded: 365 local days
HALF_HOUR_S = 1800.0
LOSSES_FRACTION = 0.14


def _iso(index: pd.DatetimeIndex) -> list[str]:
    return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in index.tz_convert("UTC")]


def _write_csv(
    path: Path, header_comment: str, frame: pd.DataFrame, formats: dict[str, str]
) -> None:
    lines = [f"# {line}" for line in header_comment.strip().splitlines()]
    lines.append(",".join(["time", *frame.columns]))
    times = _iso(pd.DatetimeIndex(frame.index))
    cols = [[format(v, formats[c]) for v in frame[c].to_numpy()] for c in frame.columns]
    for i, t in enumerate(times):
        lines.append(",".join([t, *(col[i] for col in cols)]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("wrote %s (%d rows, %.0f kB)", path, len(frame), path.stat().st_size / 1e3)


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    padded = np.concatenate([[False], mask, [False]])
    d = np.diff(padded.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)]


# ---------------------------------------------------------------------------------------------
# prices


def build_prices(source: Path, out: Path) -> None:
    """Convert one year of day-ahead prices per zone to UTC and EUR/kWh."""
    for zone, (filename, tz) in PRICE_SOURCES.items():
        raw = pd.read_csv(source / "prices" / filename)
        raw = raw.rename(columns={raw.columns[0]: "local_time"}).dropna(subset=["local_time"])
        local = pd.to_datetime(raw["local_time"], format="%m/%d/%Y %H:%M")
        if local.duplicated().any():
            raise SystemExit(f"{filename}: duplicate local times")
        price = pd.Series(raw["Price_DA"].to_numpy(dtype=np.float64), index=local)
        utc = pd.date_range(
            pd.Timestamp(PRICE_FIRST_DAY, tz=tz),
            pd.Timestamp(PRICE_END_DAY, tz=tz),
            freq="h",
            inclusive="left",
        ).tz_convert("UTC")
        wall = utc.tz_convert(tz).tz_localize(None)
        values = price.reindex(wall).to_numpy()
        if np.isnan(values).any():
            raise SystemExit(f"{filename}: {int(np.isnan(values).sum())} hours missing")
        frame = pd.DataFrame({"price_eur_per_kwh": values / 1000.0}, index=utc)
        zero_runs = _runs(values == 0.0)
        local_days = pd.Series(1, index=utc.tz_convert(tz)).groupby(lambda t: t.date()).size()
        log.info(
            "%s: %d hours, %d local days (%s h days: %s), mean %.2f EUR/MWh, min %.2f, max %.2f,"
            " %d negative hours, %d exact zeros in %d runs (longest %d h)",
            zone,
            len(frame),
            len(local_days),
            sorted(set(local_days.to_numpy().tolist())),
            {str(k): int(v) for k, v in local_days.value_counts().items()},
            values.mean(),
            values.min(),
            values.max(),
            int((values < 0).sum()),
            int((values == 0).sum()),
            len(zero_runs),
            max((n for _, n in zero_runs), default=0),
        )
        comment = (
            f"Day-ahead spot price, bidding zone {zone}, local days {PRICE_FIRST_DAY} .. "
            f"{PRICE_END_DAY} (excl.), hourly, UTC start of hour, EUR/kWh.\n"
            "Source: ENTSO-E Transparency Platform via github.com/Kasra-Aliyon/Deepforkit "
            "(CC0 1.0). Built by scripts/build_data.py."
        )
        _write_csv(out / PRICE_ZONES[zone], comment, frame, {"price_eur_per_kwh": ".6f"})


# ---------------------------------------------------------------------------------------------
# household


def _chain(
    time_mid_s: FloatArray,
    k: FloatArray | float,
    tilt_deg: float,
    azimuth_deg: float,
    dc_w: float,
    ac_limit_w: float,
    cache: dict[str, object],
) -> FloatArray:
    """The PV chain of openbess.twin.pv for the household site (geometry cached)."""
    if "geom" not in cache:
        new_geom = solar_geometry(time_mid_s, SITE_LAT_DEG, SITE_LON_DEG, SITE_ALT_M)
        cache["geom"] = new_geom
        cache["ghi_cs"] = clearsky_ghi_w_m2(
            new_geom, linke_turbidity_daily(SITE_LAT_DEG, SITE_LON_DEG), SITE_ALT_M
        )
        cache["temp"] = air_temperature_degc(
            time_mid_s, SITE_LON_DEG, NE_FRANCE_MONTHLY_AIR_TEMPERATURE_DEGC, 4.0
        )
    cached = cache["geom"]
    if not isinstance(cached, SolarGeometry):
        raise TypeError("geometry cache corrupted")
    geom = cached
    ghi = np.asarray(k) * np.asarray(cache["ghi_cs"])
    poa = plane_of_array_w_m2(ghi, geom, tilt_deg, azimuth_deg, 0.2)
    return ac_power_from_poa_w(
        poa, np.asarray(cache["temp"]), dc_w, ac_limit_w, LOSSES_FRACTION, -0.004, 0.96
    )


def _fit_orientation(
    t_start_s: FloatArray, pv: FloatArray, local_day: npt.NDArray[np.int64]
) -> dict[str, float]:
    """Grid search of tilt and azimuth on the clearest days.

    The time stamps label the start of each 30-min interval (pandas' resampling default,
    which EMHASS uses). The alternative (end label) fits the clear days as well with a south
    orientation, but then production would start 2.4 deg below the horizon in the morning and
    stop 3 deg above it in the evening; with the start label the asymmetry is smaller and
    matches the fitted south-west orientation (morning threshold higher than evening).
    """
    best: tuple[float, float, float, float, float] | None = None
    ok = ~np.isnan(pv)
    m = np.where(ok, pv, 0.0)
    for label_offset_s in (0.5 * HALF_HOUR_S,):
        cache: dict[str, object] = {}
        for tilt in np.arange(0.0, 65.0, 5.0):
            for az in np.arange(90.0, 275.0, 5.0):
                c = _chain(t_start_s + label_offset_s, 1.0, tilt, az, 1000.0, 1000.0, cache)
                cc = np.where(ok, c, 0.0)
                mc = np.bincount(local_day, m * cc)
                ccs = np.bincount(local_day, cc * cc)
                mm = np.bincount(local_day, m * m)
                gaps = np.bincount(local_day, (~ok & (c > 10.0)).astype(np.float64))
                valid = (gaps == 0) & (mm > 0) & (ccs > 0)
                s = mc[valid] / ccs[valid]
                resid = np.sqrt(np.maximum(mm[valid] - s * mc[valid], 0.0) / mm[valid])
                order = np.argsort(resid)[:20]
                score = float(resid[order].mean())
                scale = float(np.median(s[order]))
                if best is None or score < best[0]:
                    best = (score, label_offset_s, float(tilt), float(az), scale)
    if best is None:
        raise SystemExit("orientation fit failed")
    score, offset, tilt, az, scale = best
    log.info(
        "household PV fit: interval midpoint = label %+.0f s, tilt %.0f deg, azimuth %.0f deg,"
        " DC %.0f W; relative RMS residual on the 20 clearest days %.3f",
        offset,
        tilt,
        az,
        scale * 1000.0,
        score,
    )
    return {
        "label_to_midpoint_s": offset,
        "tilt_deg": tilt,
        "azimuth_deg": az,
        "dc_capacity_w": round(scale * 1000.0, 1),
        "clear_day_relative_rms": round(score, 4),
    }


def _invert_clearness(
    t_mid_s: FloatArray, pv: FloatArray, fit: dict[str, float], ac_limit_w: float
) -> tuple[FloatArray, FloatArray]:
    """Clearness index k per interval such that the chain gives the measured PV.

    Returns (k, clear-sky chain power); k is NaN where PV is missing or the sun is too low.
    """
    cache: dict[str, object] = {}
    grid = np.linspace(0.0, MAX_CLEARNESS_INDEX, 151)
    args = (fit["tilt_deg"], fit["azimuth_deg"], fit["dc_capacity_w"], ac_limit_w, cache)
    table = np.stack([_chain(t_mid_s, k, *args) for k in grid])  # type: ignore[arg-type]
    clear = _chain(t_mid_s, 1.0, *args)  # type: ignore[arg-type]
    # first grid point at which the chain reaches the measurement (monotone in practice)
    reached = table >= np.nan_to_num(pv, nan=np.inf)[None, :]
    j = np.argmax(reached, axis=0)
    never = ~reached.any(axis=0)
    j = np.where(never, grid.size - 1, j)
    lo = np.maximum(j - 1, 0)
    cols = np.arange(pv.size)
    p_lo, p_hi = table[lo, cols], table[j, cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(p_hi > p_lo, (pv - p_lo) / (p_hi - p_lo), 1.0)
    k = grid[lo] + np.clip(frac, 0.0, 1.0) * (grid[j] - grid[lo])
    k = np.where(never, MAX_CLEARNESS_INDEX, k)
    low_sun = clear < 0.03 * fit["dc_capacity_w"]
    k = np.where(np.isnan(pv) | low_sun, np.nan, k)
    return k, clear


def _fill_load(load: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Fill load gaps from 1 week before, else after, else 2 or 3 weeks away, else linearly."""
    week = int(7 * 86400 / HALF_HOUR_S)
    missing = np.isnan(load)
    filled = load.copy()
    for shift in (-week, week, -2 * week, 2 * week, -3 * week, 3 * week):
        src = np.full_like(filled, np.nan)
        if shift < 0:
            src[-shift:] = load[:shift]
        else:
            src[:-shift] = load[shift:]
        take = np.isnan(filled) & ~np.isnan(src)
        filled[take] = src[take]
    rest = np.isnan(filled)
    log.info(
        "household load: %d gaps filled from other weeks, %d linearly",
        int(missing.sum() - rest.sum()),
        int(rest.sum()),
    )
    if rest.any():
        x = np.arange(filled.size)
        filled[rest] = np.interp(x[rest], x[~rest], filled[~rest])
    return filled, missing


def build_household(source: Path, out: Path) -> None:
    """Household load + PV with filled gaps and the derived clearness index."""
    raw = pd.read_csv(source / "household" / "household_load_pv_fr_2024.csv")
    index = pd.DatetimeIndex(pd.to_datetime(raw["time"], utc=True))
    frame = raw.set_index(index)[["load_w", "pv_w"]].astype(np.float64)
    frame = frame.loc[pd.Timestamp(HOUSEHOLD_START) : pd.Timestamp(HOUSEHOLD_END)]
    frame = frame[frame.index < pd.Timestamp(HOUSEHOLD_END)]
    full = pd.date_range(HOUSEHOLD_START, HOUSEHOLD_END, freq="30min", inclusive="left")
    frame = frame.reindex(full)
    load = frame["load_w"].to_numpy(dtype=np.float64).copy()
    pv = frame["pv_w"].to_numpy(dtype=np.float64).copy()
    zero_load = load == 0.0
    log.info(
        "household: %d intervals, load gaps %d, PV empty %d, load exactly 0 W: %d (treated as"
        " gaps, PV too)",
        load.size,
        int(np.isnan(load).sum()),
        int(np.isnan(pv).sum()),
        int(zero_load.sum()),
    )
    load[zero_load] = np.nan
    pv[zero_load] = np.nan

    t_start = to_unix_s(full)
    local_midnight = full.tz_convert("Europe/Paris").normalize()
    local_day = np.round(
        ((local_midnight - local_midnight[0]) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)
    ).astype(np.int64)
    fit = _fit_orientation(t_start, pv, local_day)
    t_mid = t_start + fit["label_to_midpoint_s"]
    max_measured = float(np.nanmax(pv))
    household_ac_limit = max(fit["dc_capacity_w"], max_measured)
    k, clear = _invert_clearness(t_mid, pv, fit, household_ac_limit)

    night = clear <= 0.0
    pv_missing = np.isnan(pv)
    night_gap = pv_missing & night
    day_gap = pv_missing & ~night
    log.info(
        "household PV gaps: %d at night (-> 0 W), %d in daylight (-> from interpolated k),"
        " daylight gap runs: %d, longest %.1f h",
        int(night_gap.sum()),
        int(day_gap.sum()),
        len(_runs(day_gap)),
        max((n for _, n in _runs(day_gap)), default=0) * 0.5,
    )
    # daily clearness index (weighted by clear-sky power) for low sun and night
    valid = ~np.isnan(k)
    w = np.where(valid, clear, 0.0)
    num = np.bincount(local_day, np.where(valid, k, 0.0) * w)
    den = np.bincount(local_day, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        daily = np.where(den > 0, num / den, np.nan)
    day_series = pd.Series(daily).interpolate(limit_direction="both").to_numpy()
    # daytime gaps: interpolate k in time; low sun / night: daily value
    k_series = pd.Series(np.where(day_gap, np.nan, k))
    measured_low = ~pv_missing & np.isnan(k)
    k_series[measured_low | night] = day_series[local_day][measured_low | night]
    k_interp = k_series.interpolate(limit_direction="both").to_numpy(dtype=np.float64)
    k_filled: FloatArray = np.clip(k_interp, 0.0, MAX_CLEARNESS_INDEX).astype(np.float64)

    pv_filled = pv.copy()
    pv_filled[night_gap] = 0.0
    chain = _chain(
        t_mid,
        k_filled,
        fit["tilt_deg"],
        fit["azimuth_deg"],
        fit["dc_capacity_w"],
        household_ac_limit,
        {},
    )
    pv_filled[day_gap] = chain[day_gap]
    good = ~pv_missing
    err = chain[good] - pv[good]
    log.info(
        "household PV re-synthesis from k: bias %.1f W, RMS %.1f W, energy %.0f kWh vs measured"
        " %.0f kWh (on measured intervals)",
        float(err.mean()),
        float(np.sqrt(np.mean(err**2))),
        float(chain[good].sum() * 0.5e-3),
        float(pv[good].sum() * 0.5e-3),
    )
    load_filled, load_missing = _fill_load(load)
    log.info(
        "household: load %.0f kWh/a, PV %.0f kWh/a after filling (%.0f kWh filled in daylight)",
        load_filled.sum() * 0.5e-3,
        pv_filled.sum() * 0.5e-3,
        pv_filled[day_gap].sum() * 0.5e-3,
    )
    result = pd.DataFrame(
        {
            "load_w": load_filled,
            "pv_w": np.maximum(pv_filled, 0.0),
            "clearness_index": k_filled,
            "load_filled": load_missing.astype(np.int64),
            "pv_filled": day_gap.astype(np.int64),
        },
        index=full,
    )
    comment = (
        "Household in north-east France (48.83 N, 6.86 E), 30-min averages, UTC start of"
        " interval.\nload_w, pv_w [W] measured; gaps filled (flags load_filled, pv_filled), see"
        " README.md.\nclearness_index: GHI / Ineichen clear-sky GHI derived from pv_w by"
        " scripts/build_data.py.\nSource: EMHASS repository data/long_train_data.pkl (MIT)."
    )
    _write_csv(
        out / HOUSEHOLD_FILE,
        comment,
        result,
        {
            "load_w": ".1f",
            "pv_w": ".1f",
            "clearness_index": ".3f",
            "load_filled": "d",
            "pv_filled": "d",
        },
    )
    params = {
        "latitude_deg": SITE_LAT_DEG,
        "longitude_deg": SITE_LON_DEG,
        "altitude_m": SITE_ALT_M,
        **fit,
        "losses_fraction": LOSSES_FRACTION,
        "max_measured_w": round(max_measured, 1),
        "pv_rms_error_w": round(float(np.sqrt(np.mean(err**2))), 1),
    }
    text = ["# Household PV plant fitted by scripts/build_data.py (see README.md)", "key,value"]
    text += [f"{key},{value}" for key, value in params.items()]
    (out / HOUSEHOLD_PV_FIT_FILE).write_text("\n".join(text) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# commercial


def build_commercial(out: Path) -> None:
    """BDEW G25 commercial profile for 2023, 400 MWh/a."""
    frame = generate_commercial_load(2023, COMMERCIAL_REFERENCE_ENERGY_WH)
    log.info(
        "commercial: %d intervals, mean %.1f kW, peak %.1f kW, min %.1f kW, %.1f MWh",
        len(frame),
        frame["load_w"].mean() / 1e3,
        frame["load_w"].max() / 1e3,
        frame["load_w"].min() / 1e3,
        frame["load_w"].sum() * 0.25 / 1e6,
    )
    comment = (
        "Commercial load: BDEW G25 standard load profile (demandlib 0.2.2, MIT), German local"
        " time and public holidays,\ncalendar year 2023, 15-min averages, UTC start of interval,"
        " scaled to 400 MWh/a. Built by scripts/build_data.py."
    )
    _write_csv(out / COMMERCIAL_FILE, comment, frame, {"load_w": ".1f"})


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", default="prices,household,commercial")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parts = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    if "prices" in parts:
        build_prices(args.source, args.out)
    if "household" in parts:
        build_household(args.source, args.out)
    if "commercial" in parts:
        build_commercial(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
