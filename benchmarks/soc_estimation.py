"""SoC estimation benchmark: sigma-point Kalman filter vs plain EKF vs coulomb counting.

Prints one JSON object. Conditions (the targets of issue 3): the estimators start 20 % below
the true SoC (std 0.2), the voltage carries 2 mV of white noise and the current a 0.5 % gain
error; the RMSE is taken after the first 10 minutes. Estimators:

- ``spkf``: :class:`openbess.bms.kalman.SocKalmanFilter`, sigma-point, with the current-offset
  state (the default configuration);
- ``bms_online``: :class:`openbess.bms.estimator.OnlineEstimator`, the same filter as the BMS
  runs it (coulomb count every sample, full update every 5 s, the BMS's default);
- ``spkf_no_bias``: the sigma-point filter without the offset state;
- ``ekf``: the default model and tuning with the extended Kalman filter's linearisation;
- ``ekf_plain``: plain EKF, no offset state;
- ``coulomb_counting``: charge counting from the same wrong start;
- ``cc_ocv_rest``: :class:`openbess.bms.estimator.SocEstimator` (coulomb counting with OCV
  correction after 30 min rests; it starts from the first voltage reading, not from the
  wrong start).

Datasets:

(a) ``a123_measured``: the measured A123 LFP dynamic test at 25 degC (``A123_DYN_50_P25_s1``,
    starts full, UDDS-like profile to the lower cut-off, 1 s, 10.2 h), cell model: the
    built-in ``lfp`` set (its dynamics were fitted on this test: in-sample). Truth: the lab's
    coulomb count from the cycler's charge counters (``benchmarks/data/soc_estimation``),
    SoC 1 at the start, with the capacity and coulombic efficiency of the A123 OCV tests.
(b) ``pybamm_lfp`` / ``pybamm_nmc``: PyBaMM (SPMe) with the Prada2013 LFP (2.5-3.6 V) and
    Chen2020 NMC (2.5-4.2 V) parameter sets. A slow OCV test (C/20 discharge and charge with
    rests) and a multi-rate HPPC test are simulated, a cell is characterised from them by
    :func:`openbess.cell.characterize.characterize` (the code of ``openbess characterize``;
    PyBaMM's parameters are not used), then the A123 current profile, scaled to the cell's
    capacity (x0.9, so it stays above the cut-off), is run from full and estimated. Truth:
    PyBaMM's SoC from the average negative-electrode stoichiometry (0 and 1 at the OCV
    limits).

Extra scenarios per dataset: a current-sensor offset of +1 % of the capacity per hour on top
(``with_offset``), and a start in the middle of the profile (``start_mid``: the estimators
start at the sample where the true SoC first falls below 0.6, 20 % low) - on a flat LFP curve
the hard case, since no voltage region there is informative.

Speed: one filter update for 100,000 cells (LFP set with four temperatures, per-cell
temperatures 15-35 degC), compiled (the default) and with numpy: median wall time and CPU time
of the process over repeated updates, with the machine's load average (the wall time on a
shared machine includes waiting).

Usage: ``python benchmarks/soc_estimation.py [--no-pybamm] [--cells 100000] [--quick]``.
PyBaMM is the optional ``bench`` extra; nothing is cached.
"""

from __future__ import annotations

import os

# Small least-squares problems: a multi-threaded BLAS only adds contention.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from openbess.bms.estimator import OnlineEstimator, SocEstimator
from openbess.bms.kalman import KalmanConfig, SocKalmanFilter, replay
from openbess.cell.characterize import characterize
from openbess.cell.ecm import CellModel
from openbess.cell.io import CellLog, read_cell_log, write_cell_log
from openbess.cell.params import CellParams, load_cell_params
from openbess.cli_cell import soc_error_summary

DATA = Path(__file__).resolve().parent / "data"
INITIAL_ERROR = 0.2
VOLTAGE_NOISE_V = 0.002
GAIN_ERROR = 0.005
OFFSET_C = 0.01  # current-sensor offset of the extra scenario [C-rate]
SEED = 7
A123_ETA = 0.99523  # coulombic efficiency of the A123 OCV tests at 25 degC (built-in lfp set)


# -- estimators ---------------------------------------------------------------------------


def run_filters(
    params: CellParams,
    time_s: np.ndarray,
    current_a: np.ndarray,
    voltage_v: np.ndarray,
    soc0: np.ndarray,
    temperature_degc: float = 25.0,
) -> dict[str, np.ndarray]:
    """SoC of every estimator along a log of N cells (current and voltage shape ``(n, N)``)."""
    model = CellModel(params)
    n, cells = current_a.shape
    configs = {
        "spkf": KalmanConfig(),
        "spkf_no_bias": KalmanConfig(estimate_bias=False),
        "ekf": KalmanConfig(method="ekf"),
        "ekf_plain": KalmanConfig(method="ekf", estimate_bias=False),
    }
    filters = {k: SocKalmanFilter(model, cells, c) for k, c in configs.items()}
    names = (*configs, "bms_online", "spkf_std", "cc_ocv_rest")
    out = {k: np.empty((n, cells)) for k in names}
    for f in filters.values():
        f.initialise(soc0, INITIAL_ERROR)
    # The BMS's estimator, each column a string of one cell, started at the same wrong SoC.
    online = OnlineEstimator(model, cells, 1, 1)
    online.initialise(float(time_s[0]), soc0, INITIAL_ERROR, temperature_degc)
    base = SocEstimator(model, cells)
    temp = np.full(cells, temperature_degc)
    valid = np.ones(cells, dtype=bool)
    for k in range(n):
        dt = float(time_s[k] - time_s[k - 1]) if k else 0.0
        for name, f in filters.items():
            if k:
                f.step(dt, current_a[k], voltage_v[k], temp)
            out[name][k] = f.soc
        if k:
            online.update(float(time_s[k]), current_a[k], voltage_v[k], valid, temp)
        out["bms_online"][k] = online.soc
        out["spkf_std"][k] = filters["spkf"].soc_std
        out["cc_ocv_rest"][k] = base.update(dt, current_a[k], voltage_v[k], valid, temp)
    # Coulomb counting from the same wrong start (efficiency on charge, clipped).
    eta = np.where(current_a < 0, float(model.coulombic_efficiency(np.array([25.0]))[0]), 1.0)
    dq = np.zeros_like(current_a)
    dq[1:] = eta[1:] * current_a[1:] * np.diff(time_s)[:, None] / (3600.0 * params.capacity_ah)
    out["coulomb_counting"] = np.clip(soc0[None, :] - np.cumsum(dq, axis=0), 0.0, 1.0)
    return out


def scenario_results(
    time_s: np.ndarray, est: dict[str, np.ndarray], truth: np.ndarray, col: int
) -> dict[str, Any]:
    """Error summaries of every estimator for one cell column."""
    res: dict[str, Any] = {}
    for name in (
        "spkf",
        "bms_online",
        "spkf_no_bias",
        "ekf",
        "ekf_plain",
        "coulomb_counting",
        "cc_ocv_rest",
    ):
        res[name] = soc_error_summary(time_s, est[name][:, col], truth)
    res["spkf"]["final_soc_std"] = round(float(est["spkf_std"][-1, col]), 5)
    err = est["spkf"][:, col] - truth
    late = time_s - time_s[0] >= 600.0
    res["spkf"]["error_within_2_std_fraction"] = round(
        float(np.mean(np.abs(err[late]) <= 2.0 * est["spkf_std"][late, col])), 3
    )
    return res


def evaluate(
    params: CellParams,
    time_s: np.ndarray,
    current_a: np.ndarray,
    voltage_v: np.ndarray,
    truth: np.ndarray,
    quick: bool,
) -> dict[str, Any]:
    """The three scenarios on one dataset (measured current and voltage, true SoC)."""
    rng = np.random.default_rng(SEED)
    cap = params.capacity_ah
    v_meas = voltage_v + rng.normal(0.0, VOLTAGE_NOISE_V, voltage_v.size)
    i_meas = current_a * (1.0 + GAIN_ERROR)
    i_off = i_meas + OFFSET_C * cap
    soc0 = max(float(truth[0]) - INITIAL_ERROR, 0.0)
    start = time.perf_counter()
    est = run_filters(
        params,
        time_s,
        np.column_stack([i_meas, i_off]),
        np.column_stack([v_meas, v_meas]),
        np.array([soc0, soc0]),
    )
    out: dict[str, Any] = {
        "samples": int(time_s.size),
        "duration_h": round(float(time_s[-1] - time_s[0]) / 3600.0, 2),
        "true_soc_range": [round(float(truth.min()), 3), round(float(truth.max()), 3)],
        "initial_estimate": round(soc0, 3),
        "nominal": scenario_results(time_s, est, truth, 0),
        "with_offset": {
            "offset_a": round(OFFSET_C * cap, 4),
            **scenario_results(time_s, est, truth, 1),
        },
    }
    if not quick:
        k0 = int(np.argmax(truth < 0.6))
        sl = slice(k0, None)
        soc_mid = max(float(truth[k0]) - INITIAL_ERROR, 0.0)
        est_mid = run_filters(
            params,
            time_s[sl],
            i_meas[sl, None],
            v_meas[sl, None],
            np.array([soc_mid]),
        )
        out["start_mid"] = {
            "start_time_s": round(float(time_s[k0] - time_s[0]), 1),
            "true_soc_at_start": round(float(truth[k0]), 3),
            **scenario_results(time_s[sl], est_mid, truth[sl], 0),
        }
        # SoH and resistance along the nominal run (BatteryStateEstimator).
        model = CellModel(params)
        rep = replay(
            model,
            time_s,
            i_meas,
            v_meas,
            np.full(time_s.size, 25.0),
            initial_soc=soc0,
            initial_soc_std=INITIAL_ERROR,
        )
        out["health_at_end"] = {
            "capacity_ah": round(float(rep.capacity_ah[-1, 0]), 4),
            "capacity_std_ah": round(float(rep.capacity_std_ah[-1, 0]), 4),
            "capacity_of_model_ah": round(cap, 4),
            "resistance_mohm": round(1e3 * float(rep.resistance_ohm[-1, 0]), 3),
            "resistance_std_mohm": round(1e3 * float(rep.resistance_std_ohm[-1, 0]), 3),
            "resistance_over_r0_table": round(
                float(
                    rep.resistance_ohm[-1, 0] / model.tables(rep.soc[-1], np.array([25.0]))[2][0]
                ),
                3,
            ),
        }
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


# -- (a) measured A123 --------------------------------------------------------------------


def a123(quick: bool) -> dict[str, Any]:
    """The measured A123 dynamic test with the built-in LFP set."""
    params = load_cell_params("lfp")
    lg = read_cell_log(DATA / "a123_dyn_25c_s1.csv.gz")[0]
    counters = np.loadtxt(
        DATA / "soc_estimation" / "a123_dyn_25c_s1_counters.csv.gz", delimiter=",", skiprows=3
    )
    t = lg.time_s
    chg = np.interp(t, counters[:, 0], counters[:, 1])
    dis = np.interp(t, counters[:, 0], counters[:, 2])
    truth = 1.0 - ((dis - dis[0]) - A123_ETA * (chg - chg[0])) / params.capacity_ah
    res = evaluate(params, t, lg.current_a, lg.voltage_v, truth, quick)
    return {
        "test": "A123_DYN_50_P25_s1 (measured, 25 degC)",
        "cell": "built-in lfp (dynamics fitted on this test: in-sample)",
        "truth": "cycler charge counters, SoC 1 at the start",
        **res,
    }


# -- (b) PyBaMM ---------------------------------------------------------------------------

PYBAMM_SETS = {"lfp": ("Prada2013", 2.5, 3.6), "nmc": ("Chen2020", 2.5, 4.2)}


def _parameter_values(pybamm: Any, chem: str) -> tuple[Any, float, float]:
    name, vmin, vmax = PYBAMM_SETS[chem]
    pv = pybamm.ParameterValues(name)
    pv["Lower voltage cut-off [V]"] = vmin
    pv["Upper voltage cut-off [V]"] = vmax
    pv["Open-circuit voltage at 0% SOC [V]"] = vmin
    pv["Open-circuit voltage at 100% SOC [V]"] = vmax
    return pv, vmin, vmax


def _experiment_log(pybamm: Any, chem: str, steps: list[Any], source: str) -> CellLog:
    pv, _, _ = _parameter_values(pybamm, chem)
    sim = pybamm.Simulation(
        pybamm.lithium_ion.SPMe(),
        parameter_values=pv,
        experiment=pybamm.Experiment(steps),
        solver=pybamm.IDAKLUSolver(),
    )
    sol = sim.solve(initial_soc=1.0)
    t = sol["Time [s]"].entries
    keep = np.concatenate(([True], np.diff(t) > 1e-6))
    return CellLog(
        np.round(t[keep], 3),
        sol["Current [A]"].entries[keep],
        sol["Voltage [V]"].entries[keep],
        np.full(int(keep.sum()), 25.0),
        source=source,
    )


def pybamm_tests(pybamm: Any, chem: str) -> tuple[CellLog, CellLog]:
    """Slow OCV test and multi-rate HPPC test, both from full (SPMe)."""
    _, vmin, vmax = _parameter_values(pybamm, chem)
    step = pybamm.step
    ocv_steps = [
        step.rest(3600, period=60),
        step.string(f"Discharge at C/20 until {vmin} V", period=60),
        step.rest(7200, period=60),
        step.string(f"Charge at C/20 until {vmax} V", period=60),
        step.rest(7200, period=60),
    ]
    hppc_steps = [step.rest(3600, period=60)]
    for _ in range(10):
        for rate, direction in (
            (1, "Discharge"),
            (0.75, "Charge"),
            (3, "Discharge"),
            (2, "Charge"),
        ):
            lim = vmin if direction == "Discharge" else vmax
            hppc_steps += [
                step.string(f"{direction} at {rate}C for 10 seconds or until {lim} V", period=1),
                step.rest(40, period=2),
            ]
        hppc_steps += [
            step.string(f"Discharge at 0.5C for 12 minutes or until {vmin} V", period=5),
            step.rest(3600, period=30),
        ]
    return (
        _experiment_log(pybamm, chem, ocv_steps, f"pybamm_{chem}_ocv.csv"),
        _experiment_log(pybamm, chem, hppc_steps, f"pybamm_{chem}_hppc.csv"),
    )


def pybamm_dynamic(pybamm: Any, chem: str) -> tuple[np.ndarray, ...]:
    """The A123 current profile scaled to the cell, from full; time, current, voltage, SoC."""
    from pybamm.models.full_battery_models.lithium_ion.electrode_soh import (
        get_min_max_stoichiometries,
    )

    pv, vmin, vmax = _parameter_values(pybamm, chem)
    x0, x100, _, _ = get_min_max_stoichiometries(pv)
    src = read_cell_log(DATA / "a123_dyn_25c_s1.csv.gz")[0]
    t = src.time_s - src.time_s[0]
    cur = src.current_a * 0.9 * float(pv["Nominal cell capacity [A.h]"]) / 2.07338
    pv["Lower voltage cut-off [V]"] = vmin - 0.5  # no solver stop at the window
    pv["Upper voltage cut-off [V]"] = vmax + 0.5
    pv["Current function [A]"] = pybamm.Interpolant(t, cur, pybamm.t, interpolator="linear")
    sim = pybamm.Simulation(
        pybamm.lithium_ion.SPMe(), parameter_values=pv, solver=pybamm.IDAKLUSolver()
    )
    sol = sim.solve(t_eval=[0.0, float(t[-1])], t_interp=t, initial_soc=1.0)
    x = sol["Average negative particle stoichiometry"].entries
    v = sol["Voltage [V]"].entries
    if v.size != t.size:
        raise RuntimeError(f"PyBaMM stopped early at {float(sol.t[-1]):.0f} s")
    return t, cur, v, (x - x0) / (x100 - x0)


def true_ocv(pybamm: Any, chem: str, soc: np.ndarray) -> np.ndarray:
    """PyBaMM's equilibrium OCV at the SoC (stoichiometries linear in the SoC)."""
    from pybamm.models.full_battery_models.lithium_ion.electrode_soh import (
        get_min_max_stoichiometries,
    )

    pv, _, _ = _parameter_values(pybamm, chem)
    x0, x100, y100, y0 = get_min_max_stoichiometries(pv)
    un = pv["Negative electrode OCP [V]"]
    up = pv["Positive electrode OCP [V]"]
    out = []
    for z in soc:
        x = pybamm.Scalar(x0 + z * (x100 - x0))
        y = pybamm.Scalar(y0 + z * (y100 - y0))
        try:
            u = pv.evaluate(up(y, pybamm.Scalar(298.15))) - pv.evaluate(
                un(x, pybamm.Scalar(298.15))
            )
        except TypeError:  # OCP functions of stoichiometry only
            u = pv.evaluate(up(y)) - pv.evaluate(un(x))
        out.append(float(np.squeeze(u)))
    return np.asarray(out)


def pybamm_case(pybamm: Any, chem: str, quick: bool, workdir: Path) -> dict[str, Any]:
    """Characterise from simulated tests, then estimate along the simulated dynamic profile."""
    start = time.perf_counter()
    ocv_log, hppc_log = pybamm_tests(pybamm, chem)
    for lg in (ocv_log, hppc_log):
        write_cell_log(workdir / lg.source, lg)
    logs = [read_cell_log(workdir / lg.source)[0] for lg in (ocv_log, hppc_log)]
    logs = [replace(lg, source=Path(lg.source).name) for lg in logs]
    sim_s = time.perf_counter() - start
    start = time.perf_counter()
    char = characterize(logs, name=f"pybamm_{chem}")
    toml_path = workdir / f"pybamm_{chem}.toml"
    toml_path.write_text(char.to_toml())
    params = load_cell_params(toml_path)
    char_s = time.perf_counter() - start
    grid = np.linspace(0.05, 0.95, 19)
    ocv_err = CellModel(params).ocv(grid, 25.0) - true_ocv(pybamm, chem, grid)
    start = time.perf_counter()
    t, cur, v, truth = pybamm_dynamic(pybamm, chem)
    dyn_s = time.perf_counter() - start
    res = evaluate(params, t, cur, v, truth, quick)
    pv, _, _ = _parameter_values(pybamm, chem)
    return {
        "parameter_set": PYBAMM_SETS[chem][0],
        "model": "SPMe",
        "characterization": {
            **{k: char.summary()[k] for k in ("capacity_ah", "r0_mohm_at_50pct", "rc_tau_s")},
            "hysteresis_max_mv": char.summary()["hysteresis_max_mv"],
            "tests": {t.source: t.kind for t in char.tests},
            "hppc_fit_rmse_mv": next(
                (t.fit_rmse_mv for t in char.tests if t.fit_rmse_mv is not None), None
            ),
            "ocv_error_mv_rms_soc_0.05_0.95": round(1e3 * float(np.sqrt(np.mean(ocv_err**2))), 2),
            "ocv_error_mv_max_soc_0.05_0.95": round(1e3 * float(np.max(np.abs(ocv_err))), 2),
            "nominal_capacity_ah": float(pv["Nominal cell capacity [A.h]"]),
        },
        "pybamm_seconds": round(sim_s + dyn_s, 1),
        "characterize_seconds": round(char_s, 1),
        **res,
    }


# -- speed --------------------------------------------------------------------------------


def speed(n_cells: int, repeats: int = 30) -> dict[str, Any]:
    """Time of one filter update for ``n_cells`` cells (wall and CPU)."""
    model = CellModel(load_cell_params("lfp"))
    rng = np.random.default_rng(SEED)
    temp = rng.uniform(15.0, 35.0, n_cells)
    cur = np.full(n_cells, 1.0)
    out: dict[str, Any] = {"cells": n_cells, "cell_set": "lfp (4 temperatures, 2 RC)"}
    for name, method, compiled in (
        ("spkf", "spkf", True),
        ("ekf", "ekf", True),
        ("spkf_numpy", "spkf", False),
    ):
        cfg = KalmanConfig(method=method, compiled=compiled)  # type: ignore[arg-type]
        f = SocKalmanFilter(model, n_cells, cfg)
        f.initialise(rng.uniform(0.2, 0.8, n_cells), 0.1)
        volt = model.ocv(f.soc, 25.0) + rng.normal(0.0, 0.002, n_cells)
        for _ in range(3):
            f.step(1.0, cur, volt, temp)
        wall, cpu = [], []
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            f.step(1.0, cur, volt, temp)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        out[name] = {
            "states": f.n_states,
            "update_ms_wall_median": round(1e3 * float(np.median(wall)), 2),
            "update_ms_wall_min": round(1e3 * float(np.min(wall)), 2),
            "update_ms_cpu_median": round(1e3 * float(np.median(cpu)), 2),
        }
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    out["cpu_count"] = os.cpu_count()
    return out


def main() -> None:
    """Run the benchmark and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-pybamm", action="store_true", help="skip the PyBaMM cases")
    ap.add_argument("--cells", type=int, default=100_000, help="cells of the speed test")
    ap.add_argument("--quick", action="store_true", help="skip the mid-start and SoH runs")
    args = ap.parse_args()
    start = time.perf_counter()
    result: dict[str, Any] = {
        "conditions": {
            "initial_soc_error": -INITIAL_ERROR,
            "voltage_noise_mv": 1e3 * VOLTAGE_NOISE_V,
            "current_gain_error": GAIN_ERROR,
            "offset_scenario_c_rate": OFFSET_C,
            "rmse_window": "after the first 10 minutes",
            "convergence": "first time the error stays within 2 % for 10 minutes",
            "seed": SEED,
        },
        "a123_measured": a123(args.quick),
    }
    if args.no_pybamm:
        result["pybamm"] = "skipped"
    else:
        try:
            import pybamm
        except ImportError:
            result["pybamm"] = "not installed (pip install openbess[bench])"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                for chem in ("lfp", "nmc"):
                    result[f"pybamm_{chem}"] = pybamm_case(pybamm, chem, args.quick, Path(tmp))
    result["speed"] = speed(args.cells)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
