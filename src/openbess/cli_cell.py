"""The cell commands of the ``openbess`` command line: ``characterize`` and ``estimate``.

Both are plain :func:`click.command` functions; :mod:`openbess.cli` registers them on the
``openbess`` group. Output meant for people goes to stderr; ``--json`` prints one JSON object on
stdout. Errors (bad files, impossible fits) end with ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import numpy.typing as npt

from openbess.errors import DataError, OpenBessError

FloatArray = npt.NDArray[np.float64]

#: SoC error band used for the convergence time [fraction].
CONVERGED_SOC = 0.02
#: Time the error must stay inside the band to count as converged [s].
CONVERGED_HOLD_S = 600.0
#: Start of the RMSE window (the filter's first minutes are its convergence) [s].
RMSE_FROM_S = 600.0


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(2)


# -- characterize ---------------------------------------------------------------------------


@click.command("characterize")
@click.argument("tests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Cell parameter file to write (TOML).",
)
@click.option(
    "--capacity-ah",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Capacity [Ah]; default: measured by the slow discharge (or the HPPC test).",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="auto|ocv|hppc|dynamic",
    help="Test kind: once for all files, or once per file in order (default: recognised).",
)
@click.option("--name", default=None, help="Name of the parameter set (default: the output stem).")
@click.option("--chemistry", default=None, help="Chemistry label (default: guessed from the OCV).")
@click.option(
    "--soc-points",
    type=click.IntRange(min=11, max=201),
    default=41,
    show_default=True,
    help="Points of the SoC grid of the tables (41: every 2.5 %).",
)
@click.option(
    "--n-rc", type=click.IntRange(min=1, max=4), default=2, show_default=True, help="RC pairs."
)
@click.option("--json", "as_json", is_flag=True, help="Print a summary as one JSON object.")
def characterize_command(
    tests: tuple[str, ...],
    output: str,
    capacity_ah: float | None,
    kinds: tuple[str, ...],
    name: str | None,
    chemistry: str | None,
    soc_points: int,
    n_rc: int,
    as_json: bool,
) -> None:
    """Fit a cell parameter file from cell tests (our CSV log format).

    Each TEST.csv holds one cell: columns time_s, current_a (positive = discharge),
    voltage_v and optionally temperature_degc. Slow OCV tests, HPPC tests and dynamic
    profiles are recognised from the data; tests at several temperatures give temperature
    tables. The output is accepted by `simulate` and `estimate` (--cell FILE).
    """
    from openbess.cell.characterize import characterize, parse_kinds
    from openbess.cell.io import read_cell_log

    try:
        kind_list = parse_kinds(kinds, len(tests))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--kind") from None
    try:
        logs = []
        for path in tests:
            cells = read_cell_log(path)
            if len(cells) > 1:
                raise DataError(
                    f"{path}: line 1: {len(cells)} cells in one file; characterize takes one "
                    "cell per file"
                )
            logs.append(cells[0])
        result = characterize(
            logs,
            capacity_ah=capacity_ah,
            kinds=kind_list,
            soc_points=soc_points,
            n_rc=n_rc,
            name=name or Path(output).stem.split(".")[0],
            chemistry=chemistry,
        )
        text = result.to_toml()
        from openbess.cell.params import load_cell_params

        out = Path(output)
        out.write_text(text)
        load_cell_params(out)  # what we wrote must load
    except (OpenBessError, ValueError, OSError) as err:
        _fail(err)
        return
    if as_json:
        summary = result.summary()
        summary["output"] = str(output)
        click.echo(json.dumps(summary))
    else:
        for t in result.tests:
            used = ", ".join(t.used_for) or "not used"
            click.echo(f"{t.source}: {t.kind} at {t.temperature_degc:g} degC -> {used}", err=True)
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {output}", err=True)


# -- estimate ----------------------------------------------------------------------------------


def read_soc_truth(path: str | Path, n_cells: int) -> FloatArray | None:
    """Read the optional ``soc_true`` column(s) of a cell log (``soc_true_<n>`` per cell).

    Parameters
    ----------
    path : str or pathlib.Path
        The log.
    n_cells : int
        Number of cells in the log.

    Returns
    -------
    numpy.ndarray or None
        True SoC [fraction], shape ``(n_samples, n_cells)``; None without such a column.

    Raises
    ------
    DataError
        Naming file, line and column of a bad value.
    """
    from openbess.cell.io import _numeric_table, _rows

    p = Path(path)
    rows = _rows(p)
    try:
        _, header = next(rows)
    except StopIteration:
        return None
    header = [h.strip() for h in header]
    if n_cells == 1 and "soc_true" in header:
        names = ["soc_true"]
    else:
        names = [f"soc_true_{k}" for k in range(1, n_cells + 1)]
        if not all(nm in header for nm in names):
            if "soc_true" in header:
                names = ["soc_true"] * n_cells
            else:
                return None
    data, _ = _numeric_table(p, header, sorted(set(names)), rows)
    return np.column_stack([data[nm] for nm in names])


def convergence_time_s(
    time_s: FloatArray, error: FloatArray, band: float = CONVERGED_SOC, hold_s: float = 600.0
) -> float | None:
    """First time after which the error stays inside the band for ``hold_s`` [s].

    Parameters
    ----------
    time_s : numpy.ndarray
        Time [s].
    error : numpy.ndarray
        SoC error [fraction].
    band : float
        Band [fraction].
    hold_s : float
        How long the error must stay inside [s] (the rest of the log if shorter).

    Returns
    -------
    float or None
        Seconds from the start; None if it never converges.
    """
    t = time_s - time_s[0]
    inside = np.abs(error) <= band
    n = inside.size
    # Index of the next sample outside the band, from each sample on (n: none).
    pos = np.where(inside, n, np.arange(n))
    nxt = np.minimum.accumulate(pos[::-1])[::-1]
    t_next = np.where(nxt < n, t[np.minimum(nxt, n - 1)], np.inf)
    good = inside & (t_next - t >= hold_s)
    if not np.any(good):
        return None
    return float(t[int(np.argmax(good))])


def soc_error_summary(time_s: FloatArray, soc: FloatArray, truth: FloatArray) -> dict[str, Any]:
    """RMSE after the first 10 minutes, max error and convergence time of one SoC trace.

    Parameters
    ----------
    time_s : numpy.ndarray
        Time [s].
    soc, truth : numpy.ndarray
        Estimated and true SoC [fraction].

    Returns
    -------
    dict
        ``rmse_after_10min``, ``max_error_after_10min``, ``rmse_all`` [fraction] and
        ``convergence_time_s`` (2 % band held for 10 min; None if never).
    """
    err = soc - truth
    late = (time_s - time_s[0]) >= RMSE_FROM_S
    if not np.any(late):
        late = np.ones_like(err, dtype=bool)
    conv = convergence_time_s(time_s, err, CONVERGED_SOC, CONVERGED_HOLD_S)
    return {
        "rmse_after_10min": round(float(np.sqrt(np.mean(err[late] ** 2))), 5),
        "max_error_after_10min": round(float(np.max(np.abs(err[late]))), 5),
        "rmse_all": round(float(np.sqrt(np.mean(err**2))), 5),
        "convergence_time_s": None if conv is None else round(conv, 1),
    }


def _write_estimates(path: Path, columns: dict[str, FloatArray]) -> None:
    names = list(columns)
    arrays = [columns[k] for k in names]
    n = arrays[0].size
    lines = [",".join(names)]
    fmt = [("{:.3f}" if k == "time_s" else "{:.6g}") for k in names]
    for r in range(n):
        lines.append(",".join(f.format(float(a[r])) for f, a in zip(fmt, arrays, strict=True)))
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        import gzip

        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)


@click.command("estimate")
@click.argument("log_file", type=click.Path(dir_okay=False))
@click.option(
    "--cell",
    "cell",
    required=True,
    help="Cell parameters: built-in (lfp, nmc) or a TOML file (e.g. from `characterize`).",
)
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV file of the estimates per sample.",
)
@click.option(
    "--initial-soc",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Initial SoC [fraction]; default: from the first voltage reading.",
)
@click.option(
    "--initial-soc-std",
    type=click.FloatRange(min=0.0, min_open=True, max=1.0),
    default=0.2,
    show_default=True,
    help="Std of --initial-soc [fraction].",
)
@click.option(
    "--capacity-ah",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Cell capacity [Ah]; default: the parameter file's (resistances scale with it).",
)
@click.option(
    "--method",
    type=click.Choice(["spkf", "ekf"]),
    default="spkf",
    show_default=True,
    help="Sigma-point Kalman filter, or the plain EKF.",
)
@click.option("--no-bias", is_flag=True, help="Do not estimate a current-sensor offset.")
@click.option(
    "--model-error-mv",
    type=click.FloatRange(min=0.0),
    default=20.0,
    show_default=True,
    help="Voltage error of the cell model [mV] (the fit RMSE of `characterize`).",
)
@click.option(
    "--voltage-noise-mv",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="Voltage measurement noise [mV].",
)
@click.option(
    "--temperature-degc",
    type=float,
    default=25.0,
    show_default=True,
    help="Temperature where the log has none [degC].",
)
@click.option("--sop", is_flag=True, help="Add the 10 s and 60 s power limits per sample.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as one JSON object.")
def estimate_command(
    log_file: str,
    cell: str,
    output: str,
    initial_soc: float | None,
    initial_soc_std: float,
    capacity_ah: float | None,
    method: str,
    no_bias: bool,
    model_error_mv: float,
    voltage_noise_mv: float,
    temperature_degc: float,
    sop: bool,
    as_json: bool,
) -> None:
    """Replay a cell log and estimate SoC (with its std), capacity and resistance per sample.

    LOG_FILE is a cell log in our CSV format (several cells with _<n> suffixes); an optional
    soc_true column gives the RMSE in the summary. Without --initial-soc the estimator starts
    from the first voltage reading, as a BMS waking up.
    """
    from openbess.bms.kalman import KalmanConfig, replay
    from openbess.cell.ecm import CellModel
    from openbess.cell.io import read_cell_log
    from openbess.cell.params import load_cell_params, scale_to_capacity

    try:
        params = load_cell_params(cell)
        if capacity_ah is not None:
            params = scale_to_capacity(params, capacity_ah)
        logs = read_cell_log(log_file)
        truth = read_soc_truth(log_file, len(logs))
        if voltage_noise_mv <= 0 and model_error_mv <= 0:
            raise ValueError("--voltage-noise-mv or --model-error-mv must be > 0")
        config = KalmanConfig(
            method="ekf" if method == "ekf" else "spkf",
            estimate_bias=not no_bias,
            model_error_v=model_error_mv / 1000.0,
            voltage_noise_v=voltage_noise_mv / 1000.0,
        )
        t = logs[0].time_s
        cur = np.column_stack([lg.current_a for lg in logs])
        volt = np.column_stack([lg.voltage_v for lg in logs])
        temp = np.column_stack([lg.temperature_degc for lg in logs])
        temp = np.where(np.isfinite(temp), temp, temperature_degc)
        result = replay(
            CellModel(params),
            t,
            cur,
            volt,
            temp,
            config=config,
            initial_soc=initial_soc,
            initial_soc_std=initial_soc_std,
            power_horizons_s=(10.0, 60.0) if sop else (),
        )
        n_cells = len(logs)
        columns: dict[str, FloatArray] = {"time_s": t}
        per_cell = {
            "soc": result.soc,
            "soc_std": result.soc_std,
            "capacity_ah": result.capacity_ah,
            "capacity_std_ah": result.capacity_std_ah,
            "soh": result.soh,
            "resistance_ohm": result.resistance_ohm,
            "resistance_std_ohm": result.resistance_std_ohm,
            "bias_a": result.bias_a,
            **{f"power_{k}": v for k, v in result.power.items()},
        }
        for c in range(n_cells):
            sfx = "" if n_cells == 1 else f"_{c + 1}"
            for name, arr in per_cell.items():
                columns[f"{name}{sfx}"] = arr[:, c]
        _write_estimates(Path(output), columns)
    except (OpenBessError, ValueError, OSError) as err:
        _fail(err)
        return
    summary: dict[str, Any] = {
        "log": str(log_file),
        "cell": params.name,
        "method": method,
        "samples": int(t.size),
        "cells": n_cells,
        "final_soc": [round(float(x), 5) for x in result.soc[-1]],
        "final_soc_std": [round(float(x), 5) for x in result.soc_std[-1]],
        "final_capacity_ah": [round(float(x), 5) for x in result.capacity_ah[-1]],
        "final_resistance_ohm": [round(float(x), 6) for x in result.resistance_ohm[-1]],
        "final_bias_a": [round(float(x), 5) for x in result.bias_a[-1]],
    }
    conv_std = []
    for c in range(n_cells):
        below = np.flatnonzero(result.soc_std[:, c] <= CONVERGED_SOC)
        conv_std.append(None if below.size == 0 else round(float(t[below[0]] - t[0]), 1))
    summary["std_below_2pct_time_s"] = conv_std
    if truth is not None:
        summary["vs_soc_true"] = [
            soc_error_summary(t, result.soc[:, c], truth[:, c]) for c in range(n_cells)
        ]
    if as_json:
        click.echo(json.dumps(summary))
    else:
        for c in range(n_cells):
            line = (
                f"cell {c + 1}: final SoC {result.soc[-1, c]:.4f} (std {result.soc_std[-1, c]:.4f})"
            )
            if truth is not None:
                s = summary["vs_soc_true"][c]
                line += f", RMSE after 10 min {s['rmse_after_10min']:.4f}"
            click.echo(line, err=True)
        click.echo(f"wrote {output}", err=True)
