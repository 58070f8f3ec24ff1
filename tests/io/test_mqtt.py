"""MQTT bridge against a real mosquitto: telemetry, plan, events, commands through the gate,
Home Assistant discovery, reconnection without losing the queue, credentials and TLS."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from openbess.config import MqttConfig, load_site
from openbess.contract import Command, Mode
from openbess.errors import ConfigError
from openbess.io.hub import Hub, PlanView, Snapshot
from openbess.io.mqtt import (
    MAX_PAYLOAD_BYTES,
    CommandInputError,
    CommandLimits,
    EnergyCounters,
    Message,
    MqttBridge,
    Outbox,
    discovery_messages,
    parse_command,
)
from openbess.plant import SiteMeasurements

from .conftest import Running, start_site, wait_for
from .mosquitto import Broker, make_tls_files, start_broker

BASE = "openbess/home"
LIMITS = CommandLimits(5000.0, 5000.0)


# ----------------------------------------------------------------------------- helpers
class Listener:
    """A paho subscriber that records every message and waits for conditions."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        client_id: str = "",
        clean: bool = True,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.reconnect_delay_set(1, 2)
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls is not None:
            self.client.tls_set(ca_certs=str(broker.tls.ca_cert))

        def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*args: Any) -> None:
            self.subscribed.set()

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            with self.cond:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
                self.cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "listener did not subscribe"

    def on(self, topic: str) -> list[bytes]:
        with self.cond:
            return [p for t, p, _ in self.messages if t == topic]

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(topic)]

    def wait_for(self, cond: Callable[[], bool], timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not cond():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("condition not met in time")
                self.cond.wait(min(left, 0.1))

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()  # closes paho's wake-up socket pair now, not at GC


def bridge_for(broker: Broker, **kw: Any) -> MqttBridge:
    cfg: dict[str, Any] = {"host": broker.host, "port": broker.port, **kw}
    if broker.username is not None and "username" not in kw:
        cfg.update(username=broker.username, password=broker.password)
    if broker.tls is not None and "tls" not in kw:
        cfg.update(tls=True, tls_ca_file=str(broker.tls.ca_cert))
    return MqttBridge(MqttConfig(**cfg))


def sub(broker: Broker, *args: str) -> str:
    out = subprocess.run(
        ["mosquitto_sub", *broker.client_args(), *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return out.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    run = start_site(tmp_path_factory.mktemp("mqtt_site"))
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def wait_ems(site: Running) -> None:
    wait_for(lambda: site.hub.latest().telemetry.gate.source == "ems", 20)


# ----------------------------------------------------------------------------- parsing
def test_valid_commands_parse_to_known_requests():
    assert parse_command("setpoint", b" -2500.5\n", LIMITS).power_w == -2500.5
    assert parse_command("setpoint", b"5000", LIMITS).mode == "power"
    assert parse_command("mode", b"Discharge", LIMITS).mode == "discharge"
    assert parse_command("reserve_soc", b"0.25", LIMITS).reserve_soc == 0.25
    assert parse_command("reset", b"", LIMITS).reset_code == "all"
    assert parse_command("reset", b"cell_overvoltage", LIMITS).reset_code == "cell_overvoltage"
    req = parse_command(
        "command",
        b'{"mode": "charge", "power_w": 1200, "duration_s": 60, "reserve_soc": 0.3, "id": "a1"}',
        LIMITS,
    )
    assert (req.mode, req.power_w, req.duration_s, req.reserve_soc, req.request_id) == (
        "charge",
        1200.0,
        60.0,
        0.3,
        "a1",
    )
    assert parse_command("command", b'{"mode": "auto"}', LIMITS).power_w is None


BAD_INPUT = [
    ("setpoint", b"abc", "wrong_type", "setpoint must be a number"),
    ("setpoint", b"nan", "wrong_type", "setpoint must be a number"),
    ("setpoint", b"1e999", "out_of_range", "finite"),
    ("setpoint", b"5000.1", "out_of_range", "setpoint = 5000.1 W is outside [-5000, 5000]"),
    ("setpoint", b"\xff\xfe1", "encoding", "UTF-8"),
    ("setpoint", b"1" * (MAX_PAYLOAD_BYTES + 1), "oversize", f"exceeds {MAX_PAYLOAD_BYTES}"),
    ("mode", b"turbo", "bad_value", "mode 'turbo'"),
    ("reserve_soc", b"1.5", "out_of_range", "reserve_soc = 1.5 is outside [0, 1]"),
    ("reserve_soc", b"true", "wrong_type", "reserve_soc must be a number"),
    ("reset", b"../etc", "bad_value", "not a fault code"),
    ("command", b"{not json", "bad_json", "not valid JSON"),
    ("command", b"[1, 2]", "wrong_type", "JSON object"),
    ("command", b'{"mode": "power"}', "missing_field", "needs 'power_w'"),
    ("command", b'{"power_w": 5}', "missing_field", "needs a 'mode'"),
    ("command", b'{"mode": "power", "power_w": true}', "wrong_type", "power_w must be a number"),
    ("command", b'{"mode": 3}', "wrong_type", "mode must be a string"),
    ("command", b'{"mode": "power", "power_w": 1, "evil": 1}', "unknown_field", "['evil']"),
    ("command", b'{"mode": "charge", "power_w": -5}', "out_of_range", "power_w = -5 W"),
    ("command", b'{"mode": "idle", "duration_s": -5}', "out_of_range", "duration_s = -5"),
    ("command", b'{"mode": "idle", "duration_s": 1e6}', "out_of_range", "duration_s = 1e+06"),
    ("command", b'{"mode": "idle", "id": 12}', "wrong_type", "id must be a string"),
    ("bogus", b"1", "unknown_topic", "unknown command 'bogus'"),
    ("setpoint/extra", b"1", "unknown_topic", "unknown command 'setpoint/extra'"),
]


@pytest.mark.parametrize(("name", "payload", "reason", "fragment"), BAD_INPUT)
def test_bad_payloads_are_refused_with_a_reason_naming_the_field(name, payload, reason, fragment):
    with pytest.raises(CommandInputError, match=re.escape(fragment)) as err:
        parse_command(name, payload, LIMITS)
    assert err.value.reason == reason


def test_a_retained_command_is_refused_as_stale():
    with pytest.raises(CommandInputError, match="retained") as err:
        parse_command("setpoint", b"100", LIMITS, retained=True)
    assert err.value.reason == "retained"


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e7, max_value=1e7))
def test_setpoints_within_the_rating_pass_unchanged_and_others_are_refused(power_w):
    payload = repr(power_w).encode()
    if -5000.0 <= power_w <= 5000.0:
        assert parse_command("setpoint", payload, LIMITS).power_w == power_w
    else:
        with pytest.raises(CommandInputError) as err:
            parse_command("setpoint", payload, LIMITS)
        assert err.value.reason == "out_of_range"


def test_configuration_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"interfaces\.mqtt\.prefix"):
        MqttBridge(MqttConfig(prefix="a/#"))
    with pytest.raises(ConfigError, match=r"interfaces\.mqtt\.discovery_prefix"):
        MqttBridge(MqttConfig(discovery_prefix="/ha"))
    with pytest.raises(ConfigError, match=r"interfaces\.mqtt\.tls_ca_file .*not found"):
        MqttBridge(MqttConfig(tls=True, tls_ca_file=str(tmp_path / "missing.crt")))
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError, match=r"tls_ca_file is set but interfaces\.mqtt\.tls is false"):
        MqttBridge(MqttConfig(tls_ca_file=str(ca)))
    with pytest.raises(ConfigError, match=r"password is set without"):
        MqttBridge(MqttConfig(password="p"))


# ----------------------------------------------------------------------------- outbox, energy
def test_outbox_drops_the_oldest_when_full_and_hands_out_only_while_open():
    box = Outbox(3, window=2)
    for k in range(5):
        box.put(Message("t", str(k).encode()))
    assert (len(box), box.dropped) == (3, 2)
    assert box.next(0.01) is None  # link closed
    box.set_open(True)
    first, second = box.next(0.01), box.next(0.01)
    assert [first.body(), second.body()] == [b"2", b"3"]  # oldest kept message first
    assert box.next(0.01) is None  # window of 2 full until the broker acknowledges
    box.acked()
    third = box.next(0.01)
    assert third is not None
    assert third.body() == b"4"
    box.close()
    assert box.next(1.0) is None


def _meas(time_s: float, battery_w: float, grid_w: float, pv_w: float) -> SiteMeasurements:
    return SiteMeasurements(time_s, grid_w, pv_w, 0.0, battery_w, 0.2, 0.1)


def test_energy_counters_integrate_signed_powers_and_never_decrease():
    e = EnergyCounters()
    e.add(_meas(0.0, 1000.0, 500.0, 0.0))  # first reading: nothing to integrate
    e.add(_meas(3600.0, 1000.0, 500.0, 2000.0))  # 1 h discharging 1 kW, importing, PV 2 kW
    e.add(_meas(5400.0, -2000.0, -3000.0, math.nan))  # 0.5 h charging 2 kW, exporting
    e.add(_meas(5400.0 + 7200.0, 3000.0, 0.0, 0.0))  # a 2 h gap is not integrated
    assert e.battery_discharged_wh == pytest.approx(1000.0)
    assert e.battery_charged_wh == pytest.approx(1000.0)
    assert e.grid_import_wh == pytest.approx(500.0)
    assert e.grid_export_wh == pytest.approx(1500.0)
    assert e.pv_energy_wh == pytest.approx(2000.0)


# ----------------------------------------------------------------------------- discovery
def test_discovery_follows_home_assistant_conventions():
    config = load_site("home")
    msgs = discovery_messages("home", BASE, "homeassistant", config)
    topic = re.compile(
        r"homeassistant/(sensor|binary_sensor|number|select|button)/[\w-]+/[\w-]+/config"
    )
    assert all(topic.fullmatch(t) for t, _ in msgs)
    ids = [p["unique_id"] for _, p in msgs]
    assert len(ids) == len(set(ids))
    by_id = {t.split("/")[3]: p for t, p in msgs}
    allowed_state = {
        "battery": {"measurement"},
        "power": {"measurement"},
        "voltage": {"measurement"},
        "current": {"measurement"},
        "temperature": {"measurement"},
        "energy_storage": {"measurement"},
        "energy": {"total", "total_increasing"},
    }
    units = {
        "battery": {"%"},
        "power": {"W"},
        "voltage": {"V"},
        "current": {"A"},
        "temperature": {"°C"},
        "energy_storage": {"Wh"},
        "energy": {"Wh"},
    }
    for t, p in msgs:
        assert p["availability_topic"] == f"{BASE}/availability"
        assert p["device"]["identifiers"] == ["openbess_home"]
        if t.startswith("homeassistant/sensor/") and p.get("device_class") in allowed_state:
            assert p["state_class"] in allowed_state[p["device_class"]], t
            assert p["unit_of_measurement"] in units[p["device_class"]], t
    assert by_id["soc"]["device_class"] == "battery"
    assert by_id["battery_charged_energy"]["state_class"] == "total_increasing"
    assert by_id["battery_discharged_energy"]["device_class"] == "energy"
    assert {p.get("device_class") for _, p in msgs} >= {
        "battery",
        "power",
        "energy",
        "temperature",
        "voltage",
    }
    setpoint = by_id["power_setpoint"]
    assert (setpoint["min"], setpoint["max"]) == (-5000.0, 5000.0)
    assert setpoint["command_topic"] == f"{BASE}/command/setpoint"
    assert by_id["mode"]["options"][0] == "auto"
    assert by_id["reserve_soc"]["command_template"] == "{{ value / 100 }}"
    assert by_id["fault_reset"]["command_topic"] == f"{BASE}/command/reset"
    read_only = discovery_messages("home", BASE, "homeassistant", config, commands_enabled=False)
    assert not any("command_topic" in p for _, p in read_only)


# ----------------------------------------------------------------------------- live broker
def test_end_to_end_with_mosquitto_clients(site, broker):
    """mosquitto_sub sees availability, discovery and telemetry; mosquitto_rr gets the ack."""
    bridge = bridge_for(broker, publish_interval_s=0.1)
    bridge.start(site.hub)
    try:
        assert bridge.wait_connected(10)
        assert sub(broker, "-t", f"{BASE}/availability", "-C", "1", "-W", "10").strip() == (
            "online"
        )
        configs = sub(broker, "-t", "homeassistant/#", "-v", "--retained-only", "-W", "2")
        assert len(configs.splitlines()) == len(
            discovery_messages("home", BASE, "homeassistant", site.hub.config)
        )
        tele = json.loads(sub(broker, "-t", f"{BASE}/telemetry", "-C", "1", "-W", "10"))
        snap = site.hub.latest()
        assert 0.0 < tele["soc"] < 1.0
        assert abs(tele["time_s"] - snap.time_s) < 600.0
        assert tele["contactor"] == "closed"
        assert tele["charge_power_limit_w"] >= 0.0
        assert tele["mqtt"]["mode"] == "auto"

        rr = subprocess.run(
            [
                "mosquitto_rr",
                *broker.client_args(),
                "-t",
                f"{BASE}/command/setpoint",
                "-e",
                f"{BASE}/ack/setpoint",
                "-m",
                "-1500",
                "-W",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        ack = json.loads(rr.stdout)
        assert ack["source"] == "mqtt"
        assert ack["requested_w"] == -1500.0
        assert ack["outcome"] in ("accepted", "clamped")
        assert -1500.0 <= ack["granted_w"] <= 0.0
        wait_for(lambda: site.hub.latest().telemetry.gate.source == "mqtt")
        snap = site.hub.latest()
        assert snap.command is not None
        assert snap.command.source == "mqtt"
        # the override's validity is in site time: now + the default 900 s
        assert snap.command.valid_until_s - snap.time_s <= 900.0
        subprocess.run(
            ["mosquitto_pub", *broker.client_args(), "-t", f"{BASE}/command/mode", "-m", "auto"],
            check=True,
            timeout=20,
        )
        wait_ems(site)
    finally:
        bridge.stop()
    assert sub(broker, "-t", f"{BASE}/availability", "-C", "1", "-W", "10").strip() == "offline"


def test_commands_pass_the_gate_and_acks_carry_its_decision(site, broker):
    bridge = bridge_for(broker)
    bridge.start(site.hub)
    listener = Listener(broker, [f"{BASE}/ack/#"])
    try:
        assert bridge.wait_connected(10)
        listener.publish(
            f"{BASE}/command/command",
            json.dumps({"mode": "discharge", "power_w": 5000, "duration_s": 120, "id": "x7"}),
        )
        listener.wait_for(lambda: len(listener.on(f"{BASE}/ack/command")) == 1)
        ack = listener.json(f"{BASE}/ack/command")[0]
        assert ack["id"] == "x7"
        snap = site.hub.latest()
        # the BMS's limit decides: clamped when the pack cannot give 5 kW now
        assert ack["outcome"] in ("accepted", "clamped")
        assert ack["granted_w"] <= snap.telemetry.discharge_power_limit_w + 1e-6
        assert ack["reason"] == ("none" if ack["outcome"] == "accepted" else "discharge_limit")
        listener.publish(f"{BASE}/command/reserve_soc", "0.99")
        listener.wait_for(lambda: len(listener.on(f"{BASE}/ack/reserve_soc")) == 1)
        ack = listener.json(f"{BASE}/ack/reserve_soc")[0]
        # the override is re-submitted with the new reserve: the gate refuses discharge below it
        assert (ack["outcome"], ack["reason"]) == ("refused", "reserve_soc")
        listener.publish(f"{BASE}/command/reset", "all")
        listener.wait_for(lambda: len(listener.on(f"{BASE}/ack/reset")) == 1)
        ack = listener.json(f"{BASE}/ack/reset")[0]
        assert (ack["outcome"], ack["message"]) == ("refused", "no latched fault")
        listener.publish(f"{BASE}/command/mode", "auto")
        listener.wait_for(lambda: len(listener.on(f"{BASE}/ack/mode")) == 1)
        ack = listener.json(f"{BASE}/ack/mode")[0]
        # the override is withdrawn (not replaced by another one): the EMS's command applies
        assert (ack["outcome"], ack["decided_by"]) == ("accepted", "hub")
        wait_ems(site)
        snap = site.hub.wait_next(site.hub.latest().time_s, 5)
        assert snap.command is None or snap.command.source == "ems"
    finally:
        listener.stop()
        bridge.stop()


def test_bad_input_on_every_topic_is_refused_counted_and_changes_nothing(site, broker):
    hub = site.hub
    # a stale retained command waiting on the broker before the bridge subscribes
    stale = Listener(broker, ["x/none"])
    stale.publish(f"{BASE}/command/setpoint", "4000", retain=True)
    stale.stop()
    before = hub.rejected()
    bridge = bridge_for(broker)
    listener = Listener(broker, [f"{BASE}/ack/#"])
    bridge.start(hub)
    try:
        assert bridge.wait_connected(10)
        for name, payload, _, _ in BAD_INPUT:
            listener.publish(f"{BASE}/command/{name}", payload)
        n = len(BAD_INPUT) + 1
        listener.wait_for(
            lambda: sum(t.startswith(f"{BASE}/ack/") for t, _, _ in listener.messages) >= n
        )
        acks = [(t, json.loads(p)) for t, p, _ in listener.messages]
        got = Counter((t.removeprefix(f"{BASE}/ack/"), a["error"]) for t, a in acks)
        want = Counter((name, reason) for name, _, reason, _ in BAD_INPUT)
        want[("setpoint", "retained")] += 1
        assert got == want
        assert all(a["outcome"] == "refused" and a["granted_w"] == 0.0 for _, a in acks)
        after = hub.rejected()
        delta = Counter({k: after.get(k, 0) - before.get(k, 0) for k in after})
        assert +delta == Counter(f"mqtt.{reason}" for _, reason in want.elements())
        # nothing reached the gate: the EMS keeps control
        snap = hub.wait_next(hub.latest().time_s, 5)
        assert snap.telemetry.gate.source == "ems"
        assert snap.command is None or snap.command.source == "ems"
        assert bridge.stats()["commands_refused"] == n
        # and the bridge keeps going
        listener.publish(f"{BASE}/command/setpoint", "-500")
        listener.wait_for(
            lambda: any(json.loads(p)["error"] is None for t, p, _ in listener.messages)
        )
        good = next(
            a
            for _, a in [(t, json.loads(p)) for t, p, _ in listener.messages]
            if a["error"] is None
        )
        assert good["source"] == "mqtt"
        assert good["requested_w"] == -500.0
        listener.publish(f"{BASE}/command/mode", "auto")
        wait_ems(site)
    finally:
        listener.stop()
        bridge.stop()


def test_a_flood_of_commands_is_answered_and_the_newest_wins(site, broker):
    bridge = bridge_for(broker)
    bridge.start(site.hub)
    listener = Listener(broker, [f"{BASE}/ack/setpoint"])
    try:
        assert bridge.wait_connected(10)
        n = 300
        for k in range(n):
            listener.client.publish(f"{BASE}/command/setpoint", str(-10 * (k + 1)), qos=1)
        listener.wait_for(lambda: len(listener.on(f"{BASE}/ack/setpoint")) == n, 30)
        acks = listener.json(f"{BASE}/ack/setpoint")
        assert all(a["source"] == "mqtt" for a in acks)
        outcomes = Counter(a["outcome"] for a in acks)
        assert set(outcomes) <= {"accepted", "clamped", "dropped"}
        # older commands of a batch are superseded at once, the newest is decided by the gate
        assert all(
            a["decided_by"] == ("gate" if a["outcome"] != "dropped" else "bridge") for a in acks
        )
        last = max(acks, key=lambda a: a["seq"])
        assert last["requested_w"] == -3000.0
        assert last["outcome"] in ("accepted", "clamped")
        wait_for(lambda: site.hub.latest().command.requested_power_w() == -3000.0)
        listener.publish(f"{BASE}/command/mode", "auto")
        wait_ems(site)
    finally:
        listener.stop()
        bridge.stop()


def _plan(seed: int, t0: float) -> PlanView:
    rng = np.random.default_rng(seed)
    n = 4
    return PlanView(
        created_s=t0,
        time_s=t0 + 900.0 * np.arange(n),
        step_s=np.full(n, 900.0),
        battery_power_w=rng.uniform(-3000, 3000, n),
        soc=rng.uniform(0.1, 0.9, n),
        grid_import_w=np.zeros(n),
        grid_export_w=np.zeros(n),
        load_w=np.full(n, 500.0),
        pv_w=np.array([0.0, 100.0, np.nan, 0.0]),
        import_price_eur_per_kwh=np.full(n, 0.3),
        export_price_eur_per_kwh=np.full(n, 0.1),
    )


def test_plan_on_change_events_and_telemetry_fields(site, broker):
    """Snapshots published on a bare hub: one plan message per change, events forwarded."""
    real = site.hub.latest()
    hub = Hub("home", config=load_site("home"))
    bridge = bridge_for(broker, publish_interval_s=0.001)
    listener = Listener(broker, [f"{BASE}/plan", f"{BASE}/event", f"{BASE}/telemetry"])
    bridge.start(hub)
    try:
        assert bridge.wait_connected(10)
        p1, p2 = _plan(1, real.time_s), _plan(2, real.time_s + 900.0)
        snaps: list[Snapshot] = []
        for k, plan in enumerate([p1, p1, p1, p2, p2]):
            t = real.time_s + 10.0 * (k + 1)
            meas = dataclasses.replace(real.site, time_s=t)
            snap = dataclasses.replace(real, time_s=t, site=meas, plan=plan)
            snaps.append(snap)
            hub.publish(snap)
            time.sleep(0.002)  # let the telemetry interval pass (it is counted in wall time)
        hub.publish_event({"time_s": real.time_s, "kind": "alarm", "code": "x", "v": np.nan})
        listener.wait_for(
            lambda: len(listener.on(f"{BASE}/plan")) == 2 and listener.on(f"{BASE}/event")
        )
        listener.wait_for(lambda: len(listener.on(f"{BASE}/telemetry")) == len(snaps))
        plans = listener.json(f"{BASE}/plan")
        assert plans[0]["battery_power_w"] == pytest.approx(p1.battery_power_w.tolist())
        assert plans[1]["created_s"] == p2.created_s
        assert plans[0]["pv_w"][2] is None  # NaN becomes null, the JSON stays valid
        event = listener.json(f"{BASE}/event")[0]
        assert (event["kind"], event["code"], event["v"]) == ("alarm", "x", None)
        tele = listener.json(f"{BASE}/telemetry")
        assert [t["time_s"] for t in tele] == [s.time_s for s in snaps]
        last, t = tele[-1], real.telemetry
        assert last["soc"] == pytest.approx(t.soc)
        assert last["cell_voltage_max_v"] == pytest.approx(t.cell_voltage_max_v)
        assert last["battery_power_w"] == pytest.approx(real.site.battery_ac_power_w)
        # 40 s at the snapshot's battery power, integrated by the bridge
        p = real.site.battery_ac_power_w
        assert last["battery_discharged_wh"] == pytest.approx(max(p, 0) * 40 / 3600)
        assert last["battery_charged_wh"] == pytest.approx(max(-p, 0) * 40 / 3600)
    finally:
        listener.stop()
        bridge.stop()


def test_reconnects_after_a_broker_restart_without_losing_the_queue(site, tmp_path):
    broker = start_broker(tmp_path, persistence=True)
    hub = site.hub
    bridge = bridge_for(broker, publish_interval_s=0.05)
    listener = None
    try:
        # a persistent session: the broker keeps its subscription and messages across the restart
        listener = Listener(broker, [f"{BASE}/telemetry", f"{BASE}/event"], "keeper", clean=False)
        bridge.start(hub)
        assert bridge.wait_connected(10)
        listener.wait_for(lambda: len(listener.on(f"{BASE}/telemetry")) >= 3)
        broker.stop()
        wait_for(lambda: not bridge.connected)
        down_s = hub.latest().time_s
        # an event while disconnected: the gate drops an expired command
        dec = hub.submit(Command(1, Mode.IDLE, valid_until_s=1.0, source="mqtt_test"), 10)
        assert dec is not None
        assert dec.reason.value == "expired"
        wait_for(lambda: bridge.stats()["queued"] >= 16)
        up_s = hub.latest().time_s
        broker.start()
        assert bridge.wait_connected(20)
        listener.wait_for(
            lambda: (
                any(json.loads(p)["time_s"] > up_s for p in listener.on(f"{BASE}/telemetry"))
                and any(b"from mqtt_test" in p for p in listener.on(f"{BASE}/event"))
            ),
            30,
        )
        stats = bridge.stats()
        assert stats["dropped"] == 0
        assert stats["connects"] >= 2
        assert stats["disconnects"] >= 1
        times = sorted({json.loads(p)["time_s"] for p in listener.on(f"{BASE}/telemetry")})
        during = [t for t in times if down_s <= t <= up_s]
        assert len(during) >= 15  # the outbox held 16 messages: 15 telemetry and the event
        # no hole: without the outbox the received telemetry would jump over the outage
        assert max(np.diff(times)) < 0.5 * (up_s - down_s)
    finally:
        if listener is not None:
            listener.stop()
        bridge.stop()
        broker.stop()


def test_username_and_password(tmp_path):
    broker = start_broker(tmp_path, username="bess", password="s3cret")
    hub = Hub("home", config=load_site("home"))
    good = bridge_for(broker)
    bad = bridge_for(broker, username="bess", password="wrong")
    try:
        good.start(hub)
        bad.start(hub)
        assert good.wait_connected(10)
        assert sub(broker, "-t", f"{BASE}/availability", "-C", "1", "-W", "10").strip() == "online"
        wait_for(lambda: bad.stats()["connect_errors"] >= 1)
        assert not bad.connected
        assert "refused" in bad.stats()["last_error"]
    finally:
        good.stop()
        bad.stop()
        broker.stop()
    assert "not authorised" in broker.log_text().lower() or "bad user" in broker.log_text().lower()


def test_tls_with_a_private_ca(tmp_path):
    broker = start_broker(tmp_path, tls=True)
    hub = Hub("home", config=load_site("home"))
    good = bridge_for(broker)
    untrusted = bridge_for(broker, tls=True)  # system CAs only: the private CA is not trusted
    try:
        good.start(hub)
        untrusted.start(hub)
        assert good.wait_connected(10)
        assert sub(broker, "-t", f"{BASE}/availability", "-C", "1", "-W", "10").strip() == "online"
        wait_for(lambda: untrusted.stats()["connect_errors"] >= 1)
        assert not untrusted.connected
    finally:
        good.stop()
        untrusted.stop()
        broker.stop()


def test_the_openssl_fallback_makes_a_verifiable_server_certificate(tmp_path):
    files = make_tls_files(tmp_path, use_openssl=True)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", files.ca_cert, files.server_cert],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", files.server_cert, "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text


def test_commands_disabled_means_no_command_entities_and_no_subscription(site, broker):
    bridge = bridge_for(broker, commands_enabled=False)
    soc_config = "homeassistant/sensor/openbess_home/soc/config"
    listener = Listener(broker, [f"{BASE}/ack/#", soc_config, "homeassistant/number/#"])
    bridge.start(site.hub)
    try:
        assert bridge.wait_connected(10)
        listener.wait_for(lambda: len(listener.on(soc_config)) == 1)
        listener.publish(f"{BASE}/command/setpoint", "1000")
        # Home Assistant's birth message after the command: the bridge re-publishes discovery,
        # so it has seen everything sent before (one publisher, in-order delivery)
        listener.publish("homeassistant/status", "online")
        listener.wait_for(lambda: len(listener.on(soc_config)) == 2)
        assert bridge.stats()["commands_received"] == 0
        assert listener.on(f"{BASE}/ack/setpoint") == []
        assert not any(t.startswith("homeassistant/number/") for t, _, _ in listener.messages)
    finally:
        listener.stop()
        bridge.stop()
