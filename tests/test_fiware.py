"""Tests of the FIWARE payload builders (edgegw.uplink.fiware).

Every payload is checked by something that is not the module: filip's NGSI-v2 and NGSI-LD entity
models, the published Smart Data Models JSON Schemas (tests/sdm/schemas) and the rules below that
they leave to formats, the UN/CEFACT
Rec 20 code list that ships with filip, ``json.loads``, and a small Ultralight parser written here
after the agent's own (iotagent-ul ``lib/ulParser.js``).
"""

from __future__ import annotations

import itertools
import json
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from filip.models.base import DataType
from filip.models.ngsi_ld.context import ContextLDEntity
from filip.models.ngsi_v2.context import ContextEntity
from filip.models.ngsi_v2.units import load_units
from geojson_pydantic import Point
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.items import BATCH_SCHEMA_FILE
from edgegw.model import Reading
from edgegw.store import Store
from edgegw.uplink.fiware import (
    SDM_CONTEXTS,
    UNIT_CODES,
    FiwareMapping,
    iota_json,
    iota_json_groups,
    iota_provisioning,
    iota_ul,
    ngsi_ld_alert_sources,
    ngsi_ld_entities,
    ngsi_v2_alert_sources,
    ngsi_v2_entities,
    upsert_rounds,
)
from edgegw_drivers.trap import TrapSensor
from edgegw_drivers.water_level import WaterLevelSensor
from tests.sdm_schemas import sdm_schema_errors

CONTEXT = [
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld",
]
KAGAWA = (34.3401, 134.0434)  # (latitude, longitude): asymmetric, so a swapped order shows

# -- Smart Data Model rules, from the models' JSON Schemas ----------------------------------------------
# WaterObserved 0.0.4 (dataModel.Environment; waterLevel: "current water level", in metres),
# Device 0.0.9 (dataModel.Device; older versions also require category), Alert 0.0.3 (dataModel.Alert),
# DeviceMeasurement 0.1.0.

SDM_REQUIRED = {
    "WaterObserved": {"id", "type", "location", "dateObserved"},
    "Device": {"id", "type", "category", "controlledProperty"},
    "Alert": {"id", "type", "alertSource", "category", "dateIssued"},
    "DeviceMeasurement": {"id", "type"},
}
DEVICE_CATEGORIES = {
    "actuator", "beacon", "endgun", "HVAC", "implement", "irrSection", "irrSystem", "meter", "multimedia",
    "network", "sensor",
}
CONTROLLED_PROPERTIES = {
    "airPollution", "atmosphericPressure", "averageVelocity", "batteryLife", "batterySupply", "cdom",
    "conductance", "conductivity", "depth", "eatingActivity", "electricityConsumption", "energy",
    "fillingLevel", "freeChlorine", "gasConsumption", "gateOpening", "heading", "humidity", "light",
    "location", "milking", "motion", "movementActivity", "noiseLevel", "occupancy", "orp", "pH", "power",
    "precipitation", "pressure", "refractiveIndex", "salinity", "smoke", "soilMoisture", "solarRadiation",
    "speed", "tds", "temperature", "trafficFlow", "tss", "turbidity", "uvLampIntensity", "uvOrganicLoad",
    "waterConsumption", "waterFlow", "waterLevel", "waterPollution", "weatherConditions", "weight",
    "windDirection", "windSpeed",
}
ALERT_CATEGORIES = {"traffic", "naturalDisaster", "weather", "environment", "health", "security", "agriculture"}
ALERT_SUBCATEGORIES = {
    "airPollution", "assault", "asthmaAttack", "avalancheRisk", "bacteria", "badSeaState", "bikerOnRoad",
    "buildingFire", "bumpedPatient", "carAccident", "carStopped", "carWrongDirection", "coastalEvent",
    "civilDisorder", "coldWave", "crowdRisk", "earthquake", "fallenPatient", "fertilisation", "fireRisk",
    "flood", "floodRisk", "fog", "forestFire", "fungus", "hazardOnRoad", "heartAttack", "heatWave",
    "highAtmosphericPressure", "highHumidity", "highTemperature", "hurricane", "ice", "injuredBiker",
    "insect", "irrigation", "lowAtmosphericPressure", "lowHumidity", "lowTemperature", "microbe", "mite",
    "nematodes", "noxiousWeed", "pedestrianOnRoad", "pollenConcentration", "pothole", "rainfall",
    "roadClosed", "roadWorks", "robbery", "rodent", "snail", "snow", "snow/ice", "suspiciousAction",
    "thunderstorms", "tornado", "trafficJam", "tramApproaching", "tropicalCyclone", "tsunami", "virus",
    "waterPollution", "wind",
}
ALERT_SEVERITIES = {"informational", "low", "medium", "high", "critical"}


def _is_datetime(v: Any) -> bool:
    try:
        return datetime.fromisoformat(v).tzinfo is not None
    except (TypeError, ValueError):
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


SDM_CONSTRAINTS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "WaterObserved": {
        "height": lambda v: _is_number(v) and v >= 0,
        "waterLevel": lambda v: _is_number(v) and v >= 0,
        "flow": lambda v: _is_number(v) and v >= 0,
        "dateObserved": _is_datetime,
    },
    "Device": {
        "category": lambda v: isinstance(v, list) and set(v) <= DEVICE_CATEGORIES,
        "deviceCategory": lambda v: isinstance(v, list) and set(v) <= DEVICE_CATEGORIES,
        "controlledProperty": lambda v: isinstance(v, list) and set(v) <= CONTROLLED_PROPERTIES,
        "batteryLevel": lambda v: _is_number(v) and (0 <= v <= 1 or v == -1),
        "rssi": _is_number,
        "deviceState": lambda v: isinstance(v, str),
        "value": lambda v: isinstance(v, str),
        "dateLastValueReported": _is_datetime,
        "softwareVersion": lambda v: isinstance(v, str),
    },
    "Alert": {
        "category": lambda v: v in ALERT_CATEGORIES,
        "subCategory": lambda v: v in ALERT_SUBCATEGORIES,
        "severity": lambda v: v in ALERT_SEVERITIES,
        "dateIssued": _is_datetime,
        "validFrom": _is_datetime,
        "alertSource": lambda v: isinstance(v, str) and re.fullmatch(r"[\w\-.{}$+*\[\]`|~^@!,:\\]+", v),
        "data": lambda v: isinstance(v, dict),
    },
    "DeviceMeasurement": {"dateObserved": _is_datetime},
}


def sdm_violations(kv: dict[str, Any]) -> list[str]:
    """What breaks the Smart Data Model rules, for an entity in key-value form (a town's own type has
    none): the rules above (formats included), then the published JSON Schema of its type."""
    etype = kv["type"]
    problems = [f"{etype}: missing {k}" for k in sorted(SDM_REQUIRED.get(etype, set()) - set(kv))]
    problems += [
        f"{etype}.{k} = {kv[k]!r}" for k, ok in SDM_CONSTRAINTS.get(etype, {}).items() if k in kv and not ok(kv[k])
    ]
    return problems + sdm_schema_errors(kv)


def kv_v2(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k in ("id", "type") else v["value"] for k, v in entity.items()}


def kv_ld(entity: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in entity.items():
        if k in ("id", "type", "@context"):
            out[k] = v
        elif v["type"] == "Relationship":
            out[k] = v["object"]
        elif isinstance(v["value"], dict) and v["value"].get("@type") == "DateTime":
            out[k] = v["value"]["@value"]
        else:
            out[k] = v["value"]
    return out


# -- independent checks of each wire format ---------------------------------------------------------

ORION_FORBIDDEN_IN_IDS = set("<>\"'=;()&?/#")
BATCH_VALIDATOR = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()))


def assert_valid_items(items: list[dict[str, Any]]) -> None:
    """The test inputs themselves follow the batch schema."""
    batch = {"schema": "edgegw.batch/1", "batch_id": "0" * 32, "gateway": "gw", "sent_at": "2025-06-01T00:00:00Z",
             "items": items}
    BATCH_VALIDATOR.validate(batch)


def check_v2(entity: dict[str, Any]) -> None:
    # filip checks a plain-string type like an attribute name (so "geo:json" fails); its own enum
    # is how it expects the NGSI-v2 types.
    ContextEntity(**{k: v if k in ("id", "type") else {**v, "type": DataType(v["type"])} for k, v in entity.items()})
    assert not (set(entity["id"]) & ORION_FORBIDDEN_IN_IDS) and entity["id"].isascii() and entity["id"].isprintable()
    assert not sdm_violations(kv_v2(entity)), sdm_violations(kv_v2(entity))
    for name, attr in entity.items():
        if name in ("id", "type"):
            continue
        kind, value = attr["type"], attr["value"]
        assert {"Number": _is_number, "Boolean": lambda v: isinstance(v, bool), "Text": lambda v: isinstance(v, str),
                "DateTime": _is_datetime}.get(kind, lambda v: True)(value), (name, attr)
        if kind == "geo:json":
            Point(**value)
        for meta in attr.get("metadata", {}).values():
            if meta["type"] == "DateTime":
                assert _is_datetime(meta["value"])


def ld_context(etype: str, configured: Any = CONTEXT) -> Any:
    """The @context an entity of ``etype`` carries: its SDM domain's context, then the configured ones
    that are not Smart Data Models contexts."""
    others = [c for c in ([configured] if isinstance(configured, str) else configured)
              if c not in SDM_CONTEXTS.values()]
    contexts = list(dict.fromkeys([c for c in [SDM_CONTEXTS.get(etype)] if c] + others))
    return contexts[0] if len(contexts) == 1 else contexts


def check_ld(entity: dict[str, Any], context: Any = CONTEXT) -> None:
    ContextLDEntity(**entity)
    assert entity["@context"] == ld_context(entity["type"], context)
    assert not sdm_violations(kv_ld(entity)), sdm_violations(kv_ld(entity))
    for name, attr in entity.items():
        if name in ("id", "type", "@context"):
            continue
        assert attr["type"] in ("Property", "Relationship", "GeoProperty"), (name, attr)
        if attr["type"] == "GeoProperty":
            point = Point(**attr["value"])
            lon, lat = point.coordinates[0], point.coordinates[1]
            assert -180 <= lon <= 180 and -90 <= lat <= 90
        if "observedAt" in attr:
            assert _is_datetime(attr["observedAt"])


def parse_ul(payload: bytes) -> list[tuple[str, list[tuple[str, str]]]]:
    """Ultralight 2.0 measure groups as [(timestamp, [(key, raw value)])], strict like the agent.

    A group with an even number of ``|`` starts with a timestamp; fields must not be empty.
    """
    groups = []
    for group in payload.decode().split("#"):
        fields = group.split("|")
        assert len(fields) % 2 == 1, f"no timestamp prefix in {group!r}"
        stamp, rest = fields[0], fields[1:]
        assert all(rest), f"empty field in {group!r}"
        groups.append((stamp, list(zip(rest[0::2], rest[1::2], strict=True))))
    return groups


def folded(text: str) -> str:
    """Text as a reader sees it: control characters as spaces, full-width forms folded (NFKC)."""
    return unicodedata.normalize("NFKC", re.sub(r"[\x00-\x1f\x7f]", " ", text))


def same_value(sent: Any, original: Any) -> bool:
    if isinstance(original, bool) or not isinstance(original, (int, float)):
        if isinstance(original, bool):
            return sent is original
        return isinstance(sent, str) and folded(sent) == folded(original)
    return _is_number(sent) and sent == original


def same_ul_value(raw: str, original: Any) -> bool:
    if isinstance(original, bool):
        return raw == ("true" if original else "false")
    if isinstance(original, (int, float)):
        return float(raw) == original and (isinstance(original, float) or int(raw) == original)
    return folded(raw) == folded(original)


def measured_values(item: dict[str, Any]) -> list[Any]:
    """Values the IoT Agent formats carry for an item, in order (None is never sent)."""
    if item["type"] == "reading":
        return list(item["values"].values())
    if item["type"] == "alarm":
        return [item["alarm"], item["severity"], item["message"], item["id"]]
    return [item["version"], item["uptime_s"]]  # the rest are derived counters


# -- fixtures: items as the gateway makes them ----------------------------------------------------------

OUTBOX = Store(Path(":memory:"))


def reading_item(driver, payload: bytes, device: str, rssi: float | None = -97.0) -> dict[str, Any]:
    decoded = driver.decode(payload)
    reading = Reading(
        reading_id=f"{device}:0:{decoded.counter}", device_id=device, driver=driver.name,
        observed_at=1748746800.0, time_quality="synced", counter=decoded.counter, values=decoded.values,
        source="lora0", address=7, rssi=rssi, snr=7.25, mono=1.0, boot_id="b",
    )
    # Rendered by the outbox, as the forwarders read it.
    OUTBOX.describe("gw-1", {driver.name: driver.units()})
    OUTBOX.begin()
    try:
        item = OUTBOX.item(OUTBOX.add_reading(reading, payload, 1, 0.0))
    finally:
        OUTBOX.rollback()
    return json.loads(item)


def water(level_mm: int = 1234, device: str = "river-1") -> dict[str, Any]:
    return reading_item(WaterLevelSensor(), WaterLevelSensor().encode(
        {"level": level_mm, "water_temperature": 23.0, "battery": 3.5}), device)


def trap(state: str = "sprung", device: str = "trap-017") -> dict[str, Any]:
    payload = TrapSensor().encode({"state": state, "tamper": False, "battery": 3.3}, 42)
    return reading_item(TrapSensor(), payload, device)


def alarm(kind: str = "trap_sprung", device: str = "trap-017", **over: Any) -> dict[str, Any]:
    item = {
        "type": "alarm", "id": f"{device}:{kind}:42", "alarm": kind, "severity": "high", "device": device,
        "name": "北の畑 わな17", "location": list(KAGAWA), "rule": "traps", "raised_at": "2025-06-01T03:00:00.000Z",
        "time_quality": "synced", "late": False, "reading": f"{device}:0:42",
        "message": "わなが作動しました (trap sprung; check within 24 h)", "details": {"battery": 3.3, "note": None},
    }
    return {**item, **over}


def health(**over: Any) -> dict[str, Any]:
    item = {
        "type": "health", "id": "gw-1:health:1", "gateway": "gw-1", "observed_at": "2025-06-01T03:05:00.000Z",
        "version": "0.3.1", "uptime_s": 86400.5, "pending": {"mqtt": 3, "ngsi-v2": 1}, "oldest_pending_s": None,
        "rejects": {"bad_mic": 2, "wrong_length": 1}, "disk_free_bytes": 1_000_000_000,
        "last_frame": {"lora0": "2025-06-01T03:04:59.000Z", "lora1": None}, "open_alarms": 1,
        "uplinks": {"mqtt": "stalled", "ngsi-v2": "up"},
    }
    return {**item, **over}


LOCATED = FiwareMapping(locations={"river-1": KAGAWA, "trap-017": KAGAWA, "gw-1": KAGAWA})


def own_v2(items: list[dict[str, Any]], mapping: FiwareMapping) -> list[dict[str, Any]]:
    """The entities of the items themselves, without the Device entities sent so references resolve."""
    return [e for e in ngsi_v2_entities(items, mapping) if "TimeInstant" in e]


def own_ld(items: list[dict[str, Any]], mapping: FiwareMapping, context: Any = CONTEXT) -> list[dict[str, Any]]:
    return [ld for v2, ld in zip(ngsi_v2_entities(items, mapping), ngsi_ld_entities(items, mapping, context),
                                 strict=True) if "TimeInstant" in v2]


def test_fixture_items_follow_the_batch_schema():
    assert_valid_items([water(), water(0), trap(), alarm(), alarm(location=None, name=None), health()])


# -- units ---------------------------------------------------------------------------------------------

# The UN/CEFACT Rec 20 name each UCUM unit must resolve to, written down here independently.
REC20_NAMES = {
    "mm": "millimetre", "cm": "centimetre", "m": "metre", "km": "kilometre", "Cel": "degree Celsius",
    "K": "kelvin", "[degF]": "degree Fahrenheit", "%": "percent", "1": "one", "V": "volt", "mV": "millivolt",
    "A": "ampere", "mA": "milliampere", "W": "watt", "Pa": "pascal", "hPa": "hectopascal", "kPa": "kilopascal",
    "s": "second [unit of time]", "min": "minute [unit of time]", "h": "hour", "d": "day",
    "m/s": "metre per second", "km/h": "kilometre per hour", "mm/h": "millimetre per hour",
    "m3": "cubic metre", "m3/s": "cubic metre per second", "L": "litre", "l": "litre", "lx": "lux",
    "deg": "degree [unit of angle]", "dB": "decibel", "By": "byte",
}


def test_unit_codes_are_the_rec20_codes_of_their_units():
    rec20 = load_units()
    names = dict(zip(rec20.CommonCode, rec20.Name, strict=True))
    assert set(UNIT_CODES) <= set(REC20_NAMES)
    wrong = {ucum: (code, names.get(code)) for ucum, code in UNIT_CODES.items() if names.get(code) != REC20_NAMES[ucum]}
    assert not wrong


def test_driver_units_all_have_codes():
    for driver in (TrapSensor(), WaterLevelSensor()):
        assert set(driver.units().values()) <= set(UNIT_CODES), driver.name


# -- NGSI-v2 and NGSI-LD: examples ------------------------------------------------------------------------

def test_water_level_is_water_observed_with_water_level_in_metres():
    item = water(1234)
    [v2] = own_v2([item], LOCATED)
    [ld] = own_ld([item], LOCATED)
    check_v2(v2)
    check_ld(ld)
    assert v2["id"] == ld["id"] == "urn:ngsi-ld:WaterObserved:river-1"
    assert v2["waterLevel"]["value"] == 1.234 and "height" not in v2
    assert v2["waterLevel"]["metadata"]["unitCode"]["value"] == "MTR"
    assert v2["waterLevel"]["metadata"]["TimeInstant"]["value"] == item["observed_at"]
    assert v2["water_temperature"]["metadata"]["unitCode"]["value"] == "CEL"
    assert v2["battery"]["metadata"]["unitCode"]["value"] == "VLT"
    assert "level" not in v2  # carried as waterLevel
    assert v2["refDevice"] == {"type": "Relationship", "value": "urn:ngsi-ld:Device:river-1"}
    assert v2["location"]["value"]["coordinates"] == [KAGAWA[1], KAGAWA[0]]
    assert ld["waterLevel"] == {"type": "Property", "value": 1.234, "observedAt": item["observed_at"],
                                "unitCode": "MTR"}
    assert ld["location"]["value"]["coordinates"] == [KAGAWA[1], KAGAWA[0]]
    assert ld["dateObserved"]["value"] == {"@type": "DateTime", "@value": item["observed_at"]}
    assert ld["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:river-1"}


def test_water_level_without_location_is_a_device_measurement():
    [v2] = own_v2([water()], FiwareMapping())
    check_v2(v2)
    assert v2["type"] == "DeviceMeasurement" and v2["id"] == "urn:ngsi-ld:DeviceMeasurement:river-1"
    assert v2["level"]["value"] == 1234 and v2["level"]["metadata"]["unitCode"]["value"] == "MMT"


def test_negative_level_is_no_water_level_but_is_kept():
    item = {**water(), "values": {"level": -120, "water_temperature": 4.5, "battery": 3.4}}
    assert_valid_items([item])
    for entity, kv in ((e, kv_v2(e)) for e in ngsi_v2_entities([item], LOCATED)):
        check_v2(entity)
        assert "waterLevel" not in kv and "height" not in kv
    assert kv_v2(own_v2([item], LOCATED)[0])["level"] == -120
    [ld] = own_ld([item], LOCATED)
    check_ld(ld)
    assert "waterLevel" not in ld and ld["level"]["unitCode"] == "MMT"


@pytest.mark.parametrize("name", ["waterLevel", "height"])  # height: as configs before WaterObserved 0.0.4
def test_a_value_mapped_to_the_water_level_is_its_source(name):
    item = {**water(), "values": {"depth": 45, "battery": 3.4}, "units": {"depth": "cm", "battery": "V"}}
    mapping = FiwareMapping(attributes={"depth": name}, locations={"river-1": KAGAWA})
    [v2] = own_v2([item], mapping)
    check_v2(v2)
    assert v2["waterLevel"]["value"] == 0.45 and "depth" not in v2 and "height" not in v2


def test_trap_is_an_sdm_device_without_battery_level():
    item = trap("sprung")
    [v2] = own_v2([item], LOCATED)
    [ld] = own_ld([item], LOCATED)
    check_v2(v2)
    check_ld(ld)
    assert v2["id"] == "urn:ngsi-ld:Device:trap-017"
    assert v2["deviceState"]["value"] == "sprung"
    assert v2["controlledProperty"]["value"] == ["motion"]
    assert v2["category"]["value"] == v2["deviceCategory"]["value"] == ["sensor"]
    assert "batteryLevel" not in v2 and "state" not in v2
    assert v2["battery"]["value"] == 3.3 and v2["battery"]["metadata"]["unitCode"]["value"] == "VLT"
    assert v2["tamper"] == {"type": "Boolean", "value": False,
                            "metadata": {"TimeInstant": {"type": "DateTime", "value": item["observed_at"]}}}
    assert v2["rssi"]["value"] == -97.0 and "unitCode" not in v2["rssi"]["metadata"]  # dBm has no Rec 20 code
    assert v2["dateLastValueReported"]["value"] == item["observed_at"]
    assert ld["deviceState"]["value"] == "sprung" and ld["battery"]["unitCode"] == "VLT"


def test_alarm_is_an_sdm_alert_pointing_at_its_device():
    item = alarm()
    [v2] = own_v2([item], FiwareMapping())
    [ld] = own_ld([item], FiwareMapping())
    check_v2(v2)
    check_ld(ld)
    assert v2["id"] == "urn:ngsi-ld:Alert:trap-017:trap_sprung:42"
    assert kv_v2(v2)["category"] == "agriculture" and "subCategory" not in v2
    assert v2["alertSource"] == {"type": "Relationship", "value": "urn:ngsi-ld:Device:trap-017"}
    assert ld["alertSource"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:trap-017"}
    assert v2["severity"]["value"] == "high"
    assert v2["dateIssued"]["value"] == v2["validFrom"]["value"] == item["raised_at"]
    assert v2["location"]["value"]["coordinates"] == [KAGAWA[1], KAGAWA[0]]
    assert ld["location"]["value"]["coordinates"] == [KAGAWA[1], KAGAWA[0]]
    # Orion refuses ( ) in values: v2 gets the full-width forms, LD the message as it is.
    assert v2["description"]["value"] == "わなが作動しました （trap sprung； check within 24 h）"
    assert ld["description"]["value"] == item["message"]
    assert v2["data"]["value"]["rule"] == "traps" and v2["data"]["value"]["details"] == {"battery": 3.3, "note": None}


def test_alert_categories_come_from_the_mapping_by_rule_then_kind():
    river = alarm("water_level_alarm", "river-1", rule="river_stage")
    paddy = alarm("water_level_alarm", "paddy-3", rule="paddy_low")
    silent = alarm("device_silent", "trap-017", location=None, severity="medium")
    mapping = FiwareMapping(alert_categories={"paddy_low": ("agriculture", "irrigation")})
    entities = [kv_v2(e) for e in own_v2([river, paddy, silent], mapping)]
    assert [(e["category"], e.get("subCategory")) for e in entities] == [
        ("naturalDisaster", "floodRisk"), ("agriculture", "irrigation"), ("environment", None)]
    assert "location" not in entities[2]
    for e in ngsi_v2_entities([river, paddy, silent], mapping):
        check_v2(e)


def test_health_is_the_gateway_as_a_network_device():
    item = health()
    [v2] = own_v2([item], LOCATED)
    [ld] = own_ld([item], LOCATED)
    check_v2(v2)
    check_ld(ld)
    kv = kv_v2(v2)
    assert v2["id"] == "urn:ngsi-ld:Device:gw-1" and kv["category"] == ["network"]
    assert kv["softwareVersion"] == "0.3.1"
    assert (kv["pending"], kv["pending_mqtt"], kv["pending_ngsi-v2"]) == (4, 3, 1)
    assert (kv["rejects"], kv["rejects_bad_mic"]) == (3, 2)
    assert kv["oldest_pending_s"] == 0  # null means nothing is pending
    assert kv["last_frame_lora0"] == "2025-06-01T03:04:59.000Z" and "last_frame_lora1" not in kv
    assert (kv["uplink_mqtt"], kv["uplink_ngsi-v2"]) == ("stalled", "up")
    assert v2["uptime_s"]["metadata"]["unitCode"]["value"] == "SEC"
    assert v2["disk_free_bytes"]["metadata"]["unitCode"]["value"] == "AD"


def test_a_sigfox_budget_in_health_is_a_counter_of_the_gateway_device():
    item = health(sigfox={"sigfox": {"used": 3, "limit": 140, "refused_24h": 0, "last_sent_at": None}})
    [v2] = ngsi_v2_entities([item], LOCATED)
    check_v2(v2)
    assert kv_v2(v2)["sigfox_used_sigfox"] == 3


def test_entities_keep_item_order_one_per_item_after_the_devices_they_name():
    items = [alarm(), water(1000), trap(), water(1001), health(), water(1002)]
    v2 = ngsi_v2_entities(items, LOCATED)
    assert [e["id"].split(":", 2)[2] for e in v2] == [
        "Alert:trap-017:trap_sprung:42", "Device:river-1", "WaterObserved:river-1",
        "Device:trap-017", "WaterObserved:river-1", "Device:gw-1", "WaterObserved:river-1"]
    assert [e["waterLevel"]["value"] for e in v2 if e["type"] == "WaterObserved"] == [1.0, 1.001, 1.002]
    river = v2[1]  # what the gateway knows of the river gauge, for refDevice to resolve
    assert kv_v2(river) == {"id": "urn:ngsi-ld:Device:river-1", "type": "Device", "category": ["sensor"],
                            "deviceCategory": ["sensor"], "controlledProperty": ["waterLevel", "temperature"],
                            "dateLastValueReported": items[1]["observed_at"],
                            "location": {"type": "Point", "coordinates": [KAGAWA[1], KAGAWA[0]]}}
    for entity in v2:
        check_v2(entity)
    ld = ngsi_ld_entities(items, LOCATED, CONTEXT)
    rounds = upsert_rounds(ld)
    assert [[e["type"] for e in r] for r in rounds] == [
        ["Alert", "Device", "WaterObserved", "Device"], ["WaterObserved", "Device"], ["WaterObserved"]]
    for entity in ld:
        check_ld(entity)


def test_every_reference_names_an_entity_the_gateway_sends():
    items = [alarm("water_level_alarm", "river-1"), water(1000), water(900, "river-2"), alarm(), trap(), health()]
    for mapping in (LOCATED, FiwareMapping()):
        entities = ngsi_v2_entities(items, mapping)
        ids = {e["id"] for e in entities}
        sent: set[str] = set()
        for entity in entities:
            if "refDevice" in entity:  # sent before the reading that names it
                assert entity["refDevice"]["value"] in sent, entity["id"]
            if "alertSource" in entity:  # the entity the device's readings make
                assert entity["alertSource"]["value"] in ids, entity["id"]
            sent.add(entity["id"])


def test_entity_type_and_id_template_come_from_the_mapping():
    mapping = FiwareMapping(
        entity_types={"water_level": "PaddyWater"}, entity_id="urn:ngsi-ld:{type}:{gateway}:{device}",
        gateway_id="town-gw1", attributes={"level": "waterDepth"},
    )
    [v2] = own_v2([water()], mapping)
    check_v2(v2)
    assert v2["id"] == "urn:ngsi-ld:PaddyWater:town-gw1:river-1" and v2["type"] == "PaddyWater"
    assert v2["waterDepth"]["value"] == 1234
    assert v2["refDevice"]["value"] == "urn:ngsi-ld:Device:town-gw1:river-1"


def test_values_named_like_reserved_attributes_are_renamed_not_lost():
    item = {**trap(), "values": {"state": "armed", "type": "x", "id": 1, "location": 5, "batteryLevel": 3.1,
                                 "category": "c"}}
    assert_valid_items([item])
    [v2] = own_v2([item], LOCATED)
    check_v2(v2)
    assert v2["type"] == "Device" and v2["id"] == "urn:ngsi-ld:Device:trap-017"
    assert {k: kv_v2(v2)[k] for k in ("type_value", "id_value", "location_value", "batteryLevel_value",
                                      "category_value")} == {"type_value": "x", "id_value": 1, "location_value": 5,
                                                             "batteryLevel_value": 3.1, "category_value": "c"}
    [ld] = own_ld([item], LOCATED)
    check_ld(ld)


def test_bad_templates_and_device_ids_are_refused():
    with pytest.raises(ValueError, match="entity_id template"):
        FiwareMapping(entity_id="urn:ngsi-ld:{kind}:{device}")
    with pytest.raises(ValueError, match="entity types"):
        FiwareMapping(entity_types={"trap": "Wild Trap"})
    with pytest.raises(ValueError, match="Orion"):
        ngsi_v2_entities([water()], FiwareMapping(entity_id="urn:ngsi-ld:{type}/{device}"))
    with pytest.raises(ValueError, match="device id"):
        iota_json([{**water(), "device": "river 1"}], FiwareMapping())


def test_unknown_item_types_are_refused():
    with pytest.raises(ValueError, match="unknown item type"):
        ngsi_v2_entities([{"type": "gossip"}], FiwareMapping())


# -- IoT Agent: examples ------------------------------------------------------------------------------

def test_iota_json_single_reading_is_a_flat_object():
    item = water()
    [(device, payload)] = iota_json([item], FiwareMapping(attributes={"level": "wl", "water_temperature": "wt"}))
    assert device == "river-1"
    # then the date the entity's SDM type asks for (WaterObserved without a location: DeviceMeasurement)
    assert json.loads(payload) == {"TimeInstant": item["observed_at"], "wl": 1234, "wt": 23.0, "battery": 3.5,
                                   "dateObserved": item["observed_at"]}


def test_iota_json_groups_per_device_and_keeps_order():
    items = [alarm(), water(1000), trap("armed"), water(1001), health()]
    out = iota_json(items, FiwareMapping())
    assert [d for d, _ in out] == ["trap-017", "river-1", "gw-1"]
    trap_groups = json.loads(out[0][1])
    assert trap_groups == [
        {"TimeInstant": "2025-06-01T03:00:00.000Z", "alarm": "trap_sprung", "alarmSeverity": "high",
         "alarmMessage": "わなが作動しました （trap sprung； check within 24 h）",
         "alarmId": "trap-017:trap_sprung:42"},
        {"TimeInstant": items[2]["observed_at"], "state": "armed", "tamper": False, "battery": 3.3,
         "dateLastValueReported": items[2]["observed_at"]},  # the trap is an SDM Device
    ]
    assert [g["level"] for g in json.loads(out[1][1])] == [1000, 1001]
    gateway = json.loads(out[2][1])
    assert gateway["TimeInstant"] == "2025-06-01T03:05:00.000Z" and gateway["version"] == "0.3.1"
    assert gateway["pending_mqtt"] == 3 and gateway["oldest_pending_s"] == 0
    assert gateway["uplink_mqtt"] == "stalled"


def test_iota_ul_groups_are_timestamped_and_parse():
    items = [water(1000), water(1001), trap()]
    out = dict(iota_ul(items, FiwareMapping(attributes={"level": "wl"})))
    groups = parse_ul(out["river-1"])
    assert [stamp for stamp, _ in groups] == [items[0]["observed_at"]] * 2
    assert groups[0][1] == [("wl", "1000"), ("water_temperature", "23.0"), ("battery", "3.5"),
                            ("dateObserved", items[0]["observed_at"])]
    assert parse_ul(out["trap-017"])[0][1] == [("state", "sprung"), ("tamper", "false"), ("battery", "3.3"),
                                               ("dateLastValueReported", items[2]["observed_at"])]


def test_iota_ul_replaces_separators_and_drops_empty_values():
    item = {**trap(), "values": {"state": "a|b#c@d", "note": "", "ok": True}}
    [(_, payload)] = iota_ul([item], FiwareMapping())
    [(_, pairs)] = parse_ul(payload)
    assert pairs == [("state", "a｜b＃c＠d"), ("ok", "true"), ("dateLastValueReported", item["observed_at"])]
    only_empty = {**trap(), "values": {"note": ""}}
    assert iota_ul([only_empty], FiwareMapping()) == []  # a date alone is no measure


def test_items_without_values_send_nothing_to_the_agent():
    item = {**trap(), "values": {}, "units": {}}
    assert iota_ul([item], FiwareMapping()) == [] and iota_json([item], FiwareMapping()) == []
    check_v2(ngsi_v2_entities([item], FiwareMapping())[0])  # the entity still says when it was heard


def test_iota_ul_health_is_flat():
    [(device, payload)] = iota_ul([health()], FiwareMapping())
    [(_, pairs)] = parse_ul(payload)
    assert device == "gw-1"
    assert dict(pairs)["pending_ngsi-v2"] == "1" and dict(pairs)["last_frame_lora0"] == "2025-06-01T03:04:59.000Z"


# -- hypothesis: arbitrary valid items ----------------------------------------------------------------------

DEVICE_IDS = st.from_regex(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
NAMES = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z")
SCALARS = st.one_of(st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=40))
UNITS = st.sampled_from([*REC20_NAMES, "furlong", "", "dBm", "ppm"])
TIMES = st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
LAT_LON = st.tuples(st.floats(-90, 90), st.floats(-180, 180))


@st.composite
def readings(draw) -> dict[str, Any]:
    driver = draw(st.sampled_from(["water_level", "trap", "paddy", "custom_layout"]))
    values: dict[str, Any] = {}
    if driver == "water_level" and draw(st.booleans()):
        values["level"] = draw(st.integers(-1000, 10000) | st.floats(-1000, 10000))
    if driver == "trap" and draw(st.booleans()):
        values["state"] = draw(st.sampled_from(["armed", "sprung"]) | SCALARS)
    values.update(draw(st.dictionaries(NAMES, SCALARS, max_size=6)))
    units = draw(st.dictionaries(st.sampled_from(sorted(values) or ["x"]), UNITS, max_size=len(values)))
    if "level" in values and draw(st.booleans()):
        units["level"] = draw(st.sampled_from(["mm", "cm", "m"]))
    device = draw(DEVICE_IDS)
    counter = draw(st.none() | st.integers(0, 2**32))
    return {
        "type": "reading", "id": f"{device}:{draw(st.integers(0, 99))}:{counter or 0}", "device": device,
        "driver": driver, "observed_at": draw(TIMES), "time_quality": draw(st.sampled_from(["synced", "estimated"])),
        "counter": counter, "values": values, "units": units,
        "radio": {"gateway": "gw-1", "source": "lora0", "address": draw(st.none() | st.integers(0, 65535)),
                  "rssi": draw(st.none() | st.floats(-150, 0)), "snr": draw(st.none() | st.floats(-30, 20))},
    }


@st.composite
def alarms(draw) -> dict[str, Any]:
    kind = draw(st.sampled_from(BATCH_VALIDATOR.schema["$defs"]["alarm"]["properties"]["alarm"]["enum"]))
    return {
        "type": "alarm", "id": draw(st.from_regex(r"\A[A-Za-z0-9_.:-]{1,80}\Z")), "alarm": kind,
        "severity": draw(st.sampled_from(sorted(ALERT_SEVERITIES))), "device": draw(DEVICE_IDS),
        "name": draw(st.none() | st.text(max_size=20)), "location": draw(st.none() | LAT_LON.map(list)),
        "rule": draw(st.text(max_size=20)), "raised_at": draw(TIMES), "time_quality": "synced",
        "late": draw(st.booleans()), "reading": draw(st.none() | st.text(max_size=20)),
        "message": draw(st.text(max_size=60)),
        "details": draw(st.dictionaries(st.text(max_size=8), SCALARS | st.none(), max_size=3)),
    }


@st.composite
def healths(draw) -> dict[str, Any]:
    keys = st.from_regex(r"\A[A-Za-z0-9_.-]{1,12}\Z")
    return {
        "type": "health", "id": "gw:health:1", "gateway": draw(DEVICE_IDS), "observed_at": draw(TIMES),
        "version": draw(st.text(max_size=12)), "uptime_s": draw(st.floats(0, 1e9)),
        "pending": draw(st.dictionaries(keys, st.integers(0, 10**6), max_size=3)),
        "oldest_pending_s": draw(st.none() | st.floats(0, 1e7)),
        "rejects": draw(st.dictionaries(keys, st.integers(0, 10**6), max_size=3)),
        "disk_free_bytes": draw(st.integers(0, 2**40)),
        "last_frame": draw(st.dictionaries(keys, st.none() | TIMES, max_size=3)),
        "open_alarms": draw(st.integers(0, 100)),
    }


ITEMS = st.lists(st.one_of(readings(), readings(), alarms(), healths()), min_size=1, max_size=6)


@st.composite
def mappings(draw, items: list[dict[str, Any]]) -> FiwareMapping:
    devices = sorted({i.get("device") or i["gateway"] for i in items})
    located = draw(st.lists(st.sampled_from(devices), unique=True))
    return FiwareMapping(locations={d: draw(LAT_LON) for d in located},
                         attributes=draw(st.dictionaries(NAMES, NAMES, max_size=3)),
                         drivers=draw(st.dictionaries(st.sampled_from(devices), st.sampled_from(
                             ["water_level", "trap", "paddy"]), max_size=len(devices))))


SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(st.data())
def test_any_items_make_valid_ngsi_entities(data):
    items = data.draw(ITEMS)
    assert_valid_items(items)
    mapping = data.draw(mappings(items))
    every_v2 = ngsi_v2_entities(items, mapping)
    every_ld = ngsi_ld_entities(items, mapping, CONTEXT)
    assert len(every_v2) == len(every_ld)
    sent: set[str] = set()
    for e2, eld in zip(every_v2, every_ld, strict=True):
        check_v2(e2)
        check_ld(eld)
        assert e2["id"] == eld["id"] and e2["type"] == eld["type"]
        if "refDevice" in e2:
            assert e2["refDevice"]["value"] in sent, "a reading naming a device not sent before it"
        sent.add(e2["id"])
    v2, ld = own_v2(items, mapping), own_ld(items, mapping)
    assert len(v2) == len(ld) == len(items)
    for item, e2, eld in zip(items, v2, ld, strict=True):
        assert (e2["type"] == "Alert") == (item["type"] == "alarm")
        if item["type"] == "reading":
            # every value is carried exactly once: as itself, as height, or as deviceState
            measured = [k for k, a in eld.items() if isinstance(a, dict) and "observedAt" in a]
            extra = e2["type"] == "Device" and item["radio"]["rssi"] is not None
            assert len(measured) == len(item["values"]) + extra
            if item["device"] in mapping.locations:
                lat, lon = mapping.locations[item["device"]]
                assert eld["location"]["value"]["coordinates"] == [lon, lat]


@SLOW
@given(st.data())
def test_any_items_make_iota_json_that_round_trips(data):
    items = data.draw(ITEMS)
    out = iota_json(items, FiwareMapping())
    payloads = {device: json.loads(body) for device, body in out}
    assert len(payloads) == len(out)
    groups = {device: p if isinstance(p, list) else [p] for device, p in payloads.items()}
    for body in payloads.values():  # one group is an object, several an array
        assert isinstance(body, dict) or len(body) > 1
    for item in items:
        device = item.get("device") or item["gateway"]
        expected = [v for v in measured_values(item) if v is not None]
        if not expected:
            continue
        group = groups[device].pop(0)
        assert group.pop("TimeInstant") == (item.get("observed_at") or item.get("raised_at"))
        sent = list(group.values())[: len(expected)]
        assert all(same_value(s, o) for s, o in zip(sent, expected, strict=True)), (sent, expected)
    assert all(not rest for rest in groups.values())


@SLOW
@given(st.data())
def test_any_items_make_ultralight_that_round_trips(data):
    items = data.draw(ITEMS)
    out = dict(iota_ul(items, FiwareMapping()))
    groups = {device: parse_ul(body) for device, body in out.items()}
    for item in items:
        # the agent refuses empty fields, so nulls and empty strings are left out
        expected = [v for v in measured_values(item) if v is not None and v != ""]
        if not expected:
            continue
        stamp, pairs = groups[item.get("device") or item["gateway"]].pop(0)
        assert stamp == (item.get("observed_at") or item.get("raised_at"))
        if item["type"] == "reading":  # then the date the entity's SDM type asks for
            assert pairs.pop() in (("dateObserved", item["observed_at"]), ("dateLastValueReported", item["observed_at"]))
        for (key, raw), original in zip(pairs, expected, strict=item["type"] != "health"):  # health: + counters
            assert not set(raw) & set("|#@") and not set(key) & set("|#@")
            assert same_ul_value(raw, original), (key, raw, original)
    assert all(not rest for rest in groups.values())


@settings(max_examples=200)
@given(st.lists(st.sampled_from("abcde"), max_size=30))
def test_upsert_rounds_keep_order_and_make_ids_unique(ids):
    entities = [{"id": i, "n": n} for n, i in enumerate(ids)]
    rounds = upsert_rounds(entities)
    assert [e for r in rounds for e in r] == entities
    for r in rounds:
        assert r and len({e["id"] for e in r}) == len(r)
    for previous, current in itertools.pairwise(rounds):  # a new round starts only when it must
        assert current[0]["id"] in {e["id"] for e in previous}


def test_floats_survive_every_format():
    item = {**trap(), "values": {"x": 0.1 + 0.2, "big": 1e300, "tiny": -5e-324}}
    [(_, ul)] = iota_ul([item], FiwareMapping())
    [(_, pairs)] = parse_ul(ul)
    assert [float(v) for _, v in pairs[:-1]] == [0.1 + 0.2, 1e300, -5e-324]
    [(_, js)] = iota_json([item], FiwareMapping())
    assert json.loads(js)["x"] == 0.1 + 0.2
    assert ngsi_v2_entities([item], FiwareMapping())[0]["big"]["value"] == 1e300


@SLOW
@given(st.data())
def test_any_items_make_one_json_group_per_http_request_the_same_groups_as_over_mqtt(data):
    items = data.draw(ITEMS)
    mapping = data.draw(mappings(items))
    per_request = iota_json_groups(items, mapping)
    # every request carries exactly one flat measure group (the JSON agent answers an array after
    # its first group), and together they are the MQTT payloads' groups, in the same order
    assert all(isinstance(json.loads(body), dict) for _, body in per_request)
    expected: list[tuple[str, dict[str, Any]]] = []
    for device, body in iota_json(items, mapping):
        groups = json.loads(body)
        expected += [(device, g) for g in (groups if isinstance(groups, list) else [groups])]
    got = [(device, json.loads(body)) for device, body in per_request]
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
    for device in {d for d, _ in got}:
        assert [g for d, g in got if d == device] == [g for d, g in expected if d == device]


# -- IoT Agent: a river's level as WaterObserved's waterLevel, as on NGSI -------------------------------

def test_iota_sends_a_located_river_level_as_water_level_in_metres():
    item = water(1234)
    [(_, js)] = iota_json([item], LOCATED)
    assert json.loads(js) == {"TimeInstant": item["observed_at"], "waterLevel": 1.234, "water_temperature": 23.0,
                              "battery": 3.5, "dateObserved": item["observed_at"]}
    [(_, ul)] = iota_ul([item], LOCATED)
    assert parse_ul(ul)[0][1][0] == ("waterLevel", "1.234")
    # an old config's `level = "wl"` still loads and still sends the level: as waterLevel, as NGSI does
    old = FiwareMapping(locations=LOCATED.locations, attributes={"level": "wl", "water_temperature": "wt"})
    assert json.loads(iota_json([item], old)[0][1])["waterLevel"] == 1.234
    assert "wl" not in json.loads(iota_json([item], old)[0][1])


def test_iota_takes_the_level_from_the_value_a_config_maps_to_water_level_or_height():
    paddy = {**water(), "driver": "paddy", "values": {"depth": 12.5, "battery": 3.5}, "units": {"depth": "cm"}}
    for target in ("waterLevel", "height"):
        mapping = FiwareMapping(locations=LOCATED.locations, entity_types={"paddy": "WaterObserved"},
                                attributes={"depth": target})
        group = json.loads(iota_json([paddy], mapping)[0][1])
        assert group["waterLevel"] == 0.125 and "depth" not in group and "height" not in group


def test_iota_keeps_a_negative_level_in_its_own_unit_under_its_own_name():
    item = {**water(), "values": {"level": -120, "battery": 3.4}}
    assert json.loads(iota_json([item], LOCATED)[0][1])["level"] == -120
    # mapped to waterLevel, a negative value cannot be the SDM waterLevel (minimum 0): it is renamed
    mapped = FiwareMapping(locations=LOCATED.locations, attributes={"level": "waterLevel"})
    group = json.loads(iota_json([item], mapped)[0][1])
    assert "waterLevel" not in group and group["waterLevel_value"] == -120
    assert kv_v2(own_v2([item], mapped)[0])["waterLevel_value"] == -120  # as on NGSI


def test_iota_provisions_water_level_for_water_observed_devices():
    kinds = {"level": "Number", "water_temperature": "Number", "battery": "Number"}
    body = iota_provisioning(LOCATED, [("river-1", "water_level", kinds), ("river-2", "water_level", kinds)])
    river, unlocated = body["devices"][0], body["devices"][1]
    assert river["entity_type"] == "WaterObserved"
    assert {"object_id": "waterLevel", "name": "waterLevel", "type": "Number"} in river["attributes"]
    # no location: a DeviceMeasurement, as on NGSI, whose level stays the driver's
    assert unlocated["entity_type"] == "DeviceMeasurement"
    assert "waterLevel" not in {a["name"] for a in unlocated["attributes"]}
    mapped = FiwareMapping(locations=LOCATED.locations, attributes={"level": "waterLevel"})
    attrs = iota_provisioning(mapped, [("river-1", "water_level", kinds)])["devices"][0]["attributes"]
    assert [a for a in attrs if a["name"].startswith("waterLevel")] == [
        {"object_id": "waterLevel", "name": "waterLevel", "type": "Number"},
        {"object_id": "waterLevel_value", "name": "waterLevel_value", "type": "Number"}]


@SLOW
@given(st.data())
def test_any_reading_has_the_same_attributes_on_the_agent_as_on_ngsi(data):
    items = data.draw(st.lists(readings(), min_size=1, max_size=6))
    mapping = data.draw(mappings(items))
    groups = iota_json_groups(items, mapping)  # one per reading with values, in order
    assert len(groups) == sum(1 for item in items if item["values"])
    for item, (device, body) in zip([i for i in items if i["values"]], groups, strict=True):
        assert device == item["device"]
        entity = own_v2([item], mapping)[0]
        if entity["type"] == "Device":  # the agent names deviceState through its provisioning
            continue
        group = json.loads(body)
        assert group.pop("TimeInstant") == item["observed_at"]
        measured = {k: a["value"] for k, a in entity.items()
                    if k == "dateObserved" or (isinstance(a, dict) and "TimeInstant" in a.get("metadata", {}))}
        assert group == measured


# -- an Alert's alertSource: an entity the uplink sends first, or a plain URI ----------------------------

@SLOW
@given(st.data())
def test_any_alert_names_a_device_entity_sent_before_it_or_a_plain_uri(data):
    items = data.draw(ITEMS)
    mapping = data.draw(mappings(items))
    sources, ld_sources = ngsi_v2_alert_sources(items, mapping), ngsi_ld_alert_sources(items, mapping, CONTEXT)
    ids = [entity_id for entity_id, _ in sources]
    assert len(set(ids)) == len(ids) and [entity_id for entity_id, _ in ld_sources] == ids
    assert ids == list(dict.fromkeys(mapping.entity("Device", i["device"]) for i in items if i["type"] == "alarm"))
    for (entity_id, e2), (_, eld) in zip(sources, ld_sources, strict=True):
        check_v2(e2)
        check_ld(eld)
        assert e2["id"] == eld["id"] == entity_id and e2["type"] == "Device"
        assert sdm_violations(kv_v2(e2)) == [], e2
    refused = set(data.draw(st.lists(st.sampled_from(ids), unique=True))) if ids else set()
    for unresolved in (frozenset(), refused):
        alerts_v2 = [e for e in ngsi_v2_entities(items, mapping, unresolved) if e["type"] == "Alert"]
        alerts_ld = [e for e in ngsi_ld_entities(items, mapping, CONTEXT, unresolved) if e["type"] == "Alert"]
        for e2, eld in zip(alerts_v2, alerts_ld, strict=True):
            target = e2["alertSource"]["value"]
            assert target in ids  # an entity the uplink sends before the alert
            assert e2["alertSource"]["type"] == ("Text" if target in unresolved else "Relationship")
            assert eld["alertSource"]["type"] == ("Property" if target in unresolved else "Relationship")
            assert kv_ld(eld)["alertSource"] == target
            assert sdm_violations(kv_v2(e2)) == [], e2  # SDM Alert takes either form
