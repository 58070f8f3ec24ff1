"""Site configuration: built-ins load, minimal files work, errors name field, value and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from openbess.config import BUILTIN_SITES, load_site, parse_site
from openbess.errors import ConfigError
from openbess.twin.site import topology_for


@pytest.mark.parametrize("name", BUILTIN_SITES)
def test_builtin_sites_load(name):
    cfg = load_site(name)
    assert cfg.name == name
    assert cfg.simulation.start.tzinfo is not None


def test_commercial_site_has_at_least_1000_cells():
    from openbess.twin.site import cell_params_for

    cfg = load_site("commercial")
    topo = topology_for(cfg, cell_params_for(cfg))
    assert topo.n_cells >= 1000


def test_minimal_site_file_takes_defaults(tmp_path: Path):
    f = tmp_path / "site.toml"
    f.write_text(
        "[battery]\ncapacity_wh = 10000\nmax_charge_power_w = 5000\nmax_discharge_power_w = 4750\n"
        "charge_efficiency = 0.95\ndischarge_efficiency = 0.95\nsoc_min = 0.1\nsoc_max = 0.9\n"
        "initial_soc = 0.5\n[grid]\nmax_import_w = 9000\nmax_export_w = 9000\n"
    )
    cfg = load_site(f)
    assert cfg.battery.capacity_wh == 10000
    assert cfg.ems.strategy == "self_consumption"
    from openbess.twin.site import cell_params_for

    topo = topology_for(cfg, cell_params_for(cfg))
    cell = cell_params_for(cfg)
    wh = topo.n_cells * cell.capacity_ah * cell.nominal_voltage_v * topo.cells_parallel
    assert wh == pytest.approx(10000, rel=0.15)


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        ({"battery": {"soc_min": 1.5}}, ["battery.soc_min", "1.5", "less than 1"]),
        ({"battery": {"max_charge_power_w": "lots"}}, ["battery.max_charge_power_w", "'lots'"]),
        ({"batery": {}}, ["batery", "unknown field"]),
        ({"grid": {"price_zone": "FR"}}, ["grid.price_zone", "'FR'", "DE_LU"]),
        ({"timezone": "Mars/Olympus"}, ["timezone", "Mars/Olympus", "IANA"]),
        ({"battery": {"soc_min": 0.8, "soc_max": 0.5}}, ["battery", "soc_min (0.8)"]),
        ({"simulation": {"start": "2024-06-01T00:00:00"}}, ["simulation.start", "UTC offset"]),
    ],
)
def test_errors_name_the_field_the_value_and_the_rule(doc, fragments):
    with pytest.raises(ConfigError) as info:
        parse_site(doc, "site.toml")
    msg = str(info.value)
    assert msg.startswith("site.toml:")
    for frag in fragments:
        assert frag in msg


def test_bad_toml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[battery\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site(bad)
    with pytest.raises(ConfigError, match="neither a built-in site"):
        load_site(tmp_path / "missing.toml")


def test_configuration_doc_lists_every_field():
    from openbess.config import config_reference

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert config_reference() in doc, "run scripts/gen_config_doc.py to refresh the reference"
