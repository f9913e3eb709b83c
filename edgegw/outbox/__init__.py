"""Maintainer tools over the outbox: what ``edgegw outbox`` shows and does, usable from Python too.

    >>> ob = Outbox(Path("/var/lib/edgegw/edgegw.db"))
    >>> ob.stats().pending                       # items some uplink has not acknowledged yet
    >>> ob.items(state="pending", limit=10)      # the next ten in the order the forwarders send them
    >>> ob.show("river-03:0:4711")               # one item: its JSON, and its state per uplink
    >>> ob.retry(all_parked=True, uplink="orion")  # parked items back in the queue, once the platform is fixed
    >>> purge = ob.purge_delivered(older_than=7 * 86400)
    >>> for n in purge: ...                      # runs it, one short transaction per chunk
    >>> for row in ob.export(state="pending"): ...  # every matching row with its batch item, streamed

Reads (stats, items, parked, show, export) use read-only connections (:func:`edgegw.store.open_reader`)
wrapped in sqlite-utils' ``Database``: WAL lets them read while the daemon writes, and they never
block it. sqlite-utils is loaded by these maintainer commands only; the daemon never imports this
package.

Writes (retry, purge) may run while the daemon runs. SQLite has one writer at a time, so each write
is a short ``BEGIN IMMEDIATE`` transaction on a connection with the daemon's own pragmas (WAL, the
configured ``synchronous``, ``busy_timeout``): it waits for the daemon's current group commit to
end, and the daemon waits at most one of ours. A purge deletes :data:`PURGE_CHUNK` rows per
transaction, never all at once. The daemon keeps no copy of the outbox in memory: its forwarders
query it at least once a second, so an item put back in the queue is sent within about a second.

Words used here, as in ``edgegw status``: an item is *pending* while at least one uplink has not
acknowledged it (it has a row in the ``queue`` table, with that uplink's bit set), *delivered* once
no uplink waits for it any more: every uplink acknowledged it or parked it. *Parked* is per uplink:
that uplink refused the item for good; the ``parked`` table keeps the item's body and the platform's
error, even after the outbox row of the delivered item has been purged.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from pydantic import TypeAdapter, ValidationError
from sqlite_utils import Database

from edgegw.config import Duration
from edgegw.config.base import WRITTEN
from edgegw.dbfile import explain
from edgegw.errors import OutboxError
from edgegw.outbox.purge import PURGE_CHUNK, Purge
from edgegw.outbox.results import (
    Delivery,
    DiskUsage,
    ItemDetail,
    ItemRow,
    KindCounts,
    ParkedRow,
    Requeued,
    RetryResult,
    Stats,
    UplinkCounts,
)
from edgegw.outbox.retry import retry_all, retry_ids
from edgegw.outbox.rows import _device, _filters, _find, _names, _pending_bit, _uplink_names
from edgegw.store import oldest_pending_at, pending_count
from edgegw.store.connection import connect, open_reader
from edgegw.store.outbox import PARKED_DONE

__all__ = ["Delivery", "DiskUsage", "ItemDetail", "ItemRow", "KindCounts", "Outbox", "ParkedRow", "Purge",
           "Requeued", "RetryResult", "Stats", "UplinkCounts", "parse_duration"]

KINDS = ("reading", "alarm", "health")
# The columns of an export: the row's facts, then its batch item as the uplinks receive it.
EXPORT_COLUMNS = ("seq", "item_id", "kind", "priority", "device_id", "observed_at", "accepted_at", "delivered_at",
                  "pending", "item")

State = Literal["pending", "delivered"]

P = ParamSpec("P")
R = TypeVar("R")


def _sqlite_errors(method: Callable[Concatenate[Outbox, P], R]) -> Callable[Concatenate[Outbox, P], R]:
    """Turn SQLite's errors (locked for longer than busy_timeout, not a database, ...) into OutboxError."""

    @functools.wraps(method)
    def wrapper(self: Outbox, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise OutboxError(f"the database stayed locked ({exc}); the daemon may be busy: try again") from None
            raise OutboxError(explain(self.path, exc)) from None
        except sqlite3.DatabaseError as exc:
            raise OutboxError(explain(self.path, exc)) from None

    return wrapper


_DURATION: TypeAdapter[float] = TypeAdapter(Duration)


def parse_duration(text: str) -> float:
    """Seconds from a duration written as in the config: ``"90s"``, ``"10m"``, ``"12h"``, ``"7d"``."""
    try:
        return _DURATION.validate_python(text, context=WRITTEN)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


# -- the tool -------------------------------------------------------------------------------------


class Outbox:
    """The outbox of one gateway database, for maintainers. Every method opens its own connection.

    ``synchronous`` should be the config's ``[store] synchronous``, so writes here are as durable as
    the daemon's. Raises :class:`~edgegw.errors.OutboxError` for anything a maintainer may run into
    (no database, unknown id or uplink, nothing parked, the database locked for too long).
    """

    def __init__(self, path: Path, synchronous: str = "FULL"):
        self.path = Path(path)
        self.synchronous = synchronous

    # -- connections ------------------------------------------------------------------------------

    def _exists(self) -> None:
        if not self.path.exists():
            raise OutboxError(f"no database at {self.path}: has the daemon run yet?")

    def _reader(self) -> Database:
        self._exists()
        return Database(open_reader(self.path), execute_plugins=False)

    def _writer(self) -> sqlite3.Connection:
        """A connection with the daemon's own pragmas (WAL, synchronous, busy_timeout); autocommit mode,
        so every transaction is an explicit, short ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
        self._exists()  # sqlite3.connect would create an empty database
        conn = connect(self.path, self.synchronous)
        conn.row_factory = sqlite3.Row
        return conn

    def disk_usage(self) -> DiskUsage:
        """Sizes of the database file and its WAL, and the free space inside the database."""
        db = self._reader()
        try:
            free = db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        finally:
            db.close()
        wal = self.path.with_name(self.path.name + "-wal")
        return DiskUsage(self.path.stat().st_size, wal.stat().st_size if wal.exists() else 0, free)

    # -- reading ----------------------------------------------------------------------------------

    @_sqlite_errors
    def stats(self, now: float | None = None) -> Stats:
        """Counts of pending, delivered and parked items, per uplink and per kind, and sizes on disk."""
        now = time.time() if now is None else now
        conn = self._reader()
        try:
            by_kind = {k: KindCounts(0, 0) for k in KINDS}
            oldest = None
            for r in conn.execute(
                "SELECT o.kind, count(q.seq) AS pending, count(*) - count(q.seq) - count(p.seq) AS delivered,"
                " min(o.accepted_at) FILTER (WHERE q.seq IS NOT NULL) AS oldest"
                f" FROM outbox o LEFT JOIN queue q ON q.seq = o.seq LEFT JOIN ({PARKED_DONE}) p ON p.seq = o.seq"
                " GROUP BY o.kind"
            ):
                by_kind[r["kind"]] = KindCounts(r["pending"], r["delivered"])
                if r["oldest"] is not None and (oldest is None or r["oldest"] < oldest):
                    oldest = r["oldest"]
            parked = dict(conn.execute("SELECT uplink, count(*) FROM parked GROUP BY uplink").fetchall())
            by_uplink: dict[str, UplinkCounts] = {}
            for u in conn.execute("SELECT name, bit, state FROM uplinks ORDER BY name"):
                by_uplink[u["name"]] = UplinkCounts(u["state"], pending_count(conn, u["bit"]),
                                                    oldest_pending_at(conn, u["bit"]), parked.pop(u["name"], 0))
            for name, n in sorted(parked.items()):  # parked for uplinks no longer configured
                by_uplink[name] = UplinkCounts(None, 0, None, n, configured=False)
            return Stats(
                now=now,
                pending=sum(k.pending for k in by_kind.values()),
                delivered=sum(k.delivered for k in by_kind.values()),
                parked=sum(u.parked for u in by_uplink.values()),
                oldest_pending_at=oldest,
                oldest_pending_s=None if oldest is None else round(max(0.0, now - oldest), 1),
                by_uplink=by_uplink,
                by_kind=by_kind,
                disk=self.disk_usage(),
            )
        finally:
            conn.close()

    @_sqlite_errors
    def items(self, state: State | None = None, kind: str | None = None, device: str | None = None,
              uplink: str | None = None, limit: int | None = 50) -> list[ItemRow]:
        """Outbox rows, filtered.

        ``state="pending"`` lists them in the order the forwarders send them (priority, then
        acceptance); with ``uplink``, only those that uplink still has to send. ``"delivered"`` lists
        the most recently delivered first; no state, the most recently accepted first.
        ``limit=None`` lists all.
        """
        conn = self._reader()
        try:
            names = _uplink_names(conn)
            where, args = _filters(kind, device, "o.kind", "o.device_id")
            if uplink is not None:
                where.append("o.pending & ?")
                args.append(_pending_bit(conn, uplink, state))
            if state == "pending":
                # As the forwarders go: the urgent lane by its index, then plain readings in seq
                # order. One ORDER BY over both would sort the whole queue (0.5 s for a million).
                queued = "queue q CROSS JOIN outbox_items o ON o.seq = q.seq"
                lanes = [(queued, "q.priority > 0", "q.priority DESC, q.seq"), (queued, "q.priority = 0", "q.seq")]
            elif state == "delivered":
                # By the runs of deliveries, newest first: a delivery time is not a column to sort on.
                lanes = [("deliveries d CROSS JOIN outbox_items o ON o.seq BETWEEN d.first AND d.last", "o.pending = 0",
                          "d.rowid DESC, o.seq DESC")]
            else:
                lanes = [("outbox_items o", "1", "o.seq DESC")]
            rows: list[dict[str, Any]] = []
            for rows_from, lane, order in lanes:
                left = -1 if limit is None else limit - len(rows)
                if left:
                    rows += conn.query(
                        "SELECT o.seq, o.item_id, o.kind, o.priority, o.device_id, o.observed_at, o.accepted_at,"
                        " o.delivered_at, o.pending, (SELECT group_concat(uplink, ',') FROM"
                        " (SELECT uplink FROM parked p WHERE p.item_id = o.item_id ORDER BY uplink)) AS parked"
                        f" FROM {rows_from} WHERE {' AND '.join([lane, *where])} ORDER BY {order} LIMIT ?",
                        [*args, left])
            return [
                ItemRow(r["seq"], r["item_id"], r["kind"], r["priority"], r["device_id"], r["observed_at"],
                        r["accepted_at"], r["delivered_at"], _names(r["pending"], names),
                        r["parked"].split(",") if r["parked"] else [])
                for r in rows
            ]
        finally:
            conn.close()

    @_sqlite_errors
    def parked(self, kind: str | None = None, device: str | None = None, uplink: str | None = None,
               limit: int | None = 50) -> list[ParkedRow]:
        """Parked items, the most recently parked first, with the outbox row's details where it still exists."""
        conn = self._reader()
        try:
            where, args = _filters(kind, device, "p.kind", "coalesce(o.device_id, json_extract(p.body, '$.device'))")
            if uplink is not None:
                where.append("p.uplink = ?")
                args.append(uplink)
            rows = conn.query(
                "SELECT p.item_id, p.uplink, p.kind, p.error, p.parked_at, o.seq, o.observed_at, o.accepted_at,"
                " coalesce(o.device_id, json_extract(p.body, '$.device')) AS device_id"
                " FROM parked p LEFT JOIN outbox o ON o.seq = p.seq AND o.item_id = p.item_id"
                f" WHERE {' AND '.join(where) or '1'} ORDER BY p.parked_at DESC, p.item_id LIMIT ?",
                [*args, -1 if limit is None else limit],
            )
            return [ParkedRow(r["item_id"], r["uplink"], r["kind"], r["error"], r["parked_at"], r["seq"],
                              r["device_id"], r["observed_at"], r["accepted_at"]) for r in rows]
        finally:
            conn.close()

    @_sqlite_errors
    def show(self, ident: str) -> ItemDetail:
        """One item by item id or seq: its JSON body and its delivery state per uplink."""
        conn = self._reader()
        try:
            row = _find(conn, ident)
            item_id = row["item_id"] if row is not None else ident
            parked = {p["uplink"]: p for p in conn.execute(
                "SELECT uplink, kind, error, parked_at, body FROM parked WHERE item_id = ? ORDER BY uplink",
                (item_id,))}
            if row is None and not parked:
                raise OutboxError(f"no item {ident!r} in the outbox (give an item id or a seq)")
            bits = dict(conn.execute("SELECT name, bit FROM uplinks ORDER BY name").fetchall())
            uplinks: dict[str, Delivery] = {}
            for name in sorted(set(bits) | set(parked)):
                if name in parked:
                    uplinks[name] = Delivery("parked", parked[name]["error"], parked[name]["parked_at"])
                elif row is not None and row["pending"] & bits[name]:
                    uplinks[name] = Delivery("pending")
                else:
                    uplinks[name] = Delivery("done")
            if row is None:
                first = next(iter(parked.values()))
                body = json.loads(first["body"])
                return ItemDetail(item_id, first["kind"], False, None, None, _device(body), None, None, None,
                                  uplinks, body)
            return ItemDetail(item_id, row["kind"], True, row["seq"], row["priority"], row["device_id"],
                              row["observed_at"], row["accepted_at"], row["delivered_at"], uplinks,
                              json.loads(row["body"]))
        finally:
            conn.close()

    def export(self, state: State | None = None, kind: str | None = None, device: str | None = None,
               uplink: str | None = None) -> Iterator[dict[str, Any]]:
        """Every outbox row that matches, in seq order, as a dict of :data:`EXPORT_COLUMNS` (``item``:
        the batch item's JSON text, ``pending``: the uplinks that still wait for it, comma-separated).
        Streamed from one read snapshot: a million rows never sit in memory."""
        try:
            db = self._reader()
        except sqlite3.Error as exc:
            raise OutboxError(explain(self.path, exc)) from None
        try:
            names = _uplink_names(db)
            where, args = _filters(kind, device, "kind", "device_id")
            if uplink is not None:
                where.append("pending & ?")
                args.append(_pending_bit(db, uplink, state))
            if state is not None:
                where.append("pending != 0" if state == "pending" else "pending = 0")
            db.execute("BEGIN")  # one snapshot, however long the caller takes to write the rows out
            for row in db.query(f"SELECT {', '.join(EXPORT_COLUMNS)} FROM outbox_items"
                                f" WHERE {' AND '.join(where) or '1'} ORDER BY seq", args):
                yield {**row, "pending": ",".join(_names(row["pending"], names))}
        except sqlite3.Error as exc:
            raise OutboxError(explain(self.path, exc)) from None
        finally:
            db.close()

    @_sqlite_errors
    def waiting_only_for(self, uplinks: Sequence[str]) -> dict[str, int]:
        """Of the uplinks this database knows and ``uplinks`` does not name: how many pending items
        wait for each alone. Those leave unsent when the daemon starts with such a config."""
        conn = self._reader()
        try:
            gone = [(name, bit) for name, bit in conn.execute("SELECT name, bit FROM uplinks ORDER BY name")
                    if name not in uplinks]
            return {name: conn.execute("SELECT count(*) FROM queue WHERE pending = ?", (bit,)).fetchone()[0]
                    for name, bit in gone}
        finally:
            conn.close()

    # -- writing ----------------------------------------------------------------------------------

    @_sqlite_errors
    def retry(self, ids: Sequence[str] = (), all_parked: bool = False, uplink: str | None = None,
              now: float | None = None) -> RetryResult:
        """Put parked items back in the queue: for ``uplink`` only, or for every uplink that parked them.

        ``ids`` (item ids or seqs) are re-queued in one transaction, all or none: an unknown id, or an
        item that is not parked (for ``uplink``), changes nothing and raises OutboxError. With
        ``all_parked``, every parked item (of ``uplink``) goes back, a few hundred per transaction.

        Re-queueing sets the uplink's bit in the item's ``queue`` row again (making one if it was
        delivered) and deletes the parked row. If the outbox row was purged meanwhile, it is rebuilt
        from the parked row (same item id and body, a new seq, accepted now). A re-queued health
        report is replaced by the next one, as any pending health report is.
        """
        if bool(ids) == all_parked:
            raise OutboxError("name the items to retry, or say --all-parked (not both)")
        now = time.time() if now is None else now
        result = RetryResult()
        conn = self._writer()
        try:
            bits = dict(conn.execute("SELECT name, bit FROM uplinks").fetchall())
            if uplink is not None and uplink not in bits:
                gone = conn.execute("SELECT 1 FROM parked WHERE uplink = ? LIMIT 1", (uplink,)).fetchone()
                if gone:
                    raise OutboxError(f"uplink {uplink!r} is no longer configured (its queue is gone):"
                                      " its parked items cannot be sent to it again")
                raise OutboxError(f"unknown uplink {uplink!r}; configured: {', '.join(sorted(bits)) or 'none'}")
            if all_parked:
                retry_all(conn, bits, uplink, now, result)
            else:
                retry_ids(conn, bits, ids, uplink, now, result)
            return result
        finally:
            conn.close()

    @_sqlite_errors
    def purge_delivered(self, older_than: float | None = None, chunk: int = PURGE_CHUNK,
                        now: float | None = None) -> Purge:
        """Plan a purge of delivered items (and of closed alarms in the alarm log) older than
        ``older_than`` seconds, or of all of them. Iterate the returned :class:`Purge` to run it."""
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        if older_than is None:  # all, even rows stamped "in the future" by a clock that was set back
            return Purge(self, math.inf, chunk)
        return Purge(self, (time.time() if now is None else now) - older_than, chunk)


