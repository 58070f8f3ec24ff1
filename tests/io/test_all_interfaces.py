"""Acceptance: one `openbess run` site with every interface enabled from its configuration.

The site runs with SunSpec Modbus (writes on), MQTT to a real mosquitto, the HTTP API, a CAN
link to a simulated foxBMS on python-can's virtual bus, and an OpenADR VEN joined to a local
openleadr VTN, all built by the same factory ``openbess run`` uses. Each peer sees the same
state, and commands from Modbus and MQTT pass the same gate.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import can
import httpx
import pytest
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from openbess.config import load_site
from openbess.io import with_endpoints
from openbess.io.can import BmsPeer, CanPlant, values_from_measurements
from openbess.io.hub import Hub
from openbess.simulate import run_realtime

from .conftest import wait_for
from .mosquitto import free_port, start_broker
from .test_openadr import Vtn

SUB_ARGS = ("-t", "openbess/home/telemetry", "-C", "1", "-W", "15")
RR_ARGS = ("-t", "openbess/home/command/setpoint", "-e", "openbess/home/ack/setpoint")
RR_ARGS += ("-m", "-1000", "-W", "15")


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
def test_every_interface_on_one_running_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    broker = start_broker(tmp_path / "broker")
    vtn = Vtn()
    channel = f"all-{uuid.uuid4().hex}"
    peer_bus = can.Bus(interface="virtual", channel=channel)
    monkeypatch.setenv("OPENBESS_TOKEN", "t0ken")
    http_port, modbus_port = free_port(), free_port()
    config = with_endpoints(
        load_site("home"),
        modbus=f"127.0.0.1:{modbus_port}",
        mqtt=f"mqtt://127.0.0.1:{broker.port}",
        http=f"127.0.0.1:{http_port}",
        can=f"virtual:{channel}",
        openadr=vtn.url,
    )
    modbus = config.interfaces.modbus.model_copy(update={"writes_enabled": True})
    config = config.model_copy(
        update={"interfaces": config.interfaces.model_copy(update={"modbus": modbus})}
    )
    hub = Hub(config.name)
    box: dict[str, Any] = {}

    def ready(site: Any) -> None:
        plant = site.controller.plant
        assert isinstance(plant, CanPlant)  # the factory put the CAN link under the BMS

        def source() -> dict[str, Any]:
            meas = plant.inner_measurements or site.twin.read()[0]
            return values_from_measurements(
                meas,
                soc=0.5,
                soh=1.0,
                charge_current_limit_a=150.0,
                discharge_current_limit_a=150.0,
                bms_error=0.0,
            )

        peer = BmsPeer(plant.link.mapping, peer_bus, 16, 2, 1, period_s=0.02, source=source)
        peer.start()
        box.update(site=site, plant=plant, peer=peer)

    def target() -> None:
        try:
            run_realtime(
                config,
                speed=10.0,
                db_path=tmp_path / "run.sqlite",
                hub=hub,
                ready=ready,
                status=lambda _: None,
            )
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{http_port}/api/v1"
    try:
        wait_for(
            lambda: (
                "error" in box
                or (
                    (s := hub.latest()) is not None
                    and s.telemetry.contactor == "closed"
                    and s.telemetry.gate.source == "ems"
                )
            )
        )
        assert "error" not in box, box.get("error")
        # CAN: the BMS measured what came over the bus, every cell valid
        meas = box["site"].controller.measurements
        assert meas.cell_voltage_valid.all()
        # HTTP
        tel = httpx.get(f"{base}/telemetry", timeout=5).json()
        assert tel["contactor"] == "closed"
        # Modbus: pysunspec2 discovers the device; its SoC matches the REST API's
        dev = SunSpecModbusClientDeviceTCP(
            slave_id=1, ipaddr="127.0.0.1", ipport=modbus_port, timeout=5
        )
        try:
            dev.scan()
            assert {1, 802, 803, 124} <= set(dev.models)
            battery = dev.models[802][0]
            battery.read()
            soc_rest = httpx.get(f"{base}/telemetry", timeout=5).json()["soc"]
            assert battery.SoC.cvalue == pytest.approx(100.0 * soc_rest, abs=1.0)
        finally:
            dev.disconnect()
        # MQTT: telemetry on the broker, a command answered with the gate's decision
        out = subprocess.run(
            [
                "mosquitto_sub",
                *broker.client_args(),
                "-t",
                "openbess/home/telemetry",
                "-C",
                "1",
                "-W",
                "15",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert 0.0 <= json.loads(out.stdout)["soc"] <= 1.0
        rr = subprocess.run(
            [
                "mosquitto_rr",
                *broker.client_args(),
                "-t",
                "openbess/home/command/setpoint",
                "-e",
                "openbess/home/ack/setpoint",
                "-m",
                "-1000",
                "-W",
                "15",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        ack = json.loads(rr.stdout)
        assert (ack["source"], ack["requested_w"]) == ("mqtt", -1000.0)
        assert ack["outcome"] in ("accepted", "clamped")
        wait_for(lambda: hub.latest().telemetry.gate.source == "mqtt")
        # OpenADR: an event from the VTN becomes a grid event in the hub
        wait_for(lambda: vtn.registered)
        start = datetime.now(UTC) + timedelta(seconds=30)
        vtn.add_event(
            "SIMPLE",
            "level",
            [{"dtstart": start, "duration": timedelta(minutes=10), "signal_payload": 2.0}],
        )
        events = wait_for(lambda: [e for e in hub.grid_events() if e.source == "openadr"])
        assert events[0].max_import_w == 0.0
        # the controller kept running through all of it
        assert hub.latest().counters["bms_errors"] == 0.0
    finally:
        hub.stopped.set()
        thread.join(timeout=60)
        if "peer" in box:
            box["peer"].stop()
        peer_bus.shutdown()
        vtn.close()
        broker.stop()
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
