"""The FIWARE uplinks' config: what `edgegw config check` says, and the shipped examples working."""

# ruff: noqa: F811  (the context_broker fixture is imported, then named as a test argument)

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgegw.cli import cli
from edgegw.config import IotaJsonUplink, NgsiLdUplink, NgsiV2Uplink, load_config
from edgegw.errors import ConfigError
from tests.broker import Subscriber
from tests.context_broker import context_broker  # noqa: F401
from tests.gateway import Daemon
from tests.iot_agent import IotAgent
from tests.test_config import minimal, problems_of, unplaced, write

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.toml") if not p.name.endswith("-field.toml"))

DEVICES = '''
[[devices]]
id = "river-01"
address = 21
driver = "water_level"
location = [36.24, 138.46]

[[devices]]
id = "trap-01"
address = 17
driver = "trap"
'''


# -- the four problems of the issue, all at once ---------------------------------------------------

def test_url_apikey_entity_type_and_mapping_problems_are_reported_together(tmp_path):
    path = write(tmp_path, minimal(DEVICES + '''
        [[uplinks]]
        type = "ngsi-v2"
        url = "http://orion.town.example:1026/v2"
        entity_types = { water_level = "WaterLevel" }

        [[uplinks]]
        type = "iota-json"
        host = "mqtt.town.example"
        attributes = { levle = "wl" }
        '''))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert all(re.match(rf"{re.escape(str(path))}: line \d+: uplinks\[", line) for line in lines), lines
    assert sorted(unplaced(info.value.problems)) == [
        "uplinks[0].entity_types: unknown entity type 'WaterLevel' (for water_level); "
        "supported: Device, DeviceMeasurement, WaterObserved",
        "uplinks[0].url: edgegw adds the API path (/v2/op/update or /ngsi-ld/v1/entityOperations/upsert) "
        "itself: set url to the broker's base URL, \"http://orion.town.example:1026\" "
        "(got 'http://orion.town.example:1026/v2')",
        "uplinks[1].apikey: required key is missing: the API key of the IoT Agent's service group "
        "(ask the platform team), e.g. \"4jggokgpepnvsb2uv4s40d59ov\"",
        "uplinks[1].attributes: 'levle': no driver of the configured devices (trap, water_level) produces "
        "such a value; they produce: battery, level, state, tamper, water_temperature",
    ]


def test_config_check_prints_them_and_exits_2(tmp_path):
    path = write(tmp_path, minimal(DEVICES + '''
        [[uplinks]]
        type = "ngsi-ld"
        url = "orion:1026"
        '''))
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "uplinks[0].url: expected the http:// or https:// base URL of the context broker" in result.output


@pytest.mark.parametrize(("url", "expected"), [
    ("orion.town.example:1026", "expected the http:// or https:// base URL of the context broker, "
                                "e.g. \"http://orion.town.example:1026\" (got 'orion.town.example:1026')"),
    ("ftp://orion.town.example", "expected the http:// or https:// base URL"),
    ("http://:1026", "expected the http:// or https:// base URL"),
    ("http://orion:99999", "the port in 'http://orion:99999' is not a number from 1 to 65535"),
    ("https://gw:secret@orion", "put no user or password in the URL: set token or token_file"),
    ("http://orion?x=1", "without ?query or #fragment"),
    ("http://orion:1026/v2/op/update", 'set url to the broker\'s base URL, "http://orion:1026"'),
    ("https://town.example/orion/ngsi-ld/v1/entityOperations/upsert",
     'set url to the broker\'s base URL, "https://town.example/orion"'),
])
def test_wrong_urls_are_explained(tmp_path, url, expected):
    path = write(tmp_path, minimal(f'''
        [[uplinks]]
        type = "ngsi-v2"
        url = "{url}"
        '''))
    (problem,) = unplaced(problems_of(path))
    assert problem.startswith("uplinks[0].url: ") and expected in problem, problem


def test_good_urls_are_normalised(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "ngsi-v2"
        url = "https://town.example/orion/"

        [[uplinks]]
        type = "ngsi-ld"
        url = "http://127.0.0.1:1026"
        '''))
    config, _ = load_config(path)
    assert [u.url for u in config.uplinks] == ["https://town.example/orion", "http://127.0.0.1:1026"]


def test_missing_url_says_what_it_is(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "ngsi-v2"
        '''))
    assert unplaced(problems_of(path)) == [
        "uplinks[0].url: required key is missing: the context broker's base URL, "
        "e.g. \"http://orion.town.example:1026\""
    ]


def test_entity_types_name_known_drivers(tmp_path):
    path = write(tmp_path, minimal(DEVICES + '''
        [[uplinks]]
        type = "ngsi-ld"
        url = "http://orion"
        entity_types = { trapp = "Device" }
        '''))
    assert unplaced(problems_of(path)) == [
        "uplinks[0].entity_types: unknown driver(s) 'trapp'; known drivers: trap, water_level"
    ]


def test_attributes_may_rename_alarm_and_health_measures_and_are_unchecked_without_devices(tmp_path):
    path = write(tmp_path, minimal(DEVICES + '''
        [[uplinks]]
        type = "iota-ul"
        host = "h"
        apikey = "k"
        attributes = { level = "wl", alarmSeverity = "sev", pending_town = "q" }
        '''))
    load_config(path)
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "iota-ul"
        host = "h"
        apikey = "k"
        attributes = { anything = "x" }
        '''))
    load_config(path)


def test_attribute_names_must_be_safe(tmp_path):
    path = write(tmp_path, minimal(DEVICES + '''
        [[uplinks]]
        type = "ngsi-v2"
        url = "http://orion"
        attributes = { level = "water level" }
        '''))
    assert unplaced(problems_of(path)) == [
        "uplinks[0].attributes: attribute names may use letters, digits, _ and - only: level = 'water level'"
    ]


@pytest.mark.parametrize(("lines", "expected"), [
    ('service = "Kamikawa"', "uplinks[0].service: Fiware-Service: expected 1-50 lowercase letters, digits or _"),
    ('service_path = "rivers"', "uplinks[0].service_path: expected an absolute path that starts with /"),
    ('service_path = "/rivers/"', "uplinks[0].service_path: expected an absolute path that starts with /"),
    ('service_path = "/rivers/#"', "uplinks[0].service_path: an update goes to exactly one service path"),
    ('service_path = "/a-b"', "uplinks[0].service_path: expected at most 10 levels of 1-50 letters, digits or _"),
    ('entity_id = "urn:{kind}:{device}"', "uplinks[0].entity_id: entity_id template 'urn:{kind}:{device}': "
                                          "use only {type}, {device}, {gateway}"),
    ('alert_categories = { trap_sprung = "wildlife" }', "uplinks[0].alert_categories: unknown SDM Alert category: "
                                                        "trap_sprung = 'wildlife'; expected one of agriculture,"),
    ('token = "a"\ntoken_file = "b"', "uplinks[0]: set token or token_file, not both"),
    ("timeout = 0", "uplinks[0].timeout: Input should be greater than 0"),
])
def test_ngsi_v2_settings_follow_fiware_rules(tmp_path, lines, expected):
    path = write(tmp_path, minimal('\n[[uplinks]]\ntype = "ngsi-v2"\nurl = "http://orion"\n' + lines + "\n"))
    (problem,) = unplaced(problems_of(path))
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(("lines", "expected"), [
    ('entity_id = "{device}"', "uplinks[0].entity_id: NGSI-LD entity ids are URIs"),
    ('context = "core"', "uplinks[0].context: expected the URL of an @context, or a list of them"),
    ('tenant = "Town A"', "uplinks[0].tenant: NGSILD-Tenant: expected 1-50 lowercase letters"),
    ('service_path = "/a"', "uplinks[0].service_path: unknown key"),
])
def test_ngsi_ld_settings(tmp_path, lines, expected):
    path = write(tmp_path, minimal('\n[[uplinks]]\ntype = "ngsi-ld"\nurl = "http://orion"\n' + lines + "\n"))
    (problem,) = unplaced(problems_of(path))
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(("lines", "expected"), [
    ('apikey = "a/b"', "uplinks[0].apikey: expected the service group's API key, without / + # & ? = % or spaces"),
    ('apikey = "k"\ntopic = "/{apikey}/attrs"', "uplinks[0].topic: the IoT Agent tells devices apart by topic"),
    ('apikey = "k"\ntopic = "/{apikey}/+/{device}"', "uplinks[0].topic: the IoT Agent tells devices apart"),
    ('apikey = "k"\ntopic = "/{key}/{device}/attrs"', "uplinks[0].topic: use only {apikey} and {device}"),
    ('apikey = "k"\npassword = "a"\npassword_file = "b"', "uplinks[0]: set password or password_file, not both"),
])
def test_iot_agent_settings(tmp_path, lines, expected):
    path = write(tmp_path, minimal('\n[[uplinks]]\ntype = "iota-json"\nhost = "h"\n' + lines + "\n"))
    (problem,) = unplaced(problems_of(path))
    assert problem.startswith(expected), problem


def test_defaults_and_relative_paths(tmp_path):
    path = write(tmp_path, minimal(DEVICES + '''
        [[uplinks]]
        type = "ngsi-v2"
        url = "https://orion.example"
        token_file = "secrets/token"
        ca_file = "../pki/ca.pem"

        [[uplinks]]
        type = "ngsi-ld"
        url = "https://orion.example"

        [[uplinks]]
        type = "iota-json"
        host = "h"
        apikey = "k"
        password_file = "pw"

        [[uplinks]]
        type = "iota-ul"
        host = "h"
        apikey = "k"
        '''), "etc/gw.toml")
    config, _ = load_config(path)
    v2, ld, agent, ul = config.uplinks
    assert isinstance(v2, NgsiV2Uplink) and isinstance(ld, NgsiLdUplink) and isinstance(agent, IotaJsonUplink)
    assert [u.name for u in config.uplinks] == ["ngsi-v2", "ngsi-ld", "iota-json", "iota-ul"]
    assert v2.token_file == tmp_path / "etc" / "secrets" / "token" and v2.ca_file == tmp_path / "pki" / "ca.pem"
    assert agent.password_file == tmp_path / "etc" / "pw"
    assert (v2.service, v2.service_path, v2.timeout, v2.verify_tls) == (None, "/", 10, True)
    assert ld.context == "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
    assert (agent.topic, ul.topic) == ("/{apikey}/{device}/attrs", "/ul/{apikey}/{device}/attrs")
    mapping = v2.fiware_mapping(config.gateway_id, config.devices)
    assert mapping.gateway_id == "gw" and mapping.locations == {"river-01": (36.24, 138.46)}
    assert mapping.entity_id == "urn:ngsi-ld:{type}:{device}"


def test_alert_categories_become_the_mappings_pairs(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "ngsi-v2"
        url = "http://orion"
        alert_categories = { trap_sprung = "agriculture", paddy = ["agriculture", "irrigation"] }
        entity_types = { water_level = "DeviceMeasurement" }
        attributes = { level = "wl" }
        '''))
    config, _ = load_config(path)
    mapping = config.uplinks[0].fiware_mapping("gw", [])
    assert dict(mapping.alert_categories) == {"trap_sprung": ("agriculture", None),
                                              "paddy": ("agriculture", "irrigation")}
    assert mapping.entity_type("water_level") == "DeviceMeasurement" and mapping.attribute("level") == "wl"


# -- the shipped examples --------------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_passes_config_check(path):
    result = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert ": OK: gateway" in result.output


def test_there_is_an_example_per_uplink_type():
    types = {u.type for p in CONFIGS for u in load_config(p)[0].uplinks}
    assert {"iota-json", "iota-ul", "iota-json-http", "iota-ul-http", "ngsi-v2", "ngsi-ld"} <= types


def run_example(tmp_path: Path, name: str, replace: dict[str, str]) -> Daemon:
    """The example, with its data in tmp_path and its platform address replaced; started."""
    text = (REPO / "configs" / name).read_text()
    text = text.replace('simulate = "demo-field.toml"', f'simulate = "{REPO / "configs" / "demo-field.toml"}"')
    text = re.sub(r'^data_dir = .*$', 'data_dir = "data"', text, flags=re.M)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return Daemon(path).start()


@pytest.mark.parametrize("name", ["uplink-ngsi-v2.toml", "uplink-ngsi-ld.toml"])
def test_ngsi_examples_deliver_every_device(tmp_path, context_broker, name):
    daemon = run_example(tmp_path, name, {'url = "http://127.0.0.1:1026"': f'url = "{context_broker.url}"'})
    try:
        ld = "ld" in name
        # the paddy is one entity type on both (the examples agree, as config check demands in one config)
        ids = {"urn:ngsi-ld:Device:trap-shrine", "urn:ngsi-ld:WaterObserved:river-kamo-bridge",
               "urn:ngsi-ld:WaterObserved:paddy-07", "urn:ngsi-ld:Device:paddy-07"}

        def stored() -> set[str]:
            entities = context_broker.ld_entities("kamikawa") if ld else context_broker.entities("kamikawa", "/rivers")
            return {e["id"] for e in entities}

        assert context_broker.wait_for(lambda: ids <= stored(), 30), daemon.log_tail()
        assert context_broker.invalid == []
        # the examples map the paddy's depth (cm) to the WaterObserved waterLevel (m)
        if ld:
            paddy = context_broker.ld_entity("urn:ngsi-ld:WaterObserved:paddy-07", "kamikawa")
            assert 0 < paddy["waterLevel"]["value"] < 0.3 and paddy["waterLevel"]["unitCode"] == "MTR"
        else:
            paddy = context_broker.entity("urn:ngsi-ld:WaterObserved:paddy-07", service="kamikawa",
                                          service_path="/rivers")
            assert 0 < paddy["waterLevel"]["value"] < 0.3
            assert paddy["waterLevel"]["metadata"]["unitCode"]["value"] == "MTR"
    finally:
        daemon.stop()


@pytest.mark.parametrize("name", ["uplink-iota-json-mqtt.toml", "uplink-iota-ul-mqtt.toml"])
def test_iot_agent_mqtt_examples_deliver_every_device(tmp_path, mosquitto, name):
    with Subscriber("127.0.0.1", mosquitto.port, "#") as sub:
        daemon = run_example(tmp_path, name, {"port = 1883": f"port = {mosquitto.port}"})
        try:
            prefix = "/ul" if "-ul" in name else ""
            topics = {f"{prefix}/4jggokgpepnvsb2uv4s40d59ov/{d}/attrs" for d in ("trap-shrine", "river-kamo-bridge",
                                                                                 "paddy-07")}
            sub.wait_for(lambda msgs: topics <= {t for t, _ in msgs}, 30, f"messages on {topics}")
            river = next(p for t, p in sub.messages if "river-kamo-bridge" in t)
            # the level in metres as WaterObserved's waterLevel, as the NGSI examples send it
            if prefix:
                assert "|waterLevel|" in river.decode() and "|water_temperature|" in river.decode()
                assert "|level|" not in river.decode()
            else:
                group = json.loads(river)
                group = group[0] if isinstance(group, list) else group
                assert {"waterLevel", "water_temperature", "battery", "TimeInstant"} <= set(group)
                assert "level" not in group and 0 < group["waterLevel"] < 10
        finally:
            daemon.stop()


@pytest.mark.parametrize("name", ["uplink-iota-json.toml", "uplink-iota-ul.toml"])
def test_iot_agent_http_examples_deliver_every_device_to_the_broker(tmp_path, context_broker, name):
    agent = IotAgent(context_broker.url).start()
    agent.group("4jggokgpepnvsb2uv4s40d59ov", "Thing")
    try:
        daemon = run_example(tmp_path, name, {'url = "http://127.0.0.1:7896"': f'url = "{agent.url}"'})
        try:
            ids = {f"Thing:{d}" for d in ("trap-shrine", "river-kamo-bridge", "paddy-07")}
            assert context_broker.wait_for(lambda: ids <= {e["id"] for e in context_broker.entities()}, 30), \
                daemon.log_tail()
            river = context_broker.entity("Thing:river-kamo-bridge")
            assert {"waterLevel", "water_temperature", "battery", "TimeInstant"} <= set(river)
            assert "level" not in river and 0 < float(river["waterLevel"]["value"]) < 10
            assert agent.invalid == [] and context_broker.invalid == []
        finally:
            daemon.stop()
    finally:
        agent.stop()


def test_fiware_uplinks_of_one_config_must_make_one_entity_per_device(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "ngsi-v2"
        url = "http://orion.town.example:1026"
        entity_types = { water_level = "DeviceMeasurement" }

        [[uplinks]]
        type = "ngsi-ld"
        url = "http://broker.town.example:1026"

        [[uplinks]]
        type = "iota-json-http"
        url = "http://iota.town.example:7896"
        apikey = "k3y"
        entity_types = { water_level = "DeviceMeasurement" }
        entity_id = "urn:ngsi-ld:{type}:{gateway}:{device}"
        '''))
    assert unplaced(problems_of(path)) == [
        "uplinks[1].entity_types: 'water_level' is 'WaterObserved' here but 'DeviceMeasurement' on uplinks[0]: a "
        "device must be one entity type on every uplink; set water_level = \"DeviceMeasurement\" (or change "
        "uplinks[0])",
        "uplinks[2].entity_id: 'urn:ngsi-ld:{type}:{gateway}:{device}' here but 'urn:ngsi-ld:{type}:{device}' on "
        "uplinks[0]: a device must be one entity on every uplink; use the same entity_id",
    ]


def test_iot_agent_http_url_and_apikey_are_checked(tmp_path):
    path = write(tmp_path, minimal('''
        [[uplinks]]
        type = "iota-ul-http"
        url = "http://iota.town.example:7896/iot/d"
        apikey = "k&y"
        '''))
    assert unplaced(problems_of(path)) == [
        "uplinks[0].url: edgegw adds the API path (/iot/json or /iot/d) itself: set url to the agent's base URL, "
        "\"http://iota.town.example:7896\" (got 'http://iota.town.example:7896/iot/d')",
        "uplinks[0].apikey: expected the service group's API key, without / + # & ? = % or spaces, "
        "e.g. \"4jggokgpepnvsb2uv4s40d59ov\" (got 'k&y')",
    ]
