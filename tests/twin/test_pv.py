"""PV plant model (openbess.twin.pv)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pvlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.data import read_household, read_household_pv_fit
from openbess.errors import SimulationError
from openbess.twin.pv import PvModel, PvPlant, linke_turbidity_daily

HOME = PvPlant(dc_capacity_w=6000.0, inverter_ac_limit_w=5000.0)


@pytest.fixture(scope="module")
def home_model() -> PvModel:
    return PvModel(HOME)


def test_zero_at_night_and_within_limits(home_model: PvModel) -> None:
    times = pd.date_range("2025-06-20", "2025-06-23", freq="10min", tz="UTC")
    p = home_model.power_w(times)
    sun = pvlib.solarposition.get_solarposition(times, HOME.latitude_deg, HOME.longitude_deg)
    night = sun["apparent_elevation"].to_numpy() < -1.0
    assert night.sum() > 100
    assert (p[night] == 0.0).all()
    assert (p >= 0.0).all()
    assert (p <= HOME.inverter_ac_limit_w).all()
    assert p.max() > 2000.0  # June near the solstice: some sun


def test_clips_at_inverter_limit_on_clear_days() -> None:
    # an oversized array (DC/AC = 2) must hit the AC limit on a clear June noon, never exceed it
    plant = PvPlant(dc_capacity_w=10000.0, inverter_ac_limit_w=5000.0)
    model = PvModel(plant)
    times = pd.date_range("2024-06-01", "2024-07-01", freq="15min", tz="UTC", inclusive="left")
    p = model.power_w(times)
    assert p.max() == pytest.approx(5000.0)
    assert (p <= 5000.0).all()
    assert (p >= 5000.0 - 1e-6).sum() > 10


@settings(max_examples=15, deadline=None)
@given(
    kwp=st.floats(0.5, 300.0),
    dc_ac=st.floats(0.8, 1.6),
    tilt=st.floats(0.0, 90.0),
    azimuth=st.floats(0.0, 360.0),
    lat=st.floats(-60.0, 65.0),
    start=st.integers(1_600_000_000, 1_900_000_000),
)
def test_never_negative_never_above_limit(
    kwp: float, dc_ac: float, tilt: float, azimuth: float, lat: float, start: int
) -> None:
    plant = PvPlant(
        dc_capacity_w=kwp * 1000.0,
        inverter_ac_limit_w=kwp * 1000.0 / dc_ac,
        tilt_deg=tilt,
        azimuth_deg=azimuth,
        latitude_deg=lat,
    )
    model = PvModel(plant, cache_step_s=0.0)
    t = start + np.arange(0.0, 3 * 86400.0, 1800.0)
    p = model.power_w(t)
    assert p.shape == t.shape
    assert np.isfinite(p).all()
    assert (p >= 0.0).all()
    assert (p <= plant.inverter_ac_limit_w).all()


def test_reproduces_measured_household_pv() -> None:
    """The bundled clearness index drives the fitted household plant back to its measurements."""
    fit = read_household_pv_fit()
    plant = PvPlant(
        dc_capacity_w=fit["dc_capacity_w"],
        inverter_ac_limit_w=fit["dc_capacity_w"],
        tilt_deg=fit["tilt_deg"],
        azimuth_deg=fit["azimuth_deg"],
    )
    h = read_household()
    mid = pd.DatetimeIndex(h.index) + pd.Timedelta(seconds=fit["label_to_midpoint_s"])
    # one week per season keeps the test fast
    weeks = [
        ("2024-04-10", "2024-04-17"),
        ("2024-07-01", "2024-07-08"),
        ("2024-12-01", "2024-12-08"),
    ]
    sel = np.zeros(len(h), dtype=bool)
    for a, b in weeks:
        sel |= (h.index >= pd.Timestamp(a, tz="UTC")) & (h.index < pd.Timestamp(b, tz="UTC"))
    sel &= ~h["pv_filled"].to_numpy()
    sim = PvModel(plant).power_w(mid[sel])
    meas = h["pv_w"].to_numpy()[sel]
    rms = float(np.sqrt(np.mean((sim - meas) ** 2)))
    assert rms < 80.0
    assert sim.sum() == pytest.approx(meas.sum(), rel=0.03)


def test_home_plant_annual_yield_plausible(home_model: PvModel) -> None:
    e = home_model.energy_wh(
        pd.Timestamp("2025-01-01", tz="UTC"), pd.Timestamp("2026-01-01", tz="UTC"), 900.0
    )
    yield_kwh_per_kwp = e / 1000.0 / 6.0
    # north-east France, south 30 deg: typical specific yields are around 1000 kWh/kWp
    assert 900.0 < yield_kwh_per_kwp < 1150.0


def test_measured_source_scales_with_capacity() -> None:
    fit = read_household_pv_fit()
    h = read_household()
    small = PvModel(
        PvPlant(dc_capacity_w=fit["dc_capacity_w"], inverter_ac_limit_w=1e6), source="measured"
    )
    double = PvModel(
        PvPlant(dc_capacity_w=2 * fit["dc_capacity_w"], inverter_ac_limit_w=1e6), source="measured"
    )
    t = pd.DatetimeIndex(h.index[10000:10100]) + pd.Timedelta(minutes=7)
    np.testing.assert_allclose(small.power_w(t), h["pv_w"].to_numpy()[10000:10100])
    np.testing.assert_allclose(double.power_w(t), 2 * small.power_w(t))
    clipped = PvModel(
        PvPlant(dc_capacity_w=2 * fit["dc_capacity_w"], inverter_ac_limit_w=3000.0),
        source="measured",
    )
    assert clipped.power_w(t).max() == pytest.approx(3000.0)


def test_cache_matches_exact_evaluation(home_model: PvModel) -> None:
    exact = PvModel(HOME, cache_step_s=0.0)
    t = pd.date_range("2025-05-01", "2025-05-03", freq="1min", tz="UTC")
    np.testing.assert_allclose(home_model.power_w(t), exact.power_w(t), atol=0.01 * 5000.0)


def test_time_zone_of_the_query_does_not_matter(home_model: PvModel) -> None:
    utc = pd.date_range("2025-03-29", "2025-04-01", freq="30min", tz="UTC")
    paris = utc.tz_convert("Europe/Paris")  # crosses the spring DST change
    np.testing.assert_array_equal(home_model.power_w(utc), home_model.power_w(paris))
    seconds = utc.as_unit("s").asi8.astype(float)
    np.testing.assert_array_equal(home_model.power_w(utc), home_model.power_w(seconds))
    assert home_model.power_w(float(seconds[20])).shape == ()


def test_wrap_false_outside_weather_raises() -> None:
    model = PvModel(HOME, wrap=False)
    with pytest.raises(SimulationError, match="clearness index covers"):
        model.power_w(pd.Timestamp("2030-06-01T12:00Z"))
    assert model.power_w(pd.Timestamp("2024-06-01T12:00Z")) > 0.0


def test_plant_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"PvPlant\.tilt_deg must be in \[0, 90\]"):
        PvPlant(dc_capacity_w=1000.0, inverter_ac_limit_w=1000.0, tilt_deg=95.0)
    with pytest.raises(ValueError, match=r"PvPlant\.inverter_ac_limit_w must be > 0"):
        PvPlant(dc_capacity_w=1000.0, inverter_ac_limit_w=0.0)
    with pytest.raises(ValueError, match=r"PvPlant\.losses_fraction"):
        PvPlant(dc_capacity_w=1000.0, inverter_ac_limit_w=1000.0, losses_fraction=1.0)
    with pytest.raises(ValueError, match="source must be"):
        PvModel(HOME, source="tmy")  # type: ignore[arg-type]


def test_linke_turbidity_close_to_pvlib() -> None:
    ours = linke_turbidity_daily(48.83, 6.86)
    mid_june = pd.DatetimeIndex([pd.Timestamp("2024-06-15T12:00Z")])
    theirs = pvlib.clearsky.lookup_linke_turbidity(mid_june, 48.83, 6.86, interp_turbidity=False)
    assert ours[166] == pytest.approx(float(theirs.iloc[0]), abs=0.05)
    assert ours.shape == (366,)
