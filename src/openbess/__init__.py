"""openbess: an open controller for battery energy storage.

The package holds the BMS (inward: cells, estimation, protection, the command gate), the EMS
(outward: forecasts, strategies, dispatch), the digital twin (the plant used in simulation) and
the cycle that runs them together. See ``docs/architecture.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"
