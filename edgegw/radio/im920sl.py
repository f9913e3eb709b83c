"""Interplan IM920sL 920 MHz modules (技適 certified).

Commands are four letters, answered ``OK`` or ``NG``: ``ENWR`` / ``DSWR`` allow and end writes to
flash, ``STNN`` sets the node number, ``STCH`` the channel, ``ECIO`` / ``DCIO`` choose text or hex
data. A busy module (its BUSY pin high: sending, or carrier sense) answers NG: the gateway waits a
moment and sends again. Settings go to flash, so a module that resets keeps them (it announces no
reset on the serial line).

Received line: ``00,<sender node, 4 hex>,<RSSI, 2 hex>:<data>``, e.g. ``00,0001,C6:hello``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from edgegw.config.base import _Section
from edgegw.model import Frame, Reject
from edgegw.radio.serial_line import LineModule, Reply, decode_payload, raw

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)  # 19200 default; the others unverified
CHANNELS = range(1, 30)  # STCH 01-29, 920.6 MHz + 0.2 MHz steps (unverified without the datasheet)
BUSY_PAUSE = 0.1  # s to let a busy module finish before a command is sent again

_RX = re.compile(r"([0-9A-Fa-f]{2}),([0-9A-Fa-f]{4}),([0-9A-Fa-f]{2}):(.*)", re.DOTALL)
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(,[0-9A-Fa-f]{2})*")


class Im920slSource(_Section):
    """An Interplan IM920sL module on a serial port."""

    type: Literal["im920sl"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    simulate: Path | None = Field(None, description="field file: emulate the module on a pty instead of a port")
    baudrate: int = 19200
    node: str = Field("0001", pattern=r"^[0-9A-Fa-f]{4}$", description="the gateway's node number, 4 hex digits")
    channel: int = Field(1, description="STCH 1-29")
    io: Literal["text", "hex"] = Field("text", description="text: ECIO, data as characters; hex: DCIO")
    payload_encoding: Literal["hex", "base64", "text"] = Field(
        "hex", description="how a sensor writes bytes as text (io = text only)")

    @field_validator("baudrate")
    @classmethod
    def _known_baudrate(cls, v: int) -> int:
        if v not in BAUDRATES:
            raise ValueError(f"expected one of {list(BAUDRATES)} (the module's default is 19200)")
        return v

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, v: int) -> int:
        if v not in CHANNELS:
            raise ValueError(f"expected a channel {CHANNELS.start}-{CHANNELS.stop - 1}, e.g. 1")
        return v

    @model_validator(mode="after")
    def _port_or_simulate(self) -> Im920slSource:
        if (self.port is None) == (self.simulate is None):
            raise ValueError("set exactly one of port (a real module) or simulate (a field file for the emulator)")
        return self


def rssi_dbm(byte: int) -> float:
    """The RSSI byte as dBm, read as a signed byte (0xC6 -> -58; conversion unverified without hardware)."""
    return float(byte - 256 if byte >= 128 else byte)


def parse_line(line: str, source: str, io: str, encoding: str, wall: float, mono: float) -> Frame | Reject:
    """Parse one received line ``00,<node>,<rssi>:<data>`` into a Frame, or say why not."""
    m = _RX.fullmatch(line)
    if m is None:
        return Reject(source, "garbage", "not an IM920sL received line (00,<node>,<rssi>:<data>)", None, None,
                      raw(line), wall)
    address, data = int(m.group(2), 16), m.group(4)
    try:
        if io == "hex":  # DCIO: bytes as hex, in pairs with or without commas between them
            if data and _HEX_PAIRS.fullmatch(data):
                data = data.replace(",", "")
            payload = decode_payload(data, "hex")
        else:
            payload = decode_payload(data, encoding)
    except ValueError as exc:
        return Reject(source, f"bad_{'hex' if io == 'hex' else encoding}", str(exc), address, None, raw(line), wall)
    return Frame(source, address, payload, rssi_dbm(int(m.group(3), 16)), None, wall, mono)


class Im920slRadio(LineModule):
    """A :class:`~edgegw.radio.Source` for one IM920sL module."""

    family: ClassVar[str] = "im920sl"
    baudrates: ClassVar[tuple[int, ...]] = BAUDRATES
    error_format: ClassVar[str] = "NG{}"
    config: Im920slSource

    def commands(self) -> list[str]:
        c = self.config
        return ["ENWR", f"STNN {c.node.upper()}", f"STCH {c.channel:02d}", "ECIO" if c.io == "text" else "DCIO",
                "DSWR"]

    def reply(self, line: str) -> tuple[Reply, str] | None:
        if line == "OK":
            return ("ok", "")
        if line == "NG":
            return ("error", "")
        return None

    def meaning(self, code: str) -> str:
        return "refused, or busy (BUSY high) every time it was sent"

    def before_retry(self, code: str) -> None:
        time.sleep(BUSY_PAUSE)  # NG while BUSY is high: let the module finish sending or sensing

    def parse(self, line: str, wall: float, mono: float) -> Frame | Reject | None:
        if line == "":
            return None
        return parse_line(line, self.name, self.config.io, self.config.payload_encoding, wall, mono)

    def configured_detail(self) -> dict[str, Any]:
        return {"channel": self.config.channel, "node": self.config.node}


def _source_type() -> Any:
    from edgegw.radio.registry import serial_family

    return serial_family(Im920slSource, Im920slRadio, "edgegw.radio.im920sl_emulator:Im920slEmulator")


SOURCE_TYPE = _source_type()
