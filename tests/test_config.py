"""load_config: the shipped demo, every-problem-at-once reporting, key paths, durations, layouts, paths."""

from __future__ import annotations

import os
import re
from pathlib import Path
from textwrap import dedent

import pytest

from edgegw.config import FileUplink, MqttUplink, SigfoxUplink, load_config
from edgegw.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.toml"

SOURCE = """
[[sources]]
type = "rylr"
name = "lora0"
port = "/dev/ttyUSB0"
"""


def write(tmp_path: Path, body: str, name: str = "gw.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(body), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    return info.value.problems


def unplaced(problems: list[str]) -> list[str]:
    """Problems without their "line N: " (for tests about what a problem says, not where)."""
    return [re.sub(r"^line \d+: ", "", p) for p in problems]


def minimal(extra: str = "", source: str = SOURCE, top: str = "") -> str:
    """A valid config: gateway_id and ``top`` (top-level keys), one source, then ``extra`` tables."""
    return 'gateway_id = "gw"\n' + top + dedent(source) + dedent(extra)


# -- the shipped demo -------------------------------------------------------------------------------

def test_demo_config_loads_and_resolves_relative_to_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config, drivers = load_config(DEMO)
    assert config.gateway_id == "demo-gw"
    assert config.data_dir == REPO / "data" / "demo"
    assert config.data_dir.is_absolute()
    assert config.sources[0].name == "lora0"
    assert config.sources[0].port is None
    assert config.sources[0].simulate == REPO / "configs" / "demo-field.toml"
    assert config.sources[0].at_parameter() == "9,7,1,12"
    assert [d.id for d in config.devices] == ["trap-shrine", "river-kamo-bridge", "paddy-07"]
    assert [d.interval for d in config.devices] == [20.0, 5.0, 10.0]
    assert config.devices[0].location == (35.9860, 138.1510)
    assert drivers.names() == ["paddy", "trap", "water_level"]
    assert drivers.origins["paddy"] == "config [[layouts]]"
    assert config.log.level == "debug"  # the demo shows its readings


def test_demo_config_uplinks_are_files_and_a_simulated_sigfox_module(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config, _ = load_config(DEMO)
    main, sigfox = config.effective_uplinks()
    assert main == FileUplink(type="file")  # what a config without [[uplinks]] gets
    assert isinstance(sigfox, SigfoxUplink) and sigfox.simulate and sigfox.port is None
    assert sigfox.serial_port(config.data_dir) == str(config.data_dir / "sigfox-sigfox.pty")


def test_uplinks_default_to_files(tmp_path):
    config, _ = load_config(write(tmp_path, minimal()))
    assert config.uplinks == []
    (uplink,) = config.effective_uplinks()
    assert isinstance(uplink, FileUplink)
    assert uplink.type == "file"
    assert uplink.name == "file"
    assert uplink.path == Path("batches")  # relative: the file uplink puts it under data_dir


def test_configured_uplinks_replace_the_default(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "mqtt"
        host = "broker.example"
        '''))
    config, _ = load_config(path)
    (uplink,) = config.effective_uplinks()
    assert isinstance(uplink, MqttUplink)
    assert (uplink.host, uplink.port, uplink.name) == ("broker.example", 1883, "mqtt")


def test_relative_string_path_also_works(tmp_path, monkeypatch):
    write(tmp_path, minimal(top='data_dir = "store"\n'), "etc/gw.toml")
    monkeypatch.chdir(tmp_path)
    config, _ = load_config("etc/gw.toml")
    assert config.data_dir == tmp_path / "etc" / "store"


# -- every problem at once ---------------------------------------------------------------------------

THREE_MISTAKES = '''
gateway_id = "gw"

[[sources]]
type = "rylr"
name = "lora0"
port = "/dev/ttyUSB0"
spreading_factor = 13

[[devices]]
id = "d1"
address = 5
driver = "no_such_driver"

[[uplinks]]
type = "mqtt"
topic = "a/b"
'''


THREE_MISTAKE_PROBLEMS = [  # in the file's order
    "line 8: sources[name=lora0].spreading_factor: Input should be less than or equal to 12 (got 13)",
    "line 13: devices[id=d1].driver: unknown driver 'no_such_driver'; known drivers: trap, water_level",
    "line 15: uplinks[0].host: required key is missing",
]


def test_three_mistakes_are_reported_together(tmp_path):
    path = write(tmp_path, THREE_MISTAKES)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    exc = info.value
    assert exc.problems == THREE_MISTAKE_PROBLEMS
    lines = str(exc).splitlines()
    assert len(lines) == 3
    for line in lines:
        assert line.startswith(f"{path}: ")
    assert {line.removeprefix(f"{path}: ") for line in lines} == set(exc.problems)


def test_misspelt_key_is_reported_as_unknown_with_its_path(tmp_path):
    path = write(tmp_path, minimal('''
        [[devices]]
        id = "d1"
        adress = 5
        driver = "trap"

        [store]
        keep_deliverd = "1d"
        '''))
    problems = problems_of(path)
    assert problems == [
        "line 8: devices[id=d1].address: required key is missing",  # misspelt, so not set: at its table
        "line 10: devices[id=d1].adress: unknown key (did you mean 'address'?)",
        "line 14: store.keep_deliverd: unknown key (did you mean 'keep_delivered'?)",
    ]


def test_top_level_key_written_below_a_section_is_explained(tmp_path):
    # TOML puts data_dir into the [[sources]] table above it: the message must say where it belongs.
    path = write(tmp_path, minimal('data_dir = "elsewhere"\n'))
    assert problems_of(path) == [
        "line 7: sources[name=lora0].data_dir: unknown key here; data_dir is a top-level key: TOML puts every key below a "
        "[section] header into that section, so move it above the first [section] or [[section]]"
    ]


def test_unknown_top_level_key(tmp_path):
    path = write(tmp_path, minimal(top='gateway_name = "x"\n'))
    assert problems_of(path) == ["line 2: gateway_name: unknown key (did you mean 'gateway_id'?)"]
    far = write(tmp_path, minimal(top='colour = "blue"\n'))  # nothing close: where to look instead
    assert problems_of(far) == ["line 2: colour: unknown key (misspelt? see configs/ for the keys each section takes)"]


def test_missing_required_keys(tmp_path):
    path = write(tmp_path, '''
        [[sources]]
        type = "rylr"
        port = "/dev/ttyUSB0"
        ''')
    problems = problems_of(path)
    assert problems == [
        "line 2: sources[0].name: required key is missing",  # at its table's header
        "gateway_id: required key is missing",  # a top-level key, not written anywhere: no line to name
    ]


def test_wrong_shapes_say_what_to_write(tmp_path):
    # A [table] for a [[list]], a number for a path, a string for a command's list, a negative duration,
    # and a damaged keys file: told at once, each in the file's words.
    keys = tmp_path / "keys.toml"
    fd = os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'"trap-01" = "abcd"\n')
    os.close(fd)
    path = write(tmp_path, """
        gateway_id = "gw"
        data_dir = 42
        keys_file = "keys.toml"
        [sources]
        type = "rylr"
        [[devices]]
        id = "d1"
        address = 1
        driver = "trap"
        interval = "-5m"
        [[actions]]
        type = "command"
        name = "siren"
        command = "siren --on"
        """)
    assert problems_of(path) == [
        "line 3: data_dir: expected a path in quotes, e.g. \"/var/lib/edgegw\" (got 42)",
        f"line 4: keys_file: {keys}: expected only a [keys] table of \"device id\" = \"32 hex digits\"",
        "line 5: sources: expected a list of tables: write [[sources]] (double brackets) above each entry, not [sources]",
        "line 11: devices[id=d1].interval: a duration cannot be negative (got '-5m')",
        "line 15: actions[name=siren].command: expected a list: argv, e.g. [\"/usr/local/bin/siren\", \"--on\"]"
        " (got 'siren --on')",
    ]


def test_a_device_without_an_id_is_not_offered_as_none(tmp_path):
    path = write(tmp_path, minimal('''
        [[devices]]
        address = 5
        driver = "trap"
        [[rules]]
        type = "trap"
        devices = ["trap-1"]
        '''))
    assert problems_of(path) == ["line 8: devices[0].id: required key is missing",
                                 "line 13: rules[0].devices: unknown device 'trap-1'; configured devices: none"]


def test_a_virtual_field_file_is_told_apart_from_a_config():
    problems = problems_of(REPO / "configs" / "demo-field.toml")
    assert len(problems) == 1 and problems[0].startswith("a virtual field (what a simulated source's `simulate`")


def test_no_sources_at_all(tmp_path):
    path = write(tmp_path, 'gateway_id = "gw"\n')
    assert problems_of(path) == ["sources: required key is missing"]


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, 'gateway_id = "gw"\n\n[[sources]\ntype = "rylr"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith("not valid TOML: ")
    assert "line 3" in problem
    assert str(info.value).startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["file not found"]
    assert str(info.value) == f"{path}: file not found"


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'gateway_id = "caf\xe9"\n')
    (problem,) = problems_of(path)
    assert problem.startswith("cannot read: ")


def test_duplicate_address_on_one_source(tmp_path):
    path = write(tmp_path, minimal('''
        [[devices]]
        id = "a"
        address = 7
        driver = "trap"

        [[devices]]
        id = "b"
        address = 8
        driver = "trap"

        [[devices]]
        id = "c"
        address = 7
        driver = "water_level"
        '''))
    assert problems_of(path) == ["line 20: devices[id=c].address: 7 is also devices[id=a] on source 'lora0'"]


def test_same_address_on_two_sources_is_fine(tmp_path):
    path = write(tmp_path, minimal('''
        [[sources]]
        type = "rylr"
        name = "lora1"
        port = "/dev/ttyUSB1"

        [[devices]]
        id = "a"
        address = 7
        driver = "trap"
        source = "lora0"

        [[devices]]
        id = "b"
        address = 7
        driver = "trap"
        source = "lora1"
        '''))
    config, _ = load_config(path)
    assert [config.device_source(d) for d in config.devices] == ["lora0", "lora1"]


def test_device_naming_an_unknown_source(tmp_path):
    path = write(tmp_path, minimal('''
        [[devices]]
        id = "a"
        address = 7
        driver = "trap"
        source = "lora9"
        '''))
    assert problems_of(path) == [
        "line 12: devices[id=a].source: unknown source 'lora9' (did you mean 'lora0'?); expected one of ['lora0']"]


def test_device_must_name_its_source_when_there_are_several(tmp_path):
    path = write(tmp_path, minimal('''
        [[sources]]
        type = "rylr"
        name = "lora1"
        port = "/dev/ttyUSB1"

        [[devices]]
        id = "a"
        address = 7
        driver = "trap"

        [[devices]]
        id = "a"
        address = 8
        driver = "trap"
        source = "lora1"
        '''))
    problems = problems_of(path)
    assert problems == [
        "line 13: devices[0].source: several sources exist; name one of ['lora0', 'lora1']",
        "line 13: devices: names must be unique, repeated: ['a']",  # the list's first [[devices]]
    ]


# -- durations --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("written", "seconds"), [
    ('"10m"', 600.0),
    ('"1h"', 3600.0),
    ('"90s"', 90.0),
    ('"2d"', 172800.0),
    ('"1.5h"', 5400.0),
    ('"250ms"', 0.25),
    ('" 45s "', 45.0),
])
def test_durations(tmp_path, written, seconds):
    path = write(tmp_path, minimal(f'''
        [[devices]]
        id = "a"
        address = 7
        driver = "trap"
        interval = {written}

        [store]
        keep_delivered = {written}
        '''))
    config, _ = load_config(path)
    assert config.devices[0].interval == pytest.approx(seconds)
    assert config.store.keep_delivered == pytest.approx(seconds)


def test_unparsable_duration_says_what_is_expected(tmp_path):
    path = write(tmp_path, minimal('''
        [[devices]]
        id = "a"
        address = 7
        driver = "trap"
        interval = "ten minutes"
        '''))
    assert problems_of(path) == [
        "line 12: devices[id=a].interval: expected a duration with a unit, such as \"90s\", \"10m\", \"1h\", \"2d\""
        " (got 'ten minutes')"
    ]


def test_zero_duration_is_refused(tmp_path):
    path = write(tmp_path, minimal('[store]\nkeep_delivered = "0s"\n'))
    (problem,) = problems_of(path)
    assert problem == "line 8: store.keep_delivered: Input should be greater than 0 s (got '0s')"


# -- layouts ----------------------------------------------------------------------------------------

LAYOUT = '''
[[layouts]]
name = "soil"
description = "soil moisture probe"
endian = "{endian}"
fields = [
  {{ name = "moisture", type = "u16", scale = 0.1, unit = "%", min = 0, max = 100 }},
  {{ name = "temperature", type = "i16", scale = 0.01, unit = "Cel" }},
  {{ name = "fcnt", type = "u8", counter = true }},
]

[[devices]]
id = "soil-1"
address = 40
driver = "soil"
'''


@pytest.mark.parametrize(("endian", "payload"), [
    ("big", bytes.fromhex("01F4FF38") + b"\x09"),
    ("little", bytes.fromhex("F40138FF") + b"\x09"),
])
def test_layout_driver_becomes_a_device_driver(tmp_path, endian, payload):
    path = write(tmp_path, minimal(LAYOUT.format(endian=endian)))
    config, drivers = load_config(path)
    assert config.devices[0].driver == "soil"
    assert "soil" in drivers
    assert drivers.origins["soil"] == "config [[layouts]]"
    soil = drivers["soil"]
    assert soil.description == "soil moisture probe"
    assert soil.counter_bits == 8
    assert soil.units() == {"moisture": "%", "temperature": "Cel"}
    decoded = soil.decode(payload)
    assert decoded.values == {"moisture": 50.0, "temperature": -2.0}
    assert decoded.counter == 9
    assert soil.encode(decoded.values, decoded.counter) == payload


def test_layout_with_two_counters_is_rejected(tmp_path):
    path = write(tmp_path, minimal('''
        [[layouts]]
        name = "twice"
        fields = [
          { name = "a", type = "u8", counter = true },
          { name = "b", type = "u16", counter = true },
        ]
        '''))
    problems = problems_of(path)
    assert "line 8: layouts[name=twice]: at most one field may be the frame counter (counter = true)" in problems


def test_layout_with_signed_counter_is_rejected(tmp_path):
    path = write(tmp_path, minimal('''
        [[layouts]]
        name = "signed"
        fields = [{ name = "fcnt", type = "i16", counter = true }]
        '''))
    problems = problems_of(path)
    assert "line 8: layouts[name=signed]: the counter field must be unsigned (u8, u16 or u32)" in problems


def test_layout_level_problem_is_reported_once(tmp_path):
    path = write(tmp_path, minimal('''
        [[layouts]]
        name = "twice"
        fields = [
          { name = "a", type = "u8", counter = true },
          { name = "b", type = "u16", counter = true },
        ]
        '''))
    assert problems_of(path) == ["line 8: layouts[name=twice]: at most one field may be the frame counter (counter = true)"]


def test_layout_field_problems_have_a_full_key_path_once(tmp_path):
    path = write(tmp_path, minimal('''
        [[layouts]]
        name = "odd"
        fields = [{ name = "a", type = "u24" }, { name = "b", type = "u8", scale = 0 }]
        '''))
    assert problems_of(path) == [
        "line 10: layouts[name=odd].fields[0].type: Input should be 'u8', 'i8', 'u16', 'i16', 'u32', 'i32' or 'f32'"
        " (got 'u24')",
        "line 10: layouts[name=odd].fields[1].scale: scale must not be 0",
    ]


def test_layout_may_not_shadow_a_bundled_driver(tmp_path):
    path = write(tmp_path, minimal('''
        [[layouts]]
        name = "trap"
        fields = [{ name = "a", type = "u8" }]
        '''))
    assert problems_of(path) == [
        "drivers: config [[layouts]]: driver name 'trap' is already defined by bundled:trap"
    ]


# -- drivers_dir ------------------------------------------------------------------------------------

def test_drivers_dir_that_does_not_exist(tmp_path):
    path = write(tmp_path, minimal(top='drivers_dir = "site-drivers"\n'), "etc/gw.toml")
    assert problems_of(path) == [f"line 2: drivers_dir: {tmp_path / 'etc' / 'site-drivers'} is not a directory"]


def test_drivers_dir_that_is_a_file(tmp_path):
    (tmp_path / "drivers.py").write_text("")
    path = write(tmp_path, minimal(top='drivers_dir = "drivers.py"\n'))
    assert problems_of(path) == [f"line 2: drivers_dir: {tmp_path / 'drivers.py'} is not a directory"]


def test_drivers_dir_with_a_broken_module_names_the_file(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken_thing.py").write_text("import edgegw_no_such_module_here\n")
    path = write(tmp_path, minimal(top='drivers_dir = "site"\n'))
    (problem,) = problems_of(path)
    assert problem.startswith(f"drivers: {site / 'broken_thing.py'}: cannot load driver module: ")
    assert "edgegw_no_such_module_here" in problem


def test_drivers_dir_adds_a_device_driver(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "cfgtest_knock.py").write_text(dedent('''
        from edgegw.drivers import Decoded, Driver, ValueSpec

        class Knock(Driver):
            name = "cfgtest_knock"
            description = "one byte of knocks"
            values = {"knocks": ValueSpec()}

            def decode(self, payload):
                return Decoded({"knocks": payload[0]})
        '''))
    path = write(tmp_path, 'gateway_id = "gw"\ndrivers_dir = "site"\n' + dedent(SOURCE) + dedent('''
        [[devices]]
        id = "door"
        address = 3
        driver = "cfgtest_knock"
        '''))
    config, drivers = load_config(path)
    assert config.drivers_dir == site
    assert drivers.origins["cfgtest_knock"] == str(site / "cfgtest_knock.py")
    assert drivers["cfgtest_knock"].decode(b"\x04").values == {"knocks": 4}


# -- sources ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lines", [
    'port = "/dev/ttyUSB0"\nsimulate = "field.toml"\n',
    "",
])
def test_source_needs_exactly_one_of_port_and_simulate(tmp_path, lines):
    path = write(tmp_path, 'gateway_id = "gw"\n[[sources]]\ntype = "rylr"\nname = "lora0"\n' + lines)
    assert problems_of(path) == [
        "line 2: sources[name=lora0]: set exactly one of port (a real module) or simulate (a field file for the emulator)"
    ]


FIELD = """
[[devices]]
address = 17
driver = "trap"
interval = "20s"
values = { state = "armed", tamper = false, battery = 3.3 }
"""


def test_a_simulated_sources_field_file_is_checked_with_the_config(tmp_path):
    # Found missing only when the daemon started, it stopped with a traceback after config check said OK.
    source = '[[sources]]\ntype = "rylr"\nname = "sim{n}"\nsimulate = "{file}"\n'
    path = write(tmp_path, 'gateway_id = "gw"\n' + source.format(n=0, file="gone.toml")
                 + source.format(n=1, file="broken.toml") + source.format(n=2, file="good.toml"))
    write(tmp_path, "[[devices]]\naddress = 17\n", "broken.toml")
    write(tmp_path, FIELD, "good.toml")
    assert problems_of(path) == [
        f"line 5: sources[name=sim0].simulate: {tmp_path / 'gone.toml'}: file not found",
        f"line 9: sources[name=sim1].simulate: {tmp_path / 'broken.toml'}: line 1: devices[0].driver: required key is missing",
        f"line 9: sources[name=sim1].simulate: {tmp_path / 'broken.toml'}: line 1: devices[0].interval: required key is missing",
        f"line 9: sources[name=sim1].simulate: {tmp_path / 'broken.toml'}: line 1: devices[0].values: required key is missing",
    ]


def test_unknown_source_type(tmp_path):
    path = write(tmp_path, minimal(source='''
        [[sources]]
        type = "sx1276"
        name = "lora0"
        port = "/dev/spidev0.0"
        '''))
    # Several source types now: the message lists them all, as for uplinks.
    from edgegw.radio.registry import SOURCE_TYPES
    assert problems_of(path) == [f"line 4: sources[name=lora0].type: unknown type 'sx1276' (did you mean 'sx127x'?);"
                                 f" expected one of: {', '.join(map(repr, SOURCE_TYPES))}"]


def test_unknown_bandwidth(tmp_path):
    path = write(tmp_path, minimal(source=SOURCE + "bandwidth_khz = 100\n"))
    (problem,) = problems_of(path)
    assert problem.startswith("line 7: sources[name=lora0].bandwidth_khz: expected one of [7.8, 10.4")
    assert problem.endswith("500] kHz")


# -- relative paths ---------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path, '''
        gateway_id = "gw"
        data_dir = "../var/gw"

        [[sources]]
        type = "rylr"
        name = "sim"
        simulate = "fields/field.toml"

        [[uplinks]]
        type = "mqtt"
        name = "cloud"
        host = "broker.example"
        tls = true
        password_file = "secrets/mqtt.pw"
        ca_file = "../pki/ca.pem"

        [[uplinks]]
        type = "mqtt"
        name = "absolute"
        host = "broker2.example"
        ca_file = "/etc/ssl/certs/ca.pem"
        ''', "etc/edgegw/gw.toml")
    folder = tmp_path / "etc" / "edgegw"
    write(folder, FIELD, "fields/field.toml")
    config, _ = load_config(path)
    assert config.data_dir == tmp_path / "etc" / "var" / "gw"
    assert config.sources[0].simulate == folder / "fields" / "field.toml"
    cloud, absolute = config.uplinks
    assert cloud.password_file == folder / "secrets" / "mqtt.pw"
    assert cloud.ca_file == tmp_path / "etc" / "pki" / "ca.pem"
    assert absolute.ca_file == Path("/etc/ssl/certs/ca.pem")
    assert absolute.password_file is None
    # normalised: no ".." left in what the daemon will open
    assert ".." not in config.data_dir.parts
    assert ".." not in cloud.ca_file.parts

    (folder / "secrets").mkdir()
    (folder / "secrets" / "mqtt.pw").write_text("s3cret\n")
    assert cloud.secret() == "s3cret"
    assert os.getcwd() == str(elsewhere)


def test_password_and_password_file_are_exclusive(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "mqtt"
        host = "broker.example"
        password = "x"
        password_file = "pw"
        '''))
    assert problems_of(path) == ["line 8: uplinks[0]: set password or password_file, not both"]


def test_topic_with_wildcard_is_refused(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "mqtt"
        host = "broker.example"
        topic = "sensors/#"
        '''))
    assert problems_of(path) == [
        'line 11: uplinks[0].topic: expected a topic without wildcards (+ or #), e.g. "town/sensors/{gateway}"'
    ]


def test_cross_section_problems_are_reported_with_field_problems(tmp_path):
    path = write(tmp_path, '''
        gateway_id = "gw"
        [[sources]]
        type = "rylr"
        name = "lora0"
        port = "/dev/ttyUSB0"
        spreading_factor = 13
        [[devices]]
        id = "a"
        address = 5
        driver = "trap"
        source = "lora9"
        [[devices]]
        id = "b"
        address = 6
        driver = "trap"
        [[devices]]
        id = "c"
        address = 6
        driver = "trap"
        [[uplinks]]
        host = "broker.example"
        ''')
    assert problems_of(path) == [
        "line 7: sources[name=lora0].spreading_factor: Input should be less than or equal to 12 (got 13)",
        "line 12: devices[id=a].source: unknown source 'lora9' (did you mean 'lora0'?); expected one of ['lora0']",
        "line 19: devices[id=c].address: 6 is also devices[id=b] on source 'lora0'",
        "line 21: uplinks[0].type: required key is missing; expected one of: "
        "'mqtt', 'file', 'iota-json', 'iota-ul', 'iota-json-http', 'iota-ul-http', 'ngsi-v2', 'ngsi-ld', 'sigfox'",
    ]
