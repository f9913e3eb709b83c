"""Test helpers for running a real Mosquitto broker on 127.0.0.1.

* :func:`free_port` - pick an unused TCP port on the loopback interface.
* :class:`Mosquitto` - a throw-away broker process with its config and log in a work dir.
  ``restart()`` brings it back on the same port, so clients configured with its address
  can reconnect.
* :class:`Subscriber` - a paho-mqtt client that records every message it receives and
  reconnects (and re-subscribes) by itself when the broker comes back.
* :func:`publish` - publish a single message and wait for the broker's acknowledgement.
* ``mosquitto`` - pytest fixture yielding a started :class:`Mosquitto`.

Only 127.0.0.1 is ever used. Processes are ended by PID only.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

HOST = "127.0.0.1"

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

Message = tuple[str, bytes]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_is_bindable(port: int) -> bool:
    """True unless something is already listening on HOST:port.

    SO_REUSEADDR matches what mosquitto does, so sockets left in TIME_WAIT by a previous
    broker on this port do not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.25):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<missing>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto not installed: apt-get install -y mosquitto")


def _current_user() -> str | None:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return None


# Brokers that are still running when the interpreter exits (e.g. a test forgot to stop one).
_LIVE_BROKERS: weakref.WeakSet[Mosquitto] = weakref.WeakSet()


@atexit.register
def _stop_leftover_brokers() -> None:
    for broker in list(_LIVE_BROKERS):
        try:
            broker.stop()
        except Exception:
            pass


class Mosquitto:
    """A mosquitto broker process listening on 127.0.0.1:<port> only.

    The port is fixed when the object is created (``free_port()`` if not given), so
    ``restart()`` - and a later ``start()`` after ``stop()`` - reuse the same address.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        persistence: bool = False,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self._port = port if port is not None else free_port()
        self.persistence = persistence
        self.extra_config = list(extra_config)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.output_path = self.workdir / "mosquitto.out"  # stdout/stderr (config errors land here)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self._port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- lifecycle ------------------------------------------------------------------------

    def _config_text(self) -> str:
        lines = [
            "# written by tests/broker.py",
            f"listener {self._port} {HOST}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [
                f"persistence_location {self.workdir}/",
                "persistence_file mosquitto.db",
                # Only write the database at shutdown, never in the middle of a test.
                "autosave_interval 0",
            ]
        user = _current_user()
        if user:
            # When started as root, mosquitto 2.x drops privileges to the "mosquitto" user,
            # which cannot write our log file in a 0700 pytest tmp dir. Stay as who we are
            # (this setting has no effect for non-root users).
            lines.append(f"user {user}")
        lines += [
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # The default (1000 per client) would silently drop QoS 1 messages queued for a
            # disconnected subscriber in long store-and-forward tests.
            "max_queued_messages 0",
        ]
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def log_tail(self, lines: int = 40) -> str:
        return (
            f"--- {self.log_path} ---\n{_tail(self.log_path, lines)}\n"
            f"--- {self.output_path} ---\n{_tail(self.output_path, lines)}"
        )

    def start(self) -> Mosquitto:
        """Start the broker and wait until it accepts TCP connections. No-op if running."""
        if self.running:
            return self
        binary = _mosquitto_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not _port_is_bindable(self._port):
            raise RuntimeError(
                f"cannot start mosquitto: {HOST}:{self._port} is already in use by another process"
            )
        self.conf_path.write_text(self._config_text())

        with open(self.output_path, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.starts += 1
        _LIVE_BROKERS.add(self)

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"mosquitto exited with code {code} during startup on port {self._port}\n"
                    + self.log_tail()
                )
            if _accepts_connections(self._port):
                return self
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(
                    f"mosquitto did not accept connections on {HOST}:{self._port} "
                    f"within {START_TIMEOUT:.0f}s\n" + self.log_tail()
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Terminate the broker by PID (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        proc.wait()
        _LIVE_BROKERS.discard(self)

    def restart(self) -> Mosquitto:
        """Stop (if running) and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.proc.pid}" if self.running and self.proc else "stopped"
        return f"<Mosquitto {self.url} {state}>"


def _topic_matches(topic_filter: str | None, topic: str) -> bool:
    return topic_filter is None or mqtt.topic_matches_sub(topic_filter, topic)


class Subscriber:
    """Records every message published to ``topic`` (an MQTT filter) at QoS 1.

    The client id is fixed for the lifetime of the object (pass ``client_id`` to reuse one
    across objects) and the session is persistent (``clean_session=False``), so QoS 1
    messages queued by the broker while this client was away are delivered on reconnect -
    as long as the broker itself kept running (or was started with ``persistence=True``).

    The paho network thread reconnects on its own (0.1 s .. 1 s back-off) and subscribes
    again in ``on_connect``: after a broker restart without persistence the broker has
    forgotten the session, and anything published before the new SUBACK is lost. Use
    ``wait_subscribed(newer_than=...)`` to wait for the fresh subscription.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str = "#",
        *,
        client_id: str | None = None,
        qos: int = 1,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.topic = topic
        self.qos = qos
        self.client_id = client_id or f"edgegw-test-sub-{uuid.uuid4().hex[:12]}"

        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._connected = False
        self._subscribe_mid: int | None = None
        self.subscribe_generation = 0  # bumped on every successful SUBACK
        self.connects = 0
        self.disconnects = 0
        self.errors: list[str] = []

        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        # paho's default back-off goes up to 120 s; keep reconnects snappy for tests.
        client.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self._closed = False

        # connect_async + loop_start: the network thread retries until the broker is up.
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        if wait:
            try:
                self.wait_subscribed(timeout=timeout)
            except BaseException:
                self.close()
                raise

    # -- paho callbacks (run in the network thread; must never raise) -------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            with self._cond:
                self.errors.append(f"connect refused: {reason_code}")
            return
        result, mid = client.subscribe(self.topic, qos=self.qos)
        with self._cond:
            self._connected = True
            self.connects += 1
            if result == mqtt.MQTT_ERR_SUCCESS:
                self._subscribe_mid = mid
            else:
                self.errors.append(f"subscribe failed: {mqtt.error_string(result)}")
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            if mid != self._subscribe_mid:
                return
            failed = [rc for rc in reason_code_list if rc.is_failure]
            if failed:
                self.errors.append(f"subscription to {self.topic!r} rejected: {failed}")
            else:
                self.subscribe_generation += 1
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            if self._connected:
                self.disconnects += 1
            self._connected = False
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self._messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    # -- inspection ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    @property
    def messages(self) -> list[Message]:
        """A snapshot copy of the ``(topic, payload)`` pairs received so far, in order."""
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def payloads(self, topic_filter: str | None = None) -> list[bytes]:
        return [p for t, p in self.messages if _topic_matches(topic_filter, t)]

    def json_messages(self, topic_filter: str | None = None, *, skip_invalid: bool = False) -> list[Any]:
        """Parsed JSON payloads (optionally only for topics matching ``topic_filter``).

        A payload that is not JSON raises AssertionError unless ``skip_invalid`` is set.
        """
        result = []
        for topic, payload in self.messages:
            if not _topic_matches(topic_filter, topic):
                continue
            try:
                result.append(json.loads(payload))
            except ValueError as exc:
                if skip_invalid:
                    continue
                raise AssertionError(
                    f"payload on {topic!r} is not JSON ({exc}): {payload[:200]!r}"
                ) from None
        return result

    def summary(self, last: int = 10) -> str:
        with self._cond:
            msgs = list(self._messages)
            state = (
                f"client_id={self.client_id} broker={self.host}:{self.port} filter={self.topic!r} "
                f"connected={self._connected} connects={self.connects} "
                f"disconnects={self.disconnects} subscribe_generation={self.subscribe_generation}"
            )
            errors = list(self.errors)
        lines = [state, f"{len(msgs)} message(s) received"]
        if errors:
            lines.append(f"errors: {errors}")
        if msgs:
            lines.append(f"last {min(last, len(msgs))}:")
            lines += [f"  {t}: {p[:160]!r}" for t, p in msgs[-last:]]
        return "\n".join(lines)

    # -- waiting --------------------------------------------------------------------------

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if condition():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Woken on every callback; the cap re-checks conditions that depend on time.
                self._cond.wait(timeout=min(remaining, 0.1))
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{self.summary()}")

    def wait_for(
        self,
        predicate: Callable[[list[Message]], bool],
        timeout: float = 30,
        description: str | None = None,
    ) -> bool:
        """Wait until ``predicate(messages)`` is true; return True or raise AssertionError.

        ``predicate`` gets a snapshot list of ``(topic, payload_bytes)`` and must not block.
        """
        what = description or getattr(predicate, "__name__", "predicate")
        return self._wait(lambda: bool(predicate(list(self._messages))), timeout, what)

    def wait_for_count(self, count: int, topic_filter: str | None = None, timeout: float = 30) -> list[Message]:
        """Wait until at least ``count`` messages (matching ``topic_filter``) arrived; return them."""

        def enough(msgs: list[Message]) -> bool:
            return sum(1 for t, _ in msgs if _topic_matches(topic_filter, t)) >= count

        self.wait_for(enough, timeout, f"{count} message(s) on {topic_filter or self.topic!r}")
        return [(t, p) for t, p in self.messages if _topic_matches(topic_filter, t)]

    def wait_subscribed(self, timeout: float = 10.0, newer_than: int = 0) -> int:
        """Wait for a SUBACK later than generation ``newer_than``; return the new generation.

        After a broker restart: ``gen = sub.subscribe_generation`` before the restart, then
        ``sub.wait_subscribed(newer_than=gen)``.
        """
        self._wait(
            lambda: self._connected and self.subscribe_generation > newer_than,
            timeout,
            f"subscription to {self.topic!r} (generation > {newer_than})",
        )
        return self.subscribe_generation

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Subscriber {self.client_id} {self.host}:{self.port} {self.topic!r}>"


def publish(
    host: str,
    port: int,
    topic: str,
    payload: bytes | str | dict | list | None,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = 10.0,
) -> None:
    """Publish one message with a short-lived client and wait until the broker acked it.

    dict/list payloads are sent as JSON.
    """
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload)
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"edgegw-test-pub-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
    )
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=timeout)
        if not info.is_published():
            raise AssertionError(f"publish to {topic!r} on {host}:{port} not acknowledged within {timeout:g}s")
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker on 127.0.0.1:<free port>, stopped at teardown."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def persistent_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """Like ``mosquitto``, but the broker keeps sessions across ``stop()``/``start()``.

    Use it when a test stops the broker for an outage and then checks what a subscriber
    received: a platform's broker keeps its subscribers' sessions, and without that the
    gateway may deliver its backlog before the test's subscriber has subscribed again.
    """
    broker = Mosquitto(tmp_path / "persistent-mosquitto", persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
