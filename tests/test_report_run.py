"""Run reports (``openbess report run``): data from a simulated run, HTML and PNG, bad input."""

from __future__ import annotations

import base64
import json
import math
import re
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from openbess.cli import main
from openbess.config import load_site
from openbess.errors import DataError, StorageError
from openbess.report import render_html as render_warranty_html
from openbess.report import warranty_report
from openbess.report_run import (
    CHARTS,
    from_backtest,
    load_backtest_csv,
    load_run,
    render_html,
    write_backtest_series,
)
from openbess.simulate import parse_fault, simulate
from openbess.storage import RunStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINK_LOST_S = 50_000.0  # the EMS link is lost 13.9 h into the day: alarm + gate safe idle


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """A day of the home site at 60 s, with an EMS link loss, in a run database."""
    db = tmp_path_factory.mktemp("run") / "home.sqlite"
    kpis = simulate(
        load_site("home"),
        days=1.0,
        step_s=60.0,
        db_path=db,
        progress=False,
        faults=[parse_fault(f"link_lost:0@{LINK_LOST_S:g}")],
    )
    return db, kpis


@pytest.fixture(scope="module")
def rendered(sim: tuple[Path, dict[str, object]]) -> dict[str, object]:
    """The run reports of the simulated run made by the CLI: HTML on stdout, PNG in a file."""
    db, _ = sim
    runner = CliRunner()
    res = runner.invoke(main, ["report", "run", "--db", str(db), "--run", "1"])
    assert res.exit_code == 0, res.output
    png = db.with_suffix(".png")
    res_png = runner.invoke(
        main, ["report", "run", "--db", str(db), "--format", "png", "-o", str(png)]
    )
    assert res_png.exit_code == 0, res_png.output
    assert f"wrote png run report to {png}" in res_png.output
    return {"html": res.stdout, "png": png.read_bytes()}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


# --------------------------------------------------------------------------- data


def test_cumulative_savings_and_cycles_end_on_the_run_kpis(sim):
    db, kpis = sim
    for max_points in (2000, 37):
        rep = load_run(db, max_points=max_points)
        s = rep.series
        assert rep.time_s.size <= max_points
        assert np.all(np.diff(rep.time_s) > 0)
        # Integrated sample by sample from the logged meters: the same figures as the twin's
        # counters, whatever the bucket size.
        assert s["cost_eur"][-1] == pytest.approx(kpis["cost_eur"], rel=1e-9, abs=1e-9)
        assert s["baseline_cost_eur"][-1] == pytest.approx(kpis["baseline_cost_eur"], rel=1e-9)
        assert s["baseline_cost_eur"][-1] - s["cost_eur"][-1] == pytest.approx(
            kpis["savings_eur"], rel=1e-9
        )
        assert s["equivalent_full_cycles"][-1] == pytest.approx(
            kpis["equivalent_full_cycles"], rel=1e-9
        )
        assert np.all(np.diff(s["equivalent_full_cycles"]) >= 0)
        assert rep.kpis["savings_eur"] == pytest.approx(kpis["savings_eur"])
        assert int(s["samples"].sum()) == rep.samples == kpis["cycles"]


def test_aggregation_keeps_extremes_and_means(sim):
    db, _ = sim
    with RunStore(db, read_only=True) as store:
        pack = store.read_pack(1)
    rep = load_run(db, max_points=50)
    s, n = rep.series, rep.series["samples"]
    assert np.nanmin(s["cell_voltage_min_v"]) == pytest.approx(pack["cell_voltage_min_v"].min())
    assert np.nanmax(s["cell_voltage_max_v"]) == pytest.approx(pack["cell_voltage_max_v"].max())
    assert np.nanmax(s["temperature_max_degc"]) == pytest.approx(pack["temperature_max_degc"].max())
    spread = (pack["cell_voltage_max_v"] - pack["cell_voltage_min_v"]).max()
    assert np.nanmax(s["cell_voltage_spread_v"]) == pytest.approx(spread)
    # Bucket means weighted by their sample counts give the mean of the run.
    for name in ("soc", "grid_power_w", "import_price_eur_per_kwh"):
        assert np.sum(s[name] * n) / n.sum() == pytest.approx(pack[name].mean(), rel=1e-9)


def test_alarms_gate_outcomes_and_events_of_the_link_loss(sim):
    db, kpis = sim
    rep = load_run(db)
    s = rep.series
    assert s["gate_safe_idle"].sum() == kpis["gate_safe_idle"] > 0
    assert s["gate_refused"].sum() == kpis["gate_refused"]
    with RunStore(db, read_only=True) as store:
        pack = store.read_pack(1)
        t0 = float(pack["time_s"].iloc[0])
    in_alarm = (pack["alarms"] != "").to_numpy()
    assert s["alarm_samples"].sum() == in_alarm.sum() > 0
    first_alarm_t = rep.time_s[np.flatnonzero(s["alarm_samples"] > 0)[0]]
    assert first_alarm_t > t0 + LINK_LOST_S
    kinds = {k for _t, k, _s, _c in rep.events}
    assert {"drill", "protection", "contactor"} <= kinds
    codes = {(k, c, sv) for k, c, sv, _n in rep.event_counts}
    assert ("protection", "ems_link_lost:raised", "warning") in codes
    assert any(e[2] == "ems_link_lost:raised" for e in rep.recent_events)
    assert rep.rainflow is not None
    assert rep.rainflow.cycles.sum() > 0


def test_cell_maps_are_snapshots_of_the_cells_table(sim):
    db, _ = sim
    rep = load_run(db, max_cell_snapshots=20)
    cm = rep.cells
    assert cm is not None
    assert cm.n_cells == 16  # home: 16S1P
    assert 2 <= cm.time_s.size <= 20
    with RunStore(db, read_only=True) as store:
        cells = store.read_cells(1)
    at = cells[cells["time_s"] == cm.time_s[3]].sort_values("cell_index")
    np.testing.assert_allclose(cm.voltage_v[3], at["voltage_v"].to_numpy())
    np.testing.assert_allclose(cm.temperature_degc[3], at["temperature_degc"].to_numpy())
    # Snapshots span the run evenly: the first and the last recorded ones are taken.
    assert cm.time_s[0] == cells["time_s"].min()
    assert cm.time_s[-1] == cells["time_s"].max()


def test_irregular_steps_are_integrated_exactly(tmp_path: Path):
    """Cost = sum(grid * price * dt) with dt the time since the previous row."""
    rng = np.random.default_rng(7)
    t = 1_717_200_000.0 + np.cumsum(rng.uniform(5.0, 120.0, 3000))
    grid = rng.uniform(-3000.0, 4000.0, t.size)
    batt = rng.uniform(-2000.0, 2000.0, t.size)
    imp, exp = rng.uniform(0.1, 0.4, t.size), rng.uniform(-0.05, 0.1, t.size)
    db = tmp_path / "synthetic.sqlite"
    with RunStore(db) as store:
        store.start_run("lab", {"grid": {"max_export_w": 2500.0}, "timezone": "UTC"})
        for k in range(t.size):
            store.record_pack(
                {
                    "time_s": t[k],
                    "grid_power_w": grid[k],
                    "battery_ac_power_w": batt[k],
                    "import_price_eur_per_kwh": imp[k],
                    "export_price_eur_per_kwh": exp[k],
                    "soc": 0.5,
                }
            )
    dt = np.r_[0.0, np.diff(t)]

    def cost(g: np.ndarray) -> float:
        return float(np.sum(np.where(g >= 0, g * imp, g * exp) * dt) / 3.6e6)

    rep = load_run(db, max_points=40)
    assert rep.time_s.size <= 40
    assert rep.series["cost_eur"][-1] == pytest.approx(cost(grid), rel=1e-9)
    base = np.maximum(grid + batt, -2500.0)
    assert rep.series["baseline_cost_eur"][-1] == pytest.approx(cost(base), rel=1e-9)
    assert rep.cells is None
    assert rep.rainflow is None
    assert any("no KPIs recorded" in n for n in rep.notes)
    shown = {c.key for c in CHARTS if c.missing(rep) is None}
    assert shown == {"prices", "soc", "power", "savings", "timeline"}


def test_a_run_without_samples_renders_a_page(tmp_path: Path):
    db = tmp_path / "empty.sqlite"
    with RunStore(db) as store:
        store.start_run("home", {})
        store.record_kpis({"savings_eur": 0.0})
    rep = load_run(db)
    assert rep.samples == 0
    page = render_html(rep)
    assert "Not available: no data for import_price_eur_per_kwh" in page
    assert "<img" not in page


# --------------------------------------------------------------------------- renderings


def test_html_report_is_self_contained_with_the_kpis_and_the_charts(sim, rendered):
    _, kpis = sim
    page = rendered["html"]
    assert page.startswith("<!DOCTYPE html>")
    assert "openbess run report: home, run 1" in page
    for name in ("savings_eur", "cost_eur", "baseline_cost_eur", "equivalent_full_cycles"):
        value = float(kpis[name])  # type: ignore[arg-type]
        assert f"<td>{name}</td><td class='num'>{value:.6g}</td>" in page
    assert f"<td>gate_safe_idle</td><td class='num'>{kpis['gate_safe_idle']}</td>" in page
    # Every chart is there, embedded as a PNG data URI.
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 11
    for b64 in images:
        w, h = _png_size(base64.b64decode(b64))
        assert w > 500
        assert h > 150
    for key in ("prices", "soc", "power", "cell_voltage", "temperature", "savings", "cycles"):
        assert f"<h2 id='{key}'>" in page
    assert "Not available" not in page
    # No external asset: no http(s) URL, script, stylesheet link or CSS import.
    assert not re.search(r"https?://", page)
    assert not re.search(r"<script|<link|@import|url\(", page)
    assert "ems_link_lost:raised" in page


def test_png_report_is_one_multi_panel_figure(rendered):
    data = rendered["png"]
    width, height = _png_size(data)
    assert width == 1600  # 16 in at 100 dpi
    assert height > 1500  # eleven panels
    assert len(data) > 100_000


def test_timezone_and_max_points(sim):
    db, _ = sim
    rep = load_run(db, max_points=50, timezone="UTC")
    assert rep.timezone == "UTC"
    assert ("time zone of the charts", "UTC") in rep.info
    assert rep.time_s.size == 50


# --------------------------------------------------------------------------- bad input


def test_bad_databases_and_runs_are_named(sim, tmp_path: Path):
    db, _ = sim
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(StorageError, match=re.escape(f"{missing}: no such run database")):
        load_run(missing)
    with pytest.raises(StorageError, match=re.escape(f"{db}: no run 7 in this run database")):
        load_run(db, 7)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StorageError, match="not an SQLite database"):
        load_run(garbage)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    conn.close()
    with pytest.raises(StorageError, match=re.escape(f"{other}: not an openbess run database")):
        load_run(other)
    with pytest.raises(ValueError, match="max_points must be >= 10"):
        load_run(db, max_points=3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "{missing}"], "{missing}: no such run database"),
        (["--db", "{db}", "--run", "7"], "{db}: no run 7 in this run database (runs: 1)"),
        (["--db", "{other}"], "{other}: not an openbess run database"),
        ([], "give either --db FILE or --backtest CSV"),
        (["--db", "{db}", "--backtest", "{csv}"], "give either --db FILE or --backtest CSV"),
        (["--db", "{db}", "--summary", "{csv}"], "--summary and --site go with --backtest"),
        (["--db", "{db}", "--timezone", "Mars/Base"], "--timezone 'Mars/Base' is not a known IANA"),
        (["--backtest", "{csv}"], "{csv}: line 1: missing column(s) ['import_price_eur_per_kwh'"),
        (["--db", "{db}", "-o", "{tmp}/no/r.html"], "{tmp}/no/r.html: cannot write the report"),
    ],
)
def test_cli_errors_exit_2_with_a_message(sim, tmp_path: Path, args, message):
    db, _ = sim
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE things (x)")
    conn.close()
    csv_path = tmp_path / "inputs.csv"
    csv_path.write_text("time,load_w,pv_w\n2024-06-01T00:00:00+00:00,1,2\n")
    names = {
        "db": str(db),
        "missing": str(tmp_path / "missing.sqlite"),
        "other": str(other),
        "csv": str(csv_path),
        "tmp": str(tmp_path),
    }
    res = CliRunner().invoke(main, ["report", "run", *[a.format(**names) for a in args]])
    assert res.exit_code == 2, res.output
    assert f"error: {message.format(**names)}" in res.output


# --------------------------------------------------------------------------- backtests


def test_backtest_series_round_trip_and_report(tmp_path: Path):
    from openbess.ems.backtest import BacktestOptions, run_backtest, site_inputs

    cfg = load_site("home")
    inputs = site_inputs(cfg, pd.Timestamp(cfg.simulation.start), 1.0, step_s=900.0)
    result = run_backtest(
        cfg,
        inputs,
        BacktestOptions(forecast="perfect", history_s=0, perfect_foresight=False, progress=False),
    )
    series = tmp_path / "bt.csv"
    summary = tmp_path / "bt.json"
    write_backtest_series(result.frame, series, tz=cfg.timezone)
    summary.write_text(json.dumps(result.summary, default=str))

    rep = load_backtest_csv(series, summary, max_export_w=cfg.grid.max_export_w)
    s, sm = rep.series, result.summary
    assert rep.source == "backtest"
    assert rep.samples == len(result.frame)
    assert s["cost_eur"][-1] == pytest.approx(sm["cost_eur"], rel=1e-6, abs=1e-6)
    assert s["baseline_cost_eur"][-1] == pytest.approx(sm["baseline_cost_eur"], rel=1e-6)
    assert s["equivalent_full_cycles"][-1] == pytest.approx(sm["equivalent_full_cycles"], 1e-6)
    assert rep.kpis["savings_eur"] == pytest.approx(sm["savings_eur"])
    assert "forecast" not in rep.kpis  # text entries are header rows, not KPIs

    out = tmp_path / "bt.html"
    res = CliRunner().invoke(
        main,
        [
            "report",
            "run",
            "--backtest",
            str(series),
            "--summary",
            str(summary),
            "--site",
            "home",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    assert f"{sm['savings_eur']:.6g}" in page
    # prices, SoC, power, savings, cycles (a backtest has no cells, events or logbook)
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 5
    assert "Not available: a backtest has no events, gate or alarms." in page
    assert "<td>Europe/Paris</td>" in page
    assert not re.search(r"https?://", page)


def test_backtest_frame_without_site_uses_load_minus_pv_and_says_so():
    idx = pd.date_range("2024-06-01", periods=4, freq="15min", tz="UTC")
    frame = pd.DataFrame(
        {
            "load_w": [1000.0, 1000.0, 0.0, 0.0],
            "pv_w": [0.0, 0.0, 4000.0, 4000.0],
            "import_price_eur_per_kwh": [0.3, 0.3, 0.3, 0.3],
            "export_price_eur_per_kwh": [0.1, 0.1, -0.1, 0.1],
            "battery_power_w": [1000.0, 0.0, -4000.0, 0.0],
            "grid_power_w": [0.0, 1000.0, 0.0, -4000.0],
            "soc": [0.4, 0.4, 0.8, 0.8],
        },
        index=idx,
    )
    rep = from_backtest(frame, {"throughput_kwh": 1.25, "equivalent_full_cycles": 0.0625})
    # 1 kW for 15 min at 0.3; -4 kW for 15 min at 0.1
    assert rep.series["cost_eur"][-1] == pytest.approx(0.25 * 0.3 - 1.0 * 0.1)
    # no battery: +1 kW twice at 0.3, -4 kW at -0.1 and at 0.1
    assert rep.series["baseline_cost_eur"][-1] == pytest.approx(0.15 + 0.1 - 0.1)
    assert rep.series["equivalent_full_cycles"][-1] == pytest.approx(0.0625)
    assert any("Baseline (no battery) = load - PV: without the site" in n for n in rep.notes)
    capped = from_backtest(frame, None, max_export_w=3000.0)
    # exports capped at 3 kW, and at 0 while the export price is negative
    assert capped.series["baseline_cost_eur"][-1] == pytest.approx(0.15 + 0.0 - 0.075)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['soc'\]"):
        from_backtest(frame.drop(columns="soc"))


def test_bad_backtest_files_are_named(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    cols = "time,load_w,pv_w,import_price_eur_per_kwh,export_price_eur_per_kwh,"
    bad.write_text(
        cols + "battery_power_w,grid_power_w,soc\n2024-06-01T00:00:00+00:00,1,2,3,4,5,6,x\n"
    )
    with pytest.raises(DataError, match=r"bad\.csv.*line 2.*soc"):
        load_backtest_csv(bad)
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'none.csv'}: cannot read")):
        load_backtest_csv(tmp_path / "none.csv")


# --------------------------------------------------------------------------- warranty


def test_warranty_html_draws_the_histograms_as_heat_maps(sim):
    db, _ = sim
    rep = warranty_report(db)
    page = render_warranty_html(rep)
    for title, key in (
        ("Time at SoC and temperature", "soc_temperature"),
        ("Time at C-rate and temperature", "c_rate_temperature"),
    ):
        m = re.search(rf"<svg [^>]*aria-label='{title}'>(.*?)</svg>", page)
        assert m is not None, title
        hours = [float(v) for v in re.findall(r": ([0-9.e+-]+) h</title>", m.group(1))]
        h = np.asarray(rep["histograms"][key]["time_s"])
        assert len(hours) == h.size
        assert sum(hours) == pytest.approx(h.sum() / 3600.0, rel=1e-3)
        shaded = re.findall(r"fill-opacity='([0-9.]+)' stroke='#eee'", m.group(1))
        assert sum(float(a) > 0 for a in shaded) == int((h > 0).sum()) > 0
    assert "aria-label='bar chart'" in page  # rainflow depths
    assert not re.search(r"<script|<link|<img|src=|href=", page)
    assert math.isfinite(float(rep["kpis"]["savings_eur"]))


def test_backtest_series_from_the_cli_renders_a_report(tmp_path: Path):
    from click.testing import CliRunner

    from openbess.cli import main

    series = tmp_path / "bt.csv"
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "backtest",
            "--site",
            "home",
            "--days",
            "1",
            "--forecast",
            "perfect",
            "--no-progress",
            "--no-perfect",
            "--series",
            str(series),
        ],
    )
    assert res.exit_code == 0, res.output
    assert series.stat().st_size > 0
    out = tmp_path / "bt.html"
    res = runner.invoke(
        main,
        ["report", "run", "--backtest", str(series), "--site", "home", "-o", str(out)],
    )
    assert res.exit_code == 0, res.output
    html = out.read_text()
    assert "data:image/png;base64," in html


def test_backtest_scenario_days_option_is_validated():
    from click.testing import CliRunner

    from openbess.cli import main

    res = CliRunner().invoke(
        main, ["backtest", "--site", "home", "--days", "1", "--scenario-days", "40"]
    )
    assert res.exit_code == 2
    assert "--scenario-days" in res.output
