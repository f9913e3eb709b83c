"""Authenticated frames: the envelope, the gateway's checks on real SQLite, the keys file and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.config import Config, load_config
from edgegw.drivers import load_drivers
from edgegw.envelope import COUNTER_MAX, OVERHEAD, EnvelopeError, open_envelope, seal
from edgegw.errors import ConfigError
from edgegw.ingest import Allowance, Ingest
from edgegw.keys import load_keys, new_key
from edgegw.model import Frame, Reading, Reject
from edgegw.store import Store

DRIVERS = load_drivers()
TRAP = DRIVERS["trap"]
KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
OTHER_KEY = bytes(range(16))
KEYS = st.binary(min_size=16, max_size=16)
PAYLOADS = st.binary(max_size=64)
COUNTERS = st.integers(0, COUNTER_MAX)
ADDRESSES = st.integers(0, 65535)


# -- the envelope -----------------------------------------------------------------------------------

@given(KEYS, ADDRESSES, COUNTERS, PAYLOADS)
def test_a_sealed_frame_opens_to_its_counter_and_payload(key, address, counter, payload):
    opened = open_envelope(key, address, seal(key, address, counter, payload))
    assert (opened.counter, opened.payload) == (counter, payload)


@given(KEYS, ADDRESSES, COUNTERS, PAYLOADS, st.data())
def test_any_bit_flipped_anywhere_is_rejected(key, address, counter, payload, data):
    frame = bytearray(seal(key, address, counter, payload))
    bit = data.draw(st.integers(0, 8 * len(frame) - 1))
    frame[bit // 8] ^= 1 << bit % 8
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(key, address, bytes(frame))
    assert exc.value.reason in ("bad_mic", "unauthenticated")


@given(KEYS, ADDRESSES, COUNTERS, PAYLOADS, st.data())
def test_a_frame_cut_short_or_from_another_key_or_address_is_rejected(key, address, counter, payload, data):
    frame = seal(key, address, counter, payload)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(EnvelopeError):
        open_envelope(key, address, frame[:cut])
    other = data.draw(KEYS.filter(lambda k: k != key))
    with pytest.raises(EnvelopeError, match="MIC"):
        open_envelope(other, address, frame)
    elsewhere = data.draw(ADDRESSES.filter(lambda a: a != address))
    with pytest.raises(EnvelopeError) as exc:
        open_envelope(key, elsewhere, frame)
    assert exc.value.reason == "bad_mic"


def test_the_envelope_costs_13_bytes_and_a_32_bit_counter():
    assert len(seal(KEY, 17, COUNTER_MAX, b"abc")) == 3 + OVERHEAD == 16
    with pytest.raises(ValueError, match="32 bits"):
        seal(KEY, 17, COUNTER_MAX + 1, b"")


# -- the gateway's checks ---------------------------------------------------------------------------

def config(trap: dict | None = None, keys_file: Path | None = None) -> Config:
    return Config.model_validate({
        "gateway_id": "gw", "keys_file": keys_file,
        "sources": [{"type": "rylr", "name": "lora0", "port": "/dev/null"}],
        "devices": [{"id": "trap-01", "address": 17, "driver": "trap", **(trap or {})},
                    {"id": "river-01", "address": 21, "driver": "water_level"}],
    }, context={"drivers": DRIVERS})


@pytest.fixture
def keys_file(tmp_path) -> Path:
    path = tmp_path / "keys.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f'[keys]\n"trap-01" = "{KEY.hex()}"\n'.encode())
    os.close(fd)
    return path


def trap(state: str = "sprung") -> bytes:
    return TRAP.encode({"state": state, "tamper": False, "battery": 3.5}, 0)


def sealed(counter: int, state: str = "sprung", key: bytes = KEY, address: int = 17) -> Frame:
    return Frame("lora0", address, seal(key, address, counter, trap(state)), -80.0, 7.0)


def plain(state: str = "sprung", wall: float | None = None) -> Frame:
    f = Frame("lora0", 17, trap(state), -80.0, 7.0)
    if wall is not None:
        f.wall = wall
    return f


class Gateway:
    """The writer's part that authenticates: an ingest on a real database, one commit per call."""

    def __init__(self, db: Path, cfg: Config):
        self.db, self.cfg = db, cfg
        self.ingest = Ingest(cfg, DRIVERS, Store(db), uplink_mask=1)

    def hear(self, *frames: Frame) -> list:
        store = self.ingest.store
        store.begin()
        out = [self.ingest.handle(f) for f in frames]
        for r in out:
            if isinstance(r, Reject):
                store.add_reject(r.source, r.reason, r.detail, r.address, r.device_id, r.raw, r.wall)
        store.commit()
        return out

    def restart(self) -> None:
        self.ingest.store.close()
        self.ingest = Ingest(self.cfg, DRIVERS, Store(self.db), uplink_mask=1)

    def rejects(self) -> dict[str, int]:
        return dict(self.ingest.store.conn.execute("SELECT reason, count FROM reject_counts"))


def reasons(results: list) -> list[str]:
    return [r.reason if isinstance(r, Reject) else type(r).__name__ for r in results]


def test_a_sealed_frame_is_a_verified_reading_with_the_envelope_counter(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config(keys_file=keys_file))
    (reading,) = gw.hear(sealed(7))
    assert isinstance(reading, Reading) and reading.verified and reading.reading_id == "trap-01:0:7"
    assert reading.values["state"] == "sprung"
    (river,) = gw.hear(Frame("lora0", 21, DRIVERS["water_level"].encode(
        {"level": 1000, "water_temperature": 10.0, "battery": 3.6}, 1), -80.0, 7.0))
    assert isinstance(river, Reading) and not river.verified  # no key: accepted, marked unverified


def test_forged_plain_replayed_and_old_frames_are_rejected_by_reason_and_never_decoded(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config(keys_file=keys_file))
    assert reasons(gw.hear(sealed(5), sealed(6))) == ["Reading", "Reading"]
    forged = bytearray(sealed(9).payload)
    forged[-1] ^= 0x01
    results = gw.hear(
        Frame("lora0", 17, bytes(forged)),  # a changed bit
        sealed(10, key=OTHER_KEY),  # an attacker's own key
        plain(),  # a spoofed plain frame
        sealed(4),  # older than the last accepted
        Frame("lora0", 17, sealed(11).payload[:8]),  # cut short: not even an envelope any more
    )
    assert reasons(results) == ["bad_mic", "bad_mic", "unauthenticated", "replayed", "unauthenticated"]
    assert gw.rejects() == {"bad_mic": 2, "unauthenticated": 2, "replayed": 1}
    assert gw.ingest.store.devices["trap-01"].auth_counter == 6
    state = gw.ingest.store.devices["trap-01"]
    assert (state.readings, state.rejects) == (2, 5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, COUNTER_MAX), min_size=1, max_size=30), st.integers(0, 29))
def test_a_frame_is_accepted_only_if_its_counter_beats_every_one_accepted_before(tmp_path_factory, counters,
                                                                                 restart_at):
    """Any order of counters, with a restart anywhere and the duplicate window long past: exactly the
    record-breaking ones are readings, every other is a replay; a counter at 2**32-1 is the last one
    a key can send (the device must be given a new key or reset on site)."""
    tmp = tmp_path_factory.mktemp("replay")
    keys = tmp / "keys.toml"
    new_key(keys, "trap-01")
    key = load_keys(keys)["trap-01"]
    gw = Gateway(tmp / "gw.db", config({"rate_limit": 0}, keys))
    best, expected, got = -1, [], []
    for i, counter in enumerate(counters):
        if i == restart_at:
            gw.restart()
        gw.ingest.recent.clear()  # as if each came more than an hour after the last
        expected.append("Reading" if counter > best else "replayed")
        best = max(best, counter)
        got += reasons(gw.hear(sealed(counter, key=key)))
    assert got == expected


def test_a_copy_of_the_last_frame_is_a_duplicate_but_an_older_one_is_a_replay(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config(keys_file=keys_file))
    first, second = sealed(1, "armed"), sealed(2)
    assert reasons(gw.hear(first, second, second)) == ["Reading", "Reading", "Duplicate"]
    heard = gw.ingest.store.device("trap-01", "lora0", 17, "trap", 0.0)
    when, rssi = heard.last_seen, heard.last_rssi
    copy = sealed(1, "armed")  # an attacker's recording, replayed later and louder
    copy.wall, copy.rssi = when + 1800, -30.0
    assert reasons(gw.hear(copy)) == ["Duplicate"]  # a second module heard it late: same bytes, within the hour
    # Counted, but it does not make the sensor look heard (a replayed copy could keep a dead one "alive").
    assert (heard.last_seen, heard.last_rssi, heard.duplicates) == (when, rssi, 2)
    gw.ingest.recent.clear()  # as after an hour: the copy is no longer recent
    assert reasons(gw.hear(second)) == ["replayed"]


def test_a_replay_is_rejected_after_a_restart(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config(keys_file=keys_file))
    frame = sealed(100)
    gw.hear(frame)
    gw.restart()
    gw.ingest.recent.clear()  # an hour later
    assert reasons(gw.hear(frame, sealed(99), sealed(101))) == ["replayed", "replayed", "Reading"]


def test_the_counter_is_committed_with_the_reading_or_not_at_all(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config(keys_file=keys_file))
    store = gw.ingest.store
    store.begin()
    gw.ingest.handle(sealed(50))
    store.rollback()  # the group failed (a full disk): neither the reading nor its counter happened
    assert store.devices.get("trap-01") is None or store.devices["trap-01"].auth_counter is None
    assert reasons(gw.hear(sealed(50))) == ["Reading"]


def test_a_rollout_window_accepts_plain_frames_until_it_ends(tmp_path, keys_file):
    until = datetime(2027, 3, 31, 23, 59, 59, tzinfo=UTC)
    gw = Gateway(tmp_path / "gw.db", config({"accept_plain_until": until}, keys_file))
    before, after = plain(wall=until.timestamp() - 60), plain("armed", wall=until.timestamp() + 60)
    results = gw.hear(before, sealed(1, "armed"), after)
    assert reasons(results) == ["Reading", "Reading", "unauthenticated"]
    assert [r.verified for r in results[:2]] == [False, True]


def test_require_auth_false_takes_both_forms_and_still_checks_sealed_ones(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config({"require_auth": False}, keys_file))
    forged = sealed(3, key=OTHER_KEY)
    assert reasons(gw.hear(plain(), sealed(2), forged)) == ["Reading", "Reading", "bad_mic"]


def test_a_driver_never_sees_a_rejected_frame(tmp_path, keys_file):
    class Spy:
        values = TRAP.values
        seen: list[bytes] = []

        def decode(self, payload):
            self.seen.append(payload)
            return TRAP.decode(payload)

        def units(self):
            return TRAP.units()

    spy = Spy()
    gw = Gateway(tmp_path / "gw.db", config(keys_file=keys_file))
    gw.ingest.by_address = {k: (d, spy) for k, (d, _) in gw.ingest.by_address.items()}
    gw.hear(plain(), sealed(1, key=OTHER_KEY), sealed(2))
    assert spy.seen == [trap()]  # only the authenticated one's inner payload


def test_a_device_sends_at_most_rate_limit_frames_per_interval_and_forgeries_use_none_of_it(tmp_path, keys_file):
    gw = Gateway(tmp_path / "gw.db", config({"interval": "10m", "rate_limit": 5}, keys_file))

    def at(frame: Frame, mono: float) -> Frame:
        frame.mono = mono
        return frame

    forged = [at(sealed(1000 + n, key=OTHER_KEY), 0.0) for n in range(50)]
    assert set(reasons(gw.hear(*forged))) == {"bad_mic"}
    burst = gw.hear(*(at(sealed(n), 1.0) for n in range(1, 8)))
    assert reasons(burst) == ["Reading"] * 5 + ["rate_limited"] * 2  # a burst of the whole allowance, no more
    assert reasons(gw.hear(at(sealed(8), 100.0))) == ["rate_limited"]  # refilled at 5 per 600 s: not yet one
    assert reasons(gw.hear(at(sealed(9), 121.0))) == ["Reading"]  # 120 s after the burst: one frame's worth
    assert gw.rejects()["rate_limited"] == 3
    assert gw.ingest.store.devices["trap-01"].readings == 6


@given(st.lists(st.floats(0, 3600), max_size=60), st.integers(1, 10))
def test_over_any_span_a_device_gets_at_most_its_burst_plus_its_rate(times, limit):
    from edgegw.config.radio import Device
    from edgegw.errors import FrameRefused

    allowance = Allowance()
    device = Device(id="d", address=1, driver="trap", interval=600, rate_limit=limit)
    accepted = []
    for t in sorted(times):
        try:
            allowance.take(device, t)
            accepted.append(t)
        except FrameRefused:
            pass
    for i, start in enumerate(accepted):
        for j in range(i, len(accepted)):
            span = accepted[j] - start
            assert j - i + 1 <= limit + span * limit / 600 + 1e-9


# -- keys file and CLI ------------------------------------------------------------------------------

def write_site(tmp_path: Path, trap_extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        'gateway_id = "gw"\nkeys_file = "keys.toml"\n[[sources]]\ntype = "rylr"\nname = "lora0"\nport = "/dev/null"\n'
        f'[[devices]]\nid = "trap-01"\naddress = 17\ndriver = "trap"\n{trap_extra}'
        '[[devices]]\nid = "river-01"\naddress = 21\ndriver = "water_level"\n')
    return path


def edgegw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegw", *args], capture_output=True, text=True, timeout=60)


def test_keys_new_writes_an_owner_only_file_and_prints_what_the_firmware_needs(tmp_path):
    site = write_site(tmp_path)
    site.write_text(site.read_text().replace('keys_file = "keys.toml"', 'keys_file = "secrets/keys.toml"'))
    done = edgegw("keys", "new", "trap-01", "-c", str(site))
    assert done.returncode == 0, done.stderr
    keys = tmp_path / "secrets" / "keys.toml"  # its folder made too, as on a fresh gateway
    assert keys.stat().st_mode & 0o777 == 0o600
    key = load_keys(keys)["trap-01"]
    assert f"key        {key.hex()}" in done.stdout and "device id  17" in done.stdout
    again = edgegw("keys", "new", "trap-01", "-c", str(site))
    assert again.returncode == 1 and "--replace" in again.stderr
    assert edgegw("keys", "new", "trap-01", "-c", str(site), "--replace").returncode == 0
    assert load_keys(keys)["trap-01"] != key
    checked = edgegw("config", "check", str(site))
    assert checked.returncode == 0 and "not authenticated (anyone in radio range can send as them): river-01" \
        in checked.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_keys_new_as_root_keeps_the_service_users_file_theirs(tmp_path):
    # As on an installed gateway: keys.toml belongs to the service user, an installer runs sudo edgegw keys new.
    site = write_site(tmp_path)
    keys = tmp_path / "keys.toml"
    new_key(keys, "trap-01")
    os.chown(keys, 65534, 65534)
    assert edgegw("keys", "new", "river-01", "-c", str(site)).returncode == 0
    st = keys.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)
    assert set(load_keys(keys)) == {"trap-01", "river-01"}


def test_a_keys_file_others_may_read_is_refused_with_the_fix(tmp_path):
    site = write_site(tmp_path, 'require_auth = true\n')
    keys = tmp_path / "keys.toml"
    new_key(keys, "trap-01")
    new_key(keys, "trap-99")
    keys.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    assert exc.value.problems == [
        f"line 2: keys_file: {keys}: group or others may read it (mode -rw-r--r--); only the service user may:"
        f" chmod 600 {keys}"]
    keys.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    assert exc.value.problems == [f"line 2: keys_file: {keys}: keys.trap-99: no device 'trap-99' in this config"]
    done = edgegw("config", "check", str(site))
    assert done.returncode == 2 and "keys.trap-99" in done.stderr


def test_require_auth_without_a_key_and_a_bad_key_are_config_errors(tmp_path):
    site = write_site(tmp_path, 'require_auth = true\naccept_plain_until = 2027-03-31T23:59:59+09:00\n')
    keys = tmp_path / "keys.toml"
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'[keys]\n"river-01" = "abcd"\n')
    os.close(fd)
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    assert exc.value.problems == [
        f"line 2: keys_file: {keys}: keys.river-01: expected 32 hex digits (a 128-bit key)"]
    keys.unlink()
    new_key(keys, "river-01")
    with pytest.raises(ConfigError) as exc:
        load_config(site)
    assert exc.value.problems == [
        "line 11: devices[id=trap-01].require_auth: the device has no key in keys_file; make one with:"
        " edgegw keys new trap-01 -c CONFIG",
        "line 12: devices[id=trap-01].accept_plain_until: only for a device with a key; make one with: edgegw keys new trap-01 -c"
        " CONFIG",
    ]


def test_config_check_and_status_list_keyed_devices_that_still_take_plain_frames(tmp_path):
    site = write_site(tmp_path, 'accept_plain_until = 2099-03-31T23:59:59+09:00\n')
    site.write_text(site.read_text() + '[[devices]]\nid = "trap-02"\naddress = 18\ndriver = "trap"\nrequire_auth = false\n'
                    '[[devices]]\nid = "trap-03"\naddress = 19\ndriver = "trap"\n'
                    '[[devices]]\nid = "trap-04"\naddress = 20\ndriver = "trap"\n'
                    'accept_plain_until = 2020-03-31T23:59:59+09:00\n')
    for device in ("trap-01", "trap-02", "trap-03", "trap-04"):
        new_key(tmp_path / "keys.toml", device)
    # Only trap-03 (required) and trap-04 (its window closed) refuse plain frames.
    said = "trap-01 (accept_plain_until 2099-03-31T23:59:59+09:00), river-01, trap-02 (require_auth = false)"
    checked = edgegw("config", "check", str(site))
    assert checked.returncode == 0, checked.stderr
    assert f"not authenticated (anyone in radio range can send as them): {said};" in checked.stdout
    cfg, _ = load_config(site)
    cfg.data_dir.mkdir()
    Store(cfg.data_dir / "edgegw.db").close()
    status = edgegw("status", "-c", str(site))
    assert status.returncode == 0 and f"not authenticated: {said} (" in status.stdout
    as_json = json.loads(edgegw("status", "--json", "-c", str(site)).stdout)
    assert as_json["not_authenticated"] == {"trap-01": "accept_plain_until 2099-03-31T23:59:59+09:00",
                                            "river-01": "no key", "trap-02": "require_auth = false"}


def test_a_counter_reset_is_an_installer_s_step_and_starts_a_new_epoch(tmp_path):
    site = write_site(tmp_path)
    key = new_key(tmp_path / "keys.toml", "trap-01")
    cfg, _ = load_config(site)
    cfg.data_dir.mkdir()
    gw = Gateway(cfg.data_dir / "edgegw.db", cfg)
    first = gw.hear(sealed(500, key=key))[0]
    assert reasons(gw.hear(sealed(1, key=key))) == ["replayed"]  # the sensor's battery was changed
    gw.ingest.store.close()
    done = edgegw("keys", "reset-counter", "trap-01", "-c", str(site))
    assert done.returncode == 0 and "counter 500 forgotten" in done.stdout
    new = load_keys(tmp_path / "keys.toml")["trap-01"]
    assert new != key and f"key        {new.hex()}" in done.stdout  # what the sensor must be given
    cfg, _ = load_config(site)
    gw = Gateway(cfg.data_dir / "edgegw.db", cfg)
    # A frame recorded before the reset, replayed: under the old key it would start the counter again.
    assert reasons(gw.hear(sealed(500, key=key))) == ["bad_mic"]
    (after,) = gw.hear(sealed(1, key=new))
    assert isinstance(after, Reading) and after.reading_id == "trap-01:1:1" != first.reading_id


# -- the real daemon --------------------------------------------------------------------------------

def test_the_daemon_raises_the_alarm_of_a_sealed_frame_only_and_rejects_its_replay_after_a_restart(
        tmp_path, emulator, mosquitto):
    from tests.broker import Subscriber
    from tests.gateway import Daemon, Sender, wait_until, write_config

    config = write_config(tmp_path, emulator.link, mosquitto.port, extra="", log_level="info")
    config.write_text('keys_file = "keys.toml"\n' + config.read_text())
    new_key(tmp_path / "keys.toml", "trap-01")
    key = load_keys(tmp_path / "keys.toml")["trap-01"]
    daemon = Daemon(config)
    sub = Subscriber("127.0.0.1", mosquitto.port, "test/gw-test/batches")
    sub.wait_subscribed(timeout=20)

    def items(kind: str) -> list[dict]:
        return [i for b in sub.json_messages() for i in b["items"] if i.get("type") == kind]

    def sprung() -> list[dict]:
        return [a for a in items("alarm") if a["alarm"] == "trap_sprung"]

    try:
        daemon.start().wait_receiving()
        attacker = Sender(emulator)  # no key: plain frames, and sealed ones under a key of its own
        attacker.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.3})
        forger = Sender(emulator, keys={"trap-01": OTHER_KEY})
        forger.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.3})
        sensor = Sender(emulator, keys={"trap-01": key})
        sensor.send("trap-01", {"state": "armed", "tamper": False, "battery": 3.3})
        caught = sensor.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.3})
        recorded = sensor.last
        (alarm,) = wait_until(sprung, 20, "the sealed frame's trap_sprung at the broker")
        assert alarm["reading"] == caught and alarm["verified"] is True
        # Alarms overtake readings: wait for both readings too.
        readings = wait_until(lambda: len(r := [i for i in items("reading") if i["device"] == "trap-01"]) == 2 and r,
                              20, "both sealed readings at the broker")
        assert [r["verified"] for r in readings] == [True, True]

        edgegw_reset = edgegw("keys", "reset-counter", "trap-01", "-c", str(config))
        assert edgegw_reset.returncode == 1 and "Stop it first" in edgegw_reset.stderr

        assert daemon.stop() == 0
        daemon.start().wait_receiving()
        # The attacker replays the catch after the restart: within the hour it is a copy of a frame the
        # gateway has (a duplicate, no new reading); later, or once older than the device's recent
        # frames, a replay (test_a_replay_is_rejected_after_a_restart).
        emulator.receive(17, recorded, -80, 7.5)
        sensor.send("trap-01", {"state": "armed", "tamper": False, "battery": 3.3})
        wait_until(lambda: any(a["alarm"] == "trap_rearmed" for a in items("alarm")), 20, "the re-arm")
        assert len(sprung()) == 1
        st = daemon.status()
        assert st["rejects"]["by_reason"] == {"unauthenticated": 1, "bad_mic": 1}
        (trap_row,) = [d for d in st["devices"] if d["id"] == "trap-01"]
        assert (trap_row["readings"], trap_row["duplicates"], trap_row["rejects"]) == (3, 1, 2)
    finally:
        sub.close()
        daemon.stop()
