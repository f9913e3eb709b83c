"""What ``edgegw status`` and the health report show of the running parts: uplinks (their bits in
the queue, states, acknowledgement counts), radio sources (states, frames heard), rejected frames,
unsent items dropped or released, full-disk episodes and damaged files.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from typing import Any

from edgegw.store.schema import RUNS_SQL
from edgegw.store.transactions import Tables

# s: how often the counts shown by ``edgegw status`` (frames heard per source, batches and items
# acknowledged per uplink) are written. Written at every commit, they were two of the eight pages
# a reading and its acknowledgement append to the WAL at field rate. A kill -9 loses at most this
# much of them; a clean stop writes them.
COUNTS_EVERY = 10.0


def count_drops(conn: sqlite3.Connection, reason: str, kind: str, n: int, at: float) -> None:
    """Count unsent items that left (see the ``drops`` table)."""
    conn.execute("INSERT INTO drops VALUES (?, ?, ?, ?) ON CONFLICT(reason, kind) DO UPDATE"
                 " SET count = count + excluded.count, last_at = excluded.last_at", (reason, kind, n, at))


class StateTables(Tables):
    """The ``uplinks``, ``sources``, ``rejects``, ``reject_counts``, ``drops`` and ``damage`` tables."""

    rejects_kept: int
    released: dict[str, dict[str, int]]  # see register_uplinks

    def _start_states(self, rejects_kept: int) -> None:
        self.rejects_kept = rejects_kept
        self.released = {}
        self._rejects_added = 0
        # Frames heard per source (count, last at) and acks per uplink (batches, items, last at):
        # those of the open transaction, and those committed but not yet written (see COUNTS_EVERY).
        self._heard: dict[str, tuple[int, float]] = {}
        self._acked: dict[str, tuple[int, int, float]] = {}
        self._counts: tuple[dict[str, tuple[int, float]], dict[str, tuple[int, int, float]]] = ({}, {})
        self._counts_due = time.monotonic() + COUNTS_EVERY
        self._counts_written = False

    def _write_states(self) -> None:
        """At commit: the counts when they are due, and the rejects kept cut back to their limit."""
        heard, acked = dict(self._counts[0]), dict(self._counts[1])
        for name, (frames, at) in self._heard.items():
            heard[name] = (heard.get(name, (0, at))[0] + frames, at)
        for name, (batches, items, at) in self._acked.items():
            before = acked.get(name, (0, 0, at))
            acked[name] = (before[0] + batches, before[1] + items, at)
        write = bool(heard or acked) and time.monotonic() >= self._counts_due
        if write:
            self.conn.executemany(
                "INSERT INTO sources(name, frames, last_frame_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE"
                " SET frames = frames + excluded.frames, last_frame_at = excluded.last_frame_at",
                [(name, frames, at) for name, (frames, at) in heard.items()])
            self.conn.executemany(
                "UPDATE uplinks SET batches = batches + ?, items = items + ?, last_ack_at = ? WHERE name = ?",
                [(batches, items, at, name) for name, (batches, items, at) in acked.items()])
        if self._rejects_added and self.rejects_kept >= 0:
            self.conn.execute(
                "DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?", (self.rejects_kept,)
            )
            self._rejects_added = 0
        # Applied by commit once COMMIT succeeded (see _counts_committed).
        self._pending_counts = (write, heard, acked)

    def _counts_committed(self) -> None:
        write, heard, acked = self._pending_counts
        if write:
            self._counts, self._counts_due = ({}, {}), time.monotonic() + COUNTS_EVERY
        else:
            self._counts = (heard, acked)
        self._heard.clear()
        self._acked.clear()

    def _forget_states(self) -> None:
        self._heard.clear()
        self._acked.clear()

    def write_counts(self) -> None:
        """Write the counts of frames heard and items acknowledged now, not at the next
        :data:`COUNTS_EVERY` (for a health report, and at close)."""
        if any(self._counts):
            with self.transaction(durable=False):
                self._counts_due = -math.inf

    def frame_heard(self, source: str, at: float) -> None:
        frames, _ = self._heard.get(source, (0, at))
        self._heard[source] = (frames + 1, at)

    def register_uplinks(self, names: list[str]) -> dict[str, int]:
        """Give each configured uplink a stable bit; release the bits of uplinks no longer configured.

        Items still pending for a removed uplink would otherwise wait forever for an ack that cannot come.
        Those that waited for it alone leave unsent: counted in ``drops`` (reason ``uplink_removed``)
        and in :attr:`released` (uplink -> kind -> count), for the daemon to say so.
        Returns name -> bit.
        """
        with self.transaction():
            rows = dict(self.conn.execute("SELECT name, bit FROM uplinks").fetchall())
            self.released = {}
            for gone in set(rows) - set(names):
                alone = dict(self.conn.execute("SELECT o.kind, count(*) FROM queue q CROSS JOIN outbox o ON o.seq = q.seq"
                                               " WHERE q.pending = ? GROUP BY o.kind", (rows[gone],)).fetchall())
                self.released[gone] = alone
                for kind, n in alone.items():
                    count_drops(self.conn, "uplink_removed", kind, n, time.time())
                self.conn.execute("UPDATE queue SET pending = pending & ~? WHERE pending & ?", (rows[gone], rows[gone]))
                self.conn.execute("INSERT INTO deliveries(first, last, at) "
                                  + RUNS_SQL.format("SELECT seq, ? AS at FROM queue WHERE pending = 0"), (time.time(),))
                self.conn.execute("DELETE FROM queue WHERE pending = 0")
                self.conn.execute("DELETE FROM uplinks WHERE name = ?", (gone,))
                del rows[gone]
            for name in names:
                if name not in rows:
                    free = next(b for b in range(62) if 1 << b not in rows.values())
                    rows[name] = 1 << free
                    self.conn.execute("INSERT INTO uplinks(name, bit, state, batches, items, changed_at)"
                                      " VALUES (?, ?, 'starting', 0, 0, ?)", (name, rows[name], time.time()))
        return rows

    def uplink_state(self, name: str, state: str, detail: str, at: float) -> None:
        self.conn.execute(
            "UPDATE uplinks SET state = ?, detail = ?, changed_at = ? WHERE name = ?", (state, detail, at, name)
        )

    def uplink_delivered(self, name: str, items: int, at: float) -> None:
        batches, before, _ = self._acked.get(name, (0, 0, at))
        self._acked[name] = (batches + 1, before + items, at)

    def uplink_inflight(self, name: str, items: int) -> None:
        """How many items the uplink has sent and not yet seen acknowledged, for ``edgegw status``."""
        self.conn.execute("UPDATE uplinks SET inflight = ? WHERE name = ?", (items, name))

    def source_state(self, name: str, state: str, detail: str, at: float) -> None:
        self.conn.execute(
            "INSERT INTO sources(name, state, detail, changed_at, frames) VALUES (?, ?, ?, ?, 0)"
            " ON CONFLICT(name) DO UPDATE SET state = excluded.state, detail = excluded.detail,"
            " changed_at = excluded.changed_at",
            (name, state, detail, at),
        )

    def add_reject(self, source: str, reason: str, detail: str, address: int | None, device_id: str | None,
                   raw: bytes, at: float, rssi: float | None = None, snr: float | None = None) -> None:
        self.conn.execute(
            "INSERT INTO reject_counts VALUES (?, ?, 1, ?) ON CONFLICT(source, reason) DO UPDATE"
            " SET count = count + 1, last_at = excluded.last_at",
            (source, reason, at),
        )
        if self.rejects_kept:
            self.conn.execute(
                "INSERT INTO rejects(at, source, reason, address, device_id, detail, raw, rssi, snr)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (at, source, reason, address, device_id, detail[:500], raw[:512], rssi, snr),
            )
            self._rejects_added += 1

    def note_disk_full(self, episode: dict[str, Any]) -> None:
        """Inside a transaction: keep the last episode of commits waiting for room, for ``edgegw status``."""
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('disk_full', ?)", (json.dumps(episode),))

    def record_damage(self, at: float, part: str, problem: str, kept_as: str | None, frames: int, commits: int,
                      lost: bool) -> None:
        """Inside a transaction: a damaged file found at start (see edgegw.dbfile)."""
        self.conn.execute("INSERT INTO damage VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (at, part, problem, kept_as, frames, commits, int(lost)))
