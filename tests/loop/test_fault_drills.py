"""Fault drills on the twin: every injectable fault ends in its documented reaction.

One closed-loop run per :class:`~openbess.twin.faults.FaultKind` (``docs/faults.md`` holds the
table these tests check): the alarm code and tier, the time it is raised (from the fault
table's delays at the run's cycle), the gate's outcome and reason, the contactor state. Every
cycle the twin's *true* cell voltages are checked against the maximum safety limits (MSL), and
a lost sensor or EMS link must give one alarm code, not a storm.

The EMS is replaced by a scripted strategy where a drill needs a known power (a step to make
a frozen reading stand out, full power to heat a pack whose cooling failed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from openbess.bms.contactor import ContactorInputs
from openbess.bms.limits import temperature_factor
from openbess.bms.monitor import STUCK_SCAN_EVERY, MonitorResult, string_current_outliers
from openbess.config import SiteConfig, load_site
from openbess.contract import (
    Command,
    ContactorState,
    GateDecision,
    Mode,
    Outcome,
    Reason,
    Telemetry,
)
from openbess.plant import Measurements, SiteMeasurements
from openbess.simulate import Site, build_site
from openbess.twin.faults import FaultKind

START_S = 1717192800.0  # 2024-06-01T00:00:00+02:00 (home); commercial starts a year earlier
EPS = 1e-6


class Scripted:
    """A strategy that asks for ``power_w(now_s)`` every dispatch (valid for 5 s)."""

    name = "scripted"

    def __init__(self, power_w: Callable[[float], float]) -> None:
        self.power_w = power_w
        self.seq = 10**6

    def replan(self, now_s: float, telemetry: Telemetry) -> None:
        return None

    def dispatch(self, now_s: float, telemetry: Telemetry, site: SiteMeasurements) -> Command:
        self.seq += 1
        return Command(self.seq, Mode.POWER, self.power_w(now_s), valid_until_s=now_s + 5.0)


@dataclass
class Cycle:
    """What one cycle showed."""

    time_s: float
    telemetry: Telemetry
    measurements: Measurements
    monitor: MonitorResult
    gate: GateDecision  # this cycle's decision (the Telemetry carries the previous one)
    contactor: ContactorState
    true_v_max: float
    true_v_min: float
    true_current_a: float


@dataclass
class Drill:
    """A site on the twin, warmed up (contactor closed, limits ramped), recording each cycle."""

    site: Site
    step_s: float
    t: float
    cycles: list[Cycle] = field(default_factory=list)
    events: list[tuple[float, str, str, str]] = field(default_factory=list)
    _last_meas: list[Measurements] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        config: SiteConfig | None = None,
        step_s: float = 1.0,
        power_w: Callable[[float], float] | None = None,
        warmup_s: float = 120.0,
        start_s: float = START_S,
    ) -> Drill:
        site = build_site(config if config is not None else load_site("home"), start_s, step_s)
        if power_w is not None:
            site.controller.strategy = Scripted(power_w)
        drill = cls(site, step_s, start_s)
        read = site.twin.read

        def spy() -> tuple[Measurements, SiteMeasurements]:
            meas, site_meas = read()
            drill._last_meas.append(meas)
            return meas, site_meas

        site.twin.read = spy  # type: ignore[method-assign]
        drill.run(warmup_s)
        assert site.bms.contactor.state is ContactorState.CLOSED
        assert site.controller.telemetry is not None
        assert site.controller.telemetry.alarms == ()
        drill.cycles.clear()
        drill.events.clear()
        site.bms.alarm_counts.clear()
        return drill

    @property
    def bms(self):
        return self.site.bms

    def inject(self, kind: FaultKind, target: int = 0, **params: float) -> float:
        """Fault from the next cycle on; returns its onset [s]."""
        self.site.twin.faults.inject(kind, target, at_time_s=self.t, **params)
        return self.t

    def run(self, duration_s: float, stop: Callable[[Cycle], bool] | None = None) -> None:
        ctl, twin = self.site.controller, self.site.twin
        for _ in range(round(duration_s / self.step_s)):
            tel = ctl.cycle(self.t)
            assert tel is not None, "the BMS phase never fails on a fault"
            v = twin.pack.cell_voltage_v
            assert self.bms.monitor_result is not None
            c = Cycle(
                self.t,
                tel,
                self._last_meas[-1],
                self.bms.monitor_result,
                ctl.gate.last_decision,
                self.bms.contactor.state,
                float(v.max()),
                float(v.min()),
                float(twin.pack.current_a),
            )
            self.cycles.append(c)
            for ev in self.bms.pop_events():
                self.events.append((ev.time_s, ev.kind, ev.code, ev.severity))
            self.t += self.step_s
            if stop is not None and stop(c):
                return

    def raised(self, code: str, severity: str) -> float:
        """Time the alarm ``code`` was first raised to the tier of ``severity``."""
        for time_s, kind, ev_code, sev in self.events:
            if kind == "protection" and ev_code == f"{code}:raised" and sev == severity:
                return time_s
        raise AssertionError(f"{code} never raised to {severity}; events: {self.events}")

    def contactor_event(self, code: str) -> float:
        for time_s, kind, ev_code, _ in self.events:
            if kind == "contactor" and ev_code == code:
                return time_s
        raise AssertionError(f"no contactor event {code}; events: {self.events}")

    def alarm_codes(self) -> set[str]:
        return {code for c in self.cycles for code in (a.split(":")[0] for a in c.telemetry.alarms)}

    def at(self, time_s: float) -> Cycle:
        return next(c for c in self.cycles if c.time_s >= time_s - EPS)

    def assert_cells_within_msl(self, until_s: float = math.inf) -> None:
        """No cell's true voltage ever beyond its maximum safety limits (up to ``until_s``)."""
        p = self.bms.setup.params.protection
        v_max, v_min = p.cell_voltage_max_v.msl, p.cell_voltage_min_v.msl
        assert v_max is not None
        assert v_min is not None
        for c in self.cycles:
            if c.time_s <= until_s:
                assert c.true_v_max <= v_max, f"cell above {v_max} V at t={c.time_s}"
                assert c.true_v_min >= v_min, f"cell below {v_min} V at t={c.time_s}"


def protection(d: Drill):
    return d.bms.setup.params.protection


# ------------------------------------------------------------------------------------ sensors


def test_stuck_cell_voltage_is_found_after_a_current_step_and_trips():
    """The frozen reading stays flagged valid; a 2.5 kW step must move every healthy cell by
    2 mV (R0 dI): the monitor calls it stuck, the cell is unprotected -> warn, block, open."""
    onset = START_S + 120.0
    step_at = onset + 20.0
    d = Drill.start(power_w=lambda now: 3000.0 if now >= step_at else 500.0)
    p = protection(d)
    assert d.inject(FaultKind.STUCK_CELL_VOLTAGE, 5) == onset
    d.run(90.0)
    mol = d.raised("cell_voltage_stuck", "warning")
    # Evidence: the string current moved by the monitor's step and the mean by 3 mV since
    # the reading froze (the twin holds the sample before the onset).
    frozen = d.cycles[0].measurements  # first sample of the fault: already the held value
    i0 = float(frozen.string_current_a[0])
    m0 = float(np.delete(frozen.cell_voltage_v, 5).mean())
    step_a = d.bms.monitor.stuck_current_step_a
    evidence = next(
        c.time_s
        for c in d.cycles
        if abs(float(c.measurements.string_current_a[0]) - i0) >= step_a
        and abs(float(np.delete(c.measurements.cell_voltage_v, 5).mean()) - m0) >= 0.003
    )
    assert evidence >= step_at  # nothing before the step: a resting frozen value is right
    bound = evidence + STUCK_SCAN_EVERY * d.step_s + p.sensor_warn_delay_s
    assert evidence + p.sensor_warn_delay_s - EPS <= mol <= bound + EPS
    detected = mol - p.sensor_warn_delay_s
    assert d.raised("cell_voltage_stuck", "derate") == pytest.approx(
        detected + p.sensor_block_delay_s
    )
    trip = d.raised("cell_voltage_stuck", "trip")
    assert trip == pytest.approx(detected + p.sensor_trip_delay_s)
    assert d.contactor_event("opened_on_trip") == trip
    # Blocked: the 3 kW request is refused between RSL and MSL, then refused as a trip.
    blocked = d.at(detected + p.sensor_block_delay_s).gate
    assert (blocked.outcome, blocked.reason) == (Outcome.REFUSED, Reason.DISCHARGE_LIMIT)
    tripped = d.at(trip)
    assert (tripped.gate.outcome, tripped.gate.reason) == (
        Outcome.REFUSED,
        Reason.PROTECTION_TRIP,
    )
    assert tripped.contactor is ContactorState.OPEN
    assert tripped.true_current_a == 0.0
    # One cause, one alarm: never reported as an invalid reading.
    assert d.alarm_codes() == {"cell_voltage_stuck"}
    assert d.bms.monitor.counts["cell_voltage_stuck"] >= 1
    d.assert_cells_within_msl()


def test_open_wire_warns_blocks_and_opens_on_the_sensor_delays():
    d = Drill.start(power_w=lambda now: 1000.0)
    p = protection(d)
    onset = d.inject(FaultKind.OPEN_WIRE, 6)
    d.run(40.0)
    assert d.raised("cell_voltage_invalid", "warning") == onset + p.sensor_warn_delay_s
    assert d.raised("cell_voltage_invalid", "derate") == onset + p.sensor_block_delay_s
    trip = d.raised("cell_voltage_invalid", "trip")
    assert trip == onset + p.sensor_trip_delay_s
    assert d.contactor_event("opened_on_trip") == trip
    blocked = d.at(onset + p.sensor_block_delay_s).gate
    assert (blocked.outcome, blocked.reason) == (Outcome.REFUSED, Reason.DISCHARGE_LIMIT)
    assert d.cycles[-1].contactor is ContactorState.OPEN
    assert d.alarm_codes() == {"cell_voltage_invalid"}
    # Both inputs of the broken tap are excluded (the twin's AFE flags them).
    assert d.cycles[-1].telemetry.cell_voltage_max_v < 3.5
    assert d.bms.monitor_result is not None
    assert d.bms.monitor_result.n_invalid_voltage == 2
    d.assert_cells_within_msl()


def test_lost_temperature_sensor_is_one_warning_and_both_lost_block_charging():
    d = Drill.start(power_w=lambda now: -1000.0)  # charging
    p = protection(d)
    onset = d.inject(FaultKind.TEMPERATURE_SENSOR_LOST, 0)
    d.run(60.0)
    assert d.raised("temperature_invalid", "warning") == onset + p.sensor_warn_delay_s
    assert d.alarm_codes() == {"temperature_invalid"}
    assert d.bms.alarm_counts == {"temperature_invalid": 1}  # one alarm, not a storm
    last = d.cycles[-1]
    assert last.contactor is ContactorState.CLOSED
    assert last.gate.outcome is Outcome.ACCEPTED  # operation goes on
    assert math.isfinite(last.telemetry.temperature_max_degc)  # from the other sensor
    # The module's second sensor goes too: no temperature at all -> no charging.
    second = d.inject(FaultKind.TEMPERATURE_SENSOR_LOST, 1)
    d.run(20.0)
    assert d.raised("temperature_invalid", "derate") == second + p.sensor_block_delay_s
    last = d.cycles[-1].telemetry
    assert (last.gate.outcome, last.gate.reason) == (Outcome.REFUSED, Reason.CHARGE_LIMIT)
    assert last.charge_current_limit_a == 0.0
    lp = d.bms.setup.params.limits
    assert last.discharge_current_limit_a <= (
        lp.unknown_temperature_discharge_factor * lp.rated_discharge_current_a + EPS
    )
    assert d.bms.alarm_counts == {"temperature_invalid": 2}  # MOL, then the same alarm's RSL
    assert d.cycles[-1].contactor is ContactorState.CLOSED
    d.assert_cells_within_msl()


def test_current_sensor_drift_on_one_string_trips_on_the_phantom_current_then_is_named():
    """A single current sensor: its offset is not observable while the contactor is closed
    (the cells answer to current changes, an offset does not change). The phantom current
    reaches the over-current tiers and trips; with the contactor open the zero-current check
    names the sensor (not a welded contactor), and the latched trip cannot be reset."""
    d = Drill.start(power_w=lambda now: 1000.0)
    p = protection(d)
    onset = d.inject(FaultKind.CURRENT_SENSOR_DRIFT, 0, rate_a_per_s=0.5)
    d.run(600.0)
    msl = p.discharge_current_a.msl
    assert msl is not None
    crossed = next(c.time_s for c in d.cycles if float(c.measurements.string_current_a[0]) > msl)
    trip = d.raised("discharge_overcurrent", "trip")
    # MSL delay 0.32 s: raised at the first cycle at least that long after the crossing.
    assert crossed + p.current_trip_delay_s - EPS <= trip <= crossed + d.step_s + EPS
    assert d.contactor_event("opened_on_trip") == trip
    named = d.raised("current_sensor_implausible", "warning")
    samples = d.bms.setup.params.monitor.current_samples
    assert named == trip + samples * d.step_s + p.sensor_warn_delay_s
    assert not any(code == "contactor_welded" for _, _, code, _ in d.events)
    last = d.cycles[-1]
    assert last.contactor is ContactorState.OPEN
    assert last.true_current_a == 0.0
    assert d.alarm_codes() == {"discharge_overcurrent", "current_sensor_implausible"}
    # The cause persists: the latched trip is not released.
    assert d.bms.protection_inputs is not None
    ok, why = d.bms.protection.reset("discharge_overcurrent", d.t, d.bms.protection_inputs)
    assert not ok
    assert "invalid" in why
    assert onset < crossed
    d.assert_cells_within_msl()


def test_current_sensor_drift_on_one_of_four_strings_is_found_by_the_others():
    cfg = load_site("commercial")
    start = 1685570400.0  # 2023-06-01T00:00:00+02:00
    d = Drill.start(cfg, power_w=lambda now: 20000.0, warmup_s=90.0, start_s=start)
    p = protection(d)
    mp = d.bms.setup.params.monitor
    rate = 0.05
    onset = d.inject(FaultKind.CURRENT_SENSOR_DRIFT, 1, rate_a_per_s=rate)
    d.run(150.0)
    named = d.raised("current_sensor_implausible", "warning")
    # Replay the comparison on the recorded readings: the first of current_samples failing
    # samples in a row.
    tol_a = mp.current_mismatch_c * d.bms.setup.params.capacity_ah / 4
    fails = [
        bool(
            string_current_outliers(
                c.measurements.string_current_a,
                np.ones(4, bool),
                tol_a,
                mp.current_mismatch_fraction,
            )[1]
        )
        for c in d.cycles
    ]
    first = next(k for k in range(len(fails)) if all(fails[k : k + mp.current_samples]))
    detected = d.cycles[first].time_s + (mp.current_samples - 1) * d.step_s
    assert named == detected + p.sensor_warn_delay_s
    # Physically: found before the offset is twice the tolerance.
    assert detected - onset <= 2.0 * tol_a / rate
    at_detection = d.at(detected).monitor
    assert list(at_detection.string_current_valid) == [True, False, True, True]
    assert at_detection.current_implausible
    trip = d.raised("current_sensor_implausible", "trip")
    assert trip == detected + p.sensor_trip_delay_s
    assert d.contactor_event("opened_on_trip") == trip
    assert d.alarm_codes() == {"current_sensor_implausible"}
    d.assert_cells_within_msl()


# ------------------------------------------------------------------------------------ cells


def test_internal_short_on_a_sensed_cell_overheats_and_the_pack_is_isolated():
    """The short (0.05 ohm, ~66 A inside one cell) heats the cell under temperature sensor 0.
    The tiers follow the measured temperature on the temperature delay; the MSL opens the
    contactor. Nothing outside the cell can stop an internal short: after the opening it keeps
    heating and draining that cell (documented), the rest of the pack is isolated."""
    d = Drill.start(power_w=lambda now: 0.0)
    p = protection(d)
    cell = int(d.site.twin.sensors.temperature_sensor_cell[0])
    d.inject(FaultKind.INTERNAL_SHORT, cell, resistance_ohm=0.05)
    d.run(4000.0, stop=lambda c: c.contactor is ContactorState.OPEN)
    d.run(300.0)  # after the trip
    msl = p.discharge_temperature_max_degc.msl
    assert msl is not None
    for severity, threshold in zip(
        ("warning", "derate", "trip"), p.discharge_temperature_max_degc.as_tuple(), strict=True
    ):
        assert threshold is not None
        # Raised once the measured maximum has stayed above the threshold for the delay.
        hot = [c.telemetry.temperature_max_degc > threshold for c in d.cycles]
        span = round(p.temperature_set_delay_s / d.step_s)
        first = next(k for k in range(len(hot)) if all(hot[k : k + span + 1]))
        raised = d.raised("discharge_overtemperature", severity)
        assert raised == d.cycles[first].time_s + p.temperature_set_delay_s
    trip = d.raised("discharge_overtemperature", "trip")
    assert d.contactor_event("opened_on_trip") == trip
    after = [c for c in d.cycles if c.time_s > trip]
    assert all(c.contactor is ContactorState.OPEN for c in after)
    assert all(c.true_current_a == 0.0 for c in after)
    # Charging was blocked from the charge RSL on (same 55 degC threshold).
    assert d.raised("charge_overtemperature", "derate") <= trip
    d.assert_cells_within_msl()  # the short lowers its cell: no cell beyond either MSL here
    assert d.site.twin.cell_temperature_max_seen_degc > msl  # the short heats on, isolated


def test_cooling_failure_at_full_power_is_held_by_the_temperature_derating():
    """A hot site (35 degC) running 1 C square waves loses its cooling: the cells warm until the
    temperature derating (from 40 degC) caps the current; they settle below the MOL, so the
    derating is the whole reaction. Every cycle the limits obey the derating curve."""
    base = load_site("home")
    b = base.battery
    hot = base.model_copy(
        update={
            "battery": b.model_copy(
                update={
                    "thermal": b.thermal.model_copy(update={"ambient_degc": 35.0}),
                    "max_charge_power_w": 10000.0,
                    "max_discharge_power_w": 10000.0,
                    "max_c_rate": 1.0,
                }
            )
        }
    )

    def square(now: float) -> float:
        return 10000.0 if int((now - START_S) // 1200.0) % 2 == 0 else -10000.0

    d = Drill.start(hot, step_s=10.0, power_w=square, warmup_s=300.0)
    p = protection(d)
    lp = d.bms.setup.params.limits
    d.inject(FaultKind.COOLING_FAILURE, 0)
    d.run(4 * 3600.0)
    derated = 0
    for c in d.cycles:
        tel = c.telemetry
        f_dis = float(
            temperature_factor(
                tel.temperature_min_degc, tel.temperature_max_degc, lp.discharge_temperature
            )
        )
        f_chg = float(
            temperature_factor(
                tel.temperature_min_degc, tel.temperature_max_degc, lp.charge_temperature
            )
        )
        assert tel.discharge_current_limit_a <= f_dis * lp.rated_discharge_current_a + EPS
        assert tel.charge_current_limit_a <= f_chg * lp.rated_charge_current_a + EPS
        derated += f_dis < 1.0
    assert derated > 100  # the cooling failure did heat the pack into the derating
    hottest = d.site.twin.cell_temperature_max_seen_degc
    mol = p.discharge_temperature_max_degc.mol
    assert mol is not None
    assert 40.0 < hottest < mol
    assert d.alarm_codes() == set()
    assert d.cycles[-1].contactor is ContactorState.CLOSED
    assert any(c.gate.outcome is Outcome.CLAMPED for c in d.cycles)
    d.assert_cells_within_msl()


# ------------------------------------------------------------------------------ contactor, link


def test_welded_contactor_is_found_when_a_trip_opens_it():
    d = Drill.start(power_w=lambda now: 1000.0)
    p = protection(d)
    cp = d.bms.setup.params.contactor
    onset = d.inject(FaultKind.WELDED_CONTACTOR)
    d.inject(FaultKind.OPEN_WIRE, 6)  # the trip that asks the contactor to open
    d.run(40.0)
    trip = d.raised("cell_voltage_invalid", "trip")
    assert trip == onset + p.sensor_trip_delay_s
    assert d.contactor_event("opened_on_trip") == trip
    welded = d.contactor_event("contactor_welded")
    # The feedback disagrees from the first sample after the open command; FAULT once that
    # has lasted feedback_delay_s (at a 1 s cycle: the second sample).
    assert trip + d.step_s + cp.feedback_delay_s - EPS <= welded
    assert welded <= trip + d.step_s + math.ceil(cp.feedback_delay_s / d.step_s) * d.step_s + EPS
    fault = d.at(welded)
    assert fault.contactor is ContactorState.FAULT
    assert fault.telemetry.contactor is ContactorState.FAULT
    after = d.at(welded + d.step_s)
    assert (after.gate.outcome, after.gate.reason) == (
        Outcome.REFUSED,
        Reason.PROTECTION_TRIP,
    )
    assert after.true_current_a == 0.0  # zero current caps: nothing flows through the weld
    assert d.site.twin.contactor.main_closed  # still welded
    assert all(c.contactor is ContactorState.FAULT for c in d.cycles if c.time_s >= welded)
    m = d.cycles[-1].measurements
    ok, why = d.bms.contactor.reset(
        d.t,
        ContactorInputs(False, True, m.pack_voltage_v, m.bus_voltage_v, 0.0, m.contactor_closed),
    )
    assert not ok
    assert "feedback" in why
    d.assert_cells_within_msl()


def test_lost_ems_link_idles_safely_with_one_warning_and_recovers():
    d = Drill.start()  # the site's own EMS
    p = protection(d)
    onset = d.inject(FaultKind.LINK_LOST)
    d.run(90.0)
    idle = next(c for c in d.cycles if c.gate.outcome is Outcome.SAFE_IDLE)
    # The last command arrived one cycle before the onset; the gate idles once it is older
    # than its timeout (or has expired, whichever comes first).
    gate_timeout = d.site.controller.gate.timeout_s
    assert idle.time_s <= onset - d.step_s + gate_timeout + d.step_s + EPS
    assert idle.gate.reason in (Reason.EXPIRED, Reason.NO_COMMAND)
    raised = d.raised("ems_link_lost", "warning")
    # The last command arrived one cycle before the onset; the age must exceed the timeout.
    assert onset + p.ems_link_timeout_s - d.step_s - EPS <= raised
    assert raised <= onset + p.ems_link_timeout_s + EPS
    assert d.bms.alarm_counts == {"ems_link_lost": 1}  # one warning, no storm
    assert d.alarm_codes() == {"ems_link_lost"}
    after = [c for c in d.cycles if c.time_s >= idle.time_s]
    assert all(c.contactor is ContactorState.CLOSED for c in after)  # not a fault
    assert all(c.gate.granted_w == 0.0 for c in after)
    assert all(abs(c.true_current_a) < 1.0 for c in after[2:])
    # The link comes back: commands are accepted again and the warning clears.
    d.site.twin.faults.clear(FaultKind.LINK_LOST, 0)
    back = d.t
    d.run(10.0)
    assert any(c.gate.outcome is not Outcome.SAFE_IDLE for c in d.cycles[-5:])
    assert d.cycles[-1].telemetry.alarms == ()
    assert any(
        kind == "protection" and code == "ems_link_lost:cleared" and t >= back
        for t, kind, code, _ in d.events
    )
    assert d.bms.alarm_counts == {"ems_link_lost": 1}
    d.assert_cells_within_msl()


def test_every_fault_kind_has_a_drill():
    drilled = {
        FaultKind.STUCK_CELL_VOLTAGE,
        FaultKind.OPEN_WIRE,
        FaultKind.CURRENT_SENSOR_DRIFT,
        FaultKind.TEMPERATURE_SENSOR_LOST,
        FaultKind.INTERNAL_SHORT,
        FaultKind.COOLING_FAILURE,
        FaultKind.WELDED_CONTACTOR,
        FaultKind.LINK_LOST,
    }
    assert drilled == set(FaultKind)
