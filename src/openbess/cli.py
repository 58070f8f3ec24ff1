"""The ``openbess`` command line.

Commands: ``validate-config``, ``simulate``, ``run``. Output meant for people goes to stderr
(logs, progress bars); ``--json`` output goes to stdout as one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from openbess import __version__
from openbess.config import load_site
from openbess.errors import OpenBessError

if TYPE_CHECKING:
    from openbess.simulate import FaultSpec

log = logging.getLogger("openbess")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(err: Exception) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(2)


def _parse_start(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date, e.g. 2024-06-01 or 2024-06-01T00:00+02:00",
            param_hint="--start",
        ) from None
    return dt


@click.group()
@click.version_option(__version__, prog_name="openbess")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
def main(verbose: int) -> None:
    """openbess: an open controller for battery energy storage (BMS + EMS + digital twin)."""
    _setup_logging(verbose)


@main.command("validate-config")
@click.argument("site_file")
def validate_config(site_file: str) -> None:
    """Check a site file (or built-in site name) and print its summary."""
    try:
        cfg = load_site(site_file)
    except OpenBessError as err:
        _fail(err)
        return
    b = cfg.battery
    click.echo(
        f"ok: site '{cfg.name}', battery {b.cell} {b.n_strings} string(s), "
        f"{b.max_discharge_power_w / 1000:g} kW discharge / {b.max_charge_power_w / 1000:g} kW "
        f"charge, EMS {cfg.ems.strategy}"
    )


@main.command()
@click.option("--site", required=True, help="Built-in site (home, commercial) or a TOML file.")
@click.option(
    "--days",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated days.",
)
@click.option("--start", default=None, help="Start date (ISO 8601); default: the site's.")
@click.option(
    "--step",
    "step_s",
    type=click.FloatRange(min=0.1, max=3600),
    default=None,
    help="Cycle step [s]; default: the site's simulation.step_s.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the KPIs as one JSON object.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for the run database (default: no database).",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option(
    "--fault",
    "fault_specs",
    multiple=True,
    metavar="KIND:TARGET@SECONDS[:k=v]",
    help="Inject a twin fault, e.g. internal_short:3@3600:resistance_ohm=0.05 (repeatable).",
)
def simulate(
    site: str,
    days: float,
    start: str | None,
    step_s: float | None,
    as_json: bool,
    out_dir: str | None,
    no_progress: bool,
    fault_specs: tuple[str, ...],
) -> None:
    """Fast-forward the site on the digital twin and print the KPIs."""
    from openbess.simulate import simulate as run_sim

    faults = _parse_faults(fault_specs)
    try:
        cfg = load_site(site)
        kpis = run_sim(
            cfg,
            days=days,
            start=_parse_start(start),
            step_s=step_s,
            db_path=Path(out_dir) / f"{cfg.name}.sqlite" if out_dir else None,
            progress=not no_progress,
            faults=faults,
        )
    except (OpenBessError, ValueError) as err:
        _fail(err)
        return
    if as_json:
        click.echo(json.dumps(kpis, indent=None, sort_keys=False))
    else:
        _print_kpis(kpis)


def _parse_faults(specs: tuple[str, ...]) -> list[FaultSpec]:
    from openbess.simulate import parse_fault

    try:
        return [parse_fault(text) for text in specs]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--fault") from None


def _print_kpis(kpis: dict[str, Any]) -> None:
    width = max(len(k) for k in kpis)
    for key, value in kpis.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        click.echo(f"{key:<{width}}  {shown}")


@main.command()
@click.option("--site", required=True, help="Built-in site (home, commercial) or a TOML file.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated seconds per wall second (1440: a day a minute).",
)
@click.option("--start", default=None, help="Start date (ISO 8601); default: the site's.")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Run database (default: the site's storage.path).",
)
@click.option(
    "--fault",
    "fault_specs",
    multiple=True,
    metavar="KIND:TARGET@SECONDS[:k=v]",
    help="Inject a twin fault (see simulate --help).",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Stop after this many wall seconds (default: run until Ctrl-C).",
)
@click.option("--modbus", default=None, metavar="HOST:PORT", help="Serve SunSpec Modbus TCP.")
@click.option(
    "--mqtt",
    default=None,
    metavar="mqtt://[USER:PASS@]HOST:PORT",
    help="Publish to / take commands from an MQTT broker (mqtts:// for TLS).",
)
@click.option(
    "--http", default=None, metavar="HOST:PORT", help="Serve the REST API, metrics, dashboard."
)
@click.option("--can", default=None, metavar="INTERFACE:CHANNEL", help="Read a real BMS over CAN.")
@click.option("--openadr", default=None, metavar="URL", help="Join an OpenADR 2.0b VTN.")
@click.option(
    "--strategy",
    type=click.Choice(["self_consumption", "mpc"]),
    default=None,
    help="EMS strategy (overrides the site file's ems.strategy).",
)
def run(
    site: str,
    speed: float,
    start: str | None,
    db_path: str | None,
    fault_specs: tuple[str, ...],
    duration_s: float | None,
    modbus: str | None,
    mqtt: str | None,
    http: str | None,
    can: str | None,
    openadr: str | None,
    strategy: str | None,
) -> None:
    """Run the controller on the site in (scaled) real time: the main job.

    Interfaces are enabled by the site file's [interfaces] section or by the endpoint
    options, which override it.
    """
    from openbess.io import with_endpoints
    from openbess.simulate import run_realtime

    faults = _parse_faults(fault_specs)
    try:
        cfg = with_endpoints(load_site(site), modbus, mqtt, http, can, openadr)
        if strategy is not None:
            cfg = cfg.model_copy(update={"ems": cfg.ems.model_copy(update={"strategy": strategy})})
        kpis = run_realtime(
            cfg,
            speed=speed,
            start=_parse_start(start),
            db_path=Path(db_path) if db_path else None,
            duration_s=duration_s,
            status=lambda line: click.echo(line, err=True),
            faults=faults,
        )
    except (OpenBessError, ValueError, OSError) as err:
        _fail(err)
        return
    click.echo(
        f"stopped: {kpis['simulated_days']:.2f} simulated days, savings "
        f"{kpis['savings_eur']:.2f} EUR, energy balance error "
        f"{kpis['energy_balance_error_fraction']:.1e}, alarms {kpis['alarms_raised']}",
        err=True,
    )


def _register() -> None:
    from openbess.cli_backtest import backtest
    from openbess.cli_cell import characterize_command, estimate_command
    from openbess.cli_plan import plan
    from openbess.cli_report import report

    main.add_command(report)
    main.add_command(plan)
    main.add_command(characterize_command)
    main.add_command(estimate_command)
    main.add_command(backtest)


_register()

if __name__ == "__main__":
    main()
