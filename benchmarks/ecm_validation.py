"""ECM validation: the built-in cell parameter sets against measured data (and PyBaMM).

Prints one JSON object:

- ``lfp_a123.measured``: the fitted LFP set run through :func:`openbess.cell.ecm.step` (via
  :func:`openbess.cell.fit.simulate_log`) along the whole measured A123 dynamic test at 25 degC
  (script s1: starts full, UDDS-like profile down to the lower cut-off; 36,880 samples at 1 s,
  current calibrated to the cycler's charge counters), start SoC 1, hysteresis +1 (after a
  charge). RMSE and max error [mV] over the whole test, and the RMSE inside SoC 0.1..0.9.
  This is the test the dynamics were fitted on (in-sample).
- ``lfp_a123.pybamm``: the same current profile through PyBaMM (SPMe by default, ``--dfn``
  for DFN) with the Prada2013 LFP parameter set (an A123 ANR26650 cell, 2.3 Ah nominal, so it
  does not reach the lower knee of this aged 2.07 Ah cell), start SoC 1; RMSE of PyBaMM
  against the measurement and against our ECM. ``"not installed"`` without PyBaMM.
- ``nmc_leaf``: the Nissan Leaf set against the measured HPPC test at 25 degC from the full
  point (in-sample: the dynamics were fitted on it) and against the 1C discharge / C/2 CC-CV
  charge cycling file (out-of-sample; start SoC from the rested voltage).

The data are the compact copies in ``benchmarks/data`` (see its README).

Usage: ``python benchmarks/ecm_validation.py [--dfn] [--no-pybamm]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from openbess.cell.fit import simulate_log, soc_from_ocv
from openbess.cell.io import CellLog, read_cell_log
from openbess.cell.params import load_cell_params

DATA = Path(__file__).resolve().parent / "data"


def _errors(
    measured_v: np.ndarray, model_v: np.ndarray, soc: np.ndarray | None = None
) -> dict[str, float]:
    err = measured_v - model_v
    out = {
        "rmse_mv": round(1e3 * float(np.sqrt(np.mean(err**2))), 2),
        "max_error_mv": round(1e3 * float(np.max(np.abs(err))), 1),
    }
    if soc is not None:
        mid = (soc >= 0.1) & (soc <= 0.9)
        out["rmse_mv_soc_0.1_0.9"] = round(1e3 * float(np.sqrt(np.mean(err[mid] ** 2))), 2)
    return out


def run_pybamm(cell_log: CellLog, model_name: str) -> tuple[np.ndarray, float] | str:
    """Voltage of the PyBaMM Prada2013 LFP cell along the log's current, or a reason string."""
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    try:
        import pybamm  # optional dependency
    except ImportError:
        return "not installed"
    t = cell_log.time_s - cell_log.time_s[0]
    pv = pybamm.ParameterValues("Prada2013")
    # Widen the cut-offs so the solver's voltage events do not stop the run at SoC 1.
    pv["Upper voltage cut-off [V]"] = 4.0
    pv["Lower voltage cut-off [V]"] = 1.0
    pv["Ambient temperature [K]"] = 298.15
    pv["Initial temperature [K]"] = 298.15
    pv["Current function [A]"] = pybamm.Interpolant(
        t, cell_log.current_a, pybamm.t, interpolator="linear"
    )
    model = getattr(pybamm.lithium_ion, model_name)()
    sim = pybamm.Simulation(model, parameter_values=pv, solver=pybamm.IDAKLUSolver())
    start = time.perf_counter()
    sol = sim.solve(t_eval=[0.0, float(t[-1])], t_interp=t, initial_soc=1.0)
    seconds = time.perf_counter() - start
    v = np.asarray(sol["Voltage [V]"].entries, dtype=np.float64)
    if v.size != t.size:
        return f"stopped early at t = {float(sol.t[-1]):.0f} s"
    return v, seconds


def lfp(use_pybamm: bool, model_name: str) -> dict[str, Any]:
    """LFP set against the A123 dynamic test (and PyBaMM)."""
    params = load_cell_params("lfp")
    dyn = read_cell_log(DATA / "a123_dyn_25c_s1.csv.gz")[0]
    start = time.perf_counter()
    sim = simulate_log(params, dyn, soc0=1.0, hysteresis0=1.0, temperature_degc=25.0)
    ecm_s = time.perf_counter() - start
    out: dict[str, Any] = {
        "test": "A123_DYN_50_P25_s1 (whole test, start SoC 1)",
        "samples": len(dyn),
        "duration_h": round(float(dyn.time_s[-1] - dyn.time_s[0]) / 3600.0, 2),
        "measured": {
            **_errors(dyn.voltage_v, sim.voltage_v, sim.soc),
            "ecm_seconds": round(ecm_s, 2),
        },
    }
    if not use_pybamm:
        out["pybamm"] = "skipped"
        return out
    res = run_pybamm(dyn, model_name)
    if isinstance(res, str):
        out["pybamm"] = res
        return out
    v_pb, seconds = res
    out["pybamm"] = {
        "model": model_name,
        "parameter_set": "Prada2013",
        "vs_measured": _errors(dyn.voltage_v, v_pb, sim.soc),
        "ecm_vs_pybamm": _errors(sim.voltage_v, v_pb, sim.soc),
        "solve_seconds": round(seconds, 1),
    }
    return out


def nmc() -> dict[str, Any]:
    """Nissan Leaf set against the HPPC (in-sample) and 1C cycling (out-of-sample) files."""
    params = load_cell_params("nmc")
    hppc = read_cell_log(DATA / "leaf_hppc_25c.csv.gz")[0]
    sim = simulate_log(params, hppc, soc0=1.0, temperature_degc=25.0)
    cyc = read_cell_log(DATA / "leaf_1c_discharge_25c.csv.gz")[0]
    soc0 = soc_from_ocv(params, float(cyc.voltage_v[0]), 25.0)
    sim_c = simulate_log(params, cyc, soc0=soc0, temperature_degc=25.0)
    return {
        "hppc_25c": {
            "test": "NissanLeaf-cell-Low-Current-HPPC-25C-2 from the full point (fit data)",
            "samples": len(hppc),
            **_errors(hppc.voltage_v, sim.voltage_v, sim.soc),
        },
        "cycling_1c_25c": {
            "test": "1C-Discharge-Bitrode-data (5 x 1C discharge, C/2 CC-CV charge)",
            "samples": len(cyc),
            "start_soc": round(soc0, 4),
            **_errors(cyc.voltage_v, sim_c.voltage_v, sim_c.soc),
        },
    }


def main() -> None:
    """Run the validation and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dfn", action="store_true", help="PyBaMM DFN instead of SPMe")
    ap.add_argument("--no-pybamm", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    result: dict[str, Any] = {
        "lfp_a123": lfp(not args.no_pybamm, "DFN" if args.dfn else "SPMe"),
        "nmc_leaf": nmc(),
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
