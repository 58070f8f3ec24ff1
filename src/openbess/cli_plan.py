"""``openbess plan``: one optimisation of the battery schedule from a CSV of forecasts.

Registered on the main command group by ``main.add_command(plan)`` in :mod:`openbess.cli`.

Inputs: a CSV with columns ``time`` (ISO 8601 with a UTC offset, start of each step),
``load_w``, ``pv_w``, ``import_price_eur_per_kwh``, ``export_price_eur_per_kwh``; each value is
the step's average and the step is the row spacing (which must be regular). Output: the plan per
step (battery AC power positive = discharge, grid import and export, PV curtailed, SoC at the
end of the step) as CSV; ``--json`` prints the figures of the plan as one JSON object on stdout.

The site file may carry an ``[optimizer]`` table (:class:`~openbess.ems.optimizer.OptimizerConfig`):
it is read here even before the site model knows it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
import numpy as np
import pandas as pd
from pydantic import ValidationError

from openbess.config import BUILTIN_SITES, SiteConfig, load_site, parse_site
from openbess.errors import ConfigError, DataError, OpenBessError

__all__ = ["load_plan_site", "plan", "read_plan_inputs", "write_plan_csv"]


def _data_lines(path: str) -> list[int]:
    """Line numbers (1-based) of the data rows, with the skipping rules of the CSV reader."""
    lines: list[int] = []
    header_seen = False
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            if not header_seen:
                header_seen = True
                continue
            lines.append(reader.line_num)
    return lines


def read_plan_inputs(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, float]:
    """Read and check the forecasts of ``openbess plan``.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.

    Returns
    -------
    tuple of (pandas.DataFrame, float)
        The columns of :data:`~openbess.ems.optimizer.INPUT_COLUMNS` on a UTC index, and the
        step [s].

    Raises
    ------
    DataError
        Naming the file, the line and the column: unreadable cells, missing values, negative
        load or PV, fewer than two rows, irregular spacing.
    """
    from openbess.data import read_timeseries_csv
    from openbess.ems.optimizer import INPUT_COLUMNS

    name = os.fspath(path)
    frame = read_timeseries_csv(name, INPUT_COLUMNS, allow_missing=False)
    lines = _data_lines(name)
    for col in ("load_w", "pv_w"):
        values = frame[col].to_numpy()
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{name}: line {lines[i]}, column '{col}': must be a finite number >= 0, "
                f"got {values[i]!r}"
            )
    for col in INPUT_COLUMNS[2:]:
        values = frame[col].to_numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{name}: line {lines[i]}, column '{col}': not a finite number")
    if len(frame) < 2:
        raise DataError(
            f"{name}: line {lines[0]}: need at least two rows (the step is the row spacing)"
        )
    t_ns = pd.DatetimeIndex(frame.index).as_unit("ns").asi8
    spacing = np.diff(t_ns)
    step_ns = int(spacing[0])
    irregular = np.flatnonzero(spacing != step_ns)
    if irregular.size:
        i = int(irregular[0]) + 1
        raise DataError(
            f"{name}: line {lines[i]}, column 'time': irregular spacing: "
            f"{spacing[i - 1] / 1e9:g} s after the row before, the first rows are "
            f"{step_ns / 1e9:g} s apart (every row must be one step after the last)"
        )
    return frame, step_ns / 1e9


def load_plan_site(site: str) -> tuple[SiteConfig, Any]:
    """Load a site file and its ``[optimizer]`` table.

    Parameters
    ----------
    site : str
        Built-in site name or TOML file.

    Returns
    -------
    tuple of (SiteConfig, OptimizerConfig)
        The site and the planner settings (defaults where not given).

    Raises
    ------
    ConfigError
        Naming the invalid field.
    """
    from openbess.ems.optimizer import OptimizerConfig, optimizer_config_for

    if site in BUILTIN_SITES:
        cfg = load_site(site)
        return cfg, optimizer_config_for(cfg)
    path = Path(site)
    if not path.is_file():
        return load_site(site), OptimizerConfig()  # raises the usual message
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    table = doc.get("optimizer", {})
    if "optimizer" in doc and "optimizer" not in SiteConfig.model_fields:
        doc = {k: v for k, v in doc.items() if k != "optimizer"}
    cfg = parse_site(doc, str(path))
    found = getattr(cfg, "optimizer", None)
    if isinstance(found, OptimizerConfig):
        return cfg, found
    try:
        return cfg, OptimizerConfig.model_validate(table)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"{path}: optimizer.{field} = {first.get('input')!r}: {first['msg']}"
        ) from None


def write_plan_csv(frame: pd.DataFrame, path: str | os.PathLike[str], timezone: str) -> None:
    """Write a plan table with ISO 8601 times carrying the site's UTC offset.

    Parameters
    ----------
    frame : pandas.DataFrame
        :meth:`~openbess.ems.optimizer.PlanResult.to_frame`.
    path : str or os.PathLike
        Output CSV.
    timezone : str
        IANA time zone of the times written.
    """
    index = pd.DatetimeIndex(frame.index).tz_convert(ZoneInfo(timezone))
    out = frame.copy()
    out.index = pd.Index([t.isoformat() for t in index], name="time")
    out.to_csv(path, float_format="%.6f")


@click.command("plan")
@click.option("--site", required=True, help="Built-in site (home, commercial) or a TOML file.")
@click.option(
    "--inputs",
    "inputs_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV: time, load_w, pv_w, import_price_eur_per_kwh, export_price_eur_per_kwh.",
)
@click.option(
    "-o",
    "--output",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Plan CSV to write.",
)
@click.option(
    "--final-soc",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Hard end SoC [0..1] instead of a value for the energy left (to compare with tools "
    "that need one).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan's figures as JSON.")
def plan(
    site: str, inputs_path: str, out_path: str, final_soc: float | None, as_json: bool
) -> None:
    """One optimisation of the battery schedule (linear program, HiGHS)."""
    from openbess.ems.optimizer import PlanInputs, optimize, plan_battery, plan_request

    try:
        cfg, options = load_plan_site(site)
        frame, step_s = read_plan_inputs(inputs_path)
        inputs = PlanInputs.from_frame(frame, step_s)
        battery = plan_battery(cfg)
        request = plan_request(cfg, options, inputs, battery, final_soc=final_soc)
        result = optimize(inputs, battery, request)
        write_plan_csv(result.to_frame(), out_path, cfg.timezone)
    except (OpenBessError, ValueError, OSError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"plan: {result.n_steps} steps of {step_s:g} s, cost {result.cost_eur:.4f} EUR "
        f"(no battery {result.baseline_cost_eur:.4f}), objective {result.objective_eur:.4f} EUR, "
        f"solved in {1000 * result.solve_time_s:.1f} ms -> {out_path}",
        err=True,
    )
    for r in result.relaxed:
        unit = "W" if r.constraint == "import_limit" else "SoC"
        shown = f"{r.max_violation:.4g} {unit}" if math.isfinite(r.max_violation) else "?"
        click.echo(
            f"relaxed: {r.constraint} by up to {shown} over {r.steps} step(s) from step "
            f"{r.first_step} (penalty {r.penalty_eur:.2f} EUR)",
            err=True,
        )
