"""Finding and describing outbox rows, for the maintainer's tools: filters, uplink bits by name, an item by id or seq."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from edgegw.errors import OutboxError
from edgegw.store.connection import Queries


def _filters(kind: str | None, device: str | None, kind_column: str = "kind",
             device_column: str = "device_id") -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if kind is not None:
        where.append(f"{kind_column} = ?")
        args.append(kind)
    if device is not None:
        where.append(f"{device_column} = ?")
        args.append(device)
    return where, args


def _uplink_names(conn: Queries) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in conn.execute("SELECT bit, name FROM uplinks ORDER BY bit")]


def _names(pending: int, names: list[tuple[int, str]]) -> list[str]:
    """The uplink names of the bits set in ``pending``; a bit no uplink owns shows as ``bit<N>``."""
    out = [name for bit, name in names if pending & bit]
    known = sum(bit for bit, _ in names)
    rest = pending & ~known
    out += [f"bit{b}" for b in range(63) if rest & (1 << b)]
    return out


def _pending_bit(conn: Queries, uplink: str, state: str | None) -> int:
    """The bit of ``uplink`` in the queue, to filter rows by: only pending rows have one."""
    if state == "delivered":  # an empty list would say nothing was delivered
        raise OutboxError(f"delivered items are not told apart by uplink ({uplink!r}): an item is delivered once"
                          " every uplink it was for acknowledged it; leave out the uplink to list them")
    return _bit(conn, uplink)


def _bit(conn: Queries, uplink: str) -> int:
    row = conn.execute("SELECT bit FROM uplinks WHERE name = ?", (uplink,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM uplinks ORDER BY name")]
        raise OutboxError(f"unknown uplink {uplink!r}; configured: {', '.join(known) or 'none'}")
    return row[0]


def _find(conn: Queries, ident: str) -> sqlite3.Row | None:
    """The outbox row of an item id, or of a seq (a number that is not an item id).

    Only the ids of items without a device counter are indexed: a reading's id is looked up by a
    scan of the outbox (0.3 s for a million rows here), which is fine for a maintainer's command.
    """
    cols = "seq, item_id, kind, priority, device_id, observed_at, accepted_at, delivered_at, pending, item AS body"
    row = (conn.execute(f"SELECT {cols} FROM outbox_items WHERE counter IS NULL AND item_id = ?", (ident,)).fetchone()
           or conn.execute(f"SELECT {cols} FROM outbox_items WHERE counter IS NOT NULL AND item_id = ?",
                           (ident,)).fetchone())
    if row is None and ident.isascii() and ident.isdigit() and int(ident) < 2**63:  # a seq: an SQLite INTEGER
        row = conn.execute(f"SELECT {cols} FROM outbox_items WHERE seq = ?", (int(ident),)).fetchone()
    return row


def _device(body: Any) -> str | None:
    return body.get("device") if isinstance(body, dict) else None


def _observed(body: Any, fallback: float) -> float:
    """The Unix time of an item body's ``observed_at`` (readings, health) or ``raised_at`` (alarms)."""
    text = (body.get("observed_at") or body.get("raised_at")) if isinstance(body, dict) else None
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else fallback
    except ValueError:
        return fallback
