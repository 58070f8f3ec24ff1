"""SunSpec Modbus TCP server: the site as a SunSpec battery, steerable through the gate.

:class:`SunSpecServer` serves, from register 40000 (``SunS``), the chain

* model 1 (common): manufacturer ``openbess``, model, options (EMS strategy), version, serial
  number (the site name), device address;
* model 802 (battery base): ratings, SoC, SoH, voltages, current, limits, state, alarms
  (``Evt1`` from ``Telemetry.alarms`` and ``Snapshot.alarm_severity``) and, in the vendor
  bitfields, the gate's decision of the cycle (``EvtVnd1``) and of the last Modbus command
  (``EvtVnd2``);
* model 803 (lithium-ion bank): bank extremes and one repeating block per string from
  ``Snapshot.cells``;
* model 124 (basic storage controls): the setpoint (``StorCtl_Mod``, ``OutWRte``, ``InWRte``),
  the reserve (``MinRsvPct``) and the revert timeout (``InOutWRte_RvrtTms``);
* the end marker (``0xFFFF``, length 0).

The registers are rebuilt in the control loop's thread by a :meth:`Hub.subscribe` callback,
right after each cycle (so a read never waits for encoding). pymodbus serves them from its own
thread and event loop.

Writes are refused unless ``writes_enabled``; then only from ``allowed_clients``. Every written
value is range-checked (ILLEGAL DATA VALUE otherwise, counted with :meth:`Hub.reject`, nothing
changes). A valid write to the model 124 controls becomes a ``Command(source="modbus")``, valid
for the revert timeout in site seconds, queued with :meth:`Hub.submit`: it passes the same gate
as the EMS's commands. Any write to 802 ``CtrlHb`` is a heartbeat; without one for
``heartbeat_timeout_s`` wall seconds the override is cancelled and an event is published.
See ``docs/modbus.md`` for the register map and the semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

import openbess
from openbess.contract import Command, ContactorState, GateDecision, Mode, Outcome, Reason
from openbess.errors import ConfigError
from openbess.io.hub import Hub, Snapshot
from openbess.io.sunspec_models import (
    BASE_ADDRESS,
    BATTERY,
    COMMON,
    END_MODEL_ID,
    LITHIUM_ION,
    STORAGE,
    SUNS_MARKER,
    Layout,
    decode_register,
    event_bits,
    extreme_index,
    locate,
    nan_extreme,
    nan_mean,
    pack_model,
    scale_factor_for,
    string_statistics,
)

if TYPE_CHECKING:
    from openbess.config import ModbusConfig, SiteConfig

log = logging.getLogger(__name__)

#: ``Command.source`` and :meth:`Hub.reject` interface name.
SOURCE = "modbus"
#: Function codes served: read holding registers, write single and write multiple registers.
FUNCTIONS = frozenset({3, 6, 16})
#: Registers reserved behind 40000 (the map of a 64-string bank fits).
_RESERVED_REGISTERS = 2400

#: 124 ``StorCtl_Mod`` bits.
CHARGE_BIT = 1
DISCHARGE_BIT = 2

#: 802 / 124 ``ChaSt`` values.
CHA_ST_OFF, CHA_ST_EMPTY, CHA_ST_DISCHARGING, CHA_ST_CHARGING = 1, 2, 3, 4
CHA_ST_FULL, CHA_ST_HOLDING = 5, 6
#: 802 ``State`` values.
STATE_DISCONNECTED, STATE_INITIALIZING, STATE_CONNECTED = 1, 2, 3
STATE_SUSPENDING, STATE_FAULT = 6, 99
#: 802 ``Typ``: lithium-ion.
TYPE_LITHIUM_ION = 4

#: Vendor bitfields (802 ``EvtVnd1``: the gate's decision of the cycle; ``EvtVnd2``: the
#: decision on the last Modbus command): bit of each outcome and reason, and flags.
OUTCOME_BIT: dict[Outcome, int] = {o: k for k, o in enumerate(Outcome)}
REASON_BIT: dict[Reason, int] = {r: 8 + k for k, r in enumerate(Reason)}
VND_SOURCE_MODBUS = 24  # EvtVnd1: the cycle's command came from Modbus
VND_HEARTBEAT_LOST = 25  # EvtVnd1: the watchdog cancelled the Modbus override
VND_WRITES_ENABLED = 26  # EvtVnd1: writes are enabled
VND_LATCHED = 27  # EvtVnd1: a latched fault waits for a reset (802 AlmRst)
VND_CONTROL_ACTIVE = 28  # EvtVnd1: a Modbus setpoint is in force (not reverted/cancelled)
VND_PENDING = 24  # EvtVnd2: the last Modbus command waits for the gate
VND_NO_ANSWER = 25  # EvtVnd2: the loop did not answer the last Modbus command


#: Reasons of a decision that leave no override installed in the gate (early refusals).
_NOT_INSTALLED = frozenset({Reason.INVALID, Reason.OUT_OF_ORDER, Reason.EXPIRED})


def decision_bits(decision: GateDecision) -> int:
    """Outcome bit (0-4) and reason bit (8-18) of a gate decision."""
    return (1 << OUTCOME_BIT[decision.outcome]) | (1 << REASON_BIT[decision.reason])


@dataclass(frozen=True, slots=True)
class _Writable:
    """A point a client may write: model, name and raw register range."""

    model_id: int
    name: str
    low: int
    high: int


#: Points a client may write (raw register values, signed for int16), everything else is
#: refused with ILLEGAL DATA ADDRESS.
WRITABLE: tuple[_Writable, ...] = (
    _Writable(802, "CtrlHb", 0, 0xFFFF),
    _Writable(802, "AlmRst", 0, 1),
    _Writable(124, "StorCtl_Mod", 0, CHARGE_BIT | DISCHARGE_BIT),
    _Writable(124, "MinRsvPct", 0, 10000),
    _Writable(124, "OutWRte", -10000, 10000),
    _Writable(124, "InWRte", -10000, 10000),
    _Writable(124, "InOutWRte_RvrtTms", 1, 0xFFFE),
)
#: Fixed scale factors of the control points (percent with 0.01 resolution).
PCT_SF = -2


@dataclass(frozen=True, slots=True)
class Control:
    """Raw register values of the writable points.

    Parameters
    ----------
    stor_ctl_mod : int
        124 ``StorCtl_Mod``: bit 0 applies ``InWRte`` (charge), bit 1 ``OutWRte`` (discharge).
    min_rsv : int
        124 ``MinRsvPct`` [0.01 %]: reserve SoC of the Modbus command.
    out_w_rte, in_w_rte : int
        124 ``OutWRte`` / ``InWRte`` [0.01 % of the discharge / charge rating], signed.
    revert_s : int
        124 ``InOutWRte_RvrtTms`` [s, site time]: validity of each setpoint write.
    ctrl_hb : int
        802 ``CtrlHb``: last heartbeat value written.
    alm_rst : int
        802 ``AlmRst``: 1 while a reset request is on its way.
    """

    stor_ctl_mod: int = 0
    min_rsv: int = 0
    out_w_rte: int = 0
    in_w_rte: int = 0
    revert_s: int = 300
    ctrl_hb: int = 0
    alm_rst: int = 0

    def registers(self) -> dict[tuple[int, str], int]:
        """(model, point) -> raw value (signed for the rates)."""
        return {
            (124, "StorCtl_Mod"): self.stor_ctl_mod,
            (124, "MinRsvPct"): self.min_rsv,
            (124, "OutWRte"): self.out_w_rte,
            (124, "InWRte"): self.in_w_rte,
            (124, "InOutWRte_RvrtTms"): self.revert_s,
            (802, "CtrlHb"): self.ctrl_hb,
            (802, "AlmRst"): self.alm_rst,
        }


_FIELD = {
    (124, "StorCtl_Mod"): "stor_ctl_mod",
    (124, "MinRsvPct"): "min_rsv",
    (124, "OutWRte"): "out_w_rte",
    (124, "InWRte"): "in_w_rte",
    (124, "InOutWRte_RvrtTms"): "revert_s",
    (802, "CtrlHb"): "ctrl_hb",
    (802, "AlmRst"): "alm_rst",
}


def setpoint_w(control: Control, charge_rating_w: float, discharge_rating_w: float) -> float:
    """Battery AC power asked by the 124 controls [W], positive = discharge.

    Parameters
    ----------
    control : Control
        Register values.
    charge_rating_w, discharge_rating_w : float
        References of ``InWRte`` and ``OutWRte`` [W] (802 ``WChaRteMax`` / ``WDisChaRteMax``).

    Returns
    -------
    float
        ``OutWRte`` % of the discharge rating when bit 1 is set, minus ``InWRte`` % of the
        charge rating when bit 0 is set (negative rates reverse the direction).
    """
    power = 0.0
    if control.stor_ctl_mod & DISCHARGE_BIT:
        power += control.out_w_rte * 1e-4 * discharge_rating_w
    if control.stor_ctl_mod & CHARGE_BIT:
        power -= control.in_w_rte * 1e-4 * charge_rating_w
    return power


@dataclass(frozen=True, slots=True)
class Ratings:
    """Nameplate figures of the site (NaN when unknown).

    Parameters
    ----------
    charge_power_w, discharge_power_w : float
        AC power ratings [W].
    capacity_wh : float
        Nominal energy [Wh].
    capacity_ah : float
        Nominal charge of the bank [Ah].
    soc_min, soc_max : float
        Operating SoC window [fraction].
    reserve_soc : float
        The EMS reserve [fraction] (initial value of ``MinRsvPct``).
    ramp_pct_per_s : float
        Converter ramp [% of the charge rating per s] (100: reaches any setpoint in a cycle).
    strategy : str
        EMS strategy (model 1 ``Opt``).
    pack_voltage_v : float
        Pack voltage when the map was laid out [V] (sizes the voltage and current scales).
    """

    charge_power_w: float
    discharge_power_w: float
    capacity_wh: float
    capacity_ah: float
    soc_min: float
    soc_max: float
    reserve_soc: float
    ramp_pct_per_s: float
    strategy: str
    pack_voltage_v: float

    @classmethod
    def of(cls, config: SiteConfig | None, snap: Snapshot) -> Ratings:
        """Ratings from the site configuration and the first snapshot."""
        tel = snap.telemetry
        nominal_wh = tel.capacity_wh / tel.soh if tel.soh > 0 else tel.capacity_wh
        v = tel.pack_voltage_v if math.isfinite(tel.pack_voltage_v) else math.nan
        if config is None:
            nan = math.nan
            return cls(nan, nan, nominal_wh, nan, nan, nan, 0.0, 100.0, "", v)
        b = config.battery
        ah = math.nan
        if b.cell_capacity_ah is not None:
            ah = b.cell_capacity_ah * b.cells_parallel * b.n_strings
        ramp = config.converter.ramp_w_per_s
        return cls(
            charge_power_w=b.max_charge_power_w,
            discharge_power_w=b.max_discharge_power_w,
            capacity_wh=nominal_wh,
            capacity_ah=ah,
            soc_min=b.soc_min,
            soc_max=b.soc_max,
            reserve_soc=config.ems.reserve_soc,
            ramp_pct_per_s=100.0 if ramp is None else min(100.0 * ramp / b.max_charge_power_w, 650),
            strategy=config.ems.strategy,
            pack_voltage_v=v,
        )

    def scale_factors(self) -> dict[str, int | None]:
        """Scale factor of every ``*_SF`` point, fixed for the life of the server."""
        power = max(_finite(self.charge_power_w), _finite(self.discharge_power_w), 1000.0)
        volts = max(_finite(self.pack_voltage_v), 1.0)
        amps = 3.0 * power / volts
        w_rtg = scale_factor_for(power, signed=False, finest=0)
        ah = _finite(self.capacity_ah)
        ah_sf = scale_factor_for(ah, signed=False, finest=-1) if ah > 0 else None
        v_sf = scale_factor_for(2.0 * volts, signed=False, finest=-2)
        return {
            "AHRtg_SF": ah_sf,
            "WHRtg_SF": scale_factor_for(_finite(self.capacity_wh), signed=False, finest=0),
            "WChaDisChaMax_SF": w_rtg,
            "DisChaRte_SF": None,
            "SoC_SF": PCT_SF,
            "DoD_SF": PCT_SF,
            "SoH_SF": PCT_SF,
            "V_SF": v_sf,
            "CellV_SF": -3,
            "A_SF": scale_factor_for(amps, signed=True, finest=-2),
            "AMax_SF": scale_factor_for(amps, signed=False, finest=-2),
            "W_SF": scale_factor_for(1.5 * power, signed=True, finest=0),
            "ModTmp_SF": -1,
            "WChaMax_SF": w_rtg,
            "WChaDisChaGra_SF": PCT_SF,
            "VAChaMax_SF": None,
            "MinRsvPct_SF": PCT_SF,
            "ChaState_SF": PCT_SF,
            "StorAval_SF": ah_sf,
            "InBatV_SF": v_sf,
            "InOutWRte_SF": PCT_SF,
        }


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def _none_if_zero(k: int) -> int | None:
    return k if k > 0 else None


@dataclass
class _Request:
    """Per-request context (a contextvar): the client address and whether it was counted."""

    peer: str
    counted: bool = False


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "openbess_modbus_request", default=None
)


@dataclass
class _Status:
    """What the clients should see of the Modbus control path."""

    control_active: bool = False
    control_until_s: float = -math.inf
    heartbeat_lost: bool = False
    last_decision: GateDecision | None = None
    pending: bool = False
    no_answer: bool = False
    last_reset: tuple[bool, str] | None = None
    counters: dict[str, int] = field(default_factory=dict)


class _Handler(ServerRequestHandler):  # type: ignore[misc]
    """Connection handler: frame sanity, unit id and function filter, client address."""

    def __init__(self, owner: _Server) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect
        )
        self.sunspec: SunSpecServer = owner.sunspec

    def _peer(self) -> str:
        transport = self.transport
        info = transport.get_extra_info("peername") if transport is not None else None
        return str(info[0]) if info else ""

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        """Drop the connection on a frame whose MBAP header is not Modbus TCP."""
        if len(data) >= 7:
            protocol = int.from_bytes(data[2:4], "big")
            length = int.from_bytes(data[4:6], "big")
            if protocol != 0 or not 2 <= length <= 254:
                self.sunspec.count("malformed_frame")
                log.info("modbus: malformed frame from %s, connection closed", self._peer())
                self.close()
                return len(data)
        return int(super().callback_data(data, addr))

    async def handle_request(self) -> None:
        """Check unit id and function code, remember the client, then serve."""
        pdu = self.last_pdu
        if pdu is None:
            return
        req = _Request(self._peer())
        token = _REQUEST.set(req)
        try:
            code: ExcCodes | None = None
            if pdu.dev_id != self.sunspec.unit_id:
                code, reason = ExcCodes.GATEWAY_NO_RESPONSE, "unit_id"
            elif pdu.function_code not in FUNCTIONS:
                code, reason = ExcCodes.ILLEGAL_FUNCTION, "function_code"
            if code is None:
                await super().handle_request()  # type: ignore[no-untyped-call]
                return
            self.sunspec.count(reason)
            req.counted = True
            response = ExceptionResponse(pdu.function_code, code)
            response.transaction_id = pdu.transaction_id
            response.dev_id = pdu.dev_id
            self.server_send(response, self.last_addr)  # type: ignore[no-untyped-call]
        finally:
            _REQUEST.reset(token)


class _Server(ModbusTcpServer):  # type: ignore[misc]
    """pymodbus TCP server whose connections use :class:`_Handler`."""

    def __init__(self, sunspec: SunSpecServer, device: SimDevice, address: tuple[str, int]):
        self.sunspec = sunspec
        super().__init__(device, address=address, trace_pdu=sunspec.trace_pdu)

    def callback_new_connection(self) -> _Handler:
        """A handler for a new client connection."""
        return _Handler(self)


class SunSpecServer:
    """SunSpec Modbus TCP server of a site (the ``modbus`` interface).

    Parameters
    ----------
    config : ModbusConfig
        Host, port, unit id, whether writes are enabled, the client addresses allowed to write
        and the heartbeat timeout [s, wall].

    Notes
    -----
    Implements :class:`openbess.io.runtime.Interface`: :meth:`start` returns once the socket
    listens (port 0 picks a free port: see :attr:`port`), :meth:`stop` closes it.
    """

    name = "modbus"

    def __init__(self, config: ModbusConfig) -> None:
        self.config = config
        self.unit_id = config.unit_id
        self._allowed = frozenset(config.allowed_clients)
        self._hub: Hub | None = None
        self._lock = threading.Lock()
        self._layout: Layout | None = None
        self._ratings: Ratings | None = None
        self._scale: dict[str, int | None] = {}
        self._image: list[int] | None = None
        self._snap: Snapshot | None = None
        self._step_s = 1.0
        self._control = Control(revert_s=int(config.default_revert_s))
        self._status = _Status()
        self._seq = time.time_ns() // 1_000_000
        self._latency_s: deque[float] = deque(maxlen=1000)
        self._updates = 0
        self._requests = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._port = 0
        self._stopped = threading.Event()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The TCP port listened on (the configured one, or the one picked for port 0)."""
        return self._port

    def start(self, hub: Hub) -> None:
        """Subscribe to the hub and listen; returns once the socket listens.

        Raises
        ------
        ConfigError
            If the host and port cannot be listened on.
        RuntimeError
            If the server was already started.
        """
        if self._thread is not None:
            raise RuntimeError("the modbus interface is already started")
        self._hub = hub
        hub.subscribe(self._on_snapshot)
        latest = hub.latest()
        if latest is not None:
            self._on_snapshot(latest)
        self._worker = threading.Thread(target=self._work, name="modbus-commands", daemon=True)
        self._worker.start()
        self._thread = threading.Thread(target=self._run, name="modbus-server", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._start_error is not None or not self._ready.is_set():
            err = self._start_error
            self.stop()
            raise ConfigError(
                f"interfaces.modbus: cannot listen on {self.config.host}:{self.config.port} "
                f"({err or 'timeout'})"
            ) from err
        log.info(
            "SunSpec Modbus server on %s:%d (unit %d, writes %s)",
            self.config.host,
            self._port,
            self.unit_id,
            "enabled" if self.config.writes_enabled else "disabled",
        )

    def stop(self) -> None:
        """Close the socket, stop the threads (idempotent)."""
        self._stopped.set()
        if self._hub is not None:
            self._hub.unsubscribe(self._on_snapshot)
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop_event.set)
        if self._thread is not None:
            self._thread.join(10.0)
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(10.0)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as err:
            self._start_error = err
            log.error("the modbus server stopped: %s", err)
        finally:
            self._ready.set()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _serve(self) -> None:
        device = SimDevice(
            self.unit_id,
            simdata=[SimData(BASE_ADDRESS, count=_RESERVED_REGISTERS, datatype=DataType.REGISTERS)],
            action=self._action,
        )
        server = _Server(self, device, (self.config.host, self.config.port))
        self._stop_event = asyncio.Event()
        await server.serve_forever(background=True)
        listener: Any = server.transport
        self._port = int(listener.sockets[0].getsockname()[1])
        watchdog = asyncio.create_task(self._watchdog())
        self._ready.set()
        try:
            if not self._stopped.is_set():
                await self._stop_event.wait()
        finally:
            watchdog.cancel()
            await server.shutdown()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.01)  # let the transports close

    # ------------------------------------------------------------------ telemetry side
    def _on_snapshot(self, snap: Snapshot) -> None:
        """Rebuild the registers from a new snapshot (in the control loop's thread)."""
        if self._stopped.is_set():
            return
        t0 = time.perf_counter()
        if self._layout is None or self._layout.n_strings != snap.cells.n_strings:
            hub = self._hub
            ratings = Ratings.of(hub.config if hub is not None else None, snap)
            layout = Layout(snap.cells.n_strings)
            with self._lock:
                self._ratings, self._layout = ratings, layout
                self._scale = ratings.scale_factors()
                self._control = replace(self._control, min_rsv=round(ratings.reserve_soc * 1e4))
        with self._lock:
            control, status = self._control, replace(self._status)
            prev = self._snap
            if status.control_active and snap.time_s >= status.control_until_s:
                status.control_active = self._status.control_active = False
                self._control = control = replace(control, stor_ctl_mod=0)
                log.info("modbus setpoint reverted after its %d s timeout", control.revert_s)
        image = self._encode(snap, control, status)
        with self._lock:
            self._apply_control(image, self._control)
            self._image, self._snap = image, snap
            if prev is not None and snap.time_s > prev.time_s:
                self._step_s = snap.time_s - prev.time_s
            self._updates += 1
            self._latency_s.append(time.perf_counter() - t0)

    def _encode(self, snap: Snapshot, control: Control, status: _Status) -> list[int]:
        layout, r, scale = self._layout, self._ratings, self._scale
        if layout is None or r is None:  # pragma: no cover - set before the first encode
            raise RuntimeError("no register layout")
        tel, cells = snap.telemetry, snap.cells
        n_str, n_mod = cells.n_strings, cells.modules_per_string
        closed = tel.contactor is ContactorState.CLOSED
        amps_idle = max(
            0.5,
            0.01 * max(_finite(r.discharge_power_w), 1000.0) / max(_finite(r.pack_voltage_v), 1.0),
        )
        cha_st = _charge_status(tel.contactor, tel.pack_current_a, tel.soc, r, amps_idle)
        evt1 = event_bits(tel.alarms, snap.alarm_severity, snap.latched)
        vnd1 = decision_bits(tel.gate)
        if tel.gate.source == SOURCE:
            vnd1 |= 1 << VND_SOURCE_MODBUS
        if status.heartbeat_lost:
            vnd1 |= 1 << VND_HEARTBEAT_LOST
        if self.config.writes_enabled:
            vnd1 |= 1 << VND_WRITES_ENABLED
        if snap.latched:
            vnd1 |= 1 << VND_LATCHED
        if status.control_active:
            vnd1 |= 1 << VND_CONTROL_ACTIVE
        vnd2 = decision_bits(status.last_decision) if status.last_decision is not None else 0
        if status.pending:
            vnd2 |= 1 << VND_PENDING
        if status.no_answer:
            vnd2 |= 1 << VND_NO_ANSWER
        v_str, v_mod = locate(cells.voltage_v, n_str, n_mod, largest=True)
        w_str, w_mod = locate(cells.voltage_v, n_str, n_mod, largest=False)
        t_str, t_mod = locate(cells.temperature_degc, n_str, n_mod, largest=True)
        u_str, u_mod = locate(cells.temperature_degc, n_str, n_mod, largest=False)
        command = snap.command
        reserve = command.reserve_soc if command is not None else math.nan
        state = _battery_state(tel.contactor, bool(snap.latched))
        connected = tel.contactor in (ContactorState.CLOSED, ContactorState.PRECHARGE)
        if not closed:
            inverter = 1
        elif tel.gate.granted_w == 0.0:
            inverter = 2
        else:
            inverter = 3
        battery: dict[str, float | int | str | None] = {
            "AHRtg": r.capacity_ah,
            "WHRtg": r.capacity_wh,
            "WChaRteMax": r.charge_power_w,
            "WDisChaRteMax": r.discharge_power_w,
            "SoCMax": 100.0 * r.soc_max,
            "SoCMin": 100.0 * r.soc_min,
            "SoCRsvMin": 100.0 * reserve,
            "SoC": 100.0 * tel.soc,
            "DoD": 100.0 * (1.0 - tel.soc),
            "SoH": 100.0 * tel.soh,
            "ChaSt": cha_st,
            "LocRemCtl": 0 if self.config.writes_enabled else 1,
            "Hb": heartbeat_of(snap.time_s),
            "Typ": TYPE_LITHIUM_ION,
            "State": state,
            "Evt1": evt1,
            "Evt2": 0,
            "EvtVnd1": vnd1,
            "EvtVnd2": vnd2,
            "V": tel.pack_voltage_v,
            "CellVMax": tel.cell_voltage_max_v,
            "CellVMaxStr": _none_if_zero(v_str),
            "CellVMaxMod": _none_if_zero(v_mod),
            "CellVMin": tel.cell_voltage_min_v,
            "CellVMinStr": _none_if_zero(w_str),
            "CellVMinMod": _none_if_zero(w_mod),
            "CellVAvg": tel.cell_voltage_avg_v,
            "A": tel.pack_current_a,
            "AChaMax": tel.charge_current_limit_a,
            "ADisChaMax": tel.discharge_current_limit_a,
            "W": tel.pack_voltage_v * tel.pack_current_a,
            "SetOp": 1 if connected else 2,
            "SetInvState": inverter,
        }
        stats = string_statistics(cells.voltage_v, cells.temperature_degc, cells.soc, n_str, n_mod)
        i_str = cells.string_current_a
        bank: dict[str, float | int | str | None] = {
            "NStr": n_str,
            "NStrCon": n_str if closed else 0,
            "ModTmpMax": tel.temperature_max_degc,
            "ModTmpMaxStr": _none_if_zero(t_str),
            "ModTmpMaxMod": _none_if_zero(t_mod),
            "ModTmpMin": tel.temperature_min_degc,
            "ModTmpMinStr": _none_if_zero(u_str),
            "ModTmpMinMod": _none_if_zero(u_mod),
            "ModTmpAvg": tel.temperature_avg_degc,
            "StrVMax": nan_extreme(stats.string_voltage_v, largest=True),
            "StrVMaxStr": _none_if_zero(extreme_index(stats.string_voltage_v, largest=True)),
            "StrVMin": nan_extreme(stats.string_voltage_v, largest=False),
            "StrVMinStr": _none_if_zero(extreme_index(stats.string_voltage_v, largest=False)),
            "StrVAvg": nan_mean(stats.string_voltage_v),
            "StrAMax": nan_extreme(i_str, largest=True),
            "StrAMaxStr": _none_if_zero(extreme_index(i_str, largest=True)),
            "StrAMin": nan_extreme(i_str, largest=False),
            "StrAMinStr": _none_if_zero(extreme_index(i_str, largest=False)),
            "StrAAvg": nan_mean(i_str),
            "NCellBal": int(cells.balancing.sum()),
        }
        fault = tel.contactor is ContactorState.FAULT
        strings: list[dict[str, float | int | str | None]] = []
        for k in range(n_str):
            strings.append(
                {
                    "StrNMod": n_mod,
                    "StrSt": 1 | (2 if closed else 0),
                    "StrConFail": 6 if fault else 0,
                    "StrSoC": 100.0 * float(stats.soc[k]),
                    "StrA": float(i_str[k]),
                    "StrCellVMax": float(stats.cell_voltage_max_v[k]),
                    "StrCellVMaxMod": _none_if_zero(int(stats.cell_voltage_max_module[k])),
                    "StrCellVMin": float(stats.cell_voltage_min_v[k]),
                    "StrCellVMinMod": _none_if_zero(int(stats.cell_voltage_min_module[k])),
                    "StrCellVAvg": float(stats.cell_voltage_avg_v[k]),
                    "StrModTmpMax": float(stats.temperature_max_degc[k]),
                    "StrModTmpMaxMod": _none_if_zero(int(stats.temperature_max_module[k])),
                    "StrModTmpMin": float(stats.temperature_min_degc[k]),
                    "StrModTmpMinMod": _none_if_zero(int(stats.temperature_min_module[k])),
                    "StrModTmpAvg": float(stats.temperature_avg_degc[k]),
                    "StrDisRsn": 0,
                    "StrConSt": 1 if closed else 0,
                    "StrEvt1": evt1,
                    "StrEvt2": 0,
                    "StrSetEna": 1,
                    "StrSetCon": 1 if closed else 2,
                }
            )
        reserve_ctl = control.min_rsv * 1e-4
        storage: dict[str, float | int | str | None] = {
            "WChaMax": r.charge_power_w,
            "WChaGra": r.ramp_pct_per_s,
            "WDisChaGra": r.ramp_pct_per_s,
            "ChaState": 100.0 * tel.soc,
            "StorAval": max(tel.soc - reserve_ctl, 0.0) * r.capacity_ah,
            "InBatV": tel.pack_voltage_v,
            "ChaSt": cha_st,
            "InOutWRte_WinTms": 0,
            "InOutWRte_RmpTms": 0,
        }
        hub = self._hub
        common: dict[str, float | int | str | None] = {
            "Mn": "openbess",
            "Md": "openbess BESS controller",
            "Opt": f"ems {r.strategy}" if r.strategy else "",
            "Vr": openbess.__version__,
            "SN": hub.site_name if hub is not None else "",
            "DA": self.unit_id,
        }
        image = [*SUNS_MARKER]
        image += pack_model(COMMON, common, scale)
        image += pack_model(BATTERY, battery, scale)
        image += pack_model(LITHIUM_ION, bank, scale, strings)
        image += pack_model(STORAGE, storage, scale)
        image += [END_MODEL_ID, 0]
        return image

    def _apply_control(self, image: list[int], control: Control) -> None:
        """Write the control registers into ``image`` (call with the lock held)."""
        layout = self._layout
        if layout is None:  # pragma: no cover - set with the first image
            return
        for (model_id, name), raw in control.registers().items():
            image[layout.address(model_id, name) - BASE_ADDRESS] = raw & 0xFFFF

    # ------------------------------------------------------------------ Modbus side
    def count(self, reason: str) -> None:
        """Count one refused request (``Hub.reject("modbus", reason)``) and mark it counted."""
        req = _REQUEST.get()
        if req is not None:
            req.counted = True
        with self._lock:
            self._status.counters[reason] = self._status.counters.get(reason, 0) + 1
        if self._hub is not None:
            self._hub.reject(SOURCE, reason)

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """Count requests, and exception responses no check of ours counted already."""
        if not sending:
            self._requests += 1
        elif isinstance(pdu, ExceptionResponse):
            req = _REQUEST.get()
            if req is None:  # the frame did not decode into a request
                self.count("malformed_request")
            elif not req.counted:
                try:
                    name = ExcCodes(pdu.exception_code).name.lower()
                except ValueError:
                    name = f"exception_{pdu.exception_code}"
                self.count(name)
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook for every register access: serve reads, validate and apply writes."""
        image = self._image
        if image is None:
            self.count("not_ready")
            return ExcCodes.DEVICE_BUSY
        lo = address - BASE_ADDRESS
        if lo < 0 or lo + count > len(image):
            self.count("illegal_address")
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values is not None and function_code in (6, 16):
            code = self._write(address, [int(v) for v in set_values])
            if code is not None:
                return code
            image = self._image or image
        off = BASE_ADDRESS - start_address
        registers[off + lo : off + lo + count] = image[lo : lo + count]
        return None

    def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        """Validate and apply a write; return the exception code when it is refused."""
        if not self.config.writes_enabled:
            self.count("writes_disabled")
            return ExcCodes.ILLEGAL_FUNCTION
        req = _REQUEST.get()
        peer = req.peer if req is not None else ""
        if peer not in self._allowed:
            self.count("client_not_allowed")
            log.warning("modbus: write from %s refused (not in allowed_clients)", peer)
            return ExcCodes.ILLEGAL_FUNCTION
        layout, r, snap = self._layout, self._ratings, self._snap
        if layout is None or r is None or snap is None:
            self.count("not_ready")
            return ExcCodes.DEVICE_BUSY
        writable = {layout.address(w.model_id, w.name): w for w in WRITABLE}
        changes: dict[str, int] = {}
        for k, register in enumerate(values):
            spec = writable.get(address + k)
            if spec is None:
                self.count("read_only")
                return ExcCodes.ILLEGAL_ADDRESS
            raw = decode_register(layout.point(spec.model_id, spec.name), register)
            if not spec.low <= raw <= spec.high:
                self.count("out_of_range")
                log.info("modbus: %s = %d out of [%d, %d]", spec.name, raw, spec.low, spec.high)
                return ExcCodes.ILLEGAL_VALUE
            changes[_FIELD[(spec.model_id, spec.name)]] = raw
        with self._lock:
            old = self._control
        new = replace(old, **changes)
        controls = {"stor_ctl_mod", "min_rsv", "out_w_rte", "in_w_rte", "revert_s"}
        touches_control = bool(controls & changes.keys())
        power = setpoint_w(new, r.charge_power_w, r.discharge_power_w)
        if touches_control and new.stor_ctl_mod and not math.isfinite(power):
            self.count("no_rating")
            return ExcCodes.ILLEGAL_VALUE
        if touches_control and (
            power > r.discharge_power_w + 1e-6 or -power > r.charge_power_w + 1e-6
        ):
            self.count("out_of_range")
            log.info("modbus: setpoint %.0f W beyond the ratings", power)
            return ExcCodes.ILLEGAL_VALUE
        hub = self._hub
        now_wall = time.monotonic()
        with self._lock:
            self._control = new
            if self._image is not None:
                image = list(self._image)
                self._apply_control(image, new)
                self._image = image
            if "ctrl_hb" in changes:
                self._status.heartbeat_lost = False
        if hub is not None and ("ctrl_hb" in changes or touches_control):
            hub.heartbeat(SOURCE, now_wall)
        if changes.get("alm_rst") == 1:
            self._jobs.put(self._reset_alarms)
        if touches_control:
            if new.stor_ctl_mod:
                valid_until = snap.time_s + new.revert_s
                cmd = self._command(Mode.POWER, power, valid_until, new.min_rsv * 1e-4)
                with self._lock:
                    self._status.control_active = True
                    self._status.control_until_s = valid_until
                log.info(
                    "modbus setpoint %.0f W (reserve %.2f, valid %d s)",
                    power,
                    new.min_rsv * 1e-4,
                    new.revert_s,
                )
                self._queue_command(cmd)
            elif old.stor_ctl_mod:
                self._cancel("control mode set to 0")
        return None

    def _command(self, mode: Mode, power_w: float, valid_until_s: float, reserve: float) -> Command:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return Command(seq, mode, power_w, valid_until_s, reserve, SOURCE)

    def _cancel(self, why: str) -> None:
        """Withdraw the Modbus override: the EMS's command applies again at the next cycle."""
        with self._lock:
            snap = self._snap
            self._status.control_active = False
            self._control = replace(self._control, stor_ctl_mod=0)
            if self._image is not None:
                image = list(self._image)
                self._apply_control(image, self._control)
                self._image = image
        if snap is None:  # pragma: no cover - a control write needs a snapshot
            return
        log.info("modbus override cancelled: %s", why)
        if self._hub is not None:
            self._hub.cancel_override(SOURCE)

    def _queue_command(self, cmd: Command) -> None:
        with self._lock:
            self._status.pending = True
        self._jobs.put(lambda: self._submit(cmd))

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("modbus command job failed")

    def _submit(self, cmd: Command) -> None:
        hub = self._hub
        if hub is None or self._stopped.is_set():
            return
        decision = hub.submit(cmd, wait_s=5.0)
        with self._lock:
            self._status.pending = False
            self._status.no_answer = decision is None
            if decision is not None:
                self._status.last_decision = decision
                if cmd.mode is not Mode.IDLE and decision.reason in _NOT_INSTALLED:
                    # refused or dropped before reaching the gate's override slot; later
                    # refusals (reserve, limits, contactor) keep the override in force
                    self._status.control_active = False
        if decision is None:
            log.warning("modbus command %d: no gate decision within 5 s", cmd.seq)
        else:
            log.info(
                "modbus command %d %s: %s/%s, granted %.0f W",
                cmd.seq,
                cmd.mode.value,
                decision.outcome.value,
                decision.reason.value,
                decision.granted_w,
            )

    def _reset_alarms(self) -> None:
        hub = self._hub
        if hub is None or self._stopped.is_set():
            return
        ok, msg = hub.request_reset("all", SOURCE, wait_s=5.0)
        log.info("modbus alarm reset: %s", msg)
        with self._lock:
            self._status.last_reset = (ok, msg)
            self._control = replace(self._control, alm_rst=0)
            if self._image is not None:
                image = list(self._image)
                self._apply_control(image, self._control)
                self._image = image

    # ------------------------------------------------------------------ watchdog
    async def _watchdog(self) -> None:
        period = min(0.05, self.config.heartbeat_timeout_s / 4.0)
        while True:
            await asyncio.sleep(period)
            self.check_heartbeat(time.monotonic())

    def check_heartbeat(self, now_wall_s: float) -> bool:
        """Cancel the Modbus override if no heartbeat came for ``heartbeat_timeout_s``.

        Parameters
        ----------
        now_wall_s : float
            Now [s, ``time.monotonic``].

        Returns
        -------
        bool
            True if the override was cancelled by this call.
        """
        hub = self._hub
        with self._lock:
            active = self._status.control_active
        if hub is None or not active:
            return False
        silent_s = now_wall_s - hub.last_heartbeat(SOURCE)
        if silent_s <= self.config.heartbeat_timeout_s:
            return False
        with self._lock:
            self._status.heartbeat_lost = True
            self._status.counters["watchdog"] = self._status.counters.get("watchdog", 0) + 1
            snap = self._snap
        message = (
            f"no Modbus heartbeat for {silent_s:.1f} s (timeout "
            f"{self.config.heartbeat_timeout_s:g} s): override cancelled"
        )
        log.warning(message)
        self._cancel("heartbeat lost")
        hub.log_event(
            "interface",
            "modbus_heartbeat_lost",
            "warning",
            message,
            snap.time_s if snap is not None else None,
        )
        return True

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, float]:
        """Counters and the telemetry-to-register latency.

        Returns
        -------
        dict
            ``requests``, ``updates`` (register rebuilds), ``refused.<reason>`` counts,
            ``watchdog`` trips, ``update_latency_s_median`` / ``_max`` (snapshot published to
            registers rebuilt, in the loop's thread) [s].
        """
        with self._lock:
            lat = sorted(self._latency_s)
            counters = dict(self._status.counters)
            out: dict[str, float] = {"requests": float(self._requests), "updates": self._updates}
        for k, n in counters.items():
            out[k if k == "watchdog" else f"refused.{k}"] = float(n)
        if lat:
            out["update_latency_s_median"] = lat[len(lat) // 2]
            out["update_latency_s_max"] = lat[-1]
        return out

    @property
    def last_decision(self) -> GateDecision | None:
        """The gate's decision on the last Modbus command (None before any)."""
        with self._lock:
            return self._status.last_decision

    @property
    def last_reset(self) -> tuple[bool, str] | None:
        """Result of the last 802 ``AlmRst`` request: (done, message); None before any."""
        with self._lock:
            return self._status.last_reset

    @property
    def layout(self) -> Layout | None:
        """The register layout (None before the first snapshot)."""
        return self._layout


def heartbeat_of(time_s: float) -> int:
    """802 ``Hb``: whole site seconds, wrapping below the "not implemented" value."""
    return int(time_s) % 0xFFFF if math.isfinite(time_s) else 0


def _charge_status(
    contactor: ContactorState, current_a: float, soc: float, r: Ratings, idle_a: float
) -> int:
    if contactor is not ContactorState.CLOSED:
        return CHA_ST_OFF
    if current_a > idle_a:
        return CHA_ST_DISCHARGING
    if current_a < -idle_a:
        return CHA_ST_CHARGING
    if math.isfinite(r.soc_max) and soc >= r.soc_max - 0.005:
        return CHA_ST_FULL
    if math.isfinite(r.soc_min) and soc <= r.soc_min + 0.005:
        return CHA_ST_EMPTY
    return CHA_ST_HOLDING


def _battery_state(contactor: ContactorState, latched: bool) -> int:
    if contactor is ContactorState.FAULT or (latched and contactor is ContactorState.OPEN):
        return STATE_FAULT
    return {
        ContactorState.CLOSED: STATE_CONNECTED,
        ContactorState.PRECHARGE: STATE_INITIALIZING,
        ContactorState.OPENING: STATE_SUSPENDING,
    }.get(contactor, STATE_DISCONNECTED)
