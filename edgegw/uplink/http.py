"""HTTP delivery shared by the uplinks that POST to a FIWARE component: the NGSI context brokers
(:mod:`edgegw.uplink.ngsi`) and the IoT Agents' HTTP southbound (:mod:`edgegw.uplink.iota_http`).

A subclass says only which requests a batch becomes (:meth:`HttpUplink.requests`); this module
sends them in order over one reused connection and classifies every answer (:func:`classify`).
A batch is acknowledged when every one of its requests got a 2xx.

HTTP goes through urllib3: the library under requests, so no second HTTP stack in the gateway's
memory (filip and requests bring it along anyway), explicit timeouts, and TLS verification with
the system's or a given CA. No retries and no redirects: the forwarder retries with backoff, and a
redirected POST would lose its body. The uplink holds its one connection itself rather than
through a pool, so that it can end a request at its deadline (see :class:`_Deadline`): the
``timeout`` bounds each wait on the socket, the ``deadline`` the whole request, however slowly the
platform trickles its answer.

``send`` returns at once; one worker thread per uplink takes batches from a queue in order.
Answers are classified: connection problems, timeouts, 5xx, 429 and the 4xx that are about the
gateway's credentials or URL rather than the payload are transient; other 4xx are permanent and
carry the platform's own error text.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from edgegw import __version__
from edgegw.errors import PermanentUplinkError, TransientUplinkError, UplinkError
from edgegw.items import Batch
from edgegw.uplink import OnResult, OnState

if TYPE_CHECKING:
    from edgegw.config.uplinks import HttpConnection

log = structlog.get_logger("edgegw.uplink.http")

MAX_RETRY_AFTER = 3600.0  # a platform asking for more is not followed blindly: retry within the hour
# 4xx answers about the gateway's token or URL, not about the payload: once the platform team (or
# the installer) fixes them, the same batch goes through, so they must not park any item.
TRANSIENT_4XX = frozenset({401, 403, 404, 405, 407, 408, 421, 425, 429})

# One request of a batch: (path with query, headers of its own, body).
Request = tuple[str, dict[str, str], bytes]


class HttpUplink:
    """One FIWARE HTTP endpoint reached through one reused connection; subclasses make the requests."""

    kind = "http"  # in log events: "ngsi", "iota-http"

    def __init__(self, config: HttpConnection, name: str, endpoint: str):
        """``endpoint`` is what status and logs show (the URL the requests go to, without query)."""
        self.config = config
        self.name = name
        self.endpoint = endpoint
        self._headers = {"Accept": "application/json", "User-Agent": f"edgegw/{__version__}"}
        # One connection: the worker sends one request at a time and reuses it while it stays open.
        self._conn: HTTPConnection | None = None
        self._deadline: _Deadline | None = None  # of the request under way, for stop() to end it
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._stop = threading.Event()
        self._hold_until = 0.0  # monotonic: the platform's Retry-After, honoured through ready()
        self._state: tuple[str, str] | None = None
        self._thread: threading.Thread | None = None

    def requests(self, batch: Batch) -> list[Request]:
        """The requests a batch becomes, in order; ValueError for items the platform could never take."""
        raise NotImplementedError

    def start(self, on_result: OnResult, on_state: OnState) -> None:
        self.on_result, self.on_state = on_result, on_state
        if not self.config.verify_tls:
            log.warning("TLS certificates are not verified", uplink=self.name)
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # said once, above
        self._set_state("connecting", f"{self.endpoint} (nothing sent yet)")
        self._thread = threading.Thread(target=self._run, name=f"uplink:{self.name}", daemon=True)
        self._thread.start()

    def ready(self) -> bool:
        """False while the platform's ``Retry-After`` runs (and after stop), else True: HTTP needs no
        standing connection, so the next batch is also the probe that finds the platform back."""
        return not self._stop.is_set() and time.monotonic() >= self._hold_until

    def send(self, batch: Batch) -> None:
        """Queue the batch for the worker thread and return at once."""
        self._queue.put(batch)

    def stop(self) -> None:
        """End the request under way and fail it and the queued batches (transient); close the connection."""
        self._stop.set()
        self._queue.put(None)
        if (deadline := self._deadline) is not None:
            deadline.expire()
        if self._thread is not None:
            self._thread.join(timeout=self.config.timeout + 5)
        if self._conn is not None:
            self._conn.close()

    # -- worker ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            if self._stop.is_set():
                self.on_result(batch.batch_id, TransientUplinkError("uplink stopped"))
                continue
            try:
                error = self._deliver(batch)
            except Exception as exc:  # a bug must fail the batch, not kill the worker and hang the forwarder
                log.exception(f"{self.kind} uplink failed on a batch", uplink=self.name)
                error = TransientUplinkError(f"internal error: {exc!r}")
            self.on_result(batch.batch_id, error)

    def _deliver(self, batch: Batch) -> UplinkError | None:
        try:
            requests = self.requests(batch)
        except ValueError as exc:  # an item the platform could never take (an id Orion refuses, NaN)
            return PermanentUplinkError(f"cannot map the batch for {self.kind}: {exc}")
        for path, headers, body in requests:
            if (error := self._post(path, headers, body)) is not None:
                return error
        return None

    def _post(self, path: str, own_headers: dict[str, str], body: bytes) -> UplinkError | None:
        headers = {**self._headers, **own_headers}
        try:
            token = self.config.secret()  # token_file is read each time: a rotated token needs no restart
        except OSError as exc:
            return self._down(TransientUplinkError(f"cannot read token_file: {exc}"))
        if token:
            headers["X-Auth-Token"] = token
        conn = self._connection()
        self._deadline = deadline = _Deadline(conn, self.config.deadline)
        try:
            if conn.sock is None:
                conn.connect()
            deadline.watch(conn.sock)
            if deadline.expired:  # it passed while connecting, before there was a socket to shut down
                raise TimeoutError
            conn.request("POST", self._base_path + path, body=body, headers=headers)
            response = conn.getresponse()  # reads the whole answer
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:  # refused, TLS, reset
            conn.close()
            reason = ("uplink stopped" if self._stop.is_set() else
                      f"no complete answer within the {self.config.deadline:g} s deadline" if deadline.expired else
                      _reason(exc))
            return self._down(TransientUplinkError(f"{self.endpoint}: {reason}"))
        finally:
            if deadline.finish():
                conn.close()  # its socket is shut down: it cannot carry another request
        if deadline.expired:
            # The shutdown reads as the end of the answer: one without Content-Length then parses as
            # complete, truncated, and its status would count as an acknowledgement not wholly received.
            reason = "uplink stopped" if self._stop.is_set() else \
                f"no complete answer within the {self.config.deadline:g} s deadline"
            return self._down(TransientUplinkError(f"{self.endpoint}: {reason}"))
        error = classify(response.status, response.headers, response.data)
        if isinstance(error, TransientUplinkError):
            return self._down(error)
        self._set_state("up", self.endpoint)  # a refused payload still means the platform answers
        return error

    def _connection(self) -> HTTPConnection:
        """The connection to the platform; a new one when it closed the last one while it was idle."""
        if self._conn is None:
            url = urlsplit(self.config.url)
            self._base_path = url.path
            host = url.hostname or ""  # the config's URL check requires one
            if url.scheme == "http":
                self._conn = HTTPConnection(host, url.port, timeout=self.config.timeout)
            else:
                tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": self.config.ca_file and str(self.config.ca_file)}
                if not self.config.verify_tls:
                    tls = {"cert_reqs": "CERT_NONE", "assert_hostname": False}
                self._conn = HTTPSConnection(host, url.port, timeout=self.config.timeout, **tls)
        elif self._conn.sock is not None and not self._conn.is_connected:
            self._conn.close()  # a request sent on it now would fail: connect() afresh instead
        return self._conn

    def _down(self, error: TransientUplinkError) -> TransientUplinkError:
        if error.retry_after:
            self._hold_until = time.monotonic() + error.retry_after
        self._set_state("down", str(error))
        return error

    def _set_state(self, state: str, detail: str) -> None:
        if self._state != (state, detail):
            if self._state is not None and state != self._state[0]:
                (log.info if state == "up" else log.warning)(f"{self.kind} uplink {state}", uplink=self.name,
                                                            detail=detail)
            self._state = (state, detail)
            self.on_state(state, detail)


class _Deadline:
    """Ends a request that has run for ``seconds`` by shutting its connection's socket down.

    The socket's timeout bounds each wait for bytes: a platform that trickles its answer (the status
    line, the headers or the body) a byte every few seconds never trips it. A timer bounds the whole
    request, wherever it is: connecting, sending, or reading. It shuts the socket down rather than
    closing it: a shutdown wakes the worker blocked in recv or send at once, and the descriptor
    stays the worker's to close (closed from this thread, its number could be reused under it).
    """

    def __init__(self, conn: HTTPConnection, seconds: float):
        self.conn = conn
        self.sock: socket.socket | None = None
        self.expired = False
        self._done = False
        self._lock = threading.Lock()  # no shutdown once finish() returned: the connection is reused
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """The request's socket, held here because http.client lets go of it (``conn.sock`` is None)
        as soon as an answer's headers say ``Connection: close``, while the body is still to read."""
        with self._lock:
            self.sock = sock

    def expire(self) -> None:
        """End the request now (its deadline passed, or the uplink stops)."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            if (sock := self.sock or self.conn.sock) is not None:
                try:
                    # socket.socket's shutdown, also under TLS: SSLSocket's own would unset its SSL
                    # object under the worker's feet.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:  # no longer connected
                    pass

    def finish(self) -> bool:
        """The request is over; True when it was ended by :meth:`expire`."""
        with self._lock:
            self._done = True
        self._timer.cancel()
        return self.expired


def classify(status: int, headers: Mapping[str, str], body: bytes) -> UplinkError | None:
    """The outcome of one answer: None when accepted, else a transient or permanent error.

    ``headers`` must look names up case-insensitively, as urllib3's do.
    """
    if 200 <= status < 300 and status != 207:
        if not _framed(status, headers):
            # http.client takes a close before the blank line that ends the headers for their end:
            # "HTTP/1.1 204" and a close would be an acknowledgement of nothing anyone sent.
            return TransientUplinkError(f"HTTP {status} cut short: the answer's headers did not end, or it"
                                        " had no length (the connection closed mid-answer)")
        if _agent_error(body):
            # An IoT Agent answers some of its context broker's failures (a 404 without Orion's error
            # body: a wrong IOTA_CB_URL path, a proxy's page) with 200 and its error: nothing was stored.
            return TransientUplinkError(f"HTTP {status} with the agent's error: {error_text(body)}")
        return None
    text = error_text(body)
    if (status == 207 or status >= 400) and _only_unavailable(body):
        # The broker could not fetch an @context (or reach its own database) for each refused entity:
        # a state of the platform that passes, not of the data. Parked, a town's every reading would
        # wait for a maintainer's `outbox retry`.
        return TransientUplinkError(f"HTTP {status}, the broker cannot take them for now: {text}")
    if status == 207:  # NGSI-LD batch: some entities stored, others refused
        return PermanentUplinkError(f"HTTP 207, some entities refused: {text}")
    message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status >= 500 or status in TRANSIENT_4XX or status < 400:
        hint = {401: " (check token)", 403: " (check token and service)", 404: " (check url)"}.get(status, "")
        if 300 <= status < 400:
            hint = f" (redirected to {headers.get('Location')!r}: check url)"
        return TransientUplinkError(message + hint, retry_after_seconds(headers.get("Retry-After")))
    return PermanentUplinkError(message)


def _framed(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a 2xx answer came whole: some header (a server sends at least its Date), and a body
    whose end is told (none for 204, a Content-Length, or chunks), not one that ends with the
    connection, which a cut answer cannot be told from."""
    return bool(headers) and (status == 204 or "Content-Length" in headers
                              or "chunked" in headers.get("Transfer-Encoding", "").lower())


def _only_unavailable(body: bytes) -> bool:
    """Whether every NGSI-LD problem in an answer (the answer's own, or each refused entity's) says
    the broker is unavailable: ``LdContextNotAvailable`` or a 5xx status."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        problems = [e.get("error") if isinstance(e, dict) else None for e in data["errors"]]
    else:
        problems = [data]

    def unavailable(p: Any) -> bool:
        status = p.get("status") if isinstance(p, dict) else None
        return isinstance(p, dict) and (str(p.get("type", "")).endswith("/LdContextNotAvailable")
                                        or (isinstance(status, int) and status >= 500))
    return bool(problems) and all(map(unavailable, problems))


def _agent_error(body: bytes) -> bool:
    """Whether a body is an IoT Agent's error (``{"name": "..._ERROR", "message": ...}``)."""
    if not body.startswith(b"{"):
        return False
    try:
        data = json.loads(body)
    except ValueError:
        return False
    name = data.get("name") if isinstance(data, dict) else None
    return isinstance(name, str) and name.endswith("_ERROR") and "message" in data


def error_text(body: bytes, limit: int = 500) -> str:
    """The platform's own words: Orion's ``{"error", "description"}``, an NGSI-LD problem, an IoT
    Agent's ``{"name", "message"}``, or the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:limit]
    if isinstance(data, dict) and isinstance(data.get("errors"), list):  # NGSI-LD batch result
        return "; ".join(f"{e.get('entityId')}: {_problem(e.get('error'))}" for e in data["errors"]
                         if isinstance(e, dict))[:limit]
    return _problem(data)[:limit]


def _problem(data: Any) -> str:
    if isinstance(data, dict):
        for keys in (("error", "description"), ("title", "detail"), ("name", "message")):
            if any(data.get(k) for k in keys):
                return ": ".join(str(data[k]) for k in keys if data.get(k))
    return json.dumps(data, ensure_ascii=False)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (it is either seconds or an HTTP date), at most an hour."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def _reason(exc: BaseException) -> str:
    # urllib3 wraps the socket error; its own message names the pool, the cause says what happened.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return f"cannot connect: {exc.__cause__ or exc}"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"timed out ({exc})"
    return str(exc) or type(exc).__name__
