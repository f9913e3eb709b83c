"""Tests of the E220-900T22S(JP) source: the framing (hypothesis), and the source on a pty with emulated mode pins."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgegw.model import Frame, Reject
from edgegw.radio import SourceState
from edgegw.radio.e220 import MAX_PAYLOAD, Deframer, E220Radio, E220Source, crc16, encode_frame
from edgegw.radio.e220_emulator import E220Emulator, EmulatedPins
from tests.gateway import committed_into, wait_until


def source(**kw: Any) -> E220Source:
    return E220Source(type="e220", name="e0", simulate=Path("field.toml"), **kw)


def frames(events: list) -> list[tuple[int | None, bytes]]:
    return [(e.address, e.payload) for e in events if isinstance(e, Frame)]


# -- framing ---------------------------------------------------------------------------------------

def test_crc16_ccitt_false_check_value():
    assert crc16(b"123456789") == 0x29B1  # the catalogue's check value for CRC-16/CCITT-FALSE


def test_frame_with_rssi_byte():
    d = Deframer("e0")
    out = d.feed(encode_frame(0x0102, b"hi") + bytes([256 - 70]), 1.0, 2.0)
    assert out == [Frame("e0", 0x0102, b"hi", -70.0, None, 1.0, 2.0)]


def test_frame_split_across_reads_and_two_in_one():
    d = Deframer("e0", rssi_byte=False)
    a, b = encode_frame(1, b"one"), encode_frame(2, b"two")
    assert d.feed(a[:4], 0, 0) == [] and d.pending
    assert frames(d.feed(a[4:] + b, 0, 0)) == [(1, b"one"), (2, b"two")] and not d.pending


def test_corrupt_frame_is_rejected_and_the_next_one_found():
    d = Deframer("e0", rssi_byte=False)
    bad = bytearray(encode_frame(1, b"abc"))
    bad[6] ^= 0xFF
    out = d.feed(b"noise" + bytes(bad) + encode_frame(2, b"ok"), 0, 0)
    assert frames(out) == [(2, b"ok")]
    assert [r.reason for r in out if isinstance(r, Reject)][:2] == ["garbage", "bad_crc"]


def test_truncated_frame_given_up_after_a_quiet_gap_keeps_what_follows():
    d = Deframer("e0", rssi_byte=False)
    assert d.feed(encode_frame(1, b"a" * 30)[:6] + encode_frame(2, b"x" * 20)[:9], 0, 0) == []
    assert d.pending
    out = d.flush(0, 0)
    assert [r.reason for r in out] == ["truncated", "truncated"] and not d.pending
    assert [len(r.raw) for r in out] == [6, 9]  # each byte accounted for once


@given(st.binary(max_size=400), st.booleans())
def test_deframer_never_raises_and_accounts_for_every_byte(data, rssi):
    d = Deframer("e0", rssi_byte=rssi)
    out = d.feed(data, 0, 0) + d.flush(0, 0)
    assert all(isinstance(e, Frame | Reject) for e in out) and not d.pending


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=MAX_PAYLOAD)), max_size=5),
       st.binary(max_size=60), st.integers(1, 50))
def test_frames_after_garbage_are_all_recovered(sent, garbage, chunk):
    stream = garbage + b"".join(encode_frame(a, p) for a, p in sent)
    d = Deframer("e0", rssi_byte=False)
    out: list = []
    for i in range(0, len(stream), chunk):  # however the reads cut the stream
        out += d.feed(stream[i:i + chunk], 0, 0)
    out += d.flush(0, 0)
    got = frames(out)
    assert got[len(got) - len(sent):] == sent  # garbage may only add frames in front (a 1 in 65536 CRC)


@pytest.mark.parametrize(("kw", "fragment"), [({"channel": 38}, "0-37"), ({"channel": 31, "bandwidth_khz": 500}, "0-30"),
                                               ({"spreading_factor": 10}, "SF5-9"), ({"baudrate": 14400}, "expected one of"),
                                               ({"m1_pin": 23}, "three different")])
def test_config_rules(kw, fragment):
    with pytest.raises(ValidationError, match=fragment):
        source(**kw)


def test_registers():
    assert source(channel=15, spreading_factor=9, baudrate=115200).registers() == bytes(
        [0, 0, 0b111_100_00, 0x01, 15, 0x80])


# -- the source on a pty ------------------------------------------------------------------------------

class Running:
    def __init__(self, radio: E220Radio):
        self.events: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=radio.run, args=(committed_into(self.events), self.stop), daemon=True)
        self.thread.start()

    def wait_state(self, state: str, after: int = 0, timeout: float = 5.0) -> int:
        def find() -> int | None:
            for i, e in enumerate(list(self.events)[after:], after):
                if isinstance(e, SourceState) and e.state == state:
                    return i + 1
            return None
        return wait_until(find, timeout, f"state {state}") - 1


@pytest.fixture
def module(tmp_path):
    m = E220Emulator(tmp_path / "ttyE220", air_channel=0)
    m.plug()
    yield m
    m.unplug()


@pytest.fixture
def start(module):
    running: list[Running] = []

    def go(**kw: Any) -> Running:
        r = Running(E220Radio(source(**kw), str(module.link), pins=EmulatedPins(module)))
        running.append(r)
        return r

    yield go
    for r in running:
        r.stop.set()
        r.thread.join(timeout=10)
        assert not r.thread.is_alive()


def test_configures_in_mode_3_verifies_and_receives(module, start):
    r = start()
    r.wait_state("receiving")
    assert module.mode == 0 and module.flash == source().registers()
    assert module.commands == ["C1 00 06", "C0 00 06 00 00 70 01 00 80", "C1 00 06"]
    assert module.receive(0x0021, "0104D2", rssi=-95)
    wait_until(lambda: frames(r.events), 5.0, "a frame")
    f = next(e for e in r.events if isinstance(e, Frame))
    assert (f.address, f.payload, f.rssi) == (0x21, bytes.fromhex("0104D2"), -95.0)
    assert module.sent == b""  # nothing was transmitted


def test_registers_already_right_are_not_written_again(module, start):
    module.flash[:] = source().registers()
    module.registers[:] = module.flash
    r = start()
    r.wait_state("receiving")
    assert module.flash_writes == 0 and module.commands == ["C1 00 06"]


def test_corrupt_and_garbage_bytes_are_rejected_and_reception_goes_on(module, start):
    r = start()
    r.wait_state("receiving")
    bad = bytearray(encode_frame(1, b"\x01\x02"))
    bad[-1] ^= 1
    module.write_bytes(b"\x00\xff junk")
    module.write_packet(bytes(bad))
    module.receive(2, "AABB")
    wait_until(lambda: frames(r.events), 5.0, "the good frame")
    reasons = [e.reason for e in r.events if isinstance(e, Reject)]
    assert "garbage" in reasons and "bad_crc" in reasons


def test_aux_stuck_low_is_a_plain_error_and_recovers(module, start):
    module.busy = True
    r = start()
    down = r.wait_state("down")
    assert "AUX stayed low" in r.events[down].detail
    module.busy = False
    r.wait_state("receiving", down, timeout=10.0)


def test_unplug_and_replug(module, start):
    r = start()
    first = r.wait_state("receiving")
    module.unplug()
    r.wait_state("down", first)
    module.plug()
    r.wait_state("receiving", first + 1, timeout=10.0)
    module.receive(7, "07")
    wait_until(lambda: (7, b"\x07") in frames(r.events), 5.0, "a frame after the replug")


# -- edgegw doctor: the module asked through its mode pins, as a start asks it ------------------------


def test_doctor_configures_the_module_and_names_its_registers(module):
    from edgegw.doctor.radio import e220

    finding = e220("sources[0] e0", E220Radio(source(channel=3), str(module.link), pins=EmulatedPins(module)))
    assert finding.status == "ok", finding
    assert finding.message == ("the module answered in mode 3 and holds the configured registers"
                               " (00 00 70 01 03 80: channel 3, 921.2 MHz, SF9)")
    assert module.flash == source(channel=3).registers() and module.mode == 0  # as a start leaves it
    again = e220("sources[0] e0", E220Radio(source(channel=3), str(module.link), pins=EmulatedPins(module)))
    assert again.status == "ok" and module.flash_writes == 1  # right registers are not written again


def test_doctor_names_the_mode_pins_when_aux_stays_low(module):
    from edgegw.doctor.radio import e220

    module.busy = True
    finding = e220("sources[0] e0", E220Radio(source(aux_pin=5), str(module.link), pins=EmulatedPins(module)))
    assert finding.status == "fault" and "AUX stayed low" in finding.message
    assert "AUX (GPIO 5)" in finding.fix and "M0 (GPIO 23)" in finding.fix


def test_doctor_leaves_a_module_without_mode_pins_alone(module):
    from edgegw.doctor.radio import e220

    finding = e220("sources[0] e0", E220Radio(source(mode_pins=False), str(module.link)))
    assert finding.status == "skipped" and "mode_pins = false" in finding.message
    assert module.commands == [] and module.sent == b""  # nothing sent: it would have gone on the air


def test_doctor_without_rpi_gpio_says_what_to_install(module, monkeypatch):
    from edgegw.doctor.radio import e220

    monkeypatch.setitem(sys.modules, "RPi.GPIO", None)  # not installed (another test may have put a fake there)
    finding = e220("sources[0] e0", E220Radio(source(), str(module.link)))
    assert finding.status == "fault" and "RPi.GPIO is not installed" in finding.message
    assert finding.fix == "pip install 'edgegw[pi]' in the gateway's venv"
