"""Tests of openbess.storage: schema, round trips, bad input, and crash safety under SIGKILL."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
from openbess.storage import (
    PACK_COLUMNS,
    PACK_NUMERIC_COLUMNS,
    PACK_TEXT_COLUMNS,
    SCHEMA_VERSION,
    RunStore,
    pack_row,
)

T0_S = 1_700_000_000.0


def _telemetry(time_s: float, soc: float = 0.5) -> Telemetry:
    gate = GateDecision(Outcome.CLAMPED, Reason.CHARGE_LIMIT, 42, -5000.0, -3000.0, "ems")
    return Telemetry(
        time_s=time_s,
        soc=soc,
        soc_cell_min=soc - 0.01,
        soc_cell_max=soc + 0.01,
        soh=0.97,
        energy_available_wh=4850.0,
        capacity_wh=9700.0,
        pack_voltage_v=51.2,
        pack_current_a=-58.6,
        cell_voltage_min_v=3.19,
        cell_voltage_max_v=3.215,
        cell_voltage_avg_v=3.2,
        temperature_min_degc=24.5,
        temperature_max_degc=27.25,
        temperature_avg_degc=25.75,
        charge_current_limit_a=60.0,
        discharge_current_limit_a=100.0,
        charge_power_limit_w=3000.0,
        discharge_power_limit_w=5000.0,
        contactor=ContactorState.CLOSED,
        alarms=("cell_temperature_high", "soc_low"),
        balancing_cells=3,
        gate=gate,
    )


def _site(time_s: float) -> SiteMeasurements:
    return SiteMeasurements(time_s, 1200.0, 3500.0, 700.0, -3000.0, 0.31, 0.07)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with RunStore(tmp_path / "run.sqlite", cell_decimation=3) as s:
        yield s


def _count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------- schema


def test_schema_wal_version_and_column_names(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    RunStore(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        cols = {
            table: [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("runs", "pack", "cells", "events", "kpis")
        }
    finally:
        conn.close()
    assert cols["pack"] == ["run_id", *PACK_COLUMNS]
    assert cols["cells"] == [
        "run_id",
        "time_s",
        "cell_index",
        "voltage_v",
        "temperature_degc",
        "soc",
        "balancing",
    ]
    assert cols["events"][2:] == [
        "time_s",
        "kind",
        "code",
        "severity",
        "message",
        "data_json",
    ]
    assert cols["kpis"] == ["run_id", "name", "value"]
    assert {"site", "config_json", "contract_version", "software_version", "started_at_s"} <= set(
        cols["runs"]
    )


def test_pack_columns_are_the_contract_field_names() -> None:
    scalar_telemetry = {
        f.name for f in dataclasses.fields(Telemetry) if f.name not in {"gate", "version", "extra"}
    }
    site = {f.name for f in dataclasses.fields(SiteMeasurements)}
    gate = {f"gate_{f.name}" for f in dataclasses.fields(GateDecision)}
    assert scalar_telemetry | site | gate == set(PACK_COLUMNS)
    assert PACK_COLUMNS[0] == "time_s"
    assert len(set(PACK_COLUMNS)) == len(PACK_COLUMNS)
    assert set(PACK_TEXT_COLUMNS) == {"gate_outcome", "gate_reason", "gate_source"} | {
        "contactor",
        "alarms",
    }


def test_reopen_keeps_runs_and_data(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    with RunStore(path) as s:
        run_a = s.start_run("home", {"n": 1})
        s.record_pack({"time_s": T0_S, "soc": 0.25})
    with RunStore(path) as s:
        run_b = s.start_run("home", {"n": 2})
        s.record_pack({"time_s": T0_S, "soc": 0.75})
        runs = s.list_runs()
        assert list(runs["id"]) == [run_a, run_b]
        assert [c["n"] for c in runs["config"]] == [1, 2]
        assert s.read_pack(run_a)["soc"].tolist() == [0.25]
        assert s.read_pack(run_b)["soc"].tolist() == [0.75]
        # the first run was closed cleanly, the second is still being recorded
        assert math.isfinite(runs["ended_at_s"].iloc[0])
        assert math.isnan(runs["ended_at_s"].iloc[1])


# ---------------------------------------------------------------- round trips


def test_pack_row_from_telemetry_round_trip(store: RunStore) -> None:
    run_id = store.start_run("home", {"capacity_wh": np.float64(9700.0), "cells": 16})
    for k in range(5):
        t = T0_S + 60.0 * k
        store.record_pack(pack_row(_telemetry(t, soc=0.5 + 0.01 * k), _site(t)))
    df = store.read_pack(run_id)
    assert list(df.columns) == list(PACK_COLUMNS)
    assert df["time_s"].tolist() == [T0_S + 60.0 * k for k in range(5)]
    assert df["soc"].to_numpy() == pytest.approx([0.5, 0.51, 0.52, 0.53, 0.54])
    row = df.iloc[0]
    assert row["pack_current_a"] == -58.6
    assert row["grid_power_w"] == 1200.0
    assert row["battery_ac_power_w"] == -3000.0
    assert row["import_price_eur_per_kwh"] == 0.31
    assert row["gate_requested_w"] == -5000.0
    assert row["gate_granted_w"] == -3000.0
    assert row["gate_seq"] == 42
    assert row["balancing_cells"] == 3
    assert row["gate_outcome"] == "clamped"
    assert row["gate_reason"] == "charge_limit"
    assert row["contactor"] == "closed"
    assert row["alarms"] == "cell_temperature_high;soc_low"
    runs = store.list_runs()
    assert runs["site"].tolist() == ["home"]
    assert runs["contract_version"].tolist() == [CONTRACT_VERSION]
    assert runs["config"].iloc[0] == {"capacity_wh": 9700.0, "cells": 16}


def test_mapping_rows_missing_columns_are_null_and_numpy_scalars_accepted(
    store: RunStore,
) -> None:
    run_id = store.start_run("home", {})
    store.record_pack(
        {
            "time_s": np.float64(T0_S),
            "soc": np.float32(0.5),
            "gate_seq": np.int64(7),
            "contactor": ContactorState.OPEN,
            "alarms": [],
            "pv_power_w": float("nan"),
        }
    )
    df = store.read_pack(run_id)
    assert df["soc"].iloc[0] == 0.5
    assert df["gate_seq"].iloc[0] == 7
    assert df["contactor"].iloc[0] == "open"
    assert df["alarms"].iloc[0] == ""
    assert math.isnan(df["pv_power_w"].iloc[0])
    assert math.isnan(df["soh"].iloc[0])
    assert df["gate_outcome"].isna().all()
    for name in PACK_NUMERIC_COLUMNS:
        assert df[name].dtype == np.float64, name


def test_large_batches_round_trip_in_order(tmp_path: Path) -> None:
    # more rows than one multi-row INSERT holds, and a remainder
    path = tmp_path / "run.sqlite"
    rng = np.random.default_rng(3)
    soc = rng.uniform(0.0, 1.0, 1000)
    volts = rng.uniform(3.0, 3.4, (1000, 16))
    with RunStore(path, cell_decimation=1, max_buffer_rows=700) as s:
        run_id = s.start_run("home", {})
        for k in range(1000):
            s.record_pack((float(k), float(soc[k]), *([None] * 27), *([None] * 5)))
            s.record_cells(float(k), volts[k])
        pack = s.read_pack(run_id)
        cells = s.read_cells(run_id)
    assert pack["time_s"].tolist() == [float(k) for k in range(1000)]
    np.testing.assert_array_equal(pack["soc"].to_numpy(), soc)
    assert len(cells) == 16_000
    np.testing.assert_array_equal(cells["voltage_v"].to_numpy().reshape(1000, 16), volts)
    assert cells["cell_index"].tolist() == list(range(16)) * 1000


def test_time_window_is_half_open(store: RunStore) -> None:
    run_id = store.start_run("home", {})
    for k in range(10):
        store.record_pack({"time_s": float(k), "soc": k / 10.0})
    assert store.read_pack(run_id, t0=2.0, t1=5.0)["time_s"].tolist() == [2.0, 3.0, 4.0]
    assert store.read_pack(run_id, t0=8.0)["time_s"].tolist() == [8.0, 9.0]
    assert store.read_pack(run_id, t1=1.0)["time_s"].tolist() == [0.0]
    assert store.read_pack(run_id, t0=20.0).empty


def test_cells_decimation_and_values(store: RunStore) -> None:
    run_id = store.start_run("home", {})
    rng = np.random.default_rng(7)
    voltages = rng.uniform(3.0, 3.4, (10, 4))
    voltages[3, 2] = np.nan  # an invalid reading is stored as NULL
    kept = [
        store.record_cells(
            float(k),
            voltages[k],
            np.full(4, 25.0 + k),
            np.linspace(0.4, 0.7, 4),
            np.array([True, False, False, True]),
        )
        for k in range(10)
    ]
    assert kept == [k % 3 == 0 for k in range(10)]  # cell_decimation=3: calls 0, 3, 6, 9
    df = store.read_cells(run_id)
    assert len(df) == 4 * 4
    assert sorted(set(df["time_s"])) == [0.0, 3.0, 6.0, 9.0]
    at3 = df[df["time_s"] == 3.0].sort_values("cell_index")
    assert at3["cell_index"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(at3["voltage_v"].to_numpy(), voltages[3])  # NaN == NaN here
    assert at3["temperature_degc"].tolist() == [28.0] * 4
    assert at3["soc"].to_numpy() == pytest.approx(np.linspace(0.4, 0.7, 4))
    assert at3["balancing"].tolist() == [True, False, False, True]
    assert len(store.read_cells(run_id, t0=3.0, t1=9.0)) == 2 * 4


def test_cells_optional_arrays_and_shape_errors(store: RunStore) -> None:
    run_id = store.start_run("home", {})
    assert store.record_cells(0.0, np.array([3.3, 3.31]))
    df = store.read_cells(run_id)
    assert df["voltage_v"].tolist() == [3.3, 3.31]
    assert df["temperature_degc"].isna().all()
    assert not df["balancing"].any()
    store.record_cells(1.0, [3.3])  # decimated away: no check, no row
    store.record_cells(2.0, [3.3])
    with pytest.raises(ValueError, match="temperature_degc"):
        store.record_cells(3.0, np.array([3.3, 3.3]), np.array([25.0]))
    for _ in range(2):
        store.record_cells(4.0, [3.3])
    with pytest.raises(ValueError, match="voltage_v"):
        store.record_cells(5.0, ["a", "b"])


def test_events_and_kpis_round_trip(store: RunStore) -> None:
    run_id = store.start_run("home", {})
    store.record_event(T0_S, "contactor", "closed", "info", "contactor closed")
    store.record_event(
        T0_S + 1.0,
        "fault",
        17,
        "alarm",
        "cell over-temperature",
        {"cell": np.int64(5), "temperature_degc": np.float64(61.5), "reason": Reason.NONE},
    )
    store.record_kpis({"cost_eur": 12.5, "throughput_wh": np.float64(5.0e4)})
    store.record_kpis({"cost_eur": 11.0})  # replaces
    ev = store.read_events(run_id)
    assert ev["kind"].tolist() == ["contactor", "fault"]
    assert ev["code"].tolist() == ["closed", "17"]
    assert ev["severity"].tolist() == ["info", "alarm"]
    assert ev["data"].iloc[0] is None
    assert ev["data"].iloc[1] == {"cell": 5, "temperature_degc": 61.5, "reason": "none"}
    assert store.read_events(run_id, kind="fault")["message"].tolist() == ["cell over-temperature"]
    assert store.read_kpis(run_id) == {"cost_eur": 11.0, "throughput_wh": 5.0e4}


def test_runs_are_kept_apart(store: RunStore) -> None:
    first = store.start_run("home", {})
    store.record_pack({"time_s": 1.0, "soc": 0.1})
    store.record_kpis({"cost_eur": 1.0})
    second = store.start_run("depot", {})
    store.record_pack({"time_s": 1.0, "soc": 0.9})
    assert second != first
    assert store.read_pack(first)["soc"].tolist() == [0.1]
    assert store.read_pack(second)["soc"].tolist() == [0.9]
    assert store.read_kpis(second) == {}
    runs = store.list_runs()
    assert runs["site"].tolist() == ["home", "depot"]
    assert math.isfinite(runs["ended_at_s"].iloc[0])  # start_run ended the first run


def test_end_run_and_pack_row_without_site(store: RunStore) -> None:
    run_id = store.start_run("home", {}, started_at_s=T0_S)
    store.record_pack(pack_row(_telemetry(T0_S)))
    store.end_run(ended_at_s=T0_S + 60.0)
    with pytest.raises(StorageError, match="no run is open"):
        store.record_pack(pack_row(_telemetry(T0_S + 1.0)))
    runs = store.list_runs()
    assert runs["started_at_s"].tolist() == [T0_S]
    assert runs["ended_at_s"].tolist() == [T0_S + 60.0]
    df = store.read_pack(run_id)
    assert len(df) == 1
    assert df[["grid_power_w", "pv_power_w", "load_power_w"]].isna().all().all()
    assert df["soh"].iloc[0] == 0.97
    # the gate override logs another decision without copying the Telemetry
    refused = GateDecision(Outcome.REFUSED, Reason.CONTACTOR_OPEN, 43, 2000.0, 0.0, "modbus")
    second = store.start_run("home", {})
    store.record_pack(pack_row(_telemetry(T0_S), gate=refused))
    row = store.read_pack(second).iloc[0]
    assert (row["gate_outcome"], row["gate_reason"], row["gate_source"]) == (
        "refused",
        "contactor_open",
        "modbus",
    )
    assert (row["gate_seq"], row["gate_requested_w"], row["gate_granted_w"]) == (43, 2000.0, 0.0)


def test_unknown_run_id_is_named(store: RunStore) -> None:
    store.start_run("home", {})
    with pytest.raises(ValueError, match="no run with id 99"):
        store.read_pack(99)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.none(),
            st.floats(allow_nan=False, allow_infinity=False, width=64),
        ),
        min_size=len(PACK_NUMERIC_COLUMNS) - 1,
        max_size=len(PACK_NUMERIC_COLUMNS) - 1,
    ),
    text=st.text(max_size=20),
    time_s=st.floats(-1e12, 1e12, allow_nan=False),
)
def test_any_finite_numbers_round_trip_exactly(
    values: list[float | None], text: str, time_s: float
) -> None:
    # The integer columns round real numbers: give them integers.
    for name in ("balancing_cells", "gate_seq"):
        i = PACK_NUMERIC_COLUMNS.index(name) - 1
        v = values[i]
        if v is not None:
            values[i] = float(int(max(min(v, 2.0**52), -(2.0**52))))
    row = (time_s, *values, text, "none", "ems", "closed", "")
    with RunStore(":memory:") as s:
        run_id = s.start_run("h", {})
        s.record_pack(row)
        got = s.read_pack(run_id).iloc[0]
    assert got["time_s"] == time_s
    for name, value in zip(PACK_NUMERIC_COLUMNS[1:], values, strict=True):
        if value is None:
            assert math.isnan(got[name]), name
        else:
            assert got[name] == value, name
    assert got["gate_outcome"] == text


# ---------------------------------------------------------------- bad input


def test_bad_rows_name_the_column_and_keep_earlier_rows(store: RunStore) -> None:
    run_id = store.start_run("home", {})
    for k in range(3):
        store.record_pack({"time_s": float(k), "soc": 0.5})
    with pytest.raises(ValueError, match=r"unknown pack column\(s\) \['state_of_charge'\]"):
        store.record_pack({"time_s": 3.0, "state_of_charge": 0.5})
    with pytest.raises(ValueError, match="pack column 'soc' expects a number, got 'half'"):
        store.record_pack({"time_s": 3.0, "soc": "half"})
    with pytest.raises(ValueError, match="'pack_voltage_v' expects a number"):
        store.record_pack({"time_s": 3.0, "pack_voltage_v": [51.2]})
    with pytest.raises(ValueError, match="'contactor' expects text"):
        store.record_pack({"time_s": 3.0, "contactor": 1.0})
    with pytest.raises(ValueError, match="'time_s' is required"):
        store.record_pack({"soc": 0.5})
    with pytest.raises(ValueError, match="'time_s' must be a finite number"):
        store.record_pack({"time_s": float("nan")})
    good = pack_row(_telemetry(10.0))
    with pytest.raises(ValueError, match=f"must have {len(PACK_COLUMNS)} values"):
        store.record_pack(good[:-1])
    bad = list(good)
    bad[PACK_COLUMNS.index("soh")] = "0.97"
    with pytest.raises(ValueError, match="pack column 'soh'"):
        store.record_pack(tuple(bad))
    store.record_pack(good)
    df = store.read_pack(run_id)
    assert df["time_s"].tolist() == [0.0, 1.0, 2.0, 10.0]


def test_record_without_run_or_after_close_raises(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "run.sqlite")
    with pytest.raises(StorageError, match="start_run"):
        s.record_pack({"time_s": 0.0})
    with pytest.raises(StorageError, match="start_run"):
        s.record_event(0.0, "k", "c", "info", "m")
    s.start_run("home", {})
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        s.record_pack({"time_s": 0.0})
    with pytest.raises(StorageError, match="closed"):
        s.start_run("home", {})


def test_unserialisable_config_and_event_data(store: RunStore) -> None:
    with pytest.raises(ValueError, match="config: value of type object"):
        store.start_run("home", {"x": object()})
    store.start_run("home", {})
    with pytest.raises(ValueError, match="data: value of type object"):
        store.record_event(0.0, "k", "c", "info", "m", {"x": object()})
    with pytest.raises(ValueError, match="KPI 'cost_eur' expects a number"):
        store.record_kpis({"cost_eur": "12"})  # type: ignore[dict-item]


def test_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("these are not the pages you are looking for\n" * 200)
    with pytest.raises(StorageError, match=r"notes\.sqlite.*not .*database"):
        RunStore(path)


def test_foreign_or_newer_database_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match=r"foreign\.sqlite.*not a run database"):
        RunStore(foreign)
    newer = tmp_path / "newer.sqlite"
    RunStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match=r"newer\.sqlite.*schema version"):
        RunStore(newer)


def test_directory_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=str(tmp_path.name)):
        RunStore(tmp_path)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="cell_decimation"):
        RunStore(":memory:", cell_decimation=0)
    with pytest.raises(ValueError, match="flush_interval_s"):
        RunStore(":memory:", flush_interval_s=0.0)


class _FailingConnection:
    """Proxy whose writes fail like a full disk, until ``fail`` is cleared."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.fail = True

    def executemany(self, sql: str, rows: Any) -> Any:
        if self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_failed_flush_keeps_rows_for_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    s = RunStore(path, flush_interval_s=1000.0)
    run_id = s.start_run("home", {})
    for k in range(5):
        s.record_pack({"time_s": float(k)})
    proxy = _FailingConnection(s._conn)
    s._conn = proxy  # type: ignore[assignment]
    with pytest.raises(StorageError, match=r"kept for the next flush\): database or disk is full"):
        s.flush()
    s.record_pack({"time_s": 5.0})
    proxy.fail = False
    s.flush()
    s._conn = proxy.conn
    assert s.read_pack(run_id)["time_s"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    s.close()


# ---------------------------------------------------------------- flushing, readers


def _wait_for_count(path: Path, table: str, n: int, timeout_s: float = 10.0) -> int:
    """Poll another connection until ``table`` holds ``n`` rows (or the timeout)."""
    end = time.monotonic() + timeout_s
    count = _count(path, table)
    while count < n and time.monotonic() < end:
        time.sleep(0.02)
        count = _count(path, table)
    return count


def test_idle_caller_data_reaches_disk_without_flush(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    with RunStore(path, flush_interval_s=0.2) as s:
        s.start_run("home", {})
        s.record_pack({"time_s": 0.0})  # the first record after opening may flush itself
        s.record_pack({"time_s": 1.0})
        s.record_event(1.0, "fault", "ov", "alarm", "over-voltage")
        # no more calls: the watchdog thread must write the buffered rows
        assert _wait_for_count(path, "pack", 2) == 2
        assert _wait_for_count(path, "events", 1) == 1


def test_read_only_store_reads_while_writer_records(tmp_path: Path) -> None:
    path = tmp_path / "run.sqlite"
    with RunStore(path) as writer:
        run_id = writer.start_run("home", {})
        writer.record_pack({"time_s": 0.0, "soc": 0.5})
        writer.flush()
        with RunStore(path, read_only=True) as reader:
            assert reader.read_pack(run_id)["soc"].tolist() == [0.5]
            with pytest.raises(StorageError, match="read-only"):
                reader.start_run("home", {})
    with pytest.raises(StorageError, match="no such database"):
        RunStore(tmp_path / "missing.sqlite", read_only=True)


# ---------------------------------------------------------------- SIGKILL


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from openbess.storage import RunStore

    path, progress_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    fd = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    store = RunStore(path, flush_interval_s=0.5, cell_decimation=10)
    store.start_run("crash", {"mode": mode})
    volts = np.full(16, 3.3)
    i = n_events = 0
    os.write(fd, b"ready\\n")
    while True:
        now = time.time()
        store.record_pack({"time_s": now, "pack_current_a": float(i), "soc": 0.5})
        store.record_cells(now, volts, volts * 8.0, volts / 6.6, volts > 3.0)
        i += 1
        if i % 1000 == 0:
            store.record_event(now, "test", i, "info", "progress")
            n_events += 1
        if i % 100 == 0:
            # all rows up to i and events up to n_events were recorded by time `now`
            os.write(fd, f"{i} {n_events} {now!r}\\n".encode())
        if mode == "idle" and i == 5000:
            os.write(fd, f"idle {i} {n_events} {time.time()!r}\\n".encode())
            time.sleep(3600)
        if mode == "paced":
            time.sleep(0.0005)
    """
)

FLUSH_INTERVAL_S = 0.5
MARGIN_S = 1.0  # for scheduling on a loaded 2-core machine


def _run_child(tmp_path: Path, mode: str, run_s: float) -> tuple[Path, list[str], float]:
    """Start a recording child, SIGKILL it after ``run_s`` (or once idle), return its log."""
    path = tmp_path / f"{mode}.sqlite"
    progress = tmp_path / f"{mode}.progress"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(progress), mode],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60.0
        marker = "idle" if mode == "idle" else "ready"
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists() and marker in progress.read_text():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the recording child died on its own"
        assert marker in progress.read_text(), "the recording child never started"
        if mode == "idle":
            time.sleep(FLUSH_INTERVAL_S + MARGIN_S)
        else:
            time.sleep(run_s)
        kill_time = time.time()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return path, progress.read_text().splitlines(), kill_time


def _check_after_kill(path: Path, lines: list[str], kill_time: float) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    with RunStore(path) as s:  # reopens the crashed database and recovers the WAL
        run_id = int(s.list_runs()["id"].iloc[-1])
        pack = s.read_pack(run_id)
        n_events = len(s.read_events(run_id))
        cells = s.read_cells(run_id)
    counters = pack["pack_current_a"].to_numpy()
    # what is stored is exactly the first N rows recorded: no hole, no duplicate
    np.testing.assert_array_equal(counters, np.arange(len(counters), dtype=np.float64))
    assert np.all(np.diff(pack["time_s"].to_numpy()) >= 0.0)
    # every cell snapshot stored is complete (16 cells)
    assert (cells.groupby("time_s").size() == 16).all()
    progress = [ln.split() for ln in lines if ln and ln[0].isdigit()]
    assert progress, "no progress reported"
    # everything recorded more than flush interval + margin before the kill is on disk
    bound_s = kill_time - (FLUSH_INTERVAL_S + MARGIN_S)
    due = [(int(i), int(e)) for i, e, t in progress if float(t) <= bound_s]
    if due:
        assert len(counters) >= due[-1][0]
        assert n_events >= due[-1][1]
    assert len(counters) >= int(progress[0][0])


@pytest.mark.parametrize("mode", ["tight", "paced"])
def test_sigkill_while_recording_loses_at_most_the_last_interval(tmp_path: Path, mode: str) -> None:
    path, lines, kill_time = _run_child(tmp_path, mode, run_s=2.5)
    recorded_s = [float(ln.split()[2]) for ln in lines if ln[0].isdigit()]
    # the child was recording until the kill, and long enough for the bound to bite
    assert recorded_s[-1] >= kill_time - 1.0
    assert recorded_s[0] <= kill_time - (FLUSH_INTERVAL_S + MARGIN_S)
    _check_after_kill(path, lines, kill_time)


def test_sigkill_of_an_idle_recorder_loses_nothing(tmp_path: Path) -> None:
    path, lines, kill_time = _run_child(tmp_path, "idle", run_s=0.0)
    idle = next(ln.split() for ln in lines if ln.startswith("idle"))
    _check_after_kill(path, lines, kill_time)
    assert _count(path, "pack") == int(idle[1]) == 5000
    assert _count(path, "events") == int(idle[2]) == 5
    assert _count(path, "cells") == 500 * 16
