"""Fit the two built-in cell parameter sets from measured data and write their TOML files.

Usage::

    .venv/bin/python scripts/fit_cells.py [--source /work/shared/data] [--only lfp,nmc]
        [--out src/openbess/cell/data] [--bench-data benchmarks/data] [--no-bench-data]

Inputs (see ``/work/shared/data/README.md``; both MIT licensed):

- ``cells/a123_lfp``: Plett's ESC toolbox data (GitHub batterysim/esctoolbox-python): OCV
  scripts S1..S4 at -5, 5, 25, 45 degC (Arbin, 10 s) and the dynamic test at 25 degC
  (``A123_DYN_50_P25_s1``: starts full, UDDS-like profile to the lower cut-off, 1 s).
- ``cells/nissan_leaf``: ORNL Nissan Leaf 2013 cell (GitHub batterysim/nissan-leaf-data, Zenodo
  10.5281/zenodo.2580327): HPPC tests at 10, 25, 40 degC (Bitrode), 1C discharge cycles.

LFP (``lfp_a123``):
  1. OCV, hysteresis M, capacity, coulombic efficiency: :func:`fit_ocv_plett` (OCV smoothed
     linearly in temperature over the positive temperatures, as Plett does).
  2. R0, two RC pairs (SoC-dependent), gamma and a scale on M: :func:`fit_ecm_dynamic` on the
     25 degC dynamic test, with the current calibrated to the cycler's charge counters.
  3. Other temperatures: the 25 degC resistances scaled by the ratio of the apparent step
     resistance of the OCV scripts at that temperature (the only resistance data at -5, 5,
     45 degC); time constants kept.
NMC (``nmc_leaf``):
  1. OCV at 10, 25, 40 degC from the end of the 1 h rests of the HPPC tests (SoC from the full
     point, counted with the 25 degC capacity); below the last rest (SoC ~0.06) the final 10 A
     discharge, shifted by a relaxation offset blended from the one measured at the last rest
     to the one that ends on the rested voltage after the 1C discharges to 3.0 V (30 min
     rests, ``1C-Discharge-Bitrode-data.csv``). M = 0 (no charge-side OCV data).
  2. R0 and two RC pairs per temperature: :func:`fit_ecm_dynamic` on each whole HPPC test from
     the full point.

Ageing coefficients are the published ones (Naumann 2018/2020 for LFP, Schmalstieg 2014 for
NMC), converted to the form of :mod:`openbess.cell.ageing`; see the README next to the TOML
files.

With ``--bench-data`` the compact measured data used by ``benchmarks/ecm_validation.py`` and
``tests/cell`` are (re)written in our log format (gzip CSV).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np

from openbess.cell.ageing import ageing_params
from openbess.cell.fit import (
    DynamicFit,
    OcvFit,
    PlettScripts,
    current_runs,
    fit_ecm_dynamic,
    fit_ocv_plett,
    format_cell_params_toml,
    ocv_points_from_rests,
    ocv_table_from_points,
    placeholder_params,
    simulate_log,
    soc_grid,
    soc_trajectory,
    with_dynamics,
)
from openbess.cell.io import (
    CellLog,
    read_a123_dyn_csv,
    read_arbin_csv,
    read_bitrode_csv,
    write_cell_log,
)
from openbess.cell.params import CellParams, ThermalParams, parse_cell_params

log = logging.getLogger("fit_cells")

ROOT = Path(__file__).resolve().parents[1]

LFP_TEMPS = {-5.0: "N05", 5.0: "P05", 25.0: "P25", 45.0: "P45"}
LFP_KNOTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0)
LEAF_HPPC = {
    10.0: "NissanLeaf-cell-Low-Current-HPPC-10C.csv",
    25.0: "NissanLeaf-cell-Low-Current-HPPC-25C-2.csv",
    40.0: "NissanLeaf-cell-Low-Current-HPPC-40C-1.csv",
}
LEAF_KNOTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# -- ageing coefficients ------------------------------------------------------------------
# Naumann et al. 2018 (calendar) and 2020 (cycle), Sony/Murata US26650FTC1 LFP/graphite.
#  calendar capacity  Q = 1.2571e-5 s^-0.5 * exp(-17126/R (1/T - 1/298.15))
#                         * (2.8575 (SoC - 0.5)^3 + 0.60225) * sqrt(t[s])
#  calendar resistance R = 3.4194e-10 s^-1 * exp(-71827/R (...)) * (-3.3903 (SoC-0.5)^2 + 1.5604) t
#  cycle capacity [%]  = (0.0630 C + 0.0971) (4.0253 (DOC - 0.6)^3 + 1.0923) sqrt(FEC)
#  cycle resistance[%] = (-0.0020 C + 0.0021) (6.8477 (DOC - 0.5)^3 + 0.9182) FEC
# Cycle temperature dependence (not part of Naumann 2020): activation energy 31.7 kJ/mol of
# Wang et al. 2011 (A123 LFP cycle-life model), reference 40 degC (assumed test temperature).
_SQRT_DAY = math.sqrt(86400.0)
WANG_EA_J_PER_MOL = 31700.0
LFP_AGEING: dict[str, float] = {
    "cal_q_k": 1.2571e-5 * _SQRT_DAY,
    "cal_q_z": 0.5,
    "cal_q_ea_j_per_mol": 17126.0,
    "cal_q_tref_degc": 25.0,
    "cal_q_soc_center": 0.5,
    "cal_q_soc_c0": 0.60225,
    "cal_q_soc_c1": 0.0,
    "cal_q_soc_c2": 0.0,
    "cal_q_soc_c3": 2.8575,
    "cal_r_k": 3.4194e-10 * 86400.0,
    "cal_r_z": 1.0,
    "cal_r_ea_j_per_mol": 71827.0,
    "cal_r_tref_degc": 25.0,
    "cal_r_soc_center": 0.5,
    "cal_r_soc_c0": 1.5604,
    "cal_r_soc_c1": 0.0,
    "cal_r_soc_c2": -3.3903,
    "cal_r_soc_c3": 0.0,
    "cyc_q_k": 0.01,
    "cyc_q_z": 0.5,
    "cyc_q_ea_j_per_mol": WANG_EA_J_PER_MOL,
    "cyc_q_tref_degc": 40.0,
    "cyc_q_crate_c0": 0.0971,
    "cyc_q_crate_c1": 0.0630,
    "cyc_q_dod_center": 0.6,
    "cyc_q_dod_c0": 1.0923,
    "cyc_q_dod_c1": 0.0,
    "cyc_q_dod_c2": 0.0,
    "cyc_q_dod_c3": 4.0253,
    "cyc_r_k": 0.01,
    "cyc_r_z": 1.0,
    "cyc_r_ea_j_per_mol": WANG_EA_J_PER_MOL,
    "cyc_r_tref_degc": 40.0,
    "cyc_r_crate_c0": 0.0021,
    "cyc_r_crate_c1": -0.0020,
    "cyc_r_dod_center": 0.5,
    "cyc_r_dod_c0": 0.9182,
    "cyc_r_dod_c1": 0.0,
    "cyc_r_dod_c2": 0.0,
    "cyc_r_dod_c3": 6.8477,
    "cycle_deadband_soc": 0.01,
}

# Schmalstieg et al. 2014, Sanyo UR18650E NMC/graphite (2.05 Ah), t in days, Q in Ah:
#  alpha_cap = (7.543 V - 23.75) 1e6 exp(-6976/T),  capacity -= alpha_cap t^0.75
#  alpha_res = (5.270 V - 16.32) 1e5 exp(-5986/T),  resistance += alpha_res t^0.75
#  beta_cap = 7.348e-3 (V_mean - 3.667)^2 + 7.6e-4 + 4.081e-3 DOD,  capacity -= beta_cap sqrt(Q)
#  beta_res = 2.153e-4 (V_mean - 3.725)^2 - 1.521e-5 + 2.798e-4 DOD, resistance += beta_res Q
# V is the cell voltage at the storage SoC: we use the fitted Leaf OCV at 25 degC and fit a
# cubic in SoC to the voltage factor. Q [Ah] of the 2.05 Ah cell = 2 * 2.05 * FEC. The V_mean
# terms of the cycle factors are dropped (zero at V_mean = 3.667 / 3.725 V). Cycle tests ran
# at 35 degC and 1C; temperature dependence of the cycle part: Wang 2011 (as for LFP).
SCHMALSTIEG_AH = 2.05
R_GAS = 8.314462618


def nmc_ageing(ocv_25_v: np.ndarray) -> dict[str, float]:
    """Schmalstieg 2014 coefficients in the form of :mod:`openbess.cell.ageing`."""
    grid = soc_grid(ocv_25_v.size)
    tref = 298.15
    out: dict[str, float] = {}
    for part, a, b, scale, theta, tref_c in (
        ("cal_q", 7.543, -23.75, 1e6, 6976.0, 25.0),
        ("cal_r", 5.270, -16.32, 1e5, 5986.0, 25.0),
    ):
        factor = a * ocv_25_v + b
        # Fit the cubic where the factor is positive (it is clipped at zero anyway).
        use = factor > 0
        coef = np.polyfit(grid[use] - 0.5, factor[use], 3)
        out.update(
            {
                f"{part}_k": scale * math.exp(-theta / tref),
                f"{part}_z": 0.75,
                f"{part}_ea_j_per_mol": theta * R_GAS,
                f"{part}_tref_degc": tref_c,
                f"{part}_soc_center": 0.5,
                f"{part}_soc_c0": float(coef[3]),
                f"{part}_soc_c1": float(coef[2]),
                f"{part}_soc_c2": float(coef[1]),
                f"{part}_soc_c3": float(coef[0]),
            }
        )
    k_q = math.sqrt(2.0 * SCHMALSTIEG_AH)
    k_r = 2.0 * SCHMALSTIEG_AH
    for part, k, z, c0, c1 in (
        ("cyc_q", 1.0, 0.5, 7.6e-4 * k_q, 4.081e-3 * k_q),
        ("cyc_r", 1.0, 1.0, -1.521e-5 * k_r, 2.798e-4 * k_r),
    ):
        out.update(
            {
                f"{part}_k": k,
                f"{part}_z": z,
                f"{part}_ea_j_per_mol": WANG_EA_J_PER_MOL,
                f"{part}_tref_degc": 35.0,
                f"{part}_crate_c0": 1.0,
                f"{part}_crate_c1": 0.0,
                f"{part}_dod_center": 0.0,
                f"{part}_dod_c0": c0,
                f"{part}_dod_c1": c1,
                f"{part}_dod_c2": 0.0,
                f"{part}_dod_c3": 0.0,
            }
        )
    out["cycle_deadband_soc"] = 0.01
    return out


# -- LFP -----------------------------------------------------------------------------------


def read_lfp_dyn(source: Path) -> CellLog:
    """The 25 degC dynamic test (script 1, starts full), current calibrated to the counters."""
    return read_a123_dyn_csv(
        source / "cells/a123_lfp/dyn/A123_DYN_50_P25_s1.csv", 25.0, calibrate_to_counters=True
    )


def fit_lfp(source: Path) -> tuple[CellParams, dict[str, float]]:
    """Fit the A123 LFP set; returns it and a few figures for the log."""
    scripts = {
        t: PlettScripts(
            *(
                read_arbin_csv(source / f"cells/a123_lfp/ocv/A123_OCV_{tag}_S{k}.csv", t)
                for k in (1, 2, 3, 4)
            )
        )
        for t, tag in LFP_TEMPS.items()
    }
    ocv: OcvFit = fit_ocv_plett(scripts, soc_points=21)
    k25 = int(np.argmin(np.abs(ocv.temperature_degc - 25.0)))
    capacity = float(ocv.capacity_ah[k25])
    log.info(
        "LFP OCV: capacity %s Ah, eta %s, step resistance %s ohm",
        np.round(ocv.capacity_ah, 4),
        np.round(ocv.coulombic_efficiency, 5),
        np.round(ocv.step_resistance_ohm, 4),
    )
    base = placeholder_params(
        "lfp_a123",
        "LFP",
        ocv,
        capacity,
        voltage_min_v=2.0,
        voltage_max_v=3.65,
        nominal_voltage_v=3.3,
        thermal=ThermalParams(
            mass_kg=0.076, specific_heat_j_per_kg_k=1100.0, conductance_to_coolant_w_per_k=0.2
        ),
    )
    dyn = read_lfp_dyn(source)
    fit: DynamicFit = fit_ecm_dynamic(
        dyn,
        base,
        soc0=1.0,
        temperature_degc=25.0,
        hysteresis0=1.0,
        n_rc=2,
        tau_guess_s=(5.0, 60.0),
        soc_knots=LFP_KNOTS,
        gamma_guess=50.0,
        max_evaluations=300,
    )
    ratio = {
        float(t): float(ocv.step_resistance_ohm[j] / ocv.step_resistance_ohm[k25])
        for j, t in enumerate(ocv.temperature_degc)
    }
    params = with_dynamics(base, {25.0: fit}, resistance_ratio=ratio)
    params = replace(
        params,
        source=(
            "Fitted by scripts/fit_cells.py: OCV, hysteresis, capacity and coulombic efficiency "
            "from the A123 OCV tests S1-S4 at -5/5/25/45 degC (Plett's method); R0, 2 RC pairs "
            "and hysteresis dynamics from the 25 degC dynamic test A123_DYN_50_P25_s1; "
            "resistances at other temperatures scaled by the OCV-test step resistance. Data: "
            "Plett's ESC toolbox, GitHub batterysim/esctoolbox-python (MIT licence). Ageing: "
            "Naumann et al. 2018 (J. Energy Storage 17) and 2020 (J. Power Sources 451), "
            "cycle temperature term from Wang et al. 2011 (J. Power Sources 196)."
        ),
        ageing=dict(LFP_AGEING),
    )
    ageing_params(params.ageing)  # validate
    sim = simulate_log(params, dyn, 1.0, hysteresis0=1.0, temperature_degc=25.0)
    figures = {
        "capacity_ah": capacity,
        "fit_rmse_mv": 1e3 * fit.rmse_v,
        "ecm_rmse_mv": 1e3 * sim.rmse_v,
        "ecm_max_error_mv": 1e3 * sim.max_error_v,
        "tau1_s": float(fit.rc_tau_s[0]),
        "tau2_s": float(fit.rc_tau_s[1]),
        "gamma": fit.hysteresis_rate,
        "hysteresis_scale": fit.hysteresis_scale,
    }
    return params, figures


# -- NMC (Nissan Leaf) ---------------------------------------------------------------------


def leaf_from_full(cell_log: CellLog) -> CellLog:
    """Crop an HPPC test to start at the first long rest after a charge (the full point)."""
    for a, b, s in current_runs(cell_log.current_a, 0.05):
        if (
            s == 0
            and a > 0
            and cell_log.current_a[a - 1] < 0
            and cell_log.time_s[b - 1] - cell_log.time_s[a] > 1000.0
        ):
            return cell_log.select(slice(a, None))
    raise SystemExit(f"{cell_log.source}: no rest after a full charge")


def read_leaf_hppc(source: Path, temperature_degc: float) -> CellLog:
    """HPPC test at one temperature, cropped to start full."""
    raw = read_bitrode_csv(
        source / "cells/nissan_leaf" / LEAF_HPPC[temperature_degc], temperature_degc
    )
    return leaf_from_full(raw)


def leaf_empty_rest_voltage(source: Path) -> float:
    """Mean voltage at the end of the 30 min rests after the 1C discharges to 3.0 V."""
    lg = read_bitrode_csv(source / "cells/nissan_leaf/1C-Discharge-Bitrode-data.csv", 25.0)
    ends = [
        float(lg.voltage_v[b - 1])
        for a, b, s in current_runs(lg.current_a, 0.05)
        if s == 0 and a > 0 and lg.current_a[a - 1] > 0
    ]
    if not ends:
        raise SystemExit("1C discharge file: no rest after a discharge")
    return float(np.mean(ends))


def fit_nmc(source: Path) -> tuple[CellParams, dict[str, float]]:
    """Fit the Nissan Leaf set; returns it and a few figures for the log."""
    logs = {t: read_leaf_hppc(source, t) for t in LEAF_HPPC}
    caps = {t: float(lg.discharged_ah()[-1]) for t, lg in logs.items()}
    capacity = caps[25.0]
    log.info("Leaf capacity to 3.0 V at 10 A from full: %s Ah", caps)
    ocv_empty_v = leaf_empty_rest_voltage(source)
    log.info("Leaf rested voltage after 1C discharges to 3.0 V: %.4f V", ocv_empty_v)
    grid = soc_grid(21)
    temps = np.array(sorted(logs))
    ocv = np.empty((temps.size, grid.size))
    for j, t in enumerate(temps):
        lg = logs[float(t)]
        rests = ocv_points_from_rests(lg, capacity, 1.0, min_rest_s=1800.0)
        first_rest_end = current_runs(lg.current_a, 0.05)[0][1] - 1
        zp = np.concatenate(([1.0], rests.soc))
        vp = np.concatenate(([lg.voltage_v[first_rest_end]], rests.voltage_v))
        z = soc_trajectory(lg, capacity, 1.0)
        a, b = [(a, b) for a, b, s in current_runs(lg.current_a, 0.05) if s == 1 and b - a > 50][-1]
        # Below the last rest: the final 10 A discharge, shifted up by a relaxation offset
        # blended from the one measured at the last rest to the one that puts the end of the
        # discharge (SoC 0) on the rested voltage after the 1C discharges to 3.0 V.
        shift_rest = rests.voltage_v[-1] - rests.loaded_voltage_v[-1]
        shift_end = ocv_empty_v - lg.voltage_v[b - 1]
        w = np.clip((z[a:b] - z[b - 1]) / max(z[a] - z[b - 1], 1e-9), 0.0, 1.0)
        low = (z[a:b], lg.voltage_v[a:b] + w * shift_rest + (1.0 - w) * shift_end)
        ocv[j] = ocv_table_from_points(zp, vp, grid, low_end=low)
    ocv_fit = OcvFit(
        temperature_degc=temps,
        soc=grid,
        ocv_v=ocv,
        hysteresis_v=np.zeros_like(ocv),
        capacity_ah=np.array([caps[float(t)] for t in temps]),
        coulombic_efficiency=np.ones(temps.size),
        step_resistance_ohm=np.full(temps.size, np.nan),
        raw_ocv_v=ocv.copy(),
    )
    base = placeholder_params(
        "nmc_leaf",
        "NMC",
        ocv_fit,
        capacity,
        voltage_min_v=3.0,
        voltage_max_v=4.2,
        nominal_voltage_v=3.75,
        thermal=ThermalParams(
            mass_kg=0.8, specific_heat_j_per_kg_k=1000.0, conductance_to_coolant_w_per_k=1.5
        ),
    )
    fits = {}
    figures: dict[str, float] = {"capacity_ah": capacity}
    for t, lg in logs.items():
        fits[t] = fit_ecm_dynamic(
            lg,
            base,
            soc0=1.0,
            temperature_degc=t,
            n_rc=2,
            tau_guess_s=(10.0, 150.0),
            soc_knots=LEAF_KNOTS,
            max_evaluations=150,
        )
        figures[f"fit_rmse_mv_{t:g}C"] = 1e3 * fits[t].rmse_v
    params = with_dynamics(base, fits)
    params = replace(
        params,
        hysteresis_rate=1.0,
        source=(
            "Fitted by scripts/fit_cells.py: OCV from the 1 h rests of the HPPC tests at "
            "10/25/40 degC, R0 and 2 RC pairs per temperature from the same HPPC tests (ECM "
            "least squares); no hysteresis (not identifiable from these tests). Data: ORNL "
            "Nissan Leaf 2013 cell tests, GitHub batterysim/nissan-leaf-data, Zenodo "
            "10.5281/zenodo.2580327 (MIT licence). The cell is LMO/LNO (labelled NMC for the "
            "layered-oxide family). Ageing: Schmalstieg et al. 2014 (J. Power Sources 257), "
            "cycle temperature term from Wang et al. 2011."
        ),
        ageing=nmc_ageing(params.ocv_v[int(np.argmin(np.abs(temps - 25.0)))]),
    )
    ageing_params(params.ageing)
    for t, lg in logs.items():
        sim = simulate_log(params, lg, 1.0, temperature_degc=t)
        figures[f"ecm_rmse_mv_{t:g}C"] = 1e3 * sim.rmse_v
    return params, figures


# -- benchmark data -------------------------------------------------------------------------


def write_bench_data(source: Path, out: Path) -> None:
    """Compact copies of the measured data used by the benchmark and the tests."""
    out.mkdir(parents=True, exist_ok=True)
    write_cell_log(out / "a123_dyn_25c_s1.csv.gz", read_lfp_dyn(source))
    for k in (1, 2, 3, 4):
        lg = read_arbin_csv(source / f"cells/a123_lfp/ocv/A123_OCV_P25_S{k}.csv", 25.0)
        write_cell_log(out / f"a123_ocv_25c_s{k}.csv.gz", lg)
    write_cell_log(out / "leaf_hppc_25c.csv.gz", read_leaf_hppc(source, 25.0))
    write_cell_log(
        out / "leaf_1c_discharge_25c.csv.gz",
        read_bitrode_csv(source / "cells/nissan_leaf/1C-Discharge-Bitrode-data.csv", 25.0),
    )
    log.info("wrote benchmark data to %s", out)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--out", type=Path, default=ROOT / "src/openbess/cell/data")
    ap.add_argument("--only", default="lfp,nmc")
    ap.add_argument("--bench-data", type=Path, default=ROOT / "benchmarks/data")
    ap.add_argument("--no-bench-data", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    which = {w.strip() for w in args.only.split(",") if w.strip()}
    fitters = {"lfp": (fit_lfp, "lfp_a123.toml"), "nmc": (fit_nmc, "nmc_leaf.toml")}
    for key in sorted(which):
        fitter, filename = fitters[key]
        params, figures = fitter(args.source)
        fig_text = ", ".join(f"{k} = {v:.4g}" for k, v in figures.items())
        text = format_cell_params_toml(
            params,
            header=(
                "Generated by scripts/fit_cells.py from /work/shared/data - do not edit by hand."
                f"\nFit figures: {fig_text}"
            ),
        )
        parse_cell_params(tomllib.loads(text), filename)
        (args.out / filename).write_text(text)
        log.info("%s: %s", filename, {k: round(v, 4) for k, v in figures.items()})
    if not args.no_bench_data:
        write_bench_data(args.source, args.bench_data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
