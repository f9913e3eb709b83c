"""Tests of the RYLR source: the +RCV parser, and RylrRadio on a real pty with the emulator behind it.

No mocks: the radio opens the emulator's ``link`` with real pyserial, exactly as it opens
/dev/ttyUSB0. Nothing waits with a fixed sleep; every wait polls a condition against a deadline.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from edgegw.config import RylrSource
from edgegw.errors import ModuleError
from edgegw.model import Frame, Reject
from edgegw.radio import ReadTurn, SourceState, Stop, rylr, serial_line, wait_readable
from edgegw.radio.emulator import RylrEmulator
from edgegw.radio.rylr import ERRORS, MAX_LINE, LineReader, RylrRadio, parse_rcv
from tests.gateway import COMMITTED, committed_into, wait_until

# A water_level payload (see drivers/water_level.py): level 1234 mm, 23.00 °C, 3.500 V, counter 256.
WATER = "0104D208FC0DAC0100"


def source(**kw: Any) -> RylrSource:
    """A gateway source config; the port is handed to RylrRadio separately (simulate stands in)."""
    return RylrSource(type="rylr", name="lora0", simulate=Path("field.toml"), **kw)


def rcv_line(address: int, data: str, rssi: int, snr: float) -> str:
    """The line an RYLR module writes for a received frame (the emulator's format)."""
    return f"+RCV={address},{len(data)},{data},{rssi},{snr:g}"


# -- parse_rcv ---------------------------------------------------------------------------------------


def test_parse_valid_hex_line():
    line = rcv_line(21, WATER, -80, 7.5)
    frame = parse_rcv(line, "lora0", "hex", 1700000000.0, 123.0)
    assert frame == Frame("lora0", 21, bytes.fromhex(WATER), -80.0, 7.5, 1700000000.0, 123.0)


def test_parse_lowercase_hex_and_integer_snr():
    frame = parse_rcv("+RCV=65535,4,beef,-120,-12", "s", "hex", 0.0, 0.0)
    assert isinstance(frame, Frame)
    assert (frame.address, frame.payload, frame.rssi, frame.snr) == (65535, b"\xbe\xef", -120.0, -12.0)


def test_parse_empty_payload():
    frame = parse_rcv("+RCV=3,0,,-60,9", "s", "hex", 0.0, 0.0)
    assert isinstance(frame, Frame)
    assert frame.payload == b""


@pytest.mark.parametrize(
    "data",
    ["a,b,,c,d,ef", ",", ",,,", "x,-60,9.5", "hello, world", "-61,10"],
)
def test_parse_text_payload_containing_commas(data):
    """The declared length, not the commas, says where the data ends (the tail may even look alike)."""
    frame = parse_rcv(rcv_line(5, data, -42, -3.5), "s", "text", 0.0, 0.0)
    assert isinstance(frame, Frame)
    assert (frame.address, frame.payload, frame.rssi, frame.snr) == (5, data.encode("latin-1"), -42.0, -3.5)


def test_parse_base64_payload():
    frame = parse_rcv(rcv_line(7, "AQIDBA==", -100, 2.25), "s", "base64", 0.0, 0.0)
    assert isinstance(frame, Frame)
    assert (frame.address, frame.payload, frame.rssi, frame.snr) == (7, b"\x01\x02\x03\x04", -100.0, 2.25)


@pytest.mark.parametrize("data", ["AQIDBA=", "AQ!DBA==", "ÄQIDBA=="])
def test_parse_bad_base64(data):
    reject = parse_rcv(rcv_line(7, data, -100, 2), "s", "base64", 0.0, 0.0)
    assert isinstance(reject, Reject)
    assert reject.reason == "bad_base64"
    assert reject.address == 7


@pytest.mark.parametrize(
    "line",
    [
        "+RCV=",
        "+RCV=1",
        "+RCV=1,2",
        "+RCV=,2,AB,-60,9",
        "+RCV=a,2,AB,-60,9",
        "+RCV=-1,2,AB,-60,9",
        "+RCV=1,x,AB,-60,9",
        "+RCV=1,-2,AB,-60,9",
        "+RCV=1 ,2,AB,-60,9",
    ],
)
def test_parse_malformed_is_garbage(line):
    reject = parse_rcv(line, "lora0", "hex", 42.0, 0.0)
    assert isinstance(reject, Reject)
    assert (reject.source, reject.reason, reject.address, reject.raw, reject.wall) == (
        "lora0", "garbage", None, line.encode(), 42.0)


@pytest.mark.parametrize(
    "line",
    [
        "+RCV=1,4,AB,-60,9",        # declared longer than the data
        "+RCV=1,2,ABCD,-60,9",      # declared shorter than the data
        "+RCV=1,2,AB,-60",          # no SNR
        "+RCV=1,2,AB",              # no RSSI, no SNR
        "+RCV=1,2,AB,-60,9,0",      # one field too many
        "+RCV=1,2,AB,-6000,9",      # RSSI is not 1-3 digits
        "+RCV=1,2,AB,-60,9.",       # SNR cut off
        "+RCV=1,99999,AB,-60,9",
    ],
)
def test_parse_wrong_length(line):
    reject = parse_rcv(line, "lora0", "hex", 0.0, 0.0)
    assert isinstance(reject, Reject)
    assert reject.reason == "wrong_length"
    assert reject.address == 1
    assert reject.raw == line.encode()


@pytest.mark.parametrize(
    ("data", "detail"),
    [("ABC", "odd number of hex digits (3)"), ("ZZ01", "not hexadecimal"), ("0x01", "not hexadecimal"),
     ("AB-1", "not hexadecimal")],
)
def test_parse_bad_hex(data, detail):
    reject = parse_rcv(rcv_line(9, data, -60, 9), "lora0", "hex", 0.0, 0.0)
    assert isinstance(reject, Reject)
    assert (reject.reason, reject.detail, reject.address) == ("bad_hex", detail, 9)


_TOKENS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.text(alphabet="0123456789ABCDEFabcdef", max_size=12),
    st.text(alphabet="0123456789-.", max_size=6),
    st.text(st.characters(), max_size=8),
    st.just(""),
)
_RCV_LINES = st.one_of(
    st.text(st.characters(), max_size=60),
    st.lists(_TOKENS, max_size=7).map(",".join),
).map(lambda rest: "+RCV=" + rest)


@settings(max_examples=400, database=None, deadline=None)
@given(line=_RCV_LINES, encoding=st.sampled_from(["hex", "base64", "text"]))
def test_parse_rcv_never_raises(line, encoding):
    result = parse_rcv(line, "lora0", encoding, 1.0, 2.0)
    assert isinstance(result, Frame | Reject)
    assert result.source == "lora0"
    if isinstance(result, Reject):
        assert result.reason in {"garbage", "wrong_length", f"bad_{encoding}"}, result
        assert result.raw == line.encode("latin-1", "replace")


# str.isdigit() is True for superscripts, three of which are in latin-1 (¹²³): a serial line can carry them.
@pytest.mark.parametrize("line", ["+RCV=²,2,AB,-60,9", "+RCV=1,³,AB,-60,9", "+RCV=¹2,2,AB,-60,9"])
def test_parse_rcv_survives_non_decimal_digits(line):
    result = parse_rcv(line, "lora0", "hex", 0.0, 0.0)
    assert isinstance(result, Reject) and result.reason == "garbage"


_RADIO = {
    "address": st.integers(0, 65535),
    "rssi": st.integers(-164, 0),
    "snr": st.integers(-200, 200).map(lambda tenths: tenths / 10),
}


@settings(max_examples=300, database=None, deadline=None)
@given(payload=st.binary(max_size=240), upper=st.booleans(), **_RADIO)
def test_hex_line_round_trips(payload, upper, address, rssi, snr):
    data = payload.hex().upper() if upper else payload.hex()
    frame = parse_rcv(rcv_line(address, data, rssi, snr), "lora0", "hex", 5.0, 6.0)
    assert frame == Frame("lora0", address, payload, float(rssi), snr, 5.0, 6.0)


@settings(max_examples=300, database=None, deadline=None)
@given(payload=st.binary(max_size=180), **_RADIO)
def test_base64_line_round_trips(payload, address, rssi, snr):
    data = base64.b64encode(payload).decode()
    frame = parse_rcv(rcv_line(address, data, rssi, snr), "lora0", "base64", 5.0, 6.0)
    assert frame == Frame("lora0", address, payload, float(rssi), snr, 5.0, 6.0)


@settings(max_examples=300, database=None, deadline=None)
@given(payload=st.binary(max_size=240).filter(lambda b: b"\n" not in b and b"\r" not in b), **_RADIO)
def test_text_line_round_trips(payload, address, rssi, snr):
    data = payload.decode("latin-1")  # how the radio decodes the serial bytes
    frame = parse_rcv(rcv_line(address, data, rssi, snr), "lora0", "text", 5.0, 6.0)
    assert frame == Frame("lora0", address, payload, float(rssi), snr, 5.0, 6.0)


# -- LineReader on a bare pty -------------------------------------------------------------------------


@pytest.fixture
def bare_pty():
    master, slave = os.openpty()
    tty.setraw(slave)
    port = serial.Serial(os.ttyname(slave), 115200, timeout=0.2)
    try:
        yield master, port
    finally:
        port.close()
        os.close(slave)
        os.close(master)


def test_line_reader_splits_lines_and_strips_endings(bare_pty):
    master, port = bare_pty
    reader = LineReader(port)
    assert reader.readline(0.05) is None
    os.write(master, b"+OK\r\n\r\nbare\n+RCV=1,2,")
    assert [reader.readline(2.0) for _ in range(3)] == ["+OK", "", "bare"]
    assert reader.readline(0.05) is None  # the last line is not complete yet...
    os.write(master, b"AB,-60,9\r\n")
    assert reader.readline(2.0) == "+RCV=1,2,AB,-60,9"  # ...and is not lost either


def test_line_reader_caps_a_stream_without_line_endings(bare_pty):
    master, port = bare_pty
    reader = LineReader(port)
    os.write(master, b"x" * (MAX_LINE + 100))
    assert reader.readline(2.0) == "x" * MAX_LINE
    os.write(master, b"\xb5y\r\n")
    assert reader.readline(2.0) == "x" * 100 + "\xb5y"  # latin-1: every byte is a character


def test_line_reader_reads_at_most_the_bytes_asked_and_leaves_the_rest_in_the_kernel(bare_pty):
    # The bound of a read turn, so of what a crash loses: more than ``most`` bytes are never read.
    master, port = bare_pty
    reader = LineReader(port)
    os.write(master, b"+OK\r\n" * 10)
    wait_until(lambda: port.in_waiting == 50, 2.0, "ten lines readable")
    assert reader.available(12) == ["+OK", "+OK"]  # and the head "+O" of the third
    assert port.in_waiting == 38
    assert reader.available() == ["+OK"] * 8


@pytest.mark.parametrize("make_stop", [Stop, threading.Event], ids=["Stop", "Event"])
def test_a_port_is_waited_on_until_it_is_readable_or_the_stop(bare_pty, make_stop):
    master, port = bare_pty
    stop = make_stop()
    assert not wait_readable(port.fileno(), stop, 0.05)  # nothing yet
    os.write(master, b"x")
    assert wait_readable(port.fileno(), stop)
    assert os.read(port.fileno(), 1) == b"x"
    threading.Timer(0.1, stop.set).start()
    assert not wait_readable(port.fileno(), stop)  # no timeout: only the stop ends the wait
    stop.set()  # set twice: nothing breaks, nothing piles up
    assert not wait_readable(port.fileno(), stop)


def reference_lines(stream: bytes) -> list[str]:
    """The lines of a byte stream as the reader must give them: split at \\n, one \\r stripped off
    the end (any number), and a run of more than MAX_LINE bytes without an ending cut every MAX_LINE."""
    out = []
    while True:
        nl = stream.find(b"\n", 0, MAX_LINE + 1)
        if nl >= 0:
            out.append(stream[:nl].rstrip(b"\r").decode("latin-1"))
            stream = stream[nl + 1:]
        elif len(stream) > MAX_LINE:
            out.append(stream[:MAX_LINE].decode("latin-1"))
            stream = stream[MAX_LINE:]
        else:
            return out


_CHUNKS = st.lists(st.one_of(
    st.binary(max_size=40), st.sampled_from([b"\n", b"\r\n", b"\r", b"+RCV=1,2,AB,-60,9\r\n"]),
    st.integers(MAX_LINE - 2, MAX_LINE + 3).map(lambda n: b"x" * n)), max_size=30)


@settings(max_examples=100, database=None, deadline=None)
@given(chunks=_CHUNKS)
def test_line_reader_gives_the_lines_of_the_stream_however_it_arrives(chunks):
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with serial.Serial(os.ttyname(slave), 115200, timeout=0.2) as port:
            reader, got = LineReader(port), []
            for chunk in chunks:
                os.write(master, chunk)
                size = len(chunk)
                wait_until(lambda: port.in_waiting >= size, 2.0, "chunk readable")  # noqa: B023 (called at once)
                got += reader.available()
    finally:
        os.close(slave)
        os.close(master)
    assert got == reference_lines(b"".join(chunks))


# -- RylrRadio against the emulator ---------------------------------------------------------------------


class Running:
    """A RylrRadio in its own thread, emitting into a list."""

    def __init__(self, radio: RylrRadio, emulator: RylrEmulator, stop: threading.Event | None = None):
        self.radio = radio
        self.emulator = emulator
        self.events: list[Frame | Reject | SourceState] = []
        self.stop = stop or threading.Event()
        self.thread = threading.Thread(target=radio.run, args=(committed_into(self.events), self.stop),
                                       name=f"radio:{radio.name}", daemon=True)
        self._sync = 0

    def start(self) -> Running:
        self.thread.start()
        return self

    def halt(self) -> None:
        self.stop.set()
        # A blank line (ignored by the radio) ends its 0.5 s read at once, so teardown takes
        # milliseconds; test_radio_stops_within_a_read_timeout covers stopping without it.
        self.emulator.write_line("")
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the radio thread did not stop"

    def of(self, kind: type, start: int = 0) -> list:
        return [e for e in self.events[start:] if isinstance(e, kind)]

    def frames(self, start: int = 0) -> list[Frame]:
        return self.of(Frame, start)

    def states(self, start: int = 0) -> list[SourceState]:
        return self.of(SourceState, start)

    def wait_state(self, state: str, start: int = 0, timeout: float = 5.0) -> int:
        """Index (in ``events``) of the first SourceState ``state`` at or after ``start``."""
        def find() -> int | None:
            for i, e in enumerate(list(self.events)[start:], start):
                if isinstance(e, SourceState) and e.state == state:
                    return i + 1  # truthy even at index 0
            return None
        return wait_until(find, timeout, f"SourceState {state!r} after event {start}") - 1

    def sync(self, emulator: RylrEmulator) -> int:
        """Write a marker line and wait until the radio has reported it: everything the emulator
        wrote before it has been handled. Returns the marker's index in ``events``."""
        self._sync += 1
        marker = f"sync-marker-{self._sync}"
        assert emulator.write_line(marker)

        def find() -> int | None:
            for i, e in enumerate(list(self.events)):
                if isinstance(e, Reject) and e.raw == marker.encode():
                    return i + 1
            return None
        return wait_until(find, 5.0, f"marker {marker}") - 1


@pytest.fixture
def start_radio():
    running: list[Running] = []

    def start(emulator: RylrEmulator, stop: threading.Event | None = None, **config: Any) -> Running:
        r = Running(RylrRadio(source(**config), str(emulator.link)), emulator, stop).start()
        running.append(r)
        return r

    yield start
    for r in running:
        r.halt()


CONFIG_COMMANDS = ["AT", "AT+ADDRESS=1", "AT+NETWORKID=18", "AT+BAND=920600000", "AT+PARAMETER=9,7,1,12"]


def test_radio_configures_the_module_then_receives(emulator, start_radio):
    r = start_radio(emulator)
    i = r.wait_state("receiving")
    assert r.events[i].source == "lora0"
    assert r.events[i].detail == str(emulator.link)
    assert [s.state for s in r.states()] == ["starting", "receiving"]
    assert emulator.commands[:5] == CONFIG_COMMANDS
    assert emulator.configured

    assert emulator.receive(21, WATER, -80, 7.5)
    assert emulator.receive(17, "01010CE4002A", -101, -3)
    frames = wait_until(lambda: len(r.frames()) >= 2 and r.frames(), what="two frames")
    assert [(f.source, f.address, f.payload, f.rssi, f.snr) for f in frames] == [
        ("lora0", 21, bytes.fromhex(WATER), -80.0, 7.5),
        ("lora0", 17, bytes.fromhex("01010CE4002A"), -101.0, -3.0),
    ]
    assert frames[0].mono <= frames[1].mono <= time.monotonic()
    assert abs(frames[0].wall - time.time()) < 60


def test_radio_stops_within_a_read_timeout(emulator, start_radio):
    r = start_radio(emulator)
    r.wait_state("receiving")
    r.stop.set()
    r.thread.join(timeout=2.0)
    assert not r.thread.is_alive()


def voluntary_switches(thread: threading.Thread) -> int:
    """How often ``thread`` went to sleep (a select, a lock, a timer) since it started."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_radio_sleeps_until_a_frame_or_the_stop(emulator, start_radio):
    # As the daemon runs it: with a Stop, an idle source sleeps in one select on the port and the
    # stop (a plain Event is looked at every half second: three wake-ups in these 1.5 s).
    r = start_radio(emulator, stop=Stop())
    r.wait_state("receiving")
    r.sync(emulator)
    before = voluntary_switches(r.thread)
    time.sleep(1.5)
    assert voluntary_switches(r.thread) - before <= 1
    assert emulator.receive(21, WATER, -80, 7.5)
    wait_until(lambda: r.frames(), what="the frame")
    r.stop.set()
    r.thread.join(timeout=2.0)
    assert not r.thread.is_alive()


def test_radio_stops_while_the_port_is_missing(unplugged, start_radio):
    r = start_radio(unplugged)
    r.wait_state("down")
    r.stop.set()
    r.thread.join(timeout=2.0)
    assert not r.thread.is_alive()


def test_radio_sends_its_address_and_cpin(emulator, start_radio):
    r = start_radio(emulator, address=4242, cpin="1A2B3C4D")
    r.wait_state("receiving")
    assert "AT+ADDRESS=4242" in emulator.commands
    assert "AT+CPIN=1A2B3C4D" in emulator.commands
    assert emulator.settings.address == 4242
    assert emulator.settings.cpin == "1A2B3C4D"


def test_radio_rejects_garbage_and_bad_frames_and_keeps_going(emulator, start_radio):
    r = start_radio(emulator)
    start = r.wait_state("receiving")
    emulator.write_line("xyz")
    emulator.write_line("+RCV=33,3,ABC,-60,9")
    emulator.write_line("+RCV=33,8,AB,-60,9")
    emulator.receive(33, "CAFE", -60, 9)
    wait_until(lambda: r.frames(start), what="the frame after the rejects")
    rejects = r.of(Reject, start)
    assert [(x.source, x.reason, x.address, x.raw) for x in rejects] == [
        ("lora0", "garbage", None, b"xyz"),
        ("lora0", "bad_hex", 33, b"+RCV=33,3,ABC,-60,9"),
        ("lora0", "wrong_length", 33, b"+RCV=33,8,AB,-60,9"),
    ]
    assert r.frames(start)[0].payload == b"\xca\xfe"
    assert [s.state for s in r.states()] == ["starting", "receiving"]


def test_radio_ignores_blank_lines_and_stray_ok(emulator, start_radio):
    r = start_radio(emulator)
    start = r.wait_state("receiving")
    emulator.write_line("")
    emulator.write_line("+OK")
    marker = r.sync(emulator)
    assert r.events[start + 1: marker] == []


@pytest.mark.parametrize("config", [{"band": 923_200_000}, {"spreading_factor": 10}, {"network_id": 5}],
                         ids=["band", "parameter", "network_id"])
def test_radio_configured_off_air_hears_nothing(emulator, start_radio, config):
    r = start_radio(emulator, **config)
    start = r.wait_state("receiving")
    assert not emulator.configured
    assert emulator.receive(21, WATER) is False
    marker = r.sync(emulator)
    assert r.frames() == []
    assert r.events[start + 1: marker] == []


@pytest.mark.parametrize(
    ("config", "command"),
    [({"network_id": 16}, "AT+NETWORKID=16"), ({"bandwidth_khz": 62.5}, "AT+PARAMETER=9,6,1,12")],
    ids=["network_id", "bandwidth"],
)
def test_radio_reports_module_error_with_its_meaning(emulator, start_radio, config, command):
    r = start_radio(emulator, **config)
    first = r.wait_state("down")
    reply = emulator.answer(command)  # what the module answered (the emulator is deterministic)
    assert reply.startswith("+ERR=")
    code = int(reply[5:])
    detail = r.events[first].detail
    assert command in detail
    assert f"+ERR={code}" in detail
    assert ERRORS[code] in detail
    # it keeps retrying (with backoff) and never claims to be receiving
    r.wait_state("down", first + 1)
    assert emulator.commands.count(command) >= 2
    assert "receiving" not in [s.state for s in r.states()]


def test_radio_recovers_from_unplug_and_replug(emulator, start_radio):
    r = start_radio(emulator)
    up = r.wait_state("receiving")
    emulator.unplug()
    down = r.wait_state("down", up + 1)
    assert r.events[down].source == "lora0"
    assert r.events[down].detail  # pyserial's reason
    seen = len(emulator.commands)
    assert emulator.receive(21, WATER) is False  # nobody on the other end of the air

    emulator.plug()  # same link, a new pty; the module has its power-on defaults again
    assert not emulator.configured
    again = r.wait_state("receiving", down + 1, timeout=10.0)
    for cmd in CONFIG_COMMANDS:
        assert cmd in emulator.commands[seen:]
    assert emulator.configured
    assert emulator.receive(22, "0102", -70, 8)
    frame = wait_until(lambda: r.frames(again), what="a frame after replug")[0]
    assert (frame.address, frame.payload) == (22, b"\x01\x02")


def test_radio_started_before_the_port_exists(unplugged, start_radio):
    assert not unplugged.link.exists()
    r = start_radio(unplugged)
    down = r.wait_state("down")
    assert str(unplugged.link) in r.events[down].detail
    unplugged.plug()
    up = r.wait_state("receiving", down + 1, timeout=10.0)
    assert unplugged.commands[:5] == CONFIG_COMMANDS
    assert unplugged.receive(5, "00FF", -50, 10)
    frame = wait_until(lambda: r.frames(up), what="a frame")[0]
    assert (frame.address, frame.payload, frame.rssi, frame.snr) == (5, b"\x00\xff", -50.0, 10.0)


def test_radio_reconfigures_after_module_reset(emulator, start_radio):
    r = start_radio(emulator)
    up = r.wait_state("receiving")
    seen = len(emulator.commands)
    emulator.reset()  # the module lost its RAM settings and says +READY
    again = r.wait_state("starting", up + 1)
    assert "+READY" in r.events[again].detail
    r.wait_state("receiving", again + 1)
    assert emulator.commands[seen:seen + 5] == CONFIG_COMMANDS
    assert emulator.configured
    assert "down" not in [s.state for s in r.states()]  # on the open port: no close, no backoff
    assert emulator.receive(21, WATER)
    assert wait_until(lambda: r.frames(again), what="a frame after reconfiguring")[0].address == 21


def test_every_frame_in_the_read_of_a_reset_banner_is_handed_over(emulator):
    # A +READY amid a burst: the frames the same read takes before and after it are handed over, in
    # order, and only then is the module reconfigured.
    turn = ReadTurn()
    r = Running(RylrRadio(source(), str(emulator.link), turn), emulator).start()
    try:
        up = r.wait_state("receiving")
        seen = len(emulator.commands)
        with turn.write():  # the radio reads nothing meanwhile: all of it waits in the kernel, for one read
            for n in range(3):
                assert emulator.receive(21, WATER, -80, n)
            emulator.reset()  # "+READY", and the settings are gone...
            for n in range(3, 6):  # ...yet more frames follow in the same read (settings kept in flash, say)
                assert emulator.write_line(rcv_line(22, WATER, -80, n))
            sent = 6 * len(rcv_line(21, WATER, -80, 0) + "\r\n") + len("+READY\r\n")
            wait_until(lambda: emulator.pending_bytes() == sent, what="every line in the kernel")
        again = r.wait_state("starting", up + 1)
        assert "+READY" in r.events[again].detail
        frames = r.frames(up)
        assert [(f.address, f.snr) for f in frames] == [(21, 0.0), (21, 1.0), (21, 2.0), (22, 3.0), (22, 4.0), (22, 5.0)]
        assert r.events.index(frames[-1]) < again  # handed over before reconfiguring
        r.wait_state("receiving", again + 1)
        assert emulator.commands[seen:seen + 5] == CONFIG_COMMANDS
        assert emulator.configured
    finally:
        r.halt()


def test_a_reset_amid_a_burst_keeps_the_back_pressure_while_the_module_is_set_up_again(emulator):
    # The writer is busy (a long commit, a full disk) with the turn that holds a +READY: the radio
    # must not read on to reconfigure meanwhile, or the burst behind it piles up uncommitted (the
    # loss window of the durability promise). It did: 2,497 of 3,000 frames in 2,484 hand-overs.
    turn, busy = ReadTurn(), threading.Event()
    handed: list = []
    turns_with_frames: list[int] = []  # frames in each hand-over once the writer is busy

    def emit(events: list) -> threading.Event:
        handed.extend(events)
        if busy.is_set() and (n := sum(isinstance(e, Frame) for e in events)):
            turns_with_frames.append(n)
        return threading.Event() if busy.is_set() else COMMITTED  # never committed once busy

    stop = threading.Event()
    radio = RylrRadio(source(), str(emulator.link), turn)
    thread = threading.Thread(target=radio.run, args=(emit, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: any(isinstance(e, SourceState) and e.state == "receiving" for e in handed),
                   what="the module configured")
        busy.set()
        with turn.write():
            for n in range(5):
                assert emulator.receive(21, WATER, -80, n)
            emulator.reset()
        sent = 5
        while sent < 2000 and emulator.write_line(rcv_line(21, WATER, -80, sent % 100)):
            sent += 1
        wait_until(lambda: turns_with_frames, what="the turn with the reset")
        time.sleep(0.5)  # what a radio that ignored the busy writer would read meanwhile
        assert len(turns_with_frames) == 1 and turns_with_frames[0] >= 5, turns_with_frames[:10]
    finally:
        stop.set()
        emulator.write_line("")
        thread.join(10)
        assert not thread.is_alive()


class ScriptedEmulator(RylrEmulator):
    """The emulated module, but it writes ``before[cmd]`` lines ahead of its answer to ``cmd``, and
    answers ``replies[cmd]`` instead of its own answer when one is given ("" = silence), or
    ``replies_once[cmd]`` the first time only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.before: dict[str, list[str]] = {}
        self.replies: dict[str, str] = {}
        self.replies_once: dict[str, str] = {}

    def answer(self, cmd: str) -> str:
        for line in self.before.get(cmd, []):
            self.write_line(line)
        own = super().answer(cmd)
        if cmd in self.replies_once:
            return self.replies_once.pop(cmd)
        return self.replies.get(cmd, own)


@pytest.fixture
def scripted(tmp_path):
    emulator = ScriptedEmulator(tmp_path / "ttyLORA0")
    emulator.plug()
    yield emulator
    emulator.unplug()


def test_radio_emits_frames_arriving_during_configuration(scripted, start_radio):
    scripted.before["AT+BAND=920600000"] = [rcv_line(40, "0A0B", -90, -1.5), "noise"]
    r = start_radio(scripted)
    up = r.wait_state("receiving")
    frames, rejects = r.frames(), r.of(Reject)
    assert [(f.address, f.payload, f.rssi, f.snr) for f in frames] == [(40, b"\x0a\x0b", -90.0, -1.5)]
    assert [x.raw for x in rejects] == [b"noise"]
    assert r.events.index(frames[0]) < up


@pytest.fixture
def host(scripted):
    """The gateway's side of the scripted emulator's pty, opened as RylrRadio opens it."""
    with serial.Serial(str(scripted.link), 115200, timeout=0.2) as port:
        yield port, LineReader(port)


def test_command_routes_lines_before_its_ok(scripted, host):
    port, lines = host
    scripted.before["AT+ADDRESS=9"] = [rcv_line(41, "FF", -80, 3), "", "junk"]
    events: list = []
    radio = RylrRadio(source(), str(scripted.link))
    radio._command(port, lines, "AT+ADDRESS=9", events.extend)
    assert [(type(e), getattr(e, "payload", None) or getattr(e, "raw", None)) for e in events] == [
        (Frame, b"\xff"), (Reject, b"junk")]
    assert scripted.settings.address == 9


@pytest.mark.parametrize(
    ("reply", "meaning"),
    [("+ERR=4", ERRORS[4]), ("+ERR=12", ERRORS[12]), ("+ERR=99", "undocumented error"), ("+ERR=x", "unreadable error")],
)
def test_command_raises_module_error_with_meaning(scripted, host, reply, meaning):
    port, lines = host
    scripted.replies["AT+BAND=920600000"] = reply
    radio = RylrRadio(source(), str(scripted.link))
    with pytest.raises(ModuleError) as exc:
        radio._command(port, lines, "AT+BAND=920600000", lambda e: None)
    assert str(exc.value) == f"AT+BAND=920600000: module answered {reply} ({meaning})"
    assert scripted.commands.count("AT+BAND=920600000") == rylr.COMMAND_TRIES  # a few tries, then the backoff


def test_a_stray_error_during_configuration_costs_no_backoff(scripted, start_radio):
    # Noise on the module's serial input makes it answer +ERR to something we never sent, just ahead
    # of its +OK to what we did, at every configuration: each used to cost a growing backoff (up to
    # 30 s), and the radio never got to receive.
    scripted.before["AT+NETWORKID=18"] = ["+ERR=2"]
    r = start_radio(scripted)
    r.wait_state("receiving", timeout=5.0)
    assert [s.state for s in r.states()] == ["starting", "receiving"]
    assert scripted.commands.count("AT+NETWORKID=18") == 1  # the +OK that followed was the answer
    assert scripted.configured


def test_a_command_answered_with_an_error_once_is_sent_again_at_once(scripted, start_radio):
    scripted.replies_once["AT+BAND=920600000"] = "+ERR=1"  # a garbled command, say
    r = start_radio(scripted)
    r.wait_state("receiving", timeout=5.0)
    assert [s.state for s in r.states()] == ["starting", "receiving"]
    assert scripted.commands.count("AT+BAND=920600000") == 2
    assert scripted.configured


def test_a_reset_during_configuration_starts_it_over_at_once(scripted, start_radio):
    scripted.replies_once["AT+BAND=920600000"] = "+READY"  # the module restarted instead of answering
    r = start_radio(scripted)
    r.wait_state("receiving", timeout=5.0)
    assert [s.state for s in r.states()] == ["starting", "receiving"]
    assert scripted.commands[:9] == CONFIG_COMMANDS[:4] + CONFIG_COMMANDS  # all of it again, from AT
    assert scripted.configured


def test_a_module_that_keeps_resetting_is_listened_to_on_the_open_port_and_configured_once_it_stops(
        scripted, start_radio):
    # A reset banner is also what a payload with a line break makes the module print. Closing the
    # port after a few resets (flushing what the kernel held) and backing off up to 30 s let anyone
    # in range keep the gateway deaf, its alarms with it, for as long as they sent, and for up to
    # 30 s after. Now the module is listened to between rounds of configuration: frames go on.
    scripted.replies["AT+BAND=920600000"] = "+READY"
    r = start_radio(scripted)

    def pauses() -> list[SourceState]:
        return [s for s in r.states() if "keeps resetting" in s.detail]

    first = wait_until(pauses, what="a pause to listen")[0]
    assert "+READY" in first.detail
    assert scripted.receive(21, WATER)  # heard while the module keeps resetting
    assert wait_until(r.frames, what="the frame handed over")[0].address == 21
    del scripted.replies["AT+BAND=920600000"]  # the resets end
    up = r.wait_state("receiving")
    assert scripted.configured
    assert "down" not in [s.state for s in r.states()]  # never closed, never backed off
    # Not spinning: a round of at most CONFIGURE_TRIES configurations between pauses.
    assert scripted.commands.count("AT") <= rylr.CONFIGURE_TRIES * (len(pauses()) + 1)
    assert scripted.receive(22, WATER)
    assert wait_until(lambda: r.frames(up), what="a frame once configured")[0].address == 22


def test_a_stream_of_reset_banners_is_one_log_line_a_minute(emulator, start_radio):
    r = start_radio(emulator)
    up = r.wait_state("receiving")
    with capture_logs() as logs:
        for _ in range(5):
            emulator.reset()
            up = r.wait_state("receiving", r.wait_state("starting", up + 1) + 1)
    events = [e["event"] for e in logs]
    assert events.count("radio module reset itself; reconfiguring") == 1
    assert events.count("radio configured") == 1  # the reconfigurations the log did not announce
    assert emulator.configured


def test_command_times_out_on_silence(scripted, host, monkeypatch):
    monkeypatch.setattr(serial_line, "COMMAND_TIMEOUT", 0.3)  # the base reads it, for every line module
    port, lines = host
    scripted.replies["AT"] = ""
    radio = RylrRadio(source(), str(scripted.link))
    started = time.monotonic()
    with pytest.raises(ModuleError, match="AT: no answer"):
        radio._command(port, lines, "AT", lambda e: None)
    assert time.monotonic() - started < 2.0


def test_command_survives_unreadable_error_code_with_superscript(scripted, host):
    port, lines = host
    scripted.replies["AT"] = "+ERR=²"
    radio = RylrRadio(source(), str(scripted.link))
    with pytest.raises(ModuleError, match="unreadable error"):
        radio._command(port, lines, "AT", lambda e: None)


def test_radio_thread_survives_a_noisy_line(emulator, start_radio):
    r = start_radio(emulator)
    up = r.wait_state("receiving")
    emulator.write_line("+RCV=²,2,AB,-60,9")
    emulator.receive(21, WATER)
    wait_until(lambda: r.frames(up) or not r.thread.is_alive(), what="a frame or a dead thread")
    assert r.thread.is_alive()
    assert r.frames(up)[0].address == 21


def test_radio_reads_nothing_while_the_writer_holds_the_read_turn(emulator):
    # The loss window of a crash: frames are read only between commits, so while the writer commits
    # (holding the turn) new frames stay unread in the kernel's tty buffer, not in our memory.
    turn = ReadTurn()
    r = Running(RylrRadio(source(), str(emulator.link), turn), emulator).start()
    try:
        r.wait_state("receiving")
        with turn.write():
            for n in range(20):
                assert emulator.receive(21, WATER, -80, 7.5 + n)
            held = threading.Event()
            held.wait(0.3)  # time enough for the radio to read them, were it allowed to
            assert r.frames() == []
            assert emulator.pending_bytes() > 0
        frames = wait_until(lambda: len(r.frames()) == 20 and r.frames(), what="the frames, once the turn is free")
        assert [f.snr for f in frames] == [7.5 + n for n in range(20)]
    finally:
        r.halt()


class Writer:
    """An ``emit`` that commits only when the test says so: each hand-over's receipt stays unset
    until :meth:`commit`."""

    def __init__(self) -> None:
        self.handed: list[list] = []  # hand-overs of frames, in order
        self.receipts: list[threading.Event] = []

    def __call__(self, events: list) -> threading.Event:
        receipt = threading.Event()
        if any(isinstance(e, Frame) for e in events):
            self.handed.append(events)
            self.receipts.append(receipt)
        else:
            receipt.set()  # source states: nobody waits for them
        return receipt

    def commit(self) -> None:
        for receipt in self.receipts:
            receipt.set()


@contextmanager
def reading(emulator, turn: ReadTurn | None = None) -> Iterator[Writer]:
    """A radio on ``emulator`` handing over to a :class:`Writer` in a thread; stopped (and checked
    stopped) when the block ends."""
    writer, stop = Writer(), threading.Event()
    thread = threading.Thread(target=RylrRadio(source(), str(emulator.link), turn).run, args=(writer, stop),
                              daemon=True)
    thread.start()
    try:
        yield writer
    finally:
        stop.set()
        emulator.write_line("")
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_radio_reads_no_new_turn_until_its_last_hand_over_is_committed(emulator):
    # Back-pressure: while the writer has not committed what the radio handed over, the radio reads
    # nothing more; frames wait in the kernel's tty buffer, so a crash loses at most that one turn.
    turn = ReadTurn()
    with reading(emulator, turn) as writer:
        wait_until(lambda: "AT+PARAMETER=9,7,1,12" in emulator.commands and emulator.configured, what="configured")
        with turn.write():  # ten frames for one read
            for n in range(10):
                assert emulator.receive(21, WATER, -80, n)
            wait_until(lambda: emulator.pending_bytes() == 10 * len(rcv_line(21, WATER, -80, 0) + "\r\n"),
                       what="ten frames in the kernel")
        wait_until(lambda: writer.handed, what="the first hand-over")
        for n in range(10, 20):
            assert emulator.receive(21, WATER, -80, n)
        time.sleep(0.3)  # time enough for the radio to read them, were it allowed to
        assert [[f.snr for f in h] for h in writer.handed] == [[float(n) for n in range(10)]]
        unread = sum(len(rcv_line(21, WATER, -80, n) + "\r\n") for n in range(10, 20))
        assert emulator.pending_bytes() == unread  # in the kernel
        writer.commit()
        wait_until(lambda: sum(len(h) for h in writer.handed) == 20, what="the next ten, once committed")
        assert [f.snr for h in writer.handed for f in h] == [float(n) for n in range(20)]


def test_a_turn_in_a_burst_takes_turn_bytes_over_several_reads_and_no_more(emulator):
    # A burst commits in groups of a whole turn (several of the tty's 4 KiB reads), so the writer's
    # cost per reading stays low; and the turn stops at TURN_BYTES, so the loss window stays bounded.
    turn = ReadTurn()
    with reading(emulator, turn) as writer:
        wait_until(lambda: "AT+PARAMETER=9,7,1,12" in emulator.commands and emulator.configured, what="configured")
        line = len(rcv_line(21, WATER, -80, 7.5) + "\r\n")
        per_turn = rylr.TURN_BYTES // line  # the frames one turn completes (it takes a head of the next)
        with turn.write():  # the whole burst waits in the kernel before the radio reads any of it
            for _ in range(per_turn + 30):
                assert emulator.receive(21, WATER, -80, 7.5)
        wait_until(lambda: writer.handed, what="the first hand-over")
        time.sleep(0.3)  # time enough for the radio to read the rest, were it allowed to
        assert [len(h) for h in writer.handed] == [per_turn]
        writer.commit()
        wait_until(lambda: sum(len(h) for h in writer.handed) == per_turn + 30, what="the rest, once committed")


def test_a_lone_frame_is_handed_over_without_waiting_for_a_turn_to_fill(emulator):
    # At field rate a turn is the one frame there is: nothing holds it back for more to arrive.
    with reading(emulator) as writer:
        wait_until(lambda: emulator.configured and emulator.receive(21, WATER), what="a frame sent")
        wait_until(lambda: writer.handed, what="the hand-over")
        assert [[f.address for f in h] for h in writer.handed] == [[21]]


def test_radio_waiting_for_a_commit_still_stops(emulator):
    writer, stop = Writer(), threading.Event()  # a writer that never commits (it died)
    thread = threading.Thread(target=RylrRadio(source(), str(emulator.link)).run, args=(writer, stop), daemon=True)
    thread.start()
    wait_until(lambda: emulator.configured and emulator.receive(21, WATER), what="a frame sent")
    wait_until(lambda: writer.handed, what="the hand-over")
    stop.set()
    thread.join(timeout=2.0)
    assert not thread.is_alive()


def test_a_waiting_source_gets_its_turn_before_the_next_commit_but_one():
    # With a plain lock the writer, busy with acknowledgements, could take the turn back again and
    # again while an alarm frame waits; ReadTurn lets a waiting source in before the next commit.
    turn, stop = ReadTurn(), threading.Event()
    commits, waited = [0], []

    def writer() -> None:
        while not stop.is_set():
            with turn.write():
                commits[0] += 1
                threading.Event().wait(0.002)  # an fsync

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        for _ in range(30):
            asked = commits[0]
            with turn.read():
                waited.append(commits[0] - asked)
    finally:
        stop.set()
        t.join(5)
    assert max(waited) <= 1, waited
