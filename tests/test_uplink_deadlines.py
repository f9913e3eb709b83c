"""No uplink wedges silently (issue 16, point 4): the real daemon against peers that never finish.

* An MQTT peer that takes the connection, answers CONNECT, SUBSCRIBE and pings, and never sends
  PUBACK. It is faked here because it must be: Mosquitto cannot be made to withhold PUBACK. It
  is then replaced by a real Mosquitto on the same port.
* A context broker (tests/context_broker.py: Orion cannot be installed here) that trickles its
  answer a byte at a time, never pausing long enough to trip a read timeout.

Deadlines in these configs are short so the tests stay quick; the tests wait for behaviour (the
uplink drops, retries, shows stalled, delivers) and never time it.
"""

# ruff: noqa: F811  (the context_broker fixture is imported, then named as a test argument)

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from edgegw.radio.emulator import RylrEmulator
from tests.broker import HOST, Subscriber
from tests.context_broker import context_broker  # noqa: F401
from tests.gateway import Daemon, Sender, wait_until, write_config

TOPIC = "test/gw-test/batches"
GATEWAY_CLIENT = "edgegw-gw-test"


class StuckBroker:
    """A loopback MQTT 3.1.1 peer that acknowledges connections, subscriptions and pings, and
    records every PUBLISH it is sent without ever answering one with PUBACK."""

    def __init__(self, port: int):
        self.port = port
        self._lock = threading.Lock()
        self.connections: list[dict] = []  # {"client_id": str, "published": [(topic, payload)]}
        self._socks: set[socket.socket] = set()
        self._stopped = False
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, port))
        self._listener.listen(8)
        self._accepting = threading.Thread(target=self._accept, name="stuck-broker", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # the listener was shut down: stop()
                return
            with self._lock:
                if self._stopped:  # accepted as stop() ran: the port is about to be the real broker's
                    conn.close()
                    return
                self._socks.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("peer closed")
            data += chunk
        return data

    def _packet(self, conn: socket.socket) -> tuple[int, bytes]:
        first = self._read(conn, 1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read(conn, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read(conn, length)

    def _serve(self, conn: socket.socket) -> None:
        record: dict = {"client_id": None, "published": []}
        try:
            while True:
                first, body = self._packet(conn)
                kind = first >> 4
                if kind == 1:  # CONNECT: protocol name, level, flags, keepalive, then the client id
                    name_len = int.from_bytes(body[0:2], "big")
                    at = 2 + name_len + 4
                    id_len = int.from_bytes(body[at:at + 2], "big")
                    record["client_id"] = body[at + 2:at + 2 + id_len].decode()
                    with self._lock:
                        self.connections.append(record)
                    conn.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                elif kind == 3:  # PUBLISH: recorded, never acknowledged
                    topic_len = int.from_bytes(body[0:2], "big")
                    topic = body[2:2 + topic_len].decode()
                    qos = (first >> 1) & 3
                    payload = body[2 + topic_len + (2 if qos else 0):]
                    with self._lock:
                        record["published"].append((topic, payload))
                elif kind == 8:  # SUBSCRIBE: granted at QoS 1 (the test's subscriber reconnects here too)
                    conn.sendall(b"\x90\x03" + body[0:2] + b"\x01")
                elif kind == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._socks.discard(conn)
            conn.close()

    def gateway_connections(self) -> list[dict]:
        with self._lock:
            return [dict(c, published=list(c["published"])) for c in self.connections
                    if c["client_id"] == GATEWAY_CLIENT]

    def items(self, connection: dict) -> list[dict]:
        return [i for _, payload in connection["published"] for i in json.loads(payload)["items"]]

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            socks = list(self._socks)
        # A close alone would leave the listener alive under the blocked accept(), and it would take
        # the next client that comes back: shutting it down wakes accept() with an error.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._accepting.join(5)
        self._listener.close()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)


def edgegw_status(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "edgegw", "status", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def uplink_state(config: Path, name: str) -> dict:
    return next(u for u in json.loads(edgegw_status(config, "--json"))["uplinks"] if u["name"] == name)


def undelivered(db: Path, ids: set[str]) -> set[str]:
    """Which of ``ids`` are still pending for some uplink."""
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT item_id FROM outbox_items WHERE pending != 0")} & ids


def daemon_log(daemon: Daemon, event: str) -> list[dict]:
    return [e for e in daemon.log_events() if e.get("event") == event]


def test_a_broker_that_never_acks_is_dropped_at_the_deadline_shown_stalled_and_everything_arrives_after(
        tmp_path, persistent_mosquitto):
    broker = persistent_mosquitto
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    uplink = (f'\n[[uplinks]]\ntype = "mqtt"\nname = "broker"\nhost = "127.0.0.1"\nport = {broker.port}\n'
              f'topic = "{TOPIC}"\ndeadline = "2s"\nstalled_after = "4s"\nbatch = {{ max_items = 5 }}\n')
    config = write_config(tmp_path, emulator.link, None, extra=uplink, log_level="info")
    config.write_text('health_every = "1s"\n' + config.read_text())
    daemon = Daemon(config)
    # The platform's subscriber, with a session the real broker keeps while the stuck peer has the port.
    sub = Subscriber(HOST, broker.port, TOPIC, client_id="platform")
    broker.stop()
    stuck = StuckBroker(broker.port)
    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        readings = sender.burst(8)
        readings.append(sender.send("trap-01", {"state": "sprung", "tamper": False, "battery": 3.6}))
        (alarm_id,) = wait_until(lambda: [a["id"] for a in daemon.status().get("open_alarms", [])], 20,
                                 "the trap's alarm")

        # The alarm goes out, is never acknowledged, and goes out again on a new connection: the uplink
        # dropped the first at the deadline, though the peer answered all along.
        def alarm_resent() -> list[dict]:
            conns = stuck.gateway_connections()
            return [c for c in conns if alarm_id in {i["id"] for i in stuck.items(c)}][1:]
        wait_until(alarm_resent, 60, f"the alarm sent on a second connection (log: {daemon.log_tail()})")
        reasons = [e["reason"] for e in daemon_log(daemon, "mqtt uplink down")]
        assert any("no PUBACK within the 2 s deadline" in r for r in reasons), reasons
        assert undelivered(daemon.db, {*readings, alarm_id}) == {*readings, alarm_id}

        # Items wait and nothing is acknowledged: status and the health report say stalled.
        wait_until(lambda: uplink_state(config, "broker")["state"] == "stalled", 30, "status showing stalled")
        line = next(li for li in edgegw_status(config).splitlines() if li.startswith("  broker"))
        assert line.split()[1] == "stalled", line

        def stalled_health() -> list[dict]:
            return [i for c in stuck.gateway_connections() for i in stuck.items(c)
                    if i["type"] == "health" and i.get("uplinks", {}).get("broker") == "stalled"]
        wait_until(stalled_health, 60, "a health report saying stalled, as sent to the broker")

        # The real broker takes the port back: everything waiting arrives, and is marked acknowledged.
        stuck.stop()
        broker.start()
        sub.wait_subscribed(timeout=20)
        expected = {*readings, alarm_id}

        def received() -> set[str]:
            return {i["id"] for b in sub.json_messages() for i in b["items"]}
        wait_until(lambda: expected <= received(), 90, f"every item at the platform (log: {daemon.log_tail()})")
        wait_until(lambda: not undelivered(daemon.db, expected), 30, "every item marked acknowledged")
        alarm = next(i for b in sub.json_messages() for i in b["items"] if i["id"] == alarm_id)
        assert alarm["type"] == "alarm" and alarm["alarm"] == "trap_sprung"
        wait_until(lambda: uplink_state(config, "broker")["state"] == "up", 30, "the uplink no longer stalled")
        assert daemon_log(daemon, "uplink no longer stalled")
    finally:
        stuck.stop()
        sub.close()
        daemon.stop()
        emulator.unplug()


def test_a_trickled_answer_is_given_up_at_the_deadline_and_the_batch_delivered_once_answers_flow(
        tmp_path, context_broker):
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    # A byte every 0.5 s never trips the 2 s read timeout; the 3 s deadline bounds the whole answer.
    uplink = (f'\n[[uplinks]]\ntype = "ngsi-v2"\nname = "town"\nurl = "{context_broker.url}"\n'
              'timeout = "2s"\ndeadline = "3s"\nstalled_after = "5s"\nbatch = { max_items = 20 }\n')
    config = write_config(tmp_path, emulator.link, None, extra=uplink, log_level="info")
    daemon = Daemon(config)
    context_broker.trickle(0.5)
    try:
        daemon.start().wait_receiving()
        readings = Sender(emulator).burst(6)
        daemon.wait_committed(6)

        def updates() -> int:
            return sum(1 for r in context_broker.requests if r.path == "/v2/op/update")
        wait_until(lambda: updates() >= 2, 60, f"the batch sent again (log: {daemon.log_tail()})")
        failures = [e["error"] for e in daemon_log(daemon, "batch not delivered, will retry")]
        assert any("no complete answer within the 3 s deadline" in f for f in failures), failures
        # The broker took the request (it does at once) but its answer never came whole: not delivered.
        assert undelivered(daemon.db, set(readings)) == set(readings)

        wait_until(lambda: uplink_state(config, "town")["state"] == "stalled", 30, "status showing stalled")
        line = next(li for li in edgegw_status(config).splitlines() if li.startswith("  town"))
        assert line.split()[1] == "stalled", line

        context_broker.clear_faults()
        wait_until(lambda: not undelivered(daemon.db, set(readings)), 90,
                   f"every reading delivered once answers flow (log: {daemon.log_tail()})")
        ok = [r for r in context_broker.requests if r.path == "/v2/op/update" and r.status == 204]
        assert ok and context_broker.invalid == []
        wait_until(lambda: uplink_state(config, "town")["state"] == "up", 30, "the uplink no longer stalled")
    finally:
        daemon.stop()
        emulator.unplug()
