"""Benchmark: twin + full controller loop speed.

Prints one JSON object per case:
- ``home_year_60s``: the ``home`` site, one simulated year (365 days) at a 60 s cycle step
  (target: under 60 s wall on the 2-core reference machine);
- ``commercial_day_1s``: the ``commercial`` site (1,152 cells), one simulated day at 1 s BMS
  steps with all cells (target: under 60 s wall).

Usage: ``python benchmarks/loop_speed.py [--quick]`` (``--quick`` runs 1/20 of each and
extrapolates, for a fast check).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys

from openbess.config import load_site
from openbess.simulate import simulate


def run_case(site: str, days: float, step_s: float, scale: float) -> dict[str, object]:
    kpis = simulate(load_site(site), days=days / scale, step_s=step_s, progress=False)
    wall = float(kpis["wall_time_s"]) * scale
    return {
        "site": site,
        "simulated_days": days,
        "step_s": step_s,
        "cycles": round(days * 86400 / step_s),
        "wall_time_s": round(wall, 2),
        "extrapolated_from_fraction": 1.0 / scale,
        "microseconds_per_cycle": round(1e6 * wall / (days * 86400 / step_s), 1),
        "energy_balance_error_fraction": kpis["energy_balance_error_fraction"],
        "cell_limits_respected": kpis["cell_limits_respected"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="run 1/20 and extrapolate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    scale = 20.0 if args.quick else 1.0
    out = {
        "benchmark": "loop_speed",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "home_year_60s": run_case("home", 365.0, 60.0, scale),
        "commercial_day_1s": run_case("commercial", 1.0, 1.0, scale),
        "targets_wall_time_s": {"home_year_60s": 60.0, "commercial_day_1s": 60.0},
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
