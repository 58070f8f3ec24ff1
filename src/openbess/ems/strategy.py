"""EMS strategies: what the EMS asks of the battery, every dispatch period.

A strategy sees only the contract's :class:`~openbess.contract.Telemetry` and the site meters
(:class:`~openbess.plant.SiteMeasurements`); it answers with a
:class:`~openbess.contract.Command`, which the BMS gate may still clamp or refuse. A strategy
must not assume its command was executed: the gate's decision comes back in the next Telemetry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from openbess.contract import Command, Mode, Telemetry
from openbess.plant import SiteMeasurements


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
    is measured, not predicted: the new setpoint is the present battery power plus the grid
    import, so forecast errors and clamping are absorbed every dispatch.

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
    deadband_w : float
        Grid power ignored as noise [W].
    """

    reserve_soc: float
    soc_min: float
    soc_max: float
    max_charge_power_w: float
    max_discharge_power_w: float
    validity_s: float = 5.0
    deadband_w: float = 10.0
    name: str = "self_consumption"
    _seq: int = 0
    _target_w: float = 0.0

    def replan(self, now_s: float, telemetry: Telemetry) -> None:
        """Self-consumption needs no plan; the reserve is static."""

    def dispatch(self, now_s: float, telemetry: Telemetry, site: SiteMeasurements) -> Command:
        """Return the power that would bring the grid exchange to zero.

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
        net_w = site.grid_power_w + site.battery_ac_power_w  # load - pv, as seen by the meter
        if abs(site.grid_power_w) < self.deadband_w:
            net_w = site.battery_ac_power_w
        # Ask only for what the BMS says the battery may do now (the gate would clamp anyway).
        max_chg = min(self.max_charge_power_w, telemetry.charge_power_limit_w)
        max_dis = min(self.max_discharge_power_w, telemetry.discharge_power_limit_w)
        target = min(max(net_w, -max_chg), max_dis)
        floor = max(self.reserve_soc, self.soc_min)
        if target > 0 and telemetry.soc <= floor:
            target = 0.0
        if target < 0 and telemetry.soc >= self.soc_max:
            target = 0.0
        self._seq += 1
        self._target_w = target
        return Command(
            seq=self._seq,
            mode=Mode.POWER,
            power_w=target,
            valid_until_s=now_s + self.validity_s,
            reserve_soc=self.reserve_soc,
            source="ems",
        )
