"""The writer: the one thread that writes the gateway database.

Everything that changes the database reaches it as a :class:`~edgegw.model.HandOver` on one queue:
a source's read turn (frames and rejects), a forwarder's acknowledgement or parking, a state, a
health report. The writer takes whatever arrived while its previous commit ran and commits it as
one group (one WAL append, one fsync), each event dispatched once by its type; what is to be said
or done about the group (log lines, alarm actions, forwarders woken, acks released) waits for the
commit, in an :class:`Outcome`. A source reads its port again only once its hand-over is committed,
or, in a commit window (a group of a few frames, at most 100 ms), once it is in the open
transaction; an acknowledgement alone waits a little for the next group (see :meth:`Writer._group`).

Between groups, on its own clock: the rules' timers (every second), the disk cap, retention, the
health report and the wall clock's steps.

At about 550 lines this is the longest module of the daemon, on purpose: it is one thread's whole
job, and each part (a group, a full disk, a timer) reads and sets the same few fields (the
transaction in progress, the disk-full episode, what is in flight). What it writes is the store's
(edgegw.store); what it decides about frames and alarms is ingest's and the rules'.
"""

from __future__ import annotations

import logging
import queue
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from edgegw import __version__, dbfile
from edgegw.clock import CLOCK_SANE_AFTER, ClockWatch, plausible
from edgegw.config import Config
from edgegw.forwarder import Sender
from edgegw.ingest import Duplicate, Ingest
from edgegw.items import health_item
from edgegw.log import Throttle
from edgegw.model import (
    Ack,
    ActionsStarted,
    Alarm,
    Event,
    Frame,
    HandOver,
    HealthReport,
    Park,
    Reading,
    Reject,
    SourceState,
    UplinkState,
    iso,
)
from edgegw.radio import ReadTurn
from edgegw.route import Routing
from edgegw.rules import RuleEngine
from edgegw.rules.actions import ActionRunner
from edgegw.store import Store, health_counts, room

log = structlog.get_logger("edgegw.writer")

PURGE_EVERY = 3600.0
TICK_EVERY = 1.0  # s: resolution of rule timers (silence, reminders)
CAP_EVERY = 10.0  # s: how often the disk cap is checked (cheap: a few PRAGMAs)
# s: the pause between two chunks of housekeeping (a purge, a disk cap episode) that has more to
# delete: frames and acks that arrived meanwhile are committed first.
HOUSEKEEPING_STEP = 0.1
CLOCK_SAVE_EVERY = 300.0  # s: how often the rules' clock is saved when nothing else is written
# A group of a few frames waits in its open transaction for more to commit with (see Writer._group):
# a lone frame COMMIT_WINDOW, then each frame that joins keeps it open COMMIT_GAP longer, up to
# COMMIT_WINDOW_MAX after it opened. At 10 frames/s a commit, an fsync and a batch carry five
# readings instead of one or two, at 100 frames/s fifty instead of ten; at a town's rate (a frame
# every few seconds) a reading waits no longer than before.
COMMIT_WINDOW = 0.1  # s
COMMIT_GAP = 0.2  # s
COMMIT_WINDOW_MAX = 0.5  # s
WINDOW_FRAMES = 64  # a group with this many frames is committed at once (a burst's turn holds hundreds)
ACK_HOLD = 0.25  # s an acknowledgement alone waits to be committed with the next group
ACK_HOLD_ITEMS = 64  # acknowledged items that are committed at once (a drain's batches hold hundreds)
DISK_FULL_RETRY = 2.0  # s between tries of a commit that failed for want of space, when nothing more can go


# s: how often the log says what the gateway did meanwhile (a reading is a line of its own only at debug)
SUMMARY_EVERY = 600.0


@dataclass
class Outcome:
    """What a committed group leads to, gathered as its events are applied."""

    readings: list[Reading] = field(default_factory=list)
    alarms: list[Alarm] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    parks: list[Park] = field(default_factory=list)
    health: bool = False
    durable: bool = False  # something new is accepted: the commit must reach the disk (see Store.begin)


@dataclass(frozen=True, slots=True)
class Between:
    """A function the writer runs between two groups, in its own thread: a config reload swaps what
    it works with (devices, rules, uplinks) there. ``done`` is set once it ran."""

    fn: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Summary:
    """What the writer committed since the last summary line (see :data:`SUMMARY_EVERY`)."""

    frames: int = 0  # heard: readings, duplicates and rejects
    readings: int = 0
    duplicates: int = 0
    rejects: dict[str, int] = field(default_factory=dict)  # by reason
    alarms: int = 0
    delivered: dict[str, int] = field(default_factory=dict)  # items acknowledged, by uplink
    parked: int = 0
    since: float = field(default_factory=time.monotonic)

    def add(self, out: Outcome) -> None:
        self.frames += len(out.readings) + len(out.duplicates) + len(out.rejects)
        self.readings += len(out.readings)
        self.duplicates += len(out.duplicates)
        for j in out.rejects:
            self.rejects[j.reason] = self.rejects.get(j.reason, 0) + 1
        self.alarms += len(out.alarms)
        for a in out.acks:
            self.delivered[a.uplink] = self.delivered.get(a.uplink, 0) + len(a.seqs)
        self.parked += len(out.parks)

    def log(self) -> None:
        """One info line with the counts, and the seconds they cover (SUMMARY_EVERY, less at a stop)."""
        log.info("summary", period_s=round(time.monotonic() - self.since), frames=self.frames, readings=self.readings,
                 duplicates=self.duplicates, rejects=sum(self.rejects.values()), rejects_by_reason=self.rejects,
                 alarms=self.alarms, delivered=self.delivered, parked=self.parked)


class Writer:
    """The writer thread's work: :meth:`run` until a ``None`` arrives on :attr:`events`."""

    def __init__(self, config: Config, store: Store, ingest: Ingest, rules: RuleEngine, actions: ActionRunner,
                 forwarders: list[Sender], bits: dict[str, int], routing: Routing, read_turn: ReadTurn):
        self.config, self.store, self.ingest, self.rules, self.actions = config, store, ingest, rules, actions
        self.forwarders = {f.uplink.name: f for f in forwarders}
        self.bits = bits
        self.routing = routing  # which uplinks an alarm or a health report goes to
        # Unbounded, yet small: sources add at most one turn's worth of frames (see read_turn), the
        # forwarders at most their in-flight acks.
        self.events: queue.Queue[HandOver | Between | None] = queue.Queue()
        # Held by the writer while it commits and by a source while it reads its port: frames are read
        # only between commits, so a crash loses at most the frames of the commit in progress.
        self.read_turn = read_turn
        self.clock = ClockWatch(time.time(), time.monotonic())
        self.throttle = Throttle(60.0)
        # monotonic: the last commit of a full group (a burst). Acks are not held for ACK_HOLD after
        # it: the burst's last small batches have no next group to share, only a quarter second to lose.
        self._burst_at = -float("inf")
        self.counts = {"readings": 0, "duplicates": 0, "rejects": 0, "alarms": 0}
        self.summary = Summary()  # what happened since the last summary line
        # Checked once: a reading logged at a level that is off still cost a call through structlog's proxy.
        self.log_readings = structlog.get_logger("edgegw.writer").bind().is_enabled_for(logging.DEBUG)
        self.inflight_noted: dict[str, int] = {}  # uplink -> items in flight as last written for status
        self._inflight_at_tick: dict[str, int] = {}  # uplink -> items in flight at the last tick
        self.dropping: dict[str, int] = {}  # unsent items dropped in the current disk cap episode
        self.purged = 0  # delivered items purged by the current round of chunks, logged when it ends
        # While commits fail for want of space: since when, how many tries, the group's size (for status).
        self.disk_full: dict[str, Any] | None = None
        self._health: threading.Thread | None = None  # the health report being built
        self.next_cap = 0.0
        self.started = time.monotonic()  # for the health report's uptime
        # Set by the daemon: the stage's heartbeat, whether the sources are stopping, a pause that
        # ends early when the daemon stops, what the health report adds, and damage found.
        self.beat: Callable[[], None] = lambda: None
        self.sources_stopping: Callable[[], bool] = lambda: False
        self.pause: Callable[[float], object] = time.sleep
        self.daemon_health: Callable[[], dict[str, Any]] = dict
        self.on_damage: Callable[[BaseException], None] = lambda exc: None

    # -- what arrives -----------------------------------------------------------------------------

    def emit(self, events: list) -> threading.Event:
        """A source's read turn (see edgegw.radio.Emit); the Event is set once the writer is done with it."""
        committed = threading.Event()
        self.events.put(HandOver(events, committed))
        return committed

    def post(self, event: Event) -> None:
        """One event from elsewhere than a source (forwarders, the health report, the daemon)."""
        self.events.put(HandOver((event,)))

    def between(self, fn: Callable[[], None]) -> threading.Event:
        """Run ``fn`` in the writer's thread once what is queued now is committed; the Event is set
        when it has run (or raised: the writer logs it and lives on). Sources wait meanwhile."""
        call = Between(fn)
        self.events.put(call)
        return call.done

    def stop(self) -> None:
        """Commit what is queued, then end :meth:`run`."""
        self.events.put(None)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        self._watch_clock(starting=True)
        now = time.monotonic()
        next_purge, next_tick, next_clock_save = now + 60, now, now + CLOCK_SAVE_EVERY
        next_health = now + min(30.0, self.config.health_every)
        next_summary = now + SUMMARY_EVERY
        self.next_cap = now
        done = False
        held: list[HandOver] = []  # acknowledgements alone, waiting to be committed with what follows
        while not done:
            due = min(next_tick, self.next_cap, next_purge, held[0].at + ACK_HOLD if held else float("inf"))
            try:
                group = [self.events.get(timeout=max(0.0, due - time.monotonic()))]
            except queue.Empty:
                group = []
            if group or (held and time.monotonic() >= held[0].at + ACK_HOLD):
                done, held = self._group([*held, *group])
                if not held:
                    next_clock_save = time.monotonic() + CLOCK_SAVE_EVERY
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_EVERY
                self._watch_clock()
                self._watch_sync()
                self._commit_inflight()
                if self._tick_rules(force=time.monotonic() >= next_clock_save):
                    next_clock_save = time.monotonic() + CLOCK_SAVE_EVERY
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + SUMMARY_EVERY
                self.summary.log()
                self.summary = Summary()
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + self.config.health_every
                self._report_health()
            if time.monotonic() >= self.next_cap:
                self._enforce_cap()
                # Below min_free, or with the reserve given back, the database lives on its own free
                # pages: a burst uses them up in seconds.
                self.next_cap = time.monotonic() + (
                    HOUSEKEEPING_STEP if self.store.capping else
                    TICK_EVERY if self.disk_state() != "ok" else CAP_EVERY)
            self.beat()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + (HOUSEKEEPING_STEP if self._purge() else PURGE_EVERY)
        self.summary.log()  # the part of a period before the stop
        self.save_rules(stopping=True)

    def save_rules(self, stopping: bool = False) -> None:
        """At a stop or a reload: write what the rules hold back (see edgegw.rules.engine.PROGRESS)."""
        try:
            with self.store.transaction():
                self.rules.save(time.time(), everything=True, stopping=stopping)
        except Exception:  # a power cut would have lost the same: at most CLOCK_WRITE_EVERY of it
            log.exception("saving the rules' state at the stop failed")

    def _run_between(self, calls: list[Between]) -> None:
        for call in calls:
            try:
                call.fn()
            except Exception:
                log.exception("a change between groups failed")
            finally:
                call.done.set()

    def _group(self, group: list[HandOver | Between | None]) -> tuple[bool, list[HandOver]]:
        """Commit ``group`` with whatever queued meanwhile: (whether a ``None`` said stop, the
        acknowledgements held back instead, to go with the next commit).

        At field rate a reading and its acknowledgement were two commits: an acknowledgement alone
        waits up to :data:`ACK_HOLD` for the next group (an undone ack costs a resend, never data).
        A group of a few frames is a commit window: the writer lets the sources read on into the same
        transaction while frames keep coming (:data:`COMMIT_WINDOW`, :data:`COMMIT_GAP`, at most
        :data:`COMMIT_WINDOW_MAX`), until it holds :data:`WINDOW_FRAMES` frames or a frame raises an
        alarm (committed at once). What a crash loses is then at most the frames of the window: fewer
        than WINDOW_FRAMES, and one more read turn. A burst's first turn is larger
        than that and is committed at once, as before. A :class:`Between` (a config reload) closes the
        window and runs after the commit, before anything else is read.
        """
        handed: list[HandOver] = []
        betweens: list[Between] = []
        done = False

        def take(into: list[HandOver | Between | None]) -> list[Event]:
            nonlocal done
            while True:
                try:
                    into.append(self.events.get_nowait())
                except queue.Empty:
                    break
            done = done or None in into
            betweens.extend(h for h in into if type(h) is Between)
            new = [h for h in into if type(h) is HandOver]
            handed.extend(new)
            return [e for h in new for e in h.events]

        opened = time.monotonic()
        closes = opened + COMMIT_WINDOW

        def more(out: Outcome) -> list[Event]:
            """Inside the open transaction: the next events of the window, [] when it closes."""
            nonlocal closes
            frames = len(out.readings) + len(out.duplicates) + len(out.rejects)
            if done or betweens or out.alarms or frames >= WINDOW_FRAMES or time.monotonic() >= closes:
                return []
            for h in handed:  # the sources read on, into this transaction
                if h.committed is not None:
                    h.committed.set()
            later: list[HandOver | Between | None] = []
            with self.read_turn.open():
                try:
                    later.append(self.events.get(timeout=max(0.0, closes - time.monotonic())))
                except queue.Empty:
                    pass
            new = take(later)  # what the sources read as the window closed goes in it too
            if any(type(e) is Frame for e in new):
                closes = min(opened + COMMIT_WINDOW_MAX, time.monotonic() + COMMIT_GAP)
            return new

        with self.read_turn.write():  # what the sources read is in the queue; they wait for the commit
            try:
                events = take(group)
                acks = [e for e in events if isinstance(e, Ack)]
                young = bool(handed) and time.monotonic() < handed[0].at + ACK_HOLD
                if (young and not done and not betweens and len(acks) == len(events)
                        and sum(len(a.seqs) for a in acks) < ACK_HOLD_ITEMS
                        and time.monotonic() - self._burst_at >= ACK_HOLD):
                    return False, handed
                windowed = any(type(e) is Frame for e in events)
                self._commit_or_wait(events, more if windowed else None)
            finally:  # committed, or failed for good (or the writer crashed): the source may read again
                for h in handed:
                    if h.committed is not None:
                        h.committed.set()
        self._run_between(betweens)
        return done, []

    def _commit_or_wait(self, events: list[Event], more: Callable[[Outcome], list[Event]] | None = None) -> None:
        outcome = self._commit_group(events, more)
        while outcome is None:  # the disk is full: free space by the cap's policy, then retry
            outcome = self._retry_when_full(events)
        self._announce(outcome)

    # -- one group --------------------------------------------------------------------------------

    def _apply(self, event: Event, out: Outcome) -> None:
        """Apply one event inside the group's transaction; what follows the commit goes in ``out``."""
        store = self.store
        match event:
            case Frame():
                result = self.ingest.handle(event)
                if isinstance(result, Reading):
                    out.readings.append(result)
                    if alarms := self.rules.observe(result, time.time()):
                        out.alarms += self._store_alarms(alarms)
                elif isinstance(result, Reject):
                    self._reject(result, out)
                else:
                    out.duplicates.append(result)
            case Reject():
                self._reject(event, out)
            case Ack() | Park() if self.bits.get(event.uplink) != event.bit:
                pass  # late, from an uplink a reload removed: its bit may be another uplink's by now
            case Ack():
                store.acked(event.bit, event.seqs, event.wall)
                if event.delivered:
                    store.uplink_delivered(event.uplink, len(event.seqs), event.wall)
                out.acks.append(event)
            case Park():
                store.park(event.uplink, event.bit, event.seq, event.error, event.wall)
                out.parks.append(event)
            case UplinkState():
                store.uplink_state(event.uplink, event.state, event.detail, event.wall)
            case SourceState():
                store.source_state(event.source, event.state, event.detail, event.wall)
            case HealthReport():
                store.add_health(event.item, self.routing.mask("health"), event.wall)
                out.health = True
            case ActionsStarted():
                store.actions_started(event.alarm_ids)

    def _reject(self, r: Reject, out: Outcome) -> None:
        self.store.add_reject(r.source, r.reason, r.detail, r.address, r.device_id, r.raw, r.wall, r.rssi, r.snr)
        out.rejects.append(r)

    def _commit_group(self, group: list[Event], more: Callable[[Outcome], list[Event]] | None = None) -> Outcome | None:
        """Commit one group of events; return what to announce once the sources may read again.
        ``more``: events to add to it until it returns none (a commit window, see :meth:`_group`);
        they join ``group``.

        None when the disk was full: nothing of the group is recorded, and it is to be tried again
        (see :meth:`_retry_when_full`), alarms and all."""
        out = Outcome(durable=any(type(e) is Frame or type(e) is HealthReport for e in group))
        try:
            with self.store.transaction(durable=out.durable):
                for event in group:
                    self._apply(event, out)
                while more is not None and (later := more(out)):
                    group += later
                    for event in later:
                        self._apply(event, out)
                self.rules.save(time.time())
                self._record_inflight()
        except Exception as exc:
            if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                return None
            if dbfile.is_damage(exc):
                self.on_damage(exc)
            # Another database error (I/O error) must not kill the writer: the group is not
            # accepted, its frames are lost as if never heard, and we say so loudly.
            log.exception("commit failed; group dropped", events=len(group))
            for e in group:  # not recorded: their items go to be sent (or parked) again
                if isinstance(e, Ack):
                    self.forwarders[e.uplink].recorded(e.seqs)
                    self.forwarders[e.uplink].notify()
                elif isinstance(e, Park):
                    self.forwarders[e.uplink].recorded([e.seq])
                    self.forwarders[e.uplink].notify()
            return Outcome()
        if self.disk_full is not None:
            self._disk_full_over()
        return out

    def _announce(self, out: Outcome) -> None:
        """After a commit: log, run actions, release acks, wake the forwarders for new items."""
        self.counts["readings"] += len(out.readings)
        self.summary.add(out)
        if self.log_readings:
            for r in out.readings:
                log.debug("reading", source=r.source, device=r.device_id, address=r.address, id=r.reading_id,
                         values=r.values, rssi=r.rssi, snr=r.snr)
        for d in out.duplicates:
            log.debug("duplicate frame", device=d.device_id, id=d.reading_id)
        self.counts["duplicates"] += len(out.duplicates)
        self.counts["rejects"] += len(out.rejects)
        for j in out.rejects:
            # By reason, not address: a flood from thousands of addresses is one line a minute, and
            # the throttle's own memory stays as small as the list of reasons.
            suppressed = self.throttle.allow((j.source, j.reason))
            if suppressed is not None:
                log.warning("frame rejected", source=j.source, reason=j.reason, address=j.address,
                            device=j.device_id, detail=j.detail, raw=j.raw[:64].hex(), similar_suppressed=suppressed)
        for a in out.acks:
            self.forwarders[a.uplink].recorded(a.seqs)
        for p in out.parks:
            self.forwarders[p.uplink].recorded([p.seq])
            log.error("item parked: the platform refused it for good", uplink=p.uplink, seq=p.seq, error=p.error)
        self._raised(out.alarms)
        burst = len(out.readings) >= WINDOW_FRAMES
        if burst:
            self._burst_at = time.monotonic()
        if out.readings or out.alarms or out.health:
            for fwd in self.forwarders.values():
                fwd.notify(urgent=bool(out.alarms), items=len(out.readings) + int(out.health), burst=burst)

    def _raised(self, alarms: list[Alarm]) -> None:
        self.counts["alarms"] += len(alarms)
        for a in alarms:
            log.warning("alarm", alarm=a.kind, id=a.alarm_id, severity=a.severity, device=a.device_id,
                        late=a.late, message=a.message)
            self.actions.submit(a)

    def _store_alarms(self, alarms: list[Alarm]) -> list[Alarm]:
        """Put alarms in the outbox (inside the open transaction); the ones new to it are returned."""
        now = time.time()
        return [a for a in alarms if self.store.add_alarm(a, self.routing.mask("alarm", a.device_id, a.kind), now)]

    # -- a full disk ------------------------------------------------------------------------------

    def _retry_when_full(self, group: list[Event]) -> Outcome | None:
        """The group's commit failed for want of space: free some by the cap's policy (delivered
        items, then the oldest plain readings, never alarms) and try the same group again. Where
        nothing more can go, wait and try again: the sources read nothing meanwhile, so what the
        radio sends waits in the module and the kernel, and no alarm of the group is lost."""
        now = time.time()
        if self.disk_full is None:
            self.disk_full = {"since": now, "tries": 0, "events": len(group), "freed": {}}
        self.disk_full["tries"] += 1
        freed = self.store.make_room(now)
        for kind, n in freed.items():
            self.disk_full["freed"][kind] = self.disk_full["freed"].get(kind, 0) + n
        dropped = {k: n for k, n in freed.items() if k not in ("delivered", "reserve", "growth_limit")}
        if self.throttle.allow(("disk full",)) is not None or dropped:
            log.error("disk full: a commit failed; freeing space by the disk cap's policy and trying again",
                      events=len(group), tries=self.disk_full["tries"], freed=freed,
                      free_bytes=shutil.disk_usage(self.config.data_dir).free)
        if not freed:
            if self.sources_stopping() and self.disk_full["tries"] > 3:  # stopping: give up, say what
                log.error("stopping with the disk full: these frames were not accepted", events=len(group))
                return Outcome()
            self.pause(DISK_FULL_RETRY)
        self.beat()
        return self._commit_group(group)

    def _disk_full_over(self) -> None:
        """The group that waited for room is committed: say so, keep the episode for status, and
        let the cap make room for the next commits now, while the filesystem is still short."""
        episode, self.disk_full = self.disk_full, None
        assert episode is not None
        episode["until"] = time.time()
        # The sources read nothing meanwhile: the devices were not silent, the gateway was deaf.
        self.rules.deaf(episode["until"] - episode["since"])
        log.warning("disk no longer full: the waiting frames are committed", tries=episode["tries"],
                    waited_s=round(episode["until"] - episode["since"], 1), freed=episode["freed"])
        try:
            with self.store.transaction(durable=False):
                self.store.note_disk_full(episode)
        except Exception:  # for status only: the next episode is noted again
            log.exception("noting the disk full episode failed")
        self.next_cap = time.monotonic()

    def disk_state(self) -> str:
        """"full" while a commit waits for room; "low" while the filesystem has less than [store]
        min_free (the reserve counted as free) or no room to keep the reserve; else "ok"."""
        if self.disk_full is not None:
            return "full"
        short = room(self.store.path) < self.config.store.min_free or not self.store.reserve.exists()
        return "low" if short else "ok"

    # -- on the writer's own clock ----------------------------------------------------------------

    def _watch_clock(self, starting: bool = False) -> None:
        """Re-stamp this boot's unsent readings when the wall clock steps (NTP arrived, or a jump).

        At start, the clock may have been set while the daemon was down: readings of this boot
        stamped in 1970 are re-stamped then (only those: others may differ by NTP's slewing alone).
        """
        before = self.clock.step(time.time(), time.monotonic())
        if before is None and not (starting and plausible(time.time())):
            return
        before = self.clock.offset if before is None else before
        try:
            with self.store.transaction():
                n = self.store.restamp(self.ingest.boot_id, self.clock.offset,
                                       CLOCK_SANE_AFTER if starting else float("inf"))
        except Exception:  # the next step (or restart) tries again; stamps are not lost, only unrepaired
            log.exception("re-stamping readings after a clock step failed")
            return
        if n or not starting:
            log.warning("system clock stepped; readings taken before re-stamped as estimated",
                        step_s=round(self.clock.offset - before, 3), restamped=n)
        for fwd in self.forwarders.values():
            fwd.notify()

    def _watch_sync(self) -> None:
        """``[clock] await_sync``: when NTP set the clock, or the wait ended first, this boot's
        readings go (see edgegw.clock.SyncWait)."""
        ended = self.ingest.sync.check(time.monotonic())
        if ended is None:
            return
        if ended == "synced":
            try:
                with self.store.transaction():
                    n = self.store.mark_synced(self.ingest.boot_id, self.clock.offset)
            except Exception:  # they go marked unsynced: the stamps are right, the mark too modest
                log.exception("marking readings synced failed")
                n = 0
            log.info("clock synchronised by NTP: this boot's readings are sent", marked_synced=n)
        else:
            log.warning("clock still not synchronised after [clock] await_sync: this boot's readings are sent"
                        " marked unsynced", await_sync_s=self.ingest.sync.wait)
        for fwd in self.forwarders.values():
            fwd.notify()

    def _tick_rules(self, force: bool) -> bool:
        """Run the rule timers; commit if they raised alarms or changed state (or ``force``). True if committed."""
        alarms = self.rules.tick(time.time(), time.monotonic())
        if not (alarms or self.rules.dirty(time.time()) or force):
            return False
        out = Outcome()
        try:
            with self.store.transaction():
                out.alarms = self._store_alarms(alarms)
                self.rules.save(time.time())
        except Exception:  # as in _commit_group: the writer lives on, the next tick tries again
            log.exception("commit of rule timers failed")
            return False
        self._announce(out)
        return True

    def _record_inflight(self, lingering: frozenset[str] = frozenset()) -> None:
        """Inside a transaction: note each uplink's items in flight where they changed since last noted.

        A count above zero only for the uplinks in ``lingering`` (see :meth:`_commit_inflight`): at field
        rate a batch is in flight for a few milliseconds, and noting it in the commits around it cost
        a WAL page each time, to tell status what had passed before anyone could read it.
        """
        for name, fwd in self.forwarders.items():
            items = fwd.inflight_items
            if self.inflight_noted.get(name) != items and (items == 0 or name in lingering):
                self.store.uplink_inflight(name, items)
                self.inflight_noted[name] = items

    def _commit_inflight(self) -> None:
        """Every tick: commit the items in flight of uplinks that had some at the last tick too (a
        platform slow to ack), where that count changed since last noted."""
        now = {name: f.inflight_items for name, f in self.forwarders.items()}
        lingering = frozenset(name for name, items in now.items() if items and self._inflight_at_tick.get(name))
        self._inflight_at_tick = now
        if all(self.inflight_noted.get(name) == items or (items and name not in lingering)
               for name, items in now.items()):
            return
        try:
            with self.store.transaction(durable=False):  # bookkeeping for status
                self._record_inflight(lingering)
        except Exception:  # bookkeeping for status: the next tick tries again
            log.exception("recording items in flight failed")
            self.inflight_noted.clear()

    def _report_health(self) -> None:
        """Queue the gateway's health report for every uplink (a town with thirty gateways sees the sick one).

        Built in a thread of its own on a reader connection (its counts read a whole backlog's
        index); the writer only queues it, in its next group.
        """
        if self._health is not None and self._health.is_alive():
            return  # the last one is still counting: a slow card, a huge backlog
        self.store.write_counts()  # its last frame per source
        daemon = {**self.daemon_health(), "disk_full_since": None if self.disk_full is None else iso(self.disk_full["since"]),
                  "disk_state": self.disk_state(), "clock": self.ingest.sync.state(time.time())}

        def build() -> None:
            try:
                now = time.time()
                counts = health_counts(self.store.path, self.bits, now)
                item = health_item(self.config.gateway_id, now, __version__, time.monotonic() - self.started,
                                   {**counts, **daemon})
            except Exception:  # the next report tries again
                log.exception("health report failed")
                return
            self.post(HealthReport(item, now))

        self._health = threading.Thread(target=build, name="health", daemon=True)
        self._health.start()

    def _enforce_cap(self) -> None:
        """Keep the database under its cap; say so once per episode of dropping, not per drop."""
        try:
            deleted = self.store.enforce_cap(self.config.store.max_bytes, time.time(),
                                             min_free=self.config.store.min_free)
        except Exception:  # housekeeping: the next round (in CAP_EVERY, not at once) tries again
            log.exception("disk cap enforcement failed")
            self.store.rollback()
            self.store.capping = False
            return
        if "reserve" in deleted:
            log.error("disk full before the cap could act: the reserve was given back to make room",
                      bytes=deleted["reserve"])
        dropped = {k: n for k, n in deleted.items() if k not in ("delivered", "reserve")}
        if dropped and not self.dropping:
            log.warning("disk cap reached: dropping the oldest unsent readings (alarms are kept)",
                        max_bytes=self.config.store.max_bytes, **dropped)
        self.dropping = {k: self.dropping.get(k, 0) + dropped.get(k, 0) for k in {*self.dropping, *dropped}}
        if self.dropping and not self.store.capping:
            log.warning("disk cap episode over", dropped=self.dropping)
            self.dropping = {}

    def _purge(self) -> bool:
        """Delete one chunk of what the retention lets go; True if more may be due."""
        cutoff = time.time() - self.config.store.keep_delivered
        try:
            with self.store.transaction():
                items, _, more = self.store.purge_delivered(cutoff)
        except Exception:  # housekeeping must never stop the writer; the next round tries again
            log.exception("purge of delivered items failed")
            return False
        self.purged += items
        if self.purged and not more:
            log.info("purged delivered items", count=self.purged, older_than_s=self.config.store.keep_delivered)
            self.purged = 0
        return more
