"""The daemon: wires sources -> writer (ingest + store) -> forwarders -> uplinks, and supervises them.

Threads, not asyncio: every stage blocks on I/O of its own (a serial port, a socket, fsync), and a
thread per stage keeps each one readable alone. Exactly one thread, the writer, touches the
database for writing; everything else talks to it through one queue.

The writer takes whatever arrived while its previous commit ran and commits it as one group; a
source reads its port again only once its last hand-over is committed. So the loss window of a
crash is the frames read from the port but not yet committed: one read turn per source, at most
16 KiB (``rylr.TURN_BYTES``; about 420 frames of a 39-byte line).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from edgegw import __version__, dbfile, heap
from edgegw.clock import CLOCK_SANE_AFTER, ClockWatch, plausible
from edgegw.config import Config
from edgegw.drivers import DriverRegistry
from edgegw.forwarder import Ack, Forwarder, Park, UplinkState
from edgegw.ingest import Duplicate, Ingest
from edgegw.log import Throttle
from edgegw.model import Alarm, Frame, Reading, Reject, iso
from edgegw.radio import ReadTurn, SourceState
from edgegw.radio.emulator import RylrEmulator
from edgegw.radio.field import VirtualField, load_field
from edgegw.radio.rylr import RylrRadio
from edgegw.rules import RuleEngine
from edgegw.rules.actions import ActionRunner
from edgegw.running import HEARTBEAT_EVERY, DataDirLock
from edgegw.store import Store, health, quick_check, room
from edgegw.supervise import Stage
from edgegw.uplink import build_uplink

log = structlog.get_logger("edgegw.daemon")

DB_NAME = "edgegw.db"
PURGE_EVERY = 3600.0
TICK_EVERY = 1.0  # s: resolution of rule timers (silence, reminders)
CAP_EVERY = 10.0  # s: how often the disk cap is checked (cheap: a few PRAGMAs)
# s: the pause between two chunks of housekeeping (a purge, a disk cap episode) that has more to
# delete: frames and acks that arrived meanwhile are committed first.
HOUSEKEEPING_STEP = 0.1
CLOCK_SAVE_EVERY = 300.0  # s: how often the rules' clock is saved when nothing else is written
# s: the writer beats at least every TICK_EVERY; this long without means it hangs (a commit on a dying
# card), and the watchdog stops being fed.
WRITER_STALE = 15.0
DISK_FULL_RETRY = 2.0  # s between tries of a commit that failed for want of space, when nothing more can go


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The gateway's health report, built beside the writer, for the writer to queue."""

    item: dict[str, Any]
    wall: float


def db_path(config: Config) -> Path:
    return config.data_dir / DB_NAME


def notify_systemd(message: str) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd gave us one."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), addr)
        except OSError:
            pass


class Gateway:
    """One running gateway. ``start()``, then ``stop()``; :func:`run` does both around signals."""

    def __init__(self, config: Config, drivers: DriverRegistry):
        self.config, self.drivers = config, drivers
        # Unbounded, yet small: sources add at most one turn's worth of frames (see read_turn), the
        # forwarders at most their in-flight acks.
        self.events: queue.Queue = queue.Queue()
        # Held by the writer while it commits and by a source while it reads its port: frames are read
        # only between commits, so a crash loses at most the frames of the commit in progress.
        self.read_turn = ReadTurn()
        # A damaged database is set aside and a fresh one started; the WAL is checked first (see edgegw.dbfile).
        self.store, damage = dbfile.open_store(
            db_path(config), lambda path: Store(path, config.store.synchronous, config.store.rejects_kept))
        uplinks = config.effective_uplinks()
        bits = self.store.register_uplinks([u.name for u in uplinks])
        for name, kinds in self.store.released.items():
            log.warning("uplink no longer in the config: what waited for it alone is released unsent",
                        uplink=name, **kinds)
        self.bits = bits
        self.uplink_mask = sum(bits.values())
        for alarm in dbfile.record(self.store, damage, config.gateway_id, self.uplink_mask):
            log.warning("alarm", alarm=alarm.kind, id=alarm.alarm_id, severity=alarm.severity,
                        device=alarm.device_id, message=alarm.message)
        self.started = time.monotonic()
        self.dropping: dict[str, int] = {}  # unsent items dropped in the current disk cap episode
        self.purged = 0  # delivered items purged by the current round of chunks, logged when it ends
        # While commits fail for want of space: since when, how many tries, the group's size (for status).
        self.disk_full: dict[str, Any] | None = None
        self.damaged: str | None = None  # damage SQLite found in the database in use: the daemon exits
        self._health: threading.Thread | None = None  # the health report being built
        self.ingest = Ingest(config, drivers, self.store, self.uplink_mask)
        self.rules = RuleEngine(config, drivers, self.store.conn, time.time(), time.monotonic())
        self.clock = ClockWatch(time.time(), time.monotonic())
        self.actions = ActionRunner(config.actions, config.gateway_id)
        self.forwarders = [
            Forwarder(build_uplink(u, config), bits[u.name], db_path(config),
                      config.gateway_id, u.batch.max_items, u.batch.max_bytes, getattr(u, "max_inflight", 1),
                      self.events.put, u.stalled_after)
            for u in uplinks
        ]
        self.emulators: list[RylrEmulator] = []
        self.stages: list[Stage] = []
        self.throttle = Throttle(60.0)
        self.counts = {"readings": 0, "duplicates": 0, "rejects": 0, "alarms": 0}
        # Checked once: a reading logged at a level that is off still cost a call through structlog's proxy.
        self.log_readings = structlog.get_logger("edgegw.daemon").bind().is_enabled_for(logging.INFO)
        self.inflight_noted: dict[str, int] = {}  # uplink -> items in flight as last written for status

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._source_stop = threading.Event()
        self._forward_stop = threading.Event()
        self._writer_stop = threading.Event()  # set only once the writer has drained the queue
        self.actions.start()
        if self.actions.actions:
            self._stage("actions", self.actions.run, self._writer_stop)
        self.writer = self._stage("writer", self._write_loop, self._writer_stop, WRITER_STALE, self._writer_crashed)
        # Beside the pipeline, not before it: on a million-row database the check takes seconds,
        # and sending must start at once.
        threading.Thread(target=self._check_integrity, name="integrity-check", daemon=True).start()
        for fwd, uplink in zip(self.forwarders, self.config.effective_uplinks()):
            # After a crash the forwarder starts over with a fresh uplink: the old one was stopped.
            self._stage(f"forwarder:{uplink.name}", lambda f=fwd: f.run(self._forward_stop), self._forward_stop,
                        on_crash=lambda _, f=fwd, u=uplink: setattr(f, "uplink", build_uplink(u, self.config)))
        for source in self.config.sources:
            port = source.port
            if source.simulate is not None:
                port = str(self._start_simulation(source))
            radio = RylrRadio(source, port, self.read_turn)
            self._stage(f"source:{radio.name}", lambda r=radio: r.run(self._emit, self._source_stop),
                        self._source_stop)
        for stage in self.stages:  # in the order made: the writer before the sources that feed it
            stage.start()
        notify_systemd("READY=1")
        log.info("gateway started", gateway=self.config.gateway_id, data_dir=str(self.config.data_dir),
                 sources=[s.name for s in self.config.sources], uplinks=[f.uplink.name for f in self.forwarders],
                 devices=len(self.config.devices))

    def _start_simulation(self, source) -> Path:
        link = self.config.data_dir / f"{source.name}.pty"
        emulator = RylrEmulator(link)
        # The virtual sensors are provisioned with the gateway's keys, as an installer flashes real ones.
        keys = {d.address: key for d in self.config.devices if self.config.device_source(d) == source.name
                and (key := self.ingest.auth[d.id].key) is not None}
        field = VirtualField(load_field(source.simulate), self.drivers, emulator, keys=keys)
        emulator.plug()
        self.emulators.append(emulator)
        self._stage(f"field:{source.name}", lambda: field.run(self._source_stop), self._source_stop)
        log.info("simulated radio module", source=source.name, port=str(link), field=str(source.simulate))
        return link

    def _stage(self, name: str, target, stop: threading.Event, stale_after: float | None = None,
               on_crash=None) -> Stage:
        def crashed(exc: Exception) -> None:
            if dbfile.is_damage(exc):
                self._database_damaged(exc)
            if on_crash is not None:
                on_crash(exc)

        stage = Stage(name, target, stop, stale_after, crashed)
        self.stages.append(stage)
        return stage

    def _database_damaged(self, exc: BaseException) -> None:
        """SQLite found damage in the database in use: note it and have the daemon exit (see :func:`run`)."""
        if self.damaged is None:
            self.damaged = dbfile.mark_damaged(db_path(self.config), exc)

    def problems(self) -> dict[str, str]:
        """The stages that are not alive now, and why: while there are any, systemd's watchdog goes hungry."""
        now = time.monotonic()
        return {s.name: p for s in self.stages if (p := s.problem(now)) is not None}

    def describe(self) -> dict[str, Any]:
        """What the heartbeat says: every stage's state and restarts, and the writer's disk trouble."""
        now = time.monotonic()
        return {"stages": {s.name: s.describe(now) for s in self.stages}, "disk_full": self.disk_full,
                "disk_state": self.disk_state()}

    def _writer_crashed(self, exc: Exception) -> None:
        """A bug in the writer: undo its open transaction and reload what it had cached, then restart."""
        self.store.rollback()
        self.rules.reload()

    def _emit(self, events: list) -> threading.Event:
        """Queue a source's hand-over; the Event returned is set once the writer is done with it."""
        committed = threading.Event()
        self.events.put((events, committed))
        return committed

    def stop(self) -> None:
        """Stop reading, commit what was read, stop forwarding. Nothing accepted is lost by stopping."""
        notify_systemd("STOPPING=1")
        self._source_stop.set()
        self._join("source:", "field:", timeout=5)
        for e in self.emulators:
            e.unplug()
        for source in self.config.sources:
            self.events.put(SourceState(source.name, "stopped"))
        self._forward_stop.set()
        for fwd in self.forwarders:
            fwd.wake.set()
        self._join("forwarder:", timeout=10)
        for fwd in self.forwarders:
            self.events.put(UplinkState(fwd.uplink.name, "stopped"))
        self.events.put(None)
        self._join("writer", timeout=30)
        self.actions.stop()
        self._join("actions", timeout=10)
        self._writer_stop.set()
        self.store.close()
        log.info("gateway stopped", **self.counts)

    def _join(self, *prefixes: str, timeout: float) -> None:
        for stage in self.stages:
            if stage.name.startswith(prefixes):
                stage.thread.join(timeout=timeout)

    # -- the writer -----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        self._watch_clock(starting=True)
        next_purge = time.monotonic() + 60
        next_tick = time.monotonic()
        next_clock_save = time.monotonic() + CLOCK_SAVE_EVERY
        next_health = time.monotonic() + min(30.0, self.config.health_every)
        self.next_cap = time.monotonic()
        done = False
        while not done:
            try:
                wake = min(next_tick, self.next_cap, next_purge)
                group = [self.events.get(timeout=max(0.0, wake - time.monotonic()))]
            except queue.Empty:
                group = []
            if group:
                with self.read_turn.write():  # what the sources read is in the queue; they wait for the commit
                    while True:
                        try:
                            group.append(self.events.get_nowait())
                        except queue.Empty:
                            break
                    done = None in group
                    # Sources hand over (a list per read turn, its receipt), forwarders one event at a time.
                    events = [e for item in group for e in (item[0] if isinstance(item, tuple) else (item,))]
                    events = [e for e in events if e is not None]
                    try:
                        after = self._commit_group(events)
                        while after is None:  # the disk is full: free space by the cap's policy, then retry
                            after = self._retry_when_full(events)
                    finally:  # committed, or failed for good (or the writer crashed): the source may read again
                        for item in group:
                            if isinstance(item, tuple):
                                item[1].set()
                self._announce(after)
                next_clock_save = time.monotonic() + CLOCK_SAVE_EVERY
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + TICK_EVERY
                self._watch_clock()
                self._commit_inflight()
                if self._tick_rules(force=time.monotonic() >= next_clock_save):
                    next_clock_save = time.monotonic() + CLOCK_SAVE_EVERY
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
            self.writer.beat()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + (HOUSEKEEPING_STEP if self._purge() else PURGE_EVERY)

    def _commit_group(self, group: list) -> list | None:
        """Commit one group of events; return what to announce once the sources may read again.

        None when the disk was full: nothing of the group is recorded, and it is to be tried again
        (see :meth:`_retry_when_full`), alarms and all."""
        after: list = []
        store = self.store
        store.begin(durable=any(isinstance(e, (Frame, HealthReport)) for e in group))
        try:
            for event in group:
                if isinstance(event, Frame):
                    result = self.ingest.handle(event)
                    after.append(result)
                    if isinstance(result, Reading) and (alarms := self.rules.observe(result, time.time())):
                        after += self._store_alarms(alarms)
                elif isinstance(event, Reject):
                    after.append(event)
                elif isinstance(event, Ack):
                    store.acked(event.bit, event.seqs, event.wall)
                    store.uplink_delivered(event.uplink, len(event.seqs), event.wall)
                    after.append(event)
                elif isinstance(event, Park):
                    store.park(event.uplink, event.bit, event.seq, event.error, event.wall)
                    after.append(event)
                elif isinstance(event, UplinkState):
                    store.uplink_state(event.uplink, event.state, event.detail, event.wall)
                elif isinstance(event, SourceState):
                    store.source_state(event.source, event.state, event.detail, event.wall)
                elif isinstance(event, HealthReport):
                    store.add_health(event.item, self.uplink_mask, event.wall)
                    after.append(event)
            for r in after:
                if isinstance(r, Reject):
                    store.add_reject(r.source, r.reason, r.detail, r.address, r.device_id, r.raw, r.wall)
            self.rules.save(time.time())
            self._record_inflight()
            store.commit()
        except Exception as exc:
            store.rollback()
            self.rules.reload()
            if isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                return None
            if dbfile.is_damage(exc):
                self._database_damaged(exc)
            # Another database error (I/O error) must not kill the writer: the group is not
            # accepted, its frames are lost as if never heard, and we say so loudly.
            log.exception("commit failed; group dropped", events=len(group))
            for event in group:
                if isinstance(event, Ack | Park):
                    event.committed()  # not recorded: release its items to be sent (or parked) again
            return []
        if self.disk_full is not None:
            self._disk_full_over()
        return after

    def _disk_full_over(self) -> None:
        """The group that waited for room is committed: say so, keep the episode for status, and
        let the cap make room for the next commits now, while the filesystem is still short."""
        episode, self.disk_full = self.disk_full, None
        episode["until"] = time.time()
        log.warning("disk no longer full: the waiting frames are committed", tries=episode["tries"],
                    waited_s=round(episode["until"] - episode["since"], 1), freed=episode["freed"])
        try:
            self.store.begin(durable=False)
            self.store.note_disk_full(episode)
            self.store.commit()
        except Exception:  # for status only: the next episode is noted again
            log.exception("noting the disk full episode failed")
            self.store.rollback()
            self.rules.reload()
        self.next_cap = time.monotonic()

    def disk_state(self) -> str:
        """"full" while a commit waits for room; "low" while the filesystem has less than [store]
        min_free (the reserve counted as free) or no room to keep the reserve; else "ok"."""
        if self.disk_full is not None:
            return "full"
        short = room(self.store.path) < self.config.store.min_free or not self.store.reserve.exists()
        return "low" if short else "ok"

    def _retry_when_full(self, group: list) -> list | None:
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
            if self._source_stop.is_set() and self.disk_full["tries"] > 3:  # stopping: give up, say what
                log.error("stopping with the disk full: these frames were not accepted", events=len(group))
                return []
            self._writer_stop.wait(DISK_FULL_RETRY)
        self.writer.beat()
        return self._commit_group(group)

    def _announce(self, after: list) -> None:
        """After a commit: log, run actions, release acks, wake the forwarders for new items."""
        new = urgent = False
        for r in after:
            kind = type(r)
            if kind is Reading:  # most of them, by far: by exact type, not a chain of isinstance
                self.counts["readings"] += 1
                if self.log_readings:
                    log.info("reading", source=r.source, device=r.device_id, address=r.address, id=r.reading_id,
                             values=r.values, rssi=r.rssi, snr=r.snr)
                new = True
            else:
                self._after_commit(r)
                new = new or kind is Alarm or kind is HealthReport
                urgent = urgent or kind is Alarm
        for fwd in self.forwarders:
            if urgent:
                fwd.urgent.set()
            if new:
                fwd.wake.set()

    def _store_alarms(self, alarms: list[Alarm]) -> list[Alarm]:
        """Put alarms in the outbox (inside the open transaction); the ones new to it are returned."""
        now = time.time()
        return [a for a in alarms if self.store.add_alarm(a, self.uplink_mask, now)]

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
            self.store.begin()
            n = self.store.restamp(self.ingest.boot_id, self.clock.offset,
                                   CLOCK_SANE_AFTER if starting else float("inf"))
            self.store.commit()
        except Exception:  # the next step (or restart) tries again; stamps are not lost, only unrepaired
            log.exception("re-stamping readings after a clock step failed")
            self.store.rollback()
            self.rules.reload()
            return
        if n or not starting:
            log.warning("system clock stepped; readings taken before re-stamped as estimated",
                        step_s=round(self.clock.offset - before, 3), restamped=n)
        for fwd in self.forwarders:
            fwd.wake.set()

    def _tick_rules(self, force: bool) -> bool:
        """Run the rule timers; commit if they raised alarms or changed state (or ``force``). True if committed."""
        alarms = self.rules.tick(time.time(), time.monotonic())
        if not (alarms or self.rules.dirty or force):
            return False
        try:
            self.store.begin()
            new = self._store_alarms(alarms)
            self.rules.save(time.time())
            self.store.commit()
        except Exception:  # as in _commit_group: the writer lives on, the next tick tries again
            log.exception("commit of rule timers failed")
            self.store.rollback()
            self.rules.reload()
            return False
        self._announce(new)
        return True

    def _after_commit(self, r) -> None:
        if isinstance(r, Duplicate):
            self.counts["duplicates"] += 1
            log.debug("duplicate frame", device=r.device_id, id=r.reading_id)
        elif isinstance(r, Reject):
            self.counts["rejects"] += 1
            # By reason, not address: a flood from thousands of addresses is one line a minute, and
            # the throttle's own memory stays as small as the list of reasons.
            suppressed = self.throttle.allow((r.source, r.reason))
            if suppressed is not None:
                log.warning("frame rejected", source=r.source, reason=r.reason, address=r.address,
                            device=r.device_id, detail=r.detail, raw=r.raw[:64].hex(),
                            similar_suppressed=suppressed)
        elif isinstance(r, Ack):
            r.committed()
        elif isinstance(r, Park):
            r.committed()
            log.error("item parked: the platform refused it for good", uplink=r.uplink, seq=r.seq, error=r.error)
        elif isinstance(r, Alarm):
            self.counts["alarms"] += 1
            log.warning("alarm", alarm=r.kind, id=r.alarm_id, severity=r.severity, device=r.device_id,
                        late=r.late, message=r.message)
            self.actions.submit(r)

    def _record_inflight(self) -> None:
        """Inside a transaction: note each uplink's items in flight where they changed since last noted."""
        for fwd in self.forwarders:
            items = fwd.inflight_items
            if self.inflight_noted.get(fwd.uplink.name) != items:
                self.store.uplink_inflight(fwd.uplink.name, items)
                self.inflight_noted[fwd.uplink.name] = items

    def _commit_inflight(self) -> None:
        """Commit in-flight counts that changed with no commit since: only while an uplink is slow to ack."""
        if all(self.inflight_noted.get(f.uplink.name) == f.inflight_items for f in self.forwarders):
            return
        try:
            self.store.begin(durable=False)  # bookkeeping for status
            self._record_inflight()
            self.store.commit()
        except Exception:  # bookkeeping for status: the next tick tries again
            log.exception("recording items in flight failed")
            self.store.rollback()
            self.rules.reload()
            self.inflight_noted.clear()

    def _report_health(self) -> None:
        """Queue the gateway's health report for every uplink (a town with thirty gateways sees the sick one).

        Built in a thread of its own on a reader connection (its counts read a whole backlog's
        index); the writer only queues it, in its next group.
        """
        if self._health is not None and self._health.is_alive():
            return  # the last one is still counting: a slow card, a huge backlog
        self.store.write_counts()  # its last frame per source

        daemon = {"restarts": {s.name: s.restarts for s in self.stages if s.restarts},
                  "disk_full_since": None if self.disk_full is None else iso(self.disk_full["since"]),
                  "disk_state": self.disk_state()}

        def build(uptime_s: float) -> None:
            try:
                now = time.time()
                item = health(db_path(self.config), self.config.gateway_id, __version__, uptime_s, self.bits, now,
                              daemon)
            except Exception:  # the next report tries again
                log.exception("health report failed")
                return
            self.events.put(HealthReport(item, now))

        self._health = threading.Thread(target=build, args=(time.monotonic() - self.started,), name="health",
                                        daemon=True)
        self._health.start()

    def _check_integrity(self) -> None:
        started = time.monotonic()
        try:
            problems = quick_check(db_path(self.config))
        except Exception:
            log.exception("integrity check could not run")
            return
        if problems:
            # Not written to any more: SQLite can spread damage it writes over, and lose what it commits.
            self._database_damaged(sqlite3.DatabaseError("quick_check: " + "; ".join(problems[:3])))
        else:
            log.info("database integrity check ok", seconds=round(time.monotonic() - started, 2))

    def _enforce_cap(self) -> None:
        """Keep the database under its cap; say so once per episode of dropping, not per drop."""
        try:
            deleted = self.store.enforce_cap(self.config.store.max_bytes, time.time(),
                                             min_free=self.config.store.min_free)
        except Exception:  # housekeeping: the next round (in CAP_EVERY, not at once) tries again
            log.exception("disk cap enforcement failed")
            self.store.rollback()
            self.rules.reload()
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
            self.store.begin()
            items, _, more = self.store.purge_delivered(cutoff)
            self.store.commit()
        except Exception:  # housekeeping must never stop the writer; the next round tries again
            log.exception("purge of delivered items failed")
            self.store.rollback()
            return False
        self.purged += items
        if self.purged and not more:
            log.info("purged delivered items", count=self.purged, older_than_s=self.config.store.keep_delivered)
            self.purged = 0
        return more


def name_os_threads(named: dict[int, str]) -> dict[int, str]:
    """Give each thread's name to the OS as well (Linux: the first 15 characters), so that ``top -H``
    or ``/proc/<pid>/task/*/comm`` show which stage is busy, not eight threads called python. The
    main thread's name is the process's in ``ps`` and ``pgrep``: "edgegw".
    ``named`` is what the last call named (native id -> name); returns the same for this one."""
    main = threading.main_thread()
    current = {t.native_id: "edgegw" if t is main else t.name for t in threading.enumerate()
               if t.native_id is not None}
    for tid, name in current.items():
        if named.get(tid) != name:
            try:
                Path(f"/proc/self/task/{tid}/comm").write_text(name[:15])
            except OSError:  # not Linux, or the thread just ended
                pass
    return current


def run(config: Config, drivers: DriverRegistry) -> None:
    """Run until SIGTERM or SIGINT; :class:`~edgegw.running.AlreadyRunning` if another daemon has the data dir."""
    heap.limit_heap_growth()
    dbfile.check_data_dir(config.data_dir)  # before the lock, which needs it too: one clear line, not a traceback
    lock = DataDirLock(config.data_dir, __version__)
    try:
        try:
            gateway = Gateway(config, drivers)
        except sqlite3.DatabaseError as exc:  # opened, but damaged where starting up reads
            if not dbfile.is_damage(exc):
                raise
            raise dbfile.DatabaseDamaged(f"the database {db_path(config)} is damaged"
                                         f" ({dbfile.mark_damaged(db_path(config), exc)});"
                                         " start again to set it aside and begin a fresh one") from None
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        gateway.start()
        _watch(gateway, lock, done)
        log.info("stopping", gateway=config.gateway_id)
        gateway.stop()
        if gateway.damaged is not None:
            raise dbfile.DatabaseDamaged(f"the database {db_path(config)} is damaged ({gateway.damaged});"
                                         " start again to set it aside and begin a fresh one")
    finally:
        lock.release()


def _watch(gateway: Gateway, lock: DataDirLock, done: threading.Event) -> None:
    """The main thread, until ``done``: feed systemd's watchdog while every stage is alive, say loudly
    which is not, and rewrite the heartbeat that ``edgegw status`` reads."""
    named: dict[int, str] = {}
    throttle = Throttle(60.0)
    next_beat = 0.0
    while not done.wait(1.0) and gateway.damaged is None:
        named = name_os_threads(named)
        if problems := gateway.problems():
            for stage, problem in problems.items():
                if (suppressed := throttle.allow(stage)) is not None:
                    log.error("stage not alive; systemd's watchdog is not fed", stage=stage, problem=problem,
                              similar_suppressed=suppressed)
        else:
            notify_systemd("WATCHDOG=1")
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + HEARTBEAT_EVERY
            try:
                lock.beat(gateway.describe())
            except OSError as exc:  # a full disk where there is no runtime directory: status shows it late
                if (suppressed := throttle.allow("heartbeat")) is not None:
                    log.warning("heartbeat not written", error=str(exc), similar_suppressed=suppressed)
