"""Outside interfaces: SunSpec Modbus, MQTT, HTTP (REST, metrics, dashboard), CAN, OpenADR.

They all meet the control loop at the :class:`~openbess.io.hub.Hub`. This module turns the
``openbess run`` endpoint options (``--modbus HOST:PORT``, ``--mqtt mqtt://[USER:PASS@]HOST:PORT``,
``--http HOST:PORT``, ``--can INTERFACE:CHANNEL``, ``--openadr URL``) into the site's
``[interfaces]`` configuration.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from openbess.config import SiteConfig
from openbess.errors import ConfigError

__all__ = ["with_endpoints"]


def _host_port(flag: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:5020")
    host = host.strip("[]")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{flag} {text!r}: port {number} is outside 0..65535")
    return host, number


def _mqtt(text: str) -> dict[str, Any]:
    parts = urlsplit(text)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(
            f"--mqtt {text!r}: expected mqtt://[USER:PASS@]HOST:PORT (or mqtts:// for TLS)"
        )
    if not parts.hostname:
        raise ConfigError(f"--mqtt {text!r}: no host")
    try:
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"--mqtt {text!r}: {err}") from None
    out: dict[str, Any] = {
        "enabled": True,
        "host": parts.hostname,
        "port": port if port is not None else (8883 if parts.scheme == "mqtts" else 1883),
        "tls": parts.scheme == "mqtts",
    }
    if parts.username is not None:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    return out


def with_endpoints(
    config: SiteConfig,
    modbus: str | None = None,
    mqtt: str | None = None,
    http: str | None = None,
    can: str | None = None,
    openadr: str | None = None,
) -> SiteConfig:
    """Enable interfaces from command-line endpoints (they override the site file).

    Parameters
    ----------
    config : SiteConfig
        The site configuration.
    modbus, http : str or None
        ``HOST:PORT``.
    mqtt : str or None
        ``mqtt://[USER:PASS@]HOST:PORT`` or ``mqtts://...`` (TLS).
    can : str or None
        ``INTERFACE:CHANNEL`` (python-can interface name and channel, e.g. ``virtual:vcan0``).
    openadr : str or None
        URL of the OpenADR VTN.

    Returns
    -------
    SiteConfig
        A new, validated configuration.

    Raises
    ------
    ConfigError
        Naming the option and what is wrong with it.
    """
    iface = config.interfaces
    updates: dict[str, Any] = {}
    if modbus is not None:
        host, port = _host_port("--modbus", modbus)
        updates["modbus"] = iface.modbus.model_copy(
            update={"enabled": True, "host": host, "port": port}
        )
    if mqtt is not None:
        updates["mqtt"] = iface.mqtt.model_copy(update=_mqtt(mqtt))
    if http is not None:
        host, port = _host_port("--http", http)
        updates["http"] = iface.http.model_copy(
            update={"enabled": True, "host": host, "port": port}
        )
    if can is not None:
        name, sep, channel = can.partition(":")
        if not sep or not name or not channel:
            raise ConfigError(f"--can {can!r}: expected INTERFACE:CHANNEL, e.g. virtual:vcan0")
        updates["can"] = iface.can.model_copy(
            update={"enabled": True, "interface": name, "channel": channel}
        )
    if openadr is not None:
        parts = urlsplit(openadr)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--openadr {openadr!r}: expected an http(s):// URL of the VTN")
        updates["openadr"] = iface.openadr.model_copy(update={"enabled": True, "vtn_url": openadr})
    if not updates:
        return config
    new = iface.model_copy(update=updates)
    # Re-validate the whole site so that a bad value is reported like a site-file error.
    data = config.model_dump()
    data["interfaces"] = new.model_dump()
    try:
        return SiteConfig.model_validate(data)
    except ValueError as err:
        raise ConfigError(f"interface options: {err}") from err
