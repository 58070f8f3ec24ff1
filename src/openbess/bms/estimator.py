"""The BMS's state estimation: the sigma-point filter on every cell, and baselines.

:class:`OnlineEstimator` is what the BMS runs each cycle: the per-cell sigma-point Kalman
filter of :mod:`openbess.bms.kalman` (bias-compensated, compiled, updated in blocks with an
exact coulomb count in between on large packs), capacity and resistance state of health with
their uncertainty, the pack's usable SoC and energy between its weakest cells' limits, and the
state of power for the next 10 s and 60 s.

:class:`SocEstimator` is the baseline it is compared with (``benchmarks/soc_estimation.py``):
coulomb counting that wakes up from the first voltage reading (as a BMS does after a power
cycle) and corrects each cell's SoC from its voltage after a rest, where the OCV curve is steep
enough to be informative (the flat middle of an LFP curve is not). Two rest corrections far
enough apart give a capacity estimate (charge throughput divided by the SoC difference).

Pack-level figures follow users' expectations: the usable SoC of a series string is limited by
its weakest cells, ``z_min / (z_min + 1 - z_max)`` for equal capacities (:func:`string_soc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from openbess.bms.kalman import (
    CapacityEstimator,
    KalmanConfig,
    ResistanceEstimator,
    SocKalmanFilter,
    _sop_pack_kernel,
    _sop_screen_kernel,
    jit,
)
from openbess.cell.ecm import CellModel

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class EstimatorConfig:
    """Tuning of :class:`SocEstimator`.

    Parameters
    ----------
    rest_current_c : float
        A cell is at rest when ``|i| < rest_current_c * Q`` [C-rate].
    rest_time_s : float
        Rest needed before an OCV correction [s].
    min_ocv_slope_v : float
        Minimum ``dOCV/dSoC`` [V per unit SoC] for the OCV to be trusted.
    correction_gain : float
        Fraction of the OCV-vs-count difference applied per correction [1].
    min_capacity_delta_soc : float
        Minimum SoC difference between two corrections to update the capacity [fraction].
    capacity_gain : float
        Weight of a new capacity measurement in the running estimate [1].
    """

    rest_current_c: float = 0.01
    rest_time_s: float = 1800.0
    min_ocv_slope_v: float = 0.3
    correction_gain: float = 0.7
    min_capacity_delta_soc: float = 0.3
    capacity_gain: float = 0.2


class SocEstimator:
    """Per-cell SoC by coulomb counting, corrected by OCV at rest; capacity from throughput.

    Parameters
    ----------
    model : CellModel
        Cell model of the nominal parameter set (scaled to the cell capacity).
    n_cells : int
        Number of series cells.
    config : EstimatorConfig
        Tuning.
    """

    def __init__(self, model: CellModel, n_cells: int, config: EstimatorConfig | None = None):
        self.model = model
        self.config = config or EstimatorConfig()
        self.capacity_nominal_ah = model.params.capacity_ah
        self.capacity_ah = np.full(n_cells, self.capacity_nominal_ah)
        self.soc = np.full(n_cells, np.nan)
        self.rest_s = np.zeros(n_cells)
        self._anchor_soc = np.full(n_cells, np.nan)
        self._anchor_ah = np.zeros(n_cells)
        self.throughput_ah = np.zeros(n_cells)
        self.net_ah = np.zeros(n_cells)
        self.corrections = 0
        # Model states tracked alongside the count, so that a rest voltage can be corrected for
        # the polarisation still decaying (RC pairs) and for the hysteresis actually built up.
        self.v_rc = np.zeros((model.params.n_rc, n_cells))
        self.hysteresis = np.zeros(n_cells)
        self._rc_r_ohm = np.zeros((model.params.n_rc, 1))
        self._rc_tau_s = np.ones((model.params.n_rc, 1))
        self._eta = 1.0
        self._refresh_in_s = 0.0
        self._decay_dt_s = math.nan
        self._decay = np.ones((model.params.n_rc, 1))
        grid = model.params.soc_grid
        self._grid = grid
        slope = np.gradient(model.ocv_ref_v, grid)
        self._slope = slope
        # The SoC array last seen all finite (``update`` replaces ``soc`` with a new array each
        # cycle and checks it), so ``initialised`` is not recomputed over every cell each time.
        self._finite_soc: FloatArray | None = None

    @property
    def initialised(self) -> bool:
        """True once the first voltage reading set the SoC (every cell's SoC is finite)."""
        if self.soc is self._finite_soc:
            return True
        if bool(np.all(np.isfinite(self.soc))):
            self._finite_soc = self.soc
            return True
        return False

    def _ocv_to_soc(
        self,
        voltage_v: FloatArray,
        temperature_degc: FloatArray,
        compensate: bool = False,
    ) -> FloatArray:
        """Invert the OCV; with ``compensate``, first remove the modelled RC and hysteresis."""
        p = self.model.params
        j = int(np.argmin(np.abs(p.temperature_grid_degc - float(np.nanmean(temperature_degc)))))
        ocv = np.maximum.accumulate(p.ocv_v[j])
        if not compensate:
            # Waking up: the hysteresis state is unknown; the mean curve is the best guess.
            out: FloatArray = np.interp(voltage_v, ocv, self._grid)
            return out
        v = voltage_v + self.v_rc.sum(axis=0)
        z = np.interp(v, ocv, self._grid)
        for _ in range(2):  # M depends on SoC: two fixed-point passes are plenty
            m = np.interp(z, self._grid, p.hysteresis_v[j])
            z = np.interp(v - m * self.hysteresis, ocv, self._grid)
        out_z: FloatArray = z
        return out_z

    def _track_model(
        self, i: FloatArray | float, dt_s: float, temperature_degc: FloatArray
    ) -> None:
        """Advance the RC voltages and the hysteresis state like the ECM does (zero-order hold)."""
        self._refresh_in_s -= dt_s
        if self._refresh_in_s <= 0.0:
            # Table values at the pack's mean state; they vary slowly, so every 15 minutes.
            t_mean = np.array([float(np.nanmean(temperature_degc))])
            z_mean = np.array([float(np.nanmean(self.soc))])
            tab = self.model.tables(z_mean, t_mean)
            self._rc_r_ohm = tab[3:, :1]
            self._rc_tau_s = self.model.rc_tau(t_mean)
            self._eta = float(self.model.coulombic_efficiency(t_mean)[0])
            self._refresh_in_s = 900.0
            self._decay_dt_s = math.nan
        if dt_s != self._decay_dt_s:
            self._decay = np.exp(-dt_s / self._rc_tau_s)
            self._decay_dt_s = dt_s
        decay = self._decay
        v_inf = self._rc_r_ohm * i
        self.v_rc = v_inf + (self.v_rc - v_inf) * decay
        gamma_dt = self.model.params.hysteresis_rate * dt_s / 3600.0
        if isinstance(i, float):
            if i == 0.0:
                return  # no current: the hysteresis state holds
            rate = abs(i) * (self._eta if i < 0.0 else 1.0) * gamma_dt
            h_one = -1.0 if i > 0.0 else 1.0
            self.hysteresis = h_one + (self.hysteresis - h_one) * np.exp(-rate / self.capacity_ah)
            return
        eta = np.where(i < 0.0, self._eta, 1.0)
        x = np.abs(eta * i) * gamma_dt / self.capacity_ah
        h_inf = -np.sign(i)
        self.hysteresis = h_inf + (self.hysteresis - h_inf) * np.exp(-x)

    def update(
        self,
        dt_s: float,
        cell_current_a: FloatArray | float,
        cell_voltage_v: FloatArray,
        voltage_valid: BoolArray,
        cell_temperature_degc: FloatArray,
    ) -> FloatArray:
        """Advance the estimate by one BMS cycle.

        Parameters
        ----------
        dt_s : float
            Time since the last update [s].
        cell_current_a : numpy.ndarray or float
            Current through each cell [A], positive = discharge (its string's current). A
            float means every cell carries that current (one string); same results as an
            array filled with it, with fewer array operations.
        cell_voltage_v : numpy.ndarray
            Measured cell voltages [V].
        voltage_valid : numpy.ndarray of bool
            Validity of each voltage.
        cell_temperature_degc : numpy.ndarray
            Temperature of each cell [degC] (nearest valid sensor).

        Returns
        -------
        numpy.ndarray
            SoC of each cell [fraction].
        """
        cfg = self.config
        i: FloatArray | float
        if not isinstance(cell_current_a, float):
            i = np.asarray(cell_current_a)
            if i.ndim == 0:  # a 0-d array is one current for every cell too
                i = float(i)
        else:
            i = cell_current_a
        if isinstance(i, float):
            i = i if math.isfinite(i) else _nan_to_num(i)
            charging = i < 0.0
        else:
            if not math.isfinite(float(np.add.reduce(i))):  # NaN/inf somewhere (rare)
                i = np.nan_to_num(i)
            charging = float(np.minimum.reduce(i)) < 0.0
        if not self.initialised:
            fresh = ~np.isfinite(self.soc) & voltage_valid
            if np.any(fresh):
                self.soc[fresh] = self._ocv_to_soc(cell_voltage_v, cell_temperature_degc)[fresh]
                self._anchor_soc[fresh] = self.soc[fresh]
            return self.soc
        self._track_model(i, dt_s, cell_temperature_degc)
        dq_ah: FloatArray | float
        if charging:  # coulombic efficiency where a cell charges
            eta = self.model.coulombic_efficiency(cell_temperature_degc)
            if not isinstance(i, float):
                eta = np.where(i < 0, eta, 1.0)
            dq_ah = eta * i * dt_s / 3600.0
        else:  # eta = 1 everywhere, and 1.0 * i == i exactly
            dq_ah = i * dt_s / 3600.0
        # clip to [0, 1] (maximum/minimum propagate NaN like numpy.clip).
        soc = self.soc - dq_ah / self.capacity_ah
        np.maximum(soc, 0.0, out=soc)
        np.minimum(soc, 1.0, out=soc)
        self.soc = soc
        abs_i = abs(i) if isinstance(i, float) else np.abs(i)
        self.throughput_ah += abs_i * dt_s / 3600.0
        self.net_ah += dq_ah
        moving = abs_i >= cfg.rest_current_c * self.capacity_ah
        self.rest_s = np.where(moving, 0.0, self.rest_s + dt_s)
        if float(np.fmax.reduce(self.rest_s)) >= cfg.rest_time_s:  # fmax skips NaN
            due = (self.rest_s >= cfg.rest_time_s) & voltage_valid
            if np.any(due):
                self._correct(due, cell_voltage_v, cell_temperature_degc)
                self.rest_s[due] = 0.0
        # Values lie in [0, 1] or are NaN: the sum is finite exactly when every cell is.
        if math.isfinite(float(np.add.reduce(self.soc))):
            self._finite_soc = self.soc
        return self.soc

    def _correct(self, due: BoolArray, voltage_v: FloatArray, temperature_degc: FloatArray) -> None:
        cfg = self.config
        z_ocv = self._ocv_to_soc(voltage_v, temperature_degc, compensate=True)
        slope = np.interp(z_ocv, self._grid, self._slope)
        ok = due & (slope >= cfg.min_ocv_slope_v)
        if not np.any(ok):
            return
        self.corrections += 1
        # Capacity: charge moved since the last anchor over the SoC moved (by OCV).
        dz = self._anchor_soc - z_ocv
        dq = self.net_ah - self._anchor_ah
        cap_ok = ok & np.isfinite(dz) & (np.abs(dz) >= cfg.min_capacity_delta_soc)
        if np.any(cap_ok):
            meas = np.clip(dq[cap_ok] / dz[cap_ok], 0.3 * self.capacity_nominal_ah, None)
            meas = np.minimum(meas, 1.2 * self.capacity_nominal_ah)
            self.capacity_ah[cap_ok] += cfg.capacity_gain * (meas - self.capacity_ah[cap_ok])
        self.soc[ok] += cfg.correction_gain * (z_ocv[ok] - self.soc[ok])
        self._anchor_soc[ok] = z_ocv[ok]
        self._anchor_ah[ok] = self.net_ah[ok]

    @property
    def soh(self) -> float:
        """Capacity state of health of the weakest cell [fraction]."""
        return float(np.minimum.reduce(self.capacity_ah) / self.capacity_nominal_ah)


def _nan_to_num(x: float) -> float:
    """:func:`numpy.nan_to_num` of one float."""
    return float(np.nan_to_num(x))


def _sign(x: FloatArray | float) -> FloatArray | float:
    """:func:`numpy.sign`; on a finite float without numpy (0 for both zeros)."""
    if isinstance(x, float):
        return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)
    out: FloatArray = np.sign(x)
    return out


def string_soc(soc: FloatArray, n_strings: int) -> FloatArray:
    """Usable SoC of each series string, limited by its weakest cells.

    Parameters
    ----------
    soc : numpy.ndarray
        Cell SoC [fraction], shape ``(n_cells,)``, cells ordered string by string.
    n_strings : int
        Number of strings (``n_cells`` must be a multiple of it).

    Returns
    -------
    numpy.ndarray
        ``z_min / (z_min + 1 - z_max)`` per string [fraction].
    """
    per = soc.reshape(n_strings, -1)
    zmin = per.min(axis=1)
    zmax = per.max(axis=1)
    denom = zmin + 1.0 - zmax
    out: FloatArray = np.where(denom > 0, zmin / np.where(denom > 0, denom, 1.0), 0.0)
    return out


# -- the BMS's online estimator: the sigma-point filter on every cell -------------------------


@dataclass(frozen=True)
class OnlineEstimatorConfig:
    """Tuning of :class:`OnlineEstimator`.

    Parameters
    ----------
    kalman : KalmanConfig
        The per-cell filter (sigma-point, current-offset state; see
        :class:`openbess.bms.kalman.KalmanConfig`).
    max_filter_cells : int
        Most cells given a full filter update per cycle. A larger pack is cut into blocks of
        at most this many cells (whole modules), updated in turn, one per cycle; every cycle,
        every cell's SoC moves by the exact coulomb count of the cycle in between, so only the
        voltage correction is decimated.
    filter_period_s : float
        Shortest time between two full updates of a cell [s]: with faster cycles, the next
        block waits (the count goes on every cycle). A cell is updated every
        ``max(filter_period_s, n_blocks * cycle)``.
    health_period_s : float
        Period of the capacity estimator's look at the SoC estimates [s].
    sop_horizons_s : tuple of float
        Horizons of the state of power [s].
    sop_soc_sigma : float
        The state of power takes each cell's SoC this many standard deviations towards the
        limit [1].
    resistance_min_step_c : float
        Smallest current step (as a C-rate) used to measure the series resistance [1/h].
    resistance_max_dt_s : float
        Largest interval across which a current step is used [s].
    """

    kalman: KalmanConfig = field(default_factory=KalmanConfig)
    max_filter_cells: int = 16384
    filter_period_s: float = 5.0
    health_period_s: float = 300.0
    sop_horizons_s: tuple[float, ...] = (10.0, 60.0)
    sop_soc_sigma: float = 1.0
    resistance_min_step_c: float = 0.3
    resistance_max_dt_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_filter_cells < 1:
            raise ValueError(f"max_filter_cells must be >= 1, got {self.max_filter_cells}")
        if not (math.isfinite(self.filter_period_s) and self.filter_period_s >= 0):
            raise ValueError(f"filter_period_s must be >= 0, got {self.filter_period_s}")
        if not (math.isfinite(self.health_period_s) and self.health_period_s > 0):
            raise ValueError(f"health_period_s must be > 0, got {self.health_period_s}")
        if not self.sop_horizons_s or any(
            not (math.isfinite(h) and h > 0) for h in self.sop_horizons_s
        ):
            raise ValueError(f"sop_horizons_s must be > 0, got {self.sop_horizons_s}")
        if not (math.isfinite(self.sop_soc_sigma) and self.sop_soc_sigma >= 0):
            raise ValueError(f"sop_soc_sigma must be >= 0, got {self.sop_soc_sigma}")


@dataclass(frozen=True)
class PackEstimate:
    """Pack-level estimates of one cycle (what the Telemetry reports).

    Parameters
    ----------
    soc : float
        Usable SoC [fraction]: the charge the weakest cell of each string can still give over
        what the strings can give plus take, ``sum_s D_s / sum_s (D_s + C_s)`` with ``D_s =
        min_i z_i Q_i`` and ``C_s = min_i (1 - z_i) Q_i``.
    soc_std : float
        Its standard deviation [fraction] (from the limiting cells' SoC std).
    soc_cell_min, soc_cell_max : float
        Lowest and highest cell SoC [fraction].
    soc_cell_std_max : float
        Largest cell SoC std [fraction].
    energy_available_wh : float
        SoE: open-circuit energy the pack can give until its weakest cells are empty [Wh].
    energy_chargeable_wh : float
        Open-circuit energy the pack can take until its fullest cells are full [Wh].
    capacity_ah : float
        Usable charge capacity, ``sum_s (D_s + C_s)`` [Ah].
    soh : float
        Capacity state of health of the weakest cell [fraction].
    soh_std : float
        Its standard deviation [fraction].
    resistance_ohm, resistance_std_ohm : float
        DC resistance of the pack (series R0 of each string, strings in parallel) and its
        std [ohm].
    resistance_growth : float
        That resistance over the same from the parameter set's tables [1] (resistance SoH).
    current_offset_a, current_offset_std_a : float
        Current-sensor offset summed over the strings, and its std [A].
    """

    soc: float
    soc_std: float
    soc_cell_min: float
    soc_cell_max: float
    soc_cell_std_max: float
    energy_available_wh: float
    energy_chargeable_wh: float
    capacity_ah: float
    soh: float
    soh_std: float
    resistance_ohm: float
    resistance_std_ohm: float
    resistance_growth: float
    current_offset_a: float
    current_offset_std_a: float


#: Entries of the result of :func:`_pack_kernel`.
(
    _K_SOC,
    _K_SOC_STD,
    _K_ZMIN,
    _K_ZMAX,
    _K_STD_MAX,
    _K_EDIS,
    _K_ECHG,
    _K_CAP,
    _K_R,
    _K_R_STD,
    _K_R_GROWTH,
    _K_OFFSET,
    _K_OFFSET_STD,
) = range(13)


@jit
def _energy_wh(coef: FloatArray, n_soc: int, soc: float) -> float:
    """``int_0^z ocv_ref`` [V * fraction] (times the capacity [Ah]: Wh)."""
    top = n_soc - 1.0
    x = min(max(soc * top, 0.0), top)
    seg = int(x)
    f = x - seg
    value: float = (coef[2, seg] * f + coef[1, seg]) * f + coef[0, seg]
    return value


@jit
def _pack_kernel(
    soc: FloatArray,
    soc_var: FloatArray,
    capacity_ah: FloatArray,
    n_series: int,
    energy_coef: FloatArray,
    n_soc: int,
    r0_table_ohm: FloatArray,
    r_scale: FloatArray,
    r_scale_std: FloatArray,
    bias_a: FloatArray,
    bias_var: FloatArray,
    per_string: FloatArray,
    out: FloatArray,
) -> None:
    """Pack figures from the cell estimates (see :class:`PackEstimate`), into ``out``.

    Per string ``s`` (``per_string[s]``): usable discharge and charge charge ``D_s = min z Q``,
    ``C_s = min (1 - z) Q`` [Ah], the open-circuit energy of every cell between its SoC and
    the SoC where the string's limiting cell is empty / full [Wh], the two limiting cells, the
    sum of R0 estimates, their variance and the table sum, and the inverse-variance sums of the
    offset estimates. Then the pack: usable SoC and its std (first order in the limiting
    cells' SoC), SoE, strings' R0 in parallel, the offsets summed over the strings.
    """
    n_str = per_string.shape[0]
    has_bias = bias_a.shape[0] > 0
    z_min_all = math.inf
    z_max_all = -math.inf
    var_max = 0.0
    for s in range(n_str):
        lo = s * n_series
        hi = lo + n_series
        dis = math.inf
        chg = math.inf
        i_dis = lo
        i_chg = lo
        r_sum = 0.0
        r_var = 0.0
        r_tab = 0.0
        w_sum = 0.0
        wb_sum = 0.0
        for c in range(lo, hi):
            z = soc[c]
            q = capacity_ah[c]
            d = z * q
            if d < dis:
                dis = d
                i_dis = c
            e = (1.0 - z) * q
            if e < chg:
                chg = e
                i_chg = c
            z_min_all = min(z_min_all, z)
            z_max_all = max(z_max_all, z)
            var_max = max(var_max, soc_var[c])
            r0 = r0_table_ohm[c]
            r_sum += r_scale[c] * r0
            r_var += (r_scale_std[c] * r0) ** 2
            r_tab += r0
            if has_bias:
                w = 1.0 / max(bias_var[c], 1e-30)
                w_sum += w
                wb_sum += w * bias_a[c]
        e_dis = 0.0
        e_chg = 0.0
        for c in range(lo, hi):
            z = soc[c]
            q = capacity_ah[c]
            e0 = _energy_wh(energy_coef, n_soc, z)
            e_dis += (e0 - _energy_wh(energy_coef, n_soc, z - dis / q)) * q
            e_chg += (_energy_wh(energy_coef, n_soc, z + chg / q) - e0) * q
        row = per_string[s]
        row[0] = dis
        row[1] = chg
        row[2] = e_dis
        row[3] = e_chg
        row[4] = i_dis
        row[5] = i_chg
        row[6] = r_sum
        row[7] = r_var
        row[8] = r_tab
        row[9] = w_sum
        row[10] = wb_sum
    d_tot = 0.0
    c_tot = 0.0
    e_dis_tot = 0.0
    e_chg_tot = 0.0
    g_r = 0.0
    g_t = 0.0
    offset = 0.0
    offset_var = 0.0
    for s in range(n_str):
        row = per_string[s]
        d_tot += row[0]
        c_tot += row[1]
        e_dis_tot += row[2]
        e_chg_tot += row[3]
        g_r += 1.0 / max(row[6], 1e-12)
        g_t += 1.0 / max(row[8], 1e-12)
        if has_bias:
            offset += row[10] / row[9]
            offset_var += 1.0 / row[9]
    total = d_tot + c_tot
    soc_var_pack = 0.0
    r_pack = 1.0 / g_r
    r_var_pack = 0.0
    for s in range(n_str):
        row = per_string[s]
        a = int(row[4])
        b = int(row[5])
        if total > 0:
            g_dis = capacity_ah[a] * c_tot / (total * total)
            g_chg = capacity_ah[b] * d_tot / (total * total)
            if a == b:
                soc_var_pack += (g_dis + g_chg) ** 2 * soc_var[a]
            else:
                soc_var_pack += g_dis**2 * soc_var[a] + g_chg**2 * soc_var[b]
        k = r_pack / max(row[6], 1e-12)
        r_var_pack += k**4 * row[7]
    out[_K_SOC] = d_tot / total if total > 0 else 0.0
    out[_K_SOC_STD] = math.sqrt(max(soc_var_pack, 0.0))
    out[_K_ZMIN] = z_min_all
    out[_K_ZMAX] = z_max_all
    out[_K_STD_MAX] = math.sqrt(max(var_max, 0.0))
    out[_K_EDIS] = e_dis_tot
    out[_K_ECHG] = e_chg_tot
    out[_K_CAP] = total
    out[_K_R] = r_pack
    out[_K_R_STD] = math.sqrt(r_var_pack)
    out[_K_R_GROWTH] = r_pack * g_t
    out[_K_OFFSET] = offset
    out[_K_OFFSET_STD] = math.sqrt(offset_var)


class OnlineEstimator:
    """The BMS's state estimation: SoC, SoH and SoP of every cell, and the pack figures.

    Per cell: the sigma-point Kalman filter with the current-offset state
    (:class:`openbess.bms.kalman.SocKalmanFilter`, compiled), capacity from the charge counted
    between confident SoC estimates (:class:`~openbess.bms.kalman.CapacityEstimator`) and R0
    from current steps (:class:`~openbess.bms.kalman.ResistanceEstimator`). Per pack: usable
    SoC and energy between the weakest cells' limits, capacity and resistance SoH with their
    uncertainty, and the power available for each horizon of ``sop_horizons_s``.

    Cells are ordered string by string; each string has one current sensor and its modules
    one temperature each.

    Parameters
    ----------
    model : CellModel
        Model of one series cell.
    n_strings, n_series : int
        Strings in parallel, cells in series per string.
    cells_per_module : int
        Cells sharing one temperature (a module).
    config : OnlineEstimatorConfig, optional
        Tuning.
    """

    def __init__(
        self,
        model: CellModel,
        n_strings: int,
        n_series: int,
        cells_per_module: int,
        config: OnlineEstimatorConfig | None = None,
    ) -> None:
        if n_strings < 1 or n_series < 1 or cells_per_module < 1 or n_series % cells_per_module:
            raise ValueError(
                f"bad layout: {n_strings} strings of {n_series} cells, modules of "
                f"{cells_per_module}"
            )
        self.model = model
        self.config = cfg = config or OnlineEstimatorConfig()
        self.n_strings = n_strings
        self.n_series = n_series
        self.cells_per_module = cells_per_module
        n = n_strings * n_series
        self.n_cells = n
        self.filter = SocKalmanFilter(model, n, cfg.kalman)
        k = cfg.kalman
        cap = self.filter.capacity_ah
        self.capacity_nominal_ah = float(model.params.capacity_ah)
        #: Capacity of every cell (throughput between confident SoC estimates).
        self.capacity = CapacityEstimator(
            cap.copy(),
            np.maximum(k.capacity_error, 0.02) * cap,
            current_gain_error=max(k.current_gain_error, 1e-4),
        )
        #: Series resistance of every cell, as a multiplier of the R0 table.
        self.resistance = ResistanceEstimator(
            n,
            min_step_c=cfg.resistance_min_step_c,
            max_dt_s=cfg.resistance_max_dt_s,
            voltage_noise_v=k.voltage_noise_v,
        )
        # Blocks of whole modules, at most max_filter_cells each (one or more per cycle).
        size = max(cells_per_module, cfg.max_filter_cells // cells_per_module * cells_per_module)
        self.block_start = np.arange(0, n, size, dtype=np.intp)
        self.block_stop = np.minimum(self.block_start + size, n)
        #: Time of each block's last full update [s, Unix UTC].
        self.block_time_s = np.full(self.block_start.size, math.nan)
        self._next_block = 0
        self._charge_at_health_ah = np.zeros(n)
        self._next_health_s = math.inf
        self._prev_time_s = math.nan
        self._prev_v = np.full(n, math.nan)
        self._prev_i = np.full(n_strings, math.nan)
        ocv = model.ocv_ref_v
        dz = 1.0 / (ocv.size - 1)
        cum = np.concatenate(([0.0], np.cumsum(0.5 * (ocv[1:] + ocv[:-1]) * dz)))
        self._energy_coef = np.ascontiguousarray(
            np.stack([cum, ocv * dz, 0.5 * np.append(np.diff(ocv), 0.0) * dz])
        )
        self._pack_out = np.zeros((n_strings, 11))
        self._pack_result = np.zeros(13)
        n_h = len(cfg.sop_horizons_s)
        self.sop_horizons_s = np.asarray(cfg.sop_horizons_s, dtype=np.float64)
        self._oc_h = np.zeros((2, n_h, n))
        self._r_h = np.ones((2, n_h, n))
        self._lin_a = np.zeros((2, n_h, n))
        names = [f"sop_{d}_{h:g}s" for d in ("discharge", "charge") for h in cfg.sop_horizons_s]
        #: Telemetry keys of the state of power: powers then currents, each in the order of
        #: ``_sop_w.ravel()``.
        self._sop_keys = [f"{k}_w" for k in names] + [f"{k}_a" for k in names]
        self._sop_order = [int(h) for h in np.argsort(self.sop_horizons_s)]
        self._sop_w = np.zeros((2, n_h))
        self._sop_a = np.zeros((2, n_h))
        self._string_cap = np.zeros(2)
        self._soh = 1.0
        self._empty = np.zeros(0)
        self._soh_std = float(np.max(self.capacity.capacity_std_ah)) / self.capacity_nominal_ah
        self._mod_temp = np.full(n // cells_per_module, 25.0)

    # -- state -------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        """True once the first voltage reading set the SoC."""
        return self.filter.initialised

    @property
    def soc(self) -> FloatArray:
        """SoC of every cell [fraction]."""
        return self.filter.soc

    @property
    def soc_std(self) -> FloatArray:
        """Standard deviation of every cell's SoC [fraction]."""
        return self.filter.soc_std

    @property
    def capacity_ah(self) -> FloatArray:
        """Capacity estimate of every cell [Ah]."""
        return self.capacity.capacity_ah

    @property
    def soh(self) -> float:
        """Capacity state of health of the weakest cell [fraction]."""
        return self._soh

    def refresh(self) -> None:
        """Recompute every cell's posterior outputs and state-of-power screening.

        For a state set from outside (tests, a restored snapshot); the cycle keeps them
        current on its own.
        """
        f = self.filter
        cell_t = np.asarray(self._mod_temp, dtype=np.float64).repeat(self.cells_per_module)
        jb, ft = f.tables.temperature_weights(cell_t)
        f.refresh_posterior(slice(None), jb, ft)
        self._screen(0, self.n_cells)

    # -- cycle -------------------------------------------------------------------------------
    def initialise(
        self,
        time_s: float,
        soc: FloatArray | float,
        soc_std: FloatArray | float,
        module_temperature_degc: FloatArray | float = 25.0,
    ) -> None:
        """Start at a known SoC instead of waking up from the first voltage reading.

        Parameters
        ----------
        time_s : float
            Time of the state [s, Unix UTC]; the next :meth:`update` counts from it.
        soc, soc_std : numpy.ndarray or float
            SoC of every cell and its std [fraction].
        module_temperature_degc : numpy.ndarray or float
            Temperature of each module [degC].
        """
        f = self.filter
        f.initialise(soc, soc_std)
        temp = np.broadcast_to(
            np.asarray(module_temperature_degc, dtype=np.float64),
            (self.n_cells // self.cells_per_module,),
        )
        self._mod_temp = np.ascontiguousarray(temp)
        self.refresh()
        self.block_time_s[:] = time_s
        self._next_health_s = time_s
        self._health(time_s)
        self._prev_time_s = time_s
        self._prev_i[:] = math.nan

    def update(
        self,
        time_s: float,
        string_current_a: FloatArray,
        cell_voltage_v: FloatArray,
        voltage_valid: BoolArray,
        module_temperature_degc: FloatArray,
        *,
        zero_current: bool = False,
        bleed_current_a: FloatArray | None = None,
    ) -> FloatArray:
        """Advance every estimate by one BMS cycle.

        Parameters
        ----------
        time_s : float
            Cycle time [s, Unix UTC].
        string_current_a : numpy.ndarray
            Current of each string over the last interval [A], positive = discharge, shape
            ``(n_strings,)`` (non-finite: 0).
        cell_voltage_v : numpy.ndarray
            Cell voltages now [V], shape ``(n_cells,)``.
        voltage_valid : numpy.ndarray of bool
            Validity of each voltage.
        module_temperature_degc : numpy.ndarray
            Temperature of each module [degC], shape ``(n_cells / cells_per_module,)``.
        zero_current : bool
            The true current is known to be zero (contactors open): the measured current is a
            reading of the sensor offset.
        bleed_current_a : numpy.ndarray, optional
            Balancing bleed current of each cell over the last interval [A].

        Returns
        -------
        numpy.ndarray
            SoC of every cell [fraction].
        """
        f = self.filter
        ns, cpm = self.n_series, self.cells_per_module
        i_str = string_current_a
        self._mod_temp = module_temperature_degc
        if not f.initialised:
            if not bool(np.any(voltage_valid)):
                return f.soc
            v = np.where(voltage_valid, cell_voltage_v, math.nan)
            i_cells = np.where(np.isfinite(i_str), i_str, 0.0).repeat(ns)
            f.initialise_from_voltage(v, i_cells, module_temperature_degc.repeat(cpm))
            self.block_time_s[:] = time_s
            self._next_health_s = time_s
            self._screen(0, self.n_cells)
            self._health(time_s)
            self._remember(time_s, i_str, cell_voltage_v)
            return f.soc
        dt_s = time_s - self._prev_time_s
        b = self._next_block
        age_s = time_s - self.block_time_s[b]
        due = age_s >= self.config.filter_period_s - 1e-9
        start, stop = int(self.block_start[b]), int(self.block_stop[b])
        if due and self.block_start.size == 1 and age_s == dt_s:
            # One block updated every cycle: the plain filter step (count and update at once).
            f.step(
                dt_s,
                i_str,
                cell_voltage_v,
                module_temperature_degc,
                voltage_valid,
                current_group=ns,
                temperature_group=cpm,
                leak_current_a=bleed_current_a,
            )
        else:
            if dt_s > 0:
                f.count(
                    dt_s,
                    i_str,
                    module_temperature_degc,
                    current_group=ns,
                    temperature_group=cpm,
                    leak_current_a=bleed_current_a,
                )
            if due:
                f.update_counted(
                    age_s,
                    i_str,
                    cell_voltage_v,
                    module_temperature_degc,
                    voltage_valid,
                    start=start,
                    stop=stop,
                    current_group=ns,
                    temperature_group=cpm,
                )
        if due:
            self.block_time_s[b] = time_s
            self._next_block = (b + 1) % self.block_start.size
            if zero_current:
                f.zero_current_update(i_str, start=start, stop=stop, current_group=ns)
            self._screen(start, stop)
        if 0 < dt_s <= self.config.resistance_max_dt_s:
            self._resistance(dt_s, i_str, cell_voltage_v, start, stop)
        if time_s >= self._next_health_s:
            self._health(time_s)
        self._remember(time_s, i_str, cell_voltage_v)
        return f.soc

    def _remember(self, time_s: float, string_current_a: FloatArray, voltage_v: FloatArray) -> None:
        self._prev_time_s = time_s
        np.copyto(self._prev_i, string_current_a)
        np.copyto(self._prev_v, voltage_v)

    def _resistance(
        self,
        dt_s: float,
        string_current_a: FloatArray,
        voltage_v: FloatArray,
        start: int,
        stop: int,
    ) -> None:
        """R0 of the cells ``start .. stop - 1`` whose string's current stepped since the last
        cycle (one block per cycle, like the filter: R changes slowly).

        The voltage step, corrected for the RC pairs charged over the interval (``sum_k (1 -
        exp(-dt / tau_k)) R_k di``, the cells taken at rest before the step), is ``-R0 di``.
        """
        di = string_current_a - self._prev_i
        threshold = self.config.resistance_min_step_c * self.capacity_nominal_ah
        if not float(np.maximum.reduce(np.abs(di))) >= threshold:  # also NaN: no step
            return
        ns = self.n_series
        block = np.arange(start, stop)
        di_c = di[block // ns]
        cells = block[np.abs(di_c) >= threshold]
        if cells.size == 0:
            return
        di_c = di[cells // ns]
        temp = self._mod_temp.repeat(self.cells_per_module)[cells]
        model = self.model
        tab = model.tables(self.filter.soc[cells], temp)
        decay, _ = model.rc_decay(temp, dt_s)
        rc_fast = ((1.0 - decay) * tab[3:]).sum(axis=0) * self.resistance.scale[cells]
        self.resistance.update(
            dt_s,
            di_c,
            voltage_v[cells] - self._prev_v[cells],
            -rc_fast * di_c,
            tab[2],
            self.capacity.capacity_ah[cells],
            cells=cells,
        )

    def _health(self, time_s: float) -> None:
        """Capacity estimator step (every ``health_period_s``) and the SoH it gives."""
        f = self.filter
        dq = f.charge_ah - self._charge_at_health_ah
        np.copyto(self._charge_at_health_ah, f.charge_ah)
        self.capacity.update(dq, f.soc, f.soc_std)
        cap = self.capacity.capacity_ah
        weakest = int(np.argmin(cap))
        self._soh = float(cap[weakest]) / self.capacity_nominal_ah
        self._soh_std = float(self.capacity.capacity_std_ah[weakest]) / self.capacity_nominal_ah
        self._next_health_s = time_s + self.config.health_period_s

    def _screen(self, start: int, stop: int) -> None:
        """Linear state of power of the cells ``start .. stop - 1`` (after their update)."""
        f = self.filter
        tab = f.tables
        p = self.model.params
        _sop_screen_kernel(
            tab.coef_cells,
            tab.ns,
            tab.temps,
            tab.inv_width,
            tab.tau_rows,
            tab.tau_slopes,
            tab.eta,
            tab.eta_slope,
            f.x,
            f.P,
            self.capacity.capacity_ah,
            self.resistance.scale,
            self._mod_temp,
            self.cells_per_module,
            start,
            stop,
            -1 if f.i_h is None else f.i_h,
            f.n_rc,
            self.sop_horizons_s,
            self.config.sop_soc_sigma,
            p.voltage_min_v,
            p.voltage_max_v,
            0.0,
            1.0,
            self._oc_h,
            self._r_h,
            self._lin_a,
        )

    # -- pack figures ------------------------------------------------------------------------
    def pack(self) -> PackEstimate:
        """Pack-level SoC, SoE, SoH and resistance from the present cell estimates.

        Returns
        -------
        PackEstimate
            The figures (NaN before the first voltage reading).
        """
        f = self.filter
        if not f.initialised:
            nan = math.nan
            return PackEstimate(
                soc=nan,
                soc_std=nan,
                soc_cell_min=nan,
                soc_cell_max=nan,
                soc_cell_std_max=nan,
                energy_available_wh=nan,
                energy_chargeable_wh=nan,
                capacity_ah=nan,
                soh=self._soh,
                soh_std=self._soh_std,
                resistance_ohm=nan,
                resistance_std_ohm=nan,
                resistance_growth=nan,
                current_offset_a=nan,
                current_offset_std_a=nan,
            )
        out = self._pack_result
        ib = f.i_b
        _pack_kernel(
            f.soc,
            f.P[0, 0],
            self.capacity.capacity_ah,
            self.n_series,
            self._energy_coef,
            self._energy_coef.shape[1],
            f.r0_table_ohm,
            self.resistance.scale,
            self.resistance.scale_std,
            f.x[ib] if ib is not None else self._empty,
            f.P[ib, ib] if ib is not None else self._empty,
            self._pack_out,
            out,
        )
        (
            soc,
            soc_std,
            z_min,
            z_max,
            std_max,
            e_dis,
            e_chg,
            capacity,
            r_pack,
            r_std,
            r_growth,
            offset,
            offset_std,
        ) = out.tolist()
        return PackEstimate(
            soc=soc,
            soc_std=soc_std,
            soc_cell_min=z_min,
            soc_cell_max=z_max,
            soc_cell_std_max=std_max,
            energy_available_wh=e_dis,
            energy_chargeable_wh=e_chg,
            capacity_ah=capacity,
            soh=self._soh,
            soh_std=self._soh_std,
            resistance_ohm=r_pack,
            resistance_std_ohm=r_std,
            resistance_growth=r_growth,
            current_offset_a=offset,
            current_offset_std_a=offset_std,
        )

    def power_limits(
        self, charge_current_limit_a: float = math.inf, discharge_current_limit_a: float = math.inf
    ) -> dict[str, float]:
        """State of power of the pack for each horizon (DC, at the pack terminals).

        Each string's current is limited by its weakest cell (voltage window over the
        horizon, SoC window, the cell taken ``sop_soc_sigma`` std towards the limit); the two
        weakest cells of the weakest string are solved exactly
        (:func:`openbess.bms.kalman.power_limits_compiled`), the others linearly; strings in
        parallel share the pack current.

        Parameters
        ----------
        charge_current_limit_a, discharge_current_limit_a : float
            Pack current limits to respect as well [A] (e.g. the BMS's derated limits).

        Returns
        -------
        dict
            ``sop_discharge_10s_w``, ``sop_charge_10s_w``, ... [W] (>= 0) and the matching
            ``..._a`` pack currents [A], for each horizon.
        """
        f = self.filter
        tab = f.tables
        p = self.model.params
        cap = self._string_cap
        cap[0] = max(discharge_current_limit_a, 0.0) / self.n_strings
        cap[1] = max(charge_current_limit_a, 0.0) / self.n_strings
        _sop_pack_kernel(
            tab.coef_cells,
            tab.ns,
            tab.temps,
            tab.inv_width,
            tab.tau_rows,
            tab.tau_slopes,
            tab.eta,
            tab.eta_slope,
            f.x,
            f.P,
            self.capacity.capacity_ah,
            self.resistance.scale,
            self._mod_temp,
            self.cells_per_module,
            -1 if f.i_h is None else f.i_h,
            f.n_rc,
            self.sop_horizons_s,
            self.config.sop_soc_sigma,
            p.voltage_min_v,
            p.voltage_max_v,
            0.0,
            1.0,
            float(p.hysteresis_rate),
            3,
            self._lin_a,
            self._oc_h,
            self._r_h,
            self.n_series,
            cap,
            self._sop_w,
            self._sop_a,
        )
        # What can be held for a longer horizon can be held for a shorter one.
        values: list[float] = []
        for table in (self._sop_w, self._sop_a):
            for row in table.tolist():
                low = math.inf
                for h in self._sop_order:
                    low = min(low, row[h])
                    row[h] = low
                values += row
        return dict(zip(self._sop_keys, values, strict=True))
