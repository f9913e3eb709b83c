"""The 12-byte Sigfox alarm message, version 1: encoder (gateway) and decoder (platform).

A Sigfox uplink carries at most 12 bytes, so an alarm goes as a fixed layout, big-endian:

=====  =====  ==========================================================================================
byte   bits   field
=====  =====  ==========================================================================================
0      7-5    layout version: 1
0      4-0    alarm kind code (:data:`KIND_CODES`; 0: a kind this version does not know)
1      7-5    severity: 0 informational, 1 low, 2 medium, 3 high, 4 critical
1      4-0    flags: 0x01 late, 0x02 time estimated (clock not synchronised), 0x04 frame authenticated,
              0x08 fallback (sent because no main uplink acknowledged it in time); 0x10 reserved (0)
2-3    16     device ref: the first 2 bytes of SHA-256(device id)
4-7    32     alarm ref: the first 4 bytes of SHA-256(alarm id), what de-duplicates it (see below)
8-9    16     value, signed, in the reading's own unit (:data:`VALUE_OF`; -32768: none; clamped)
10-11  16     raised at: minutes since the Unix epoch, modulo 65536 (45.5 days; the decoder takes the
              latest such minute not after the message's reception time)
=====  =====  ==========================================================================================

De-duplication. The same alarm later arrives over the main uplink as a batch item whose ``id`` is
the alarm id; the platform computes :func:`alarm_ref` of it and matches it with the ref of a Sigfox
message from the same gateway (Sigfox device id) within a few days: :func:`same_alarm`. Four bytes of a
hash make a false match between two alarms of one gateway within those days about one in a few
hundred million.

This module is self-contained (standard library only) so a platform can copy it beside its Sigfox
backend callback; ``python -m edgegw.uplink.sigfox.codec HEX [RECEIVED_AT]`` decodes one message.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import struct
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

VERSION = 1
SIZE = 12
KIND_CODES = {
    "trap_sprung": 1, "trap_reminder": 2, "trap_rearmed": 3, "water_level_alarm": 4, "water_level_clear": 5,
    "water_rise": 6, "device_silent": 7, "device_back": 8, "battery_low": 9, "battery_ok": 10, "sensor_fault": 11,
    "database_damaged": 12,
}
KINDS = {code: kind for kind, code in KIND_CODES.items()}
SEVERITIES = ("informational", "low", "medium", "high", "critical")
# Which detail of an alarm is its value, and the factor it is sent with (battery volts as centivolts).
VALUE_OF = {"water_level_alarm": ("value", 1), "water_level_clear": ("value", 1), "water_rise": ("rise", 1),
            "trap_reminder": ("reminder", 1), "battery_low": ("battery", 100), "battery_ok": ("battery", 100)}
NO_VALUE = -32768
FLAGS = {"late": 0x01, "time_estimated": 0x02, "verified": 0x04, "fallback": 0x08}
_LAYOUT = struct.Struct(">BBHIhH")
# A gateway clock this far ahead of the Sigfox backend's still decodes as "just now", not 45 days ago.
CLOCK_AHEAD_MINUTES = 10


class CodecError(ValueError):
    """Not a version 1 alarm message: wrong length, or another layout version."""


def _ref(text: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big")


def alarm_ref(alarm_id: str) -> str:
    """The 8 hex digits that stand for ``alarm_id`` in a message (and on the platform's side)."""
    return f"{_ref(alarm_id, 4):08x}"


def device_ref(device_id: str) -> str:
    """The 4 hex digits that stand for ``device_id`` in a message."""
    return f"{_ref(device_id, 2):04x}"


@dataclass(frozen=True, slots=True)
class AlarmMessage:
    """What one message says; :func:`encode` of it gives the 12 bytes back."""

    kind: str
    severity: str
    device_ref: str
    alarm_ref: str
    value: int | None
    raised_at: float  # the start of the minute, seconds since the epoch
    late: bool = False
    time_estimated: bool = False
    verified: bool = False
    fallback: bool = False
    version: int = VERSION
    device: str | None = None  # resolved by the decoder when it is given the gateway's device ids


def message_of(item: dict[str, Any], fallback: bool) -> AlarmMessage:
    """The message for an alarm batch item (see the batch JSON Schema)."""
    key, factor = VALUE_OF.get(item["alarm"], (None, 1))
    raw = (item.get("details") or {}).get(key) if key else None
    value = None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw):  # NaN is no value
        value = max(-32767, min(32767, round(raw * factor)))
    return AlarmMessage(
        kind=item["alarm"], severity=item["severity"], device_ref=device_ref(item["device"]),
        alarm_ref=alarm_ref(item["id"]), value=value, raised_at=_parse_time(item["raised_at"]),
        late=bool(item.get("late")), time_estimated=item.get("time_quality", "synced") != "synced",
        verified=bool(item.get("verified")), fallback=fallback,
    )


def _parse_time(iso: str) -> float:
    """Seconds since the epoch of the batch's ``...T..:..:..(.mmm)Z``."""
    base, _, frac = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + (float("0." + frac) if frac else 0.0)


def encode(message: AlarmMessage) -> bytes:
    """The 12 bytes of ``message``."""
    flags = sum(bit for name, bit in FLAGS.items() if getattr(message, name))
    head = (VERSION << 5) | KIND_CODES.get(message.kind, 0)
    value = NO_VALUE if message.value is None else message.value
    minute = int(message.raised_at // 60) % 65536
    return _LAYOUT.pack(head, (SEVERITIES.index(message.severity) << 5) | flags, int(message.device_ref, 16),
                        int(message.alarm_ref, 16), value, minute)


def decode(data: bytes | str, received_at: float, devices: tuple[str, ...] | list[str] = ()) -> AlarmMessage:
    """Decode a message (bytes, or the hex a Sigfox callback gives) received at ``received_at``
    (epoch seconds, the callback's ``time``); ``devices``: the gateway's device ids, to name the device."""
    raw = bytes.fromhex(data) if isinstance(data, str) else bytes(data)
    if len(raw) != SIZE:
        raise CodecError(f"expected {SIZE} bytes, got {len(raw)}")
    head, sev_flags, dev, ref, value, minute = _LAYOUT.unpack(raw)
    if head >> 5 != VERSION:
        raise CodecError(f"layout version {head >> 5}; this decoder knows version {VERSION}")
    severity = sev_flags >> 5
    if severity >= len(SEVERITIES):
        raise CodecError(f"severity code {severity} is none of 0-{len(SEVERITIES) - 1}")
    received = int(received_at // 60)
    back = (received - minute) % 65536
    if back > 65536 - CLOCK_AHEAD_MINUTES:
        back -= 65536  # raised a few minutes "after" reception: the gateway's clock runs ahead
    dev_hex = f"{dev:04x}"
    return AlarmMessage(
        kind=KINDS.get(head & 0x1F, "unknown"), severity=SEVERITIES[severity], device_ref=dev_hex,
        alarm_ref=f"{ref:08x}", value=None if value == NO_VALUE else value, raised_at=float((received - back) * 60),
        **{name: bool(sev_flags & bit) for name, bit in FLAGS.items()},
        device=next((d for d in devices if device_ref(d) == dev_hex), None),
    )


def same_alarm(message: AlarmMessage, item: dict[str, Any]) -> bool:
    """Whether an alarm batch item that arrived over the main uplink is the one ``message`` told of."""
    return item.get("type") == "alarm" and alarm_ref(item["id"]) == message.alarm_ref and \
        device_ref(item["device"]) == message.device_ref


def callback(body: dict[str, Any], devices: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Decode the JSON a Sigfox backend callback posts (``{"device", "time", "data", "seqNumber"}``)
    into a plain dict, with the Sigfox device id of the gateway's module as ``sigfox_device``."""
    message = decode(body["data"], float(body["time"]), devices)
    return {"sigfox_device": body.get("device"), "seq_number": body.get("seqNumber"), **asdict(message)}


if __name__ == "__main__":  # python -m edgegw.uplink.sigfox.codec 2412... [received_at]
    at = float(sys.argv[2]) if len(sys.argv) > 2 else time.time()
    print(json.dumps(asdict(decode(sys.argv[1], at)), indent=2))
