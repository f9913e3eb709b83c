"""An emulated EASEL ES920LR on a pseudo-terminal: boot prompt, processor-mode commands, operation mode.

It answers as the module does (``OK`` / ``NG nnn``), keeps ``save``-d settings across resets and
replugs as the module's flash does, and in operation mode counts every host line as a transmission
(``sent``) instead of a command: the trap a gateway that configures a running module falls into.
Frames heard over the air reach the host only in operation mode on the channel, SF, bandwidth and
PAN ID the field transmits on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgegw.radio.emulator import PtyModule
from edgegw.radio.es920lr import PROMPT, READY


@dataclass
class Es920Settings:
    node: int = 2
    bw: int = 4
    sf: int = 7
    channel: int = 1
    panid: str = "0001"
    ownid: str = "0001"
    rcvid: int = 2
    rssi: int = 2


@dataclass
class Es920Air:
    """What the field transmits on."""

    bw: int = 4
    sf: int = 7
    channel: int = 1
    panid: str = "0001"


_VALID = {
    "node": lambda v: int(v) if v in ("1", "2") else None,
    "bw": lambda v: int(v) if v in ("3", "4", "5", "6") else None,
    "sf": lambda v: int(v) if v.isdigit() and 7 <= int(v) <= 12 else None,
    "channel": lambda v: int(v) if v.isdigit() and 1 <= int(v) <= 15 else None,
    "panid": lambda v: v.upper() if len(v) == 4 and all(c in "0123456789ABCDEFabcdef" for c in v) else None,
    "ownid": lambda v: v.upper() if len(v) == 4 and all(c in "0123456789ABCDEFabcdef" for c in v) else None,
    "rcvid": lambda v: int(v) if v in ("1", "2") else None,
    "rssi": lambda v: int(v) if v in ("1", "2") else None,
}


@dataclass
class Es920lrEmulator(PtyModule):
    """An ES920LR behind a pty whose slave is reachable at ``link``."""

    air: Es920Air = field(default_factory=Es920Air)
    flash: Es920Settings = field(default_factory=Es920Settings)
    settings: Es920Settings = field(default_factory=Es920Settings)
    state: str = "boot"  # boot (prompt shown) | processor (takes commands) | operation (host lines go on air)
    sent: list[str] = field(default_factory=list)
    banner = PROMPT

    def power_on(self) -> None:
        self.settings = replace(self.flash)
        self.state = "boot"

    def boot_into_operation(self) -> None:
        """The module was started before the gateway opened its port (no prompt waiting)."""
        self.state = "operation"

    @property
    def configured(self) -> bool:
        s, a = self.settings, self.air
        return self.state == "operation" and (s.bw, s.sf, s.channel, s.panid) == (a.bw, a.sf, a.channel, a.panid)

    def receive(self, address: int, data: str, rssi: int = -70, snr: float = 0.0) -> bool:
        """A frame from sender id ``address`` arrives over the air; True if the module passed it to the host."""
        if not self.configured:
            return False
        s = self.settings
        prefix = (f"{max(-999, min(0, rssi)):04d}" if s.rssi == 1 else "") + (
            f"{s.panid}{address:04X}" if s.rcvid == 1 else "")
        return self.write_line(prefix + data)

    def answer(self, cmd: str) -> str:
        self.commands.append(cmd)
        if self.state == "boot":
            if cmd.strip() == "2":
                self.state = "processor"
            return PROMPT if not cmd.strip() else ""
        if self.state == "operation":
            if not cmd:
                return "NG 100"  # an empty frame is not sent
            self.sent.append(cmd)  # the module transmits what the host writes
            return "OK"
        name, _, value = cmd.strip().partition(" ")
        if name == "save":
            self.flash = replace(self.settings)
            return "OK"
        if name == "start":
            self.state = "operation"
            return f"OK\r\n{READY}"
        if name not in _VALID:
            return "NG 001"
        parsed = _VALID[name](value.strip())
        if parsed is None:
            return "NG 002"
        setattr(self.settings, name, parsed)
        return "OK"
