"""The IoT Agent HTTP uplinks (iota-json-http, iota-ul-http) against the agent double
(tests/iot_agent.py), which updates the strict test context broker before it answers.

What the broker stored is compared with the values the drivers decoded; the double validates every
southbound request (query, content type, payload shape) and the broker every update.
"""

# ruff: noqa: F811  (fixtures are imported, then named as test arguments)

from __future__ import annotations

import json
from typing import Any

import pytest

from edgegw.config import Device, IotaJsonHttpUplink, IotaUlHttpUplink
from edgegw.errors import PermanentUplinkError, TransientUplinkError
from edgegw.items import Batch
from edgegw.uplink.iota_http import IotAgentHttpUplink
from tests.context_broker import ContextBroker, context_broker  # noqa: F401
from tests.iot_agent import IotAgent, iot_agent  # noqa: F401
from tests.test_fiware import alarm, trap, water
from tests.test_ngsi_uplink import Results

OBSERVED = "2025-06-01T03:00:00.000Z"
DEVICES = [Device(id="river-1", address=1, driver="water_level"), Device(id="trap-017", address=2, driver="trap")]
RIVER = "urn:ngsi-ld:WaterObserved:river-1"
TRAP = "urn:ngsi-ld:Device:trap-017"
RIVER_ATTRS = {"wl": ("level", "Number"), "water_temperature": ("water_temperature", "Number"),
               "battery": ("battery", "Number")}
TRAP_ATTRS = {"state": ("deviceState", "Text"), "tamper": ("tamper", "Boolean"), "battery": ("battery", "Number"),
              "alarm": ("alarm", "Text"), "alarmSeverity": ("alarmSeverity", "Text"),
              "alarmMessage": ("alarmMessage", "Text"), "alarmId": ("alarmId", "Text")}


def batch(items: list[dict[str, Any]], batch_id: str = "b1") -> Batch:
    return Batch(batch_id, "gw-1", [json.dumps(i, ensure_ascii=False) for i in items])


def provision(agent: IotAgent, apikey: str = "k3y") -> None:
    agent.group(apikey, "Thing", service="town", subservice="/rivers")
    agent.device("river-1", apikey, RIVER, "WaterObserved", RIVER_ATTRS)
    agent.device("trap-017", apikey, TRAP, "Device", TRAP_ATTRS)


def config(kind: str, url: str, **over: Any) -> IotaJsonHttpUplink | IotaUlHttpUplink:
    model = IotaJsonHttpUplink if kind == "json" else IotaUlHttpUplink
    return model.model_validate({"type": f"iota-{kind}-http", "url": url, "apikey": "k3y",
                                 "attributes": {"level": "wl"}, **over})


@pytest.fixture
def running():
    """start(config) -> (uplink, results); every uplink started is stopped at teardown."""
    started: list[IotAgentHttpUplink] = []

    def start(cfg: IotaJsonHttpUplink | IotaUlHttpUplink) -> tuple[IotAgentHttpUplink, Results]:
        uplink = IotAgentHttpUplink(cfg, cfg.fiware_mapping("gw-1", DEVICES))
        results = Results()
        uplink.start(results.on_result, results.on_state)
        started.append(uplink)
        return uplink, results

    yield start
    for uplink in started:
        uplink.stop()


def stored(broker: ContextBroker, entity_id: str) -> dict[str, Any]:
    entity = broker.entity(entity_id, service="town", service_path="/rivers")
    assert entity is not None, f"{entity_id} not in the broker"
    return {k: (v["type"], v["value"]) for k, v in entity.items() if k not in ("id", "type")}


@pytest.mark.parametrize("kind", ["json", "ul"])
def test_measures_reach_the_broker_before_the_batch_is_acknowledged(kind, context_broker, iot_agent, running):
    provision(iot_agent)
    uplink, results = running(config(kind, iot_agent.url))
    uplink.send(batch([water(1234), trap("sprung"), water(1300)]))
    assert results.wait("b1") is None
    # The acknowledgement came after the broker stored every group: nothing is still on its way.
    assert iot_agent.updates == 3
    river, trap_entity = stored(context_broker, RIVER), stored(context_broker, TRAP)
    assert river["level"] == ("Number", 1300) and river["water_temperature"] == ("Number", 23.0)
    assert river["battery"][0] == "Number" and river["battery"][1] == pytest.approx(3.5)
    assert river["TimeInstant"] == ("DateTime", OBSERVED)
    assert trap_entity["deviceState"] == ("Text", "sprung") and trap_entity["tamper"] == ("Boolean", False)
    assert iot_agent.invalid == [] and context_broker.invalid == []
    requests = iot_agent.requests
    assert {r.query["k"] for r in requests} == {"k3y"}
    if kind == "json":  # one measure group per request: the JSON agent answers an array after its first group
        assert [r.query["i"] for r in requests] == ["river-1", "trap-017", "river-1"]
        assert all(isinstance(r.body, dict) for r in requests)
        assert {r.headers["content-type"] for r in requests} == {"application/json"}
    else:  # one request per device: the UL agent updates the groups in series and answers after the last
        assert [r.query["i"] for r in requests] == ["river-1", "trap-017"]
        assert requests[0].body.count("#") == 1
        assert {r.headers["content-type"].split(";")[0] for r in requests} == {"text/plain"}
    assert {r.path for r in requests} == {"/iot/json" if kind == "json" else "/iot/d"}


@pytest.mark.parametrize("kind", ["json", "ul"])
def test_broker_down_means_no_acknowledgement_and_the_agents_words(kind, context_broker, iot_agent, running):
    provision(iot_agent)
    uplink, results = running(config(kind, iot_agent.url))
    context_broker.stop()
    uplink.send(batch([trap("sprung"), alarm()]))
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError)
    assert "HTTP 500" in str(error) and "ENTITY_GENERIC_ERROR" in str(error)
    context_broker.start()  # same port: the broker is back, the same batch goes through
    uplink.send(batch([trap("sprung"), alarm()], "b2"))
    assert results.wait("b2") is None
    assert stored(context_broker, TRAP)["alarm"] == ("Text", "trap_sprung")
    assert iot_agent.invalid == []


def test_agent_down_is_transient_and_it_is_found_back(context_broker, running):
    agent = IotAgent(context_broker.url).start()
    provision(agent)
    agent.stop()
    try:
        uplink, results = running(config("json", agent.url))
        uplink.send(batch([water(1234)]))
        error = results.wait("b1")
        assert isinstance(error, TransientUplinkError) and "cannot connect" in str(error)
        assert context_broker.entity(RIVER, service="town", service_path="/rivers") is None
        agent.start()
        uplink.send(batch([water(1234)], "b2"))
        assert results.wait("b2") is None
        assert stored(context_broker, RIVER)["level"] == ("Number", 1234)
    finally:
        agent.stop()


def test_unknown_apikey_is_retried_not_parked(context_broker, iot_agent, running):
    provision(iot_agent, apikey="another")
    uplink, results = running(config("ul", iot_agent.url))
    uplink.send(batch([water()]))
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError)
    assert "HTTP 404" in str(error) and "DEVICE_GROUP_NOT_FOUND" in str(error)


def test_a_measure_the_broker_refuses_is_permanent_with_the_brokers_reason(context_broker, iot_agent, running):
    provision(iot_agent)
    context_broker.reject_entity(TRAP, 400, "trap-017 is not welcome here")
    uplink, results = running(config("json", iot_agent.url))
    uplink.send(batch([trap()]))
    error = results.wait("b1")
    assert isinstance(error, PermanentUplinkError)
    assert "HTTP 400" in str(error) and "trap-017 is not welcome here" in str(error)


def test_the_json_agent_answers_an_array_after_its_first_group_only(context_broker, iot_agent):
    """Why the uplink sends one group per request: the double keeps the real agent's behaviour."""
    import urllib.request

    provision(iot_agent)
    context_broker.reject_entity(TRAP, 400, "refused")
    groups = json.dumps([{"wl": 1, "TimeInstant": OBSERVED}, {"wl": 2, "TimeInstant": OBSERVED}]).encode()
    request = urllib.request.Request(f"{iot_agent.url}/iot/json?k=k3y&i=river-1", groups,
                                     {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    assert iot_agent.updates == 2


@pytest.mark.parametrize(("path", "headers", "body", "status", "name"), [
    ("/iot/json?k=k3y", {"Content-Type": "application/json"}, b'{"wl": 1}', 400, "MANDATORY_PARAMS_NOT_FOUND"),
    ("/iot/json?k=k3y&i=river-1", {"Content-Type": "text/plain"}, b'{"wl": 1}', 400, "UNSUPPORTED_CONTENT_TYPE"),
    ("/iot/d?k=k3y&i=river-1", {"Content-Type": "application/json"}, b"wl|1", 400, "UNSUPPORTED_CONTENT_TYPE"),
    ("/iot/d?k=k3y&i=river-1", {"Content-Type": "text/plain"}, b"wl||t|2", 400, "PARSE_ERROR"),
    ("/iot/json?k=k3y&i=river-1", {"Content-Type": "application/json"}, b'{"wl": {"a": 1}}', 400, "BAD_REQUEST"),
    ("/iot/json?k=k3y&i=river-1", {"Content-Type": "application/json"}, b'{"wl": NaN}', 400, "SyntaxError"),
])
def test_the_agent_double_refuses_what_the_agents_refuse(context_broker, iot_agent, path, headers, body, status, name):
    import urllib.error
    import urllib.request

    provision(iot_agent)
    request = urllib.request.Request(iot_agent.url + path, body, headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == status
    assert json.loads(caught.value.read())["name"] == name
    assert len(iot_agent.invalid) == 1 and context_broker.requests == []


# -- what a town provisions: the same entities as on the NGSI uplinks, numbers typed ------------------

def health_item() -> dict[str, Any]:
    from tests.test_fiware import health
    return health()


@pytest.mark.parametrize("kind", ["json", "ul"])
def test_provisioned_gateway_health_arrives_with_numbers_typed_as_numbers(kind, context_broker, iot_agent, running):
    from edgegw.uplink.fiware import FiwareMapping, iota_provisioning

    mapping = FiwareMapping(gateway_id="gw-1")
    body = iota_provisioning(mapping, [], uplinks=["mqtt", "ngsi-v2"], sources=["lora0", "lora1"])
    iot_agent.group("k3y", "Thing", service="town", subservice="/rivers")
    iot_agent.provision(body, "k3y")
    uplink, results = running(config(kind, iot_agent.url))
    uplink.send(batch([health_item()]))
    assert results.wait("b1") is None
    gateway = stored(context_broker, "urn:ngsi-ld:Device:gw-1")  # the id the NGSI uplinks give it
    numbers = {"uptime_s", "pending", "pending_mqtt", "pending_ngsi-v2", "oldest_pending_s", "rejects",
               "rejects_bad_mic", "rejects_wrong_length", "disk_free_bytes", "open_alarms"}
    assert {k for k, (t, v) in gateway.items() if t == "Number"} == numbers
    assert all(isinstance(gateway[k][1], (int, float)) for k in numbers)
    assert gateway["softwareVersion"] == ("Text", "0.3.1") and gateway["category"] == ("StructuredValue", ["network"])
    assert gateway["last_frame_lora0"] == ("DateTime", "2025-06-01T03:04:59.000Z")
    assert iot_agent.invalid == [] and context_broker.invalid == []


def test_unprovisioned_health_numbers_arrive_as_text(context_broker, iot_agent, running):
    """Why the README asks towns to provision the gateway: the agent gives what it does not know a text type."""
    iot_agent.group("k3y", "Thing", service="town", subservice="/rivers")
    uplink, results = running(config("json", iot_agent.url))
    uplink.send(batch([health_item()]))
    assert results.wait("b1") is None
    assert stored(context_broker, "Thing:gw-1")["uptime_s"][0] == "Text"


def test_provisioning_gives_each_device_the_entity_the_ngsi_uplinks_make(tmp_path):
    from edgegw.config import load_config
    from edgegw.uplink.fiware import ngsi_v2_entities
    from edgegw.uplink.provisioning import agent_devices
    from tests.test_fiware import reading_item
    from tests.test_fiware_config import REPO

    for name in ("uplink-iota-json.toml", "uplink-iota-ul.toml", "uplink-iota-json-mqtt.toml"):
        config, drivers = load_config(REPO / "configs" / name, keys=False)
        body = agent_devices(config, drivers, config.uplinks[0])
        v2_config, _ = load_config(REPO / "configs" / "uplink-ngsi-v2.toml", keys=False)
        mapping = v2_config.uplinks[0].fiware_mapping(v2_config.gateway_id, v2_config.devices)
        for device in config.devices:
            driver = drivers[device.driver]
            values = {k: (s.choices[0] if s.choices else (s.minimum or 0) + 1) for k, s in driver.values.items()
                      if k != "tamper"}
            item = reading_item(driver, driver.encode({**values, "tamper": False} if "tamper" in driver.values
                                                      else values, 1), device.id)
            entity = next(e for e in ngsi_v2_entities([item], mapping) if "TimeInstant" in e)
            provisioned = next(d for d in body["devices"] if d["device_id"] == device.id)
            assert (provisioned["entity_name"], provisioned["entity_type"]) == (entity["id"], entity["type"]), name
        gateway = body["devices"][-1]
        assert (gateway["device_id"], gateway["entity_name"]) == ("demo-gw", "urn:ngsi-ld:Device:demo-gw")


@pytest.mark.parametrize("kind", ["json", "ul"])
def test_provisioned_devices_make_entities_the_smart_data_models_accept(kind, context_broker, iot_agent):
    from edgegw.uplink.fiware import FiwareMapping, iota_provisioning
    from tests.test_fiware import KAGAWA, kv_v2, sdm_violations

    located = [Device(id=d.id, address=d.address, driver=d.driver, location=KAGAWA) for d in DEVICES]
    cfg = config(kind, iot_agent.url)
    mapping = cfg.fiware_mapping("gw-1", located)
    assert isinstance(mapping, FiwareMapping)
    kinds = {"water_level": {"level": "Number", "water_temperature": "Number", "battery": "Number"},
             "trap": {"state": "Text", "battery": "Number"}}
    body = iota_provisioning(mapping, [(d.id, d.driver, kinds[d.driver]) for d in located])
    iot_agent.group("k3y", "Thing", service="town", subservice="/rivers")
    iot_agent.provision(body, "k3y")
    uplink = IotAgentHttpUplink(cfg, mapping)
    results = Results()
    uplink.start(results.on_result, results.on_state)
    try:
        uplink.send(batch([water(1234), trap("sprung")]))
        assert results.wait("b1") is None
    finally:
        uplink.stop()
    for entity_id, etype in ((RIVER, "WaterObserved"), (TRAP, "Device")):
        entity = context_broker.entity(entity_id, service="town", service_path="/rivers")
        assert entity is not None and entity["type"] == etype
        assert sdm_violations(kv_v2(entity)) == [], entity  # the published schema and the rules in test_fiware
    river = context_broker.entity(RIVER, service="town", service_path="/rivers")
    assert river["dateObserved"] == {"type": "DateTime", "value": OBSERVED, "metadata": {
        "TimeInstant": {"type": "DateTime", "value": OBSERVED}}}
    # the level as WaterObserved 0.0.4 defines it, in metres, as the NGSI uplinks send it
    assert (river["waterLevel"]["type"], river["waterLevel"]["value"]) == ("Number", 1.234)
    assert "level" not in river and "wl" not in river
    from edgegw.uplink.fiware import ngsi_v2_entities
    ngsi = next(e for e in ngsi_v2_entities([water(1234)], mapping) if e["id"] == RIVER)
    assert set(ngsi) - {"refDevice"} <= set(river)  # the same entity, the same attributes, on both paths
    assert kv_v2(ngsi)["waterLevel"] == kv_v2(river)["waterLevel"]
    assert iot_agent.invalid == [] and context_broker.invalid == []
