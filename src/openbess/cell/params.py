"""Cell parameter sets: data files with their source, loaded into :class:`CellParams`.

A parameter file is TOML. Tables are given on a uniform SoC grid (``soc_points`` values from
0 to 1) and an ascending temperature grid ``temperature_degc``; a 2-D table is a list of rows,
one row per temperature. Example (shortened)::

    name = "lfp_a123"
    chemistry = "LFP"
    source = "Fitted from ... (MIT)"
    capacity_ah = 2.3
    voltage_min_v = 2.0
    voltage_max_v = 3.65
    nominal_voltage_v = 3.3
    soc_points = 21
    temperature_degc = [-5, 5, 25, 45]
    ocv_v = [[...21 values...], ...4 rows...]
    hysteresis_v = [[...], ...]
    r0_ohm = [[...], ...]
    coulombic_efficiency = [0.99, 0.995, 0.999, 0.999]
    hysteresis_rate = 50.0
    [[rc]]
    r_ohm = [[...], ...]
    tau_s = [10.0, 8.0, 6.0, 5.0]      # per temperature
    [[rc]]
    ...
    [thermal]
    mass_kg = 0.07
    specific_heat_j_per_kg_k = 1100
    [ageing]
    ...

Capacity and resistances scale with the cell: the twin scales a parameter set to another
capacity with :func:`scale_to_capacity` (R ~ 1/Q, same OCV).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from openbess.errors import ConfigError

FloatArray = npt.NDArray[np.float64]

BUILTIN_CELLS = {"lfp": "lfp_a123", "nmc": "nmc_leaf"}


@dataclass(frozen=True)
class ThermalParams:
    """Lumped thermal parameters of one cell.

    Parameters
    ----------
    mass_kg : float
        Cell mass [kg].
    specific_heat_j_per_kg_k : float
        Specific heat capacity [J/(kg K)].
    conductance_to_coolant_w_per_k : float
        Thermal conductance from the cell to the coolant/ambient [W/K].
    """

    mass_kg: float
    specific_heat_j_per_kg_k: float = 1100.0
    conductance_to_coolant_w_per_k: float = 0.5


@dataclass(frozen=True)
class CellParams:
    """Equivalent-circuit parameters of one cell, as tables over (temperature, SoC).

    Parameters
    ----------
    name, chemistry, source : str
        Identification; ``source`` says where the numbers come from and under which licence.
    capacity_ah : float
        Nominal capacity [Ah].
    voltage_min_v, voltage_max_v, nominal_voltage_v : float
        Datasheet voltage window and nominal voltage [V].
    soc_grid : numpy.ndarray
        Uniform SoC grid [fraction], shape ``(ns,)``, from 0 to 1.
    temperature_grid_degc : numpy.ndarray
        Ascending temperature grid [degC], shape ``(nt,)``.
    ocv_v : numpy.ndarray
        Mean open-circuit voltage [V], shape ``(nt, ns)``.
    hysteresis_v : numpy.ndarray
        Maximum hysteresis half-width M [V], shape ``(nt, ns)``; the charge branch sits
        ``M`` above ``ocv_v``, the discharge branch ``M`` below.
    r0_ohm : numpy.ndarray
        Series resistance [ohm], shape ``(nt, ns)``.
    rc_r_ohm : numpy.ndarray
        RC-pair resistances [ohm], shape ``(nrc, nt, ns)``.
    rc_tau_s : numpy.ndarray
        RC-pair time constants [s], shape ``(nrc, nt)``.
    coulombic_efficiency : numpy.ndarray
        Charge efficiency [fraction], shape ``(nt,)``.
    hysteresis_rate : float
        Hysteresis rate constant gamma [1] (Plett's ESC model: ``dh/dq = gamma / Q``).
    thermal : ThermalParams
        Lumped thermal parameters.
    ageing : dict
        Ageing-model coefficients (see :mod:`openbess.cell.ageing`).
    """

    name: str
    chemistry: str
    source: str
    capacity_ah: float
    voltage_min_v: float
    voltage_max_v: float
    nominal_voltage_v: float
    soc_grid: FloatArray
    temperature_grid_degc: FloatArray
    ocv_v: FloatArray
    hysteresis_v: FloatArray
    r0_ohm: FloatArray
    rc_r_ohm: FloatArray
    rc_tau_s: FloatArray
    coulombic_efficiency: FloatArray
    hysteresis_rate: float
    thermal: ThermalParams
    ageing: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ns = self.soc_grid.size
        nt = self.temperature_grid_degc.size
        nrc = self.rc_r_ohm.shape[0] if self.rc_r_ohm.ndim == 3 else -1
        checks: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = [
            ("ocv_v", self.ocv_v.shape, (nt, ns)),
            ("hysteresis_v", self.hysteresis_v.shape, (nt, ns)),
            ("r0_ohm", self.r0_ohm.shape, (nt, ns)),
            ("rc.r_ohm", self.rc_r_ohm.shape, (nrc, nt, ns)),
            ("rc.tau_s", self.rc_tau_s.shape, (nrc, nt)),
            ("coulombic_efficiency", self.coulombic_efficiency.shape, (nt,)),
        ]
        for name, got, want in checks:
            if got != want:
                raise ConfigError(f"cell '{self.name}': {name} has shape {got}, expected {want}")
        if ns < 2 or not np.allclose(np.diff(self.soc_grid), 1.0 / (ns - 1)):
            raise ConfigError(f"cell '{self.name}': soc grid must be uniform from 0 to 1")
        if nt > 1 and np.any(np.diff(self.temperature_grid_degc) <= 0):
            raise ConfigError(f"cell '{self.name}': temperature_degc must be ascending")
        if np.any(self.r0_ohm <= 0) or np.any(self.rc_r_ohm < 0) or np.any(self.rc_tau_s <= 0):
            raise ConfigError(f"cell '{self.name}': resistances and time constants must be > 0")
        if np.any(np.diff(self.ocv_v, axis=1) < 0):
            raise ConfigError(f"cell '{self.name}': ocv_v must not decrease with SoC")
        if self.capacity_ah <= 0:
            raise ConfigError(f"cell '{self.name}': capacity_ah must be > 0")

    @property
    def n_rc(self) -> int:
        """Number of RC pairs."""
        return int(self.rc_r_ohm.shape[0])


def scale_to_capacity(params: CellParams, capacity_ah: float) -> CellParams:
    """Scale a parameter set to a cell of another capacity (same chemistry).

    Resistances scale as ``1/Q``, mass as ``Q``; OCV, hysteresis and time constants stay.

    Parameters
    ----------
    params : CellParams
        Reference cell.
    capacity_ah : float
        Capacity of the scaled cell [Ah].

    Returns
    -------
    CellParams
        The scaled parameter set.
    """
    if capacity_ah <= 0:
        raise ValueError(f"capacity_ah must be > 0, got {capacity_ah}")
    k = capacity_ah / params.capacity_ah
    th = params.thermal
    return replace(
        params,
        capacity_ah=capacity_ah,
        r0_ohm=params.r0_ohm / k,
        rc_r_ohm=params.rc_r_ohm / k,
        thermal=ThermalParams(
            mass_kg=th.mass_kg * k,
            specific_heat_j_per_kg_k=th.specific_heat_j_per_kg_k,
            conductance_to_coolant_w_per_k=th.conductance_to_coolant_w_per_k * k ** (2.0 / 3.0),
        ),
    )


def _array(doc: dict[str, Any], key: str, where: str) -> FloatArray:
    if key not in doc:
        raise ConfigError(f"{where}: missing field '{key}'")
    try:
        return np.asarray(doc[key], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: field '{key}' is not a numeric table: {err}") from err


def parse_cell_params(doc: dict[str, Any], where: str = "<cell>") -> CellParams:
    """Build :class:`CellParams` from a parsed TOML document.

    Parameters
    ----------
    doc : dict
        The parsed document.
    where : str
        File name for error messages.

    Returns
    -------
    CellParams
        The parameter set.

    Raises
    ------
    ConfigError
        Naming the file and the field that is missing or malformed.
    """
    try:
        ns = int(doc["soc_points"])
        rcs = doc.get("rc", [])
        if not rcs:
            raise ConfigError(f"{where}: at least one [[rc]] pair is required")
        thermal = ThermalParams(**doc.get("thermal", {"mass_kg": 0.07}))
        return CellParams(
            name=str(doc["name"]),
            chemistry=str(doc["chemistry"]),
            source=str(doc["source"]),
            capacity_ah=float(doc["capacity_ah"]),
            voltage_min_v=float(doc["voltage_min_v"]),
            voltage_max_v=float(doc["voltage_max_v"]),
            nominal_voltage_v=float(doc["nominal_voltage_v"]),
            soc_grid=np.linspace(0.0, 1.0, ns),
            temperature_grid_degc=_array(doc, "temperature_degc", where),
            ocv_v=_array(doc, "ocv_v", where),
            hysteresis_v=_array(doc, "hysteresis_v", where),
            r0_ohm=_array(doc, "r0_ohm", where),
            rc_r_ohm=np.stack([_array(rc, "r_ohm", f"{where} [[rc]]") for rc in rcs]),
            rc_tau_s=np.stack([_array(rc, "tau_s", f"{where} [[rc]]") for rc in rcs]),
            coulombic_efficiency=_array(doc, "coulombic_efficiency", where),
            hysteresis_rate=float(doc.get("hysteresis_rate", 0.0)),
            thermal=thermal,
            ageing={k: float(v) for k, v in doc.get("ageing", {}).items()},
        )
    except KeyError as err:
        raise ConfigError(f"{where}: missing field {err}") from err
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def load_cell_params(name_or_path: str | Path) -> CellParams:
    """Load a built-in parameter set (``lfp``, ``nmc``, or its full name) or a TOML file.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        ``lfp`` / ``nmc`` / ``lfp_a123`` / ``nmc_leaf``, or the path of a ``.toml`` file.

    Returns
    -------
    CellParams
        The parameter set.

    Raises
    ------
    ConfigError
        If the name is unknown, the file is missing or it is invalid.
    """
    key = str(name_or_path)
    builtin = BUILTIN_CELLS.get(key, key)
    if builtin in BUILTIN_CELLS.values():
        text = resources.files("openbess.cell").joinpath(f"data/{builtin}.toml").read_text()
        where = f"built-in cell '{builtin}'"
    else:
        path = Path(key)
        if not path.is_file():
            known = ", ".join(sorted(BUILTIN_CELLS))
            raise ConfigError(f"cell '{key}' is neither a built-in ({known}) nor a file")
        text = path.read_text()
        where = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML: {err}") from err
    return parse_cell_params(doc, where)
