"""The database's tables, and how an older database is brought up to date.

Tables:

``outbox``         readings, alarms and health reports: written once, never changed by an acknowledgement
``queue``          the items some uplink has yet to acknowledge: seq, priority, bitmask of those uplinks
``deliveries``     runs of seqs that became delivered together (no uplink waits for them), and when
``outbox_items``   a view: each outbox row with its uplink bits, delivery time and batch item
                   (rendered by :data:`edgegw.items.READING_ITEM_SQL`)
``drivers``        driver name -> the units of its values, for rendering readings
``uplinks``        uplink name -> bit in ``queue.pending``, and its last known state
``devices``        registry: last seen, last RSSI/SNR, frame counter and its epoch, counts (frames lost too)
``sources``        radio sources: state, last frame time, frame count
``rejects``        the last N raw frames that failed, with their RSSI/SNR, for diagnosis (bounded)
``reject_counts``  every failure counted by source and reason, forever
``drops``          items that left unsent, counted by reason and kind: deleted at the disk cap
                   (``disk_cap``), released when the only uplink they waited for left the config
                   (``uplink_removed``)
``rule_state``     each rule's memory per device (JSON), written in the transaction of the reading
``rule_buffer``    readings held back to be evaluated in observation order (see edgegw.rules.engine)
``parked``         items an uplink refused for good, with the platform's error, kept for inspection
``alarms``         every alarm raised, open until a later alarm closes it, for ``edgegw alarms``;
                   whether its local actions were started
``damage``         damaged files set aside or found at start (see edgegw.dbfile)
``meta``           schema version, gateway id, the rules' clock, where the rows of this boot begin
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from edgegw.errors import StoreError
from edgegw.items import READING_ITEM_SQL
from edgegw.store.connection import immediate
from edgegw.store.devices import LATE_WINDOW, blob

# 4: the uplink bits live in the queue table, delivery times in deliveries.
# 5: only items without a device counter have their id indexed (see ``DeviceState.seen``).
# 6: outbox.verified, devices.auth_counter.
# 7: devices.lost (frames missed by counter gaps), rejects.rssi and rejects.snr (for edgegw monitor).
# 8: alarms.acted (0 until the alarm's local actions were started: a crash before runs them at start).
SCHEMA_VERSION = 8


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
    duplicates INTEGER, rejects INTEGER, seen BLOB, auth_counter INTEGER, lost INTEGER);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY, state TEXT, detail TEXT, changed_at FLOAT, last_frame_at FLOAT, frames INTEGER);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY, at FLOAT, source TEXT, reason TEXT, address INTEGER, device_id TEXT, detail TEXT,
    raw BLOB, rssi FLOAT, snr FLOAT);
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
    message TEXT, open INTEGER, closed_by TEXT, closed_at FLOAT, body TEXT, acted INTEGER);
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
                 "devices": ["seen BLOB", "auth_counter INTEGER", "lost INTEGER"],  # seen: 5, auth_counter: 6, lost: 7
                 "rejects": ["rssi FLOAT", "snr FLOAT"],  # 7
                 "alarms": ["acted INTEGER"],  # 8: NULL for the alarms of before, whose actions are not run again
                 "parked": ["seq INTEGER"]}  # 5


# Rows of ``deliveries`` from a query of (seq, at): one per run of consecutive seqs delivered at the same time.
RUNS_SQL = """SELECT min(seq), max(seq), at FROM (
    SELECT seq, at, seq - row_number() OVER (PARTITION BY at ORDER BY seq) AS run FROM ({}))
GROUP BY at, run ORDER BY at, min(seq)"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older database up to :data:`SCHEMA_VERSION`."""
    with immediate(conn):
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
            f" END AS delivered_at, {READING_ITEM_SQL} AS item FROM outbox o LEFT JOIN queue q ON q.seq = o.seq"
            " LEFT JOIN drivers dr ON dr.name = o.driver")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


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
        conn.execute("UPDATE devices SET seen = ? WHERE id = ?", (blob(seen), device_id))
    conn.execute("UPDATE parked SET seq = (SELECT seq FROM outbox o WHERE o.item_id = parked.item_id)")
    conn.execute("DROP INDEX outbox_item")
