"""Reports from a run database: the warranty report (BMS logbook, Annex VII figures, events).

:func:`warranty_report` reads the newest logbook snapshot of a run (see
:mod:`openbess.bms.logbook`), the run's events and KPIs, and returns one JSON-serialisable
mapping; :func:`render` turns it into JSON, CSV (``name,value,unit`` rows) or a single
self-contained HTML page (inline CSS; the 2-D histograms as inline SVG heat maps next to their
heat tables, the rainflow counts as an SVG bar chart and the SoH as an SVG line; no external
assets).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openbess import __version__
from openbess.bms.logbook import PERIOD_COLUMNS, Logbook, _connect_ro, _latest_row
from openbess.errors import DataError, StorageError

__all__ = ["FORMATS", "render", "render_csv", "render_html", "render_json", "warranty_report"]

FORMATS: tuple[str, ...] = ("json", "csv", "html")
"""Output formats of :func:`render`."""

RECENT_EVENTS = 200
"""Events listed one by one in the report (the newest); all are counted."""


def _iso(time_s: float | None) -> str | None:
    """ISO 8601 UTC text of a Unix time, None for None."""
    if time_s is None or not math.isfinite(time_s):
        return None
    return datetime.fromtimestamp(time_s, UTC).isoformat(timespec="seconds")


def _bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of bins whose outer bins are open: ``<e1``, ``e1..e2``, ..., ``>=e[-2]``."""
    n = len(edges) - 1
    if n == 1:
        return ["all"]
    out = [f"<{edges[1]:g}"]
    out += [f"{edges[k]:g}..{edges[k + 1]:g}" for k in range(1, n - 1)]
    out.append(f">={edges[n - 1]:g}")
    return out


def warranty_report(db_path: str | Path, run_id: int | None = None) -> dict[str, Any]:
    """Build the warranty report of a run from its run database.

    Parameters
    ----------
    db_path : str or pathlib.Path
        An openbess run database with a ``logbook`` table.
    run_id : int or None
        The run; None: the newest run that has a logbook.

    Returns
    -------
    dict
        JSON-serialisable: ``run``, ``snapshot_time_s``, ``metrics`` (rows of name, value,
        unit, Annex VII item, description), ``extremes``, ``alarm_counts``, ``episodes``,
        ``histograms`` (``soc_temperature``, ``c_rate_temperature``, ``cycle_depth``),
        ``periods``, ``events`` and ``kpis``.

    Raises
    ------
    StorageError
        Missing file, not an openbess run database, no such run, or no logbook; the message
        names the file.
    DataError
        The stored logbook cannot be read (file and run named).
    """
    path = Path(db_path)
    conn = _connect_ro(path)
    try:
        rid, snap_t, text = _latest_row(conn, path, run_id)
        try:
            lb = Logbook.from_json(text)
        except ValueError as exc:
            raise DataError(f"{path}: logbook of run {rid} at time_s {snap_t}: {exc}") from None
        try:
            run = conn.execute(
                "SELECT id, started_at_s, ended_at_s, site, contract_version, software_version "
                "FROM runs WHERE id = ?",
                (rid,),
            ).fetchone()
            by_code = conn.execute(
                "SELECT kind, code, severity, count(*) FROM events WHERE run_id = ? "
                "GROUP BY kind, code, severity ORDER BY kind, code, severity",
                (rid,),
            ).fetchall()
            recent = conn.execute(
                "SELECT time_s, kind, code, severity, message FROM events WHERE run_id = ? "
                "ORDER BY time_s DESC, id DESC LIMIT ?",
                (rid, RECENT_EVENTS),
            ).fetchall()
            kpis = conn.execute(
                "SELECT name, value FROM kpis WHERE run_id = ? ORDER BY name", (rid,)
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{path}: cannot read run {rid}: {exc}") from None
    finally:
        conn.close()
    if run is None:
        raise StorageError(f"{path}: logbook refers to run {rid}, which is not in 'runs'")

    c = lb.config
    h_st = lb.histogram_soc_temperature()
    h_ct = lb.histogram_c_rate_temperature()
    depth = lb.cycle_depth_histogram()
    n_events = int(sum(int(r[3]) for r in by_code))
    return {
        "title": "openbess warranty report",
        "generated_at": _iso(datetime.now(UTC).timestamp()),
        "software_version": __version__,
        "database": str(path),
        "run": {
            "id": int(run[0]),
            "site": str(run[3]),
            "started_at_s": run[1],
            "ended_at_s": run[2],
            "started_at": _iso(run[1]),
            "ended_at": _iso(run[2]),
            "contract_version": str(run[4]),
            "software_version": str(run[5]),
        },
        "snapshot_time_s": snap_t,
        "snapshot_time": _iso(snap_t),
        "metrics": [m._asdict() for m in lb.metrics()],
        "extremes": lb.extremes(),
        "alarm_counts": dict(sorted(lb.alarm_counts.items())),
        "episodes": [dict(e) for e in lb.episodes],
        "histograms": {
            "soc_temperature": {
                "x_name": "soc",
                "x_unit": "1",
                "x_edges": list(c.soc_edges),
                "y_name": "temperature_degc",
                "y_unit": "degC",
                "y_edges": list(c.temperature_edges_degc),
                "time_s": h_st.tolist(),
                "unknown_time_s": lb.time_unknown_soc_temperature_s,
            },
            "c_rate_temperature": {
                "x_name": "c_rate",
                "x_unit": "1/h",
                "x_edges": list(c.c_rate_edges),
                "y_name": "temperature_degc",
                "y_unit": "degC",
                "y_edges": list(c.temperature_edges_degc),
                "time_s": h_ct.tolist(),
                "unknown_time_s": lb.time_unknown_c_rate_temperature_s,
            },
            "cycle_depth": {
                "edges": list(c.depth_edges),
                "cycles": depth.tolist(),
                "hysteresis_soc": c.rainflow_hysteresis_soc,
            },
        },
        "periods": {
            "period_s": c.period_s,
            "columns": list(PERIOD_COLUMNS),
            "rows": [list(r) for r in lb.periods],
        },
        "events": {
            "total": n_events,
            "by_code": [
                {"kind": k, "code": cd, "severity": sv, "count": int(n)} for k, cd, sv, n in by_code
            ],
            "recent": [
                {
                    "time_s": t,
                    "time": _iso(t),
                    "kind": k,
                    "code": cd,
                    "severity": sv,
                    "message": msg,
                }
                for t, k, cd, sv, msg in recent
            ],
        },
        "kpis": {str(n): (None if v is None else float(v)) for n, v in kpis},
    }


# --------------------------------------------------------------------------- JSON, CSV


def render_json(report: dict[str, Any]) -> str:
    """The report as indented JSON (NaN never appears: unknown values are null)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def _csv_rows(report: dict[str, Any]) -> list[tuple[str, object, str]]:
    run = report["run"]
    rows: list[tuple[str, object, str]] = [
        ("database", report["database"], ""),
        ("run_id", run["id"], ""),
        ("site", run["site"], ""),
        ("run_started_at_s", run["started_at_s"], "s"),
        ("run_ended_at_s", run["ended_at_s"], "s"),
        ("snapshot_time_s", report["snapshot_time_s"], "s"),
    ]
    rows += [(m["name"], m["value"], m["unit"]) for m in report["metrics"]]
    for name, ext in report["extremes"].items():
        rows.append((f"lifetime_{name}_time_s", ext["time_s"], "s"))
    for key, label in (("soc_temperature", "soc"), ("c_rate_temperature", "c_rate")):
        h = report["histograms"][key]
        xl, yl = _bin_labels(h["x_edges"]), _bin_labels(h["y_edges"])
        for i, row in enumerate(h["time_s"]):
            for j, v in enumerate(row):
                rows.append((f"time_at[{label}={xl[i]},temperature_degc={yl[j]}]", v, "s"))
        rows.append((f"time_at[{label}=unknown]", h["unknown_time_s"], "s"))
    d = report["histograms"]["cycle_depth"]
    for lab, v in zip(_bin_labels(d["edges"]), d["cycles"], strict=True):
        rows.append((f"rainflow_cycles[depth={lab}]", v, "1"))
    rows.append(("events_total", report["events"]["total"], "1"))
    for e in report["events"]["by_code"]:
        rows.append((f"events[{e['kind']}/{e['code']}/{e['severity']}]", e["count"], "1"))
    return rows


def render_csv(report: dict[str, Any]) -> str:
    """The report as ``name,value,unit`` rows (empty value = unknown)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("name", "value", "unit"))
    for name, value, unit in _csv_rows(report):
        w.writerow((name, "" if value is None else value, unit))
    return buf.getvalue()


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.heat td{text-align:right;min-width:3.2em;font-variant-numeric:tabular-nums}
.muted{color:#777}.small{font-size:.85em}
"""


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:d}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.6g}"
    return str(value)


def _e(value: object) -> str:
    return html.escape(_fmt(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], num: Sequence[int] = ()) -> str:
    out = ["<table><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>")
        for k, v in enumerate(r):
            cls = ' class="num"' if k in num else ""
            out.append(f"<td{cls}>{_e(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _heat_table(h: dict[str, Any], title: str) -> str:
    """A 2-D time histogram as an HTML table shaded by time (hours shown)."""
    xl, yl = _bin_labels(h["x_edges"]), _bin_labels(h["y_edges"])
    data: list[list[float]] = h["time_s"]
    vmax = max((v for row in data for v in row), default=0.0)
    out = [
        f"<p class='small'>{html.escape(title)}: hours per bin (rows {html.escape(h['x_name'])} "
        f"[{html.escape(h['x_unit'])}], columns {html.escape(h['y_name'])} "
        f"[{html.escape(h['y_unit'])}]); unknown: {_e(h['unknown_time_s'] / 3600.0)} h.</p>",
        "<table class='heat'><thead><tr><th></th>",
    ]
    out += [f"<th>{html.escape(lab)}</th>" for lab in yl]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(data):
        out.append(f"<tr><th>{html.escape(xl[i])}</th>")
        for v in row:
            a = 0.0 if vmax <= 0 or v <= 0 else 0.1 + 0.9 * math.log1p(v) / math.log1p(vmax)
            text = "" if v <= 0 else f"{v / 3600.0:.3g}"
            out.append(f"<td style='background:rgba(214,39,40,{a:.3f})'>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _heat_svg(h: dict[str, Any], title: str) -> str:
    """A 2-D time histogram as an inline SVG heat map (x bins across, temperature bins up).

    Shading as in :func:`_heat_table` (opacity grows with log(1 + time)); each cell's tooltip
    gives its hours; a legend shows the shades of 0, 1/100, 1/10 and all of the largest bin.
    """
    xl, yl = _bin_labels(h["x_edges"]), _bin_labels(h["y_edges"])
    data: list[list[float]] = h["time_s"]
    vmax = max((v for row in data for v in row), default=0.0)
    nx, ny = len(xl), len(yl)
    left, top, bottom, legend_w = 78, 10, 64, 120
    cw = max(12.0, min(44.0, (720 - left - legend_w) / max(nx, 1)))
    ch = 18.0
    w = left + cw * nx + legend_w
    hh = top + ch * ny + bottom

    def alpha(v: float) -> float:
        return 0.0 if vmax <= 0 or v <= 0 else 0.1 + 0.9 * math.log1p(v) / math.log1p(vmax)

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w:.0f}' height='{hh:.0f}' "
        f"viewBox='0 0 {w:.0f} {hh:.0f}' role='img' aria-label='{html.escape(title)}'>",
        f"<rect x='{left}' y='{top}' width='{cw * nx:.1f}' height='{ch * ny:.1f}' "
        "fill='none' stroke='#444'/>",
    ]
    for i in range(nx):
        x = left + i * cw
        for j in range(ny):
            v = float(data[i][j])
            y = top + (ny - 1 - j) * ch
            parts.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{cw:.1f}' height='{ch:.1f}' "
                f"fill='rgb(214,39,40)' fill-opacity='{alpha(v):.3f}' stroke='#eee' "
                f"stroke-width='0.5'><title>{html.escape(xl[i])}, {html.escape(yl[j])}: "
                f"{v / 3600.0:.4g} h</title></rect>"
            )
        cx, cy = x + cw / 2, top + ch * ny + 8
        parts.append(
            f"<text x='{cx:.1f}' y='{cy:.1f}' font-size='9' text-anchor='end' "
            f"transform='rotate(-60 {cx:.1f} {cy:.1f})'>{html.escape(xl[i])}</text>"
        )
    for j in range(ny):
        y = top + (ny - 1 - j) * ch + ch / 2 + 3
        parts.append(
            f"<text x='{left - 4}' y='{y:.1f}' font-size='9' text-anchor='end'>"
            f"{html.escape(yl[j])}</text>"
        )
    parts.append(
        f"<text x='{left + cw * nx / 2:.1f}' y='{hh - 2:.0f}' font-size='10' "
        f"text-anchor='middle'>{html.escape(h['x_name'])} [{html.escape(h['x_unit'])}]</text>"
    )
    parts.append(
        f"<text x='10' y='{top + ch * ny / 2:.1f}' font-size='10' text-anchor='middle' "
        f"transform='rotate(-90 10 {top + ch * ny / 2:.1f})'>{html.escape(h['y_name'])} "
        f"[{html.escape(h['y_unit'])}]</text>"
    )
    lx = left + cw * nx + 16
    parts.append(f"<text x='{lx}' y='{top + 8}' font-size='9'>time per bin [h]</text>")
    for k, frac in enumerate((1.0, 0.1, 0.01, 0.0)):
        v = vmax * frac
        y = top + 16 + k * 20
        parts.append(
            f"<rect x='{lx}' y='{y}' width='16' height='14' fill='rgb(214,39,40)' "
            f"fill-opacity='{alpha(v):.3f}' stroke='#999' stroke-width='0.5'/>"
            f"<text x='{lx + 22}' y='{y + 11}' font-size='9'>{v / 3600.0:.3g}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _bar_svg(labels: Sequence[str], values: Sequence[float], unit: str) -> str:
    """Vertical bar chart as inline SVG."""
    n = max(len(values), 1)
    w, h, left, bottom, top = 640, 220, 48, 48, 12
    bw = (w - left - 8) / n
    vmax = max(max(values, default=0.0), 1e-12)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
        f"viewBox='0 0 {w} {h}' role='img' aria-label='bar chart'>",
        f"<line x1='{left}' y1='{h - bottom}' x2='{w - 4}' y2='{h - bottom}' stroke='#444'/>",
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{h - bottom}' stroke='#444'/>",
        f"<text x='{left - 4}' y='{top + 4}' font-size='10' text-anchor='end'>{vmax:.3g}</text>",
        f"<text x='{left - 4}' y='{h - bottom}' font-size='10' text-anchor='end'>0</text>",
        f"<text x='12' y='{(h - bottom) / 2}' font-size='10' "
        f"transform='rotate(-90 12 {(h - bottom) / 2})'>{html.escape(unit)}</text>",
    ]
    for k, (lab, v) in enumerate(zip(labels, values, strict=True)):
        bh = (h - bottom - top) * max(v, 0.0) / vmax
        x = left + k * bw
        parts.append(
            f"<rect x='{x + 1:.1f}' y='{h - bottom - bh:.1f}' width='{max(bw - 2, 1):.1f}' "
            f"height='{bh:.1f}' fill='#1f77b4'><title>{html.escape(lab)}: {v:.4g}</title></rect>"
        )
        parts.append(
            f"<text x='{x + bw / 2:.1f}' y='{h - bottom + 10}' font-size='8' "
            f"text-anchor='end' transform='rotate(-60 {x + bw / 2:.1f} {h - bottom + 10})'>"
            f"{html.escape(lab)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _line_svg(xs: Sequence[float], ys: Sequence[float], label: str) -> str:
    """Line chart (x as time) as inline SVG."""
    w, h, left, bottom, top = 640, 200, 56, 28, 12
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.01, y1 + 0.01
    if x1 - x0 <= 0:
        x1 = x0 + 1.0

    def px(x: float) -> float:
        return left + (w - left - 8) * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return h - bottom - (h - bottom - top) * (y - y0) / (y1 - y0)

    pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
        f"viewBox='0 0 {w} {h}' role='img' aria-label='{html.escape(label)}'>"
        f"<line x1='{left}' y1='{h - bottom}' x2='{w - 4}' y2='{h - bottom}' stroke='#444'/>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{h - bottom}' stroke='#444'/>"
        f"<text x='{left - 4}' y='{top + 4}' font-size='10' text-anchor='end'>{y1:.4g}</text>"
        f"<text x='{left - 4}' y='{h - bottom}' font-size='10' text-anchor='end'>{y0:.4g}</text>"
        f"<text x='{left}' y='{h - 8}' font-size='10'>{html.escape(_iso(x0) or '')}</text>"
        f"<text x='{w - 8}' y='{h - 8}' font-size='10' text-anchor='end'>"
        f"{html.escape(_iso(x1) or '')}</text>"
        f"<polyline points='{pts}' fill='none' stroke='#2ca02c' stroke-width='1.5'/></svg>"
    )


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (no external assets)."""
    run = report["run"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report['title'])}: run {run['id']}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report['title'])}</h1>",
        _table(
            ("item", "value"),
            [
                ("site", run["site"]),
                ("run", run["id"]),
                ("run started (UTC)", run["started_at"]),
                ("run ended (UTC)", run["ended_at"]),
                ("logbook snapshot (UTC)", report["snapshot_time"]),
                ("database", report["database"]),
                (
                    "software",
                    f"openbess {run['software_version']} (report {report['software_version']})",
                ),
                ("report generated (UTC)", report["generated_at"]),
            ],
        ),
        "<p class='small muted'>Figures kept by the BMS for Regulation (EU) 2023/1542, Article 14"
        " and Annex VII (A: state of health, B: expected lifetime). Estimates are the BMS's "
        "own; see docs/logbook.md for definitions.</p>",
        "<h2>Annex VII figures</h2>",
        _table(
            ("name", "value", "unit", "Annex VII", "description"),
            [
                (m["name"], m["value"], m["unit"], m["annex_vii"], m["description"])
                for m in report["metrics"]
            ],
            num=(1,),
        ),
        "<h2>Lifetime extremes</h2>",
        _table(
            ("quantity", "value", "unit", "when (UTC)"),
            [
                (name, e["value"], e["unit"], _iso(e["time_s"]))
                for name, e in report["extremes"].items()
            ],
            num=(1,),
        ),
        "<h2>Harmful-event episodes</h2>",
    ]
    eps = report["episodes"]
    if eps:
        parts.append(
            _table(
                ("kind", "start (UTC)", "end (UTC)", "detail"),
                [(e["kind"], _iso(e["start_s"]), _iso(e["end_s"]), e["detail"]) for e in eps],
            )
        )
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2>Alarms raised</h2>")
    if report["alarm_counts"]:
        parts.append(_table(("code:tier", "raised"), list(report["alarm_counts"].items()), (1,)))
    else:
        parts.append("<p>None.</p>")
    hs = report["histograms"]
    parts += [
        "<h2>Time at SoC and temperature</h2>",
        _heat_svg(hs["soc_temperature"], "Time at SoC and temperature"),
        _heat_table(hs["soc_temperature"], "Time at (SoC, mean cell temperature)"),
        "<h2>Time at C-rate and temperature</h2>",
        _heat_svg(hs["c_rate_temperature"], "Time at C-rate and temperature"),
        _heat_table(
            hs["c_rate_temperature"],
            "Time at (C-rate, positive = discharge; mean cell temperature)",
        ),
        "<h2>Rainflow cycles by depth</h2>",
        f"<p class='small'>ASTM E1049 rainflow counting of the pack SoC (swings under "
        f"{_e(hs['cycle_depth']['hysteresis_soc'])} ignored); open half cycles count 0.5.</p>",
        _bar_svg(_bin_labels(hs["cycle_depth"]["edges"]), hs["cycle_depth"]["cycles"], "cycles"),
    ]
    per = report["periods"]
    cols = per["columns"]
    rows = per["rows"]
    parts.append("<h2>Evolution</h2>")
    if rows:
        i_end, i_soh = cols.index("end_s"), cols.index("soh")
        pts = [(r[i_end], r[i_soh]) for r in rows if r[i_end] is not None and r[i_soh] is not None]
        if len(pts) >= 2:
            parts.append("<p class='small'>SoH estimate at the end of each period.</p>")
            parts.append(_line_svg([p[0] for p in pts], [p[1] for p in pts], "SoH"))
        shown = ("start_s", "energy_in_dc_wh", "energy_out_dc_wh", "soc_start", "soc_end", "soh")
        idx = [cols.index(s) for s in shown]
        parts.append(
            f"<p class='small'>Last {min(len(rows), 60)} of {len(rows)} period records "
            f"(nominal length {_e(per['period_s'])} s).</p>"
        )
        parts.append(
            _table(
                (
                    "start (UTC)",
                    "energy in DC [Wh]",
                    "energy out DC [Wh]",
                    "SoC start",
                    "SoC end",
                    "SoH",
                ),
                [[_iso(r[idx[0]])] + [r[k] for k in idx[1:]] for r in rows[-60:]],
                num=(1, 2, 3, 4, 5),
            )
        )
    else:
        parts.append("<p>No period closed yet.</p>")
    ev = report["events"]
    parts.append(f"<h2>Event log</h2><p>{ev['total']} events in the run database.</p>")
    if ev["by_code"]:
        parts.append(
            _table(
                ("kind", "code", "severity", "count"),
                [(e["kind"], e["code"], e["severity"], e["count"]) for e in ev["by_code"]],
                (3,),
            )
        )
        parts.append(f"<p class='small'>Newest {len(ev['recent'])} events:</p>")
        parts.append(
            _table(
                ("time (UTC)", "kind", "code", "severity", "message"),
                [
                    (e["time"], e["kind"], e["code"], e["severity"], e["message"])
                    for e in ev["recent"]
                ],
            )
        )
    if report["kpis"]:
        parts.append("<h2>Run KPIs</h2>")
        parts.append(_table(("name", "value"), list(report["kpis"].items()), (1,)))
    parts.append("</body></html>\n")
    return "".join(parts)


def render(report: dict[str, Any], fmt: str) -> str:
    """Render a report as ``json``, ``csv`` or ``html``.

    Raises
    ------
    ValueError
        Unknown format.
    """
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report)
    if fmt == "html":
        return render_html(report)
    raise ValueError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")
