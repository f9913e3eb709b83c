"""The Sigfox budget: messages sent in the last 24 hours, kept in a small SQLite file of its own.

Its own file (``sigfox-<uplink>.db`` in the data directory), not a table of the outbox: the sender
writes it from its own thread, before each send, and the outbox has exactly one writer. A send is
counted *before* the module is asked to transmit, durably: a crash mid-send can only over-count,
never let a restart spend the same message twice.

The window is rolling: any 24 hours hold at most ``limit`` sends, which also keeps every calendar
day within the operator's plan. The Pi has no clock of its own: a send counts while it lies within
24 hours of now by the wall clock, or (when the wall clock stepped meanwhile) by the monotonic clock
of the same boot. A send stamped in the future (the clock went back since) counts until it is past.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegw.model import boot_id, iso

WINDOW = 86400.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS sends (at FLOAT, boot TEXT, mono FLOAT, alarm_id TEXT, kind TEXT, device TEXT,
                                  ref TEXT, fallback INTEGER, downlink INTEGER, done INTEGER);
CREATE TABLE IF NOT EXISTS refusals (at FLOAT, alarm_id TEXT, kind TEXT, device TEXT, priority TEXT, used INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""


def budget_path(data_dir: Path, uplink: str) -> Path:
    return data_dir / f"sigfox-{uplink}.db"


@dataclass(frozen=True, slots=True)
class Spend:
    alarm_id: str
    kind: str
    device: str
    ref: str
    fallback: bool
    downlink: bool


class Budget:
    """At most ``limit`` sends in any 24 hours; the last ``reserve`` of them for urgent alarms only."""

    def __init__(self, path: Path, limit: int, reserve: int):
        self.path, self.limit, self.reserve = path, limit, reserve
        self.boot = boot_id()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a send counted must stay counted across a power cut
        self.conn.executescript(SCHEMA)
        if "done" not in {r[1] for r in self.conn.execute("PRAGMA table_info(sends)")}:
            # An older file: its sends were counted once the module said OK. NULL reads as done.
            self.conn.execute("ALTER TABLE sends ADD COLUMN done INTEGER")
        self.prune(time.time())

    def used(self, now: float, mono: float) -> int:
        """Sends within the window (see the module docstring)."""
        return self.conn.execute(
            "SELECT count(*) FROM sends WHERE at > :now - :w OR (boot = :boot AND mono > :mono - :w)",
            {"now": now, "w": WINDOW, "boot": self.boot, "mono": mono}).fetchone()[0]

    def allows(self, priority: str, now: float, mono: float) -> bool:
        """Whether an alarm of ``priority`` ("urgent" or "normal") may spend a message now."""
        room = self.limit if priority == "urgent" else self.limit - self.reserve
        return self.used(now, mono) < room

    def spend(self, spend: Spend, now: float, mono: float) -> int:
        """Count one send, durably, before it is made; returns the sends in the window with it.
        It counts as gone over the air only once :meth:`done` says so."""
        self.conn.execute("INSERT INTO sends VALUES (?,?,?,?,?,?,?,?,?,0)",
                          (now, self.boot, mono, spend.alarm_id, spend.kind, spend.device, spend.ref,
                           int(spend.fallback), int(spend.downlink)))
        return self.used(now, mono)

    def done(self, alarm_id: str, at: float) -> None:
        """The module said OK to the send of ``alarm_id`` counted at ``at``."""
        self.conn.execute("UPDATE sends SET done = 1 WHERE alarm_id = ? AND at = ?", (alarm_id, at))

    def refuse(self, alarm_id: str, kind: str, device: str, priority: str, now: float, mono: float) -> int:
        """Note an alarm the budget had no room for; returns the sends in the window."""
        used = self.used(now, mono)
        self.conn.execute("INSERT INTO refusals VALUES (?,?,?,?,?,?)", (now, alarm_id, kind, device, priority, used))
        return used

    def confirmed(self, now: float, data: bytes) -> None:
        """A downlink came: the platform hears this module."""
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('confirmed', ?)", (f"{now}:{data.hex()}",))

    def last_confirmed(self) -> float | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'confirmed'").fetchone()
        return None if row is None else float(row[0].split(":")[0])

    def prune(self, now: float) -> None:
        """Forget what is a week old: the window needs a day, status shows the recent ones."""
        for table in ("sends", "refusals"):
            self.conn.execute(f"DELETE FROM {table} WHERE at < ?", (now - 7 * WINDOW,))

    def summary(self, now: float, mono: float, sending: tuple[str, float] | None = None) -> dict[str, Any]:
        """For status and the health report; ``sending``: the alarm id and time of the send being
        made now (counted, not yet answered), which is not shown as failed."""
        return summarize(self.conn, self.limit, self.reserve, now, self.used(now, mono), sending)

    def close(self) -> None:
        self.conn.close()


def summarize(conn: sqlite3.Connection, limit: int, reserve: int, now: float, used: int,
              sending: tuple[str, float] | None = None) -> dict[str, Any]:
    # A send the module never said OK to (an error, a timeout, a crash mid-send) spent a message of
    # the budget but is not a last send: shown apart, as failed; not the one being made now.
    last = conn.execute("SELECT at, kind, device, alarm_id, ref FROM sends WHERE done IS NOT 0"
                        " ORDER BY at DESC LIMIT 1").fetchone()
    failed_sql = "FROM sends WHERE done = 0 AND NOT (alarm_id IS :id AND at = :at)"
    params = {"id": sending[0] if sending else None, "at": sending[1] if sending else None, "since": now - WINDOW}
    failed = conn.execute(f"SELECT at, kind, device, alarm_id {failed_sql} ORDER BY at DESC LIMIT 1", params).fetchone()
    refused = conn.execute("SELECT at, kind, device, alarm_id FROM refusals ORDER BY at DESC LIMIT 1").fetchone()
    confirmed = conn.execute("SELECT value FROM meta WHERE key = 'confirmed'").fetchone()
    return {
        "used": used, "limit": limit, "reserve": reserve,
        "refused_24h": conn.execute("SELECT count(*) FROM refusals WHERE at > ?", (now - WINDOW,)).fetchone()[0],
        "last_sent": None if last is None else {"at": iso(last[0]), "alarm": last[1], "device": last[2],
                                                "id": last[3], "ref": last[4]},
        "last_refused": None if refused is None else {"at": iso(refused[0]), "alarm": refused[1],
                                                      "device": refused[2], "id": refused[3]},
        "failed_24h": conn.execute(f"SELECT count(*) {failed_sql} AND at > :since", params).fetchone()[0],
        "last_failed": None if failed is None else {"at": iso(failed[0]), "alarm": failed[1], "device": failed[2],
                                                    "id": failed[3]},
        "confirmed_at": None if confirmed is None else iso(float(confirmed[0].split(":")[0])),
    }


def read_summary(path: Path, limit: int, reserve: int, now: float | None = None) -> dict[str, Any] | None:
    """The summary from another process (``edgegw status``) or thread (the health report): by the
    wall clock alone. None when the uplink never ran."""
    if not path.exists():
        return None
    now = time.time() if now is None else now
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        used = conn.execute("SELECT count(*) FROM sends WHERE at > ?", (now - WINDOW,)).fetchone()[0]
        return summarize(conn, limit, reserve, now, used)
    except sqlite3.OperationalError:  # created, schema not yet written
        return None
    finally:
        conn.close()
