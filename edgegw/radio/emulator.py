"""An emulated REYAX RYLR module on a pseudo-terminal, for the demo and the tests.

The gateway opens ``link`` (a symlink to the pty's slave side) with real pyserial, exactly as it
opens ``/dev/ttyUSB0``. The emulator answers AT commands as the module does (``+OK``, ``+ERR=n``,
queries) and writes ``+RCV=`` lines for frames "heard over the air" — but only while the gateway has
configured the same band, radio parameters and network id as the field transmits on, as a real
module would. :meth:`unplug` and :meth:`plug` make the port vanish and come back at the same path.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ModuleSettings:
    address: int = 0
    network_id: int = 18
    band: int = 915_000_000
    parameter: str = "9,7,1,12"
    cpin: str = ""
    mode: str = "0"


@dataclass
class Air:
    """What the field transmits on; a module configured otherwise hears nothing."""

    band: int = 920_600_000
    parameter: str = "9,7,1,12"
    network_id: int = 18


_SETTERS = {
    "ADDRESS": ("address", lambda v: int(v) if v.isdigit() and int(v) <= 65535 else None),
    "NETWORKID": ("network_id", lambda v: int(v) if v.isdigit() and (3 <= int(v) <= 15 or int(v) == 18) else None),
    "BAND": ("band", lambda v: int(v) if v.isdigit() and 862_000_000 <= int(v) <= 1_020_000_000 else None),
    "PARAMETER": ("parameter", lambda v: v if _valid_parameter(v) else None),
    "CPIN": ("cpin", lambda v: v if len(v) == 8 and all(c in "0123456789ABCDEFabcdef" for c in v) else None),
    "MODE": ("mode", lambda v: v if v in ("0", "1") else None),
}


def _valid_parameter(v: str) -> bool:
    parts = v.split(",")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return False
    sf, bw, cr, pre = map(int, parts)
    return 7 <= sf <= 12 and 7 <= bw <= 9 and 1 <= cr <= 4 and 4 <= pre <= 24


@dataclass
class PtyModule:
    """A serial module behind a pty whose slave is reachable at ``link``; subclasses answer its commands.

    A subclass implements :meth:`answer` (one command line in, the reply lines out), :meth:`power_on`
    (the settings a freshly powered module has) and sets ``banner`` (what it says at power-up, if anything).
    """

    link: Path
    commands: list[str] = field(default_factory=list)
    written: int = 0
    dropped: int = 0
    # The rate the module's UART is set to; None: any. A host whose port is set to another rate
    # gets no answer, as from a real module whose UART sees framing errors instead of commands.
    baudrate: int | None = None

    def __post_init__(self) -> None:
        self.link = Path(self.link)
        self._lock = threading.Lock()
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inbuf = b""  # host bytes not yet making a command

    # -- the port -------------------------------------------------------------------------------

    def plug(self) -> None:
        """Create the pty and point ``link`` at it (atomically, so a reader never sees no file)."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a UART is a byte pipe
        os.set_blocking(master, False)
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)
        with self._lock:
            self._master, self._slave = master, slave
        self.power_on()
        self._inbuf = b""
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=f"emulator:{self.link.name}", daemon=True)
        self._thread.start()
        if self.banner:
            self._write(self.banner)

    banner = ""  # what the module writes at power-up and after a reset

    def power_on(self) -> None:
        """Take the settings a freshly powered module has."""

    def reset(self) -> None:
        """The module restarts on its own (a brown-out, a watchdog): power-on settings, and its banner."""
        self.power_on()
        if self.banner:
            self._write(self.banner)

    def unplug(self) -> None:
        """Close the pty (the gateway's reads fail as with a pulled USB plug) and remove ``link``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
        self.link.unlink(missing_ok=True)

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def pending_bytes(self) -> int:
        """Bytes sent to the host that it has not read yet (still in the kernel's tty buffer)."""
        with self._lock:
            if self._slave is None:
                return 0
            return struct.unpack("i", fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0"))[0]

    def take_unread(self, quiet: float = 0.2) -> bytes:
        """Take the bytes sent to the host that it never read: what the kernel still held for it when
        the host died. Reads the slave side until nothing more comes for ``quiet`` seconds (the pty
        moves its backlog into the readable buffer a piece at a time, as that empties)."""
        with self._lock:
            slave = self._slave
            if slave is None:
                return b""
            os.set_blocking(slave, False)
            out = bytearray()
            try:
                while select.select([slave], [], [], quiet)[0]:
                    try:
                        out += os.read(slave, 65536)
                    except BlockingIOError:
                        continue
            finally:
                os.set_blocking(slave, True)
            return bytes(out)

    def write_line(self, text: str) -> bool:
        """Write any line to the host (tests use this for garbage). False if the host is not reading."""
        return self._write(text)

    def _write(self, text: str) -> bool:
        return self.write_bytes(text.encode("latin-1") + b"\r\n")

    def write_bytes(self, data: bytes) -> bool:
        """Write raw bytes to the host. False if the host is not reading (or the port is gone)."""
        deadline = time.monotonic() + 1.0
        with self._lock:
            while data:
                if self._master is None:
                    self.dropped += 1
                    return False
                try:
                    n = os.write(self._master, data)
                    data = data[n:]
                except OSError as exc:
                    # The tty buffer is full because nobody reads it (gateway dead): the module's UART
                    # buffer would overflow the same way.
                    if exc.errno not in (errno.EAGAIN, errno.EIO) or time.monotonic() > deadline:
                        self.dropped += 1
                        return False
                    select.select([], [self._master], [], 0.05)
            self.written += 1
            return True

    # -- commands ----------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            master = self._master
            if master is None:
                return
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO while nobody has the slave open; keep serving
                time.sleep(0.05)
                continue
            self.take(chunk)

    def host_baudrate_matches(self) -> bool:
        """Whether the host set its end of the line to the module's rate (a pty keeps the termios
        speed the host's pyserial set, as a UART would be clocked)."""
        with self._lock:
            slave = self._slave
            if self.baudrate is None or slave is None:
                return True
            return termios.tcgetattr(slave)[4] == getattr(termios, f"B{self.baudrate}")

    def take(self, chunk: bytes) -> None:
        """Bytes from the host: here, command lines, each answered (a binary module overrides this)."""
        if not self.host_baudrate_matches():
            return  # noise to the module at its own rate: no command, no answer
        self._inbuf += chunk
        while b"\n" in self._inbuf:
            line, self._inbuf = self._inbuf.split(b"\n", 1)
            reply = self.answer(line.rstrip(b"\r").decode("latin-1"))
            if reply:
                self._write(reply)

    def answer(self, cmd: str) -> str:
        """The module's reply to one command line (several lines joined by \\r\\n; "" for none)."""
        raise NotImplementedError


@dataclass
class RylrEmulator(PtyModule):
    """An RYLR998-like module behind a pty whose slave is reachable at ``link``."""

    air: Air = field(default_factory=Air)
    settings: ModuleSettings = field(default_factory=ModuleSettings)
    banner = "+READY"

    def power_on(self) -> None:
        self.settings = ModuleSettings()  # a freshly powered module has its defaults

    @property
    def configured(self) -> bool:
        """True while the gateway's settings let this module hear the field."""
        s = self.settings
        return (s.band, s.parameter, s.network_id, s.mode) == (self.air.band, self.air.parameter,
                                                               self.air.network_id, "0")

    # -- the air --------------------------------------------------------------------------------

    def receive(self, address: int, data: str, rssi: int = -60, snr: float = 9) -> bool:
        """A frame arrives over the air; True if the module passed it to the host."""
        if not self.configured:
            return False
        snr_text = f"{snr:g}"
        return self.write_line(f"+RCV={address},{len(data)},{data},{rssi},{snr_text}")

    # -- AT commands --------------------------------------------------------------------------

    def answer(self, cmd: str) -> str:
        """The module's reply to one command line."""
        self.commands.append(cmd)
        if not cmd:
            return ""
        if not cmd.startswith("AT"):
            return "+ERR=2"
        if cmd == "AT":
            return "+OK"
        body = cmd[3:] if cmd.startswith("AT+") else ""
        if body in ("RESET", "FACTORY"):
            self.settings = ModuleSettings()
            return "+RESET\r\n+READY" if body == "RESET" else "+FACTORY"
        if body == "VER?":
            return "+VER=RYLR998_EMULATED_1.0"
        name, sep, value = body.partition("=")
        if name.endswith("?") and name[:-1] in _SETTERS:
            attr = _SETTERS[name[:-1]][0]
            return f"+{name[:-1]}={getattr(self.settings, attr)}"
        if name not in _SETTERS:
            return "+ERR=4"
        if not sep:
            return "+ERR=4"
        attr, parse = _SETTERS[name]
        parsed = parse(value)
        if parsed is None:
            return "+ERR=18" if name == "PARAMETER" else "+ERR=4"
        setattr(self.settings, attr, parsed)
        return "+OK"
