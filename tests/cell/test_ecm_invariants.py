"""Physical invariants of the ECM core (openbess.cell.ecm) on the built-in parameter sets."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.cell.ecm import CellModel, CellState, step
from openbess.cell.params import load_cell_params

MODELS = {name: CellModel(load_cell_params(name)) for name in ("lfp", "nmc")}


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["lfp", "nmc"]),
    soc0=st.floats(0.0, 1.0),
    h0=st.floats(-1.0, 1.0),
    c_rates=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=6),
    dt_s=st.floats(0.1, 900.0),
    temperature_degc=st.floats(-10.0, 50.0),
    leak_a=st.floats(0.0, 0.05),
)
def test_energy_identity(
    name: str,
    soc0: float,
    h0: float,
    c_rates: list[float],
    dt_s: float,
    temperature_degc: float,
    leak_a: float,
) -> None:
    """terminal + heat + leak == -stored_change, step by step, whatever the inputs."""
    model = MODELS[name]
    p = model.params
    n = len(c_rates)
    state = CellState.initial(p, np.full(n, soc0))
    state.hysteresis[:] = h0
    current = np.array(c_rates) * p.capacity_ah
    for _ in range(3):
        res = step(
            model,
            state,
            current,
            dt_s,
            np.full(n, temperature_degc),
            p.capacity_ah,
            leak_current_a=leak_a,
        )
        total = res.terminal_energy_j + res.heat_j + res.leak_energy_j
        scale = max(1.0, float(np.max(np.abs(res.stored_energy_change_j))))
        np.testing.assert_allclose(total, -res.stored_energy_change_j, atol=1e-9 * scale)
        assert np.all(state.soc >= 0.0)
        assert np.all(state.soc <= 1.0)
        assert np.all(np.abs(state.hysteresis) <= 1.0 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["lfp", "nmc"]),
    c_rate=st.floats(-2.0, 2.0),
    dt_s=st.floats(1.0, 600.0),
    temperature_degc=st.floats(0.0, 45.0),
)
def test_charge_conservation(
    name: str, c_rate: float, dt_s: float, temperature_degc: float
) -> None:
    """SoC moves by exactly -eta i dt / Q (eta on charge only) away from the limits."""
    model = MODELS[name]
    p = model.params
    state = CellState.initial(p, np.array([0.5]))
    i = c_rate * p.capacity_ah
    step(model, state, np.array([i]), dt_s, np.array([temperature_degc]), p.capacity_ah)
    eta = float(model.coulombic_efficiency(np.array([temperature_degc]))[0]) if i < 0 else 1.0
    expected = 0.5 - eta * i * dt_s / (3600.0 * p.capacity_ah)
    assert state.soc[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ["lfp", "nmc"])
@pytest.mark.parametrize("c_rate", [1.0, -0.5])
def test_zero_order_hold_exactness(name: str, c_rate: float) -> None:
    """One 60 s step equals sixty 1 s steps for a constant current."""
    model = MODELS[name]
    p = model.params
    i = np.array([c_rate * p.capacity_ah])
    temp = np.array([25.0])
    one = CellState.initial(p, np.array([0.6]))
    many = CellState.initial(p, np.array([0.6]))
    one.hysteresis[:] = many.hysteresis[:] = -0.3
    r1 = step(model, one, i, 60.0, temp, p.capacity_ah)
    heat = terminal = 0.0
    for _ in range(60):
        rk = step(model, many, i, 1.0, temp, p.capacity_ah)
        heat += float(rk.heat_j[0])
        terminal += float(rk.terminal_energy_j[0])
    assert one.soc[0] == pytest.approx(many.soc[0], abs=1e-12)
    assert one.hysteresis[0] == pytest.approx(many.hysteresis[0], abs=1e-9)
    # Tables are looked up at the start of a step, so the RC voltages differ only through the
    # small SoC change within the minute (< 2 % SoC at 1C).
    np.testing.assert_allclose(one.v_rc, many.v_rc, atol=5e-4)
    assert r1.voltage_v[0] == pytest.approx(rk.voltage_v[0], abs=5e-4)
    assert float(r1.terminal_energy_j[0]) == pytest.approx(terminal, rel=1e-3)
    assert float(r1.heat_j[0]) == pytest.approx(heat, rel=0.05, abs=0.05)


def test_zero_order_hold_exact_with_flat_tables() -> None:
    """With SoC-independent resistances the 60 s step is exact, not just close."""
    p = load_cell_params("lfp")
    flat = replace(
        p,
        r0_ohm=np.broadcast_to(p.r0_ohm[:, 10:11], p.r0_ohm.shape).copy(),
        rc_r_ohm=np.broadcast_to(p.rc_r_ohm[:, :, 10:11], p.rc_r_ohm.shape).copy(),
        hysteresis_v=np.broadcast_to(p.hysteresis_v[:, 10:11], p.hysteresis_v.shape).copy(),
    )
    model = CellModel(flat)
    i = np.array([1.5 * p.capacity_ah])
    temp = np.array([25.0])
    one = CellState.initial(flat, np.array([0.6]))
    many = CellState.initial(flat, np.array([0.6]))
    r1 = step(model, one, i, 60.0, temp, p.capacity_ah)
    parts = [step(model, many, i, 1.0, temp, p.capacity_ah) for _ in range(60)]
    np.testing.assert_allclose(one.v_rc, many.v_rc, rtol=1e-10, atol=1e-13)
    assert one.hysteresis[0] == pytest.approx(many.hysteresis[0], abs=1e-12)
    assert r1.voltage_v[0] == pytest.approx(parts[-1].voltage_v[0], abs=1e-9)
    for attr in ("terminal_energy_j", "stored_energy_change_j"):
        total = sum(float(getattr(r, attr)[0]) for r in parts)
        assert float(getattr(r1, attr)[0]) == pytest.approx(total, rel=1e-9)


def test_hysteresis_direction() -> None:
    """After a charge h -> +1 and the rested voltage sits above the one after a discharge."""
    model = MODELS["lfp"]
    p = model.params
    q = p.capacity_ah
    temp = np.array([25.0])
    up = CellState.initial(p, np.array([0.3]))
    down = CellState.initial(p, np.array([0.7]))
    for _ in range(48):  # 0.4 of the capacity at 1C, in 30 s steps
        step(model, up, np.array([-q]), 30.0, temp, q)
        step(model, down, np.array([q]), 30.0, temp, q)
    assert up.hysteresis[0] > 0.8
    assert down.hysteresis[0] < -0.8
    down.soc[:] = up.soc  # compare at the same SoC, after the RC pairs relax
    for _ in range(200):
        step(model, up, np.array([0.0]), 60.0, temp, q)
        step(model, down, np.array([0.0]), 60.0, temp, q)
    v_up = model.terminal_voltage(up, np.array([0.0]), temp)[0]
    v_down = model.terminal_voltage(down, np.array([0.0]), temp)[0]
    m = model.tables(up.soc, temp)[1][0]
    assert v_up - v_down == pytest.approx(m * (up.hysteresis[0] - down.hysteresis[0]), abs=2e-4)
    assert v_up > v_down
