"""CAN link to a real BMS, tested on python-can's virtual bus against a simulated foxBMS."""

from __future__ import annotations

import hashlib
import math
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.config import CanConfig, load_site
from openbess.contract import Actuation, ContactorRequest
from openbess.errors import ConfigError, DataError
from openbess.io.can import (
    DATA_DIR,
    BmsMapping,
    BmsPeer,
    CanBmsLink,
    CanPlant,
    bms_current_caps,
    mapping_for,
    values_from_measurements,
)
from openbess.io.hub import Hub
from openbess.plant import Measurements, SiteMeasurements
from openbess.simulate import run_realtime
from openbess.twin.site import SiteTwin

from .conftest import wait_for

FOXBMS_SHA256 = "5fb3fc0a97ed4ed3ca11e72e88f4971293980821c451f5b5f3760b25859899d1"


class FakeClock:
    """A monotonic clock the test moves by hand (no sleeping for staleness)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Rig:
    twin: SiteTwin
    meas: Measurements
    link: CanBmsLink
    peer: BmsPeer
    peer_bus: Any
    clock: FakeClock
    hub: Hub
    values: dict[str, Any]


@pytest.fixture(scope="module")
def home_twin() -> SiteTwin:
    twin = SiteTwin(load_site("home"), 1.7e9)
    twin.advance_to(1.7e9 + 60.0)
    return twin


@pytest.fixture
def rig(home_twin: SiteTwin) -> Iterator[Rig]:
    """A link on a fresh virtual channel, a foxBMS peer on the same channel, a hub."""
    channel = f"t-{uuid.uuid4().hex}"
    twin = home_twin
    n, nt, ns = twin.topology.n_cells, twin.sensors.n_temperature_sensors, twin.topology.n_strings
    clock = FakeClock()
    link = CanBmsLink(
        CanConfig(enabled=True, interface="virtual", channel=channel, stale_timeout_s=2.0),
        n,
        nt,
        ns,
        clock=clock,
    )
    hub = Hub("test")
    link.start(hub)
    peer_bus = can.Bus(interface="virtual", channel=channel)
    peer = BmsPeer(link.mapping, peer_bus, n, nt, ns, period_s=0.05)
    meas, _ = twin.read()
    values = values_from_measurements(
        meas,
        soc=0.5,
        soh=0.97,
        charge_current_limit_a=60.0,
        discharge_current_limit_a=90.0,
        bms_error=0.0,
    )
    values["contactor_closed"] = 1.0
    peer.set_values(values)
    try:
        yield Rig(twin, meas, link, peer, peer_bus, clock, hub, values)
    finally:
        peer.stop()
        link.stop()
        peer_bus.shutdown()


def send_all(rig: Rig, frames: list[Any] | None = None) -> None:
    """Send frames from the peer's bus and wait until the link has handled all of them."""
    frames = rig.peer.frames() if frames is None else frames
    before = rig.link.counters["frames"]
    for f in frames:
        rig.peer_bus.send(f)
    wait_for(lambda: rig.link.counters["frames"] >= before + len(frames))


# ----------------------------------------------------------------------------- the DBC
def test_the_shipped_foxbms_dbc_is_the_pinned_copy_and_parses() -> None:
    path = DATA_DIR / "foxbms.dbc"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FOXBMS_SHA256
    assert FOXBMS_SHA256 in (DATA_DIR / "README.md").read_text()
    db = cantools.database.load_file(str(path), strict=True)
    cells = db.get_message_by_name("foxBMS_CellVoltages")
    assert cells.frame_id == 0x240
    assert cells.is_multiplexed()
    assert (
        sum(s.name.startswith("cellVoltage_") and "Flag" not in s.name for s in cells.signals)
        == 216
    )
    mapping = mapping_for("foxbms")
    assert mapping.name == "foxbms"
    assert mapping.dbc_path == path
    # the same table applied to a copy of the DBC (one's own foxBMS build)
    assert mapping_for(str(path)).signals == mapping.signals


# ----------------------------------------------------------------------------- values
def test_values_from_a_simulated_foxbms_arrive_mapped(rig: Rig) -> None:
    rig.peer.start()  # a thread sending every 50 ms
    wait_for(lambda: rig.link.counters["decoded"] >= 3 * len(rig.peer.frames()))
    rig.peer.stop()
    twin_meas = rig.meas
    plant = CanPlant(rig.twin, rig.link)
    meas, site = plant.read()
    assert isinstance(site, SiteMeasurements)
    assert meas.time_s == twin_meas.time_s
    assert meas.cell_voltage_valid.all()
    # 1 mV resolution on the wire, the twin's sensors quantise to 1 mV as well
    np.testing.assert_allclose(meas.cell_voltage_v, twin_meas.cell_voltage_v, atol=0.5e-3)
    assert meas.cell_temperature_valid.all()
    np.testing.assert_allclose(
        meas.cell_temperature_degc, twin_meas.cell_temperature_degc, atol=0.5
    )
    np.testing.assert_array_equal(meas.temperature_sensor_cell, twin_meas.temperature_sensor_cell)
    assert meas.string_current_valid.all()
    np.testing.assert_allclose(meas.string_current_a, twin_meas.string_current_a, atol=0.005)
    assert meas.pack_voltage_v == pytest.approx(twin_meas.pack_voltage_v, abs=0.05)
    assert meas.contactor_closed is True
    reading = rig.link.reading()
    assert reading.scalar("soc") == pytest.approx(0.5, abs=1e-4)
    assert reading.scalar("soh") == pytest.approx(0.97, abs=2.5e-4)
    assert bms_current_caps(reading) == (60.0, 90.0)
    assert rig.link.rejected == {}
    assert rig.hub.rejected() == {}


def test_a_cell_the_bms_flags_invalid_reads_invalid(rig: Rig) -> None:
    flags = np.zeros(rig.link.layout.n_cells)
    flags[5] = 1.0
    rig.peer.set_values({**rig.values, "cell_voltage_invalid": flags})
    send_all(rig)
    meas, _ = CanPlant(rig.twin, rig.link).read()
    assert np.flatnonzero(~meas.cell_voltage_valid).tolist() == [5]
    assert math.isnan(meas.cell_voltage_v[5])


def test_lost_frames_make_values_stale_and_invalid_never_raise(rig: Rig) -> None:
    frames = rig.peer.frames()
    send_all(rig, frames)
    plant = CanPlant(rig.twin, rig.link)
    assert plant.read()[0].cell_voltage_valid.all()
    # the BMS goes silent: after stale_timeout_s every value is invalid, limits fall to 0 A
    rig.clock.t += 2.5
    meas, _ = plant.read()
    assert not meas.cell_voltage_valid.any()
    assert np.isnan(meas.cell_voltage_v).all()
    assert not meas.cell_temperature_valid.any()
    assert not meas.string_current_valid.any()
    assert math.isnan(meas.pack_voltage_v)
    assert math.isnan(meas.bus_voltage_v)
    assert meas.contactor_closed is False
    assert bms_current_caps(rig.link.reading()) == (0.0, 0.0)
    # frames come back except the multiplexed one carrying cells 4..7: only those stay invalid
    cells = rig.link.mapping.database().get_message_by_name("foxBMS_CellVoltages")
    lost = [f for f in frames if f.arbitration_id == cells.frame_id and f.data[0] == 1]
    assert len(lost) == 1
    send_all(rig, [f for f in frames if f is not lost[0]])
    meas, _ = plant.read()
    assert np.flatnonzero(~meas.cell_voltage_valid).tolist() == [4, 5, 6, 7]
    assert meas.cell_temperature_valid.all()
    assert meas.string_current_valid.all()


def test_bad_frames_are_counted_ignored_and_change_nothing(rig: Rig) -> None:
    send_all(rig)
    before = rig.link.reading().values.copy()
    db = rig.link.mapping.database()
    cells = db.get_message_by_name("foxBMS_CellVoltages")
    good = next(f for f in rig.peer.frames() if f.arbitration_id == cells.frame_id)
    bad = [
        can.Message(arbitration_id=cells.frame_id, data=bytes(good.data[:5]), is_extended_id=False),
        can.Message(
            arbitration_id=cells.frame_id, data=bytes([200]) + bytes(7), is_extended_id=False
        ),
        can.Message(arbitration_id=0x7FF, data=bytes(8), is_extended_id=False),
        can.Message(arbitration_id=cells.frame_id, data=bytes(8), is_extended_id=True),
        can.Message(
            arbitration_id=cells.frame_id, is_remote_frame=True, dlc=8, is_extended_id=False
        ),
        can.Message(arbitration_id=0, is_error_frame=True, is_extended_id=False),
        # in the DBC but not mapped: foxBMS_BmsStateDetails (0x226)
        can.Message(arbitration_id=0x226, data=bytes(8), is_extended_id=False),
    ]
    send_all(rig, bad)
    np.testing.assert_array_equal(rig.link.reading().values, before)
    expected = {
        "wrong_length": 1,
        "undecodable": 1,
        "unknown_id": 2,
        "remote_frame": 1,
        "error_frame": 1,
    }
    assert rig.link.rejected == expected
    assert rig.hub.rejected() == {f"can.{k}": n for k, n in expected.items()}
    assert rig.link.counters["ignored"] == 1
    # the link keeps decoding afterwards
    rig.peer.set_values({**rig.values, "soc": 0.25})
    send_all(rig)
    assert rig.link.reading().scalar("soc") == pytest.approx(0.25, abs=1e-4)


def test_a_flood_of_frames_is_handled_and_the_last_value_wins(rig: Rig) -> None:
    rig.peer.set_values({**rig.values, "soc": 0.1})
    old = rig.peer.frames()
    rig.peer.set_values({**rig.values, "soc": 0.9})
    new = rig.peer.frames()
    junk = can.Message(arbitration_id=0x123, data=bytes(3), is_extended_id=False)
    flood = ([*old, junk]) * 1500 + new
    send_all(rig, flood)
    assert rig.link.counters["frames"] == len(flood)
    assert rig.link.rejected == {"unknown_id": 1500}
    assert rig.link.counters["decoded"] == len(flood) - 1500
    assert rig.link.reading().scalar("soc") == pytest.approx(0.9, abs=1e-4)


# ----------------------------------------------------------------------------- limits
class RecordingPlant:
    """An inner plant that records what is written to it."""

    def __init__(self, meas: Measurements) -> None:
        self.meas = meas
        self.written: list[Actuation] = []

    def advance_to(self, time_s: float) -> None:
        pass

    def read(self) -> tuple[Measurements, SiteMeasurements]:
        site = SiteMeasurements(self.meas.time_s, 0.0, 0.0, 0.0, 0.0, 0.2, 0.05)
        return self.meas, site

    def write(self, actuation: Actuation) -> None:
        self.written.append(actuation)


def test_the_bms_limits_cap_the_actuation_on_the_bus(rig: Rig) -> None:
    inner = RecordingPlant(rig.meas)
    plant = CanPlant(inner, rig.link)
    send_all(rig)  # BMS: 60 A charge, 90 A discharge
    plant.write(Actuation(-3000.0, 100.0, 50.0, ContactorRequest.CLOSE))
    act = inner.written[-1]
    assert (act.charge_current_limit_a, act.discharge_current_limit_a) == (60.0, 50.0)
    assert act.ac_power_setpoint_w == -3000.0
    assert act.contactor is ContactorRequest.CLOSE
    assert plant.capped_writes == 1
    # the BMS reports a general error: nothing may flow
    rig.peer.set_values({**rig.values, "bms_error": 1.0})
    send_all(rig)
    plant.write(Actuation(2000.0, 100.0, 100.0))
    assert (
        inner.written[-1].charge_current_limit_a,
        inner.written[-1].discharge_current_limit_a,
    ) == (0.0, 0.0)
    # limits gone stale: nothing may flow either
    rig.peer.set_values(rig.values)
    send_all(rig)
    rig.clock.t += 10.0
    plant.write(Actuation(2000.0, 100.0, 100.0))
    assert (
        inner.written[-1].charge_current_limit_a,
        inner.written[-1].discharge_current_limit_a,
    ) == (0.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    bms_ccl=st.floats(0.0, 1000.0),
    bms_dcl=st.floats(0.0, 1000.0),
    want_c=st.floats(0.0, 2000.0),
    want_d=st.floats(0.0, 2000.0),
)
def test_written_caps_never_exceed_the_bms_limits(
    home_twin: SiteTwin, bms_ccl: float, bms_dcl: float, want_c: float, want_d: float
) -> None:
    twin = home_twin
    n, nt = twin.topology.n_cells, twin.sensors.n_temperature_sensors
    link = CanBmsLink(CanConfig(), n, nt, 1, clock=FakeClock())
    meas, _ = twin.read()
    peer = BmsPeer(link.mapping, None, n, nt, 1)
    peer.set_values(
        values_from_measurements(
            meas, charge_current_limit_a=bms_ccl, discharge_current_limit_a=bms_dcl, bms_error=0.0
        )
    )
    for frame in peer.frames():  # straight into the decoder, no bus
        link.receive(frame)
    inner = RecordingPlant(meas)
    CanPlant(inner, link).write(Actuation(0.0, want_c, want_d))
    act = inner.written[-1]
    # 0.25 A resolution on the wire, rounded to nearest
    assert 0.0 <= act.charge_current_limit_a <= min(want_c, bms_ccl + 0.125)
    assert 0.0 <= act.discharge_current_limit_a <= min(want_d, bms_dcl + 0.125)
    assert act.charge_current_limit_a == pytest.approx(min(want_c, bms_ccl), abs=0.125)
    assert act.discharge_current_limit_a == pytest.approx(min(want_d, bms_dcl), abs=0.125)


# ----------------------------------------------------------------------------- mappings
MINI_DBC = """VERSION ""


NS_ :

BS_:

BU_: BMS

BO_ 1024 Pack: 8 BMS
 SG_ PackVoltage : 0|16@1+ (0.01,0) [0|655.35] "V" Vector__XXX
 SG_ PackCurrent : 16|16@1- (0.1,0) [-3276.8|3276.7] "A" Vector__XXX
 SG_ SocPercent : 32|8@1+ (1,0) [0|100] "%" Vector__XXX
 SG_ Ccl : 40|12@1+ (0.5,0) [0|2047.5] "A" Vector__XXX

BO_ 1025 Cells: 8 BMS
 SG_ Cell1 : 0|16@1+ (1,0) [0|65535] "mV" Vector__XXX
 SG_ Cell2 : 16|16@1+ (1,0) [0|65535] "mV" Vector__XXX
 SG_ Temp1 : 32|8@1- (1,0) [-128|127] "degC" Vector__XXX

"""

MINI_TOML = """
name = "mini"
dbc = "mini.dbc"

[[signal]]
signal = "Cell{j}"
target = "cell_voltage_v"
count = 2
scale = 0.001

[[signal]]
signal = "Temp1"
target = "cell_temperature_degc"

[[signal]]
signal = "PackVoltage"
target = "pack_voltage_v"

[[signal]]
signal = "PackCurrent"
target = "pack_current_a"
scale = -1.0  # this BMS counts charge current positive

[[signal]]
signal = "SocPercent"
target = "soc"
scale = 0.01

[[signal]]
signal = "Ccl"
target = "charge_current_limit_a"
"""


def test_another_bms_is_added_with_a_toml_mapping(tmp_path: Path) -> None:
    (tmp_path / "mini.dbc").write_text(MINI_DBC)
    (tmp_path / "mini.toml").write_text(MINI_TOML)
    link = CanBmsLink(CanConfig(dbc=str(tmp_path / "mini.toml")), 2, 1, 1, clock=FakeClock())
    assert link.mapping.name == "mini"
    db = link.mapping.database()
    link.receive(
        can.Message(
            arbitration_id=1024,
            is_extended_id=False,
            data=db.encode_message(
                "Pack", {"PackVoltage": 6.5, "PackCurrent": 12.5, "SocPercent": 40, "Ccl": 30}
            ),
        )
    )
    link.receive(
        can.Message(
            arbitration_id=1025,
            is_extended_id=False,
            data=db.encode_message("Cells", {"Cell1": 3301, "Cell2": 3299, "Temp1": -5}),
        )
    )
    template = RecordingPlant(
        Measurements(
            0.0,
            np.zeros(2),
            np.zeros(2, bool),
            np.zeros(1),
            np.zeros(1, bool),
            np.array([0]),
            np.zeros(1),
            np.zeros(1, bool),
            0.0,
            True,
            7.0,
        )
    )
    plant = CanPlant(template, link)
    meas, _ = plant.read()
    np.testing.assert_allclose(meas.cell_voltage_v, [3.301, 3.299])
    assert meas.cell_temperature_degc.tolist() == [-5.0]
    # single string without its own signal: the pack current, sign turned to discharge-positive
    assert meas.string_current_a.tolist() == [-12.5]
    assert meas.string_current_valid.all()
    assert meas.pack_voltage_v == pytest.approx(6.5)
    # not in the mapping: bus voltage and contactor come from the inner plant
    assert meas.bus_voltage_v == 7.0
    assert meas.contactor_closed is True
    assert link.reading().scalar("soc") == pytest.approx(0.4)
    assert bms_current_caps(link.reading()) == (30.0, math.inf)


@pytest.mark.parametrize(
    ("edit", "error", "needle"),
    [
        (('target = "soc"', 'target = "state_of_charge"'), ConfigError, "signal[4].target"),
        (('signal = "Temp1"', 'signal = "Temp9"'), ConfigError, "'Temp9'"),
        (("scale = 0.01", "scale = 0"), ConfigError, "signal[4].scale"),
        (("count = 2", "count = -2"), ConfigError, "signal[0].count"),
        (('name = "mini"', 'name = "mini'), DataError, "line 2"),
        (('signal = "Ccl"', 'signal = "SocPercent"'), ConfigError, "mapped twice"),
    ],
)
def test_mapping_errors_name_the_file_and_the_field(
    tmp_path: Path, edit: tuple[str, str], error: type[Exception], needle: str
) -> None:
    (tmp_path / "mini.dbc").write_text(MINI_DBC)
    path = tmp_path / "mini.toml"
    assert edit[0] in MINI_TOML
    path.write_text(MINI_TOML.replace(edit[0], edit[1], 1))
    with pytest.raises(error) as info:
        BmsMapping.load(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_a_mapping_that_cannot_cover_the_pack_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mini.dbc").write_text(MINI_DBC)
    (tmp_path / "mini.toml").write_text(MINI_TOML)
    with pytest.raises(ConfigError, match=r"cell voltages \[2, 3\] of the 4"):
        CanBmsLink(CanConfig(dbc=str(tmp_path / "mini.toml")), 4, 1)
    with pytest.raises(ConfigError, match=r"217 the site has"):
        CanBmsLink(CanConfig(), 217, 2)
    with pytest.raises(ConfigError, match="expected 'foxbms'"):
        mapping_for("bms.xlsx")
    with pytest.raises(ConfigError, match="cannot open"):
        CanBmsLink(CanConfig(interface="no_such_interface"), 16, 2).start(None)


# ----------------------------------------------------------------------------- closed loop
def test_a_running_site_reads_its_battery_over_can_and_obeys_the_bms_limits(
    tmp_path: Path,
) -> None:
    """The twin's sensors go out through a simulated foxBMS and come back in over the bus."""
    config = load_site("home")
    channel = f"t-{uuid.uuid4().hex}"
    hub = Hub(config.name)
    link = CanBmsLink(CanConfig(enabled=True, interface="virtual", channel=channel), 16, 2, 1)
    peer_bus = can.Bus(interface="virtual", channel=channel)
    box: dict[str, Any] = {}

    def ready(site: Any) -> None:
        plant = CanPlant(site.twin, link)
        site.controller.plant = plant

        def source() -> dict[str, Any]:
            meas = plant.inner_measurements or site.twin.read()[0]
            return values_from_measurements(
                meas,
                soc=0.5,
                soh=1.0,
                charge_current_limit_a=12.0,
                discharge_current_limit_a=12.0,
                bms_error=0.0,
            )

        peer = BmsPeer(link.mapping, peer_bus, 16, 2, 1, period_s=0.02, source=source)
        box.update(site=site, plant=plant, peer=peer)
        peer.start()

    def target() -> None:
        try:
            run_realtime(
                config,
                speed=10.0,
                db_path=tmp_path / "run.sqlite",
                hub=hub,
                interfaces=(link,),
                ready=ready,
                status=lambda _: None,
            )
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        t = -1.0
        snap = None
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and "error" not in box:
            snap = hub.wait_next(t, 0.2)
            if snap is None:
                continue
            t = snap.time_s
            plant = box.get("plant")
            if (
                snap.telemetry.contactor == "closed"
                and snap.telemetry.gate.source == "ems"
                and plant is not None
                and plant.capped_writes > 0
            ):
                break
        else:
            raise AssertionError(f"the site did not run on CAN values: {box.get('error')!r}")
        assert snap is not None
        plant = box["plant"]
        assert snap.telemetry.alarms == ()
        assert snap.latched == ()
        # the BMS's 12 A caps reached the converter
        act = plant.last_actuation
        assert act.charge_current_limit_a <= 12.0
        assert act.discharge_current_limit_a <= 12.0
        # the controller measured what came over the bus (1 mV steps of the same sensors)
        meas = box["site"].controller.measurements
        assert meas.cell_voltage_valid.all()
        inner = plant.inner_measurements
        np.testing.assert_allclose(meas.cell_voltage_v, inner.cell_voltage_v, atol=0.05)
        assert link.rejected == {}
    finally:
        hub.stopped.set()
        thread.join(timeout=30)
        if "peer" in box:
            box["peer"].stop()
        peer_bus.shutdown()
    assert not thread.is_alive()
