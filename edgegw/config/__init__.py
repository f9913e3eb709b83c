"""The TOML config, validated by pydantic, with errors an installer can act on.

:func:`load_config` reports every problem at once, each as ``file: key.path: what is wrong (expected
...)``. Relative paths in the file are relative to the file itself, so a config can be copied
together with its field file and drivers folder.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from edgegw.config.base import WRITTEN, Delay, Duration, Size, _Section, did_you_mean
from edgegw.config.explain import describe, loc_path
from edgegw.config.locate import item_label, key_lines, place
from edgegw.config.radio import (
    RYLR_BANDWIDTH_CODES,
    Device,
    Layout,
    LayoutFieldSpec,
    RylrSource,
    Source,
)
from edgegw.config.rules import (
    RULE_ALARMS,
    RULE_DEFAULTS,
    Action,
    AlarmSettings,
    CommandAction,
    DeviceHealthRule,
    MqttAction,
    Rule,
    Stage,
    TrapRule,
    WaterLevelRule,
    rule_problems,
)
from edgegw.config.uplinks import (
    UPLINK_TYPES,
    AttributeMapping,
    Batching,
    EntityMapping,
    EntityTypes,
    FileUplink,
    HttpConnection,
    IotAgentHttpUplink,
    IotAgentUplink,
    IotaJsonHttpUplink,
    IotaJsonUplink,
    IotaUlHttpUplink,
    IotaUlUplink,
    ItemRoute,
    MqttConnection,
    MqttUplink,
    NgsiConnection,
    NgsiLdUplink,
    NgsiV2Uplink,
    SigfoxAlarm,
    SigfoxUplink,
    Uplink,
    UplinkConfig,
    entity_type_problems,
)
from edgegw.drivers import DriverRegistry, load_drivers
from edgegw.errors import ConfigError, DriverLoadError
from edgegw.radio.limits import frame_problems
from edgegw.radio.registry import PLUGIN_PROBLEMS, source_problems

__all__ = [
    "RULE_DEFAULTS",
    "RYLR_BANDWIDTH_CODES",
    "UPLINK_TYPES",
    "Action",
    "AlarmSettings",
    "AttributeMapping",
    "Batching",
    "CommandAction",
    "Config",
    "Device",
    "DeviceHealthRule",
    "Duration",
    "EntityMapping",
    "EntityTypes",
    "FileUplink",
    "HttpConnection",
    "IotAgentHttpUplink",
    "IotAgentUplink",
    "IotaJsonHttpUplink",
    "IotaJsonUplink",
    "IotaUlHttpUplink",
    "IotaUlUplink",
    "ItemRoute",
    "Layout",
    "LayoutFieldSpec",
    "Log",
    "MqttAction",
    "MqttConnection",
    "MqttUplink",
    "NgsiConnection",
    "NgsiLdUplink",
    "NgsiV2Uplink",
    "Rule",
    "RylrSource",
    "SigfoxAlarm",
    "SigfoxUplink",
    "Size",
    "Source",
    "Stage",
    "Store",
    "TrapRule",
    "Uplink",
    "UplinkConfig",
    "WaterLevelRule",
    "check_config",
    "cross_reference_problems",
    "frame_problems_of",
    "load_config",
    "rule_problems",
]


class Store(_Section):
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    rejects_kept: int = Field(1000, ge=0, description="raw rejected frames kept for diagnosis")
    keep_delivered: Duration = Field(7 * 86400, description="how long delivered items stay for inspection")
    max_bytes: Size = Field(2_000_000_000, description="cap on the database and its WAL, e.g. \"2GB\"; when"
                            " reached, delivered items go first, then the oldest readings, never alarms")
    min_free: Size = Field(32_000_000, description="room kept free on the database's filesystem, e.g. \"32MB\";"
                           " below it the disk cap frees space as when max_bytes is reached")


class Clock(_Section):
    await_sync: Delay = Field(0, description="until this long after boot, hold this boot's readings unsent until"
                              " NTP has set the clock (fake-hwclock boots a Pi at its last shutdown's time), e.g."
                              " \"15m\"; they go marked unsynced after it; 0 = trust any clock later than 2024")


class Log(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class Config(_Section):
    """A whole gateway config file."""

    gateway_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64)
    data_dir: Path = Path("data")
    drivers_dir: Path | None = None
    keys_file: Path | None = Field(None, description="the devices' frame keys (see edgegw keys new);"
                                   " readable only by the service user")
    sources: list[Source] = Field(min_length=1)
    devices: list[Device] = []
    layouts: list[Layout] = []
    uplinks: list[Uplink] = []
    rules: list[Rule] = []
    actions: list[Action] = []
    alarms: AlarmSettings = AlarmSettings()
    health_every: Duration = Field(300, description="how often the gateway reports its own health upstream")
    store: Store = Store()
    clock: Clock = Clock()
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
        defaults: list[TrapRule | WaterLevelRule | DeviceHealthRule] = [TrapRule(type="trap"),
                                                                         DeviceHealthRule(type="device_health")]
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
    listed = {"devices": devices}  # as written, to name a device by its id
    devices = [(i, d) for i, d in enumerate(devices) if isinstance(d, dict)]
    names = [s.get("name") for s in sources]
    problems = []
    seen: dict[tuple, int] = {}
    for i, d in devices:
        source = d.get("source")
        if source is None and len(names) > 1:
            problems.append(f"devices[{i}].source: several sources exist; name one of {names}")
        elif source is not None and source not in names:
            problems.append(f"devices[{i}].source: unknown source {source!r}{did_you_mean(source, names)};"
                            f" expected one of {names}")
        key = (source or (names[0] if names else None), d.get("address"))
        if key[1] is not None:
            if key in seen:
                other = item_label(listed, "devices", seen[key])
                problems.append(f"devices[{i}].address: {key[1]} is also devices[{other}] on source {key[0]!r}")
            seen.setdefault(key, i)
    for what, items in (("devices", [d.get("id") for _, d in devices]), ("sources", names),
                        ("uplinks", [u.get("name", u.get("type")) for u in uplinks if isinstance(u, dict)])):
        dupes = sorted({str(x) for x in items if x is not None and items.count(x) > 1})
        if dupes:
            problems.append(f"{what}: names must be unique, repeated: {dupes}")
    return problems + entity_type_problems(uplinks)


# -- loading ----------------------------------------------------------------------------------------

def _listed(raw: dict[str, Any], key: str) -> list[Any]:
    """A top-level list of the raw file (``[[sources]]``, ...), or [] where it is missing or not a list."""
    value = raw.get(key)
    return value if isinstance(value, list) else []


def _is_field_file(raw: dict[str, Any]) -> bool:
    """Whether a file is a virtual field (``[air]``, sensors with values and events), which an
    installer may check by mistake: its keys would each be told as unknown."""
    field_keys = {"values", "events", "rssi", "snr"}
    return "gateway_id" not in raw and "sources" not in raw and (
        "air" in raw or any(isinstance(d, dict) and field_keys & set(d) for d in _listed(raw, "devices")))


def _resolve(base: Path, p: Path | None) -> Path | None:
    return None if p is None else Path(os.path.normpath(p if p.is_absolute() else base / p))


def load_config(path: str | Path, keys: bool = True) -> tuple[Config, DriverRegistry]:
    """Read, validate and resolve a config file; raise :class:`ConfigError` listing every problem.

    ``keys=False`` leaves the keys file unread (``edgegw keys new`` makes it).
    """
    config, drivers, _ = check_config(path, keys)
    return config, drivers


def check_config(path: str | Path, keys: bool = True) -> tuple[Config, DriverRegistry, list[str]]:
    """:func:`load_config`, and the warnings ``edgegw config check`` prints: what may be wrong but
    cannot be told for sure here (a module limit not verified without hardware, a sensor's carrier
    sense), placed in the file as problems are."""
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(name, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, [f"cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [f"not valid TOML: {exc}"]) from None

    if _is_field_file(raw):
        raise ConfigError(name, ["a virtual field (what a simulated source's `simulate` key names), not a "
                                 "gateway config: check the config that names it, e.g. "
                                 "edgegw config check configs/demo.toml"])
    base = path.resolve().parent
    problems: list[str] = []
    # Drivers first, best effort, so that device entries can be checked against them in the same pass.
    layouts = []
    for i, spec in enumerate(raw.get("layouts", []) if isinstance(raw.get("layouts"), list) else []):
        try:
            layouts.append(Layout.model_validate(spec).driver())
        except ValidationError as exc:
            problems += [line for e in exc.errors() for line in describe({**e, "loc": ("layouts", i, *e["loc"])}, raw, Config)]
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
        config = Config.model_validate(raw, context={**WRITTEN, "drivers": registry,
                                                     "device_drivers": device_drivers})
    except ValidationError as exc:
        # Layouts were validated above too: _dedupe drops the second copy of their problems.
        problems += [line for e in exc.errors() for line in describe(dict(e), raw, Config)]
        # The cross-section checks did not run (pydantic stops before them): run them on the raw file.
        problems += cross_reference_problems(*(_listed(raw, k) for k in ("sources", "devices", "uplinks")))
        problems += rule_problems(_listed(raw, "rules"), _listed(raw, "actions"), _listed(raw, "devices"), registry)
        if keys and isinstance(raw.get("keys_file"), str):  # a damaged keys file is told with the rest
            problems += _read_keys(_resolve(base, Path(raw["keys_file"])))[1]
        raise ConfigError(name, _placed(problems, text, raw)) from None
    problems += rule_problems(_listed(raw, "rules"), _listed(raw, "actions"), _listed(raw, "devices"), registry)
    problems += _field_problems(base, config.sources) + source_problems(config.sources) + PLUGIN_PROBLEMS
    problems += route_problems(config)
    keys_file = _resolve(base, config.keys_file)
    if keys:
        key_problems, keyed = _key_problems(keys_file, config.devices)
        problems += key_problems
    else:  # unread: the devices that must authenticate have keys
        keyed = {d.id for d in config.devices if d.require_auth}
    radio_problems, warnings = ([], []) if registry is None else frame_problems_of(config, registry, keyed)
    problems += radio_problems
    if problems:
        raise ConfigError(name, _placed(problems, text, raw))
    assert registry is not None

    config = config.model_copy(update={
        "data_dir": _resolve(base, config.data_dir),
        "drivers_dir": drivers_dir,
        "keys_file": keys_file,
        "sources": [s.model_copy(update={"simulate": _resolve(base, s.simulate)}) if getattr(s, "simulate", None)
                    else s for s in config.sources],
        "uplinks": [_resolve_uplink(base, u) for u in config.uplinks],
    })
    return config, registry, _placed(warnings, text, raw)


def frame_problems_of(config: Config, drivers: DriverRegistry, keyed: set[str]) -> tuple[list[str], list[str]]:
    """(errors, warnings): each device's largest frame (its driver's ``max_payload``, plus the
    authentication envelope when it has a key) against what its source's module carries, and its
    time on air against ARIB STD-T108 (see :mod:`edgegw.radio.limits`)."""
    sources = {s.name: s for s in config.sources}
    errors: list[str] = []
    warnings: list[str] = []
    for i, device in enumerate(config.devices):
        source = sources.get(config.device_source(device))
        limits = getattr(source, "frame_limits", None)
        largest = drivers[device.driver].max_payload if device.driver in drivers else None
        if source is None or limits is None or largest is None:
            continue
        e, w = frame_problems(device.id, device.driver, largest, device.id in keyed, source.name, source.type, limits())
        errors += [f"devices[{i}].driver: {p}" for p in e]
        warnings += [f"devices[{i}].driver: {p}" for p in w]
    return errors, warnings


def route_problems(config: Config) -> list[str]:
    """Uplink routes naming unknown devices, or taking nothing this gateway can produce (its
    devices' readings, the alarms its rules raise, its health report)."""
    produced: list[tuple[str, str | None, str | None]] = [("health", None, None), ("alarm", None, "database_damaged")]
    for d in config.devices:
        produced.append(("reading", d.id, None))
        produced += [("alarm", d.id, kind) for rule in config.effective_rules() if rule.applies_to(d)
                     for kind in RULE_ALARMS[rule.type]]
    ids = [d.id for d in config.devices]
    problems = []
    for i, uplink in enumerate(config.uplinks):
        unknown = [d for d in uplink.route.devices or () if d not in ids]
        if unknown:
            hints = "".join(did_you_mean(d, ids) for d in unknown)
            problems.append(f"uplinks[{i}].route.devices: unknown device(s) {', '.join(map(repr, unknown))}{hints};"
                            f" configured devices: {', '.join(ids) or 'none'}")
        elif not uplink.item_route().matches_any(produced):
            what = "alarms (the kinds of its alarms table)" if isinstance(uplink, SigfoxUplink) else "route"
            problems.append(f"uplinks[{i}].route: uplink {uplink.name!r} would take nothing: no configured device or "
                            f"rule produces an item its {what} takes; widen it, or add the rule it waits for")
    return problems


def _field_problems(base: Path, sources: list[Source]) -> list[str]:
    """A simulated source's field file, checked now: found missing only by ``edgegw run``, it stopped
    the daemon with a traceback after ``edgegw config check`` had said OK."""
    from edgegw.radio.field import load_field  # the field module builds on this one

    problems = []
    for i, source in enumerate(sources):
        if getattr(source, "simulate", None) is not None:  # SPI radios have no pty to emulate
            try:
                load_field(base / source.simulate)
            except ConfigError as exc:
                problems += [f"{loc_path(('sources', i, 'simulate'))}: {exc.path}: {p}" for p in exc.problems]
    return problems


def _read_keys(keys_file: Path | None) -> tuple[dict[str, bytes], list[str]]:
    """The keys file's keys, or its problems as config problems of ``keys_file``."""
    from edgegw.keys import load_keys

    try:
        return (load_keys(keys_file) if keys_file is not None else {}), []
    except ConfigError as exc:
        return {}, [f"keys_file: {exc.path}: {p}" for p in exc.problems]


def _key_problems(keys_file: Path | None, devices: list[Device]) -> tuple[list[str], set[str]]:
    """The keys file, read now: which devices have keys decides what their frames must be. Returns
    its problems and the ids of the devices with a key."""
    keys, problems = _read_keys(keys_file)
    if problems:
        return problems, {d.id for d in devices if d.require_auth}
    problems = [f"keys_file: {keys_file}: keys.{d}: no device {d!r} in this config"
                for d in sorted(set(keys) - {d.id for d in devices})]
    for i, device in enumerate(devices):
        if device.id in keys:
            continue
        make = f"make one with: edgegw keys new {device.id} -c CONFIG"
        if device.require_auth:
            problems.append(f"devices[{i}].require_auth: the device has no key in keys_file; {make}")
        if device.accept_plain_until is not None:
            problems.append(f"devices[{i}].accept_plain_until: only for a device with a key; {make}")
    return problems, set(keys)


def _resolve_uplink(base: Path, u: UplinkConfig) -> UplinkConfig:
    if isinstance(u, MqttConnection):
        return u.model_copy(update={"password_file": _resolve(base, u.password_file),
                                    "ca_file": _resolve(base, u.ca_file)})
    if isinstance(u, HttpConnection):
        return u.model_copy(update={"token_file": _resolve(base, u.token_file), "ca_file": _resolve(base, u.ca_file)})
    return u


def _placed(problems: list[str], text: str, raw: dict[str, Any]) -> list[str]:
    """Each problem once, in line order, with its line in the file and its list items named by id (see
    :func:`edgegw.config.locate.place`)."""
    lines = key_lines(text)
    placed = dict(place(p, lines, raw) for p in problems)
    # In the file's order, as an installer reads it; problems of no line (a driver module) last.
    return sorted(placed, key=lambda p: placed[p])
