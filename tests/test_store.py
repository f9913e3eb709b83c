"""The outbox on real SQLite: acknowledgements touch exactly the rows acked; readings read back as stored."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import edgegw.store
import edgegw.store.schema
import edgegw.store.states
from edgegw.cli import cli
from edgegw.errors import StoreError
from edgegw.model import Reading, iso
from edgegw.store import SCHEMA_VERSION, Store, runs
from tests.gateway import write_config


@given(st.lists(st.integers(0, 200), max_size=60))
def test_runs_cover_exactly_the_seqs(seqs):
    covered = [s for lo, hi in runs(seqs) for s in range(lo, hi + 1)]
    assert covered == sorted(set(seqs))
    assert all(b[0] > a[1] + 1 for a, b in zip(runs(seqs), runs(seqs)[1:]))  # maximal runs


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(1, 40)), st.sets(st.integers(1, 40)))
def test_an_ack_clears_only_its_rows_and_only_its_uplink(tmp_path_factory, first, second):
    store = Store(tmp_path_factory.mktemp("store") / "edgegw.db")
    bits = store.register_uplinks(["a", "b"])
    store.begin()
    for i in range(1, 41):
        store.add_item(f"d:0:{i}", "reading", 0, "d", float(i), 0.0, "boot", b"x", "{}", bits["a"] | bits["b"], 1.0)
    store.acked(bits["a"], sorted(first), 2.0)
    store.acked(bits["b"], sorted(second), 3.0)
    store.commit()
    rows = {seq: (pending, delivered) for seq, pending, delivered
            in store.conn.execute("SELECT seq, pending, delivered_at FROM outbox_items")}
    for seq, (pending, delivered) in rows.items():
        assert bool(pending & bits["a"]) == (seq not in first)
        assert bool(pending & bits["b"]) == (seq not in second)
        assert (delivered is not None) == (seq in first and seq in second)
    store.close()


VALUES = st.dictionaries(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.one_of(st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
              st.text(st.characters(codec="utf-8"), max_size=20)),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(VALUES, st.floats(0, 4e9), st.none() | st.integers(0, 65535), st.none() | st.floats(-140, 0),
       st.sampled_from(["synced", "unsynced", "estimated"]), st.booleans())
def test_a_reading_reads_back_as_the_item_it_was(values, observed, counter, rssi, quality, verified):
    """Readings are stored as columns and rendered by SQL: the item must say exactly what was decoded."""
    store = OUTBOX
    reading = Reading("dev-1:0:1", "dev-1", "water_level", observed, quality, counter, values, "lora0", 21,
                      rssi, 7.5, 1.0, "boot", verified)
    store.begin()
    try:
        text = store.item(store.add_reading(reading, b"\x01", 1, 0.0))
    finally:
        store.rollback()
    item = json.loads(text)
    assert item == {
        "type": "reading", "id": "dev-1:0:1", "device": "dev-1", "driver": "water_level",
        "observed_at": iso(observed), "time_quality": quality, "counter": counter, "verified": verified,
        "values": values, "units": {"level": "mm"},
        "radio": {"gateway": "gw-x", "source": "lora0", "address": 21, "rssi": rssi and round(rssi, 2),
                  "snr": 7.5},
    }


def test_an_outbox_of_schema_1_is_upgraded_its_rows_sent_as_they_were_and_its_deliveries_kept(tmp_path):
    path = tmp_path / "edgegw.db"
    old = schema_1(path)
    item = {"type": "reading", "id": "river-01:0:7", "device": "river-01", "values": {"level": 1200}}
    old.execute("INSERT INTO outbox(item_id, kind, priority, device_id, observed_at, mono, boot_id, raw, body,"
                " pending, accepted_at) VALUES ('river-01:0:7', 'reading', 0, 'river-01', 1.0, 1.0,"
                " '8f0c2e4a-0000-0000-0000-000000000000', x'01', ?, 1, 1.0)", (json.dumps(item),))
    # Delivered: two acked together at 5.0, and one that never waited for an uplink (no delivered_at).
    for n, delivered_at in ((8, 5.0), (9, 5.0), (10, None)):
        old.execute("INSERT INTO outbox(item_id, kind, priority, body, pending, accepted_at, delivered_at)"
                    " VALUES (?, 'reading', 0, '{}', 0, 2.0, ?)", (f"river-01:0:{n}", delivered_at))
    old.commit()
    old.close()
    store = Store(path)
    assert store.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    indexes = {name for (name,) in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"queue_urgent", "outbox_uncounted"} <= indexes and not {"outbox_pending", "outbox_item"} & indexes
    assert store.conn.execute("SELECT seq, priority, pending FROM queue").fetchall() == [(1, 0, 1)]
    assert store.conn.execute("SELECT first, last, at FROM deliveries").fetchall() == [(4, 4, 2.0), (2, 3, 5.0)]
    columns = {r[1] for r in store.conn.execute("PRAGMA table_info(outbox)")}
    assert "pending" not in columns and "delivered_at" not in columns
    assert store.conn.execute("SELECT seq, pending, delivered_at FROM outbox_items ORDER BY seq").fetchall() == [
        (1, 1, None), (2, 0, 5.0), (3, 0, 5.0), (4, 0, 2.0)]
    (text,) = store.conn.execute("SELECT item FROM outbox_items WHERE seq = 1").fetchone()
    assert json.loads(text) == item
    store.close()


def schema_1(path: Path) -> sqlite3.Connection:
    """A database as edgegw's first schema made it, open for the test to fill."""
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_1)
    return old


def test_a_conversion_the_disk_has_no_room_for_is_refused_before_it_writes_anything(tmp_path, monkeypatch):
    config = write_config(tmp_path, tmp_path / "no-radio", None)
    path = tmp_path / "data" / "edgegw.db"
    path.parent.mkdir()
    old = schema_1(path)
    old.execute("INSERT INTO outbox(item_id, kind, priority, body, pending, accepted_at)"
                " VALUES ('r:0:1', 'reading', 0, '{}', 1, 1.0)")
    old.commit()
    old.close()
    # A full SD card cannot be made here: the one question the store asks the OS gets a full one's answer.
    full = type(shutil.disk_usage(tmp_path))(total=2**30, used=2**30, free=0)
    monkeypatch.setattr(edgegw.store.schema.shutil, "disk_usage", lambda _: full)
    with pytest.raises(StoreError, match=r"needs about \d+ MB free on that filesystem; 0 MB is free"):
        Store(path)
    result = CliRunner().invoke(cli, ["run", "-c", str(config)])
    assert result.exit_code == 1 and "Make room and start again (nothing was changed)" in result.stderr
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    assert db.execute("SELECT item_id, pending FROM outbox").fetchall() == [("r:0:1", 1)]
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'queue'").fetchall()
    db.close()


OUTBOX = Store(Path(":memory:"))
OUTBOX.describe("gw-x", {"water_level": {"level": "mm"}})

SCHEMA_1 = """
CREATE TABLE [meta] ([key] TEXT PRIMARY KEY, [value] TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE [outbox] ([seq] INTEGER PRIMARY KEY, [item_id] TEXT NOT NULL, [kind] TEXT NOT NULL,
  [priority] INTEGER NOT NULL, [device_id] TEXT, [observed_at] FLOAT, [mono] FLOAT, [boot_id] TEXT, [raw] BLOB,
  [body] TEXT NOT NULL, [pending] INTEGER NOT NULL, [accepted_at] FLOAT NOT NULL, [delivered_at] FLOAT);
CREATE UNIQUE INDEX outbox_item ON outbox(item_id);
CREATE INDEX outbox_pending ON outbox(priority DESC, seq) WHERE pending != 0;
"""


def test_the_item_view_is_made_afresh_at_every_start(tmp_path):
    store = Store(tmp_path / "edgegw.db")
    store.conn.execute("DROP VIEW outbox_items")
    store.conn.execute("CREATE VIEW outbox_items AS SELECT o.*, 'an older format' AS item FROM outbox o")
    store.close()
    store = Store(tmp_path / "edgegw.db")
    store.describe("gw-x", {"water_level": {"level": "mm"}})
    store.begin()
    store.add_reading(Reading("d:0:1", "d", "water_level", 1.0, "synced", 1, {"level": 5}, "lora0", 21,
                              None, None, 1.0, "boot"), b"\x01", 1, 0.0)
    store.commit()
    (text,) = store.conn.execute("SELECT item FROM outbox_items").fetchone()
    assert json.loads(text)["values"] == {"level": 5}
    store.close()


def test_a_big_acknowledgement_keeps_its_statement_journal_off_the_disk(tmp_path):
    # Past 64 KiB SQLite spills a statement journal to a temp file (with PrivateTmp, on the SD card),
    # unlinked at once but open until the transaction ends: look for it among our open files.
    store = Store(tmp_path / "edgegw.db")
    bit = store.register_uplinks(["a"])["a"]
    store.begin()
    for i in range(3000):
        store.add_item(f"d:0:{i}", "reading", 0, "d", 2e9 + i, 0.0, "b", b"x" * 50, "{}", bit, 1.0)
    store.commit()
    store.begin()
    store.acked(bit, list(range(1, 3001)), 2.0)
    open_files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            open_files.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            pass
    store.commit()
    store.close()
    assert not [f for f in open_files if "etilqs" in f]  # SQLite's temp file prefix


def test_an_uplink_removed_from_the_config_lets_go_of_its_rows(tmp_path):
    store = Store(tmp_path / "edgegw.db")
    bits = store.register_uplinks(["a", "b"])
    a, b = bits["a"], bits["b"]
    store.begin()
    for item_id, pending in [("a-only", a), ("b-only", b), ("both", a | b), ("done", 0)]:
        store.add_item(item_id, "reading", 0, "d", 2e9, 0.0, "b", None, "{}", pending, 1.0)
    store.commit()
    assert store.register_uplinks(["a"]) == {"a": a}
    rows = {r[0]: (r[1], r[2]) for r in store.conn.execute("SELECT item_id, pending, delivered_at FROM outbox_items")}
    assert rows["a-only"] == (a, None) and rows["both"] == (a, None)
    assert rows["b-only"][0] == 0 and rows["b-only"][1] is not None  # nobody waits for it: delivered
    assert rows["done"] == (0, 1.0)  # no uplink to wait for: delivered as it was accepted


def test_a_reading_in_a_commit_of_its_own_appends_little_to_the_wal(tmp_path):
    # At field rate every reading is a commit, and a commit appends each page it changed, whole: the
    # outbox, its indexes, the device's registry row. The page size decides what the SD card writes.
    path = tmp_path / "edgegw.db"
    store = Store(path)
    store.describe("gw-x", {"water_level": {"level": "mm"}})
    bit = store.register_uplinks(["a"])["a"]
    wal = path.with_name(path.name + "-wal")
    sizes = []
    for i in range(1, 40):
        before = wal.stat().st_size
        store.begin()
        store.add_reading(Reading(f"d:0:{i}", "d", "water_level", 2e9 + i, "synced", i, {"level": 5}, "lora0", 21,
                                  -80.0, 7.5, 1.0, "boot"), b"\x01" * 9, bit, 2e9 + i)
        store.touch(store.device("d", "lora0", 21, "water_level", 2e9))
        store.commit()
        sizes.append(wal.stat().st_size - before)
    store.close()
    # Three pages per commit, six when a page splits: 3 KiB, where 4 KiB pages made it 12 KiB.
    assert max(sizes[5:]) <= 6 * (1024 + 24)


def test_an_acknowledgement_leaves_the_rows_it_acknowledges_unwritten(tmp_path):
    # The rows are most of what a burst writes; an ack that rewrote them (and their indexes) wrote
    # it all again, to the WAL and again at the checkpoint.
    path = tmp_path / "edgegw.db"
    store = Store(path)
    bit = store.register_uplinks(["a"])["a"]
    store.begin()
    for i in range(500):
        store.add_reading(Reading(f"d:0:{i}", "d", "water_level", 2e9 + i, "synced", i, {"level": i}, "lora0", 21,
                                  -80.0, 7.5, 1.0, "boot"), b"\x01" * 9, bit, 2e9)
    store.commit()
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.begin()
    store.acked(bit, list(range(1, 501)), 2e9 + 1)
    store.commit()
    wal = path.with_name(path.name + "-wal").read_bytes()
    page = store.conn.execute("PRAGMA page_size").fetchone()[0]
    written = {int.from_bytes(wal[at:at + 4], "big") for at in range(32, len(wal), page + 24)}
    outbox = {p for (p,) in store.conn.execute("SELECT pageno FROM dbstat WHERE name LIKE 'outbox%'")}
    store.close()
    assert written and not written & outbox


def test_the_counts_status_shows_are_written_every_so_often_and_at_close_not_in_every_commit(tmp_path, monkeypatch):
    # At field rate they were two of the eight pages a reading and its ack appended to the WAL.
    path = tmp_path / "edgegw.db"
    store = Store(path)
    store.register_uplinks(["a"])
    for i in range(5):
        store.begin()
        store.frame_heard("lora0", 100.0 + i)
        store.uplink_delivered("a", 3, 200.0 + i)
        store.commit()
    store.begin()
    store.frame_heard("lora0", 999.0)
    store.uplink_delivered("a", 7, 999.0)
    store.rollback()  # a group that was not accepted was not heard either

    def counts() -> tuple:
        db = sqlite3.connect(path)
        try:
            return (db.execute("SELECT frames, last_frame_at FROM sources WHERE name = 'lora0'").fetchone(),
                    db.execute("SELECT batches, items, last_ack_at FROM uplinks WHERE name = 'a'").fetchone())
        finally:
            db.close()

    assert counts() == (None, (0, 0, None))
    store.close()
    assert counts() == ((5, 104.0), (5, 15, 204.0))

    # What status shows as the source's last frame is current all the same: it also reads the
    # rows every commit writes (the device that sent it, or the reject it was).
    store = Store(path)
    store.begin()
    store.source_state("lora0", "receiving", "", 100.0)
    device = store.device("d", "lora0", 21, "water_level", 100.0)
    device.last_seen = 110.0
    store.touch(device)
    store.frame_heard("lora0", 110.0)
    store.commit()
    assert [(s["frames"], s["last_frame_at"]) for s in edgegw.store.status(path)["sources"]] == [(5, 110.0)]
    store.begin()
    store.frame_heard("lora0", 120.0)
    store.add_reject("lora0", "unknown_device", "no device at 9", 9, None, b"x", 120.0)
    store.commit()
    assert [(s["frames"], s["last_frame_at"]) for s in edgegw.store.status(path)["sources"]] == [(5, 120.0)]
    store.close()
    assert counts()[0] == (7, 120.0)

    monkeypatch.setattr(edgegw.store.states, "COUNTS_EVERY", 0.0)
    store = Store(path)
    store.begin()
    store.frame_heard("lora0", 125.0)
    store.commit()
    assert counts() == ((8, 125.0), (5, 15, 204.0))
    store.close()


def _reading(i: int, counter: int | None = None, device: str = "d") -> Reading:
    counter = i if counter is None else counter
    return Reading(f"{device}:0:{i}", device, "water_level", 2e9 + i, "synced", counter, {"level": i}, "lora0", 21,
                   -80.0, 7.5, 1.0, "boot")


def test_readings_of_the_open_group_are_seen_by_everything_that_reads_the_outbox(tmp_path):
    # Readings with a counter are written together at the next flush: nothing in the writer's
    # transaction may see the tables without them.
    store = Store(tmp_path / "edgegw.db")
    bit = store.register_uplinks(["a"])["a"]
    store.begin()
    seqs = [store.add_reading(_reading(i), bytes([i]), bit, 5.0) for i in range(1, 4)]
    assert store.frame_at(seqs[1], "d:0:2") == (b"\x02", 5.0)  # a copy within its own group is found
    seqs.append(store.add_reading(_reading(4), b"\x04", bit, 5.0))
    counterless = Reading("d:h:1", "d", "water_level", 2e9, "synced", None, {"level": 0}, "lora0", 21,
                          None, None, 1.0, "boot")
    seqs.append(store.add_reading(counterless, b"\x00", bit, 5.0))
    assert store.add_reading(counterless, b"\x00", bit, 5.0) is None  # its copy, found by the index
    seqs.append(store.add_reading(_reading(5), b"\x05", bit, 5.0))
    assert store.restamp("boot", 1e9) == 6  # every unsent reading of this boot, the group's included
    store.commit()
    assert seqs == sorted(seqs) == list(range(1, 7))
    rows = store.conn.execute("SELECT seq, item_id, pending FROM outbox_items ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [(s, i, bit) for s, i in zip(seqs, ["d:0:1", "d:0:2", "d:0:3", "d:0:4",
                                                                          "d:h:1", "d:0:5"])]
    store.close()


def test_seqs_follow_other_writers_and_a_rolled_back_group_leaves_nothing(tmp_path):
    path = tmp_path / "edgegw.db"
    store = Store(path)
    bit = store.register_uplinks(["a"])["a"]
    store.begin()
    store.add_reading(_reading(1), b"\x01", bit, 5.0)
    store.commit()
    # Between two groups another process adds a row (as `edgegw outbox retry` does): the next
    # reading's seq comes after it, where a seq counted on in memory would collide with it.
    other = sqlite3.connect(path)
    other.execute("INSERT INTO outbox(item_id, kind, priority, body, accepted_at) VALUES ('x', 'alarm', 2, '{}', 1)")
    other.commit()
    other.close()
    for i, keep in [(3, True), (4, False), (5, True)]:
        store.begin()
        store.add_reading(_reading(i), bytes([i]), bit, 5.0)
        store.commit() if keep else store.rollback()
    rows = store.conn.execute("SELECT seq, item_id FROM outbox ORDER BY seq").fetchall()
    assert [tuple(r) for r in rows] == [(1, "d:0:1"), (2, "x"), (3, "d:0:3"), (4, "d:0:5")]
    assert [s for (s,) in store.conn.execute("SELECT seq FROM queue")] == [1, 3, 4]
    store.close()


def test_readings_without_an_uplink_are_delivered_as_they_are_accepted(tmp_path):
    store = Store(tmp_path / "edgegw.db")
    store.begin()
    store.add_reading(_reading(1), b"\x01", 0, 5.0)
    store.commit()
    assert store.conn.execute("SELECT delivered_at, pending FROM outbox_items").fetchone() == (5.0, 0)
    store.close()
