"""Tests of the SX127x source: pyLoRa's own code against a register-level chip behind a fake spidev/GPIO."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgegw.model import Frame, Reject
from edgegw.radio import SourceState, sx127x
from edgegw.radio import sx127x_emulator as emu
from edgegw.radio.sx127x import Sx127xRadio, Sx127xSource, packet_rssi, packet_snr, split_header
from tests.gateway import committed_into, wait_until

pytest.importorskip("SX127x", reason="pyLoRa (the [pi] extra) is not installed")
emu.install()


def source(**kw: Any) -> Sx127xSource:
    return Sx127xSource(type="sx127x", name="spi0", **kw)


def rh(sender: int, payload: bytes) -> bytes:
    """A RadioHead packet: to, from, id, flags, then the payload."""
    return bytes([0xFF, sender, 1, 0]) + payload


class Running:
    def __init__(self, radio: Sx127xRadio):
        self.radio = radio
        self.events: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=radio.run, args=(committed_into(self.events), self.stop), daemon=True)
        self.thread.start()

    def of(self, kind: type) -> list:
        return [e for e in list(self.events) if isinstance(e, kind)]

    def wait_state(self, state: str, after: int = 0, timeout: float = 5.0) -> int:
        def find() -> int | None:
            for i, e in enumerate(list(self.events)[after:], after):
                if isinstance(e, SourceState) and e.state == state:
                    return i + 1
            return None
        return wait_until(find, timeout, f"state {state}") - 1


@pytest.fixture
def chip():
    emu.Gpio.callbacks.clear()
    emu.Gpio.pins.clear()
    c = emu.attach(emu.Sx127xChip())
    yield c
    emu.Bus.chips.clear()


@pytest.fixture
def start():
    running: list[Running] = []

    def go(**kw: Any) -> Running:
        r = Running(Sx127xRadio(source(**kw)))
        running.append(r)
        return r

    yield go
    for r in running:
        r.stop.set()
        r.thread.join(timeout=10)
        assert not r.thread.is_alive()


# -- pure parts ------------------------------------------------------------------------------------

def test_rssi_and_snr_formulas():
    assert packet_snr(0xF4) == -3.0 and packet_snr(0x1C) == 7.0  # pyLoRa 0.3.1 says 61.0 for 0xF4
    assert packet_rssi(77, 7.0) == -157 + 77 + 4
    assert packet_rssi(40, -3.0) == -157 + 40 - 3


@given(st.binary(max_size=300), st.sampled_from(["radiohead", "address16"]))
def test_split_header_never_raises(packet, header):
    out = split_header(packet, header)
    assert out is None or (isinstance(out[1], bytes) and len(out[1]) == len(packet) - sx127x.HEADERS[header])


@pytest.mark.parametrize(("kw", "fragment"), [({"frequency_mhz": 868.1}, "ARIB"), ({"frequency_mhz": 923.3}, "ARIB"),
                                               ({"bandwidth_khz": 62}, "kHz"),
                                               ({"frequency_mhz": 928.0, "bandwidth_khz": 500}, "past 928.0")])
def test_config_rules(kw, fragment):
    with pytest.raises(ValidationError, match=fragment):
        source(**kw)


# -- the source on the emulated chip -----------------------------------------------------------------

def test_configures_920mhz_rxcont_and_receives_on_dio0(chip, start):
    r = start()
    r.wait_state("receiving")
    assert chip.lora and chip.mode == emu.MODE_RXCONT
    assert [chip.regs[a] for a in (6, 7, 8)] == [0xE6, 0xCC, 0xCC]  # 923.2 MHz, not pyLoRa's 868 default
    assert chip.regs[emu.REG_DIO_MAPPING_1] >> 6 == 0 and chip.regs[emu.REG_MODEM_CONFIG_2] & 0x04  # RxDone, CRC on
    assert chip.inject(rh(21, b"\x01\x04\xd2"), rssi=-80, snr=7.0)
    wait_until(lambda: r.of(Frame), 5.0, "a frame")
    f = r.of(Frame)[0]
    assert (f.address, f.payload, f.snr, f.rssi) == (21, b"\x01\x04\xd2", 7.0, packet_rssi(77, 7.0))


def test_crc_error_is_a_reject_and_reception_goes_on(chip, start):
    r = start()
    r.wait_state("receiving")
    chip.inject(rh(1, b"bad"), crc_ok=False)
    chip.inject(rh(2, b"good"))
    wait_until(lambda: r.of(Frame), 5.0, "the good frame")
    assert [x.reason for x in r.of(Reject)] == ["crc_error"]
    assert r.of(Frame)[0].address == 2


def test_lost_dio0_edge_is_caught_by_polling_and_an_overrun_counted(chip, start):
    r = start()
    r.wait_state("receiving")
    chip.irq_line = False  # two packets, no interrupt: the second lands behind the first
    chip.inject(rh(3, b"one"))
    chip.inject(rh(4, b"two"))
    wait_until(lambda: r.of(Frame), 5.0, "the packet found by polling")
    assert [f.payload for f in r.of(Frame)] == [b"two"] and [x.reason for x in r.of(Reject)] == ["fifo_overrun"]
    chip.irq_line = True
    chip.inject(rh(5, b"three"))  # the FIFO was re-based: no overrun now
    wait_until(lambda: len(r.of(Frame)) == 2, 5.0, "the next packet")
    assert [x.reason for x in r.of(Reject)] == ["fifo_overrun"]


def test_too_short_packet_is_a_reject(chip, start):
    r = start()
    r.wait_state("receiving")
    chip.inject(b"\x01\x02")
    wait_until(lambda: r.of(Reject), 5.0, "the reject")
    assert r.of(Reject)[0].reason == "too_short"


def test_chip_reset_is_noticed_and_configured_again(chip, start):
    r = start()
    first = r.wait_state("receiving")
    chip.power_on()  # a brown-out: FSK standby at 434 MHz
    r.wait_state("starting", first)
    wait_until(lambda: chip.mode == emu.MODE_RXCONT and chip.lora, 5.0, "RX continuous again")
    assert chip.inject(rh(6, b"after"))
    wait_until(lambda: r.of(Frame), 5.0, "a frame after the reset")


def test_no_chip_on_the_bus_backs_off_with_a_plain_error(chip, start):
    chip.present = False
    r = start()
    down = r.wait_state("down")
    assert "RegVersion reads 0x00" in r.events[down].detail
    chip.present = True
    r.wait_state("receiving", down, timeout=10.0)


def test_off_channel_packet_is_not_heard(chip, start):
    r = start(frequency_mhz=920.6)
    r.wait_state("receiving")
    assert [chip.regs[a] for a in (6, 7, 8)] == [0xE6, 0x26, 0x66]
    assert not chip.inject(rh(1, b"x"), freq_mhz=923.2)
    assert chip.inject(rh(1, b"x"), freq_mhz=920.6)


def test_without_the_extra_config_check_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(sx127x, "missing_modules", lambda: ["SX127x", "spidev"])
    from edgegw.radio.registry import source_problems

    (problem,) = source_problems([source()])
    assert problem.startswith("sources[0].type: 'sx127x' needs the Raspberry Pi extra: pip install 'edgegw[pi]'")


def test_chip_lost_while_receiving_goes_down_and_comes_back(chip, start):
    r = start()
    first = r.wait_state("receiving")
    chip.present = False  # the HAT's connector shaken loose: the bus reads zeros
    down = r.wait_state("down", first)
    chip.present = True
    r.wait_state("receiving", down, timeout=10.0)
    assert chip.inject(rh(8, b"back"))
    wait_until(lambda: r.of(Frame), 5.0, "a frame after the chip came back")


# -- edgegw doctor: the chip asked as a start asks it -------------------------------------------------


def test_doctor_finds_the_chip_and_its_settings_taken(chip):
    from edgegw.doctor.radio import chip as doctor_chip

    finding = doctor_chip("sources[0] spi0", source(frequency_mhz=922.4, spreading_factor=10))
    assert finding.status == "ok", finding
    assert finding.message == ("an SX127x answered on /dev/spidev0.0 (RegVersion 0x12) and took every setting"
                               " (922.4 MHz, SF10, 125 kHz, sync word 0x12)")
    assert [chip.regs[a] for a in (6, 7, 8)] == [0xE6, 0x99, 0x99]  # 922.4 MHz written, as a start writes it
    assert not emu.Gpio.callbacks  # the DIO0 pin let go: the daemon may take it next


def test_doctor_says_no_chip_answers_and_where_to_look(chip):
    from edgegw.doctor.radio import chip as doctor_chip

    chip.present = False  # a HAT not seated, or on the other chip select: the bus reads zeros
    finding = doctor_chip("sources[0] spi0", source(reset_pin=25))
    assert finding.status == "fault" and finding.check == "radio_module"
    assert "RegVersion reads 0x00, expected 0x12" in finding.message
    assert "RESET on GPIO 25" in finding.fix and "spi_cs" in finding.fix


def test_doctor_names_a_missing_spi_device_with_how_to_enable_spi(chip):
    from edgegw.doctor.access import ServiceUser
    from edgegw.doctor.radio import spi_chip

    emu.Bus.chips.clear()  # SPI not enabled: no /dev/spidev0.1 either
    user = ServiceUser.current()
    for probe in (True, False):  # doctor asks the chip; config check --machine only looks for the device
        (finding,) = spi_chip("sources[0] spi0", source(spi_cs=1), user, probe)
        assert finding.status == "fault" and finding.check == "spi_device"
        assert finding.message == "SPI device /dev/spidev0.1 does not exist"
        assert "raspi-config nonint do_spi 0" in finding.fix


def test_doctor_without_the_extra_says_what_to_install(chip, monkeypatch):
    from edgegw.doctor.radio import chip as doctor_chip

    monkeypatch.setattr(sx127x, "missing_modules", lambda: ["spidev", "RPi.GPIO"])
    finding = doctor_chip("sources[0] spi0", source())
    assert finding.status == "fault" and "spidev, RPi.GPIO not installed" in finding.message
    assert finding.fix == "pip install 'edgegw[pi]' in the gateway's venv"


@pytest.mark.parametrize("seated", [True, False])
def test_edgegw_doctor_asks_the_chip_on_the_spi_bus(tmp_path, seated):
    # The command as an installer runs it, in a process whose spidev and RPi.GPIO are the fakes
    # (a Pi's bus cannot exist here), with a chip on SPI 0.0 that answers or reads zeros.
    config = tmp_path / "gateway.toml"
    config.write_text('gateway_id = "gw-pi"\ndata_dir = "data"\n[[sources]]\ntype = "sx127x"\nname = "spi0"\n'
                      '[[devices]]\nid = "trap-01"\naddress = 17\ndriver = "trap"\n')
    (tmp_path / "data").mkdir()
    inject = ("from edgegw.radio import sx127x_emulator as emu\nemu.install()\n"
              f"emu.attach(emu.Sx127xChip()).present = {seated}\nfrom edgegw.cli import main\nmain()")
    done = subprocess.run([sys.executable, "-c", inject, "doctor", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    if seated:
        assert done.returncode == 0, done.stdout + done.stderr
        assert ("ok    radio module: sources[0] spi0: an SX127x answered on /dev/spidev0.0 (RegVersion 0x12) and took"
                " every setting (923.2 MHz, SF9, 125 kHz, sync word 0x12)") in done.stdout
    else:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAULT radio module: sources[0] spi0: no SX127x answers on /dev/spidev0.0 (RegVersion reads 0x00" in done.stdout
        assert "fix: seat the HAT" in done.stdout
