"""Built-in parameter sets load, round-trip through TOML, and bad files name the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from openbess.cell.ageing import ageing_params
from openbess.cell.fit import format_cell_params_toml
from openbess.cell.params import load_cell_params, parse_cell_params, scale_to_capacity
from openbess.errors import ConfigError


@pytest.mark.parametrize("name", ["lfp", "nmc", "lfp_a123", "nmc_leaf"])
def test_builtin_sets_load(name: str) -> None:
    p = load_cell_params(name)
    assert p.soc_grid.size == 21
    assert p.n_rc >= 2
    assert p.ocv_v.shape == (p.temperature_grid_degc.size, 21)
    assert np.all(np.diff(p.ocv_v, axis=1) >= 0)
    assert np.all(p.r0_ohm > 0)
    assert p.thermal.mass_kg > 0
    assert "MIT" in p.source
    ageing_params(p.ageing)  # complete and valid


def test_builtin_values_are_physical() -> None:
    lfp = load_cell_params("lfp")
    nmc = load_cell_params("nmc")
    k = int(np.argmin(np.abs(lfp.temperature_grid_degc - 25.0)))
    # LFP plateau around 3.3 V mid-SoC, NMC/LMO around 3.9 V.
    assert 3.25 < lfp.ocv_v[k, 10] < 3.35
    assert 3.8 < nmc.ocv_v[1, 10] < 4.0
    assert 1.9 < lfp.capacity_ah < 2.4
    assert 29.0 < nmc.capacity_ah < 33.5
    # Resistance falls with temperature in the LFP set (scaled from measured steps).
    assert np.all(np.diff(lfp.r0_ohm[:, 10]) < 0)
    assert np.all(lfp.coulombic_efficiency <= 1.0)


def test_toml_round_trip(tmp_path: Path) -> None:
    p = load_cell_params("lfp")
    path = tmp_path / "cell.toml"
    path.write_text(format_cell_params_toml(p, header="test"))
    q = load_cell_params(path)
    for attr in ("ocv_v", "hysteresis_v", "r0_ohm", "rc_r_ohm", "rc_tau_s"):
        np.testing.assert_allclose(getattr(q, attr), getattr(p, attr), rtol=1e-5)
    assert q.ageing == pytest.approx(p.ageing, rel=1e-5)
    assert q.source == p.source


def _doc() -> dict[str, object]:
    p = load_cell_params("nmc")
    return tomllib.loads(format_cell_params_toml(p))


def test_missing_field_is_named() -> None:
    doc = _doc()
    del doc["capacity_ah"]
    with pytest.raises(ConfigError, match="capacity_ah"):
        parse_cell_params(doc, "x.toml")


def test_bad_shape_is_named() -> None:
    doc = _doc()
    doc["ocv_v"] = doc["ocv_v"][:2]  # type: ignore[index]
    with pytest.raises(ConfigError, match="ocv_v"):
        parse_cell_params(doc, "x.toml")


def test_non_numeric_table_is_named() -> None:
    doc = _doc()
    doc["r0_ohm"] = "fast"
    with pytest.raises(ConfigError, match="r0_ohm"):
        parse_cell_params(doc, "x.toml")


def test_missing_rc_field_is_named() -> None:
    doc = _doc()
    del doc["rc"][0]["tau_s"]  # type: ignore[index]
    with pytest.raises(ConfigError, match="tau_s"):
        parse_cell_params(doc, "x.toml")


def test_invalid_toml_and_unknown_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_cell_params(bad)
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_cell_params("no-such-cell")


def test_ageing_table_errors_name_the_key() -> None:
    table = dict(load_cell_params("lfp").ageing)
    del table["cal_q_k"]
    with pytest.raises(ConfigError, match="cal_q_k"):
        ageing_params(table)
    table = dict(load_cell_params("lfp").ageing)
    table["cal_q_typo"] = 1.0
    with pytest.raises(ConfigError, match="cal_q_typo"):
        ageing_params(table)


def test_scale_to_capacity_keeps_ocv() -> None:
    p = load_cell_params("lfp")
    q = scale_to_capacity(p, 10 * p.capacity_ah)
    np.testing.assert_allclose(q.r0_ohm, p.r0_ohm / 10)
    np.testing.assert_array_equal(q.ocv_v, p.ocv_v)
