"""Battery power conversion system (PCS) of the digital twin.

Signs: AC and DC power and the DC current are positive when the battery DISCHARGES.

Loss model (a documented quadratic, as in the PVWatts/Driesse inverter loss curves)::

    P_loss(P_ac) = p0 + k1 |P_ac| + k2 P_ac^2        while operating (|P_ac| > deadband)
    P_loss       = standby_w                          while idle or with the contactor open

with the energy balance ``P_ac = P_dc - P_loss`` in signed form, i.e. ``P_ac = P_dc - loss``
when discharging and ``|P_dc| = |P_ac| - loss`` when charging. While idle the converter draws
its standby power from the AC side (``P_ac = -standby_w``, ``P_dc = 0``).

The pack is seen through its Thevenin equivalent ``(E, R)``: ``P_dc = (E - R I) I``. For a DC
power the current is the smaller root ``I = 2 P_dc / (E + sqrt(E^2 - 4 R P_dc))`` (beyond
the maximum transferable power ``E^2 / 4R`` the current stops at ``E / 2R``).

One converter step (:func:`convert`):

1. contactor open -> idle (no current, standby draw; the ramp state drops to 0);
2. the setpoint is clamped to the AC ratings, then ramped from the previous AC power by at
   most ``ramp_rate_w_per_s * dt_s``;
3. below the deadband -> idle;
4. the DC power for that AC power gives the current, which is clipped to the BMS's charge and
   discharge current limits: HARD caps, the returned current never exceeds them;
5. if the current was limited, the AC power follows from the DC power actually delivered;
6. if the DC current or the AC power would flow against the request (a charge request below
   the losses, a discharge capped below the no-load loss), the converter idles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ConverterParams:
    """Ratings and loss curve of a battery converter.

    Parameters
    ----------
    max_charge_power_w, max_discharge_power_w : float
        AC power ratings [W], magnitudes > 0.
    no_load_loss_w : float
        ``p0``: loss while operating at zero power [W], >= 0.
    linear_loss_fraction : float
        ``k1``: loss proportional to the power [fraction], in [0, 0.5).
    quadratic_loss_per_w : float
        ``k2``: resistive loss coefficient [1/W], >= 0.
    ramp_rate_w_per_s : float
        Largest change of the AC power per second [W/s], > 0 (``math.inf`` for none).
    standby_w : float
        Consumption while idle or with the contactor open [W], >= 0, drawn from the AC side.
    deadband_w : float
        AC power magnitude below which the converter idles [W], >= 0.
    """

    max_charge_power_w: float
    max_discharge_power_w: float
    no_load_loss_w: float
    linear_loss_fraction: float
    quadratic_loss_per_w: float
    ramp_rate_w_per_s: float = math.inf
    standby_w: float = 0.0
    deadband_w: float = 1.0

    def __post_init__(self) -> None:
        """Check ranges; raise ValueError naming the field."""
        for f in fields(self):
            value = getattr(self, f.name)
            if math.isnan(value):
                raise ValueError(f"ConverterParams.{f.name} must not be NaN")
        checks: list[tuple[str, bool, str]] = [
            ("max_charge_power_w", 0.0 < self.max_charge_power_w < math.inf, "> 0 and finite"),
            (
                "max_discharge_power_w",
                0.0 < self.max_discharge_power_w < math.inf,
                "> 0 and finite",
            ),
            ("no_load_loss_w", 0.0 <= self.no_load_loss_w < math.inf, ">= 0 and finite"),
            ("linear_loss_fraction", 0.0 <= self.linear_loss_fraction < 0.5, "in [0, 0.5)"),
            (
                "quadratic_loss_per_w",
                0.0 <= self.quadratic_loss_per_w < math.inf,
                ">= 0 and finite",
            ),
            ("ramp_rate_w_per_s", self.ramp_rate_w_per_s > 0.0, "> 0"),
            ("standby_w", 0.0 <= self.standby_w < math.inf, ">= 0 and finite"),
            ("deadband_w", 0.0 <= self.deadband_w < math.inf, ">= 0 and finite"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(
                    f"ConverterParams.{name} must be {allowed}, got {getattr(self, name)!r}"
                )
        rating = max(self.max_charge_power_w, self.max_discharge_power_w)
        if self.loss_w(rating) >= rating:
            raise ValueError("ConverterParams: the loss at full power exceeds the power")

    @classmethod
    def typical(
        cls,
        rated_power_w: float,
        *,
        ramp_rate_w_per_s: float = math.inf,
        standby_w: float | None = None,
    ) -> ConverterParams:
        """A typical modern battery inverter of a given rating.

        ``p0 = 0.4 %``, ``k1 = 1.0 %``, ``k2 = 1.5 % / rating``, standby 0.2 % of the rating:
        efficiency 95 % at 10 % load, peak 97.5 % near half load, 97.2 % at full load.

        Parameters
        ----------
        rated_power_w : float
            AC rating in both directions [W].
        ramp_rate_w_per_s : float
            Ramp limit [W/s].
        standby_w : float or None
            Standby consumption [W]; default 0.2 % of the rating.

        Returns
        -------
        ConverterParams
            The parameters.
        """
        return cls(
            max_charge_power_w=rated_power_w,
            max_discharge_power_w=rated_power_w,
            no_load_loss_w=0.004 * rated_power_w,
            linear_loss_fraction=0.010,
            quadratic_loss_per_w=0.015 / rated_power_w,
            ramp_rate_w_per_s=ramp_rate_w_per_s,
            standby_w=0.002 * rated_power_w if standby_w is None else standby_w,
        )

    def loss_w(self, ac_power_w: npt.ArrayLike) -> FloatArray:
        """Loss while operating at an AC power [W] (see :func:`operating_loss_w`)."""
        return operating_loss_w(ac_power_w, self)

    def efficiency(self, ac_power_w: npt.ArrayLike) -> FloatArray:
        """Conversion efficiency while operating [fraction].

        Parameters
        ----------
        ac_power_w : array_like
            AC power [W], either sign (0 gives 0).

        Returns
        -------
        numpy.ndarray
            ``|P_ac| / |P_dc|`` discharging, ``|P_dc| / |P_ac|`` charging.
        """
        p = np.abs(np.asarray(ac_power_w, dtype=np.float64))
        loss = operating_loss_w(p, self)
        with np.errstate(divide="ignore", invalid="ignore"):
            discharge = np.where(p > 0.0, p / (p + loss), 0.0)
            charge = np.where(p > 0.0, np.maximum(p - loss, 0.0) / p, 0.0)
        out: FloatArray = np.where(np.asarray(ac_power_w) >= 0.0, discharge, charge)
        return out


def operating_loss_w(ac_power_w: npt.ArrayLike, params: ConverterParams) -> FloatArray:
    """Quadratic loss curve ``p0 + k1 |P| + k2 P^2`` [W].

    Parameters
    ----------
    ac_power_w : array_like
        AC power [W], either sign.
    params : ConverterParams
        Loss coefficients.

    Returns
    -------
    numpy.ndarray
        Loss [W], >= p0.
    """
    p = np.abs(np.asarray(ac_power_w, dtype=np.float64))
    out: FloatArray = (
        params.no_load_loss_w + params.linear_loss_fraction * p + params.quadratic_loss_per_w * p**2
    )
    return out


def dc_from_ac_w(ac_power_w: npt.ArrayLike, params: ConverterParams) -> FloatArray:
    """DC power for an operating AC power: ``P_dc = P_ac + loss(P_ac)`` [W].

    Parameters
    ----------
    ac_power_w : array_like
        AC power [W], positive = discharge.
    params : ConverterParams
        Loss coefficients.

    Returns
    -------
    numpy.ndarray
        DC power [W], positive = discharge.
    """
    p = np.asarray(ac_power_w, dtype=np.float64)
    out: FloatArray = p + operating_loss_w(p, params)
    return out


def ac_from_dc_w(dc_power_w: npt.ArrayLike, params: ConverterParams) -> FloatArray:
    """Inverse of :func:`dc_from_ac_w` (monotone; ``P_dc = p0`` gives ``P_ac = 0``) [W].

    Parameters
    ----------
    dc_power_w : array_like
        DC power [W], positive = discharge.
    params : ConverterParams
        Loss coefficients.

    Returns
    -------
    numpy.ndarray
        AC power [W], positive = discharge.
    """
    pdc = np.asarray(dc_power_w, dtype=np.float64)
    p0, k1, k2 = params.no_load_loss_w, params.linear_loss_fraction, params.quadratic_loss_per_w
    c = pdc - p0
    pos = np.maximum(c, 0.0)
    neg = np.maximum(-c, 0.0)
    # discharge: k2 P^2 + (1 + k1) P - c = 0 ; charge (x = -P): k2 x^2 - (1 - k1) x + (-c) = 0
    discharge = 2.0 * pos / ((1.0 + k1) + np.sqrt((1.0 + k1) ** 2 + 4.0 * k2 * pos))
    disc = np.maximum((1.0 - k1) ** 2 - 4.0 * k2 * neg, 0.0)
    charge = 2.0 * neg / ((1.0 - k1) + np.sqrt(disc))
    out: FloatArray = np.where(c >= 0.0, discharge, -charge)
    return out


def current_for_dc_power_a(
    dc_power_w: npt.ArrayLike, e_v: npt.ArrayLike, r_ohm: npt.ArrayLike
) -> FloatArray:
    """Pack current that delivers a DC power through ``(E, R)``: ``(E - R I) I = P``.

    Parameters
    ----------
    dc_power_w : array_like
        DC power [W], positive = discharge.
    e_v : array_like
        Thevenin source voltage [V], > 0.
    r_ohm : array_like
        Thevenin resistance [ohm], >= 0.

    Returns
    -------
    numpy.ndarray
        Current [A], positive = discharge (the smaller-magnitude root; ``E / 2R`` when the
        power exceeds the maximum transferable ``E^2 / 4R``).
    """
    p = np.asarray(dc_power_w, dtype=np.float64)
    e = np.asarray(e_v, dtype=np.float64)
    r = np.asarray(r_ohm, dtype=np.float64)
    disc = e**2 - 4.0 * r * p
    root = np.sqrt(np.maximum(disc, 0.0))
    out: FloatArray = np.where(disc >= 0.0, 2.0 * p / (e + root), e / (2.0 * np.maximum(r, 1e-300)))
    return out


class Conversion(NamedTuple):
    """Result of one converter step (floats or arrays).

    Parameters
    ----------
    current_a : float or numpy.ndarray
        DC pack current [A], positive = discharge; within the BMS caps.
    ac_power_w : float or numpy.ndarray
        AC power at the converter terminals [W], positive = discharge (export to the site).
    loss_w : float or numpy.ndarray
        Conversion loss or standby consumption [W], ``= dc_power_w - ac_power_w``.
    dc_power_w : float or numpy.ndarray
        DC power at the pack terminals [W], ``(E - R I) I``.
    """

    current_a: FloatArray | float
    ac_power_w: FloatArray | float
    loss_w: FloatArray | float
    dc_power_w: FloatArray | float


def convert(
    setpoint_ac_w: npt.ArrayLike,
    charge_current_limit_a: npt.ArrayLike,
    discharge_current_limit_a: npt.ArrayLike,
    contactor_closed: npt.ArrayLike,
    e_v: npt.ArrayLike,
    r_ohm: npt.ArrayLike,
    params: ConverterParams,
    previous_ac_w: npt.ArrayLike = 0.0,
    dt_s: float = math.inf,
) -> Conversion:
    """One converter step: setpoint and BMS caps in, DC current and AC power out.

    Parameters
    ----------
    setpoint_ac_w : array_like
        Requested AC power [W], positive = discharge.
    charge_current_limit_a, discharge_current_limit_a : array_like
        BMS current caps [A], magnitudes >= 0 (hard: never exceeded).
    contactor_closed : array_like of bool
        Main contactor state; open means no current.
    e_v : array_like
        Pack Thevenin source voltage [V], > 0 where the contactor is closed.
    r_ohm : array_like
        Pack Thevenin resistance [ohm], >= 0.
    params : ConverterParams
        The converter.
    previous_ac_w : array_like
        Operating AC power of the previous step [W] (0 when idle), the ramp's start.
    dt_s : float
        Time since the previous step [s], >= 0 (``math.inf``: no ramp limit).

    Returns
    -------
    Conversion
        ``(current_a, ac_power_w, loss_w, dc_power_w)`` as arrays of the broadcast shape;
        ``ac_power_w = dc_power_w - loss_w`` exactly, ``-charge_limit <= current_a <=
        discharge_limit``.

    Raises
    ------
    ValueError
        On NaN inputs, negative caps, a non-positive ``e_v`` with the contactor closed, a
        negative resistance or ``dt_s``.
    """
    sp = np.asarray(setpoint_ac_w, dtype=np.float64)
    ccl = np.asarray(charge_current_limit_a, dtype=np.float64)
    dcl = np.asarray(discharge_current_limit_a, dtype=np.float64)
    closed = np.asarray(contactor_closed, dtype=bool)
    e = np.asarray(e_v, dtype=np.float64)
    r = np.asarray(r_ohm, dtype=np.float64)
    prev = np.asarray(previous_ac_w, dtype=np.float64)
    for name, arr in (
        ("setpoint_ac_w", sp),
        ("charge_current_limit_a", ccl),
        ("discharge_current_limit_a", dcl),
        ("e_v", e),
        ("r_ohm", r),
        ("previous_ac_w", prev),
    ):
        if np.isnan(arr).any():
            raise ValueError(f"{name} must not be NaN")
    if (ccl < 0.0).any() or (dcl < 0.0).any():
        raise ValueError("current limits are magnitudes and must be >= 0")
    if (r < 0.0).any():
        raise ValueError("r_ohm must be >= 0")
    if (closed & ~(e > 0.0)).any():
        raise ValueError("e_v must be > 0 while the contactor is closed")
    if math.isnan(dt_s) or dt_s < 0.0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")

    sp, ccl, dcl, closed, e, r, prev = np.broadcast_arrays(sp, ccl, dcl, closed, e, r, prev)
    target = np.clip(sp, -params.max_charge_power_w, params.max_discharge_power_w)
    if math.isfinite(params.ramp_rate_w_per_s) and math.isfinite(dt_s):
        step = params.ramp_rate_w_per_s * dt_s
        target = np.clip(target, prev - step, prev + step)
        target = np.clip(target, -params.max_charge_power_w, params.max_discharge_power_w)
    e_safe = np.where(closed, e, 1.0)
    operating = closed & (np.abs(target) > params.deadband_w)

    pdc_wanted = dc_from_ac_w(target, params)
    current = current_for_dc_power_a(pdc_wanted, e_safe, r)
    current = np.clip(current, -ccl, dcl)
    current = np.where(operating, current, 0.0)
    operating &= current != 0.0
    current = np.where(operating, current, 0.0)

    pdc = (e_safe - r * current) * current
    limited = ~np.isclose(pdc, pdc_wanted, rtol=1e-12, atol=1e-9)
    ac = np.where(limited, ac_from_dc_w(pdc, params), target)
    # the converter never runs the battery against the request: a charge request smaller than
    # the losses, or a discharge capped below the no-load loss, would turn a flow around (the
    # battery or the grid feeding the losses alone); the converter idles instead
    operating &= (ac * target > 0.0) & (current * target > 0.0)
    current = np.where(operating, current, 0.0)
    ac = np.where(operating, ac, -params.standby_w)
    pdc = np.where(operating, pdc, 0.0)
    loss = pdc - ac
    return Conversion(current_a=current, ac_power_w=ac, loss_w=loss, dc_power_w=pdc)


def convert_scalar(
    setpoint_ac_w: float,
    charge_current_limit_a: float,
    discharge_current_limit_a: float,
    contactor_closed: bool,
    e_v: float,
    r_ohm: float,
    params: ConverterParams,
    previous_ac_w: float = 0.0,
    dt_s: float = math.inf,
) -> tuple[float, float, float, float]:
    """:func:`convert` for one converter, in plain floats (the same numbers, ~20x faster).

    Parameters
    ----------
    setpoint_ac_w : float
        Requested AC power [W], positive = discharge.
    charge_current_limit_a, discharge_current_limit_a : float
        BMS current caps [A], magnitudes >= 0.
    contactor_closed : bool
        Main contactor state.
    e_v : float
        Pack Thevenin source voltage [V], > 0 while the contactor is closed.
    r_ohm : float
        Pack Thevenin resistance [ohm], >= 0.
    params : ConverterParams
        The converter.
    previous_ac_w : float
        Operating AC power of the previous step [W], the ramp's start.
    dt_s : float
        Time since the previous step [s], >= 0.

    Returns
    -------
    tuple of float
        ``(current_a, ac_power_w, loss_w, dc_power_w)`` as :func:`convert` returns them.

    Raises
    ------
    ValueError
        As :func:`convert`.
    """
    sp = float(setpoint_ac_w)
    ccl = float(charge_current_limit_a)
    dcl = float(discharge_current_limit_a)
    e = float(e_v)
    r = float(r_ohm)
    prev = float(previous_ac_w)
    closed = bool(contactor_closed)
    if math.isnan(sp + ccl + dcl + e + r + prev):  # a NaN, or infinities of both signs
        for name, value in (
            ("setpoint_ac_w", sp),
            ("charge_current_limit_a", ccl),
            ("discharge_current_limit_a", dcl),
            ("e_v", e),
            ("r_ohm", r),
            ("previous_ac_w", prev),
        ):
            if math.isnan(value):
                raise ValueError(f"{name} must not be NaN")
    if ccl < 0.0 or dcl < 0.0:
        raise ValueError("current limits are magnitudes and must be >= 0")
    if r < 0.0:
        raise ValueError("r_ohm must be >= 0")
    if closed and not e > 0.0:
        raise ValueError("e_v must be > 0 while the contactor is closed")
    if math.isnan(dt_s) or dt_s < 0.0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")

    p_chg, p_dis = params.max_charge_power_w, params.max_discharge_power_w
    target = min(max(sp, -p_chg), p_dis)
    if math.isfinite(params.ramp_rate_w_per_s) and math.isfinite(dt_s):
        step = params.ramp_rate_w_per_s * dt_s
        target = min(max(target, prev - step), prev + step)
        target = min(max(target, -p_chg), p_dis)
    standby = -params.standby_w
    if not closed or not abs(target) > params.deadband_w:
        return 0.0, standby, 0.0 - standby, 0.0
    p0, k1, k2 = params.no_load_loss_w, params.linear_loss_fraction, params.quadratic_loss_per_w
    p = abs(target)
    pdc_wanted = target + (p0 + k1 * p + k2 * (p * p))
    disc = e * e - 4.0 * r * pdc_wanted
    if disc >= 0.0:
        current = 2.0 * pdc_wanted / (e + math.sqrt(disc))
    else:
        current = e / (2.0 * max(r, 1e-300))
    current = min(max(current, -ccl), dcl)
    if current == 0.0:
        return 0.0, standby, 0.0 - standby, 0.0
    pdc = (e - r * current) * current
    if pdc == pdc_wanted or (
        abs(pdc - pdc_wanted) <= 1e-9 + 1e-12 * abs(pdc_wanted) and math.isfinite(pdc_wanted)
    ):  # numpy.isclose(pdc, pdc_wanted, rtol=1e-12, atol=1e-9)
        ac = target
    else:
        c = pdc - p0
        if c >= 0.0:
            ac = 2.0 * c / ((1.0 + k1) + math.sqrt((1.0 + k1) ** 2 + 4.0 * k2 * c))
        else:
            neg = -c
            rad = max((1.0 - k1) ** 2 - 4.0 * k2 * neg, 0.0)
            ac = -(2.0 * neg / ((1.0 - k1) + math.sqrt(rad)))
    if not (ac * target > 0.0 and current * target > 0.0):
        return 0.0, standby, 0.0 - standby, 0.0
    return current, ac, pdc - ac, pdc


def ac_power_limits_w(
    e_v: float,
    r_ohm: float,
    charge_current_limit_a: float,
    discharge_current_limit_a: float,
    params: ConverterParams,
) -> tuple[float, float]:
    """AC power reachable at the BMS current caps, within the converter ratings.

    Parameters
    ----------
    e_v : float
        Pack Thevenin source voltage [V], > 0.
    r_ohm : float
        Pack Thevenin resistance [ohm], >= 0.
    charge_current_limit_a, discharge_current_limit_a : float
        Current caps [A], magnitudes >= 0.
    params : ConverterParams
        The converter.

    Returns
    -------
    tuple of float
        Charge and discharge AC power limits [W], magnitudes >= 0.
    """
    if not e_v > 0.0 or r_ohm < 0.0:
        raise ValueError(f"need e_v > 0 and r_ohm >= 0, got {e_v!r}, {r_ohm!r}")
    i_dis = discharge_current_limit_a
    if r_ohm > 0.0:
        i_dis = min(i_dis, e_v / (2.0 * r_ohm))
    p_dis = float(ac_from_dc_w((e_v - r_ohm * i_dis) * i_dis, params))
    i_chg = charge_current_limit_a
    p_chg = float(ac_from_dc_w((e_v + r_ohm * i_chg) * -i_chg, params))
    return (
        min(max(-p_chg, 0.0), params.max_charge_power_w),
        min(max(p_dis, 0.0), params.max_discharge_power_w),
    )


def fit_loss_coefficients(
    ac_power_w: npt.ArrayLike, efficiency: npt.ArrayLike
) -> tuple[float, float, float]:
    """Fit ``p0, k1, k2`` to measured discharge efficiencies (e.g. a CEC or Sandia curve).

    Parameters
    ----------
    ac_power_w : array_like
        AC output powers [W], > 0.
    efficiency : array_like
        Efficiency ``P_ac / P_dc`` at those powers [fraction], in (0, 1].

    Returns
    -------
    tuple of float
        ``(no_load_loss_w, linear_loss_fraction, quadratic_loss_per_w)``, each >= 0
        (non-negative least squares on the loss).

    Raises
    ------
    ValueError
        With fewer than three points or values out of range.
    """
    from scipy.optimize import nnls

    p = np.asarray(ac_power_w, dtype=np.float64).ravel()
    eta = np.asarray(efficiency, dtype=np.float64).ravel()
    if p.size < 3 or p.shape != eta.shape:
        raise ValueError("need at least three (power, efficiency) points of equal length")
    if (p <= 0.0).any() or (eta <= 0.0).any() or (eta > 1.0).any():
        raise ValueError("powers must be > 0 and efficiencies in (0, 1]")
    loss = p * (1.0 / eta - 1.0)
    scale = float(p.max())
    a = np.column_stack([np.ones_like(p), p / scale, (p / scale) ** 2])
    coef, _ = nnls(a, loss)
    return float(coef[0]), float(coef[1] / scale), float(coef[2] / scale**2)


class Converter:
    """A converter with its ramp state, stepped once per twin cycle.

    Parameters
    ----------
    params : ConverterParams
        Ratings and loss curve.
    """

    def __init__(self, params: ConverterParams) -> None:
        self.params = params
        self.operating_ac_w = 0.0

    def step(
        self,
        setpoint_ac_w: float,
        charge_current_limit_a: float,
        discharge_current_limit_a: float,
        contactor_closed: bool,
        e_v: float,
        r_ohm: float,
        dt_s: float,
    ) -> Conversion:
        """Advance one step (see :func:`convert`) and keep the AC power for the ramp.

        Parameters
        ----------
        setpoint_ac_w : float
            Requested AC power [W], positive = discharge.
        charge_current_limit_a, discharge_current_limit_a : float
            BMS current caps [A], magnitudes.
        contactor_closed : bool
            Main contactor state.
        e_v : float
            Pack Thevenin source voltage [V].
        r_ohm : float
            Pack Thevenin resistance [ohm].
        dt_s : float
            Step length [s].

        Returns
        -------
        Conversion
            Floats: current [A], AC power [W], loss [W], DC power [W].
        """
        current, ac, loss, pdc = convert_scalar(
            setpoint_ac_w,
            charge_current_limit_a,
            discharge_current_limit_a,
            contactor_closed,
            e_v,
            r_ohm,
            self.params,
            self.operating_ac_w,
            dt_s,
        )
        self.operating_ac_w = ac if current != 0.0 else 0.0
        return Conversion(current_a=current, ac_power_w=ac, loss_w=loss, dc_power_w=pdc)
