"""The BMS cycle: monitor -> estimate -> protect -> limit -> contactors -> balance -> Telemetry.

:class:`BatteryManagementSystem` is what the controller calls once per cycle. It reads only
:class:`~openbess.plant.Measurements` (never the twin's true state), so the same object runs on
real hardware.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from openbess.bms.contactor import ContactorInputs, ContactorMachine, ContactorOutput
from openbess.bms.defaults import BmsParams
from openbess.bms.estimator import SocEstimator, string_soc
from openbess.bms.limits import LimitCalculator
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
    balancing_threshold_soc : float
        SoC above the string's lowest cell that starts bleeding a cell [fraction].
    balancing_max_temperature_degc : float
        No balancing above this cell temperature [degC].
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
    balancing_threshold_soc: float = 0.005
    balancing_max_temperature_degc: float = 45.0

    @property
    def n_cells(self) -> int:
        """Number of series cells monitored."""
        return self.n_strings * self.n_series


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
        self.estimator = SocEstimator(self.model, setup.n_cells)
        self.protection = Protection.from_params(setup.params.protection)
        self.limits = LimitCalculator(setup.params.limits)
        self.contactor = ContactorMachine(setup.params.contactor)
        self.events: list[BmsEvent] = []
        #: Alarms raised (or escalated) so far, by code.
        self.alarm_counts: dict[str, int] = {}
        self.balancing: BoolArray = np.zeros(setup.n_cells, dtype=bool)
        self.last_time_s: float | None = None
        self.result: ProtectionResult | None = None
        self.contactor_out: ContactorOutput | None = None
        self.failed_at_s: float | None = None
        self.cell_soc: FloatArray = np.full(setup.n_cells, np.nan)
        #: Temperature the BMS attributes to each cell (its module's sensors) [degC].
        self.cell_temperature_degc: FloatArray = np.full(setup.n_cells, np.nan)
        mid = setup.cell.soc_grid.size // 2
        j = int(np.argmin(np.abs(setup.cell.temperature_grid_degc - 25.0)))
        self._r_cell_ohm = float(setup.cell.r0_ohm[j, mid] + setup.cell.rc_r_ohm[:, j, mid].sum())
        self._nominal_wh = setup.cell.capacity_ah * setup.cell.nominal_voltage_v * setup.n_cells

    # ------------------------------------------------------------------ monitoring
    def _cell_temperatures(self, m: Measurements) -> tuple[FloatArray, float, float, float]:
        t = np.where(m.cell_temperature_valid, m.cell_temperature_degc, np.nan)
        if not np.any(m.cell_temperature_valid):
            nan = math.nan
            return np.full(self.setup.n_cells, 25.0), nan, nan, nan
        # Each module's cells take the mean of the module's valid sensors (pack mean if none).
        n_mod = self.setup.n_strings * self.setup.modules_per_string
        per_mod = self.setup.n_cells // n_mod
        module_of_sensor = m.temperature_sensor_cell // per_mod
        sums = np.bincount(module_of_sensor, np.nan_to_num(t), minlength=n_mod)
        counts = np.bincount(module_of_sensor, m.cell_temperature_valid, minlength=n_mod)
        mean_all = float(np.nanmean(t))
        mod_t = np.where(counts > 0, sums / np.maximum(counts, 1), mean_all)
        return (
            np.repeat(mod_t, per_mod),
            float(np.nanmin(t)),
            float(np.nanmax(t)),
            mean_all,
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

        # Monitoring summary (invalid readings excluded, counted).
        v = m.cell_voltage_v
        v_ok = m.cell_voltage_valid
        n_bad_v = int(v.size - np.count_nonzero(v_ok))
        if n_bad_v < v.size:
            vv = v[v_ok] if n_bad_v else v
            v_min, v_max, v_avg = float(vv.min()), float(vv.max()), float(vv.mean())
        else:
            v_min = v_max = v_avg = math.nan
        sum_v = float(v.sum()) if n_bad_v == 0 else math.nan
        cell_t, t_min, t_max, t_avg = self._cell_temperatures(m)
        self.cell_temperature_degc = cell_t
        i_ok = m.string_current_valid
        current_valid = bool(np.all(i_ok))
        i_str = np.where(i_ok, m.string_current_a, 0.0)
        pack_i = float(i_str.sum())

        # Estimation.
        cell_i = np.repeat(i_str, s.n_series)
        self.cell_soc = self.estimator.update(dt_s, cell_i, v, v_ok, cell_t)
        soc_cells = np.nan_to_num(self.cell_soc, nan=0.0)
        soc = float(string_soc(soc_cells, s.n_strings).mean())
        soh = self.estimator.soh

        # Protection.
        inputs = ProtectionInputs(
            cell_voltage_max_v=v_max,
            cell_voltage_min_v=v_min,
            temperature_max_degc=t_max,
            temperature_min_degc=t_min,
            pack_current_a=pack_i if current_valid else math.nan,
            pack_voltage_v=m.pack_voltage_v,
            sum_cell_voltage_v=sum_v / s.n_strings if math.isfinite(sum_v) else math.nan,
            ems_link_age_s=ems_link_age_s,
            n_invalid_voltage=n_bad_v,
            n_invalid_temperature=int(m.cell_temperature_valid.size)
            - int(np.count_nonzero(m.cell_temperature_valid)),
            current_valid=current_valid,
        )
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
        estimated = self.estimator.initialised
        was_closed = self.contactor.state is ContactorState.CLOSED
        chg_a, dis_a = self.limits.update(
            now_s,
            v_max,
            v_min,
            t_min,
            t_max,
            float(soc_cells.max()) if estimated else math.nan,
            float(soc_cells.min()) if estimated else math.nan,
            allow_charge=result.allow_charge and estimated and was_closed,
            allow_discharge=result.allow_discharge and estimated and was_closed,
        )
        close_request = not result.open_contactors and estimated and self.failed_at_s is None
        c_out = self.contactor.step(
            now_s,
            ContactorInputs(
                close_request=close_request,
                trip=result.open_contactors,
                pack_voltage_v=m.pack_voltage_v,
                bus_voltage_v=m.bus_voltage_v,
                current_a=pack_i if current_valid else math.nan,
                feedback_closed=m.contactor_closed,
            ),
        )
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
        self.balancing = self._balancing(soc_cells, pack_i, t_max, estimated, closed)

        capacity_wh = self._nominal_wh * soh
        telemetry = Telemetry(
            time_s=now_s,
            soc=soc,
            soc_cell_min=float(soc_cells.min()),
            soc_cell_max=float(soc_cells.max()),
            soh=soh,
            energy_available_wh=soc * capacity_wh,
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
            alarms=result.labels(),
            balancing_cells=int(np.count_nonzero(self.balancing)),
            gate=last_decision,
        )
        return telemetry, limits

    def _balancing(
        self, soc: FloatArray, pack_i: float, t_max: float, estimated: bool, closed: bool
    ) -> BoolArray:
        s = self.setup
        if not (s.balancing and estimated) or not math.isfinite(t_max):
            return np.zeros(s.n_cells, dtype=bool)
        rest_a = s.params.protection.rest_current_a
        if t_max > s.balancing_max_temperature_degc or (closed and pack_i > rest_a):
            return np.zeros(s.n_cells, dtype=bool)
        per = soc.reshape(s.n_strings, s.n_series)
        floor = per.min(axis=1, keepdims=True)
        out: BoolArray = (per - floor > s.balancing_threshold_soc).reshape(-1)
        return out

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
        request = out.request if out is not None else ContactorRequest.OPEN
        setpoint = gated.ac_power_setpoint_w
        if out is not None and out.needs_zero_current:
            setpoint = 0.0
        return replace(
            gated,
            ac_power_setpoint_w=setpoint,
            contactor=ContactorRequest(request.value),
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

    def pop_events(self) -> list[BmsEvent]:
        """Return and clear the events gathered since the last call."""
        ev, self.events = self.events, []
        return ev
