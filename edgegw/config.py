"""The TOML config, validated by pydantic, with errors an installer can act on.

:func:`load_config` reports every problem at once, each as ``file: key.path: what is wrong (expected
...)``. Relative paths in the file are relative to the file itself, so a config can be copied
together with its field file and drivers folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

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


class MqttUplink(_Section):
    type: Literal["mqtt"]
    name: str = Field("mqtt", pattern=r"^[A-Za-z0-9_.-]+$")
    host: str
    port: int = Field(1883, ge=1, le=65535)
    topic: str = Field("edgegw/{gateway}/batches", description="{gateway} is replaced by gateway_id")
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive: int = Field(60, ge=5, le=3600)
    max_inflight: int = Field(4, ge=1, le=64, description="batches awaiting PUBACK at once")
    batch: Batching = Batching()

    @field_validator("topic")
    @classmethod
    def _publishable(cls, v: str) -> str:
        if not v or "#" in v or "+" in v:
            raise ValueError("expected a topic without wildcards (+ or #), e.g. \"town/sensors/{gateway}\"")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> MqttUplink:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self

    def secret(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


class FileUplink(_Section):
    """Batches appended as JSON lines in a folder: sites with no coverage, collected on a USB stick."""

    type: Literal["file"]
    name: str = Field("file", pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path = Path("batches")
    rotate_bytes: int = Field(10_000_000, ge=4096)
    batch: Batching = Batching()


Uplink = Annotated[MqttUplink | FileUplink, Field(discriminator="type")]


class Store(_Section):
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    rejects_kept: int = Field(1000, ge=0, description="raw rejected frames kept for diagnosis")
    keep_delivered: Duration = Field(7 * 86400, description="how long delivered items stay for inspection")


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

    def effective_uplinks(self) -> list[MqttUplink | FileUplink]:
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


# -- loading ----------------------------------------------------------------------------------------

def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("rylr", "mqtt", "file") or part.startswith("function-"):
            continue  # discriminator tags and validator names are pydantic's, not the installer's
        else:
            out += f".{part}" if out else str(part)
    return out


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
        msg = "required key is missing"
    elif err["type"] == "union_tag_not_found":
        return [f"{path}.type: required key is missing; expected one of: 'mqtt', 'file'"]
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
        config = Config.model_validate(raw, context={"drivers": registry})
    except ValidationError as exc:
        # Layouts were validated above too: _dedupe drops the second copy of their problems.
        problems += [line for e in exc.errors() for line in _describe(e)]
        # The cross-section checks did not run (pydantic stops before them): run them on the raw file.
        problems += cross_reference_problems(*(raw.get(k) if isinstance(raw.get(k), list) else []
                                               for k in ("sources", "devices", "uplinks")))
        raise ConfigError(name, _dedupe(problems)) from None
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


def _resolve_uplink(base: Path, u: MqttUplink | FileUplink) -> MqttUplink | FileUplink:
    if isinstance(u, MqttUplink):
        return u.model_copy(update={"password_file": _resolve(base, u.password_file), "ca_file": _resolve(base, u.ca_file)})
    return u


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
