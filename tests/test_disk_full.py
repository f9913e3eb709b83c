"""A full filesystem never discards an alarm (issue 16, point 3).

Real SQLite on a real, small filesystem (a tmpfs of a few MB, mounted for the test) filled by
another file, as a log or a core dump fills an SD card. Mounting needs root: CI runs as root, and
elsewhere these tests skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from edgegw.items import BATCH_SCHEMA_FILE
from edgegw.model import Alarm
from edgegw.store import Store, disk_usage, status
from edgegw.store.housekeeping import RESERVE_BYTES

BODY = json.dumps({"type": "reading", "pad": "x" * 300})
VALIDATOR = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()))


@pytest.fixture
def small_fs(tmp_path):
    """A 24 MB tmpfs of its own at ``tmp_path / "data"`` (the daemon's data directory in
    tests.gateway's config): its free space is what these tests fill, not the host's."""
    mnt = tmp_path / "data"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # a process of the test still holds a file


def fill_up(directory: Path, leave: int = 0) -> Path:
    """Another file takes the free space of the filesystem, all of it but ``leave`` bytes."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\xa5" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\xa5" * 1024)
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def alarm(n: int) -> Alarm:
    return Alarm(f"trap-01:0:{n}:sprung", "trap_sprung", "high", "trap-01", "trap", 1_790_000_000.0 + n,
                 "trap sprung", reading_id=f"trap-01:0:{n}", opens=True)


def backlog(store: Store, delivered: int, pending: int, alarms_every: int) -> None:
    """Readings piled up during an outage: the first ``delivered`` acknowledged, an alarm among
    every ``alarms_every`` of the pending ones."""
    store.register_uplinks(["town"])
    for start in range(0, delivered + pending, 1000):
        store.begin()
        for i in range(start, min(start + 1000, delivered + pending)):
            if i >= delivered and i % alarms_every == 0:
                store.add_alarm(alarm(i), 1, float(i))
            else:
                store.add_item(f"r{i}", "reading", 0, "river-01", float(i), 0.0, "b", b"\x01" * 9, BODY,
                               0 if i < delivered else 1, float(i))
        store.commit()


def add_group(store: Store, first: int, size: int) -> None:
    """One group as the daemon commits it: readings, and the alarm one of them raised."""
    store.begin()
    store.add_alarm(alarm(first), 1, float(first))
    for i in range(first + 1, first + size):
        store.add_item(f"r{i}", "reading", 0, "river-01", float(i), 0.0, "b", b"\x01" * 9, BODY, 1, float(i))
    store.commit()


def commit_until_full(store: Store, first: int, size: int, groups: int = 100) -> int:
    """Commit groups until one fails for want of space; the first item of the failed group."""
    for _ in range(groups):
        try:
            add_group(store, first, size)
        except sqlite3.OperationalError as exc:
            assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL, exc
            store.rollback()
            return first
        first += size
    raise AssertionError("the filesystem never filled")


def outbox(store: Store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for kind, item_id in store.conn.execute("SELECT kind, item_id FROM outbox ORDER BY seq"):
        out.setdefault(kind, []).append(item_id)
    return out


def cli_status(config: Path) -> tuple[str, dict]:
    """``edgegw status``, as text and as JSON."""
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgegw", "status", *args, "-c", str(config)],
                              capture_output=True, text=True, timeout=60, check=True)
    return run().stdout, json.loads(run("--json").stdout)


def test_a_commit_that_failed_on_a_full_filesystem_commits_after_room_is_made_alarms_and_all(small_fs):
    store = Store(small_fs / "gw.db")
    backlog(store, delivered=300, pending=20_000, alarms_every=50)
    store.keep_reserve()
    assert store.reserve.stat().st_size == RESERVE_BYTES
    raised = {a for (a,) in store.conn.execute("SELECT id FROM alarms")}
    fill_up(small_fs)

    # Large groups: the room one drop makes (a chunk of rows) is not enough at once, so the
    # policy's order shows across the tries, as in a burst.
    failed = commit_until_full(store, 100_000, 3000)
    tries = []
    for _ in range(50):
        tries.append(store.make_room(2.0))
        try:
            add_group(store, failed, 3000)
            break
        except sqlite3.OperationalError as exc:
            assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL, exc
            store.rollback()
    else:
        raise AssertionError(f"the group never committed: {tries}")

    # The reserve went first, with the delivered items, before any unsent reading.
    assert tries[0] == {"reserve": RESERVE_BYTES, "delivered": 300}
    assert not store.reserve.exists()
    dropped = sum(t.get("reading", 0) for t in tries)
    assert all(t.keys() <= {"reading"} for t in tries[1:])
    items = outbox(store)
    raised |= {alarm(n).alarm_id for n in range(100_000, failed + 1, 3000)}
    assert set(items["alarm"]) == raised == {a for (a,) in store.conn.execute("SELECT id FROM alarms")}
    assert f"r{failed + 2999}" in items["reading"]  # the group is there whole
    # The oldest went: what is left of the backlog's readings is its newest, none missing.
    kept = [int(i[1:]) for i in items["reading"] if int(i[1:]) < 100_000]
    assert kept == [i for i in range(300 + dropped + 1, 20_300) if i % 50] [-len(kept):]
    assert len(kept) + dropped == 20_000 - 20_000 // 50
    assert status(store.path)["dropped"] == ({"reading": dropped} if dropped else {})
    store.close()


def test_the_cap_keeps_min_free_delivered_first_then_the_oldest_readings_never_alarms(small_fs):
    store = Store(small_fs / "gw.db")
    backlog(store, delivered=3000, pending=12_000, alarms_every=40)
    store.keep_reserve()  # as the daemon's first cap check does
    alarms = set(outbox(store)["alarm"])
    min_free = 8_000_000
    fill_up(small_fs, leave=1_000_000)  # another file leaves less than min_free, the reserve counted
    d = disk_usage(store.conn, store.path)
    assert d["free_bytes"] + d["reserve_bytes"] + d["reusable_bytes"] < min_free

    steps = []
    for _ in range(1000):
        steps.append(store.enforce_cap(10**12, 2.0, limit=500, min_free=min_free))
        if not store.capping:
            break
    kinds = [k for s in steps for k in s if k != "reserve"]
    assert kinds.index("reading") > max(i for i, k in enumerate(kinds) if k == "delivered")
    assert sum(s.get("delivered", 0) for s in steps) == 3000
    dropped = sum(s.get("reading", 0) for s in steps)
    assert dropped > 0
    d = disk_usage(store.conn, store.path)
    assert d["free_bytes"] + d["reusable_bytes"] >= min_free  # the room is inside the database now
    items = outbox(store)
    assert set(items["alarm"]) == alarms
    kept = [int(i[1:]) for i in items["reading"]]
    assert kept == [i for i in range(3000, 15_000) if i % 40][-len(kept):]  # the oldest went
    assert len(kept) + dropped == 12_000 - 12_000 // 40
    assert status(store.path)["dropped"] == {"reading": dropped}

    # The room is used: commits go on in the database's own free pages, with no room made for them.
    for n in range(5):
        add_group(store, 100_000 + 100 * n, 100)
    store.close()


def test_only_alarms_left_the_commit_waits_and_nothing_is_dropped(small_fs):
    store = Store(small_fs / "gw.db")
    store.register_uplinks(["town"])
    n = 0
    while shutil.disk_usage(small_fs).free > 12_000_000:  # alarms only, a filesystem half full of them
        store.begin()
        for _ in range(500):
            store.add_alarm(alarm(n), 1, float(n))
            n += 1
        store.commit()
    store.keep_reserve()
    fill_up(small_fs)
    first = n
    while True:
        try:
            store.begin()
            for _ in range(500):
                store.add_alarm(alarm(n), 1, float(n))
                n += 1
            store.commit()
            first = n
        except sqlite3.OperationalError as exc:
            assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL, exc
            store.rollback()
            n = first
            break
    assert store.make_room(2.0) == {"reserve": RESERVE_BYTES}
    for _ in range(20):
        freed = store.make_room(2.0)
        if not freed:
            break
    assert freed == {}
    assert store.conn.execute("SELECT count(*) FROM outbox WHERE kind = 'alarm'").fetchone()[0] == first
    store.close()


def test_the_daemon_on_a_full_disk_commits_and_raises_every_alarm_and_says_so(tmp_path, small_fs,
                                                                              persistent_mosquitto):
    from edgegw.radio.emulator import RylrEmulator
    from tests.broker import Subscriber
    from tests.gateway import Daemon, Sender, wait_until, write_config

    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    # min_free under the reserve: the cap leaves the filling to the commits, the path of issue 16.
    config = write_config(tmp_path, emulator.link, persistent_mosquitto.port, log_level="info",
                          extra='\n[store]\nmin_free = "1MB"\n')
    config.write_text('health_every = "2s"\n' + config.read_text())
    daemon = Daemon(config)
    sub = Subscriber("127.0.0.1", persistent_mosquitto.port, "test/gw-test/batches", client_id="platform")
    # A frame the module could not pass on while the daemon did not read is the radio's loss, not
    # the gateway's: it is not counted as sent.
    sender = Sender(emulator, strict=False)

    def accepted() -> int:
        daemon.check_alive()  # a crash fails the test at once, not at a timeout
        return sum(d["readings"] for d in daemon.status().get("devices", []))

    try:
        sub.wait_subscribed(timeout=20)
        daemon.start().wait_receiving()
        sender.quiet(300)
        wait_until(lambda: daemon.status().get("outbox", {}).get("delivered", 0) >= 300, 30, "300 delivered")
        persistent_mosquitto.stop()  # the uplink is down: readings pile up
        sender.burst(3000)
        wait_until(lambda: accepted() >= len(sender.sent), 60, "the backlog committed")
        wait_until(lambda: (small_fs / "edgegw.reserve").exists(), 30, "the reserve made")
        fill_up(small_fs)
        filled_at = time.time()

        # Frames keep coming, with a trap sprung in each burst: until a commit has failed for want
        # of space, and then until the room made then is used up and unsent readings had to go.
        full = False
        for _ in range(60):
            sender.quiet(600)  # the trap armed: the next frame springs it
            sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.3})
            wait_until(lambda: accepted() >= len(sender.sent), 60, f"frames committed (log: {daemon.log_tail()})")
            full = full or "disk full: a commit failed" in daemon.log.read_text()
            if full and daemon.status()["dropped"].get("reading"):
                break
        assert full, "no commit failed: the filesystem never filled"
        assert not (small_fs / "edgegw.reserve").exists()  # given back to make room

        sprung = [rid for rid, v in sender.sent.items() if v.get("state") == "sprung"]
        db = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)
        alarms = [json.loads(b) for (b,) in db.execute("SELECT body FROM alarms WHERE kind = 'trap_sprung'")]
        logged = db.execute("SELECT count(*) FROM alarms").fetchone()[0]
        queued = db.execute("SELECT count(*) FROM outbox WHERE kind = 'alarm'").fetchone()[0]
        dropped = dict(db.execute("SELECT kind, count FROM drops WHERE reason = 'disk_cap'"))
        left = db.execute("SELECT count(*) FROM outbox WHERE kind = 'reading'").fetchone()[0]
        db.close()
        assert sorted(a["reading"] for a in alarms) == sorted(sprung)  # every sprung trap raised its alarm
        assert queued == logged  # and each waits in the outbox for the platform
        # Nothing heard was lost: each reading is in the outbox, delivered and purged at the cap, or
        # dropped there (the oldest, counted).
        assert accepted() == len(sender.sent)
        assert dropped.get("reading", 0) > 0 and "alarm" not in dropped
        assert left + dropped["reading"] + 300 == len(sender.sent)  # 300: delivered, the first to go

        # The heartbeat status reads is rewritten every 10 s: the episode's end shows within that.
        text, st = wait_until(lambda: (r := cli_status(config))[1]["disk"]["state"] != "full" and r, 30,
                              "status no longer saying the disk is full")
        assert st["disk"]["state"] == "low" and "disk     LOW" in text  # the other file is still there
        # The heartbeat, on the same filesystem, is still written (once every HEARTBEAT_EVERY).
        wait_until(lambda: cli_status(config)[1]["daemon"]["heartbeat"]["at"] > filled_at, 30,
                   "a heartbeat written on the full filesystem")
        assert st["disk"]["last_full"]["freed"] and "last FULL" in text
        full = [e for e in daemon.log_events() if e["event"].startswith("disk full: a commit failed")]
        assert full[0]["freed"] == {"reserve": RESERVE_BYTES, "delivered": 300}  # the reserve first

        persistent_mosquitto.start()
        sub.wait_subscribed(timeout=20)

        def received(kind: str) -> list[dict]:
            return [i for b in sub.json_messages() for i in b["items"] if i["type"] == kind]
        wait_until(lambda: {a["reading"] for a in received("alarm") if a["alarm"] == "trap_sprung"} >= set(sprung),
                   60, "every trap-sprung alarm at the platform")
        health = wait_until(lambda: [h for h in received("health") if h.get("disk_state") == "low"], 30,
                            "a health report saying the disk is low")
        for batch in sub.json_messages():
            VALIDATOR.validate(batch)
        assert health[-1]["disk_free_bytes"] < 2 * RESERVE_BYTES  # no room to make the reserve again
        assert daemon.stop() == 0
    finally:
        sub.close()
        daemon.stop()
        emulator.unplug()


def test_with_only_alarms_left_the_daemon_waits_says_disk_full_and_commits_once_there_is_room(tmp_path, small_fs):
    from edgegw.radio.emulator import RylrEmulator
    from edgegw.running import daemon_state
    from tests.broker import free_port
    from tests.gateway import Daemon, Sender, wait_until, write_config

    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    # An uplink that never comes up: with none at all, alarms would count as delivered, and go first.
    config = write_config(tmp_path, emulator.link, free_port(), log_level="warning",
                          extra='\n[store]\nmin_free = "1MB"\n')
    daemon = Daemon(config)
    sender = Sender(emulator, strict=False)  # while the writer waits, the module's buffer overflows

    try:
        daemon.start().wait_receiving()
        wait_until(lambda: (small_fs / "edgegw.reserve").exists(), 30, "the reserve made")
        filler = fill_up(small_fs)
        # Only traps, each frame an alarm (sprung, re-armed): their readings go, the alarms fill the disk.
        def waiting() -> bool:  # as the heartbeat says it (every 10 s): the log says it once a minute
            daemon.check_alive()
            return bool((daemon_state(small_fs).get("heartbeat") or {}).get("disk_full"))
        def kinds() -> dict[str, int]:
            db = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)
            try:
                return dict(db.execute("SELECT kind, count(*) FROM outbox GROUP BY kind").fetchall())
            finally:
                db.close()
        for _ in range(100):
            for _ in range(20_000):
                if not sender.send("trap-01"):
                    break  # the module's buffer is full: the daemon stopped reading, its writer waits
            if waiting() and not kinds().get("reading"):
                break  # every reading went, and the alarms wait for room
        else:
            raise AssertionError("the writer never had to wait with only alarms left")
        text, _ = wait_until(lambda: (r := cli_status(config))[1]["disk"]["state"] == "full" and r, 30,
                              "status saying the disk is full")
        assert "DISK FULL since" in text and "disk     FULL" in text
        assert kinds()["alarm"] > 0 and not kinds().get("reading")  # every reading went; no alarm did

        filler.unlink()  # a maintainer makes room
        wait_until(lambda: any(e["event"].startswith("disk no longer full") for e in daemon.log_events()), 30,
                   "the waiting group committed")
        sprung = {rid for rid, v in sender.sent.items() if v["state"] == "sprung"}

        def raised() -> set[str]:
            daemon.check_alive()
            db = sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)
            try:
                return {r for (r,) in db.execute("SELECT json_extract(body, '$.reading') FROM alarms"
                                                 " WHERE kind = 'trap_sprung'")}
            finally:
                db.close()
        # Frames the module passed on while the writer waited are read and committed now: each
        # sprung trap has its alarm (the module's own buffer may have lost frames: not sent, here).
        wait_until(lambda: raised() == sprung, 60, "every sprung trap's alarm")
        assert daemon.stop() == 0
    finally:
        daemon.stop()
        emulator.unplug()


def test_a_start_on_a_full_filesystem_gives_back_the_reserve_or_says_so_in_one_line(tmp_path, small_fs):
    # A power cut while the SD card was full: the next start could not even open the WAL (a traceback,
    # exit 1, a restart loop), so no frame was read and no siren could sound.
    from edgegw.radio.emulator import RylrEmulator
    from tests.gateway import Daemon, Sender, wait_until, write_config

    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    config = write_config(tmp_path, emulator.link, None, log_level="info", extra='\n[store]\nmin_free = "1MB"\n')
    daemon = Daemon(config)
    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator, strict=False)
        sender.quiet(30)
        daemon.wait_committed(30)
        wait_until(lambda: (small_fs / "edgegw.reserve").exists(), 30, "the reserve made")
        assert daemon.stop() == 0
        fill_up(small_fs)
        daemon.start()
        wait_until(lambda: "the reserve is given back" in daemon.log.read_text(), 20, "the reserve given back")
        # The first run's "receiving" is still in the database: wait for this run's own module set-up.
        wait_until(lambda: daemon.log.read_text().count('"radio configured"') >= 2, 20, "the module set up again")
        sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.3})
        daemon.wait_committed(31)  # receiving and committing on the room the reserve left
        assert daemon.stop() == 0

        # Nothing of ours left to give back: one line, and an exit status systemd restarts.
        for name in ("edgegw.db", "edgegw.db-wal", "edgegw.db-shm", "edgegw.lock", "edgegw.heartbeat"):
            (small_fs / name).unlink(missing_ok=True)
        fill_up(small_fs)
        daemon.start()
        assert daemon.proc is not None and daemon.proc.wait(30) == 1
        said = daemon.log.read_text().splitlines()[-1]
        assert said.startswith(f"Error: the filesystem of the data directory {small_fs} is full") and "Traceback" not in \
            daemon.log.read_text().split("gateway stopped")[-1]
    finally:
        daemon.stop()
        emulator.unplug()
