"""Damaged database files (issue 16, point 6): the WAL checker against what SQLite really recovers,
and the real daemon started on garbage, a bad header, a damaged WAL and an unwritable data dir."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.dbfile import FRAME_HEADER, WAL_HEADER, check_wal
from edgegw.items import BATCH_SCHEMA_FILE
from tests.broker import Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config

VALIDATOR = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()))
PAGE = 1024
COMMITS = 40


@pytest.fixture(scope="module")
def wal_files(tmp_path_factory) -> dict:
    """A real database with COMMITS one-row transactions in its WAL (a connection kept open, no
    checkpoint), copied with its -wal and -shm while open, as a kill -9 leaves them; and the size
    of the WAL after each commit, measured on the file, not by our parser."""
    d = tmp_path_factory.mktemp("wal")
    conn = sqlite3.connect(d / "x.db", isolation_level=None)
    conn.execute(f"PRAGMA page_size={PAGE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (n INTEGER, pad BLOB)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table in the database file, the WAL empty
    conn.execute("PRAGMA wal_autocheckpoint=0")
    ends = []
    for n in range(COMMITS):
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(100 + 97 * n % 900)))  # 1-2 pages each
        ends.append((d / "x.db-wal").stat().st_size)
    files = {s: (d / f"x.db{s}").read_bytes() for s in ("", "-wal", "-shm")}
    conn.close()
    return {"files": files, "ends": ends}


def _damaged_copy(tmp: Path, files: dict[str, bytes], wal: bytes, shm: bool) -> Path:
    tmp.mkdir()
    (tmp / "x.db").write_bytes(files[""])
    (tmp / "x.db-wal").write_bytes(wal)
    if shm:
        (tmp / "x.db-shm").write_bytes(files["-shm"])
    return tmp / "x.db"


def _rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    finally:
        conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), shm=st.booleans())
def test_a_cut_wal_reports_what_sqlite_keeps_and_the_committed_frames_it_drops(wal_files, tmp_path_factory,
                                                                               data, shm):
    wal, ends = wal_files["files"]["-wal"], wal_files["ends"]
    cut = data.draw(st.integers(0, len(wal)))
    db = _damaged_copy(tmp_path_factory.mktemp("cut") / "d", wal_files["files"], wal[:cut], shm)
    report = check_wal(db)
    survivors = sum(1 for end in ends if end <= cut)
    assert report.kept_commits == survivors == _rows(db)  # what SQLite itself recovers
    assert report.discarded_commits == 0  # no whole commit after the cut: what is gone cannot be counted...
    frames = (len(wal) - WAL_HEADER) // (PAGE + FRAME_HEADER)
    if shm and cut >= WAL_HEADER:  # ...except by the -shm, which still says how many frames were committed
        assert report.committed_frames == frames
        assert report.loses_committed == (survivors < COMMITS)
    # Anything past the last commit is reported; so are commits the -shm knows of and the file lost,
    # even when the cut fell on a commit's end (hypothesis found it at the bare header).
    lost_by_shm = shm and cut >= WAL_HEADER and survivors < COMMITS
    assert report.discards == (cut not in {0, WAL_HEADER, *ends} or lost_by_shm)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_byte_reports_every_commit_sqlite_drops(wal_files, tmp_path_factory, data):
    wal = bytearray(wal_files["files"]["-wal"])
    at = data.draw(st.integers(0, len(wal) - 1), label="offset")
    wal[at] ^= data.draw(st.integers(1, 255), label="xor")
    db = _damaged_copy(tmp_path_factory.mktemp("flip") / "d", wal_files["files"], bytes(wal), False)
    report = check_wal(db)
    rows = _rows(db)
    assert report.kept_commits == rows  # exactly what SQLite keeps
    assert rows < COMMITS and report.loses_committed and report.problem  # every flip loses something: said
    lost = COMMITS - rows
    offset_in_frame = (at - WAL_HEADER) % (PAGE + FRAME_HEADER)
    if at >= WAL_HEADER and 4 <= offset_in_frame < 8:
        # The flip hit a frame's "database size after commit" itself: that frame may read as a commit
        # when it is not, or the reverse.
        assert abs(report.discarded_commits - lost) <= 1
    else:
        assert report.discarded_commits == lost


def test_an_intact_wal_and_a_missing_one_report_nothing(wal_files, tmp_path):
    db = _damaged_copy(tmp_path / "d", wal_files["files"], wal_files["files"]["-wal"], True)
    report = check_wal(db)
    assert not report.discards and report.problem is None
    assert report.kept_commits == COMMITS == _rows(db)
    assert not check_wal(tmp_path / "none.db").discards


# -- the real daemon ------------------------------------------------------------------------------------------


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegw", *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=60)


def _alarms_received(sub: Subscriber) -> list[dict]:
    batches = sub.json_messages()
    for batch in batches:
        VALIDATOR.validate(batch)
    return [i for b in batches for i in b["items"] if i["type"] == "alarm" and i["alarm"] == "database_damaged"]


def _health(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    try:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM outbox WHERE kind = 'health'")]
    finally:
        conn.close()


def _start(tmp_path: Path, emulator, broker) -> tuple[Daemon, Subscriber]:
    config = write_config(tmp_path, emulator.link, broker.port, log_level="info")
    config.write_text('health_every = "1s"\n' + config.read_text())
    sub = Subscriber("127.0.0.1", broker.port, "test/gw-test/batches")
    sub.wait_subscribed(timeout=20)
    return Daemon(config), sub


GARBAGE = {
    "random bytes": lambda: os.urandom(64 * 1024),
    # A real database whose header's magic string is damaged.
    "bad header": lambda: b"SQLite format 4\x00" + _small_db()[16:],
}


def _small_db() -> bytes:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (n)")
    data = conn.serialize()
    conn.close()
    return data


@pytest.mark.parametrize("damage", list(GARBAGE))
def test_the_daemon_sets_a_damaged_database_aside_and_keeps_receiving(tmp_path, emulator, mosquitto, damage):
    daemon, sub = _start(tmp_path, emulator, mosquitto)
    daemon.db.parent.mkdir()
    garbage = GARBAGE[damage]()
    daemon.db.write_bytes(garbage)
    try:
        daemon.start().wait_receiving()
        Sender(emulator).burst(6)
        daemon.wait_committed(6)
        kept = list(daemon.db.parent.glob("edgegw.db.damaged-*"))
        assert [p.read_bytes() for p in kept] == [garbage]  # kept as it was, not deleted
        st_json = json.loads(_cli(daemon.config, "status", "--json").stdout)
        assert [(d["part"], d["kept_as"]) for d in st_json["damage"]] == [("database", kept[0].name)]
        assert "DAMAGED  database" in _cli(daemon.config, "status").stdout
        (alarm,) = wait_until(lambda: _alarms_received(sub), 20, "the database_damaged alarm")
        assert alarm["severity"] == "high" and alarm["details"]["kept_as"] == kept[0].name
        report = wait_until(lambda: _health(daemon.db), 20, "a health report")[-1]
        VALIDATOR.validate({"schema": "edgegw.batch/1", "batch_id": "0" * 32, "gateway": "gw-test",
                            "sent_at": report["observed_at"], "items": [report]})
        assert report["database_damage"]["kept_as"] == kept[0].name
        assert any(e.get("event", "").startswith("the database is damaged") and e["level"] == "error"
                   for e in daemon.log_events())
        assert "Traceback" not in daemon.log.read_text()
    finally:
        sub.close()
        assert daemon.stop() == 0


def test_a_damaged_wal_is_kept_reported_and_the_daemon_goes_on(tmp_path, emulator, mosquitto):
    daemon, sub = _start(tmp_path, emulator, mosquitto)
    wal = daemon.db.with_name("edgegw.db-wal")
    try:
        subscribed = sub.wait_subscribed(timeout=20)
        mosquitto.stop()  # nothing delivered, so every reading stays in the outbox to be counted
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        sender.burst(30)
        daemon.wait_committed(30)
        daemon.kill()  # the WAL stays, with every commit since the database was made
        data = bytearray(wal.read_bytes())
        frames = (len(data) - WAL_HEADER) // (PAGE + FRAME_HEADER)
        data[WAL_HEADER + frames // 2 * (PAGE + FRAME_HEADER) + FRAME_HEADER + 100] ^= 0x40  # bit rot mid-WAL
        wal.write_bytes(data)
        expected = check_wal(daemon.db)
        assert expected.discarded_commits > 0

        mosquitto.start()
        sub.wait_subscribed(timeout=20, newer_than=subscribed)  # the broker forgot the session: subscribed anew
        daemon.start().wait_receiving()
        sender.burst(6)
        wait_until(lambda: any(d["readings"] >= 2 for d in daemon.status().get("devices", [])) and
                   daemon.status()["outbox"]["pending"] + daemon.status()["outbox"]["delivered"] > 0, 20,
                   "frames received after the restart")
        (copy,) = daemon.db.parent.glob("edgegw.db.wal-damaged-*-wal")
        assert copy.read_bytes() == bytes(data)  # the WAL as found, before SQLite rewrote it
        (damage,) = json.loads(_cli(daemon.config, "status", "--json").stdout)["damage"]
        assert damage["part"] == "wal" and damage["commits"] == expected.discarded_commits
        assert damage["kept_as"] == copy.name
        (alarm,) = wait_until(lambda: _alarms_received(sub), 30, "the database_damaged alarm")
        assert alarm["details"]["commits"] == expected.discarded_commits
        assert wait_until(lambda: _health(daemon.db), 20, "a health report")[-1]["database_damage"]["part"] == "wal"
        assert any(e.get("event", "").startswith("the WAL is damaged") and e["level"] == "error"
                   for e in daemon.log_events())
    finally:
        sub.close()
        daemon.stop()


def test_a_data_dir_that_cannot_be_written_exits_4_with_one_line(tmp_path, emulator):
    config = write_config(tmp_path, emulator.link, None)
    (tmp_path / "data").write_text("a file where the data directory should be")
    done = _cli(config, "run")
    assert done.returncode == 4  # systemd/edgegw.service: RestartPreventExitStatus
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: the data directory")
    assert (tmp_path / "data").read_text() == "a file where the data directory should be"


def test_an_unfinished_transaction_is_noted_but_raises_no_alarm(tmp_path):
    from edgegw.dbfile import Incident, record
    from edgegw.store import Store, health_counts, status

    store = Store(tmp_path / "edgegw.db")
    bits = store.register_uplinks(["broker"])
    tail = Incident("wal", "frames 7-8 are not followed by a commit", "edgegw.db.wal-damaged-x-wal", 1.0, 2, 0, False)
    lost = Incident("wal", "frame 5: its checksum does not match", "edgegw.db.wal-damaged-y-wal", 2.0, 9, 3)
    assert record(store, [tail], "gw", bits["broker"]) == []
    assert health_counts(store.path, bits, 3.0)["database_damage"] is None
    (alarm,) = record(store, [lost], "gw", bits["broker"])
    assert alarm.kind == "database_damaged" and alarm.details["commits"] == 3
    assert health_counts(store.path, bits, 3.0)["database_damage"]["kept_as"] == lost.kept_as
    assert [(d["kept_as"], d["lost"]) for d in status(store.path)["damage"]] == [(lost.kept_as, 1), (tail.kept_as, 0)]
    store.close()


def _damage_last_outbox_leaf(db: Path) -> bytes:
    """Overwrite the outbox's rightmost leaf page, where the next reading goes: the file still opens."""
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (pageno,) = conn.execute("SELECT pageno FROM dbstat WHERE name = 'outbox' AND pagetype = 'leaf'"
                             " ORDER BY path DESC LIMIT 1").fetchone()
    conn.close()
    page = bytes([0x0D]) + os.urandom(page_size - 1)  # a leaf page's type byte, nonsense after it
    with open(db, "r+b") as f:
        f.seek((pageno - 1) * page_size)
        f.write(page)
    return page


def test_damage_found_in_use_exits_5_and_the_restart_sets_the_database_aside(tmp_path, emulator, mosquitto):
    daemon, sub = _start(tmp_path, emulator, mosquitto)
    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        sender.burst(300)
        daemon.wait_committed(300)
        assert daemon.stop() == 0
        page = _damage_last_outbox_leaf(daemon.db)

        # Found at start by quick_check, or by the writer's next commit: either way it exits, restartable.
        daemon.start()
        sender.burst(5)
        assert daemon.proc.wait(30) == 5
        assert "start again to set it aside" in daemon.log.read_text()
        assert any(e.get("event", "").startswith("the database is damaged") and e["level"] == "error"
                   for e in daemon.log_events())

        daemon.start().wait_receiving()  # as systemd restarts it
        kept = [p for p in daemon.db.parent.glob("edgegw.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
        assert len(kept) == 1
        assert page in kept[0].read_bytes()  # the damaged database is kept, not deleted
        assert not daemon.db.with_name("edgegw.db.corrupt").exists()
        sender.burst(6)
        daemon.wait_committed(6)  # the fresh database receives
        assert "DAMAGED  database" in _cli(daemon.config, "status").stdout
        (alarm,) = wait_until(lambda: _alarms_received(sub), 20, "the database_damaged alarm")
        assert alarm["details"]["kept_as"] == kept[0].name and "malformed" in alarm["details"]["problem"]
    finally:
        sub.close()
        daemon.stop()


# SQLite reports damage to the writer's commit, as when a page written long ago has rotted on the card.
WRITER_FINDS_DAMAGE = """
import sqlite3
from edgegw import store
_add_reading = store.Store.add_reading
calls = []
def add_reading(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 3:
        exc = sqlite3.DatabaseError("database disk image is malformed (injected)")
        exc.sqlite_errorcode, exc.sqlite_errorname = sqlite3.SQLITE_CORRUPT, "SQLITE_CORRUPT"
        raise exc
    return _add_reading(self, *args, **kwargs)
store.Store.add_reading = add_reading
"""


def test_damage_found_by_the_writer_exits_5_not_a_loop_of_dropped_groups(tmp_path, emulator, mosquitto):
    daemon, sub = _start(tmp_path, emulator, mosquitto)
    sub.close()
    daemon.inject = WRITER_FINDS_DAMAGE
    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        sender.quiet(3)
        daemon.wait_committed(3)
        sender.quiet(1)
        assert daemon.proc.wait(30) == 5
        assert daemon.db.with_name("edgegw.db.corrupt").exists()
        daemon.inject = ""
        daemon.start().wait_receiving()  # as systemd restarts it: the noted database is set aside
        assert len(list(daemon.db.parent.glob("edgegw.db.damaged-*Z"))) == 1
        assert "injected" in _cli(daemon.config, "status").stdout
    finally:
        daemon.stop()
