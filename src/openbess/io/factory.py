"""Build the interfaces a site configuration enables (imports each only when enabled)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openbess.config import SiteConfig
from openbess.io.runtime import Interface

if TYPE_CHECKING:
    from openbess.simulate import Site


def build_interfaces(config: SiteConfig, site: Site, speed: float = 1.0) -> list[Interface]:
    """The enabled interfaces of ``config``, not yet started.

    The CAN link also replaces the site's plant by a :class:`~openbess.io.can.CanPlant`: the
    battery measurements then come from the real BMS over CAN (the twin keeps simulating the
    site), and the actuation is capped by that BMS's own current limits.

    Parameters
    ----------
    config : SiteConfig
        Site configuration (its ``[interfaces]`` section).
    site : Site
        The assembled site (sizes for the CAN mapping; its plant may be wrapped).
    speed : float
        Site seconds per wall second (OpenADR converts the VTN's wall-clock windows).

    Returns
    -------
    list of Interface
        In start order: CAN first (the battery), then the servers and clients.
    """
    iface = config.interfaces
    out: list[Interface] = []
    if iface.can.enabled:
        from openbess.io.can import CanBmsLink, CanPlant

        twin = site.twin
        link = CanBmsLink(
            iface.can,
            n_cells=twin.topology.n_cells,
            n_temp_sensors=twin.sensors.n_temperature_sensors,
            n_strings=twin.topology.n_strings,
        )
        site.controller.plant = CanPlant(site.controller.plant, link)
        out.append(link)
    if iface.modbus.enabled:
        from openbess.io.sunspec import SunSpecServer

        out.append(SunSpecServer(iface.modbus))
    if iface.mqtt.enabled:
        from openbess.io.mqtt import MqttBridge

        out.append(MqttBridge(iface.mqtt))
    if iface.http.enabled:
        from openbess.io.http import HttpServer

        out.append(HttpServer(iface.http))
    if iface.openadr.enabled:
        from openbess.io.openadr import OpenAdrVen

        out.append(OpenAdrVen(iface.openadr, speed=speed))
    return out
