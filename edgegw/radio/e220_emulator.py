"""An emulated E220-900T22S(JP) on a pseudo-terminal, with its mode pins and AUX as a :class:`ModePins`.

Mode 3 takes the register commands (``C0``/``C2`` write, ``C1`` read; anything else ``FF FF FF``) —
but only when the host's side of the pty is set to 9600 baud, as the module reads nothing else in
that mode. In mode 0 it passes received packets to the host (framed by the sensor, RSSI byte
appended when 05H bit 7 is set) and counts host bytes as transmissions.
"""

from __future__ import annotations

import termios
from dataclasses import dataclass, field

from edgegw.radio.e220 import encode_frame
from edgegw.radio.emulator import PtyModule

_BY_LINK: dict[str, E220Emulator] = {}
DEFAULTS = bytes([0x00, 0x00, 0x62, 0x00, 0x0F, 0x03])  # power-on registers (9600 baud, no RSSI byte)


@dataclass
class E220Emulator(PtyModule):
    """An E220-900T22S(JP) behind a pty whose slave is reachable at ``link``."""

    flash: bytearray = field(default_factory=lambda: bytearray(DEFAULTS))
    air_channel: int = 0  # what the field transmits on
    air_code: int = (9 - 5) << 2  # 02H bits 4-0 of the field's sensors: SF9, 125 kHz
    mode: int = 0
    busy: bool = False  # AUX held low
    flash_writes: int = 0
    sent: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.registers = bytearray(self.flash)
        _BY_LINK[str(self.link)] = self

    def power_on(self) -> None:
        self.registers = bytearray(self.flash)

    @property
    def configured(self) -> bool:
        return self.mode == 0 and self.registers[4] == self.air_channel and self.registers[2] & 0x1F == self.air_code

    def receive(self, address: int, data: str, rssi: int = -70, snr: float = 0.0) -> bool:
        """A packet (``data`` as hex, framed as a sensor frames it) arrives; True if passed to the host."""
        if not self.configured:
            return False
        packet = encode_frame(address, bytes.fromhex(data))
        return self.write_packet(packet, rssi)

    def write_packet(self, packet: bytes, rssi: int = -70) -> bool:
        """Pass any packet to the host as the module does (tests use this for corrupt frames)."""
        if self.mode != 0:
            return False
        tail = bytes([max(0, min(255, rssi + 256))]) if self.registers[5] & 0x80 else b""
        if not self.write_bytes(packet + tail):
            return False
        self.written += 1
        return True

    def take(self, chunk: bytes) -> None:
        if self.mode == 0:
            self.sent += chunk  # transparent mode: the module transmits what the host writes
            return
        if self.mode != 3 or not self._host_at_9600():
            return  # modes 1/2, or a baud rate the module cannot read: nothing understood
        self._inbuf += chunk
        while len(self._inbuf) >= 3:
            head, addr, n = self._inbuf[0], self._inbuf[1], self._inbuf[2]
            if head in (0xC0, 0xC2):
                if len(self._inbuf) < 3 + n:
                    return
                data, self._inbuf = self._inbuf[3:3 + n], self._inbuf[3 + n:]
                if addr + n > 6:
                    self.write_bytes(b"\xff\xff\xff")
                    continue
                self.registers[addr:addr + n] = data
                if head == 0xC0:
                    self.flash[addr:addr + n] = data
                    self.flash_writes += 1
                self.commands.append(f"{head:02X} {addr:02X} {n:02X} {data.hex(' ').upper()}")
                self.write_bytes(bytes([0xC1, addr, n]) + data)
            elif head == 0xC1:
                self._inbuf = self._inbuf[3:]
                self.commands.append(f"C1 {addr:02X} {n:02X}")
                if addr + n > 6:
                    self.write_bytes(b"\xff\xff\xff")
                else:
                    self.write_bytes(bytes([0xC1, addr, n]) + bytes(self.registers[addr:addr + n]))
            else:
                self._inbuf = self._inbuf[1:]
                self.write_bytes(b"\xff\xff\xff")

    def _host_at_9600(self) -> bool:
        slave = self._slave
        return slave is not None and termios.tcgetattr(slave)[5] == termios.B9600

    def answer(self, cmd: str) -> str:
        return ""  # binary: take() handles the host's bytes


class EmulatedPins:
    """The emulator's M0/M1 and AUX, as the source's :class:`~edgegw.radio.e220.ModePins`."""

    def __init__(self, module: E220Emulator):
        self.module = module

    def set_mode(self, mode: int) -> None:
        self.module.mode = mode
        self.module._inbuf = b""

    def aux_ready(self) -> bool:
        return not self.module.busy


def pins_of(link: str) -> EmulatedPins:
    """The pins of the emulator at ``link`` (for a simulated source)."""
    return EmulatedPins(_BY_LINK[str(link)])
