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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from openbess.cell.params import CellParams


def _load_njit() -> Any:
    """``numba.njit``, or None without numba (an optional accelerator, see step_compiled)."""
    try:
        from numba import njit  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None
    return njit


_numba_njit: Any = _load_njit()

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

REFERENCE_TEMPERATURE_DEGC = 25.0

#: True when numba is installed: :func:`step_compiled` then runs compiled machine code (else the
#: same kernel runs as plain Python, correct but slow; callers should use :func:`step`).
NUMBA_AVAILABLE = _numba_njit is not None

_F = TypeVar("_F", bound=Callable[..., Any])


def jit(func: _F) -> _F:
    """Compile ``func`` with ``numba.njit(cache=True)`` when numba is installed.

    Without numba the function is returned unchanged (plain Python, same results).

    Parameters
    ----------
    func : callable
        A function numba can compile (scalars, arrays, ``math``).

    Returns
    -------
    callable
        The compiled dispatcher, or ``func``.
    """
    if _numba_njit is None:  # pragma: no cover
        return func
    out: _F = _numba_njit(cache=True)(func)
    return out


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
    stored_energy_end_j : numpy.ndarray or None
        Chemical energy ``E(z)`` at the end of the step [J] (hand it to the next step).
    source_voltage_end_v : numpy.ndarray or None
        Thevenin source voltage at the end of the step [V] (as :meth:`CellModel.thevenin`).
    resistance_end_ohm : numpy.ndarray or None
        Thevenin resistance at the end of the step [ohm] (as :meth:`CellModel.thevenin`).
    """

    voltage_v: FloatArray
    terminal_energy_j: FloatArray
    stored_energy_change_j: FloatArray
    heat_j: FloatArray
    leak_energy_j: FloatArray
    stored_energy_end_j: FloatArray | None = None
    source_voltage_end_v: FloatArray | None = None
    resistance_end_ohm: FloatArray | None = None


class CellModel:
    """Pre-computed lookup structures for one parameter set (cheap to call per step).

    Every (temperature, SoC) table, plus the reference OCV, is stored as the bilinear
    coefficients of each grid cell, ``v = (a + c ft) + (b + d ft) fz`` with ``fz`` and ``ft``
    the fractional positions in the SoC and temperature cells, so one gather serves all tables.
    The last grid node of each axis has a cell of its own (zero slope), so a value at a grid
    node is the node's table entry up to rounding, and at the reference temperature the OCV
    equals the reference OCV exactly.

    Parameters
    ----------
    params : CellParams
        The parameter set.
    """

    def __init__(self, params: CellParams) -> None:
        self.params = params
        ns = params.soc_grid.size
        self._ns = ns
        t = params.temperature_grid_degc
        self._t = t
        ref = int(np.argmin(np.abs(t - REFERENCE_TEMPERATURE_DEGC)))
        self.ocv_ref_v = params.ocv_v[ref].copy()
        # Cumulative integral of the piecewise-linear reference OCV over SoC [V * fraction].
        dz = 1.0 / (ns - 1)
        seg = 0.5 * (self.ocv_ref_v[1:] + self.ocv_ref_v[:-1]) * dz
        self._ocv_int = np.concatenate(([0.0], np.cumsum(seg)))
        # Stack every (nt, ns) table so one gather serves all of them.
        self._tables = np.stack(
            [params.ocv_v, params.hysteresis_v, params.r0_ohm, *params.rc_r_ohm], axis=0
        )
        #: Number of tables returned by :meth:`tables` (OCV, M, R0, then each RC resistance).
        self.n_tables = int(self._tables.shape[0])
        ext = np.concatenate(
            [self._tables, np.broadcast_to(self.ocv_ref_v, (1, t.size, ns))], axis=0
        )
        self._coef = _bilinear_coefficients(ext)
        # The same, grid cell by grid cell (contiguous per cell) for the compiled kernel.
        self._coef_cells = np.ascontiguousarray(self._coef.transpose(2, 1, 0))
        # Temperature cells: the last node has its own cell of zero width (divisor 1, ft = 0).
        self._t_width = np.append(np.diff(t), 1.0) if t.size > 1 else np.ones(1)
        # Chemical energy per SoC segment (last node padded): E = 3600 Q (a + f (b + f c)).
        v0 = self.ocv_ref_v
        dv = np.append(np.diff(v0), 0.0)
        self._energy_coef = 3600.0 * np.stack([self._ocv_int, v0 * dz, 0.5 * dv * dz])

    # -- lookups --------------------------------------------------------------------------
    def _soc_weights(self, soc: FloatArray) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """Segment index (the last node padded: 0 .. ns - 1) and fraction of each SoC."""
        top = self._ns - 1.0
        x = np.minimum(np.maximum(np.multiply(soc, top), 0.0), top)
        i = x.astype(np.intp)
        return i, x - i

    def _temperature_weights(
        self, temperature_degc: FloatArray
    ) -> tuple[npt.NDArray[np.intp], FloatArray]:
        """Offset of each temperature's row in the flattened tables and its fraction.

        Parameters
        ----------
        temperature_degc : numpy.ndarray
            Temperature [degC] (clipped to the grid).

        Returns
        -------
        tuple of numpy.ndarray
            ``j * n_soc`` (int) and the fraction ``ft`` in [0, 1].
        """
        t = self._t
        tc = np.minimum(np.maximum(temperature_degc, t[0]), t[-1])
        j = np.searchsorted(t, tc, side="right") - 1
        ft: FloatArray = (tc - t[j]) / self._t_width[j]
        return j * self._ns, ft

    def _collapse(
        self, idx: npt.NDArray[np.intp], ft: FloatArray | None
    ) -> tuple[FloatArray, FloatArray]:
        """Gather the grid cells ``idx`` and fold the temperature fraction in: ``v = a + b fz``.

        ``ft`` is None with a single temperature.
        """
        g = self._coef[:, :, idx]
        if ft is None:
            return g[0], g[1]
        a: FloatArray = g[2] * ft
        a += g[0]
        b: FloatArray = g[3] * ft
        b += g[1]
        return a, b

    def lookup(self, soc: FloatArray, temperature_degc: FloatArray) -> FloatArray:
        """Interpolate every table and the reference OCV at (SoC, T) for each cell.

        Parameters
        ----------
        soc : numpy.ndarray
            SoC [fraction], shape ``(N,)`` (clipped to [0, 1]).
        temperature_degc : numpy.ndarray
            Cell temperature [degC], shape ``(N,)`` (clipped to the grid).

        Returns
        -------
        numpy.ndarray
            Shape ``(4 + nrc, N)``: the rows of :meth:`tables`, then the reference OCV [V]
            (the OCV at the reference temperature, at the same SoC).
        """
        i, fz = self._soc_weights(soc)
        if self._t.size == 1:
            a, b = self._collapse(i, None)
        else:
            jb, ft = self._temperature_weights(temperature_degc)
            a, b = self._collapse(jb + i, ft)
        out: FloatArray = b * fz
        out += a
        return out

    def kernel_weights(self, temperature_degc: FloatArray) -> tuple[IntArray, FloatArray]:
        """Temperature weights as :func:`step_compiled` takes them (zeros with one temperature).

        Parameters
        ----------
        temperature_degc : numpy.ndarray
            Temperature [degC], shape ``(N,)``.

        Returns
        -------
        tuple of numpy.ndarray
            Row offsets ``j * n_soc`` (int) and fractions ``ft``.
        """
        if self._t.size == 1:
            n = np.shape(temperature_degc)[0]
            return np.zeros(n, dtype=np.intp), np.zeros(n)
        return self._temperature_weights(temperature_degc)

    def remember(self, soc: FloatArray, temperature_degc: FloatArray, values: FloatArray) -> None:
        """Offer a computed :meth:`lookup` result for reuse (a no-op here; see subclasses).

        Parameters
        ----------
        soc, temperature_degc : numpy.ndarray
            Where it was looked up.
        values : numpy.ndarray
            ``lookup(soc, temperature_degc)``.
        """

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
        out: FloatArray = self.lookup(soc, temperature_degc)[: self.n_tables]
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
        i, f = self._soc_weights(soc)
        c = self._energy_coef[:, i]
        out: FloatArray = c[2] * f
        out += c[1]
        out *= f
        out += c[0]
        out *= capacity_ah
        return out

    def rc_decay(self, temperature_degc: FloatArray, dt_s: float) -> tuple[FloatArray, FloatArray]:
        """Zero-order-hold factors of the RC pairs over a step, shape ``(nrc, N)`` each.

        Parameters
        ----------
        temperature_degc : numpy.ndarray
            Temperature [degC], shape ``(N,)``.
        dt_s : float
            Step [s], > 0.

        Returns
        -------
        tuple of numpy.ndarray
            ``exp(-dt / tau)`` [1] and ``tau (1 - exp(-dt / tau))`` [s].
        """
        tau = self.rc_tau(temperature_degc)
        x = -dt_s / tau
        decay: FloatArray = np.exp(x)
        weight: FloatArray = np.expm1(x)
        weight *= tau
        np.negative(weight, out=weight)
        return decay, weight

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


def _bilinear_coefficients(tables: FloatArray) -> FloatArray:
    """Bilinear coefficients of stacked ``(R, nt, ns)`` tables on their grid cells.

    Cell ``(j, i)`` (flat index ``j * ns + i``) holds ``a, b, c, d`` with ``v = a + b fz + c ft
    + d fz ft``; the last node of each axis gets a cell of its own with zero slope along that
    axis. With a single temperature only ``a, b`` are kept.

    Parameters
    ----------
    tables : numpy.ndarray
        Tables, shape ``(R, nt, ns)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(4, R, nt * ns)``, or ``(2, R, ns)`` when ``nt == 1``.
    """
    v = np.asarray(tables, dtype=np.float64)
    r, nt, ns = v.shape
    b = np.zeros_like(v)
    b[:, :, :-1] = v[:, :, 1:] - v[:, :, :-1]
    if nt == 1:
        return np.stack([v[:, 0, :], b[:, 0, :]])
    c = np.zeros_like(v)
    c[:, :-1, :] = v[:, 1:, :] - v[:, :-1, :]
    d = np.zeros_like(v)
    d[:, :-1, :-1] = (v[:, 1:, 1:] - v[:, 1:, :-1]) - (v[:, :-1, 1:] - v[:, :-1, :-1])
    return np.stack([v, b, c, d]).reshape(4, r, nt * ns)


def step(
    model: CellModel,
    state: CellState,
    current_a: FloatArray,
    dt_s: float,
    temperature_degc: FloatArray,
    capacity_ah: FloatArray | float,
    r_scale: FloatArray | float = 1.0,
    leak_current_a: FloatArray | float = 0.0,
    *,
    stored_energy_start_j: FloatArray | None = None,
) -> StepResult:
    """Advance N cells by ``dt_s`` with each cell's current held constant; update ``state``.

    Parameters
    ----------
    model : CellModel
        Model of the parameter set.
    state : CellState
        Cell state, updated in place (``soc``, ``v_rc`` and ``hysteresis`` are replaced by
        new arrays).
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
    stored_energy_start_j : numpy.ndarray, optional
        ``model.stored_energy_j(state.soc, capacity_ah)`` when the caller already has it (the
        ``stored_energy_end_j`` of the previous step); computed when None.

    Returns
    -------
    StepResult
        End voltage and the energy terms of the step.
    """
    if dt_s <= 0:
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    i = np.asarray(current_a, dtype=np.float64)
    cap = np.asarray(capacity_ah, dtype=np.float64)
    nt = model.n_tables
    look = model.lookup(state.soc, temperature_degc)
    r_tab = look[2:nt] * r_scale  # R0, then the RC resistances
    charging = i < 0.0
    eta = np.where(charging, model.coulombic_efficiency(temperature_degc), 1.0)
    i_eta = eta * i
    dt_per_q = dt_s / (3600.0 * cap)  # SoC per ampere over the step [1/A]

    # SoC: terminal current (with coulombic efficiency on charge), then leakage.
    soc0 = state.soc
    e0 = stored_energy_start_j
    if e0 is None:
        e0 = model.stored_energy_j(soc0, cap)
    socs = np.empty((2, *np.broadcast(soc0, i, dt_per_q).shape))
    soc_mid, soc1 = socs[0], socs[1]
    np.multiply(i_eta, dt_per_q, out=soc_mid)
    np.subtract(soc0, soc_mid, out=soc_mid)
    np.multiply(leak_current_a, dt_per_q, out=soc1)
    np.subtract(soc_mid, soc1, out=soc1)
    np.maximum(soc1, 0.0, out=soc1)
    np.minimum(soc1, 1.0, out=soc1)
    e = model.stored_energy_j(socs, cap)
    e_mid, e1 = e[0], e[1]
    # Chemical energy given to the terminals: -dE / eta on charge (eta <= 1 -> more in).
    released = e0 - e_mid
    chem_out_j = released / eta
    leak_j = e_mid - e1
    i_dt = i * dt_s

    # Reversible (entropic) term: OCV at T differs from the reference OCV. Both OCVs are taken
    # at the same SoC (the start of the step, where ``ocv_t`` was looked up), so the term is
    # exactly zero at the reference temperature whatever the step length.
    entropic_j = (look[0] - look[nt]) * i_dt

    # RC pairs, exact zero-order hold; energy = int v_k * i dt.
    decay, weight = model.rc_decay(temperature_degc, dt_s)
    v_inf = r_tab[1:] * i
    dv = state.v_rc - v_inf
    rc_terms = v_inf * dt_s
    rc_terms += dv * weight
    rc_terms *= i
    rc_j = rc_terms.sum(axis=0)
    dv *= decay
    dv += v_inf
    state.v_rc = dv

    # Hysteresis, exact zero-order hold towards -sign(i); energy = int M h i dt.
    x = np.abs(i_eta)
    x *= model.params.hysteresis_rate * dt_per_q
    h_inf = -np.sign(i)
    np.maximum(x, 1e-300, out=x)  # the mean of the decay tends to 1 as x -> 0
    mean_frac = np.expm1(-x)  # exp(-x) - 1
    decay_h = mean_frac + 1.0
    mean_frac /= x
    dh = state.hysteresis - h_inf
    h_mean = h_inf - dh * mean_frac
    hyst_j = look[1] * h_mean * i_dt
    dh *= decay_h
    dh += h_inf
    state.hysteresis = dh

    ohmic_j = r_tab[0] * i * i_dt
    terminal_j = chem_out_j + entropic_j + hyst_j - ohmic_j - rc_j
    # Heat: everything the chemistry released that did not reach the terminals or the leak
    # path. (e0 - e_mid) - chem_out_j >= 0 is the coulombic loss on charge, so that
    # terminal_j + heat_j + leak_j == -(e1 - e0) exactly.
    heat_j = ohmic_j + rc_j - hyst_j - entropic_j + (released - chem_out_j)
    state.soc = soc1

    look1 = model.lookup(soc1, temperature_degc)
    source_v = look1[0] + look1[1] * state.hysteresis - state.v_rc.sum(axis=0)
    r_end = look1[2] * r_scale
    return StepResult(
        voltage_v=source_v - r_end * i,
        terminal_energy_j=terminal_j,
        stored_energy_change_j=e1 - e0,
        heat_j=heat_j,
        leak_energy_j=leak_j,
        stored_energy_end_j=e1,
        source_voltage_end_v=source_v,
        resistance_end_ohm=r_end,
    )


@jit
def _step_kernel(
    coef_cells: FloatArray,
    n_soc: int,
    row_offset: IntArray,
    ft: FloatArray,
    energy_coef: FloatArray,
    soc0: FloatArray,
    v_rc0: FloatArray,
    h0: FloatArray,
    current_a: FloatArray,
    dt_s: float,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    leak_a: FloatArray,
    eta_t: FloatArray,
    decay: FloatArray,
    weight: FloatArray,
    hysteresis_rate: float,
    e0: FloatArray,
    out: FloatArray,
    v_rc1: FloatArray,
    look1: FloatArray,
) -> None:
    """:func:`step` cell by cell, the same operations in the same order (see there).

    ``out`` rows: SoC, hysteresis, terminal energy, heat, leak energy, end chemical energy,
    end Thevenin source voltage, end resistance, end terminal voltage. ``look1`` receives the
    end-of-step :meth:`CellModel.lookup`.
    """
    n = soc0.shape[0]
    coef = coef_cells
    n_rows = coef.shape[1]
    k_ref = n_rows - 1  # the reference-OCV row
    n_rc = v_rc0.shape[0]
    bilinear = coef.shape[2] == 4
    top = n_soc - 1.0
    start = np.empty(n_rows)
    for k in range(n):
        i = current_a[k]
        # Start-of-step lookup.
        x = min(max(soc0[k] * top, 0.0), top)
        seg = int(x)
        fz = x - seg
        idx = row_offset[k] + seg
        for r in range(n_rows):
            if bilinear:
                a = coef[idx, r, 2] * ft[k] + coef[idx, r, 0]
                b = coef[idx, r, 3] * ft[k] + coef[idx, r, 1]
            else:
                a = coef[idx, r, 0]
                b = coef[idx, r, 1]
            start[r] = b * fz + a
        eta = eta_t[k] if i < 0.0 else 1.0
        i_eta = eta * i
        dt_per_q = dt_s / (3600.0 * capacity_ah[k])
        soc_mid = soc0[k] - i_eta * dt_per_q
        soc1 = min(max(soc_mid - leak_a[k] * dt_per_q, 0.0), 1.0)
        # Chemical energies.
        x = min(max(soc_mid * top, 0.0), top)
        seg = int(x)
        f = x - seg
        e_mid = (
            (energy_coef[2, seg] * f + energy_coef[1, seg]) * f + energy_coef[0, seg]
        ) * capacity_ah[k]
        x = min(max(soc1 * top, 0.0), top)
        seg = int(x)
        f = x - seg
        e1 = ((energy_coef[2, seg] * f + energy_coef[1, seg]) * f + energy_coef[0, seg]) * (
            capacity_ah[k]
        )
        released = e0[k] - e_mid
        chem_out = released / eta
        i_dt = i * dt_s
        entropic = (start[0] - start[k_ref]) * i_dt
        # RC pairs.
        rc_j = 0.0
        v_sum = 0.0
        for j in range(n_rc):
            v_inf = start[3 + j] * r_scale[k] * i
            dv = v_rc0[j, k] - v_inf
            rc_j += (v_inf * dt_s + dv * weight[j, k]) * i
            v_new = dv * decay[j, k] + v_inf
            v_rc1[j, k] = v_new
            v_sum += v_new
        # Hysteresis.
        xh = max(abs(i_eta) * (hysteresis_rate * dt_per_q), 1e-300)
        h_inf = -1.0 if i > 0.0 else (1.0 if i < 0.0 else -0.0)
        if xh > 1e-300:
            em1 = math.expm1(-xh)
            decay_h = em1 + 1.0
            mean_frac = em1 / xh
        else:  # no current: what the expressions above give at 1e-300, exactly
            decay_h = 1.0
            mean_frac = -1.0
        dh = h0[k] - h_inf
        h_mean = h_inf - dh * mean_frac
        hyst_j = start[1] * h_mean * i_dt
        h1 = dh * decay_h + h_inf
        ohmic = start[2] * r_scale[k] * i * i_dt
        out[0, k] = soc1
        out[1, k] = h1
        out[2, k] = chem_out + entropic + hyst_j - ohmic - rc_j
        out[3, k] = ohmic + rc_j - hyst_j - entropic + (released - chem_out)
        out[4, k] = e_mid - e1
        out[5, k] = e1
        # End-of-step lookup and Thevenin equivalent.
        x = min(max(soc1 * top, 0.0), top)
        seg = int(x)
        fz = x - seg
        idx = row_offset[k] + seg
        for r in range(n_rows):
            if bilinear:
                a = coef[idx, r, 2] * ft[k] + coef[idx, r, 0]
                b = coef[idx, r, 3] * ft[k] + coef[idx, r, 1]
            else:
                a = coef[idx, r, 0]
                b = coef[idx, r, 1]
            look1[r, k] = b * fz + a
        source = look1[0, k] + look1[1, k] * h1 - v_sum
        r_end = look1[2, k] * r_scale[k]
        out[6, k] = source
        out[7, k] = r_end
        out[8, k] = source - r_end * i


def step_compiled(
    model: CellModel,
    state: CellState,
    current_a: FloatArray,
    dt_s: float,
    temperature_degc: FloatArray,
    capacity_ah: FloatArray | float,
    r_scale: FloatArray | float = 1.0,
    leak_current_a: FloatArray | float = 0.0,
    *,
    stored_energy_start_j: FloatArray | None = None,
) -> StepResult:
    """:func:`step` as one compiled loop over the cells (same arguments, same results).

    The arithmetic is :func:`step`'s, operation by operation, so the two agree to rounding
    (``exp``/``expm1`` may differ in the last bit). With numba installed
    (:data:`NUMBA_AVAILABLE`) it costs a few microseconds plus well under a microsecond per
    cell; the first call in a process compiles the kernel or loads it from numba's cache.
    The end-of-step lookup is handed to :meth:`CellModel.remember`.

    Parameters
    ----------
    model, state, current_a, dt_s, temperature_degc, capacity_ah, r_scale, leak_current_a
        As :func:`step`; ``state.soc`` must be one-dimensional, the others broadcast to it.
    stored_energy_start_j : numpy.ndarray, optional
        As :func:`step`.

    Returns
    -------
    StepResult
        As :func:`step`, every field filled.
    """
    if dt_s <= 0:
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    soc0 = np.ascontiguousarray(state.soc, dtype=np.float64)
    if soc0.ndim != 1:
        raise ValueError(f"step_compiled needs a one-dimensional state, got {soc0.shape}")
    n = soc0.shape[0]

    def vec(values: FloatArray | float) -> FloatArray:
        a = np.asarray(values, dtype=np.float64)
        if a.shape != (n,) or not a.flags.c_contiguous:
            a = np.ascontiguousarray(np.broadcast_to(a, (n,)), dtype=np.float64)
        return a

    i = vec(current_a)
    temp = vec(temperature_degc)
    cap = vec(capacity_ah)
    e0 = stored_energy_start_j
    if e0 is None:
        e0 = model.stored_energy_j(soc0, cap)
    row_offset, ft = model.kernel_weights(temp)
    decay, weight = model.rc_decay(temp, dt_s)
    n_rc = decay.shape[0]
    out = np.empty((9, n))
    v_rc1 = np.empty((n_rc, n))
    look1 = np.empty((model.n_tables + 1, n))
    _step_kernel(
        model._coef_cells,
        model._ns,
        row_offset,
        ft,
        model._energy_coef,
        soc0,
        np.ascontiguousarray(state.v_rc, dtype=np.float64),
        vec(state.hysteresis),
        i,
        float(dt_s),
        cap,
        vec(r_scale),
        vec(leak_current_a),
        vec(model.coulombic_efficiency(temp)),
        np.ascontiguousarray(decay),
        np.ascontiguousarray(weight),
        float(model.params.hysteresis_rate),
        vec(e0),
        out,
        v_rc1,
        look1,
    )
    soc1 = out[0]
    state.soc = soc1
    state.hysteresis = out[1]
    state.v_rc = v_rc1
    model.remember(soc1, temperature_degc, look1)
    return StepResult(
        voltage_v=out[8],
        terminal_energy_j=out[2],
        stored_energy_change_j=out[5] - e0,
        heat_j=out[3],
        leak_energy_j=out[4],
        stored_energy_end_j=out[5],
        source_voltage_end_v=out[6],
        resistance_end_ohm=out[7],
    )
