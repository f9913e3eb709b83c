"""Batches to a FIWARE context broker over HTTP: NGSI-v2 (Orion) or NGSI-LD.

NGSI-v2: ``POST {url}/v2/op/update`` with ``{"actionType": "append", "entities": [...]}``, one
entity per item in outbox order (append creates or overwrites attributes; 204 on success).
NGSI-LD: ``POST {url}/ngsi-ld/v1/entityOperations/upsert?options=update`` once per upsert round (an
entity id at most once per request), ``application/ld+json`` with the configured ``@context`` in
every entity. ``options=update`` merges: attributes a town added to an entity in its broker stay
(the default, replace, would drop them at every reading), as NGSI-v2's append keeps them.
A batch is acknowledged when every request of it succeeded; a request over Orion's 1 MB limit is
split. Sending a batch again is harmless: the same items make the same entities.

A batch with alarms first sends, one request each, the Device entities their Alerts' ``alertSource``
names (:func:`~edgegw.uplink.fiware.ngsi_v2_alert_sources`): a device never heard has no Device
entity of its readings, and its alarm must not name nothing. A broker refusing one (a 4xx other
than the transient ones) costs no alarm: the Alerts then name that Device by a plain URI instead of
a Relationship, and the batch goes on. Any other failure fails the batch, as for every request.

Sending, deadlines and the classification of answers are :mod:`edgegw.uplink.http`'s.
"""

from __future__ import annotations

import json
from collections.abc import Container
from typing import Any

import structlog

from edgegw.config import NgsiLdUplink, NgsiV2Uplink
from edgegw.errors import PermanentUplinkError, UplinkError
from edgegw.items import Batch
from edgegw.uplink.fiware import (
    FiwareMapping,
    ngsi_ld_alert_sources,
    ngsi_ld_entities,
    ngsi_v2_alert_sources,
    ngsi_v2_entities,
    upsert_rounds,
)
from edgegw.uplink.http import (  # noqa: F401  (classify and retry_after_seconds: the NGSI uplink's API too)
    MAX_RETRY_AFTER,
    TRANSIENT_4XX,
    HttpUplink,
    Request,
    classify,
    error_text,
    retry_after_seconds,
)

log = structlog.get_logger("edgegw.uplink.ngsi")

V2_UPDATE = "/v2/op/update"
LD_UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
LD_MERGE = "?options=update"
MAX_REQUEST_BYTES = 1_000_000  # Orion refuses bodies over 1 MB (its default inReqPayloadMaxSize)


class NgsiUplink(HttpUplink):
    """One NGSI-v2 or NGSI-LD context broker."""

    kind = "ngsi"

    def __init__(self, config: NgsiV2Uplink | NgsiLdUplink, mapping: FiwareMapping):
        self.ld = isinstance(config, NgsiLdUplink)
        super().__init__(config, config.name, config.url + (LD_UPSERT if self.ld else V2_UPDATE))
        self.mapping = mapping
        self._path = (LD_UPSERT + LD_MERGE) if self.ld else V2_UPDATE
        own = {"Content-Type": "application/ld+json" if self.ld else "application/json"}
        if isinstance(config, NgsiLdUplink) and config.tenant:
            own["NGSILD-Tenant"] = config.tenant
        if isinstance(config, NgsiV2Uplink):
            if config.service:
                own["Fiware-Service"] = config.service
            own["Fiware-ServicePath"] = config.service_path
        self._own_headers = own

    def requests(self, batch: Batch) -> list[Request]:
        """Every request of a batch when the broker takes every Device entity an Alert names."""
        items = batch.items()
        return [(self._path, self._own_headers, body)
                for body in [b for _, b in self.source_bodies(items)] + self.bodies(items)]

    def _deliver(self, batch: Batch) -> UplinkError | None:
        try:
            items = batch.items()
            sources = self.source_bodies(items)
        except ValueError as exc:  # an item the platform could never take (an id Orion refuses, NaN)
            return PermanentUplinkError(f"cannot map the batch for {self.kind}: {exc}")
        refused: set[str] = set()
        for entity_id, body in sources:
            error = self._post(self._path, self._own_headers, body)
            if isinstance(error, PermanentUplinkError):
                # The alarm must arrive: its Alert names this Device by a plain URI instead.
                log.warning("the broker refused the Device entity an alert names; the alert names it as text",
                            uplink=self.name, entity=entity_id, error=str(error))
                refused.add(entity_id)
            elif error is not None:
                return error
        try:
            bodies = self.bodies(items, refused)
        except ValueError as exc:
            return PermanentUplinkError(f"cannot map the batch for {self.kind}: {exc}")
        for body in bodies:
            if (error := self._post(self._path, self._own_headers, body)) is not None:
                return error
        return None

    def source_bodies(self, items: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
        """(Device entity id, request body) for each Device entity the batch's Alerts name, in order."""
        if isinstance(self.config, NgsiLdUplink):
            sources = ngsi_ld_alert_sources(items, self.mapping, self.config.context)
            return [(eid, b"[" + _dumps(e) + b"]") for eid, e in sources]
        return [(eid, b'{"actionType":"append","entities":[' + _dumps(e) + b"]}")
                for eid, e in ngsi_v2_alert_sources(items, self.mapping)]

    def bodies(self, items: list[dict[str, Any]], unresolved: Container[str] = frozenset()) -> list[bytes]:
        """The request bodies for a batch's items, in order, each under :data:`MAX_REQUEST_BYTES`;
        ``unresolved``: Device entities the broker refused, which Alerts name by a plain URI."""
        if isinstance(self.config, NgsiLdUplink):
            rounds = upsert_rounds(ngsi_ld_entities(items, self.mapping, self.config.context, unresolved))
            head, tail = b"[", b"]"
        else:
            rounds = [ngsi_v2_entities(items, self.mapping, unresolved)] if items else []
            head, tail = b'{"actionType":"append","entities":[', b"]}"
        out = []
        for entities in rounds:
            parts = [_dumps(e) for e in entities]
            out += [head + b",".join(chunk) + tail
                    for chunk in _chunks(parts, MAX_REQUEST_BYTES - len(head) - len(tail))]
        return out


def _chunks(parts: list[bytes], limit: int) -> list[list[bytes]]:
    """Consecutive groups of ``parts`` whose comma-joined size stays within ``limit``."""
    chunks: list[list[bytes]] = []
    size = limit + 1
    for part in parts:
        if len(part) > limit:
            raise ValueError(f"one entity is {len(part)} bytes, over the broker's request limit of {limit}")
        if size + 1 + len(part) > limit:
            chunks.append([])
            size = -1
        chunks[-1].append(part)
        size += 1 + len(part)
    return chunks


def _dumps(entity: dict[str, Any]) -> bytes:
    return json.dumps(entity, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
