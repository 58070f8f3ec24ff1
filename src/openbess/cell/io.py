"""Reading cell test logs: our one CSV format, and the raw cycler exports used for fitting.

Our format (``read_cell_log`` / ``write_cell_log``) is a CSV file, optionally gzip-compressed
(``.csv.gz``), with a header line and the columns::

    time_s, current_a, voltage_v, temperature_degc

``time_s`` in seconds (any origin, non-decreasing), ``current_a`` in amperes with the battery
sign convention (positive = discharge), ``voltage_v`` in volts and ``temperature_degc`` in
degrees Celsius. A log of several cells carries one column per cell with a ``_<n>`` suffix
(``voltage_v_1``, ``voltage_v_2``, ...); the current may be shared (one ``current_a`` column, a
series string) or per cell (``current_a_<n>``), and so may the temperature. The temperature
columns are optional (read as NaN when absent). An optional integer column ``step`` carries the
test-program step index. Lines starting with ``#`` are comments.

The raw readers convert three cycler exports to the same :class:`CellLog`:

* :func:`read_arbin_csv`: Arbin exports (A123 OCV tests of Plett's ESC toolbox), with
  ``Current(A)`` positive on charge;
* :func:`read_a123_dyn_csv`: the A123 dynamic-test files (``time, step, current, voltage,
  chgAh, disAh``), current positive on discharge;
* :func:`read_bitrode_csv`: Bitrode exports (ORNL Nissan Leaf data), with or without their
  header line, ``Current(A)`` positive on charge.

Every reader raises :class:`~openbess.errors.DataError` naming the file, the line (1-based,
counting the header) and the column of the first bad value.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from openbess.errors import DataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

LOG_COLUMNS = ("time_s", "current_a", "voltage_v", "temperature_degc")


@dataclass(frozen=True)
class CellLog:
    """Measured time series of one cell.

    Parameters
    ----------
    time_s : numpy.ndarray
        Time [s], non-decreasing, shape ``(n,)``.
    current_a : numpy.ndarray
        Current [A], positive = discharge, shape ``(n,)``.
    voltage_v : numpy.ndarray
        Terminal voltage [V], shape ``(n,)``.
    temperature_degc : numpy.ndarray
        Cell (or chamber) temperature [degC], NaN where unknown, shape ``(n,)``.
    step : numpy.ndarray
        Test-program step index (0 where unknown), shape ``(n,)``.
    source : str
        File the log was read from (for messages).
    """

    time_s: FloatArray
    current_a: FloatArray
    voltage_v: FloatArray
    temperature_degc: FloatArray
    step: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = self.time_s.size
        if self.step.size == 0 and n > 0:
            object.__setattr__(self, "step", np.zeros(n, dtype=np.int64))
        for name in ("current_a", "voltage_v", "temperature_degc", "step"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"CellLog.{name} must have shape ({n},)")

    def __len__(self) -> int:
        return int(self.time_s.size)

    def select(self, mask: npt.NDArray[np.bool_] | slice) -> CellLog:
        """Return the samples selected by a boolean mask or a slice.

        Parameters
        ----------
        mask : numpy.ndarray of bool or slice
            Selection.

        Returns
        -------
        CellLog
            The selected part.
        """
        return CellLog(
            self.time_s[mask],
            self.current_a[mask],
            self.voltage_v[mask],
            self.temperature_degc[mask],
            self.step[mask],
            self.source,
        )

    def discharged_ah(self) -> FloatArray:
        """Cumulative net discharged charge from the first sample [Ah] (see :func:`coulombs_ah`).

        Returns
        -------
        numpy.ndarray
            Net discharged charge [Ah], shape ``(n,)``.
        """
        return coulombs_ah(self.time_s, self.current_a)


def coulombs_ah(time_s: FloatArray, current_a: FloatArray) -> FloatArray:
    """Cumulative net discharged charge [Ah], zero-order hold on the later sample.

    The current logged at sample ``k`` is taken as held over ``(t[k-1], t[k]]``, the convention
    of :func:`openbess.cell.ecm.step` (the ECM is stepped with the current of the sample it
    reports).

    Parameters
    ----------
    time_s : numpy.ndarray
        Time [s], shape ``(n,)``.
    current_a : numpy.ndarray
        Current [A], positive = discharge, shape ``(n,)``.

    Returns
    -------
    numpy.ndarray
        Cumulative discharged charge [Ah], starting at 0, shape ``(n,)``.
    """
    dt = np.diff(time_s)
    out: FloatArray = np.concatenate(([0.0], np.cumsum(current_a[1:] * dt) / 3600.0))
    return out


def calibrate_current(
    time_s: FloatArray, current_a: FloatArray, discharge_ah: float, charge_ah: float
) -> FloatArray:
    """Scale discharge and charge samples so they integrate to reference charge counts.

    Parameters
    ----------
    time_s : numpy.ndarray
        Time [s].
    current_a : numpy.ndarray
        Current [A], positive = discharge.
    discharge_ah, charge_ah : float
        Reference discharged and charged charge over the log [Ah] (e.g. the cycler's
        counters), both >= 0.

    Returns
    -------
    numpy.ndarray
        The scaled current [A].
    """
    dt = np.diff(time_s)
    i = current_a[1:]
    dis = float(np.sum(np.clip(i, 0.0, None) * dt)) / 3600.0
    chg = float(np.sum(np.clip(-i, 0.0, None) * dt)) / 3600.0
    k_dis = discharge_ah / dis if dis > 0 else 1.0
    k_chg = charge_ah / chg if chg > 0 else 1.0
    out: FloatArray = np.where(current_a > 0, current_a * k_dis, current_a * k_chg)
    return out


# -- low-level CSV parsing ------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    try:
        if path.suffix == ".gz":
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, encoding="utf-8", newline="")
    except OSError as err:
        raise DataError(f"{path}: cannot open: {err}") from err


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-empty, non-comment line."""
    with _open_text(path) as fh:
        reader = csv.reader(fh, skipinitialspace=True)
        try:
            for row in reader:
                if not row or not any(f.strip() for f in row):
                    continue
                if row[0].lstrip().startswith("#"):
                    continue
                yield reader.line_num, [f.strip() for f in row]
        except (csv.Error, UnicodeDecodeError, OSError, EOFError) as err:
            raise DataError(f"{path}: line {reader.line_num}: unreadable: {err}") from err


def _parse_float(path: Path, line: int, column: str, text: str, finite: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(
            f"{path}: line {line}, column '{column}': cannot read {text!r} as a number"
        ) from None
    if finite and not math.isfinite(value):
        raise DataError(f"{path}: line {line}, column '{column}': value {text!r} is not finite")
    return value


def _numeric_table(
    path: Path,
    columns: Sequence[str],
    wanted: Sequence[str],
    rows: Iterator[tuple[int, list[str]]],
) -> tuple[dict[str, FloatArray], list[int]]:
    """Parse the ``wanted`` columns (by name, from ``columns``) of every row."""
    index = {name: columns.index(name) for name in wanted}
    values: dict[str, list[float]] = {name: [] for name in wanted}
    lines: list[int] = []
    for line, row in rows:
        for name, k in index.items():
            if k >= len(row) or row[k] == "":
                raise DataError(f"{path}: line {line}, column '{name}': missing value")
            values[name].append(_parse_float(path, line, name, row[k]))
        lines.append(line)
    if not lines:
        raise DataError(f"{path}: line 1: no data rows")
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}, lines


def _check_time(path: Path, column: str, time_s: FloatArray, lines: list[int]) -> None:
    bad = np.flatnonzero(np.diff(time_s) < 0)
    if bad.size:
        k = int(bad[0]) + 1
        raise DataError(
            f"{path}: line {lines[k]}, column '{column}': time goes backwards "
            f"({time_s[k - 1]} -> {time_s[k]})"
        )


# -- our format ------------------------------------------------------------------------------

_SUFFIX = re.compile(r"^(time_s|current_a|voltage_v|temperature_degc)_(\d+)$")


def read_cell_log(path: str | Path) -> list[CellLog]:
    """Read a cell log in our CSV format (one or several cells).

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.csv`` or ``.csv.gz`` file with columns ``time_s``, ``current_a``, ``voltage_v`` and
        optionally ``temperature_degc`` and ``step``; several cells use ``_<n>`` suffixes.

    Returns
    -------
    list of CellLog
        One log per cell, in suffix order (a single log when there is no suffix).

    Raises
    ------
    DataError
        Naming the file, line and column of a missing or malformed value, a missing column or
        time going backwards.
    """
    path = Path(path)
    rows = _rows(path)
    try:
        header_line, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}: line 1: empty file (expected a header)") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise DataError(f"{path}: line {header_line}, column '{dup}': duplicate column")
    if "time_s" not in header:
        raise DataError(f"{path}: line {header_line}, column 'time_s': missing column")
    cells = sorted({int(m.group(2)) for h in header if (m := _SUFFIX.match(h))})
    keys: list[str | None] = [None] if not cells else [str(c) for c in cells]

    def col(base: str, key: str | None, required: bool) -> str | None:
        if key is not None and f"{base}_{key}" in header:
            return f"{base}_{key}"
        if base in header:
            return base
        if required:
            name = base if key is None else f"{base}_{key}"
            raise DataError(f"{path}: line {header_line}, column '{name}': missing column")
        return None

    plan: list[tuple[str, str, str | None]] = []
    for key in keys:
        cur = col("current_a", key, True)
        volt = col("voltage_v", key, True)
        temp = col("temperature_degc", key, False)
        if cur is None or volt is None:  # pragma: no cover - col() raised already
            raise DataError(f"{path}: missing columns")
        plan.append((cur, volt, temp))
    wanted = sorted({"time_s", *(c for p in plan for c in p if c is not None)})
    if "step" in header:
        wanted.append("step")
    data, lines = _numeric_table(path, header, wanted, rows)
    _check_time(path, "time_s", data["time_s"], lines)
    n = data["time_s"].size
    step = data["step"].astype(np.int64) if "step" in data else np.zeros(n, dtype=np.int64)
    out = []
    for cur, volt, temp in plan:
        out.append(
            CellLog(
                time_s=data["time_s"],
                current_a=data[cur],
                voltage_v=data[volt],
                temperature_degc=data[temp] if temp is not None else np.full(n, np.nan),
                step=step,
                source=str(path),
            )
        )
    return out


def write_cell_log(path: str | Path, logs: CellLog | Sequence[CellLog]) -> None:
    """Write one or several cell logs (same time base) in our CSV format.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file; gzip-compressed when the name ends in ``.gz``.
    logs : CellLog or sequence of CellLog
        The logs; several logs must share ``time_s`` and get ``_<n>`` suffixes (1-based).
    """
    path = Path(path)
    seq = [logs] if isinstance(logs, CellLog) else list(logs)
    if not seq:
        raise ValueError("no logs to write")
    t = seq[0].time_s
    for lg in seq[1:]:
        if lg.time_s.shape != t.shape or not np.array_equal(lg.time_s, t):
            raise ValueError("logs written together must share time_s")
    cols: dict[str, npt.NDArray[np.generic]] = {"time_s": t, "step": seq[0].step}
    for k, lg in enumerate(seq, start=1):
        sfx = "" if len(seq) == 1 else f"_{k}"
        cols[f"current_a{sfx}"] = lg.current_a
        cols[f"voltage_v{sfx}"] = lg.voltage_v
        cols[f"temperature_degc{sfx}"] = lg.temperature_degc
    buf = io.StringIO()
    buf.write(",".join(cols) + "\n")
    arrays = list(cols.values())
    for r in range(t.size):
        buf.write(",".join(_fmt(a[r]) for a in arrays) + "\n")
    data = buf.getvalue().encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)


def _fmt(x: object) -> str:
    if isinstance(x, np.integer):
        return str(int(x))
    return f"{float(x):.10g}"  # type: ignore[arg-type]


# -- raw cycler formats ----------------------------------------------------------------------


def _header_index(path: Path, header: list[str], line: int, names: Sequence[str]) -> list[str]:
    for name in names:
        if name not in header:
            raise DataError(f"{path}: line {line}, column '{name}': missing column")
    return header


def read_arbin_csv(path: str | Path, temperature_degc: float = math.nan) -> CellLog:
    """Read an Arbin CSV export (columns ``Test_Time(s)``, ``Step_Index``, ``Current(A)``, ...).

    Parameters
    ----------
    path : str or pathlib.Path
        The export.
    temperature_degc : float
        Chamber temperature of the test [degC] (the export has none).

    Returns
    -------
    CellLog
        The log, current positive = discharge (the export is positive on charge).
    """
    path = Path(path)
    rows = _rows(path)
    try:
        line, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}: line 1: empty file") from None
    names = ("Test_Time(s)", "Step_Index", "Current(A)", "Voltage(V)")
    _header_index(path, header, line, names)
    data, lines = _numeric_table(path, header, names, rows)
    _check_time(path, "Test_Time(s)", data["Test_Time(s)"], lines)
    n = data["Test_Time(s)"].size
    return CellLog(
        time_s=data["Test_Time(s)"],
        current_a=-data["Current(A)"],
        voltage_v=data["Voltage(V)"],
        temperature_degc=np.full(n, float(temperature_degc)),
        step=data["Step_Index"].astype(np.int64),
        source=str(path),
    )


def read_a123_dyn_csv(
    path: str | Path, temperature_degc: float = math.nan, calibrate_to_counters: bool = False
) -> CellLog:
    """Read an A123 dynamic-test file of Plett's ESC toolbox (``time, step, current, ...``).

    The current of these files is positive on discharge (it agrees with the ``disAh`` column).
    The 1 s current samples integrate to about 0.5 % less discharge than the cycler's own
    counters (``disAh``, ``chgAh``, accumulated at the cycler's internal rate); with
    ``calibrate_to_counters`` the discharge and the charge samples are each scaled so their
    integrals match the counters at the end of the file.

    Parameters
    ----------
    path : str or pathlib.Path
        The file.
    temperature_degc : float
        Chamber temperature of the test [degC].
    calibrate_to_counters : bool
        Scale the current to the cycler's charge counters (see above).

    Returns
    -------
    CellLog
        The log.
    """
    path = Path(path)
    rows = _rows(path)
    try:
        line, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}: line 1: empty file") from None
    names: tuple[str, ...] = ("time", "step", "current", "voltage")
    if calibrate_to_counters:
        names = (*names, "chgAh", "disAh")
    _header_index(path, header, line, names)
    data, lines = _numeric_table(path, header, names, rows)
    _check_time(path, "time", data["time"], lines)
    n = data["time"].size
    current = data["current"]
    if calibrate_to_counters:
        current = calibrate_current(
            data["time"], current, float(data["disAh"][-1]), float(data["chgAh"][-1])
        )
    return CellLog(
        time_s=data["time"],
        current_a=current,
        voltage_v=data["voltage"],
        temperature_degc=np.full(n, float(temperature_degc)),
        step=data["step"].astype(np.int64),
        source=str(path),
    )


BITRODE_COLUMNS = (
    "Exclude",
    "Time(s)",
    "Cycle",
    "Loop1",
    "Loop2",
    "Loop3",
    "Step",
    "StepTime(s)",
    "Current(A)",
    "Voltage(V)",
    "Power(W)",
    "Capacity(Ah)",
    "Energy(Wh)",
    "Mode",
)


def read_bitrode_csv(path: str | Path, temperature_degc: float = math.nan) -> CellLog:
    """Read a Bitrode CSV export (ORNL Nissan Leaf data), with or without its header line.

    The columns are taken by position (``Exclude, Time(s), Cycle, Loop, Loop, Loop, Step,
    StepTime(s), Current(A), Voltage(V), Power(W), Capacity(Ah), Energy(Wh), Mode, ...``).
    Rows whose ``Exclude`` field is ``Yes`` are skipped.

    Parameters
    ----------
    path : str or pathlib.Path
        The export.
    temperature_degc : float
        Chamber temperature of the test [degC].

    Returns
    -------
    CellLog
        The log, current positive = discharge (the export is positive on charge).
    """
    path = Path(path)
    time: list[float] = []
    step: list[float] = []
    cur: list[float] = []
    volt: list[float] = []
    lines: list[int] = []
    first = True
    for line, row in _rows(path):
        if first:
            first = False
            if row[0].lower().startswith("exclude"):
                continue
        if len(row) < 10:
            raise DataError(
                f"{path}: line {line}, column '{BITRODE_COLUMNS[min(len(row), 9)]}': "
                f"missing value (row has {len(row)} fields, expected at least 10)"
            )
        if row[0].lower() == "yes":
            continue
        time.append(_parse_float(path, line, "Time(s)", row[1]))
        step.append(_parse_float(path, line, "Step", row[6]))
        cur.append(_parse_float(path, line, "Current(A)", row[8]))
        volt.append(_parse_float(path, line, "Voltage(V)", row[9]))
        lines.append(line)
    if not lines:
        raise DataError(f"{path}: line 1: no data rows")
    t = np.asarray(time)
    _check_time(path, "Time(s)", t, lines)
    return CellLog(
        time_s=t,
        current_a=-np.asarray(cur),
        voltage_v=np.asarray(volt),
        temperature_degc=np.full(t.size, float(temperature_degc)),
        step=np.asarray(step).astype(np.int64),
        source=str(path),
    )
