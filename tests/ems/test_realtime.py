"""Real-time layer: the rule table, ramp, hysteresis, grid events, and its invariants."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.contract import ContactorState, Telemetry
from openbess.ems.realtime import (
    RULES,
    RealtimeConfig,
    RealtimeLayer,
    Wish,
    active_events,
    balance_w,
    read_events,
)
from openbess.gate import NO_DECISION
from openbess.io.hub import GridEvent
from openbess.plant import SiteMeasurements

TEL = Telemetry(
    time_s=0.0,
    soc=0.5,
    soc_cell_min=0.5,
    soc_cell_max=0.5,
    soh=1.0,
    energy_available_wh=5000.0,
    capacity_wh=10000.0,
    pack_voltage_v=52.0,
    pack_current_a=0.0,
    cell_voltage_min_v=3.3,
    cell_voltage_max_v=3.31,
    cell_voltage_avg_v=3.305,
    temperature_min_degc=20.0,
    temperature_max_degc=21.0,
    temperature_avg_degc=20.5,
    charge_current_limit_a=100.0,
    discharge_current_limit_a=100.0,
    charge_power_limit_w=5000.0,
    discharge_power_limit_w=5000.0,
    contactor=ContactorState.CLOSED,
    alarms=(),
    balancing_cells=0,
    gate=NO_DECISION,
)
NO_RAMP = RealtimeConfig(ramp_w_per_s=math.inf)


def meter(grid_w: float, battery_w: float = 0.0) -> SiteMeasurements:
    return SiteMeasurements(0.0, grid_w, 0.0, 0.0, battery_w, 0.3, 0.1)


def layer(settings: RealtimeConfig = NO_RAMP, **kw: float) -> RealtimeLayer:
    base = {
        "max_import_w": 9000.0,
        "max_export_w": 6000.0,
        "max_charge_power_w": 5000.0,
        "max_discharge_power_w": 5000.0,
        "soc_min": 0.1,
        "soc_max": 0.9,
        "reserve_soc": 0.2,
    }
    base.update(kw)
    return RealtimeLayer(settings=settings, **base)


def event(**kw: float | None) -> GridEvent:
    return GridEvent("dr1", start_s=-10.0, end_s=100.0, **kw)  # type: ignore[arg-type]


def test_the_rules_are_a_table_in_the_documented_order():
    assert [name for name, _ in RULES] == [
        "wish",
        "event",
        "soak_pv",
        "import_cap",
        "export_cap",
        "zero_band",
        "ramp",
        "bms",
    ]


@pytest.mark.parametrize(
    ("wish", "grid_w", "battery_w", "soc", "events", "expected_w", "rule"),
    [
        # the wish passes when nothing objects
        (Wish(1500.0), 1000.0, 500.0, 0.5, (), 1500.0, "wish"),
        # PV surplus of 2 kW with a wish to idle and no export tolerated: store it
        (Wish(0.0, max_export_w=0.0), -2000.0, 0.0, 0.5, (), -2000.0, "soak_pv"),
        # export of 1 kW tolerated: store only the rest
        (Wish(0.0, max_export_w=1000.0), -3000.0, 0.0, 0.5, (), -2000.0, "soak_pv"),
        # a 10 kW load with the battery idle: discharge 1 kW to hold the 9 kW connection
        (Wish(0.0), 10000.0, 0.0, 0.5, (), 1000.0, "import_cap"),
        # the strategy's own import limit (the plan's peak) is held too
        (Wish(0.0, max_import_w=2500.0), 4000.0, 0.0, 0.5, (), 1500.0, "import_cap"),
        # discharging 4 kW into a 3 kW PV surplus would export 7 kW > 6 kW
        (Wish(4000.0), -7000.0, 4000.0, 0.5, (), 3000.0, "export_cap"),
        # a demand-response cap of 2 kW at the meter
        (Wish(0.0), 5000.0, 0.0, 0.5, (event(max_import_w=2000.0),), 3000.0, "import_cap"),
        # an export cap of 0 W: store the surplus even though the wish tolerates export
        (Wish(0.0), -1500.0, 0.0, 0.5, (event(max_export_w=0.0),), -1500.0, "export_cap"),
        # hold 2 kW of discharge whatever the wish
        (Wish(-3000.0), 500.0, 0.0, 0.5, (event(battery_power_w=2000.0),), 2000.0, "event"),
        # ... but never below the reserve (0.2) nor beyond the BMS limit
        (Wish(0.0), 500.0, 0.0, 0.2, (event(battery_power_w=2000.0),), 0.0, "bms"),
        (Wish(0.0), 500.0, 0.0, 0.5, (event(battery_power_w=8000.0),), 5000.0, "bms"),
        # small setpoints from idle are 0 (no chattering); the BMS window
        (Wish(40.0), 40.0, 0.0, 0.5, (), 0.0, "zero_band"),
        (Wish(-2000.0), -2000.0, 0.0, 0.9, (), 0.0, "bms"),
    ],
)
def test_rule_table(wish, grid_w, battery_w, soc, events, expected_w, rule):
    d = layer().setpoint(
        5.0, dataclasses.replace(TEL, soc=soc), meter(grid_w, battery_w), wish, events
    )
    assert d.power_w == pytest.approx(expected_w)
    assert d.rule == rule


def test_telemetry_limits_always_win():
    tel = dataclasses.replace(TEL, discharge_power_limit_w=800.0, charge_power_limit_w=0.0)
    lay = layer()
    # the import cap asks for 1 kW of discharge, the BMS allows 800 W
    assert lay.setpoint(0.0, tel, meter(9800.0), Wish(0.0)).power_w == 800.0
    # a charge hold is refused when the BMS allows no charge
    ev = (event(battery_power_w=-3000.0),)
    assert lay.setpoint(1.0, tel, meter(0.0), Wish(0.0), ev).power_w == 0.0


def test_ramp_limits_the_change_per_second():
    lay = layer(RealtimeConfig(ramp_w_per_s=1000.0))
    battery = 0.0
    out = []
    for k in range(5):
        d = lay.setpoint(float(k), TEL, meter(0.0, battery), Wish(3500.0))
        battery = d.power_w  # the converter follows
        out.append(battery)
    assert out == [1000.0, 2000.0, 3000.0, 3500.0, 3500.0]
    # two seconds without a dispatch allow twice the step
    d = lay.setpoint(6.0, TEL, meter(0.0, battery), Wish(0.0))
    assert d.power_w == pytest.approx(1500.0)
    assert d.rule == "ramp"


def test_the_import_cap_beats_the_ramp():
    lay = layer(RealtimeConfig(ramp_w_per_s=500.0))
    lay.setpoint(0.0, TEL, meter(1000.0, 0.0), Wish(0.0))
    # a 12 kW load step: 3 kW of discharge needed at once to hold 9 kW
    d = lay.setpoint(1.0, TEL, meter(12000.0, 0.0), Wish(12000.0))
    assert d.power_w == pytest.approx(3000.0)
    assert d.rule == "import_cap"
    # an economic move (soaking up PV) is ramped
    d = lay.setpoint(2.0, TEL, meter(-3000.0, 0.0), Wish(0.0, max_export_w=0.0))
    assert d.power_w == pytest.approx(-500.0)


def test_no_chattering_around_zero():
    """A net load hovering around the thresholds gives a few clean switches, no sign flips."""
    lay = layer(RealtimeConfig(ramp_w_per_s=math.inf, stop_power_w=30.0, start_power_w=60.0))
    net = [50.0, -50.0, 55.0, -45.0, 70.0, 40.0, 35.0, 25.0, -40.0, 45.0, -65.0, -35.0, 20.0]
    battery = 0.0
    out = []
    for k, n in enumerate(net):
        d = lay.setpoint(float(k), TEL, meter(n - battery, battery), Wish(n))
        battery = d.power_w
        out.append(battery)
    assert out == [0.0, 0.0, 0.0, 0.0, 70.0, 40.0, 35.0, 0.0, 0.0, 0.0, -65.0, -35.0, 0.0]
    switches = sum(1 for a, b in itertools.pairwise(out) if (a == 0.0) != (b == 0.0))
    assert switches == 4


def test_balance_keeps_the_power_inside_the_dead_band():
    assert balance_w(meter(5.0, 700.0), 10.0) == 700.0
    assert balance_w(meter(50.0, 700.0), 10.0) == 750.0


def test_active_events_combine_and_ignore_the_inactive():
    evs = [
        GridEvent("a", 0.0, 100.0, max_import_w=3000.0),
        GridEvent("b", 10.0, 50.0, max_import_w=2000.0, battery_power_w=1000.0),
        GridEvent("c", 20.0, 40.0, battery_power_w=-500.0, max_export_w=100.0),
        GridEvent("d", 200.0, 300.0, max_import_w=0.0),
    ]
    a = active_events(evs, 30.0)
    assert (a.max_import_w, a.max_export_w, a.battery_power_w) == (2000.0, 100.0, -500.0)
    assert a.ids == ("a", "b", "c")
    a = active_events(evs, 45.0)
    assert (a.max_import_w, a.battery_power_w) == (2000.0, 1000.0)
    a = active_events(evs, 100.0)  # the window is [start, end)
    assert a.ids == ()
    assert math.isinf(a.max_import_w)


def test_a_failing_event_source_is_ignored():
    def broken(now_s: float) -> list[GridEvent]:
        raise ConnectionError("hub gone")

    assert read_events(broken, 0.0) == ()
    assert read_events(None, 0.0) == ()


def test_settings_check_the_thresholds():
    with pytest.raises(ValueError, match="start_power_w"):
        RealtimeConfig(stop_power_w=100.0, start_power_w=50.0)
    with pytest.raises(ValueError, match="ramp_w_per_s"):
        RealtimeConfig(ramp_w_per_s=0.0)


powers = st.floats(-20000.0, 20000.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    wish=powers,
    max_export=st.one_of(st.just(math.inf), st.floats(0.0, 5000.0)),
    grid=powers,
    battery=st.floats(-6000.0, 6000.0),
    soc=st.floats(0.0, 1.0),
    chg_lim=st.floats(0.0, 8000.0),
    dis_lim=st.floats(0.0, 8000.0),
    ramp=st.one_of(st.just(math.inf), st.floats(1.0, 5000.0)),
    ev_imp=st.one_of(st.none(), st.floats(0.0, 10000.0)),
    ev_exp=st.one_of(st.none(), st.floats(0.0, 10000.0)),
    ev_hold=st.one_of(st.none(), powers),
    dt=st.floats(0.1, 5.0),
)
def test_invariants(
    wish, max_export, grid, battery, soc, chg_lim, dis_lim, ramp, ev_imp, ev_exp, ev_hold, dt
):
    """Whatever comes in: within the Telemetry limits and the SoC window; the meter within
    its caps whenever the battery can do it; the ramp kept unless a cap needs more."""
    tel = dataclasses.replace(
        TEL, soc=soc, charge_power_limit_w=chg_lim, discharge_power_limit_w=dis_lim
    )
    lay = layer(RealtimeConfig(ramp_w_per_s=ramp))
    lay.setpoint(0.0, tel, meter(0.0, battery), Wish(battery))
    evs = (event(max_import_w=ev_imp, max_export_w=ev_exp, battery_power_w=ev_hold),)
    d = lay.setpoint(dt, tel, meter(grid, battery), Wish(wish, max_export_w=max_export), evs)
    p = d.power_w
    lo_bms, hi_bms = -min(5000.0, chg_lim), min(5000.0, dis_lim)
    if soc <= 0.2:
        hi_bms = 0.0
    if soc >= 0.9:
        lo_bms = 0.0
    lo_bms, hi_bms = min(lo_bms, 0.0), max(hi_bms, 0.0)
    assert lo_bms - 1e-9 <= p <= hi_bms + 1e-9
    net = grid + battery
    imp_cap = min(9000.0, ev_imp if ev_imp is not None else math.inf)
    exp_cap = min(6000.0, ev_exp if ev_exp is not None else math.inf)
    lo_cap, hi_cap = net - imp_cap, net + exp_cap
    reachable = max(lo_cap, lo_bms) <= min(hi_cap, hi_bms)
    if reachable:
        assert lo_cap - 1e-6 <= p <= hi_cap + 1e-6  # import and export within their caps
    step = ramp * dt
    within_ramp = abs(p - battery) <= step + 1e-6
    if reachable and not within_ramp:
        # only a cap (moving the least it must) or the BMS may break the ramp
        at_cap = p in (pytest.approx(lo_cap), pytest.approx(hi_cap))
        at_bms = p in (pytest.approx(0.0), pytest.approx(lo_bms), pytest.approx(hi_bms))
        assert at_cap or at_bms
