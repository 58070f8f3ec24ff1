"""`openbess run` endpoint options become the site's [interfaces] configuration."""

from __future__ import annotations

import pytest

from openbess.config import load_site
from openbess.errors import ConfigError
from openbess.io import with_endpoints


def test_endpoints_enable_and_override_the_site_file():
    cfg = with_endpoints(
        load_site("home"),
        modbus="127.0.0.1:1502",
        mqtt="mqtt://user:p%40ss@localhost:1884",
        http="127.0.0.1:0",
        can="virtual:vcan0",
        openadr="http://127.0.0.1:8080/OpenADR2/Simple/2.0b",
    )
    i = cfg.interfaces
    assert (i.modbus.enabled, i.modbus.host, i.modbus.port) == (True, "127.0.0.1", 1502)
    assert not i.modbus.writes_enabled  # writes stay off unless the site file enables them
    assert (i.mqtt.host, i.mqtt.port, i.mqtt.username, i.mqtt.password) == (
        "localhost",
        1884,
        "user",
        "p@ss",
    )
    assert not i.mqtt.tls
    assert (i.http.enabled, i.http.port) == (True, 0)
    assert (i.can.interface, i.can.channel) == ("virtual", "vcan0")
    assert i.openadr.enabled
    assert with_endpoints(cfg).interfaces == i


def test_mqtts_means_tls_and_default_port():
    i = with_endpoints(load_site("home"), mqtt="mqtts://broker.local").interfaces.mqtt
    assert (i.tls, i.port) == (True, 8883)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modbus": "localhost"}, "--modbus 'localhost': expected HOST:PORT"),
        ({"modbus": "127.0.0.1:abc"}, "port 'abc' is not a number"),
        ({"http": "127.0.0.1:70000"}, "outside 0..65535"),
        ({"mqtt": "tcp://127.0.0.1:1883"}, "expected mqtt://"),
        ({"mqtt": "mqtt://127.0.0.1:99999"}, "--mqtt"),
        ({"can": "vcan0"}, "expected INTERFACE:CHANNEL"),
        ({"openadr": "ftp://x"}, "--openadr"),
    ],
)
def test_bad_endpoints_name_the_option(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        with_endpoints(load_site("home"), **kwargs)
