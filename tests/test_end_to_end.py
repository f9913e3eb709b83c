"""The gateway end to end: emulated module on a pty -> real daemon process -> real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing
from datetime import datetime

import jsonschema
import pytest

from edgegw.items import BATCH_SCHEMA_FILE
from edgegw.radio import PACE
from edgegw.radio.emulator import RylrEmulator
from edgegw.writer import COMMIT_GAP, COMMIT_WINDOW
from tests.broker import Subscriber
from tests.gateway import DRIVERS, Daemon, Sender, wait_until, write_config

VALIDATOR = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()))
TOPIC = "test/gw-test/batches"


def items_of(sub: Subscriber, kind: str = "reading") -> list[dict]:
    """Every item of one type in every batch received, after checking each batch against the schema."""
    items = []
    for batch in sub.json_messages():
        VALIDATOR.validate(batch)
        datetime.fromisoformat(batch["sent_at"])
        for item in batch["items"]:
            datetime.fromisoformat(item["observed_at" if item["type"] == "reading" else "raised_at"])
            if item["type"] == kind:
                items.append(item)
    return items


def wait_for_ids(sub: Subscriber, ids: set[str], timeout: float = 30) -> list[dict]:
    sub.wait_for(lambda _: ids <= {i["id"] for i in items_of(sub)}, timeout, f"{len(ids)} reading ids")
    return items_of(sub)


@pytest.fixture
def rig(tmp_path, mosquitto):
    """Emulator + daemon + subscriber, torn down whatever happens."""
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, mosquitto.port))
    sub = Subscriber("127.0.0.1", mosquitto.port, TOPIC)
    yield emulator, daemon, sub, mosquitto
    sub.close()
    daemon.stop()
    emulator.unplug()


def test_every_reading_arrives_decoded_exactly_once(rig):
    emulator, daemon, sub, _ = rig
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    ids = set(sender.burst(60))
    items = wait_for_ids(sub, ids)

    assert Counter(i["id"] for i in items) == Counter(dict.fromkeys(ids, 1))
    for item in items:
        assert item["values"] == pytest.approx(sender.sent[item["id"]]), item["id"]
        assert item["radio"] == {"gateway": "gw-test", "source": "lora0", "address": item["radio"]["address"],
                                 "rssi": -80.0, "snr": 7.5}
    river = next(i for i in items if i["device"] == "river-01")
    assert river["units"] == {"level": "mm", "water_temperature": "Cel", "battery": "V"}
    assert daemon.stop() == 0


def test_frames_that_keep_coming_share_one_commit(rig):
    # Each frame comes after the source's read pace, so each is a read turn of its own, and the
    # five span more than a lone frame's COMMIT_WINDOW: the window stays open while they keep
    # coming (COMMIT_GAP), so a reader sees none of them until it sees all five.
    emulator, daemon, _, _ = rig
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    gap = PACE + 0.01
    assert 4 * gap > COMMIT_WINDOW and gap < COMMIT_GAP
    counts: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        with closing(sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)) as db:
            while not stop.wait(0.002):
                counts.add(db.execute("SELECT count(*) FROM outbox WHERE kind = 'reading'").fetchone()[0])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        t0 = time.monotonic()
        for n in range(5):
            stop.wait(max(0.0, t0 + n * gap - time.monotonic()))
            sender.quiet(1, start=n)
        daemon.wait_committed(5)
        sender.quiet(1, start=5)  # alone: committed all the same
        daemon.wait_committed(6)
    finally:
        stop.set()
        watcher.join()
    assert counts - {0, 6} == {5}, sorted(counts)


def test_committed_readings_survive_kill_9_with_broker_down(rig):
    emulator, daemon, sub, broker = rig
    sub.close()
    broker.stop()
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    sender.burst(40)
    daemon.wait_committed(40)
    daemon.kill()

    with sqlite3.connect(daemon.db) as db:
        committed = {r[0] for r in db.execute("SELECT item_id FROM outbox WHERE kind = 'reading'")}
        delivered = db.execute("SELECT count(*) FROM outbox_items WHERE pending = 0").fetchone()[0]
    assert committed == set(sender.sent) and delivered == 0

    broker.start()
    sub2 = Subscriber("127.0.0.1", broker.port, TOPIC)
    try:
        daemon.start()
        items = wait_for_ids(sub2, committed)
        assert {i["id"] for i in items} == committed
        assert all(i["values"] == pytest.approx(sender.sent[i["id"]]) for i in items)
        wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 20, "outbox drained")
    finally:
        sub2.close()


def test_status_counts_items_in_flight_while_the_platform_is_slow_to_ack(rig):
    emulator, daemon, _, broker = rig
    daemon.start().wait_receiving()
    daemon.wait_uplinks_up()  # frozen before its CONNACK, the broker would leave nothing in flight
    os.kill(broker.pid, signal.SIGSTOP)  # the broker takes the batches into its socket, and never acks
    try:
        Sender(emulator).burst(30)
        daemon.wait_committed(30)
        status = wait_until(lambda: (s := daemon.status())["outbox"]["in_flight"] and s, 10, "items in flight")
        assert 0 < status["outbox"]["in_flight"] <= status["outbox"]["pending"]  # readings, and the traps' alarms
        assert [u["in_flight"] for u in status["uplinks"]] == [status["outbox"]["in_flight"]]
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    wait_until(lambda: (s := daemon.status()["outbox"])["pending"] == 0 and s["in_flight"] == 0, 20, "all acked")


def test_garbage_is_counted_by_reason_and_good_frames_arrive(rig, tmp_path):
    emulator, daemon, sub, _ = rig
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    bad = {
        "garbage": ["hello", "\x00\x01\x02\xff", "+RCV=abc,def"],
        "wrong_length": ["+RCV=17,12,0101,-80,7", "+RCV=21,2,01035205,-80,7"],
        "bad_hex": ["+RCV=17,12,01010CE4ZZ2A,-80,7", "+RCV=17,3,010,-80,7"],
        "unknown_device": ["+RCV=99,4,0102,-80,7"],
        "wrong_length_by_driver": ["+RCV=17,4,0101,-80,7"],
    }
    ids = set()
    for lines in bad.values():
        for line in lines:
            ids.add(sender.send("trap-01"))
            emulator.write_line(line)
    ids |= set(sender.burst(10))
    items = wait_for_ids(sub, ids)
    assert Counter(i["id"] for i in items) == Counter(dict.fromkeys(ids, 1))

    def rejects():
        out = subprocess.run([sys.executable, "-m", "edgegw", "status", "-c", str(daemon.config), "--json"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["rejects"]["by_reason"]

    expected = {"garbage": 3, "wrong_length": 2 + 1, "bad_hex": 2, "unknown_device": 1}
    wait_until(lambda: rejects() == expected, 10, f"reject counts {expected}")
    # the daemon logged each reason, and kept running
    reasons = {e.get("reason") for e in daemon.log_events() if e.get("event") == "frame rejected"}
    assert reasons == set(expected)


def test_port_unplugged_and_plugged_back(rig):
    emulator, daemon, sub, _ = rig
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    first = set(sender.burst(5))
    wait_for_ids(sub, first)

    emulator.unplug()
    wait_until(lambda: any(s["state"] == "down" for s in daemon.status()["sources"]), 10, "source down")
    emulator.plug()  # same path, a new pty behind it: the module lost its settings
    daemon.wait_receiving()
    assert emulator.configured
    later = set(sender.burst(5))
    items = wait_for_ids(sub, first | later)
    assert Counter(i["id"] for i in items) == Counter(dict.fromkeys(first | later, 1))


def test_retransmitted_frame_yields_one_reading(rig):
    emulator, daemon, sub, _ = rig
    daemon.start().wait_receiving()
    data = DRIVERS["water_level"].encode({"level": 1500, "water_temperature": 10.0, "battery": 3.5}, 7).hex()
    for _ in range(3):  # a retransmission heard three times, or one line repeated by the module
        emulator.receive(21, data, -85, 3)
    items = wait_for_ids(sub, {"river-01:0:7"})

    def river():
        return next((d for d in daemon.status()["devices"] if d["id"] == "river-01"), {})
    wait_until(lambda: river().get("duplicates") == 2, 10, "two duplicates counted")
    assert [i["id"] for i in items] == ["river-01:0:7"] and river()["readings"] == 1


def test_each_stage_runs_in_a_thread_the_os_can_name(rig):
    """top -H on a field gateway shows which stage is busy."""
    _, daemon, _, _ = rig
    daemon.start().wait_uplinks_up()
    tasks = f"/proc/{daemon.proc.pid}/task"

    def names() -> set[str]:
        out = set()
        for tid in os.listdir(tasks):
            try:
                with open(f"{tasks}/{tid}/comm") as f:
                    out.add(f.read().strip())
            except FileNotFoundError:  # a short-lived thread ended meanwhile
                pass
        return out

    wait_until(lambda: {"writer", "forwarder:broke", "source:lora0", "uplink:broker"} <= names(), 10,
               f"threads named (now {sorted(names())})")
    with open(f"/proc/{daemon.proc.pid}/comm") as f:
        assert f.read().strip() == "edgegw"  # what ps and pgrep show


def test_a_stop_writes_when_each_device_was_last_heard(rig):
    """The rules write when a device was last heard once a minute, not with every reading (see
    edgegw.rules.engine.PROGRESS); a clean stop writes it, so a restart counts silence from there."""
    emulator, daemon, _, _ = rig
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    sender.quiet(3)  # each device once: its first state is written at once
    daemon.wait_committed(3)
    sender.quiet(3, start=3)  # and again, in a later commit: only its time changed, and is held back
    daemon.wait_committed(6)
    assert daemon.stop() == 0
    with closing(sqlite3.connect(daemon.db)) as db:
        last = dict(db.execute("SELECT device_id, max(observed_at) FROM outbox WHERE kind = 'reading'"
                               " GROUP BY device_id"))
        heard = {device: json.loads(state)["heard"] for device, state in
                 db.execute("SELECT device_id, state FROM rule_state WHERE rule = 'device_health'")}
    assert heard == last and len(heard) == 3
