#!/usr/bin/env python3
"""Benchmark the real daemon: emulated module on a pty -> edgegw process -> local Mosquitto.

Prints, for this machine, with the daemon's default config (but for one water-level rule and a
local action that time alarms) and its default log level (info, JSON lines as under systemd; the
log is written to a tmpfs and counted apart, as the journal would take it):
  idle        with no frames: the daemon's share of one core, its wake-ups per second (context
              switches of all its threads, /proc/<pid>/task/*/status), in all and by thread, and
              bytes written per second
  field       at 100, 10 and 0.2 frames/s (--field): daemon CPU µs per reading, in all and by thread,
              from the first frame until all are acknowledged; wake-ups per reading, in all and by
              thread; bytes written per reading (plus the checkpoint owed); log bytes per reading; and this machine's
              floor under them (wakeup_floor): the CPU of a thread's wake-up, by a timer and by a
              hand-over from another thread, and how much dearer the same Python work is right
              after a wake-up than back to back (a cold cache); and pipeline_floor: at each rate of
              a frame a second or more, the CPU per reading of scripts/floor.py, the leanest CPython
              pipeline taking the steps every reading takes (read, parse, commit, publish, ack)
  rss         a 100,000-frame burst: RSS at its start, middle and end, and its end-to-end rate
Every figure of idle, field and the end-to-end bursts is given over --runs runs: median, min, max.
The daemon's CPU in all is its process CPU clock, to the nanosecond; by thread it is what the kernel
counts in ticks (10 ms on most kernels), since Linux lets no other process read a thread's clock.
  ingest      readings/s from the serial line to committed in SQLite (a burst sent as fast as the pty takes it)
  end to end  readings/s and daemon CPU µs per reading, serial line in -> PUBACK recorded (broker up),
              in all and by thread: the burst with the median CPU time of three (each one's figure too)
  drain       readings/s of a backlog accumulated while the broker was down, from the reconnect on
  disk        bytes the daemon wrote per reading (/proc/<pid>/io write_bytes), plus the WAL checkpoint
              it owes for them (run by the bench at the end of the phase), in the burst and at
              field rate (one reading every 0.2 s, each in a commit of its own); and what a commit
              of one changed page writes there, the floor for a reading committed on its own
  memory      peak RSS of the daemon (VmHWM)
  alarms      latency p50/p99, serial line -> local action started and -> broker, while a backlog of
              --readings drains (alarm frames sent every 20 ms as the uplink comes back, between other
              frames: a busy radio, whose reads the source paces); quiet_radio: the same with a
              frame every 100 ms, an alarm every 200 ms (no read is paced)

  restart     with --backlog pending readings put straight into the outbox: time from start to the
              first batch at the broker, alarm latency while that backlog drains, its drain rate
              from the first batch to an empty outbox (the alarms and the bench's own subscriber
              share the machine meanwhile), peak RSS with it

Usage: python scripts/bench.py [--readings 20000] [--backlog 1000000] [--runs 3] [--phases idle,field,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgegw.radio import PACE
from edgegw.radio.emulator import RylrEmulator
from edgegw.store import open_reader, pending_count
from tests.broker import Mosquitto
from tests.gateway import Daemon, Sender, fill_outbox, wait_until, write_config

TICKS = os.sysconf("SC_CLK_TCK")
ALARM_FRAMES = 40
BURSTS = 3  # end-to-end bursts of --readings each; the one with the median CPU time is reported

FIELD_READINGS = 100
RSS_BURST = 100_000  # frames of the burst whose RSS is followed
PHASES = ("idle", "field", "burst", "rss", "drain", "alarms", "restart")
# The daemon's log goes here when there is a tmpfs: see run().
LOG_DIR = "/dev/shm" if Path("/dev/shm").is_dir() else None

# One stage far above the backlog's levels: every frame above it after one below raises an alarm.
RULES = """
[[rules]]
type = "water_level"
devices = ["river-02"]
stages = [{{ name = "danger", above = 5000 }}]

[[actions]]
type = "command"
name = "stamp"
alarms = ["water_level_alarm"]
limit = 1000
command = ["sh", "-c", 'echo "$EDGEGW_ALARM_ID $(date +%s.%N)" >> {out}']
"""


class ArrivalClock:
    """Subscribes to the batches and notes when each alarm's item arrived (by its reading id)."""

    def __init__(self, port: int, topic: str, keep_session: bool = True):
        self.arrived: dict[str, float] = {}
        self.first: float | None = None  # when the first batch of any kind arrived
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-platform",
                                  clean_session=not keep_session)
        self.subscribed = threading.Event()  # cleared while the broker is away
        self.client.on_message = self._message
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_disconnect = lambda *_: self.subscribed.clear()
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        if b'"type":"alarm"' not in msg.payload:  # parse only what matters: keep up with the drain
            return
        for item in json.loads(msg.payload)["items"]:
            if item["type"] == "alarm":
                with self.lock:
                    self.arrived.setdefault(item["reading"], now)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def percentiles(latencies: list[float]) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return {"n": 0}
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1)}


def cpu_seconds(pid: int, task: str = "") -> float:
    """CPU time of a process, to the nanosecond (its CPU-time clock), or of one of its threads
    (``task`` = "task/<tid>/"): utime + stime, in the kernel's ticks (10 ms here), since Linux
    reads another process's thread clocks to nobody."""
    if not task:
        return time.clock_gettime(((~pid) << 3) | 2)  # the process's CPUCLOCK_SCHED clock id
    fields = Path(f"/proc/{pid}/{task}stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_seconds_by_thread(pid: int) -> dict[str, tuple[str, float]]:
    """Thread id -> (name, CPU seconds); the daemon gives its threads' names to the OS."""
    out: dict[str, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[tid] = (Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip(), cpu_seconds(pid, f"task/{tid}/"))
        except FileNotFoundError:  # a short-lived thread (a health report) ended meanwhile
            pass
    return out


def switches_by_thread(pid: int) -> dict[str, tuple[str, int]]:
    """Thread id -> (name, context switches, voluntary and not): each is a wake-up (a poll's
    timeout, a timer, a frame) or a preemption."""
    out: dict[str, tuple[str, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
        except FileNotFoundError:  # a short-lived thread ended meanwhile
            continue
        # voluntary_ and nonvoluntary_
        count = sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)
        out[tid] = (status[0].split(None, 1)[1].strip(), count)
    return out


def switches(pid: int) -> int:
    """Context switches of every thread the daemon has now (see :func:`switches_by_thread`)."""
    return sum(count for _, count in switches_by_thread(pid).values())


def by_name(now: Mapping[str, tuple[str, float]], before: Mapping[str, tuple[str, float]]) -> dict[str, float]:
    """What each thread name added between two readings of thread id -> (name, count) (threads of
    one name summed: a stage restarted after a crash is a new thread of the same name)."""
    out: dict[str, float] = {}
    for tid, (name, count) in now.items():
        out[name] = out.get(name, 0.0) + count - before.get(tid, ("", 0.0))[1]
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def checkpoint(db: Path) -> int:
    """Copy the daemon's WAL into its database now; the bytes this process wrote doing it.

    SQLite checkpoints once the WAL holds 1,000 pages, so a phase's checkpoint would otherwise land
    in whichever phase came next: at the end of each disk phase the bench runs it and counts it.
    """
    before = write_bytes(os.getpid())
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()
    return write_bytes(os.getpid()) - before


def one_page_floor(directory: Path, commits: int = 200) -> int:
    """Bytes written per commit that changes one row on one page, with the daemon's pragmas, on the
    filesystem of its data: the least that a reading committed on its own (one fsync) can cost.

    Linux counts a page of the page cache each time it is dirtied after a write-back: every fsync'd
    commit rewrites the WAL's last 4 KiB page, however little it appends.
    """
    from edgegw.store.connection import connect

    conn = connect(directory / "floor.db")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.execute("INSERT OR REPLACE INTO t VALUES (1, 0)")
        before = write_bytes(os.getpid())
        for i in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE t SET v = ? WHERE id = 1", (i,))
            conn.execute("COMMIT")
        return round((write_bytes(os.getpid()) - before) / commits)
    finally:
        conn.close()


def wakeup_floor(wakes: int = 300, gap: float = 0.01) -> dict:
    """What a wake-up costs on this machine, in this process (the daemon is idle meanwhile): the
    floor under every figure at a field rate, where each frame wakes a stage or two.

    ``timer_us``: CPU of a thread that sleeps ``gap`` and wakes, a wake-up; ``handover_us``: CPU of a
    thread woken through a ``queue.Queue`` by another (a hand-over between two stages);
    ``cold_work_factor``: the CPU of the same Python work (a small JSON round trip and an SQLite
    insert) right after each sleep, over the same work done back to back.
    """
    woken: list[int] = []
    handovers: queue.Queue[int | None] = queue.Queue()

    def take() -> None:
        while handovers.get() is not None:
            pass
        woken.append(time.thread_time_ns())

    taker = threading.Thread(target=take)
    taker.start()
    start = time.thread_time_ns()
    for _ in range(wakes):
        time.sleep(gap)
    timer = time.thread_time_ns() - start
    for i in range(wakes):
        time.sleep(gap)
        handovers.put(i)
    handovers.put(None)
    taker.join()

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE r (device TEXT, reading TEXT)")

    def work() -> int:
        began = time.thread_time_ns()
        for i in range(10):
            reading = json.dumps({"device": f"river-{i:02d}", "level": 1.5 * i, "at": time.time()})
            conn.execute("INSERT INTO r VALUES (?, ?)", (json.loads(reading)["device"], reading))
        return time.thread_time_ns() - began

    hot = sum(work() for _ in range(wakes))
    cold = 0
    for _ in range(wakes):
        time.sleep(gap)
        cold += work()
    conn.close()
    # The taker's thread CPU is read inside it, at its end: its wake-ups and its loop, nothing else.
    return {"timer_us": round(timer / wakes / 1e3, 1), "handover_us": round(woken[0] / wakes / 1e3, 1),
            "cold_work_factor": round(cold / hot, 1)}


def pipeline_floor(port: int, field_n: Mapping[float, int]) -> dict:
    """scripts/floor.py at each field rate of a frame a second or more (below that its figure would
    be the idle wake-ups it does not have), on the bench's broker: its CPU µs per reading."""
    out = {}
    for rate, count in field_n.items():
        if rate >= 1:
            run = subprocess.run([sys.executable, str(Path(__file__).with_name("floor.py")), "--rate", f"{rate:g}",
                                  "--frames", str(count), "--port", str(port), "--json"],
                                 capture_output=True, text=True, check=True, timeout=count / rate + 120)
            out[f"cpu_us_per_reading_at_{rate:g}_per_s"] = json.loads(run.stdout)["cpu_us_per_reading"]
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_drained(db: Path, timeout: float, what: str) -> None:
    """Wait until nothing is pending.

    Counts only that, then sleeps ten times as long as the count took: the bench must not take the
    CPU it measures (the full status of a million-row outbox every 10 ms took one of the two cores).
    """
    conn = open_reader(db)
    deadline = time.monotonic() + timeout
    try:
        while True:
            t0 = time.perf_counter()
            if not pending_count(conn):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(max(0.01, 10 * (time.perf_counter() - t0)))
    finally:
        conn.close()


def alarm_latencies(sender: Sender, clock: ArrivalClock, stamps: Path, gap: float = 0.01) -> dict:
    """Send a frame every ``gap`` s, every other one an alarm; latency of each alarm to its local
    action and to the broker. 10 ms apart is a busy radio: the source paces its reads (up to PACE)."""
    sent: dict[str, float] = {}
    for i in range(2 * ALARM_FRAMES):
        high = i % 2 == 1
        at = time.time()
        reading = sender.send("river-02", {"level": 6000 if high else 1000, "water_temperature": 10, "battery": 3.6})
        if high:
            sent[reading] = at
        time.sleep(gap)
    wait_until(lambda: set(sent) <= set(clock.arrived), 600, "every alarm at the broker")

    def started() -> dict[str, float]:  # reading id -> when its alarm's action started
        lines = stamps.read_text().splitlines() if stamps.exists() else []
        return {line.split()[0].rsplit(":", 2)[0]: float(line.split()[1]) for line in lines}
    wait_until(lambda: set(sent) <= set(started()), 60, "every local action")
    return {"alarm_to_broker": percentiles([clock.arrived[r] - t for r, t in sent.items()]),
            "alarm_to_local_action": percentiles([started()[r] - t for r, t in sent.items()])}


def outage(broker: Mosquitto, daemon: Daemon, sender: Sender, n: int, committed: int) -> None:
    """Stop the broker, let ``n`` readings pile up (``committed`` in all), start it, wait for the uplink."""
    broker.stop()
    wait_until(lambda: any(u["state"] == "down" for u in daemon.status()["uplinks"]), 30, "uplink down")
    sender.quiet(n)
    daemon.wait_committed(committed, timeout=600)
    broker.start()
    wait_until(lambda: any(u["state"] == "up" for u in daemon.status()["uplinks"]), 120, "uplink up")


def burst(daemon: Daemon, sender: Sender, n: int, committed: int) -> dict:
    """Send ``n`` readings at once (``committed`` in all after them) and measure them to the broker."""
    pid = daemon.proc.pid
    checkpoint(daemon.db)
    cpu0, io0, t0 = cpu_seconds(pid), write_bytes(pid), time.perf_counter()
    threads0 = cpu_seconds_by_thread(pid)
    sender.quiet(n)
    daemon.wait_committed(committed, timeout=600)
    t_committed = time.perf_counter()
    wait_drained(daemon.db, 600, "delivered")
    t_delivered = time.perf_counter()
    cpu1, io1 = cpu_seconds(pid), write_bytes(pid)
    by_thread = by_name(cpu_seconds_by_thread(pid), threads0)
    return {
        "ingest_readings_per_s": round(n / (t_committed - t0)),
        "end_to_end_readings_per_s": round(n / (t_delivered - t0)),
        "cpu_us_per_reading": round((cpu1 - cpu0) / n * 1e6, 1),
        "cpu_us_per_reading_by_thread": {name: round(t / n * 1e6, 1) for name, t in sorted(by_thread.items()) if t},
        "bytes_written_per_reading": round((io1 - io0 + checkpoint(daemon.db)) / n),
    }


def journal_bytes(daemon: Daemon) -> int:
    """What the daemon has logged so far (its stderr, which systemd's journal would take)."""
    try:
        return daemon.log.stat().st_size
    except FileNotFoundError:
        return 0


def field_rate(daemon: Daemon, sender: Sender, rate: float, n: int) -> dict:
    """``n`` readings at ``rate`` frames/s (devices in turn), as a busy field sends them: daemon CPU
    per reading from the first frame until all are acknowledged (the idle cost between frames
    included), bytes written per reading (plus the checkpoint owed), log bytes per reading."""
    pid = daemon.proc.pid
    wait_drained(daemon.db, 60, "delivered")
    checkpoint(daemon.db)
    cpu0, io0, sw0, log0 = cpu_seconds(pid), write_bytes(pid), switches(pid), journal_bytes(daemon)
    threads0, thread_sw0 = cpu_seconds_by_thread(pid), switches_by_thread(pid)
    t0 = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        sender.quiet(1, start=i)
    wait_drained(daemon.db, 60, "delivered")
    elapsed = time.monotonic() - t0
    cpu1, io1, sw1 = cpu_seconds(pid), write_bytes(pid), switches(pid)
    by_thread = by_name(cpu_seconds_by_thread(pid), threads0)
    sw_by_thread = by_name(switches_by_thread(pid), thread_sw0)
    # Apart, too: a run of a few readings owes a checkpoint of every page it touched, which the
    # field shares among the thousand or so readings between two checkpoints.
    owed = checkpoint(daemon.db)
    return {
        "cpu_us_per_reading": round((cpu1 - cpu0) / n * 1e6),
        "cpu_us_per_reading_by_thread": {k: round(t / n * 1e6) for k, t in sorted(by_thread.items()) if t > 0},
        "wakeups_per_reading": round((sw1 - sw0) / n, 1),
        "wakeups_per_reading_by_thread": {k: round(c / n, 2) for k, c in sorted(sw_by_thread.items()) if c > 0},
        "bytes_written_per_reading": round((io1 - io0 + owed) / n),
        "checkpoint_bytes_per_reading": round(owed / n),
        "journal_bytes_per_reading": round((journal_bytes(daemon) - log0) / n),
        "seconds": round(elapsed, 1),
    }


def idle(daemon: Daemon, seconds: float) -> dict:
    """No frames for ``seconds``: the daemon's share of one core, its wake-ups and bytes written per second."""
    pid = daemon.proc.pid
    wait_drained(daemon.db, 60, "delivered")
    time.sleep(2)  # the last acknowledgement's commit and the forwarders' last look
    cpu0, sw0, io0, t0 = cpu_seconds(pid), switches_by_thread(pid), write_bytes(pid), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    sw_by_thread = by_name(switches_by_thread(pid), sw0)
    return {"cpu_percent_of_a_core": round((cpu_seconds(pid) - cpu0) / elapsed * 100, 3),
            "wakeups_per_s": round(sum(sw_by_thread.values()) / elapsed, 1),
            "wakeups_per_s_by_thread": {k: round(c / elapsed, 2) for k, c in sorted(sw_by_thread.items()) if c > 0},
            "bytes_written_per_s": round((write_bytes(pid) - io0) / elapsed)}


def rss_burst(daemon: Daemon, sender: Sender, n: int, committed: int) -> dict:
    """A burst of ``n`` frames: RSS at its start, its middle and its end (all acknowledged), the peak."""
    pid = daemon.proc.pid
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append((time.monotonic(), rss_mb(pid)))

    start = rss_mb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    sampler.start()
    sender.quiet(n)
    daemon.wait_committed(committed, timeout=600)
    wait_drained(daemon.db, 600, "delivered")
    t1 = time.monotonic()
    done.set()
    sampler.join()
    middle = min(samples, key=lambda s: abs(s[0] - (t0 + t1) / 2))[1] if samples else start
    return {"frames": n, "rss_mb_start": round(start, 1), "rss_mb_middle": round(middle, 1),
            "rss_mb_end": round(rss_mb(pid), 1), "rss_mb_peak_in_burst": round(max([start, *(s[1] for s in samples)]), 1),
            "end_to_end_readings_per_s": round(n / (t1 - t0))}


def spread(values: list[float]) -> dict:
    """Median, min and max of several runs' figure."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def summarize(runs: list[dict]) -> dict:
    """One dict like a run's, each number replaced by its spread over the runs (0 where a run lacks
    it: a thread that took no CPU time in that run)."""
    out: dict = {}
    for key in dict.fromkeys(k for r in runs for k in r):
        values = [r.get(key) for r in runs]
        if any(isinstance(v, dict) for v in values):
            out[key] = summarize([v or {} for v in values])
        elif all(isinstance(v, (int, float, type(None))) and not isinstance(v, bool) for v in values):
            out[key] = spread([v or 0 for v in values])
        else:
            out[key] = values[0]
    return out


def run(n: int, backlog: int, phases: set[str], runs: int, field_n: dict[float, int], idle_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgegw-bench-") as scratch, \
            tempfile.TemporaryDirectory(prefix="edgegw-bench-log-", dir=LOG_DIR) as logs:
        tmp = Path(scratch)
        # Persistent, so the arrival clock's subscription survives the outages like a platform's would.
        (tmp / "mosquitto").mkdir()
        broker = Mosquitto(tmp / "mosquitto", persistence=True).start()
        emulator = RylrEmulator(tmp / "rylr0")
        emulator.plug()
        stamps = tmp / "action-stamps.txt"
        # The default config and log level (info, JSON as under systemd), but for the rule and the
        # action that time alarms.
        config = write_config(tmp, emulator.link, broker.port, log_level="info", max_items=500,
                              extra=RULES.format(out=stamps))
        # The heartbeat goes to a tmpfs, as under the systemd unit (RuntimeDirectory): beside the
        # database it would write a page every 10 s, 2 KB a reading at a town's rate.
        daemon = Daemon(config, env={"RUNTIME_DIRECTORY": logs} if LOG_DIR else None)
        # The log goes to memory (tmpfs), as systemd's journal takes it off the daemon: its bytes
        # are counted apart from what the daemon writes to the disk.
        daemon.log = Path(logs) / "daemon.log"
        daemon.start()
        committed = 0
        try:
            daemon.wait_receiving()
            pid = daemon.proc.pid
            sender = Sender(emulator)
            out: dict = {"readings": n, "runs": runs}

            if "idle" in phases:
                out["idle"] = summarize([idle(daemon, idle_s) for _ in range(runs)])

            if "field" in phases:
                for rate, count in field_n.items():
                    results = []
                    for _ in range(runs):
                        results.append(field_rate(daemon, sender, rate, count))
                        committed += count
                    out[f"field_{rate:g}_per_s"] = {"readings": count, **summarize(results)}
                out["wakeup_floor"] = summarize([wakeup_floor() for _ in range(runs)])
                out["pipeline_floor"] = summarize([pipeline_floor(broker.port, field_n) for _ in range(runs)])

            if "burst" in phases:
                # 1. broker up: serial line -> committed -> PUBACK recorded, several times: one
                # burst's CPU time moved by a tenth from run to run on a shared machine.
                bursts = []
                for _ in range(max(runs, BURSTS)):
                    committed += n
                    bursts.append(burst(daemon, sender, n, committed))
                out["burst"] = summarize(bursts)
                out["peak_rss_mb_after_live_run"] = round(peak_rss_mb(pid), 1)

                # 1b. field rate: one reading per commit, as a real field sends them (SD card wear)
                io0 = write_bytes(pid)
                for _ in range(FIELD_READINGS):
                    sender.quiet(1)
                    time.sleep(0.2)
                wait_drained(daemon.db, 60, "delivered")
                io1 = write_bytes(pid)
                committed += FIELD_READINGS
                out["bytes_written_per_reading_one_per_commit"] = round(
                    (io1 - io0 + checkpoint(daemon.db)) / FIELD_READINGS)
                out["bytes_written_per_commit_of_one_page"] = one_page_floor(tmp)

            if "rss" in phases:
                committed += RSS_BURST
                out["rss_burst"] = rss_burst(daemon, sender, RSS_BURST, committed)

            if "drain" in phases:
                # 2. broker down: a backlog builds up, then drains
                committed += n
                outage(broker, daemon, sender, n, committed=committed)
                # Time the drain from the reconnect on, not the reconnect backoff before it.
                cpu2 = cpu_seconds(pid)
                t2 = time.perf_counter()
                wait_drained(daemon.db, 600, "backlog drained")
                t3 = time.perf_counter()
                out["drain_readings_per_s"] = round(n / (t3 - t2))
                out["drain_cpu_us_per_reading"] = round((cpu_seconds(pid) - cpu2) / n * 1e6, 1)

            if "alarms" in phases:
                # 3. alarms while a backlog drains: the priority lane and the local action
                clock = ArrivalClock(broker.port, "test/gw-test/batches")
                committed += n
                outage(broker, daemon, sender, n, committed=committed)
                # The platform's own reconnect is not the gateway's latency.
                wait_until(clock.subscribed.is_set, 30, "the arrival clock back")
                out["backlog_pending_when_alarms_sent"] = n
                out.update(alarm_latencies(sender, clock, stamps))
                # The same with the frames 100 ms apart: a quiet radio, where no read is paced.
                committed += n
                outage(broker, daemon, sender, n, committed=committed)
                wait_until(clock.subscribed.is_set, 30, "the arrival clock back")
                out["quiet_radio"] = alarm_latencies(sender, clock, stamps, gap=2 * PACE)
                clock.close()
            out["peak_rss_mb"] = round(peak_rss_mb(pid), 1)

            if backlog and "restart" in phases:
                # 4. a restart with a big backlog: time to the first batch, alarms while it drains
                daemon.stop()
                broker.stop()
                fill_outbox(daemon.db, backlog)
                broker.start()
                clock = ArrivalClock(broker.port, "test/gw-test/batches", keep_session=False)
                t0 = time.time()
                daemon.start()
                # The whole backlog can drain while the alarms are sent: time it from the side.
                drained: list[float] = []
                watcher = threading.Thread(target=lambda: (
                    wait_drained(daemon.db, 1800, "the big backlog drained"), drained.append(time.time())))
                watcher.start()
                wait_until(lambda: clock.first is not None, 120, "the first batch after the restart")
                out["restart_backlog"] = backlog
                out["restart_to_first_batch_s"] = round(clock.first - t0, 2)
                daemon.wait_receiving()
                out["backlog_alarms"] = alarm_latencies(sender, clock, stamps)
                clock.close()
                watcher.join()
                # From the first batch to an empty outbox, while the alarms and the bench's own
                # subscriber (which parses every batch) share the machine.
                out["backlog_drain_readings_per_s"] = round(backlog / (drained[0] - clock.first))
                out["peak_rss_mb_with_backlog"] = round(peak_rss_mb(daemon.proc.pid), 1)
            out["emulator_dropped_frames"] = emulator.dropped
            return out
        finally:
            daemon.stop()
            emulator.unplug()
            broker.stop()


def flatten(result: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys; a spread as "median (min-max over N runs)"."""
    rows: dict[str, str] = {}
    for key, value in result.items():
        if isinstance(value, dict) and "median" in value and "runs" in value:
            rows[prefix + key] = (f"{value['median']:g} ({value['min']:g}-{value['max']:g} over "
                                  f"{len(value['runs'])} runs)")
        elif isinstance(value, dict):
            rows.update(flatten(value, f"{prefix}{key}."))
        else:
            rows[prefix + key] = str(value)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=20000)
    parser.add_argument("--backlog", type=int, default=1_000_000,
                        help="pending readings for the restart and drain phase (0 to skip it)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each phase; every figure shows their spread")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    # 0.2 frames/s: a town's gateway (100 sensors every 10 minutes is 0.17), where every reading and
    # its acknowledgement are commits of their own and the idle cost between frames is most of it.
    parser.add_argument("--field", default="100:3000,10:300,0.2:12",
                        help="field rates and readings per run, rate:count,... (frames/s)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of each idle run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if unknown := phases - set(PHASES):
        parser.error(f"unknown phases {', '.join(sorted(unknown))}; known: {', '.join(PHASES)}")
    field_n = {float(r): int(c) for r, c in (pair.split(":") for pair in args.field.split(","))}
    result = run(args.readings, args.backlog, phases, args.runs, field_n, args.idle)
    result["machine"] = f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rows = flatten(result)
        width = max(map(len, rows))
        for k, v in rows.items():
            print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
