"""Tests of the Interplan IM920sL source: its line parser (hypothesis) and the source on a real pty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edgegw.errors import ModuleError
from edgegw.model import Frame, Reject
from edgegw.radio.im920sl import Im920slRadio, Im920slSource, parse_line, rssi_dbm
from edgegw.radio.im920sl_emulator import Im920slEmulator
from edgegw.radio.serial_line import LineReader
from tests.gateway import wait_until
from tests.test_rylr import Running

CONFIG = ["ENWR", "STNN 0001", "STCH 01", "ECIO", "DSWR"]


def source(**kw: Any) -> Im920slSource:
    return Im920slSource(type="im920sl", name="im0", simulate=Path("field.toml"), **kw)


def test_parse_text_line():
    assert parse_line("00,0001,C6:0A0B", "im0", "text", "hex", 1.0, 2.0) == Frame(
        "im0", 1, b"\x0a\x0b", -58.0, None, 1.0, 2.0)


@pytest.mark.parametrize("data", ["48,65,6C", "48656C"])
def test_parse_hex_line_with_or_without_commas(data):
    frame = parse_line(f"00,00A1,80:{data}", "im0", "hex", "hex", 0.0, 0.0)
    assert isinstance(frame, Frame) and (frame.address, frame.payload, frame.rssi) == (0xA1, b"Hel", -128.0)


@pytest.mark.parametrize("line", ["", "OK", "NG", "00,0001:AB", "00,001,C6:AB", "0,0001,C6:AB", "00,0001,C6AB"])
def test_parse_garbage(line):
    r = parse_line(line, "im0", "text", "hex", 0.0, 0.0)
    assert isinstance(r, Reject) and r.reason == "garbage"


def test_rssi_byte_is_signed():
    assert (rssi_dbm(0xC6), rssi_dbm(0x7F), rssi_dbm(0x00)) == (-58.0, 127.0, 0.0)


@given(st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=120), st.sampled_from(["text", "hex"]),
       st.sampled_from(["hex", "text", "base64"]))
def test_parse_never_raises(line, io, encoding):
    assert isinstance(parse_line(line, "im0", io, encoding, 0.0, 0.0), Frame | Reject)


@given(st.binary(max_size=32), st.integers(0, 0xFFFF), st.integers(0, 255))
def test_parse_round_trips(payload, node, rssi):
    frame = parse_line(f"00,{node:04X},{rssi:02X}:{payload.hex()}", "im0", "text", "hex", 0.0, 0.0)
    assert isinstance(frame, Frame) and (frame.address, frame.payload) == (node, payload)


@pytest.mark.parametrize(("kw", "fragment"), [({"channel": 30}, "channel 1-29"), ({"baudrate": 14400}, "19200"),
                                               ({"node": "1"}, "pattern")])
def test_config_rules(kw, fragment):
    with pytest.raises(ValidationError, match=fragment):
        source(**kw)


@pytest.fixture
def emulator(tmp_path):
    emu = Im920slEmulator(tmp_path / "ttyIM0")
    emu.plug()
    yield emu
    emu.unplug()


@pytest.fixture
def start_radio():
    running: list[Running] = []

    def start(emulator: Im920slEmulator, **config: Any) -> Running:
        r = Running(Im920slRadio(source(**config), str(emulator.link)), emulator).start()  # type: ignore[arg-type]
        running.append(r)
        return r

    yield start
    for r in running:
        r.halt()


def test_configures_into_flash_and_receives(emulator, start_radio):
    r = start_radio(emulator)
    r.wait_state("receiving")
    assert emulator.commands == CONFIG
    assert (emulator.flash.node, emulator.flash.channel, emulator.flash.io) == ("0001", 1, "ECIO")
    assert emulator.receive(0x21, "0104D2", rssi=-90)
    wait_until(r.frames, 5.0, "a frame")
    f = r.frames()[0]
    assert (f.address, f.payload, f.rssi) == (0x21, bytes.fromhex("0104D2"), -90.0)


def test_hex_io_receives_bytes(emulator, start_radio):
    r = start_radio(emulator, io="hex")
    r.wait_state("receiving")
    assert emulator.settings.io == "DCIO"
    emulator.receive(5, "00FF10")
    wait_until(r.frames, 5.0, "a frame")
    assert r.frames()[0].payload == b"\x00\xff\x10"


def test_busy_module_is_asked_again(emulator, start_radio):
    emulator.busy_for = 2  # NG, NG, then the module is free
    r = start_radio(emulator)
    r.wait_state("receiving")
    assert emulator.commands == ["ENWR"] * 3 + CONFIG[1:]
    assert [s.state for s in r.states()] == ["starting", "receiving"]


def test_refused_every_time_is_a_module_error(emulator):
    emulator.busy_for = 99
    radio = Im920slRadio(source(), str(emulator.link))
    with serial.Serial(str(emulator.link), 19200, timeout=0.2) as port:
        with pytest.raises(ModuleError, match=r"STCH 01: module answered NG \(refused, or busy"):
            radio._command(port, LineReader(port), "STCH 01", lambda e: None)


def test_garbage_is_rejected_and_unplug_recovered(emulator, start_radio):
    r = start_radio(emulator)
    first = r.wait_state("receiving")
    for junk in ["\xff\xfe", "00,0001,C6", "00,0001,C6:ZZ", "NG"]:
        emulator.write_line(junk)
    emulator.receive(2, "AA")
    wait_until(r.frames, 5.0, "the frame after the junk")
    assert [x.reason for x in r.of(Reject)] == ["garbage", "garbage", "bad_hex", "garbage"]
    emulator.unplug()
    r.wait_state("down", first)
    emulator.plug()
    r.wait_state("receiving", first + 1, timeout=10.0)
    emulator.receive(3, "BB")
    wait_until(lambda: [f for f in r.frames() if f.address == 3], 5.0, "a frame after the replug")


def test_settings_in_flash_survive_a_reset(emulator, start_radio):
    r = start_radio(emulator, channel=7)
    r.wait_state("receiving")
    emulator.air_channel = 7
    emulator.reset()  # the module announces nothing; flash keeps the channel
    assert emulator.receive(4, "CC")
    wait_until(r.frames, 5.0, "a frame after the reset")
