"""River or paddy-field water-level sensor (ultrasonic or pressure gauge).

Payload: exactly 9 bytes, big-endian.

    ======  =====  ==========================================================
    bytes   type   meaning
    ======  =====  ==========================================================
    0       u8     format version, must be 1
    1-2     u16    water level, millimetres above the gauge datum;
                   0xFFFF = no echo / measurement failed
    3-4     i16    water temperature, 0.01 °C
    5-6     u16    battery voltage, millivolts
    7-8     u16    frame counter (wraps at 65536)
    ======  =====  ==========================================================

Example: ``01 04 D2 08 FC 0D AC 01 00`` = version 1, level 1234 mm, 23.00 °C, 3.500 V, counter 256.

Values: ``level`` (mm, integer; plausible 0..10000), ``water_temperature`` (Cel, 2 decimals;
plausible -10..50), ``battery`` (V, 3 decimals). A level of 0xFFFF is not a reading: decoding
raises ``DecodeError("sensor_error")``. :meth:`WaterLevelSensor.encode` produces such a frame when
``level`` is missing or None (for the simulator).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from edgegw.drivers import Decoded, Driver, ValueSpec
from edgegw.errors import DecodeError
from edgegw.model import Value

_FORMAT = struct.Struct(">BHhHH")
_VERSION = 1
NO_ECHO = 0xFFFF


class WaterLevelSensor(Driver):
    name = "water_level"
    description = "river / paddy water-level sensor: level above gauge datum, water temperature, battery"
    values = {
        "level": ValueSpec(unit="mm", minimum=0, maximum=10000, description="water level above the gauge datum"),
        "water_temperature": ValueSpec(unit="Cel", minimum=-10.0, maximum=50.0, description="water temperature"),
        "battery": ValueSpec(unit="V", minimum=0.0, maximum=4.5, description="battery voltage"),
    }
    counter_bits = 16
    max_payload = _FORMAT.size

    def decode(self, payload: bytes) -> Decoded:
        if len(payload) != _FORMAT.size:
            raise DecodeError("wrong_length", f"water_level expects {_FORMAT.size} bytes, got {len(payload)}")
        version, level, centi_celsius, millivolts, counter = _FORMAT.unpack(payload)
        if version != _VERSION:
            raise DecodeError("bad_version", f"water_level format version {version}, expected {_VERSION}")
        if level == NO_ECHO:
            raise DecodeError("sensor_error", "level 0xFFFF: no echo, measurement failed")
        return Decoded(
            {
                "level": level,
                "water_temperature": round(centi_celsius / 100, 2),
                "battery": round(millivolts / 1000, 3),
            },
            counter,
        )

    def encode(self, values: Mapping[str, Value], counter: int | None = None) -> bytes:
        level_value = values.get("level")
        level = NO_ECHO if level_value is None else round(float(level_value))
        centi_celsius = round(float(values["water_temperature"]) * 100)
        millivolts = round(float(values["battery"]) * 1000)
        if not 0 <= level <= NO_ECHO:
            raise ValueError(f"water_level level {level_value} mm does not fit in a u16")
        if not -0x8000 <= centi_celsius <= 0x7FFF:
            raise ValueError(f"water_level temperature {values['water_temperature']} °C does not fit in an i16")
        if not 0 <= millivolts <= 0xFFFF:
            raise ValueError(f"water_level battery {values['battery']} V does not fit in a u16 of millivolts")
        return _FORMAT.pack(_VERSION, level, centi_celsius, millivolts, (counter or 0) % (1 << 16))
