"""The 12-byte Sigfox alarm message: round trip (hypothesis), de-duplication against the main uplink's item."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegw.config.rules import AlarmKind
from edgegw.items import alarm_item
from edgegw.model import Alarm
from edgegw.uplink.sigfox import codec

NOW = 1_796_000_000.0  # 2026-12

messages = st.builds(
    codec.AlarmMessage,
    kind=st.sampled_from(sorted(codec.KIND_CODES)),
    severity=st.sampled_from(codec.SEVERITIES),
    device_ref=st.integers(0, 0xFFFF).map(lambda n: f"{n:04x}"),
    alarm_ref=st.integers(0, 0xFFFFFFFF).map(lambda n: f"{n:08x}"),
    value=st.none() | st.integers(-32767, 32767),
    # raised up to 45 days before reception, or a few minutes "after" (a clock running ahead)
    raised_at=st.integers(int(NOW // 60) - 65535 + codec.CLOCK_AHEAD_MINUTES,
                          int(NOW // 60) + codec.CLOCK_AHEAD_MINUTES - 1).map(lambda m: m * 60.0),
    late=st.booleans(), time_estimated=st.booleans(), verified=st.booleans(), fallback=st.booleans(),
)


@given(messages)
def test_every_message_decodes_to_itself(message):
    data = codec.encode(message)
    assert len(data) == codec.SIZE
    assert codec.decode(data, NOW) == message
    assert codec.decode(data.hex().upper(), NOW) == message  # as a Sigfox callback gives it


@given(st.binary(min_size=0, max_size=20))
def test_any_bytes_decode_or_raise_codec_error(data):
    try:
        message = codec.decode(data, NOW)
    except codec.CodecError:
        return
    assert codec.encode(message)[2:] == data[2:]  # kind and severity may be normalised, the rest is kept


alarm_ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80)


@given(alarm_ids, st.text(min_size=1, max_size=20), st.sampled_from(get_args(AlarmKind)),
       st.sampled_from(codec.SEVERITIES), st.floats(0, 20000), st.integers(0, 44 * 86400))
def test_the_platform_matches_the_message_to_the_alarm_arriving_later_over_the_main_uplink(
        alarm_id, device, kind, severity, value, age):
    alarm = Alarm(alarm_id, kind, severity, device, "rule", NOW - age, "msg",
                  {"value": value, "rise": value, "reminder": 3, "battery": 3.31})
    item = alarm_item(alarm)
    decoded = codec.decode(codec.encode(codec.message_of(item, fallback=True)), NOW, devices=["x", device])
    assert codec.same_alarm(decoded, item)
    assert decoded.alarm_ref == codec.alarm_ref(alarm_id) and decoded.device == device
    assert decoded.kind == kind and decoded.severity == severity and decoded.fallback
    assert decoded.raised_at == (NOW - age) // 60 * 60
    if kind in ("water_level_alarm", "water_level_clear", "water_rise"):
        assert decoded.value == min(32767, round(value))
    assert not codec.same_alarm(decoded, {**item, "id": alarm_id + "x"}) or \
        codec.alarm_ref(alarm_id + "x") == codec.alarm_ref(alarm_id)


def test_every_alarm_kind_has_a_code():
    assert set(codec.KIND_CODES) == set(get_args(AlarmKind))
    assert len(set(codec.KIND_CODES.values())) == len(codec.KIND_CODES) and max(codec.KIND_CODES.values()) < 32


def test_a_known_message_byte_by_byte():
    item = alarm_item(Alarm("river-01:0:7:water:water_level_alarm", "water_level_alarm", "critical", "river-01",
                            "water", NOW, "danger", {"value": 3200.0}))
    data = codec.encode(codec.message_of(item, fallback=False))
    assert data[0] == 0x24 and data[1] == 0x80  # version 1, kind 4; critical, no flags
    assert data[2:4].hex() == codec.device_ref("river-01") and data[4:8].hex() == codec.alarm_ref(item["id"])
    assert int.from_bytes(data[8:10], "big", signed=True) == 3200
    assert int.from_bytes(data[10:12], "big") == int(NOW // 60) % 65536


@pytest.mark.parametrize("bad,why", [("00" * 11, "expected 12 bytes"), ("44" + "00" * 11, "layout version 2"),
                                     ("21E0" + "00" * 10, "severity code 7")])
def test_what_is_not_a_version_1_message_is_refused(bad, why):
    with pytest.raises(codec.CodecError, match=why):
        codec.decode(bad, NOW)


def test_the_decoder_runs_from_the_command_line_for_a_backend_callback():
    item = alarm_item(Alarm("trap-01:0:5:trap:trap_sprung", "trap_sprung", "high", "trap-01", "trap", NOW, "sprung"))
    hexdata = codec.encode(codec.message_of(item, fallback=True)).hex()
    out = subprocess.run([sys.executable, "-m", "edgegw.uplink.sigfox.codec", hexdata, str(NOW + 30)],
                         capture_output=True, text=True, check=True).stdout
    assert '"kind": "trap_sprung"' in out and codec.alarm_ref(item["id"]) in out
    body = codec.callback({"device": "00C0FFEE", "time": NOW + 30, "data": hexdata, "seqNumber": 12}, ["trap-01"])
    assert body["sigfox_device"] == "00C0FFEE" and body["device"] == "trap-01" and body["kind"] == "trap_sprung"
