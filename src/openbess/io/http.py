"""REST API, Prometheus metrics and the live dashboard over HTTP (FastAPI served by uvicorn).

:class:`HttpServer` is an :class:`~openbess.io.runtime.Interface`: ``openbess run --http
HOST:PORT`` starts it beside the control loop. It runs uvicorn in its own thread and only talks
to the loop through the :class:`~openbess.io.hub.Hub`:

* read endpoints under ``/api/v1`` encode the hub's latest :class:`~openbess.io.hub.Snapshot`
  (``telemetry``, ``cells``, ``plan``, ``forecasts``, ``status``, ``health``) or read the run
  database through their own read-only SQLite connection (``history``, ``events``);
* write endpoints (``command``, ``faults/reset``, ``drills``, ``grid-events``,
  ``alarms/ack``) need ``Authorization: Bearer <token>``; with no token configured every write
  is refused (403). Commands pass the same BMS gate as the EMS's and the gate's decision is
  the answer;
* ``/metrics`` serves Prometheus metrics from the latest snapshot (own registry);
* ``/api/v1/stream`` pushes server-sent events to the dashboard served at ``/``;
* refused input (wrong token, bad bodies or queries) is counted with :meth:`Hub.reject`.

Times in and out are Unix seconds UTC (``time_s``); powers in W, positive = battery discharge
and grid import; SoC and SoH are fractions. NaN (an invalid reading) is sent as ``null``.
See ``docs/http-api.md``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import BaseModel, ConfigDict, Field, field_validator

from openbess import __version__
from openbess.config import HttpConfig
from openbess.contract import (
    CONTRACT_VERSION,
    Command,
    ContactorState,
    GateDecision,
    Mode,
    Outcome,
    Reason,
    Telemetry,
)
from openbess.io.hub import GridEvent, Hub, PlanView, Snapshot
from openbess.storage import PACK_NUMERIC_COLUMNS
from openbess.twin.faults import DEFAULT_PARAMS, FaultKind

log = logging.getLogger(__name__)

__all__ = ["API_PREFIX", "HttpServer", "create_app"]

#: Prefix of the versioned REST API.
API_PREFIX = "/api/v1"
#: Directory of the dashboard's static files.
WEB_DIR = Path(__file__).with_name("web")
#: Source name of commands, drills and grid events from this interface.
SOURCE = "http"
#: Wall seconds a write endpoint waits for the control loop's answer.
ANSWER_WAIT_S = 5.0
#: Wall seconds without a new snapshot after which ``/health`` reports the loop as stale.
STALE_AFTER_S = 10.0
#: Pack columns ``/history`` returns when none are asked for.
DEFAULT_HISTORY_COLUMNS: tuple[str, ...] = (
    "soc",
    "soh",
    "battery_ac_power_w",
    "grid_power_w",
    "pv_power_w",
    "load_power_w",
    "cell_voltage_min_v",
    "cell_voltage_max_v",
    "temperature_min_degc",
    "temperature_max_degc",
    "charge_power_limit_w",
    "discharge_power_limit_w",
    "import_price_eur_per_kwh",
    "gate_requested_w",
    "gate_granted_w",
)
_HISTORY_COLUMNS = frozenset(PACK_NUMERIC_COLUMNS) - {"time_s"}

FloatArray = npt.NDArray[np.float64]


# ---------------------------------------------------------------------------------- encoding
def _num(x: float) -> float | None:
    """``x`` as a JSON number, None when NaN or infinite."""
    x = float(x)
    return x if math.isfinite(x) else None


def _arr(a: FloatArray, decimals: int | None = None) -> list[float | None]:
    """A float array as a JSON list (rounded to ``decimals``), None where not finite."""
    a = np.asarray(a, dtype=np.float64)
    if decimals is not None:
        a = np.round(a, decimals)
    out: list[float | None] = a.tolist()
    if not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a))
        for i in bad.tolist():
            out[i] = None
    return out


def gate_dict(g: GateDecision) -> dict[str, Any]:
    """JSON form of a gate decision."""
    return {
        "outcome": g.outcome.value,
        "reason": g.reason.value,
        "seq": int(g.seq),
        "requested_w": _num(g.requested_w),
        "granted_w": _num(g.granted_w),
        "source": g.source,
    }


def command_dict(c: Command | None) -> dict[str, Any] | None:
    """JSON form of a command (None stays None)."""
    if c is None:
        return None
    return {
        "seq": int(c.seq),
        "mode": c.mode.value,
        "power_w": _num(c.power_w),
        "valid_until_s": _num(c.valid_until_s),
        "reserve_soc": _num(c.reserve_soc),
        "source": c.source,
    }


#: The float fields of the contract's Telemetry, in contract order (time_s is given apart).
_TELEMETRY_FLOATS = tuple(
    f.name for f in fields(Telemetry) if f.type == "float" and f.name != "time_s"
)


def telemetry_dict(snap: Snapshot) -> dict[str, Any]:
    """JSON form of the snapshot's Telemetry, with alarm severities and latched faults."""
    t: Telemetry = snap.telemetry
    out: dict[str, Any] = {"time_s": float(t.time_s)}
    for name in _TELEMETRY_FLOATS:
        out[name] = _num(getattr(t, name))
    out["contactor"] = t.contactor.value
    out["alarms"] = list(t.alarms)
    out["balancing_cells"] = int(t.balancing_cells)
    out["gate"] = gate_dict(t.gate)
    out["version"] = t.version
    out["extra"] = {k: _num(v) for k, v in t.extra.items()}
    out["alarm_severity"] = alarm_severity(snap)
    out["latched"] = list(snap.latched)
    return out


def alarm_severity(snap: Snapshot) -> dict[str, str]:
    """Severity (``warning``, ``derate``, ``trip``) of each active Telemetry alarm label.

    Telemetry alarms read ``code:tier``; the snapshot keys its severities by ``code``.
    """
    sev = snap.alarm_severity
    return {a: sev.get(a, sev.get(a.partition(":")[0], "")) for a in snap.telemetry.alarms}


def site_dict(snap: Snapshot) -> dict[str, Any]:
    """JSON form of the site meters."""
    s = snap.site
    return {
        "time_s": float(s.time_s),
        "grid_power_w": _num(s.grid_power_w),
        "pv_power_w": _num(s.pv_power_w),
        "load_power_w": _num(s.load_power_w),
        "battery_ac_power_w": _num(s.battery_ac_power_w),
        "import_price_eur_per_kwh": _num(s.import_price_eur_per_kwh),
        "export_price_eur_per_kwh": _num(s.export_price_eur_per_kwh),
    }


def _finite_stats(a: FloatArray) -> tuple[float | None, float | None, float | None, int, int]:
    """min, max, mean of the finite values, the argmin and argmax (-1 when none)."""
    ok = np.isfinite(a)
    if not ok.any():
        return None, None, None, -1, -1
    masked_lo = np.where(ok, a, np.inf)
    masked_hi = np.where(ok, a, -np.inf)
    i_lo, i_hi = int(np.argmin(masked_lo)), int(np.argmax(masked_hi))
    return float(a[i_lo]), float(a[i_hi]), float(a[ok].mean()), i_lo, i_hi


def cells_dict(snap: Snapshot) -> dict[str, Any]:
    """JSON form of the per-cell state, with min/max/mean/spread of each quantity.

    Voltages are rounded to 0.1 mV, temperatures to 0.01 degC, SoC to 1e-5.
    """
    c = snap.cells
    n = int(c.voltage_v.shape[0])
    stats: dict[str, Any] = {}
    for key, arr in (
        ("voltage_v", c.voltage_v),
        ("temperature_degc", c.temperature_degc),
        ("soc", c.soc),
    ):
        lo, hi, mean, i_lo, i_hi = _finite_stats(arr)
        stats[key] = {
            "min": lo,
            "max": hi,
            "mean": mean,
            "spread": None if lo is None or hi is None else hi - lo,
            "argmin": i_lo,
            "argmax": i_hi,
        }
    return {
        "time_s": float(snap.time_s),
        "n_cells": n,
        "n_strings": int(c.n_strings),
        "n_series": n // max(int(c.n_strings), 1),
        "modules_per_string": int(c.modules_per_string),
        "voltage_v": _arr(c.voltage_v, 4),
        "temperature_degc": _arr(c.temperature_degc, 2),
        "soc": _arr(c.soc, 5),
        "balancing": [int(b) for b in np.asarray(c.balancing, dtype=bool).tolist()],
        "balancing_count": int(np.count_nonzero(c.balancing)),
        "string_current_a": _arr(c.string_current_a, 3),
        "stats": stats,
    }


def plan_dict(plan: PlanView | None) -> dict[str, Any]:
    """JSON form of the EMS plan (``available`` false and empty arrays when there is none)."""
    if plan is None:
        empty: list[float | None] = []
        return {
            "available": False,
            "created_s": None,
            "time_s": empty,
            "step_s": empty,
            "battery_power_w": empty,
            "soc": empty,
            "grid_import_w": empty,
            "grid_export_w": empty,
            "load_w": empty,
            "pv_w": empty,
            "import_price_eur_per_kwh": empty,
            "export_price_eur_per_kwh": empty,
            "relaxed": [],
        }
    return {
        "available": True,
        "created_s": _num(plan.created_s),
        "time_s": _arr(plan.time_s),
        "step_s": _arr(plan.step_s),
        "battery_power_w": _arr(plan.battery_power_w, 1),
        "soc": _arr(plan.soc, 5),
        "grid_import_w": _arr(plan.grid_import_w, 1),
        "grid_export_w": _arr(plan.grid_export_w, 1),
        "load_w": _arr(plan.load_w, 1),
        "pv_w": _arr(plan.pv_w, 1),
        "import_price_eur_per_kwh": _arr(plan.import_price_eur_per_kwh, 5),
        "export_price_eur_per_kwh": _arr(plan.export_price_eur_per_kwh, 5),
        "relaxed": list(plan.relaxed),
    }


def forecasts_dict(plan: PlanView | None) -> dict[str, Any]:
    """The forecasts the plan was made with (load, PV, prices)."""
    p = plan_dict(plan)
    keys = (
        "available",
        "created_s",
        "time_s",
        "step_s",
        "load_w",
        "pv_w",
        "import_price_eur_per_kwh",
        "export_price_eur_per_kwh",
    )
    out = {k: p[k] for k in keys}
    errors = plan.forecast_errors if plan is not None else {}
    out["errors"] = {
        col: {name: int(v) if name == "n" else _num(float(v)) for name, v in e.items()}
        for col, e in errors.items()
    }
    return out


def grid_event_dict(e: GridEvent) -> dict[str, Any]:
    """JSON form of a grid event."""
    return {
        "event_id": e.event_id,
        "start_s": e.start_s,
        "end_s": e.end_s,
        "max_import_w": e.max_import_w,
        "max_export_w": e.max_export_w,
        "battery_power_w": e.battery_power_w,
        "source": e.source,
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default)


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        item = value.item()
        return None if isinstance(item, float) and not math.isfinite(item) else item
    if isinstance(value, np.ndarray):
        return _arr(value.astype(np.float64))
    return str(value)


def _clean(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (event data from the loop)."""
    if isinstance(value, float | np.floating):
        return _num(float(value))
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- models
class GateOut(BaseModel):
    """The gate's decision on a command."""

    outcome: Outcome
    reason: Reason
    seq: int
    requested_w: float | None = Field(description="AC power asked for [W], + = discharge")
    granted_w: float | None = Field(description="AC power setpoint actuated [W], + = discharge")
    source: str


class CommandOut(BaseModel):
    """A command in force (from the EMS or an override)."""

    seq: int
    mode: Mode
    power_w: float | None
    valid_until_s: float | None = Field(description="Expiry [s, Unix UTC]; null = none")
    reserve_soc: float | None
    source: str


class TelemetryOut(BaseModel):
    """The BMS's latest Telemetry (contract version ``version``); null = invalid reading."""

    time_s: float = Field(description="Cycle time [s, Unix UTC]")
    soc: float | None = Field(description="Pack SoC [fraction 0..1]")
    soc_cell_min: float | None
    soc_cell_max: float | None
    soh: float | None = Field(description="State of health [fraction 0..1]")
    energy_available_wh: float | None
    capacity_wh: float | None
    pack_voltage_v: float | None
    pack_current_a: float | None = Field(description="[A], + = discharge")
    cell_voltage_min_v: float | None
    cell_voltage_max_v: float | None
    cell_voltage_avg_v: float | None
    temperature_min_degc: float | None
    temperature_max_degc: float | None
    temperature_avg_degc: float | None
    charge_current_limit_a: float | None
    discharge_current_limit_a: float | None
    charge_power_limit_w: float | None
    discharge_power_limit_w: float | None
    contactor: ContactorState
    alarms: list[str]
    balancing_cells: int
    gate: GateOut
    version: str
    extra: dict[str, float | None]
    alarm_severity: dict[str, str] = Field(description="Active alarm -> warning, derate or trip")
    latched: list[str] = Field(description="Faults that need a reset")


class SiteOut(BaseModel):
    """Site meters; grid + = import, battery + = discharge [W]."""

    time_s: float
    grid_power_w: float | None
    pv_power_w: float | None
    load_power_w: float | None
    battery_ac_power_w: float | None
    import_price_eur_per_kwh: float | None
    export_price_eur_per_kwh: float | None


class CellStats(BaseModel):
    """Min, max, mean and spread of one per-cell quantity (argmin/argmax: cell index)."""

    min: float | None
    max: float | None
    mean: float | None
    spread: float | None
    argmin: int
    argmax: int


class CellsOut(BaseModel):
    """Per-cell state; cells are string-major (``cell = string * n_series + k``)."""

    time_s: float
    n_cells: int
    n_strings: int
    n_series: int
    modules_per_string: int
    voltage_v: list[float | None]
    temperature_degc: list[float | None]
    soc: list[float | None]
    balancing: list[int] = Field(description="1 = bleed resistor on")
    balancing_count: int
    string_current_a: list[float | None]
    stats: dict[str, CellStats]


class PlanOut(BaseModel):
    """The EMS's plan; ``available`` false when the strategy does not plan."""

    available: bool
    created_s: float | None
    time_s: list[float | None] = Field(description="Start of each step [s, Unix UTC]")
    step_s: list[float | None]
    battery_power_w: list[float | None]
    soc: list[float | None]
    grid_import_w: list[float | None]
    grid_export_w: list[float | None]
    load_w: list[float | None]
    pv_w: list[float | None]
    import_price_eur_per_kwh: list[float | None]
    export_price_eur_per_kwh: list[float | None]
    relaxed: list[str]


class ForecastsOut(BaseModel):
    """The forecasts behind the current plan."""

    available: bool
    created_s: float | None
    time_s: list[float | None]
    step_s: list[float | None]
    load_w: list[float | None]
    pv_w: list[float | None]
    import_price_eur_per_kwh: list[float | None]
    export_price_eur_per_kwh: list[float | None]
    errors: dict[str, dict[str, int | float | None]] = Field(
        default_factory=dict,
        description="error of the forecasts the plans were given over the last 7 days, per "
        "column: mae [W], mae_naive [W] (seasonal-naive baseline), skill, n (pairs scored)",
    )


class EventOut(BaseModel):
    """One event of the run (BMS alarm, contactor, reset, drill, logbook...)."""

    id: int
    time_s: float
    kind: str
    code: str
    severity: str
    message: str
    data: dict[str, Any] | None = None


class EventsOut(BaseModel):
    """Events of the current run, oldest first."""

    run_id: int | None
    events: list[EventOut]


class HistoryOut(BaseModel):
    """Pack time series from the run database, averaged into buckets when decimated."""

    run_id: int | None
    start_s: float
    end_s: float
    bucket_s: float | None = Field(description="Bucket length when decimated, else null")
    time_s: list[float | None]
    columns: dict[str, list[float | None]]


class GridEventOut(BaseModel):
    """A grid event the EMS plans around."""

    event_id: str
    start_s: float
    end_s: float
    max_import_w: float | None
    max_export_w: float | None
    battery_power_w: float | None
    source: str


class StatusOut(BaseModel):
    """Where the site stands: time, state, alarms, command, gate, counters."""

    site: str
    timezone: str
    time_s: float | None
    software_version: str
    contract_version: str
    running: bool
    snapshot_age_s: float | None = Field(description="Wall seconds since the last cycle")
    contactor: str | None
    alarms: list[str]
    alarm_severity: dict[str, str]
    acknowledged: list[str]
    latched: list[str]
    command: CommandOut | None
    gate: GateOut | None
    counters: dict[str, float]
    rejected: dict[str, int]
    grid_events: list[GridEventOut]
    n_cells: int | None
    writes_enabled: bool
    database: bool = Field(description="The run database exists (history and events)")


class HealthOut(BaseModel):
    """``ok`` when the control loop publishes; ``starting`` or ``stale`` otherwise (503)."""

    status: Literal["ok", "starting", "stale"]
    time_s: float | None
    snapshot_age_s: float | None


class CommandIn(BaseModel):
    """An operator override for ``duration_s`` of site time (then the EMS applies again)."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(description="power, charge, discharge, hold or idle")
    power_w: float = Field(
        0.0, ge=-1e9, le=1e9, allow_inf_nan=False, description="[W], + = discharge"
    )
    duration_s: float = Field(
        300.0, gt=0, le=86400, allow_inf_nan=False, description="Validity [s of site time]"
    )
    reserve_soc: float = Field(0.0, ge=0, le=1, description="Do not discharge below [fraction]")


class DecisionOut(BaseModel):
    """The gate's decision on a submitted command."""

    outcome: Outcome
    reason: Reason
    seq: int
    requested_w: float | None
    granted_w: float | None
    source: str
    valid_until_s: float = Field(description="Expiry given to the command [s, Unix UTC]")


class ResetIn(BaseModel):
    """Reset a latched BMS fault (``all`` for every latched fault)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field("all", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class DrillIn(BaseModel):
    """Inject (or clear) a twin fault now: see ``docs/faults.md`` for kinds and targets."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    target: int = Field(0, ge=0, le=1_000_000, description="Cell, string, sensor index")
    action: Literal["inject", "clear"] = "inject"
    params: dict[str, float] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        for name, value in v.items():
            if not math.isfinite(value):
                raise ValueError(f"params.{name} must be finite, got {value}")
        return v


class GridEventIn(BaseModel):
    """A grid event from the operator (source ``http``)."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    start_s: float = Field(allow_inf_nan=False, description="[s, Unix UTC]")
    end_s: float = Field(allow_inf_nan=False, description="[s, Unix UTC], after start_s")
    max_import_w: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_export_w: float | None = Field(None, ge=0, allow_inf_nan=False)
    battery_power_w: float | None = Field(None, allow_inf_nan=False)


class AckIn(BaseModel):
    """Acknowledge active alarms (empty ``codes``: every active alarm)."""

    model_config = ConfigDict(extra="forbid")

    codes: list[str] = Field(default_factory=list, max_length=256)


class ResultOut(BaseModel):
    """Outcome of a reset, drill, acknowledge or cancel."""

    ok: bool
    message: str


# ---------------------------------------------------------------------------------- state
class _Live:
    """What the app keeps between requests: events, acknowledgements, encoding caches."""

    def __init__(self, hub: Hub, config: HttpConfig, max_events: int = 500) -> None:
        self.hub = hub
        self.config = config
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max_events)
        self._event_seq = 0
        self._acked: dict[str, float] = {}
        self._last_wall = -math.inf
        self._seq = int(time.time() * 1000)  # increasing across restarts of the server
        self._cache: dict[str, tuple[Snapshot | None, str]] = {}
        hub.subscribe(self._on_snapshot)
        hub.subscribe_events(self._on_event)

    # loop thread: keep short
    def _on_snapshot(self, snap: Snapshot) -> None:
        self._last_wall = time.monotonic()
        if self._acked:
            active = set(snap.telemetry.alarms)
            with self._lock:
                for code in [c for c in self._acked if c not in active]:
                    del self._acked[code]

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._event_seq += 1
            self._events.append((self._event_seq, event))

    # interface side
    def token(self) -> str | None:
        """The bearer token in force (config first, then the environment)."""
        tok = self.config.token or os.environ.get(self.config.token_env) or None
        return tok

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def snapshot_age_s(self) -> float | None:
        last = self._last_wall
        return None if not math.isfinite(last) else time.monotonic() - last

    def events_after(self, seq: int) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            new = [e for s, e in self._events if s > seq]
            return self._event_seq, new

    def event_seq(self) -> int:
        with self._lock:
            return self._event_seq

    def acknowledge(self, codes: Sequence[str], active: Iterable[str], now_s: float) -> list[str]:
        with self._lock:
            done = []
            for code in active:
                if not codes or code in codes:
                    self._acked[code] = now_s
                    done.append(code)
            return done

    def acknowledged(self) -> list[str]:
        with self._lock:
            return sorted(self._acked)

    def encoded(self, key: str, snap: Snapshot, make: Callable[[Snapshot], Any]) -> str:
        """JSON of ``make(snap)``, computed once per snapshot and key."""
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] is snap:
            return hit[1]
        text = _dumps(make(snap))
        with self._lock:
            self._cache[key] = (snap, text)
        return text

    def overview(self, snap: Snapshot) -> dict[str, Any]:
        """What the dashboard's overview shows (sent on every stream update)."""
        return {
            "time_s": float(snap.time_s),
            "telemetry": telemetry_dict(snap),
            "site": site_dict(snap),
            "command": command_dict(snap.command),
            "counters": {k: _num(v) for k, v in snap.counters.items()},
            "acknowledged": self.acknowledged(),
            "plan_created_s": None if snap.plan is None else _num(snap.plan.created_s),
        }


# ---------------------------------------------------------------------------------- database
def _connect_ro(db_path: Path | None) -> sqlite3.Connection:
    if db_path is None:
        raise HTTPException(503, "this run has no database")
    path = Path(db_path)
    if not path.exists():
        raise HTTPException(503, f"the run database {path} does not exist yet")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as err:
        raise HTTPException(503, f"cannot open the run database: {err}") from err
    return conn


def _current_run(conn: sqlite3.Connection, site: str, run_id: int | None) -> int | None:
    if run_id is not None:
        row = conn.execute("SELECT id FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"run_id: no run {run_id} in the database")
        return int(row[0])
    row = conn.execute("SELECT max(id) FROM runs WHERE site = ?", (site,)).fetchone()
    if row is None or row[0] is None:
        row = conn.execute("SELECT max(id) FROM runs").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _aggregate(col: str) -> str:
    if "_min_" in col or col.endswith("_min"):
        return f"MIN({col})"
    if "_max_" in col or col.endswith("_max"):
        return f"MAX({col})"
    return f"AVG({col})"


def read_history(
    conn: sqlite3.Connection,
    run_id: int,
    start_s: float,
    end_s: float,
    columns: Sequence[str],
    max_points: int,
) -> tuple[list[float | None], dict[str, list[float | None]], float | None]:
    """Pack time series in ``start_s <= time_s < end_s``, bucketed beyond ``max_points``.

    Parameters
    ----------
    conn : sqlite3.Connection
        Read connection to the run database.
    run_id : int
        Run id.
    start_s, end_s : float
        Window [s, Unix UTC].
    columns : sequence of str
        Numeric pack columns (validated by the caller).
    max_points : int
        Most rows returned; more are averaged into equal time buckets (``*_min_*`` columns
        take the minimum, ``*_max_*`` the maximum of each bucket).

    Returns
    -------
    tuple
        Times [s], column -> values, and the bucket length [s] (None when not decimated).
    """
    (n,) = conn.execute(
        "SELECT count(*) FROM pack WHERE run_id = ? AND time_s >= ? AND time_s < ?",
        (run_id, start_s, end_s),
    ).fetchone()
    bucket: float | None = None
    if n <= max_points:
        sql = (
            f"SELECT time_s, {', '.join(columns)} FROM pack "
            "WHERE run_id = ? AND time_s >= ? AND time_s < ? ORDER BY time_s, rowid"
        )
        rows = conn.execute(sql, (run_id, start_s, end_s)).fetchall()
    else:
        bucket = (end_s - start_s) / max_points
        aggs = ", ".join(_aggregate(c) for c in columns)
        sql = (
            f"SELECT MIN(time_s), {aggs} FROM pack "
            "WHERE run_id = ? AND time_s >= ? AND time_s < ? "
            "GROUP BY CAST((time_s - ?) / ? AS INTEGER) ORDER BY 1"
        )
        rows = conn.execute(sql, (run_id, start_s, end_s, start_s, bucket)).fetchall()
    cols = list(zip(*rows, strict=True)) if rows else [()] * (len(columns) + 1)

    def fix(vals: Iterable[Any]) -> list[float | None]:
        return [None if v is None or not math.isfinite(v) else float(v) for v in vals]

    return fix(cols[0]), {c: fix(cols[i + 1]) for i, c in enumerate(columns)}, bucket


# ---------------------------------------------------------------------------------- metrics
class SnapshotCollector:
    """Prometheus collector reading the hub's latest snapshot at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        """No fixed description (the collector is dynamic)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Metric families of the latest snapshot and the refused-input counters."""
        out: list[Metric] = []
        rejected = CounterMetricFamily(
            "openbess_rejected_input",
            "Input refused by an interface, by reason",
            labels=["interface", "reason"],
        )
        for key, n in sorted(self.hub.rejected().items()):
            iface, _, reason = key.partition(".")
            rejected.add_metric([iface, reason], float(n))
        out.append(rejected)
        snap = self.hub.latest()
        if snap is None:
            return out
        t, s = snap.telemetry, snap.site

        def gauge(name: str, doc: str, value: float) -> None:
            out.append(GaugeMetricFamily(f"openbess_{name}", doc, value=float(value)))

        gauge("snapshot_time_seconds", "Site time of the latest cycle [s, Unix UTC]", snap.time_s)
        gauge("soc_ratio", "Pack state of charge [fraction]", t.soc)
        gauge("soc_cell_min_ratio", "Lowest cell SoC [fraction]", t.soc_cell_min)
        gauge("soc_cell_max_ratio", "Highest cell SoC [fraction]", t.soc_cell_max)
        gauge("soh_ratio", "State of health [fraction]", t.soh)
        gauge("energy_available_watt_hours", "Energy available [Wh]", t.energy_available_wh)
        gauge("capacity_watt_hours", "Usable capacity [Wh]", t.capacity_wh)
        gauge("pack_voltage_volts", "Pack voltage [V]", t.pack_voltage_v)
        gauge("pack_current_amperes", "Pack current [A], + = discharge", t.pack_current_a)
        gauge("cell_voltage_min_volts", "Lowest cell voltage [V]", t.cell_voltage_min_v)
        gauge("cell_voltage_max_volts", "Highest cell voltage [V]", t.cell_voltage_max_v)
        gauge("cell_voltage_avg_volts", "Mean cell voltage [V]", t.cell_voltage_avg_v)
        gauge("temperature_min_celsius", "Lowest cell temperature [degC]", t.temperature_min_degc)
        gauge("temperature_max_celsius", "Highest cell temperature [degC]", t.temperature_max_degc)
        gauge("charge_power_limit_watts", "Charge power limit [W]", t.charge_power_limit_w)
        gauge("discharge_power_limit_watts", "Discharge power limit [W]", t.discharge_power_limit_w)
        gauge("charge_current_limit_amperes", "Charge current limit [A]", t.charge_current_limit_a)
        gauge(
            "discharge_current_limit_amperes",
            "Discharge current limit [A]",
            t.discharge_current_limit_a,
        )
        gauge("balancing_cells", "Cells with the bleed resistor on", t.balancing_cells)
        gauge("battery_power_watts", "Battery AC power [W], + = discharge", s.battery_ac_power_w)
        gauge("grid_power_watts", "Grid power [W], + = import", s.grid_power_w)
        gauge("pv_power_watts", "PV power [W]", s.pv_power_w)
        gauge("load_power_watts", "Load power [W]", s.load_power_w)
        gauge("import_price_eur_per_kwh", "Import tariff [EUR/kWh]", s.import_price_eur_per_kwh)
        gauge("gate_requested_watts", "Power the command asked for [W]", t.gate.requested_w)
        gauge("gate_granted_watts", "Power the gate granted [W]", t.gate.granted_w)
        gauge("contactor_closed", "1 when the main contactor is closed", t.contactor == "closed")
        contactor = GaugeMetricFamily(
            "openbess_contactor_state", "Contactor state (1 = current)", labels=["state"]
        )
        for state in ContactorState:
            contactor.add_metric([state.value], float(t.contactor == state))
        out.append(contactor)
        alarms = GaugeMetricFamily(
            "openbess_alarm_active", "Active BMS alarms", labels=["code", "severity"]
        )
        for code, severity in alarm_severity(snap).items():
            alarms.add_metric([code, severity], 1.0)
        out.append(alarms)
        gauge("alarms_active", "Number of active alarms", len(t.alarms))
        gauge("faults_latched", "Latched faults waiting for a reset", len(snap.latched))
        gate = CounterMetricFamily(
            "openbess_gate_decisions", "Gate decisions by outcome", labels=["outcome"]
        )
        for outcome in Outcome:
            gate.add_metric([outcome.value], snap.counters.get(f"gate.{outcome.value}", 0.0))
        out.append(gate)
        for key, doc in (
            ("cycles", "Control cycles run"),
            ("overruns", "Cycles that started late"),
            ("ems_errors", "EMS errors"),
            ("bms_errors", "BMS errors"),
            ("log_errors", "Logging errors"),
            ("commands_lost", "Commands lost"),
        ):
            if key in snap.counters:
                name = "control_cycles" if key == "cycles" else key
                out.append(CounterMetricFamily(f"openbess_{name}", doc, value=snap.counters[key]))
        return out


# ---------------------------------------------------------------------------------- app
def _reject_422(hub: Hub, field: str, message: str, where: str = "body") -> HTTPException:
    hub.reject(SOURCE, "invalid_body" if where == "body" else "invalid_query")
    return HTTPException(
        422, [{"loc": [where, *field.split(".")], "msg": message, "type": "value_error"}]
    )


def _parse_time(value: str | None, field: str, tz: ZoneInfo, hub: Hub) -> float | None:
    """Unix seconds, or an ISO 8601 time (naive: site time zone)."""
    if value is None or value == "":
        return None
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _reject_422(
                hub, field, f"{field} must be Unix seconds or ISO 8601, got {value!r}", "query"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)
        t = dt.timestamp()
    if not math.isfinite(t):
        raise _reject_422(hub, field, f"{field} must be finite, got {value!r}", "query")
    return t


def create_app(hub: Hub, config: HttpConfig) -> FastAPI:
    """Build the FastAPI application serving ``hub``.

    Parameters
    ----------
    hub : Hub
        The hub of the running site.
    config : HttpConfig
        Token settings (``token``, ``token_env``).

    Returns
    -------
    fastapi.FastAPI
        The app; ``app.state.live`` holds its state (``closing`` ends the event streams).
    """
    live = _Live(hub, config)
    tz = ZoneInfo(hub.config.timezone if hub.config is not None else "UTC")
    app = FastAPI(
        title="openbess",
        version=__version__,
        description=(
            "REST API of an openbess site: telemetry, cells, plan, history, events; "
            "commands and fault drills (bearer token); Prometheus metrics at /metrics. "
            "Units SI, battery power + = discharge, grid + = import, SoC/SoH fractions."
        ),
    )
    app.state.live = live
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(hub))  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        where = str(errors[0]["loc"][0]) if errors and errors[0].get("loc") else "body"
        hub.reject(SOURCE, "invalid_body" if where == "body" else "invalid_query")
        fields = [".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in errors]
        message = "; ".join(f"{f}: {e.get('msg', '')}" for f, e in zip(fields, errors, strict=True))
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors
        ]
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    def snapshot() -> Snapshot:
        snap = hub.latest()
        if snap is None:
            raise HTTPException(503, "no data yet: the control loop has not completed a cycle")
        return snap

    def authorize(request: Request) -> None:
        token = live.token()
        if token is None:
            hub.reject(SOURCE, "writes_disabled")
            raise HTTPException(
                403,
                "writes are disabled: no token is configured (set interfaces.http.token in "
                f"the site file or the {config.token_env} environment variable)",
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            hub.reject(SOURCE, "unauthorized")
            raise HTTPException(
                401,
                "missing bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            hub.reject(SOURCE, "unauthorized")
            raise HTTPException(
                401, "wrong bearer token", headers={"WWW-Authenticate": 'Bearer error="invalid"'}
            )

    auth = [Depends(authorize)]

    # ------------------------------------------------------------------ reads
    @app.get(f"{API_PREFIX}/telemetry", response_model=TelemetryOut, tags=["read"])
    def get_telemetry() -> dict[str, Any]:
        """The latest Telemetry of the BMS, with this cycle's gate decision."""
        return telemetry_dict(snapshot())

    @app.get(f"{API_PREFIX}/site", response_model=SiteOut, tags=["read"])
    def get_site() -> dict[str, Any]:
        """The latest site meter readings."""
        return site_dict(snapshot())

    @app.get(f"{API_PREFIX}/cells", response_model=CellsOut, tags=["read"])
    def get_cells() -> Response:
        """Every cell's voltage, temperature, SoC and balancing, with min/max/spread."""
        snap = snapshot()
        return Response(live.encoded("cells", snap, cells_dict), media_type="application/json")

    @app.get(f"{API_PREFIX}/plan", response_model=PlanOut, tags=["read"])
    def get_plan() -> dict[str, Any]:
        """The EMS's current plan (``available`` false when the strategy does not plan)."""
        return plan_dict(snapshot().plan)

    @app.get(f"{API_PREFIX}/forecasts", response_model=ForecastsOut, tags=["read"])
    def get_forecasts() -> dict[str, Any]:
        """Load, PV and price forecasts behind the current plan."""
        return forecasts_dict(snapshot().plan)

    @app.get(f"{API_PREFIX}/events", response_model=EventsOut, tags=["read"])
    def get_events(
        start: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
        end: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
        kind: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 200,
        run_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """Events of the run (newest ``limit`` in the window, oldest first)."""
        t0 = _parse_time(start, "start", tz, hub)
        t1 = _parse_time(end, "end", tz, hub)
        conn = _connect_ro(hub.db_path)
        try:
            rid = _current_run(conn, hub.site_name, run_id)
            if rid is None:
                return {"run_id": None, "events": []}
            where, params = "run_id = ?", [rid]
            if t0 is not None:
                where += " AND time_s >= ?"
                params.append(t0)  # type: ignore[arg-type]
            if t1 is not None:
                where += " AND time_s < ?"
                params.append(t1)  # type: ignore[arg-type]
            if kind is not None:
                where += " AND kind = ?"
                params.append(kind)  # type: ignore[arg-type]
            rows = conn.execute(
                "SELECT id, time_s, kind, code, severity, message, data_json FROM events "
                f"WHERE {where} ORDER BY time_s DESC, id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        except sqlite3.Error as err:
            raise HTTPException(503, f"run database read failed: {err}") from err
        finally:
            conn.close()
        events = [
            {
                "id": r[0],
                "time_s": r[1],
                "kind": r[2],
                "code": r[3],
                "severity": r[4],
                "message": r[5],
                "data": None if r[6] is None else _clean(json.loads(r[6])),
            }
            for r in reversed(rows)
        ]
        return {"run_id": rid, "events": events}

    @app.get(f"{API_PREFIX}/history", response_model=HistoryOut, tags=["read"])
    def get_history(
        start: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
        end: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
        columns: Annotated[str | None, Query(description="Comma-separated pack columns")] = None,
        max_points: Annotated[int, Query(ge=10, le=20000)] = 2000,
        run_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """Pack and site time series of the run in ``[start, end)`` (default: the last day)."""
        t0 = _parse_time(start, "start", tz, hub)
        t1 = _parse_time(end, "end", tz, hub)
        cols = DEFAULT_HISTORY_COLUMNS
        if columns:
            cols = tuple(c.strip() for c in columns.split(",") if c.strip())
            unknown = [c for c in cols if c not in _HISTORY_COLUMNS]
            if unknown or not cols:
                raise _reject_422(
                    hub,
                    "columns",
                    f"columns: unknown pack column(s) {unknown}; known: {sorted(_HISTORY_COLUMNS)}",
                    "query",
                )
        conn = _connect_ro(hub.db_path)
        try:
            rid = _current_run(conn, hub.site_name, run_id)
            if t1 is None:
                snap = hub.latest()
                if snap is not None and run_id is None:
                    t1 = snap.time_s + 1e-3
                else:
                    row = conn.execute(
                        "SELECT max(time_s) FROM pack WHERE run_id = ?", (rid,)
                    ).fetchone()
                    t1 = (row[0] if row and row[0] is not None else time.time()) + 1e-3
            if t0 is None:
                t0 = t1 - 86400.0
            if t1 <= t0:
                raise _reject_422(hub, "end", f"end ({t1}) must be after start ({t0})", "query")
            if rid is None:
                return {
                    "run_id": None,
                    "start_s": t0,
                    "end_s": t1,
                    "bucket_s": None,
                    "time_s": [],
                    "columns": {c: [] for c in cols},
                }
            times, values, bucket = read_history(conn, rid, t0, t1, cols, max_points)
        except sqlite3.Error as err:
            raise HTTPException(503, f"run database read failed: {err}") from err
        finally:
            conn.close()
        return {
            "run_id": rid,
            "start_s": t0,
            "end_s": t1,
            "bucket_s": bucket,
            "time_s": times,
            "columns": values,
        }

    @app.get(f"{API_PREFIX}/grid-events", response_model=list[GridEventOut], tags=["read"])
    def get_grid_events() -> list[dict[str, Any]]:
        """Grid events not yet over."""
        snap = hub.latest()
        return [grid_event_dict(e) for e in hub.grid_events(snap.time_s if snap else None)]

    @app.get(f"{API_PREFIX}/status", response_model=StatusOut, tags=["read"])
    def get_status() -> dict[str, Any]:
        """Site, time, state, alarms, command, gate decision and counters."""
        snap = hub.latest()
        age = live.snapshot_age_s()
        t = snap.telemetry if snap is not None else None
        return {
            "site": hub.site_name,
            "timezone": str(tz),
            "time_s": None if snap is None else snap.time_s,
            "software_version": __version__,
            "contract_version": CONTRACT_VERSION,
            "running": snap is not None and age is not None and age < STALE_AFTER_S,
            "snapshot_age_s": age,
            "contactor": None if t is None else t.contactor.value,
            "alarms": [] if t is None else list(t.alarms),
            "alarm_severity": {} if snap is None else alarm_severity(snap),
            "acknowledged": live.acknowledged(),
            "latched": [] if snap is None else list(snap.latched),
            "command": None if snap is None else command_dict(snap.command),
            "gate": None if t is None else gate_dict(t.gate),
            "counters": {} if snap is None else {k: float(v) for k, v in snap.counters.items()},
            "rejected": hub.rejected(),
            "grid_events": [
                grid_event_dict(e) for e in hub.grid_events(snap.time_s if snap else None)
            ],
            "n_cells": None if snap is None else int(snap.cells.voltage_v.shape[0]),
            "writes_enabled": live.token() is not None,
            "database": hub.db_path is not None and Path(hub.db_path).exists(),
        }

    @app.get(
        f"{API_PREFIX}/health",
        response_model=HealthOut,
        tags=["read"],
        responses={503: {"model": HealthOut}},
    )
    def get_health() -> JSONResponse:
        """200 while the control loop publishes; 503 before the first cycle or when stalled."""
        snap = hub.latest()
        age = live.snapshot_age_s()
        body: dict[str, Any]
        if snap is None:
            body = {"status": "starting", "time_s": None, "snapshot_age_s": None}
            return JSONResponse(body, status_code=503)
        stale = age is None or age > STALE_AFTER_S
        body = {
            "status": "stale" if stale else "ok",
            "time_s": snap.time_s,
            "snapshot_age_s": age,
        }
        return JSONResponse(body, status_code=503 if stale else 200)

    # ------------------------------------------------------------------ writes
    @app.post(
        f"{API_PREFIX}/command",
        response_model=DecisionOut,
        dependencies=auth,
        tags=["write"],
        responses={401: {}, 403: {}, 422: {}, 503: {}, 504: {}},
    )
    def post_command(body: CommandIn) -> dict[str, Any]:
        """Override the EMS for ``duration_s`` of site time; answers the gate's decision."""
        snap = snapshot()
        valid_until = snap.time_s + body.duration_s
        cmd = Command(
            seq=live.next_seq(),
            mode=body.mode,
            power_w=body.power_w,
            valid_until_s=valid_until,
            reserve_soc=body.reserve_soc,
            source=SOURCE,
        )
        decision = hub.submit(cmd, wait_s=ANSWER_WAIT_S)
        if decision is None:
            raise HTTPException(504, f"the control loop did not decide within {ANSWER_WAIT_S} s")
        return {**gate_dict(decision), "valid_until_s": valid_until}

    @app.post(
        f"{API_PREFIX}/faults/reset",
        response_model=ResultOut,
        dependencies=auth,
        tags=["write"],
        responses={401: {}, 403: {}, 409: {}, 504: {}},
    )
    def post_reset(body: ResetIn | None = None) -> dict[str, Any]:
        """Reset a latched BMS fault (``all``: every one); 409 when the BMS refuses."""
        code = body.code if body is not None else "all"
        ok, message = hub.request_reset(code, SOURCE, wait_s=ANSWER_WAIT_S)
        if not ok and message == "not processed":
            raise HTTPException(504, f"the control loop did not answer within {ANSWER_WAIT_S} s")
        if not ok:
            raise HTTPException(409, message)
        return {"ok": True, "message": message}

    @app.post(
        f"{API_PREFIX}/drills",
        response_model=ResultOut,
        dependencies=auth,
        tags=["write"],
        responses={401: {}, 403: {}, 422: {}, 504: {}},
    )
    def post_drill(body: DrillIn) -> dict[str, Any]:
        """Inject (or clear) a twin fault at the next cycle: watch the BMS react."""
        allowed = DEFAULT_PARAMS[body.kind]
        for name in body.params:
            if name not in allowed:
                raise _reject_422(
                    hub,
                    f"params.{name}",
                    f"params.{name}: {body.kind.value} takes {sorted(allowed) or 'no parameters'}",
                )
        spec = ":".join(
            [body.kind.value, str(body.target), *(f"{k}={v!r}" for k, v in body.params.items())]
        )
        ok, message = hub.request_drill(
            spec, SOURCE, wait_s=ANSWER_WAIT_S, clear=body.action == "clear"
        )
        if not ok and message == "not processed":
            raise HTTPException(504, f"the control loop did not answer within {ANSWER_WAIT_S} s")
        if not ok:  # the loop counted it as bad_drill
            raise HTTPException(
                422, [{"loc": ["body", "target"], "msg": message, "type": "value_error"}]
            )
        return {"ok": True, "message": message}

    @app.post(
        f"{API_PREFIX}/grid-events",
        response_model=GridEventOut,
        dependencies=auth,
        tags=["write"],
        responses={401: {}, 403: {}, 422: {}},
    )
    def post_grid_event(body: GridEventIn) -> dict[str, Any]:
        """Add (or replace, same id) a grid event the EMS plans around."""
        event = GridEvent(
            event_id=body.event_id,
            start_s=body.start_s,
            end_s=body.end_s,
            max_import_w=body.max_import_w,
            max_export_w=body.max_export_w,
            battery_power_w=body.battery_power_w,
            source=SOURCE,
        )
        try:
            hub.post_event(event)
        except ValueError as err:
            field = "end_s" if "end_s" in str(err) else "body"
            raise _reject_422(hub, field, str(err)) from err
        return grid_event_dict(event)

    @app.delete(
        f"{API_PREFIX}/grid-events/{{event_id}}",
        response_model=ResultOut,
        dependencies=auth,
        tags=["write"],
        responses={401: {}, 403: {}, 404: {}},
    )
    def delete_grid_event(event_id: str) -> dict[str, Any]:
        """Cancel a grid event posted over HTTP."""
        if not hub.cancel_event(SOURCE, event_id):
            raise HTTPException(404, f"no grid event {event_id!r} from {SOURCE}")
        return {"ok": True, "message": f"grid event {event_id} cancelled"}

    @app.post(
        f"{API_PREFIX}/alarms/ack",
        response_model=ResultOut,
        dependencies=auth,
        tags=["write"],
        responses={401: {}, 403: {}, 422: {}},
    )
    def post_ack(body: AckIn | None = None) -> dict[str, Any]:
        """Acknowledge active alarms (until they clear); no body or no codes: all active."""
        snap = snapshot()
        codes = body.codes if body is not None else []
        active = snap.telemetry.alarms
        unknown = [c for c in codes if c not in active]
        if unknown:
            raise _reject_422(hub, "codes", f"codes: not active: {unknown}; active: {list(active)}")
        done = live.acknowledge(codes, active, snap.time_s)
        return {"ok": True, "message": f"acknowledged {done}" if done else "no active alarm"}

    # ------------------------------------------------------------------ metrics, stream, page
    @app.get("/metrics", tags=["read"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(f"{API_PREFIX}/stream", tags=["read"], response_class=StreamingResponse)
    async def stream(
        cells: bool = True,
        interval_s: Annotated[float, Query(ge=0.05, le=60)] = 0.25,
    ) -> StreamingResponse:
        """Server-sent events: ``snapshot`` (every ``interval_s`` when the site moved),
        ``cells`` (throttled: every max(0.5, n_cells / 1000) s), ``event`` (alarms, drills).
        """
        return StreamingResponse(
            _event_stream(live, cells, interval_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


async def _event_stream(live: _Live, cells: bool, interval_s: float) -> AsyncIterator[str]:
    """The server-sent events of one dashboard client."""
    hub = live.hub
    last_t = -math.inf
    last_cells = -math.inf
    last_write = time.monotonic()
    ev_seq = live.event_seq()
    yield "retry: 2000\n\n"
    while not live.closing.is_set() and not hub.stopped.is_set():
        now = time.monotonic()
        snap = hub.latest()
        if snap is not None and snap.time_s > last_t:
            last_t = snap.time_s
            yield f"event: snapshot\ndata: {live.encoded('overview', snap, live.overview)}\n\n"
            last_write = now
            n_cells = int(snap.cells.voltage_v.shape[0])
            if cells and now - last_cells >= max(0.5, n_cells / 1000.0):
                last_cells = now
                yield f"event: cells\ndata: {live.encoded('cells', snap, cells_dict)}\n\n"
        ev_seq, new = live.events_after(ev_seq)
        for ev in new:
            yield f"event: event\ndata: {_dumps(_clean(ev))}\n\n"
            last_write = now
        if now - last_write > 5.0:
            yield ": keep-alive\n\n"
            last_write = now
        await asyncio.sleep(interval_s)


# ---------------------------------------------------------------------------------- server
class HttpServer:
    """REST API, metrics and dashboard: an :class:`~openbess.io.runtime.Interface`.

    Parameters
    ----------
    config : HttpConfig
        ``host`` and ``port`` to bind (port 0: any free port, see :attr:`port`), ``token``
        or the environment variable ``token_env`` holding the bearer token for writes.
    """

    name = "http"

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The bound TCP port (0 before :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:8000``."""
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def start(self, hub: Hub) -> None:
        """Bind the socket, start uvicorn in a thread and wait until it serves.

        Parameters
        ----------
        hub : Hub
            The hub of the running site.

        Raises
        ------
        OSError
            If the address cannot be bound.
        RuntimeError
            If the server does not start within 10 s.
        """
        if self._thread is not None:
            return
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        self.app = create_app(hub, self.config)
        uv_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            ws="none",
        )
        server = uvicorn.Server(uv_config)
        self._server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="openbess-http", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            self.stop()
            raise RuntimeError(f"the HTTP server did not start on {self.url}")
        log.info("HTTP API and dashboard on %s", self.url)

    def stop(self) -> None:
        """Close the event streams, stop uvicorn and release the socket (idempotent)."""
        if self.app is not None:
            self.app.state.live.closing.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            if self._thread.is_alive():  # pragma: no cover - a stuck handler
                log.warning("the HTTP server thread did not stop within 10 s")
                if self._server is not None:
                    self._server.force_exit = True
                self._thread.join(timeout=5.0)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None
        self._socket = None
