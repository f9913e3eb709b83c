"""The gateway's own health report: schema-valid, periodic, only the newest kept during an outage."""

from __future__ import annotations

import json
import sqlite3

import jsonschema

from edgegw import __version__
from edgegw.items import BATCH_SCHEMA_FILE
from edgegw.radio.emulator import RylrEmulator
from tests.broker import Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config

VALIDATOR = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()))


def pending_health(db) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT item_id FROM outbox_items WHERE kind = 'health' AND pending != 0")]


def test_health_reports_queue_depth_rejects_and_sources_and_only_the_newest_waits(tmp_path, persistent_mosquitto):
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    config = write_config(tmp_path, emulator.link, persistent_mosquitto.port, log_level="info")
    config.write_text('health_every = "1s"\n' + config.read_text())
    daemon = Daemon(config)
    sub = Subscriber("127.0.0.1", persistent_mosquitto.port, "test/gw-test/batches", client_id="platform")
    try:
        persistent_mosquitto.stop()
        daemon.start().wait_receiving()
        Sender(emulator).burst(5)
        emulator.receive(99, "00", -90, 1.0)  # an unknown device: one reject
        daemon.wait_committed(5)
        # Several reports fall due during the outage; only the newest one is kept to send.
        seen: set[str] = set()

        def three_reports() -> bool:
            seen.update(pending_health(daemon.db))
            return len(seen) >= 3
        wait_until(three_reports, 20, "three health reports queued in turn")
        assert len(pending_health(daemon.db)) == 1

        persistent_mosquitto.start()
        sub.wait_subscribed(timeout=20)

        def health() -> list[dict]:
            return [i for b in sub.json_messages() for i in b["items"] if i["type"] == "health"]
        reports = wait_until(health, 30, "a health report")
        for batch in sub.json_messages():
            VALIDATOR.validate(batch)
        first = reports[0]
        assert first["gateway"] == "gw-test" and first["version"] == __version__
        assert first["pending"]["broker"] >= 5 and first["oldest_pending_s"] > 0
        assert first["rejects"] == {"unknown_device": 1}
        assert set(first["last_frame"]) == {"lora0"} and first["last_frame"]["lora0"].endswith("Z")
        assert first["disk_free_bytes"] > 0 and first["uptime_s"] > 0 and first["open_alarms"] >= 0
    finally:
        sub.close()
        daemon.stop()
        emulator.unplug()

