"""Forecasts: error measures, no peeking, exactness on periodic series, provider shapes."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.data.timeseries import DAY_S, WEEK_S, to_unix_s
from openbess.ems.forecast import (
    FORECAST_COLUMNS,
    AnalogForecaster,
    ClearSkyPv,
    ClearSkyPvForecaster,
    ForecastError,
    GradientBoostingForecaster,
    HistoryForecastProvider,
    HoltWintersForecaster,
    LocalCalendar,
    PerfectForecastProvider,
    SeasonalNaiveForecaster,
    SeasonalProfileForecaster,
    day_ahead_known_until_s,
    evaluate_forecaster,
    forecast_error,
    mean_absolute_error,
    seasonal_naive,
    skill_score,
)
from openbess.twin.pv import PvPlant

STEP_S = 900.0
START = pd.Timestamp("2024-03-01T00:00:00Z")
START_S = float(to_unix_s(START))


# -- error measures ---------------------------------------------------------------------------
def test_mae_and_skill_on_a_constructed_series():
    actual = np.array([1.0, 2.0, 3.0, 4.0])
    forecast = np.array([1.0, 3.0, 3.0, 2.0])  # errors 0, 1, 0, 2
    naive = np.array([2.0, 2.0, 2.0, 2.0])  # errors 1, 0, 1, 2
    assert mean_absolute_error(actual, forecast) == pytest.approx(0.75)
    assert mean_absolute_error(actual, naive) == pytest.approx(1.0)
    assert skill_score(0.75, 1.0) == pytest.approx(0.25)
    err = forecast_error(actual, forecast, naive)
    assert err == ForecastError(0.75, 1.0, pytest.approx(0.25), 4)


def test_error_measures_skip_missing_pairs_and_check_shapes():
    actual = np.array([1.0, np.nan, 3.0])
    forecast = np.array([2.0, 5.0, np.nan])
    assert mean_absolute_error(actual, forecast) == pytest.approx(1.0)
    assert math.isnan(mean_absolute_error([np.nan], [1.0]))
    with pytest.raises(ValueError, match="shapes differ"):
        mean_absolute_error([1.0, 2.0], [1.0])
    # per-lead MAE of a (origins, leads) array
    a = np.array([[1.0, 1.0], [1.0, 1.0]])
    f = np.array([[1.0, 3.0], [2.0, 1.0]])
    err = forecast_error(a, f, np.zeros_like(a))
    assert err.mae_by_lead == pytest.approx((0.5, 1.0))
    assert err.skill == pytest.approx(1.0 - 0.75 / 1.0)


def test_skill_is_nan_when_the_baseline_is_perfect_and_negative_when_worse():
    assert math.isnan(skill_score(0.0, 0.0))
    assert skill_score(2.0, 1.0) == pytest.approx(-1.0)
    assert skill_score(0.0, 1.0) == 1.0


def periodic(n: int, season: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pattern = rng.uniform(100.0, 2000.0, season)
    return np.tile(pattern, n // season + 1)[:n]


def test_seasonal_naive_gives_zero_error_on_a_periodic_series():
    day = round(DAY_S / STEP_S)
    y = periodic(20 * day, day)
    err = evaluate_forecaster(
        SeasonalNaiveForecaster(DAY_S),
        y,
        START_S,
        STEP_S,
        horizon_steps=2 * day + 5,  # beyond one season: two seasons back
        first_origin=3 * day,
        origin_every=7,
        naive_season_s=DAY_S,
    )
    assert err.mae == 0.0
    assert err.mae_naive == 0.0
    assert math.isnan(err.skill)
    assert err.n > 1000


def test_seasonal_naive_reaches_back_whole_seasons():
    h = np.arange(10.0)
    np.testing.assert_array_equal(seasonal_naive(h, 7, 3), [7, 8, 9, 7, 8, 9, 7])
    assert np.isnan(seasonal_naive(h[:2], 1, 3)).all()


# -- exactness of the models on periodic series -----------------------------------------------
def local_periodic_frame(days: int, tz: str) -> tuple[np.ndarray, float]:
    """A load that depends only on the local time of day (DST included)."""
    t = START_S + np.arange(days * 96) * STEP_S
    cal = LocalCalendar(tz)
    slot = cal.slot_of_day(t, STEP_S)
    pattern = periodic(96, 96, seed=3)
    return pattern[slot], START_S


@pytest.mark.parametrize("by", ["day", "day_type", "weekday"])
def test_profile_is_exact_on_a_local_time_periodic_series_across_dst(by: str):
    y, s0 = local_periodic_frame(45, "Europe/Paris")  # 2024-03-31 is a DST change
    f = SeasonalProfileForecaster(weeks=2, by=by, tz="Europe/Paris")
    err = evaluate_forecaster(
        f, y, s0, STEP_S, horizon_steps=96, first_origin=15 * 96, origin_every=37
    )
    assert err.mae == pytest.approx(0.0, abs=1e-9)
    # in UTC the same series is not periodic around the change: the naive baseline errs
    assert err.mae_naive > 1.0


def test_anchoring_follows_a_level_shift():
    day = 96
    y = periodic(21 * day, day).copy()
    y[-8:] += 500.0  # the last two hours are 500 W above the profile
    plain = SeasonalProfileForecaster(weeks=2, by="day").forecast(y, START_S, STEP_S, 8)
    anchored = SeasonalProfileForecaster(weeks=2, by="day", anchor_tau_s=3 * 3600.0).forecast(
        y, START_S, STEP_S, 8
    )
    gap = anchored - plain
    assert gap[0] == pytest.approx(500.0 * math.exp(-0.5 * STEP_S / (3 * 3600.0)), rel=0.05)
    assert np.all(np.diff(gap) < 0)  # decays with the lead time


def test_analog_carries_a_started_load_as_long_as_it_ran_on_similar_days():
    """A 3 kW load that starts at 21:00 on some days and runs 2 h: once started, the analogs
    (the days it started the same way) carry it for 2 h; an anchor alone lets it decay."""
    day = 96
    rng = np.random.default_rng(5)
    n_days = 29
    y = np.full(n_days * day, 400.0) + rng.normal(0.0, 20.0, n_days * day)
    on_days = [d for d in range(n_days - 1) if d % 3 == 0]
    for d in on_days:
        y[d * day + 84 : d * day + 92] += 3000.0  # 21:00-23:00 UTC
    # today it started: the last hour (20:15-21:15) is what the on-days looked like
    history = y[: (n_days - 1) * day + 85]
    history[-1] = 3400.0
    analog = AnalogForecaster(days=28, k=5, blend_tau_s=6 * 3600.0, anchor_tau_s=None)
    out = analog.forecast(history, START_S, STEP_S, 12)
    assert np.all(out[:7] > 2800.0)  # 21:15 .. 23:00: still running
    assert np.all(out[8:] < 1000.0)  # and then off, as on those days
    anchored = SeasonalProfileForecaster(weeks=2, by="day", anchor_tau_s=1800.0, anchor_s=900.0)
    plain = anchored.forecast(history, START_S, STEP_S, 12)
    assert np.mean(np.abs(out[:7] - 3400.0)) < 0.3 * np.mean(np.abs(plain[:7] - 3400.0))
    # the same history without the start: the analogs are the off-days
    quiet = history.copy()
    quiet[-1] = 400.0
    assert np.all(analog.forecast(quiet, START_S, STEP_S, 8) < 1500.0)


def test_analog_falls_back_to_its_base_for_long_leads_and_short_history():
    y = periodic(21 * 96, 96)
    base = SeasonalProfileForecaster(weeks=2, by="day")
    analog = AnalogForecaster(days=14, k=3, blend_tau_s=1800.0, base=base)
    out = analog.forecast(y, START_S, STEP_S, 120)
    ref = base.forecast(y, START_S, STEP_S, 120)
    np.testing.assert_allclose(out[-24:], ref[-24:], atol=1e-3 * np.abs(ref).max())
    # on an exactly periodic series the analogs agree with the profile at every lead
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_array_equal(
        analog.forecast(y[:50], START_S, STEP_S, 10), base.forecast(y[:50], START_S, STEP_S, 10)
    )
    with pytest.raises(ValueError, match="k must be"):
        AnalogForecaster(k=0)


def test_holt_winters_is_exact_on_a_periodic_series_and_restarts_on_other_history():
    day = 96
    y = periodic(20 * day, day)
    hw = HoltWintersForecaster()
    f1 = hw.forecast(y[: 15 * day], START_S, STEP_S, 2 * day)
    np.testing.assert_allclose(f1, y[15 * day : 17 * day], atol=1e-6)
    # grows incrementally, then a shorter history restarts the state
    f2 = hw.forecast(y[: 15 * day + 10], START_S, STEP_S, day)
    np.testing.assert_allclose(f2, y[15 * day + 10 : 16 * day + 10], atol=1e-6)
    f3 = hw.forecast(y[: 10 * day], START_S, STEP_S, day)
    np.testing.assert_allclose(f3, y[10 * day : 11 * day], atol=1e-6)


def sine_clear_sky(t: np.ndarray, step_s: float) -> np.ndarray:
    hour = np.mod((t + 0.5 * step_s) / 3600.0, 24.0)
    return np.maximum(0.0, 4000.0 * np.sin(np.pi * (hour - 6.0) / 12.0))


def test_clear_sky_pv_with_a_constant_clearness_index_is_exact():
    t = START_S + np.arange(20 * 96) * STEP_S
    pv = 0.6 * sine_clear_sky(t, STEP_S)
    f = ClearSkyPvForecaster(sine_clear_sky)
    k = 12 * 96 + 40  # mid-morning
    out = f.forecast(pv[:k], START_S, STEP_S, 2 * 96)
    np.testing.assert_allclose(out, pv[k : k + 2 * 96], atol=1e-6)


def test_clear_sky_of_a_real_plant_is_zero_at_night_and_within_the_inverter():
    plant = PvPlant(6000.0, 5000.0, tilt_deg=35.0, azimuth_deg=210.0)
    cs = ClearSkyPv(plant)
    t = float(to_unix_s(pd.Timestamp("2024-06-21T00:00Z"))) + np.arange(96) * STEP_S
    p = cs(t, STEP_S)
    assert p[:8].max() == 0.0  # 00:00-02:00 UTC
    assert 3000.0 < p.max() <= 5000.0


# -- calendar and publication -----------------------------------------------------------------
def test_local_calendar_matches_pandas_and_marks_holidays():
    idx = pd.date_range("2024-03-25", "2024-11-05", freq="37min", tz="UTC")
    t = to_unix_s(idx)
    cal = LocalCalendar("Europe/Paris", holidays=(dt.date(2024, 5, 1),))
    local = idx.tz_convert("Europe/Paris")
    expected = np.array([x.utcoffset().total_seconds() for x in local])
    np.testing.assert_array_equal(cal.offset_s(t), expected)
    np.testing.assert_array_equal(cal.weekday(t), local.day_of_week)
    dtype = cal.day_type(t)
    may1 = np.asarray(local.date == dt.date(2024, 5, 1))  # a Wednesday
    assert (dtype[may1] == 2).all()
    assert (dtype[np.asarray(local.day_of_week == 5)] == 1).all()
    with pytest.raises(ValueError, match="unknown time zone"):
        LocalCalendar("Mars/Olympus")


@pytest.mark.parametrize(
    ("now", "until"),
    [
        ("2024-03-30T09:00Z", "2024-03-30T23:00Z"),  # 10:00 CET: today only
        ("2024-03-30T12:30Z", "2024-03-31T22:00Z"),  # 13:30 CET: tomorrow (23 h, DST) too
        ("2024-07-01T10:59Z", "2024-07-01T22:00Z"),  # 12:59 CEST
        ("2024-07-01T11:00Z", "2024-07-02T22:00Z"),  # 13:00 CEST
    ],
)
def test_day_ahead_prices_are_known_until_the_end_of_today_or_tomorrow(now: str, until: str):
    got = float(day_ahead_known_until_s(float(to_unix_s(pd.Timestamp(now)))))
    assert got == float(to_unix_s(pd.Timestamp(until)))


# -- providers: no peeking, shapes, units -----------------------------------------------------
def frame(days: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 96
    t = START_S + np.arange(n) * STEP_S
    hour = np.mod(t / 3600.0, 24.0)
    load = 600.0 + 400.0 * np.sin(2 * np.pi * hour / 24.0) ** 2 + rng.gamma(2.0, 150.0, n)
    pv = sine_clear_sky(t, STEP_S) * rng.uniform(0.2, 1.0, n).repeat(1)
    spot = 0.1 + 0.05 * np.sin(2 * np.pi * (hour - 3) / 24.0) + rng.normal(0, 0.02, n)
    spot = spot.reshape(-1, 4).mean(axis=1).repeat(4)  # hourly prices
    index = pd.DatetimeIndex(pd.to_datetime(t, unit="s", utc=True), name="time")
    return pd.DataFrame(
        {
            "load_w": load,
            "pv_w": pv,
            "import_price_eur_per_kwh": (spot + 0.15) * 1.19,
            "export_price_eur_per_kwh": spot,
        },
        index=index,
    )


def provider(actuals: pd.DataFrame, load: str = "profile") -> HistoryForecastProvider:
    forecasters = {
        "profile": SeasonalProfileForecaster(weeks=2, by="day", anchor_tau_s=3 * 3600.0),
        "holt_winters": HoltWintersForecaster(),
        "gradient_boosting": GradientBoostingForecaster(max_iter=10, train_weeks=2),
        "naive": SeasonalNaiveForecaster(WEEK_S),
        "analog": AnalogForecaster(days=14, k=3),
    }
    return HistoryForecastProvider(
        actuals,
        load=forecasters[load],
        pv=ClearSkyPvForecaster(sine_clear_sky),
        price=SeasonalProfileForecaster(weeks=1, by="day", tz="Europe/Berlin"),
    )


@pytest.mark.parametrize(
    "load", ["profile", "holt_winters", "gradient_boosting", "naive", "analog"]
)
def test_no_peeking_poisoning_the_future_changes_nothing(load: str):
    actual = frame(23)
    now_s = START_S + 21 * DAY_S + 14.25 * 3600.0  # 15:15 CET: tomorrow's prices known
    clean = provider(actual, load)
    k, kp = clean.known_index(now_s)
    assert kp - k == round((DAY_S + 8.75 * 3600.0) / STEP_S)  # to the end of tomorrow (CET)
    poisoned = actual.copy()
    poisoned.iloc[k:, 0:2] = 1e9  # load and PV not yet measured
    poisoned.iloc[kp:, 2:4] = 1e3  # prices not yet published
    a = clean.forecast_arrays(now_s, 160)
    b = provider(poisoned, load).forecast_arrays(now_s, 160)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[0]).max() < 1e5
    # the published prices are used as they are
    np.testing.assert_array_equal(a[2, : kp - k], actual.iloc[k:kp, 2].to_numpy())
    # and the test can fail: the last measured interval does count
    touched = actual.copy()
    touched.iloc[k - 1, 0] += 5000.0
    c = provider(touched, load).forecast_arrays(now_s, 160)
    assert not np.array_equal(a[0], c[0]) or load == "naive"


@settings(max_examples=15, deadline=None)
@given(hours=st.floats(min_value=0.0, max_value=47.75), horizon=st.integers(1, 200))
def test_provider_never_reads_a_row_that_ends_after_now(hours: float, horizon: int):
    actual = frame(17)
    now_s = START_S + 15 * DAY_S + hours * 3600.0
    clean = provider(actual)
    k, kp = clean.known_index(now_s)
    assert START_S + k * STEP_S <= now_s + 1e-6  # every measured row ended by now
    poisoned = actual.copy()
    poisoned.iloc[k:, 0:2] = np.nan
    poisoned.iloc[kp:, 2:4] = np.nan
    np.testing.assert_array_equal(
        clean.forecast_arrays(now_s, horizon), provider(poisoned).forecast_arrays(now_s, horizon)
    )


def test_provider_frame_shapes_units_and_aggregation():
    actual = frame(16)
    p = provider(actual)
    now_s = START_S + 15 * DAY_S + 3600.0 + 120.0  # inside an interval
    fine = p(now_s, 8, STEP_S)
    assert list(fine.columns) == list(FORECAST_COLUMNS)
    assert len(fine) == 8
    assert fine.index[0] == pd.Timestamp(START_S + 15 * DAY_S + 3600.0, unit="s", tz="UTC")
    assert (fine.index[1:] - fine.index[:-1] == pd.Timedelta(seconds=STEP_S)).all()
    assert (fine[["load_w", "pv_w"]].to_numpy() >= 0).all()
    coarse = p(now_s, 2, 4 * STEP_S)
    np.testing.assert_allclose(coarse.to_numpy(), fine.to_numpy().reshape(2, 4, 4).mean(axis=1))
    with pytest.raises(ValueError, match="whole number of steps"):
        p(now_s, 2, 1.5 * STEP_S)
    perfect = PerfectForecastProvider(actual)(now_s, 8, STEP_S)
    np.testing.assert_array_equal(perfect.to_numpy(), actual.iloc[15 * 96 + 4 : 15 * 96 + 12])


def test_error_report_scores_every_column_against_the_naive_baseline():
    actual = frame(24)
    p = provider(actual)
    report = p.error_report(START_S + 24 * DAY_S, days=7.0)
    assert report.origins == 25
    assert set(report.errors) == set(FORECAST_COLUMNS)
    for col, e in report.errors.items():
        assert e.n > 0, col
        assert e.mae >= 0.0, col
        assert math.isfinite(e.skill), col
    # the day-ahead prices are known for half the horizon or more: the price forecast has skill
    assert report.errors["import_price_eur_per_kwh"].mae < 0.05
    # the provider itself is untouched by the report
    assert p.load.forecast(actual["load_w"].to_numpy()[: 96 * 20], START_S, STEP_S, 1).size == 1


def test_gradient_boosting_retrains_at_most_daily():
    actual = frame(20)
    y = actual["load_w"].to_numpy()
    gb = GradientBoostingForecaster(max_iter=10, train_weeks=2)
    for k in range(15 * 96, 17 * 96, 4):  # two days of 1-hour re-plans
        out = gb.forecast(y[:k], START_S, STEP_S, 96)
        assert out.shape == (96,)
        assert np.isfinite(out).all()
    assert gb.n_trainings == 2


@pytest.mark.parametrize("n_history", [0, 1, 5, 100])
def test_every_forecaster_copes_with_little_history(n_history: int):
    y = frame(2)["load_w"].to_numpy()[:n_history]
    for f in (
        SeasonalNaiveForecaster(WEEK_S, nonnegative=True),
        SeasonalProfileForecaster(weeks=2, by="day", anchor_tau_s=3600.0, nonnegative=True),
        HoltWintersForecaster(nonnegative=True),
        GradientBoostingForecaster(max_iter=5, nonnegative=True),
        AnalogForecaster(days=7, k=3, nonnegative=True),
        ClearSkyPvForecaster(sine_clear_sky),
    ):
        out = f.forecast(y, START_S, STEP_S, 10)
        assert out.shape == (10,), f.name
        assert np.isfinite(out).all(), f.name
        assert (out >= 0).all(), f.name
