"""Run storage: the time series, events and KPIs of a run in one SQLite file (WAL mode).

One :class:`RunStore` per database file. The controller cycle calls the ``record_*`` methods,
which only validate and append to in-memory buffers; the buffers are written in one
transaction at least every ``flush_interval_s`` of **wall** time, so logging stays cheap in a
fast-forward simulation and a process killed with SIGKILL loses at most about the last
``flush_interval_s`` of data. The file is never corrupt after a kill: SQLite's write-ahead log
(``journal_mode=WAL``, ``synchronous=NORMAL``) makes every committed transaction atomic.
(``synchronous=NORMAL`` does not fsync each commit: a *power* loss may also lose the last
committed transactions, never the database.)

Who writes, and when
--------------------
- The **calling thread** writes: each ``record_pack`` / ``record_cells`` call checks the wall
  clock (``time.monotonic``, ~70 ns) and flushes when the flush deadline has passed or a buffer
  holds ``max_buffer_rows`` rows. A writer thread would not help (measured): binding the
  rows holds the GIL, so a busy caller loses the same time to it, and a writer releasing the
  GIL once per row (as ``sqlite3.executemany`` does) is starved (the GIL convoy effect).
- A small **watchdog thread** flushes buffered data when its deadline has passed by 0.1 s
  while the caller is idle (a real-time loop sleeping between cycles, a stalled controller),
  so the bound above (plus those 0.1 s) holds even if no further ``record_*`` call comes.
  Rows go in as multi-row ``INSERT`` statements, so a flush releases and retakes the GIL once
  per 256 rows, not once per row: the watchdog is not starved by a busy caller. It also
  runs the WAL checkpoints (copying committed pages into the main file, with its fsync) on
  its own connection with the GIL released, so the calling thread never waits for a
  checkpoint's disk writes.
- ``record_event`` and ``record_kpis`` bring the deadline forward to ``event_flush_s``
  (default 0.05 s) from now: events reach the file promptly, and a burst of events still costs
  at most ~20 commits per second.

The producer methods (``start_run``, ``record_*``) are meant to be called from one thread (the
controller's); ``flush``, the readers and ``close`` may be called from any thread.

Tables (schema version :data:`SCHEMA_VERSION` in ``PRAGMA user_version``)
-----------------------------------------------------------------------------
``runs``   id, started_at_s, ended_at_s, site, config_json, contract_version, software_version
``pack``   run_id + :data:`PACK_COLUMNS` (one row per controller cycle)
``cells``  run_id, time_s, cell_index, voltage_v, temperature_degc, soc, balancing
           (every ``cell_decimation``-th :meth:`RunStore.record_cells` call)
``events`` id, run_id, time_s, kind, code, severity, message, data_json
``kpis``   run_id, name, value (one value per name and run; recording a name again replaces it)

Pack column names are the :class:`~openbess.contract.Telemetry` and
:class:`~openbess.plant.SiteMeasurements` field names; the gate decision
(:class:`~openbess.contract.GateDecision`) is flattened with a ``gate_`` prefix
(``gate_requested_w`` and ``gate_granted_w`` are the command power requested and granted).
Units as in the contract: SI, battery power positive when discharging, grid power positive
when importing. ``alarms`` is the alarm names joined with :data:`ALARM_SEPARATOR`.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import sqlite3
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from enum import Enum
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from openbess import __version__
from openbess.contract import (
    CONTRACT_VERSION,
    ContactorState,
    GateDecision,
    Outcome,
    Reason,
    Telemetry,
)
from openbess.errors import StorageError
from openbess.plant import SiteMeasurements

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ALARM_SEPARATOR",
    "PACK_COLUMNS",
    "PACK_NUMERIC_COLUMNS",
    "PACK_TEXT_COLUMNS",
    "SCHEMA_VERSION",
    "RunStore",
    "pack_row",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the database layout, stored in ``PRAGMA user_version``."""

ALARM_SEPARATOR = ";"
"""Separator of the alarm names in the ``alarms`` text column."""

PACK_NUMERIC_COLUMNS: tuple[str, ...] = (
    "time_s",
    "soc",
    "soc_cell_min",
    "soc_cell_max",
    "soh",
    "energy_available_wh",
    "capacity_wh",
    "pack_voltage_v",
    "pack_current_a",
    "cell_voltage_min_v",
    "cell_voltage_max_v",
    "cell_voltage_avg_v",
    "temperature_min_degc",
    "temperature_max_degc",
    "temperature_avg_degc",
    "charge_current_limit_a",
    "discharge_current_limit_a",
    "charge_power_limit_w",
    "discharge_power_limit_w",
    "balancing_cells",
    "battery_ac_power_w",
    "grid_power_w",
    "pv_power_w",
    "load_power_w",
    "import_price_eur_per_kwh",
    "export_price_eur_per_kwh",
    "gate_seq",
    "gate_requested_w",
    "gate_granted_w",
)
"""Numeric pack columns, in tuple order (``time_s`` first). Units in the names; SoC, SoH as
fractions; ``balancing_cells`` and ``gate_seq`` are stored as integers."""

PACK_TEXT_COLUMNS: tuple[str, ...] = (
    "gate_outcome",
    "gate_reason",
    "gate_source",
    "contactor",
    "alarms",
)
"""Text pack columns, in tuple order, after the numeric ones."""

PACK_COLUMNS: tuple[str, ...] = PACK_NUMERIC_COLUMNS + PACK_TEXT_COLUMNS
"""All pack columns: the order of a tuple passed to :meth:`RunStore.record_pack`."""

_INTEGER_COLUMNS = frozenset({"balancing_cells", "gate_seq"})
_N_PACK = len(PACK_COLUMNS)
_N_NUMERIC = len(PACK_NUMERIC_COLUMNS)
_PACK_COLUMN_SET = frozenset(PACK_COLUMNS)
# Types sqlite3 binds as they are (np.float64 and bool subclass float and int; the contract's
# StrEnums subclass str): rows made of these take the fast path of record_pack.
_NUMERIC_TYPES = frozenset({float, int, type(None), np.float64, bool})
_TEXT_TYPES = frozenset({str, type(None), ContactorState, Outcome, Reason})
_INF = math.inf
_INTEGRAL = (int, np.integer, np.bool_)
_REAL = (float, np.floating)
_monotonic = time.monotonic
_WAL_AUTOCHECKPOINT_PAGES = 10_000  # backstop only: ~40 MB of WAL
_CHECKPOINT_ROWS = 5_000  # watchdog checkpoints after this many rows (~1.5 MB of WAL)...
_CHUNK_ROWS = 256  # rows per multi-row INSERT statement
_WATCHDOG_GRACE_S = 0.1  # the watchdog flushes only this long after the deadline [s]
_CHECKPOINT_INTERVAL_S = 30.0  # ...or this long after the last one if anything was written

_CELL_COLUMNS = ("time_s", "cell_index", "voltage_v", "temperature_degc", "soc", "balancing")
_EVENT_COLUMNS = ("time_s", "kind", "code", "severity", "message", "data")
_RUN_COLUMNS = (
    "id",
    "started_at_s",
    "ended_at_s",
    "site",
    "contract_version",
    "software_version",
    "config",
)


def _schema_sql() -> list[str]:
    """Return the statements that create schema version :data:`SCHEMA_VERSION`."""
    pack_cols = ",\n    ".join(
        [
            "run_id INTEGER NOT NULL REFERENCES runs(id)",
            "time_s REAL NOT NULL",
            *(
                f"{c} {'INTEGER' if c in _INTEGER_COLUMNS else 'REAL'}"
                for c in PACK_NUMERIC_COLUMNS[1:]
            ),
            *(f"{c} TEXT" for c in PACK_TEXT_COLUMNS),
        ]
    )
    return [
        """CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started_at_s REAL NOT NULL,
    ended_at_s REAL,
    site TEXT NOT NULL,
    config_json TEXT NOT NULL,
    contract_version TEXT NOT NULL,
    software_version TEXT NOT NULL
)""",
        f"CREATE TABLE pack (\n    {pack_cols}\n)",
        "CREATE INDEX pack_run_time ON pack(run_id, time_s)",
        """CREATE TABLE cells (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time_s REAL NOT NULL,
    cell_index INTEGER NOT NULL,
    voltage_v REAL,
    temperature_degc REAL,
    soc REAL,
    balancing INTEGER
)""",
        "CREATE INDEX cells_run_time ON cells(run_id, time_s)",
        """CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time_s REAL NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    data_json TEXT
)""",
        "CREATE INDEX events_run_time ON events(run_id, time_s)",
        """CREATE TABLE kpis (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
)""",
    ]


def _insert_sql(table: str, columns: Sequence[str], run_id: int, n_rows: int) -> str:
    """``INSERT`` of ``n_rows`` rows of ``columns`` into ``table``, ``run_id`` inlined."""
    row = f"({int(run_id)}, {', '.join('?' * len(columns))})"
    return f"INSERT INTO {table} (run_id, {', '.join(columns)}) VALUES " + ", ".join([row] * n_rows)


def _insert(
    conn: sqlite3.Connection,
    one_sql: str,
    chunk_sql: str,
    chunk: int,
    rows: Sequence[Sequence[object]],
) -> None:
    """Insert ``rows``: whole chunks through ``chunk_sql``, the rest one by one."""
    full = len(rows) - len(rows) % chunk
    for start in range(0, full, chunk):
        conn.execute(chunk_sql, list(chain.from_iterable(rows[start : start + chunk])))
    if full < len(rows):
        conn.executemany(one_sql, rows[full:])


def _json_default(value: object) -> object:
    """Convert the non-JSON types found in configs and event data (numpy, enums, paths)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")


def _to_json(value: object, what: str) -> str:
    """Serialise ``value`` to JSON; raise ``ValueError`` naming ``what`` if it cannot be."""
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {exc}") from exc


def _coerce_number(name: str, value: object) -> float | int | None:
    """Return ``value`` as a plain float/int (numpy scalars, bools accepted) or raise."""
    if isinstance(value, _INTEGRAL):
        return int(value)
    if isinstance(value, _REAL):
        return float(value)
    if value is None:
        return None
    raise ValueError(
        f"pack column {name!r} expects a number, got {value!r} ({type(value).__name__})"
    )


def _coerce_text(name: str, value: object) -> str | None:
    """Return ``value`` as a plain str (enums by value, alarm sequences joined) or raise."""
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        return str(value)
    if name == "alarms" and isinstance(value, Sequence | frozenset | set):
        items = sorted(value) if isinstance(value, set | frozenset) else list(value)
        if all(isinstance(v, str) for v in items):
            return ALARM_SEPARATOR.join(str(v) for v in items)
    raise ValueError(f"pack column {name!r} expects text, got {value!r} ({type(value).__name__})")


def _coerce_pack_row(row: tuple[object, ...]) -> tuple[object, ...]:
    """Slow path of :meth:`RunStore.record_pack`: convert or reject the off-type values."""
    if len(row) != _N_PACK:
        raise ValueError(
            f"a pack row tuple must have {_N_PACK} values in PACK_COLUMNS order, got {len(row)}"
        )
    out = list(row)
    for i in range(_N_NUMERIC):
        if type(out[i]) not in _NUMERIC_TYPES:
            out[i] = _coerce_number(PACK_COLUMNS[i], out[i])
    for i in range(_N_NUMERIC, _N_PACK):
        if type(out[i]) not in _TEXT_TYPES:
            out[i] = _coerce_text(PACK_COLUMNS[i], out[i])
    t = out[0]
    if not isinstance(t, float | int) or not math.isfinite(t):
        raise ValueError(f"pack column 'time_s' must be a finite number, got {row[0]!r}")
    return tuple(out)


def pack_row(
    telemetry: Telemetry,
    site: SiteMeasurements | None = None,
    *,
    gate: GateDecision | None = None,
) -> tuple[float | int | str | None, ...]:
    """Flatten one cycle's Telemetry (and site meters) into a pack row tuple.

    Parameters
    ----------
    telemetry : openbess.contract.Telemetry
        The BMS telemetry of the cycle; its ``time_s`` is the row time [s, Unix UTC].
    site : openbess.plant.SiteMeasurements or None
        The site meter readings of the cycle; ``None`` leaves the site columns NULL.
    gate : openbess.contract.GateDecision or None
        Gate decision to log instead of ``telemetry.gate`` (e.g. this cycle's decision when
        the Telemetry carries the previous one), without copying the Telemetry.

    Returns
    -------
    tuple
        Values in :data:`PACK_COLUMNS` order, ready for :meth:`RunStore.record_pack` (enums
        as their string values, alarms joined with :data:`ALARM_SEPARATOR`).
    """
    t = telemetry
    g = t.gate if gate is None else gate
    if site is None:
        s: tuple[float | None, ...] = (None, None, None, None, None, None)
    else:
        s = (
            site.battery_ac_power_w,
            site.grid_power_w,
            site.pv_power_w,
            site.load_power_w,
            site.import_price_eur_per_kwh,
            site.export_price_eur_per_kwh,
        )
    return (
        t.time_s,
        t.soc,
        t.soc_cell_min,
        t.soc_cell_max,
        t.soh,
        t.energy_available_wh,
        t.capacity_wh,
        t.pack_voltage_v,
        t.pack_current_a,
        t.cell_voltage_min_v,
        t.cell_voltage_max_v,
        t.cell_voltage_avg_v,
        t.temperature_min_degc,
        t.temperature_max_degc,
        t.temperature_avg_degc,
        t.charge_current_limit_a,
        t.discharge_current_limit_a,
        t.charge_power_limit_w,
        t.discharge_power_limit_w,
        t.balancing_cells,
        *s,
        g.seq,
        g.requested_w,
        g.granted_w,
        g.outcome.value,
        g.reason.value,
        g.source,
        t.contactor.value,
        ALARM_SEPARATOR.join(t.alarms),
    )


def _as_1d(name: str, value: object, n: int | None) -> npt.NDArray[np.float64]:
    """Return ``value`` as a 1-D float64 array of length ``n`` or raise naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"record_cells: {name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"record_cells: {name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(
            f"record_cells: {name} has {arr.shape[0]} values, voltage_v has {n} (one per cell)"
        )
    return arr


_OPEN_STORES: weakref.WeakSet[RunStore] = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """Flush and close the stores still open at interpreter exit."""
    for store in list(_OPEN_STORES):
        try:
            store.close()
        except StorageError:
            logger.exception("closing %s at exit failed", store.path)


class RunStore:
    """One SQLite run database: record a run's time series cheaply, read it back as DataFrames.

    Parameters
    ----------
    path : str or pathlib.Path
        Database file; created (with its parent folder) if missing. ``":memory:"`` gives a
        private in-memory database (no WAL, for tests).
    cell_decimation : int
        Keep every N-th :meth:`record_cells` call (the 1st, the N+1-th...). Default 60.
    flush_interval_s : float
        Buffered rows are written at least this often [s, wall clock]. Default 1.0.
    event_flush_s : float
        Delay after :meth:`record_event` / :meth:`record_kpis` within which they are written
        [s, wall clock]. Default 0.05.
    max_buffer_rows : int
        A buffer (pack rows, or cell rows) holding this many rows is written at once, which
        bounds memory when recording faster than real time. Default 10,000.
    read_only : bool
        Open an existing database for reading only (no watchdog thread; ``record_*`` raise).

    Raises
    ------
    StorageError
        The file cannot be opened or created, is not an SQLite database, or is not an
        openbess run database of a schema version this code reads. The message names the path.
    ValueError
        A parameter is out of range.

    Examples
    --------
    >>> with RunStore(":memory:") as store:
    ...     run_id = store.start_run("home", {"capacity_wh": 10000.0})
    ...     store.record_pack({"time_s": 0.0, "soc": 0.5})
    ...     float(store.read_pack(run_id)["soc"].iloc[0])
    0.5
    """

    def __init__(
        self,
        path: str | Path,
        *,
        cell_decimation: int = 60,
        flush_interval_s: float = 1.0,
        event_flush_s: float = 0.05,
        max_buffer_rows: int = 10_000,
        read_only: bool = False,
    ) -> None:
        if isinstance(cell_decimation, bool) or not isinstance(cell_decimation, int):
            raise ValueError(f"cell_decimation must be an int >= 1, got {cell_decimation!r}")
        if cell_decimation < 1:
            raise ValueError(f"cell_decimation must be an int >= 1, got {cell_decimation!r}")
        if not (math.isfinite(flush_interval_s) and flush_interval_s > 0.0):
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s!r}")
        if not (math.isfinite(event_flush_s) and event_flush_s >= 0.0):
            raise ValueError(f"event_flush_s must be >= 0, got {event_flush_s!r}")
        if max_buffer_rows < 1:
            raise ValueError(f"max_buffer_rows must be >= 1, got {max_buffer_rows!r}")
        self.path = str(path)
        self.cell_decimation = cell_decimation
        self.flush_interval_s = float(flush_interval_s)
        self.event_flush_s = float(min(event_flush_s, flush_interval_s))
        self.max_buffer_rows = int(max_buffer_rows)
        self.read_only = read_only

        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closed = False
        self._run_id: int | None = None
        self._accepting = False  # a run is open and the store is writable and not closed
        self._pack_buf: list[tuple[Any, ...]] = []
        self._cell_buf: list[list[float]] = []
        self._event_buf: list[tuple[Any, ...]] = []
        self._kpi_buf: list[tuple[str, float | None]] = []
        self._cells_calls = 0
        self._flush_due = time.monotonic() + self.flush_interval_s
        self._rows_since_checkpoint = 0
        self._pack_sql = self._pack_chunk_sql = ""
        self._cell_sql = self._cell_chunk_sql = ""
        self._event_sql = ""
        self._kpi_sql = ""

        self._conn = self._connect()
        # Rows per multi-row INSERT: one statement (one GIL release) per chunk, not per row.
        max_vars = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._pack_chunk = max(1, min(_CHUNK_ROWS, max_vars // _N_PACK))
        self._cell_chunk = max(1, min(_CHUNK_ROWS, max_vars // len(_CELL_COLUMNS)))
        self._watchdog: threading.Thread | None = None
        if not read_only:
            self._watchdog = threading.Thread(
                target=self._watch, name=f"RunStore-flush[{Path(self.path).name}]", daemon=True
            )
            self._watchdog.start()
        _OPEN_STORES.add(self)

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        """Open the connection, set WAL, create or check the schema."""
        memory = self.path == ":memory:"
        try:
            if self.read_only:
                if memory or not Path(self.path).is_file():
                    raise StorageError(f"{self.path}: no such database file (read_only=True)")
                uri = Path(self.path).resolve().as_uri() + "?mode=ro"
                conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
                )
            else:
                if not memory:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=10.0
                )
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: cannot open run database: {exc}") from exc
        try:
            self._prepare(conn, memory)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StorageError(f"{self.path}: not a usable SQLite run database: {exc}") from exc
        except StorageError:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection, memory: bool) -> None:
        """Set the pragmas and create or check the schema."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if not self.read_only:
            mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            if mode != "wal" and not memory:
                raise StorageError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints run in the watchdog thread; this is only a backstop.
            conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: schema version {version} is newer than this openbess reads "
                f"({SCHEMA_VERSION}); upgrade openbess"
            )
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StorageError(
                    f"{self.path}: SQLite database without an openbess schema "
                    "(user_version 0 but it holds tables); not a run database"
                )
            if self.read_only:
                raise StorageError(f"{self.path}: empty database, not a run database")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _schema_sql():
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
            logger.debug("created run database %s (schema %d)", self.path, SCHEMA_VERSION)

    # ------------------------------------------------------------------ context, repr

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"run={self._run_id}"
        return f"RunStore({self.path!r}, {state})"

    @property
    def run_id(self) -> int | None:
        """Id of the run being recorded, or ``None`` before :meth:`start_run`."""
        return self._run_id

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        site: str,
        config: Mapping[str, object],
        *,
        started_at_s: float | None = None,
        contract_version: str = CONTRACT_VERSION,
        software_version: str = __version__,
    ) -> int:
        """Create a run and make it the one that ``record_*`` write to.

        A run already being recorded is flushed and marked ended first.

        Parameters
        ----------
        site : str
            Site name.
        config : Mapping
            The run configuration, stored as JSON (numpy values, enums, paths converted).
        started_at_s : float or None
            Start time [s, Unix UTC]; default: the wall clock now.
        contract_version, software_version : str
            Versions stored with the run.

        Returns
        -------
        int
            The run id.

        Raises
        ------
        ValueError
            ``config`` is not JSON-serialisable (the message names the offending type).
        StorageError
            The store is closed or read-only, or the write failed.
        """
        self._check_writable()
        config_json = _to_json(dict(config), "config")
        start = time.time() if started_at_s is None else float(started_at_s)
        with self._lock:
            self._end_current_run()
            try:
                cur = self._conn.execute(
                    "INSERT INTO runs (started_at_s, site, config_json, contract_version, "
                    "software_version) VALUES (?, ?, ?, ?, ?)",
                    (start, str(site), config_json, str(contract_version), str(software_version)),
                )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot create run: {exc}") from exc
            run_id = cur.lastrowid
            if run_id is None:  # pragma: no cover - sqlite always sets it after an INSERT
                raise StorageError(f"{self.path}: run insert returned no id")
            self._run_id = int(run_id)
            rid = self._run_id
            self._pack_sql = _insert_sql("pack", PACK_COLUMNS, rid, 1)
            self._pack_chunk_sql = _insert_sql("pack", PACK_COLUMNS, rid, self._pack_chunk)
            self._cell_sql = _insert_sql("cells", _CELL_COLUMNS, rid, 1)
            self._cell_chunk_sql = _insert_sql("cells", _CELL_COLUMNS, rid, self._cell_chunk)
            self._event_sql = (
                "INSERT INTO events (run_id, time_s, kind, code, severity, message, data_json) "
                f"VALUES ({rid}, ?, ?, ?, ?, ?, ?)"
            )
            self._kpi_sql = (
                f"INSERT OR REPLACE INTO kpis (run_id, name, value) VALUES ({rid}, ?, ?)"
            )
            self._cells_calls = 0
            self._accepting = True
        logger.debug("run %d started in %s (site %s)", self._run_id, self.path, site)
        return self._run_id

    def end_run(self, ended_at_s: float | None = None) -> None:
        """Flush and mark the current run as ended (``close`` does this too).

        Parameters
        ----------
        ended_at_s : float or None
            End time [s, Unix UTC]; default: the wall clock now.
        """
        with self._lock:
            self._end_current_run(ended_at_s)

    def _end_current_run(self, ended_at_s: float | None = None) -> None:
        """Flush, stamp ``ended_at_s`` and stop accepting rows for the current run."""
        if self._run_id is None:
            return
        self._flush_locked()
        end = time.time() if ended_at_s is None else float(ended_at_s)
        try:
            self._conn.execute("UPDATE runs SET ended_at_s = ? WHERE id = ?", (end, self._run_id))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot end run {self._run_id}: {exc}") from exc
        self._run_id = None
        self._accepting = False

    # ------------------------------------------------------------------ recording

    def _check_writable(self) -> None:
        """Raise StorageError if the store is closed or read-only."""
        if self._closed:
            raise StorageError(f"{self.path}: the run store is closed")
        if self.read_only:
            raise StorageError(f"{self.path}: the run store is open read-only")

    def _not_accepting(self) -> StorageError:
        """The error for a ``record_*`` call when no run is open."""
        self._check_writable()
        return StorageError(f"{self.path}: no run is open; call start_run() first")

    def record_pack(self, row: Mapping[str, object] | Sequence[object]) -> None:
        """Buffer one pack sample (cheap: validation and a list append).

        Parameters
        ----------
        row : Mapping or tuple
            Either a mapping from :data:`PACK_COLUMNS` names to values (missing columns are
            stored as NULL, ``time_s`` is required), or a tuple of all values in
            :data:`PACK_COLUMNS` order (fastest; :func:`pack_row` builds one from a
            Telemetry). Numbers may be Python or numpy scalars, ``None`` or NaN (stored as
            NULL); text columns take str or enums; ``alarms`` also takes a sequence of names.
            Rows made only of float, numpy.float64, int, bool, None, str and the contract's
            enums take the fast path (~1 us); other types (numpy.float32, numpy.int64...)
            are converted value by value (a few us more).

        Raises
        ------
        ValueError
            Unknown column, non-numeric value in a numeric column, non-text value in a text
            column, or missing / non-finite ``time_s``; the message names the column. The row
            is rejected; rows recorded before are kept.
        StorageError
            No run is open, or the flush that came due failed (the buffered rows are kept and
            retried at the next flush).
        """
        if type(row) is not tuple:
            row = self._row_from(row)
        if not (
            len(row) == _N_PACK
            and _NUMERIC_TYPES.issuperset(map(type, row[:_N_NUMERIC]))
            and _TEXT_TYPES.issuperset(map(type, row[_N_NUMERIC:]))
            and row[0] is not None
            and -_INF < row[0] < _INF  # type: ignore[operator]
        ):
            row = _coerce_pack_row(row)
        if not self._accepting:
            raise self._not_accepting()
        buf = self._pack_buf
        buf.append(row)
        if _monotonic() >= self._flush_due or len(buf) >= self.max_buffer_rows:
            self.flush()

    @staticmethod
    def _row_from(row: Mapping[str, object] | Sequence[object]) -> tuple[object, ...]:
        """Turn a mapping (by column name) or a list into a tuple in PACK_COLUMNS order."""
        if isinstance(row, Mapping):
            keys = row.keys()
            if not _PACK_COLUMN_SET.issuperset(keys):
                unknown = sorted(str(k) for k in keys if k not in _PACK_COLUMN_SET)
                raise ValueError(
                    f"unknown pack column(s) {unknown}; valid columns: openbess.storage."
                    "PACK_COLUMNS"
                )
            if "time_s" not in keys:
                raise ValueError("pack column 'time_s' is required")
            return tuple(map(row.get, PACK_COLUMNS))
        if isinstance(row, Sequence) and not isinstance(row, str | bytes):
            return tuple(row)
        raise ValueError(
            f"a pack row must be a mapping or a tuple in PACK_COLUMNS order, got "
            f"{type(row).__name__}"
        )

    def record_cells(
        self,
        time_s: float,
        voltage_v: npt.ArrayLike,
        temperature_degc: npt.ArrayLike | None = None,
        soc: npt.ArrayLike | None = None,
        balancing: npt.ArrayLike | None = None,
    ) -> bool:
        """Buffer one per-cell snapshot, keeping every ``cell_decimation``-th call.

        Call it once per pack sample; decimation happens inside (a skipped call costs well
        under a microsecond).

        Parameters
        ----------
        time_s : float
            Sample time [s, Unix UTC].
        voltage_v : numpy.ndarray
            Cell voltages [V], shape ``(n_cells,)``; NaN = invalid reading (stored NULL).
        temperature_degc : numpy.ndarray or None
            Temperature attributed to each cell [degC], shape ``(n_cells,)``.
        soc : numpy.ndarray or None
            Cell SoC [fraction 0..1], shape ``(n_cells,)``.
        balancing : numpy.ndarray of bool or None
            Bleed resistor on, per cell, shape ``(n_cells,)``.

        Returns
        -------
        bool
            True if this snapshot was kept, False if decimated away.

        Raises
        ------
        ValueError
            A non-numeric array, arrays of different lengths (naming the argument) or a
            non-finite ``time_s``.
        StorageError
            No run is open, or the flush that came due failed.
        """
        if not self._accepting:
            raise self._not_accepting()
        k = self._cells_calls
        self._cells_calls = k + 1
        if k % self.cell_decimation:
            return False
        t = float(time_s)
        if not math.isfinite(t):
            raise ValueError(f"record_cells: time_s must be finite, got {time_s!r}")
        v = _as_1d("voltage_v", voltage_v, None)
        n = v.shape[0]
        # One float block, one row per cell; NaN binds as NULL (SQLite stores no NaN), and the
        # INTEGER columns (cell_index, balancing) take 3.0 as 3.
        block = np.empty((n, 6), dtype=np.float64)
        block[:, 0] = t
        block[:, 1] = np.arange(n)
        block[:, 2] = v
        block[:, 3] = (
            np.nan if temperature_degc is None else _as_1d("temperature_degc", temperature_degc, n)
        )
        block[:, 4] = np.nan if soc is None else _as_1d("soc", soc, n)
        if balancing is None:
            block[:, 5] = np.nan
        else:
            b = np.asarray(balancing)
            if b.shape != (n,):
                raise ValueError(
                    f"record_cells: balancing has shape {b.shape}, expected ({n},) like voltage_v"
                )
            block[:, 5] = b.astype(bool)
        buf = self._cell_buf
        buf.extend(block.tolist())
        if _monotonic() >= self._flush_due or len(buf) >= self.max_buffer_rows:
            self.flush()
        return True

    def record_event(
        self,
        time_s: float,
        kind: str,
        code: str | int,
        severity: str | int,
        message: str,
        data: Mapping[str, object] | None = None,
    ) -> None:
        """Buffer an event; it is written within ``event_flush_s`` of wall time.

        Parameters
        ----------
        time_s : float
            Event time [s, Unix UTC].
        kind : str
            Family of the event (``fault``, ``contactor``, ``gate``, ``ems``...).
        code : str or int
            Identifier within the family (stored as text).
        severity : str or int
            Severity (``info``, ``warning``, ``alarm``, ``fault``..., stored as text).
        message : str
            Human-readable text.
        data : Mapping or None
            Extra values, stored as JSON (numpy values and enums converted).

        Raises
        ------
        ValueError
            Non-finite ``time_s`` or ``data`` not JSON-serialisable.
        StorageError
            No run is open.
        """
        if not self._accepting:
            raise self._not_accepting()
        t = float(time_s)
        if not math.isfinite(t):
            raise ValueError(f"record_event: time_s must be finite, got {time_s!r}")
        data_json = None if data is None else _to_json(dict(data), "record_event: data")
        self._event_buf.append(
            (t, _text(kind), _text(code), _text(severity), str(message), data_json)
        )
        self._hurry()

    def record_kpis(self, kpis: Mapping[str, float]) -> None:
        """Buffer KPI values of the current run; written within ``event_flush_s``.

        Parameters
        ----------
        kpis : Mapping[str, float]
            KPI name (with its unit suffix, e.g. ``cost_eur``, ``throughput_wh``) to value.
            Recording a name again replaces the value.

        Raises
        ------
        ValueError
            A name is not a str or a value is not a number (the message names the KPI).
        StorageError
            No run is open.
        """
        if not self._accepting:
            raise self._not_accepting()
        rows: list[tuple[str, float | None]] = []
        for name, value in kpis.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"KPI names must be non-empty str, got {name!r}")
            if isinstance(value, bool | np.bool_) or not isinstance(
                value, int | float | np.integer | np.floating
            ):
                raise ValueError(
                    f"KPI {name!r} expects a number, got {value!r} ({type(value).__name__})"
                )
            v = float(value)
            rows.append((name, v if not math.isnan(v) else None))
        self._kpi_buf.extend(rows)
        self._hurry()

    def _hurry(self) -> None:
        """Bring the flush deadline within ``event_flush_s`` and wake the watchdog."""
        due = time.monotonic() + self.event_flush_s
        if due < self._flush_due:
            self._flush_due = due
            self._wake.set()

    # ------------------------------------------------------------------ writing

    def flush(self) -> None:
        """Write every buffered row now, in one transaction.

        Raises
        ------
        StorageError
            The write failed; the buffered rows are kept for the next attempt.
        """
        with self._lock:
            if self._closed:
                return
            self._flush_locked()

    def _pending(self) -> bool:
        """True if some buffer holds rows."""
        return bool(self._pack_buf or self._cell_buf or self._event_buf or self._kpi_buf)

    def _flush_locked(self) -> None:
        """Write the buffers (caller holds the lock); rows leave a buffer only once committed."""
        self._flush_due = time.monotonic() + self.flush_interval_s
        n_pack = len(self._pack_buf)
        n_cell = len(self._cell_buf)
        n_event = len(self._event_buf)
        n_kpi = len(self._kpi_buf)
        if not (n_pack or n_cell or n_event or n_kpi):
            return
        conn = self._conn
        try:
            conn.execute("BEGIN")
            if n_pack:
                _insert(
                    conn,
                    self._pack_sql,
                    self._pack_chunk_sql,
                    self._pack_chunk,
                    self._pack_buf[:n_pack],
                )
            if n_cell:
                _insert(
                    conn,
                    self._cell_sql,
                    self._cell_chunk_sql,
                    self._cell_chunk,
                    self._cell_buf[:n_cell],
                )
            if n_event:
                conn.executemany(self._event_sql, self._event_buf[:n_event])
            if n_kpi:
                conn.executemany(self._kpi_sql, self._kpi_buf[:n_kpi])
            conn.execute("COMMIT")
            self._rows_since_checkpoint += n_pack + n_cell + n_event + n_kpi
            if self._rows_since_checkpoint >= _CHECKPOINT_ROWS:
                # Checkpoint now, before the next commit, so that the checkpoint completes
                # and SQLite restarts the WAL from its start (else the WAL only grows).
                self._wake.set()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.exception("rollback failed on %s", self.path)
            raise StorageError(
                f"{self.path}: writing {n_pack} pack, {n_cell} cell, {n_event} event and "
                f"{n_kpi} KPI rows failed (kept for the next flush): {exc}"
            ) from exc
        # Appends from the recording thread that raced with the write land after index n;
        # deleting the first n keeps them.
        del self._pack_buf[:n_pack]
        del self._cell_buf[:n_cell]
        del self._event_buf[:n_event]
        del self._kpi_buf[:n_kpi]

    def _watch(self) -> None:
        """Watchdog thread: flush data left pending by an idle caller; checkpoint the WAL.

        Checkpoints (copying committed WAL pages into the database file, with its fsync) run
        here on a connection of their own, with the GIL released, instead of in the calling
        thread at commit time (``wal_autocheckpoint`` is only a backstop).
        """
        poll_s = self.flush_interval_s / 4.0
        grace_s = min(_WATCHDOG_GRACE_S, poll_s)
        last_checkpoint = _monotonic()
        checkpoint_conn: sqlite3.Connection | None = None
        if self.path != ":memory:":
            try:
                checkpoint_conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
            except sqlite3.Error as exc:  # pragma: no cover - the main connection just opened
                logger.warning("%s: no checkpoint connection (%s)", self.path, exc)
        try:
            while not self._closed:
                self._wake.clear()  # a set() from here on ends the wait below at once
                # The grace lets a busy caller flush first: the watchdog only writes what an
                # idle caller left behind (two threads flushing in turn would fight for the GIL).
                if self._flush_due + grace_s <= _monotonic() and self._pending():
                    try:
                        self.flush()
                    except StorageError as exc:  # kept and retried at the next deadline
                        logger.error("background flush failed: %s", exc)
                if checkpoint_conn is not None and (
                    self._rows_since_checkpoint >= _CHECKPOINT_ROWS
                    or (
                        self._rows_since_checkpoint
                        and _monotonic() - last_checkpoint >= _CHECKPOINT_INTERVAL_S
                    )
                ):
                    self._rows_since_checkpoint = 0
                    last_checkpoint = _monotonic()
                    try:
                        checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error as exc:
                        logger.debug("%s: checkpoint skipped (%s)", self.path, exc)
                wait_s = self._flush_due + grace_s - _monotonic()
                self._wake.wait(min(wait_s, poll_s) if wait_s > 0.0 else poll_s)
        finally:
            if checkpoint_conn is not None:
                checkpoint_conn.close()

    def close(self) -> None:
        """Flush, mark the current run ended, checkpoint the WAL and close the file.

        Safe to call twice.

        Raises
        ------
        StorageError
            The final flush failed (the connection is closed anyway).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._accepting = False
        self._wake.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
        with self._lock:
            try:
                if not self.read_only:
                    self._end_current_run()
                    try:
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    except sqlite3.Error as exc:  # a reader holds the WAL: harmless
                        logger.debug("checkpoint at close skipped: %s", exc)
            finally:
                self._conn.close()
                _OPEN_STORES.discard(self)
        logger.debug("closed %s", self.path)

    # ------------------------------------------------------------------ reading

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Flush pending rows, then run a read query and fetch all rows."""
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.path}: the run store is closed")
            if not self.read_only:
                self._flush_locked()
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: read failed: {exc}") from exc

    def _check_run(self, run_id: int) -> None:
        """Raise ValueError if ``run_id`` is not a run of this database."""
        if not self._query("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)):
            raise ValueError(f"{self.path}: no run with id {run_id!r}")

    @staticmethod
    def _time_clause(t0: float | None, t1: float | None, params: list[object]) -> str:
        """SQL for ``t0 <= time_s < t1`` (either bound optional), appending its params."""
        clause = ""
        if t0 is not None:
            clause += " AND time_s >= ?"
            params.append(float(t0))
        if t1 is not None:
            clause += " AND time_s < ?"
            params.append(float(t1))
        return clause

    def read_pack(
        self,
        run_id: int,
        t0: float | None = None,
        t1: float | None = None,
    ) -> pd.DataFrame:
        """Pack time series of a run, sorted by time.

        Parameters
        ----------
        run_id : int
            Run id (from :meth:`start_run` or :meth:`list_runs`).
        t0, t1 : float or None
            Keep ``t0 <= time_s < t1`` [s, Unix UTC]; ``None`` = unbounded.

        Returns
        -------
        pandas.DataFrame
            One row per sample, columns :data:`PACK_COLUMNS`; numeric columns float64 (NULL
            as NaN), text columns str.
        """
        import pandas as pd

        self._check_run(run_id)
        params: list[object] = [int(run_id)]
        where = self._time_clause(t0, t1, params)
        rows = self._query(
            f"SELECT {', '.join(PACK_COLUMNS)} FROM pack WHERE run_id = ?{where} "
            "ORDER BY time_s, rowid",
            params,
        )
        df = pd.DataFrame.from_records(rows, columns=list(PACK_COLUMNS))
        for name in PACK_NUMERIC_COLUMNS:
            if df[name].dtype != np.float64:
                df[name] = df[name].astype(np.float64)
        for name in PACK_TEXT_COLUMNS:
            df[name] = df[name].astype("str")
        return df

    def read_cells(
        self,
        run_id: int,
        t0: float | None = None,
        t1: float | None = None,
    ) -> pd.DataFrame:
        """Per-cell snapshots of a run (long format), sorted by time then cell.

        Parameters
        ----------
        run_id : int
            Run id.
        t0, t1 : float or None
            Keep ``t0 <= time_s < t1`` [s, Unix UTC].

        Returns
        -------
        pandas.DataFrame
            Columns ``time_s`` [s], ``cell_index`` (int64), ``voltage_v`` [V],
            ``temperature_degc`` [degC], ``soc`` [fraction] (float64, NULL as NaN) and
            ``balancing`` (bool; False where not recorded).
        """
        import pandas as pd

        self._check_run(run_id)
        params: list[object] = [int(run_id)]
        where = self._time_clause(t0, t1, params)
        rows = self._query(
            f"SELECT {', '.join(_CELL_COLUMNS)} FROM cells WHERE run_id = ?{where} "
            "ORDER BY time_s, cell_index",
            params,
        )
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(_CELL_COLUMNS)
        return pd.DataFrame(
            {
                "time_s": np.array(cols[0], dtype=np.float64),
                "cell_index": np.array(cols[1], dtype=np.int64),
                "voltage_v": np.array(cols[2], dtype=np.float64),
                "temperature_degc": np.array(cols[3], dtype=np.float64),
                "soc": np.array(cols[4], dtype=np.float64),
                "balancing": np.array([bool(b) for b in cols[5]], dtype=np.bool_),
            }
        )

    def read_events(
        self,
        run_id: int,
        t0: float | None = None,
        t1: float | None = None,
        kind: str | None = None,
    ) -> pd.DataFrame:
        """Events of a run in the order recorded (by time, then insertion).

        Parameters
        ----------
        run_id : int
            Run id.
        t0, t1 : float or None
            Keep ``t0 <= time_s < t1`` [s, Unix UTC].
        kind : str or None
            Keep only this kind.

        Returns
        -------
        pandas.DataFrame
            Columns ``time_s``, ``kind``, ``code``, ``severity``, ``message`` and ``data``
            (the decoded JSON mapping, or None).
        """
        import pandas as pd

        self._check_run(run_id)
        params: list[object] = [int(run_id)]
        where = self._time_clause(t0, t1, params)
        if kind is not None:
            where += " AND kind = ?"
            params.append(str(kind))
        rows = self._query(
            "SELECT time_s, kind, code, severity, message, data_json FROM events "
            f"WHERE run_id = ?{where} ORDER BY time_s, id",
            params,
        )
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(_EVENT_COLUMNS)
        data: dict[str, object] = {"time_s": np.array(cols[0], dtype=np.float64)}
        for i, name in enumerate(("kind", "code", "severity", "message"), start=1):
            data[name] = pd.array(list(cols[i]), dtype="str")
        data["data"] = pd.Series(
            [None if d is None else json.loads(d) for d in cols[5]], dtype=object
        )
        return pd.DataFrame(data)

    def read_kpis(self, run_id: int) -> dict[str, float]:
        """KPIs of a run.

        Parameters
        ----------
        run_id : int
            Run id.

        Returns
        -------
        dict[str, float]
            Name to value (NaN where stored as NULL), sorted by name.
        """
        self._check_run(run_id)
        rows = self._query(
            "SELECT name, value FROM kpis WHERE run_id = ? ORDER BY name", (int(run_id),)
        )
        return {str(n): (math.nan if v is None else float(v)) for n, v in rows}

    def list_runs(self) -> pd.DataFrame:
        """Runs in this database, oldest first.

        Returns
        -------
        pandas.DataFrame
            Columns ``id``, ``started_at_s``, ``ended_at_s`` (NaN while recording, or after a
            crash), ``site``, ``contract_version``, ``software_version``, ``config`` (dict).
        """
        import pandas as pd

        rows = self._query(
            "SELECT id, started_at_s, ended_at_s, site, contract_version, software_version, "
            "config_json FROM runs ORDER BY id"
        )
        cols = list(zip(*rows, strict=True)) if rows else [()] * len(_RUN_COLUMNS)
        return pd.DataFrame(
            {
                "id": np.array(cols[0], dtype=np.int64),
                "started_at_s": np.array(cols[1], dtype=np.float64),
                "ended_at_s": np.array(cols[2], dtype=np.float64),
                "site": pd.array(list(cols[3]), dtype="str"),
                "contract_version": pd.array(list(cols[4]), dtype="str"),
                "software_version": pd.array(list(cols[5]), dtype="str"),
                "config": pd.Series([json.loads(c) for c in cols[6]], dtype=object),
            }
        )


def _text(value: object) -> str:
    """Enum members by value, anything else through ``str``."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)
