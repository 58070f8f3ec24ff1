"""Site configuration: one TOML file validated with pydantic.

Every field has a documented default, so a site file may be as small as a ``[battery]`` table.
Errors name the field path, the value given and what is allowed. Built-in sites (``home``,
``commercial``) live in ``openbess/sites/*.toml``.
"""

from __future__ import annotations

import tomllib
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from openbess.ems.optimizer import OptimizerConfig
from openbess.ems.realtime import RealtimeConfig
from openbess.errors import ConfigError

BUILTIN_SITES = ("home", "commercial")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpreadConfig(_Model):
    """Per-cell manufacturing spread of the twin (standard deviations, relative)."""

    capacity_rel_std: float = Field(0.01, ge=0, le=0.2)
    resistance_rel_std: float = Field(0.05, ge=0, le=0.5)
    self_discharge_per_day_mean: float = Field(0.0003, ge=0, le=0.05)
    self_discharge_rel_std: float = Field(0.3, ge=0, le=2)
    initial_soc_std: float = Field(0.005, ge=0, le=0.2)
    seed: int = 1


class SensorConfig(_Model):
    """Sensor imperfections of the twin."""

    voltage_noise_v: float = Field(0.001, ge=0, le=0.1)
    voltage_offset_v: float = Field(0.0, ge=-0.1, le=0.1)
    voltage_quantum_v: float = Field(0.001, ge=0, le=0.1)
    temperature_noise_degc: float = Field(0.2, ge=0, le=5)
    temperature_quantum_degc: float = Field(0.1, ge=0, le=5)
    current_noise_a: float = Field(0.1, ge=0)
    current_offset_a: float = Field(0.0)
    current_gain_error: float = Field(0.0, ge=-0.1, le=0.1)
    sample_period_s: float = Field(0.0, ge=0, le=60)
    temperature_sensors_per_module: int = Field(2, ge=1, le=64)
    seed: int = 2


class ThermalConfig(_Model):
    """Thermal environment of the pack."""

    ambient_degc: float = Field(20.0, ge=-40, le=60)
    coolant_degc: float | None = Field(None, ge=-40, le=60)
    conductance_scale: float = Field(1.0, gt=0, le=100)


class BatteryConfig(_Model):
    """The battery: cells, topology and the AC-side ratings used by the EMS and the converter.

    ``capacity_wh`` may replace the cell count: the series count is then derived from it.
    """

    cell: str = "lfp"
    cell_capacity_ah: float | None = Field(None, gt=0, le=2000)
    n_strings: int = Field(1, ge=1, le=64)
    modules_per_string: int = Field(1, ge=1, le=64)
    cells_series_per_module: int | None = Field(None, ge=1, le=1024)
    cells_parallel: int = Field(1, ge=1, le=64)
    capacity_wh: float | None = Field(None, gt=0)
    max_charge_power_w: float = Field(5000.0, gt=0)
    max_discharge_power_w: float = Field(5000.0, gt=0)
    charge_efficiency: float = Field(0.95, gt=0.5, le=1)
    discharge_efficiency: float = Field(0.95, gt=0.5, le=1)
    soc_min: float = Field(0.1, ge=0, lt=1)
    soc_max: float = Field(0.95, gt=0, le=1)
    initial_soc: float = Field(0.5, ge=0, le=1)
    max_c_rate: float = Field(1.0, gt=0, le=10)
    spread: SpreadConfig = SpreadConfig()
    sensors: SensorConfig = SensorConfig()
    thermal: ThermalConfig = ThermalConfig()

    @model_validator(mode="after")
    def _window(self) -> BatteryConfig:
        if self.soc_min >= self.soc_max:
            raise ValueError(f"soc_min ({self.soc_min}) must be below soc_max ({self.soc_max})")
        return self


class ConverterConfig(_Model):
    """Power conversion system (inverter) of the battery."""

    ramp_w_per_s: float | None = Field(None, gt=0)
    standby_w: float = Field(5.0, ge=0)
    peak_efficiency: float = Field(0.97, gt=0.5, le=1)


class PvConfig(_Model):
    """PV plant."""

    enabled: bool = True
    peak_power_w: float = Field(6000.0, ge=0)
    inverter_ac_w: float | None = Field(None, gt=0)
    tilt_deg: float = Field(30.0, ge=0, le=90)
    azimuth_deg: float = Field(180.0, ge=0, le=360)
    source: Literal["household", "clearsky"] = "household"


class LoadConfig(_Model):
    """Building load."""

    source: str = "household"
    annual_energy_kwh: float | None = Field(None, gt=0)
    noise_rel_std: float = Field(0.0, ge=0, le=1)
    seed: int = 3


class GridConfig(_Model):
    """Grid connection and tariff."""

    max_import_w: float = Field(9000.0, gt=0)
    max_export_w: float = Field(9000.0, ge=0)
    price_zone: Literal["DE_LU", "NL"] = "DE_LU"
    import_adder_eur_per_kwh: float = Field(0.15, ge=-1, le=2)
    import_vat: float = Field(0.19, ge=0, le=1)
    export_tariff_eur_per_kwh: float | None = Field(None, ge=-1, le=2)


class BmsConfig(_Model):
    """BMS settings."""

    cycle_s: float = Field(1.0, gt=0, le=60)
    gate_timeout_s: float = Field(10.0, gt=0, le=3600)
    balancing: bool = True
    bleed_resistance_ohm: float = Field(33.0, gt=0)


class EmsConfig(_Model):
    """EMS settings. With ``strategy = "mpc"``, ``forecast = "model"`` (the default) plans on
    forecasts learnt from the site's own meter readings, starting from ``history_csv`` or, on
    the twin, its own last ``history_days``; ``"perfect"`` reads the twin's series ahead."""

    strategy: Literal["self_consumption", "mpc"] = "self_consumption"
    reserve_soc: float = Field(0.2, ge=0, le=1)
    dispatch_s: float = Field(1.0, gt=0, le=3600)
    replan_s: float = Field(900.0, gt=0, le=86400)
    realtime: RealtimeConfig = RealtimeConfig()
    #: ``mpc`` forecasts: ``model`` learns from the site's own meter readings (twin or
    #: hardware); ``perfect`` reads the twin's own series ahead (simulation only).
    forecast: Literal["model", "perfect"] = "model"
    #: Days of past forecast errors each ``mpc`` plan hedges over (0: none).
    scenario_days: int = Field(21, ge=0, le=28)
    #: Meter history to forecast from at start: a CSV in the format of ``openbess backtest
    #: --inputs`` (15-min rows ending at or before the start); on the twin without one, the
    #: twin's own series of the last ``history_days`` days.
    history_csv: str | None = None
    history_days: float = Field(28.0, ge=0, le=366)


class SimulationConfig(_Model):
    """Defaults for ``simulate`` and ``run``."""

    start: datetime = datetime.fromisoformat("2024-06-01T00:00:00+00:00")
    step_s: float = Field(10.0, gt=0, le=3600)

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("start must carry a UTC offset, e.g. 2024-06-01T00:00:00+02:00")
        return v


class StorageConfig(_Model):
    """Run database."""

    path: str = "runs/{site}.sqlite"
    cell_log_interval_s: float = Field(300.0, gt=0, le=86400)


class ModbusConfig(_Model):
    """SunSpec Modbus TCP server (``openbess run --modbus HOST:PORT``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(5020, ge=0, le=65535)
    unit_id: int = Field(1, ge=1, le=247)
    writes_enabled: bool = False
    allowed_clients: list[str] = ["127.0.0.1"]
    heartbeat_timeout_s: float = Field(60.0, gt=0, le=3600)
    default_revert_s: float = Field(300.0, gt=0, le=86400)


class MqttConfig(_Model):
    """MQTT client with Home Assistant discovery (``openbess run --mqtt mqtt://HOST:PORT``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=0, le=65535)
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure: bool = False
    prefix: str = "openbess"
    discovery_prefix: str = "homeassistant"
    discovery: bool = True
    commands_enabled: bool = True
    publish_interval_s: float = Field(1.0, gt=0, le=3600)
    command_duration_s: float = Field(900.0, gt=0, le=86400)
    client_id: str | None = None
    queue_max: int = Field(10000, ge=10)


class HttpConfig(_Model):
    """REST API, metrics and dashboard (``openbess run --http HOST:PORT``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = None
    token_env: str = "OPENBESS_TOKEN"


class CanConfig(_Model):
    """CAN link to a real BMS (``openbess run --can INTERFACE:CHANNEL``)."""

    enabled: bool = False
    interface: str = "virtual"
    channel: str = "vcan0"
    bitrate: int = Field(500000, gt=0)
    dbc: str = "foxbms"
    stale_timeout_s: float = Field(2.0, gt=0, le=60)


class OpenAdrConfig(_Model):
    """OpenADR 2.0b VEN (``openbess run --openadr URL``)."""

    enabled: bool = False
    vtn_url: str = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    ven_name: str = "openbess"
    vtn_fingerprint: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    opt_in: bool = True
    report_interval_s: float = Field(60.0, gt=0)


class InterfacesConfig(_Model):
    """Outside interfaces; all off by default."""

    modbus: ModbusConfig = ModbusConfig()
    mqtt: MqttConfig = MqttConfig()
    http: HttpConfig = HttpConfig()
    can: CanConfig = CanConfig()
    openadr: OpenAdrConfig = OpenAdrConfig()


class SiteConfig(_Model):
    """A whole site: battery, converter, PV, load, grid, BMS, EMS."""

    name: str = "site"
    timezone: str = "UTC"
    latitude_deg: float = Field(48.83, ge=-90, le=90)
    longitude_deg: float = Field(6.86, ge=-180, le=180)
    altitude_m: float = Field(300.0, ge=-500, le=9000)
    battery: BatteryConfig = BatteryConfig()
    converter: ConverterConfig = ConverterConfig()
    pv: PvConfig = PvConfig()
    load: LoadConfig = LoadConfig()
    grid: GridConfig = GridConfig()
    bms: BmsConfig = BmsConfig()
    ems: EmsConfig = EmsConfig()
    simulation: SimulationConfig = SimulationConfig()
    storage: StorageConfig = StorageConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    interfaces: InterfacesConfig = InterfacesConfig()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name like Europe/Paris)"
            ) from err
        return v


def _format_errors(err: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid site configuration ({err.error_count()} error(s))"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/configuration.md)"
        lines.append(f"  {path} = {shown}: {msg}")
    return "\n".join(lines)


def parse_site(doc: dict[str, Any], where: str = "<site>") -> SiteConfig:
    """Validate a parsed site document.

    Parameters
    ----------
    doc : dict
        Parsed TOML.
    where : str
        Name of the source for messages.

    Returns
    -------
    SiteConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        Naming every invalid field path, its value and what is allowed.
    """
    try:
        return SiteConfig.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def load_site(name_or_path: str | Path) -> SiteConfig:
    """Load a built-in site (``home``, ``commercial``) or a TOML site file.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        Built-in site name, or path of a TOML file.

    Returns
    -------
    SiteConfig
        The validated configuration.

    Raises
    ------
    ConfigError
        If the file is missing, not TOML, or invalid.
    """
    key = str(name_or_path)
    if key in BUILTIN_SITES:
        text = resources.files("openbess.sites").joinpath(f"{key}.toml").read_text()
        where = f"built-in site '{key}'"
    else:
        path = Path(key)
        if not path.is_file():
            raise ConfigError(
                f"site '{key}' is neither a built-in site ({', '.join(BUILTIN_SITES)}) nor a file"
            )
        text = path.read_text()
        where = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML: {err}") from None
    return parse_site(doc, where)


def _constraints(info: Any) -> str:
    parts = []
    for m in info.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    return ", ".join(parts)


def _type_name(annotation: Any) -> str:
    args = get_args(annotation)
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if args:
        return " or ".join(_type_name(a) for a in args).replace("NoneType", "none")
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("datetime.datetime", "datetime")


def config_reference() -> str:
    """The site-file reference (Markdown) generated from the model: every field, its default.

    Returns
    -------
    str
        Markdown table rows, one per field, grouped by section.
    """
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        doc = (model.__doc__ or "").strip().splitlines()[0]
        lines.append(f"\n### `[{prefix or 'top level'}]`\n\n{doc}\n")
        lines.append("| field | type | default | allowed |")
        lines.append("|---|---|---|---|")
        nested: list[tuple[type[BaseModel], str]] = []
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                nested.append((ann, f"{prefix}.{name}" if prefix else name))
                continue
            default = info.default
            shown = "none" if default is None else f"`{default}`"
            lines.append(f"| `{name}` | {_type_name(ann)} | {shown} | {_constraints(info)} |")
        for sub, path in nested:
            walk(sub, path)

    walk(SiteConfig, "")
    return "\n".join(lines) + "\n"
