"""Config of uplinks: MQTT, files, FIWARE IoT Agents and NGSI context brokers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgegw.config.base import Duration, _Section
from edgegw.config.radio import Device
from edgegw.drivers import DriverRegistry
from edgegw.uplink import STALLED_AFTER, fiware

# -- uplinks ----------------------------------------------------------------------------------------

# Items waiting and nothing acknowledged for this long: `edgegw status` and the health report show the
# uplink as stalled, whatever its connection state, so an uplink that wedges is seen.
_STALLED = "items waiting and nothing acknowledged for this long: shown as stalled in status and health"


class Batching(_Section):
    max_items: int = Field(500, ge=1, le=100_000)
    max_bytes: int = Field(256_000, ge=1024)


def _one_secret(section, key: str):
    """A secret is given inline (``key``) or in a file (``key_file``), not both."""
    if getattr(section, key) is not None and getattr(section, f"{key}_file") is not None:
        raise ValueError(f"set {key} or {key}_file, not both")
    return section


def _read_secret(section, key: str) -> str | None:
    """The secret ``key``, from ``key_file`` when given: read at each call, so a rotated one needs no restart."""
    path = getattr(section, f"{key}_file")
    return getattr(section, key) if path is None else path.read_text().strip()


class MqttConnection(_Section):
    """How to reach an MQTT broker: shared by every uplink that publishes over MQTT."""

    host: str
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive: int = Field(60, ge=5, le=3600)
    max_inflight: int = Field(4, ge=1, le=64, description="batches awaiting PUBACK at once")
    deadline: Duration = Field(30, description="how long a published message may wait for its PUBACK (counted "
                               "from when its batch is handed to the MQTT client), and a new connection for its "
                               "CONNACK; then the connection is dropped and made again, and the batch sent again")
    stalled_after: Duration = Field(STALLED_AFTER, description=_STALLED)
    batch: Batching = Batching()

    @model_validator(mode="after")
    def _one_password(self) -> MqttConnection:
        return _one_secret(self, "password")

    def secret(self) -> str | None:
        return _read_secret(self, "password")


class MqttUplink(MqttConnection):
    type: Literal["mqtt"]
    name: str = Field("mqtt", pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field("edgegw/{gateway}/batches", description="{gateway} is replaced by gateway_id")

    @field_validator("topic")
    @classmethod
    def _publishable(cls, v: str) -> str:
        if not v or "#" in v or "+" in v:
            raise ValueError("expected a topic without wildcards (+ or #), e.g. \"town/sensors/{gateway}\"")
        return v


class FileUplink(_Section):
    """Batches appended as JSON lines in a folder: sites with no coverage, collected on a USB stick."""

    type: Literal["file"]
    name: str = Field("file", pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path = Path("batches")
    rotate_bytes: int = Field(10_000_000, ge=4096)
    stalled_after: Duration = Field(STALLED_AFTER, description=_STALLED)
    batch: Batching = Batching()


# -- FIWARE uplinks --------------------------------------------------------------------------------

_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_API_SEGMENTS = ("v2", "ngsi-ld")  # where the API paths edgegw appends itself begin
_URL_EXAMPLE = 'e.g. "http://orion.town.example:1026"'


class AttributeMapping(_Section):
    """How driver value names become IoT Agent object ids or NGSI attribute names."""

    attributes: dict[str, str] = Field({}, description='driver value name -> attribute name, e.g. { level = "wl" }')

    @field_validator("attributes")
    @classmethod
    def _values_exist(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        bad = [f"{k} = {t!r}" for k, t in v.items() if not _ATTRIBUTE_NAME.match(t)]
        if bad:
            raise ValueError(f"attribute names may use letters, digits, _ and - only: {', '.join(bad)}")
        drivers: DriverRegistry | None = (info.context or {}).get("drivers")
        used = sorted({d for d in (info.context or {}).get("device_drivers", ()) if drivers and d in drivers})
        if drivers is None or not used:
            return v  # no devices yet (or their drivers are reported elsewhere): nothing to check against
        produced = sorted({name for d in used for name in drivers[d].values})
        unknown = [k for k in v if k not in produced and k not in fiware.ITEM_MEASURES
                   and not k.startswith(fiware.ITEM_MEASURE_PREFIXES)]
        if unknown:
            raise ValueError(
                f"{', '.join(map(repr, unknown))}: no driver of the configured devices ({', '.join(used)}) produces "
                f"such a value; they produce: {', '.join(produced)}"
            )
        return v

    def fiware_mapping(self, gateway_id: str, devices: Iterable[Device]) -> fiware.FiwareMapping:
        """The mapping for :mod:`edgegw.uplink.fiware`, with the locations of ``[[devices]]``."""
        locations = {d.id: d.location for d in devices if d.location is not None}
        return fiware.FiwareMapping(gateway_id=gateway_id, locations=locations, **self._mapping())

    def _mapping(self) -> dict[str, Any]:
        return {"attributes": dict(self.attributes)}


class EntityTypes(AttributeMapping):
    """Attribute names plus which entity (type and id) a device's readings become: on an IoT Agent,
    what ``scripts/iota-provisioning.py`` provisions, so a device is one entity on every uplink."""

    entity_types: dict[str, str] = Field({}, description='driver -> entity type, e.g. { paddy = "WaterObserved" }')
    entity_id: str = Field("urn:ngsi-ld:{type}:{device}", description="{type}, {device}, {gateway} are filled in")

    @field_validator("entity_types")
    @classmethod
    def _known_types(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        drivers: DriverRegistry | None = (info.context or {}).get("drivers")
        problems = []
        if drivers is not None and (unknown := [k for k in v if k not in drivers]):
            problems.append(f"unknown driver(s) {', '.join(map(repr, unknown))}; "
                            f"known drivers: {', '.join(drivers.names())}")
        if wrong := [f"{t!r} (for {k})" for k, t in v.items() if t not in fiware.READING_TYPES]:
            problems.append(f"unknown entity type {', '.join(wrong)}; "
                            f"supported: {', '.join(sorted(fiware.READING_TYPES))}")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @field_validator("entity_id")
    @classmethod
    def _template(cls, v: str) -> str:
        fiware.FiwareMapping(entity_id=v)  # its ValueError says what is wrong
        return v

    def _mapping(self) -> dict[str, Any]:
        return {"attributes": dict(self.attributes), "entity_types": dict(self.entity_types),
                "entity_id": self.entity_id}


class EntityMapping(EntityTypes):
    """Attribute names plus how readings and alarms become NGSI entities."""

    alert_categories: dict[str, str | tuple[str, str]] = Field(
        {}, description='rule name or alarm kind -> SDM Alert category, or [category, subCategory]')

    @field_validator("alert_categories")
    @classmethod
    def _categories(cls, v: dict[str, str | tuple[str, str]]) -> dict[str, str | tuple[str, str]]:
        wrong = [f"{k} = {c!r}" for k, c in v.items()
                 if (c if isinstance(c, str) else c[0]) not in fiware.ALERT_CATEGORY_NAMES]
        if wrong:
            raise ValueError(f"unknown SDM Alert category: {', '.join(wrong)}; "
                             f"expected one of {', '.join(sorted(fiware.ALERT_CATEGORY_NAMES))}")
        return v

    def _mapping(self) -> dict[str, Any]:
        categories = {k: (c, None) if isinstance(c, str) else (c[0], c[1]) for k, c in self.alert_categories.items()}
        return {"attributes": dict(self.attributes), "entity_types": dict(self.entity_types),
                "entity_id": self.entity_id, "alert_categories": categories}


def _check_apikey(v: str) -> str:
    # It travels in an MQTT topic or a URL query: none of the characters that would change either.
    if not v or any(c in "/+#&?=%" or c.isspace() for c in v):
        raise ValueError("expected the service group's API key, without / + # & ? = % or spaces, "
                         f'e.g. "4jggokgpepnvsb2uv4s40d59ov" (got {v!r})')
    return v


class IotAgentUplink(MqttConnection, EntityTypes):
    """Measures to a FIWARE IoT Agent over MQTT: one message per device and batch, QoS 1.

    The PUBACK is the MQTT broker's, not the agent's: see :data:`edgegw.uplink.ACKNOWLEDGEMENTS`.
    """

    apikey: str = Field(description="the API key of the IoT Agent's service group")
    topic: str = Field(description="{apikey} and {device} are filled in")

    @field_validator("apikey")
    @classmethod
    def _apikey(cls, v: str) -> str:
        return _check_apikey(v)

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        try:
            v.format(apikey="k", device="d")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"use only {{apikey}} and {{device}} in the topic (got {v!r})") from None
        if "{device}" not in v or "#" in v or "+" in v:
            raise ValueError("the IoT Agent tells devices apart by topic: it needs {device} and no wildcards, "
                             f'e.g. "/{{apikey}}/{{device}}/attrs" (got {v!r})')
        return v


class IotaJsonUplink(IotAgentUplink):
    """IoT Agent JSON: ``{"level": 412, "TimeInstant": ...}``.

    The default topic is the classic form; the agent's current docs name ``/json/{apikey}/{device}/attrs``:
    check the deployed version.
    """

    type: Literal["iota-json"]
    name: str = Field("iota-json", pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field("/{apikey}/{device}/attrs", description="{apikey} and {device} are filled in")


class IotaUlUplink(IotAgentUplink):
    """IoT Agent Ultralight 2.0: ``<time>|level|412|battery|3.6``."""

    type: Literal["iota-ul"]
    name: str = Field("iota-ul", pattern=r"^[A-Za-z0-9_.-]+$")
    topic: str = Field("/ul/{apikey}/{device}/attrs", description="{apikey} and {device} are filled in")


def _base_url(v: str, what: str, whose: str, api_segments: tuple[str, ...], api_paths: str, example: str) -> str:
    """The base URL of an HTTP endpoint (``what``), without a trailing slash; edgegw appends the API
    paths (``api_paths``) itself, so a URL that already holds one of ``api_segments`` is refused."""
    parts = urlsplit(v.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected the http:// or https:// base URL of {what}, {example} (got {v!r})")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"the port in {v!r} is not a number from 1 to 65535; {example}") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("put no user or password in the URL: set token or token_file (sent as X-Auth-Token)")
    if parts.query or parts.fragment:
        raise ValueError(f"expected a base URL without ?query or #fragment, {example} (got {v!r})")
    segments = parts.path.split("/")
    api = next((i for i, seg in enumerate(segments) if seg in api_segments), None)
    if api is not None:
        base = f"{parts.scheme}://{parts.netloc}{'/'.join(segments[:api])}"
        raise ValueError(f"edgegw adds the API path ({api_paths}) itself: set url to {whose} base URL, "
                         f"\"{base}\" (got {v!r})")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _broker_url(v: str) -> str:
    """The base URL of a context broker, without a trailing slash."""
    return _base_url(v, "the context broker", "the broker's", _API_SEGMENTS,
                     "/v2/op/update or /ngsi-ld/v1/entityOperations/upsert", _URL_EXAMPLE)


def _agent_url(v: str) -> str:
    """The base URL of an IoT Agent's HTTP southbound (port 7896 by default), without a trailing slash."""
    return _base_url(v, "the IoT Agent's HTTP southbound", "the agent's", ("iot",), "/iot/json or /iot/d",
                     'e.g. "http://iota.town.example:7896"')


def _tenant_name(v: str | None, header: str) -> str | None:
    if v is not None and not re.fullmatch(r"[a-z0-9_]{1,50}", v):
        raise ValueError(f"{header}: expected 1-50 lowercase letters, digits or _ (FIWARE tenant rules; "
                         f'Orion folds case), e.g. "kamikawa" (got {v!r})')
    return v


class HttpConnection(_Section):
    """How to reach a FIWARE component over HTTP: shared by the NGSI and IoT Agent HTTP uplinks."""

    url: str = Field(description="the base URL; edgegw appends the API path")
    token: str | None = Field(None, description="sent as X-Auth-Token")
    token_file: Path | None = None
    timeout: Duration = Field(10, description="for connecting, and for each wait on the socket while sending or reading")
    deadline: Duration = Field(60, description="for the whole request, however slowly the answer trickles in; then "
                               "the connection is dropped and the batch sent again")
    stalled_after: Duration = Field(STALLED_AFTER, description=_STALLED)
    verify_tls: bool = True
    ca_file: Path | None = None
    batch: Batching = Batching()

    @model_validator(mode="after")
    def _one_token(self) -> HttpConnection:
        return _one_secret(self, "token")

    def secret(self) -> str | None:
        """The X-Auth-Token (see :func:`_read_secret`)."""
        return _read_secret(self, "token")


class NgsiConnection(HttpConnection, EntityMapping):
    """How to reach a context broker over HTTP: shared by the NGSI-v2 and NGSI-LD uplinks."""

    url: str = Field(description="the context broker's base URL")

    @field_validator("url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _broker_url(v)


class IotAgentHttpUplink(HttpConnection, EntityTypes):
    """Measures to a FIWARE IoT Agent's HTTP southbound: the agent answers only after it updated the
    context broker, so its 2xx is an acknowledgement from the platform (see edgegw.uplink.iota_http)."""

    url: str = Field(description="the IoT Agent's HTTP southbound base URL (port 7896 by default)")
    apikey: str = Field(description="the API key of the IoT Agent's service group")

    @field_validator("url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return _agent_url(v)

    @field_validator("apikey")
    @classmethod
    def _apikey(cls, v: str) -> str:
        return _check_apikey(v)


class IotaJsonHttpUplink(IotAgentHttpUplink):
    """IoT Agent JSON over HTTP: ``POST {url}/iot/json?k={apikey}&i={device}``, one measure group each."""

    type: Literal["iota-json-http"]
    name: str = Field("iota-json-http", pattern=r"^[A-Za-z0-9_.-]+$")


class IotaUlHttpUplink(IotAgentHttpUplink):
    """IoT Agent Ultralight 2.0 over HTTP: ``POST {url}/iot/d?k={apikey}&i={device}``, ``text/plain``."""

    type: Literal["iota-ul-http"]
    name: str = Field("iota-ul-http", pattern=r"^[A-Za-z0-9_.-]+$")


class NgsiV2Uplink(NgsiConnection):
    """NGSI-v2 (Orion): ``POST /v2/op/update`` with ``actionType: append``."""

    type: Literal["ngsi-v2"]
    name: str = Field("ngsi-v2", pattern=r"^[A-Za-z0-9_.-]+$")
    service: str | None = Field(None, description="Fiware-Service (tenant)")
    service_path: str = Field("/", description="Fiware-ServicePath")

    @field_validator("service")
    @classmethod
    def _service(cls, v: str | None) -> str | None:
        return _tenant_name(v, "Fiware-Service")

    @field_validator("service_path")
    @classmethod
    def _service_path(cls, v: str) -> str:
        example = 'e.g. "/" or "/rivers/kamo"'
        if "#" in v or "," in v:
            raise ValueError(f"an update goes to exactly one service path (# and , are for queries), {example}")
        if not v.startswith("/") or (v != "/" and v.endswith("/")):
            raise ValueError(f"expected an absolute path that starts with / and does not end with /, {example} "
                             f"(got {v!r})")
        segments = v[1:].split("/") if v != "/" else []
        if len(segments) > 10 or not all(re.fullmatch(r"[A-Za-z0-9_]{1,50}", s) for s in segments):
            raise ValueError(f"expected at most 10 levels of 1-50 letters, digits or _, {example} (got {v!r})")
        return v


class NgsiLdUplink(NgsiConnection):
    """NGSI-LD: ``POST /ngsi-ld/v1/entityOperations/upsert``, the @context in every entity."""

    type: Literal["ngsi-ld"]
    name: str = Field("ngsi-ld", pattern=r"^[A-Za-z0-9_.-]+$")
    tenant: str | None = Field(None, description="NGSILD-Tenant")
    context: str | list[str] = Field(fiware.LD_CORE_CONTEXT, description="@context URL(s)")

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        return _tenant_name(v, "NGSILD-Tenant")

    @field_validator("context")
    @classmethod
    def _context_urls(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls or any(urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).netloc for u in urls):
            raise ValueError(f"expected the URL of an @context, or a list of them, e.g. \"{fiware.LD_CORE_CONTEXT}\"")
        return v

    @field_validator("entity_id")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", v):
            raise ValueError("NGSI-LD entity ids are URIs: start the template with a scheme, "
                             f'e.g. "urn:ngsi-ld:{{type}}:{{device}}" (got {v!r})')
        return v


_FIWARE_TYPES = ("iota-json", "iota-ul", "iota-json-http", "iota-ul-http", "ngsi-v2", "ngsi-ld")


def entity_type_problems(uplinks: list) -> list[str]:
    """FIWARE uplinks of one config that would make one device two different entities.

    On plain dicts (see ``cross_reference_problems``): a device must be the same entity type, with
    the same id, on every path to the platform, or the town's dashboards see two things.
    """
    fiware_uplinks = [(i, u) for i, u in enumerate(uplinks) if isinstance(u, dict) and u.get("type") in _FIWARE_TYPES]
    if len(fiware_uplinks) < 2:
        return []
    drivers = sorted({d for _, u in fiware_uplinks if isinstance(u.get("entity_types"), dict)
                      for d in u["entity_types"]})
    problems = []
    first, f = fiware_uplinks[0]
    for i, u in fiware_uplinks[1:]:
        for key, default in (("entity_id", "urn:ngsi-ld:{type}:{device}"),):
            if u.get(key, default) != f.get(key, default):
                problems.append(f"uplinks[{i}].{key}: {u.get(key, default)!r} here but {f.get(key, default)!r} on "
                                f"uplinks[{first}]: a device must be one entity on every uplink; use the same {key}")
        types_here, types_first = u.get("entity_types") or {}, f.get("entity_types") or {}
        if not isinstance(types_here, dict) or not isinstance(types_first, dict):
            continue
        for d in drivers:
            here = types_here.get(d) or fiware.DEFAULT_TYPES.get(d) or fiware.GENERIC_TYPE
            there = types_first.get(d) or fiware.DEFAULT_TYPES.get(d) or fiware.GENERIC_TYPE
            if here != there and {here, there} <= set(fiware.READING_TYPES):  # an unknown type is reported alone
                problems.append(f"uplinks[{i}].entity_types: {d!r} is {here!r} here but {there!r} on uplinks[{first}]: "
                                f"a device must be one entity type on every uplink; set {d} = \"{there}\" (or change "
                                f"uplinks[{first}])")
    return problems


Uplink = Annotated[
    MqttUplink | FileUplink | IotaJsonUplink | IotaUlUplink | IotaJsonHttpUplink | IotaUlHttpUplink
    | NgsiV2Uplink | NgsiLdUplink, Field(discriminator="type")
]
UplinkConfig = (MqttUplink | FileUplink | IotaJsonUplink | IotaUlUplink | IotaJsonHttpUplink | IotaUlHttpUplink
                | NgsiV2Uplink | NgsiLdUplink)
UPLINK_TYPES = ("mqtt", "file", "iota-json", "iota-ul", "iota-json-http", "iota-ul-http", "ngsi-v2", "ngsi-ld")
