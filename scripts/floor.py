"""The floor under the field-rate figures of scripts/bench.py: what a reading costs on this machine
in the leanest CPython pipeline that takes the steps every reading takes in edgegw.

One process with one thread of its own (and paho's network thread): a frame line read from a pty
(a REYAX ``+RCV`` line, written by a child process at ``--rate`` frames/s; a read that found fewer
than 16 frames is followed by the next no sooner than 50 ms after it, as the daemon paces them),
parsed and its payload decoded; the reading inserted into an open SQLite transaction (WAL,
``synchronous=FULL``, 1 KiB pages, an outbox row and a queue row); the transaction committed,
fsynced, as the daemon's commit window closes (100 ms after it opened, 200 ms more for each frame
that joins, 500 ms at most); one QoS 1 MQTT message per commit;
its PUBACK recorded by deleting its queue rows (committed without an fsync, as the daemon does).
Nothing else: no device registry, no duplicate check, no rules, no log, no health, no
back-pressure. It prints the process's CPU per reading, from the first frame read until the last
reading is acknowledged.

Usage: python scripts/floor.py [--rate 10] [--frames 300] [--port BROKER_PORT] [--json]
(without --port it starts a Mosquitto of its own on a free loopback port)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgegw.radio import PACE, PACE_EVENTS  # noqa: E402
from edgegw.writer import COMMIT_GAP, COMMIT_WINDOW, COMMIT_WINDOW_MAX  # noqa: E402
from tests.broker import Mosquitto  # noqa: E402

RCV = re.compile(r"\+RCV=(\d+),(\d+),([0-9A-Fa-f]*),(-?\d+),(-?\d+)")


def feed(master: int, rate: float, frames: int) -> None:
    """Write ``frames`` river-gauge lines to the pty at ``rate`` per second (in a child process)."""
    t0 = time.monotonic() + 0.5
    for i in range(frames):
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        payload = struct.pack(">HHhH", i % 65536, 1000 + (7 * i) % 1000, 125, 3600).hex().upper()
        os.write(master, f"+RCV={12 + i % 8},{len(payload) // 2},{payload},-48,11\r\n".encode())


def pipeline(port: int, rate: float, frames: int, workdir: Path) -> float:
    """Run the pipeline over ``frames`` frames; the process CPU seconds it took."""
    master, slave = os.openpty()
    tty.setraw(slave)
    child = os.fork()  # before paho's thread starts: a fork copies only the calling thread
    if child == 0:
        try:
            feed(master, rate, frames)
        finally:
            os._exit(0)
    db = sqlite3.connect(workdir / "floor.db", isolation_level=None)
    for pragma in ("page_size=1024", "journal_mode=WAL", "synchronous=FULL"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, item_id TEXT UNIQUE, device TEXT,"
               " observed_at REAL, rssi REAL, snr REAL, raw BLOB, vals TEXT)")
    db.execute("CREATE TABLE queue (seq INTEGER PRIMARY KEY)")
    acked: list[int] = []
    lock = threading.Lock()
    wake_r, wake_w = os.pipe()

    def on_publish(client, userdata, mid, reason, properties) -> None:
        with lock:
            acked.append(mid)
        os.write(wake_w, b"\0")

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    buf = b""
    batch: list[tuple[int, str, dict]] = []
    inflight: dict[int, list[int]] = {}
    opened = closes = 0.0
    paced_until = 0.0  # no read before then (a read that found few frames)
    started: float | None = None
    done = 0
    try:
        while done < frames:
            now = time.monotonic()
            due = min([t for t in (closes if batch else None, paced_until) if t is not None and t > now],
                      default=None)
            ready = select.select([slave, wake_r] if now >= paced_until else [wake_r], [], [],
                                  None if due is None else due - now)[0]
            if slave in ready:
                began = time.monotonic()
                *lines, rest = (buf + os.read(slave, 16384)).split(b"\n")
                buf = rest
                if len(lines) < PACE_EVENTS:
                    paced_until = began + PACE
                for line in lines:
                    m = RCV.fullmatch(line.rstrip(b"\r").decode("latin-1"))
                    if m is None:
                        continue
                    if started is None:
                        started = time.process_time()
                    raw = bytes.fromhex(m.group(3))
                    counter, level, temperature, battery = struct.unpack(">HHhH", raw)
                    values = {"level": level / 1000, "water_temperature": temperature / 10, "battery": battery / 1000}
                    if not batch:
                        db.execute("BEGIN IMMEDIATE")
                        opened = time.monotonic()
                        closes = opened + COMMIT_WINDOW
                    else:
                        closes = min(opened + COMMIT_WINDOW_MAX, time.monotonic() + COMMIT_GAP)
                    item_id = f"river-{m.group(1)}:0:{counter}"
                    seq = db.execute("INSERT INTO outbox (item_id, device, observed_at, rssi, snr, raw, vals)"
                                     " VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (item_id, f"river-{m.group(1)}", time.time(), float(m.group(4)),
                                      float(m.group(5)), raw, json.dumps(values))).lastrowid
                    db.execute("INSERT INTO queue VALUES (?)", (seq,))
                    batch.append((seq, item_id, values))
            if wake_r in ready:
                os.read(wake_r, 4096)
                with lock:
                    mids = acked[:]
                    acked.clear()
                seqs = [s for mid in mids for s in inflight.pop(mid, [])]
                if seqs:
                    if not batch:  # not durable: the next reading's fsync covers it
                        db.execute("PRAGMA synchronous=NORMAL")
                    db.execute(f"DELETE FROM queue WHERE seq IN ({','.join(map(str, seqs))})")
                    if not batch:
                        db.execute("PRAGMA synchronous=FULL")
                    done += len(seqs)
            if batch and time.monotonic() >= closes:
                db.execute("COMMIT")
                body = json.dumps([{"id": item_id, "values": values} for _, item_id, values in batch])
                inflight[client.publish("floor/batches", body, qos=1).mid] = [seq for seq, _, _ in batch]
                batch = []
        return time.process_time() - (started or 0.0)
    finally:
        client.loop_stop()
        client.disconnect()
        db.close()
        os.waitpid(child, 0)
        for fd in (master, slave, wake_r, wake_w):
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--port", type=int, help="a broker on 127.0.0.1 (default: start one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgegw-floor-") as tmp:
        broker = None
        if args.port is None:
            broker = Mosquitto(Path(tmp))
            broker.start()
        try:
            cpu = pipeline(args.port or broker.port, args.rate, args.frames, Path(tmp))
        finally:
            if broker is not None:
                broker.stop()
    result = {"rate": args.rate, "frames": args.frames, "cpu_us_per_reading": round(cpu / args.frames * 1e6)}
    print(json.dumps(result) if args.json else
          f"{args.frames} frames at {args.rate:g}/s: {result['cpu_us_per_reading']} µs of CPU a reading")


if __name__ == "__main__":
    main()
