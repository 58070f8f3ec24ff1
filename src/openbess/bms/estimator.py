"""SoC and capacity estimation: coulomb counting with OCV-at-rest correction (vectorised).

This is the baseline estimator of the BMS: it wakes up from the first voltage reading (as a BMS
does after a power cycle), counts charge per cell, and corrects each cell's SoC from its voltage
after a rest, where the OCV curve is steep enough to be informative (the flat middle of an LFP
curve is not). Two rest corrections far enough apart give a capacity estimate (charge throughput
divided by the SoC difference), from which the SoH follows.

Pack-level figures follow users' expectations: the usable SoC of a series string is limited by
its weakest cells, ``z_min / (z_min + 1 - z_max)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
