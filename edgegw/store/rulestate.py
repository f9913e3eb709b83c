"""What the rules remember between readings and across restarts: each rule's state per device, the
readings held back to be evaluated in observation order, and the rules' clock (see
edgegw.rules.engine). Written in the transaction of the readings that changed it, so a crash never
leaves a rule's memory ahead of or behind the outbox.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable
from typing import Any

from edgegw.store.transactions import Tables

CLOSED_BY_CONFIG = "config change"  # an alarm's closed_by when no rule watches its device any more


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class RuleStateTables(Tables):
    """The ``rule_state`` and ``rule_buffer`` tables, and the rules' clock in ``meta``."""

    def rule_states(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(rule, device id) -> the rule's state for that device."""
        return {(rule, device): json.loads(state)
                for rule, device, state in self.conn.execute("SELECT rule, device_id, state FROM rule_state")}

    def held_readings(self) -> list[list[Any]]:
        """The readings held back (each as the list it was saved as), in observation order."""
        return [json.loads(body) for (body,) in
                self.conn.execute("SELECT reading FROM rule_buffer ORDER BY observed_at, reading_id")]

    def rules_clock(self) -> dict[str, float] | None:
        """The rules' clock as last saved: ``wall`` (when) and ``since`` (listening since)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'rules_clock'").fetchone()
        return json.loads(row[0]) if row else None

    def save_rules(self, clock: dict[str, float] | None, states: Iterable[tuple[str, str, dict[str, Any]]],
                   held: Iterable[tuple[str, float, object]], released: Iterable[str]) -> None:
        """Inside the writer's transaction: the clock (if given), changed states, readings newly
        held (id, observed at, the reading as a JSON-able list) and those released since."""
        if clock is not None:
            self.conn.execute("INSERT INTO meta(key, value) VALUES ('rules_clock', ?)"
                              " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (_compact(clock),))
        # In place (see edgegw.store.devices.UPSERT): REPLACE would rewrite the primary key's index as well.
        self.conn.executemany("INSERT INTO rule_state(rule, device_id, state) VALUES (?, ?, ?)"
                              " ON CONFLICT(rule, device_id) DO UPDATE SET state = excluded.state",
                              [(r, d, _compact(s)) for r, d, s in states])
        self.conn.executemany("INSERT OR REPLACE INTO rule_buffer(reading_id, observed_at, reading) VALUES (?, ?, ?)",
                              [(i, t, _compact(o)) for i, t, o in held])
        self.conn.executemany("DELETE FROM rule_buffer WHERE reading_id = ?", [(r,) for r in released])

    def forget_rule_states(self, keys: Iterable[tuple[str, str]]) -> None:
        """Drop the states of these (rule, device id) pairs: no rule of the config watches them any more."""
        self.conn.executemany("DELETE FROM rule_state WHERE rule = ? AND device_id = ?", list(keys))

    def unwatched_alarms(self, watched: Container[tuple[str, str]]) -> list[tuple[str, str, str, str]]:
        """The open alarms of (rule, device id) pairs not in ``watched``: their device or rule left
        the config, so nothing would ever close them. (id, kind, rule, device id) of each."""
        return [r for r in self.conn.execute("SELECT id, kind, rule, device_id FROM alarms WHERE open = 1")
                if (r[2], r[3]) not in watched]

    def close_alarms(self, ids: Iterable[str], at: float) -> None:
        """Inside a transaction: close these alarms, closed by :data:`CLOSED_BY_CONFIG`."""
        self.conn.executemany("UPDATE alarms SET open = 0, closed_by = ?, closed_at = ? WHERE id = ?",
                              [(CLOSED_BY_CONFIG, at, i) for i in ids])
