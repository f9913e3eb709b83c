"""Wildlife-trap sensor (わなセンサー): reports when a trap is sprung.

A pin is pulled out of the unit when the animal trips the wire; the unit then sends an uplink so
the hunter does not have to patrol every trap. It also reports when its box is opened (tamper).

Payload: exactly 6 bytes, big-endian.

    ======  =====  ==========================================================
    bytes   type   meaning
    ======  =====  ==========================================================
    0       u8     format version, must be 1
    1       u8     flags: bit 0 = sprung (1) / armed (0), bit 1 = tamper (box
                   opened); bits 2-7 are reserved and must be 0
    2-3     u16    battery voltage, millivolts
    4-5     u16    frame counter (wraps at 65536)
    ======  =====  ==========================================================

Example: ``01 01 0C E4 00 2A`` = version 1, sprung, no tamper, 3.300 V, counter 42.

Values: ``state`` ("armed" | "sprung"), ``tamper`` (bool), ``battery`` (V, 3 decimals).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from edgegw.drivers import Decoded, Driver, ValueSpec
from edgegw.errors import DecodeError
from edgegw.model import Value

_FORMAT = struct.Struct(">BBHH")
_VERSION = 1
_SPRUNG = 0x01
_TAMPER = 0x02
_KNOWN_FLAGS = _SPRUNG | _TAMPER


class TrapSensor(Driver):
    name = "trap"
    description = "wildlife-trap sensor (わなセンサー): sprung/armed state, box tamper, battery"
    values = {
        "state": ValueSpec(choices=("armed", "sprung"), description="sprung when the pin has been pulled"),
        "tamper": ValueSpec(description="the unit's box has been opened"),
        "battery": ValueSpec(unit="V", minimum=0.0, maximum=4.5, description="battery voltage"),
    }
    counter_bits = 16
    max_payload = _FORMAT.size

    def decode(self, payload: bytes) -> Decoded:
        if len(payload) != _FORMAT.size:
            raise DecodeError("wrong_length", f"trap expects {_FORMAT.size} bytes, got {len(payload)}")
        version, flags, millivolts, counter = _FORMAT.unpack(payload)
        if version != _VERSION:
            raise DecodeError("bad_version", f"trap format version {version}, expected {_VERSION}")
        if flags & ~_KNOWN_FLAGS:
            raise DecodeError("bad_value", f"trap flags 0x{flags:02x} set reserved bits")
        return Decoded(
            {
                "state": "sprung" if flags & _SPRUNG else "armed",
                "tamper": bool(flags & _TAMPER),
                "battery": round(millivolts / 1000, 3),
            },
            counter,
        )

    def encode(self, values: Mapping[str, Value], counter: int | None = None) -> bytes:
        state = values["state"]
        if state not in ("armed", "sprung"):
            raise ValueError(f"trap state must be 'armed' or 'sprung', not {state!r}")
        flags = (_SPRUNG if state == "sprung" else 0) | (_TAMPER if values.get("tamper") else 0)
        millivolts = round(float(values["battery"]) * 1000)
        if not 0 <= millivolts <= 0xFFFF:
            raise ValueError(f"trap battery {values['battery']} V does not fit in a u16 of millivolts")
        return _FORMAT.pack(_VERSION, flags, millivolts, (counter or 0) % (1 << 16))
