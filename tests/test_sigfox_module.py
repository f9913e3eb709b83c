"""The Sigfox module driver against the emulated WSSFM10R3 on a real pty: identity, sends, downlinks,
module errors, garbage on the line, unplug and replug."""

from __future__ import annotations

import threading

import pytest
import serial
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgegw.config import SigfoxUplink
from edgegw.errors import ModuleError
from edgegw.uplink.sigfox.emulator import NO_DOWNLINK, SigfoxEmulator
from edgegw.uplink.sigfox.module import SigfoxModule


@pytest.fixture
def emulator(tmp_path):
    em = SigfoxEmulator(tmp_path / "ttySIGFOX", send_delay=0.05, downlink_delay=0.1)
    em.plug()
    yield em
    em.unplug()


@pytest.fixture
def module(emulator):
    m = SigfoxModule(SigfoxUplink(type="sigfox", port=str(emulator.link), send_timeout=5), str(emulator.link))
    yield m
    m.close()


def test_identity_is_read_at_open(module, emulator):
    identity = module.open()
    assert (identity.device_id, identity.pac) == ("0042ABCD", "A1B2C3D4E5F60718")
    assert emulator.commands[:3] == ["AT", "AT$I=10", "AT$I=11"]


def test_a_send_goes_over_the_air_and_a_downlink_comes_back_when_asked(module, emulator):
    module.open()
    stop = threading.Event()
    assert module.send(bytes(range(12)), downlink=False, stop=stop) is None
    assert module.send(b"\x01\x02", downlink=True, stop=stop) == bytes.fromhex("0102030405060708")
    assert [p for _, p in emulator.sent] == [bytes(range(12)), b"\x01\x02"]
    assert emulator.commands[-2:] == ["AT$SF=000102030405060708090A0B", "AT$SF=0102,1"]
    emulator.downlink = None  # the backend answers nothing: the uplink went all the same
    assert module.send(b"\x03", downlink=True, stop=stop) is None
    assert len(emulator.sent) == 3
    with pytest.raises(ValueError):
        module.send(bytes(13), downlink=False, stop=stop)


@pytest.mark.parametrize("reply", ["ERROR", "ERR_SFX_ERR_SEND_FRAME_DATA_LENGTH", NO_DOWNLINK])
def test_a_module_error_is_a_module_error(module, emulator, reply):
    module.open()
    emulator.fail_sends.append(reply)
    with pytest.raises(ModuleError, match="the module answered"):
        module.send(b"\x01", downlink=False, stop=threading.Event())
    assert emulator.sent == []


def test_garbage_on_the_line_is_skipped_never_trusted(module, emulator):
    module.open()
    for junk in ["\x00\xff\xfe", "O K", "RX=zz", "x" * 500, "OKAY", "\r\r\n\n"]:
        emulator.write_line(junk)
    assert module.send(b"\x07", downlink=False, stop=threading.Event()) is None
    assert [p for _, p in emulator.sent] == [b"\x07"]


def test_silence_is_an_error_within_the_send_timeout(module, emulator):
    module.open()
    emulator.send_delay = 30
    module.config = module.config.model_copy(update={"send_timeout": 0.5})
    with pytest.raises(ModuleError, match=r"no answer within 0\.5 s"):
        module.send(b"\x01", downlink=False, stop=threading.Event())


def test_an_unplugged_module_fails_and_is_found_again_at_its_path(module, emulator):
    module.open()
    emulator.unplug()
    with pytest.raises((serial.SerialException, OSError, ModuleError)):
        module.send(b"\x01", downlink=False, stop=threading.Event())
        module.send(b"\x01", downlink=False, stop=threading.Event())
    with pytest.raises((serial.SerialException, OSError)):
        module.open()
    emulator.plug()
    assert module.open().device_id == "0042ABCD"
    assert module.send(b"\x02", downlink=False, stop=threading.Event()) is None


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=80), max_size=4), st.sampled_from(["before", "instead"]))
def test_hostile_replies_never_crash_the_driver(module, emulator, junk, when):
    """Whatever the line carries, a send ends in its answer or a ModuleError, never another exception."""
    if not module.is_open:
        module.open()
    text = [j.decode("latin-1") for j in junk]
    if when == "before":  # noise on the line before the command
        for t in text:
            emulator.write_line(t)
    else:  # noise as the module's answer
        emulator.fail_sends.append("\r\n".join(text))
    module.config = module.config.model_copy(update={"send_timeout": 0.3})
    try:
        module.send(b"\x01", downlink=False, stop=threading.Event())
    except ModuleError:
        module.close()
    emulator.fail_sends.clear()
