"""Bundled data and the time-series readers (openbess.data)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.data import (
    WEEK_S,
    YEAR_S,
    generate_commercial_load,
    german_public_holidays,
    read_commercial_load,
    read_household,
    read_household_pv_fit,
    read_prices,
    read_timeseries_csv,
    sample,
    to_unix_s,
    wrap_times_s,
)
from openbess.errors import DataError, SimulationError

DATA = Path(__file__).parent / "data"


def _local_day_hours(index: pd.DatetimeIndex, tz: str) -> pd.Series:
    local = index.tz_convert(tz)
    return pd.Series(1, index=local).groupby(local.date).size()


# --- prices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("zone", "tz"), [("DE_LU", "Europe/Berlin"), ("NL", "Europe/Amsterdam")])
def test_prices_one_year_utc_hourly(zone: str, tz: str) -> None:
    p = read_prices(zone)
    assert list(p.columns) == ["price_eur_per_kwh"]
    assert str(p.index.tz) == "UTC"
    assert len(p) == 8760
    assert p.index[0] == pd.Timestamp("2022-07-01", tz=tz)
    assert p.index[-1] == pd.Timestamp("2023-06-30 23:00", tz=tz)
    assert (np.diff(to_unix_s(p.index)) == 3600.0).all()
    assert not p["price_eur_per_kwh"].isna().any()
    hours = _local_day_hours(pd.DatetimeIndex(p.index), tz)
    assert len(hours) == 365
    assert hours[dt.date(2022, 10, 30)] == 25
    assert hours[dt.date(2023, 3, 26)] == 23
    assert set(hours.drop([dt.date(2022, 10, 30), dt.date(2023, 3, 26)])) == {24}


@pytest.mark.parametrize(
    ("zone", "utc", "eur_per_mwh"),
    [
        # source line "7/1/2022 0:00,268.71,..." (CEST) -> 22:00 UTC the day before
        ("DE_LU", "2022-06-30T22:00Z", 268.71),
        # autumn change: the source's single local 02:00 row (average) fills both UTC hours
        ("DE_LU", "2022-10-30T00:00Z", 100.06),
        ("DE_LU", "2022-10-30T01:00Z", 100.06),
        ("DE_LU", "2022-10-30T02:00Z", 98.31),  # local 03:00 CET
        ("DE_LU", "2022-10-29T23:00Z", 100.49),  # local 01:00 CEST
        # spring change: local 01:00 CET, then 03:00 CEST (the 02:00 fill row is dropped)
        ("DE_LU", "2023-03-26T00:00Z", 39.23),
        ("DE_LU", "2023-03-26T01:00Z", 40.12),
        ("DE_LU", "2023-06-30T21:00Z", 109.47),  # last hour: 6/30/2023 23:00 CEST
        ("NL", "2022-10-30T00:00Z", 100.065),
        ("NL", "2023-03-26T01:00Z", 84.9),
    ],
)
def test_prices_spot_check_against_source(zone: str, utc: str, eur_per_mwh: float) -> None:
    p = read_prices(zone)["price_eur_per_kwh"]
    assert p[pd.Timestamp(utc)] == pytest.approx(eur_per_mwh / 1000.0, abs=1e-9)


def test_prices_zone_names_and_errors() -> None:
    a = read_prices("DE-LU")
    b = read_prices("de_lu")
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="unknown price zone 'FR'"):
        read_prices("FR")


def test_prices_zero_runs_are_short_and_negative_prices_exist() -> None:
    for zone, longest in (("DE_LU", 1), ("NL", 3)):
        v = read_prices(zone)["price_eur_per_kwh"].to_numpy()
        zero = np.concatenate([[0], (v == 0.0).astype(int), [0]])
        d = np.diff(zero)
        runs = np.flatnonzero(d == -1) - np.flatnonzero(d == 1)
        assert runs.max() == longest
        assert (v < 0).sum() > 100


def test_readers_return_copies() -> None:
    p = read_prices("NL")
    p.iloc[0, 0] = 1e6
    assert read_prices("NL").iloc[0, 0] != 1e6


# --- household ------------------------------------------------------------------------------


def test_household_complete_year_without_gaps() -> None:
    h = read_household()
    assert len(h) == 17520
    assert h.index[0] == pd.Timestamp("2024-02-29", tz="Europe/Paris")
    assert (np.diff(to_unix_s(h.index)) == 1800.0).all()
    assert not h.isna().any().any()
    assert (h["pv_w"] >= 0).all()
    assert (h["load_w"] > 0).all()
    assert h["load_filled"].dtype == bool
    assert h["load_filled"].sum() == 345
    assert h["pv_filled"].sum() == 326
    k = h["clearness_index"]
    assert k.between(0.0, 1.5).all()
    # annual energies as measured (kWh)
    assert h["load_w"].sum() * 0.5e-3 == pytest.approx(7854, abs=5)
    assert h["pv_w"].sum() * 0.5e-3 == pytest.approx(5330, abs=5)


def test_household_pv_zero_at_night_and_filled_only_by_day() -> None:
    h = read_household()
    local_hour = h.index.tz_convert("Europe/Paris").hour
    night = (local_hour >= 23) | (local_hour <= 3)
    assert (h.loc[night, "pv_w"] == 0.0).all()
    assert (h.loc[h["pv_filled"], "pv_w"] >= 0.0).all()
    assert not h.loc[night, "pv_filled"].any()


def test_household_pv_fit_values() -> None:
    fit = read_household_pv_fit()
    assert fit["tilt_deg"] == 35.0
    assert fit["azimuth_deg"] == 210.0
    assert 4500.0 < fit["dc_capacity_w"] < 6000.0
    assert fit["max_measured_w"] == pytest.approx(4411.4)


# --- commercial -----------------------------------------------------------------------------


def test_commercial_profile_year_and_energy() -> None:
    c = read_commercial_load()
    assert len(c) == 35040
    assert c["load_w"].sum() * 0.25 == pytest.approx(400e6, rel=1e-6)
    local = c.index.tz_convert("Europe/Berlin")
    counts = pd.Series(1, index=local).groupby(local.date).size()
    assert counts[dt.date(2023, 3, 26)] == 92
    assert counts[dt.date(2023, 10, 29)] == 100
    # weekday afternoons are busier than Sundays
    wk = c["load_w"][(local.day_of_week < 5) & (local.hour == 11)].mean()
    sun = c["load_w"][(local.day_of_week == 6) & (local.hour == 11)].mean()
    assert wk > 1.5 * sun


def test_generate_commercial_load_reproduces_bundled_file() -> None:
    pytest.importorskip("demandlib")
    gen = generate_commercial_load(2023, 400e6)
    bundled = read_commercial_load()
    assert gen.index.equals(bundled.index)
    np.testing.assert_allclose(gen["load_w"], bundled["load_w"], atol=0.051)
    with pytest.raises(ValueError, match="annual_energy_wh"):
        generate_commercial_load(2023, 0.0)


def test_german_holidays_2023() -> None:
    days = german_public_holidays(2023)
    assert dt.date(2023, 4, 7) in days  # Good Friday
    assert dt.date(2023, 4, 10) in days  # Easter Monday
    assert dt.date(2023, 5, 18) in days  # Ascension
    assert dt.date(2023, 5, 29) in days  # Whit Monday
    assert len(days) == 9


# --- read_timeseries_csv --------------------------------------------------------------------


def test_read_user_file_with_local_offsets_across_dst() -> None:
    df = read_timeseries_csv(DATA / "load_local_time.csv", ["load_w"])
    assert str(df.index.tz) == "UTC"
    assert len(df) == 49  # 24 + 25 hours
    assert (np.diff(to_unix_s(df.index)) == 3600.0).all()
    # the two 02:00 local hours of 2024-10-27 are distinct UTC hours
    assert df.loc[pd.Timestamp("2024-10-27T00:00Z"), "load_w"] == pytest.approx(424.7)
    assert df.loc[pd.Timestamp("2024-10-27T01:00Z"), "load_w"] == pytest.approx(539.2)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "user.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "time,load_w\n2024-01-01T00:00Z,1\n2024-01-01T01:00Z,abc\n",
            r"user\.csv: line 3, column 'load_w': cannot parse 'abc'",
        ),
        (
            "# comment\n\ntime,load_w\n2024-01-01T00:00Z,1\n\n2024-01-01T01:00Z,x\n",
            r"line 6, column 'load_w'",
        ),
        (
            "time,load_w\n2024-01-01T00:00Z,1\n2024-01-01 01:00,2\n",
            r"line 3, column 'time': no UTC offset",
        ),
        (
            "time,load_w\n2024-01-01T00:00Z,1\n2024-13-01T01:00Z,2\n",
            r"line 3, column 'time': not an ISO 8601 time",
        ),
        (
            "time,load_w\n2024-01-01T00:00Z,1\n2024-01-01T01:00+01:00,2\n",
            r"line 3, column 'time': time '2024-01-01T01:00\+01:00' is duplicate",
        ),
        (
            "time,load_w\n2024-01-01T01:00Z,1\n2024-01-01T00:00Z,2\n",
            r"line 3, column 'time'.*earlier than the line before",
        ),
        ("time,power\n2024-01-01T00:00Z,1\n", r"line 1: missing column\(s\) 'load_w'"),
        ("load_w\n1\n", r"missing column\(s\) 'time'"),
        ("time,load_w\n2024-01-01T00:00Z,1,2\n", r"line 2: expected 2 fields"),
        ("", r"line 1: empty file"),
        ("time,load_w\n", r"no data rows"),
    ],
)
def test_read_errors_name_file_line_and_column(tmp_path: Path, text: str, pattern: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=pattern):
        read_timeseries_csv(path, ["load_w"])


def test_read_missing_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "time,load_w\n2024-01-01T00:00Z,1\n2024-01-01T01:00Z,\n")
    df = read_timeseries_csv(path, ["load_w"])
    assert np.isnan(df["load_w"].iloc[1])
    with pytest.raises(DataError, match="line 3, column 'load_w': empty cell"):
        read_timeseries_csv(path, ["load_w"], allow_missing=False)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: cannot read"):
        read_timeseries_csv(tmp_path / "nope.csv", ["x"])


# --- time helpers ---------------------------------------------------------------------------


def test_to_unix_s_requires_tz() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_unix_s(pd.DatetimeIndex(["2024-01-01"]))
    assert float(to_unix_s(pd.Timestamp("1970-01-01T00:01Z"))) == 60.0
    idx = pd.date_range("2024-03-31 01:00", periods=3, freq="h", tz="Europe/Paris")
    assert np.diff(to_unix_s(idx)).tolist() == [3600.0, 3600.0]


YEAR_START = pd.Timestamp("2022-07-01", tz="Europe/Berlin").timestamp()
YEAR_END = pd.Timestamp("2023-07-01", tz="Europe/Berlin").timestamp()


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=4.1e9))
def test_wrap_keeps_weekday_and_season(t: float) -> None:
    w = float(wrap_times_s(np.array([t]), YEAR_START, YEAR_END)[0])
    assert YEAR_START <= w < YEAR_END
    shift_weeks = (t - w) / WEEK_S
    assert shift_weeks == pytest.approx(round(shift_weeks), abs=1e-9)
    # season kept: the shift is a whole number of years to within half a week (rounding to
    # whole weeks), plus one week when that lands just outside the window
    shift = t - w
    drift_days = (shift - round(shift / YEAR_S) * YEAR_S) / 86400.0
    assert abs(drift_days) <= 10.5 + 1e-6


def test_wrap_inside_unchanged_and_short_windows() -> None:
    t = np.array([YEAR_START, YEAR_START + 1e6, YEAR_END - 1.0])
    np.testing.assert_array_equal(wrap_times_s(t, YEAR_START, YEAR_END), t)
    # two-week window: modulo whole weeks
    w = wrap_times_s(np.array([30.0 * 86400.0]), 0.0, 15.0 * 86400.0)
    assert w[0] == pytest.approx(2.0 * 86400.0)
    with pytest.raises(ValueError, match="empty window"):
        wrap_times_s(np.array([0.0]), 1.0, 1.0)


def test_sample_hold_linear_and_strict() -> None:
    idx = np.array([0.0, 10.0, 20.0])
    val = np.array([1.0, 2.0, 4.0])
    np.testing.assert_array_equal(
        sample(idx, val, [0.0, 9.9, 10.0, 29.9], method="hold"), [1.0, 1.0, 2.0, 4.0]
    )
    np.testing.assert_allclose(sample(idx, val, [5.0, 10.0, 15.0], method="linear"), [1, 1.5, 2])
    assert sample(idx, val, [30.0], method="hold")[0] == 1.0  # wraps to the start
    with pytest.raises(SimulationError, match="covers"):
        sample(idx, val, [30.0], wrap=False)
