"""Semi-empirical cell ageing: calendar and cycle fade of capacity, resistance growth.

Four additive parts, each a power law in its own "age" with a stress-dependent rate::

    capacity factor   = 1 - q_cal - q_cyc
    resistance factor = 1 + r_cal + r_cyc

    calendar part (x = q_cal or r_cal):  x = k * A(T) * P(SoC) * t_days ** z
    cycle part    (x = q_cyc or r_cyc):  x = k * A(T) * C(c_rate) * D(depth) * fec ** z

with ``A(T) = exp(-Ea/R (1/T - 1/T_ref))`` (Arrhenius), ``P`` and ``D`` cubic polynomials
around a centre, ``C`` linear, each clipped at zero, ``fec`` full equivalent cycles
(throughput / (2 Q)). Under changing stress each part advances by the "virtual age" rule: the
present value is converted to the equivalent age under the present stress, the age is
advanced, and the value recomputed. This reproduces the published fits exactly at constant
stress and never decreases.

Cycles are found online by a vectorised half-cycle detector: a half-cycle closes when the SoC
turns back by more than ``cycle_deadband_soc`` from its extreme; its depth (extreme minus
start), throughput, mean C-rate and charge-weighted temperature then book the cycle part.
Throughput of small reversals inside the dead band stays in the enclosing half-cycle. The
half-cycle still open is booked by :func:`close_half_cycles` (call it before reading the
state of health at the end of a run; an open half-cycle holds at most one half-cycle of wear).

:func:`update` costs a few dozen numpy operations on arrays of N cells, so it can be called
every step for 1,000 cells; it may equally be called on aggregated windows (mean SoC and
temperature, net current over the window), at the price of missing reversals inside a window.

The coefficients live in the ``[ageing]`` table of a cell parameter file; the built-in sets use
Naumann et al. 2018/2020 (LFP) and Schmalstieg et al. 2014 (NMC): see
``openbess/cell/data/README.md``. Keys, for each part ``p`` in ``cal_q, cal_r, cyc_q, cyc_r``:
``p_k``, ``p_z``, ``p_ea_j_per_mol``, ``p_tref_degc``; calendar parts also ``p_soc_center``,
``p_soc_c0`` .. ``p_soc_c3``; cycle parts ``p_crate_c0``, ``p_crate_c1``, ``p_dod_center``,
``p_dod_c0`` .. ``p_dod_c3``; plus ``cycle_deadband_soc``. Missing polynomial coefficients
default to ``c0 = 1`` and 0 for the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from openbess.errors import ConfigError

FloatArray = npt.NDArray[np.float64]

GAS_CONSTANT_J_PER_MOL_K = 8.314462618
SECONDS_PER_DAY = 86400.0
_KELVIN = 273.15


@dataclass(frozen=True)
class StressLaw:
    """One ageing part: ``x = k * A(T) * stress * age ** z``.

    Parameters
    ----------
    k : float
        Rate at the reference temperature and unit stress [1/unit^z] (unit: day or FEC).
    z : float
        Exponent of the age (> 0) [1].
    ea_j_per_mol : float
        Activation energy [J/mol].
    tref_degc : float
        Reference temperature [degC].
    center : float
        Centre of the SoC (calendar) or depth (cycle) polynomial [fraction].
    c0, c1, c2, c3 : float
        Polynomial coefficients in ``(x - center)`` [1].
    crate_c0, crate_c1 : float
        C-rate factor ``crate_c0 + crate_c1 * c_rate`` (cycle parts only) [1], [h].
    """

    k: float
    z: float
    ea_j_per_mol: float
    tref_degc: float
    center: float = 0.0
    c0: float = 1.0
    c1: float = 0.0
    c2: float = 0.0
    c3: float = 0.0
    crate_c0: float = 1.0
    crate_c1: float = 0.0

    def arrhenius(self, temperature_degc: FloatArray) -> FloatArray:
        """Arrhenius factor [1] at the given temperature [degC]."""
        t = np.asarray(temperature_degc, dtype=np.float64) + _KELVIN
        out: FloatArray = np.exp(
            -self.ea_j_per_mol
            / GAS_CONSTANT_J_PER_MOL_K
            * (1.0 / t - 1.0 / (self.tref_degc + _KELVIN))
        )
        return out

    def polynomial(self, x: FloatArray) -> FloatArray:
        """Cubic stress polynomial of SoC or depth, clipped at 0 [1]."""
        d = np.asarray(x, dtype=np.float64) - self.center
        out: FloatArray = np.maximum(self.c0 + d * (self.c1 + d * (self.c2 + d * self.c3)), 0.0)
        return out

    def crate_factor(self, c_rate: FloatArray) -> FloatArray:
        """C-rate stress factor, clipped at 0 [1]."""
        out: FloatArray = np.maximum(self.crate_c0 + self.crate_c1 * np.asarray(c_rate), 0.0)
        return out


@dataclass(frozen=True)
class AgeingParams:
    """Coefficients of the four ageing parts.

    Parameters
    ----------
    cal_q, cal_r : StressLaw
        Calendar capacity fade and resistance growth (age in days, polynomial in SoC).
    cyc_q, cyc_r : StressLaw
        Cycle capacity fade and resistance growth (age in FEC, polynomial in depth).
    cycle_deadband_soc : float
        SoC reversal that closes a half-cycle [fraction].
    """

    cal_q: StressLaw
    cal_r: StressLaw
    cyc_q: StressLaw
    cyc_r: StressLaw
    cycle_deadband_soc: float = 0.01


_PARTS = ("cal_q", "cal_r", "cyc_q", "cyc_r")


def ageing_params(table: Mapping[str, float], where: str = "[ageing]") -> AgeingParams:
    """Build :class:`AgeingParams` from the ``[ageing]`` table of a cell parameter file.

    Parameters
    ----------
    table : mapping
        The table (``CellParams.ageing``).
    where : str
        Location for error messages.

    Returns
    -------
    AgeingParams
        The coefficients.

    Raises
    ------
    ConfigError
        Naming the missing or invalid key.
    """
    known = {"cycle_deadband_soc"}
    laws = {}
    for part in _PARTS:
        kw: dict[str, float] = {}
        names = {
            "k": "k",
            "z": "z",
            "ea_j_per_mol": "ea_j_per_mol",
            "tref_degc": "tref_degc",
        }
        poly = "soc" if part.startswith("cal") else "dod"
        names.update(
            {
                "center": f"{poly}_center",
                "c0": f"{poly}_c0",
                "c1": f"{poly}_c1",
                "c2": f"{poly}_c2",
                "c3": f"{poly}_c3",
            }
        )
        if part.startswith("cyc"):
            names.update({"crate_c0": "crate_c0", "crate_c1": "crate_c1"})
        for attr, suffix in names.items():
            key = f"{part}_{suffix}"
            known.add(key)
            if key in table:
                try:
                    kw[attr] = float(table[key])
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"{where}: field '{key}' is not a number") from err
            elif attr in ("k", "z", "ea_j_per_mol", "tref_degc"):
                raise ConfigError(f"{where}: missing field '{key}'")
        if kw["z"] <= 0 or kw["k"] < 0:
            raise ConfigError(f"{where}: field '{part}_z' must be > 0 and '{part}_k' >= 0")
        laws[part] = StressLaw(**kw)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field '{unknown[0]}'")
    deadband = float(table.get("cycle_deadband_soc", 0.01))
    if not 0 < deadband < 0.5:
        raise ConfigError(f"{where}: field 'cycle_deadband_soc' must be in (0, 0.5)")
    return AgeingParams(cycle_deadband_soc=deadband, **laws)


def ageing_table(params: AgeingParams) -> dict[str, float]:
    """Inverse of :func:`ageing_params`: the flat ``[ageing]`` table.

    Parameters
    ----------
    params : AgeingParams
        The coefficients.

    Returns
    -------
    dict
        Key to value.
    """
    out: dict[str, float] = {}
    for part in _PARTS:
        law: StressLaw = getattr(params, part)
        poly = "soc" if part.startswith("cal") else "dod"
        out[f"{part}_k"] = law.k
        out[f"{part}_z"] = law.z
        out[f"{part}_ea_j_per_mol"] = law.ea_j_per_mol
        out[f"{part}_tref_degc"] = law.tref_degc
        out[f"{part}_{poly}_center"] = law.center
        for c in ("c0", "c1", "c2", "c3"):
            out[f"{part}_{poly}_{c}"] = getattr(law, c)
        if part.startswith("cyc"):
            out[f"{part}_crate_c0"] = law.crate_c0
            out[f"{part}_crate_c1"] = law.crate_c1
    out["cycle_deadband_soc"] = params.cycle_deadband_soc
    return out


# -- closed forms at constant stress ----------------------------------------------------


def calendar_rate(law: StressLaw, soc: FloatArray, temperature_degc: FloatArray) -> FloatArray:
    """Calendar rate ``k A(T) P(SoC)`` [1/day^z].

    Parameters
    ----------
    law : StressLaw
        Calendar part.
    soc : numpy.ndarray
        SoC [fraction].
    temperature_degc : numpy.ndarray
        Temperature [degC].

    Returns
    -------
    numpy.ndarray
        The rate.
    """
    out: FloatArray = law.k * law.arrhenius(temperature_degc) * law.polynomial(soc)
    return out


def cycle_rate(
    law: StressLaw, depth: FloatArray, c_rate: FloatArray, temperature_degc: FloatArray
) -> FloatArray:
    """Cycle rate ``k A(T) C(c_rate) D(depth)`` [1/FEC^z].

    Parameters
    ----------
    law : StressLaw
        Cycle part.
    depth : numpy.ndarray
        Depth of the (half-)cycle [fraction].
    c_rate : numpy.ndarray
        Mean C-rate [1/h].
    temperature_degc : numpy.ndarray
        Temperature [degC].

    Returns
    -------
    numpy.ndarray
        The rate.
    """
    out: FloatArray = (
        law.k * law.arrhenius(temperature_degc) * law.crate_factor(c_rate) * law.polynomial(depth)
    )
    return out


def calendar_fade(
    law: StressLaw, duration_s: FloatArray, soc: FloatArray, temperature_degc: FloatArray
) -> FloatArray:
    """Calendar part after a storage time at constant SoC and temperature [fraction].

    Parameters
    ----------
    law : StressLaw
        Calendar part.
    duration_s : numpy.ndarray
        Storage time [s].
    soc : numpy.ndarray
        SoC [fraction].
    temperature_degc : numpy.ndarray
        Temperature [degC].

    Returns
    -------
    numpy.ndarray
        Fade (capacity) or growth (resistance) [fraction].
    """
    days = np.asarray(duration_s, dtype=np.float64) / SECONDS_PER_DAY
    out: FloatArray = calendar_rate(law, soc, temperature_degc) * days**law.z
    return out


def cycle_fade(
    law: StressLaw,
    fec: FloatArray,
    depth: FloatArray,
    c_rate: FloatArray,
    temperature_degc: FloatArray,
) -> FloatArray:
    """Cycle part after ``fec`` full equivalent cycles at constant stress [fraction].

    Parameters
    ----------
    law : StressLaw
        Cycle part.
    fec : numpy.ndarray
        Full equivalent cycles [1].
    depth : numpy.ndarray
        Cycle depth [fraction].
    c_rate : numpy.ndarray
        Mean C-rate [1/h].
    temperature_degc : numpy.ndarray
        Temperature [degC].

    Returns
    -------
    numpy.ndarray
        Fade or growth [fraction].
    """
    out: FloatArray = cycle_rate(law, depth, c_rate, temperature_degc) * np.asarray(fec) ** law.z
    return out


def advance_power_law(
    value: FloatArray, rate: FloatArray, z: float, age_step: FloatArray | float
) -> FloatArray:
    """Advance ``x = rate * age ** z`` by ``age_step`` from the present value (virtual age).

    Parameters
    ----------
    value : numpy.ndarray
        Present value [fraction] (>= 0).
    rate : numpy.ndarray
        Present rate [1/unit^z] (>= 0).
    z : float
        Exponent [1].
    age_step : numpy.ndarray
        Age increment [unit] (>= 0).

    Returns
    -------
    numpy.ndarray
        New value, never below ``value``.
    """
    value = np.asarray(value, dtype=np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    if z == 1.0:
        out1: FloatArray = value + rate * age_step
        return out1
    pos = rate > 0
    safe = np.where(pos, rate, 1.0)
    age = np.where(pos, (value / safe) ** (1.0 / z), 0.0)
    out: FloatArray = np.where(pos, np.maximum(safe * (age + age_step) ** z, value), value)
    return out


# -- state and online update ------------------------------------------------------------


@dataclass(frozen=True)
class AgeingState:
    """Ageing state of N cells (immutable; :func:`update` returns a new one).

    Parameters
    ----------
    q_cal, q_cyc : numpy.ndarray
        Calendar and cycle capacity fade [fraction], shape ``(N,)``.
    r_cal, r_cyc : numpy.ndarray
        Calendar and cycle resistance growth [fraction], shape ``(N,)``.
    direction : numpy.ndarray
        Direction of the open half-cycle: +1 SoC rising, -1 falling, 0 not yet known.
    soc_start, soc_extreme : numpy.ndarray
        SoC at the start and the extreme of the open half-cycle [fraction].
    half_ah, half_duration_s, half_temp_ah : numpy.ndarray
        Throughput [Ah], time under current [s] and throughput-weighted temperature sum
        [degC Ah] of the open half-cycle up to its extreme.
    tail_ah, tail_duration_s, tail_temp_ah : numpy.ndarray
        The same since the extreme (a reversal not yet beyond the dead band).
    elapsed_s : numpy.ndarray
        Time accounted so far [s].
    throughput_ah : numpy.ndarray
        Total charge throughput [Ah].
    """

    q_cal: FloatArray
    q_cyc: FloatArray
    r_cal: FloatArray
    r_cyc: FloatArray
    direction: FloatArray
    soc_start: FloatArray
    soc_extreme: FloatArray
    half_ah: FloatArray
    half_duration_s: FloatArray
    half_temp_ah: FloatArray
    tail_ah: FloatArray
    tail_duration_s: FloatArray
    tail_temp_ah: FloatArray
    elapsed_s: FloatArray
    throughput_ah: FloatArray

    @classmethod
    def new(cls, soc: FloatArray) -> AgeingState:
        """Fresh cells at the given SoC.

        Parameters
        ----------
        soc : numpy.ndarray
            Present SoC [fraction], shape ``(N,)``.

        Returns
        -------
        AgeingState
            No fade, no open half-cycle.
        """
        soc = np.asarray(soc, dtype=np.float64).copy()
        z = np.zeros_like(soc)
        values = {f.name: z.copy() for f in fields(cls)}
        values["soc_start"] = soc.copy()
        values["soc_extreme"] = soc.copy()
        return cls(**values)

    @property
    def capacity_factor(self) -> FloatArray:
        """Remaining capacity over fresh capacity [fraction] (state of health)."""
        out: FloatArray = np.minimum(np.maximum(1.0 - self.q_cal - self.q_cyc, 0.0), 1.0)
        return out

    @property
    def resistance_factor(self) -> FloatArray:
        """Resistance over fresh resistance [1]."""
        out: FloatArray = 1.0 + self.r_cal + self.r_cyc
        return out


def _book(
    state: AgeingState,
    params: AgeingParams,
    mask: npt.NDArray[np.bool_],
    ah: FloatArray,
    duration_s: FloatArray,
    temp_ah: FloatArray,
    depth: FloatArray,
    capacity_ah: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Cycle wear of closing half-cycles (where ``mask``)."""
    fec = np.where(mask, ah / (2.0 * capacity_ah), 0.0)
    hours = np.where(duration_s > 0, duration_s / 3600.0, 1.0)
    c_rate = np.where(ah > 0, ah / hours / capacity_ah, 0.0)
    temp = np.where(ah > 0, temp_ah / np.where(ah > 0, ah, 1.0), params.cyc_q.tref_degc)
    q = advance_power_law(
        state.q_cyc, cycle_rate(params.cyc_q, depth, c_rate, temp), params.cyc_q.z, fec
    )
    r = advance_power_law(
        state.r_cyc, cycle_rate(params.cyc_r, depth, c_rate, temp), params.cyc_r.z, fec
    )
    return np.where(mask, q, state.q_cyc), np.where(mask, r, state.r_cyc)


def _as_shape(values: FloatArray | float, shape: tuple[int, ...]) -> FloatArray:
    """``values`` as float64 of ``shape`` (broadcast only when needed)."""
    a = np.asarray(values, dtype=np.float64)
    if a.shape != shape:
        a = np.broadcast_to(a, shape)
    return a


def update(
    state: AgeingState,
    params: AgeingParams,
    dt_s: float,
    soc: FloatArray,
    temperature_degc: FloatArray,
    current_a: FloatArray,
    capacity_ah: FloatArray | float,
) -> AgeingState:
    """Advance the ageing of N cells over one step (pure; returns the new state).

    Parameters
    ----------
    state : AgeingState
        State before the step.
    params : AgeingParams
        Coefficients.
    dt_s : float
        Step [s], >= 0.
    soc : numpy.ndarray
        SoC at the end of the step [fraction], shape ``(N,)``.
    temperature_degc : numpy.ndarray
        Cell temperature during the step [degC].
    current_a : numpy.ndarray
        Mean current during the step [A], positive = discharge.
    capacity_ah : numpy.ndarray or float
        Nominal (fresh) capacity [Ah], the reference of C-rate and FEC.

    Returns
    -------
    AgeingState
        State after the step.
    """
    if dt_s < 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s}")
    soc = np.asarray(soc, dtype=np.float64)
    temp = _as_shape(temperature_degc, soc.shape)
    cur = _as_shape(current_a, soc.shape)
    cap = _as_shape(capacity_ah, soc.shape)
    days = dt_s / SECONDS_PER_DAY

    # Calendar parts.
    q_cal = advance_power_law(
        state.q_cal, calendar_rate(params.cal_q, soc, temp), params.cal_q.z, days
    )
    r_cal = advance_power_law(
        state.r_cal, calendar_rate(params.cal_r, soc, temp), params.cal_r.z, days
    )

    # Half-cycle detection.
    ah = np.abs(cur) * dt_s / 3600.0
    dur = np.where(ah > 0, dt_s, 0.0)
    tah = ah * temp
    band = params.cycle_deadband_soc
    d = state.direction
    unknown = d == 0
    start_dir = unknown & (np.abs(soc - state.soc_start) > band)
    new_dir = np.where(start_dir, np.sign(soc - state.soc_start), d)
    progress = (soc - state.soc_extreme) * new_dir
    known = new_dir != 0
    extend = known & (progress >= 0)
    reverse = known & ~start_dir & (progress < -band)
    in_tail = known & ~extend & ~reverse

    # Throughput accounting of the open half-cycle.
    half_ah = state.half_ah + np.where(unknown | extend, state.tail_ah + ah, 0.0)
    half_dur = state.half_duration_s + np.where(unknown | extend, state.tail_duration_s + dur, 0.0)
    half_tah = state.half_temp_ah + np.where(unknown | extend, state.tail_temp_ah + tah, 0.0)
    tail_ah = np.where(in_tail, state.tail_ah + ah, 0.0)
    tail_dur = np.where(in_tail, state.tail_duration_s + dur, 0.0)
    tail_tah = np.where(in_tail, state.tail_temp_ah + tah, 0.0)
    extreme = np.where(extend | unknown, soc, state.soc_extreme)

    q_cyc, r_cyc = state.q_cyc, state.r_cyc
    if np.any(reverse):
        depth = np.abs(state.soc_extreme - state.soc_start)
        q_cyc, r_cyc = _book(
            state,
            params,
            reverse,
            state.half_ah,
            state.half_duration_s,
            state.half_temp_ah,
            depth,
            cap,
        )
        # The new half-cycle starts at the old extreme with the tail and this step in it.
        half_ah = np.where(reverse, state.tail_ah + ah, half_ah)
        half_dur = np.where(reverse, state.tail_duration_s + dur, half_dur)
        half_tah = np.where(reverse, state.tail_temp_ah + tah, half_tah)
        new_dir = np.where(reverse, -new_dir, new_dir)
        extreme = np.where(reverse, soc, extreme)
    soc_start = np.where(reverse, state.soc_extreme, state.soc_start)
    return AgeingState(
        q_cal=q_cal,
        q_cyc=q_cyc,
        r_cal=r_cal,
        r_cyc=r_cyc,
        direction=new_dir,
        soc_start=soc_start,
        soc_extreme=extreme,
        half_ah=half_ah,
        half_duration_s=half_dur,
        half_temp_ah=half_tah,
        tail_ah=tail_ah,
        tail_duration_s=tail_dur,
        tail_temp_ah=tail_tah,
        elapsed_s=state.elapsed_s + dt_s,
        throughput_ah=state.throughput_ah + ah,
    )


def close_half_cycles(
    state: AgeingState, params: AgeingParams, capacity_ah: FloatArray | float
) -> AgeingState:
    """Book the open half-cycle of every cell (e.g. at the end of a run).

    Parameters
    ----------
    state : AgeingState
        State.
    params : AgeingParams
        Coefficients.
    capacity_ah : numpy.ndarray or float
        Nominal capacity [Ah].

    Returns
    -------
    AgeingState
        State with no open half-cycle (a new one starts at the present extreme).
    """
    cap = np.broadcast_to(np.asarray(capacity_ah, dtype=np.float64), state.q_cyc.shape)
    ah = state.half_ah + state.tail_ah
    mask = ah > 0
    depth = np.abs(state.soc_extreme - state.soc_start)
    q, r = _book(
        state,
        params,
        mask,
        ah,
        state.half_duration_s + state.tail_duration_s,
        state.half_temp_ah + state.tail_temp_ah,
        depth,
        cap,
    )
    z = np.zeros_like(ah)
    return replace(
        state,
        q_cyc=q,
        r_cyc=r,
        direction=np.zeros_like(ah),
        soc_start=state.soc_extreme.copy(),
        half_ah=z,
        half_duration_s=z.copy(),
        half_temp_ah=z.copy(),
        tail_ah=z.copy(),
        tail_duration_s=z.copy(),
        tail_temp_ah=z.copy(),
    )
