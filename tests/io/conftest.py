"""Fixtures for interface tests: a real site running in a thread with a hub."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openbess.config import load_site
from openbess.io.hub import Hub, Snapshot
from openbess.io.runtime import Interface
from openbess.simulate import Site, run_realtime


@dataclass
class Running:
    """A site running in a background thread."""

    hub: Hub
    site: Site
    thread: threading.Thread
    result: dict[str, Any]
    db_path: Path

    def stop(self) -> dict[str, Any]:
        self.hub.stopped.set()
        self.thread.join(timeout=30)
        return self.result


def start_site(
    tmp_path: Path,
    site: str = "home",
    speed: float = 60.0,
    interfaces: tuple[Interface, ...] = (),
) -> Running:
    """Start ``site`` at ``speed`` x real time with ``interfaces``; wait for the first cycle."""
    config = load_site(site)
    hub = Hub(config.name)
    db = tmp_path / "run.sqlite"
    ready = threading.Event()
    box: dict[str, Any] = {}
    result: dict[str, Any] = {}

    def ready_cb(s: Site) -> None:
        box["site"] = s
        ready.set()

    def target() -> None:
        try:
            result.update(
                run_realtime(
                    config,
                    speed=speed,
                    db_path=db,
                    hub=hub,
                    interfaces=interfaces,
                    ready=ready_cb,
                    status=lambda _: None,
                )
            )
        except BaseException as err:  # surfaced by the fixture
            box["error"] = err
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    if not ready.wait(60) or "error" in box:
        raise RuntimeError(f"site did not start: {box.get('error')!r}")
    # wait until the contactor is closed and the EMS commands (a few simulated seconds)
    t = -1.0
    for _ in range(600):
        snap = hub.wait_next(t, 0.1)
        if snap is not None:
            t = snap.time_s
            if snap.telemetry.contactor == "closed" and snap.telemetry.gate.source == "ems":
                return Running(hub, box["site"], thread, result, db)
    hub.stopped.set()
    raise RuntimeError("the site did not close its contactor within 60 s")


@pytest.fixture
def running_home(tmp_path: Path) -> Iterator[Running]:
    """The ``home`` site at 60x real time (1 s cycles) with a hub and no interface."""
    run = start_site(tmp_path)
    yield run
    run.stop()


# ---------------------------------------------------------------------------- waiting (bounded)
def wait_for(cond: Callable[[], Any], timeout_s: float = 15.0, poll_s: float = 0.02) -> Any:
    """Poll ``cond`` (state without a notification) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s")
        time.sleep(poll_s)


def wait_for_value(
    fn: Callable[[], Any], cond: Callable[[Any], bool], timeout_s: float = 20.0
) -> Any:
    """Call ``fn`` until ``cond(result)`` holds; return that result."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = fn()
        if cond(out):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s; last: {out!r}")
        time.sleep(0.05)


def wait_for_snapshot(
    run: Running, cond: Callable[[Snapshot], bool], timeout_s: float = 20.0
) -> Snapshot:
    """Wait, cycle by cycle, for a snapshot of ``run`` that satisfies ``cond``."""
    snap = run.hub.latest()
    t = snap.time_s if snap else -1.0
    for _ in range(int(timeout_s * 20)):
        snap = run.hub.wait_next(t, 0.05)
        if snap is not None:
            t = snap.time_s
            if cond(snap):
                return snap
    raise AssertionError(f"no snapshot met the condition in {timeout_s} s")
