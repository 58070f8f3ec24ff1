"""The MPC's live model forecasts: learnt from meter samples, history only, growing series."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from openbess.config import load_site
from openbess.data.timeseries import DAY_S
from openbess.ems.backtest import site_inputs, write_inputs_csv
from openbess.ems.live import CHUNK_S, MeasuredForecastProvider
from openbess.errors import ConfigError
from openbess.simulate import build_strategy, measured_forecast

CONFIG = load_site("home")
START = pd.Timestamp("2024-06-03T00:00:00+02:00")
START_S = START.timestamp()


def feed(p: MeasuredForecastProvider, t0: float, t1: float, load, pv, every_s: float = 10.0):
    """Meter samples every ``every_s`` from t0 to t1 (load/pv: callables of time)."""
    for t in np.arange(t0, t1, every_s):
        p.observe(float(t), float(load(t)), float(pv(t)))


def test_intervals_are_the_mean_of_their_samples_and_a_silent_interval_is_a_gap():
    p = MeasuredForecastProvider(CONFIG, START_S, scenario_days=0)
    feed(p, START_S, START_S + 900, lambda t: 1000.0, lambda t: 0.0)
    feed(p, START_S + 900, START_S + 1800, lambda t: 500.0 + (t - START_S - 900), lambda t: 200.0)
    # nothing for the third interval, then the fourth
    feed(p, START_S + 2700, START_S + 3610, lambda t: 300.0, lambda t: 100.0)
    m = p.measured()
    assert list(m.columns) == ["load_w", "pv_w"]
    assert m["load_w"].iloc[0] == pytest.approx(1000.0)
    assert m["load_w"].iloc[1] == pytest.approx(500.0 + 445.0)  # mean of 0..890 s ramp
    assert m["pv_w"].iloc[1] == pytest.approx(200.0)
    assert math.isnan(m["load_w"].iloc[2])
    assert m["load_w"].iloc[3] == pytest.approx(300.0)
    assert p.intervals_recorded == 3
    # bad samples are skipped, not counted
    assert p.samples == 90 + 90 + 91
    p.observe(START_S + 3700, math.nan, 0.0)
    assert p.samples == 90 + 90 + 91


def test_the_running_interval_is_never_used_and_forecasts_follow_the_meter():
    hist = site_inputs(CONFIG, START - pd.Timedelta(days=14), 14)
    now = START_S + 10 * 3600.0 + 300.0  # 10:05, 5 min into an interval

    def provider(current_load: float) -> MeasuredForecastProvider:
        p = MeasuredForecastProvider(CONFIG, START_S, history=hist, scenario_days=0)
        feed(p, START_S, now - 300.0, lambda t: 800.0, lambda t: 1500.0, every_s=60.0)
        feed(p, now - 300.0, now, lambda t: current_load, lambda t: 0.0, every_s=60.0)
        return p

    a = provider(400.0)(now - 300.0, 8, 900.0)
    b = provider(9000.0)(now - 300.0, 8, 900.0)
    pd.testing.assert_frame_equal(a, b)  # what the running interval did is not known yet
    # what was measured does count: a different morning gives a different forecast
    other = MeasuredForecastProvider(CONFIG, START_S, history=hist, scenario_days=0)
    feed(other, START_S, now, lambda t: 3000.0, lambda t: 100.0, every_s=60.0)
    c = other(now - 300.0, 8, 900.0)
    assert c["load_w"].iloc[0] > a["load_w"].iloc[0] + 500.0
    assert c["pv_w"].iloc[0] < a["pv_w"].iloc[0]
    # prices are the tariff's
    imp, exp = (
        site_inputs(CONFIG, pd.Timestamp(now - 300.0, unit="s", tz="UTC"), 1)[
            ["import_price_eur_per_kwh", "export_price_eur_per_kwh"]
        ]
        .to_numpy()[:8]
        .T
    )
    np.testing.assert_allclose(a["import_price_eur_per_kwh"], imp)
    np.testing.assert_allclose(a["export_price_eur_per_kwh"], exp)


def test_the_series_grows_past_its_first_chunk_and_scenarios_come_from_history():
    hist = site_inputs(CONFIG, START - pd.Timedelta(days=10), 10)
    p = MeasuredForecastProvider(CONFIG, START_S, history=hist, scenario_days=3)
    n0 = p.provider.n
    # the last days of history were forecast at once: the first plan has its scenarios
    dev = p.residual_scenarios(START_S, 96, (1, 2, 3))
    assert dev.shape == (3, 2, 96)
    assert np.abs(dev).max() > 0.0
    late = START_S + CHUNK_S + 3 * DAY_S
    feed(p, late, late + 1900.0, lambda t: 700.0, lambda t: 0.0, every_s=60.0)
    assert p.provider.n > n0
    out = p(late + 1800.0, 96, 900.0)
    assert np.isfinite(out.to_numpy()).all()
    assert p.measured()["load_w"].iloc[-1] == pytest.approx(700.0)


def test_without_history_the_first_forecasts_are_still_finite():
    p = MeasuredForecastProvider(CONFIG, START_S, scenario_days=2)
    out = p(START_S, 96, 900.0)
    assert np.isfinite(out.to_numpy()).all()
    assert (out[["load_w", "pv_w"]].to_numpy() >= 0.0).all()
    assert p.residual_scenarios(START_S, 96, (1, 2)).shape[0] == 0


def test_history_csv_errors_name_the_setting_and_the_file(tmp_path: Path):
    ems = CONFIG.ems.model_copy(update={"strategy": "mpc", "history_csv": str(tmp_path / "x.csv")})
    cfg = CONFIG.model_copy(update={"ems": ems})
    with pytest.raises(ConfigError, match=r"ems.history_csv.*x\.csv"):
        build_strategy(cfg, None, START_S)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "time,load_w,pv_w,import_price_eur_per_kwh,export_price_eur_per_kwh\n"
        "2024-06-01T00:00:00+00:00,100,0,0.3,0.1\n"
        "2024-06-01T00:15:00+00:00,oops,0,0.3,0.1\n"
    )
    ems = ems.model_copy(update={"history_csv": str(bad)})
    with pytest.raises(ConfigError, match=r"line 3.*load_w"):
        build_strategy(CONFIG.model_copy(update={"ems": ems}), None, START_S)
    # a history that runs past the start of the run is refused too
    late = tmp_path / "late.csv"
    write_inputs_csv(site_inputs(CONFIG, START, 1), late)
    ems = ems.model_copy(update={"history_csv": str(late)})
    with pytest.raises(ConfigError, match="end at or before"):
        build_strategy(CONFIG.model_copy(update={"ems": ems}), None, START_S)
    ems = ems.model_copy(update={"forecast": "perfect", "history_csv": None})
    with pytest.raises(ConfigError, match="perfect"):
        build_strategy(CONFIG.model_copy(update={"ems": ems}), None, START_S)


def test_on_hardware_a_history_csv_is_the_meter_history(tmp_path: Path):
    path = tmp_path / "meter.csv"
    write_inputs_csv(site_inputs(CONFIG, START - pd.Timedelta(days=7), 7), path)
    ems = CONFIG.ems.model_copy(update={"strategy": "mpc", "history_csv": str(path)})
    p = measured_forecast(CONFIG.model_copy(update={"ems": ems}), START_S, on_twin=False)
    assert p.origin_s == pytest.approx(START_S - 7 * DAY_S)
    assert np.isfinite(p.measured()["load_w"].to_numpy()[: 7 * 96]).all()


def test_the_errors_reported_are_those_of_the_forecasts_the_plans_were_given():
    hist = site_inputs(CONFIG, START - pd.Timedelta(days=10), 10)
    p = MeasuredForecastProvider(CONFIG, START_S, history=hist, scenario_days=3)
    report = p.provider.used_forecast_errors(START_S)
    # hourly origins over the 3 kept days, each scored on its leads measured by now (<= 1 day)
    expected_pairs = sum(min(96, 4 * j) for j in range(1, 73))
    assert report["load_w"].n == report["pv_w"].n == expected_pairs
    # by hand: the same forecasts made again by a twin provider, scored where measured
    k_now = p.provider.known_index(START_S)[0]
    twin = MeasuredForecastProvider(CONFIG, START_S, history=hist, scenario_days=0)
    actual = hist[["load_w", "pv_w"]].to_numpy().T
    abs_err: list[float] = []
    for k in range(k_now - 3 * 96, k_now, 4):
        f = twin.provider.forecast_arrays(twin.origin_s + k * 900.0, 96)
        m = min(96, k_now - k)
        abs_err.extend(np.abs(actual[0, k : k + m] - f[0, :m]))
    assert report["load_w"].mae == pytest.approx(float(np.mean(abs_err)), rel=1e-9)
    for col in ("load_w", "pv_w"):
        e = report[col]
        assert 0.0 < e.mae < 5000.0
        assert e.skill == pytest.approx(1.0 - e.mae / e.mae_naive)
    shown = p.errors(START_S)
    assert shown["load_w"]["n"] == expected_pairs
    assert p.errors(START_S + 60.0) is shown  # cached within the hour
    # nothing kept, nothing scored
    empty = MeasuredForecastProvider(CONFIG, START_S, scenario_days=0)
    assert empty.errors(START_S)["load_w"]["n"] == 0
