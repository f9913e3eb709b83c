"""The Wisol WSSFM10R3 (RC3, Japan) over its serial port: identity, sends, downlinks.

Each command is one line ended by ``\\r``; the module answers with a line: ``OK``, a value (the id
for ``AT$I=10``), ``ERROR`` or an ``ERR_SFX_...`` code. Lines that are none of what a command
expects (noise on the UART, a half line after a reset) are skipped, never trusted, and a command
that gets no answer it expects within its time is an error: the caller closes the port and opens
it again, so an unplugged and replugged module is found again at its path.
"""

from __future__ import annotations

import re
import termios
import threading
import time
from dataclasses import dataclass

import serial
import structlog

from edgegw.config.uplinks import SigfoxUplink
from edgegw.errors import ModuleError

log = structlog.get_logger("edgegw.uplink.sigfox")

COMMAND_TIMEOUT = 2.0  # s for AT and the identity queries
DOWNLINK_TIMEOUT = 70.0  # s after OK for RX= (the downlink window opens 20 s after the send, lasts 25 s)
MAX_LINE = 120  # longer is noise: the longest answer, RX= with 8 bytes, is 26 characters
_ID = re.compile(r"[0-9A-Fa-f]{1,8}")
_PAC = re.compile(r"[0-9A-Fa-f]{16}")
_RX = re.compile(r"RX=((?:[0-9A-Fa-f]{2} ?){1,8})")


@dataclass(frozen=True, slots=True)
class Identity:
    """What the module says it is: its Sigfox device id and PAC (for registering it with the operator)."""

    device_id: str
    pac: str


class SigfoxModule:
    """One Sigfox module on one serial port. Used by one thread (the uplink's sender)."""

    def __init__(self, config: SigfoxUplink, port: str):
        self.name, self.config, self.port = config.name, config, port
        self.identity: Identity | None = None
        self._port: serial.Serial | None = None
        self._buf = b""

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> Identity:
        """Open the port and read the module's identity; raises ModuleError, SerialException or OSError."""
        self.close()
        self._port = serial.Serial(self.port, self.config.baudrate, timeout=0.2)
        try:
            self._command("AT", lambda line: line == "OK" or None, COMMAND_TIMEOUT)
            device_id = self._command("AT$I=10", lambda line: line.upper() if _ID.fullmatch(line) else None,
                                      COMMAND_TIMEOUT)
            pac = self._command("AT$I=11", lambda line: line.upper() if _PAC.fullmatch(line) else None,
                                COMMAND_TIMEOUT)
        except BaseException:
            self.close()
            raise
        self.identity = Identity(device_id.zfill(8), pac)
        return self.identity

    def ping(self) -> None:
        """``AT`` -> ``OK``: the module is there and idle (asked before a send is counted)."""
        self._command("AT", lambda line: line == "OK" or None, COMMAND_TIMEOUT)

    def send(self, payload: bytes, downlink: bool, stop: threading.Event) -> bytes | None:
        """Send ``payload`` (at most 12 bytes); with ``downlink``, wait for the backend's 8 bytes too.

        Returns the downlink's bytes, or None (none asked, or none came: the uplink went all the
        same, as its OK says). Raises ModuleError when the module refuses or does not answer.
        """
        if len(payload) > 12:
            raise ValueError(f"a Sigfox uplink holds at most 12 bytes, not {len(payload)}")
        cmd = f"AT$SF={payload.hex().upper()}" + (",1" if downlink else "")
        self._command(cmd, lambda line: line == "OK" or None, self.config.send_timeout, stop)
        if not downlink:
            return None
        try:
            rx = self._reply(lambda line: m.group(1) if (m := _RX.fullmatch(line)) else None, DOWNLINK_TIMEOUT, stop)
        except ModuleError as exc:  # the uplink went; only the answer is missing
            if stop.is_set():  # stopping: the answer is not waited for, nothing is wrong
                return None
            log.warning("no downlink after a Sigfox send: the platform may not hear this module", uplink=self.name,
                        error=str(exc))
            return None
        return bytes.fromhex(rx.replace(" ", ""))

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except (serial.SerialException, OSError):
                pass
        self._port = None

    def _command(self, cmd: str, accept, timeout: float, stop: threading.Event | None = None):
        assert self._port is not None
        self._flush()
        self._port.write(cmd.encode("ascii") + b"\r")
        return self._reply(accept, timeout, stop, cmd)

    def _flush(self) -> None:
        """Drop what came before a command: it is not its answer (a stale OK taken for it would count
        an alarm as sent)."""
        assert self._port is not None
        try:
            self._port.reset_input_buffer()
        except termios.error as exc:  # pyserial lets tcflush's error through: the port is gone (unplugged)
            raise serial.SerialException(f"the port is gone: {exc}") from None
        self._buf = b""

    def _reply(self, accept, timeout: float, stop: threading.Event | None = None, cmd: str = "RX="):
        """The first line ``accept`` takes (returns not None for); an error line or the deadline raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            line = self._readline()
            if line is None:
                continue
            if line == "ERROR" or line.startswith("ERR"):
                raise ModuleError(f"{cmd}: the module answered {line[:60]!r}")
            got = accept(line)
            if got is not None:
                return got
            log.debug("unexpected line from the Sigfox module, skipped", uplink=self.name, line=line[:60])
        raise ModuleError(f"{cmd}: no answer within {timeout:g} s" if not (stop and stop.is_set()) else
                          f"{cmd}: stopped while waiting for the answer")

    def _readline(self) -> str | None:
        """One stripped line, or None when none is complete yet (after the port's read timeout)."""
        assert self._port is not None
        while True:
            for end in (b"\r", b"\n"):
                if end in self._buf:
                    raw, self._buf = self._buf.split(end, 1)
                    line = raw.decode("latin-1").strip()
                    return line if line and len(line) <= MAX_LINE else None
            if len(self._buf) > MAX_LINE:
                self._buf = b""  # a line without end: noise
            chunk = self._port.read(max(1, self._port.in_waiting))
            if not chunk:
                return None
            self._buf += chunk
