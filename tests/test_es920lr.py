"""Tests of the EASEL ES920LR source: its line parser (hypothesis) and the source on a real pty.

The emulator answers the boot prompt, processor-mode commands (OK / NG nnn) and, after ``start``,
treats every host line as data to transmit, as the module does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgegw.errors import ModuleError
from edgegw.model import Frame, Reject
from edgegw.radio.es920lr import ERRORS, Es920lrRadio, Es920lrSource, parse_line
from edgegw.radio.es920lr_emulator import Es920lrEmulator
from edgegw.radio.serial_line import LineReader
from tests.gateway import wait_until
from tests.test_rylr import Running

WATER = "0104D208FC0DAC0100"
CONFIG = ["", "2", "node 1", "bw 4", "sf 7", "channel 1", "panid 0001", "ownid 0000", "rcvid 1", "rssi 1", "save",
          "start"]


def source(**kw: Any) -> Es920lrSource:
    return Es920lrSource(type="es920lr", name="es0", simulate=Path("field.toml"), **kw)


# -- the parser ----------------------------------------------------------------------------------------

def test_parse_line_slices_rssi_pan_and_sender():
    frame = parse_line(f"-0700001002A{WATER}", "es0", "hex", 1.0, 2.0)
    assert frame == Frame("es0", 0x2A, bytes.fromhex(WATER), -70.0, None, 1.0, 2.0)


@pytest.mark.parametrize("line", ["", "OK", "-07", "-070000Z0001AB", "x0700001000100", "----- operation"])
def test_parse_line_garbage(line):
    r = parse_line(line, "es0", "hex", 0.0, 0.0)
    assert isinstance(r, Reject) and r.reason == "garbage"


def test_parse_line_bad_hex_keeps_the_sender():
    r = parse_line("-0700001002AZZ", "es0", "hex", 0.0, 0.0)
    assert isinstance(r, Reject) and (r.reason, r.address) == ("bad_hex", 0x2A)


@given(st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=120), st.sampled_from(["hex", "text", "base64"]))
def test_parse_line_never_raises(line, encoding):
    assert isinstance(parse_line(line, "es0", encoding, 0.0, 0.0), Frame | Reject)


@given(st.binary(max_size=50), st.integers(-140, 0), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_parse_line_round_trips(payload, rssi, pan, sender):
    frame = parse_line(f"{rssi:04d}{pan:04X}{sender:04x}{payload.hex()}", "es0", "hex", 0.0, 0.0)
    assert isinstance(frame, Frame)
    assert (frame.address, frame.payload, frame.rssi) == (sender, payload, float(rssi))


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "fragment"), [
    ({"channel": 16}, "expected a channel 1-15"),
    ({"bandwidth_khz": 100}, "expected one of [62.5, 125, 250, 500] kHz"),
    ({"baudrate": 14400}, "baudrate setting takes one of"),
    ({"spreading_factor": 12, "node": "end"}, "ARIB STD-T108"),
    ({"pan_id": "12345"}, "pattern"),
])
def test_config_rules(kw, fragment):
    with pytest.raises(ValidationError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        source(**kw)


# -- the source on a pty --------------------------------------------------------------------------------

@pytest.fixture
def emulator(tmp_path):
    emu = Es920lrEmulator(tmp_path / "ttyES0")
    emu.plug()
    yield emu
    emu.unplug()


@pytest.fixture
def start_radio():
    running: list[Running] = []

    def start(emulator: Es920lrEmulator, **config: Any) -> Running:
        r = Running(Es920lrRadio(source(**config), str(emulator.link)), emulator).start()  # type: ignore[arg-type]
        running.append(r)
        return r

    yield start
    for r in running:
        r.halt()


def test_answers_the_prompt_configures_saves_and_receives(emulator, start_radio):
    r = start_radio(emulator)
    r.wait_state("receiving")
    assert emulator.commands == CONFIG
    assert emulator.state == "operation" and emulator.flash.channel == 1
    assert emulator.receive(0x15, WATER, rssi=-88)
    wait_until(r.frames, 5.0, "a frame")
    f = r.frames()[0]
    assert (f.address, f.payload, f.rssi) == (0x15, bytes.fromhex(WATER), -88.0)
    assert emulator.sent == []  # nothing went on the air


def test_garbage_lines_are_rejected_and_the_source_keeps_going(emulator, start_radio):
    r = start_radio(emulator)
    r.wait_state("receiving")
    for junk in ["\x00\xff\xfe", "-0700001002AZZ", "NG 101", "-07"]:
        emulator.write_line(junk)
    emulator.receive(3, "AB")
    wait_until(r.frames, 5.0, "the good frame after the junk")
    assert [x.reason for x in r.of(Reject)] == ["garbage", "bad_hex", "garbage", "garbage"]


def test_a_running_module_is_not_sent_commands(tmp_path, start_radio):
    emu = Es920lrEmulator(tmp_path / "ttyES1")
    emu.plug()
    try:
        emu.answer("2")  # what an earlier run did: configured, saved, started
        for cmd in CONFIG[2:]:
            emu.answer(cmd)
        emu.take_unread()  # the prompt and replies of that run are long gone
        emu.commands.clear()
        r = start_radio(emu)
        r.wait_state("receiving", timeout=5.0)
        assert emu.commands == [""] and emu.sent == []  # the probe only: a command would have been transmitted
        emu.receive(7, "CAFE")
        wait_until(r.frames, 5.0, "a frame")
    finally:
        emu.unplug()


def test_module_reset_is_answered_and_configured_again(emulator, start_radio):
    r = start_radio(emulator)
    first = r.wait_state("receiving")
    emulator.commands.clear()
    emulator.flash.sf = 9  # what a reset brings back differs from what the gateway wants
    emulator.reset()
    r.wait_state("receiving", first + 1)
    # Set again in full; not saved again: this source saved them at its start (flash wears out).
    assert emulator.commands == [c for c in CONFIG[1:] if c != "save"] and emulator.settings.sf == 7
    emulator.receive(1, "01")
    wait_until(r.frames, 5.0, "a frame after the reset")


def test_unplug_and_replug(emulator, start_radio):
    r = start_radio(emulator)
    first = r.wait_state("receiving")
    emulator.unplug()
    r.wait_state("down", first)
    emulator.plug()
    r.wait_state("receiving", first + 1, timeout=10.0)
    assert emulator.receive(9, "0A")
    wait_until(lambda: [f for f in r.frames() if f.address == 9], 5.0, "a frame after the replug")
    assert emulator.commands.count("save") == 1  # a flapping cable does not write the module's flash each time



@pytest.mark.parametrize("code", [1, 2, 102])
def test_ng_code_is_named_in_the_error(emulator, code):
    emulator.answer("2")
    radio = Es920lrRadio(source(), str(emulator.link))
    emulator.answer = lambda cmd, _own=emulator.answer: f"NG {code:03d}" if cmd.startswith("sf") else _own(cmd)
    with serial.Serial(str(emulator.link), 115200, timeout=0.2) as port, pytest.raises(ModuleError) as exc:
        radio._command(port, LineReader(port), "sf 7", lambda e: None)
    assert str(exc.value) == f"sf 7: module answered NG {code:03d} ({ERRORS[code]})"


def test_stops_promptly(emulator, start_radio):
    r = start_radio(emulator)
    r.wait_state("receiving")
    r.stop.set()
    r.thread.join(timeout=5)
    assert not r.thread.is_alive()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=5))
def test_hostile_lines_never_stop_the_source(tmp_path_factory, lines):
    emu = Es920lrEmulator(tmp_path_factory.mktemp("es") / "tty")
    emu.plug()
    r = Running(Es920lrRadio(source(), str(emu.link)), emu).start()  # type: ignore[arg-type]
    try:
        r.wait_state("receiving")
        for line in lines:
            emu.write_line(line.decode("latin-1"))
        emu.receive(0x99, "99")
        wait_until(lambda: [f for f in r.frames() if f.address == 0x99], 5.0, "the frame after the junk")
        assert r.thread.is_alive()
    finally:
        r.halt()
        emu.unplug()
