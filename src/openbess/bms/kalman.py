"""Model-based state estimation: a sigma-point Kalman filter over N cells at once.

State of each cell (on the equivalent-circuit model of :mod:`openbess.cell.ecm`, no second
model): ``x = [z, v_1 .. v_nrc, h, b]`` with ``z`` the SoC, ``v_k`` the RC-pair voltages, ``h``
the hysteresis state (only when the parameter set has hysteresis) and ``b`` the offset of the
current sensor [A] (bias compensation, optional). The measured current is ``i_m = (1 + g) i +
b`` (``g`` an unknown gain error); the filter uses ``i_eff = i_m - b``.

Process model (exact zero-order hold of :func:`openbess.cell.ecm.step`)::

    z'   = z - eta dt / (3600 Q) * i_eff
    v_k' = a_k v_k + (1 - a_k) R_k(z) i_m,           a_k = exp(-dt / tau_k)
    h'   = d h + (1 - d) (-sign(i_eff)),             d = exp(-|eta i_eff| gamma dt / (3600 Q))
    b'   = b

Measurement::

    v = OCV(z, T) + M(z, T) h - R0(z, T) i_m - sum_k v_k

The offset acts on the charge count only (``KalmanConfig.bias_in_voltage`` also applies it to
the ohmic and RC drops, a sub-millivolt term through which model errors at rest would read as an
offset).

The process model is affine in the state except for the weak SoC dependence of the RC
resistances, so the time update propagates mean and covariance through it exactly (with that
dependence linearised at the mean). All the nonlinearity is in the measurement, through ``z``.
The measurement update is the central-difference sigma-point filter (CDKF, Norgaard et al.
2000; van der Merwe 2004) with step ``hstep = sqrt(3)``. With the Cholesky factor ``L`` of the
covariance taken lower-triangular and ``z`` first, only the first column of ``L`` moves ``z``;
along every other column the measurement is affine, so those sigma points need no table
look-up and their contribution is exact in closed form::

    l   = P[:, 0] / sqrt(P[0, 0])                    (first Cholesky column)
    Y+- = h(x +- hstep l),  Y0 = h(x)                (three look-ups per cell)
    D   = (Y+ - Y-) / (2 hstep),  S = Y+ + Y- - 2 Y0
    y   = Y0 + S / (2 hstep^2)                       (predicted measurement)
    Pxy = (P - l l^T) H^T + l D                      (H: the affine part, at the mean)
    Pyy = H (P - l l^T) H^T + D^2 + (hstep^2 - 1) / (4 hstep^4) S^2 + R

which is exactly the CDKF with all ``2n + 1`` sigma points. The plain EKF (``method="ekf"``)
is the same update with an infinitesimal step (``D = dh/dz l``, ``S`` dropped), so the two
differ only in how they linearise the OCV, hysteresis and resistance tables.

Measurement noise: ``R = sigma_v^2 + (sigma_model^2 + (e_pol (|R0 i| + sum_k |v_k|))^2) *
max(1, tau_model / dt)``: the model error of an ECM is not white (it stays for minutes), so a
1 s sampling does not give 60 times the information of a 60 s sampling, and part of it grows
with the modelled polarisation (a relative error ``e_pol`` of the resistances); this keeps the
filter from trusting a flat LFP plateau, above all under load.
Process noise of the SoC grows with charge throughput, ``(g^2 + q_cap^2) |dz|``, which covers a
constant gain error ``g`` and a capacity error ``q_cap`` (after one full equivalent cycle the
SoC std has grown by ``sqrt(g^2 + q_cap^2)``).

Also here: capacity and resistance estimation with their uncertainty (state of health), the
power available for the next seconds (state of power), and :class:`BatteryStateEstimator`,
which runs all three along a log.

The update runs as one compiled loop over the cells (numba, :func:`_filter_kernel`; the numpy
path over arrays of N cells is the reference it is tested against). For large packs
:meth:`SocKalmanFilter.count` moves every cell's SoC by the exact coulomb count each cycle and
:meth:`SocKalmanFilter.update_counted` gives a block of cells the full update. The state of
power has a compiled twin too (:func:`power_limits_compiled`), and screening kernels for a
pack (:func:`_sop_screen_kernel`, :func:`_sop_pack_kernel`). See ``docs/estimation.md`` for the
tuning and the benchmark results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from openbess.cell.ecm import NUMBA_AVAILABLE, CellModel

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

log = logging.getLogger(__name__)

#: Central-difference step of the sigma-point filter (sqrt(3): optimal for a Gaussian prior).
SIGMA_STEP = math.sqrt(3.0)
#: Sub-intervals over which the state of power integrates the RC resistances along the SoC.
SOP_SUBINTERVALS = 3
#: SoC step of the EKF's numerical Jacobian [fraction] (smaller than any table segment).
EKF_SOC_STEP = 1e-5

Method = Literal["spkf", "ekf"]


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KalmanConfig:
    """Tuning of :class:`SocKalmanFilter` (noise levels as one standard deviation).

    Parameters
    ----------
    method : {"spkf", "ekf"}
        Sigma-point (central-difference) filter, or the plain extended Kalman filter.
    sigma_step : float
        Central-difference step ``hstep`` of the sigma points, in standard deviations
        (sqrt(3) is optimal for a Gaussian prior; 1 drops the second-order term).
    voltage_noise_v : float
        White noise of the voltage measurement [V].
    model_error_v : float
        Typical ECM voltage error [V] (model and table errors, not white).
    model_error_time_s : float
        Correlation time of the model error [s]: a sample ``dt`` apart from the previous one
        carries the fraction ``min(1, dt / model_error_time_s)`` of an independent look at
        the model error, whose variance is therefore counted ``max(1, tau / dt)`` times (the
        error of an OCV table does not average out however often it is read).
    current_gain_error : float
        Uncertainty of the current sensor's gain [fraction] (e.g. 0.005 for 0.5 %).
    capacity_error : float
        Uncertainty of the capacity used by the filter [fraction].
    current_noise_a : float
        White noise of the current measurement [A].
    rc_error : float
        Relative error of the RC-pair resistances [fraction] (process noise on ``v_k``).
    hysteresis_noise : float
        Process noise of the hysteresis state per unit of its own movement [1].
    soc_random_walk_per_sqrt_s : float
        SoC random walk independent of the current [1/sqrt(s)] (self-discharge, leakage).
    estimate_bias : bool
        Carry the current-sensor offset as a state (bias compensation).
    bias_random_walk_a_per_sqrt_s : float
        Drift of the current offset [A/sqrt(s)].
    bias_in_voltage : bool
        Also apply the offset to the ohmic and RC drops (``R i_eff`` instead of ``R i_m``).
        Off by default: for a realistic offset the term is below a millivolt, and with it any
        model error at rest reads as an offset (through ``R0 b``) instead of waiting for the
        slow, reliable evidence of the charge count.
    initial_bias_std_c : float
        Prior std of the current offset, as a C-rate [1/h] (0.01: 1 % of the capacity per
        hour).
    initial_hysteresis_std : float
        Prior std of the hysteresis state when it is unknown [1].
    initial_rc_std_v : float
        Prior std of the RC voltages [V].
    min_soc_std : float
        Floor of the initial SoC std [fraction].
    ocv_soc_error : float
        Uncertainty of the OCV table along its SoC axis [fraction]: adds
        ``(dOCV/dz * ocv_soc_error)^2`` to the measurement variance, so the steep ends of the
        curve (coarse tables, capacity error) do not pin the SoC tighter than the table is.
    polarisation_error : float
        Relative error of the modelled polarisation [fraction]: the ECM's dynamic voltage
        ``|R0 i| + sum_k |v_k|`` is uncertain by this share (resistances fitted at other rates
        or temperatures, diffusion the RC pairs do not capture), added to the measurement
        variance like ``model_error_v`` (counted ``max(1, tau / dt)`` times). Under load the
        voltage then says less about the SoC than at rest; without it a resistance error of
        the characterised cell reads, on a flat LFP plateau, as a SoC drift that the offset
        state integrates (docs/estimation.md).
    chunk_cells : int
        Cells processed together by the numpy path (cache).
    compiled : bool
        Run the update as one compiled loop over the cells (numba; the numpy path is the
        reference, same results to rounding).
    """

    method: Method = "spkf"
    sigma_step: float = SIGMA_STEP
    voltage_noise_v: float = 0.002
    model_error_v: float = 0.02
    model_error_time_s: float = 600.0
    current_gain_error: float = 0.005
    capacity_error: float = 0.01
    current_noise_a: float = 0.0
    rc_error: float = 0.2
    hysteresis_noise: float = 0.1
    soc_random_walk_per_sqrt_s: float = 1e-6
    estimate_bias: bool = True
    bias_random_walk_a_per_sqrt_s: float = 1e-6
    bias_in_voltage: bool = False
    initial_bias_std_c: float = 0.01
    initial_hysteresis_std: float = 0.7
    initial_rc_std_v: float = 0.005
    min_soc_std: float = 0.01
    ocv_soc_error: float = 0.0
    polarisation_error: float = 0.3
    chunk_cells: int = 16384
    compiled: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("spkf", "ekf"):
            raise ValueError(f"method must be 'spkf' or 'ekf', got {self.method!r}")
        for name in (
            "voltage_noise_v",
            "model_error_v",
            "model_error_time_s",
            "current_gain_error",
            "capacity_error",
            "current_noise_a",
            "rc_error",
            "hysteresis_noise",
            "soc_random_walk_per_sqrt_s",
            "bias_random_walk_a_per_sqrt_s",
            "initial_bias_std_c",
            "initial_hysteresis_std",
            "initial_rc_std_v",
            "min_soc_std",
            "ocv_soc_error",
            "polarisation_error",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not self.sigma_step >= 1.0:
            raise ValueError(f"sigma_step must be >= 1, got {self.sigma_step}")
        if self.voltage_noise_v <= 0 and self.model_error_v <= 0:
            raise ValueError("voltage_noise_v or model_error_v must be > 0")

    def measurement_variance(self, dt_s: float) -> float:
        """Variance of the voltage innovation's noise for one sample [V^2].

        Parameters
        ----------
        dt_s : float
            Time since the previous voltage sample [s].

        Returns
        -------
        float
            ``voltage_noise_v^2 + model_error_v^2 * max(1, model_error_time_s / dt)``.
        """
        return self.voltage_noise_v**2 + self.model_error_v**2 * self.model_error_factor(dt_s)

    def model_error_factor(self, dt_s: float) -> float:
        """How many times a model-error variance counts for one sample [1].

        Parameters
        ----------
        dt_s : float
            Time since the previous voltage sample [s].

        Returns
        -------
        float
            ``max(1, model_error_time_s / dt)``.
        """
        return max(1.0, self.model_error_time_s / max(dt_s, 1e-9))


# -- table interpolation (the CellModel's tables, gathered per table) -------------------------


class _Tables:
    """Bilinear interpolation of a :class:`CellModel`'s tables, one flat gather per table.

    The same interpolation as :meth:`CellModel.tables` (uniform SoC grid, last node with a
    zero-slope cell of its own, values clipped to the grid), arranged so that the temperature
    weights are computed once per update and shared by the three SoC points of the sigma-point
    update, and only the tables needed at a point are gathered. Checked against
    :meth:`CellModel.tables` in the tests.
    """

    def __init__(self, model: CellModel) -> None:
        p = model.params
        self.ns = int(p.soc_grid.size)
        self.temps = p.temperature_grid_degc.astype(np.float64)
        nt = self.temps.size
        self.nt = nt
        self.n_rc = p.n_rc
        tables = np.stack([p.ocv_v, p.hysteresis_v, p.r0_ohm, *p.rc_r_ohm], axis=0)
        v = tables.astype(np.float64)
        b = np.zeros_like(v)
        b[:, :, :-1] = v[:, :, 1:] - v[:, :, :-1]
        c = np.zeros_like(v)
        d = np.zeros_like(v)
        if nt > 1:
            c[:, :-1, :] = v[:, 1:, :] - v[:, :-1, :]
            d[:, :-1, :-1] = (v[:, 1:, 1:] - v[:, 1:, :-1]) - (v[:, :-1, 1:] - v[:, :-1, :-1])
        k = tables.shape[0]
        # coef[table] = (a, b, c, d), each flat over (temperature cell, SoC cell).
        self.coef = [
            tuple(np.ascontiguousarray(x[r].reshape(-1)) for x in (v, b, c, d)) for r in range(k)
        ]
        t_width = np.append(np.diff(self.temps), 1.0) if nt > 1 else np.ones(1)
        self._inv_width = 1.0 / t_width
        self.tau = [np.ascontiguousarray(r, dtype=np.float64) for r in p.rc_tau_s]  # per pair
        self.eta = p.coulombic_efficiency.astype(np.float64)  # (nt,)
        self.eta_is_one = bool(np.all(self.eta == 1.0))
        self.tau_const = [bool(np.all(r == r[0])) for r in self.tau]
        self._rows: dict[int, tuple[FloatArray, FloatArray, bool]] = {}
        self._rep: dict[int, tuple[FloatArray, FloatArray]] = {}
        # The same coefficients grid cell by grid cell, (nt * ns, table, [a, b, c, d]), and the
        # per-temperature rows with their slopes, for the compiled kernels.
        self.coef_cells = np.ascontiguousarray(np.stack([v, b, c, d]).reshape(4, k, -1).T)
        self.inv_width = np.ascontiguousarray(self._inv_width)
        tau_rows = np.asarray(p.rc_tau_s, dtype=np.float64).reshape(self.n_rc, nt)
        self.tau_rows = np.ascontiguousarray(tau_rows)
        self.tau_slopes = np.zeros_like(tau_rows)
        self.eta_slope = np.zeros(nt)
        if nt > 1:
            self.tau_slopes[:, :-1] = np.diff(tau_rows, axis=1)
            self.eta_slope[:-1] = np.diff(self.eta)

    def temperature_weights(self, temperature_degc: FloatArray) -> tuple[IntArray, FloatArray]:
        """Row offset ``j * ns`` and fraction ``ft`` of each temperature (clipped to the grid).

        The row ``j`` is found by comparisons with the (few) grid temperatures, which is
        several times faster than a binary search over 100,000 cells.
        """
        n = np.shape(temperature_degc)[0]
        if self.nt == 1:
            return np.zeros(n, dtype=np.intp), np.zeros(n)
        t = self.temps
        tc = np.minimum(np.maximum(temperature_degc, t[0]), t[-1])
        j = np.zeros(n, dtype=np.intp)
        for k in range(1, self.nt - 1):
            j += tc >= t[k]
        j[tc >= t[-1]] = self.nt - 1
        ft: FloatArray = tc - np.take(t, j)
        ft *= np.take(self._inv_width, j)
        jb: IntArray = j * self.ns
        return jb, ft

    def along_temperature(self, row: FloatArray, jb: IntArray, ft: FloatArray) -> FloatArray:
        """Linear interpolation of a per-temperature row (``np.interp`` with clipping)."""
        key = id(row)
        if key not in self._rows:
            slope = np.append(np.diff(row), 0.0) if self.nt > 1 else np.zeros(1)
            const = bool(np.all(row == row[0]))
            self._rows[key] = (row, slope, const)
        _, slope, const = self._rows[key]
        if const:
            return np.full(jb.shape, float(row[0]))
        # The flat index jb = j * ns: gather from rows repeated ns times (no division).
        lo_rep, slope_rep = self._repeated(key, row, slope)
        out: FloatArray = np.take(slope_rep, jb)
        out *= ft
        out += np.take(lo_rep, jb)
        return out

    def _repeated(
        self, key: int, row: FloatArray, slope: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        if key not in self._rep:
            self._rep[key] = (np.repeat(row, self.ns), np.repeat(slope, self.ns))
        return self._rep[key]

    def soc_index(self, soc: FloatArray, jb: IntArray) -> tuple[IntArray, FloatArray]:
        """Flat cell index and SoC fraction of each point."""
        top = self.ns - 1.0
        x = np.multiply(soc, top)
        np.clip(x, 0.0, top, out=x)
        i: IntArray = x.astype(np.intp)
        fz: FloatArray = x - i
        i += jb
        return i, fz

    def slope(self, table: int, idx: IntArray, ft: FloatArray) -> FloatArray:
        """Derivative of one table along the SoC [unit per unit SoC] (segment slope)."""
        _, b, _, d = self.coef[table]
        out: FloatArray = np.take(b, idx)
        if self.nt > 1:
            out += np.take(d, idx) * ft
        out *= self.ns - 1.0
        return out

    def value(self, table: int, idx: IntArray, fz: FloatArray, ft: FloatArray) -> FloatArray:
        """Interpolated value of one table (0 OCV, 1 M, 2 R0, 3.. RC resistances)."""
        a, b, c, d = self.coef[table]
        out: FloatArray = np.take(b, idx)
        if self.nt > 1:
            out += np.take(d, idx) * ft
            out *= fz
            out += np.take(c, idx) * ft
        else:
            out *= fz
        out += np.take(a, idx)
        return out


# -- the compiled update ----------------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])


def _load_njit() -> Any:
    """``numba.njit``, or None without numba."""
    try:
        from numba import njit  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None
    return njit


_NJIT: Any = _load_njit()


def jit(func: _F) -> _F:
    """Compile ``func`` with numba (cached; NumPy's error model: no zero-division checks).

    Without numba the function is returned unchanged (plain Python, same results).

    Parameters
    ----------
    func : callable
        A function numba can compile.

    Returns
    -------
    callable
        The compiled dispatcher, or ``func``.
    """
    if _NJIT is None:  # pragma: no cover
        return func
    out: _F = _NJIT(cache=True, error_model="numpy")(func)
    return out


@jit
def _bilinear(coef: FloatArray, idx: int, row: int, fz: float, ft: float) -> float:
    """One table at one point: ``((b + d ft) fz + c ft) + a`` (as :meth:`_Tables.value`)."""
    slope: float = coef[idx, row, 1] + coef[idx, row, 3] * ft
    value: float = (slope * fz + coef[idx, row, 2] * ft) + coef[idx, row, 0]
    return value


@jit
def _temperature_row(
    temps: FloatArray, inv_width: FloatArray, temperature_degc: float
) -> tuple[int, float]:
    """Row ``j`` and fraction ``ft`` of a temperature (non-finite: 25 degC; clipped)."""
    n_t = temps.shape[0]
    if n_t == 1:
        return 0, 0.0
    t = temperature_degc if math.isfinite(temperature_degc) else 25.0
    tc = min(max(t, temps[0]), temps[n_t - 1])
    j = 0
    for kk in range(1, n_t - 1):
        if tc >= temps[kk]:
            j += 1
    if tc >= temps[n_t - 1]:
        j = n_t - 1
    ft: float = (tc - temps[j]) * inv_width[j]
    return j, ft


@jit
def _count_kernel(
    temps: FloatArray,
    inv_width: FloatArray,
    eta_row: FloatArray,
    eta_slope: FloatArray,
    x: FloatArray,
    capacity_ah: FloatArray,
    current_a: FloatArray,
    current_group: int,
    temperature_degc: FloatArray,
    temperature_group: int,
    leak_a: FloatArray,
    dt_s: float,
    ib: int,
    eta_one: bool,
    acc_abs_dz: FloatArray,
    acc_gain: FloatArray,
    acc_charge_as: FloatArray,
    charge_ah: FloatArray,
) -> None:
    """Coulomb-count the SoC of every cell over ``dt_s`` and accumulate for the next update.

    The SoC mean moves exactly as the filter's time update would move it; ``acc_abs_dz``
    (sum of ``|dz|``), ``acc_gain`` (sum of ``dz/di``) and ``acc_charge_as`` (sum of ``i_m
    dt``) carry what the next (``counted``) update of the cell needs for the covariance, the
    RC pairs and the hysteresis.
    """
    n = x.shape[1]
    has_leak = leak_a.shape[0] > 0
    group = -1
    eta_t = 1.0
    for c in range(n):
        gt = c // temperature_group
        if gt != group:
            group = gt
            j, ft = _temperature_row(temps, inv_width, temperature_degc[gt])
            eta_t = eta_slope[j] * ft + eta_row[j]
        i_m = current_a[c // current_group]
        if not math.isfinite(i_m):
            i_m = 0.0
        i_eff = i_m - x[ib, c] if ib >= 0 else i_m
        eta = eta_t if (not eta_one and i_eff < 0.0) else 1.0
        cq = eta * (dt_s / 3600.0) / capacity_ah[c]
        dz = cq * i_eff
        dz_all = dz
        if has_leak:
            dz_all += leak_a[c] * (dt_s / 3600.0) / capacity_ah[c]
        x[0, c] = min(max(x[0, c] - dz_all, 0.0), 1.0)
        charge_ah[c] += dz_all * capacity_ah[c]
        acc_abs_dz[c] += abs(dz)
        acc_gain[c] += cq
        acc_charge_as[c] += i_m * dt_s


@jit
def _filter_kernel(
    coef: FloatArray,
    n_soc: int,
    temps: FloatArray,
    inv_width: FloatArray,
    tau_rows: FloatArray,
    tau_slopes: FloatArray,
    eta_row: FloatArray,
    eta_slope: FloatArray,
    x: FloatArray,
    P: FloatArray,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    current_a: FloatArray,
    current_group: int,
    voltage_v: FloatArray,
    voltage_ok: BoolArray,
    temperature_degc: FloatArray,
    temperature_group: int,
    leak_a: FloatArray,
    dt_s: float,
    predict: bool,
    counted: bool,
    start: int,
    stop: int,
    settings: FloatArray,
    flags: IntArray,
    acc_abs_dz: FloatArray,
    acc_gain: FloatArray,
    acc_charge_as: FloatArray,
    innovation_v: FloatArray,
    innovation_std_v: FloatArray,
    oc_prior_v: FloatArray,
    oc_post_v: FloatArray,
    r0_post_ohm: FloatArray,
    charge_ah: FloatArray,
) -> None:
    """:meth:`SocKalmanFilter.step` (time and measurement update) cell by cell.

    The arithmetic of ``_predict`` and ``_correct``, in the same order, on each cell's state
    held in registers, for the cells ``start .. stop - 1``. ``settings``: sigma step,
    measurement variance, model-error factor, hysteresis rate, rc_error, current noise, gain^2
    + capacity^2, SoC random walk^2 * dt, hysteresis noise^2, bias random walk^2 * dt,
    ocv_soc_error, polarisation_error. ``flags``: n_rc, index of h (-1: none), index of b
    (-1: none), spkf (1) or ekf (0), bias in the voltage (1/0), eta identically 1 (1/0). Cells
    whose ``voltage_ok`` is False (or whose voltage is not finite) get no measurement update
    (their innovation is NaN).

    With ``counted`` the SoC mean was already moved by :func:`_count_kernel` over the ``dt_s``
    since the cell's last update: the time update takes ``|dz|``, ``dz/db`` and the mean
    current of the interval from the accumulators (and clears them) instead of
    ``current_a``, which then serves the measurement only.
    """
    k_states = x.shape[0]
    top = n_soc - 1.0
    hstep = settings[0]
    r_meas = settings[1]
    model_factor = settings[2]
    gamma = settings[3]
    rc_error = settings[4]
    current_noise = settings[5]
    gain_cap2 = settings[6]
    soc_walk = settings[7]
    hyst_noise2 = settings[8]
    bias_walk = settings[9]
    ocv_soc_error = settings[10]
    pol_error = settings[11]
    n_rc = flags[0]
    ih = flags[1]
    ib = flags[2]
    spkf = flags[3] == 1
    bias_v = flags[4] == 1 and ib >= 0
    eta_one = flags[5] == 1
    has_leak = leak_a.shape[0] > 0
    has_post = oc_post_v.shape[0] > 0
    pl = np.empty((k_states, k_states))
    f = np.empty(k_states)
    g = np.empty(k_states)
    q = np.empty(k_states)
    alpha = np.empty(k_states)
    lcol = np.empty(k_states)
    u = np.empty(k_states)
    decay = np.empty(max(n_rc, 1))
    hs2 = hstep * hstep
    curv = (hs2 - 1.0) / (4.0 * hs2 * hs2)
    group = -1
    jb = 0
    ft = 0.0
    eta_t = 1.0
    for c in range(start, stop):
        # Temperature weights (and what depends on them only), once per temperature group.
        gt = c // temperature_group
        if gt != group:
            group = gt
            j, ft = _temperature_row(temps, inv_width, temperature_degc[gt])
            jb = j * n_soc
            eta_t = eta_slope[j] * ft + eta_row[j]
            for kk in range(n_rc):
                decay[kk] = math.exp(-dt_s / (tau_slopes[kk, j] * ft + tau_rows[kk, j]))
        i_m = current_a[c // current_group]
        if not math.isfinite(i_m):
            i_m = 0.0
        for r in range(k_states):
            for s in range(r, k_states):
                pl[r, s] = P[r, s, c]
        # -- time update
        if predict:
            dz_all = 0.0
            if counted:
                i_in = acc_charge_as[c] / dt_s  # mean measured current of the interval
                i_eff = i_in - x[ib, c] if ib >= 0 else i_in
                cq = acc_gain[c]
                dz_abs = acc_abs_dz[c]
                acc_abs_dz[c] = 0.0
                acc_gain[c] = 0.0
                acc_charge_as[c] = 0.0
            else:
                i_in = i_m
                i_eff = i_m - x[ib, c] if ib >= 0 else i_m
                eta = 1.0
                if not eta_one and i_eff < 0.0:
                    eta = eta_t
                cq = eta * (dt_s / 3600.0) / capacity_ah[c]
                dz = cq * i_eff
                dz_abs = abs(dz)
                dz_all = dz
                if has_leak:
                    dz_all += leak_a[c] * (dt_s / 3600.0) / capacity_ah[c]
                charge_ah[c] += dz_all * capacity_ah[c]
            xs = min(max(x[0, c] * top, 0.0), top)
            seg = int(xs)
            fz = xs - seg
            idx = jb + seg
            i_v = i_eff if bias_v else i_in
            abs_i = abs(i_v)
            for r in range(k_states):
                f[r] = 1.0
                g[r] = 0.0
                q[r] = 0.0
            for kk in range(n_rc):
                row = 1 + kk
                a = decay[kk]
                w = 1.0 - a
                wr = _bilinear(coef, idx, 3 + kk, fz, ft) * r_scale[c]
                wr *= w
                x[row, c] = x[row, c] * a + wr * i_v
                f[row] = a
                if bias_v:
                    g[row] = -wr
                qk = rc_error * wr * abs_i
                qk *= qk
                qk += (1e-5 * w) ** 2
                if current_noise > 0:
                    qk += (wr * current_noise) ** 2
                q[row] = qk
            q0 = dz_abs * gain_cap2 + soc_walk
            if current_noise > 0:
                q0 += (cq * current_noise) ** 2
            q[0] = q0
            if ib >= 0:
                g[0] = cq
            if not counted:
                x[0, c] = min(max(x[0, c] - dz_all, 0.0), 1.0)
            if ih >= 0:
                d = math.exp(-dz_abs * gamma)
                sgn = 1.0 if i_eff > 0.0 else (-1.0 if i_eff < 0.0 else 0.0)
                x[ih, c] = x[ih, c] * d - (1.0 - d) * sgn
                f[ih] = d
                q[ih] = hyst_noise2 * (1.0 - d) + 1e-10 * dt_s
            if ib >= 0:
                q[ib] = bias_walk
                pbb = pl[ib, ib]
                for r in range(k_states):
                    alpha[r] = f[r] * pl[r, ib] + g[r] * pbb
            # P' = F P F^T + Q with F = diag(f) + g e_b^T (upper triangle; b is last).
            for r in range(k_states):
                for s in range(r, k_states):
                    prs = pl[r, s] * f[r]
                    if ib >= 0:
                        prs += g[r] * pl[s, ib]
                    prs *= f[s]
                    if ib >= 0:
                        prs += g[s] * alpha[r]
                    if r == s:
                        prs += q[r]
                    pl[r, s] = prs
        # -- measurement update
        inv = 1.0 / math.sqrt(max(pl[0, 0], 1e-14))
        for r in range(k_states):
            lcol[r] = pl[0, r] * inv
        step = hstep if spkf else EKF_SOC_STEP * inv
        i_eff = i_m - x[ib, c] if bias_v else i_m
        vsum = 0.0
        lv = 0.0
        for kk in range(n_rc):
            vsum += x[1 + kk, c]
            lv += lcol[1 + kk]
        h = x[ih, c] if ih >= 0 else 0.0
        lh_h = lcol[ih] if ih >= 0 else 0.0
        lb = lcol[ib] if bias_v else 0.0
        y0 = 0.0
        y_plus = 0.0
        y_minus = 0.0
        m0 = 0.0
        r00 = 0.0
        for point in range(3):
            dstep = 0.0 if point == 0 else (step if point == 1 else -step)
            z = x[0, c] + dstep * lcol[0]
            xs = min(max(z * top, 0.0), top)
            seg = int(xs)
            fz = xs - seg
            idx = jb + seg
            y = _bilinear(coef, idx, 0, fz, ft)
            r0 = _bilinear(coef, idx, 2, fz, ft) * r_scale[c]
            ie = i_eff - dstep * lb if point > 0 else i_eff
            y -= r0 * ie
            y -= vsum
            m = 0.0
            if ih >= 0:
                m = _bilinear(coef, idx, 1, fz, ft)
                y += m * (h + dstep * lh_h)
            y -= dstep * lv
            if point == 0:
                y0 = y
                m0 = m
                r00 = r0
            elif point == 1:
                y_plus = y
            else:
                y_minus = y
        oc_prior_v[c] = y0 + r00 * i_eff
        dcol = (y_plus - y_minus) / (2.0 * step)
        pyy = r_meas + dcol * dcol
        if pol_error > 0:
            pol = abs(r00 * i_eff)
            for kk in range(n_rc):
                pol += abs(x[1 + kk, c])
            pol *= pol_error
            pyy += pol * pol * model_factor
        if spkf:
            s2 = y_plus + y_minus - 2.0 * y0
            y_hat = y0 + s2 / (2.0 * hs2)
            pyy += curv * (s2 * s2)
        else:
            y_hat = y0
        if ocv_soc_error > 0:
            xs = min(max(x[0, c] * top, 0.0), top)
            idx = jb + int(xs)
            slope = (coef[idx, 0, 1] + coef[idx, 0, 3] * ft) * top * ocv_soc_error
            pyy += slope * slope
        # Affine part H at the mean: v_k -> -1, h -> M, b -> R0 (bias in the voltage).
        lh = -lv
        if ih >= 0:
            lh += lh_h * m0
        if bias_v:
            lh += lb * r00
        for r in range(1, k_states):
            acc = -(lcol[r] * lh)
            for kk in range(n_rc):
                col = 1 + kk
                acc -= pl[r, col] if r <= col else pl[col, r]
            if ih >= 0:
                acc += (pl[r, ih] if r <= ih else pl[ih, r]) * m0
            if bias_v:
                acc += pl[r, ib] * r00
            u[r] = acc
        for kk in range(n_rc):
            pyy -= u[1 + kk]
        if ih >= 0:
            pyy += u[ih] * m0
        if bias_v:
            pyy += u[ib] * r00
        pyy = max(pyy, 1e-12)
        innovation_std_v[c] = math.sqrt(pyy)
        v = voltage_v[c]
        if voltage_ok[c] and math.isfinite(v):
            innov = v - y_hat
            innovation_v[c] = innov
            inv_pyy = 1.0 / pyy
        else:
            innovation_v[c] = math.nan
            innov = 0.0
            inv_pyy = 0.0
        u[0] = lcol[0] * dcol
        for r in range(1, k_states):
            u[r] += lcol[r] * dcol
        for r in range(k_states):
            gr = u[r] * inv_pyy
            x[r, c] += gr * innov
            for s in range(r, k_states):
                P[r, s, c] = pl[r, s] - gr * u[s]
            P[r, r, c] = max(P[r, r, c], 1e-14)
        z = min(max(x[0, c], 0.0), 1.0)
        x[0, c] = z
        if ih >= 0:
            x[ih, c] = min(max(x[ih, c], -1.0), 1.0)
        # Posterior open-circuit voltage and R0 table value (state of health and power).
        if has_post:
            xs = min(max(z * top, 0.0), top)
            seg = int(xs)
            fz = xs - seg
            idx = jb + seg
            oc = _bilinear(coef, idx, 0, fz, ft)
            if ih >= 0:
                oc += _bilinear(coef, idx, 1, fz, ft) * x[ih, c]
            for kk in range(n_rc):
                oc -= x[1 + kk, c]
            oc_post_v[c] = oc
            r0_post_ohm[c] = _bilinear(coef, idx, 2, fz, ft)


# -- the filter --------------------------------------------------------------------------------


class SocKalmanFilter:
    """Sigma-point (or extended) Kalman filter for the SoC of N cells, bias-compensated.

    Parameters
    ----------
    model : CellModel
        Model of the cells' parameter set (its tables are the filter's model).
    n_cells : int
        Number of cells.
    config : KalmanConfig, optional
        Tuning; default :class:`KalmanConfig()`.
    capacity_ah : numpy.ndarray or float, optional
        Capacity of each cell [Ah]; default the parameter set's.

    Notes
    -----
    Call :meth:`initialise` (or :meth:`initialise_from_voltage`) once, then :meth:`step` with
    every sample. The current of a sample is held over the interval that ends at the sample
    (the convention of :func:`openbess.cell.ecm.step`), and the voltage is read at its end.
    """

    def __init__(
        self,
        model: CellModel,
        n_cells: int,
        config: KalmanConfig | None = None,
        capacity_ah: FloatArray | float | None = None,
    ) -> None:
        if n_cells < 1:
            raise ValueError(f"n_cells must be >= 1, got {n_cells}")
        self.model = model
        self.config = config or KalmanConfig()
        self.n_cells = n_cells
        p = model.params
        self._tab = _Tables(model)
        cap = p.capacity_ah if capacity_ah is None else capacity_ah
        self.capacity_ah: FloatArray = np.broadcast_to(
            np.asarray(cap, dtype=np.float64), (n_cells,)
        ).copy()
        #: Resistance multiplier per cell [1] (e.g. from :class:`ResistanceEstimator`).
        self.r_scale: FloatArray = np.ones(n_cells)
        self._scaled = False
        self.n_rc = p.n_rc
        self.has_hysteresis = bool(np.any(p.hysteresis_v > 0) and p.hysteresis_rate > 0)
        self.i_v = list(range(1, 1 + self.n_rc))
        k = 1 + self.n_rc
        self.i_h: int | None = None
        if self.has_hysteresis:
            self.i_h = k
            k += 1
        self.i_b: int | None = None
        if self.config.estimate_bias:
            self.i_b = k
            k += 1
        self.n_states = k
        self.x = np.zeros((k, n_cells))
        # Upper triangle of the covariance (P[r, s] with r <= s is kept; see _p).
        self.P = np.zeros((k, k, n_cells))
        self._initialised = False
        #: Innovation of the last update (measured - predicted voltage) [V].
        self.innovation_v = np.zeros(n_cells)
        #: Std of the predicted voltage of the last update (incl. noise) [V].
        self.innovation_std_v = np.zeros(n_cells)
        #: ``OCV + M h - sum v_k`` of the predicted (prior) state of the last update [V].
        self.open_circuit_prior_v = np.zeros(n_cells)
        #: ``OCV + M h - sum v_k`` of the posterior state of the last update [V].
        self.open_circuit_post_v = np.zeros(n_cells)
        #: R0 table value at the posterior (SoC, T) of the last update [ohm] (no ``r_scale``).
        self.r0_table_ohm = np.zeros(n_cells)
        #: Charge taken out of each cell since the start, as counted by the filter [Ah]
        #: (offset removed, coulombic efficiency on charge, leakage included).
        self.charge_ah = np.zeros(n_cells)
        self._last_dt_s = 1.0
        self._all_valid = np.ones(n_cells, dtype=np.bool_)
        self._no_leak = np.zeros(0)
        # Accumulated by count() until the cell's next update_counted(): sum |dz|, sum dz/di
        # [1/A] and the measured charge [A s].
        self._acc_abs_dz = np.zeros(n_cells)
        self._acc_gain = np.zeros(n_cells)
        self._acc_charge_as = np.zeros(n_cells)
        cfg = self.config
        self._settings = np.array(
            [
                cfg.sigma_step,
                0.0,  # measurement variance (per step)
                0.0,  # model-error factor (per step)
                p.hysteresis_rate,
                cfg.rc_error,
                cfg.current_noise_a,
                cfg.current_gain_error**2 + cfg.capacity_error**2,
                0.0,  # SoC random walk variance over the step
                cfg.hysteresis_noise**2,
                0.0,  # offset random walk variance over the step
                cfg.ocv_soc_error,
                cfg.polarisation_error,
            ]
        )
        self._settings_dt = (math.nan, math.nan)
        self._flags = np.array(
            [
                self.n_rc,
                -1 if self.i_h is None else self.i_h,
                -1 if self.i_b is None else self.i_b,
                1 if cfg.method == "spkf" else 0,
                1 if cfg.bias_in_voltage else 0,
                1 if self._tab.eta_is_one else 0,
            ],
            dtype=np.intp,
        )

    # -- state access ----------------------------------------------------------------------
    @property
    def tables(self) -> _Tables:
        """The filter's interpolation tables (for the compiled state-of-power kernels)."""
        return self._tab

    def _p(self, r: int, s: int) -> FloatArray:
        out: FloatArray = self.P[r, s] if r <= s else self.P[s, r]
        return out

    @property
    def initialised(self) -> bool:
        """True once :meth:`initialise` or :meth:`initialise_from_voltage` was called."""
        return self._initialised

    @property
    def soc(self) -> FloatArray:
        """SoC estimate of each cell [fraction]."""
        out: FloatArray = self.x[0]
        return out

    @property
    def soc_std(self) -> FloatArray:
        """Standard deviation of the SoC estimate [fraction]."""
        out: FloatArray = np.sqrt(np.maximum(self.P[0, 0], 0.0))
        return out

    @property
    def v_rc(self) -> FloatArray:
        """RC-pair voltage estimates [V], shape ``(nrc, N)``."""
        out: FloatArray = self.x[1 : 1 + self.n_rc]
        return out

    @property
    def hysteresis(self) -> FloatArray:
        """Hysteresis state estimate [1] (zeros without hysteresis)."""
        if self.i_h is None:
            return np.zeros(self.n_cells)
        out: FloatArray = self.x[self.i_h]
        return out

    @property
    def bias_a(self) -> FloatArray:
        """Current-sensor offset estimate [A] (zeros without bias estimation)."""
        if self.i_b is None:
            return np.zeros(self.n_cells)
        out: FloatArray = self.x[self.i_b]
        return out

    @property
    def bias_std_a(self) -> FloatArray:
        """Std of the current-offset estimate [A] (zeros without bias estimation)."""
        if self.i_b is None:
            return np.zeros(self.n_cells)
        out: FloatArray = np.sqrt(np.maximum(self.P[self.i_b, self.i_b], 0.0))
        return out

    def covariance(self) -> FloatArray:
        """Full symmetric state covariance, shape ``(n_states, n_states, N)``.

        Returns
        -------
        numpy.ndarray
            The covariance (a copy).
        """
        up = np.triu(np.ones((self.n_states, self.n_states), dtype=bool))
        out = np.where(up[:, :, None], self.P, np.transpose(self.P, (1, 0, 2)))
        result: FloatArray = np.asarray(out, dtype=np.float64)
        return result

    def string_bias(self, string_index: IntArray) -> tuple[FloatArray, FloatArray]:
        """Fuse the per-cell offset estimates of the cells sharing a current sensor.

        Inverse-variance weighted mean per string (the cells' measurement noises are
        independent, so this is the better estimate of the shared sensor's offset).

        Parameters
        ----------
        string_index : numpy.ndarray of int
            String of each cell (0 .. n_strings - 1), shape ``(N,)``.

        Returns
        -------
        tuple of numpy.ndarray
            Offset [A] and its std [A] per string.
        """
        idx = np.asarray(string_index, dtype=np.intp)
        if idx.shape != (self.n_cells,):
            raise ValueError(f"string_index must have shape ({self.n_cells},)")
        n = int(idx.max()) + 1 if idx.size else 0
        if self.i_b is None:
            return np.zeros(n), np.zeros(n)
        w = 1.0 / np.maximum(self.P[self.i_b, self.i_b], 1e-30)
        sw = np.bincount(idx, weights=w, minlength=n)
        sb = np.bincount(idx, weights=w * self.x[self.i_b], minlength=n)
        return sb / sw, np.sqrt(1.0 / sw)

    # -- initialisation ----------------------------------------------------------------------
    def initialise(
        self,
        soc: FloatArray | float,
        soc_std: FloatArray | float,
        *,
        hysteresis: FloatArray | float = 0.0,
        hysteresis_std: FloatArray | float | None = None,
        bias_a: FloatArray | float = 0.0,
        bias_std_a: FloatArray | float | None = None,
    ) -> None:
        """Set the prior of every cell (RC voltages zero).

        Parameters
        ----------
        soc : numpy.ndarray or float
            Initial SoC [fraction] (clipped to [0, 1]).
        soc_std : numpy.ndarray or float
            Its standard deviation [fraction] (> 0).
        hysteresis : numpy.ndarray or float
            Initial hysteresis state [1].
        hysteresis_std : numpy.ndarray or float, optional
            Its std [1]; default ``config.initial_hysteresis_std``.
        bias_a : numpy.ndarray or float
            Initial current offset [A].
        bias_std_a : numpy.ndarray or float, optional
            Its std [A]; default ``config.initial_bias_std_c`` times the capacity.
        """
        cfg = self.config
        n = self.n_cells

        def vec(value: FloatArray | float) -> FloatArray:
            out: FloatArray = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
            return out

        z_std = vec(soc_std)
        if np.any(~np.isfinite(z_std)) or np.any(z_std <= 0):
            raise ValueError("soc_std must be finite and > 0")
        self.x[:] = 0.0
        self.P[:] = 0.0
        self.x[0] = np.clip(np.nan_to_num(vec(soc), nan=0.5), 0.0, 1.0)
        self.P[0, 0] = z_std**2
        for k in self.i_v:
            self.P[k, k] = cfg.initial_rc_std_v**2
        if self.i_h is not None:
            self.x[self.i_h] = np.clip(vec(hysteresis), -1.0, 1.0)
            hs = cfg.initial_hysteresis_std if hysteresis_std is None else hysteresis_std
            self.P[self.i_h, self.i_h] = np.maximum(vec(hs), 1e-6) ** 2
        if self.i_b is not None:
            self.x[self.i_b] = vec(bias_a)
            bs = cfg.initial_bias_std_c * self.capacity_ah if bias_std_a is None else bias_std_a
            self.P[self.i_b, self.i_b] = np.maximum(vec(bs), 1e-9) ** 2
        self._initialised = True

    def initialise_from_voltage(
        self,
        voltage_v: FloatArray,
        current_a: FloatArray,
        temperature_degc: FloatArray,
    ) -> None:
        """Wake up from the first voltage reading, as a BMS does after a power cycle.

        The SoC is the OCV inversion of ``v + R0 i`` on the mean branch; its std covers the
        unknown hysteresis (the distance to the charge and discharge branches) and the model
        error divided by the local OCV slope, so on a flat LFP plateau the prior is wide.
        ``open_circuit_post_v`` and ``r0_table_ohm`` are set for that state.

        Parameters
        ----------
        voltage_v : numpy.ndarray
            First voltage reading of each cell [V].
        current_a : numpy.ndarray
            Current at that reading [A], positive = discharge.
        temperature_degc : numpy.ndarray
            Cell temperature [degC].
        """
        v = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), (self.n_cells,))
        i = np.nan_to_num(np.broadcast_to(np.asarray(current_a, dtype=np.float64), v.shape))
        temp = self._temperature(temperature_degc)
        jb, ft = self._tab.temperature_weights(temp)
        z_mid = self._invert(v, jb, ft, 0.0, i)
        z_lo = self._invert(v, jb, ft, 1.0, i)  # after a charge: branch above the mean
        z_hi = self._invert(v, jb, ft, -1.0, i)
        z_up = np.minimum(z_mid + 0.02, 1.0)
        z_dn = np.maximum(z_mid - 0.02, 0.0)
        up = self._voltage_model(z_up, jb, ft)[0]
        dn = self._voltage_model(z_dn, jb, ft)[0]
        slope = np.maximum((up - dn) / np.maximum(z_up - z_dn, 1e-9), 1e-3)
        sigma_v = math.sqrt(self.config.voltage_noise_v**2 + self.config.model_error_v**2)
        std = np.sqrt((0.5 * (z_hi - z_lo)) ** 2 + (sigma_v / slope) ** 2)
        std = np.clip(std, self.config.min_soc_std, 0.5)
        ok = np.isfinite(v)
        z0 = np.where(ok, z_mid, 0.5)
        std = np.where(ok, std, 0.5)
        self.initialise(z0, std)
        self.refresh_posterior(slice(None), jb, ft)

    def _voltage_model(
        self, soc: FloatArray, jb: IntArray, ft: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        idx, fz = self._tab.soc_index(soc, jb)
        return (
            self._tab.value(0, idx, fz, ft),
            self._tab.value(1, idx, fz, ft),
            self._tab.value(2, idx, fz, ft),
        )

    def _invert(
        self, v: FloatArray, jb: IntArray, ft: FloatArray, h: float, i: FloatArray
    ) -> FloatArray:
        """SoC with ``OCV + M h - R0 r_scale i = v`` (bisection; monotone or not)."""
        lo = np.zeros(v.shape)
        hi = np.ones(v.shape)
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            ocv, m, r0 = self._voltage_model(mid, jb, ft)
            above = ocv + m * h - r0 * self.r_scale * i > v
            hi = np.where(above, mid, hi)
            lo = np.where(above, lo, mid)
        out: FloatArray = 0.5 * (lo + hi)
        return out

    def _temperature(self, temperature_degc: FloatArray | float) -> FloatArray:
        t = np.broadcast_to(np.asarray(temperature_degc, dtype=np.float64), (self.n_cells,))
        out: FloatArray = np.where(np.isfinite(t), t, 25.0)
        return out

    # -- filter steps ----------------------------------------------------------------------
    def step(
        self,
        dt_s: float,
        current_a: FloatArray | float,
        voltage_v: FloatArray,
        temperature_degc: FloatArray | float,
        valid: BoolArray | None = None,
        zero_current: BoolArray | None = None,
        *,
        current_group: int = 1,
        temperature_group: int = 1,
        leak_current_a: FloatArray | None = None,
    ) -> FloatArray:
        """Time update over ``dt_s`` with the measured current, then the voltage update.

        Parameters
        ----------
        dt_s : float
            Time since the previous sample [s] (> 0; a non-positive step only updates).
        current_a : numpy.ndarray or float
            Measured current [A], positive = discharge: one per cell, or one per group of
            ``current_group`` consecutive cells (a string's sensor); non-finite values count as 0.
        voltage_v : numpy.ndarray
            Measured voltage at the end of the step [V].
        temperature_degc : numpy.ndarray or float
            Cell temperature [degC], one per cell or per group of ``temperature_group``
            consecutive cells (a module's sensors); non-finite values count as 25 degC.
        valid : numpy.ndarray of bool, optional
            Voltage validity; invalid (or non-finite) voltages are not used.
        zero_current : numpy.ndarray of bool, optional
            Cells whose true current is known to be zero (contactors open): their measured
            current is then a direct reading of the sensor offset (zero-current calibration,
            with the variance ``current_noise_a^2``, at least (0.1 % C)^2).
        current_group, temperature_group : int
            Cells per current / temperature value (1: one per cell).
        leak_current_a : numpy.ndarray, optional
            Known current drawn inside each cell and not seen by the sensor [A] (balancing
            bleed): counted in the SoC, not in the voltage.

        Returns
        -------
        numpy.ndarray
            SoC estimate [fraction].
        """
        if not self._initialised:
            raise ValueError("initialise the filter before the first step")
        n = self.n_cells
        if (
            current_group < 1
            or n % current_group
            or temperature_group < 1
            or (n % temperature_group)
        ):
            raise ValueError(
                f"current_group {current_group} and temperature_group {temperature_group} "
                f"must divide the number of cells {n}"
            )
        if dt_s > 0:
            self._last_dt_s = float(dt_s)
        if self.config.compiled and NUMBA_AVAILABLE:
            self._step_compiled(
                dt_s,
                current_a,
                voltage_v,
                temperature_degc,
                valid,
                current_group,
                temperature_group,
                leak_current_a,
            )
        else:
            self._step_numpy(
                dt_s,
                current_a,
                voltage_v,
                temperature_degc,
                valid,
                current_group,
                temperature_group,
                leak_current_a,
            )
        if zero_current is not None and self.i_b is not None:
            i = np.broadcast_to(np.asarray(current_a, dtype=np.float64), (n // current_group,))
            i = np.where(np.isfinite(i), i, 0.0).repeat(current_group)
            self._zero_current_update(i, np.broadcast_to(np.asarray(zero_current, bool), (n,)))
        return self.soc

    def count(
        self,
        dt_s: float,
        current_a: FloatArray | float,
        temperature_degc: FloatArray | float,
        *,
        current_group: int = 1,
        temperature_group: int = 1,
        leak_current_a: FloatArray | None = None,
    ) -> FloatArray:
        """Move every cell's SoC by the counted charge only (between :meth:`update_counted`).

        The cheap part of the time update, for a BMS that runs the full filter on a share of
        its cells per cycle: the SoC mean moves exactly as :meth:`step` would move it, and
        what the covariance, the RC pairs and the hysteresis need is accumulated per cell
        until the cell's next :meth:`update_counted`.

        Parameters
        ----------
        dt_s : float
            Interval [s] (> 0; otherwise nothing happens).
        current_a : numpy.ndarray or float
            Measured current held over the interval [A], positive = discharge, one per group
            of ``current_group`` cells.
        temperature_degc : numpy.ndarray or float
            Temperature [degC], one per group of ``temperature_group`` cells.
        current_group, temperature_group : int
            Cells per current / temperature value.
        leak_current_a : numpy.ndarray, optional
            Known internal current of each cell over the interval [A] (balancing bleed).

        Returns
        -------
        numpy.ndarray
            SoC estimate [fraction].
        """
        if not self._initialised:
            raise ValueError("initialise the filter before counting")
        if dt_s <= 0:
            return self.soc
        n = self.n_cells
        leak = self._no_leak
        if leak_current_a is not None:
            leak = np.ascontiguousarray(
                np.broadcast_to(np.asarray(leak_current_a, dtype=np.float64), (n,))
            )
        tab = self._tab
        _count_kernel(
            tab.temps,
            tab.inv_width,
            tab.eta,
            tab.eta_slope,
            self.x,
            self.capacity_ah,
            self._grouped(current_a, current_group),
            current_group,
            self._grouped(temperature_degc, temperature_group),
            temperature_group,
            leak,
            float(dt_s),
            -1 if self.i_b is None else self.i_b,
            tab.eta_is_one,
            self._acc_abs_dz,
            self._acc_gain,
            self._acc_charge_as,
            self.charge_ah,
        )
        return self.soc

    def update_counted(
        self,
        dt_s: float,
        current_a: FloatArray | float,
        voltage_v: FloatArray,
        temperature_degc: FloatArray | float,
        valid: BoolArray | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
        current_group: int = 1,
        temperature_group: int = 1,
    ) -> None:
        """Full filter update of the cells ``start .. stop - 1`` after :meth:`count` calls.

        The time update over ``dt_s`` (since these cells' previous update) takes the
        accumulated count (the SoC mean has already moved; the RC pairs see the mean current
        of the interval, the exact zero-order hold when the current was constant), then the
        measurement update uses ``current_a`` and ``voltage_v`` of now.

        Parameters
        ----------
        dt_s : float
            Time since these cells' previous update [s].
        current_a : numpy.ndarray or float
            Measured current now [A], one per group of ``current_group`` cells (all cells).
        voltage_v : numpy.ndarray
            Measured voltage now [V], shape ``(N,)``.
        temperature_degc : numpy.ndarray or float
            Temperature [degC], one per group of ``temperature_group`` cells (all cells).
        valid : numpy.ndarray of bool, optional
            Voltage validity, shape ``(N,)``.
        start, stop : int
            Cell range to update (default all).
        current_group, temperature_group : int
            Cells per current / temperature value.
        """
        if not self._initialised:
            raise ValueError("initialise the filter before the first update")
        n = self.n_cells
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"cell range {start}..{stop} outside 0..{n}")
        predict = dt_s > 0
        dt = float(dt_s) if predict else 0.0
        self._run_kernel(
            dt,
            predict,
            True,
            start,
            stop,
            current_a,
            current_group,
            voltage_v,
            valid,
            temperature_degc,
            temperature_group,
            None,
        )

    def _grouped(self, values: FloatArray | float, group: int) -> FloatArray:
        """``values`` as a contiguous float array of ``n / group`` entries (NaN/inf kept)."""
        m = self.n_cells // group
        if (
            isinstance(values, np.ndarray)
            and values.dtype == np.float64
            and values.shape == (m,)
            and values.flags.c_contiguous
        ):
            return values
        return np.ascontiguousarray(
            np.broadcast_to(np.asarray(values, dtype=np.float64), (m,)), dtype=np.float64
        )

    def _step_compiled(
        self,
        dt_s: float,
        current_a: FloatArray | float,
        voltage_v: FloatArray,
        temperature_degc: FloatArray | float,
        valid: BoolArray | None,
        current_group: int,
        temperature_group: int,
        leak_current_a: FloatArray | None,
    ) -> None:
        """One update of every cell by :func:`_filter_kernel`."""
        predict = dt_s > 0
        self._run_kernel(
            float(dt_s) if predict else 0.0,
            predict,
            False,
            0,
            self.n_cells,
            current_a,
            current_group,
            voltage_v,
            valid,
            temperature_degc,
            temperature_group,
            leak_current_a,
        )

    def _run_kernel(
        self,
        dt: float,
        predict: bool,
        counted: bool,
        start: int,
        stop: int,
        current_a: FloatArray | float,
        current_group: int,
        voltage_v: FloatArray,
        valid: BoolArray | None,
        temperature_degc: FloatArray | float,
        temperature_group: int,
        leak_current_a: FloatArray | None,
    ) -> None:
        """Call :func:`_filter_kernel` on the cells ``start .. stop - 1``."""
        n = self.n_cells
        cfg = self.config
        tab = self._tab
        v = voltage_v
        if not (
            isinstance(v, np.ndarray)
            and v.dtype == np.float64
            and v.shape == (n,)
            and v.flags.c_contiguous
        ):
            v = np.ascontiguousarray(np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)))
        ok = self._all_valid if valid is None else valid
        if not (
            isinstance(ok, np.ndarray)
            and ok.dtype == np.bool_
            and ok.shape == (n,)
            and ok.flags.c_contiguous
        ):
            ok = np.ascontiguousarray(np.broadcast_to(np.asarray(ok, dtype=np.bool_), (n,)))
        leak = self._no_leak
        if leak_current_a is not None:
            leak = np.ascontiguousarray(
                np.broadcast_to(np.asarray(leak_current_a, dtype=np.float64), (n,))
            )
        sample_dt = dt if predict else self._last_dt_s
        settings = self._settings
        if (sample_dt, dt) != self._settings_dt:
            self._settings_dt = (sample_dt, dt)
            settings[1] = cfg.measurement_variance(sample_dt)
            settings[2] = cfg.model_error_factor(sample_dt)
            settings[7] = cfg.soc_random_walk_per_sqrt_s**2 * dt
            settings[9] = cfg.bias_random_walk_a_per_sqrt_s**2 * dt
        _filter_kernel(
            tab.coef_cells,
            tab.ns,
            tab.temps,
            tab.inv_width,
            tab.tau_rows,
            tab.tau_slopes,
            tab.eta,
            tab.eta_slope,
            self.x,
            self.P,
            self.capacity_ah,
            self.r_scale,
            self._grouped(current_a, current_group),
            current_group,
            v,
            ok,
            self._grouped(temperature_degc, temperature_group),
            temperature_group,
            leak,
            dt,
            predict,
            counted,
            start,
            stop,
            settings,
            self._flags,
            self._acc_abs_dz,
            self._acc_gain,
            self._acc_charge_as,
            self.innovation_v,
            self.innovation_std_v,
            self.open_circuit_prior_v,
            self.open_circuit_post_v,
            self.r0_table_ohm,
            self.charge_ah,
        )

    def _step_numpy(
        self,
        dt_s: float,
        current_a: FloatArray | float,
        voltage_v: FloatArray,
        temperature_degc: FloatArray | float,
        valid: BoolArray | None,
        current_group: int,
        temperature_group: int,
        leak_current_a: FloatArray | None,
    ) -> None:
        """One update of every cell with numpy, chunk by chunk (the reference path)."""
        n = self.n_cells
        cur = np.asarray(current_a, dtype=np.float64)
        if current_group > 1:
            cur = np.broadcast_to(cur, (n // current_group,)).repeat(current_group)
        temp_in = np.asarray(temperature_degc, dtype=np.float64)
        if temperature_group > 1:
            temp_in = np.broadcast_to(temp_in, (n // temperature_group,)).repeat(temperature_group)
        temp = self._temperature(temp_in)
        i = np.broadcast_to(cur, (n,))
        i = np.where(np.isfinite(i), i, 0.0)
        v = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), (n,))
        ok = np.isfinite(v)
        if valid is not None:
            ok &= np.broadcast_to(np.asarray(valid, dtype=bool), (n,))
        leak = None
        if leak_current_a is not None:
            leak = np.broadcast_to(np.asarray(leak_current_a, dtype=np.float64), (n,))
        r_meas = self.config.measurement_variance(self._last_dt_s)
        self._scaled = not bool(np.all(self.r_scale == 1.0))
        # Chunks that stay in the processor cache (the arithmetic is memory-bound).
        size = max(int(self.config.chunk_cells), 1)
        for start in range(0, n, size):
            sl = slice(start, min(start + size, n))
            jb, ft = self._tab.temperature_weights(temp[sl])
            if dt_s > 0:
                self._predict(sl, float(dt_s), i[sl], jb, ft, None if leak is None else leak[sl])
            self._correct(sl, v[sl], i[sl], jb, ft, ok[sl], r_meas)
            self.refresh_posterior(sl, jb, ft)

    def refresh_posterior(self, sl: slice, jb: IntArray, ft: FloatArray) -> None:
        """Set ``open_circuit_post_v`` and ``r0_table_ohm`` of the cells ``sl`` from the state.

        Parameters
        ----------
        sl : slice
            The cells.
        jb, ft : numpy.ndarray
            Their temperature weights, ``tables.temperature_weights(temperature_degc)``.
        """
        tab = self._tab
        idx, fz = tab.soc_index(self.x[0, sl], jb)
        oc = tab.value(0, idx, fz, ft)
        if self.i_h is not None:
            oc += tab.value(1, idx, fz, ft) * self.x[self.i_h, sl]
        for k in self.i_v:
            oc -= self.x[k, sl]
        self.open_circuit_post_v[sl] = oc
        self.r0_table_ohm[sl] = tab.value(2, idx, fz, ft)

    def zero_current_update(
        self,
        current_a: FloatArray | float,
        *,
        start: int = 0,
        stop: int | None = None,
        current_group: int = 1,
    ) -> None:
        """Read the current offset of the cells ``start .. stop - 1`` at zero true current.

        Call it when the current is known to be zero (contactors open): the measured current
        is then a direct reading of the sensor offset (variance ``current_noise_a^2``, at least
        (0.1 % C)^2). Without the offset state it does nothing.

        Parameters
        ----------
        current_a : numpy.ndarray or float
            Measured current [A], one per group of ``current_group`` cells (all cells).
        start, stop : int
            Cell range (default all).
        current_group : int
            Cells per current value.
        """
        if self.i_b is None:
            return
        n = self.n_cells
        stop = n if stop is None else stop
        i = self._grouped(current_a, current_group)
        i = np.where(np.isfinite(i), i, 0.0).repeat(current_group)
        mask = np.zeros(n, dtype=bool)
        mask[start:stop] = True
        self._zero_current_update(i, mask)

    def _zero_current_update(self, i_m: FloatArray, mask: BoolArray) -> None:
        """Scalar update of the cells in ``mask`` with ``i_m = b + noise`` (true current 0)."""
        idx = np.flatnonzero(mask)
        ib = self.i_b
        if idx.size == 0 or ib is None:
            return
        n = self.n_states
        noise = np.maximum(self.config.current_noise_a, 1e-3 * self.capacity_ah[idx])
        col = [self._p(r, ib)[idx] for r in range(n)]  # P[:, b]
        s = col[ib] + noise**2
        resid = i_m[idx] - self.x[ib, idx]
        for r in range(n):
            self.x[r, idx] += col[r] / s * resid
            for c in range(r, n):
                self.P[r, c, idx] -= col[r] * col[c] / s
        np.clip(self.x[0], 0.0, 1.0, out=self.x[0])

    def _predict(
        self,
        sl: slice,
        dt_s: float,
        i_m: FloatArray,
        jb: IntArray,
        ft: FloatArray,
        leak_a: FloatArray | None = None,
    ) -> None:
        """Time update of the cells ``sl`` (state and covariance views updated in place)."""
        cfg = self.config
        tab = self._tab
        x = self.x[:, sl]
        P = self.P[:, :, sl]
        cap = self.capacity_ah[sl]
        ib, ih = self.i_b, self.i_h
        i_eff = i_m - x[ib] if ib is not None else i_m
        charging = i_eff < 0.0
        eta: FloatArray | float = 1.0
        if tab.eta_is_one:
            pass
        elif bool(charging.any()):
            eta = np.where(charging, tab.along_temperature(tab.eta, jb, ft), 1.0)
        c = eta * (dt_s / 3600.0) / cap  # SoC per ampere over the step
        dz = c * i_eff
        # RC resistances at the start-of-step SoC, as ecm.step does.
        idx, fz = tab.soc_index(x[0], jb)
        i_v = i_eff if cfg.bias_in_voltage else i_m
        abs_i = np.abs(i_v)
        n = self.n_states
        f: list[FloatArray | float | None] = [None] * n
        g: list[FloatArray | None] = [None] * n
        q: list[FloatArray | float] = [0.0] * n
        for k, row in enumerate(self.i_v):
            wr = tab.value(3 + k, idx, fz, ft)
            if self._scaled:
                wr *= self.r_scale[sl]
            a: FloatArray | float
            if tab.tau_const[k]:
                a = math.exp(-dt_s / float(tab.tau[k][0]))
            else:
                a = np.exp(-dt_s / tab.along_temperature(tab.tau[k], jb, ft))
            w = 1.0 - a
            wr *= w  # (1 - a) R_k
            xr = x[row]
            xr *= a
            xr += wr * i_v
            f[row] = a
            if cfg.bias_in_voltage and ib is not None:
                g[row] = -wr
            qk = cfg.rc_error * wr * abs_i
            qk *= qk
            qk += (1e-5 * w) ** 2
            if cfg.current_noise_a > 0:
                qk += (wr * cfg.current_noise_a) ** 2
            q[row] = qk
        q0 = np.abs(dz)
        q0 *= cfg.current_gain_error**2 + cfg.capacity_error**2
        q0 += cfg.soc_random_walk_per_sqrt_s**2 * dt_s
        if cfg.current_noise_a > 0:
            q0 += (c * cfg.current_noise_a) ** 2
        q[0] = q0
        if ib is not None:
            g[0] = c
        dz_all = dz if leak_a is None else dz + leak_a * (dt_s / 3600.0) / cap
        self.charge_ah[sl] += dz_all * cap
        x0 = x[0]
        x0 -= dz_all
        np.clip(x0, 0.0, 1.0, out=x0)
        if ih is not None:
            gamma = self.model.params.hysteresis_rate
            d = np.exp(-np.abs(dz) * gamma)
            xh = x[ih]
            xh *= d
            xh -= (1.0 - d) * np.sign(i_eff)
            f[ih] = d
            q[ih] = cfg.hysteresis_noise**2 * (1.0 - d) + 1e-10 * dt_s
        if ib is not None:
            q[ib] = cfg.bias_random_walk_a_per_sqrt_s**2 * dt_s
        # P' = F P F^T + Q with F = diag(f) + g e_b^T, on the upper triangle. alpha_r is
        # (F P)[r, b] = f_r P[r, b] + g_r P[b, b], from the old P.
        alpha: list[FloatArray | None] = [None] * n
        if ib is not None:
            pbb = P[ib, ib]
            for r in range(n):
                if g[r] is None and f[r] is None:
                    continue
                a_r = P[r, ib] * f[r] if f[r] is not None else P[r, ib].copy()
                gr = g[r]
                if gr is not None:
                    a_r += gr * pbb
                alpha[r] = a_r
        for r in range(n):
            fr, gr = f[r], g[r]
            for s in range(r, n):
                fs, gs = f[s], g[s]
                prs = P[r, s]
                # (F P)[r, s] = f_r P[r, s] + g_r P[b, s], then (F P F^T)[r, s].
                if fr is not None:
                    prs *= fr
                if gr is not None and ib is not None:
                    prs += gr * P[s, ib]
                if fs is not None:
                    prs *= fs
                if gs is not None:
                    ar = alpha[r]
                    prs += gs * (ar if ar is not None else P[r, ib])
                if r == s:
                    prs += q[r]

    def _correct(
        self,
        sl: slice,
        v_meas: FloatArray,
        i_m: FloatArray,
        jb: IntArray,
        ft: FloatArray,
        ok: BoolArray,
        r_meas: float,
    ) -> None:
        """Measurement update of the cells ``sl`` (sigma-point or EKF, see the module doc)."""
        cfg = self.config
        tab = self._tab
        x = self.x[:, sl]
        P = self.P[:, :, sl]
        n = self.n_states
        ib, ih = self.i_b, self.i_h
        rs = self.r_scale[sl] if self._scaled else None
        # First Cholesky column l = P[:, 0] / sqrt(P00).
        inv = 1.0 / np.sqrt(np.maximum(P[0, 0], 1e-14))
        lcol = [P[0, r] * inv for r in range(n)]
        step: FloatArray | float
        step = cfg.sigma_step if cfg.method == "spkf" else EKF_SOC_STEP * inv
        bias_v = cfg.bias_in_voltage and ib is not None
        i_eff = i_m - x[ib] if bias_v and ib is not None else i_m
        vsum = x[1].copy()
        lv = lcol[1].copy()
        for k in self.i_v[1:]:
            vsum += x[k]
            lv += lcol[k]
        h = x[ih] if ih is not None else None

        def model_voltage(
            z: FloatArray, dstep: FloatArray | float | None
        ) -> tuple[FloatArray, FloatArray, FloatArray]:
            """Voltage at ``x + dstep l`` (``None``: at the mean), with M and R0 there."""
            idx, fz = tab.soc_index(z, jb)
            y = tab.value(0, idx, fz, ft)
            r0 = tab.value(2, idx, fz, ft)
            if rs is not None:
                r0 *= rs
            ie = i_eff
            if dstep is not None and bias_v and ib is not None:
                ie = i_eff - dstep * lcol[ib]
            y -= r0 * ie
            y -= vsum
            m: FloatArray = np.zeros(0)
            if h is not None and ih is not None:
                m = tab.value(1, idx, fz, ft)
                y += m * (h if dstep is None else h + dstep * lcol[ih])
            if dstep is not None:
                y -= dstep * lv
            return y, m, r0

        z = x[0]
        y0, m0, r00 = model_voltage(z, None)
        # Open-circuit part of the prior's voltage (for the resistance estimator).
        self.open_circuit_prior_v[sl] = y0 + r00 * i_eff
        y_plus = model_voltage(z + step * lcol[0], step)[0]
        y_minus = model_voltage(z - step * lcol[0], -step)[0]
        dcol = y_plus - y_minus
        dcol /= 2.0 * step
        pyy = r_meas + dcol * dcol
        if cfg.polarisation_error > 0:
            # Model error proportional to the modelled polarisation (see KalmanConfig).
            pol = np.abs(r00 * i_eff)
            for k in self.i_v:
                pol += np.abs(x[k])
            pol *= cfg.polarisation_error
            pol *= pol
            pol *= self.config.model_error_factor(self._last_dt_s)
            pyy += pol
        if cfg.method == "spkf":
            s2 = y_plus + y_minus
            s2 -= 2.0 * y0
            hs2 = cfg.sigma_step**2
            y_hat = y0 + s2 / (2.0 * hs2)
            s2 *= s2
            pyy += ((hs2 - 1.0) / (4.0 * hs2 * hs2)) * s2
        else:
            y_hat = y0
        if cfg.ocv_soc_error > 0:
            idx0, _ = tab.soc_index(z, jb)
            slope = tab.slope(0, idx0, ft)
            slope *= cfg.ocv_soc_error
            pyy += slope * slope
        # Affine part H at the mean (columns 1..n-1): v_k -> -1, h -> M, b -> R0.
        hrow: list[tuple[int, FloatArray | None]] = [(k, None) for k in self.i_v]
        if ih is not None:
            hrow.append((ih, m0))
        if bias_v and ib is not None:
            hrow.append((ib, r00))
        # u = (P - l l^T) H^T (u[0] is zero), HPH = H (P - l l^T) H^T.
        lh = -lv
        if ih is not None:
            lh += lcol[ih] * m0
        if bias_v and ib is not None:
            lh += lcol[ib] * r00
        u: list[FloatArray] = [np.zeros(0)]  # u[0] is zero: row 0 of P - l l^T vanishes
        for r in range(1, n):
            acc = lcol[r] * lh
            np.negative(acc, out=acc)
            for col, hc in hrow:
                prc = P[r, col] if r <= col else P[col, r]
                if hc is None:
                    acc -= prc
                else:
                    acc += prc * hc
            u.append(acc)
        for col, hc in hrow:
            if hc is None:
                pyy -= u[col]
            else:
                pyy += u[col] * hc
        np.maximum(pyy, 1e-12, out=pyy)
        # P_xy, gain, update (rows with an invalid voltage get zero gain).
        innov = v_meas - y_hat
        self.innovation_std_v[sl] = np.sqrt(pyy)
        inv_pyy = np.divide(1.0, pyy, out=pyy)
        if bool(ok.all()):
            self.innovation_v[sl] = innov
        else:
            self.innovation_v[sl] = np.where(ok, innov, np.nan)
            inv_pyy[~ok] = 0.0
            innov[~ok] = 0.0
        pxy = u
        pxy[0] = lcol[0] * dcol
        for r in range(1, n):
            pxy[r] += lcol[r] * dcol
        buf = np.empty_like(innov)
        for r in range(n):
            gr = np.multiply(pxy[r], inv_pyy, out=lcol[r])  # lcol is no longer needed
            x[r] += np.multiply(gr, innov, out=buf)
            for s in range(r, n):
                P[r, s] -= np.multiply(gr, pxy[s], out=buf)
            np.maximum(P[r, r], 1e-14, out=P[r, r])
        np.clip(x[0], 0.0, 1.0, out=x[0])
        if ih is not None:
            np.clip(x[ih], -1.0, 1.0, out=x[ih])


# -- state of health -----------------------------------------------------------------------


@dataclass
class CapacityEstimator:
    """Capacity from charge throughput between confident SoC estimates (per cell).

    An *anchor* is a SoC estimate with a std below ``max_anchor_std``. When the SoC has moved
    by at least ``min_delta_soc`` from the last anchor and is confident again, the charge
    counted in between over the SoC difference is one capacity measurement, with variance
    ``Q^2 ((std_a^2 + std_b^2) / dz^2 + g^2)`` (``g`` the current gain uncertainty); the
    measurements are fused by inverse variance with a forgetting factor.

    Caveat: between anchors the filter's SoC is partly coulomb-counted with the nominal
    capacity, so a measurement is only as independent as the voltage information at both
    anchors; the SoC std of the filter bounds this, and on a flat LFP plateau no anchor is set.

    Parameters
    ----------
    capacity_ah : numpy.ndarray
        Prior capacity of each cell [Ah].
    capacity_std_ah : numpy.ndarray
        Prior std [Ah].
    min_delta_soc : float
        Minimum SoC movement between anchors [fraction].
    max_anchor_std : float
        Largest SoC std accepted at an anchor [fraction].
    current_gain_error : float
        Relative uncertainty of the counted charge [fraction].
    forgetting : float
        Weight kept by the previous estimate's information at each new measurement [1].
    """

    capacity_ah: FloatArray
    capacity_std_ah: FloatArray
    min_delta_soc: float = 0.3
    max_anchor_std: float = 0.03
    current_gain_error: float = 0.005
    forgetting: float = 0.9
    measurements: IntArray = field(init=False)
    _anchor_soc: FloatArray = field(init=False)
    _anchor_var: FloatArray = field(init=False)
    _anchor_ah: FloatArray = field(init=False)
    _net_ah: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        n = self.capacity_ah.size
        self.capacity_ah = np.asarray(self.capacity_ah, dtype=np.float64).copy()
        self.capacity_std_ah = np.asarray(self.capacity_std_ah, dtype=np.float64).copy()
        self.measurements = np.zeros(n, dtype=np.intp)
        self._anchor_soc = np.full(n, np.nan)
        self._anchor_var = np.full(n, np.nan)
        self._anchor_ah = np.zeros(n)
        self._net_ah = np.zeros(n)

    def update(self, dq_ah: FloatArray, soc: FloatArray, soc_std: FloatArray) -> None:
        """Count charge and take a measurement where the SoC moved enough.

        Parameters
        ----------
        dq_ah : numpy.ndarray
            Charge taken out during the step [Ah] (efficiency applied on charge).
        soc, soc_std : numpy.ndarray
            SoC estimate and its std after the step [fraction].
        """
        _capacity_kernel(
            np.ascontiguousarray(dq_ah, dtype=np.float64),
            np.ascontiguousarray(soc, dtype=np.float64),
            np.ascontiguousarray(soc_std, dtype=np.float64),
            self.min_delta_soc,
            self.max_anchor_std,
            self.current_gain_error,
            self.forgetting,
            self.capacity_ah,
            self.capacity_std_ah,
            self.measurements,
            self._anchor_soc,
            self._anchor_var,
            self._anchor_ah,
            self._net_ah,
        )


@jit
def _capacity_kernel(
    dq_ah: FloatArray,
    soc: FloatArray,
    soc_std: FloatArray,
    min_delta_soc: float,
    max_anchor_std: float,
    gain_error: float,
    forgetting: float,
    capacity_ah: FloatArray,
    capacity_std_ah: FloatArray,
    measurements: IntArray,
    anchor_soc: FloatArray,
    anchor_var: FloatArray,
    anchor_ah: FloatArray,
    net_ah: FloatArray,
) -> None:
    """:meth:`CapacityEstimator.update`, cell by cell (see there)."""
    for c in range(soc.shape[0]):
        net_ah[c] += dq_ah[c]
        std = soc_std[c]
        confident = std <= max_anchor_std
        dz = anchor_soc[c] - soc[c]
        fresh = confident and not math.isfinite(anchor_soc[c])
        due = confident and math.isfinite(dz) and abs(dz) >= min_delta_soc
        if due:
            meas = (net_ah[c] - anchor_ah[c]) / dz
            rel_var = (anchor_var[c] + std * std) / (dz * dz) + gain_error * gain_error
            cap = capacity_ah[c]
            info_prior = forgetting / capacity_std_ah[c] ** 2
            info_m = 0.0
            plausible = 0.2 * cap < meas < 5.0 * cap
            if plausible:
                info_m = 1.0 / (meas * meas * rel_var)
                measurements[c] += 1
            info = info_prior + info_m
            capacity_ah[c] = (info_prior * cap + info_m * meas) / info
            capacity_std_ah[c] = math.sqrt(1.0 / info)
        if fresh or due:
            anchor_soc[c] = soc[c]
            anchor_var[c] = std * std
            anchor_ah[c] = net_ah[c]
        elif (
            confident
            and math.isfinite(anchor_var[c])
            and std * std < anchor_var[c]
            and abs(dz) < 0.02
        ):
            # A better-known point near the anchor replaces it.
            anchor_soc[c] = soc[c]
            anchor_var[c] = std * std
            anchor_ah[c] = net_ah[c]


@dataclass
class ResistanceEstimator:
    """Series resistance from current steps (per cell), as a multiplier of the R0 table.

    At a current step ``di`` between two samples the voltage step, corrected for the change of
    the filter's modelled OCV, hysteresis and RC voltages over the step, is ``-R0 di``; each
    step gives a measurement of ``r = R0 / R0_table(z, T)`` with variance ``2 sigma_v^2 /
    (di R0_table)^2 + rel_error^2``, fused by inverse variance with forgetting.

    Parameters
    ----------
    n_cells : int
        Number of cells.
    min_step_c : float
        Smallest current step used, as a C-rate [1/h].
    max_dt_s : float
        Largest sampling interval across which a step is used [s].
    voltage_noise_v : float
        Voltage noise [V].
    rel_error : float
        Relative model error of one measurement [fraction].
    prior_std : float
        Prior std of the multiplier [1].
    forgetting : float
        Weight kept by the previous estimate's information at each measurement [1].
    """

    n_cells: int
    min_step_c: float = 0.3
    max_dt_s: float = 2.0
    voltage_noise_v: float = 0.002
    rel_error: float = 0.05
    prior_std: float = 0.3
    forgetting: float = 0.999
    scale: FloatArray = field(init=False)
    scale_std: FloatArray = field(init=False)
    measurements: IntArray = field(init=False)

    def __post_init__(self) -> None:
        self.scale = np.ones(self.n_cells)
        self.scale_std = np.full(self.n_cells, self.prior_std)
        self.measurements = np.zeros(self.n_cells, dtype=np.intp)

    def update(
        self,
        dt_s: float,
        di_a: FloatArray,
        dv_v: FloatArray,
        dv_model_v: FloatArray,
        r0_table_ohm: FloatArray,
        capacity_ah: FloatArray,
        cells: IntArray | None = None,
    ) -> None:
        """Take a measurement where the current stepped.

        Parameters
        ----------
        dt_s : float
            Sampling interval of the step [s].
        di_a : numpy.ndarray
            Current step [A] (positive = more discharge).
        dv_v : numpy.ndarray
            Measured voltage step [V].
        dv_model_v : numpy.ndarray
            Modelled voltage change over the step without the ohmic term [V] (OCV,
            hysteresis, RC voltages).
        r0_table_ohm : numpy.ndarray
            R0 table value at the present (SoC, T) [ohm].
        capacity_ah : numpy.ndarray
            Capacity [Ah] (for the step threshold).
        cells : numpy.ndarray of int, optional
            The cells the arrays describe (default: all, in order).
        """
        if dt_s > self.max_dt_s or dt_s <= 0:
            return
        big = np.isfinite(dv_v) & (np.abs(di_a) >= self.min_step_c * capacity_ah)
        if not np.any(big):
            return
        target = np.flatnonzero(big) if cells is None else np.asarray(cells)[big]
        di = di_a[big]
        r_tab = r0_table_ohm[big]
        meas = -(dv_v[big] - dv_model_v[big]) / (di * r_tab)
        var = 2.0 * self.voltage_noise_v**2 / (di * r_tab) ** 2 + self.rel_error**2
        plausible = (meas > 0.2) & (meas < 10.0)
        info_prior = self.forgetting / self.scale_std[target] ** 2
        info_m = np.where(plausible, 1.0 / var, 0.0)
        info = info_prior + info_m
        self.scale[target] = (info_prior * self.scale[target] + info_m * meas) / info
        self.scale_std[target] = np.sqrt(1.0 / info)
        self.measurements[target] += plausible


# -- state of power --------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLimits:
    """Power and current available from each cell for a horizon (all arrays ``(N,)``).

    Parameters
    ----------
    horizon_s : float
        Horizon [s].
    discharge_current_a, charge_current_a : numpy.ndarray
        Largest constant discharge and charge current [A] (both >= 0) that keep every limit
        over the whole horizon.
    discharge_power_w, charge_power_w : numpy.ndarray
        Matching power [W] (>= 0): current times the lowest (discharge) or highest (charge)
        terminal voltage over the horizon.
    discharge_voltage_v, charge_voltage_v : numpy.ndarray
        That terminal voltage [V].
    discharge_resistance_ohm, charge_resistance_ohm : numpy.ndarray
        Incremental resistance of the voltage at the limiting instant [ohm] (``dv/di``; for
        combining cells of a string in :func:`string_power_limits`).
    """

    horizon_s: float
    discharge_current_a: FloatArray
    charge_current_a: FloatArray
    discharge_power_w: FloatArray
    charge_power_w: FloatArray
    discharge_voltage_v: FloatArray
    charge_voltage_v: FloatArray
    discharge_resistance_ohm: FloatArray
    charge_resistance_ohm: FloatArray


def power_limits(
    model: CellModel,
    soc: FloatArray,
    v_rc: FloatArray,
    hysteresis: FloatArray,
    temperature_degc: FloatArray,
    horizon_s: float,
    *,
    capacity_ah: FloatArray | float | None = None,
    r_scale: FloatArray | float = 1.0,
    voltage_min_v: float | None = None,
    voltage_max_v: float | None = None,
    max_discharge_current_a: FloatArray | float = np.inf,
    max_charge_current_a: FloatArray | float = np.inf,
    soc_min: float = 0.0,
    soc_max: float = 1.0,
    iterations: int = 3,
    directions: tuple[str, ...] = ("discharge", "charge"),
) -> PowerLimits:
    """State of power: constant current (and power) each cell can hold for ``horizon_s``.

    For a constant current ``I`` over the horizon the ECM gives the terminal voltage in closed
    form (zero-order hold)::

        v(t) = OCV(z - eta I t / 3600 Q) + M h(t) - R0 I - sum_k [a_k(t) v_k + (1 - a_k(t)) R_k I]

    The voltage is checked at the start and at a third, two thirds and the end of the horizon
    (the RC resistances integrated along the SoC path in three sub-intervals); ``I`` is the
    largest current that keeps all of them inside the voltage window, the SoC inside
    ``[soc_min, soc_max]`` at the end, and within the current limit, found by a few Newton
    steps on the limiting voltage.

    Parameters
    ----------
    model : CellModel
        Cell model.
    soc : numpy.ndarray
        SoC [fraction] (use ``soc - k std`` / ``soc + k std`` for a margin).
    v_rc : numpy.ndarray
        RC voltages [V], shape ``(nrc, N)``.
    hysteresis : numpy.ndarray
        Hysteresis state [1].
    temperature_degc : numpy.ndarray
        Temperature [degC].
    horizon_s : float
        Horizon [s] (e.g. 10 or 60).
    capacity_ah : numpy.ndarray or float, optional
        Capacity [Ah]; default the parameter set's.
    r_scale : numpy.ndarray or float
        Resistance multiplier [1].
    voltage_min_v, voltage_max_v : float, optional
        Voltage window [V]; default the parameter set's.
    max_discharge_current_a, max_charge_current_a : numpy.ndarray or float
        Current limits [A] (>= 0).
    soc_min, soc_max : float
        SoC window [fraction].
    iterations : int
        Newton steps.
    directions : tuple of str
        Which limits to compute (``"discharge"``, ``"charge"``); the others are zeros.

    Returns
    -------
    PowerLimits
        The limits.
    """
    if horizon_s <= 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
    p = model.params
    z = np.clip(np.asarray(soc, dtype=np.float64), 0.0, 1.0)
    n = z.size
    temp = np.broadcast_to(np.asarray(temperature_degc, dtype=np.float64), (n,))
    cap = np.broadcast_to(
        np.asarray(p.capacity_ah if capacity_ah is None else capacity_ah, dtype=np.float64), (n,)
    )
    vmin = p.voltage_min_v if voltage_min_v is None else voltage_min_v
    vmax = p.voltage_max_v if voltage_max_v is None else voltage_max_v
    h = np.asarray(hysteresis, dtype=np.float64)
    vr = np.asarray(v_rc, dtype=np.float64).reshape(p.n_rc, n)
    tab = model.tables(z, temp)
    r0 = tab[2] * r_scale
    eta_c = model.coulombic_efficiency(temp)
    gamma = p.hysteresis_rate

    taus = model.rc_tau(temp)  # (nrc, N)

    def voltage_at(i: FloatArray, t_s: float) -> tuple[FloatArray, FloatArray]:
        """Terminal voltage after ``t_s`` at constant current, and its dv/di [ohm]."""
        decay = np.exp(-t_s / taus)
        eta = np.where(i < 0, eta_c, 1.0)
        dz = eta * i * t_s / (3600.0 * cap)
        ze = np.clip(z - dz, 0.0, 1.0)
        te = model.tables(ze, temp)
        # The RC resistances follow the SoC along the pulse (ecm.step takes each step's start
        # SoC): v_k(t) = i sum_m R_k(z_m) w_m over sub-intervals m with the exact weights
        # w_m = exp(-(t - s_end) / tau_k) - exp(-(t - s_start) / tau_k).
        rk_i = np.zeros_like(taus)
        for m in range(SOP_SUBINTERVALS):
            f0 = m / SOP_SUBINTERVALS
            f1 = (m + 1) / SOP_SUBINTERVALS
            zm = np.clip(z - dz * 0.5 * (f0 + f1), 0.0, 1.0)
            w = np.exp(-(1.0 - f1) * t_s / taus) - np.exp(-(1.0 - f0) * t_s / taus)
            rk_i += model.tables(zm, temp)[3:] * w
        rk_i *= r_scale
        he = -np.sign(i) + (h + np.sign(i)) * np.exp(-np.abs(dz) * gamma)
        v = te[0] + te[1] * he - te[2] * r_scale * i
        v -= (decay * vr + rk_i * i[None, :]).sum(axis=0)
        # Incremental resistance (OCV slope over the SoC moved, plus the resistances).
        moved = ze - z
        safe = np.where(np.abs(moved) > 1e-9, moved, 1.0)
        slope = np.where(np.abs(moved) > 1e-9, (te[0] - tab[0]) / safe, 0.0)
        r_inc = te[2] * r_scale + rk_i.sum(axis=0)
        r_inc += np.maximum(slope, 0.0) * eta * t_s / (3600.0 * cap)
        return v, r_inc

    def worst(i: FloatArray, sign: float) -> tuple[FloatArray, FloatArray]:
        """The limiting voltage over the horizon (checked at three instants) and its dv/di."""
        v_w, r_w = voltage_at(i, horizon_s)
        for frac in (1.0 / 3.0, 2.0 / 3.0):
            v, r = voltage_at(i, frac * horizon_s)
            lower = sign * (v - v_w) < 0
            v_w = np.where(lower, v, v_w)
            r_w = np.where(lower, r, r_w)
        return v_w, r_w

    v_start0 = tab[0] + tab[1] * h - vr.sum(axis=0)  # open-circuit part at t = 0+
    out: dict[str, FloatArray] = {
        f"{d}_{q}": np.zeros(n)
        for d in ("discharge", "charge")
        for q in ("current_a", "voltage_v", "power_w", "resistance_ohm")
    }
    for direction, sign in (("discharge", 1.0), ("charge", -1.0)):
        if direction not in directions:
            continue
        limit_v = vmin if sign > 0 else vmax
        i_cap = np.broadcast_to(
            np.asarray(
                max_discharge_current_a if sign > 0 else max_charge_current_a, dtype=np.float64
            ),
            (n,),
        )
        # SoC window: the charge moved over the horizon.
        if sign > 0:
            i_soc = np.maximum(z - soc_min, 0.0) * 3600.0 * cap / horizon_s
        else:
            i_soc = np.maximum(soc_max - z, 0.0) * 3600.0 * cap / (horizon_s * eta_c)
        # Start of the horizon: v(0+) = v_start0 - R0 I.
        i_start = np.maximum(sign * (v_start0 - limit_v), 0.0) / np.maximum(r0, 1e-9)
        top = np.minimum(np.minimum(i_start, i_soc), i_cap)
        top = np.where(np.isfinite(top), top, 0.0)
        # Later instants: Newton on the limiting voltage = limit.
        mag = top.copy()
        for _ in range(iterations):
            v_w, r_w = worst(sign * mag, sign)
            mag = np.clip(mag + sign * (v_w - limit_v) / np.maximum(r_w, 1e-9), 0.0, top)
        v_w, r_w = worst(sign * mag, sign)
        # The last Newton step may leave it a hair outside: back off.
        over = sign * (v_w - limit_v) < 0
        mag = np.where(over, mag + sign * (v_w - limit_v) / np.maximum(r_w, 1e-9), mag)
        mag = np.maximum(mag, 0.0)
        v_w, r_w = worst(sign * mag, sign)
        v_st = v_start0 - r0 * sign * mag
        start_limits = sign * (v_st - v_w) < 0
        v_lim = np.where(start_limits, v_st, v_w)
        out[f"{direction}_current_a"] = mag
        out[f"{direction}_voltage_v"] = v_lim
        out[f"{direction}_power_w"] = mag * v_lim
        out[f"{direction}_resistance_ohm"] = np.where(start_limits, r0, r_w)
    return PowerLimits(horizon_s=float(horizon_s), **out)


# -- state of power, compiled (per cell) -----------------------------------------------------


@jit
def _sop_voltage(
    coef: FloatArray,
    n_soc: int,
    jb: int,
    ft: float,
    z: float,
    ocv0: float,
    vr: FloatArray,
    h: float,
    cap: float,
    r_scale: float,
    eta_c: float,
    gamma: float,
    current_a: float,
    t_s: float,
    decay: FloatArray,
    weight: FloatArray,
) -> tuple[float, float]:
    """:func:`power_limits`' ``voltage_at`` for one cell: voltage after ``t_s`` and dv/di.

    ``decay[k] = exp(-t / tau_k)``; ``weight[m, k]`` the exact weights of the sub-intervals.
    """
    top = n_soc - 1.0
    n_rc = vr.shape[0]
    eta = eta_c if current_a < 0 else 1.0
    dz = eta * current_a * t_s / (3600.0 * cap)
    ze = min(max(z - dz, 0.0), 1.0)
    xs = min(max(ze * top, 0.0), top)
    seg = int(xs)
    fz = xs - seg
    idx = jb + seg
    ocv_e = _bilinear(coef, idx, 0, fz, ft)
    m_e = _bilinear(coef, idx, 1, fz, ft)
    r0_e = _bilinear(coef, idx, 2, fz, ft)
    sgn = 1.0 if current_a > 0 else (-1.0 if current_a < 0 else 0.0)
    he = -sgn + (h + sgn) * math.exp(-abs(dz) * gamma)
    v = ocv_e + m_e * he - r0_e * r_scale * current_a
    rc_sum = 0.0
    rk_total = 0.0
    for k in range(n_rc):
        rk = 0.0
        for m in range(SOP_SUBINTERVALS):
            zm = min(max(z - dz * 0.5 * (2.0 * m + 1.0) / SOP_SUBINTERVALS, 0.0), 1.0)
            xm = min(max(zm * top, 0.0), top)
            sm = int(xm)
            rk += _bilinear(coef, jb + sm, 3 + k, xm - sm, ft) * weight[m, k]
        rk *= r_scale
        rc_sum += decay[k] * vr[k] + rk * current_a
        rk_total += rk
    v -= rc_sum
    moved = ze - z
    slope = (ocv_e - ocv0) / moved if abs(moved) > 1e-9 else 0.0
    r_inc = r0_e * r_scale + rk_total + max(slope, 0.0) * eta * t_s / (3600.0 * cap)
    return v, r_inc


@jit
def _sop_worst(
    coef: FloatArray,
    n_soc: int,
    jb: int,
    ft: float,
    z: float,
    ocv0: float,
    vr: FloatArray,
    h: float,
    cap: float,
    r_scale: float,
    eta_c: float,
    gamma: float,
    current_a: float,
    sign: float,
    instants: FloatArray,
    decay: FloatArray,
    weight: FloatArray,
) -> tuple[float, float]:
    """The limiting voltage over the horizon (end, a third, two thirds) and its dv/di."""
    v_w, r_w = _sop_voltage(
        coef,
        n_soc,
        jb,
        ft,
        z,
        ocv0,
        vr,
        h,
        cap,
        r_scale,
        eta_c,
        gamma,
        current_a,
        instants[0],
        decay[0],
        weight[0],
    )
    for q in range(1, 3):
        v, r = _sop_voltage(
            coef,
            n_soc,
            jb,
            ft,
            z,
            ocv0,
            vr,
            h,
            cap,
            r_scale,
            eta_c,
            gamma,
            current_a,
            instants[q],
            decay[q],
            weight[q],
        )
        if sign * (v - v_w) < 0:
            v_w = v
            r_w = r
    return v_w, r_w


@jit
def _sop_solve(
    coef: FloatArray,
    n_soc: int,
    jb: int,
    ft: float,
    taus: FloatArray,
    eta_c: float,
    z: float,
    vr: FloatArray,
    h: float,
    cap: float,
    r_scale: float,
    limit_v: float,
    i_cap: float,
    soc_min: float,
    soc_max: float,
    horizon_s: float,
    sign: float,
    gamma: float,
    iterations: int,
) -> tuple[float, float, float]:
    """:func:`power_limits` for one cell and one direction: current, voltage, dv/di."""
    n_rc = taus.shape[0]
    instants = np.array([horizon_s, (1.0 / 3.0) * horizon_s, (2.0 / 3.0) * horizon_s])
    decay = np.empty((3, n_rc))
    weight = np.empty((3, SOP_SUBINTERVALS, n_rc))
    for q in range(3):
        t_s = instants[q]
        for k in range(n_rc):
            decay[q, k] = math.exp(-t_s / taus[k])
            for m in range(SOP_SUBINTERVALS):
                f0 = m / SOP_SUBINTERVALS
                f1 = (m + 1) / SOP_SUBINTERVALS
                weight[q, m, k] = math.exp(-(1.0 - f1) * t_s / taus[k]) - math.exp(
                    -(1.0 - f0) * t_s / taus[k]
                )
    top = n_soc - 1.0
    xs = min(max(z * top, 0.0), top)
    seg = int(xs)
    idx = jb + seg
    fz = xs - seg
    ocv0 = _bilinear(coef, idx, 0, fz, ft)
    r0 = _bilinear(coef, idx, 2, fz, ft) * r_scale
    v_start0 = ocv0 + _bilinear(coef, idx, 1, fz, ft) * h
    for k in range(n_rc):
        v_start0 -= vr[k]
    if sign > 0:
        i_soc = max(z - soc_min, 0.0) * 3600.0 * cap / horizon_s
    else:
        i_soc = max(soc_max - z, 0.0) * 3600.0 * cap / (horizon_s * eta_c)
    i_start = max(sign * (v_start0 - limit_v), 0.0) / max(r0, 1e-9)
    top_i = min(min(i_start, i_soc), i_cap)
    if not math.isfinite(top_i):
        top_i = 0.0
    mag = top_i
    for _ in range(iterations):
        v_w, r_w = _sop_worst(
            coef,
            n_soc,
            jb,
            ft,
            z,
            ocv0,
            vr,
            h,
            cap,
            r_scale,
            eta_c,
            gamma,
            sign * mag,
            sign,
            instants,
            decay,
            weight,
        )
        mag = min(max(mag + sign * (v_w - limit_v) / max(r_w, 1e-9), 0.0), top_i)
    v_w, r_w = _sop_worst(
        coef,
        n_soc,
        jb,
        ft,
        z,
        ocv0,
        vr,
        h,
        cap,
        r_scale,
        eta_c,
        gamma,
        sign * mag,
        sign,
        instants,
        decay,
        weight,
    )
    if sign * (v_w - limit_v) < 0:
        mag = mag + sign * (v_w - limit_v) / max(r_w, 1e-9)
    mag = max(mag, 0.0)
    v_w, r_w = _sop_worst(
        coef,
        n_soc,
        jb,
        ft,
        z,
        ocv0,
        vr,
        h,
        cap,
        r_scale,
        eta_c,
        gamma,
        sign * mag,
        sign,
        instants,
        decay,
        weight,
    )
    v_st = v_start0 - r0 * sign * mag
    if sign * (v_st - v_w) < 0:
        return mag, v_st, r0
    return mag, v_w, r_w


@jit
def _sop_cells_kernel(
    coef: FloatArray,
    n_soc: int,
    temps: FloatArray,
    inv_width: FloatArray,
    tau_rows: FloatArray,
    tau_slopes: FloatArray,
    eta_row: FloatArray,
    eta_slope: FloatArray,
    soc: FloatArray,
    v_rc: FloatArray,
    hysteresis: FloatArray,
    temperature_degc: FloatArray,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    sign: FloatArray,
    horizon_s: FloatArray,
    limit_v: FloatArray,
    i_cap: FloatArray,
    soc_min: float,
    soc_max: float,
    gamma: float,
    iterations: int,
    out: FloatArray,
) -> None:
    """:func:`_sop_solve` for a list of tasks (cell state, direction, horizon), into ``out``.

    ``out`` rows: current [A] (>= 0), limiting voltage [V], its dv/di [ohm].
    """
    n_rc = v_rc.shape[0]
    taus = np.empty(n_rc)
    vr = np.empty(n_rc)
    for c in range(soc.shape[0]):
        j, ft = _temperature_row(temps, inv_width, temperature_degc[c])
        for k in range(n_rc):
            taus[k] = tau_slopes[k, j] * ft + tau_rows[k, j]
            vr[k] = v_rc[k, c]
        eta_c = eta_slope[j] * ft + eta_row[j]
        mag, v_lim, r_lim = _sop_solve(
            coef,
            n_soc,
            j * n_soc,
            ft,
            taus,
            eta_c,
            min(max(soc[c], 0.0), 1.0),
            vr,
            hysteresis[c],
            capacity_ah[c],
            r_scale[c],
            limit_v[c],
            i_cap[c],
            soc_min,
            soc_max,
            horizon_s[c],
            sign[c],
            gamma,
            iterations,
        )
        out[0, c] = mag
        out[1, c] = v_lim
        out[2, c] = r_lim


@jit
def _sop_screen_kernel(
    coef: FloatArray,
    n_soc: int,
    temps: FloatArray,
    inv_width: FloatArray,
    tau_rows: FloatArray,
    tau_slopes: FloatArray,
    eta_row: FloatArray,
    eta_slope: FloatArray,
    x: FloatArray,
    P: FloatArray,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    temperature_degc: FloatArray,
    temperature_group: int,
    start: int,
    stop: int,
    ih: int,
    n_rc: int,
    horizons_s: FloatArray,
    soc_sigma: float,
    voltage_min_v: float,
    voltage_max_v: float,
    soc_min: float,
    soc_max: float,
    oc_h: FloatArray,
    r_h: FloatArray,
    lin_a: FloatArray,
) -> None:
    """Linear state of power of the cells ``start .. stop - 1`` (screening for the exact one).

    Per direction ``d`` (0 discharge at ``z - soc_sigma std``, 1 charge at ``z + soc_sigma
    std``) and horizon: ``lin_a`` the current that reaches the voltage limit (at the start or
    at the end of the horizon) or the SoC window [A], and the cell's voltage as ``oc_h -+ I
    r_h`` at the instant that limits at that current: at the end, ``oc_h`` is the open-circuit
    voltage after the RC voltages decayed over the horizon [V] and ``r_h`` the resistance of
    a constant current held over it (R0, the RC resistances charged over the horizon, the OCV
    slope times the SoC moved) [ohm]; at the start, the present open-circuit voltage and R0.
    """
    n_h = horizons_s.shape[0]
    top = n_soc - 1.0
    a_hk = np.empty((n_h, max(n_rc, 1)))
    group = -1
    jb = 0
    ft = 0.0
    eta_t = 1.0
    for c in range(start, stop):
        gt = c // temperature_group
        if gt != group:
            group = gt
            j, ft = _temperature_row(temps, inv_width, temperature_degc[gt])
            jb = j * n_soc
            eta_t = eta_slope[j] * ft + eta_row[j]
            for hi in range(n_h):
                for k in range(n_rc):
                    a_hk[hi, k] = math.exp(
                        -horizons_s[hi] / (tau_slopes[k, j] * ft + tau_rows[k, j])
                    )
        std = math.sqrt(max(P[0, 0, c], 0.0))
        h = x[ih, c] if ih >= 0 else 0.0
        cap = capacity_ah[c]
        rs = r_scale[c]
        for d in range(2):
            sign = 1.0 if d == 0 else -1.0
            zd = min(max(x[0, c] - sign * soc_sigma * std, 0.0), 1.0)
            xs = min(max(zd * top, 0.0), top)
            seg = int(xs)
            fz = xs - seg
            idx = jb + seg
            ocv = _bilinear(coef, idx, 0, fz, ft)
            slope = (coef[idx, 0, 1] + coef[idx, 0, 3] * ft) * top
            ocm = ocv + _bilinear(coef, idx, 1, fz, ft) * h
            r0 = _bilinear(coef, idx, 2, fz, ft) * rs
            v0 = ocm
            for k in range(n_rc):
                v0 -= x[1 + k, c]
            limit = voltage_min_v if d == 0 else voltage_max_v
            i_start = max(sign * (v0 - limit), 0.0) / max(r0, 1e-9)
            eta = 1.0 if d == 0 else eta_t
            for hi in range(n_h):
                horizon = horizons_s[hi]
                oc = ocm
                r = r0
                for k in range(n_rc):
                    a = a_hk[hi, k]
                    oc -= a * x[1 + k, c]
                    r += (1.0 - a) * _bilinear(coef, idx, 3 + k, fz, ft) * rs
                r += max(slope, 0.0) * eta * horizon / (3600.0 * cap)
                i_h = max(sign * (oc - limit), 0.0) / max(r, 1e-9)
                if d == 0:
                    i_soc = max(zd - soc_min, 0.0) * 3600.0 * cap / horizon
                else:
                    i_soc = max(soc_max - zd, 0.0) * 3600.0 * cap / (horizon * eta)
                lin = min(min(i_start, i_h), i_soc)
                # The voltage model of the string sum: the instant (start or end) that limits
                # at this current.
                if sign * ((v0 - sign * lin * r0) - (oc - sign * lin * r)) < 0:
                    oc = v0
                    r = r0
                oc_h[d, hi, c] = oc
                r_h[d, hi, c] = r
                lin_a[d, hi, c] = lin


@jit
def _sop_pack_kernel(
    coef: FloatArray,
    n_soc: int,
    temps: FloatArray,
    inv_width: FloatArray,
    tau_rows: FloatArray,
    tau_slopes: FloatArray,
    eta_row: FloatArray,
    eta_slope: FloatArray,
    x: FloatArray,
    P: FloatArray,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    temperature_degc: FloatArray,
    temperature_group: int,
    ih: int,
    n_rc: int,
    horizons_s: FloatArray,
    soc_sigma: float,
    voltage_min_v: float,
    voltage_max_v: float,
    soc_min: float,
    soc_max: float,
    gamma: float,
    iterations: int,
    lin_a: FloatArray,
    oc_h: FloatArray,
    r_h: FloatArray,
    n_series: int,
    string_cap_a: FloatArray,
    power_w: FloatArray,
    current_a: FloatArray,
) -> None:
    """Pack state of power from the screening arrays of :func:`_sop_screen_kernel`.

    For each direction ``d`` and horizon: every string's current is the lowest linear
    current of its cells (capped at ``string_cap_a[d]``) and its voltage at that current
    ``sum(oc_h) -+ I sum(r_h)``; in the string with the lowest power, the cell with the
    lowest linear current is solved exactly (:func:`_sop_solve`), and the next one too if its
    linear current is below that exact one; the pack power is ``n_strings`` times the lower of
    that string's power and the next string's linear power scaled by the exact-over-linear
    ratio of the weakest string (parallel strings share the current).
    ``power_w[d, h]`` [W] and ``current_a[d, h]`` (pack current [A]) receive the result.
    """
    n_d, n_h, n = lin_a.shape
    n_str = n // n_series
    taus = np.empty(max(n_rc, 1))
    vr = np.empty(max(n_rc, 1))
    for d in range(n_d):
        sign = 1.0 if d == 0 else -1.0
        cap_a = string_cap_a[d]
        for hi in range(n_h):
            worst_p = math.inf
            second_p = math.inf
            second_i = 0.0
            worst_i = 0.0
            worst_i1 = 0
            worst_i2 = 0
            worst_oc = 0.0
            worst_r = 0.0
            for s in range(n_str):
                lo = s * n_series
                best = math.inf
                next_best = math.inf
                i1 = lo
                i2 = lo
                so = 0.0
                sr = 0.0
                for c in range(lo, lo + n_series):
                    v = lin_a[d, hi, c]
                    if v < best:
                        next_best = best
                        i2 = i1
                        best = v
                        i1 = c
                    elif v < next_best:
                        next_best = v
                        i2 = c
                    so += oc_h[d, hi, c]
                    sr += r_h[d, hi, c]
                i_s = min(best, cap_a)
                p_s = max(i_s * (so - sign * i_s * sr), 0.0)
                if p_s < worst_p:
                    second_p = worst_p
                    second_i = worst_i
                    worst_p = p_s
                    worst_i = i_s
                    worst_i1 = i1
                    worst_i2 = i2 if n_series > 1 else i1
                    worst_oc = so
                    worst_r = sr
                elif p_s < second_p:
                    second_p = p_s
                    second_i = i_s
            # Exact current of the two candidate cells of the weakest string.
            i_exact = cap_a
            for cand in range(2):
                c = worst_i1 if cand == 0 else worst_i2
                if cand == 1 and (c == worst_i1 or lin_a[d, hi, c] >= i_exact):
                    break  # the second cell cannot limit more than the first one does
                j, ft = _temperature_row(temps, inv_width, temperature_degc[c // temperature_group])
                for k in range(n_rc):
                    taus[k] = tau_slopes[k, j] * ft + tau_rows[k, j]
                    vr[k] = x[1 + k, c]
                eta_c = eta_slope[j] * ft + eta_row[j]
                std = math.sqrt(max(P[0, 0, c], 0.0))
                z = min(max(x[0, c] - sign * soc_sigma * std, 0.0), 1.0)
                mag, _, _ = _sop_solve(
                    coef,
                    n_soc,
                    j * n_soc,
                    ft,
                    taus[:n_rc],
                    eta_c,
                    z,
                    vr[:n_rc],
                    x[ih, c] if ih >= 0 else 0.0,
                    capacity_ah[c],
                    r_scale[c],
                    voltage_min_v if d == 0 else voltage_max_v,
                    cap_a,
                    soc_min,
                    soc_max,
                    horizons_s[hi],
                    sign,
                    gamma,
                    iterations,
                )
                i_exact = min(i_exact, mag)
            if not math.isfinite(i_exact):
                i_exact = 0.0
            p_exact = max(i_exact * (worst_oc - sign * i_exact * worst_r), 0.0)
            # The other strings' linear figures, corrected by the weakest string's exact over
            # linear ratio (the linear model errs alike for alike cells).
            if worst_p > 0.0 and math.isfinite(second_p):
                ratio = p_exact / worst_p
                second_p *= ratio
                second_i *= ratio
            if p_exact <= second_p:
                power_w[d, hi] = n_str * p_exact
                current_a[d, hi] = n_str * i_exact
            else:
                power_w[d, hi] = n_str * second_p
                current_a[d, hi] = n_str * second_i


def power_limits_compiled(
    model: CellModel,
    soc: FloatArray,
    v_rc: FloatArray,
    hysteresis: FloatArray,
    temperature_degc: FloatArray,
    horizon_s: float,
    *,
    capacity_ah: FloatArray | float | None = None,
    r_scale: FloatArray | float = 1.0,
    voltage_min_v: float | None = None,
    voltage_max_v: float | None = None,
    max_discharge_current_a: FloatArray | float = np.inf,
    max_charge_current_a: FloatArray | float = np.inf,
    soc_min: float = 0.0,
    soc_max: float = 1.0,
    iterations: int = 3,
    directions: tuple[str, ...] = ("discharge", "charge"),
) -> PowerLimits:
    """:func:`power_limits` as one compiled loop over the cells (same arguments and results).

    The arithmetic is :func:`power_limits`' operation by operation, so the two agree to
    rounding; with numba it costs a few microseconds per cell and direction.

    Parameters
    ----------
    model, soc, v_rc, hysteresis, temperature_degc, horizon_s
        As :func:`power_limits`.
    capacity_ah, r_scale, voltage_min_v, voltage_max_v, max_discharge_current_a,
    max_charge_current_a, soc_min, soc_max, iterations, directions
        As :func:`power_limits`.

    Returns
    -------
    PowerLimits
        The limits.
    """
    if horizon_s <= 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s}")
    p = model.params
    z = np.clip(np.asarray(soc, dtype=np.float64), 0.0, 1.0).ravel()
    n = z.size

    def vec(values: FloatArray | float) -> FloatArray:
        return np.ascontiguousarray(
            np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)), dtype=np.float64
        )

    tab = _Tables(model)
    vr = np.ascontiguousarray(np.asarray(v_rc, dtype=np.float64).reshape(p.n_rc, n))
    vmin = p.voltage_min_v if voltage_min_v is None else voltage_min_v
    vmax = p.voltage_max_v if voltage_max_v is None else voltage_max_v
    cap = vec(p.capacity_ah if capacity_ah is None else capacity_ah)
    out: dict[str, FloatArray] = {
        f"{d}_{q}": np.zeros(n)
        for d in ("discharge", "charge")
        for q in ("current_a", "voltage_v", "power_w", "resistance_ohm")
    }
    res = np.empty((3, n))
    for direction, sign in (("discharge", 1.0), ("charge", -1.0)):
        if direction not in directions:
            continue
        _sop_cells_kernel(
            tab.coef_cells,
            tab.ns,
            tab.temps,
            tab.inv_width,
            tab.tau_rows,
            tab.tau_slopes,
            tab.eta,
            tab.eta_slope,
            z,
            vr,
            vec(hysteresis),
            vec(temperature_degc),
            cap,
            vec(r_scale),
            np.full(n, sign),
            np.full(n, float(horizon_s)),
            np.full(n, vmin if sign > 0 else vmax),
            vec(max_discharge_current_a if sign > 0 else max_charge_current_a),
            float(soc_min),
            float(soc_max),
            float(p.hysteresis_rate),
            int(iterations),
            res,
        )
        out[f"{direction}_current_a"] = res[0].copy()
        out[f"{direction}_voltage_v"] = res[1].copy()
        out[f"{direction}_power_w"] = res[0] * res[1]
        out[f"{direction}_resistance_ohm"] = res[2].copy()
    return PowerLimits(horizon_s=float(horizon_s), **out)


def string_power_limits(limits: PowerLimits, n_strings: int) -> tuple[FloatArray, FloatArray]:
    """Power of each series string: the weakest cell limits the current.

    Each cell's limiting voltage is continued linearly in the current with its incremental
    resistance, ``v(I) = v_lim + r (I_lim - I)`` on discharge, and summed at the string
    current ``min I_lim``.

    Parameters
    ----------
    limits : PowerLimits
        Cell limits, cells ordered string by string.
    n_strings : int
        Number of strings (the cell count must be a multiple of it).

    Returns
    -------
    tuple of numpy.ndarray
        Discharge and charge power of each string [W] (both >= 0).
    """
    out = []
    for direction, sign in (("discharge", 1.0), ("charge", -1.0)):
        i_lim = getattr(limits, f"{direction}_current_a").reshape(n_strings, -1)
        v_lim = getattr(limits, f"{direction}_voltage_v").reshape(n_strings, -1)
        r = getattr(limits, f"{direction}_resistance_ohm").reshape(n_strings, -1)
        i_str = i_lim.min(axis=1, keepdims=True)
        v = v_lim + sign * r * (i_lim - i_str)
        out.append((i_str[:, 0] * v.sum(axis=1)).astype(np.float64))
    return out[0], out[1]


# -- orchestrator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimateStep:
    """Estimates of every cell after one sample (arrays ``(N,)``).

    Parameters
    ----------
    soc, soc_std : numpy.ndarray
        SoC and its std [fraction].
    capacity_ah, capacity_std_ah : numpy.ndarray
        Capacity estimate and its std [Ah].
    soh : numpy.ndarray
        Capacity state of health: capacity over the parameter set's [fraction].
    resistance_ohm, resistance_std_ohm : numpy.ndarray
        Series resistance at the present (SoC, T) and its std [ohm].
    bias_a : numpy.ndarray
        Current-sensor offset estimate [A].
    """

    soc: FloatArray
    soc_std: FloatArray
    capacity_ah: FloatArray
    capacity_std_ah: FloatArray
    soh: FloatArray
    resistance_ohm: FloatArray
    resistance_std_ohm: FloatArray
    bias_a: FloatArray


class BatteryStateEstimator:
    """SoC (Kalman filter), SoH (capacity, resistance) and SoP of N cells from a sample stream.

    Parameters
    ----------
    model : CellModel
        Cell model.
    n_cells : int
        Number of cells.
    config : KalmanConfig, optional
        Filter tuning.
    capacity_ah : numpy.ndarray or float, optional
        Capacity of each cell [Ah]; default the parameter set's.
    adapt : bool
        Feed the capacity and resistance estimates back into the filter's model.
    """

    def __init__(
        self,
        model: CellModel,
        n_cells: int,
        config: KalmanConfig | None = None,
        capacity_ah: FloatArray | float | None = None,
        adapt: bool = False,
    ) -> None:
        self.model = model
        self.filter = SocKalmanFilter(model, n_cells, config, capacity_ah)
        cfg = self.filter.config
        cap = self.filter.capacity_ah
        self.capacity = CapacityEstimator(
            cap.copy(),
            np.maximum(cfg.capacity_error, 0.02) * cap,
            current_gain_error=max(cfg.current_gain_error, 1e-4),
        )
        self.resistance = ResistanceEstimator(n_cells, voltage_noise_v=cfg.voltage_noise_v)
        self.adapt = adapt
        self._prev_v: FloatArray | None = None
        self._prev_i: FloatArray | None = None
        self._prev_model_v: FloatArray | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.filter.n_cells

    def _model_parts(self, temperature_degc: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Open-circuit part of the modelled voltage (OCV + M h - sum v_k) and R0 table."""
        f = self.filter
        tab = self.model.tables(f.soc, temperature_degc)
        v = tab[0] + tab[1] * f.hysteresis - f.v_rc.sum(axis=0)
        return v, tab[2]

    def step(
        self,
        dt_s: float,
        current_a: FloatArray,
        voltage_v: FloatArray,
        temperature_degc: FloatArray | float,
        valid: BoolArray | None = None,
        *,
        initial_soc: FloatArray | float | None = None,
        initial_soc_std: FloatArray | float = 0.2,
    ) -> EstimateStep:
        """Advance every estimate by one sample.

        The first call initialises the filter: at ``initial_soc`` if given, else from the
        voltage (:meth:`SocKalmanFilter.initialise_from_voltage`).

        Parameters
        ----------
        dt_s : float
            Time since the previous sample [s] (ignored at the first call).
        current_a : numpy.ndarray
            Measured current [A], positive = discharge.
        voltage_v : numpy.ndarray
            Measured voltage [V].
        temperature_degc : numpy.ndarray or float
            Temperature [degC] (NaN: 25 degC).
        valid : numpy.ndarray of bool, optional
            Voltage validity.
        initial_soc : numpy.ndarray or float, optional
            Initial SoC [fraction] for the first call.
        initial_soc_std : numpy.ndarray or float
            Its std [fraction].

        Returns
        -------
        EstimateStep
            The estimates.
        """
        f = self.filter
        n = f.n_cells
        i = np.broadcast_to(np.asarray(current_a, dtype=np.float64), (n,))
        i = np.where(np.isfinite(i), i, 0.0)
        v = np.broadcast_to(np.asarray(voltage_v, dtype=np.float64), (n,))
        temp = np.broadcast_to(np.asarray(temperature_degc, dtype=np.float64), (n,))
        temp = np.where(np.isfinite(temp), temp, 25.0)
        if not f.initialised:
            if initial_soc is None:
                f.initialise_from_voltage(v, i, temp)
            else:
                f.initialise(initial_soc, initial_soc_std)
        else:
            f.step(dt_s, i, v, temp, valid)
            i_eff = i - f.bias_a
            eta = np.where(i_eff < 0, self.model.coulombic_efficiency(temp), 1.0)
            dq_ah = eta * i_eff * dt_s / 3600.0
            self.capacity.update(dq_ah, f.soc, f.soc_std)
            if self._prev_v is not None and self._prev_i is not None:
                # Modelled change without the ohmic term: prior now minus posterior before
                # (the posterior now has already absorbed part of the measured step).
                prior_v = f.open_circuit_prior_v
                prev_model = self._prev_model_v if self._prev_model_v is not None else prior_v
                _, r0_tab = self._model_parts(temp)
                self.resistance.update(
                    dt_s,
                    i - self._prev_i,
                    v - self._prev_v,
                    prior_v - prev_model,
                    r0_tab,
                    f.capacity_ah,
                )
            if self.adapt:
                f.capacity_ah = self.capacity.capacity_ah.copy()
                f.r_scale = self.resistance.scale.copy()
        model_v, r0_tab = self._model_parts(temp)
        self._prev_v = v.copy()
        self._prev_i = i.copy()
        self._prev_model_v = model_v
        nominal = self.model.params.capacity_ah
        return EstimateStep(
            soc=f.soc.copy(),
            soc_std=f.soc_std.copy(),
            capacity_ah=self.capacity.capacity_ah.copy(),
            capacity_std_ah=self.capacity.capacity_std_ah.copy(),
            soh=self.capacity.capacity_ah / nominal,
            resistance_ohm=self.resistance.scale * r0_tab,
            resistance_std_ohm=self.resistance.scale_std * r0_tab,
            bias_a=f.bias_a.copy(),
        )

    def power_limits(
        self,
        horizon_s: float,
        temperature_degc: FloatArray | float,
        *,
        soc_sigma_margin: float = 1.0,
        max_discharge_current_a: FloatArray | float = np.inf,
        max_charge_current_a: FloatArray | float = np.inf,
    ) -> PowerLimits:
        """State of power of every cell from the present estimates (see :func:`power_limits`).

        The SoC is taken ``soc_sigma_margin`` standard deviations towards the limit (lower for
        discharge, higher for charge) and the resistance at its estimate.

        Parameters
        ----------
        horizon_s : float
            Horizon [s].
        temperature_degc : numpy.ndarray or float
            Temperature [degC].
        soc_sigma_margin : float
            SoC margin in standard deviations [1].
        max_discharge_current_a, max_charge_current_a : numpy.ndarray or float
            Current limits [A].

        Returns
        -------
        PowerLimits
            Discharge limits from the lower SoC, charge limits from the upper one.
        """
        f = self.filter
        temp = np.broadcast_to(np.asarray(temperature_degc, dtype=np.float64), (f.n_cells,))
        common = {
            "capacity_ah": f.capacity_ah,
            "r_scale": self.resistance.scale,
            "max_discharge_current_a": max_discharge_current_a,
            "max_charge_current_a": max_charge_current_a,
        }
        lo = power_limits(
            self.model,
            f.soc - soc_sigma_margin * f.soc_std,
            f.v_rc,
            f.hysteresis,
            temp,
            horizon_s,
            directions=("discharge",),
            **common,  # type: ignore[arg-type]
        )
        hi = power_limits(
            self.model,
            f.soc + soc_sigma_margin * f.soc_std,
            f.v_rc,
            f.hysteresis,
            temp,
            horizon_s,
            directions=("charge",),
            **common,  # type: ignore[arg-type]
        )
        return PowerLimits(
            horizon_s=lo.horizon_s,
            discharge_current_a=lo.discharge_current_a,
            discharge_power_w=lo.discharge_power_w,
            discharge_voltage_v=lo.discharge_voltage_v,
            discharge_resistance_ohm=lo.discharge_resistance_ohm,
            charge_current_a=hi.charge_current_a,
            charge_power_w=hi.charge_power_w,
            charge_voltage_v=hi.charge_voltage_v,
            charge_resistance_ohm=hi.charge_resistance_ohm,
        )


# -- replaying a log -------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """Estimates along a log of N cells (arrays ``(n_samples, N)`` unless noted).

    Parameters
    ----------
    time_s : numpy.ndarray
        Sample times [s], shape ``(n_samples,)``.
    soc, soc_std : numpy.ndarray
        SoC and its std [fraction].
    capacity_ah, capacity_std_ah : numpy.ndarray
        Capacity and its std [Ah].
    soh : numpy.ndarray
        Capacity over the parameter set's [fraction].
    resistance_ohm, resistance_std_ohm : numpy.ndarray
        Series resistance and its std [ohm].
    bias_a : numpy.ndarray
        Current-offset estimate [A].
    power : dict
        ``{"discharge_10s_w": ..., "charge_10s_w": ..., ...}`` when requested, else empty.
    """

    time_s: FloatArray
    soc: FloatArray
    soc_std: FloatArray
    capacity_ah: FloatArray
    capacity_std_ah: FloatArray
    soh: FloatArray
    resistance_ohm: FloatArray
    resistance_std_ohm: FloatArray
    bias_a: FloatArray
    power: dict[str, FloatArray] = field(default_factory=dict)


def replay(
    model: CellModel,
    time_s: FloatArray,
    current_a: FloatArray,
    voltage_v: FloatArray,
    temperature_degc: FloatArray,
    *,
    config: KalmanConfig | None = None,
    initial_soc: FloatArray | float | None = None,
    initial_soc_std: float = 0.2,
    power_horizons_s: tuple[float, ...] = (),
    adapt: bool = False,
) -> Replay:
    """Run :class:`BatteryStateEstimator` along a log.

    The current of sample ``k`` is held over ``(t[k-1], t[k]]`` and the voltage is read at
    ``t[k]``; the first sample initialises the filter (at ``initial_soc``, or from its
    voltage).

    Parameters
    ----------
    model : CellModel
        Cell model.
    time_s : numpy.ndarray
        Time [s], shape ``(n,)``, non-decreasing.
    current_a, voltage_v, temperature_degc : numpy.ndarray
        Current [A] (positive = discharge), voltage [V], temperature [degC] (NaN: 25 degC),
        shape ``(n, N)``.
    config : KalmanConfig, optional
        Filter tuning.
    initial_soc : numpy.ndarray or float, optional
        Initial SoC [fraction]; default from the first voltage.
    initial_soc_std : float
        Std of ``initial_soc`` [fraction].
    power_horizons_s : tuple of float
        Horizons for the state of power per sample (e.g. ``(10, 60)``); empty: none.
    adapt : bool
        Feed capacity and resistance estimates back into the filter.

    Returns
    -------
    Replay
        The estimates per sample.
    """
    t = np.asarray(time_s, dtype=np.float64)
    n = t.size
    i_all = np.asarray(current_a, dtype=np.float64).reshape(n, -1)
    n_cells = i_all.shape[1]
    v_all = np.asarray(voltage_v, dtype=np.float64).reshape(n, n_cells)
    temp_all = np.asarray(temperature_degc, dtype=np.float64).reshape(n, n_cells)
    est = BatteryStateEstimator(model, n_cells, config, adapt=adapt)
    names = ("soc", "soc_std", "capacity_ah", "capacity_std_ah", "soh")
    cols = {k: np.empty((n, n_cells)) for k in names}
    extra = {k: np.empty((n, n_cells)) for k in ("resistance_ohm", "resistance_std_ohm", "bias_a")}
    power = {
        f"{d}_{h:g}s_w": np.empty((n, n_cells))
        for h in power_horizons_s
        for d in ("discharge", "charge")
    }
    for k in range(n):
        dt = float(t[k] - t[k - 1]) if k else 0.0
        res = est.step(
            dt,
            i_all[k],
            v_all[k],
            temp_all[k],
            initial_soc=initial_soc,
            initial_soc_std=initial_soc_std,
        )
        cols["soc"][k] = res.soc
        cols["soc_std"][k] = res.soc_std
        cols["capacity_ah"][k] = res.capacity_ah
        cols["capacity_std_ah"][k] = res.capacity_std_ah
        cols["soh"][k] = res.soh
        extra["resistance_ohm"][k] = res.resistance_ohm
        extra["resistance_std_ohm"][k] = res.resistance_std_ohm
        extra["bias_a"][k] = res.bias_a
        for h in power_horizons_s:
            lim = est.power_limits(h, np.where(np.isfinite(temp_all[k]), temp_all[k], 25.0))
            power[f"discharge_{h:g}s_w"][k] = lim.discharge_power_w
            power[f"charge_{h:g}s_w"][k] = lim.charge_power_w
    return Replay(time_s=t, power=power, **cols, **extra)
