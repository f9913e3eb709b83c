"""EASEL ES920LR 920 MHz LoRa modules (技適 certified), in ASCII processor mode.

At power-up the module asks ``Select Mode [1.terminal or 2.processor]``; the gateway answers ``2``
and then sends ``<name> <value>`` commands, each answered ``OK`` or ``NG <nnn>``; ``save`` keeps
the settings in flash and ``start`` enters operation mode. In operation mode every line the host
writes is *transmitted*, so the gateway never sends a command there: a port opened on a module that
is already operating (no prompt within BOOT_WAIT) is used with the settings the module saved.
The prompt seen again later means the module reset: it is answered and configured again.

Received line with ``rssi 1`` and ``rcvid 1``: ``<RSSI, 4 chars e.g. -070><PAN ID 4 hex><sender ID
4 hex><payload>``, sliced by position (the fields have no separators).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import serial
from pydantic import Field, field_validator, model_validator

from edgegw.config.base import _Section
from edgegw.model import Frame, Reject
from edgegw.radio import Emit, ReadTurn
from edgegw.radio.airtime import SHORT_SENSE_MAX_S, time_on_air
from edgegw.radio.limits import FrameLimits, text_chars, text_payload
from edgegw.radio.serial_line import LineModule, LineReader, Reply, decode_payload, raw

PROMPT = "Select Mode [1.terminal or 2.processor]"
READY = "----- operation mode is ready -----"
BOOT_WAIT = 1.5  # s the gateway listens for the boot prompt after opening the port

# NG <nnn> meanings (EASEL ES920LR command manual, as carried by hideakitai/ES920 Constants.h).
ERRORS = {
    1: "undefined command",
    2: "invalid value for this command",
    3: "flash erase failed",
    4: "flash write failed",
    5: "flash read failed",
    100: "send data length out of range",
    101: "send failed",
    102: "carrier sense: the channel is busy (ARIB STD-T108 listen-before-talk)",
    103: "no ACK from the destination",
}

BANDWIDTH_CODES = {62.5: 3, 125: 4, 250: 5, 500: 6}
BAUDRATE_CODES = {9600: 1, 19200: 2, 38400: 3, 57600: 4, 115200: 5}
# 125 kHz: channels 1-15 are 920.6-923.4 MHz in 0.2 MHz steps (datasheet). The other bandwidths'
# channel tables were not at hand: the same range is allowed, and the module's NG 002 says if not.
CHANNELS = range(1, 16)
PAYLOAD_MAX_CHARS = 50  # hideakitai/ES920 library constant (domain brief §2): unverified

_RX = re.compile(r"([-+0-9][0-9]{3})([0-9A-Fa-f]{4})([0-9A-Fa-f]{4})(.*)", re.DOTALL)


class Es920lrSource(_Section):
    """An EASEL ES920LR module on a serial port (processor mode, ASCII)."""

    type: Literal["es920lr"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description="serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...")
    simulate: Path | None = Field(None, description="field file: emulate the module on a pty instead of a port")
    baudrate: int = 115200
    node: Literal["coordinator", "end"] = Field("coordinator", description="the gateway is the coordinator")
    bandwidth_khz: float = 125
    spreading_factor: int = Field(7, ge=7, le=12)
    channel: int = Field(1, description="1-15: 920.6-923.4 MHz at 125 kHz")
    pan_id: str = Field("0001", pattern=r"^[0-9A-Fa-f]{4}$", description="4 hex digits, shared by the network")
    own_id: str = Field("0000", pattern=r"^[0-9A-Fa-f]{4}$", description="the gateway's own id, 4 hex digits")
    payload_encoding: Literal["hex", "base64", "text"] = "hex"

    @field_validator("bandwidth_khz")
    @classmethod
    def _known_bandwidth(cls, v: float) -> float:
        if v not in BANDWIDTH_CODES:
            raise ValueError(f"expected one of {sorted(BANDWIDTH_CODES)} kHz (the module's bw 3-6)")
        return v

    @field_validator("baudrate")
    @classmethod
    def _known_baudrate(cls, v: int) -> int:
        if v not in BAUDRATE_CODES:
            raise ValueError(f"the module's baudrate setting takes one of {list(BAUDRATE_CODES)}")
        return v

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, v: int) -> int:
        if v not in CHANNELS:
            raise ValueError(f"expected a channel {CHANNELS.start}-{CHANNELS.stop - 1} (920.6-923.4 MHz), e.g. 1")
        return v

    @model_validator(mode="after")
    def _rules(self) -> Es920lrSource:
        if (self.port is None) == (self.simulate is None):
            raise ValueError("set exactly one of port (a real module) or simulate (a field file for the emulator)")
        airtime = time_on_air(10, self.spreading_factor, self.bandwidth_khz)
        if self.node == "end" and airtime > SHORT_SENSE_MAX_S:
            # An end node transmits: above 0.4 s per frame ARIB STD-T108 needs 5 ms carrier sense.
            raise ValueError(f"a 10-byte frame takes {airtime * 1000:.0f} ms at SF{self.spreading_factor} and"
                             f" {self.bandwidth_khz:g} kHz, over the 0.4 s ARIB STD-T108 allows an end node after"
                             " short carrier sense: use a lower spreading_factor or a wider bandwidth_khz")
        return self

    def frame_limits(self) -> FrameLimits:
        """About 50 characters per frame (a driver library's constant: unverified without the
        module's manual), so a warning only; on-air framing unknown, so airtime counts the
        characters, at the chip's default coding rate 4/5 and an 8-symbol preamble (assumed)."""
        enc = self.payload_encoding
        return FrameLimits(
            text_payload(PAYLOAD_MAX_CHARS, enc), f"about {PAYLOAD_MAX_CHARS} characters per frame, the payload"
            f" {enc}-encoded; unverified without the module's manual", False,
            lambda n: time_on_air(text_chars(n, enc), self.spreading_factor, self.bandwidth_khz))

    def frequency_mhz(self) -> float:
        """Centre frequency of the channel at 125 kHz."""
        return 920.6 + 0.2 * (self.channel - 1)


def parse_line(line: str, source: str, encoding: str, wall: float, mono: float) -> Frame | Reject:
    """Parse one received line (RSSI, PAN ID and sender ID prefixed) into a Frame, or say why not."""
    m = _RX.fullmatch(line)
    if m is None:
        return Reject(source, "garbage", "not an ES920LR received line (RSSI, PAN ID, sender ID, data)", None, None,
                      raw(line), wall)
    address = int(m.group(3), 16)
    try:
        payload = decode_payload(m.group(4), encoding)
    except ValueError as exc:
        return Reject(source, f"bad_{encoding}", str(exc), address, None, raw(line), wall)
    return Frame(source, address, payload, float(int(m.group(1))), None, wall, mono)


class Es920lrRadio(LineModule):
    """A :class:`~edgegw.radio.Source` for one ES920LR module."""

    family: ClassVar[str] = "es920lr"
    errors: ClassVar[dict[int, str]] = ERRORS
    baudrates: ClassVar[tuple[int, ...]] = tuple(BAUDRATE_CODES)
    error_format: ClassVar[str] = "NG {}"
    config: Es920lrSource

    def __init__(self, config: Any, port: str, read_turn: ReadTurn | None = None):
        super().__init__(config, port, read_turn)
        self._saved = False  # this source saved its settings to the module's flash (a reload builds a new one)

    def commands(self) -> list[str]:
        c = self.config
        return [
            f"node {1 if c.node == 'coordinator' else 2}",
            f"bw {BANDWIDTH_CODES[c.bandwidth_khz]}",
            f"sf {c.spreading_factor}",
            f"channel {c.channel}",
            f"panid {c.pan_id.upper()}",
            f"ownid {c.own_id.upper()}",
            "rcvid 1",  # the sender's id before the data: the device's address
            "rssi 1",
            # Saved, so that a port reopened on a module that kept running (a daemon restart) finds
            # them; but once per source: a flapping USB cable or a module resetting on a weak supply
            # would write its flash at every reopen, and both set everything again anyway.
            *([] if self._saved else ["save"]),
            "start",
        ]

    def _command(self, port: serial.Serial, lines: LineReader, cmd: str, emit: Emit) -> None:
        super()._command(port, lines, cmd, emit)
        if cmd == "save":
            self._saved = True

    def greet(self, port: serial.Serial, lines: LineReader, emit: Emit, banner: str | None) -> bool:
        if banner is None:
            # The prompt of a module powered up with the USB plug went out before the port was open
            # (and pyserial flushes input on open). An empty line tells where the module is: at the
            # prompt it asks again; in operation mode an empty frame is refused (NG 100) and nothing
            # goes on the air. (Both replies unverified without hardware.)
            port.write(b"\r\n")
            deadline = time.monotonic() + BOOT_WAIT
            while (left := deadline - time.monotonic()) > 0 and (line := lines.readline(left)) is not None:
                kind = self.reply(line)
                if kind is not None and kind[0] == "reset":
                    banner = line
                    break
                if kind is not None:
                    break  # operating: its answer to the empty line
                if (event := self._route(line)) is not None:
                    emit([event])
            if banner is None:
                # Already in operation mode: a command now would go on the air, not to the module.
                self.log.warning("module is already operating; using the settings it saved", source=self.name,
                                 port=self.port)
                return False
        port.write(b"2\r\n")  # processor mode
        return True

    def reply(self, line: str) -> tuple[Reply, str] | None:
        if line == "OK":
            return ("ok", "")
        if line.startswith("NG"):
            return ("error", line[2:].strip())
        if line.strip() == PROMPT:
            return ("reset", line.strip())
        return None

    def parse(self, line: str, wall: float, mono: float) -> Frame | Reject | None:
        if line.strip() in ("", READY):
            return None
        return parse_line(line, self.name, self.config.payload_encoding, wall, mono)

    def configured_detail(self) -> dict[str, Any]:
        c = self.config
        return {"channel": c.channel, "mhz": round(c.frequency_mhz(), 1), "sf": c.spreading_factor,
                "bw_khz": c.bandwidth_khz}


def _source_type() -> Any:
    from edgegw.radio.registry import serial_family

    return serial_family(Es920lrSource, Es920lrRadio, "edgegw.radio.es920lr_emulator:Es920lrEmulator")


SOURCE_TYPE = _source_type()
