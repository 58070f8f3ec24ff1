"""Benchmark: openbess's planner against EMHASS on identical inputs (cost and solve time).

Both plan one battery (10 kWh, 5 kW charge and 4.75 kW discharge on the AC side, 95 % / 95 %,
SoC 0.1..0.9 from 0.5 back to 0.5, grid 9 kW both ways, PV curtailment allowed, no degradation
cost) over the same load, PV and prices, for 1 day and 7 days at 15 and 30 min steps:

- ``synthetic``: the shapes of the EMHASS reference run in ``docs/emhass-comparison.md``
  (4 kW-peak PV with daily cloud factors, a household load with morning and evening bumps, a
  time-of-use import price, a flat 0.07 EUR/kWh export price), starting 2025-06-02 UTC;
- ``household``: the bundled measured household load and PV (``openbess.data``) of the week
  from 2024-06-03 UTC, with the bundled DE-LU day-ahead prices of the week from 2023-05-29
  (import = (spot + 0.15) x 1.19, export = spot, so some export prices are negative).

EMHASS runs in its own virtual environment (its pins conflict with openbess's: numpy < 2.3,
pandas < 3), in a subprocess: this file is also the worker (``--emhass-worker JOB.json``).
EMHASS is configured for an exact comparison: ``costfun = profit``, ``lp_solver_mip_rel_gap =
0``, ``set_nodischarge_to_grid = false``, ``compute_curtailment = true``, no deferrable loads,
``battery_discharge_power_max = 5000`` (EMHASS bounds AC discharge by eta * max = 4750 W).

Both schedules are checked the same way (SoC window, power balance, no simultaneous
import/export or charge/discharge) and costed with the same formula:
``sum(import * import_price - export * export_price) * dt``.

Usage::

    python -m venv /tmp/venv-emhass && /tmp/venv-emhass/bin/pip install emhass==0.18.7
    python benchmarks/emhass_comparison.py --emhass-python /tmp/venv-emhass/bin/python \\
        [--repeats 3] [--out DIR]

Without ``--emhass-python`` only openbess runs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CAPACITY_WH = 10000.0
CHARGE_W = 5000.0
DISCHARGE_AC_W = 4750.0  # = 0.95 * 5000: EMHASS's effective AC discharge limit
ETA = 0.95
SOC_MIN, SOC_MAX, SOC_INIT = 0.1, 0.9, 0.5
GRID_W = 9000.0
SITE_TOML = f"""# Battery and grid of the EMHASS comparison (docs/emhass-comparison.md)
[battery]
capacity_wh = {CAPACITY_WH:g}
max_charge_power_w = {CHARGE_W:g}
max_discharge_power_w = {DISCHARGE_AC_W:g}
charge_efficiency = {ETA}
discharge_efficiency = {ETA}
soc_min = {SOC_MIN}
soc_max = {SOC_MAX}
initial_soc = {SOC_INIT}
[grid]
max_import_w = {GRID_W:g}
max_export_w = {GRID_W:g}
[optimizer]
degradation_cost_eur_per_kwh = 0
"""
COLUMNS = ["load_w", "pv_w", "import_price_eur_per_kwh", "export_price_eur_per_kwh"]


# -- inputs (openbess side only) -------------------------------------------------------------


def synthetic_inputs(days: int, step_min: int) -> pd.DataFrame:
    """The synthetic week: PV, load, time-of-use import price, flat export price."""
    n = days * 24 * 60 // step_min
    index = pd.date_range("2025-06-02T00:00:00Z", periods=n, freq=f"{step_min}min", name="time")
    # evaluate at the middle of each step, as a step average would be
    hours = (np.arange(n) + 0.5) * step_min / 60.0
    h = hours % 24.0
    day = (hours // 24.0).astype(int)
    clouds = np.array([1.0, 0.55, 0.9, 0.3, 1.0, 0.75, 0.5])[day % 7]
    shape = np.clip(np.sin(np.pi * (h - 6.0) / 14.0), 0.0, None) ** 1.2
    pv = np.where((h > 6.0) & (h < 20.0), 4000.0 * shape, 0.0) * clouds
    load = (
        450.0
        + 900.0 * np.exp(-0.5 * ((h - 7.5) / 0.8) ** 2)
        + 1800.0 * np.exp(-0.5 * ((h - 19.5) / 1.2) ** 2)
        + 150.0 * (day % 2)
    )
    imp = (
        0.22
        - 0.08 * (h < 6.0)
        - 0.07 * ((h >= 11.0) & (h < 15.0))
        + 0.16 * ((h >= 17.0) & (h < 21.0))
        + 0.01 * (day % 3)
    )
    return pd.DataFrame(
        {
            "load_w": load,
            "pv_w": pv,
            "import_price_eur_per_kwh": imp,
            "export_price_eur_per_kwh": np.full(n, 0.07),
        },
        index=index,
    )


def household_inputs(days: int, step_min: int) -> pd.DataFrame:
    """Measured household load/PV (30 min) and DE-LU day-ahead prices (hourly), held per step."""
    from openbess.data import read_household, read_prices

    n = days * 24 * 60 // step_min
    index = pd.date_range("2024-06-03T00:00:00Z", periods=n, freq=f"{step_min}min", name="time")
    hh = read_household().loc["2024-06-03T00:00:00Z":]
    prices = read_prices("DE_LU").loc["2023-05-29T00:00:00Z":]
    k30 = (np.arange(n) * step_min) // 30
    k60 = (np.arange(n) * step_min) // 60
    spot = prices["price_eur_per_kwh"].to_numpy()[k60]
    return pd.DataFrame(
        {
            "load_w": hh["load_w"].to_numpy()[k30],
            "pv_w": np.maximum(hh["pv_w"].to_numpy()[k30], 0.0),
            "import_price_eur_per_kwh": (spot + 0.15) * 1.19,
            "export_price_eur_per_kwh": spot,
        },
        index=index,
    )


def write_inputs_csv(frame: pd.DataFrame, path: Path) -> None:
    out = frame.copy()
    out.index = pd.Index([t.isoformat() for t in out.index], name="time")
    out.to_csv(path, float_format="%.6f")


# -- checks and costs (both sides) -------------------------------------------------------------


def check_schedule(
    frame: pd.DataFrame,
    import_w: np.ndarray,
    export_w: np.ndarray,
    battery_w: np.ndarray,
    soc: np.ndarray,
    step_min: int,
) -> dict[str, Any]:
    dt_h = step_min / 60.0
    load = frame["load_w"].to_numpy()
    pv = frame["pv_w"].to_numpy()
    # balance with curtailment: import - export + battery = load - pv_used, pv_used <= pv
    pv_used = load - import_w + export_w - battery_w
    cost = float(
        np.sum(
            import_w * frame["import_price_eur_per_kwh"].to_numpy()
            - export_w * frame["export_price_eur_per_kwh"].to_numpy()
        )
        * dt_h
        / 1000.0
    )
    return {
        "cost_eur": cost,
        "import_kwh": float(import_w.sum() * dt_h / 1000.0),
        "export_kwh": float(export_w.sum() * dt_h / 1000.0),
        "battery_charge_kwh": float(np.maximum(-battery_w, 0).sum() * dt_h / 1000.0),
        "battery_discharge_kwh": float(np.maximum(battery_w, 0).sum() * dt_h / 1000.0),
        "pv_curtailed_kwh": float(np.maximum(pv - pv_used, 0).sum() * dt_h / 1000.0),
        "soc_min": float(soc.min()),
        "soc_max": float(soc.max()),
        "soc_end": float(soc[-1]),
        "pv_used_out_of_range_w": float(
            max(np.max(pv_used - pv, initial=0.0), np.max(-pv_used, initial=0.0))
        ),
        "simultaneous_import_export_steps": int(np.sum((import_w > 1.0) & (export_w > 1.0))),
        "max_charge_w": float(np.max(-battery_w, initial=0.0)),
        "max_discharge_w": float(np.max(battery_w, initial=0.0)),
        "max_import_w": float(import_w.max()),
        "max_export_w": float(export_w.max()),
    }


# -- openbess ----------------------------------------------------------------------------------


def run_openbess(
    frame: pd.DataFrame, step_min: int, repeats: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    from openbess.ems.optimizer import PlanBattery, PlanInputs, PlanRequest, optimize

    inputs = PlanInputs.from_frame(frame, step_min * 60.0)
    battery = PlanBattery(
        capacity_wh=CAPACITY_WH,
        soc_initial=SOC_INIT,
        soc_min=SOC_MIN,
        soc_max=SOC_MAX,
        max_charge_power_w=CHARGE_W,
        max_discharge_power_w=DISCHARGE_AC_W,
        charge_efficiency=ETA,
        discharge_efficiency=ETA,
    )
    request = PlanRequest(
        max_import_w=GRID_W,
        max_export_w=GRID_W,
        degradation_cost_eur_per_kwh=0.0,
        final_soc=SOC_INIT,
        mip_rel_gap=0.0,
    )
    times = []
    result = optimize(inputs, battery, request)  # warm-up: imports, first HiGHS instance
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = optimize(inputs, battery, request)
        times.append(time.perf_counter() - t0)
    out = check_schedule(
        frame,
        result.grid_import_w,
        result.grid_export_w,
        result.battery_power_w,
        result.soc,
        step_min,
    )
    out.update(
        {
            "status": result.status,
            "binaries": result.binaries,
            "relaxed": [r.as_dict() for r in result.relaxed],
            "simultaneous_charge_discharge_steps": int(
                np.sum((result.charge_power_w > 1.0) & (result.discharge_power_w > 1.0))
            ),
            "time_s_median": statistics.median(times),
            "time_s_all": times,
            "baseline_cost_eur": result.baseline_cost_eur,
        }
    )
    return out, result.to_frame()


# -- EMHASS (worker, runs in the EMHASS venv) ----------------------------------------------------


def _emhass_worker(job_path: str) -> None:  # pragma: no cover - runs in another venv
    import asyncio
    import logging
    import pathlib

    from emhass import utils
    from emhass.optimization import Optimization

    job = json.loads(Path(job_path).read_text())
    logger = logging.getLogger("emhass_bench")
    logger.setLevel(logging.ERROR)
    logger.addHandler(logging.StreamHandler(sys.stderr))
    root = pathlib.Path(utils.__file__).parent
    work = pathlib.Path(job["work_dir"])
    results = []
    for case in job["cases"]:
        emhass_conf = {
            "root_path": root,
            "data_path": work,
            "defaults_path": root / "data" / "config_defaults.json",
            "associations_path": root / "data" / "associations.csv",
            "config_path": work / f"config_{case['step_min']}.json",
        }
        overrides = {
            "optimization_time_step": case["step_min"],
            "costfun": "profit",
            "lp_solver_timeout": 180,
            "lp_solver_mip_rel_gap": 0.0,
            "set_use_battery": True,
            "set_nocharge_from_grid": False,
            "set_nodischarge_to_grid": False,
            "compute_curtailment": True,
            "number_of_deferrable_loads": 0,
            "nominal_power_of_deferrable_loads": [],
            "minimum_power_of_deferrable_loads": [],
            "cost_forecast_per_deferrable_load": [],
            "is_electric_load": [],
            "operating_hours_of_each_deferrable_load": [],
            "start_timesteps_of_each_deferrable_load": [],
            "end_timesteps_of_each_deferrable_load": [],
            "treat_deferrable_load_as_semi_cont": [],
            "set_deferrable_load_single_constant": [],
            "set_deferrable_startup_penalty": [],
            "deferrable_load_max_cost": [],
            "set_deferrable_max_startups": [],
            "def_minimum_on_time": [],
            "def_minimum_off_time": [],
            "battery_nominal_energy_capacity": job["capacity_wh"],
            "battery_charge_power_max": job["charge_w"],
            "battery_discharge_power_max": job["discharge_dc_w"],
            "battery_charge_efficiency": job["eta"],
            "battery_discharge_efficiency": job["eta"],
            "battery_minimum_state_of_charge": job["soc_min"],
            "battery_maximum_state_of_charge": job["soc_max"],
            "battery_target_state_of_charge": job["soc_init"],
            "weight_battery_discharge": 0.0,
            "weight_battery_charge": 0.0,
            "maximum_power_from_grid": job["grid_w"],
            "maximum_power_to_grid": job["grid_w"],
            "time_zone": "UTC",
        }
        emhass_conf["config_path"].write_text(json.dumps(overrides))

        async def build(conf: dict[str, Any] = emhass_conf) -> tuple[Any, Any, Any]:
            config = await utils.build_config(
                conf, logger, str(conf["defaults_path"]), str(conf["config_path"])
            )
            _, secrets = await utils.build_secrets(conf, logger, no_response=True)
            params = await utils.build_params(conf, secrets, config, logger)
            return utils.get_yaml_parse(params, logger)

        rh, oc, pc = asyncio.run(build())
        frame = pd.read_csv(case["inputs"], index_col="time", parse_dates=["time"])
        frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC")
        frame.index.freq = pd.infer_freq(frame.index)
        df = pd.DataFrame(
            {
                "unit_load_cost": frame["import_price_eur_per_kwh"],
                "unit_prod_price": frame["export_price_eur_per_kwh"],
            },
            index=frame.index,
        )
        cold, warm = [], []
        opt_res = None
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            opt = Optimization(
                rh,
                oc,
                pc,
                "unit_load_cost",
                "unit_prod_price",
                "profit",
                emhass_conf,
                logger,
                num_timesteps=len(frame),
            )
            opt_res = opt.perform_dayahead_forecast_optim(
                df,
                frame["pv_w"],
                frame["load_w"],
                soc_init=job["soc_init"],
                soc_final=job["soc_init"],
            )
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            opt_res = opt.perform_dayahead_forecast_optim(
                df,
                frame["pv_w"],
                frame["load_w"],
                soc_init=job["soc_init"],
                soc_final=job["soc_init"],
            )
            warm.append(time.perf_counter() - t0)
        assert opt_res is not None
        out_csv = work / f"emhass_{case['name']}.csv"
        opt_res.to_csv(out_csv)
        results.append(
            {
                "name": case["name"],
                "status": str(opt_res["optim_status"].iloc[0]),
                "cold_s_all": cold,
                "warm_s_all": warm,
                "schedule_csv": str(out_csv),
            }
        )
    from importlib.metadata import version

    print(
        json.dumps(
            {
                "results": results,
                "versions": {
                    "emhass": version("emhass"),
                    "cvxpy": version("cvxpy"),
                    "highspy": version("highspy"),
                    "python": platform.python_version(),
                },
            }
        )
    )


def run_emhass(
    python: str, cases: list[dict[str, Any]], work: Path, repeats: int
) -> dict[str, Any]:
    job = {
        "work_dir": str(work),
        "cases": cases,
        "repeats": repeats,
        "capacity_wh": CAPACITY_WH,
        "charge_w": CHARGE_W,
        "discharge_dc_w": DISCHARGE_AC_W / ETA,
        "eta": ETA,
        "soc_min": SOC_MIN,
        "soc_max": SOC_MAX,
        "soc_init": SOC_INIT,
        "grid_w": GRID_W,
    }
    job_path = work / "emhass_job.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [python, os.path.abspath(__file__), "--emhass-worker", str(job_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"EMHASS worker failed:\n{proc.stderr[-4000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    out: dict[str, Any] = json.loads(last)
    return out


def emhass_schedule(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    res = pd.read_csv(path, index_col=0)
    imp = res["P_grid_pos"].to_numpy(dtype=float)
    exp = -res["P_grid_neg"].to_numpy(dtype=float)
    batt = res["P_batt"].to_numpy(dtype=float)
    soc = res["SOC_opt"].to_numpy(dtype=float)
    return np.maximum(imp, 0.0), np.maximum(exp, 0.0), batt, soc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emhass-python", default=None, help="python of a venv with emhass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="keep inputs and schedules in this folder")
    parser.add_argument("--emhass-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emhass_worker:
        _emhass_worker(args.emhass_worker)
        return
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="emhass_cmp_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "site.toml").write_text(SITE_TOML)
    frames: dict[str, tuple[pd.DataFrame, int]] = {}
    cases = []
    for source, make in (("synthetic", synthetic_inputs), ("household", household_inputs)):
        for days in (1, 7):
            for step_min in (30, 15):
                name = f"{source}_{days}d_{step_min}min"
                frame = make(days, step_min)
                path = work / f"inputs_{name}.csv"
                write_inputs_csv(frame, path)
                frames[name] = (frame, step_min)
                cases.append({"name": name, "inputs": str(path), "step_min": step_min})
    emhass: dict[str, Any] | None = None
    if args.emhass_python:
        emhass = run_emhass(args.emhass_python, cases, work, args.repeats)
    table = []
    for case in cases:
        name = case["name"]
        frame, step_min = frames[name]
        ours, plan = run_openbess(frame, step_min, args.repeats)
        write_inputs_csv(plan, work / f"openbess_{name}.csv")
        row: dict[str, Any] = {"case": name, "steps": len(frame), "openbess": ours}
        if emhass is not None:
            er = next(r for r in emhass["results"] if r["name"] == name)
            imp, exp, batt, soc = emhass_schedule(er["schedule_csv"])
            theirs = check_schedule(frame, imp, exp, batt, soc, step_min)
            theirs.update(
                {
                    "status": er["status"],
                    "cold_s_median": statistics.median(er["cold_s_all"]),
                    "warm_s_median": statistics.median(er["warm_s_all"]),
                    "cold_s_all": er["cold_s_all"],
                    "warm_s_all": er["warm_s_all"],
                }
            )
            row["emhass"] = theirs
            row["cost_difference_eur"] = ours["cost_eur"] - theirs["cost_eur"]
            row["speedup_vs_cold"] = theirs["cold_s_median"] / ours["time_s_median"]
            row["speedup_vs_warm"] = theirs["warm_s_median"] / ours["time_s_median"]
        table.append(row)
    from importlib.metadata import version

    out = {
        "benchmark": "emhass_comparison",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "highspy": version("highspy"),
        "emhass": emhass["versions"] if emhass is not None else None,
        "work_dir": str(work),
        "cases": table,
        "targets": {"cost": "openbess <= EMHASS", "time": "EMHASS cold / openbess >= 10"},
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
