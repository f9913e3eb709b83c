"""Tests of the emulated RYLR module (its AT answers, its pty) and of the virtual field behind it.

The host side of the pty is opened for real (os.open on ``link``, or pyserial); nothing waits with
a fixed sleep, every wait polls a condition against a deadline.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import random
import select
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgegw.config import RylrSource
from edgegw.drivers import load_drivers
from edgegw.errors import ConfigError
from edgegw.model import Frame, Reject
from edgegw.radio import SourceState
from edgegw.radio.emulator import Air, ModuleSettings, RylrEmulator
from edgegw.radio.field import Curve, FieldSpec, VirtualField, load_field, value_at
from edgegw.radio.rylr import RylrRadio, parse_rcv
from tests.gateway import committed_into, wait_until

DRIVERS = load_drivers()


class Host:
    """The host's end of the emulator's pty, opened through ``link`` as a gateway would."""

    def __init__(self, link: Path):
        self.fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.buf = b""
        self.closed = False

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode("latin-1"))

    def _fill(self, timeout: float) -> bool:
        """Read what is there; False on hang-up (the module was unplugged)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return True
            if exc.errno == errno.EIO:
                return False
            raise
        self.buf += chunk
        return bool(chunk)

    def readline(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {timeout} s (have {self.buf!r})")
            if not self._fill(min(left, 0.1)):
                raise EOFError("the pty hung up")
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("latin-1")

    def lines(self, n: int, timeout: float = 5.0) -> list[str]:
        return [self.readline(timeout) for _ in range(n)]

    def hung_up(self) -> bool:
        try:
            return not self._fill(0.05)
        except OSError:
            return True

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            self.closed = True


@pytest.fixture
def host(emulator):
    h = Host(emulator.link)
    yield h
    h.close()


def tune(module: RylrEmulator) -> None:
    """Configure the module as the gateway would, to what the field transmits on."""
    a = module.air
    for cmd in (f"AT+BAND={a.band}", f"AT+PARAMETER={a.parameter}", f"AT+NETWORKID={a.network_id}"):
        assert module.answer(cmd) == "+OK"
    assert module.configured


# -- AT answers ---------------------------------------------------------------------------------------


def test_answer_basics(unplugged):
    assert unplugged.answer("AT") == "+OK"
    assert unplugged.answer("") == ""
    assert unplugged.answer("HELLO") == "+ERR=2"
    assert unplugged.answer("at") == "+ERR=2"
    assert unplugged.answer(" AT") == "+ERR=2"
    assert unplugged.answer("AT+FOO=1") == "+ERR=4"
    assert unplugged.answer("AT+FOO?") == "+ERR=4"
    assert unplugged.answer("AT+") == "+ERR=4"
    assert unplugged.answer("ATZ") == "+ERR=4"
    assert unplugged.answer("AT+ADDRESS").startswith("+ERR=")  # no "=": refused, whatever the code
    assert unplugged.answer("AT+VER?").startswith("+VER=RYLR998")
    assert unplugged.commands == ["AT", "", "HELLO", "at", " AT", "AT+FOO=1", "AT+FOO?", "AT+", "ATZ",
                                 "AT+ADDRESS", "AT+VER?"]
    assert unplugged.settings == ModuleSettings()


def test_queries_return_the_defaults_then_the_set_values(unplugged):
    assert [unplugged.answer(f"AT+{q}?") for q in ("ADDRESS", "NETWORKID", "BAND", "PARAMETER", "MODE", "CPIN")] == [
        "+ADDRESS=0", "+NETWORKID=18", "+BAND=915000000", "+PARAMETER=9,7,1,12", "+MODE=0", "+CPIN="]
    for cmd in ("AT+ADDRESS=120", "AT+NETWORKID=6", "AT+BAND=868500000", "AT+PARAMETER=12,9,4,24",
                "AT+MODE=1", "AT+CPIN=1A2b3C4d"):
        assert unplugged.answer(cmd) == "+OK", cmd
    assert [unplugged.answer(f"AT+{q}?") for q in ("ADDRESS", "NETWORKID", "BAND", "PARAMETER", "MODE", "CPIN")] == [
        "+ADDRESS=120", "+NETWORKID=6", "+BAND=868500000", "+PARAMETER=12,9,4,24", "+MODE=1", "+CPIN=1A2b3C4d"]
    assert unplugged.settings == ModuleSettings(120, 6, 868_500_000, "12,9,4,24", "1A2b3C4d", "1")


@pytest.mark.parametrize(
    "cmd",
    ["AT+ADDRESS=0", "AT+ADDRESS=65535", "AT+NETWORKID=3", "AT+NETWORKID=15", "AT+NETWORKID=18",
     "AT+BAND=862000000", "AT+BAND=1020000000", "AT+PARAMETER=7,7,1,4", "AT+PARAMETER=12,9,4,24",
     "AT+CPIN=00000000", "AT+MODE=0"],
)
def test_setters_accept_values_in_range(unplugged, cmd):
    assert unplugged.answer(cmd) == "+OK"


@pytest.mark.parametrize(
    ("cmd", "err"),
    [
        ("AT+ADDRESS=65536", 4), ("AT+ADDRESS=-1", 4), ("AT+ADDRESS=abc", 4), ("AT+ADDRESS=", 4),
        ("AT+NETWORKID=0", 4), ("AT+NETWORKID=2", 4), ("AT+NETWORKID=16", 4), ("AT+NETWORKID=17", 4),
        ("AT+NETWORKID=19", 4),
        ("AT+BAND=861999999", 4), ("AT+BAND=1020000001", 4), ("AT+BAND=9e8", 4),
        ("AT+PARAMETER=6,7,1,12", 18), ("AT+PARAMETER=13,7,1,12", 18), ("AT+PARAMETER=9,6,1,12", 18),
        ("AT+PARAMETER=9,10,1,12", 18), ("AT+PARAMETER=9,7,0,12", 18), ("AT+PARAMETER=9,7,5,12", 18),
        ("AT+PARAMETER=9,7,1,3", 18), ("AT+PARAMETER=9,7,1,25", 18), ("AT+PARAMETER=9,7,1", 18),
        ("AT+PARAMETER=9,7,1,12,0", 18), ("AT+PARAMETER=a,b,c,d", 18), ("AT+PARAMETER=", 18),
        ("AT+CPIN=1234567", 4), ("AT+CPIN=123456789", 4), ("AT+CPIN=GGGGGGGG", 4),
        ("AT+MODE=2", 4),
    ],
)
def test_setters_refuse_values_out_of_range_and_keep_the_old_value(unplugged, cmd, err):
    before = dataclasses.replace(unplugged.settings)
    assert unplugged.answer(cmd) == f"+ERR={err}"
    assert unplugged.settings == before


def test_reset_and_factory_restore_the_defaults(unplugged):
    unplugged.answer("AT+ADDRESS=7")
    assert unplugged.answer("AT+RESET") == "+RESET\r\n+READY"
    assert unplugged.settings == ModuleSettings()
    unplugged.answer("AT+BAND=868000000")
    assert unplugged.answer("AT+FACTORY") == "+FACTORY"
    assert unplugged.settings == ModuleSettings()


def test_configured_needs_band_parameter_network_and_mode(unplugged):
    assert unplugged.air == Air()
    assert not unplugged.configured  # a fresh module sits on 915 MHz
    tune(unplugged)
    assert unplugged.answer("AT+ADDRESS=77") == "+OK"
    assert unplugged.configured  # the address does not matter for hearing
    for cmd, undo in (("AT+NETWORKID=5", "AT+NETWORKID=18"), ("AT+PARAMETER=10,7,1,12", "AT+PARAMETER=9,7,1,12"),
                      ("AT+BAND=920800000", "AT+BAND=920600000"), ("AT+MODE=1", "AT+MODE=0")):
        unplugged.answer(cmd)
        assert not unplugged.configured, cmd
        unplugged.answer(undo)
        assert unplugged.configured
    unplugged.air = Air(band=868_100_000, parameter="7,9,1,8", network_id=6)
    assert not unplugged.configured
    tune(unplugged)


def test_receive_and_write_line_while_unplugged(unplugged):
    assert not unplugged.plugged
    assert unplugged.receive(1, "AB") is False  # not configured: not even tried
    assert unplugged.dropped == 0
    tune(unplugged)
    assert unplugged.receive(1, "AB") is False  # configured, but no host port
    assert unplugged.write_line("xyz") is False
    assert (unplugged.written, unplugged.dropped) == (0, 2)


# -- the pty ------------------------------------------------------------------------------------------


def test_plug_creates_link_to_a_pty_and_says_ready(emulator, host):
    assert emulator.plugged
    assert emulator.link.is_symlink()
    assert os.readlink(emulator.link).startswith("/dev/pts/")
    assert not emulator.link.with_name(emulator.link.name + ".new").exists()
    assert host.readline() == "+READY"


def test_answers_commands_over_the_pty(emulator, host):
    assert host.readline() == "+READY"
    host.write("AT\r\nAT+ADDRESS=5\r\nAT+NETWORKID=16\r\nAT+BAND?\r\nNOPE\n")  # bare \n works too
    assert host.lines(5) == ["+OK", "+OK", "+ERR=4", "+BAND=915000000", "+ERR=2"]
    assert emulator.settings.address == 5
    host.write("AT+NETWO")  # a command split across reads
    assert not host.hung_up()
    host.write("RKID=5\r\n")
    assert host.readline() == "+OK"
    assert emulator.commands[-1] == "AT+NETWORKID=5"


def test_receive_writes_rcv_lines_only_when_configured(emulator, host):
    assert host.readline() == "+READY"
    assert emulator.receive(21, "ABCD", -60, 9.5) is False
    tune(emulator)
    assert emulator.receive(21, "ABCD", -60, 9.5) is True
    assert emulator.receive(65535, "", -120, -7) is True
    assert emulator.write_line("garbage!") is True
    assert host.lines(3) == ["+RCV=21,4,ABCD,-60,9.5", "+RCV=65535,0,,-120,-7", "garbage!"]
    assert emulator.written == 4  # +READY and the three


def test_unplug_hangs_up_removes_link_and_replug_is_a_fresh_module(emulator, host):
    assert host.readline() == "+READY"
    tune(emulator)
    emulator.answer("AT+ADDRESS=9")
    emulator.unplug()
    assert not emulator.plugged
    assert not emulator.link.exists() and not emulator.link.is_symlink()
    assert wait_until(host.hung_up, what="the host to see the hang-up")
    assert emulator.receive(21, "AB") is False
    emulator.unplug()  # unplugging twice is harmless

    emulator.plug()
    assert emulator.link.is_symlink()
    assert emulator.settings == ModuleSettings()  # power-on defaults
    assert not emulator.configured
    h2 = Host(emulator.link)
    try:
        assert h2.readline() == "+READY"
        h2.write("AT+ADDRESS?\r\n")
        assert h2.readline() == "+ADDRESS=0"
    finally:
        h2.close()


def test_write_gives_up_when_nobody_reads(emulator):
    """A dead host must not hang the field: the line is dropped once the tty buffer is full."""
    tune(emulator)
    line = "X" * 500
    started = time.monotonic()
    results = []
    while time.monotonic() - started < 10 and (not results or results[-1]):
        results.append(emulator.write_line(line))
    assert results[-1] is False, "the pty never filled up"
    assert emulator.dropped == 1
    assert time.monotonic() - started < 5


# -- the virtual field --------------------------------------------------------------------------------

AIR = {"band": 923_200_000, "parameter": "10,7,1,8", "network_id": 6}


def field_spec(**extra: Any) -> FieldSpec:
    return FieldSpec.model_validate({
        "air": AIR,
        "devices": [
            {"address": 17, "driver": "trap", "interval": "20s", "rssi": -92, "snr": 4.5,
             "values": {"state": "armed", "tamper": False, "battery": 3.31},
             "events": [{"at": "45s", "set": {"state": "sprung"}}, {"at": "60s", "set": {"tamper": True}}]},
            {"address": 21, "driver": "water_level", "interval": "5s",
             "values": {"level": {"start": 850, "per_hour": 1200},
                        "water_temperature": {"start": 14.0, "amplitude": 2.0, "period": "1h"},
                        "battery": 3.6}},
        ],
        **extra,
    })


def close_to(decoded: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Decoded values equal the sent ones up to the driver's resolution on air."""
    assert decoded.keys() == sent.keys()
    for k, v in sent.items():
        if isinstance(v, float) and not isinstance(decoded[k], str):
            if abs(decoded[k] - v) > 0.5 + 1e-9:
                return False
            if k == "water_temperature" and abs(decoded[k] - v) > 0.005 + 1e-9:
                return False
            if k == "battery" and abs(decoded[k] - v) > 0.0005 + 1e-9:
                return False
        elif decoded[k] != v:
            return False
    return True


def check_frames_match_sent(lines: list[str], field: VirtualField) -> None:
    assert len(lines) == len(field.sent)
    for line, sent in zip(lines, field.sent):
        frame = parse_rcv(line, "lora0", "hex", 0.0, 0.0)
        assert isinstance(frame, Frame), line
        assert frame.address == sent.address
        assert frame.payload == bytes.fromhex(sent.data)
        decoded = DRIVERS[sent.driver].decode(frame.payload)
        assert decoded.counter == sent.counter
        assert close_to(decoded.values, sent.values), (decoded.values, sent.values)


def test_field_applies_its_air_and_refuses_unknown_drivers(unplugged):
    VirtualField(field_spec(), DRIVERS, unplugged)
    assert unplugged.air == Air(**AIR)
    spec = FieldSpec.model_validate({"devices": [{"address": 1, "driver": "nope", "interval": 5, "values": {}}]})
    with pytest.raises(ConfigError, match=r"unknown driver\(s\) \['nope'\]"):
        VirtualField(spec, DRIVERS, unplugged)


def test_transmit_puts_decodable_frames_on_the_air(emulator, host):
    field = VirtualField(field_spec(), DRIVERS, emulator, seed=1)
    trap, water = field.devices
    assert host.readline() == "+READY"
    field.transmit(water, 0.0)  # the module is not tuned to the field yet: nothing heard, nothing sent
    assert field.sent == []
    tune(emulator)
    for t in (5.0, 10.0, 15.0):
        field.transmit(water, t)
    field.transmit(trap, 20.0)
    lines = host.lines(4)
    check_frames_match_sent(lines, field)
    assert [s.counter for s in field.sent] == [1, 2, 3, 0]  # the unheard frame still used counter 0
    assert [s.address for s in field.sent] == [21, 21, 21, 17]
    assert field.sent[3].values == {"state": "armed", "tamper": False, "battery": 3.31}
    for line, dev in zip(lines, [water] * 3 + [trap]):
        rssi, snr = (float(x) for x in line.rsplit(",", 2)[1:])
        assert abs(rssi - dev.spec.rssi) <= 3 and abs(snr - dev.spec.snr) <= 1.0 + 1e-9
    assert field.faults_sent == {}


def test_events_change_values_at_their_time(emulator, host):
    field = VirtualField(field_spec(), DRIVERS, emulator, seed=2)
    trap = field.devices[0]
    tune(emulator)
    assert host.readline() == "+READY"
    for t in (44.9, 45.0, 59.0, 60.0, 3600.0):
        field.transmit(trap, t)
    check_frames_match_sent(host.lines(5), field)
    assert [(s.values["state"], s.values["tamper"]) for s in field.sent] == [
        ("armed", False), ("sprung", False), ("sprung", False), ("sprung", True), ("sprung", True)]


def test_curves_drift_and_swing():
    rng = random.Random(0)
    assert value_at(Curve(start=850, per_hour=1200), 1800, rng) == pytest.approx(1450)
    assert value_at(Curve(start=14, amplitude=2, period=3600), 900, rng) == pytest.approx(16)
    assert value_at(Curve(start=14, amplitude=2, period=3600), 2700, rng) == pytest.approx(12)
    assert value_at(3.6, 1e6, rng) == 3.6 and value_at("armed", 5, rng) == "armed"
    noisy = [value_at(Curve(start=10, noise=1), 0, random.Random(7)) for _ in range(2)]
    assert noisy[0] == noisy[1] != 10  # noise is seeded
    values = [value_at(Curve(start=10, noise=1), 0, rng) for _ in range(2000)]
    assert abs(sum(values) / len(values) - 10) < 0.15


def test_curves_are_clamped_into_the_driver_range(emulator, host):
    spec = FieldSpec.model_validate({
        "air": AIR,
        "devices": [{"address": 21, "driver": "water_level", "interval": "5s", "values": {
            "level": {"start": 9000, "per_hour": -12000},   # from 9000 mm down to "-3000" mm within the hour
            "water_temperature": {"start": 20, "amplitude": 45, "period": "1h"},  # swings past -10..50 °C
            "battery": {"start": 9.0, "noise": 0.5},          # an impossible battery
        }}],
    })
    field = VirtualField(spec, DRIVERS, emulator, seed=3)
    water = field.devices[0]
    tune(emulator)
    assert host.readline() == "+READY"
    for t in (0.0, 900.0, 2700.0, 3600.0):
        field.transmit(water, t)
    check_frames_match_sent(host.lines(4), field)
    level = [s.values["level"] for s in field.sent]
    temp = [s.values["water_temperature"] for s in field.sent]
    assert level == pytest.approx([9000, 6000, 0, 0])
    assert temp == pytest.approx([20, 50, -10, 20])
    assert all(s.values["battery"] == 4.5 for s in field.sent)
    lo_hi = DRIVERS["water_level"].values
    for s in field.sent:
        for k, v in s.values.items():
            assert lo_hi[k].minimum <= v <= lo_hi[k].maximum


@pytest.mark.parametrize("kind", ["garbage", "truncated", "bad_hex", "wrong_length"])
def test_faults_produce_corrupt_lines(emulator, host, kind):
    field = VirtualField(field_spec(faults={kind: 1.0}), DRIVERS, emulator, seed=4)
    tune(emulator)
    assert host.readline() == "+READY"
    n = 20
    for i in range(n):
        field.transmit(field.devices[i % 2], 5.0 * i)
    lines = host.lines(n)
    assert field.sent == []
    assert field.faults_sent == {kind: n}
    radio = RylrRadio(RylrSource(type="rylr", name="lora0", simulate=Path("f.toml")), str(emulator.link))
    for line in lines:
        event = radio._route(line)  # what the gateway makes of the line
        assert isinstance(event, Reject), line
        reason = event.reason
        if kind == "garbage":
            assert 1 <= len(line) <= 40 and line.isprintable()
            assert reason in {"garbage", "wrong_length", "bad_hex"}
        elif kind == "truncated":
            assert line.startswith("+RCV=")
            assert reason in {"garbage", "wrong_length"}
        else:
            assert reason == kind
            assert event.address in (17, 21)


def test_duplicate_fault_sends_the_same_frame_twice(emulator, host):
    field = VirtualField(field_spec(faults={"duplicate": 1.0}), DRIVERS, emulator, seed=5)
    tune(emulator)
    assert host.readline() == "+READY"
    field.transmit(field.devices[1], 5.0)
    field.transmit(field.devices[0], 20.0)
    lines = host.lines(4)
    assert lines[0] == lines[1] and lines[2] == lines[3] and lines[0] != lines[2]
    check_frames_match_sent(lines[::2], field)
    assert field.faults_sent == {"duplicate": 2}


def test_fault_mix_is_reproducible_with_a_seed(unplugged):
    faults = {"garbage": 0.1, "truncated": 0.1, "bad_hex": 0.1, "wrong_length": 0.1, "duplicate": 0.1}
    counts = []
    for _ in range(2):
        em = RylrEmulator(unplugged.link)  # never emulator: lines are dropped, faults still counted
        field = VirtualField(field_spec(faults=faults), DRIVERS, em, seed=11)
        for i in range(300):
            field.transmit(field.devices[i % 2], 5.0 * i)
        counts.append(field.faults_sent)
    assert counts[0] == counts[1]
    assert set(counts[0]) == set(faults)
    assert 300 * 0.4 < sum(counts[0].values()) < 300 * 0.8


def test_load_field_reads_toml_and_reports_problems(tmp_path):
    good = tmp_path / "field.toml"
    good.write_text(
        '[air]\nband = 923200000\nparameter = "10,7,1,8"\nnetwork_id = 6\n\n'
        '[[devices]]\naddress = 21\ndriver = "water_level"\ninterval = "5s"\n'
        'values = { level = { start = 850, per_hour = 1200, noise = 4 }, water_temperature = 14.5, battery = 3.6 }\n'
        'events = [ { at = "40s", set = { battery = 3.3 } } ]\n\n[faults]\nduplicate = 0.1\n'
    )
    spec = load_field(good)
    assert spec.air == Air(**AIR)
    assert spec.devices[0].interval == 5.0
    assert spec.devices[0].events[0].at == 40.0
    assert spec.devices[0].values["level"] == Curve(start=850, per_hour=1200, noise=4)
    assert spec.faults.duplicate == 0.1

    with pytest.raises(ConfigError, match="file not found"):
        load_field(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[devices]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_field(bad)
    bad.write_text('[[devices]]\naddress = 70000\ndriver = "trap"\ninterval = "5s"\nvalues = {}\nspeed = 3\n'
                   '[faults]\ngarbage = 2\n')
    with pytest.raises(ConfigError) as exc:
        load_field(bad)
    text = "\n".join(exc.value.problems)
    assert exc.value.problems == [
        "line 2: devices[0].address: Input should be less than or equal to 65535",
        "line 6: devices[0].speed: unknown key",
        "line 8: faults.garbage: Input should be less than or equal to 1",
    ], text


def test_bundled_demo_field_loads():
    spec = load_field(Path(__file__).parent.parent / "configs" / "demo-field.toml")
    assert len(spec.devices) >= 2


# -- the whole chain: field -> unplugged -> pty -> pyserial -> RylrRadio --------------------------------


def test_field_run_reaches_the_radio(emulator):
    field = VirtualField(field_spec(), DRIVERS, emulator, seed=6)
    config = RylrSource(type="rylr", name="lora0", simulate=Path("field.toml"), band=AIR["band"],
                        spreading_factor=10, preamble=8, network_id=AIR["network_id"])
    events: list = []
    radio_stop, field_stop = threading.Event(), threading.Event()
    radio = threading.Thread(target=RylrRadio(config, str(emulator.link)).run, args=(committed_into(events), radio_stop),
                             daemon=True)
    air = threading.Thread(target=field.run, args=(field_stop,), kwargs={"speed": 400.0}, daemon=True)
    radio.start()
    try:
        wait_until(lambda: any(isinstance(e, SourceState) and e.state == "receiving" for e in events))
        air.start()
        try:
            wait_until(lambda: len(field.sent) >= 8, what="eight frames on the air")
        finally:
            field_stop.set()
            air.join(timeout=5)
        assert not air.is_alive()
        frames = wait_until(lambda: len([e for e in events if isinstance(e, Frame)]) == len(field.sent)
                            and [e for e in events if isinstance(e, Frame)], what="every sent frame")
    finally:
        radio_stop.set()
        emulator.write_line("")  # wake the radio's read so it sees the stop at once
        radio.join(timeout=5)
    assert not radio.is_alive()
    assert not [e for e in events if isinstance(e, Reject)]
    assert [(f.address, f.payload.hex().upper()) for f in frames] == [(s.address, s.data) for s in field.sent]
    for f, s in zip(frames, field.sent):
        decoded = DRIVERS[s.driver].decode(f.payload)
        assert decoded.counter == s.counter
        assert close_to(decoded.values, s.values)
    assert {s.address for s in field.sent} == {17, 21}
    assert not any(math.isnan(f.rssi) for f in frames)


def test_an_event_makes_the_device_transmit_at_once(emulator):
    """A trap sensor reports the moment it is sprung, not at its next heartbeat."""
    spec = FieldSpec.model_validate({"air": AIR, "devices": [
        {"address": 17, "driver": "trap", "interval": "1h", "values": {"state": "armed", "tamper": False,
         "battery": 3.3}, "events": [{"at": "100s", "set": {"state": "sprung"}}]}]})
    field = VirtualField(spec, DRIVERS, emulator, seed=1)
    tune(emulator)  # after the field set the emulator's air
    stop = threading.Event()
    air = threading.Thread(target=field.run, args=(stop,), kwargs={"speed": 1000.0}, daemon=True)
    air.start()
    try:
        wait_until(lambda: len(field.sent) >= 2, what="the heartbeat and the event's frame")
    finally:
        stop.set()
        air.join(timeout=5)
    # the first heartbeat (within 3 s), then the event at 100 s: not the next heartbeat at one hour
    assert [s.values["state"] for s in field.sent[:2]] == ["armed", "sprung"]
    assert [s.counter for s in field.sent[:2]] == [0, 1]
