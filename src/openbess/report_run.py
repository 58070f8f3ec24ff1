"""Run reports: charts and KPIs of a run (run database) or of a backtest (series CSV).

:func:`load_run` reads one run of a run database (written by ``openbess simulate --out`` or
``openbess run``; see :mod:`openbess.storage`) and aggregates it in SQL into at most
``max_points`` time buckets, so a year at 60 s (525,600 pack rows) loads in about a second;
:func:`load_backtest_csv` (or :func:`from_backtest` for a frame in memory) does the same for a
backtest series (:class:`openbess.ems.backtest.BacktestResult` ``frame``, written by
:func:`write_backtest_series`). Both return a :class:`RunReport`, which :func:`render_html`
turns into one self-contained HTML page (charts embedded as PNG ``data:`` URIs, inline CSS, no
external asset) and :func:`render_png` into one multi-panel PNG figure.

Charts (matplotlib, drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, no
pyplot state): prices; SoC; battery, grid, PV and load power; cell voltage extremes and spread;
temperatures; cumulative cost against the no-battery baseline and savings; equivalent full
cycles; an events / gate outcome / alarm timeline; rainflow cycle depths (from the BMS logbook
if the run has one); per-cell voltage deviation and temperature maps (from the ``cells``
table). See ``docs/reports.md``.

Aggregation: each bucket holds the samples with ``floor((time_s - t0) / bucket_s)`` equal; power,
price, SoC and average values are bucket means, extremes are bucket minima / maxima, costs and
energies are integrated per sample (``value * dt``) and accumulated over buckets, so the end of
a cumulative curve does not depend on the bucket size.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import sqlite3
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openbess import __version__
from openbess.errors import DataError, StorageError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BACKTEST_COLUMNS",
    "BACKTEST_OPTIONAL_COLUMNS",
    "DEFAULT_MAX_POINTS",
    "FORMATS",
    "CellMaps",
    "Rainflow",
    "RunReport",
    "from_backtest",
    "load_backtest_csv",
    "load_run",
    "png_data_uri",
    "render",
    "render_html",
    "render_png",
    "write_backtest_series",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

FORMATS: tuple[str, ...] = ("html", "png")
"""Output formats of :func:`render`."""

DEFAULT_MAX_POINTS = 2000
"""Default number of time buckets a run is aggregated into."""

DEFAULT_CELL_SNAPSHOTS = 240
"""Default number of per-cell snapshots drawn in the cell maps."""

BACKTEST_COLUMNS: tuple[str, ...] = (
    "load_w",
    "pv_w",
    "import_price_eur_per_kwh",
    "export_price_eur_per_kwh",
    "battery_power_w",
    "grid_power_w",
    "soc",
)
"""Required columns of a backtest series CSV (beside ``time``): the columns of
:attr:`openbess.ems.backtest.BacktestResult.frame`."""

BACKTEST_OPTIONAL_COLUMNS: tuple[str, ...] = (
    "planned_battery_power_w",
    "pv_curtailed_w",
    "baseline_grid_power_w",
)
"""Optional columns of a backtest series CSV; ``baseline_grid_power_w`` (grid power without
the battery [W], positive = import) makes the savings chart exact where export limits or
negative export prices change the baseline."""

_J_PER_KWH = 3.6e6
_GATE_OUTCOMES: tuple[str, ...] = ("clamped", "refused", "dropped", "safe_idle")
_SEVERITY_COLOURS: dict[str, str] = {
    "debug": "#9e9e9e",
    "info": "#1f77b4",
    "notice": "#1f77b4",
    "warning": "#ff7f0e",
    "alarm": "#d62728",
    "error": "#d62728",
    "fault": "#8b0000",
    "critical": "#8b0000",
}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Rainflow:
    """Rainflow cycle counts of a run's SoC, from the BMS logbook.

    Parameters
    ----------
    edges : tuple of float
        Depth bin edges [fraction of SoC]; the outer bins are open.
    cycles : numpy.ndarray
        Cycles per bin [1]; open half cycles count 0.5.
    hysteresis_soc : float
        SoC swings smaller than this are ignored [fraction].
    equivalent_full_cycles : float
        The logbook's equivalent full cycles ``(Ah_in + Ah_out) / (2 Ah_nominal)`` [1].
    snapshot_time_s : float
        Time of the logbook snapshot [s, Unix UTC].
    """

    edges: tuple[float, ...]
    cycles: FloatArray
    hysteresis_soc: float
    equivalent_full_cycles: float
    snapshot_time_s: float


@dataclass(frozen=True)
class CellMaps:
    """Per-cell snapshots sampled evenly over a run.

    Parameters
    ----------
    time_s : numpy.ndarray
        Snapshot times [s, Unix UTC], shape ``(n_snapshots,)``, increasing.
    voltage_v : numpy.ndarray
        Cell voltages [V], shape ``(n_snapshots, n_cells)``; NaN = not recorded or invalid.
    temperature_degc : numpy.ndarray
        Cell temperatures [degC], same shape; NaN = not recorded.
    """

    time_s: FloatArray
    voltage_v: FloatArray
    temperature_degc: FloatArray

    @property
    def n_cells(self) -> int:
        """Number of cells (columns of the maps)."""
        return int(self.voltage_v.shape[1])


@dataclass(frozen=True)
class RunReport:
    """Everything a run report shows, aggregated into time buckets.

    Parameters
    ----------
    source : str
        ``"run"`` (run database) or ``"backtest"`` (backtest series).
    title : str
        Report title.
    info : tuple of (str, str)
        Header rows (site, run id, period, files...).
    timezone : str
        Time zone the charts use for their time axes (IANA name).
    samples : int
        Raw samples (pack rows, or backtest intervals) behind the charts.
    bucket_s : float
        Width of a time bucket [s].
    time_s : numpy.ndarray
        Mean sample time of each non-empty bucket [s, Unix UTC], increasing.
    time_end_s : numpy.ndarray
        End of the last sample interval of each bucket [s, Unix UTC]: the time of the
        cumulative series.
    series : Mapping[str, numpy.ndarray]
        Per-bucket values, one array per name, aligned with ``time_s``. Means:
        ``import_price_eur_per_kwh``, ``export_price_eur_per_kwh``, ``soc``,
        ``battery_ac_power_w``, ``grid_power_w``, ``pv_power_w``, ``load_power_w``,
        ``planned_battery_power_w``, ``cell_voltage_avg_v``, ``temperature_avg_degc``.
        Extremes: ``soc_cell_min``, ``soc_cell_max``, ``cell_voltage_min_v``,
        ``cell_voltage_max_v``, ``cell_voltage_spread_v`` (largest max - min of a sample),
        ``temperature_min_degc``, ``temperature_max_degc``. Cumulative at ``time_end_s``:
        ``cost_eur``, ``baseline_cost_eur``, ``equivalent_full_cycles``. Counts per bucket:
        ``samples``, ``alarm_samples`` and ``gate_<outcome>`` for the outcomes other than
        accepted. A name is absent when the source does not have it.
    kpis : Mapping[str, float]
        The run's KPIs (NaN = unknown), sorted by name.
    events : tuple of (float, str, str, int)
        Events aggregated per bucket: (first time [s, Unix UTC], kind, severity, count).
    event_counts : tuple of (str, str, str, int)
        Events per (kind, code, severity), with their count.
    recent_events : tuple of (float, str, str, str, str)
        The newest events other than ``info``/``debug`` (time, kind, code, severity, message),
        newest first.
    cells : CellMaps or None
        Per-cell snapshots, or None without a ``cells`` table / rows.
    rainflow : Rainflow or None
        Rainflow counts from the logbook, or None without one.
    notes : tuple of str
        Remarks printed with the report (approximations, missing data).
    """

    source: str
    title: str
    info: tuple[tuple[str, str], ...]
    timezone: str
    samples: int
    bucket_s: float
    time_s: FloatArray
    time_end_s: FloatArray
    series: Mapping[str, FloatArray]
    kpis: Mapping[str, float]
    events: tuple[tuple[float, str, str, int], ...] = ()
    event_counts: tuple[tuple[str, str, str, int], ...] = ()
    recent_events: tuple[tuple[float, str, str, str, str], ...] = ()
    cells: CellMaps | None = None
    rainflow: Rainflow | None = None
    notes: tuple[str, ...] = field(default=())

    def has(self, *names: str) -> bool:
        """True if every named series exists and holds at least one finite value."""
        for name in names:
            v = self.series.get(name)
            if v is None or not np.isfinite(v).any():
                return False
        return True


def _iso(time_s: float | None) -> str:
    """ISO 8601 UTC text of a Unix time ('n/a' if unknown)."""
    if time_s is None or not math.isfinite(time_s):
        return "n/a"
    return datetime.fromtimestamp(time_s, UTC).isoformat(timespec="seconds")


def _farray(values: Sequence[object]) -> FloatArray:
    """Float64 array of a column of SQL values (NULL as NaN)."""
    return np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------- run database


def _connect(path: Path) -> sqlite3.Connection:
    """Open an openbess run database read-only (errors name the file)."""
    from openbess.bms.logbook import _connect_ro

    conn = _connect_ro(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not {"kpis", "cells"} <= tables:
        conn.close()
        raise StorageError(
            f"{path}: not an openbess run database (tables {sorted(tables)}, 'kpis' and "
            "'cells' missing)"
        )
    return conn


def _pick_run(conn: sqlite3.Connection, path: Path, run_id: int | None) -> tuple[Any, ...]:
    """The ``runs`` row of ``run_id`` (None: the newest run); errors name file and run."""
    cols = "id, started_at_s, ended_at_s, site, config_json, contract_version, software_version"
    if run_id is None:
        row = conn.execute(f"SELECT {cols} FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise StorageError(f"{path}: the run database holds no run")
        return tuple(row)
    row = conn.execute(f"SELECT {cols} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
    if row is None:
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM runs ORDER BY id")]
        shown = ", ".join(str(i) for i in ids[-20:]) or "none"
        raise StorageError(f"{path}: no run {run_id} in this run database (runs: {shown})")
    return tuple(row)


def _pack_buckets(
    conn: sqlite3.Connection,
    run_id: int,
    t0: float,
    bucket_s: float,
    export_limit_w: float | None,
) -> dict[str, FloatArray]:
    """Aggregate the pack rows of a run into time buckets in one SQL pass.

    Each row's interval is ``dt = time_s - previous time_s`` (0 for the first row): the row
    holds the meter readings and prices of the interval that ends at its time, as the
    controller records them. Cost [EUR] = grid power [W] * dt [s] * price [EUR/kWh] / 3.6e6,
    import price when importing, export price when exporting; the baseline grid power is
    ``max(grid + battery, -export_limit_w)`` (the site without its battery).
    """
    cost_rate = (
        "CASE WHEN {g} >= 0 THEN {g} * import_price_eur_per_kwh "
        "ELSE {g} * export_price_eur_per_kwh END"
    )
    base = "(grid_power_w + battery_ac_power_w)"
    if export_limit_w is not None:
        base = f"max({base}, -:lim)"
    outcomes = ", ".join(f"sum(gate_outcome = '{o}')" for o in _GATE_OUTCOMES)
    sql = f"""
SELECT CAST((time_s - :t0) / :b AS INTEGER) AS bucket,
  count(*), avg(time_s), max(time_s),
  avg(import_price_eur_per_kwh), avg(export_price_eur_per_kwh),
  avg(soc), min(soc_cell_min), max(soc_cell_max),
  avg(battery_ac_power_w), avg(grid_power_w), avg(pv_power_w), avg(load_power_w),
  min(cell_voltage_min_v), max(cell_voltage_max_v), avg(cell_voltage_avg_v),
  max(cell_voltage_max_v - cell_voltage_min_v),
  min(temperature_min_degc), max(temperature_max_degc), avg(temperature_avg_degc),
  total(dt * ({cost_rate.format(g="grid_power_w")})),
  total(dt * ({cost_rate.format(g=base)})),
  total(dt * max(battery_ac_power_w, 0.0)),
  sum(alarms IS NOT NULL AND alarms <> ''),
  {outcomes}
FROM (
  SELECT time_s, import_price_eur_per_kwh, export_price_eur_per_kwh, soc, soc_cell_min,
    soc_cell_max, battery_ac_power_w, grid_power_w, pv_power_w, load_power_w,
    cell_voltage_min_v, cell_voltage_max_v, cell_voltage_avg_v, temperature_min_degc,
    temperature_max_degc, temperature_avg_degc, gate_outcome, alarms,
    coalesce(time_s - lag(time_s) OVER (ORDER BY time_s, rowid), 0.0) AS dt
  FROM pack WHERE run_id = :rid
)
GROUP BY bucket ORDER BY bucket"""
    params: dict[str, object] = {"t0": t0, "b": bucket_s, "rid": int(run_id)}
    if export_limit_w is not None:
        params["lim"] = float(export_limit_w)
    rows = conn.execute(sql, params).fetchall()
    names = (
        "samples",
        "time_s",
        "time_end_s",
        "import_price_eur_per_kwh",
        "export_price_eur_per_kwh",
        "soc",
        "soc_cell_min",
        "soc_cell_max",
        "battery_ac_power_w",
        "grid_power_w",
        "pv_power_w",
        "load_power_w",
        "cell_voltage_min_v",
        "cell_voltage_max_v",
        "cell_voltage_avg_v",
        "cell_voltage_spread_v",
        "temperature_min_degc",
        "temperature_max_degc",
        "temperature_avg_degc",
        "cost_step_eur",
        "baseline_cost_step_eur",
        "discharged_ac_j",
        "alarm_samples",
        *(f"gate_{o}" for o in _GATE_OUTCOMES),
    )
    cols = list(zip(*rows, strict=True)) if rows else [()] * (len(names) + 1)
    out = {name: _farray(cols[k + 1]) for k, name in enumerate(names)}
    for name in ("cost_step_eur", "baseline_cost_step_eur"):
        out[name] = out[name] / _J_PER_KWH
    return out


def _cell_maps(
    conn: sqlite3.Connection, run_id: int, max_snapshots: int
) -> tuple[CellMaps | None, int]:
    """Up to ``max_snapshots`` per-cell snapshots spread evenly over the run.

    Index seeks only (``cells_run_time``): cost independent of the table size.

    Returns
    -------
    tuple of (CellMaps or None, int)
        The maps (None without cell rows) and the number of cells.
    """
    rid = int(run_id)
    first = conn.execute("SELECT min(time_s) FROM cells WHERE run_id = ?", (rid,)).fetchone()[0]
    if first is None:
        return None, 0
    last = conn.execute("SELECT max(time_s) FROM cells WHERE run_id = ?", (rid,)).fetchone()[0]
    targets = np.linspace(float(first), float(last), max(1, max_snapshots))
    times: list[float] = []
    seek = "SELECT time_s FROM cells WHERE run_id = ? AND time_s >= ? ORDER BY time_s LIMIT 1"
    for t in targets:
        if times and t <= times[-1]:
            continue
        row = conn.execute(seek, (rid, float(t))).fetchone()
        if row is not None and (not times or row[0] > times[-1]):
            times.append(float(row[0]))
    snaps: list[list[tuple[Any, ...]]] = []
    n_cells = 0
    for t in times:
        rows = conn.execute(
            "SELECT cell_index, voltage_v, temperature_degc FROM cells "
            "WHERE run_id = ? AND time_s = ?",
            (rid, t),
        ).fetchall()
        snaps.append(rows)
        if rows:
            n_cells = max(n_cells, 1 + max(int(r[0]) for r in rows))
    if n_cells == 0:
        return None, 0
    volt = np.full((len(times), n_cells), np.nan)
    temp = np.full((len(times), n_cells), np.nan)
    for i, rows in enumerate(snaps):
        if not rows:
            continue
        idx = np.array([int(r[0]) for r in rows], dtype=np.int64)
        volt[i, idx] = _farray([r[1] for r in rows])
        temp[i, idx] = _farray([r[2] for r in rows])
    return CellMaps(np.asarray(times, dtype=np.float64), volt, temp), n_cells


def _rainflow(path: Path, run_id: int) -> tuple[Rainflow | None, str | None]:
    """Rainflow counts from the run's newest logbook snapshot (None and a note if none)."""
    from openbess.bms.logbook import load_logbook

    try:
        lb, _rid, snap_t = load_logbook(path, run_id)
    except StorageError:
        return None, "no BMS logbook for this run: rainflow cycle depths not shown"
    except DataError as exc:
        log.warning("%s", exc)
        return None, f"the BMS logbook cannot be read ({exc}): rainflow not shown"
    c = lb.config
    return (
        Rainflow(
            edges=tuple(float(e) for e in c.depth_edges),
            cycles=np.asarray(lb.cycle_depth_histogram(), dtype=np.float64),
            hysteresis_soc=float(c.rainflow_hysteresis_soc),
            equivalent_full_cycles=float(lb.equivalent_full_cycles()),
            snapshot_time_s=float(snap_t),
        ),
        None,
    )


def _usable_energy_wh(kpis: Mapping[str, float], capacity_wh: FloatArray) -> float:
    """Energy that one equivalent full cycle discharges [Wh].

    The run KPI defines ``equivalent_full_cycles = energy_discharged_ac_kwh / usable_kwh``;
    its normaliser is used when both KPIs are known, else the BMS's first capacity figure.
    """
    efc = kpis.get("equivalent_full_cycles", math.nan)
    dis = kpis.get("energy_discharged_ac_kwh", math.nan)
    if math.isfinite(efc) and math.isfinite(dis) and efc > 0 and dis > 0:
        return 1000.0 * dis / efc
    finite = capacity_wh[np.isfinite(capacity_wh) & (capacity_wh > 0)]
    return float(finite[0]) if finite.size else math.nan


def load_run(
    db_path: str | Path,
    run_id: int | None = None,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    max_cell_snapshots: int = DEFAULT_CELL_SNAPSHOTS,
    timezone: str | None = None,
) -> RunReport:
    """Read one run of a run database into a :class:`RunReport`.

    Parameters
    ----------
    db_path : str or pathlib.Path
        Run database written by ``openbess simulate --out`` or ``openbess run``.
    run_id : int or None
        The run; None: the newest run.
    max_points : int
        Most time buckets (>= 10): the pack rows are aggregated in SQL into buckets of
        ``duration / max_points`` seconds.
    max_cell_snapshots : int
        Most per-cell snapshots in the cell maps (>= 1).
    timezone : str or None
        Time zone of the chart axes (IANA name); None: the site's (``timezone`` of the run's
        configuration), else UTC.

    Returns
    -------
    RunReport
        The aggregated run.

    Raises
    ------
    StorageError
        Missing file, not an openbess run database, no run in it, or no run ``run_id``; the
        message names the file (and the run).
    ValueError
        ``max_points`` or ``max_cell_snapshots`` out of range.
    """
    if max_points < 10:
        raise ValueError(f"max_points must be >= 10, got {max_points}")
    if max_cell_snapshots < 1:
        raise ValueError(f"max_cell_snapshots must be >= 1, got {max_cell_snapshots}")
    path = Path(db_path)
    conn = _connect(path)
    try:
        try:
            run = _pick_run(conn, path, run_id)
            rid = int(run[0])
            n, t_first, t_last = conn.execute(
                "SELECT count(*), min(time_s), max(time_s) FROM pack WHERE run_id = ?", (rid,)
            ).fetchone()
            try:
                config = json.loads(run[4])
            except (TypeError, ValueError):
                config = {}
            if not isinstance(config, dict):
                config = {}
            grid = config.get("grid")
            limit = grid.get("max_export_w") if isinstance(grid, dict) else None
            export_limit_w = float(limit) if isinstance(limit, int | float) else None
            tz = config.get("timezone")
            if timezone is None:
                timezone = tz if isinstance(tz, str) and tz else "UTC"
            n = int(n)
            if n:
                duration = float(t_last) - float(t_first)
                # The last sample sits on a bucket edge: max_points - 1 widths give max_points
                # buckets.
                bucket_s = duration / (max_points - 1) if duration > 0 else 1.0
                agg = _pack_buckets(conn, rid, float(t_first), bucket_s, export_limit_w)
                cap_row = conn.execute(
                    "SELECT capacity_wh FROM pack WHERE run_id = ? AND capacity_wh > 0 "
                    "ORDER BY time_s LIMIT 1",
                    (rid,),
                ).fetchone()
            else:
                bucket_s = 1.0
                agg = {}
                cap_row = None
            kpis = {
                str(k): (math.nan if v is None else float(v))
                for k, v in conn.execute(
                    "SELECT name, value FROM kpis WHERE run_id = ? ORDER BY name", (rid,)
                )
            }
            ev_rows = conn.execute(
                "SELECT min(time_s), kind, severity, count(*) FROM events WHERE run_id = ? "
                "GROUP BY CAST((time_s - ?) / ? AS INTEGER), kind, severity "
                "ORDER BY min(time_s)",
                (rid, float(t_first) if n else 0.0, bucket_s),
            ).fetchall()
            counts = conn.execute(
                "SELECT kind, code, severity, count(*) FROM events WHERE run_id = ? "
                "GROUP BY kind, code, severity ORDER BY kind, code, severity",
                (rid,),
            ).fetchall()
            recent = conn.execute(
                "SELECT time_s, kind, code, severity, message FROM events WHERE run_id = ? "
                "AND severity NOT IN ('info', 'debug') ORDER BY time_s DESC, id DESC LIMIT 50",
                (rid,),
            ).fetchall()
            cells, n_cells = _cell_maps(conn, rid, max_cell_snapshots)
        except sqlite3.DatabaseError as exc:
            which = "the newest run" if run_id is None else f"run {run_id}"
            raise StorageError(f"{path}: cannot read {which}: {exc}") from None
    finally:
        conn.close()
    rainflow, rf_note = _rainflow(path, rid)

    notes: list[str] = []
    series: dict[str, FloatArray] = {}
    time_s = np.empty(0)
    time_end_s = np.empty(0)
    if n:
        time_s = agg.pop("time_s")
        time_end_s = agg.pop("time_end_s")
        cost_step = agg.pop("cost_step_eur")
        base_step = agg.pop("baseline_cost_step_eur")
        discharged = agg.pop("discharged_ac_j")
        series.update(agg)
        series["cost_eur"] = np.cumsum(cost_step)
        series["baseline_cost_eur"] = np.cumsum(base_step)
        usable_wh = _usable_energy_wh(kpis, np.array([cap_row[0] if cap_row else np.nan]))
        series["equivalent_full_cycles"] = np.cumsum(discharged) / 3600.0 / usable_wh
        if time_s.size == n:
            how = "one point per sample (no aggregation needed)"
        else:
            how = (
                f"aggregated into {time_s.size} buckets of {bucket_s:.4g} s (means; extremes "
                "as minima/maxima; costs and energies integrated sample by sample)"
            )
        notes.append(f"{n} pack samples from {_iso(t_first)} to {_iso(t_last)}, {how}.")
        notes.append(
            "Baseline (no battery): grid power + battery power per sample"
            + (
                f", exports capped at grid.max_export_w = {export_limit_w:g} W"
                if export_limit_w is not None
                else ""
            )
            + "; PV that the battery's discharge caused to be curtailed is not known here."
        )
    else:
        notes.append("the run has no pack samples: no time-series charts")
    if not kpis:
        notes.append("no KPIs recorded (the run is still recording or did not end normally)")
    if rf_note is not None:
        notes.append(rf_note)
    if cells is None:
        notes.append("no per-cell snapshots: cell maps not shown")
    started, ended = run[1], run[2]
    info = (
        ("site", str(run[3])),
        ("run", str(rid)),
        ("started (UTC)", _iso(started)),
        ("ended (UTC)", _iso(ended) if ended is not None else "not ended (recording or crashed)"),
        ("database", str(path)),
        ("cells", str(n_cells) if n_cells else "n/a"),
        ("software", f"openbess {run[6]} (contract {run[5]}); report by openbess {__version__}"),
        ("time zone of the charts", timezone),
    )
    return RunReport(
        source="run",
        title=f"openbess run report: {run[3]}, run {rid}",
        info=info,
        timezone=timezone,
        samples=n,
        bucket_s=bucket_s,
        time_s=time_s,
        time_end_s=time_end_s,
        series=series,
        kpis=kpis,
        events=tuple((float(t), str(k), str(s), int(c)) for t, k, s, c in ev_rows),
        event_counts=tuple((str(k), str(cd), str(s), int(c)) for k, cd, s, c in counts),
        recent_events=tuple(
            (float(t), str(k), str(cd), str(s), str(m)) for t, k, cd, s, m in recent
        ),
        cells=cells,
        rainflow=rainflow,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- backtests


def _bucket_reduce(idx: npt.NDArray[np.int64], values: FloatArray, how: str) -> FloatArray:
    """Reduce ``values`` per bucket (``idx`` sorted): ``mean``, ``min``, ``max`` or ``sum``.

    NaN are ignored; a bucket with no finite value gives NaN (0 for ``sum``).
    """
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    if how == "min":
        return np.asarray(np.fmin.reduceat(values, starts), dtype=np.float64)
    if how == "max":
        return np.asarray(np.fmax.reduceat(values, starts), dtype=np.float64)
    finite = np.isfinite(values)
    total = np.add.reduceat(np.where(finite, values, 0.0), starts)
    if how == "sum":
        return np.asarray(total, dtype=np.float64)
    count = np.add.reduceat(finite.astype(np.float64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(count > 0, total / count, np.nan), dtype=np.float64)


def _flat_kpis(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric entries of a (nested) summary as ``name`` / ``outer.inner`` -> float."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, int | float):  # bool included
            out[name] = float(value)
        elif value is None:
            out[name] = math.nan
        elif isinstance(value, Mapping):
            out.update(_flat_kpis(value, prefix=f"{name}."))
    return dict(sorted(out.items()))


def from_backtest(
    frame: pd.DataFrame,
    summary: Mapping[str, Any] | None = None,
    *,
    title: str = "openbess backtest report",
    source_name: str = "",
    timezone: str = "UTC",
    max_export_w: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> RunReport:
    """Build a :class:`RunReport` from a backtest series.

    Parameters
    ----------
    frame : pandas.DataFrame
        :attr:`openbess.ems.backtest.BacktestResult.frame`: a regular tz-aware index (each
        row the interval that starts there) and the columns :data:`BACKTEST_COLUMNS`
        (optionally :data:`BACKTEST_OPTIONAL_COLUMNS`); ``soc`` is the SoC at the end of the
        interval.
    summary : Mapping or None
        The backtest summary (``BacktestResult.summary`` or ``openbess backtest --json``);
        its numbers become the KPI table (nested entries as ``outer.inner``).
    title : str
        Report title.
    source_name : str
        Shown as the data source (e.g. the CSV path).
    timezone : str
        Time zone of the chart axes (IANA name).
    max_export_w : float or None
        The site's export limit (``grid.max_export_w``) [W], for the no-battery baseline as
        the backtest computes it; None: no limit (unless the frame has
        ``baseline_grid_power_w``).
    max_points : int
        Most time buckets (>= 10).

    Returns
    -------
    RunReport
        The report data (no cells, events, gate or logbook: a backtest has none).

    Raises
    ------
    ValueError
        A required column is missing, fewer than two rows, or times not increasing.
    """
    import pandas as pd

    from openbess.data.timeseries import to_unix_s

    if max_points < 10:
        raise ValueError(f"max_points must be >= 10, got {max_points}")
    missing = [c for c in BACKTEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"backtest series: missing column(s) {missing}")
    if len(frame) < 2:
        raise ValueError("backtest series: need at least two rows")
    t = np.asarray(to_unix_s(pd.DatetimeIndex(frame.index)), dtype=np.float64)
    steps = np.diff(t)
    if not (steps > 0).all():
        raise ValueError("backtest series: times must be strictly increasing")
    dt = np.r_[steps, steps[-1]]

    def col(name: str) -> FloatArray:
        return np.asarray(frame[name].to_numpy(dtype=np.float64), dtype=np.float64)

    load, pv = col("load_w"), col("pv_w")
    imp, exp = col("import_price_eur_per_kwh"), col("export_price_eur_per_kwh")
    batt, grid = col("battery_power_w"), col("grid_power_w")
    curtailed = col("pv_curtailed_w") if "pv_curtailed_w" in frame.columns else np.zeros_like(pv)
    notes: list[str] = []
    if "baseline_grid_power_w" in frame.columns:
        base = col("baseline_grid_power_w")
    elif max_export_w is not None:
        # The backtest's rule: without the battery, PV is curtailed to keep the export within
        # the grid limit, and to zero export while the export price is negative.
        allowed = np.where(exp < 0.0, 0.0, float(max_export_w))
        base = np.maximum(load - pv, -allowed)
        notes.append(
            f"Baseline (no battery) = load - PV, export capped at {max_export_w:g} W and at "
            "0 W while the export price is negative (the backtest's rule)."
        )
    else:
        base = load - pv
        notes.append(
            "Baseline (no battery) = load - PV: without the site (its grid.max_export_w) or a "
            "baseline_grid_power_w column, export limits and curtailment at negative prices "
            "are not applied to it (the backtest's own baseline_cost_eur KPI applies them)."
        )

    def cost(g: FloatArray) -> FloatArray:
        return np.asarray(np.where(g >= 0, g * imp, g * exp) * dt / _J_PER_KWH, np.float64)

    duration = float(t[-1] + dt[-1] - t[0])
    bucket_s = duration / max_points
    idx = np.floor((t - t[0]) / bucket_s).astype(np.int64)
    series: dict[str, FloatArray] = {
        "samples": _bucket_reduce(idx, np.ones_like(t), "sum"),
        "import_price_eur_per_kwh": _bucket_reduce(idx, imp, "mean"),
        "export_price_eur_per_kwh": _bucket_reduce(idx, exp, "mean"),
        "soc": _bucket_reduce(idx, col("soc"), "mean"),
        "battery_ac_power_w": _bucket_reduce(idx, batt, "mean"),
        "grid_power_w": _bucket_reduce(idx, grid, "mean"),
        "pv_power_w": _bucket_reduce(idx, pv - curtailed, "mean"),
        "load_power_w": _bucket_reduce(idx, load, "mean"),
        "cost_eur": np.cumsum(_bucket_reduce(idx, cost(grid), "sum")),
        "baseline_cost_eur": np.cumsum(_bucket_reduce(idx, cost(base), "sum")),
    }
    if "planned_battery_power_w" in frame.columns:
        series["planned_battery_power_w"] = _bucket_reduce(
            idx, col("planned_battery_power_w"), "mean"
        )
    kpis = _flat_kpis(summary or {})
    through_kwh = kpis.get("throughput_kwh", math.nan)
    efc = kpis.get("equivalent_full_cycles", math.nan)
    if math.isfinite(through_kwh) and math.isfinite(efc) and through_kwh > 0 and efc > 0:
        cap_wh = 1000.0 * through_kwh / (2.0 * efc)
        step_wh = np.abs(batt) * dt / 3600.0
        series["equivalent_full_cycles"] = np.cumsum(_bucket_reduce(idx, step_wh, "sum")) / (
            2.0 * cap_wh
        )
    else:
        notes.append(
            "equivalent full cycles over time not shown: the summary (throughput_kwh, "
            "equivalent_full_cycles) is needed for the battery capacity"
        )
    time_mid = _bucket_reduce(idx, t + 0.5 * dt, "mean")
    time_end = _bucket_reduce(idx, t + dt, "max")
    how = (
        "one point per interval"
        if time_mid.size == t.size
        else f"aggregated into {time_mid.size} buckets of {bucket_s:.4g} s"
    )
    notes.insert(
        0,
        f"{t.size} backtest intervals of {steps[0]:g} s from {_iso(t[0])} to "
        f"{_iso(t[-1] + dt[-1])}, {how}.",
    )
    notes.append(
        "A backtest has no cells, BMS, gate, events or logbook: cell voltage, temperature, "
        "timeline, rainflow and cell map charts are not available."
    )
    if summary is None:
        notes.append("no backtest summary given: the KPI table is empty")
    info: list[tuple[str, str]] = [("source", source_name or "backtest series")]
    if summary:
        for key in ("forecast", "execution", "start", "days", "step_s", "replan_s"):
            if key in summary:
                info.append((key, str(summary[key])))
    info.append(("time zone of the charts", timezone))
    info.append(("report", f"openbess {__version__}"))
    return RunReport(
        source="backtest",
        title=title,
        info=tuple(info),
        timezone=timezone,
        samples=int(t.size),
        bucket_s=bucket_s,
        time_s=time_mid,
        time_end_s=time_end,
        series=series,
        kpis=kpis,
        notes=tuple(notes),
    )


def write_backtest_series(frame: pd.DataFrame, path: str | Path, tz: str = "UTC") -> None:
    """Write a backtest series as CSV, the input of :func:`load_backtest_csv`.

    Parameters
    ----------
    frame : pandas.DataFrame
        :attr:`openbess.ems.backtest.BacktestResult.frame` (tz-aware index).
    path : str or pathlib.Path
        Output CSV: ``time`` (ISO 8601 with its UTC offset), then the frame's columns.
    tz : str
        Time zone the times are written in (the offset is always written).

    Raises
    ------
    OSError
        The file cannot be written.
    """
    import pandas as pd

    out = frame.copy()
    idx = pd.DatetimeIndex(out.index).tz_convert(tz)
    out.index = pd.Index([t.isoformat() for t in idx], name="time")
    out.to_csv(path, float_format="%.9g")


def load_backtest_csv(
    csv_path: str | Path,
    summary_path: str | Path | None = None,
    *,
    timezone: str = "UTC",
    max_export_w: float | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> RunReport:
    """Read a backtest series CSV (and its JSON summary) into a :class:`RunReport`.

    Parameters
    ----------
    csv_path : str or pathlib.Path
        CSV with ``time`` (ISO 8601 with a UTC offset) and the columns
        :data:`BACKTEST_COLUMNS` (+ any of :data:`BACKTEST_OPTIONAL_COLUMNS`), as written by
        :func:`write_backtest_series`.
    summary_path : str or pathlib.Path or None
        JSON object printed by ``openbess backtest --json`` (the KPIs).
    timezone : str
        Time zone of the chart axes.
    max_export_w : float or None
        The site's export limit [W] (see :func:`from_backtest`).
    max_points : int
        Most time buckets.

    Returns
    -------
    RunReport
        The report data.

    Raises
    ------
    DataError
        Unreadable CSV or JSON, missing column, bad cell or times (file, line and column
        named).
    """
    from openbess.data import read_timeseries_csv

    name = str(csv_path)
    try:
        with open(name, newline="", encoding="utf-8") as handle:
            header: list[str] = []
            for row in csv.reader(handle):
                if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
                    header = [c.strip() for c in row]
                    break
    except OSError as exc:
        raise DataError(f"{name}: cannot read the backtest series: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{name}: line 1: not a CSV text file ({exc})") from None
    missing = [c for c in BACKTEST_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"{name}: line 1: missing column(s) {missing}; a backtest series has time, "
            f"{', '.join(BACKTEST_COLUMNS)}"
        )
    columns = list(BACKTEST_COLUMNS) + [c for c in BACKTEST_OPTIONAL_COLUMNS if c in header]
    frame = read_timeseries_csv(name, columns, allow_missing=False)
    summary: dict[str, Any] | None = None
    if summary_path is not None:
        try:
            loaded = json.loads(Path(summary_path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"{summary_path}: cannot read the summary: {exc.strerror}") from None
        except ValueError as exc:
            raise DataError(f"{summary_path}: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise DataError(f"{summary_path}: expected a JSON object (openbess backtest --json)")
        summary = loaded
    try:
        return from_backtest(
            frame,
            summary,
            source_name=name,
            timezone=timezone,
            max_export_w=max_export_w,
            max_points=max_points,
        )
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from None


# --------------------------------------------------------------------------- charts


def png_data_uri(fig: Figure, dpi: float = 96.0) -> str:
    """Render a figure as a ``data:image/png;base64,...`` URI (Agg canvas, no pyplot).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    dpi : float
        Resolution [dots per inch].

    Returns
    -------
    str
        The data URI.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _dates(rep: RunReport, time_s: FloatArray) -> FloatArray:
    """Matplotlib date numbers [days] of Unix times, in the report's time zone."""
    import matplotlib.dates as mdates
    import pandas as pd

    if time_s.size == 0:
        return np.empty(0)
    stamps = pd.to_datetime(time_s, unit="s", utc=True)
    try:
        local = stamps.tz_convert(rep.timezone)
    except (KeyError, ValueError):  # unknown time zone name: show UTC
        local = stamps
    naive = local.tz_localize(None).to_numpy()
    days = mdates.date2num(naive)  # type: ignore[no-untyped-call]
    return np.asarray(days, dtype=np.float64)


def _time_axis(ax: Axes) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.grid(True, lw=0.3, alpha=0.6)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7, ncols=4, framealpha=0.7)


def _draw_prices(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_s)
    s = rep.series
    for name, label in (
        ("import_price_eur_per_kwh", "import"),
        ("export_price_eur_per_kwh", "export"),
    ):
        if rep.has(name):
            ax.step(x, s[name], where="mid", lw=0.9, label=label)
    ax.set_ylabel("price [EUR/kWh]")
    _legend(ax)


def _draw_soc(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_s)
    s = rep.series
    if rep.has("soc_cell_min", "soc_cell_max"):
        ax.fill_between(
            x,
            100.0 * s["soc_cell_min"],
            100.0 * s["soc_cell_max"],
            color="tab:green",
            alpha=0.25,
            lw=0,
            label="cell min..max",
        )
    ax.plot(x, 100.0 * s["soc"], color="tab:green", lw=1.0, label="pack")
    ax.set_ylabel("SoC [%]")
    ax.set_ylim(0.0, 100.0)
    _legend(ax)


def _draw_power(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_s)
    s = rep.series
    for name, label, colour, lw in (
        ("load_power_w", "load", "tab:gray", 0.8),
        ("pv_power_w", "PV", "goldenrod", 0.8),
        ("grid_power_w", "grid (+ import)", "tab:red", 0.8),
        ("battery_ac_power_w", "battery (+ discharge)", "tab:blue", 1.0),
        ("planned_battery_power_w", "battery planned", "tab:cyan", 0.6),
    ):
        if rep.has(name):
            ax.plot(x, s[name] / 1000.0, lw=lw, color=colour, label=label)
    ax.axhline(0.0, color="k", lw=0.4)
    ax.set_ylabel("power [kW]")
    _legend(ax)


def _draw_cell_voltage(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_s)
    s = rep.series
    ax.fill_between(
        x,
        s["cell_voltage_min_v"],
        s["cell_voltage_max_v"],
        color="tab:purple",
        alpha=0.25,
        lw=0,
        label="min..max",
    )
    if rep.has("cell_voltage_avg_v"):
        ax.plot(x, s["cell_voltage_avg_v"], color="tab:purple", lw=0.9, label="mean")
    ax.set_ylabel("cell voltage [V]")
    _legend(ax)
    if rep.has("cell_voltage_spread_v"):
        # The spread as a light area on the right axis, scaled to the lower third of the panel
        # so that it does not hide the voltages.
        spread_mv = 1000.0 * s["cell_voltage_spread_v"]
        ax2 = ax.twinx()
        ax2.fill_between(x, 0.0, spread_mv, color="tab:gray", alpha=0.35, lw=0, step="mid")
        ax2.set_ylabel("spread max-min [mV]", fontsize=8, color="dimgray")
        ax2.set_ylim(0.0, 3.0 * max(float(np.nanmax(spread_mv)), 1e-3))
        ax2.tick_params(axis="y", labelsize=7, colors="dimgray")
        ax.set_zorder(ax2.get_zorder() + 1)  # voltages drawn over the spread area
        ax.patch.set_visible(False)


def _draw_temperature(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_s)
    s = rep.series
    ax.fill_between(
        x,
        s["temperature_min_degc"],
        s["temperature_max_degc"],
        color="tab:orange",
        alpha=0.3,
        lw=0,
        label="min..max",
    )
    if rep.has("temperature_avg_degc"):
        ax.plot(x, s["temperature_avg_degc"], color="tab:orange", lw=0.9, label="mean")
    ax.set_ylabel("cell temperature [°C]")
    _legend(ax)


def _draw_savings(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_end_s)
    s = rep.series
    cost, base = s["cost_eur"], s["baseline_cost_eur"]
    ax.plot(x, base, color="tab:gray", lw=1.0, label="cost without battery")
    ax.plot(x, cost, color="tab:red", lw=1.0, label="cost with battery")
    ax.plot(x, base - cost, color="tab:green", lw=1.4, label="savings")
    ax.axhline(0.0, color="k", lw=0.4)
    ax.set_ylabel("cumulative [EUR]")
    _legend(ax)


def _draw_cycles(ax: Axes, rep: RunReport) -> None:
    x = _dates(rep, rep.time_end_s)
    ax.plot(x, rep.series["equivalent_full_cycles"], color="tab:brown", lw=1.2)
    ax.set_ylabel("equivalent full\ncycles [1]")
    ax.set_ylim(bottom=0.0)


def _timeline_rows(rep: RunReport) -> list[str]:
    rows: list[str] = []
    for o in _GATE_OUTCOMES:
        v = rep.series.get(f"gate_{o}")
        if v is not None and (v > 0).any():
            rows.append(f"gate {o}")
    v = rep.series.get("alarm_samples")
    if v is not None and (v > 0).any():
        rows.append("alarm active")
    rows += sorted({f"event: {k}" for _t, k, _s, _c in rep.events})
    return rows


def _draw_timeline(ax: Axes, rep: RunReport) -> None:
    from matplotlib.lines import Line2D

    rows = _timeline_rows(rep)
    x = _dates(rep, rep.time_s)
    # Bars as wide as the spacing of the buckets (= the sample step when there are fewer
    # samples than buckets), so that consecutive flagged buckets join.
    width = float(np.median(np.diff(x))) if x.size > 1 else rep.bucket_s / 86400.0
    width = max(width, 1e-9)
    half = 0.5 * width
    series_of = {f"gate {o}": f"gate_{o}" for o in _GATE_OUTCOMES}
    series_of["alarm active"] = "alarm_samples"
    colours = {
        "gate clamped": "#ffbb78",
        "gate refused": "#d62728",
        "gate dropped": "#9467bd",
        "gate safe_idle": "#7f7f7f",
        "alarm active": "#ff7f0e",
    }
    for i, row in enumerate(rows):
        if row in series_of:
            v = rep.series[series_of[row]]
            on = v > 0
            spans = [(float(a - half), width) for a in x[on]]
            ax.broken_barh(spans, (i - 0.35, 0.7), facecolors=colours[row], lw=0)
    kind_row = {r.removeprefix("event: "): i for i, r in enumerate(rows) if r.startswith("event")}
    if rep.events:
        ev_t = np.array([e[0] for e in rep.events], dtype=np.float64)
        ev_x = _dates(rep, ev_t)
        ys = [kind_row[e[1]] for e in rep.events]
        cs = [_SEVERITY_COLOURS.get(e[2].lower(), "#17becf") for e in rep.events]
        sizes = [12.0 + 8.0 * math.log10(e[3]) for e in rep.events]
        ax.scatter(ev_x, ys, c=cs, s=sizes, marker="|", linewidths=1.5)
        seen = sorted({e[2].lower() for e in rep.events})
        handles = [
            Line2D([], [], color=_SEVERITY_COLOURS.get(s, "#17becf"), marker="|", ls="", ms=8)
            for s in seen
        ]
        ax.legend(handles, seen, loc="upper left", fontsize=7, ncols=len(seen), framealpha=0.7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    if x.size:
        ax.set_xlim(float(x[0] - half), float(x[-1] + half))


def _bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of bins whose outer bins are open: ``<e1``, ``e1..e2``, ..., ``>=e[-2]``."""
    n = len(edges) - 1
    if n == 1:
        return ["all"]
    out = [f"<{edges[1]:g}"]
    out += [f"{edges[k]:g}..{edges[k + 1]:g}" for k in range(1, n - 1)]
    out.append(f">={edges[n - 1]:g}")
    return out


def _draw_rainflow(ax: Axes, rep: RunReport) -> None:
    rf = rep.rainflow
    if rf is None:  # pragma: no cover - guarded by the chart's availability check
        return
    labels = _bin_labels(rf.edges)
    pos = np.arange(len(labels))
    ax.bar(pos, rf.cycles, color="tab:blue")
    ax.set_xticks(pos, labels, rotation=60, fontsize=7, ha="right")
    ax.set_xlabel("cycle depth [fraction of SoC]")
    ax.set_ylabel("cycles [1]")
    ax.text(
        0.99,
        0.97,
        f"logbook equivalent full cycles {rf.equivalent_full_cycles:.3g}\n"
        f"SoC swings < {rf.hysteresis_soc:g} ignored",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
    )


def _draw_cell_map(ax: Axes, rep: RunReport, what: str) -> None:
    cm = rep.cells
    if cm is None:  # pragma: no cover - guarded by the chart's availability check
        return
    fig = ax.get_figure()
    x = _dates(rep, cm.time_s)
    x0, x1 = (float(x[0]), float(x[-1])) if x.size > 1 else (float(x[0]) - 0.01, float(x[0]) + 0.01)
    extent = (x0, x1, -0.5, cm.n_cells - 0.5)
    if what == "voltage":
        with warnings.catch_warnings():  # all-NaN snapshots: "Mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(cm.voltage_v, axis=1, keepdims=True)
        data = 1000.0 * (cm.voltage_v - mean)
        finite = data[np.isfinite(data)]
        lim = float(np.max(np.abs(finite))) if finite.size else 1.0
        lim = max(lim, 0.1)
        im = ax.imshow(
            data.T,
            aspect="auto",
            origin="lower",
            extent=extent,
            cmap="RdBu_r",
            vmin=-lim,
            vmax=lim,
            interpolation="nearest",
        )
        label = "V - snapshot mean [mV]"
    else:
        im = ax.imshow(
            cm.temperature_degc.T,
            aspect="auto",
            origin="lower",
            extent=extent,
            cmap="inferno",
            interpolation="nearest",
        )
        label = "temperature [°C]"
    ax.set_ylabel("cell index")
    if fig is not None:
        fig.colorbar(im, ax=ax, label=label, pad=0.01)


@dataclass(frozen=True)
class _Chart:
    """One chart: its id, title, description and how to draw it."""

    key: str
    title: str
    description: str
    missing: Callable[[RunReport], str | None]
    draw: Callable[[Axes, RunReport], None]
    time_axis: bool = True
    height: float = 1.0


def _need(*names: str) -> Callable[[RunReport], str | None]:
    def check(rep: RunReport) -> str | None:
        absent = [n for n in names if not rep.has(n)]
        return f"no data for {', '.join(absent)}" if absent else None

    return check


def _need_timeline(rep: RunReport) -> str | None:
    if rep.source != "run":
        return "a backtest has no events, gate or alarms"
    if not _timeline_rows(rep):
        return None if rep.samples else "no samples"
    return None


def _timeline_draw(ax: Axes, rep: RunReport) -> None:
    if not _timeline_rows(rep):
        ax.text(
            0.5,
            0.5,
            "every command accepted, no alarm, no event",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_yticks([])
        if rep.time_s.size:
            x = _dates(rep, rep.time_s)
            ax.set_xlim(float(x[0]), float(x[-1]) + 1e-6)
        return
    _draw_timeline(ax, rep)


CHARTS: tuple[_Chart, ...] = (
    _Chart(
        "prices",
        "Prices",
        "Import and export price per bucket [EUR/kWh] (mean), as the site meter logged them.",
        _need("import_price_eur_per_kwh"),
        _draw_prices,
    ),
    _Chart(
        "soc",
        "State of charge",
        "Pack SoC estimated by the BMS [%] (bucket mean) and the band between the lowest and "
        "the highest cell SoC (bucket extremes). For a backtest: the SoC at the end of each "
        "interval.",
        _need("soc"),
        _draw_soc,
    ),
    _Chart(
        "power",
        "Power flows",
        "Bucket means [kW]: load, PV (after curtailment), grid (positive = import) and battery "
        "AC power (positive = discharge); for a backtest also the planned battery power.",
        _need("battery_ac_power_w"),
        _draw_power,
        height=1.2,
    ),
    _Chart(
        "cell_voltage",
        "Cell voltages and spread",
        "Lowest and highest cell voltage [V] (bucket extremes), the mean cell voltage, and on "
        "the right axis the largest spread (max - min) of one sample in the bucket [mV]: the "
        "imbalance the balancer works on.",
        _need("cell_voltage_min_v", "cell_voltage_max_v"),
        _draw_cell_voltage,
    ),
    _Chart(
        "temperature",
        "Temperatures",
        "Lowest, mean and highest cell temperature [°C] seen by the BMS's sensors.",
        _need("temperature_min_degc", "temperature_max_degc"),
        _draw_temperature,
    ),
    _Chart(
        "savings",
        "Cumulative cost and savings",
        "Energy cost with the battery and without it (the same site, battery power set to "
        "zero), and their difference, the savings [EUR], integrated sample by sample from the "
        "logged grid power and prices.",
        _need("grid_power_w", "cost_eur", "baseline_cost_eur"),
        _draw_savings,
    ),
    _Chart(
        "cycles",
        "Equivalent full cycles",
        "Cumulative discharged AC energy divided by the usable energy (the run KPI's "
        "definition); for a backtest, (charged + discharged energy) / (2 x capacity).",
        _need("equivalent_full_cycles"),
        _draw_cycles,
    ),
    _Chart(
        "timeline",
        "Events, alarms and gate outcomes",
        "When the gate did not simply accept the EMS command (clamped, refused, dropped, safe "
        "idle), when an alarm was active (bars: buckets with at least one such sample), and "
        "the events of the run database by kind (ticks coloured by severity, longer for more "
        "events in the bucket).",
        _need_timeline,
        _timeline_draw,
        height=0.9,
    ),
    _Chart(
        "rainflow",
        "Rainflow cycle depths",
        "Cycles of the pack SoC by depth, counted by the BMS logbook (ASTM E1049 rainflow, "
        "open half cycles count 0.5), from the run's newest logbook snapshot.",
        lambda rep: None if rep.rainflow is not None else "no BMS logbook",
        _draw_rainflow,
        time_axis=False,
    ),
    _Chart(
        "cell_map_voltage",
        "Cell voltage deviation map",
        "Each cell's voltage minus the mean of its snapshot [mV] (rows: cells; columns: "
        "snapshots sampled evenly over the run from the cells table): persistent stripes are "
        "cells out of balance or with another capacity or resistance.",
        lambda rep: None if rep.cells is not None else "no per-cell snapshots",
        lambda ax, rep: _draw_cell_map(ax, rep, "voltage"),
        height=1.2,
    ),
    _Chart(
        "cell_map_temperature",
        "Cell temperature map",
        "Temperature attributed to each cell [°C] over the same snapshots.",
        lambda rep: (
            None
            if rep.cells is not None and np.isfinite(rep.cells.temperature_degc).any()
            else "no per-cell temperatures"
        ),
        lambda ax, rep: _draw_cell_map(ax, rep, "temperature"),
        height=1.2,
    ),
)
"""The charts of a run report, in page order."""


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def _chart_uri(chart: _Chart, rep: RunReport) -> str:
    fig = _new_figure(11.0, 2.9 * chart.height)
    ax = fig.add_subplot()
    chart.draw(ax, rep)
    if chart.time_axis:
        _time_axis(ax)
        if rep.time_s.size:
            x = _dates(rep, np.r_[rep.time_s[0], rep.time_end_s[-1]])
            ax.set_xlim(float(x[0]), float(x[1]) + 1e-6)
        ax.set_xlabel(f"time ({rep.timezone})", fontsize=8)
    return png_data_uri(fig)


# --------------------------------------------------------------------------- KPIs

_UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_eur_per_kwh", "EUR/kWh"),
    ("_eur", "EUR"),
    ("_kwh", "kWh"),
    ("_wh", "Wh"),
    ("_w", "W"),
    ("_v", "V"),
    ("_a", "A"),
    ("_degc", "°C"),
    ("_s", "s"),
    ("_fraction", "1"),
)


def _unit(name: str) -> str:
    base = name.rsplit(".", 1)[-1]
    for suffix, unit in _UNIT_SUFFIXES:
        if base.endswith(suffix):
            return unit
    if base.startswith(("soc", "soh")):
        return "1"
    return ""


def _fmt(value: float) -> str:
    """A KPI value as text: 6 significant digits, integers without a fraction."""
    if not math.isfinite(value):
        return "n/a"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):d}"
    return f"{value:.6g}"


_KEY_KPIS: tuple[str, ...] = (
    "simulated_days",
    "days",
    "savings_eur",
    "cost_eur",
    "baseline_cost_eur",
    "capture_ratio",
    "perfect_foresight_savings_eur",
    "equivalent_full_cycles",
    "energy_charged_ac_kwh",
    "energy_discharged_ac_kwh",
    "charged_kwh",
    "discharged_kwh",
    "grid_import_kwh",
    "grid_export_kwh",
    "pv_kwh",
    "load_kwh",
    "peak_import_w",
    "baseline_peak_import_w",
    "soc_start",
    "soc_end",
    "soc_initial",
    "soc_final",
    "soh_estimated",
    "cell_voltage_min_seen_v",
    "cell_voltage_max_seen_v",
    "cell_temperature_max_seen_degc",
    "alarms_raised",
    "gate_clamped",
    "gate_refused",
    "gate_safe_idle",
    "energy_balance_error_fraction",
)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:72em;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.chart{max-width:100%;height:auto;display:block}
.muted{color:#777}.small{font-size:.85em}ul.notes{font-size:.85em;color:#555}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def render_html(rep: RunReport) -> str:
    """The report as one self-contained HTML page.

    Charts are PNG images embedded as ``data:`` URIs, the CSS is inline: the page loads no
    external asset and works offline.

    Parameters
    ----------
    rep : RunReport
        The report data.

    Returns
    -------
    str
        The HTML page.
    """
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{_e(rep.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(rep.title)}</h1>",
        "<table><tbody>",
        *(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rep.info),
        "</tbody></table>",
    ]
    if rep.notes:
        parts.append("<ul class='notes'>")
        parts += [f"<li>{_e(n)}</li>" for n in rep.notes]
        parts.append("</ul>")
    parts.append("<h2 id='kpis'>KPIs</h2>")
    if rep.kpis:
        parts.append(
            "<table><thead><tr><th>KPI</th><th>value</th><th>unit</th></tr></thead><tbody>"
        )
        for name, value in rep.kpis.items():
            parts.append(
                f"<tr><td>{_e(name)}</td><td class='num'>{_e(_fmt(value))}</td>"
                f"<td>{_e(_unit(name))}</td></tr>"
            )
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No KPIs recorded.</p>")
    for chart in CHARTS:
        reason = chart.missing(rep)
        parts.append(f"<h2 id='{chart.key}'>{_e(chart.title)}</h2>")
        if reason is not None:
            parts.append(f"<p class='muted'>Not available: {_e(reason)}.</p>")
            continue
        parts.append(f"<p class='small'>{_e(chart.description)}</p>")
        parts.append(f"<img class='chart' alt='{_e(chart.title)}' src='{_chart_uri(chart, rep)}'>")
    if rep.source == "run":
        parts.append("<h2 id='events'>Events</h2>")
        if rep.event_counts:
            parts.append(
                "<table><thead><tr><th>kind</th><th>code</th><th>severity</th><th>count</th>"
                "</tr></thead><tbody>"
            )
            for k, cd, sv, c in rep.event_counts:
                parts.append(
                    f"<tr><td>{_e(k)}</td><td>{_e(cd)}</td><td>{_e(sv)}</td>"
                    f"<td class='num'>{c}</td></tr>"
                )
            parts.append("</tbody></table>")
        else:
            parts.append("<p>No events.</p>")
        if rep.recent_events:
            parts.append(
                f"<p class='small'>Newest {len(rep.recent_events)} events above info:</p>"
                "<table><thead><tr><th>time (UTC)</th><th>kind</th><th>code</th>"
                "<th>severity</th><th>message</th></tr></thead><tbody>"
            )
            for t, k, cd, sv, msg in rep.recent_events:
                parts.append(
                    f"<tr><td>{_e(_iso(t))}</td><td>{_e(k)}</td><td>{_e(cd)}</td>"
                    f"<td>{_e(sv)}</td><td>{_e(msg)}</td></tr>"
                )
            parts.append("</tbody></table>")
    parts.append(
        f"<p class='small muted'>Generated {_e(_iso(datetime.now(UTC).timestamp()))} by "
        f"openbess {_e(__version__)}.</p></body></html>\n"
    )
    return "".join(parts)


# --------------------------------------------------------------------------- PNG


def _kpi_text(rep: RunReport, max_lines: int = 30) -> str:
    names = [k for k in _KEY_KPIS if k in rep.kpis]
    names += [k for k in rep.kpis if k not in names]
    names = names[:max_lines]
    if not names:
        return "no KPIs recorded"
    width = max(len(n) for n in names)
    lines = []
    for n in names:
        unit = _unit(n)
        lines.append(f"{n:<{width}}  {_fmt(rep.kpis[n])} {'' if unit == '1' else unit}".rstrip())
    return "\n".join(lines)


def render_png(rep: RunReport, dpi: float = 100.0) -> bytes:
    """The report as one multi-panel PNG figure.

    Left column: the time-series charts on a shared time axis; right column: the rainflow
    histogram, the cell maps and the KPIs (up to 30, the key ones first).

    Parameters
    ----------
    rep : RunReport
        The report data.
    dpi : float
        Resolution [dots per inch]; the figure is 16 inches wide.

    Returns
    -------
    bytes
        The PNG file.
    """
    from matplotlib.gridspec import GridSpec

    left = [c for c in CHARTS if c.time_axis and c.missing(rep) is None]
    right = [c for c in CHARTS if not c.time_axis and c.missing(rep) is None]
    heights_l = [c.height for c in left]
    # Right column: the other charts, the KPI text, then blank space.
    heights_r = [c.height for c in right] + [max(1.0, 0.09 * min(len(rep.kpis), 30))]
    total = max(sum(heights_l), sum(heights_r), 3.0)
    if sum(heights_r) < total:
        heights_r.append(total - sum(heights_r))
    fig = _new_figure(16.0, 2.3 * total + 0.6)
    fig.suptitle(rep.title, fontsize=13)
    outer = GridSpec(1, 2, figure=fig, width_ratios=(2.2, 1.0))
    if left:
        gs_l = outer[0, 0].subgridspec(len(left), 1, height_ratios=heights_l)
        first: Axes | None = None
        for i, chart in enumerate(left):
            ax = fig.add_subplot(gs_l[i, 0], sharex=first)
            first = first or ax
            chart.draw(ax, rep)
            ax.set_title(chart.title, fontsize=9, loc="left")
            _time_axis(ax)
            if i < len(left) - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel(f"time ({rep.timezone})", fontsize=8)
        if first is not None and rep.time_s.size:
            x = _dates(rep, np.r_[rep.time_s[0], rep.time_end_s[-1]])
            first.set_xlim(float(x[0]), float(x[1]) + 1e-6)
    gs_r = outer[0, 1].subgridspec(len(heights_r), 1, height_ratios=heights_r)
    for i, chart in enumerate(right):
        ax = fig.add_subplot(gs_r[i, 0])
        chart.draw(ax, rep)
        ax.set_title(chart.title, fontsize=9, loc="left")
    ax = fig.add_subplot(gs_r[len(right), 0])
    ax.axis("off")
    ax.set_title("KPIs", fontsize=9, loc="left")
    ax.text(
        0.0,
        1.0,
        _kpi_text(rep),
        family="monospace",
        fontsize=7.5,
        va="top",
        ha="left",
        transform=ax.transAxes,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    if not data.startswith(_PNG_SIGNATURE):  # pragma: no cover - matplotlib writes PNG
        raise ValueError("matplotlib did not produce a PNG")
    return data


def render(rep: RunReport, fmt: str) -> bytes:
    """Render a run report as ``html`` (UTF-8 bytes) or ``png``.

    Raises
    ------
    ValueError
        Unknown format.
    """
    if fmt == "html":
        return render_html(rep).encode("utf-8")
    if fmt == "png":
        return render_png(rep)
    raise ValueError(f"unknown run report format {fmt!r}; choose one of {', '.join(FORMATS)}")
