"""Benchmark: MQTT commands and telemetry against a running site and a real mosquitto.

A ``home`` site runs in (scaled) real time with the MQTT bridge; a paho client publishes
``setpoint`` commands at a fixed rate (1,000 per second by default) for several seconds while
another records the acknowledgements and the telemetry. Prints one JSON object:

- ``commands``: sent, acknowledged, outcomes, ack latency (publish -> ack received) [ms];
- ``cycles``: cycles run and missed cycles (the loop's ``overruns`` counter) during the command
  window and during a quiet window of the same length before it (baseline);
- ``telemetry_latency_ms``: from the loop publishing a snapshot on the hub to a subscriber
  receiving its MQTT telemetry message (publish interval 1 ms wall, i.e. every cycle), with the
  cycle length for comparison (target: within one cycle).

Usage: ``python benchmarks/mqtt_commands.py [--rate 1000] [--seconds 5] [--speed 60]``.
Needs Debian's ``mosquitto`` (``make services``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing as mp
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from openbess.config import MqttConfig, load_site
from openbess.io.hub import Hub, Snapshot
from openbess.io.mqtt import MqttBridge
from openbess.simulate import run_realtime

ROOT = Path(__file__).resolve().parents[1]


def _broker_helper() -> Any:
    path = ROOT / "tests" / "io" / "mosquitto.py"
    spec = importlib.util.spec_from_file_location("mosquitto_helper", path)
    if spec is None or spec.loader is None:
        raise RuntimeError("tests/io/mosquitto.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def load_generator(
    port: int,
    base: str,
    rate: float,
    seconds: float,
    ready: Any,
    go: Any,
    done: Any,
    results: Any,
) -> None:
    """Run in a separate process (as outside clients do): publish commands, record acks and
    telemetry with :func:`time.monotonic` (CLOCK_MONOTONIC, shared by the processes)."""
    lock = threading.Lock()
    acks: list[tuple[float, dict[str, Any]]] = []
    telemetry: list[tuple[float, float]] = []
    subscribed = threading.Event()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2)

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe([(f"{base}/telemetry", 0), (f"{base}/ack/setpoint", 1)])

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        body = json.loads(msg.payload)
        with lock:
            if msg.topic.endswith("/telemetry"):
                telemetry.append((now, body["time_s"]))
            else:
                acks.append((now, body))

    listener.on_connect = on_connect
    listener.on_subscribe = lambda *a: subscribed.set()
    listener.on_message = on_message
    listener.connect("127.0.0.1", port)
    listener.loop_start()
    subscribed.wait(10)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    ready.set()
    go.wait(120)
    n = int(rate * seconds)
    sent_at: dict[float, float] = {}
    start = time.monotonic()
    for k in range(n):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        value = -(1.0 + k / 10.0)  # unique: maps an ack to its send time
        sent_at[value] = time.monotonic()
        pub.publish(f"{base}/command/setpoint", repr(value), qos=1)
    sent_s = time.monotonic() - start
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(acks) >= n:
                break
        time.sleep(0.05)
    done.wait(60)
    for c in (pub, listener):
        c.disconnect()
        c.loop_stop()
        c.reinitialise()
    with lock:
        results.put({"sent_at": sent_at, "sent_s": sent_s, "acks": acks, "telemetry": telemetry})


def main() -> None:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000.0, help="commands per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the command window")
    parser.add_argument("--speed", type=float, default=60.0, help="simulated s per wall s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    helper = _broker_helper()
    tmp = Path(tempfile.mkdtemp(prefix="openbess-mqtt-bench-"))
    broker = helper.start_broker(tmp)
    config = load_site("home")
    hub = Hub(config.name)
    base = f"openbess/{config.name}"

    published_at: dict[float, float] = {}

    def on_snapshot(snap: Snapshot) -> None:  # registered before the bridge: first in line
        published_at[snap.time_s] = time.monotonic()

    hub.subscribe(on_snapshot)
    bridge = MqttBridge(MqttConfig(port=broker.port, publish_interval_s=0.001, discovery=False))

    ctx = mp.get_context("spawn")
    gen_ready, go, done, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    gen = ctx.Process(
        target=load_generator,
        args=(broker.port, base, args.rate, args.seconds, gen_ready, go, done, results),
    )
    gen.start()
    gen_ready.wait(60)

    ready = threading.Event()
    result: dict[str, Any] = {}

    def target() -> None:
        result.update(
            run_realtime(
                config,
                speed=args.speed,
                db_path=tmp / "run.sqlite",
                hub=hub,
                interfaces=(bridge,),
                ready=lambda s: ready.set(),
                status=lambda _: None,
            )
        )

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    ready.wait(60)
    # settle: contactor closed and the EMS in control
    t = -1.0
    for _ in range(2000):
        snap = hub.wait_next(t, 0.1)
        if snap is not None:
            t = snap.time_s
            if snap.telemetry.contactor == "closed" and snap.telemetry.gate.source == "ems":
                break

    def counters() -> tuple[float, float]:
        snap = hub.latest()
        if snap is None:
            return 0.0, 0.0
        return snap.counters["cycles"], snap.counters["overruns"]

    # baseline window: no commands, then the command window
    q0, cpu0 = time.monotonic(), time.process_time()
    c0, o0 = counters()
    time.sleep(args.seconds)
    c1, o1 = counters()
    q1, cpu1 = time.monotonic(), time.process_time()
    go.set()
    time.sleep(args.seconds)
    c2, o2 = counters()
    cpu2 = time.process_time()
    done.set()
    res = results.get(timeout=120)
    gen.join(30)
    b1 = q1 + res["sent_s"]
    stats = bridge.stats()
    hub.stopped.set()
    thread.join(30)
    broker.stop()
    shutil.rmtree(tmp, ignore_errors=True)

    sent_at, got = res["sent_at"], res["acks"]

    def tele_ms(t_from: float, t_to: float) -> list[float]:
        out = []
        for t_rx, time_s in res["telemetry"]:
            t_tx = published_at.get(time_s)
            if t_tx is not None and t_from <= t_tx < t_to:
                out.append(1e3 * (t_rx - t_tx))
        return out

    quiet_latency, busy_latency = tele_ms(q0, q1), tele_ms(q1, b1)
    ack_ms = [
        1e3 * (t_ack - sent_at[a["requested_w"]])
        for t_ack, a in got
        if a.get("requested_w") in sent_at
    ]
    step_s = max(config.bms.cycle_s, args.speed / 50.0)
    out = {
        "benchmark": "mqtt_commands",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "speed": args.speed,
        "cycle_step_s": step_s,
        "cycle_wall_ms": round(1e3 * step_s / args.speed, 3),
        "commands": {
            "rate_per_s_target": args.rate,
            "sent": len(sent_at),
            "send_window_s": round(res["sent_s"], 3),
            "rate_per_s_achieved": round(len(sent_at) / res["sent_s"], 1),
            "acknowledged": len(got),
            "outcomes": dict(Counter(f"{a['outcome']}/{a['reason']}" for _, a in got)),
            "refused_by_bridge": stats["commands_refused"],
            "refusal_errors": dict(Counter(a["error"] for _, a in got if a.get("error"))),
            "decided_by": dict(Counter(a.get("decided_by") for _, a in got)),
            "ack_latency_ms_p50": _pct(ack_ms, 50),
            "ack_latency_ms_p99": _pct(ack_ms, 99),
            "ack_latency_ms_max": _pct(ack_ms, 100),
        },
        "cycles": {
            "quiet_window": {
                "cycles": c1 - c0,
                "missed": o1 - o0,
                "process_cpu_s": round(cpu1 - cpu0, 3),
            },
            "command_window": {
                "cycles": c2 - c1,
                "missed": o2 - o1,
                "process_cpu_s": round(cpu2 - cpu1, 3),
            },
        },
        "telemetry_latency_ms": {
            "quiet_p50": _pct(quiet_latency, 50),
            "quiet_p99": _pct(quiet_latency, 99),
            "busy_p50": _pct(busy_latency, 50),
            "busy_p99": _pct(busy_latency, 99),
            "busy_max": _pct(busy_latency, 100),
            "samples": len(quiet_latency) + len(busy_latency),
        },
        "bridge": stats,
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
