"""SIGHUP reloads the config of the real daemon: changed sources and uplinks restart, unchanged ones
run on, devices take effect, a bad config is refused, and no frame is lost across a reload."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgegw.keys import load_keys, new_key
from edgegw.radio.emulator import RylrEmulator
from tests.broker import Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config
from tests.test_end_to_end import TOPIC, items_of, wait_for_ids

RIVER_03 = '\n[[devices]]\nid = "river-03"\naddress = 23\ndriver = "water_level"\nrate_limit = 0\n'


def archive(path: str) -> str:
    return f'\n[[uplinks]]\ntype = "file"\nname = "archive"\npath = "{path}"\n'


@pytest.fixture
def rig(tmp_path, mosquitto) -> Iterator[tuple[RylrEmulator, Subscriber, Path]]:
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    sub = Subscriber("127.0.0.1", mosquitto.port, TOPIC)
    yield emulator, sub, tmp_path
    sub.close()
    emulator.unplug()


def reloaded(daemon: Daemon, after: int) -> dict:
    """HUP the daemon and wait for its word on the reload (the ``after``-th such line)."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)

    def said() -> dict | None:
        said = [e for e in daemon.log_events() if e.get("event", "").startswith(("config reload", "config reloaded"))]
        return said[after] if len(said) > after else None
    return wait_until(said, 20, f"the daemon's word on the reload (log: {daemon.log_tail()})")


def changed_at(daemon: Daemon, part: str, name: str) -> float:
    return next(p["changed_at"] for p in daemon.status()[part] if p["name"] == name)


class Stream:
    """Frames of river-01 sent every 20 ms from a thread, until stopped: a field busy across a reload."""

    def __init__(self, sender: Sender):
        self.sender, self.ids, self.stop = sender, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            if reading_id := self.sender.send("river-01"):
                self.ids.append(reading_id)

    def __enter__(self) -> Stream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_reload_restarts_the_changed_uplink_only_takes_new_devices_and_loses_no_frame(rig, mosquitto):
    emulator, sub, tmp = rig
    config = write_config(tmp, emulator.link, mosquitto.port, extra=archive("archive-a"))
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        daemon.wait_uplinks_up()
        sender = Sender(emulator)
        emulator.receive(23, "0109C405AA0E740007", -90, 3.0)  # river-03 is not configured yet
        wait_until(lambda: daemon.status()["rejects"]["by_reason"].get("unknown_device"), 10, "unknown device")
        broker_since, source_since = changed_at(daemon, "uplinks", "broker"), changed_at(daemon, "sources", "lora0")
        archive_since = changed_at(daemon, "uplinks", "archive")

        with Stream(sender) as stream:
            wait_until(lambda: len(stream.ids) >= 20, 10, "frames before the reload")
            write_config(tmp, emulator.link, mosquitto.port, extra=archive("archive-b") + RIVER_03)
            said = reloaded(daemon, 0)
            sent_at_reload = len(stream.ids)
            wait_until(lambda: len(stream.ids) >= sent_at_reload + 20, 10, "frames after the reload")

        assert said["event"] == "config reloaded", said
        assert said["uplinks_restarted"] == ["archive"] and said["sources_restarted"] == []
        assert said["uplinks_stopped"] == said["sources_stopped"] == [] and said["devices"] == 4
        wait_for_ids(sub, set(stream.ids))  # every frame sent across the reload reached the broker
        # The unchanged uplink and source ran on; the changed uplink was stopped and started afresh.
        assert changed_at(daemon, "uplinks", "broker") == broker_since
        assert changed_at(daemon, "sources", "lora0") == source_since
        assert changed_at(daemon, "uplinks", "archive") > archive_since
        wait_until(lambda: list((tmp / "data" / "archive-b").glob("*")), 10, "batches in the new archive folder")

        # The new device is heard now: its frames are readings, not rejects.
        emulator.receive(23, "0109C405AA0E740008", -90, 3.0)
        wait_until(lambda: any(i["device"] == "river-03" for i in items_of(sub)), 10, "river-03 at the broker")
        assert daemon.stop() == 0
    finally:
        daemon.stop()


def test_a_changed_source_is_restarted_and_the_uplink_runs_on(rig, mosquitto):
    emulator, sub, tmp = rig
    config = write_config(tmp, emulator.link, mosquitto.port)
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        daemon.wait_uplinks_up()
        sender = Sender(emulator, strict=False)  # while the source reopens its port, the module passes nothing on
        before = [sender.send("river-01") for _ in range(5)]
        wait_for_ids(sub, set(before))
        broker_since, source_since = changed_at(daemon, "uplinks", "broker"), changed_at(daemon, "sources", "lora0")
        # The gateway module's own address: a setting of the source that leaves the field heard as it was.
        config.write_text(config.read_text().replace('type = "rylr"\n', 'type = "rylr"\naddress = 2\n'))
        said = reloaded(daemon, 0)
        assert said["event"] == "config reloaded", said
        assert said["sources_restarted"] == ["lora0"] and said["uplinks_restarted"] == []
        wait_until(lambda: changed_at(daemon, "sources", "lora0") > source_since
                   and next(s for s in daemon.status()["sources"] if s["name"] == "lora0")["state"] == "receiving",
                   20, "the source receiving again")
        assert changed_at(daemon, "uplinks", "broker") == broker_since
        assert "AT+ADDRESS=2" in emulator.commands  # the restarted source set the module up afresh
        after = [sender.send("river-01") for _ in range(5)]
        assert all(after)
        wait_for_ids(sub, set(before + after))
    finally:
        daemon.stop()


def test_an_invalid_config_is_refused_with_every_problem_and_the_daemon_keeps_working(tmp_path, emulator):
    config = write_config(tmp_path, emulator.link, None)
    good = config.read_text()
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        sender = Sender(emulator)
        sender.send("river-01")
        daemon.wait_committed(1)
        config.write_text(good.replace('type = "rylr"\n', 'type = "rylr"\nspreading_factor = 13\n')
                          .replace('driver = "trap"', 'driver = "trapp"'))
        said = reloaded(daemon, 0)
        assert said["event"].startswith("config reload refused: 2 problem(s) in") and said["level"] == "error"
        assert len(said["problems"]) == 2 and all(p.startswith(f"{config}: ") for p in said["problems"])
        assert any("spreading_factor" in p for p in said["problems"]) and any("trapp" in p for p in said["problems"])

        config.write_text(good.replace('data_dir = "data"', 'data_dir = "elsewhere"'))
        said = reloaded(daemon, 1)
        assert said["event"].startswith("config reload refused: these settings take a restart") and said["keys"] == [
            "data_dir"]

        sender.send("river-01")  # the old config runs on
        daemon.wait_committed(2)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        daemon.stop()


def test_a_reload_does_not_tell_a_device_heard_since_the_rules_last_wrote_silent(tmp_path, emulator):
    # The rules write when each device was last heard once a minute; a reload's new rules start from
    # the database. A gauge heard every second for 10 s, silent after 3 s unheard, must not be told
    # silent (and back a second later) by the reload that comes before that minute's write.
    gauge = '\n[[devices]]\nid = "gauge"\naddress = 23\ndriver = "water_level"\ninterval = "1s"\nrate_limit = 0\n'
    config = write_config(tmp_path, emulator.link, None, extra=gauge)
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        for n in range(1, 16):
            emulator.receive(23, f"0109C405AA0E74{n:04X}", -90, 3.0)
            if n == 10:
                said = reloaded(daemon, 0)
                assert said["event"] == "config reloaded", said
            threading.Event().wait(1.0)
        daemon.wait_committed(15)
        assert daemon.stop() == 0
    finally:
        daemon.stop()
    with sqlite3.connect(tmp_path / "data" / "edgegw.db") as db:
        told = db.execute("SELECT kind, message FROM alarms WHERE device_id = 'gauge'").fetchall()
    assert told == []


def test_a_key_made_while_the_gateway_runs_takes_effect_at_a_reload(tmp_path, emulator):
    # Provisioning on site: `edgegw keys new` with the daemon running, then `systemctl reload edgegw`.
    config = write_config(tmp_path, emulator.link, None, top='keys_file = "keys.toml"\n')
    new_key(tmp_path / "keys.toml", "trap-01")  # another device's key: the file exists from the start
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        sender = Sender(emulator)
        sender.send("river-01")
        daemon.wait_committed(1)  # plain frames are readings while it has no key
        done = subprocess.run([sys.executable, "-m", "edgegw", "keys", "new", "river-01", "-c", str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "systemctl reload edgegw" in done.stdout, done.stdout + done.stderr
        assert reloaded(daemon, 0)["event"] == "config reloaded"
        sender.send("river-01")  # plain: refused now
        wait_until(lambda: daemon.status()["rejects"]["by_reason"].get("unauthenticated"), 10, "the plain frame refused")
        sender.keys["river-01"] = load_keys(tmp_path / "keys.toml")["river-01"]
        sender.send("river-01")  # sealed with the new key
        daemon.wait_committed(2)
        assert daemon.stop() == 0
    finally:
        daemon.stop()


# The writer cannot take the new config (an I/O error, say): the first reload's swap fails there.
CONFIGURE_FAILS_ONCE = """
import edgegw.ingest
configure, calls = edgegw.ingest.Ingest.configure, []
def failing(self, *a, **k):
    calls.append(1)
    if len(calls) == 2:
        raise OSError("injected: the writer cannot take the new config")
    return configure(self, *a, **k)
edgegw.ingest.Ingest.configure = failing
"""


def test_a_reload_the_writer_cannot_take_keeps_the_running_config_and_restarts_what_it_stopped(tmp_path, emulator):
    config = write_config(tmp_path, emulator.link, None, extra=archive("archive-a"))
    daemon = Daemon(config, inject=CONFIGURE_FAILS_ONCE).start()
    try:
        daemon.wait_receiving()
        sender = Sender(emulator)
        sender.send("river-01")
        daemon.wait_committed(1)
        config.write_text(config.read_text().replace("archive-a", "archive-b") + RIVER_03)
        said = reloaded(daemon, 0)
        assert said["event"].startswith("config reload failed in the writer") and said["level"] == "error"
        # The uplink stopped for the reload runs again as it was, and the source reads on.
        wait_until(lambda: next(u for u in daemon.status()["uplinks"] if u["name"] == "archive")["state"] == "up",
                   10, "the archive uplink up again")
        ids = {sender.send("river-01") for _ in range(3)}
        wait_until(lambda: sum(len(f.read_text().splitlines()) for f in (tmp_path / "data" / "archive-a").glob("*"))
                   and ids <= {item["id"] for f in (tmp_path / "data" / "archive-a").glob("*")
                               for line in f.read_text().splitlines() for item in json.loads(line)["items"]},
                   20, "the new frames in the old archive")
        assert not (tmp_path / "data" / "archive-b").exists()
        said = reloaded(daemon, 1)  # the same file again: now it takes
        assert said["event"] == "config reloaded" and said["uplinks_restarted"] == ["archive"]
        assert daemon.stop() == 0
    finally:
        daemon.stop()
