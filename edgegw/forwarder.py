"""Forwarder: pending outbox items -> batches -> one uplink; acknowledgements back to the writer.

One forwarder thread per uplink reads the outbox through its own read-only connection, by priority
then age, keeps up to ``max_inflight`` batches awaiting acknowledgement, and posts each ack to the
writer as an :class:`Ack` (and waits when the writer falls behind recording them). Items of an
unacknowledged batch are simply eligible again once the uplink reports the failure (or after a
restart), so delivery is at least once.

A transient failure backs off (exponentially, with jitter, at least as long as the platform's
``Retry-After``). A permanent one means something in the batch is refused: the batch is split in
halves, each sent on its own, until the refused item stands alone; it is then parked with the
platform's error (:class:`Park`) and the rest flows on.

An uplink can wedge without ever saying down: a broker that answers pings but acknowledges
nothing, a context broker that trickles its answer. The uplinks bound each message and request
with a deadline, but a connection that keeps being made and failing still shows "up" or
"connecting" half of the time. So the forwarder, which sees whether items wait and when the last
acknowledgement came, shows the uplink as ``stalled`` (in place of the uplink's own state, which
the detail keeps) once items have waited ``stalled_after`` seconds with nothing acknowledged.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import structlog

from edgegw.backoff import Backoff
from edgegw.clock import SyncWait
from edgegw.errors import PermanentUplinkError, TransientUplinkError, UplinkError
from edgegw.items import Batch, new_batch_id
from edgegw.model import PRIORITY_ALARM, Ack, Event, Park, UplinkState, boot_id
from edgegw.store import open_reader
from edgegw.store import queue as send_queue
from edgegw.uplink import STALLED_AFTER, Uplink

log = structlog.get_logger("edgegw.forwarder")

RESCAN_EVERY = 5.0  # s: at most this often, reaching the end of the plain lane rescans it from its head
# s: while the uplink cannot take a batch, this often at most the outbox is asked whether items wait
# for it (the forwarder reads nothing then, and would not know).
PROBE_EVERY = 1.0
TICK = 1.0  # s: the loop wakes at least this often (stalls, probes, batches that waited their max_wait)...
# ...except when it rests: caught up, nothing in flight, the uplink ready. Then only the rescan is due
# (RESCAN_EVERY), and the writer's notify wakes it for new items: an idle gateway's forwarder woke
# every second to find nothing.


class Named(Protocol):
    @property
    def name(self) -> str: ...


class Sender(Protocol):
    """What the writer needs of a stage that sends one uplink's items: a :class:`Forwarder`, or the
    Sigfox sender (edgegw.uplink.sigfox.sender)."""

    wake: threading.Event  # wakes the stage's loop (the daemon sets it to stop)
    urgent: threading.Event  # set by the writer when alarms are committed

    @property
    def uplink(self) -> Named: ...

    @property
    def inflight_items(self) -> int: ...

    def recorded(self, seqs: list[int]) -> None:
        """The writer is done with an Ack or Park of these seqs."""

    def notify(self, urgent: bool = False, items: int = 0, burst: bool = False) -> None:
        """The writer committed ``items`` new items to look at (alarms among them when ``urgent``; a
        full group of frames, a burst's, when ``burst``), or gave some back."""

    def run(self, stop: threading.Event) -> None: ...


class Forwarder:
    def __init__(self, uplink: Uplink, bit: int, db_path: Path, gateway_id: str, max_items: int, max_bytes: int,
                 max_inflight: int, post: Callable[[Event], None], stalled_after: float = STALLED_AFTER,
                 max_wait: float = 0.0, sync: SyncWait | None = None):
        self.sync = sync or SyncWait(0)  # whether this boot's readings wait for NTP ([clock] await_sync)
        self.uplink, self.bit, self.db_path, self.gateway_id = uplink, bit, db_path, gateway_id
        self.max_items, self.max_bytes, self.max_inflight = max_items, max_bytes, max_inflight
        self.max_wait = max_wait  # s new readings wait for more to share their batch, once all before are sent
        self.post = post  # to the writer's queue
        self.stalled_after = stalled_after
        # monotonic: since when items have waited with nothing acknowledged (an ack starts it afresh);
        # None while nothing waits. The forwarder thread alone touches it.
        self._waiting_since: float | None = None
        self._probed_at = -float("inf")
        # The uplink's own last state, and whether it is shown as stalled instead: posted under the
        # lock, so the uplink's thread and the forwarder's cannot record them out of order.
        self._state_lock = threading.Lock()
        self._reported = ("starting", "")
        self._stalled = False
        self.boot_id = boot_id()
        self.wake = threading.Event()  # wakes the loop: new items, results, states, stop
        # Set by the writer (notify) when items were committed or given back: the outbox is read only
        # then, or when the last read left items behind. At 100 frames/s the forwarder read it three
        # times per batch (after each PUBACK and each ack's commit), for nothing the second and third.
        self._fresh = threading.Event()
        # monotonic: when the writer first committed items since the outbox was last read. While the
        # forwarder is caught up (dry), plain items wait until this + max_wait for more to join their
        # batch: at 100 frames/s a batch, a PUBACK and an ack per commit cost more than the readings.
        self._fresh_at: float | None = None
        # How many items the writer committed since then: a full batch of them goes without waiting.
        # Written by the writer, reset here: a lost count only makes a batch wait longer.
        self._fresh_items = 0
        # monotonic: the writer's last commit of a full group (a burst). Within max_wait of it nothing
        # waits, the burst's last small commits included: they would only make its tail a second late.
        self._burst_at = -float("inf")
        self._dry = False  # the last read found every sendable item sent (see _send_next)
        self._dry_since = 0.0  # monotonic; the outbox is read again RESCAN_EVERY after that all the same
        self._resting = False  # the loop sleeps past its tick (see TICK): a notify must wake it
        # Set by the writer when alarms are committed: they go at once, past the in-flight limit,
        # instead of waiting for a slot behind batches of backlog.
        self.urgent = threading.Event()
        self._results: queue.Queue[tuple[str, UplinkError | None]] = queue.Queue()
        self._inflight: dict[str, list[int]] = {}  # batch id -> outbox seqs
        self.inflight_items = 0  # read by the writer for `edgegw status`; an int, so safe across threads
        self._suspects: list[list[int]] = []  # halves of a refused batch, each to be sent alone
        self._busy: set[int] = set()  # seqs in flight or acked but not yet committed by the writer
        self._busy_lock = threading.Lock()
        self._plain_after = 0  # seq the last batch of plain readings ended at: the next starts after it
        self._rescan_at = 0.0  # monotonic time after which the end of the plain lane sends it back to its head

    def notify(self, urgent: bool = False, items: int = 0, burst: bool = False) -> None:
        """See :meth:`Sender.notify`. Alarms wake the forwarder at once; new plain items only when it
        has more to send anyway, they need not wait (a full batch, a burst), it waits less than
        its own tick (:data:`TICK`) or it rests past it: else it finds them at its tick, one wake-up
        per batch instead of one per commit."""
        now = time.monotonic()
        if self._fresh_at is None:
            self._fresh_at = now
        if burst:
            self._burst_at = now
        self._fresh_items += items
        self._fresh.set()
        if urgent:
            self.urgent.set()
        if urgent or self._resting or not self._dry or self.max_wait < TICK or not self._may_wait(now):
            self.wake.set()

    def _may_wait(self, now: float) -> bool:
        """Whether new plain items may still wait for more: less than a batch of them, no burst lately."""
        return self._fresh_items < self.max_items and now - self._burst_at >= self.max_wait

    def _on_result(self, batch_id: str, error: UplinkError | None) -> None:
        self._results.put((batch_id, error))
        self.wake.set()

    def _on_state(self, state: str, detail: str) -> None:
        with self._state_lock:
            self._reported = (state, detail)
            self.post(self._shown())
        self.wake.set()

    def _shown(self) -> UplinkState:
        state, detail = self._reported
        if not self._stalled:
            return UplinkState(self.uplink.name, state, detail)
        return UplinkState(self.uplink.name, "stalled", f"items waiting and nothing acknowledged for over "
                           f"{self.stalled_after:g} s; uplink {state}: {detail}")

    def _check_stall(self) -> None:
        stalled = self._waiting_since is not None and time.monotonic() - self._waiting_since >= self.stalled_after
        if stalled == self._stalled:
            return
        with self._state_lock:
            self._stalled = stalled
            self.post(self._shown())
        state, detail = self._reported
        if stalled:
            log.warning("uplink stalled: items wait and nothing was acknowledged", uplink=self.uplink.name,
                        for_s=self.stalled_after, state=state, detail=detail, in_flight=self.inflight_items)
        else:
            log.info("uplink no longer stalled", uplink=self.uplink.name, state=state)

    def _waiting(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()

    def _probe(self, reader: sqlite3.Connection) -> None:
        """While the uplink cannot take a batch: whether items wait for it (they do not while none is sendable)."""
        if time.monotonic() - self._probed_at < PROBE_EVERY:
            return
        self._probed_at = time.monotonic()
        waiting = send_queue.waiting(reader, self.bit, self.boot_id, self.sync.held_before)
        if not waiting and not self._inflight:
            self._waiting_since = None
        elif waiting:
            self._waiting()

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop``. The daemon runs it again after a crash: what was in flight goes again."""
        with self._busy_lock:
            for seqs in (*self._inflight.values(), *self._suspects):
                self._busy.difference_update(seqs)
        self._inflight.clear()
        self._suspects.clear()
        self.inflight_items = self._plain_after = 0
        self._waiting_since, self._probed_at = None, -float("inf")
        with self._state_lock:
            self._stalled = False  # the fresh uplink's first state replaces what was shown
        reader = open_reader(self.db_path)
        self.uplink.start(self._on_result, self._on_state)
        backoff = Backoff(0.5, 60.0)
        try:
            while not stop.is_set():
                if self._handle_results(backoff, stop):
                    continue
                if self.urgent.is_set() and self.uplink.ready():
                    self.urgent.clear()
                    if self._send_next(reader, PRIORITY_ALARM):
                        self._waiting()
                if self.uplink.ready() and self._room():
                    if self._worth_reading() and self._send_next(reader):
                        self._waiting()
                        continue
                    if not self._inflight and not self._suspects:
                        self._waiting_since = None  # all sent and acknowledged: nothing waits
                elif not self.uplink.ready():
                    self._probe(reader)
                self._check_stall()
                self.wake.wait(self._sleep())
                self._resting = False
                self.wake.clear()
        finally:
            self.uplink.stop()
            reader.close()

    def _worth_reading(self) -> bool:
        """Whether to read the outbox now: it may hold sendable items the forwarder has not sent, and
        new ones have waited their max_wait. Cleared before the read that follows: a notify after it
        is seen by the next one."""
        if self._dry:
            now = time.monotonic()
            if not self._fresh.is_set():
                if now - self._dry_since < RESCAN_EVERY:
                    return False
            elif now < (self._fresh_at or 0.0) + self.max_wait and self._may_wait(now):
                return False
        self._fresh.clear()
        self._fresh_at = None
        self._fresh_items = 0
        return True

    def _sleep(self) -> float:
        """How long the loop may sleep: a tick, or less when new items are due to go before it.

        Not while they cannot go (the uplink down, or as many batches in flight as allowed): the
        loop would spin, holding the GIL the writer needs, until that changed; a change wakes it.
        Longer when it rests (see :data:`TICK`)."""
        if (self._dry and self._fresh.is_set() and self._fresh_at is not None
                and self.uplink.ready() and self._room()):
            return min(TICK, max(0.0, self._fresh_at + self.max_wait - time.monotonic()))
        if (self._dry and not self._inflight and not self._suspects and self._waiting_since is None
                and not self.urgent.is_set() and self.uplink.ready()):
            self._resting = True
            # Set first, then looked at: a notify between the two either saw it or is seen here.
            if not self._fresh.is_set():
                return max(TICK, self._dry_since + RESCAN_EVERY - time.monotonic())
            self._resting = False
        return TICK

    def _handle_results(self, backoff: Backoff, stop: threading.Event) -> bool:
        failed = None
        while True:
            try:
                batch_id, error = self._results.get_nowait()
            except queue.Empty:
                break
            seqs = self._inflight.pop(batch_id, [])
            self.inflight_items -= len(seqs)
            if error is None or isinstance(error, PermanentUplinkError):
                self._waiting_since = None if self._waiting_since is None else time.monotonic()  # it answers
            if error is None:
                backoff.reset()
                self.post(Ack(self.uplink.name, self.bit, seqs))
            elif isinstance(error, PermanentUplinkError) and len(seqs) > 1:
                half = len(seqs) // 2
                self._suspects += [seqs[:half], seqs[half:]]  # still busy: sent next, each alone
                self._dry = False
                log.warning("batch refused; splitting it to find the refused item", uplink=self.uplink.name,
                            items=len(seqs), error=str(error))
            elif isinstance(error, PermanentUplinkError) and seqs:
                self.post(Park(self.uplink.name, self.bit, seqs[0], str(error)))
            else:
                self.recorded(seqs)
                self._plain_after, self._dry = 0, False  # these go again, from the head of the lane
                failed = error
        if failed is not None:
            hint = failed.retry_after if isinstance(failed, TransientUplinkError) else None
            delay = max(backoff.next(), hint or 0.0)
            log.warning("batch not delivered, will retry", uplink=self.uplink.name, error=str(failed),
                        retry_in=round(delay, 2))
            until = time.monotonic() + delay
            while not stop.is_set() and (left := until - time.monotonic()) > 0:
                self._check_stall()  # the backoff grows to a minute: a stall must show meanwhile
                stop.wait(min(left, 1.0))
            return True
        self._check_stall()
        return False

    def _room(self) -> bool:
        """Whether another batch may go: fewer than ``max_inflight`` await the platform's ack, and
        the writer has recorded the acks of all but about as many again. Without the second bound a
        busy writer (a checkpoint, a cold cache on a big database) lets acks pile up in its queue,
        each holding its batch's seqs, while the forwarder reads and sends on at full speed."""
        with self._busy_lock:
            unrecorded = len(self._busy)
        return len(self._inflight) < self.max_inflight and unrecorded < 2 * self.max_inflight * self.max_items

    def recorded(self, seqs: list[int]) -> None:
        """The writer is done with an :class:`Ack` or :class:`Park` of these seqs (recorded, or its
        commit failed): they are no longer held as busy, and go again if still pending."""
        with self._busy_lock:
            self._busy.difference_update(seqs)
        # Resting, it holds nothing back that these free (see _sleep); a failed commit's items,
        # which go again, come with a notify.
        if not self._resting:
            self.wake.set()

    def _send_next(self, reader: sqlite3.Connection, min_priority: int = 0) -> bool:
        reader.execute("BEGIN")  # one snapshot for choosing the items and reading them
        try:
            if self._suspects:
                seqs = self._suspects.pop(0)
                items = send_queue.batch_items(reader, seqs)
                self.recorded([s for s in seqs if s not in items])  # replaced meanwhile (an older health report)
                return self._send(list(items), list(items.values()))
            with self._busy_lock:
                busy = set(self._busy)
            # Choose by seq first and render only what goes (rendering rows only to skip them cost
            # more than the rest of the forwarder). Urgent lanes are short: scanned from their head.
            # The plain lane can hold a million rows, its head in flight: scanned from where the last
            # batch ended, so the in-flight rows are not read again for every batch.
            chosen = _skip(busy, self.max_items, send_queue.next_urgent(reader, self.bit, self.boot_id, min_priority,
                                                                          self.max_items + len(busy)))
            plain: list[int] = []
            lane_ended = False
            if min_priority <= 0 and len(chosen) < self.max_items:
                after, room = self._plain_after, self.max_items - len(chosen)
                plain = _skip(busy, room, send_queue.next_plain(reader, self.bit, self.boot_id, after,
                                                                room + sum(1 for s in busy if s > after),
                                                                self.sync.held_before))
                lane_ended = len(plain) < room
            items = send_queue.batch_items(reader, chosen + plain)
        finally:
            reader.execute("COMMIT")
        seqs, size = [], 200
        bodies: list[str] = []
        for seq, body in items.items():
            if bodies and size + len(body) + 1 > self.max_bytes:
                break
            seqs.append(seq)
            bodies.append(body)
            size += len(body) + 1
        with self._busy_lock:
            self._busy.update(seqs)
        # Nothing left behind: the urgent lane had fewer than a batch, the plain lane ended, all fitted.
        self._dry = min_priority <= 0 and lane_ended and len(chosen) < self.max_items and len(seqs) == len(items)
        if self._dry:
            self._dry_since = time.monotonic()
        if lane_ended and time.monotonic() >= self._rescan_at:
            # Look again from the head next time: rows passed over meanwhile (released when the
            # writer could not record their ack, re-stamped after a clock step) are there. Not at
            # every end of the lane: live traffic reaches it with every batch, and would read the
            # rows in flight again each time.
            self._plain_after = 0
            self._rescan_at = time.monotonic() + RESCAN_EVERY
        elif plain:
            self._plain_after = max(set(seqs) & set(plain), default=self._plain_after)
        return self._send(seqs, bodies)

    def _send(self, seqs: list[int], bodies: list[str]) -> bool:
        if not seqs:
            return False
        batch_id = new_batch_id()
        self._inflight[batch_id] = seqs
        self.inflight_items += len(seqs)
        self.uplink.send(Batch(batch_id, self.gateway_id, bodies))
        return True


def _skip(busy: set[int], limit: int, seqs: list[int]) -> list[int]:
    """The first ``limit`` of ``seqs`` not in ``busy`` (in flight, or acked and not yet recorded)."""
    return [seq for seq in seqs if seq not in busy][:limit]
