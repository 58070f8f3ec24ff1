"""The openbess exception tree.

Every error raised on purpose by openbess derives from :class:`OpenBessError`::

    OpenBessError
    ├── ConfigError          a site or parameter file is invalid (names field path and value)
    ├── DataError            an input data file is malformed (names file, line and column)
    ├── ContractError        a Command or Telemetry object violates the BMS-EMS contract
    ├── SimulationError      the digital twin was asked something it cannot do
    ├── StorageError         the run database cannot be opened or written
    └── EstimationError      a fit or an estimator could not produce a result

Bad arguments to pure functions raise :class:`ValueError`, as usual in Python.
Measurements never raise: a bad reading is marked invalid and the protection decides.
"""

from __future__ import annotations


class OpenBessError(Exception):
    """Base class of every error raised on purpose by openbess."""


class ConfigError(OpenBessError):
    """A configuration (site file, cell parameter file) is invalid."""


class DataError(OpenBessError):
    """An input data file is malformed; the message names file, line and column."""


class ContractError(OpenBessError):
    """A Command or Telemetry object violates the BMS-EMS contract."""


class SimulationError(OpenBessError):
    """The digital twin was configured or driven outside what it supports."""


class StorageError(OpenBessError):
    """The run database cannot be opened or written."""


class EstimationError(OpenBessError):
    """A parameter fit or a state estimator could not produce a result."""
