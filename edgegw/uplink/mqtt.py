"""Uplinks over MQTT (paho-mqtt), QoS 1, a batch delivered when the PUBACKs of all its messages are in.

:class:`MqttPublisher` holds the connection handling; a subclass only says which messages a batch
becomes (:meth:`MqttPublisher.messages`): :class:`MqttBatchUplink` publishes edgegw's own
versioned batch as one message, :class:`edgegw.uplink.iota.IotAgentMqttUplink` one message per device.

Each connection attempt uses a fresh paho client: when a connection drops, batches that were not
acknowledged are reported failed and the forwarder sends them again; a fresh client cannot also
replay them from its own queue, so a reconnect costs at most the in-flight window in duplicates.
Reconnects back off exponentially with jitter.

A clustered broker is configured as several nodes (``brokers``): when the connection to one fails
or drops, the next is tried at once, and the backoff applies only when every node has failed in a
row. Delivery resumes on the new node with the batches that were not acknowledged.

Every message must be acknowledged within the uplink's ``deadline``. A broker that answers pings
but never sends PUBACK keeps the connection alive for paho's keepalive, and would hold the batches
in flight forever: past the deadline the connection is dropped (the uplink reports it down, with
why), its batches fail and the forwarder sends them again over the next connection.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from edgegw.backoff import Backoff
from edgegw.config import MqttConnection, MqttUplink
from edgegw.errors import PermanentUplinkError, TransientUplinkError, UplinkError
from edgegw.imports import import_without
from edgegw.items import Batch
from edgegw.uplink import OnResult, OnState

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
else:
    mqtt = import_without("paho.mqtt.client", "dns")

log = structlog.get_logger("edgegw.uplink.mqtt")

# s: how long paho's loop waits for the socket when nothing arrives: how soon a deadline is seen.
# A publish from the forwarder wakes it at once (paho writes to its socket pair); at 0.2 s this
# loop was half of an idle gateway's wake-ups.
LOOP_WAKE = 1.0
# s: the same while connected with nothing awaiting a PUBACK (no deadline to see), at most a quarter
# of the keepalive, whose pings paho sends from this loop. A stop wakes it (see stop).
LOOP_REST = 5.0


@dataclass
class _Pending:
    """One batch on its way: acknowledged when every message is published and PUBACKed."""

    batch_id: str
    unacked: int  # messages published (or still to publish) whose PUBACK has not come
    sent_at: float  # monotonic: when the batch was handed to paho; its PUBACKs are due a deadline later
    published: bool = False  # every message of the batch has been handed to paho
    done: bool = False  # on_result was called (exactly once per batch)


class MqttPublisher:
    """A connection to one broker that publishes each batch as one or more QoS 1 messages."""

    def __init__(self, config: MqttConnection, name: str, client_id: str, describe: str):
        self.config = config
        self.name = name
        self.client_id = client_id
        self.describe = describe  # where batches go, for the "up" state and the log
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._refused: str | None = None  # set by on_connect when the broker says no
        self._inflight: dict[int, _Pending] = {}  # mid -> its batch
        self._early: set[int] = set()  # PUBACKs that overtook the bookkeeping of their publish()
        self._generation = 0  # bumped when a connection ends: its mids will never be acknowledged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._where = f"{config.host}:{config.port}"  # the broker node connected or being tried

    def messages(self, batch: Batch) -> list[tuple[str, bytes]]:
        """The ``(topic, payload)`` messages of a batch; ValueError if the batch cannot be sent at all."""
        raise NotImplementedError

    def start(self, on_result: OnResult, on_state: OnState) -> None:
        self.on_result, self.on_state = on_result, on_state
        self._thread = threading.Thread(target=self._run, name=f"uplink:{self.name}", daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        return self._connected

    def send(self, batch: Batch) -> None:
        batch_id = batch.batch_id
        with self._lock:
            client, generation = self._client, self._generation
        if client is None or not self._connected:
            self.on_result(batch_id, TransientUplinkError("not connected"))
            return
        try:
            messages = self.messages(batch)
        except ValueError as exc:  # an item the format cannot carry: resending cannot help
            self.on_result(batch_id, PermanentUplinkError(str(exc)))
            return
        pending = _Pending(batch_id, len(messages), time.monotonic())
        error: UplinkError | None = None
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1)
            if info.rc == mqtt.MQTT_ERR_PAYLOAD_SIZE:
                error = PermanentUplinkError(f"payload of {len(payload)} bytes too large for MQTT")
            elif info.rc != mqtt.MQTT_ERR_SUCCESS:
                error = TransientUplinkError(mqtt.error_string(info.rc))
            if error is not None:
                break
            with self._lock:
                if self._generation != generation:  # the connection ended while we published
                    error = TransientUplinkError("connection lost")
                    break
                if info.mid in self._early:
                    self._early.discard(info.mid)
                    pending.unacked -= 1
                else:
                    self._inflight[info.mid] = pending
        with self._lock:
            # Messages of a failed batch stay in _inflight: their late PUBACKs are then ignored.
            pending.published = True
            report = not pending.done and (error is not None or pending.unacked == 0)
            pending.done = pending.done or report
        if report:
            self.on_result(batch_id, error)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None:  # wakes paho's loop from its rest at once (a DISCONNECT is queued)
            try:
                client.disconnect()
            except Exception:  # the connection is going anyway: the loop sees the stop within LOOP_REST
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- connection -----------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        client.max_inflight_messages_set(max(20, c.max_inflight))
        if c.username is not None:
            client.username_pw_set(c.username, c.secret())
        if c.tls:
            client.tls_set(ca_certs=str(c.ca_file) if c.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        return client

    def _run(self) -> None:
        backoff = Backoff(0.5, 60.0)
        nodes = self.config.addresses()
        node = 0  # the node to try next; the uplink stays on one that answers
        tried = 0  # nodes tried in a row without a connection that worked
        while not self._stop.is_set():
            host, port = nodes[node]
            self._where = where = f"{host}:{port}"
            client = None
            self._refused = None
            self.on_state("connecting", where)
            try:
                client = self._new_client()  # reads password_file: a missing file is an outage, not a crash
                client.connect(host, port, self.config.keepalive)
                self._client = client
                connecting_since = time.monotonic()
                reason: str | None = None
                rest = min(LOOP_REST, self.config.keepalive / 4)
                while reason is None and not self._stop.is_set():
                    wait = rest if self._connected and not self._inflight else LOOP_WAKE
                    lost = client.loop(timeout=wait) != mqtt.MQTT_ERR_SUCCESS
                    reason = self._refused or ("connection lost" if lost else self._overdue(connecting_since))
                reason = reason or "stopped"
            except (OSError, ssl.SSLError) as exc:
                reason = str(exc) or type(exc).__name__
            was_up = self._connected
            self._connected = False
            self._client = None
            # Batches awaiting PUBACK fail here and the forwarder sends them again, over the next node
            # when this one died: a cluster may have taken a message whose PUBACK was lost, so the
            # platform can get it twice, with the same item ids.
            self._fail_inflight(reason)
            try:
                if client is not None:
                    client.disconnect()
            except Exception:  # the socket may already be gone; nothing to clean up then
                pass
            if self._stop.is_set():
                break
            if was_up:
                backoff.reset()  # a connection that worked starts the backoff afresh
                tried = 0
            tried += 1
            node = (node + 1) % len(nodes)
            # Another node is tried at once; the backoff applies once every node has failed in a row.
            delay = 0.0 if tried < len(nodes) else backoff.next()
            if tried >= len(nodes):
                tried = 0
            self.on_state("down", f"{where}: {reason}")
            log.warning("mqtt uplink down", uplink=self.name, broker=where, reason=reason, retry_in=round(delay, 2),
                        next_broker="{}:{}".format(*nodes[node]))
            self._stop.wait(delay)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = f"broker refused the connection: {reason_code}"
            return
        self._connected = True
        self.on_state("up", f"{self._where} {self.describe}")
        log.info("mqtt uplink up", uplink=self.name, broker=self._where, to=self.describe)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Runs inside paho's lock: keep it short and never take a lock held across publish().
        with self._lock:
            pending = self._inflight.pop(mid, None)
            if pending is None:
                self._early.add(mid)
                return
            pending.unacked -= 1
            report = pending.published and pending.unacked == 0 and not pending.done
            pending.done = pending.done or report
        if report:
            self.on_result(pending.batch_id, None)

    def _overdue(self, connecting_since: float) -> str | None:
        """Why to drop the connection, when the oldest message awaiting its PUBACK is past the deadline,
        or the broker has not answered CONNECT within it."""
        # paho itself waits for CONNACK only as long as the keepalive (a minute or more), and nothing
        # is sent meanwhile: a peer that takes the connection and says nothing would hold the uplink
        # "connecting" that long each time.
        if not self._connected and time.monotonic() - connecting_since >= self.config.deadline:
            return f"no CONNACK within the {self.config.deadline:g} s deadline: the broker takes the connection but does not answer"
        # The oldest is the first: _inflight keeps the order of publish(), and an ack pops its entry.
        with self._lock:
            oldest = next(iter(self._inflight.values()), None)
        if oldest is None or time.monotonic() - oldest.sent_at < self.config.deadline:
            return None
        return f"no PUBACK within the {self.config.deadline:g} s deadline: the broker answers but acknowledges nothing"

    def _fail_inflight(self, reason: str) -> None:
        with self._lock:
            lost = {id(p): p for p in self._inflight.values() if not p.done}
            for pending in lost.values():
                pending.done = True
            self._inflight, self._early = {}, set()
            self._generation += 1
        for pending in lost.values():
            self.on_result(pending.batch_id, TransientUplinkError(reason))


class MqttBatchUplink(MqttPublisher):
    """edgegw's own versioned JSON batch, one message per batch on the configured topic."""

    def __init__(self, config: MqttUplink, gateway_id: str):
        self.topic = config.topic.replace("{gateway}", gateway_id)
        super().__init__(config, config.name, config.client_id or f"edgegw-{gateway_id}", f"topic {self.topic}")

    def messages(self, batch: Batch) -> list[tuple[str, bytes]]:
        return [(self.topic, batch.json())]
