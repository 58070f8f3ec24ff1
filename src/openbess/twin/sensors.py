"""Sensors of the twin: what the BMS would read from real measurement hardware.

Each reading is ``true * (1 + gain_error) + offset + noise``, then quantised to the converter
step (``round(x / quantum) * quantum``; a quantum of 0 disables it). Readings are refreshed
every ``sample_period_s`` and held in between (0: a fresh sample at every read). Injected faults
(:mod:`openbess.twin.faults`) act on the readings:

- ``stuck_cell_voltage``: the reading freezes at its last value before the onset (still flagged
  valid: the BMS must notice it by plausibility);
- ``open_wire`` on cell ``k`` (its upper sense tap): cell ``k`` reads about 0 V and, when cell
  ``k + 1`` is in the same module, it reads the sum of both; both are flagged invalid (the AFE's
  open-wire check);
- ``temperature_sensor_lost``: NaN, invalid;
- ``current_sensor_drift``: the string's current offset grows by ``rate_a_per_s`` from the onset
  (still valid).

Random numbers come from ``numpy.random.default_rng(seed)``, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from openbess.plant import Measurements
from openbess.twin.faults import FaultKind

if TYPE_CHECKING:
    from openbess.twin.contactor import Contactor
    from openbess.twin.faults import FaultInjector
    from openbess.twin.pack import Pack, PackTopology

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class SensorConfig:
    """Sensor imperfections (the first fields mirror ``openbess.config.SensorConfig``).

    Parameters
    ----------
    voltage_noise_v : float
        Cell-voltage noise standard deviation [V].
    voltage_offset_v : float
        Cell-voltage offset [V].
    voltage_quantum_v : float
        Cell-voltage quantisation step [V] (0: none).
    temperature_noise_degc : float
        Temperature noise standard deviation [K].
    temperature_quantum_degc : float
        Temperature quantisation step [K] (0: none).
    current_noise_a : float
        String-current noise standard deviation [A].
    current_offset_a : float
        String-current offset [A].
    current_gain_error : float
        String-current gain error [fraction].
    sample_period_s : float
        Time between samples [s]; readings are held in between (0: every read samples).
    temperature_sensors_per_module : int
        Temperature sensors in each module.
    seed : int
        Seed of the noise generator.
    voltage_gain_error : float
        Cell-voltage gain error [fraction].
    temperature_offset_degc : float
        Temperature offset [K].
    current_quantum_a : float
        String-current quantisation step [A] (0: none).
    pack_voltage_noise_v : float
        Noise of the pack and DC-link voltage readings [V].
    temperature_sensor_positions : tuple of int, optional
        Position inside the module (0 .. cells_series_per_module - 1) of the cell each sensor of
        a module sits on; None spreads ``temperature_sensors_per_module`` sensors evenly.
    """

    voltage_noise_v: float = 0.001
    voltage_offset_v: float = 0.0
    voltage_quantum_v: float = 0.001
    temperature_noise_degc: float = 0.2
    temperature_quantum_degc: float = 0.1
    current_noise_a: float = 0.1
    current_offset_a: float = 0.0
    current_gain_error: float = 0.0
    sample_period_s: float = 0.0
    temperature_sensors_per_module: int = 2
    seed: int = 2
    voltage_gain_error: float = 0.0
    temperature_offset_degc: float = 0.0
    current_quantum_a: float = 0.0
    pack_voltage_noise_v: float = 0.0
    temperature_sensor_positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in (
            "voltage_noise_v",
            "voltage_quantum_v",
            "temperature_noise_degc",
            "temperature_quantum_degc",
            "current_noise_a",
            "sample_period_s",
            "current_quantum_a",
            "pack_voltage_noise_v",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SensorConfig.{name} must be finite and >= 0, got {value!r}")
        if self.temperature_sensors_per_module < 1 and self.temperature_sensor_positions is None:
            raise ValueError(
                "SensorConfig.temperature_sensors_per_module must be >= 1, got "
                f"{self.temperature_sensors_per_module}"
            )

    def sensor_positions(self, topology: PackTopology) -> tuple[int, ...]:
        """Position inside a module of each of its temperature sensors.

        Parameters
        ----------
        topology : PackTopology
            The pack layout.

        Returns
        -------
        tuple of int
            Positions (0 .. cells_series_per_module - 1).

        Raises
        ------
        ValueError
            A position outside the module, or more sensors than cells.
        """
        c = topology.cells_series_per_module
        if self.temperature_sensor_positions is not None:
            pos = tuple(int(p) for p in self.temperature_sensor_positions)
            bad = [p for p in pos if not 0 <= p < c]
            if bad or not pos:
                raise ValueError(
                    f"SensorConfig.temperature_sensor_positions {pos} must be non-empty and in "
                    f"0..{c - 1}"
                )
            return pos
        k = self.temperature_sensors_per_module
        if k > c:
            raise ValueError(
                f"SensorConfig.temperature_sensors_per_module ({k}) exceeds the cells per "
                f"module ({c})"
            )
        return tuple(math.floor((j + 0.5) * c / k) for j in range(k))

    def n_temperature_sensors(self, topology: PackTopology) -> int:
        """Temperature sensors in the whole pack.

        Parameters
        ----------
        topology : PackTopology
            The pack layout.

        Returns
        -------
        int
            Number of sensors.
        """
        return topology.n_modules * len(self.sensor_positions(topology))


def quantise(values: FloatArray, quantum: float) -> FloatArray:
    """Round to the nearest multiple of ``quantum`` (no-op for 0).

    Parameters
    ----------
    values : numpy.ndarray
        Values.
    quantum : float
        Step, >= 0.

    Returns
    -------
    numpy.ndarray
        The quantised values.
    """
    if quantum <= 0:
        return values
    out: FloatArray = np.round(values / quantum) * quantum
    return out


_A = TypeVar("_A", bound="npt.NDArray[Any]")


def _readonly(a: _A) -> _A:
    a.flags.writeable = False
    return a


class Sensors:
    """Measurement chain of the twin: pack + contactor truth -> :class:`Measurements`.

    Parameters
    ----------
    config : SensorConfig
        Imperfections.
    topology : PackTopology
        The pack layout (gives the cell and sensor counts).
    faults : FaultInjector, optional
        Consulted at every sample.
    """

    def __init__(
        self,
        config: SensorConfig,
        topology: PackTopology,
        faults: FaultInjector | None = None,
    ) -> None:
        self.config = config
        self.topology = topology
        self.faults = faults
        pos = np.asarray(config.sensor_positions(topology), dtype=np.intp)
        c = topology.cells_series_per_module
        modules = np.arange(topology.n_modules, dtype=np.intp)
        cells: IntArray = (modules[:, None] * c + pos[None, :]).ravel()
        cells.flags.writeable = False
        #: Cell each temperature sensor sits on, shape ``(n_temperature_sensors,)``.
        self.temperature_sensor_cell: IntArray = cells
        self._rng = np.random.default_rng(config.seed)
        self._held: Measurements | None = None
        self._last_sample_s = -math.inf
        self._stuck_v: dict[int, float] = {}

    @property
    def n_temperature_sensors(self) -> int:
        """Number of temperature sensors."""
        return int(self.temperature_sensor_cell.size)

    def read(self, pack: Pack, contactor: Contactor | None, time_s: float) -> Measurements:
        """Read every sensor (or return the held sample between sample instants).

        Parameters
        ----------
        pack : Pack
            The true pack.
        contactor : Contactor or None
            The contactor circuit (None: a pack wired straight to the bus, contactor closed).
        time_s : float
            Read time [s, Unix UTC]; stamped on the returned snapshot.

        Returns
        -------
        Measurements
            Every field filled; arrays are read-only.
        """
        period = self.config.sample_period_s
        held = self._held
        if held is not None and time_s - self._last_sample_s < period - 1e-9:
            return Measurements(
                time_s=float(time_s),
                cell_voltage_v=held.cell_voltage_v,
                cell_voltage_valid=held.cell_voltage_valid,
                cell_temperature_degc=held.cell_temperature_degc,
                cell_temperature_valid=held.cell_temperature_valid,
                temperature_sensor_cell=held.temperature_sensor_cell,
                string_current_a=held.string_current_a,
                string_current_valid=held.string_current_valid,
                pack_voltage_v=held.pack_voltage_v,
                contactor_closed=held.contactor_closed,
                bus_voltage_v=held.bus_voltage_v,
            )
        m = self._sample(pack, contactor, float(time_s))
        self._held = m
        self._last_sample_s = float(time_s)
        return m

    def _sample(self, pack: Pack, contactor: Contactor | None, time_s: float) -> Measurements:
        cfg = self.config
        n = pack.n_cells
        n_t = self.n_temperature_sensors
        n_s = self.topology.n_strings
        z = self._rng.standard_normal(n + n_t + n_s + 2)

        # Cell voltages.
        v_true = pack.cell_voltage_v
        v = v_true * (1.0 + cfg.voltage_gain_error) + cfg.voltage_offset_v
        v += cfg.voltage_noise_v * z[:n]
        v = quantise(v, cfg.voltage_quantum_v)
        v_valid = np.ones(n, dtype=np.bool_)

        # Temperatures.
        t_true = pack.cell_temperature_degc[self.temperature_sensor_cell]
        t = t_true + cfg.temperature_offset_degc + cfg.temperature_noise_degc * z[n : n + n_t]
        t = quantise(t, cfg.temperature_quantum_degc)
        t_valid = np.ones(n_t, dtype=np.bool_)

        # String currents.
        i_true = pack.string_current_a
        i = i_true * (1.0 + cfg.current_gain_error) + cfg.current_offset_a
        i += cfg.current_noise_a * z[n + n_t : n + n_t + n_s]
        i_valid = np.ones(n_s, dtype=np.bool_)

        # Faults.
        inj = self.faults
        if inj is not None and len(inj) > 0:
            for f in inj.active(time_s):
                if f.kind is FaultKind.STUCK_CELL_VOLTAGE:
                    k = f.target
                    if k not in self._stuck_v:
                        prev = self._held
                        self._stuck_v[k] = float(
                            prev.cell_voltage_v[k] if prev is not None else v[k]
                        )
                    v[k] = self._stuck_v[k]
                elif f.kind is FaultKind.OPEN_WIRE:
                    k = f.target
                    c = self.topology.cells_series_per_module
                    v_valid[k] = False
                    if (k + 1) % c != 0 and k + 1 < n:
                        v[k + 1] = v[k + 1] + v[k]
                        v_valid[k + 1] = False
                    floating = np.array([cfg.voltage_noise_v * z[k]])
                    v[k] = quantise(floating, cfg.voltage_quantum_v)[0]
                elif f.kind is FaultKind.TEMPERATURE_SENSOR_LOST:
                    t[f.target] = np.nan
                    t_valid[f.target] = False
                elif f.kind is FaultKind.CURRENT_SENSOR_DRIFT:
                    i[f.target] += f.params["rate_a_per_s"] * (time_s - f.at_time_s)
            # A stuck reading thaws when its fault is cleared.
            for k in list(self._stuck_v):
                if not inj.is_active(FaultKind.STUCK_CELL_VOLTAGE, k, time_s):
                    del self._stuck_v[k]
        elif self._stuck_v:
            self._stuck_v.clear()
        i = quantise(i, cfg.current_quantum_a)
        v_valid &= np.isfinite(v)
        t_valid &= np.isfinite(t)

        pack_v = pack.pack_voltage_v + cfg.pack_voltage_noise_v * z[-2]
        if contactor is None:
            closed = True
            bus_v = pack.pack_voltage_v + cfg.pack_voltage_noise_v * z[-1]
        else:
            closed = contactor.aux_closed
            bus_v = contactor.bus_voltage_v + cfg.pack_voltage_noise_v * z[-1]
        return Measurements(
            time_s=time_s,
            cell_voltage_v=_readonly(v),
            cell_voltage_valid=_readonly(v_valid),
            cell_temperature_degc=_readonly(t),
            cell_temperature_valid=_readonly(t_valid),
            temperature_sensor_cell=self.temperature_sensor_cell,
            string_current_a=_readonly(i),
            string_current_valid=_readonly(i_valid),
            pack_voltage_v=float(pack_v),
            contactor_closed=bool(closed),
            bus_voltage_v=float(bus_v),
        )
