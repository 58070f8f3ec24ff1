"""OpenADR 2.0b VEN: demand-response events from a VTN become grid events the EMS plans around.

:class:`OpenAdrVen` runs an openleadr client in its own thread and asyncio loop. It registers
with the VTN, polls it, and turns every supported event signal into
:class:`~openbess.io.hub.GridEvent` windows posted on the hub (source ``openadr``); it answers
opt-in or opt-out per ``interfaces.openadr.opt_in``, removes cancelled events, and reports the
battery's real power and SoC (TELEMETRY_USAGE) every ``report_interval_s``.

Signals (the table with units is in ``docs/openadr.md``):

- ``SIMPLE`` (or ``LOAD_DISPATCH``/``level``) level 0, 1, 2, 3: no constraint, import capped at
  50 % of the grid limit, import capped at 0 W, discharge at the battery's rated power;
- ``LOAD_DISPATCH``/``setpoint`` (power >= 0): import capped at the setpoint;
- ``LOAD_DISPATCH``/``delta`` (power): battery power = -delta (a load cut is a discharge);
- ``LOAD_DISPATCH``/``multiplier`` (>= 0): import capped at factor x grid limit;
- ``LOAD_CONTROL``/``x-loadControlCapacity`` (0..1): import capped at fraction x grid limit;
- ``LOAD_CONTROL``/``x-loadControlPercentOffset`` (>= -100): import capped at
  (1 + p/100) x grid limit.

Power payloads need an ``itemBase`` of ``powerReal`` in W (any SI scale).
Anything else is refused (opt-out) and counted on the hub as ``openadr.<reason>``.

Time: OpenADR times are wall-clock UTC. The site may run on simulated time (``speed`` simulated
seconds per wall second, started at the site's own start date). The VEN keeps an anchor pair
(site time of the latest snapshot, wall time it was published) and maps a wall instant ``w``
to site time ``site_a + speed * (w - wall_a)``: an event happens at the same wall moment the VTN
meant and lasts its wall duration, which is ``speed`` times longer in site seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from openbess.config import OpenAdrConfig, SiteConfig
from openbess.errors import ConfigError
from openbess.io.hub import GridEvent, Hub, Snapshot

log = logging.getLogger(__name__)

#: Source name of the grid events this VEN posts.
SOURCE = "openadr"

#: SI prefixes of OpenADR ``itemBase`` scales.
SCALE = {
    "p": 1e-12,
    "n": 1e-9,
    "micro": 1e-6,
    "m": 1e-3,
    "c": 1e-2,
    "d": 1e-1,
    "none": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}

#: Share of the grid import limit a SIMPLE level 1 (moderate) leaves.
LEVEL1_IMPORT_SHARE = 0.5


class EventRefusedError(Exception):
    """An OpenADR event this VEN cannot honour; ``reason`` is the counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ratings:
    """What the levels are relative to.

    Parameters
    ----------
    max_import_w : float
        Grid import limit of the site [W].
    max_discharge_w : float
        Battery AC discharge rating [W].
    """

    max_import_w: float
    max_discharge_w: float

    @classmethod
    def of(cls, config: SiteConfig) -> Ratings:
        """Ratings of a site configuration."""
        return cls(float(config.grid.max_import_w), float(config.battery.max_discharge_power_w))


@dataclass(frozen=True, slots=True)
class SiteTimeMap:
    """Maps wall-clock instants to site time: ``site_s + speed * (wall - wall_s)``.

    Parameters
    ----------
    site_s : float
        Site time of the anchor [s, Unix UTC, simulated].
    wall_s : float
        Wall time of the anchor [s, Unix UTC].
    speed : float
        Simulated seconds per wall second.
    """

    site_s: float
    wall_s: float
    speed: float

    def __call__(self, wall_s: float) -> float:
        """Site time of the wall instant ``wall_s``."""
        return self.site_s + self.speed * (wall_s - self.wall_s)


def _wall_s(value: Any, what: str) -> float:
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return dt.timestamp()
    raise EventRefusedError("bad_time", f"{what} is not a date-time: {value!r}")


def _duration_s(value: Any, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise EventRefusedError("bad_time", f"{what} is not a duration: {value!r}")


def _payload(interval: Mapping[str, Any], what: str) -> float:
    raw = interval.get("signal_payload")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise EventRefusedError("bad_payload", f"{what}: payload {raw!r} is not a finite number")
    return float(raw)


def _power_w(signal: Mapping[str, Any], value: float, what: str) -> float:
    """A power payload in W from the signal's itemBase (powerReal, unit W, SI scale)."""
    item = signal.get("measurement")
    if not isinstance(item, Mapping):
        raise EventRefusedError(
            "missing_units", f"{what}: a power signal needs an itemBase (units)"
        )
    unit, scale = item.get("unit"), item.get("scale", "none")
    if unit != "W" or scale not in SCALE:
        raise EventRefusedError(
            "bad_units", f"{what}: expected a powerReal itemBase in W, got {unit!r} {scale!r}"
        )
    return value * SCALE[str(scale)]


def _level(value: float, what: str, ratings: Ratings) -> dict[str, float] | None:
    if value not in (0.0, 1.0, 2.0, 3.0):
        raise EventRefusedError("bad_payload", f"{what}: level {value!r} is not one of 0, 1, 2, 3")
    if value == 0.0:
        return None
    if value == 1.0:
        return {"max_import_w": LEVEL1_IMPORT_SHARE * ratings.max_import_w}
    if value == 2.0:
        return {"max_import_w": 0.0}
    return {"battery_power_w": ratings.max_discharge_w}


def constraint_of(
    signal: Mapping[str, Any], value: float, what: str, ratings: Ratings
) -> dict[str, float] | None:
    """The grid-event fields one interval of a signal asks for (None: no constraint).

    Parameters
    ----------
    signal : mapping
        openleadr's parsed event signal (``signal_name``, ``signal_type``, ``measurement``).
    value : float
        The interval's payload.
    what : str
        Where, for messages.
    ratings : Ratings
        Site ratings the levels are relative to.

    Returns
    -------
    dict or None
        Keyword arguments for :class:`~openbess.io.hub.GridEvent`.

    Raises
    ------
    EventRefusedError
        With the reason (``unsupported_signal``, ``bad_payload``, ``missing_units``...).
    """
    name = str(signal.get("signal_name", ""))
    kind = str(signal.get("signal_type", ""))
    if name.upper() == "SIMPLE" or (name == "LOAD_DISPATCH" and kind == "level"):
        return _level(value, what, ratings)
    if name == "LOAD_DISPATCH":
        if kind == "setpoint":
            p = _power_w(signal, value, what)
            if p < 0:
                raise EventRefusedError(
                    "bad_payload", f"{what}: a negative import setpoint ({p} W) cannot be held"
                )
            return {"max_import_w": p}
        if kind == "delta":
            return {"battery_power_w": -_power_w(signal, value, what)}
        if kind == "multiplier":
            if value < 0:
                raise EventRefusedError("bad_payload", f"{what}: multiplier {value} < 0")
            return {"max_import_w": value * ratings.max_import_w}
    if name == "LOAD_CONTROL":
        if kind == "x-loadControlCapacity":
            if not 0.0 <= value <= 1.0:
                raise EventRefusedError("bad_payload", f"{what}: capacity {value} is outside 0..1")
            return {"max_import_w": value * ratings.max_import_w}
        if kind == "x-loadControlPercentOffset":
            if value < -100.0:
                raise EventRefusedError("bad_payload", f"{what}: percent offset {value} < -100")
            return {"max_import_w": (1.0 + value / 100.0) * ratings.max_import_w}
    raise EventRefusedError("unsupported_signal", f"{what}: signal {name}/{kind} is not supported")


def grid_events_of(
    event: Mapping[str, Any], to_site: Callable[[float], float], ratings: Ratings
) -> list[GridEvent]:
    """The grid events an OpenADR event asks for, in site time.

    Each interval of each signal with a constraint becomes one :class:`GridEvent` with id
    ``<event_id>:<signal>:<interval>``.

    Parameters
    ----------
    event : mapping
        openleadr's parsed event (``event_descriptor``, ``active_period``, ``event_signals``).
    to_site : callable
        Wall instant [s, Unix UTC] -> site time [s].
    ratings : Ratings
        Site ratings.

    Returns
    -------
    list of GridEvent
        Checked events (possibly empty: level 0).

    Raises
    ------
    EventRefusedError
        If the event is malformed or asks for something unsupported.
    """
    try:
        event_id = str(event["event_descriptor"]["event_id"])
        signals = event["event_signals"]
    except (KeyError, TypeError):
        raise EventRefusedError("malformed", "event without event_id or event_signals") from None
    if isinstance(signals, Mapping):  # openleadr nests them in some versions
        signals = signals.get("event_signals", [])
    if not isinstance(signals, Sequence) or not signals:
        raise EventRefusedError("malformed", f"event {event_id}: no signal")
    period = event.get("active_period") or {}
    out: list[GridEvent] = []
    for s_idx, signal in enumerate(signals):
        intervals = signal.get("intervals") if isinstance(signal, Mapping) else None
        if not isinstance(intervals, Sequence) or not intervals:
            raise EventRefusedError("malformed", f"event {event_id} signal {s_idx}: no interval")
        cursor = period.get("dtstart")
        start_w = _wall_s(cursor, f"event {event_id} start") if cursor is not None else None
        for i_idx, interval in enumerate(intervals):
            what = f"event {event_id} signal {s_idx} interval {i_idx}"
            if not isinstance(interval, Mapping):
                raise EventRefusedError("malformed", f"{what}: not a table")
            if interval.get("dtstart") is not None:
                start_w = _wall_s(interval["dtstart"], what)
            if start_w is None:
                raise EventRefusedError("bad_time", f"{what}: no start time")
            duration = _duration_s(interval.get("duration"), what)
            if duration <= 0:
                raise EventRefusedError("bad_time", f"{what}: duration {duration} s is not > 0")
            fields = constraint_of(signal, _payload(interval, what), what, ratings)
            end_w = start_w + duration
            if fields is not None:
                ge = GridEvent(
                    event_id=f"{event_id}:{s_idx}:{i_idx}",
                    start_s=to_site(start_w),
                    end_s=to_site(end_w),
                    source=SOURCE,
                    **fields,
                )
                try:
                    ge.check()
                except ValueError as err:
                    raise EventRefusedError("bad_payload", f"{what}: {err}") from None
                out.append(ge)
            start_w = end_w
    return out


class OpenAdrVen:
    """OpenADR 2.0b VEN (openleadr) feeding demand-response events to the hub.

    Implements the :class:`~openbess.io.runtime.Interface` protocol (``name = "openadr"``).

    Parameters
    ----------
    config : OpenAdrConfig
        ``vtn_url``, ``ven_name``, optional ``cert_file``/``key_file`` (message signing and TLS
        client certificate) and ``vtn_fingerprint`` (checks the VTN's signatures), ``opt_in``
        and ``report_interval_s`` (whole seconds below a minute, whole minutes above).
    speed : float
        Simulated seconds per wall second of the running site (see the module docstring).
    retry_s : float
        Wall seconds between registration attempts while the VTN is unreachable.

    Raises
    ------
    ConfigError
        If ``report_interval_s`` cannot be scheduled or the certificate files are incomplete.
    """

    name = "openadr"

    def __init__(self, config: OpenAdrConfig, *, speed: float = 1.0, retry_s: float = 10.0) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"OpenAdrVen speed must be > 0, got {speed}")
        interval = float(config.report_interval_s)
        if (
            interval < 1
            or (interval < 60 and interval != int(interval))
            or (interval >= 60 and interval % 60 != 0)
        ):
            raise ConfigError(
                f"interfaces.openadr.report_interval_s = {interval}: use whole seconds (1-59) "
                "or whole minutes"
            )
        if (config.cert_file is None) != (config.key_file is None):
            raise ConfigError("interfaces.openadr: cert_file and key_file go together")
        self.config = config
        self.speed = float(speed)
        self.retry_s = float(retry_s)
        self._hub: Hub | None = None
        self._anchor: SiteTimeMap | None = None
        self._lock = threading.Lock()
        self._posted: dict[str, list[str]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._client: Any = None
        #: Set once the VTN accepted the registration.
        self.registered = threading.Event()
        #: Counters: ``events``, ``posted``, ``cancelled``, ``opt_in``, ``opt_out``, ``reports``,
        #: ``registration_failed`` and ``refused.<reason>``.
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def _on_snapshot(self, snap: Snapshot) -> None:
        """Hub subscriber (loop thread): keep the site/wall anchor."""
        self._anchor = SiteTimeMap(snap.time_s, time.time(), self.speed)

    def time_map(self) -> SiteTimeMap | None:
        """The wall -> site time map (None before the site's first cycle)."""
        anchor = self._anchor
        if anchor is None and self._hub is not None:
            snap = self._hub.latest()
            if snap is not None:
                anchor = SiteTimeMap(snap.time_s, time.time(), self.speed)
        return anchor

    def _ratings(self) -> Ratings:
        hub = self._hub
        if hub is None or hub.config is None:
            raise EventRefusedError("no_site", "the site configuration is not known yet")
        return Ratings.of(hub.config)

    # ------------------------------------------------------------------ events
    def handle_event(self, event: Mapping[str, Any]) -> str:
        """Apply one event from the VTN; return the opt answer (``optIn`` or ``optOut``).

        Cancelled or completed events remove their grid events. Never raises: a refused event
        is counted on the hub (``openadr.<reason>``) and answered ``optOut``.

        Parameters
        ----------
        event : mapping
            openleadr's parsed event.

        Returns
        -------
        str
            ``optIn`` or ``optOut``.
        """
        self._count("events")
        try:
            event_id = str(event["event_descriptor"]["event_id"])
            status = str(event["event_descriptor"].get("event_status", ""))
        except (KeyError, TypeError, AttributeError):
            return self._refuse(EventRefusedError("malformed", "event without an event_descriptor"))
        self._withdraw(event_id)
        if status in ("cancelled", "completed"):
            self._count("cancelled")
            log.info("OpenADR event %s %s", event_id, status)
            return self._answer(True)
        try:
            time_map = self.time_map()
            if time_map is None:
                raise EventRefusedError("no_site", "the site has not run a cycle yet")
            events = grid_events_of(event, time_map, self._ratings())
        except EventRefusedError as err:
            return self._refuse(err)
        except Exception as err:  # a malformed message must never stop the VEN
            return self._refuse(EventRefusedError("malformed", f"{type(err).__name__}: {err}"))
        if not self.config.opt_in:
            log.info("OpenADR event %s: opting out (interfaces.openadr.opt_in = false)", event_id)
            return self._answer(False)
        hub = self._hub
        if hub is not None:
            for ge in events:
                hub.post_event(ge)
        with self._lock:
            self._posted[event_id] = [ge.event_id for ge in events]
        self._count("posted", len(events))
        log.info("OpenADR event %s: %d grid event(s) posted", event_id, len(events))
        return self._answer(True)

    def _withdraw(self, event_id: str) -> None:
        with self._lock:
            ids = self._posted.pop(event_id, [])
        if self._hub is not None:
            for gid in ids:
                self._hub.cancel_event(SOURCE, gid)

    def _refuse(self, err: EventRefusedError) -> str:
        log.warning("OpenADR event refused: %s", err)
        self._count(f"refused.{err.reason}")
        if self._hub is not None:
            self._hub.reject(self.name, err.reason)
        return self._answer(False)

    def _answer(self, opt_in: bool) -> str:
        ok = opt_in and self.config.opt_in
        self._count("opt_in" if ok else "opt_out")
        return "optIn" if ok else "optOut"

    # ------------------------------------------------------------------ reports
    def _report_power(self) -> list[tuple[datetime, float]]:
        """Battery real power as OpenADR usage [W], positive when the battery draws (charges)."""
        snap = self._hub.latest() if self._hub is not None else None
        if snap is None:
            return []
        self._count("reports")
        return [(datetime.now(UTC), -float(snap.site.battery_ac_power_w))]

    def _report_soc(self) -> list[tuple[datetime, float]]:
        """Battery SoC [%]."""
        snap = self._hub.latest() if self._hub is not None else None
        if snap is None:
            return []
        return [(datetime.now(UTC), 100.0 * float(snap.telemetry.soc))]

    # ------------------------------------------------------------------ client
    def _client_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {
            "ven_name": cfg.ven_name,
            "vtn_url": cfg.vtn_url,
            "vtn_fingerprint": cfg.vtn_fingerprint,
            "show_fingerprint": False,
        }
        if cfg.cert_file is not None:
            # until OpenAdrConfig has a ca_file field: the system's default CA bundle
            ca_file = getattr(cfg, "ca_file", None) or ssl.get_default_verify_paths().cafile
            if ca_file is None or not os.path.isfile(ca_file):
                raise ConfigError(
                    "interfaces.openadr.cert_file: no CA file to verify the VTN with "
                    f"(looked for {ca_file!r})"
                )
            kwargs.update(cert=cfg.cert_file, key=cfg.key_file, ca_file=ca_file)
        return kwargs

    def _make_client(self) -> Any:
        from openleadr import OpenADRClient

        client = OpenADRClient(**self._client_kwargs())
        client.add_handler("on_event", self.handle_event)
        client.add_handler("on_update_event", self.handle_event)
        period = timedelta(seconds=float(self.config.report_interval_s))
        common = {
            "resource_id": "battery",
            "sampling_rate": period,
            "report_duration": period,
        }
        client.add_report(self._report_power, measurement="real_power", unit="W", **common)
        client.add_report(self._report_soc, measurement="stateOfCharge", unit="%", **common)
        return client

    async def _main(self, stopping: asyncio.Event) -> None:
        # register only once the site has run a cycle: reports and site times need a snapshot
        while self._hub is not None and self._hub.latest() is None and not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.1)
        try:
            while not stopping.is_set():
                client = self._make_client()
                try:
                    await client.run()
                except Exception:
                    log.exception("OpenADR client failed to start")
                if client.registration_id:
                    self._client = client
                    self.registered.set()
                    log.info(
                        "OpenADR VEN %s registered with %s as %s",
                        self.config.ven_name,
                        self.config.vtn_url,
                        client.ven_id,
                    )
                    await stopping.wait()
                    break
                self._count("registration_failed")
                if self._hub is not None:
                    self._hub.reject(self.name, "registration_failed")
                await self._close(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.retry_s)
        finally:
            if self._client is not None:
                await self._close(self._client)
                self._client = None

    @staticmethod
    async def _close(client: Any) -> None:
        try:
            if client.client_session is not None:
                await client.stop()
            elif client.scheduler.running:
                client.scheduler.shutdown()
        except Exception:
            log.debug("closing the OpenADR client failed", exc_info=True)

    # ------------------------------------------------------------------ Interface
    def start(self, hub: Hub) -> None:
        """Register with the VTN in a background thread and serve until :meth:`stop`.

        Raises
        ------
        ConfigError
            If openleadr is not installed (``pip install openbess[openadr]``).
        """
        if self._thread is not None:
            return
        try:
            import openleadr  # noqa: F401
        except ImportError:
            raise ConfigError(
                "interfaces.openadr needs openleadr: pip install 'openbess[openadr]'"
            ) from None
        self._client_kwargs()  # certificate problems surface here, not in the thread
        self._hub = hub
        hub.subscribe(self._on_snapshot)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            stopping = asyncio.Event()
            self._loop, self._stopping = loop, stopping
            ready.set()
            try:
                loop.run_until_complete(self._main(stopping))
            except Exception:
                log.exception("OpenADR VEN stopped on an error")
            finally:
                _drain(loop)

        self._thread = threading.Thread(target=run, name="openadr-ven", daemon=True)
        self._thread.start()
        ready.wait(5.0)

    def stop(self) -> None:
        """Stop the client and the thread; grid events already posted stay (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and not loop.is_closed():

            def _set() -> None:
                if self._stopping is not None:
                    self._stopping.set()

            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_set)
        thread.join(timeout=15.0)
        self._thread = None
        self._loop = None


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the client left running (report worker, scheduler jobs), then close."""
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
