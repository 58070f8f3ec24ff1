"""Lumped thermal model of N cells: exact exponential step, energy conserving.

Each cell ``k`` is one thermal mass ``C_k`` [J/K] with a conductance ``G_k`` [W/K] to its
coolant (or ambient) at ``T_c,k``, and optionally a conductance ``g_k`` [W/K] to the next cell
``k+1`` (a chain along a module; ``g_k = 0`` separates modules)::

    C_k dT_k/dt = P_k - G_k (T_k - T_c,k) - g_(k-1) (T_k - T_(k-1)) - g_k (T_k - T_(k+1))

The heat ``P_k = heat_k / dt`` [W] is held constant over the step, so the linear system has an
exact solution. Without neighbour coupling every cell is a scalar exponential; with it the
symmetrised matrix ``C^-1/2 (G + L) C^-1/2`` is diagonalised once per module (blocks of
connected cells, batched) and cached, so a step costs a few small matrix products.

The step also returns the heat given to the coolant over the step (the exact time integral of
``G_k (T_k - T_c,k)``), so that ``sum C_k dT_k == sum heat_k - sum heat_to_coolant_k`` holds to
rounding error: neighbour exchange only moves heat between cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from openbess.cell.params import CellParams

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True)
class ThermalStepResult:
    """Outcome of one thermal step (arrays of shape ``(N,)``).

    Parameters
    ----------
    temperature_degc : numpy.ndarray
        Cell temperature at the end of the step [degC].
    heat_to_coolant_j : numpy.ndarray
        Heat passed from each cell to its coolant during the step [J] (negative when the
        coolant warms the cell).
    mean_temperature_degc : numpy.ndarray
        Time-average cell temperature over the step [degC].
    """

    temperature_degc: FloatArray
    heat_to_coolant_j: FloatArray
    mean_temperature_degc: FloatArray


def heat_capacity_j_per_k(params: CellParams) -> float:
    """Heat capacity of one cell of a parameter set [J/K].

    Parameters
    ----------
    params : CellParams
        Parameter set.

    Returns
    -------
    float
        ``mass_kg * specific_heat_j_per_kg_k``.
    """
    return params.thermal.mass_kg * params.thermal.specific_heat_j_per_kg_k


def _phi(lam: FloatArray, dt_s: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``exp(-lam dt)``, ``(1 - exp(-lam dt)) / lam`` and ``(dt - phi1) / lam``, stable at 0."""
    x = lam * dt_s
    small = np.abs(x) < 1e-5
    xs = np.where(small, 1.0, x)
    decay = np.exp(-x)
    em1 = -np.expm1(-x)
    phi1 = np.where(small, dt_s * (1.0 - x / 2.0 + x * x / 6.0), dt_s * em1 / xs)
    phi2 = np.where(
        small,
        dt_s * dt_s * (0.5 - x / 6.0 + x * x / 24.0),
        dt_s * dt_s * (xs - em1) / (xs * xs),
    )
    return decay, phi1, phi2


def thermal_step(
    temperature_degc: FloatArray,
    heat_j: FloatArray,
    dt_s: float,
    heat_capacity_j_per_k: FloatArray | float,
    conductance_to_coolant_w_per_k: FloatArray | float,
    coolant_temperature_degc: FloatArray | float,
) -> ThermalStepResult:
    """Exact step of N independent lumped cells (no neighbour coupling).

    Parameters
    ----------
    temperature_degc : numpy.ndarray
        Cell temperature at the start [degC], shape ``(N,)``.
    heat_j : numpy.ndarray
        Heat released in each cell during the step [J] (e.g. ``StepResult.heat_j``).
    dt_s : float
        Step [s], > 0.
    heat_capacity_j_per_k : numpy.ndarray or float
        Heat capacity of each cell [J/K], > 0.
    conductance_to_coolant_w_per_k : numpy.ndarray or float
        Conductance to the coolant [W/K], >= 0.
    coolant_temperature_degc : numpy.ndarray or float
        Coolant temperature seen by each cell [degC].

    Returns
    -------
    ThermalStepResult
        End temperature, heat to coolant, mean temperature.
    """
    if dt_s <= 0:
        raise ValueError(f"dt_s must be > 0, got {dt_s}")
    t0 = np.asarray(temperature_degc, dtype=np.float64)
    c = np.broadcast_to(np.asarray(heat_capacity_j_per_k, dtype=np.float64), t0.shape)
    g = np.broadcast_to(np.asarray(conductance_to_coolant_w_per_k, dtype=np.float64), t0.shape)
    tc = np.broadcast_to(np.asarray(coolant_temperature_degc, dtype=np.float64), t0.shape)
    if np.any(c <= 0) or np.any(g < 0):
        raise ValueError("heat capacity must be > 0 and conductance >= 0")
    p = np.asarray(heat_j, dtype=np.float64) / dt_s
    # d(T - Tc)/dt = -lam (T - Tc) + P / C
    lam = g / c
    decay, phi1, phi2 = _phi(lam, dt_s)
    x0 = t0 - tc
    src = p / c
    x1 = decay * x0 + phi1 * src
    integral = phi1 * x0 + phi2 * src  # int_0^dt (T - Tc) dt
    return ThermalStepResult(
        temperature_degc=tc + x1,
        heat_to_coolant_j=g * integral,
        mean_temperature_degc=tc + integral / dt_s,
    )


class ThermalNetwork:
    """N lumped cells with coolant conductance and neighbour conductance along chains.

    Parameters
    ----------
    heat_capacity_j_per_k : numpy.ndarray or float
        Heat capacity of each cell [J/K], shape ``(N,)`` or scalar with ``n_cells``.
    conductance_to_coolant_w_per_k : numpy.ndarray or float
        Conductance of each cell to its coolant [W/K].
    neighbour_conductance_w_per_k : numpy.ndarray, optional
        Conductance between cell ``k`` and ``k+1`` [W/K], shape ``(N-1,)``; 0 where there is
        no contact (module boundaries). ``None``: no coupling.
    n_cells : int, optional
        Number of cells when all the other arguments are scalars.
    """

    def __init__(
        self,
        heat_capacity_j_per_k: FloatArray | float,
        conductance_to_coolant_w_per_k: FloatArray | float,
        neighbour_conductance_w_per_k: FloatArray | None = None,
        n_cells: int | None = None,
    ) -> None:
        shapes = [np.shape(heat_capacity_j_per_k), np.shape(conductance_to_coolant_w_per_k)]
        n = n_cells
        for s in shapes:
            if s:
                n = s[0]
        if neighbour_conductance_w_per_k is not None:
            n = np.size(neighbour_conductance_w_per_k) + 1
        if n is None:
            raise ValueError("give n_cells when all arguments are scalars")
        self.n_cells = int(n)
        self.c = np.broadcast_to(np.asarray(heat_capacity_j_per_k, np.float64), (n,)).copy()
        self.g = np.broadcast_to(
            np.asarray(conductance_to_coolant_w_per_k, np.float64), (n,)
        ).copy()
        if np.any(self.c <= 0) or np.any(self.g < 0):
            raise ValueError("heat capacity must be > 0 and conductance >= 0")
        if neighbour_conductance_w_per_k is None:
            self.link = np.zeros(max(n - 1, 0))
        else:
            self.link = np.asarray(neighbour_conductance_w_per_k, dtype=np.float64).copy()
            if np.any(self.link < 0):
                raise ValueError("neighbour conductance must be >= 0")
        self._blocks = self._find_blocks()
        self._cache: dict[float, tuple[FloatArray, FloatArray, FloatArray]] = {}
        self._eig: tuple[FloatArray, FloatArray] | None = None

    def _find_blocks(self) -> IntArray:
        """Index matrix (B, m) of connected chains, padded with -1."""
        n = self.n_cells
        breaks = np.flatnonzero(self.link <= 0) + 1
        starts = np.concatenate(([0], breaks))
        stops = np.concatenate((breaks, [n]))
        m = int(np.max(stops - starts)) if n else 0
        idx = -np.ones((starts.size, m), dtype=np.intp)
        for b, (s0, s1) in enumerate(zip(starts, stops, strict=True)):
            idx[b, : s1 - s0] = np.arange(s0, s1)
        return idx

    def _eigen(self) -> tuple[FloatArray, FloatArray]:
        """Eigen-decomposition of each symmetrised block (padding cells are isolated)."""
        if self._eig is not None:
            return self._eig
        idx = self._blocks
        nb, m = idx.shape
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        c = np.where(valid, self.c[safe], 1.0)
        g = np.where(valid, self.g[safe], 0.0)
        # Link between position j and j+1 inside a block (same chain by construction).
        link_all = np.concatenate((self.link, [0.0]))
        lk = np.where(valid[:, :-1] & valid[:, 1:], link_all[safe[:, :-1]], 0.0)
        k = np.zeros((nb, m, m))
        diag = g.copy()
        diag[:, :-1] += lk
        diag[:, 1:] += lk
        ar = np.arange(m)
        k[:, ar, ar] = diag
        k[:, ar[:-1], ar[1:]] = -lk
        k[:, ar[1:], ar[:-1]] = -lk
        s = 1.0 / np.sqrt(c)
        sym = k * s[:, :, None] * s[:, None, :]
        lam, vec = np.linalg.eigh(sym)
        self._eig = (np.maximum(lam, 0.0), vec)
        return self._eig

    def step(
        self,
        temperature_degc: FloatArray,
        heat_j: FloatArray,
        dt_s: float,
        coolant_temperature_degc: FloatArray | float,
    ) -> ThermalStepResult:
        """Advance all cells by ``dt_s`` with constant heat and coolant temperature.

        Parameters
        ----------
        temperature_degc : numpy.ndarray
            Cell temperature at the start [degC], shape ``(N,)``.
        heat_j : numpy.ndarray
            Heat released in each cell during the step [J], shape ``(N,)``.
        dt_s : float
            Step [s], > 0.
        coolant_temperature_degc : numpy.ndarray or float
            Coolant temperature per cell [degC].

        Returns
        -------
        ThermalStepResult
            End temperature, heat to coolant, mean temperature.
        """
        if not np.any(self.link > 0):
            return thermal_step(
                temperature_degc, heat_j, dt_s, self.c, self.g, coolant_temperature_degc
            )
        if dt_s <= 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        n = self.n_cells
        t0 = np.asarray(temperature_degc, dtype=np.float64)
        tc = np.broadcast_to(np.asarray(coolant_temperature_degc, dtype=np.float64), (n,))
        p = np.asarray(heat_j, dtype=np.float64) / dt_s
        lam, vec = self._eigen()
        key = float(dt_s)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = _phi(lam, dt_s)
        decay, phi1, phi2 = self._cache[key]
        idx = self._blocks
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        c = np.where(valid, self.c[safe], 1.0)
        g = np.where(valid, self.g[safe], 0.0)
        sq = np.sqrt(c)
        # C dT/dt = -K T + G Tc + P  ->  y = sqrt(C) T:  dy/dt = -S y + b
        y0 = np.where(valid, t0[safe], 0.0) * sq
        b = np.where(valid, g * tc[safe] + p[safe], 0.0) / sq
        w0 = np.einsum("bji,bj->bi", vec, y0)
        cb = np.einsum("bji,bj->bi", vec, b)
        w1 = decay * w0 + phi1 * cb
        wint = phi1 * w0 + phi2 * cb
        y1 = np.einsum("bij,bj->bi", vec, w1)
        yint = np.einsum("bij,bj->bi", vec, wint)
        t1 = np.empty(n)
        tint = np.empty(n)
        t1[idx[valid]] = (y1 / sq)[valid]
        tint[idx[valid]] = (yint / sq)[valid]
        return ThermalStepResult(
            temperature_degc=t1,
            heat_to_coolant_j=self.g * (tint - tc * dt_s),
            mean_temperature_degc=tint / dt_s,
        )
