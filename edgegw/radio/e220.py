"""Ebyte E220-900T22S(JP) 920 MHz LoRa modules (技適 certified), in transparent mode.

The module passes raw bytes: it adds no delimiter, and with register 05H bit 7 it appends one RSSI
byte (dBm = b - 256) after each packet. So the sensors frame what they send::

    E2 20 | n | sender address (2 bytes, big-endian) | n payload bytes | CRC-16/CCITT-FALSE (2 bytes)

over the length byte, address and payload. Length and CRC, not UART gaps: on the Pi the gap between
two packets is blurred by the USB-serial adapter's latency timer and the kernel's tty buffer (two
packets can come in one read, one packet in two), while a CRC tells a frame from noise wherever
the bytes fall and lets the reader resynchronise on the next magic. A quiet gap is used only to
give up on a frame left incomplete.

Configuration: M0 = M1 = 1 selects mode 3 (UART fixed at 9600 8N1); ``C0 00 06 <6 registers>``
writes them to flash and the module echoes them as ``C1 00 06 ...``; ``C1 00 06`` reads them back
to verify; M0 = M1 = 0 returns to normal mode. AUX low means busy (mode change, sending, carrier
sense). The mode pins and AUX are GPIOs behind :class:`ModePins`, so tests run without a Pi.
"""

from __future__ import annotations

import select
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import serial
import structlog
from pydantic import Field, ValidationInfo, field_validator, model_validator

from edgegw.config.base import _Section
from edgegw.errors import ModuleError
from edgegw.model import Frame, Reject
from edgegw.radio import Emit, ReadTurn, SourceState, Turns, wait_readable
from edgegw.radio.airtime import time_on_air
from edgegw.radio.limits import FrameLimits
from edgegw.radio.serial_line import TURN_BYTES, run_port

MAGIC = b"\xe2\x20"
OVERHEAD = 7  # magic, length, address, CRC
PACKET_MAX = 200  # bytes the module sends per packet (03H bits 7-6 = 00)
MAX_PAYLOAD = PACKET_MAX - OVERHEAD
CONFIG_BAUD = 9600  # mode 3 talks at 9600 8N1, whatever 02H says
AUX_TIMEOUT = 1.0  # s for AUX to come high after a mode change
REPLY_TIMEOUT = 1.0
QUIET = 0.5  # s without bytes after which an incomplete frame is given up
RAW_KEPT = 256  # bytes of a rejected stretch kept for diagnosis

BAUD_CODES = {1200: 0, 2400: 1, 4800: 2, 9600: 3, 19200: 4, 38400: 5, 57600: 6, 115200: 7}  # 02H bits 7-5
BANDWIDTH_CODES = {125: 0, 250: 1, 500: 2}  # 02H bits 1-0
# Per bandwidth: the highest SF (02H bits 4-2 = SF - 5) and channel (04H), from the JP module's
# parameter table (Akiba-8ker/LoRaDocs param.md; not checked against Ebyte's own manual).
MAX_SF = {125: 9, 250: 10, 500: 11}
MAX_CHANNEL = {125: 37, 250: 36, 500: 30}

log = structlog.get_logger("edgegw.radio.e220")


class E220Source(_Section):
    """An E220-900T22S(JP) on a serial port, its M0/M1/AUX on the Pi's GPIO."""

    type: Literal["e220"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description="serial device, e.g. /dev/ttyS0 or /dev/ttyUSB0")
    simulate: Path | None = Field(None, description="field file: emulate the module on a pty instead of a port")
    baudrate: int = 9600
    m0_pin: int = Field(23, ge=0, le=27, description="BCM number of the GPIO wired to M0")
    m1_pin: int = Field(24, ge=0, le=27, description="BCM number of the GPIO wired to M1")
    aux_pin: int = Field(25, ge=0, le=27, description="BCM number of the GPIO wired to AUX")
    mode_pins: bool = Field(True, description="false: M0/M1 tied to normal mode and AUX not wired (e.g. a USB"
                            " board with jumpers): the gateway cannot configure the module, which must already"
                            " hold these settings, the RSSI byte (05H bit 7) on")
    address: int = Field(0, ge=0, le=0xFFFF, description="the module's own address (00H/01H)")
    bandwidth_khz: int = 125  # before channel and SF: their ranges depend on it
    channel: int = Field(0, ge=0, description="0-37 at 125 kHz: 920.6 + 0.2 n MHz")
    spreading_factor: int = Field(9, ge=5, le=11)

    @field_validator("baudrate")
    @classmethod
    def _known_baudrate(cls, v: int) -> int:
        if v not in BAUD_CODES:
            raise ValueError(f"expected one of {list(BAUD_CODES)} (02H bits 7-5)")
        return v

    @field_validator("bandwidth_khz")
    @classmethod
    def _known_bandwidth(cls, v: int) -> int:
        if v not in BANDWIDTH_CODES:
            raise ValueError(f"expected one of {list(BANDWIDTH_CODES)} kHz")
        return v

    @field_validator("channel")
    @classmethod
    def _channel_for_bandwidth(cls, v: int, info: ValidationInfo) -> int:
        bw = info.data.get("bandwidth_khz")
        if bw in MAX_CHANNEL and v > MAX_CHANNEL[bw]:
            raise ValueError(f"at {bw} kHz the module takes channels 0-{MAX_CHANNEL[bw]} (920.6 + 0.2 n MHz)")
        return v

    @field_validator("spreading_factor")
    @classmethod
    def _sf_for_bandwidth(cls, v: int, info: ValidationInfo) -> int:
        bw = info.data.get("bandwidth_khz")
        if bw in MAX_SF and v > MAX_SF[bw]:
            raise ValueError(f"at {bw} kHz the module takes SF5-{MAX_SF[bw]}")
        return v

    @model_validator(mode="after")
    def _rules(self) -> E220Source:
        if (self.port is None) == (self.simulate is None):
            raise ValueError("set exactly one of port (a real module) or simulate (a field file for the emulator)")
        if self.mode_pins and len({self.m0_pin, self.m1_pin, self.aux_pin}) < 3:
            raise ValueError("m0_pin, m1_pin and aux_pin must be three different GPIOs")
        return self

    def frame_limits(self) -> FrameLimits:
        """The gateway's deframer takes at most MAX_PAYLOAD bytes: 200-byte packets as register 03H is
        written here (from the JP module's parameter table, not Ebyte's manual), less 7 of the
        sensors' framing. Airtime assumes coding rate 4/5 and an 8-symbol preamble (unverified)."""
        return FrameLimits(
            MAX_PAYLOAD, f"{PACKET_MAX}-byte packets as the gateway sets register 03H, less {OVERHEAD} of framing",
            True, lambda n: time_on_air(n + OVERHEAD, self.spreading_factor, self.bandwidth_khz))

    def frequency_mhz(self) -> float:
        """The channel's frequency (channel 0 is 920.6 MHz, 0.2 MHz apart)."""
        return round(920.6 + 0.2 * self.channel, 1)

    def registers(self) -> bytes:
        """Registers 00H-05H: address, UART and air rate, packet size and power, channel, RSSI byte on."""
        air = (self.spreading_factor - 5) << 2 | BANDWIDTH_CODES[self.bandwidth_khz]
        return bytes([self.address >> 8, self.address & 0xFF, BAUD_CODES[self.baudrate] << 5 | air,
                      0b0000_0001,  # 200-byte packets, no ambient RSSI, 13 dBm
                      self.channel,
                      0b1000_0000])  # append the RSSI byte; transparent (not fixed) mode


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF): cheap on a sensor's MCU, catches burst errors."""
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = (crc << 1 ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def encode_frame(address: int, payload: bytes) -> bytes:
    """What a sensor sends through its E220: the framing above."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"at most {MAX_PAYLOAD} payload bytes fit one packet")
    body = bytes([len(payload)]) + address.to_bytes(2, "big") + payload
    return MAGIC + body + crc16(body).to_bytes(2, "big")


class Deframer:
    """Turns the module's byte stream into Frames, and whatever is not a frame into Rejects."""

    def __init__(self, source: str, rssi_byte: bool = True):
        self.source = source
        self.rssi_byte = rssi_byte
        self.buf = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self.buf)

    def feed(self, data: bytes, wall: float, mono: float) -> list[Frame | Reject]:
        """The frames and rejects ``data`` completes; an incomplete frame waits for more."""
        self.buf += data
        out: list[Frame | Reject] = []
        buf = self.buf
        while buf:
            at = buf.find(MAGIC)
            if at != 0:
                keep = 1 if at < 0 and buf[-1] == MAGIC[0] else 0  # the first byte of a magic yet to come
                end = len(buf) - keep if at < 0 else at
                if end:
                    out.append(self._reject("garbage", f"{end} bytes outside any frame", bytes(buf[:end]), wall))
                    del buf[:end]
                if at < 0:
                    break
                continue
            if len(buf) < 3:
                break
            n = buf[2]
            if n > MAX_PAYLOAD:
                out.append(self._reject("bad_length", f"declared {n} bytes, at most {MAX_PAYLOAD} fit", bytes(buf[:3]),
                                        wall))
                del buf[:1]  # resynchronise on the next magic
                continue
            total = OVERHEAD + n + (1 if self.rssi_byte else 0)
            if len(buf) < total:
                break
            body, crc = bytes(buf[2:5 + n]), int.from_bytes(buf[5 + n:7 + n], "big")
            if crc16(body) != crc:
                out.append(self._reject("bad_crc", "CRC does not match", bytes(buf[:total]), wall))
                del buf[:1]  # the real frame may start inside this one
                continue
            rssi = float(buf[7 + n] - 256) if self.rssi_byte else None
            out.append(Frame(self.source, int.from_bytes(body[1:3], "big"), body[3:], rssi, None, wall, mono))
            del buf[:total]
        return out

    def flush(self, wall: float, mono: float) -> list[Frame | Reject]:
        """After a quiet gap: give up on the incomplete frame (up to the next magic), read what follows."""
        out: list[Frame | Reject] = []
        while self.buf:
            cut = self.buf.find(MAGIC, 1)
            cut = len(self.buf) if cut < 0 else cut
            head, rest = bytes(self.buf[:cut]), bytes(self.buf[cut:])
            out.append(self._reject("truncated", "frame incomplete when the line went quiet", head, wall))
            self.buf.clear()
            out += self.feed(rest, wall, mono)
        return out

    def _reject(self, reason: str, detail: str, raw: bytes, wall: float) -> Reject:
        return Reject(self.source, reason, detail, None, None, raw[:RAW_KEPT], wall)


class ModePins(Protocol):
    """The module's M0/M1 inputs and AUX output, wherever they are wired."""

    def set_mode(self, mode: int) -> None:
        """Mode 0-3: M0 = bit 0, M1 = bit 1."""

    def aux_ready(self) -> bool:
        """True while AUX is high (the module is idle)."""


class GpioModePins:
    """M0/M1/AUX on the Raspberry Pi's GPIO (RPi.GPIO, the ``[pi]`` extra)."""

    def __init__(self, m0: int, m1: int, aux: int):
        try:
            import RPi.GPIO as gpio
        except ImportError:
            raise ModuleError("RPi.GPIO is not installed: the E220's mode pins need pip install 'edgegw[pi]'") from None
        self.gpio, self.m0, self.m1, self.aux = gpio, m0, m1, aux
        gpio.setmode(gpio.BCM)
        gpio.setwarnings(False)
        gpio.setup(m0, gpio.OUT)
        gpio.setup(m1, gpio.OUT)
        gpio.setup(aux, gpio.IN)

    def set_mode(self, mode: int) -> None:
        self.gpio.output(self.m0, mode & 1)
        self.gpio.output(self.m1, mode >> 1 & 1)

    def aux_ready(self) -> bool:
        return bool(self.gpio.input(self.aux))


class E220Radio:
    """A :class:`~edgegw.radio.Source` for one E220-900T22S(JP)."""

    family: ClassVar[str] = "e220"

    def __init__(self, config: E220Source, port: str, read_turn: ReadTurn | None = None,
                 pins: ModePins | None = None):
        self.config = config
        self.name = config.name
        self.port = port
        self.read_turn = read_turn or ReadTurn()
        self.pins = pins
        self.log = log

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read frames until ``stop``; reopen the port with a backoff when it fails."""
        run_port(self, self.config.baudrate, self._serve, emit, stop)

    def check(self) -> bool:
        """Open the port once and configure the module as a start does, registers read back: for
        ``edgegw doctor``, never while the daemon holds the port. False where the mode pins are not
        wired (the module cannot be asked); ModuleError (or pyserial's SerialException) says what
        went wrong."""
        if not self.config.mode_pins:
            return False
        with serial.Serial(self.port, self.config.baudrate, timeout=0.2) as port:
            self._configure(port)
        return True

    def _serve(self, port: serial.Serial, emit: Emit, stop: threading.Event, up: Any) -> None:
        if self.config.mode_pins:
            self._configure(port)
        else:
            self.log.warning("mode pins not wired: using the settings the module holds", source=self.name,
                             port=self.port)
        emit([SourceState(self.name, "receiving", self.port)])
        self.log.info("radio configured", source=self.name, port=self.port, channel=self.config.channel,
                      mhz=self.config.frequency_mhz(), sf=self.config.spreading_factor)
        up()
        deframer = Deframer(self.name)
        turns = Turns(self.read_turn, emit, stop)
        while not stop.is_set():
            # An idle module is waited on until a byte or the stop; a frame begun, QUIET at most.
            if wait_readable(port.fileno(), stop, QUIET if deframer.pending else None):
                turns.take(lambda: deframer.feed(_available(port), time.time(), time.monotonic()))
            elif deframer.pending:
                turns.take(lambda: deframer.flush(time.time(), time.monotonic()))

    def _configure(self, port: serial.Serial) -> None:
        """Mode 3 (the GPIO mode pins set up the first time), write the registers to flash where they
        differ, read them back, mode 0. ModuleError if any step fails."""
        want = self.config.registers()
        if self.pins is None:
            self.pins = GpioModePins(self.config.m0_pin, self.config.m1_pin, self.config.aux_pin)
        self._mode(3)
        port.baudrate = CONFIG_BAUD
        port.reset_input_buffer()
        try:
            port.write(b"\xc1\x00\x06")  # first read: a module not in mode 3 (or not there) answers nothing
            before = _read_exact(port, 9)
            if before[:3] != b"\xc1\x00\x06":
                raise ModuleError(f"{self.port}: the module did not answer in configuration mode ({_hex(before)}):"
                                  " check the M0/M1 wiring")
            if before[3:] != want:  # written only when they differ: every reopen would wear the flash
                port.write(b"\xc0\x00\x06" + want)
                echo = _read_exact(port, 9)
                if echo[:3] == b"\xff\xff\xff":
                    raise ModuleError(f"{self.port}: the module refused the register write (FF FF FF)")
                port.write(b"\xc1\x00\x06")
                after = _read_exact(port, 9)
                if after[3:] != want:
                    raise ModuleError(f"{self.port}: registers read back {_hex(after[3:])}, wrote {_hex(want)}")
        finally:
            self._mode(0)
            port.baudrate = self.config.baudrate
        port.reset_input_buffer()  # what came at 9600 is noise at the working rate

    def _mode(self, mode: int) -> None:
        assert self.pins is not None
        self.pins.set_mode(mode)
        deadline = time.monotonic() + AUX_TIMEOUT
        time.sleep(0.002)  # AUX falls within a few ms of a mode change
        while not self.pins.aux_ready():
            if time.monotonic() > deadline:
                raise ModuleError(f"{self.port}: AUX stayed low after switching to mode {mode} (module busy or"
                                  " AUX not wired)")
            time.sleep(0.005)


def _available(port: serial.Serial) -> bytes:
    out = bytearray()
    while len(out) < TURN_BYTES and select.select([port.fileno()], [], [], 0)[0]:
        out += port.read(max(1, min(port.in_waiting, TURN_BYTES - len(out))))
    return bytes(out)


def _read_exact(port: serial.Serial, n: int) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + REPLY_TIMEOUT
    while len(out) < n and time.monotonic() < deadline:
        out += port.read(n - len(out))
    if len(out) < n:
        raise ModuleError(f"no complete reply from the module within {REPLY_TIMEOUT:g} s (got {_hex(bytes(out))})")
    return bytes(out)


def _hex(b: bytes) -> str:
    return b.hex(" ").upper() or "nothing"


def _build(config: E220Source, port: str | None, read_turn: ReadTurn) -> E220Radio:
    assert port is not None
    pins = None
    if config.simulate is not None:
        from edgegw.radio.e220_emulator import pins_of

        pins = pins_of(port)
    return E220Radio(config, port, read_turn, pins)


def _emulator(config: Any, link: Path) -> Any:
    from edgegw.radio.e220_emulator import E220Emulator

    if config is None:  # another process's module (edgegw simulate): no pins to switch it, so set up beforehand
        return E220Emulator(link, flash=bytearray(STANDALONE.registers()))
    return E220Emulator(link)


# What `edgegw simulate --module e220` emulates: a module with M0/M1 tied to normal mode, written
# beforehand with these settings (the defaults, as in configs/e220.toml); its gateway sets mode_pins = false.
STANDALONE = E220Source(type="e220", name="e220", port="-", mode_pins=False)


def _problems(config: E220Source) -> list[str]:
    if config.simulate is not None or not config.mode_pins or "RPi.GPIO" in sys.modules:
        return []
    try:
        import importlib.util

        found = importlib.util.find_spec("RPi.GPIO") is not None
    except (ImportError, ValueError):
        found = False
    return [] if found else ["'e220' drives M0/M1/AUX through RPi.GPIO: pip install 'edgegw[pi]'"]


def _source_type() -> Any:
    from edgegw.radio.registry import SourceType

    return SourceType(E220Source, _build, _emulator, _problems)


SOURCE_TYPE = _source_type()
