"""Batches as versioned JSON to an MQTT broker (paho-mqtt), QoS 1, delivered on PUBACK.

Each connection attempt uses a fresh paho client: when a connection drops, batches that were not
acknowledged are reported failed and the forwarder sends them again; a fresh client cannot also
replay them from its own queue, so a reconnect costs at most the in-flight window in duplicates.
Reconnects back off exponentially with jitter.
"""

from __future__ import annotations

import ssl
import threading

import paho.mqtt.client as mqtt
import structlog

from edgegw.config import MqttUplink
from edgegw.errors import PermanentUplinkError, TransientUplinkError
from edgegw.model import Batch
from edgegw.radio import Backoff
from edgegw.uplink import OnResult, OnState

log = structlog.get_logger("edgegw.uplink.mqtt")


class MqttBatchUplink:
    def __init__(self, config: MqttUplink, gateway_id: str):
        self.config = config
        self.name = config.name
        self.topic = config.topic.replace("{gateway}", gateway_id)
        self.client_id = config.client_id or f"edgegw-{gateway_id}"
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._refused: str | None = None  # set by on_connect when the broker says no
        self._inflight: dict[int, str] = {}  # mid -> batch id
        self._early: set[int] = set()  # PUBACKs that overtook the bookkeeping of their publish()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_result: OnResult, on_state: OnState) -> None:
        self.on_result, self.on_state = on_result, on_state
        self._thread = threading.Thread(target=self._run, name=f"uplink:{self.name}", daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        return self._connected

    def send(self, batch: Batch) -> None:
        batch_id, payload = batch.batch_id, batch.json()
        client = self._client
        if client is None or not self._connected:
            self.on_result(batch_id, TransientUplinkError("not connected"))
            return
        info = client.publish(self.topic, payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_PAYLOAD_SIZE:
            self.on_result(batch_id, PermanentUplinkError(f"payload of {len(payload)} bytes too large for MQTT"))
            return
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.on_result(batch_id, TransientUplinkError(mqtt.error_string(info.rc)))
            return
        with self._lock:
            acked = info.mid in self._early
            if acked:
                self._early.discard(info.mid)
            else:
                self._inflight[info.mid] = batch_id
        if acked:
            self.on_result(batch_id, None)

    def stop(self) -> None:
        self._stop.set()
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
        where = f"{self.config.host}:{self.config.port}"
        while not self._stop.is_set():
            client = None
            self._refused = None
            self.on_state("connecting", where)
            try:
                client = self._new_client()  # reads password_file: a missing file is an outage, not a crash
                client.connect(self.config.host, self.config.port, self.config.keepalive)
                self._client = client
                while not self._stop.is_set() and self._refused is None:
                    if client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                        break
                reason = self._refused or "connection lost"
            except (OSError, ssl.SSLError) as exc:
                reason = str(exc) or type(exc).__name__
            was_up = self._connected
            self._connected = False
            self._client = None
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
            delay = backoff.next()
            self.on_state("down", f"{where}: {reason}")
            log.warning("mqtt uplink down", uplink=self.name, broker=where, reason=reason, retry_in=round(delay, 2))
            self._stop.wait(delay)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = f"broker refused the connection: {reason_code}"
            return
        self._connected = True
        self.on_state("up", f"{self.config.host}:{self.config.port} topic {self.topic}")
        log.info("mqtt uplink up", uplink=self.name, broker=f"{self.config.host}:{self.config.port}", topic=self.topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Runs inside paho's lock: keep it short and never take a lock held across publish().
        with self._lock:
            batch_id = self._inflight.pop(mid, None)
            if batch_id is None:
                self._early.add(mid)
        if batch_id is not None:
            self.on_result(batch_id, None)

    def _fail_inflight(self, reason: str) -> None:
        with self._lock:
            lost, self._inflight, self._early = list(self._inflight.values()), {}, set()
        for batch_id in lost:
            self.on_result(batch_id, TransientUplinkError(reason))
