"""Default BMS parameters by chemistry: protection tiers, current derating and contactor timing.

Every number carries its source in a comment. Sources (see ``docs`` and the anchor notes):

- foxBMS 2 (foxBMS/foxbms-2@308028fb, BSD-3): ``battery_cell_cfg.h`` (three tiers MOL/RSL/MSL,
  5 degC apart), ``diag_cfg.c`` (delays), ``bms_cfg.h`` (precharge: 2 s, 3 tries, oscillation
  timeout 10 s), ``battery_system_cfg.h`` (break current 3.5 A), ``plausibility_cfg.h``
  (``PL_STRING_VOLTAGE_TOLERANCE_mV`` 3000), SOF trapezoid (derate from MOL to zero).
- Libre Solar bms-firmware (LibreSolar/bms-firmware@9ff895e1, Apache-2.0): ``bms_common.c``
  ``bms_init_config``: per chemistry OV/UV trip and reset, charge/discharge voltage limits,
  temperature windows with 5 degC hysteresis, 1 C over-current with 320 ms, 2 s OV/UV delay.
- dbus-serialbattery (mr-manuel/venus-os_dbus-serialbattery@358d3c77, MIT):
  ``config.default.ini``: CCL/DCL derating steps by cell voltage, temperature and SoC, recovery
  ramp 5 A/s for 50 A (0.1 /s) after 30 s hold, resume above 1.5 % of the maximum, 60 s
  cable alarm.
- diyBMS v4 LFP preset (``cfg_lifepo4_16cells.json``): OV trip 3.650 V.
- Battery-Emulator (dalathegreat/Battery-Emulator@62532e94, GPL-3; figures only): 60 s link
  liveness, e-stop waits up to 7 s for zero current, 4.2 V NMC limit with 20 mV margins.

"Project choice" marks a number chosen here, with the reason.

The classes are plain frozen dataclasses (no pydantic) so the site configuration can map onto
them; :func:`default_params` builds a consistent set for a chemistry and a pack capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

from openbess.errors import ConfigError

__all__ = [
    "BmsParams",
    "ContactorParams",
    "Curve",
    "LimitParams",
    "MonitorParams",
    "ProtectionParams",
    "Tiers",
    "default_params",
    "known_chemistries",
]


def _finite(owner: str, name: str, value: float, minimum: float | None = None) -> None:
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" and >= {minimum}"
        raise ConfigError(f"{owner}.{name} must be finite{bound}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Tiers:
    """Thresholds of the three foxBMS limit levels of one quantity.

    Parameters
    ----------
    mol : float or None
        Maximum operating limit (warning), in the unit of the quantity. ``None``: tier unused.
    rsl : float or None
        Recommended safety limit (derate: the affected direction is blocked).
    msl : float or None
        Maximum safety limit (the contactors open; the fault latches).
    """

    mol: float | None
    rsl: float | None
    msl: float | None

    def as_tuple(self) -> tuple[float | None, float | None, float | None]:
        """Return ``(mol, rsl, msl)``."""
        return (self.mol, self.rsl, self.msl)


@dataclass(frozen=True, slots=True)
class Curve:
    """A piecewise-linear derating curve: factor [0..1] as a function of one quantity.

    Outside ``x`` the end factors hold (``numpy.interp``), so a curve meant to cut off must end
    with a factor of 0.

    Parameters
    ----------
    x : tuple of float
        Break points, strictly increasing, in the unit of the quantity.
    factor : tuple of float
        Factor at each break point [fraction, 0..1].
    """

    x: tuple[float, ...]
    factor: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.x) < 2 or len(self.x) != len(self.factor):
            raise ConfigError(
                f"Curve needs >= 2 points and as many factors as x values, got "
                f"{len(self.x)} x and {len(self.factor)} factors"
            )
        if not all(math.isfinite(v) for v in self.x) or any(b <= a for a, b in pairwise(self.x)):
            raise ConfigError(f"Curve.x must be finite and strictly increasing, got {self.x}")
        if not all(math.isfinite(f) and 0.0 <= f <= 1.0 for f in self.factor):
            raise ConfigError(f"Curve.factor must lie in [0, 1], got {self.factor}")

    def is_non_increasing(self) -> bool:
        """True if the factor never rises with x."""
        return all(b <= a for a, b in pairwise(self.factor))

    def is_non_decreasing(self) -> bool:
        """True if the factor never falls with x."""
        return all(b >= a for a, b in pairwise(self.factor))

    def is_unimodal(self) -> bool:
        """True if the factor rises (or stays) then falls (or stays): one plateau."""
        f = self.factor
        peak = f.index(max(f))
        rising = all(b >= a for a, b in pairwise(f[: peak + 1]))
        falling = all(b <= a for a, b in pairwise(f[peak:]))
        return rising and falling

    def zero_above(self) -> float:
        """Smallest x from which the factor stays 0 (``inf`` if the last factor is not 0)."""
        if self.factor[-1] != 0.0:
            return math.inf
        i = len(self.factor) - 1
        while i > 0 and self.factor[i - 1] == 0.0:
            i -= 1
        return self.x[i]

    def zero_below(self) -> float:
        """Largest x up to which the factor is 0 (``-inf`` if the first factor is not 0)."""
        if self.factor[0] != 0.0:
            return -math.inf
        i = 0
        while i < len(self.factor) - 1 and self.factor[i + 1] == 0.0:
            i += 1
        return self.x[i]


@dataclass(frozen=True, slots=True)
class ProtectionParams:
    """Thresholds, hysteresis and delays of the fault table (see :mod:`openbess.bms.protection`).

    Voltages [V], temperatures [degC], currents [A] (magnitudes), times [s].

    Parameters
    ----------
    cell_voltage_max_v, cell_voltage_min_v : Tiers
        Over- and under-voltage tiers of the highest / lowest cell [V].
    cell_voltage_hysteresis_v : float
        Return distance before a voltage tier clears [V].
    cell_voltage_set_delay_s, cell_voltage_clear_delay_s : float
        Time a voltage condition must persist before it is raised / cleared [s].
    charge_temperature_max_degc, charge_temperature_min_degc : Tiers
        Temperature window for charging [degC]; RSL blocks charge, MSL opens while charging.
    discharge_temperature_max_degc, discharge_temperature_min_degc : Tiers
        Temperature window for discharging [degC].
    temperature_hysteresis_degc, temperature_set_delay_s, temperature_clear_delay_s : float
        Temperature hysteresis [degC] and delays [s].
    charge_current_a, discharge_current_a : Tiers
        Over-current tiers [A] (magnitudes).
    current_hysteresis_a : float
        Current hysteresis [A].
    current_set_delay_s : float
        Delay of the MOL and RSL current tiers [s].
    current_trip_delay_s : float
        Delay of the MSL current tier [s].
    current_clear_delay_s : float
        Clear delay of the current tiers [s].
    pack_voltage_mismatch_v : float
        Warning when ``abs(pack voltage - sum of cell voltages)`` exceeds this [V].
    pack_voltage_mismatch_delay_s : float
        Delay of that warning [s].
    sensor_warn_delay_s, sensor_block_delay_s, sensor_trip_delay_s : float
        Invalid readings: delay to warn, to block operation, to open the contactors [s].
    sensor_clear_delay_s : float
        Time valid readings must be back before a sensor fault clears [s].
    rest_current_a : float
        Below this magnitude the pack is neither charging nor discharging [A].
    ems_link_timeout_s : float
        EMS link age above which the ``ems_link_lost`` warning is raised [s]. Must exceed the
        EMS command period (in fast simulation, the cycle length).
    """

    cell_voltage_max_v: Tiers
    cell_voltage_min_v: Tiers
    cell_voltage_hysteresis_v: float
    cell_voltage_set_delay_s: float
    cell_voltage_clear_delay_s: float
    charge_temperature_max_degc: Tiers
    charge_temperature_min_degc: Tiers
    discharge_temperature_max_degc: Tiers
    discharge_temperature_min_degc: Tiers
    temperature_hysteresis_degc: float
    temperature_set_delay_s: float
    temperature_clear_delay_s: float
    charge_current_a: Tiers
    discharge_current_a: Tiers
    current_hysteresis_a: float
    current_set_delay_s: float
    current_trip_delay_s: float
    current_clear_delay_s: float
    pack_voltage_mismatch_v: float
    pack_voltage_mismatch_delay_s: float
    sensor_warn_delay_s: float
    sensor_block_delay_s: float
    sensor_trip_delay_s: float
    sensor_clear_delay_s: float
    rest_current_a: float
    ems_link_timeout_s: float

    def __post_init__(self) -> None:
        for name in (
            "cell_voltage_hysteresis_v",
            "cell_voltage_set_delay_s",
            "cell_voltage_clear_delay_s",
            "temperature_hysteresis_degc",
            "temperature_set_delay_s",
            "temperature_clear_delay_s",
            "current_hysteresis_a",
            "current_set_delay_s",
            "current_trip_delay_s",
            "current_clear_delay_s",
            "pack_voltage_mismatch_v",
            "pack_voltage_mismatch_delay_s",
            "sensor_warn_delay_s",
            "sensor_block_delay_s",
            "sensor_trip_delay_s",
            "sensor_clear_delay_s",
            "rest_current_a",
            "ems_link_timeout_s",
        ):
            _finite("ProtectionParams", name, getattr(self, name), 0.0)


@dataclass(frozen=True, slots=True)
class LimitParams:
    """Current-limit derating (see :mod:`openbess.bms.limits`).

    Parameters
    ----------
    rated_charge_current_a, rated_discharge_current_a : float
        Maximum continuous pack current [A] (magnitudes), the limit with no derating.
    charge_voltage : Curve
        Charge factor vs highest cell voltage [V]; non-increasing, ends at 0.
    discharge_voltage : Curve
        Discharge factor vs lowest cell voltage [V]; non-decreasing, starts at 0.
    charge_temperature, discharge_temperature : Curve
        Factor vs cell temperature [degC]; one plateau, 0 at both ends.
    charge_soc, discharge_soc : Curve
        Factor vs SoC [fraction]; charge non-increasing to 0 at 1, discharge non-decreasing
        from 0 at 0.
    unknown_temperature_discharge_factor : float
        Discharge factor when no valid temperature is known [fraction] (charge gets 0).
    recovery_rate_a_per_s : float
        Maximum rise of a limit [A/s]; reductions apply at once.
    recovery_hold_s : float
        After a reduction, the limit may not rise for this long [s].
    resume_fraction : float
        A limit at 0 resumes only once its target exceeds this share of the rated current.
    """

    rated_charge_current_a: float
    rated_discharge_current_a: float
    charge_voltage: Curve
    discharge_voltage: Curve
    charge_temperature: Curve
    discharge_temperature: Curve
    charge_soc: Curve
    discharge_soc: Curve
    unknown_temperature_discharge_factor: float
    recovery_rate_a_per_s: float
    recovery_hold_s: float
    resume_fraction: float

    def __post_init__(self) -> None:
        for name in (
            "rated_charge_current_a",
            "rated_discharge_current_a",
            "recovery_rate_a_per_s",
            "recovery_hold_s",
            "resume_fraction",
            "unknown_temperature_discharge_factor",
        ):
            _finite("LimitParams", name, getattr(self, name), 0.0)
        if self.unknown_temperature_discharge_factor > 1.0:
            raise ConfigError(
                "LimitParams.unknown_temperature_discharge_factor must be <= 1, got "
                f"{self.unknown_temperature_discharge_factor!r}"
            )
        checks = (
            ("charge_voltage", self.charge_voltage.is_non_increasing(), "non-increasing"),
            ("charge_voltage", self.charge_voltage.factor[-1] == 0.0, "ending at factor 0"),
            ("discharge_voltage", self.discharge_voltage.is_non_decreasing(), "non-decreasing"),
            ("discharge_voltage", self.discharge_voltage.factor[0] == 0.0, "starting at 0"),
            ("charge_soc", self.charge_soc.is_non_increasing(), "non-increasing"),
            ("charge_soc", self.charge_soc.zero_above() <= 1.0, "0 at SoC 1"),
            ("discharge_soc", self.discharge_soc.is_non_decreasing(), "non-decreasing"),
            ("discharge_soc", self.discharge_soc.zero_below() >= 0.0, "0 at SoC 0"),
        )
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"LimitParams.{name} must be {what}, got {getattr(self, name)}")
        for name in ("charge_temperature", "discharge_temperature"):
            curve: Curve = getattr(self, name)
            if not (curve.is_unimodal() and curve.factor[0] == 0.0 and curve.factor[-1] == 0.0):
                raise ConfigError(
                    f"LimitParams.{name} must rise to one plateau and be 0 at both ends, "
                    f"got {curve}"
                )


@dataclass(frozen=True, slots=True)
class ContactorParams:
    """Timing and thresholds of the contactor state machine (see :mod:`openbess.bms.contactor`).

    Parameters
    ----------
    break_current_a : float
        Largest current the main contactor may interrupt without welding risk [A].
    precharge_voltage_ratio : float
        Precharge succeeds when bus voltage >= this share of the pack voltage [fraction].
    precharge_timeout_s : float
        Time allowed for one precharge attempt [s].
    precharge_attempts : int
        Attempts before the machine goes to FAULT.
    precharge_retry_wait_s : float
        Pause between attempts, precharge relay open [s].
    zero_current_timeout_s : float
        A normal open waits this long for the current to fall below the break current, then
        opens anyway [s].
    feedback_delay_s : float
        Auxiliary feedback (or current) must disagree with the command for this long before a
        fault is declared [s].
    welded_current_a : float
        Current magnitude that counts as "current flows" while commanded open [A].
    reclose_delay_s : float
        Minimum time after an opening before a new precharge starts (anti-oscillation) [s].
    """

    break_current_a: float
    precharge_voltage_ratio: float
    precharge_timeout_s: float
    precharge_attempts: int
    precharge_retry_wait_s: float
    zero_current_timeout_s: float
    feedback_delay_s: float
    welded_current_a: float
    reclose_delay_s: float

    def __post_init__(self) -> None:
        for name in (
            "break_current_a",
            "precharge_timeout_s",
            "precharge_retry_wait_s",
            "zero_current_timeout_s",
            "feedback_delay_s",
            "welded_current_a",
            "reclose_delay_s",
        ):
            _finite("ContactorParams", name, getattr(self, name), 0.0)
        if not (0.0 < self.precharge_voltage_ratio <= 1.0):
            raise ConfigError(
                "ContactorParams.precharge_voltage_ratio must be in (0, 1], got "
                f"{self.precharge_voltage_ratio!r}"
            )
        if self.precharge_attempts < 1:
            raise ConfigError(
                f"ContactorParams.precharge_attempts must be >= 1, got {self.precharge_attempts!r}"
            )


@dataclass(frozen=True, slots=True)
class MonitorParams:
    """Plausibility checks of the raw readings (see :mod:`openbess.bms.monitor`).

    Bounds are physical (what no healthy sensor can read), never protection limits: a reading
    beyond a protection limit but physically possible stays valid, so the fault table sees it.

    Parameters
    ----------
    open_wire_v : float
        A cell voltage reading below this is an open sense wire [V] (no live cell reads it).
    cell_voltage_plausible_max_v : float
        A cell voltage reading above this is impossible [V] (an open wire's partner input
        reads about two cells).
    cell_voltage_jump_v : float
        Change between two samples not explained by the current [V].
    cell_voltage_rate_v_per_s : float
        Fastest change of a cell voltage at constant current [V/s].
    jump_resistance_factor : float
        Safety factor on the cell resistance when explaining a jump by a current change [1].
    stuck_ohmic_step_v : float
        Smallest ohmic step ``R0 * dI`` a healthy cell must show after its string current
        changed [V] (two quanta of a 1 mV converter).
    stuck_mean_step_v : float
        Smallest move of the string's mean voltage that confirms the other cells responded [V].
    stuck_min_samples : int
        A reading identical for fewer new samples is never called stuck.
    temperature_plausible_min_degc, temperature_plausible_max_degc : float
        Temperature readings outside are impossible (sensor open or short) [degC].
    temperature_jump_degc : float
        Temperature change between two samples that no cell can make [K].
    temperature_rate_degc_per_s : float
        Fastest plausible temperature change [K/s].
    current_range_c : float
        String current magnitude above this C-rate (of one string) is out of the sensor's
        range [1/h].
    current_mismatch_c : float
        Absolute tolerance between a string's current and the mean of the others, as a C-rate
        of one string [1/h].
    current_mismatch_fraction : float
        Relative tolerance of the same comparison [fraction of the others' mean magnitude].
    zero_current_c : float
        With the contactor commanded and reported open, the pack current must read below this
        C-rate of the pack [1/h].
    current_samples : int
        Consecutive samples a current check must fail (or pass again) before it changes its
        verdict.
    """

    # Project choice 0.5 V: below any live Li-ion cell (2.0 V LFP / 2.5 V NMC cut-offs), above
    # the noise of a floating AFE input.
    open_wire_v: float = 0.5
    # Project choice: 1.5 x the LFP MSL (3.65 V); NMC gets 1.5 x 4.25 V from default_params.
    cell_voltage_plausible_max_v: float = 5.475
    # Project choice 0.1 V (10 x foxBMS PL_CELL_VOLTAGE_TOLERANCE_mV 10 between redundant
    # channels); the current-explained part is added on top.
    cell_voltage_jump_v: float = 0.1
    # Project choice: 10 x the fastest LFP knee at 1 C (about 1 mV/s).
    cell_voltage_rate_v_per_s: float = 0.01
    jump_resistance_factor: float = 2.0
    stuck_ohmic_step_v: float = 0.002
    stuck_mean_step_v: float = 0.003
    stuck_min_samples: int = 3
    # NTC channels of common AFEs read about -40..125 degC (project choice).
    temperature_plausible_min_degc: float = -40.0
    temperature_plausible_max_degc: float = 125.0
    # Project choice: 10 x foxBMS PL_CELL_TEMPERATURE_TOLERANCE_dK (5 K between channels).
    temperature_jump_degc: float = 5.0
    temperature_rate_degc_per_s: float = 1.0
    # Project choice: 10 C, beyond any converter of the site; a short circuit trips before.
    current_range_c: float = 10.0
    # Project choice: 0.02 C absolute (twin strings share within 1.5 A of 140 Ah, 0.01 C) or
    # 10 % of the others' current (sharing spread of aged strings).
    current_mismatch_c: float = 0.02
    current_mismatch_fraction: float = 0.1
    # foxBMS DIAG_ID_CURRENT_ON_OPEN_STRING (rest current 200 mA); 0.01 C here, the rest current.
    zero_current_c: float = 0.01
    # foxBMS current-on-open-string: 10 events of its 10 ms task; 5 samples of the 1 s cycle.
    current_samples: int = 5

    def __post_init__(self) -> None:
        for name in (
            "open_wire_v",
            "cell_voltage_jump_v",
            "cell_voltage_rate_v_per_s",
            "jump_resistance_factor",
            "stuck_ohmic_step_v",
            "stuck_mean_step_v",
            "temperature_jump_degc",
            "temperature_rate_degc_per_s",
            "current_range_c",
            "current_mismatch_c",
            "current_mismatch_fraction",
            "zero_current_c",
        ):
            _finite("MonitorParams", name, getattr(self, name), 0.0)
        _finite(
            "MonitorParams", "temperature_plausible_min_degc", self.temperature_plausible_min_degc
        )
        _finite(
            "MonitorParams", "temperature_plausible_max_degc", self.temperature_plausible_max_degc
        )
        if not self.cell_voltage_plausible_max_v > self.open_wire_v:
            raise ConfigError(
                "MonitorParams.cell_voltage_plausible_max_v must exceed open_wire_v, got "
                f"{self.cell_voltage_plausible_max_v!r} <= {self.open_wire_v!r}"
            )
        if not self.temperature_plausible_max_degc > self.temperature_plausible_min_degc:
            raise ConfigError(
                "MonitorParams.temperature_plausible_max_degc must exceed "
                "temperature_plausible_min_degc"
            )
        for name in ("stuck_min_samples", "current_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"MonitorParams.{name} must be >= 1, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class BmsParams:
    """The three parameter groups for one pack.

    Parameters
    ----------
    chemistry : str
        ``lfp`` or ``nmc``.
    capacity_ah : float
        Pack capacity [Ah] (all parallel strings), the base of the C-rates.
    protection : ProtectionParams
    limits : LimitParams
    contactor : ContactorParams
    monitor : MonitorParams
        Plausibility checks of the raw readings.
    """

    chemistry: str
    capacity_ah: float
    protection: ProtectionParams
    limits: LimitParams
    contactor: ContactorParams
    monitor: MonitorParams = field(default_factory=MonitorParams)


# ---------------------------------------------------------------------------------------------
# Chemistry tables. Currents are C-rates here; default_params multiplies by the capacity.


@dataclass(frozen=True, slots=True)
class _Chemistry:
    cell_voltage_max_v: Tiers
    cell_voltage_min_v: Tiers
    charge_temperature_max_degc: Tiers
    charge_temperature_min_degc: Tiers
    discharge_temperature_max_degc: Tiers
    discharge_temperature_min_degc: Tiers
    charge_c_rate: float
    discharge_c_rate: float
    charge_voltage: Curve
    discharge_voltage: Curve
    charge_temperature: Curve
    discharge_temperature: Curve


_LFP = _Chemistry(
    # MOL 3.55: Libre Solar LFP charge voltage limit (bms_common.c); MSL 3.65: diyBMS LFP preset
    # OV trip 3.650 V and dbus-serialbattery "BMS OVP e.g. 3.65"; RSL 3.60 project choice
    # (midway). The charge derating below reaches 0 at 3.50 V, under the MOL.
    cell_voltage_max_v=Tiers(mol=3.55, rsl=3.60, msl=3.65),
    # MOL 2.80: Libre Solar LFP discharge voltage limit = dbus-serialbattery DCL zero; MSL 2.50:
    # Libre Solar LFP UV trip; RSL 2.70 project choice (between).
    cell_voltage_min_v=Tiers(mol=2.80, rsl=2.70, msl=2.50),
    # Temperatures: RSL = where the dbus-serialbattery derating reaches 0 (charge 0 and 55 degC,
    # discharge -10 and 55 degC); MOL and MSL 5 degC inside/outside, the foxBMS tier spacing
    # (battery_cell_cfg.h: 35/40/45 degC).
    charge_temperature_max_degc=Tiers(mol=50.0, rsl=55.0, msl=60.0),
    charge_temperature_min_degc=Tiers(mol=5.0, rsl=0.0, msl=-5.0),
    discharge_temperature_max_degc=Tiers(mol=50.0, rsl=55.0, msl=60.0),
    discharge_temperature_min_degc=Tiers(mol=-5.0, rsl=-10.0, msl=-15.0),
    # Libre Solar: "1C should be safe for all batteries" (OC limit = nominal capacity).
    charge_c_rate=1.0,
    discharge_c_rate=1.0,
    # dbus-serialbattery CCL vs max cell voltage: 3.375/3.400/3.425/3.450/3.500 V ->
    # 1/0.25/0.05/0.005/0.
    charge_voltage=Curve((3.375, 3.400, 3.425, 3.450, 3.500), (1.0, 0.25, 0.05, 0.005, 0.0)),
    # dbus-serialbattery DCL vs min cell voltage: 2.800/2.900/3.000/3.100/3.190 V ->
    # 0/0.005/0.05/0.25/1.
    discharge_voltage=Curve((2.800, 2.900, 3.000, 3.100, 3.190), (0.0, 0.005, 0.05, 0.25, 1.0)),
    # dbus-serialbattery CCL vs temperature: 0/2/5/10/40/45/50/55 degC -> 0/.25/.5/1/1/.5/.25/0.
    charge_temperature=Curve(
        (0.0, 2.0, 5.0, 10.0, 40.0, 45.0, 50.0, 55.0), (0.0, 0.25, 0.5, 1.0, 1.0, 0.5, 0.25, 0.0)
    ),
    # dbus-serialbattery DCL vs temperature: -10/0/5/10/40/45/50/55 degC -> same fractions.
    discharge_temperature=Curve(
        (-10.0, 0.0, 5.0, 10.0, 40.0, 45.0, 50.0, 55.0), (0.0, 0.25, 0.5, 1.0, 1.0, 0.5, 0.25, 0.0)
    ),
)

_NMC = _Chemistry(
    # MOL 4.20: Libre Solar NMC charge voltage limit (= PyBaMM Chen2020 upper cut-off); RSL 4.22:
    # Battery-Emulator's 4.2 V + 20 mV margin; MSL 4.25: Libre Solar NMC OV trip.
    cell_voltage_max_v=Tiers(mol=4.20, rsl=4.22, msl=4.25),
    # MOL 3.20: Libre Solar NMC discharge voltage limit; MSL 3.00: Libre Solar NMC UV trip;
    # RSL 3.10 project choice (between).
    cell_voltage_min_v=Tiers(mol=3.20, rsl=3.10, msl=3.00),
    # RSL = Libre Solar NMC windows (charge 0..45 degC, discharge -20..45 degC), where the
    # derating below reaches 0; MOL/MSL 5 degC inside/outside (foxBMS tier spacing).
    charge_temperature_max_degc=Tiers(mol=40.0, rsl=45.0, msl=50.0),
    charge_temperature_min_degc=Tiers(mol=5.0, rsl=0.0, msl=-5.0),
    discharge_temperature_max_degc=Tiers(mol=40.0, rsl=45.0, msl=50.0),
    discharge_temperature_min_degc=Tiers(mol=-15.0, rsl=-20.0, msl=-25.0),
    # Libre Solar: 1 C for every chemistry.
    charge_c_rate=1.0,
    discharge_c_rate=1.0,
    # Project choice: the dbus-serialbattery CCL fractions (1/0.25/0.05/0.005/0) over a 100 mV
    # band ending at the 4.20 V charge voltage limit (Libre Solar); ENNOID soft OV is 4.10 V.
    charge_voltage=Curve((4.100, 4.125, 4.150, 4.175, 4.200), (1.0, 0.25, 0.05, 0.005, 0.0)),
    # Project choice: the dbus-serialbattery DCL steps (+0/+0.1/+0.2/+0.3/+0.39 V above the zero
    # point) from the 3.20 V discharge voltage limit (Libre Solar).
    discharge_voltage=Curve((3.200, 3.300, 3.400, 3.500, 3.590), (0.0, 0.005, 0.05, 0.25, 1.0)),
    # Project choice: dbus-serialbattery fractions, ends at the Libre Solar NMC windows.
    charge_temperature=Curve(
        (0.0, 2.0, 5.0, 10.0, 30.0, 35.0, 40.0, 45.0), (0.0, 0.25, 0.5, 1.0, 1.0, 0.5, 0.25, 0.0)
    ),
    discharge_temperature=Curve(
        (-20.0, -10.0, -5.0, 0.0, 30.0, 35.0, 40.0, 45.0),
        (0.0, 0.25, 0.5, 1.0, 1.0, 0.5, 0.25, 0.0),
    ),
)

_CHEMISTRIES = {"lfp": _LFP, "nmc": _NMC}

# dbus-serialbattery SoC derating (disabled there by default): charge 85/90/95/98 % ->
# 1/0.5/0.2/0.1, discharge 20/15/10/5 % -> 1/0.5/0.2/0.1; the end points (0 at SoC 1 and 0)
# are added here so the limit cuts off.
_CHARGE_SOC = Curve((0.85, 0.90, 0.95, 0.98, 1.0), (1.0, 0.5, 0.2, 0.1, 0.0))
_DISCHARGE_SOC = Curve((0.0, 0.05, 0.10, 0.15, 0.20), (0.0, 0.1, 0.2, 0.5, 1.0))


def known_chemistries() -> tuple[str, ...]:
    """Names accepted by :func:`default_params`."""
    return tuple(sorted(_CHEMISTRIES))


def default_params(chemistry: str, capacity_ah: float) -> BmsParams:
    """Default protection, limit and contactor parameters for a chemistry and a pack.

    Parameters
    ----------
    chemistry : str
        ``lfp`` or ``nmc`` (case-insensitive).
    capacity_ah : float
        Pack capacity [Ah] (sum over parallel strings), > 0; C-rates are taken on it.

    Returns
    -------
    BmsParams
        A consistent set: every current derating reaches 0 no later than the RSL of the same
        quantity, so the protection only acts when the limits were not obeyed.

    Raises
    ------
    ConfigError
        Unknown chemistry (named), or a capacity that is not finite and > 0.
    """
    key = chemistry.strip().lower()
    if key not in _CHEMISTRIES:
        raise ConfigError(
            f"unknown chemistry {chemistry!r}; known: {', '.join(known_chemistries())}"
        )
    if not (math.isfinite(capacity_ah) and capacity_ah > 0.0):
        raise ConfigError(f"capacity_ah must be finite and > 0, got {capacity_ah!r}")
    c = _CHEMISTRIES[key]
    rated_charge_a = c.charge_c_rate * capacity_ah
    rated_discharge_a = c.discharge_c_rate * capacity_ah
    protection = ProtectionParams(
        cell_voltage_max_v=c.cell_voltage_max_v,
        cell_voltage_min_v=c.cell_voltage_min_v,
        # Project choice 50 mV: Battery-Emulator releases 20 mV below, diyBMS LFP 150 mV.
        cell_voltage_hysteresis_v=0.05,
        # Libre Solar OV/UV delay 2000 ms.
        cell_voltage_set_delay_s=2.0,
        # dbus-serialbattery recovery hold 30 s.
        cell_voltage_clear_delay_s=30.0,
        charge_temperature_max_degc=c.charge_temperature_max_degc,
        charge_temperature_min_degc=c.charge_temperature_min_degc,
        discharge_temperature_max_degc=c.discharge_temperature_max_degc,
        discharge_temperature_min_degc=c.discharge_temperature_min_degc,
        # Libre Solar temp_limit_hyst 5 degC.
        temperature_hysteresis_degc=5.0,
        # foxBMS: 500 events of the 10 ms task (about 5 s) before a temperature flag is set.
        temperature_set_delay_s=5.0,
        # Project choice: temperatures move slowly; 60 s.
        temperature_clear_delay_s=60.0,
        # Project choice: MOL 5 %, RSL 10 %, MSL 20 % above the rated current (foxBMS example
        # 170/175/180 A is +3 %/+6 %; widened for converter ripple and sensor error).
        charge_current_a=Tiers(1.05 * rated_charge_a, 1.10 * rated_charge_a, 1.20 * rated_charge_a),
        discharge_current_a=Tiers(
            1.05 * rated_discharge_a, 1.10 * rated_discharge_a, 1.20 * rated_discharge_a
        ),
        # Project choice 5 % of the rated current.
        current_hysteresis_a=0.05 * max(rated_charge_a, rated_discharge_a),
        # Project choice 1 s for warn/derate; MSL 0.32 s: Libre Solar OC delay 320 ms.
        current_set_delay_s=1.0,
        current_trip_delay_s=0.32,
        # dbus-serialbattery recovery hold 30 s.
        current_clear_delay_s=30.0,
        # foxBMS PL_STRING_VOLTAGE_TOLERANCE_mV 3000 (a warning there too).
        pack_voltage_mismatch_v=3.0,
        # Project choice: 5 s, so a transient during a current step does not warn.
        pack_voltage_mismatch_delay_s=5.0,
        # Project choice (stationary: derate before opening; foxBMS opens after ~0.2 s):
        # warn after 2 s, block after 5 s, open after 30 s of invalid readings.
        sensor_warn_delay_s=2.0,
        sensor_block_delay_s=5.0,
        sensor_trip_delay_s=30.0,
        sensor_clear_delay_s=10.0,
        # Project choice 0.01 C (foxBMS rest current 200 mA).
        rest_current_a=0.01 * capacity_ah,
        # Battery-Emulator: 60 s without frames -> missing; dbus-serialbattery cable alarm 60 s.
        ems_link_timeout_s=60.0,
    )
    limits = LimitParams(
        rated_charge_current_a=rated_charge_a,
        rated_discharge_current_a=rated_discharge_a,
        charge_voltage=c.charge_voltage,
        discharge_voltage=c.discharge_voltage,
        charge_temperature=c.charge_temperature,
        discharge_temperature=c.discharge_temperature,
        charge_soc=_CHARGE_SOC,
        discharge_soc=_DISCHARGE_SOC,
        # foxBMS SOF_STRING_CURRENT_LIMP_HOME 20 A of a 180 A maximum (about 0.11); 0.1 here.
        unknown_temperature_discharge_factor=0.1,
        # dbus-serialbattery: ramp 5 A/s for a 50 A battery = 0.1 of the maximum per second.
        recovery_rate_a_per_s=0.1 * max(rated_charge_a, rated_discharge_a),
        # dbus-serialbattery recovery hold 30 s.
        recovery_hold_s=30.0,
        # dbus-serialbattery: resume only above 1.5 % of the maximum.
        resume_fraction=0.015,
    )
    contactor = ContactorParams(
        # Project choice 0.05 C (foxBMS example BS_MAIN_CONTACTORS_MAXIMUM_BREAK_CURRENT 3500 mA;
        # Battery-Emulator opens below 1.8 A).
        break_current_a=0.05 * capacity_ah,
        # ENNOID uses 0.90 of the input; 0.95 here as specified for openbess.
        precharge_voltage_ratio=0.95,
        # Project choice 5 s: foxBMS allows 2000 ms for its hardware; the twin's default
        # precharge RC is 1 s, and 95 % needs 3 RC.
        precharge_timeout_s=5.0,
        # foxBMS: 3 precharge tries.
        precharge_attempts=3,
        # Project choice 5 s, lets the precharge resistor cool between tries.
        precharge_retry_wait_s=5.0,
        # Battery-Emulator e-stop: waits up to 7 s for zero current before opening.
        zero_current_timeout_s=7.0,
        # foxBMS contactor feedback: 20 events (10 ms) + 100 ms delay, about 0.3 s; 0.5 s here.
        feedback_delay_s=0.5,
        # Project choice 0.02 C ("current on open string", foxBMS diag, threshold not public).
        welded_current_a=0.02 * capacity_ah,
        # foxBMS BMS_OSCILLATION_TIMEOUT: 1000 x 10 ms.
        reclose_delay_s=10.0,
    )
    msl_max = c.cell_voltage_max_v.msl
    monitor = MonitorParams(
        # 1.5 x the MSL: an overcharged cell still reads valid, an open wire's partner does not.
        cell_voltage_plausible_max_v=1.5 * (msl_max if msl_max is not None else 4.25),
    )
    return BmsParams(
        chemistry=key,
        capacity_ah=float(capacity_ah),
        protection=protection,
        limits=limits,
        contactor=contactor,
        monitor=monitor,
    )
