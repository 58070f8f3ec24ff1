"""Cell-log reading and writing: our CSV format, raw cycler exports, errors naming the place."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from openbess.cell.io import (
    CellLog,
    calibrate_current,
    coulombs_ah,
    read_a123_dyn_csv,
    read_arbin_csv,
    read_bitrode_csv,
    read_cell_log,
    write_cell_log,
)
from openbess.errors import DataError

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


def _log(n: int = 50, seed: int = 1) -> CellLog:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=float) * 2.0
    return CellLog(
        time_s=t,
        current_a=rng.normal(0, 3, n),
        voltage_v=3.3 + rng.normal(0, 0.01, n),
        temperature_degc=np.full(n, 25.0),
        step=np.arange(n) // 10,
    )


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_round_trip_one_cell(tmp_path: Path, suffix: str) -> None:
    lg = _log()
    path = tmp_path / f"log{suffix}"
    write_cell_log(path, lg)
    (back,) = read_cell_log(path)
    np.testing.assert_allclose(back.current_a, lg.current_a, rtol=1e-9)
    np.testing.assert_allclose(back.voltage_v, lg.voltage_v, rtol=1e-9)
    np.testing.assert_array_equal(back.step, lg.step)


def test_several_cells_with_suffixes_and_shared_current(tmp_path: Path) -> None:
    path = tmp_path / "string.csv"
    path.write_text(
        "# a series string of two cells\n"
        "time_s,current_a,voltage_v_1,voltage_v_2,temperature_degc_1,temperature_degc_2\n"
        "0,1.0,3.30,3.31,25,26\n"
        "1,2.0,3.29,3.30,25,26\n"
    )
    a, b = read_cell_log(path)
    np.testing.assert_array_equal(a.current_a, [1.0, 2.0])
    np.testing.assert_array_equal(b.current_a, [1.0, 2.0])
    np.testing.assert_array_equal(b.voltage_v, [3.31, 3.30])
    np.testing.assert_array_equal(b.temperature_degc, [26.0, 26.0])


def test_temperature_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("time_s,current_a,voltage_v\n0,0,3.3\n1,1,3.2\n")
    (lg,) = read_cell_log(path)
    assert np.all(np.isnan(lg.temperature_degc))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("time_s,current_a,voltage_v\n0,1,3.3\n1,abc,3.3\n", r"line 3, column 'current_a'"),
        ("time_s,current_a,voltage_v\n0,1,3.3\n1,1,\n", r"line 3, column 'voltage_v'.*missing"),
        ("time_s,current_a\n0,1\n", r"column 'voltage_v'.*missing column"),
        ("time_s,current_a,voltage_v\n0,1,3.3\n5,1,3.3\n4,1,3.3\n", r"line 4.*backwards"),
        ("time_s,current_a,voltage_v\n0,1,inf\n", r"line 2, column 'voltage_v'.*not finite"),
        ("time_s,current_a,voltage_v\n", r"no data rows"),
        ("", r"empty file"),
    ],
)
def test_bad_input_names_file_line_and_column(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=pattern) as info:
        read_cell_log(path)
    assert "bad.csv" in str(info.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open"):
        read_cell_log(tmp_path / "nope.csv")


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv.gz"
    path.write_bytes(gzip.compress(b"time_s,current_a,voltage_v\n0,1,3.3\n")[:-8])
    with pytest.raises(DataError, match=r"x\.csv\.gz"):
        read_cell_log(path)


def test_arbin_sign_is_converted(tmp_path: Path) -> None:
    path = tmp_path / "arbin.csv"
    path.write_text(
        "Data_Point,Test_Time(s),Step_Index,Current(A),Voltage(V)\n"
        "1,0,1,0,3.5\n2,10,2,-0.5,3.4\n3,20,2,-0.5,3.39\n"
    )
    lg = read_arbin_csv(path, 25.0)
    np.testing.assert_array_equal(lg.current_a, [0.0, 0.5, 0.5])  # discharge positive
    np.testing.assert_array_equal(lg.step, [1, 2, 2])
    path.write_text("Data_Point,Test_Time(s),Step_Index,Current(A),Voltage(V)\n1,0,1,x,3.5\n")
    with pytest.raises(DataError, match=r"line 2, column 'Current\(A\)'"):
        read_arbin_csv(path)


def test_bitrode_with_and_without_header(tmp_path: Path) -> None:
    rows = "No,1.0,1,1,1,1,6,1.0,-30.00,4.129,-123.9,-0.01,-0.03,DCHG, ,\n"
    rows += "No,2.0,1,1,1,1,7,1.0,0.00,4.133,0.0,0.00,0.00,REST, ,\n"
    header = "Exclude,Time(s),Cycle,Loop,Loop,Loop,Step,StepTime(s),Current(A),Voltage(V),"
    header += "Power(W),Capacity(Ah),Energy(Wh),Mode,Data,\n"
    for text in (rows, header + rows):
        path = tmp_path / "b.csv"
        path.write_text(text)
        lg = read_bitrode_csv(path)
        np.testing.assert_array_equal(lg.current_a, [30.0, -0.0])
        np.testing.assert_array_equal(lg.step, [6, 7])
    path.write_text(rows + "No,3.0,1,1,1,1,7,2.0,0.00,volt,0.0,0.00,0.00,REST, ,\n")
    with pytest.raises(DataError, match=r"line 3, column 'Voltage\(V\)'"):
        read_bitrode_csv(path)


def test_dyn_reader_calibrates_to_counters(tmp_path: Path) -> None:
    path = tmp_path / "dyn.csv"
    path.write_text(
        "time, step, current, voltage, chgAh, disAh\n"
        "0, 1, 0, 3.5, 0, 0\n"
        "3600, 2, 1.0, 3.3, 0, 1.01\n"
        "7200, 3, -1.0, 3.4, 0.98, 1.01\n"
    )
    raw = read_a123_dyn_csv(path)
    cal = read_a123_dyn_csv(path, calibrate_to_counters=True)
    np.testing.assert_allclose(raw.current_a, [0.0, 1.0, -1.0])
    np.testing.assert_allclose(cal.current_a, [0.0, 1.01, -0.98])


def test_calibrate_current_matches_references() -> None:
    t = np.arange(0.0, 101.0)
    i = np.where(t % 20 < 10, 2.0, -1.0)
    out = calibrate_current(t, i, discharge_ah=0.06, charge_ah=0.02)
    dt = np.diff(t)
    assert np.sum(np.clip(out[1:], 0, None) * dt) / 3600 == pytest.approx(0.06)
    assert np.sum(np.clip(-out[1:], 0, None) * dt) / 3600 == pytest.approx(0.02)


def test_coulombs_zero_order_hold() -> None:
    t = np.array([0.0, 1800.0, 3600.0])
    assert coulombs_ah(t, np.array([5.0, 2.0, 2.0]))[-1] == pytest.approx(2.0)


def test_shipped_measured_logs_read() -> None:
    (dyn,) = read_cell_log(BENCH / "a123_dyn_25c_s1.csv.gz")
    assert len(dyn) == 36880
    assert np.all(np.diff(dyn.time_s) > 0)
    # The dynamic test discharges the cell: net discharge close to its capacity.
    assert 1.9 < dyn.discharged_ah()[-1] < 2.1
