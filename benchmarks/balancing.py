"""Benchmark: passive balancing on the twin, from a 5 % SoC spread, under a daily cycle.

For each pack (the ``home`` site's 16 x 200 Ah LFP string; one 36 x 140 Ah module of the
``commercial`` site, as a site of its own with the ratings divided by its 32 modules) and each
strategy (no balancing, ``soc``, ``voltage``), the true per-cell SoC of the twin is set to a
5 % spread around 50 % (evenly spaced, shuffled), and the whole site runs (twin, BMS, gate,
self-consumption EMS on the site's load and PV series) at a 30 s cycle. The BMS decides the bleed
mask with :class:`openbess.bms.balancing.Balancer`.

``bms.py`` is not changed by this benchmark: it monkeypatches, on the BMS instance,
``BatteryManagementSystem._balancing`` (to call the Balancer), ``update`` (to hand it the
measurements) and ``estimator.update`` (to count the bleed charge of each cell in its SoC
estimate, which the BMS does not do yet). The JSON says so (``"integration"``).

Reported per run:

- ``days_to_within_0p5pct``: simulated days until the true charge imbalance (the usable charge
  lost to misalignment as a fraction of the capacity: ``(min C - min q - min(C - q)) / mean C``;
  for equal capacities this is the SoC spread ``max z - min z``) is within 0.5 %, and the same
  for the plain true SoC spread (which cannot reach 0.5 % at mid SoC when the capacities differ:
  the twin draws them with a 1 % standard deviation);
- ``energy_bled_kwh``: energy dissipated in the bleed resistors (twin; the Balancer's own count
  beside it);
- ``usable_energy_*``: usable energy of the string, limited by its weakest cells,
  ``(min q + min(C - q)) * n_series * V_nom`` at the start and the end, and the gain; plus the
  gain over the no-balancing run (the fair comparison: self-discharge and capacity spread act on
  both), and a check by test: a copy of the twin's pack charged at C/5 until the first cell
  reaches its maximum voltage, then discharged at C/5 until the first cell reaches its minimum
  voltage (energy delivered).

Usage: ``python benchmarks/balancing.py [--quick] [--days N] [--step S]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import sys
import time
import timeit
from typing import Any

import numpy as np

from openbess.bms.balancing import Balancer, BalancingConfig
from openbess.bms.bms import BatteryManagementSystem
from openbess.config import SiteConfig, load_site, parse_site
from openbess.simulate import Site, build_site
from openbess.twin.pack import Pack

log = logging.getLogger("benchmarks.balancing")

SPREAD = 0.05
TARGET = 0.005
MEAN_SOC = 0.5


# --------------------------------------------------------------------------------------------
# Sites
# --------------------------------------------------------------------------------------------
def commercial_module_site() -> SiteConfig:
    """One module (36 x 140 Ah) of the commercial site, with its ratings divided by 32."""
    doc = load_site("commercial").model_dump(mode="json")
    n_modules = doc["battery"]["n_strings"] * doc["battery"]["modules_per_string"]
    b = doc["battery"]
    b["n_strings"] = 1
    b["modules_per_string"] = 1
    for key in ("max_charge_power_w", "max_discharge_power_w"):
        b[key] = b[key] / n_modules
    doc["pv"]["peak_power_w"] /= n_modules
    doc["pv"]["inverter_ac_w"] /= n_modules
    doc["load"]["annual_energy_kwh"] /= n_modules
    doc["grid"]["max_import_w"] /= n_modules
    doc["grid"]["max_export_w"] /= n_modules
    doc["converter"]["ramp_w_per_s"] /= n_modules
    doc["converter"]["standby_w"] /= n_modules
    doc["name"] = "commercial_module"
    return parse_site(doc, "commercial module")


def site_config(name: str, balancing: bool, capacity_spread: bool) -> SiteConfig:
    """The site, with balancing on or off, and with or without the capacity spread."""
    cfg = commercial_module_site() if name == "commercial_module" else load_site(name)
    doc = cfg.model_dump(mode="json")
    doc["bms"]["balancing"] = balancing
    if not capacity_spread:
        doc["battery"]["spread"]["capacity_rel_std"] = 0.0
    return parse_site(doc, name)


# --------------------------------------------------------------------------------------------
# Integration into the BMS (monkeypatch: bms.py is not edited)
# --------------------------------------------------------------------------------------------
def install_balancer(
    bms: BatteryManagementSystem, balancer: Balancer, true_soc: Pack | None = None
) -> None:
    """Make ``bms`` decide its bleed mask with ``balancer`` and count the bleed charge.

    With ``true_soc``, the Balancer reads that pack's true cell SoC instead of the BMS's
    estimates (an oracle, to separate the Balancer's performance from the estimator's).
    """
    orig_update = bms.update
    orig_estimate = bms.estimator.update
    state: dict[str, Any] = {}

    def update(now_s: float, measurements: Any, *args: Any, **kwargs: Any) -> Any:
        state["m"] = measurements
        return orig_update(now_s, measurements, *args, **kwargs)

    def estimate(dt_s: float, *args: Any, **kwargs: Any) -> Any:
        soc = orig_estimate(dt_s, *args, **kwargs)
        est = bms.estimator
        if balancer.bleeding and dt_s > 0 and est.initialised:
            # Charge bled over the last interval, at the currents the Balancer switched on.
            dq_ah = balancer.bleed_current_a * (dt_s / 3600.0)
            est.soc = np.clip(est.soc - dq_ah / est.capacity_ah, 0.0, 1.0)
            est.net_ah = est.net_ah + dq_ah
            soc = est.soc
        return soc

    def balancing(
        soc: Any, string_min: Any, pack_i: float, t_max: float, estimated: bool, closed: bool
    ) -> tuple[Any, int]:
        m = state["m"]
        now = bms.last_time_s if bms.last_time_s is not None else 0.0
        last = balancer.time_s
        dt = now - last if math.isfinite(last) else 0.0
        z = bms.cell_soc if true_soc is None else true_soc.cell_soc  # NaN until initialised
        mask = balancer.update(
            now,
            dt,
            z,
            bms.estimator.capacity_ah,
            m.cell_voltage_v,
            m.cell_voltage_valid,
            pack_i,
            t_max,
            closed,
        )
        return mask, balancer.n_balancing

    bms.update = update  # type: ignore[method-assign]
    bms.estimator.update = estimate  # type: ignore[method-assign]
    bms._balancing = balancing  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------
# Metrics on the twin's true state
# --------------------------------------------------------------------------------------------
def imbalance(pack: Pack) -> tuple[float, float]:
    """True charge imbalance (usable charge lost / mean capacity) and SoC spread, worst string."""
    n_str = pack.topology.n_strings
    z = pack.cell_soc.reshape(n_str, -1)
    c = pack.cell_capacity_ah.reshape(n_str, -1)
    q = z * c
    lost = c.min(axis=1) - q.min(axis=1) - (c - q).min(axis=1)
    return float((lost / c.mean(axis=1)).max()), float(np.ptp(z, axis=1).max())


def usable_energy_kwh(pack: Pack, v_nom: float) -> float:
    """Usable energy of the strings from their charge alignment [kWh]."""
    n_str = pack.topology.n_strings
    z = pack.cell_soc.reshape(n_str, -1)
    c = pack.cell_capacity_ah.reshape(n_str, -1)
    q = z * c
    usable_ah = q.min(axis=1) + (c - q).min(axis=1)
    return float(usable_ah.sum()) * pack.topology.n_series * v_nom / 1000.0


def usable_energy_test_kwh(pack: Pack, step_s: float = 30.0) -> float:
    """Charge a copy at C/5 to the first cell's maximum voltage, then discharge it at C/5 to
    the first cell's minimum voltage; the DC energy delivered [kWh]."""
    p = copy.deepcopy(pack)
    cell = p.group_params
    i = 0.2 * cell.capacity_ah * p.topology.n_strings
    for _ in range(int(12 * 3600 / step_s)):
        if float(p.cell_voltage_v.max()) >= cell.voltage_max_v:
            break
        p.step(-i, step_s)
    for _ in range(int(3600 / step_s)):  # one hour of rest
        p.step(0.0, step_s)
    energy_j = 0.0
    for _ in range(int(12 * 3600 / step_s)):
        if float(p.cell_voltage_v.min()) <= cell.voltage_min_v:
            break
        energy_j += p.step(i, step_s).dc_energy_j
    return energy_j / 3.6e6


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
def run(
    name: str,
    strategy: str,
    days: float,
    step_s: float,
    capacity_spread: bool = False,
    alignment: str = "soc",
    allow_charging: bool = True,
    oracle: bool = False,
    seed: int = 5,
) -> dict[str, Any]:
    """Run one pack with one strategy (``"none"``, ``"soc"``, ``"voltage"``); its figures.

    ``oracle``: the Balancer reads the twin's true SoC instead of the BMS's estimates.
    """
    cfg = site_config(name, strategy != "none", capacity_spread)
    start_s = cfg.simulation.start.timestamp()
    site: Site = build_site(cfg, start_s, step_s)
    pack = site.twin.pack
    n = pack.n_cells
    rng = np.random.default_rng(seed)
    z0 = MEAN_SOC + SPREAD * (np.linspace(0.0, 1.0, n) - 0.5)
    pack.set_cell_soc(rng.permutation(z0))
    pack.step(0.0, 1.0, time_s=start_s - 1.0)  # refresh the cell voltages the sensors read
    v_nom = site.twin.cell.nominal_voltage_v
    balancer: Balancer | None = None
    if strategy != "none":
        topo = pack.topology
        bal_cfg = BalancingConfig.for_chemistry(
            site.twin.cell.chemistry,
            strategy=strategy,
            alignment=alignment,
            allow_charging=allow_charging,
            bleed_resistance_ohm=cfg.bms.bleed_resistance_ohm,
            rest_current_a=site.bms.setup.params.protection.rest_current_a,
        )
        balancer = Balancer(bal_cfg, topo.n_strings, topo.n_series, topo.cells_series_per_module)
        install_balancer(site.bms, balancer, pack if oracle else None)

    imb0, spread0 = imbalance(pack)
    usable0 = usable_energy_kwh(pack, v_nom)
    test0 = usable_energy_test_kwh(pack)
    reached: dict[str, float | None] = {"imbalance": None, "soc_spread": None}
    daily: dict[str, list[float | None]] = {
        "imbalance": [],
        "soc_spread_true": [],
        "soc_spread_estimated": [],
        "soc_mean_true": [],
    }
    n_steps = round(days * 86400.0 / step_s)
    per_day = round(86400.0 / step_s)
    bleed_cycles = 0
    reasons: dict[str, int] = {}
    wall0 = time.perf_counter()
    for k in range(n_steps + 1):
        now = start_s + k * step_s
        site.controller.cycle(now)
        if balancer is not None:
            bleed_cycles += balancer.bleeding
            reasons[balancer.inhibit] = reasons.get(balancer.inhibit, 0) + 1
        imb, spread = imbalance(pack)
        t_days = k * step_s / 86400.0
        if reached["imbalance"] is None and imb <= TARGET:
            reached["imbalance"] = t_days
        if reached["soc_spread"] is None and spread <= TARGET:
            reached["soc_spread"] = t_days
        if k % per_day == 0:
            est = site.bms.cell_soc
            daily["imbalance"].append(round(imb, 5))
            daily["soc_spread_true"].append(round(spread, 5))
            known = bool(np.all(np.isfinite(est)))
            daily["soc_spread_estimated"].append(round(float(np.ptp(est)), 5) if known else None)
            daily["soc_mean_true"].append(round(float(pack.cell_soc.mean()), 4))
    wall = time.perf_counter() - wall0
    pack.close_ageing()
    imb1, spread1 = imbalance(pack)
    usable1 = usable_energy_kwh(pack, v_nom)
    test1 = usable_energy_test_kwh(pack)
    eb = pack.energy_balance()
    out: dict[str, Any] = {
        "pack": name,
        "strategy": strategy,
        "soc_source": "twin_true_soc" if oracle else "bms_estimator",
        "capacity_spread": capacity_spread,
        "cells": n,
        "cell_capacity_ah": float(pack.group_params.capacity_ah),
        "simulated_days": days,
        "step_s": step_s,
        "wall_time_s": round(wall, 1),
        "imbalance_start": round(imb0, 5),
        "imbalance_end": round(imb1, 5),
        "soc_spread_true_start": round(spread0, 5),
        "soc_spread_true_end": round(spread1, 5),
        "days_to_within_0p5pct": reached["imbalance"],
        "days_to_soc_spread_within_0p5pct": reached["soc_spread"],
        "energy_bled_kwh": round(eb.bleed_j / 3.6e6, 4),
        "usable_energy_start_kwh": round(usable0, 4),
        "usable_energy_end_kwh": round(usable1, 4),
        "usable_energy_gained_kwh": round(usable1 - usable0, 4),
        "usable_energy_test_start_kwh": round(test0, 4),
        "usable_energy_test_end_kwh": round(test1, 4),
        "energy_balance_residual_kwh": eb.residual_j / 3.6e6,
        "at_midnight_by_day": daily,
    }
    if balancer is not None:
        out["energy_bled_balancer_count_kwh"] = round(balancer.total_energy_bled_wh / 1000.0, 4)
        out["bleeding_fraction_of_cycles"] = round(bleed_cycles / (n_steps + 1), 4)
        out["state_fraction_of_cycles"] = {
            (k or "bleeding"): round(v / (n_steps + 1), 4) for k, v in sorted(reasons.items())
        }
        out["charge_bled_max_cell_ah"] = round(float(balancer.charge_bled_ah.max()), 3)
        out["balancing_config"] = {
            k: getattr(balancer.config, k)
            for k in (
                "strategy",
                "alignment",
                "soc_threshold",
                "soc_hysteresis",
                "voltage_threshold_v",
                "voltage_hysteresis_v",
                "min_voltage_v",
                "bleed_resistance_ohm",
                "max_bleed_power_w",
                "power_scope",
                "duty_cycle",
                "rest_current_a",
                "allow_charging",
                "max_temperature_degc",
            )
        }
    return out


class _Cycle:
    """One BMS cycle of a Balancer at a 1 s period, with fixed readings."""

    def __init__(self, bal: Balancer, arrays: tuple[Any, ...], current_a: float) -> None:
        self.bal = bal
        self.arrays = arrays
        self.current_a = current_a
        self.time_s = 0.0

    def __call__(self) -> None:
        self.time_s += 1.0
        z, cap, v, ok = self.arrays
        self.bal.update(self.time_s, 1.0, z, cap, v, ok, self.current_a, 25.0, True)


def update_cost_us() -> dict[str, float]:
    """Mean wall time of one Balancer.update at a 1 s cycle [us], default configuration, cells
    bleeding under the power limit (4 W per module), at rest and while charging, for 16 cells
    and for 1,152 cells (4 strings x 8 modules x 36)."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(1)
    for label, ns, nser, per in (("16_cells", 1, 16, 16), ("1152_cells", 4, 288, 36)):
        n = ns * nser
        arrays = (
            0.95 + 0.03 * rng.random(n),
            np.full(n, 200.0),
            3.42 + 0.05 * rng.random(n),
            np.ones(n, dtype=bool),
        )
        for strategy in ("soc", "voltage"):
            for phase, current_a in (("rest", 0.0), ("charging", -20.0)):
                bal = Balancer(BalancingConfig(strategy=strategy), ns, nser, per)
                cycle = _Cycle(bal, arrays, 0.0)
                for _ in range(1900):  # past the settling rest
                    cycle()
                cycle.current_a = current_a
                best = min(timeit.repeat(cycle, number=6000, repeat=3)) / 6000
                out[f"{strategy}_{phase}_{label}"] = round(best * 1e6, 1)
    return out


#: (pack, strategy, capacity spread, oracle SoC) of each run.
PLAN: tuple[tuple[str, str, bool, bool], ...] = (
    ("home", "none", False, False),
    ("home", "soc", False, False),
    ("home", "soc", False, True),
    ("home", "voltage", False, False),
    ("commercial_module", "none", False, False),
    ("commercial_module", "soc", False, False),
    ("commercial_module", "soc", False, True),
    ("commercial_module", "voltage", False, False),
    ("home", "none", True, False),
    ("home", "soc", True, False),
)
QUICK_PLAN = PLAN[:4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="home pack only (4 runs)")
    parser.add_argument("--days", type=float, default=20.0, help="simulated days per run")
    parser.add_argument("--step", type=float, default=60.0, help="cycle step [s]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    plan = QUICK_PLAN if args.quick else PLAN
    wall0 = time.perf_counter()
    runs = [run(p, s, args.days, args.step, c, oracle=o) for p, s, c, o in plan]
    summary: list[dict[str, Any]] = []
    for r in runs:
        base = next(
            b
            for b in runs
            if b["pack"] == r["pack"]
            and b["capacity_spread"] == r["capacity_spread"]
            and b["strategy"] == "none"
        )
        r["usable_energy_gain_over_no_balancing_kwh"] = round(
            r["usable_energy_end_kwh"] - base["usable_energy_end_kwh"], 4
        )
        r["usable_energy_test_gain_over_no_balancing_kwh"] = round(
            r["usable_energy_test_end_kwh"] - base["usable_energy_test_end_kwh"], 4
        )
        days = r["days_to_within_0p5pct"]
        summary.append(
            {
                "pack": r["pack"],
                "strategy": r["strategy"],
                "soc_source": r["soc_source"],
                "capacity_spread": r["capacity_spread"],
                "days_to_within_0p5pct": None if days is None else round(days, 2),
                "imbalance_end": r["imbalance_end"],
                "energy_bled_kwh": r["energy_bled_kwh"],
                "usable_energy_gained_kwh": r["usable_energy_gained_kwh"],
                "usable_energy_gain_over_no_balancing_kwh": r[
                    "usable_energy_gain_over_no_balancing_kwh"
                ],
                "usable_energy_test_gain_over_no_balancing_kwh": r[
                    "usable_energy_test_gain_over_no_balancing_kwh"
                ],
            }
        )
    out = {
        "benchmark": "balancing",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "integration": (
            "bms.py not edited: BatteryManagementSystem._balancing, .update and "
            ".estimator.update are monkeypatched on the BMS instance so that "
            "openbess.bms.balancing.Balancer decides the bleed mask and the estimator counts "
            "the bleed charge"
        ),
        "initial_soc_spread": SPREAD,
        "target_spread": TARGET,
        "simulated_days_per_run": args.days,
        "step_s": args.step,
        "update_cost_us": update_cost_us(),
        "summary": summary,
        "runs": runs,
        "wall_time_s": round(time.perf_counter() - wall0, 1),
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
