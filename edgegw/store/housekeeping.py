"""Housekeeping: what leaves the database besides acknowledgements, and the room it needs.

* retention: delivered items (and closed alarms of the log) older than ``[store] keep_delivered``
  go, a chunk per transaction: :func:`purge_step`, the one implementation the daemon and
  ``edgegw outbox purge`` both run;
* the disk cap: over ``[store] max_bytes`` (or under ``min_free``), delivered items go first, then
  the oldest unsent readings of the device with most of them, never alarms (:meth:`Housekeeping.enforce_cap`);
* a full disk: a reserve file given back, one chunk dropped by the cap's policy, and the growth
  limit eased, so that a commit that failed for want of space can be tried again (:meth:`Housekeeping.make_room`).
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
from pathlib import Path

from edgegw.store.alarms import purge_closed
from edgegw.store.connection import file_size, full
from edgegw.store.outbox import OutboxTables
from edgegw.store.states import count_drops

CAP_LOW_WATER = 0.9  # once over the cap, free space down to this fraction of it: not a drop per commit
# Rows deleted per transaction by housekeeping (retention, disk cap): about 10 ms here, well under a
# second on a Pi Zero. Deleting a million in one statement held the writer (and with it every frame
# and alarm) for 3.5 s here, and past systemd's 30 s watchdog on a Pi.
HOUSEKEEPING_CHUNK = 2000
ROOM_CHUNK = 500  # rows dropped per try when a commit failed for want of space: enough for a group
RESERVE_BYTES = 4 * 1024 * 1024  # see Housekeeping.reserve: half the WAL limit, a few thousand readings' pages
RESERVE_NAME = "edgegw.reserve"
# The disk cap picks whose readings go among this many times a chunk of the oldest waiting ones.
FAIRNESS_WINDOW = 10


def delete_delivered(conn: sqlite3.Connection, cutoff: float, limit: int) -> tuple[int, bool]:
    """Inside the caller's transaction: delete delivered items that were delivered before ``cutoff``,
    those delivered first first, looking at ``limit`` seqs at most. Returns how many rows went, and
    whether more may be due.

    Rows back in the queue (``edgegw outbox retry``) stay: a run of ``deliveries`` is only where to
    look, the queue says what is still to send.
    """
    budget, deleted = limit, 0
    for rowid, first, last in conn.execute("SELECT rowid, first, last FROM deliveries WHERE at < ? ORDER BY rowid"
                                           " LIMIT ?", (cutoff, limit)).fetchall():
        end = min(last, first + budget - 1)
        deleted += conn.execute("DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND NOT EXISTS"
                                " (SELECT 1 FROM queue q WHERE q.seq = outbox.seq)", (first, end)).rowcount
        budget -= end - first + 1
        if end < last:
            conn.execute("UPDATE deliveries SET first = ? WHERE rowid = ?", (end + 1, rowid))
            return deleted, True
        conn.execute("DELETE FROM deliveries WHERE rowid = ?", (rowid,))
        if budget <= 0:
            return deleted, True
    return deleted, False

def purge_step(conn: sqlite3.Connection, cutoff: float, limit: int = HOUSEKEEPING_CHUNK) -> tuple[int, int, bool]:
    """Inside the caller's transaction: one chunk of retention. Delete delivered items delivered
    before ``cutoff`` (about ``limit`` at most, see :func:`delete_delivered`), then, once none is
    due, up to ``limit`` purgeable closed alarms raised before it (see edgegw.store.alarms).
    Returns how many items and alarms went, and whether more may be due."""
    items, more = delete_delivered(conn, cutoff, limit)
    if more:
        return items, 0, True
    alarms = purge_closed(conn, cutoff, limit)
    return items, alarms, alarms == limit



class Housekeeping(OutboxTables):
    """Retention, the disk cap and the reserve, on the writer's connection."""

    capping: bool  # over the disk cap, and not yet down to its low-water mark

    def purge_delivered(self, older_than: float, limit: int = HOUSEKEEPING_CHUNK) -> tuple[int, int, bool]:
        """One chunk of retention in the open transaction (see :func:`purge_step`)."""
        self._flush()
        return purge_step(self.conn, older_than, limit)

    def used_bytes(self) -> tuple[int, int]:
        """Bytes in the database's live pages (free pages are reused, not counted), and in its WAL file."""
        d = disk_usage(self.conn, self.path)
        return d["db_bytes"], d["wal_bytes"]

    def _over(self, max_bytes: int, min_free: int, low: float) -> bool:
        """Over the cap: the data takes more than ``low`` of ``max_bytes``, or the room left to grow
        (the filesystem's free space, the reserve, which is ours to give back, and the database's
        own free pages) is under ``min_free / low``."""
        d = disk_usage(self.conn, self.path)
        return (d["db_bytes"] + d["wal_bytes"] > max_bytes * low
                or d["free_bytes"] + d["reserve_bytes"] + d["reusable_bytes"] < min_free / low)

    def enforce_cap(self, max_bytes: int, now: float, limit: int = HOUSEKEEPING_CHUNK,
                    min_free: int = 0) -> dict[str, int]:
        """One step of keeping the database and its WAL under ``max_bytes``, and room for
        ``min_free`` bytes more on its filesystem (call outside a transaction).

        Over the cap, delivered items go first, then the oldest plain readings, never alarms, until
        the data fits in :data:`CAP_LOW_WATER` of the cap. A step deletes at most ``limit`` rows in
        one short transaction; while :attr:`capping` is True, the episode goes on: call again soon.
        Returns what the step deleted, by kind (``delivered`` for delivered items of any kind); drops
        of unsent items are counted in ``drops``.
        """
        if not self.capping and not self._over(max_bytes, min_free, 1.0):
            self.keep_reserve()
            return {}
        self.capping = True
        # Truncating the WAL gives its space back to the filesystem: where the filesystem itself is
        # short, another process could take it, so the WAL is only rewound and keeps its blocks.
        short = shutil.disk_usage(self.path.parent).free < min_free
        try:  # only while over; on a full filesystem copying WAL pages into the file may fail, deleting need not
            self.conn.execute(f"PRAGMA wal_checkpoint({'RESTART' if short else 'TRUNCATE'})")
        except sqlite3.OperationalError:
            pass
        if not self._over(max_bytes, min_free, CAP_LOW_WATER):
            self.capping = False
            return {}
        try:
            deleted = self.drop_oldest(now, limit)
        except sqlite3.OperationalError as exc:
            # The filesystem filled before the cap could act: a delete needs room in the WAL too.
            if not full(exc) or not self.reserve.exists():
                raise
            self.rollback()
            deleted = {"reserve": self.release_reserve(), **self.drop_oldest(now, limit)}
        if not deleted.keys() - {"reserve"}:
            self.capping = False  # only alarms left: they stay, whatever the cap
        return deleted

    def drop_oldest(self, now: float, limit: int = HOUSEKEEPING_CHUNK) -> dict[str, int]:
        """Delete one chunk as the cap does: delivered items first, then the oldest plain readings of
        the device with most among the oldest (and health reports), never alarms; each in a short
        transaction of its own. What went, by kind."""
        with self.transaction(deleting=True):
            gone, more = delete_delivered(self.conn, math.inf, limit)
        if gone or more:
            return {"delivered": gone}
        for kind in ("reading", "health"):
            with self.transaction(deleting=True):
                # Among the oldest waiting items, the device that sent most of them loses its own first:
                # one device's flood (or a sensor gone wrong) must not push out the others' readings.
                # Looking at a window, not the whole queue, keeps a chunk's cost bounded on a full card.
                seqs = [seq for (seq,) in self.conn.execute(
                    "WITH oldest AS (SELECT q.seq, o.device_id FROM queue q CROSS JOIN outbox o ON o.seq = q.seq"
                    " WHERE o.kind = ? ORDER BY q.seq LIMIT ?),"
                    " top AS (SELECT device_id FROM oldest GROUP BY device_id ORDER BY count(*) DESC LIMIT 1)"
                    " SELECT seq FROM oldest WHERE device_id IS (SELECT device_id FROM top) ORDER BY seq LIMIT ?",
                    (kind, FAIRNESS_WINDOW * limit, limit))]
                self._forget(seqs)
                if seqs:
                    count_drops(self.conn, "disk_cap", kind, len(seqs), now)
            if seqs:
                return {kind: len(seqs)}
        return {}

    def make_room(self, now: float) -> dict[str, int]:
        """After a commit failed for want of space (the transaction rolled back), one step to make
        room, in the database's own file where it can: what went, by kind (``{}`` when nothing
        could: only alarms are left, or not even a delete finds room).

        The reserve goes first (``{"reserve": bytes}``), before any delete: on a full filesystem
        the WAL holds pages the checkpoint cannot copy, since that would grow the database file, so
        the WAL cannot start over, and a DELETE, which appends to it too, fails like the commit.
        With the reserve given back, the checkpoint completes, and one chunk dropped by the cap's
        policy leaves free pages the next commits reuse without the file growing. Without a
        reserve, the drop is tried all the same: some other file may have shrunk meanwhile.

        With nothing left to drop, the limit on the database's growth (see :meth:`_limit_growth`)
        is eased for the next commit (``{"growth_limit": 1}``): to half the free space, whatever
        the WAL may need, so that a group of alarms goes in where the filesystem has room for it,
        at some of the risk the limit is there to avoid."""
        freed = {"reserve": self.release_reserve()} if self.reserve.exists() else {}
        self._checkpoint()
        try:
            dropped = self.drop_oldest(now, ROOM_CHUNK)
        except sqlite3.OperationalError as exc:
            if not full(exc):
                raise
            self.rollback()
            dropped = {}
        freed.update(dropped)
        if not freed and not self._grow_freely:
            self._grow_freely = True
            freed = {"growth_limit": 1}
        return freed

    @property
    def reserve(self) -> Path:
        """A file of :data:`RESERVE_BYTES` kept beside the database, given up when the disk fills, so
        that SQLite has room to checkpoint its WAL and to delete, and so to commit what waits."""
        return self.path.with_name(RESERVE_NAME)

    def release_reserve(self) -> int:
        """Give the reserve back to the filesystem, and let SQLite use it at once: the checkpoint
        grows the database file as it needs, and the WAL starts over at its next write. Its size."""
        size = self.reserve.stat().st_size
        self.reserve.unlink()
        self._checkpoint()
        return size

    def _checkpoint(self) -> None:
        """Copy the WAL into the database where room allows, so that the next write starts the WAL
        over in place instead of growing it. PASSIVE: a reader's snapshot it cannot pass is not
        waited for, the writer must go on."""
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError:  # a page it could not write, for want of room: the next try
            pass

    def keep_reserve(self) -> None:
        """Make the reserve where it is missing and the filesystem has room for it twice over.
        Whatever ``min_free`` says: the reserve counts as free room for the cap (see :meth:`_over`),
        and without it, a filesystem filled by another file leaves SQLite no room even to delete."""
        if self.reserve.exists() or shutil.disk_usage(self.path.parent).free < 2 * RESERVE_BYTES:
            return
        fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)  # real blocks, not a sparse file
        except OSError:
            os.close(fd)
            self.reserve.unlink(missing_ok=True)
            return
        os.close(fd)


def disk_usage(conn: sqlite3.Connection, path: Path) -> dict[str, int]:
    """The database's live bytes, its free pages (reused before the file grows), its WAL's, what
    the filesystem has free, and the reserve's (see Store.reserve)."""
    pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    return {"db_bytes": (pages - free) * size, "reusable_bytes": free * size,
            "wal_bytes": file_size(path.with_name(path.name + "-wal")), "free_bytes": shutil.disk_usage(path.parent).free,
            "reserve_bytes": file_size(path.with_name(RESERVE_NAME))}

def give_back_reserve_to_start(data_dir: Path) -> int:
    """On a filesystem with less room than the reserve, give the reserve back before the database
    opens (a WAL and its index must be made): the bytes given back, 0 if none. The writer makes it
    again once there is room twice over."""
    reserve = data_dir / RESERVE_NAME
    if not reserve.exists() or shutil.disk_usage(data_dir).free >= RESERVE_BYTES:
        return 0
    size = reserve.stat().st_size
    reserve.unlink()
    return size


def room(path: Path) -> int:
    """The room the database at ``path`` has to grow: its filesystem's free space and the reserve."""
    return shutil.disk_usage(path.parent).free + file_size(path.with_name(RESERVE_NAME))
