"""Charge and discharge current limits: piecewise-linear derating, then a recovery rate limit.

Each limit is the rated current times the smallest of its derating factors (foxBMS SOF
"trapezoid", dbus-serialbattery CCL/DCL): cell temperature (cold and hot), the highest cell
voltage (charge) or the lowest (discharge), and the SoC near 1 (charge) or 0 (discharge).
Limits are magnitudes [A], >= 0.

Against chattering, :class:`LimitCalculator` lets a limit fall at once but rise only at
``recovery_rate_a_per_s``, not before ``recovery_hold_s`` after the last reduction, and, once at
0, only when the target exceeds ``resume_fraction`` of the rated current.

Invalid inputs (NaN) never raise a limit: an unknown voltage or SoC gives factor 0; unknown
temperatures give 0 for charge and ``unknown_temperature_discharge_factor`` for discharge.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
import numpy.typing as npt

from openbess.bms.defaults import Curve, LimitParams

__all__ = [
    "LimitCalculator",
    "charge_limit_a",
    "derating_factor",
    "discharge_limit_a",
    "temperature_factor",
]

FloatArray = npt.NDArray[np.float64]


def derating_factor(x: npt.ArrayLike, curve: Curve) -> FloatArray:
    """Factor of a piecewise-linear derating curve; NaN input gives 0.

    Parameters
    ----------
    x : array_like
        Value of the derating quantity, in the unit of ``curve.x``.
    curve : Curve
        Break points and factors; the end factors hold outside.

    Returns
    -------
    numpy.ndarray
        Factor [fraction, 0..1], same shape as ``x``.
    """
    xa = np.asarray(x, dtype=np.float64)
    f = np.interp(xa, np.asarray(curve.x), np.asarray(curve.factor))
    return np.where(np.isnan(xa), 0.0, f)


def temperature_factor(
    temperature_min_degc: npt.ArrayLike,
    temperature_max_degc: npt.ArrayLike,
    curve: Curve,
    unknown_factor: float = 0.0,
) -> FloatArray:
    """Temperature derating over the coldest and the hottest cell.

    Parameters
    ----------
    temperature_min_degc, temperature_max_degc : array_like
        Lowest / highest valid cell temperature [degC]; NaN when none is valid.
    curve : Curve
        Factor vs temperature, 0 at both ends.
    unknown_factor : float
        Factor returned when either temperature is NaN [fraction].

    Returns
    -------
    numpy.ndarray
        ``min(f(T_min), f(T_max))`` [fraction].
    """
    t_lo = np.asarray(temperature_min_degc, dtype=np.float64)
    t_hi = np.asarray(temperature_max_degc, dtype=np.float64)
    f = np.minimum(derating_factor(t_lo, curve), derating_factor(t_hi, curve))
    return np.where(np.isnan(t_lo) | np.isnan(t_hi), unknown_factor, f)


def charge_limit_a(
    params: LimitParams,
    cell_voltage_max_v: npt.ArrayLike,
    temperature_min_degc: npt.ArrayLike,
    temperature_max_degc: npt.ArrayLike,
    soc: npt.ArrayLike,
) -> FloatArray:
    """Charge current limit before rate limiting [A], magnitude.

    Parameters
    ----------
    params : LimitParams
        Rated current and derating curves.
    cell_voltage_max_v : array_like
        Highest cell voltage [V].
    temperature_min_degc, temperature_max_degc : array_like
        Lowest / highest cell temperature [degC].
    soc : array_like
        SoC [fraction] (the highest cell SoC, or the pack SoC).

    Returns
    -------
    numpy.ndarray
        ``rated_charge_current_a * min(factors)`` [A], in ``[0, rated]``.
    """
    f = np.minimum(
        derating_factor(cell_voltage_max_v, params.charge_voltage),
        temperature_factor(temperature_min_degc, temperature_max_degc, params.charge_temperature),
    )
    f = np.minimum(f, derating_factor(soc, params.charge_soc))
    return params.rated_charge_current_a * f


def discharge_limit_a(
    params: LimitParams,
    cell_voltage_min_v: npt.ArrayLike,
    temperature_min_degc: npt.ArrayLike,
    temperature_max_degc: npt.ArrayLike,
    soc: npt.ArrayLike,
) -> FloatArray:
    """Discharge current limit before rate limiting [A], magnitude.

    Parameters
    ----------
    params : LimitParams
        Rated current and derating curves.
    cell_voltage_min_v : array_like
        Lowest cell voltage [V].
    temperature_min_degc, temperature_max_degc : array_like
        Lowest / highest cell temperature [degC].
    soc : array_like
        SoC [fraction] (the lowest cell SoC, or the pack SoC).

    Returns
    -------
    numpy.ndarray
        ``rated_discharge_current_a * min(factors)`` [A], in ``[0, rated]``.
    """
    f = np.minimum(
        derating_factor(cell_voltage_min_v, params.discharge_voltage),
        temperature_factor(
            temperature_min_degc,
            temperature_max_degc,
            params.discharge_temperature,
            params.unknown_temperature_discharge_factor,
        ),
    )
    f = np.minimum(f, derating_factor(soc, params.discharge_soc))
    return params.rated_discharge_current_a * f


# ------------------------------------------------------------------ scalar path
# The cycle evaluates the limits on scalars; numpy's per-call overhead dominates there, so the
# calculator uses these pure-Python twins of the functions above. They give bit-identical
# results (same break-point search and the same interpolation formula as ``numpy.interp``).


def _curve_points(curve: Curve) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(float(v) for v in curve.x), tuple(float(f) for f in curve.factor)


def _factor_scalar(x: float, xs: tuple[float, ...], fs: tuple[float, ...]) -> float:
    """:func:`derating_factor` of one float (NaN gives 0); ``xs`` strictly increasing."""
    if x != x:  # NaN
        return 0.0
    if x < xs[0]:
        return fs[0]
    last = len(xs) - 1
    if x > xs[last]:
        return fs[last]
    j = bisect_right(xs, x) - 1
    if j == last or xs[j] == x:
        return fs[j]
    slope = (fs[j + 1] - fs[j]) / (xs[j + 1] - xs[j])
    return slope * (x - xs[j]) + fs[j]


def _temperature_factor_scalar(
    t_lo: float,
    t_hi: float,
    xs: tuple[float, ...],
    fs: tuple[float, ...],
    unknown_factor: float,
) -> float:
    """:func:`temperature_factor` of two floats."""
    if t_lo != t_lo or t_hi != t_hi:
        return float(unknown_factor)
    return min(_factor_scalar(t_lo, xs, fs), _factor_scalar(t_hi, xs, fs))


class _Curves:
    """The break points of every curve of one :class:`LimitParams`, as float tuples."""

    __slots__ = (
        "charge_soc",
        "charge_temperature",
        "charge_voltage",
        "discharge_soc",
        "discharge_temperature",
        "discharge_voltage",
        "params",
    )

    def __init__(self, p: LimitParams) -> None:
        self.params = p
        self.charge_voltage = _curve_points(p.charge_voltage)
        self.charge_temperature = _curve_points(p.charge_temperature)
        self.charge_soc = _curve_points(p.charge_soc)
        self.discharge_voltage = _curve_points(p.discharge_voltage)
        self.discharge_temperature = _curve_points(p.discharge_temperature)
        self.discharge_soc = _curve_points(p.discharge_soc)


class _Ramp:
    """Rate limiter of one limit: falls at once, rises at ``rate`` after ``hold``."""

    __slots__ = ("last_reduction_s", "last_time_s", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.last_time_s: float | None = None
        self.last_reduction_s: float | None = None

    def step(self, time_s: float, target: float, rated: float, p: LimitParams) -> float:
        start = time_s if self.last_time_s is None else self.last_time_s
        self.last_time_s = time_s
        if target <= self.value:
            if target < self.value:
                self.last_reduction_s = time_s
            self.value = target
            return self.value
        if self.value <= 0.0 and target <= p.resume_fraction * rated:
            return self.value
        if self.last_reduction_s is not None:
            start = max(start, self.last_reduction_s + p.recovery_hold_s)
        rise = p.recovery_rate_a_per_s * max(0.0, time_s - start)
        self.value = min(target, self.value + rise)
        return self.value


class LimitCalculator:
    """Stateful charge/discharge limits: derating plus anti-chatter recovery.

    Both limits start at 0 and ramp up from the first call.

    Parameters
    ----------
    params : LimitParams
        Rated currents, curves and recovery settings.
    """

    def __init__(self, params: LimitParams) -> None:
        self.params = params
        self._charge = _Ramp()
        self._discharge = _Ramp()
        self._last_time_s: float | None = None
        self._curves = _Curves(params)

    def update(
        self,
        time_s: float,
        cell_voltage_max_v: float,
        cell_voltage_min_v: float,
        temperature_min_degc: float,
        temperature_max_degc: float,
        soc_max: float,
        soc_min: float,
        allow_charge: bool = True,
        allow_discharge: bool = True,
    ) -> tuple[float, float]:
        """Limits for this cycle.

        Parameters
        ----------
        time_s : float
            Cycle time [s, Unix UTC]; never earlier than the previous call.
        cell_voltage_max_v, cell_voltage_min_v : float
            Highest / lowest valid cell voltage [V] (NaN if unknown).
        temperature_min_degc, temperature_max_degc : float
            Lowest / highest valid cell temperature [degC] (NaN if unknown).
        soc_max, soc_min : float
            Highest / lowest cell SoC [fraction] (or the pack SoC for both).
        allow_charge, allow_discharge : bool
            From the protection: False forces that limit to 0 (then it recovers by the ramp).

        Returns
        -------
        charge_a, discharge_a : float
            Charge and discharge current limits [A], magnitudes in ``[0, rated]``.

        Raises
        ------
        ValueError
            ``time_s`` not finite or earlier than the previous call.
        """
        if not math.isfinite(time_s):
            raise ValueError(f"time_s must be finite, got {time_s!r}")
        if self._last_time_s is not None and time_s < self._last_time_s:
            raise ValueError(f"time_s went backwards: {time_s!r} < {self._last_time_s!r}")
        self._last_time_s = time_s
        p = self.params
        c = self._curves
        if c.params is not p:  # params replaced: rebuild the break-point tables
            c = self._curves = _Curves(p)
        # Same arithmetic as charge_limit_a / discharge_limit_a, on floats.
        charge = 0.0
        if allow_charge:
            f = min(
                _factor_scalar(cell_voltage_max_v, *c.charge_voltage),
                _temperature_factor_scalar(
                    temperature_min_degc, temperature_max_degc, *c.charge_temperature, 0.0
                ),
            )
            f = min(f, _factor_scalar(soc_max, *c.charge_soc))
            charge = p.rated_charge_current_a * f
        discharge = 0.0
        if allow_discharge:
            f = min(
                _factor_scalar(cell_voltage_min_v, *c.discharge_voltage),
                _temperature_factor_scalar(
                    temperature_min_degc,
                    temperature_max_degc,
                    *c.discharge_temperature,
                    p.unknown_temperature_discharge_factor,
                ),
            )
            f = min(f, _factor_scalar(soc_min, *c.discharge_soc))
            discharge = p.rated_discharge_current_a * f
        return (
            self._charge.step(time_s, charge, p.rated_charge_current_a, p),
            self._discharge.step(time_s, discharge, p.rated_discharge_current_a, p),
        )
