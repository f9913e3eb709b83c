"""The daemon's log lines: what a maintainer reading the journal of a field gateway gets."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
import structlog

from edgegw.log import as_json, configure
from tests.gateway import Daemon, Sender, wait_until, write_config


def test_an_exception_in_a_json_log_line_carries_its_traceback(capsys):
    saved = structlog.get_config()
    try:
        configure("info", "json")
        try:
            {}["missing"]
        except KeyError:
            structlog.get_logger("test").exception("commit failed; group dropped", events=3)
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.configure(**saved)
    assert line["event"] == "commit failed; group dropped" and line["events"] == 3
    assert "Traceback" in line["exception"] and "KeyError: 'missing'" in line["exception"]


def test_json_under_systemd_or_off_a_terminal_and_text_on_a_terminal(monkeypatch):
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal, open(os.devnull, "w") as pipe:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not as_json("auto", terminal) and as_json("auto", pipe)
        assert as_json("json", terminal) and not as_json("console", pipe)
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")  # what systemd sets for a service's stderr
        assert as_json("auto", terminal)
    os.close(leader)


def test_console_lines_carry_local_time_and_json_lines_utc(capsys, monkeypatch):
    saved = structlog.get_config()
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # a gateway's local time, 9 h ahead of UTC
    time.tzset()
    try:
        configure("info", "console")
        structlog.get_logger("test").info("mqtt uplink up", uplink="broker")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        local = datetime.now()
        configure("info", "json")
        structlog.get_logger("test").info("mqtt uplink up", uplink="broker")
        stamp = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["timestamp"]
    finally:
        structlog.configure(**saved)
        monkeypatch.delenv("TZ")
        time.tzset()
    shown = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
    assert abs((local - shown).total_seconds()) < 5 and "mqtt uplink up" in line and "uplink=broker" in line
    assert stamp.endswith("Z")
    utc = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - utc).total_seconds()) < 5


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_reading_is_a_line_only_at_debug_and_the_summary_counts_it(tmp_path, emulator, mosquitto, level):
    daemon = Daemon(write_config(tmp_path, emulator.link, mosquitto.port, log_level=level))
    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        sender.quiet(6)
        wait_until(lambda: daemon.status().get("outbox", {}).get("delivered", 0) >= 6, 20, "six readings delivered")
        emulator.write_line("+RCV=21,4,ZZZZ,-80,7.5")  # a frame that is no hex: rejected
        wait_until(lambda: daemon.status().get("rejects", {}).get("by_reason"), 20, "the reject counted")
    finally:
        assert daemon.stop() == 0
    events = daemon.log_events()
    readings = [e for e in events if e["event"] == "reading"]
    assert len(readings) == (6 if level == "debug" else 0)
    # Stopped before its period was over, the writer says what it did in the part of it that passed.
    (summary,) = [e for e in events if e["event"] == "summary"]
    assert summary["level"] == "info" and 0 <= summary["period_s"] < 600
    assert summary["frames"] == 7 and summary["readings"] == 6 and summary["rejects"] == 1
    assert summary["delivered"] == {"broker": 6} and summary["alarms"] == 0
