"""Monitoring: plausibility of the raw measurements, before anything else uses them.

Every reading arrives with the hardware's validity flag. The monitor adds what a flag cannot
know, and marks the reading invalid (excluded from the extremes, the estimation and the limits)
with one *cause*, counted per sample (:attr:`MonitorResult.causes`) and in total
(:attr:`Monitor.counts`):

cell voltages
    ``flagged`` (hardware flag), ``not_finite``, ``open_wire`` (below ``open_wire_v``: no live
    cell reads that), ``range`` (above ``cell_voltage_plausible_max_v``: an open wire's partner
    input reads two cells), ``jump`` (a change since the last accepted reading that neither the
    current change ``R * dI`` nor the elapsed time explains), ``stuck`` (the reading has not
    changed at all while its string's current changed enough to move every healthy cell by two
    converter quanta through its ohmic resistance alone, and the string's mean voltage moved).
temperatures
    ``flagged``, ``not_finite``, ``range`` (outside the sensor's physical range), ``jump``.
string currents
    ``flagged``, ``not_finite``, ``range``, ``mismatch`` (one string disagrees with the mean of
    the others, for ``current_samples`` samples), ``zero`` (current reads through a contactor
    the BMS commanded open and whose auxiliary contact reports open, for ``current_samples``
    samples: an offset; it stays implausible until the sensor reads zero there again).

A jump is rejected only while the reading stays inside the operating window (the MOL limits of
the protection): a reading beyond a protection limit always reaches the fault table, so the
monitor never hides an over-voltage, an under-voltage or an over-temperature. The ranges are
physical bounds, never protection limits. A rejected reading's allowance grows with the time
since its last accepted one, so a level reached slowly enough is accepted again.

The pack voltage is compared with the sum of each string's cells: the fault table watches the
string farthest from it (:attr:`MonitorResult.string_voltage_sum_v`).

Cost: a clean sample (every flag set, every reading finite and in range, no jump) costs one
compiled pass over the cells (numba; numpy without it) and a few scalar operations; the
cell-by-cell masks are only built when something is wrong, and the stuck-value scan runs every
:data:`STUCK_SCAN_EVERY` samples. Nothing is computed per cell in Python.

Not covered: a current-sensor *offset* on a single string with the contactor closed is not
observable from the measurements alone (the cell voltages answer to changes of the current,
and an offset does not change); it shows as a phantom current (over-current tiers) and is
identified by the zero-current check once the contactor is open. A welded contactor whose
auxiliary contact also reports open would be taken for a current-sensor offset (the twin's
auxiliary contact mirrors the main contacts). A cell reading frozen while its string rests is
not detected (it is then still right); neither is a string whose every cell freezes at once
(its mean does not move).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from openbess.bms.defaults import BmsParams, MonitorParams, Tiers
from openbess.cell.ecm import NUMBA_AVAILABLE, jit
from openbess.cell.params import CellParams
from openbess.plant import Measurements

__all__ = [
    "STUCK_SCAN_EVERY",
    "Monitor",
    "MonitorResult",
    "extremes_and_jump",
    "jumps",
    "min_max",
    "outside",
    "scan_stuck",
    "string_current_outliers",
    "track_cells",
    "worst_string_sum",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int32]

#: Arrays up to this size are reduced in pure Python (numpy's per-call cost dominates).
_SMALL = 32
#: Samples of string current and mean voltage kept for the stuck-value check.
_HISTORY = 256
#: On clean samples the stuck-value scan runs every this many samples (it costs a few
#: gathers); a stuck reading is found at most this many samples later than it could be.
STUCK_SCAN_EVERY = 4
_NO_CAUSES: Mapping[str, int] = MappingProxyType({})
_NO_CAUSE_DICT: dict[str, int] = {}  # never written: shared by clean samples


def _readonly_false(n: int) -> BoolArray:
    out = np.zeros(n, dtype=np.bool_)
    out.flags.writeable = False
    return out


_FALSE1 = _readonly_false(1)


def min_max(a: FloatArray) -> tuple[float, float]:
    """Smallest and largest value of a non-empty array without NaN (exact either way).

    Parameters
    ----------
    a : numpy.ndarray
        Values, none NaN.

    Returns
    -------
    tuple of float
        ``(a.min(), a.max())``.
    """
    if a.size <= _SMALL:
        values = a.tolist()
        return min(values), max(values)
    return float(np.minimum.reduce(a)), float(np.maximum.reduce(a))


@jit
def _track_cells_kernel(
    v: FloatArray,
    prev: FloatArray,
    last_change: IntArray,
    k: int,
    hist_mean: FloatArray,
    pack_voltage_v: float,
) -> tuple[float, float, float, int, float]:
    """One pass over a sample: extremes, largest change, change stamps, string means.

    Sets ``last_change[j] = k`` where the reading differs from ``prev`` and writes each
    string's mean into ``hist_mean[:, k % history]``. Returns ``(min, max, max |v - prev|,
    oldest stamp, sum of the string farthest from pack_voltage_v)``.
    """
    n_strings = hist_mean.shape[0]
    col = k % hist_mean.shape[1]
    n_series = v.shape[0] // n_strings
    lo = v[0]
    hi = v[0]
    d_max = 0.0
    oldest = k
    worst = math.nan
    gap = -1.0
    j = 0
    for s in range(n_strings):
        acc = 0.0
        for _ in range(n_series):
            x = v[j]
            if x < lo:
                lo = x
            if x > hi:
                hi = x
            d = x - prev[j]
            if d != 0.0:
                last_change[j] = k
                if d < 0.0:
                    d = -d
                if d > d_max or d != d:  # NaN sticks: never judged clean
                    d_max = d
            elif last_change[j] < oldest:
                oldest = last_change[j]
            acc += x
            j += 1
        hist_mean[s, col] = acc / n_series
        g = abs(acc - pack_voltage_v)
        if g > gap:
            gap = g
            worst = acc
    return lo, hi, d_max, oldest, worst


def _track_cells_numpy(
    v: FloatArray,
    prev: FloatArray,
    last_change: IntArray,
    k: int,
    hist_mean: FloatArray,
    pack_voltage_v: float,
) -> tuple[float, float, float, int, float]:
    """:func:`_track_cells_kernel` with numpy (used without numba); the same results up to
    the rounding of the sums."""
    d = v - prev
    np.copyto(last_change, k, where=d != 0.0)
    n_strings = hist_mean.shape[0]
    sums = np.add.reduce(v.reshape(n_strings, -1), axis=1)
    hist_mean[:, k % hist_mean.shape[1]] = sums / (v.size // n_strings)
    gap = np.abs(sums - pack_voltage_v)
    worst = float(sums[int(np.argmax(gap))]) if pack_voltage_v == pack_voltage_v else math.nan
    d_max = float(np.max(np.abs(d)))
    return float(np.min(v)), float(np.max(v)), d_max, int(np.min(last_change)), worst


#: The per-sample pass over the cells (compiled when numba is installed):
#: ``track_cells(v, prev, last_change, k, hist_mean, pack_voltage_v)
#: -> (min, max, max |dv|, oldest change stamp, sum of the string farthest from the pack)``.
track_cells = _track_cells_kernel if NUMBA_AVAILABLE else _track_cells_numpy


@jit
def _scan_stuck_kernel(
    last_change: IntArray,
    k: int,
    min_samples: int,
    hist_i: FloatArray,
    hist_mean: FloatArray,
    step_a: float,
    step_v: float,
    ok: BoolArray,
    stuck: BoolArray,
) -> bool:
    """Mark ``stuck`` the usable readings unchanged for >= ``min_samples`` samples while
    their string's current moved by >= ``step_a`` and its mean voltage by >= ``step_v``
    (both compared with the sample of their last change). True if one was newly marked."""
    n_strings, history = hist_i.shape
    n_series = last_change.shape[0] // n_strings
    col = k % history
    found = False
    for j in range(last_change.shape[0]):
        run = k - last_change[j]
        if run < min_samples or stuck[j] or not ok[j]:
            continue
        if run > history - 1:
            run = history - 1
        then = (k - run) % history
        s = j // n_series
        di = abs(hist_i[s, col] - hist_i[s, then])
        dm = abs(hist_mean[s, col] - hist_mean[s, then])
        if di >= step_a and dm >= step_v:  # False for NaN
            stuck[j] = True
            found = True
    return found


def _scan_stuck_numpy(
    last_change: IntArray,
    k: int,
    min_samples: int,
    hist_i: FloatArray,
    hist_mean: FloatArray,
    step_a: float,
    step_v: float,
    ok: BoolArray,
    stuck: BoolArray,
) -> bool:
    """:func:`_scan_stuck_kernel` with numpy; the same results."""
    n_strings, history = hist_i.shape
    run = k - last_change
    idx = np.flatnonzero((run >= min_samples) & ok & ~stuck)
    if idx.size == 0:
        return False
    col = k % history
    then = (k - np.minimum(run[idx], history - 1)) % history
    s = idx // (last_change.size // n_strings)
    with np.errstate(invalid="ignore"):
        di = np.abs(hist_i[s, col] - hist_i[s, then])
        dm = np.abs(hist_mean[s, col] - hist_mean[s, then])
        hit = (di >= step_a) & (dm >= step_v)
    stuck[idx[hit]] = True
    return bool(hit.any())


#: The stuck-value scan (compiled when numba is installed), see :func:`_scan_stuck_kernel`.
scan_stuck = _scan_stuck_kernel if NUMBA_AVAILABLE else _scan_stuck_numpy


@jit
def _extremes_and_jump_kernel(t: FloatArray, prev: FloatArray) -> tuple[float, float, float]:
    """Smallest and largest value of ``t`` and the largest ``|t - prev|`` (all NaN: a NaN)."""
    lo = t[0]
    hi = t[0]
    d_max = 0.0
    for j in range(t.shape[0]):
        x = t[j]
        if x != x:
            return math.nan, math.nan, math.nan
        if x < lo:
            lo = x
        if x > hi:
            hi = x
        d = abs(x - prev[j])
        if d > d_max or d != d:
            d_max = d
    return lo, hi, d_max


def _extremes_and_jump_numpy(t: FloatArray, prev: FloatArray) -> tuple[float, float, float]:
    """:func:`_extremes_and_jump_kernel` with numpy; the same results."""
    if bool(np.isnan(t).any()):
        return math.nan, math.nan, math.nan
    return float(np.min(t)), float(np.max(t)), float(np.max(np.abs(t - prev)))


#: ``extremes_and_jump(t, prev) -> (min, max, max |t - prev|)`` (compiled with numba).
extremes_and_jump = _extremes_and_jump_kernel if NUMBA_AVAILABLE else _extremes_and_jump_numpy


def outside(values: FloatArray, lo: float, hi: float) -> BoolArray:
    """Readings that are not finite or lie outside ``[lo, hi]``.

    Parameters
    ----------
    values : numpy.ndarray
        Readings, in the unit of the bounds.
    lo, hi : float
        Physical bounds.

    Returns
    -------
    numpy.ndarray of bool
        True where the reading is impossible.
    """
    out: BoolArray = ~((values >= lo) & (values <= hi))  # NaN compares False: outside
    return out


def jumps(
    values: FloatArray,
    reference: FloatArray,
    allowance: FloatArray | float,
    keep_lo: float,
    keep_hi: float,
) -> BoolArray:
    """Readings that moved further from their reference than allowed, inside a window.

    Parameters
    ----------
    values : numpy.ndarray
        New readings.
    reference : numpy.ndarray
        Last accepted reading of each (NaN: none yet, never a jump).
    allowance : numpy.ndarray or float
        Largest plausible change, same unit (>= 0; inf or NaN disables the check).
    keep_lo, keep_hi : float
        Readings outside this window are never called jumps (they are the fault table's).

    Returns
    -------
    numpy.ndarray of bool
        True where the change is implausible.
    """
    moved = np.abs(values - reference) > allowance  # NaN: False
    out: BoolArray = moved & (values >= keep_lo) & (values <= keep_hi)
    return out


def string_current_outliers(
    current_a: FloatArray, valid: BoolArray, abs_tol_a: float, rel_tol: float
) -> BoolArray:
    """Strings whose current disagrees with the mean of the other valid strings.

    Parallel strings on one bus carry nearly the same current. With two valid strings a
    disagreement cannot be attributed: both are returned. With three or more only the string
    that disagrees most is returned (one broken sensor also pulls the others' means).

    Parameters
    ----------
    current_a : numpy.ndarray
        String currents [A], positive = discharge.
    valid : numpy.ndarray of bool
        Readings to compare (the others are never outliers).
    abs_tol_a : float
        Absolute tolerance [A].
    rel_tol : float
        Relative tolerance [fraction of the others' mean magnitude].

    Returns
    -------
    numpy.ndarray of bool
        True for the disagreeing string(s).
    """
    out = np.zeros(current_a.shape, dtype=np.bool_)
    idx = np.flatnonzero(valid)
    n = idx.size
    if n < 2:
        return out
    x = current_a[idx]
    others = (float(np.add.reduce(x)) - x) / (n - 1)
    dev = np.abs(x - others)
    bad = dev > np.maximum(abs_tol_a, rel_tol * np.abs(others))
    if not np.any(bad):
        return out
    if n == 2:
        out[idx] = True
    else:
        out[idx[int(np.argmax(np.where(bad, dev, -1.0)))]] = True
    return out


def worst_string_sum(
    cell_voltage_v: FloatArray, valid: BoolArray, n_strings: int, pack_voltage_v: float
) -> float:
    """Sum of cell voltages of the complete string farthest from the pack voltage.

    Parameters
    ----------
    cell_voltage_v : numpy.ndarray
        Cell voltages [V], string by string.
    valid : numpy.ndarray of bool
        Validity of each reading; a string with an invalid cell is skipped.
    n_strings : int
        Strings in parallel.
    pack_voltage_v : float
        Measured pack voltage [V].

    Returns
    -------
    float
        That string's sum [V]; NaN if no string is complete or the pack voltage is unknown.
    """
    if not math.isfinite(pack_voltage_v):
        return math.nan
    ok = valid.reshape(n_strings, -1)
    complete = np.logical_and.reduce(ok, axis=1)
    if not np.any(complete):
        return math.nan
    sums = np.add.reduce(np.where(ok, cell_voltage_v.reshape(n_strings, -1), 0.0), axis=1)
    gap = np.where(complete, np.abs(sums - pack_voltage_v), -1.0)
    return float(sums[int(np.argmax(gap))])


class MonitorResult(NamedTuple):
    """The monitor's verdict on one sample.

    Parameters
    ----------
    cell_voltage_valid : numpy.ndarray of bool
        Cell voltages to use (hardware flag and every plausibility check, stuck ones excluded).
    n_invalid_voltage : int
        Cell voltages excluded for a cause other than ``stuck``.
    n_stuck_voltage : int
        Cell voltages excluded as stuck.
    voltage_sum_v, voltage_min_v, voltage_max_v : float
        Sum, lowest and highest cell voltage [V] when every reading is used (exactly
        ``numpy.add.reduce`` and :func:`min_max`); NaN otherwise.
    string_voltage_sum_v : float
        Sum of the complete string farthest from the pack voltage [V] (one string: the sum of
        all cells); NaN if none.
    temperature_valid : numpy.ndarray of bool
        Temperature readings to use.
    n_invalid_temperature : int
        Temperature readings excluded.
    string_current_valid : numpy.ndarray of bool
        String currents to use.
    current_valid : bool
        Every string current is flagged valid, finite and inside the sensor range.
    current_implausible : bool
        A valid current disagrees with the others or reads through the open contactor.
    current_trusted : bool
        The pack current may be used for contactor decisions now (valid, plausible, and not
        reading current through the open contactor in this sample).
    causes : Mapping[str, int]
        Readings excluded in this sample by cause, e.g. ``{"cell_voltage_open_wire": 1}``.
    """

    cell_voltage_valid: BoolArray
    n_invalid_voltage: int
    n_stuck_voltage: int
    voltage_sum_v: float
    voltage_min_v: float
    voltage_max_v: float
    string_voltage_sum_v: float
    temperature_valid: BoolArray
    n_invalid_temperature: int
    string_current_valid: BoolArray
    current_valid: bool
    current_implausible: bool
    current_trusted: bool
    causes: Mapping[str, int]


def _window(*tiers: Tiers, low: bool) -> float:
    """Operating window edge: the mildest used threshold (MOL if set) over several rows."""
    edges = [next(t for t in tier.as_tuple() if t is not None) for tier in tiers]
    return max(edges) if low else min(edges)


#: Internal verdict on the voltages: valid, n_invalid, n_stuck, summary, string sum, causes.
_Voltages = tuple[BoolArray, int, int, tuple[float, float, float] | None, float, dict[str, int]]
#: Internal verdict on the currents: valid, current_valid, implausible, trusted, causes,
#: ``|dI|`` per string (float for one string, list otherwise; inf when unknown), history value.
_Currents = tuple[
    BoolArray, bool, bool, bool, dict[str, int], float | list[float], float | list[float]
]


class Monitor:
    """Plausibility of each sample; keeps the little history the checks need.

    Parameters
    ----------
    params : MonitorParams
        Bounds, tolerances and sample counts.
    n_strings, n_series : int
        Pack layout (cells are ordered string by string).
    capacity_ah : float
        Pack capacity [Ah] (all strings), the base of the current C-rates.
    cell_r0_min_ohm : float
        Smallest ohmic resistance of a series cell over the operating temperatures [ohm].
    cell_resistance_max_ohm : float
        Largest total resistance (ohmic + RC) of a series cell [ohm].
    voltage_window_v : tuple of float
        Operating window of the cell voltage [V] (jumps outside are not rejected).
    temperature_window_degc : tuple of float
        Operating window of the temperatures [degC].

    Raises
    ------
    ValueError
        A layout or resistance that is not positive.
    """

    def __init__(
        self,
        params: MonitorParams,
        n_strings: int,
        n_series: int,
        capacity_ah: float,
        cell_r0_min_ohm: float,
        cell_resistance_max_ohm: float,
        voltage_window_v: tuple[float, float],
        temperature_window_degc: tuple[float, float],
    ) -> None:
        if n_strings < 1 or n_series < 1:
            raise ValueError(f"n_strings and n_series must be >= 1, got {n_strings}, {n_series}")
        for name, value in (
            ("capacity_ah", capacity_ah),
            ("cell_r0_min_ohm", cell_r0_min_ohm),
            ("cell_resistance_max_ohm", cell_resistance_max_ohm),
        ):
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        p = params
        self.params = p
        self.n_strings = n_strings
        self.n_series = n_series
        n = n_strings * n_series
        string_ah = capacity_ah / n_strings
        self._v_lo = p.open_wire_v
        self._v_hi = p.cell_voltage_plausible_max_v
        self._v_keep = voltage_window_v
        self._t_lo = p.temperature_plausible_min_degc
        self._t_hi = p.temperature_plausible_max_degc
        self._t_keep = temperature_window_degc
        self._r_jump = p.jump_resistance_factor * cell_resistance_max_ohm
        #: String current change that moves a healthy cell by ``stuck_ohmic_step_v`` [A].
        self.stuck_current_step_a = p.stuck_ohmic_step_v / cell_r0_min_ohm
        self._i_range = p.current_range_c * string_ah
        self._i_mismatch = p.current_mismatch_c * string_ah
        self._i_zero = p.zero_current_c * capacity_ah
        #: Readings excluded so far, by cause (see the module docstring), summed over samples.
        self.counts: dict[str, int] = {}
        self._k = -1  # index of the last new sample
        self._last_time_s: float | None = None
        # Voltages.
        self._prev_v: FloatArray | None = None
        self._ref_v: FloatArray | None = None  # last accepted readings while some are rejected
        self._extra_v: FloatArray | None = None  # their grown allowance [V]
        self._last_change: IntArray = np.zeros(n, dtype=np.int32)
        self._stuck: BoolArray = np.zeros(n, dtype=np.bool_)
        self._stuck_any = False
        self._hist_i: FloatArray = np.full((n_strings, _HISTORY), np.nan)
        self._hist_mean: FloatArray = np.full((n_strings, _HISTORY), np.nan)
        self._hist_i0 = self._hist_i[0]  # one string: a 1-d view (cheaper to write)
        self._all_ok: BoolArray = np.ones(n, dtype=np.bool_)
        # Temperatures.
        self._prev_t: FloatArray | None = None
        self._ref_t: FloatArray | None = None
        self._extra_t: FloatArray | None = None
        # Currents.
        self._prev_x = math.nan  # one string: last usable current [A]
        self._prev_vals: list[float] | None = None  # several: last currents (inf: unusable)
        self._fail_i: IntArray = np.zeros(n_strings, dtype=np.int32)
        self._pass_i: IntArray = np.zeros(n_strings, dtype=np.int32)
        self._mismatch: BoolArray = np.zeros(n_strings, dtype=np.bool_)
        self._mismatch_state = False  # a string failed the comparison lately
        self._zero_fail = 0
        self._zero_pass = 0
        self._zero_fault = False
        # Flag arrays known to be all True (read-only arrays shared between samples).
        self._all_true: tuple[object, object] = (None, None)
        self._last: MonitorResult | None = None
        self._last_arrays: tuple[object, object, object] = (None, None, None)

    @classmethod
    def for_pack(
        cls, params: BmsParams, cell: CellParams, n_strings: int, n_series: int
    ) -> Monitor:
        """Monitor for a pack: windows from the protection, resistances from the cell model.

        Parameters
        ----------
        params : BmsParams
            Parameter set (its ``monitor`` and ``protection`` groups are used).
        cell : CellParams
            Nominal parameters of one series cell (parallel group).
        n_strings, n_series : int
            Pack layout.

        Returns
        -------
        Monitor
            A monitor with no history.
        """
        pp = params.protection
        voltage_window = (
            _window(pp.cell_voltage_min_v, low=True),
            _window(pp.cell_voltage_max_v, low=False),
        )
        temperature_window = (
            _window(pp.charge_temperature_min_degc, pp.discharge_temperature_min_degc, low=True),
            _window(pp.charge_temperature_max_degc, pp.discharge_temperature_max_degc, low=False),
        )
        r0_min = float(np.min(cell.r0_ohm))
        r_max = float(np.max(cell.r0_ohm + cell.rc_r_ohm.sum(axis=0)))
        return cls(
            params.monitor,
            n_strings,
            n_series,
            params.capacity_ah,
            r0_min,
            r_max,
            voltage_window,
            temperature_window,
        )

    # ------------------------------------------------------------------ the check
    def _flags_all_true(self, flags: BoolArray, which: int) -> bool:
        """True when every flag is set (cached for a read-only array seen all True)."""
        if flags is self._all_true[which]:
            return True
        if int(np.count_nonzero(flags)) != flags.size:
            return False
        if not flags.flags.writeable:
            cache = list(self._all_true)
            cache[which] = flags
            self._all_true = (cache[0], cache[1])
        return True

    def check(self, time_s: float, m: Measurements, expect_zero_current: bool) -> MonitorResult:
        """Judge one sample.

        Parameters
        ----------
        time_s : float
            Cycle time [s, Unix UTC].
        m : Measurements
            The raw sample.
        expect_zero_current : bool
            The contactor was commanded open (precharge relay too) and its auxiliary contact
            reports open: no current can flow.

        Returns
        -------
        MonitorResult
            What to use. Odd readings never raise.

        Raises
        ------
        ValueError
            The sample does not have one voltage per cell of the layout (a wiring or
            configuration error, not a reading).
        """
        v, t, i = m.cell_voltage_v, m.cell_temperature_degc, m.string_current_a
        last = self._last
        held = self._last_arrays
        if (
            v is held[0]
            and t is held[1]
            and i is held[2]
            and last is not None
            and not (v.flags.writeable or t.flags.writeable or i.flags.writeable)
        ):
            # A held sample (the same read-only arrays again): no new information.
            i_ok, valid, implausible, trusted, i_causes, _, _ = self._currents(
                i, m.string_current_valid, expect_zero_current, new=False
            )
            kept = {k: c for k, c in last.causes.items() if not k.startswith("current_")}
            kept.update(i_causes)
            result = last._replace(
                string_current_valid=i_ok,
                current_valid=valid,
                current_implausible=implausible,
                current_trusted=trusted,
                causes=MappingProxyType(kept) if kept else _NO_CAUSES,
            )
            self._last = result
            return result
        if v.shape != self._last_change.shape:
            raise ValueError(
                f"Measurements.cell_voltage_v has shape {v.shape}, the monitored pack "
                f"{self._last_change.shape} ({self.n_strings} strings x {self.n_series} cells)"
            )
        self._k += 1
        dt_s = 0.0 if self._last_time_s is None else max(time_s - self._last_time_s, 0.0)
        self._last_time_s = time_s
        i_ok, valid, implausible, trusted, i_causes, di_a, i_hist = self._currents(
            i, m.string_current_valid, expect_zero_current, new=True
        )
        v_ok, n_inv, n_stuck, summary, string_sum, v_causes = self._voltages(
            v, m.cell_voltage_valid, m.pack_voltage_v, dt_s, di_a, i_hist
        )
        t_ok, n_bad_t, t_causes = self._temperatures(t, m.cell_temperature_valid, dt_s)
        causes = _NO_CAUSES
        if v_causes or t_causes or i_causes:
            merged = {**v_causes, **t_causes, **i_causes}
            counts = self.counts
            for key, count in merged.items():
                counts[key] = counts.get(key, 0) + count
            causes = MappingProxyType(merged)
        if summary is None:
            summary = (math.nan, math.nan, math.nan)
        result = MonitorResult(
            v_ok,
            n_inv,
            n_stuck,
            summary[0],
            summary[1],
            summary[2],
            string_sum,
            t_ok,
            n_bad_t,
            i_ok,
            valid,
            implausible,
            trusted,
            causes,
        )
        self._last = result
        self._last_arrays = (v, t, i)
        return result

    # ------------------------------------------------------------------ currents
    def _zero_update(self, checked: bool, violated: bool) -> None:
        """Debounce the zero-current check; its verdict sticks until it passes again."""
        if not checked:
            self._zero_fail = 0
            self._zero_pass = 0
            return
        n = self.params.current_samples
        if violated:
            self._zero_fail += 1
            self._zero_pass = 0
            if self._zero_fail >= n:
                self._zero_fault = True
        else:
            self._zero_pass += 1
            self._zero_fail = 0
            if self._zero_pass >= n:
                self._zero_fault = False

    def _currents(self, i: FloatArray, flags: BoolArray, expect_zero: bool, new: bool) -> _Currents:
        """Current verdict (see :data:`_Currents`)."""
        causes: dict[str, int] = {}
        if self.n_strings != 1 or i.size != 1 or flags.size != 1:
            return self._currents_strings(i, flags, expect_zero, new, causes)
        x = float(i[0])
        flag = bool(flags[0])
        hw_ok = flag and abs(x) <= self._i_range  # False for NaN
        if not hw_ok:
            if not flag:
                causes["current_flagged"] = 1
            else:
                causes["current_not_finite" if not math.isfinite(x) else "current_range"] = 1
        violated = expect_zero and hw_ok and abs(x) > self._i_zero
        if new:
            self._zero_update(expect_zero and hw_ok, violated)
        implausible = hw_ok and self._zero_fault
        if implausible:
            causes["current_zero"] = 1
        usable = hw_ok and not implausible
        di = math.inf
        if new:
            if usable:
                di = abs(x - self._prev_x)
                if di != di:  # no previous usable current
                    di = math.inf
            self._prev_x = x if usable else math.nan
        return (
            flags if usable else _FALSE1,
            hw_ok,
            implausible,
            usable and not violated,
            causes,
            di,
            x if usable else math.nan,
        )

    def _currents_strings(
        self,
        i: FloatArray,
        flags: BoolArray,
        expect_zero: bool,
        new: bool,
        causes: dict[str, int],
    ) -> _Currents:
        """:meth:`_currents` for several strings (Python floats while all is well)."""
        p = self.params
        ns = i.size
        vals = i.tolist()
        prev_vals = self._prev_vals
        total = sum(vals)
        lo = min(vals)
        hi = max(vals)
        # No string is further from the others' mean than the spread; with one sign, the
        # others' mean magnitude is at least the smallest magnitude: a sufficient check.
        tol = self._i_mismatch
        if lo > 0.0 or hi < 0.0:
            tol = max(tol, p.current_mismatch_fraction * min(abs(lo), abs(hi)))
        if (
            total - total == 0.0  # every value finite
            and not self._mismatch_state
            and not self._zero_fault
            and int(np.count_nonzero(flags)) == ns
            and -self._i_range <= lo
            and hi <= self._i_range
            and hi - lo <= tol
        ):
            # Every string valid and within the tolerance of every other.
            violated = expect_zero and abs(total) > self._i_zero
            di: float | list[float] = math.inf
            if new:
                self._zero_update(expect_zero, violated)
                if prev_vals is not None and len(prev_vals) == ns:
                    di = [abs(a - b) for a, b in zip(vals, prev_vals, strict=True)]
                self._prev_vals = vals
            if not self._zero_fault:
                return flags, True, False, not violated, causes, di, vals
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(i)
            hw = flags & finite & (np.abs(i) <= self._i_range)
        n_hw = int(np.count_nonzero(hw))
        current_valid = n_hw == ns
        if not current_valid:
            for name, mask in (
                ("current_flagged", ~flags),
                ("current_not_finite", flags & ~finite),
                ("current_range", flags & finite & ~hw),
            ):
                c = int(np.count_nonzero(mask))
                if c:
                    causes[name] = c
        if new:
            outliers = string_current_outliers(i, hw, self._i_mismatch, p.current_mismatch_fraction)
            self._fail_i = np.where(outliers, self._fail_i + 1, 0)
            self._pass_i = np.where(outliers, 0, self._pass_i + 1)
            self._mismatch = (self._mismatch | (self._fail_i >= p.current_samples)) & ~(
                self._pass_i >= p.current_samples
            )
            self._mismatch_state = bool(self._fail_i.any() or self._mismatch.any())
        mismatch = self._mismatch & hw
        checked = expect_zero and current_valid
        violated = checked and abs(float(np.add.reduce(i))) > self._i_zero
        if new:
            self._zero_update(checked, violated)
        zero = self._zero_fault and current_valid
        n_mismatch = int(np.count_nonzero(mismatch))
        if n_mismatch:
            causes["current_mismatch"] = n_mismatch
        if zero:
            causes["current_zero"] = n_hw
        implausible = bool(n_mismatch) or zero
        if zero:
            ok = _readonly_false(ns)
        elif implausible or not current_valid:
            ok = hw & ~mismatch
        else:
            ok = flags
        trusted = current_valid and not implausible and not violated
        hist = np.where(ok, i, math.nan).tolist()
        di = math.inf
        if new:
            # Unusable strings are remembered as inf: their |dI| is then inf (no limit).
            now = [x if good else math.inf for x, good in zip(vals, ok.tolist(), strict=True)]
            if prev_vals is not None and len(prev_vals) == ns:
                diffs = [abs(a - b) for a, b in zip(now, prev_vals, strict=True)]
                di = [d if d == d else math.inf for d in diffs]
            self._prev_vals = now
        return ok, current_valid, implausible, trusted, causes, di, hist

    # ------------------------------------------------------------------ voltages
    def _allowance_v(self, dt_s: float, di_a: float | list[float]) -> FloatArray | float:
        """Largest plausible change of a cell voltage per string since the last sample [V]."""
        base = self.params.cell_voltage_jump_v + self.params.cell_voltage_rate_v_per_s * dt_s
        if isinstance(di_a, float):
            return base + self._r_jump * di_a
        out: FloatArray = base + self._r_jump * np.asarray(di_a, dtype=np.float64)
        return out

    def _voltages(
        self,
        v: FloatArray,
        flags: BoolArray,
        pack_v: float,
        dt_s: float,
        di_a: float | list[float],
        i_hist: float | list[float],
    ) -> _Voltages:
        k = self._k
        prev = self._prev_v
        self._prev_v = v.copy() if v.flags.writeable else v
        if (
            prev is not None
            and self._ref_v is None
            and not self._stuck_any
            and v.dtype == np.float64
            and self._flags_all_true(flags, 0)
        ):
            # Every reading flagged valid and none rejected or stuck before: one pass checks
            # the range, the jumps and stamps the changes.
            total = float(np.add.reduce(v))
            lo, hi, d_max, oldest, worst = track_cells(
                v, prev, self._last_change, k, self._hist_mean, pack_v
            )
            if total == total and lo >= self._v_lo and hi <= self._v_hi:  # finite, in range
                col = k % _HISTORY
                if self.n_strings == 1:
                    self._hist_i0[col] = i_hist
                    string_sum = total
                else:
                    self._hist_i[:, col] = i_hist
                    string_sum = worst
                p = self.params
                base = p.cell_voltage_jump_v + p.cell_voltage_rate_v_per_s * dt_s
                di_min = di_a if isinstance(di_a, float) else min(di_a)
                if d_max <= base + self._r_jump * di_min and (
                    k - oldest < p.stuck_min_samples
                    or k % STUCK_SCAN_EVERY
                    or not self._scan_stuck(k, None)
                ):
                    return flags, 0, 0, (total, lo, hi), string_sum, _NO_CAUSE_DICT
        return self._voltages_full(v, flags, pack_v, dt_s, di_a, i_hist, prev)

    def _scan_stuck(self, k: int, ok: BoolArray | None) -> bool:
        """Mark readings unchanged since their string's current and mean voltage moved.

        Parameters
        ----------
        k : int
            Index of this sample (its history column is written).
        ok : numpy.ndarray of bool or None
            Readings that may be judged (None: all).

        Returns
        -------
        bool
            True if a reading was newly marked stuck.
        """
        p = self.params
        found = scan_stuck(
            self._last_change,
            k,
            p.stuck_min_samples,
            self._hist_i,
            self._hist_mean,
            self.stuck_current_step_a,
            p.stuck_mean_step_v,
            self._all_ok if ok is None else ok,
            self._stuck,
        )
        if found:
            self._stuck_any = True
        return bool(found)

    def _voltages_full(
        self,
        v: FloatArray,
        flags: BoolArray,
        pack_v: float,
        dt_s: float,
        di_a: float | list[float],
        i_hist: float | list[float],
        prev: FloatArray | None,
    ) -> _Voltages:
        """Cell-by-cell masks (something is or was wrong)."""
        n, ns, nser = v.size, self.n_strings, self.n_series
        k = self._k
        col = k % _HISTORY
        flags = np.asarray(flags, dtype=np.bool_)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(v)
            usable = flags & finite
            open_wire = usable & (v < self._v_lo)
            high = usable & (v > self._v_hi)
            ok = usable & ~open_wire & ~high
            jump = np.zeros(n, dtype=np.bool_)
            allow_cells: FloatArray | float = 0.0
            ref: FloatArray = np.full(n, math.nan)
            if prev is not None:
                ref = self._ref_v if self._ref_v is not None else prev
                allow = self._allowance_v(dt_s, di_a)
                allow_cells = allow if isinstance(allow, float) else np.repeat(allow, nser)
                # A rejected reading's allowance grows with every sample since its last
                # accepted one (a level reached slowly enough is accepted again).
                extra = 0.0 if self._extra_v is None else self._extra_v
                jump = ok & jumps(v, ref, allow_cells + extra, *self._v_keep)
                ok &= ~jump
            if bool(np.logical_and.reduce(ok)):
                self._ref_v = None
                self._extra_v = None
            else:
                self._ref_v = np.where(ok, v, ref)
                extra = 0.0 if self._extra_v is None else self._extra_v
                self._extra_v = np.where(ok, 0.0, extra + allow_cells)
            # History: each string's current and mean accepted voltage.
            ok2 = ok.reshape(ns, nser)
            count = np.add.reduce(ok2, axis=1)
            sums = np.add.reduce(np.where(ok2, v.reshape(ns, nser), 0.0), axis=1)
            self._hist_mean[:, col] = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
            self._hist_i[:, col] = i_hist
            # Stuck: unchanged since the string's current and mean voltage moved.
            changed = np.ones(n, dtype=np.bool_) if prev is None else (v != prev) | ~ok
            np.copyto(self._last_change, k, where=changed)
            self._stuck &= ~changed
            self._scan_stuck(k, ok)
        stuck = self._stuck & ok
        self._stuck_any = bool(self._stuck.any())
        n_stuck = int(np.count_nonzero(stuck))
        n_ok = int(np.count_nonzero(ok))
        causes: dict[str, int] = {}
        for name, mask in (
            ("cell_voltage_flagged", ~flags),
            ("cell_voltage_not_finite", flags & ~finite),
            ("cell_voltage_open_wire", open_wire),
            ("cell_voltage_range", high),
            ("cell_voltage_jump", jump),
            ("cell_voltage_stuck", stuck),
        ):
            c = int(np.count_nonzero(mask))
            if c:
                causes[name] = c
        summary: tuple[float, float, float] | None = None
        if n_ok == n and n_stuck == 0:
            total = float(np.add.reduce(v))
            summary = (total, *min_max(v))
            valid = flags
        else:
            valid = ok & ~stuck
        if ns == 1:
            string_sum = summary[0] if summary is not None else math.nan
        else:
            string_sum = worst_string_sum(v, valid, ns, pack_v)
        return valid, n - n_ok, n_stuck, summary, string_sum, causes

    # ------------------------------------------------------------------ temperatures
    def _temperatures(
        self, t: FloatArray, flags: BoolArray, dt_s: float
    ) -> tuple[BoolArray, int, dict[str, int]]:
        p = self.params
        n = t.size
        prev = self._prev_t
        self._prev_t = t.copy() if t.flags.writeable else t
        if prev is not None and prev.shape != t.shape:
            prev = None
            self._ref_t = self._extra_t = None
        if n == 0:
            return flags, 0, _NO_CAUSE_DICT
        allow = p.temperature_jump_degc + p.temperature_rate_degc_per_s * dt_s
        if (
            prev is not None
            and self._ref_t is None
            and t.dtype == np.float64
            and self._flags_all_true(flags, 1)
        ):
            lo, hi, d_max = extremes_and_jump(t, prev)
            # NaN compares False: not clean.
            if self._t_lo <= lo and hi <= self._t_hi and d_max <= allow:
                return flags, 0, _NO_CAUSE_DICT
        flags = np.asarray(flags, dtype=np.bool_)
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(t)
            usable = flags & finite
            bad_range = usable & outside(t, self._t_lo, self._t_hi)
            ok = usable & ~bad_range
            jump = np.zeros(n, dtype=np.bool_)
            ref: FloatArray = np.full(n, math.nan)
            if prev is not None:
                ref = self._ref_t if self._ref_t is not None else prev
                extra = 0.0 if self._extra_t is None else self._extra_t
                jump = ok & jumps(t, ref, allow + extra, *self._t_keep)
                ok &= ~jump
            if bool(np.logical_and.reduce(ok)):
                self._ref_t = self._extra_t = None
            else:
                self._ref_t = np.where(ok, t, ref)
                extra = 0.0 if self._extra_t is None else self._extra_t
                self._extra_t = np.where(ok, 0.0, extra + allow)
        causes: dict[str, int] = {}
        for name, mask in (
            ("temperature_flagged", ~flags),
            ("temperature_not_finite", flags & ~finite),
            ("temperature_range", bad_range),
            ("temperature_jump", jump),
        ):
            c = int(np.count_nonzero(mask))
            if c:
                causes[name] = c
        n_ok = int(np.count_nonzero(ok))
        return (flags if n_ok == n else ok), n - n_ok, causes
