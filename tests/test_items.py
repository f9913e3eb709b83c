"""The wire format has one definition (edgegw.items), and every kind of item it renders is what the
published JSON Schema says: readings rendered by SQLite from their outbox rows, alarms and health
reports rendered in Python."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.items import BATCH_SCHEMA_FILE, alarm_item, batch_json, health_item
from edgegw.model import SEVERITIES, Alarm, Reading
from edgegw.store import Store, health_counts

VALIDATOR = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()),
                                            format_checker=jsonschema.FormatChecker())

ids = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=16)
values = st.dictionaries(names, st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                                          st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)),
                         max_size=5)
times = st.floats(0, 4_000_000_000)  # 1970 (a Pi without a clock yet) to 2096
radio = st.one_of(st.none(), st.floats(-150, 30))


def validate(items: list[dict]) -> None:
    VALIDATOR.validate(json.loads(batch_json("b" * 32, "gw-1", [json.dumps(i) for i in items])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(device=ids, counter=st.one_of(st.none(), st.integers(0, 2**63 - 1)), values=values, at=times,
       rssi=radio, snr=radio, verified=st.booleans(), address=st.one_of(st.none(), st.integers(0, 65535)))
def test_a_reading_rendered_by_sqlite_is_a_schema_valid_item(tmp_path_factory, device, counter, values, at, rssi,
                                                             snr, verified, address):
    store = Store(tmp_path_factory.mktemp("db") / "edgegw.db")
    store.register_uplinks(["up"])
    store.describe("gw-1", {"water_level": {"level": "cm"}})
    reading_id = f"{device}:h:{'0' * 16}:{int(at // 60)}" if counter is None else f"{device}:0:{counter}"
    reading = Reading(reading_id, device, "water_level", at, "synced", counter, values, "lora0",
                      address, rssi, snr, 1.0, "b00t", verified)
    with store.transaction():
        seq = store.add_reading(reading, b"\x01", 1, at)
    assert seq is not None
    item = json.loads(store.item(seq))
    store.close()
    validate([item])
    assert item["values"] == values and item["counter"] == counter and item["verified"] is verified
    assert item["units"] == {"level": "cm"} and item["radio"]["gateway"] == "gw-1"


ALARM_KINDS = json.loads(BATCH_SCHEMA_FILE.read_text())["$defs"]["alarm"]["properties"]["alarm"]["enum"]


@given(kind=st.sampled_from(ALARM_KINDS), severity=st.sampled_from(SEVERITIES), device=ids, at=times, late=st.booleans(),
       verified=st.one_of(st.none(), st.booleans()), message=st.text(max_size=80),
       details=st.dictionaries(ids, st.one_of(st.none(), st.integers(), st.text(max_size=10)), max_size=3),
       location=st.one_of(st.none(), st.tuples(st.floats(-90, 90), st.floats(-180, 180))))
def test_an_alarm_is_a_schema_valid_item(kind, severity, device, at, late, verified, message, details, location):
    alarm = Alarm(f"{device}:x:{kind}", kind, severity, device, "rule-1", at, message, details, late=late,
                  verified=verified, location=location)
    item = alarm_item(alarm)
    validate([item])
    assert item["id"] == alarm.alarm_id and item["late"] is late


def test_a_health_report_of_a_real_database_is_a_schema_valid_item(tmp_path: Path):
    store = Store(tmp_path / "edgegw.db")
    bits = store.register_uplinks(["broker", "orion"])
    with store.transaction():
        store.add_reject("lora0", "unknown_device", "no device at 9", 9, None, b"x", 100.0)
        store.source_state("lora0", "receiving", "", 100.0)
    store.close()
    counts = health_counts(tmp_path / "edgegw.db", bits, 200.0)
    item = health_item("gw-1", 200.0, "0.1.0", 12.34, {**counts, "restarts": {}, "disk_state": "ok"})
    validate([item])
    assert item["rejects"] == {"unknown_device": 1} and item["pending"] == {"broker": 0, "orion": 0}
    assert item["uptime_s"] == 12.3 and not math.isnan(item["disk_free_bytes"])
