"""REST API and metrics: httpx against a running site, plus encoders on hand-made snapshots."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from openbess.config import HttpConfig
from openbess.contract import ContactorState, GateDecision, Outcome, Reason, Telemetry
from openbess.io.http import HttpServer, cells_dict, plan_dict, telemetry_dict
from openbess.io.hub import CellView, Hub, PlanView, Snapshot
from openbess.plant import SiteMeasurements

from .conftest import Running, start_site, wait_for_value

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _config(**kw: Any) -> HttpConfig:
    """An HttpConfig on a free port (port 0 is bound by the server, see HttpServer.port)."""
    return HttpConfig(**kw).model_copy(update={"port": 0})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, HttpServer]]:
    """The ``home`` site at 60x with the HTTP interface (token configured)."""
    server = HttpServer(_config(token=TOKEN))
    run = start_site(tmp_path_factory.mktemp("http"), interfaces=(server,))
    try:
        yield run, server
    finally:
        run.stop()


@pytest.fixture
def client(site: tuple[Running, HttpServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site[1].url, timeout=20.0) as c:
        yield c


# ------------------------------------------------------------------------------ reads
def test_telemetry_has_the_contract_fields_in_si_and_fractions(site, client):
    run, _ = site
    r = client.get("/api/v1/telemetry")
    assert r.status_code == 200
    t = r.json()
    for key in (
        "soc",
        "soh",
        "cell_voltage_min_v",
        "cell_voltage_max_v",
        "temperature_max_degc",
        "charge_power_limit_w",
        "discharge_power_limit_w",
        "contactor",
        "alarms",
        "gate",
    ):
        assert key in t
    assert 0.0 <= t["soc"] <= 1.0
    assert 0.0 < t["soh"] <= 1.0
    assert 2.0 < t["cell_voltage_min_v"] <= t["cell_voltage_max_v"] < 4.5
    assert t["contactor"] == "closed"
    assert t["gate"]["outcome"] in {o.value for o in Outcome}
    assert t["charge_power_limit_w"] >= 0
    assert t["discharge_power_limit_w"] >= 0
    snap = run.hub.latest()
    assert snap is not None
    assert t["time_s"] <= snap.time_s
    assert t["capacity_wh"] == pytest.approx(snap.telemetry.capacity_wh, rel=1e-3)


def test_cells_are_per_cell_arrays_with_consistent_stats(site, client):
    run, _ = site
    c = client.get("/api/v1/cells").json()
    n = run.hub.latest().cells.voltage_v.shape[0]
    assert c["n_cells"] == n == len(c["voltage_v"]) == len(c["temperature_degc"]) == len(c["soc"])
    assert len(c["balancing"]) == n
    assert set(c["balancing"]) <= {0, 1}
    v = np.array(c["voltage_v"], dtype=float)
    st = c["stats"]["voltage_v"]
    assert st["min"] == pytest.approx(np.nanmin(v), abs=1e-4)
    assert st["max"] == pytest.approx(np.nanmax(v), abs=1e-4)
    assert st["spread"] == pytest.approx(st["max"] - st["min"])
    assert c["voltage_v"][st["argmin"]] == pytest.approx(st["min"], abs=1e-4)
    assert c["n_strings"] * c["n_series"] == n


def test_status_health_plan_and_forecasts(site, client):
    s = client.get("/api/v1/status").json()
    assert s["site"] == "home"
    assert s["timezone"] == "Europe/Paris"
    assert s["running"]
    assert s["writes_enabled"]
    assert s["n_cells"] == 16
    assert s["counters"]["cycles"] > 0
    h = client.get("/api/v1/health")
    assert h.status_code == 200
    assert h.json()["status"] == "ok"
    p = client.get("/api/v1/plan").json()  # the home site's rule-based EMS does not plan
    assert p["available"] is False
    assert p["time_s"] == []
    f = client.get("/api/v1/forecasts").json()
    assert f["available"] is False
    assert set(f) >= {"load_w", "pv_w", "import_price_eur_per_kwh"}


def test_history_and_events_come_from_the_run_database(site, client):
    run, _ = site
    t_now = run.hub.latest().time_s
    h = wait_for_value(
        lambda: client.get("/api/v1/history").json(), lambda h: len(h["time_s"]) >= 25
    )
    assert h["run_id"] == 1
    assert h["bucket_s"] is None
    times = h["time_s"]
    assert times == sorted(times)
    assert times[-1] <= t_now + 60
    assert all(0.0 <= x <= 1.0 for x in h["columns"]["soc"])
    # a time window, ISO 8601 accepted, chosen columns, decimation into buckets
    t0, t1 = times[0], times[-1]
    iso = datetime.fromtimestamp(t0, UTC).isoformat()
    w = client.get(
        "/api/v1/history", params={"start": iso, "end": t1, "columns": "soc,grid_power_w"}
    ).json()
    assert set(w["columns"]) == {"soc", "grid_power_w"}
    assert all(t0 <= t < t1 for t in w["time_s"])
    d = client.get("/api/v1/history", params={"start": t0, "end": t1 + 1, "max_points": 10})
    d = d.json()
    assert d["bucket_s"] == pytest.approx((t1 + 1 - t0) / 10)
    assert 1 <= len(d["time_s"]) <= 10
    ev = client.get("/api/v1/events").json()
    codes = [e["code"] for e in ev["events"]]
    assert "closed" in codes
    assert ev["run_id"] == 1
    assert [e["time_s"] for e in ev["events"]] == sorted(e["time_s"] for e in ev["events"])


def test_bad_queries_are_422_naming_the_field_and_counted(site, client):
    run, _ = site
    before = run.hub.rejected().get("http.invalid_query", 0)
    r = client.get("/api/v1/history", params={"columns": "soc,no_such_column"})
    assert r.status_code == 422
    assert "no_such_column" in r.text
    assert "columns" in r.text
    r = client.get("/api/v1/history", params={"start": 100.0, "end": 50.0})
    assert r.status_code == 422
    assert "end" in r.text
    r = client.get("/api/v1/history", params={"start": "yesterday"})
    assert r.status_code == 422
    assert "start" in r.text
    r = client.get("/api/v1/events", params={"limit": "many"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "limit"]
    assert run.hub.rejected()["http.invalid_query"] == before + 4


def test_metrics_follow_the_snapshot(site, client):
    run, _ = site
    text = client.get("/metrics").text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    snap = run.hub.latest()
    assert values["openbess_soc_ratio"] == pytest.approx(snap.telemetry.soc, abs=0.01)
    assert values["openbess_soh_ratio"] == pytest.approx(snap.telemetry.soh, abs=1e-6)
    assert values["openbess_contactor_closed"] == 1.0
    assert values['openbess_contactor_state{state="closed"}'] == 1.0
    assert values["openbess_control_cycles_total"] > 0
    assert values['openbess_gate_decisions_total{outcome="accepted"}'] > 0
    for name in (
        "openbess_cell_voltage_min_volts",
        "openbess_cell_voltage_max_volts",
        "openbess_discharge_power_limit_watts",
        "openbess_battery_power_watts",
        "openbess_alarms_active",
    ):
        assert name in values


def test_openapi_documents_the_endpoints_with_response_models(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ("telemetry", "cells", "plan", "forecasts", "events", "history", "status", "health"):
        assert f"/api/v1/{p}" in paths
    assert "post" in paths["/api/v1/command"]
    assert "delete" in paths["/api/v1/grid-events/{event_id}"]
    schema = spec["components"]["schemas"]["TelemetryOut"]
    assert {"soc", "soh", "contactor", "gate"} <= set(schema["properties"])
    assert client.get("/docs").status_code == 200


def test_stream_sends_moving_snapshots_and_cells(site):
    _, server = site
    seen: list[tuple[str, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=server.url, timeout=20.0) as c,
        c.stream("GET", "/api/v1/stream", params={"interval_s": 0.1}) as s,
    ):
        assert s.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in s.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((kind, json.loads(line[6:])))
                if sum(k == "snapshot" for k, _ in seen) >= 3 and any(
                    k == "cells" for k, _ in seen
                ):
                    break
    snaps = [d["time_s"] for k, d in seen if k == "snapshot"]
    assert snaps == sorted(snaps)
    assert len(set(snaps)) == len(snaps)
    cells = next(d for k, d in seen if k == "cells")
    assert len(cells["voltage_v"]) == cells["n_cells"] == 16


# ------------------------------------------------------------------------------ writes
def test_writes_need_the_bearer_token(site, client):
    run, _ = site
    body = {"mode": "idle", "duration_s": 1}
    before = run.hub.rejected().get("http.unauthorized", 0)
    r = client.post("/api/v1/command", json=body)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.post("/api/v1/command", json=body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert "wrong" in r.json()["detail"]
    r = client.post("/api/v1/faults/reset", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert run.hub.rejected()["http.unauthorized"] == before + 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "discharge", "power_w": "lots"}, "power_w"),
        ({"mode": "warp"}, "mode"),
        ({"mode": "power", "power_w": 1.0, "duration_s": -5}, "duration_s"),
        ({"mode": "power", "reserve_soc": 1.5}, "reserve_soc"),
        ({"mode": "power", "colour": "red"}, "colour"),
        ({"power_w": 10}, "mode"),
    ],
)
def test_bad_command_bodies_are_422_naming_the_field(site, client, body, field):
    run, _ = site
    gate_before = run.hub.latest().counters.get("gate.refused", 0.0)
    before = run.hub.rejected().get("http.invalid_body", 0)
    r = client.post("/api/v1/command", json=body, headers=AUTH)
    assert r.status_code == 422
    assert field in r.json()["message"]
    assert any(e["loc"][-1] == field for e in r.json()["detail"])
    assert run.hub.rejected()["http.invalid_body"] == before + 1
    assert run.hub.latest().counters.get("gate.refused", 0.0) == gate_before  # never reached


def test_malformed_json_is_422(site, client):
    r = client.post(
        "/api/v1/command",
        content=b"{mode: discharge",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 422


def test_a_command_passes_the_gate_and_overrides_the_ems(site, client):
    run, _ = site
    r = client.post(
        "/api/v1/command",
        json={"mode": "discharge", "power_w": 1e6, "duration_s": 120},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["outcome"], d["reason"], d["source"]) == ("clamped", "discharge_limit", "http")
    assert d["requested_w"] == 1e6
    assert 0 < d["granted_w"] < 1e6
    snap = run.hub.latest()
    assert d["valid_until_s"] == pytest.approx(snap.time_s + 120, abs=30)  # site time
    t = wait_for_value(
        lambda: client.get("/api/v1/telemetry").json(),
        lambda t: t["gate"]["source"] == "http",
    )
    assert t["gate"]["granted_w"] <= t["discharge_power_limit_w"] + 1e-6
    s = client.get("/api/v1/status").json()
    assert s["command"]["source"] == "http"
    assert s["command"]["mode"] == "discharge"
    # hand back to the EMS: an idle override expiring 2 s (site time) later
    r = client.post("/api/v1/command", json={"mode": "idle", "duration_s": 2}, headers=AUTH).json()
    assert r["outcome"] == "accepted"
    assert r["granted_w"] == 0.0
    wait_for_value(
        lambda: client.get("/api/v1/telemetry").json(), lambda t: t["gate"]["source"] == "ems"
    )


def test_reset_without_latched_fault_is_409(client):
    r = client.post("/api/v1/faults/reset", json={"code": "all"}, headers=AUTH)
    assert r.status_code == 409
    assert r.json()["detail"] == "no latched fault"
    r = client.post("/api/v1/faults/reset", json={"code": "bad code!"}, headers=AUTH)
    assert r.status_code == 422
    assert "code" in r.json()["message"]


def test_grid_events_post_list_delete(site, client):
    run, _ = site
    now = run.hub.latest().time_s
    body = {"event_id": "peak-1", "start_s": now + 600, "end_s": now + 1200, "max_import_w": 0}
    r = client.post("/api/v1/grid-events", json=body, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["source"] == "http"
    listed = client.get("/api/v1/grid-events").json()
    assert [e["event_id"] for e in listed] == ["peak-1"]
    assert [e.event_id for e in run.hub.grid_events()] == ["peak-1"]
    bad = {**body, "end_s": now}
    r = client.post("/api/v1/grid-events", json=bad, headers=AUTH)
    assert r.status_code == 422
    assert "end_s" in r.text
    r = client.post("/api/v1/grid-events", json={**body, "max_export_w": -1}, headers=AUTH)
    assert r.status_code == 422
    assert "max_export_w" in r.text
    assert client.delete("/api/v1/grid-events/peak-1", headers=AUTH).status_code == 200
    assert client.delete("/api/v1/grid-events/peak-1", headers=AUTH).status_code == 404
    assert run.hub.grid_events() == []


def test_fault_drill_raises_an_alarm_that_can_be_acknowledged_and_cleared(tmp_path):
    server = HttpServer(_config(token=TOKEN))
    run = start_site(tmp_path, interfaces=(server,))
    try:
        with httpx.Client(base_url=server.url, timeout=20.0) as c:
            r = c.post("/api/v1/drills", json={"kind": "no_such_fault"}, headers=AUTH)
            assert r.status_code == 422
            assert "kind" in r.json()["message"]
            r = c.post(
                "/api/v1/drills",
                json={"kind": "cooling_failure", "params": {"speed": 2.0}},
                headers=AUTH,
            )
            assert r.status_code == 422
            assert "remaining_fraction" in r.text
            r = c.post(
                "/api/v1/drills", json={"kind": "internal_short", "target": 999}, headers=AUTH
            )
            assert r.status_code == 422  # cell 999 of 16: refused by the twin, counted
            assert run.hub.rejected()["http.bad_drill"] == 1
            r = c.post(
                "/api/v1/drills",
                json={"kind": "temperature_sensor_lost", "target": 0},
                headers=AUTH,
            )
            assert r.status_code == 200
            assert "injected" in r.json()["message"]
            t = wait_for_value(lambda: c.get("/api/v1/telemetry").json(), lambda t: t["alarms"])
            alarm = t["alarms"][0]
            assert alarm.startswith("temperature_invalid")
            assert t["alarm_severity"][alarm]
            r = c.post("/api/v1/alarms/ack", json={"codes": ["nope"]}, headers=AUTH)
            assert r.status_code == 422
            assert "nope" in r.text
            r = c.post("/api/v1/alarms/ack", json={"codes": []}, headers=AUTH)
            assert r.status_code == 200
            assert alarm in r.json()["message"]
            assert alarm in c.get("/api/v1/status").json()["acknowledged"]
            ev = wait_for_value(
                lambda: c.get("/api/v1/events", params={"kind": "drill"}).json()["events"],
                lambda e: len(e) >= 1,
            )
            assert ev[0]["code"] == "temperature_sensor_lost"
            assert "http" in ev[0]["message"]
            r = c.post(
                "/api/v1/drills",
                json={"kind": "temperature_sensor_lost", "target": 0, "action": "clear"},
                headers=AUTH,
            )
            assert r.status_code == 200
            assert "cleared" in r.json()["message"]
            wait_for_value(lambda: c.get("/api/v1/telemetry").json(), lambda t: not t["alarms"])
            # the acknowledgement goes with the alarm
            assert c.get("/api/v1/status").json()["acknowledged"] == []
    finally:
        run.stop()


def test_without_a_token_writes_are_403_and_the_env_token_works(tmp_path, monkeypatch):
    env = "OPENBESS_TEST_HTTP_TOKEN"
    monkeypatch.delenv(env, raising=False)
    server = HttpServer(_config(token=None, token_env=env))
    run = start_site(tmp_path, interfaces=(server,))
    try:
        with httpx.Client(base_url=server.url, timeout=20.0) as c:
            r = c.post("/api/v1/command", json={"mode": "idle"}, headers=AUTH)
            assert r.status_code == 403
            assert env in r.json()["detail"]
            assert run.hub.rejected()["http.writes_disabled"] == 1
            assert c.get("/api/v1/status").json()["writes_enabled"] is False
            monkeypatch.setenv(env, "from-env")
            r = c.post(
                "/api/v1/command",
                json={"mode": "idle", "duration_s": 60},
                headers={"Authorization": "Bearer from-env"},
            )
            assert r.status_code == 200
            assert r.json()["outcome"] == "accepted"
    finally:
        run.stop()


# ------------------------------------------------------------------------------ server life
def _telemetry(time_s: float, soc: float) -> Telemetry:
    gate = GateDecision(Outcome.SAFE_IDLE, Reason.NO_COMMAND, -1, 0.0, 0.0, "")
    return Telemetry(
        time_s, soc, soc, soc, 0.98, 1000.0, 2000.0, 52.0, 1.5, 3.2, 3.3, 3.25,
        20.0, math.nan, 21.0, 50.0, 50.0, 2500.0, 2500.0,
        ContactorState.OPEN, (), 0, gate,
    )  # fmt: skip


def _snapshot(time_s: float, plan: PlanView | None = None) -> Snapshot:
    n = 4
    cells = CellView(
        voltage_v=np.array([3.2, math.nan, 3.3, 3.25]),
        temperature_degc=np.full(n, 20.0),
        soc=np.array([0.5, 0.5, 0.6, 0.55]),
        balancing=np.array([False, False, True, False]),
        string_current_a=np.array([1.5]),
        n_strings=1,
        modules_per_string=1,
    )
    site = SiteMeasurements(time_s, 100.0, 0.0, 100.0, 0.0, 0.3, 0.1)
    return Snapshot(time_s, _telemetry(time_s, 0.5), site, cells, None, plan, {"cycles": 1.0})


def _plan() -> PlanView:
    return PlanView(
        created_s=1000.0,
        time_s=np.array([1000.0, 1900.0]),
        step_s=np.array([900.0, 900.0]),
        battery_power_w=np.array([500.0, -250.0]),
        soc=np.array([0.4, math.nan]),
        grid_import_w=np.zeros(2),
        grid_export_w=np.zeros(2),
        load_w=np.array([300.0, 400.0]),
        pv_w=np.array([0.0, 1000.0]),
        import_price_eur_per_kwh=np.array([0.3, 0.25]),
        export_price_eur_per_kwh=np.array([0.08, 0.07]),
        forecast_errors={
            "load_w": {"mae": 300.0, "mae_naive": 400.0, "skill": 0.25, "n": 96},
            "pv_w": {"mae": math.nan, "mae_naive": math.nan, "skill": math.nan, "n": 0},
        },
    )


def test_encoders_send_nan_as_null_and_keep_the_plan():
    plan = _plan()
    snap = _snapshot(1000.0, plan)
    t = telemetry_dict(snap)
    assert t["temperature_max_degc"] is None
    assert t["soc"] == 0.5
    c = cells_dict(snap)
    assert c["voltage_v"] == [3.2, None, 3.3, 3.25]
    assert c["stats"]["voltage_v"]["min"] == 3.2
    assert c["stats"]["voltage_v"]["argmax"] == 2
    assert c["balancing"] == [0, 0, 1, 0]
    assert c["balancing_count"] == 1
    p = plan_dict(plan)
    assert p["available"]
    assert p["soc"] == [0.4, None]
    assert p["battery_power_w"] == [500.0, -250.0]
    json.dumps([t, c, p], allow_nan=False)  # strict JSON


def test_health_before_the_first_cycle_then_plan_from_a_hub(tmp_path: Path):
    hub = Hub("bench")
    server = HttpServer(_config())
    server.start(hub)
    try:
        assert server.port > 0
        with httpx.Client(base_url=server.url, timeout=10.0) as c:
            r = c.get("/api/v1/health")
            assert r.status_code == 503
            assert r.json()["status"] == "starting"
            assert c.get("/api/v1/telemetry").status_code == 503
            assert c.get("/api/v1/events").status_code == 503  # no run database
            hub.publish(_snapshot(1000.0, _plan()))
            assert c.get("/api/v1/health").json()["status"] == "ok"
            f = c.get("/api/v1/forecasts").json()
            assert f["available"]
            assert f["load_w"] == [300.0, 400.0]
            assert f["time_s"] == [1000.0, 1900.0]
            assert "battery_power_w" not in f
            assert f["errors"]["load_w"] == {
                "mae": 300.0,
                "mae_naive": 400.0,
                "skill": 0.25,
                "n": 96,
            }
            assert isinstance(f["errors"]["load_w"]["n"], int)  # a count, not 96.0
            assert f["errors"]["pv_w"]["skill"] is None  # nothing scored yet: null, not NaN
            assert "openbess_soc_ratio 0.5" in c.get("/metrics").text
    finally:
        server.stop()
        server.stop()  # idempotent
    with socket.socket() as s:
        s.settimeout(1.0)
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", server.port))
