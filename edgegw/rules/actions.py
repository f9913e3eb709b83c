"""Local actions: what an alarm does on site, uplink or not (a siren, a text via a local modem, a
local MQTT topic a display subscribes to).

The writer hands committed alarms to :meth:`ActionRunner.submit`, which never blocks: actions run in
their own thread, each limited to ``limit`` runs per ``per`` for each device and alarm kind. The
alarm log notes once an alarm's actions were started; those a crash cut off are started at the next
start (see :meth:`edgegw.store.alarms.AlarmLog.actions_owed`): at least once, not exactly once. A
command gets the alarm as JSON on stdin and its key fields as ``EDGEGW_*`` environment variables;
it is started from an argv list, never through a shell, so nothing a radio sends can become a
command line. A command that outlives its timeout is killed. Failures are logged (rate-limited) and
counted, never retried: an alarm is still delivered through the uplinks.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from edgegw.config import CommandAction, MqttAction
from edgegw.imports import import_without
from edgegw.items import alarm_item
from edgegw.log import Throttle
from edgegw.model import SEVERITIES, ActionsStarted, Alarm, iso

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
else:
    mqtt = import_without("paho.mqtt.client", "dns")

log = structlog.get_logger("edgegw.actions")

QUEUE_LIMIT = 1000
STDERR_KEPT = 300  # bytes: the end of a failed command's stderr, for the log; the rest is read and let go


class ActionRunner:
    """Runs the configured local actions of committed alarms, off the writer's thread."""

    def __init__(self, actions: list[CommandAction | MqttAction], gateway_id: str,
                 started: Callable[[ActionsStarted], None] = lambda _: None):
        self.actions = actions
        self.gateway_id = gateway_id
        self.started = started  # told once an alarm's actions were started (or skipped): for the alarm log
        self.counts = {"started": 0, "failed": 0, "rate_limited": 0, "dropped": 0}
        self._queue: queue.Queue[Alarm | None] = queue.Queue(QUEUE_LIMIT)
        # Per action, device and alarm kind: frames one device sends (forged ones, if it has no key)
        # cannot use up the siren another device's alarm needs.
        self._runs: dict[tuple[str, str, str], deque[float]] = {}
        self._mqtt: dict[str, mqtt.Client] = {}
        self._throttle = Throttle(60.0)
        self._running = False

    def start(self) -> None:
        """Connect the MQTT actions; then :meth:`run` in a thread of its own (the daemon supervises it)."""
        for action in self.actions:
            if isinstance(action, MqttAction):
                self._mqtt[action.name] = self._connect(action)
        self._running = bool(self.actions)

    def submit(self, alarm: Alarm) -> None:
        """Queue an alarm for its actions; never blocks the caller."""
        if not self._running:
            return
        try:
            self._queue.put_nowait(alarm)
        except queue.Full:
            self.counts["dropped"] += 1
            self._warn("action queue full; alarm's actions skipped", alarm.alarm_id, alarm=alarm.alarm_id)

    def stop(self) -> None:
        """Make :meth:`run` return once the alarms queued before are handled."""
        if self._running:
            self._queue.put(None)
            self._running = False
        for client in self._mqtt.values():
            client.loop_stop()
            client.disconnect()

    # -- running --------------------------------------------------------------------------------

    def run(self) -> None:
        """Run the actions of queued alarms until :meth:`stop`."""
        while (alarm := self._queue.get()) is not None:
            for action in self.actions:
                if not self._matches(action, alarm):
                    continue
                if not self._allow(action, alarm):
                    self.counts["rate_limited"] += 1
                    self._warn("action rate limit reached; skipped", action.name, action=action.name,
                               alarm=alarm.alarm_id, limit=action.limit, per_s=action.per)
                    continue
                try:
                    if isinstance(action, CommandAction):
                        self._command(action, alarm)
                    else:
                        self._publish(action, alarm)
                    self.counts["started"] += 1
                except Exception as exc:  # one broken action must not stop the others
                    self._failed(action, alarm, f"{type(exc).__name__}: {exc}")
            self.started(ActionsStarted((alarm.alarm_id,)))

    @staticmethod
    def _matches(action: CommandAction | MqttAction, alarm: Alarm) -> bool:
        return ((not action.alarms or alarm.kind in action.alarms)
                and SEVERITIES.index(alarm.severity) >= SEVERITIES.index(action.min_severity)
                and (not action.devices or alarm.device_id in action.devices)
                and (action.include_late or not alarm.late))

    def _allow(self, action: CommandAction | MqttAction, alarm: Alarm) -> bool:
        now = time.monotonic()
        runs = self._runs.setdefault((action.name, alarm.device_id, alarm.kind), deque())
        while runs and runs[0] <= now - action.per:
            runs.popleft()
        if len(runs) >= action.limit:
            return False
        runs.append(now)
        return True

    def _command(self, action: CommandAction, alarm: Alarm) -> None:
        env = {**os.environ, **self.environment(alarm)}
        proc = subprocess.Popen(action.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        log.info("action started", action=action.name, alarm=alarm.alarm_id, kind=alarm.kind, pid=proc.pid)
        # Waiting happens beside the runner, so a slow siren never delays the next alarm.
        threading.Thread(target=self._wait, args=(action, alarm, proc), name=f"action:{action.name}",
                         daemon=True).start()

    def _wait(self, action: CommandAction, alarm: Alarm, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None and proc.stderr is not None
        try:  # an alarm is a few hundred bytes: the pipe takes it whole, whether the command reads it or not
            proc.stdin.write(json.dumps(alarm_item(alarm), ensure_ascii=False).encode())
            proc.stdin.close()
        except OSError:  # it exited, or closed stdin, before reading it
            pass
        err = _stderr_tail(proc, time.monotonic() + action.timeout)
        if proc.poll() is None:
            # It outlived its timeout: end it and whatever it started (its own session), not only the
            # shell a `sh -c` is, so that nothing of it runs on unseen.
            with contextlib.suppress(ProcessLookupError):  # it ended just now
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self._failed(action, alarm, f"killed after its {action.timeout:g} s timeout")
        elif proc.returncode != 0:
            self._failed(action, alarm, f"exit status {proc.returncode}: {err.decode(errors='replace').strip()}")

    def environment(self, alarm: Alarm) -> dict[str, str]:
        """The ``EDGEGW_*`` variables a command action sees."""
        env = {
            "EDGEGW_GATEWAY": self.gateway_id, "EDGEGW_ALARM": alarm.kind, "EDGEGW_ALARM_ID": alarm.alarm_id,
            "EDGEGW_SEVERITY": alarm.severity, "EDGEGW_DEVICE": alarm.device_id,
            "EDGEGW_DEVICE_NAME": alarm.name or "", "EDGEGW_RAISED_AT": iso(alarm.raised_at),
            "EDGEGW_LATE": "1" if alarm.late else "0", "EDGEGW_MESSAGE": alarm.message,
            # 1: the frame behind it was authenticated; 0: anyone in radio range could have sent it.
            "EDGEGW_VERIFIED": {True: "1", False: "0", None: ""}[alarm.verified],
        }
        if alarm.location:
            env["EDGEGW_LATITUDE"], env["EDGEGW_LONGITUDE"] = (str(x) for x in alarm.location)
        return env

    def _connect(self, action: MqttAction) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgegw-{self.gateway_id}-{action.name}")
        if action.username is not None:
            client.username_pw_set(action.username, action.password)
        client.reconnect_delay_set(1, 30)
        client.connect_async(action.host, action.port)
        client.loop_start()  # paho reconnects on its own; a publish while down is queued by paho
        return client

    def _publish(self, action: MqttAction, alarm: Alarm) -> None:
        topic = action.topic.format(gateway=self.gateway_id, device=alarm.device_id, alarm=alarm.kind)
        client = self._mqtt[action.name]
        if not client.is_connected():
            raise ConnectionError(f"local broker {action.host}:{action.port} not connected")
        info = client.publish(topic, json.dumps(alarm_item(alarm), ensure_ascii=False), qos=1, retain=action.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(mqtt.error_string(info.rc))
        log.info("action published", action=action.name, alarm=alarm.alarm_id, topic=topic)

    def _failed(self, action: CommandAction | MqttAction, alarm: Alarm, why: str) -> None:
        self.counts["failed"] += 1
        self._warn("action failed", action.name, action=action.name, alarm=alarm.alarm_id, error=why)

    def _warn(self, event: str, key: str, **fields) -> None:
        suppressed = self._throttle.allow((event, key))
        if suppressed is not None:
            log.warning(event, similar_suppressed=suppressed, **fields)


def _stderr_tail(proc: subprocess.Popen, deadline: float) -> bytes:
    """The last :data:`STDERR_KEPT` bytes a command writes to stderr until it exits or ``deadline``
    passes: read as it comes, so that a chatty command neither blocks on a full pipe nor fills the
    gateway's memory. A child it left running with stderr open is not waited for."""
    assert proc.stderr is not None
    fd, tail = proc.stderr.fileno(), b""
    while (left := deadline - time.monotonic()) > 0:
        exited = proc.poll() is not None
        if not select.select([fd], [], [], 0 if exited else min(left, 0.5))[0]:
            if exited:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # closed: the command is done with it
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            break
        tail = (tail + chunk)[-STDERR_KEPT:]
    proc.stderr.close()
    return tail
