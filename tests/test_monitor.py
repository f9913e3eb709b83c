"""``edgegw monitor`` on a real terminal (tmux) beside a real daemon fed by an emulated module."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway import Daemon, Sender, wait_until, write_config

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")

UNKNOWN = 99  # an address no device is configured at


class Terminal:
    """One tmux session on a server of its own (``-L``), so that no other tmux is touched."""

    def __init__(self, name: str):
        self.name = name
        self.socket: str | None = None  # tmux leaves its socket file behind when its server is killed

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], check=True, capture_output=True, text=True).stdout

    def start(self, command: list[str]) -> None:
        # pytest sets COLUMNS and LINES (80x24) for its own output: the command is to see the terminal's size.
        self.tmux("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40",
                  shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", *command]))
        self.socket = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name)

    def cells(self, first: str) -> list[str]:
        """The cells of the table row whose first cell is ``first``; [] while there is none."""
        for row in self.screen().splitlines():
            cells = [c.strip() for c in row.strip().strip("│").split("│")]
            if cells[0] == first:
                return cells
        return []

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True)
        if self.socket:
            Path(self.socket).unlink(missing_ok=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    term = Terminal(f"edgegw-monitor-{os.getpid()}")
    yield term
    term.kill()


def test_the_monitor_shows_every_device_the_unknown_addresses_and_redraws_as_frames_arrive(tmp_path, emulator,
                                                                                           terminal):
    config = write_config(tmp_path, emulator.link, None)
    daemon = Daemon(config).start()
    try:
        daemon.wait_receiving()
        sender = Sender(emulator)
        sender.send("river-01")  # -80 dBm, 7.5 dB
        sender.send("river-01")
        sender.counters["river-01"] += 2  # two frames the gateway never hears
        sender.send("river-01")
        assert emulator.receive(UNKNOWN, "0102030405", -112, -9.5)
        daemon.wait_committed(3)

        terminal.start([sys.executable, "-m", "edgegw", "monitor", "-c", str(config)])
        wait_until(lambda: terminal.cells("river-01") and terminal.cells("lora0"), 20, "the monitor's first frame")
        river = terminal.cells("river-01")
        assert river[1:3] == ["21", "lora0"] and river[4:8] == ["-80 dBm", "7.5 dB", "3", "2 (40%)"], river
        assert terminal.cells("trap-01")[3:8] == ["never heard", "-", "-", "0", "0"]
        assert terminal.cells("river-02")[3] == "never heard"
        unknown = terminal.cells("lora0")  # the unknown addresses' table: source first
        assert unknown[1:3] == [str(UNKNOWN), "1"] and unknown[4:] == ["-112 dBm", "-9.5 dB"], unknown

        # Ageing: with no frame, the age of river-01's last frame still moves on, every second.
        age = terminal.cells("river-01")[3]
        wait_until(lambda: terminal.cells("river-01")[3] != age, 5, "the age redrawn")

        # A new frame is shown as it arrives: well within a second of its commit.
        sender.send("trap-01")
        wait_until(lambda: terminal.cells("trap-01")[4] == "-80 dBm", 5, f"trap-01 heard:\n{terminal.screen()}")
        assert terminal.cells("trap-01")[3] in ("0s", "1s", "2s") and terminal.cells("trap-01")[6] == "1"
        assert terminal.cells("river-02")[3] == "never heard"

        # The monitor holds no read transaction between its reads: a checkpoint can move the whole
        # WAL into the database and truncate it while the monitor runs.
        def checkpointed() -> bool:
            db = sqlite3.connect(daemon.db, timeout=5)
            try:
                return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone() == (0, 0, 0)
            finally:
                db.close()
        wait_until(checkpointed, 10, "a full checkpoint beside the monitor")

        once = subprocess.run([sys.executable, "-m", "edgegw", "monitor", "-c", str(config), "--once"],
                              capture_output=True, text=True, timeout=30)
        assert once.returncode == 0, once.stderr
        assert "daemon running" in once.stdout and "never heard" in once.stdout and "-112 dBm" in once.stdout
    finally:
        terminal.kill()
        assert daemon.stop() == 0


def test_the_monitor_says_when_there_is_no_database_yet(tmp_path):
    config = write_config(tmp_path, tmp_path / "no-radio", None)
    once = subprocess.run([sys.executable, "-m", "edgegw", "monitor", "-c", str(config), "--once"],
                          capture_output=True, text=True, timeout=30)
    assert once.returncode == 0 and "no database yet" in once.stdout
