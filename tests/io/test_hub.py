"""The hub: commands from interfaces pass the same gate, resets and drills reach the loop."""

from __future__ import annotations

import math

import pytest

from openbess.contract import Command, Mode, Outcome, Reason
from openbess.io.hub import GridEvent, Hub

from .conftest import wait_for_snapshot


def test_an_operator_command_overrides_the_ems_and_is_clamped_by_the_bms(running_home):
    hub = running_home.hub
    now = hub.latest().time_s
    dec = hub.submit(
        Command(1, Mode.DISCHARGE, 1e6, valid_until_s=now + 600.0, source="operator"), wait_s=10
    )
    assert dec is not None
    assert dec.source == "operator"
    assert (dec.outcome, dec.reason) == (Outcome.CLAMPED, Reason.DISCHARGE_LIMIT)
    snap = hub.latest()
    assert dec.granted_w <= snap.telemetry.discharge_power_limit_w + 1e-6
    snap = wait_for_snapshot(running_home, lambda s: s.telemetry.gate.source == "operator")
    assert snap.command is not None
    assert snap.command.source == "operator"
    # cancelled by an idle command from the same source with a short validity
    dec = hub.submit(
        Command(2, Mode.IDLE, 0.0, valid_until_s=snap.time_s + 2.0, source="operator"), wait_s=10
    )
    assert dec is not None
    assert dec.granted_w == 0.0
    wait_for_snapshot(running_home, lambda s: s.telemetry.gate.source == "ems")


def test_bad_commands_are_refused_counted_and_change_nothing(running_home):
    hub = running_home.hub
    before = hub.latest().telemetry.gate
    dec = hub.submit(Command(1, Mode.POWER, math.nan, valid_until_s=1e12, source="mqtt"), 10)
    assert dec is not None
    assert (dec.outcome, dec.reason) == (Outcome.REFUSED, Reason.INVALID)
    dec = hub.submit(Command(5, Mode.POWER, 100.0, source="mqtt"), 10)  # no expiry
    assert dec is not None
    assert dec.outcome is Outcome.REFUSED
    dec = hub.submit(Command(9, Mode.POWER, 100.0, valid_until_s=1e12, source="ems"), 10)
    assert dec is not None
    assert dec.outcome is Outcome.REFUSED
    assert hub.rejected() == {"ems.reserved_source": 1}
    after = wait_for_snapshot(running_home, lambda s: True).telemetry.gate
    assert after.source == before.source == "ems"


def test_flood_beyond_the_queue_is_refused_and_counted():
    hub = Hub("t", max_queue=3)
    cmds = [Command(k, Mode.IDLE, valid_until_s=1e12, source="http") for k in range(5)]
    out = [hub.submit(c) for c in cmds]
    assert out[:3] == [None, None, None]
    assert all(d is not None and d.outcome is Outcome.REFUSED for d in out[3:])
    assert hub.rejected() == {"http.queue_full": 2}
    assert len(hub.take_commands()) == 3


def test_fault_drill_and_refused_reset(running_home):
    hub = running_home.hub
    ok, msg = hub.request_drill("no_such_fault", "http", wait_s=10)
    assert not ok
    assert "no_such_fault" in msg
    ok, msg = hub.request_reset("all", "http", wait_s=10)
    assert not ok
    assert msg == "no latched fault"
    ok, msg = hub.request_drill("welded_contactor", "http", wait_s=10)
    assert ok, msg
    ok, msg = hub.request_drill("welded_contactor", "http", wait_s=10, clear=True)
    assert ok
    assert "cleared" in msg


def test_grid_events_are_validated_and_listed():
    hub = Hub("t")
    with pytest.raises(ValueError, match="end_s"):
        hub.post_event(GridEvent("e1", 10.0, 5.0, max_import_w=100.0))
    with pytest.raises(ValueError, match="max_import_w"):
        hub.post_event(GridEvent("e1", 0.0, 5.0, max_import_w=-1.0))
    hub.post_event(GridEvent("b", 20.0, 30.0, battery_power_w=1000.0, source="openadr"))
    hub.post_event(GridEvent("a", 0.0, 10.0, max_import_w=0.0, source="openadr"))
    assert [e.event_id for e in hub.grid_events()] == ["a", "b"]
    assert [e.event_id for e in hub.grid_events(now_s=15.0)] == ["b"]
    assert hub.cancel_event("openadr", "b")
    assert not hub.cancel_event("openadr", "b")


def test_cancel_override_and_interface_events_reach_the_loop_and_the_database(running_home):
    import sqlite3

    hub = running_home.hub
    seen: list[dict] = []
    hub.subscribe_events(seen.append)
    now = hub.latest().time_s
    dec = hub.submit(
        Command(1, Mode.CHARGE, 500.0, valid_until_s=now + 3600.0, source="operator"), wait_s=10
    )
    assert dec is not None
    assert dec.source == "operator"
    hub.cancel_override("operator")
    hub.log_event("modbus", "heartbeat_lost", "warning", "no heartbeat for 60 s")
    wait_for_snapshot(running_home, lambda s: s.telemetry.gate.source == "ems")
    wait_for_snapshot(running_home, lambda s: any(e["code"] == "heartbeat_lost" for e in seen))
    codes = {e["code"] for e in seen}
    assert {"override_cancelled", "heartbeat_lost"} <= codes
    hub.unsubscribe_events(seen.append)
    running_home.stop()
    with sqlite3.connect(running_home.db_path) as db:
        rows = {r[0] for r in db.execute("SELECT code FROM events")}
    assert {"override_cancelled", "heartbeat_lost"} <= rows
