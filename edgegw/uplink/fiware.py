"""FIWARE wire formats for outbox items: IoT Agent JSON, Ultralight 2.0, NGSI-v2, NGSI-LD.

Pure functions, no I/O and no dependencies beyond the standard library: an uplink hands over the
items of one batch (dicts as in ``edgegw/schemas/batch-v1.schema.json``) in outbox order and sends
what comes back. How readings become attributes is data (:class:`FiwareMapping`, from the config),
not code per town.

Decisions, in short (the constants below hold the data):

* **Entity types** (NGSI-v2/LD): ``water_level`` readings are Smart Data Model ``WaterObserved``,
  ``trap`` readings are SDM ``Device``, anything else is ``DeviceMeasurement`` (SDM: "a measurement
  of a device", only id and type required, so a multi-value reading stays one entity and one
  update). Alarms are SDM ``Alert`` entities of their own (an alert is an event, not device state);
  health is the gateway as an SDM ``Device`` of category ``network``.
* **WaterObserved** ``waterLevel`` ("current water level corresponding to this observation", metres,
  WaterObserved 0.0.4; ``height`` there is the level reached on alert coasts) is converted from the
  driver's mm/cm/m and sent with ``unitCode`` MTR; the raw level is then not repeated. The level is
  the driver's ``level``, or the value the config maps to ``waterLevel`` (or, as before 0.0.4,
  ``height``). A negative level (below the gauge datum) cannot be ``waterLevel`` (SDM ``minimum 0``)
  and stays a plain attribute in its own unit. SDM requires ``location``: a device without a
  configured location is sent as ``DeviceMeasurement`` instead of an invalid ``WaterObserved``.
* **References resolve**: ``refDevice`` (WaterObserved, DeviceMeasurement) names the device's SDM
  ``Device`` entity, so the gateway sends that entity too, before the first reading of the batch
  that names it (category, controlledProperty, the time and location): a platform never holds a
  reading whose device does not exist. Being an append (v2) or a merging upsert (LD), it leaves the
  rest of a Device entity alone. An Alert's ``alertSource`` names the same entity, which the
  device's readings make; a device never heard has none, so the NGSI uplink sends it first
  (:func:`ngsi_v2_alert_sources`: what the gateway knows of the device, the profile its readings
  send) in a request of its own, not in the alarm's: a broker refusing that Device entity must not
  cost the alarm. Then, and only then, the Alert names it as a plain URI (Text; SDM allows one)
  instead of a Relationship that would dangle.
* **NGSI-LD @context**: each entity carries the Smart Data Models context of its own domain
  (:data:`SDM_CONTEXTS`: Environment for WaterObserved, Device for Device and DeviceMeasurement,
  Alert for Alert) before the configured ones. One list for all would not do: ``refDevice`` and
  ``category`` mean different terms in the Environment, Device and Alert contexts, and in JSON-LD
  the last context defining a term wins.
* **Device** (trap): ``deviceState`` is the trap state, ``rssi`` the radio RSSI in dBm (Rec 20 has
  no dBm code, so no unitCode). ``batteryLevel`` (a 0..1 fraction) is omitted: a voltage is not a
  charge fraction without the cell's discharge curve, and -1 means "transiently unknown", which it
  would be forever. The voltage stays a plain attribute with unitCode VLT.
* **Units**: UCUM codes from the drivers become UN/CEFACT Rec 20 common codes via
  :data:`UNIT_CODES`; unknown units get no unitCode rather than a guess.
* **Text** in NGSI-v2 and IoT-Agent payloads: Orion rejects ``< > " ' = ; ( )`` in values, and the
  agents forward to Orion. They become their full-width forms (（ ） ＝ ...), which Japanese text uses
  anyway and NFKC folds back; control characters become spaces. Ultralight additionally maps its
  separators ``| # @`` to ｜ ＃ ＠. NGSI-LD text is sent unchanged.
* **Readings** on the IoT Agent: the values (a WaterObserved's level as ``waterLevel`` in metres,
  converted by the gateway as for NGSI, so the agent's entity is the NGSI uplinks' one; a negative
  level under its own name, as there), then ``dateObserved`` (``dateLastValueReported`` for an
  SDM Device) = observed_at, the date the entity's SDM type asks for (the agent's own TimeInstant
  is no SDM attribute); with the location provisioned as a static attribute, the agent's
  WaterObserved is one the SDM schema accepts.
* **Alarms** on the IoT Agent: measures ``alarm`` (kind), ``alarmSeverity``, ``alarmMessage``,
  ``alarmId`` on the device's own entity, ``TimeInstant`` = raised_at.
* **Health** on the IoT Agent: measures of the gateway's device (id = the health item's gateway);
  per-key counters are flattened (``pending_<uplink>``, ``rejects_<reason>``, ``last_frame_<source>``)
  because Ultralight has no structured values; ``oldest_pending_s`` null (nothing pending) is 0.
  The agent types them as provisioned: :func:`iota_provisioning` provisions them as numbers.
* **IoT Agent over HTTP**: :func:`iota_json_groups` gives one measure group per request, because
  iotagent-json answers an array after its first group's update of the context broker.

At over 700 lines this is the longest module, on purpose: it is one mapping (a town's, from
:class:`FiwareMapping`) rendered four ways, and each decision above sits beside the data and the
helper the four formats share (units, entity ids, the level in metres). Split by format, one
decision would be spread over four files, and a format could drift from the others unnoticed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Item = Mapping[str, Any]

# UCUM (as drivers declare units) -> UN/CEFACT Recommendation 20 common code. Each pair was checked
# against the Rec 20 code list (names in tests/test_fiware.py). Note hPa is A97: HPA is a volume.
UNIT_CODES: dict[str, str] = {
    "mm": "MMT", "cm": "CMT", "m": "MTR", "km": "KMT",
    "Cel": "CEL", "K": "KEL", "[degF]": "FAH",
    "%": "P1", "1": "C62",
    "V": "VLT", "mV": "2Z", "A": "AMP", "mA": "4K", "W": "WTT",
    "Pa": "PAL", "hPa": "A97", "kPa": "KPA",
    "s": "SEC", "min": "MIN", "h": "HUR", "d": "DAY",
    "m/s": "MTS", "km/h": "KMH", "mm/h": "H67",
    "m3": "MTQ", "m3/s": "MQS", "L": "LTR", "l": "LTR",
    "lx": "LUX", "deg": "DD", "dB": "2N", "By": "AD",
}
_METRES_PER_UNIT = {"mm": 0.001, "cm": 0.01, "m": 1.0}

WATER_TYPE = "WaterObserved"
WATER_LEVEL = "waterLevel"  # the WaterObserved attribute of the level, in metres
DEVICE_TYPE = "Device"
ALERT_TYPE = "Alert"
GENERIC_TYPE = "DeviceMeasurement"
DEFAULT_TYPES: dict[str, str] = {"water_level": WATER_TYPE, "trap": DEVICE_TYPE}
# The entity types a reading can become (FiwareMapping.entity_types values); the config offers these.
READING_TYPES: tuple[str, ...] = (WATER_TYPE, DEVICE_TYPE, GENERIC_TYPE)
# NGSI-LD's core @context, the default when the config names none.
LD_CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
_SDM = "https://raw.githubusercontent.com/smart-data-models/dataModel.{}/master/context.jsonld"
# The Smart Data Models @context defining each entity type and its attributes (checked against the
# context.jsonld of each repository: dataModel.Device defines DeviceMeasurement too).
SDM_CONTEXTS: dict[str, str] = {
    WATER_TYPE: _SDM.format("Environment"),
    DEVICE_TYPE: _SDM.format("Device"),
    GENERIC_TYPE: _SDM.format("Device"),
    ALERT_TYPE: _SDM.format("Alert"),
}

# SDM Device (category, controlledProperty) per driver, from the model's enums. A trap senses the
# animal's pull on the wire: "motion" is the nearest controlled property.
DEVICE_PROFILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "trap": (("sensor",), ("motion",)),
    "water_level": (("sensor",), ("waterLevel", "temperature")),
}
_DEFAULT_PROFILE: tuple[tuple[str, ...], tuple[str, ...]] = (("sensor",), ())
# A gateway senses nothing in the controlledProperty enum; the required list is sent empty.
GATEWAY_PROFILE: tuple[tuple[str, ...], tuple[str, ...]] = (("network",), ())

# SDM Alert (category, subCategory) per alarm kind; FiwareMapping.alert_categories overrides by rule
# name or kind (a paddy town maps its water rules to ("agriculture", "irrigation")). Wildlife traps
# protect crops, but no subCategory names boar or deer ("rodent" is wrong), so none is sent. Device
# faults have no category of their own in the closed enum; "environment" is the least wrong.
ALERT_CATEGORIES: dict[str, tuple[str, str | None]] = {
    "trap_sprung": ("agriculture", None),
    "trap_reminder": ("agriculture", None),
    "trap_rearmed": ("agriculture", None),
    "water_level_alarm": ("naturalDisaster", "floodRisk"),
    "water_rise": ("naturalDisaster", "floodRisk"),
    "water_level_clear": ("naturalDisaster", "floodRisk"),
}
DEFAULT_ALERT_CATEGORY: tuple[str, str | None] = ("environment", None)
# SDM Alert's closed category enum (dataModel.Alert 0.0.3), to check categories from the config.
ALERT_CATEGORY_NAMES = frozenset({
    "traffic", "naturalDisaster", "weather", "environment", "health", "security", "agriculture",
})
# Names that alarm and health items contribute besides driver values (see _measures and
# _health_counters): FiwareMapping.attributes may rename these too.
ITEM_MEASURES = frozenset({
    "alarm", "alarmSeverity", "alarmMessage", "alarmId", "version", "uptime_s", "pending",
    "oldest_pending_s", "rejects", "disk_free_bytes", "open_alarms",
})
ITEM_MEASURE_PREFIXES = ("pending_", "rejects_", "last_frame_", "uplink_", "sigfox_used_")

_DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ENTITY_TYPE = re.compile(r"^[A-Za-z0-9_:-]{1,256}$")
_ID_FORBIDDEN = set("&?/#<>\"'=;()")  # Orion: ids must avoid these, whitespace and control characters
# Names a value never gets: entity members of NGSI-v2 and NGSI-LD (location must be a GeoProperty),
# and TimeInstant, which edgegw sets itself.
_RESERVED = frozenset({
    "id", "type", "@context", "scope", "location", "observationSpace", "operationSpace",
    "createdAt", "modifiedAt", "deletedAt", "TimeInstant",
})
# SDM attributes edgegw fills itself, per type: a raw value never lands there, even when edgegw
# leaves them out (a negative level is no height, a voltage is no batteryLevel).
_MANAGED: dict[str, set[str]] = {
    WATER_TYPE: {"waterLevel", "height"},
    DEVICE_TYPE: {"batteryLevel", "deviceState", "rssi"},
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ORION_FORBIDDEN = str.maketrans({
    "<": "＜", ">": "＞", '"': "＂", "'": "＇", "=": "＝", ";": "；", "(": "（", ")": "）",
})
_UL_SEPARATORS = str.maketrans({"|": "｜", "#": "＃", "@": "＠"})


@dataclass(frozen=True)
class FiwareMapping:
    """How items become FIWARE attributes and entities; built once from the config.

    ``attributes`` renames driver value names (to IoT Agent object_ids or NGSI attribute names);
    unmapped names pass through. ``entity_types`` maps driver -> entity type, over
    :data:`DEFAULT_TYPES`. ``entity_id`` is a template with ``{type}``, ``{device}``, ``{gateway}``.
    ``locations`` maps device (or gateway) id -> (latitude, longitude), as in ``[[devices]]``.
    ``alert_categories`` maps a rule name or alarm kind -> (SDM Alert category, subCategory or None).
    ``drivers`` maps device id -> driver, as in ``[[devices]]``: the Device entity an Alert names is
    the one the device's readings make (see :func:`ngsi_v2_alert_sources`).
    """

    attributes: Mapping[str, str] = field(default_factory=dict)
    entity_types: Mapping[str, str] = field(default_factory=dict)
    entity_id: str = "urn:ngsi-ld:{type}:{device}"
    gateway_id: str = "gw"
    locations: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    alert_categories: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    drivers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A broken template must fail at startup, not turn every batch into a poison batch.
        try:
            self.entity_id.format(type="T", device="d", gateway=self.gateway_id)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"entity_id template {self.entity_id!r}: use only {{type}}, {{device}}, {{gateway}} ({e})"
            ) from None
        bad = [t for t in self.entity_types.values() if not _ENTITY_TYPE.match(t)]
        if bad:
            raise ValueError(f"entity types {bad}: use letters, digits, _ - and : only, e.g. WaterObserved")

    def attribute(self, name: str) -> str:
        """The attribute name for a driver value name (mapped, then made safe)."""
        return _safe_name(self.attributes.get(name, name))

    def entity_type(self, driver: str) -> str:
        """The entity type for a driver's readings."""
        return self.entity_types.get(driver) or DEFAULT_TYPES.get(driver) or GENERIC_TYPE

    def entity(self, type_: str, device: str) -> str:
        """The entity id of ``device`` as an entity of ``type_``; ValueError if Orion would refuse it."""
        eid = self.entity_id.format(type=type_, device=device, gateway=self.gateway_id)
        if not 0 < len(eid) <= 256 or any(c in _ID_FORBIDDEN or not "!" <= c <= "~" for c in eid):
            raise ValueError(f"entity id {eid!r} has characters Orion refuses or is longer than 256")
        return eid

    def alert_category(self, alarm: Item) -> tuple[str, str | None]:
        """SDM Alert (category, subCategory) for an alarm item: by rule name, then by kind."""
        for key in (alarm["rule"], alarm["alarm"]):
            if key in self.alert_categories:
                return self.alert_categories[key]
        return ALERT_CATEGORIES.get(alarm["alarm"], DEFAULT_ALERT_CATEGORY)


# -- IoT Agent --------------------------------------------------------------------------------------

def iota_json(items: Iterable[Item], mapping: FiwareMapping) -> list[tuple[str, bytes]]:
    """IoT Agent JSON measure payloads, one per device: ``(device id, payload)``, devices in order.

    One measure group is a flat object, several are an array (one NGSI update each, in order).
    Every group carries ``TimeInstant``. The uplink builds the topic ``/<apikey>/<device>/attrs``.
    """
    return [
        (device, _json(groups[0] if len(groups) == 1 else groups))
        for device, groups in _measure_groups(items, mapping, _json_value).items()
    ]


def iota_json_groups(items: Iterable[Item], mapping: FiwareMapping) -> list[tuple[str, bytes]]:
    """IoT Agent JSON measure payloads, one flat object per item that has measures, in item order.

    For the agent's HTTP southbound: given an array, iotagent-json 3.x answers as soon as the
    *first* group's update of the context broker returned (its HTTP binding calls the next handler
    once per group), so only a request with one group has an answer that covers all of it.
    """
    out = []
    for item in items:
        for device, groups in _measure_groups([item], mapping, _json_value).items():
            out += [(device, _json(group)) for group in groups]
    return out


def iota_ul(items: Iterable[Item], mapping: FiwareMapping) -> list[tuple[str, bytes]]:
    """Ultralight 2.0 measure payloads, one per device: ``TimeInstant|k|v|k|v`` groups joined by ``#``.

    Booleans are ``true``/``false``. The agent rejects empty fields, so empty strings are left out,
    as are nulls; separators inside text are replaced (see the module docstring).
    """
    out = []
    for device, groups in _measure_groups(items, mapping, _ul_value).items():
        text = "#".join("|".join([g.pop("TimeInstant"), *(f"{k}|{v}" for k, v in g.items())]) for g in groups)
        out.append((device, text.encode()))
    return out


def _measure_groups(
    items: Iterable[Item], mapping: FiwareMapping, encode: Callable[[Any], Any]
) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        device, time, values = _measures(item, mapping)
        group: dict[str, Any] = {}
        for name, value in values:
            encoded = encode(value)
            if encoded is not None:
                group[_free(name, group)] = encoded
        if item["type"] == "reading" and len(group) == 1:
            continue  # only the date: nothing was measured that the agent can carry
        if group:  # a group with a timestamp only is a parse error at the agent
            groups.setdefault(device, []).append({"TimeInstant": time, **group})
    return groups


def _measures(item: Item, mapping: FiwareMapping) -> tuple[str, str, list[tuple[str, Any]]]:
    """(device id, time, [(attribute name, value)]) of one item, for the IoT Agent."""
    kind = item["type"]
    if kind == "reading":
        etype = _reading_type(item, mapping)
        raw: dict[str, Any] = dict(item["values"])
        values: list[tuple[str, Any]] = []
        date = _date_attribute(etype)
        # the names the NGSI entity gives no raw value (see _reading), so that both paths agree
        taken = {date} if etype == DEVICE_TYPE else {date, "refDevice", *_MANAGED.get(etype, ())}
        if etype == WATER_TYPE:  # as on NGSI: the level in metres as waterLevel, not the driver's mm
            source = _level_source(raw, mapping)
            level = _metres(raw.get(source), item["units"].get(source)) if source is not None else None
            if source is not None and level is not None:
                del raw[source]
                values.append((WATER_LEVEL, level))
        values += [(_free(mapping.attribute(k), taken), v) for k, v in raw.items()]
        if values:  # the SDM date the entity's type requires: the agent keeps TimeInstant to itself
            values.append((date, item["observed_at"]))
        return _device(item["device"]), item["observed_at"], values
    if kind == "alarm":
        fields = {"alarm": item["alarm"], "alarmSeverity": item["severity"],
                  "alarmMessage": item["message"], "alarmId": item["id"]}
        return _device(item["device"]), item["raised_at"], [(mapping.attribute(k), v) for k, v in fields.items()]
    if kind == "health":
        values = [("version", item["version"])] + [(n, v) for n, v, _, _ in _health_counters(item)]
        return _device(item["gateway"]), item["observed_at"], [(mapping.attribute(k), v) for k, v in values]
    raise ValueError(f"unknown item type {kind!r}")


def _level_source(names: Iterable[str], mapping: FiwareMapping) -> str | None:
    """The value a WaterObserved's ``waterLevel`` comes from: the one the config maps to
    ``waterLevel`` (or ``height``, as before WaterObserved 0.0.4), else the driver's ``level``."""
    names = list(names)
    mapped = next((k for k in names if mapping.attribute(k) in (WATER_LEVEL, "height")), None)
    return mapped if mapped is not None else ("level" if "level" in names else None)


def _reading_type(item: Item, mapping: FiwareMapping) -> str:
    """The entity type of a reading's device, as on every uplink (see :func:`_reading`)."""
    etype = mapping.entity_type(item["driver"])
    return GENERIC_TYPE if etype == WATER_TYPE and item["device"] not in mapping.locations else etype


def _date_attribute(etype: str) -> str:
    return "dateLastValueReported" if etype == DEVICE_TYPE else "dateObserved"


def _json_value(value: Any) -> Any:
    return _orion_text(value) if isinstance(value, str) else value


def _ul_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value, allow_nan=False)
    return _orion_text(str(value)).translate(_UL_SEPARATORS) or None


# The reject reasons edgegw's own sources, envelope and drivers count (health ``rejects_<reason>``):
# provisioned as numbers on an IoT Agent. A third-party driver's own reason is not known here.
REJECT_REASONS = (
    "bad_mic", "bad_value", "bad_version", "driver_error", "garbage", "parser_error", "rate_limited", "replayed",
    "sensor_error", "truncated", "unauthenticated", "unknown_device", "wrong_length",
)


def iota_provisioning(
    mapping: FiwareMapping,
    devices: Iterable[tuple[str, str, Mapping[str, str]]],
    *,
    uplinks: Iterable[str] = (),
    sources: Iterable[str] = (),
) -> dict[str, Any]:
    """The body of an IoT Agent's ``POST /iot/devices`` that makes the agent's entities the ones the
    NGSI uplinks make for the same config: same id and type per device, attributes typed.

    ``devices`` gives (device id, driver, {value name: NGSI-v2 type}) per ``[[devices]]`` entry;
    the gateway's own device (its health report) comes last, every number typed ``Number``, for the
    ``pending_``/``last_frame_``/``uplink_`` keys of the given ``uplinks`` and ``sources`` and the
    :data:`REJECT_REASONS`. A ``WaterObserved`` device gets ``waterLevel`` (Number, metres): the
    gateway converts the level before the agent sees it, as it does for NGSI.
    """
    out = []
    for device, driver, kinds in devices:
        etype = _reading_type({"driver": driver, "device": device}, mapping)
        attrs = []
        taken: set[str] = set()
        if etype == WATER_TYPE and (source := _level_source(kinds, mapping)) is not None and kinds[source] == "Number":
            # the level arrives as waterLevel in metres (see _measures); a negative one, which no
            # waterLevel can be, under its own name in the driver's unit
            attrs.append({"object_id": WATER_LEVEL, "name": WATER_LEVEL, "type": "Number"})
            taken = _MANAGED[WATER_TYPE]
        for value, kind in kinds.items():
            object_id = _free(mapping.attribute(value), taken)
            name = "deviceState" if etype == DEVICE_TYPE and value == "state" and kind == "Text" else object_id
            attrs.append({"object_id": object_id, "name": name, "type": kind})
        date = _date_attribute(etype)
        attrs.append({"object_id": date, "name": date, "type": "DateTime"})
        attrs += [{"object_id": mapping.attribute(a), "name": mapping.attribute(a), "type": "Text"}
                  for a in ("alarm", "alarmSeverity", "alarmMessage", "alarmId")]
        out.append(_provisioned(device, etype, mapping, attrs, DEVICE_PROFILES.get(driver, _DEFAULT_PROFILE)))
    gateway = _device(mapping.gateway_id)
    numbers = ["uptime_s", "pending", "oldest_pending_s", "rejects", "disk_free_bytes", "open_alarms"]
    numbers += [f"pending_{_safe_name(u)}" for u in uplinks] + [f"rejects_{r}" for r in REJECT_REASONS]
    attrs = [{"object_id": mapping.attribute("version"), "name": "softwareVersion", "type": "Text"}]
    attrs += [{"object_id": mapping.attribute(n), "name": mapping.attribute(n), "type": "Number"} for n in numbers]
    attrs += [{"object_id": mapping.attribute(n), "name": mapping.attribute(n), "type": "DateTime"}
              for n in (f"last_frame_{_safe_name(s)}" for s in sources)]
    attrs += [{"object_id": mapping.attribute(n), "name": mapping.attribute(n), "type": "Text"}
              for n in (f"uplink_{_safe_name(u)}" for u in uplinks)]
    out.append(_provisioned(gateway, DEVICE_TYPE, mapping, attrs, GATEWAY_PROFILE))
    return {"devices": out}


def _provisioned(device: str, etype: str, mapping: FiwareMapping, attrs: list[dict[str, str]],
                 profile: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> dict[str, Any]:
    static: list[dict[str, Any]] = []
    if etype == DEVICE_TYPE:  # SDM Device requires these; the agent adds them to every update
        category, controlled = profile or _DEFAULT_PROFILE
        static += [{"name": "category", "type": "StructuredValue", "value": list(category)},
                   {"name": "controlledProperty", "type": "StructuredValue", "value": list(controlled)}]
    if (location := mapping.locations.get(device)) is not None:
        static.append({"name": "location", "type": "geo:json", "value": _point(location)})
    body: dict[str, Any] = {"device_id": device, "entity_name": mapping.entity(etype, device), "entity_type": etype,
                            "attributes": attrs}
    if static:
        body["static_attributes"] = static
    return body


# -- NGSI -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Attr:
    value: Any
    kind: str  # NGSI-v2 attribute type: Number, Text, Boolean, DateTime, StructuredValue, Relationship, geo:json
    unit: str | None = None  # UN/CEFACT code
    observed: str | None = None  # when the value was measured


@dataclass(frozen=True)
class _Entity:
    id: str
    type: str
    time: str | None  # None: a Device entity sent so that a reference resolves, not an observation
    attrs: dict[str, _Attr]


def ngsi_v2_entities(
    items: Iterable[Item], mapping: FiwareMapping, unresolved: Container[str] = frozenset()
) -> list[dict[str, Any]]:
    """NGSI-v2 entities for ``POST /v2/op/update`` with ``actionType: append``, one per item, in order,
    each preceded by the Device entity its reference names when the batch has not sent that one yet.

    Measured attributes carry ``unitCode`` (when known) and ``TimeInstant`` metadata; each item's
    entity also has a ``TimeInstant`` attribute, as IoT-Agent-made entities do, for history subscribers.
    An Alert's ``alertSource`` is a Relationship to the Device entity :func:`ngsi_v2_alert_sources`
    gives, or, for a Device entity id in ``unresolved`` (the broker refused it), the same id as
    Text: a reference to nothing would dangle, and the alarm must arrive all the same.
    """
    return [_v2_body(e) for e in _entities(items, mapping, unresolved)]


def ngsi_v2_alert_sources(items: Iterable[Item], mapping: FiwareMapping) -> list[tuple[str, dict[str, Any]]]:
    """(entity id, NGSI-v2 entity) of each Device entity the batch's Alerts name, once each, in order.

    An Alert's ``alertSource`` names its device's SDM Device entity, which the device's readings
    make; a device never heard (a ``device_silent`` alarm about a sensor that never reported) has
    none. So the uplink sends these first, each in a request of its own: what the gateway knows of
    the device (the same category, controlledProperty and location its readings send, so a merge
    changes nothing), and a broker refusing one costs no alarm (see ``unresolved`` above).
    """
    return [(e.id, _v2_body(e)) for e in _alert_sources(items, mapping)]


def ngsi_ld_alert_sources(
    items: Iterable[Item], mapping: FiwareMapping, context: str | list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """:func:`ngsi_v2_alert_sources` as NGSI-LD entities (see :func:`ngsi_ld_entities`)."""
    configured = _configured_contexts(context)
    return [(e.id, _ld_body(e, configured)) for e in _alert_sources(items, mapping)]


def _v2_body(e: _Entity) -> dict[str, Any]:
    body: dict[str, Any] = {"id": e.id, "type": e.type}
    body.update((name, _v2_attr(a)) for name, a in e.attrs.items())
    if e.time is not None:
        body["TimeInstant"] = {"type": "DateTime", "value": e.time}
    return body


def _ld_body(e: _Entity, configured: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"id": e.id, "type": e.type}
    body.update((name, _ld_attr(a)) for name, a in e.attrs.items())
    contexts = list(dict.fromkeys([c for c in [SDM_CONTEXTS.get(e.type)] if c] + configured))
    body["@context"] = contexts[0] if len(contexts) == 1 else contexts
    return body


def _configured_contexts(context: str | list[str]) -> list[str]:
    # A configured SDM context is the one of its own domain only: listed for every entity, its terms
    # would override those of another domain's context (refDevice, category mean different things).
    return [c for c in ([context] if isinstance(context, str) else context) if c not in SDM_CONTEXTS.values()]


def ngsi_ld_entities(
    items: Iterable[Item], mapping: FiwareMapping, context: str | list[str], unresolved: Container[str] = frozenset()
) -> list[dict[str, Any]]:
    """NGSI-LD entities (normalized, ``@context`` in each) for ``/ngsi-ld/v1/entityOperations/upsert``.

    Entities as for NGSI-v2 (see :func:`ngsi_v2_entities`); split them with :func:`upsert_rounds`
    and send them with ``?options=update``: a merge keeps what a town added to an entity, as v2's
    append does. Like append, it also keeps an attribute a reading lacks (no waterLevel for a
    negative level) from an earlier one; its ``observedAt`` tells the two apart. Each entity's
    ``@context`` is its type's :data:`SDM_CONTEXTS` entry, then ``context`` (less the SDM contexts
    in it: each entity gets its own domain's). ``unresolved`` as for NGSI-v2.
    """
    configured = _configured_contexts(context)
    return [_ld_body(e, configured) for e in _entities(items, mapping, unresolved)]


def upsert_rounds(entities: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split entities into consecutive requests, each with an id at most once, keeping their order."""
    rounds: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    for entity in entities:
        if not rounds or entity["id"] in seen:
            rounds.append([])
            seen = set()
        rounds[-1].append(entity)
        seen.add(entity["id"])
    return rounds


def _entities(items: Iterable[Item], mapping: FiwareMapping, unresolved: Container[str] = frozenset()) -> list[_Entity]:
    """Each item's entity, a reading's after the Device entity it refers to (once per batch)."""
    out: list[_Entity] = []
    sent: set[str] = set()
    for item in items:
        entity = _entity(item, mapping, unresolved)
        ref = entity.attrs["refDevice"].value if "refDevice" in entity.attrs else None
        if ref is not None and ref not in sent:
            out.append(_referenced_device(ref, item, mapping))
            sent.add(ref)
        if entity.type == DEVICE_TYPE:
            sent.add(entity.id)
        out.append(entity)
    return out


def _referenced_device(entity_id: str, item: Item, mapping: FiwareMapping) -> _Entity:
    """The SDM Device a reading's refDevice names: what the gateway knows of it."""
    device = _device(item["device"])
    attrs = _device_profile(DEVICE_PROFILES.get(item["driver"], _DEFAULT_PROFILE))
    attrs["dateLastValueReported"] = _Attr(item["observed_at"], "DateTime")
    if (location := mapping.locations.get(device)) is not None:
        attrs["location"] = _Attr(_point(location), "geo:json")
    return _Entity(entity_id, DEVICE_TYPE, None, attrs)


def _alert_sources(items: Iterable[Item], mapping: FiwareMapping) -> list[_Entity]:
    """The Device entity each alarm's Alert names, once per batch, in order."""
    out: dict[str, _Entity] = {}
    for item in items:
        if item["type"] != "alarm":
            continue
        device = _device(item["device"])
        entity_id = mapping.entity(DEVICE_TYPE, device)
        if entity_id in out:
            continue
        # the profile its readings (or, for the gateway, its health reports) send: a merge changes nothing
        profile = GATEWAY_PROFILE if device == mapping.gateway_id else DEVICE_PROFILES.get(
            mapping.drivers.get(device, ""), _DEFAULT_PROFILE)
        attrs = _device_profile(profile)
        if (location := mapping.locations.get(device)) is not None:
            attrs["location"] = _Attr(_point(location), "geo:json")
        out[entity_id] = _Entity(entity_id, DEVICE_TYPE, None, attrs)
    return list(out.values())


def _entity(item: Item, mapping: FiwareMapping, unresolved: Container[str] = frozenset()) -> _Entity:
    kind = item["type"]
    if kind == "reading":
        return _reading(item, mapping)
    if kind == "alarm":
        return _alarm(item, mapping, unresolved)
    if kind == "health":
        return _health(item, mapping)
    raise ValueError(f"unknown item type {kind!r}")


def _reading(item: Item, mapping: FiwareMapping) -> _Entity:
    device, driver, observed = _device(item["device"]), item["driver"], item["observed_at"]
    values: dict[str, Any] = dict(item["values"])
    units: Mapping[str, str] = item["units"]
    location = mapping.locations.get(device)
    etype = _reading_type(item, mapping)  # SDM WaterObserved requires a location: else DeviceMeasurement
    attrs: dict[str, _Attr] = {}
    if etype == DEVICE_TYPE:
        attrs.update(_device_profile(DEVICE_PROFILES.get(driver, _DEFAULT_PROFILE)))
        attrs["dateLastValueReported"] = _Attr(observed, "DateTime")
        if isinstance(values.get("state"), str):
            attrs["deviceState"] = _Attr(values.pop("state"), "Text", observed=observed)
        if item["radio"].get("rssi") is not None:
            attrs["rssi"] = _Attr(item["radio"]["rssi"], "Number", observed=observed)
    else:
        attrs["dateObserved"] = _Attr(observed, "DateTime")
        attrs["refDevice"] = _Attr(mapping.entity(DEVICE_TYPE, device), "Relationship")
    if etype == WATER_TYPE:
        source = _level_source(values, mapping)
        level = _metres(values.get(source), units.get(source)) if source is not None else None
        if source is not None and level is not None:
            del values[source]
            attrs[WATER_LEVEL] = _Attr(level, "Number", "MTR", observed)
    if location is not None:
        attrs["location"] = _Attr(_point(location), "geo:json")
    taken = set(attrs) | _MANAGED.get(etype, set())
    for name, value in values.items():
        attr = _free(mapping.attribute(name), taken)
        taken.add(attr)
        attrs[attr] = _Attr(value, _kind(value), UNIT_CODES.get(units.get(name, "")), observed)
    return _Entity(mapping.entity(etype, device), etype, observed, attrs)


def _alarm(item: Item, mapping: FiwareMapping, unresolved: Container[str] = frozenset()) -> _Entity:
    device, raised = _device(item["device"]), item["raised_at"]
    source = mapping.entity(DEVICE_TYPE, device)
    category, sub = mapping.alert_category(item)
    attrs = {"category": _Attr(category, "Text")}
    if sub is not None:
        attrs["subCategory"] = _Attr(sub, "Text")
    attrs.update({
        "severity": _Attr(item["severity"], "Text"),
        # SDM allows a plain URI too: one the broker refused to hold must not be a dangling reference
        "alertSource": _Attr(source, "Text" if source in unresolved else "Relationship"),
        # raised_at is when the triggering reading was observed: the alert holds from then on.
        "dateIssued": _Attr(raised, "DateTime"),
        "validFrom": _Attr(raised, "DateTime"),
        "description": _Attr(item["message"], "Text"),
        "data": _Attr({k: item[k] for k in ("alarm", "rule", "name", "reading", "late", "time_quality", "details")},
                      "StructuredValue"),
    })
    location = item["location"] or mapping.locations.get(device)
    if location is not None:
        attrs["location"] = _Attr(_point(location), "geo:json")
    # Alarm ids are stable, so a resent alarm lands on the same Alert entity.
    return _Entity(mapping.entity(ALERT_TYPE, item["id"]), ALERT_TYPE, raised, attrs)


def _health(item: Item, mapping: FiwareMapping) -> _Entity:
    gateway, observed = _device(item["gateway"]), item["observed_at"]
    attrs = _device_profile(GATEWAY_PROFILE)
    attrs["softwareVersion"] = _Attr(item["version"], "Text")
    attrs["dateLastValueReported"] = _Attr(observed, "DateTime")
    if (location := mapping.locations.get(gateway)) is not None:
        attrs["location"] = _Attr(_point(location), "geo:json")
    taken = set(attrs) | _MANAGED[DEVICE_TYPE]
    for name, value, unit, kind in _health_counters(item):
        attr = _free(mapping.attribute(name), taken)
        taken.add(attr)
        attrs[attr] = _Attr(value, kind, UNIT_CODES.get(unit or ""), observed)
    return _Entity(mapping.entity(DEVICE_TYPE, gateway), DEVICE_TYPE, observed, attrs)


def _health_counters(item: Item) -> list[tuple[str, Any, str | None, str]]:
    """(name, value, UCUM unit, NGSI-v2 type) of a health item's numbers, per-key maps flattened."""
    out: list[tuple[str, Any, str | None, str]] = [("uptime_s", item["uptime_s"], "s", "Number")]
    out.append(("pending", sum(item["pending"].values()), None, "Number"))
    out += [(f"pending_{_safe_name(k)}", v, None, "Number") for k, v in item["pending"].items()]
    out.append(("oldest_pending_s", item["oldest_pending_s"] or 0, "s", "Number"))
    out.append(("rejects", sum(item["rejects"].values()), None, "Number"))
    out += [(f"rejects_{_safe_name(k)}", v, None, "Number") for k, v in item["rejects"].items()]
    out.append(("disk_free_bytes", item["disk_free_bytes"], "By", "Number"))
    out.append(("open_alarms", item["open_alarms"], None, "Number"))
    out += [(f"last_frame_{_safe_name(k)}", v, None, "DateTime") for k, v in item["last_frame"].items() if v]
    # The town's dashboard sees a stalled uplink of the gateway's (reports before the states had none).
    out += [(f"uplink_{_safe_name(k)}", v, None, "Text") for k, v in item.get("uplinks", {}).items()]
    # A Sigfox uplink's messages of the last 24 hours: a dashboard sees a budget running out.
    out += [(f"sigfox_used_{_safe_name(k)}", v["used"], None, "Number") for k, v in item.get("sigfox", {}).items()]
    return out


def _device_profile(profile: tuple[tuple[str, ...], tuple[str, ...]]) -> dict[str, _Attr]:
    category, controlled = profile
    # "category" is required by older Device schemas, "deviceCategory" replaces it in newer ones.
    return {
        "category": _Attr(list(category), "StructuredValue"),
        "deviceCategory": _Attr(list(category), "StructuredValue"),
        "controlledProperty": _Attr(list(controlled), "StructuredValue"),
    }


def _v2_attr(a: _Attr) -> dict[str, Any]:
    out: dict[str, Any] = {"type": a.kind, "value": _v2_value(a.value)}
    metadata = {}
    if a.unit:
        metadata["unitCode"] = {"type": "Text", "value": a.unit}
    if a.observed:
        metadata["TimeInstant"] = {"type": "DateTime", "value": a.observed}
    if metadata:
        out["metadata"] = metadata
    return out


def _v2_value(value: Any) -> Any:
    if isinstance(value, str):
        return _orion_text(value)
    if isinstance(value, list):
        return [_v2_value(v) for v in value]
    if isinstance(value, dict):
        return {_orion_text(k): _v2_value(v) for k, v in value.items()}
    return value


def _ld_attr(a: _Attr) -> dict[str, Any]:
    if a.kind == "Relationship":
        return {"type": "Relationship", "object": a.value}
    if a.kind == "geo:json":
        return {"type": "GeoProperty", "value": a.value}
    # NGSI-LD types temporal values as JSON-LD value objects.
    value = {"@type": "DateTime", "@value": a.value} if a.kind == "DateTime" else a.value
    out: dict[str, Any] = {"type": "Property", "value": value}
    if a.observed:
        out["observedAt"] = a.observed
    if a.unit:
        out["unitCode"] = a.unit
    return out


# -- small helpers ----------------------------------------------------------------------------------

def _device(device_id: str) -> str:
    if not _DEVICE_ID.match(device_id):
        raise ValueError(f"device id {device_id!r} does not match {_DEVICE_ID.pattern}")
    return device_id


def _safe_name(name: str) -> str:
    # Names travel in Ultralight, Orion and JSON-LD; letters, digits, _ and - are safe in all three.
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def _free(name: str, taken: Container[str]) -> str:
    """``name``, or ``name_value`` (repeated) when the entity already uses it or it is reserved."""
    while name in taken or name in _RESERVED:
        name += "_value"
    return name


def _kind(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "Boolean"
    if isinstance(value, (int, float)):
        return "Number"
    return "Text" if isinstance(value, str) else "StructuredValue"


def _metres(value: Any, unit: str | None) -> float | None:
    """A non-negative length in metres, or None when the value is not a length that can be a level."""
    factor = _METRES_PER_UNIT.get(unit or "")
    if factor is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    metres = round(value * factor, 6) + 0.0  # micrometres are beyond any gauge; + 0.0 drops a -0.0
    return metres if metres >= 0 else None


def _point(lat_lon: Iterable[float]) -> dict[str, Any]:
    lat, lon = lat_lon
    return {"type": "Point", "coordinates": [lon, lat]}  # GeoJSON order is longitude, latitude


def _orion_text(text: str) -> str:
    return _CONTROL.sub(" ", text).translate(_ORION_FORBIDDEN)


def _json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
