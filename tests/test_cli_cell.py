"""The `characterize` and `estimate` commands end to end on small files."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from openbess.cell.fit import simulate_log
from openbess.cell.io import CellLog, write_cell_log
from openbess.cell.params import CellParams, load_cell_params, scale_to_capacity
from openbess.cli import main
from openbess.cli_cell import characterize_command, convergence_time_s, estimate_command

main.add_command(characterize_command)
main.add_command(estimate_command)

CAP = 2.0


def _params() -> CellParams:
    return scale_to_capacity(load_cell_params("nmc"), CAP)


def _log(parts: list[tuple[float, float, float]], soc0: float = 1.0) -> tuple[CellLog, np.ndarray]:
    """Simulate (duration, current, step) segments with the ECM; log and true SoC."""
    t, i = [0.0], [0.0]
    for duration, current, dt in parts:
        n = round(duration / dt)
        t.extend(t[-1] + dt * np.arange(1, n + 1))
        i.extend([current] * n)
    ta, ia = np.asarray(t), np.asarray(i)
    blank = CellLog(ta, ia, np.zeros(ta.size), np.full(ta.size, 25.0))
    sim = simulate_log(_params(), blank, soc0, temperature_degc=25.0)
    return replace(blank, voltage_v=sim.voltage_v), sim.soc


def _write_with_truth(path: Path, lg: CellLog, soc: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time_s", "current_a", "voltage_v", "temperature_degc", "soc_true"])
        for row in zip(
            lg.time_s, lg.current_a, lg.voltage_v, lg.temperature_degc, soc, strict=True
        ):
            w.writerow([f"{x:.6f}" for x in row])


def _drive(seed: int = 3) -> list[tuple[float, float, float]]:
    rng = np.random.default_rng(seed)
    return [
        (float(rng.integers(10, 60)), float(rng.uniform(-1.0, 2.0)) * CAP, 5.0) for _ in range(60)
    ]


def test_characterize_end_to_end(tmp_path: Path) -> None:
    c10 = CAP / 10.0
    ocv, _ = _log(
        [(3600, 0.0, 120), (36000, c10, 120), (3600, 0.0, 120), (36000, -c10, 120), (3600, 0, 120)]
    )
    hppc_parts: list[tuple[float, float, float]] = [(3600.0, 0.0, 60.0)]
    for _ in range(4):
        hppc_parts += [(10.0, CAP, 1.0), (40.0, 0.0, 2.0), (10.0, -0.75 * CAP, 1.0)]
        hppc_parts += [(40.0, 0.0, 2.0), (1440.0, 0.5 * CAP, 10.0), (3600.0, 0.0, 60.0)]
    hppc, _ = _log(hppc_parts)
    write_cell_log(tmp_path / "ocv.csv", ocv)
    write_cell_log(tmp_path / "hppc.csv.gz", hppc)
    out = tmp_path / "cell.toml"
    res = CliRunner().invoke(
        main,
        [
            "characterize",
            str(tmp_path / "ocv.csv"),
            str(tmp_path / "hppc.csv.gz"),
            *("-o", str(out), "--json", "--soc-points", "21"),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["capacity_ah"] == pytest.approx(CAP, rel=0.01)
    assert [t["kind"] for t in summary["tests"]] == ["ocv", "hppc"]
    params = load_cell_params(out)
    assert params.name == "cell"
    assert params.soc_grid.size == 21
    z = np.linspace(0.1, 0.9, 9)
    from openbess.cell.ecm import CellModel

    err = CellModel(params).ocv(z, 25.0) - CellModel(_params()).ocv(z, 25.0)
    assert np.max(np.abs(err)) < 0.005
    # The fitted file drives `estimate`.
    drive, soc = _log(_drive(), soc0=0.9)
    _write_with_truth(tmp_path / "drive.csv", drive, soc)
    res = CliRunner().invoke(
        main,
        [
            "estimate",
            str(tmp_path / "drive.csv"),
            *("--cell", str(out), "-o", str(tmp_path / "e.csv"), "--json"),
        ],
    )
    assert res.exit_code == 0, res.output
    rmse = json.loads(res.stdout)["vs_soc_true"][0]["rmse_after_10min"]
    assert rmse < 0.03


def test_estimate_end_to_end(tmp_path: Path) -> None:
    drive, soc = _log(_drive(), soc0=0.8)
    path = tmp_path / "drive.csv"
    _write_with_truth(path, drive, soc)
    out = tmp_path / "est.csv"
    cell = tmp_path / "nmc2.toml"
    from openbess.cell.fit import format_cell_params_toml

    cell.write_text(format_cell_params_toml(_params()))
    res = CliRunner().invoke(
        main,
        [
            "estimate",
            str(path),
            *("--cell", str(cell), "--initial-soc", "0.6", "-o", str(out), "--json"),
            *("--model-error-mv", "3", "--sop"),
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    truth = summary["vs_soc_true"][0]
    assert truth["rmse_after_10min"] < 0.01
    assert truth["convergence_time_s"] is not None
    assert truth["convergence_time_s"] < 900
    assert abs(summary["final_soc"][0] - soc[-1]) < 0.02
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == drive.time_s.size
    for col in ("time_s", "soc", "soc_std", "capacity_ah", "soh", "resistance_ohm", "bias_a"):
        assert col in rows[0]
    assert "power_discharge_10s_w" in rows[0]
    assert float(rows[0]["soc"]) == pytest.approx(0.6)
    assert float(rows[-1]["soc_std"]) < float(rows[0]["soc_std"])
    assert all(0.0 <= float(r["soc"]) <= 1.0 for r in rows)


def test_estimate_wakes_up_from_voltage_and_handles_several_cells(tmp_path: Path) -> None:
    a, _ = _log(_drive(1), soc0=0.7)
    b, _ = _log(_drive(1), soc0=0.4)
    path = tmp_path / "two.csv"
    write_cell_log(path, [a, b])
    out = tmp_path / "est.csv"
    cell = tmp_path / "nmc2.toml"
    from openbess.cell.fit import format_cell_params_toml

    cell.write_text(format_cell_params_toml(_params()))
    res = CliRunner().invoke(
        main, ["estimate", str(path), "--cell", str(cell), "-o", str(out), "--json", "--no-bias"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["cells"] == 2
    assert "vs_soc_true" not in summary
    with out.open() as fh:
        first = next(csv.DictReader(fh))
    assert float(first["soc_1"]) == pytest.approx(0.7, abs=0.03)
    assert float(first["soc_2"]) == pytest.approx(0.4, abs=0.03)


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [
        ("time_s,current_a,voltage_v\n0,0,3.7\n1,0,abc\n", 3, "voltage_v"),
        ("time_s,current_a,voltage_v\n0,0,3.7\n1,,3.7\n", 3, "current_a"),
        ("time_s,current_a\n0,0\n", 1, "voltage_v"),
        ("time_s,current_a,voltage_v,soc_true\n0,0,3.7,0.5\n1,0,3.7,x\n", 3, "soc_true"),
        ("time_s,current_a,voltage_v\n5,0,3.7\n1,0,3.7\n", 3, "time_s"),
    ],
)
def test_estimate_errors_name_file_line_column(
    tmp_path: Path, content: str, line: int, column: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    res = CliRunner().invoke(
        main, ["estimate", str(path), "--cell", "nmc", "-o", str(tmp_path / "o.csv")]
    )
    assert res.exit_code == 2
    assert str(path) in res.output
    assert f"line {line}" in res.output
    assert f"column '{column}'" in res.output


def test_command_errors(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("time_s,current_a,voltage_v\n0,0,3.7\n1,0,3.7\n")
    runner = CliRunner()
    res = runner.invoke(main, ["estimate", str(path), "--cell", "nope", "-o", "o.csv"])
    assert res.exit_code == 2
    assert "neither a built-in" in res.output
    res = runner.invoke(main, ["characterize", str(path), "--kind", "pulse", "-o", "c.toml"])
    assert res.exit_code == 2
    assert "unknown test kind 'pulse'" in res.output
    res = runner.invoke(main, ["characterize", str(tmp_path / "missing.csv"), "-o", "c.toml"])
    assert res.exit_code == 2
    assert "missing.csv" in res.output
    res = runner.invoke(
        main, ["characterize", str(path), "--kind", "dynamic", "-o", str(tmp_path / "c.toml")]
    )
    assert res.exit_code == 2
    assert "error:" in res.output


def test_convergence_time() -> None:
    t = np.arange(2000.0)
    err = np.where(t < 100, 0.2, 0.01)
    assert convergence_time_s(t, err) == 100.0
    err[1500] = 0.05  # a later excursion after 10 min inside does not move it
    assert convergence_time_s(t, err) == 100.0
    err[300] = 0.05  # within the first 10 minutes it does
    assert convergence_time_s(t, err) == 301.0
    assert convergence_time_s(t, np.full(2000, 0.1)) is None
