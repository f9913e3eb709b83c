"""The data that flows between stages: Frame -> Reading (or Reject) -> Alarm, and the events the writer takes.

Frames, rejects and readings are plain slotted dataclasses: they are created on the hot path,
thousands per second, and never validated twice. Nothing changes them once made, yet they are not
frozen: a frozen dataclass sets each field through object.__setattr__, which made a reading cost
2.3 us to create instead of 0.3. How each becomes a batch item is
the wire format's (edgegw.items).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    rssi: float | None = None  # the frame's, where it was heard (an unknown sender's is how near it is)
    snr: float | None = None


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


def iso(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z, the form FIWARE and JSON Schema date-time accept.

    Milliseconds are ``floor(ts * 1000)``, exactly as the outbox's SQL renders readings.
    """
    ms = math.floor(ts * 1000)
    t = time.gmtime(ms // 1000)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            f".{ms % 1000:03d}Z")


# -- what flows into the writer -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceState:
    """A radio source came up, went down, or is starting (for ``edgegw status``)."""

    source: str
    state: str  # "starting" | "receiving" | "down" | "stopped"
    detail: str = ""
    wall: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class UplinkState:
    """An uplink's state as its forwarder shows it (up, down, connecting, stalled, ...)."""

    uplink: str
    state: str
    detail: str = ""
    wall: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Ack:
    """An uplink acknowledged these outbox rows. Once the writer recorded it (or failed to), it tells
    the uplink's forwarder, which may then send them again if it must."""

    uplink: str
    bit: int
    seqs: list[int]
    wall: float = field(default_factory=time.time)
    delivered: bool = True  # False: let go unsent (the Sigfox uplink releasing an alarm it need not carry)


@dataclass(frozen=True, slots=True)
class Park:
    """An uplink refused this one outbox row for good: kept with the platform's error, not offered again."""

    uplink: str
    bit: int
    seq: int
    error: str
    wall: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The gateway's health report (a batch item), built beside the writer, for the writer to queue."""

    item: dict[str, Any]
    wall: float


@dataclass(frozen=True, slots=True)
class ActionsStarted:
    """The local actions of these alarms were started: a restart need not start them again."""

    alarm_ids: tuple[str, ...]


# Everything the writer takes, dispatched once by its type (edgegw.writer.Writer).
Event = Frame | Reject | SourceState | UplinkState | Ack | Park | HealthReport | ActionsStarted


@dataclass(frozen=True, slots=True)
class HandOver:
    """Events for the writer, in the order they happened, committed together. ``committed`` (a
    source's read turn) is set once the writer is done with them: the source reads again only then."""

    events: Sequence[Event]
    committed: threading.Event | None = None
    at: float = field(default_factory=time.monotonic)  # when it was handed over (the writer may hold acks)
