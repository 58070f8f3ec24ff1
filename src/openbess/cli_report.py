"""``openbess report ...``: reports from a run database.

Registered on the main command group by ``main.add_command(report)`` in :mod:`openbess.cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from openbess.errors import OpenBessError

__all__ = ["report"]

F = TypeVar("F", bound=Callable[..., Any])


_DB_HELP = "Run database (SQLite) written by 'openbess run' or 'simulate --out'."


def _run_id_option(help_text: str) -> Callable[[F], F]:
    """``--run``: which run of the database."""
    return click.option("--run", "run_id", type=click.IntRange(min=1), default=None, help=help_text)


_output_option = click.option(
    "-o",
    "--output",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write here instead of stdout.",
)


@click.group("report")
def report() -> None:
    """Reports from a run database."""


@report.command("warranty")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False), help=_DB_HELP)
@_run_id_option("Run id (default: the newest run with a logbook).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "html"]),
    default="json",
    show_default=True,
    help="Output format.",
)
@_output_option
def warranty(db_path: str, run_id: int | None, fmt: str, out_path: str | None) -> None:
    """Warranty report: the BMS logbook's Annex VII figures, histograms and events."""
    from openbess.report import render, warranty_report

    try:
        text = render(warranty_report(db_path, run_id), fmt)
    except (OpenBessError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    if out_path is None:
        click.echo(text, nl=False)
        return
    try:
        Path(out_path).write_text(text, encoding="utf-8")
    except OSError as err:
        click.echo(f"error: {out_path}: cannot write the report: {err.strerror}", err=True)
        sys.exit(2)
    click.echo(f"wrote {fmt} warranty report to {out_path}", err=True)


@report.command("run")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None, help=_DB_HELP)
@_run_id_option("Run id (default: the newest run).")
@click.option(
    "--backtest",
    "backtest_csv",
    type=click.Path(dir_okay=False),
    default=None,
    help="Instead of --db: a backtest series CSV (time, load_w, pv_w, prices, "
    "battery_power_w, grid_power_w, soc; see docs/reports.md).",
)
@click.option(
    "--summary",
    "summary_json",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --backtest: the JSON printed by 'openbess backtest --json' (the KPIs).",
)
@click.option(
    "--site",
    "site_name",
    default=None,
    help="With --backtest: the site backtested (built-in name or TOML file), for its time "
    "zone and export limit (the no-battery baseline).",
)
@click.option(
    "--timezone",
    default=None,
    help="Time zone of the chart axes (default: the site's; UTC for a backtest).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "png"]),
    default="html",
    show_default=True,
    help="One self-contained HTML page, or one multi-panel PNG figure.",
)
@click.option(
    "--max-points",
    type=click.IntRange(min=10, max=100_000),
    default=2000,
    show_default=True,
    help="Time buckets the series are aggregated into.",
)
@_output_option
def run_report(
    db_path: str | None,
    run_id: int | None,
    backtest_csv: str | None,
    summary_json: str | None,
    site_name: str | None,
    timezone: str | None,
    fmt: str,
    max_points: int,
    out_path: str | None,
) -> None:
    """Run report: charts (prices, SoC, power, cells, temperatures, savings, cycles, events)
    and KPIs of a run, or of a backtest series."""
    from openbess.report_run import load_backtest_csv, load_run, render

    if (db_path is None) == (backtest_csv is None):
        click.echo("error: give either --db FILE or --backtest CSV", err=True)
        sys.exit(2)
    if backtest_csv is None and (summary_json is not None or site_name is not None):
        click.echo("error: --summary and --site go with --backtest", err=True)
        sys.exit(2)
    if backtest_csv is not None and run_id is not None:
        click.echo("error: --run goes with --db", err=True)
        sys.exit(2)
    if timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            click.echo(f"error: --timezone {timezone!r} is not a known IANA time zone", err=True)
            sys.exit(2)
    if out_path is not None and not Path(out_path).resolve().parent.is_dir():
        click.echo(
            f"error: {out_path}: cannot write the report: no directory "
            f"{Path(out_path).resolve().parent}",
            err=True,
        )
        sys.exit(2)
    binary_stdout = sys.stdout.buffer
    if fmt == "png" and out_path is None and binary_stdout.isatty():
        click.echo("error: a PNG is binary: give -o FILE (or redirect stdout)", err=True)
        sys.exit(2)
    try:
        if db_path is not None:
            rep = load_run(db_path, run_id, max_points=max_points, timezone=timezone)
        else:
            max_export_w: float | None = None
            if site_name is not None:
                from openbess.config import load_site

                site = load_site(site_name)
                max_export_w = site.grid.max_export_w
                timezone = timezone or site.timezone
            rep = load_backtest_csv(
                str(backtest_csv),
                summary_json,
                timezone=timezone or "UTC",
                max_export_w=max_export_w,
                max_points=max_points,
            )
        data = render(rep, fmt)
    except (OpenBessError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    if out_path is None:
        binary_stdout.write(data)
        binary_stdout.flush()
        return
    try:
        Path(out_path).write_bytes(data)
    except OSError as err:
        click.echo(f"error: {out_path}: cannot write the report: {err.strerror}", err=True)
        sys.exit(2)
    click.echo(f"wrote {fmt} run report to {out_path}", err=True)
