"""CAN link to a real BMS: decode its frames with a DBC and feed them to the monitoring.

A real battery rack's own BMS (foxBMS 2 out of the box) sends cell voltages, temperatures,
currents, SoC and its current limits on a CAN bus. :class:`CanBmsLink` receives the frames in
python-can's notifier thread, decodes them with cantools and a declarative
:class:`BmsMapping` (DBC signal -> monitoring input, scale, offset), and keeps the latest value
of every input with the monotonic time it arrived. :class:`CanPlant` wraps the plant the
controller already drives (the twin) and replaces its battery :class:`~openbess.plant.Measurements`
with the ones from CAN; values older than ``stale_timeout_s`` are marked invalid (never raised),
and every actuation's DC current caps are narrowed to the real BMS's own limits.

Time: the link stamps frames with a monotonic wall clock (real hardware talks in real time);
``stale_timeout_s`` is in wall seconds. The Measurements keep the inner plant's ``time_s``.

:class:`BmsPeer` is the other end: a simulated BMS that encodes values with the same mapping
and DBC and sends them, for tests and for demonstrations on python-can's ``virtual`` bus.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from openbess.config import CanConfig
from openbess.contract import Actuation
from openbess.errors import ConfigError, DataError
from openbess.io.hub import Hub
from openbess.plant import Measurements, Plant, SiteMeasurements

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Folder of the built-in DBC files and mappings.
DATA_DIR = Path(__file__).resolve().parent / "data"

#: Built-in mappings, name -> TOML file in :data:`DATA_DIR`.
BUILTIN_MAPPINGS = {"foxbms": "foxbms.toml"}

#: Array targets (one value per cell, sensor or string) and what sizes them.
ARRAY_TARGETS = {
    "cell_voltage_v": "n_cells",
    "cell_voltage_invalid": "n_cells",
    "cell_temperature_degc": "n_temp_sensors",
    "cell_temperature_invalid": "n_temp_sensors",
    "string_current_a": "n_strings",
}

#: Scalar targets.
SCALAR_TARGETS = (
    "pack_current_a",
    "pack_voltage_v",
    "bus_voltage_v",
    "soc",
    "soh",
    "charge_current_limit_a",
    "discharge_current_limit_a",
    "contactor_closed",
    "bms_error",
)

#: Every monitoring input a mapping may feed.
TARGETS = (*ARRAY_TARGETS, *SCALAR_TARGETS)


# --------------------------------------------------------------------------------- mapping
@dataclass(frozen=True, slots=True)
class SignalMap:
    """One row of a mapping table: a DBC signal (or a numbered family of them) to an input.

    Parameters
    ----------
    signal : str
        DBC signal name. With ``count > 1`` it is a :meth:`str.format` pattern that may use
        ``{i}`` (the input index), ``{k}`` (0-based row offset) and ``{j}`` (``k + 1``), e.g.
        ``cellVoltage_{i:03d}``.
    target : str
        Monitoring input, one of :data:`TARGETS`.
    index : int
        Index of the first value for array targets (cell, sensor or string number).
    count : int
        Number of signals the pattern expands to (consecutive indices).
    scale, offset : float
        SI value = decoded DBC physical value * ``scale`` + ``offset`` (e.g. 0.001 for mV,
        0.01 for percent, -1 for a BMS that counts charge current positive).
    """

    signal: str
    target: str
    index: int = 0
    count: int = 1
    scale: float = 1.0
    offset: float = 0.0

    def expand(self) -> list[tuple[str, int]]:
        """The signal names and input indices this row stands for.

        Returns
        -------
        list of (str, int)
            ``(signal name, index)`` pairs.

        Raises
        ------
        ValueError
            If the pattern does not format.
        """
        if self.count == 1 and "{" not in self.signal:
            return [(self.signal, self.index)]
        out = []
        for k in range(self.count):
            i = self.index + k
            try:
                name = self.signal.format(i=i, k=k, j=k + 1)
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"signal pattern {self.signal!r} does not format: {err}") from None
            out.append((name, i))
        return out


@dataclass(frozen=True, slots=True)
class BmsMapping:
    """A BMS's CAN dialect: its DBC file and the table from its signals to monitoring inputs.

    Parameters
    ----------
    name : str
        Short name (``foxbms``).
    dbc_path : pathlib.Path
        The DBC (or any format cantools reads: KCD, SYM, ARXML).
    signals : tuple of SignalMap
        The table.
    description : str
        Free text (source, version).
    """

    name: str
    dbc_path: Path
    signals: tuple[SignalMap, ...]
    description: str = ""

    @classmethod
    def builtin(cls, name: str = "foxbms") -> BmsMapping:
        """A mapping shipped with openbess.

        Parameters
        ----------
        name : str
            One of :data:`BUILTIN_MAPPINGS`.

        Returns
        -------
        BmsMapping
            The mapping.

        Raises
        ------
        ConfigError
            If there is no such built-in mapping.
        """
        if name not in BUILTIN_MAPPINGS:
            raise ConfigError(
                f"unknown built-in BMS mapping {name!r}; known: {sorted(BUILTIN_MAPPINGS)}"
            )
        return cls.load(DATA_DIR / BUILTIN_MAPPINGS[name])

    @classmethod
    def load(cls, path: str | Path) -> BmsMapping:
        """Read a mapping table from TOML (format in ``docs/can.md``).

        Parameters
        ----------
        path : str or pathlib.Path
            The TOML file; its ``dbc`` is resolved relative to the file's folder.

        Returns
        -------
        BmsMapping
            The validated mapping (every signal exists in the DBC).

        Raises
        ------
        DataError
            If the file is not valid TOML (names the line and column).
        ConfigError
            If a field is missing or wrong (names the file and the field).
        """
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"{p}: cannot read the BMS mapping: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise DataError(f"{p}: invalid TOML: {err}") from None
        return cls.from_dict(doc, where=str(p), base=p.parent)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str, base: Path) -> BmsMapping:
        """Validate a parsed mapping document.

        Parameters
        ----------
        doc : mapping
            ``name``, ``dbc``, optional ``description`` and a ``signal`` array of tables.
        where : str
            Name of the source, for messages.
        base : pathlib.Path
            Folder a relative ``dbc`` is resolved against.

        Returns
        -------
        BmsMapping
            The mapping, checked against its DBC.

        Raises
        ------
        ConfigError
            Naming ``where`` and the field.
        """
        known = {"name", "dbc", "description", "signal"}
        for key in doc:
            if key not in known:
                raise ConfigError(f"{where}: unknown field {key!r} (allowed: {sorted(known)})")
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: name must be a non-empty string, got {name!r}")
        dbc = doc.get("dbc")
        if not isinstance(dbc, str) or not dbc:
            raise ConfigError(f"{where}: dbc must be the path of a DBC file, got {dbc!r}")
        description = doc.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{where}: description must be a string")
        rows = doc.get("signal")
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{where}: signal must be a non-empty array of tables")
        signals = tuple(_signal_row(row, f"{where}: signal[{n}]") for n, row in enumerate(rows))
        dbc_path = Path(dbc) if Path(dbc).is_absolute() else base / dbc
        mapping = cls(name, dbc_path, signals, description)
        mapping.check(where)
        return mapping

    def with_dbc(self, dbc_path: str | Path) -> BmsMapping:
        """The same table against another DBC (e.g. the DBC of one's own foxBMS build).

        Raises
        ------
        ConfigError
            If a mapped signal is missing from that DBC.
        """
        mapping = replace(self, dbc_path=Path(dbc_path))
        mapping.check(str(dbc_path))
        return mapping

    def database(self) -> Any:
        """Load the DBC with cantools.

        Returns
        -------
        cantools.database.can.Database
            The database.

        Raises
        ------
        DataError
            If the file cannot be read or parsed.
        """
        try:
            stat = self.dbc_path.stat()
        except OSError as err:
            raise DataError(f"{self.dbc_path}: cannot read the DBC: {err.strerror}") from None
        return _load_database(str(self.dbc_path), stat.st_mtime_ns, stat.st_size)

    def check(self, where: str) -> None:
        """Raise ConfigError if a mapped signal is not in the DBC or is mapped twice."""
        db = self.database()
        names = {s.name for m in db.messages for s in m.signals}
        seen: dict[str, str] = {}
        for row in self.signals:
            try:
                expanded = row.expand()
            except ValueError as err:
                raise ConfigError(f"{where}: {err}") from None
            for sig, _ in expanded:
                if sig not in names:
                    raise ConfigError(
                        f"{where}: signal {sig!r} (target {row.target}) is not in {self.dbc_path}"
                    )
                if sig in seen:
                    raise ConfigError(
                        f"{where}: signal {sig!r} is mapped twice ({seen[sig]} and {row.target})"
                    )
                seen[sig] = row.target


@functools.lru_cache(maxsize=8)
def _load_database(path: str, mtime_ns: int, size: int) -> Any:
    """Parse a DBC once per file version (the databases are only read, so they are shared)."""
    import cantools  # lazy: only CAN users pay for it

    try:
        return cantools.database.load_file(path, strict=False)
    except OSError as err:
        raise DataError(f"{path}: cannot read the DBC: {err.strerror}") from None
    except Exception as err:  # cantools raises its own parse errors
        raise DataError(f"{path}: cannot parse the DBC: {err}") from None


def _signal_row(row: Any, where: str) -> SignalMap:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: must be a table")
    allowed = {"signal", "target", "index", "count", "scale", "offset"}
    for key in row:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r} (allowed: {sorted(allowed)})")
    signal, target = row.get("signal"), row.get("target")
    if not isinstance(signal, str) or not signal:
        raise ConfigError(f"{where}.signal must be a DBC signal name, got {signal!r}")
    if target not in TARGETS:
        raise ConfigError(f"{where}.target = {target!r}: must be one of {list(TARGETS)}")
    index, count = row.get("index", 0), row.get("count", 1)
    for field_name, value, low in (("index", index, 0), ("count", count, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{where}.{field_name} = {value!r}: must be an integer >= {low}")
    if target in SCALAR_TARGETS and (index != 0 or count != 1):
        raise ConfigError(f"{where}: target {target} is a single value (no index or count)")
    scale, offset = row.get("scale", 1.0), row.get("offset", 0.0)
    for field_name, value in (("scale", scale), ("offset", offset)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}.{field_name} = {value!r}: must be a finite number")
    if scale == 0:
        raise ConfigError(f"{where}.scale must not be 0")
    return SignalMap(str(signal), str(target), int(index), int(count), float(scale), float(offset))


def mapping_for(dbc: str) -> BmsMapping:
    """The mapping ``interfaces.can.dbc`` names.

    Parameters
    ----------
    dbc : str
        ``foxbms`` (built-in), the path of a mapping ``.toml``, or the path of a DBC that uses
        foxBMS 2's signal names (the built-in foxBMS table applied to that file).

    Returns
    -------
    BmsMapping
        The mapping.

    Raises
    ------
    ConfigError
        If ``dbc`` is none of those.
    """
    if dbc in BUILTIN_MAPPINGS:
        return BmsMapping.builtin(dbc)
    path = Path(dbc)
    if path.suffix.lower() == ".toml":
        return BmsMapping.load(path)
    if path.suffix.lower() in (".dbc", ".kcd", ".sym", ".arxml"):
        if not path.is_file():
            raise ConfigError(f"interfaces.can.dbc = {dbc!r}: no such file")
        return BmsMapping.builtin("foxbms").with_dbc(path)
    raise ConfigError(
        f"interfaces.can.dbc = {dbc!r}: expected 'foxbms', a mapping .toml file or a .dbc file"
    )


# --------------------------------------------------------------------------------- layout
@dataclass(frozen=True, slots=True)
class SlotLayout:
    """Where each monitoring input lives in the link's flat value array.

    Parameters
    ----------
    n_cells, n_temp_sensors, n_strings : int
        Sizes of the array inputs.
    spans : dict
        Target -> ``(start, size)`` in the flat array.
    mapped : numpy.ndarray of bool
        Per slot: some signal feeds it.
    """

    n_cells: int
    n_temp_sensors: int
    n_strings: int
    spans: dict[str, tuple[int, int]]
    mapped: BoolArray

    @classmethod
    def build(cls, n_cells: int, n_temp_sensors: int, n_strings: int) -> SlotLayout:
        """Lay out every target (mapped mask all False)."""
        sizes = {"n_cells": n_cells, "n_temp_sensors": n_temp_sensors, "n_strings": n_strings}
        spans: dict[str, tuple[int, int]] = {}
        start = 0
        for target in TARGETS:
            size = sizes[ARRAY_TARGETS[target]] if target in ARRAY_TARGETS else 1
            spans[target] = (start, size)
            start += size
        return cls(n_cells, n_temp_sensors, n_strings, spans, np.zeros(start, dtype=bool))

    @property
    def n_slots(self) -> int:
        """Length of the flat arrays."""
        return int(self.mapped.size)

    def slot(self, target: str, index: int) -> int | None:
        """Flat slot of ``target[index]``, or None when the index is beyond the pack."""
        start, size = self.spans[target]
        return start + index if 0 <= index < size else None

    def is_mapped(self, target: str) -> bool:
        """True if any slot of ``target`` is fed by a signal."""
        start, size = self.spans[target]
        return bool(self.mapped[start : start + size].any())


@dataclass(frozen=True, slots=True)
class CanReading:
    """The latest values received from the BMS and their age (an immutable copy).

    Parameters
    ----------
    layout : SlotLayout
        Where each input lives.
    values : numpy.ndarray
        SI values per slot (NaN when never received).
    age_s : numpy.ndarray
        Wall seconds since each value arrived (inf when never received).
    stale_timeout_s : float
        Values older than this are stale [s].
    """

    layout: SlotLayout
    values: FloatArray
    age_s: FloatArray
    stale_timeout_s: float

    def array(self, target: str) -> tuple[FloatArray, BoolArray, BoolArray]:
        """Values, freshness and mapped mask of an input.

        Returns
        -------
        tuple of numpy.ndarray
            ``(values, fresh, mapped)``; fresh is False where stale or never received.
        """
        start, size = self.layout.spans[target]
        sl = slice(start, start + size)
        v = self.values[sl]
        fresh = (self.age_s[sl] <= self.stale_timeout_s) & np.isfinite(v)
        return v, fresh, self.layout.mapped[sl]

    def scalar(self, target: str) -> float | None:
        """The fresh value of a scalar input, or None when stale, never received or unmapped."""
        v, fresh, _ = self.array(target)
        return float(v[0]) if bool(fresh[0]) else None

    def is_mapped(self, target: str) -> bool:
        """True if the mapping feeds ``target``."""
        return self.layout.is_mapped(target)


def _flagged_valid(
    values: FloatArray,
    fresh: BoolArray,
    flag: FloatArray,
    flag_fresh: BoolArray,
    flag_mapped: BoolArray,
) -> BoolArray:
    """Valid = fresh, finite and not flagged invalid by the BMS (a mapped flag must be fresh)."""
    flag_ok = ~flag_mapped | (flag_fresh & (flag == 0.0))
    return np.asarray(fresh & np.isfinite(values) & flag_ok, dtype=bool)


def default_sensor_cells(n_temp_sensors: int, n_cells: int) -> npt.NDArray[np.intp]:
    """Spread ``n_temp_sensors`` evenly over ``n_cells`` (when the inner plant has no map).

    Returns
    -------
    numpy.ndarray of int
        Cell index of each sensor.
    """
    if n_temp_sensors <= 0:
        return np.zeros(0, dtype=np.intp)
    pos = (np.arange(n_temp_sensors) + 0.5) * n_cells / n_temp_sensors
    return np.minimum(pos.astype(np.intp), n_cells - 1)


def measurements_from(reading: CanReading, template: Measurements) -> Measurements:
    """Battery Measurements from CAN values (stale -> invalid), the rest from ``template``.

    Cell voltages, temperatures and string currents come from CAN only (unmapped or stale =
    invalid); a single-string pack without a string-current signal uses the pack current.
    Pack voltage, bus voltage and contactor feedback come from CAN when the mapping feeds them
    (stale: NaN, NaN, open) and from ``template`` otherwise.

    Parameters
    ----------
    reading : CanReading
        Latest CAN values.
    template : Measurements
        The inner plant's Measurements (time, sensor positions, unmapped quantities).

    Returns
    -------
    Measurements
        Same shapes as the layout.
    """
    lay = reading.layout
    v, v_fresh, _ = reading.array("cell_voltage_v")
    f, f_fresh, f_mapped = reading.array("cell_voltage_invalid")
    v_valid = _flagged_valid(v, v_fresh, f, f_fresh, f_mapped)
    t, t_fresh, _ = reading.array("cell_temperature_degc")
    tf, tf_fresh, tf_mapped = reading.array("cell_temperature_invalid")
    t_valid = _flagged_valid(t, t_fresh, tf, tf_fresh, tf_mapped)
    i_str, i_fresh, i_mapped = reading.array("string_current_a")
    i_str = i_str.copy()
    i_valid = i_fresh & i_mapped
    if lay.n_strings == 1 and not bool(i_mapped[0]) and reading.is_mapped("pack_current_a"):
        pack_i = reading.scalar("pack_current_a")
        i_str[0] = pack_i if pack_i is not None else math.nan
        i_valid = np.array([pack_i is not None])
    sensor_cell = template.temperature_sensor_cell
    if sensor_cell.shape != (lay.n_temp_sensors,):
        sensor_cell = default_sensor_cells(lay.n_temp_sensors, lay.n_cells)

    def _value(target: str, fallback: float) -> float:
        if not reading.is_mapped(target):
            return fallback
        x = reading.scalar(target)
        return x if x is not None else math.nan

    if reading.is_mapped("contactor_closed"):
        closed_v = reading.scalar("contactor_closed")
        closed = closed_v is not None and closed_v != 0.0
    else:
        closed = template.contactor_closed
    return Measurements(
        time_s=template.time_s,
        cell_voltage_v=np.where(v_valid, v, np.nan),
        cell_voltage_valid=v_valid,
        cell_temperature_degc=np.where(t_valid, t, np.nan),
        cell_temperature_valid=t_valid,
        temperature_sensor_cell=np.asarray(sensor_cell, dtype=np.intp),
        string_current_a=np.where(i_valid, i_str, np.nan),
        string_current_valid=np.asarray(i_valid, dtype=bool),
        pack_voltage_v=_value("pack_voltage_v", template.pack_voltage_v),
        contactor_closed=bool(closed),
        bus_voltage_v=_value("bus_voltage_v", template.bus_voltage_v),
    )


def bms_current_caps(reading: CanReading) -> tuple[float, float]:
    """The real BMS's own charge and discharge current limits [A] (inf when not mapped).

    A mapped limit that is stale or not finite counts as 0 A, and so does a mapped
    ``bms_error`` that is set or stale: without word from the BMS no current may flow.

    Returns
    -------
    tuple of float
        ``(charge_current_limit_a, discharge_current_limit_a)``, magnitudes >= 0.
    """
    caps = []
    for target in ("charge_current_limit_a", "discharge_current_limit_a"):
        if not reading.is_mapped(target):
            caps.append(math.inf)
            continue
        x = reading.scalar(target)
        caps.append(max(0.0, x) if x is not None else 0.0)
    if reading.is_mapped("bms_error"):
        err = reading.scalar("bms_error")
        if err is None or err != 0.0:
            return 0.0, 0.0
    return caps[0], caps[1]


# --------------------------------------------------------------------------------- the link
@dataclass(frozen=True, slots=True)
class _Entry:
    slot: int
    scale: float
    offset: float


@dataclass(frozen=True, slots=True)
class _Decoder:
    message: Any
    length: int
    extended: bool
    entries: dict[str, _Entry]


def _compile(
    mapping: BmsMapping, db: Any, layout: SlotLayout
) -> tuple[dict[int, _Decoder], BoolArray]:
    """Per frame id: the cantools message and the slots its signals feed."""
    by_signal: dict[str, tuple[SignalMap, int]] = {}
    for row in mapping.signals:
        for sig, idx in row.expand():
            by_signal[sig] = (row, idx)
    mapped = np.zeros(layout.n_slots, dtype=bool)
    decoders: dict[int, _Decoder] = {}
    for message in db.messages:
        entries: dict[str, _Entry] = {}
        for s in message.signals:
            hit = by_signal.get(s.name)
            if hit is None:
                continue
            row, idx = hit
            slot = layout.slot(row.target, idx)
            if slot is None:
                continue
            entries[s.name] = _Entry(slot, row.scale, row.offset)
            mapped[slot] = True
        if entries:
            decoders[int(message.frame_id)] = _Decoder(
                message, int(message.length), bool(message.is_extended_frame), entries
            )
    return decoders, mapped


class CanBmsLink:
    """Receives a real BMS's frames and keeps the latest value of every monitoring input.

    Implements the :class:`~openbess.io.runtime.Interface` protocol (``name = "can"``).

    Parameters
    ----------
    config : CanConfig
        ``interface`` and ``channel`` (python-can), ``bitrate``, ``dbc`` (see
        :func:`mapping_for`) and ``stale_timeout_s``.
    n_cells : int
        Series cells of the pack (the site's), >= 1.
    n_temp_sensors : int
        Temperature sensors of the pack, >= 0.
    n_strings : int
        Parallel strings, >= 1.
    mapping : BmsMapping or None
        Overrides ``config.dbc``.
    clock : callable
        Monotonic wall clock [s] used to stamp frames and age values (injectable for tests).

    Raises
    ------
    ConfigError
        If the mapping cannot provide every cell voltage or temperature of the pack.
    ValueError
        If a size is not a positive integer.
    """

    name = "can"

    def __init__(
        self,
        config: CanConfig,
        n_cells: int,
        n_temp_sensors: int,
        n_strings: int = 1,
        *,
        mapping: BmsMapping | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for label, value, low in (
            ("n_cells", n_cells, 1),
            ("n_temp_sensors", n_temp_sensors, 0),
            ("n_strings", n_strings, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ValueError(f"CanBmsLink {label} must be an integer >= {low}, got {value!r}")
        self.config = config
        self.mapping = mapping if mapping is not None else mapping_for(config.dbc)
        self._db = self.mapping.database()
        layout = SlotLayout.build(int(n_cells), int(n_temp_sensors), int(n_strings))
        self._decoders, mapped = _compile(self.mapping, self._db, layout)
        self.layout = replace(layout, mapped=mapped)
        self._known_ids = {(int(m.frame_id), bool(m.is_extended_frame)) for m in self._db.messages}
        self._check_coverage()
        self._clock = clock
        self._lock = threading.Lock()
        self._values = np.full(self.layout.n_slots, np.nan)
        self._stamps = np.full(self.layout.n_slots, -np.inf)
        #: Frame counters: ``frames`` (received), ``decoded``, ``ignored`` (in the DBC but not
        #: mapped), ``rejected`` (sum of :attr:`rejected`).
        self.counters: dict[str, int] = {"frames": 0, "decoded": 0, "ignored": 0, "rejected": 0}
        #: Refused frames by reason (``unknown_id``, ``wrong_length``, ``undecodable``,
        #: ``bad_value``, ``error_frame``, ``remote_frame``, ``bus_error``).
        self.rejected: dict[str, int] = {}
        self._hub: Hub | None = None
        self._bus: Any = None
        self._notifier: Any = None

    def _check_coverage(self) -> None:
        lay = self.layout
        for target, size, what in (
            ("cell_voltage_v", lay.n_cells, "cell voltages"),
            ("cell_temperature_degc", lay.n_temp_sensors, "temperature sensors"),
        ):
            start, _ = lay.spans[target]
            missing = np.flatnonzero(~lay.mapped[start : start + size])
            if missing.size:
                raise ConfigError(
                    f"BMS mapping {self.mapping.name!r} provides no signal for {what} "
                    f"{missing[:5].tolist()}{'...' if missing.size > 5 else ''} of the "
                    f"{size} the site has (interfaces.can.dbc = {self.config.dbc!r})"
                )
        start, size = lay.spans["string_current_a"]
        if not lay.mapped[start : start + size].all() and not (
            lay.n_strings == 1 and lay.is_mapped("pack_current_a")
        ):
            log.warning(
                "BMS mapping %r has no current signal for every string: those strings will read "
                "invalid",
                self.mapping.name,
            )

    # ------------------------------------------------------------------ Interface
    def start(self, hub: Hub | None) -> None:
        """Open the bus and start receiving (python-can Notifier thread).

        Parameters
        ----------
        hub : Hub or None
            Refused frames are counted on it as ``can.<reason>``.

        Raises
        ------
        ConfigError
            If python-can cannot open the interface.
        """
        import can  # lazy: only CAN users pay for it

        if self._bus is not None:
            return
        self._hub = hub
        cfg = self.config
        try:
            self._bus = can.Bus(interface=cfg.interface, channel=cfg.channel, bitrate=cfg.bitrate)
        except Exception as err:  # python-can raises per backend (CanError, OSError, ImportError)
            raise ConfigError(
                f"interfaces.can: cannot open {cfg.interface}:{cfg.channel} "
                f"({type(err).__name__}: {err})"
            ) from None
        self._notifier = can.Notifier(self._bus, [_Receiver(self)], timeout=0.2)
        log.info(
            "CAN link on %s:%s with the %s mapping", cfg.interface, cfg.channel, self.mapping.name
        )

    def stop(self) -> None:
        """Stop the notifier and close the bus (idempotent)."""
        notifier, bus = self._notifier, self._bus
        self._notifier = self._bus = None
        if notifier is not None:
            notifier.stop(timeout=2.0)
        if bus is not None:
            bus.shutdown()

    # ------------------------------------------------------------------ receive
    def _reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            self.counters["rejected"] += 1
        if self._hub is not None:
            self._hub.reject(self.name, reason)

    def receive(self, msg: Any) -> None:
        """Decode one frame into the latest values (never raises; bad frames are counted).

        Parameters
        ----------
        msg : can.Message
            The frame.
        """
        now = self._clock()
        with self._lock:
            self.counters["frames"] += 1
        try:
            if msg.is_error_frame:
                self._reject("error_frame")
                return
            if msg.is_remote_frame:
                self._reject("remote_frame")
                return
            fid, extended = int(msg.arbitration_id), bool(msg.is_extended_id)
            dec = self._decoders.get(fid)
            if dec is None or dec.extended != extended:
                if dec is None and (fid, extended) in self._known_ids:
                    with self._lock:
                        self.counters["ignored"] += 1
                else:
                    self._reject("unknown_id")
                return
            data = bytes(msg.data)
            if int(msg.dlc) != dec.length or len(data) != dec.length:
                self._reject("wrong_length")
                return
            try:
                decoded = dec.message.decode(data, decode_choices=False)
            except Exception:  # cantools DecodeError, unknown multiplexer id...
                self._reject("undecodable")
                return
            slots: list[int] = []
            vals: list[float] = []
            for name, raw in decoded.items():
                entry = dec.entries.get(name)
                if entry is None:
                    continue
                x = float(raw) * entry.scale + entry.offset
                if not math.isfinite(x):
                    self._reject("bad_value")
                    return
                slots.append(entry.slot)
                vals.append(x)
            with self._lock:
                if slots:
                    self._values[slots] = vals
                    self._stamps[slots] = now
                self.counters["decoded"] += 1
        except Exception:  # the notifier thread must survive anything
            log.exception("CAN frame handling failed")
            self._reject("undecodable")

    def bus_error(self, exc: Exception) -> None:
        """Count an error raised by the bus while receiving (the notifier keeps going)."""
        log.warning("CAN bus error: %s", exc)
        self._reject("bus_error")

    # ------------------------------------------------------------------ read
    def reading(self) -> CanReading:
        """A copy of the latest values with their age.

        Returns
        -------
        CanReading
            Values, ages [s] and the stale timeout.
        """
        now = self._clock()
        with self._lock:
            values = self._values.copy()
            stamps = self._stamps.copy()
        return CanReading(self.layout, values, now - stamps, float(self.config.stale_timeout_s))

    def counts(self) -> dict[str, int]:
        """Frame counters and refusals (``rejected.<reason>``), for status displays."""
        with self._lock:
            out = dict(self.counters)
            out.update({f"rejected.{k}": n for k, n in self.rejected.items()})
        return out


class _Receiver:
    """Notifier listener: frames to :meth:`CanBmsLink.receive`, errors counted (keeps running)."""

    def __init__(self, link: CanBmsLink) -> None:
        self._link = link

    def __call__(self, msg: Any) -> None:
        self._link.receive(msg)

    def on_error(self, exc: Exception) -> None:
        self._link.bus_error(exc)


# --------------------------------------------------------------------------------- plant
class CanPlant:
    """A plant whose battery Measurements come from a real BMS over CAN.

    Site meters, time and actuation go to the ``inner`` plant (the twin, or the real converter
    adapter); the battery sensors come from :class:`CanBmsLink`. Every actuation's DC current
    caps are narrowed to the BMS's own charge and discharge current limits before it is
    written (see :func:`bms_current_caps`).

    Parameters
    ----------
    inner : Plant
        The plant to wrap.
    link : CanBmsLink
        The CAN link (started by ``openbess run`` as an interface).
    """

    def __init__(self, inner: Plant, link: CanBmsLink) -> None:
        self.inner = inner
        self.link = link
        #: The inner plant's own Measurements at the latest read (e.g. to feed a simulated BMS).
        self.inner_measurements: Measurements | None = None
        #: The actuation actually written at the latest write.
        self.last_actuation: Actuation | None = None
        #: Writes whose current caps the BMS limits narrowed.
        self.capped_writes = 0
        self._stale_logged = False

    def advance_to(self, time_s: float) -> None:
        """Let the inner plant advance to ``time_s`` [s, Unix UTC]."""
        self.inner.advance_to(time_s)

    def read(self) -> tuple[Measurements, SiteMeasurements]:
        """Battery Measurements from CAN (stale values invalid) and the inner site meters.

        Returns
        -------
        tuple of (Measurements, SiteMeasurements)
            The BMS's and the EMS's inputs.
        """
        inner_meas, site = self.inner.read()
        self.inner_measurements = inner_meas
        meas = measurements_from(self.link.reading(), inner_meas)
        stale = not bool(meas.cell_voltage_valid.any())
        if stale and not self._stale_logged:
            log.warning("no fresh cell voltage from the BMS on CAN: cells read invalid")
        self._stale_logged = stale
        return meas, site

    def write(self, actuation: Actuation) -> None:
        """Write ``actuation`` with its DC current caps narrowed to the BMS's own limits.

        Parameters
        ----------
        actuation : Actuation
            What the controller asks for.
        """
        ccl, dcl = bms_current_caps(self.link.reading())
        out = actuation
        if ccl < actuation.charge_current_limit_a or dcl < actuation.discharge_current_limit_a:
            out = replace(
                actuation,
                charge_current_limit_a=min(actuation.charge_current_limit_a, ccl),
                discharge_current_limit_a=min(actuation.discharge_current_limit_a, dcl),
            )
            self.capped_writes += 1
        self.last_actuation = out
        self.inner.write(out)


# --------------------------------------------------------------------------------- the peer
def values_from_measurements(meas: Measurements, **scalars: float) -> dict[str, Any]:
    """Peer values (target -> value or array) from a Measurements and scalar extras.

    Parameters
    ----------
    meas : Measurements
        Cell voltages, temperatures, string currents, pack and bus voltage, contactor.
    **scalars : float
        Further targets, e.g. ``soc=0.5, charge_current_limit_a=100.0``.

    Returns
    -------
    dict
        For :meth:`BmsPeer.set_values`.
    """
    out: dict[str, Any] = {
        "cell_voltage_v": np.where(meas.cell_voltage_valid, meas.cell_voltage_v, 0.0),
        "cell_voltage_invalid": (~meas.cell_voltage_valid).astype(np.float64),
        "cell_temperature_degc": np.where(
            meas.cell_temperature_valid, meas.cell_temperature_degc, 0.0
        ),
        "cell_temperature_invalid": (~meas.cell_temperature_valid).astype(np.float64),
        "string_current_a": np.where(meas.string_current_valid, meas.string_current_a, 0.0),
        "pack_current_a": float(
            np.sum(np.where(meas.string_current_valid, meas.string_current_a, 0.0))
        ),
        "pack_voltage_v": float(meas.pack_voltage_v),
        "bus_voltage_v": float(meas.bus_voltage_v),
        "contactor_closed": 1.0 if meas.contactor_closed else 0.0,
    }
    out.update({k: float(v) for k, v in scalars.items()})
    return out


@dataclass(frozen=True, slots=True)
class _Group:
    message: Any
    mux: int | None
    signals: tuple[Any, ...]
    mapped: tuple[tuple[Any, str, int, float, float], ...]


class BmsPeer:
    """A simulated BMS: encodes values with a mapping's DBC and sends them on a CAN bus.

    Parameters
    ----------
    mapping : BmsMapping
        The dialect (the same one the link decodes with).
    bus : can.BusABC
        An open python-can bus (e.g. ``can.Bus(interface="virtual", channel=...)``).
    n_cells, n_temp_sensors, n_strings : int
        Pack sizes: frames are sent for these values only.
    period_s : float
        Send period of the background thread [s, wall].
    source : callable or None
        Called before every send for fresh values (target -> value or array); otherwise the
        values given to :meth:`set_values` are sent.
    """

    def __init__(
        self,
        mapping: BmsMapping,
        bus: Any,
        n_cells: int,
        n_temp_sensors: int,
        n_strings: int = 1,
        period_s: float = 0.1,
        source: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if not period_s > 0:
            raise ValueError(f"BmsPeer period_s must be > 0, got {period_s}")
        self.mapping = mapping
        self.bus = bus
        self.period_s = float(period_s)
        self.source = source
        self.layout = SlotLayout.build(n_cells, n_temp_sensors, n_strings)
        self._groups = self._build_groups(mapping.database())
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Frames sent so far.
        self.sent = 0

    def _build_groups(self, db: Any) -> list[_Group]:
        by_signal: dict[str, tuple[str, int, float, float]] = {}
        for row in self.mapping.signals:
            for sig, idx in row.expand():
                if self.layout.slot(row.target, idx) is not None:
                    by_signal[sig] = (row.target, idx, row.scale, row.offset)
        groups: list[_Group] = []
        for message in db.messages:
            if not any(s.name in by_signal for s in message.signals):
                continue
            selector = next((s for s in message.signals if s.is_multiplexer), None)
            mux_ids: list[int | None] = [None]
            if selector is not None:
                ids = sorted({i for s in message.signals for i in (s.multiplexer_ids or [])})
                mux_ids = list(ids) if ids else [0]
            for mux in mux_ids:
                sigs = tuple(
                    s
                    for s in message.signals
                    if not s.multiplexer_ids or (mux is not None and mux in s.multiplexer_ids)
                )
                mapped = tuple((s, *by_signal[s.name]) for s in sigs if s.name in by_signal)
                if mapped:
                    groups.append(_Group(message, mux, sigs, mapped))
        return groups

    def set_values(self, values: Mapping[str, Any]) -> None:
        """Replace the values to send (target -> scalar or per-index array)."""
        with self._lock:
            self._values = dict(values)

    @staticmethod
    def _clip(sig: Any, raw: float) -> float:
        lo, hi = sig.minimum, sig.maximum
        if lo is not None and hi is not None and lo < hi:
            raw = min(max(raw, float(lo)), float(hi))
        return raw

    def frames(self) -> list[Any]:
        """Encode the current values as one frame per message and multiplexer value.

        Returns
        -------
        list of can.Message
            The frames, in DBC order.
        """
        import can

        if self.source is not None:
            self.set_values(self.source())
        with self._lock:
            values = dict(self._values)
        out = []
        for g in self._groups:
            data: dict[str, float] = {}
            for s in g.signals:
                data[s.name] = self._clip(s, 0.0)
            if g.mux is not None:
                sel = next(s for s in g.signals if s.is_multiplexer)
                data[sel.name] = float(g.mux)
            for s, target, idx, scale, offset in g.mapped:
                given = values.get(target)
                if given is None:
                    continue
                x = (
                    float(np.ravel(np.asarray(given, dtype=np.float64))[idx])
                    if target in ARRAY_TARGETS
                    else float(given)
                )
                if not math.isfinite(x):
                    continue
                data[s.name] = self._clip(s, (x - offset) / scale)
            payload = g.message.encode(data, scaling=True, strict=False)
            out.append(
                can.Message(
                    arbitration_id=int(g.message.frame_id),
                    is_extended_id=bool(g.message.is_extended_frame),
                    data=payload,
                )
            )
        return out

    def send_once(self) -> int:
        """Encode and send every frame once.

        Returns
        -------
        int
            Frames sent.
        """
        frames = self.frames()
        for frame in frames:
            self.bus.send(frame)
        self.sent += len(frames)
        return len(frames)

    def start(self) -> None:
        """Send every ``period_s`` in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bms-peer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.send_once()
            except Exception:
                log.exception("simulated BMS could not send")
            if self._stop.wait(self.period_s):
                return

    def stop(self) -> None:
        """Stop the background thread (idempotent; the bus stays open)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
