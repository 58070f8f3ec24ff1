"""EMS strategies: what the EMS asks of the battery, every dispatch period.

A strategy sees only the contract's :class:`~openbess.contract.Telemetry` and the site meters
(:class:`~openbess.plant.SiteMeasurements`); it answers with a
:class:`~openbess.contract.Command`, which the BMS gate may still clamp or refuse. A strategy
must not assume its command was executed: the gate's decision comes back in the next Telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from openbess.contract import Command, Mode, Telemetry
from openbess.ems.realtime import (
    RealtimeConfig,
    RealtimeLayer,
    Wish,
    balance_w,
    read_events,
    realtime_config_for,
)
from openbess.plant import SiteMeasurements

if TYPE_CHECKING:
    from openbess.config import SiteConfig
    from openbess.io.hub import GridEvent


class Strategy(Protocol):
    """An EMS strategy."""

    name: str

    def replan(self, now_s: float, telemetry: Telemetry) -> None:
        """Slow path (every ``replan_s``): update the plan from forecasts and the Telemetry."""

    def dispatch(self, now_s: float, telemetry: Telemetry, site: SiteMeasurements) -> Command:
        """Fast path (every ``dispatch_s``): the command for the next seconds."""


@dataclass
class SelfConsumption:
    """Self-consumption with a SoC reserve: keep the grid exchange at zero.

    The battery covers the net load (load - PV) when it can and soaks up the PV surplus; below
    ``reserve_soc`` it stops discharging (the gate enforces the reserve too). The grid balance
    is measured, not predicted: the wish is the present battery power plus the grid import,
    so forecast errors and clamping are absorbed every dispatch. The real-time layer
    (:mod:`openbess.ems.realtime`) then keeps the import under the peak limit and the export
    under the export limit, obeys grid events, ramps and keeps the BMS limits.

    Parameters
    ----------
    reserve_soc : float
        Pack SoC to keep for backup [fraction].
    soc_min, soc_max : float
        Operating window [fraction]: no discharge below ``soc_min``, no charge above ``soc_max``.
    max_charge_power_w, max_discharge_power_w : float
        AC ratings [W].
    validity_s : float
        Lifetime of each command [s].
    max_import_w, max_export_w : float
        Grid connection limits [W] (``inf``: none).
    realtime : RealtimeConfig
        Ramp rate, dead bands and peak limit of the real-time layer.
    events : callable or None
        ``now_s -> grid events`` (e.g. :meth:`openbess.io.hub.Hub.grid_events`).
    """

    reserve_soc: float
    soc_min: float
    soc_max: float
    max_charge_power_w: float
    max_discharge_power_w: float
    validity_s: float = 5.0
    max_import_w: float = math.inf
    max_export_w: float = math.inf
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    events: Callable[[float], Sequence[GridEvent]] | None = None
    name: str = "self_consumption"
    layer: RealtimeLayer = field(init=False)
    _seq: int = 0

    def __post_init__(self) -> None:
        """Build the real-time layer from the ratings and limits."""
        self.layer = RealtimeLayer(
            settings=self.realtime,
            max_import_w=self.max_import_w,
            max_export_w=self.max_export_w,
            max_charge_power_w=self.max_charge_power_w,
            max_discharge_power_w=self.max_discharge_power_w,
            soc_min=self.soc_min,
            soc_max=self.soc_max,
            reserve_soc=self.reserve_soc,
        )

    @classmethod
    def for_site(cls, config: SiteConfig, validity_s: float = 5.0) -> SelfConsumption:
        """The strategy for a site: its window, ratings, reserve, grid limits and settings.

        Parameters
        ----------
        config : SiteConfig
            Site configuration.
        validity_s : float
            Lifetime of each command [s].

        Returns
        -------
        SelfConsumption
            The strategy.
        """
        b, g = config.battery, config.grid
        return cls(
            reserve_soc=config.ems.reserve_soc,
            soc_min=b.soc_min,
            soc_max=b.soc_max,
            max_charge_power_w=b.max_charge_power_w,
            max_discharge_power_w=b.max_discharge_power_w,
            validity_s=validity_s,
            max_import_w=g.max_import_w,
            max_export_w=g.max_export_w,
            realtime=realtime_config_for(config),
        )

    def replan(self, now_s: float, telemetry: Telemetry) -> None:
        """Self-consumption needs no plan; the reserve is static."""

    def dispatch(self, now_s: float, telemetry: Telemetry, site: SiteMeasurements) -> Command:
        """Return the power that brings the grid exchange to zero, within the real-time rules.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].
        telemetry : Telemetry
            Latest BMS telemetry.
        site : SiteMeasurements
            Site meters now.

        Returns
        -------
        Command
            A ``power`` command valid for ``validity_s``.
        """
        wish = Wish(balance_w(site, self.realtime.deadband_w), max_export_w=0.0)
        decision = self.layer.setpoint(
            now_s, telemetry, site, wish, read_events(self.events, now_s)
        )
        self._seq += 1
        return Command(
            seq=self._seq,
            mode=Mode.POWER,
            power_w=decision.power_w,
            valid_until_s=now_s + self.validity_s,
            reserve_soc=self.reserve_soc,
            source="ems",
        )
