"""A strict FIWARE IoT Agent double for tests: the HTTP southbound of iotagent-json and iotagent-ul.

It serves ``POST /iot/json`` (JSON) and ``POST /iot/d`` (Ultralight 2.0) on 127.0.0.1 and, like the
real agents (iotagent-json 3.x ``lib/bindings/HTTPBinding.js``, iotagent-ul ``HTTPBindings.js``,
read for this), turns each measure group into one NGSI-v2 update of a context broker (here
:class:`tests.context_broker.ContextBroker`, through ``POST /v2/op/update`` with ``append``) and
answers only once that update returned: ``200`` (``{}`` for JSON, an empty body for Ultralight)
when the broker answered 204, an error ``{"name", "message"}`` otherwise. So a broker that is
down makes the agent answer 500, and an agent that is down refuses the connection.

What the double checks, as the agents do: the ``k`` (API key) and ``i`` (device id) query
parameters, the content type (``application/json`` for JSON; ``text/plain`` for Ultralight), the
payload shape (a flat JSON object, or an array of them; Ultralight ``key|value`` pairs with an
optional leading timestamp, groups joined by ``#``, no empty fields), and that the API key belongs
to a provisioned service group (else 404 ``DEVICE_GROUP_NOT_FOUND``). A device not provisioned
in a known group is provisioned on the fly as the agents do by default (entity ``<type>:<id>``).
Malformed requests are listed in :attr:`IotAgent.invalid`, so ``assert agent.invalid == []``
after a run catches any bad payload from the gateway.

Two behaviours of the real JSON agent are kept on purpose: given an array, it answers as soon as
the *first* group's update returned (so the status says nothing about the others), and a measure
not provisioned gets a text type (``unknown_type``: the agents' DEFAULT_ATTRIBUTE_TYPE, ``string``
in the iotagent-json sources read; ``Text`` here by default, which the strict test broker knows
how to check). Ultralight values are text;
with ``autocast`` (node-lib's ``IOTA_AUTOCAST``) a provisioned ``Number`` or ``Boolean`` is sent
to the broker as a JSON number or boolean.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.context_broker import HOST, Loopback, RecordedRequest, _Handler, _parse_json

JSON_RESOURCE = "/iot/json"
UL_RESOURCE = "/iot/d"
_UL_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})$")


@dataclass
class Group:
    """A provisioned service group (``POST /iot/services``): where its devices' entities live."""

    apikey: str
    entity_type: str
    service: str | None = None
    subservice: str = "/"


@dataclass
class ProvisionedDevice:
    """A provisioned device (``POST /iot/devices``): ``attributes`` maps object_id -> (name, type);
    ``static`` holds static attributes (``{"name", "type", "value"}``), added to every update."""

    device_id: str
    apikey: str
    entity_name: str
    entity_type: str
    attributes: dict[str, tuple[str, str]] = field(default_factory=dict)
    static: list[dict[str, Any]] = field(default_factory=list)


class _AgentError(Exception):
    def __init__(self, status: int, name: str, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.status, self.name, self.message, self.invalid = status, name, message, invalid


class IotAgent(Loopback):
    """An IoT Agent southbound on ``http://127.0.0.1:<port>`` that updates ``broker_url``.

    Provision with :meth:`group` and :meth:`device` (or :meth:`provision` with the body of a
    ``POST /iot/devices``), start, point the gateway at :attr:`url`, then assert on the broker's
    entities, :attr:`requests` and :attr:`invalid`. A restarted agent listens on the same port.
    """

    def __init__(self, broker_url: str, *, port: int = 0, autocast: bool = True, unknown_type: str = "Text") -> None:
        self.broker_url = broker_url
        self.autocast = autocast
        self.unknown_type = unknown_type
        self._port = port
        self._lock = threading.Condition(threading.RLock())  # _Server counts connections under it
        self._connections = 0
        self._groups: dict[str, Group] = {}
        self._devices: dict[tuple[str, str], ProvisionedDevice] = {}
        self._requests: list[RecordedRequest] = []
        self._invalid: list[str] = []
        self._updates = 0

    # -- provisioning --------------------------------------------------------------------------

    def group(self, apikey: str, entity_type: str, service: str | None = None, subservice: str = "/") -> None:
        """Provision a service group."""
        self._groups[apikey] = Group(apikey, entity_type, service, subservice)

    def device(self, device_id: str, apikey: str, entity_name: str, entity_type: str,
               attributes: dict[str, tuple[str, str]] | None = None, static: list[dict[str, Any]] | None = None) -> None:
        """Provision a device of an existing group."""
        if apikey not in self._groups:
            raise ValueError(f"no service group with apikey {apikey!r}")
        self._devices[(apikey, device_id)] = ProvisionedDevice(device_id, apikey, entity_name, entity_type,
                                                               dict(attributes or {}), list(static or []))

    def provision(self, body: dict[str, Any], apikey: str) -> None:
        """Provision the devices of a ``POST /iot/devices`` body (``{"devices": [...]}``), as the agent would."""
        for d in body["devices"]:
            attrs = {a["object_id"]: (a["name"], a["type"]) for a in d.get("attributes", [])}
            self.device(d["device_id"], apikey, d["entity_name"], d["entity_type"], attrs, d.get("static_attributes"))

    # -- lifecycle -----------------------------------------------------------------------------

    label = "iot-agent"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:45678``: the gateway appends /iot/json or /iot/d."""
        if not self._port:
            raise RuntimeError("IoT Agent not started")
        return f"http://{HOST}:{self._port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every southbound request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def invalid(self) -> list[str]:
        """One line per malformed request: ``"POST /iot/json -> 400: <what>"``."""
        with self._lock:
            return list(self._invalid)

    @property
    def updates(self) -> int:
        """Context broker updates that succeeded (one per measure group)."""
        with self._lock:
            return self._updates

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self._lock:
            return self._lock.wait_for(condition, timeout)

    # -- request handling ----------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        headers = {name.lower(): value for name, value in handler.headers.items()}
        length = int(headers.get("content-length", "0") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        ul = url.path == UL_RESOURCE
        try:
            if handler.command != "POST" or url.path not in (JSON_RESOURCE, UL_RESOURCE):
                # express answers unknown routes with its own 404 page, not the agent's JSON error
                status, body, ctype = 404, f"Cannot {handler.command} {url.path}".encode(), "text/html"
            else:
                self._measures(ul, query, headers, raw)
                status, body, ctype = 200, (b"" if ul else b"{}"), ("text/plain" if ul else "application/json")
        except _AgentError as exc:
            status, ctype = exc.status, "application/json"
            body = json.dumps({"name": exc.name, "message": exc.message}).encode()
            if exc.invalid:
                with self._lock:
                    self._invalid.append(f"POST {url.path} -> {status}: {exc.message}")
        with self._lock:
            recorded = raw.decode("utf-8", "replace") if ul else (json.loads(raw) if _is_json(raw) else raw)
            self._requests.append(RecordedRequest(handler.command, url.path, query, headers, recorded, status))
            self._lock.notify_all()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            handler.close_connection = True

    def _measures(self, ul: bool, query: dict[str, str], headers: dict[str, str], raw: bytes) -> None:
        missing = [name for key, name in (("k", "API Key"), ("i", "Device Id")) if not query.get(key)]
        if missing:
            raise _AgentError(400, "MANDATORY_PARAMS_NOT_FOUND",
                              f"Some of the mandatory params weren't found in the request: {missing}", invalid=True)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        wanted = "text/plain" if ul else "application/json"
        if media != wanted:
            raise _AgentError(400, "UNSUPPORTED_CONTENT_TYPE",
                              f"Unsupported content type in the context request: {media or '<none>'} "
                              f"(expected {wanted})", invalid=True)
        groups = _parse_ul(raw) if ul else _parse_json_measures(raw)
        apikey, device_id = query["k"], query["i"]
        group = self._groups.get(apikey)
        if group is None:
            raise _AgentError(404, "DEVICE_GROUP_NOT_FOUND",
                              f"Couldn't find device group for fields: ['resource', 'apikey'] and values: "
                              f"[{(UL_RESOURCE if ul else JSON_RESOURCE)!r}, {apikey!r}]")
        device = self._devices.get((apikey, device_id))
        if device is None:  # autoprovisioned, as the agents do by default
            device = ProvisionedDevice(device_id, apikey, f"{group.entity_type}:{device_id}", group.entity_type)
            self._devices[(apikey, device_id)] = device
        outcomes = [self._update(group, device, measures, ul) for measures in groups]
        if ul:  # the UL agent updates in series and stops at the first failure
            failed = next((o for o in outcomes if o is not None), None)
        else:  # the JSON agent's answer is the first group's, whatever happened to the others
            failed = outcomes[0] if outcomes else None
        if failed is not None:
            raise failed

    def _update(self, group: Group, device: ProvisionedDevice, measures: dict[str, Any], ul: bool) -> _AgentError | None:
        entity: dict[str, Any] = {"id": device.entity_name, "type": device.entity_type}
        entity.update((a["name"], {"type": a["type"], "value": a["value"]}) for a in device.static)
        stamp = measures.pop("TimeInstant", None)
        for object_id, value in measures.items():
            name, kind = device.attributes.get(object_id, (object_id, self.unknown_type))
            if ul and self.autocast:
                value = _autocast(value, kind)
            if kind == self.unknown_type and not isinstance(value, str):
                # Orion would store a Text attribute's number as sent; the strict test broker wants
                # text, and the town sees a Text attribute either way.
                value = json.dumps(value)
            attr: dict[str, Any] = {"type": kind, "value": value}
            if stamp is not None:
                attr["metadata"] = {"TimeInstant": {"type": "DateTime", "value": stamp}}
            entity[name] = attr
        if stamp is not None:
            entity["TimeInstant"] = {"type": "DateTime", "value": stamp}
        headers = {"Content-Type": "application/json", "Fiware-ServicePath": group.subservice}
        if group.service:
            headers["Fiware-Service"] = group.service
        body = json.dumps({"actionType": "append", "entities": [entity]}).encode()
        request = urllib.request.Request(self.broker_url + "/v2/op/update", body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            try:
                text = json.loads(exc.read()).get("description", "")
            except ValueError:
                text = ""
            if 400 <= exc.code < 500 and exc.code not in (401, 403, 404):
                return _AgentError(400, "BAD_REQUEST", f"Request error connecting to the Context Broker: {text}")
            return _AgentError(500, "ENTITY_GENERIC_ERROR",
                               f"Error accesing entity data for device: {device.device_id} of type: "
                               f"{device.entity_type}: HTTP {exc.code} {text}")
        except OSError as exc:
            return _AgentError(500, "ENTITY_GENERIC_ERROR",
                               f"Error accesing entity data for device: {device.device_id}: {exc}")
        if status != 204:  # node-lib treats only 204 as a successful v2 update
            return _AgentError(500, "ENTITY_GENERIC_ERROR", f"unexpected answer {status} from the Context Broker")
        with self._lock:
            self._updates += 1
            self._lock.notify_all()
        return None


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


def _parse_json_measures(raw: bytes) -> list[dict[str, Any]]:
    try:
        data = _parse_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _AgentError(400, "SyntaxError", f"Unexpected token in JSON: {exc}", invalid=True) from None
    groups = data if isinstance(data, list) else [data]
    if not groups or not all(isinstance(g, dict) and g for g in groups):
        raise _AgentError(400, "BAD_REQUEST", "expected a non-empty JSON object or an array of them", invalid=True)
    for g in groups:
        nested = [k for k, v in g.items() if isinstance(v, (dict, list))]
        if nested or ("TimeInstant" in g and not _UL_TIMESTAMP.match(str(g["TimeInstant"]))):
            raise _AgentError(400, "BAD_REQUEST", f"measures must be flat values with an ISO TimeInstant: {g}",
                              invalid=True)
        if len(g) == 1 and "TimeInstant" in g:
            raise _AgentError(400, "BAD_REQUEST", "a group with a timestamp only", invalid=True)
    return [dict(g) for g in groups]


def _parse_ul(raw: bytes) -> list[dict[str, Any]]:
    """Ultralight 2.0 measure groups, as iotagent-ul's parser reads them (strict about empty fields)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _AgentError(400, "PARSE_ERROR", "the payload is not UTF-8", invalid=True) from None
    groups = []
    for part in text.split("#"):
        fields = part.split("|")
        group: dict[str, Any] = {}
        if fields and _UL_TIMESTAMP.match(fields[0]):
            group["TimeInstant"] = fields.pop(0)
        if not fields or len(fields) % 2 or any(f == "" for f in fields):
            raise _AgentError(400, "PARSE_ERROR", f"Error parsing UL payload: {part!r}", invalid=True)
        for key, value in zip(fields[::2], fields[1::2]):
            if key in group:
                raise _AgentError(400, "PARSE_ERROR", f"duplicate measure {key!r} in {part!r}", invalid=True)
            group[key] = value
        groups.append(group)
    return groups


def _autocast(value: Any, kind: str) -> Any:
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if re.fullmatch(r"-?\d+", str(value)) else number
    if kind == "Boolean" and value in ("true", "false"):
        return value == "true"
    return value


@pytest.fixture
def iot_agent(context_broker) -> Iterator[IotAgent]:
    """A started :class:`IotAgent` updating the ``context_broker`` fixture, stopped at teardown."""
    with IotAgent(context_broker.url) as agent:
        yield agent
