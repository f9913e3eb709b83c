"""Alarms end to end: emulated radio -> daemon -> local action at once, and to the broker before the backlog."""

from __future__ import annotations

import json
import sqlite3
import sys
import time

import pytest
from click.testing import CliRunner

from edgegw.cli import cli
from edgegw.radio.emulator import RylrEmulator
from tests.broker import Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config

TOPIC = "test/gw-test/batches"

ACTION = """
import json, os, sys, time
started = time.time()
alarm = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"started": started, "id": alarm["id"], "alarm": os.environ["EDGEGW_ALARM"]}) + "\\n")
"""


def rules_and_action(script, out) -> str:
    return f"""
[[rules]]
type = "water_level"
devices = ["river-01"]
hysteresis = 50
stages = [
  {{ name = "standby", above = 1500 }}, {{ name = "caution", above = 2000 }},
  {{ name = "evacuation_decision", above = 2500 }}, {{ name = "danger", above = 3000 }},
]

[[actions]]
type = "command"
name = "siren"
alarms = ["trap_sprung", "water_level_alarm"]
command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}, {json.dumps(str(out))}]
"""


def actions_run(out) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


@pytest.fixture
def broker(persistent_mosquitto):
    return persistent_mosquitto


@pytest.fixture
def site(tmp_path, broker):
    """Emulator + daemon (river stages, a siren action recording its runs in ``out``), torn down after."""
    script, out = tmp_path / "siren.py", tmp_path / "siren.jsonl"
    script.write_text(ACTION)
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    config = write_config(tmp_path, emulator.link, broker.port, extra=rules_and_action(script, out))
    daemon = Daemon(config)
    yield emulator, daemon, config, out
    daemon.stop()
    emulator.unplug()


def test_alarms_act_locally_within_a_second_and_overtake_the_backlog(site, broker):
    emulator, daemon, _, out = site
    sub = Subscriber("127.0.0.1", broker.port, TOPIC, client_id="platform")
    try:
        broker.stop()  # the uplink is down from the start
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        backlog = [sender.send("river-01", {"level": 1000, "water_temperature": 12.0, "battery": 3.6})
                   for _ in range(150)]
        sender.send("trap-01", {"state": "armed", "tamper": False, "battery": 3.6})
        daemon.wait_committed(151)

        frame_at = {}
        frame_at["trap_sprung"] = time.time()
        sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.6})
        wait_until(lambda: len(actions_run(out)) == 1, 10, "the trap's local action")
        frame_at["water_level_alarm"] = time.time()
        sender.send("river-01", {"level": 3200, "water_temperature": 12.0, "battery": 3.6})
        runs = wait_until(lambda: len(actions_run(out)) == 2 and actions_run(out), 10, "the river's local action")
        for run in runs:
            # The promise to a hunter: the siren starts within a second of the frame, uplink down.
            assert run["started"] - frame_at[run["alarm"]] < 1.0, run
        assert [r["alarm"] for r in runs] == ["trap_sprung", "water_level_alarm"]

        broker.start()
        sub.wait_subscribed(timeout=20)
        expected = set(backlog) | {r["id"] for r in runs}

        def received() -> list[dict]:
            return [i for b in sub.json_messages() for i in b["items"]]
        wait_until(lambda: expected <= {i["id"] for i in received()}, 60, "everything after the outage")
        order = [i["type"] for i in received()]
        # Both alarms went out in the first batch, ahead of 150 older readings.
        assert order[:2] == ["alarm", "alarm"] and set(order[2:]) == {"reading"}
        alarms = {i["alarm"]: i for i in received() if i["type"] == "alarm"}
        assert alarms["water_level_alarm"]["details"]["stage"] == "danger"
        assert alarms["trap_sprung"]["location"] is None and not alarms["trap_sprung"]["late"]
    finally:
        sub.close()


def test_status_and_alarms_commands_show_open_alarms_first(site):
    emulator, daemon, config, _ = site
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.6})
    wait_until(lambda: daemon.status().get("open_alarms"), 10, "an open alarm")
    text = CliRunner().invoke(cli, ["status", "-c", str(config)]).output
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if not line.startswith(("gateway", "daemon", "  stage")))
    assert lines[first] == "open alarms (1)" and "trap_sprung" in lines[first + 1]  # after who runs, first
    listed = json.loads(CliRunner().invoke(cli, ["alarms", "-c", str(config), "--json"]).output)
    assert [a["kind"] for a in listed["open"]] == ["trap_sprung"]
    sender.send("trap-01", {"state": "armed", "tamper": False, "battery": 3.6})
    wait_until(lambda: not daemon.status().get("open_alarms", [1]), 10, "the alarm closed by the re-arm")
    listed = json.loads(CliRunner().invoke(cli, ["alarms", "-c", str(config), "--json"]).output)
    assert [a["kind"] for a in listed["recent"]] == ["trap_rearmed", "trap_sprung"]
    assert listed["recent"][1]["closed_by"] == listed["recent"][0]["id"]


# The daemon killed between an alarm's commit and its actions: the actions runner never gets to it.
ACTIONS_CUT_OFF = """
import threading
import edgegw.rules.actions
edgegw.rules.actions.ActionRunner.run = lambda self: threading.Event().wait()
"""


def test_a_siren_a_crash_cut_off_sounds_at_the_restart_and_only_once(site):
    emulator, _, config, out = site
    cut = Daemon(config, inject=ACTIONS_CUT_OFF).start()
    try:
        cut.wait_receiving()
        sender = Sender(emulator)
        sender.send("trap-01", {"state": "armed", "tamper": False, "battery": 3.6})
        sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.6})
        wait_until(lambda: cut.status().get("open_alarms"), 10, "the catch committed")
        cut.kill()  # kill -9: the alarm is in the database, its siren never started
    finally:
        cut.stop()
    assert actions_run(out) == []

    def said(event: str) -> int:
        return sum(e.get("event") == event for e in cut.log_events())  # one log for the three runs

    first = Daemon(config).start()
    try:
        (run,) = wait_until(lambda: actions_run(out), 10, "the owed siren at the restart")
        assert run["alarm"] == "trap_sprung" and run["id"].startswith("trap-01:")
        assert said("alarm's actions owed from before the restart") == 1

        def acted() -> bool:
            with sqlite3.connect(f"file:{first.db}?mode=ro", uri=True) as db:
                return db.execute("SELECT acted FROM alarms WHERE id = ?", (run["id"],)).fetchone() == (1,)
        wait_until(acted, 10, "the siren's start noted in the alarm log")
        assert first.stop() == 0
    finally:
        first.stop()
    again = Daemon(config).start()  # a clean restart owes nothing: the siren does not sound twice
    try:
        wait_until(lambda: said("gateway started") == 3, 20, "the third start")
        assert said("alarm's actions owed from before the restart") == 1 and len(actions_run(out)) == 1
    finally:
        assert again.stop() == 0
