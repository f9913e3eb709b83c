"""What `edgegw config check` tells an installer: where each problem is (line, device id), durations
with units, "did you mean" for misspelt names, units in range messages."""

from __future__ import annotations

import json
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.config.locate import key_lines, line_of, place
from tests.test_config import minimal, problems_of, write

# -- the line locator (hypothesis) ---------------------------------------------------------------

_KEY = st.from_regex(r"[a-z_][a-z0-9_-]{0,8}", fullmatch=True)
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
_SCALAR = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.booleans().map(lambda b: str(b).lower()),
    _TEXT.map(lambda t: json.dumps(t, ensure_ascii=False)),  # a basic string: quotes, # and = escaped or inside
    _TEXT.filter(lambda t: "'" not in t).map(lambda t: f"'{t}'"),
    _TEXT.filter(lambda t: '"""' not in t and not t.endswith('"') and "\\" not in t).map(
        lambda t: f'"""\n{t}\nsecond = "line" # not a key\n"""'),
)


@st.composite
def documents(draw) -> tuple[str, dict[tuple, int]]:
    """A TOML text of tables, arrays of tables, keys, inline tables and arrays that span lines,
    with the line each key path was written on."""
    out: list[str] = []
    where: dict[tuple, int] = {}

    def emit(text: str, path: tuple | None = None) -> None:
        if path is not None:
            where[path] = len(out) + 1
        out.extend(text.split("\n"))

    def pairs(table: tuple) -> None:
        for key in draw(st.lists(_KEY, unique=True, max_size=4)):
            kind = draw(st.sampled_from(["scalar", "inline", "array"]))
            if kind == "scalar":
                emit(f"{key} = {draw(_SCALAR)}  # {draw(_TEXT).replace(chr(10), ' ')}", (*table, key))
            elif kind == "inline":
                inner = draw(st.lists(_KEY, unique=True, max_size=3))
                values = [draw(_SCALAR.filter(lambda v: "\n" not in v)) for _ in inner]
                for k in inner:
                    where[(*table, key, k)] = len(out) + 1
                emit(f"{key} = {{ {', '.join(f'{k} = {v}' for k, v in zip(inner, values, strict=True))} }}", (*table, key))
            else:
                emit(f"{key} = [", (*table, key))
                for i in range(draw(st.integers(0, 3))):
                    k = draw(_KEY)
                    emit(f"  {{ {k} = {draw(st.integers().map(str))} }},", (*table, key, i))
                    where[(*table, key, i, k)] = len(out)
                emit("]")

    pairs(())
    names = draw(st.lists(_KEY, unique=True, max_size=3))
    for name in names:
        if draw(st.booleans()):
            for i in range(draw(st.integers(1, 3))):
                emit(f"[[{name}]]", (name, i))
                where.setdefault((name,), where[(name, i)])
                pairs((name, i))
        else:
            emit(f"[ {name} ]", (name,))
            pairs((name,))
    return "\n".join(out) + "\n", where


@settings(max_examples=300)
@given(documents())
def test_every_key_is_found_on_the_line_it_was_written(doc):
    text, where = doc
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:  # a generated clash (same key twice at one level): not a valid config
        return
    lines = key_lines(text)
    for path, line in where.items():
        assert lines.get(path) == line, (path, text)


def test_a_missing_key_is_placed_at_its_table():
    lines = key_lines('a = 1\n\n[[devices]]\nid = "x"\n\n[[devices]]\nid = "y"\n')
    assert line_of(lines, ("devices", 1, "driver")) == 6
    assert line_of(lines, ("gateway_id",)) is None


def test_place_names_list_items_by_their_id_only_when_it_is_unique():
    raw = {"devices": [{"id": "a"}, {"id": "a"}, {"id": "river-03"}], "sources": [{"name": "lora0"}]}
    lines = {("devices", 2, "driver"): 9}
    assert place("devices[2].driver: x; in f.toml: devices[0].driver", lines, raw) == (
        "line 9: devices[id=river-03].driver: x; in f.toml: devices[0].driver", 9)  # another file's: as it is
    assert place("drivers: a module failed", lines, raw)[0] == "drivers: a module failed"


# -- the acceptance points, through load_config --------------------------------------------------

DEVICES = '''
[[devices]]
id = "trap-01"
address = 17
driver = "trap"
interval = "20s"

[[devices]]
id = "river-03"
address = 21
driver = "water_levle"
interval = "10m"
'''

GOOD_DEVICES = DEVICES.replace("water_levle", "water_level")


def test_an_unknown_driver_names_the_device_by_id_its_line_and_the_close_name(tmp_path):
    path = write(tmp_path, minimal(DEVICES))
    assert problems_of(path) == [
        "line 17: devices[id=river-03].driver: unknown driver 'water_levle' (did you mean 'water_level'?);"
        " known drivers: trap, water_level"]


@pytest.mark.parametrize(("written", "hint"), [("10", '"10s", "10m" or "10h"'), ("2.5", '"2.5s", "2.5m" or "2.5h"')])
def test_a_bare_number_is_not_a_duration(tmp_path, written, hint):
    path = write(tmp_path, minimal(GOOD_DEVICES.replace('"10m"', written), top=f"health_every = {written}\n"))
    assert problems_of(path) == [
        f"line 2: health_every: a duration needs a unit: write {hint} (got {written})",
        f"line 19: devices[id=river-03].interval: a duration needs a unit: write {hint} (got {written})"]


def test_durations_are_checked_in_every_section(tmp_path):
    path = write(tmp_path, minimal(GOOD_DEVICES + '''
        [alarms]
        late_after = 600
        reorder_window = 0

        [[rules]]
        type = "trap"
        reminder = 3600

        [[actions]]
        type = "command"
        name = "siren"
        command = ["/bin/true"]
        timeout = 10
        per = "1h"

        [[uplinks]]
        type = "mqtt"
        host = "broker.example"
        deadline = 30
        '''))
    assert [p.split(": a duration")[0] for p in problems_of(path)] == [
        "line 21: alarms.late_after", "line 26: rules[0].reminder", "line 32: actions[name=siren].timeout",
        "line 38: uplinks[0].deadline"]  # reorder_window = 0 needs no unit


@pytest.mark.parametrize(("body", "expected"), [
    ('[[sources]]\ntype = "es920lr"\nname = "lora1"\nport = "/dev/ttyUSB1"\nchanel = 3\n',
     "line 12: sources[name=lora1].chanel: unknown key (did you mean 'channel'?)"),
    ('[[uplinks]]\ntype = "mqtt"\nhots = "broker.example"\n',
     "line 10: uplinks[0].hots: unknown key (did you mean 'host'?)"),
    ('[[rules]]\ntype = "water_levle"\n',
     "line 9: rules[0].type: unknown type 'water_levle' (did you mean 'water_level'?); expected one of:"
     " 'trap', 'water_level', 'device_health'"),
    ('[[uplinks]]\ntype = "mqqt"\nhost = "b"\n',
     "line 9: uplinks[0].type: unknown type 'mqqt' (did you mean 'mqtt'?); expected one of: 'mqtt', 'file',"
     " 'iota-json', 'iota-ul', 'iota-json-http', 'iota-ul-http', 'ngsi-v2', 'ngsi-ld', 'sigfox'"),
    ('[[devices]]\nid = "a"\naddress = 1\ndriver = "trap"\n[[rules]]\ntype = "trap"\ndevices = ["A"]\n'
     '[[actions]]\ntype = "mqtt"\nname = "m"\ndevices = ["b"]\n',
     "line 14: rules[0].devices: unknown device 'A' (did you mean 'a'?); configured devices: a"),
    ('[store]\nmax_bytes = 500000\n', "line 9: store.max_bytes: Input should be greater than or equal to 1000000"
                                    " bytes (got 500000 bytes)"),
    ('[store]\nmax_bytes = "500kB"\n', "line 9: store.max_bytes: Input should be greater than or equal to 1000000"
                                       " bytes (got '500kB')"),  # as written
    ('[store]\nkeep_delivered = "0s"\n', "line 9: store.keep_delivered: Input should be greater than 0 s (got '0s')"),
    ('[[sources]]\ntype = "rylr"\nname = "lora1"\nport = "/dev/ttyUSB1"\nband = 433000000\n',
     "line 12: sources[name=lora1].band: Input should be greater than or equal to 862000000 Hz (got 433000000 Hz)"),
])
def test_misspelt_names_get_a_close_match_and_ranges_their_unit(tmp_path, body, expected):
    problems = problems_of(write(tmp_path, minimal("\n" + body)))
    assert expected in problems, problems


# -- radio module limits (acceptance point A) -------------------------------------------------------

def layout(name: str, size: int) -> str:
    """A [[layouts]] driver whose payload is ``size`` bytes."""
    fields = ", ".join(f'{{ name = "f{i}", type = "u8" }}' for i in range(size))
    return f'\n[[layouts]]\nname = "{name}"\nfields = [{fields}]\n'


def radio(source: str, device_driver: str, extra: str = "", top: str = "") -> str:
    return (f'gateway_id = "gw"\n{top}\n[[sources]]\nname = "radio"\n{source}\n{extra}\n'
            f'[[devices]]\nid = "dev-01"\naddress = 5\ndriver = "{device_driver}"\n')


@pytest.mark.parametrize(("source", "size", "expected"), [
    ('type = "rylr"\nport = "/dev/ttyUSB0"\nspreading_factor = 7', 121,
     "its largest frame is 121 bytes (driver 'big'), more than the 120 bytes one rylr frame carries on source 'radio'"
     " (AT+SEND takes at most 240 characters, the payload hex-encoded)"),
    ('type = "rylr"\nport = "/dev/ttyUSB0"\nspreading_factor = 7\npayload_encoding = "base64"', 181,
     "its largest frame is 181 bytes (driver 'big'), more than the 180 bytes one rylr frame carries on source 'radio'"
     " (AT+SEND takes at most 240 characters, the payload base64-encoded)"),
    ('type = "e220"\nport = "/dev/ttyS0"\nspreading_factor = 5\nbandwidth_khz = 500', 194,
     "its largest frame is 194 bytes (driver 'big'), more than the 193 bytes one e220 frame carries on source 'radio'"
     " (200-byte packets as the gateway sets register 03H, less 7 of framing)"),
    ('type = "sx127x"\nsimulate = "f.toml"\nspreading_factor = 7\nbandwidth_khz = 500', 252,
     "its largest frame is 252 bytes (driver 'big'), more than the 251 bytes one sx127x frame carries on source"
     " 'radio' (255-byte LoRa packets (RegRxNbBytes), less the 4-byte radiohead header)"),
])
def test_a_frame_too_big_for_the_module_is_an_error_naming_device_module_and_sizes(tmp_path, source, size, expected):
    path = write(tmp_path, radio(source, "big", layout("big", size)))
    (tmp_path / "f.toml").write_text('[[devices]]\naddress = 5\ndriver = "trap"\ninterval = "1m"\nvalues = {}\n')
    problems = [p for p in problems_of(path) if "sources[" not in p]  # sx127x: pyLoRa may be missing here
    assert problems == [f"line {14 + source.count(chr(10))}: devices[id=dev-01].driver: {expected}"]
    fits = write(tmp_path, radio(source, "big", layout("big", size - 1)), "fits.toml")
    assert not [p for p in problems_or_none(fits) if "devices[" in p]


def problems_or_none(path) -> list[str]:
    from edgegw.config import check_config
    from edgegw.errors import ConfigError

    try:
        check_config(path)
    except ConfigError as exc:
        return exc.problems
    return []


def test_the_authentication_envelope_counts_against_the_module_limit(tmp_path):
    from edgegw.config import check_config
    from edgegw.keys import new_key

    source = 'type = "rylr"\nport = "/dev/ttyUSB0"\nspreading_factor = 7'
    check_config(write(tmp_path, radio(source, "big", layout("big", 108)), "plain.toml"))  # 108 bytes fit 120 ...
    path = write(tmp_path, radio(source, "big", layout("big", 108), top='keys_file = "keys.toml"\n'))
    new_key(tmp_path / "keys.toml", "dev-01")
    assert problems_of(path) == [  # ... sealed they do not
        "line 17: devices[id=dev-01].driver: its largest frame is 121 bytes (108 of driver 'big' + 13 of the"
        " authentication envelope), more than the 120 bytes one rylr frame carries on source 'radio' (AT+SEND takes"
        " at most 240 characters, the payload hex-encoded)"]


def test_an_unverified_module_limit_is_a_warning_in_config_check(tmp_path):
    from click.testing import CliRunner

    from edgegw.cli import cli
    from edgegw.config import check_config

    source = 'type = "es920lr"\nport = "/dev/ttyUSB0"'
    path = write(tmp_path, radio(source, "big", layout("big", 26)))
    _, _, warnings = check_config(path)
    assert warnings == [
        "line 15: devices[id=dev-01].driver: its largest frame is 26 bytes (driver 'big'), more than the 25 bytes one"
        " es920lr frame carries on source 'radio' (about 50 characters per frame, the payload hex-encoded;"
        " unverified without the module's manual)"]
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0 and result.stderr == f"warning: {path}: {warnings[0]}\n"


def test_arib_airtime_binds_the_sensors_and_only_in_the_920_mhz_band(tmp_path):
    from edgegw.config import check_config

    slow = 'type = "rylr"\nport = "/dev/ttyUSB0"\nspreading_factor = 12'
    _, _, warnings = check_config(write(tmp_path, radio(slow, "trap")))
    assert warnings == [  # 6 bytes as 12 hex characters, + 8 on air, preamble 12: 1.45 s at SF12 (AN1200.13)
        "line 12: devices[id=dev-01].driver: its largest frame (6 bytes) takes 1450 ms on air with the settings of"
        " source 'radio': over 0.4 s, ARIB STD-T108 asks the sensor for 5 ms of carrier sense before each frame (not"
        " 128 µs); check its firmware does"]
    assert problems_of(write(tmp_path, radio(slow, "big", layout("big", 60)), "long.toml")) == [
        "line 16: devices[id=dev-01].driver: its largest frame (60 bytes) takes 5.05 s on air with the settings of"
        " source 'radio', over the 4 s ARIB STD-T108 allows any transmission: use a lower spreading factor or a"
        " wider bandwidth (the sensors' and the module's alike)"]
    abroad = write(tmp_path, radio(slow + "\nband = 915000000", "big", layout("big", 60)), "915.toml")
    assert check_config(abroad)[2] == []  # not Japan's band: ARIB STD-T108 does not apply


@pytest.mark.parametrize(("source", "expected"), [
    ('type = "rylr"\nport = "/dev/ttyUSB0"\nbaudrate = 14400',
     "the module's AT+IPR takes one of [300, 1200, 4800, 9600, 19200, 28800, 38400, 57600, 115200] (default 115200)"),
    ('type = "es920lr"\nport = "/dev/ttyUSB0"\nbaudrate = 4800',
     "the module's baudrate setting takes one of [9600, 19200, 38400, 57600, 115200]"),
    ('type = "im920sl"\nport = "/dev/ttyUSB0"\nbaudrate = 14400',
     "expected one of [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] (the module's default is 19200)"),
    ('type = "e220"\nport = "/dev/ttyS0"\nbaudrate = 14400',
     "expected one of [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] (02H bits 7-5)"),
])
def test_each_module_lists_the_baud_rates_it_takes(tmp_path, source, expected):
    assert problems_of(write(tmp_path, radio(source, "trap"))) == [
        f"line {5 + source.count(chr(10))}: sources[name=radio].baudrate: {expected}"]


def test_rylr_network_id_17_is_taken_by_neither_model(tmp_path):
    path = write(tmp_path, radio('type = "rylr"\nport = "/dev/ttyUSB0"\nnetwork_id = 17', "trap"))
    assert problems_of(path) == ["line 7: sources[name=radio].network_id: neither module takes 17: RYLR896 takes"
                                 " 0-16, RYLR998 3-15 or 18 (its default)"]


@pytest.mark.parametrize(("uplink", "expected"), [
    ('keepalive = 2', "uplinks[0].keepalive: Input should be greater than or equal to 5 s (got 2 s)"),
    ('batch = { max_bytes = 100 }', "uplinks[0].batch.max_bytes: Input should be greater than or equal to 1024 bytes"
                                    " (got 100 bytes)"),
])
def test_uplink_ranges_carry_their_unit(tmp_path, uplink, expected):
    path = write(tmp_path, minimal(f'\n[[uplinks]]\ntype = "mqtt"\nhost = "b"\n{uplink}\n'))
    assert problems_of(path) == [f"line 11: {expected}"]


# -- durations (hypothesis) -------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@given(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False), st.sampled_from(sorted(_UNITS)),
       st.sampled_from(["", " "]))
def test_a_duration_with_a_unit_is_that_many_seconds(number, unit, space):
    from pydantic import TypeAdapter

    from edgegw.config import Duration
    from edgegw.config.base import WRITTEN

    written = f"{number}{space}{unit}"
    seconds = float(number) * _UNITS[unit]
    adapter = TypeAdapter(Duration)
    if seconds > 0:
        assert adapter.validate_python(written, context=WRITTEN) == pytest.approx(seconds)
    else:
        with pytest.raises(ValueError, match="greater than 0"):
            adapter.validate_python(written, context=WRITTEN)


@given(st.one_of(st.integers(1, 10**9), st.floats(min_value=0.001, max_value=1e9)))
def test_a_bare_number_is_refused_where_written_and_seconds_from_python(value):
    from pydantic import TypeAdapter, ValidationError

    from edgegw.config import Duration
    from edgegw.config.base import WRITTEN

    adapter = TypeAdapter(Duration)
    with pytest.raises(ValidationError, match="a duration needs a unit"):
        adapter.validate_python(value, context=WRITTEN)
    assert adapter.validate_python(value) == value  # Python code passes seconds


def test_every_shipped_config_checks_without_a_problem_or_warning():
    from pathlib import Path

    from edgegw.config import check_config

    configs = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.toml") if "field" not in p.name)
    assert len(configs) >= 10
    for path in configs:
        assert check_config(path)[2] == [], path


def test_an_e220_without_mode_pins_needs_neither_gpio_nor_distinct_pins(tmp_path):
    from edgegw.config import load_config

    source = 'type = "e220"\nport = "/dev/ttyUSB0"\nmode_pins = false\nm0_pin = 4\nm1_pin = 4\naux_pin = 4'
    config, _ = load_config(write(tmp_path, radio(source, "trap")))
    assert config.sources[0].mode_pins is False
    wired = write(tmp_path, radio(source.replace("mode_pins = false", "mode_pins = true"), "trap"), "wired.toml")
    assert "line 3: sources[name=radio]: m0_pin, m1_pin and aux_pin must be three different GPIOs" in problems_of(wired)
