"""The base of every radio module that talks lines of text over a serial port.

What REYAX RYLR, EASEL ES920LR and Interplan IM920sL share lives here once: open the port with
pyserial, configure the module with commands whose replies are checked, read the port in read turns
with back-pressure (see :mod:`edgegw.radio`), notice that the module reset itself and configure it
again, and reopen the port with a backoff after an unplug. A module family is a subclass that says
which commands configure it, which lines are replies (ok / error / reset) and how a received line
becomes a Frame.

The module is configured at every (re)open, because a module that was unplugged or reset has lost
whatever RAM settings it had. Received frames may arrive between a command and its reply, so one
loop reads every line and routes it. A module that keeps resetting is configured again on the open
port, its frames read meanwhile: a reset banner is a line anyone in radio range can make the module
print (a payload with a line break in it), so it must never close the port or back off.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import serial
import structlog

from edgegw.backoff import Backoff
from edgegw.errors import ModuleError
from edgegw.log import Throttle
from edgegw.model import Frame, Reject
from edgegw.radio import Emit, ReadTurn, SourceState, Turns, wait_committed, wait_readable

MAX_LINE = 600  # "+RCV=65535,240," + 480 hex chars + RSSI/SNR fits; longer is noise, not a frame
COMMAND_TIMEOUT = 2.0
# The most one read turn takes from the port, so the most a crash may lose. In a burst a turn is
# several reads (a tty hands over 4 KiB a read), so the writer commits groups big enough to keep
# its cost per reading (transactions, WAL pages) where it was before back-pressure. A turn never
# waits for more to arrive: at field rate it is the frame or two one read finds.
TURN_BYTES = 16 * 1024
COMMAND_TRIES = 3  # sends of a command the module answers with an error, before the port backs off
STRAY_ERROR_WINDOW = 0.25  # s: an OK this soon after an error was the answer; the error was noise
CONFIGURE_TRIES = 3  # configurations a module reset cut short in a row, before a pause to listen
# s: how long a module that keeps resetting is listened to (its frames handed over) before it is
# configured again: from the first to the longest pause
RESET_PAUSE = 0.25
RESET_PAUSE_MAX = 2.0
RESET_LOG_EVERY = 60.0  # s: a module's resets are logged once per this, with a count of the rest
_HEX = re.compile(r"[0-9A-Fa-f]*")

Reply = Literal["ok", "error", "reset"]


def raw(line: str) -> bytes:
    """A line as the bytes the module sent (lines are decoded latin-1: one byte, one char)."""
    return line.encode("latin-1", "replace")


def decode_payload(data: str, encoding: str) -> bytes:
    """The payload bytes of a received text field in ``encoding`` (hex, base64 or text); ValueError if not."""
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
    """The module said it restarted (a banner such as +READY): what it was told before is gone."""

    def __init__(self, message: str, banner: str = ""):
        super().__init__(message)
        self.banner = banner


class ModuleSilent(ModuleError):
    """The module answered nothing at all: a wrong port, a wrong baud rate, or no module."""


class LineReader:
    """Splits the byte stream of a serial port into lines, with a cap on line length."""

    def __init__(self, port: serial.Serial):
        self.port = port
        self.buf = bytearray()  # bytes read that do not yet make a line
        self.lines: deque[str] = deque()  # lines split off, not yet handed out

    def wait(self, stop: threading.Event) -> bool:
        """True once a line is buffered or the port has bytes to read, False at ``stop``; reads nothing."""
        return bool(self.lines) or wait_readable(self.port.fileno(), stop)

    def available(self, most: int = TURN_BYTES) -> list[str]:
        """Every complete line buffered, and those the port holds now up to ``most`` bytes read;
        what is beyond stays in the kernel. Reads without waiting for more to arrive."""
        taken = 0
        fd = self.port.fileno()
        # select, not in_waiting, to ask whether there is more: a tty's poll first lets the kernel
        # finish moving what it holds into the readable buffer, so in a burst each read after a
        # full one finds it refilled instead of ending the turn early.
        while taken < most and select.select([fd], [], [], 0)[0]:
            # pyserial keeps the port non-blocking and reads it through select and a timer: one plain
            # read of what is there is a third of the calls, in the loop that runs for every frame.
            try:
                chunk = os.read(fd, most - taken)
            except BlockingIOError:  # another reader of the port took it first: nothing for this turn
                break
            if not chunk:  # readable with nothing in it: the port has gone (as pyserial says too)
                raise serial.SerialException("device reports readiness to read but returned no data"
                                             " (device disconnected?)")
            taken += len(chunk)
            self._split(chunk)
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

    def _read(self) -> None:
        """Read what the port holds (at least one byte, waiting for it up to the port's timeout);
        split off the lines it completes."""
        # pyserial's read raises SerialException when the port vanishes (USB unplugged, pty closed)
        self._split(self.port.read(max(1, min(self.port.in_waiting, TURN_BYTES))))

    def _split(self, chunk: bytes) -> None:
        """Add ``chunk`` to the bytes read; split off the lines it completes."""
        buf = self.buf
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


Serve = Callable[[serial.Serial, Emit, threading.Event, Callable[[], None]], None]


def run_port(source: Any, baudrate: int, serve: Serve, emit: Emit, stop: threading.Event) -> None:
    """Open ``source.port`` and ``serve`` it until ``stop``; when the port fails (unplugged, a module
    that does not answer), say so and open it again after a backoff. ``serve`` calls its ``up``
    argument once the module is configured, which resets the backoff."""
    backoff = Backoff(0.25, 30.0)
    while not stop.is_set():
        try:
            emit([SourceState(source.name, "starting", source.port)])
            with serial.Serial(source.port, baudrate, timeout=0.2) as port:
                serve(port, emit, stop, backoff.reset)
        except (serial.SerialException, OSError, ModuleError) as exc:
            delay = backoff.next()
            emit([SourceState(source.name, "down", str(exc))])
            source.log.warning("radio port down, reopening", source=source.name, port=source.port, error=str(exc),
                               retry_in=round(delay, 2))
            stop.wait(delay)


def _drop(events: list) -> threading.Event:
    """An ``emit`` that keeps nothing: a check's frames are not readings (the daemon is not running)."""
    done = threading.Event()
    done.set()
    return done


class LineModule:
    """A :class:`~edgegw.radio.Source` for one serial line module; subclasses name the module family.

    A subclass sets ``family`` and ``errors`` (error code -> meaning, from the datasheet) and
    implements :meth:`commands`, :meth:`reply` and :meth:`parse`; :meth:`greet` is for modules that
    must be talked into command mode first.
    """

    family: ClassVar[str] = "serial"
    errors: ClassVar[dict[int, str]] = {}
    baudrates: ClassVar[tuple[int, ...]] = ()  # the rates the module can be set to: `edgegw doctor` tries them
    error_format: ClassVar[str] = "{}"  # how the module writes an error with its code, for messages

    def __init__(self, config: Any, port: str, read_turn: ReadTurn | None = None):
        self.config = config
        self.name: str = config.name
        self.port = port
        self.read_turn = read_turn or ReadTurn()
        self.log = structlog.get_logger(f"edgegw.radio.{self.family}")
        self.answer_timeout: float | None = None  # a check's shorter wait for each answer
        self.throttle = Throttle(RESET_LOG_EVERY)  # a stream of reset banners is not a stream of log lines

    # -- what a module family says ---------------------------------------------------------------

    def commands(self) -> list[str]:
        """The command lines (without line ending) that configure the module, in order."""
        raise NotImplementedError

    def reply(self, line: str) -> tuple[Reply, str] | None:
        """``("ok", "")``, ``("error", code)`` or ``("reset", banner)`` if ``line`` is a module reply; else None."""
        raise NotImplementedError

    def parse(self, line: str, wall: float, mono: float) -> Frame | Reject | None:
        """A line that is not a reply: a Frame, a Reject saying why not, or None for a line to ignore."""
        raise NotImplementedError

    def greet(self, port: serial.Serial, lines: LineReader, emit: Emit, banner: str | None) -> bool:
        """Called once the port is open (``banner`` None) and after each reset (the banner seen):
        bring the module to where it takes commands. False if it must not be configured now."""
        return True

    def configured_detail(self) -> dict[str, Any]:
        """What the log line "radio configured" says about the settings."""
        return {}

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read frames until ``stop``; reopen the port with a backoff when it fails (see :class:`~edgegw.radio.Source`)."""
        run_port(self, self.config.baudrate, self._serve, emit, stop)

    def check(self, baudrate: int | None = None, timeout: float | None = None) -> bool:
        """Open the port once and configure the module as a start does, every reply checked: for
        ``edgegw doctor``, never while the daemon holds the port. ``baudrate`` and ``timeout`` (for
        each answer) replace the configured rate and COMMAND_TIMEOUT. True if the module took every
        setting; False if it would take no commands now (see :meth:`greet`); ModuleError (or
        pyserial's SerialException) says what went wrong. Frames heard meanwhile are dropped."""
        self.answer_timeout = timeout
        try:
            with serial.Serial(self.port, baudrate or self.config.baudrate, timeout=0.2) as port:
                return self._configure(port, LineReader(port), _drop, None)
        finally:
            self.answer_timeout = None

    def _serve(self, port: serial.Serial, emit: Emit, stop: threading.Event, up: Callable[[], None]) -> None:
        lines = LineReader(port)
        turns = Turns(self.read_turn, emit, stop)

        def one_by_one(events: list) -> threading.Event:
            # Configuration reads the port for the module's answers and hands over the frames among
            # them outside the read turns: each is committed before the next read, so a burst heard
            # while the module is set up again cannot pile up in the writer's queue (the loss window).
            handed = emit(events)
            wait_committed(handed, stop)
            return handed

        self._configure(port, lines, one_by_one, None, stop)
        up()
        while not stop.is_set():
            banner = self._read_turn(lines, turns)
            if banner is not None:
                # The module restarted and may have lost its settings: set them again at once,
                # on the open port (reopening it would flush the frames the kernel holds).
                emit([SourceState(self.name, "starting", f"module reset itself ({banner}); reconfiguring")])
                suppressed = self.throttle.allow("reset")
                if suppressed is not None:
                    self.log.warning("radio module reset itself; reconfiguring", source=self.name, port=self.port,
                                     similar_suppressed=suppressed)
                if turns.handed is not None:
                    wait_committed(turns.handed, stop)
                self._configure(port, lines, one_by_one, banner, stop, quiet=suppressed is None)

    def _read_turn(self, lines: LineReader, turns: Turns) -> str | None:
        """Read what the port holds once the last turn is committed, and hand it over. Returns the banner
        if the module said it reset itself: the frames around it are handed over all the same."""
        if not lines.wait(turns.stop):
            return None
        banner = None

        def take() -> list:
            nonlocal banner
            events = []
            for line in lines.available():
                kind = self.reply(line)
                if kind is not None and kind[0] == "reset":
                    banner = line
                # An error nobody asked for is noise: count it.
                elif (kind is None or kind[0] == "error") and (event := self._route(line)) is not None:
                    events.append(event)
            return events

        turns.take(take)
        return banner

    def _configure(self, port: serial.Serial, lines: LineReader, emit: Emit, banner: str | None,
                   stop: threading.Event | None = None, quiet: bool = False) -> bool:
        """Send the settings; start over at once when the module resets meanwhile (what it was told is
        gone). After CONFIGURE_TRIES resets in a row, a check (no ``stop``) raises ModuleReset; the
        daemon listens to the module for a pause (RESET_PAUSE, growing to RESET_PAUSE_MAX), handing
        its frames over, and configures it again, until it takes every setting or ``stop``. Closing
        the port instead would flush the frames the kernel holds, and its backoff (up to 30 s) would
        leave the gateway deaf long after the resets ended: a reset banner is also what a payload
        with a line break in it makes the module print. False if :meth:`greet` said the module takes
        no commands now, or at ``stop``. ``quiet``: the reset that led here was not logged (see
        :attr:`throttle`), so neither is its "radio configured"."""
        pause = Backoff(RESET_PAUSE, RESET_PAUSE_MAX)
        resets = 0
        while True:
            try:
                sent = self.greet(port, lines, emit, banner)
                if sent:
                    for cmd in self.commands():
                        self._command(port, lines, cmd, emit)
                break
            except ModuleReset as exc:
                resets += 1
                banner = exc.banner
                if resets % CONFIGURE_TRIES:
                    if (suppressed := self.throttle.allow("reset during configuration")) is not None:
                        self.log.warning("radio module reset during configuration; starting over", source=self.name,
                                         port=self.port, error=str(exc), similar_suppressed=suppressed)
                    continue
                if stop is None:
                    raise
                delay = pause.next()
                emit([SourceState(self.name, "starting", f"module keeps resetting ({resets} resets while"
                                                         f" configured, the last: {exc}); configuring it again in"
                                                         f" {delay:.1f} s")])
                if (suppressed := self.throttle.allow("keeps resetting")) is not None:
                    self.log.warning("radio module keeps resetting during configuration; listening, then"
                                     " configuring it again", source=self.name, port=self.port, error=str(exc),
                                     resets=resets, retry_in=round(delay, 2), similar_suppressed=suppressed)
                if not self._listen(lines, emit, delay, stop):
                    return False
        emit([SourceState(self.name, "receiving", self.port)])
        if not quiet or resets >= CONFIGURE_TRIES:
            self.log.info("radio configured", source=self.name, port=self.port, resets=resets,
                          **self.configured_detail())
        return sent

    def _listen(self, lines: LineReader, emit: Emit, seconds: float, stop: threading.Event) -> bool:
        """Hand over the frames the module sends for ``seconds`` (replies and banners are not
        frames); False at ``stop``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
            line = lines.readline(left)
            if line is not None and ((kind := self.reply(line)) is None or kind[0] == "error") \
                    and (event := self._route(line)) is not None:
                emit([event])
        return not stop.is_set()

    def _command(self, port: serial.Serial, lines: LineReader, cmd: str, emit: Emit) -> None:
        """Send ``cmd`` until the module answers ok. An error is sent again at once, up to
        COMMAND_TRIES times: a stray one (noise on the module's serial input, a busy module) costs a
        resend, not a backoff; a command the module refuses every time raises ModuleError."""
        for attempt in range(1, COMMAND_TRIES + 1):
            port.write(cmd.encode("ascii") + b"\r\n")
            answer = self._answer(lines, cmd, emit)
            if answer is None:
                return
            code = answer
            if attempt < COMMAND_TRIES:
                self.log.info("radio module answered an error; sending the command again", source=self.name,
                              command=cmd, error=self.error_format.format(code))
                self.before_retry(code)
        raise ModuleError(f"{cmd}: module answered {self.error_format.format(code)} ({self.meaning(code)})")

    def before_retry(self, code: str) -> None:
        """Called before a command answered with error ``code`` is sent again (e.g. let a busy module finish)."""

    def meaning(self, code: str) -> str:
        """What an error code means, from the datasheet's table."""
        if not re.fullmatch("[0-9]{1,3}", code):
            return "unreadable error"
        return self.errors.get(int(code), "undocumented error")

    def _answer(self, lines: LineReader, cmd: str, emit: Emit) -> str | None:
        """The module's answer to ``cmd``: None for ok, else the code of an error that no ok followed
        within STRAY_ERROR_WINDOW (one that did was not the answer). Frames arriving meanwhile are
        emitted; a reset banner raises ModuleReset."""
        wait = self.answer_timeout or COMMAND_TIMEOUT
        deadline = time.monotonic() + wait
        code = None
        while (left := deadline - time.monotonic()) > 0:
            line = lines.readline(left)
            if line is None:
                break
            kind = self.reply(line)
            if kind is None:
                if (event := self._route(line)) is not None:
                    emit([event])
            elif kind[0] == "ok":
                return None
            elif kind[0] == "error":
                code = kind[1]
                deadline = min(deadline, time.monotonic() + STRAY_ERROR_WINDOW)
            else:
                raise ModuleReset(f"{cmd}: the module reset itself ({line})", line)
        if code is None:
            raise ModuleSilent(f"{cmd}: no answer within {wait:g} s (wrong port or baud rate?)")
        return code

    def _route(self, line: str) -> Frame | Reject | None:
        wall, mono = time.time(), time.monotonic()
        try:
            return self.parse(line, wall, mono)
        except Exception as exc:  # radio noise is hostile input: a parser bug costs one line, never the source
            return Reject(self.name, "parser_error", f"{type(exc).__name__}: {exc}", None, None, raw(line), wall)
