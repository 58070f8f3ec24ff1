"""The command line: validate-config, simulate --json, run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from openbess.cli import main


def test_validate_config_ok_and_error(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["validate-config", "home"])
    assert res.exit_code == 0
    assert "ok: site 'home'" in res.output
    bad = tmp_path / "s.toml"
    bad.write_text("[battery]\nsoc_max = 2\n")
    res = runner.invoke(main, ["validate-config", str(bad)])
    assert res.exit_code == 2
    assert "battery.soc_max = 2" in res.output


def test_simulate_json_prints_one_object_with_a_closed_balance(tmp_path: Path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openbess.cli",
            "simulate",
            "--site",
            "home",
            "--days",
            "0.5",
            "--step",
            "60",
            "--json",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    kpis = json.loads(out.stdout)
    assert kpis["energy_balance_error_fraction"] < 1e-3
    assert kpis["cell_limits_respected"] is True
    for key in (
        "energy_charged_ac_kwh",
        "losses_converter_kwh",
        "cost_eur",
        "baseline_cost_eur",
        "cell_voltage_max_seen_v",
        "alarms_raised",
        "gate_refused",
    ):
        assert key in kpis
    db = tmp_path / "home.sqlite"
    with sqlite3.connect(db) as con:
        n = con.execute("select count(*) from pack").fetchone()[0]
        assert n == 721
        assert con.execute("select count(*) from kpis").fetchone()[0] > 10


def test_simulate_rejects_a_bad_start():
    res = CliRunner().invoke(main, ["simulate", "--site", "home", "--start", "yesterday"])
    assert res.exit_code != 0
    assert "--start" in res.output


def test_run_scaled_real_time_writes_the_database(tmp_path: Path):
    db = tmp_path / "run.sqlite"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "openbess.cli",
            "run",
            "--site",
            "home",
            "--speed",
            "3600",
            "--duration",
            "2",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    with sqlite3.connect(db) as con:
        n = con.execute("select count(*) from pack").fetchone()[0]
    assert n > 10


def test_fault_specs_parse_and_errors_name_the_part():
    import pytest

    from openbess.simulate import parse_fault
    from openbess.twin.faults import FaultKind

    f = parse_fault("internal_short:3@3600:resistance_ohm=0.05")
    assert (f.kind, f.target, f.after_s, f.params) == (
        FaultKind.INTERNAL_SHORT,
        3,
        3600.0,
        (("resistance_ohm", 0.05),),
    )
    for bad, part in [
        ("bogus:1@3", "unknown kind 'bogus'"),
        ("link_lost:0", "KIND:TARGET@SECONDS"),
        ("link_lost:x@3", "TARGET must be an integer"),
        ("internal_short:1@3:resistance_ohm", "not name=number"),
    ]:
        with pytest.raises(ValueError, match=part):
            parse_fault(bad)


def test_simulate_with_a_lost_link_goes_to_safe_idle():
    res = CliRunner().invoke(
        main,
        [
            "simulate",
            "--site",
            "home",
            "--days",
            "0.2",
            "--step",
            "60",
            "--json",
            "--no-progress",
            "--fault",
            "link_lost:0@3600",
        ],
    )
    assert res.exit_code == 0, res.output
    kpis = json.loads(res.output.strip().splitlines()[-1])
    assert kpis["commands_lost"] > 100
    assert kpis["gate_safe_idle"] > 100
