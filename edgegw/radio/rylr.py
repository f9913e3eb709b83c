"""REYAX RYLR896/RYLR998 LoRa modules: AT commands over a serial port.

The module is configured at every (re)open, because a module that was unplugged or reset has lost
whatever RAM settings it had. Received frames arrive as ``+RCV=<addr>,<len>,<data>,<rssi>,<snr>``
and may arrive between a command and its ``+OK``, so one loop reads every line and routes it.
"""

from __future__ import annotations

import base64
import binascii
import re
import select
import threading
import time
from collections import deque

import serial
import structlog

from edgegw.config import RylrSource as RylrConfig
from edgegw.errors import ModuleError
from edgegw.model import Frame, Reject
from edgegw.backoff import Backoff
from edgegw.radio import Emit, ReadTurn, SourceState, wait_committed

log = structlog.get_logger("edgegw.radio.rylr")

# +ERR=<n> meanings from the REYAX AT command guides (RYLR896 and RYLR998 share most of them).
ERRORS = {
    1: "no \\r\\n at the end of the command",
    2: "command does not start with AT",
    3: "no = in the command",
    4: "unknown command",
    5: "data length does not match the data",
    10: "TX timeout",
    11: "RX timeout",
    12: "CRC error",
    13: "TX data longer than 240 bytes",
    14: "flash write failed",
    15: "unknown error",
    17: "previous TX unfinished",
    18: "invalid preamble value",
    19: "RX header error",
    20: "invalid MODE 2 time",
}

MAX_LINE = 600  # "+RCV=65535,240," + 480 hex chars + RSSI/SNR fits; longer is noise, not a frame
COMMAND_TIMEOUT = 2.0
# The most one read turn takes from the port, so the most a crash may lose. In a burst a turn is
# several reads (a tty hands over 4 KiB a read), so the writer commits groups big enough to keep
# its cost per reading (transactions, WAL pages) where it was before back-pressure. A turn never
# waits for more to arrive: at field rate it is the frame or two one read finds.
TURN_BYTES = 16 * 1024
COMMAND_TRIES = 3  # sends of a command the module answers +ERR, before the port backs off
STRAY_ERROR_WINDOW = 0.25  # s: an +OK this soon after an +ERR was the answer; the +ERR was noise
CONFIGURE_TRIES = 3  # configurations a +READY cut short, before the port backs off
_TAIL = re.compile(r",(-?[0-9]{1,3}),(-?[0-9]{1,3}(?:\.[0-9]+)?)$")
_HEAD = re.compile(r"([0-9]{1,6}),([0-9]{1,6}),(.*)", re.DOTALL)  # ASCII digits only: noise has ² and ³ too
_HEX = re.compile(r"[0-9A-Fa-f]*")


def parse_rcv(line: str, source: str, encoding: str, wall: float, mono: float) -> Frame | Reject:
    """Parse one ``+RCV=`` line (latin-1 text, no line ending) into a Frame, or say why not."""
    head = _HEAD.fullmatch(line, 5)  # address, length, then data that may itself contain commas
    if head is None:
        return Reject(source, "garbage", "malformed +RCV line", None, None, _raw(line), wall)
    address, length, rest = int(head.group(1)), int(head.group(2)), head.group(3)
    data, tail = rest[:length], _TAIL.fullmatch(rest[length:])
    if tail is None or len(data) != length:
        return Reject(source, "wrong_length", f"declared {length} bytes, line does not match", address, None,
                      _raw(line), wall)
    try:
        payload = _decode_payload(data, encoding)
    except ValueError as exc:
        return Reject(source, f"bad_{encoding}", str(exc), address, None, _raw(line), wall)
    return Frame(source, address, payload, float(tail.group(1)), float(tail.group(2)), wall, mono)


def _raw(line: str) -> bytes:
    return line.encode("latin-1", "replace")


def _decode_payload(data: str, encoding: str) -> bytes:
    if encoding == "hex":
        if not _HEX.fullmatch(data):
            raise ValueError("not hexadecimal")
        if len(data) % 2:
            raise ValueError(f"odd number of hex digits ({len(data)})")
        return bytes.fromhex(data)
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"not base64: {exc}") from None
    return data.encode("latin-1")


class ModuleReset(ModuleError):
    """The module said +READY: it restarted, and what it was told before is gone."""


class LineReader:
    """Splits the byte stream of a serial port into lines, with a cap on line length."""

    def __init__(self, port: serial.Serial):
        self.port = port
        self.buf = bytearray()  # bytes read that do not yet make a line
        self.lines: deque[str] = deque()  # lines split off, not yet handed out

    def wait(self, timeout: float) -> bool:
        """True when a line is buffered or the port has bytes to read, within ``timeout``; reads nothing."""
        if self.lines:
            return True
        readable, _, _ = select.select([self.port.fileno()], [], [], timeout)
        return bool(readable)

    def available(self, most: int = TURN_BYTES) -> list[str]:
        """Every complete line buffered, and those the port holds now up to ``most`` bytes read;
        what is beyond stays in the kernel. Reads without waiting for more to arrive."""
        taken = 0
        # select, not in_waiting, to ask whether there is more: a tty's poll first lets the kernel
        # finish moving what it holds into the readable buffer, so in a burst each read after a
        # full one finds it refilled instead of ending the turn early.
        while taken < most and select.select([self.port.fileno()], [], [], 0)[0]:
            # At least one byte: a port that is readable with nothing in it has gone, and read says so.
            taken += self._read(most - taken)
        out = list(self.lines)
        self.lines.clear()
        return out

    def readline(self, timeout: float) -> str | None:
        """The next line without its ending (latin-1), or None if none completed within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.lines:
            if time.monotonic() >= deadline or timeout == 0:
                return None
            self._read()
        return self.lines.popleft()

    def _read(self, most: int = TURN_BYTES) -> int:
        """Read what the port holds, ``most`` bytes at most (at least one, waiting for it up to the
        port's timeout); split off the lines it completes. Returns the number of bytes read."""
        # pyserial's read raises SerialException when the port vanishes (USB unplugged, pty closed)
        buf = self.buf
        chunk = self.port.read(max(1, min(self.port.in_waiting, most)))
        buf += chunk
        # Every line of the chunk at once: one at a time, each line cost a copy of the rest.
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + MAX_LINE + 1)
            if nl >= 0:
                self.lines.append(buf[start:nl].rstrip(b"\r").decode("latin-1"))
                start = nl + 1
            elif len(buf) - start > MAX_LINE:  # no line ending within reach: hand the junk on as one line
                self.lines.append(buf[start:start + MAX_LINE].decode("latin-1"))
                start += MAX_LINE
            else:
                break
        del buf[:start]
        return len(chunk)


class RylrRadio:
    """A :class:`~edgegw.radio.Source` for one RYLR module."""

    def __init__(self, config: RylrConfig, port: str, read_turn: ReadTurn | None = None):
        self.config = config
        self.name = config.name
        self.port = port
        self.read_turn = read_turn or ReadTurn()

    def commands(self) -> list[str]:
        c = self.config
        cmds = ["AT", f"AT+ADDRESS={c.address}", f"AT+NETWORKID={c.network_id}", f"AT+BAND={c.band}",
                f"AT+PARAMETER={c.at_parameter()}"]
        if c.cpin:
            cmds.append(f"AT+CPIN={c.cpin}")
        return cmds

    def run(self, emit: Emit, stop: threading.Event) -> None:
        backoff = Backoff(0.25, 30.0)
        while not stop.is_set():
            try:
                emit([SourceState(self.name, "starting", self.port)])
                with serial.Serial(self.port, self.config.baudrate, timeout=0.2) as port:
                    lines = LineReader(port)
                    self._configure(port, lines, emit)
                    backoff.reset()
                    while not stop.is_set():
                        if self._read_turn(lines, emit, stop):
                            # The module restarted and may have lost its settings: set them again at once,
                            # on the open port (reopening it would flush the frames the kernel holds).
                            emit([SourceState(self.name, "starting", "module reset itself (+READY); reconfiguring")])
                            log.warning("radio module reset itself; reconfiguring", source=self.name, port=self.port)
                            self._configure(port, lines, emit)
            except (serial.SerialException, OSError, ModuleError) as exc:
                delay = backoff.next()
                emit([SourceState(self.name, "down", str(exc))])
                log.warning("radio port down, reopening", source=self.name, port=self.port, error=str(exc),
                            retry_in=round(delay, 2))
                stop.wait(delay)

    def _read_turn(self, lines: LineReader, emit: Emit, stop: threading.Event) -> bool:
        """Read what the port holds, hand it over, and wait until it is committed. True if the
        module said +READY (it reset itself): the frames around the banner are handed over all the same."""
        if not lines.wait(0.5):
            return False
        reset = False
        with self.read_turn.read():  # not while the writer commits: unread frames stay in the kernel
            events = []
            for line in lines.available():
                if (event := self._route(line)) is not None:
                    events.append(event)
                elif line == "+READY":
                    reset = True
            committed = emit(events) if events else None  # one hand-over per turn, not per frame
        if committed is not None:
            # Back-pressure: no new turn until this one is committed, so a crash loses one turn at most.
            wait_committed(committed, stop)
        return reset

    def _configure(self, port: serial.Serial, lines: LineReader, emit: Emit) -> None:
        """Send the settings; start over at once when the module resets meanwhile (what it was told is
        gone), up to CONFIGURE_TRIES times: a module that keeps resetting backs off with the port."""
        for attempt in range(1, CONFIGURE_TRIES + 1):
            try:
                for cmd in self.commands():
                    self._command(port, lines, cmd, emit)
                break
            except ModuleReset as exc:
                if attempt == CONFIGURE_TRIES:
                    raise
                log.warning("radio module reset during configuration; starting over", source=self.name,
                            port=self.port, error=str(exc))
        emit([SourceState(self.name, "receiving", self.port)])
        log.info("radio configured", source=self.name, port=self.port, band=self.config.band,
                 parameter=self.config.at_parameter())

    def _command(self, port: serial.Serial, lines: LineReader, cmd: str, emit: Emit) -> None:
        """Send ``cmd`` until the module answers +OK. An +ERR is sent again at once, up to
        COMMAND_TRIES times: a stray one (noise on the module's serial input) costs a resend, not a
        backoff; a command the module refuses every time raises ModuleError."""
        for attempt in range(1, COMMAND_TRIES + 1):
            port.write(cmd.encode("ascii") + b"\r\n")
            code = self._answer(lines, cmd, emit)
            if code is None:
                return
            if attempt < COMMAND_TRIES:
                log.info("radio module answered an error; sending the command again", source=self.name,
                         command=cmd, error=f"+ERR={code}")
        meaning = ERRORS.get(int(code), "undocumented error") if re.fullmatch("[0-9]{1,3}", code) else "unreadable error"
        raise ModuleError(f"{cmd}: module answered +ERR={code} ({meaning})")

    def _answer(self, lines: LineReader, cmd: str, emit: Emit) -> str | None:
        """The module's answer to ``cmd``: None for +OK, else the code of an +ERR that no +OK followed
        within STRAY_ERROR_WINDOW (one that did was not the answer). Frames arriving meanwhile are
        emitted; a +READY raises ModuleReset."""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        code = None
        while (left := deadline - time.monotonic()) > 0:
            line = lines.readline(left)
            if line is None:
                break
            if line == "+OK":
                return None
            if line.startswith("+ERR="):
                code = line[5:]
                deadline = min(deadline, time.monotonic() + STRAY_ERROR_WINDOW)
            elif line == "+READY":
                raise ModuleReset(f"{cmd}: the module reset itself (+READY)")
            elif (event := self._route(line)) is not None:
                emit([event])
        if code is None:
            raise ModuleError(f"{cmd}: no answer within {COMMAND_TIMEOUT:.0f} s (wrong port or baud rate?)")
        return code

    def _route(self, line: str) -> Frame | Reject | None:
        wall, mono = time.time(), time.monotonic()
        if line.startswith("+RCV="):
            try:
                event = parse_rcv(line, self.name, self.config.payload_encoding, wall, mono)
            except Exception as exc:  # radio noise is hostile input: a parser bug costs one line, never the source
                event = Reject(self.name, "parser_error", f"{type(exc).__name__}: {exc}", None, None,
                               _raw(line), wall)
            return event
        if line in ("", "+READY", "+OK"):
            return None  # +READY after a module reset: the callers reconfigure
        return Reject(self.name, "garbage", "line is not a module reply", None, None, _raw(line), wall)
