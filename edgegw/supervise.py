"""Supervised stages: each of the daemon's threads runs one, and a crash costs a restart, never the stage.

A stage that raises is logged, counted and started again after a backoff; it counts as alive only
while its code runs (and, for a stage that beats, while it beat recently). The daemon feeds the
systemd watchdog only while every stage is alive, so a stage that keeps dying, or hangs, is seen
by systemd as well as in ``edgegw status``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from edgegw.backoff import Backoff

log = structlog.get_logger("edgegw.supervise")

# s: restarts back off from 1 s to 16 s, under the unit's 30 s WatchdogSec: one restart alone does not
# get the process killed, but a stage that hangs does.
RESTART_FIRST, RESTART_LIMIT = 1.0, 16.0
# s: a stage that ran this long before it crashed starts again from the first delay.
RAN_WELL = 120.0


class Stage:
    """One supervised thread: ``target()`` runs until it returns (the stage is done) or raises (restarted).

    ``stale_after``: a stage that promises to :meth:`beat` at least this often is not alive when it
    has not (a hang). ``on_crash`` runs in the stage's thread after a crash, before the restart, to
    put things right (roll back a transaction, reload state).
    """

    def __init__(self, name: str, target: Callable[[], object], stop: threading.Event,
                 stale_after: float | None = None, on_crash: Callable[[Exception], None] | None = None):
        self.name, self.target, self.stop = name, target, stop
        self.stale_after, self.on_crash = stale_after, on_crash
        self.restarts = 0
        self.last_error: str | None = None
        self.last_crash_at: float | None = None
        self.running = False
        self.last_beat = time.monotonic()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def beat(self) -> None:
        """Say the stage is making progress (stages with ``stale_after`` call this in their loop)."""
        self.last_beat = time.monotonic()

    def _run(self) -> None:
        backoff = Backoff(RESTART_FIRST, RESTART_LIMIT)
        while True:
            started = time.monotonic()
            self.beat()
            self.running = True
            try:
                self.target()
                return
            except Exception as exc:
                self.running = False
                self.restarts += 1
                self.last_error, self.last_crash_at = f"{type(exc).__name__}: {exc}"[:300], time.time()
                log.exception("stage crashed; restarting it", stage=self.name, restarts=self.restarts)
                if self.on_crash is not None:
                    try:
                        self.on_crash(exc)
                    except Exception:
                        log.exception("putting a crashed stage right failed", stage=self.name)
            finally:
                self.running = False
            if time.monotonic() - started >= RAN_WELL:
                backoff.reset()
            if self.stop.wait(backoff.next()):
                return

    def problem(self, now: float) -> str | None:
        """Why this stage is not alive now (``now`` is monotonic), or None when it is."""
        if not self.thread.is_alive():
            return "stopped"
        if not self.running:
            return f"restarting after a crash ({self.last_error})"
        if self.stale_after is not None and now - self.last_beat > self.stale_after:
            return f"no progress for {now - self.last_beat:.0f} s"
        return None

    def describe(self, now: float) -> dict[str, Any]:
        """The stage as ``edgegw status`` shows it (``now`` is monotonic)."""
        problem = self.problem(now)
        return {"state": "alive" if problem is None else problem, "restarts": self.restarts,
                "last_error": self.last_error, "last_crash_at": self.last_crash_at}
