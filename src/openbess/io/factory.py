"""Build the interfaces a site configuration enables (imports each only when enabled)."""

from __future__ import annotations

from openbess.config import SiteConfig
from openbess.io.runtime import Interface


def build_interfaces(config: SiteConfig) -> list[Interface]:
    """The enabled interfaces of ``config``, not yet started.

    Parameters
    ----------
    config : SiteConfig
        Site configuration (its ``[interfaces]`` section).

    Returns
    -------
    list of Interface
        In start order.
    """
    iface = config.interfaces
    out: list[Interface] = []
    if iface.http.enabled:
        from openbess.io.http import HttpServer

        out.append(HttpServer(iface.http))
    return out
