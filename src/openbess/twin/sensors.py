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

from openbess.cell.ecm import NUMBA_AVAILABLE, jit
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
    compiled : bool, optional
        Apply gain, offset, noise and quantisation in one compiled loop (True) or with numpy
        (False); None: compiled when numba is installed. The readings are the same.
    """

    def __init__(
        self,
        config: SensorConfig,
        topology: PackTopology,
        faults: FaultInjector | None = None,
        compiled: bool | None = None,
    ) -> None:
        self.config = config
        #: Use the compiled sampling loop.
        self.compiled = NUMBA_AVAILABLE if compiled is None else bool(compiled)
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
        self._valid_cache: dict[int, BoolArray] = {}

    def _all_valid(self, size: int) -> BoolArray:
        """A read-only all-True flag array of ``size`` (shared between samples)."""
        flags = self._valid_cache.get(size)
        if flags is None:
            flags = _readonly(np.ones(size, dtype=np.bool_))
            self._valid_cache[size] = flags
        return flags

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

        v = pack.cell_voltage_v
        t = pack.cell_temperature_at(self.temperature_sensor_cell)
        i = pack.string_current_a
        if self.compiled:
            finite = _sample_kernel(
                z,
                v,
                t,
                i,
                cfg.voltage_gain_error,
                cfg.voltage_offset_v,
                cfg.voltage_noise_v,
                cfg.voltage_quantum_v,
                cfg.temperature_offset_degc,
                cfg.temperature_noise_degc,
                cfg.temperature_quantum_degc,
                cfg.current_gain_error,
                cfg.current_offset_a,
                cfg.current_noise_a,
            )
        else:
            _sample_numpy(z, v, t, i, cfg)
            finite = False  # the reference path always builds the flags

        # Faults.
        v_invalid: list[int] = []
        t_invalid: list[int] = []
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
                    v_invalid.append(k)
                    if (k + 1) % c != 0 and k + 1 < n:
                        v[k + 1] = v[k + 1] + v[k]
                        v_invalid.append(k + 1)
                    # The floating input reads its noise alone (z[:n] holds noise_v * z).
                    floating = np.array([z[k]])
                    v[k] = quantise(floating, cfg.voltage_quantum_v)[0]
                elif f.kind is FaultKind.TEMPERATURE_SENSOR_LOST:
                    t[f.target] = np.nan
                    t_invalid.append(f.target)
                elif f.kind is FaultKind.CURRENT_SENSOR_DRIFT:
                    i[f.target] += f.params["rate_a_per_s"] * (time_s - f.at_time_s)
            # A stuck reading thaws when its fault is cleared.
            for k in list(self._stuck_v):
                if not inj.is_active(FaultKind.STUCK_CELL_VOLTAGE, k, time_s):
                    del self._stuck_v[k]
        elif self._stuck_v:
            self._stuck_v.clear()
        if cfg.current_quantum_a > 0:
            _quantise_inplace(i, cfg.current_quantum_a)
        if finite and not v_invalid and not t_invalid:
            # Every reading valid: share the read-only all-True flags (no copy per sample).
            v_valid, t_valid = self._all_valid(n), self._all_valid(n_t)
        else:
            v_valid = np.isfinite(v)
            v_valid[v_invalid] = False
            t_valid = np.isfinite(t)
            t_valid[t_invalid] = False
            _readonly(v_valid)
            _readonly(t_valid)

        pack_voltage_v = pack.pack_voltage_v
        pack_v = pack_voltage_v + cfg.pack_voltage_noise_v * float(z[-2])
        if contactor is None:
            closed = True
            bus_v = pack_voltage_v + cfg.pack_voltage_noise_v * float(z[-1])
        else:
            closed = contactor.aux_closed
            bus_v = contactor.bus_voltage_v + cfg.pack_voltage_noise_v * float(z[-1])
        return Measurements(
            time_s=time_s,
            cell_voltage_v=_readonly(v),
            cell_voltage_valid=v_valid,
            cell_temperature_degc=_readonly(t),
            cell_temperature_valid=t_valid,
            temperature_sensor_cell=self.temperature_sensor_cell,
            string_current_a=_readonly(i),
            string_current_valid=self._all_valid(n_s),
            pack_voltage_v=float(pack_v),
            contactor_closed=bool(closed),
            bus_voltage_v=float(bus_v),
        )


def _quantise_inplace(values: FloatArray, quantum: float) -> None:
    """:func:`quantise` in place (the same numbers)."""
    if quantum > 0:
        np.divide(values, quantum, out=values)
        np.rint(values, out=values)
        values *= quantum


def _sample_numpy(
    z: FloatArray, v: FloatArray, t: FloatArray, i: FloatArray, cfg: SensorConfig
) -> None:
    """Gain, offset, noise and quantisation of the readings, in place (numpy reference).

    ``z`` holds standard normal draws for the cells, the temperature sensors and the strings,
    in that order; those are scaled in place to the noise added (the open-wire fault reads it).
    Gain and offset are skipped when zero (``x * 1.0 + 0.0 == x``).
    """
    n, n_t, n_s = v.size, t.size, i.size
    if cfg.voltage_gain_error != 0.0:
        v *= 1.0 + cfg.voltage_gain_error
    if cfg.voltage_offset_v != 0.0:
        v += cfg.voltage_offset_v
    noise = z[:n]
    noise *= cfg.voltage_noise_v
    v += noise
    _quantise_inplace(v, cfg.voltage_quantum_v)
    if cfg.temperature_offset_degc != 0.0:
        t += cfg.temperature_offset_degc
    noise = z[n : n + n_t]
    noise *= cfg.temperature_noise_degc
    t += noise
    _quantise_inplace(t, cfg.temperature_quantum_degc)
    if cfg.current_gain_error != 0.0:
        i *= 1.0 + cfg.current_gain_error
    if cfg.current_offset_a != 0.0:
        i += cfg.current_offset_a
    noise = z[n + n_t : n + n_t + n_s]
    noise *= cfg.current_noise_a
    i += noise


@jit
def _sample_kernel(
    z: FloatArray,
    v: FloatArray,
    t: FloatArray,
    i: FloatArray,
    voltage_gain: float,
    voltage_offset: float,
    voltage_noise: float,
    voltage_quantum: float,
    temperature_offset: float,
    temperature_noise: float,
    temperature_quantum: float,
    current_gain: float,
    current_offset: float,
    current_noise: float,
) -> bool:
    """:func:`_sample_numpy` in one loop (same arithmetic); True when every cell voltage and
    temperature reading is finite."""
    n, n_t, n_s = v.shape[0], t.shape[0], i.shape[0]
    finite = True
    for k in range(n):
        x = v[k]
        if voltage_gain != 0.0:
            x *= 1.0 + voltage_gain
        if voltage_offset != 0.0:
            x += voltage_offset
        z[k] *= voltage_noise
        x += z[k]
        if voltage_quantum > 0.0:
            x = np.rint(x / voltage_quantum) * voltage_quantum
        v[k] = x
        finite = finite and math.isfinite(x)
    for k in range(n_t):
        x = t[k]
        if temperature_offset != 0.0:
            x += temperature_offset
        z[n + k] *= temperature_noise
        x += z[n + k]
        if temperature_quantum > 0.0:
            x = np.rint(x / temperature_quantum) * temperature_quantum
        t[k] = x
        finite = finite and math.isfinite(x)
    for k in range(n_s):
        x = i[k]
        if current_gain != 0.0:
            x *= 1.0 + current_gain
        if current_offset != 0.0:
            x += current_offset
        z[n + n_t + k] *= current_noise
        i[k] = x + z[n + n_t + k]
    return finite
