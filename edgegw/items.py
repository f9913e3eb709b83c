"""The wire format: how a reading, an alarm and a health report become batch items, and batches.

Every uplink receives items in this one shape, described by the published JSON Schema
(:data:`BATCH_SCHEMA_FILE`); FIWARE uplinks map the same items onward. A reading's item is rendered
by SQLite from its outbox row (:data:`READING_ITEM_SQL`, the fast path: a backlog drains at tens of
thousands of items a second without Python touching each); alarms and health reports are rendered
here in Python and stored whole. ``tests/test_items.py`` checks all three against the schema.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegw.model import Alarm, iso

BATCH_SCHEMA = "edgegw.batch/1"
BATCH_SCHEMA_FILE = Path(__file__).parent / "schemas" / "batch-v1.schema.json"

# The batch item of a reading from its outbox row ``o`` and its driver's row ``dr`` (a join, not a
# subquery per row: 0.25 us an item less to render). Milliseconds are floor(ts * 1000), as
# :func:`edgegw.model.iso` renders alarms and health reports. Rows of other kinds, and readings
# rebuilt from a parked copy (no driver), keep their whole item in ``body``.
READING_ITEM_SQL = """
CASE WHEN o.kind = 'reading' AND o.driver IS NOT NULL THEN json_object(
    'type', 'reading', 'id', o.item_id, 'device', o.device_id, 'driver', o.driver,
    'observed_at', strftime('%Y-%m-%dT%H:%M:%fZ', floor(o.observed_at * 1000) / 1000.0, 'unixepoch'),
    'time_quality', o.time_quality, 'counter', o.counter, 'verified', json(iif(o.verified, 'true', 'false')),
    'values', json(o.body),
    'units', json(coalesce(dr.units, '{}')),
    'radio', json_object('gateway', (SELECT value FROM meta WHERE key = 'gateway_id'), 'source', o.source,
                         'address', o.address, 'rssi', o.rssi, 'snr', o.snr))
ELSE o.body END"""


def alarm_item(alarm: Alarm) -> dict[str, Any]:
    """The batch item of an alarm (also what alarm actions receive)."""
    return {
        "type": "alarm",
        "id": alarm.alarm_id,
        "alarm": alarm.kind,
        "severity": alarm.severity,
        "device": alarm.device_id,
        "name": alarm.name,
        "location": list(alarm.location) if alarm.location else None,
        "rule": alarm.rule,
        "raised_at": iso(alarm.raised_at),
        "time_quality": alarm.time_quality,
        "late": alarm.late,
        "reading": alarm.reading_id,
        "verified": alarm.verified,
        "message": alarm.message,
        "details": alarm.details,
    }


def health_item(gateway_id: str, now: float, version: str, uptime_s: float, counts: dict[str, Any]) -> dict[str, Any]:
    """The gateway's health report as a batch item; ``counts`` are read from the database (see
    :func:`edgegw.store.views.health_counts`) and what only the running daemon knows."""
    return {"type": "health", "id": f"{gateway_id}:health:{int(now * 1000)}", "gateway": gateway_id,
            "observed_at": iso(now), "version": version, "uptime_s": round(uptime_s, 1), **counts}


def new_batch_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Batch:
    """Outbox items on their way to one uplink, each already stored as JSON text.

    An uplink picks its wire format: :meth:`json` is edgegw's own versioned batch; FIWARE uplinks
    take :meth:`items` and map them.
    """

    batch_id: str
    gateway_id: str
    bodies: list[str]

    def json(self) -> bytes:
        return batch_json(self.batch_id, self.gateway_id, self.bodies)

    def items(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.bodies]


def batch_json(batch_id: str, gateway_id: str, item_bodies: list[str], sent_at: float | None = None) -> bytes:
    """Assemble a batch from items already stored as JSON text, without re-parsing them."""
    head = json.dumps(
        {"schema": BATCH_SCHEMA, "batch_id": batch_id, "gateway": gateway_id, "sent_at": iso(sent_at or time.time())},
        separators=(",", ":"),
    )
    return (head[:-1] + ',"items":[' + ",".join(item_bodies) + "]}").encode()
