"""``openbess plan``: one optimisation from a site file and a CSV of forecasts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from openbess.cli import main
from openbess.cli_plan import plan, read_plan_inputs
from openbess.errors import DataError

main.add_command(plan)

DATA = Path(__file__).parent / "data" / "plan_inputs_day.csv"
MINIMAL_SITE = """
[battery]
capacity_wh = 10000
max_charge_power_w = 5000      # AC side
max_discharge_power_w = 4750   # AC side
charge_efficiency = 0.95
discharge_efficiency = 0.95
soc_min = 0.1
soc_max = 0.9
initial_soc = 0.5
[grid]
max_import_w = 9000
max_export_w = 9000
"""


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(MINIMAL_SITE)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["plan", *args])
    return result.exit_code, result.stdout, result.stderr


def test_plan_writes_the_schedule_and_prints_json(site_file, tmp_path):
    out = tmp_path / "plan.csv"
    code, stdout, _ = run("--site", str(site_file), "--inputs", str(DATA), "-o", str(out), "--json")
    assert code == 0
    summary = json.loads(stdout)
    for key in ("objective_eur", "cost_eur", "baseline_cost_eur", "solve_time_s", "relaxed"):
        assert key in summary
    assert summary["relaxed"] == []
    assert summary["cost_eur"] < summary["baseline_cost_eur"]
    text = out.read_text().splitlines()
    assert text[0] == (
        "time,load_w,pv_w,import_price_eur_per_kwh,export_price_eur_per_kwh,battery_power_w,"
        "grid_import_w,grid_export_w,pv_curtailed_w,soc"
    )
    assert text[1].startswith("2025-06-01T22:00:00+00:00,")  # the site's zone (UTC here)
    plan_df = pd.read_csv(out)
    assert len(plan_df) == 96
    assert plan_df["soc"].between(0.1 - 1e-6, 0.9 + 1e-6).all()
    assert (plan_df["battery_power_w"] <= 4750 + 1e-3).all()
    assert (plan_df["battery_power_w"] >= -5000 - 1e-3).all()
    # balance at the meter, step by step
    pv_used = plan_df["pv_w"] - plan_df["pv_curtailed_w"]
    grid = plan_df["grid_import_w"] - plan_df["grid_export_w"]
    assert np.allclose(plan_df["load_w"] - pv_used - plan_df["battery_power_w"], grid, atol=1e-3)
    # cost reported = cost recomputed from the file
    dt_h = 0.25
    cost = (
        (
            plan_df["grid_import_w"] * plan_df["import_price_eur_per_kwh"]
            - plan_df["grid_export_w"] * plan_df["export_price_eur_per_kwh"]
        ).sum()
        * dt_h
        / 1000.0
    )
    assert cost == pytest.approx(summary["cost_eur"], abs=1e-5)
    # negative export prices 12:00-15:00 local: no export, PV curtailed instead
    negative = plan_df["export_price_eur_per_kwh"] < 0
    assert (plan_df.loc[negative, "grid_export_w"] < 1e-3).all()


def test_final_soc_is_a_hard_target(site_file, tmp_path):
    out = tmp_path / "plan.csv"
    code, stdout, _ = run(
        "--site",
        str(site_file),
        "--inputs",
        str(DATA),
        "-o",
        str(out),
        "--final-soc",
        "0.7",
        "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["soc_final"] == pytest.approx(0.7, abs=1e-6)
    assert summary["terminal_value_eur"] == 0.0


def test_unreachable_final_soc_is_relaxed_and_reported(site_file, tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("\n".join(DATA.read_text().splitlines()[:6]) + "\n")  # 3 rows, 45 min
    code, stdout, stderr = run(
        "--site", str(site_file), "--inputs", str(short), "-o", str(tmp_path / "p.csv"),
        "--final-soc", "0.9",
    )  # fmt: skip
    assert code == 0
    assert "relaxed: final_soc" in stderr
    code, stdout, _ = run(
        "--site", str(site_file), "--inputs", str(short), "-o", str(tmp_path / "p.csv"),
        "--final-soc", "0.9", "--json",
    )  # fmt: skip
    (relax,) = json.loads(stdout)["relaxed"]
    assert relax["constraint"] == "final_soc"
    # 45 min at 5 kW and 95 %: 0.5 + 3.5625 kWh / 10 kWh = 0.85625 at best
    assert relax["max_violation"] == pytest.approx(0.9 - 0.85625, abs=1e-6)


def test_optimizer_table_in_the_site_file(site_file, tmp_path):
    site_file.write_text(MINIMAL_SITE + "[optimizer]\ndegradation_cost_eur_per_kwh = 0.0\n")
    code, stdout, _ = run(
        "--site", str(site_file), "--inputs", str(DATA), "-o", str(tmp_path / "p.csv"), "--json"
    )
    assert code == 0
    assert json.loads(stdout)["degradation_cost_eur"] == 0.0
    site_file.write_text(MINIMAL_SITE + "[optimizer]\nreserve_soc = 2\n")
    code, _, stderr = run(
        "--site", str(site_file), "--inputs", str(DATA), "-o", str(tmp_path / "p.csv")
    )
    assert code == 2
    assert "optimizer.reserve_soc = 2" in stderr


def bad_copy(tmp_path: Path, line_no: int, new_line: str) -> Path:
    lines = DATA.read_text().splitlines()
    lines[line_no - 1] = new_line
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("line_no", "new_line", "message"),
    [
        (10, "2025-06-02T01:30:00+02:00,450.0,abc,0.2499,0.06", "line 10, column 'pv_w'"),
        (10, "2025-06-02T01:30:00+02:00,450.0,,0.2499,0.06", "line 10, column 'pv_w': empty"),
        (12, "2025-06-02T02:00:00+02:00,-5,0,0.2499,0.06", "line 12, column 'load_w'"),
        (
            12,
            "2025-06-02T02:10:00+02:00,450.0,0.0,0.2499,0.06",
            "line 12, column 'time': irregular spacing",
        ),
        (7, "2025-06-02T01:00:00,450.0,0.0,0.2499,0.06", "line 7, column 'time': no UTC offset"),
    ],
)
def test_bad_inputs_name_file_line_and_column(tmp_path, site_file, line_no, new_line, message):
    path = bad_copy(tmp_path, line_no, new_line)
    code, _, stderr = run("--site", str(site_file), "--inputs", str(path), "-o", "x.csv")
    assert code == 2
    assert str(path) in stderr
    assert message in stderr
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_plan_inputs(path)


def test_a_single_row_is_not_enough(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("\n".join(DATA.read_text().splitlines()[2:4]) + "\n")
    with pytest.raises(DataError, match="line 2: need at least two rows"):
        read_plan_inputs(path)


def test_missing_column_is_named(tmp_path, site_file):
    path = tmp_path / "cols.csv"
    path.write_text("time,load_w,pv_w\n2025-06-02T00:00:00+02:00,1,2\n")
    code, _, stderr = run("--site", str(site_file), "--inputs", str(path), "-o", "x.csv")
    assert code == 2
    assert "missing column(s) 'import_price_eur_per_kwh'" in stderr


def test_built_in_site_plans_too(tmp_path):
    code, stdout, _ = run(
        "--site", "home", "--inputs", str(DATA), "-o", str(tmp_path / "p.csv"), "--json"
    )
    assert code == 0
    s = json.loads(stdout)
    assert s["soc_initial"] == 0.5
    assert s["degradation_cost_eur"] > 0.0  # derived from the LFP ageing law by default


def test_json_stdout_is_clean_in_a_real_process(site_file, tmp_path):
    # HiGHS prints a banner on the C stdout the first time; --json output must stay parseable.
    import subprocess
    import sys

    code = (
        "from openbess.cli import main; from openbess.cli_plan import plan; "
        "main.add_command(plan); main()"
    )
    args = ["plan", "--site", str(site_file), "--inputs", str(DATA), "-o", str(tmp_path / "p.csv")]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "--json"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 96
