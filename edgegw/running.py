"""Which daemon runs on a data directory, and whether it is still alive.

One daemon per data directory: two would split the serial stream between them and take the MQTT
session from each other. ``edgegw run`` takes an exclusive lock on ``<data_dir>/edgegw.lock``
(flock: the kernel lets go of it when the process dies, even by kill -9), and writes there its pid,
version, start time and where its heartbeat is. The heartbeat is a small JSON file the daemon
rewrites every :data:`HEARTBEAT_EVERY` seconds with the state of each stage; it lives in systemd's
runtime directory (``$RUNTIME_DIRECTORY``, a tmpfs) when there is one, so it costs the SD card
nothing, and beside the database otherwise.

``edgegw status`` asks the lock, not the database, whether the daemon runs: after a kill -9 the
database still says "receiving" and "up", the lock knows better.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from edgegw.errors import EdgegwError

LOCK_NAME = "edgegw.lock"
HEARTBEAT_NAME = "edgegw.heartbeat"
HEARTBEAT_EVERY = 10.0  # s
LOCK_PATIENCE = 2.0  # s: `edgegw status` holds a shared lock for an instant; a starting daemon waits that out


class AlreadyRunning(EdgegwError):
    """Another daemon holds the data directory's lock."""


class DataDirLock:
    """The exclusive lock of a running daemon on its data directory; released when the process ends."""

    def __init__(self, data_dir: Path, version: str):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / LOCK_NAME
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        self.heartbeat = Path(runtime) / HEARTBEAT_NAME if runtime else data_dir / HEARTBEAT_NAME
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + LOCK_PATIENCE
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = read_lock(self.path).get("pid", "?")
                    os.close(self.fd)
                    raise AlreadyRunning(
                        f"another edgegw (pid {holder}) already runs on {data_dir}: one daemon per data"
                        " directory (stop it first, or give this config its own data_dir)") from None
                time.sleep(0.05)
        self.started_at = time.time()
        body = json.dumps({"pid": os.getpid(), "version": version, "started_at": self.started_at,
                           "heartbeat": str(self.heartbeat.absolute())}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, body, 0)
        self._beat_fd = os.open(self.heartbeat, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # Its block is taken now, while there is room: beats rewrite it in place, so a disk filled
        # meanwhile cannot stop the heartbeat that reports it full. "{}": no beat yet.
        os.pwrite(self._beat_fd, b"{}", 0)
        os.ftruncate(self._beat_fd, 2)

    def beat(self, state: dict[str, Any]) -> None:
        """Rewrite the heartbeat in place (no new file, no rename: one page, rewritten)."""
        body = json.dumps({"at": time.time(), **state}, separators=(",", ":")).encode()
        os.pwrite(self._beat_fd, body, 0)
        os.ftruncate(self._beat_fd, len(body))

    def release(self) -> None:
        os.close(self._beat_fd)
        os.close(self.fd)  # closing the last descriptor lets go of the flock


def read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}


def daemon_state(data_dir: Path) -> dict[str, Any]:
    """Whether a daemon runs on ``data_dir``: ``running``, and its pid, version, start and last heartbeat.

    A shared lock taken for an instant answers it: granted means nobody holds the exclusive one.
    """
    path = data_dir / LOCK_NAME
    if not path.exists():
        return {"running": False}
    info = read_lock(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {"running": None, **info}  # cannot tell (not allowed to read it)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        running = False
    except BlockingIOError:
        running = True
    finally:
        os.close(fd)
    out: dict[str, Any] = {"running": running, **{k: info.get(k) for k in ("pid", "version", "started_at")}}
    if running and info.get("heartbeat"):
        out["heartbeat"] = _read_heartbeat(Path(info["heartbeat"]))
    return out


def _read_heartbeat(path: Path) -> dict[str, Any] | None:
    for _ in range(3):  # a read may meet a rewrite half done
        try:
            return json.loads(path.read_bytes())
        except ValueError:
            time.sleep(0.01)
        except OSError:
            return None
    return None
