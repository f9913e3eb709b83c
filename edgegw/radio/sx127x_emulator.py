"""A register-level SX127x behind a fake ``spidev`` and a fake ``RPi.GPIO``, for tests without a Pi.

Only the lowest level is fake: :func:`install` puts the two modules into ``sys.modules`` (before
pyLoRa's ``SX127x.LoRa`` is imported: its class body opens the SPI bus), and pyLoRa's own register
code runs unchanged against :class:`Sx127xChip`. The chip keeps 128 registers and the 256-byte
FIFO as the SX1276 datasheet describes them: the first byte of a transfer is the address (bit 7 =
write), bursts auto-increment except at 0x00, where the FIFO is read or written at RegFifoAddrPtr;
IRQ flags clear by writing 1; LongRange changes only in sleep. :meth:`Sx127xChip.inject` is a
packet on the air: heard only in RX mode on the configured frequency, SF and bandwidth, written
into the FIFO with RSSI/SNR and the IRQ flags, and DIO0 raised when it is mapped to RxDone.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REG_FIFO, REG_OP_MODE, REG_FRF = 0x00, 0x01, 0x06
REG_FIFO_ADDR_PTR, REG_FIFO_TX_BASE, REG_FIFO_RX_BASE, REG_FIFO_RX_CURRENT = 0x0D, 0x0E, 0x0F, 0x10
REG_IRQ_FLAGS, REG_RX_NB_BYTES = 0x12, 0x13
REG_PKT_SNR, REG_PKT_RSSI = 0x19, 0x1A
REG_MODEM_CONFIG_1, REG_MODEM_CONFIG_2, REG_DIO_MAPPING_1, REG_VERSION = 0x1D, 0x1E, 0x40, 0x42
IRQ_RX_DONE, IRQ_CRC_ERROR, IRQ_VALID_HEADER = 0x40, 0x20, 0x10
MODE_SLEEP, MODE_RXCONT, MODE_RXSINGLE, MODE_STDBY = 0, 5, 6, 1

# Power-on values that matter here (datasheet table "Registers summary"): FSK standby, 434 MHz.
_RESET = {REG_OP_MODE: 0x09, REG_FRF: 0x6C, REG_FRF + 1: 0x80, REG_FRF + 2: 0x00, REG_FIFO_TX_BASE: 0x80,
          REG_MODEM_CONFIG_1: 0x72, REG_MODEM_CONFIG_2: 0x70, 0x26: 0x04, 0x39: 0x12, REG_VERSION: 0x12}


@dataclass
class Sx127xChip:
    """One SX1276 as its registers and FIFO; thread-safe (the GPIO callback and the source both use SPI)."""

    regs: list[int] = field(default_factory=lambda: [0] * 128)
    fifo: bytearray = field(default_factory=lambda: bytearray(256))
    dio0: Callable[[], None] | None = None  # raises the DIO0 line (the fake GPIO's edge callback)
    irq_line: bool = True  # False: DIO0 edges are lost (a missed interrupt)
    present: bool = True  # False: nothing answers on the bus (unplugged HAT: reads 0x00)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._rx_write = 0  # where the modem writes the next packet in RX continuous mode
        self.power_on()

    def power_on(self) -> None:
        """A power cycle or reset pin pulse: registers back to their defaults, FIFO kept (it is RAM)."""
        with self._lock:
            self.regs = [0] * 128
            for addr, v in _RESET.items():
                self.regs[addr] = v

    # -- SPI -----------------------------------------------------------------------------------

    def transfer(self, data: list[int]) -> list[int]:
        with self._lock:
            if not data:
                return []
            if not self.present:
                return [0] * len(data)
            addr, write = data[0] & 0x7F, bool(data[0] & 0x80)
            out = [0]
            for value in data[1:]:
                if addr == REG_FIFO:
                    ptr = self.regs[REG_FIFO_ADDR_PTR]
                    out.append(self.fifo[ptr])
                    if write:
                        self.fifo[ptr] = value & 0xFF
                    self.regs[REG_FIFO_ADDR_PTR] = (ptr + 1) & 0xFF
                    continue
                out.append(self.regs[addr])
                if write:
                    self._write(addr, value & 0xFF)
                addr = (addr + 1) & 0x7F
            return out

    def _write(self, addr: int, value: int) -> None:
        if addr == REG_IRQ_FLAGS:
            self.regs[addr] &= ~value & 0xFF  # write 1 to clear
        elif addr == REG_OP_MODE:
            old = self.regs[addr]
            if old & 0x07 != MODE_SLEEP:  # LongRangeMode can be changed only in sleep
                value = (value & 0x7F) | (old & 0x80)
            self.regs[addr] = value
            if value & 0x07 in (MODE_RXCONT, MODE_RXSINGLE) and old & 0x07 not in (MODE_RXCONT, MODE_RXSINGLE):
                self._rx_write = self.regs[REG_FIFO_RX_BASE]  # entering RX: packets go from the RX base
        elif addr in (REG_VERSION, REG_RX_NB_BYTES, REG_FIFO_RX_CURRENT, REG_PKT_SNR, REG_PKT_RSSI):
            pass  # read-only
        else:
            self.regs[addr] = value

    # -- what the host configured ------------------------------------------------------------------

    @property
    def mode(self) -> int:
        return self.regs[REG_OP_MODE] & 0x07

    @property
    def lora(self) -> bool:
        return bool(self.regs[REG_OP_MODE] & 0x80)

    @property
    def frequency_mhz(self) -> float:
        frf = self.regs[REG_FRF] << 16 | self.regs[REG_FRF + 1] << 8 | self.regs[REG_FRF + 2]
        return frf * 32 / 2**19

    @property
    def spreading_factor(self) -> int:
        return self.regs[REG_MODEM_CONFIG_2] >> 4

    @property
    def bandwidth_code(self) -> int:
        return self.regs[REG_MODEM_CONFIG_1] >> 4

    # -- the air -------------------------------------------------------------------------------------

    def inject(self, payload: bytes, rssi: int = -80, snr: float = 7.0, crc_ok: bool = True, sf: int = 9,
               bw_code: int = 7, freq_mhz: float = 923.2) -> bool:
        """A packet arrives over the air; True if the modem received it (listening, same settings)."""
        with self._lock:
            heard = (self.present and self.lora and self.mode in (MODE_RXCONT, MODE_RXSINGLE)
                     and (sf, bw_code) == (self.spreading_factor, self.bandwidth_code)
                     and abs(freq_mhz - self.frequency_mhz) < 0.001)
            if not heard:
                return False
            start = self._rx_write
            for i, b in enumerate(payload):
                self.fifo[(start + i) & 0xFF] = b
            self._rx_write = (start + len(payload)) & 0xFF  # a next packet lands after this one
            self.regs[REG_FIFO_RX_CURRENT] = start
            self.regs[REG_RX_NB_BYTES] = len(payload)
            self.regs[REG_PKT_SNR] = int(round(snr * 4)) & 0xFF
            self.regs[REG_PKT_RSSI] = max(0, min(255, rssi + 157))
            self.regs[REG_IRQ_FLAGS] |= IRQ_VALID_HEADER | IRQ_RX_DONE | (0 if crc_ok else IRQ_CRC_ERROR)
            if self.mode == MODE_RXSINGLE:
                self.regs[REG_OP_MODE] = (self.regs[REG_OP_MODE] & 0xF8) | MODE_STDBY
            raise_dio0 = self.regs[REG_DIO_MAPPING_1] >> 6 == 0 and self.irq_line
        if raise_dio0 and self.dio0 is not None:
            self.dio0()  # as RPi.GPIO calls edge callbacks: in its own thread, outside the chip
        return True


class Bus:
    """The chips on the fake SPI buses, by (bus, chip select)."""

    chips: dict[tuple[int, int], Sx127xChip] = {}


class SpiDev:
    """The fake ``spidev.SpiDev``: the calls pyLoRa makes."""

    def __init__(self) -> None:
        self.max_speed_hz = 0
        self.mode = 0
        self._chip: Sx127xChip | None = None

    def open(self, bus: int, cs: int) -> None:
        if (bus, cs) not in Bus.chips:
            raise FileNotFoundError(2, "No such file or directory", f"/dev/spidev{bus}.{cs}")
        self._chip = Bus.chips[(bus, cs)]

    def close(self) -> None:
        self._chip = None

    def xfer(self, data: list[int]) -> list[int]:
        if self._chip is None:
            raise OSError(9, "Bad file descriptor")
        return self._chip.transfer(list(data))

    xfer2 = xfer


class Gpio:
    """The fake ``RPi.GPIO``: pins, levels and edge callbacks."""

    BCM, BOARD, IN, OUT, HIGH, LOW = 11, 10, 1, 0, 1, 0
    RISING, FALLING, BOTH, PUD_UP, PUD_DOWN, PUD_OFF = 31, 32, 33, 22, 21, 20
    callbacks: dict[int, Callable[[int], None]] = {}
    levels: dict[int, int] = {}
    pins: dict[int, int] = {}

    @classmethod
    def setmode(cls, mode: int) -> None: ...

    @classmethod
    def setwarnings(cls, flag: bool) -> None: ...

    @classmethod
    def setup(cls, pin: int, direction: int, pull_up_down: int = 20, initial: int = 0) -> None:
        cls.pins[pin] = direction

    @classmethod
    def output(cls, pin: int, value: int) -> None:
        if cls.pins.get(pin) != cls.OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        cls.levels[pin] = int(value)

    @classmethod
    def input(cls, pin: int) -> int:
        return cls.levels.get(pin, 0)

    @classmethod
    def add_event_detect(cls, pin: int, edge: int, callback: Callable[[int], None] | None = None,
                         bouncetime: int = 0) -> None:
        if cls.pins.get(pin) != cls.IN:
            raise RuntimeError("You must setup() the GPIO channel as an input first")
        if pin in cls.callbacks:
            raise RuntimeError("Conflicting edge detection already enabled for this GPIO channel")
        if callback is not None:
            cls.callbacks[pin] = callback

    @classmethod
    def remove_event_detect(cls, pin: int) -> None:
        cls.callbacks.pop(pin, None)

    @classmethod
    def cleanup(cls, *pins: int) -> None:
        for pin in pins or list(cls.pins):
            cls.pins.pop(pin, None)
            cls.callbacks.pop(pin, None)

    @classmethod
    def fire(cls, pin: int) -> None:
        """A rising edge on ``pin``: its callback runs (RPi.GPIO runs it in its own thread)."""
        if (cb := cls.callbacks.get(pin)) is not None:
            cb(pin)


def install() -> None:
    """Put the fake ``spidev``, ``RPi`` and ``RPi.GPIO`` into ``sys.modules`` (idempotent)."""
    spidev = types.ModuleType("spidev")
    spidev.SpiDev = SpiDev  # type: ignore[attr-defined]
    rpi = types.ModuleType("RPi")
    gpio = types.ModuleType("RPi.GPIO")
    for name in dir(Gpio):
        if not name.startswith("_"):
            setattr(gpio, name, getattr(Gpio, name))
    rpi.GPIO = gpio  # type: ignore[attr-defined]
    sys.modules.setdefault("spidev", spidev)
    sys.modules.setdefault("RPi", rpi)
    sys.modules.setdefault("RPi.GPIO", gpio)


def attach(chip: Sx127xChip, bus: int = 0, cs: int = 0, dio0_pin: int = 4) -> Sx127xChip:
    """Put ``chip`` on the fake bus, its DIO0 wired to ``dio0_pin``."""
    Bus.chips[(bus, cs)] = chip
    chip.dio0 = lambda: Gpio.fire(dio0_pin)
    return chip


class FieldChip:
    """An emulated chip for ``simulate``: what :class:`~edgegw.radio.field.VirtualField` drives.

    ``plug`` installs the fake spidev/GPIO (only where the real ones are absent: on a Pi with the
    extra installed, simulate the serial modules instead) and puts a chip on the configured bus.
    A field's garbage becomes a packet with a CRC error, the nearest thing on the air.
    """

    def __init__(self, config: Any):
        self.config = config
        self.chip: Sx127xChip | None = None
        self.air: Any = None  # the field's [air] section is for serial modules; the config's settings are the air

    @property
    def plugged(self) -> bool:
        return self.chip is not None and self.chip.present

    def plug(self) -> None:
        install()
        c = self.config
        self.chip = attach(Sx127xChip(), c.spi_bus, c.spi_cs, c.dio0_pin)

    def unplug(self) -> None:
        if self.chip is not None:
            self.chip.present = False

    def _inject(self, packet: bytes, rssi: int, snr: float, crc_ok: bool) -> bool:
        c = self.config
        if self.chip is None:
            return False
        return self.chip.inject(packet, rssi, snr, crc_ok, c.spreading_factor, {125: 7, 250: 8, 500: 9}[c.bandwidth_khz],
                                c.frequency_mhz)

    def receive(self, address: int, data: str, rssi: int = -80, snr: float = 7.0) -> bool:
        header = bytes([0xFF, address & 0xFF, 0, 0]) if self.config.header == "radiohead" else address.to_bytes(2, "big")
        return self._inject(header + bytes.fromhex(data), rssi, snr, True)

    def write_line(self, text: str) -> bool:
        return self._inject(text.encode("latin-1", "replace"), -110, -12.0, False)
