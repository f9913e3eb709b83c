"""An SX1276/77/78/79 LoRa chip on the Raspberry Pi's SPI bus, through pyLoRa (the ``[pi]`` extra).

pyLoRa's register code configures and reads the chip: 920 MHz-band frequency registers, LoRa mode,
RX continuous, DIO0 mapped to RxDone. What of pyLoRa is unfit for a gateway is wrapped or replaced here:

- ``SX127x.LoRa`` opens SPI 0.0 and 0.1 in its class bodies (``LoRa``, ``LoRa2``), at import: the
  import runs with those calls stubbed, and each radio opens its own bus and chip select (an import
  never fails for a bus, nor holds the other chip select another device may use).
- ``BOARD.setup()`` blinks an LED on GPIO 13 with sleeps: replaced by a setup of just the pins used.
- ``BOARD.low_band`` defaults to True (-164 dBm RSSI offset, the LF port) and ``get_pkt_snr_value``
  computes (256 - v) / 4: the packet RSSI and SNR are read from 0x1A / 0x19 here, with the HF-port
  offset -157 and the SNR as a signed byte / 4 (Semtech's formula).
- ``set_mode`` trusts a cached mode, which a chip reset makes stale: the cache is cleared before
  every configuration; ``__del__`` (sleep over a bus that may be closed) is disabled.

The chip keeps one packet's worth of order: a packet not taken before the next arrives is
overwritten or pushed along the FIFO, so packets are read in the DIO0 callback into a bounded queue
(back-pressure cannot reach the air), and handed over in read turns from there. A lost DIO0 edge is
caught by polling the IRQ flags, a packet received behind an untaken one counts as ``fifo_overrun``,
CRC errors are rejects, and a chip found out of RX continuous (reset, brown-out) is configured again.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar, Literal

import structlog
from pydantic import Field, field_validator, model_validator

from edgegw.backoff import Backoff
from edgegw.config.base import _Section
from edgegw.errors import ModuleError
from edgegw.model import Frame, Reject
from edgegw.radio import Emit, ReadTurn, SourceState, Turns
from edgegw.radio.airtime import time_on_air
from edgegw.radio.limits import FrameLimits

log = structlog.get_logger("edgegw.radio.sx127x")

INSTALL_HINT = ("needs the Raspberry Pi extra: pip install 'edgegw[pi]' (pyLoRa, spidev, RPi.GPIO), and SPI"
                " enabled: sudo raspi-config nonint do_spi 0")
BANDWIDTH_CODES = {125: 7, 250: 8, 500: 9}  # RegModemConfig1 bits 7-4
VERSION = 0x12  # RegVersion of every SX1276/77/78/79
HF_RSSI_OFFSET = -157  # RF_HF port (> 525 MHz); the LF port's -164 is pyLoRa's default
QUEUE_MAX = 1000  # packets read off the chip, not yet handed over; more are counted and dropped
POLL = 0.5  # s between looks at the IRQ flags and the mode (a lost DIO0 edge, a chip reset)
HEADERS = {"radiohead": 4, "address16": 2}
PACKET_MAX = 255  # RegRxNbBytes is one byte


class Sx127xSource(_Section):
    """An SX127x chip (e.g. a Dragino/Uputronics HAT) on the Pi's SPI bus, read through pyLoRa."""

    type: Literal["sx127x"]
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    simulate: Path | None = Field(None, description="field file: an emulated chip instead of the SPI bus (demo)")
    spi_bus: int = Field(0, ge=0, le=1)
    spi_cs: int = Field(0, ge=0, le=1)
    dio0_pin: int = Field(4, ge=0, le=27, description="BCM number of the GPIO wired to DIO0")
    reset_pin: int = Field(22, ge=0, le=27, description="BCM number of the GPIO wired to the chip's RESET")
    frequency_mhz: float = Field(923.2, description="920.6-928.0 MHz, on the 200 kHz grid of ARIB STD-T108")
    spreading_factor: int = Field(9, ge=7, le=12)
    bandwidth_khz: int = 125
    coding_rate: int = Field(5, ge=5, le=8, description="4/5 ... 4/8")
    sync_word: int = Field(0x12, ge=0, le=255, description="0x12 private LoRa, 0x34 LoRaWAN")
    header: Literal["radiohead", "address16"] = Field(
        "radiohead", description="radiohead: 4 bytes (to, from, id, flags), sender = from; address16: 2 bytes,"
                                 " the sender's address big-endian")

    @field_validator("frequency_mhz")
    @classmethod
    def _arib_channel(cls, v: float) -> float:
        steps = (v - 920.6) / 0.2
        if not (920.6 - 1e-6 <= v <= 928.0 + 1e-6) or abs(steps - round(steps)) > 1e-6:
            raise ValueError("expected a 920 MHz channel of ARIB STD-T108: 920.6 + 0.2 n up to 928.0, e.g. 923.2")
        return round(v, 1)

    @field_validator("bandwidth_khz")
    @classmethod
    def _known_bandwidth(cls, v: int) -> int:
        if v not in BANDWIDTH_CODES:
            raise ValueError(f"expected one of {sorted(BANDWIDTH_CODES)} kHz (ARIB: 1 to 5 units of 200 kHz)")
        return v

    @model_validator(mode="after")
    def _fits(self) -> Sx127xSource:
        units = {125: 1, 250: 2, 500: 3}[self.bandwidth_khz]
        if self.frequency_mhz + 0.1 * (units - 1) > 928.0 + 1e-6:
            raise ValueError(f"{self.bandwidth_khz} kHz at {self.frequency_mhz} MHz reaches past 928.0 MHz")
        return self

    def frame_limits(self) -> FrameLimits:
        """RegRxNbBytes (0x13) holds a packet's length in one byte: 255 at most, the sender's header
        included. Airtime with the configured coding rate and an 8-symbol preamble (assumed: the
        gateway does not set it, and the chip's default is unverified here)."""
        header = HEADERS[self.header]
        return FrameLimits(
            PACKET_MAX - header, f"{PACKET_MAX}-byte LoRa packets (RegRxNbBytes), less the {header}-byte {self.header}"
            " header", True,
            lambda n: time_on_air(n + header, self.spreading_factor, self.bandwidth_khz, self.coding_rate - 4))

    @property
    def port(self) -> str:
        """The SPI device, for logs and status."""
        return f"/dev/spidev{self.spi_bus}.{self.spi_cs}"


def missing_modules() -> list[str]:
    """The modules of the ``[pi]`` extra that are not importable here."""
    out = []
    for name in ("SX127x", "spidev", "RPi.GPIO"):
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def packet_rssi(p: int, snr: float) -> float:
    """Packet RSSI in dBm from RegPktRssiValue on the HF port (Semtech's formula)."""
    return float(HF_RSSI_OFFSET + p + snr) if snr < 0 else float(HF_RSSI_OFFSET + p + (p >> 4))


def packet_snr(v: int) -> float:
    """RegPktSnrValue: a signed byte, in quarter dB."""
    return (v - 256 if v >= 128 else v) / 4


def split_header(packet: bytes, header: str) -> tuple[int | None, bytes] | None:
    """(sender address, payload) of a packet with ``header``; None if it is too short to have one."""
    if len(packet) < HEADERS[header]:
        return None
    if header == "radiohead":
        return packet[1], packet[4:]
    return int.from_bytes(packet[:2], "big"), packet[2:]


def _modem_class(config: Sx127xSource) -> Any:
    """pyLoRa's LoRa class, imported for this board, subclassed where it is unfit (see the module doc)."""
    board_config = importlib.import_module("SX127x.board_config")
    board = board_config.BOARD
    board.DIO0, board.RST, board.low_band = config.dio0_pin, config.reset_pin, False
    board.SPI_BUS, board.SPI_CS = config.spi_bus, config.spi_cs
    if "SX127x.LoRa" not in sys.modules:
        # Its class bodies would open SPI 0.0 (LoRa) and 0.1 (LoRa2, for BOARD2) at import.
        boards = (board, board_config.BOARD2)
        real = [b.SpiDev for b in boards]
        for b in boards:
            b.SpiDev = staticmethod(lambda: None)
        try:
            importlib.import_module("SX127x.LoRa")
        finally:
            for b, r in zip(boards, real):
                b.SpiDev = r
    lora = sys.modules["SX127x.LoRa"]

    class Modem(lora.LoRa):  # type: ignore[name-defined]
        def __init__(self, spi: Any, on_dio0: Any):
            self.spi = spi  # this radio's bus, not the class-wide one
            self._on_dio0 = on_dio0
            super().__init__(verbose=False)

        def on_rx_done(self) -> None:
            self._on_dio0()

        def __del__(self) -> None:
            pass

    return Modem, lora, board


class Sx127xRadio:
    """A :class:`~edgegw.radio.Source` for one SX127x chip on SPI."""

    family: ClassVar[str] = "sx127x"

    def __init__(self, config: Sx127xSource, port: str | None = None, read_turn: ReadTurn | None = None):
        self.config = config
        self.name = config.name
        self.port = config.port
        self.read_turn = read_turn or ReadTurn()
        self.events: deque[Frame | Reject] = deque()
        self.dropped = 0
        self._lock = threading.RLock()  # SPI: the DIO0 callback and this thread share the bus
        self._wake = threading.Event()
        self._modem: Any = None

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read packets until ``stop``; reopen the bus with a backoff when the chip is lost."""
        backoff = Backoff(0.25, 30.0)
        while not stop.is_set():
            try:
                emit([SourceState(self.name, "starting", self.port)])
                self._open()
                self._configure()
                emit([SourceState(self.name, "receiving", self.port)])
                backoff.reset()
                turns = Turns(self.read_turn, emit, stop)
                while not stop.is_set():
                    if not self._receiving():
                        emit([SourceState(self.name, "starting", "chip out of RX continuous (reset?); reconfiguring")])
                        log.warning("radio chip lost its settings; reconfiguring", source=self.name, port=self.port)
                        self._configure()
                        emit([SourceState(self.name, "receiving", self.port)])
                    self._turn(turns)
            except (OSError, ModuleError) as exc:
                delay = backoff.next()
                emit([SourceState(self.name, "down", str(exc))])
                log.warning("radio chip down, reopening", source=self.name, port=self.port, error=str(exc),
                            retry_in=round(delay, 2))
                stop.wait(delay)
            finally:
                self._close()

    def check(self) -> str:
        """Open the bus and configure the chip as a start does, every step checked, then let it go:
        for ``edgegw doctor``, never while the daemon holds the chip. Returns what was found;
        ModuleError (no chip answers, the extra is missing, a setting not taken) or OSError (no such
        SPI device, no permission) says what went wrong."""
        try:
            self._open()
            self._configure()
        finally:
            self._close()
        c = self.config
        return (f"an SX127x answered on {self.port} (RegVersion 0x{VERSION:02X}) and took every setting"
                f" ({c.frequency_mhz} MHz, SF{c.spreading_factor}, {c.bandwidth_khz} kHz, sync word"
                f" 0x{c.sync_word:02X})")

    # -- the chip ----------------------------------------------------------------------------------

    def _open(self) -> None:
        if missing := missing_modules():
            raise ModuleError(f"{', '.join(missing)} not installed: {self.family} {INSTALL_HINT}")
        modem_class, _, board = _modem_class(self.config)
        gpio = sys.modules["RPi.GPIO"]
        self._gpio, self._const, self._board = gpio, sys.modules["SX127x.constants"], board
        gpio.setmode(gpio.BCM)
        gpio.setwarnings(False)
        gpio.setup(board.RST, gpio.OUT)
        gpio.output(board.RST, 1)
        for pin in (board.DIO0, board.DIO1, board.DIO2, board.DIO3):
            gpio.setup(pin, gpio.IN, pull_up_down=gpio.PUD_DOWN)
        spi = sys.modules["spidev"].SpiDev()
        spi.open(self.config.spi_bus, self.config.spi_cs)
        spi.max_speed_hz = 5_000_000
        self._spi = spi
        with self._lock:
            version = spi.xfer([0x42, 0])[1]
            if version != VERSION:
                raise ModuleError(f"no SX127x answers on {self.port} (RegVersion reads 0x{version:02X}, expected"
                                  f" 0x{VERSION:02X}): check the wiring and that SPI is enabled")
            self._modem = modem_class(spi, self._take_packet)

    def _close(self) -> None:
        gpio, board = getattr(self, "_gpio", None), getattr(self, "_board", None)
        if gpio is not None and board is not None:
            for pin in (board.DIO0, board.DIO1, board.DIO2, board.DIO3):
                gpio.remove_event_detect(pin)
        if getattr(self, "_spi", None) is not None:
            self._spi.close()
            self._spi = None
        self._modem = None

    def _configure(self) -> None:
        c, m, MODE = self.config, self._modem, self._const.MODE
        with self._lock:
            m.mode = None  # pyLoRa's cached mode is stale after a chip reset
            m.set_mode(MODE.SLEEP)
            m.mode = None
            m.set_mode(MODE.SLEEP)  # LongRange is taken only in sleep: the first write may leave FSK sleep
            m.set_freq(c.frequency_mhz)
            m.set_bw(BANDWIDTH_CODES[c.bandwidth_khz])
            m.set_spreading_factor(c.spreading_factor)
            m.set_coding_rate(c.coding_rate - 4)
            m.set_rx_crc(True)
            m.set_low_data_rate_optim(c.spreading_factor >= 11 and c.bandwidth_khz == 125)
            m.set_sync_word(c.sync_word)
            m.set_dio_mapping([0] * 6)  # DIO0 = RxDone
            frf = m.spi.xfer([0x06, 0, 0, 0])[1:]
            want = int(c.frequency_mhz * 16384)
            if frf != [want >> 16, (want >> 8) & 0xFF, want & 0xFF] or m.get_mode() != MODE.SLEEP:
                raise ModuleError(f"{self.port}: the chip did not take its settings (Frf reads {bytes(frf).hex()})")
            m.clear_irq_flags(RxDone=1, PayloadCrcError=1, ValidHeader=1, RxTimeout=1)
            m.reset_ptr_rx()
            m.set_mode(MODE.RXCONT)
        log.info("radio configured", source=self.name, port=self.port, mhz=c.frequency_mhz, sf=c.spreading_factor,
                 bw_khz=c.bandwidth_khz)

    def _receiving(self) -> bool:
        """True if the chip is in LoRa RX continuous; takes a packet whose DIO0 edge was lost."""
        with self._lock:
            mode = self._modem.get_mode()
        if mode != self._const.MODE.RXCONT:
            return False
        self._take_packet()
        return True

    def _take_packet(self) -> None:
        """Read the packet the chip holds (DIO0 callback, or the poll), re-arm RX, queue the events."""
        m, MODE = self._modem, self._const.MODE
        wall, mono = time.time(), time.monotonic()
        with self._lock:
            if m is None or not m.get_irq_flags()["rx_done"]:
                return
            crc_error = m.get_irq_flags()["crc_error"]
            base, current = m.get_fifo_rx_base_addr(), m.get_fifo_rx_current_addr()
            packet = bytes(m.read_payload(nocheck=True))
            snr_raw, rssi_raw = m.spi.xfer([0x19, 0, 0])[1:]  # pyLoRa's SNR getter is wrong, see above
            m.clear_irq_flags(RxDone=1, PayloadCrcError=1, ValidHeader=1)
            m.reset_ptr_rx()
            m.set_mode(MODE.RXCONT)  # entering RX again writes the next packet from the RX base
        snr = packet_snr(snr_raw)
        rssi = packet_rssi(rssi_raw, snr)
        events: list[Frame | Reject] = []
        if current != base:
            events.append(Reject(self.name, "fifo_overrun", "a packet before this one was not read in time", None,
                                 None, b"", wall))
        if crc_error:
            events.append(Reject(self.name, "crc_error", f"payload CRC error (RSSI {rssi:g} dBm)", None, None, packet,
                                 wall))
        elif (split := split_header(packet, self.config.header)) is None:
            events.append(Reject(self.name, "too_short", f"{len(packet)} bytes, no {self.config.header} header",
                                 None, None, packet, wall))
        else:
            events.append(Frame(self.name, split[0], split[1], rssi, snr, wall, mono))
        self._queue(events)

    def _queue(self, events: list[Frame | Reject]) -> None:
        with self._lock:
            room = QUEUE_MAX - len(self.events)
            self.events.extend(events[:max(room, 0)])
            self.dropped += max(len(events) - max(room, 0), 0)
        self._wake.set()

    def _turn(self, turns: Turns) -> None:
        """Hand over what the chip gave since the last turn, once the last turn is committed."""
        self._wake.wait(POLL)
        self._wake.clear()

        def take() -> list:
            with self._lock:
                events: list[Any] = list(self.events)
                self.events.clear()
                dropped, self.dropped = self.dropped, 0
            if dropped:
                events.append(Reject(self.name, "queue_full", f"{dropped} packets dropped: the writer fell behind",
                                     None, None, b"", time.time()))
            return events

        turns.take(take)


def _problems(config: Sx127xSource) -> list[str]:
    missing = missing_modules()
    if config.simulate is not None:  # the emulated chip brings its own spidev and GPIO
        missing = [m for m in missing if m == "SX127x"]
    return [f"'sx127x' {INSTALL_HINT} (missing here: {', '.join(missing)})"] if missing else []


def _emulator(config: Sx127xSource, link: Path) -> Any:
    from edgegw.radio.sx127x_emulator import FieldChip

    return FieldChip(config)


def _source_type() -> Any:
    from edgegw.radio.registry import SourceType

    return SourceType(Sx127xSource, Sx127xRadio, _emulator, _problems)


SOURCE_TYPE = _source_type()
