"""The Sigfox sender on a real outbox and the emulated module: who is served first when the budget is short."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgegw.config import SigfoxUplink
from edgegw.config.base import WRITTEN
from edgegw.model import Ack, Alarm, UplinkState
from edgegw.route import EVERYTHING, Routing
from edgegw.store import Store
from edgegw.uplink.sigfox import codec
from edgegw.uplink.sigfox.budget import budget_path, read_summary
from edgegw.uplink.sigfox.emulator import SigfoxEmulator
from edgegw.uplink.sigfox.sender import SigfoxSender
from tests.gateway import wait_until


@contextmanager
def running(tmp_path: Path, table: dict[str, Any], alarms: list[Alarm], uplinks: tuple[str, ...] = ("broker",),
            local: tuple[str, ...] = (), acked_by: tuple[str, ...] = (), limit: int = 140, reserve: int = 20,
            **emulator: Any) -> Iterator[tuple[SigfoxEmulator, list[object], dict[str, int]]]:
    """A Sigfox sender on a real outbox holding ``alarms`` (acknowledged already by ``acked_by``) and
    the emulated module: (the module, what the sender posted to the writer, the uplinks' bits)."""
    module = SigfoxEmulator(tmp_path / "sigfox0", send_delay=0.05, **emulator)
    module.plug()
    config = SigfoxUplink.model_validate({"type": "sigfox", "port": str(module.link), "daily_limit": limit,
                                          "reserve": reserve, "confirm_every": None, "alarms": table})
    store = Store(tmp_path / "edgegw.db")
    bits = store.register_uplinks([*uplinks, "sigfox"])
    routing = Routing({**{bits[u]: EVERYTHING for u in uplinks}, bits["sigfox"]: config.item_route()},
                      local=sum(bits[u] for u in local))
    now = time.time()
    store.begin()
    for alarm in alarms:
        assert store.add_alarm(alarm, routing.mask("alarm", alarm.device_id, alarm.kind), now)
        (seq,) = store.conn.execute("SELECT seq FROM outbox WHERE item_id = ?", (alarm.alarm_id,)).fetchone()
        for uplink in acked_by:
            store.acked(bits[uplink], [seq], now)
    store.commit()
    posted: list[object] = []
    sender = SigfoxSender(config, bits["sigfox"], routing, tmp_path / "edgegw.db", tmp_path, posted.append)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,))
    thread.start()
    try:
        yield module, posted, bits
    finally:
        stop.set()
        thread.join(10)
        store.close()
        module.unplug()


def sprung() -> Alarm:
    return Alarm("trap-01:0:1:trap:trap_sprung", "trap_sprung", "high", "trap-01", "trap", time.time(), "sprung")


def test_the_last_message_of_the_day_goes_to_the_urgent_alarm_and_a_normal_one_is_refused(tmp_path):
    now = time.time()
    table = {"trap_reminder": {"when": "always", "priority": "normal"},
             "water_level_alarm": {"when": "always", "min_severity": "critical"}}
    # Older first: the reminder, then a caution stage (below critical), then the danger stage.
    alarms = [Alarm("trap-01:0:1:trap:trap_reminder", "trap_reminder", "high", "trap-01", "trap", now, "still"),
              Alarm("river-01:0:2:w:water_level_alarm", "water_level_alarm", "medium", "river-01", "w", now, "c",
                    {"value": 2100}),
              Alarm("river-01:0:3:w:water_level_alarm", "water_level_alarm", "critical", "river-01", "w", now,
                    "danger", {"value": 3200})]
    with running(tmp_path, table, alarms, limit=2, reserve=1) as (emulator, posted, bits):
        wait_until(lambda: len([e for e in posted if isinstance(e, Ack)]) == 3, 20, f"three decisions: {posted}")
        # One message was left for normal alarms (limit 2, reserve 1): the danger stage, though the
        # newest, took it; the reminder found only the reserve and was refused; caution never goes.
        [(at, payload)] = emulator.sent
        assert codec.decode(payload, at).alarm_ref == codec.alarm_ref("river-01:0:3:w:water_level_alarm")
        assert all(e.bit == bits["sigfox"] for e in posted if isinstance(e, Ack))
        summary = read_summary(budget_path(tmp_path, "sigfox"), 2, 1)
        assert summary is not None and summary["used"] == 1 and summary["refused_24h"] == 1
        assert summary["last_refused"]["alarm"] == "trap_reminder"


def test_a_file_uplink_s_acknowledgement_does_not_call_off_the_fallback(tmp_path):
    # The town's broker is down; a USB-stick archive (a file uplink) has the catch at once. A file on
    # the gateway tells nobody: the trap goes over Sigfox after the delay all the same.
    alarm = sprung()
    with running(tmp_path, {"trap_sprung": {"when": "fallback", "delay": 0.5}}, [alarm], uplinks=("broker", "archive"),
                 local=("archive",), acked_by=("archive",)) as (emulator, posted, _):
        wait_until(lambda: emulator.sent, 20, f"the catch over Sigfox: {posted}")
        [(at, payload)] = emulator.sent
        message = codec.decode(payload, at)
        assert message.alarm_ref == codec.alarm_ref(alarm.alarm_id) and message.fallback


def test_confirm_every_never_is_written_as_never():
    # TOML has no null: leaving the key out means the default, a downlink a day.
    def confirm(**extra):
        return SigfoxUplink.model_validate({"type": "sigfox", "port": "/dev/x", **extra}, context=WRITTEN).confirm_every
    assert confirm(confirm_every="never") is None
    assert confirm() == 86400 and confirm(confirm_every="2d") == 172800


def test_sends_the_module_refused_are_shown_as_failed_not_as_sent_or_delivered(tmp_path):
    alarm = sprung()
    with running(tmp_path, {"trap_sprung": {"when": "always"}}, [alarm],
                 fail_sends=["ERR_SFX_ERR_SEND_FRAME_DATA"] * 3) as (emulator, posted, _):
        (ack,) = wait_until(lambda: [e for e in posted if isinstance(e, Ack)], 60, f"three failed tries: {posted}")
        assert not ack.delivered and emulator.sent == []  # left to the main uplinks, not delivered by this one
        summary = read_summary(budget_path(tmp_path, "sigfox"), 140, 20)
        assert summary is not None and summary["last_sent"] is None and summary["failed_24h"] == 3
        assert summary["last_failed"]["id"] == alarm.alarm_id
        shown = [e.detail for e in posted if isinstance(e, UplinkState)]
        assert any("3 sends failed in 24 h" in d for d in shown) and not any("last sent" in d for d in shown)
