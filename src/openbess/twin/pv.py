"""PV plant of the digital twin, built on pvlib.

The weather route (``source="clearsky_index"``, the default)::

    GHI      = k(t) * GHI_clear(t)                 Ineichen clear sky, Linke turbidity from pvlib
    DNI, DHI = Erbs decomposition of GHI
    POA      = Hay-Davies transposition to the plant's tilt and azimuth (+ ground reflection)
    T_cell   = Faiman model from POA and the air temperature
    P_dc     = PVWatts DC: P_dc0 * POA / 1000 * (1 + gamma (T_cell - 25)) * (1 - losses)
    P_ac     = PVWatts inverter, clipped at the AC limit, never negative

``k(t)`` is the clearness index bundled with :func:`openbess.data.read_household`: it was
derived (``scripts/build_data.py``) by inverting this same chain on one year of measured 30-min
PV output of a household in north-east France (48.83 N, 6.86 E), so its clouds are real
(including their day-to-day persistence) while the sun geometry is computed for the plant's
own location and time. No air temperature was measured; a monthly climatology of north-east
France with a diurnal swing stands in for it (only the ~0.4 %/K module temperature
coefficient depends on it).

The measured route (``source="measured"``) replays the household's measured PV scaled by
``dc_capacity_w`` over the household plant's fitted capacity (its orientation is kept, the
plant's tilt and azimuth are ignored).

Either way the model is evaluated on a cached regular grid (``cache_step_s``, one UTC day at
a time) and read linearly in between, so a twin calling it every second stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import pvlib

from openbess.data import read_household, read_household_pv_fit
from openbess.data.timeseries import DAY_S, TimesLike, sample, to_datetime_index, to_unix_s

FloatArray = npt.NDArray[np.float64]

# Approximate monthly mean air temperatures of north-east France (Lorraine, about 1991-2020
# climate normals, rounded to 0.5 degC), January first [degC]. Only the module temperature
# correction uses them.
NE_FRANCE_MONTHLY_AIR_TEMPERATURE_DEGC: tuple[float, ...] = (
    2.0,
    3.0,
    6.5,
    10.0,
    14.0,
    17.5,
    19.5,
    19.0,
    15.0,
    11.0,
    6.0,
    3.0,
)

MAX_CLEARNESS_INDEX = 1.5


@dataclass(frozen=True, slots=True)
class SolarGeometry:
    """Sun position and extraterrestrial irradiance at a set of times.

    Parameters
    ----------
    zenith_deg, apparent_zenith_deg, azimuth_deg : numpy.ndarray
        Solar zenith (true and refraction-corrected) and azimuth [deg].
    dni_extra_w_m2 : numpy.ndarray
        Extraterrestrial normal irradiance [W/m2].
    day_of_year : numpy.ndarray
        Day of year (1..366) in UTC.
    """

    zenith_deg: FloatArray
    apparent_zenith_deg: FloatArray
    azimuth_deg: FloatArray
    dni_extra_w_m2: FloatArray
    day_of_year: npt.NDArray[np.int64]


def solar_geometry(
    time_s: npt.ArrayLike, latitude_deg: float, longitude_deg: float, altitude_m: float
) -> SolarGeometry:
    """Sun position (NREL SPA, numpy) and extraterrestrial irradiance.

    Parameters
    ----------
    time_s : array_like
        Times [s, Unix UTC], 1-D.
    latitude_deg, longitude_deg : float
        Site [deg], north and east positive.
    altitude_m : float
        Site altitude [m].

    Returns
    -------
    SolarGeometry
        Arrays of the shape of ``time_s``.
    """
    t = np.atleast_1d(np.asarray(time_s, dtype=np.float64))
    index = to_datetime_index(t)
    pos = pvlib.solarposition.get_solarposition(index, latitude_deg, longitude_deg, altitude_m)
    doy = np.asarray(index.day_of_year, dtype=np.int64)
    return SolarGeometry(
        zenith_deg=pos["zenith"].to_numpy(dtype=np.float64),
        apparent_zenith_deg=pos["apparent_zenith"].to_numpy(dtype=np.float64),
        azimuth_deg=pos["azimuth"].to_numpy(dtype=np.float64),
        dni_extra_w_m2=np.asarray(pvlib.irradiance.get_extra_radiation(doy), dtype=np.float64),
        day_of_year=doy,
    )


def linke_turbidity_daily(latitude_deg: float, longitude_deg: float) -> FloatArray:
    """Linke turbidity for each day of the year, from pvlib's climatology (offline file).

    Parameters
    ----------
    latitude_deg, longitude_deg : float
        Site [deg].

    Returns
    -------
    numpy.ndarray
        Linke turbidity [1], shape ``(366,)``, index = day of year - 1.
    """
    months = pd.date_range("2024-01-01", periods=13, freq="MS", tz="UTC")
    mid_doy = 1.0 + ((months[:-1] - months[0]) + (months[1:] - months[:-1]) / 2) / pd.Timedelta(
        days=1
    )
    monthly = np.asarray(
        pvlib.clearsky.lookup_linke_turbidity(
            months[:-1] + pd.Timedelta(days=14), latitude_deg, longitude_deg, interp_turbidity=False
        ),
        dtype=np.float64,
    )
    # periodic linear interpolation between mid-month days, as pvlib does
    x = np.concatenate(
        [[mid_doy[-1] - 366.0], mid_doy.to_numpy(dtype=np.float64), [mid_doy[0] + 366.0]]
    )
    y = np.concatenate([[monthly[-1]], monthly, [monthly[0]]])
    out: FloatArray = np.interp(np.arange(1.0, 367.0), x, y)
    return out


def clearsky_ghi_w_m2(
    geometry: SolarGeometry, linke_daily: FloatArray, altitude_m: float
) -> FloatArray:
    """Ineichen-Perez clear-sky global horizontal irradiance.

    Parameters
    ----------
    geometry : SolarGeometry
        Sun position.
    linke_daily : numpy.ndarray
        Linke turbidity per day of year, from :func:`linke_turbidity_daily`.
    altitude_m : float
        Site altitude [m].

    Returns
    -------
    numpy.ndarray
        Clear-sky GHI [W/m2], >= 0.
    """
    # pvlib divides by cos(zenith) and the air mass: inf/NaN below the horizon are set to 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        am_rel = pvlib.atmosphere.get_relative_airmass(geometry.apparent_zenith_deg)
        am_abs = pvlib.atmosphere.get_absolute_airmass(
            am_rel, pvlib.atmosphere.alt2pres(altitude_m)
        )
        cs = pvlib.clearsky.ineichen(
            geometry.apparent_zenith_deg,
            am_abs,
            linke_daily[geometry.day_of_year - 1],
            altitude=altitude_m,
            dni_extra=geometry.dni_extra_w_m2,
        )
    ghi = np.nan_to_num(np.asarray(cs["ghi"], dtype=np.float64), nan=0.0)
    out: FloatArray = np.maximum(ghi, 0.0)
    return out


def plane_of_array_w_m2(
    ghi_w_m2: npt.ArrayLike,
    geometry: SolarGeometry,
    tilt_deg: float,
    azimuth_deg: float,
    albedo: float = 0.2,
) -> FloatArray:
    """Plane-of-array irradiance from GHI (Erbs decomposition, Hay-Davies transposition).

    Parameters
    ----------
    ghi_w_m2 : array_like
        Global horizontal irradiance [W/m2].
    geometry : SolarGeometry
        Sun position.
    tilt_deg : float
        Module tilt from horizontal [deg].
    azimuth_deg : float
        Module azimuth [deg], 180 = south.
    albedo : float
        Ground reflectance [1].

    Returns
    -------
    numpy.ndarray
        POA global irradiance [W/m2], >= 0.
    """
    ghi = np.maximum(np.asarray(ghi_w_m2, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        parts = pvlib.irradiance.erbs(ghi, geometry.zenith_deg, geometry.day_of_year)
        dni = np.nan_to_num(np.asarray(parts["dni"], dtype=np.float64), nan=0.0)
        dhi = np.nan_to_num(np.asarray(parts["dhi"], dtype=np.float64), nan=0.0)
        poa = pvlib.irradiance.get_total_irradiance(
            tilt_deg,
            azimuth_deg,
            geometry.apparent_zenith_deg,
            geometry.azimuth_deg,
            dni,
            ghi,
            dhi,
            dni_extra=geometry.dni_extra_w_m2,
            albedo=albedo,
            model="haydavies",
        )
    out: FloatArray = np.maximum(
        np.nan_to_num(np.asarray(poa["poa_global"], dtype=np.float64), nan=0.0), 0.0
    )
    return out


def air_temperature_degc(
    time_s: npt.ArrayLike,
    longitude_deg: float,
    monthly_mean_degc: Sequence[float],
    diurnal_amplitude_k: float,
) -> FloatArray:
    """Climatological air temperature: monthly mean plus a diurnal cosine peaking at 14:00.

    Parameters
    ----------
    time_s : array_like
        Times [s, Unix UTC].
    longitude_deg : float
        Site longitude [deg] (gives local solar time).
    monthly_mean_degc : sequence of 12 float
        Monthly mean air temperature [degC], January first.
    diurnal_amplitude_k : float
        Half the daily swing [K].

    Returns
    -------
    numpy.ndarray
        Air temperature [degC].
    """
    t = np.asarray(time_s, dtype=np.float64)
    month = (t.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)) % 12
    solar_hour = np.mod(t / 3600.0 + longitude_deg / 15.0, 24.0)
    means = np.asarray(monthly_mean_degc, dtype=np.float64)
    out: FloatArray = means[month] + diurnal_amplitude_k * np.cos(
        2.0 * np.pi * (solar_hour - 14.0) / 24.0
    )
    return out


def ac_power_from_poa_w(
    poa_w_m2: npt.ArrayLike,
    air_temperature_degc: npt.ArrayLike,
    dc_capacity_w: float,
    inverter_ac_limit_w: float,
    losses_fraction: float = 0.14,
    gamma_pdc_per_k: float = -0.004,
    inverter_efficiency: float = 0.96,
) -> FloatArray:
    """PVWatts DC and inverter models: AC power from plane-of-array irradiance.

    Parameters
    ----------
    poa_w_m2 : array_like
        POA irradiance [W/m2].
    air_temperature_degc : array_like
        Air temperature [degC] (cell temperature from the Faiman model, 1 m/s wind).
    dc_capacity_w : float
        DC nameplate at STC [W].
    inverter_ac_limit_w : float
        Inverter AC rating [W]; output is clipped there.
    losses_fraction : float
        Lumped DC system losses (soiling, wiring, mismatch, reflection...) [fraction].
    gamma_pdc_per_k : float
        Power temperature coefficient [1/K].
    inverter_efficiency : float
        Nominal inverter efficiency [fraction].

    Returns
    -------
    numpy.ndarray
        AC power [W], ``0 <= P <= inverter_ac_limit_w``.
    """
    poa = np.maximum(np.asarray(poa_w_m2, dtype=np.float64), 0.0)
    temp_cell = pvlib.temperature.faiman(poa, np.asarray(air_temperature_degc, dtype=np.float64))
    pdc = pvlib.pvsystem.pvwatts_dc(poa, temp_cell, dc_capacity_w, gamma_pdc_per_k)
    pdc = np.maximum(np.asarray(pdc, dtype=np.float64) * (1.0 - losses_fraction), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pac = pvlib.inverter.pvwatts(
            pdc, inverter_ac_limit_w / inverter_efficiency, eta_inv_nom=inverter_efficiency
        )
    out: FloatArray = np.clip(
        np.nan_to_num(np.asarray(pac, dtype=np.float64), nan=0.0), 0.0, inverter_ac_limit_w
    )
    return out


@dataclass(frozen=True, slots=True)
class PvPlant:
    """Parameters of a PV plant.

    Parameters
    ----------
    dc_capacity_w : float
        DC nameplate at STC [W] (kWp * 1000).
    inverter_ac_limit_w : float
        Inverter AC rating [W].
    tilt_deg : float
        Module tilt [deg] from horizontal.
    azimuth_deg : float
        Module azimuth [deg], 180 = south, 90 = east.
    latitude_deg, longitude_deg : float
        Location [deg], north and east positive (default: the bundled household, north-east
        France).
    altitude_m : float
        Altitude [m].
    losses_fraction : float
        Lumped DC losses [fraction] (PVWatts default 0.14).
    gamma_pdc_per_k : float
        Module power temperature coefficient [1/K].
    inverter_efficiency : float
        Nominal inverter efficiency [fraction].
    albedo : float
        Ground reflectance [1].
    monthly_air_temperature_degc : tuple of 12 float
        Monthly mean air temperature [degC], January first.
    diurnal_temperature_amplitude_k : float
        Half the daily air temperature swing [K].
    """

    dc_capacity_w: float
    inverter_ac_limit_w: float
    tilt_deg: float = 30.0
    azimuth_deg: float = 180.0
    latitude_deg: float = 48.83
    longitude_deg: float = 6.86
    altitude_m: float = 300.0
    losses_fraction: float = 0.14
    gamma_pdc_per_k: float = -0.004
    inverter_efficiency: float = 0.96
    albedo: float = 0.2
    monthly_air_temperature_degc: tuple[float, ...] = NE_FRANCE_MONTHLY_AIR_TEMPERATURE_DEGC
    diurnal_temperature_amplitude_k: float = 4.0

    def __post_init__(self) -> None:
        """Check ranges; raise ValueError naming the field."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "monthly_air_temperature_degc":
                if len(value) != 12 or not all(math.isfinite(v) for v in value):
                    raise ValueError(f"PvPlant.{f.name} must hold 12 finite values")
            elif not math.isfinite(value):
                raise ValueError(f"PvPlant.{f.name} must be finite, got {value!r}")
        checks: list[tuple[str, bool, str]] = [
            ("dc_capacity_w", self.dc_capacity_w >= 0.0, ">= 0"),
            ("inverter_ac_limit_w", self.inverter_ac_limit_w > 0.0, "> 0"),
            ("tilt_deg", 0.0 <= self.tilt_deg <= 90.0, "in [0, 90]"),
            ("azimuth_deg", 0.0 <= self.azimuth_deg <= 360.0, "in [0, 360]"),
            ("latitude_deg", -90.0 <= self.latitude_deg <= 90.0, "in [-90, 90]"),
            ("longitude_deg", -180.0 <= self.longitude_deg <= 180.0, "in [-180, 180]"),
            ("losses_fraction", 0.0 <= self.losses_fraction < 1.0, "in [0, 1)"),
            ("inverter_efficiency", 0.5 < self.inverter_efficiency <= 1.0, "in (0.5, 1]"),
            ("albedo", 0.0 <= self.albedo <= 1.0, "in [0, 1]"),
            ("gamma_pdc_per_k", -0.02 <= self.gamma_pdc_per_k <= 0.0, "in [-0.02, 0]"),
            (
                "diurnal_temperature_amplitude_k",
                self.diurnal_temperature_amplitude_k >= 0.0,
                ">= 0",
            ),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"PvPlant.{name} must be {allowed}, got {getattr(self, name)!r}")


def pv_power_w(
    time_s: npt.ArrayLike,
    clearness_index: npt.ArrayLike,
    plant: PvPlant,
    linke_daily: FloatArray | None = None,
) -> FloatArray:
    """AC power of a plant for given clearness indices (the whole weather chain).

    Parameters
    ----------
    time_s : array_like
        Times [s, Unix UTC], 1-D.
    clearness_index : array_like
        GHI over clear-sky GHI [1], same shape (clipped to [0, 1.5]).
    plant : PvPlant
        The plant.
    linke_daily : numpy.ndarray or None
        Daily Linke turbidity (from :func:`linke_turbidity_daily`); looked up if None.

    Returns
    -------
    numpy.ndarray
        AC power [W], in ``[0, plant.inverter_ac_limit_w]``.
    """
    t = np.atleast_1d(np.asarray(time_s, dtype=np.float64))
    if linke_daily is None:
        linke_daily = linke_turbidity_daily(plant.latitude_deg, plant.longitude_deg)
    geom = solar_geometry(t, plant.latitude_deg, plant.longitude_deg, plant.altitude_m)
    k = np.clip(np.asarray(clearness_index, dtype=np.float64), 0.0, MAX_CLEARNESS_INDEX)
    ghi = k * clearsky_ghi_w_m2(geom, linke_daily, plant.altitude_m)
    poa = plane_of_array_w_m2(ghi, geom, plant.tilt_deg, plant.azimuth_deg, plant.albedo)
    temp = air_temperature_degc(
        t,
        plant.longitude_deg,
        plant.monthly_air_temperature_degc,
        plant.diurnal_temperature_amplitude_k,
    )
    return ac_power_from_poa_w(
        poa,
        temp,
        plant.dc_capacity_w,
        plant.inverter_ac_limit_w,
        plant.losses_fraction,
        plant.gamma_pdc_per_k,
        plant.inverter_efficiency,
    )


class PvModel:
    """A PV plant producing power at any time, from bundled or given weather.

    Parameters
    ----------
    plant : PvPlant
        The plant.
    source : {"clearsky_index", "measured"}
        ``clearsky_index``: pvlib chain driven by a clearness index series;
        ``measured``: a measured PV series scaled by ``dc_capacity_w / reference_dc_w``.
    weather : pandas.DataFrame or None
        UTC-indexed interval series with column ``clearness_index`` [1] (``clearsky_index``)
        or ``pv_w`` [W] (``measured``); default: the bundled household series.
    reference_dc_w : float or None
        DC capacity of the plant that produced the measured ``pv_w`` [W]; default the fitted
        household plant. Only used with ``source="measured"``.
    cache_step_s : float
        Grid of the cache [s]; 0 evaluates pvlib at every requested time.
    wrap : bool
        Map times outside the weather series onto it by whole weeks (see
        :func:`openbess.data.wrap_times_s`); if False such times raise SimulationError.
    """

    def __init__(
        self,
        plant: PvPlant,
        *,
        source: Literal["clearsky_index", "measured"] = "clearsky_index",
        weather: pd.DataFrame | None = None,
        reference_dc_w: float | None = None,
        cache_step_s: float = 300.0,
        wrap: bool = True,
    ) -> None:
        if source not in ("clearsky_index", "measured"):
            raise ValueError(f"source must be 'clearsky_index' or 'measured', got {source!r}")
        if not (cache_step_s == 0.0 or 1.0 <= cache_step_s <= 3600.0):
            raise ValueError(f"cache_step_s must be 0 or in [1, 3600] s, got {cache_step_s!r}")
        self.plant = plant
        self.source = source
        self.wrap = wrap
        self.cache_step_s = float(cache_step_s)
        column = "clearness_index" if source == "clearsky_index" else "pv_w"
        if weather is None:
            weather = read_household()
        if column not in weather.columns:
            raise ValueError(f"weather needs a column {column!r}, has {list(weather.columns)}")
        self._index_s = to_unix_s(pd.DatetimeIndex(weather.index))
        values = weather[column].to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError(f"weather column {column!r} has NaN values: fill the gaps first")
        self._values = values
        self._scale = 1.0
        if source == "measured":
            ref = reference_dc_w
            if ref is None:
                ref = read_household_pv_fit()["dc_capacity_w"]
            if not ref > 0.0:
                raise ValueError(f"reference_dc_w must be > 0, got {ref!r}")
            self._scale = plant.dc_capacity_w / ref
        self._linke = (
            linke_turbidity_daily(plant.latitude_deg, plant.longitude_deg)
            if source == "clearsky_index"
            else np.zeros(366)
        )
        self._cache: dict[int, FloatArray] = {}

    def _evaluate(self, time_s: FloatArray) -> FloatArray:
        if self.source == "measured":
            pv = sample(
                self._index_s, self._values, time_s, method="hold", wrap=self.wrap, name="PV"
            )
            out: FloatArray = np.clip(pv * self._scale, 0.0, self.plant.inverter_ac_limit_w)
            return out
        k = sample(
            self._index_s,
            self._values,
            time_s,
            method="linear",
            wrap=self.wrap,
            name="clearness index",
        )
        return pv_power_w(time_s, k, self.plant, self._linke)

    def _fill_cache(self, days: npt.NDArray[np.int64]) -> None:
        missing = [int(d) for d in np.unique(days) if int(d) not in self._cache]
        if not missing:
            return
        if len(self._cache) + len(missing) > 800:
            self._cache.clear()
        n = round(DAY_S / self.cache_step_s)
        grid = np.arange(n + 1, dtype=np.float64) * (DAY_S / n)
        times = (np.asarray(missing, dtype=np.float64)[:, None] * DAY_S + grid[None, :]).ravel()
        power = self._evaluate(times).reshape(len(missing), n + 1)
        for i, day in enumerate(missing):
            self._cache[day] = power[i]

    def power_w(self, times: TimesLike) -> FloatArray:
        """AC power of the plant [W] at the given times.

        Parameters
        ----------
        times : pandas.DatetimeIndex or array_like
            Tz-aware timestamps or Unix seconds UTC [s].

        Returns
        -------
        numpy.ndarray
            AC power [W], ``0 <= P <= inverter_ac_limit_w``, shape of ``times``.
        """
        t = to_unix_s(times)
        shape = t.shape
        flat = np.atleast_1d(t).ravel()
        if self.cache_step_s == 0.0 or flat.size == 0:
            out = self._evaluate(flat) if flat.size else np.zeros(0)
            return out.reshape(shape)
        day = np.floor(flat / DAY_S).astype(np.int64)
        self._fill_cache(day)
        n = round(DAY_S / self.cache_step_s)
        pos = (flat - day * DAY_S) / (DAY_S / n)
        i = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
        frac = pos - i
        uniq, inverse = np.unique(day, return_inverse=True)
        rows = np.stack([self._cache[int(d)] for d in uniq])
        result = rows[inverse, i] * (1.0 - frac) + rows[inverse, i + 1] * frac
        out = np.clip(result, 0.0, self.plant.inverter_ac_limit_w)
        return out.reshape(shape)

    def energy_wh(self, start: TimesLike, end: TimesLike, step_s: float = 300.0) -> float:
        """Energy produced between two times [Wh] (trapezoid on a ``step_s`` grid).

        Parameters
        ----------
        start, end : pandas.Timestamp or float
            Interval [tz-aware or Unix s].
        step_s : float
            Integration step [s].

        Returns
        -------
        float
            Energy [Wh].
        """
        t0, t1 = float(to_unix_s(start)), float(to_unix_s(end))
        if t1 <= t0:
            return 0.0
        n = max(2, math.ceil((t1 - t0) / step_s) + 1)
        t = np.linspace(t0, t1, n)
        return float(np.trapezoid(self.power_w(t), t)) / 3600.0
