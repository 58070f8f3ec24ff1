"""BMS step benchmark: one full BMS cycle for a large battery (issue 3: 100,000 cells < 20 ms).

Prints one JSON object. One step is :meth:`BatteryManagementSystem.update` (monitor and
plausibility, state estimation with the sigma-point filter, SoH and SoP, protection and fault
table, current limits, contactor machine, balancing, logbook) plus :meth:`actuation` and
:meth:`pop_events`, on measurements from the twin (pack, sensors with noise and quantisation,
contactor with precharge). Only the BMS is timed; the twin runs in between.

Default layout, like a utility-scale plant: 250 racks (strings) of 25 modules x 16 LFP cells
(280 Ah, 1P; 400S per rack, about 1,280 V), 100,000 cells, one current sensor per rack and two
temperature sensors per module; ``--strings 10 --modules 625`` gives 10 strings of 10,000
cells. The pack current is a pulse profile (levels between -0.5 C and +0.5 C held 5-30 s).
After ``--warmup`` cycles (wake-up from the first voltages, precharge, closing), ``--steps``
cycles at 1 s are timed: median, p95, min and max wall time, and the median time of the main
phases. ``--profile`` prints the top functions by cProfile to stderr.

Usage: ``python benchmarks/bms_step.py [--strings 250] [--modules 25] [--cells-per-module 16]
[--steps 60] [--warmup 20] [--profile]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import cProfile
import json
import logging
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openbess.bms.bms import BatteryManagementSystem, BmsSetup
from openbess.bms.defaults import default_params
from openbess.bms.estimator import OnlineEstimatorConfig
from openbess.cell.params import load_cell_params, scale_to_capacity
from openbess.contract import Actuation, GateDecision, Outcome, Reason, Telemetry
from openbess.twin.contactor import Contactor
from openbess.twin.pack import Pack, PackTopology
from openbess.twin.sensors import SensorConfig, Sensors

CELL_CAPACITY_AH = 280.0
START_S = 1.7e9
NO_DECISION = GateDecision(Outcome.SAFE_IDLE, Reason.NO_COMMAND, -1, 0.0, 0.0, "")
#: Timed phases: (attribute path on the BMS, method name, label).
PHASES = (
    ("monitor", "check", "monitor"),
    ("estimator", "update", "estimate_cells"),
    ("estimator", "pack", "estimate_pack"),
    ("estimator", "power_limits", "state_of_power"),
    ("protection", "evaluate", "protect"),
    ("limits", "update", "current_limits"),
    ("contactor", "step", "contactor"),
    ("balancer", "update", "balance"),
    ("logbook", "update", "logbook"),
)


@dataclass
class Rig:
    """A twin battery and its BMS, stepped together."""

    bms: BatteryManagementSystem
    pack: Pack
    sensors: Sensors
    contactor: Contactor
    rng: np.random.Generator
    time_s: float = START_S
    level_c: float = 0.0
    level_until_s: float = START_S
    phase_s: dict[str, float] = field(default_factory=dict)
    profiler: cProfile.Profile | None = None

    def step(self, dt_s: float = 1.0) -> tuple[Telemetry, float, float]:
        """Advance the twin by ``dt_s``, then run one timed BMS step.

        Returns
        -------
        tuple
            The Telemetry, the wall time and the CPU time of the BMS step [s].
        """
        if self.time_s >= self.level_until_s:
            self.level_c = float(self.rng.choice([0.0, self.rng.uniform(-0.5, 0.5)]))
            self.level_until_s = self.time_s + float(self.rng.integers(5, 31))
        n_str = self.bms.setup.n_strings
        current = self.level_c * CELL_CAPACITY_AH * n_str if self.contactor.conducting else 0.0
        out = self.pack.step(current, dt_s, time_s=self.time_s)
        self.contactor.step(dt_s, out.pack_voltage_v, current)
        self.time_s += dt_s
        meas = self.sensors.read(self.pack, self.contactor, self.time_s)
        for key in self.phase_s:
            self.phase_s[key] = 0.0
        if self.profiler is not None:
            self.profiler.enable()
        cpu = time.process_time()
        start = time.perf_counter()
        tel, lim = self.bms.update(self.time_s, meas, NO_DECISION, 1.0)
        act = self.bms.actuation(Actuation(0.0, lim.charge_current_a, lim.discharge_current_a))
        self.bms.pop_events()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if self.profiler is not None:
            self.profiler.disable()
        self.contactor.command(act.contactor.value, self.time_s)
        return tel, wall, cpu


def _timed(phase_s: dict[str, float], label: str, func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            phase_s[label] += time.perf_counter() - start

    return wrapper


def build(
    n_strings: int,
    modules_per_string: int,
    cells_per_module: int,
    *,
    seed: int = 1,
    time_phases: bool = False,
    max_filter_cells: int | None = None,
) -> Rig:
    """The twin (LFP, 280 Ah cells) and its BMS for a layout.

    Parameters
    ----------
    n_strings, modules_per_string, cells_per_module : int
        Layout (one current sensor per string, two temperature sensors per module).
    seed : int
        Seed of the current profile (the twin's own seeds are fixed).
    time_phases : bool
        Wrap the main phases of the BMS to time them (``Rig.phase_s``).
    max_filter_cells : int, optional
        Cells given a full filter update per cycle (default: the estimator's default).

    Returns
    -------
    Rig
        Ready to step.
    """
    cell = scale_to_capacity(load_cell_params("lfp"), CELL_CAPACITY_AH)
    topo = PackTopology(n_strings, modules_per_string, cells_per_module)
    n_cells = n_strings * modules_per_string * cells_per_module
    pack = Pack(cell, topo, initial_soc=0.5, ambient_degc=25.0, time_s=START_S)
    sensors = Sensors(SensorConfig(), topo)
    rated_w = 0.5 * CELL_CAPACITY_AH * cell.nominal_voltage_v * n_cells
    estimator = OnlineEstimatorConfig()
    if max_filter_cells is not None:
        estimator = OnlineEstimatorConfig(max_filter_cells=max_filter_cells)
    setup = BmsSetup(
        cell=cell,
        n_strings=n_strings,
        n_series=modules_per_string * cells_per_module,
        modules_per_string=modules_per_string,
        params=default_params("lfp", CELL_CAPACITY_AH * n_strings),
        max_charge_power_w=rated_w,
        max_discharge_power_w=rated_w,
        estimator=estimator,
    )
    rig = Rig(
        BatteryManagementSystem(setup), pack, sensors, Contactor(), np.random.default_rng(seed)
    )
    if time_phases:
        for attr, method, label in PHASES:
            obj = getattr(rig.bms, attr)
            rig.phase_s[label] = 0.0
            setattr(obj, method, _timed(rig.phase_s, label, getattr(obj, method)))
    return rig


def main() -> None:
    """Run the benchmark and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--strings", type=int, default=250)
    ap.add_argument("--modules", type=int, default=25, help="modules per string")
    ap.add_argument("--cells-per-module", type=int, default=16)
    ap.add_argument("--steps", type=int, default=60, help="timed steps (>= 50 advised)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="cProfile top functions to stderr")
    ap.add_argument(
        "--max-filter-cells", type=int, default=None, help="full filter updates per cycle"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    start = time.perf_counter()
    rig = build(
        args.strings,
        args.modules,
        args.cells_per_module,
        time_phases=not args.profile,
        max_filter_cells=args.max_filter_cells,
    )
    build_s = time.perf_counter() - start
    first: list[float] = []
    for _ in range(args.warmup):
        first.append(rig.step()[1])
    prof = cProfile.Profile() if args.profile else None
    rig.profiler = prof
    walls: list[float] = []
    cpus: list[float] = []
    phases: dict[str, list[float]] = {k: [] for k in rig.phase_s}
    tel = None
    for _ in range(args.steps):
        tel, wall, cpu = rig.step()
        walls.append(wall)
        cpus.append(cpu)
        for key, value in rig.phase_s.items():
            phases[key].append(value)
    w = 1e3 * np.asarray(walls)
    bms = rig.bms
    est = bms.estimator
    result: dict[str, Any] = {
        "benchmark": "bms_step",
        "layout": {
            "cells": bms.setup.n_cells,
            "strings": args.strings,
            "modules_per_string": args.modules,
            "cells_per_module": args.cells_per_module,
            "cell": f"lfp {CELL_CAPACITY_AH:g} Ah",
            "temperature_sensors": int(rig.sensors.n_temperature_sensors),
        },
        "steps_timed": args.steps,
        "step_s": 1.0,
        "step_ms": {
            "median": round(float(np.median(w)), 3),
            "mean": round(float(np.mean(w)), 3),
            "p95": round(float(np.percentile(w, 95)), 3),
            "min": round(float(w.min()), 3),
            "max": round(float(w.max()), 3),
        },
        "phase_ms_median": {k: round(1e3 * float(np.median(v)), 3) for k, v in phases.items()},
        "phase_ms_mean": {k: round(1e3 * float(np.mean(v)), 3) for k, v in phases.items()},
        "filter": {
            "blocks": int(est.block_start.size),
            "cells_per_block": int(est.block_stop[0] - est.block_start[0]),
            "filter_period_s": est.config.filter_period_s,
        },
        "first_step_ms": round(1e3 * first[0], 1) if first else None,
        "target_ms": 20.0,
        "step_cpu_ms_median": round(1e3 * float(np.median(cpus)), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "build_s": round(build_s, 2),
        "python": platform.python_version(),
    }
    if tel is not None:
        result["last_telemetry"] = {
            "contactor": tel.contactor.value,
            "soc": round(tel.soc, 4),
            "soc_std": round(tel.extra.get("soc_std", float("nan")), 4),
            "alarms": list(tel.alarms),
            "sop_discharge_10s_w": round(tel.extra.get("sop_discharge_10s_w", 0.0)),
        }
    print(json.dumps(result, indent=2))
    if prof is not None:
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime")
        stats.print_stats(25)
        stats.print_callers("ffi.py")


if __name__ == "__main__":
    main()
