"""The whole site as a digital twin: pack, sensors, contactor, converter, PV, load, grid.

:class:`SiteTwin` implements :class:`openbess.plant.Plant`. Each :meth:`SiteTwin.advance_to`
integrates the interval since the last call with the actuation written last (zero-order hold):
the converter turns the AC setpoint into a DC current within the BMS's current caps, the pack
integrates its cells, the site meter balances load, PV and battery at the grid connection, and
every energy flow is accumulated so that the run's energy balance can be checked
(:meth:`SiteTwin.energy_kpis`).

Load, PV and prices are sampled on a fixed grid (``series_step_s``) one day at a time, so a step
costs a lookup, not a model evaluation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from openbess.cell.params import CellParams, load_cell_params, scale_to_capacity
from openbess.config import SiteConfig
from openbess.contract import Actuation, ContactorRequest
from openbess.errors import ConfigError
from openbess.plant import Measurements, SiteMeasurements
from openbess.twin.contactor import Contactor, ContactorCommand
from openbess.twin.converter import Converter, ConverterParams
from openbess.twin.faults import FaultInjector
from openbess.twin.grid import GridConnection, Tariff
from openbess.twin.load import LoadModel
from openbess.twin.pack import CoolingConfig, Pack, PackTopology, SpreadConfig
from openbess.twin.pv import PvModel, PvPlant
from openbess.twin.sensors import SensorConfig, Sensors

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
DAY_S = 86400.0
#: Simulated time between two ageing updates of the site's pack [s]. Ageing is slow (about a per
#: cent a month); over 30 days of ``home`` the state of health differs by 1.3e-5 from 60 s
#: windows, and the hourly SoC samples still resolve a site's charge/discharge half-cycles.
AGEING_WINDOW_S = 3600.0
#: Simulated time between two thermal updates of the site's pack [s] (steps of at least this
#: length update every step; shorter ones accumulate their heat, exactly).
THERMAL_INTERVAL_S = 10.0

_CONTACTOR_COMMAND = {req: ContactorCommand(req.value) for req in ContactorRequest}


def cell_params_for(config: SiteConfig) -> CellParams:
    """The parameters of one physical cell of the site's battery (scaled to its capacity).

    Parameters
    ----------
    config : SiteConfig
        Site configuration.

    Returns
    -------
    CellParams
        Cell parameters.
    """
    params = load_cell_params(config.battery.cell)
    if config.battery.cell_capacity_ah is not None:
        params = scale_to_capacity(params, config.battery.cell_capacity_ah)
    return params


def topology_for(config: SiteConfig, cell: CellParams) -> PackTopology:
    """Pack layout; the series count follows ``capacity_wh`` when not given.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    cell : CellParams
        One physical cell.

    Returns
    -------
    PackTopology
        The layout.

    Raises
    ------
    ConfigError
        If neither ``cells_series_per_module`` nor ``capacity_wh`` is given.
    """
    b = config.battery
    series = b.cells_series_per_module
    if series is None:
        if b.capacity_wh is None:
            raise ConfigError(
                "battery: give cells_series_per_module or capacity_wh to size the pack"
            )
        per_cell_wh = cell.capacity_ah * cell.nominal_voltage_v * b.cells_parallel
        series = max(1, round(b.capacity_wh / (per_cell_wh * b.n_strings * b.modules_per_string)))
    return PackTopology(b.n_strings, b.modules_per_string, series, b.cells_parallel)


class _DailySeries:
    """Load, PV and prices sampled one day at a time on a fixed grid."""

    def __init__(self, pv: PvModel | None, load: LoadModel, tariff: Tariff, step_s: float) -> None:
        self.pv = pv
        self.load = load
        self.tariff = tariff
        self.step_s = step_s
        self._day_start = math.nan
        self._arrays: tuple[FloatArray, FloatArray, FloatArray, FloatArray] | None = None

    def _fill(self, day_start: float) -> None:
        times = day_start + np.arange(0.0, DAY_S + self.step_s, self.step_s)
        pv = self.pv.power_w(times) if self.pv is not None else np.zeros(times.size)
        load = self.load.power_w(times)
        imp, exp = self.tariff.prices(times)
        self._arrays = (
            np.asarray(load, dtype=np.float64),
            np.asarray(pv, dtype=np.float64),
            np.asarray(imp, dtype=np.float64),
            np.asarray(exp, dtype=np.float64),
        )
        self._day_start = day_start

    def at(self, time_s: float) -> tuple[float, float, float, float]:
        """Load [W], PV [W], import and export prices [EUR/kWh] at ``time_s``."""
        day = math.floor(time_s / DAY_S) * DAY_S
        if day != self._day_start or self._arrays is None:
            self._fill(day)
        k = int((time_s - day) // self.step_s)
        a = self._arrays
        if a is None:  # pragma: no cover - filled above
            raise RuntimeError("series not filled")
        return float(a[0][k]), float(a[1][k]), float(a[2][k]), float(a[3][k])


@dataclass
class EnergyCounters:
    """Energy and money flows accumulated over a run [J] and [EUR]."""

    ac_charged_j: float = 0.0
    ac_discharged_j: float = 0.0
    converter_loss_j: float = 0.0
    grid_import_j: float = 0.0
    grid_export_j: float = 0.0
    pv_j: float = 0.0
    pv_curtailed_j: float = 0.0
    load_j: float = 0.0
    cost_eur: float = 0.0
    baseline_cost_eur: float = 0.0
    baseline_import_j: float = 0.0
    baseline_export_j: float = 0.0
    peak_import_w: float = 0.0
    baseline_peak_import_w: float = 0.0
    duration_s: float = 0.0


class SiteTwin:
    """Digital twin of a battery site (implements :class:`openbess.plant.Plant`).

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    start_s : float
        Start time [s, Unix UTC].
    series_step_s : float
        Resolution of the load/PV/price lookups [s].
    """

    def __init__(self, config: SiteConfig, start_s: float, series_step_s: float = 60.0) -> None:
        self.config = config
        b = config.battery
        self.cell = cell_params_for(config)
        self.topology = topology_for(config, self.cell)
        self.faults = FaultInjector.for_topology(
            self.topology, b.sensors.temperature_sensors_per_module * self.topology.n_modules
        )
        sp = b.spread
        self.pack = Pack(
            self.cell,
            self.topology,
            SpreadConfig(
                capacity_rel_std=sp.capacity_rel_std,
                resistance_rel_std=sp.resistance_rel_std,
                self_discharge_per_day_mean=sp.self_discharge_per_day_mean,
                self_discharge_rel_std=sp.self_discharge_rel_std,
                initial_soc_std=sp.initial_soc_std,
                seed=sp.seed,
            ),
            CoolingConfig(
                coolant_degc=b.thermal.coolant_degc,
                conductance_scale=b.thermal.conductance_scale,
            ),
            initial_soc=b.initial_soc,
            ambient_degc=b.thermal.ambient_degc,
            faults=self.faults,
            time_s=start_s,
            ageing_window_s=AGEING_WINDOW_S,
            thermal_interval_s=THERMAL_INTERVAL_S,
        )
        se = b.sensors
        self.sensors = Sensors(
            SensorConfig(
                voltage_noise_v=se.voltage_noise_v,
                voltage_offset_v=se.voltage_offset_v,
                voltage_quantum_v=se.voltage_quantum_v,
                temperature_noise_degc=se.temperature_noise_degc,
                temperature_quantum_degc=se.temperature_quantum_degc,
                current_noise_a=se.current_noise_a,
                current_offset_a=se.current_offset_a,
                current_gain_error=se.current_gain_error,
                sample_period_s=se.sample_period_s,
                temperature_sensors_per_module=se.temperature_sensors_per_module,
                seed=se.seed,
            ),
            self.topology,
            self.faults,
        )
        self.contactor = Contactor(faults=self.faults)
        rated = max(b.max_charge_power_w, b.max_discharge_power_w)
        c = config.converter
        typical = ConverterParams.typical(
            rated,
            ramp_rate_w_per_s=c.ramp_w_per_s if c.ramp_w_per_s is not None else math.inf,
            standby_w=c.standby_w,
        )
        self.converter_params = ConverterParams(
            max_charge_power_w=b.max_charge_power_w,
            max_discharge_power_w=b.max_discharge_power_w,
            no_load_loss_w=typical.no_load_loss_w,
            linear_loss_fraction=typical.linear_loss_fraction,
            quadratic_loss_per_w=typical.quadratic_loss_per_w,
            ramp_rate_w_per_s=typical.ramp_rate_w_per_s,
            standby_w=typical.standby_w,
        )
        self.converter = Converter(self.converter_params)
        pv_cfg = config.pv
        pv: PvModel | None = None
        if pv_cfg.enabled and pv_cfg.peak_power_w > 0:
            plant = PvPlant(
                pv_cfg.peak_power_w,
                pv_cfg.inverter_ac_w if pv_cfg.inverter_ac_w is not None else pv_cfg.peak_power_w,
                tilt_deg=pv_cfg.tilt_deg,
                azimuth_deg=pv_cfg.azimuth_deg,
                latitude_deg=config.latitude_deg,
                longitude_deg=config.longitude_deg,
                altitude_m=config.altitude_m,
            )
            pv = PvModel(
                plant, source="measured" if pv_cfg.source == "household" else "clearsky_index"
            )
        self.load = self._load_model()
        g = config.grid
        self.tariff = Tariff.for_grid(config.grid)
        self.grid = GridConnection(g.max_import_w, g.max_export_w)
        self.series = _DailySeries(pv, self.load, self.tariff, series_step_s)
        self.time_s = float(start_s)
        self.actuation = Actuation(0.0, 0.0, 0.0, contactor=ContactorRequest.OPEN)
        self.battery_ac_w = 0.0
        self.grid_w = 0.0
        self.pv_w = 0.0
        self.load_w = 0.0
        self.counters = EnergyCounters()
        #: Chemical energy stored in the pack at the start [J].
        self.stored_start_j = self.pack.stored_energy_j()
        t_min, t_max = self.pack.cell_temperature_range_degc
        self.cell_temperature_max_seen_degc = t_max
        self.cell_temperature_min_seen_degc = t_min
        self._ambient_degc = float(b.thermal.ambient_degc)
        self._balancing_enabled = bool(config.bms.balancing)
        self._bleed_resistance_ohm = float(config.bms.bleed_resistance_ohm)
        self._refresh_meter(self.time_s)

    def _load_model(self) -> LoadModel:
        lc = self.config.load
        annual_wh = lc.annual_energy_kwh * 1000.0 if lc.annual_energy_kwh else None
        if lc.source == "household":
            model = (
                LoadModel.household()
                if annual_wh is None
                else LoadModel.household(annual_energy_wh=annual_wh)
            )
        elif lc.source == "commercial":
            model = LoadModel.commercial(annual_wh if annual_wh is not None else 400e6)
        else:
            model = LoadModel.from_csv(lc.source, "load_w")
        return model

    # -- Plant protocol -----------------------------------------------------------------------
    def _refresh_meter(self, time_s: float) -> None:
        load, pv, imp, exp = self.series.at(time_s)
        self.load_w, self.pv_w = load, pv
        self.import_price, self.export_price = imp, exp
        self.grid_w = load - pv - self.battery_ac_w

    def advance_to(self, time_s: float) -> None:
        """Integrate the site from its present time to ``time_s`` (no-op if not later).

        Parameters
        ----------
        time_s : float
            Target time [s, Unix UTC].
        """
        dt = time_s - self.time_s
        if dt <= 0:
            return
        act = self.actuation
        load, pv, imp, exp = self.series.at(self.time_s)
        pack = self.pack
        e_v, r_ohm = pack.thevenin()
        current_a, _, loss_w, _ = self.converter.step(
            act.ac_power_setpoint_w,
            act.charge_current_limit_a,
            act.discharge_current_limit_a,
            self.contactor.conducting,
            e_v,
            r_ohm,
            dt,
        )
        current_a = float(current_a)
        loss_w = float(loss_w)
        balancing = act.balancing if self._balancing_enabled else None
        step = pack.step(
            current_a,
            dt,
            self._ambient_degc,
            balancing,
            self._bleed_resistance_ohm,
            time_s=self.time_s,
        )
        self.contactor.step(dt, step.pack_voltage_v, current_a)
        # The AC side sees the pack's true DC energy minus the converter loss.
        batt_ac_w = step.dc_energy_j / dt - loss_w
        grid_w, pv_used = self.grid.balance_w(load, pv, batt_ac_w)
        base_grid_w, _ = self.grid.balance_w(load, pv, 0.0)
        c = self.counters
        if batt_ac_w >= 0:
            c.ac_discharged_j += batt_ac_w * dt
        else:
            c.ac_charged_j -= batt_ac_w * dt
        c.converter_loss_j += loss_w * dt
        c.load_j += load * dt
        c.pv_j += pv_used * dt
        c.pv_curtailed_j += (pv - pv_used) * dt
        hours = dt / 3600.0
        if grid_w >= 0:
            c.grid_import_j += grid_w * dt
            c.cost_eur += grid_w / 1000.0 * hours * imp
        else:
            c.grid_export_j -= grid_w * dt
            c.cost_eur += grid_w / 1000.0 * hours * exp
        if base_grid_w >= 0:
            c.baseline_import_j += base_grid_w * dt
            c.baseline_cost_eur += base_grid_w / 1000.0 * hours * imp
        else:
            c.baseline_export_j -= base_grid_w * dt
            c.baseline_cost_eur += base_grid_w / 1000.0 * hours * exp
        if grid_w > c.peak_import_w:
            c.peak_import_w = grid_w
        if base_grid_w > c.baseline_peak_import_w:
            c.baseline_peak_import_w = base_grid_w
        c.duration_s += dt
        t_min, t_max = pack.cell_temperature_range_degc
        if t_max > self.cell_temperature_max_seen_degc:
            self.cell_temperature_max_seen_degc = t_max
        if t_min < self.cell_temperature_min_seen_degc:
            self.cell_temperature_min_seen_degc = t_min
        self.time_s = float(time_s)
        self.battery_ac_w = batt_ac_w
        self.load_w, self.pv_w, self.grid_w = load, pv_used, grid_w
        self.import_price, self.export_price = imp, exp

    def read(self) -> tuple[Measurements, SiteMeasurements]:
        """Sensors and meters now.

        Returns
        -------
        tuple of (Measurements, SiteMeasurements)
            The BMS's and the EMS's inputs.
        """
        meas = self.sensors.read(self.pack, self.contactor, self.time_s)
        site = SiteMeasurements(
            time_s=self.time_s,
            grid_power_w=self.grid_w,
            pv_power_w=self.pv_w,
            load_power_w=self.load_w,
            battery_ac_power_w=self.battery_ac_w,
            import_price_eur_per_kwh=self.import_price,
            export_price_eur_per_kwh=self.export_price,
        )
        return meas, site

    def write(self, actuation: Actuation) -> None:
        """Take the actuation for the next interval; command the contactor circuit.

        Parameters
        ----------
        actuation : Actuation
            Setpoint, current caps, contactor request and balancing mask.
        """
        self.actuation = actuation
        self.contactor.command(_CONTACTOR_COMMAND[actuation.contactor], self.time_s)

    def link_up(self) -> bool:
        """False while a ``link_lost`` fault is active (EMS commands do not arrive)."""
        faults = self.faults
        return len(faults) == 0 or not faults.link_lost(self.time_s)

    # -- KPIs ---------------------------------------------------------------------------------
    def energy_kpis(self) -> dict[str, float]:
        """Energy flows of the run [kWh] and the energy-balance residual.

        The balance: AC energy into the battery - AC energy out = change of stored energy +
        converter loss + cell heat + balancing bleed + self-discharge + capacity fade.

        Returns
        -------
        dict
            KPI name -> value.
        """
        c = self.counters
        eb = self.pack.energy_balance()
        j_to_kwh = 1.0 / 3.6e6
        stored_change = eb.stored_now_j - eb.stored_start_j
        losses = c.converter_loss_j + eb.cell_heat_j + eb.bleed_j + eb.self_discharge_j
        lhs = c.ac_charged_j - c.ac_discharged_j
        rhs = stored_change + losses + eb.capacity_fade_j
        residual = lhs - rhs
        scale = c.ac_charged_j + c.ac_discharged_j + abs(stored_change) + losses
        return {
            "energy_charged_ac_kwh": c.ac_charged_j * j_to_kwh,
            "energy_discharged_ac_kwh": c.ac_discharged_j * j_to_kwh,
            "stored_energy_change_kwh": stored_change * j_to_kwh,
            "losses_converter_kwh": c.converter_loss_j * j_to_kwh,
            "losses_cells_kwh": eb.cell_heat_j * j_to_kwh,
            "losses_balancing_kwh": eb.bleed_j * j_to_kwh,
            "losses_self_discharge_kwh": eb.self_discharge_j * j_to_kwh,
            "capacity_fade_energy_kwh": eb.capacity_fade_j * j_to_kwh,
            "energy_balance_residual_kwh": residual * j_to_kwh,
            "energy_balance_error_fraction": abs(residual) / scale if scale > 0 else 0.0,
            "grid_import_kwh": c.grid_import_j * j_to_kwh,
            "grid_export_kwh": c.grid_export_j * j_to_kwh,
            "pv_kwh": c.pv_j * j_to_kwh,
            "pv_curtailed_kwh": c.pv_curtailed_j * j_to_kwh,
            "load_kwh": c.load_j * j_to_kwh,
            "cost_eur": c.cost_eur,
            "baseline_cost_eur": c.baseline_cost_eur,
            "savings_eur": c.baseline_cost_eur - c.cost_eur,
            "peak_import_w": c.peak_import_w,
            "baseline_peak_import_w": c.baseline_peak_import_w,
        }
