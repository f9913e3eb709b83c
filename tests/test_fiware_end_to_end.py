"""FIWARE end to end: emulated module on a pty -> the real daemon -> the test context broker.

What the broker accepted (its recorded 204 requests) is compared with what the emulated devices
sent; the broker validates every request as Orion would and through filip's models.
"""

# ruff: noqa: F811  (the context_broker fixture is imported, then named as a test argument)

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from edgegw.radio.emulator import RylrEmulator
from tests.broker import Subscriber
from tests.context_broker import ContextBroker, context_broker  # noqa: F401
from tests.gateway import DEVICES, Daemon, Sender, wait_until
from tests.iot_agent import IotAgent

LOCATION = (36.2412, 138.4650)


def write_config(tmp: Path, link: Path, uplinks: str) -> Path:
    """The test devices of tests/gateway.py, rivers with a location (so they are SDM WaterObserved)."""
    devices = "".join(
        f'\n[[devices]]\nid = "{d}"\naddress = {a}\ndriver = "{drv}"\ninterval = "10m"\n'
        + (f"location = [{LOCATION[0]}, {LOCATION[1]}]\n" if drv == "water_level" else "")
        for d, a, drv in DEVICES
    )
    path = tmp / "gateway.toml"
    path.write_text(
        f'gateway_id = "gw-test"\ndata_dir = "data"\n\n[[sources]]\ntype = "rylr"\nname = "lora0"\n'
        f'port = "{link}"\n{devices}{uplinks}\n[log]\nlevel = "debug"\nformat = "json"\n'
    )
    return path


def ngsi_v2(url: str, max_items: int = 20) -> str:
    return (f'\n[[uplinks]]\ntype = "ngsi-v2"\nname = "town"\nurl = "{url}"\nservice = "town"\n'
            f'service_path = "/rivers"\nbatch = {{ max_items = {max_items} }}\n')


def accepted(broker: ContextBroker, etype: str) -> list[dict[str, Any]]:
    """Every entity of ``etype`` in the update requests the broker accepted, in arrival order."""
    return [e for r in broker.requests if r.path == "/v2/op/update" and r.status == 204
            for e in r.body["entities"] if e["type"] == etype]


def levels(broker: ContextBroker) -> list[int]:
    """The river levels that arrived, in mm, from the WaterObserved waterLevel in metres."""
    return [round(e["waterLevel"]["value"] * 1000) for e in accepted(broker, "WaterObserved")]


def trap_states(broker: ContextBroker) -> list[dict[str, Any]]:
    """The trap readings that arrived (Device entities with a state; the gauges' Device entities have none)."""
    return [e for e in accepted(broker, "Device") if "deviceState" in e]


def river_levels(sender: Sender) -> list[int]:
    return [v["level"] for rid, v in sender.sent.items() if rid.startswith("river-")]


def traps(sender: Sender) -> int:
    return sum(rid.startswith("trap-") for rid in sender.sent)


def arrived(broker: ContextBroker, sender: Sender) -> bool:
    return (Counter(levels(broker)) >= Counter(river_levels(sender))
            and len(trap_states(broker)) >= traps(sender))


@pytest.fixture
def emulator(tmp_path) -> Iterator[RylrEmulator]:
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    yield emulator
    emulator.unplug()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def uplink_status(daemon: Daemon, name: str) -> dict[str, Any]:
    return next((u for u in daemon.status().get("uplinks", []) if u["name"] == name), {})


def test_readings_arrive_as_entities_with_decoded_values_units_and_times(tmp_path, emulator, context_broker, daemons):
    daemon = Daemon(write_config(tmp_path, emulator.link, ngsi_v2(context_broker.url)))
    daemons.append(daemon.start())
    daemon.wait_receiving()
    sender = Sender(emulator)
    before = time.time()
    sender.burst(30)
    assert context_broker.wait_for(lambda: arrived(context_broker, sender), 30), daemon.log_tail()
    after = time.time()

    assert context_broker.invalid == []
    assert Counter(levels(context_broker)) == Counter(river_levels(sender))  # each exactly once
    for entity in accepted(context_broker, "WaterObserved"):
        observed = entity["dateObserved"]["value"]
        assert before - 1 <= datetime.fromisoformat(observed).timestamp() <= after + 1
        assert entity["waterLevel"]["metadata"] == {"unitCode": {"type": "Text", "value": "MTR"},
                                                "TimeInstant": {"type": "DateTime", "value": observed}}
        assert entity["water_temperature"]["value"] == 12.5
        assert entity["water_temperature"]["metadata"]["unitCode"]["value"] == "CEL"
        assert entity["battery"]["value"] == pytest.approx(3.6)
        assert entity["battery"]["metadata"]["unitCode"]["value"] == "VLT"
        assert entity["location"]["value"] == {"type": "Point", "coordinates": [LOCATION[1], LOCATION[0]]}
    states = [e["deviceState"]["value"] for e in trap_states(context_broker)]
    assert Counter(states) == Counter(v["state"] for rid, v in sender.sent.items() if rid.startswith("trap-"))

    # What the broker holds now is each device's latest reading.
    last = {d: v for rid, v in sender.sent.items() for d in [rid.split(":")[0]]}
    for device in ("river-01", "river-02"):
        stored = context_broker.entity(f"urn:ngsi-ld:WaterObserved:{device}", service="town", service_path="/rivers")
        assert stored is not None and round(stored["waterLevel"]["value"] * 1000) == last[device]["level"]
        gauge = context_broker.entity(stored["refDevice"]["value"], service="town", service_path="/rivers")
        assert gauge is not None and gauge["type"] == "Device"  # the reference resolves
    trap = context_broker.entity("urn:ngsi-ld:Device:trap-01", service="town", service_path="/rivers")
    assert trap is not None and trap["deviceState"]["value"] == last["trap-01"]["state"]
    assert trap["rssi"]["value"] == -80.0
    wait_until(lambda: uplink_status(daemon, "town").get("state") == "up", 10, "uplink up in status")


def test_broker_answering_503_for_a_while_loses_nothing(tmp_path, emulator, context_broker, daemons):
    context_broker.fail_next(503, count=3, retry_after=1)
    daemon = Daemon(write_config(tmp_path, emulator.link, ngsi_v2(context_broker.url)))
    daemons.append(daemon.start())
    daemon.wait_receiving()
    sender = Sender(emulator)
    sender.burst(30)
    assert context_broker.wait_for(lambda: arrived(context_broker, sender), 60), daemon.log_tail()
    assert [r.status for r in context_broker.requests][:3] == [503, 503, 503]
    assert Counter(levels(context_broker)) == Counter(river_levels(sender))
    assert context_broker.invalid == []
    wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 20, "outbox drained")


def test_two_uplinks_one_down_the_other_keeps_delivering_and_the_down_one_catches_up(
        tmp_path, emulator, mosquitto, daemons):
    broker = ContextBroker().start()  # to learn a free port, then down while the gateway runs
    broker.stop()
    mqtt = (f'\n[[uplinks]]\ntype = "mqtt"\nname = "maintainer"\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
            f'topic = "test/{{gateway}}/batches"\n')
    daemon = Daemon(write_config(tmp_path, emulator.link, mqtt + ngsi_v2(broker.url)))
    try:
        with Subscriber("127.0.0.1", mosquitto.port, "test/gw-test/batches") as sub:
            daemons.append(daemon.start())
            daemon.wait_receiving()
            sender = Sender(emulator)
            ids = set(sender.burst(30))

            def mqtt_ids() -> Counter:
                return Counter(i["id"] for b in sub.json_messages() for i in b["items"] if i["type"] == "reading")

            sub.wait_for(lambda _: ids <= set(mqtt_ids()), 30, "every reading over MQTT")
            wait_until(lambda: uplink_status(daemon, "town").get("state") == "down", 20, "town uplink down")
            assert uplink_status(daemon, "town")["pending"] >= len(ids)
            assert uplink_status(daemon, "maintainer")["state"] == "up"

            broker.start()  # same port: the town's broker is back
            assert broker.wait_for(lambda: arrived(broker, sender), 60), daemon.log_tail()
            assert Counter(levels(broker)) == Counter(river_levels(sender))  # no duplicates
            assert broker.invalid == []
            assert all(n == 1 for n in mqtt_ids().values())
            wait_until(lambda: uplink_status(daemon, "town").get("pending") == 0, 20, "town caught up")
    finally:
        broker.stop()


def test_an_entity_the_broker_refuses_is_parked_with_its_error_and_the_rest_arrives(
        tmp_path, emulator, context_broker, daemons):
    context_broker.reject_entity("urn:ngsi-ld:Device:trap-01", 400, "trap-01 is not provisioned here")
    daemon = Daemon(write_config(tmp_path, emulator.link, ngsi_v2(context_broker.url)))
    daemons.append(daemon.start())
    daemon.wait_receiving()
    sender = Sender(emulator)
    sender.burst(30)
    trap_ids = {rid for rid in sender.sent if rid.startswith("trap-")}

    def parked() -> dict[str, str]:
        return {p["item_id"]: p["error"] for p in daemon.status().get("parked", {}).get("recent", [])
                if p["item_id"] in trap_ids}

    assert context_broker.wait_for(lambda: Counter(levels(context_broker)) >= Counter(river_levels(sender)), 60)
    wait_until(lambda: len(parked()) == min(len(trap_ids), 10), 60, "the trap readings parked")
    assert all("HTTP 400" in e and "trap-01 is not provisioned here" in e for e in parked().values())
    assert daemon.status()["parked"]["by_uplink"] == {"town": len(trap_ids)}
    assert Counter(levels(context_broker)) == Counter(river_levels(sender))
    assert trap_states(context_broker) == [] and context_broker.invalid == []


# -- IoT Agent over HTTP: the acknowledgement comes after the context broker stored the measure -------

def iota_http(url: str, kind: str = "json") -> str:
    return (f'\n[[uplinks]]\ntype = "iota-{kind}-http"\nname = "town"\nurl = "{url}"\napikey = "k3y"\n'
            f'batch = {{ max_items = 10 }}\n')


def agent_levels(agent: IotAgent, ul: bool) -> list[int]:
    """River levels (mm) in the requests the agent acknowledged (it answers 200 only once the broker
    has them); they travel as WaterObserved's waterLevel in metres, as on the NGSI paths."""
    out = []
    for r in agent.requests:
        if r.status != 200 or not r.query["i"].startswith("river-"):
            continue
        if ul:
            out += [round(float(f.split("|")[f.split("|").index("waterLevel") + 1]) * 1000)
                    for f in r.body.split("#")]
        else:
            assert "level" not in r.body
            out.append(round(r.body["waterLevel"] * 1000))
    return out


def agent_alarms(agent: IotAgent, ul: bool) -> list[str]:
    if ul:
        return [g.split("|")[g.split("|").index("alarm") + 1] for r in agent.requests if r.status == 200
                for g in r.body.split("#") if "|alarm|" in g]
    return [r.body["alarm"] for r in agent.requests if r.status == 200 and "alarm" in r.body]


@pytest.mark.parametrize("kind", ["json", "ul"])
@pytest.mark.parametrize("away", ["agent", "broker"])
def test_iot_agent_http_nothing_is_delivered_while_the_platform_is_away(
        tmp_path, emulator, context_broker, daemons, kind, away):
    agent = IotAgent(context_broker.url).start()
    agent.group("k3y", "Thing", service="town", subservice="/rivers")
    try:
        daemon = Daemon(write_config(tmp_path, emulator.link, iota_http(agent.url, kind)))
        daemons.append(daemon.start())
        daemon.wait_receiving()
        sender = Sender(emulator)
        before = sender.quiet(9)  # no alarms: rivers below any stage, traps armed
        assert agent.wait_for(lambda: Counter(agent_levels(agent, kind == "ul"))
                              >= Counter(river_levels(sender)), 30), daemon.log_tail()
        wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 20, "first readings delivered")
        delivered = daemon.status()["outbox"]["delivered"]
        assert delivered >= len(before)

        (agent if away == "agent" else context_broker).stop()
        during = sender.burst(12)  # every other trap frame is "sprung": trap_sprung alarms among them
        daemon.wait_committed(delivered + len(during) + 1)
        wait_until(lambda: uplink_status(daemon, "town").get("state") == "down", 20, "uplink down")
        if away == "broker":  # a while of retries, each answered 500 by the agent once its update failed
            wait_until(lambda: sum(r.status == 500 for r in agent.requests) >= 2, 30, "retries")
        else:
            assert "cannot connect" in uplink_status(daemon, "town")["detail"]
        # ...and still nothing of it is marked delivered.
        status = daemon.status()
        assert status["outbox"]["delivered"] == delivered
        assert uplink_status(daemon, "town")["pending"] >= len(during)

        (agent if away == "agent" else context_broker).start()  # the same port
        assert agent.wait_for(lambda: Counter(agent_levels(agent, kind == "ul"))
                              >= Counter(river_levels(sender)), 60), daemon.log_tail()
        wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 30, "everything delivered")
        assert "trap_sprung" in agent_alarms(agent, kind == "ul")  # the alarm raised while away survived
        trap = context_broker.entity("Thing:trap-01", service="town", service_path="/rivers")
        assert trap is not None and "alarm" in trap
        assert agent.invalid == [] and context_broker.invalid == []
    finally:
        agent.stop()


def test_a_silent_alarm_about_a_sensor_never_heard_names_a_device_entity_the_broker_holds(
        tmp_path, emulator, context_broker, daemons):
    # The broker refuses a Relationship to an entity it does not hold (tests/context_broker.py), and
    # river-99 never reports: no reading ever makes its Device entity.
    path = write_config(tmp_path, emulator.link, ngsi_v2(context_broker.url))
    path.write_text(path.read_text().replace(
        "\n[[uplinks]]",
        f'\n[[devices]]\nid = "river-99"\naddress = 99\ndriver = "water_level"\ninterval = "1s"\n'
        f'location = [{LOCATION[0]}, {LOCATION[1]}]\n\n[[rules]]\ntype = "device_health"\nsilent_after = 2\n'
        "\n[[uplinks]]", 1))
    daemon = Daemon(path)
    daemons.append(daemon.start())

    def alert() -> dict[str, Any] | None:
        return next((e for e in context_broker.entities("town", "/rivers")
                     if e["type"] == "Alert" and "river-99" in e["alertSource"]["value"]), None)

    assert context_broker.wait_for(lambda: alert() is not None, 60), daemon.log_tail()
    found = alert()
    assert found is not None and found["alertSource"]["type"] == "Relationship"
    device = context_broker.entity(found["alertSource"]["value"], service="town", service_path="/rivers")
    assert device is not None and device["type"] == "Device"  # the reference resolves
    assert device["controlledProperty"]["value"] == ["waterLevel", "temperature"]
    assert context_broker.invalid == []
