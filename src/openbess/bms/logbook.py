"""The BMS logbook: what a stationary battery's BMS keeps for diagnostics and the warranty.

Regulation (EU) 2023/1542 (the Battery Regulation), Article 14 and Annex VII, asks the BMS of a
stationary battery energy storage system to hold up-to-date data on the parameters that
determine its state of health (Annex VII, part A: remaining capacity, capacity fade, remaining
power capability, power fade, remaining round-trip efficiency, evolution of the self-discharge
rate, ohmic resistance) and its expected lifetime (part B: energy throughput, capacity
throughput, harmful events such as deep discharges, time spent at extreme temperatures and time
spent charging at extreme temperatures, negative events). ``docs/logbook.md`` maps each
figure of this module to its item.

:class:`Logbook` is an online accumulator: the BMS calls :meth:`Logbook.update` once per cycle
with plain floats it already has (pack current, voltage, SoC, cell extremes, temperatures, SoH,
capacity and resistance estimates, active alarms). An update is O(1) Python work (a few
microseconds) and memory stays bounded whatever the length of the run:

- counters: charge and energy throughput (DC, and AC when known), equivalent full cycles, time
  charging / discharging / at rest, time at extreme temperatures and charging at them, time in
  alarm, alarm raises by ``code:tier``;
- harmful-event episodes (deep discharge, overvoltage, high and low temperature), each counted
  once per episode (hysteresis ends it) and announced as a :class:`LogbookEvent` for the run
  store's ``events`` table (:meth:`Logbook.pop_events`);
- lifetime extremes with their timestamps;
- time histograms [s] at (SoC bin, temperature bin) and (C-rate bin, temperature bin);
- rainflow cycle counting of the SoC trajectory (ASTM E1049, ``rainflow`` package): the online
  part keeps only the SoC turning points (hysteresis filtered), feeds them to the package in
  chunks and keeps the unclosed residue, which is bounded;
- self-discharge from the SoC drop during long rests;
- per-period records (one per UTC day by default; merged pairwise when too many) for the
  evolution of SoH, resistance, round-trip efficiency and self-discharge.

Persistence: :meth:`Logbook.to_dict` / :meth:`Logbook.from_dict` (JSON-serialisable), and a
``logbook`` table (``run_id``, ``time_s``, ``json``) in the run database, written through a
connection of its own (:func:`save_logbook`, :class:`LogbookWriter`) and read back by
:func:`load_logbook`.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import rainflow  # type: ignore[import-untyped]

from openbess.contract import Telemetry
from openbess.errors import DataError, StorageError
from openbess.storage import SCHEMA_VERSION

__all__ = [
    "LOGBOOK_FORMAT",
    "LOGBOOK_VERSION",
    "PERIOD_COLUMNS",
    "Logbook",
    "LogbookConfig",
    "LogbookEvent",
    "LogbookWriter",
    "Metric",
    "equivalent_full_cycles",
    "histogram_time",
    "load_logbook",
    "rainflow_depth_counts",
    "round_trip_efficiency",
    "save_logbook",
    "soc_turning_points",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

LOGBOOK_FORMAT = "openbess.logbook"
"""Value of the ``format`` key of :meth:`Logbook.to_dict`."""

LOGBOOK_VERSION = 1
"""Version of the :meth:`Logbook.to_dict` layout."""

_NAN = math.nan
_INF = math.inf
_SOC_DIGITS = 3  # turning points are kept on a 0.001 SoC grid: the residue stays bounded

PERIOD_COLUMNS: tuple[str, ...] = (
    "start_s",
    "end_s",
    "elapsed_s",
    "charge_in_ah",
    "charge_out_ah",
    "energy_in_dc_wh",
    "energy_out_dc_wh",
    "energy_in_ac_wh",
    "energy_out_ac_wh",
    "soc_start",
    "soc_end",
    "soh",
    "capacity_ah",
    "resistance_ohm",
    "deep_discharges",
    "time_above_high_s",
    "time_below_low_s",
    "time_charging_extreme_s",
    "self_discharge_soc",
    "self_discharge_time_s",
)
"""Columns of a period record (:attr:`Logbook.periods`). Counters are the period's share
(``*_ah``, ``*_wh``, ``*_s``, ``deep_discharges``, ``self_discharge_soc`` = SoC lost during
qualifying rests, ``self_discharge_time_s`` = their duration); ``soc_start``/``soc_end`` are the
pack SoC at the period's ends; ``soh``, ``capacity_ah``, ``resistance_ohm`` the latest estimates
at its end (None if unknown)."""

# Columns summed when two period records are merged (the others: first / last value).
_PERIOD_ADDITIVE = frozenset(
    {
        "elapsed_s",
        "charge_in_ah",
        "charge_out_ah",
        "energy_in_dc_wh",
        "energy_out_dc_wh",
        "energy_in_ac_wh",
        "energy_out_ac_wh",
        "deep_discharges",
        "time_above_high_s",
        "time_below_low_s",
        "time_charging_extreme_s",
        "self_discharge_soc",
        "self_discharge_time_s",
    }
)
_PERIOD_FIRST = frozenset({"start_s", "soc_start"})

# Lifetime extremes: (name, kind, unit). The value and time live in attributes
# ``_x_<name>`` and ``_xt_<name>``.
_EXTREMES: tuple[tuple[str, str, str], ...] = (
    ("cell_voltage_min_v", "min", "V"),
    ("cell_voltage_max_v", "max", "V"),
    ("temperature_min_degc", "min", "degC"),
    ("temperature_max_degc", "max", "degC"),
    ("soc_cell_min", "min", "1"),
    ("soc_cell_max", "max", "1"),
    ("discharge_current_max_a", "max", "A"),
    ("charge_current_max_a", "max", "A"),
    ("discharge_power_max_w", "max", "W"),
    ("charge_power_max_w", "max", "W"),
)


# --------------------------------------------------------------------------- pure functions


def equivalent_full_cycles(
    charge_in_ah: npt.ArrayLike, charge_out_ah: npt.ArrayLike, capacity_ah: float
) -> FloatArray:
    """Equivalent full cycles from the charge throughput.

    One full cycle moves the capacity out and back in: ``(Q_in + Q_out) / (2 Q_nominal)``.

    Parameters
    ----------
    charge_in_ah : array_like
        Charge put into the battery [Ah] (>= 0).
    charge_out_ah : array_like
        Charge taken out [Ah] (>= 0).
    capacity_ah : float
        Nominal capacity [Ah] (> 0).

    Returns
    -------
    numpy.ndarray
        Equivalent full cycles [1].

    Raises
    ------
    ValueError
        ``capacity_ah`` is not a positive finite number.
    """
    if not (math.isfinite(capacity_ah) and capacity_ah > 0.0):
        raise ValueError(f"capacity_ah must be > 0, got {capacity_ah!r}")
    q_in = np.asarray(charge_in_ah, dtype=np.float64)
    q_out = np.asarray(charge_out_ah, dtype=np.float64)
    out: FloatArray = (q_in + q_out) / (2.0 * capacity_ah)
    return out


def round_trip_efficiency(
    energy_in_wh: npt.ArrayLike,
    energy_out_wh: npt.ArrayLike,
    stored_change_wh: npt.ArrayLike = 0.0,
) -> FloatArray:
    """Round-trip efficiency ``(E_out + dE_stored) / E_in``.

    Energy still stored at the end of the window (``stored_change_wh`` > 0) would come out
    later, so it counts as delivered; leave it 0 for the plain ratio ``E_out / E_in``.

    Parameters
    ----------
    energy_in_wh : array_like
        Energy charged [Wh] (>= 0).
    energy_out_wh : array_like
        Energy discharged [Wh] (>= 0).
    stored_change_wh : array_like
        Change of the stored energy over the window [Wh], end minus start.

    Returns
    -------
    numpy.ndarray
        Efficiency [fraction]; NaN where ``energy_in_wh`` is 0 or NaN.
    """
    e_in = np.asarray(energy_in_wh, dtype=np.float64)
    e_out = np.asarray(energy_out_wh, dtype=np.float64) + np.asarray(
        stored_change_wh, dtype=np.float64
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(e_in > 0.0, e_out / np.where(e_in > 0.0, e_in, 1.0), np.nan)
    return out


def histogram_time(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    dt_s: npt.ArrayLike,
    x_edges: Sequence[float],
    y_edges: Sequence[float],
) -> FloatArray:
    """Time spent in each (x bin, y bin), the outer bins open-ended (vectorised).

    This is the offline form of the logbook's online histograms: bin ``k`` holds
    ``x_edges[k] <= x < x_edges[k + 1]``, except that the first bin also takes everything
    below ``x_edges[1]`` and the last bin everything from ``x_edges[-2]`` up (same for y).
    Samples with a NaN ``x`` or ``y`` are left out.

    Parameters
    ----------
    x, y : array_like
        Sample values (e.g. SoC [fraction] and temperature [degC]), same shape.
    dt_s : array_like
        Time each sample stands for [s] (>= 0), same shape.
    x_edges, y_edges : sequence of float
        Increasing bin edges (at least two each).

    Returns
    -------
    numpy.ndarray
        Time [s], shape ``(len(x_edges) - 1, len(y_edges) - 1)``.
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    w = np.broadcast_to(np.asarray(dt_s, dtype=np.float64), xa.shape).ravel()
    xe = np.asarray(x_edges, dtype=np.float64)
    ye = np.asarray(y_edges, dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    ix = np.searchsorted(xe[1:-1], xa[ok], side="right")
    iy = np.searchsorted(ye[1:-1], ya[ok], side="right")
    nx, ny = xe.size - 1, ye.size - 1
    flat = np.bincount(ix * ny + iy, weights=w[ok], minlength=nx * ny)
    out: FloatArray = flat.reshape(nx, ny).astype(np.float64)
    return out


def soc_turning_points(soc: npt.ArrayLike, hysteresis: float) -> FloatArray:
    """SoC turning points, hysteresis filtered, as the logbook keeps them online.

    The first finite value is a turning point; after it, a running extreme becomes a turning
    point once the SoC has come back from it by ``hysteresis`` or more. The points are rounded
    to 0.001. The running extreme not yet confirmed is the last element.

    Parameters
    ----------
    soc : array_like
        SoC trajectory [fraction]; NaN samples are skipped.
    hysteresis : float
        Smallest swing that counts [fraction of SoC], >= 0.002.

    Returns
    -------
    numpy.ndarray
        Turning points [fraction], alternating, then the unconfirmed running extreme.
    """
    lb = Logbook(
        LogbookConfig(
            nominal_capacity_ah=1.0,
            nominal_energy_wh=1.0,
            cell_voltage_min_v=0.0,
            cell_voltage_max_v=10.0,
            rainflow_hysteresis_soc=hysteresis,
            rainflow_chunk=1 << 30,
        )
    )
    for z in np.asarray(soc, dtype=np.float64).ravel():
        lb._track_soc(float(z))
    return np.asarray(lb._turning_points_now(), dtype=np.float64)


def _depth_bin(edges_inner: Sequence[float], depth: float) -> int:
    return bisect_right(edges_inner, depth)


def _extract(points: Sequence[float]) -> list[tuple[float, float, int, int]]:
    """Rainflow cycles of alternating turning points: (range, count, i_start, i_end).

    ``rainflow.extract_cycles`` treats a series of two points as one reversal only; two points
    are one half cycle.
    """
    if len(points) < 2:
        return []
    if len(points) == 2:
        return [(abs(points[1] - points[0]), 0.5, 0, 1)]
    return [
        (float(rng), float(count), int(i0), int(i1))
        for rng, _mean, count, i0, i1 in rainflow.extract_cycles(points)
    ]


def _residue_start(cycles: Sequence[tuple[float, float, int, int]], last_index: int) -> int:
    """Number of cycles before the final residue half cycles in an ``_extract`` output.

    ``rainflow.extract_cycles`` ends by emitting the unclosed residue as a chain of half
    cycles ending at the last point, with strictly decreasing ranges. A half cycle emitted
    earlier (it contained the then starting point) may chain into the residue's first point,
    but its range is never larger than the residue's first range, which tells them apart.
    """
    k = len(cycles)
    expect_end = last_index
    prev_rng = -_INF
    while k > 0:
        rng, count, i0, i1 = cycles[k - 1]
        if count != 0.5 or i1 != expect_end or not rng > prev_rng:
            break
        k -= 1
        expect_end = i0
        prev_rng = rng
    return k


def rainflow_depth_counts(
    turning_points: Sequence[float], depth_edges: Sequence[float]
) -> FloatArray:
    """Rainflow cycle counts by depth (ASTM E1049, via the ``rainflow`` package), offline.

    Parameters
    ----------
    turning_points : sequence of float
        Alternating SoC turning points [fraction] (e.g. :func:`soc_turning_points`).
    depth_edges : sequence of float
        Increasing depth-of-cycle bin edges [fraction of SoC]; the outer bins are open.

    Returns
    -------
    numpy.ndarray
        Cycle counts per bin (half cycles count 0.5), ``len(depth_edges) - 1`` values.
    """
    inner = list(depth_edges)[1:-1]
    out = np.zeros(len(depth_edges) - 1)
    for rng, count, _i0, _i1 in _extract(list(turning_points)):
        out[_depth_bin(inner, rng)] += count
    return out


# --------------------------------------------------------------------------- configuration


def _linspace(a: float, b: float, n: int) -> tuple[float, ...]:
    return tuple(round(a + (b - a) * k / n, 10) for k in range(n + 1))


_TEMPERATURE_EDGES_DEGC = (-20.0, -10.0, 0.0, *(5.0 * k for k in range(1, 11)), 60.0)
_C_RATE_EDGES = (-2.0, -1.0, -0.5, -0.25, -0.1, -0.01, 0.01, 0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class LogbookConfig:
    """What the logbook needs to know of the battery, and its thresholds.

    Parameters
    ----------
    nominal_capacity_ah : float
        Pack nominal capacity [Ah] (all strings): the reference of EFC, C-rate, capacity fade.
    nominal_energy_wh : float
        Pack nominal energy [Wh]: values the stored-energy change in the SoC-corrected RTE.
    cell_voltage_min_v, cell_voltage_max_v : float
        Cell voltage limits [V]: below the minimum is a deep discharge, above the maximum an
        overvoltage event.
    nominal_resistance_ohm : float
        Pack resistance when new [Ohm] for the power fade; NaN: the first estimate.
    deep_discharge_soc : float
        A cell SoC below this is a deep discharge too [fraction].
    deep_discharge_hysteresis_soc : float
        The episode ends when the weakest cell is this far above the floor [fraction]...
    voltage_hysteresis_v : float
        ...and the cell voltages this far inside their limits [V].
    temperature_high_degc, temperature_low_degc : float
        Extreme temperatures: time above / below is counted [degC].
    charge_temperature_high_degc, charge_temperature_low_degc : float
        Charging above / below these is counted as charging at extreme temperature [degC].
    temperature_hysteresis_degc : float
        A high / low temperature episode ends this far inside the threshold [degC].
    rest_current_c : float
        The pack is at rest when ``|I| <= rest_current_c * nominal_capacity_ah`` [C-rate];
        charging below that current is not counted as charging.
    self_discharge_settle_s : float
        Time into a rest before the SoC is taken as the reference [s] (relaxation).
    self_discharge_min_rest_s : float
        Shortest rest (after settling) that gives a self-discharge measurement [s].
    soc_edges, temperature_edges_degc, c_rate_edges : tuple of float
        Histogram bin edges: SoC [fraction], temperature [degC], C-rate [1/h] (signed,
        positive = discharge). The outer bins are open-ended.
    depth_edges : tuple of float
        Rainflow cycle-depth bin edges [fraction of SoC].
    rainflow_hysteresis_soc : float
        Smallest SoC swing kept as a turning point [fraction], >= 0.002.
    rainflow_chunk : int
        Turning points gathered before they are counted (bounds the work and the memory).
    period_s : float
        Length of a period record [s] (aligned to multiples of it in Unix time: UTC days).
    max_periods : int
        Period records kept; when exceeded, neighbours are merged two by two.
    max_episodes : int
        Harmful-event episodes kept in detail (all are counted).
    """

    nominal_capacity_ah: float
    nominal_energy_wh: float
    cell_voltage_min_v: float
    cell_voltage_max_v: float
    nominal_resistance_ohm: float = _NAN
    deep_discharge_soc: float = 0.02
    deep_discharge_hysteresis_soc: float = 0.03
    voltage_hysteresis_v: float = 0.05
    temperature_high_degc: float = 45.0
    temperature_low_degc: float = 0.0
    charge_temperature_high_degc: float = 45.0
    charge_temperature_low_degc: float = 0.0
    temperature_hysteresis_degc: float = 2.0
    rest_current_c: float = 0.01
    self_discharge_settle_s: float = 3600.0
    self_discharge_min_rest_s: float = 6 * 3600.0
    soc_edges: tuple[float, ...] = _linspace(0.0, 1.0, 10)
    temperature_edges_degc: tuple[float, ...] = _TEMPERATURE_EDGES_DEGC
    c_rate_edges: tuple[float, ...] = _C_RATE_EDGES
    depth_edges: tuple[float, ...] = _linspace(0.0, 1.0, 20)
    rainflow_hysteresis_soc: float = 0.01
    rainflow_chunk: int = 64
    period_s: float = 86400.0
    max_periods: int = 1000
    max_episodes: int = 100

    def __post_init__(self) -> None:
        for name in ("nominal_capacity_ah", "nominal_energy_wh", "period_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0.0):
                raise ValueError(f"LogbookConfig.{name} must be a finite number > 0, got {v!r}")
        for name in (
            "cell_voltage_min_v",
            "cell_voltage_max_v",
            "deep_discharge_soc",
            "temperature_high_degc",
            "temperature_low_degc",
            "charge_temperature_high_degc",
            "charge_temperature_low_degc",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v)):
                raise ValueError(f"LogbookConfig.{name} must be a finite number, got {v!r}")
        for name in (
            "deep_discharge_hysteresis_soc",
            "voltage_hysteresis_v",
            "temperature_hysteresis_degc",
            "rest_current_c",
            "self_discharge_settle_s",
            "self_discharge_min_rest_s",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0.0):
                raise ValueError(f"LogbookConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.cell_voltage_max_v <= self.cell_voltage_min_v:
            raise ValueError(
                f"LogbookConfig.cell_voltage_max_v ({self.cell_voltage_max_v}) must be above "
                f"cell_voltage_min_v ({self.cell_voltage_min_v})"
            )
        r = self.nominal_resistance_ohm
        if not (isinstance(r, int | float) and (math.isnan(r) or (math.isfinite(r) and r > 0))):
            raise ValueError(f"LogbookConfig.nominal_resistance_ohm must be > 0 or NaN, got {r!r}")
        h = self.rainflow_hysteresis_soc
        if not (isinstance(h, int | float) and 0.002 <= h <= 1.0):
            raise ValueError(
                f"LogbookConfig.rainflow_hysteresis_soc must be in [0.002, 1], got {h!r}"
            )
        for name in ("rainflow_chunk", "max_periods", "max_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"LogbookConfig.{name} must be an int >= 2, got {v!r}")
        for name in ("soc_edges", "temperature_edges_degc", "c_rate_edges", "depth_edges"):
            e = getattr(self, name)
            try:
                arr = np.asarray(e, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"LogbookConfig.{name} must be numbers, got {e!r}") from None
            if arr.ndim != 1 or arr.size < 2 or not np.all(np.isfinite(arr)):
                raise ValueError(f"LogbookConfig.{name} needs at least 2 finite edges, got {e!r}")
            if np.any(np.diff(arr) <= 0.0):
                raise ValueError(f"LogbookConfig.{name} must be strictly increasing, got {e!r}")
            object.__setattr__(self, name, tuple(float(x) for x in arr))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable mapping (NaN as None)."""
        return {k: _clean(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogbookConfig:
        """Rebuild a configuration from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            Unknown field, or a value out of range (the message names the field).
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"LogbookConfig: unknown field(s) {unknown}")
        kwargs: dict[str, Any] = {}
        for k, v in data.items():
            if isinstance(v, list):
                v = tuple(v)
            elif v is None:
                v = _NAN
            kwargs[k] = v
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"LogbookConfig: {exc}") from None


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN / inf floats as None, tuples as lists (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- events, metrics


@dataclass(frozen=True)
class LogbookEvent:
    """A harmful-event episode starting or ending (for the run store's ``events`` table).

    Same fields as the BMS's events: ``kind`` is ``logbook``; ``code`` is
    ``<episode>:start`` or ``<episode>:end`` with episode ``deep_discharge``, ``overvoltage``,
    ``temperature_high`` or ``temperature_low``; ``severity`` ``warning`` (start) or ``info``.
    """

    time_s: float
    kind: str
    code: str
    severity: str
    message: str


class Metric(NamedTuple):
    """One reported figure: name, value (None if unknown), unit, Annex VII item, description."""

    name: str
    value: float | int | None
    unit: str
    annex_vii: str
    description: str


# --------------------------------------------------------------------------- the logbook

# Scalar state saved by to_dict: name -> default (None: optional float).
_SCALARS: dict[str, float | int | bool | None] = {
    "n_updates": 0,
    "first_time_s": None,
    "last_time_s": None,
    "elapsed_s": 0.0,
    "charge_in_ah": 0.0,
    "charge_out_ah": 0.0,
    "energy_in_dc_wh": 0.0,
    "energy_out_dc_wh": 0.0,
    "energy_in_ac_wh": 0.0,
    "energy_out_ac_wh": 0.0,
    "time_ac_known_s": 0.0,
    "time_charging_s": 0.0,
    "time_discharging_s": 0.0,
    "time_rest_s": 0.0,
    "time_above_high_s": 0.0,
    "time_below_low_s": 0.0,
    "time_charging_hot_s": 0.0,
    "time_charging_cold_s": 0.0,
    "time_in_alarm_s": 0.0,
    "time_deep_discharge_s": 0.0,
    "time_overvoltage_s": 0.0,
    "time_unknown_soc_temperature_s": 0.0,
    "time_unknown_c_rate_temperature_s": 0.0,
    "n_deep_discharge": 0,
    "n_overvoltage": 0,
    "n_temperature_high": 0,
    "n_temperature_low": 0,
    "in_deep_discharge": False,
    "in_overvoltage": False,
    "in_temperature_high": False,
    "in_temperature_low": False,
    "soc_first": None,
    "soc_last": None,
    "soh_first": None,
    "soh_last": None,
    "soh_min": None,
    "soh_min_time_s": None,
    "capacity_first_ah": None,
    "capacity_last_ah": None,
    "resistance_first_ohm": None,
    "resistance_last_ohm": None,
    "resistance_max_ohm": None,
    "rest_start_s": None,
    "rest_ref_time_s": None,
    "rest_ref_soc": None,
    "rest_last_time_s": None,
    "rest_last_soc": None,
    "self_discharge_soc": 0.0,
    "self_discharge_time_s": 0.0,
    "self_discharge_episodes": 0,
    "rf_direction": 0,
    "rf_candidate": None,
    "rf_turning_points": 0,
    "period_start_s": None,
    "period_end_s": None,
}
_INT_SCALARS = frozenset(
    k for k, v in _SCALARS.items() if isinstance(v, int) and not isinstance(v, bool)
)
_BOOL_SCALARS = frozenset(k for k, v in _SCALARS.items() if isinstance(v, bool))


class Logbook:
    """Online logbook of one battery (see the module docstring).

    Parameters
    ----------
    config : LogbookConfig
        Battery references and thresholds.

    Examples
    --------
    >>> lb = Logbook(LogbookConfig(nominal_capacity_ah=100.0, nominal_energy_wh=5000.0,
    ...                            cell_voltage_min_v=2.5, cell_voltage_max_v=3.65))
    >>> for k in range(3601):  # one hour of discharge at 1C: 100 Ah out
    ...     lb.update(k, 0.0 if k == 0 else 1.0, 100.0, 50.0, 1 - k / 3600, 0.5, 0.5,
    ...               3.2, 3.3, 25.0, 26.0, 25.5, 1.0, 100.0)
    >>> round(lb.equivalent_full_cycles(), 6)
    0.5
    """

    def __init__(self, config: LogbookConfig) -> None:
        self.config = config
        c = config
        for name, default in _SCALARS.items():
            setattr(self, name, default)
        self.alarm_counts: dict[str, int] = {}
        self._alarms: tuple[str, ...] = ()
        self.episodes: list[dict[str, Any]] = []
        self.periods: list[list[float | None]] = []
        self._period_base: dict[str, float | None] = {}
        self._events: list[LogbookEvent] = []
        # rainflow: confirmed turning points not yet counted, and the unclosed residue.
        self._rf_points: list[float] = []
        self._rf_residue: list[float] = []
        self._depth_hist: list[float] = [0.0] * (len(c.depth_edges) - 1)
        for name, kind, _unit in _EXTREMES:
            setattr(self, "_x_" + name, _INF if kind == "min" else -_INF)
            setattr(self, "_xt_" + name, None)
        self._n_t = len(c.temperature_edges_degc) - 1
        self._n_soc = len(c.soc_edges) - 1
        self._n_c = len(c.c_rate_edges) - 1
        self._h_soc_t: list[float] = [0.0] * (self._n_soc * self._n_t)
        self._h_c_t: list[float] = [0.0] * (self._n_c * self._n_t)
        self._init_constants()

    def _init_constants(self) -> None:
        c = self.config
        self._t_inner = list(c.temperature_edges_degc[1:-1])
        self._soc_inner = list(c.soc_edges[1:-1])
        self._c_inner = list(c.c_rate_edges[1:-1])
        self._depth_inner = list(c.depth_edges[1:-1])
        self._rest_a = c.rest_current_c * c.nominal_capacity_ah
        self._inv_cap = 1.0 / c.nominal_capacity_ah
        self._dd_v_clear = c.cell_voltage_min_v + c.voltage_hysteresis_v
        self._dd_soc_clear = c.deep_discharge_soc + c.deep_discharge_hysteresis_soc
        self._ov_v_clear = c.cell_voltage_max_v - c.voltage_hysteresis_v
        self._hot_clear = c.temperature_high_degc - c.temperature_hysteresis_degc
        self._cold_clear = c.temperature_low_degc + c.temperature_hysteresis_degc
        self._rf_h = c.rainflow_hysteresis_soc

    # Declared for mypy: set from _SCALARS in __init__ / from_dict.
    n_updates: int
    first_time_s: float | None
    last_time_s: float | None
    elapsed_s: float
    charge_in_ah: float
    charge_out_ah: float
    energy_in_dc_wh: float
    energy_out_dc_wh: float
    energy_in_ac_wh: float
    energy_out_ac_wh: float
    time_ac_known_s: float
    time_charging_s: float
    time_discharging_s: float
    time_rest_s: float
    time_above_high_s: float
    time_below_low_s: float
    time_charging_hot_s: float
    time_charging_cold_s: float
    time_in_alarm_s: float
    time_deep_discharge_s: float
    time_overvoltage_s: float
    time_unknown_soc_temperature_s: float
    time_unknown_c_rate_temperature_s: float
    n_deep_discharge: int
    n_overvoltage: int
    n_temperature_high: int
    n_temperature_low: int
    in_deep_discharge: bool
    in_overvoltage: bool
    in_temperature_high: bool
    in_temperature_low: bool
    soc_first: float | None
    soc_last: float | None
    soh_first: float | None
    soh_last: float | None
    soh_min: float | None
    soh_min_time_s: float | None
    capacity_first_ah: float | None
    capacity_last_ah: float | None
    resistance_first_ohm: float | None
    resistance_last_ohm: float | None
    resistance_max_ohm: float | None
    rest_start_s: float | None
    rest_ref_time_s: float | None
    rest_ref_soc: float | None
    rest_last_time_s: float | None
    rest_last_soc: float | None
    self_discharge_soc: float
    self_discharge_time_s: float
    self_discharge_episodes: int
    rf_direction: int
    rf_candidate: float | None
    rf_turning_points: int
    period_start_s: float | None
    period_end_s: float | None

    # ------------------------------------------------------------------ the cycle

    def update(
        self,
        time_s: float,
        dt_s: float,
        current_a: float,
        pack_voltage_v: float,
        soc: float,
        soc_cell_min: float,
        soc_cell_max: float,
        cell_voltage_min_v: float,
        cell_voltage_max_v: float,
        temperature_min_degc: float,
        temperature_max_degc: float,
        temperature_avg_degc: float,
        soh: float,
        capacity_ah: float,
        resistance_ohm: float = _NAN,
        alarms: tuple[str, ...] = (),
        ac_power_w: float = _NAN,
        balancing_cells: int = 0,
    ) -> None:
        """Account for one BMS cycle (a few microseconds; never raises on bad readings).

        The values are this cycle's; they stand for the ``dt_s`` seconds since the previous
        update. NaN means unknown (invalid sensors, estimator not yet initialised): an unknown
        value is left out of what needs it, and the time it stands for is still counted.

        Parameters
        ----------
        time_s : float
            Cycle time [s, Unix UTC].
        dt_s : float
            Time since the previous update [s]; 0 (or NaN, negative) at the first cycle.
        current_a : float
            Pack current [A], positive = discharge.
        pack_voltage_v : float
            Pack voltage [V].
        soc : float
            Pack SoC [fraction].
        soc_cell_min, soc_cell_max : float
            Lowest and highest cell SoC [fraction]; NaN while the estimator has none.
        cell_voltage_min_v, cell_voltage_max_v : float
            Lowest and highest valid cell voltage [V].
        temperature_min_degc, temperature_max_degc, temperature_avg_degc : float
            Lowest, highest and mean valid cell temperature [degC].
        soh : float
            State-of-health estimate [fraction].
        capacity_ah : float
            Pack capacity estimate [Ah] (all strings).
        resistance_ohm : float
            Pack resistance estimate [Ohm], NaN if none.
        alarms : tuple of str
            Active alarms as ``code:tier`` strings (``Telemetry.alarms``).
        ac_power_w : float
            Battery AC power [W], positive = discharge; NaN if not known.
        balancing_cells : int
            Cells bleeding now (a rest with balancing gives no self-discharge figure).
        """
        if self.n_updates == 0:
            self._first(time_s, soc)
        self.n_updates += 1
        self.last_time_s = time_s
        dt = dt_s if 0.0 < dt_s < _INF else 0.0
        self.elapsed_s += dt
        i = current_a

        # Throughput and operating time.
        charging = False
        if i == i:
            rest_a = self._rest_a
            if i > 0.0:
                self.charge_out_ah += i * dt / 3600.0
            else:
                self.charge_in_ah -= i * dt / 3600.0
            if i > rest_a:
                self.time_discharging_s += dt
            elif i < -rest_a:
                self.time_charging_s += dt
                charging = True
            else:
                self.time_rest_s += dt
            p = pack_voltage_v * i
            if p > 0.0:
                self.energy_out_dc_wh += p * dt / 3600.0
                if p > self._x_discharge_power_max_w:
                    self._x_discharge_power_max_w = p
                    self._xt_discharge_power_max_w = time_s
                if i > self._x_discharge_current_max_a:
                    self._x_discharge_current_max_a = i
                    self._xt_discharge_current_max_a = time_s
            elif p < 0.0:
                self.energy_in_dc_wh -= p * dt / 3600.0
                if -p > self._x_charge_power_max_w:
                    self._x_charge_power_max_w = -p
                    self._xt_charge_power_max_w = time_s
                if -i > self._x_charge_current_max_a:
                    self._x_charge_current_max_a = -i
                    self._xt_charge_current_max_a = time_s
        if ac_power_w == ac_power_w:
            self.time_ac_known_s += dt
            if ac_power_w > 0.0:
                self.energy_out_ac_wh += ac_power_w * dt / 3600.0
            else:
                self.energy_in_ac_wh -= ac_power_w * dt / 3600.0

        # Extreme temperatures (episodes with hysteresis), charging at them.
        c = self.config
        t_hi = temperature_max_degc
        t_lo = temperature_min_degc
        if t_hi > c.temperature_high_degc:
            self.time_above_high_s += dt
            if not self.in_temperature_high:
                self._start("temperature_high", time_s, f"cell temperature {t_hi:.1f} degC")
        elif self.in_temperature_high and t_hi < self._hot_clear:
            self._end("temperature_high", time_s, f"cell temperature {t_hi:.1f} degC")
        if t_lo < c.temperature_low_degc:
            self.time_below_low_s += dt
            if not self.in_temperature_low:
                self._start("temperature_low", time_s, f"cell temperature {t_lo:.1f} degC")
        elif self.in_temperature_low and t_lo > self._cold_clear:
            self._end("temperature_low", time_s, f"cell temperature {t_lo:.1f} degC")
        if charging:
            if t_hi > c.charge_temperature_high_degc:
                self.time_charging_hot_s += dt
            if t_lo < c.charge_temperature_low_degc:
                self.time_charging_cold_s += dt

        # Deep discharge and overvoltage episodes.
        v_lo = cell_voltage_min_v
        v_hi = cell_voltage_max_v
        if v_lo < c.cell_voltage_min_v or soc_cell_min < c.deep_discharge_soc:
            self.time_deep_discharge_s += dt
            if not self.in_deep_discharge:
                self._start(
                    "deep_discharge",
                    time_s,
                    f"cell voltage min {v_lo:.3f} V, cell SoC min {soc_cell_min:.3f}",
                )
        elif self.in_deep_discharge:
            self._maybe_end_deep_discharge(time_s, v_lo, soc_cell_min)
        if v_hi > c.cell_voltage_max_v:
            self.time_overvoltage_s += dt
            if not self.in_overvoltage:
                self._start("overvoltage", time_s, f"cell voltage max {v_hi:.3f} V")
        elif self.in_overvoltage and v_hi < self._ov_v_clear:
            self._end("overvoltage", time_s, f"cell voltage max {v_hi:.3f} V")

        # Lifetime extremes (NaN never compares true).
        if v_lo < self._x_cell_voltage_min_v:
            self._x_cell_voltage_min_v = v_lo
            self._xt_cell_voltage_min_v = time_s
        if v_hi > self._x_cell_voltage_max_v:
            self._x_cell_voltage_max_v = v_hi
            self._xt_cell_voltage_max_v = time_s
        if t_lo < self._x_temperature_min_degc:
            self._x_temperature_min_degc = t_lo
            self._xt_temperature_min_degc = time_s
        if t_hi > self._x_temperature_max_degc:
            self._x_temperature_max_degc = t_hi
            self._xt_temperature_max_degc = time_s
        if soc_cell_min < self._x_soc_cell_min:
            self._x_soc_cell_min = soc_cell_min
            self._xt_soc_cell_min = time_s
        if soc_cell_max > self._x_soc_cell_max:
            self._x_soc_cell_max = soc_cell_max
            self._xt_soc_cell_max = time_s

        # Alarms: count each code:tier when it appears.
        if alarms:
            self.time_in_alarm_s += dt
            if alarms != self._alarms:
                self._count_alarms(alarms)
        elif self._alarms:
            self._alarms = ()

        # Histograms: time at (SoC, T) and (C-rate, T).
        t_avg = temperature_avg_degc
        if t_avg == t_avg:
            jt = bisect_right(self._t_inner, t_avg)
            if soc == soc:
                self._h_soc_t[bisect_right(self._soc_inner, soc) * self._n_t + jt] += dt
            else:
                self.time_unknown_soc_temperature_s += dt
            if i == i:
                self._h_c_t[bisect_right(self._c_inner, i * self._inv_cap) * self._n_t + jt] += dt
            else:
                self.time_unknown_c_rate_temperature_s += dt
        else:
            self.time_unknown_soc_temperature_s += dt
            self.time_unknown_c_rate_temperature_s += dt

        # SoC: rainflow turning points, self-discharge at rest.
        if soc == soc:
            self.soc_last = soc
            self._track_soc(soc)
            if -self._rest_a <= i <= self._rest_a and not balancing_cells:
                if self.rest_start_s is None:
                    self.rest_start_s = time_s
                elif self.rest_ref_time_s is not None:
                    self.rest_last_time_s = time_s
                    self.rest_last_soc = soc
                elif time_s - self.rest_start_s >= c.self_discharge_settle_s:
                    self.rest_ref_time_s = self.rest_last_time_s = time_s
                    self.rest_ref_soc = self.rest_last_soc = soc
            elif self.rest_start_s is not None:
                self._end_rest()
        elif self.rest_start_s is not None:
            self._end_rest()

        # Health estimates.
        if soh == soh:
            if self.soh_first is None:
                self.soh_first = soh
            self.soh_last = soh
            if self.soh_min is None or soh < self.soh_min:
                self.soh_min = soh
                self.soh_min_time_s = time_s
        if capacity_ah == capacity_ah:
            if self.capacity_first_ah is None:
                self.capacity_first_ah = capacity_ah
            self.capacity_last_ah = capacity_ah
        if resistance_ohm == resistance_ohm:
            if self.resistance_first_ohm is None:
                self.resistance_first_ohm = resistance_ohm
            self.resistance_last_ohm = resistance_ohm
            if self.resistance_max_ohm is None or resistance_ohm > self.resistance_max_ohm:
                self.resistance_max_ohm = resistance_ohm

        # The cycle's dt belongs to the period it ends: close after counting it.
        if time_s >= self.period_end_s:  # type: ignore[operator]
            self._close_period(time_s)

    _x_cell_voltage_min_v: float
    _x_cell_voltage_max_v: float
    _x_temperature_min_degc: float
    _x_temperature_max_degc: float
    _x_soc_cell_min: float
    _x_soc_cell_max: float
    _x_discharge_current_max_a: float
    _x_charge_current_max_a: float
    _x_discharge_power_max_w: float
    _x_charge_power_max_w: float
    _xt_cell_voltage_min_v: float | None
    _xt_cell_voltage_max_v: float | None
    _xt_temperature_min_degc: float | None
    _xt_temperature_max_degc: float | None
    _xt_soc_cell_min: float | None
    _xt_soc_cell_max: float | None
    _xt_discharge_current_max_a: float | None
    _xt_charge_current_max_a: float | None
    _xt_discharge_power_max_w: float | None
    _xt_charge_power_max_w: float | None

    def update_from_telemetry(
        self,
        telemetry: Telemetry,
        dt_s: float,
        capacity_ah: float,
        resistance_ohm: float = _NAN,
        ac_power_w: float = _NAN,
    ) -> None:
        """:meth:`update` from a :class:`~openbess.contract.Telemetry` (same fields).

        Parameters
        ----------
        telemetry : openbess.contract.Telemetry
            This cycle's telemetry.
        dt_s : float
            Time since the previous update [s].
        capacity_ah : float
            Pack capacity estimate [Ah].
        resistance_ohm : float
            Pack resistance estimate [Ohm] or NaN.
        ac_power_w : float
            Battery AC power [W], positive = discharge, or NaN.
        """
        t = telemetry
        self.update(
            t.time_s,
            dt_s,
            t.pack_current_a,
            t.pack_voltage_v,
            t.soc,
            t.soc_cell_min,
            t.soc_cell_max,
            t.cell_voltage_min_v,
            t.cell_voltage_max_v,
            t.temperature_min_degc,
            t.temperature_max_degc,
            t.temperature_avg_degc,
            t.soh,
            capacity_ah,
            resistance_ohm,
            t.alarms,
            ac_power_w,
            t.balancing_cells,
        )

    # ------------------------------------------------------------------ rare paths

    def _first(self, time_s: float, soc: float) -> None:
        self.first_time_s = time_s
        p = self.config.period_s
        self.period_start_s = time_s
        self.period_end_s = (math.floor(time_s / p) + 1.0) * p
        self._period_base = self._period_counters()
        self._period_base["soc_start"] = soc if soc == soc else None
        if soc == soc:
            self.soc_first = soc

    def _start(self, what: str, time_s: float, detail: str) -> None:
        setattr(self, "in_" + what, True)
        setattr(self, "n_" + what, getattr(self, "n_" + what) + 1)
        self.episodes.append({"kind": what, "start_s": time_s, "end_s": None, "detail": detail})
        if len(self.episodes) > self.config.max_episodes:
            del self.episodes[0]
        self._events.append(
            LogbookEvent(time_s, "logbook", f"{what}:start", "warning", f"{what} began: {detail}")
        )

    def _end(self, what: str, time_s: float, detail: str) -> None:
        setattr(self, "in_" + what, False)
        for ep in reversed(self.episodes):
            if ep["kind"] == what and ep["end_s"] is None:
                ep["end_s"] = time_s
                break
        self._events.append(
            LogbookEvent(time_s, "logbook", f"{what}:end", "info", f"{what} ended: {detail}")
        )

    def _maybe_end_deep_discharge(self, time_s: float, v_lo: float, soc_min: float) -> None:
        """End the episode once the known values are past the hysteresis (NaN = unknown)."""
        v_known, s_known = v_lo == v_lo, soc_min == soc_min
        if not (v_known or s_known):
            return
        if v_known and not v_lo > self._dd_v_clear:
            return
        if s_known and not soc_min > self._dd_soc_clear:
            return
        self._end(
            "deep_discharge",
            time_s,
            f"cell voltage min {v_lo:.3f} V, cell SoC min {soc_min:.3f}",
        )

    def _count_alarms(self, alarms: tuple[str, ...]) -> None:
        before = set(self._alarms)
        counts = self.alarm_counts
        for a in alarms:
            if a not in before:
                counts[a] = counts.get(a, 0) + 1
        self._alarms = tuple(alarms)

    def _end_rest(self) -> None:
        ref_t, last_t = self.rest_ref_time_s, self.rest_last_time_s
        if (
            ref_t is not None
            and last_t is not None
            and self.rest_ref_soc is not None
            and self.rest_last_soc is not None
            and last_t - ref_t >= self.config.self_discharge_min_rest_s
        ):
            self.self_discharge_soc += self.rest_ref_soc - self.rest_last_soc
            self.self_discharge_time_s += last_t - ref_t
            self.self_discharge_episodes += 1
        self.rest_start_s = self.rest_ref_time_s = self.rest_last_time_s = None
        self.rest_ref_soc = self.rest_last_soc = None

    def _track_soc(self, soc: float) -> None:
        """Hysteresis turning-point detector (the first value is a turning point)."""
        d = self.rf_direction
        cand = self.rf_candidate
        if cand is None:  # very first value
            self.rf_candidate = soc
            self._push_turning_point(soc)
            return
        h = self._rf_h
        if d > 0:
            if soc > cand:
                self.rf_candidate = soc
            elif cand - soc >= h:
                self._push_turning_point(cand)
                self.rf_direction = -1
                self.rf_candidate = soc
        elif d < 0:
            if soc < cand:
                self.rf_candidate = soc
            elif soc - cand >= h:
                self._push_turning_point(cand)
                self.rf_direction = 1
                self.rf_candidate = soc
        else:  # after the first point: wait for a swing of h either way
            if soc - cand >= h:
                self.rf_direction = 1
                self.rf_candidate = soc
            elif cand - soc >= h:
                self.rf_direction = -1
                self.rf_candidate = soc

    def _push_turning_point(self, soc: float) -> None:
        self.rf_turning_points += 1
        self._rf_points.append(round(soc, _SOC_DIGITS))
        if len(self._rf_points) >= self.config.rainflow_chunk:
            self._rf_count()

    def _rf_count(self) -> None:
        """Count the cycles closed by the pending turning points; keep the residue."""
        series = self._rf_residue + self._rf_points
        self._rf_points = []
        cycles = _extract(series)
        k = _residue_start(cycles, len(series) - 1)
        hist, inner = self._depth_hist, self._depth_inner
        for rng, count, _i0, _i1 in cycles[:k]:
            hist[bisect_right(inner, rng)] += count
        if k == len(cycles):  # no residue half cycle: fewer than 2 points
            self._rf_residue = series
        else:
            self._rf_residue = [series[cycles[k][2]]] + [series[cy[3]] for cy in cycles[k:]]

    def _turning_points_now(self) -> list[float]:
        """Residue, pending turning points and the running extreme (not confirmed)."""
        pts = self._rf_residue + self._rf_points
        cand = self.rf_candidate
        if cand is not None and self.rf_direction != 0:
            pts.append(round(cand, _SOC_DIGITS))
        return pts

    def _period_counters(self) -> dict[str, float | None]:
        return {
            "elapsed_s": self.elapsed_s,
            "charge_in_ah": self.charge_in_ah,
            "charge_out_ah": self.charge_out_ah,
            "energy_in_dc_wh": self.energy_in_dc_wh,
            "energy_out_dc_wh": self.energy_out_dc_wh,
            "energy_in_ac_wh": self.energy_in_ac_wh,
            "energy_out_ac_wh": self.energy_out_ac_wh,
            "deep_discharges": float(self.n_deep_discharge),
            "time_above_high_s": self.time_above_high_s,
            "time_below_low_s": self.time_below_low_s,
            "time_charging_extreme_s": self.time_charging_hot_s + self.time_charging_cold_s,
            "self_discharge_soc": self.self_discharge_soc,
            "self_discharge_time_s": self.self_discharge_time_s,
        }

    def _period_record(self, end_s: float) -> list[float | None]:
        now = self._period_counters()
        base = self._period_base
        rec: dict[str, float | None] = {
            "start_s": self.period_start_s,
            "end_s": end_s,
            "soc_start": base.get("soc_start"),
            "soc_end": self.soc_last,
            "soh": self.soh_last,
            "capacity_ah": self.capacity_last_ah,
            "resistance_ohm": self.resistance_last_ohm,
        }
        for k, v in now.items():
            b = base.get(k)
            rec[k] = None if v is None or b is None else v - b
        return [rec[k] for k in PERIOD_COLUMNS]

    def _close_period(self, time_s: float) -> None:
        self.periods.append(self._period_record(time_s))
        if len(self.periods) > self.config.max_periods:
            self.periods = _merge_pairs(self.periods)
        p = self.config.period_s
        self.period_start_s = time_s
        self.period_end_s = (math.floor(time_s / p) + 1.0) * p
        self._period_base = self._period_counters()
        self._period_base["soc_start"] = self.soc_last

    def pop_events(self) -> list[LogbookEvent]:
        """Return and clear the episode events gathered since the last call.

        Returns
        -------
        list of LogbookEvent
            For :meth:`openbess.storage.RunStore.record_event` (``time_s``, ``kind``,
            ``code``, ``severity``, ``message``).
        """
        ev, self._events = self._events, []
        return ev

    # ------------------------------------------------------------------ results

    def equivalent_full_cycles(self) -> float:
        """Equivalent full cycles so far [1]: ``(Q_in + Q_out) / (2 Q_nominal)``."""
        return float(
            equivalent_full_cycles(
                self.charge_in_ah, self.charge_out_ah, self.config.nominal_capacity_ah
            )
        )

    def histogram_soc_temperature(self) -> FloatArray:
        """Time [s] at (SoC bin, temperature bin), shape ``(n_soc, n_temperature)``."""
        return np.array(self._h_soc_t, dtype=np.float64).reshape(self._n_soc, self._n_t)

    def histogram_c_rate_temperature(self) -> FloatArray:
        """Time [s] at (C-rate bin, temperature bin), shape ``(n_c_rate, n_temperature)``."""
        return np.array(self._h_c_t, dtype=np.float64).reshape(self._n_c, self._n_t)

    def cycle_depth_histogram(self) -> FloatArray:
        """Rainflow cycle counts by depth [cycles], the open residue counted as half cycles.

        Returns
        -------
        numpy.ndarray
            ``len(config.depth_edges) - 1`` counts: closed cycles count 1, half cycles 0.5.
        """
        out = np.array(self._depth_hist, dtype=np.float64)
        inner = self._depth_inner
        for rng, count, _i0, _i1 in _extract(self._turning_points_now()):
            out[bisect_right(inner, rng)] += count
        return out

    def extremes(self) -> dict[str, dict[str, Any]]:
        """Lifetime extremes: name -> ``{"value", "time_s", "unit", "kind"}`` (None if unseen)."""
        out: dict[str, dict[str, Any]] = {}
        for name, kind, unit in _EXTREMES:
            v = getattr(self, "_x_" + name)
            out[name] = {
                "value": v if math.isfinite(v) else None,
                "time_s": getattr(self, "_xt_" + name),
                "unit": unit,
                "kind": kind,
            }
        return out

    def _stored_change_wh(self, soc_start: float | None, soc_end: float | None) -> float:
        if soc_start is None or soc_end is None:
            return 0.0
        soh = self.soh_last if self.soh_last is not None else 1.0
        return (soc_end - soc_start) * self.config.nominal_energy_wh * soh

    def round_trip_efficiency(
        self, side: str = "dc", recent_periods: int | None = None, corrected: bool = True
    ) -> float | None:
        """Round-trip efficiency over the life or the last periods.

        Parameters
        ----------
        side : {"dc", "ac"}
            Battery terminals (DC) or converter AC side (needs ``ac_power_w``).
        recent_periods : int or None
            None: the whole life; N: the last N closed periods plus the current one.
        corrected : bool
            Count the change of stored energy (from the SoC at the window's ends, nominal
            energy times SoH) as delivered energy; False: plain ``E_out / E_in``.

        Returns
        -------
        float or None
            Efficiency [fraction]; None without energy charged in the window.
        """
        if side not in ("dc", "ac"):
            raise ValueError(f"side must be 'dc' or 'ac', got {side!r}")
        if side == "ac" and self.time_ac_known_s <= 0.0:
            return None
        e_in = self.energy_in_dc_wh if side == "dc" else self.energy_in_ac_wh
        e_out = self.energy_out_dc_wh if side == "dc" else self.energy_out_ac_wh
        soc_start = self.soc_first
        if recent_periods is not None:
            if recent_periods < 0:
                raise ValueError(f"recent_periods must be >= 0, got {recent_periods}")
            base = self._period_base
            key_in, key_out = f"energy_in_{side}_wh", f"energy_out_{side}_wh"
            e_in -= base.get(key_in) or 0.0
            e_out -= base.get(key_out) or 0.0
            soc_start = base.get("soc_start")
            col_in, col_out = PERIOD_COLUMNS.index(key_in), PERIOD_COLUMNS.index(key_out)
            col_soc = PERIOD_COLUMNS.index("soc_start")
            first = max(0, len(self.periods) - recent_periods)
            for rec in self.periods[first:]:
                e_in += rec[col_in] or 0.0
                e_out += rec[col_out] or 0.0
            if first < len(self.periods):
                soc_start = self.periods[first][col_soc]
        stored = self._stored_change_wh(soc_start, self.soc_last) if corrected else 0.0
        r = float(round_trip_efficiency(e_in, e_out, stored))
        return r if math.isfinite(r) else None

    def self_discharge_rate_per_day(self) -> float | None:
        """Mean SoC loss during qualifying rests [fraction per day], None without one.

        Includes whatever the current sensor cannot see (cell self-discharge, and BMS supply
        if it is taken from the cells); rests with balancing active are excluded.
        """
        if self.self_discharge_time_s <= 0.0:
            return None
        return self.self_discharge_soc / self.self_discharge_time_s * 86400.0

    def capacity_fade(self) -> float | None:
        """``1 - capacity / nominal capacity`` [fraction], None before an estimate."""
        if self.capacity_last_ah is None:
            return None
        return 1.0 - self.capacity_last_ah / self.config.nominal_capacity_ah

    def resistance_reference_ohm(self) -> float | None:
        """The nominal resistance, else the first estimate [Ohm]."""
        r = self.config.nominal_resistance_ohm
        return r if math.isfinite(r) else self.resistance_first_ohm

    def power_fade(self) -> float | None:
        """``1 - R_ref / R_now`` [fraction]: the loss of power capability at fixed voltage
        limits (maximum power scales with 1/R); None without a resistance estimate."""
        r_ref, r_now = self.resistance_reference_ohm(), self.resistance_last_ohm
        if r_ref is None or r_now is None or r_now <= 0.0:
            return None
        return 1.0 - r_ref / r_now

    def metrics(self) -> list[Metric]:
        """The logbook's figures, one row each, with unit and Annex VII item.

        Returns
        -------
        list of Metric
            Name, value (None if unknown), unit, Annex VII reference, description.
        """
        c = self.config
        r_ref = self.resistance_reference_ohm()
        r_now = self.resistance_last_ohm
        sdr = self.self_discharge_rate_per_day()
        m: list[Metric] = [
            Metric("first_time_s", self.first_time_s, "s", "", "first logged cycle (Unix UTC)"),
            Metric("last_time_s", self.last_time_s, "s", "", "last logged cycle (Unix UTC)"),
            Metric("logged_time_s", self.elapsed_s, "s", "", "time covered by the logbook"),
            Metric("nominal_capacity_ah", c.nominal_capacity_ah, "Ah", "", "pack nominal"),
            Metric("nominal_energy_wh", c.nominal_energy_wh, "Wh", "", "pack nominal"),
            Metric("soh", self.soh_last, "1", "A: state of health", "latest SoH estimate"),
            Metric("soh_min", self.soh_min, "1", "A: state of health", "lowest SoH estimate"),
            Metric(
                "remaining_capacity_ah",
                self.capacity_last_ah,
                "Ah",
                "A: remaining capacity",
                "latest pack capacity estimate",
            ),
            Metric(
                "remaining_energy_wh",
                None
                if self.capacity_last_ah is None
                else c.nominal_energy_wh * self.capacity_last_ah / c.nominal_capacity_ah,
                "Wh",
                "A: remaining capacity",
                "nominal energy scaled by the capacity estimate",
            ),
            Metric(
                "capacity_fade",
                self.capacity_fade(),
                "1",
                "A: capacity fade",
                "1 - capacity / nominal capacity",
            ),
            Metric("resistance_ohm", r_now, "Ohm", "A: ohmic resistance", "latest pack resistance"),
            Metric(
                "resistance_reference_ohm",
                r_ref,
                "Ohm",
                "A: ohmic resistance",
                "nominal (or first estimated) pack resistance",
            ),
            Metric(
                "resistance_increase",
                None if r_ref is None or r_now is None else r_now / r_ref - 1.0,
                "1",
                "A: ohmic resistance",
                "R / R_ref - 1",
            ),
            Metric(
                "power_fade",
                self.power_fade(),
                "1",
                "A: power fade, remaining power capability",
                "1 - R_ref / R (maximum power ~ 1/R)",
            ),
            Metric(
                "round_trip_efficiency_dc",
                self.round_trip_efficiency("dc"),
                "1",
                "A: round-trip efficiency",
                "lifetime, DC, stored-energy corrected",
            ),
            Metric(
                "round_trip_efficiency_dc_plain",
                self.round_trip_efficiency("dc", corrected=False),
                "1",
                "A: round-trip efficiency",
                "lifetime, DC, energy out / energy in",
            ),
            Metric(
                "round_trip_efficiency_dc_recent",
                self.round_trip_efficiency("dc", recent_periods=30),
                "1",
                "A: round-trip efficiency",
                "last 30 periods and the current one, DC, corrected",
            ),
            Metric(
                "round_trip_efficiency_ac",
                self.round_trip_efficiency("ac"),
                "1",
                "A: round-trip efficiency",
                "lifetime, AC side, corrected",
            ),
            Metric(
                "round_trip_efficiency_ac_recent",
                self.round_trip_efficiency("ac", recent_periods=30),
                "1",
                "A: round-trip efficiency",
                "last 30 periods and the current one, AC side, corrected",
            ),
            Metric(
                "self_discharge_rate_per_day",
                sdr,
                "1/d",
                "A: self-discharge rate",
                "SoC lost per day at rest (mean of qualifying rests)",
            ),
            Metric(
                "self_discharge_rests",
                self.self_discharge_episodes,
                "1",
                "A: self-discharge rate",
                "rests that gave a measurement",
            ),
            Metric(
                "energy_throughput_in_dc_wh",
                self.energy_in_dc_wh,
                "Wh",
                "B: energy throughput",
                "energy charged (DC)",
            ),
            Metric(
                "energy_throughput_out_dc_wh",
                self.energy_out_dc_wh,
                "Wh",
                "B: energy throughput",
                "energy discharged (DC)",
            ),
            Metric(
                "energy_throughput_in_ac_wh",
                self.energy_in_ac_wh if self.time_ac_known_s > 0 else None,
                "Wh",
                "B: energy throughput",
                "energy charged (AC side)",
            ),
            Metric(
                "energy_throughput_out_ac_wh",
                self.energy_out_ac_wh if self.time_ac_known_s > 0 else None,
                "Wh",
                "B: energy throughput",
                "energy discharged (AC side)",
            ),
            Metric(
                "capacity_throughput_in_ah",
                self.charge_in_ah,
                "Ah",
                "B: capacity throughput",
                "charge put in",
            ),
            Metric(
                "capacity_throughput_out_ah",
                self.charge_out_ah,
                "Ah",
                "B: capacity throughput",
                "charge taken out",
            ),
            Metric(
                "equivalent_full_cycles",
                self.equivalent_full_cycles(),
                "1",
                "B: capacity throughput",
                "(Ah in + Ah out) / (2 nominal Ah)",
            ),
            Metric(
                "rainflow_cycles",
                float(self.cycle_depth_histogram().sum()),
                "1",
                "B: capacity throughput",
                "rainflow cycles of any depth (half cycles count 0.5)",
            ),
            Metric(
                "deep_discharge_events",
                self.n_deep_discharge,
                "1",
                "B: harmful events (deep discharge)",
                f"episodes with a cell below {c.cell_voltage_min_v:g} V "
                f"or SoC {c.deep_discharge_soc:g}",
            ),
            Metric(
                "deep_discharge_time_s",
                self.time_deep_discharge_s,
                "s",
                "B: harmful events (deep discharge)",
                "time in deep discharge",
            ),
            Metric(
                "overvoltage_events",
                self.n_overvoltage,
                "1",
                "B: harmful events",
                f"episodes with a cell above {c.cell_voltage_max_v:g} V",
            ),
            Metric("overvoltage_time_s", self.time_overvoltage_s, "s", "B: harmful events", ""),
            Metric(
                "time_above_high_temperature_s",
                self.time_above_high_s,
                "s",
                "B: time at extreme temperatures",
                f"hottest cell above {c.temperature_high_degc:g} degC",
            ),
            Metric(
                "time_below_low_temperature_s",
                self.time_below_low_s,
                "s",
                "B: time at extreme temperatures",
                f"coldest cell below {c.temperature_low_degc:g} degC",
            ),
            Metric(
                "high_temperature_events",
                self.n_temperature_high,
                "1",
                "B: time at extreme temperatures",
                "episodes",
            ),
            Metric(
                "low_temperature_events",
                self.n_temperature_low,
                "1",
                "B: time at extreme temperatures",
                "episodes",
            ),
            Metric(
                "time_charging_hot_s",
                self.time_charging_hot_s,
                "s",
                "B: time charging at extreme temperatures",
                f"charging with a cell above {c.charge_temperature_high_degc:g} degC",
            ),
            Metric(
                "time_charging_cold_s",
                self.time_charging_cold_s,
                "s",
                "B: time charging at extreme temperatures",
                f"charging with a cell below {c.charge_temperature_low_degc:g} degC",
            ),
            Metric("time_charging_s", self.time_charging_s, "s", "", "time charging"),
            Metric("time_discharging_s", self.time_discharging_s, "s", "", "time discharging"),
            Metric("time_rest_s", self.time_rest_s, "s", "", "time at rest"),
            Metric("time_in_alarm_s", self.time_in_alarm_s, "s", "B: negative events", "any alarm"),
            Metric(
                "alarms_raised",
                sum(self.alarm_counts.values()),
                "1",
                "B: negative events",
                "alarm raises (code:tier appearing)",
            ),
        ]
        for name, ext in self.extremes().items():
            m.append(
                Metric(
                    f"lifetime_{name}",
                    ext["value"],
                    ext["unit"],
                    "min/max history",
                    f"lifetime {ext['kind']}imum"
                    + ("" if ext["time_s"] is None else f" at {ext['time_s']:.0f} s"),
                )
            )
        for code, n in sorted(self.alarm_counts.items()):
            m.append(Metric(f"alarm_count[{code}]", n, "1", "B: negative events", "raises"))
        return m

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """The whole state as a JSON-serialisable mapping (NaN / inf as None).

        Returns
        -------
        dict
            ``format``, ``version``, ``config``, ``state``; :meth:`from_dict` restores it.
        """
        state: dict[str, Any] = {name: _clean(getattr(self, name)) for name in _SCALARS}
        state.update(
            alarm_counts=dict(self.alarm_counts),
            alarms_active=list(self._alarms),
            episodes=[dict(e) for e in self.episodes],
            periods=_clean(self.periods),
            period_base=_clean(self._period_base),
            rf_points=list(self._rf_points),
            rf_residue=list(self._rf_residue),
            depth_hist=list(self._depth_hist),
            hist_soc_temperature=list(self._h_soc_t),
            hist_c_rate_temperature=list(self._h_c_t),
            extremes={
                name: [_clean(getattr(self, "_x_" + name)), getattr(self, "_xt_" + name)]
                for name, _k, _u in _EXTREMES
            },
        )
        return {
            "format": LOGBOOK_FORMAT,
            "version": LOGBOOK_VERSION,
            "config": self.config.to_dict(),
            "period_columns": list(PERIOD_COLUMNS),
            "state": state,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Logbook:
        """Rebuild a logbook from :meth:`to_dict` output.

        Parameters
        ----------
        data : Mapping
            The mapping (e.g. ``json.loads`` of a saved snapshot).

        Returns
        -------
        Logbook
            The restored logbook; further updates continue where it stopped.

        Raises
        ------
        ValueError
            Not a logbook mapping, another version, or a missing / malformed field (named).
        """
        if not isinstance(data, Mapping) or data.get("format") != LOGBOOK_FORMAT:
            raise ValueError(f"not an openbess logbook (format is not {LOGBOOK_FORMAT!r})")
        if data.get("version") != LOGBOOK_VERSION:
            raise ValueError(
                f"logbook version {data.get('version')!r} is not supported "
                f"(this openbess reads {LOGBOOK_VERSION})"
            )
        cfg_data = data.get("config")
        if not isinstance(cfg_data, Mapping):
            raise ValueError("logbook field 'config' is missing or not a mapping")
        lb = cls(LogbookConfig.from_dict(cfg_data))
        st = data.get("state")
        if not isinstance(st, Mapping):
            raise ValueError("logbook field 'state' is missing or not a mapping")

        def need(key: str) -> Any:
            if key not in st:
                raise ValueError(f"logbook field 'state.{key}' is missing")
            return st[key]

        for name, default in _SCALARS.items():
            v = need(name)
            if name in _BOOL_SCALARS:
                if not isinstance(v, bool):
                    raise ValueError(f"logbook field 'state.{name}' must be a bool, got {v!r}")
            elif name in _INT_SCALARS:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"logbook field 'state.{name}' must be an int, got {v!r}")
            elif v is None:
                if default is not None:
                    raise ValueError(f"logbook field 'state.{name}' must be a number, got None")
            elif isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"logbook field 'state.{name}' must be a number, got {v!r}")
            else:
                v = float(v)
            setattr(lb, name, v)
        lb.alarm_counts = {
            str(k): int(v) for k, v in _mapping(need("alarm_counts"), "alarm_counts").items()
        }
        lb._alarms = tuple(str(a) for a in _list(need("alarms_active"), "alarms_active"))
        lb.episodes = [dict(e) for e in _list(need("episodes"), "episodes")]
        periods = _list(need("periods"), "periods")
        for k, rec in enumerate(periods):
            if not isinstance(rec, list) or len(rec) != len(PERIOD_COLUMNS):
                raise ValueError(
                    f"logbook field 'state.periods[{k}]' must have {len(PERIOD_COLUMNS)} values"
                )
        lb.periods = [[None if v is None else float(v) for v in rec] for rec in periods]
        lb._period_base = {
            str(k): (None if v is None else float(v))
            for k, v in _mapping(need("period_base"), "period_base").items()
        }
        lb._rf_points = _floats(need("rf_points"), "rf_points")
        lb._rf_residue = _floats(need("rf_residue"), "rf_residue")
        lb._depth_hist = _floats(need("depth_hist"), "depth_hist", len(lb._depth_hist))
        lb._h_soc_t = _floats(
            need("hist_soc_temperature"), "hist_soc_temperature", len(lb._h_soc_t)
        )
        lb._h_c_t = _floats(
            need("hist_c_rate_temperature"), "hist_c_rate_temperature", len(lb._h_c_t)
        )
        ext = _mapping(need("extremes"), "extremes")
        for name, kind, _unit in _EXTREMES:
            pair = ext.get(name)
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError(f"logbook field 'state.extremes.{name}' must be [value, time_s]")
            v, t = pair
            setattr(lb, "_x_" + name, (_INF if kind == "min" else -_INF) if v is None else float(v))
            setattr(lb, "_xt_" + name, None if t is None else float(t))
        return lb

    def to_json(self) -> str:
        """:meth:`to_dict` as a compact JSON string."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Logbook:
        """Rebuild a logbook from :meth:`to_json` output.

        Raises
        ------
        ValueError
            Not JSON, or not a logbook (see :meth:`from_dict`).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"logbook JSON is malformed: {exc}") from None
        return cls.from_dict(data)


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"logbook field 'state.{name}' must be a mapping")
    return value


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"logbook field 'state.{name}' must be a list")
    return value


def _floats(value: Any, name: str, n: int | None = None) -> list[float]:
    items = _list(value, name)
    if n is not None and len(items) != n:
        raise ValueError(f"logbook field 'state.{name}' must have {n} values, got {len(items)}")
    try:
        return [float(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"logbook field 'state.{name}' must hold numbers") from None


def _merge_pairs(periods: list[list[float | None]]) -> list[list[float | None]]:
    """Merge neighbouring period records two by two (an odd last one stays)."""
    out: list[list[float | None]] = []
    for k in range(0, len(periods) - 1, 2):
        a, b = periods[k], periods[k + 1]
        rec: list[float | None] = []
        for j, name in enumerate(PERIOD_COLUMNS):
            if name in _PERIOD_ADDITIVE:
                va, vb = a[j], b[j]
                rec.append(None if va is None or vb is None else va + vb)
            elif name in _PERIOD_FIRST:
                rec.append(a[j])
            else:
                rec.append(b[j])
        out.append(rec)
    if len(periods) % 2:
        out.append(periods[-1])
    return out


# --------------------------------------------------------------------------- run database

_TABLE_SQL = """CREATE TABLE IF NOT EXISTS logbook (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    time_s REAL NOT NULL,
    json TEXT NOT NULL
)"""
_INDEX_SQL = "CREATE INDEX IF NOT EXISTS logbook_run_time ON logbook(run_id, time_s)"


def _connect_rw(db_path: str | Path) -> sqlite3.Connection:
    """Open an existing openbess run database for writing the logbook table."""
    path = Path(db_path)
    if not path.is_file():
        raise StorageError(f"{path}: no such run database")
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot open run database: {exc}") from exc
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION:
            raise StorageError(
                f"{path}: not an openbess run database of schema {SCHEMA_VERSION} "
                f"(user_version {version})"
            )
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_TABLE_SQL)
        conn.execute(_INDEX_SQL)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StorageError(f"{path}: not a usable SQLite run database: {exc}") from exc
    except StorageError:
        conn.close()
        raise
    return conn


def _write(
    conn: sqlite3.Connection, path: str, run_id: int, time_s: float, text: str, keep: int
) -> None:
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)).fetchone() is None:
                raise StorageError(f"{path}: no run {run_id} to attach a logbook to")
            conn.execute(
                "INSERT INTO logbook (run_id, time_s, json) VALUES (?, ?, ?)",
                (int(run_id), float(time_s), text),
            )
            conn.execute(
                "DELETE FROM logbook WHERE run_id = ? AND rowid NOT IN (SELECT rowid FROM "
                "logbook WHERE run_id = ? ORDER BY time_s DESC, rowid DESC LIMIT ?)",
                (int(run_id), int(run_id), int(keep)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot write the logbook of run {run_id}: {exc}") from exc


def save_logbook(
    db_path: str | Path, run_id: int, logbook: Logbook, time_s: float, keep: int = 1
) -> None:
    """Write one snapshot of ``logbook`` for run ``run_id`` (one transaction).

    Parameters
    ----------
    db_path : str or pathlib.Path
        An openbess run database (created by :class:`~openbess.storage.RunStore`).
    run_id : int
        The run the logbook belongs to.
    logbook : Logbook
        The logbook.
    time_s : float
        Snapshot time [s, Unix UTC] (the last cycle's time).
    keep : int
        Snapshots of this run kept (the newest); the history is inside the logbook.

    Raises
    ------
    StorageError
        Missing file, not an openbess run database, no such run, or the write failed.
    """
    conn = _connect_rw(db_path)
    try:
        _write(conn, str(db_path), run_id, time_s, logbook.to_json(), keep)
    finally:
        conn.close()


def load_logbook(db_path: str | Path, run_id: int | None = None) -> tuple[Logbook, int, float]:
    """Read the newest logbook snapshot of a run.

    Parameters
    ----------
    db_path : str or pathlib.Path
        An openbess run database.
    run_id : int or None
        The run; None: the newest run that has a logbook.

    Returns
    -------
    tuple of (Logbook, int, float)
        The logbook, its run id and the snapshot time [s, Unix UTC].

    Raises
    ------
    StorageError
        Missing file, not an openbess run database, or no logbook (for that run).
    DataError
        The stored snapshot is not a readable logbook (the file and run are named).
    """
    path = Path(db_path)
    conn = _connect_ro(path)
    try:
        row = _latest_row(conn, path, run_id)
    finally:
        conn.close()
    rid, t, text = row
    try:
        return Logbook.from_json(text), rid, t
    except ValueError as exc:
        raise DataError(f"{path}: logbook of run {rid} at time_s {t}: {exc}") from None


def _connect_ro(path: Path) -> sqlite3.Connection:
    """Open ``path`` read-only and check it is an openbess run database."""
    if not path.is_file():
        raise StorageError(f"{path}: no such run database")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise StorageError(f"{path}: cannot open run database: {exc}") from exc
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StorageError(f"{path}: not an SQLite database ({exc})") from None
    if version != SCHEMA_VERSION or not {"runs", "pack", "events"} <= tables:
        conn.close()
        raise StorageError(
            f"{path}: not an openbess run database (schema version {version}, "
            f"tables {sorted(tables) or 'none'})"
        )
    return conn


def _latest_row(conn: sqlite3.Connection, path: Path, run_id: int | None) -> tuple[int, float, str]:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='logbook'"
    ).fetchone()
    if has_table is None:
        raise StorageError(f"{path}: no logbook in this run database (no 'logbook' table)")
    if run_id is None:
        row = conn.execute(
            "SELECT run_id, time_s, json FROM logbook ORDER BY run_id DESC, time_s DESC, "
            "rowid DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise StorageError(f"{path}: no logbook in this run database (the table is empty)")
    else:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (int(run_id),)).fetchone() is None:
            raise StorageError(f"{path}: no run {run_id} in this run database")
        row = conn.execute(
            "SELECT run_id, time_s, json FROM logbook WHERE run_id = ? "
            "ORDER BY time_s DESC, rowid DESC LIMIT 1",
            (int(run_id),),
        ).fetchone()
        if row is None:
            raise StorageError(f"{path}: run {run_id} has no logbook")
    return int(row[0]), float(row[1]), str(row[2])


class LogbookWriter:
    """Snapshots a logbook into the run database every ``interval_s`` of simulated time.

    In a fast-forward simulation the snapshots are also spaced by at least ``min_wall_s`` of
    wall time, so that writing them (a few ms for a long history) stays a small share of the
    run; after a crash the logbook is then at most ``max(interval_s of cycle time,
    min_wall_s of wall time)`` old.

    The writer keeps its own connection to the database file (the
    :class:`~openbess.storage.RunStore` has set WAL mode, so both write to the same file safely,
    one transaction at a time).

    Parameters
    ----------
    db_path : str or pathlib.Path
        The run database.
    run_id : int
        The run being recorded.
    interval_s : float
        Snapshot period [s of cycle time]; default 900 (15 minutes).
    keep : int
        Snapshots kept per run (the newest).
    min_wall_s : float
        Smallest wall-clock spacing of the periodic snapshots [s] (0: none).

    Raises
    ------
    StorageError
        Missing file or not an openbess run database.
    ValueError
        ``interval_s`` not > 0, ``keep`` < 1, ``min_wall_s`` < 0.
    """

    def __init__(
        self,
        db_path: str | Path,
        run_id: int,
        interval_s: float = 900.0,
        keep: int = 1,
        min_wall_s: float = 1.0,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0.0):
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        if not (math.isfinite(min_wall_s) and min_wall_s >= 0.0):
            raise ValueError(f"min_wall_s must be >= 0, got {min_wall_s!r}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep!r}")
        self.path = str(db_path)
        self.run_id = int(run_id)
        self.interval_s = float(interval_s)
        self.keep = int(keep)
        self.min_wall_s = float(min_wall_s)
        self._wall_next = 0.0
        self._conn: sqlite3.Connection | None = _connect_rw(db_path)
        self._next_s: float | None = None
        self.snapshots = 0

    def maybe_save(self, logbook: Logbook, time_s: float) -> bool:
        """Save a snapshot if ``interval_s`` has passed since the last one (cheap otherwise).

        Parameters
        ----------
        logbook : Logbook
            The logbook.
        time_s : float
            This cycle's time [s, Unix UTC].

        Returns
        -------
        bool
            True if a snapshot was written.
        """
        nxt = self._next_s
        if nxt is None:
            self._next_s = time_s + self.interval_s
            return False
        if time_s < nxt or time.monotonic() < self._wall_next:
            return False
        self.save(logbook, time_s)
        return True

    def save(self, logbook: Logbook, time_s: float) -> None:
        """Write a snapshot now (e.g. at the end of the run).

        Raises
        ------
        StorageError
            The writer is closed, or the write failed.
        """
        if self._conn is None:
            raise StorageError(f"{self.path}: the logbook writer is closed")
        _write(self._conn, self.path, self.run_id, time_s, logbook.to_json(), self.keep)
        self.snapshots += 1
        self._next_s = time_s + self.interval_s
        self._wall_next = time.monotonic() + self.min_wall_s

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LogbookWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
