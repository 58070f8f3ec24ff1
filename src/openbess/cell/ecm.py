"""Equivalent-circuit cell model: pure, vectorised functions over N cells.

The model (Plett's enhanced self-correcting cell, with temperature-dependent tables)::

    v = ocv(z, T) + M(z, T) * h - R0(z, T) * i - sum_k v_k

    dz/dt   = -eta(i, T) * i / (3600 Q) - i_leak / (3600 Q)
    dv_k/dt = -v_k / tau_k + i * R_k / tau_k
    dh/dt   = -|eta i gamma / (3600 Q)| * (h + sign(i))

with ``i`` the terminal current [A] (positive = discharge), ``z`` the SoC, ``h`` in [-1, 1]
the hysteresis state (+1 after a charge, -1 after a discharge), ``eta`` the coulombic
efficiency (applied on charge only) and ``i_leak`` an internal leakage current (self-discharge,
balancing bleed). Every state update is the exact solution for a current held constant over the
step (zero-order hold), so large steps (60 s) stay accurate and stable.

Energy bookkeeping is exact by construction: the chemical energy ``E(z) = 3600 Q int_0^z
ocv_ref(s) ds`` [J] (``ocv_ref`` at 25 degC, or the nearest grid temperature) changes only
through the terminal current and the leakage, and every other term is reported as heat. This is
what lets the twin close its energy balance to rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from openbess.cell.params import CellParams

FloatArray = npt.NDArray[np.float64]

REFERENCE_TEMPERATURE_DEGC = 25.0


@dataclass
class CellState:
    """Dynamic state of N cells (arrays updated in place by :func:`step`).

    Parameters
    ----------
    soc : numpy.ndarray
        True state of charge [fraction], shape ``(N,)``.
    v_rc : numpy.ndarray
        RC-pair voltages [V], shape ``(nrc, N)``, positive when discharging.
    hysteresis : numpy.ndarray
        Hysteresis state h [1] in [-1, 1], shape ``(N,)``.
    """

    soc: FloatArray
    v_rc: FloatArray
    hysteresis: FloatArray

    @classmethod
    def initial(cls, params: CellParams, soc: FloatArray) -> CellState:
        """Cells at rest at the given SoC (no RC voltage, no hysteresis).

        Parameters
        ----------
        params : CellParams
            Parameter set (gives the number of RC pairs).
        soc : numpy.ndarray
            Initial SoC [fraction], shape ``(N,)``.

        Returns
        -------
        CellState
            The state.
        """
        soc = np.clip(np.asarray(soc, dtype=np.float64), 0.0, 1.0)
        return cls(soc.copy(), np.zeros((params.n_rc, soc.size)), np.zeros(soc.size))


@dataclass
class StepResult:
    """Outputs of one :func:`step` (arrays of shape ``(N,)``).

    Parameters
    ----------
    voltage_v : numpy.ndarray
        Terminal voltage at the end of the step [V].
    terminal_energy_j : numpy.ndarray
        Energy delivered at the terminals during the step [J] (positive = out of the cell).
    stored_energy_change_j : numpy.ndarray
        Change of the chemical energy ``E(z)`` [J].
    heat_j : numpy.ndarray
        Heat released in the cell during the step [J]: ohmic, polarisation, hysteresis,
        coulombic and leakage losses, and the reversible (entropic) term.
    leak_energy_j : numpy.ndarray
        Part of ``-stored_energy_change_j`` drawn by the leakage current [J] (self-discharge and
        balancing bleed; dissipated outside the cell for a bleed resistor).
    """

    voltage_v: FloatArray
    terminal_energy_j: FloatArray
    stored_energy_change_j: FloatArray
    heat_j: FloatArray
    leak_energy_j: FloatArray


class CellModel:
    """Pre-computed lookup structures for one parameter set (cheap to call per step).

    Parameters
    ----------
    params : CellParams
        The parameter set.
    """

    def __init__(self, params: CellParams) -> None:
        self.params = params
        self._ns = params.soc_grid.size
        t = params.temperature_grid_degc
        self._t = t
        ref = int(np.argmin(np.abs(t - REFERENCE_TEMPERATURE_DEGC)))
        self.ocv_ref_v = params.ocv_v[ref].copy()
        # Cumulative integral of the piecewise-linear reference OCV over SoC [V * fraction].
        dz = 1.0 / (self._ns - 1)
        seg = 0.5 * (self.ocv_ref_v[1:] + self.ocv_ref_v[:-1]) * dz
        self._ocv_int = np.concatenate(([0.0], np.cumsum(seg)))
        # Stack every (nt, ns) table so one gather serves all of them.
        self._tables = np.stack(
            [params.ocv_v, params.hysteresis_v, params.r0_ohm, *params.rc_r_ohm], axis=0
        )

    # -- lookups --------------------------------------------------------------------------
    def _weights(
        self, soc: FloatArray, temperature_degc: FloatArray
    ) -> tuple[npt.NDArray[np.intp], FloatArray, npt.NDArray[np.intp], FloatArray]:
        x = np.clip(soc, 0.0, 1.0) * (self._ns - 1)
        i = np.minimum(x.astype(np.intp), self._ns - 2)
        fz = x - i
        t = self._t
        if t.size == 1:
            j = np.zeros(soc.shape, dtype=np.intp)
            ft = np.zeros(soc.shape)
        else:
            tc = np.clip(temperature_degc, t[0], t[-1])
            j = np.clip(np.searchsorted(t, tc, side="right") - 1, 0, t.size - 2)
            ft = (tc - t[j]) / (t[j + 1] - t[j])
        return i, fz, j, ft

    def tables(self, soc: FloatArray, temperature_degc: FloatArray) -> FloatArray:
        """Interpolate every table at (SoC, T) for each cell.

        Parameters
        ----------
        soc : numpy.ndarray
            SoC [fraction], shape ``(N,)``.
        temperature_degc : numpy.ndarray
            Cell temperature [degC], shape ``(N,)``.

        Returns
        -------
        numpy.ndarray
            Shape ``(3 + nrc, N)``: OCV [V], hysteresis M [V], R0 [ohm], then each RC R [ohm].
        """
        i, fz, j, ft = self._weights(soc, temperature_degc)
        tab = self._tables
        if self._t.size == 1:
            return tab[:, 0, i] * (1 - fz) + tab[:, 0, i + 1] * fz
        lo = tab[:, j, i] * (1 - fz) + tab[:, j, i + 1] * fz
        hi = tab[:, j + 1, i] * (1 - fz) + tab[:, j + 1, i + 1] * fz
        out: FloatArray = lo * (1 - ft) + hi * ft
        return out

    def ocv(self, soc: FloatArray, temperature_degc: FloatArray) -> FloatArray:
        """Mean open-circuit voltage [V] at (SoC, T).

        Parameters
        ----------
        soc : numpy.ndarray
            SoC [fraction].
        temperature_degc : numpy.ndarray
            Temperature [degC].

        Returns
        -------
        numpy.ndarray
            OCV [V].
        """
        soc = np.atleast_1d(np.asarray(soc, dtype=np.float64))
        temp = np.broadcast_to(np.asarray(temperature_degc, dtype=np.float64), soc.shape)
        out: FloatArray = self.tables(soc, temp)[0]
        return out

    def rc_tau(self, temperature_degc: FloatArray) -> FloatArray:
        """RC time constants [s] at each cell temperature, shape ``(nrc, N)``.

        Parameters
        ----------
        temperature_degc : numpy.ndarray
            Temperature [degC], shape ``(N,)``.

        Returns
        -------
        numpy.ndarray
            Time constants [s].
        """
        taus = self.params.rc_tau_s
        out: FloatArray = np.stack([np.interp(temperature_degc, self._t, tk) for tk in taus])
        return out

    def coulombic_efficiency(self, temperature_degc: FloatArray) -> FloatArray:
        """Charge efficiency [fraction] at each cell temperature.

        Parameters
        ----------
        temperature_degc : numpy.ndarray
            Temperature [degC].

        Returns
        -------
        numpy.ndarray
            Efficiency [fraction].
        """
        out: FloatArray = np.interp(temperature_degc, self._t, self.params.coulombic_efficiency)
        return out

    def stored_energy_j(self, soc: FloatArray, capacity_ah: FloatArray | float) -> FloatArray:
        """Chemical energy ``E(z) = 3600 Q int_0^z ocv_ref`` [J] (exact for linear tables).

        Parameters
        ----------
        soc : numpy.ndarray
            SoC [fraction].
        capacity_ah : numpy.ndarray or float
            Capacity [Ah].

        Returns
        -------
        numpy.ndarray
            Energy [J].
        """
        x = np.clip(soc, 0.0, 1.0) * (self._ns - 1)
        i = np.minimum(x.astype(np.intp), self._ns - 2)
        f = x - i
        dz = 1.0 / (self._ns - 1)
        v0 = self.ocv_ref_v[i]
        v1 = self.ocv_ref_v[i + 1]
        partial = (v0 * f + 0.5 * (v1 - v0) * f * f) * dz
        out: FloatArray = 3600.0 * np.asarray(capacity_ah) * (self._ocv_int[i] + partial)
        return out

    def terminal_voltage(
        self,
        state: CellState,
        current_a: FloatArray,
        temperature_degc: FloatArray,
        r_scale: FloatArray | float = 1.0,
    ) -> FloatArray:
        """Terminal voltage [V] for the present state and a current.

        Parameters
        ----------
        state : CellState
            Cell state.
        current_a : numpy.ndarray
            Terminal current [A], positive = discharge.
        temperature_degc : numpy.ndarray
            Temperature [degC].
        r_scale : numpy.ndarray or float
            Resistance multiplier per cell (manufacturing spread, ageing) [1].

        Returns
        -------
        numpy.ndarray
            Voltage [V].
        """
        tab = self.tables(state.soc, temperature_degc)
        v: FloatArray = (
            tab[0] + tab[1] * state.hysteresis - tab[2] * r_scale * current_a
        ) - state.v_rc.sum(axis=0)
        return v

    def thevenin(
        self,
        state: CellState,
        temperature_degc: FloatArray,
        r_scale: FloatArray | float = 1.0,
    ) -> tuple[FloatArray, FloatArray]:
        """Instantaneous Thevenin equivalent ``v = e - r * i`` of each cell.

        Used to share current between parallel cells or strings.

        Parameters
        ----------
        state : CellState
            Cell state.
        temperature_degc : numpy.ndarray
            Temperature [degC].
        r_scale : numpy.ndarray or float
            Resistance multiplier [1].

        Returns
        -------
        tuple of numpy.ndarray
            Source voltage ``e`` [V] and series resistance ``r`` [ohm].
        """
        tab = self.tables(state.soc, temperature_degc)
        e = tab[0] + tab[1] * state.hysteresis - state.v_rc.sum(axis=0)
        return e, tab[2] * r_scale


def step(
    model: CellModel,
    state: CellState,
    current_a: FloatArray,
    dt_s: float,
    temperature_degc: FloatArray,
    capacity_ah: FloatArray | float,
    r_scale: FloatArray | float = 1.0,
    leak_current_a: FloatArray | float = 0.0,
) -> StepResult:
    """Advance N cells by ``dt_s`` with each cell's current held constant; update ``state``.

    Parameters
    ----------
    model : CellModel
        Model of the parameter set.
    state : CellState
        Cell state, updated in place.
    current_a : numpy.ndarray
        Terminal current of each cell [A], positive = discharge, shape ``(N,)``.
    dt_s : float
        Step [s], > 0.
    temperature_degc : numpy.ndarray
        Cell temperature during the step [degC], shape ``(N,)``.
    capacity_ah : numpy.ndarray or float
        Present capacity of each cell [Ah] (spread and fade applied).
    r_scale : numpy.ndarray or float
        Resistance multiplier per cell [1].
    leak_current_a : numpy.ndarray or float
        Internal leakage [A] >= 0: self-discharge plus balancing bleed.

    Returns
    -------
    StepResult
        End voltage and the energy terms of the step.
    """
    if dt_s <= 0:
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    i = np.asarray(current_a, dtype=np.float64)
    q_as = 3600.0 * np.asarray(capacity_ah, dtype=np.float64)
    tab = model.tables(state.soc, temperature_degc)
    ocv_t, m_hyst, r0 = tab[0], tab[1], tab[2] * r_scale
    eta = np.where(i < 0.0, model.coulombic_efficiency(temperature_degc), 1.0)

    # SoC: terminal current (with coulombic efficiency on charge), then leakage.
    soc0 = state.soc
    e0 = model.stored_energy_j(soc0, capacity_ah)
    soc_mid = soc0 - eta * i * dt_s / q_as
    e_mid = model.stored_energy_j(soc_mid, capacity_ah)
    soc1 = soc_mid - np.asarray(leak_current_a) * dt_s / q_as
    soc1 = np.clip(soc1, 0.0, 1.0)
    e1 = model.stored_energy_j(soc1, capacity_ah)
    # Chemical energy given to the terminals: -dE / eta on charge (eta <= 1 -> more in).
    chem_out_j = (e0 - e_mid) / eta
    leak_j = e_mid - e1

    # Reversible (entropic) term: OCV at T differs from the reference OCV. Both OCVs are taken
    # at the same SoC (the start of the step, where ``ocv_t`` was looked up), so the term is
    # exactly zero at the reference temperature whatever the step length.
    ocv_ref = np.interp(soc0, model.params.soc_grid, model.ocv_ref_v)
    entropic_j = (ocv_t - ocv_ref) * i * dt_s

    # RC pairs, exact zero-order hold; energy = int v_k * i dt.
    tau = model.rc_tau(temperature_degc)
    r_rc = tab[3:] * r_scale
    decay = np.exp(-dt_s / tau)
    v_inf = r_rc * i
    v0 = state.v_rc
    rc_j = (i * (v_inf * dt_s + (v0 - v_inf) * tau * (1.0 - decay))).sum(axis=0)
    state.v_rc = v_inf + (v0 - v_inf) * decay

    # Hysteresis, exact zero-order hold towards -sign(i); energy = int M h i dt.
    h0 = state.hysteresis
    rate = np.abs(eta * i) * model.params.hysteresis_rate / q_as
    x = rate * dt_s
    h_inf = -np.sign(i)
    decay_h = np.exp(-x)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_frac = np.where(x > 1e-12, (1.0 - decay_h) / np.where(x > 1e-12, x, 1.0), 1.0)
    h_mean = h_inf + (h0 - h_inf) * mean_frac
    hyst_j = m_hyst * h_mean * i * dt_s
    state.hysteresis = h_inf + (h0 - h_inf) * decay_h

    ohmic_j = r0 * i * i * dt_s
    terminal_j = chem_out_j + entropic_j + hyst_j - ohmic_j - rc_j
    # Heat: everything the chemistry released that did not reach the terminals or the leak
    # path. (e0 - e_mid) - chem_out_j >= 0 is the coulombic loss on charge, so that
    # terminal_j + heat_j + leak_j == -(e1 - e0) exactly.
    heat_j = ohmic_j + rc_j - hyst_j - entropic_j + ((e0 - e_mid) - chem_out_j)
    state.soc = soc1

    tab1 = model.tables(soc1, temperature_degc)
    v_end = tab1[0] + tab1[1] * state.hysteresis - tab1[2] * r_scale * i - state.v_rc.sum(axis=0)
    return StepResult(
        voltage_v=v_end,
        terminal_energy_j=terminal_j,
        stored_energy_change_j=e1 - e0,
        heat_j=heat_j,
        leak_energy_j=leak_j,
    )
