"""Backtest: bundled-data inputs, CSV checks, rolling MPC vs single-shot optimum, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from openbess.cli import main
from openbess.cli_backtest import backtest
from openbess.config import load_site, parse_site
from openbess.data.timeseries import to_unix_s
from openbess.ems.backtest import (
    INPUT_COLUMNS,
    BacktestOptions,
    OptimizerPlanner,
    read_inputs_csv,
    run_backtest,
    site_inputs,
    write_inputs_csv,
)
from openbess.ems.optimizer import OptimizerConfig, PlanInputs
from openbess.errors import DataError
from openbess.twin.grid import Tariff
from openbess.twin.load import LoadModel

main.add_command(backtest)

SMALL_SITE = """
[battery]
capacity_wh = 10000
max_charge_power_w = 5000
max_discharge_power_w = 4750
charge_efficiency = 0.95
discharge_efficiency = 0.95
soc_min = 0.1
soc_max = 0.9
initial_soc = 0.5
[grid]
max_import_w = 9000
max_export_w = 9000
"""


def small_site():
    import tomllib

    return parse_site(tomllib.loads(SMALL_SITE), "small")


def hourly_inputs(days: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 24
    t = pd.date_range("2024-06-03T00:00Z", periods=n, freq="h", name="time")
    hour = np.arange(n) % 24
    pv = np.maximum(0.0, 5000.0 * np.sin(np.pi * (hour - 6) / 12.0)) * rng.uniform(0.3, 1.0, n)
    load = 500.0 + 1500.0 * ((hour >= 18) & (hour <= 21)) + rng.uniform(0, 400, n)
    spot = 0.08 + 0.1 * np.sin(2 * np.pi * (hour - 14) / 24.0) + rng.normal(0, 0.02, n)
    spot[30:33] = -0.05  # a few negative prices
    return pd.DataFrame(
        {
            "load_w": load,
            "pv_w": pv,
            "import_price_eur_per_kwh": (spot + 0.15) * 1.19,
            "export_price_eur_per_kwh": spot,
        },
        index=t,
    )


# -- inputs -----------------------------------------------------------------------------------
def test_site_inputs_of_home_are_the_twins_series():
    cfg = load_site("home")
    df = site_inputs(cfg, "2024-06-01T00:00:00+02:00", 3)
    assert list(df.columns) == list(INPUT_COLUMNS)
    assert len(df) == 3 * 96
    assert df.index[0] == pd.Timestamp("2024-05-31T22:00Z")
    t = to_unix_s(pd.DatetimeIndex(df.index))
    np.testing.assert_array_equal(np.diff(t), 900.0)
    # 30-min household load: each 15-min interval holds its half-hour's value
    np.testing.assert_allclose(df["load_w"], LoadModel.household().power_w(t))
    spot = Tariff.from_zone("DE_LU").spot_eur_per_kwh(t)
    np.testing.assert_allclose(df["import_price_eur_per_kwh"], (spot + 0.15) * 1.19)
    np.testing.assert_allclose(df["export_price_eur_per_kwh"], spot)
    assert (df["pv_w"] >= 0).all()
    assert df["pv_w"].max() <= 5000.0
    assert df["pv_w"].iloc[:8].max() == 0.0  # local midnight to 02:00
    with pytest.raises(ValueError, match="UTC offset"):
        site_inputs(cfg, "2024-06-01T00:00:00", 1)


def test_inputs_csv_round_trip(tmp_path: Path):
    df = hourly_inputs(2)
    path = tmp_path / "in.csv"
    write_inputs_csv(df, path, tz="Europe/Paris")
    text = path.read_text().splitlines()
    assert text[0] == "time," + ",".join(INPUT_COLUMNS)
    assert text[1].startswith("2024-06-03T02:00:00+02:00,")
    back = read_inputs_csv(path)
    np.testing.assert_array_equal(to_unix_s(back.index), to_unix_s(df.index))
    np.testing.assert_allclose(back.to_numpy(), df.to_numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (3, "pv_w", "abc", "line 6, column 'pv_w': cannot parse 'abc'"),
        (2, "load_w", "-5", "line 5, column 'load_w': negative power"),
        (4, "export_price_eur_per_kwh", "", "line 7, column 'export_price_eur_per_kwh': empty"),
        (3, "time", "2024-06-03T03:30:00+00:00", "line 6, column 'time': step of 5400 s"),
        (2, "time", "2024-06-03T02:00:00", "line 5, column 'time': no UTC offset"),
    ],
)
def test_bad_inputs_name_file_line_and_column(
    tmp_path: Path, row: int, column: str, value: str, message: str
):
    df = hourly_inputs(1)
    path = tmp_path / "bad.csv"
    write_inputs_csv(df, path)
    lines = path.read_text().splitlines()
    lines.insert(0, "# a comment line")  # line 1; the header is line 2, row r is line 3 + r
    header = lines[1].split(",")
    cells = lines[2 + row].split(",")
    cells[header.index(column)] = value
    lines[2 + row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_inputs_csv(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_column_is_named(tmp_path: Path):
    path = tmp_path / "short.csv"
    hourly_inputs(1).drop(columns=["pv_w"]).to_csv(path)
    with pytest.raises(DataError, match=r"missing column.*'pv_w'"):
        read_inputs_csv(path)


# -- the rolling MPC ----------------------------------------------------------------------------
def test_rolling_plan_with_perfect_forecasts_equals_the_single_shot_optimum():
    cfg = small_site()
    df = hourly_inputs(3)
    planner = OptimizerPlanner(
        cfg, OptimizerConfig(terminal_value_eur_per_kwh=0.2, degradation_cost_eur_per_kwh=0.01)
    )
    opts = BacktestOptions(
        forecast="perfect",
        replan_s=3600.0,
        horizon_s=4 * 86400.0,  # beyond the end: a shrinking horizon
        fine_horizon_s=4 * 86400.0,
        coarse_step_s=3600.0,
    )
    res = run_backtest(cfg, df, opts, planner=planner)
    s = res.summary
    assert s["solves"] == 72
    single = planner(PlanInputs.from_frame(df), 0.5)
    assert s["perfect_foresight_cost_eur"] == pytest.approx(single.cost_eur, abs=1e-6)
    assert s["cost_eur"] == pytest.approx(single.cost_eur, abs=1e-3)
    assert s["soc_final"] == pytest.approx(float(single.soc[-1]), abs=1e-4)
    assert s["capture_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert s["savings_eur"] > 1.0
    np.testing.assert_allclose(res.frame["battery_power_w"], single.battery_power_w, atol=1.0)


@pytest.mark.parametrize("execution", ["follow", "dispatch"])
def test_model_backtest_respects_every_limit_and_balances_the_site(execution: str):
    cfg = small_site()
    rng = np.random.default_rng(3)
    base = hourly_inputs(10).resample("15min").ffill()
    base = pd.concat([base, base.iloc[-3:].set_axis(base.index[-3:] + pd.Timedelta("45min"))])
    base["load_w"] *= rng.uniform(0.6, 1.4, len(base))
    res = run_backtest(
        cfg,
        base,
        BacktestOptions(forecast="model", execution=execution, history_s=8 * 86400.0),
    )
    f, s = res.frame, res.summary
    assert len(f) == 2 * 96
    assert (f["soc"] >= 0.1 - 1e-9).all()
    assert (f["soc"] <= 0.9 + 1e-9).all()
    assert (f["battery_power_w"] <= 4750.0 + 1e-6).all()
    assert (f["battery_power_w"] >= -5000.0 - 1e-6).all()
    balance = f["load_w"] - f["pv_w"] + f["pv_curtailed_w"] - f["battery_power_w"]
    np.testing.assert_allclose(f["grid_power_w"], balance, atol=1e-6)
    # SoC bookkeeping: stored energy follows the executed power and the efficiencies
    p = f["battery_power_w"].to_numpy()
    d_soc = np.where(p > 0, -p / 0.95, -p * 0.95) * 0.25 / 10000.0
    np.testing.assert_allclose(np.diff(np.concatenate([[0.5], f["soc"]])), d_soc, atol=1e-9)
    assert s["forecast"] == "model"
    assert s["solves"] == 2 * 96
    assert s["capture_ratio"] <= 1.0 + 1e-6
    assert s["equivalent_full_cycles"] == pytest.approx(s["throughput_kwh"] / 20.0)
    assert set(s["forecast_error"]) == set(INPUT_COLUMNS)
    assert s["forecast_error"]["import_price_eur_per_kwh"]["mae_first_step"] == 0.0


# -- the command --------------------------------------------------------------------------------
def test_cli_backtest_end_to_end(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text(SMALL_SITE)
    inputs = tmp_path / "in.csv"
    write_inputs_csv(hourly_inputs(2), inputs)
    png = tmp_path / "bt.png"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "backtest",
            "--site",
            str(site),
            "--inputs",
            str(inputs),
            "--forecast",
            "perfect",
            "--replan-min",
            "60",
            "--json",
            "--plot",
            str(png),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in (
        "cost_eur",
        "baseline_cost_eur",
        "savings_eur",
        "perfect_foresight_savings_eur",
        "capture_ratio",
        "equivalent_full_cycles",
        "throughput_kwh",
        "solve_time_s",
        "solve_time_per_solve_s",
    ):
        assert isinstance(out[key], float), key
    assert out["savings_eur"] == pytest.approx(out["baseline_cost_eur"] - out["cost_eur"])
    assert 0.9 < out["capture_ratio"] <= 1.0 + 1e-6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table form
    res = runner.invoke(
        main,
        ["backtest", "--site", str(site), "--inputs", str(inputs), "--no-progress", "--no-perfect"],
    )
    assert res.exit_code == 0, res.output
    assert "savings_eur" in res.stdout
    assert "capture_ratio" not in res.stdout


def test_cli_backtest_bad_input_names_file_line_and_column(tmp_path: Path):
    site = tmp_path / "site.toml"
    site.write_text(SMALL_SITE)
    inputs = tmp_path / "in.csv"
    write_inputs_csv(hourly_inputs(1), inputs)
    lines = inputs.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",x", 1)
    inputs.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(
        main, ["backtest", "--site", str(site), "--inputs", str(inputs), "--no-progress"]
    )
    assert res.exit_code == 2
    assert f"{inputs}: line 4, column 'load_w'" in res.output


def test_cli_backtest_on_the_bundled_home_data(tmp_path: Path):
    written = tmp_path / "home.csv"
    res = CliRunner().invoke(
        main,
        [
            "backtest",
            "--site",
            "home",
            "--start",
            "2024-06-03T00:00+02:00",
            "--days",
            "0.25",
            "--history-days",
            "14",
            "--forecast",
            "model",
            "--json",
            "--no-progress",
            "--write-inputs",
            str(written),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["solves"] == 24
    assert out["days"] == pytest.approx(0.25)
    assert len(read_inputs_csv(written)) == (14 + 0.25) * 96
