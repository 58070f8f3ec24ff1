"""The battery pack of the digital twin: strings of series cells on a common DC bus.

Layout (:class:`PackTopology`): ``n_strings`` strings in parallel on the DC bus; each string is
``modules_per_string`` modules in series, each module ``cells_series_per_module`` series
elements. A series element (a "cell" for the BMS) is a parallel group of ``cells_parallel``
physical cells, modelled as one cell of ``cells_parallel`` times the capacity (resistances
divided, mass and cooling multiplied). Cells are numbered string by string, module by module::

    cell k = (string * modules_per_string + module) * cells_series_per_module + position

Physics per step (:meth:`Pack.step`), the pack current held constant over the step:

1. the total current is split between strings so that their (linearised) voltages at the end
   of the step are equal: an implicit split, stable for long steps (the split sums to the
   total);
2. every cell of every string advances in ONE vectorised call of :func:`openbess.cell.ecm.step`,
   with self-discharge, internal shorts and balancing bleed as the leak current;
3. each cell's temperature follows a lumped model (exact exponential over the step, or over
   ``thermal_interval_s`` with the heat accumulated) towards its coolant and the ambient; the
   coolant warms along the modules of a string (flow path) and the middle cells of a module are
   cooled less than the edge cells, so gradients exist;
4. energy terms are accumulated per cell, so :meth:`Pack.energy_balance` closes to rounding;
5. every ``ageing_window_s`` of simulated time the ageing model (:mod:`openbess.cell.ageing`)
   is applied to the window's mean temperature, SoC and charge throughput; capacity fade and
   resistance growth feed back into the cells.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from openbess.cell import ageing as ageing_mod
from openbess.cell import ecm
from openbess.cell.params import CellParams, ThermalParams
from openbess.twin.faults import FaultKind

if TYPE_CHECKING:
    from openbess.twin.faults import FaultInjector

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

SECONDS_PER_DAY = 86400.0


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PackTopology:
    """Electrical layout of the pack.

    Parameters
    ----------
    n_strings : int
        Strings in parallel on the DC bus, >= 1.
    modules_per_string : int
        Modules in series per string, >= 1.
    cells_series_per_module : int
        Series elements per module, >= 1.
    cells_parallel : int
        Physical cells in parallel in each series element, >= 1.
    """

    n_strings: int = 1
    modules_per_string: int = 1
    cells_series_per_module: int = 16
    cells_parallel: int = 1

    def __post_init__(self) -> None:
        for name in (
            "n_strings",
            "modules_per_string",
            "cells_series_per_module",
            "cells_parallel",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"PackTopology.{name} must be an integer >= 1, got {value!r}")

    @property
    def n_series(self) -> int:
        """Series elements per string."""
        return self.modules_per_string * self.cells_series_per_module

    @property
    def n_cells(self) -> int:
        """Series elements (BMS cells) in the whole pack."""
        return self.n_strings * self.n_series

    @property
    def n_modules(self) -> int:
        """Modules in the whole pack."""
        return self.n_strings * self.modules_per_string

    @property
    def n_physical_cells(self) -> int:
        """Physical cells in the whole pack."""
        return self.n_cells * self.cells_parallel

    def module_of_cell(self) -> IntArray:
        """Global module index of every cell, shape ``(n_cells,)``."""
        return np.arange(self.n_cells, dtype=np.intp) // self.cells_series_per_module

    def string_of_cell(self) -> IntArray:
        """String index of every cell, shape ``(n_cells,)``."""
        return np.arange(self.n_cells, dtype=np.intp) // self.n_series

    def position_in_module(self) -> IntArray:
        """Position of every cell inside its module (0 .. cells_series_per_module - 1)."""
        return np.arange(self.n_cells, dtype=np.intp) % self.cells_series_per_module

    def module_in_string(self) -> IntArray:
        """Position of every cell's module along its string (the coolant flow order)."""
        return self.module_of_cell() % self.modules_per_string

    def cell_index(self, string: int, module: int, position: int) -> int:
        """Global index of a cell.

        Parameters
        ----------
        string : int
            String index.
        module : int
            Module index inside the string.
        position : int
            Position inside the module.

        Returns
        -------
        int
            Cell index.
        """
        for name, value, size in (
            ("string", string, self.n_strings),
            ("module", module, self.modules_per_string),
            ("position", position, self.cells_series_per_module),
        ):
            if not 0 <= value < size:
                raise ValueError(f"{name} {value} out of range 0..{size - 1}")
        return (string * self.modules_per_string + module) * self.cells_series_per_module + position


@dataclass(frozen=True, slots=True)
class SpreadConfig:
    """Manufacturing spread between cells (same field names as ``openbess.config``).

    Parameters
    ----------
    capacity_rel_std : float
        Relative standard deviation of the capacity [fraction].
    resistance_rel_std : float
        Relative standard deviation of the resistances [fraction].
    self_discharge_per_day_mean : float
        Mean self-discharge [fraction of capacity per day].
    self_discharge_rel_std : float
        Relative standard deviation of the self-discharge [fraction].
    initial_soc_std : float
        Standard deviation of the initial SoC [fraction] (absolute).
    seed : int
        Seed of ``numpy.random.default_rng``.
    """

    capacity_rel_std: float = 0.0
    resistance_rel_std: float = 0.0
    self_discharge_per_day_mean: float = 0.0
    self_discharge_rel_std: float = 0.0
    initial_soc_std: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        for name in (
            "capacity_rel_std",
            "resistance_rel_std",
            "self_discharge_per_day_mean",
            "self_discharge_rel_std",
            "initial_soc_std",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SpreadConfig.{name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class CellSpread:
    """Per-cell draws of a :class:`SpreadConfig` (arrays of shape ``(n_cells,)``).

    Parameters
    ----------
    capacity_factor : numpy.ndarray
        Capacity multiplier [1].
    resistance_factor : numpy.ndarray
        Resistance multiplier [1].
    self_discharge_per_day : numpy.ndarray
        Self-discharge [fraction of capacity per day].
    soc_offset : numpy.ndarray
        Offset added to the initial SoC [fraction].
    """

    capacity_factor: FloatArray
    resistance_factor: FloatArray
    self_discharge_per_day: FloatArray
    soc_offset: FloatArray


def draw_spread(spread: SpreadConfig, n_cells: int, seed: int | None = None) -> CellSpread:
    """Draw the per-cell manufacturing spread.

    Normal draws truncated at 4 standard deviations; factors are kept above 0.2 and the
    self-discharge at >= 0.

    Parameters
    ----------
    spread : SpreadConfig
        Standard deviations.
    n_cells : int
        Number of cells.
    seed : int, optional
        Overrides ``spread.seed``.

    Returns
    -------
    CellSpread
        The draws.
    """
    rng = np.random.default_rng(spread.seed if seed is None else seed)

    def normal() -> FloatArray:
        out: FloatArray = np.clip(rng.standard_normal(n_cells), -4.0, 4.0)
        return out

    cap = np.maximum(1.0 + spread.capacity_rel_std * normal(), 0.2)
    res = np.maximum(1.0 + spread.resistance_rel_std * normal(), 0.2)
    sd = np.maximum(
        spread.self_discharge_per_day_mean * (1.0 + spread.self_discharge_rel_std * normal()), 0.0
    )
    soc = spread.initial_soc_std * normal()
    return CellSpread(cap, res, sd, soc)


@dataclass(frozen=True, slots=True)
class CoolingConfig:
    """Thermal environment of the cells.

    Parameters
    ----------
    coolant_degc : float or None
        Coolant inlet temperature [degC] (liquid cooling or a regulated HVAC); None: the cells
        are cooled by the ambient air (inlet = ambient).
    conductance_scale : float
        Multiplier on the cell's ``conductance_to_coolant_w_per_k`` [1], > 0.
    ambient_conductance_ratio : float
        Conductance from each cell to the ambient (enclosure losses) as a fraction of its nominal
        conductance to the coolant [1], > 0 (so a cell always loses some heat).
    middle_conductance_reduction : float
        The middle cell of a module has its coolant conductance reduced by this fraction, the
        edge cells not, linearly in between [fraction]: middle cells run warmer.
    coolant_capacity_rate_w_per_k : float or None
        Heat capacity rate of the coolant flow through one string [W/K] (mass flow times specific
        heat); the coolant warms along the modules of the string. None: 5 times the string's total
        cell-to-coolant conductance.
    """

    coolant_degc: float | None = None
    conductance_scale: float = 1.0
    ambient_conductance_ratio: float = 0.05
    middle_conductance_reduction: float = 0.3
    coolant_capacity_rate_w_per_k: float | None = None

    def __post_init__(self) -> None:
        if not self.conductance_scale > 0:
            raise ValueError(
                f"CoolingConfig.conductance_scale must be > 0, got {self.conductance_scale}"
            )
        if not self.ambient_conductance_ratio > 0:
            raise ValueError(
                "CoolingConfig.ambient_conductance_ratio must be > 0, got "
                f"{self.ambient_conductance_ratio}"
            )
        if not 0.0 <= self.middle_conductance_reduction < 1.0:
            raise ValueError(
                "CoolingConfig.middle_conductance_reduction must be in [0, 1), got "
                f"{self.middle_conductance_reduction}"
            )
        rate = self.coolant_capacity_rate_w_per_k
        if rate is not None and not rate > 0:
            raise ValueError(f"CoolingConfig.coolant_capacity_rate_w_per_k must be > 0, got {rate}")


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------
def parallel_group_params(params: CellParams, cells_parallel: int) -> CellParams:
    """Parameters of ``cells_parallel`` identical cells in parallel, as one cell.

    Capacity and mass multiply, resistances divide, the conductance to the coolant multiplies
    (each physical cell keeps its own surface); OCV, hysteresis and time constants stay.

    Parameters
    ----------
    params : CellParams
        One physical cell.
    cells_parallel : int
        Cells in parallel, >= 1.

    Returns
    -------
    CellParams
        The equivalent cell.
    """
    if cells_parallel < 1:
        raise ValueError(f"cells_parallel must be >= 1, got {cells_parallel}")
    if cells_parallel == 1:
        return params
    n = float(cells_parallel)
    th = params.thermal
    return replace(
        params,
        capacity_ah=params.capacity_ah * n,
        r0_ohm=params.r0_ohm / n,
        rc_r_ohm=params.rc_r_ohm / n,
        thermal=ThermalParams(
            mass_kg=th.mass_kg * n,
            specific_heat_j_per_kg_k=th.specific_heat_j_per_kg_k,
            conductance_to_coolant_w_per_k=th.conductance_to_coolant_w_per_k * n,
        ),
    )


def share_current(
    total_current_a: float, source_v: FloatArray, resistance_ohm: FloatArray
) -> tuple[FloatArray, float]:
    """Split a total current between parallel Thevenin branches on a common bus.

    Solves ``v = e_s - r_s i_s`` for all branches with ``sum(i_s) == total``.

    Parameters
    ----------
    total_current_a : float
        Total current [A], positive = discharge.
    source_v : numpy.ndarray
        Branch source voltages [V], shape ``(n,)``.
    resistance_ohm : numpy.ndarray
        Branch resistances [ohm] > 0, shape ``(n,)``.

    Returns
    -------
    tuple of (numpy.ndarray, float)
        Branch currents [A] (the last branch takes the rounding remainder, so the sum is the
        total to the last bit a float sum allows) and the bus voltage [V].
    """
    g = 1.0 / resistance_ohm
    g_sum = float(g.sum())
    bus_v = (float((source_v * g).sum()) - total_current_a) / g_sum
    currents: FloatArray = (source_v - bus_v) * g
    if currents.size > 1:
        currents[-1] = total_current_a - float(currents[:-1].sum())
    else:
        currents[0] = total_current_a
    return currents, bus_v


def coolant_flow_matrix(
    module_conductance_w_per_k: FloatArray, capacity_rate_w_per_k: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Linear map from module temperatures to the coolant temperature each module sees.

    The coolant of a string flows through its modules in order. In module ``m`` (cells at the
    conductance-weighted mean temperature ``Tw_m``, total conductance ``UA_m``) the coolant
    approaches ``Tw_m`` exponentially (effectiveness-NTU, ``a_m = exp(-UA_m / Cdot)``)::

        Tin_{m+1} = a_m Tin_m + (1 - a_m) Tw_m
        Tc_m      = Tw_m - eps_m (Tw_m - Tin_m),   eps_m = (1 - a_m) / (UA_m / Cdot)

    ``Tc_m`` (between the inlet and the cells: it can never overshoot) is the mean coolant
    temperature for which ``UA_m (Tw_m - Tc_m)`` is the heat the coolant picks up.

    Parameters
    ----------
    module_conductance_w_per_k : numpy.ndarray
        ``UA_m`` [W/K] >= 0, shape ``(n_strings, modules_per_string)``.
    capacity_rate_w_per_k : numpy.ndarray
        Coolant ``Cdot`` per string [W/K] > 0, shape ``(n_strings,)``.

    Returns
    -------
    tuple of numpy.ndarray
        Matrix ``K`` of shape ``(n_strings, M, M)`` and inlet weights ``w`` of shape
        ``(n_strings, M)`` with ``Tc = K @ Tw + w * T_inlet``.
    """
    ua = np.asarray(module_conductance_w_per_k, dtype=np.float64)
    ns, m = ua.shape
    x = ua / np.asarray(capacity_rate_w_per_k, dtype=np.float64)[:, None]
    a = np.exp(-x)
    with np.errstate(invalid="ignore", divide="ignore"):
        eps = np.where(x > 1e-12, -np.expm1(-x) / np.where(x > 1e-12, x, 1.0), 1.0)
    lin = np.zeros((ns, m, m))  # Tin_m = lin[m] @ Tw + p_m * T_inlet
    p = np.ones((ns, m))
    for j in range(1, m):
        lin[:, j, :] = a[:, j - 1, None] * lin[:, j - 1, :]
        lin[:, j, j - 1] += 1.0 - a[:, j - 1]
        p[:, j] = a[:, j - 1] * p[:, j - 1]
    k = eps[:, :, None] * lin
    idx = np.arange(m)
    k[:, idx, idx] += 1.0 - eps
    return k, eps * p


def lumped_thermal_step(
    temperature_degc: FloatArray,
    heat_j: FloatArray,
    dt_s: float,
    heat_capacity_j_per_k: FloatArray,
    conductance_coolant_w_per_k: FloatArray,
    coolant_degc: FloatArray | float,
    conductance_ambient_w_per_k: FloatArray,
    ambient_degc: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Exact lumped thermal update of N bodies over a step with constant heat input.

    ``C dT/dt = P - Gc (T - Tc) - Ga (T - Ta)`` solved exactly for ``P = heat_j / dt_s``.

    Parameters
    ----------
    temperature_degc : numpy.ndarray
        Temperature at the start of the step [degC].
    heat_j : numpy.ndarray
        Heat released in each body during the step [J].
    dt_s : float
        Step [s], > 0.
    heat_capacity_j_per_k : numpy.ndarray
        Heat capacity [J/K] > 0.
    conductance_coolant_w_per_k : numpy.ndarray
        Conductance to the coolant [W/K] >= 0.
    coolant_degc : numpy.ndarray or float
        Coolant temperature [degC].
    conductance_ambient_w_per_k : numpy.ndarray
        Conductance to the ambient [W/K] > 0.
    ambient_degc : float
        Ambient temperature [degC].

    Returns
    -------
    tuple of numpy.ndarray
        End temperature [degC], heat given to the coolant [J] and to the ambient [J] during
        the step; ``C (T1 - T0) == heat_j - q_coolant - q_ambient``.
    """
    coeffs = ThermalCoefficients.build(
        dt_s, heat_capacity_j_per_k, conductance_coolant_w_per_k, conductance_ambient_w_per_k
    )
    return coeffs.apply(temperature_degc, heat_j, coolant_degc, ambient_degc)


@dataclass(frozen=True, slots=True)
class ThermalCoefficients:
    """Pre-computed coefficients of :func:`lumped_thermal_step` for one step length.

    They depend only on the step, the heat capacities and the conductances, so the pack builds
    them once and reuses them while those do not change.

    Parameters
    ----------
    dt_s : float
        Step [s].
    w_coolant, w_ambient : numpy.ndarray
        ``Gc / G`` and ``Ga / G`` with ``G = Gc + Ga`` [1].
    inv_power_conductance : numpy.ndarray
        ``1 / (dt G)`` [K/J].
    decay : numpy.ndarray
        ``exp(-dt G / C)`` [1].
    mean_fraction : numpy.ndarray
        Mean of the decay over the step, ``(1 - decay) / (dt G / C)`` [1].
    gc_dt, ga_dt : numpy.ndarray
        ``Gc dt`` and ``Ga dt`` [J/K].
    """

    dt_s: float
    w_coolant: FloatArray
    w_ambient: FloatArray
    inv_power_conductance: FloatArray
    decay: FloatArray
    mean_fraction: FloatArray
    gc_dt: FloatArray
    ga_dt: FloatArray

    @classmethod
    def build(
        cls,
        dt_s: float,
        heat_capacity_j_per_k: FloatArray,
        conductance_coolant_w_per_k: FloatArray,
        conductance_ambient_w_per_k: FloatArray,
    ) -> ThermalCoefficients:
        """Coefficients for a step of ``dt_s`` (arguments as in :func:`lumped_thermal_step`)."""
        gc = np.asarray(conductance_coolant_w_per_k, dtype=np.float64)
        ga = np.asarray(conductance_ambient_w_per_k, dtype=np.float64)
        g_tot = gc + ga
        x = dt_s * g_tot / heat_capacity_j_per_k
        # x > 0 since every conductance to ambient is > 0.
        return cls(
            dt_s=dt_s,
            w_coolant=gc / g_tot,
            w_ambient=ga / g_tot,
            inv_power_conductance=1.0 / (dt_s * g_tot),
            decay=np.exp(-x),
            mean_fraction=-np.expm1(-x) / x,
            gc_dt=gc * dt_s,
            ga_dt=ga * dt_s,
        )

    def apply(
        self,
        temperature_degc: FloatArray,
        heat_j: FloatArray,
        coolant_degc: FloatArray | float,
        ambient_degc: float,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """One exact step (see :func:`lumped_thermal_step` for the arguments and results)."""
        t_inf = self.w_coolant * coolant_degc + self.w_ambient * ambient_degc
        t_inf += heat_j * self.inv_power_conductance
        delta0 = temperature_degc - t_inf
        t_mean = t_inf + delta0 * self.mean_fraction
        t1: FloatArray = t_inf + delta0 * self.decay
        q_coolant: FloatArray = self.gc_dt * (t_mean - coolant_degc)
        q_ambient: FloatArray = self.ga_dt * (t_mean - ambient_degc)
        return t1, q_coolant, q_ambient


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PackStep:
    """Outcome of one :meth:`Pack.step`.

    Parameters
    ----------
    current_a : float
        Pack current held over the step [A], positive = discharge.
    string_current_a : numpy.ndarray
        Current of each string [A], shape ``(n_strings,)``; sums to ``current_a``.
    bus_voltage_start_v : float
        Bus voltage at the start of the step with this current, ``E - R I`` from the pack's
        instantaneous Thevenin equivalent :meth:`Pack.thevenin` [V].
    pack_voltage_v : float
        Bus voltage at the end of the step [V] (mean of the string voltages).
    string_voltage_v : numpy.ndarray
        Terminal voltage of each string at the end of the step [V].
    dc_energy_j : float
        Energy delivered at the pack terminals during the step [J], positive = out.
    cell_heat_j : float
        Heat released in the cells by the electrochemistry (ohmic, polarisation, hysteresis,
        coulombic, entropic) [J].
    self_discharge_j : float
        Energy drawn by self-discharge and internal shorts (heat in the cells) [J].
    bleed_j : float
        Energy drawn by the balancing bleed resistors (heat on the BMS boards) [J].
    """

    current_a: float
    string_current_a: FloatArray
    bus_voltage_start_v: float
    pack_voltage_v: float
    string_voltage_v: FloatArray
    dc_energy_j: float
    cell_heat_j: float
    self_discharge_j: float
    bleed_j: float


@dataclass(frozen=True, slots=True)
class EnergyBalance:
    """Energy accounting since the pack was built [J].

    ``stored_start_j - stored_now_j == dc_out_j + cell_heat_j + self_discharge_j + bleed_j
    + capacity_fade_j + residual_j``, with ``residual_j`` at rounding level.

    Parameters
    ----------
    stored_start_j, stored_now_j : float
        Chemical energy stored in all cells at the start and now [J].
    dc_out_j : float
        Energy delivered at the pack terminals [J] (positive = out, net).
    cell_heat_j : float
        Heat released in the cells by the electrochemistry [J].
    self_discharge_j : float
        Energy drawn by self-discharge and internal shorts [J].
    bleed_j : float
        Energy drawn by balancing bleed resistors [J].
    capacity_fade_j : float
        Stored energy lost when ageing removed capacity (SoC kept) [J].
    residual_j : float
        What the terms above do not explain [J].
    """

    stored_start_j: float
    stored_now_j: float
    dc_out_j: float
    cell_heat_j: float
    self_discharge_j: float
    bleed_j: float
    capacity_fade_j: float
    residual_j: float

    @property
    def throughput_j(self) -> float:
        """Sum of the magnitudes of the flows [J] (scale for the residual)."""
        return (
            abs(self.dc_out_j)
            + abs(self.cell_heat_j)
            + abs(self.self_discharge_j)
            + abs(self.bleed_j)
            + abs(self.capacity_fade_j)
        )


@dataclass(frozen=True, slots=True)
class ThermalBalance:
    """Heat accounting of the cells since the pack was built [J].

    ``generated_j == to_coolant_j + to_ambient_j + sensible_change_j + pending_j + residual_j``.

    Parameters
    ----------
    generated_j : float
        Heat released in the cells (electrochemistry, self-discharge, shorts) [J].
    to_coolant_j, to_ambient_j : float
        Heat removed by the coolant and lost to the ambient [J].
    sensible_change_j : float
        Change of the cells' sensible heat ``sum C (T_now - T_start)`` [J].
    pending_j : float
        Heat released since the last thermal update (``thermal_interval_s > 0``) [J].
    residual_j : float
        Rounding residual [J].
    """

    generated_j: float
    to_coolant_j: float
    to_ambient_j: float
    sensible_change_j: float
    pending_j: float
    residual_j: float


class AgeingModel(Protocol):
    """What the pack needs from an ageing model (called once per ageing window)."""

    def advance(
        self,
        duration_s: float,
        temperature_degc: FloatArray,
        soc_mean: FloatArray,
        soc_end: FloatArray,
        throughput_ah: FloatArray,
    ) -> tuple[FloatArray, FloatArray]:
        """Age every cell by one window; return the TOTAL ageing since beginning of life.

        Parameters
        ----------
        duration_s : float
            Window length [s].
        temperature_degc : numpy.ndarray
            Time-mean cell temperature over the window [degC], shape ``(n_cells,)``.
        soc_mean : numpy.ndarray
            Time-mean SoC over the window [fraction].
        soc_end : numpy.ndarray
            SoC at the end of the window [fraction].
        throughput_ah : numpy.ndarray
            Charge moved through each cell in the window [Ah] (discharge + charge).

        Returns
        -------
        tuple of numpy.ndarray
            Capacity fade and resistance growth since beginning of life [fraction].
        """
        ...


class NoAgeing:
    """Cells that never age (for short runs and tests)."""

    def advance(
        self,
        duration_s: float,
        temperature_degc: FloatArray,
        soc_mean: FloatArray,
        soc_end: FloatArray,
        throughput_ah: FloatArray,
    ) -> tuple[FloatArray, FloatArray]:
        """No fade, no growth (see :class:`AgeingModel`)."""
        z = np.zeros(np.shape(soc_end))
        return z, z.copy()


class CellAgeing:
    """Adapter from :mod:`openbess.cell.ageing` to the pack's windows.

    Each window is one :func:`openbess.cell.ageing.update` call with the window's mean
    temperature, the SoC at its end (the half-cycle detector follows the SoC path window by
    window) and the mean absolute current (so the charge throughput is exact even when the
    current reverses inside the window).

    Parameters
    ----------
    params : openbess.cell.ageing.AgeingParams
        Coefficients.
    capacity_bol_ah : numpy.ndarray
        Fresh capacity of each cell [Ah] (reference of C-rate and full equivalent cycles).
    soc : numpy.ndarray
        Initial SoC of each cell [fraction].
    """

    def __init__(
        self, params: ageing_mod.AgeingParams, capacity_bol_ah: FloatArray, soc: FloatArray
    ) -> None:
        self.params = params
        self.capacity_bol_ah = np.asarray(capacity_bol_ah, dtype=np.float64)
        self.state = ageing_mod.AgeingState.new(np.asarray(soc, dtype=np.float64))

    @classmethod
    def from_cell(
        cls, params: CellParams, capacity_bol_ah: FloatArray, soc: FloatArray
    ) -> CellAgeing:
        """Build from the ``[ageing]`` table of a parameter set.

        Raises
        ------
        ConfigError
            Naming the missing or invalid key of the table.
        """
        table = ageing_mod.ageing_params(params.ageing, f"cell '{params.name}' [ageing]")
        return cls(table, capacity_bol_ah, soc)

    def advance(
        self,
        duration_s: float,
        temperature_degc: FloatArray,
        soc_mean: FloatArray,
        soc_end: FloatArray,
        throughput_ah: FloatArray,
    ) -> tuple[FloatArray, FloatArray]:
        """Age every cell by one window (see :class:`AgeingModel`)."""
        mean_abs_current_a = np.asarray(throughput_ah) * 3600.0 / duration_s
        self.state = ageing_mod.update(
            self.state,
            self.params,
            duration_s,
            soc_end,
            temperature_degc,
            mean_abs_current_a,
            self.capacity_bol_ah,
        )
        fade: FloatArray = 1.0 - self.state.capacity_factor
        growth: FloatArray = self.state.resistance_factor - 1.0
        return fade, growth

    def close(self) -> tuple[FloatArray, FloatArray]:
        """Book the open half-cycles (end of a run); return fade and growth [fraction]."""
        self.state = ageing_mod.close_half_cycles(self.state, self.params, self.capacity_bol_ah)
        fade: FloatArray = 1.0 - self.state.capacity_factor
        growth: FloatArray = self.state.resistance_factor - 1.0
        return fade, growth


def default_ageing(params: CellParams, capacity_bol_ah: FloatArray, soc: FloatArray) -> AgeingModel:
    """The pack's default ageing: :class:`CellAgeing` from ``params.ageing``; none if empty.

    Parameters
    ----------
    params : CellParams
        Parameter set (its ``ageing`` table).
    capacity_bol_ah : numpy.ndarray
        Fresh capacity of each cell [Ah].
    soc : numpy.ndarray
        Initial SoC [fraction].

    Returns
    -------
    AgeingModel
        The model.

    Raises
    ------
    ConfigError
        The table is present but invalid (names the key).
    """
    if not params.ageing:
        logger.info("cell '%s' has no [ageing] table: the pack will not age", params.name)
        return NoAgeing()
    return CellAgeing.from_cell(params, capacity_bol_ah, soc)


@ecm.jit
def _cells_kernel(
    coef_cells: FloatArray,
    n_soc: int,
    row_offset: IntArray,
    ft: FloatArray,
    energy_coef: FloatArray,
    soc0: FloatArray,
    v_rc0: FloatArray,
    h0: FloatArray,
    cell_i: FloatArray,
    dt_s: float,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    leak_a: FloatArray,
    eta_t: FloatArray,
    decay: FloatArray,
    weight: FloatArray,
    hysteresis_rate: float,
    e0: FloatArray,
    bleed_a: FloatArray,
    has_bleed: bool,
    n_series: int,
    out: FloatArray,
    v_rc1: FloatArray,
    look1: FloatArray,
    dc_out_j: FloatArray,
    cell_heat_j: FloatArray,
    self_discharge_j: FloatArray,
    bleed_j: FloatArray,
    heat_pending_j: FloatArray,
    v_min_seen: FloatArray,
    v_max_seen: FloatArray,
    strings: FloatArray,
    totals: FloatArray,
) -> None:
    """The cells' step (:func:`openbess.cell.ecm.step_compiled`'s kernel) and its bookkeeping.

    As the numpy path of :meth:`Pack.step`: the leak energy is split between the bleed
    resistors and the cells, the energy terms and the heat released in the cells are
    accumulated, the seen voltage extremes updated. ``strings`` receives per string (rows) the
    end terminal voltage, Thevenin source voltage and resistance; ``totals`` the pack's
    terminal energy, cell heat, self-discharge and bleed energy of the step [J].
    """
    ecm._step_kernel(
        coef_cells,
        n_soc,
        row_offset,
        ft,
        energy_coef,
        soc0,
        v_rc0,
        h0,
        cell_i,
        dt_s,
        capacity_ah,
        r_scale,
        leak_a,
        eta_t,
        decay,
        weight,
        hysteresis_rate,
        e0,
        out,
        v_rc1,
        look1,
    )
    n = soc0.shape[0]
    strings[:, :] = 0.0
    totals[:] = 0.0
    for k in range(n):
        terminal = out[2, k]
        heat = out[3, k]
        leak = out[4, k]
        if has_bleed:
            bleed = leak * (bleed_a[k] / max(leak_a[k], 1e-300))
            sd = leak - bleed
            bleed_j[k] += bleed
            totals[3] += bleed
        else:
            sd = leak
        heat_pending_j[k] += heat + sd
        dc_out_j[k] += terminal
        cell_heat_j[k] += heat
        self_discharge_j[k] += sd
        v = out[8, k]
        v_min_seen[k] = min(v_min_seen[k], v)
        v_max_seen[k] = max(v_max_seen[k], v)
        s = k // n_series
        strings[0, s] += v
        strings[1, s] += out[6, k]
        strings[2, s] += out[7, k]
        totals[0] += terminal
        totals[1] += heat
        totals[2] += sd


@ecm.jit
def _thermal_kernel(
    temp0: FloatArray,
    heat_j: FloatArray,
    duration_s: float,
    g_coolant: FloatArray,
    ua_module_safe: FloatArray,
    coolant_matrix: FloatArray,
    inlet_weight: FloatArray,
    inlet_degc: float,
    ambient_degc: float,
    cells_per_module: int,
    w_coolant: FloatArray,
    w_ambient: FloatArray,
    inv_power_conductance: FloatArray,
    decay: FloatArray,
    mean_fraction: FloatArray,
    gc_dt: FloatArray,
    ga_dt: FloatArray,
    soc: FloatArray,
    ecm_temperature: FloatArray,
    t1: FloatArray,
    coolant_module: FloatArray,
    to_coolant_j: FloatArray,
    to_ambient_j: FloatArray,
    win_temp_ks: FloatArray,
    win_soc_s: FloatArray,
) -> tuple[float, float, float]:
    """:meth:`Pack._thermal_update`'s numpy path in one loop (same arithmetic).

    Returns the lowest and highest new temperature and the largest distance of the new
    temperatures from ``ecm_temperature`` [K].
    """
    ns, m = ua_module_safe.shape
    t_module = np.empty(m)
    for s in range(ns):
        for j in range(m):
            acc = 0.0
            base = (s * m + j) * cells_per_module
            for c in range(cells_per_module):
                acc += g_coolant[base + c] * temp0[base + c]
            t_module[j] = acc / ua_module_safe[s, j]
        for j in range(m):
            acc = 0.0
            for q in range(m):
                acc += coolant_matrix[s, j, q] * t_module[q]
            coolant_module[s, j] = acc + inlet_weight[s, j] * inlet_degc
    t_min = math.inf
    t_max = -math.inf
    drift = 0.0
    for k in range(temp0.shape[0]):
        g = k // cells_per_module
        tc = coolant_module[g // m, g % m]
        t_inf = w_coolant[k] * tc + w_ambient[k] * ambient_degc
        t_inf += heat_j[k] * inv_power_conductance[k]
        delta0 = temp0[k] - t_inf
        t_mean = t_inf + delta0 * mean_fraction[k]
        t_new = t_inf + delta0 * decay[k]
        t1[k] = t_new
        to_coolant_j[k] += gc_dt[k] * (t_mean - tc)
        to_ambient_j[k] += ga_dt[k] * (t_mean - ambient_degc)
        win_temp_ks[k] += temp0[k] * duration_s
        win_soc_s[k] += soc[k] * duration_s
        t_min = min(t_min, t_new)
        t_max = max(t_max, t_new)
        drift = max(drift, abs(t_new - ecm_temperature[k]))
    return t_min, t_max, drift


@ecm.jit
def _pack_kernel(
    coef_cells: FloatArray,
    n_soc: int,
    row_offset: IntArray,
    ft: FloatArray,
    energy_coef: FloatArray,
    soc0: FloatArray,
    v_rc0: FloatArray,
    h0: FloatArray,
    cell_i: FloatArray,
    dt_s: float,
    capacity_ah: FloatArray,
    r_scale: FloatArray,
    leak_a: FloatArray,
    eta_t: FloatArray,
    decay: FloatArray,
    weight: FloatArray,
    hysteresis_rate: float,
    e0: FloatArray,
    bleed_a: FloatArray,
    has_bleed: bool,
    n_series: int,
    out: FloatArray,
    v_rc1: FloatArray,
    look1: FloatArray,
    dc_out_j: FloatArray,
    cell_heat_j: FloatArray,
    self_discharge_j: FloatArray,
    bleed_j: FloatArray,
    heat_pending_j: FloatArray,
    v_min_seen: FloatArray,
    v_max_seen: FloatArray,
    strings: FloatArray,
    totals: FloatArray,
    thermal_s: float,
    temp0: FloatArray,
    g_coolant: FloatArray,
    ua_module_safe: FloatArray,
    coolant_matrix: FloatArray,
    inlet_weight: FloatArray,
    inlet_degc: float,
    ambient_degc: float,
    cells_per_module: int,
    w_coolant: FloatArray,
    w_ambient: FloatArray,
    inv_power_conductance: FloatArray,
    t_decay: FloatArray,
    mean_fraction: FloatArray,
    gc_dt: FloatArray,
    ga_dt: FloatArray,
    ecm_temperature: FloatArray,
    t1: FloatArray,
    coolant_module: FloatArray,
    to_coolant_j: FloatArray,
    to_ambient_j: FloatArray,
    win_temp_ks: FloatArray,
    win_soc_s: FloatArray,
) -> None:
    """:func:`_cells_kernel`, then (``thermal_s > 0``) :func:`_thermal_kernel` over
    ``thermal_s`` with the pending heat, which is then cleared; ``totals[4:7]`` receive the
    thermal kernel's results. One call instead of two."""
    _cells_kernel(
        coef_cells,
        n_soc,
        row_offset,
        ft,
        energy_coef,
        soc0,
        v_rc0,
        h0,
        cell_i,
        dt_s,
        capacity_ah,
        r_scale,
        leak_a,
        eta_t,
        decay,
        weight,
        hysteresis_rate,
        e0,
        bleed_a,
        has_bleed,
        n_series,
        out,
        v_rc1,
        look1,
        dc_out_j,
        cell_heat_j,
        self_discharge_j,
        bleed_j,
        heat_pending_j,
        v_min_seen,
        v_max_seen,
        strings,
        totals,
    )
    if thermal_s > 0.0:
        t_min, t_max, drift = _thermal_kernel(
            temp0,
            heat_pending_j,
            thermal_s,
            g_coolant,
            ua_module_safe,
            coolant_matrix,
            inlet_weight,
            inlet_degc,
            ambient_degc,
            cells_per_module,
            w_coolant,
            w_ambient,
            inv_power_conductance,
            t_decay,
            mean_fraction,
            gc_dt,
            ga_dt,
            out[0],
            ecm_temperature,
            t1,
            coolant_module,
            to_coolant_j,
            to_ambient_j,
            win_temp_ks,
            win_soc_s,
        )
        heat_pending_j[:] = 0.0
        totals[4] = t_min
        totals[5] = t_max
        totals[6] = drift


class _MemoCellModel(ecm.CellModel):
    """CellModel that remembers its last lookups, keyed on the input arrays' identity.

    The table lookup is the costliest part of a step. The end-of-step lookup inside
    :func:`openbess.cell.ecm.step`, the pack's Thevenin equivalent before the next step and the
    start-of-step lookup of that step are all at the same (SoC, temperature) arrays as long as
    the temperature handed to the ECM is not refreshed, so one lookup serves all three; the
    temperature-only lookups (interpolation weights, RC factors, coulombic efficiency) are
    reused until the temperature array is refreshed, and the gathered grid cells while no
    cell's SoC crosses a grid node. The pack never modifies these arrays in place (ecm.step
    replaces ``state.soc``), and calls :meth:`forget` whenever it changes anything else.
    """

    def __init__(self, params: CellParams) -> None:
        super().__init__(params)
        self.forget()

    def forget(self) -> None:
        """Drop the remembered lookups."""
        self._memo: tuple[FloatArray, FloatArray, FloatArray] | None = None
        self._weights_memo: tuple[FloatArray, IntArray, FloatArray] | None = None
        self._cells_memo: tuple[FloatArray, IntArray, FloatArray, FloatArray] | None = None
        self._tau_memo: tuple[FloatArray, FloatArray] | None = None
        self._decay_memo: tuple[FloatArray, float, FloatArray, FloatArray] | None = None
        self._eta_memo: tuple[FloatArray, FloatArray] | None = None

    def _temperature_weights(self, temperature_degc: FloatArray) -> tuple[IntArray, FloatArray]:
        memo = self._weights_memo
        if memo is not None and memo[0] is temperature_degc:
            return memo[1], memo[2]
        jb, ft = super()._temperature_weights(temperature_degc)
        self._weights_memo = (temperature_degc, jb, ft)
        return jb, ft

    def rc_tau(self, temperature_degc: FloatArray) -> FloatArray:
        """RC time constants (see :meth:`openbess.cell.ecm.CellModel.rc_tau`), remembered."""
        memo = self._tau_memo
        if memo is not None and memo[0] is temperature_degc:
            return memo[1]
        out = super().rc_tau(temperature_degc)
        self._tau_memo = (temperature_degc, out)
        return out

    def rc_decay(self, temperature_degc: FloatArray, dt_s: float) -> tuple[FloatArray, FloatArray]:
        """RC factors (see :meth:`openbess.cell.ecm.CellModel.rc_decay`), remembered."""
        memo = self._decay_memo
        if memo is not None and memo[0] is temperature_degc and memo[1] == dt_s:
            return memo[2], memo[3]
        decay, weight = super().rc_decay(temperature_degc, dt_s)
        self._decay_memo = (temperature_degc, dt_s, decay, weight)
        return decay, weight

    def coulombic_efficiency(self, temperature_degc: FloatArray) -> FloatArray:
        """Charge efficiency (see :meth:`openbess.cell.ecm.CellModel.coulombic_efficiency`)."""
        memo = self._eta_memo
        if memo is not None and memo[0] is temperature_degc:
            return memo[1]
        out = super().coulombic_efficiency(temperature_degc)
        self._eta_memo = (temperature_degc, out)
        return out

    def remember(self, soc: FloatArray, temperature_degc: FloatArray, values: FloatArray) -> None:
        """Keep a lookup computed elsewhere (the compiled step's end-of-step lookup)."""
        self._memo = (soc, temperature_degc, values)

    def lookup(self, soc: FloatArray, temperature_degc: FloatArray) -> FloatArray:
        """Interpolate every table (see :meth:`openbess.cell.ecm.CellModel.lookup`)."""
        memo = self._memo
        if memo is not None and memo[0] is soc and memo[1] is temperature_degc:
            return memo[2]
        i, fz = self._soc_weights(soc)
        ft: FloatArray | None = None
        if self._t.size == 1:
            idx = i
        else:
            jb, ft = self._temperature_weights(temperature_degc)
            idx = jb + i
        cells = self._cells_memo
        if (
            cells is not None
            and cells[0] is temperature_degc
            and cells[1].shape == idx.shape
            and not (cells[1] != idx).any()
        ):
            a, b = cells[2], cells[3]
        else:
            a, b = self._collapse(idx, ft)
            self._cells_memo = (temperature_degc, idx, a, b)
        out: FloatArray = b * fz
        out += a
        self._memo = (soc, temperature_degc, out)
        return out


# --------------------------------------------------------------------------------------------
# The pack
# --------------------------------------------------------------------------------------------
class Pack:
    """True physical state of the battery pack (the plant's cells).

    ``pack.state`` (an :class:`openbess.cell.ecm.CellState`) is the true cell state; do not
    modify its arrays in place (use :meth:`set_cell_soc`, or call :meth:`invalidate` after).

    Parameters
    ----------
    params : CellParams
        Parameters of ONE physical cell (use ``scale_to_capacity`` first for another size).
    topology : PackTopology
        Layout.
    spread : SpreadConfig
        Manufacturing spread.
    cooling : CoolingConfig
        Thermal environment.
    initial_soc : float
        Mean initial SoC [fraction] (the spread's offsets are added, then clipped to [0, 1]).
    ambient_degc : float
        Ambient temperature [degC]; also the initial cell temperature unless
        ``initial_temperature_degc`` is given.
    seed : int, optional
        Overrides ``spread.seed``.
    faults : FaultInjector, optional
        Consulted every step for internal shorts and cooling failures.
    time_s : float
        Start time [s, Unix UTC] of the pack clock (advanced by ``dt_s`` each step).
    ageing_window_s : float
        Simulated time between two ageing updates [s]; ``math.inf`` disables ageing.
    initial_temperature_degc : float, optional
        Initial cell temperature [degC].
    ageing : AgeingModel, optional
        Ageing model; default :func:`default_ageing` (``openbess.cell.ageing`` with the
        ``[ageing]`` table of ``params``; no ageing if the table is empty).
    ecm_temperature_tolerance_k : float
        The temperature used for the ECM's parameter tables follows the thermal state with this
        tolerance [K] (0: every step); a held temperature lets one table lookup serve a whole
        step. Heat, thermal balance, sensors and ageing always use the true temperature.
    thermal_interval_s : float
        Simulated time between thermal updates [s]; the heat of the steps in between is
        accumulated and released evenly over the interval (exact and energy conserving; only
        the time resolution of the temperatures drops). 0: every step.
    compiled : bool, optional
        Step the cells with :func:`openbess.cell.ecm.step_compiled` (True) or the numpy
        reference :func:`openbess.cell.ecm.step` (False); None: compiled when numba is
        installed. Both give the same results to rounding.
    """

    def __init__(
        self,
        params: CellParams,
        topology: PackTopology,
        spread: SpreadConfig | None = None,
        cooling: CoolingConfig | None = None,
        initial_soc: float = 0.5,
        ambient_degc: float = 25.0,
        seed: int | None = None,
        *,
        faults: FaultInjector | None = None,
        time_s: float = 0.0,
        ageing_window_s: float = 60.0,
        initial_temperature_degc: float | None = None,
        ageing: AgeingModel | None = None,
        ecm_temperature_tolerance_k: float = 0.05,
        thermal_interval_s: float = 0.0,
        compiled: bool | None = None,
    ) -> None:
        if not 0.0 <= initial_soc <= 1.0:
            raise ValueError(f"initial_soc must be in [0, 1], got {initial_soc!r}")
        if not math.isfinite(ambient_degc):
            raise ValueError(f"ambient_degc must be finite, got {ambient_degc!r}")
        if not ageing_window_s > 0:
            raise ValueError(f"ageing_window_s must be > 0, got {ageing_window_s!r}")
        self.params = params
        self.topology = topology
        self.spread = spread if spread is not None else SpreadConfig()
        self.cooling = cooling if cooling is not None else CoolingConfig()
        self.faults = faults
        self.time_s = float(time_s)
        self.ambient_degc = float(ambient_degc)
        self.ageing_window_s = float(ageing_window_s)

        n = topology.n_cells
        self._n = n
        self._ns = topology.n_strings
        self._nser = topology.n_series
        self.group_params = parallel_group_params(params, topology.cells_parallel)
        self.model = _MemoCellModel(self.group_params)
        draws = draw_spread(self.spread, n, seed)
        self.cell_spread = draws

        q_nom = self.group_params.capacity_ah
        #: Capacity of each cell at the beginning of life [Ah] (spread applied).
        self.capacity_bol_ah: FloatArray = q_nom * draws.capacity_factor
        self._capacity_ah: FloatArray = self.capacity_bol_ah.copy()
        self._r_spread: FloatArray = draws.resistance_factor
        self._r_growth: FloatArray = np.zeros(n)
        self._r_scale: FloatArray = self._r_spread.copy()
        self._self_discharge_a: FloatArray = (
            draws.self_discharge_per_day * self.capacity_bol_ah / 24.0
        )

        soc0 = np.clip(initial_soc + draws.soc_offset, 0.0, 1.0)
        self.state = ecm.CellState.initial(self.group_params, soc0)
        t0 = ambient_degc if initial_temperature_degc is None else initial_temperature_degc
        self._temperature_degc: FloatArray = np.full(n, float(t0))
        self._temperature_start_degc = self._temperature_degc.copy()
        # Temperature handed to the ECM tables: refreshed from the thermal state when it is
        # more than ``ecm_temperature_tolerance_k`` away (keeps the table lookup shared).
        self._ecm_temperature_degc: FloatArray = self._temperature_degc.copy()
        self.ecm_temperature_tolerance_k = float(ecm_temperature_tolerance_k)
        self.thermal_interval_s = float(thermal_interval_s)
        #: Step the cells with the compiled kernel (:func:`openbess.cell.ecm.step_compiled`).
        self.compiled = ecm.NUMBA_AVAILABLE if compiled is None else bool(compiled)
        self._heat_pending_j: FloatArray = np.zeros(n)
        self._cell_current_buffer: FloatArray = np.zeros(n)
        self._thermal_pending_s = 0.0

        # Thermal network.
        th = self.group_params.thermal
        self._heat_capacity_j_per_k: FloatArray = np.full(
            n, th.mass_kg * th.specific_heat_j_per_kg_k
        )
        g_nom = th.conductance_to_coolant_w_per_k * self.cooling.conductance_scale
        c = topology.cells_series_per_module
        pos = topology.position_in_module().astype(np.float64)
        half = 0.5 * (c - 1)
        depth = (np.minimum(pos, (c - 1) - pos) / half) if c > 1 else np.zeros(n)
        self._g_coolant_base: FloatArray = g_nom * (
            1.0 - self.cooling.middle_conductance_reduction * depth
        )
        self._g_coolant: FloatArray = self._g_coolant_base.copy()
        self._g_ambient: FloatArray = np.full(n, g_nom * self.cooling.ambient_conductance_ratio)
        rate = self.cooling.coolant_capacity_rate_w_per_k
        string_g = self._g_coolant_base.reshape(self._ns, self._nser).sum(axis=1)
        self._coolant_rate_w_per_k: FloatArray = (
            5.0 * string_g if rate is None else np.full(self._ns, float(rate))
        )
        self._coolant_module_degc: FloatArray = np.full(
            (self._ns, topology.modules_per_string), self._coolant_inlet_degc()
        )
        self._thermal_version = 0
        self._thermal: ThermalCoefficients | None = None
        self._update_coolant_network()

        # Fault-derived arrays.
        self._short_conductance_s: FloatArray = np.zeros(n)
        self._fault_key: tuple[object, ...] = ()

        # Electrical outputs.
        e, _ = self.model.thevenin(self.state, self._temperature_degc, self._r_scale)
        self._cell_voltage_v: FloatArray = e.copy()
        self._v_min_seen: FloatArray = e.copy()
        self._v_max_seen: FloatArray = e.copy()
        self._string_current_a: FloatArray = np.zeros(self._ns)
        self._current_a = 0.0
        self._thev_cache: tuple[FloatArray, FloatArray] | None = None
        ref = int(np.argmin(np.abs(self.group_params.temperature_grid_degc - 25.0)))
        self._rc_tau_ref_s: FloatArray = self.group_params.rc_tau_s[:, ref]
        self._n_soc_seg = self.group_params.soc_grid.size - 1
        slope = np.diff(self.model.ocv_ref_v) * self._n_soc_seg
        self._ocv_slope_ref: FloatArray = np.append(slope, slope[-1])
        self._rc_decay_dt = -1.0
        self._rc_one_minus_decay: FloatArray = np.zeros(self.group_params.n_rc)
        self._slope_dt: FloatArray = np.zeros(self._n_soc_seg + 1)
        self._string_thev_cache: tuple[FloatArray, FloatArray] | None = None
        self._pack_thev_cache: tuple[float, float] | None = None
        self._thermal_key: tuple[float, int] | None = None
        self._string_voltage_v: FloatArray | None = None
        self._temperature_range: tuple[float, float] | None = None

        # Energy accumulators per cell [J].
        self._stored_start_j: FloatArray = self.model.stored_energy_j(
            self.state.soc, self._capacity_ah
        )
        # Chemical energy of the present state (the next step's start) [J]; None: recompute.
        self._stored_now_j: FloatArray | None = self._stored_start_j.copy()
        self._dc_out_j: FloatArray = np.zeros(n)
        self._cell_heat_j: FloatArray = np.zeros(n)
        self._self_discharge_j: FloatArray = np.zeros(n)
        self._bleed_j: FloatArray = np.zeros(n)
        self._fade_j: FloatArray = np.zeros(n)
        self._to_coolant_j: FloatArray = np.zeros(n)
        self._to_ambient_j: FloatArray = np.zeros(n)

        # Ageing window accumulators.
        self._win_elapsed_s = 0.0
        self._win_sampled_s = 0.0  # time covered by the T and SoC integrals [s]
        self._win_temp_ks: FloatArray = np.zeros(n)  # int T dt [K s]
        self._win_soc_s: FloatArray = np.zeros(n)  # int SoC dt [s]
        self._win_string_as: FloatArray = np.zeros(self._ns)  # int |I| dt [A s]
        self.ageing: AgeingModel = (
            ageing
            if ageing is not None
            else default_ageing(self.group_params, self.capacity_bol_ah, self.state.soc)
        )

    # ---------------------------------------------------------------- true state (read only)
    @property
    def n_cells(self) -> int:
        """Number of series cells (parallel groups)."""
        return self._n

    @property
    def cell_soc(self) -> FloatArray:
        """True SoC of every cell [fraction] (a copy)."""
        return self.state.soc.copy()

    @property
    def cell_voltage_v(self) -> FloatArray:
        """Terminal voltage of every cell at the end of the last step [V] (a copy)."""
        return self._cell_voltage_v.copy()

    @property
    def cell_temperature_degc(self) -> FloatArray:
        """Temperature of every cell [degC] (a copy)."""
        return self._temperature_degc.copy()

    @property
    def cell_capacity_ah(self) -> FloatArray:
        """Present capacity of every cell [Ah] (spread and fade applied; a copy)."""
        return self._capacity_ah.copy()

    @property
    def cell_soh(self) -> FloatArray:
        """Capacity state of health of every cell [fraction]: present / own beginning of life."""
        out: FloatArray = self._capacity_ah / self.capacity_bol_ah
        return out

    @property
    def cell_resistance_scale(self) -> FloatArray:
        """Resistance multiplier of every cell [1] (spread times ageing growth; a copy)."""
        return self._r_scale.copy()

    @property
    def cell_voltage_min_seen_v(self) -> FloatArray:
        """Lowest terminal voltage each cell has reached (end of steps) [V] (a copy)."""
        return self._v_min_seen.copy()

    @property
    def cell_voltage_max_seen_v(self) -> FloatArray:
        """Highest terminal voltage each cell has reached (end of steps) [V] (a copy)."""
        return self._v_max_seen.copy()

    @property
    def voltage_min_seen_v(self) -> float:
        """Lowest cell voltage seen in the run [V]."""
        return float(self._v_min_seen.min())

    @property
    def voltage_max_seen_v(self) -> float:
        """Highest cell voltage seen in the run [V]."""
        return float(self._v_max_seen.max())

    @property
    def coolant_module_degc(self) -> FloatArray:
        """Coolant temperature at each module [degC], shape ``(n_strings, modules_per_string)``."""
        return self._coolant_module_degc.copy()

    @property
    def current_a(self) -> float:
        """Pack current of the last step [A], positive = discharge."""
        return self._current_a

    @property
    def string_current_a(self) -> FloatArray:
        """String currents of the last step [A] (a copy)."""
        return self._string_current_a.copy()

    def _string_voltages(self) -> FloatArray:
        sv = self._string_voltage_v
        if sv is None:
            sv = self._cell_voltage_v.reshape(self._ns, self._nser).sum(axis=1)
            self._string_voltage_v = sv
        return sv

    @property
    def string_voltage_v(self) -> FloatArray:
        """Terminal voltage of each string at the end of the last step [V]."""
        return self._string_voltages().copy()

    @property
    def pack_voltage_v(self) -> float:
        """Bus voltage at the end of the last step [V] (mean of the string voltages)."""
        sv = self._string_voltages()
        return float(sv[0]) if self._ns == 1 else float(sv.sum()) / self._ns

    @property
    def cell_temperature_range_degc(self) -> tuple[float, float]:
        """Lowest and highest cell temperature now [degC]."""
        tr = self._temperature_range
        if tr is None:
            t = self._temperature_degc
            tr = (float(t.min()), float(t.max()))
            self._temperature_range = tr
        return tr

    def cell_temperature_at(self, cells: IntArray) -> FloatArray:
        """Temperature of the given cells [degC] (a new array).

        Parameters
        ----------
        cells : numpy.ndarray of int
            Cell indices.

        Returns
        -------
        numpy.ndarray
            Their temperatures.
        """
        out: FloatArray = self._temperature_degc[cells]
        return out

    @property
    def soc(self) -> float:
        """Capacity-weighted mean SoC of all cells [fraction]."""
        q = self._capacity_ah
        return float((self.state.soc * q).sum() / q.sum())

    @property
    def capacity_ah(self) -> float:
        """Charge capacity of the pack [Ah]: per string its weakest cell, strings summed."""
        return float(self._capacity_ah.reshape(self._ns, self._nser).min(axis=1).sum())

    @property
    def soh(self) -> float:
        """Pack capacity state of health [fraction]: present / beginning-of-life capacity."""
        bol = self.capacity_bol_ah.reshape(self._ns, self._nser).min(axis=1).sum()
        return self.capacity_ah / float(bol)

    def stored_energy_j(self) -> float:
        """Chemical energy stored in all cells now [J]."""
        return float(self._cell_stored_energy_j().sum())

    def _cell_stored_energy_j(self) -> FloatArray:
        now = self._stored_now_j
        if now is None:
            now = self.model.stored_energy_j(self.state.soc, self._capacity_ah)
            self._stored_now_j = now
        return now

    # ---------------------------------------------------------------- electrical equivalents
    def set_cell_soc(self, soc: FloatArray | float) -> None:
        """Overwrite the true SoC of the cells (test and scenario set-up).

        The chemical-energy change is booked into ``stored_start_j`` so the energy balance
        keeps closing; RC and hysteresis states are kept.

        Parameters
        ----------
        soc : numpy.ndarray or float
            New SoC [fraction], scalar or shape ``(n_cells,)``; clipped to [0, 1].
        """
        new = np.clip(np.broadcast_to(np.asarray(soc, dtype=np.float64), (self._n,)), 0.0, 1.0)
        before = self.model.stored_energy_j(self.state.soc, self._capacity_ah)
        after = self.model.stored_energy_j(new, self._capacity_ah)
        self._stored_start_j = self._stored_start_j + (after - before)
        self.state.soc = new.copy()
        self.invalidate()
        self._stored_now_j = after

    def invalidate(self) -> None:
        """Drop cached lookups; call after changing ``state`` or temperatures in place."""
        self._drop_electrical_caches()
        self._stored_now_j = None
        self._temperature_range = None
        self.model.forget()

    def _drop_electrical_caches(self) -> None:
        self._thev_cache = None
        self._string_thev_cache = None
        self._pack_thev_cache = None

    def _cell_tables(self) -> FloatArray:
        return self.model.tables(self.state.soc, self._ecm_temperature_degc)

    def _cell_thevenin(self) -> tuple[FloatArray, FloatArray]:
        if self._thev_cache is None:
            # As CellModel.thevenin, from the shared lookup.
            tab = self._cell_tables()
            e = tab[0] + tab[1] * self.state.hysteresis - self.state.v_rc.sum(axis=0)
            self._thev_cache = (e, tab[2] * self._r_scale)
        return self._thev_cache

    def _string_step_thevenin(self, dt_s: float) -> tuple[FloatArray, FloatArray]:
        """String equivalents for the END of a step of ``dt_s`` at constant current.

        Linearised end-of-step voltage of each cell, ``v1 = e1 - r1 i`` with the RC pairs
        relaxing over the step (``decay_k = exp(-dt / tau_k)``, reference temperature) and
        the OCV moving along its slope with the charge ``i dt``::

            e1 = e + sum_k v_k (1 - decay_k)
            r1 = r0 + sum_k R_k (1 - decay_k) + (dOCV/dSoC) dt / (3600 Q)

        Sharing the current with these makes the split implicit (backward Euler): stable for
        any step, where the instantaneous equivalents would make strings at different SoC
        pump ever larger currents into each other over long steps.
        """
        tab = self._cell_tables()
        e, r = self._cell_thevenin()
        if self._rc_decay_dt != dt_s:
            self._rc_decay_dt = dt_s
            self._rc_one_minus_decay = -np.expm1(-dt_s / self._rc_tau_ref_s)
            self._slope_dt = self._ocv_slope_ref * (dt_s / 3600.0)
        om = self._rc_one_minus_decay
        e1 = e + om @ self.state.v_rc
        seg = (self.state.soc * self._n_soc_seg).astype(np.intp)  # SoC 1 -> the padded slot
        r_ocv = self._slope_dt[seg] / self._capacity_ah
        r1 = r + (om @ tab[3:]) * self._r_scale + r_ocv
        e_s: FloatArray = e1.reshape(self._ns, self._nser).sum(axis=1)
        r_s: FloatArray = r1.reshape(self._ns, self._nser).sum(axis=1)
        return e_s, r_s

    def string_thevenin(self) -> tuple[FloatArray, FloatArray]:
        """Thevenin equivalent of each string now.

        Returns
        -------
        tuple of numpy.ndarray
            Source voltage [V] and resistance [ohm] of each string, shape ``(n_strings,)``.
        """
        if self._string_thev_cache is None or self._thev_cache is None:
            e, r = self._cell_thevenin()
            e_s: FloatArray = e.reshape(self._ns, self._nser).sum(axis=1)
            r_s: FloatArray = r.reshape(self._ns, self._nser).sum(axis=1)
            self._string_thev_cache = (e_s, r_s)
            self._pack_thev_cache = None
        return self._string_thev_cache

    def thevenin(self) -> tuple[float, float]:
        """Thevenin equivalent of the pack now (strings in parallel).

        A converter solves ``P = (E - R I) I`` for the DC current ``I`` it must draw.

        Returns
        -------
        tuple of float
            Source voltage ``E`` [V] and series resistance ``R`` [ohm].
        """
        e_s, r_s = self.string_thevenin()
        cached = self._pack_thev_cache
        if cached is not None:
            return cached
        if self._ns == 1:
            out = (float(e_s[0]), float(r_s[0]))
        else:
            g = 1.0 / r_s
            g_sum = float(g.sum())
            out = (float((e_s * g).sum()) / g_sum, 1.0 / g_sum)
        self._pack_thev_cache = out
        return out

    # ---------------------------------------------------------------- faults and cooling
    def _update_coolant_network(self) -> None:
        ua = self._g_coolant.reshape(self._ns, self.topology.modules_per_string, -1).sum(axis=2)
        k, w = coolant_flow_matrix(ua, self._coolant_rate_w_per_k)
        self._coolant_matrix: FloatArray = k
        self._coolant_inlet_weight: FloatArray = w
        self._ua_module_safe: FloatArray = np.where(ua > 0.0, ua, 1.0)
        self._thermal_version += 1

    def _coolant_inlet_degc(self) -> float:
        c = self.cooling.coolant_degc
        return self.ambient_degc if c is None else float(c)

    def _refresh_faults(self, time_s: float) -> None:
        inj = self.faults
        if inj is None or len(inj) == 0:
            if self._fault_key:
                self._short_conductance_s[:] = 0.0
                self._g_coolant[:] = self._g_coolant_base
                self._update_coolant_network()
                self._fault_key = ()
            return
        active = [
            f
            for f in inj.active(time_s)
            if f.kind in (FaultKind.INTERNAL_SHORT, FaultKind.COOLING_FAILURE)
        ]
        key = (inj.version, *((f.kind, f.target) for f in active))
        if key == self._fault_key:
            return
        self._fault_key = key
        self._short_conductance_s[:] = 0.0
        self._g_coolant[:] = self._g_coolant_base
        for f in active:
            if f.kind is FaultKind.INTERNAL_SHORT:
                self._short_conductance_s[f.target] = 1.0 / f.params["resistance_ohm"]
            else:
                sl = slice(f.target * self._nser, (f.target + 1) * self._nser)
                self._g_coolant[sl] = self._g_coolant_base[sl] * f.params["remaining_fraction"]
        self._update_coolant_network()

    # ---------------------------------------------------------------- the step
    def step(
        self,
        current_a: float,
        dt_s: float,
        ambient_degc: float | None = None,
        balancing: BoolArray | None = None,
        bleed_resistance_ohm: float = 33.0,
        *,
        time_s: float | None = None,
    ) -> PackStep:
        """Advance the pack by ``dt_s`` with the pack current held constant.

        Parameters
        ----------
        current_a : float
            Total pack current [A], positive = discharge.
        dt_s : float
            Step [s], > 0.
        ambient_degc : float, optional
            Ambient temperature during the step [degC]; None keeps the last one.
        balancing : numpy.ndarray of bool, optional
            Per cell: bleed resistor switched on, shape ``(n_cells,)``.
        bleed_resistance_ohm : float
            Bleed resistor [ohm], > 0.
        time_s : float, optional
            Start time of the step [s, Unix UTC] (faults are evaluated at it); None continues
            the pack's own clock.

        Returns
        -------
        PackStep
            Currents, voltages and energy terms of the step.

        Raises
        ------
        ValueError
            Non-finite current, ``dt_s <= 0``, balancing mask of the wrong shape or a
            non-positive bleed resistance.
        """
        if not math.isfinite(current_a):
            raise ValueError(f"current_a must be finite, got {current_a!r}")
        if not dt_s > 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s!r}")
        if time_s is not None:
            self.time_s = float(time_s)
        if ambient_degc is not None:
            if not math.isfinite(ambient_degc):
                raise ValueError(f"ambient_degc must be finite, got {ambient_degc!r}")
            self.ambient_degc = float(ambient_degc)
        self._refresh_faults(self.time_s)
        n, ns, nser = self._n, self._ns, self._nser

        # 1. Current sharing between strings on the common bus.
        e_pack, r_pack = self.thevenin()
        bus_v = e_pack - r_pack * current_a
        if ns == 1:
            string_i = np.array([float(current_a)])
            cell_i = self._cell_current_buffer
            cell_i.fill(current_a)  # read only by the cell step
        else:
            e_s, r_s = self._string_step_thevenin(dt_s)
            string_i, _ = share_current(float(current_a), e_s, r_s)
            cell_i = np.repeat(string_i, nser)

        # 2. Leakage: self-discharge, internal shorts, balancing bleed (at the start voltage).
        v_prev = self._cell_voltage_v
        internal_a = self._self_discharge_a
        if self._fault_key:
            internal_a = internal_a + self._short_conductance_s * np.maximum(v_prev, 0.0)
        bleed_a: FloatArray | None = None
        if balancing is not None:
            mask = np.asarray(balancing, dtype=np.bool_)
            if mask.shape != (n,):
                raise ValueError(f"balancing must have shape ({n},), got {mask.shape}")
            if not bleed_resistance_ohm > 0:
                raise ValueError(f"bleed_resistance_ohm must be > 0, got {bleed_resistance_ohm!r}")
            if mask.any():  # no resistor on: exactly the same as no mask
                bleed_a = np.where(mask, np.maximum(v_prev, 0.0) / bleed_resistance_ohm, 0.0)
        leak_a = internal_a if bleed_a is None else internal_a + bleed_a

        # 3. Thermal, every step or every ``thermal_interval_s`` with the heat accumulated
        # (the cells' heat of the step is added to ``_heat_pending_j``).
        pending_s = self._thermal_pending_s + dt_s
        due = pending_s >= self.thermal_interval_s
        if self.compiled:  # cells and (when due) thermal in one call
            dc_energy_j, cell_heat_j, self_discharge_j, bleed_j = self._step_compiled(
                cell_i, dt_s, leak_a, bleed_a, pending_s if due else 0.0
            )
            self._thermal_pending_s = 0.0 if due else pending_s
        else:
            dc_energy_j, cell_heat_j, self_discharge_j, bleed_j = self._step_cells(
                cell_i, dt_s, leak_a, bleed_a
            )
            self._thermal_pending_s = pending_s
            if due:
                self._thermal_update(self._heat_pending_j, pending_s)
                self._heat_pending_j.fill(0.0)
                self._thermal_pending_s = 0.0
        self._string_current_a = string_i
        self._current_a = float(current_a)

        # 4. Ageing window (temperature and SoC are sampled by the thermal updates).
        self._win_elapsed_s += dt_s
        if ns == 1:
            self._win_string_as += abs(float(current_a)) * dt_s
        else:
            self._win_string_as += np.abs(string_i) * dt_s
        self.time_s += dt_s
        if self._win_elapsed_s >= self.ageing_window_s:
            self._apply_ageing()

        string_v = self._string_voltages()
        return PackStep(
            current_a=float(current_a),
            string_current_a=string_i,
            bus_voltage_start_v=bus_v,
            pack_voltage_v=self.pack_voltage_v,
            string_voltage_v=string_v.copy(),
            dc_energy_j=dc_energy_j,
            cell_heat_j=cell_heat_j,
            self_discharge_j=self_discharge_j,
            bleed_j=bleed_j,
        )

    def _step_cells(
        self, cell_i: FloatArray, dt_s: float, leak_a: FloatArray, bleed_a: FloatArray | None
    ) -> tuple[float, float, float, float]:
        """Step the cells with :func:`openbess.cell.ecm.step` (the numpy reference) and book
        the energy terms; return the pack's terminal energy, cell heat, self-discharge and
        bleed energy of the step [J]."""
        res = ecm.step(
            self.model,
            self.state,
            cell_i,
            dt_s,
            self._ecm_temperature_degc,
            self._capacity_ah,
            self._r_scale,
            leak_a,
            stored_energy_start_j=self._cell_stored_energy_j(),
        )
        self._stored_now_j = res.stored_energy_end_j
        self._drop_electrical_caches()
        if res.source_voltage_end_v is not None and res.resistance_end_ohm is not None:
            # The end-of-step Thevenin equivalent, valid while the ECM temperature is held.
            self._thev_cache = (res.source_voltage_end_v, res.resistance_end_ohm)

        # Split the leak energy between the bleed resistors and the cells (proportional to the
        # currents: the leak draws energy linearly in its current).
        if bleed_a is not None:
            share = bleed_a / np.maximum(leak_a, 1e-300)  # 0 where there is no leak at all
            bleed_j = res.leak_energy_j * share
            sd_j = res.leak_energy_j - bleed_j
            self._bleed_j += bleed_j
        else:
            bleed_j = None
            sd_j = res.leak_energy_j
        self._heat_pending_j += res.heat_j + sd_j
        self._dc_out_j += res.terminal_energy_j
        self._cell_heat_j += res.heat_j
        self._self_discharge_j += sd_j

        v = res.voltage_v
        self._cell_voltage_v = v
        self._string_voltage_v = None
        np.minimum(self._v_min_seen, v, out=self._v_min_seen)
        np.maximum(self._v_max_seen, v, out=self._v_max_seen)
        return (
            float(res.terminal_energy_j.sum()),
            float(res.heat_j.sum()),
            float(sd_j.sum()),
            0.0 if bleed_j is None else float(bleed_j.sum()),
        )

    def _step_compiled(
        self,
        cell_i: FloatArray,
        dt_s: float,
        leak_a: FloatArray,
        bleed_a: FloatArray | None,
        thermal_s: float,
    ) -> list[float]:
        """:meth:`_step_cells` and (``thermal_s > 0``) :meth:`_thermal_update` over
        ``thermal_s`` with the pending heat, in one compiled call (same arithmetic); returns
        the pack's terminal energy, cell heat, self-discharge and bleed energy of the step."""
        n, ns = self._n, self._ns
        model = self.model
        temp = self._ecm_temperature_degc
        state = self.state
        row_offset, ft = model.kernel_weights(temp)
        decay, weight = model.rc_decay(temp, dt_s)
        n_rc = decay.shape[0]
        block = np.empty((10 + n_rc + model.n_tables, n))
        out, v_rc1, look1 = block[:9], block[9 : 9 + n_rc], block[9 + n_rc :]
        strings = np.empty((3, ns))
        totals = np.empty(7)
        thermal = self._thermal_coefficients(thermal_s if thermal_s > 0.0 else dt_s)
        coolant = np.empty((ns, self.topology.modules_per_string))
        _pack_kernel(
            model._coef_cells,
            model._ns,
            row_offset,
            ft,
            model._energy_coef,
            state.soc,
            state.v_rc,
            state.hysteresis,
            cell_i,
            float(dt_s),
            self._capacity_ah,
            self._r_scale,
            leak_a,
            model.coulombic_efficiency(temp),
            decay,
            weight,
            float(model.params.hysteresis_rate),
            self._cell_stored_energy_j(),
            leak_a if bleed_a is None else bleed_a,
            bleed_a is not None,
            self._nser,
            out,
            v_rc1,
            look1,
            self._dc_out_j,
            self._cell_heat_j,
            self._self_discharge_j,
            self._bleed_j,
            self._heat_pending_j,
            self._v_min_seen,
            self._v_max_seen,
            strings,
            totals,
            float(thermal_s),
            self._temperature_degc,
            self._g_coolant,
            self._ua_module_safe,
            self._coolant_matrix,
            self._coolant_inlet_weight,
            self._coolant_inlet_degc(),
            self.ambient_degc,
            self.topology.cells_series_per_module,
            thermal.w_coolant,
            thermal.w_ambient,
            thermal.inv_power_conductance,
            thermal.decay,
            thermal.mean_fraction,
            thermal.gc_dt,
            thermal.ga_dt,
            temp,
            block[-1],
            coolant,
            self._to_coolant_j,
            self._to_ambient_j,
            self._win_temp_ks,
            self._win_soc_s,
        )
        soc1 = out[0]
        state.soc = soc1
        state.hysteresis = out[1]
        state.v_rc = v_rc1
        model.remember(soc1, temp, look1)
        self._stored_now_j = out[5]
        self._cell_voltage_v = out[8]
        self._thev_cache = (out[6], out[7])
        self._string_thev_cache = (strings[1], strings[2])
        self._pack_thev_cache = None
        self._string_voltage_v = strings[0]
        values: list[float] = totals.tolist()
        if thermal_s > 0.0:
            self._thermal_done(block[-1], coolant, values[4], values[5], values[6], thermal_s)
        return values[:4]

    def _thermal_coefficients(self, duration_s: float) -> ThermalCoefficients:
        key = (duration_s, self._thermal_version)
        thermal = self._thermal
        if thermal is None or self._thermal_key != key:
            thermal = ThermalCoefficients.build(
                duration_s, self._heat_capacity_j_per_k, self._g_coolant, self._g_ambient
            )
            self._thermal = thermal
            self._thermal_key = key
        return thermal

    def _thermal_done(
        self,
        t1: FloatArray,
        coolant: FloatArray,
        t_min: float,
        t_max: float,
        drift: float,
        duration_s: float,
    ) -> None:
        """Take the compiled thermal update's results."""
        self._temperature_degc = t1
        self._coolant_module_degc = coolant
        self._temperature_range = (t_min, t_max)
        self._win_sampled_s += duration_s
        if drift > self.ecm_temperature_tolerance_k:
            self._ecm_temperature_degc = t1.copy()
            self._drop_electrical_caches()

    def _thermal_update(self, heat_j: FloatArray, duration_s: float) -> None:
        """Advance the cell temperatures by ``duration_s`` with ``heat_j`` released evenly."""
        thermal = self._thermal_coefficients(duration_s)
        if not self.compiled:
            self._thermal_update_numpy(thermal, heat_j, duration_s)
            return
        t1 = np.empty(self._n)
        coolant = np.empty((self._ns, self.topology.modules_per_string))
        t_min, t_max, drift = _thermal_kernel(
            self._temperature_degc,
            heat_j,
            float(duration_s),
            self._g_coolant,
            self._ua_module_safe,
            self._coolant_matrix,
            self._coolant_inlet_weight,
            self._coolant_inlet_degc(),
            self.ambient_degc,
            self.topology.cells_series_per_module,
            thermal.w_coolant,
            thermal.w_ambient,
            thermal.inv_power_conductance,
            thermal.decay,
            thermal.mean_fraction,
            thermal.gc_dt,
            thermal.ga_dt,
            self.state.soc,
            self._ecm_temperature_degc,
            t1,
            coolant,
            self._to_coolant_j,
            self._to_ambient_j,
            self._win_temp_ks,
            self._win_soc_s,
        )
        self._thermal_done(t1, coolant, t_min, t_max, drift, duration_s)

    def _thermal_update_numpy(
        self, thermal: ThermalCoefficients, heat_j: FloatArray, duration_s: float
    ) -> None:
        """The numpy reference of :meth:`_thermal_update`."""
        ns = self._ns
        temp0 = self._temperature_degc
        # Coolant along the flow path, from the start temperatures.
        inlet = self._coolant_inlet_degc()
        gt = (self._g_coolant * temp0).reshape(ns, self.topology.modules_per_string, -1)
        t_module = gt.sum(axis=2) / self._ua_module_safe
        coolant = np.matmul(self._coolant_matrix, t_module[:, :, None])[:, :, 0]
        coolant += self._coolant_inlet_weight * inlet
        self._coolant_module_degc = coolant
        coolant_cell = np.repeat(coolant.ravel(), self.topology.cells_series_per_module)
        t1, q_cool, q_amb = thermal.apply(temp0, heat_j, coolant_cell, self.ambient_degc)
        self._temperature_degc = t1
        self._temperature_range = None
        self._to_coolant_j += q_cool
        self._to_ambient_j += q_amb
        self._win_temp_ks += temp0 * duration_s
        self._win_soc_s += self.state.soc * duration_s
        self._win_sampled_s += duration_s
        ecm_temp = self._ecm_temperature_degc
        drift = t1 - ecm_temp
        np.abs(drift, out=drift)
        if float(drift.max()) > self.ecm_temperature_tolerance_k:
            self._ecm_temperature_degc = t1.copy()
            self._drop_electrical_caches()

    # ---------------------------------------------------------------- ageing
    def _apply_ageing(self) -> None:
        """Apply the ageing model to the closed window and reset it."""
        dt = self._win_elapsed_s
        sampled = self._win_sampled_s
        if sampled > 0:
            mean_t = self._win_temp_ks / sampled
            mean_soc = self._win_soc_s / sampled
        else:
            mean_t = self._temperature_degc.copy()
            mean_soc = self.state.soc.copy()
        self._win_sampled_s = 0.0
        throughput_ah = np.repeat(self._win_string_as, self._nser) / 3600.0
        self._win_elapsed_s = 0.0
        self._win_temp_ks[:] = 0.0
        self._win_soc_s[:] = 0.0
        self._win_string_as[:] = 0.0
        fade, growth = self.ageing.advance(dt, mean_t, mean_soc, self.state.soc, throughput_ah)
        self.set_ageing(fade, growth)

    def close_ageing(self) -> None:
        """Apply the open ageing window and book open half-cycles (call at the end of a run)."""
        if self._win_elapsed_s > 0:
            self._apply_ageing()
        close = getattr(self.ageing, "close", None)
        if close is not None:
            fade, growth = close()
            self.set_ageing(fade, growth)

    def set_ageing(self, capacity_fade: FloatArray, resistance_growth: FloatArray) -> None:
        """Set the ageing of every cell; the stored-energy change is booked as capacity fade.

        The SoC of each cell is kept; the chemical energy lost with the capacity goes to the
        ``capacity_fade_j`` term of :meth:`energy_balance`.

        Parameters
        ----------
        capacity_fade : numpy.ndarray
            Capacity lost relative to the beginning of life [fraction], shape ``(n_cells,)``.
        resistance_growth : numpy.ndarray
            Resistance increase relative to the beginning of life [fraction], ``(n_cells,)``.
        """
        fade = np.clip(np.asarray(capacity_fade, dtype=np.float64), 0.0, 0.95)
        growth = np.maximum(np.asarray(resistance_growth, dtype=np.float64), 0.0)
        if fade.shape != (self._n,) or growth.shape != (self._n,):
            raise ValueError(f"ageing arrays must have shape ({self._n},)")
        e_before = self._cell_stored_energy_j()
        self._capacity_ah = self.capacity_bol_ah * (1.0 - fade)
        e_after = self.model.stored_energy_j(self.state.soc, self._capacity_ah)
        self._fade_j += e_before - e_after
        self._r_growth = growth
        self._r_scale = self._r_spread * (1.0 + growth)
        # The table lookups do not depend on capacity or resistance: only the equivalents go.
        self._drop_electrical_caches()
        self._stored_now_j = e_after

    # ---------------------------------------------------------------- accounting
    def energy_balance(self) -> EnergyBalance:
        """Energy accounting since the start [J]; the residual closes to rounding error.

        Returns
        -------
        EnergyBalance
            The terms and the residual.
        """
        now = self.model.stored_energy_j(self.state.soc, self._capacity_ah)
        per_cell = (self._stored_start_j - now) - (
            self._dc_out_j
            + self._cell_heat_j
            + self._self_discharge_j
            + self._bleed_j
            + self._fade_j
        )
        return EnergyBalance(
            stored_start_j=float(self._stored_start_j.sum()),
            stored_now_j=float(now.sum()),
            dc_out_j=float(self._dc_out_j.sum()),
            cell_heat_j=float(self._cell_heat_j.sum()),
            self_discharge_j=float(self._self_discharge_j.sum()),
            bleed_j=float(self._bleed_j.sum()),
            capacity_fade_j=float(self._fade_j.sum()),
            residual_j=float(per_cell.sum()),
        )

    def thermal_balance(self) -> ThermalBalance:
        """Heat accounting of the cells since the start [J].

        Returns
        -------
        ThermalBalance
            The terms and the residual.
        """
        generated = self._cell_heat_j + self._self_discharge_j
        sensible = self._heat_capacity_j_per_k * (
            self._temperature_degc - self._temperature_start_degc
        )
        pending = self._heat_pending_j
        per_cell = generated - self._to_coolant_j - self._to_ambient_j - sensible - pending
        return ThermalBalance(
            generated_j=float(generated.sum()),
            to_coolant_j=float(self._to_coolant_j.sum()),
            to_ambient_j=float(self._to_ambient_j.sum()),
            sensible_change_j=float(sensible.sum()),
            pending_j=float(pending.sum()),
            residual_j=float(per_cell.sum()),
        )

    def cell_heat_j(self) -> FloatArray:
        """Heat released in each cell since the start [J] (electrochemistry + self-discharge)."""
        out: FloatArray = self._cell_heat_j + self._self_discharge_j
        return out
