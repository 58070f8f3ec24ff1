"""Benchmark: SunSpec Modbus server, full pysunspec2 scan time and telemetry-to-register latency.

Runs a real site (``home``: 1 string of 16 cells; ``commercial``: 4 strings, 1,152 cells) at
60x real time with the SunSpec server on 127.0.0.1 and measures

- ``scan_ms``: a full pysunspec2 discovery (connect, find ``SunS``, read every model,
  disconnect), median and spread of ``--scans`` runs (target: median under 50 ms);
- ``encode_ms``: in the loop's thread, snapshot handed to the server -> registers rebuilt;
- ``publish_to_client_ms``: snapshot published by the loop -> a Modbus client polling 802 ``Hb``
  sees the new cycle (includes the poll round trip), compared with the cycle period.

Prints one JSON object. Usage: ``python benchmarks/sunspec_scan.py [--scans N] [--cycles N]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sunspec2.modbus.client import SunSpecModbusClientDeviceTCP

from openbess.config import ModbusConfig, load_site
from openbess.io.hub import Hub, Snapshot
from openbess.io.sunspec import SunSpecServer, heartbeat_of
from openbess.simulate import run_realtime

SPEED = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summary_ms(values_s: list[float]) -> dict[str, float]:
    v = sorted(1e3 * x for x in values_s)
    return {
        "n": len(v),
        "median": round(statistics.median(v), 3),
        "p90": round(v[int(0.9 * (len(v) - 1))], 3),
        "min": round(v[0], 3),
        "max": round(v[-1], 3),
    }


def _read_register(sock: socket.socket, address: int, tid: int) -> int:
    sock.sendall(struct.pack(">HHHBBHH", tid & 0xFFFF, 0, 6, 1, 3, address, 1))
    data = b""
    while len(data) < 11:
        chunk = sock.recv(11 - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return int(struct.unpack(">H", data[9:11])[0])


def run_case(site: str, scans: int, cycles: int, tmp: Path) -> dict[str, Any]:
    config = load_site(site)
    hub = Hub(config.name)
    published: dict[int, float] = {}

    def on_publish(snap: Snapshot) -> None:  # subscribed before the server: runs first
        published[heartbeat_of(snap.time_s)] = time.perf_counter()

    hub.subscribe(on_publish)
    server = SunSpecServer(ModbusConfig(port=_free_port()))
    ready = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_realtime(
                config,
                speed=SPEED,
                db_path=tmp / f"{site}.sqlite",
                hub=hub,
                interfaces=(server,),
                ready=lambda _: ready.set(),
                status=lambda _: None,
            )
        except BaseException as err:
            errors.append(err)
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        ready.wait(60)
        if errors:
            raise errors[0]
        first = hub.wait_next(-1.0, 30)
        if first is None:
            raise RuntimeError("the site did not start")
        t = first.time_s
        for _ in range(5):  # let the server see a few cycles
            snap = hub.wait_next(t, 5)
            t = snap.time_s if snap is not None else t

        scan_s: list[float] = []
        n_registers = 0
        for _ in range(scans):
            dev = SunSpecModbusClientDeviceTCP(
                slave_id=1, ipaddr="127.0.0.1", ipport=server.port, timeout=5
            )
            t0 = time.perf_counter()
            dev.scan()
            scan_s.append(time.perf_counter() - t0)
            n_registers = sum(
                m[0].model_len + 2 for k, m in dev.models.items() if isinstance(k, int)
            )

        layout = server.layout
        if layout is None:
            raise RuntimeError("no register layout")
        hb_address = layout.address(802, "Hb")
        lags_s: list[float] = []
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            last = _read_register(sock, hb_address, 0)
            tid = 1
            deadline = time.perf_counter() + 120.0
            while len(lags_s) < cycles and time.perf_counter() < deadline:
                hb = _read_register(sock, hb_address, tid)
                tid += 1
                if hb != last:
                    seen = time.perf_counter()
                    last = hb
                    if hb in published:
                        lags_s.append(seen - published[hb])
        stats = server.stats()
        step_s = max(config.bms.cycle_s, SPEED / 50.0)
        return {
            "site": site,
            "strings": layout.n_strings,
            "cells": first.cells.voltage_v.size,
            "registers_scanned": n_registers,
            "scan_ms": _summary_ms(scan_s),
            "encode_ms": {
                "median": round(1e3 * stats["update_latency_s_median"], 3),
                "max": round(1e3 * stats["update_latency_s_max"], 3),
            },
            "publish_to_client_ms": _summary_ms(lags_s),
            "cycle_period_ms": round(1e3 * step_s / SPEED, 1),
            "within_one_cycle": max(lags_s) < step_s / SPEED if lags_s else False,
        }
    finally:
        hub.stopped.set()
        thread.join(30)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=30, help="pysunspec2 scans per site")
    parser.add_argument("--cycles", type=int, default=50, help="cycles timed for the latency")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        cases = [
            run_case(site, args.scans, args.cycles, Path(d)) for site in ("home", "commercial")
        ]
    out = {
        "benchmark": "sunspec_scan",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "speed": SPEED,
        "cases": cases,
        "targets": {"scan_ms_median": 50.0, "publish_to_client": "within one cycle"},
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
