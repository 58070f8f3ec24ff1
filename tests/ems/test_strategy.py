"""Self-consumption strategy: the command it sends for given meters and Telemetry."""

from __future__ import annotations

import dataclasses
import math

import pytest

from openbess.contract import ContactorState, Mode, Telemetry
from openbess.ems.realtime import RealtimeConfig
from openbess.ems.strategy import SelfConsumption
from openbess.gate import NO_DECISION
from openbess.plant import SiteMeasurements

TEL = Telemetry(
    time_s=0.0,
    soc=0.5,
    soc_cell_min=0.49,
    soc_cell_max=0.51,
    soh=1.0,
    energy_available_wh=5000.0,
    capacity_wh=10000.0,
    pack_voltage_v=52.0,
    pack_current_a=0.0,
    cell_voltage_min_v=3.3,
    cell_voltage_max_v=3.31,
    cell_voltage_avg_v=3.305,
    temperature_min_degc=20.0,
    temperature_max_degc=21.0,
    temperature_avg_degc=20.5,
    charge_current_limit_a=100.0,
    discharge_current_limit_a=100.0,
    charge_power_limit_w=5000.0,
    discharge_power_limit_w=5000.0,
    contactor=ContactorState.CLOSED,
    alarms=(),
    balancing_cells=0,
    gate=NO_DECISION,
)


def site(grid_w: float, battery_w: float) -> SiteMeasurements:
    return SiteMeasurements(0.0, grid_w, 0.0, 0.0, battery_w, 0.3, 0.1)


def strategy() -> SelfConsumption:
    return SelfConsumption(
        reserve_soc=0.2,
        soc_min=0.1,
        soc_max=0.95,
        max_charge_power_w=4000.0,
        max_discharge_power_w=4500.0,
        realtime=RealtimeConfig(ramp_w_per_s=math.inf),  # the rules without the ramp
    )


@pytest.mark.parametrize(
    ("grid_w", "battery_w", "soc", "expected_w"),
    [
        (1000.0, 500.0, 0.5, 1500.0),  # import: discharge more to cover it
        (-2000.0, 0.0, 0.5, -2000.0),  # export: soak up the PV surplus
        (9000.0, 0.0, 0.5, 4500.0),  # limited by the AC rating
        (-9000.0, 0.0, 0.5, -4000.0),
        (1000.0, 0.0, 0.2, 0.0),  # at the reserve: no discharge
        (-1000.0, 0.0, 0.96, 0.0),  # above soc_max: no charge
        (5.0, 700.0, 0.5, 700.0),  # inside the dead band: hold the present power
    ],
)
def test_targets(grid_w, battery_w, soc, expected_w):
    cmd = strategy().dispatch(100.0, dataclasses.replace(TEL, soc=soc), site(grid_w, battery_w))
    assert cmd.mode is Mode.POWER
    assert cmd.power_w == pytest.approx(expected_w)
    assert cmd.reserve_soc == 0.2
    assert cmd.valid_until_s > 100.0


def test_respects_the_bms_limits_in_the_telemetry():
    tel = dataclasses.replace(TEL, discharge_power_limit_w=800.0, charge_power_limit_w=0.0)
    s = strategy()
    assert s.dispatch(0.0, tel, site(3000.0, 0.0)).power_w == 800.0
    assert s.dispatch(1.0, tel, site(-3000.0, 0.0)).power_w == 0.0


def test_sequence_numbers_increase():
    s = strategy()
    seqs = [s.dispatch(float(k), TEL, site(0.0, 0.0)).seq for k in range(5)]
    assert seqs == sorted(set(seqs))
