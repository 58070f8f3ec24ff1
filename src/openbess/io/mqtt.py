"""MQTT bridge: telemetry, plan and events out; validated commands in; Home Assistant discovery.

The bridge is a paho-mqtt 2 client (callback API v2, its own network thread) that talks to the
control loop only through the :class:`~openbess.io.hub.Hub`:

* after every cycle the loop hands it a :class:`~openbess.io.hub.Snapshot`; every
  ``publish_interval_s`` wall seconds it becomes a JSON telemetry message, and the EMS plan is
  published whenever it changes; events (protection, contactor, resets, gate refusals of
  commands...) are forwarded as they come;
* telemetry, plan and events wait in a bounded :class:`Outbox` (oldest dropped and counted when
  full) and are handed to paho only while the broker is connected, at QoS 1, so a broker
  restart loses nothing that fits in the outbox;
* commands arrive on ``<prefix>/<site>/command/<name>``; they are parsed and range checked in
  paho's network thread (cheap, never waiting), bad ones are refused with an error
  acknowledgement and counted with :meth:`~openbess.io.hub.Hub.reject`; good ones are queued
  for one dispatcher thread, which submits the newest through the gate
  (:meth:`~openbess.io.hub.Hub.submit`, source ``mqtt``, validity in site time) and publishes
  the gate's decision on ``<prefix>/<site>/ack/<name>``. Commands that queued up while the
  previous one waited for its cycle would reach the gate in the same cycle, where the newest
  override replaces the older ones: they are answered at once as ``dropped`` /
  ``superseded``, so any rate of commands costs one gate submission per cycle;
* Home Assistant discovery configs (one device with sensors, numbers, a select and a button) are
  published retained on every connection and when Home Assistant announces itself.

Topics and payloads are documented in ``docs/mqtt.md``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from openbess import __version__
from openbess.contract import Command, GateDecision, Mode
from openbess.errors import ConfigError
from openbess.io.hub import Hub, PlanView, Snapshot

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from openbess.config import MqttConfig, SiteConfig
    from openbess.plant import SiteMeasurements

log = logging.getLogger(__name__)

#: Source name of the commands this bridge submits.
SOURCE = "mqtt"
#: Command names accepted under ``<prefix>/<site>/command/``.
COMMANDS = ("setpoint", "mode", "reserve_soc", "reset", "command")
#: Values of the ``mode`` command; ``auto`` hands control back to the EMS.
MODES = ("auto", *(m.value for m in Mode))
#: Largest command payload accepted [bytes].
MAX_PAYLOAD_BYTES = 1024
#: Longest override accepted [s, site time].
MAX_DURATION_S = 86400.0
#: Shortest wait for the loop's gate decision before acknowledging ``pending`` [s, wall]; the
#: bridge waits at least three cycles of the running loop, at most :data:`MAX_DECISION_WAIT_S`.
DECISION_WAIT_S = 2.0
#: Longest wait for a gate decision [s, wall].
MAX_DECISION_WAIT_S = 60.0
#: Valid commands waiting for the dispatcher beyond which new ones are refused (flood guard).
MAX_PENDING_COMMANDS = 10000
#: Messages handed to paho but not yet acknowledged by the broker (QoS 1 window).
SEND_WINDOW = 1000
#: MQTT keepalive [s]: the broker publishes the last will after 1.5 x this without traffic.
KEEPALIVE_S = 30
#: QoS of the acknowledgements (answers to a live request).
ACK_QOS = 1

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_FAULT_CODE = re.compile(r"[a-z0-9_]{1,64}")
_COMMAND_FIELDS = frozenset({"mode", "power_w", "duration_s", "reserve_soc", "id"})


# ----------------------------------------------------------------------------- command parsing
class CommandInputError(ValueError):
    """A command payload that is refused before reaching the gate.

    Parameters
    ----------
    reason : str
        Short code counted with :meth:`~openbess.io.hub.Hub.reject` (``oversize``,
        ``wrong_type``, ``out_of_range``...).
    message : str
        Human-readable explanation naming the field and the value.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """Ranges a command is checked against before it reaches the gate.

    Parameters
    ----------
    max_charge_power_w, max_discharge_power_w : float
        Converter ratings [W], magnitudes > 0: a setpoint beyond them is refused (within them the
        gate clamps to this cycle's BMS limits and says so).
    """

    max_charge_power_w: float = math.inf
    max_discharge_power_w: float = math.inf

    @classmethod
    def of(cls, config: SiteConfig | None) -> CommandLimits:
        """The ratings of a site (unbounded without a configuration)."""
        if config is None:
            return cls()
        b = config.battery
        return cls(float(b.max_charge_power_w), float(b.max_discharge_power_w))


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A command payload that passed validation.

    Parameters
    ----------
    name : str
        Command topic name (one of :data:`COMMANDS`).
    mode : str or None
        ``auto`` or a :class:`~openbess.contract.Mode` value (``setpoint``, ``mode``, ``command``).
    power_w : float or None
        AC power [W], positive = discharge (signed for ``power``, magnitude for ``charge`` and
        ``discharge``).
    duration_s : float or None
        Validity of the override [s, site time] (None: the configured ``command_duration_s``).
    reserve_soc : float or None
        Reserve SoC for the override [fraction].
    reset_code : str or None
        Fault code to reset (``all`` for every latched fault).
    request_id : str or None
        Caller's identifier, echoed in the acknowledgement.
    """

    name: str
    mode: str | None = None
    power_w: float | None = None
    duration_s: float | None = None
    reserve_soc: float | None = None
    reset_code: str | None = None
    request_id: str | None = None


def _text_number(text: str, what: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise CommandInputError("wrong_type", f"{what} must be a number, got {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value):
        raise CommandInputError("out_of_range", f"{what} must be finite, got {text[:40]!r}")
    return value


def _json_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandInputError("wrong_type", f"{what} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise CommandInputError("out_of_range", f"{what} must be finite, got {value!r}")
    return out


def _check_power(mode: str, power_w: float, limits: CommandLimits, what: str) -> None:
    if mode == Mode.POWER.value:
        lo, hi = -limits.max_charge_power_w, limits.max_discharge_power_w
    elif mode == Mode.CHARGE.value:
        lo, hi = 0.0, limits.max_charge_power_w
    elif mode == Mode.DISCHARGE.value:
        lo, hi = 0.0, limits.max_discharge_power_w
    else:
        return
    if not lo <= power_w <= hi:
        raise CommandInputError(
            "out_of_range", f"{what} = {power_w:g} W is outside [{lo:g}, {hi:g}] W for mode {mode}"
        )


def _check_fraction(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise CommandInputError("out_of_range", f"{what} = {value:g} is outside [0, 1]")
    return value


def _check_duration(value: float) -> float:
    if not 0.0 < value <= MAX_DURATION_S:
        raise CommandInputError(
            "out_of_range", f"duration_s = {value:g} is outside (0, {MAX_DURATION_S:g}] s"
        )
    return value


def _parse_json_command(text: str, limits: CommandLimits) -> CommandRequest:
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise CommandInputError("bad_json", f"command is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise CommandInputError("wrong_type", "command must be a JSON object")
    unknown = sorted(set(body) - _COMMAND_FIELDS)
    if unknown:
        raise CommandInputError(
            "unknown_field",
            f"command has unknown field(s) {unknown}; allowed {sorted(_COMMAND_FIELDS)}",
        )
    if "mode" not in body:
        raise CommandInputError("missing_field", "command needs a 'mode'")
    mode = body["mode"]
    if not isinstance(mode, str):
        raise CommandInputError("wrong_type", f"command mode must be a string, got {mode!r}")
    if mode not in MODES:
        raise CommandInputError("bad_value", f"command mode {mode[:40]!r} is not one of {MODES}")
    power_w: float | None = None
    if "power_w" in body:
        power_w = _json_number(body["power_w"], "command power_w")
    elif mode in (Mode.POWER.value, Mode.CHARGE.value, Mode.DISCHARGE.value):
        raise CommandInputError("missing_field", f"command mode {mode} needs 'power_w'")
    if power_w is not None:
        _check_power(mode, power_w, limits, "command power_w")
    duration_s = None
    if "duration_s" in body:
        duration_s = _check_duration(_json_number(body["duration_s"], "command duration_s"))
    reserve = None
    if "reserve_soc" in body:
        reserve = _check_fraction(
            _json_number(body["reserve_soc"], "command reserve_soc"), "command reserve_soc"
        )
    request_id = body.get("id")
    if request_id is not None and not (isinstance(request_id, str) and len(request_id) <= 64):
        raise CommandInputError("wrong_type", "command id must be a string of at most 64 chars")
    return CommandRequest("command", mode, power_w, duration_s, reserve, None, request_id)


def parse_command(
    name: str, payload: bytes, limits: CommandLimits, retained: bool = False
) -> CommandRequest:
    """Validate one command message.

    Parameters
    ----------
    name : str
        Topic below ``<prefix>/<site>/command/`` (``setpoint``, ``mode``, ``reserve_soc``,
        ``reset`` or ``command``).
    payload : bytes
        Message payload: a number (``setpoint`` [W, positive = discharge], ``reserve_soc``
        [fraction]), a word (``mode``: ``auto``, ``power``, ``charge``, ``discharge``, ``hold``,
        ``idle``; ``reset``: ``all`` or a fault code), or a JSON object (``command``: ``mode``,
        ``power_w`` [W], optional ``duration_s`` [s], ``reserve_soc`` [fraction], ``id``).
    limits : CommandLimits
        Converter ratings the power is checked against.
    retained : bool
        The broker delivered a retained message (a stale command): refused.

    Returns
    -------
    CommandRequest
        The validated request.

    Raises
    ------
    CommandInputError
        With a reason code and a message naming the field.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandInputError(
            "oversize", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes"
        )
    if name not in COMMANDS:
        raise CommandInputError(
            "unknown_topic", f"unknown command {name[:60]!r}; known: {', '.join(COMMANDS)}"
        )
    if retained:
        raise CommandInputError("retained", "retained command refused (it may be stale)")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandInputError("encoding", "payload is not UTF-8 text") from None
    if name == "setpoint":
        power = _text_number(text, "setpoint")
        _check_power(Mode.POWER.value, power, limits, "setpoint")
        return CommandRequest(name, Mode.POWER.value, power)
    if name == "mode":
        mode = text.lower()
        if mode not in MODES:
            raise CommandInputError("bad_value", f"mode {text[:40]!r} is not one of {MODES}")
        return CommandRequest(name, mode)
    if name == "reserve_soc":
        return CommandRequest(
            name, reserve_soc=_check_fraction(_text_number(text, "reserve_soc"), "reserve_soc")
        )
    if name == "reset":
        code = text.lower() or "all"
        if not _FAULT_CODE.fullmatch(code):
            raise CommandInputError("bad_value", f"reset code {text[:40]!r} is not a fault code")
        return CommandRequest(name, reset_code=code)
    return _parse_json_command(text, limits)


# ----------------------------------------------------------------------------- outbox
@dataclass(frozen=True, slots=True)
class Message:
    """One outgoing MQTT message (the payload may be built lazily by the sender thread)."""

    topic: str
    payload: bytes | Callable[[], bytes]
    retain: bool = False
    qos: int = 1

    def body(self) -> bytes:
        """The payload bytes."""
        return self.payload() if callable(self.payload) else self.payload


class Outbox:
    """Bounded FIFO of messages waiting for the broker.

    When full, the oldest message is dropped and counted. :meth:`next` hands out messages only
    while the link is open and fewer than ``window`` handed-out messages wait for the broker's
    acknowledgement.

    Parameters
    ----------
    max_messages : int
        Capacity (the ``queue_max`` of the configuration).
    window : int
        Messages handed out but not acknowledged (:meth:`acked`) beyond which :meth:`next` waits.
    """

    def __init__(self, max_messages: int, window: int = SEND_WINDOW) -> None:
        if max_messages < 1 or window < 1:
            raise ValueError("Outbox max_messages and window must be >= 1")
        self.max_messages = max_messages
        self.window = window
        self._queue: deque[Message] = deque()
        self._cond = threading.Condition()
        self._open = False
        self._closed = False
        self.in_flight = 0
        #: Messages dropped because the outbox was full.
        self.dropped = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def put(self, message: Message) -> None:
        """Append ``message``; drop (and count) the oldest one when full."""
        with self._cond:
            if len(self._queue) >= self.max_messages:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(message)
            self._cond.notify()

    def set_open(self, is_open: bool) -> None:
        """Say whether the broker link is up (messages are handed out only while it is)."""
        with self._cond:
            self._open = is_open
            self._cond.notify_all()

    def sending(self) -> None:
        """Count one message handed to the client outside :meth:`next` (e.g. availability)."""
        with self._cond:
            self.in_flight += 1

    def acked(self) -> None:
        """The broker acknowledged one handed-out message."""
        with self._cond:
            self.in_flight = max(self.in_flight - 1, 0)
            self._cond.notify_all()

    def close(self) -> None:
        """Wake and stop the sender."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next(self, timeout_s: float) -> Message | None:
        """The oldest message once it may be sent, or None after ``timeout_s`` or when closed.

        Parameters
        ----------
        timeout_s : float
            Longest wait [s, wall].

        Returns
        -------
        Message or None
            The message, now counted as in flight.
        """

        def ready() -> bool:
            return self._closed or (
                self._open and bool(self._queue) and self.in_flight < self.window
            )

        with self._cond:
            if not self._cond.wait_for(ready, timeout_s) or self._closed:
                return None
            self.in_flight += 1
            return self._queue.popleft()


# ----------------------------------------------------------------------------- payloads
def _f(value: float) -> float | None:
    """A JSON-safe float (None for NaN and infinities)."""
    v = float(value)
    return v if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into JSON types and NaN into None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _f(float(obj))
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


@dataclass
class EnergyCounters:
    """Energies integrated from the site meters since the bridge started [Wh].

    Monotonic, so Home Assistant can use them as ``total_increasing`` energy sensors (the
    Energy dashboard needs energy in and out of the battery, not power).
    """

    battery_charged_wh: float = 0.0
    battery_discharged_wh: float = 0.0
    grid_import_wh: float = 0.0
    grid_export_wh: float = 0.0
    pv_energy_wh: float = 0.0
    last_time_s: float = math.nan

    def add(self, site: SiteMeasurements) -> None:
        """Integrate the powers of ``site`` over the time since the previous reading.

        The reading at the end of an interval stands for the whole interval (the converter
        followed one setpoint over it). Gaps longer than an hour are not integrated.
        """
        dt = site.time_s - self.last_time_s
        self.last_time_s = site.time_s
        if not 0.0 < dt <= 3600.0:
            return
        h = dt / 3600.0
        p_bat, p_grid, p_pv = site.battery_ac_power_w, site.grid_power_w, site.pv_power_w
        if math.isfinite(p_bat):
            self.battery_discharged_wh += max(p_bat, 0.0) * h
            self.battery_charged_wh += max(-p_bat, 0.0) * h
        if math.isfinite(p_grid):
            self.grid_import_wh += max(p_grid, 0.0) * h
            self.grid_export_wh += max(-p_grid, 0.0) * h
        if math.isfinite(p_pv):
            self.pv_energy_wh += max(p_pv, 0.0) * h


def decision_body(decision: GateDecision) -> dict[str, Any]:
    """The gate's decision as acknowledgement fields."""
    return {
        "outcome": decision.outcome.value,
        "reason": decision.reason.value,
        "seq": decision.seq,
        "requested_w": _f(decision.requested_w),
        "granted_w": _f(decision.granted_w),
        "source": decision.source,
    }


def mqtt_override(snapshot: Snapshot) -> tuple[str, float]:
    """Mode and signed power [W] of the MQTT override in force (``auto``, 0 W when none)."""
    cmd = snapshot.command
    if cmd is None or cmd.source != SOURCE or not cmd.valid_until_s > snapshot.time_s:
        return "auto", 0.0
    return cmd.mode.value, float(cmd.requested_power_w())


def telemetry_payload(
    snapshot: Snapshot,
    site_name: str,
    energy: EnergyCounters,
    reserve_soc: float,
    outbox: Outbox | None = None,
) -> dict[str, Any]:
    """The JSON telemetry message for ``snapshot``.

    Parameters
    ----------
    snapshot : Snapshot
        The cycle's snapshot.
    site_name : str
        Site name.
    energy : EnergyCounters
        Integrated energies [Wh].
    reserve_soc : float
        Reserve SoC applied to MQTT overrides [fraction].
    outbox : Outbox or None
        The bridge's outbox (its depth and drop count are reported).

    Returns
    -------
    dict
        JSON-ready fields (SI units in the names, SoC/SoH as fractions, NaN as null).
    """
    t, s = snapshot.telemetry, snapshot.site
    gate = t.gate
    mode, setpoint_w = mqtt_override(snapshot)
    cmd = snapshot.command
    return {
        "site": site_name,
        "time_s": _f(snapshot.time_s),
        "soc": _f(t.soc),
        "soc_cell_min": _f(t.soc_cell_min),
        "soc_cell_max": _f(t.soc_cell_max),
        "soh": _f(t.soh),
        "energy_available_wh": _f(t.energy_available_wh),
        "capacity_wh": _f(t.capacity_wh),
        "pack_voltage_v": _f(t.pack_voltage_v),
        "pack_current_a": _f(t.pack_current_a),
        "cell_voltage_min_v": _f(t.cell_voltage_min_v),
        "cell_voltage_max_v": _f(t.cell_voltage_max_v),
        "cell_voltage_avg_v": _f(t.cell_voltage_avg_v),
        "temperature_min_degc": _f(t.temperature_min_degc),
        "temperature_max_degc": _f(t.temperature_max_degc),
        "temperature_avg_degc": _f(t.temperature_avg_degc),
        "charge_current_limit_a": _f(t.charge_current_limit_a),
        "discharge_current_limit_a": _f(t.discharge_current_limit_a),
        "charge_power_limit_w": _f(t.charge_power_limit_w),
        "discharge_power_limit_w": _f(t.discharge_power_limit_w),
        "contactor": t.contactor.value,
        "alarms": list(t.alarms),
        "alarm_severity": dict(snapshot.alarm_severity),
        "latched": list(snapshot.latched),
        "balancing_cells": int(t.balancing_cells),
        "battery_power_w": _f(s.battery_ac_power_w),
        "grid_power_w": _f(s.grid_power_w),
        "pv_power_w": _f(s.pv_power_w),
        "load_power_w": _f(s.load_power_w),
        "import_price_eur_per_kwh": _f(s.import_price_eur_per_kwh),
        "export_price_eur_per_kwh": _f(s.export_price_eur_per_kwh),
        "battery_charged_wh": _f(energy.battery_charged_wh),
        "battery_discharged_wh": _f(energy.battery_discharged_wh),
        "grid_import_wh": _f(energy.grid_import_wh),
        "grid_export_wh": _f(energy.grid_export_wh),
        "pv_energy_wh": _f(energy.pv_energy_wh),
        "gate": decision_body(gate),
        "command": None
        if cmd is None
        else {
            "source": cmd.source,
            "seq": cmd.seq,
            "mode": cmd.mode.value,
            "requested_w": _f(cmd.requested_power_w()),
            "valid_until_s": _f(cmd.valid_until_s),
            "reserve_soc": _f(cmd.reserve_soc),
        },
        "mqtt": {
            "mode": mode,
            "setpoint_w": setpoint_w,
            "reserve_soc": _f(reserve_soc),
            "queued": len(outbox) if outbox is not None else 0,
            "dropped": outbox.dropped if outbox is not None else 0,
        },
        "counters": _jsonable(snapshot.counters),
        "extra": _jsonable(t.extra),
        "contract_version": t.version,
    }


def plan_payload(plan: PlanView) -> dict[str, Any]:
    """The JSON plan message (arrays as lists, times [s, Unix UTC], powers [W])."""
    return {
        "created_s": _f(plan.created_s),
        "time_s": _jsonable(plan.time_s),
        "step_s": _jsonable(plan.step_s),
        "battery_power_w": _jsonable(plan.battery_power_w),
        "soc": _jsonable(plan.soc),
        "grid_import_w": _jsonable(plan.grid_import_w),
        "grid_export_w": _jsonable(plan.grid_export_w),
        "load_w": _jsonable(plan.load_w),
        "pv_w": _jsonable(plan.pv_w),
        "import_price_eur_per_kwh": _jsonable(plan.import_price_eur_per_kwh),
        "export_price_eur_per_kwh": _jsonable(plan.export_price_eur_per_kwh),
        "relaxed": list(plan.relaxed),
    }


def _plan_key(plan: PlanView) -> tuple[object, ...]:
    return (
        repr(plan.created_s),
        plan.time_s.tobytes(),
        plan.battery_power_w.tobytes(),
        plan.soc.tobytes(),
    )


# ----------------------------------------------------------------------------- discovery
def safe_id(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9_-]`` (topic levels, Home Assistant ids)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def _num_template(key: str, scale: float = 1.0, digits: int | None = None) -> str:
    expr = f"value_json.{key}"
    if scale != 1.0:
        expr = f"({expr} * {scale:g})"
    if digits is not None:
        expr = f"{expr} | round({digits})"
    return f"{{{{ {expr} if value_json.{key} is number else None }}}}"


#: Sensors: object_id | name | telemetry key | device_class | state_class (m: measurement,
#: t: total_increasing) | unit; ``%`` sensors show a fraction of the telemetry x 100.
_SENSOR_TABLE = """
soc | State of charge | soc | battery | m | %
soh | State of health | soh | - | m | %
battery_power | Battery power | battery_power_w | power | m | W
grid_power | Grid power | grid_power_w | power | m | W
pv_power | PV power | pv_power_w | power | m | W
load_power | Load power | load_power_w | power | m | W
charge_power_limit | Charge power limit | charge_power_limit_w | power | m | W
discharge_power_limit | Discharge power limit | discharge_power_limit_w | power | m | W
energy_available | Energy available | energy_available_wh | energy_storage | m | Wh
battery_charged_energy | Battery energy charged | battery_charged_wh | energy | t | Wh
battery_discharged_energy | Battery energy discharged | battery_discharged_wh | energy | t | Wh
grid_import_energy | Grid energy imported | grid_import_wh | energy | t | Wh
grid_export_energy | Grid energy exported | grid_export_wh | energy | t | Wh
pv_energy | PV energy | pv_energy_wh | energy | t | Wh
pack_voltage | Pack voltage | pack_voltage_v | voltage | m | V
cell_voltage_min | Cell voltage min | cell_voltage_min_v | voltage | m | V
cell_voltage_max | Cell voltage max | cell_voltage_max_v | voltage | m | V
pack_current | Pack current | pack_current_a | current | m | A
temperature_min | Temperature min | temperature_min_degc | temperature | m | °C
temperature_max | Temperature max | temperature_max_degc | temperature | m | °C
"""


def _sensor_rows() -> list[tuple[str, str, str, str | None, str, str]]:
    rows = []
    for line in _SENSOR_TABLE.strip().splitlines():
        object_id, name, key, dev_class, state, unit = (c.strip() for c in line.split("|"))
        template = _num_template(key, 100, 1) if unit == "%" else _num_template(key)
        state_class = "measurement" if state == "m" else "total_increasing"
        rows.append(
            (object_id, name, template, None if dev_class == "-" else dev_class, state_class, unit)
        )
    return rows


def discovery_messages(
    site_name: str,
    base_topic: str,
    discovery_prefix: str,
    config: SiteConfig | None = None,
    commands_enabled: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant MQTT discovery configs for one site (one device).

    Parameters
    ----------
    site_name : str
        Site name (device name).
    base_topic : str
        ``<prefix>/<site>`` of the bridge.
    discovery_prefix : str
        Home Assistant discovery prefix (``homeassistant``).
    config : SiteConfig or None
        Site configuration (ratings for the setpoint entity's range).
    commands_enabled : bool
        Include the command entities (number, select, button).

    Returns
    -------
    list of (str, dict)
        ``<discovery_prefix>/<component>/<node_id>/<object_id>/config`` topics and their JSON
        payloads, to be published retained.
    """
    node = safe_id(f"openbess_{site_name}")
    state = f"{base_topic}/telemetry"
    device = {
        "identifiers": [node],
        "name": f"openbess {site_name}",
        "manufacturer": "openbess",
        "model": "BESS controller (BMS + EMS)",
        "sw_version": __version__,
    }
    common: dict[str, Any] = {
        "availability_topic": f"{base_topic}/availability",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": "openbess", "sw_version": __version__},
    }
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, object_id: str, body: dict[str, Any]) -> None:
        uid = f"{node}_{object_id}"
        payload = {"unique_id": uid, "object_id": uid, **body, **common}
        out.append((f"{discovery_prefix}/{component}/{node}/{object_id}/config", payload))

    for object_id, name, template, device_class, state_class, unit in _sensor_rows():
        body: dict[str, Any] = {"name": name, "state_topic": state, "value_template": template}
        if device_class is not None:
            body["device_class"] = device_class
        body["state_class"] = state_class
        body["unit_of_measurement"] = unit
        add("sensor", object_id, body)
    add(
        "sensor",
        "contactor",
        {
            "name": "Contactor",
            "state_topic": state,
            "value_template": "{{ value_json.contactor }}",
            "device_class": "enum",
            "options": ["open", "precharge", "closed", "opening", "fault"],
        },
    )
    add(
        "sensor",
        "gate",
        {
            "name": "Gate decision",
            "state_topic": state,
            "value_template": "{{ value_json.gate.outcome }}",
            "device_class": "enum",
            "options": ["accepted", "clamped", "refused", "dropped", "safe_idle"],
        },
    )
    add(
        "sensor",
        "alarms",
        {
            "name": "Alarms",
            "state_topic": state,
            "value_template": (
                "{{ value_json.alarms | join(', ') if value_json.alarms else 'none' }}"
            ),
        },
    )
    add(
        "binary_sensor",
        "fault",
        {
            "name": "Latched fault",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.latched else 'OFF' }}",
            "device_class": "problem",
        },
    )
    if not commands_enabled:
        return out
    limits = CommandLimits.of(config)
    lo = -limits.max_charge_power_w if math.isfinite(limits.max_charge_power_w) else -1e9
    hi = limits.max_discharge_power_w if math.isfinite(limits.max_discharge_power_w) else 1e9
    add(
        "number",
        "power_setpoint",
        {
            "name": "Power setpoint",
            "command_topic": f"{base_topic}/command/setpoint",
            "state_topic": state,
            "value_template": "{{ value_json.mqtt.setpoint_w }}",
            "min": lo,
            "max": hi,
            "step": 10,
            "mode": "box",
            "unit_of_measurement": "W",
            "device_class": "power",
            "qos": 1,
        },
    )
    add(
        "select",
        "mode",
        {
            "name": "Mode",
            "command_topic": f"{base_topic}/command/mode",
            "state_topic": state,
            "value_template": "{{ value_json.mqtt.mode }}",
            "options": list(MODES),
            "qos": 1,
        },
    )
    add(
        "number",
        "reserve_soc",
        {
            "name": "Reserve SoC",
            "command_topic": f"{base_topic}/command/reserve_soc",
            "command_template": "{{ value / 100 }}",
            "state_topic": state,
            "value_template": "{{ (value_json.mqtt.reserve_soc * 100) | round(0) }}",
            "min": 0,
            "max": 100,
            "step": 1,
            "mode": "slider",
            "unit_of_measurement": "%",
            "qos": 1,
        },
    )
    add(
        "button",
        "fault_reset",
        {
            "name": "Fault reset",
            "command_topic": f"{base_topic}/command/reset",
            "payload_press": "all",
            "qos": 1,
        },
    )
    return out


# ----------------------------------------------------------------------------- the bridge
def _check_topic_root(value: str, field_name: str) -> str:
    if (
        not value
        or any(c in value for c in "+#\0")
        or value.startswith("/")
        or value.endswith("/")
        or "//" in value
    ):
        raise ConfigError(
            f"interfaces.mqtt.{field_name} = {value!r}: must be a non-empty topic without "
            "wildcards (+, #), empty levels or leading/trailing '/'"
        )
    return value


def _check_file(path: str | None, field_name: str) -> None:
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"interfaces.mqtt.{field_name} = {path!r}: file not found")


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSL socket that closes itself when the handshake fails.

    paho-mqtt 2.2 leaves the socket of a failed handshake (untrusted certificate) to the
    garbage collector; a bridge retrying every few seconds would pile up open descriptors.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The TLS client context of ``config``: certificate required, TLS >= 1.2.

    Parameters
    ----------
    config : MqttConfig
        ``tls_ca_file`` (None: the system's CAs), ``tls_cert_file`` / ``tls_key_file`` (client
        certificate), ``tls_insecure`` (skip the host name check, the chain is still verified).

    Returns
    -------
    ssl.SSLContext
        For :meth:`paho.mqtt.client.Client.tls_set_context`.

    Raises
    ------
    ConfigError
        If a certificate or key file cannot be loaded.
    """
    try:
        ctx = ssl.create_default_context(cafile=config.tls_ca_file)
        if config.tls_cert_file is not None:
            ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"interfaces.mqtt TLS files could not be loaded: {err}") from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = not config.tls_insecure
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


class _Batcher:
    """A bounded queue drained by one thread that handles everything queued at once."""

    def __init__(
        self, name: str, handle: Callable[[list[tuple[CommandRequest, int]]], None], bound: int
    ) -> None:
        self._queue: deque[tuple[CommandRequest, int]] = deque()
        self._cond = threading.Condition()
        self._handle = handle
        self._bound = bound
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, request: CommandRequest, seq: int) -> bool:
        """Queue a request; False when the queue is full."""
        with self._cond:
            if len(self._queue) >= self._bound:
                return False
            self._queue.append((request, seq))
            self._cond.notify()
            return True

    def stop(self, timeout_s: float) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or bool(self._queue))
                if not self._queue:  # stopped, and what was queued has been handled
                    return
                batch = list(self._queue)
                self._queue.clear()
            try:
                self._handle(batch)
            except Exception:  # the dispatcher must outlive any one batch
                log.exception("MQTT command batch failed")


@dataclass
class BridgeStats:
    """Counters of one bridge (see :meth:`MqttBridge.stats`)."""

    connects: int = 0
    disconnects: int = 0
    connect_errors: int = 0
    published: int = 0
    commands_received: int = 0
    commands_refused: int = 0
    acks: int = 0
    last_error: str = ""


class MqttBridge:
    """The MQTT interface of a running site (see the module docstring and ``docs/mqtt.md``).

    Parameters
    ----------
    config : MqttConfig
        Broker address, credentials, TLS, topic prefixes, discovery and command switches,
        telemetry interval [s, wall] and outbox capacity.

    Raises
    ------
    ConfigError
        If a topic prefix is unusable, a TLS file is missing, TLS files are given without
        ``tls = true``, or a password is given without a username.
    """

    name: str = "mqtt"

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        _check_topic_root(config.prefix, "prefix")
        _check_topic_root(config.discovery_prefix, "discovery_prefix")
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            _check_file(getattr(config, key), key)
            if getattr(config, key) is not None and not config.tls:
                raise ConfigError(f"interfaces.mqtt.{key} is set but interfaces.mqtt.tls is false")
        if config.tls_key_file is not None and config.tls_cert_file is None:
            raise ConfigError("interfaces.mqtt.tls_key_file needs interfaces.mqtt.tls_cert_file")
        if config.password is not None and config.username is None:
            raise ConfigError("interfaces.mqtt.password is set without interfaces.mqtt.username")
        self._hub: Hub | None = None
        self._client: mqtt.Client | None = None
        self._outbox = Outbox(config.queue_max, min(SEND_WINDOW, config.queue_max))
        self._connected = threading.Event()
        self._running = False
        self._lock = threading.Lock()
        self._stats = BridgeStats()
        self._energy = EnergyCounters()
        self._next_telemetry = -math.inf
        self._plan_key: tuple[object, ...] | None = None
        self._last_plan: PlanView | None = None
        self._last_wall_s = math.nan
        self._cycle_wall_s = 0.0
        self._seq = 0
        self._subscribe_mid = -1
        self._reserve_soc = 0.0
        self._setpoint_w = 0.0
        self._commands = _Batcher("mqtt-commands", self._run_commands, MAX_PENDING_COMMANDS)
        self._resets = _Batcher("mqtt-resets", self._run_resets, MAX_PENDING_COMMANDS)
        self._sender: threading.Thread | None = None
        self._limits = CommandLimits()
        self.site = ""
        self.base_topic = ""

    # ------------------------------------------------------------------ public
    @property
    def connected(self) -> bool:
        """True while the broker connection is up (and the command subscription granted)."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or ``timeout_s`` wall seconds passed; True if connected."""
        return self._connected.wait(timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters: connections, messages published (acknowledged by the broker), queued and
        dropped messages, commands received, refused and acknowledged, last connection error."""
        with self._lock:
            s = self._stats
            return {
                "connected": self.connected,
                "connects": s.connects,
                "disconnects": s.disconnects,
                "connect_errors": s.connect_errors,
                "published": s.published,
                "queued": len(self._outbox),
                "in_flight": self._outbox.in_flight,
                "dropped": self._outbox.dropped,
                "commands_received": s.commands_received,
                "commands_refused": s.commands_refused,
                "acks": s.acks,
                "last_error": s.last_error,
            }

    def start(self, hub: Hub) -> None:
        """Connect in the background and start publishing and accepting commands.

        Returns at once; the connection (and every reconnection) is made by paho's thread.

        Parameters
        ----------
        hub : Hub
            The running site's hub.

        Raises
        ------
        RuntimeError
            If the bridge was already started.
        """
        if self._running or self._client is not None:
            raise RuntimeError("an MQTT bridge is started once (make a new one to restart)")
        cfg = self.config
        self._hub = hub
        self.site = safe_id(hub.site_name)
        self.base_topic = f"{cfg.prefix}/{self.site}"
        self._limits = CommandLimits.of(hub.config)
        if hub.config is not None:
            self._reserve_soc = float(hub.config.ems.reserve_soc)
        # Sequence numbers must grow across bridges of one process (the gate remembers them).
        self._seq = time.time_ns() // 1000
        client_id = cfg.client_id or f"openbess-{self.site}-{os.getpid()}-{id(self) % 10000}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.suppress_exceptions = True  # the callbacks log their own errors
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(1, 8)
        client.will_set(f"{self.base_topic}/availability", "offline", qos=1, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            client.tls_set_context(tls_context(cfg))
            client.tls_insecure_set(cfg.tls_insecure)
        elif cfg.username is not None and cfg.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("MQTT credentials sent without TLS to %s", cfg.host)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._running = True
        self._commands.start()
        self._resets.start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-send", daemon=True)
        self._sender.start()
        hub.subscribe(self._on_snapshot)
        hub.subscribe_events(self._on_event)
        client.connect_async(cfg.host, cfg.port, keepalive=KEEPALIVE_S)
        client.loop_start()
        log.info("MQTT bridge for %s -> %s:%d (%s)", self.base_topic, cfg.host, cfg.port, client_id)

    def stop(self) -> None:
        """Publish ``offline``, disconnect and release the threads (idempotent)."""
        if not self._running:
            return
        self._running = False
        # answer what is already queued while still connected
        self._commands.stop(self._decision_wait_s() + 1.0)
        self._resets.stop(self._decision_wait_s() + 1.0)
        client = self._client
        if client is not None and self.connected:
            try:
                self._outbox.sending()
                info = client.publish(
                    f"{self.base_topic}/availability", "offline", qos=1, retain=True
                )
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError) as err:
                log.warning("could not publish offline: %s", err)
        self._outbox.close()
        if client is not None:
            client.disconnect()
            client.loop_stop()
            # paho 2.2 closes its wake-up socket pair only when garbage collected:
            # reinitialise() closes every socket of the (now unused) client at once
            client.reinitialise()
        if self._sender is not None:
            self._sender.join(timeout=5.0)
        self._connected.clear()
        left = len(self._outbox)
        if left:
            log.info("MQTT bridge stopped with %d unsent messages", left)

    # ------------------------------------------------------------------ loop side
    def _on_snapshot(self, snap: Snapshot) -> None:
        if not self._running:
            return
        self._energy.add(snap.site)
        now = time.monotonic()
        if math.isfinite(self._last_wall_s):
            self._cycle_wall_s = now - self._last_wall_s
        self._last_wall_s = now
        if now >= self._next_telemetry:
            self._next_telemetry = now + self.config.publish_interval_s
            body = telemetry_payload(snap, self.site, self._energy, self._reserve_soc, self._outbox)
            self._outbox.put(Message(f"{self.base_topic}/telemetry", _dumps(body), retain=True))
        plan = snap.plan
        if plan is not None:
            key = _plan_key(plan)
            if key != self._plan_key:
                self._plan_key = key
                self._last_plan = plan
                self._outbox.put(self._plan_message(plan))

    def _decision_wait_s(self) -> float:
        """How long to wait for the gate: three cycles of the loop, within the bounds."""
        return min(max(DECISION_WAIT_S, 3.0 * self._cycle_wall_s), MAX_DECISION_WAIT_S)

    def _plan_message(self, plan: PlanView) -> Message:
        return Message(f"{self.base_topic}/plan", lambda: _dumps(plan_payload(plan)), retain=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        if not self._running:
            return
        self._outbox.put(Message(f"{self.base_topic}/event", _dumps(_jsonable(event))))

    # ------------------------------------------------------------------ sender thread
    def _send_loop(self) -> None:
        while self._running:
            msg = self._outbox.next(0.5)
            if msg is None:
                continue
            client = self._client
            if client is None:  # pragma: no cover - set before the thread starts
                break
            try:
                info = client.publish(msg.topic, msg.body(), qos=msg.qos, retain=msg.retain)
            except Exception:  # the sender must outlive one bad message
                log.exception("could not publish on %s", msg.topic)
                self._outbox.acked()
                continue
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                # paho refused it outright (not queued): give the slot back
                log.warning("paho refused a message on %s: %s", msg.topic, info.rc)
                self._outbox.acked()

    def _publish_now(self, topic: str, payload: bytes | str, retain: bool, qos: int = 1) -> None:
        """Hand a message straight to paho (availability, discovery, acknowledgements)."""
        client = self._client
        if client is None:
            return
        self._outbox.sending()
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._outbox.acked()

    # ------------------------------------------------------------------ paho callbacks
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._stats.connect_errors += 1
                self._stats.last_error = f"connection refused: {reason_code}"
            log.warning("MQTT broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._stats.connects += 1
            again = self._stats.connects > 1
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        plan = self._last_plan
        if again and plan is not None:  # the broker may have lost the retained plan
            self._outbox.put(self._plan_message(plan))
        topics: list[tuple[str, int]] = []
        try:
            self._publish_now(f"{self.base_topic}/availability", "online", retain=True)
            if self.config.discovery:
                self._publish_discovery()
                topics.append((f"{self.config.discovery_prefix}/status", 1))
            if self.config.commands_enabled:
                topics.append((f"{self.base_topic}/command/#", 1))
            if topics:
                _, mid = client.subscribe(topics)
                self._subscribe_mid = -1 if mid is None else mid
        except Exception:  # never let a callback kill paho's thread
            log.exception("MQTT on_connect failed")
        self._outbox.set_open(True)
        if not topics:
            self._connected.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid != self._subscribe_mid:
            return
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            with self._lock:
                self._stats.last_error = f"subscription refused: {', '.join(failed)}"
            log.warning("MQTT broker refused a subscription: %s", failed)
        self._connected.set()  # connected (and listening for commands when allowed)

    def _publish_discovery(self) -> None:
        hub = self._hub
        for topic, payload in discovery_messages(
            hub.site_name if hub is not None else self.site,
            self.base_topic,
            self.config.discovery_prefix,
            hub.config if hub is not None else None,
            self.config.commands_enabled,
        ):
            self._publish_now(topic, _dumps(payload), retain=True)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        with self._lock:
            self._stats.connect_errors += 1
            self._stats.last_error = "could not connect"
        log.debug("MQTT connection to %s:%d failed", self.config.host, self.config.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._outbox.set_open(False)
        if was:
            with self._lock:
                self._stats.disconnects += 1
                self._stats.last_error = f"disconnected: {reason_code}"
            if self._running:
                log.warning("MQTT disconnected (%s); reconnecting", reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._outbox.acked()
        with self._lock:
            self._stats.published += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._route(message)
        except Exception:  # never let a callback kill paho's thread
            log.exception("MQTT message on %r failed", message.topic)

    # ------------------------------------------------------------------ commands
    def _route(self, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic == f"{self.config.discovery_prefix}/status":
            if message.payload == b"online" and self.config.discovery:
                self._publish_discovery()
            return
        prefix = f"{self.base_topic}/command/"
        if not topic.startswith(prefix) or not self._running:
            return
        name = topic[len(prefix) :]
        with self._lock:
            self._stats.commands_received += 1
            self._seq += 1
            seq = self._seq
        hub = self._hub
        if hub is None:  # pragma: no cover - set before subscribing
            return
        try:
            request = parse_command(name, bytes(message.payload), self._limits, message.retain)
        except CommandInputError as err:
            self._refuse(name, err.reason, str(err), seq)
            return
        queue = self._resets if request.name == "reset" else self._commands
        if not queue.offer(request, seq):
            self._refuse(name, "flood", f"more than {MAX_PENDING_COMMANDS} commands pending", seq)

    def _refuse(self, name: str, reason: str, message: str, seq: int) -> None:
        hub = self._hub
        if hub is not None:
            hub.reject(SOURCE, reason)
        with self._lock:
            self._stats.commands_refused += 1
        log.debug("MQTT command %r refused: %s", name, message)
        self._ack(
            name,
            {
                "outcome": "refused",
                "reason": "invalid",
                "error": reason,
                "message": message,
                "seq": seq,
                "granted_w": 0.0,
                "decided_by": "bridge",
            },
        )

    def _ack(self, name: str, body: dict[str, Any], request_id: str | None = None) -> None:
        hub = self._hub
        snap = hub.latest() if hub is not None else None
        full = {
            "command": name,
            "id": request_id,
            "time_s": _f(snap.time_s) if snap is not None else None,
            "outcome": "",
            "reason": "",
            "seq": -1,
            "requested_w": None,
            "granted_w": None,
            "source": SOURCE,
            "decided_by": "bridge",
            "error": None,
            "message": "",
            **body,
        }
        with self._lock:
            self._stats.acks += 1
        # the topic level is the command name as received: strip what no topic may hold
        level = name.replace("+", "_").replace("#", "_") or "_"
        # Straight to paho, not through the outbox: a flood of answers must never push queued
        # history out (paho keeps a QoS 1 answer across a reconnection).
        self._publish_now(f"{self.base_topic}/ack/{level}", _dumps(full), False, ACK_QOS)

    def _run_resets(self, batch: list[tuple[CommandRequest, int]]) -> None:
        hub = self._hub
        if hub is None:  # pragma: no cover - set at start
            return
        results: dict[str, tuple[bool, str]] = {}
        for request, seq in batch:
            code = request.reset_code or "all"
            if code not in results:  # one request per fault code and batch
                results[code] = hub.request_reset(code, SOURCE, self._decision_wait_s())
            ok, msg = results[code]
            self._ack(
                request.name,
                {
                    "outcome": "accepted" if ok else "refused",
                    "reason": "none" if ok else "reset_refused",
                    "message": msg,
                    "seq": seq,
                    "decided_by": "bms",
                },
                request.request_id,
            )

    def _run_commands(self, batch: list[tuple[CommandRequest, int]]) -> None:
        """Submit the newest command of ``batch`` to the gate; the older ones are superseded.

        Everything queued while the previous command waited for its cycle would reach the gate
        in the same cycle, where the newest override of a source replaces the older ones
        (``dropped`` / ``superseded``). Answering those at once keeps one command per cycle
        in flight, whatever the rate.
        """
        hub = self._hub
        if hub is None:  # pragma: no cover - set at start
            return
        snap = hub.latest()
        if snap is None:
            for request, seq in batch:
                self._ack(
                    request.name,
                    {"outcome": "refused", "reason": "not_ready", "seq": seq},
                    request.request_id,
                )
            return
        cmd = snap.command
        current = cmd if cmd is not None and cmd.source == SOURCE else None
        built: list[tuple[CommandRequest, Command]] = []
        hand_back: tuple[CommandRequest, int] | None = None  # a pending ``mode = auto``
        for request, seq in batch:
            if request.mode == "auto":  # supersedes what came before it in the batch
                for older, replaced in built:
                    self._ack_superseded(older, replaced, f"seq {seq} (auto)")
                if hand_back is not None:
                    self._ack_superseded(hand_back[0], None, f"seq {seq} (auto)", hand_back[1])
                built, hand_back, current = [], (request, seq), None
                continue
            if hand_back is not None:  # a later command replaces the hand-back
                self._ack_superseded(hand_back[0], None, f"seq {seq}", hand_back[1])
                hand_back = None
            if request.name == "reserve_soc" and request.reserve_soc is not None:
                with self._lock:
                    self._reserve_soc = request.reserve_soc
            command = self._command_for(request, seq, snap, current)
            if command is None:  # reserve_soc without an override in force
                self._ack(
                    request.name,
                    {
                        "outcome": "stored",
                        "reason": "none",
                        "message": "reserve_soc applies to the next MQTT override",
                        "seq": seq,
                        "decided_by": "bridge",
                    },
                    request.request_id,
                )
                continue
            built.append((request, command))
            current = command
        if hand_back is not None:
            # the MQTT override ends at the next cycle and the EMS's command applies again
            hub.cancel_override(SOURCE)
            self._ack(
                hand_back[0].name,
                {
                    "outcome": "accepted",
                    "reason": "none",
                    "message": "override withdrawn at the next cycle: the EMS's command applies",
                    "seq": hand_back[1],
                    "requested_w": None,
                    "granted_w": None,
                    "decided_by": "hub",
                },
                hand_back[0].request_id,
            )
            return
        if not built:
            return
        newest = built[-1][1].seq
        for request, command in built[:-1]:
            self._ack_superseded(request, command, f"seq {newest}")
        request, command = built[-1]
        wait_s = self._decision_wait_s()
        decision = hub.submit(command, wait_s)
        if decision is None:
            self._ack(
                request.name,
                {
                    "outcome": "pending",
                    "reason": "no_decision",
                    "message": f"no gate decision within {wait_s:.3g} s",
                    "seq": command.seq,
                    "requested_w": _f(command.requested_power_w()),
                    "decided_by": "gate",
                },
                request.request_id,
            )
            return
        self._ack(
            request.name, {**decision_body(decision), "decided_by": "gate"}, request.request_id
        )

    def _ack_superseded(
        self,
        request: CommandRequest,
        command: Command | None,
        by: str,
        seq: int | None = None,
    ) -> None:
        """Answer a request of a batch that a newer one replaced before the gate saw it."""
        self._ack(
            request.name,
            {
                "outcome": "dropped",
                "reason": "superseded",
                "message": f"superseded by {by} before reaching the gate",
                "seq": command.seq if command is not None else seq,
                "requested_w": _f(command.requested_power_w()) if command is not None else None,
                "granted_w": 0.0,
                "decided_by": "bridge",
            },
            request.request_id,
        )

    def _command_for(
        self, request: CommandRequest, seq: int, snap: Snapshot, current: Command | None
    ) -> Command | None:
        """The override ``request`` asks for (None: a reserve with no override to apply to).

        ``current`` is the MQTT override the request builds on: the one in force, or the newest
        one of the same batch.
        """
        with self._lock:
            reserve = self._reserve_soc
            if request.power_w is not None and request.mode == Mode.POWER.value:
                self._setpoint_w = request.power_w
            setpoint = self._setpoint_w
        now = snap.time_s
        duration = (
            request.duration_s if request.duration_s is not None else self.config.command_duration_s
        )
        if request.name == "reserve_soc":
            cmd = current
            if cmd is None or not cmd.valid_until_s > now:
                return None
            return Command(seq, cmd.mode, cmd.power_w, cmd.valid_until_s, reserve, SOURCE)
        mode = request.mode or Mode.IDLE.value
        power = request.power_w
        if power is None:  # the mode topic reuses the last setpoint
            power = abs(setpoint) if mode in (Mode.CHARGE.value, Mode.DISCHARGE.value) else setpoint
        if request.reserve_soc is not None:  # a JSON command's own reserve
            reserve = request.reserve_soc
        return Command(seq, Mode(mode), power, now + duration, reserve, SOURCE)
