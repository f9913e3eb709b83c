"""The outbox and its queue: items in, acknowledgements and parkings out.

A reading is stored as columns plus its values as JSON, about 180 bytes, and rendered into its batch
item when it is read (see edgegw.items): the full item (360 bytes) written to the WAL, rewritten by
the acknowledgement and again by the checkpoint was most of what the SD card wrote. Alarms, health
reports, and readings rebuilt from a parked copy keep their whole item in ``body`` (their ``driver``
column is NULL).

Only the ids of items without a device counter (alarms, health reports, readings of counterless
devices) are indexed. An index on every id was a fifth of what a burst wrote, rebalanced mid-tree
at each commit; a counted reading's duplicate is found from its device's row instead (see
edgegw.ingest), and a maintainer's lookup by such an id scans the outbox.

Readings with a counter reach their tables together, one statement per table for the group (see
:meth:`OutboxTables._flush`): every method that reads the outbox in the writer's transaction
flushes first, so what it sees is the same.

An acknowledgement changes only ``queue`` (a few bytes per item) and adds a row to ``deliveries`` per
run of seqs. Up to schema 3 the uplink bits and the delivery time were columns of the outbox row: an
ack of 500 readings rewrote the 90 KiB of pages they sit on, which was a third of what a burst wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic_core import to_json

from edgegw.clock import CLOCK_SANE_AFTER, STEP
from edgegw.model import PRIORITY_HEALTH, Reading
from edgegw.store.connection import Queries
from edgegw.store.transactions import Tables


def _json(obj: object) -> str:
    """JSON as stored: compact, UTF-8 as it is. pydantic's serializer (ours already, through the
    config) takes 0.5 us for a reading's values where the json module took 2.5 us (the writer's
    whole budget is about 30). Only finite numbers reach it (see edgegw.ingest.unfit)."""
    return to_json(obj).decode()


# The columns of a reading's outbox row after its id, and their values (see OutboxTables.add_reading).
READING_COLUMNS = ("kind, priority, device_id, driver, observed_at, time_quality, counter, mono, boot_id, source,"
                   " address, rssi, snr, raw, body, accepted_at, verified")
READING_VALUES = "'reading', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"


def runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Consecutive integers as (first, last) runs: [1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    ordered = sorted(set(seqs))
    if ordered and ordered[-1] - ordered[0] == len(ordered) - 1:  # one run: most batches of readings
        return [(ordered[0], ordered[-1])]
    out: list[tuple[int, int]] = []
    for s in ordered:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


class OutboxTables(Tables):
    """The ``outbox``, ``queue`` and ``deliveries`` tables, and the ``parked`` copies."""

    boot_first_seq: int  # rows of this boot have seqs from here on (see note_boot)
    # Readings added and not yet written (see _flush): outbox rows, queue rows, deliveries.
    _new_readings: list[tuple[Any, ...]]
    _new_queue: list[tuple[int, int]]
    _new_deliveries: list[tuple[int, int, float]]
    _next_seq: int | None  # the seq of the next reading, once known in this transaction

    def _start_outbox(self) -> None:
        self.boot_first_seq = 0
        self._new_readings, self._new_queue, self._new_deliveries = [], [], []
        self._next_seq = None

    def begin(self, durable: bool = True, deleting: bool = False) -> None:
        super().begin(durable, deleting)
        self._next_seq = None  # another process (edgegw outbox retry) may have added rows since

    def frame_at(self, seq: int, item_id: str) -> tuple[bytes, float] | None:
        """The raw payload and acceptance time of the item at ``seq``, if it is still the one with this id."""
        self._flush()
        row = self.conn.execute("SELECT raw, accepted_at FROM outbox WHERE seq = ? AND item_id = ?",
                                (seq, item_id)).fetchone()
        return (row[0], row[1]) if row else None

    def item(self, seq: int) -> str | None:
        """The batch item of the outbox row at ``seq``, as the uplinks receive it (also inside the
        open transaction)."""
        self._flush()
        row = self.conn.execute("SELECT item FROM outbox_items WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def latest_counted(self, since: float, limit: int) -> Iterator[tuple[int, str, str, int, float]]:
        """(seq, device id, item id, counter, accepted at) of the readings with a counter accepted
        since ``since``, newest first, at most ``limit`` rows read."""
        rows = self.conn.execute("SELECT seq, device_id, item_id, counter, accepted_at FROM outbox"
                                 " ORDER BY seq DESC LIMIT ?", (limit,))
        for seq, device_id, item_id, counter, accepted_at in rows:
            if accepted_at < since:
                return
            if counter is not None:
                yield seq, device_id, item_id, counter, accepted_at

    def describe(self, gateway_id: str, units: dict[str, dict[str, str]]) -> None:
        """Record what the ``outbox_items`` view needs to render readings: the gateway id and each driver's units."""
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('gateway_id', ?)", (gateway_id,))
            self.conn.executemany("INSERT OR REPLACE INTO drivers VALUES (?, ?)",
                                  [(name, json.dumps(u, separators=(",", ":"))) for name, u in units.items()])

    def add_reading(self, reading: Reading, raw: bytes, pending: int, now: float) -> int | None:
        """Add a reading as columns (see the module docstring): its seq, or None if it has no counter
        and its id is already there (one with a counter is the ingest's to check).

        A reading with a counter is written with the rest of its group, at the next flush (see
        :meth:`_flush`). RSSI and SNR are kept to 0.01 dB: SQL renders REALs to 15 significant
        digits, and no radio measures finer than that (a hostile line may claim more).
        """
        rssi = None if reading.rssi is None else round(reading.rssi, 2)
        snr = None if reading.snr is None else round(reading.snr, 2)
        row = (reading.reading_id, reading.device_id, reading.driver, reading.observed_at, reading.time_quality,
               reading.counter, reading.mono, reading.boot_id, reading.source, reading.address, rssi, snr, raw,
               _json(reading.values), now, 1 if reading.verified else None)
        if reading.counter is None:  # its id is how a copy is found: by the index, at once
            self._flush()
            cur = self.conn.execute(f"INSERT OR IGNORE INTO outbox(item_id, {READING_COLUMNS})"
                                    f" VALUES (?, {READING_VALUES})", row)
            if cur.rowcount != 1 or cur.lastrowid is None:
                return None
            seq = cur.lastrowid
            self._enqueue(seq, 0, pending, now)
            self._next_seq = seq + 1
        else:
            if self._next_seq is None:  # the first of the transaction: SQLite would give max + 1 too
                self._next_seq = self.conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM outbox").fetchone()[0]
            seq = self._next_seq
            self._next_seq = seq + 1
            self._new_readings.append((seq, *row))
            if pending:
                self._new_queue.append((seq, pending))
            else:  # no uplink to send it to: delivered as it arrives
                self._new_deliveries.append((seq, seq, now))
        if seq < self.boot_first_seq:
            # seq is the highest left plus one: it goes back below the mark when every row of this
            # boot has been purged. The mark follows, so that re-stamping still finds this row.
            self._mark_boot(reading.boot_id, seq)
        return seq

    def _flush(self) -> None:
        """Write the readings added since the last flush, with one statement per table for the group.

        Two statements per reading (the row, its queue entry) cost the writer a fifth of its time
        per reading: the calls, a new cursor each, the binding. Every method that reads or changes
        the outbox or the queue flushes first, and so does :meth:`commit`: none sees a table without
        them.
        """
        if self._new_readings:
            self.conn.executemany(f"INSERT INTO outbox(seq, item_id, {READING_COLUMNS})"
                                  f" VALUES (?, ?, {READING_VALUES})", self._new_readings)
            self.conn.executemany("INSERT INTO queue VALUES (?, 0, ?)", self._new_queue)
            self.conn.executemany("INSERT INTO deliveries VALUES (?, ?, ?)", self._new_deliveries)
            self._forget_new()

    def _forget_new(self) -> None:
        self._new_readings.clear()
        self._new_queue.clear()
        self._new_deliveries.clear()

    def add_item(
        self, item_id: str, kind: str, priority: int, device_id: str | None, observed_at: float, mono: float,
        boot_id: str, raw: bytes | None, body: str, pending: int, now: float,
    ) -> bool:
        """Insert one outbox item; False if an item with this id is already there."""
        self._flush()
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO outbox(item_id, kind, priority, device_id, observed_at, mono, boot_id, raw, body,"
            " accepted_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (item_id, kind, priority, device_id, observed_at, mono, boot_id, raw, body, now),
        )
        if cur.rowcount != 1 or cur.lastrowid is None:
            return False
        self._enqueue(cur.lastrowid, priority, pending, now)
        self._next_seq = cur.lastrowid + 1
        return True

    def _enqueue(self, seq: int, priority: int, pending: int, now: float) -> None:
        if pending:
            self.conn.execute("INSERT INTO queue VALUES (?, ?, ?)", (seq, priority, pending))
        else:  # no uplink to send it to: delivered as it arrives
            self.conn.execute("INSERT INTO deliveries VALUES (?, ?, ?)", (seq, seq, now))

    def _forget(self, seqs: list[int]) -> None:
        """Delete these items, sent or not (the caller counts what it drops)."""
        self._flush()
        for table in ("queue", "outbox"):
            self.conn.execute(f"DELETE FROM {table} WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),))

    def add_health(self, item: dict[str, Any], pending: int, now: float) -> None:
        """Queue a health report; older undelivered ones are dropped, only the newest matters."""
        self._flush()
        # By priority, in the urgent index: found at once behind a million readings (by kind, a
        # scan of the pending rows took 0.15 s here for every report).
        self._forget([seq for (seq,) in self.conn.execute(
            "SELECT q.seq FROM queue q CROSS JOIN outbox o ON o.seq = q.seq"
            " WHERE q.priority > 0 AND q.priority = ? AND o.kind = 'health'",
            (PRIORITY_HEALTH,))])
        self.add_item(item["id"], "health", PRIORITY_HEALTH, None, now, 0.0, "", None,
                      json.dumps(item, separators=(",", ":")), pending, now)

    def park(self, uplink: str, bit: int, seq: int, error: str, now: float) -> None:
        """An uplink refused this item for good: stop offering it to that uplink, keep it with the error."""
        self._flush()
        self.conn.execute(
            "INSERT OR REPLACE INTO parked(item_id, uplink, kind, error, parked_at, body, seq)"
            " SELECT item_id, ?, kind, ?, ?, item, seq FROM outbox_items WHERE seq = ?", (uplink, error[:2000], now, seq))
        self.acked(bit, [seq], now)

    def note_boot(self, boot_id: str) -> None:
        """Remember where the rows of this boot begin (call at start, before any reading is added),
        so that a clock step re-stamps this boot's rows without reading those of every earlier boot."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
        known = json.loads(row[0]) if row else {}
        if known.get("id") == boot_id:  # the daemon restarted within the boot
            self.boot_first_seq = known["first_seq"]
            return
        with self.transaction():
            # A database without the mark may hold rows of this boot from before it had one: all may be.
            last = self.conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
            self._mark_boot(boot_id, last + 1 if known else 0)

    def _mark_boot(self, boot_id: str, first_seq: int) -> None:
        self.boot_first_seq = first_seq
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('boot', ?)",
                          (json.dumps({"id": boot_id, "first_seq": first_seq}),))

    def restamp(self, boot_id: str, offset: float, before: float = float("inf")) -> int:
        """The wall clock stepped: re-stamp this boot's unsent readings taken before the step.

        Every reading of this boot stamped with another wall-minus-monotonic offset than the clock's
        ``offset`` (and stamped before ``before``) now becomes ``mono + offset``, marked
        ``estimated``. Returns how many. Reads only the rows from :meth:`note_boot` on: behind a
        million pending readings of earlier boots, reading them all held the writer 0.4 s here.
        """
        self._flush()
        return self.conn.execute(
            "UPDATE outbox NOT INDEXED SET observed_at = mono + :new, time_quality = 'estimated'"
            " WHERE seq >= :first AND kind = 'reading' AND driver IS NOT NULL AND boot_id = :boot"
            " AND EXISTS (SELECT 1 FROM queue q WHERE q.seq = outbox.seq)"
            " AND abs(observed_at - mono - :new) > :tol"
            " AND observed_at < :before",
            {"new": offset, "boot": boot_id, "tol": STEP, "before": before, "first": self.boot_first_seq},
        ).rowcount

    def boot_synced(self, boot_id: str) -> bool:
        """Whether NTP was seen to set the clock in this boot (:meth:`mark_synced`), by an earlier run."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
        known = json.loads(row[0]) if row else {}
        return known.get("id") == boot_id and known.get("synced", False)

    def mark_synced(self, boot_id: str, offset: float) -> int:
        """NTP set the clock: remember it for this boot, and this boot's unsent readings stamped
        ``unsynced`` by a plausible clock with the same wall-minus-monotonic ``offset`` as now were
        right; they become ``synced``. Returns how many. (Those stamped by another offset were
        re-stamped by :meth:`restamp`.)"""
        self._flush()
        self.conn.execute("UPDATE meta SET value = json_set(value, '$.synced', json('true'))"
                          " WHERE key = 'boot' AND json_extract(value, '$.id') = ?", (boot_id,))
        return self.conn.execute(
            "UPDATE outbox NOT INDEXED SET time_quality = 'synced'"
            " WHERE seq >= :first AND kind = 'reading' AND driver IS NOT NULL AND boot_id = :boot"
            " AND time_quality = 'unsynced' AND EXISTS (SELECT 1 FROM queue q WHERE q.seq = outbox.seq)"
            " AND abs(observed_at - mono - :new) <= :tol AND observed_at >= :sane",
            {"new": offset, "boot": boot_id, "tol": STEP, "sane": CLOCK_SANE_AFTER, "first": self.boot_first_seq},
        ).rowcount

    def acked(self, bit: int, seqs: list[int], now: float) -> None:
        """Record an uplink's acknowledgement; rows acknowledged by every uplink become delivered.

        A batch is mostly runs of consecutive seqs: statements per run, not per row, are what let a
        backlog drain at tens of thousands of items a second.
        """
        self._flush()
        delivered: list[int] = []
        for lo, hi in runs(seqs):
            # One row, not one per seq: a DELETE ... RETURNING fetched its rows one by one, each fetch
            # handing the GIL to the other threads and back.
            args = {"bit": bit, "lo": lo, "hi": hi}
            done = "seq BETWEEN :lo AND :hi AND (pending & ~:bit) = 0"
            (text,) = self.conn.execute(f"SELECT group_concat(seq) FROM queue WHERE {done}", args).fetchone()
            if text:
                delivered += map(int, text.split(","))
                self.conn.execute(f"DELETE FROM queue WHERE {done}", args)
            self.conn.execute("UPDATE queue SET pending = pending & ~:bit"
                              " WHERE seq BETWEEN :lo AND :hi AND pending & :bit", args)
        self.conn.executemany("INSERT INTO deliveries VALUES (?, ?, ?)", [(lo, hi, now) for lo, hi in runs(delivered)])


def pending_count(conn: Queries, bit: int = -1) -> int:
    """Items not yet acknowledged by the uplink of ``bit`` (by some uplink, for -1).

    The queue is narrow (about ten bytes an item): counting a million reads 10 MB, where counting
    them in the outbox read the 190 MB of their rows.
    """
    if bit == -1:
        return conn.execute("SELECT count(*) FROM queue").fetchone()[0]
    return conn.execute("SELECT count(*) FROM queue WHERE pending & ?", (bit,)).fetchone()[0]

def oldest_pending_at(conn: Queries, bit: int = -1) -> float | None:
    """When the oldest item pending for the uplink of ``bit`` (for any, -1) was accepted: the lowest
    pending seq, as seqs follow acceptance."""
    row = conn.execute("SELECT accepted_at FROM outbox WHERE seq = (SELECT seq FROM queue WHERE pending & ?"
                       " ORDER BY seq LIMIT 1)", (bit,)).fetchone()
    return None if row is None else row[0]


# The outbox rows no uplink waits for any more that some uplink parked (refused for good): they
# left the queue as delivered ones do, but were not delivered.
PARKED_DONE = ("SELECT DISTINCT p.seq FROM parked p CROSS JOIN outbox o ON o.seq = p.seq"
               " WHERE NOT EXISTS (SELECT 1 FROM queue q WHERE q.seq = p.seq)")
