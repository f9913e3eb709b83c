"""The MQTT uplink over the nodes of a clustered broker: two real Mosquitto instances stand for two
nodes; one is killed by PID, and delivery resumes on the other with nothing lost."""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest

from edgegw.config import MqttUplink
from edgegw.radio.emulator import RylrEmulator
from tests.broker import Mosquitto, Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config

TOPIC = "test/gw-test/batches"


def test_one_host_and_a_list_of_nodes_are_both_valid():
    one = MqttUplink.model_validate({"type": "mqtt", "host": "broker.example"})
    assert one.addresses() == [("broker.example", 1883)]
    cluster = MqttUplink.model_validate({"type": "mqtt", "brokers": ["mqtt-1.town:1884", "mqtt-2.town"]})
    assert cluster.addresses() == [("mqtt-1.town", 1884), ("mqtt-2.town", 1883)]
    assert (cluster.host, cluster.port) == ("mqtt-1.town", 1884)  # what status shows as "the broker"


@pytest.mark.parametrize(("entry", "problem"), [
    ({"host": "a", "brokers": ["b:1883"]}, "not both"),
    ({"brokers": ["b:99999"]}, 'expected "host:port"'),
    ({"brokers": [":1883"]}, 'expected "host:port"'),
    ({"brokers": []}, "at least 1 item"),
])
def test_a_wrong_list_of_nodes_says_what_is_expected(entry, problem):
    with pytest.raises(ValueError, match=problem):
        MqttUplink.model_validate({"type": "mqtt", **entry})


def items(subs: list[Subscriber]) -> Counter[str]:
    return Counter(i["id"] for sub in subs for batch in sub.json_messages() for i in batch["items"]
                   if i["type"] == "reading")


@pytest.fixture
def two_nodes(tmp_path):
    nodes = [Mosquitto(tmp_path / f"node{n}").start() for n in (1, 2)]
    yield nodes
    for node in nodes:
        node.stop()


def cluster_daemon(tmp_path, nodes: list[Mosquitto], settings: str = "") -> tuple[RylrEmulator, Daemon]:
    """A plugged module emulator and a daemon (not started) whose uplink names both ``nodes``."""
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    brokers = ", ".join(f'"127.0.0.1:{node.port}"' for node in nodes)
    extra = (f'\n[[uplinks]]\ntype = "mqtt"\nname = "cluster"\ntopic = "test/{{gateway}}/batches"\n{settings}'
             f'brokers = [{brokers}]\nbatch = {{ max_items = 20 }}\n')
    return emulator, Daemon(write_config(tmp_path, emulator.link, None, extra=extra))


def test_a_node_killed_mid_run_loses_nothing_and_delivery_resumes_on_the_other(tmp_path, two_nodes):
    first, second = two_nodes
    emulator, daemon = cluster_daemon(tmp_path, two_nodes)
    subs = [Subscriber("127.0.0.1", node.port, TOPIC) for node in two_nodes]
    try:
        daemon.start().wait_receiving()
        daemon.wait_uplinks_up()
        sender = Sender(emulator)
        before = set(sender.burst(60))
        wait_until(lambda: before <= set(items([subs[0]])), 30, "the first burst at the first node")
        assert not items([subs[1]])  # the uplink stays on the node that answers

        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)  # the node dies without a word to its clients
        after = set(sender.burst(60))  # sent while the uplink notices and moves on
        wait_until(lambda: after <= set(items([subs[1]])), 30, "the second burst at the other node")

        received = items(subs)
        assert set(received) == before | after  # nothing lost
        assert all(n == 1 for n in received.values())  # and here nothing twice: the node died idle
        up = [u for u in daemon.status()["uplinks"] if u["name"] == "cluster"]
        assert up[0]["state"] == "up" and str(second.port) in up[0]["detail"]
    finally:
        for sub in subs:
            sub.close()
        daemon.stop()
        emulator.unplug()


def test_batches_in_flight_when_a_node_hangs_go_again_over_the_other(tmp_path, two_nodes):
    first, second = two_nodes
    emulator, daemon = cluster_daemon(tmp_path, two_nodes, settings='deadline = "2s"\n')
    sub = Subscriber("127.0.0.1", second.port, TOPIC)
    assert first.pid is not None
    try:
        daemon.start().wait_receiving()
        daemon.wait_uplinks_up()
        os.kill(first.pid, signal.SIGSTOP)  # the node takes bytes but acknowledges nothing
        sender = Sender(emulator)
        sent = set(sender.burst(60))
        daemon.wait_committed(60)
        wait_until(lambda: sent <= set(items([sub])), 30, "every reading at the other node")
        events = daemon.log_events()
        assert any(e.get("event") == "mqtt uplink down" and "no PUBACK" in e.get("reason", "") for e in events)
        # Their PUBACKs come after the subscriber saw them, and an acknowledgement may wait ACK_HOLD
        # for the next commit: wait for it, not for a race with the status read.
        wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 30, "every item acknowledged over the other node")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        sub.close()
        daemon.stop()
        emulator.unplug()
