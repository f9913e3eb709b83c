"""IoT Agent JSON / Ultralight uplinks through a real Mosquitto, checked by a paho subscriber.

Payloads are compared with the values the drivers decoded and, for Ultralight, parsed with the
strict parser in test_fiware.py (written after the agent's own).
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from edgegw.config import Device, IotaJsonUplink, IotaUlUplink, MqttUplink
from edgegw.errors import TransientUplinkError
from edgegw.items import Batch
from edgegw.uplink.fiware import ITEM_MEASURE_PREFIXES, ITEM_MEASURES, FiwareMapping, iota_json
from edgegw.uplink.iota import IotAgentMqttUplink
from edgegw.uplink.mqtt import LOOP_REST, LOOP_WAKE, MqttBatchUplink
from tests.broker import Subscriber
from tests.gateway import wait_until
from tests.test_fiware import alarm, health, parse_ul, trap, water
from tests.test_ngsi_uplink import Results

OBSERVED = "2025-06-01T03:00:00.000Z"
DEVICES = [Device(id="river-1", address=1, driver="water_level"), Device(id="trap-017", address=2, driver="trap")]


def batch(items: list[dict[str, Any]], batch_id: str = "b1") -> Batch:
    return Batch(batch_id, "gw-1", [json.dumps(i, ensure_ascii=False) for i in items])


@pytest.fixture
def running():
    """start(uplink) -> Results once the uplink is connected; stopped at teardown."""
    started = []

    def start(uplink):
        results = Results()
        uplink.start(results.on_result, results.on_state)
        started.append(uplink)
        wait_until(uplink.ready, 10, f"{uplink.name} connected")
        return results

    yield start
    for uplink in started:
        uplink.stop()


def iota(kind: str, port: int, **over: Any) -> IotAgentMqttUplink:
    model = IotaJsonUplink if kind == "iota-json" else IotaUlUplink
    config = model.model_validate({"type": kind, "host": "127.0.0.1", "port": port, "apikey": "k3y", **over})
    return IotAgentMqttUplink(config, config.fiware_mapping("gw-1", DEVICES), "gw-1")


def test_json_one_message_per_device_with_every_reading(mosquitto, running):
    uplink = iota("iota-json", mosquitto.port, attributes={"level": "wl", "water_temperature": "wt"})
    results = running(uplink)
    with Subscriber("127.0.0.1", mosquitto.port, "#") as sub:
        uplink.send(batch([water(1234), trap("sprung"), water(1300)]))
        assert results.wait("b1") is None
        messages = dict(sub.wait_for_count(2))
    assert set(messages) == {"/k3y/river-1/attrs", "/k3y/trap-017/attrs"}
    # Two readings of one device: an array of measure groups, in order, one NGSI update each; each
    # ends with the date its SDM type asks for (a river without a location is a DeviceMeasurement).
    assert json.loads(messages["/k3y/river-1/attrs"]) == [
        {"TimeInstant": OBSERVED, "wl": 1234, "wt": 23.0, "battery": 3.5, "dateObserved": OBSERVED},
        {"TimeInstant": OBSERVED, "wl": 1300, "wt": 23.0, "battery": 3.5, "dateObserved": OBSERVED},
    ]
    assert json.loads(messages["/k3y/trap-017/attrs"]) == {
        "TimeInstant": OBSERVED, "state": "sprung", "tamper": False, "battery": 3.3,
        "dateLastValueReported": OBSERVED,
    }


def test_ultralight_one_message_per_device_with_every_reading(mosquitto, running):
    uplink = iota("iota-ul", mosquitto.port)
    results = running(uplink)
    with Subscriber("127.0.0.1", mosquitto.port, "#") as sub:
        uplink.send(batch([water(1234), trap("armed"), water(1300)]))
        assert results.wait("b1") is None
        messages = dict(sub.wait_for_count(2))
    assert set(messages) == {"/ul/k3y/river-1/attrs", "/ul/k3y/trap-017/attrs"}
    river = parse_ul(messages["/ul/k3y/river-1/attrs"])
    assert [stamp for stamp, _ in river] == [OBSERVED, OBSERVED]
    assert [fields.pop() for _, fields in river] == [("dateObserved", OBSERVED)] * 2
    assert [{k: float(v) for k, v in fields} for _, fields in river] == [
        {"level": 1234, "water_temperature": 23.0, "battery": 3.5},
        {"level": 1300, "water_temperature": 23.0, "battery": 3.5},
    ]
    assert parse_ul(messages["/ul/k3y/trap-017/attrs"]) == [
        (OBSERVED, [("state", "armed"), ("tamper", "false"), ("battery", "3.3"), ("dateLastValueReported", OBSERVED)]),
    ]


def test_topic_form_is_configurable(mosquitto, running):
    uplink = iota("iota-json", mosquitto.port, topic="/json/{apikey}/{device}/attrs")
    results = running(uplink)
    with Subscriber("127.0.0.1", mosquitto.port, "#") as sub:
        uplink.send(batch([trap()]))
        assert results.wait("b1") is None
        ((topic, _),) = sub.wait_for_count(1)
    assert topic == "/json/k3y/trap-017/attrs"


def test_batch_is_acknowledged_only_when_the_broker_acknowledged_every_message(mosquitto, running):
    uplink = iota("iota-json", mosquitto.port)
    results = running(uplink)
    os.kill(mosquitto.pid, signal.SIGSTOP)  # the broker still accepts bytes, but answers nothing
    try:
        uplink.send(batch([water(1234), trap()]))
        with results.cond:
            assert not results.cond.wait_for(lambda: results.results, timeout=0.5), "acked without PUBACK"
    finally:
        os.kill(mosquitto.pid, signal.SIGCONT)
    assert results.wait("b1") is None


def test_a_lost_connection_fails_the_whole_batch_once_and_it_goes_through_later(mosquitto, running):
    uplink = iota("iota-ul", mosquitto.port)
    results = running(uplink)
    os.kill(mosquitto.pid, signal.SIGSTOP)
    uplink.send(batch([water(1234), trap()]))
    mosquitto.proc.kill()  # SIGKILL by pid: the connection drops with PUBACKs outstanding
    mosquitto.proc.wait(10)
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError)
    mosquitto.start()
    wait_until(uplink.ready, 20, "reconnected")
    with Subscriber("127.0.0.1", mosquitto.port, "#") as sub:
        uplink.send(batch([water(1234), trap()], "b2"))
        assert results.wait("b2") is None
        assert {t for t, _ in sub.wait_for_count(2)} == {"/ul/k3y/river-1/attrs", "/ul/k3y/trap-017/attrs"}


def test_items_with_nothing_to_measure_are_acknowledged_without_a_message(mosquitto, running):
    uplink = iota("iota-json", mosquitto.port)
    results = running(uplink)
    uplink.send(batch([]))
    assert results.wait("b1") is None


def test_mqtt_and_iot_agent_uplinks_share_a_broker_without_taking_each_others_connection(mosquitto, running):
    mqtt = MqttBatchUplink(MqttUplink(type="mqtt", host="127.0.0.1", port=mosquitto.port), "gw-1")
    agent = iota("iota-json", mosquitto.port)
    mqtt_results, agent_results = running(mqtt), running(agent)
    with Subscriber("127.0.0.1", mosquitto.port, "#") as sub:
        for n in range(3):
            mqtt.send(batch([trap()], f"m{n}"))
            agent.send(batch([trap()], f"a{n}"))
            assert mqtt_results.wait(f"m{n}") is None and agent_results.wait(f"a{n}") is None
        sub.wait_for_count(6)
    assert [s for s, _ in mqtt_results.states].count("up") == 1
    assert [s for s, _ in agent_results.states].count("up") == 1


def test_an_idle_connection_rests_yet_a_batch_is_acknowledged_and_a_stop_ends_it_at_once(mosquitto, running):
    """Connected with nothing awaiting a PUBACK, paho's loop waits LOOP_REST instead of LOOP_WAKE;
    a batch goes and is acknowledged as before, and a stop does not wait for the rest to end."""
    uplink = MqttBatchUplink(MqttUplink(type="mqtt", host="127.0.0.1", port=mosquitto.port), "gw-1")
    waits: list[float] = []
    new_client = uplink._new_client

    def recording_client():
        client = new_client()
        loop = client.loop
        client.loop = lambda timeout: waits.append(timeout) or loop(timeout=timeout)  # type: ignore[method-assign]
        return client

    uplink._new_client = recording_client  # type: ignore[method-assign]
    results = running(uplink)
    wait_until(lambda: waits and waits[-1] == LOOP_REST, 10, "paho's loop resting")
    assert LOOP_WAKE < LOOP_REST
    uplink.send(batch([trap()], "m0"))
    assert results.wait("m0", timeout=LOOP_REST / 2) is None
    began = time.monotonic()
    uplink.stop()
    assert uplink._thread is not None and not uplink._thread.is_alive()
    assert time.monotonic() - began < LOOP_REST / 2


def test_alarm_and_health_measure_names_are_known_to_the_config_check():
    names = {k for _, p in iota_json([alarm(), health()], FiwareMapping()) for g in [json.loads(p)] for k in g}
    names.discard("TimeInstant")
    assert names and all(n in ITEM_MEASURES or n.startswith(ITEM_MEASURE_PREFIXES) for n in names), names
