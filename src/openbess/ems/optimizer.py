"""Optimal battery schedule: a linear program built from sparse arrays and solved with HiGHS.

One call of :func:`optimize` plans the battery over a horizon of steps (any lengths, e.g. a
shorter first step in a receding horizon) from forecasts of load, PV and prices. The model is
built directly as a column-wise sparse matrix (scipy CSC) and passed to ``highspy`` in one
``passModel`` call: no modelling layer.

Model (per step ``t`` of length ``dt_t`` hours; powers in kW and energies in kWh inside, to keep
the coefficients near 1)::

    variables  c_t, d_t      battery AC charge / discharge power        [0, limit_t]
               g_t, x_t      grid import / export                       [0, grid limit]
               u_t           PV curtailed                               [0, pv_t]
               e_t           stored energy at the end of step t         [soc_min, soc_max] * E
               p             peak import (only with a demand charge)
    balance    g_t - x_t + d_t - c_t - u_t = load_t - pv_t
    energy     e_t = e_{t-1} + (eta_c c_t - d_t / eta_d) dt_t
    peak       g_t <= p
    objective  sum dt_t (price_imp_t g_t - price_exp_t x_t)          energy cost
             + sum dt_t k_deg (c_t + d_t)                              degradation
             + k_dem p                                                 demand charge
             - v_end (e_T - e_0)                                       value of energy left
             + penalties * slacks                                      relaxed requests

Never infeasible: every requirement that can conflict with the physics or with another one is
soft, with a priced slack that the result reports (:class:`Relaxation`): the SoC window when
the battery starts outside it, the reserve ("hold capacity") when it starts below it, a target
SoC by a deadline, a hard end SoC (``final_soc``) and the import limit when the load alone
exceeds it. Holding the battery idle is always a feasible point of the remaining constraints.

Physically valid: charging and discharging in the same step (or importing and exporting) is
never optimal in the linear program unless a price makes burning energy profitable (a negative
import price, or an import price below the export price). Only at such steps, and only then,
binary variables forbid it (a small MIP); a check after every solve adds binaries where the
LP still did it (degenerate ties) and solves again.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openbess.cell.ageing import ageing_params, cycle_rate
from openbess.ems.realtime import EventLike
from openbess.errors import ConfigError

if TYPE_CHECKING:
    from openbess.cell.params import CellParams
    from openbess.config import SiteConfig
    from openbess.contract import Telemetry

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Columns of a plan's inputs (:meth:`PlanInputs.from_frame`) and of ``openbess plan --inputs``.
INPUT_COLUMNS = ("load_w", "pv_w", "import_price_eur_per_kwh", "export_price_eur_per_kwh")
#: A step with both flows above this [kW] counts as simultaneous (1 W).
SIMULTANEITY_TOL_KW = 1e-3
#: Slack below this [kWh or kW] is numerical noise, not a relaxation.
SLACK_TOL = 1e-6
#: Re-solves with more binaries after a simultaneity check, at most.
MAX_BINARY_ROUNDS = 3


class OptimizerConfig(BaseModel):
    """Planner settings (the ``[optimizer]`` table of a site file); every field has a default.

    Penalties price the slack of relaxed requests: state penalties (SoC window, reserve) are
    per kWh of shortfall and per hour it lasts; the others per kWh (or per kW for the peak).
    They must exceed any price gain so that a request is only relaxed when it cannot be met.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_s: float = Field(900.0, gt=0, le=86400)
    horizon_s: float = Field(86400.0, gt=0, le=31 * 86400)
    degradation_cost_eur_per_kwh: float | None = Field(None, ge=0, le=10)
    battery_price_eur_per_kwh: float = Field(400.0, ge=0, le=10000)
    end_of_life_soh: float = Field(0.8, gt=0, lt=1)
    terminal_value_eur_per_kwh: float | None = Field(None, ge=0, le=100)
    demand_charge_eur_per_kw: float = Field(0.0, ge=0, le=1000)
    demand_charge_peak_w: float = Field(0.0, ge=0)
    reserve_soc: float = Field(0.0, ge=0, le=1)
    target_soc: float | None = Field(None, ge=0, le=1)
    target_time: datetime | None = None
    allow_grid_charging: bool = True
    allow_battery_export: bool = True
    first_step_limits_s: float = Field(900.0, ge=0, le=86400)
    penalty_soc_window_eur_per_kwh_h: float = Field(100.0, gt=0)
    penalty_reserve_eur_per_kwh_h: float = Field(20.0, gt=0)
    penalty_target_eur_per_kwh: float = Field(10.0, gt=0)
    penalty_import_limit_eur_per_kwh: float = Field(50.0, gt=0)
    penalty_event_eur_per_kwh: float = Field(50.0, gt=0)
    mip_rel_gap: float = Field(1e-4, ge=0, le=0.5)
    time_limit_s: float = Field(10.0, gt=0, le=3600)
    replan_soc_deviation: float = Field(0.05, gt=0, le=1)

    @field_validator("target_time")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("target_time must carry a UTC offset, e.g. 2024-06-01T07:00+02:00")
        return v

    @model_validator(mode="after")
    def _target(self) -> OptimizerConfig:
        if (self.target_soc is None) != (self.target_time is None):
            raise ValueError("target_soc and target_time go together: give both or neither")
        return self


@dataclass(frozen=True)
class PlanInputs:
    """Forecasts over the horizon: one value per step, the step's average.

    Parameters
    ----------
    time_s : numpy.ndarray
        Start of each step [s, Unix UTC], strictly increasing.
    step_s : numpy.ndarray
        Length of each step [s], > 0 (contiguous: ``time_s[k+1] = time_s[k] + step_s[k]``).
    load_w : numpy.ndarray
        Building load [W], >= 0.
    pv_w : numpy.ndarray
        PV production available [W], >= 0.
    import_price_eur_per_kwh, export_price_eur_per_kwh : numpy.ndarray
        Prices [EUR/kWh]; negative values are allowed.
    """

    time_s: FloatArray
    step_s: FloatArray
    load_w: FloatArray
    pv_w: FloatArray
    import_price_eur_per_kwh: FloatArray
    export_price_eur_per_kwh: FloatArray

    def __post_init__(self) -> None:
        """Check shapes and values; raise ValueError naming the field."""
        n = np.asarray(self.time_s).size
        if n < 1:
            raise ValueError("PlanInputs needs at least one step")
        for name in ("time_s", "step_s", "load_w", "pv_w", *INPUT_COLUMNS[2:]):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if arr.size != n:
                raise ValueError(f"PlanInputs.{name} has {arr.size} values, expected {n}")
            if not np.isfinite(arr).all():
                k = int(np.flatnonzero(~np.isfinite(arr))[0])
                raise ValueError(f"PlanInputs.{name}[{k}] is not finite: {arr[k]!r}")
            object.__setattr__(self, name, arr)
        for name in ("load_w", "pv_w"):
            arr = getattr(self, name)
            if (arr < 0).any():
                k = int(np.flatnonzero(arr < 0)[0])
                raise ValueError(f"PlanInputs.{name}[{k}] is negative: {arr[k]!r}")
        if (self.step_s <= 0).any():
            raise ValueError("PlanInputs.step_s must be > 0")

    @property
    def n_steps(self) -> int:
        """Number of steps."""
        return int(self.time_s.size)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, step_s: float | None = None) -> PlanInputs:
        """Inputs from a DataFrame with the :data:`INPUT_COLUMNS` and a tz-aware time index.

        Parameters
        ----------
        frame : pandas.DataFrame
            One row per step, indexed by the step start (tz-aware).
        step_s : float or None
            Step length [s]; default: the spacing of the index (which must then be regular).

        Returns
        -------
        PlanInputs
            The inputs.

        Raises
        ------
        ValueError
            If a column is missing, the index is irregular or naive, or values are invalid.
        """
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"missing column(s) {missing}; have {list(frame.columns)}")
        index = pd.DatetimeIndex(frame.index)
        if index.tz is None:
            raise ValueError("the time index must be timezone-aware")
        t = index.as_unit("ns").asi8.astype(np.float64) / 1e9
        if step_s is None:
            if t.size < 2:
                raise ValueError("give step_s for a single-row frame")
            spacing = np.diff(t)
            step_s = float(spacing[0])
            if not np.allclose(spacing, step_s, rtol=0, atol=1e-6):
                raise ValueError("irregular time spacing: give step_s or resample")
        return cls(
            time_s=t,
            step_s=np.full(t.size, float(step_s)),
            **{c: frame[c].to_numpy(dtype=np.float64) for c in INPUT_COLUMNS},
        )


@dataclass(frozen=True)
class PlanScenarios:
    """Other possible load and PV trajectories, for a plan that hedges against forecast errors.

    Each scenario is the point forecast plus a deviation (e.g. the error the forecast made at
    the same time on an earlier day). The plan then minimises the expected cost over the point
    forecast and the scenarios (weights ``weights``, uniform by default) under one rule for the
    first step, the only one executed before the next plan: the battery power is
    ``planned + deviation_share * (net load - forecast net load)`` in every scenario, with one
    planned power and one share in ``[0, 1]`` chosen by the program. Later steps adapt to
    each scenario (they are re-planned anyway).

    Parameters
    ----------
    load_w, pv_w : numpy.ndarray
        Scenario load and PV per step [W], shape ``(n_scenarios, n_steps)``, >= 0.
    weights : numpy.ndarray or None
        Probabilities of the point forecast and of each scenario, shape
        ``(n_scenarios + 1,)``, summing to 1 (default: uniform).
    """

    load_w: FloatArray
    pv_w: FloatArray
    weights: FloatArray | None = None

    def __post_init__(self) -> None:
        """Check shapes and values; raise ValueError naming the field."""
        load = np.atleast_2d(np.asarray(self.load_w, dtype=np.float64))
        pv = np.atleast_2d(np.asarray(self.pv_w, dtype=np.float64))
        if load.shape != pv.shape:
            raise ValueError(f"PlanScenarios.pv_w has shape {pv.shape}, load_w {load.shape}")
        for name, arr in (("load_w", load), ("pv_w", pv)):
            if not np.isfinite(arr).all() or (arr < 0).any():
                raise ValueError(f"PlanScenarios.{name} must be finite and >= 0")
        object.__setattr__(self, "load_w", load)
        object.__setattr__(self, "pv_w", pv)
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
            if w.size != load.shape[0] + 1 or (w < 0).any() or abs(w.sum() - 1.0) > 1e-9:
                raise ValueError(
                    f"PlanScenarios.weights must be {load.shape[0] + 1} values >= 0 summing to 1"
                )
            object.__setattr__(self, "weights", w)

    @property
    def count(self) -> int:
        """Number of scenarios (besides the point forecast)."""
        return int(self.load_w.shape[0])

    def probabilities(self) -> FloatArray:
        """Weights of the point forecast and of each scenario."""
        if self.weights is not None:
            return self.weights
        return np.full(self.count + 1, 1.0 / (self.count + 1))


@dataclass(frozen=True)
class PlanBattery:
    """The battery as the planner sees it.

    Parameters
    ----------
    capacity_wh : float
        Usable energy at SoC 1 [Wh] (SoH-adjusted when taken from a Telemetry).
    soc_initial : float
        SoC at the start of the horizon [fraction]; may lie outside the window.
    soc_min, soc_max : float
        Operating window [fraction].
    max_charge_power_w, max_discharge_power_w : float
        AC ratings [W], magnitudes.
    charge_efficiency, discharge_efficiency : float
        One-way AC-to-stored and stored-to-AC efficiencies [fraction].
    first_charge_power_w, first_discharge_power_w : float or None
        Present BMS limits [W] for the first ``first_limits_s`` of the horizon (None: ratings).
    first_limits_s : float
        How long the present limits apply [s]; every step starting before it uses them.
    """

    capacity_wh: float
    soc_initial: float
    soc_min: float
    soc_max: float
    max_charge_power_w: float
    max_discharge_power_w: float
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    first_charge_power_w: float | None = None
    first_discharge_power_w: float | None = None
    first_limits_s: float = 0.0

    def __post_init__(self) -> None:
        """Check values; raise ValueError naming the field."""
        checks = {
            "capacity_wh": self.capacity_wh > 0,
            "soc_initial": 0.0 <= self.soc_initial <= 1.0,
            "soc_min": 0.0 <= self.soc_min < self.soc_max,
            "soc_max": self.soc_max <= 1.0,
            "max_charge_power_w": self.max_charge_power_w >= 0,
            "max_discharge_power_w": self.max_discharge_power_w >= 0,
            "charge_efficiency": 0 < self.charge_efficiency <= 1,
            "discharge_efficiency": 0 < self.discharge_efficiency <= 1,
            "first_limits_s": self.first_limits_s >= 0,
        }
        for name, ok in checks.items():
            if not (ok and math.isfinite(float(getattr(self, name)))):
                raise ValueError(f"PlanBattery.{name} is invalid: {getattr(self, name)!r}")
        for name in ("first_charge_power_w", "first_discharge_power_w"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ValueError(f"PlanBattery.{name} must be >= 0, got {v!r}")


@dataclass(frozen=True)
class PlanRequest:
    """What the plan must respect and what it is worth, besides the battery and the prices.

    Parameters
    ----------
    max_import_w, max_export_w : float
        Grid connection limits [W] (``math.inf``: none).
    degradation_cost_eur_per_kwh : float
        Cost per kWh of AC throughput (charged plus discharged) [EUR/kWh].
    terminal_value_eur_per_kwh : float
        Value of each kWh stored at the end of the horizon [EUR/kWh].
    demand_charge_eur_per_kw : float
        Demand (capacity) charge on the highest import of the horizon [EUR/kW].
    demand_charge_peak_w : float
        Peak already reached in the billing period [W]: imports up to it are free of charge.
    reserve_soc : float
        SoC to hold at every step ("hold capacity") [fraction], 0 for none.
    target_soc : float or None
        SoC to reach at the end of step ``target_step`` [fraction].
    target_step : int or None
        Index of the step whose end is the deadline.
    final_soc : float or None
        Hard end SoC (instead of ``terminal_value``), relaxed only if unreachable.
    allow_grid_charging : bool
        False: charge only from the forecast PV surplus.
    allow_battery_export : bool
        False: export only the forecast PV surplus.
    penalty_soc_window_eur_per_kwh_h, penalty_reserve_eur_per_kwh_h : float
        Price of SoC window and reserve shortfalls [EUR per kWh and hour].
    penalty_target_eur_per_kwh : float
        Price of a target or final SoC shortfall [EUR/kWh].
    penalty_import_limit_eur_per_kwh : float
        Price of energy imported above the import limit [EUR/kWh].
    events : tuple of GridEvent
        Grid events (:class:`openbess.io.hub.GridEvent` or anything with its fields) to plan
        around: during each window the import and export are capped and the battery power is
        held as the event asks, averaged over the part of each step the window covers; each
        is relaxed by priced slack when it cannot be met.
    penalty_event_eur_per_kwh : float
        Price of energy by which a grid event is not met [EUR/kWh].
    mip_rel_gap : float
        Relative MIP gap when binaries are needed [fraction].
    time_limit_s : float
        Solver time limit [s].
    """

    max_import_w: float = math.inf
    max_export_w: float = math.inf
    degradation_cost_eur_per_kwh: float = 0.0
    terminal_value_eur_per_kwh: float = 0.0
    demand_charge_eur_per_kw: float = 0.0
    demand_charge_peak_w: float = 0.0
    reserve_soc: float = 0.0
    target_soc: float | None = None
    target_step: int | None = None
    final_soc: float | None = None
    allow_grid_charging: bool = True
    allow_battery_export: bool = True
    penalty_soc_window_eur_per_kwh_h: float = 100.0
    penalty_reserve_eur_per_kwh_h: float = 20.0
    penalty_target_eur_per_kwh: float = 10.0
    penalty_import_limit_eur_per_kwh: float = 50.0
    events: tuple[EventLike, ...] = ()
    penalty_event_eur_per_kwh: float = 50.0
    mip_rel_gap: float = 1e-4
    time_limit_s: float = 10.0

    def __post_init__(self) -> None:
        """Check values; raise ValueError naming the field."""
        nonneg = (
            "max_import_w",
            "max_export_w",
            "degradation_cost_eur_per_kwh",
            "terminal_value_eur_per_kwh",
            "demand_charge_eur_per_kw",
            "demand_charge_peak_w",
            "mip_rel_gap",
        )
        for name in nonneg:
            v = float(getattr(self, name))
            if math.isnan(v) or v < 0:
                raise ValueError(f"PlanRequest.{name} must be >= 0, got {v!r}")
        for name in ("reserve_soc", "target_soc", "final_soc"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"PlanRequest.{name} must be in [0, 1], got {v!r}")
        if (self.target_soc is None) != (self.target_step is None):
            raise ValueError("PlanRequest.target_soc and target_step go together")
        for name in (
            "penalty_soc_window_eur_per_kwh_h",
            "penalty_reserve_eur_per_kwh_h",
            "penalty_target_eur_per_kwh",
            "penalty_import_limit_eur_per_kwh",
            "penalty_event_eur_per_kwh",
            "time_limit_s",
        ):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"PlanRequest.{name} must be > 0, got {v!r}")
        object.__setattr__(self, "events", tuple(self.events))
        for k, e in enumerate(self.events):
            if not (math.isfinite(e.start_s) and math.isfinite(e.end_s) and e.start_s < e.end_s):
                raise ValueError(f"PlanRequest.events[{k}]: start_s must be finite and < end_s")
            for name in ("max_import_w", "max_export_w", "battery_power_w"):
                v = getattr(e, name)
                if v is not None and not math.isfinite(v):
                    raise ValueError(f"PlanRequest.events[{k}].{name} must be finite, got {v!r}")
                if v is not None and name != "battery_power_w" and v < 0:
                    raise ValueError(f"PlanRequest.events[{k}].{name} must be >= 0, got {v!r}")


@dataclass(frozen=True)
class Relaxation:
    """A requirement the plan could not meet, and by how much.

    Parameters
    ----------
    constraint : str
        ``soc_min``, ``soc_max``, ``reserve_soc``, ``target_soc``, ``final_soc``,
        ``import_limit``, or a grid event's ``event_import_limit``, ``event_export_limit``,
        ``event_battery_power``.
    max_violation : float
        Largest shortfall: SoC fraction for the SoC requirements, W for the power limits.
    energy_kwh : float
        Shortfall energy summed over the affected steps [kWh] (for SoC requirements: the
        shortfall at each step end; for the import limit: energy above it).
    steps : int
        Number of steps affected.
    first_step : int
        First step affected.
    penalty_eur : float
        Penalty paid in the objective [EUR].
    """

    constraint: str
    max_violation: float
    energy_kwh: float
    steps: int
    first_step: int
    penalty_eur: float

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-friendly form."""
        return {
            "constraint": self.constraint,
            "max_violation": self.max_violation,
            "energy_kwh": self.energy_kwh,
            "steps": self.steps,
            "first_step": self.first_step,
            "penalty_eur": self.penalty_eur,
        }


@dataclass(frozen=True)
class PlanResult:
    """An optimal schedule, per step, with its costs.

    Powers are step averages [W]; ``soc`` and ``energy_wh`` are at the END of each step.
    ``battery_power_w`` is AC, positive = discharge; grid import and export are both >= 0 and
    never both non-zero in a step (same for charge and discharge).

    A plan over scenarios (:class:`PlanScenarios`) is the plan of the point forecast whose first
    step is shared by every scenario; ``deviation_share`` is then the fraction of a first-step
    net-load deviation from the forecast that the battery takes (0: the grid takes it all, 1:
    the battery balances it), and ``scenarios`` their number (0 for a deterministic plan).
    """

    time_s: FloatArray
    step_s: FloatArray
    load_w: FloatArray
    pv_w: FloatArray
    import_price_eur_per_kwh: FloatArray
    export_price_eur_per_kwh: FloatArray
    battery_power_w: FloatArray
    charge_power_w: FloatArray
    discharge_power_w: FloatArray
    grid_import_w: FloatArray
    grid_export_w: FloatArray
    pv_curtailed_w: FloatArray
    soc: FloatArray
    energy_wh: FloatArray
    soc_initial: float
    capacity_wh: float
    peak_import_w: float
    objective_eur: float
    cost_eur: float
    baseline_cost_eur: float
    degradation_cost_eur: float
    demand_charge_eur: float
    terminal_value_eur: float
    penalty_eur: float
    solve_time_s: float
    status: str
    binaries: int
    relaxed: tuple[Relaxation, ...] = field(default_factory=tuple)
    deviation_share: float | None = None
    scenarios: int = 0

    @property
    def n_steps(self) -> int:
        """Number of steps."""
        return int(self.time_s.size)

    @property
    def grid_power_w(self) -> FloatArray:
        """Net grid power [W], positive = import."""
        out: FloatArray = self.grid_import_w - self.grid_export_w
        return out

    def step_at(self, time_s: float) -> int:
        """Index of the step containing ``time_s`` (clipped to the horizon).

        Parameters
        ----------
        time_s : float
            Time [s, Unix UTC].

        Returns
        -------
        int
            Step index in ``[0, n_steps - 1]``.
        """
        k = int(np.searchsorted(self.time_s, time_s, side="right")) - 1
        return min(max(k, 0), self.n_steps - 1)

    def soc_at(self, time_s: float) -> float:
        """Planned SoC at ``time_s`` (linear within a step) [fraction].

        Parameters
        ----------
        time_s : float
            Time [s, Unix UTC].

        Returns
        -------
        float
            The planned SoC.
        """
        k = self.step_at(time_s)
        start = self.soc_initial if k == 0 else float(self.soc[k - 1])
        frac = (time_s - float(self.time_s[k])) / float(self.step_s[k])
        frac = min(max(frac, 0.0), 1.0)
        return start + frac * (float(self.soc[k]) - start)

    def summary(self) -> dict[str, Any]:
        """The figures printed by ``openbess plan --json``.

        Returns
        -------
        dict
            ``objective_eur``, ``cost_eur``, ``baseline_cost_eur``, ``savings_eur``,
            ``solve_time_s``, ``relaxed`` and more (JSON-serialisable).
        """
        dt_h = self.step_s / 3600.0
        return {
            "objective_eur": self.objective_eur,
            "cost_eur": self.cost_eur,
            "baseline_cost_eur": self.baseline_cost_eur,
            "savings_eur": self.baseline_cost_eur - self.cost_eur,
            "degradation_cost_eur": self.degradation_cost_eur,
            "demand_charge_eur": self.demand_charge_eur,
            "terminal_value_eur": self.terminal_value_eur,
            "penalty_eur": self.penalty_eur,
            "solve_time_s": self.solve_time_s,
            "status": self.status,
            "binaries": self.binaries,
            "steps": self.n_steps,
            "grid_import_kwh": float(np.sum(self.grid_import_w * dt_h) / 1000.0),
            "grid_export_kwh": float(np.sum(self.grid_export_w * dt_h) / 1000.0),
            "battery_charge_kwh": float(np.sum(self.charge_power_w * dt_h) / 1000.0),
            "battery_discharge_kwh": float(np.sum(self.discharge_power_w * dt_h) / 1000.0),
            "pv_curtailed_kwh": float(np.sum(self.pv_curtailed_w * dt_h) / 1000.0),
            "peak_import_w": self.peak_import_w,
            "soc_initial": self.soc_initial,
            "soc_final": float(self.soc[-1]),
            "soc_min": float(self.soc.min()),
            "soc_max": float(self.soc.max()),
            "relaxed": [r.as_dict() for r in self.relaxed],
        }

    def to_frame(self) -> pd.DataFrame:
        """The plan as a table, one row per step, indexed by the step start (UTC).

        Returns
        -------
        pandas.DataFrame
            ``load_w``, ``pv_w``, prices, ``battery_power_w``, ``grid_import_w``,
            ``grid_export_w``, ``pv_curtailed_w``, ``soc`` (end of step).
        """
        ns = np.round(self.time_s * 1e9).astype(np.int64)
        index = pd.DatetimeIndex(pd.to_datetime(ns, unit="ns", utc=True), name="time")
        return pd.DataFrame(
            {
                "load_w": self.load_w,
                "pv_w": self.pv_w,
                "import_price_eur_per_kwh": self.import_price_eur_per_kwh,
                "export_price_eur_per_kwh": self.export_price_eur_per_kwh,
                "battery_power_w": self.battery_power_w,
                "grid_import_w": self.grid_import_w,
                "grid_export_w": self.grid_export_w,
                "pv_curtailed_w": self.pv_curtailed_w,
                "soc": self.soc,
            },
            index=index,
        )


# -- the model ---------------------------------------------------------------------------------


class _Builder:
    """Columns and rows of a sparse LP, collected as triplets then converted to CSC once."""

    def __init__(self) -> None:
        self.lower: list[FloatArray] = []
        self.upper: list[FloatArray] = []
        self.cost: list[FloatArray] = []
        self.n_col = 0
        self.rows: list[npt.NDArray[np.int64]] = []
        self.cols: list[npt.NDArray[np.int64]] = []
        self.vals: list[FloatArray] = []
        self.row_lower: list[FloatArray] = []
        self.row_upper: list[FloatArray] = []
        self.n_row = 0

    def add_cols(
        self, n: int, lower: npt.ArrayLike, upper: npt.ArrayLike, cost: npt.ArrayLike = 0.0
    ) -> npt.NDArray[np.int64]:
        idx = np.arange(self.n_col, self.n_col + n, dtype=np.int64)
        self.lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)))
        self.upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)))
        self.cost.append(np.broadcast_to(np.asarray(cost, dtype=np.float64), (n,)))
        self.n_col += n
        return idx

    def add_rows(self, lower: npt.ArrayLike, upper: npt.ArrayLike, n: int) -> npt.NDArray[np.int64]:
        idx = np.arange(self.n_row, self.n_row + n, dtype=np.int64)
        self.row_lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)))
        self.row_upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)))
        self.n_row += n
        return idx

    def coef(self, rows: npt.ArrayLike, cols: npt.ArrayLike, vals: npt.ArrayLike) -> None:
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        c = np.asarray(cols, dtype=np.int64).reshape(-1)
        v = np.broadcast_to(np.asarray(vals, dtype=np.float64), r.shape).reshape(-1)
        self.rows.append(r)
        self.cols.append(c)
        self.vals.append(v)


_BANNER_SILENCED = False


def _new_highs() -> Any:
    """A silent HiGHS instance (the first construction in a process prints a banner on fd 1)."""
    global _BANNER_SILENCED
    import highspy

    _HIGHS_CLASS: Any = highspy.Highs
    if _BANNER_SILENCED:
        h = _HIGHS_CLASS()
    else:
        _BANNER_SILENCED = True
        try:
            sys.stdout.flush()
            saved = os.dup(1)
        except (OSError, ValueError):
            h = _HIGHS_CLASS()
        else:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
                h = _HIGHS_CLASS()
                with contextlib.suppress(OSError, AttributeError):
                    ctypes.CDLL(None).fflush(None)  # flush C stdio while fd 1 is /dev/null
            finally:
                os.dup2(saved, 1)
                os.close(saved)
                os.close(devnull)
    h.setOptionValue("output_flag", False)
    return h


@dataclass
class _Model:
    n: int
    builder: _Builder
    c: npt.NDArray[np.int64]
    d: npt.NDArray[np.int64]
    g: npt.NDArray[np.int64]
    x: npt.NDArray[np.int64]
    u: npt.NDArray[np.int64]
    e: npt.NDArray[np.int64]
    peak: int | None
    slack: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], float]]
    offset: float
    cd_limits: tuple[FloatArray, FloatArray]
    grid_limits: tuple[float, float]
    balance_rows: npt.NDArray[np.int64]


def _power_limits_kw(inputs: PlanInputs, battery: PlanBattery) -> tuple[FloatArray, FloatArray]:
    n = inputs.n_steps
    chg = np.full(n, battery.max_charge_power_w / 1000.0)
    dis = np.full(n, battery.max_discharge_power_w / 1000.0)
    starts = np.concatenate(([0.0], np.cumsum(inputs.step_s)[:-1]))
    early = starts < battery.first_limits_s  # the first step is early when the time is > 0
    if battery.first_charge_power_w is not None:
        chg[early] = np.minimum(chg[early], battery.first_charge_power_w / 1000.0)
    if battery.first_discharge_power_w is not None:
        dis[early] = np.minimum(dis[early], battery.first_discharge_power_w / 1000.0)
    return chg, dis


def _build(inputs: PlanInputs, battery: PlanBattery, req: PlanRequest) -> _Model:
    n = inputs.n_steps
    b = _Builder()
    dt_h = inputs.step_s / 3600.0
    load = inputs.load_w / 1000.0
    pv = inputs.pv_w / 1000.0
    p_imp = inputs.import_price_eur_per_kwh
    p_exp = inputs.export_price_eur_per_kwh
    cap = battery.capacity_wh / 1000.0
    e0 = battery.soc_initial * cap
    e_min, e_max = battery.soc_min * cap, battery.soc_max * cap
    eta_c, eta_d = battery.charge_efficiency, battery.discharge_efficiency
    g_max = req.max_import_w / 1000.0
    x_max = req.max_export_w / 1000.0
    chg_max, dis_max = _power_limits_kw(inputs, battery)
    if not req.allow_grid_charging:
        chg_max = np.minimum(chg_max, np.maximum(pv - load, 0.0))
    deg = req.degradation_cost_eur_per_kwh * dt_h

    c = b.add_cols(n, 0.0, chg_max, deg)
    d = b.add_cols(n, 0.0, dis_max, deg)
    g = b.add_cols(n, 0.0, g_max, p_imp * dt_h)
    x_upper = np.full(n, x_max)
    if not req.allow_battery_export:
        x_upper = np.minimum(x_upper, np.maximum(pv - load, 0.0))
    x = b.add_cols(n, 0.0, x_upper, -p_exp * dt_h)
    u = b.add_cols(n, 0.0, pv, 0.0)

    # SoC window and reserve: hard when the battery starts inside (idle stays inside), else
    # soft rows with priced slack, so that a battery starting outside recovers at a cost.
    tol = 1e-9
    reserve = min(max(req.reserve_soc * cap, 0.0), e_max)
    soft_min = e0 < e_min - tol
    e_lo = 0.0 if soft_min else e_min
    soft_reserve = False
    if reserve > e_lo + tol:
        if e0 >= reserve - tol:
            e_lo = reserve
        else:
            soft_reserve = True
    soft_max = e0 > e_max + tol
    e_hi = max(e0, e_max) if soft_max else e_max
    e_cost = np.zeros(n)
    if req.final_soc is None:
        e_cost[-1] = -req.terminal_value_eur_per_kwh
    e = b.add_cols(n, e_lo, e_hi, e_cost)
    offset = req.terminal_value_eur_per_kwh * e0 if req.final_soc is None else 0.0

    # power balance: g - x + d - c - u (+ s_imp) = load - pv
    rows_bal = b.add_rows(load - pv, load - pv, n)
    for cols, sign in ((g, 1.0), (x, -1.0), (d, 1.0), (c, -1.0), (u, -1.0)):
        b.coef(rows_bal, cols, sign)
    slack: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], float]] = {}
    short = np.flatnonzero(load - pv > g_max + 1e-9)  # the battery may be empty then
    s_imp: npt.NDArray[np.int64] | None = None
    if short.size:
        pen = req.penalty_import_limit_eur_per_kwh
        s_imp = b.add_cols(short.size, 0.0, np.inf, (p_imp[short] + pen) * dt_h[short])
        b.coef(rows_bal[short], s_imp, 1.0)
        slack["import_limit"] = (s_imp, short, pen)

    if req.events:
        _add_events(
            b, inputs, req, slack, g, x, c, d, s_imp, short, (g_max, x_max), (chg_max, dis_max)
        )

    # energy: e_t - e_{t-1} - eta_c dt c_t + dt/eta_d d_t = 0 (e_{-1} = e0 on the right)
    rhs = np.zeros(n)
    rhs[0] = e0
    rows_en = b.add_rows(rhs, rhs, n)
    b.coef(rows_en, e, 1.0)
    b.coef(rows_en[1:], e[:-1], -1.0)
    b.coef(rows_en, c, -eta_c * dt_h)
    b.coef(rows_en, d, dt_h / eta_d)

    steps = np.arange(n)
    soft_rows = (
        ("soc_min", soft_min, e_min, req.penalty_soc_window_eur_per_kwh_h, 1.0),
        ("reserve_soc", soft_reserve, reserve, req.penalty_reserve_eur_per_kwh_h, 1.0),
        ("soc_max", soft_max, e_max, req.penalty_soc_window_eur_per_kwh_h, -1.0),
    )
    for name, active, level, pen, sign in soft_rows:
        if not active:
            continue
        s = b.add_cols(n, 0.0, np.inf, pen * dt_h)
        r = b.add_rows(level, np.inf, n) if sign > 0 else b.add_rows(-np.inf, level, n)
        b.coef(r, e, 1.0)
        b.coef(r, s, sign)
        slack[name] = (s, steps, pen)

    if req.target_soc is not None and req.target_step is not None:
        k = int(req.target_step)
        if not 0 <= k < n:
            raise ValueError(f"PlanRequest.target_step {k} is outside the horizon of {n} steps")
        target = req.target_soc * cap
        pen = req.penalty_target_eur_per_kwh
        s = b.add_cols(1, 0.0, np.inf, pen)
        r = b.add_rows(target, np.inf, 1)
        b.coef(r, e[k : k + 1], 1.0)
        b.coef(r, s, 1.0)
        slack["target_soc"] = (s, np.array([k]), pen)
    if req.final_soc is not None:
        final = req.final_soc * cap
        pen = req.penalty_target_eur_per_kwh
        s = b.add_cols(2, 0.0, np.inf, pen)
        r = b.add_rows(final, final, 1)
        b.coef(r, e[-1:], 1.0)
        b.coef(np.repeat(r, 2), s, np.array([1.0, -1.0]))
        slack["final_soc"] = (s, np.array([n - 1, n - 1]), pen)

    peak: int | None = None
    if req.demand_charge_eur_per_kw > 0:
        floor_kw = req.demand_charge_peak_w / 1000.0
        peak = int(b.add_cols(1, floor_kw, np.inf, req.demand_charge_eur_per_kw)[0])
        r = b.add_rows(-np.inf, 0.0, n)
        b.coef(r, g, 1.0)
        b.coef(r, np.full(n, peak), -1.0)
        if s_imp is not None:
            b.coef(r[short], s_imp, 1.0)
    return _Model(
        n,
        b,
        c,
        d,
        g,
        x,
        u,
        e,
        peak,
        slack,
        offset,
        (chg_max, dis_max),
        (g_max, x_upper.max()),
        rows_bal,
    )


def _build_scenarios(
    inputs: PlanInputs, battery: PlanBattery, req: PlanRequest, scenarios: PlanScenarios
) -> tuple[_Model, int]:
    """One program over the point forecast and every scenario, coupled at the first step.

    The point forecast's columns come first (the returned model's indices are its own), then
    the share ``beta``, then each scenario's copy. Coupling rows: ``(d0 - c0)`` of a scenario
    equals the point forecast's plus ``beta`` times the scenario's first-step net-load
    deviation [kW]. Costs are weighted by the probabilities.

    A scenario changes only the balance rows' right-hand side and the PV that may be
    curtailed, so its copy is the point forecast's model shifted and tiled with numpy; a
    scenario whose structure differs (load above the import limit at other steps, charging
    or export bound by the PV surplus) is built on its own.
    """
    w = scenarios.probabilities()
    base = _build(inputs, battery, req)
    b = base.builder
    cost0 = np.concatenate(b.cost)
    lower0 = np.concatenate(b.lower)
    upper0 = np.concatenate(b.upper)
    rl0 = np.concatenate(b.row_lower)
    ru0 = np.concatenate(b.row_upper)
    rows0, cols0, vals0 = _triplets(base)
    n_col0, n_row0 = b.n_col, b.n_row
    b.cost = [cost0 * w[0]]
    b.lower, b.upper, b.row_lower, b.row_upper = [lower0], [upper0], [rl0], [ru0]
    b.rows, b.cols, b.vals = [rows0], [cols0], [vals0]
    offset = base.offset * w[0]
    beta = int(b.add_cols(1, 0.0, 1.0, 0.0)[0])
    g_max = req.max_import_w / 1000.0
    net_pt = (inputs.load_w - inputs.pv_w) / 1000.0
    short0 = net_pt > g_max + 1e-9
    same_shape = req.allow_grid_charging and req.allow_battery_export
    nets = (scenarios.load_w - scenarios.pv_w) / 1000.0
    tiled = [
        k
        for k in range(scenarios.count)
        if same_shape and np.array_equal(nets[k] > g_max + 1e-9, short0)
    ]
    coupling: list[tuple[int, int, float]] = []  # (d0 column, c0 column, deviation [kW])
    if tiled:
        m = len(tiled)
        col_start = b.n_col + n_col0 * np.arange(m)
        row_start = b.n_row + n_row0 * np.arange(m)
        b.rows.append((rows0[None, :] + row_start[:, None]).ravel())
        b.cols.append((cols0[None, :] + col_start[:, None]).ravel())
        b.vals.append(np.tile(vals0, m))
        b.cost.append((cost0[None, :] * w[np.asarray(tiled) + 1][:, None]).ravel())
        b.lower.append(np.tile(lower0, m))
        upper = np.tile(upper0, (m, 1))
        upper[:, base.u] = scenarios.pv_w[tiled] / 1000.0
        b.upper.append(upper.ravel())
        rl = np.tile(rl0, (m, 1))
        ru = np.tile(ru0, (m, 1))
        rl[:, base.balance_rows] = nets[tiled]
        ru[:, base.balance_rows] = nets[tiled]
        b.row_lower.append(rl.ravel())
        b.row_upper.append(ru.ravel())
        b.n_col += n_col0 * m
        b.n_row += n_row0 * m
        offset += base.offset * float(np.sum(w[np.asarray(tiled) + 1]))
        for i, k in enumerate(tiled):
            c0 = int(col_start[i])
            coupling.append((int(base.d[0]) + c0, int(base.c[0]) + c0, nets[k][0] - net_pt[0]))
    for k in sorted(set(range(scenarios.count)) - set(tiled)):
        si = PlanInputs(
            time_s=inputs.time_s,
            step_s=inputs.step_s,
            load_w=scenarios.load_w[k],
            pv_w=scenarios.pv_w[k],
            import_price_eur_per_kwh=inputs.import_price_eur_per_kwh,
            export_price_eur_per_kwh=inputs.export_price_eur_per_kwh,
        )
        mk = _build(si, battery, req)
        mb = mk.builder
        col0, row0 = b.n_col, b.n_row
        r, c, v = _triplets(mk)
        b.rows.append(r + row0)
        b.cols.append(c + col0)
        b.vals.append(v)
        b.cost.append(np.concatenate(mb.cost) * w[k + 1])
        b.lower.append(np.concatenate(mb.lower))
        b.upper.append(np.concatenate(mb.upper))
        b.row_lower.append(np.concatenate(mb.row_lower))
        b.row_upper.append(np.concatenate(mb.row_upper))
        b.n_col += mb.n_col
        b.n_row += mb.n_row
        offset += mk.offset * w[k + 1]
        coupling.append((int(mk.d[0]) + col0, int(mk.c[0]) + col0, nets[k][0] - net_pt[0]))
    if coupling:
        cc = np.asarray(coupling, dtype=np.float64)
        # keep every coefficient in the matrix (warm re-solves): a deviation under 1 W counts
        # as 1 W (well scaled, and no difference to the plan)
        dev = np.where(np.abs(cc[:, 2]) < 1e-3, 1e-3, cc[:, 2])
        r = b.add_rows(0.0, 0.0, len(coupling))
        ones = np.ones(len(coupling))
        b.coef(
            np.repeat(r, 5),
            np.column_stack(
                [
                    cc[:, 0].astype(np.int64),
                    cc[:, 1].astype(np.int64),
                    np.full(len(coupling), base.d[0]),
                    np.full(len(coupling), base.c[0]),
                    np.full(len(coupling), beta),
                ]
            ).ravel(),
            np.column_stack([ones, -ones, -ones, ones, -dev]).ravel(),
        )
    base.offset = offset
    return base, beta


def event_step_limits(
    inputs: PlanInputs,
    events: tuple[EventLike, ...],
    grid_limits_w: tuple[float, float] = (math.inf, math.inf),
    battery_limits_w: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per-step limits from grid events: step averages over the part each window covers.

    For a step that an event covers for a fraction ``f`` of its length, the average import is
    at most ``f cap + (1 - f) connection limit`` (likewise the export), and the average battery
    power lies in ``[f P - (1 - f) charge limit, f P + (1 - f) discharge limit]``. Several
    events in one step: the lowest caps; the battery power of the event that started last.

    Parameters
    ----------
    inputs : PlanInputs
        The horizon.
    events : tuple of GridEvent
        The events.
    grid_limits_w : tuple of float
        Connection import and export limits [W].
    battery_limits_w : tuple of numpy.ndarray or None
        Charge and discharge power limits per step [W] (default: unlimited).

    Returns
    -------
    tuple of numpy.ndarray
        ``(max_import_w, max_export_w, battery_min_w, battery_max_w)`` per step; ``inf``
        (``-inf`` for the minimum) where no event applies.
    """
    n = inputs.n_steps
    t0 = inputs.time_s
    t1 = inputs.time_s + inputs.step_s
    imp = np.full(n, np.inf)
    exp = np.full(n, np.inf)
    b_lo = np.full(n, -np.inf)
    b_hi = np.full(n, np.inf)
    chg, dis = battery_limits_w if battery_limits_w is not None else (imp, exp)
    g_max, x_max = grid_limits_w
    hold_start = np.full(n, -np.inf)
    for e in events:
        f = np.clip((np.minimum(e.end_s, t1) - np.maximum(e.start_s, t0)) / inputs.step_s, 0, 1)
        on = f > 0.0
        if not on.any():
            continue
        rest = 1.0 - f
        with np.errstate(invalid="ignore"):
            if e.max_import_w is not None:
                cap = f * e.max_import_w + np.where(rest > 0, rest * g_max, 0.0)
                imp = np.where(on, np.minimum(imp, cap), imp)
            if e.max_export_w is not None:
                cap = f * e.max_export_w + np.where(rest > 0, rest * x_max, 0.0)
                exp = np.where(on, np.minimum(exp, cap), exp)
            if e.battery_power_w is not None:
                mine = on & (e.start_s >= hold_start)
                p = float(e.battery_power_w)
                lo = f * p - np.where(rest > 0, rest * chg, 0.0)
                hi = f * p + np.where(rest > 0, rest * dis, 0.0)
                b_lo = np.where(mine, lo, b_lo)
                b_hi = np.where(mine, hi, b_hi)
                hold_start = np.where(mine, e.start_s, hold_start)
    return imp, exp, b_lo, b_hi


def _add_events(
    b: _Builder,
    inputs: PlanInputs,
    req: PlanRequest,
    slack: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], float]],
    g: npt.NDArray[np.int64],
    x: npt.NDArray[np.int64],
    c: npt.NDArray[np.int64],
    d: npt.NDArray[np.int64],
    s_imp: npt.NDArray[np.int64] | None,
    short: npt.NDArray[np.int64],
    grid_kw: tuple[float, float],
    battery_kw: tuple[FloatArray, FloatArray],
) -> None:
    """Rows and priced slack of the grid events (see :func:`event_step_limits`)."""
    dt_h = inputs.step_s / 3600.0
    pen = req.penalty_event_eur_per_kwh
    imp, exp, b_lo, b_hi = event_step_limits(
        inputs,
        req.events,
        (grid_kw[0] * 1000.0, grid_kw[1] * 1000.0),
        (battery_kw[0] * 1000.0, battery_kw[1] * 1000.0),
    )
    steps = np.flatnonzero(np.isfinite(imp))
    if steps.size:  # g_t (+ import-limit slack) - s_t <= cap_t
        s = b.add_cols(steps.size, 0.0, np.inf, pen * dt_h[steps])
        r = b.add_rows(-np.inf, imp[steps] / 1000.0, steps.size)
        b.coef(r, g[steps], 1.0)
        b.coef(r, s, -1.0)
        if s_imp is not None:
            pos = np.searchsorted(steps, short)
            hit = (pos < steps.size) & (steps[np.minimum(pos, steps.size - 1)] == short)
            b.coef(r[pos[hit]], s_imp[hit], 1.0)
        slack["event_import_limit"] = (s, steps, pen)
    steps = np.flatnonzero(np.isfinite(exp))
    if steps.size:  # x_t - s_t <= cap_t
        s = b.add_cols(steps.size, 0.0, np.inf, pen * dt_h[steps])
        r = b.add_rows(-np.inf, exp[steps] / 1000.0, steps.size)
        b.coef(r, x[steps], 1.0)
        b.coef(r, s, -1.0)
        slack["event_export_limit"] = (s, steps, pen)
    steps = np.flatnonzero(np.isfinite(b_lo))
    if steps.size:  # lo_t <= d_t - c_t + up_t - down_t <= hi_t
        m = steps.size
        s = b.add_cols(2 * m, 0.0, np.inf, pen * np.tile(dt_h[steps], 2))
        r = b.add_rows(b_lo[steps] / 1000.0, b_hi[steps] / 1000.0, m)
        b.coef(r, d[steps], 1.0)
        b.coef(r, c[steps], -1.0)
        b.coef(r, s[:m], 1.0)
        b.coef(r, s[m:], -1.0)
        slack["event_battery_power"] = (s, np.tile(steps, 2), pen)


def _add_binaries(
    model: _Model, steps_cd: npt.NDArray[np.int64], steps_gx: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Binaries forbidding charge+discharge (and import+export) at the given steps."""
    b = model.builder
    chg_max, dis_max = model.cd_limits
    new: list[npt.NDArray[np.int64]] = []
    if steps_cd.size:
        z = b.add_cols(steps_cd.size, 0.0, 1.0)
        r1 = b.add_rows(-np.inf, 0.0, steps_cd.size)  # c - C z <= 0
        b.coef(r1, model.c[steps_cd], 1.0)
        b.coef(r1, z, -chg_max[steps_cd])
        r2 = b.add_rows(-np.inf, dis_max[steps_cd], steps_cd.size)  # d + D z <= D
        b.coef(r2, model.d[steps_cd], 1.0)
        b.coef(r2, z, dis_max[steps_cd])
        new.append(z)
    if steps_gx.size:
        g_max, x_max = model.grid_limits
        g_big = min(g_max, 1e6)
        x_big = min(x_max, 1e6)
        w = b.add_cols(steps_gx.size, 0.0, 1.0)
        r1 = b.add_rows(-np.inf, 0.0, steps_gx.size)  # g - G w <= 0
        b.coef(r1, model.g[steps_gx], 1.0)
        b.coef(r1, w, -g_big)
        r2 = b.add_rows(-np.inf, x_big, steps_gx.size)  # x + X w <= X
        b.coef(r2, model.x[steps_gx], 1.0)
        b.coef(r2, w, x_big)
        new.append(w)
    return np.concatenate(new) if new else np.zeros(0, np.int64)


def _vectors(model: _Model) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Cost, column bounds and row bounds of a model, with HiGHS's infinity."""
    import highspy

    b = model.builder
    inf = highspy.kHighsInf
    upper = np.concatenate(b.upper)
    upper = np.where(np.isinf(upper), inf, upper)
    lower = np.ascontiguousarray(np.concatenate(b.lower))
    row_lower = np.concatenate(b.row_lower)
    row_upper = np.concatenate(b.row_upper)
    row_lower = np.where(np.isinf(row_lower), -inf, row_lower)
    row_upper = np.where(np.isinf(row_upper), inf, row_upper)
    cost = np.ascontiguousarray(np.concatenate(b.cost))
    return cost, lower, upper, row_lower, row_upper


def _triplets(model: _Model) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], FloatArray]:
    b = model.builder
    rows = np.concatenate(b.rows) if b.rows else np.zeros(0, np.int64)
    cols = np.concatenate(b.cols) if b.cols else np.zeros(0, np.int64)
    vals = np.concatenate(b.vals) if b.vals else np.zeros(0)
    return rows, cols, vals


def _configure(h: Any, mip: bool, req: PlanRequest) -> None:
    h.setOptionValue("time_limit", float(req.time_limit_s))
    if mip:
        h.setOptionValue("mip_rel_gap", float(req.mip_rel_gap))
    else:
        # Measured on the 672-step week: presolve removes little from this LP and costs a
        # third of the time; the serial dual simplex is the fastest strategy here.
        h.setOptionValue("presolve", "off")
        h.setOptionValue("simplex_strategy", 1)


class PlanSolver:
    """A HiGHS instance kept between plans, so that a receding horizon re-solves warm.

    When the next linear program has the same matrix as the previous one (same steps, same
    battery efficiencies, same options: the usual case every 15 min), only its costs and
    bounds are changed and HiGHS starts from the previous optimal basis (a few tens of
    simplex iterations instead of a few hundred); any other program is passed whole. Mixed-
    integer programs (negative prices) are always solved afresh. A warm re-solve that is not
    optimal within ``warm_time_limit_s`` is solved again afresh (``warm_failures`` counts
    them). Not thread-safe: one per planner.
    """

    #: At most this fraction of the matrix entries may change for a warm re-solve.
    max_changed_fraction = 0.05
    #: Time limit of a warm re-solve [s]; one that does not finish is solved afresh.
    warm_time_limit_s = 2.0

    def __init__(self) -> None:
        self._h: Any = None
        self._pattern: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], FloatArray] | None = None
        self._unique = False
        empty = np.zeros(0)
        self._vectors: tuple[FloatArray, ...] = (empty, empty, empty, empty, empty)
        self.solves = 0
        self.warm_solves = 0
        self.warm_failures = 0

    def solve(self, model: _Model, req: PlanRequest) -> tuple[FloatArray, str]:
        """Solve the linear program of ``model`` (no integer columns), warm when possible.

        Parameters
        ----------
        model : _Model
            The built model.
        req : PlanRequest
            Time limit.

        Returns
        -------
        tuple of (numpy.ndarray, str)
            Column values and the model status.
        """
        import highspy

        triplets = _triplets(model)
        cost, lower, upper, row_lower, row_upper = _vectors(model)
        b = model.builder
        prev = self._pattern
        changed = np.zeros(0, np.int64)
        same = (
            self._h is not None
            and prev is not None
            and prev[0].size == triplets[0].size
            and np.array_equal(prev[0], triplets[0])
            and np.array_equal(prev[1], triplets[1])
            and self._vectors[0].size == cost.size
            and self._vectors[3].size == row_lower.size
        )
        if same and prev is not None:
            changed = np.flatnonzero(prev[2] != triplets[2])
            # a few changed coefficients (a shorter first step, scenario deviations) are
            # changed in place; many mean another problem: pass it whole
            most = max(16, int(self.max_changed_fraction * triplets[2].size))
            same = changed.size == 0 or (self._unique and changed.size <= most)
        self.solves += 1
        if same:
            h = self._h
            rows_t, cols_t, vals_t = triplets
            for k in changed:
                h.changeCoeff(int(rows_t[k]), int(cols_t[k]), float(vals_t[k]))
            self._pattern = triplets
            # only what changed: most costs and bounds are the same from plan to plan
            old_cost, old_lower, old_upper, old_rl, old_ru = self._vectors
            cols = np.flatnonzero(old_cost != cost).astype(np.int32)
            if cols.size:
                h.changeColsCost(cols.size, cols, cost[cols])
            cols = np.flatnonzero((old_lower != lower) | (old_upper != upper)).astype(np.int32)
            if cols.size:
                h.changeColsBounds(cols.size, cols, lower[cols], upper[cols])
            rows = np.flatnonzero((old_rl != row_lower) | (old_ru != row_upper)).astype(np.int32)
            if rows.size:
                h.changeRowsBounds(rows.size, rows, row_lower[rows], row_upper[rows])
            h.changeObjectiveOffset(float(model.offset))
            self._vectors = (cost, lower, upper, row_lower, row_upper)
            # HiGHS's time limit counts the instance's whole run time, not this run's
            budget = min(float(req.time_limit_s), self.warm_time_limit_s)
            h.setOptionValue("time_limit", float(h.getRunTime()) + budget)
            h.run()
            if h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
                self.warm_solves += 1
                sol = h.getSolution()
                return np.asarray(sol.col_value, dtype=np.float64), h.modelStatusToString(
                    h.getModelStatus()
                )
            self.warm_failures += 1
            log.info(
                "warm re-solve ended %r after %d iterations: solving afresh",
                h.modelStatusToString(h.getModelStatus()),
                h.getInfo().simplex_iteration_count,
            )
        h = _new_highs()
        _configure(h, False, req)
        _pass(h, model, triplets, (cost, lower, upper, row_lower, row_upper), None)
        self._h = h
        self._pattern = triplets
        self._vectors = (cost, lower, upper, row_lower, row_upper)
        keys = triplets[0] * max(b.n_col, 1) + triplets[1]
        self._unique = bool(np.unique(keys).size == keys.size)
        try:
            values, name = _run(h)
        except RuntimeError:
            self._h = self._pattern = None  # start afresh next time
            raise
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            self._h = self._pattern = None
        return values, name


def _pass(
    h: Any,
    model: _Model,
    triplets: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], FloatArray],
    vectors: tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray],
    integrality: npt.NDArray[np.int32] | None,
) -> None:
    import highspy
    import scipy.sparse as sp  # imported on first use: the settings model stays light

    b = model.builder
    rows, cols, vals = triplets
    a = sp.csc_matrix((vals, (rows, cols)), shape=(b.n_row, b.n_col))
    cost, lower, upper, row_lower, row_upper = vectors
    status = h.passModel(
        b.n_col,
        b.n_row,
        int(a.nnz),
        int(highspy.MatrixFormat.kColwise),
        int(highspy.ObjSense.kMinimize),
        float(model.offset),
        cost,
        lower,
        np.ascontiguousarray(upper),
        np.ascontiguousarray(row_lower),
        np.ascontiguousarray(row_upper),
        a.indptr.astype(np.int32),
        a.indices.astype(np.int32),
        a.data.astype(np.float64),
        integrality if integrality is not None else np.zeros(b.n_col, dtype=np.int32),
    )
    if status == highspy.HighsStatus.kError:  # pragma: no cover - a bug in the builder
        raise RuntimeError("HiGHS rejected the model")


def _run(h: Any) -> tuple[FloatArray, str]:
    import highspy

    h.run()
    ms = h.getModelStatus()
    name = h.modelStatusToString(ms)
    sol = h.getSolution()
    if ms != highspy.HighsModelStatus.kOptimal:
        feasible = h.getInfo().primal_solution_status == highspy.kSolutionStatusFeasible
        if not (feasible and sol.value_valid):
            # Idle is feasible by construction: reaching this is a bug or a time limit hit
            # before any solution; optimize() then falls back to the LP without binaries.
            raise RuntimeError(f"HiGHS found no feasible solution: {name}")
        log.warning("HiGHS stopped with status %r; using its best feasible solution", name)
    return np.asarray(sol.col_value, dtype=np.float64), name


def _solve(
    model: _Model,
    integer_cols: npt.NDArray[np.int64],
    req: PlanRequest,
    solver: PlanSolver | None = None,
) -> tuple[FloatArray, str]:
    if solver is not None and not integer_cols.size:
        return solver.solve(model, req)
    h = _new_highs()
    _configure(h, bool(integer_cols.size), req)
    integrality = np.zeros(model.builder.n_col, dtype=np.int32)
    integrality[integer_cols] = 1
    _pass(h, model, _triplets(model), _vectors(model), integrality)
    return _run(h)


def baseline_cost_eur(inputs: PlanInputs, max_export_w: float = math.inf) -> float:
    """Energy cost without a battery [EUR] (PV above the export limit or at a negative export
    price curtailed).

    Parameters
    ----------
    inputs : PlanInputs
        Forecasts.
    max_export_w : float
        Export limit [W].

    Returns
    -------
    float
        Imports times import price minus exports times export price [EUR].
    """
    dt_h = inputs.step_s / 3600.0
    net = inputs.load_w - inputs.pv_w
    imp = np.maximum(net, 0.0)
    exp = np.minimum(np.maximum(-net, 0.0), max_export_w)
    exp = np.where(inputs.export_price_eur_per_kwh < 0, 0.0, exp)
    return float(
        np.sum(
            (imp * inputs.import_price_eur_per_kwh - exp * inputs.export_price_eur_per_kwh) * dt_h
        )
        / 1000.0
    )


def optimize(
    inputs: PlanInputs,
    battery: PlanBattery,
    request: PlanRequest | None = None,
    *,
    solver: PlanSolver | None = None,
    scenarios: PlanScenarios | None = None,
) -> PlanResult:
    """Plan the battery over the horizon: minimum cost, every limit respected, never infeasible.

    Parameters
    ----------
    inputs : PlanInputs
        Load, PV and price forecasts per step.
    battery : PlanBattery
        Capacity, SoC, window, power limits, efficiencies.
    request : PlanRequest or None
        Grid limits, tariff terms, requests and penalties (default: :class:`PlanRequest`).
    solver : PlanSolver or None
        Keeps HiGHS between calls (warm re-solves in a receding horizon); None for a fresh
        instance.
    scenarios : PlanScenarios or None
        Other load and PV trajectories to hedge against (see :class:`PlanScenarios`); the
        result is then the point forecast's plan with the shared first step and its
        ``deviation_share``. Ignored (a deterministic plan) where binaries are needed.

    Returns
    -------
    PlanResult
        The schedule, its costs, the solve time (build plus solve) and what was relaxed.

    Raises
    ------
    ValueError
        If the scenarios do not have one value per step.
    """
    req = request if request is not None else PlanRequest()
    t0 = time.perf_counter()
    n = inputs.n_steps
    p_imp = inputs.import_price_eur_per_kwh
    p_exp = inputs.export_price_eur_per_kwh
    cd_steps = np.flatnonzero(p_imp < 0).astype(np.int64)
    gx_steps = np.flatnonzero(p_imp < p_exp).astype(np.int64)
    equal_price = np.abs(p_imp - p_exp) <= 1e-12
    if scenarios is not None and scenarios.count:
        if scenarios.load_w.shape[1] != n:
            raise ValueError(f"PlanScenarios has {scenarios.load_w.shape[1]} steps, the inputs {n}")
        if not cd_steps.size and not gx_steps.size:
            model, beta = _build_scenarios(inputs, battery, req, scenarios)
            values, status = _solve(model, np.zeros(0, np.int64), req, solver)
            _net_grid_flows(values, model, equal_price)
            cv, dv = values[model.c], values[model.d]
            if not (np.minimum(cv, dv) > SIMULTANEITY_TOL_KW).any():
                share = float(min(max(values[beta], 0.0), 1.0))
                return _result(
                    inputs,
                    battery,
                    req,
                    model,
                    values,
                    status,
                    0,
                    time.perf_counter() - t0,
                    n,
                    deviation_share=share,
                    scenarios=scenarios.count,
                )
            log.debug("scenario plan charged and discharged at once: deterministic plan")
    model = _build(inputs, battery, req)
    ints = _add_binaries(model, cd_steps, gx_steps)
    try:
        values, status = _solve(model, ints, req, solver)
    except RuntimeError:
        if not ints.size:
            raise
        # The base columns of a fresh build have the same indices (binaries come last).
        log.warning("MIP found no solution in %.3g s: using the LP relaxation", req.time_limit_s)
        values, status = _solve(_build(inputs, battery, req), np.zeros(0, np.int64), req, solver)
        status = f"{status} (LP relaxation: the MIP found no solution in time)"
        cd_steps = gx_steps = np.arange(n, dtype=np.int64)  # do not try again
    for rounds in range(MAX_BINARY_ROUNDS):
        _net_grid_flows(values, model, equal_price)
        cv, dv = values[model.c], values[model.d]
        gv, xv = values[model.g], values[model.x]
        new_cd = np.setdiff1d(
            np.flatnonzero(np.minimum(cv, dv) > SIMULTANEITY_TOL_KW), cd_steps
        ).astype(np.int64)
        new_gx = np.setdiff1d(
            np.flatnonzero(np.minimum(gv, xv) > SIMULTANEITY_TOL_KW), gx_steps
        ).astype(np.int64)
        if not new_cd.size and not new_gx.size:
            break
        # A tie (no cost to burn energy, e.g. with zero degradation cost and worthless
        # energy) can move to other steps: after the first round, forbid it everywhere.
        if rounds > 0 and new_cd.size:
            new_cd = np.setdiff1d(np.arange(n), cd_steps).astype(np.int64)
        if rounds > 0 and new_gx.size:
            new_gx = np.setdiff1d(np.arange(n), gx_steps).astype(np.int64)
        log.debug("binaries added at %d + %d steps", new_cd.size, new_gx.size)
        cd_steps = np.union1d(cd_steps, new_cd).astype(np.int64)
        gx_steps = np.union1d(gx_steps, new_gx).astype(np.int64)
        ints = np.concatenate([ints, _add_binaries(model, new_cd, new_gx)])
        try:
            values, status = _solve(model, ints, req)
        except RuntimeError:
            log.warning("MIP found no solution in time: keeping the previous solution")
            break
    _net_grid_flows(values, model, equal_price)
    solve_time = time.perf_counter() - t0
    return _result(inputs, battery, req, model, values, status, int(ints.size), solve_time, n)


def _net_grid_flows(values: FloatArray, model: _Model, equal_price: npt.NDArray[np.bool_]) -> None:
    """Net import against export where both prices are equal (a tie: same cost, same balance)."""
    if not equal_price.any():
        return
    g, x = values[model.g], values[model.x]
    both = np.minimum(g, x) * equal_price
    values[model.g] = g - both
    values[model.x] = x - both


def _result(
    inputs: PlanInputs,
    battery: PlanBattery,
    req: PlanRequest,
    model: _Model,
    values: FloatArray,
    status: str,
    n_bin: int,
    solve_time: float,
    n: int,
    deviation_share: float | None = None,
    scenarios: int = 0,
) -> PlanResult:
    dt_h = inputs.step_s / 3600.0
    cap_kwh = battery.capacity_wh / 1000.0
    c = np.maximum(values[model.c], 0.0)
    d = np.maximum(values[model.d], 0.0)
    g = np.maximum(values[model.g], 0.0)
    x = np.maximum(values[model.x], 0.0)
    u = np.maximum(values[model.u], 0.0)
    e = values[model.e]
    relaxed: list[Relaxation] = []
    penalty = 0.0
    g_total = g.copy()
    for name, (cols, steps, pen) in model.slack.items():
        s = np.maximum(values[cols], 0.0)
        if name == "import_limit" or name.startswith("event_"):
            if name == "import_limit":
                g_total[steps] += s
            pen_eur = float(np.sum(s * dt_h[steps]) * pen)
            energy = float(np.sum(s * dt_h[steps]))
            worst = float(s.max()) * 1000.0 if s.size else 0.0
        elif name in ("soc_min", "soc_max", "reserve_soc"):
            pen_eur = float(np.sum(s * dt_h[steps]) * pen)
            energy = float(np.sum(s))
            worst = float(s.max()) / cap_kwh if s.size else 0.0
        else:
            pen_eur = float(np.sum(s) * pen)
            energy = float(np.sum(s))
            worst = float(s.max()) / cap_kwh if s.size else 0.0
        penalty += pen_eur
        hit = np.flatnonzero(s > SLACK_TOL)
        if hit.size:
            relaxed.append(
                Relaxation(
                    constraint=name,
                    max_violation=worst,
                    energy_kwh=energy,
                    steps=int(np.unique(steps[hit]).size),
                    first_step=int(steps[hit].min()),
                    penalty_eur=pen_eur,
                )
            )
    p_imp = inputs.import_price_eur_per_kwh
    p_exp = inputs.export_price_eur_per_kwh
    cost = float(np.sum((g_total * p_imp - x * p_exp) * dt_h))
    degradation = float(np.sum((c + d) * dt_h) * req.degradation_cost_eur_per_kwh)
    peak_kw = float(g_total.max()) if n else 0.0
    demand = 0.0
    if req.demand_charge_eur_per_kw > 0:
        peak_kw = max(peak_kw, req.demand_charge_peak_w / 1000.0)
        demand = peak_kw * req.demand_charge_eur_per_kw
    e0 = battery.soc_initial * cap_kwh
    terminal = 0.0
    if req.final_soc is None:
        terminal = req.terminal_value_eur_per_kwh * (float(e[-1]) - e0)
    objective = cost + degradation + demand + penalty - terminal
    soc = np.clip(e / cap_kwh, 0.0, 1.0)
    return PlanResult(
        time_s=inputs.time_s.copy(),
        step_s=inputs.step_s.copy(),
        load_w=inputs.load_w.copy(),
        pv_w=inputs.pv_w.copy(),
        import_price_eur_per_kwh=p_imp.copy(),
        export_price_eur_per_kwh=p_exp.copy(),
        battery_power_w=(d - c) * 1000.0,
        charge_power_w=c * 1000.0,
        discharge_power_w=d * 1000.0,
        grid_import_w=g_total * 1000.0,
        grid_export_w=x * 1000.0,
        pv_curtailed_w=u * 1000.0,
        soc=soc,
        energy_wh=e * 1000.0,
        soc_initial=battery.soc_initial,
        capacity_wh=battery.capacity_wh,
        peak_import_w=peak_kw * 1000.0,
        objective_eur=objective,
        cost_eur=cost,
        baseline_cost_eur=baseline_cost_eur(inputs, req.max_export_w),
        degradation_cost_eur=degradation,
        demand_charge_eur=demand,
        terminal_value_eur=terminal,
        penalty_eur=penalty,
        solve_time_s=solve_time,
        status=status,
        binaries=n_bin,
        relaxed=tuple(relaxed),
        deviation_share=deviation_share,
        scenarios=scenarios,
    )


# -- parameters from the site, the BMS and the ageing model --------------------------------------


def degradation_cost_from_ageing(
    cell: CellParams,
    *,
    battery_price_eur_per_kwh: float = 400.0,
    soh: float = 1.0,
    end_of_life_soh: float = 0.8,
    temperature_degc: float = 25.0,
    c_rate: float = 0.5,
    depth: float = 0.8,
) -> float:
    """Degradation cost per kWh of AC throughput, from the cell's cycle-ageing law [EUR/kWh].

    The battery's replacement value (``battery_price`` per kWh of capacity) is used up
    linearly in capacity fade between SoH 1 and ``end_of_life_soh``. The cycle part of the
    ageing model, ``q = r * FEC**z`` with ``r`` at the given stress, gives the cycles left
    between the present fade ``1 - soh`` and the end of life; one full equivalent cycle is
    2 kWh of throughput per kWh of capacity::

        cost = price / q_eol * (q_eol - q_now) / (2 * (FEC(q_eol) - FEC(q_now)))

    With a concave law (``z < 1``) an aged battery wears more slowly per cycle, so the cost
    falls with the SoH. Calendar fade is not attributed to throughput.

    Parameters
    ----------
    cell : CellParams
        Cell parameters with an ``[ageing]`` table.
    battery_price_eur_per_kwh : float
        Replacement cost per kWh of capacity [EUR/kWh].
    soh : float
        Present state of health [fraction].
    end_of_life_soh : float
        SoH at which the battery is worth nothing [fraction].
    temperature_degc : float
        Typical cell temperature [degC].
    c_rate : float
        Typical C-rate [1/h].
    depth : float
        Typical cycle depth [fraction].

    Returns
    -------
    float
        Cost [EUR/kWh of throughput]; 0 if the cell has no ageing table.

    Raises
    ------
    ValueError
        If ``soh`` or ``end_of_life_soh`` is out of range.
    """
    if not 0.0 < end_of_life_soh < 1.0:
        raise ValueError(f"end_of_life_soh must be in (0, 1), got {end_of_life_soh!r}")
    if not 0.0 < soh <= 1.0:
        raise ValueError(f"soh must be in (0, 1], got {soh!r}")
    if not cell.ageing:
        return 0.0
    law = ageing_params(cell.ageing, f"cell '{cell.name}' [ageing]").cyc_q
    r = float(
        cycle_rate(
            law,
            np.asarray(depth, dtype=np.float64),
            np.asarray(c_rate, dtype=np.float64),
            np.asarray(temperature_degc, dtype=np.float64),
        )
    )
    if r <= 0.0:
        return 0.0
    q_eol = 1.0 - end_of_life_soh
    q_now = min(max(1.0 - soh, 0.0), 0.999 * q_eol)
    fec_eol = (q_eol / r) ** (1.0 / law.z)
    fec_now = (q_now / r) ** (1.0 / law.z)
    return float(battery_price_eur_per_kwh / q_eol * (q_eol - q_now) / (2.0 * (fec_eol - fec_now)))


def site_capacity_wh(config: SiteConfig) -> float:
    """Nominal battery capacity of a site [Wh]: ``capacity_wh`` or cells x topology.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.

    Returns
    -------
    float
        Capacity [Wh].

    Raises
    ------
    ConfigError
        If neither ``capacity_wh`` nor the cell count is given.
    """
    b = config.battery
    if b.capacity_wh is not None:
        return float(b.capacity_wh)
    from openbess.twin.site import cell_params_for, topology_for

    cell = cell_params_for(config)
    topo = topology_for(config, cell)
    series = topo.n_strings * topo.modules_per_string * topo.cells_series_per_module
    if series <= 0:  # pragma: no cover - the topology validates itself
        raise ConfigError("battery: empty topology")
    return float(cell.capacity_ah * cell.nominal_voltage_v * series * topo.cells_parallel)


def default_degradation_cost(
    config: SiteConfig, options: OptimizerConfig, soh: float = 1.0
) -> float:
    """The planner's degradation cost: the configured value, else derived from the ageing model.

    Parameters
    ----------
    config : SiteConfig
        Site configuration (its ``battery.cell``).
    options : OptimizerConfig
        Planner settings (battery price, end-of-life SoH).
    soh : float
        Present state of health [fraction].

    Returns
    -------
    float
        Cost [EUR per kWh of AC throughput].
    """
    if options.degradation_cost_eur_per_kwh is not None:
        return float(options.degradation_cost_eur_per_kwh)
    from openbess.twin.site import cell_params_for

    return degradation_cost_from_ageing(
        cell_params_for(config),
        battery_price_eur_per_kwh=options.battery_price_eur_per_kwh,
        soh=min(max(soh, 1e-3), 1.0),
        end_of_life_soh=options.end_of_life_soh,
    )


def default_terminal_value(inputs: PlanInputs, battery: PlanBattery) -> float:
    """Value of stored energy at the end of the horizon when none is configured [EUR/kWh].

    A stored kWh saves, later, about the median import price less the discharge loss; it is
    worth at least what it would fetch when exported. So::

        value = discharge_efficiency * max(median(import price), median(export price), 0)

    Parameters
    ----------
    inputs : PlanInputs
        Forecasts.
    battery : PlanBattery
        Efficiencies.

    Returns
    -------
    float
        Value [EUR/kWh], >= 0.
    """
    imp = float(np.median(inputs.import_price_eur_per_kwh))
    exp = float(np.median(inputs.export_price_eur_per_kwh))
    return battery.discharge_efficiency * max(imp, exp, 0.0)


def plan_battery(
    config: SiteConfig,
    telemetry: Telemetry | None = None,
    *,
    capacity_wh: float | None = None,
    first_limits_s: float = 900.0,
) -> PlanBattery:
    """The battery for the planner, from the site file and (if given) the latest Telemetry.

    With a Telemetry, the plan starts from the BMS's SoC and SoH-adjusted capacity, and its
    first ``first_limits_s`` use the BMS's present charge and discharge power limits.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    telemetry : Telemetry or None
        Latest BMS telemetry.
    capacity_wh : float or None
        Capacity [Wh] (default: the Telemetry's, else the site's nominal capacity).
    first_limits_s : float
        Duration over which the Telemetry's power limits apply [s].

    Returns
    -------
    PlanBattery
        The battery.
    """
    b = config.battery
    cap = capacity_wh
    soc = b.initial_soc
    first_c: float | None = None
    first_d: float | None = None
    if telemetry is not None:
        if cap is None and telemetry.capacity_wh > 0:
            cap = float(telemetry.capacity_wh)
        soc = float(telemetry.soc)
        first_c = max(float(telemetry.charge_power_limit_w), 0.0)
        first_d = max(float(telemetry.discharge_power_limit_w), 0.0)
    if cap is None:
        cap = site_capacity_wh(config)
    return PlanBattery(
        capacity_wh=cap,
        soc_initial=min(max(soc, 0.0), 1.0),
        soc_min=b.soc_min,
        soc_max=b.soc_max,
        max_charge_power_w=b.max_charge_power_w,
        max_discharge_power_w=b.max_discharge_power_w,
        charge_efficiency=b.charge_efficiency,
        discharge_efficiency=b.discharge_efficiency,
        first_charge_power_w=first_c,
        first_discharge_power_w=first_d,
        first_limits_s=first_limits_s if telemetry is not None else 0.0,
    )


def target_step(inputs: PlanInputs, deadline_s: float) -> int | None:
    """Index of the step whose end is the first at or after ``deadline_s`` (None if outside).

    Parameters
    ----------
    inputs : PlanInputs
        The horizon.
    deadline_s : float
        Deadline [s, Unix UTC].

    Returns
    -------
    int or None
        Step index, or None when the deadline lies before the start or after the horizon.
    """
    ends = inputs.time_s + inputs.step_s
    if deadline_s <= float(inputs.time_s[0]) or deadline_s > float(ends[-1]) + 1e-6:
        return None
    return int(np.searchsorted(ends, deadline_s - 1e-6, side="left"))


def plan_request(
    config: SiteConfig,
    options: OptimizerConfig,
    inputs: PlanInputs,
    battery: PlanBattery,
    *,
    final_soc: float | None = None,
    soh: float = 1.0,
    degradation_cost_eur_per_kwh: float | None = None,
) -> PlanRequest:
    """The request for :func:`optimize` from the site file and the planner settings.

    Parameters
    ----------
    config : SiteConfig
        Site configuration (grid limits, cell).
    options : OptimizerConfig
        Planner settings.
    inputs : PlanInputs
        Forecasts (for the default terminal value and the deadline step).
    battery : PlanBattery
        The battery (efficiencies).
    final_soc : float or None
        Hard end SoC.
    soh : float
        Present SoH (for the derived degradation cost) [fraction].
    degradation_cost_eur_per_kwh : float or None
        Overrides the configured or derived degradation cost [EUR/kWh].

    Returns
    -------
    PlanRequest
        The request.
    """
    terminal = options.terminal_value_eur_per_kwh
    if terminal is None:
        terminal = default_terminal_value(inputs, battery)
    t_step: int | None = None
    t_soc: float | None = None
    if options.target_soc is not None and options.target_time is not None:
        t_step = target_step(inputs, options.target_time.timestamp())
        t_soc = options.target_soc if t_step is not None else None
    return PlanRequest(
        max_import_w=config.grid.max_import_w,
        max_export_w=config.grid.max_export_w,
        degradation_cost_eur_per_kwh=(
            degradation_cost_eur_per_kwh
            if degradation_cost_eur_per_kwh is not None
            else default_degradation_cost(config, options, soh)
        ),
        terminal_value_eur_per_kwh=terminal,
        demand_charge_eur_per_kw=options.demand_charge_eur_per_kw,
        demand_charge_peak_w=options.demand_charge_peak_w,
        reserve_soc=options.reserve_soc,
        target_soc=t_soc,
        target_step=t_step,
        final_soc=final_soc,
        allow_grid_charging=options.allow_grid_charging,
        allow_battery_export=options.allow_battery_export,
        penalty_soc_window_eur_per_kwh_h=options.penalty_soc_window_eur_per_kwh_h,
        penalty_reserve_eur_per_kwh_h=options.penalty_reserve_eur_per_kwh_h,
        penalty_target_eur_per_kwh=options.penalty_target_eur_per_kwh,
        penalty_import_limit_eur_per_kwh=options.penalty_import_limit_eur_per_kwh,
        penalty_event_eur_per_kwh=options.penalty_event_eur_per_kwh,
        mip_rel_gap=options.mip_rel_gap,
        time_limit_s=options.time_limit_s,
    )


def optimizer_config_for(config: SiteConfig) -> OptimizerConfig:
    """The site's ``[optimizer]`` settings (defaults if the site model has none yet).

    Parameters
    ----------
    config : SiteConfig
        Site configuration.

    Returns
    -------
    OptimizerConfig
        The settings.
    """
    found = getattr(config, "optimizer", None)
    return found if isinstance(found, OptimizerConfig) else OptimizerConfig()
