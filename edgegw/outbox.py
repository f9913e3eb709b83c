"""Maintainer tools over the outbox: what ``edgegw outbox`` shows and does, usable from Python too.

    >>> ob = Outbox(Path("/var/lib/edgegw/edgegw.db"))
    >>> ob.stats().pending                       # items some uplink has not acknowledged yet
    >>> ob.items(state="pending", limit=10)      # the next ten in the order the forwarders send them
    >>> ob.show("river-03:0:4711")               # one item: its JSON, and its state per uplink
    >>> ob.retry(all_parked=True, uplink="orion")  # parked items back in the queue, once the platform is fixed
    >>> purge = ob.purge_delivered(older_than=7 * 86400)
    >>> for n in purge: ...                      # runs it, one short transaction per chunk

Reads (stats, items, parked, show) use read-only connections (:func:`edgegw.store.open_reader`): WAL
lets them read while the daemon writes, and they never block it.

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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import TypeAdapter, ValidationError

from edgegw.config import Duration
from edgegw.errors import OutboxError
from edgegw.model import PRIORITY_ALARM, PRIORITY_HEALTH
from edgegw.store import oldest_pending_at, pending_count
from edgegw.store.alarms import count_purgeable
from edgegw.store.connection import connect, immediate, open_reader
from edgegw.store.housekeeping import HOUSEKEEPING_CHUNK, purge_step

PURGE_CHUNK = HOUSEKEEPING_CHUNK  # rows per purge transaction, as the daemon's own: it waits for one at most
RETRY_CHUNK = 500  # parked items re-queued per transaction by ``retry(all_parked=True)``
KINDS = ("reading", "alarm", "health")
PRIORITIES = {"alarm": PRIORITY_ALARM, "health": PRIORITY_HEALTH}  # readings (and anything else): 0

State = Literal["pending", "delivered"]

P = ParamSpec("P")
R = TypeVar("R")


def _sqlite_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turn SQLite's errors (locked for longer than busy_timeout, not a database, ...) into OutboxError."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise OutboxError(f"the database stayed locked ({exc}); the daemon may be busy: try again") from None
            raise OutboxError(f"database error: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"database error: {exc}") from None

    return wrapper


_DURATION: TypeAdapter[float] = TypeAdapter(Duration)


def parse_duration(text: str) -> float:
    """Seconds from a duration written as in the config: ``30``, ``"90s"``, ``"10m"``, ``"12h"``, ``"7d"``."""
    try:
        return _DURATION.validate_python(text)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


# -- results --------------------------------------------------------------------------------------


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

    def _reader(self) -> sqlite3.Connection:
        self._exists()
        return open_reader(self.path)

    def _writer(self) -> sqlite3.Connection:
        """A connection with the daemon's own pragmas (WAL, synchronous, busy_timeout); autocommit mode,
        so every transaction is an explicit, short ``BEGIN IMMEDIATE`` ... ``COMMIT``."""
        self._exists()  # sqlite3.connect would create an empty database
        conn = connect(self.path, self.synchronous)
        conn.row_factory = sqlite3.Row
        return conn

    def disk_usage(self, conn: sqlite3.Connection | None = None) -> DiskUsage:
        """Sizes of the database file and its WAL, and the free space inside the database."""
        own = conn is None
        conn = conn or self._reader()
        try:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
        finally:
            if own:
                conn.close()
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
                "SELECT o.kind, count(q.seq) AS pending, count(*) - count(q.seq) AS delivered,"
                " min(o.accepted_at) FILTER (WHERE q.seq IS NOT NULL) AS oldest"
                " FROM outbox o LEFT JOIN queue q ON q.seq = o.seq GROUP BY o.kind"
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
                disk=self.disk_usage(conn),
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
                bit = _bit(conn, uplink)
                where.append("o.pending & ?")
                args.append(bit)
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
            rows: list[sqlite3.Row] = []
            for rows_from, lane, order in lanes:
                left = -1 if limit is None else limit - len(rows)
                if left:
                    rows += conn.execute(
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
            rows = conn.execute(
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
                self._retry_all(conn, bits, uplink, now, result)
            else:
                self._retry_ids(conn, bits, ids, uplink, now, result)
            return result
        finally:
            conn.close()

    def _retry_ids(self, conn: sqlite3.Connection, bits: dict[str, int], ids: Sequence[str], uplink: str | None,
                   now: float, result: RetryResult) -> None:
        try:
            with immediate(conn):
                for ident in dict.fromkeys(ids):
                    row = _find(conn, ident)
                    item_id = row["item_id"] if row is not None else ident
                    parked = [p for p in conn.execute(
                        "SELECT item_id, uplink, kind, body, seq FROM parked WHERE item_id = ? ORDER BY uplink",
                        (item_id,))]
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

    def _retry_all(self, conn: sqlite3.Connection, bits: dict[str, int], uplink: str | None, now: float,
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


class Purge:
    """A purge, planned: ``items`` and ``alarms`` rows are due (``total`` in all). Iterating runs it,
    one ``BEGIN IMMEDIATE`` transaction per chunk, and yields the rows each chunk deleted; afterwards
    ``deleted_items``, ``deleted_alarms``, ``before`` and ``after`` (:class:`DiskUsage`) are set.

    Pending rows are never touched: every DELETE checks the queue in its own transaction. With
    ``older_than``, rows delivered after the plan was made are newer than ``cutoff`` and stay; without
    it (``cutoff`` is infinite), rows delivered meanwhile go too and ``deleted_items`` may exceed ``items``.
    """

    def __init__(self, outbox: Outbox, cutoff: float, chunk: int):
        self.outbox, self.cutoff, self.chunk = outbox, cutoff, chunk
        conn = outbox._reader()
        try:
            self.items = conn.execute(
                "SELECT count(*) FROM deliveries d CROSS JOIN outbox o ON o.seq BETWEEN d.first AND d.last"
                " WHERE d.at < ? AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.seq = o.seq)", (cutoff,)).fetchone()[0]
            self.alarms = count_purgeable(conn, cutoff)
            self.before = outbox.disk_usage(conn)
        finally:
            conn.close()
        self.after: DiskUsage | None = None
        self.deleted_items = 0
        self.deleted_alarms = 0

    @property
    def total(self) -> int:
        return self.items + self.alarms

    def __iter__(self) -> Iterator[int]:
        return self._run()

    def _run(self) -> Iterator[int]:
        try:
            conn = self.outbox._writer()
        except sqlite3.Error as exc:
            raise OutboxError(f"database error: {exc}") from None
        try:
            more = True
            while more:
                try:
                    with immediate(conn):
                        items, alarms, more = purge_step(conn, self.cutoff, self.chunk)
                except sqlite3.OperationalError as exc:
                    raise OutboxError(f"purge stopped after {self.deleted_items + self.deleted_alarms} rows: {exc}"
                                      " (what was deleted stays deleted; run it again)") from None
                self.deleted_items += items
                self.deleted_alarms += alarms
                if items or alarms:
                    yield items + alarms  # between transactions: the daemon writes while the caller reports progress
            self.after = self.outbox.disk_usage(conn)
        finally:
            conn.close()


# -- helpers --------------------------------------------------------------------------------------


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


def _uplink_names(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [(r[0], r[1]) for r in conn.execute("SELECT bit, name FROM uplinks ORDER BY bit")]


def _names(pending: int, names: list[tuple[int, str]]) -> list[str]:
    """The uplink names of the bits set in ``pending``; a bit no uplink owns shows as ``bit<N>``."""
    out = [name for bit, name in names if pending & bit]
    known = sum(bit for bit, _ in names)
    rest = pending & ~known
    out += [f"bit{b}" for b in range(63) if rest & (1 << b)]
    return out


def _bit(conn: sqlite3.Connection, uplink: str) -> int:
    row = conn.execute("SELECT bit FROM uplinks WHERE name = ?", (uplink,)).fetchone()
    if row is None:
        known = [r[0] for r in conn.execute("SELECT name FROM uplinks ORDER BY name")]
        raise OutboxError(f"unknown uplink {uplink!r}; configured: {', '.join(known) or 'none'}")
    return row[0]


def _find(conn: sqlite3.Connection, ident: str) -> sqlite3.Row | None:
    """The outbox row of an item id, or of a seq (a number that is not an item id).

    Only the ids of items without a device counter are indexed: a reading's id is looked up by a
    scan of the outbox (0.3 s for a million rows here), which is fine for a maintainer's command.
    """
    cols = "seq, item_id, kind, priority, device_id, observed_at, accepted_at, delivered_at, pending, item AS body"
    row = (conn.execute(f"SELECT {cols} FROM outbox_items WHERE counter IS NULL AND item_id = ?", (ident,)).fetchone()
           or conn.execute(f"SELECT {cols} FROM outbox_items WHERE counter IS NOT NULL AND item_id = ?",
                           (ident,)).fetchone())
    if row is None and ident.isdigit():
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
