"""The alarm log: every alarm raised, open until a later alarm closes it (``edgegw alarms``).

An alarm is an outbox item too (at alarm priority, for every uplink); the log keeps its own row,
which outlives the delivered item until housekeeping lets closed alarms go (:data:`PURGEABLE`).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from edgegw.items import alarm_item
from edgegw.model import PRIORITY_ALARM, Alarm
from edgegw.store.connection import Queries
from edgegw.store.outbox import OutboxTables, _json

COLUMNS = "id, kind, severity, device_id, rule, raised_at, late, message, open, closed_by, closed_at"

# The closed alarms of the log that housekeeping may delete, raised before ``:cutoff``: never an
# open one, nor one whose outbox item is still on its way.
PURGEABLE = ("open = 0 AND raised_at < :cutoff AND NOT EXISTS"
             " (SELECT 1 FROM outbox o CROSS JOIN queue q ON q.seq = o.seq"
             " WHERE o.counter IS NULL AND o.item_id = alarms.id)")


class AlarmLog(OutboxTables):
    """Alarms into the outbox and the log, in the writer's transaction."""

    def add_alarm(self, alarm: Alarm, pending: int, now: float) -> bool:
        """Put an alarm in the outbox at alarm priority and in the alarm log; False if it was already there."""
        body = _json(alarm_item(alarm))
        if not self.add_item(alarm.alarm_id, "alarm", PRIORITY_ALARM, alarm.device_id, alarm.raised_at, 0.0, "",
                             None, body, pending, now):
            return False
        self.conn.execute(
            "INSERT OR IGNORE INTO alarms(id, kind, severity, device_id, rule, raised_at, late, message, open, body,"
            " acted) VALUES (?,?,?,?,?,?,?,?,?,?,0)",
            (alarm.alarm_id, alarm.kind, alarm.severity, alarm.device_id, alarm.rule, alarm.raised_at,
             int(alarm.late), alarm.message, int(alarm.opens), body),
        )
        for closed in alarm.closes:
            self.conn.execute(
                "UPDATE alarms SET open = 0, closed_by = ?, closed_at = ? WHERE id = ? AND open = 1",
                (alarm.alarm_id, alarm.raised_at, closed),
            )
        return True

    def actions_started(self, alarm_ids: tuple[str, ...]) -> None:
        """These alarms' local actions were started (in the writer's transaction)."""
        self.conn.executemany("UPDATE alarms SET acted = 1 WHERE id = ?", [(i,) for i in alarm_ids])

    def actions_owed(self, since: float) -> list[Alarm]:
        """The alarms raised since ``since`` whose local actions were never started (the daemon was
        killed between the alarm's commit and its actions), the oldest first."""
        rows = self.conn.execute("SELECT id, kind, severity, device_id, rule, raised_at, late, message, body"
                                 " FROM alarms WHERE acted = 0 AND raised_at >= ? ORDER BY raised_at", (since,))
        out = []
        for alarm_id, kind, severity, device_id, rule, raised_at, late, message, body in rows:
            item = json.loads(body)
            location = tuple(item["location"]) if item.get("location") else None
            out.append(Alarm(alarm_id, kind, severity, device_id, rule, raised_at, message, item.get("details") or {},
                             item.get("reading"), item.get("time_quality", "synced"), bool(late), item.get("name"),
                             location, verified=item.get("verified")))
        return out


def purge_closed(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Inside the caller's transaction: delete up to ``limit`` purgeable alarms (see :data:`PURGEABLE`),
    the oldest first. How many went."""
    return conn.execute(f"DELETE FROM alarms WHERE rowid IN (SELECT rowid FROM alarms WHERE {PURGEABLE}"
                        " ORDER BY raised_at LIMIT :limit)", {"cutoff": cutoff, "limit": limit}).rowcount


def count_purgeable(conn: Queries, cutoff: float) -> int:
    return conn.execute(f"SELECT count(*) FROM alarms WHERE {PURGEABLE}", {"cutoff": cutoff}).fetchone()[0]


def alarm_rows(conn: sqlite3.Connection, where: str, limit: int) -> list[dict[str, Any]]:
    """Rows of the log (``where`` is SQL over its columns), the newest first."""
    rows = conn.execute(f"SELECT {COLUMNS} FROM alarms WHERE {where} ORDER BY raised_at DESC LIMIT ?", (limit,))
    return [{**dict(r), "late": bool(r["late"]), "open": bool(r["open"])} for r in rows]
