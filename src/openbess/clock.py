"""Injected clocks: the loop never reads the system time directly.

:class:`SimClock` leaps ahead as fast as the machine allows; :class:`ScaledClock` follows the
wall clock, optionally accelerated (``speed`` simulated seconds per wall second).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of the controller's time (Unix seconds UTC)."""

    def now_s(self) -> float:
        """Current time [s, Unix UTC]."""

    def wait_until(self, time_s: float) -> float:
        """Block (or leap) until ``time_s``; return the lag behind it [s] (0 if on time)."""


class SimClock:
    """Simulated time that jumps to whatever time is asked for.

    Parameters
    ----------
    start_s : float
        Start time [s, Unix UTC].
    """

    def __init__(self, start_s: float) -> None:
        self._now = float(start_s)

    def now_s(self) -> float:
        """Current simulated time [s, Unix UTC]."""
        return self._now

    def wait_until(self, time_s: float) -> float:
        """Leap to ``time_s`` at once (never backwards); the lag is always 0."""
        self._now = max(self._now, float(time_s))
        return 0.0


class ScaledClock:
    """Wall-clock time, optionally accelerated.

    Parameters
    ----------
    start_s : float
        Simulated time at the moment of creation [s, Unix UTC].
    speed : float
        Simulated seconds per wall second (1 = real time).
    """

    def __init__(self, start_s: float, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self._start_sim = float(start_s)
        self._start_wall = time.monotonic()
        self.speed = float(speed)

    def now_s(self) -> float:
        """Current (scaled) time [s, Unix UTC]."""
        return self._start_sim + (time.monotonic() - self._start_wall) * self.speed

    def wait_until(self, time_s: float) -> float:
        """Sleep until the scaled clock reaches ``time_s``; return the lag if already past it."""
        ahead = (time_s - self.now_s()) / self.speed
        if ahead > 0:
            time.sleep(ahead)
            return 0.0
        return -ahead * self.speed
