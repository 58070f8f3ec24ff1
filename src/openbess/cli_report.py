"""``openbess report ...``: reports from a run database.

Registered on the main command group by ``main.add_command(report)`` in :mod:`openbess.cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from openbess.errors import OpenBessError

__all__ = ["report"]


@click.group("report")
def report() -> None:
    """Reports from a run database."""


@report.command("warranty")
@click.option(
    "--db",
    "db_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Run database (SQLite) written by 'openbess run' or 'simulate --out'.",
)
@click.option(
    "--run",
    "run_id",
    type=click.IntRange(min=1),
    default=None,
    help="Run id (default: the newest run with a logbook).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "html"]),
    default="json",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write here instead of stdout.",
)
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
