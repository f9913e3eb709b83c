"""Batches to a FIWARE context broker over HTTP: NGSI-v2 (Orion) or NGSI-LD.

NGSI-v2: ``POST {url}/v2/op/update`` with ``{"actionType": "append", "entities": [...]}``, one
entity per item in outbox order (append creates or overwrites attributes; 204 on success).
NGSI-LD: ``POST {url}/ngsi-ld/v1/entityOperations/upsert?options=update`` once per upsert round (an
entity id at most once per request), ``application/ld+json`` with the configured ``@context`` in
every entity. ``options=update`` merges: attributes a town added to an entity in its broker stay
(the default, replace, would drop them at every reading), as NGSI-v2's append keeps them.
A batch is acknowledged when every request of it succeeded; a request over Orion's 1 MB limit is
split. Sending a batch again is harmless: the same items make the same entities.

Sending, deadlines and the classification of answers are :mod:`edgegw.uplink.http`'s.
"""

from __future__ import annotations

import json
from typing import Any

from edgegw.config import NgsiLdUplink, NgsiV2Uplink
from edgegw.items import Batch
from edgegw.uplink.fiware import FiwareMapping, ngsi_ld_entities, ngsi_v2_entities, upsert_rounds
from edgegw.uplink.http import (  # noqa: F401  (classify and retry_after_seconds: the NGSI uplink's API too)
    MAX_RETRY_AFTER,
    TRANSIENT_4XX,
    HttpUplink,
    Request,
    classify,
    error_text,
    retry_after_seconds,
)

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
        return [(self._path, self._own_headers, body) for body in self.bodies(batch.items())]

    def bodies(self, items: list[dict[str, Any]]) -> list[bytes]:
        """The request bodies for a batch's items, in order, each under :data:`MAX_REQUEST_BYTES`."""
        if isinstance(self.config, NgsiLdUplink):
            rounds = upsert_rounds(ngsi_ld_entities(items, self.mapping, self.config.context))
            head, tail = b"[", b"]"
        else:
            rounds = [ngsi_v2_entities(items, self.mapping)] if items else []
            head, tail = b'{"actionType":"append","entities":[', b"]}"
        out = []
        for entities in rounds:
            parts = [json.dumps(e, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
                     for e in entities]
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
