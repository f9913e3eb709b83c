"""An emulated Interplan IM920sL on a pseudo-terminal: four-letter commands, flash, BUSY, received lines.

Settings written between ``ENWR`` and ``DSWR`` survive a reset or replug (flash); others are lost.
``busy_for`` makes the next commands answer ``NG`` as a module does while its BUSY pin is high.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgegw.radio.emulator import PtyModule


@dataclass
class Im920Settings:
    node: str = "0000"
    channel: int = 1
    io: str = "ECIO"


@dataclass
class Im920slEmulator(PtyModule):
    """An IM920sL behind a pty whose slave is reachable at ``link``."""

    air_channel: int = 1  # what the field transmits on
    flash: Im920Settings = field(default_factory=Im920Settings)
    settings: Im920Settings = field(default_factory=Im920Settings)
    writable: bool = False
    busy_for: int = 0  # commands still answered NG, as while BUSY is high
    sent: list[str] = field(default_factory=list)

    def power_on(self) -> None:
        self.settings = replace(self.flash)
        self.writable = False

    @property
    def configured(self) -> bool:
        return self.settings.channel == self.air_channel

    def receive(self, address: int, data: str, rssi: int = -70, snr: float = 0.0) -> bool:
        """A frame from node ``address`` arrives; ``data`` is the text a sensor sent (ECIO) or its hex (DCIO)."""
        if not self.configured:
            return False
        if self.settings.io == "DCIO":
            data = ",".join(data[i:i + 2] for i in range(0, len(data), 2))
        return self.write_line(f"00,{address:04X},{rssi & 0xFF:02X}:{data}")

    def answer(self, cmd: str) -> str:
        self.commands.append(cmd)
        if not cmd:
            return ""
        if self.busy_for > 0:
            self.busy_for -= 1
            return "NG"
        name, _, value = cmd.strip().partition(" ")
        value = value.strip()
        if name in ("ENWR", "DSWR"):
            if name == "DSWR" and self.writable:
                self.flash = replace(self.settings)
            self.writable = name == "ENWR"
            return "OK"
        if name in ("ECIO", "DCIO"):
            self.settings.io = name
        elif name == "STNN" and len(value) == 4 and all(c in "0123456789ABCDEFabcdef" for c in value):
            self.settings.node = value.upper()
        elif name == "STCH" and value.isdigit() and 1 <= int(value) <= 29:
            self.settings.channel = int(value)
        elif name in ("TXDA", "TXDU"):
            self.sent.append(value)
        elif name == "RDNN":
            return self.settings.node
        else:
            return "NG"
        if self.writable:
            self.flash = replace(self.settings)
        return "OK"
