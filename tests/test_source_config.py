"""Config errors of the new source types name the file, the key and what is expected; plugins load by entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgegw.config import load_config
from edgegw.errors import ConfigError
from edgegw.radio import registry
from tests.test_config import unplaced

REPO = Path(__file__).resolve().parent.parent


def problems(tmp_path: Path, source: str) -> list[str]:
    path = tmp_path / "gateway.toml"
    path.write_text('gateway_id = "gw"\n[[sources]]\n' + source)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")  # every line names the file
    return unplaced(info.value.problems)


@pytest.mark.parametrize(("source", "expected"), [
    ('type = "es920lr"\nname = "a"\nport = "/dev/ttyUSB0"\nchannel = 16\n',
     "sources[name=a].channel: expected a channel 1-15 (920.6-923.4 MHz), e.g. 1"),
    ('type = "im920sl"\nname = "a"\nport = "/dev/ttyUSB0"\nbaudrate = 14400\n',
     "sources[name=a].baudrate: expected one of [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200]"
     " (the module's default is 19200)"),
    ('type = "e220"\nname = "a"\nport = "/dev/ttyS0"\nchannel = 31\nbandwidth_khz = 500\n',
     "sources[name=a].channel: at 500 kHz the module takes channels 0-30 (920.6 + 0.2 n MHz)"),
    ('type = "sx127x"\nname = "a"\nfrequency_mhz = 868.1\n',
     "sources[name=a].frequency_mhz: expected a 920 MHz channel of ARIB STD-T108: 920.6 + 0.2 n up to 928.0,"
     " e.g. 923.2"),
    ('name = "a"\nport = "/dev/ttyUSB0"\n',
     "sources[name=a].type: required key is missing; expected one of: 'rylr', 'es920lr', 'im920sl', 'e220', 'sx127x'"),
])
def test_source_errors_name_key_and_expectation(tmp_path, source, expected):
    assert expected in problems(tmp_path, source)


@pytest.mark.parametrize("kind", ["es920lr", "im920sl", "e220", "sx127x"])
def test_example_configs_pass_config_check(kind):
    if kind == "sx127x":
        pytest.importorskip("SX127x")
    config, _ = load_config(REPO / "configs" / f"{kind}.toml", keys=False)
    assert config.sources[0].type == kind


def test_a_plugin_source_type_joins_by_entry_point(monkeypatch):
    from typing import Literal

    from edgegw.config.base import _Section

    class EchoSource(_Section):
        type: Literal["echo"]
        name: str

    plugin = registry.SourceType(EchoSource, lambda c, port, turn: None)

    class EntryPoint:
        name, value = "echo", "echo_pkg:SOURCE"

        def load(self):
            return plugin

    class Broken(EntryPoint):
        name, value = "broken", "broken_pkg:SOURCE"

        def load(self):
            raise ImportError("no module named broken_pkg")

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: [EntryPoint(), Broken()])
    types, broken = registry._load()
    assert types["echo"] is plugin and list(types)[:5] == ["rylr", "es920lr", "im920sl", "e220", "sx127x"]
    assert broken == ["entry point broken (broken_pkg:SOURCE): ImportError('no module named broken_pkg')"]
