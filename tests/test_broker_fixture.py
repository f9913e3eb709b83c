"""Tests for the Mosquitto / Subscriber test helpers in tests/broker.py."""

from __future__ import annotations

import os
import socket

import paho.mqtt.client as mqtt
import pytest

from tests import broker as broker_mod
from tests.broker import Mosquitto, Subscriber, free_port, publish


def _publish_with_own_client(host: str, port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="test-broker-fixture-publisher",
    )
    client.connect(host, port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_broker_listens_on_loopback_only(mosquitto):
    assert mosquitto.running
    assert mosquitto.host == "127.0.0.1"
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    conf = mosquitto.conf_path.read_text()
    assert f"listener {mosquitto.port} 127.0.0.1" in conf
    assert "allow_anonymous true" in conf
    assert "persistence false" in conf


def test_qos1_message_reaches_subscriber(mosquitto):
    with Subscriber(mosquitto.host, mosquitto.port, "edgegw/test/#") as sub:
        _publish_with_own_client(mosquitto.host, mosquitto.port, "edgegw/test/a", b'{"n": 1}')
        publish(mosquitto.host, mosquitto.port, "other/topic", b"ignored")
        publish(mosquitto.host, mosquitto.port, "edgegw/test/b", {"n": 2})

        msgs = sub.wait_for_count(2, timeout=10)
        assert msgs == [("edgegw/test/a", b'{"n": 1}'), ("edgegw/test/b", b'{"n": 2}')]
        assert sub.json_messages() == [{"n": 1}, {"n": 2}]
        assert sub.json_messages("edgegw/test/b") == [{"n": 2}]


def test_wait_for_timeout_raises_with_summary(mosquitto):
    with Subscriber(mosquitto.host, mosquitto.port, "t/#") as sub:
        publish(mosquitto.host, mosquitto.port, "t/x", b"hello")
        sub.wait_for_count(1, timeout=10)
        with pytest.raises(AssertionError) as excinfo:
            sub.wait_for(lambda msgs: len(msgs) >= 5, timeout=0.3, description="five messages")
        text = str(excinfo.value)
        assert "five messages" in text
        assert "1 message(s) received" in text
        assert "t/x" in text


def test_json_messages_rejects_non_json(mosquitto):
    with Subscriber(mosquitto.host, mosquitto.port, "j/#") as sub:
        publish(mosquitto.host, mosquitto.port, "j/ok", {"a": 1})
        publish(mosquitto.host, mosquitto.port, "j/bad", b"offline")
        sub.wait_for_count(2, timeout=10)
        with pytest.raises(AssertionError, match="j/bad"):
            sub.json_messages()
        assert sub.json_messages(skip_invalid=True) == [{"a": 1}]


def test_restart_on_same_port_and_subscriber_reconnects(mosquitto):
    port = mosquitto.port
    with Subscriber(mosquitto.host, port, "edgegw/#") as sub:
        publish(mosquitto.host, port, "edgegw/before", b"1")
        sub.wait_for_count(1, timeout=10)
        old_pid = mosquitto.pid
        generation = sub.subscribe_generation

        mosquitto.stop()
        assert not mosquitto.running
        sub._wait(lambda: not sub._connected, 10, "disconnect to be noticed")

        mosquitto.restart()
        assert mosquitto.port == port
        assert mosquitto.pid != old_pid
        assert mosquitto.starts == 2

        # Without persistence the broker forgot the session: wait for the re-subscription.
        sub.wait_subscribed(timeout=15, newer_than=generation)
        publish(mosquitto.host, port, "edgegw/after", b"2")
        sub.wait_for(lambda msgs: ("edgegw/after", b"2") in msgs, timeout=10)
        assert sub.disconnects >= 1
        assert sub.connects >= 2


def test_queued_qos1_delivered_when_subscriber_comes_back(mosquitto):
    client_id = "test-broker-fixture-durable"
    first = Subscriber(mosquitto.host, mosquitto.port, "q/#", client_id=client_id)
    first.close()

    for i in range(3):
        publish(mosquitto.host, mosquitto.port, f"q/{i}", str(i).encode())

    with Subscriber(mosquitto.host, mosquitto.port, "q/#", client_id=client_id) as second:
        msgs = second.wait_for_count(3, timeout=10)
        assert [p for _, p in msgs] == [b"0", b"1", b"2"]


def test_persistence_keeps_subscription_across_restart(tmp_path):
    with Mosquitto(tmp_path / "broker", persistence=True) as broker:
        client_id = "test-broker-fixture-persistent"
        Subscriber(broker.host, broker.port, "p/#", client_id=client_id).close()
        broker.restart()
        publish(broker.host, broker.port, "p/queued", b"while away")
        with Subscriber(broker.host, broker.port, "p/#", client_id=client_id) as sub:
            sub.wait_for(lambda msgs: ("p/queued", b"while away") in msgs, timeout=10)


def test_stop_leaves_no_process_and_is_idempotent(tmp_path):
    broker = Mosquitto(tmp_path / "broker")
    with broker:
        proc = broker.proc
        assert proc is not None and proc.poll() is None
        assert broker.start() is broker  # no-op while running
        assert broker.proc is proc
    assert proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    broker.stop()
    broker.stop()
    assert not broker.running
    # The port is free again.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", broker.port))


def test_missing_binary_raises_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(broker_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker_mod.os, "access", lambda path, mode: False)
    with pytest.raises(RuntimeError, match="mosquitto not installed: apt-get install -y mosquitto"):
        Mosquitto(tmp_path / "broker").start()


def test_startup_failure_reports_log_tail(tmp_path):
    broker = Mosquitto(tmp_path / "broker", extra_config=["this_is_not_an_option 1"])
    with pytest.raises(RuntimeError) as excinfo:
        broker.start()
    assert "this_is_not_an_option" in str(excinfo.value)
    assert not broker.running


def test_port_in_use_is_reported(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(RuntimeError, match="already in use"):
            Mosquitto(tmp_path / "broker", port=port).start()
