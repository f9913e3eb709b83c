"""Parked items back in the queue (``edgegw outbox retry``): by id, all at once, or per uplink."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from edgegw.errors import OutboxError
from edgegw.model import PRIORITY_ALARM, PRIORITY_HEALTH
from edgegw.outbox.results import Requeued, RetryResult
from edgegw.outbox.rows import _device, _find, _observed
from edgegw.store.connection import immediate

RETRY_CHUNK = 500  # parked items re-queued per transaction by ``retry(all_parked=True)``
PRIORITIES = {"alarm": PRIORITY_ALARM, "health": PRIORITY_HEALTH}  # readings (and anything else): 0


def retry_ids(conn: sqlite3.Connection, bits: dict[str, int], ids: Sequence[str], uplink: str | None,
               now: float, result: RetryResult) -> None:
    try:
        with immediate(conn):
            for ident in dict.fromkeys(ids):
                row = _find(conn, ident)
                item_id = row["item_id"] if row is not None else ident
                parked = list(conn.execute(
                    "SELECT item_id, uplink, kind, body, seq FROM parked WHERE item_id = ? ORDER BY uplink",
                    (item_id,)))
                if row is None and not parked:
                    raise OutboxError(f"no item {ident!r} in the outbox (give an item id or a seq); nothing retried")
                mine = [p for p in parked if uplink is None or p["uplink"] == uplink]
                if not mine:
                    where = f" for {uplink}" if uplink else ""
                    others = f" (parked for {', '.join(p['uplink'] for p in parked)})" if parked else ""
                    raise OutboxError(f"{ident} is not parked{where}{others}; nothing retried")
                usable = [p for p in mine if p["uplink"] in bits]
                if not usable:
                    raise OutboxError(f"{ident} is parked only for uplinks no longer configured "
                                      f"({', '.join(p['uplink'] for p in mine)}); nothing retried")
                for p in mine:
                    if p["uplink"] in bits:
                        result.requeued.append(_requeue(conn, p, bits[p["uplink"]], now))
                    else:
                        result.not_configured[p["uplink"]] = result.not_configured.get(p["uplink"], 0) + 1
    except BaseException:
        result.requeued.clear()
        result.not_configured.clear()
        raise

def retry_all(conn: sqlite3.Connection, bits: dict[str, int], uplink: str | None, now: float,
               result: RetryResult) -> None:
    only, args = ("AND uplink = ?", [uplink]) if uplink is not None else ("", [])
    for name, n in conn.execute(
        f"SELECT uplink, count(*) FROM parked WHERE uplink NOT IN (SELECT name FROM uplinks) {only}"
        " GROUP BY uplink", args):
        result.not_configured[name] = n
    while True:
        with immediate(conn):
            batch = conn.execute(
                "SELECT item_id, uplink, kind, body, seq FROM parked WHERE uplink IN (SELECT name FROM uplinks)"
                f" {only} ORDER BY parked_at, item_id LIMIT ?", [*args, RETRY_CHUNK]).fetchall()
            for p in batch:
                result.requeued.append(_requeue(conn, p, bits[p["uplink"]], now))
        if len(batch) < RETRY_CHUNK:
            break
    if not result.requeued:
        where = f" for {uplink}" if uplink else ""
        gone = (f" (only for uplinks no longer configured: {', '.join(sorted(result.not_configured))})"
                if result.not_configured else "")
        raise OutboxError(f"nothing is parked{where}{gone}")


def _requeue(conn: sqlite3.Connection, parked: sqlite3.Row, bit: int, now: float) -> Requeued:
    """Inside a transaction: put one parked item back in one uplink's queue, and forget the parking."""
    item_id = parked["item_id"]
    row = conn.execute("SELECT seq, priority FROM outbox WHERE seq = ? AND item_id = ?",
                       (parked["seq"], item_id)).fetchone()
    reinserted = row is None
    if reinserted:  # the delivered row was purged: the parked row still has everything that is sent
        body = json.loads(parked["body"])
        row = conn.execute(
            "INSERT INTO outbox(item_id, kind, priority, device_id, observed_at, mono, boot_id, raw, body,"
            " accepted_at) VALUES (?, ?, ?, ?, ?, 0.0, '', NULL, ?, ?) RETURNING seq, priority",
            (item_id, parked["kind"], PRIORITIES.get(parked["kind"], 0), _device(body), _observed(body, now),
             parked["body"], now)).fetchall()[0]
        conn.execute("UPDATE parked SET seq = ? WHERE item_id = ?", (row[0], item_id))  # for its other uplinks
    conn.execute("INSERT INTO queue VALUES (?, ?, ?)"
                 " ON CONFLICT(seq) DO UPDATE SET pending = pending | excluded.pending", (row[0], row[1], bit))
    conn.execute("DELETE FROM parked WHERE item_id = ? AND uplink = ?", (item_id, parked["uplink"]))
    return Requeued(item_id, parked["uplink"], row[0], reinserted)
