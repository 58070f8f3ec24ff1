"""Tests of the contactor and precharge circuit of the twin."""

from __future__ import annotations

import math

import pytest

from openbess.contract import ContactorState
from openbess.errors import SimulationError
from openbess.twin.contactor import (
    Contactor,
    ContactorCommand,
    ContactorConfig,
    precharge_voltage_v,
)
from openbess.twin.faults import FaultInjector, FaultKind

CONFIG = ContactorConfig(dc_link_capacitance_f=0.005, precharge_resistance_ohm=200.0)
PACK_V = 800.0


def test_precharge_follows_the_rc_curve() -> None:
    c = Contactor(CONFIG)
    tau = CONFIG.precharge_time_constant_s
    assert tau == pytest.approx(1.0)
    c.command("precharge", 0.0)
    assert c.state is ContactorState.PRECHARGE
    assert not c.aux_closed
    charge_c = 0.0
    for k in range(1, 41):
        i_mean = c.step(0.1, PACK_V)
        charge_c += i_mean * 0.1
        expected = PACK_V * (1.0 - math.exp(-0.1 * k / tau))
        assert c.bus_voltage_v == pytest.approx(expected, rel=1e-12)
    # 4 tau: 98.2 % of the pack voltage; the charge drawn is C * V.
    assert c.bus_voltage_v / PACK_V == pytest.approx(1.0 - math.exp(-4.0))
    assert charge_c == pytest.approx(CONFIG.dc_link_capacitance_f * c.bus_voltage_v)
    c.command("close", 4.0)
    assert c.hard_close_count == 0
    assert c.last_close_delta_v == pytest.approx(PACK_V * math.exp(-4.0))
    assert c.main_closed
    assert c.aux_closed
    assert not c.precharge_closed
    assert c.state is ContactorState.CLOSED
    c.step(1.0, PACK_V, pack_current_a=120.0)
    assert c.current_a == 120.0
    assert c.bus_voltage_v == PACK_V


def test_precharge_voltage_function() -> None:
    assert precharge_voltage_v(0.0, 400.0, 100.0, 2.0) == 100.0
    assert precharge_voltage_v(2.0, 400.0, 100.0, 2.0) == pytest.approx(
        400.0 - 300.0 * math.exp(-1.0)
    )


def test_close_without_precharge_is_counted_as_hard() -> None:
    c = Contactor(CONFIG)
    c.step(1.0, PACK_V)
    c.command(ContactorCommand.CLOSE, 1.0)
    assert c.hard_close_count == 1
    assert c.last_close_delta_v == pytest.approx(PACK_V)


def test_welded_contactor_stays_closed() -> None:
    faults = FaultInjector(4, 1, 1)
    c = Contactor(CONFIG, faults)
    c.command("precharge", 0.0)
    c.step(10.0, PACK_V)
    c.command("close", 10.0)
    faults.inject(FaultKind.WELDED_CONTACTOR, 0, at_time_s=50.0)
    c.command("open", 60.0)
    assert c.main_closed
    assert c.aux_closed
    assert c.commanded is ContactorCommand.OPEN
    assert c.state is ContactorState.FAULT
    assert c.welded_refusals == 1
    c.step(1.0, PACK_V, pack_current_a=5.0)  # current still flows
    assert c.current_a == 5.0
    faults.clear(FaultKind.WELDED_CONTACTOR, 0)
    c.command("open", 70.0)
    assert not c.main_closed
    assert not c.aux_closed
    assert c.state is ContactorState.OPEN


def test_open_before_the_weld_onset_opens() -> None:
    faults = FaultInjector(4, 1, 1)
    faults.inject(FaultKind.WELDED_CONTACTOR, 0, at_time_s=100.0)
    c = Contactor(CONFIG, faults)
    c.command("close", 0.0)
    c.command("open", 50.0)
    assert not c.main_closed


def test_current_through_open_contactor_is_an_error() -> None:
    c = Contactor(CONFIG)
    with pytest.raises(SimulationError, match="open main contactor"):
        c.step(1.0, PACK_V, pack_current_a=3.0)


def test_open_bus_discharges() -> None:
    c = Contactor(ContactorConfig(initial_bus_voltage_v=500.0, discharge_time_constant_s=10.0))
    c.step(10.0, PACK_V)
    assert c.bus_voltage_v == pytest.approx(500.0 * math.exp(-1.0))


def test_bad_command_and_config() -> None:
    with pytest.raises(ValueError, match="'shut'"):
        Contactor().command("shut")
    with pytest.raises(ValueError, match="precharge_resistance_ohm"):
        ContactorConfig(precharge_resistance_ohm=0.0)
    with pytest.raises(ValueError, match="dt_s"):
        Contactor().step(0.0, PACK_V)
