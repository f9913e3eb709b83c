"""Config of uplinks: MQTT, files, FIWARE IoT Agents, NGSI context brokers and a Sigfox module.

One pydantic model per uplink type, with the validators that turn an installer's mistake into a
message naming the key and what is expected: long (about 560 lines) because every field explains
itself, and kept together because the types share their connection, batching and routing sections.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgegw.config.base import Delay, Duration, _Section
from edgegw.config.radio import Device
from edgegw.config.rules import AlarmKind, Severity
from edgegw.drivers import DriverRegistry
from edgegw.route import Route
from edgegw.uplink import STALLED_AFTER, fiware

# -- uplinks ----------------------------------------------------------------------------------------

# Items waiting and nothing acknowledged for this long: `edgegw status` and the health report show the
# uplink as stalled, whatever its connection state, so an uplink that wedges is seen.
_STALLED = "items waiting and nothing acknowledged for this long: shown as stalled in status and health"


class Batching(_Section):
    max_items: int = Field(500, ge=1, le=100_000)
    max_bytes: int = Field(256_000, ge=1024, json_schema_extra={"unit": "bytes"})
    max_wait: Delay = Field(1.0, le=60, description="how long new readings wait for more to share their batch "
                            "when everything before them is sent (alarms go at once; 0: every commit its batch)")


class ItemRoute(_Section):
    """Which outbox items an uplink takes (see edgegw.route); a key left out takes every value."""

    kinds: list[Literal["reading", "alarm", "health"]] | None = Field(
        None, min_length=1, description='item kinds, e.g. ["alarm", "health"]')
    alarms: list[AlarmKind] | None = Field(
        None, min_length=1, description='alarm kinds, e.g. ["trap_sprung"]; items that are not alarms pass')
    devices: list[str] | None = Field(
        None, min_length=1, description="device ids; the gateway's own items (health, a damaged database) pass")

    def route(self) -> Route:
        return Route(*(None if v is None else frozenset(v) for v in (self.kinds, self.alarms, self.devices)))


class _Routed(_Section):
    route: ItemRoute = Field(ItemRoute(), description="which items this uplink takes; every item when left out")

    def item_route(self) -> Route:
        """The route in force (an uplink may narrow what it is given, as the Sigfox module does)."""
        return self.route.route()


def _one_secret(section, key: str):
    """A secret is given inline (``key``) or in a file (``key_file``), not both."""
    if getattr(section, key) is not None and getattr(section, f"{key}_file") is not None:
        raise ValueError(f"set {key} or {key}_file, not both")
    return section


def _read_secret(section, key: str) -> str | None:
    """The secret ``key``, from ``key_file`` when given: read at each call, so a rotated one needs no restart."""
    path = getattr(section, f"{key}_file")
    return getattr(section, key) if path is None else path.read_text().strip()


def _broker_address(value: Any) -> Any:
    """A cluster node as "host:port" (or "host", port 1883), checked and split into (host, port)."""
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "1883"
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'expected "host:port" of a broker node, e.g. "mqtt-2.town.example:1883" (got {value!r})')
    return (host, int(port))


BrokerAddress = Annotated[tuple[str, int], BeforeValidator(_broker_address)]


class MqttConnection(_Routed):
    """How to reach an MQTT broker: shared by every uplink that publishes over MQTT.

    One broker is ``host`` (and ``port``); the nodes of a clustered broker are ``brokers``, tried in
    turn: the uplink stays on the node that answers and moves to the next when it dies."""

    host: str
    port: int = Field(1883, ge=1, le=65535)
    brokers: list[BrokerAddress] | None = Field(
        None, min_length=1, description='the nodes of a clustered broker, e.g. ["mqtt-1.town:1883", "mqtt-2.town:1883"]; '
                                        "instead of host and port")
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    keepalive: int = Field(60, ge=5, le=3600, json_schema_extra={"unit": "s"})
    max_inflight: int = Field(4, ge=1, le=64, description="batches awaiting PUBACK at once")
    deadline: Duration = Field(30, description="how long a published message may wait for its PUBACK (counted "
                               "from when its batch is handed to the MQTT client), and a new connection for its "
                               "CONNACK; then the connection is dropped and made again, and the batch sent again")
    stalled_after: Duration = Field(STALLED_AFTER, description=_STALLED)
    batch: Batching = Batching()

    @model_validator(mode="before")
    @classmethod
    def _host_or_brokers(cls, data: Any) -> Any:
        # host and port stay what code and status show for "the broker": the first node of a cluster.
        if not isinstance(data, dict) or data.get("brokers") is None:
            return data
        if "host" in data or "port" in data:
            raise ValueError("set host (and port) for one broker or brokers for the nodes of a cluster, not both")
        first = data["brokers"][0] if isinstance(data["brokers"], list) and data["brokers"] else None
        try:
            host, port = _broker_address(first)
        except (TypeError, ValueError):
            return {**data, "host": ""}  # the brokers entry reports its own problem
        return {**data, "host": host, "port": port}

    @model_validator(mode="after")
    def _one_password(self) -> MqttConnection:
        return _one_secret(self, "password")

    def addresses(self) -> list[tuple[str, int]]:
        """The broker nodes to try, in order (one for a single broker)."""
        return list(self.brokers) if self.brokers else [(self.host, self.port)]

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


class FileUplink(_Routed):
    """Batches appended as JSON lines in a folder: sites with no coverage, collected on a USB stick."""

    type: Literal["file"]
    name: str = Field("file", pattern=r"^[A-Za-z0-9_.-]+$")
    path: Path = Path("batches")
    rotate_bytes: int = Field(10_000_000, ge=4096, json_schema_extra={"unit": "bytes"})
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
        devices = list(devices)
        locations = {d.id: d.location for d in devices if d.location is not None}
        return fiware.FiwareMapping(gateway_id=gateway_id, locations=locations,
                                    drivers={d.id: d.driver for d in devices}, **self._mapping())

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


class HttpConnection(_Routed):
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


# -- the Sigfox module -----------------------------------------------------------------------------

SIGFOX_DAILY_LIMIT = 140  # uplinks a day: the largest Sigfox plan (and the EU 1 % duty cycle it comes from)


class SigfoxAlarm(_Section):
    """When one alarm kind goes over Sigfox, and how dear it is when the day's budget runs short."""

    when: Literal["always", "fallback"] = Field(
        "fallback", description="always: at once; fallback: only if no main uplink acknowledged it within delay")
    delay: Duration = Field(120, description="fallback: how long the main uplinks have to acknowledge it first")
    priority: Literal["urgent", "normal"] = Field(
        "urgent", description="urgent alarms go first and may spend the reserve; normal ones may not")
    min_severity: Severity = Field("informational", description="lower severities of this kind stay off Sigfox")


def _default_sigfox_alarms() -> dict[AlarmKind, SigfoxAlarm]:
    # A sprung trap holds a live animal; the danger stage is the one a town evacuates on.
    return {"trap_sprung": SigfoxAlarm(), "water_level_alarm": SigfoxAlarm(min_severity="critical"),
            "trap_reminder": SigfoxAlarm(delay=600, priority="normal")}


def _never(v: Any) -> Any:
    """``"never"`` for a duration that may be None (TOML has no null)."""
    return None if isinstance(v, str) and v.strip().lower() == "never" else v


class SigfoxUplink(_Routed):
    """A Sigfox module (Wisol WSSFM10R3, RC3) on a serial port: the alarm uplink of last resort.

    It carries alarms only, each as one 12-byte message (edgegw.uplink.sigfox.codec), within a daily
    budget kept in the data directory; everything it sends is delivered over the main uplinks too.
    """

    type: Literal["sigfox"]
    name: str = Field("sigfox", pattern=r"^[A-Za-z0-9_.-]+$")
    port: str | None = Field(None, description='the module\'s serial port, e.g. "/dev/ttyUSB1"')
    simulate: bool = Field(False, description="no module: an emulated one on a pty in the data directory (the demo)")
    baudrate: int = Field(9600, description="the WSSFM10R3 talks 9600 8N1")
    daily_limit: int = Field(SIGFOX_DAILY_LIMIT, ge=1, le=SIGFOX_DAILY_LIMIT,
                             description="messages in any 24 hours, at most your Sigfox plan's")
    reserve: int = Field(20, ge=0, description="the last this many messages of the 24 hours go to urgent alarms only")
    alarms: dict[AlarmKind, SigfoxAlarm] = Field(
        default_factory=_default_sigfox_alarms,
        description='alarm kind -> when it goes, e.g. trap_sprung = { when = "fallback", delay = "2m" }')
    send_timeout: Duration = Field(45, description="how long a send may take the module (3 frames at 100 bit/s, "
                                   "listen-before-talk) before the port is reopened")
    confirm_every: Annotated[Duration | None, BeforeValidator(_never)] = Field(
        86400, description="at most this often a send asks for a downlink, the only proof that the platform "
        'hears the module (it costs ~50 s of the module and one of 4 downlinks a day); "never" for none')

    @field_validator("alarms")
    @classmethod
    def _some_alarms(cls, v: dict[str, SigfoxAlarm]) -> dict[str, SigfoxAlarm]:
        if not v:
            raise ValueError('expected at least one alarm kind, e.g. { trap_sprung = { when = "always" } }')
        return v

    @model_validator(mode="after")
    def _alarms_only(self) -> SigfoxUplink:
        if (self.port is None) == (not self.simulate):
            raise ValueError('expected either port (e.g. port = "/dev/ttyUSB1") or simulate = true, not '
                             + ("both" if self.simulate else "neither"))
        if self.route.kinds is not None and set(self.route.kinds) != {"alarm"}:
            raise ValueError('route.kinds: a Sigfox module carries alarms only (140 short messages a day); '
                             'leave kinds out, or set kinds = ["alarm"]')
        if self.route.alarms is not None:
            raise ValueError("route.alarms: the alarms table says which alarm kinds go over Sigfox; "
                             "leave route.alarms out")
        if self.confirm_every is not None and self.confirm_every < 6 * 3600:
            raise ValueError(f"confirm_every: {self.confirm_every:g} s would ask for more than the 4 downlinks a day "
                             "Sigfox allows; expected at least \"6h\", e.g. \"1d\"")
        if self.reserve >= self.daily_limit:
            raise ValueError(f"reserve: {self.reserve} would keep the whole daily_limit ({self.daily_limit}) for "
                             "urgent alarms; expected fewer, e.g. 20")
        return self

    def serial_port(self, data_dir: Path) -> str:
        """The port to open: ``port``, or the emulated module's pty link when simulating."""
        return self.port if self.port is not None else str(data_dir / f"sigfox-{self.name}.pty")

    def item_route(self) -> Route:
        devices = None if self.route.devices is None else frozenset(self.route.devices)
        return Route(frozenset({"alarm"}), frozenset(self.alarms), devices)


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
    | NgsiV2Uplink | NgsiLdUplink | SigfoxUplink, Field(discriminator="type")
]
UplinkConfig = (MqttUplink | FileUplink | IotaJsonUplink | IotaUlUplink | IotaJsonHttpUplink | IotaUlHttpUplink
                | NgsiV2Uplink | NgsiLdUplink | SigfoxUplink)
UPLINK_TYPES = ("mqtt", "file", "iota-json", "iota-ul", "iota-json-http", "iota-ul-http", "ngsi-v2", "ngsi-ld", "sigfox")
