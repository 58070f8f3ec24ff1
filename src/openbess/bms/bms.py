"""The BMS cycle: monitor -> estimate -> protect -> limit -> contactors -> balance -> Telemetry.

:class:`BatteryManagementSystem` is what the controller calls once per cycle. It reads only
:class:`~openbess.plant.Measurements` (never the twin's true state), so the same object runs on
real hardware. The monitor (:mod:`openbess.bms.monitor`) judges every reading first: what it
finds implausible is excluded from the extremes, the estimation and the limits, and counted by
the fault table.

The cycle runs every second on packs of a few to 100,000 cells, so numpy's per-call cost
matters more than the arithmetic: reductions are done once and shared, small arrays (a home
pack's 16 cells) are reduced in pure Python, the all-valid sensor case skips the NaN-aware
numpy functions, and the state estimation (:class:`~openbess.bms.estimator.OnlineEstimator`:
sigma-point filter, SoH, SoP, pack SoC and energy) runs in compiled loops over the cells, with
one current per string and one temperature per module. Each shortcut gives the same numbers
as the general computation it replaces (the tests in ``tests/bms`` compare them with plain
reference computations). ``benchmarks/bms_step.py`` times the whole step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from openbess.bms.balancing import Balancer, BalancingConfig
from openbess.bms.contactor import ContactorInputs, ContactorMachine, ContactorOutput
from openbess.bms.contactor import ContactorRequest as MachineRequest
from openbess.bms.defaults import BmsParams
from openbess.bms.estimator import OnlineEstimator, OnlineEstimatorConfig, PackEstimate
from openbess.bms.limits import LimitCalculator
from openbess.bms.logbook import Logbook, LogbookConfig
from openbess.bms.monitor import Monitor, MonitorResult
from openbess.bms.monitor import min_max as _min_max
from openbess.bms.protection import EventKind, Protection, ProtectionInputs, ProtectionResult
from openbess.cell.ecm import CellModel
from openbess.cell.params import CellParams
from openbess.contract import (
    Actuation,
    ContactorRequest,
    ContactorState,
    GateDecision,
    Limits,
    Telemetry,
)
from openbess.plant import Measurements

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Arrays up to this size are reduced in pure Python (numpy's per-call cost dominates).
_SMALL = 32


#: The contactor machine's request as the contract's request (same values).
_REQUEST = {r: ContactorRequest(r.value) for r in MachineRequest}


def _pack_soc(soc: FloatArray, n_strings: int) -> tuple[float, float, float, FloatArray | float]:
    """Pack SoC (mean of :func:`string_soc`), lowest and highest cell SoC, and string minima.

    The same reductions as ``string_soc(soc, n_strings).mean()``, ``soc.min()`` and
    ``soc.max()`` (bit-identical), done once; with one string on floats.
    """
    if n_strings == 1:
        z_min, z_max = _min_max(soc)
        denom = z_min + 1.0 - z_max
        return (z_min / denom if denom > 0 else 0.0), z_min, z_max, z_min
    per = soc.reshape(n_strings, -1)
    zmin = np.minimum.reduce(per, axis=1)
    zmax = np.maximum.reduce(per, axis=1)
    denom = zmin + 1.0 - zmax
    usable = np.where(denom > 0, zmin / np.where(denom > 0, denom, 1.0), 0.0)
    return (
        float(np.add.reduce(usable)) / n_strings,
        float(np.minimum.reduce(zmin)),
        float(np.maximum.reduce(zmax)),
        zmin,
    )


@dataclass(frozen=True)
class BmsSetup:
    """What the BMS knows of its battery.

    Parameters
    ----------
    cell : CellParams
        Nominal parameters of one series cell (parallel group), used by the estimator.
    n_strings : int
        Strings in parallel.
    n_series : int
        Series cells per string.
    modules_per_string : int
        Modules per string (temperature sensors are per module).
    params : BmsParams
        Protection, limit and contactor parameters.
    max_charge_power_w, max_discharge_power_w : float
        AC ratings of the converter [W].
    charge_efficiency, discharge_efficiency : float
        Converter efficiencies used to turn DC limits into AC limits [fraction].
    balancing : bool
        Passive balancing enabled.
    balancing_max_temperature_degc : float
        No balancing above this cell temperature [degC].
    bleed_resistance_ohm : float
        Balancing bleed resistor [ohm].
    estimator : OnlineEstimatorConfig
        State estimation tuning (the sigma-point filter, SoH, SoP).
    sensor_sample_period_s : float
        Time between fresh sensor samples when the measurement chain holds them between
        samples [s] (0: a fresh sample every cycle); the contactor machine waits for a sample
        taken after its command before judging the feedback.
    """

    cell: CellParams
    n_strings: int
    n_series: int
    modules_per_string: int
    params: BmsParams
    max_charge_power_w: float
    max_discharge_power_w: float
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    balancing: bool = True
    balancing_max_temperature_degc: float = 45.0
    bleed_resistance_ohm: float = 33.0
    estimator: OnlineEstimatorConfig = field(default_factory=OnlineEstimatorConfig)
    sensor_sample_period_s: float = 0.0

    @property
    def n_cells(self) -> int:
        """Number of series cells monitored."""
        return self.n_strings * self.n_series


class _SensorLayout:
    """Which module each temperature sensor belongs to, for one sensor array."""

    __slots__ = ("all_modules_covered", "counts", "module_of_sensor", "sensor_cell")

    def __init__(self, sensor_cell: npt.NDArray[np.intp], cells_per_module: int, n_mod: int):
        self.sensor_cell = sensor_cell
        self.module_of_sensor = sensor_cell // cells_per_module
        # Float counts, exactly as numpy.bincount with boolean weights gives them.
        self.counts: FloatArray = np.asarray(
            np.bincount(self.module_of_sensor, np.ones(sensor_cell.size), minlength=n_mod),
            dtype=np.float64,
        )
        self.all_modules_covered = bool(np.all(self.counts > 0))


@dataclass
class BmsEvent:
    """An event for the logbook (protection, contactor, BMS)."""

    time_s: float
    kind: str
    code: str
    severity: str
    message: str


class BatteryManagementSystem:
    """The BMS: one :meth:`update` per cycle.

    Parameters
    ----------
    setup : BmsSetup
        Battery description and parameters.
    """

    def __init__(self, setup: BmsSetup) -> None:
        self.setup = setup
        self.model = CellModel(setup.cell)
        cells_per_module = setup.n_series // setup.modules_per_string
        #: SoC, SoH and SoP of every cell (sigma-point Kalman filter) and the pack figures.
        self.estimator = OnlineEstimator(
            self.model, setup.n_strings, setup.n_series, cells_per_module, setup.estimator
        )
        #: The pack figures of the last cycle.
        self.pack_estimate: PackEstimate | None = None
        self.protection = Protection.from_params(setup.params.protection)
        self.limits = LimitCalculator(setup.params.limits)
        self.contactor = ContactorMachine(
            setup.params.contactor, sample_period_s=setup.sensor_sample_period_s
        )
        #: Plausibility of the raw readings (its ``counts`` hold the exclusions by cause).
        self.monitor = Monitor.for_pack(setup.params, setup.cell, setup.n_strings, setup.n_series)
        #: The monitor's verdict on the last sample.
        self.monitor_result: MonitorResult | None = None
        self.events: list[BmsEvent] = []
        #: Alarms raised (or escalated) so far, by code.
        self.alarm_counts: dict[str, int] = {}
        self._nominal_wh = setup.cell.capacity_ah * setup.cell.nominal_voltage_v * setup.n_cells
        #: Diagnostics and warranty logbook (EU 2023/1542 Annex VII figures).
        self.logbook = Logbook(
            LogbookConfig(
                nominal_capacity_ah=setup.cell.capacity_ah * setup.n_strings,
                nominal_energy_wh=self._nominal_wh,
                cell_voltage_min_v=setup.cell.voltage_min_v,
                cell_voltage_max_v=setup.cell.voltage_max_v,
            )
        )
        self.balancing: BoolArray = np.zeros(setup.n_cells, dtype=bool)
        chem = "lfp" if setup.cell.chemistry.upper().startswith("LFP") else "nmc"
        self.balancer = Balancer(
            BalancingConfig.for_chemistry(
                chem,
                bleed_resistance_ohm=setup.bleed_resistance_ohm,
                rest_current_a=setup.params.protection.rest_current_a,
                max_temperature_degc=setup.balancing_max_temperature_degc,
                enabled=setup.balancing,
            ),
            setup.n_strings,
            setup.n_series,
            setup.n_series // setup.modules_per_string,
        )
        self.last_time_s: float | None = None
        self.result: ProtectionResult | None = None
        #: The monitoring summary the protection evaluated last (e.g. for a reset request).
        self.protection_inputs: ProtectionInputs | None = None
        self.contactor_out: ContactorOutput | None = None
        self.contactor_inputs: ContactorInputs | None = None
        self.failed_at_s: float | None = None
        self.cell_soc: FloatArray = np.full(setup.n_cells, np.nan)
        #: Temperature the BMS attributes to each cell (its module's sensors) [degC].
        self.cell_temperature_degc: FloatArray = np.full(setup.n_cells, np.nan)
        mid = setup.cell.soc_grid.size // 2
        j = int(np.argmin(np.abs(setup.cell.temperature_grid_degc - 25.0)))
        self._r_cell_ohm = float(setup.cell.r0_ohm[j, mid] + setup.cell.rc_r_ohm[:, j, mid].sum())
        self._ones = np.ones(setup.n_cells)
        self._one_module_t = np.full(1, 25.0)
        self._n_modules = setup.n_strings * setup.modules_per_string
        self._cells_per_module = setup.n_cells // self._n_modules
        #: Sensor -> module mapping of the last read-only ``temperature_sensor_cell`` array.
        self._sensor_layout: _SensorLayout | None = None
        #: ``Telemetry.alarms`` of the last alarm tuple seen (rebuilt when the alarms change).
        self._alarm_source: tuple[tuple[str, object], ...] | None = None
        self._alarm_labels: tuple[str, ...] = ()

    # ------------------------------------------------------------------ monitoring
    def _layout(self, sensor_cell: npt.NDArray[np.intp]) -> _SensorLayout:
        layout = self._sensor_layout
        if layout is not None and layout.sensor_cell is sensor_cell:
            return layout
        layout = _SensorLayout(sensor_cell, self._cells_per_module, self._n_modules)
        # Only a read-only array can be trusted not to change under the cached mapping.
        self._sensor_layout = None if sensor_cell.flags.writeable else layout
        return layout

    def _cell_temperatures(
        self, m: Measurements, t_ok: BoolArray
    ) -> tuple[FloatArray, FloatArray, float, float, float, int]:
        """Per-cell and per-module temperatures, min / max / mean of the valid sensors, number
        invalid."""
        raw = m.cell_temperature_degc
        n_t = t_ok.size
        n_bad = n_t - int(np.count_nonzero(t_ok))
        if n_bad == 0 and n_t and raw.dtype == np.float64:
            total = float(np.add.reduce(raw))
            if math.isfinite(total):
                # Every sensor valid and finite: the general path below reduces to this (same
                # sums in the same order, so bit-identical results).
                layout = self._layout(m.temperature_sensor_cell)
                mean_all = total / n_t
                t_min, t_max = _min_max(raw)
                if self._n_modules == 1 and n_t <= _SMALL:
                    # One module: numpy.bincount's sum is this sequential one.
                    acc = 0.0
                    for x in raw.tolist():
                        acc += x
                    mod_one = self._one_module_t
                    mod_one[0] = acc / layout.counts[0]
                    cell_t = self._ones * mod_one[0]
                    return cell_t, mod_one, t_min, t_max, mean_all, 0
                sums = np.bincount(layout.module_of_sensor, raw, minlength=self._n_modules)
                if layout.all_modules_covered:
                    mod_t = sums / layout.counts
                else:
                    cov = layout.counts
                    mod_t = np.where(cov > 0, sums / np.maximum(cov, 1), mean_all)
                return mod_t.repeat(self._cells_per_module), mod_t, t_min, t_max, mean_all, 0
        t = np.where(t_ok, raw, np.nan)
        if not np.any(t_ok):
            nan = math.nan
            return (
                np.full(self.setup.n_cells, 25.0),
                np.full(self._n_modules, 25.0),
                nan,
                nan,
                nan,
                n_bad,
            )
        # Each module's cells take the mean of the module's valid sensors (pack mean if none).
        n_mod = self._n_modules
        per_mod = self._cells_per_module
        module_of_sensor = m.temperature_sensor_cell // per_mod
        sums = np.bincount(module_of_sensor, np.nan_to_num(t), minlength=n_mod)
        counts = np.bincount(module_of_sensor, t_ok, minlength=n_mod)
        mean_all = float(np.nanmean(t))
        mod_t = np.where(counts > 0, sums / np.maximum(counts, 1), mean_all)
        return (
            np.repeat(mod_t, per_mod),
            mod_t,
            float(np.nanmin(t)),
            float(np.nanmax(t)),
            mean_all,
            n_bad,
        )

    def update(
        self,
        now_s: float,
        measurements: Measurements,
        last_decision: GateDecision,
        ems_link_age_s: float = math.inf,
    ) -> tuple[Telemetry, Limits]:
        """Run the BMS phase of one cycle.

        Parameters
        ----------
        now_s : float
            Cycle time [s, Unix UTC].
        measurements : Measurements
            Sensor snapshot.
        last_decision : GateDecision
            The gate's latest decision (carried back in the Telemetry).
        ems_link_age_s : float
            Time since the last valid EMS command [s].

        Returns
        -------
        tuple of (Telemetry, Limits)
            The Telemetry for the EMS and the limits for the gate.
        """
        s = self.setup
        m = measurements
        dt_s = 0.0 if self.last_time_s is None else max(now_s - self.last_time_s, 0.0)
        self.last_time_s = now_s

        # Monitoring: plausibility first, then the summary (invalid readings excluded,
        # counted). No current can flow when the contactor was commanded open (precharge relay
        # too) and its auxiliary contact reports open.
        prev = self.contactor_out
        expect_zero = not m.contactor_closed and (
            prev is None or not (prev.main_close or prev.precharge_close)
        )
        mon = self.monitor.check(now_s, m, expect_zero)
        self.monitor_result = mon
        v = m.cell_voltage_v
        v_ok = mon.cell_voltage_valid
        n_v = v.size
        n_bad_v = mon.n_invalid_voltage + mon.n_stuck_voltage
        if n_bad_v == 0 and math.isfinite(mon.voltage_sum_v):
            # The monitor's reductions: numpy.add.reduce (ndarray.sum; mean = sum / n) and
            # exact min/max.
            sum_v, v_min, v_max = mon.voltage_sum_v, mon.voltage_min_v, mon.voltage_max_v
            v_avg = sum_v / n_v
        else:
            if n_bad_v < n_v:
                vv = v[v_ok] if n_bad_v else v
                v_min, v_max, v_avg = float(vv.min()), float(vv.max()), float(vv.mean())
            else:
                v_min = v_max = v_avg = math.nan
            sum_v = float(v.sum()) if n_bad_v == 0 else math.nan
        cell_t, mod_t, t_min, t_max, t_avg, n_bad_t = self._cell_temperatures(
            m, mon.temperature_valid
        )
        self.cell_temperature_degc = cell_t
        i_ok = mon.string_current_valid
        i_raw = m.string_current_a
        current_valid = mon.current_valid
        plausible = current_valid and not mon.current_implausible
        if plausible and i_ok is m.string_current_valid and i_raw.dtype == np.float64:
            i_str = i_raw  # np.where(i_ok, i, 0.0) would only copy it
        else:
            i_str = np.where(i_ok, i_raw, 0.0)
        pack_i = float(i_str[0]) if i_str.size == 1 else float(np.add.reduce(i_str))

        # Estimation: the sigma-point filter on every cell (the balancing bleed of the last
        # interval is counted as a known internal current; with the contactor open and
        # commanded open the measured current is a reading of the sensor offset).
        est = self.estimator
        bleed = self.balancer.bleed_current_a if self.balancer.bleeding else None
        self.cell_soc = est.update(
            now_s, i_str, v, v_ok, mod_t, zero_current=expect_zero, bleed_current_a=bleed
        )
        estimated = est.initialised
        if estimated:
            pack = est.pack()
            soc, z_min, z_max = pack.soc, pack.soc_cell_min, pack.soc_cell_max
        else:
            pack = None
            soc, z_min, z_max, _ = _pack_soc(np.zeros(s.n_cells), s.n_strings)
        self.pack_estimate = pack
        soh = est.soh

        # Protection.
        inputs = ProtectionInputs(
            cell_voltage_max_v=v_max,
            cell_voltage_min_v=v_min,
            temperature_max_degc=t_max,
            temperature_min_degc=t_min,
            pack_current_a=pack_i if plausible else math.nan,
            pack_voltage_v=m.pack_voltage_v,
            sum_cell_voltage_v=mon.string_voltage_sum_v,
            ems_link_age_s=ems_link_age_s,
            n_invalid_voltage=mon.n_invalid_voltage,
            n_invalid_temperature=n_bad_t,
            current_valid=current_valid,
            n_stuck_voltage=mon.n_stuck_voltage,
            current_implausible=mon.current_implausible,
        )
        self.protection_inputs = inputs
        result = self.protection.evaluate(now_s, inputs)
        self.result = result
        for ev in result.events:
            sev = ev.tier.severity if ev.tier is not None else "info"
            self.events.append(
                BmsEvent(ev.time_s, "protection", f"{ev.code}:{ev.kind.value}", sev, ev.message)
            )
            if ev.kind is EventKind.RAISED:
                self.alarm_counts[ev.code] = self.alarm_counts.get(ev.code, 0) + 1

        # Current limits (derating), then contactors.
        was_closed = self.contactor.state is ContactorState.CLOSED
        chg_a, dis_a = self.limits.update(
            now_s,
            v_max,
            v_min,
            t_min,
            t_max,
            z_max if estimated else math.nan,
            z_min if estimated else math.nan,
            allow_charge=result.allow_charge and estimated and was_closed,
            allow_discharge=result.allow_discharge and estimated and was_closed,
        )
        close_request = not result.open_contactors and estimated and self.failed_at_s is None
        c_in = ContactorInputs(
            close_request=close_request,
            trip=result.open_contactors,
            pack_voltage_v=m.pack_voltage_v,
            bus_voltage_v=m.bus_voltage_v,
            # An untrusted current (e.g. read through the open contactor: an offset) must
            # not make the machine call the contactor welded; its feedback decides.
            current_a=pack_i if mon.current_trusted else math.nan,
            feedback_closed=m.contactor_closed,
        )
        self.contactor_inputs = c_in
        c_out = self.contactor.step(now_s, c_in)
        self.contactor_out = c_out
        for cev in c_out.events:
            sev = "error" if "welded" in cev.code or "fail" in cev.code else "info"
            self.events.append(BmsEvent(cev.time_s, "contactor", cev.code, sev, cev.message))
        closed = c_out.state is ContactorState.CLOSED and not c_out.needs_zero_current
        if not closed:
            chg_a = dis_a = 0.0

        # AC power limits from the DC current limits at the voltage expected under that current.
        r_pack = self._r_cell_ohm * s.n_series / s.n_strings
        pv = m.pack_voltage_v if math.isfinite(m.pack_voltage_v) else sum_v / s.n_strings
        v_dis = max(pv - r_pack * (dis_a - pack_i), 0.0) if math.isfinite(pv) else 0.0
        v_chg = max(pv + r_pack * (chg_a + pack_i), 0.0) if math.isfinite(pv) else 0.0
        dis_w = min(s.max_discharge_power_w, dis_a * v_dis * s.discharge_efficiency)
        chg_w = min(s.max_charge_power_w, chg_a * v_chg / s.charge_efficiency)
        tripped = result.open_contactors or c_out.state is ContactorState.FAULT
        limits = Limits(
            charge_current_a=chg_a,
            discharge_current_a=dis_a,
            charge_power_w=chg_w,
            discharge_power_w=dis_w,
            contactor_closed=closed,
            tripped=tripped,
        )

        # Passive balancing on SoC imbalance, at rest or while charging.
        self.balancing = self.balancer.update(
            now_s,
            dt_s,
            self.cell_soc,
            self.estimator.capacity_ah,
            v,
            v_ok,
            pack_i,
            t_max,
            closed,
        )
        n_balancing = self.balancer.n_balancing
        for bev in self.balancer.pop_events():
            self.events.append(BmsEvent(bev.time_s, "balancing", bev.code, "info", bev.message))
        if result.alarms is not self._alarm_source:
            self._alarm_source = result.alarms
            self._alarm_labels = result.labels()

        # capacity_wh stays the nominal energy times the capacity SoH (a rating, as the
        # interfaces publish it); the usable energy of the moment is in extra.
        capacity_wh = self._nominal_wh * soh
        if pack is not None:
            energy_wh = pack.energy_available_wh
            extra = self._extra(pack, est.power_limits(chg_a, dis_a))
        else:
            energy_wh = soc * capacity_wh
            extra = {}
        telemetry = Telemetry(
            time_s=now_s,
            soc=soc,
            soc_cell_min=z_min,
            soc_cell_max=z_max,
            soh=soh,
            energy_available_wh=energy_wh,
            capacity_wh=capacity_wh,
            pack_voltage_v=m.pack_voltage_v,
            pack_current_a=pack_i,
            cell_voltage_min_v=v_min,
            cell_voltage_max_v=v_max,
            cell_voltage_avg_v=v_avg,
            temperature_min_degc=t_min,
            temperature_max_degc=t_max,
            temperature_avg_degc=t_avg,
            charge_current_limit_a=chg_a,
            discharge_current_limit_a=dis_a,
            charge_power_limit_w=chg_w,
            discharge_power_limit_w=dis_w,
            contactor=c_out.state,
            alarms=self._alarm_labels,
            balancing_cells=n_balancing,
            gate=last_decision,
            extra=extra,
        )
        nan = math.nan
        known = estimated
        self.logbook.update(
            now_s,
            dt_s,
            pack_i,
            m.pack_voltage_v,
            soc if known else nan,
            z_min if known else nan,
            z_max if known else nan,
            v_min,
            v_max,
            t_min,
            t_max,
            t_avg,
            soh,
            soh * est.capacity_nominal_ah * s.n_strings,
            alarms=self._alarm_labels,
            balancing_cells=n_balancing,
        )
        for lev in self.logbook.pop_events():
            self.events.append(BmsEvent(lev.time_s, lev.kind, lev.code, lev.severity, lev.message))
        return telemetry, limits

    @staticmethod
    def _extra(pack: PackEstimate, sop: dict[str, float]) -> dict[str, float]:
        """``Telemetry.extra``: uncertainties, SoH details and the state of power."""
        extra = {
            "soc_std": pack.soc_std,
            "soc_cell_std_max": pack.soc_cell_std_max,
            "soe_wh": pack.energy_available_wh,
            "energy_chargeable_wh": pack.energy_chargeable_wh,
            "energy_usable_wh": pack.energy_available_wh + pack.energy_chargeable_wh,
            "capacity_usable_ah": pack.capacity_ah,
            "soh_capacity": pack.soh,
            "soh_capacity_std": pack.soh_std,
            "resistance_ohm": pack.resistance_ohm,
            "resistance_std_ohm": pack.resistance_std_ohm,
            "soh_resistance_growth": pack.resistance_growth,
            "current_offset_a": pack.current_offset_a,
            "current_offset_std_a": pack.current_offset_std_a,
        }
        extra.update(sop)
        return extra

    def actuation(self, gated: Actuation) -> Actuation:
        """Add the contactor request and the balancing mask to the gated actuation.

        Parameters
        ----------
        gated : Actuation
            The gate's output.

        Returns
        -------
        Actuation
            What goes to the plant.
        """
        out = self.contactor_out
        if out is None:
            request, setpoint = ContactorRequest.OPEN, gated.ac_power_setpoint_w
        else:
            request = _REQUEST[out.request]
            setpoint = 0.0 if out.needs_zero_current else gated.ac_power_setpoint_w
        return type(gated)(
            ac_power_setpoint_w=setpoint,
            charge_current_limit_a=gated.charge_current_limit_a,
            discharge_current_limit_a=gated.discharge_current_limit_a,
            contactor=request,
            balancing=self.balancing,
        )

    def safe_state(self, now_s: float, error: BaseException) -> None:
        """Record a failure of the BMS phase: no close request until restarted.

        Parameters
        ----------
        now_s : float
            Time [s, Unix UTC].
        error : BaseException
            What failed.
        """
        self.failed_at_s = now_s
        self.events.append(BmsEvent(now_s, "bms", "bms_exception", "error", repr(error)))

    def latched(self) -> tuple[str, ...]:
        """Faults that need an explicit reset: latched protection rows and a contactor fault."""
        codes = list(self.protection.latched)
        if self.contactor.state is ContactorState.FAULT:
            codes.append(self.contactor.fault_code or "contactor_fault")
        return tuple(codes)

    def reset_fault(self, code: str, now_s: float) -> tuple[bool, str]:
        """Reset a latched fault (``all``: every one), refused while its cause persists.

        Parameters
        ----------
        code : str
            Alarm code (as in :meth:`latched`), or ``all``.
        now_s : float
            Time of the request [s, Unix UTC].

        Returns
        -------
        ok : bool
            True if every requested fault was released.
        message : str
            What was done, or why not (naming the fault and the value that persists).
        """
        latched = self.latched()
        if not latched:
            return False, "no latched fault"
        todo = latched if code == "all" else (code,)
        if code != "all" and code not in latched:
            return False, f"{code} is not latched (latched: {', '.join(latched)})"
        ok_all, messages = True, []
        for c in todo:
            if c in self.protection.latched:
                if self.protection_inputs is None:
                    ok, msg = False, f"{c}: no measurement yet"
                else:
                    ok, msg = self.protection.reset(c, now_s, self.protection_inputs)
            elif self.contactor_inputs is None:
                ok, msg = False, f"{c}: no measurement yet"
            else:
                ok, msg = self.contactor.reset(now_s, self.contactor_inputs)
            ok_all = ok_all and ok
            messages.append(msg)
            self.events.append(BmsEvent(now_s, "reset", c, "info" if ok else "warning", msg))
        return ok_all, "; ".join(messages)

    def pop_events(self) -> list[BmsEvent]:
        """Return and clear the events gathered since the last call."""
        ev, self.events = self.events, []
        return ev
