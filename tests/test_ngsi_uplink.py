"""The NGSI-v2 / NGSI-LD uplink against the strict test context broker (tests/context_broker.py).

What the broker stored is compared with the values the drivers decoded (not with the payload
builders' own output); the broker validates every request (Orion's rules, filip's models).
"""

# ruff: noqa: F811  (the context_broker fixture is imported, then named as a test argument)

from __future__ import annotations

import email.utils
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from urllib3 import HTTPHeaderDict

from edgegw.config import Device, NgsiLdUplink, NgsiV2Uplink
from edgegw.errors import PermanentUplinkError, TransientUplinkError, UplinkError
from edgegw.items import Batch
from edgegw.uplink.fiware import SDM_CONTEXTS
from edgegw.uplink.ngsi import MAX_REQUEST_BYTES, NgsiUplink, classify, retry_after_seconds
from tests.broker import free_port
from tests.context_broker import ContextBroker, context_broker  # noqa: F401
from tests.gateway import wait_until
from tests.test_fiware import CONTEXT, KAGAWA, alarm, kv_v2, ld_context, sdm_violations, trap, water

OBSERVED = "2025-06-01T03:00:00.000Z"  # observed_at of the fixture readings
DEVICES = [Device(id="river-1", address=1, driver="water_level", location=KAGAWA),
           Device(id="trap-017", address=2, driver="trap", location=KAGAWA)]
RIVER = "urn:ngsi-ld:WaterObserved:river-1"
TRAP = "urn:ngsi-ld:Device:trap-017"


class Results:
    """Collects on_result / on_state calls and lets a test wait for them."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.results: list[tuple[str, UplinkError | None]] = []
        self.states: list[tuple[str, str]] = []

    def on_result(self, batch_id: str, error: UplinkError | None) -> None:
        with self.cond:
            self.results.append((batch_id, error))
            self.cond.notify_all()

    def on_state(self, state: str, detail: str) -> None:
        with self.cond:
            self.states.append((state, detail))

    def wait(self, batch_id: str, timeout: float = 10.0) -> UplinkError | None:
        with self.cond:
            assert self.cond.wait_for(lambda: any(b == batch_id for b, _ in self.results), timeout), \
                f"no result for {batch_id} within {timeout}s; states {self.states}"
            found = [e for b, e in self.results if b == batch_id]
        assert len(found) == 1, f"{len(found)} results for one batch"
        return found[0]


def v2(url: str, **over: Any) -> NgsiV2Uplink:
    return NgsiV2Uplink.model_validate({"type": "ngsi-v2", "url": url, **over})


def ld(url: str, **over: Any) -> NgsiLdUplink:
    return NgsiLdUplink.model_validate({"type": "ngsi-ld", "url": url, **over})


@pytest.fixture
def running():
    """start(config) -> (uplink, results); every uplink started is stopped at teardown."""
    started: list[NgsiUplink] = []

    def start(config: NgsiV2Uplink | NgsiLdUplink) -> tuple[NgsiUplink, Results]:
        uplink = NgsiUplink(config, config.fiware_mapping("gw-1", DEVICES))
        results = Results()
        uplink.start(results.on_result, results.on_state)
        started.append(uplink)
        return uplink, results

    yield start
    for uplink in started:
        uplink.stop()


def batch(items: list[dict[str, Any]], batch_id: str = "b1") -> Batch:
    return Batch(batch_id, "gw-1", [json.dumps(i, ensure_ascii=False) for i in items])


def metadata(attr: dict[str, Any]) -> dict[str, Any]:
    return {k: m["value"] for k, m in attr.get("metadata", {}).items()}


# -- what arrives --------------------------------------------------------------------------------------

def test_v2_entities_carry_the_decoded_values_units_times_and_headers(running):
    with ContextBroker(token="s3cret") as broker:
        uplink, results = running(v2(broker.url, service="town", service_path="/rivers/kamo", token="s3cret"))
        uplink.send(batch([water(1234), trap("sprung")]))
        assert results.wait("b1") is None
        assert broker.invalid == []

        river = broker.entity(RIVER, service="town", service_path="/rivers/kamo")
        assert river is not None and river["type"] == "WaterObserved"
        # 1234 mm as the SDM waterLevel in metres; the other values as decoded, in their Rec 20 units
        assert river["waterLevel"]["value"] == pytest.approx(1.234)
        assert metadata(river["waterLevel"]) == {"unitCode": "MTR", "TimeInstant": OBSERVED}
        assert river["water_temperature"]["value"] == 23.0
        assert metadata(river["water_temperature"]) == {"unitCode": "CEL", "TimeInstant": OBSERVED}
        assert river["battery"]["value"] == 3.5
        assert metadata(river["battery"]) == {"unitCode": "VLT", "TimeInstant": OBSERVED}
        assert river["dateObserved"]["value"] == OBSERVED
        assert river["location"]["value"] == {"type": "Point", "coordinates": [KAGAWA[1], KAGAWA[0]]}
        assert sdm_violations(kv_v2(river)) == []

        # refDevice names an entity that exists: the gateway sent the gauge's Device entity too
        gauge = broker.entity(river["refDevice"]["value"], service="town", service_path="/rivers/kamo")
        assert gauge is not None and gauge["controlledProperty"]["value"] == ["waterLevel", "temperature"]
        assert sdm_violations(kv_v2(gauge)) == []

        device = broker.entity(TRAP, service="town", service_path="/rivers/kamo")
        assert device is not None and device["deviceState"]["value"] == "sprung"
        assert device["rssi"]["value"] == -97.0 and device["tamper"]["value"] is False
        assert sdm_violations(kv_v2(device)) == []

        (request,) = broker.requests
        assert (request.method, request.path) == ("POST", "/v2/op/update")
        assert request.headers["fiware-service"] == "town"
        assert request.headers["fiware-servicepath"] == "/rivers/kamo"
        assert request.headers["x-auth-token"] == "s3cret"
        assert request.body["actionType"] == "append"
        assert ("up", f"{broker.url}/v2/op/update") in results.states


def test_v2_alarm_becomes_an_alert_entity(context_broker, running):
    uplink, results = running(v2(context_broker.url, alert_categories={"traps": ["agriculture", "fertilisation"]}))
    uplink.send(batch([alarm()]))
    assert results.wait("b1") is None
    (alert,) = context_broker.entities(type="Alert")
    assert alert["alertSource"]["value"] == TRAP
    assert (alert["category"]["value"], alert["subCategory"]["value"]) == ("agriculture", "fertilisation")
    assert alert["dateIssued"]["value"] == "2025-06-01T03:00:00.000Z"
    assert context_broker.invalid == []


def test_ld_entities_carry_values_units_observed_at_and_context(context_broker, running):
    uplink, results = running(ld(context_broker.url, tenant="town", context=CONTEXT))
    # Two readings of one river: two upsert rounds (an id at most once per request), in order.
    uplink.send(batch([water(1000), trap("armed"), water(1500)]))
    assert results.wait("b1") is None
    assert context_broker.invalid == []
    assert context_broker.upsert_count == 2

    river = context_broker.ld_entity(RIVER, tenant="town")
    assert river is not None and river["@context"] == ld_context("WaterObserved")
    assert river["waterLevel"] == {"type": "Property", "value": 1.5, "unitCode": "MTR", "observedAt": OBSERVED}
    assert river["water_temperature"] == {"type": "Property", "value": 23.0, "unitCode": "CEL",
                                          "observedAt": OBSERVED}
    assert river["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:river-1"}
    device = context_broker.ld_entity(TRAP, tenant="town")
    assert device is not None and device["deviceState"]["value"] == "armed"
    assert device["@context"] == ld_context("Device")
    gauge = context_broker.ld_entity("urn:ngsi-ld:Device:river-1", tenant="town")
    assert gauge is not None and gauge["@context"] == ld_context("Device")
    for request in context_broker.requests:
        assert request.path == "/ngsi-ld/v1/entityOperations/upsert"
        assert request.query == {"options": "update"}
        assert request.headers["content-type"] == "application/ld+json"
        assert request.headers["ngsild-tenant"] == "town"


def test_ld_context_covers_every_vocabulary_the_entities_use(context_broker, running):
    uplink, results = running(ld(context_broker.url))  # the configured @context: the core one only
    uplink.send(batch([water(1000), trap(), alarm(), alarm("water_level_alarm", "river-1")]))
    assert results.wait("b1") is None
    assert context_broker.invalid == []  # the broker checks each type and SDM term against its @context
    core = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
    contexts = {e["type"]: e["@context"] for e in context_broker.ld_entities()}
    assert contexts == {"WaterObserved": [SDM_CONTEXTS["WaterObserved"], core], "Device": [SDM_CONTEXTS["Device"], core],
                        "Alert": [SDM_CONTEXTS["Alert"], core]}


def test_ld_upserts_merge_and_keep_what_the_town_added(context_broker, running):
    uplink, results = running(ld(context_broker.url, context=CONTEXT))
    uplink.send(batch([water(1000)]))
    assert results.wait("b1") is None
    # The town names the gauge in its broker: an attribute edgegw knows nothing about.
    town = {"id": RIVER, "type": "WaterObserved", "name": {"type": "Property", "value": "新橋水位観測所"},
            "@context": ld_context("WaterObserved")}
    status, _ = post_ld(context_broker, [town], options="update")
    assert status == 204
    uplink.send(batch([water(1200)], "b2"))
    assert results.wait("b2") is None
    river = context_broker.ld_entity(RIVER)
    assert river["name"]["value"] == "新橋水位観測所" and river["waterLevel"]["value"] == 1.2
    assert context_broker.invalid == []


def test_a_batch_over_the_request_limit_is_split_and_all_of_it_arrives(context_broker, running):
    # 40 alarms with 30 kB messages: over Orion's 1 MB, so more than one request
    items = [alarm(id=f"trap-017:trap_sprung:{i}", message="わなが作動しました" * 1200) for i in range(40)]
    uplink, results = running(v2(context_broker.url))
    bodies = uplink.bodies(items)
    assert len(bodies) > 1 and all(len(b) <= MAX_REQUEST_BYTES for b in bodies)
    uplink.send(batch(items))
    assert results.wait("b1", timeout=30) is None
    # one request more: the Device entity the Alerts name, first and on its own
    assert context_broker.update_count == len(bodies) + 1 == len(uplink.requests(batch(items)))
    assert len(context_broker.entities(type="Alert")) == 40
    assert context_broker.invalid == []


# -- failures ------------------------------------------------------------------------------------------

def test_503_with_retry_after_is_transient_and_holds_the_uplink(context_broker, running):
    uplink, results = running(v2(context_broker.url))
    context_broker.fail_next(503, retry_after=1)
    uplink.send(batch([trap()]))
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError) and error.retry_after == 1
    assert "HTTP 503" in str(error) and "fault injected" in str(error)
    assert not uplink.ready()  # the broker asked for a second's rest
    assert results.states[-1][0] == "down"
    wait_until(uplink.ready, 5, "the Retry-After to pass")
    uplink.send(batch([trap()], "b2"))
    assert results.wait("b2") is None
    assert results.states[-1][0] == "up" and context_broker.entity(TRAP) is not None


def test_connection_refused_is_transient(running):
    uplink, results = running(v2(f"http://127.0.0.1:{free_port()}"))
    uplink.send(batch([trap()]))
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError) and error.retry_after is None
    assert "refused" in str(error).lower()
    assert results.states[-1][0] == "down" and "refused" in results.states[-1][1].lower()
    assert uplink.ready()  # nothing to wait for but the forwarder's own backoff


@pytest.mark.parametrize("make", [v2, ld], ids=["v2", "ld"])
def test_an_entity_the_broker_refuses_is_permanent_with_its_description(context_broker, running, make):
    context_broker.reject_entity(TRAP, 400, "trap-017 is not provisioned in this service")
    uplink, results = running(make(context_broker.url))
    uplink.send(batch([trap()]))
    error = results.wait("b1")
    assert isinstance(error, PermanentUplinkError)
    assert "HTTP 400" in str(error) and "trap-017 is not provisioned in this service" in str(error)
    assert results.states[-1][0] == "up"  # the broker answers: it is the payload it refuses


def test_slow_broker_beyond_the_timeout_is_transient(context_broker, running):
    uplink, results = running(v2(context_broker.url, timeout=0.3))
    context_broker.slow(3)
    uplink.send(batch([trap()]))
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError) and "timed out" in str(error)
    context_broker.clear_faults()
    uplink.send(batch([trap()], "b2"))
    assert results.wait("b2") is None


@contextmanager
def raw_peer(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A peer on 127.0.0.1 that reads one whole request, then lets ``answer`` write what it will on
    the socket, and closes; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, body = request.split(b"\r\n\r\n", 1)
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            while len(body) < length:  # all of it read: a close with unread data would be a reset
                body += conn.recv(65536)
            answer(conn)
    server = threading.Thread(target=serve)
    server.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        server.join(10)


def test_an_answer_cut_at_the_deadline_is_not_an_acknowledgement_even_when_it_parses(running):
    """A 200 whose body runs until the connection closes, trickled: the deadline's shutdown reads as
    that close, so the truncated answer parses whole; it must still fail, the batch to go again."""
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
            while not stop.wait(0.2):
                conn.sendall(b" ")
        except OSError:  # the uplink gave up
            pass
    try:
        with raw_peer(trickle) as url:
            uplink, results = running(v2(url, timeout=1, deadline=1.5))
            uplink.send(batch([trap()]))
            error = results.wait("b1", timeout=30)
            stop.set()
        assert isinstance(error, TransientUplinkError) and "deadline" in str(error), error
        assert results.states[-1][0] == "down"
    finally:
        stop.set()


@pytest.mark.parametrize("answer", [b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"])
def test_an_answer_whose_headers_never_end_is_not_an_acknowledgement(running, answer):
    with raw_peer(lambda conn: conn.sendall(answer)) as url:  # and the connection closes
        uplink, results = running(v2(url, timeout=5, deadline=10))
        uplink.send(batch([trap()]))
        error = results.wait("b1", timeout=30)
    assert isinstance(error, TransientUplinkError) and "cut short" in str(error), error


def test_wrong_token_is_transient_not_a_reason_to_park_items(running, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    with ContextBroker(token="new") as broker:
        uplink, results = running(v2(broker.url, token_file=str(token_file)))
        uplink.send(batch([trap()]))
        error = results.wait("b1")
        assert isinstance(error, TransientUplinkError) and "HTTP 401" in str(error) and "check token" in str(error)
        token_file.write_text("new\n")  # rotated on disk: read again for the next request
        uplink.send(batch([trap()], "b2"))
        assert results.wait("b2") is None


def test_an_item_that_cannot_be_mapped_fails_permanently(context_broker, running):
    uplink, results = running(v2(context_broker.url))
    uplink.send(batch([trap(device="trap 17")]))
    error = results.wait("b1")
    assert isinstance(error, PermanentUplinkError) and "trap 17" in str(error)
    assert context_broker.requests == []


def test_one_connection_is_reused_for_every_batch(context_broker, running):
    uplink, results = running(v2(context_broker.url))
    for n in range(5):
        uplink.send(batch([water(1000 + n)], f"b{n}"))
        assert results.wait(f"b{n}") is None
    assert context_broker.update_count == 5
    assert context_broker.connections == 1


def test_stop_reports_every_queued_batch_once(context_broker, running):
    uplink, results = running(v2(context_broker.url))
    context_broker.slow(0.3)
    for n in range(4):
        uplink.send(batch([trap()], f"b{n}"))
    uplink.stop()
    assert sorted(b for b, _ in results.results) == ["b0", "b1", "b2", "b3"]
    assert any(isinstance(e, TransientUplinkError) and "stopped" in str(e) for _, e in results.results)


# -- TLS ---------------------------------------------------------------------------------------------

@pytest.fixture
def https_broker(tmp_path):
    """A tiny HTTPS endpoint on 127.0.0.1 with a self-signed certificate; answers 204 to any POST."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join()


def test_tls_is_verified_by_default_and_a_ca_file_makes_a_private_ca_work(https_broker, running):
    url, cert = https_broker
    uplink, results = running(v2(url))
    uplink.send(batch([trap()]))
    error = results.wait("b1")
    assert isinstance(error, TransientUplinkError) and "certificate verify failed" in str(error).lower()

    uplink, results = running(v2(url, ca_file=str(cert)))
    uplink.send(batch([trap()]))
    assert results.wait("b1") is None

    uplink, results = running(v2(url, verify_tls=False))
    uplink.send(batch([trap()]))
    assert results.wait("b1") is None


# -- classification ------------------------------------------------------------------------------------

# The headers of an answer that came whole (urllib3 looks them up without regard to case).
WHOLE = HTTPHeaderDict({"Date": "Sat, 05 Dec 2026 08:00:00 GMT", "Content-Length": "0"})

@pytest.mark.parametrize(("status", "kind"), [
    (200, None), (201, None), (204, None),
    (500, TransientUplinkError), (502, TransientUplinkError), (503, TransientUplinkError),
    (429, TransientUplinkError), (401, TransientUplinkError), (404, TransientUplinkError),
    (301, TransientUplinkError),
    (400, PermanentUplinkError), (413, PermanentUplinkError), (422, PermanentUplinkError),
    (207, PermanentUplinkError),
])
def test_answers_are_classified(status, kind):
    error = classify(status, WHOLE, b"")
    assert (error is None) if kind is None else isinstance(error, kind)


def test_a_2xx_cut_short_is_no_acknowledgement():
    # A peer that sends "HTTP/1.1 204 No Content" (or a 200 and one header) and closes: http.client
    # takes the close for the end of the headers.
    assert isinstance(classify(204, HTTPHeaderDict(), b""), TransientUplinkError)
    cut = HTTPHeaderDict({"Content-Type": "application/json"})
    assert "cut short" in str(classify(200, cut, b""))
    chunked = HTTPHeaderDict({"Date": "Sat, 05 Dec 2026 08:00:00 GMT", "Transfer-Encoding": "chunked"})
    assert classify(200, chunked, b"{}") is None and classify(204, HTTPHeaderDict({"Date": "x"}), b"") is None


def test_an_agent_s_error_in_a_2xx_is_not_an_acknowledgement():
    # iotagent-node-lib answers 200 with EntityGenericError when its context broker's 404 has no Orion body.
    body = b'{"name":"ENTITY_GENERIC_ERROR","message":"Error accesing entity data for device: dev1"}'
    error = classify(200, WHOLE, body)
    assert isinstance(error, TransientUplinkError) and "ENTITY_GENERIC_ERROR" in str(error)
    assert classify(200, WHOLE, b'{"name":"ok","message":"a command"}') is None
    assert classify(200, WHOLE, b"{}") is None and classify(201, WHOLE, b'["urn:a"]') is None


def test_error_text_is_the_brokers_own():
    orion = classify(422, {}, b'{"error":"Unprocessable","description":"do not exist: E1 - [ A ]"}')
    assert str(orion) == "HTTP 422: Unprocessable: do not exist: E1 - [ A ]"
    problem = classify(400, {}, b'{"type":"https://uri.etsi.org/ngsi-ld/errors/BadRequestData",'
                                b'"title":"Bad Request","detail":"no @context"}')
    assert str(problem) == "HTTP 400: Bad Request: no @context"
    partial = classify(207, {}, b'{"success":["urn:a"],"errors":[{"entityId":"urn:b",'
                                b'"error":{"title":"Bad Request","detail":"bad unitCode"}}]}')
    assert "urn:b: Bad Request: bad unitCode" in str(partial)
    assert str(classify(400, {}, b"<html>nope</html>")) == "HTTP 400: <html>nope</html>"


def test_a_broker_that_cannot_fetch_an_at_context_is_retried_not_parked():
    # Scorpio answers a batch whose contexts it cannot download with a 207 of LdContextNotAvailable
    # (503) per entity; a broker without internet access would have every reading parked.
    unavailable = b'{"type":"https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable","title":"LD context not available."}'
    partial = b'{"success":[],"errors":[{"entityId":"urn:a","error":' + unavailable + b'},' \
              b'{"entityId":"urn:b","error":{"title":"Internal","status":503}}]}'
    for status, body in ((207, partial), (400, unavailable), (504, unavailable)):
        assert isinstance(classify(status, {}, body), TransientUplinkError), (status, body)
    # One entity refused for its data among them: the batch is split to park that one.
    mixed = partial.replace(b'"status":503', b'"status":400')
    assert isinstance(classify(207, {}, mixed), PermanentUplinkError)


def test_retry_after_is_seconds_or_an_http_date():
    now = time.time()
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0
    assert retry_after_seconds("86400000") == 3600  # capped: a broker cannot stall a gateway for years
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    error = classify(429, {"Retry-After": "7"}, b"")
    assert isinstance(error, TransientUplinkError) and error.retry_after == 7


def post_ld(broker: ContextBroker, entities: list[dict[str, Any]], options: str | None = None) -> tuple[int, bytes]:
    """An NGSI-LD upsert as a town's own tool would send it."""
    import urllib.error
    import urllib.request

    url = broker.url + "/ngsi-ld/v1/entityOperations/upsert" + (f"?options={options}" if options else "")
    request = urllib.request.Request(url, json.dumps(entities).encode(), {"Content-Type": "application/ld+json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- an Alert's alertSource names an entity the broker holds ------------------------------------------

SILENT = "urn:ngsi-ld:Device:river-2"  # configured, never heard: no reading ever made its Device entity


def silent_alarm() -> dict[str, Any]:
    return alarm("device_silent", "river-2", severity="medium", reading=None, location=None,
                 message="river-2 has not reported for 3 intervals")


def held(broker: ContextBroker, entity_id: str, ld_: bool) -> dict[str, Any] | None:
    return broker.ld_entity(entity_id) if ld_ else broker.entity(entity_id)


@pytest.mark.parametrize("make", [v2, ld], ids=["v2", "ld"])
def test_an_alarm_about_a_device_never_heard_names_a_device_entity_the_broker_holds(context_broker, make):
    # the test broker refuses a Relationship to an entity it does not hold (check_references)
    config = make(context_broker.url)
    devices = [*DEVICES, Device(id="river-2", address=3, driver="water_level", location=KAGAWA)]
    uplink, results = NgsiUplink(config, config.fiware_mapping("gw-1", devices)), Results()
    uplink.start(results.on_result, results.on_state)
    try:
        uplink.send(batch([silent_alarm()]))
        assert results.wait("b1") is None
    finally:
        uplink.stop()
    ld_ = make is ld
    device, alert = held(context_broker, SILENT, ld_), held(context_broker, "urn:ngsi-ld:Alert:river-2:device_silent:42", ld_)
    assert device is not None and alert is not None
    if ld_:
        assert alert["alertSource"] == {"type": "Relationship", "object": SILENT}
        assert device["controlledProperty"]["value"] == ["waterLevel", "temperature"]  # as its readings say
    else:
        assert (alert["alertSource"]["type"], alert["alertSource"]["value"]) == ("Relationship", SILENT)
        assert device["controlledProperty"]["value"] == ["waterLevel", "temperature"]
        assert sdm_violations(kv_v2(device)) == [] and sdm_violations(kv_v2(alert)) == []
    assert context_broker.invalid == []


@pytest.mark.parametrize("make", [v2, ld], ids=["v2", "ld"])
def test_the_device_entity_of_an_alert_goes_first_on_its_own_and_changes_nothing_its_readings_sent(
        context_broker, running, make):
    uplink, results = running(make(context_broker.url))
    uplink.send(batch([trap("armed")]))
    assert results.wait("b1") is None
    before = held(context_broker, TRAP, make is ld)
    uplink.send(batch([alarm(), trap("sprung")], "b2"))
    assert results.wait("b2") is None
    writes = [r for r in context_broker.requests if r.method == "POST"][1:]
    first = writes[0].body if make is v2 else {"entities": writes[0].body}
    assert [e["id"] for e in first["entities"]] == [TRAP]  # the alert's Device, alone, before the alert
    after = held(context_broker, TRAP, make is ld)
    assert before is not None and after is not None
    for name in ("category", "controlledProperty", "location"):
        assert after[name] == before[name] or after[name]["value"] == before[name]["value"]
    assert context_broker.invalid == []


@pytest.mark.parametrize("make", [v2, ld], ids=["v2", "ld"])
def test_a_broker_refusing_the_alerts_device_entity_does_not_cost_the_alarm(context_broker, running, make):
    context_broker.reject_entity(TRAP, 400, "trap-017 is not provisioned in this service")
    uplink, results = running(make(context_broker.url))
    uplink.send(batch([alarm()]))
    assert results.wait("b1") is None  # the alarm arrived
    alert = held(context_broker, "urn:ngsi-ld:Alert:trap-017:trap_sprung:42", make is ld)
    assert alert is not None and held(context_broker, TRAP, make is ld) is None
    # the device named by a plain URI, which SDM Alert allows: no Relationship to nothing
    assert alert["alertSource"]["type"] == ("Property" if make is ld else "Text")
    assert alert["alertSource"]["value"] == TRAP
    assert context_broker.invalid == []
    # once the broker takes it, the alert names the entity again
    context_broker.clear_faults()
    uplink.send(batch([alarm()], "b2"))
    assert results.wait("b2") is None
    alert = held(context_broker, "urn:ngsi-ld:Alert:trap-017:trap_sprung:42", make is ld)
    assert alert is not None and alert["alertSource"]["type"] == "Relationship"


def test_a_transient_failure_of_the_alerts_device_entity_fails_the_batch_for_a_retry(context_broker, running):
    uplink, results = running(v2(context_broker.url))
    context_broker.fail_next(503)
    uplink.send(batch([alarm()]))
    assert isinstance(results.wait("b1"), TransientUplinkError)
    assert context_broker.entity("urn:ngsi-ld:Alert:trap-017:trap_sprung:42") is None
    wait_until(uplink.ready, 5, "the uplink ready again")
    uplink.send(batch([alarm()], "b2"))
    assert results.wait("b2") is None
    assert context_broker.entity("urn:ngsi-ld:Alert:trap-017:trap_sprung:42") is not None
