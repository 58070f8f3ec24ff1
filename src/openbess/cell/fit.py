"""Fitting equivalent-circuit parameters from measured cell tests (pure functions, scipy).

The model is the one of :mod:`openbess.cell.ecm`; nothing here simulates a second ECM. The
fits work on :class:`~openbess.cell.io.CellLog` objects (our one log format), so the same
functions serve the built-in parameter sets (``scripts/fit_cells.py``) and user data.

* **OCV from slow tests** (:func:`fit_ocv_plett`): Plett's method for the four scripts of the
  ESC toolbox (S1 slow discharge at the test temperature, S2 bottom-out at 25 degC, S3 slow
  charge at the test temperature, S4 top-up at 25 degC): coulombic efficiency per temperature,
  capacity, the IR-compensated charge and discharge branches on the SoC grid, their mean (the
  OCV) and half-difference (the hysteresis half-width M).
* **OCV from rests** (:func:`ocv_points_from_rests`, :func:`ocv_table_from_points`): the voltage
  at the end of long rests (e.g. the 1 h rests of an HPPC test) against coulomb-counted SoC.
* **Dynamics** (:func:`fit_ecm_dynamic`): R0 and the RC pairs (SoC-dependent on a coarse knot
  grid), the RC time constants, the hysteresis rate gamma and a hysteresis scale, by least
  squares on the ECM terminal voltage. For fixed time constants and gamma the ECM voltage is
  *linear* in the resistances (the zero-order-hold recursions of :func:`~openbess.cell.ecm.step`
  are linear in the inputs), so an inner non-negative linear least squares gives the
  resistances exactly, and an outer Nelder-Mead search tunes the time constants and gamma.
  The regressors reproduce :func:`openbess.cell.ecm.step` sample by sample (checked in the
  tests and by :func:`simulate_log`, which runs the real ECM).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import optimize, signal

from openbess.cell.ecm import CellModel, CellState, step
from openbess.cell.io import CellLog, coulombs_ah
from openbess.cell.params import CellParams, ThermalParams
from openbess.errors import EstimationError

FloatArray = npt.NDArray[np.float64]

log = logging.getLogger(__name__)


def soc_grid(soc_points: int = 21) -> FloatArray:
    """Uniform SoC grid from 0 to 1 [fraction].

    Parameters
    ----------
    soc_points : int
        Number of points (>= 2).

    Returns
    -------
    numpy.ndarray
        The grid.
    """
    if soc_points < 2:
        raise ValueError(f"soc_points must be >= 2, got {soc_points}")
    return np.linspace(0.0, 1.0, soc_points)


def monotone_ocv(ocv_v: FloatArray, min_slope_v: float = 1e-6) -> FloatArray:
    """Make an OCV row non-decreasing (isotonic by running maximum, then a tiny slope).

    Parameters
    ----------
    ocv_v : numpy.ndarray
        OCV on an ascending SoC grid [V], shape ``(..., ns)``.
    min_slope_v : float
        Minimum increase between neighbouring points [V].

    Returns
    -------
    numpy.ndarray
        Non-decreasing OCV [V].
    """
    v = np.maximum.accumulate(np.asarray(ocv_v, dtype=np.float64), axis=-1)
    ramp = min_slope_v * np.arange(v.shape[-1])
    out: FloatArray = np.maximum.accumulate(v - ramp, axis=-1) + ramp
    return out


# -- segment helpers -----------------------------------------------------------------------


def current_runs(current_a: FloatArray, threshold_a: float) -> list[tuple[int, int, int]]:
    """Split a current trace into runs of constant sign.

    Parameters
    ----------
    current_a : numpy.ndarray
        Current [A], positive = discharge.
    threshold_a : float
        Currents with ``|i| <= threshold_a`` count as rest [A].

    Returns
    -------
    list of tuple
        ``(start, stop, sign)`` with ``stop`` exclusive and ``sign`` in {-1, 0, +1}.
    """
    sgn = np.where(current_a > threshold_a, 1, np.where(current_a < -threshold_a, -1, 0))
    if sgn.size == 0:
        return []
    edges = np.flatnonzero(np.diff(sgn) != 0) + 1
    starts = np.concatenate(([0], edges))
    stops = np.concatenate((edges, [sgn.size]))
    return [(int(a), int(b), int(sgn[a])) for a, b in zip(starts, stops, strict=True)]


def _longest_run(cell_log: CellLog, sign: int, threshold_a: float) -> tuple[int, int]:
    runs = [
        (b - a, a, b)
        for a, b, s in current_runs(cell_log.current_a, threshold_a)
        if s == sign and b - a > 2
    ]
    if not runs:
        kind = "discharge" if sign > 0 else "charge"
        raise EstimationError(f"{cell_log.source}: no {kind} segment found")
    _, a, b = max(runs)
    return a, b


# -- OCV from slow discharge / charge (Plett) -----------------------------------------------


@dataclass(frozen=True)
class PlettScripts:
    """The four OCV-test scripts at one temperature (Plett's ESC toolbox protocol).

    Parameters
    ----------
    s1, s2, s3, s4 : CellLog
        S1: rest at full charge then slow discharge to the lower cut-off (test temperature);
        S2: bottom-out discharge and rest (25 degC); S3: slow charge to the upper cut-off (test
        temperature); S4: top-up charge and rest (25 degC).
    """

    s1: CellLog
    s2: CellLog
    s3: CellLog
    s4: CellLog


@dataclass(frozen=True)
class OcvFit:
    """Result of an OCV fit on a (temperature, SoC) grid.

    Parameters
    ----------
    temperature_degc : numpy.ndarray
        Temperatures [degC], ascending, shape ``(nt,)``.
    soc : numpy.ndarray
        SoC grid [fraction], shape ``(ns,)``.
    ocv_v : numpy.ndarray
        Mean OCV [V], non-decreasing in SoC, shape ``(nt, ns)``.
    hysteresis_v : numpy.ndarray
        Hysteresis half-width M [V] >= 0, shape ``(nt, ns)``.
    capacity_ah : numpy.ndarray
        Capacity at each temperature [Ah], shape ``(nt,)``.
    coulombic_efficiency : numpy.ndarray
        Charge efficiency [fraction], shape ``(nt,)``.
    step_resistance_ohm : numpy.ndarray
        Apparent resistance from the voltage steps at the start of the slow discharge and the
        end of the slow charge [ohm], shape ``(nt,)`` (NaN when not measured); a proxy for how
        resistance changes with temperature.
    raw_ocv_v : numpy.ndarray
        Per-temperature mean OCV before smoothing across temperature [V], shape ``(nt, ns)``.
    """

    temperature_degc: FloatArray
    soc: FloatArray
    ocv_v: FloatArray
    hysteresis_v: FloatArray
    capacity_ah: FloatArray
    coulombic_efficiency: FloatArray
    step_resistance_ohm: FloatArray
    raw_ocv_v: FloatArray


def ocv_from_branches(
    discharge_soc: FloatArray,
    discharge_v: FloatArray,
    charge_soc: FloatArray,
    charge_v: FloatArray,
    soc: FloatArray,
    interior: tuple[float, float] = (0.1, 0.9),
) -> tuple[FloatArray, FloatArray]:
    """Mean OCV and hysteresis half-width from IR-compensated discharge and charge branches.

    Parameters
    ----------
    discharge_soc, discharge_v : numpy.ndarray
        Discharge branch: SoC [fraction] and IR-compensated voltage [V].
    charge_soc, charge_v : numpy.ndarray
        Charge branch: SoC [fraction] and IR-compensated voltage [V].
    soc : numpy.ndarray
        Output SoC grid [fraction].
    interior : tuple of float
        SoC range where the branches are trusted for M [fraction]; outside it M is capped at
        the largest interior value (near the cut-offs the branch difference is dominated by
        relaxation, not hysteresis).

    Returns
    -------
    tuple of numpy.ndarray
        ``(ocv_v, hysteresis_v)`` on ``soc`` [V].
    """
    od = np.argsort(discharge_soc)
    oc = np.argsort(charge_soc)
    vd = np.interp(soc, discharge_soc[od], discharge_v[od])
    vc = np.interp(soc, charge_soc[oc], charge_v[oc])
    ocv = monotone_ocv(0.5 * (vd + vc))
    m = np.clip(0.5 * (vc - vd), 0.0, None)
    inner = (soc >= interior[0]) & (soc <= interior[1])
    if np.any(inner):
        m = np.minimum(m, m[inner].max())
    return ocv, m


def _ah_split(cell_log: CellLog) -> tuple[float, float]:
    """Total discharged and total charged charge of a log [Ah] (both >= 0)."""
    dt = np.diff(cell_log.time_s)
    i = cell_log.current_a[1:]
    dis = float(np.sum(np.clip(i, 0.0, None) * dt) / 3600.0)
    chg = float(np.sum(np.clip(-i, 0.0, None) * dt) / 3600.0)
    return dis, chg


def _branches(
    scripts: PlettScripts, eta: float, capacity_ah: float, threshold_a: float
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float, float, float]:
    """IR-compensated branches of S1 (discharge) and S3 (charge), as in Plett's processOCV."""
    s1, s3 = scripts.s1, scripts.s3
    a, b = _longest_run(s1, +1, threshold_a)
    c, d = _longest_run(s3, -1, threshold_a)
    if a == 0 or c == 0 or b >= len(s1) or d >= len(s3):
        raise EstimationError(
            f"{s1.source} / {s3.source}: the slow discharge and charge must be preceded and "
            "followed by a rest"
        )
    v1, v3 = s1.voltage_v, s3.voltage_v
    ir1d = v1[a - 1] - v1[a]
    ir2d = v1[b] - v1[b - 1]
    ir1c = v3[c] - v3[c - 1]
    ir2c = v3[d - 1] - v3[d]
    ir1d, ir2d, ir1c, ir2c = (
        min(ir1d, 2 * ir2c),
        min(ir2d, 2 * ir1c),
        min(ir1c, 2 * ir2d),
        min(ir2c, 2 * ir1d),
    )
    blend_d = np.linspace(0.0, 1.0, b - a)
    dis_v = v1[a:b] + ir1d + (ir2d - ir1d) * blend_d
    qd = coulombs_ah(s1.time_s[a:b], s1.current_a[a:b])
    dis_z = 1.0 - qd / capacity_ah
    dis_z = dis_z + (1.0 - dis_z[0])
    blend_c = np.linspace(0.0, 1.0, d - c)
    chg_v = v3[c:d] - (ir1c + (ir2c - ir1c) * blend_c)
    qc = -coulombs_ah(s3.time_s[c:d], s3.current_a[c:d]) * eta
    chg_z = qc / capacity_ah
    chg_z = chg_z - chg_z[0]
    i_d = float(np.mean(np.abs(s1.current_a[a:b])))
    i_c = float(np.mean(np.abs(s3.current_a[c:d])))
    r_step = math.sqrt(max(v1[a - 1] - v1[a], 0.0) / i_d * max(v3[d - 1] - v3[d], 0.0) / i_c)
    return dis_z, dis_v, chg_z, chg_v, r_step, float(v1[a - 1]), float(v3[c - 1])


def fit_ocv_plett(
    scripts: Mapping[float, PlettScripts],
    soc_points: int = 21,
    reference_temperature_degc: float = 25.0,
    smooth_min_temperature_degc: float | None = 0.0,
    rest_threshold_a: float = 1e-3,
    end_rests: bool = True,
) -> OcvFit:
    """Fit OCV(SoC, T), hysteresis, capacity and coulombic efficiency (Plett's method).

    At the reference temperature the efficiency is total discharge over total charge of the
    four scripts; at the other temperatures S2 and S4 ran at the reference temperature, so
    ``eta_T = (sum dis - eta_ref (chg_S2 + chg_S4)) / (chg_S1 + chg_S3)``. The capacity is
    ``dis_S1 + dis_S2 - eta_T chg_S1 - eta_ref chg_S2``. The branches are compensated for the
    IR steps at their ends (blended linearly, bounded as in Plett's toolbox) and mapped to SoC
    with the reference capacity.

    Parameters
    ----------
    scripts : mapping of float to PlettScripts
        The scripts by test temperature [degC]; must contain the reference temperature.
    soc_points : int
        Points of the SoC grid.
    reference_temperature_degc : float
        Temperature of S2/S4 and the reference capacity [degC].
    smooth_min_temperature_degc : float or None
        If given, the OCV table is the least-squares fit ``OCV0(z) + T * OCVrel(z)`` over the
        temperatures at or above this value (Plett uses the positive temperatures), evaluated
        at every temperature; ``None`` keeps the raw per-temperature OCV.
    rest_threshold_a : float
        Currents below this are rest [A].
    end_rests : bool
        Take the OCV at SoC 1 (and 0) from the rest before the slow discharge (charge), less
        (plus) the hysteresis, instead of the branch mean.

    Returns
    -------
    OcvFit
        The fit.

    Raises
    ------
    EstimationError
        If the reference temperature is missing or a script has no slow segment.
    """
    temps = np.array(sorted(scripts), dtype=np.float64)
    if reference_temperature_degc not in scripts:
        raise EstimationError(
            f"fit_ocv_plett: the {reference_temperature_degc} degC scripts are required"
        )
    grid = soc_grid(soc_points)
    ref = scripts[reference_temperature_degc]
    split = {t: [_ah_split(getattr(scripts[t], f"s{k}")) for k in (1, 2, 3, 4)] for t in temps}
    r = split[reference_temperature_degc]
    eta_ref = sum(x[0] for x in r) / sum(x[1] for x in r)
    q_ref = r[0][0] + r[1][0] - eta_ref * (r[0][1] + r[1][1])
    del ref
    nt = temps.size
    eta = np.empty(nt)
    cap = np.empty(nt)
    raw = np.empty((nt, soc_points))
    hyst = np.empty((nt, soc_points))
    r_step = np.empty(nt)
    for k, t in enumerate(temps):
        s = split[t]
        if t == reference_temperature_degc:
            eta[k] = eta_ref
        else:
            eta[k] = (sum(x[0] for x in s) - eta_ref * (s[1][1] + s[3][1])) / (s[0][1] + s[2][1])
        cap[k] = s[0][0] + s[1][0] - eta[k] * s[0][1] - eta_ref * s[1][1]
        dz, dv, cz, cv, r_step[k], v_full, v_empty = _branches(
            scripts[t], eta[k], q_ref, rest_threshold_a
        )
        raw[k], hyst[k] = ocv_from_branches(dz, dv, cz, cv, grid)
        if end_rests:
            # Rested cell at full after a charge (h = +1) and at empty after a discharge
            # (h = -1): better end points than the branch mean, which at the cut-offs is
            # dominated by polarisation.
            raw[k, -1] = v_full - hyst[k, -1]
            raw[k, 0] = v_empty + hyst[k, 0]
            raw[k] = monotone_ocv(raw[k])
    if smooth_min_temperature_degc is not None:
        use = temps >= smooth_min_temperature_degc
        if use.sum() >= 2:
            h = np.column_stack([np.ones(use.sum()), temps[use]])
            coef, *_ = np.linalg.lstsq(h, raw[use], rcond=None)
            ocv = monotone_ocv(coef[0][None, :] + temps[:, None] * coef[1][None, :])
        else:
            ocv = raw.copy()
    else:
        ocv = raw.copy()
    return OcvFit(
        temperature_degc=temps,
        soc=grid,
        ocv_v=ocv,
        hysteresis_v=hyst,
        capacity_ah=cap,
        coulombic_efficiency=np.minimum(eta, 1.0),
        step_resistance_ohm=r_step,
        raw_ocv_v=raw,
    )


# -- OCV from rests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RestPoints:
    """OCV points taken at the end of long rests.

    Parameters
    ----------
    soc : numpy.ndarray
        Coulomb-counted SoC at the end of each rest [fraction].
    voltage_v : numpy.ndarray
        Voltage at the end of each rest [V].
    previous_sign : numpy.ndarray
        Sign of the current before each rest (+1 discharge, -1 charge).
    loaded_voltage_v : numpy.ndarray
        Voltage at the last sample before each rest [V].
    loaded_current_a : numpy.ndarray
        Current at the last sample before each rest [A].
    """

    soc: FloatArray
    voltage_v: FloatArray
    previous_sign: npt.NDArray[np.int64]
    loaded_voltage_v: FloatArray
    loaded_current_a: FloatArray


def soc_trajectory(
    cell_log: CellLog,
    capacity_ah: float,
    soc0: float,
    coulombic_efficiency: float = 1.0,
) -> FloatArray:
    """Coulomb-counted SoC, as :func:`openbess.cell.ecm.step` counts it (no clipping).

    Parameters
    ----------
    cell_log : CellLog
        The log.
    capacity_ah : float
        Capacity [Ah].
    soc0 : float
        SoC at the first sample [fraction].
    coulombic_efficiency : float
        Charge efficiency applied to charging current [fraction].

    Returns
    -------
    numpy.ndarray
        SoC [fraction], shape ``(n,)``.
    """
    i = cell_log.current_a[1:]
    eta = np.where(i < 0.0, coulombic_efficiency, 1.0)
    dq = eta * i * np.diff(cell_log.time_s) / (3600.0 * capacity_ah)
    out: FloatArray = soc0 - np.concatenate(([0.0], np.cumsum(dq)))
    return out


def ocv_points_from_rests(
    cell_log: CellLog,
    capacity_ah: float,
    soc0: float,
    min_rest_s: float = 1800.0,
    rest_threshold_a: float = 0.05,
    coulombic_efficiency: float = 1.0,
) -> RestPoints:
    """OCV points at the end of every rest of at least ``min_rest_s``.

    Parameters
    ----------
    cell_log : CellLog
        The log (e.g. an HPPC test with long rests between SoC steps).
    capacity_ah : float
        Capacity [Ah].
    soc0 : float
        SoC at the first sample [fraction].
    min_rest_s : float
        Minimum rest duration [s].
    rest_threshold_a : float
        Currents with smaller magnitude are rest [A].
    coulombic_efficiency : float
        Charge efficiency [fraction].

    Returns
    -------
    RestPoints
        The points in time order.
    """
    z = soc_trajectory(cell_log, capacity_ah, soc0, coulombic_efficiency)
    t = cell_log.time_s
    out: list[tuple[float, float, int, float, float]] = []
    runs = current_runs(cell_log.current_a, rest_threshold_a)
    prev_sign = 0
    for a, b, s in runs:
        if s != 0:
            prev_sign = s
            continue
        if a == 0 or t[b - 1] - t[a - 1] < min_rest_s:
            continue
        out.append(
            (
                float(z[b - 1]),
                float(cell_log.voltage_v[b - 1]),
                prev_sign,
                float(cell_log.voltage_v[a - 1]),
                float(cell_log.current_a[a - 1]),
            )
        )
    if not out:
        raise EstimationError(f"{cell_log.source}: no rest of {min_rest_s} s or more")
    arr = np.array(out)
    return RestPoints(
        soc=arr[:, 0],
        voltage_v=arr[:, 1],
        previous_sign=arr[:, 2].astype(np.int64),
        loaded_voltage_v=arr[:, 3],
        loaded_current_a=arr[:, 4],
    )


def ocv_table_from_points(
    soc_points: FloatArray,
    voltage_v: FloatArray,
    soc: FloatArray,
    low_end: tuple[FloatArray, FloatArray] | None = None,
) -> FloatArray:
    """Interpolate OCV points onto a SoC grid, extrapolating the ends.

    Parameters
    ----------
    soc_points, voltage_v : numpy.ndarray
        Measured points [fraction], [V] (any order).
    soc : numpy.ndarray
        Output grid [fraction].
    low_end : tuple of numpy.ndarray, optional
        Extra ``(soc, voltage)`` samples used below the lowest point (e.g. a loaded discharge
        curve shifted by the IR drop measured at the lowest rest), so the steep end of the
        curve keeps its shape instead of a straight-line extrapolation.

    Returns
    -------
    numpy.ndarray
        Non-decreasing OCV on ``soc`` [V].
    """
    o = np.argsort(soc_points)
    zs, vs = np.asarray(soc_points)[o], np.asarray(voltage_v)[o]
    if low_end is not None:
        lz, lv = low_end
        keep = lz < zs[0]
        zs = np.concatenate((lz[keep], zs))
        vs = np.concatenate((lv[keep], vs))
        o = np.argsort(zs)
        zs, vs = zs[o], vs[o]
    out = np.interp(soc, zs, vs)
    lo = soc < zs[0]
    if np.any(lo) and zs.size >= 2:
        slope = (vs[1] - vs[0]) / max(zs[1] - zs[0], 1e-9)
        out[lo] = vs[0] + slope * (soc[lo] - zs[0])
    hi = soc > zs[-1]
    if np.any(hi) and zs.size >= 2:
        slope = (vs[-1] - vs[-2]) / max(zs[-1] - zs[-2], 1e-9)
        out[hi] = vs[-1] + slope * (soc[hi] - zs[-1])
    return monotone_ocv(out)


# -- dynamic fit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DynamicFit:
    """Result of :func:`fit_ecm_dynamic` at one temperature.

    Parameters
    ----------
    temperature_degc : float
        Temperature of the test [degC].
    soc : numpy.ndarray
        SoC grid of the tables [fraction], shape ``(ns,)``.
    r0_ohm : numpy.ndarray
        Series resistance [ohm], shape ``(ns,)``.
    rc_r_ohm : numpy.ndarray
        RC resistances [ohm], shape ``(nrc, ns)``.
    rc_tau_s : numpy.ndarray
        RC time constants [s], ascending, shape ``(nrc,)``.
    hysteresis_rate : float
        Hysteresis rate gamma [1].
    hysteresis_scale : float
        Factor applied to the hysteresis table M of the input parameters [1].
    rmse_v : float
        Root-mean-square voltage error of the fitted model on the log [V].
    max_error_v : float
        Largest absolute voltage error [V].
    residual_v : numpy.ndarray
        Measured minus modelled voltage [V], shape ``(n,)``.
    """

    temperature_degc: float
    soc: FloatArray
    r0_ohm: FloatArray
    rc_r_ohm: FloatArray
    rc_tau_s: FloatArray
    hysteresis_rate: float
    hysteresis_scale: float
    rmse_v: float
    max_error_v: float
    residual_v: FloatArray


def _hat_basis(z: FloatArray, knots: FloatArray) -> FloatArray:
    """Piecewise-linear (hat) basis on ``knots`` evaluated at ``z`` (clipped), shape (n, K)."""
    zc = np.clip(z, knots[0], knots[-1])
    k = knots.size
    j = np.clip(np.searchsorted(knots, zc, side="right") - 1, 0, k - 2)
    f = (zc - knots[j]) / (knots[j + 1] - knots[j])
    out = np.zeros((z.size, k))
    rows = np.arange(z.size)
    out[rows, j] = 1.0 - f
    out[rows, j + 1] += f
    return out


def _ltv_filter(a: FloatArray, u: FloatArray) -> FloatArray:
    """Solve ``y[n] = a[n] y[n-1] + u[n]`` (y[-1] = 0) column-wise; runs of equal ``a`` use
    :func:`scipy.signal.lfilter` (exact), so variable sampling stays fast."""
    n = a.size
    y = np.empty_like(u)
    edges = np.flatnonzero(np.diff(a) != 0) + 1
    starts = np.concatenate(([0], edges))
    stops = np.concatenate((edges, [n]))
    state = np.zeros(u.shape[1:])
    for s0, s1 in zip(starts, stops, strict=True):
        coef = float(a[s0])
        seg = u[s0:s1]
        if s1 - s0 == 1:
            y[s0] = coef * state + seg[0]
        else:
            zi = (coef * state)[None, ...]
            out, _ = signal.lfilter([1.0], [1.0, -coef], seg, axis=0, zi=zi)
            y[s0:s1] = out
        state = y[s1 - 1]
    return y


def _hysteresis_path(x: FloatArray, target: FloatArray, h0: float) -> FloatArray:
    """``h[n] = target[n] + (h[n-1] - target[n]) exp(-x[n])``, the ECM's exact update."""
    decay = np.exp(-x).tolist()
    tg = target.tolist()
    out = [0.0] * len(tg)
    h = h0
    for k in range(len(tg)):
        h = tg[k] + (h - tg[k]) * decay[k]
        out[k] = h
    return np.asarray(out)


@dataclass
class _Regression:
    dt: FloatArray
    i: FloatArray
    y: FloatArray  # measured voltage minus OCV
    m_table: FloatArray  # M(z_n)
    basis_now: FloatArray  # phi(z_n), (n, K)
    u_rc: FloatArray  # phi(z_{n-1}) * i_n, (n, K)
    hyst_x_per_gamma: FloatArray
    hyst_target: FloatArray
    h0: float
    penalty: FloatArray  # rows of the smoothing penalty for one K-group
    n_rc: int
    weights: FloatArray


def _design(reg: _Regression, taus: FloatArray, gamma: float) -> FloatArray:
    cols = [-(reg.basis_now * reg.i[:, None])]
    for tau in taus:
        a = np.exp(-reg.dt / tau)
        g = _ltv_filter(a, reg.u_rc * (1.0 - a)[:, None])
        cols.append(-g)
    h = _hysteresis_path(reg.hyst_x_per_gamma * gamma, reg.hyst_target, reg.h0)
    cols.append((reg.m_table * h)[:, None])
    design: FloatArray = np.hstack(cols)
    return design


def _solve(
    reg: _Regression, design: FloatArray, fit_hyst: bool, lower: FloatArray | None = None
) -> tuple[FloatArray, float]:
    k = reg.basis_now.shape[1]
    groups = 1 + reg.n_rc
    ncol = design.shape[1]
    a = design * reg.weights[:, None]
    b = reg.y * reg.weights
    if not fit_hyst:
        b = b - a[:, -1]
        a = a[:, :-1]
    pen_rows = []
    for gidx in range(groups):
        block = np.zeros((reg.penalty.shape[0], a.shape[1]))
        block[:, gidx * k : (gidx + 1) * k] = reg.penalty
        pen_rows.append(block)
    if pen_rows:
        a = np.vstack([a, *pen_rows])
        b = np.concatenate([b, np.zeros(len(pen_rows) * reg.penalty.shape[0])])
    scale = np.sqrt((a * a).sum(axis=0))
    scale[scale == 0] = 1.0
    # Same minimiser on the small triangular system: ||A x - b|| = ||R x - Q^T b|| + const.
    q, r = np.linalg.qr(a / scale)
    qtb = q.T @ b
    # Lower bounds by substitution x = lb + y, y >= 0 (still a plain NNLS).
    lb = np.zeros(a.shape[1]) if lower is None else lower[: a.shape[1]] * scale
    y, _ = optimize.nnls(r, qtb - r @ lb, maxiter=50 * a.shape[1])
    coef = (lb + y) / scale
    if not fit_hyst:
        coef = np.concatenate([coef, [1.0]])
    resid = reg.y - design[:, :ncol] @ coef
    sse = float(np.sum((resid * reg.weights) ** 2))
    return coef, sse


def fit_ecm_dynamic(
    cell_log: CellLog,
    params: CellParams,
    soc0: float,
    *,
    temperature_degc: float | None = None,
    hysteresis0: float = 0.0,
    n_rc: int = 2,
    tau_guess_s: Sequence[float] = (5.0, 60.0),
    soc_knots: int | Sequence[float] = 6,
    fit_hysteresis: bool = True,
    gamma_guess: float = 50.0,
    smoothing: float = 0.05,
    max_evaluations: int = 400,
    weights: FloatArray | None = None,
    tau_min_s: float = 1.0,
    r0_floor_fraction: float = 0.5,
) -> DynamicFit:
    """Fit R0, ``n_rc`` RC pairs and hysteresis dynamics to a measured log at one temperature.

    The OCV and hysteresis tables, the capacity and the coulombic efficiency come from
    ``params`` (fit them first, e.g. with :func:`fit_ocv_plett`). The resistances are
    piecewise linear in SoC on ``soc_knots`` equally spaced knots (which must lie on the
    parameter grid, so the ECM's table interpolation reproduces them exactly), non-negative,
    with a small second-difference penalty so knots the data barely visits stay sensible.

    Parameters
    ----------
    cell_log : CellLog
        Measured log (current positive = discharge).
    params : CellParams
        Parameter set providing OCV, M, capacity and efficiency (its resistances are ignored).
    soc0 : float
        SoC at the first sample [fraction].
    temperature_degc : float, optional
        Test temperature [degC]; default: mean of the log's temperature (25 if unknown).
    hysteresis0 : float
        Hysteresis state at the first sample [1] (+1 after a charge, -1 after a discharge).
    n_rc : int
        Number of RC pairs (>= 1).
    tau_guess_s : sequence of float
        Initial time constants [s], one per pair.
    soc_knots : int or sequence of float
        Knots of the SoC dependence: a number of equally spaced knots (1 = constant
        resistances) or the knot SoC values themselves [fraction], ascending from 0 to 1,
        each on the parameter grid.
    fit_hysteresis : bool
        Fit gamma and a scale on M; otherwise M is used as given with ``gamma_guess``.
    gamma_guess : float
        Initial (or fixed) hysteresis rate [1].
    smoothing : float
        Weight of the second-difference penalty on the knot values [1].
    max_evaluations : int
        Budget of the outer Nelder-Mead search.
    weights : numpy.ndarray, optional
        Per-sample weights of the voltage residual.
    tau_min_s : float
        Lower bound of the fastest time constant [s] (faster dynamics belong to R0).
    r0_floor_fraction : float
        Lower bound of every R0 knot, as a fraction of the SoC-independent R0 fitted first
        [1]; 0 allows any non-negative value.

    Returns
    -------
    DynamicFit
        The fitted dynamics.

    Raises
    ------
    EstimationError
        If the log is too short or the knots do not lie on the parameter grid.
    """
    n = len(cell_log)
    if n < 10:
        raise EstimationError(f"{cell_log.source}: log too short to fit ({n} samples)")
    if n_rc < 1 or len(tau_guess_s) != n_rc:
        raise ValueError("n_rc must be >= 1 and tau_guess_s must have n_rc values")
    grid = params.soc_grid
    knots, tied = _knots(soc_knots, grid)
    if temperature_degc is None:
        tt = cell_log.temperature_degc
        temperature_degc = float(np.nanmean(tt)) if np.any(np.isfinite(tt)) else 25.0
    model = CellModel(params)
    temp = float(temperature_degc)
    eta_t = float(model.coulombic_efficiency(np.array([temp]))[0])
    q_as = 3600.0 * params.capacity_ah
    dt = np.diff(cell_log.time_s)
    if np.any(dt <= 0):
        dt = np.maximum(dt, 1e-6)
    i = cell_log.current_a[1:]
    # SoC exactly as ecm.step counts it (efficiency on charge, clip to [0, 1]).
    eta = np.where(i < 0.0, eta_t, 1.0)
    z_all = np.empty(n)
    z_all[0] = soc0
    dz = eta * i * dt / q_as
    zz = soc0
    for k in range(n - 1):
        zz = min(max(zz - dz[k], 0.0), 1.0)
        z_all[k + 1] = zz
    z_now, z_prev = z_all[1:], z_all[:-1]
    tab = model.tables(z_now, np.full(n - 1, temp))
    basis_now = _hat_basis(z_now, knots)
    basis_prev = _hat_basis(z_prev, knots)
    if tied:
        basis_now = basis_now.sum(axis=1, keepdims=True)
        basis_prev = basis_prev.sum(axis=1, keepdims=True)
    kk = basis_now.shape[1]
    if kk >= 3:
        d2 = np.diff(np.eye(kk), n=2, axis=0)
        i_rms = float(np.sqrt(np.mean(i**2))) or 1.0
        penalty = d2 * smoothing * i_rms * math.sqrt(n)
    else:
        penalty = np.zeros((0, kk))
    w = np.ones(n - 1) if weights is None else np.asarray(weights, dtype=np.float64)[1:]
    reg = _Regression(
        dt=dt,
        i=i,
        y=cell_log.voltage_v[1:] - tab[0],
        m_table=tab[1],
        basis_now=basis_now,
        u_rc=basis_prev * i[:, None],
        hyst_x_per_gamma=np.abs(eta * i) * dt / q_as,
        hyst_target=-np.sign(i),
        h0=float(hysteresis0),
        penalty=penalty,
        n_rc=n_rc,
        weights=w,
    )
    has_m = bool(np.any(tab[1] > 0))
    fit_h = fit_hysteresis and has_m

    # Time constants: tau_1 = tau_min + e^x1, tau_k = tau_(k-1) (1.5 + e^xk): ordered, distinct.
    def unpack(theta: FloatArray) -> tuple[FloatArray, float]:
        taus = np.empty(n_rc)
        taus[0] = tau_min_s + math.exp(theta[0])
        for k in range(1, n_rc):
            taus[k] = taus[k - 1] * (1.5 + math.exp(theta[k]))
        gamma = float(np.exp(theta[n_rc])) if fit_h else gamma_guess
        return taus, gamma

    def objective(theta: FloatArray) -> float:
        if np.any(np.abs(theta) > 30.0):
            return 1e30
        taus, gamma = unpack(theta)
        if taus[-1] > 1e6 or gamma > 1e5:
            return 1e30
        return _solve(reg, _design(reg, taus, gamma), fit_h, lower)[1]

    tau0 = np.sort(np.asarray(tau_guess_s, dtype=np.float64))
    theta0 = np.empty(n_rc + (1 if fit_h else 0))
    theta0[0] = math.log(max(tau0[0] - tau_min_s, 1e-3))
    for k in range(1, n_rc):
        theta0[k] = math.log(max(tau0[k] / tau0[k - 1] - 1.5, 1e-3))
    if fit_h:
        theta0[n_rc] = math.log(max(gamma_guess, 1e-3))
    # Floor on R0 knots: a fraction of the SoC-independent R0 (knots the data barely
    # visits must not collapse to zero series resistance).
    lower = None
    if r0_floor_fraction > 0:
        t0, g0 = unpack(theta0)
        tied_reg = replace(
            reg,
            basis_now=reg.basis_now.sum(axis=1, keepdims=True),
            u_rc=reg.u_rc.sum(axis=1, keepdims=True),
            penalty=np.zeros((0, 1)),
        )
        c_tied, _ = _solve(tied_reg, _design(tied_reg, t0, g0), fit_h)
        lower = np.zeros(kk * (1 + n_rc) + 1)
        lower[:kk] = r0_floor_fraction * c_tied[0]
    res = optimize.minimize(
        objective,
        theta0,
        method="Nelder-Mead",
        options={"maxfev": max_evaluations, "xatol": 1e-3, "fatol": 1e-12},
    )
    taus, gamma = unpack(res.x)
    design = _design(reg, taus, gamma)
    coef, _ = _solve(reg, design, fit_h, lower)
    model_v = tab[0] + design @ coef
    resid = np.concatenate(
        (
            [cell_log.voltage_v[0] - _v0(model, soc0, temp, hysteresis0)],
            cell_log.voltage_v[1:] - model_v,
        )
    )
    knots_vals = coef[: kk * (1 + n_rc)].reshape(1 + n_rc, kk)
    if tied:
        tables = np.repeat(knots_vals, grid.size, axis=1)
    else:
        tables = np.stack([np.interp(grid, knots, row) for row in knots_vals])
    tables = np.maximum(tables, 1e-7)
    log.info(
        "dynamic fit %s: tau=%s gamma=%.3g rmse=%.2f mV (%d evaluations)",
        cell_log.source,
        np.round(taus, 3),
        gamma,
        1e3 * float(np.sqrt(np.mean(resid**2))),
        res.nfev,
    )
    return DynamicFit(
        temperature_degc=temp,
        soc=grid.copy(),
        r0_ohm=tables[0],
        rc_r_ohm=tables[1:],
        rc_tau_s=taus,
        hysteresis_rate=gamma,
        hysteresis_scale=float(coef[-1]),
        rmse_v=float(np.sqrt(np.mean(resid**2))),
        max_error_v=float(np.max(np.abs(resid))),
        residual_v=resid,
    )


def _knots(soc_knots: int | Sequence[float], grid: FloatArray) -> tuple[FloatArray, bool]:
    if isinstance(soc_knots, int):
        if soc_knots < 1:
            raise ValueError("soc_knots must be >= 1")
        if soc_knots == 1:
            return np.array([0.0, 1.0]), True
        knots = np.linspace(0.0, 1.0, soc_knots)
    else:
        knots = np.asarray(soc_knots, dtype=np.float64)
    if knots.size < 2 or knots[0] != 0.0 or knots[-1] != 1.0 or np.any(np.diff(knots) <= 0):
        raise ValueError("soc knots must ascend from 0 to 1")
    on_grid = np.min(np.abs(knots[:, None] - grid[None, :]), axis=1) < 1e-9
    if not np.all(on_grid):
        raise EstimationError(
            f"soc knots {knots[~on_grid].tolist()} are not on the {grid.size}-point SoC grid"
        )
    return knots, False


def _v0(model: CellModel, soc0: float, temperature_degc: float, h0: float) -> float:
    tab = model.tables(np.array([soc0]), np.array([temperature_degc]))
    return float(tab[0][0] + tab[1][0] * h0)


# -- simulation with the real ECM ------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    """ECM voltage along a log.

    Parameters
    ----------
    voltage_v : numpy.ndarray
        Modelled terminal voltage [V], shape ``(n,)``.
    soc : numpy.ndarray
        Modelled SoC [fraction], shape ``(n,)``.
    rmse_v : float
        RMS of measured minus modelled voltage [V].
    max_error_v : float
        Largest absolute error [V].
    """

    voltage_v: FloatArray
    soc: FloatArray
    rmse_v: float
    max_error_v: float


def simulate_log(
    params: CellParams,
    cell_log: CellLog,
    soc0: float,
    *,
    hysteresis0: float = 0.0,
    temperature_degc: float | FloatArray | None = None,
) -> Simulation:
    """Run :func:`openbess.cell.ecm.step` along a log's current and compare the voltage.

    The current logged at sample ``k`` is held over ``(t[k-1], t[k]]`` and the ECM voltage at
    the end of that step is compared with the voltage logged at ``k``.

    Parameters
    ----------
    params : CellParams
        Parameter set.
    cell_log : CellLog
        Measured log.
    soc0 : float
        SoC at the first sample [fraction].
    hysteresis0 : float
        Hysteresis state at the first sample [1].
    temperature_degc : float or numpy.ndarray, optional
        Cell temperature [degC]: a constant or one value per sample; default: the log's
        temperature where known, else 25 degC.

    Returns
    -------
    Simulation
        Modelled voltage and errors.
    """
    n = len(cell_log)
    if temperature_degc is None:
        tt = np.where(np.isfinite(cell_log.temperature_degc), cell_log.temperature_degc, 25.0)
    else:
        tt = np.broadcast_to(np.asarray(temperature_degc, dtype=np.float64), (n,))
    model = CellModel(params)
    state = CellState.initial(params, np.array([soc0]))
    state.hysteresis[:] = hysteresis0
    v = np.empty(n)
    z = np.empty(n)
    v[0] = _v0(model, soc0, float(tt[0]), hysteresis0)
    z[0] = soc0
    t = cell_log.time_s
    cur = cell_log.current_a
    for k in range(1, n):
        dt = float(t[k] - t[k - 1])
        if dt <= 0:
            v[k] = v[k - 1]
            z[k] = state.soc[0]
            continue
        res = step(model, state, np.array([cur[k]]), dt, np.array([tt[k]]), params.capacity_ah)
        v[k] = res.voltage_v[0]
        z[k] = state.soc[0]
    err = cell_log.voltage_v - v
    return Simulation(
        voltage_v=v,
        soc=z,
        rmse_v=float(np.sqrt(np.mean(err**2))),
        max_error_v=float(np.max(np.abs(err))),
    )


def soc_from_ocv(
    params: CellParams, voltage_v: float, temperature_degc: float = 25.0, hysteresis: float = 0.0
) -> float:
    """Invert the OCV table: SoC at which a rested cell shows ``voltage_v``.

    Parameters
    ----------
    params : CellParams
        Parameter set.
    voltage_v : float
        Rested voltage [V].
    temperature_degc : float
        Temperature [degC].
    hysteresis : float
        Hysteresis state of the rested cell [1] (-1 after a discharge).

    Returns
    -------
    float
        SoC [fraction], clipped to [0, 1].
    """
    model = CellModel(params)
    fine = np.linspace(0.0, 1.0, 2001)
    tab = model.tables(fine, np.full(fine.size, temperature_degc))
    v = monotone_ocv(tab[0] + tab[1] * hysteresis, 1e-9)
    return float(np.clip(np.interp(voltage_v, v, fine), 0.0, 1.0))


# -- assembling and writing parameter sets -------------------------------------------------


def with_dynamics(
    params: CellParams,
    fits: Mapping[float, DynamicFit],
    resistance_ratio: Mapping[float, float] | None = None,
) -> CellParams:
    """Put dynamic fits into a parameter set's temperature grid.

    Rows at temperatures with a fit take it; other rows take the nearest fit in temperature
    scaled by ``resistance_ratio[T] / resistance_ratio[T_fit]`` (time constants kept).

    Parameters
    ----------
    params : CellParams
        Parameter set (OCV, M, grids).
    fits : mapping of float to DynamicFit
        Fits by temperature [degC]; all with the same number of RC pairs.
    resistance_ratio : mapping of float to float, optional
        Relative resistance at each grid temperature (e.g. from
        :attr:`OcvFit.step_resistance_ohm`); default 1 everywhere.

    Returns
    -------
    CellParams
        The completed parameter set.
    """
    if not fits:
        raise ValueError("no dynamic fits")
    temps = params.temperature_grid_degc
    fit_t = np.array(sorted(fits))
    n_rc = next(iter(fits.values())).rc_r_ohm.shape[0]
    nt, ns = temps.size, params.soc_grid.size
    r0 = np.empty((nt, ns))
    rc = np.empty((n_rc, nt, ns))
    tau = np.empty((n_rc, nt))
    ratio = dict(resistance_ratio or {})
    for j, t in enumerate(temps):
        src_t = float(fit_t[np.argmin(np.abs(fit_t - t))])
        f = fits[src_t]
        k = ratio.get(float(t), 1.0) / ratio.get(src_t, 1.0)
        r0[j] = f.r0_ohm * k
        rc[:, j] = f.rc_r_ohm * k
        tau[:, j] = f.rc_tau_s
    gammas = [f.hysteresis_rate for f in fits.values()]
    scales = np.array([f.hysteresis_scale for f in fits.values()])
    return replace(
        params,
        r0_ohm=r0,
        rc_r_ohm=rc,
        rc_tau_s=tau,
        hysteresis_rate=float(np.exp(np.mean(np.log(gammas)))),
        hysteresis_v=params.hysteresis_v * float(np.mean(scales)),
    )


def placeholder_params(
    name: str,
    chemistry: str,
    ocv: OcvFit,
    capacity_ah: float,
    voltage_min_v: float,
    voltage_max_v: float,
    nominal_voltage_v: float,
    thermal: ThermalParams,
    n_rc: int = 2,
    source: str = "",
) -> CellParams:
    """A parameter set with fitted OCV and placeholder dynamics, ready for the dynamic fit.

    Parameters
    ----------
    name, chemistry, source : str
        Identification.
    ocv : OcvFit
        OCV, hysteresis and efficiency tables.
    capacity_ah : float
        Capacity [Ah].
    voltage_min_v, voltage_max_v, nominal_voltage_v : float
        Voltage window and nominal voltage [V].
    thermal : ThermalParams
        Thermal parameters.
    n_rc : int
        Number of RC pairs.

    Returns
    -------
    CellParams
        The parameter set (resistances 1 mohm, time constants 10^k s).
    """
    nt, ns = ocv.ocv_v.shape
    return CellParams(
        name=name,
        chemistry=chemistry,
        source=source,
        capacity_ah=capacity_ah,
        voltage_min_v=voltage_min_v,
        voltage_max_v=voltage_max_v,
        nominal_voltage_v=nominal_voltage_v,
        soc_grid=ocv.soc.copy(),
        temperature_grid_degc=ocv.temperature_degc.copy(),
        ocv_v=ocv.ocv_v.copy(),
        hysteresis_v=ocv.hysteresis_v.copy(),
        r0_ohm=np.full((nt, ns), 1e-3),
        rc_r_ohm=np.full((n_rc, nt, ns), 1e-3),
        rc_tau_s=np.tile((10.0 ** np.arange(1, n_rc + 1))[:, None], (1, nt)),
        coulombic_efficiency=ocv.coulombic_efficiency.copy(),
        hysteresis_rate=0.0,
        thermal=thermal,
        ageing={},
    )


def _toml_value(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError(f"cannot write non-finite value {x} to TOML")
    s = f"{x:.6g}"
    if "e" not in s and "." not in s and "inf" not in s:
        s += ".0"
    return s


def _toml_row(row: FloatArray) -> str:
    return "[" + ", ".join(_toml_value(float(x)) for x in row) + "]"


def _toml_table(tab: FloatArray) -> str:
    return "[\n" + "".join(f"    {_toml_row(r)},\n" for r in tab) + "]"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_cell_params_toml(params: CellParams, header: str = "") -> str:
    """Serialise a parameter set to the TOML format of :mod:`openbess.cell.params`.

    Parameters
    ----------
    params : CellParams
        The parameter set.
    header : str
        Comment text put at the top (each line prefixed with ``#``).

    Returns
    -------
    str
        TOML text that :func:`openbess.cell.params.load_cell_params` reads back.
    """
    lines = [f"# {h}".rstrip() for h in header.splitlines()]
    lines += [
        f"name = {_toml_str(params.name)}",
        f"chemistry = {_toml_str(params.chemistry)}",
        f"source = {_toml_str(params.source)}",
        f"capacity_ah = {_toml_value(params.capacity_ah)}",
        f"voltage_min_v = {_toml_value(params.voltage_min_v)}",
        f"voltage_max_v = {_toml_value(params.voltage_max_v)}",
        f"nominal_voltage_v = {_toml_value(params.nominal_voltage_v)}",
        f"soc_points = {params.soc_grid.size}",
        f"temperature_degc = {_toml_row(params.temperature_grid_degc)}",
        f"ocv_v = {_toml_table(params.ocv_v)}",
        f"hysteresis_v = {_toml_table(params.hysteresis_v)}",
        f"r0_ohm = {_toml_table(params.r0_ohm)}",
        f"coulombic_efficiency = {_toml_row(params.coulombic_efficiency)}",
        f"hysteresis_rate = {_toml_value(params.hysteresis_rate)}",
        "",
    ]
    for k in range(params.n_rc):
        lines += [
            "[[rc]]",
            f"r_ohm = {_toml_table(params.rc_r_ohm[k])}",
            f"tau_s = {_toml_row(params.rc_tau_s[k])}",
            "",
        ]
    th = params.thermal
    lines += [
        "[thermal]",
        f"mass_kg = {_toml_value(th.mass_kg)}",
        f"specific_heat_j_per_kg_k = {_toml_value(th.specific_heat_j_per_kg_k)}",
        f"conductance_to_coolant_w_per_k = {_toml_value(th.conductance_to_coolant_w_per_k)}",
        "",
        "[ageing]",
    ]
    lines += [f"{k} = {_toml_value(v)}" for k, v in params.ageing.items()]
    return "\n".join(lines) + "\n"
