"""REYAX RYLR896/RYLR998 LoRa modules: AT commands over a serial port.

Received frames arrive as ``+RCV=<addr>,<len>,<data>,<rssi>,<snr>``; the module says ``+READY``
after a power-up or reset. Everything else a serial line module does is :mod:`edgegw.radio.serial_line`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from edgegw.config.base import _Section
from edgegw.model import Frame, Reject
from edgegw.radio.airtime import time_on_air
from edgegw.radio.limits import ARIB_BAND_HZ, FrameLimits, text_chars, text_payload
from edgegw.radio.serial_line import (  # noqa: F401  (re-exported: the RYLR tests and the daemon's docs name them here)
    COMMAND_TIMEOUT,
    COMMAND_TRIES,
    CONFIGURE_TRIES,
    MAX_LINE,
    STRAY_ERROR_WINDOW,
    TURN_BYTES,
    LineModule,
    LineReader,
    ModuleReset,
    Reply,
    decode_payload,
    raw,
)

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

RYLR_BANDWIDTH_CODES = {7.8: 0, 10.4: 1, 15.6: 2, 20.8: 3, 31.25: 4, 41.7: 5, 62.5: 6, 125: 7, 250: 8, 500: 9}
SEND_MAX_CHARS = 240  # data characters one AT+SEND takes (REYAX AT command guides, +ERR=13)
RYLR_BAUDRATES = (300, 1200, 4800, 9600, 19200, 28800, 38400, 57600, 115200)

_TAIL = re.compile(r",(-?[0-9]{1,3}),(-?[0-9]{1,3}(?:\.[0-9]+)?)$")
_HEAD = re.compile(r"([0-9]{1,6}),([0-9]{1,6}),(.*)", re.DOTALL)  # ASCII digits only: noise has ² and ³ too


class RylrSource(_Section):
    """A REYAX RYLR896/RYLR998 module on a serial port (AT commands)."""

    type: Literal["rylr"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    simulate: Path | None = Field(None, description="field file: emulate the module on a pty instead of a port")
    baudrate: int = 115200
    address: int = Field(1, ge=0, le=65535)
    network_id: int = Field(18, ge=0, le=18)
    band: int = Field(920_600_000, ge=862_000_000, le=1_020_000_000, json_schema_extra={"unit": "Hz"})
    spreading_factor: int = Field(9, ge=7, le=12)
    bandwidth_khz: float = 125
    coding_rate: int = Field(1, ge=1, le=4)
    preamble: int = Field(12, ge=4, le=24)
    cpin: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{8}([0-9A-Fa-f]{24})?$")
    payload_encoding: Literal["hex", "base64", "text"] = "hex"

    @field_validator("bandwidth_khz")
    @classmethod
    def _known_bandwidth(cls, v: float) -> float:
        if v not in RYLR_BANDWIDTH_CODES:
            raise ValueError(f"expected one of {sorted(RYLR_BANDWIDTH_CODES)} kHz")
        return v

    @field_validator("baudrate")
    @classmethod
    def _known_baudrate(cls, v: int) -> int:
        if v not in RYLR_BAUDRATES:
            raise ValueError(f"the module's AT+IPR takes one of {list(RYLR_BAUDRATES)} (default 115200)")
        return v

    @field_validator("network_id")
    @classmethod
    def _known_network_id(cls, v: int) -> int:
        if v == 17:  # AT command guides: RYLR896 takes 0-16, RYLR998 3-15 or 18
            raise ValueError("neither module takes 17: RYLR896 takes 0-16, RYLR998 3-15 or 18 (its default)")
        return v

    @model_validator(mode="after")
    def _port_or_simulate(self) -> RylrSource:
        if (self.port is None) == (self.simulate is None):
            raise ValueError("set exactly one of port (a real module) or simulate (a field file for the emulator)")
        return self

    def frame_limits(self) -> FrameLimits:
        """AT+SEND carries at most 240 characters (REYAX AT command guides: +ERR=13 beyond), the
        payload written as ``payload_encoding``; on air they are about 8 bytes more (vendor note).
        ARIB STD-T108 applies where the band is Japan's 920 MHz band."""
        enc = self.payload_encoding
        arib = ARIB_BAND_HZ[0] <= self.band <= ARIB_BAND_HZ[1]
        return FrameLimits(
            text_payload(SEND_MAX_CHARS, enc), f"AT+SEND takes at most {SEND_MAX_CHARS} characters, the payload"
            f" {enc}-encoded", True,
            (lambda n: time_on_air(text_chars(n, enc) + 8, self.spreading_factor, self.bandwidth_khz,
                                   self.coding_rate, self.preamble)) if arib else None)

    def at_parameter(self) -> str:
        """The AT+PARAMETER argument: SF, bandwidth code, coding rate, preamble."""
        return f"{self.spreading_factor},{RYLR_BANDWIDTH_CODES[self.bandwidth_khz]},{self.coding_rate},{self.preamble}"


def parse_rcv(line: str, source: str, encoding: str, wall: float, mono: float) -> Frame | Reject:
    """Parse one ``+RCV=`` line (latin-1 text, no line ending) into a Frame, or say why not."""
    head = _HEAD.fullmatch(line, 5)  # address, length, then data that may itself contain commas
    if head is None:
        return Reject(source, "garbage", "malformed +RCV line", None, None, raw(line), wall)
    address, length, rest = int(head.group(1)), int(head.group(2)), head.group(3)
    data, tail = rest[:length], _TAIL.fullmatch(rest[length:])
    if tail is None or len(data) != length:
        return Reject(source, "wrong_length", f"declared {length} bytes, line does not match", address, None,
                      raw(line), wall)
    try:
        payload = decode_payload(data, encoding)
    except ValueError as exc:
        return Reject(source, f"bad_{encoding}", str(exc), address, None, raw(line), wall)
    return Frame(source, address, payload, float(tail.group(1)), float(tail.group(2)), wall, mono)


class RylrRadio(LineModule):
    """A :class:`~edgegw.radio.Source` for one RYLR module."""

    family: ClassVar[str] = "rylr"
    errors: ClassVar[dict[int, str]] = ERRORS
    baudrates: ClassVar[tuple[int, ...]] = RYLR_BAUDRATES
    error_format: ClassVar[str] = "+ERR={}"
    config: RylrSource

    def commands(self) -> list[str]:
        c = self.config
        cmds = ["AT", f"AT+ADDRESS={c.address}", f"AT+NETWORKID={c.network_id}", f"AT+BAND={c.band}",
                f"AT+PARAMETER={c.at_parameter()}"]
        if c.cpin:
            cmds.append(f"AT+CPIN={c.cpin}")
        return cmds

    def reply(self, line: str) -> tuple[Reply, str] | None:
        if line == "+OK":
            return ("ok", "")
        if line.startswith("+ERR="):
            return ("error", line[5:])
        if line == "+READY":
            return ("reset", line)
        return None

    def parse(self, line: str, wall: float, mono: float) -> Frame | Reject | None:
        if line.startswith("+RCV="):
            return parse_rcv(line, self.name, self.config.payload_encoding, wall, mono)
        if line == "":
            return None
        return Reject(self.name, "garbage", "line is not a module reply", None, None, raw(line), wall)

    def configured_detail(self) -> dict[str, Any]:
        return {"band": self.config.band, "parameter": self.config.at_parameter()}
