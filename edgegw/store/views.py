"""Read-only views of a gateway database, on connections of their own while the daemon writes:
everything ``edgegw status`` and ``edgegw alarms`` show, the counts of the health report, and the
integrity check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgegw.model import iso
from edgegw.store.alarms import alarm_rows
from edgegw.store.connection import Queries, open_reader, snapshot
from edgegw.store.housekeeping import disk_usage
from edgegw.store.outbox import PARKED_DONE, oldest_pending_at, pending_count


def health_counts(path: Path, bits: dict[str, int], now: float) -> dict[str, Any]:
    """What the gateway's health report says of its database (see edgegw.items.health_item).

    Counting what each uplink has pending reads the queue whole, tens of milliseconds per uplink
    behind a million readings: the daemon reads it beside the writer, not in it.
    """
    conn = open_reader(path)
    try:
        with snapshot(conn):  # one snapshot for all the counts
            oldest = oldest_pending_at(conn)
            disk = disk_usage(conn, path)
            return {
                "pending": {name: pending_count(conn, bit) for name, bit in bits.items()},
                # As `edgegw status` shows them: a town's dashboard must see a stalled uplink as well.
                "uplinks": {name: state for name, state in conn.execute("SELECT name, state FROM uplinks")
                            if name in bits},
                "oldest_pending_s": None if oldest is None else round(max(0.0, now - oldest), 1),
                "rejects": dict(conn.execute("SELECT reason, sum(count) FROM reject_counts GROUP BY reason").fetchall()),
                "disk_free_bytes": disk["free_bytes"], "disk_used_bytes": disk["db_bytes"] + disk["wal_bytes"],
                "last_frame": {name: None if at is None else iso(at)
                               for name, at in conn.execute("SELECT name, last_frame_at FROM sources")},
                "open_alarms": conn.execute("SELECT count(*) FROM alarms WHERE open = 1").fetchone()[0],
                "database_damage": next(({"at": iso(r[0]), "part": r[1], "problem": r[2], "kept_as": r[3]} for r in
                                         conn.execute("SELECT at, part, problem, kept_as FROM damage WHERE lost = 1"
                                                      " ORDER BY at DESC LIMIT 1")), None),
            }
    finally:
        conn.close()


def quick_check(path: Path) -> list[str]:
    """SQLite's quick integrity check on a reader connection: [] when the database is sound."""
    conn = open_reader(path)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
        return [] if problems == ["ok"] else problems
    finally:
        conn.close()

def alarms(path: Path, recent: int = 50) -> dict[str, list[dict[str, Any]]]:
    """Open alarms (newest first), and the ``recent`` latest alarms of any state."""
    conn = open_reader(path)
    try:
        return {"open": alarm_rows(conn, "open = 1", 10_000), "recent": alarm_rows(conn, "1", recent)}
    finally:
        conn.close()

def status(path: Path) -> dict[str, Any]:
    """Everything ``edgegw status`` shows, read from the database while the daemon runs."""
    conn = open_reader(path)
    try:
        now = time.time()
        q = lambda sql, *a: [dict(r) for r in conn.execute(sql, a)]  # noqa: E731
        conn.execute("BEGIN")  # one snapshot for all the counts
        parked = conn.execute(f"SELECT count(*) FROM ({PARKED_DONE})").fetchone()[0]
        outbox = {"pending": pending_count(conn),
                  "delivered": conn.execute("SELECT (SELECT count(*) FROM outbox) - (SELECT count(*) FROM queue)")
                  .fetchone()[0] - parked,
                  "parked": parked,
                  "oldest_pending_at": oldest_pending_at(conn)}
        uplinks = q("SELECT name, state, detail, changed_at, batches, items, last_ack_at,"
                    " coalesce(inflight, 0) AS in_flight, bit FROM uplinks ORDER BY name")
        for u in uplinks:
            u["pending"] = pending_count(conn, u.pop("bit"))
        outbox["in_flight"] = sum(u["in_flight"] for u in uplinks)
        drops = q("SELECT reason, kind, count FROM drops")
        return {
            "now": now,
            "open_alarms": alarm_rows(conn, "open = 1", 10_000),
            "parked": {
                "by_uplink": {r["uplink"]: r["n"] for r in q("SELECT uplink, count(*) AS n FROM parked GROUP BY uplink")},
                "recent": q("SELECT item_id, uplink, kind, error, parked_at FROM parked ORDER BY parked_at DESC LIMIT 10"),
            },
            "outbox": outbox,
            "uplinks": uplinks,
            # The last frame from the rows every commit writes: the source's own is written every COUNTS_EVERY.
            "sources": q("SELECT name, state, detail, changed_at, nullif(max(coalesce(last_frame_at, -1),"
                         " coalesce((SELECT max(last_seen) FROM devices d WHERE d.source = s.name), -1),"
                         " coalesce((SELECT max(last_at) FROM reject_counts r WHERE r.source = s.name), -1)), -1)"
                         " AS last_frame_at, frames FROM sources s ORDER BY name"),
            "devices": q(
                "SELECT id, source, address, driver, last_seen, last_rssi, last_snr, last_counter, readings,"
                " duplicates, rejects FROM devices ORDER BY id"
            ),
            # Who transmits at an address no device is configured for: a neighbour's sensor, a typo in
            # the config, or someone probing (among the rejects kept, see [store] rejects_kept).
            "unknown_addresses": q("SELECT source, address, count(*) AS frames, max(at) AS last_at FROM rejects"
                                   " WHERE reason = 'unknown_device' GROUP BY source, address"
                                   " ORDER BY frames DESC LIMIT 20"),
            "disk": {**disk_usage(conn, path), "last_full": next(
                (json.loads(v) for (v,) in conn.execute("SELECT value FROM meta WHERE key = 'disk_full'")), None)},
            # Damaged files found at start, the newest first (see edgegw.dbfile).
            "damage": q("SELECT at, part, problem, kept_as, frames, commits, lost FROM damage ORDER BY at DESC LIMIT 10"),
            "dropped": {r["kind"]: r["count"] for r in drops if r["reason"] == "disk_cap"},
            "released": {r["kind"]: r["count"] for r in drops if r["reason"] == "uplink_removed"},
            "rejects": {
                "by_reason": {r["reason"]: r["n"] for r in q(
                    "SELECT reason, sum(count) AS n FROM reject_counts GROUP BY reason ORDER BY reason")},
                "by_source": q("SELECT source, reason, count, last_at FROM reject_counts ORDER BY source, reason"),
                "recent": q(
                    "SELECT at, source, reason, address, device_id, detail, hex(raw) AS raw_hex FROM rejects"
                    " ORDER BY id DESC LIMIT 10"
                ),
            },
        }
    finally:
        conn.close()


def heard(conn: Queries) -> dict[str, Any]:
    """What the radio heard, per device and per unknown address, as ``edgegw monitor`` shows it: a
    few hundred rows at most (the registry, and the rejects kept), read in one short snapshot."""
    q = lambda sql: [dict(r) for r in conn.execute(sql)]  # noqa: E731
    conn.execute("BEGIN")
    try:
        return {
            "devices": q("SELECT id, source, address, last_seen, last_rssi, last_snr, readings, duplicates, rejects,"
                         " coalesce(lost, 0) AS lost FROM devices"),
            # The latest frame's figures per address: SQLite takes the bare columns from the max(id) row.
            "unknown": q("SELECT source, address, count(*) AS frames, max(id), at AS last_at, rssi, snr FROM rejects"
                         " WHERE reason = 'unknown_device' GROUP BY source, address ORDER BY last_at DESC LIMIT 50"),
        }
    finally:
        conn.execute("COMMIT")
