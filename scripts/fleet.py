#!/usr/bin/env python3
"""A whole town: N real gateway daemons with overlapping coverage, M emulated sensors, a clustered broker.

Each gateway is a real ``edgegw run`` process reading its own emulated RYLR module on a pty, with the
same town config (every sensor listed, one MQTT uplink naming every broker node). Gateways stand on
a square grid; each sensor is placed in the field and heard by its 1 to 3 nearest gateways (the same
frame bytes reach each). Sensors send every --interval seconds at a random phase (--burst: all at
once, every --interval). The platform is edgegw.platform_consumer: it de-duplicates by item id.

The broker is a 3-node RabbitMQ cluster (MQTT plugin, quorum queue for the platform's session) or one
Mosquitto (--broker mosquitto). Faults on the way: --kill-node-at (SIGKILL one broker node, back
--node-down seconds later), --kill-gateway-at (SIGKILL one gateway, back 5 s later), --add-gateway-at
(a new gateway in the middle of the town, configured like the others: nothing else changes).

A frame counts as heard when a live gateway's module passed it to its host; for a gateway killed -9,
only the frames it had committed count, and those passed to its port that it had not committed (still
in the tty buffer, or read in the README's loss window before commit) are reported, with how many of
them no other gateway heard. The run is exactly once when the platform's unique readings are exactly
the heard frames: none missing, none extra.

Usage: python scripts/fleet.py [--gateways 30] [--sensors 3000] [--interval 300] [--duration 300]
           [--kill-node-at 100] [--kill-gateway-at 150] [--add-gateway-at 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgegw.platform_consumer import PlatformConsumer, Tally
from edgegw.radio.emulator import RylrEmulator
from tests.broker import Mosquitto
from tests.gateway import DRIVERS, Daemon, wait_until
from tests.rabbitmq import RabbitCluster

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
TOPIC = "town/{gateway}/batches"


@dataclass
class Sensor:
    device_id: str
    address: int
    driver: str
    x: float
    y: float
    hears: list[int]  # indexes of the gateways in range
    counter: int = 0


@dataclass
class Gateway:
    index: int
    gateway_id: str
    x: float
    y: float
    workdir: Path
    emulator: RylrEmulator | None = None
    daemon: Daemon | None = None
    up: bool = False
    launched: float = 0.0  # monotonic: when its current process started
    heard: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def place(gateways: int, sensors: int, rng: random.Random) -> tuple[list[tuple[float, float]], list[Sensor]]:
    """Gateways on a square grid 1 km apart; sensors anywhere in it, each heard by its 1-3 nearest gateways."""
    side = math.ceil(math.sqrt(gateways))
    spots = [(float(i % side), float(i // side)) for i in range(gateways)]
    field_w, field_h = side - 1 or 1, math.ceil(gateways / side) - 1 or 1
    out = []
    for n in range(sensors):
        x, y = rng.uniform(0, field_w), rng.uniform(0, field_h)
        k = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
        nearest = sorted(range(gateways), key=lambda g: math.dist((x, y), spots[g]))[:k]
        driver = "trap" if n % 3 == 2 else "water_level"
        out.append(Sensor(f"s{n + 1:04d}", n + 1, driver, x, y, nearest))
    return spots, out


def town_config(gw: Gateway, sensors: list[Sensor], brokers: list[str], health_every: float) -> Path:
    """One gateway's config: the town's device list and broker nodes, the same for every gateway but
    its id, its port and the node it tries first (spread over the cluster)."""
    devices = "".join(f'[[devices]]\nid = "{s.device_id}"\naddress = {s.address}\ndriver = "{s.driver}"\n'
                      f'interval = "1h"\n' for s in sensors)
    nodes = brokers[gw.index % len(brokers):] + brokers[:gw.index % len(brokers)]
    gw.workdir.mkdir(parents=True, exist_ok=True)
    path = gw.workdir / "gateway.toml"
    assert gw.emulator is not None
    path.write_text(
        f'gateway_id = "{gw.gateway_id}"\ndata_dir = "data"\nhealth_every = "{health_every:g}s"\n'
        f'[[sources]]\ntype = "rylr"\nname = "lora0"\nport = "{gw.emulator.link}"\n'
        f'[[uplinks]]\ntype = "mqtt"\nname = "town"\nbrokers = {json.dumps(nodes)}\ntopic = "{TOPIC}"\n'
        f'deadline = "10s"\n{devices}[log]\nlevel = "info"\nformat = "json"\n')
    return path


def frame_values(sensor: Sensor, rng: random.Random) -> dict[str, Any]:
    # A quiet day: traps armed, rivers below any stage, batteries fine: no alarms.
    if sensor.driver == "trap":
        return {"state": "armed", "tamper": False, "battery": round(rng.uniform(3.4, 3.6), 3)}
    return {"level": rng.randrange(800, 1500), "water_temperature": 12.5, "battery": 3.6}


def cpu_and_rss(pid: int) -> tuple[float, int, int]:
    """CPU seconds, current RSS and peak RSS (bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024


def committed_readings(gw: Gateway) -> set[str]:
    assert gw.daemon is not None
    with sqlite3.connect(f"file:{gw.daemon.db}?mode=ro", uri=True) as db:
        return {r[0] for r in db.execute("SELECT item_id FROM outbox WHERE kind = 'reading'")}


class Town:
    """The fleet, its broker and its platform, with the faults scheduled for the run."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        spots, self.sensors = place(args.gateways, args.sensors, self.rng)
        self.gateways = [Gateway(i, f"gw-{i + 1:02d}", x, y, workdir / f"gw-{i + 1:02d}")
                         for i, (x, y) in enumerate(spots)]
        self.cluster: RabbitCluster | None = None
        self.mosquitto: Mosquitto | None = None
        self.tally = Tally(window=24 * 3600)
        self.consumer: PlatformConsumer | None = None
        self.sent_at: dict[str, float] = {}  # reading id -> when its sensor sent it
        self.frames_sent = 0
        self.unheard = 0  # frames no live gateway heard
        self.events: list[str] = []
        # Frames passed to a killed gateway's port that it had not committed: still in the tty buffer,
        # or read and not yet committed (the loss window before commit the README states).
        self.uncommitted_at_kill: set[str] = set()
        self.t0 = time.monotonic()

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.t0:7.1f}s {what}"
        self.events.append(line)
        print(line, file=sys.stderr, flush=True)

    # -- broker and platform ------------------------------------------------------------------------

    def start_broker(self) -> list[str]:
        if self.args.broker == "rabbitmq":
            self.cluster = RabbitCluster(self.workdir / "rabbitmq").start()
            return self.cluster.brokers
        self.mosquitto = Mosquitto(self.workdir / "mosquitto").start()
        return [f"127.0.0.1:{self.mosquitto.port}"]

    def start_platform(self, brokers: list[str]) -> None:
        share = "platform" if self.args.broker == "mosquitto" else None  # RabbitMQ 3.10 has no $share
        self.consumer = PlatformConsumer(brokers, TOPIC.replace("{gateway}", "+"), self.tally.take,
                                         "fleet-platform", share).start()
        if not self.consumer.subscribed.wait(60):
            raise RuntimeError("the platform consumer did not subscribe")

    # -- gateways -----------------------------------------------------------------------------------

    def start_gateway(self, gw: Gateway, brokers: list[str]) -> None:
        gw.emulator = RylrEmulator(gw.workdir / "rylr0")
        gw.workdir.mkdir(parents=True, exist_ok=True)
        gw.emulator.plug()
        gw.daemon = Daemon(town_config(gw, self.sensors, brokers, self.args.health_every)).start()
        gw.launched = time.monotonic()

    def wait_gateway(self, gw: Gateway, since: float, timeout: float = 180) -> None:
        """Until the daemon started at ``since`` (wall time) has configured its module: a restarted
        one's database still shows the state its predecessor left."""
        daemon = gw.daemon
        assert daemon is not None

        def receiving() -> bool:
            daemon.check_alive()
            return any(s["state"] == "receiving" and s["changed_at"] >= since
                       for s in daemon.status().get("sources", []))
        wait_until(receiving, timeout, f"{gw.gateway_id} receiving (log: {daemon.log_tail()})", poll=0.2)
        gw.up = True

    def kill_gateway(self, gw: Gateway) -> None:
        """SIGKILL; the frames it read but had not committed are the loss window before commit."""
        assert gw.daemon is not None and gw.emulator is not None
        with gw.lock:
            gw.up = False
            gw.daemon.kill()
            gw.emulator.take_unread()  # lines the dead host never read: the module's buffer overflows
            committed = committed_readings(gw)
            self.uncommitted_at_kill |= gw.heard - committed
            gw.heard &= committed
        self.note(f"gateway {gw.gateway_id} killed -9 ({len(gw.heard)} readings committed)")

    # -- the air ------------------------------------------------------------------------------------

    def send(self, sensor: Sensor) -> None:
        n = sensor.counter
        sensor.counter += 1
        data = DRIVERS[sensor.driver].encode(frame_values(sensor, self.rng), n).hex().upper()
        reading_id = f"{sensor.device_id}:{n >> 16}:{n & 0xFFFF}"
        now = time.time()
        heard = False
        for g in sensor.hears:
            gw = self.gateways[g]
            with gw.lock:
                if not gw.up or gw.emulator is None:
                    continue
                rssi = -70 - int(30 * math.dist((sensor.x, sensor.y), (gw.x, gw.y)))
                if gw.emulator.receive(sensor.address, data, rssi, 7.5):
                    gw.heard.add(reading_id)
                    heard = True
        self.frames_sent += 1
        if heard:
            self.sent_at[reading_id] = now
        else:
            self.unheard += 1

    def schedule(self) -> list[tuple[float, int]]:
        """(seconds from the start, sensor index) of every frame in the run."""
        a = self.args
        if a.burst:
            return [(t, i) for t in range(0, int(a.duration), int(a.interval)) for i in range(len(self.sensors))]
        out = []
        for i in range(len(self.sensors)):
            t = self.rng.uniform(0, a.interval)
            while t < a.duration:
                out.append((t, i))
                t += a.interval * self.rng.uniform(0.95, 1.05)  # a sensor's clock drifts a little
        return sorted(out)

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        brokers = self.start_broker()
        self.note(f"broker up: {a.broker} {brokers}")
        self.start_platform(brokers)
        since = time.time()
        for gw in self.gateways:
            self.start_gateway(gw, brokers)
        for gw in self.gateways:
            self.wait_gateway(gw, since)
        self.note(f"{len(self.gateways)} gateways receiving")
        faults = sorted([(t, what) for t, what in ((a.kill_node_at, "kill-node"), (a.kill_gateway_at, "kill-gateway"),
                                                   (a.add_gateway_at, "add-gateway")) if t is not None])
        helpers: list[threading.Thread] = []
        start = time.monotonic()
        for t, i in self.schedule():
            while faults and faults[0][0] <= t:
                helpers.append(self.fault(faults.pop(0)[1], brokers))
            delay = start + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send(self.sensors[i])
        for _, what in faults:
            helpers.append(self.fault(what, brokers))
        for h in helpers:
            h.join()
        expected = set().union(*(gw.heard for gw in self.gateways))
        self.note(f"{self.frames_sent} frames sent, {len(expected)} heard")
        try:
            wait_until(lambda: expected <= set(self.tally.readings), a.settle, "every heard frame at the platform",
                       poll=0.5)
        except AssertionError as exc:
            self.note(str(exc))
        return self.figures(expected)

    def fault(self, what: str, brokers: list[str]) -> threading.Thread:
        a = self.args
        if what == "kill-node":
            assert self.cluster is not None, "--kill-node-at needs the RabbitMQ cluster"
            cluster = self.cluster
            victim = self.busiest_node()
            cluster.kill(victim)
            self.note(f"broker node {cluster.names[victim]} killed -9 (the one most gateways were on)")

            def back() -> None:
                time.sleep(a.node_down)
                cluster.start_node(victim)
                self.note(f"broker node {cluster.names[victim]} restarted")
            thread = threading.Thread(target=back)
        elif what == "kill-gateway":
            gw = self.gateways[len(self.gateways) // 2]
            self.kill_gateway(gw)

            def restart() -> None:
                time.sleep(5)
                assert gw.daemon is not None
                since = time.time()
                gw.daemon.start()
                gw.launched = time.monotonic()
                self.wait_gateway(gw, since)
                self.note(f"gateway {gw.gateway_id} restarted and receiving")
            thread = threading.Thread(target=restart)
        else:
            cx = statistics.fmean(g.x for g in self.gateways)
            cy = statistics.fmean(g.y for g in self.gateways)
            new = Gateway(len(self.gateways), f"gw-{len(self.gateways) + 1:02d}", cx + 0.5, cy + 0.5,
                          self.workdir / f"gw-{len(self.gateways) + 1:02d}")
            covered = [s for s in self.sensors if math.dist((s.x, s.y), (new.x, new.y)) < 0.7]
            self.gateways.append(new)
            since = time.time()
            self.start_gateway(new, brokers)
            self.note(f"gateway {new.gateway_id} added, in range of {len(covered)} sensors already covered")

            def join() -> None:
                self.wait_gateway(new, since)
                for s in covered:
                    s.hears.append(new.index)
                self.note(f"gateway {new.gateway_id} receiving")
            thread = threading.Thread(target=join)
        thread.start()
        return thread

    def busiest_node(self) -> int:
        """The broker node most gateways are connected to now: the one whose death tests the most."""
        assert self.cluster is not None
        on = [u["detail"] for gw in self.gateways if gw.up and gw.daemon is not None
              for u in gw.daemon.status().get("uplinks", []) if u["state"] == "up"]
        return max(range(self.cluster.size),
                   key=lambda n: sum(f"127.0.0.1:{self.cluster.mqtt_ports[n]} " in d for d in on))  # type: ignore[union-attr]

    def figures(self, expected: set[str]) -> dict[str, Any]:
        at_platform = dict(self.tally.readings)
        latencies = sorted(at_platform[i] - self.sent_at[i] for i in expected & set(at_platform))
        per_gateway = {}
        for gw in self.gateways:
            assert gw.daemon is not None and gw.daemon.proc is not None
            cpu, rss, peak = cpu_and_rss(gw.daemon.proc.pid)
            health = self.tally.health.get(gw.gateway_id)
            per_gateway[gw.gateway_id] = {
                "heard": len(gw.heard), "accepted": len(committed_readings(gw)),
                "received_at_platform": self.tally.by_gateway[gw.gateway_id],
                "uplink_failovers": sum(e.get("event") == "mqtt uplink down" for e in gw.daemon.log_events()),
                "cpu_s": round(cpu, 2),  # its current process, start-up (reading the town's config) included
                "cpu_percent": round(100 * cpu / max(1e-9, time.monotonic() - gw.launched), 2),
                "rss_mb": round(rss / 1e6, 1), "peak_rss_mb": round(peak / 1e6, 1),
                "health_at_platform": None if health is None else {
                    "reports": self.tally.health_reports[gw.gateway_id], "uptime_s": health.get("uptime_s"),
                    "uplinks": health.get("uplinks"), "pending": health.get("pending")},
            }

        def pct(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None
        return {
            "gateways": len(self.gateways), "sensors": len(self.sensors), "broker": self.args.broker,
            "frames_sent": self.frames_sent, "frames_heard": len(expected), "frames_unheard": self.unheard,
            "unique_readings_at_platform": len(at_platform),
            "missing_at_platform": len(expected - set(at_platform)),
            "extra_at_platform": len(set(at_platform) - expected),
            "duplicates_removed": self.tally.duplicates,
            "not_committed_by_killed_gateway": len(self.uncommitted_at_kill),
            "of_those_heard_by_no_other_gateway": len(self.uncommitted_at_kill - expected),
            "latency_p50_s": pct(0.5), "latency_p99_s": pct(0.99),
            "gateways_with_health_at_platform": len(self.tally.health),
            "missing_sample": {i: self.where(i) for i in sorted(expected - set(at_platform))[:10]},
            "platform_queues": self.cluster.queues() if self.cluster is not None else None,
            "per_gateway": per_gateway, "events": self.events,
            "exactly_once": expected == set(at_platform),
        }

    def where(self, reading_id: str) -> dict[str, str]:
        """For a reading missing at the platform: each gateway that heard it, and its outbox row's state."""
        out = {}
        for gw in self.gateways:
            if reading_id in gw.heard and gw.daemon is not None:
                with sqlite3.connect(f"file:{gw.daemon.db}?mode=ro", uri=True) as db:
                    row = db.execute("SELECT * FROM outbox WHERE item_id = ?", (reading_id,)).fetchone()
                out[gw.gateway_id] = repr(row)[:300]
        return out

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        for gw in self.gateways:
            if gw.daemon is not None:
                try:
                    gw.daemon.stop()
                except AssertionError as exc:
                    print(exc, file=sys.stderr)
            if gw.emulator is not None:
                gw.emulator.unplug()
        if self.cluster is not None:
            self.cluster.stop()
        if self.mosquitto is not None:
            self.mosquitto.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gateways", type=int, default=30)
    p.add_argument("--sensors", type=int, default=3000)
    p.add_argument("--interval", type=float, default=300.0, help="seconds between a sensor's frames")
    p.add_argument("--duration", type=float, default=300.0, help="seconds the sensors send")
    p.add_argument("--burst", action="store_true", help="every sensor sends at once, every --interval")
    p.add_argument("--broker", choices=("rabbitmq", "mosquitto"), default="rabbitmq")
    p.add_argument("--kill-node-at", type=float, help="seconds into the run: SIGKILL one broker node")
    p.add_argument("--node-down", type=float, default=20.0, help="seconds the killed node stays down")
    p.add_argument("--kill-gateway-at", type=float, help="seconds into the run: SIGKILL one gateway (back 5 s later)")
    p.add_argument("--add-gateway-at", type=float, help="seconds into the run: a new gateway joins the town")
    p.add_argument("--health-every", type=float, default=30.0, help="each gateway's health report period, s")
    p.add_argument("--settle", type=float, default=180.0, help="seconds to wait for the platform after the run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="keep the gateways' files here (default: a temporary dir)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def run_town(args: argparse.Namespace) -> dict[str, Any]:
    """Run the town described by ``args`` (see :func:`parser`) and return its figures."""
    with tempfile.TemporaryDirectory(prefix="edgegw-fleet-") as tmp:
        town = Town(args, args.workdir or Path(tmp))
        try:
            return town.run()
        finally:
            town.stop()


def main() -> None:
    args = parser().parse_args()
    figures = run_town(args)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    per = figures.pop("per_gateway")
    for event in figures.pop("events"):
        print(event)
    for k, v in figures.items():
        print(f"{k:40} {v}")
    print(f"{'gateway':8} {'heard':>6} {'accepted':>8} {'to platform':>11} {'cpu s':>6} {'cpu %':>6} {'rss MB':>7} "
          f"{'peak MB':>7} health")
    for gid, g in per.items():
        print(f"{gid:8} {g['heard']:6} {g['accepted']:8} {g['received_at_platform']:11} {g['cpu_s']:6} {g['cpu_percent']:6} "
              f"{g['rss_mb']:7} {g['peak_rss_mb']:7} {g['health_at_platform']}")


if __name__ == "__main__":
    main()
