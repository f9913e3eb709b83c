"""Test harness: the real daemon as a subprocess, reading an emulated module on a pty.

The emulator lives in the test process so a test can unplug it, inject garbage, or send exactly
the frames it wants; the daemon opens the pty's link with real pyserial as it would a USB port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegw.drivers import load_drivers
from edgegw.envelope import seal
from edgegw.model import Reading, boot_id
from edgegw.radio.emulator import RylrEmulator
from edgegw.store import Store, status

DRIVERS = load_drivers()

DEVICES = [  # (id, address, driver)
    ("trap-01", 17, "trap"),
    ("river-01", 21, "water_level"),
    ("river-02", 22, "water_level"),
]


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
               poll: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def committed_into(events: list) -> Callable[[list], threading.Event]:
    """An ``emit`` for a source under test, without a writer: it keeps what the source hands over in
    ``events`` and takes it as committed at once."""
    def emit(handed: list) -> threading.Event:
        events.extend(handed)
        return COMMITTED
    return emit


COMMITTED = threading.Event()
COMMITTED.set()


def write_config(tmp: Path, link: Path, mqtt_port: int | None, topic: str = "test/{gateway}/batches",
                 extra: str = "", log_level: str = "debug", max_items: int = 50, top: str = "") -> Path:
    devices = "".join(
        # rate_limit = 0: the tests send bursts far beyond what a field sends (test_auth.py tests the limit).
        f'\n[[devices]]\nid = "{d}"\naddress = {a}\ndriver = "{drv}"\ninterval = "10m"\nrate_limit = 0\n'
        for d, a, drv in DEVICES
    )
    uplink = (f'\n[[uplinks]]\ntype = "mqtt"\nname = "broker"\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
              f'topic = "{topic}"\nbatch = {{ max_items = {max_items} }}\n') if mqtt_port else ""
    path = tmp / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-test"\ndata_dir = "data"\n{top}\n[[sources]]\ntype = "rylr"\nname = "lora0"\n'
        f'port = "{link}"\n{devices}{uplink}{extra}\n[log]\nlevel = "{log_level}"\nformat = "json"\n'
    )
    return path


@dataclass
class Sender:
    """Sends frames of the test devices through the emulator and remembers what each should decode to."""

    emulator: RylrEmulator
    strict: bool = True  # False: a frame the module could not pass on (host not reading) is just not recorded
    counters: dict[str, int] = field(default_factory=dict)
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # reading id -> expected values
    keys: dict[str, bytes] = field(default_factory=dict)  # devices that seal their frames (edgegw.envelope)
    last: str = ""  # the last frame sent, as the module's hex

    def send(self, device_id: str, values: dict[str, Any] | None = None) -> str:
        _, address, driver = next(d for d in DEVICES if d[0] == device_id)
        n = self.counters.get(device_id, 0)
        self.counters[device_id] = n + 1
        if values is None:
            values = ({"state": "sprung" if n % 2 else "armed", "tamper": False, "battery": 3.3}
                      if driver == "trap" else
                      {"level": (1000 + 7 * n) % 10000, "water_temperature": 12.5, "battery": 3.6})
        payload = DRIVERS[driver].encode(values, n)
        key = self.keys.get(device_id)
        if key is not None:  # the envelope's counter names the reading; it starts at 1
            payload = seal(key, address, n + 1, payload)
        self.last = data = payload.hex().upper()
        if not self.emulator.receive(address, data, -80, 7.5):
            assert not self.strict, "emulator did not pass the frame (not configured?)"
            return ""
        # The 16-bit counter of a plain frame wraps into a new epoch.
        reading_id = f"{device_id}:0:{n + 1}" if key else f"{device_id}:{n >> 16}:{n & 0xFFFF}"
        self.sent[reading_id] = values
        return reading_id

    def burst(self, count: int) -> list[str]:
        return [self.send(DEVICES[i % len(DEVICES)][0]) for i in range(count)]

    def quiet(self, count: int, start: int = 0) -> list[str]:
        """A field on a quiet day: rivers vary below any stage, traps stay armed: no alarms.

        Every value varies a little, so a frame after the 16-bit counter wrapped is not a copy of the
        frame 65,536 earlier (which the gateway would rightly take for a retransmission). ``start``
        continues the devices' round from where an earlier call left it (frames sent one at a time).
        """
        out = []
        for i in range(start, start + count):
            device = DEVICES[i % len(DEVICES)][0]
            values = ({"state": "armed", "tamper": False, "battery": 3.6 - (i % 50) / 1000}
                      if device.startswith("trap") else
                      {"level": 1000 + (7 * i) % 1000, "water_temperature": 12.5, "battery": 3.6})
            out.append(self.send(device, values))
        return out


class Daemon:
    """``edgegw run`` as a child process; ended by PID only."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, inject: str = ""):
        self.config = config
        self.env = env or {}  # extra environment, e.g. libfaketime's
        # Python run in the daemon's process before edgegw's own main: a fault injected at the lowest
        # level (a method of ours replaced by one that fails), the rest of the daemon unchanged.
        self.inject = inject
        self.db = config.parent / "data" / "edgegw.db"
        self.log = config.parent / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.recorded: dict[str, float] = {}  # source -> when its state was recorded before start()

    def start(self) -> Daemon:
        # What the database says of the sources from before is not this process's (a daemon killed
        # with kill -9 left "receiving"): by when it was recorded, which libfaketime may have set.
        self.recorded = {s["name"]: s["changed_at"] for s in self.status().get("sources", [])}
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        with open(self.log, "ab") as log:
            main = ["-c", f"{self.inject}\nfrom edgegw.cli import main\nmain()"] if self.inject else ["-m", "edgegw"]
            self.proc = subprocess.Popen(
                [sys.executable, *main, "run", "-c", str(self.config)], stdout=log, stderr=log, env=env,
            )
        return self

    def status(self) -> dict[str, Any]:
        if not self.db.exists():
            return {}
        try:
            return status(self.db)
        except Exception:  # the database may be mid-creation
            return {}

    def wait_receiving(self, timeout: float = 20.0) -> None:
        def receiving() -> bool:
            self.check_alive()
            return any(s["state"] == "receiving" and s["changed_at"] != self.recorded.get(s["name"])
                       for s in self.status().get("sources", []))
        wait_until(receiving, timeout, f"source receiving (log: {self.log_tail()})")

    def wait_uplinks_up(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            self.check_alive()
            uplinks = self.status().get("uplinks", [])
            return bool(uplinks) and all(u["state"] == "up" for u in uplinks)
        wait_until(up, timeout, f"uplinks up (log: {self.log_tail()})")

    def wait_committed(self, count: int, timeout: float = 20.0) -> None:
        def committed() -> bool:
            self.check_alive()
            ob = self.status().get("outbox", {})
            return ob.get("pending", 0) + ob.get("delivered", 0) >= count
        wait_until(committed, timeout, f"{count} readings committed")

    def check_alive(self) -> None:
        """Raise, with the end of its log, if the daemon has exited: a crash fails at once, not at a timeout."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"daemon did not stop on SIGTERM:\n{self.log_tail()}") from None


def fill_outbox(db: Path, count: int, device: str = "river-01") -> None:
    """Put ``count`` pending readings (ids ``backlog:0:<n>``) straight into a stopped daemon's outbox."""
    store = Store(db)
    bit = store.register_uplinks(["broker"])["broker"]
    boot, now = boot_id(), time.time()
    store.begin()
    for i in range(count):
        reading = Reading(f"backlog:0:{i}", device, "water_level", now - count + i, "synced", i,
                          {"level": 1000 + i % 1000, "water_temperature": 12.5, "battery": 3.6}, "lora0", 21,
                          -80.0, 7.5, 0.0, boot)
        store.add_reading(reading, b"\x01" * 9, bit, now)
        if i % 50_000 == 49_999:
            store.commit()
            store.begin()
    store.commit()
    store.close()

