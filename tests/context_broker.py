"""A strict, in-process FIWARE context broker for tests (Orion cannot be installed here).

It serves only what the gateway's NGSI uplinks use, on 127.0.0.1, from a background thread:

* NGSI-v2 (Orion): ``POST /v2/op/update``, ``GET /v2/entities/{id}``, ``GET /v2/entities``,
  plus ``GET /version``.
* NGSI-LD: ``POST /ngsi-ld/v1/entityOperations/upsert`` (``?options=update`` merges attributes
  into a stored entity, the default replaces it; 201 with the created ids, else 204),
  ``GET /ngsi-ld/v1/entities/{id}``. An entity whose ``@context`` lists Smart Data Models contexts
  must take its type and SDM attributes from the right one (see :func:`_ld_vocabulary`).

Every request is validated strictly - headers, JSON syntax, Orion's identifier and value rules,
filip's models - so a wrong payload from the gateway fails the test instead of being stored.
A request is atomic: if anything in it is wrong, nothing from it is stored (Orion can apply a
batch partially; a test is clearer without that). Malformed requests (400/405/411/413/415) are
listed in :attr:`ContextBroker.invalid`, even when a fault or the token check answered first, so
``assert broker.invalid == []`` after a gateway run catches every bad payload.

Deliberately stricter than Orion: every Relationship (v2: an attribute of type ``Relationship``;
LD: its ``object``) must name an entity the broker holds once the request is applied (in the same
tenant, and for v2 the same service path), else the request is refused with 400 and listed in
:attr:`ContextBroker.invalid`: a dangling reference is a gateway bug (``check_references=False``
turns this off); an entity ``type`` and every attribute ``value`` are required;
``Fiware-Service`` must already be lowercase; values must match their v2 attribute type
(``Number`` is a JSON number, ``Boolean`` a bool, ``Text`` a string, ``DateTime`` ISO 8601);
JSON with NaN/Infinity or duplicate keys is refused; NGSI-LD attributes need an explicit
``type`` and system attributes (``createdAt``, ``modifiedAt``) may not be sent.

Also here: the ``context_broker`` pytest fixture (a started broker, stopped at teardown).
"""

from __future__ import annotations

import contextlib
import copy
import hmac
import io
import json
import re
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from pydantic import BaseModel, ValidationError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # filip 0.8.1 uses APIs pydantic 2.x deprecates
    from filip.models.base import DataType
    from filip.models.ngsi_ld.context import ContextLDEntity
    from filip.models.ngsi_v2.context import ContextEntity
    from geojson_pydantic import (  # installed with filip
        Feature,
        FeatureCollection,
        LineString,
        MultiLineString,
        MultiPoint,
        MultiPolygon,
        Point,
        Polygon,
    )

HOST = "127.0.0.1"
MAX_PAYLOAD = 1_048_576  # Orion's default request size limit
V2_ACTIONS = ("append", "appendStrict", "update", "replace", "delete")
V2_OPTIONS = {"keyValues", "forcedUpdate", "flowControl"}
V2_RESERVED_ATTRS = {"geo:distance", "dateCreated", "dateModified", "alterationType", "*"}
LD_KINDS = {"Property": "value", "Relationship": "object", "GeoProperty": "value"}
LD_MEMBERS = {
    "Property": {"value", "observedAt", "unitCode", "datasetId"},
    "Relationship": {"object", "observedAt", "datasetId"},
    "GeoProperty": {"value", "observedAt", "datasetId"},
}
LD_ALL_MEMBERS = {"value", "object", "observedAt", "unitCode", "datasetId"}
LD_SYSTEM_MEMBERS = {"createdAt", "modifiedAt", "instanceId"}
LD_GEO_ATTRS = {"location", "observationSpace", "operationSpace"}
LD_CONTEXT_REL = 'rel="http://www.w3.org/ns/json-ld#context"'
LD_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"

_FORBIDDEN = set("<>\"'=;()")  # Orion refuses these anywhere in a request
_V2_IDENT_FORBIDDEN = _FORBIDDEN | set("&?/#")  # ...and these in v2 identifiers
_TENANT = re.compile(r"[a-z0-9_]{1,50}")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_]{1,50}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_LD_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
_GEOMETRIES: dict[str, type[BaseModel]] = {
    "Point": Point,
    "MultiPoint": MultiPoint,
    "LineString": LineString,
    "MultiLineString": MultiLineString,
    "Polygon": Polygon,
    "MultiPolygon": MultiPolygon,
}
_GEOJSON_V2 = {**_GEOMETRIES, "Feature": Feature, "FeatureCollection": FeatureCollection}
_DATATYPES = {member.value: member for member in DataType}

# (v2 "error" name, NGSI-LD problem type) per status; the LD type is a suffix of LD_ERRORS.
_ERROR_NAMES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "BadRequestData"),
    401: ("Unauthorized", ""),  # ETSI defines no type for it: "about:blank"
    404: ("NotFound", "ResourceNotFound"),
    405: ("MethodNotAllowed", "OperationNotSupported"),
    409: ("TooManyResults", "TooManyResults"),
    411: ("ContentLengthRequired", "InvalidRequest"),
    413: ("RequestEntityTooLarge", "InvalidRequest"),
    415: ("UnsupportedMediaType", "InvalidRequest"),
    422: ("Unprocessable", "BadRequestData"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the broker saw it. Header names are lowercased; ``body`` is the parsed
    JSON, or the raw text if it was not JSON, or None if there was no body."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class _Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"Status {status}"


class _Problem(Exception):
    """An error answer. ``invalid`` marks a malformed request (listed in ``broker.invalid``) as
    opposed to one refused because of the stored state or a test's fault injection."""

    def __init__(
        self,
        status: int,
        description: str,
        *,
        error: str | None = None,
        ld_type: str | None = None,
        invalid: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        names = _ERROR_NAMES.get(status, (_phrase(status).replace(" ", ""), ""))
        suffix = ld_type or names[1]
        self.status = status
        self.description = description
        self.error = error or names[0]
        self.ld_type = LD_ERRORS + suffix if suffix else "about:blank"
        self.invalid = invalid
        self.headers = headers or {}

    def reply(self, ld: bool) -> _Reply:
        if ld:
            body = {"type": self.ld_type, "title": _phrase(self.status), "detail": self.description}
        else:
            body = {"error": self.error, "description": self.description}
        return _Reply(self.status, body, dict(self.headers))


# -- request parsing ------------------------------------------------------------------------------


def _parse_json(raw: bytes) -> Any:
    """Parse strictly: Orion refuses NaN/Infinity, and a duplicate key means the sender lost data."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"duplicate key(s) {duplicates} in a JSON object")
        return dict(pairs)

    return json.loads(raw.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _json_body(raw: bytes | None, headers: dict[str, str], accepted: tuple[str, ...]) -> Any:
    if not raw:
        raise _Problem(411, "Zero/No Content-Length in PUT/POST/PATCH request")
    if len(raw) > MAX_PAYLOAD:
        raise _Problem(413, f"payload size: {len(raw)}, max size supported: {MAX_PAYLOAD}")
    if _media_type(headers) not in accepted:
        shown = headers.get("content-type", "<none>")
        raise _Problem(415, f"not supported content type: {shown} (use {' or '.join(accepted)})")
    try:
        return _parse_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Problem(
            400, f"Errors found in incoming JSON buffer: {exc}", error="ParseError", ld_type="InvalidRequest"
        ) from None


def _tenant(headers: dict[str, str], name: str) -> str | None:
    value = headers.get(name.lower(), "")
    if not value:
        return None  # Orion treats an empty tenant header as the default tenant
    if not _TENANT.fullmatch(value):
        raise _Problem(
            400, f"{name} {value!r}: only lowercase letters, digits and '_', at most 50 characters"
        )
    return value


def _service_path(headers: dict[str, str], *, query: bool) -> tuple[str, bool] | None:
    """``(path, subtree)``; None means "every path", which is Orion's default for queries only."""
    value = headers.get("fiware-servicepath")
    if value is None:
        return None if query else ("/", False)
    subtree = query and value.endswith("/#")
    path = (value[:-2] or "/") if subtree else value
    if not path.startswith("/"):
        raise _Problem(400, f"Fiware-ServicePath {value!r}: must start with '/'")
    segments = path[1:].split("/") if path != "/" else []
    if len(segments) > 10:
        raise _Problem(400, f"Fiware-ServicePath {value!r}: more than 10 components")
    for segment in segments:
        if not _PATH_SEGMENT.fullmatch(segment):
            raise _Problem(
                400,
                f"Fiware-ServicePath {value!r}: component {segment!r} must be 1-50 letters, digits or '_'",
            )
    return path, subtree


def _ld_context_link(headers: dict[str, str], media_type: str) -> None:
    link = headers.get("link")
    if link is None:
        return
    if media_type == "application/ld+json":
        raise _Problem(400, "a JSON-LD Link header is not allowed with Content-Type application/ld+json")
    if not re.fullmatch(r"\s*<[^<>\s]+>\s*(;\s*[^;]+)*", link) or LD_CONTEXT_REL not in link:
        raise _Problem(
            400, f"Link header {link!r} is not '<url>; {LD_CONTEXT_REL}; type=\"application/ld+json\"'"
        )


# -- entity validation ----------------------------------------------------------------------------


def _identifier_problem(value: Any, forbidden: set[str]) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not 1 <= len(value) <= 256:
        return f"must be 1-256 characters long (is {len(value)})"
    bad = sorted({c for c in value if not 0x20 < ord(c) < 0x7F or c in forbidden})
    if bad:
        return f"{value!r} contains forbidden characters {''.join(bad)!r}"
    return None


def _iso8601_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"DateTime value must be an ISO 8601 string, not {type(value).__name__}"
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"DateTime value {value!r} is not ISO 8601"
    return None


def _forbidden_in_strings(value: Any) -> str | None:
    """Orion refuses ``<>"'=;()`` inside any string value, nested ones included."""
    if isinstance(value, str):
        bad = sorted(set(value) & _FORBIDDEN)
        return f"string {value!r} contains forbidden characters {''.join(bad)!r}" if bad else None
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        problem = _forbidden_in_strings(child)
        if problem:
            return problem
    return None


def _geojson_problem(value: Any, models: dict[str, type[BaseModel]]) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in models:
        return f"value must be a GeoJSON object with type one of {sorted(models)}"
    try:
        models[kind].model_validate(value)
    except ValidationError as exc:
        return f"invalid GeoJSON {kind}: {_summary(exc)}"
    return None


def _summary(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or '-'}: {e['msg']}" for e in exc.errors())
    return f"{type(exc).__name__}: {exc}"


def _default_type(value: Any) -> str:
    """The attribute type Orion infers when none is given."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "Text"
    return "None" if value is None else "StructuredValue"


def _v2_value_problem(attr_type: str, value: Any) -> str | None:
    if value is None:
        return None  # Orion allows null for any type
    if attr_type in ("Number", "Float", "Integer"):
        wanted = int if attr_type == "Integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, wanted):
            return f"{attr_type} value must be a JSON number, not {json.dumps(value)}"
    elif attr_type == "Boolean" and not isinstance(value, bool):
        return f"Boolean value must be true or false, not {json.dumps(value)}"
    elif attr_type == "Text" and not isinstance(value, str):
        return f"Text value must be a string, not {json.dumps(value)}"
    elif attr_type == "DateTime":
        return _iso8601_problem(value)
    elif attr_type == "geo:json":
        return _geojson_problem(value, _GEOJSON_V2)
    if attr_type != "TextUnrestricted":
        return _forbidden_in_strings(value)
    return None


def _v2_metadata(metadata: Any, where: str, issues: list[str]) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        issues.append(f"{where}: metadata must be an object of {{name: {{value, type}}}}")
        return {}
    normalized = {}
    for name, item in metadata.items():
        at = f"{where} metadata {name!r}"
        problem = _identifier_problem(name, _V2_IDENT_FORBIDDEN)
        if problem:
            issues.append(f"{at}: name {problem}")
        if not isinstance(item, dict) or "value" not in item:
            issues.append(f"{at}: must be an object with 'value'")
            continue
        if set(item) - {"type", "value"}:
            issues.append(f"{at}: unknown field(s) {sorted(set(item) - {'type', 'value'})}")
        md_type = item.get("type", _default_type(item["value"]))
        problem = _identifier_problem(md_type, _V2_IDENT_FORBIDDEN) or _v2_value_problem(
            md_type, item["value"]
        )
        if problem:
            issues.append(f"{at}: {problem}")
        normalized[name] = {"type": md_type, "value": item["value"]}
    return normalized


def _v2_entity(raw: Any, where: str, *, delete: bool, key_values: bool) -> tuple[dict[str, Any], list[str]]:
    """Check one v2 entity; returns it normalized (every attribute with type, value, metadata)."""
    if not isinstance(raw, dict):
        return {}, [f"{where}: an entity must be a JSON object"]
    issues: list[str] = []
    for key in ("id", "type"):
        problem = f"missing '{key}'" if key not in raw else _identifier_problem(raw[key], _V2_IDENT_FORBIDDEN)
        if problem:
            issues.append(f"{where} {key}: {problem}")
    if isinstance(raw.get("id"), str):
        where = f"{where} (id {raw['id']!r})"
    entity: dict[str, Any] = {"id": raw.get("id"), "type": raw.get("type")}
    for name, attr in raw.items():
        if name in ("id", "type"):
            continue
        at = f"{where} attribute {name!r}"
        problem = _identifier_problem(name, _V2_IDENT_FORBIDDEN)
        if problem or name in V2_RESERVED_ATTRS:
            issues.append(f"{at}: name {problem or 'is reserved'}")
        if key_values:
            attr = {"value": attr}
        if not isinstance(attr, dict):
            issues.append(f"{at}: must be an object with 'value' (and optional 'type', 'metadata')")
            continue
        unknown = set(attr) - {"value", "type", "metadata"}
        if unknown:
            issues.append(f"{at}: unknown field(s) {sorted(unknown)}")
        if delete:
            entity[name] = {}
            continue
        if "value" not in attr:
            issues.append(f"{at}: missing 'value'")
            continue
        attr_type = attr.get("type", _default_type(attr["value"]))
        problem = _identifier_problem(attr_type, _V2_IDENT_FORBIDDEN) or _v2_value_problem(
            attr_type, attr["value"]
        )
        if problem:
            issues.append(f"{at}: {problem}")
        metadata = _v2_metadata(attr.get("metadata", {}), at, issues)
        entity[name] = {"type": attr_type, "value": attr["value"], "metadata": metadata}
    if not issues and not delete:
        problem = _filip_v2(entity)
        if problem:
            issues.append(f"{where}: filip ContextEntity refused it: {problem}")
    return entity, issues


def _as_datatype(type_name: str) -> Any:
    # filip refuses the *string* "geo:json" as a type (its name regex excludes it) but accepts
    # its own enum member; known type names go in as members so only real problems surface.
    return _DATATYPES.get(type_name, type_name)


def _filip_v2(entity: dict[str, Any]) -> str | None:
    shaped = {
        name: {
            "type": _as_datatype(attr["type"]),
            "value": attr["value"],
            "metadata": {
                k: {"type": _as_datatype(m["type"]), "value": m["value"]} for k, m in attr["metadata"].items()
            },
        }
        for name, attr in entity.items()
        if name not in ("id", "type")
    }
    try:
        ContextEntity(id=entity["id"], type=entity["type"], **shaped)
    except Exception as exc:  # filip also raises AttributeError/TypeError on some inputs
        return _summary(exc)
    return None


def _ld_attribute(attr: Any, where: str, *, geo: bool) -> list[str]:
    if not isinstance(attr, dict):
        return [f"{where}: must be an object with 'type' Property, Relationship or GeoProperty"]
    kind = attr.get("type")
    if kind not in LD_KINDS:
        return [f"{where}: type must be Property, Relationship or GeoProperty, not {kind!r}"]
    if geo and kind != "GeoProperty":
        return [f"{where}: must be a GeoProperty, not a {kind}"]
    issues = []
    member = LD_KINDS[kind]
    value = attr.get(member)
    if value is None:
        issues.append(f"{where}: a {kind} needs a non-null '{member}'")
    elif kind == "Relationship":
        targets = value if isinstance(value, list) and value else [value]
        if not all(isinstance(t, str) and _URI.fullmatch(t) for t in targets):
            issues.append(
                f"{where}: object must be an entity URI (or a list of them), not {json.dumps(value)}"
            )
    elif kind == "GeoProperty":
        problem = _geojson_problem(value, _GEOMETRIES)
        if problem:
            issues.append(f"{where}: {problem}")
    if "observedAt" in attr:
        stamp = attr["observedAt"]
        if not (
            isinstance(stamp, str) and _LD_TIMESTAMP.fullmatch(stamp) and _iso8601_problem(stamp) is None
        ):
            issues.append(f"{where}: observedAt must be ISO 8601 UTC ending in Z, not {json.dumps(stamp)}")
    if "unitCode" in attr and not (isinstance(attr["unitCode"], str) and attr["unitCode"]):
        issues.append(f"{where}: unitCode must be a non-empty string, not {json.dumps(attr['unitCode'])}")
    if "datasetId" in attr and not (isinstance(attr["datasetId"], str) and _URI.fullmatch(attr["datasetId"])):
        issues.append(f"{where}: datasetId must be a URI")
    for key, sub in attr.items():
        if key == "type" or key in LD_MEMBERS[kind]:
            continue
        if key in LD_SYSTEM_MEMBERS:
            issues.append(f"{where}: {key!r} is set by the broker and must not be sent")
        elif key in LD_ALL_MEMBERS:
            issues.append(f"{where}: {key!r} is not allowed on a {kind}")
        else:  # anything else is a sub-attribute (a property of the property)
            problem = _identifier_problem(key, _FORBIDDEN)
            issues.extend([f"{where}.{key}: name {problem}"] if problem else [])
            issues.extend(_ld_attribute(sub, f"{where}.{key}", geo=False))
    return issues


def _ld_entity(raw: Any, where: str, *, ld_json: bool) -> list[str]:
    if not isinstance(raw, dict):
        return [f"{where}: an entity must be a JSON object"]
    issues = []
    entity_id = raw.get("id")
    if entity_id is None:
        issues.append(f"{where}: missing 'id'")
    else:
        problem = _identifier_problem(entity_id, _FORBIDDEN)
        if problem is None and not _URI.fullmatch(entity_id):
            problem = f"{entity_id!r} is not a URI (e.g. urn:ngsi-ld:Sensor:001)"
        if problem:
            issues.append(f"{where} id: {problem}")
        else:
            where = f"{where} (id {entity_id!r})"
    problem = "missing 'type'" if "type" not in raw else _identifier_problem(raw["type"], _FORBIDDEN)
    if problem:
        issues.append(f"{where} type: {problem}")
    context = raw.get("@context")
    if ld_json and not (isinstance(context, (str, list, dict)) and context):
        issues.append(
            f"{where}: Content-Type application/ld+json needs a non-empty '@context' in every entity"
        )
    if not ld_json and "@context" in raw:
        issues.append(
            f"{where}: '@context' is not allowed with Content-Type application/json (send a Link header)"
        )
    for name, attr in raw.items():
        if name in ("id", "type", "@context"):
            continue
        at = f"{where} attribute {name!r}"
        problem = _identifier_problem(name, _FORBIDDEN)
        if problem:
            issues.append(f"{at}: name {problem}")
        elif name in ("createdAt", "modifiedAt"):
            issues.append(f"{at}: is set by the broker and must not be sent")
        else:
            issues.extend(_ld_attribute(attr, at, geo=name in LD_GEO_ATTRS))
    if not issues and isinstance(context, (str, list)):
        issues.extend(_ld_vocabulary(raw, context, where))
    if not issues:
        try:
            ContextLDEntity(**raw)  # filip takes the JSON-LD key "@context" as is (alias of .context)
        except Exception as exc:  # filip raises UnboundLocalError/AttributeError on some inputs
            issues.append(f"{where}: filip ContextLDEntity refused it: {_summary(exc)}")
    return issues


# Term -> IRI of the Smart Data Models contexts the gateway uses, from their repositories'
# context.jsonld (tests/sdm/contexts.json records the commit).
SDM_CONTEXTS: dict[str, dict[str, str]] = {
    url: data["terms"] for url, data in
    json.loads((Path(__file__).parent / "sdm" / "contexts.json").read_text()).items()
}
LD_CORE_CONTEXTS = {"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"}


def _ld_vocabulary(raw: dict[str, Any], context: str | list[Any], where: str) -> list[str]:
    """An entity whose ``@context`` names Smart Data Models contexts must get its type from one of
    them, and each attribute an SDM context defines must mean what the type's own context says it
    means: in JSON-LD the last context that defines a term wins, so the Environment context listed
    after the Device one turns a Device's ``refDevice`` into WaterObserved's.

    Checked only when every context is one this broker knows (a town's own context could define
    anything); a real broker does not refuse such entities, it stores terms under the wrong IRI.
    """
    urls = [context] if isinstance(context, str) else context
    if not all(isinstance(u, str) and (u in SDM_CONTEXTS or u in LD_CORE_CONTEXTS) for u in urls):
        return []
    known = [SDM_CONTEXTS[u] for u in urls if u in SDM_CONTEXTS]
    if not known:
        return []
    etype = raw.get("type")
    own = next((terms for terms in known if etype in terms), None)
    if own is None:
        return [f"{where}: type {etype!r} is defined by none of its @context {urls}: it would expand to the "
                "default vocabulary"]
    issues = []
    for name in raw:
        if name in ("id", "type", "@context") or name not in own:
            continue
        meaning = next(terms[name] for terms in reversed(known) if name in terms)  # the last definition wins
        if meaning != own[name]:
            issues.append(f"{where} attribute {name!r}: its @context makes it {meaning}, not {etype}'s {own[name]}")
    return issues


# -- the broker -----------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them: nothing outlives stop().
    daemon_threads = False
    block_on_close = True

    def __init__(self, broker: Loopback, port: int) -> None:
        self.broker = broker
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        with self.broker._lock:
            self.broker._connections += 1  # to see whether clients reuse their connection
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handlers waiting on idle keep-alive connections so they can be joined."""
        with self.connections_lock:
            for connection in self.open_connections:
                with contextlib.suppress(OSError):  # already closed by the client
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are routine, not news
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as HTTP client sessions in the gateway expect
    timeout = 30  # an idle keep-alive connection must not hold a thread forever
    server: _Server

    def _dispatch(self) -> None:
        self.server.broker._handle(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are recorded on the broker instead


_Route = Callable[
    ["ContextBroker", str, dict[str, str], dict[str, str], "bytes | None"], Callable[[], _Reply]
]


class Loopback:
    """A loopback HTTP double (this broker, the IoT Agent of tests/iot_agent.py) served by a
    :class:`_Server` in a background thread: :meth:`start`, :meth:`stop`, or a ``with`` block.
    Subclasses set ``_port`` (0: a free one at the first start) and ``_lock`` before starting."""

    label = "loopback server"
    _port: int
    _lock: threading.Condition
    _connections: int
    _server: _Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        """Start serving in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError(f"{self.label} already started")
        self._server = _Server(self, self._port)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.label}:{self._port}")
        self._thread.start()
        return self

    def _before_stop(self) -> None:
        """Called before the server shuts down (e.g. to release answers held back)."""

    def stop(self) -> None:
        """Stop serving: closes the listening socket and open connections and joins every thread.
        Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._before_stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handle(self, handler: Any) -> None:
        """Answer one request (``handler`` is the server's request handler)."""
        raise NotImplementedError


class ContextBroker(Loopback):
    """A strict NGSI-v2 / NGSI-LD context broker on ``http://127.0.0.1:<port>`` for tests.

    Use ``with ContextBroker() as broker:`` (or the ``context_broker`` fixture), point the gateway
    at :attr:`url`, then assert on :meth:`entity`, :meth:`ld_entity`, :attr:`requests` and
    :attr:`invalid`. Stored data lives in this object, so it survives :meth:`stop`/:meth:`start`,
    and a restarted broker listens on the same port.
    """

    def __init__(self, *, token: str | None = None, port: int = 0, check_references: bool = True) -> None:
        """``token``: if given, every request needs a matching ``X-Auth-Token`` (else 401).
        ``port``: 0 picks a free port on the first :meth:`start`. ``check_references``: refuse a
        Relationship to an entity the broker does not hold (see the module docstring)."""
        self.token = token
        self.check_references = check_references
        self._port = port
        self._lock = threading.Condition(threading.RLock())
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._v2: dict[tuple[str | None, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._ld: dict[str | None, dict[str, dict[str, Any]]] = {}
        self._requests: list[RecordedRequest] = []
        self._invalid: list[str] = []
        self._failures: list[_Problem] = []
        self._rejected: dict[str, tuple[int, str]] = {}
        self._delay = 0.0
        self._trickle = 0.0
        self._update_count = 0
        self._upsert_count = 0
        self._connections = 0

    # -- lifecycle -----------------------------------------------------------------------------

    label = "context broker"

    def start(self) -> Self:
        self._stopping.clear()
        return super().start()

    def _before_stop(self) -> None:
        self._stopping.set()  # answers held back by slow() are sent at once

    @property
    def port(self) -> int:
        """The TCP port (fixed after the first start)."""
        if not self._port:
            raise RuntimeError("context broker not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:45678`` (no trailing slash)."""
        return f"http://{HOST}:{self.port}"

    # -- inspection ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def invalid(self) -> list[str]:
        """One line per malformed request: ``"POST /v2/op/update -> 400: <what and where>"``
        (and per 500 answer, should this broker itself fail)."""
        with self._lock:
            return list(self._invalid)

    @property
    def connections(self) -> int:
        """TCP connections accepted since the first start (a client with keep-alive opens one)."""
        with self._lock:
            return self._connections

    @property
    def update_count(self) -> int:
        """Successful ``POST /v2/op/update`` requests."""
        with self._lock:
            return self._update_count

    @property
    def upsert_count(self) -> int:
        """Successful NGSI-LD upsert requests."""
        with self._lock:
            return self._upsert_count

    def entities(
        self, service: str | None = None, service_path: str = "/", type: str | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the v2 entities stored in one tenant and service path, in creation order."""
        with self._lock:
            stored = self._v2.get((service, service_path), {}).values()
            return [copy.deepcopy(e) for e in stored if type is None or e["type"] == type]

    def entity(
        self, entity_id: str, type: str | None = None, service: str | None = None, service_path: str = "/"
    ) -> dict[str, Any] | None:
        """A copy of one stored v2 entity (normalized), or None. Raises LookupError if ``type``
        is not given and several entities share the id."""
        found = [e for e in self.entities(service, service_path, type) if e["id"] == entity_id]
        if len(found) > 1:
            raise LookupError(f"{len(found)} entities have id {entity_id!r}; pass type=")
        return found[0] if found else None

    def ld_entities(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Copies of the NGSI-LD entities stored for a tenant, in creation order."""
        with self._lock:
            return copy.deepcopy(list(self._ld.get(tenant, {}).values()))

    def ld_entity(self, entity_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """A copy of one stored NGSI-LD entity, as it was sent (``@context`` included), or None."""
        with self._lock:
            return copy.deepcopy(self._ld.get(tenant, {}).get(entity_id))

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``condition()`` is true, re-checking after every request; False on timeout."""
        with self._lock:
            return self._lock.wait_for(condition, timeout)

    # -- fault injection -----------------------------------------------------------------------

    def fail_next(self, status: int = 503, count: int = 1, retry_after: int | str | None = None) -> None:
        """Answer the next ``count`` NGSI requests (``/v2/...``, ``/ngsi-ld/...``; not ``/version``)
        with ``status``, plus ``Retry-After`` if given, storing nothing. Their payloads are still
        validated, so a bad one still shows in :attr:`invalid`."""
        if not 400 <= status <= 599 or count < 0:
            raise ValueError("status must be 4xx/5xx and count >= 0")
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._failures.extend(
                _Problem(status, "fault injected by the test (fail_next)", invalid=False, headers=headers)
                for _ in range(count)
            )

    def reject_entity(
        self,
        entity_id: str,
        status: int = 400,
        description: str = "entity refused by the test (reject_entity)",
    ) -> None:
        """Refuse, as a whole, every write request that contains ``entity_id`` (v2 or LD) with
        ``status`` and ``description``; other requests go through. Lasts until :meth:`clear_faults`."""
        with self._lock:
            self._rejected[entity_id] = (status, description)

    def slow(self, seconds: float) -> None:
        """Hold every answer back ``seconds`` (0 turns it off). The request takes effect at once,
        as on a busy broker, so a client that times out may still have been stored."""
        with self._lock:
            self._delay = max(0.0, seconds)

    def trickle(self, seconds_per_byte: float) -> None:
        """Send every answer one byte at a time, ``seconds_per_byte`` apart (0 turns it off): a broker
        behind a choking link, whose answer never pauses long enough to trip a client's read timeout.
        As with :meth:`slow`, the request takes effect at once."""
        with self._lock:
            self._trickle = max(0.0, seconds_per_byte)

    def clear_faults(self) -> None:
        """Cancel :meth:`fail_next`, :meth:`reject_entity`, :meth:`slow` and :meth:`trickle`."""
        with self._lock:
            self._failures.clear()
            self._rejected.clear()
            self._delay = 0.0
            self._trickle = 0.0

    # -- request handling ----------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        headers = {name.lower(): value for name, value in handler.headers.items()}
        raw: bytes | None = None
        try:
            length = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            length = None
        if length is not None and length >= 0 and "transfer-encoding" not in headers:
            raw = handler.rfile.read(length)
        elif "content-length" in headers or "transfer-encoding" in headers:
            handler.close_connection = True  # the unread body would be taken for the next request

        ld = url.path.startswith("/ngsi-ld/")
        try:
            reply = self._process(handler.command, url.path, query, headers, raw, ld)
        except Exception as exc:  # a bug in this broker: make it loud in the test, not a hang
            reply = _Problem(500, f"context broker internal error: {_summary(exc)}").reply(ld)
            with self._lock:
                self._invalid.append(f"{handler.command} {url.path} -> 500: {_summary(exc)}")

        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        with self._lock:
            # Recorded before answering, so a client never sees its answer before the record.
            self._requests.append(
                RecordedRequest(handler.command, url.path, query, headers, body, reply.status)
            )
            self._lock.notify_all()
            delay, trickle = self._delay, self._trickle
        if delay:
            self._stopping.wait(delay)
        try:
            if trickle:
                self._send_trickled(handler, reply, trickle)
            else:
                self._send(handler, reply)
        except OSError:
            handler.close_connection = True  # the client gave up (e.g. timed out on slow())

    def _send_trickled(self, handler: _Handler, reply: _Reply, gap: float) -> None:
        wfile, handler.wfile = handler.wfile, io.BytesIO()
        try:
            self._send(handler, reply)
            answer = handler.wfile.getvalue()
        finally:
            handler.wfile = wfile
        for i in range(len(answer)):
            if self._stopping.wait(gap):
                break
            wfile.write(answer[i:i + 1])
            wfile.flush()
        handler.close_connection = True  # an answer cut short by stop() leaves nothing to reuse

    @staticmethod
    def _send(handler: _Handler, reply: _Reply) -> None:
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        data = b""
        if reply.body is not None:
            data = json.dumps(reply.body).encode()
            handler.send_header("Content-Type", "application/json")
        if reply.status != 204:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _process(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        raw: bytes | None,
        ld: bool,
    ) -> _Reply:
        # Validate first and always, so `invalid` sees every bad request, even one answered
        # with an injected fault or a 401.
        apply: Callable[[], _Reply] | None = None
        problem: _Problem | None = None
        try:
            apply = self._route(method, path)(self, path, query, headers, raw)
        except _Problem as exc:
            problem = exc
        with self._lock:
            if problem is not None and problem.invalid:
                self._invalid.append(f"{method} {path} -> {problem.status}: {problem.description}")
            if self._failures and path.startswith(("/v2/", "/ngsi-ld/")):
                return self._failures.pop(0).reply(ld)
        if self.token is not None and not hmac.compare_digest(headers.get("x-auth-token", ""), self.token):
            return _Problem(401, "missing or wrong X-Auth-Token", invalid=False).reply(ld)
        if problem is not None:
            return problem.reply(ld)
        assert apply is not None
        with self._lock:
            try:
                return apply()
            except _Problem as exc:
                return exc.reply(ld)

    _ROUTES: ClassVar[dict[str, dict[str, str]]] = {
        "/version": {"GET": "_version"},
        "/v2/op/update": {"POST": "_v2_update"},
        "/v2/entities": {"GET": "_v2_list"},
        "/v2/entities/*": {"GET": "_v2_get"},
        "/ngsi-ld/v1/entityOperations/upsert": {"POST": "_ld_upsert"},
        "/ngsi-ld/v1/entities/*": {"GET": "_ld_get"},
    }

    def _route(self, method: str, path: str) -> _Route:
        head, _, tail = path.rpartition("/")
        methods = self._ROUTES.get(path) or (self._ROUTES.get(head + "/*") if tail else None)
        if methods is None:
            raise _Problem(400, f"no such resource {path!r} (this test broker serves {sorted(self._ROUTES)})")
        if method not in methods:
            raise _Problem(405, f"{method} not allowed on {path}", headers={"Allow": ", ".join(methods)})
        return getattr(type(self), methods[method])

    def _check_rejected(self, ids: list[Any]) -> None:
        for entity_id in ids:
            if isinstance(entity_id, str) and entity_id in self._rejected:
                status, description = self._rejected[entity_id]
                raise _Problem(status, description, invalid=False)

    def _check_references(self, targets: list[tuple[str, Any]], held: set[str], request: str) -> None:
        """Refuse a request whose Relationships name entities the broker would not hold after it."""
        if not self.check_references:
            return
        dangling = [f"{where} -> {target!r}" for where, value in targets
                    for target in (value if isinstance(value, list) else [value]) if target not in held]
        if dangling:
            description = f"Relationship to an entity that does not exist: {', '.join(dangling)}"
            self._invalid.append(f"{request} -> 400: {description}")
            raise _Problem(400, description, invalid=False)

    # Each route validates the request (raising _Problem) and returns the operation to run
    # under the lock once faults and the token check have passed.

    def _version(
        self, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None
    ) -> Callable[[], _Reply]:
        return lambda: _Reply(200, {"orion": {"version": "3.10.1-test", "uptime": "0 d, 0 h, 0 m, 0 s"}})

    def _v2_update(
        self, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None
    ) -> Callable[[], _Reply]:
        tenant = _tenant(headers, "Fiware-Service")
        service_path = _service_path(headers, query=False)
        assert service_path is not None
        options = {o for o in query.get("options", "").split(",") if o}
        if options - V2_OPTIONS:
            raise _Problem(400, f"Invalid value for URI param /options/: {sorted(options - V2_OPTIONS)}")
        body = _json_body(raw, headers, ("application/json",))
        if not isinstance(body, dict):
            raise _Problem(400, "the body must be a JSON object {actionType, entities}")
        issues = [
            f"unknown field {key!r} in the body" for key in body if key not in ("actionType", "entities")
        ]
        action = body.get("actionType")
        if action not in V2_ACTIONS:
            issues.append(f"actionType must be one of {list(V2_ACTIONS)}, not {json.dumps(action)}")
        raw_entities = body.get("entities")
        if not isinstance(raw_entities, list) or not raw_entities:
            raise _Problem(400, "; ".join([*issues, "'entities' must be a non-empty array"]))
        entities = []
        for index, raw_entity in enumerate(raw_entities):
            entity, entity_issues = _v2_entity(
                raw_entity, f"entities[{index}]", delete=action == "delete", key_values="keyValues" in options
            )
            entities.append(entity)
            issues.extend(entity_issues)
        if issues:
            raise _Problem(400, "; ".join(issues))

        def apply() -> _Reply:
            self._check_rejected([e["id"] for e in entities])
            store = copy.deepcopy(self._v2.get((tenant, service_path[0]), {}))
            for index, entity in enumerate(entities):
                _apply_v2(store, str(action), entity, f"entities[{index}]")
            if action != "delete":
                targets = [(f"entities[{i}].{name}", attr.get("value")) for i, e in enumerate(entities)
                           for name, attr in e.items() if isinstance(attr, dict) and attr.get("type") == "Relationship"]
                self._check_references(targets, {entity_id for entity_id, _ in store}, "POST /v2/op/update")
            self._v2[(tenant, service_path[0])] = store
            self._update_count += 1
            return _Reply(204)

        return apply

    def _v2_matches(self, headers: dict[str, str]) -> list[dict[str, Any]]:
        """Entities visible to a v2 query: every service path by default, as in Orion."""
        tenant = _tenant(headers, "Fiware-Service")
        scope = _service_path(headers, query=True)
        found = []
        for (service, stored_path), store in self._v2.items():
            if service != tenant:
                continue
            if scope is not None:
                wanted, subtree = scope
                inside = stored_path == wanted or (
                    subtree and stored_path.startswith(wanted.rstrip("/") + "/")
                )
                if not inside:
                    continue
            found.extend(store.values())
        return found

    @staticmethod
    def _v2_render(entity: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        if "keyValues" in query.get("options", "").split(","):
            return {k: (v if k in ("id", "type") else v["value"]) for k, v in entity.items()}
        return copy.deepcopy(entity)

    def _v2_get(
        self, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None
    ) -> Callable[[], _Reply]:
        entity_id = unquote(path.rsplit("/", 1)[1])
        _tenant(headers, "Fiware-Service")
        _service_path(headers, query=True)

        def apply() -> _Reply:
            found = [
                e
                for e in self._v2_matches(headers)
                if e["id"] == entity_id and query.get("type") in (None, e["type"])
            ]
            if not found:
                raise _Problem(
                    404, "The requested entity has not been found. Check type and id", invalid=False
                )
            if len(found) > 1:
                raise _Problem(409, "More than one matching entity. Please refine your query", invalid=False)
            return _Reply(200, self._v2_render(found[0], query))

        return apply

    def _v2_list(
        self, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None
    ) -> Callable[[], _Reply]:
        _tenant(headers, "Fiware-Service")
        _service_path(headers, query=True)
        try:
            limit, offset = int(query.get("limit", "20")), int(query.get("offset", "0"))
        except ValueError:
            raise _Problem(400, "limit and offset must be integers") from None
        if not 1 <= limit <= 1000 or offset < 0:
            raise _Problem(400, "limit must be 1-1000 (Orion's default is 20) and offset >= 0")

        def apply() -> _Reply:
            found = [e for e in self._v2_matches(headers) if query.get("type") in (None, e["type"])]
            return _Reply(200, [self._v2_render(e, query) for e in found[offset : offset + limit]])

        return apply

    def _ld_upsert(
        self, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None
    ) -> Callable[[], _Reply]:
        tenant = _tenant(headers, "NGSILD-Tenant")
        mode = query.get("options", "replace")
        if mode not in ("replace", "update"):
            raise _Problem(400, f"options must be 'update' or 'replace', not {mode!r}")
        body = _json_body(raw, headers, ("application/json", "application/ld+json"))
        media_type = _media_type(headers)
        _ld_context_link(headers, media_type)
        if not isinstance(body, list) or not body:
            raise _Problem(400, "the body must be a non-empty JSON array of entities")
        issues = []
        for index, entity in enumerate(body):
            issues.extend(_ld_entity(entity, f"[{index}]", ld_json=media_type == "application/ld+json"))
        ids = [e.get("id") for e in body if isinstance(e, dict)]
        for entity_id in sorted({i for i in ids if isinstance(i, str) and ids.count(i) > 1}):
            issues.append(f"entity id {entity_id!r} appears {ids.count(entity_id)} times in one request")
        if issues:
            raise _Problem(400, "; ".join(issues))

        def apply() -> _Reply:
            self._check_rejected(ids)
            targets = [(f"{e['id']}.{name}", attr.get("object")) for e in body
                       for name, attr in e.items() if isinstance(attr, dict) and attr.get("type") == "Relationship"]
            self._check_references(targets, set(self._ld.get(tenant, {})) | set(ids), f"POST {path}")
            store = self._ld.setdefault(tenant, {})
            created = [e["id"] for e in body if e["id"] not in store]
            for entity in body:
                if mode == "update" and entity["id"] in store:
                    store[entity["id"]].update(copy.deepcopy(entity))
                else:
                    store[entity["id"]] = copy.deepcopy(entity)
            self._upsert_count += 1
            return _Reply(201, created) if created else _Reply(204)

        return apply

    def _ld_get(
        self, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes | None
    ) -> Callable[[], _Reply]:
        entity_id = unquote(path.rsplit("/", 1)[1])
        tenant = _tenant(headers, "NGSILD-Tenant")

        def apply() -> _Reply:
            entity = self._ld.get(tenant, {}).get(entity_id)
            if entity is None:
                raise _Problem(404, f"Entity {entity_id!r} not found", invalid=False)
            return _Reply(200, copy.deepcopy(entity))

        return apply


def _apply_v2(
    store: dict[tuple[str, str], dict[str, Any]], action: str, entity: dict[str, Any], where: str
) -> None:
    """Orion's batch semantics for one entity (on a scratch copy of the store)."""
    key = (entity["id"], entity["type"])
    attrs = {name: attr for name, attr in entity.items() if name not in ("id", "type")}
    current = store.get(key)
    if current is None and action not in ("append", "appendStrict"):
        raise _Problem(
            404, f"The requested entity has not been found. Check type and id: {where} {key}", invalid=False
        )
    if action == "appendStrict" and current is not None and set(attrs) & set(current):
        existing = sorted(set(attrs) & set(current))
        raise _Problem(
            422,
            f"one or more of the attributes in the request already exist: {where} {existing}",
            invalid=False,
        )
    if action in ("append", "appendStrict"):
        target = store.setdefault(key, {"id": entity["id"], "type": entity["type"]})
        for name, attr in attrs.items():
            # Orion keeps metadata the request does not mention.
            merged = {**target.get(name, {}).get("metadata", {}), **attr["metadata"]}
            target[name] = {**attr, "metadata": merged}
        return
    assert current is not None
    if action in ("update", "delete") and set(attrs) - set(current):
        missing = sorted(set(attrs) - set(current))
        raise _Problem(422, f"do not exist: {where} {missing}", invalid=False)
    elif action == "update":
        for name, attr in attrs.items():
            current[name] = {**attr, "metadata": {**current[name]["metadata"], **attr["metadata"]}}
    elif action == "replace":
        store[key] = {"id": entity["id"], "type": entity["type"], **attrs}
    elif attrs:  # delete some attributes
        for name in attrs:
            del current[name]
    else:  # delete the entity
        del store[key]


@pytest.fixture
def context_broker() -> Iterator[ContextBroker]:
    """A started :class:`ContextBroker` on a free loopback port, stopped at teardown."""
    with ContextBroker() as broker:
        yield broker
