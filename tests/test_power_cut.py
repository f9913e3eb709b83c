"""A power cut, unlike kill -9, loses the page cache: prove the fsync discipline on the real daemon.

strace records the daemon's system calls while frames stream in. A reading is announced (its log
line at debug; alarms, actions and acks follow the same path) only after the commit that holds it returned,
and with ``synchronous = "FULL"`` SQLite returns from a WAL commit only after fsyncing the WAL. So
in the trace no reading may be announced while WAL writes are not yet fsynced; a power cut after
an announcement cannot take the reading back. The same check on ``synchronous = "NORMAL"`` (no
fsync per commit) must find violations, which shows the check can fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from edgegw.radio.emulator import RylrEmulator
from tests.gateway import Daemon, Sender, wait_until, write_config

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")

CALL = re.compile(r"^\d+\s+(?:<\.\.\. (\w+) resumed>|(\w+)\((\d+))(.*)$")


def unsynced_announcements(trace: str, wal_fd: int) -> tuple[int, int]:
    """(readings announced, of which while WAL writes were not yet fsynced), in trace order."""
    dirty, announced, early = False, 0, 0
    pending_sync: dict[str, bool] = {}  # pid -> an fsync of the WAL is in progress on that thread
    for line in trace.splitlines():
        m = CALL.match(line)
        if not m:
            continue
        pid = line.split()[0]
        resumed, call, fd, rest = m.group(1), m.group(2), m.group(3), m.group(4)
        if resumed in ("fsync", "fdatasync") and pending_sync.pop(pid, False):
            dirty = False
        elif call in ("fsync", "fdatasync") and int(fd) == wal_fd:
            if "<unfinished" in rest:
                pending_sync[pid] = True
            else:
                dirty = False
        elif call in ("pwrite64", "write") and int(fd) == wal_fd:
            dirty = True
        elif call == "write" and int(fd) in (1, 2) and '\\"event\\": \\"reading\\"' in rest:
            announced += 1
            early += dirty
    return announced, early


def wal_syncs(trace: str, wal_fd: int) -> int:
    return len(re.findall(rf"^\d+\s+f(?:data)?sync\({wal_fd}\)", trace, re.MULTILINE))


def readings_delivered(db: Path) -> int:
    """Readings whose acks are recorded: not the outbox's delivered count, which a health report (due
    30 s after the start) joins, ending a wait for a reading's ack before that ack was recorded."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT count(*) FROM outbox WHERE kind = 'reading'"
                            " AND seq NOT IN (SELECT seq FROM queue)").fetchone()[0]


def traced_run(tmp_path: Path, synchronous: str, broker_port: int | None = None,
               one_by_one: bool = False) -> tuple[int, int, int]:
    """Frames in bursts (or ``one_by_one``, each delivered before the next) under strace:
    (readings announced, of which while the WAL was not yet fsynced, fsyncs of the WAL)."""
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    # At debug each reading is a log line of its own, written once its commit returned: the trace sees it.
    daemon = Daemon(write_config(tmp_path, emulator.link, broker_port, log_level="debug",
                                 extra=f'\n[store]\nsynchronous = "{synchronous}"\n'))
    trace = tmp_path / "trace"
    strace = None
    try:
        daemon.start().wait_receiving()
        pid = daemon.proc.pid
        wal_fd = next(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")
                      if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("edgegw.db-wal"))
        attached = tmp_path / "strace.err"
        with open(attached, "wb") as err:
            strace = subprocess.Popen(["strace", "-f", "-s", "300", "-o", str(trace), "-p", str(pid),
                                       "-e", "trace=pwrite64,write,fsync,fdatasync"], stderr=err)
        wait_until(lambda: "attached" in attached.read_text(), 20, "strace attached")
        sender = Sender(emulator)
        for _ in range(10):
            if one_by_one:  # field rate: each reading, then its ack, in a commit of its own
                sender.quiet(1)
                wait_until(lambda: readings_delivered(daemon.db) >= len(sender.sent), 20,
                           "the reading delivered and its ack recorded")
            else:
                sender.burst(12)
                daemon.wait_committed(len(sender.sent))
        wait_until(lambda: trace.read_text().count('\\"event\\": \\"reading\\"') >= len(sender.sent), 20,
                   "every reading announced in the trace")
        strace.send_signal(signal.SIGINT)  # detach; the daemon runs on
        strace.wait(timeout=20)
        daemon.kill()  # and now the power goes: the database must open cleanly
        with sqlite3.connect(daemon.db) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("SELECT count(*) FROM outbox WHERE kind = 'reading'").fetchone()[0] == len(sender.sent)
        return (*unsynced_announcements(trace.read_text(), wal_fd), wal_syncs(trace.read_text(), wal_fd))
    finally:
        if strace is not None and strace.poll() is None:
            strace.kill()
            strace.wait()
        daemon.stop()
        emulator.unplug()


def test_with_synchronous_full_no_reading_is_announced_before_its_commit_is_on_disk(tmp_path):
    announced, early, _ = traced_run(tmp_path, "FULL")
    assert announced >= 120 and early == 0


def test_the_check_catches_a_gateway_that_does_not_fsync_each_commit(tmp_path):
    announced, early, _ = traced_run(tmp_path, "NORMAL")
    assert announced >= 120 and early > 0


def test_an_acknowledgement_is_made_durable_by_the_next_readings_fsync_not_its_own(tmp_path, mosquitto):
    # At field rate each reading is a commit and so is its ack: two fsyncs per reading on the SD
    # card. An ack needs none of its own (undone by a power cut, it means a resend), and the fsync
    # of the next reading's commit takes its WAL frames to disk as well.
    announced, early, syncs = traced_run(tmp_path, "FULL", mosquitto.port, one_by_one=True)
    assert announced == 10 and early == 0
    assert 10 <= syncs <= 12  # one per reading (a rules-clock save or a checkpoint may add one)
