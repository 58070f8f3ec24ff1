"""Characterisation: recover known parameters from tests simulated with the ECM itself."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from openbess.cell.characterize import (
    characterize,
    classify_test,
    parse_kinds,
    slow_tests,
)
from openbess.cell.ecm import CellModel
from openbess.cell.fit import simulate_log
from openbess.cell.io import CellLog
from openbess.cell.params import CellParams, load_cell_params, parse_cell_params
from openbess.errors import EstimationError

CAP = 2.0


def known_params(chem: str = "nmc", temperatures: tuple[float, ...] = (25.0,)) -> CellParams:
    """Built-in OCV (and hysteresis for LFP) with simple, known dynamics, 2 Ah."""
    base = load_cell_params(chem)
    grid = base.soc_grid
    ns = grid.size
    ref = int(np.argmin(np.abs(base.temperature_grid_degc - 25.0)))
    nt = len(temperatures)
    k = np.array([1.5 if t < 20 else 1.0 for t in temperatures])[:, None]  # colder: more R
    r0 = np.interp(grid, [0.0, 0.5, 1.0], [0.030, 0.020, 0.024])[None, :] * k
    r1 = np.interp(grid, [0.0, 0.5, 1.0], [0.012, 0.008, 0.010])[None, :] * k
    r2 = np.full((nt, ns), 0.010) * k
    hyst = np.tile(base.hysteresis_v[ref], (nt, 1)) if chem == "lfp" else np.zeros((nt, ns))
    return replace(
        base,
        name="known",
        capacity_ah=CAP,
        temperature_grid_degc=np.asarray(temperatures, dtype=np.float64),
        ocv_v=np.tile(base.ocv_v[ref], (nt, 1)),
        hysteresis_v=hyst,
        r0_ohm=r0,
        rc_r_ohm=np.stack([r1, r2]),
        rc_tau_s=np.array([[8.0] * nt, [120.0] * nt]),
        coulombic_efficiency=np.ones(nt),
        hysteresis_rate=40.0 if chem == "lfp" else 0.0,
    )


def _schedule(parts: list[tuple[float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(duration [s], current [A], sample step [s]) segments -> time and current samples."""
    t, i = [0.0], [0.0]
    for duration, current, dt in parts:
        n = round(duration / dt)
        t.extend(t[-1] + dt * np.arange(1, n + 1))
        i.extend([current] * n)
    return np.asarray(t), np.asarray(i)


def simulated(
    params: CellParams,
    parts: list[tuple[float, float, float]],
    temperature_degc: float = 25.0,
    soc0: float = 1.0,
    h0: float = 1.0,
    source: str = "test.csv",
) -> CellLog:
    t, i = _schedule(parts)
    blank = CellLog(t, i, np.zeros(t.size), np.full(t.size, temperature_degc), source=source)
    sim = simulate_log(params, blank, soc0, hysteresis0=h0, temperature_degc=temperature_degc)
    return replace(blank, voltage_v=sim.voltage_v)


def ocv_test(params: CellParams, temperature_degc: float = 25.0) -> CellLog:
    """Rest full, C/20 discharge to empty, rest, C/20 charge to full, rest (60 s steps)."""
    c20 = CAP / 20.0
    parts = [
        (3600.0, 0.0, 60.0),
        (72000.0, c20, 60.0),
        (7200.0, 0.0, 60.0),
        (72000.0, -c20, 60.0),
        (7200.0, 0.0, 60.0),
    ]
    return simulated(params, parts, temperature_degc, source=f"ocv_{temperature_degc:g}.csv")


def hppc_test(params: CellParams, temperature_degc: float = 25.0, levels: int = 6) -> CellLog:
    """Rest full, then per level: 1C/0.75C and 2C/1.5C pulses, 15 % step at C/2, 1 h rest."""
    parts = [(3600.0, 0.0, 60.0)]
    for _ in range(levels):
        for dis, chg in ((1.0, 0.75), (2.0, 1.5)):
            parts += [
                (10.0, dis * CAP, 1.0),
                (40.0, 0.0, 2.0),
                (10.0, -chg * CAP, 1.0),
                (40.0, 0.0, 2.0),
            ]
        parts += [(1080.0, 0.5 * CAP, 5.0), (3600.0, 0.0, 60.0)]
    return simulated(params, parts, temperature_degc, source=f"hppc_{temperature_degc:g}.csv")


def dynamic_test(params: CellParams, seed: int = 1) -> CellLog:
    rng = np.random.default_rng(seed)
    parts = [
        (float(rng.integers(5, 60)), float(rng.uniform(-1.0, 2.0)) * CAP, 2.0) for _ in range(60)
    ]
    return simulated(params, parts, soc0=0.9, h0=0.0, source="dyn.csv")


@pytest.fixture(scope="module")
def nmc_logs() -> dict[str, CellLog]:
    truth = known_params("nmc")
    return {"ocv": ocv_test(truth), "hppc": hppc_test(truth), "dynamic": dynamic_test(truth)}


@pytest.fixture(scope="module")
def nmc_result(nmc_logs: dict[str, CellLog]) -> tuple[CellParams, object]:
    res = characterize([nmc_logs["ocv"], nmc_logs["hppc"]], name="fitted", max_evaluations=80)
    return known_params("nmc"), res


def test_tests_are_recognised(nmc_logs: dict[str, CellLog]) -> None:
    for kind, lg in nmc_logs.items():
        assert classify_test(lg) == kind


def test_recovers_ocv_and_r0(nmc_result: tuple[CellParams, object]) -> None:
    truth, res = nmc_result
    fitted = res.params  # type: ignore[attr-defined]
    assert fitted.capacity_ah == pytest.approx(CAP, rel=0.005)
    z = np.linspace(0.1, 0.9, 33)
    ocv_err = CellModel(fitted).ocv(z, 25.0) - CellModel(truth).ocv(z, 25.0)
    assert np.max(np.abs(ocv_err)) < 0.005
    zr = np.linspace(0.2, 0.9, 15)
    r0_fit = CellModel(fitted).tables(zr, np.full(zr.size, 25.0))[2]
    r0_true = CellModel(truth).tables(zr, np.full(zr.size, 25.0))[2]
    np.testing.assert_allclose(r0_fit, r0_true, rtol=0.10)
    # Total resistance (what a long pulse sees) too.
    tot_fit = CellModel(fitted).tables(zr, np.full(zr.size, 25.0))[2:].sum(axis=0)
    tot_true = CellModel(truth).tables(zr, np.full(zr.size, 25.0))[2:].sum(axis=0)
    np.testing.assert_allclose(tot_fit, tot_true, rtol=0.10)
    assert np.all(fitted.hysteresis_v == 0.0)  # none in the data, none fitted
    kinds = {t.source: t.kind for t in res.tests}  # type: ignore[attr-defined]
    assert kinds == {"ocv_25.csv": "ocv", "hppc_25.csv": "hppc"}


def test_output_loads_back(nmc_result: tuple[CellParams, object]) -> None:
    import tomllib

    _, res = nmc_result
    text = res.to_toml()  # type: ignore[attr-defined]
    assert "openbess characterize" in text
    back = parse_cell_params(tomllib.loads(text), "fitted.toml")
    fitted = res.params  # type: ignore[attr-defined]
    np.testing.assert_allclose(back.ocv_v, fitted.ocv_v, atol=1e-5)
    np.testing.assert_allclose(back.r0_ohm, fitted.r0_ohm, rtol=1e-5)
    assert back.soc_grid.size == 41
    summary = res.summary()  # type: ignore[attr-defined]
    assert summary["capacity_ah"] == pytest.approx(CAP, rel=0.005)


def test_hysteresis_from_slow_branches() -> None:
    truth = known_params("lfp")
    res = characterize([ocv_test(truth), hppc_test(truth)], name="lfp_fit", max_evaluations=80)
    fitted = res.params
    z = np.linspace(0.2, 0.8, 13)
    m_fit = CellModel(fitted).tables(z, np.full(z.size, 25.0))[1]
    m_true = CellModel(truth).tables(z, np.full(z.size, 25.0))[1]
    assert np.max(np.abs(m_fit - m_true)) < 0.006
    ocv_err = CellModel(fitted).ocv(z, 25.0) - CellModel(truth).ocv(z, 25.0)
    assert np.max(np.abs(ocv_err)) < 0.005
    assert fitted.hysteresis_rate > 0
    assert fitted.chemistry == "LFP"


def test_two_temperatures_give_tables(nmc_logs: dict[str, CellLog]) -> None:
    truth = known_params("nmc", (10.0, 25.0))
    logs = [nmc_logs["ocv"], nmc_logs["hppc"], hppc_test(truth, 10.0, levels=4)]
    res = characterize(logs, max_evaluations=80)
    fitted = res.params
    np.testing.assert_array_equal(fitted.temperature_grid_degc, [10.0, 25.0])
    zr = np.linspace(0.4, 0.9, 6)
    for t in (10.0, 25.0):
        r0_fit = CellModel(fitted).tables(zr, np.full(zr.size, t))[2]
        r0_true = CellModel(truth).tables(zr, np.full(zr.size, t))[2]
        np.testing.assert_allclose(r0_fit, r0_true, rtol=0.10)
    kinds = {t.source: t.used_for for t in res.tests}
    assert "OCV (rests)" in kinds["hppc_10.csv"]


def test_slow_test_alone_and_single_branch(nmc_logs: dict[str, CellLog]) -> None:
    full = nmc_logs["ocv"]
    # Only the discharge half (up to the end of the rest after it).
    half = full.select(slice(0, 60 + 1200 + 120 + 1))
    st = slow_tests([half], np.linspace(0, 1, 41))
    assert st.charge_v is None
    assert st.capacity_ah == pytest.approx(CAP, rel=0.01)
    res = characterize([half], kinds=["ocv"], max_evaluations=40)
    assert res.params.capacity_ah == pytest.approx(CAP, rel=0.01)


def test_errors(nmc_logs: dict[str, CellLog]) -> None:
    dyn = nmc_logs["dynamic"]
    with pytest.raises(EstimationError, match="no OCV information"):
        characterize([dyn])
    with pytest.raises(ValueError, match="no cell logs"):
        characterize([])
    with pytest.raises(ValueError, match="kinds"):
        characterize([dyn], kinds=["ocv", "hppc"])
    with pytest.raises(EstimationError, match="no slow"):
        characterize([dyn], kinds=["ocv"])


def test_parse_kinds() -> None:
    assert parse_kinds([], 2) == [None, None]
    assert parse_kinds(["hppc"], 3) == ["hppc"] * 3
    assert parse_kinds(["auto", "OCV"], 2) == [None, "ocv"]
    with pytest.raises(ValueError, match="unknown test kind 'pulse'"):
        parse_kinds(["pulse"], 1)
    with pytest.raises(ValueError, match="2 --kind values for 3 files"):
        parse_kinds(["ocv", "hppc"], 3)
