"""The data that flows between stages: Frame -> Reading -> (outbox item) -> Batch.

Frames, rejects and readings are plain slotted dataclasses: they are created on the hot path,
thousands per second, and never validated twice. Nothing changes them once made, yet they are not
frozen: a frozen dataclass sets each field through object.__setattr__, which made a reading cost
2.3 us to create instead of 0.3. Batches are the wire format, described by the JSON Schema in
``edgegw/schemas/batch-v1.schema.json``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BATCH_SCHEMA = "edgegw.batch/1"
BATCH_SCHEMA_FILE = Path(__file__).parent / "schemas" / "batch-v1.schema.json"

Value = float | int | str | bool


def boot_id() -> str:
    """The kernel's id for this boot: monotonic times are only comparable within one boot.

    Its first 8 hex digits: stored with every reading, the whole UUID was a tenth of the row, and
    two boots of one gateway sharing 32 random bits is not a risk worth 28 bytes a reading.
    """
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "unknown"


@dataclass(slots=True)
class Frame:
    """Raw bytes as one radio source heard them, with the radio metadata of that moment."""

    source: str
    address: int | None
    payload: bytes
    rssi: float | None = None
    snr: float | None = None
    wall: float = field(default_factory=time.time)
    mono: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Reject:
    """Something a source or driver could not turn into a reading; counted by reason, never fatal."""

    source: str
    reason: str
    detail: str
    address: int | None = None
    device_id: str | None = None
    raw: bytes = b""
    wall: float = field(default_factory=time.time)


@dataclass(slots=True)
class Reading:
    """One decoded observation of one device.

    ``reading_id`` is derived from what the device sent (device id, counter epoch, frame counter), so
    two gateways hearing the same frame produce the same id and the platform can de-duplicate.
    """

    reading_id: str
    device_id: str
    driver: str
    observed_at: float
    time_quality: str  # "synced"; "unsynced" while the clock is obviously wrong (no RTC, no NTP yet)
    counter: int | None
    values: dict[str, Value]
    source: str
    address: int | None
    rssi: float | None
    snr: float | None
    mono: float
    boot_id: str
    verified: bool = False  # its frame's MIC verified with the device's key (see edgegw.envelope)


SEVERITIES = ("informational", "low", "medium", "high", "critical")
PRIORITY_ALARM = 10  # outbox priority: alarms overtake any backlog of readings (priority 0)
PRIORITY_HEALTH = 5  # a gateway's health report is news only while it is fresh


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something a rule decided a person must know, from one reading or from time passing.

    ``alarm_id`` is derived from what caused it (the reading's id, or the episode it belongs to), so
    evaluating the same readings again after a crash yields the same id and the platform can
    de-duplicate. ``late`` marks an alarm about the past: its reading was observed long before the
    gateway evaluated it, or arrived after newer ones. ``opens`` and ``closes`` are the gateway's own
    bookkeeping for ``edgegw alarms``: an alarm that stays open until another alarm (by id) closes it.
    """

    alarm_id: str
    kind: str
    severity: str
    device_id: str
    rule: str
    raised_at: float
    message: str
    details: dict[str, Value | None] = field(default_factory=dict)
    reading_id: str | None = None
    time_quality: str = "synced"
    late: bool = False
    name: str | None = None
    location: tuple[float, float] | None = None
    opens: bool = False
    closes: tuple[str, ...] = ()
    verified: bool | None = None  # its reading's frame was authenticated; None: not caused by a frame

    def item(self) -> dict[str, Any]:
        """The batch item for this alarm (see the batch JSON Schema)."""
        return {
            "type": "alarm",
            "id": self.alarm_id,
            "alarm": self.kind,
            "severity": self.severity,
            "device": self.device_id,
            "name": self.name,
            "location": list(self.location) if self.location else None,
            "rule": self.rule,
            "raised_at": iso(self.raised_at),
            "time_quality": self.time_quality,
            "late": self.late,
            "reading": self.reading_id,
            "verified": self.verified,
            "message": self.message,
            "details": self.details,
        }


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z, the form FIWARE and JSON Schema date-time accept.

    Milliseconds are ``floor(ts * 1000)``, exactly as the outbox's SQL renders readings.
    """
    ms = math.floor(ts * 1000)
    t = time.gmtime(ms // 1000)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            f".{ms % 1000:03d}Z")


def new_batch_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Batch:
    """Outbox items on their way to one uplink, each already stored as JSON text (see the schema).

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
