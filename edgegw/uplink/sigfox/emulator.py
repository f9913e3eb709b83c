"""An emulated Wisol WSSFM10R3 Sigfox module (RC3) on a pty, for the tests and the demo.

It answers the AT commands edgegw uses as the module does: ``AT`` -> ``OK``; ``AT$I=10`` -> the
device id and ``AT$I=11`` -> the PAC (a bare line each); ``AT$SF=<hex>`` -> ``OK`` after the time a
send takes; ``AT$SF=<hex>,1`` -> ``OK`` then, after the downlink window, ``RX=xx xx xx xx xx xx xx xx``
(or ``ERR_SFX_ERR_SEND_FRAME_WAIT_TIMEOUT`` when the backend answers nothing); anything malformed ->
``ERROR``. What "went over the air" is kept in :attr:`SigfoxEmulator.sent` with its time, as the
Sigfox backend would receive it. Tests script failures with :attr:`SigfoxEmulator.fail_sends` and
garbage with :meth:`write_line`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from edgegw.radio.emulator import PtyModule

_SEND = re.compile(r"AT\$SF=([0-9A-Fa-f]*)(,[01])?")
NO_DOWNLINK = "ERR_SFX_ERR_SEND_FRAME_WAIT_TIMEOUT"


@dataclass
class SigfoxEmulator(PtyModule):
    device_id: str = "0042ABCD"
    pac: str = "A1B2C3D4E5F60718"
    send_delay: float = 0.3  # s a send takes (a real one: about 6, three frames at 100 bit/s)
    downlink_delay: float = 0.5  # s from OK to RX= (a real one: about 25 to 50)
    downlink: bytes | None = bytes.fromhex("0102030405060708")  # what the backend answers; None: nothing
    fail_sends: list[str] = field(default_factory=list)  # the replies of the next sends, instead of OK
    sent: list[tuple[float, bytes]] = field(default_factory=list)  # (wall time, payload) over the air
    downlinks: int = 0

    def take(self, chunk: bytes) -> None:
        """Command lines from the host: the Wisol takes \r alone (or \r\n) as the end of one."""
        self._inbuf += chunk
        while (end := min((i for i in (self._inbuf.find(b"\r"), self._inbuf.find(b"\n")) if i >= 0), default=-1)) >= 0:
            line, self._inbuf = self._inbuf[:end], self._inbuf[end + 1:]
            if not line:  # the \n of a \r\n
                continue
            reply = self.answer(line.decode("latin-1"))
            if reply:
                self._write(reply)

    def answer(self, cmd: str) -> str:
        self.commands.append(cmd)
        if not cmd:
            return ""
        if cmd == "AT" or cmd in ("AT$P=1", "AT$RC"):
            return "OK"
        if cmd == "AT$I=10":
            return self.device_id
        if cmd == "AT$I=11":
            return self.pac
        if cmd == "AT$T?":
            return "251"  # tenths of a degree
        m = _SEND.fullmatch(cmd)
        if m is None or len(m.group(1)) % 2 or len(m.group(1)) > 24:
            return "ERROR"
        if self._stop.wait(self.send_delay):  # the module is busy on the air meanwhile
            return ""
        if self.fail_sends:
            return self.fail_sends.pop(0)
        self.sent.append((time.time(), bytes.fromhex(m.group(1))))
        if m.group(2) != ",1":
            return "OK"
        self._write("OK")
        if self._stop.wait(self.downlink_delay):
            return ""
        if self.downlink is None:
            return NO_DOWNLINK
        self.downlinks += 1
        return "RX=" + " ".join(f"{b:02X}" for b in self.downlink)
