"""Grid connection of the digital twin: limits, tariff and the site meter.

Sign convention: grid power is positive when importing. The site balance at the point of
connection is::

    grid_w = load_w - pv_w - battery_ac_w          (battery_ac_w positive = discharging)

Prices come from a day-ahead spot series [EUR/kWh]::

    import price = (spot + import_adder) * (1 + vat_fraction)
    export price = spot                       (export_mode="spot")
                 = feed_in_tariff             (export_mode="fixed")

``import_adder`` lumps grid fees, levies and taxes per kWh. Costs are accounted per interval
with the power held constant over it; revenue from export is counted positive, so a negative
spot price makes export cost money.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from openbess.data import read_prices
from openbess.data.timeseries import TimesLike, sample, to_unix_s

if TYPE_CHECKING:
    from openbess.config import GridConfig

FloatArray = npt.NDArray[np.float64]


def site_grid_power_w(
    load_w: npt.ArrayLike, pv_w: npt.ArrayLike, battery_ac_w: npt.ArrayLike
) -> FloatArray:
    """Grid power at the point of connection [W], positive = import.

    Parameters
    ----------
    load_w : array_like
        Building load [W], >= 0.
    pv_w : array_like
        PV production [W], >= 0.
    battery_ac_w : array_like
        Battery converter AC power [W], positive = discharge.

    Returns
    -------
    numpy.ndarray
        ``load - pv - battery`` [W].
    """
    out: FloatArray = (
        np.asarray(load_w, dtype=np.float64)
        - np.asarray(pv_w, dtype=np.float64)
        - np.asarray(battery_ac_w, dtype=np.float64)
    )
    return out


@dataclass(frozen=True, slots=True)
class SiteBalance:
    """Result of :meth:`GridConnection.balance` (arrays of the input shape).

    Parameters
    ----------
    grid_w : numpy.ndarray
        Grid power [W], positive = import, after PV curtailment.
    pv_used_w : numpy.ndarray
        PV power actually produced [W].
    pv_curtailed_w : numpy.ndarray
        PV power curtailed to respect the export limit [W], >= 0.
    import_excess_w : numpy.ndarray
        Import above the import limit [W], >= 0 (the EMS must avoid it; a fuse would trip).
    export_excess_w : numpy.ndarray
        Export above the export limit left after curtailing all PV (battery export) [W], >= 0.
    """

    grid_w: FloatArray
    pv_used_w: FloatArray
    pv_curtailed_w: FloatArray
    import_excess_w: FloatArray
    export_excess_w: FloatArray


@dataclass(frozen=True, slots=True)
class GridConnection:
    """Point of connection limits.

    Parameters
    ----------
    import_limit_w : float
        Largest import [W], > 0 (``math.inf`` for none).
    export_limit_w : float
        Largest export [W], >= 0 (0 = zero export; ``math.inf`` for none).
    """

    import_limit_w: float = math.inf
    export_limit_w: float = math.inf

    def __post_init__(self) -> None:
        """Check the limits; raise ValueError naming the field."""
        if not self.import_limit_w > 0.0:
            raise ValueError(
                f"GridConnection.import_limit_w must be > 0, got {self.import_limit_w}"
            )
        if not self.export_limit_w >= 0.0:
            raise ValueError(
                f"GridConnection.export_limit_w must be >= 0, got {self.export_limit_w}"
            )

    def balance(
        self, load_w: npt.ArrayLike, pv_w: npt.ArrayLike, battery_ac_w: npt.ArrayLike
    ) -> SiteBalance:
        """Site balance with PV curtailed so that export stays within the limit.

        Parameters
        ----------
        load_w : array_like
            Building load [W], >= 0.
        pv_w : array_like
            Available PV power [W], >= 0.
        battery_ac_w : array_like
            Battery AC power [W], positive = discharge.

        Returns
        -------
        SiteBalance
            Grid power, PV used and curtailed, limit excesses.
        """
        load = np.asarray(load_w, dtype=np.float64)
        pv = np.maximum(np.asarray(pv_w, dtype=np.float64), 0.0)
        batt = np.asarray(battery_ac_w, dtype=np.float64)
        pv_room = load - batt + self.export_limit_w  # most PV that keeps export <= limit
        pv_used = np.clip(pv_room, 0.0, pv) if math.isfinite(self.export_limit_w) else pv
        grid = site_grid_power_w(load, pv_used, batt)
        return SiteBalance(
            grid_w=grid,
            pv_used_w=np.asarray(pv_used, dtype=np.float64),
            pv_curtailed_w=pv - pv_used,
            import_excess_w=np.maximum(grid - self.import_limit_w, 0.0),
            export_excess_w=np.maximum(-grid - self.export_limit_w, 0.0),
        )

    def balance_w(self, load_w: float, pv_w: float, battery_ac_w: float) -> tuple[float, float]:
        """:meth:`balance` for one instant, in plain floats (the same numbers, much faster).

        Parameters
        ----------
        load_w : float
            Building load [W], >= 0.
        pv_w : float
            Available PV power [W], >= 0.
        battery_ac_w : float
            Battery AC power [W], positive = discharge.

        Returns
        -------
        tuple of float
            Grid power [W] (positive = import, after curtailment) and PV power used [W].
        """
        load = float(load_w)
        batt = float(battery_ac_w)
        pv = max(float(pv_w), 0.0)
        if math.isfinite(self.export_limit_w):
            pv_used = min(max(load - batt + self.export_limit_w, 0.0), pv)
        else:
            pv_used = pv
        return load - pv_used - batt, pv_used


class Tariff:
    """Import and export prices from a day-ahead spot series.

    Parameters
    ----------
    spot : pandas.Series or pandas.DataFrame
        Spot price per interval [EUR/kWh] (a DataFrame must have ``price_eur_per_kwh``),
        indexed by tz-aware interval start times.
    import_adder_eur_per_kwh : float
        Grid fees, levies and taxes added to the spot price on import [EUR/kWh].
    vat_fraction : float
        VAT applied to the import price (spot + adder) [fraction].
    export_mode : {"spot", "fixed"}
        Export paid at the spot price, or at a fixed feed-in tariff.
    feed_in_tariff_eur_per_kwh : float
        Fixed export price [EUR/kWh] (``export_mode="fixed"``).
    wrap : bool
        Map times outside the spot series onto it by whole weeks; if False they raise
        SimulationError.
    """

    def __init__(
        self,
        spot: pd.Series | pd.DataFrame,
        *,
        import_adder_eur_per_kwh: float = 0.0,
        vat_fraction: float = 0.0,
        export_mode: Literal["spot", "fixed"] = "spot",
        feed_in_tariff_eur_per_kwh: float = 0.0,
        wrap: bool = True,
    ) -> None:
        if isinstance(spot, pd.DataFrame):
            if "price_eur_per_kwh" not in spot.columns:
                raise ValueError(
                    f"spot needs a 'price_eur_per_kwh' column, has {list(spot.columns)}"
                )
            spot = spot["price_eur_per_kwh"]
        values = spot.to_numpy(dtype=np.float64)
        if values.size < 2 or np.isnan(values).any():
            raise ValueError("spot series needs at least two intervals and no NaN")
        index_s = to_unix_s(pd.DatetimeIndex(spot.index))
        if (np.diff(index_s) <= 0).any():
            raise ValueError("spot index must be strictly increasing")
        for name, value in (
            ("import_adder_eur_per_kwh", import_adder_eur_per_kwh),
            ("feed_in_tariff_eur_per_kwh", feed_in_tariff_eur_per_kwh),
        ):
            if not math.isfinite(value):
                raise ValueError(f"Tariff.{name} must be finite, got {value!r}")
        if not 0.0 <= vat_fraction < 1.0:
            raise ValueError(f"Tariff.vat_fraction must be in [0, 1), got {vat_fraction!r}")
        if export_mode not in ("spot", "fixed"):
            raise ValueError(f"Tariff.export_mode must be 'spot' or 'fixed', got {export_mode!r}")
        self._index_s = index_s
        self._values = values
        self._step_s = float(np.median(np.diff(index_s)))
        self.import_adder_eur_per_kwh = float(import_adder_eur_per_kwh)
        self.vat_fraction = float(vat_fraction)
        self.export_mode: Literal["spot", "fixed"] = export_mode
        self.feed_in_tariff_eur_per_kwh = float(feed_in_tariff_eur_per_kwh)
        self.wrap = wrap

    @classmethod
    def for_grid(cls, grid: GridConfig) -> Tariff:
        """The tariff of a site's ``[grid]`` section (bundled prices of its zone).

        Parameters
        ----------
        grid : GridConfig
            Price zone, import adder, VAT and export tariff (none: the spot price).

        Returns
        -------
        Tariff
            The tariff.
        """
        return cls.from_zone(
            grid.price_zone,
            import_adder_eur_per_kwh=grid.import_adder_eur_per_kwh,
            vat_fraction=grid.import_vat,
            export_mode="spot" if grid.export_tariff_eur_per_kwh is None else "fixed",
            feed_in_tariff_eur_per_kwh=grid.export_tariff_eur_per_kwh or 0.0,
        )

    @classmethod
    def from_zone(
        cls,
        zone: str = "DE_LU",
        *,
        import_adder_eur_per_kwh: float = 0.0,
        vat_fraction: float = 0.0,
        export_mode: Literal["spot", "fixed"] = "spot",
        feed_in_tariff_eur_per_kwh: float = 0.0,
        wrap: bool = True,
    ) -> Tariff:
        """A tariff on the bundled day-ahead prices of a bidding zone (``DE_LU`` or ``NL``).

        Parameters
        ----------
        zone : str
            Bidding zone.
        import_adder_eur_per_kwh, vat_fraction, export_mode, feed_in_tariff_eur_per_kwh, wrap
            As for :class:`Tariff`.

        Returns
        -------
        Tariff
            The tariff.
        """
        return cls(
            read_prices(zone),
            import_adder_eur_per_kwh=import_adder_eur_per_kwh,
            vat_fraction=vat_fraction,
            export_mode=export_mode,
            feed_in_tariff_eur_per_kwh=feed_in_tariff_eur_per_kwh,
            wrap=wrap,
        )

    def spot_eur_per_kwh(self, times: TimesLike) -> FloatArray:
        """Spot price in force at the given times [EUR/kWh].

        Parameters
        ----------
        times : pandas.DatetimeIndex or array_like
            Tz-aware timestamps or Unix seconds UTC [s].

        Returns
        -------
        numpy.ndarray
            Spot price [EUR/kWh], shape of ``times``.
        """
        return sample(
            self._index_s,
            self._values,
            to_unix_s(times),
            method="hold",
            wrap=self.wrap,
            step_s=self._step_s,
            name="spot price series",
        )

    def prices(self, times: TimesLike) -> tuple[FloatArray, FloatArray]:
        """Import and export prices in force at the given times.

        Parameters
        ----------
        times : pandas.DatetimeIndex or array_like
            Tz-aware timestamps or Unix seconds UTC [s].

        Returns
        -------
        tuple of numpy.ndarray
            Import price and export price [EUR/kWh], shape of ``times``.
        """
        spot = self.spot_eur_per_kwh(times)
        imp: FloatArray = (spot + self.import_adder_eur_per_kwh) * (1.0 + self.vat_fraction)
        if self.export_mode == "fixed":
            exp: FloatArray = np.full_like(spot, self.feed_in_tariff_eur_per_kwh)
        else:
            exp = spot.copy()
        return imp, exp


@dataclass(frozen=True, slots=True)
class EnergyTotals:
    """Energy and money through the meter over a run.

    Parameters
    ----------
    import_energy_wh, export_energy_wh : float
        Energy imported and exported [Wh], both >= 0.
    import_cost_eur : float
        Paid for imports [EUR].
    export_revenue_eur : float
        Earned from exports [EUR] (negative when exporting at negative prices).
    duration_s : float
        Metered time [s].
    """

    import_energy_wh: float = 0.0
    export_energy_wh: float = 0.0
    import_cost_eur: float = 0.0
    export_revenue_eur: float = 0.0
    duration_s: float = 0.0

    @property
    def net_cost_eur(self) -> float:
        """Import cost minus export revenue [EUR]."""
        return self.import_cost_eur - self.export_revenue_eur

    @property
    def net_import_energy_wh(self) -> float:
        """Import minus export energy [Wh]."""
        return self.import_energy_wh - self.export_energy_wh

    def __add__(self, other: EnergyTotals) -> EnergyTotals:
        """Sum of two totals (consecutive runs)."""
        return EnergyTotals(
            self.import_energy_wh + other.import_energy_wh,
            self.export_energy_wh + other.export_energy_wh,
            self.import_cost_eur + other.import_cost_eur,
            self.export_revenue_eur + other.export_revenue_eur,
            self.duration_s + other.duration_s,
        )


def account(
    grid_power_w: npt.ArrayLike,
    import_price_eur_per_kwh: npt.ArrayLike,
    export_price_eur_per_kwh: npt.ArrayLike,
    duration_s: npt.ArrayLike,
) -> EnergyTotals:
    """Energy and cost of a grid power series held constant over each interval.

    Parameters
    ----------
    grid_power_w : array_like
        Grid power per interval [W], positive = import.
    import_price_eur_per_kwh, export_price_eur_per_kwh : array_like
        Prices per interval [EUR/kWh].
    duration_s : array_like
        Interval lengths [s], >= 0 (broadcast: a scalar for a regular series).

    Returns
    -------
    EnergyTotals
        The totals.

    Raises
    ------
    ValueError
        If a duration is negative.
    """
    p = np.asarray(grid_power_w, dtype=np.float64)
    dt = np.broadcast_to(np.asarray(duration_s, dtype=np.float64), p.shape)
    if (dt < 0.0).any():
        raise ValueError("duration_s must be >= 0")
    imp_wh = np.maximum(p, 0.0) * dt / 3600.0
    exp_wh = np.maximum(-p, 0.0) * dt / 3600.0
    return EnergyTotals(
        import_energy_wh=float(imp_wh.sum()),
        export_energy_wh=float(exp_wh.sum()),
        import_cost_eur=float((imp_wh * np.asarray(import_price_eur_per_kwh)).sum()) / 1000.0,
        export_revenue_eur=float((exp_wh * np.asarray(export_price_eur_per_kwh)).sum()) / 1000.0,
        duration_s=float(dt.sum()),
    )


class SiteMeter:
    """Running energy and cost totals at the point of connection.

    Call :meth:`record` once per simulation step with the power held over that step.
    """

    def __init__(self) -> None:
        self.totals = EnergyTotals()

    def record(
        self,
        duration_s: float,
        grid_power_w: float,
        import_price_eur_per_kwh: float,
        export_price_eur_per_kwh: float,
    ) -> None:
        """Add one interval.

        Parameters
        ----------
        duration_s : float
            Interval length [s], >= 0.
        grid_power_w : float
            Grid power over the interval [W], positive = import.
        import_price_eur_per_kwh, export_price_eur_per_kwh : float
            Prices in force [EUR/kWh].
        """
        self.totals = self.totals + account(
            grid_power_w, import_price_eur_per_kwh, export_price_eur_per_kwh, duration_s
        )

    def reset(self) -> EnergyTotals:
        """Return the totals so far and start again from zero.

        Returns
        -------
        EnergyTotals
            Totals before the reset.
        """
        totals, self.totals = self.totals, EnergyTotals()
        return totals
