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

import functools
import os
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
from edgegw.config import Config, UplinkConfig
from edgegw.drivers import DriverRegistry
from edgegw.forwarder import Forwarder
from edgegw.ingest import Ingest
from edgegw.log import Throttle
from edgegw.model import Event, SourceState, UplinkState
from edgegw.radio import ReadTurn
from edgegw.radio.field import VirtualField, load_field
from edgegw.radio.registry import build_emulator, build_source
from edgegw.rules import RuleEngine
from edgegw.rules.actions import ActionRunner
from edgegw.running import HEARTBEAT_EVERY, DataDirLock
from edgegw.store import Store, db_path, quick_check
from edgegw.supervise import Stage
from edgegw.uplink import build_uplink
from edgegw.writer import Writer

log = structlog.get_logger("edgegw.daemon")

# s: the writer beats at least every second; this long without means it hangs (a commit on a dying
# card), and the watchdog stops being fed.
WRITER_STALE = 15.0


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
        # A damaged database is set aside and a fresh one started; the WAL is checked first (see edgegw.dbfile).
        self.store, damage = dbfile.open_store(
            db_path(config.data_dir), lambda path: Store(path, config.store.synchronous, config.store.rejects_kept))
        uplinks = config.effective_uplinks()
        bits = self.store.register_uplinks([u.name for u in uplinks])
        for name, kinds in self.store.released.items():
            log.warning("uplink no longer in the config: what waited for it alone is released unsent",
                        uplink=name, **kinds)
        for alarm in dbfile.record(self.store, damage, config.gateway_id, sum(bits.values())):
            log.warning("alarm", alarm=alarm.kind, id=alarm.alarm_id, severity=alarm.severity,
                        device=alarm.device_id, message=alarm.message)
        self.damaged: str | None = None  # damage SQLite found in the database in use: the daemon exits
        self.ingest = Ingest(config, drivers, self.store, sum(bits.values()))
        self.rules = RuleEngine(config, drivers, self.store, time.time(), time.monotonic())
        self.actions = ActionRunner(config.actions, config.gateway_id)
        self.forwarders = [
            Forwarder(build_uplink(u, config), bits[u.name], db_path(config.data_dir),
                      config.gateway_id, u.batch.max_items, u.batch.max_bytes, getattr(u, "max_inflight", 1),
                      self._post, u.stalled_after)
            for u in uplinks
        ]
        self.writer = Writer(config, self.store, self.ingest, self.rules, self.actions, self.forwarders, bits,
                             ReadTurn())
        self.writer.on_damage = self._database_damaged
        self.writer.daemon_health = lambda: {"restarts": {s.name: s.restarts for s in self.stages if s.restarts}}
        self.emulators: list[Any] = []  # a simulated source's module (see edgegw.radio.registry.build_emulator)
        self.stages: list[Stage] = []

    def _post(self, event: Event) -> None:
        self.writer.post(event)

    def start(self) -> None:
        self._source_stop = threading.Event()
        self._forward_stop = threading.Event()
        self._writer_stop = threading.Event()  # set only once the writer has drained the queue
        self.actions.start()
        if self.actions.actions:
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
            # After a crash the forwarder starts over with a fresh uplink: the old one was stopped.
            self._stage(f"forwarder:{uplink.name}", functools.partial(fwd.run, self._forward_stop),
                        self._forward_stop, on_crash=functools.partial(self._fresh_uplink, fwd, uplink))
        for source in self.config.sources:
            simulate = getattr(source, "simulate", None)
            port = source.port if simulate is None else str(self._start_simulation(source))
            radio = build_source(source, port, self.writer.read_turn)
            self._stage(f"source:{radio.name}", functools.partial(radio.run, self.writer.emit, self._source_stop),
                        self._source_stop)
        for stage in self.stages:  # in the order made: the writer before the sources that feed it
            stage.start()
        notify_systemd("READY=1")
        log.info("gateway started", gateway=self.config.gateway_id, data_dir=str(self.config.data_dir),
                 sources=[s.name for s in self.config.sources], uplinks=[f.uplink.name for f in self.forwarders],
                 devices=len(self.config.devices))

    def _fresh_uplink(self, fwd: Forwarder, uplink: UplinkConfig, exc: Exception) -> None:
        fwd.uplink = build_uplink(uplink, self.config)

    def _start_simulation(self, source: Any) -> Path:
        link = self.config.data_dir / f"{source.name}.pty"
        emulator = build_emulator(source, link)
        # The virtual sensors are provisioned with the gateway's keys, as an installer flashes real ones.
        keys = {d.address: key for d in self.config.devices if self.config.device_source(d) == source.name
                and (key := self.ingest.auth[d.id].key) is not None}
        assert source.simulate is not None
        field = VirtualField(load_field(source.simulate), self.drivers, emulator, keys=keys)
        emulator.plug()
        self.emulators.append(emulator)
        self._stage(f"field:{source.name}", lambda: field.run(self._source_stop), self._source_stop)
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

    def _database_damaged(self, exc: BaseException) -> None:
        """SQLite found damage in the database in use: note it and have the daemon exit (see :func:`run`)."""
        if self.damaged is None:
            self.damaged = dbfile.mark_damaged(db_path(self.config.data_dir), exc)

    def problems(self) -> dict[str, str]:
        """The stages that are not alive now, and why: while there are any, systemd's watchdog goes hungry."""
        now = time.monotonic()
        return {s.name: p for s in self.stages if (p := s.problem(now)) is not None}

    def describe(self) -> dict[str, Any]:
        """What the heartbeat says: every stage's state and restarts, and the writer's disk trouble."""
        now = time.monotonic()
        return {"stages": {s.name: s.describe(now) for s in self.stages}, "disk_full": self.writer.disk_full,
                "disk_state": self.writer.disk_state()}

    def stop(self) -> None:
        """Stop reading, commit what was read, stop forwarding. Nothing accepted is lost by stopping."""
        notify_systemd("STOPPING=1")
        self._source_stop.set()
        self._join("source:", "field:", timeout=5)
        for e in self.emulators:
            e.unplug()
        for source in self.config.sources:
            self.writer.post(SourceState(source.name, "stopped"))
        self._forward_stop.set()
        for fwd in self.forwarders:
            fwd.wake.set()
        self._join("forwarder:", timeout=10)
        for fwd in self.forwarders:
            self.writer.post(UplinkState(fwd.uplink.name, "stopped"))
        self.writer.stop()
        self._join("writer", timeout=30)
        self.actions.stop()
        self._join("actions", timeout=10)
        self._writer_stop.set()
        self.store.close()
        log.info("gateway stopped", **self.writer.counts)

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
            raise dbfile.DatabaseDamaged(f"the database {db_path(config.data_dir)} is damaged"
                                         f" ({dbfile.mark_damaged(db_path(config.data_dir), exc)});"
                                         " start again to set it aside and begin a fresh one") from None
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        gateway.start()
        _watch(gateway, lock, done)
        log.info("stopping", gateway=config.gateway_id)
        gateway.stop()
        if gateway.damaged is not None:
            raise dbfile.DatabaseDamaged(f"the database {db_path(config.data_dir)} is damaged ({gateway.damaged});"
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
