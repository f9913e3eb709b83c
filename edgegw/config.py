"""The TOML config, validated by pydantic, with errors an installer can act on.

:func:`load_config` reports every problem at once, each as ``file: key.path: what is wrong (expected
...)``. Relative paths in the file are relative to the file itself, so a config can be copied
together with its field file and drivers folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgegw.drivers import DriverRegistry, LayoutDriver, LayoutField, load_drivers
from edgegw.errors import ConfigError, DriverLoadError
from edgegw.uplink import fiware

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: Any) -> Any:
    """Accept seconds as a number or a string such as "90s", "10m", "1h", "2d"."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"expected a duration such as 30, \"90s\", \"10m\", \"1h\" (got {value!r})")
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB)?\s*$")
_UNIT_BYTES = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, None: 1}


def _size(value: Any) -> Any:
    """Accept bytes as a number or a string such as "500MB", "2GB"."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"expected a size such as 1000000, \"500MB\", \"2GB\" (got {value!r})")
        return int(float(m.group(1)) * _UNIT_BYTES[m.group(2)])
    return value


Size = Annotated[int, BeforeValidator(_size), Field(ge=1_000_000)]


class _Section(BaseModel):
    # A misspelt key is the most common installer mistake: refuse it instead of silently ignoring it.
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- radio sources ----------------------------------------------------------------------------------

RYLR_BANDWIDTH_CODES = {7.8: 0, 10.4: 1, 15.6: 2, 20.8: 3, 31.25: 4, 41.7: 5, 62.5: 6, 125: 7, 250: 8, 500: 9}


class RylrSource(_Section):
    """A REYAX RYLR896/RYLR998 module on a serial port (AT commands)."""

    type: Literal["rylr"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    simulate: Path | None = Field(None, description="field file: emulate the module on a pty instead of a port")
    baudrate: int = 115200
    address: int = Field(1, ge=0, le=65535)
    network_id: int = Field(18, ge=0, le=18)
    band: int = Field(920_600_000, ge=862_000_000, le=1_020_000_000, description="Hz")
    spreading_factor: int = Field(9, ge=7, le=12)
    bandwidth_khz: float = 125
    coding_rate: int = Field(1, ge=1, le=4)
    preamble: int = Field(12, ge=4, le=24)
    cpin: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{8}([0-9A-Fa-f]{24})?$")
    payload_encoding: Literal["hex", "base64", "text"] = "hex"

    @field_validator("bandwidth_khz")
    @classmethod
    def _known_bandwidth(cls, v: float) -> float:
        if v not in RYLR_BANDWIDTH_CODES:
            raise ValueError(f"expected one of {sorted(RYLR_BANDWIDTH_CODES)} kHz")
        return v

    @model_validator(mode="after")
    def _port_or_simulate(self) -> RylrSource:
        if (self.port is None) == (self.simulate is None):
            raise ValueError("set exactly one of port (a real module) or simulate (a field file for the emulator)")
        return self

    def at_parameter(self) -> str:
        """The AT+PARAMETER argument: SF, bandwidth code, coding rate, preamble."""
        return f"{self.spreading_factor},{RYLR_BANDWIDTH_CODES[self.bandwidth_khz]},{self.coding_rate},{self.preamble}"


Source = RylrSource  # one module family so far; later families join a discriminated union on `type`


# -- devices and layouts ----------------------------------------------------------------------------

class Device(_Section):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)
    address: int = Field(ge=0, le=65535)
    driver: str
    source: str | None = None
    name: str = ""
    location: tuple[float, float] | None = Field(None, description="[latitude, longitude]")
    interval: Duration = Field(3600, description="expected reporting interval")

    @field_validator("driver")
    @classmethod
    def _driver_known(cls, v: str, info: ValidationInfo) -> str:
        drivers: DriverRegistry | None = (info.context or {}).get("drivers")
        if drivers is not None and v not in drivers:
            raise ValueError(f"unknown driver {v!r}; known drivers: {', '.join(drivers.names()) or 'none'}")
        return v

    @field_validator("location")
    @classmethod
    def _on_earth(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (-90 <= v[0] <= 90 and -180 <= v[1] <= 180):
            raise ValueError("expected [latitude, longitude] in degrees, e.g. [35.6762, 139.6503]")
        return v


class LayoutFieldSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["u8", "i8", "u16", "i16", "u32", "i32", "f32"]
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    min: float | None = None
    max: float | None = None
    counter: bool = False

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("scale must not be 0")
        return v


class Layout(_Section):
    """A declarative driver: the payload is these fields, in order, with no gaps."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    endian: Literal["big", "little"] = "big"
    fields: list[LayoutFieldSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_counter(self) -> Layout:
        if sum(f.counter for f in self.fields) > 1:
            raise ValueError("at most one field may be the frame counter (counter = true)")
        if any(f.counter and f.type not in ("u8", "u16", "u32") for f in self.fields):
            raise ValueError("the counter field must be unsigned (u8, u16 or u32)")
        return self

    def driver(self) -> LayoutDriver:
        return LayoutDriver(
            self.name,
            [LayoutField(f.name, f.type, f.scale, f.offset, f.unit, f.min, f.max, f.counter) for f in self.fields],
            self.endian,
            self.description,
        )


# -- uplinks ----------------------------------------------------------------------------------------

class Batching(_Section):
    max_items: int = Field(500, ge=1, le=100_000)
    max_bytes: int = Field(256_000, ge=1024)


class MqttConnection(_Section):
    """How to reach an MQTT broker: shared by every uplink that publishes over MQTT."""

    host: str
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive: int = Field(60, ge=5, le=3600)
    max_inflight: int = Field(4, ge=1, le=64, description="batches awaiting PUBACK at once")
    batch: Batching = Batching()

    @model_validator(mode="after")
    def _one_password(self) -> MqttConnection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

    def secret(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


class MqttUplink(MqttConnection):
    type: Literal["mqtt"]
    name: str = Field("mqtt", pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field("edgegw/{gateway}/batches", description="{gateway} is replaced by gateway_id")

    @field_validator("topic")
    @classmethod
    def _publishable(cls, v: str) -> str:
        if not v or "#" in v or "+" in v:
            raise ValueError("expected a topic without wildcards (+ or #), e.g. \"town/sensors/{gateway}\"")
        return v


class FileUplink(_Section):
    """Batches appended as JSON lines in a folder: sites with no coverage, collected on a USB stick."""

    type: Literal["file"]
    name: str = Field("file", pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path = Path("batches")
    rotate_bytes: int = Field(10_000_000, ge=4096)
    batch: Batching = Batching()


# -- FIWARE uplinks --------------------------------------------------------------------------------

_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_API_SEGMENTS = ("v2", "ngsi-ld")  # where the API paths edgegw appends itself begin
_URL_EXAMPLE = 'e.g. "http://orion.town.example:1026"'


class AttributeMapping(_Section):
    """How driver value names become IoT Agent object ids or NGSI attribute names."""

    attributes: dict[str, str] = Field({}, description='driver value name -> attribute name, e.g. { level = "wl" }')

    @field_validator("attributes")
    @classmethod
    def _values_exist(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        bad = [f"{k} = {t!r}" for k, t in v.items() if not _ATTRIBUTE_NAME.match(t)]
        if bad:
            raise ValueError(f"attribute names may use letters, digits, _ and - only: {', '.join(bad)}")
        drivers: DriverRegistry | None = (info.context or {}).get("drivers")
        used = sorted({d for d in (info.context or {}).get("device_drivers", ()) if drivers and d in drivers})
        if drivers is None or not used:
            return v  # no devices yet (or their drivers are reported elsewhere): nothing to check against
        produced = sorted({name for d in used for name in drivers[d].values})
        unknown = [k for k in v if k not in produced and k not in fiware.ITEM_MEASURES
                   and not k.startswith(fiware.ITEM_MEASURE_PREFIXES)]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: no driver of the configured devices ({', '.join(used)}) produces "
                f"such a value; they produce: {', '.join(produced)}"
            )
        return v

    def fiware_mapping(self, gateway_id: str, devices: Iterable[Device]) -> fiware.FiwareMapping:
        """The mapping for :mod:`edgegw.uplink.fiware`, with the locations of ``[[devices]]``."""
        locations = {d.id: d.location for d in devices if d.location is not None}
        return fiware.FiwareMapping(gateway_id=gateway_id, locations=locations, **self._mapping())

    def _mapping(self) -> dict[str, Any]:
        return {"attributes": dict(self.attributes)}


class EntityMapping(AttributeMapping):
    """Attribute names plus how readings and alarms become NGSI entities."""

    entity_types: dict[str, str] = Field({}, description='driver -> entity type, e.g. { paddy = "WaterObserved" }')
    entity_id: str = Field("urn:ngsi-ld:{type}:{device}", description="{type}, {device}, {gateway} are filled in")
    alert_categories: dict[str, str | tuple[str, str]] = Field(
        {}, description='rule name or alarm kind -> SDM Alert category, or [category, subCategory]')

    @field_validator("entity_types")
    @classmethod
    def _known_types(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        drivers: DriverRegistry | None = (info.context or {}).get("drivers")
        problems = []
        if drivers is not None and (unknown := [k for k in v if k not in drivers]):
            problems.append(f"unknown driver(s) {', '.join(map(repr, unknown))}; "
                            f"known drivers: {', '.join(drivers.names())}")
        if wrong := [f"{t!r} (for {k})" for k, t in v.items() if t not in fiware.READING_TYPES]:
            problems.append(f"unknown entity type {', '.join(wrong)}; "
                            f"supported: {', '.join(sorted(fiware.READING_TYPES))}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("entity_id")
    @classmethod
    def _template(cls, v: str) -> str:
        fiware.FiwareMapping(entity_id=v)  # its ValueError says what is wrong
        return v

    @field_validator("alert_categories")
    @classmethod
    def _categories(cls, v: dict[str, str | tuple[str, str]]) -> dict[str, str | tuple[str, str]]:
        wrong = [f"{k} = {c!r}" for k, c in v.items()
                 if (c if isinstance(c, str) else c[0]) not in fiware.ALERT_CATEGORY_NAMES]
        if wrong:
            raise ValueError(f"unknown SDM Alert category: {', '.join(wrong)}; "
                             f"expected one of {', '.join(sorted(fiware.ALERT_CATEGORY_NAMES))}")
        return v

    def _mapping(self) -> dict[str, Any]:
        categories = {k: (c, None) if isinstance(c, str) else (c[0], c[1]) for k, c in self.alert_categories.items()}
        return {"attributes": dict(self.attributes), "entity_types": dict(self.entity_types),
                "entity_id": self.entity_id, "alert_categories": categories}


class IotAgentUplink(MqttConnection, AttributeMapping):
    """Measures to a FIWARE IoT Agent over MQTT: one message per device and batch, QoS 1."""

    apikey: str = Field(description="the API key of the IoT Agent's service group")
    topic: str = Field(description="{apikey} and {device} are filled in")

    @field_validator("apikey")
    @classmethod
    def _apikey(cls, v: str) -> str:
        if not v or any(c in "/+#" or c.isspace() for c in v):
            raise ValueError("expected the service group's API key, without / + # or spaces, "
                             f'e.g. "4jggokgpepnvsb2uv4s40d59ov" (got {v!r})')
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        try:
            v.format(apikey="k", device="d")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"use only {{apikey}} and {{device}} in the topic (got {v!r})") from None
        if "{device}" not in v or "#" in v or "+" in v:
            raise ValueError("the IoT Agent tells devices apart by topic: it needs {device} and no wildcards, "
                             f'e.g. "/{{apikey}}/{{device}}/attrs" (got {v!r})')
        return v


class IotaJsonUplink(IotAgentUplink):
    """IoT Agent JSON: ``{"level": 412, "TimeInstant": ...}``.

    The default topic is the classic form; the agent's current docs name ``/json/{apikey}/{device}/attrs``:
    check the deployed version.
    """

    type: Literal["iota-json"]
    name: str = Field("iota-json", pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field("/{apikey}/{device}/attrs", description="{apikey} and {device} are filled in")


class IotaUlUplink(IotAgentUplink):
    """IoT Agent Ultralight 2.0: ``<time>|level|412|battery|3.6``."""

    type: Literal["iota-ul"]
    name: str = Field("iota-ul", pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field("/ul/{apikey}/{device}/attrs", description="{apikey} and {device} are filled in")


def _broker_url(v: str) -> str:
    """The base URL of a context broker, without a trailing slash."""
    parts = urlsplit(v.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected the http:// or https:// base URL of the context broker, {_URL_EXAMPLE} (got {v!r})")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"the port in {v!r} is not a number from 1 to 65535; {_URL_EXAMPLE}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("put no user or password in the URL: set token or token_file (sent as X-Auth-Token)")
    if parts.query or parts.fragment:
        raise ValueError(f"expected a base URL without ?query or #fragment, {_URL_EXAMPLE} (got {v!r})")
    segments = parts.path.split("/")
    api = next((i for i, seg in enumerate(segments) if seg in _API_SEGMENTS), None)
    if api is not None:
        base = f"{parts.scheme}://{parts.netloc}{'/'.join(segments[:api])}"
        raise ValueError(f"edgegw adds the API path (/v2/op/update or /ngsi-ld/v1/entityOperations/upsert) "
                         f"itself: set url to the broker's base URL, \"{base}\" (got {v!r})")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _tenant_name(v: str | None, header: str) -> str | None:
    if v is not None and not re.fullmatch(r"[a-z0-9_]{1,50}", v):
        raise ValueError(f"{header}: expected 1-50 lowercase letters, digits or _ (FIWARE tenant rules; "
                         f'Orion folds case), e.g. "kamikawa" (got {v!r})')
    return v


class NgsiConnection(EntityMapping):
    """How to reach a context broker over HTTP: shared by the NGSI-v2 and NGSI-LD uplinks."""

    url: str = Field(description="the context broker's base URL")
    token: str | None = Field(None, description="sent as X-Auth-Token")
    token_file: Path | None = None
    timeout: Duration = Field(10, description="per request, for connecting and for the answer")
    verify_tls: bool = True
    ca_file: Path | None = None
    batch: Batching = Batching()

    @field_validator("url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _broker_url(v)

    @model_validator(mode="after")
    def _one_token(self) -> NgsiConnection:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self

    def secret(self) -> str | None:
        """The X-Auth-Token, read from token_file at each call so a rotated token needs no restart."""
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


class NgsiV2Uplink(NgsiConnection):
    """NGSI-v2 (Orion): ``POST /v2/op/update`` with ``actionType: append``."""

    type: Literal["ngsi-v2"]
    name: str = Field("ngsi-v2", pattern=r"^[A-Za-z0-9_.-]+$")
    service: str | None = Field(None, description="Fiware-Service (tenant)")
    service_path: str = Field("/", description="Fiware-ServicePath")

    @field_validator("service")
    @classmethod
    def _service(cls, v: str | None) -> str | None:
        return _tenant_name(v, "Fiware-Service")

    @field_validator("service_path")
    @classmethod
    def _service_path(cls, v: str) -> str:
        example = 'e.g. "/" or "/rivers/kamo"'
        if "#" in v or "," in v:
            raise ValueError(f"an update goes to exactly one service path (# and , are for queries), {example}")
        if not v.startswith("/") or (v != "/" and v.endswith("/")):
            raise ValueError(f"expected an absolute path that starts with / and does not end with /, {example} "
                             f"(got {v!r})")
        segments = v[1:].split("/") if v != "/" else []
        if len(segments) > 10 or not all(re.fullmatch(r"[A-Za-z0-9_]{1,50}", s) for s in segments):
            raise ValueError(f"expected at most 10 levels of 1-50 letters, digits or _, {example} (got {v!r})")
        return v


class NgsiLdUplink(NgsiConnection):
    """NGSI-LD: ``POST /ngsi-ld/v1/entityOperations/upsert``, the @context in every entity."""

    type: Literal["ngsi-ld"]
    name: str = Field("ngsi-ld", pattern=r"^[A-Za-z0-9_.-]+$")
    tenant: str | None = Field(None, description="NGSILD-Tenant")
    context: str | list[str] = Field(fiware.LD_CORE_CONTEXT, description="@context URL(s)")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        return _tenant_name(v, "NGSILD-Tenant")

    @field_validator("context")
    @classmethod
    def _context_urls(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls or any(urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).netloc for u in urls):
            raise ValueError(f"expected the URL of an @context, or a list of them, e.g. \"{fiware.LD_CORE_CONTEXT}\"")
        return v

    @field_validator("entity_id")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", v):
            raise ValueError("NGSI-LD entity ids are URIs: start the template with a scheme, "
                             f'e.g. "urn:ngsi-ld:{{type}}:{{device}}" (got {v!r})')
        return v


Uplink = Annotated[
    MqttUplink | FileUplink | IotaJsonUplink | IotaUlUplink | NgsiV2Uplink | NgsiLdUplink, Field(discriminator="type")
]
UplinkConfig = MqttUplink | FileUplink | IotaJsonUplink | IotaUlUplink | NgsiV2Uplink | NgsiLdUplink
UPLINK_TYPES = ("mqtt", "file", "iota-json", "iota-ul", "ngsi-v2", "ngsi-ld")


# -- rules and local actions ------------------------------------------------------------------------

Severity = Literal["informational", "low", "medium", "high", "critical"]
AlarmKind = Literal[
    "trap_sprung", "trap_reminder", "trap_rearmed", "water_level_alarm", "water_level_clear", "water_rise",
    "device_silent", "device_back", "battery_low", "battery_ok", "sensor_fault",
]
_RULE_NAME = r"^[A-Za-z0-9_.-]+$"


class _RuleBase(_Section):
    """Which devices a rule watches: the ``devices`` listed, else every device of the ``drivers`` listed."""

    devices: list[str] = Field([], description="device ids; when set, drivers is ignored")
    drivers: list[str] = Field([], description="driver names; empty with no devices = every device")

    def applies_to(self, device: Device) -> bool:
        if self.devices:
            return device.id in self.devices
        return not self.drivers or device.driver in self.drivers


class TrapRule(_RuleBase):
    """Armed -> sprung raises ``trap_sprung`` once, then a reminder every ``reminder`` until re-armed."""

    type: Literal["trap"]
    name: str = Field("trap", pattern=_RULE_NAME)
    drivers: list[str] = ["trap"]
    value: str = Field("state", description="the value that says armed or sprung")
    sprung: str = Field("sprung", description="what that value is when the trap has been sprung")
    reminder: Duration | None = Field(3600, description="re-raise while sprung; omit or 0 for none")

    @field_validator("reminder", mode="before")
    @classmethod
    def _zero_is_none(cls, v: Any) -> Any:
        return None if v in (0, "0", False) else v


class Stage(_Section):
    """One threshold: entered at ``above`` (rising water) or ``below`` (a paddy running dry)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    above: float | None = None
    below: float | None = None
    severity: Severity | None = Field(None, description="default: rises with the stage's rank")

    @model_validator(mode="after")
    def _one_bound(self) -> Stage:
        if (self.above is None) == (self.below is None):
            raise ValueError("set exactly one of above (entered when the level rises to it) or below")
        return self


class Rise(_Section):
    amount: float = Field(gt=0, description="alarm when the value rose more than this ...")
    within: Duration = Field(description="... within this time")
    severity: Severity = "high"


class WaterLevelRule(_RuleBase):
    """Stages with hysteresis (river: standby, caution, evacuation decision, danger) and rate of rise."""

    type: Literal["water_level"]
    name: str = Field("water_level", pattern=_RULE_NAME)
    drivers: list[str] = ["water_level"]
    value: str = "level"
    hysteresis: float = Field(0, ge=0, description="in the value's unit: a stage is left only this far past it")
    stages: list[Stage] = []
    rise: Rise | None = None

    @model_validator(mode="after")
    def _something_to_watch(self) -> WaterLevelRule:
        if not self.stages and self.rise is None:
            raise ValueError("give stages, rise, or both")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        return self


class DeviceHealthRule(_RuleBase):
    """Silent devices, low batteries, implausible readings."""

    type: Literal["device_health"]
    name: str = Field("device_health", pattern=_RULE_NAME)
    silent_after: float = Field(3.0, ge=1, description="device_silent after this many missed intervals")
    silent_severity: Severity = Field("medium", description="a silent trap sensor is an unchecked trap: say high")
    battery: str = Field("battery", description="the value holding the battery voltage")
    battery_low: float | None = Field(3.2, description="volts; omit for no battery alarm")
    battery_hysteresis: float = Field(0.1, ge=0)
    plausible: bool = Field(True, description="sensor_fault outside the range the driver declares")
    stuck: dict[str, Annotated[int, Field(ge=2)]] = Field(
        {}, description="value -> sensor_fault after this many identical readings in a row")
    max_jump: dict[str, float] = Field({}, description="value -> largest believable change between readings")


Rule = Annotated[TrapRule | WaterLevelRule | DeviceHealthRule, Field(discriminator="type")]


class _ActionBase(_Section):
    name: str = Field(pattern=_RULE_NAME)
    alarms: list[AlarmKind] = Field([], description="alarm kinds that run this action; empty = all")
    min_severity: Severity = "low"
    devices: list[str] = []
    include_late: bool = Field(False, description="also run for late alarms (about the past)")
    limit: int = Field(20, ge=1, description="at most this many runs ...")
    per: Duration = Field(3600, description="... per this time; more are skipped and counted")


class CommandAction(_ActionBase):
    """Run a program: the alarm as JSON on stdin, key fields as EDGEGW_* environment variables."""

    type: Literal["command"]
    command: list[str] = Field(min_length=1, description='argv, e.g. ["/usr/local/bin/siren", "--on"]')
    timeout: Duration = 10


class MqttAction(_ActionBase):
    """Publish the alarm to a (usually local) MQTT broker, which works with the uplink down."""

    type: Literal["mqtt"]
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic: str = Field("edgegw/{gateway}/alarms/{alarm}", description="{gateway}, {device}, {alarm} are filled in")
    username: str | None = None
    password: str | None = None
    retain: bool = False


Action = Annotated[CommandAction | MqttAction, Field(discriminator="type")]


class AlarmSettings(_Section):
    late_after: Duration = Field(600, description="an alarm about a reading older than this is marked late")
    reorder_window: Annotated[float, BeforeValidator(_duration), Field(ge=0)] = Field(
        0, description="hold readings this long to evaluate them in observation order (for devices that"
                       " send stored history); 0 = evaluate at once")


class Store(_Section):
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    rejects_kept: int = Field(1000, ge=0, description="raw rejected frames kept for diagnosis")
    keep_delivered: Duration = Field(7 * 86400, description="how long delivered items stay for inspection")
    max_bytes: Size = Field(2_000_000_000, description="cap on the database and its WAL, e.g. \"2GB\"; when"
                            " reached, delivered items go first, then the oldest readings, never alarms")


class Log(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class Config(_Section):
    """A whole gateway config file."""

    gateway_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)
    data_dir: Path = Path("data")
    drivers_dir: Path | None = None
    sources: list[Source] = Field(min_length=1)
    devices: list[Device] = []
    layouts: list[Layout] = []
    uplinks: list[Uplink] = []
    rules: list[Rule] = []
    actions: list[Action] = []
    alarms: AlarmSettings = AlarmSettings()
    health_every: Duration = Field(300, description="how often the gateway reports its own health upstream")
    store: Store = Store()
    log: Log = Log()

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems = cross_reference_problems(
            [s.model_dump() for s in self.sources], [d.model_dump() for d in self.devices],
            [u.model_dump() for u in self.uplinks],
        )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def device_source(self, device: Device) -> str:
        return device.source or self.sources[0].name

    def effective_rules(self) -> list[TrapRule | WaterLevelRule | DeviceHealthRule]:
        """The configured rules, plus the defaults for kinds not configured: trap and device health."""
        configured = {r.type for r in self.rules}
        defaults = [TrapRule(type="trap"), DeviceHealthRule(type="device_health")]
        return list(self.rules) + [r for r in defaults if r.type not in configured]

    def effective_uplinks(self) -> list[UplinkConfig]:
        """The configured uplinks, or the embedded default: JSON-lines files in the data directory."""
        return list(self.uplinks) or [FileUplink(type="file")]


def cross_reference_problems(sources: list, devices: list, uplinks: list) -> list[str]:
    """Problems between sections: unknown or ambiguous sources, shared addresses, repeated names.

    Works on plain dicts, so :func:`load_config` can report these alongside every other problem,
    even when some entries are malformed (those are skipped here and reported on their own).
    """
    sources = [s for s in sources if isinstance(s, dict)]
    devices = [(i, d) for i, d in enumerate(devices) if isinstance(d, dict)]
    names = [s.get("name") for s in sources]
    problems = []
    seen: dict[tuple, int] = {}
    for i, d in devices:
        source = d.get("source")
        if source is None and len(names) > 1:
            problems.append(f"devices[{i}].source: several sources exist; name one of {names}")
        elif source is not None and source not in names:
            problems.append(f"devices[{i}].source: unknown source {source!r}; expected one of {names}")
        key = (source or (names[0] if names else None), d.get("address"))
        if key[1] is not None:
            if key in seen:
                problems.append(f"devices[{i}].address: {key[1]} is also devices[{seen[key]}] on source {key[0]!r}")
            seen.setdefault(key, i)
    for what, items in (("devices", [d.get("id") for _, d in devices]), ("sources", names),
                        ("uplinks", [u.get("name", u.get("type")) for u in uplinks if isinstance(u, dict)])):
        dupes = sorted({str(x) for x in items if x is not None and items.count(x) > 1})
        if dupes:
            problems.append(f"{what}: names must be unique, repeated: {dupes}")
    return problems


# Per rule type: the drivers it watches by default, and the keys that name a driver value.
RULE_DEFAULTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "trap": (["trap"], {"value": "state"}),
    "water_level": (["water_level"], {"value": "level"}),
    "device_health": ([], {}),
}


def rule_problems(rules: list, actions: list, devices: list, drivers: DriverRegistry | None) -> list[str]:
    """Rules and actions that name devices, drivers or values that do not exist (on plain dicts, like
    :func:`cross_reference_problems`, so they are reported with every other problem)."""
    devices = [d for d in devices if isinstance(d, dict)]
    ids = [d.get("id") for d in devices]
    problems = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or rule.get("type") not in RULE_DEFAULTS:
            continue
        default_drivers, value_keys = RULE_DEFAULTS[rule["type"]]
        for dev in rule.get("devices", []):
            if dev not in ids:
                problems.append(f"rules[{i}].devices: unknown device {dev!r}; configured devices: {ids}")
        wanted = rule.get("drivers", default_drivers)
        if drivers is not None:
            for drv in wanted if isinstance(wanted, list) else []:
                if drv not in drivers:
                    problems.append(f"rules[{i}].drivers: unknown driver {drv!r}; known drivers: {drivers.names()}")
        if rule.get("devices"):
            watched = [d for d in devices if d.get("id") in rule["devices"]]
        else:
            watched = [d for d in devices if not wanted or d.get("driver") in wanted]
        names = {key: rule.get(key, default) for key, default in value_keys.items()}
        for table in ("max_jump", "stuck"):
            if isinstance(rule.get(table), dict):
                names.update({f"{table}.{v}": v for v in rule[table]})
        for drv in dict.fromkeys(d.get("driver") for d in watched):
            if drivers is None or drv not in drivers:
                continue
            produced = list(drivers[drv].values)
            for key, value in names.items():
                if value not in produced:
                    problems.append(f"rules[{i}].{key}: driver {drv!r} of the devices this rule watches has no value"
                                    f" {value!r}; it produces: {', '.join(produced)}")
    rule_names = [r.get("name", r.get("type")) for r in rules if isinstance(r, dict)]
    dupes = sorted({str(n) for n in rule_names if rule_names.count(n) > 1})
    if dupes:
        problems.append(f"rules: names must be unique (give each rule of a type its own name), repeated: {dupes}")
    for i, action in enumerate(actions):
        for dev in action.get("devices", []) if isinstance(action, dict) else []:
            if dev not in ids:
                problems.append(f"actions[{i}].devices: unknown device {dev!r}; configured devices: {ids}")
    return problems


# -- loading ----------------------------------------------------------------------------------------

def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif (i and isinstance(loc[i - 1], int) and part in ("rylr", *UPLINK_TYPES, *RULE_DEFAULTS, "command")) \
                or part.startswith("function-"):
            continue  # discriminator tags (right after a list index) and validator names are pydantic's
        else:
            out += f".{part}" if out else str(part)
    return out


# What a missing key is, where "required key is missing" alone would leave an installer guessing.
_MISSING_HINTS = {
    "apikey": ": the API key of the IoT Agent's service group (ask the platform team), "
              'e.g. "4jggokgpepnvsb2uv4s40d59ov"',
    "url": f": the context broker's base URL, {_URL_EXAMPLE}",
}


def _describe(err: dict[str, Any]) -> list[str]:
    path = _key_path(err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        key = err["loc"][-1]
        if len(err["loc"]) > 1 and key in Config.model_fields:
            msg = (f"unknown key here; {key} is a top-level key: TOML puts every key below a [section] header "
                   "into that section, so move it above the first [section] or [[section]]")
        else:
            msg = "unknown key (misspelt? see configs/ for the keys each section takes)"
    elif err["type"] == "missing":
        msg = "required key is missing" + _MISSING_HINTS.get(str(err["loc"][-1]), "")
    elif err["type"] == "union_tag_not_found":
        tags = {"rules": tuple(RULE_DEFAULTS), "actions": ("command", "mqtt")}.get(str(err["loc"][0]), UPLINK_TYPES)
        return [f"{path}.type: required key is missing; expected one of: {', '.join(map(repr, tags))}"]
    elif err["type"] == "union_tag_invalid":
        msg = f"unknown type {err['input'].get('type')!r}; expected one of: {err['ctx']['expected_tags']}"
    elif err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    if "\n" in msg:  # cross-reference problems carry their own key paths
        return msg.split("\n")
    return [f"{path}: {msg}" if path else msg]


def _resolve(base: Path, p: Path | None) -> Path | None:
    return None if p is None else Path(os.path.normpath(p if p.is_absolute() else base / p))


def load_config(path: str | Path) -> tuple[Config, DriverRegistry]:
    """Read, validate and resolve a config file; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    name = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(name, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, [f"cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [f"not valid TOML: {exc}"]) from None

    base = path.resolve().parent
    problems: list[str] = []
    # Drivers first, best effort, so that device entries can be checked against them in the same pass.
    layouts = []
    for i, spec in enumerate(raw.get("layouts", []) if isinstance(raw.get("layouts"), list) else []):
        try:
            layouts.append(Layout.model_validate(spec).driver())
        except ValidationError as exc:
            problems += [line for e in exc.errors() for line in _describe({**e, "loc": ("layouts", i, *e["loc"])})]
    drivers_dir = _resolve(base, Path(raw["drivers_dir"])) if isinstance(raw.get("drivers_dir"), str) else None
    if drivers_dir is not None and not drivers_dir.is_dir():
        problems.append(f"drivers_dir: {drivers_dir} is not a directory")
        drivers_dir = None
    try:
        registry = load_drivers(drivers_dir, layouts)
    except DriverLoadError as exc:
        problems.append(f"drivers: {exc}")
        registry = None

    try:
        # device_drivers: uplink mappings are checked against the values these drivers produce.
        devices = raw["devices"] if isinstance(raw.get("devices"), list) else []
        device_drivers = [d.get("driver") for d in devices if isinstance(d, dict)]
        config = Config.model_validate(raw, context={"drivers": registry, "device_drivers": device_drivers})
    except ValidationError as exc:
        # Layouts were validated above too: _dedupe drops the second copy of their problems.
        problems += [line for e in exc.errors() for line in _describe(e)]
        # The cross-section checks did not run (pydantic stops before them): run them on the raw file.
        problems += cross_reference_problems(*(raw.get(k) if isinstance(raw.get(k), list) else []
                                               for k in ("sources", "devices", "uplinks")))
        problems += rule_problems(*(raw.get(k) if isinstance(raw.get(k), list) else []
                                    for k in ("rules", "actions", "devices")), registry)
        raise ConfigError(name, _dedupe(problems)) from None
    problems += rule_problems(*(raw.get(k) if isinstance(raw.get(k), list) else []
                                for k in ("rules", "actions", "devices")), registry)
    if problems:
        raise ConfigError(name, _dedupe(problems))
    assert registry is not None

    config = config.model_copy(update={
        "data_dir": _resolve(base, config.data_dir),
        "drivers_dir": drivers_dir,
        "sources": [s.model_copy(update={"simulate": _resolve(base, s.simulate)}) for s in config.sources],
        "uplinks": [_resolve_uplink(base, u) for u in config.uplinks],
    })
    return config, registry


def _resolve_uplink(base: Path, u: UplinkConfig) -> UplinkConfig:
    if isinstance(u, MqttConnection):
        return u.model_copy(update={"password_file": _resolve(base, u.password_file),
                                    "ca_file": _resolve(base, u.ca_file)})
    if isinstance(u, NgsiConnection):
        return u.model_copy(update={"token_file": _resolve(base, u.token_file), "ca_file": _resolve(base, u.ca_file)})
    return u


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
