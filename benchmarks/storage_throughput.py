"""Run-storage throughput: the cost of logging one controller cycle, in the calling thread.

Prints JSON. For each scenario, ``us_per_call`` is the wall time of the recording loop in
the calling thread divided by the number of rows, *including* the flushes the caller does
when the wall-clock flush interval elapses (writes happen in the calling thread; see
``openbess.storage``), minus the time of the same loop without the ``record_*`` calls
(building the input); ``rows_per_s`` counts every row until the final flush and close.

``caller_thread_cpu_us_per_call`` is the same in CPU time of the calling thread
(``time.thread_time``), which a loaded machine does not inflate; ``process_cpu_us_per_call``
adds the watchdog thread (WAL checkpoints).

Scenarios (all rows with a strictly increasing ``time_s``, 60 s apart):

- ``tuple``: ``record_pack(tuple)`` in ``PACK_COLUMNS`` order (the fast path).
- ``mapping``: ``record_pack(dict)`` with every column by name.
- ``cycle``: what a simulation cycle logs: ``pack_row(telemetry, site)`` +
  ``record_pack`` + ``record_cells`` for 16 cells (kept every 60th call, the default).

Usage: ``python benchmarks/storage_throughput.py [--rows 500000]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from openbess.contract import ContactorState, GateDecision, Outcome, Reason, Telemetry
from openbess.plant import SiteMeasurements
from openbess.storage import PACK_COLUMNS, PACK_NUMERIC_COLUMNS, RunStore, pack_row

POOL = 1000
T0_S = 1_700_000_000.0
STEP_S = 60.0
N_CELLS = 16


def _tails(rng: np.random.Generator) -> list[tuple[object, ...]]:
    """Realistic-looking row values after ``time_s`` (numbers, then the text columns)."""
    tails = []
    for _ in range(POOL):
        nums = [float(x) for x in rng.uniform(0.0, 5000.0, len(PACK_NUMERIC_COLUMNS) - 1)]
        nums[PACK_NUMERIC_COLUMNS.index("balancing_cells") - 1] = int(rng.integers(0, 16))
        nums[PACK_NUMERIC_COLUMNS.index("gate_seq") - 1] = int(rng.integers(0, 10**6))
        tails.append((*nums, "accepted", "none", "ems", "closed", ""))
    return tails


def _time(loop: Callable[[], None]) -> tuple[float, float, float]:
    """Wall time, calling-thread CPU time and process CPU time of one call [s]."""
    wall, thread, process = time.perf_counter(), time.thread_time(), time.process_time()
    loop()
    return (
        time.perf_counter() - wall,
        time.thread_time() - thread,
        time.process_time() - process,
    )


def _scenario(
    name: str, n: int, folder: Path, body: Callable[[RunStore | None, int], None]
) -> dict[str, float]:
    """Time ``body`` over ``n`` iterations with a store, and without (the baseline)."""
    path = folder / f"{name}.sqlite"
    base_wall_s, base_thread_s, base_process_s = _time(lambda: body(None, n))
    store = RunStore(path)
    store.start_run("bench", {"scenario": name})
    loop_s, thread_s, process_s = _time(lambda: body(store, n))
    close_s = _time(store.close)[0]
    net_s = max(loop_s - base_wall_s, 0.0)
    with sqlite3.connect(path) as conn:
        stored = int(conn.execute("SELECT count(*) FROM pack").fetchone()[0])
    conn.close()
    if stored != n:
        raise RuntimeError(f"{name}: {stored} rows stored, {n} recorded")
    return {
        "us_per_call": round(net_s / n * 1e6, 3),
        "us_per_call_including_input_building": round(loop_s / n * 1e6, 3),
        "caller_thread_cpu_us_per_call": round((thread_s - base_thread_s) / n * 1e6, 3),
        "process_cpu_us_per_call": round((process_s - base_process_s) / n * 1e6, 3),
        "rows_per_s": round(n / (net_s + close_s)),
        "close_s": round(close_s, 3),
        "file_bytes_per_row": round(path.stat().st_size / n, 1),
    }


def main() -> None:
    """Run the scenarios and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args()
    n: int = args.rows
    rng = np.random.default_rng(42)
    tails = _tails(rng)

    def tuple_body(store: RunStore | None, n: int) -> None:
        record = store.record_pack if store is not None else (lambda row: None)
        for i in range(n):
            record((T0_S + STEP_S * i, *tails[i % POOL]))

    dicts = [dict(zip(PACK_COLUMNS, (0.0, *t), strict=True)) for t in tails]

    def mapping_body(store: RunStore | None, n: int) -> None:
        record = store.record_pack if store is not None else (lambda row: None)
        for i in range(n):
            d = dicts[i % POOL]
            d["time_s"] = T0_S + STEP_S * i
            record(d)

    gate = GateDecision(Outcome.CLAMPED, Reason.CHARGE_LIMIT, 7, -5000.0, -3000.0, "ems")
    telemetry = Telemetry(
        time_s=T0_S,
        soc=0.5,
        soc_cell_min=0.48,
        soc_cell_max=0.52,
        soh=0.97,
        energy_available_wh=5000.0,
        capacity_wh=10000.0,
        pack_voltage_v=51.2,
        pack_current_a=-20.0,
        cell_voltage_min_v=3.19,
        cell_voltage_max_v=3.21,
        cell_voltage_avg_v=3.2,
        temperature_min_degc=24.0,
        temperature_max_degc=27.0,
        temperature_avg_degc=25.5,
        charge_current_limit_a=100.0,
        discharge_current_limit_a=100.0,
        charge_power_limit_w=5000.0,
        discharge_power_limit_w=5000.0,
        contactor=ContactorState.CLOSED,
        alarms=("cell_temperature_high",),
        balancing_cells=2,
        gate=gate,
    )
    site = SiteMeasurements(T0_S, 1200.0, 3000.0, 800.0, -1000.0, 0.30, 0.08)
    tels = [dataclasses.replace(telemetry, soc=float(s)) for s in rng.uniform(0, 1, POOL)]
    cell_v = rng.uniform(3.1, 3.3, (POOL, N_CELLS))
    cell_t = rng.uniform(20.0, 30.0, (POOL, N_CELLS))
    cell_soc = rng.uniform(0.4, 0.6, (POOL, N_CELLS))
    cell_bal = rng.uniform(0, 1, (POOL, N_CELLS)) > 0.8

    def cycle_body(store: RunStore | None, n: int) -> None:
        for i in range(n):
            j = i % POOL
            time_s = T0_S + STEP_S * i
            if store is None:
                continue
            row = pack_row(tels[j], site)
            store.record_pack((time_s, *row[1:]))
            store.record_cells(time_s, cell_v[j], cell_t[j], cell_soc[j], cell_bal[j])

    with tempfile.TemporaryDirectory(prefix="openbess-bench-") as tmp:
        folder = Path(tmp)
        result = {
            "benchmark": "storage_throughput",
            "rows": n,
            "flush_interval_s": 1.0,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "tuple": _scenario("tuple", n, folder, tuple_body),
            "mapping": _scenario("mapping", n, folder, mapping_body),
            "cycle": _scenario("cycle", n, folder, cycle_body),
        }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
