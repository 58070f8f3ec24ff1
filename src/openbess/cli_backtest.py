"""``openbess backtest``: a rolling MPC over a whole input series.

Registered on the main command group with ``main.add_command(backtest)`` in
:mod:`openbess.cli`.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from openbess.errors import OpenBessError

__all__ = ["backtest"]

#: Figures printed by the command (also in ``--json``, with more).
SUMMARY_KEYS: tuple[str, ...] = (
    "cost_eur",
    "baseline_cost_eur",
    "savings_eur",
    "perfect_foresight_savings_eur",
    "capture_ratio",
    "equivalent_full_cycles",
    "throughput_kwh",
    "solve_time_s",
    "solve_time_per_solve_s",
    "solves",
)


def _fail(message: object) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


@click.command("backtest")
@click.option("--site", "site_name", required=True, help="Built-in site name or site TOML file.")
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="CSV: time (ISO 8601 with offset), load_w, pv_w, import_price_eur_per_kwh, "
    "export_price_eur_per_kwh. Default: the site's bundled data (--start, --days).",
)
@click.option(
    "--forecast",
    type=click.Choice(["perfect", "model"]),
    default="model",
    show_default=True,
    help="Perfect foresight, or forecasts made from the past only.",
)
@click.option(
    "--start",
    default=None,
    help="Start of the bundled-data backtest (ISO 8601 with offset; default the site's "
    "simulation.start).",
)
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Days backtested with the bundled data.",
)
@click.option(
    "--history-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Days of history before the scored window: with --inputs, the first days of the "
    "file (default 0); with the bundled data, days before --start (default 28).",
)
@click.option(
    "--horizon-h",
    type=click.FloatRange(min=0, min_open=True),
    default=36.0,
    show_default=True,
    help="Plan horizon [h].",
)
@click.option(
    "--replan-min",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Minutes between plans, a whole number of input steps (default 15, or the input "
    "step if longer).",
)
@click.option(
    "--execution",
    type=click.Choice(["follow", "dispatch"]),
    default="dispatch",
    show_default=True,
    help="follow: the battery follows the plan, the grid absorbs forecast errors; dispatch: "
    "the MPC strategy's real-time rules (balance, soak up PV surplus, grid limits).",
)
@click.option("--json", "as_json", is_flag=True, help="Print all figures as one JSON object.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG chart (prices, SoC, battery and grid power).",
)
@click.option(
    "--write-inputs",
    "write_inputs",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the inputs used (CSV, same format as --inputs).",
)
@click.option(
    "--scenario-days",
    type=click.IntRange(0, 28),
    default=21,
    show_default=True,
    help="Hedge each plan over the forecast errors of the last N days (0: plan on the point "
    "forecast only).",
)
@click.option(
    "--series",
    "series_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the executed series (CSV) for `openbess report run --backtest`.",
)
@click.option(
    "--no-perfect",
    is_flag=True,
    help="Skip the single-shot perfect-foresight reference (no capture_ratio).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def backtest(
    site_name: str,
    inputs_path: str | None,
    forecast: str,
    start: str | None,
    days: float,
    history_days: float | None,
    horizon_h: float,
    replan_min: float | None,
    execution: str,
    as_json: bool,
    plot_path: str | None,
    write_inputs: str | None,
    series_path: str | None,
    scenario_days: int,
    no_perfect: bool,
    no_progress: bool,
) -> None:
    """Backtest the EMS: re-plan every 15 min over a whole series, execute against actuals."""
    import pandas as pd

    from openbess.config import load_site
    from openbess.data.timeseries import DAY_S
    from openbess.ems.backtest import (
        BacktestOptions,
        plot_backtest,
        read_inputs_csv,
        run_backtest,
        site_inputs,
        write_inputs_csv,
    )

    try:
        config = load_site(site_name)
        if inputs_path is not None:
            frame = read_inputs_csv(inputs_path)
            history = history_days if history_days is not None else 0.0
        else:
            history = history_days if history_days is not None else 28.0
            try:
                t0 = (
                    pd.Timestamp(datetime.fromisoformat(start))
                    if start is not None
                    else pd.Timestamp(config.simulation.start)
                )
            except ValueError:
                raise click.BadParameter(
                    f"{start!r} is not an ISO 8601 time, e.g. 2024-06-01T00:00+02:00",
                    param_hint="--start",
                ) from None
            if t0.tzinfo is None:
                raise click.BadParameter(
                    f"{start!r} has no UTC offset, e.g. 2024-06-01T00:00+02:00",
                    param_hint="--start",
                )
            frame = site_inputs(
                config, t0 - pd.Timedelta(days=history), history + days, step_s=900.0
            )
        if write_inputs is not None:
            write_inputs_csv(frame, write_inputs, tz=config.timezone)
        index = pd.DatetimeIndex(frame.index)
        step_s = (index[1] - index[0]).total_seconds() if len(index) > 1 else 900.0
        replan_s = replan_min * 60.0 if replan_min is not None else max(900.0, step_s)
        options = BacktestOptions(
            forecast="perfect" if forecast == "perfect" else "model",
            replan_s=replan_s,
            horizon_s=horizon_h * 3600.0,
            fine_horizon_s=max(4.0 * 3600.0, replan_s),
            execution="dispatch" if execution == "dispatch" else "follow",
            history_s=round(history * DAY_S),
            perfect_foresight=not no_perfect,
            progress=not no_progress,
            scenario_days=scenario_days,
        )
        result = run_backtest(config, frame, options)
        if plot_path is not None:
            plot_backtest(result, plot_path)
        if series_path is not None:
            from openbess.report_run import write_backtest_series

            write_backtest_series(result.frame, Path(series_path), tz=config.timezone)
    except (OpenBessError, ValueError, OSError) as err:
        _fail(err)
        return
    summary = result.summary
    if as_json:
        click.echo(json.dumps(_json_safe(summary), indent=2, default=str))
        return
    for key in SUMMARY_KEYS:
        if key in summary:
            value = summary[key]
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            click.echo(f"{key:32s} {shown}")
    errors = summary.get("forecast_error")
    if isinstance(errors, dict):
        for col, e in errors.items():
            click.echo(
                f"forecast {col:24s} MAE {e['mae']:.4g} (naive {e['mae_naive']:.4g}, "
                f"skill {e['skill']:.3f})"
            )
