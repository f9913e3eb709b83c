"""What each uplink's acknowledgement proves, as `edgegw config check` and `edgegw status` say it."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

from click.testing import CliRunner

from edgegw.cli import cli
from edgegw.config import UPLINK_TYPES
from edgegw.store import Store
from edgegw.uplink import ACKNOWLEDGEMENTS, acknowledgement_level

CONFIGS = Path(__file__).parent.parent / "configs"
UPLINKS = '''
[[uplinks]]
type = "iota-json"
name = "agent-mqtt"
host = "127.0.0.1"
apikey = "k3y"

[[uplinks]]
type = "iota-json-http"
name = "agent-http"
url = "http://127.0.0.1:7896"
apikey = "k3y"

[[uplinks]]
type = "mqtt"
name = "maintainer"
host = "127.0.0.1"
'''


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "gw.toml"
    config.write_text(dedent('''
        gateway_id = "gw"
        data_dir = "state"

        [[sources]]
        type = "rylr"
        name = "lora0"
        port = "/dev/ttyUSB0"
        ''') + UPLINKS)
    return config


def test_every_uplink_type_says_what_its_acknowledgement_proves():
    assert set(ACKNOWLEDGEMENTS) == set(UPLINK_TYPES)
    assert {t for t in UPLINK_TYPES if acknowledgement_level(t) == "platform"} == {
        "ngsi-v2", "ngsi-ld", "iota-json-http", "iota-ul-http"}
    assert acknowledgement_level("iota-json") == acknowledgement_level("iota-ul") == "broker"


def test_config_check_says_an_mqtt_agents_puback_is_the_brokers_and_how_to_make_it_safe(tmp_path):
    result = CliRunner().invoke(cli, ["config", "check", str(write_config(tmp_path))])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: uplink")]
    assert len(notes) == 1 and "'agent-mqtt' (iota-json)" in notes[0]
    for words in ("not from the IoT Agent", "IOTA_MQTT_CLEAN=false does not help", 'type = "iota-json-http"'):
        assert words in notes[0]


def test_the_recommended_example_configs_need_no_such_note():
    for name in ("uplink-iota-json.toml", "uplink-iota-ul.toml"):
        result = CliRunner().invoke(cli, ["config", "check", str(CONFIGS / name)])
        assert result.exit_code == 0, result.output
        assert "note: uplink" not in result.stdout


def test_status_labels_each_uplinks_acknowledgements(tmp_path):
    config = write_config(tmp_path)
    store = Store(tmp_path / "state" / "edgegw.db")
    store.register_uplinks(["agent-mqtt", "agent-http", "maintainer"])
    store.close()
    as_json = CliRunner().invoke(cli, ["status", "--json", "-c", str(config)])
    assert as_json.exit_code == 0, as_json.output
    acks = {u["name"]: u["ack"] for u in json.loads(as_json.stdout)["uplinks"]}
    assert acks == {"agent-mqtt": "broker", "agent-http": "platform", "maintainer": "broker"}
    text = CliRunner().invoke(cli, ["status", "-c", str(config)]).stdout
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  agent-")}
    assert "(broker-level)" in lines["agent-mqtt"] and "(platform-level)" in lines["agent-http"]
