"""The send queue as a forwarder reads it, on its own read-only connection: which items wait for
its uplink, in which order, and their batch items.

Two lanes: the urgent one (alarms, health reports: priority > 0, found by the ``queue_urgent``
index however long the backlog) and the plain one (readings in seq order, the table's own).
Readings of this boot stamped before the clock was set wait to be re-stamped (edgegw.clock), and
are not sendable meanwhile; while ``[clock] await_sync`` holds them, none of this boot's are.
"""

from __future__ import annotations

import json
import sqlite3

from edgegw.clock import CLOCK_SANE_AFTER

_SENDABLE = ("q.pending & :bit AND NOT (o.kind = 'reading' AND o.observed_at < :sane AND o.boot_id = :boot)")


def waiting(conn: sqlite3.Connection, bit: int, boot_id: str, held_before: float = CLOCK_SANE_AFTER) -> bool:
    """Whether any sendable item waits for the uplink of ``bit``; this boot's readings stamped before
    ``held_before`` are not (see edgegw.clock.SyncWait)."""
    # Any row will do: no ORDER BY, which would sort the whole backlog to find one.
    return conn.execute(f"SELECT 1 FROM queue q CROSS JOIN outbox o ON o.seq = q.seq WHERE {_SENDABLE} LIMIT 1",
                        {"bit": bit, "sane": held_before, "boot": boot_id}).fetchone() is not None


def next_urgent(conn: sqlite3.Connection, bit: int, boot_id: str, min_priority: int, limit: int) -> list[int]:
    """Up to ``limit`` seqs of the urgent lane at ``min_priority`` or above, in send order."""
    return _lane(conn, "q.priority > 0 AND q.priority >= :arg", bit, boot_id, CLOCK_SANE_AFTER, min_priority, limit)


def next_plain(conn: sqlite3.Connection, bit: int, boot_id: str, after: int, limit: int,
               held_before: float = CLOCK_SANE_AFTER) -> list[int]:
    """Up to ``limit`` seqs of the plain lane after seq ``after``, in send order (``held_before``: as in :func:`waiting`)."""
    return _lane(conn, "q.priority = 0 AND q.seq > :arg", bit, boot_id, held_before, after, limit)


def _lane(conn: sqlite3.Connection, lane: str, bit: int, boot_id: str, held_before: float, arg: int,
          limit: int) -> list[int]:
    # One row, not one per seq: fetching a row releases the GIL and takes it back, and with the
    # writer busy each of those was a switch between the two threads (see batch_items).
    (text,) = conn.execute(
        f"SELECT group_concat(seq) FROM (SELECT q.seq FROM queue q CROSS JOIN outbox o ON o.seq = q.seq"
        f" WHERE {_SENDABLE} AND {lane} ORDER BY q.priority DESC, q.seq LIMIT :limit)",
        {"bit": bit, "sane": held_before, "boot": boot_id, "arg": arg, "limit": limit}).fetchone()
    return list(map(int, text.split(","))) if text else []


def batch_items(conn: sqlite3.Connection, seqs: list[int]) -> dict[int, str]:
    """The batch items of these outbox rows, in the order given; rows gone meanwhile are left out."""
    # One statement for any number of seqs: an IN list of placeholders is a new statement per
    # batch size, each kept in the connection's statement cache. And one row: SQLite renders the
    # batch while the GIL is free, where a row per item handed the GIL to the busy writer and
    # back 500 times (an strace of a burst: half the futex calls of the daemon). Record
    # separator: JSON text never holds one.
    got, items = conn.execute("SELECT group_concat(seq), group_concat(item, char(30)) FROM outbox_items"
                              " WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),)).fetchone()
    if got is None:
        return {}
    found = dict(zip(map(int, got.split(",")), items.split("\x1e"), strict=True))
    return {s: found[s] for s in seqs if s in found}


def still_pending(conn: sqlite3.Connection, seqs: list[int]) -> dict[int, tuple[int, float]]:
    """Each row's uplink bits still waiting for an ack, and when it was accepted: whether a main
    uplink acknowledged an alarm within the Sigfox uplink's delay (see edgegw.uplink.sigfox.sender)."""
    rows = conn.execute("SELECT q.seq, q.pending, o.accepted_at FROM queue q CROSS JOIN outbox o ON o.seq = q.seq"
                        " WHERE q.seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),))
    return {seq: (pending, accepted_at) for seq, pending, accepted_at in rows}
