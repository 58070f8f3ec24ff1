"""The plant interface: what the controller reads from and writes to a battery site.

The digital twin (:mod:`openbess.twin`) and real hardware adapters implement :class:`Plant`,
so the same controller code runs on both. Values are SI floats; every measured array carries a
validity mask beside it (a bad reading is marked invalid, never raised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from openbess.contract import Actuation

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Measurements:
    """One snapshot of the battery's sensors (the BMS's inputs).

    Parameters
    ----------
    time_s : float
        Sample time [s, Unix UTC].
    cell_voltage_v : numpy.ndarray
        Voltage of every series cell (parallel group) [V], shape ``(n_cells,)``.
    cell_voltage_valid : numpy.ndarray of bool
        Validity of each voltage reading.
    cell_temperature_degc : numpy.ndarray
        Temperature sensor readings [degC], shape ``(n_temp_sensors,)``.
    cell_temperature_valid : numpy.ndarray of bool
        Validity of each temperature reading.
    temperature_sensor_cell : numpy.ndarray of int
        Index of the cell nearest to each temperature sensor, shape ``(n_temp_sensors,)``.
    string_current_a : numpy.ndarray
        Current of each string [A], positive = discharge, shape ``(n_strings,)``.
    string_current_valid : numpy.ndarray of bool
        Validity of each current reading.
    pack_voltage_v : float
        Pack (DC bus, battery side of the contactor) voltage [V].
    contactor_closed : bool
        Auxiliary contact feedback of the main contactor.
    bus_voltage_v : float
        DC-link voltage on the converter side of the contactor [V] (for precharge checks).
    """

    time_s: float
    cell_voltage_v: FloatArray
    cell_voltage_valid: BoolArray
    cell_temperature_degc: FloatArray
    cell_temperature_valid: BoolArray
    temperature_sensor_cell: npt.NDArray[np.intp]
    string_current_a: FloatArray
    string_current_valid: BoolArray
    pack_voltage_v: float
    contactor_closed: bool
    bus_voltage_v: float


@dataclass(frozen=True, slots=True)
class SiteMeasurements:
    """Site meter readings (the EMS's inputs besides Telemetry).

    Parameters
    ----------
    time_s : float
        Sample time [s, Unix UTC].
    grid_power_w : float
        Grid power at the point of connection [W], positive = import.
    pv_power_w : float
        PV production [W], >= 0.
    load_power_w : float
        Building load [W], >= 0.
    battery_ac_power_w : float
        Battery converter AC power [W], positive = discharge.
    import_price_eur_per_kwh, export_price_eur_per_kwh : float
        Tariff in force now [EUR/kWh].
    """

    time_s: float
    grid_power_w: float
    pv_power_w: float
    load_power_w: float
    battery_ac_power_w: float
    import_price_eur_per_kwh: float
    export_price_eur_per_kwh: float


class Plant(Protocol):
    """A battery site as the controller sees it: the twin or real hardware."""

    def advance_to(self, time_s: float) -> None:
        """Let physical time pass until ``time_s`` (the twin integrates; hardware waits)."""

    def read(self) -> tuple[Measurements, SiteMeasurements]:
        """Read the battery's sensors and the site meters."""

    def write(self, actuation: Actuation) -> None:
        """Apply the converter setpoint, current caps, contactor and balancing requests."""
