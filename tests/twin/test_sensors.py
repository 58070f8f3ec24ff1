"""Tests of the twin's sensors: noise statistics, quantisation, hold, fault effects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from openbess.cell.params import CellParams
from openbess.plant import Measurements
from openbess.twin.contactor import Contactor
from openbess.twin.faults import FaultInjector, FaultKind
from openbess.twin.pack import CoolingConfig, Pack, PackTopology, SpreadConfig
from openbess.twin.sensors import SensorConfig, Sensors, quantise

TOPO = PackTopology(n_strings=2, modules_per_string=2, cells_series_per_module=5)
EXACT = SensorConfig(
    voltage_noise_v=0.0,
    voltage_quantum_v=0.0,
    temperature_noise_degc=0.0,
    temperature_quantum_degc=0.0,
    current_noise_a=0.0,
)


def make_pack(cell: CellParams, topo: PackTopology = TOPO, **kwargs: object) -> Pack:
    pack = Pack(
        cell,
        topo,
        SpreadConfig(initial_soc_std=0.05, seed=4),
        CoolingConfig(coolant_degc=20.0),
        initial_soc=0.5,
        ambient_degc=25.0,
        ageing_window_s=math.inf,
        **kwargs,  # type: ignore[arg-type]
    )
    pack.step(3.0, 10.0)
    return pack


def test_fills_every_field(cell: CellParams) -> None:
    pack = make_pack(cell)
    contactor = Contactor()
    contactor.command("close")
    contactor.step(1.0, pack.pack_voltage_v, pack.current_a)
    sensors = Sensors(EXACT, TOPO)
    m = sensors.read(pack, contactor, 123.0)
    assert isinstance(m, Measurements)
    assert m.time_s == 123.0
    np.testing.assert_allclose(m.cell_voltage_v, pack.cell_voltage_v)
    assert m.cell_voltage_valid.all()
    assert m.cell_voltage_valid.shape == (20,)
    # Default: 2 sensors per module of 5 cells, at positions 1 and 3.
    assert m.temperature_sensor_cell.tolist() == [1, 3, 6, 8, 11, 13, 16, 18]
    np.testing.assert_allclose(
        m.cell_temperature_degc, pack.cell_temperature_degc[m.temperature_sensor_cell]
    )
    assert m.cell_temperature_valid.all()
    np.testing.assert_allclose(m.string_current_a, pack.string_current_a)
    assert m.string_current_valid.shape == (2,)
    assert m.pack_voltage_v == pytest.approx(pack.pack_voltage_v)
    assert m.contactor_closed
    assert m.bus_voltage_v == pytest.approx(pack.pack_voltage_v)
    with pytest.raises(ValueError, match="read-only"):
        m.cell_voltage_v[0] = 0.0


def test_noise_statistics_are_seeded(cell: CellParams) -> None:
    topo = PackTopology(1, 50, 40)  # 2000 cells, 100 temperature sensors
    pack = make_pack(cell, topo)
    cfg = SensorConfig(
        voltage_noise_v=0.002,
        voltage_offset_v=0.001,
        voltage_quantum_v=0.0,
        temperature_noise_degc=0.5,
        temperature_quantum_degc=0.0,
        current_noise_a=0.3,
        seed=11,
    )
    a = Sensors(cfg, topo)
    t_true = pack.cell_temperature_degc[a.temperature_sensor_cell]
    err_v, err_t, err_i = [], [], []
    for k in range(20):
        m = a.read(pack, None, float(k))
        err_v.append(m.cell_voltage_v - pack.cell_voltage_v)
        err_t.append(m.cell_temperature_degc - t_true)
        err_i.append(m.string_current_a - pack.string_current_a)
    ev, et, ei = np.concatenate(err_v), np.concatenate(err_t), np.concatenate(err_i)
    assert ev.mean() == pytest.approx(0.001, abs=3 * 0.002 / math.sqrt(ev.size))
    assert ev.std() == pytest.approx(0.002, rel=0.02)
    assert et.std() == pytest.approx(0.5, rel=0.08)
    assert abs(et.mean()) < 4 * 0.5 / math.sqrt(et.size)
    assert ei.size == 20
    # Same seed: the same readings.
    b = Sensors(cfg, topo)
    np.testing.assert_array_equal(
        b.read(pack, None, 0.0).cell_voltage_v, err_v[0] + pack.cell_voltage_v
    )


def test_quantisation_gain_and_offset(cell: CellParams) -> None:
    pack = make_pack(cell)
    cfg = SensorConfig(
        voltage_noise_v=0.0,
        voltage_quantum_v=0.005,
        voltage_gain_error=0.01,
        temperature_noise_degc=0.0,
        temperature_quantum_degc=0.5,
        temperature_offset_degc=1.0,
        current_noise_a=0.0,
        current_offset_a=0.2,
        current_gain_error=-0.02,
        current_quantum_a=0.1,
    )
    m = Sensors(cfg, TOPO).read(pack, None, 0.0)
    steps = m.cell_voltage_v / 0.005
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    assert np.abs(m.cell_voltage_v - 1.01 * pack.cell_voltage_v).max() <= 0.0025 + 1e-12
    t_true = pack.cell_temperature_degc[m.temperature_sensor_cell] + 1.0
    np.testing.assert_allclose(m.cell_temperature_degc, np.round(t_true / 0.5) * 0.5)
    i_expected = quantise(pack.string_current_a * 0.98 + 0.2, 0.1)
    np.testing.assert_allclose(m.string_current_a, i_expected)
    assert quantise(np.array([0.26]), 0.0)[0] == 0.26


def test_sample_and_hold(cell: CellParams) -> None:
    pack = make_pack(cell)
    cfg = SensorConfig(voltage_noise_v=0.0005, sample_period_s=1.0, seed=5)
    s = Sensors(cfg, TOPO)
    m0 = s.read(pack, None, 0.0)
    pack.step(20.0, 0.5)
    m1 = s.read(pack, None, 0.5)
    assert m1.time_s == 0.5
    np.testing.assert_array_equal(m1.cell_voltage_v, m0.cell_voltage_v)
    m2 = s.read(pack, None, 1.0)
    assert not np.array_equal(m2.cell_voltage_v, m0.cell_voltage_v)
    assert m2.string_current_a.sum() == pytest.approx(20.0, abs=1.0)


def test_stuck_reading_freezes_but_stays_valid(cell: CellParams) -> None:
    faults = FaultInjector(TOPO.n_cells, 2, 8)
    faults.inject(FaultKind.STUCK_CELL_VOLTAGE, 4, at_time_s=10.0)
    pack = make_pack(cell)
    s = Sensors(EXACT, TOPO, faults)
    before = s.read(pack, None, 5.0).cell_voltage_v[4]
    for t in (10.0, 20.0, 30.0):
        pack.step(30.0, 10.0)
        m = s.read(pack, None, t)
        assert m.cell_voltage_v[4] == before
        assert m.cell_voltage_valid[4]
        assert m.cell_voltage_v[3] == pytest.approx(pack.cell_voltage_v[3])
    assert pack.cell_voltage_v[4] < before - 0.01
    faults.clear(FaultKind.STUCK_CELL_VOLTAGE, 4)
    assert s.read(pack, None, 40.0).cell_voltage_v[4] == pytest.approx(pack.cell_voltage_v[4])


def test_open_wire_reads_zero_shifts_neighbour_and_is_invalid(cell: CellParams) -> None:
    faults = FaultInjector(TOPO.n_cells, 2, 8)
    faults.inject(FaultKind.OPEN_WIRE, 2, at_time_s=0.0)
    faults.inject(FaultKind.OPEN_WIRE, 9, at_time_s=0.0)  # top tap of a module
    pack = make_pack(cell)
    v = pack.cell_voltage_v
    m = Sensors(EXACT, TOPO, faults).read(pack, None, 1.0)
    assert m.cell_voltage_v[2] == pytest.approx(0.0, abs=1e-12)
    assert m.cell_voltage_v[3] == pytest.approx(v[2] + v[3])
    assert m.cell_voltage_v[9] == pytest.approx(0.0, abs=1e-12)
    assert m.cell_voltage_v[10] == pytest.approx(v[10])  # next module: own tap
    invalid = np.flatnonzero(~m.cell_voltage_valid).tolist()
    assert invalid == [2, 3, 9]


def test_lost_temperature_sensor_is_nan_and_invalid(cell: CellParams) -> None:
    faults = FaultInjector(TOPO.n_cells, 2, 8)
    faults.inject(FaultKind.TEMPERATURE_SENSOR_LOST, 5, at_time_s=0.0)
    m = Sensors(EXACT, TOPO, faults).read(make_pack(cell), None, 0.0)
    assert math.isnan(m.cell_temperature_degc[5])
    assert np.flatnonzero(~m.cell_temperature_valid).tolist() == [5]
    assert np.isfinite(np.delete(m.cell_temperature_degc, 5)).all()


def test_current_sensor_drift_grows(cell: CellParams) -> None:
    faults = FaultInjector(TOPO.n_cells, 2, 8)
    faults.inject(FaultKind.CURRENT_SENSOR_DRIFT, 1, at_time_s=100.0, rate_a_per_s=0.02)
    pack = make_pack(cell)
    s = Sensors(EXACT, TOPO, faults)
    true_i = pack.string_current_a
    for t, drift in ((50.0, 0.0), (100.0, 0.0), (600.0, 10.0)):
        m = s.read(pack, None, t)
        assert m.string_current_a[1] == pytest.approx(true_i[1] + drift)
        assert m.string_current_a[0] == pytest.approx(true_i[0])
        assert m.string_current_valid.all()


def test_contactor_feedback_and_bus_voltage(cell: CellParams) -> None:
    pack = make_pack(cell)
    c = Contactor()
    c.command("precharge")
    c.step(0.5, pack.pack_voltage_v)
    m = Sensors(EXACT, TOPO).read(pack, c, 0.0)
    assert not m.contactor_closed
    assert 0.0 < m.bus_voltage_v < pack.pack_voltage_v
    assert m.bus_voltage_v == pytest.approx(c.bus_voltage_v)


def test_sensor_positions_and_validation() -> None:
    topo = PackTopology(1, 2, 8)
    cfg = SensorConfig(temperature_sensor_positions=(0, 4, 7))
    assert cfg.n_temperature_sensors(topo) == 6
    assert Sensors(cfg, topo).temperature_sensor_cell.tolist() == [0, 4, 7, 8, 12, 15]
    with pytest.raises(ValueError, match="temperature_sensor_positions"):
        SensorConfig(temperature_sensor_positions=(8,)).sensor_positions(topo)
    with pytest.raises(ValueError, match="temperature_sensors_per_module"):
        SensorConfig(temperature_sensors_per_module=9).sensor_positions(topo)
    with pytest.raises(ValueError, match="voltage_noise_v"):
        SensorConfig(voltage_noise_v=-1.0)
