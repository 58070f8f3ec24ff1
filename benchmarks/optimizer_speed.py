"""Benchmark: build + solve time of the optimal schedule (target: 672 steps under 50 ms).

Cases, all with the battery of ``docs/emhass-comparison.md`` (10 kWh, 5 / 4.75 kW AC, 95 %):

- ``week_15min_synthetic``: 7 days at 15 min (672 steps) on the synthetic inputs, free end
  (value of the stored energy), degradation cost 0.01 EUR/kWh: the default planning case;
- ``week_15min_household``: 672 steps of the bundled household load/PV and DE-LU prices,
  same settings;
- ``week_15min_final_soc``: the synthetic week with a hard end SoC (the EMHASS set-up);
- ``week_15min_negative``: the household week with every export price lowered by 0.15 and
  every import price by 0.25, so that some steps need binaries (a MIP);
- ``day_15min``: 96 steps (one MPC re-plan), synthetic;
- ``receding_day_household``: a receding horizon as in the MPC: 96 re-plans of one day (96
  steps), each starting one step later in the household week, from the SoC the previous plan
  reached after its first step; solved afresh each time, and with a
  :class:`~openbess.ems.optimizer.PlanSolver` that keeps HiGHS and its basis between plans
  (only costs and bounds change: a warm re-solve).

Each case is run ``--repeats`` times after one warm-up (imports, first HiGHS instance); the
JSON gives the median and minimum wall time of ``optimize()`` (build plus solve), the process
CPU time, and the build time alone (model and sparse matrix).

Usage: ``python benchmarks/optimizer_speed.py [--repeats 21]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).parent))

from emhass_comparison import household_inputs, synthetic_inputs
from openbess.ems import optimizer as opt
from openbess.ems.optimizer import PlanBattery, PlanInputs, PlanRequest, PlanSolver, optimize

TARGET_S = 0.050

BATTERY = PlanBattery(
    capacity_wh=10000.0,
    soc_initial=0.5,
    soc_min=0.1,
    soc_max=0.9,
    max_charge_power_w=5000.0,
    max_discharge_power_w=4750.0,
    charge_efficiency=0.95,
    discharge_efficiency=0.95,
)
FREE_END = PlanRequest(
    max_import_w=9000.0,
    max_export_w=9000.0,
    degradation_cost_eur_per_kwh=0.01,
    terminal_value_eur_per_kwh=0.2,
)


def measure(inputs: PlanInputs, request: PlanRequest, repeats: int) -> dict[str, object]:
    result = optimize(inputs, BATTERY, request)  # warm-up
    wall, cpu, build = [], [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        result = optimize(inputs, BATTERY, request)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        t0 = time.perf_counter()
        model = opt._build(inputs, BATTERY, request)
        rows, cols, vals = opt._triplets(model)
        sp.csc_matrix((vals, (rows, cols)), shape=(model.builder.n_row, model.builder.n_col))
        build.append(time.perf_counter() - t0)
    return {
        "steps": inputs.n_steps,
        "wall_s_median": statistics.median(wall),
        "wall_s_min": min(wall),
        "cpu_s_median": statistics.median(cpu),
        "build_s_median": statistics.median(build),
        "status": result.status,
        "binaries": result.binaries,
        "objective_eur": result.objective_eur,
        "cost_eur": result.cost_eur,
    }


def receding(house: PlanInputs, repeats: int) -> dict[str, object]:
    """96 one-day re-plans shifted by one step: fresh HiGHS each time, or kept warm."""
    n_plans, n_steps = 96, 96

    def horizons() -> list[PlanInputs]:
        return [
            PlanInputs(
                **{
                    f.name: getattr(house, f.name)[k : k + n_steps]
                    for f in dataclasses.fields(PlanInputs)
                }
            )
            for k in range(n_plans)
        ]

    plans = horizons()
    # The SoC each plan starts from: where the fresh plan before it ended its first step
    # (the warm sweep starts from the same SoCs, so that its objectives must be the same:
    # plans with tied prices may differ in their first step, not in their cost).
    socs = [0.5]
    for inp in plans[:-1]:
        socs.append(
            float(
                optimize(inp, dataclasses.replace(BATTERY, soc_initial=socs[-1]), FREE_END).soc[0]
            )
        )

    def sweep(solver: PlanSolver | None) -> tuple[float, float, list[float]]:
        objectives = []
        c0, t0 = time.process_time(), time.perf_counter()
        for inp, soc in zip(plans, socs, strict=True):
            r = optimize(
                inp, dataclasses.replace(BATTERY, soc_initial=soc), FREE_END, solver=solver
            )
            objectives.append(r.objective_eur)
        return (
            (time.perf_counter() - t0) / n_plans,
            (time.process_time() - c0) / n_plans,
            objectives,
        )

    fresh = [sweep(None) for _ in range(max(1, repeats // 7))]
    warm = [sweep(PlanSolver()) for _ in range(max(1, repeats // 7))]
    gap = max(abs(a - b) for a, b in zip(fresh[0][2], warm[0][2], strict=True))
    return {
        "plans": n_plans,
        "steps": n_steps,
        "fresh_wall_s_per_plan_median": statistics.median(f[0] for f in fresh),
        "fresh_cpu_s_per_plan_median": statistics.median(f[1] for f in fresh),
        "warm_wall_s_per_plan_median": statistics.median(w[0] for w in warm),
        "warm_cpu_s_per_plan_median": statistics.median(w[1] for w in warm),
        "max_objective_difference_eur": gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    week = PlanInputs.from_frame(synthetic_inputs(7, 15), 900.0)
    house = PlanInputs.from_frame(household_inputs(7, 15), 900.0)
    negative = dataclasses.replace(
        house,
        import_price_eur_per_kwh=house.import_price_eur_per_kwh - 0.25,
        export_price_eur_per_kwh=house.export_price_eur_per_kwh - 0.15,
    )
    day = PlanInputs.from_frame(synthetic_inputs(1, 15), 900.0)
    final = dataclasses.replace(FREE_END, final_soc=0.5, degradation_cost_eur_per_kwh=0.0)
    cases = {
        "week_15min_synthetic": measure(week, FREE_END, args.repeats),
        "week_15min_household": measure(house, FREE_END, args.repeats),
        "week_15min_final_soc": measure(week, final, args.repeats),
        "week_15min_negative": measure(negative, FREE_END, args.repeats),
        "day_15min": measure(day, FREE_END, args.repeats),
        "receding_day_household": receding(house, args.repeats),
    }
    out = {
        "benchmark": "optimizer_speed",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "highspy": version("highspy"),
        "numpy": np.__version__,
        "repeats": args.repeats,
        "cases": cases,
        "target_wall_s_672_steps": TARGET_S,
        "target_met": bool(
            max(
                float(cases[k]["wall_s_median"])  # type: ignore[arg-type]
                for k in ("week_15min_synthetic", "week_15min_household", "week_15min_final_soc")
            )
            < TARGET_S
        ),
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
