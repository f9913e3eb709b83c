"""The Sigfox uplink's forwarder: which alarms go over the module, when, and who pays first.

It stands where :class:`edgegw.forwarder.Forwarder` stands for the other uplinks (same events to
the writer: :class:`~edgegw.model.Ack`, :class:`~edgegw.model.UplinkState`), but a Sigfox
message is not a batch: one alarm a message, a few seconds each, 140 a day at most. So each alarm
routed to it (its bit in ``queue.pending``) is decided on its own, about once a second:

* the kind's ``when`` is ``always``: due at once;
* ``fallback``: due once ``delay`` has passed since the alarm was accepted and no main uplink (the
  other uplinks the alarm was routed to) has acknowledged it; one that has is *released* (its
  Sigfox bit cleared, "not needed"), as is one below the kind's ``min_severity``;
* of the due alarms, urgent ones go first, then the more severe, then the older;
* the budget (:mod:`.budget`) refuses a normal alarm once only the reserve is left, and any alarm
  once the 24 hours' limit is spent: the alarm is released from Sigfox, logged and shown in status,
  and stays pending for the main uplinks like everything Sigfox carried.

Releasing clears only the Sigfox bit: the main uplinks deliver the full alarm when they return,
and the platform de-duplicates it against the message by its alarm ref (see :mod:`.codec`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial
import structlog

from edgegw.backoff import Backoff
from edgegw.config.uplinks import SigfoxAlarm, SigfoxUplink
from edgegw.errors import ModuleError
from edgegw.model import SEVERITIES, Ack, Event, UplinkState, boot_id
from edgegw.route import Routing
from edgegw.store import open_reader
from edgegw.store import queue as send_queue
from edgegw.uplink.sigfox import codec
from edgegw.uplink.sigfox.budget import Budget, Spend, budget_path, read_summary
from edgegw.uplink.sigfox.emulator import SigfoxEmulator
from edgegw.uplink.sigfox.module import SigfoxModule

log = structlog.get_logger("edgegw.uplink.sigfox")

SEND_TRIES = 3  # sends of one alarm the module fails, before it is left to the main uplinks
IDLE = 1.0  # s between looks at the queue when nothing is due sooner
CANDIDATES = 200  # alarms looked at in one turn: the most urgent first


@dataclass(frozen=True, slots=True)
class Candidate:
    seq: int
    pending: int
    accepted_at: float
    item: dict[str, Any]


class SigfoxSender:
    """One Sigfox uplink: reads the alarms routed to it, sends the due ones, posts acks to the writer."""

    def __init__(self, config: SigfoxUplink, bit: int, routing: Routing, db_path: Path, data_dir: Path,
                 post: Callable[[Event], None]):
        self.config, self.bit, self.routing = config, bit, routing
        self.uplink = SigfoxModule(config, config.serial_port(data_dir))
        self.db_path, self.budget_path, self.post = db_path, budget_path(data_dir, config.name), post
        self.wake = threading.Event()  # set by the writer when items are committed
        self.urgent = threading.Event()  # the same for alarms: the loop looks at once either way
        self.inflight_items = 0  # read by the writer for status: the alarm being sent
        self._busy: set[int] = set()  # seqs whose ack the writer has not recorded yet
        self._busy_lock = threading.Lock()
        self._first_seen: dict[int, float] = {}  # seq -> monotonic time this process first saw it
        self._failures: dict[int, int] = {}  # seq -> failed sends
        self._shown: tuple[str, str] | None = None
        self.boot_id = boot_id()

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``. The daemon runs it again after a crash: the port is opened afresh."""
        reader = open_reader(self.db_path)
        budget = Budget(self.budget_path, self.config.daily_limit, self.config.reserve)
        backoff = Backoff(1.0, 300.0)
        emulator = None
        if self.config.simulate:  # the demo: a module with a real one's timing, on a pty
            emulator = SigfoxEmulator(Path(self.uplink.port), send_delay=6.0, downlink_delay=25.0)
            emulator.plug()
            log.info("simulated Sigfox module", uplink=self.uplink.name, port=self.uplink.port)
        try:
            while not stop.is_set():
                if not self.uplink.is_open and not self._open(budget, backoff, stop):
                    continue
                try:
                    wait = self._turn(reader, budget, stop)
                    backoff.reset()
                except (ModuleError, serial.SerialException, OSError) as exc:
                    self.uplink.close()
                    delay = backoff.next()
                    log.warning("Sigfox module failed; reopening its port", uplink=self.uplink.name,
                                port=self.uplink.port, error=str(exc), retry_in=round(delay, 1))
                    self._show(budget, "down", f"{exc}; reopening")
                    stop.wait(delay)
                    continue
                self.wake.wait(wait)
                self.wake.clear()
                self.urgent.clear()
        finally:
            self.uplink.close()
            if emulator is not None:
                emulator.unplug()
            budget.close()
            reader.close()

    def _open(self, budget: Budget, backoff: Backoff, stop: threading.Event) -> bool:
        self._show(budget, "connecting", f"opening {self.uplink.port}")
        try:
            identity = self.uplink.open()
        except (ModuleError, serial.SerialException, OSError) as exc:
            delay = backoff.next()
            log.warning("Sigfox module not answering", uplink=self.uplink.name, port=self.uplink.port,
                        error=str(exc), retry_in=round(delay, 1))
            self._show(budget, "down", f"{self.uplink.port}: {exc}")
            stop.wait(delay)
            return False
        log.info("Sigfox module ready", uplink=self.uplink.name, port=self.uplink.port,
                 device_id=identity.device_id, pac=identity.pac)
        self._show(budget, "up", "")
        return True

    def _turn(self, reader, budget: Budget, stop: threading.Event) -> float:
        """Release what Sigfox need not carry, send the most urgent due alarm; the seconds until
        the next look."""
        now, mono = time.time(), time.monotonic()
        due: list[tuple[tuple, Candidate, SigfoxAlarm]] = []
        wait = IDLE
        for c in self._candidates(reader):
            rule = self.config.alarms.get(c.item.get("alarm", ""))
            if c.item.get("type") != "alarm" or rule is None:
                self._release(c, "not an alarm kind this uplink carries")
                continue
            if SEVERITIES.index(c.item["severity"]) < SEVERITIES.index(rule.min_severity):
                self._release(c, f"below {rule.min_severity}")
                continue
            if rule.when == "fallback":
                main = self.routing.others(self.bit, "alarm", c.item["device"], c.item["alarm"])
                if main & ~c.pending:
                    self._release(c, "acknowledged over a main uplink in time")
                    continue
                age = max(mono - self._first_seen.setdefault(c.seq, mono), now - c.accepted_at)
                if age < rule.delay:
                    wait = min(wait, rule.delay - age)
                    continue
            due.append(((rule.priority != "urgent", -SEVERITIES.index(c.item["severity"]), c.seq), c, rule))
        if not due:
            self._show(budget, "up", "")
            return wait
        _, c, rule = min(due, key=lambda d: d[0])
        self._send(c, rule, budget, now, mono, stop)
        return 0.0  # look again at once: more may be due

    def _candidates(self, reader) -> list[Candidate]:
        """Items pending for this uplink, by the urgent lane's index (alarms only ever come here)."""
        with self._busy_lock:
            busy = set(self._busy)
        reader.execute("BEGIN")  # one snapshot for the seqs, their items and their bits
        try:
            seqs = send_queue.next_urgent(reader, self.bit, self.boot_id, 1, CANDIDATES)
            items = send_queue.batch_items(reader, seqs)
            facts = send_queue.still_pending(reader, seqs)
        finally:
            reader.execute("COMMIT")
        for gone in set(self._first_seen) - set(seqs):  # acknowledged meanwhile: forget
            self._first_seen.pop(gone, None)
            self._failures.pop(gone, None)
        return [Candidate(seq, *facts[seq], json.loads(items[seq])) for seq in seqs
                if seq not in busy and seq in items and seq in facts]

    # -- decisions ------------------------------------------------------------------------------

    def _send(self, c: Candidate, rule: SigfoxAlarm, budget: Budget, now: float, mono: float,
              stop: threading.Event) -> None:
        item, fallback = c.item, rule.when == "fallback"
        where = {"uplink": self.uplink.name, "alarm": item["alarm"], "id": item["id"], "device": item["device"],
                 "severity": item["severity"], "priority": rule.priority}
        if not budget.allows(rule.priority, now, mono):
            used = budget.refuse(item["id"], item["alarm"], item["device"], rule.priority, now, mono)
            log.warning("Sigfox budget refused an alarm; it waits for the main uplinks", **where, used=used,
                        limit=self.config.daily_limit, reserve=self.config.reserve)
            self._release(c, "budget", quiet=True)
            self._show(budget, "up", "")
            return
        self.uplink.ping()  # a module gone since the last look fails here, before a message is counted
        message = codec.message_of(item, fallback)
        payload = codec.encode(message)
        confirm_every = self.config.confirm_every
        last = budget.last_confirmed()
        downlink = confirm_every is not None and (last is None or now - last >= confirm_every)
        used = budget.spend(Spend(item["id"], item["alarm"], item["device"], message.alarm_ref, fallback, downlink),
                            now, mono)
        self.inflight_items = 1
        self._show(budget, "sending", f"{item['alarm']} {item['device']} ({payload.hex().upper()})", (item["id"], now))
        try:
            rx = self.uplink.send(payload, downlink, stop)
        except ModuleError:
            tries = self._failures[c.seq] = self._failures.get(c.seq, 0) + 1
            if tries >= SEND_TRIES:
                log.error("Sigfox send failed again; the alarm is left to the main uplinks", **where, tries=tries)
                self._release(c, "send failed", quiet=True)
            raise
        finally:
            self.inflight_items = 0
        budget.done(item["id"], now)
        log.warning("alarm sent over Sigfox", **where, ref=message.alarm_ref, payload=payload.hex().upper(),
                    fallback=fallback, used=used, limit=self.config.daily_limit, downlink=rx.hex() if rx else None)
        if rx is not None:
            budget.confirmed(now, rx)
            log.info("Sigfox downlink received: the platform hears this module", uplink=self.uplink.name,
                     data=rx.hex().upper())
        self._ack(c)
        self._show(budget, "up", "")

    def _release(self, c: Candidate, why: str, quiet: bool = False) -> None:
        """Clear this uplink's bit without sending: the main uplinks still deliver the alarm."""
        if not quiet:
            log.info("alarm not sent over Sigfox", uplink=self.uplink.name, alarm=c.item.get("alarm"),
                     id=c.item.get("id"), reason=why)
        self._ack(c, delivered=False)

    def _ack(self, c: Candidate, delivered: bool = True) -> None:
        with self._busy_lock:
            self._busy.add(c.seq)
        self.post(Ack(self.uplink.name, self.bit, [c.seq], delivered=delivered))

    def notify(self, urgent: bool = False, items: int = 0, burst: bool = False) -> None:
        """The writer committed items (alarms among them when ``urgent``): look at once."""
        if urgent:
            self.urgent.set()
        self.wake.set()

    def recorded(self, seqs: list[int]) -> None:
        """The writer recorded (or failed to record) the acks of ``seqs``: look at them again if still pending."""
        with self._busy_lock:
            self._busy.difference_update(seqs)
        self.wake.set()

    # -- status ---------------------------------------------------------------------------------

    def _show(self, budget: Budget, state: str, detail: str, sending: tuple[str, float] | None = None) -> None:
        """Post the state with the budget and the last send and refusal, when any of them changed
        (``sending``: the send being made, see :meth:`Budget.summary`)."""
        s = budget.summary(time.time(), time.monotonic(), sending)
        ident = self.uplink.identity
        parts = [f"module {ident.device_id}" if ident else "module not identified yet",
                 f"budget {s['used']}/{s['limit']} in 24 h ({s['reserve']} kept for urgent alarms)"]
        if s["last_sent"]:
            parts.append(f"last sent {s['last_sent']['alarm']} {s['last_sent']['device']} at {s['last_sent']['at']}")
        if s["last_failed"]:
            parts.append(f"{s['failed_24h']} sends failed in 24 h (not known to have gone over the air), last "
                         f"{s['last_failed']['alarm']} {s['last_failed']['device']} at {s['last_failed']['at']}")
        if s["last_refused"]:
            parts.append(f"{s['refused_24h']} refused in 24 h, last {s['last_refused']['alarm']} "
                         f"{s['last_refused']['device']} at {s['last_refused']['at']}")
        if s["confirmed_at"]:
            parts.append(f"platform heard it at {s['confirmed_at']} (downlink)")
        if detail:
            parts.append(detail)
        shown = (state, "; ".join(parts))
        if shown != self._shown:
            self._shown = shown
            self.post(UplinkState(self.uplink.name, *shown))


def sigfox_health(config, now: float | None = None) -> dict[str, Any]:
    """The ``sigfox`` part of the health report: each Sigfox uplink's budget; {} when there is none."""
    out = {u.name: read_summary(budget_path(config.data_dir, u.name), u.daily_limit, u.reserve, now)
           for u in config.uplinks if isinstance(u, SigfoxUplink)}
    out = {k: {"used": v["used"], "limit": v["limit"], "refused_24h": v["refused_24h"],
               "last_sent_at": v["last_sent"] and v["last_sent"]["at"]}
           for k, v in out.items() if v is not None}
    return {"sigfox": out} if out else {}

