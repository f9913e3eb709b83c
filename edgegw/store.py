"""The SQLite outbox and device registry.

One :class:`Store` object is the only writer. It is used from one thread (the daemon's writer) and
groups everything that arrived while the previous commit ran into the next transaction, so an SD
card sees one WAL append and one fsync per group, not per frame.

Readers (the forwarders, ``edgegw status``) open their own connections with :func:`open_reader`;
WAL lets them read while the writer writes.

Tables:

``outbox``         readings, alarms and health reports: written once, never changed by an acknowledgement
``queue``          the items some uplink has yet to acknowledge: seq, priority, bitmask of those uplinks
``deliveries``     runs of seqs that became delivered together (no uplink waits for them), and when
``outbox_items``   a view: each outbox row with its uplink bits, delivery time and batch item (see below)
``drivers``        driver name -> the units of its values, for rendering readings
``uplinks``        uplink name -> bit in ``queue.pending``, and its last known state
``devices``        registry: last seen, last RSSI/SNR, frame counter and its epoch, counts
``sources``        radio sources: state, last frame time, frame count
``rejects``        the last N raw frames that failed, for diagnosis (bounded)
``reject_counts``  every failure counted by source and reason, forever
``drops``          items that left unsent, counted by reason and kind: deleted at the disk cap
                   (``disk_cap``), released when the only uplink they waited for left the config
                   (``uplink_removed``)
``rule_state``     each rule's memory per device (JSON), written in the transaction of the reading
``rule_buffer``    readings held back to be evaluated in observation order (see rules.engine)
``parked``         items an uplink refused for good, with the platform's error, kept for inspection
``alarms``         every alarm raised, open until a later alarm closes it, for ``edgegw alarms``
``meta``           schema version, gateway id, the rules' clock, where the rows of this boot begin

A reading is stored as columns plus its values as JSON, about 180 bytes, and rendered into its batch
item by the ``outbox_items`` view when it is read: the full item (360 bytes) written to the WAL,
rewritten by the acknowledgement and again by the checkpoint was most of what the SD card wrote.
Alarms, health reports, and readings rebuilt from a parked copy keep their whole item in ``body``
(their ``driver`` column is NULL).

Only the ids of items without a device counter (alarms, health reports, readings of counterless
devices) are indexed. An index on every id was a fifth of what a burst wrote, rebalanced mid-tree
at each commit; a counted reading's duplicate is found from its device's row instead (see
edgegw.ingest), and a maintainer's lookup by such an id scans the outbox.

Readings with a counter reach their tables together, one statement per table for the group (see
``Store._flush``): every Store method that reads the outbox in the writer's transaction flushes
first, so what it sees is the same.

An acknowledgement changes only ``queue`` (a few bytes per item) and adds a row to ``deliveries`` per
run of seqs. Up to schema 3 the uplink bits and the delivery time were columns of the outbox row: an
ack of 500 readings rewrote the 90 KiB of pages they sit on, which was a third of what a burst wrote.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from edgegw.clock import STEP
from edgegw.errors import StoreError
from edgegw.model import PRIORITY_ALARM, PRIORITY_HEALTH, Alarm, Reading, iso

# 4: the uplink bits live in the queue table, delivery times in deliveries.
# 5: only items without a device counter have their id indexed (see ``DeviceState.seen``).
SCHEMA_VERSION = 6
WAL_LIMIT = 8_000_000
# Page cache per connection, KiB. SQLite's default is 2 MiB; the writer appends at the end of its
# tables and the forwarder reads the head of the queue, so a quarter of that does the same work.
CACHE_KIB = 512
# Every commit appends each page it changed to the WAL, whole: a reading, a device's registry row and
# a rule's state are a few dozen bytes each, on pages of their own. With 1 KiB pages instead of
# SQLite's 4 KiB, a commit at field rate (one reading) writes a quarter of the bytes to the SD card.
PAGE_SIZE = 1024
CAP_LOW_WATER = 0.9  # once over the cap, free space down to this fraction of it: not a drop per commit
# Rows deleted per transaction by the daemon's housekeeping (retention, disk cap): about 10 ms here,
# well under a second on a Pi Zero. Deleting a million in one statement held the writer (and with it
# every frame and alarm) for 3.5 s here, and past systemd's 30 s watchdog on a Pi.
HOUSEKEEPING_CHUNK = 2000
ROOM_CHUNK = 500  # rows dropped per try when a commit failed for want of space: enough for a group
RESERVE_BYTES = 4 * 1024 * 1024  # see Store.reserve: half the WAL_LIMIT, a few thousand readings' pages
RESERVE_NAME = "edgegw.reserve"
MAX_PAGES = 0xFFFFFFFE  # SQLite's own limit on a database's pages
CHECKPOINT_PAGES = 4 * 1024 * 1024 // PAGE_SIZE  # see _configure
DELETE_SLACK = 256 * 1024  # see Store._limit_growth
# Above this much free space the database's growth is not limited: no transaction grows it by half as much.
UNLIMITED_ABOVE = 64 * 1024 * 1024
LIMIT_STEP = 16  # pages


def _json(obj: object) -> str:
    """JSON as stored: compact, UTF-8 as it is. pydantic's serializer (ours already, through the
    config) takes 0.5 us for a reading's values where the json module took 2.5 us (the writer's
    whole budget is about 30). Only finite numbers reach it (see edgegw.ingest.unfit)."""
    return to_json(obj).decode()


# s: how often the counts shown by ``edgegw status`` (frames heard per source, batches and items
# acknowledged per uplink) are written. Written at every commit, they were two of the eight pages
# a reading and its acknowledgement append to the WAL at field rate. A kill -9 loses at most this
# much of them; a clean stop writes them.
COUNTS_EVERY = 10.0


# The columns of a reading's outbox row after its id, and their values (see Store.add_reading).
READING_COLUMNS = ("kind, priority, device_id, driver, observed_at, time_quality, counter, mono, boot_id, source,"
                   " address, rssi, snr, raw, body, accepted_at, verified")
READING_VALUES = "'reading', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"

# The disk cap picks whose readings go among this many times a chunk of the oldest waiting ones.
FAIRNESS_WINDOW = 10

# Counters this far behind the last one, never seen, are late frames, not a reset (see edgegw.ingest).
LATE_WINDOW = 256


@dataclass
class DeviceState:
    """The registry row of one device, cached in memory and written back at each commit."""

    id: str
    source: str
    address: int | None
    driver: str
    first_seen: float
    last_seen: float = 0.0
    last_rssi: float | None = None
    last_snr: float | None = None
    last_counter: int | None = None
    epoch: int = 0
    readings: int = 0
    duplicates: int = 0
    rejects: int = 0
    # Bit i: the counter ``last_counter - i`` arrived in this epoch (0 <= i <= LATE_WINDOW). It stands
    # in for an index on the ids of counted readings: such an index took a fifth of what a burst
    # wrote to the SD card, for the rare frame whose counter went back.
    seen: int = 0
    # The frame counter of the last authenticated frame accepted (see edgegw.envelope): committed
    # with its reading, so a replay is rejected after any restart or power cut.
    auth_counter: int | None = None

    @classmethod
    def of(cls, row: dict[str, Any]) -> DeviceState:
        return cls(**{**row, "seen": int.from_bytes(row["seen"] or b"", "little")})

    def row(self) -> dict[str, Any]:
        return {**vars(self), "seen": _blob(self.seen)}


def _blob(bits: int) -> bytes:
    return bits.to_bytes((bits.bit_length() + 7) // 8, "little")


DEVICE_UPDATE = ", ".join(f"{name} = excluded.{name}" for name in DeviceState.__dataclass_fields__ if name != "id")


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


def _connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        _configure(conn, synchronous)
    except BaseException:
        conn.close()  # a damaged file is moved aside next: no handle of ours may touch its new name
        raise
    return conn


def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
    # Only a new database takes it (an existing one keeps its page size). See PAGE_SIZE.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    # After each checkpoint the WAL file is cut back to this, so a long outage cannot grow it unbounded.
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    # SQLite checkpoints every 1,000 pages: with small pages, keep the 4 MiB WAL that is its default.
    conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    # A multi-row UPDATE in a transaction (every acknowledgement) keeps a statement journal, and
    # past 64 KiB SQLite spills it to a file in /var/tmp: on a Pi, the SD card. In memory it is the
    # pages of one statement, a few hundred KiB at most.
    conn.execute("PRAGMA temp_store=MEMORY")


def open_reader(path: Path) -> sqlite3.Connection:
    """A connection for reading while the daemon writes (status, forwarders)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    conn.row_factory = sqlite3.Row
    return conn


# The batch item of a reading (see edgegw/schemas/batch-v1.schema.json), from its outbox row ``o``
# and its driver's row ``dr`` (a join, not a subquery per row: 0.25 us an item less to render).
# Milliseconds are floor(ts * 1000), as edgegw.model.iso renders alarms and health reports.
ITEM_SQL = """
CASE WHEN o.kind = 'reading' AND o.driver IS NOT NULL THEN json_object(
    'type', 'reading', 'id', o.item_id, 'device', o.device_id, 'driver', o.driver,
    'observed_at', strftime('%Y-%m-%dT%H:%M:%fZ', floor(o.observed_at * 1000) / 1000.0, 'unixepoch'),
    'time_quality', o.time_quality, 'counter', o.counter, 'verified', json(iif(o.verified, 'true', 'false')),
    'values', json(o.body),
    'units', json(coalesce(dr.units, '{}')),
    'radio', json_object('gateway', (SELECT value FROM meta WHERE key = 'gateway_id'), 'source', o.source,
                         'address', o.address, 'rssi', o.rssi, 'snr', o.snr))
ELSE o.body END"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY, item_id TEXT NOT NULL, kind TEXT NOT NULL, priority INTEGER NOT NULL,
    device_id TEXT, observed_at FLOAT, mono FLOAT, boot_id TEXT, raw BLOB, body TEXT NOT NULL,
    accepted_at FLOAT NOT NULL,
    driver TEXT, time_quality TEXT, counter INTEGER, source TEXT, address INTEGER, rssi FLOAT, snr FLOAT,
    verified INTEGER);
-- Alarms, health reports and readings without a counter: their ids are how duplicates are found.
CREATE UNIQUE INDEX IF NOT EXISTS outbox_uncounted ON outbox(item_id) WHERE counter IS NULL;
-- Plain readings go in seq order, the table's own: only the few urgent items need an index.
CREATE TABLE IF NOT EXISTS queue (seq INTEGER PRIMARY KEY, priority INTEGER NOT NULL, pending INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS queue_urgent ON queue(priority DESC, seq) WHERE priority > 0;
CREATE TABLE IF NOT EXISTS deliveries (first INTEGER NOT NULL, last INTEGER NOT NULL, at FLOAT NOT NULL);
CREATE TABLE IF NOT EXISTS drivers (name TEXT PRIMARY KEY, units TEXT);
CREATE TABLE IF NOT EXISTS uplinks (
    name TEXT PRIMARY KEY, bit INTEGER, state TEXT, detail TEXT, changed_at FLOAT, batches INTEGER,
    items INTEGER, last_ack_at FLOAT, inflight INTEGER);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, source TEXT, address INTEGER, driver TEXT, first_seen FLOAT, last_seen FLOAT,
    last_rssi FLOAT, last_snr FLOAT, last_counter INTEGER, epoch INTEGER, readings INTEGER,
    duplicates INTEGER, rejects INTEGER, seen BLOB, auth_counter INTEGER);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY, state TEXT, detail TEXT, changed_at FLOAT, last_frame_at FLOAT, frames INTEGER);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY, at FLOAT, source TEXT, reason TEXT, address INTEGER, device_id TEXT, detail TEXT,
    raw BLOB);
CREATE TABLE IF NOT EXISTS reject_counts (
    source TEXT, reason TEXT, count INTEGER, last_at FLOAT, PRIMARY KEY (source, reason));
CREATE TABLE IF NOT EXISTS drops (reason TEXT, kind TEXT, count INTEGER, last_at FLOAT, PRIMARY KEY (reason, kind));
CREATE TABLE IF NOT EXISTS rule_state (rule TEXT, device_id TEXT, state TEXT, PRIMARY KEY (rule, device_id));
CREATE TABLE IF NOT EXISTS rule_buffer (reading_id TEXT PRIMARY KEY, observed_at FLOAT, reading TEXT);
CREATE TABLE IF NOT EXISTS parked (
    item_id TEXT, uplink TEXT, kind TEXT, error TEXT, parked_at FLOAT, body TEXT, seq INTEGER,
    PRIMARY KEY (item_id, uplink));
CREATE TABLE IF NOT EXISTS alarms (
    id TEXT PRIMARY KEY, kind TEXT, severity TEXT, device_id TEXT, rule TEXT, raised_at FLOAT, late INTEGER,
    message TEXT, open INTEGER, closed_by TEXT, closed_at FLOAT, body TEXT);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms(open, raised_at);
-- A damaged database set aside or a damaged WAL found at start (see edgegw.dbfile): kept for status.
-- lost: 1 when committed data was lost or the database replaced, 0 for an unfinished transaction dropped.
CREATE TABLE IF NOT EXISTS damage (
    at FLOAT, part TEXT, problem TEXT, kept_as TEXT, frames INTEGER, commits INTEGER, lost INTEGER);
"""

# Columns older schemas lack. Schema 1's reading rows keep their whole item in body, sent as it is.
ADDED_COLUMNS = {"outbox": ["driver TEXT", "time_quality TEXT", "counter INTEGER", "source TEXT", "address INTEGER",
                            "rssi FLOAT", "snr FLOAT", "verified INTEGER"],  # verified: 6
                 "uplinks": ["inflight INTEGER"],
                 "devices": ["seen BLOB", "auth_counter INTEGER"],  # seen: 5, auth_counter: 6
                 "parked": ["seq INTEGER"]}  # 5


# Rows of ``deliveries`` from a query of (seq, at): one per run of consecutive seqs delivered at the same time.
RUNS_SQL = """SELECT min(seq), max(seq), at FROM (
    SELECT seq, at, seq - row_number() OVER (PARTITION BY at ORDER BY seq) AS run FROM ({}))
GROUP BY at, run ORDER BY at, min(seq)"""


def _create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older database up to :data:`SCHEMA_VERSION`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # The view is code, not data: made afresh at every start, so a newer item format takes effect.
        conn.execute("DROP VIEW IF EXISTS outbox_items")
        for table, columns in ADDED_COLUMNS.items():
            have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if have and column.split()[0] not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        for statement in SCHEMA.split(";"):
            conn.execute(statement)
        if "pending" in {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}:
            _check_room_to_convert(conn)
            _move_to_queue(conn)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'outbox_item'").fetchone():
            _drop_item_index(conn)
        conn.execute(
            "CREATE VIEW outbox_items AS SELECT o.*, coalesce(q.pending, 0) AS pending,"
            " CASE WHEN q.seq IS NULL THEN (SELECT max(at) FROM deliveries d WHERE o.seq BETWEEN d.first AND d.last)"
            f" END AS delivered_at, {ITEM_SQL} AS item FROM outbox o LEFT JOIN queue q ON q.seq = o.seq"
            " LEFT JOIN drivers dr ON dr.name = o.driver")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_room_to_convert(conn: sqlite3.Connection) -> None:
    """Refuse, before writing anything, a conversion the disk has no room for: it would fill the
    disk, roll back, and do it all again at every restart."""
    path = Path(conn.execute("PRAGMA database_list").fetchone()[2])
    pages, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
    needed, free = pages * size, shutil.disk_usage(path.parent).free
    if free < needed:
        raise StoreError(f"{path}: converting this database to schema {SCHEMA_VERSION} rewrites its outbox and needs"
                         f" about {needed / 1e6:.0f} MB free on that filesystem; {free / 1e6:.0f} MB is free."
                         " Make room and start again (nothing was changed).")


def _move_to_queue(conn: sqlite3.Connection) -> None:
    """Schema 3 and older: move the uplink bits of the outbox rows into ``queue`` and their delivery
    times into ``deliveries``, then drop those columns. Dropping a column rewrites the table: the
    whole move took 4.2 s here for a million rows."""
    conn.execute("INSERT INTO queue SELECT seq, priority, pending FROM outbox WHERE pending != 0")
    conn.execute("INSERT INTO deliveries(first, last, at) " + RUNS_SQL.format(
        "SELECT seq, coalesce(delivered_at, accepted_at) AS at FROM outbox WHERE pending = 0"))
    for index in ("outbox_pending", "outbox_send_order", "outbox_delivered"):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    conn.execute("ALTER TABLE outbox DROP COLUMN pending")
    conn.execute("ALTER TABLE outbox DROP COLUMN delivered_at")


def _drop_item_index(conn: sqlite3.Connection) -> None:
    """Schema 4 and older: note in each device row which counters of its window arrived, and in each
    parked row the seq of its item, while the index on every item id can still find them; then drop it."""
    devices = conn.execute("SELECT id, epoch, last_counter FROM devices WHERE last_counter IS NOT NULL").fetchall()
    for device_id, epoch, last in devices:
        ids = {f"{device_id}:{epoch}:{last - i}": i for i in range(min(LATE_WINDOW, last) + 1)}
        found = conn.execute("SELECT item_id FROM outbox WHERE item_id IN (SELECT value FROM json_each(?))",
                             (json.dumps(list(ids)),))
        seen = sum(1 << ids[item_id] for (item_id,) in found)
        conn.execute("UPDATE devices SET seen = ? WHERE id = ?", (_blob(seen), device_id))
    conn.execute("UPDATE parked SET seq = (SELECT seq FROM outbox o WHERE o.item_id = parked.item_id)")
    conn.execute("DROP INDEX outbox_item")


class Store:
    """The single writer of the gateway database."""

    def __init__(self, path: Path, synchronous: str = "FULL", rejects_kept: int = 1000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = _connect(self.path, synchronous)
        self.synchronous = self._level = synchronous.upper()
        try:
            _create_schema(self.conn)
            self.devices: dict[str, DeviceState] = {
                row["id"]: DeviceState.of(row) for row in self._rows("SELECT * FROM devices")
            }
        except BaseException:
            self.conn.close()  # see _connect: a damaged file is moved aside next
            raise
        self.rejects_kept = rejects_kept
        self._dirty_devices: set[str] = set()
        # Frames heard per source (count, last at) and acks per uplink (batches, items, last at):
        # those of the open transaction, and those committed but not yet written (see COUNTS_EVERY).
        self._heard: dict[str, tuple[int, float]] = {}
        self._acked: dict[str, tuple[int, int, float]] = {}
        self._counts: tuple[dict[str, tuple[int, float]], dict[str, tuple[int, int, float]]] = ({}, {})
        self._counts_due = time.monotonic() + COUNTS_EVERY
        self._rejects_added = 0
        self.capping = False  # over the disk cap, and not yet down to its low-water mark
        self.boot_first_seq = 0  # rows of this boot have seqs from here on (see note_boot)
        self.released: dict[str, dict[str, int]] = {}  # see register_uplinks
        # Readings added and not yet written (see _flush): outbox rows, queue rows, deliveries.
        self._new_readings: list[tuple] = []
        self._new_queue: list[tuple[int, int]] = []
        self._new_deliveries: list[tuple[int, int, float]] = []
        self._next_seq: int | None = None  # the seq of the next reading, once known in this transaction
        self.page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        self._max_pages = 0  # see _limit_growth
        self._grow_freely = False  # see make_room

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur]

    # -- transactions ---------------------------------------------------------------------------

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
        self._next_seq = None  # another process (edgegw outbox retry) may have added rows since

    def _limit_growth(self, deleting: bool = False) -> None:
        """Let the database grow (its pages, in the WAL or not yet) into the filesystem's free space
        only as far as the checkpoint should find room to write them: half of what is left once the
        WAL has grown to where SQLite checkpoints it (a reader may hold the WAL back longer), and
        where that leaves nothing, a quarter of the free space: a WAL cut short by the cap's
        checkpoint grows only as far as its transactions, and refusing every commit would keep even
        the alarms out.

        A commit whose pages the checkpoint cannot write, for want of room to grow the file, wedges
        the database: the WAL cannot start over, so no later write, not even a DELETE to make room,
        finds space (see :meth:`make_room`). Past this limit SQLite fails the statement instead
        (SQLITE_FULL, before anything is committed), and the writer makes room inside the file and
        tries again. A few microseconds a transaction; the filesystem may have filled since the last.

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
            wal_growth = max(0, wal_full - _file_size(self.path.with_name(self.path.name + "-wal")))
            room = free // 2 if self._grow_freely else (free - min(wal_growth, free // 2)) // 2
            # In steps of LIMIT_STEP pages, so that the PRAGMA runs when the limit moves, not at every byte.
            pages = (_file_size(self.path) + room) // self.page_size // LIMIT_STEP * LIMIT_STEP
            if deleting and free >= 2 * DELETE_SLACK:
                pages = max(pages, self.conn.execute("PRAGMA page_count").fetchone()[0]
                            + DELETE_SLACK // self.page_size)
            pages = min(pages, MAX_PAGES)
        if pages != self._max_pages:
            self.conn.execute(f"PRAGMA max_page_count={pages}")
            self._max_pages = pages

    def commit(self) -> None:
        """Write back cached registry rows and commit: everything since begin() is now accepted."""
        self._flush()
        if self._dirty_devices:
            # An upsert changes the row in place; INSERT OR REPLACE deleted and re-inserted it, and so
            # also rewrote a page of the primary key's index in every commit.
            self.conn.executemany(
                "INSERT INTO devices VALUES (:id, :source, :address, :driver, :first_seen, :last_seen,"
                " :last_rssi, :last_snr, :last_counter, :epoch, :readings, :duplicates, :rejects, :seen, :auth_counter)"
                f" ON CONFLICT(id) DO UPDATE SET {DEVICE_UPDATE}",
                [self.devices[d].row() for d in self._dirty_devices],
            )
            self._dirty_devices.clear()
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
        self.conn.execute("COMMIT")
        self._grow_freely = False
        if write:
            self._counts, self._counts_due = ({}, {}), time.monotonic() + COUNTS_EVERY
        else:
            self._counts = (heard, acked)
        self._heard.clear()
        self._acked.clear()

    def write_counts(self) -> None:
        """Write the counts of frames heard and items acknowledged now, not at the next
        :data:`COUNTS_EVERY` (for a health report, and at close)."""
        if any(self._counts):
            self.begin(durable=False)
            self._counts_due = -math.inf
            self.commit()

    def rollback(self) -> None:
        if self.conn.in_transaction:  # BEGIN itself may be what failed
            self.conn.execute("ROLLBACK")
        self._forget_new()
        # The cache may hold changes of the rolled-back group: reload it from what is on disk.
        self.devices = {row["id"]: DeviceState.of(row) for row in self._rows("SELECT * FROM devices")}
        self._dirty_devices.clear()
        self._heard.clear()
        self._acked.clear()

    # -- devices --------------------------------------------------------------------------------

    def device(self, device_id: str, source: str, address: int | None, driver: str, now: float) -> DeviceState:
        state = self.devices.get(device_id)
        if state is None:
            state = self.devices[device_id] = DeviceState(device_id, source, address, driver, first_seen=now)
        return state

    def touch(self, state: DeviceState) -> None:
        self._dirty_devices.add(state.id)

    def reset_counter(self, device_id: str) -> int | None:
        """Forget the device's last authenticated frame counter (a sensor whose counter restarted):
        its next frames start a new counter epoch, so their ids do not repeat older readings'.
        Returns the counter forgotten; None when the device never sent an authenticated frame."""
        state = self.devices.get(device_id)
        if state is None or state.auth_counter is None:
            return None
        forgotten = state.auth_counter
        state.auth_counter, state.last_counter, state.seen, state.epoch = None, None, 0, state.epoch + 1
        self.begin()
        self.touch(state)
        self.commit()
        return forgotten

    def frame_heard(self, source: str, at: float) -> None:
        frames, _ = self._heard.get(source, (0, at))
        self._heard[source] = (frames + 1, at)

    # -- outbox ---------------------------------------------------------------------------------

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
        self.begin()
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('gateway_id', ?)", (gateway_id,))
        self.conn.executemany("INSERT OR REPLACE INTO drivers VALUES (?, ?)",
                              [(name, json.dumps(u, separators=(",", ":"))) for name, u in units.items()])
        self.commit()

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
            if cur.rowcount != 1:
                return None
            seq = cur.lastrowid
            self._enqueue(seq, 0, pending, now)
            self._next_seq = seq + 1
        else:
            if self._next_seq is None:  # the first of the transaction: SQLite would give max + 1 too
                self._next_seq = self.conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM outbox").fetchone()[0]
            seq = self._next_seq
            self._next_seq += 1
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
        if cur.rowcount != 1:
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

    def add_alarm(self, alarm: Alarm, pending: int, now: float) -> bool:
        """Put an alarm in the outbox at alarm priority and in the alarm log; False if it was already there."""
        body = _json(alarm.item())
        if not self.add_item(alarm.alarm_id, "alarm", PRIORITY_ALARM, alarm.device_id, alarm.raised_at, 0.0, "",
                             None, body, pending, now):
            return False
        self.conn.execute(
            "INSERT OR IGNORE INTO alarms(id, kind, severity, device_id, rule, raised_at, late, message, open, body)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (alarm.alarm_id, alarm.kind, alarm.severity, alarm.device_id, alarm.rule, alarm.raised_at,
             int(alarm.late), alarm.message, int(alarm.opens), body),
        )
        for closed in alarm.closes:
            self.conn.execute(
                "UPDATE alarms SET open = 0, closed_by = ?, closed_at = ? WHERE id = ? AND open = 1",
                (alarm.alarm_id, alarm.raised_at, closed),
            )
        return True

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
        self.begin()
        # A database without the mark may hold rows of this boot from before it had one: all may be.
        last = self.conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] or 0
        self._mark_boot(boot_id, last + 1 if known else 0)
        self.commit()

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

    def purge_delivered(self, older_than: float, limit: int = HOUSEKEEPING_CHUNK) -> tuple[int, int, bool]:
        """Delete delivered items (about ``limit`` at most, see :func:`delete_delivered`) and up to
        ``limit`` closed alarms of the alarm log, delivered (raised) before ``older_than``, the
        oldest first. Returns how many of each, and whether more may be due."""
        self._flush()
        alarms = self.conn.execute(
            "DELETE FROM alarms WHERE rowid IN (SELECT rowid FROM alarms WHERE open = 0 AND raised_at < ?"
            " ORDER BY raised_at LIMIT ?)", (older_than, limit)).rowcount
        items, more = delete_delivered(self.conn, older_than, limit)
        return items, alarms, more or alarms == limit

    # -- uplinks and sources --------------------------------------------------------------------

    def register_uplinks(self, names: list[str]) -> dict[str, int]:
        """Give each configured uplink a stable bit; release the bits of uplinks no longer configured.

        Items still pending for a removed uplink would otherwise wait forever for an ack that cannot come.
        Those that waited for it alone leave unsent: counted in ``drops`` (reason ``uplink_removed``)
        and in :attr:`released` (uplink -> kind -> count), for the daemon to say so.
        Returns name -> bit.
        """
        self.begin()
        rows = dict(self.conn.execute("SELECT name, bit FROM uplinks").fetchall())
        self.released = {}
        for gone in set(rows) - set(names):
            alone = dict(self.conn.execute("SELECT o.kind, count(*) FROM queue q CROSS JOIN outbox o ON o.seq = q.seq"
                                           " WHERE q.pending = ? GROUP BY o.kind", (rows[gone],)).fetchall())
            self.released[gone] = alone
            for kind, n in alone.items():
                self._count_drops("uplink_removed", kind, n, time.time())
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
        self.commit()
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

    # -- rejects --------------------------------------------------------------------------------

    def add_reject(self, source: str, reason: str, detail: str, address: int | None, device_id: str | None,
                   raw: bytes, at: float) -> None:
        self.conn.execute(
            "INSERT INTO reject_counts VALUES (?, ?, 1, ?) ON CONFLICT(source, reason) DO UPDATE"
            " SET count = count + 1, last_at = excluded.last_at",
            (source, reason, at),
        )
        if self.rejects_kept:
            self.conn.execute(
                "INSERT INTO rejects(at, source, reason, address, device_id, detail, raw) VALUES (?,?,?,?,?,?,?)",
                (at, source, reason, address, device_id, detail[:500], raw[:512]),
            )
            self._rejects_added += 1

    # -- disk cap -------------------------------------------------------------------------------

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
            if not _full(exc) or not self.reserve.exists():
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
        self.begin(deleting=True)
        gone, more = delete_delivered(self.conn, math.inf, limit)
        self.conn.execute("COMMIT")
        if gone or more:
            return {"delivered": gone}
        for kind in ("reading", "health"):
            self.begin(deleting=True)
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
                self._count_drops("disk_cap", kind, len(seqs), now)
            self.conn.execute("COMMIT")
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
            if not _full(exc):
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

    def note_disk_full(self, episode: dict[str, Any]) -> None:
        """Inside a transaction: keep the last episode of commits waiting for room, for ``edgegw status``."""
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('disk_full', ?)", (json.dumps(episode),))

    def _count_drops(self, reason: str, kind: str, n: int, at: float) -> None:
        self.conn.execute("INSERT INTO drops VALUES (?, ?, ?, ?) ON CONFLICT(reason, kind) DO UPDATE"
                          " SET count = count + excluded.count, last_at = excluded.last_at", (reason, kind, n, at))

    def close(self) -> None:
        if not self.conn.in_transaction:
            self.write_counts()
        self.conn.close()


def _full(exc: sqlite3.OperationalError) -> bool:
    """SQLite's "database or disk is full"."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL


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


def pending_count(conn: sqlite3.Connection, bit: int = -1) -> int:
    """Items not yet acknowledged by the uplink of ``bit`` (by some uplink, for -1).

    The queue is narrow (about ten bytes an item): counting a million reads 10 MB, where counting
    them in the outbox read the 190 MB of their rows.
    """
    if bit == -1:
        return conn.execute("SELECT count(*) FROM queue").fetchone()[0]
    return conn.execute("SELECT count(*) FROM queue WHERE pending & ?", (bit,)).fetchone()[0]


def health(path: Path, gateway_id: str, version: str, uptime_s: float, bits: dict[str, int],
           now: float, daemon: dict[str, Any] | None = None) -> dict[str, Any]:
    """The gateway's health report (a batch item, see the schema), read on a reader connection;
    ``daemon`` adds what only the running daemon knows (restarts of its stages, a full disk).

    Counting what each uplink has pending reads the queue whole, tens of milliseconds per uplink
    behind a million readings: the daemon builds the report beside the writer, not in it.
    """
    conn = open_reader(path)
    try:
        conn.execute("BEGIN")  # one snapshot for all the counts
        oldest = oldest_pending_at(conn)
        disk = disk_usage(conn, path)
        return {
            "type": "health", "id": f"{gateway_id}:health:{int(now * 1000)}", "gateway": gateway_id,
            "observed_at": iso(now), "version": version, "uptime_s": round(uptime_s, 1),
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
            **(daemon or {}),
        }
    finally:
        conn.close()


def disk_usage(conn: sqlite3.Connection, path: Path) -> dict[str, int]:
    """The database's live bytes, its free pages (reused before the file grows), its WAL's, what
    the filesystem has free, and the reserve's (see Store.reserve)."""
    pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    return {"db_bytes": (pages - free) * size, "reusable_bytes": free * size,
            "wal_bytes": _file_size(path.with_name(path.name + "-wal")), "free_bytes": shutil.disk_usage(path.parent).free,
            "reserve_bytes": _file_size(path.with_name(RESERVE_NAME))}


def room(path: Path) -> int:
    """The room the database at ``path`` has to grow: its filesystem's free space and the reserve."""
    return shutil.disk_usage(path.parent).free + _file_size(path.with_name(RESERVE_NAME))


def _file_size(path: Path) -> int:
    try:  # the writer may remove it at any moment (a checkpoint's truncation, the reserve given back)
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def oldest_pending_at(conn: sqlite3.Connection, bit: int = -1) -> float | None:
    """When the oldest item pending for the uplink of ``bit`` (for any, -1) was accepted: the lowest
    pending seq, as seqs follow acceptance."""
    row = conn.execute("SELECT accepted_at FROM outbox WHERE seq = (SELECT seq FROM queue WHERE pending & ?"
                       " ORDER BY seq LIMIT 1)", (bit,)).fetchone()
    return None if row is None else row[0]


ALARM_COLUMNS = "id, kind, severity, device_id, rule, raised_at, late, message, open, closed_by, closed_at"


def _alarm_rows(conn: sqlite3.Connection, where: str, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {ALARM_COLUMNS} FROM alarms WHERE {where} ORDER BY raised_at DESC LIMIT ?", (limit,))
    return [{**dict(r), "late": bool(r["late"]), "open": bool(r["open"])} for r in rows]


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
        return {"open": _alarm_rows(conn, "open = 1", 10_000), "recent": _alarm_rows(conn, "1", recent)}
    finally:
        conn.close()


def status(path: Path) -> dict[str, Any]:
    """Everything ``edgegw status`` shows, read from the database while the daemon runs."""
    conn = open_reader(path)
    try:
        now = time.time()
        q = lambda sql, *a: [dict(r) for r in conn.execute(sql, a)]  # noqa: E731
        conn.execute("BEGIN")  # one snapshot for all the counts
        outbox = {"pending": pending_count(conn),
                  "delivered": conn.execute("SELECT (SELECT count(*) FROM outbox) - (SELECT count(*) FROM queue)")
                  .fetchone()[0],
                  "oldest_pending_at": oldest_pending_at(conn)}
        uplinks = q("SELECT name, state, detail, changed_at, batches, items, last_ack_at,"
                    " coalesce(inflight, 0) AS in_flight, bit FROM uplinks ORDER BY name")
        for u in uplinks:
            u["pending"] = pending_count(conn, u.pop("bit"))
        outbox["in_flight"] = sum(u["in_flight"] for u in uplinks)
        drops = q("SELECT reason, kind, count FROM drops")
        return {
            "now": now,
            "open_alarms": _alarm_rows(conn, "open = 1", 10_000),
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
