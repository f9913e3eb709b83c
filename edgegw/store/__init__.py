"""The gateway database: the outbox, the device registry, the rules' memory, the alarm log.

One :class:`Store` object is the only writer. It is used from one thread (the daemon's writer) and
groups everything that arrived while the previous commit ran into the next transaction, so an SD
card sees one WAL append and one fsync per group, not per frame. Readers (the forwarders,
``edgegw status``, the health report) open their own connections (:func:`open_reader`); WAL lets
them read while the writer writes.

The package, one module per part, each readable alone:

``connection``    opening the database: pragmas, read-only connections, the transaction helper
``schema``        the tables, and bringing an older database up to date
``transactions``  the writer's begin / commit / rollback, and how far the database may grow
``outbox``        items in (readings, health reports), acknowledgements and parkings out
``alarms``        the alarm log
``devices``       the device registry
``rulestate``     the rules' memory
``states``        uplinks, sources, rejects, drops: what status shows of the running parts
``housekeeping``  retention, the disk cap, a full disk
``queue``         the send queue as a forwarder reads it: lanes, batch items
``views``         read-only: status, alarms, the health report's counts, the integrity check

A reading's batch item is rendered by SQLite from its row (see edgegw.items, the wire format).
"""

from __future__ import annotations

from pathlib import Path

from edgegw.store.alarms import AlarmLog
from edgegw.store.connection import DB_NAME, connect, db_path, open_reader
from edgegw.store.devices import LATE_WINDOW, DeviceRegistry, DeviceState
from edgegw.store.housekeeping import HOUSEKEEPING_CHUNK, Housekeeping, disk_usage, room
from edgegw.store.outbox import oldest_pending_at, pending_count, runs
from edgegw.store.rulestate import RuleStateTables
from edgegw.store.schema import SCHEMA_VERSION, create_schema
from edgegw.store.states import COUNTS_EVERY, StateTables
from edgegw.store.views import alarms, health_counts, heard, quick_check, status

__all__ = [
    "COUNTS_EVERY", "DB_NAME", "HOUSEKEEPING_CHUNK", "LATE_WINDOW", "SCHEMA_VERSION", "DeviceState", "Store",
    "alarms", "connect", "db_path", "disk_usage", "health_counts", "heard", "oldest_pending_at", "open_reader",
    "pending_count", "quick_check", "room", "runs", "status",
]


class Store(Housekeeping, AlarmLog, DeviceRegistry, StateTables, RuleStateTables):
    """The single writer of the gateway database: every part's tables on one connection.

    Write inside a transaction: ``with store.transaction(): ...`` (or :meth:`begin` and
    :meth:`commit`, :meth:`rollback` on failure). What the parts cache in memory is written back at
    the commit and reloaded after a rollback.
    """

    def __init__(self, path: Path, synchronous: str = "FULL", rejects_kept: int = 1000):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path, synchronous)
        try:
            create_schema(conn)
            super().__init__(conn, path, synchronous)
            self._load_devices()
        except BaseException:
            conn.close()  # see connect: a damaged file is moved aside next
            raise
        self._start_outbox()
        self._start_states(rejects_kept)
        self.capping = False

    def _write_back(self) -> None:
        self._flush()
        self._write_devices()
        self._write_states()

    def _committed(self) -> None:
        self._counts_committed()

    def _reload(self) -> None:
        self._forget_new()
        self._load_devices()
        self._forget_states()

    def close(self) -> None:
        if not self.conn.in_transaction:
            self.write_counts()
        self.conn.close()
