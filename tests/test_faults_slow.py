"""Long fault-injection runs (pytest -m slow): real processes killed at random moments."""

from __future__ import annotations

import json
import random
import sqlite3
import threading

import paho.mqtt.client as mqtt
import pytest

from edgegw.radio.emulator import RylrEmulator
from tests.broker import Mosquitto, Subscriber
from tests.gateway import Daemon, Sender, fill_outbox, wait_until, write_config

TOPIC = "test/gw-test/batches"


@pytest.mark.slow
def test_repeated_kill_9_loses_no_committed_reading(tmp_path):
    rng = random.Random(20261123)
    # persistence: the subscriber's session survives broker restarts, so the test cannot miss messages
    broker = Mosquitto(tmp_path / "mosquitto", persistence=True).start()
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, broker.port, log_level="info"))
    sub = Subscriber("127.0.0.1", broker.port, TOPIC, client_id="soak-subscriber")
    sender = Sender(emulator, strict=False)
    stop_streaming = threading.Event()

    def stream() -> None:  # about 225 frames/s in bursts, so kills land mid-group as well as between
        while not stop_streaming.wait(0.02):
            if emulator.configured:
                sender.burst(rng.randint(1, 8))

    streamer = threading.Thread(target=stream, daemon=True)
    try:
        daemon.start().wait_receiving()
        streamer.start()
        for _ in range(30):
            threading.Event().wait(rng.uniform(0.1, 0.8))
            if rng.random() < 0.3:
                broker.stop() if broker.running else broker.start()
            daemon.kill()
            daemon.start().wait_receiving()
        stop_streaming.set()
        streamer.join()
        if not broker.running:
            broker.start()
        wait_until(lambda: daemon.status().get("outbox", {}).get("pending") == 0, 120, "outbox drained")

        with sqlite3.connect(daemon.db) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            committed = {r[0] for r in db.execute("SELECT item_id FROM outbox WHERE kind = 'reading'")}
        sub.wait_for(lambda _: committed <= {i["id"] for b in sub.json_messages() for i in b["items"]}, 60,
                     "every committed reading")
        received = [i["id"] for batch in sub.json_messages() for i in batch["items"] if i["type"] == "reading"]
        assert committed <= set(received)
        # Frames sent while the daemon was dead or starting were never read (pyserial flushes the port on
        # open), so fewer are committed than sent (how many depends on the machine's start-up time); but
        # the cycles committed readings, and nothing is invented.
        assert len(committed) > 30
        assert set(received) <= set(sender.sent)
    finally:
        stop_streaming.set()
        sub.close()
        daemon.stop()
        emulator.unplug()
        broker.stop()


@pytest.mark.slow
def test_a_long_outage_drains_completely_and_its_alarms_go_first(tmp_path):
    backlog = 200_000
    broker = Mosquitto(tmp_path / "mosquitto", persistence=True).start()
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, broker.port, log_level="warning", max_items=500))
    sub = Subscriber("127.0.0.1", broker.port, TOPIC, client_id="outage-subscriber")
    try:
        broker.stop()
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        readings = set()
        for _ in range(backlog // 10_000):
            readings.update(sender.quiet(10_000))
            daemon.wait_committed(len(readings), timeout=300)
        # During the outage, after the backlog: a trap is sprung.
        sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.6})
        daemon.wait_committed(backlog + 2, timeout=60)  # the reading and its alarm

        broker.start()
        wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 600, "the backlog drained")

        def items() -> list[dict]:
            return [i for b in sub.json_messages() for i in b["items"] if i["type"] != "health"]
        sub.wait_for(lambda _: readings <= {i["id"] for i in items()}, 120, "every reading of the outage")
        order = [i["type"] for i in items()]
        assert order.index("alarm") < order.index("reading")  # the alarm overtook 200,000 readings
        assert order.count("alarm") == 1
    finally:
        sub.close()
        daemon.stop()
        emulator.unplug()
        broker.stop()


class ItemCounter:
    """A platform that counts what arrives (a million items would not fit a list of messages)."""

    def __init__(self, port: int):
        self.readings = bytearray(1_000_000)  # backlog reading n arrived
        self.count = 0
        self.alarm_after: int | None = None  # readings that arrived before the first alarm
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="million-platform")
        self.client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        for item in json.loads(msg.payload)["items"]:
            if item["type"] == "alarm" and self.alarm_after is None:
                self.alarm_after = self.count
            elif item["id"].startswith("backlog:"):
                self.readings[int(item["id"].rsplit(":", 1)[1])] = 1
                self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_an_alarm_overtakes_a_million_pending_readings(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, broker.port, log_level="warning", max_items=500))
    fill_outbox(daemon.db, 1_000_000)
    platform = ItemCounter(broker.port)
    try:
        daemon.start().wait_receiving()
        wait_until(lambda: platform.count > 0, 30, "the backlog draining")
        sender = Sender(emulator)
        sender.send("trap-01", {"state": "armed", "tamper": False, "battery": 3.6})
        sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.6})
        wait_until(lambda: platform.alarm_after is not None, 60, "the trap's alarm")
        assert platform.alarm_after < 500_000  # sent in observation order, it would have come after all
        wait_until(lambda: platform.count >= 1_000_000, 600, "the whole backlog", poll=1.0)
        assert platform.count == 1_000_000 and all(platform.readings)  # each reading once, none lost
    finally:
        platform.close()
        daemon.stop()
        emulator.unplug()
        broker.stop()
