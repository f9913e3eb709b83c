"""Tests of the bundled drivers, the declarative LayoutDriver, and driver discovery."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.drivers import FIELD_TYPES, Decoded, Driver, LayoutDriver, LayoutField, load_drivers
from edgegw.errors import DecodeError, DriverLoadError
from edgegw_drivers.trap import TrapSensor
from edgegw_drivers.water_level import WaterLevelSensor

TRAP = TrapSensor()
WATER = WaterLevelSensor()

# -- hand-written payloads ---------------------------------------------------------------------------


def test_trap_decodes_known_payload():
    d = TRAP.decode(bytes.fromhex("01010CE4002A"))
    assert d == Decoded({"state": "sprung", "tamper": False, "battery": 3.3}, counter=42)


def test_trap_decodes_armed_with_tamper():
    d = TRAP.decode(bytes.fromhex("01020BB8FFFF"))
    assert d.values == {"state": "armed", "tamper": True, "battery": 3.0}
    assert d.counter == 65535
    assert d.epoch is None


def test_trap_sprung_and_tamper_at_once():
    d = TRAP.decode(bytes.fromhex("0103000100FF"))
    assert d.values == {"state": "sprung", "tamper": True, "battery": 0.001}
    assert d.counter == 255


def test_trap_encode_known_payload():
    assert TRAP.encode({"state": "sprung", "tamper": False, "battery": 3.3}, counter=42) == bytes.fromhex("01010CE4002A")
    # the counter wraps at 16 bits; a missing counter is 0
    assert TRAP.encode({"state": "armed", "tamper": True, "battery": 3.0}, counter=65536 + 7)[4:] == b"\x00\x07"
    assert TRAP.encode({"state": "armed", "tamper": True, "battery": 3.0})[4:] == b"\x00\x00"


@pytest.mark.parametrize("hexpayload", ["", "01", "01010CE400", "01010CE4002A00"])
def test_trap_wrong_length(hexpayload):
    with pytest.raises(DecodeError) as e:
        TRAP.decode(bytes.fromhex(hexpayload))
    assert e.value.reason == "wrong_length"


@pytest.mark.parametrize("version", [0, 2, 0xFF])
def test_trap_bad_version(version):
    with pytest.raises(DecodeError) as e:
        TRAP.decode(bytes([version]) + bytes.fromhex("010CE4002A"))
    assert e.value.reason == "bad_version"


@pytest.mark.parametrize("flags", [0x04, 0x80, 0xFF, 0x07])
def test_trap_reserved_flag_bits(flags):
    with pytest.raises(DecodeError) as e:
        TRAP.decode(bytes([1, flags]) + bytes.fromhex("0CE4002A"))
    assert e.value.reason == "bad_value"


def test_trap_encode_rejects_bad_state():
    with pytest.raises(ValueError):
        TRAP.encode({"state": "open", "tamper": False, "battery": 3.3})


def test_trap_metadata():
    assert TRAP.name == "trap"
    assert TRAP.counter_bits == 16
    assert TRAP.units() == {"battery": "V"}
    assert TRAP.values["state"].choices == ("armed", "sprung")
    assert (TRAP.values["battery"].minimum, TRAP.values["battery"].maximum) == (0, 4.5)


def test_water_level_decodes_known_payload():
    d = WATER.decode(bytes.fromhex("0104D208FC0DAC0100"))
    assert d == Decoded({"level": 1234, "water_temperature": 23.0, "battery": 3.5}, counter=256)
    assert isinstance(d.values["level"], int)


def test_water_level_negative_temperature_and_fractions():
    # 0xFF37 = -201 -> -2.01 °C; 0x0E0F = 3599 mV
    d = WATER.decode(bytes.fromhex("012710FF370E0FFFFE"))
    assert d.values == {"level": 10000, "water_temperature": -2.01, "battery": 3.599}
    assert d.counter == 0xFFFE


def test_water_level_implausible_level_is_still_a_reading():
    d = WATER.decode(bytes.fromhex("01FFFE000000000001"))
    assert d.values["level"] == 0xFFFE
    assert d.values["level"] > WATER.values["level"].maximum


def test_water_level_no_echo():
    with pytest.raises(DecodeError) as e:
        WATER.decode(bytes.fromhex("01FFFF08FC0DAC0100"))
    assert e.value.reason == "sensor_error"
    # and the simulator can produce such a frame
    assert WATER.encode({"water_temperature": 23.0, "battery": 3.5}, counter=256) == bytes.fromhex("01FFFF08FC0DAC0100")


@pytest.mark.parametrize("hexpayload", ["", "0104D208FC0DAC01", "0104D208FC0DAC010000", "0101"])
def test_water_level_wrong_length(hexpayload):
    with pytest.raises(DecodeError) as e:
        WATER.decode(bytes.fromhex(hexpayload))
    assert e.value.reason == "wrong_length"


def test_water_level_bad_version():
    with pytest.raises(DecodeError) as e:
        WATER.decode(bytes.fromhex("0204D208FC0DAC0100"))
    assert e.value.reason == "bad_version"
    # the version is checked before the level: a foreign frame is not a sensor error
    with pytest.raises(DecodeError) as e:
        WATER.decode(bytes.fromhex("00FFFF08FC0DAC0100"))
    assert e.value.reason == "bad_version"


def test_water_level_encode_known_payload():
    payload = WATER.encode({"level": 1234, "water_temperature": 23.0, "battery": 3.5}, counter=256)
    assert payload == bytes.fromhex("0104D208FC0DAC0100")


def test_water_level_metadata():
    assert WATER.name == "water_level"
    assert WATER.counter_bits == 16
    assert WATER.units() == {"level": "mm", "water_temperature": "Cel", "battery": "V"}
    assert (WATER.values["level"].minimum, WATER.values["level"].maximum) == (0, 10000)
    assert (WATER.values["water_temperature"].minimum, WATER.values["water_temperature"].maximum) == (-10, 50)


def test_layout_decodes_known_payload():
    drv = LayoutDriver(
        "soil",
        [
            LayoutField("temperature", "i16", scale=0.1, unit="Cel"),
            LayoutField("moisture", "u8"),
            LayoutField("seq", "u16", counter=True),
            LayoutField("ec", "u16", scale=0.01, offset=-1.0),
        ],
        endian="little",
    )
    # -12.3 °C = -123 = 0xFF85 LE "85 FF"; moisture 55; counter 0x0102 LE "02 01"; ec raw 250 -> 1.5
    d = drv.decode(bytes.fromhex("85FF370201FA00"))
    assert d.values == {"temperature": -12.3, "moisture": 55, "ec": 1.5}
    assert d.counter == 0x0102
    assert drv.counter_bits == 16
    assert drv.units() == {"temperature": "Cel"}
    assert drv.encode(d.values, d.counter) == bytes.fromhex("85FF370201FA00")
    with pytest.raises(DecodeError) as e:
        drv.decode(bytes.fromhex("85FF370201FA"))
    assert e.value.reason == "wrong_length"


def test_layout_f32_nan_is_bad_value():
    drv = LayoutDriver("f", [LayoutField("x", "f32")])
    with pytest.raises(DecodeError) as e:
        drv.decode(struct.pack(">f", math.nan))
    assert e.value.reason == "bad_value"
    assert drv.decode(struct.pack(">f", 1.5)).values == {"x": 1.5}
    assert drv.counter_bits is None


# -- round trips -------------------------------------------------------------------------------------

counters = st.integers(min_value=0, max_value=2**40)


@given(
    state=st.sampled_from(["armed", "sprung"]),
    tamper=st.booleans(),
    millivolts=st.integers(0, 0xFFFF),
    counter=counters,
)
def test_trap_round_trip_exact(state, tamper, millivolts, counter):
    values = {"state": state, "tamper": tamper, "battery": millivolts / 1000}
    d = TRAP.decode(TRAP.encode(values, counter))
    assert d.values == values
    assert d.counter == counter % 2**16


@given(battery=st.floats(0, 4.5), state=st.sampled_from(["armed", "sprung"]), tamper=st.booleans())
def test_trap_round_trip_battery_within_resolution(battery, state, tamper):
    d = TRAP.decode(TRAP.encode({"state": state, "tamper": tamper, "battery": battery}, 1))
    assert abs(d.values["battery"] - battery) <= 0.0005 + 1e-12
    assert (d.values["state"], d.values["tamper"]) == (state, tamper)


@given(
    level=st.integers(0, 0xFFFE),
    centi=st.integers(-0x8000, 0x7FFF),
    millivolts=st.integers(0, 0xFFFF),
    counter=counters,
)
def test_water_level_round_trip_exact(level, centi, millivolts, counter):
    values = {"level": level, "water_temperature": centi / 100, "battery": millivolts / 1000}
    d = WATER.decode(WATER.encode(values, counter))
    assert d.values == values
    assert d.counter == counter % 2**16


@given(level=st.floats(0, 10000), temp=st.floats(-10, 50), battery=st.floats(0, 4.5))
def test_water_level_round_trip_within_resolution(level, temp, battery):
    d = WATER.decode(WATER.encode({"level": level, "water_temperature": temp, "battery": battery}))
    assert abs(d.values["level"] - level) <= 0.5
    assert abs(d.values["water_temperature"] - temp) <= 0.005 + 1e-9
    assert abs(d.values["battery"] - battery) <= 0.0005 + 1e-12


# Generated layouts. Counter fields are unsigned integers only: see the note in the report on signed
# and f32 counters.
SCALES = [1.0, 0.1, 0.01, 0.001, 0.5, 2.0, 10.0, 0.25]
OFFSETS = [0.0, -40.0, 100.5, 3.0]
INT_RANGES = {
    t: (-(2 ** (8 * struct.calcsize(c) - 1)), 2 ** (8 * struct.calcsize(c) - 1) - 1)
    if c.islower()
    else (0, 2 ** (8 * struct.calcsize(c)) - 1)
    for t, c in FIELD_TYPES.items()
    if t != "f32"
}
F32_RAW_LIMIT = 1e6


@st.composite
def layouts(draw, with_counter=None):
    n = draw(st.integers(1, 6))
    fields = [
        LayoutField(
            name=f"v{i}",
            type=draw(st.sampled_from(sorted(FIELD_TYPES))),
            scale=draw(st.sampled_from(SCALES)),
            offset=draw(st.sampled_from(OFFSETS)),
        )
        for i in range(n)
    ]
    if with_counter is None:
        with_counter = draw(st.booleans())
    if with_counter:
        pos = draw(st.integers(0, n))
        fields.insert(pos, LayoutField(name="fcnt", type=draw(st.sampled_from(["u8", "u16", "u32"])), counter=True))
    endian = draw(st.sampled_from(["big", "little"]))
    return LayoutDriver("generated", fields, endian=endian)


def field_values(f: LayoutField):
    """Values inside what the field can represent."""
    if f.type == "f32":
        lo, hi = -F32_RAW_LIMIT, F32_RAW_LIMIT
        return st.floats(lo, hi, width=32).map(lambda raw: raw * f.scale + f.offset)
    lo, hi = INT_RANGES[f.type]
    if f.scale == 1.0 and f.offset == 0.0:
        return st.integers(lo, hi)
    return st.floats(lo * f.scale + f.offset, hi * f.scale + f.offset)


@st.composite
def layout_cases(draw):
    drv = draw(layouts())
    values = {f.name: draw(field_values(f)) for f in drv.fields if not f.counter}
    counter = draw(counters) if drv.counter_bits else None
    return drv, values, counter


@settings(max_examples=300)
@given(layout_cases())
def test_layout_round_trip(case):
    drv, values, counter = case
    payload = drv.encode(values, counter)
    assert len(payload) == sum(struct.calcsize(FIELD_TYPES[f.type]) for f in drv.fields)
    d = drv.decode(payload)
    assert set(d.values) == set(values)
    for f in drv.fields:
        if f.counter:
            continue
        got, want = d.values[f.name], values[f.name]
        if f.type != "f32" and f.scale == 1.0 and f.offset == 0.0:
            assert got == want and isinstance(got, int), f
            continue
        tolerance = f.scale / 2 + 1e-9 * max(1.0, abs(want))
        if f.type == "f32":
            tolerance += abs(want - f.offset) * 1e-6
        assert abs(got - want) <= tolerance, (f, got, want)
    if drv.counter_bits:
        assert d.counter == counter % 2**drv.counter_bits
    else:
        assert d.counter is None


# -- decode never raises anything but DecodeError ----------------------------------------------------


def _decode_or_reject(driver: Driver, payload: bytes) -> None:
    try:
        d = driver.decode(payload)
    except DecodeError as e:
        assert e.reason
        return
    assert isinstance(d, Decoded)
    assert set(d.values) == set(driver.values)
    for v in d.values.values():
        assert not isinstance(v, float) or math.isfinite(v)


def _payloads(size: int):
    return st.one_of(st.binary(max_size=2 * size + 2), st.binary(min_size=size, max_size=size))


@settings(max_examples=300)
@given(_payloads(6))
def test_trap_decode_arbitrary_bytes(payload):
    _decode_or_reject(TRAP, payload)


@settings(max_examples=300)
@given(_payloads(9))
def test_water_level_decode_arbitrary_bytes(payload):
    _decode_or_reject(WATER, payload)


@settings(max_examples=300)
@given(st.data())
def test_layout_decode_arbitrary_bytes(data):
    drv = data.draw(layouts())
    payload = data.draw(_payloads(drv._struct.size))
    _decode_or_reject(drv, payload)


# -- discovery ---------------------------------------------------------------------------------------

SITE_DRIVER = """
from edgegw.drivers import Decoded, Driver, ValueSpec
from edgegw.errors import DecodeError


class RainGauge(Driver):
    name = {name!r}
    values = {{"rain": ValueSpec(unit="mm")}}
    counter_bits = 8

    def decode(self, payload):
        if len(payload) != 2:
            raise DecodeError("wrong_length")
        return Decoded({{"rain": payload[0] / 10}}, payload[1])

    def encode(self, values, counter=None):
        return bytes([round(values["rain"] * 10), (counter or 0) % 256])


class _Helper(Driver):
    pass  # no name: not a driver
"""


def test_load_drivers_finds_bundled():
    reg = load_drivers()
    assert "trap" in reg and "water_level" in reg
    assert isinstance(reg["trap"], TrapSensor)
    assert isinstance(reg["water_level"], WaterLevelSensor)
    assert reg.origins["trap"] == "bundled:trap"
    assert reg.origins["water_level"] == "bundled:water_level"
    assert reg.names() == sorted(reg.names())


def test_load_drivers_from_drivers_dir(tmp_path):
    (tmp_path / "rain.py").write_text(SITE_DRIVER.format(name="rain_gauge"))
    (tmp_path / "notes.txt").write_text("not python (")
    reg = load_drivers(tmp_path)
    assert {"trap", "water_level", "rain_gauge"} <= set(reg.names())
    assert reg.origins["rain_gauge"] == str(tmp_path / "rain.py")
    assert reg["rain_gauge"].decode(b"\x19\x05") == Decoded({"rain": 2.5}, 5)
    assert "" not in reg


def test_load_drivers_with_layouts(tmp_path):
    layout = LayoutDriver("soil", [LayoutField("t", "i16", scale=0.1)])
    reg = load_drivers(tmp_path, layouts=[layout])
    assert reg["soil"] is layout
    assert reg.origins["soil"] == "config [[layouts]]"


def test_load_drivers_syntax_error_names_file(tmp_path):
    (tmp_path / "broken.py").write_text("def decode(:\n    pass\n")
    with pytest.raises(DriverLoadError) as e:
        load_drivers(tmp_path)
    assert "broken.py" in str(e.value)


def test_load_drivers_import_error_names_file(tmp_path):
    (tmp_path / "needs_missing.py").write_text("import edgegw_no_such_module\n")
    with pytest.raises(DriverLoadError) as e:
        load_drivers(tmp_path)
    assert "needs_missing.py" in str(e.value)


def test_load_drivers_duplicate_of_bundled(tmp_path):
    (tmp_path / "mytrap.py").write_text(SITE_DRIVER.format(name="trap"))
    with pytest.raises(DriverLoadError) as e:
        load_drivers(tmp_path)
    msg = str(e.value)
    assert "'trap'" in msg and "mytrap.py" in msg and "bundled:trap" in msg


def test_load_drivers_duplicate_within_drivers_dir(tmp_path):
    (tmp_path / "a.py").write_text(SITE_DRIVER.format(name="rain_gauge"))
    (tmp_path / "b.py").write_text(SITE_DRIVER.format(name="rain_gauge"))
    with pytest.raises(DriverLoadError) as e:
        load_drivers(tmp_path)
    assert "b.py" in str(e.value) and "a.py" in str(e.value)


def test_load_drivers_duplicate_layout(tmp_path):
    with pytest.raises(DriverLoadError, match="water_level"):
        load_drivers(tmp_path, layouts=[LayoutDriver("water_level", [LayoutField("x", "u8")])])
