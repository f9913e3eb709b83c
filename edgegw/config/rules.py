"""Config of edge rules, local actions and alarm timing, and the checks between them and devices."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from edgegw.config.base import Duration, _duration, _Section, did_you_mean
from edgegw.config.radio import Device
from edgegw.drivers import DriverRegistry

# -- rules and local actions ------------------------------------------------------------------------

Severity = Literal["informational", "low", "medium", "high", "critical"]
AlarmKind = Literal[
    "trap_sprung", "trap_reminder", "trap_rearmed", "water_level_alarm", "water_level_clear", "water_rise",
    "device_silent", "device_back", "battery_low", "battery_ok", "sensor_fault", "database_damaged",
]
# Which alarm kinds each rule type raises ("store": the daemon itself, about its database): config
# check uses it to name an uplink route that takes nothing this gateway can raise.
RULE_ALARMS: dict[str, tuple[str, ...]] = {
    "trap": ("trap_sprung", "trap_reminder", "trap_rearmed"),
    "water_level": ("water_level_alarm", "water_level_clear", "water_rise"),
    "device_health": ("device_silent", "device_back", "battery_low", "battery_ok", "sensor_fault"),
    "store": ("database_damaged",),
}
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
    limit: int = Field(20, ge=1, description="at most this many runs for one device and alarm kind ...")
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
    ids = [d["id"] for d in devices if isinstance(d.get("id"), str)]  # a device without one is told apart
    known = ", ".join(ids) or "none"
    problems = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or rule.get("type") not in RULE_DEFAULTS:
            continue
        default_drivers, value_keys = RULE_DEFAULTS[rule["type"]]
        for dev in rule.get("devices", []):
            if dev not in ids:
                problems.append(f"rules[{i}].devices: unknown device {dev!r}{did_you_mean(dev, ids)};"
                                f" configured devices: {known}")
        wanted = rule.get("drivers", default_drivers)
        if drivers is not None:
            for drv in wanted if isinstance(wanted, list) else []:
                if drv not in drivers:
                    problems.append(f"rules[{i}].drivers: unknown driver {drv!r}{did_you_mean(drv, drivers.names())};"
                                    f" known drivers: {drivers.names()}")
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
                problems.append(f"actions[{i}].devices: unknown device {dev!r}{did_you_mean(dev, ids)};"
                                f" configured devices: {known}")
    return problems
