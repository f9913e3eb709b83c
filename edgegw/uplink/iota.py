"""Measures to a FIWARE IoT Agent (JSON or Ultralight 2.0) over MQTT.

One message per device and batch, on the configured topic (``/<apikey>/<device>/attrs`` for JSON,
``/ul/<apikey>/<device>/attrs`` for Ultralight by default), at QoS 1: the agent turns each measure
group into one NGSI update, in order. The batch is acknowledged once the broker has acknowledged
every one of its messages; any failure fails the whole batch, which is then sent again whole
(at least once: the agent may see a device's measures twice, with the same TimeInstant).

That acknowledgement is the MQTT broker's, not the agent's: an agent subscribed with its defaults
(clean session, QoS 0) loses what is published while it is down, and a persistent session does not
help: the agents connect with a new random client id each time. The agent's HTTP southbound
(:mod:`edgegw.uplink.iota_http`) acknowledges only what reached the context broker.
"""

from __future__ import annotations

from edgegw.config import IotaJsonUplink, IotaUlUplink
from edgegw.items import Batch
from edgegw.uplink.fiware import FiwareMapping, iota_json, iota_ul
from edgegw.uplink.mqtt import MqttPublisher


class IotAgentMqttUplink(MqttPublisher):
    """IoT Agent JSON or Ultralight measures, one QoS 1 message per device and batch."""

    def __init__(self, config: IotaJsonUplink | IotaUlUplink, mapping: FiwareMapping, gateway_id: str):
        # Its own client id: another MQTT uplink of this gateway may use the same broker, and two
        # clients with one id would take the connection from each other forever.
        client_id = config.client_id or f"edgegw-{gateway_id}-{config.name}"
        super().__init__(config, config.name, client_id, f"topic {config.topic}")
        self.mapping = mapping
        self.topic = config.topic
        self.apikey = config.apikey
        self.encode = iota_json if isinstance(config, IotaJsonUplink) else iota_ul

    def messages(self, batch: Batch) -> list[tuple[str, bytes]]:
        return [
            (self.topic.format(apikey=self.apikey, device=device), payload)
            for device, payload in self.encode(batch.items(), self.mapping)
        ]
