"""Building load model (openbess.twin.load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.data import read_commercial_load, read_household
from openbess.errors import DataError, SimulationError
from openbess.twin.load import LoadModel, hashed_normal, smooth_noise

DATA = Path(__file__).resolve().parents[1] / "data"


def test_household_scaled_to_annual_energy() -> None:
    h = read_household()
    model = LoadModel.household(annual_energy_wh=4.0e6)
    t = pd.DatetimeIndex(h.index)
    p = model.power_w(t)
    # over the 365-day series, mean power * 8760 h is the annual energy
    assert p.mean() * 8760.0 == pytest.approx(4.0e6, rel=1e-12)
    assert model.annual_energy_wh == pytest.approx(4.0e6)
    np.testing.assert_allclose(p, h["load_w"].to_numpy() * 4.0e6 / model.profile_annual_energy_wh)


def test_unscaled_household_is_the_measurement() -> None:
    h = read_household()
    model = LoadModel.household()
    t = pd.DatetimeIndex(h.index[:500]) + pd.Timedelta(minutes=29)
    np.testing.assert_array_equal(model.power_w(t), h["load_w"].to_numpy()[:500])


def test_commercial_default_400_mwh_and_hold_keeps_interval_energy() -> None:
    model = LoadModel.commercial()
    c = read_commercial_load()
    # integrate on a 1-minute grid over one day: the hold keeps each 15-min energy
    day = pd.date_range("2023-05-10", periods=24 * 60, freq="1min", tz="UTC")
    e_model = model.power_w(day).sum() / 60.0
    e_data = c.loc["2023-05-10", "load_w"].sum() * 0.25
    assert e_model == pytest.approx(e_data, rel=1e-6)  # scaled by 400 MWh / file energy
    assert model.annual_energy_wh == pytest.approx(400e6, rel=1e-3)


def test_wrap_keeps_weekdays_for_other_years() -> None:
    model = LoadModel.commercial()
    # a Monday and a Sunday in 2030 (outside the 2023 profile): Monday is much busier at 11:00
    monday = pd.Timestamp("2030-06-03 11:00", tz="Europe/Berlin")
    sunday = pd.Timestamp("2030-06-09 11:00", tz="Europe/Berlin")
    assert monday.day_of_week == 0
    assert sunday.day_of_week == 6
    assert model.power_w(monday) > 1.5 * model.power_w(sunday)
    strict = LoadModel.commercial(wrap=False)
    with pytest.raises(SimulationError, match="load profile covers"):
        strict.power_w(monday)


def test_noise_seeded_reproducible_and_order_independent() -> None:
    model = LoadModel.household(noise_fraction=0.2, seed=42)
    t = 1.72e9 + np.arange(0.0, 2 * 86400.0, 60.0)
    a = model.power_w(t)
    b = model.power_w(t[::-1])[::-1]
    c = np.array([float(model.power_w(x)) for x in t[:50]])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:50], c)
    other = LoadModel.household(noise_fraction=0.2, seed=43).power_w(t)
    assert not np.allclose(a, other)
    base = model.profile_w(t)
    assert (a >= 0.0).all()
    ratio = a / base
    assert ratio.std() > 0.05  # noise is there
    assert 0.9 < ratio.mean() < 1.1


def test_hashed_normal_statistics() -> None:
    z = hashed_normal(np.arange(-50_000, 50_000), seed=3)
    assert abs(z.mean()) < 0.02
    assert z.std() == pytest.approx(1.0, abs=0.02)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.02
    np.testing.assert_array_equal(hashed_normal([5, 6], 3), z[[50_005, 50_006]])


@settings(max_examples=50, deadline=None)
@given(st.floats(-1e10, 1e10), st.integers(0, 2**31))
def test_smooth_noise_continuous(t: float, seed: int) -> None:
    a, b = smooth_noise(np.array([t, t + 1e-3]), seed, 900.0)
    assert abs(a - b) < 1e-3  # continuous across node boundaries too
    assert np.isfinite(a)


def test_from_csv_user_file_in_local_time() -> None:
    model = LoadModel.from_csv(DATA / "load_local_time.csv")
    # the second local 02:00 of 2024-10-27 (CET) is 01:00 UTC
    assert float(model.power_w(pd.Timestamp("2024-10-27T01:30Z"))) == pytest.approx(539.2)


def test_from_csv_with_gap_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_text("time,load_w\n2024-01-01T00:00Z,1\n2024-01-01T01:00Z,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"gap\.csv: line 3, column 'load_w': empty cell"):
        LoadModel.from_csv(path)


def test_bad_profiles_rejected() -> None:
    idx = pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC")
    with pytest.raises(ValueError, match="NaN or negative"):
        LoadModel(pd.Series([1.0, np.nan, 1.0, 1.0], index=idx))
    with pytest.raises(ValueError, match="regular"):
        LoadModel(pd.Series([1.0, 1.0, 1.0], index=idx[[0, 1, 3]]))
    with pytest.raises(ValueError, match="noise_fraction"):
        LoadModel(pd.Series([1.0] * 4, index=idx), noise_fraction=-0.1)
    with pytest.raises(ValueError, match="'load_w' column"):
        LoadModel(pd.DataFrame({"p": [1.0] * 4}, index=idx))
