"""The twin's fast paths give the same numbers as their references.

- ``Pack(compiled=True)`` (compiled cell + thermal loop) against ``Pack(compiled=False)`` (numpy):
  trajectories, energy and heat balances, with string sharing, spread, balancing bleed, an
  internal short, a cooling failure, thermal sub-stepping and ageing windows;
- ``Sensors(compiled=True)`` against ``Sensors(compiled=False)``, with faults;
- :func:`convert_scalar` against :func:`convert`, bit for bit;
- :meth:`GridConnection.balance_w` against :meth:`GridConnection.balance`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbess.cell.params import CellParams
from openbess.config import load_site
from openbess.twin.converter import ConverterParams, convert, convert_scalar
from openbess.twin.faults import FaultInjector, FaultKind
from openbess.twin.grid import GridConnection
from openbess.twin.pack import CoolingConfig, Pack, PackTopology, SpreadConfig
from openbess.twin.sensors import SensorConfig, Sensors
from openbess.twin.site import SiteTwin

TOPO = PackTopology(2, 2, 4, 2)
SPREAD = SpreadConfig(
    capacity_rel_std=0.03,
    resistance_rel_std=0.1,
    self_discharge_per_day_mean=0.003,
    self_discharge_rel_std=0.5,
    initial_soc_std=0.03,
    seed=11,
)


def twin_packs(
    cell: CellParams, faults: FaultInjector | None = None, **kwargs: object
) -> list[Pack]:
    return [
        Pack(
            cell,
            TOPO,
            SPREAD,
            CoolingConfig(coolant_degc=22.0),
            initial_soc=0.6,
            ambient_degc=28.0,
            faults=faults,
            compiled=compiled,
            **kwargs,  # type: ignore[arg-type]
        )
        for compiled in (False, True)
    ]


def assert_close(a: object, b: object, scale: float = 1.0) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)  # type: ignore[arg-type]


def test_compiled_pack_follows_the_numpy_pack(cell: CellParams) -> None:
    faults = FaultInjector(TOPO.n_cells, TOPO.n_strings, 0)
    faults.inject(FaultKind.INTERNAL_SHORT, 5, at_time_s=600.0, resistance_ohm=20.0)
    faults.inject(FaultKind.COOLING_FAILURE, 1, at_time_s=1200.0, remaining_fraction=0.2)
    ref, fast = twin_packs(cell, faults, thermal_interval_s=10.0, ageing_window_s=300.0)
    assert (ref.compiled, fast.compiled) == (False, True)
    rng = np.random.default_rng(5)
    mask = np.zeros(TOPO.n_cells, dtype=bool)
    mask[[0, 7, 9]] = True
    for k in range(400):
        current = float(rng.choice([6.0, -6.0, 0.0, 2.5]))
        dt = float(rng.choice([1.0, 1.0, 3.0, 60.0]))
        balancing = mask if k % 3 == 0 else None
        r_step = ref.step(current, dt, 27.0, balancing, 33.0)
        f_step = fast.step(current, dt, 27.0, balancing, 33.0)
        for field in ("bus_voltage_start_v", "pack_voltage_v", "dc_energy_j", "cell_heat_j"):
            assert_close(getattr(f_step, field), getattr(r_step, field), 1e3)
        assert_close(f_step.self_discharge_j, r_step.self_discharge_j, 1e3)
        assert_close(f_step.bleed_j, r_step.bleed_j, 1e3)
        assert_close(f_step.string_current_a, r_step.string_current_a)
        assert_close(f_step.string_voltage_v, r_step.string_voltage_v)
    fast.close_ageing()
    ref.close_ageing()
    assert_close(fast.cell_soc, ref.cell_soc)
    assert_close(fast.cell_voltage_v, ref.cell_voltage_v)
    assert_close(fast.cell_temperature_degc, ref.cell_temperature_degc)
    assert_close(fast.coolant_module_degc, ref.coolant_module_degc)
    assert_close(fast.cell_voltage_min_seen_v, ref.cell_voltage_min_seen_v)
    assert_close(fast.cell_capacity_ah, ref.cell_capacity_ah)
    assert_close(fast.cell_resistance_scale, ref.cell_resistance_scale)
    assert_close(fast.state.v_rc, ref.state.v_rc)
    assert_close(fast.state.hysteresis, ref.state.hysteresis)
    assert_close(fast.thevenin(), ref.thevenin())
    assert fast.cell_temperature_range_degc == pytest.approx(
        (ref.cell_temperature_degc.min(), ref.cell_temperature_degc.max()), abs=1e-12
    )
    eb_f, eb_r = fast.energy_balance(), ref.energy_balance()
    for field in ("stored_now_j", "dc_out_j", "cell_heat_j", "self_discharge_j", "bleed_j"):
        assert_close(getattr(eb_f, field), getattr(eb_r, field), eb_r.throughput_j)
    assert abs(eb_f.residual_j) < 1e-9 * eb_f.throughput_j
    assert eb_f.bleed_j > 0.0
    tb_f, tb_r = fast.thermal_balance(), ref.thermal_balance()
    assert_close(tb_f.to_coolant_j, tb_r.to_coolant_j, abs(tb_r.generated_j))
    assert abs(tb_f.residual_j) < 1e-9 * (abs(tb_f.generated_j) + abs(tb_f.to_coolant_j))


def test_site_pack_reuses_end_of_step_energy_exactly(cell: CellParams) -> None:
    """The cached start energy is the stored energy of the state, bit for bit."""
    for pack in twin_packs(cell):
        for _ in range(20):
            pack.step(4.0, 30.0)
            assert pack.stored_energy_j() == float(
                pack.model.stored_energy_j(pack.state.soc, pack.cell_capacity_ah).sum()
            )


def test_compiled_sensors_read_what_the_numpy_sensors_read(cell: CellParams) -> None:
    cfg = SensorConfig(
        voltage_gain_error=0.001,
        voltage_offset_v=0.002,
        temperature_offset_degc=0.3,
        current_gain_error=0.01,
        current_offset_a=0.05,
        current_quantum_a=0.01,
        seed=9,
    )
    faults = FaultInjector(TOPO.n_cells, TOPO.n_strings, cfg.n_temperature_sensors(TOPO))
    faults.inject(FaultKind.OPEN_WIRE, 3, at_time_s=20.0)
    faults.inject(FaultKind.TEMPERATURE_SENSOR_LOST, 2, at_time_s=30.0)
    faults.inject(FaultKind.CURRENT_SENSOR_DRIFT, 1, at_time_s=10.0, rate_a_per_s=0.01)
    faults.inject(FaultKind.STUCK_CELL_VOLTAGE, 6, at_time_s=15.0)
    pack = twin_packs(cell)[1]
    ref = Sensors(cfg, TOPO, faults, compiled=False)
    fast = Sensors(cfg, TOPO, faults, compiled=True)
    for t in range(0, 60, 5):
        pack.step(5.0, 5.0)
        a, b = ref.read(pack, None, float(t)), fast.read(pack, None, float(t))
        for field in (
            "cell_voltage_v",
            "cell_voltage_valid",
            "cell_temperature_degc",
            "cell_temperature_valid",
            "string_current_a",
            "string_current_valid",
        ):
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
            assert not getattr(b, field).flags.writeable
        assert (b.pack_voltage_v, b.bus_voltage_v) == (a.pack_voltage_v, a.bus_voltage_v)
    assert not b.cell_voltage_valid[3]
    assert not b.cell_temperature_valid[2]


CONVERTERS = [
    ConverterParams.typical(5000.0),
    ConverterParams.typical(250_000.0, ramp_rate_w_per_s=50_000.0, standby_w=300.0),
]


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from([0, 1]),
    setpoint=st.one_of(st.floats(-4e5, 4e5), st.sampled_from([0.0, 0.5, -0.5, 1e9, -1e9])),
    ccl=st.one_of(st.floats(0.0, 500.0), st.just(0.0)),
    dcl=st.one_of(st.floats(0.0, 500.0), st.just(1e9)),
    closed=st.booleans(),
    e_v=st.floats(1.0, 1500.0),
    r_ohm=st.one_of(st.floats(0.0, 3.0), st.just(0.0)),
    previous=st.floats(-3e5, 3e5),
    dt_s=st.sampled_from([0.0, 1.0, 60.0, math.inf]),
)
def test_scalar_converter_is_bit_identical(
    which: int,
    setpoint: float,
    ccl: float,
    dcl: float,
    closed: bool,
    e_v: float,
    r_ohm: float,
    previous: float,
    dt_s: float,
) -> None:
    params = CONVERTERS[which]
    ref = convert(setpoint, ccl, dcl, closed, e_v, r_ohm, params, previous, dt_s)
    fast = convert_scalar(setpoint, ccl, dcl, closed, e_v, r_ohm, params, previous, dt_s)
    assert fast == tuple(float(x) for x in ref)


def test_scalar_converter_rejects_what_convert_rejects() -> None:
    p = CONVERTERS[0]
    with pytest.raises(ValueError, match="e_v must not be NaN"):
        convert_scalar(1.0, 1.0, 1.0, True, math.nan, 0.1, p)
    with pytest.raises(ValueError, match="magnitudes"):
        convert_scalar(1.0, -1.0, 1.0, True, 400.0, 0.1, p)
    with pytest.raises(ValueError, match="e_v must be > 0"):
        convert_scalar(1.0, 1.0, 1.0, True, 0.0, 0.1, p)
    # Infinities of both signs are not NaN inputs.
    out = convert_scalar(math.inf, math.inf, 1.0, True, 400.0, 0.1, p, -math.inf, 1.0)
    assert out == tuple(
        float(x) for x in convert(math.inf, math.inf, 1.0, True, 400.0, 0.1, p, -math.inf, 1.0)
    )


@pytest.mark.parametrize("export_limit", [0.0, 3000.0, math.inf])
def test_scalar_balance_matches_the_array_balance(export_limit: float) -> None:
    grid = GridConnection(9000.0, export_limit)
    rng = np.random.default_rng(2)
    for load, pv, batt in rng.uniform([0, -10, -6000], [8000, 9000, 6000], (200, 3)):
        ref = grid.balance(load, pv, batt)
        assert grid.balance_w(load, pv, batt) == (float(ref.grid_w), float(ref.pv_used_w))


def test_site_records_the_stored_energy_at_the_start() -> None:
    twin = SiteTwin(load_site("home"), 1717192800.0)
    assert isinstance(twin.stored_start_j, float)
    assert twin.stored_start_j == twin.pack.energy_balance().stored_start_j
