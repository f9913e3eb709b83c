"""A million hostile frames through the real daemon (issue 18, point 6).

The real daemon reads an emulated RYLR module on a real pty, stores in real SQLite and sends to a
real Mosquitto. The test process plays the whole air at once, in one seeded random order: radio
noise and damaged module lines, forgers at the keyed sensors' addresses (random MICs, their own
keys, "sprung" and flood-stage payloads), replays of recorded frames, plain frames at keyed
addresses, a flood from all 65,527 addresses nobody configured, and, rarely among them, the
sensors themselves: sealed frames with growing counters (some raising alarms) and plain frames of
one device without a key.

What must hold at the end: the daemon is alive and no stage ever crashed or restarted; every
genuine frame is at the broker, and nothing else from a keyed device is (every such reading is
verified and one of ours); the alarms at the broker are exactly those the genuine frames raise;
every hostile line is counted under the reason the code gives it; the daemon's memory stayed flat
and the rejects kept stayed at ``[store] rejects_kept``.

Run it, with its figures::

    .venv/bin/pytest -m slow -s tests/test_hostile_slow.py

``EDGEGW_HOSTILE_FRAMES`` (default 1,000,000) and ``EDGEGW_HOSTILE_SEED`` change the run; a short
run (20,000 frames) is for developing the test, the memory bound is checked on long runs only.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgegw.drivers import load_drivers
from edgegw.envelope import HEADER, MIC_BYTES, VERSION, mic, seal
from edgegw.keys import load_keys, new_key
from tests.broker import Subscriber
from tests.gateway import Daemon, wait_until

FRAMES = int(os.environ.get("EDGEGW_HOSTILE_FRAMES", "1000000"))
SEED = int(os.environ.get("EDGEGW_HOSTILE_SEED", "18"))
DRIVERS = load_drivers()

KEYED = [  # (id, address, driver): sensors that seal their frames
    ("trap-01", 17, "trap"), ("trap-02", 18, "trap"), ("trap-03", 19, "trap"), ("trap-04", 20, "trap"),
    ("river-01", 21, "water_level"), ("river-02", 22, "water_level"), ("river-03", 23, "water_level"),
    ("river-04", 24, "water_level"),
]
PLAIN = ("river-09", 29, "water_level")  # no key: its plain frames are readings, marked unverified
CONFIGURED = {a for _, a, _ in KEYED} | {PLAIN[1]}
STAGES = (("caution", 3000), ("danger", 5000))  # mm; the water_level rule below, hysteresis 0
INTERVAL = 60  # s, each device's reporting interval: a per-device rate limit of N per interval allows bursts
# Seconds between two frames of one sensor at least (the test waits if the daemon is faster): well
# under one a second each, so a per-device rate limit (issue 18) never refuses a genuine frame.
SENSOR_GAP = 2.0
REJECTS_KEPT = 500
# The flood's senders: every address a module can report that no device is configured at, so
# anything the daemon keeps per address (a log throttle's key, say) shows in its memory.
UNKNOWN_ADDRESSES = 65536 - len(CONFIGURED)
# Memory flat: the daemon's RSS at the end may exceed its RSS after the first 10 % of the frames by
# less than this. What may still grow after the first 100,000 frames is bounded by design: SQLite's
# page caches (512 KiB a connection), the per-device registry and recent frames (256 a device), the
# log throttle (one entry per reason), and the allocator's arenas settling: under a MiB (measured:
# +0.6 MiB from 100,000 to 1,000,000 frames). Anything kept per frame, per address or per reject is
# not: 8 MiB over 900,000 frames is 9 bytes a frame, less than any Python object; over the flood's
# 65,527 addresses, 128 bytes an address. (Before 96db14e the reject log's throttle was keyed by
# address as well: +14.3 MiB in this run.)
RSS_BOUND = 8 * 2**20
RSS_BOUND_FROM = 200_000  # frames: below, 10 % of them is too short a warm-up for the bound to mean much
# The database and its WAL at the end: the outbox holds about 1,300 items, the rejects table its
# last REJECTS_KEPT raw lines, the counts a row per reason; the WAL is truncated to 8 MB. A row kept
# per hostile frame would pass this by 1,000,000 frames (measured: 4.9 MiB).
DB_BOUND = 32 * 2**20
# The mix, as weights per frame. Genuine frames: one in a thousand; of the plain sensor, one in 8000.
MIX = {
    "garbage": 80, "overlong": 5, "truncated": 60, "bad_hex": 50, "wrong_length": 50,
    "forged_mic": 120, "forged_key": 100, "replay_heard": 60, "replay_captured": 40, "plain_at_keyed": 90,
    "cross_address": 30, "unknown_flood": 300,
}
GENUINE_EVERY = 1000
PLAIN_EVERY = 8000
PRINTABLE = [chr(c) for c in range(32, 127) if chr(c) != "+"] + [chr(c) for c in range(0xA0, 0x100)]
HEX = "0123456789ABCDEF"


@dataclass
class Sensor:
    """One real sensor: its key, its frame counter, and the frames of it the gateway heard or an
    attacker recorded without the gateway hearing them (jammed)."""

    id: str
    address: int
    driver: str
    key: bytes | None
    counter: int = 0
    heard: list[str] = field(default_factory=list)  # the hex of each frame sent to the gateway
    captured: list[str] = field(default_factory=list)  # frames only the attacker has, older than the newest heard
    alarmed: bool = False  # the trap is sprung, the river above a stage, as the sensor last measured
    last_sent: float = float("-inf")

    def values(self, rng: random.Random) -> dict:
        """The next reading: mostly quiet; now and then a catch (re-armed at the next frame), or a
        flood stage (back to normal at the next frame)."""
        rising, self.alarmed = not self.alarmed and rng.random() < 0.1, False
        if self.driver == "trap":
            self.alarmed = rising
            return {"state": "sprung" if rising else "armed", "tamper": False,
                    "battery": round(3.5 + rng.random() / 10, 3)}
        level = rng.choice([3500, 5600]) if rising else rng.randint(800, 2000)
        self.alarmed = rising
        return {"level": level, "water_temperature": round(rng.uniform(5, 25), 2), "battery": 3.6}


def stage(driver: str, values: dict) -> int:
    """What the alarm rules make of a reading: the trap sprung (1) or not (0); the river's stage."""
    if driver == "trap":
        return int(values["state"] == "sprung")
    return max((i for i, (_, above) in enumerate(STAGES) if values["level"] >= above), default=-1)


def alarm_of(driver: str, reading_id: str, before: int, after: int) -> str | None:
    """The alarm id a reading raises, from the stage the gateway knew before it and the reading's own:
    the trap rule's and the water level rule's (hysteresis 0), written out."""
    if after == before:
        return None
    if driver == "trap":
        return f"{reading_id}:trap:{'trap_sprung' if after else 'trap_rearmed'}"
    return f"{reading_id}:water_level:{'water_level_alarm' if after > before else 'water_level_clear'}"


def rcv(address: int, data: str, rssi: int, snr: float) -> str:
    return f"+RCV={address},{len(data)},{data},{rssi},{snr:g}"


def write_site(tmp: Path, link: Path, mqtt_port: int) -> Path:
    devices = "".join(f'\n[[devices]]\nid = "{d}"\naddress = {a}\ndriver = "{drv}"\ninterval = "{INTERVAL}s"\n'
                      for d, a, drv in [*KEYED, PLAIN])
    stages = ", ".join(f'{{ name = "{name}", above = {above} }}' for name, above in STAGES)
    path = tmp / "gateway.toml"
    path.write_text(
        f'keys_file = "keys.toml"\ngateway_id = "gw-hostile"\ndata_dir = "data"\n'
        f'\n[store]\nrejects_kept = {REJECTS_KEPT}\n'
        f'\n[[sources]]\ntype = "rylr"\nname = "lora0"\nport = "{link}"\n{devices}'
        f'\n[[rules]]\ntype = "trap"\nreminder = 0\n'
        f'\n[[rules]]\ntype = "water_level"\nstages = [{stages}]\n'
        # Silence is not what this test is about: a device is silent after 1000 intervals only.
        f'\n[[rules]]\ntype = "device_health"\nsilent_after = 1000\n'
        f'\n[[uplinks]]\ntype = "mqtt"\nname = "broker"\nhost = "127.0.0.1"\nport = {mqtt_port}\n'
        f'topic = "hostile/{{gateway}}/batches"\nbatch = {{ max_items = 200 }}\n'
        f'\n[log]\nlevel = "info"\nformat = "json"\n'
    )
    return path


def rss(pid: int) -> int:
    """The process's resident set, in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Air:
    """Everything on the air, in one seeded order, and what the gateway must make of each line."""

    def __init__(self, seed: int, sensors: list[Sensor], plain: Sensor):
        self.rng = random.Random(seed)
        self.sensors, self.plain = sensors, plain
        self.kinds, self.weights = list(MIX), list(MIX.values())
        self.unknown = self.rng.sample([a for a in range(65536) if a not in CONFIGURED], UNKNOWN_ADDRESSES)
        self.other_keys = [bytes(self.rng.randrange(256) for _ in range(16)) for _ in range(8)]
        self.sent: Counter[str] = Counter()  # frames by kind
        self.reasons: Counter[str] = Counter()  # the reject reason each hostile line must get
        self.duplicates = 0  # replays of frames the gateway has: harmless copies, no new reading
        self.readings: dict[str, dict] = {}  # reading id -> values, of every genuine frame
        self.verified: dict[str, bool] = {}  # reading id -> verified
        self.alarms: set[str] = set()  # alarm ids the genuine frames raise
        self.stages: dict[str, int] = {}  # device id -> what the rules know of it (see stage())

    def frames(self, total: int):
        """(kind, line, sensor or None) for ``total`` frames. The keyed sensors take turns, one in
        every GENUINE_EVERY frames; the plain one sends one in PLAIN_EVERY."""
        rng = self.rng
        turns = rng.sample(self.sensors, len(self.sensors))
        for n in range(total):
            if n % GENUINE_EVERY == GENUINE_EVERY // 2:
                yield self._genuine(turns[n // GENUINE_EVERY % len(turns)])
            elif n % PLAIN_EVERY == PLAIN_EVERY // 4:
                yield self._plain()
            else:
                kind = rng.choices(self.kinds, self.weights)[0]
                yield kind, getattr(self, kind)(), None

    # -- the sensors ----------------------------------------------------------------------------

    def _genuine(self, s: Sensor) -> tuple[str, str, Sensor]:
        rng = self.rng
        if s.heard and rng.random() < 0.1:  # the attacker jams and records this one; the gateway never hears it
            s.counter += 1
            s.captured.append(seal(s.key, s.address, s.counter, DRIVERS[s.driver].encode(
                s.values(rng), s.counter)).hex().upper())
        s.counter += 1
        reading_id = f"{s.id}:0:{s.counter}"  # the envelope's counter names the reading
        data = seal(s.key, s.address, s.counter, self._reading(s, reading_id, True)).hex().upper()
        s.heard.append(data)
        return "genuine", rcv(s.address, data, rng.randint(-110, -60), round(rng.uniform(-5, 10), 1)), s

    def _plain(self) -> tuple[str, str, Sensor]:
        s = self.plain
        reading_id = f"{s.id}:0:{s.counter}"  # the payload's 16-bit counter, from 0
        data = self._reading(s, reading_id, False).hex().upper()
        s.counter += 1
        return "plain_unkeyed", rcv(s.address, data, self.rng.randint(-110, -60), 7.5), s

    def _reading(self, s: Sensor, reading_id: str, verified: bool) -> bytes:
        """The sensor's next payload, noting the reading and any alarm it must make at the broker."""
        values = s.values(self.rng)
        self.readings[reading_id], self.verified[reading_id] = values, verified
        before, self.stages[s.id] = self.stages.get(s.id, stage(s.driver, {"state": "armed", "level": 0})), stage(
            s.driver, values)
        if (alarm := alarm_of(s.driver, reading_id, before, self.stages[s.id])) is not None:
            self.alarms.add(alarm)
        return DRIVERS[s.driver].encode(values, s.counter)

    # -- damaged lines --------------------------------------------------------------------------

    def _junk(self, low: int, high: int) -> str:
        return "".join(self.rng.choices(PRINTABLE, k=self.rng.randint(low, high)))

    def garbage(self) -> str:
        """Noise on the module's serial line: never '+', so never a module reply nor +RCV."""
        self.reasons["garbage"] += 1
        if self.rng.random() < 0.2:  # a +RCV= head with noise after it, but no comma: no address and length
            return "+RCV=" + self._junk(0, 40).replace(",", ";")
        return self._junk(1, 40)

    def overlong(self) -> str:
        """A line longer than any +RCV (600 characters): the reader hands it on as two lines."""
        self.reasons["garbage"] += 2
        return self._junk(700, 1150)

    def _frame_line(self) -> tuple[int, str, int, float]:
        rng = self.rng
        address = rng.choice([rng.choice(self.unknown), *(s.address for s in self.sensors)])
        data = "".join(rng.choices(HEX, k=2 * rng.randint(1, 60)))
        return address, data, rng.randint(-120, -40), round(rng.uniform(-20, 12), 1)

    def truncated(self) -> str:
        """A line cut short (the host missed its end): before the tail it is never a frame."""
        address, data, rssi, snr = self._frame_line()
        line = rcv(address, data, rssi, snr)
        tail = line.rindex(",", 0, line.rindex(","))  # where ",rssi,snr" begins
        cut = self.rng.randint(5, tail)
        second_comma = line.index(",", line.index(",") + 1)
        self.reasons["garbage" if cut <= second_comma else "wrong_length"] += 1
        return line[:cut]

    def bad_hex(self) -> str:
        address, data, rssi, snr = self._frame_line()
        self.reasons["bad_hex"] += 1
        if self.rng.random() < 0.5:
            data = data[:-1]  # an odd number of digits, the length field telling the truth
        else:
            i = self.rng.randrange(len(data))
            data = data[:i] + self.rng.choice("GZgz ;.") + data[i + 1:]
        return rcv(address, data, rssi, snr)

    def wrong_length(self) -> str:
        address, data, rssi, snr = self._frame_line()
        self.reasons["wrong_length"] += 1
        declared = self.rng.choice([len(data) + self.rng.randint(1, 9), self.rng.randint(0, len(data) - 1),
                                    self.rng.randint(1000, 999_999)])
        return f"+RCV={address},{declared},{data},{rssi},{snr:g}"

    # -- attackers at the keyed sensors' addresses ------------------------------------------------

    def _claim(self, s: Sensor) -> bytes:
        """What an attacker wants the gateway to believe: a catch, a flood, a dead battery, noise."""
        rng = self.rng
        if rng.random() < 0.1:
            return bytes(rng.randrange(256) for _ in range(rng.randint(0, 30)))
        if s.driver == "trap":
            values = {"state": rng.choice(["sprung", "sprung", "armed"]), "tamper": rng.random() < 0.3,
                      "battery": rng.choice([3.6, 0.5, 4.4])}
        else:
            values = {"level": rng.choice([5600, 9999, 3100, 1200, 0]), "water_temperature": 12.0,
                      "battery": rng.choice([3.6, 0.5])}
        return DRIVERS[s.driver].encode(values, rng.randrange(65536))

    def _forged_counter(self, s: Sensor) -> int:
        rng = self.rng
        return rng.choice([s.counter + 1, s.counter + rng.randint(2, 1000), 2**32 - 1, rng.randrange(2**32)])

    def forged_mic(self) -> str:
        """A well-formed envelope at a keyed address with a MIC made up: never the right one."""
        s, rng = self.rng.choice(self.sensors), self.rng
        body = HEADER.pack(VERSION, s.address, self._forged_counter(s)) + self._claim(s)
        tag, right = rng.randbytes(MIC_BYTES), mic(s.key, body)
        if tag == right:
            tag = bytes([tag[0] ^ 1]) + tag[1:]
        self.reasons["bad_mic"] += 1
        return rcv(s.address, (body + tag).hex().upper(), rng.randint(-110, -60), 5.0)

    def forged_key(self) -> str:
        """Sealed properly, with the attacker's key (or a bit flipped in a genuine frame)."""
        s, rng = self.rng.choice(self.sensors), self.rng
        if s.heard and rng.random() < 0.3:
            frame = bytearray(bytes.fromhex(rng.choice(s.heard)))
            bit = rng.randrange(8 * 5, 8 * len(frame))  # past the version and device id
            frame[bit // 8] ^= 1 << bit % 8
            frame = bytes(frame)
        else:
            frame = seal(rng.choice(self.other_keys), s.address, self._forged_counter(s), self._claim(s))
        if mic(s.key, frame[:-MIC_BYTES]) == frame[-MIC_BYTES:]:  # 1 in 2**32: then it is no forgery
            frame = frame[:-1] + bytes([frame[-1] ^ 1])
        self.reasons["bad_mic"] += 1
        return rcv(s.address, frame.hex().upper(), rng.randint(-110, -60), 5.0)

    def replay_heard(self) -> str:
        """A recorded genuine frame sent again: within the hour a copy the gateway already has."""
        s = self.rng.choice(self.sensors)
        if not s.heard:
            return self.forged_mic()
        self.duplicates += 1
        # The latest, or any earlier one (all of them are among a sensor's last 256 frames in this run).
        data = s.heard[-1] if self.rng.random() < 0.3 else self.rng.choice(s.heard)
        return rcv(s.address, data, -70, 8.0)

    def replay_captured(self) -> str:
        """A frame the attacker recorded and jammed, sent after newer ones were heard: a replay."""
        s = self.rng.choice(self.sensors)
        if not s.captured:
            return self.forged_key()
        self.reasons["replayed"] += 1
        return rcv(s.address, self.rng.choice(s.captured), -70, 8.0)

    def plain_at_keyed(self) -> str:
        """A plain frame at a keyed address (the device must seal), or an envelope cut too short."""
        s, rng = self.rng.choice(self.sensors), self.rng
        payload = self._claim(s)
        if s.heard and rng.random() < 0.1:
            payload = bytes.fromhex(rng.choice(s.heard))[:rng.randint(0, HEADER.size + MIC_BYTES - 1)]
        self.reasons["bad_mic" if self._looks_sealed(payload, s.address) else "unauthenticated"] += 1
        return rcv(s.address, payload.hex().upper(), rng.randint(-110, -60), 5.0)

    def cross_address(self) -> str:
        """One keyed sensor's genuine frame sent from another keyed sensor's address."""
        rng = self.rng
        s, other = rng.sample(self.sensors, 2)
        if not s.heard:
            return self.plain_at_keyed()
        self.reasons["unauthenticated"] += 1  # the envelope names another device: not this device's envelope
        return rcv(other.address, rng.choice(s.heard), -70, 8.0)

    @staticmethod
    def _looks_sealed(payload: bytes, address: int) -> bool:
        return len(payload) >= HEADER.size + MIC_BYTES and payload[0] == VERSION and payload[1:5] == address.to_bytes(
            4, "big")

    def unknown_flood(self) -> str:
        """Frames from addresses no device is configured at: a neighbour's field, or a flood."""
        rng = self.rng
        self.reasons["unknown_device"] += 1
        address = rng.choice(self.unknown) if rng.random() < 0.995 else rng.randint(65536, 999_999)
        return rcv(address, "".join(rng.choices(HEX, k=2 * rng.randint(0, 40))), rng.randint(-120, -40), 1.5)


@pytest.mark.slow
def test_a_million_hostile_frames_make_no_reading_no_alarm_no_crash_and_no_growth(tmp_path, emulator, mosquitto):
    site = write_site(tmp_path, emulator.link, mosquitto.port)
    for device_id, _, _ in KEYED:
        new_key(tmp_path / "keys.toml", device_id)
    keys = load_keys(tmp_path / "keys.toml")
    sensors = [Sensor(d, a, drv, keys[d]) for d, a, drv in KEYED]
    air = Air(SEED, sensors, Sensor(*PLAIN, key=None))
    daemon = Daemon(site)
    sub = Subscriber("127.0.0.1", mosquitto.port, "hostile/gw-hostile/batches")
    try:
        daemon.start().wait_receiving()
        daemon.wait_uplinks_up()
        pid = daemon.proc.pid
        rss_samples: list[tuple[int, int]] = []
        dropped: Counter[str] = Counter()
        written_before = emulator.written  # +READY and the answers to the daemon's AT commands
        paced = 0.0  # s the test waited to keep each sensor's frames SENSOR_GAP apart
        start = time.monotonic()
        for n, (kind, line, sensor) in enumerate(air.frames(FRAMES), 1):
            if sensor is not None:
                wait = sensor.last_sent + SENSOR_GAP - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                    paced += wait
                sensor.last_sent = time.monotonic()
            air.sent[kind] += 1
            if not emulator.write_line(line):
                dropped[kind] += 1
            if n % (FRAMES // 10) == 0:
                assert daemon.proc.poll() is None, f"daemon died after {n} frames:\n{daemon.log_tail()}"
                rss_samples.append((n, rss(pid)))
        sending = time.monotonic() - start

        lines = emulator.written - written_before
        expected_lines = FRAMES + air.sent["overlong"]  # an overlong line arrives as two

        def processed() -> int:
            st = daemon.status()
            return (sum(st["rejects"]["by_reason"].values())
                    + sum(d["readings"] + d["duplicates"] for d in st["devices"]))

        wait_until(lambda: processed() >= expected_lines - sum(dropped.values()), 120,
                   f"the daemon to take every line (log: {daemon.log_tail()})")
        elapsed = time.monotonic() - start

        def at_broker() -> list[dict]:
            return [i for b in sub.json_messages() for i in b["items"]]

        wait_until(lambda: {i["id"] for i in at_broker()} >= set(air.readings) | air.alarms, 60,
                   "every genuine reading and its alarms at the broker")
        rss_samples.append((FRAMES, rss(pid)))
        st = daemon.status()
        cli = subprocess.run([sys.executable, "-m", "edgegw", "status", "-c", str(site), "--json"],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        cli_status = json.loads(cli.stdout)
        alive = daemon.proc.poll() is None
        log_text = daemon.log.read_text()
        db_bytes = sum(p.stat().st_size for p in daemon.db.parent.glob("edgegw.db*"))
        import sqlite3
        with sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True) as conn:
            rejects_rows = conn.execute("SELECT count(*) FROM rejects").fetchone()[0]
    finally:
        sub.close()
        code = daemon.stop()

    items = at_broker()
    readings = [i for i in items if i["type"] == "reading"]
    alarms = [i for i in items if i["type"] == "alarm"]
    keyed_ids = {d for d, _, _ in KEYED}
    accepted_forgeries = [r for r in readings if r["device"] in keyed_ids
                          and (r["verified"] is not True or r["id"] not in air.readings)]
    good_delivered = {r["id"] for r in readings} & set(air.readings)
    by_reason = st["rejects"]["by_reason"]
    stages = cli_status["daemon"]["heartbeat"]["stages"]
    crashes = log_text.count("stage crashed")
    rate = FRAMES / elapsed

    print(f"\nhostile frames: {FRAMES:,} (seed {SEED}) in {elapsed:.1f} s ({rate:,.0f} frames/s;"
          f" sending took {sending:.1f} s, of which {paced:.1f} s waiting to keep each sensor's frames"
          f" {SENSOR_GAP:g} s apart; {FRAMES / max(sending - paced, 1e-9):,.0f} frames/s while not waiting)")
    for kind, count in sorted(air.sent.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:16} {count:>9,}" + (f"  dropped by the module: {dropped[kind]:,}" if dropped[kind] else ""))
    print(f"lines the module wrote: {lines:,} of {FRAMES:,} (the host reads {expected_lines:,}: an overlong line is"
          f" two); dropped: {sum(dropped.values()):,}")
    print(f"rejects by reason: {dict(sorted(by_reason.items()))}")
    print(f"expected:          {dict(sorted(air.reasons.items()))}")
    print(f"duplicates (harmless replays): {sum(d['duplicates'] for d in st['devices']):,} (expected {air.duplicates:,})")
    print(f"good frames: {len(air.readings):,} sent, {len(good_delivered):,} delivered;"
          f" alarms expected {len(air.alarms)}, at the broker {len({a['id'] for a in alarms})}")
    print(f"accepted forgeries: {len(accepted_forgeries)}; crashes: {crashes}; daemon alive: {alive}; exit code {code};"
          f" stages: { {k: (v['state'], v['restarts']) for k, v in stages.items()} }")
    print("RSS (frames sent: MiB): " + ", ".join(f"{n:,}: {b / 2**20:.1f}" for n, b in rss_samples))
    print(f"RSS after 10 %: {rss_samples[0][1] / 2**20:.1f} MiB, at the end: {rss_samples[-1][1] / 2**20:.1f} MiB,"
          f" grew {(rss_samples[-1][1] - rss_samples[0][1]) / 2**20:+.1f} MiB")
    print(f"database and WAL: {db_bytes / 2**20:.1f} MiB; rejects kept: {rejects_rows} (cap {REJECTS_KEPT})")

    # Alive, and nothing crashed or restarted meanwhile; it stopped cleanly at the end.
    assert alive and code == 0, daemon.log_tail()
    assert crashes == 0 and "Traceback" not in log_text, daemon.log_tail()
    assert all(v["state"] == "alive" and v["restarts"] == 0 for v in stages.values()), stages
    # The module passed every line on: the daemon kept reading (or the drops are told above).
    assert not dropped, dropped
    assert lines == FRAMES
    # Nothing of the attackers' was accepted: every reading of a keyed device is verified and genuine.
    assert accepted_forgeries == []
    assert {r["id"] for r in readings} == set(air.readings)  # every genuine frame delivered, nothing else
    assert all(r["verified"] is air.verified[r["id"]] for r in readings)
    assert {r["id"]: r["values"] for r in readings} == air.readings
    # The alarms are exactly the genuine frames', each verified as its frame was.
    assert {a["id"] for a in alarms} == air.alarms
    assert all(a["verified"] is air.verified[a["reading"]] for a in alarms)
    # Every hostile line counted once, under its reason; reasons this test does not know of (a rate
    # limit, say) may take some from the reasons it knows, never add lines.
    other = sum(n for reason, n in by_reason.items() if reason not in air.reasons)
    assert sum(by_reason.values()) == sum(air.reasons.values()), (by_reason, air.reasons)
    for reason, n in air.reasons.items():
        assert n - other <= by_reason.get(reason, 0) <= n, (reason, by_reason, air.reasons)
    assert sum(d["duplicates"] for d in st["devices"]) == air.duplicates
    device_readings = {d["id"]: d["readings"] for d in st["devices"]}
    for device_id in [*keyed_ids, PLAIN[0]]:
        assert device_readings.get(device_id, 0) == sum(1 for r in air.readings if r.startswith(device_id + ":"))
    # Bounded: the rejects kept, and memory.
    assert rejects_rows <= REJECTS_KEPT
    assert db_bytes < DB_BOUND
    if FRAMES >= RSS_BOUND_FROM:
        assert rss_samples[-1][1] - rss_samples[0][1] < RSS_BOUND, rss_samples
