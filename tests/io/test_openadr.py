"""OpenADR 2.0b VEN against a local openleadr VTN and a running site."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from openbess.config import OpenAdrConfig, load_site
from openbess.errors import ConfigError
from openbess.io.hub import Hub, Snapshot
from openbess.io.openadr import (
    EventRefusedError,
    OpenAdrVen,
    Ratings,
    SiteTimeMap,
    grid_events_of,
)

from .conftest import start_site, wait_for
from .mosquitto import free_port

# The VTN side (openleadr's server, test-only) builds an aiohttp app with plain string keys.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

RATINGS = Ratings(max_import_w=9000.0, max_discharge_w=5000.0)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def event(
    signal_name: str,
    signal_type: str,
    payloads: list[float],
    duration: timedelta = timedelta(minutes=10),
    measurement: dict[str, Any] | None = None,
    status: str = "far",
    event_id: str = "ev1",
) -> dict[str, Any]:
    """An event as openleadr's client hands it to the VEN."""
    intervals = [
        {"dtstart": T0 + k * duration, "duration": duration, "uid": k, "signal_payload": p}
        for k, p in enumerate(payloads)
    ]
    signal: dict[str, Any] = {
        "intervals": intervals,
        "signal_name": signal_name,
        "signal_type": signal_type,
        "signal_id": "s1",
    }
    if measurement is not None:
        signal["measurement"] = measurement
    return {
        "event_descriptor": {
            "event_id": event_id,
            "modification_number": 0,
            "event_status": status,
        },
        "active_period": {"dtstart": T0, "duration": duration * len(payloads)},
        "event_signals": [signal],
        "response_required": "always",
    }


KW = {"name": "powerReal", "description": "RealPower", "unit": "W", "scale": "k"}


# ----------------------------------------------------------------------------- mapping
def test_simple_levels_become_import_caps_or_a_discharge_in_site_time() -> None:
    # the site runs 60x faster than the wall clock and is at 2024-06-01 when the wall is T0
    site_now = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
    to_site = SiteTimeMap(site_now, T0.timestamp(), 60.0)
    out = grid_events_of(event("SIMPLE", "level", [0, 1, 2, 3]), to_site, RATINGS)
    assert [e.event_id for e in out] == ["ev1:0:1", "ev1:0:2", "ev1:0:3"]  # level 0: nothing
    assert [e.max_import_w for e in out] == [4500.0, 0.0, None]
    assert out[2].battery_power_w == 5000.0
    # interval 1 starts 10 wall minutes after T0: 10 h later in site time, and lasts 10 h
    assert out[0].start_s == pytest.approx(site_now + 600 * 60)
    assert out[0].end_s - out[0].start_s == pytest.approx(600 * 60)
    assert all(e.source == "openadr" for e in out)


def test_load_dispatch_and_load_control_signals() -> None:
    same = SiteTimeMap(0.0, 0.0, 1.0)
    (cut,) = grid_events_of(event("LOAD_DISPATCH", "delta", [-2.0], measurement=KW), same, RATINGS)
    assert cut.battery_power_w == 2000.0  # a 2 kW load cut: discharge 2 kW
    assert cut.start_s == T0.timestamp()
    (cap,) = grid_events_of(
        event("LOAD_DISPATCH", "setpoint", [3.0], measurement=KW), same, RATINGS
    )
    assert cap.max_import_w == 3000.0
    (mult,) = grid_events_of(event("LOAD_DISPATCH", "multiplier", [0.25]), same, RATINGS)
    assert mult.max_import_w == 2250.0
    (capa,) = grid_events_of(event("LOAD_CONTROL", "x-loadControlCapacity", [0.5]), same, RATINGS)
    assert capa.max_import_w == 4500.0
    (off,) = grid_events_of(
        event("LOAD_CONTROL", "x-loadControlPercentOffset", [-20.0]), same, RATINGS
    )
    assert off.max_import_w == pytest.approx(7200.0)


@pytest.mark.parametrize(
    ("ev", "reason"),
    [
        (event("ELECTRICITY_PRICE", "price", [0.3]), "unsupported_signal"),
        (event("LOAD_CONTROL", "x-loadControlSetpoint", [21.0]), "unsupported_signal"),
        (event("SIMPLE", "level", [7]), "bad_payload"),
        (event("SIMPLE", "level", [1.5]), "bad_payload"),
        (event("SIMPLE", "level", [math.nan]), "bad_payload"),
        (event("LOAD_DISPATCH", "setpoint", [3.0]), "missing_units"),
        (event("LOAD_DISPATCH", "setpoint", [3.0], measurement={**KW, "unit": "A"}), "bad_units"),
        (event("LOAD_DISPATCH", "setpoint", [-3.0], measurement=KW), "bad_payload"),
        (event("LOAD_CONTROL", "x-loadControlCapacity", [1.5]), "bad_payload"),
        (event("SIMPLE", "level", [1], duration=timedelta(0)), "bad_time"),
        ({"event_descriptor": {"event_id": "x"}, "event_signals": []}, "malformed"),
        ({"event_signals": []}, "malformed"),
    ],
)
def test_malformed_or_unsupported_events_are_refused_with_a_reason(
    ev: dict[str, Any], reason: str
) -> None:
    with pytest.raises(EventRefusedError) as info:
        grid_events_of(ev, SiteTimeMap(0.0, 0.0, 1.0), RATINGS)
    assert info.value.reason == reason


def hub_with_site() -> Hub:
    hub = Hub("home", config=load_site("home"))
    return hub


def test_the_ven_posts_cancels_and_answers_per_opt_in() -> None:
    hub = hub_with_site()
    ven = OpenAdrVen(OpenAdrConfig(enabled=True), speed=1.0)
    ven._hub = hub  # unit test of the event path: no client, the anchor set by hand
    ven._anchor = SiteTimeMap(0.0, 0.0, 1.0)
    assert ven.handle_event(event("SIMPLE", "level", [2, 1])) == "optIn"
    assert [(e.event_id, e.max_import_w) for e in hub.grid_events()] == [
        ("ev1:0:0", 0.0),
        ("ev1:0:1", 4500.0),
    ]
    # a modification replaces the windows
    assert ven.handle_event(event("SIMPLE", "level", [3])) == "optIn"
    assert [(e.event_id, e.battery_power_w) for e in hub.grid_events()] == [("ev1:0:0", 5000.0)]
    assert ven.handle_event(event("SIMPLE", "level", [3], status="cancelled")) == "optIn"
    assert hub.grid_events() == []
    assert ven.handle_event(event("SIMPLE", "level", [9])) == "optOut"
    assert ven.handle_event({"nonsense": 1}) == "optOut"
    assert hub.rejected() == {"openadr.bad_payload": 1, "openadr.malformed": 1}
    # opted out by configuration: answered optOut, nothing posted, nothing refused
    out = OpenAdrVen(OpenAdrConfig(enabled=True, opt_in=False))
    out._hub = hub
    out._anchor = SiteTimeMap(0.0, 0.0, 1.0)
    assert out.handle_event(event("SIMPLE", "level", [2])) == "optOut"
    assert hub.grid_events() == []


def test_configuration_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"report_interval_s = 1\.5"):
        OpenAdrVen(OpenAdrConfig(report_interval_s=1.5))
    with pytest.raises(ConfigError, match="report_interval_s = 90"):
        OpenAdrVen(OpenAdrConfig(report_interval_s=90))
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        OpenAdrVen(OpenAdrConfig(cert_file="ven.pem"))
    with pytest.raises(ValueError, match="speed"):
        OpenAdrVen(OpenAdrConfig(), speed=0.0)


def test_an_unreachable_vtn_is_retried_counted_and_stops_promptly() -> None:
    hub = hub_with_site()
    hub.publish(SimpleNamespace(time_s=0.0))  # the VEN registers once the site has cycled
    url = f"http://127.0.0.1:{free_port()}/OpenADR2/Simple/2.0b"
    ven = OpenAdrVen(OpenAdrConfig(enabled=True, vtn_url=url), retry_s=0.2)
    ven.start(hub)
    try:
        wait_for(lambda: hub.rejected().get("openadr.registration_failed", 0) >= 2)
        assert not ven.registered.is_set()
    finally:
        ven.stop()
    assert ven._thread is None


# ----------------------------------------------------------------------------- VTN
class Vtn:
    """openleadr's VTN in its own thread and loop, recording what the VEN sends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/OpenADR2/Simple/2.0b"
        self.opts: dict[str, str] = {}
        self.reports: list[tuple[str, float]] = []
        self.registered: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Any = self.call(self._make)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def run() -> Any:
            out = fn(*args, **kwargs)
            return await out if asyncio.iscoroutine(out) else out

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    async def _make(self) -> Any:
        from openleadr import OpenADRServer

        server = OpenADRServer(
            vtn_id="TEST-VTN",
            http_host="127.0.0.1",
            http_port=self.port,
            requested_poll_freq=timedelta(seconds=1),
            ven_lookup=self._lookup,
        )
        server.add_handler("on_create_party_registration", self._register)
        server.add_handler("on_register_report", self._register_report)
        await server.run()
        return server

    def _lookup(self, ven_id: str) -> dict[str, Any]:
        if ven_id != "ven-1" or not self.registered:
            return {}
        return {"ven_id": "ven-1", "ven_name": self.registered[0], "registration_id": "reg-1"}

    def _register(self, info: dict[str, Any]) -> tuple[str, str]:
        self.registered.append(info["ven_name"])
        return "ven-1", "reg-1"

    async def _register_report(
        self,
        ven_id: str,
        resource_id: str,
        measurement: str,
        unit: str,
        scale: str,
        min_sampling_interval: timedelta,
        max_sampling_interval: timedelta,
    ) -> tuple[Callable[..., Any], timedelta]:
        async def receive(data: list[tuple[datetime, float]]) -> None:
            self.reports.extend((measurement, float(v)) for _, v in data)

        return receive, min_sampling_interval

    def add_event(self, signal_name: str, signal_type: str, intervals: list[dict[str, Any]]) -> str:
        def opt(ven_id: str, event_id: str, opt_type: str) -> None:
            self.opts[event_id] = opt_type

        return str(
            self.call(
                self.server.add_event,
                ven_id="ven-1",
                signal_name=signal_name,
                signal_type=signal_type,
                intervals=intervals,
                callback=opt,
            )
        )

    def close(self) -> None:
        try:
            self.call(self.server.stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def vtn() -> Iterator[Vtn]:
    server = Vtn()
    try:
        yield server
    finally:
        server.close()


def test_a_vtn_event_reaches_the_running_site_and_reports_come_back(
    vtn: Vtn, tmp_path: Path
) -> None:
    speed = 60.0
    ven = OpenAdrVen(
        OpenAdrConfig(enabled=True, vtn_url=vtn.url, ven_name="openbess-test", report_interval_s=1),
        speed=speed,
    )
    run = start_site(tmp_path, speed=speed, interfaces=(ven,))
    anchors: list[tuple[float, float]] = []

    def anchor(snap: Snapshot) -> None:
        anchors.append((snap.time_s, time.time()))

    run.hub.subscribe(anchor)
    try:
        wait_for(ven.registered.is_set)
        assert vtn.registered == ["openbess-test"]
        # an event 20 wall seconds ahead: level 2 (no import) for 10 min, then level 1 for 5
        start = datetime.now(UTC) + timedelta(seconds=20)
        eid = vtn.add_event(
            "SIMPLE",
            "level",
            [
                {"dtstart": start, "duration": timedelta(minutes=10), "signal_payload": 2.0},
                {
                    "dtstart": start + timedelta(minutes=10),
                    "duration": timedelta(minutes=5),
                    "signal_payload": 1.0,
                },
            ],
        )
        events = wait_for(
            lambda: [e for e in run.hub.grid_events() if e.source == "openadr"] or None
        )
        assert [e.event_id for e in events] == [f"{eid}:0:0", f"{eid}:0:1"]
        first, second = events
        assert first.max_import_w == 0.0
        assert second.max_import_w == 0.5 * run.site.config.grid.max_import_w
        # site time = site time of a snapshot + speed x (wall - wall of that snapshot)
        site_a, wall_a = anchors[-1]
        expected = site_a + speed * (start.timestamp() - wall_a)
        assert first.start_s == pytest.approx(expected, abs=5.0)
        assert first.end_s - first.start_s == pytest.approx(600 * speed)
        assert second.start_s == pytest.approx(first.end_s)
        assert second.end_s - second.start_s == pytest.approx(300 * speed)
        assert wait_for(lambda: vtn.opts.get(eid)) == "optIn"
        # telemetry usage reports: battery power (W) and SoC (%)
        wait_for(lambda: {m for m, _ in vtn.reports} >= {"RealPower", "stateOfCharge"})
        soc = [v for m, v in vtn.reports if m == "stateOfCharge"]
        assert all(0.0 <= v <= 100.0 for v in soc)
        assert soc[-1] == pytest.approx(100.0 * run.hub.latest().telemetry.soc, abs=1.0)
        power = [v for m, v in vtn.reports if m == "RealPower"]
        assert all(math.isfinite(v) and abs(v) <= 5500.0 for v in power)
        # the VTN cancels: the windows leave the hub
        vtn.call(vtn.server.cancel_event, "ven-1", eid)
        wait_for(lambda: not [e for e in run.hub.grid_events() if e.source == "openadr"])
        # bad events: answered optOut, counted, nothing posted
        price = vtn.add_event(
            "ELECTRICITY_PRICE",
            "price",
            [{"dtstart": start, "duration": timedelta(minutes=5), "signal_payload": 0.3}],
        )
        level = vtn.add_event(  # openleadr's VTN refuses to send SIMPLE levels above 3
            "LOAD_CONTROL",
            "x-loadControlCapacity",
            [{"dtstart": start, "duration": timedelta(minutes=5), "signal_payload": 1.5}],
        )
        assert wait_for(lambda: vtn.opts.get(price)) == "optOut"
        assert wait_for(lambda: vtn.opts.get(level)) == "optOut"
        rejected = run.hub.rejected()
        assert rejected["openadr.unsupported_signal"] == 1
        assert rejected["openadr.bad_payload"] == 1
        assert not [e for e in run.hub.grid_events() if e.source == "openadr"]
    finally:
        run.stop()
    assert ven._thread is None
