"""Glue between a running site and the hub: snapshots, resets, fault drills, interfaces.

:func:`snapshot_of` turns the state of a site after a cycle into an immutable
:class:`~openbess.io.hub.Snapshot`; :func:`serve_requests` applies the reset and drill requests
that interfaces queued (in the loop's thread, between two cycles). :class:`Interface` is what
every outside interface (Modbus, MQTT, HTTP, CAN, OpenADR) implements so that ``openbess run``
can start and stop it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from openbess.contract import Telemetry
from openbess.io.hub import CellView, Hub, PlanView, Snapshot

if TYPE_CHECKING:
    from openbess.simulate import Site

log = logging.getLogger(__name__)


class Interface(Protocol):
    """An outside interface that ``openbess run`` starts and stops."""

    name: str

    def start(self, hub: Hub) -> None:
        """Start serving (returns at once; the work runs in a thread or an event loop)."""

    def stop(self) -> None:
        """Stop serving and release sockets and threads (idempotent)."""


def _plan_view(site: Site) -> PlanView | None:
    plan = getattr(site.controller.strategy, "plan", None)
    if plan is None:
        return None
    return PlanView(
        created_s=float(getattr(site.controller.strategy, "_last_plan_s", math.nan)),
        time_s=plan.time_s,
        step_s=plan.step_s,
        battery_power_w=plan.battery_power_w,
        soc=plan.soc,
        grid_import_w=plan.grid_import_w,
        grid_export_w=plan.grid_export_w,
        load_w=plan.load_w,
        pv_w=plan.pv_w,
        import_price_eur_per_kwh=plan.import_price_eur_per_kwh,
        export_price_eur_per_kwh=plan.export_price_eur_per_kwh,
        relaxed=tuple(r.constraint for r in plan.relaxed),
        forecast_errors=_forecast_errors(site.controller.strategy, plan.time_s),
    )


def _forecast_errors(
    strategy: object, time_s: npt.NDArray[np.float64]
) -> dict[str, dict[str, float | int]]:
    """The strategy's forecast error report, if its forecasts keep one."""
    errors = getattr(getattr(strategy, "forecast", None), "errors", None)
    if errors is None or not len(time_s):
        return {}
    report: dict[str, dict[str, float | int]] = errors(float(time_s[0]))
    return report


def snapshot_of(site: Site, telemetry: Telemetry, hub: Hub | None = None) -> Snapshot:
    """The state of ``site`` after the cycle that produced ``telemetry``.

    Parameters
    ----------
    site : Site
        The running site.
    telemetry : Telemetry
        This cycle's Telemetry.
    hub : Hub or None
        The hub (its refused-input counters are included).

    Returns
    -------
    Snapshot
        Immutable copy (arrays are copied: the loop goes on mutating its own).
    """
    ctl, bms = site.controller, site.bms
    meas = ctl.measurements
    setup = bms.setup
    if meas is not None:
        v = np.where(meas.cell_voltage_valid, meas.cell_voltage_v, np.nan)
        i_str = np.where(meas.string_current_valid, meas.string_current_a, np.nan)
    else:
        v = np.full(setup.n_cells, np.nan)
        i_str = np.full(setup.n_strings, np.nan)
    cells = CellView(
        voltage_v=v,
        temperature_degc=np.array(bms.cell_temperature_degc, dtype=np.float64),
        soc=np.array(bms.cell_soc, dtype=np.float64),
        balancing=np.array(bms.balancing, dtype=bool),
        string_current_a=i_str,
        n_strings=setup.n_strings,
        modules_per_string=setup.modules_per_string,
    )
    counters: dict[str, float] = {
        "cycles": float(ctl.counters.cycles),
        "ems_errors": float(ctl.counters.ems_errors),
        "bms_errors": float(ctl.counters.bms_errors),
        "log_errors": float(ctl.counters.log_errors),
        "commands_lost": float(ctl.counters.commands_lost),
        "overruns": float(ctl.counters.overruns),
    }
    for k, n in ctl.gate.counts.items():
        counters[f"gate.{k}"] = float(n)
    if hub is not None:
        for k, n in hub.rejected().items():
            counters[f"rejected.{k}"] = float(n)
    severity: dict[str, str] = {}
    if bms.result is not None:
        severity = {code: tier.severity for code, tier in bms.result.alarms}
    site_meas = ctl.site
    if site_meas is None:  # pragma: no cover - a Telemetry implies a cycle ran
        raise RuntimeError("snapshot before the first cycle")
    return Snapshot(
        time_s=telemetry.time_s,
        telemetry=telemetry,
        site=site_meas,
        cells=cells,
        command=ctl.gate.override or ctl.last_command,
        plan=_plan_view(site),
        counters=counters,
        alarm_severity=severity,
        latched=bms.latched(),
    )


def serve_requests(site: Site, hub: Hub, now_s: float) -> None:
    """Apply the reset and fault-drill requests queued by the interfaces.

    Parameters
    ----------
    site : Site
        The running site.
    hub : Hub
        The hub.
    now_s : float
        Time [s, Unix UTC].
    """
    from openbess.simulate import parse_fault  # late: simulate imports the controller

    for source in hub.take_cancels():
        if site.controller.gate.cancel_override(source):
            _record(site, now_s, "gate", "override_cancelled", "info", f"{source} override ended")
    for ev in hub.take_log():
        t = ev["time_s"] if ev["time_s"] is not None else now_s
        if site.controller.recorder is not None:
            _record(site, t, ev["kind"], ev["code"], ev["severity"], ev["message"])
        else:
            hub.publish_event({**ev, "time_s": t})

    for req in hub.take_resets():
        ok, msg = site.bms.reset_fault(req.code, now_s)
        log.info("reset %s from %s: %s", req.code, req.source, msg)
        _record(site, now_s, "reset", req.code, "info" if ok else "warning", f"{req.source}: {msg}")
        Hub.finish(req, ok, msg)
    for drill in hub.take_drills():
        head, *rest = drill.spec.strip().split(":")
        target = rest[0] if rest and "=" not in rest[0] else "0"
        params = [p for p in rest if "=" in p]
        try:
            fault = parse_fault(":".join([head, f"{target}@0", *params]))
            if drill.clear:
                found = site.twin.faults.clear(fault.kind, fault.target)
                msg = f"fault {fault.kind.value} on target {fault.target} " + (
                    "cleared" if found else "was not active"
                )
            else:
                site.twin.faults.inject(
                    fault.kind, fault.target, at_time_s=now_s, **dict(fault.params)
                )
                msg = f"fault {fault.kind.value} injected on target {fault.target}"
        except ValueError as err:
            Hub.finish(drill, False, str(err))
            hub.reject(drill.source, "bad_drill")
            continue
        _record(site, now_s, "drill", fault.kind.value, "info", f"{drill.source}: {msg}")
        Hub.finish(drill, True, msg)


def _record(site: Site, now_s: float, kind: str, code: str, severity: str, message: str) -> None:
    rec = site.controller.recorder  # writes the run database and wakes event subscribers
    if rec is not None:
        rec.record_event(now_s, kind, code, severity, message)
