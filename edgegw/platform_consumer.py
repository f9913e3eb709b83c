"""A reference platform consumer: what a town runs beside its broker to take edgegw batches in.

Coverage overlaps, so one frame reaches the platform through every gateway that heard it, and a
batch whose PUBACK was lost is sent again: delivery is at least once. Every item carries an id
derived from what the device sent (never from the gateway), so the platform keeps the first copy of
each id and drops the rest (:class:`Deduplicator`), as a LoRaWAN network server does. The window is
what a consumer keeps in memory; the platform's store closes the rest with an upsert keyed by the
item id (see the README's "A whole town" section).

:class:`PlatformConsumer` subscribes at QoS 1 in a persistent session (``clean_session=False``), so
the broker queues batches while the consumer is away; it takes the nodes of a clustered broker and
moves to the next when its node dies, as the gateway's uplink does. With ``share`` set it subscribes
as ``$share/<share>/<topic>``: consumers of one share split the batches between them (Mosquitto 1.6
and later, EMQX, HiveMQ; RabbitMQ 3.10's MQTT plugin has no shared subscriptions, so there each
consumer takes every batch and de-duplication makes a second one harmless but not useful).

Run it: ``python -m edgegw.platform_consumer --broker 127.0.0.1:1883 --topic 'town/+/batches'``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edgegw.imports import import_without

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
else:
    mqtt = import_without("paho.mqtt.client", "dns")


class Deduplicator:
    """Item ids seen in the last ``window`` seconds; :meth:`first` is True for the first copy only."""

    def __init__(self, window: float = 3600.0):
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()  # id -> when first seen, oldest first

    def first(self, item_id: str, now: float) -> bool:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window:
                break
            del self._seen[oldest]
        if item_id in self._seen:
            return False
        self._seen[item_id] = now
        return True


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Tally:
    """What the platform took in: readings once each, duplicates dropped, each gateway's last health."""

    def __init__(self, window: float = 3600.0):
        self.dedup = Deduplicator(window)
        self.lock = threading.Lock()
        self.readings: dict[str, float] = {}  # unique reading id -> when it first reached the platform
        self.duplicates = 0
        self.alarms = 0
        self.by_gateway: Counter[str] = Counter()  # reading copies received from each gateway
        self.health: dict[str, dict[str, Any]] = {}  # gateway -> its latest health item
        self.health_reports: Counter[str] = Counter()  # gateway -> health items received
        self.batches = 0
        self.malformed = 0  # payloads that were not edgegw batches

    def take(self, payload: bytes, now: float | None = None) -> None:
        """Take one batch (edgegw.batch/1 JSON); one that is not such a batch is counted, not raised:
        a consumer that died on it would leave the rest of the town's batches waiting."""
        now = time.time() if now is None else now
        try:
            batch = json.loads(payload)
            items = [i for i in batch["items"] if isinstance(i["id"], str) and i["type"]]
        except (ValueError, KeyError, TypeError):
            with self.lock:
                self.malformed += 1
            return
        with self.lock:
            self.batches += 1
            for item in items:
                kind = item["type"]
                if kind == "reading":
                    self.by_gateway[item["radio"]["gateway"]] += 1
                if not self.dedup.first(item["id"], now):
                    self.duplicates += 1
                elif kind == "reading":
                    self.readings[item["id"]] = now
                elif kind == "health":
                    self.health_reports[item["gateway"]] += 1
                    last = self.health.get(item["gateway"])
                    if last is None or _epoch(item["observed_at"]) >= _epoch(last["observed_at"]):
                        self.health[item["gateway"]] = item
                else:
                    self.alarms += 1

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {"batches": self.batches, "malformed": self.malformed, "unique_readings": len(self.readings),
                    "duplicates": self.duplicates,
                    "alarms": self.alarms, "gateways_reporting_health": len(self.health)}


class PlatformConsumer:
    """Subscribes to ``topic`` on one of ``brokers`` ("host:port") and hands every batch to ``on_batch``."""

    def __init__(self, brokers: list[str], topic: str, on_batch: Callable[[bytes], None],
                 client_id: str = "edgegw-platform", share: str | None = None):
        self.nodes = [(h, int(p)) for h, _, p in (b.rpartition(":") for b in brokers)]
        self.topic = f"$share/{share}/{topic}" if share else topic
        self.on_batch = on_batch
        self.client_id = client_id
        self.subscribed = threading.Event()
        self.node: str | None = None  # the node in use
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="platform-consumer", daemon=True)

    def start(self) -> PlatformConsumer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        node = 0
        while not self._stop.is_set():
            host, port = self.nodes[node]
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False)
            client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else c.subscribe(self.topic, qos=1)
            client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
            client.on_message = lambda c, u, msg: self.on_batch(msg.payload)
            try:
                client.connect(host, port, keepalive=10)
                self.node = f"{host}:{port}"
                while not self._stop.is_set() and client.loop(timeout=0.2) == mqtt.MQTT_ERR_SUCCESS:
                    pass
            except OSError:
                pass
            self.subscribed.clear()
            try:
                client.disconnect()
            except Exception:  # the socket may already be gone
                pass
            node = (node + 1) % len(self.nodes)  # this node failed or dropped us: the next one
            self._stop.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description="Take edgegw batches in, de-duplicate by item id, count.")
    parser.add_argument("--broker", action="append", required=True, help="host:port; repeat for each cluster node")
    parser.add_argument("--topic", default="edgegw/+/batches")
    parser.add_argument("--share", help="shared-subscription group: consumers of one group split the load")
    parser.add_argument("--client-id", default="edgegw-platform")
    parser.add_argument("--window", type=float, default=3600.0, help="seconds an id is remembered")
    args = parser.parse_args()
    tally = Tally(args.window)
    consumer = PlatformConsumer(args.broker, args.topic, tally.take, args.client_id, args.share).start()
    try:
        while True:
            time.sleep(10)
            print(json.dumps(tally.summary()), flush=True)
    except KeyboardInterrupt:
        consumer.stop()


if __name__ == "__main__":
    main()
