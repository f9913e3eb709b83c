"""Measures to a FIWARE IoT Agent (JSON or Ultralight 2.0) through its HTTP southbound.

``POST {url}/iot/json?k={apikey}&i={device}`` (``application/json``) for iotagent-json and
``POST {url}/iot/d?k={apikey}&i={device}`` (``text/plain``) for iotagent-ul. Both agents answer
only after their update of the context broker returned, with an error status when it failed
(``{"name", "message"}``, kept as the error text): a 2xx is the platform's acknowledgement, which
a PUBACK on the MQTT transport is not (see :data:`edgegw.uplink.ACKNOWLEDGEMENTS`).

Requests, in outbox order: for JSON one per item (one measure group each: the JSON agent answers
an array after its first group's update, so a 2xx for an array would not cover the rest); for
Ultralight one per device and batch, groups joined by ``#`` (the UL agent updates them in series
and answers after the last). A batch is acknowledged when every request got a 2xx; a failure fails
the whole batch, which is then sent again whole (at least once: the agent may see a measure twice,
with the same TimeInstant).
"""

from __future__ import annotations

from urllib.parse import urlencode

from edgegw.config import IotaJsonHttpUplink, IotaUlHttpUplink
from edgegw.items import Batch
from edgegw.uplink.fiware import FiwareMapping, iota_json_groups, iota_ul
from edgegw.uplink.http import HttpUplink, Request

JSON_RESOURCE = "/iot/json"  # the agents' default resources (their IOTA_DEFAULT_RESOURCE)
UL_RESOURCE = "/iot/d"


class IotAgentHttpUplink(HttpUplink):
    """IoT Agent JSON or Ultralight measures over the agent's HTTP southbound."""

    kind = "iota-http"

    def __init__(self, config: IotaJsonHttpUplink | IotaUlHttpUplink, mapping: FiwareMapping):
        self.json = isinstance(config, IotaJsonHttpUplink)
        resource = JSON_RESOURCE if self.json else UL_RESOURCE
        super().__init__(config, config.name, config.url + resource)
        self.mapping = mapping
        self.apikey = config.apikey
        self._resource = resource
        self._own_headers = {"Content-Type": "application/json" if self.json else "text/plain; charset=utf-8"}

    def requests(self, batch: Batch) -> list[Request]:
        payloads = (iota_json_groups if self.json else iota_ul)(batch.items(), self.mapping)
        return [(f"{self._resource}?{urlencode({'k': self.apikey, 'i': device})}", self._own_headers, payload)
                for device, payload in payloads]
