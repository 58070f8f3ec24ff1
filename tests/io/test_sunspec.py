"""SunSpec Modbus server: pysunspec2 (a real SunSpec client) against a real running site."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sunspec2.device as sunspec_device
from hypothesis import given, settings
from hypothesis import strategies as st
from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP
from sunspec2.modbus.modbus import ModbusClientException

import openbess
from openbess.config import ModbusConfig
from openbess.contract import Outcome
from openbess.io.hub import Snapshot
from openbess.io.sunspec import (
    OUTCOME_BIT,
    REASON_BIT,
    VND_CONTROL_ACTIVE,
    VND_HEARTBEAT_LOST,
    VND_SOURCE_MODBUS,
    SunSpecServer,
    heartbeat_of,
)
from openbess.io.sunspec_models import (
    BASE_ADDRESS,
    MODELS,
    Layout,
    Point,
    decode_register,
    event_bits,
    pack_model,
    pack_point,
    scale_factor_for,
    string_statistics,
)

from .conftest import Running, start_site, wait_for_snapshot
from .mosquitto import free_port

# ---------------------------------------------------------------------------- helpers


class History:
    """Snapshots by 802 ``Hb`` (whole site seconds), to match what a client read."""

    def __init__(self, run: Running) -> None:
        self.run = run
        self.by_hb: dict[int, Snapshot] = {}
        run.hub.subscribe(self._add)
        latest = run.hub.latest()
        if latest is not None:
            self._add(latest)
            # after the next cycle the registers show no snapshot older than ``latest``
            run.hub.wait_next(latest.time_s, 5.0)

    def _add(self, snap: Snapshot) -> None:
        self.by_hb[heartbeat_of(snap.time_s)] = snap

    def get(self, hb: int) -> Snapshot:
        t = -1.0
        for _ in range(100):
            if hb in self.by_hb:
                return self.by_hb[hb]
            snap = self.run.hub.wait_next(t, 0.05)
            t = snap.time_s if snap is not None else t
        raise AssertionError(f"no snapshot with Hb {hb}")


@contextmanager
def serving(
    tmp_path: Path, site: str = "home", **options: Any
) -> Iterator[tuple[Running, SunSpecServer, SunSpecModbusClientDeviceTCP]]:
    server = SunSpecServer(ModbusConfig(port=free_port(), **options))
    run = start_site(tmp_path, site, interfaces=(server,))
    dev = SunSpecModbusClientDeviceTCP(
        slave_id=1, ipaddr="127.0.0.1", ipport=server.port, timeout=5
    )
    try:
        dev.scan()
        dev.connect()
        yield run, server, dev
    finally:
        dev.disconnect()
        run.stop()
        server.stop()


def read_consistent(dev: SunSpecModbusClientDeviceTCP) -> int:
    """Read every model from one cycle's registers; return that cycle's ``Hb``."""
    battery = dev.models[802][0]
    for _ in range(200):
        battery.read()
        hb = battery.Hb.value
        for mid in (1, 803, 124):
            dev.models[mid][0].read()
        battery.read()
        if battery.Hb.value == hb:
            return int(hb)
    raise AssertionError("registers changed during every read")


def approx(model: Any, name: str, expected: float, group: Any = None) -> None:
    """The point's scaled value equals ``expected`` within its scale-factor resolution."""
    point = (group or model).points[name]
    sf = model.points[point.sf].value if point.sf else 0
    got = point.cvalue
    assert got is not None, f"{name} not implemented"
    assert got == pytest.approx(expected, abs=0.5 * 10.0**sf * (1 + 1e-9) + 1e-9), name


def raw_request(port: int, pdu: bytes, unit: int = 1, protocol: int = 0, length: int = -1) -> str:
    """Send one Modbus TCP frame; the response PDU as hex, or ``closed``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        n = len(pdu) + 1 if length < 0 else length
        c.sendall(struct.pack(">HHHB", 9, protocol, n, unit) + pdu)
        head = b""
        while len(head) < 7:
            chunk = c.recv(7 - len(head))
            if not chunk:
                return "closed"
            head += chunk
        size = struct.unpack(">H", head[4:6])[0] - 1
        body = b""
        while len(body) < size:
            chunk = c.recv(size - len(body))
            if not chunk:
                break
            body += chunk
        return body.hex()


def bit(value: int, k: int) -> bool:
    return bool((value >> k) & 1)


# ---------------------------------------------------------------------------- register map


def test_point_tables_match_the_pysunspec2_model_definitions() -> None:
    for model in MODELS:
        group = sunspec_device.get_model_def(model.model_id)["group"]
        blocks = [(model.fixed, group["points"])]
        if model.repeating:
            (sub,) = group["groups"]
            assert sub["count"] == "NStr"
            blocks.append((model.repeating, sub["points"]))
        else:
            assert not group.get("groups")
        for ours, theirs in blocks:
            assert [p.name for p in ours] == [p["name"] for p in theirs], model.model_id
            for p, d in zip(ours, theirs, strict=True):
                assert (p.type, p.size, p.sf) == (d["type"], d["size"], d.get("sf")), p.name
                assert p.rw == (d.get("access") == "RW"), p.name
                assert p.mandatory == (d.get("mandatory") == "M"), p.name


def test_layout_chains_the_models_and_ends_with_the_end_marker() -> None:
    layout = Layout(4)
    assert layout.start[1] == BASE_ADDRESS + 2
    addr = BASE_ADDRESS + 2
    for model in MODELS:
        assert layout.start[model.model_id] == addr
        addr += 2 + model.length(4 if model.repeating else 0)
    assert layout.end_address == addr
    assert layout.size == addr + 2 - BASE_ADDRESS
    # 803: 26 fixed registers after ID/L, 32 per string
    assert layout.address(803, "StrNMod", 3) == layout.start[803] + 28 + 3 * 32
    with pytest.raises(KeyError, match="repeating block 4"):
        layout.address(803, "StrNMod", 4)
    with pytest.raises(ValueError, match="n_strings"):
        Layout(0)


def test_pack_point_scales_marks_unimplemented_and_saturates() -> None:
    u16, i16 = Point("V", "uint16", 1, "V_SF"), Point("A", "int16", 1, "A_SF")
    assert pack_point(u16, 52.84, -2) == [5284]
    assert pack_point(i16, -12.34, -1) == [(-123) & 0xFFFF]
    assert pack_point(u16, float("nan"), -2) == [0xFFFF]
    assert pack_point(i16, None, -2) == [0x8000]
    assert pack_point(Point("N", "uint32", 2), None, None) == [0xFFFF, 0xFFFF]
    assert pack_point(Point("SF", "sunssf", 1), -2, None) == [0xFFFE]
    assert pack_point(Point("SF", "sunssf", 1), None, None) == [0x8000]
    # beyond the range: saturated at the ends, never the "not implemented" pattern
    assert pack_point(u16, 1e9, 0) == [0xFFFE]
    assert pack_point(u16, -5.0, 0) == [0]
    assert pack_point(i16, -1e9, 0) == [(-0x7FFF) & 0xFFFF]
    assert pack_point(Point("Mn", "string", 4), "openbess-too-long", None) == [
        0x6F70,
        0x656E,
        0x6265,
        0x7373,
    ]
    assert pack_point(Point("Md", "string", 2), "ab", None) == [0x6162, 0]


@settings(max_examples=200, deadline=None)
@given(
    sf=st.integers(-3, 2),
    signed=st.booleans(),
    frac=st.floats(-1.0, 1.0, allow_nan=False),
)
def test_packed_values_read_back_within_the_resolution(sf: int, signed: bool, frac: float) -> None:
    point = Point("X", "int16" if signed else "uint16", 1, "X_SF")
    top = 0x7FFF if signed else 0xFFFE
    value = abs(frac) * top * 10.0**sf if not signed else frac * top * 10.0**sf
    (reg,) = pack_point(point, value, sf)
    back = decode_register(point, reg) * 10.0**sf
    assert back == pytest.approx(value, abs=0.5 * 10.0**sf * (1 + 1e-9))


def test_pack_model_writes_id_length_scale_factors_and_repeats() -> None:
    model = MODELS[2]  # 803
    regs = pack_model(model, {"NStr": 2}, {"V_SF": -1}, [{"StrNMod": 3}, {"StrNMod": 4}])
    assert regs[:4] == [803, model.length(2), 2, 0xFFFF]
    assert len(regs) == model.length(2) + 2
    off = model.offsets()
    assert regs[off["V_SF"]] == 0xFFFF  # -1
    assert regs[off["CellV_SF"]] == 0x8000  # not given: not implemented
    assert regs[model.fixed_size] == 3
    assert regs[model.fixed_size + model.repeat_size] == 4
    assert regs[model.fixed_size + model.repeat_offsets()["Pad1"]] == 0x8000


def test_scale_factors_fit_the_limit() -> None:
    assert scale_factor_for(52.8, signed=False, finest=-2) == -2
    assert scale_factor_for(1900.0, signed=False, finest=-2) == -1
    assert scale_factor_for(375000.0, signed=True, finest=0) == 2
    assert scale_factor_for(-300.0, signed=True, finest=-2) == -2
    with pytest.raises(ValueError, match="finite"):
        scale_factor_for(float("inf"), signed=True)


def test_alarms_map_to_the_802_event_bits() -> None:
    assert event_bits((), {}) == 0
    # warning -> *_WARNING bit, derate/trip -> *_ALARM bit, unknown -> OTHER_*
    bits = event_bits(
        ("cell_overvoltage:mol", "charge_undertemperature:rsl", "mystery:msl", "odd:mol"),
        {"cell_overvoltage": "warning", "charge_undertemperature": "derate"},
    )
    assert bits == (1 << 10) | (1 << 3) | (1 << 25) | (1 << 26)
    # the severity of the snapshot wins over the tier of the label
    assert event_bits(("discharge_overcurrent:mol",), {"discharge_overcurrent": "trip"}) == 1 << 7
    assert event_bits(("current_invalid:mol",), {}) == 1  # COMMUNICATION_ERROR
    assert event_bits((), {}, latched=("contactor_welded",)) == 1 << 20


def test_string_statistics_known_values() -> None:
    # 2 strings x 2 modules x 2 cells; string 1 has an invalid cell
    v = np.array([3.30, 3.31, 3.29, 3.35, 3.32, np.nan, 3.28, 3.33])
    t = np.array([20.0, 20.0, 25.0, 25.0, 21.0, 21.0, 19.0, 19.0])
    z = np.array([0.5, 0.6, 0.4, 0.5, 0.5, 0.5, 0.3, 0.7])
    s = string_statistics(v, t, z, n_strings=2, modules_per_string=2)
    np.testing.assert_allclose(s.cell_voltage_max_v, [3.35, 3.33])
    np.testing.assert_array_equal(s.cell_voltage_max_module, [2, 2])
    np.testing.assert_allclose(s.cell_voltage_min_v, [3.29, 3.28])
    np.testing.assert_array_equal(s.cell_voltage_min_module, [2, 2])
    np.testing.assert_allclose(s.cell_voltage_avg_v, [13.25 / 4, (3.32 + 3.28 + 3.33) / 3])
    np.testing.assert_allclose(s.temperature_max_degc, [25.0, 21.0])
    np.testing.assert_array_equal(s.temperature_min_module, [1, 2])
    np.testing.assert_allclose(s.soc, [0.5, 0.5])
    assert s.string_voltage_v[0] == pytest.approx(13.25)
    assert np.isnan(s.string_voltage_v[1])  # a string with an invalid cell has no sum
    empty = string_statistics(np.full(4, np.nan), np.zeros(4), np.zeros(4), 1, 2)
    assert np.isnan(empty.cell_voltage_max_v[0])
    assert empty.cell_voltage_max_module[0] == 0
    with pytest.raises(ValueError, match="do not split"):
        string_statistics(np.zeros(5), np.zeros(5), np.zeros(5), 2, 1)


# ---------------------------------------------------------------------------- against a site


def check_against_snapshot(dev: SunSpecModbusClientDeviceTCP, snap: Snapshot, run: Running) -> None:
    config = run.hub.config
    assert config is not None
    tel, cells = snap.telemetry, snap.cells
    n_str, n_mod = cells.n_strings, cells.modules_per_string
    n_series = cells.voltage_v.size // n_str
    per_module = n_series // n_mod

    common = dev.models[1][0]
    assert common.Mn.value == "openbess"
    assert common.SN.value == config.name
    assert common.Vr.value == openbess.__version__
    assert common.DA.value == 1

    b = dev.models[802][0]
    assert b.Hb.value == heartbeat_of(snap.time_s)
    for name, value in {
        "SoC": 100 * tel.soc,
        "DoD": 100 * (1 - tel.soc),
        "SoH": 100 * tel.soh,
        "V": tel.pack_voltage_v,
        "A": tel.pack_current_a,
        "W": tel.pack_voltage_v * tel.pack_current_a,
        "CellVMax": tel.cell_voltage_max_v,
        "CellVMin": tel.cell_voltage_min_v,
        "CellVAvg": tel.cell_voltage_avg_v,
        "AChaMax": tel.charge_current_limit_a,
        "ADisChaMax": tel.discharge_current_limit_a,
        "WChaRteMax": config.battery.max_charge_power_w,
        "WDisChaRteMax": config.battery.max_discharge_power_w,
        "WHRtg": tel.capacity_wh / tel.soh,
        "SoCMax": 100 * config.battery.soc_max,
        "SoCMin": 100 * config.battery.soc_min,
    }.items():
        approx(b, name, value)
    cap_ah = config.battery.cell_capacity_ah
    assert cap_ah is not None
    approx(b, "AHRtg", cap_ah * config.battery.cells_parallel * config.battery.n_strings)
    i = int(np.nanargmax(cells.voltage_v))
    assert (b.CellVMaxStr.value, b.CellVMaxMod.value) == (
        i // n_series + 1,
        (i % n_series) // per_module + 1,
    )
    assert b.State.value == 3  # CONNECTED
    assert b.Typ.value == 4  # LITHIUM_ION
    assert b.SetOp.value == 1  # CONNECT
    assert b.Evt1.value == event_bits(tel.alarms, snap.alarm_severity, snap.latched)
    assert bit(b.EvtVnd1.value, OUTCOME_BIT[tel.gate.outcome])
    assert bit(b.EvtVnd1.value, REASON_BIT[tel.gate.reason])
    for unimplemented in ("NCyc", "WarrDt", "DisChaRte", "VMax", "ReqW", "StateVnd"):
        assert b.points[unimplemented].value is None, unimplemented

    bank = dev.models[803][0]
    assert bank.NStr.value == n_str
    assert bank.NStrCon.value == n_str
    approx(bank, "ModTmpMax", tel.temperature_max_degc)
    approx(bank, "ModTmpMin", tel.temperature_min_degc)
    approx(bank, "ModTmpAvg", tel.temperature_avg_degc)
    assert bank.NCellBal.value == int(cells.balancing.sum())
    v = cells.voltage_v.reshape(n_str, n_series)
    t = cells.temperature_degc.reshape(n_str, n_series)
    z = cells.soc.reshape(n_str, n_series)
    approx(bank, "StrVMax", float(v.sum(axis=1).max()))
    approx(bank, "StrAAvg", float(cells.string_current_a.mean()))
    strings = bank.groups["string"]
    assert len(strings) == n_str
    for k, g in enumerate(strings):
        assert g.StrNMod.value == n_mod
        approx(bank, "StrA", float(cells.string_current_a[k]), g)
        approx(bank, "StrSoC", 100 * float(z[k].mean()), g)
        approx(bank, "StrCellVMax", float(v[k].max()), g)
        approx(bank, "StrCellVMin", float(v[k].min()), g)
        approx(bank, "StrCellVAvg", float(v[k].mean()), g)
        approx(bank, "StrModTmpMax", float(t[k].max()), g)
        approx(bank, "StrModTmpMin", float(t[k].min()), g)
        assert g.StrCellVMaxMod.value == int(np.argmax(v[k])) // per_module + 1
        assert g.StrSt.value == 3  # enabled, contactor closed

    ctl = dev.models[124][0]
    approx(ctl, "WChaMax", config.battery.max_charge_power_w)
    approx(ctl, "ChaState", 100 * tel.soc)
    approx(ctl, "InBatV", tel.pack_voltage_v)
    approx(ctl, "MinRsvPct", 100 * config.ems.reserve_soc)
    approx(ctl, "StorAval", (tel.soc - config.ems.reserve_soc) * cap_ah * config.battery.n_strings)
    assert ctl.StorCtl_Mod.value == 0
    assert ctl.InOutWRte_RvrtTms.value == 300


@pytest.mark.parametrize("site", ["home", "commercial"])
def test_pysunspec2_discovers_the_device_and_every_model_matches_the_snapshot(
    tmp_path: Path, site: str
) -> None:
    with serving(tmp_path, site) as (run, server, dev):
        history = History(run)
        assert dev.base_addr == BASE_ADDRESS
        ids = [mid for mid in dev.models if isinstance(mid, int)]
        assert ids == [1, 802, 803, 124]
        for mid in ids:
            assert dev.models[mid][0].error_info == "", mid
        # the chain ends with the end marker: 0xFFFF, length 0
        layout = server.layout
        assert layout is not None
        assert dev.read(layout.end_address, 2) == b"\xff\xff\x00\x00"
        for _ in range(3):  # three different cycles
            hb = read_consistent(dev)
            check_against_snapshot(dev, history.get(hb), run)
            wait_for_snapshot(run, lambda s, hb=hb: heartbeat_of(s.time_s) != hb)
        stats = server.stats()
        assert stats["updates"] > 0
        assert stats["update_latency_s_median"] >= 0.0
        assert not any(k.startswith("refused.") for k in stats)


def test_writes_are_refused_by_default_and_change_nothing(tmp_path: Path) -> None:
    with serving(tmp_path) as (run, _server, dev):
        ctl = dev.models[124][0]
        ctl.OutWRte.cvalue = 50.0
        with pytest.raises(ModbusClientException, match="exception: 1"):
            ctl.OutWRte.write()  # write single register
        ctl.OutWRte.cvalue = 50.0
        ctl.InWRte.cvalue = 10.0
        with pytest.raises(ModbusClientException, match="exception: 1"):
            ctl.write()  # both contiguous points: write multiple registers
        assert run.hub.rejected() == {"modbus.writes_disabled": 2}
        ctl.read()
        assert (ctl.OutWRte.value, ctl.InWRte.value) == (0, 0)
        assert dev.models[802][0].LocRemCtl.value == 1  # LOCAL
        assert wait_for_snapshot(run, lambda s: True).telemetry.gate.source == "ems"


def test_a_client_outside_allowed_clients_cannot_write(tmp_path: Path) -> None:
    with serving(tmp_path, writes_enabled=True, allowed_clients=["192.0.2.10"]) as (run, _, dev):
        ctl = dev.models[124][0]
        ctl.StorCtl_Mod.value = 2
        with pytest.raises(ModbusClientException, match="exception: 1"):
            ctl.write()
        assert run.hub.rejected() == {"modbus.client_not_allowed": 1}
        ctl.read()
        assert ctl.StorCtl_Mod.value == 0


def test_a_setpoint_moves_the_battery_through_the_gate_and_bad_values_are_refused(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, writes_enabled=True) as (run, server, dev):
        wait_for_snapshot(run, lambda s: s.telemetry.discharge_power_limit_w > 2500.0)
        ctl, battery = dev.models[124][0], dev.models[802][0]
        ctl.OutWRte.cvalue = 40.0  # 40 % of 5000 W
        ctl.write()
        ctl.StorCtl_Mod.value = 2  # DISCHARGE
        ctl.write()
        snap = wait_for_snapshot(run, lambda s: s.telemetry.gate.source == "modbus")
        gate = snap.telemetry.gate
        assert gate.requested_w == pytest.approx(2000.0)
        assert gate.outcome in (Outcome.ACCEPTED, Outcome.CLAMPED)
        assert 0.0 < gate.granted_w <= 2000.0
        command = snap.command
        assert command is not None
        assert command.source == "modbus"
        assert command.reserve_soc == pytest.approx(0.15)
        assert 0.0 < command.valid_until_s - snap.time_s <= 300.0
        wait_for_snapshot(run, lambda s: s.telemetry.pack_current_a > 5.0)  # the battery discharges
        # the gate's decisions are visible to the client
        for _ in range(100):
            battery.read()
            if bit(battery.EvtVnd1.value, VND_SOURCE_MODBUS) and battery.EvtVnd2.value:
                break
            wait_for_snapshot(run, lambda s: True)
        assert bit(battery.EvtVnd1.value, VND_CONTROL_ACTIVE)
        decision = server.last_decision
        assert decision is not None
        assert decision.source == "modbus"
        assert bit(battery.EvtVnd2.value, OUTCOME_BIT[decision.outcome])

        # out of range: ILLEGAL DATA VALUE, counted, nothing changes
        ctl.read()
        for name, raw in (
            ("OutWRte", 10001),  # > 100 %
            ("InWRte", -10001),
            ("StorCtl_Mod", 4),
            ("InOutWRte_RvrtTms", 0),  # an override must expire
            ("MinRsvPct", 10001),
        ):
            ctl.points[name].value = raw
            with pytest.raises(ModbusClientException, match="exception: 3"):
                ctl.points[name].write()
        ctl.read()
        ctl.StorCtl_Mod.value = 3  # both bits: OutWRte - InWRte, still 2000 W
        ctl.write()
        ctl.OutWRte.cvalue = 100.0
        ctl.InWRte.cvalue = -100.0  # 100 % discharge through each rate
        with pytest.raises(ModbusClientException, match="exception: 3"):
            ctl.write()  # 10 kW is beyond the 5 kW rating
        battery.AlmRst.value = 2
        with pytest.raises(ModbusClientException, match="exception: 3"):
            battery.AlmRst.write()
        battery.SoC.value = 1000
        with pytest.raises(ModbusClientException, match="exception: 2"):
            battery.SoC.write()  # read-only point
        rejected = run.hub.rejected()
        assert rejected == {"modbus.out_of_range": 7, "modbus.read_only": 1}
        ctl.read()
        assert (ctl.StorCtl_Mod.value, ctl.OutWRte.value, ctl.InWRte.value) == (3, 4000, 0)
        assert wait_for_snapshot(run, lambda s: True).command.power_w == pytest.approx(2000.0)

        # charge at 20 % of the charge rating, with the reserve at 30 %
        ctl.StorCtl_Mod.value = 1
        ctl.InWRte.cvalue = 20.0
        ctl.MinRsvPct.cvalue = 30.0
        ctl.write()
        snap = wait_for_snapshot(
            run, lambda s: s.telemetry.gate.requested_w == pytest.approx(-1000.0)
        )
        assert snap.command is not None
        assert snap.command.reserve_soc == pytest.approx(0.30)
        # control mode 0 hands the battery back to the EMS
        ctl.StorCtl_Mod.value = 0
        ctl.write()
        wait_for_snapshot(run, lambda s: s.telemetry.gate.source == "ems")


def test_the_revert_timeout_hands_control_back_to_the_ems(tmp_path: Path) -> None:
    with serving(tmp_path, writes_enabled=True) as (run, server, dev):
        ctl = dev.models[124][0]
        ctl.InOutWRte_RvrtTms.value = 30  # site seconds: half a wall second at 60x
        ctl.write()
        ctl.StorCtl_Mod.value = 2
        ctl.OutWRte.cvalue = 10.0
        ctl.write()
        start = wait_for_snapshot(run, lambda s: s.telemetry.gate.source == "modbus")
        assert start.command is not None
        assert start.command.valid_until_s <= start.time_s + 30
        end = wait_for_snapshot(run, lambda s: s.telemetry.gate.source == "ems")
        assert end.time_s >= start.command.valid_until_s
        wait_for_snapshot(run, lambda s: True)
        ctl.read()
        assert ctl.StorCtl_Mod.value == 0  # reverted
        assert "watchdog" not in server.stats()
        # AlmRst = 1 asks the BMS for a fault reset (nothing is latched here)
        battery = dev.models[802][0]
        battery.AlmRst.value = 1
        battery.AlmRst.write()
        for _ in range(100):
            if server.last_reset is not None:
                break
            wait_for_snapshot(run, lambda s: True)
        assert server.last_reset == (False, "no latched fault")
        wait_for_snapshot(run, lambda s: True)
        battery.read()
        assert battery.AlmRst.value == 0


def test_heartbeat_loss_cancels_the_override_and_logs_an_event(tmp_path: Path) -> None:
    with serving(tmp_path, writes_enabled=True, heartbeat_timeout_s=1.0) as (run, server, dev):
        events: list[dict[str, Any]] = []
        run.hub.subscribe_events(events.append)
        ctl, battery = dev.models[124][0], dev.models[802][0]
        ctl.InOutWRte_RvrtTms.value = 3600  # a minute of wall time: the watchdog acts first
        ctl.OutWRte.cvalue = 20.0
        ctl.write()
        ctl.StorCtl_Mod.value = 2
        ctl.write()
        wait_for_snapshot(run, lambda s: s.telemetry.gate.source == "modbus")
        # heartbeats every 0.1 s for 2.5 timeouts: the override stays
        beating = SunSpecModbusClientDeviceTCP(
            slave_id=1, ipaddr="127.0.0.1", ipport=server.port, timeout=5
        )
        beating.scan()
        hb = beating.models[802][0]
        stop = threading.Event()

        def beat() -> None:
            k = 0
            while not stop.wait(0.1):
                k += 1
                hb.CtrlHb.value = k
                hb.CtrlHb.write()

        thread = threading.Thread(target=beat)
        thread.start()
        try:
            stop.wait(2.5)
            assert run.hub.latest().telemetry.gate.source == "modbus"
            assert "watchdog" not in server.stats()
        finally:
            stop.set()
            thread.join()
        # silence: the watchdog cancels the override
        wait_for_snapshot(run, lambda s: s.telemetry.gate.source == "ems")
        assert server.stats()["watchdog"] == 1.0
        lost = [e for e in events if e["code"] == "modbus_heartbeat_lost"]
        assert len(lost) == 1
        assert lost[0]["severity"] == "warning"
        wait_for_snapshot(run, lambda s: True)
        battery.read()
        ctl.read()
        assert bit(battery.EvtVnd1.value, VND_HEARTBEAT_LOST)
        assert not bit(battery.EvtVnd1.value, VND_CONTROL_ACTIVE)
        assert ctl.StorCtl_Mod.value == 0
        # a heartbeat clears the flag
        battery.CtrlHb.value = 1
        battery.CtrlHb.write()
        wait_for_snapshot(run, lambda s: True)
        wait_for_snapshot(run, lambda s: True)
        battery.read()
        assert not bit(battery.EvtVnd1.value, VND_HEARTBEAT_LOST)


def test_malformed_requests_get_exceptions_are_counted_and_the_server_keeps_running(
    tmp_path: Path,
) -> None:
    with serving(tmp_path) as (run, server, dev):
        port = server.port
        layout = server.layout
        assert layout is not None
        end = layout.end_address
        read = struct.pack(">BHH", 3, BASE_ADDRESS, 2)
        assert raw_request(port, read) == "030453756e53"  # "SunS"
        cases = {
            "read past the end": (struct.pack(">BHH", 3, end + 1, 2), "8302"),
            "read below the map": (struct.pack(">BHH", 3, 100, 2), "8302"),
            "read 0 registers": (struct.pack(">BHH", 3, BASE_ADDRESS, 0), "8001"),
            "read 200 registers": (struct.pack(">BHH", 3, BASE_ADDRESS, 200), "8001"),
            "truncated request": (bytes([3, 0x9C]), "8001"),
            "read coils": (struct.pack(">BHH", 1, BASE_ADDRESS, 2), "8101"),
            "unknown function": (bytes([0x41, 1, 2]), "8001"),
            "byte count mismatch": (struct.pack(">BHHB", 16, BASE_ADDRESS, 2, 4) + b"\0\1", "9003"),
        }
        for name, (pdu, expected) in cases.items():
            assert raw_request(port, pdu) == expected, name
        assert raw_request(port, read, unit=7) == "830b"  # no such unit
        assert raw_request(port, read, protocol=5) == "closed"  # not Modbus TCP
        assert raw_request(port, read, length=300) == "closed"
        assert raw_request(port, read) == "030453756e53"
        dev.scan()  # a real client still works
        assert [m for m in dev.models if isinstance(m, int)] == [1, 802, 803, 124]
        wait_for_snapshot(run, lambda s: True)
        assert run.hub.rejected() == {
            "modbus.illegal_address": 2,
            "modbus.malformed_request": 4,
            "modbus.function_code": 1,
            "modbus.illegal_value": 1,
            "modbus.unit_id": 1,
            "modbus.malformed_frame": 2,
        }
        assert (
            wait_for_snapshot(run, lambda s: True).counters["rejected.modbus.malformed_frame"]
            == 2.0
        )
