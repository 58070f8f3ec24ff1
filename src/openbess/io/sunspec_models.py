"""SunSpec register map: point tables, register packing and per-string statistics.

The point tables below are transcribed from the SunSpec model definitions that pysunspec2 ships
(``sunspec2/models/json/model_<id>.json``: Apache-2.0, SunSpec Alliance); the test suite checks
them against those files point by point (name, type, size, scale-factor reference, access), so
every offset here is the standard one. Only the models the server uses are transcribed:

* 1 (common), 802 (battery base), 803 (lithium-ion bank, one repeating block per string),
  124 (basic storage controls).

Everything here is pure: :func:`pack_model` turns engineering values into registers (applying
the scale factors and the SunSpec "not implemented" values), :func:`string_statistics` reduces
the per-cell arrays of a :class:`~openbess.io.hub.CellView` to per-string figures with numpy.
The server (:mod:`openbess.io.sunspec`) decides which value goes in which point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: First register of the SunSpec map ("SunS" marker).
BASE_ADDRESS = 40000
#: The "SunS" marker as two registers.
SUNS_MARKER = (0x5375, 0x6E53)
#: Model id of the end marker (followed by a length of 0).
END_MODEL_ID = 0xFFFF

#: "Not implemented" register patterns (SunSpec information model).
UNIMPLEMENTED_UINT16 = 0xFFFF
UNIMPLEMENTED_INT16 = 0x8000
UNIMPLEMENTED_UINT32 = 0xFFFFFFFF
UNIMPLEMENTED_SUNSSF = 0x8000
PAD_VALUE = 0x8000

#: Largest value each type can carry without hitting its "not implemented" pattern.
_RANGE: dict[str, tuple[int, int]] = {
    "uint16": (0, 0xFFFE),
    "enum16": (0, 0xFFFE),
    "bitfield16": (0, 0xFFFE),
    "int16": (-0x7FFF, 0x7FFF),
    "uint32": (0, 0xFFFFFFFE),
    "bitfield32": (0, 0xFFFFFFFE),
    "sunssf": (-10, 10),
}


@dataclass(frozen=True, slots=True)
class Point:
    """One SunSpec point.

    Parameters
    ----------
    name : str
        Point name (``SoC``, ``CellVMax``...).
    type : str
        SunSpec type: ``uint16``, ``int16``, ``uint32``, ``enum16``, ``bitfield16``,
        ``bitfield32``, ``sunssf``, ``string``, ``pad``.
    size : int
        Registers.
    sf : str or None
        Name of the scale-factor point of the same model.
    rw : bool
        Writable in the model definition (the server may still refuse writes to it).
    mandatory : bool
        Mandatory in the model definition.
    """

    name: str
    type: str
    size: int
    sf: str | None = None
    rw: bool = False
    mandatory: bool = False


@dataclass(frozen=True, slots=True)
class Model:
    """A SunSpec model: its fixed block and an optional repeating block.

    Parameters
    ----------
    model_id : int
        SunSpec model id.
    fixed : tuple of Point
        Points of the fixed block, starting with ``ID`` and ``L``.
    repeating : tuple of Point
        Points of the repeating block (empty when the model has none).
    """

    model_id: int
    fixed: tuple[Point, ...]
    repeating: tuple[Point, ...] = ()

    @property
    def fixed_size(self) -> int:
        """Registers of the fixed block, ``ID`` and ``L`` included."""
        return sum(p.size for p in self.fixed)

    @property
    def repeat_size(self) -> int:
        """Registers of one repeating block."""
        return sum(p.size for p in self.repeating)

    def length(self, n_repeat: int = 0) -> int:
        """The model's ``L`` (registers after ``ID`` and ``L``) with ``n_repeat`` blocks."""
        return self.fixed_size - 2 + n_repeat * self.repeat_size

    def offsets(self) -> dict[str, int]:
        """Offset of every fixed point from the model's ``ID`` register."""
        out: dict[str, int] = {}
        off = 0
        for p in self.fixed:
            out[p.name] = off
            off += p.size
        return out

    def repeat_offsets(self) -> dict[str, int]:
        """Offset of every repeating point from the start of its block."""
        out: dict[str, int] = {}
        off = 0
        for p in self.repeating:
            out[p.name] = off
            off += p.size
        return out


def _p(
    name: str,
    type_: str,
    size: int = 1,
    sf: str | None = None,
    rw: bool = False,
    mandatory: bool = False,
) -> Point:
    return Point(name, type_, size, sf, rw, mandatory)


COMMON = Model(
    1,
    (
        _p("ID", "uint16", mandatory=True),
        _p("L", "uint16", mandatory=True),
        _p("Mn", "string", 16, mandatory=True),
        _p("Md", "string", 16, mandatory=True),
        _p("Opt", "string", 8),
        _p("Vr", "string", 8),
        _p("SN", "string", 16, mandatory=True),
        _p("DA", "uint16", rw=True),
        _p("Pad", "pad"),
    ),
)

BATTERY = Model(
    802,
    (
        _p("ID", "uint16", mandatory=True),
        _p("L", "uint16", mandatory=True),
        _p("AHRtg", "uint16", sf="AHRtg_SF", mandatory=True),
        _p("WHRtg", "uint16", sf="WHRtg_SF", mandatory=True),
        _p("WChaRteMax", "uint16", sf="WChaDisChaMax_SF", mandatory=True),
        _p("WDisChaRteMax", "uint16", sf="WChaDisChaMax_SF", mandatory=True),
        _p("DisChaRte", "uint16", sf="DisChaRte_SF"),
        _p("SoCMax", "uint16", sf="SoC_SF"),
        _p("SoCMin", "uint16", sf="SoC_SF"),
        _p("SocRsvMax", "uint16", sf="SoC_SF", rw=True),
        _p("SoCRsvMin", "uint16", sf="SoC_SF", rw=True),
        _p("SoC", "uint16", sf="SoC_SF", mandatory=True),
        _p("DoD", "uint16", sf="DoD_SF"),
        _p("SoH", "uint16", sf="SoH_SF"),
        _p("NCyc", "uint32", 2),
        _p("ChaSt", "enum16"),
        _p("LocRemCtl", "enum16", mandatory=True),
        _p("Hb", "uint16"),
        _p("CtrlHb", "uint16", rw=True),
        _p("AlmRst", "uint16", rw=True, mandatory=True),
        _p("Typ", "enum16", mandatory=True),
        _p("State", "enum16", mandatory=True),
        _p("StateVnd", "enum16"),
        _p("WarrDt", "uint32", 2),
        _p("Evt1", "bitfield32", 2, mandatory=True),
        _p("Evt2", "bitfield32", 2, mandatory=True),
        _p("EvtVnd1", "bitfield32", 2, mandatory=True),
        _p("EvtVnd2", "bitfield32", 2, mandatory=True),
        _p("V", "uint16", sf="V_SF", mandatory=True),
        _p("VMax", "uint16", sf="V_SF"),
        _p("VMin", "uint16", sf="V_SF"),
        _p("CellVMax", "uint16", sf="CellV_SF"),
        _p("CellVMaxStr", "uint16"),
        _p("CellVMaxMod", "uint16"),
        _p("CellVMin", "uint16", sf="CellV_SF"),
        _p("CellVMinStr", "uint16"),
        _p("CellVMinMod", "uint16"),
        _p("CellVAvg", "uint16", sf="CellV_SF"),
        _p("A", "int16", sf="A_SF", mandatory=True),
        _p("AChaMax", "uint16", sf="AMax_SF"),
        _p("ADisChaMax", "uint16", sf="AMax_SF"),
        _p("W", "int16", sf="W_SF", mandatory=True),
        _p("ReqInvState", "enum16"),
        _p("ReqW", "int16", sf="W_SF"),
        _p("SetOp", "enum16", rw=True, mandatory=True),
        _p("SetInvState", "enum16", rw=True, mandatory=True),
        _p("AHRtg_SF", "sunssf", mandatory=True),
        _p("WHRtg_SF", "sunssf", mandatory=True),
        _p("WChaDisChaMax_SF", "sunssf", mandatory=True),
        _p("DisChaRte_SF", "sunssf"),
        _p("SoC_SF", "sunssf", mandatory=True),
        _p("DoD_SF", "sunssf"),
        _p("SoH_SF", "sunssf"),
        _p("V_SF", "sunssf", mandatory=True),
        _p("CellV_SF", "sunssf", mandatory=True),
        _p("A_SF", "sunssf", mandatory=True),
        _p("AMax_SF", "sunssf", mandatory=True),
        _p("W_SF", "sunssf"),
    ),
)

LITHIUM_ION = Model(
    803,
    (
        _p("ID", "uint16", mandatory=True),
        _p("L", "uint16", mandatory=True),
        _p("NStr", "uint16", mandatory=True),
        _p("NStrCon", "uint16", mandatory=True),
        _p("ModTmpMax", "int16", sf="ModTmp_SF", mandatory=True),
        _p("ModTmpMaxStr", "uint16"),
        _p("ModTmpMaxMod", "uint16"),
        _p("ModTmpMin", "int16", sf="ModTmp_SF", mandatory=True),
        _p("ModTmpMinStr", "uint16"),
        _p("ModTmpMinMod", "uint16"),
        _p("ModTmpAvg", "int16", sf="ModTmp_SF"),
        _p("StrVMax", "uint16", sf="V_SF"),
        _p("StrVMaxStr", "uint16"),
        _p("StrVMin", "uint16", sf="V_SF"),
        _p("StrVMinStr", "uint16"),
        _p("StrVAvg", "uint16", sf="V_SF"),
        _p("StrAMax", "int16", sf="A_SF"),
        _p("StrAMaxStr", "uint16"),
        _p("StrAMin", "int16", sf="A_SF"),
        _p("StrAMinStr", "uint16"),
        _p("StrAAvg", "int16", sf="A_SF"),
        _p("NCellBal", "uint16"),
        _p("CellV_SF", "sunssf", mandatory=True),
        _p("ModTmp_SF", "sunssf", mandatory=True),
        _p("A_SF", "sunssf", mandatory=True),
        _p("SoH_SF", "sunssf"),
        _p("SoC_SF", "sunssf", mandatory=True),
        _p("V_SF", "sunssf"),
    ),
    (
        _p("StrNMod", "uint16", mandatory=True),
        _p("StrSt", "bitfield32", 2, mandatory=True),
        _p("StrConFail", "enum16"),
        _p("StrSoC", "uint16", sf="SoC_SF", mandatory=True),
        _p("StrSoH", "uint16", sf="SoH_SF"),
        _p("StrA", "int16", sf="A_SF", mandatory=True),
        _p("StrCellVMax", "uint16", sf="CellV_SF", mandatory=True),
        _p("StrCellVMaxMod", "uint16"),
        _p("StrCellVMin", "uint16", sf="CellV_SF", mandatory=True),
        _p("StrCellVMinMod", "uint16"),
        _p("StrCellVAvg", "uint16", sf="CellV_SF", mandatory=True),
        _p("StrModTmpMax", "int16", sf="ModTmp_SF", mandatory=True),
        _p("StrModTmpMaxMod", "uint16"),
        _p("StrModTmpMin", "int16", sf="ModTmp_SF", mandatory=True),
        _p("StrModTmpMinMod", "uint16"),
        _p("StrModTmpAvg", "int16", sf="ModTmp_SF", mandatory=True),
        _p("StrDisRsn", "enum16"),
        _p("StrConSt", "bitfield32", 2),
        _p("StrEvt1", "bitfield32", 2, mandatory=True),
        _p("StrEvt2", "bitfield32", 2),
        _p("StrEvtVnd1", "bitfield32", 2),
        _p("StrEvtVnd2", "bitfield32", 2),
        _p("StrSetEna", "enum16", rw=True),
        _p("StrSetCon", "enum16", rw=True),
        _p("Pad1", "pad", mandatory=True),
        _p("Pad2", "pad", mandatory=True),
    ),
)

STORAGE = Model(
    124,
    (
        _p("ID", "uint16", mandatory=True),
        _p("L", "uint16", mandatory=True),
        _p("WChaMax", "uint16", sf="WChaMax_SF", rw=True, mandatory=True),
        _p("WChaGra", "uint16", sf="WChaDisChaGra_SF", rw=True, mandatory=True),
        _p("WDisChaGra", "uint16", sf="WChaDisChaGra_SF", rw=True, mandatory=True),
        _p("StorCtl_Mod", "bitfield16", rw=True, mandatory=True),
        _p("VAChaMax", "uint16", sf="VAChaMax_SF", rw=True),
        _p("MinRsvPct", "uint16", sf="MinRsvPct_SF", rw=True),
        _p("ChaState", "uint16", sf="ChaState_SF"),
        _p("StorAval", "uint16", sf="StorAval_SF"),
        _p("InBatV", "uint16", sf="InBatV_SF"),
        _p("ChaSt", "enum16"),
        _p("OutWRte", "int16", sf="InOutWRte_SF", rw=True),
        _p("InWRte", "int16", sf="InOutWRte_SF", rw=True),
        _p("InOutWRte_WinTms", "uint16", rw=True),
        _p("InOutWRte_RvrtTms", "uint16", rw=True),
        _p("InOutWRte_RmpTms", "uint16", rw=True),
        _p("ChaGriSet", "enum16", rw=True),
        _p("WChaMax_SF", "sunssf", mandatory=True),
        _p("WChaDisChaGra_SF", "sunssf", mandatory=True),
        _p("VAChaMax_SF", "sunssf"),
        _p("MinRsvPct_SF", "sunssf"),
        _p("ChaState_SF", "sunssf"),
        _p("StorAval_SF", "sunssf"),
        _p("InBatV_SF", "sunssf"),
        _p("InOutWRte_SF", "sunssf"),
    ),
)

#: The models served, in chain order.
MODELS: tuple[Model, ...] = (COMMON, BATTERY, LITHIUM_ION, STORAGE)

#: 802 ``Evt1`` bits (alarm bit, warning bit) per event kind.
EVT1_BITS: dict[str, tuple[int, int]] = {
    "communication": (0, 0),
    "over_temp": (1, 2),
    "under_temp": (3, 4),
    "over_charge_current": (5, 6),
    "over_discharge_current": (7, 8),
    "over_volt": (9, 10),
    "under_volt": (11, 12),
    "under_soc_min": (13, 14),
    "over_soc_max": (15, 16),
    "voltage_imbalance": (17, 17),
    "temperature_imbalance": (18, 19),
    "contactor": (20, 20),
    "other": (25, 26),
}

#: openbess alarm code -> 802 ``Evt1`` event kind (unknown codes map to ``other``).
ALARM_EVENT: dict[str, str] = {
    "cell_overvoltage": "over_volt",
    "cell_undervoltage": "under_volt",
    "charge_overtemperature": "over_temp",
    "discharge_overtemperature": "over_temp",
    "charge_undertemperature": "under_temp",
    "discharge_undertemperature": "under_temp",
    "charge_overcurrent": "over_charge_current",
    "discharge_overcurrent": "over_discharge_current",
    "cell_voltage_invalid": "communication",
    "temperature_invalid": "communication",
    "current_invalid": "communication",
    "precharge_failed": "contactor",
    "contactor_welded": "contactor",
    "contactor_feedback_lost": "contactor",
    "contactor_fault": "contactor",
}

#: Severities (``Snapshot.alarm_severity``) and tiers (``Telemetry.alarms``) that are warnings.
WARNING_LEVELS = frozenset({"warning", "warn", "mol"})


def event_bits(
    alarms: Sequence[str], severity: Mapping[str, str], latched: Sequence[str] = ()
) -> int:
    """The 802 ``Evt1`` bitfield of the active alarms.

    Parameters
    ----------
    alarms : sequence of str
        ``Telemetry.alarms`` (``code:tier`` labels, tier ``mol``, ``rsl`` or ``msl``).
    severity : mapping
        ``Snapshot.alarm_severity`` (code -> ``warning``, ``derate``, ``trip``); wins over the
        tier of the label.
    latched : sequence of str
        Latched fault codes (a latched contactor fault sets ``CONTACTOR_ERROR``).

    Returns
    -------
    int
        The bitfield: a warning sets the ``*_WARNING`` bit, anything more severe the
        ``*_ALARM`` bit.
    """
    bits = 0
    for label in alarms:
        code, _, tier = label.partition(":")
        level = severity.get(code, tier)
        alarm_bit, warning_bit = EVT1_BITS[ALARM_EVENT.get(code, "other")]
        bits |= 1 << (warning_bit if level in WARNING_LEVELS else alarm_bit)
    for code in latched:
        bits |= 1 << EVT1_BITS[ALARM_EVENT.get(code, "other")][0]
    return bits


def scale_factor_for(limit: float, signed: bool, finest: int = -3) -> int:
    """The finest scale factor that can carry ``limit`` in a 16-bit register.

    Parameters
    ----------
    limit : float
        Largest magnitude to represent, in engineering units.
    signed : bool
        ``int16`` (True) or ``uint16`` (False).
    finest : int
        Finest resolution wanted (power of ten).

    Returns
    -------
    int
        Scale factor ``sf`` (value = register x 10**sf), between ``finest`` and 10.

    Raises
    ------
    ValueError
        If ``limit`` is not finite.
    """
    if not math.isfinite(limit):
        raise ValueError(f"scale factor limit must be finite, got {limit}")
    top = 0x7FFF if signed else 0xFFFE
    for sf in range(finest, 11):
        if abs(limit) <= top * 10.0**sf:
            return sf
    return 10


def _regs(value: int, size: int) -> list[int]:
    """Split a non-negative integer into ``size`` big-endian registers."""
    return [(value >> (16 * (size - 1 - k))) & 0xFFFF for k in range(size)]


def pack_point(point: Point, value: float | int | str | None, sf: int | None) -> list[int]:
    """Registers of one point.

    Parameters
    ----------
    point : Point
        The point.
    value : float, int, str or None
        Engineering value (``None`` or NaN: not implemented). Strings for ``string`` points;
        raw integers for enums and bitfields; the exponent for ``sunssf`` points.
    sf : int or None
        Scale factor of the point (value = register x 10**sf); None for unscaled points.

    Returns
    -------
    list of int
        ``point.size`` registers. Numbers beyond the type's range saturate at its ends (never
        at the "not implemented" pattern).
    """
    kind = point.type
    if kind == "pad":
        return [PAD_VALUE] * point.size
    if kind == "string":
        raw = (value if isinstance(value, str) else "").encode("utf-8")[: 2 * point.size]
        raw = raw.ljust(2 * point.size, b"\0")
        return [int.from_bytes(raw[2 * k : 2 * k + 2], "big") for k in range(point.size)]
    if value is None or isinstance(value, str) or not math.isfinite(value):
        if kind in ("int16", "sunssf"):
            return [UNIMPLEMENTED_INT16]
        return _regs(UNIMPLEMENTED_UINT32 if point.size == 2 else UNIMPLEMENTED_UINT16, point.size)
    scaled = value / 10.0**sf if sf is not None else value
    lo, hi = _RANGE[kind]
    n = min(max(round(scaled), lo), hi)
    return _regs(n & (0xFFFFFFFF if point.size == 2 else 0xFFFF), point.size)


def pack_model(
    model: Model,
    values: Mapping[str, float | int | str | None],
    scale: Mapping[str, int | None],
    repeats: Sequence[Mapping[str, float | int | str | None]] = (),
) -> list[int]:
    """Registers of a whole model: ``ID``, ``L``, the fixed block and the repeating blocks.

    Parameters
    ----------
    model : Model
        The model.
    values : mapping
        Point name -> engineering value for the fixed block (missing: not implemented).
    scale : mapping
        Scale-factor point name -> exponent (None or missing: not implemented).
    repeats : sequence of mapping
        One mapping per repeating block.

    Returns
    -------
    list of int
        ``model.length(len(repeats)) + 2`` registers.
    """
    out: list[int] = []
    for p in model.fixed:
        if p.name == "ID":
            out.append(model.model_id)
        elif p.name == "L":
            out.append(model.length(len(repeats)))
        elif p.type == "sunssf":
            out.extend(pack_point(p, scale.get(p.name), None))
        else:
            out.extend(pack_point(p, values.get(p.name), scale.get(p.sf) if p.sf else None))
    for block in repeats:
        for p in model.repeating:
            out.extend(pack_point(p, block.get(p.name), scale.get(p.sf) if p.sf else None))
    return out


def decode_register(point: Point, register: int) -> int:
    """Raw integer of a one-register point (signed for ``int16`` and ``sunssf``)."""
    if point.type in ("int16", "sunssf") and register >= 0x8000:
        return register - 0x10000
    return register


@dataclass(frozen=True, slots=True)
class StringStatistics:
    """Per-string figures from the per-cell arrays (indices 1-based, 0 = unknown).

    Every array has shape ``(n_strings,)``; NaN where no valid cell was available.
    """

    cell_voltage_max_v: FloatArray
    cell_voltage_max_module: IntArray
    cell_voltage_min_v: FloatArray
    cell_voltage_min_module: IntArray
    cell_voltage_avg_v: FloatArray
    temperature_max_degc: FloatArray
    temperature_max_module: IntArray
    temperature_min_degc: FloatArray
    temperature_min_module: IntArray
    temperature_avg_degc: FloatArray
    soc: FloatArray
    string_voltage_v: FloatArray


def _reduce(
    x: FloatArray, cells_per_module: int
) -> tuple[FloatArray, IntArray, FloatArray, IntArray, FloatArray]:
    """Max, module of max, min, module of min and mean along the last axis, NaN-aware."""
    ok = np.isfinite(x)
    n_ok = ok.sum(axis=1)
    any_ok = n_ok > 0
    hi = np.where(ok, x, -np.inf)
    lo = np.where(ok, x, np.inf)
    i_hi = np.argmax(hi, axis=1)
    i_lo = np.argmin(lo, axis=1)
    rows = np.arange(x.shape[0])
    v_hi = np.where(any_ok, hi[rows, i_hi], np.nan)
    v_lo = np.where(any_ok, lo[rows, i_lo], np.nan)
    total = np.where(ok, x, 0.0).sum(axis=1)
    mean = np.divide(total, n_ok, out=np.full(x.shape[0], np.nan), where=any_ok)
    m_hi = np.where(any_ok, i_hi // cells_per_module + 1, 0).astype(np.int64)
    m_lo = np.where(any_ok, i_lo // cells_per_module + 1, 0).astype(np.int64)
    return v_hi, m_hi, v_lo, m_lo, mean


def string_statistics(
    voltage_v: FloatArray,
    temperature_degc: FloatArray,
    soc: FloatArray,
    n_strings: int,
    modules_per_string: int,
) -> StringStatistics:
    """Reduce per-cell arrays (string-major) to per-string figures.

    Parameters
    ----------
    voltage_v : numpy.ndarray
        Cell voltages [V], shape ``(n_cells,)``, NaN when invalid.
    temperature_degc : numpy.ndarray
        Cell temperatures [degC], shape ``(n_cells,)``.
    soc : numpy.ndarray
        Cell SoC [fraction], shape ``(n_cells,)``.
    n_strings : int
        Parallel strings (``cell = string * n_series + k``).
    modules_per_string : int
        Modules per string (cells of a module are consecutive).

    Returns
    -------
    StringStatistics
        Max / min (with the 1-based module holding them) / mean cell voltage and temperature,
        mean SoC and the string voltage (sum of its cells, NaN if one is invalid).

    Raises
    ------
    ValueError
        If the arrays do not split into ``n_strings`` x ``modules_per_string`` equal modules.
    """
    n_cells = voltage_v.size
    if n_strings < 1 or modules_per_string < 1 or n_cells % (n_strings * modules_per_string):
        raise ValueError(
            f"{n_cells} cells do not split into {n_strings} strings of {modules_per_string} modules"
        )
    if temperature_degc.size != n_cells or soc.size != n_cells:
        raise ValueError("voltage_v, temperature_degc and soc must have the same size")
    n_series = n_cells // n_strings
    per_module = n_series // modules_per_string
    v = np.asarray(voltage_v, dtype=np.float64).reshape(n_strings, n_series)
    t = np.asarray(temperature_degc, dtype=np.float64).reshape(n_strings, n_series)
    z = np.asarray(soc, dtype=np.float64).reshape(n_strings, n_series)
    v_hi, vm_hi, v_lo, vm_lo, v_avg = _reduce(v, per_module)
    t_hi, tm_hi, t_lo, tm_lo, t_avg = _reduce(t, per_module)
    z_avg = _reduce(z, per_module)[4]
    v_ok = np.isfinite(v).all(axis=1)
    v_str = np.where(v_ok, np.where(np.isfinite(v), v, 0.0).sum(axis=1), np.nan)
    return StringStatistics(
        cell_voltage_max_v=v_hi,
        cell_voltage_max_module=vm_hi,
        cell_voltage_min_v=v_lo,
        cell_voltage_min_module=vm_lo,
        cell_voltage_avg_v=v_avg,
        temperature_max_degc=t_hi,
        temperature_max_module=tm_hi,
        temperature_min_degc=t_lo,
        temperature_min_module=tm_lo,
        temperature_avg_degc=t_avg,
        soc=z_avg,
        string_voltage_v=v_str,
    )


def locate(
    values: FloatArray, n_strings: int, modules_per_string: int, largest: bool
) -> tuple[int, int]:
    """1-based (string, module) of the largest or smallest valid value (``(0, 0)`` if none).

    Parameters
    ----------
    values : numpy.ndarray
        Per-cell values, string-major, shape ``(n_cells,)``.
    n_strings, modules_per_string : int
        Topology.
    largest : bool
        Locate the maximum (True) or the minimum.

    Returns
    -------
    tuple of int
        String and module numbers, from 1.
    """
    ok = np.isfinite(values)
    if not ok.any():
        return 0, 0
    filled = np.where(ok, values, -np.inf if largest else np.inf)
    i = int(np.argmax(filled) if largest else np.argmin(filled))
    n_series = values.size // n_strings
    per_module = n_series // modules_per_string
    return i // n_series + 1, (i % n_series) // per_module + 1


def extreme_index(values: FloatArray, largest: bool) -> int:
    """1-based index of the largest or smallest finite entry (0 if none)."""
    ok = np.isfinite(values)
    if not ok.any():
        return 0
    filled = np.where(ok, values, -np.inf if largest else np.inf)
    return int(np.argmax(filled) if largest else np.argmin(filled)) + 1


def nan_mean(values: FloatArray) -> float:
    """Mean of the finite entries (NaN if none), without numpy's all-NaN warning."""
    ok = np.isfinite(values)
    n = int(ok.sum())
    return float(values[ok].sum() / n) if n else math.nan


def nan_extreme(values: FloatArray, largest: bool) -> float:
    """Max or min of the finite entries (NaN if none)."""
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan
    return float(values[ok].max() if largest else values[ok].min())


class Layout:
    """Addresses of the model chain for a bank of ``n_strings`` strings.

    The chain is ``SunS`` at :data:`BASE_ADDRESS`, then the :data:`MODELS` in order, then the
    end marker (``0xFFFF``, length 0).

    Parameters
    ----------
    n_strings : int
        Strings in the bank (repeating blocks of model 803).

    Raises
    ------
    ValueError
        If ``n_strings`` is below 1 or the map would not fit below address 65535.
    """

    def __init__(self, n_strings: int) -> None:
        if n_strings < 1:
            raise ValueError(f"n_strings must be >= 1, got {n_strings}")
        self.n_strings = n_strings
        #: Address of the ``ID`` register of each model.
        self.start: dict[int, int] = {}
        addr = BASE_ADDRESS + 2
        for model in MODELS:
            self.start[model.model_id] = addr
            addr += model.length(self.repeats(model)) + 2
        #: Address of the end marker's ``ID``.
        self.end_address = addr
        #: Registers from :data:`BASE_ADDRESS` to the end marker's length, inclusive.
        self.size = addr + 2 - BASE_ADDRESS
        if BASE_ADDRESS + self.size > 0xFFFF:
            raise ValueError(f"{n_strings} strings do not fit in the Modbus address space")
        self._by_name = {m.model_id: m.offsets() for m in MODELS}
        self._by_repeat = {m.model_id: m.repeat_offsets() for m in MODELS}
        self._points = {m.model_id: {p.name: p for p in (*m.fixed, *m.repeating)} for m in MODELS}

    def repeats(self, model: Model) -> int:
        """Repeating blocks of ``model`` in this layout."""
        return self.n_strings if model.repeating else 0

    def address(self, model_id: int, name: str, index: int | None = None) -> int:
        """Address of a point (``index``: 0-based repeating block for repeating points).

        Raises
        ------
        KeyError
            If the model or point is not in the map.
        """
        start = self.start[model_id]
        if index is None:
            return start + self._by_name[model_id][name]
        model = next(m for m in MODELS if m.model_id == model_id)
        if not 0 <= index < self.repeats(model):
            raise KeyError(f"model {model_id} has no repeating block {index}")
        return (
            start + model.fixed_size + index * model.repeat_size + self._by_repeat[model_id][name]
        )

    def point(self, model_id: int, name: str) -> Point:
        """The definition of a point."""
        return self._points[model_id][name]
