"""Local actions: real subprocesses and a real Mosquitto; never a shell, never blocking."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable

from edgegw.config import CommandAction, MqttAction
from edgegw.items import alarm_item
from edgegw.model import Alarm
from edgegw.rules.actions import ActionRunner
from tests.broker import Subscriber
from tests.gateway import wait_until

RECORDER = """
import json, os, sys
alarm = json.load(sys.stdin)
env = {k: v for k, v in os.environ.items() if k.startswith("EDGEGW_")}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"argv": sys.argv[2:], "alarm": alarm, "env": env}) + "\\n")
"""


def alarm(kind: str = "trap_sprung", severity: str = "high", late: bool = False, n: int = 0) -> Alarm:
    return Alarm(f"trap-01:0:{n}:trap:{kind}", kind, severity, "trap-01", "trap", 1_790_000_000.0,
                 "trap Shrine box trap (trap-01) sprung", {"state": "sprung"}, f"trap-01:0:{n}", "synced", late,
                 "Shrine box trap", (35.98, 138.15), verified=True)


def recorder(tmp_path, **options) -> tuple[CommandAction, object]:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    out = tmp_path / "runs.jsonl"
    # The last argument would be a command injection through a shell; as argv it is one harmless string.
    action = CommandAction(type="command", name="rec", command=[sys.executable, str(script), str(out), "x; rm -rf /"],
                           **options)
    return action, out


def runs(out) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def start(runner: ActionRunner) -> threading.Thread:
    """Start a runner as the daemon does: connect, then run it in a thread of its own."""
    runner.start()
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def stop(runner: ActionRunner, thread: threading.Thread) -> None:
    runner.stop()
    thread.join(10)


def test_command_gets_the_alarm_on_stdin_and_key_fields_in_the_environment(tmp_path):
    action, out = recorder(tmp_path)
    runner = ActionRunner([action], "gw-1")
    thread = start(runner)
    try:
        runner.submit(alarm())
        (run,) = wait_until(lambda: runs(out), 10, "the action ran")
    finally:
        stop(runner, thread)
    assert run["argv"] == ["x; rm -rf /"]
    assert run["alarm"] == json.loads(json.dumps(alarm_item(alarm())))
    assert run["env"] == {
        "EDGEGW_GATEWAY": "gw-1", "EDGEGW_ALARM": "trap_sprung", "EDGEGW_ALARM_ID": "trap-01:0:0:trap:trap_sprung",
        "EDGEGW_SEVERITY": "high", "EDGEGW_DEVICE": "trap-01", "EDGEGW_DEVICE_NAME": "Shrine box trap",
        "EDGEGW_RAISED_AT": "2026-09-21T14:13:20.000Z", "EDGEGW_LATE": "0",
        "EDGEGW_MESSAGE": "trap Shrine box trap (trap-01) sprung", "EDGEGW_LATITUDE": "35.98",
        "EDGEGW_LONGITUDE": "138.15", "EDGEGW_VERIFIED": "1",
    }


def test_filters_rate_limit_and_counts(tmp_path):
    action, out = recorder(tmp_path, alarms=["trap_sprung"], min_severity="high", limit=2, per="1h")
    runner = ActionRunner([action], "gw-1")
    thread = start(runner)
    try:
        runner.submit(alarm("trap_rearmed", "informational"))  # kind not listed
        runner.submit(alarm(late=True))  # late alarms are about the past: not by default
        for n in range(1, 5):
            runner.submit(alarm(n=n))
        wait_until(lambda: runner.counts["started"] + runner.counts["rate_limited"] == 4, 10, "all handled")
        wait_until(lambda: len(runs(out)) == 2, 10, "two runs")
    finally:
        stop(runner, thread)
    assert runner.counts == {"started": 2, "failed": 0, "rate_limited": 2, "dropped": 0}
    # The two commands run side by side, so either may write first.
    assert sorted(r["alarm"]["id"] for r in runs(out)) == [alarm(n=1).alarm_id, alarm(n=2).alarm_id]


def test_one_device_cannot_use_up_the_siren_another_device_needs(tmp_path):
    action, out = recorder(tmp_path, limit=2, per="1h")
    runner = ActionRunner([action], "gw-1")
    thread = start(runner)
    flood = [alarm(n=n) for n in range(5)]  # trap-01, perhaps spoofed: five catches in a minute
    other = Alarm("trap-02:0:0:trap:trap_sprung", "trap_sprung", "high", "trap-02", "trap", 1_790_000_000.0,
                  "trap trap-02 sprung", {"state": "sprung"}, "trap-02:0:0")
    rearmed = alarm("trap_rearmed", "high", n=9)
    try:
        for a in [*flood, other, rearmed]:
            runner.submit(a)
        wait_until(lambda: len(runs(out)) == 4, 10, "four runs")
        wait_until(lambda: runner.counts["rate_limited"] == 3, 10, "the flood's excess skipped")
    finally:
        stop(runner, thread)
    ran = sorted(r["alarm"]["id"] for r in runs(out))
    assert ran == sorted([flood[0].alarm_id, flood[1].alarm_id, other.alarm_id, rearmed.alarm_id])


def test_a_hanging_or_failing_command_is_killed_counted_and_blocks_nothing(tmp_path):
    hang = CommandAction(type="command", name="hang", command=[sys.executable, "-c", "import time; time.sleep(60)"],
                         timeout=0.5)
    fail = CommandAction(type="command", name="fail", command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    missing = CommandAction(type="command", name="missing", command=[str(tmp_path / "no-such-program")])
    action, out = recorder(tmp_path)
    runner = ActionRunner([hang, fail, missing, action], "gw-1")
    thread = start(runner)
    try:
        runner.submit(alarm())
        wait_until(lambda: runs(out), 10, "the recorder ran although the first action hangs")
        wait_until(lambda: runner.counts["failed"] == 3, 10, "hang killed, exit 3 and missing program counted")
    finally:
        stop(runner, thread)
    assert runner.counts["started"] == 3


def running(pid: int) -> bool:
    """Whether a process runs (a killed orphan may linger as a zombie until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def failures_of(actions: list[CommandAction], until: Callable[[list], object], after: float = 0.0) -> list:
    """Run ``actions`` for one alarm: the (action name, why) of each failure, once ``until`` them
    holds and ``after`` more seconds have passed."""
    runner = ActionRunner(actions, "gw-1")
    failures: list[tuple[str, str]] = []
    runner._failed = lambda action, alarm, why: failures.append((action.name, why))  # type: ignore[method-assign]
    thread = start(runner)
    try:
        runner.submit(alarm())
        wait_until(lambda: until(failures), 10, f"the actions' end: {failures}")
        threading.Event().wait(after)
    finally:
        stop(runner, thread)
    return failures


def test_a_chatty_command_and_what_it_started_are_ended_at_its_timeout(tmp_path):
    # stderr flooded as fast as it goes: buffered whole, it took the daemon to gigabytes within
    # seconds. A shell's child outliving its timeout ran on unseen after the shell was killed.
    flood = CommandAction(type="command", name="flood", timeout=1.0, command=[
        sys.executable, "-c", "import sys\nwhile True: sys.stderr.buffer.write(b'x' * 65536)"])
    pids = tmp_path / "pids"
    shell = CommandAction(type="command", name="shell", timeout=1.0,
                          command=["/bin/sh", "-c", f"sleep 30 & echo $! > {pids}; sleep 30"])
    failures = failures_of([flood, shell], lambda f: len(f) == 2)
    assert sorted(failures) == [("flood", "killed after its 1 s timeout"), ("shell", "killed after its 1 s timeout")]
    assert not running(int(pids.read_text()))  # the shell's background sleep went with it


def test_a_failed_command_s_last_words_are_logged_and_a_child_it_leaves_is_its_own(tmp_path):
    said = CommandAction(type="command", name="said", command=[
        sys.executable, "-c", "import sys\nsys.stderr.write('y' * 100000 + 'siren port busy')\nsys.exit(2)"])
    pids = tmp_path / "pids"
    # A siren script that starts the sound in the background and returns: the sound goes on.
    siren = CommandAction(type="command", name="siren", timeout=1.0,
                          command=["/bin/sh", "-c", f"sleep 30 & echo $! > {pids}"])
    # Past the siren's timeout, to see it is not killed then.
    failures = failures_of([said, siren], lambda f: f and pids.exists() and pids.read_text().strip(), after=1.5)
    (name, why), = failures
    assert name == "said" and why.startswith("exit status 2: yyy") and why.endswith("siren port busy")
    assert len(why) < 400
    child = int(pids.read_text())
    assert running(child)  # still sounding: it returned in time, so nothing of it is killed
    os.kill(child, 9)


def test_mqtt_action_publishes_to_the_local_broker(mosquitto):
    action = MqttAction(type="mqtt", name="local", host="127.0.0.1", port=mosquitto.port)
    with Subscriber("127.0.0.1", mosquitto.port, "edgegw/#") as sub:
        runner = ActionRunner([action], "gw-1")
        thread = start(runner)
        try:
            wait_until(lambda: runner._mqtt["local"].is_connected(), 10, "local broker connected")
            runner.submit(alarm())
            ((topic, payload),) = sub.wait_for_count(1, timeout=10)
        finally:
            stop(runner, thread)
    assert topic == "edgegw/gw-1/alarms/trap_sprung"
    assert json.loads(payload)["id"] == alarm().alarm_id


def test_mqtt_action_with_the_local_broker_down_fails_without_blocking(tmp_path):
    action = MqttAction(type="mqtt", name="local", host="127.0.0.1", port=9)  # nothing listens on discard
    rec, out = recorder(tmp_path)
    runner = ActionRunner([action, rec], "gw-1")
    thread = start(runner)
    try:
        runner.submit(alarm())
        wait_until(lambda: runs(out), 10, "the command still ran")
        wait_until(lambda: runner.counts["failed"] == 1, 10, "mqtt failure counted")
    finally:
        stop(runner, thread)
