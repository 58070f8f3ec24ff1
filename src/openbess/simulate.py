"""Build a controller for a site and run it: fast-forward (simulate) or scaled real time (run).

This is the composition root: site configuration -> twin (plant), BMS, EMS strategy, gate, run
store -> :class:`~openbess.controller.Controller`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any
from zoneinfo import ZoneInfo

from tqdm import tqdm

from openbess.bms.bms import BatteryManagementSystem, BmsSetup
from openbess.bms.defaults import default_params
from openbess.bms.logbook import LogbookWriter
from openbess.cell.params import CellParams
from openbess.clock import Clock, ScaledClock, SimClock
from openbess.config import SiteConfig
from openbess.contract import Command, GateDecision, Outcome, Telemetry
from openbess.controller import Controller
from openbess.ems.strategy import SelfConsumption, Strategy
from openbess.errors import ConfigError, DataError
from openbess.gate import Gate
from openbess.io.hub import Hub
from openbess.io.runtime import Interface, serve_requests, snapshot_of
from openbess.plant import Measurements, SiteMeasurements
from openbess.storage import RunStore, pack_row
from openbess.twin.faults import FaultKind
from openbess.twin.pack import parallel_group_params
from openbess.twin.site import SiteTwin

log = logging.getLogger(__name__)


class StoreRecorder:
    """Log phase: writes each cycle (and the BMS's events) to a :class:`RunStore`.

    Parameters
    ----------
    store : RunStore
        The run database (a run must be started).
    bms : BatteryManagementSystem
        Source of per-cell estimates, balancing state and events.
    """

    def __init__(self, store: RunStore, bms: BatteryManagementSystem, db_path: Path) -> None:
        self.store = store
        self.bms = bms
        self.hub: Hub | None = None
        run_id = store.run_id
        if run_id is None:  # pragma: no cover - start_run() is called first
            raise ValueError("start a run before recording")
        self.logbook_writer = LogbookWriter(db_path, run_id, interval_s=900.0)

    def record_cycle(
        self,
        telemetry: Telemetry,
        site: SiteMeasurements,
        measurements: Measurements,
        command: Command | None,
        decision: GateDecision,
    ) -> None:
        """Append the pack row, the cell snapshot (decimated) and pending BMS events."""
        self.store.record_pack(pack_row(telemetry, site, gate=decision))
        per_cell_t = self.bms.cell_temperature_degc
        self.store.record_cells(
            telemetry.time_s,
            measurements.cell_voltage_v,
            per_cell_t,
            self.bms.cell_soc,
            self.bms.balancing,
        )
        for ev in self.bms.pop_events():
            self.store.record_event(ev.time_s, ev.kind, ev.code, ev.severity, ev.message)
            if self.hub is not None:
                self.hub.publish_event(
                    {
                        "time_s": ev.time_s,
                        "kind": ev.kind,
                        "code": ev.code,
                        "severity": ev.severity,
                        "message": ev.message,
                    }
                )
        self.logbook_writer.maybe_save(self.bms.logbook, telemetry.time_s)

    def close(self, time_s: float) -> None:
        """Save the final logbook snapshot and close the logbook writer."""
        self.logbook_writer.save(self.bms.logbook, time_s)
        self.logbook_writer.close()

    def record_event(
        self,
        time_s: float,
        kind: str,
        code: str,
        severity: str,
        message: str,
        data: dict[str, object] | None = None,
    ) -> None:
        """Append one event."""
        self.store.record_event(time_s, kind, code, severity, message, data)
        if self.hub is not None:
            self.hub.publish_event(
                {
                    "time_s": time_s,
                    "kind": kind,
                    "code": code,
                    "severity": severity,
                    "message": message,
                    "data": data or {},
                }
            )


def bms_cell_params(twin: SiteTwin) -> CellParams:
    """Nominal parameters of one series cell (parallel group) as the BMS knows them."""
    return parallel_group_params(twin.cell, twin.topology.cells_parallel)


def build_bms(config: SiteConfig, twin: SiteTwin) -> BatteryManagementSystem:
    """The BMS for a site (defaults of the cell's chemistry).

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    twin : SiteTwin
        The plant (for the topology; the BMS never reads its true state).

    Returns
    -------
    BatteryManagementSystem
        The BMS.
    """
    cell = bms_cell_params(twin)
    topo = twin.topology
    chem = "lfp" if cell.chemistry.upper().startswith("LFP") else "nmc"
    params = default_params(chem, cell.capacity_ah * topo.n_strings)
    b = config.battery
    setup = BmsSetup(
        cell=cell,
        n_strings=topo.n_strings,
        n_series=topo.n_series,
        modules_per_string=topo.modules_per_string,
        params=params,
        max_charge_power_w=b.max_charge_power_w,
        max_discharge_power_w=b.max_discharge_power_w,
        charge_efficiency=b.charge_efficiency,
        discharge_efficiency=b.discharge_efficiency,
        balancing=config.bms.balancing,
        bleed_resistance_ohm=config.bms.bleed_resistance_ohm,
        sensor_sample_period_s=b.sensors.sample_period_s,
    )
    return BatteryManagementSystem(setup)


def build_strategy(
    config: SiteConfig, twin: SiteTwin | None = None, start_s: float | None = None
) -> Strategy:
    """The EMS strategy named in the site file (``[ems] strategy``).

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    twin : SiteTwin or None
        The plant when simulating. With ``[ems] forecast = "model"`` the ``mpc`` strategy
        forecasts from the meter readings it sees (and the twin's own last
        ``history_days`` as history, unless ``history_csv`` is set); with ``"perfect"`` it
        reads the twin's own load, PV and price series ahead.
    start_s : float or None
        Start of the run [s, Unix UTC] (default: ``[simulation] start``).

    Returns
    -------
    Strategy
        The strategy.

    Raises
    ------
    ConfigError
        ``forecast = "perfect"`` without a twin, or a history CSV that cannot be used (the
        message names the file and what is wrong).
    """
    e = config.ems
    validity_s = max(5.0 * e.dispatch_s, 3.0 * config.simulation.step_s)
    if e.strategy == "mpc":
        from openbess.ems.mpc import MpcStrategy, twin_perfect_forecast
        from openbess.ems.optimizer import optimizer_config_for

        if start_s is None:
            start_s = config.simulation.start.timestamp()
        forecast: Any
        if e.forecast == "perfect":
            if twin is None:
                raise ConfigError("ems.forecast = 'perfect' needs the twin (simulation only)")
            forecast = twin_perfect_forecast(twin)
        else:
            forecast = measured_forecast(config, start_s, twin is not None)
        return MpcStrategy(
            config,
            forecast,
            optimizer_config_for(config),
            validity_s=validity_s,
            scenario_days=e.scenario_days if e.forecast == "model" else 0,
        )
    return SelfConsumption.for_site(config, validity_s)


def measured_forecast(config: SiteConfig, start_s: float, on_twin: bool) -> Any:
    """The ``mpc`` model forecasts of a site (:class:`openbess.ems.live.MeasuredForecastProvider`).

    Parameters
    ----------
    config : SiteConfig
        Site configuration (``[ems] history_csv``, ``history_days``, ``scenario_days``).
    start_s : float
        Start of the run [s, Unix UTC].
    on_twin : bool
        Running on the twin: without ``history_csv``, the twin's own series of the last
        ``history_days`` serve as the meter history.

    Returns
    -------
    MeasuredForecastProvider
        The provider.

    Raises
    ------
    ConfigError
        If the history CSV cannot be read or does not fit (names the file and the problem).
    """
    import pandas as pd

    from openbess.ems.backtest import read_inputs_csv, site_inputs
    from openbess.ems.live import MeasuredForecastProvider

    e = config.ems
    step_s = 900.0
    history = None
    if e.history_csv is not None:
        try:
            history = read_inputs_csv(e.history_csv)
        except (OSError, ValueError, DataError) as err:
            raise ConfigError(f"ems.history_csv: {err}") from err
    elif on_twin and e.history_days > 0:
        first = math.floor(start_s / step_s) * step_s - round(e.history_days * 96) * step_s
        history = site_inputs(
            config, pd.Timestamp(first, unit="s", tz="UTC"), round(e.history_days * 96) / 96
        )
    try:
        return MeasuredForecastProvider(
            config, start_s, history=history, step_s=step_s, scenario_days=e.scenario_days
        )
    except ValueError as err:
        where = f"ems.history_csv {e.history_csv!r}" if e.history_csv else "ems.history_days"
        raise ConfigError(f"{where}: {err}") from err


@dataclass
class Site:
    """A ready-to-run site: the twin, the BMS and the controller."""

    config: SiteConfig
    twin: SiteTwin
    bms: BatteryManagementSystem
    controller: Controller
    store: RunStore | None

    def finish(self, time_s: float, kpis: dict[str, Any]) -> None:
        """Record the KPIs and the final logbook, end the run and close the database."""
        rec = self.controller.recorder
        if isinstance(rec, StoreRecorder):
            rec.close(time_s)
        if self.store is not None:
            self.store.record_kpis(
                {k: float(v) for k, v in kpis.items() if isinstance(v, int | float)}
            )
            self.store.end_run(time_s)
            self.store.close()


def build_site(
    config: SiteConfig,
    start_s: float,
    step_s: float,
    db_path: Path | None = None,
) -> Site:
    """Compose twin, BMS, strategy, gate and store into a controller.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    start_s : float
        Start time [s, Unix UTC].
    step_s : float
        Cycle step [s].
    db_path : pathlib.Path or None
        Run database, or None for none.

    Returns
    -------
    Site
        The assembled site.
    """
    twin = SiteTwin(config, start_s, series_step_s=min(60.0, step_s))
    bms = build_bms(config, twin)
    strategy = build_strategy(config, twin, start_s)
    timeout = max(config.bms.gate_timeout_s, 2.0 * step_s)
    gate = Gate(timeout_s=timeout)
    store: RunStore | None = None
    recorder: StoreRecorder | None = None
    if db_path is not None:
        decimation = max(1, round(config.storage.cell_log_interval_s / step_s))
        store = RunStore(db_path, cell_decimation=decimation)
        store.start_run(config.name, config.model_dump(mode="json"), started_at_s=start_s)
        recorder = StoreRecorder(store, bms, db_path)
    controller = Controller(
        plant=twin,
        bms=bms,
        strategy=strategy,
        gate=gate,
        recorder=recorder,
        dispatch_s=max(config.ems.dispatch_s, step_s),
        replan_s=config.ems.replan_s,
        link_up=twin.link_up,
    )
    return Site(config, twin, bms, controller, store)


@dataclass(frozen=True)
class FaultSpec:
    """A fault to inject into the twin during a run.

    Parameters
    ----------
    kind : FaultKind
        What breaks.
    target : int
        Index of the cell, string, temperature sensor (0 for the contactor and the link).
    after_s : float
        When, in simulated seconds after the start [s].
    params : dict
        Fault parameters (e.g. ``resistance_ohm`` of an internal short).
    """

    kind: FaultKind
    target: int
    after_s: float
    params: tuple[tuple[str, float], ...] = ()


def parse_fault(text: str) -> FaultSpec:
    """Parse ``KIND:TARGET@SECONDS[:name=value...]``.

    Example: ``internal_short:3@3600:resistance_ohm=0.05`` shorts cell 3 an hour into the run.

    Parameters
    ----------
    text : str
        The specification.

    Returns
    -------
    FaultSpec
        The parsed fault.

    Raises
    ------
    ValueError
        Naming the part that is wrong and what is allowed.
    """
    head, *extra = text.split(":")
    kinds = ", ".join(k.value for k in FaultKind)
    if not extra or "@" not in extra[0]:
        raise ValueError(f"fault {text!r}: expected KIND:TARGET@SECONDS, e.g. link_lost:0@600")
    try:
        kind = FaultKind(head)
    except ValueError:
        raise ValueError(f"fault {text!r}: unknown kind {head!r}; known: {kinds}") from None
    target_s, _, when_s = extra[0].partition("@")
    try:
        target = int(target_s)
        after = float(when_s)
    except ValueError:
        raise ValueError(
            f"fault {text!r}: TARGET must be an integer and SECONDS a number"
        ) from None
    params: list[tuple[str, float]] = []
    for item in extra[1:]:
        name, eq, value = item.partition("=")
        try:
            params.append((name, float(value)))
        except ValueError:
            raise ValueError(f"fault {text!r}: parameter {item!r} is not name=number") from None
        if not eq:
            raise ValueError(f"fault {text!r}: parameter {item!r} is not name=number")
    return FaultSpec(kind, target, after, tuple(params))


def inject_faults(site: Site, start_s: float, faults: Sequence[FaultSpec]) -> None:
    """Schedule faults in the twin and log them as events.

    Parameters
    ----------
    site : Site
        The assembled site.
    start_s : float
        Run start [s, Unix UTC].
    faults : sequence of FaultSpec
        The faults.

    Raises
    ------
    ValueError
        A target out of range or an unknown parameter (named).
    """
    for f in faults:
        at = start_s + f.after_s
        site.twin.faults.inject(f.kind, f.target, at_time_s=at, **dict(f.params))
        if site.store is not None:
            site.store.record_event(
                at, "drill", f.kind.value, "info", f"fault injected on target {f.target}"
            )


def _start_s(config: SiteConfig, start: datetime | None) -> float:
    dt = start if start is not None else config.simulation.start
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(config.timezone))
    return dt.timestamp()


def run_kpis(site: Site, soc_start: float, wall_s: float) -> dict[str, Any]:
    """Key figures of a run.

    Parameters
    ----------
    site : Site
        The site after the run.
    soc_start : float
        True pack SoC at the start [fraction].
    wall_s : float
        Wall time of the run [s].

    Returns
    -------
    dict
        KPI name -> value (JSON-serialisable).
    """
    twin, bms, ctl = site.twin, site.bms, site.controller
    k: dict[str, Any] = {
        "site": site.config.name,
        "simulated_days": twin.counters.duration_s / 86400.0,
        "cycles": ctl.counters.cycles,
        "wall_time_s": wall_s,
    }
    k.update(twin.energy_kpis())
    usable_kwh = float(twin.pack.cell_capacity_ah.sum()) * twin.cell.nominal_voltage_v / 1000.0
    k["equivalent_full_cycles"] = (
        k["energy_discharged_ac_kwh"] / usable_kwh if usable_kwh > 0 else 0.0
    )
    k["soc_start"] = soc_start
    k["soc_end"] = twin.pack.soc
    k["soc_end_estimated"] = ctl.telemetry.soc if ctl.telemetry is not None else math.nan
    k["soh_true"] = twin.pack.soh
    k["soh_estimated"] = bms.estimator.soh
    cell = twin.cell
    k["cell_voltage_min_seen_v"] = twin.pack.voltage_min_seen_v
    k["cell_voltage_max_seen_v"] = twin.pack.voltage_max_seen_v
    k["cell_voltage_limit_min_v"] = cell.voltage_min_v
    k["cell_voltage_limit_max_v"] = cell.voltage_max_v
    k["cell_temperature_min_seen_degc"] = twin.cell_temperature_min_seen_degc
    k["cell_temperature_max_seen_degc"] = twin.cell_temperature_max_seen_degc
    k["cell_limits_respected"] = bool(
        twin.pack.voltage_min_seen_v >= cell.voltage_min_v
        and twin.pack.voltage_max_seen_v <= cell.voltage_max_v
    )
    k["alarms_raised"] = sum(bms.alarm_counts.values())
    k["alarms_by_code"] = dict(bms.alarm_counts)
    gate_counts = dict(ctl.gate.counts)
    k["gate_accepted"] = gate_counts.get(Outcome.ACCEPTED.value, 0)
    k["gate_clamped"] = gate_counts.get(Outcome.CLAMPED.value, 0)
    k["gate_refused"] = gate_counts.get(Outcome.REFUSED.value, 0)
    k["gate_dropped"] = gate_counts.get(Outcome.DROPPED.value, 0)
    k["gate_safe_idle"] = gate_counts.get(Outcome.SAFE_IDLE.value, 0)
    k["ems_errors"] = ctl.counters.ems_errors
    k["bms_errors"] = ctl.counters.bms_errors
    k["commands_lost"] = ctl.counters.commands_lost
    return k


def simulate(
    config: SiteConfig,
    days: float,
    start: datetime | None = None,
    step_s: float | None = None,
    db_path: Path | None = None,
    progress: bool = True,
    faults: Sequence[FaultSpec] = (),
) -> dict[str, Any]:
    """Fast-forward a site on the twin and return its KPIs.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    days : float
        Simulated days (> 0).
    start : datetime or None
        Start (default: the site's ``simulation.start``).
    step_s : float or None
        Cycle step [s] (default: the site's ``simulation.step_s``).
    db_path : pathlib.Path or None
        Run database (None: no database).
    progress : bool
        Show a progress bar on stderr.
    faults : sequence of FaultSpec
        Faults to inject into the twin.

    Returns
    -------
    dict
        The KPIs (see :func:`run_kpis`).
    """
    if not days > 0:
        raise ValueError(f"days must be > 0, got {days}")
    step = float(step_s if step_s is not None else config.simulation.step_s)
    start_s = _start_s(config, start)
    site = build_site(config, start_s, step, db_path)
    inject_faults(site, start_s, faults)
    clock = SimClock(start_s)
    soc_start = site.twin.pack.soc
    n = round(days * 86400.0 / step)
    wall0 = time.perf_counter()
    bar = tqdm(total=n, disable=not progress, unit="cycle", mininterval=0.5, smoothing=0.1)
    try:
        chunk = max(1, n // 200)
        for k in range(n + 1):
            now = start_s + k * step
            clock.wait_until(now)
            site.controller.cycle(now)
            if k % chunk == 0:
                bar.update(chunk if k else 0)
    finally:
        bar.close()
        wall = time.perf_counter() - wall0
        kpis = run_kpis(site, soc_start, wall)
        site.finish(clock.now_s(), kpis)
    return kpis


def run_realtime(
    config: SiteConfig,
    speed: float = 1.0,
    start: datetime | None = None,
    db_path: Path | None = None,
    duration_s: float | None = None,
    clock: Clock | None = None,
    status: Callable[[str], None] | None = None,
    faults: Sequence[FaultSpec] = (),
    hub: Hub | None = None,
    interfaces: Sequence[Interface] | None = None,
    ready: Callable[[Site], None] | None = None,
) -> dict[str, Any]:
    """Run the site in (scaled) real time until interrupted or ``duration_s`` wall seconds.

    At high speed the cycle step grows so that at most about 50 cycles run per wall second;
    the BMS period never drops below ``bms.cycle_s``.

    Parameters
    ----------
    config : SiteConfig
        Site configuration.
    speed : float
        Simulated seconds per wall second.
    start : datetime or None
        Start (default: the site's ``simulation.start``).
    db_path : pathlib.Path or None
        Run database (default: the site's ``storage.path``).
    duration_s : float or None
        Wall seconds to run (None: until SIGINT/SIGTERM).
    clock : Clock or None
        Clock to use (default: a :class:`~openbess.clock.ScaledClock`).
    status : callable or None
        Receives a one-line status about every 5 wall seconds (default: the log at INFO).
    faults : sequence of FaultSpec
        Faults to inject into the twin (times in simulated seconds after the start).
    hub : Hub or None
        Hub the interfaces talk through (created when interfaces are given). Setting its
        ``stopped`` event stops the run (as SIGINT does).
    interfaces : sequence of Interface or None
        Outside interfaces to start before the first cycle and stop at the end (None: those
        that the site's ``[interfaces]`` section enables).
    ready : callable or None
        Called with the assembled site before the first cycle.

    Returns
    -------
    dict
        The KPIs when the run stops.
    """
    start_s = _start_s(config, start)
    step = max(config.bms.cycle_s, speed / 50.0)
    if db_path is None:
        db_path = Path(config.storage.path.format(site=config.name))
    site = build_site(config, start_s, step, db_path)
    inject_faults(site, start_s, faults)
    if interfaces is None:
        from openbess.io.factory import build_interfaces

        interfaces = build_interfaces(config, site, speed)
    if hub is None and interfaces:
        hub = Hub(config.name)
    if hub is not None:
        hub.config = config
        hub.db_path = db_path
        site.controller.hub = hub
        if hasattr(site.controller.strategy, "events"):  # grid events reach the EMS
            site.controller.strategy.events = hub.grid_events
        rec = site.controller.recorder
        if isinstance(rec, StoreRecorder):
            rec.hub = hub
    clk = clock if clock is not None else ScaledClock(start_s, speed)
    stop = hub.stopped if hub is not None else threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    say = status if status is not None else log.info
    say(
        f"running site '{config.name}' at {speed:g}x real time, cycle {step:.3g} s, "
        f"logging to {db_path}; Ctrl-C stops"
    )
    started: list[Interface] = []
    try:
        for iface in interfaces:
            iface.start(hub)  # type: ignore[arg-type]  # hub is set when interfaces exist
            started.append(iface)
            where = getattr(iface, "url", None)
            say(f"{iface.name} interface started" + (f": {where}" if where else ""))
    except Exception:
        for iface in started:
            iface.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        site.finish(start_s, {})
        raise
    if ready is not None:
        ready(site)
    tz = ZoneInfo(config.timezone)
    soc_start = site.twin.pack.soc
    wall0 = time.monotonic()
    now = start_s
    last_report = wall0
    try:
        while not stop.is_set():
            lag = clk.wait_until(now)
            if lag > step:
                site.controller.counters.overruns += 1
            tel = site.controller.cycle(now)
            if hub is not None:
                serve_requests(site, hub, now)
                if tel is not None:
                    hub.publish(snapshot_of(site, tel, hub))
            wall = time.monotonic()
            if tel is not None and wall - last_report >= 5.0:
                last_report = wall
                say(
                    f"{datetime.fromtimestamp(now, tz).isoformat(timespec='minutes')} "
                    f"SoC {100 * tel.soc:5.1f} % | battery {site.twin.battery_ac_w:+7.0f} W | "
                    f"PV {site.twin.pv_w:6.0f} W | load {site.twin.load_w:6.0f} W | "
                    f"grid {site.twin.grid_w:+7.0f} W | gate {tel.gate.outcome.value}"
                    f"/{tel.gate.reason.value} | alarms {','.join(tel.alarms) or 'none'}"
                )
            if duration_s is not None and wall - wall0 >= duration_s:
                break
            now += step
    finally:
        for iface in reversed(started):
            try:
                iface.stop()
            except Exception:
                log.exception("could not stop the %s interface", iface.name)
        for s, h in old.items():
            signal.signal(s, h)
        kpis = run_kpis(site, soc_start, time.monotonic() - wall0)
        site.finish(now, kpis)
    return kpis
