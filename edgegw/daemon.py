"""The daemon: wires sources -> writer (ingest, store, rules) -> forwarders -> uplinks, supervises
them as stages, and speaks to systemd (readiness, watchdog, signals).

Threads, not asyncio: every stage blocks on I/O of its own (a serial port, a socket, fsync), and a
thread per stage keeps each one readable alone. Exactly one thread, the writer (edgegw.writer),
writes the database; everything else talks to it through its queue.

A source reads its port again only once its last hand-over is committed. So the loss window of a
crash is the frames read from the port but not yet committed: one read turn per source, at most
16 KiB (``rylr.TURN_BYTES``; about 420 frames of a 39-byte line).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from edgegw import __version__, dbfile, heap
from edgegw.clock import SyncWait
from edgegw.config import Config, SigfoxUplink, UplinkConfig, load_config
from edgegw.drivers import DriverRegistry
from edgegw.errors import ConfigError
from edgegw.forwarder import Forwarder, Sender
from edgegw.ingest import Ingest
from edgegw.log import Throttle
from edgegw.model import Event, SourceState, UplinkState, boot_id
from edgegw.radio import ReadTurn, Stop
from edgegw.radio.field import VirtualField, load_field
from edgegw.radio.registry import build_emulator, build_source
from edgegw.route import Routing
from edgegw.rules import RuleEngine
from edgegw.rules.actions import ActionRunner
from edgegw.running import HEARTBEAT_EVERY, DataDirLock
from edgegw.store import Store, db_path, quick_check
from edgegw.store.housekeeping import RESERVE_BYTES, give_back_reserve_to_start
from edgegw.supervise import Stage
from edgegw.uplink import Uplink, acknowledgement_level, build_uplink
from edgegw.uplink.sigfox.sender import SigfoxSender, sigfox_health
from edgegw.writer import Writer

log = structlog.get_logger("edgegw.daemon")

# s: the writer beats at least every second; this long without means it hangs (a commit on a dying
# card), and the watchdog stops being fed.
WRITER_STALE = 15.0
# s: how often the main thread looks at the stages, feeds the watchdog (WatchdogSec=30 in the unit)
# and rewrites the heartbeat when due; signals and damage wake it at once. Every second, it was a
# fifth of an idle gateway's wake-ups.
WATCH_EVERY = 5.0


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


# Read once at start: a change to these is refused by a reload (SIGHUP) and takes a restart.
RESTART_ONLY = ("gateway_id", "data_dir", "store", "log", "actions")


def routing(uplinks: list[UplinkConfig], bits: dict[str, int]) -> Routing:
    """Which uplinks take an item, by the uplinks' bits."""
    local = sum(bits[u.name] for u in uplinks if acknowledgement_level(u.type) == "local")
    return Routing({bits[u.name]: u.item_route() for u in uplinks}, local)


class Gateway:
    """One running gateway. ``start()``, then ``stop()``; :func:`run` does both around signals."""

    def __init__(self, config: Config, drivers: DriverRegistry):
        self.config, self.drivers = config, drivers
        # A damaged database is set aside and a fresh one started; the WAL is checked first (see edgegw.dbfile).
        self.store, damage = dbfile.open_store(
            db_path(config.data_dir), lambda path: Store(path, config.store.synchronous, config.store.rejects_kept))
        uplinks = config.effective_uplinks()
        bits = self.store.register_uplinks([u.name for u in uplinks])
        # What a daemon killed before this one recorded ("receiving", "up") is not this one's: until
        # its own stages say, status shows them starting, not a port or a broker connection as open.
        with self.store.transaction(durable=False):
            for source in config.sources:
                self.store.source_state(source.name, "starting", "the daemon is starting", time.time())
            for uplink in uplinks:
                self.store.uplink_state(uplink.name, "starting", "the daemon is starting", time.time())
        for name, kinds in self.store.released.items():
            log.warning("uplink no longer in the config: what waited for it alone is released unsent",
                        uplink=name, **kinds)
        self.routing = routing(uplinks, bits)
        damaged_mask = self.routing.mask("alarm", None, "database_damaged")
        for alarm in dbfile.record(self.store, damage, config.gateway_id, damaged_mask):
            log.warning("alarm", alarm=alarm.kind, id=alarm.alarm_id, severity=alarm.severity,
                        device=alarm.device_id, message=alarm.message)
        self.damaged: str | None = None  # damage SQLite found in the database in use: the daemon exits
        self.on_damaged: Callable[[], object] = lambda: None  # set by run: wakes its main thread
        # Read at start: a reload does not change it.
        self.sync = SyncWait(config.clock.await_sync, synced_this_boot=self.store.boot_synced(boot_id()))
        self.ingest = Ingest(config, drivers, self.store, self.routing.reading, self.sync)
        self.rules = RuleEngine(config, drivers, self.store, time.time(), time.monotonic())
        self.actions = ActionRunner(config.actions, config.gateway_id, self._post)
        self.forwarders: list[Sender] = [self._sender(config, u, bits[u.name], self.routing) for u in uplinks]
        self.writer = Writer(config, self.store, self.ingest, self.rules, self.actions, self.forwarders, bits,
                             self.routing, ReadTurn())
        self.writer.on_damage = self._database_damaged
        self.writer.daemon_health = lambda: {"restarts": {s.name: s.restarts for s in self.stages if s.restarts},
                                             **sigfox_health(self.config)}
        self.emulators: dict[str, Any] = {}  # a simulated source's module (see edgegw.radio.registry.build_emulator)
        self.stages: list[Stage] = []
        # Each source's and forwarder's stop, by stage name: a reload stops some and leaves the others.
        self.stops: dict[str, threading.Event] = {}

    def _sender(self, config: Config, u: UplinkConfig, bit: int, routing: Routing,
                uplink: Uplink | None = None) -> Sender:
        """The stage that forwards to one uplink; ``uplink``: that uplink already built (see :meth:`reload`)."""
        if isinstance(u, SigfoxUplink):
            return SigfoxSender(u, bit, routing, db_path(config.data_dir), config.data_dir, self._post)
        return Forwarder(uplink or build_uplink(u, config), bit, db_path(config.data_dir), config.gateway_id,
                         u.batch.max_items, u.batch.max_bytes, getattr(u, "max_inflight", 1), self._post,
                         u.stalled_after, u.batch.max_wait, self.sync)

    def _post(self, event: Event) -> None:
        self.writer.post(event)

    def start(self) -> None:
        self._source_stop = threading.Event()  # the daemon is stopping: every source stops
        self._writer_stop = threading.Event()  # set only once the writer has drained the queue
        self.actions.start()
        if self.actions.actions:
            # Committed alarms whose actions a crash (or power cut) cut off: a siren owed is a siren run,
            # unless the alarm is older than an alarm counts late.
            for alarm in self.store.actions_owed(time.time() - self.config.alarms.late_after):
                log.warning("alarm's actions owed from before the restart", alarm=alarm.kind, id=alarm.alarm_id)
                self.actions.submit(alarm)
            self._stage("actions", self.actions.run, self._writer_stop)
        writer = self._stage("writer", self.writer.run, self._writer_stop, WRITER_STALE,
                             lambda _: self.store.rollback())  # a bug: undo its open transaction, restart
        self.writer.beat = writer.beat
        self.writer.sources_stopping = self._source_stop.is_set
        self.writer.pause = self._writer_stop.wait
        # Beside the pipeline, not before it: on a million-row database the check takes seconds,
        # and sending must start at once.
        threading.Thread(target=self._check_integrity, name="integrity-check", daemon=True).start()
        for fwd, uplink in zip(self.forwarders, self.config.effective_uplinks()):
            self._forwarder_stage(fwd, uplink)
        for source in self.config.sources:
            self._source_stages(source)
        for stage in self.stages:  # in the order made: the writer before the sources that feed it
            stage.start()
        notify_systemd("READY=1")
        log.info("gateway started", gateway=self.config.gateway_id, data_dir=str(self.config.data_dir),
                 sources=[s.name for s in self.config.sources], uplinks=[f.uplink.name for f in self.forwarders],
                 devices=len(self.config.devices))

    def _forwarder_stage(self, fwd: Sender, uplink: UplinkConfig) -> Stage:
        stop = self.stops[f"forwarder:{uplink.name}"] = threading.Event()
        # After a crash the forwarder starts over with a fresh uplink: the old one was stopped.
        return self._stage(f"forwarder:{uplink.name}", functools.partial(fwd.run, stop), stop,
                           on_crash=functools.partial(self._fresh_uplink, fwd, uplink))

    def _source_stages(self, source: Any) -> list[Stage]:
        """A source's stage, and its virtual field's where it is simulated (made, not started)."""
        stop = self.stops[f"source:{source.name}"] = Stop()
        made = len(self.stages)
        simulate = getattr(source, "simulate", None)
        port = source.port if simulate is None else str(self._start_simulation(source, stop))
        radio = build_source(source, port, self.writer.read_turn)
        self._stage(f"source:{radio.name}", functools.partial(radio.run, self.writer.emit, stop), stop)
        return self.stages[made:]

    def _fresh_uplink(self, fwd: Sender, uplink: UplinkConfig, exc: Exception) -> None:
        if isinstance(fwd, Forwarder):  # a Sigfox sender opens its module afresh itself
            fwd.uplink = build_uplink(uplink, self.config)

    def _start_simulation(self, source: Any, stop: threading.Event) -> Path:
        link = self.config.data_dir / f"{source.name}.pty"
        emulator = build_emulator(source, link)
        # The virtual sensors are provisioned with the gateway's keys, as an installer flashes real ones.
        keys = {d.address: key for d in self.config.devices if self.config.device_source(d) == source.name
                and (key := self.ingest.auth[d.id].key) is not None}
        assert source.simulate is not None
        field = VirtualField(load_field(source.simulate), self.drivers, emulator, keys=keys)
        emulator.plug()
        self.emulators[source.name] = emulator
        self._stage(f"field:{source.name}", lambda: field.run(stop), stop)
        log.info("simulated radio module", source=source.name, port=str(link), field=str(source.simulate))
        return link

    def _stage(self, name: str, target: Callable[[], object], stop: threading.Event, stale_after: float | None = None,
               on_crash: Callable[[Exception], object] | None = None) -> Stage:
        def crashed(exc: Exception) -> None:
            if dbfile.is_damage(exc):
                self._database_damaged(exc)
            if on_crash is not None:
                on_crash(exc)

        stage = Stage(name, target, stop, stale_after, crashed)
        self.stages.append(stage)
        return stage

    def reload(self, path: Path) -> bool:
        """Take the config at ``path`` (SIGHUP) without losing a frame: the sources and uplinks whose
        settings changed (or that went) are stopped, what they read committed first; the writer takes
        the new devices, drivers, rules and routes between two groups; then the changed and new ones
        start. Unchanged sources and uplinks run on. A config with problems is refused, every problem
        logged, and the running one kept. True when the new config runs."""
        try:
            config, drivers = load_config(path, keys=True)
        except ConfigError as exc:
            log.error(f"config reload refused: {len(exc.problems)} problem(s) in {exc.path}; the running config is"
                      " kept", file=exc.path, problems=[f"{exc.path}: {p}" for p in exc.problems])
            return False
        if fixed := [key for key in RESTART_ONLY if getattr(config, key) != getattr(self.config, key)]:
            log.error("config reload refused: these settings take a restart (systemctl restart edgegw); the"
                      " running config is kept", file=str(path), keys=fixed)
            return False
        old_uplinks = {u.name: u for u in self.config.effective_uplinks()}
        uplinks = config.effective_uplinks()
        changed = {u.name: u for u in uplinks if old_uplinks.get(u.name) != u}
        try:  # before anything stops: an uplink that cannot be built (a password file gone) refuses the reload
            built = {name: build_uplink(u, config) for name, u in changed.items() if not isinstance(u, SigfoxUplink)}
        except Exception as exc:
            log.error("config reload refused: an uplink cannot be made; the running config is kept", file=str(path),
                      error=f"{type(exc).__name__}: {exc}")
            return False
        old_sources = {s.name: s for s in self.config.sources}
        sources = [s for s in config.sources if old_sources.get(s.name) != s]
        gone_sources = sorted(set(old_sources) - {s.name for s in config.sources})
        gone_uplinks = sorted(set(old_uplinks) - {u.name for u in uplinks})
        notify_systemd("RELOADING=1")
        stopping_sources = [s for n, s in old_sources.items() if n in gone_sources or n in {s.name for s in sources}]
        stopping_uplinks = [u for n, u in old_uplinks.items() if n in gone_uplinks or n in changed]
        self._stop_stages([f"source:{s.name}" for s in stopping_sources]
                          + [f"forwarder:{u.name}" for u in stopping_uplinks])
        senders: list[Sender] = []
        failed: list[Exception] = []

        def swap() -> None:  # in the writer's thread, between two groups
            rules: RuleEngine | None = None
            try:
                bits = self.store.register_uplinks([u.name for u in uplinks])
                routes = routing(uplinks, bits)
                # The new rules start from the database: what the running ones hold back (when each
                # device was last heard) goes there first, or a reload would tell a device silent.
                self.writer.save_rules()
                rules = RuleEngine(config, drivers, self.store, time.time(), time.monotonic())
                senders.extend(self._sender(config, u, bits[u.name], routes, built.get(u.name))
                               for u in changed.values())
                self.ingest.configure(config, drivers, routes.reading)
            except Exception as exc:  # nothing swapped yet: the writer goes on with the running config
                if rules is not None:
                    rules.detach()
                failed.append(exc)
                raise
            # Nothing below can fail: the writer takes the new config whole.
            self.rules.detach()
            self.rules = self.writer.rules = rules
            w = self.writer
            w.config, w.bits, w.routing = config, bits, routes
            w.forwarders = {name: f for name, f in w.forwarders.items() if name in bits and name not in changed}
            w.forwarders.update((f.uplink.name, f) for f in senders)
            for f in w.forwarders.values():
                if isinstance(f, SigfoxSender):  # whether another uplink takes an alarm is in the routes
                    f.routing = routes

        self.writer.between(swap).wait()
        if failed:  # the writer kept the running config: what was stopped for the reload starts again as it was
            log.error("config reload failed in the writer (see the error above); the running config is kept",
                      file=str(path))
            for u in stopping_uplinks:
                fwd = next(f for f in self.forwarders if f.uplink.name == u.name)
                self._fresh_uplink(fwd, u, failed[0])
                self._forwarder_stage(fwd, u).start()
            for source in stopping_sources:
                for stage in self._source_stages(source):
                    stage.start()
            notify_systemd("READY=1")
            return False
        self.config, self.drivers, self.routing = config, drivers, self.writer.routing
        self.forwarders = list(self.writer.forwarders.values())
        started = [self._forwarder_stage(fwd, changed[fwd.uplink.name]) for fwd in senders]
        for source in sources:
            started += self._source_stages(source)
        for stage in started:
            stage.start()
        notify_systemd("READY=1")
        log.info("config reloaded", file=str(path), sources_restarted=[s.name for s in sources if s.name in old_sources],
                 sources_started=[s.name for s in sources if s.name not in old_sources], sources_stopped=gone_sources,
                 uplinks_restarted=[n for n in changed if n in old_uplinks],
                 uplinks_started=[n for n in changed if n not in old_uplinks], uplinks_stopped=gone_uplinks,
                 devices=len(config.devices))
        return True

    def _database_damaged(self, exc: BaseException) -> None:
        """SQLite found damage in the database in use: note it and have the daemon exit (see :func:`run`)."""
        if self.damaged is None:
            self.damaged = dbfile.mark_damaged(db_path(self.config.data_dir), exc)
            self.on_damaged()

    def problems(self) -> dict[str, str]:
        """The stages that are not alive now, and why: while there are any, systemd's watchdog goes hungry."""
        now = time.monotonic()
        return {s.name: p for s in self.stages if (p := s.problem(now)) is not None}

    def describe(self) -> dict[str, Any]:
        """What the heartbeat says: every stage's state and restarts, the writer's disk trouble, and a
        clock NTP has not set while ``[clock] await_sync`` asks for it."""
        now = time.monotonic()
        sync = self.sync
        clock = ({} if sync.synced else {"clock": {"held_for_s": round(sync.wait - now)} if sync.holding else
                                                  {"unsynced": True}})
        return {"stages": {s.name: s.describe(now) for s in self.stages}, "disk_full": self.writer.disk_full,
                "disk_state": self.writer.disk_state(), **clock}

    def stop(self) -> None:
        """Stop reading, commit what was read, stop forwarding. Nothing accepted is lost by stopping."""
        notify_systemd("STOPPING=1")
        self._source_stop.set()
        self._stop_stages([f"source:{s.name}" for s in self.config.sources])
        self._stop_stages([f"forwarder:{fwd.uplink.name}" for fwd in self.forwarders])
        self.writer.stop()
        self._join("writer", timeout=30)
        self.actions.stop()
        self._join("actions", timeout=10)
        self._writer_stop.set()
        self.store.close()
        log.info("gateway stopped", **self.writer.counts)

    def _stop_stages(self, names: list[str]) -> None:
        """Stop these sources and forwarders (by stage name, ``source:NAME``, ``forwarder:NAME``) and
        take their stages off the list. A source's last read is committed before its thread ends; a
        forwarder's items in flight stay pending, sent again by the next one."""
        for name in names:
            self.stops.pop(name).set()
        ending = [s for s in self.stages if s.name.replace("field:", "source:", 1) in names]
        stopping = [fwd for fwd in self.forwarders if f"forwarder:{fwd.uplink.name}" in names]
        for fwd in stopping:
            fwd.wake.set()
        for stage in ending:
            stage.thread.join(timeout=10 if stage.name.startswith("forwarder:") else 5)
        for name in names:
            kind, _, part = name.partition(":")
            if kind == "source":
                if (emulator := self.emulators.pop(part, None)) is not None:
                    emulator.unplug()
                self.writer.post(SourceState(part, "stopped"))
        for fwd in stopping:
            self.writer.post(UplinkState(fwd.uplink.name, "stopped"))
        self.stages = [s for s in self.stages if s not in ending]

    def _join(self, *prefixes: str, timeout: float) -> None:
        for stage in self.stages:
            if stage.name.startswith(prefixes):
                stage.thread.join(timeout=timeout)

    def _check_integrity(self) -> None:
        started = time.monotonic()
        try:
            problems = quick_check(db_path(self.config.data_dir))
        except Exception:
            log.exception("integrity check could not run")
            return
        if problems:
            # Not written to any more: SQLite can spread damage it writes over, and lose what it commits.
            self._database_damaged(sqlite3.DatabaseError("quick_check: " + "; ".join(problems[:3])))
        else:
            log.info("database integrity check ok", seconds=round(time.monotonic() - started, 2))


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


def run(config: Config, drivers: DriverRegistry, path: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT; :class:`~edgegw.running.AlreadyRunning` if another daemon has the data dir.
    SIGHUP reads the config at ``path`` again (see :meth:`Gateway.reload`)."""
    heap.limit_heap_growth()
    # First of all: SIGHUP's default ends the process, and a reload may come while a big database opens.
    hup = threading.Event()
    wake = threading.Event()  # the main thread's (see _watch)

    def on_hup(*_: object) -> None:
        hup.set()
        wake.set()
    signal.signal(signal.SIGHUP, on_hup)
    dbfile.check_data_dir(config.data_dir)  # before the lock, which needs it too: one clear line, not a traceback
    try:
        lock = DataDirLock(config.data_dir, __version__)  # its file's block is there from the last start
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise _full(config.data_dir) from None
    try:
        # After the lock, not before: the reserve of a daemon that runs is that daemon's.
        if given := give_back_reserve_to_start(config.data_dir):
            log.warning("disk full at start: the reserve is given back so that the gateway can start",
                        data_dir=str(config.data_dir), bytes=given)
        try:
            gateway = Gateway(config, drivers)
        except sqlite3.DatabaseError as exc:  # opened, but damaged where starting up reads
            if shutil.disk_usage(config.data_dir).free < RESERVE_BYTES:  # SQLite says "disk I/O error"
                raise _full(config.data_dir) from None
            if not dbfile.is_damage(exc):
                raise
            raise dbfile.DatabaseDamaged(f"the database {db_path(config.data_dir)} is damaged"
                                         f" ({dbfile.mark_damaged(db_path(config.data_dir), exc)});"
                                         " start again to set it aside and begin a fresh one") from None
        done = threading.Event()

        def on_stop(*_: object) -> None:
            done.set()
            wake.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_stop)
        gateway.on_damaged = wake.set
        gateway.start()
        _watch(gateway, lock, done, hup, wake, path)
        log.info("stopping", gateway=config.gateway_id)
        gateway.stop()
        if gateway.damaged is not None:
            raise dbfile.DatabaseDamaged(f"the database {db_path(config.data_dir)} is damaged ({gateway.damaged});"
                                         " start again to set it aside and begin a fresh one")
    finally:
        lock.release()


def _full(data_dir: Path) -> dbfile.DataDirFull:
    free = shutil.disk_usage(data_dir).free
    return dbfile.DataDirFull(f"the filesystem of the data directory {data_dir} is full ({free} bytes free) and"
                              " the gateway cannot start: free some space there (systemd tries again every few"
                              " seconds)")


def _watch(gateway: Gateway, lock: DataDirLock, done: threading.Event, hup: threading.Event, wake: threading.Event,
           path: Path | None) -> None:
    """The main thread, until ``done``: feed systemd's watchdog while every stage is alive, say loudly
    which is not, rewrite the heartbeat that ``edgegw status`` reads, and reload the config on SIGHUP.
    It looks every :data:`WATCH_EVERY`, and at once when ``wake`` is set (a signal, damage found)."""
    named = name_os_threads({})  # at once: a burst in the first second is shown by stage, not as "python"
    throttle = Throttle(60.0)
    next_beat = 0.0
    look = 1.0  # the first look soon: the heartbeat that `edgegw status` reads, the first watchdog ping
    while not done.is_set() and gateway.damaged is None:
        wake.wait(look)
        wake.clear()
        look = WATCH_EVERY
        if done.is_set() or gateway.damaged is not None:
            break
        # The SIGHUP handler only sets hup: a reload takes a moment, and a second SIGHUP meanwhile
        # makes one more reload after it, not one inside it.
        if hup.is_set():
            hup.clear()
            if path is None:
                log.warning("SIGHUP ignored: this gateway was not started from a config file")
            else:
                gateway.reload(path)
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
