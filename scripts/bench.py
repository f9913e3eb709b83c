#!/usr/bin/env python3
"""Benchmark the real daemon: emulated module on a pty -> edgegw process -> local Mosquitto.

Prints, for this machine:
  ingest      readings/s from the serial line to committed in SQLite (a burst sent as fast as the pty takes it)
  end to end  readings/s and daemon CPU µs per reading, serial line in -> PUBACK recorded (broker up)
  drain       readings/s of a backlog accumulated while the broker was down, from the reconnect on
  disk        bytes the daemon wrote per reading (/proc/<pid>/io write_bytes)
  memory      peak RSS of the daemon (VmHWM)

Usage: python scripts/bench.py [--readings 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgegw.radio.emulator import RylrEmulator  # noqa: E402
from tests.broker import Mosquitto  # noqa: E402
from tests.gateway import Daemon, Sender, wait_until, write_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgegw-bench-") as tmp:
        tmp = Path(tmp)
        broker = Mosquitto(tmp / "mosquitto").start()
        emulator = RylrEmulator(tmp / "rylr0")
        emulator.plug()
        config = write_config(tmp, emulator.link, broker.port, log_level="warning", max_items=500)
        daemon = Daemon(config).start()
        try:
            daemon.wait_receiving()
            pid = daemon.proc.pid
            sender = Sender(emulator)
            out: dict = {"readings": n}

            # 1. broker up: serial line -> committed -> PUBACK recorded
            cpu0, io0, t0 = cpu_seconds(pid), write_bytes(pid), time.perf_counter()
            sender.burst(n)
            daemon.wait_committed(n, timeout=600)
            t_committed = time.perf_counter()
            wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 600, "delivered")
            t_delivered = time.perf_counter()
            cpu1, io1 = cpu_seconds(pid), write_bytes(pid)
            out["ingest_readings_per_s"] = round(n / (t_committed - t0))
            out["end_to_end_readings_per_s"] = round(n / (t_delivered - t0))
            out["cpu_us_per_reading"] = round((cpu1 - cpu0) / n * 1e6, 1)
            out["bytes_written_per_reading"] = round((io1 - io0) / n)
            out["peak_rss_mb_after_live_run"] = round(peak_rss_mb(pid), 1)

            # 2. broker down: a backlog builds up, then drains
            broker.stop()
            wait_until(lambda: any(u["state"] == "down" for u in daemon.status()["uplinks"]), 30, "uplink down")
            sender.burst(n)
            daemon.wait_committed(2 * n, timeout=600)
            broker.start()
            # Time the drain from the reconnect on, not the reconnect backoff before it.
            wait_until(lambda: any(u["state"] == "up" for u in daemon.status()["uplinks"]), 120, "uplink up")
            cpu2 = cpu_seconds(pid)
            t2 = time.perf_counter()
            wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 600, "backlog drained")
            t3 = time.perf_counter()
            out["drain_readings_per_s"] = round(n / (t3 - t2))
            out["drain_cpu_us_per_reading"] = round((cpu_seconds(pid) - cpu2) / n * 1e6, 1)
            out["peak_rss_mb"] = round(peak_rss_mb(pid), 1)
            out["emulator_dropped_frames"] = emulator.dropped
            return out
        finally:
            daemon.stop()
            emulator.unplug()
            broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.readings)
    result["machine"] = f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(map(len, result))
        for k, v in result.items():
            print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
