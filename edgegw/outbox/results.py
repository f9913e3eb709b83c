"""What the maintainer's outbox tools return: plain, frozen records (``edgegw outbox ... --json`` prints them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Bytes on disk: the database file, its WAL, and the free pages inside the file (reused by new rows)."""

    database_bytes: int
    wal_bytes: int
    free_bytes: int


@dataclass(frozen=True, slots=True)
class UplinkCounts:
    """One uplink's share of the outbox. ``configured`` is False for an uplink that only has parked
    items left (it was removed from the config, and its bit released)."""

    state: str | None
    pending: int
    oldest_pending_at: float | None
    parked: int
    configured: bool = True


@dataclass(frozen=True, slots=True)
class KindCounts:
    pending: int
    delivered: int


@dataclass(frozen=True, slots=True)
class Stats:
    """What ``edgegw outbox stats`` shows. Times are Unix seconds; ``oldest_pending_s`` is an age."""

    now: float
    pending: int
    delivered: int
    parked: int
    oldest_pending_at: float | None
    oldest_pending_s: float | None
    by_uplink: dict[str, UplinkCounts]
    by_kind: dict[str, KindCounts]
    disk: DiskUsage


@dataclass(frozen=True, slots=True)
class ItemRow:
    """One outbox row in a listing. ``pending`` names the uplinks that still wait for it, in bit order;
    ``parked`` the uplinks that refused it."""

    seq: int
    item_id: str
    kind: str
    priority: int
    device_id: str | None
    observed_at: float | None
    accepted_at: float
    delivered_at: float | None
    pending: list[str]
    parked: list[str]


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """One item one uplink refused for good. ``seq`` and the times from the outbox are None once the
    outbox row was purged (the parked row keeps the body, so it can still be retried)."""

    item_id: str
    uplink: str
    kind: str
    error: str
    parked_at: float
    seq: int | None
    device_id: str | None
    observed_at: float | None
    accepted_at: float | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """An item's state for one uplink: ``pending``, ``parked`` (with the platform's error) or ``done``
    (acknowledged, or the uplink was added to the config after the item was accepted)."""

    state: Literal["pending", "parked", "done"]
    error: str | None = None
    parked_at: float | None = None


@dataclass(frozen=True, slots=True)
class ItemDetail:
    """What ``edgegw outbox show`` shows. ``in_outbox`` is False for a parked item whose outbox row was
    purged: then ``seq`` and the outbox times are None and the body comes from the parked row."""

    item_id: str
    kind: str
    in_outbox: bool
    seq: int | None
    priority: int | None
    device_id: str | None
    observed_at: float | None
    accepted_at: float | None
    delivered_at: float | None
    uplinks: dict[str, Delivery]
    body: Any


@dataclass(frozen=True, slots=True)
class Requeued:
    """One parked item put back in the queue of one uplink; ``reinserted`` if its outbox row had been
    purged and was rebuilt from the parked row (with a new seq)."""

    item_id: str
    uplink: str
    seq: int
    reinserted: bool


@dataclass(slots=True)
class RetryResult:
    """``requeued``: what went back in the queue; ``not_configured``: parked items left alone because
    their uplink is no longer configured (no bit to set), by uplink name."""

    requeued: list[Requeued] = field(default_factory=list)
    not_configured: dict[str, int] = field(default_factory=dict)
