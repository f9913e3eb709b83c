"""Deleting delivered items and closed alarms before their time (``edgegw outbox purge``), in chunks,
by the same step the daemon's retention runs (edgegw.store.housekeeping.purge_step)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from edgegw.dbfile import explain
from edgegw.errors import OutboxError
from edgegw.outbox.results import DiskUsage
from edgegw.store.alarms import count_purgeable
from edgegw.store.connection import immediate
from edgegw.store.housekeeping import HOUSEKEEPING_CHUNK, purge_step

if TYPE_CHECKING:
    from edgegw.outbox import Outbox

PURGE_CHUNK = HOUSEKEEPING_CHUNK  # rows per purge transaction, as the daemon's own: it waits for one at most


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
            self.before = outbox.disk_usage()
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
            raise OutboxError(explain(self.outbox.path, exc)) from None
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
            self.after = self.outbox.disk_usage()
        finally:
            conn.close()
