"""Closed-loop runs on the twin: physical invariants and phase isolation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from openbess.config import load_site
from openbess.contract import Actuation, Command, Outcome, Reason, Telemetry
from openbess.controller import SAFE_ACTUATION
from openbess.plant import SiteMeasurements
from openbess.simulate import build_site, simulate
from openbess.twin.faults import FaultKind

START_S = 1717192800.0  # 2024-06-01T00:00:00+02:00


@pytest.fixture(scope="module")
def home_two_days():
    return simulate(load_site("home"), days=2, step_s=60.0, progress=False)


def test_energy_balance_closes(home_two_days):
    k = home_two_days
    assert k["energy_balance_error_fraction"] < 1e-9
    lhs = k["energy_charged_ac_kwh"] - k["energy_discharged_ac_kwh"]
    rhs = (
        k["stored_energy_change_kwh"]
        + k["losses_converter_kwh"]
        + k["losses_cells_kwh"]
        + k["losses_balancing_kwh"]
        + k["losses_self_discharge_kwh"]
        + k["capacity_fade_energy_kwh"]
    )
    assert lhs == pytest.approx(rhs, rel=1e-6, abs=1e-9)
    # The battery did real work: it charged from PV and discharged into the load.
    assert k["energy_charged_ac_kwh"] > 1.0
    assert k["energy_discharged_ac_kwh"] > 1.0


def test_site_balance_at_the_meter(home_two_days):
    k = home_two_days
    supply = k["pv_kwh"] + k["grid_import_kwh"] + k["energy_discharged_ac_kwh"]
    demand = k["load_kwh"] + k["grid_export_kwh"] + k["energy_charged_ac_kwh"]
    assert supply == pytest.approx(demand, rel=1e-9)


def test_cells_stay_within_limits_and_battery_saves_money(home_two_days):
    k = home_two_days
    assert k["cell_limits_respected"] is True
    assert k["cell_voltage_min_seen_v"] >= k["cell_voltage_limit_min_v"]
    assert k["cell_voltage_max_seen_v"] <= k["cell_voltage_limit_max_v"]
    assert 0.0 <= k["soc_end"] <= 1.0
    assert k["savings_eur"] > 0.0
    assert k["ems_errors"] == 0
    assert k["bms_errors"] == 0


@dataclass
class Spy:
    """Wraps the twin's write() to record each actuation and the current that followed."""

    writes: list[Actuation] = field(default_factory=list)
    currents: list[float] = field(default_factory=list)


def test_actuated_current_never_exceeds_that_cycles_caps():
    site = build_site(load_site("home"), START_S, 60.0)
    twin = site.twin
    spy = Spy()
    orig_write, orig_advance = twin.write, twin.advance_to

    def write(act: Actuation) -> None:
        spy.writes.append(act)
        orig_write(act)

    def advance(t: float) -> None:
        orig_advance(t)
        if spy.writes and t > twin.counters.duration_s * 0:  # after each write
            spy.currents.append(twin.pack.current_a)

    twin.write = write  # type: ignore[method-assign]
    twin.advance_to = advance  # type: ignore[method-assign]
    for k in range(1440):
        site.controller.cycle(START_S + 60.0 * k)
    # currents[k] flowed under writes[k] (written at the end of cycle k, held until k + 1).
    pairs = list(zip(spy.writes, spy.currents, strict=False))
    assert len(pairs) > 1000
    for act, i in pairs:
        assert i <= act.discharge_current_limit_a + 1e-9
        assert -i <= act.charge_current_limit_a + 1e-9


class FlakyStrategy:
    """A strategy that raises on every second dispatch."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0
        self.seq = 0

    def replan(self, now_s: float, telemetry: Telemetry) -> None:
        raise RuntimeError("forecast service down")

    def dispatch(self, now_s: float, telemetry: Telemetry, site: SiteMeasurements) -> Command:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("strategy bug")
        self.seq += 1
        return Command(self.seq, mode="power", power_w=1000.0, valid_until_s=now_s + 300.0)  # type: ignore[arg-type]


def test_ems_exceptions_never_stop_the_bms():
    site = build_site(load_site("home"), START_S, 60.0)
    ctl = site.controller
    ctl.strategy = FlakyStrategy()
    for k in range(200):
        tel = ctl.cycle(START_S + 60.0 * k)
        assert tel is not None  # the BMS ran every cycle
    assert ctl.counters.ems_errors >= 100
    assert ctl.counters.bms_errors == 0
    assert ctl.telemetry is not None
    assert ctl.telemetry.time_s == START_S + 60.0 * 199


def test_bms_exception_puts_the_plant_in_the_safe_state():
    site = build_site(load_site("home"), START_S, 60.0)
    ctl = site.controller
    for k in range(100):
        ctl.cycle(START_S + 60.0 * k)

    def broken(*args: object, **kwargs: object) -> None:
        raise FloatingPointError("estimator diverged")

    site.bms.update = broken  # type: ignore[method-assign, assignment]
    assert ctl.cycle(START_S + 60.0 * 100) is None
    assert site.twin.actuation == SAFE_ACTUATION
    assert ctl.counters.bms_errors == 1
    assert site.bms.failed_at_s is None or site.bms.failed_at_s == START_S + 6000.0
    site.twin.advance_to(START_S + 60.0 * 101)
    assert site.twin.pack.current_a == 0.0


def test_lost_ems_link_leads_to_safe_idle():
    cfg = load_site("home")
    site = build_site(cfg, START_S, 10.0)
    ctl = site.controller
    t = START_S
    for _ in range(400):  # let the contactor close and the limits ramp up
        ctl.cycle(t)
        t += 10.0
    site.twin.faults.inject(FaultKind.LINK_LOST, 0, at_time_s=t)
    decisions = []
    for _ in range(10):
        ctl.cycle(t)
        decisions.append(site.controller.gate.last_decision)
        t += 10.0
    assert ctl.counters.commands_lost >= 9
    last = decisions[-1]
    assert last.outcome is Outcome.SAFE_IDLE
    assert last.reason in (Reason.NO_COMMAND, Reason.EXPIRED)
    assert site.twin.actuation.ac_power_setpoint_w == 0.0
    # One warning, not an alarm storm.
    assert site.bms.alarm_counts.get("ems_link_lost", 0) <= 1


def test_cell_over_temperature_opens_or_blocks_and_is_reported():
    site = build_site(load_site("home"), START_S, 10.0)
    ctl = site.controller
    t = START_S
    for _ in range(200):
        ctl.cycle(t)
        t += 10.0
    # Cooling fails and a cell shorts internally: it heats up.
    site.twin.faults.inject(FaultKind.COOLING_FAILURE, 0, at_time_s=t)
    watched = int(site.twin.sensors.temperature_sensor_cell[0])  # a cell with a sensor on it
    site.twin.faults.inject(FaultKind.INTERNAL_SHORT, watched, at_time_s=t, resistance_ohm=0.02)
    hot_seen = False
    for _ in range(3000):
        tel = ctl.cycle(t)
        t += 10.0
        if tel is not None and any("temperature" in a for a in tel.alarms):
            hot_seen = True
            break
    assert hot_seen, "no temperature alarm while a shorted cell heated up"
    assert tel is not None
    assert math.isfinite(tel.temperature_max_degc)
    # The limits react: at least one direction is derated below its rating.
    rated = site.bms.setup.params.limits.rated_charge_current_a
    assert tel.charge_current_limit_a < rated or tel.discharge_current_limit_a < rated


def test_sampled_cell_arrays_have_one_value_per_cell():
    site = build_site(load_site("commercial"), START_S, 1.0)
    tel = site.controller.cycle(START_S)
    assert tel is not None
    assert site.bms.cell_soc.shape == (1152,)
    assert np.all((site.bms.cell_soc >= 0) & (site.bms.cell_soc <= 1))


def test_bms_estimates_track_the_true_state(home_two_days):
    k = home_two_days
    # The BMS never reads the twin's truth; after rests at the steep ends of the LFP curve its
    # model-compensated OCV corrections bring SoC and capacity close to it.
    assert abs(k["soc_end_estimated"] - k["soc_end"]) < 0.03
    assert abs(k["soh_estimated"] - k["soh_true"]) < 0.05


def test_balancing_state_reaches_telemetry_actuation_and_the_twin():
    site = build_site(load_site("home"), START_S, 60.0)
    # Spread the cells' SoC so that the balancer has work to do.
    soc = site.twin.pack.cell_soc
    soc[::2] += 0.04
    site.twin.pack.set_cell_soc(soc)
    counts = []
    for k in range(3 * 1440):
        tel = site.controller.cycle(START_S + 60.0 * k)
        assert tel is not None
        mask = site.twin.actuation.balancing
        assert mask is not None
        assert tel.balancing_cells == int(np.count_nonzero(site.bms.balancing))
        counts.append(tel.balancing_cells)
    assert max(counts) > 0
    assert site.twin.energy_kpis()["losses_balancing_kwh"] > 0.0
