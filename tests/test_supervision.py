"""Nothing goes silent unseen: one daemon per data directory, supervised stages, a watchdog that knows,
and `edgegw status` that tells whether the daemon runs. Real daemon, real pty, real Mosquitto."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgegw.running import daemon_state
from edgegw.supervise import Stage
from tests.broker import Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config

TOPIC = "test/gw-test/batches"


def edgegw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegw", *args], capture_output=True, text=True, timeout=60)


def status_json(config) -> dict:
    out = edgegw("status", "-c", str(config), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_second_daemon_on_the_same_data_dir_exits_3_and_the_first_keeps_its_port(tmp_path, emulator, mosquitto):
    config = write_config(tmp_path, emulator.link, mosquitto.port)
    first = Daemon(config).start()
    try:
        first.wait_receiving()
        second = subprocess.run([sys.executable, "-m", "edgegw", "run", "-c", str(config)], capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 3  # systemd/edgegw.service: RestartPreventExitStatus
        assert f"already runs on {tmp_path / 'data'}" in second.stderr and str(first.proc.pid) in second.stderr
        assert "Traceback" not in second.stderr
        sender = Sender(emulator)
        sender.burst(30)
        first.wait_committed(30)  # the first one still reads every frame
    finally:
        first.stop()
    unit = (Path(__file__).parent.parent / "systemd" / "edgegw.service").read_text().splitlines()
    assert "3" in next(line for line in unit if line.startswith("RestartPreventExitStatus=")).split("=")[1].split()


def test_status_says_not_running_after_kill_9_and_names_never_heard_and_unknown(tmp_path, emulator, mosquitto):
    config = write_config(tmp_path, emulator.link, mosquitto.port)
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        daemon.wait_uplinks_up()
        Sender(emulator).send("river-01")
        emulator.receive(99, "0102", -100, -3.0)  # an address no device is configured at
        daemon.wait_committed(1)
        st = wait_until(lambda: (s := status_json(config))["daemon"].get("heartbeat") and s, 20, "a heartbeat")
        assert st["daemon"]["running"] is True and st["daemon"]["pid"] == daemon.proc.pid
        assert time.time() - st["daemon"]["heartbeat"]["at"] < 30
        assert set(st["daemon"]["heartbeat"]["stages"]) >= {"writer", "source:lora0", "forwarder:broker"}
        assert all(s["state"] == "alive" for s in st["daemon"]["heartbeat"]["stages"].values())
        assert sorted(st["never_heard"]) == ["river-02", "trap-01"]
        wait_until(lambda: status_json(config)["unknown_addresses"], 10, "the unknown address in status")
        text = edgegw("status", "-c", str(config)).stdout
        assert f"daemon   running: pid {daemon.proc.pid}" in text
        assert "never heard: trap-01, river-02" in text or "never heard: river-02, trap-01" in text
        assert "unknown  address 99 on lora0: 1 frames" in text
    finally:
        daemon.kill()
    st = status_json(config)
    assert st["daemon"]["running"] is False
    assert {u["state"] for u in st["uplinks"]} == {"not running"} and st["uplinks"][0]["recorded_state"] == "up"
    assert {s["state"] for s in st["sources"]} == {"not running"}
    text = edgegw("status", "-c", str(config)).stdout
    assert "daemon   NOT RUNNING" in text and " up " not in text and "receiving" not in text
    assert daemon_state(tmp_path / "data")["running"] is False


# The forwarder's first read of the outbox fails as a damaged page or a full disk would make it.
FORWARDER_FAILS_ONCE = """
import sqlite3
from edgegw import forwarder
_send_next, failed = forwarder.Forwarder._send_next, []
def send_next(self, *args, **kwargs):
    if not failed:
        failed.append(1)
        raise sqlite3.OperationalError("disk I/O error (injected)")
    return _send_next(self, *args, **kwargs)
forwarder.Forwarder._send_next = send_next
"""


def test_a_crashed_forwarder_is_restarted_and_delivers_the_alarm(tmp_path, emulator, mosquitto):
    config = write_config(tmp_path, emulator.link, mosquitto.port)
    daemon = Daemon(config, inject=FORWARDER_FAILS_ONCE)
    sub = Subscriber("127.0.0.1", mosquitto.port, TOPIC)
    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        ids = sender.burst(6)  # the trap's second frame is sprung
        alarm = "trap-01:0:1:trap:trap_sprung"

        def delivered() -> set[str]:
            return {i["id"] for b in sub.json_messages() for i in b["items"]}
        wait_until(lambda: {alarm, *ids} <= delivered(), 30, f"the alarm and readings delivered ({delivered()})")
        crashes = [e for e in daemon.log_events() if e.get("event") == "stage crashed; restarting it"]
        assert [e["stage"] for e in crashes] == ["forwarder:broker"]
        st = wait_until(lambda: (s := status_json(config)["daemon"].get("heartbeat")) and
                        s["stages"]["forwarder:broker"]["restarts"] == 1 and
                        s["stages"]["forwarder:broker"]["state"] == "alive" and s, 30,
                        "the restarted stage alive in the heartbeat (rewritten every 10 s)")
        assert "disk I/O error (injected)" in st["stages"]["forwarder:broker"]["last_error"]
        assert "stage forwarder:broker: alive, 1 restart(s)" in edgegw("status", "-c", str(config)).stdout
    finally:
        sub.close()
        daemon.stop()


# The writer hangs in the health report's commit, as on an SD card that stopped answering.
WRITER_HANGS_AT_HEALTH = """
import threading
from edgegw import store
def add_health(self, *args, **kwargs):
    threading.Event().wait()
store.Store.add_health = add_health
"""


@pytest.mark.slow
def test_the_watchdog_is_fed_only_while_every_stage_is_alive(tmp_path, emulator):
    """systemd's notify socket, as the unit's WatchdogSec uses it: pings stop once the writer hangs."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.5)
    messages: list[tuple[float, str]] = []
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                messages.append((time.monotonic(), notify.recv(4096).decode()))
            except TimeoutError:
                pass
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    config = write_config(tmp_path, emulator.link, None)
    config.write_text('health_every = "5s"\n' + config.read_text())
    daemon = Daemon(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}, inject=WRITER_HANGS_AT_HEALTH)
    try:
        daemon.start()
        wait_until(lambda: any(m == "WATCHDOG=1" for _, m in messages), 20, "a watchdog ping")
        assert messages[0][1] == "READY=1"
        hung = wait_until(lambda: next((e for e in daemon.log_events() if e.get("event") ==
                                        "stage not alive; systemd's watchdog is not fed"), None), 40,
                          f"the writer seen hung ({daemon.log_tail()})")
        assert hung["stage"] == "writer" and "no progress" in hung["problem"]
        seen_at = time.monotonic()
        time.sleep(5)  # the absence of pings is what is tested: a span of time with none
        assert not [m for t, m in messages if m == "WATCHDOG=1" and t > seen_at - 0.5]
    finally:
        done.set()
        daemon.kill()
        listener.join(5)
        notify.close()


def test_a_stage_that_raises_is_restarted_and_not_alive_meanwhile():
    stop, runs = threading.Event(), []

    def target() -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")
        stop.wait()
    stage = Stage("test", target, stop)
    stage.start()
    try:
        wait_until(lambda: stage.restarts == 1, 5, "the first crash")
        assert stage.problem(time.monotonic()).startswith("restarting after a crash (RuntimeError: crash 1)")
        wait_until(lambda: len(runs) == 3 and stage.running, 10, "the third run")
        assert stage.restarts == 2 and stage.problem(time.monotonic()) is None
        assert runs[1] - runs[0] >= 0.5  # a backoff between restarts, not a spin
    finally:
        stop.set()
        stage.thread.join(5)
    assert stage.problem(time.monotonic()) == "stopped"


def test_a_stage_that_promised_to_beat_and_does_not_is_not_alive():
    stop = threading.Event()
    stage = Stage("writer", lambda: stop.wait(), stop, stale_after=0.2)
    stage.start()
    try:
        assert stage.problem(time.monotonic()) is None
        assert stage.problem(time.monotonic() + 1).startswith("no progress for")
        stage.beat()
        assert stage.problem(time.monotonic()) is None
    finally:
        stop.set()
        stage.thread.join(5)
