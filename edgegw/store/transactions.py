"""The writer's transactions: begin, commit, roll back, and how far the database may grow meanwhile.

:class:`Tables` is the base of every part of the :class:`~edgegw.store.Store`: it holds the one
writing connection, and the parts keep what they cache in memory (registry rows, counts, a group's
readings) until :meth:`Tables.commit` writes it back (:meth:`Tables._write_back`), or forget it
when the transaction rolls back (:meth:`Tables._reload`).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from edgegw.store.connection import CHECKPOINT_PAGES, file_size

MAX_PAGES = 0xFFFFFFFE  # SQLite's own limit on a database's pages
DELETE_SLACK = 256 * 1024  # see Tables._limit_growth
# Above this much free space the database's growth is not limited: no transaction grows it by half as much.
UNLIMITED_ABOVE = 64 * 1024 * 1024
LIMIT_STEP = 16  # pages


class Tables:
    """One writing connection, and its transactions (used from the writer thread only)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, synchronous: str):
        self.conn, self.path = conn, path
        self.synchronous = self._level = synchronous.upper()
        self.page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self._max_pages = 0  # see _limit_growth
        self._grow_freely = False  # see Housekeeping.make_room
        self._deleting = False
        # Run after a rollback, once the store's own caches are reloaded: those who keep state of
        # their own in the database (the rules engine) reload theirs.
        self.on_rollback: list[Callable[[], None]] = []
        self.on_commit: list[Callable[[], None]] = []  # run after each commit, in the writer's thread

    def _write_back(self) -> None:
        """Write what the parts cache in memory, inside the transaction (before its COMMIT)."""

    def _committed(self) -> None:
        """The transaction committed: what the parts wrote back is on disk now."""

    def _reload(self) -> None:
        """Forget what the parts cached for a transaction that rolled back."""

    def begin(self, durable: bool = True, deleting: bool = False) -> None:
        """Start a transaction.

        ``durable=False`` is for one that accepts nothing new (acknowledgements, states): with
        ``synchronous`` FULL its commit skips the fsync, and the next durable commit's fsync covers
        it. A power cut in between may undo it, which costs no data: an ack undone that way means
        the items go once more, as at-least-once allows. At field rate every reading is followed by
        the commit of its ack, so this halves the fsyncs that wear the SD card.

        ``deleting``: a transaction that makes room (see :meth:`_limit_growth`).
        """
        level = "NORMAL" if not durable and self.synchronous == "FULL" else self.synchronous
        if level != self._level:  # SQLite takes it only between transactions
            self.conn.execute(f"PRAGMA synchronous={level}")
            self._level = level
        self._limit_growth(deleting)
        self.conn.execute("BEGIN IMMEDIATE")
        self._deleting = deleting

    def commit(self) -> None:
        """Write back what the parts cached and commit: everything since :meth:`begin` is now accepted."""
        self._write_back()
        self.conn.execute("COMMIT")
        if not self._deleting:  # the eased limit was for the commit that waits for room, not for the deletes
            self._grow_freely = False
        self._committed()
        for committed in self.on_commit:
            committed()

    def rollback(self) -> None:
        """Undo the open transaction (if any) and everything cached for it."""
        if self.conn.in_transaction:  # BEGIN itself may be what failed
            self.conn.execute("ROLLBACK")
        self._reload()
        for reload in self.on_rollback:
            reload()

    @contextmanager
    def transaction(self, durable: bool = True, deleting: bool = False) -> Iterator[None]:
        """``with store.transaction():`` begin, commit at the end of the block, roll back (and have
        everything cached for it reloaded) if it raises. The exception goes on to the caller."""
        self.begin(durable, deleting)
        try:
            yield
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def _limit_growth(self, deleting: bool = False) -> None:
        """Let the database grow (its pages, in the WAL or not yet) into the filesystem's free space
        only as far as the checkpoint should find room to write them: half of what is left once the
        WAL has grown to where SQLite checkpoints it (a reader may hold the WAL back longer), and
        where that leaves nothing, a quarter of the free space: a WAL cut short by the cap's
        checkpoint grows only as far as its transactions, and refusing every commit would keep even
        the alarms out.

        A commit whose pages the checkpoint cannot write, for want of room to grow the file, wedges
        the database: the WAL cannot start over, so no later write, not even a DELETE to make room,
        finds space (see :meth:`Housekeeping.make_room`). Past this limit SQLite fails the statement
        instead (SQLITE_FULL, before anything is committed), and the writer makes room inside the
        file and tries again. A few microseconds a transaction; the filesystem may have filled since.

        A transaction that makes room may grow the database by :data:`DELETE_SLACK` all the same,
        where the filesystem has twice that: deleting rows rebalances the tree, which may take a
        new page or two, and a delete that fails for want of a page makes no room at all.
        """
        fs = os.statvfs(self.path.parent)
        free = fs.f_bavail * fs.f_frsize
        if free > UNLIMITED_ABOVE:  # one statvfs: the rest took 20 us a transaction here
            pages = MAX_PAGES
        else:
            wal_full = CHECKPOINT_PAGES * (self.page_size + 24) + 32  # frame headers, the WAL's header
            wal_growth = max(0, wal_full - file_size(self.path.with_name(self.path.name + "-wal")))
            room = free // 2 if self._grow_freely else (free - min(wal_growth, free // 2)) // 2
            # In steps of LIMIT_STEP pages, so that the PRAGMA runs when the limit moves, not at every byte.
            pages = (file_size(self.path) + room) // self.page_size // LIMIT_STEP * LIMIT_STEP
            if deleting and free >= 2 * DELETE_SLACK:
                pages = max(pages, self.conn.execute("PRAGMA page_count").fetchone()[0]
                            + DELETE_SLACK // self.page_size)
            pages = min(pages, MAX_PAGES)
        if pages != self._max_pages:
            self.conn.execute(f"PRAGMA max_page_count={pages}")
            self._max_pages = pages
