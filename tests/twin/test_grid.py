"""Grid connection, tariff and site meter (openbess.twin.grid)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.errors import SimulationError
from openbess.twin.grid import (
    EnergyTotals,
    GridConnection,
    SiteMeter,
    Tariff,
    account,
    site_grid_power_w,
)

power = st.floats(-1e5, 1e5, allow_nan=False)


def test_site_balance_sign_convention() -> None:
    # load 3 kW, PV 5 kW, battery charging 1 kW (-1000): 1 kW export (negative)
    assert float(site_grid_power_w(3000.0, 5000.0, -1000.0)) == pytest.approx(-1000.0)
    # battery discharging into the load: less import
    assert float(site_grid_power_w(3000.0, 0.0, 2000.0)) == pytest.approx(1000.0)


def test_tariff_formula_on_known_hour() -> None:
    tariff = Tariff.from_zone(
        "DE_LU", import_adder_eur_per_kwh=0.15, vat_fraction=0.19, export_mode="spot"
    )
    t = pd.Timestamp("2022-07-01 00:30", tz="Europe/Berlin")  # source: 268.71 EUR/MWh
    imp, exp = tariff.prices(t)
    assert float(exp) == pytest.approx(0.26871)
    assert float(imp) == pytest.approx((0.26871 + 0.15) * 1.19)
    fixed = Tariff.from_zone("NL", export_mode="fixed", feed_in_tariff_eur_per_kwh=0.08)
    _, exp = fixed.prices(pd.date_range("2023-01-01", periods=5, freq="h", tz="UTC"))
    np.testing.assert_array_equal(exp, 0.08)


@pytest.mark.parametrize(
    ("day", "hours"),
    [("2022-10-30", 25), ("2023-03-26", 23), ("2022-11-15", 24)],
)
def test_tariff_over_dst_days(day: str, hours: int) -> None:
    """A local day has 23/25 hourly prices; the code never needs to know."""
    tariff = Tariff.from_zone("DE_LU")
    start = pd.Timestamp(day, tz="Europe/Berlin")
    end = pd.Timestamp(pd.Timestamp(day) + pd.Timedelta(days=1), tz="Europe/Berlin")
    n = int((end - start) / pd.Timedelta(hours=1))
    assert n == hours  # local midnight to local midnight, in real hours
    every_15min = pd.date_range(start, end, freq="15min", inclusive="left")
    spot = tariff.spot_eur_per_kwh(every_15min)
    assert spot.size == 4 * hours
    # constant within each UTC hour
    assert (spot.reshape(hours, 4) == spot.reshape(hours, 4)[:, :1]).all()


def test_tariff_autumn_repeated_hour_has_source_average() -> None:
    tariff = Tariff.from_zone("DE_LU")
    first = pd.Timestamp("2022-10-30T00:30Z")  # 02:30 CEST
    second = pd.Timestamp("2022-10-30T01:30Z")  # 02:30 CET
    assert float(tariff.spot_eur_per_kwh(first)) == pytest.approx(0.10006)
    assert float(tariff.spot_eur_per_kwh(second)) == pytest.approx(0.10006)


def test_tariff_wrap_and_strict() -> None:
    wrap = Tariff.from_zone("DE_LU")
    later = pd.Timestamp("2025-07-02T12:00Z")
    assert np.isfinite(wrap.spot_eur_per_kwh(later))
    strict = Tariff.from_zone("DE_LU", wrap=False)
    with pytest.raises(SimulationError, match="spot price series covers"):
        strict.spot_eur_per_kwh(later)


def test_tariff_validation() -> None:
    with pytest.raises(ValueError, match=r"Tariff\.vat_fraction"):
        Tariff.from_zone("NL", vat_fraction=1.5)
    with pytest.raises(ValueError, match=r"Tariff\.export_mode"):
        Tariff.from_zone("NL", export_mode="net")  # type: ignore[arg-type]


def test_account_known_values() -> None:
    # 2 h importing 1 kW at 0.30, 1 h exporting 2 kW at 0.10, 1 h exporting 1 kW at -0.05
    totals = account(
        [1000.0, 1000.0, -2000.0, -1000.0], [0.30, 0.30, 0.9, 0.9], [0.0, 0.0, 0.10, -0.05], 3600.0
    )
    assert totals.import_energy_wh == pytest.approx(2000.0)
    assert totals.export_energy_wh == pytest.approx(3000.0)
    assert totals.import_cost_eur == pytest.approx(0.60)
    assert totals.export_revenue_eur == pytest.approx(0.20 - 0.05)
    assert totals.net_cost_eur == pytest.approx(0.45)
    assert totals.net_import_energy_wh == pytest.approx(-1000.0)
    assert totals.duration_s == 4 * 3600.0
    with pytest.raises(ValueError, match="duration_s"):
        account([1.0], [0.1], [0.1], -1.0)


def test_site_meter_equals_vectorised_account() -> None:
    rng = np.random.default_rng(5)
    p = rng.normal(0.0, 3000.0, 500)
    imp = rng.uniform(0.1, 0.5, 500)
    exp = rng.uniform(-0.05, 0.2, 500)
    dt = rng.uniform(1.0, 60.0, 500)
    meter = SiteMeter()
    for i in range(500):
        meter.record(dt[i], p[i], imp[i], exp[i])
    ref = account(p, imp, exp, dt)
    for field in ("import_energy_wh", "export_energy_wh", "import_cost_eur", "export_revenue_eur"):
        assert getattr(meter.totals, field) == pytest.approx(getattr(ref, field), rel=1e-9)
    before = meter.reset()
    assert before.duration_s == pytest.approx(dt.sum())
    assert meter.totals == EnergyTotals()


@settings(max_examples=200, deadline=None)
@given(
    load=st.floats(0.0, 1e5),
    pv=st.floats(0.0, 1e5),
    batt=power,
    export_limit=st.floats(0.0, 5e4),
    import_limit=st.floats(1.0, 5e4),
)
def test_curtailment_keeps_export_within_limit(
    load: float, pv: float, batt: float, export_limit: float, import_limit: float
) -> None:
    conn = GridConnection(import_limit_w=import_limit, export_limit_w=export_limit)
    b = conn.balance(load, pv, batt)
    grid = float(b.grid_w)
    assert 0.0 <= float(b.pv_used_w) <= pv
    assert float(b.pv_curtailed_w) == pytest.approx(pv - float(b.pv_used_w))
    assert grid == pytest.approx(load - float(b.pv_used_w) - batt)
    # export beyond the limit only if the battery alone causes it (all PV curtailed)
    if -grid > export_limit + 1e-6:
        assert float(b.pv_used_w) == 0.0
        assert float(b.export_excess_w) == pytest.approx(-grid - export_limit)
    # PV is curtailed only when needed
    if float(b.pv_curtailed_w) > 1e-6:
        assert -grid == pytest.approx(export_limit, abs=1e-6) or float(b.pv_used_w) == 0.0
    assert float(b.import_excess_w) == pytest.approx(max(grid - import_limit, 0.0))


def test_unlimited_connection_never_curtails() -> None:
    b = GridConnection().balance([100.0, 0.0], [5000.0, 3000.0], [2000.0, 0.0])
    np.testing.assert_array_equal(b.pv_curtailed_w, [0.0, 0.0])
    np.testing.assert_allclose(b.grid_w, [-6900.0, -3000.0])
    assert math.isinf(GridConnection().export_limit_w)
    with pytest.raises(ValueError, match=r"GridConnection\.export_limit_w"):
        GridConnection(export_limit_w=-1.0)
