"""The warranty report: from a run database with a logbook to JSON, CSV and HTML, and the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from openbess.bms.logbook import Logbook, LogbookConfig, LogbookWriter, save_logbook
from openbess.cli import main
from openbess.cli_report import report
from openbess.errors import StorageError
from openbess.report import render, render_csv, render_html, render_json, warranty_report
from openbess.storage import RunStore

main.add_command(report)

T0 = 1_717_200_000.0  # 2024-06-01 00:00 UTC


def _logbook(hours: int, current_a: float) -> Logbook:
    """A day-spanning logbook: cycles at +-current_a, one hot spell, one deep discharge."""
    lb = Logbook(
        LogbookConfig(
            nominal_capacity_ah=100.0,
            nominal_energy_wh=5000.0,
            cell_voltage_min_v=2.5,
            cell_voltage_max_v=3.65,
            period_s=3600.0,
        )
    )
    soc = 0.5
    n = hours * 60
    for k in range(n + 1):
        t = T0 + 60.0 * k
        phase = (k // 60) % 2  # alternate hours of discharge and charge
        i = current_a if phase == 0 else -current_a
        if k:
            soc -= i * 60.0 / 3600.0 / 100.0
        temp = 50.0 if 100 <= k < 130 else 25.0
        vmin = 2.4 if 200 <= k < 203 else 3.2
        lb.update(
            t, 0.0 if k == 0 else 60.0, i, 50.0, soc, soc, soc, vmin, 3.4, temp - 1, temp, temp,
            0.98, 98.0, 0.05, ("temperature_high:mol",) if temp > 45 else (), -i * 52.0, 0,
        )  # fmt: skip
    return lb


def _db(tmp_path: Path) -> tuple[Path, list[int], list[Logbook]]:
    """Two runs, each with a logbook, and events in the run store."""
    db = tmp_path / "site.sqlite"
    ids, books = [], []
    store = RunStore(db)
    for r, current in enumerate((20.0, 40.0)):
        rid = store.start_run("home", {"run": r}, started_at_s=T0)
        store.record_pack({"time_s": T0, "soc": 0.5})
        store.record_event(T0 + 10, "protection", "temperature_high:raised", "warning", "hot")
        store.record_event(T0 + 20, "contactor", "closed", "info", "closed <ok> & fine")
        lb = _logbook(6, current)
        for ev in lb.pop_events():
            store.record_event(ev.time_s, ev.kind, ev.code, ev.severity, ev.message)
        store.record_kpis({"savings_eur": 1.5 + r})
        store.end_run(T0 + 6 * 3600)
        store.flush()
        with LogbookWriter(db, rid) as w:
            w.save(lb, T0 + 6 * 3600)
        ids.append(rid)
        books.append(lb)
    store.close()
    return db, ids, books


def test_report_of_the_latest_run_by_default_and_of_a_chosen_run(tmp_path: Path):
    db, ids, books = _db(tmp_path)
    rep = warranty_report(db)
    assert rep["run"]["id"] == ids[-1]
    m = {x["name"]: x for x in rep["metrics"]}
    lb = books[-1]
    assert m["equivalent_full_cycles"]["value"] == pytest.approx(lb.equivalent_full_cycles())
    # 6 h alternating at 40 A on a 100 Ah pack: 240 Ah moved, 1.2 EFC.
    assert m["equivalent_full_cycles"]["value"] == pytest.approx(1.2)
    assert m["equivalent_full_cycles"]["unit"] == "1"
    assert m["deep_discharge_events"]["value"] == 1
    assert m["time_above_high_temperature_s"]["value"] == 30 * 60.0
    assert m["round_trip_efficiency_ac"]["annex_vii"].startswith("A:")
    assert rep["alarm_counts"] == {"temperature_high:mol": 1}
    h = rep["histograms"]["soc_temperature"]
    total = sum(map(sum, h["time_s"])) + h["unknown_time_s"]
    assert total == pytest.approx(6 * 3600.0)
    ev = rep["events"]
    # Two from the store, and the logbook's own: hot spell and deep discharge, start and end.
    assert ev["total"] == 6
    assert {e["code"] for e in ev["by_code"]} >= {"deep_discharge:start", "closed"}
    assert ev["recent"][0]["time_s"] >= ev["recent"][-1]["time_s"]
    assert rep["kpis"] == {"savings_eur": 2.5}
    rows = rep["periods"]["rows"]
    assert len(rows) == 6  # hourly periods, closed by the cycle at their end
    assert [r[2] for r in rows] == [3600.0] * 6  # elapsed_s: each cycle's dt in its period
    first = warranty_report(db, ids[0])
    assert first["run"]["id"] == ids[0]
    assert {x["name"]: x["value"] for x in first["metrics"]}["equivalent_full_cycles"] == (
        pytest.approx(0.6)
    )


def test_json_csv_and_html_renderings(tmp_path: Path):
    db, _, books = _db(tmp_path)
    rep = warranty_report(db)
    back = json.loads(render_json(rep))
    assert back["metrics"] == rep["metrics"]
    assert back["run"]["site"] == "home"

    rows = list(csv.reader(io.StringIO(render_csv(rep))))
    assert rows[0] == ["name", "value", "unit"]
    assert all(len(r) == 3 for r in rows)
    by_name = {r[0]: r for r in rows[1:]}
    assert float(by_name["equivalent_full_cycles"][1]) == pytest.approx(1.2)
    assert by_name["capacity_throughput_out_ah"][2] == "Ah"
    assert by_name["site"][1] == "home"
    time_rows = [r for r in rows if r[0].startswith("time_at[soc=")]
    assert sum(float(r[1]) for r in time_rows) == pytest.approx(6 * 3600.0)
    assert sum(float(r[1]) for r in rows if r[0].startswith("rainflow_cycles[")) == (
        pytest.approx(float(books[-1].cycle_depth_histogram().sum()))
    )
    assert by_name["round_trip_efficiency_dc_recent"][1] != ""

    page = render_html(rep)
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 2  # rainflow bars and the SoH line
    assert "class='heat'" in page
    # Self-contained: no scripts, stylesheets, images or links to fetch.
    assert not re.search(r"<script|<link|<img|src=|href=|@import|url\(", page)
    assert re.sub(r"xmlns='http://www.w3.org/2000/svg'", "", page).count("http") == 0
    assert "closed &lt;ok&gt; &amp; fine" in page  # event text is escaped
    assert "Annex VII" in page
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render(rep, "pdf")


def test_cli_writes_each_format(tmp_path: Path):
    db, ids, _ = _db(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["report", "warranty", "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["run"]["id"] == ids[-1]
    for fmt in ("json", "csv", "html"):
        out = tmp_path / f"r.{fmt}"
        res = runner.invoke(
            main,
            ["report", "warranty", "--db", str(db), "--run", str(ids[0]), "--format", fmt,
             "-o", str(out)],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        text = out.read_text(encoding="utf-8")
        assert text
        if fmt == "json":
            assert json.loads(text)["run"]["id"] == ids[0]
        elif fmt == "csv":
            assert text.startswith("name,value,unit\n")
        else:
            assert "</html>" in text


def test_errors_name_the_file(tmp_path: Path):
    runner = CliRunner()

    def fails(args: list[str], pattern: str) -> None:
        res = runner.invoke(main, ["report", "warranty", *args])
        assert res.exit_code == 2, res.output
        assert re.search(pattern, res.stderr), res.stderr

    missing = tmp_path / "missing.sqlite"
    fails(["--db", str(missing)], r"error: .*missing\.sqlite: no such run database")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database at all\n" * 50)
    fails(["--db", str(notes)], r"notes\.txt: not an SQLite database")
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    fails(["--db", str(other)], r"other\.sqlite: not an openbess run database")
    empty = tmp_path / "nolog.sqlite"
    with RunStore(empty) as store:
        store.start_run("home", {})
    fails(["--db", str(empty)], r"nolog\.sqlite: no logbook")
    db, _, _ = _db(tmp_path)
    fails(["--db", str(db), "--run", "9"], r"site\.sqlite: no run 9")
    res = runner.invoke(main, ["report", "warranty", "--db", str(db), "--format", "pdf"])
    assert res.exit_code == 2
    assert "pdf" in res.output
    with pytest.raises(StorageError, match="nolog"):
        warranty_report(empty)


def test_a_run_without_a_logbook_next_to_one_with(tmp_path: Path):
    db, ids, books = _db(tmp_path)
    with RunStore(db) as store:
        bare = store.start_run("home", {})
    with pytest.raises(StorageError, match=f"run {bare} has no logbook"):
        warranty_report(db, bare)
    # Default: the newest run that has a logbook.
    assert warranty_report(db)["run"]["id"] == ids[-1]
    save_logbook(db, bare, books[0], T0)
    assert warranty_report(db)["run"]["id"] == bare


def test_unknown_values_render_as_empty_or_na(tmp_path: Path):
    db = tmp_path / "x.sqlite"
    with RunStore(db) as store:
        rid = store.start_run("home", {})
    lb = Logbook(
        LogbookConfig(
            nominal_capacity_ah=10.0,
            nominal_energy_wh=500.0,
            cell_voltage_min_v=2.5,
            cell_voltage_max_v=3.65,
        )
    )
    nan = math.nan
    lb.update(T0, 0.0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    save_logbook(db, rid, lb, T0)
    rep = warranty_report(db)
    m = {x["name"]: x["value"] for x in rep["metrics"]}
    assert m["soh"] is None
    assert m["round_trip_efficiency_dc"] is None
    json.loads(render_json(rep))  # strict JSON: no NaN
    rows = {r[0]: r for r in csv.reader(io.StringIO(render_csv(rep)))}
    assert rows["soh"][1] == ""
    assert "n/a" in render_html(rep)
