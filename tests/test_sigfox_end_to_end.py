"""Sigfox as the alarm uplink of last resort, end to end: the real daemon reading an emulated LoRa
module, an emulated Sigfox module on a second pty, and a real Mosquitto as the main uplink."""

from __future__ import annotations

import time

import pytest

from edgegw.radio.emulator import RylrEmulator
from edgegw.store import alarms
from edgegw.uplink.sigfox import codec
from edgegw.uplink.sigfox.emulator import SigfoxEmulator
from tests.broker import Subscriber
from tests.gateway import DEVICES, Daemon, Sender, wait_until, write_config

TOPIC = "test/gw-test/batches"
DELAY = 3.0  # s the main uplink has to acknowledge a sprung trap before Sigfox carries it
DEVICE_IDS = [d for d, _, _ in DEVICES]
ARMED = {"state": "armed", "tamper": False, "battery": 3.6}
SPRUNG = {"state": "sprung", "tamper": False, "battery": 3.6}
RIVER_STAGES = """
[[rules]]
type = "water_level"
devices = ["river-01"]
hysteresis = 50
stages = [
  { name = "standby", above = 1500 }, { name = "caution", above = 2000 },
  { name = "evacuation_decision", above = 2500 }, { name = "danger", above = 3000 },
]
"""


def sigfox_uplink(link, limit: int = 140, reserve: int = 20, trap: str = "fallback") -> str:
    return f"""
[[uplinks]]
type = "sigfox"
port = "{link}"
daily_limit = {limit}
reserve = {reserve}
[uplinks.alarms]
trap_sprung = {{ when = "{trap}", delay = "{DELAY:g}s" }}
water_level_alarm = {{ when = "always", min_severity = "critical" }}
"""


@pytest.fixture
def modules(tmp_path):
    rylr, sigfox = RylrEmulator(tmp_path / "rylr0"), SigfoxEmulator(tmp_path / "sigfox0", send_delay=0.3)
    rylr.plug()
    sigfox.plug()
    yield rylr, sigfox
    rylr.unplug()
    sigfox.unplug()


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def sigfox_status(daemon: Daemon) -> dict:
    return next((u for u in daemon.status().get("uplinks", []) if u["name"] == "sigfox"), {})


def items(sub: Subscriber) -> list[dict]:
    return [i for b in sub.json_messages() for i in b["items"]]


def test_main_uplink_down_a_sprung_trap_goes_over_sigfox_after_the_delay_and_again_when_it_returns(
        tmp_path, modules, daemons, persistent_mosquitto):
    rylr, sigfox = modules
    broker = persistent_mosquitto
    config = write_config(tmp_path, rylr.link, broker.port, extra=sigfox_uplink(sigfox.link), top='health_every = "2s"\n')
    sub = Subscriber("127.0.0.1", broker.port, TOPIC, client_id="platform")
    try:
        broker.stop()  # LTE is down
        daemon = Daemon(config)
        daemons.append(daemon.start())
        daemon.wait_receiving()
        # The module's identity, read at start, is in status.
        wait_until(lambda: "module 0042ABCD" in (sigfox_status(daemon).get("detail") or ""), 20, "the module's id")
        sender = Sender(rylr)
        readings = [sender.send("river-01", {"level": 1000 + i, "water_temperature": 12.0, "battery": 3.6})
                    for i in range(20)]
        readings.append(sender.send("trap-01", ARMED))
        daemon.wait_committed(21)
        sprung_at = time.time()
        sender.send("trap-01", SPRUNG)
        wait_until(lambda: sigfox.sent, 60, f"a Sigfox send (log: {daemon.log_tail()})")
        sent_at, payload = sigfox.sent[0]
        assert sent_at - sprung_at >= DELAY  # the main uplink had its chance first

        # The platform's side: the backend callback decodes it to the alarm the gateway raised.
        [alarm] = [a for a in alarms(daemon.db)["recent"] if a["kind"] == "trap_sprung"]
        message = codec.decode(payload.hex(), sent_at, DEVICE_IDS)
        assert (message.kind, message.device, message.severity) == ("trap_sprung", "trap-01", "high")
        assert message.alarm_ref == codec.alarm_ref(alarm["id"]) and message.fallback
        assert abs(message.raised_at - alarm["raised_at"]) < 60

        detail = wait_until(lambda: "last sent" in (d := sigfox_status(daemon).get("detail") or "") and d, 10,
                            "the send in status")
        assert "budget 1/140 in 24 h" in detail and "last sent trap_sprung trap-01" in detail
        sends = wait_until(lambda: [e for e in daemon.log_events() if e.get("event") == "alarm sent over Sigfox"], 10,
                           "the send's log line")
        assert [(e["alarm"], e["id"], e["ref"]) for e in sends] == [("trap_sprung", alarm["id"], message.alarm_ref)]

        # LTE returns: the same alarm arrives in full, and the platform sees it is the one it had.
        broker.start()
        sub.wait_subscribed(timeout=20)
        wait_until(lambda: set(readings) | {alarm["id"]} <= {i["id"] for i in items(sub)}, 60,
                   "everything over the main uplink")
        [again] = [i for i in items(sub) if i["id"] == alarm["id"]]
        assert codec.same_alarm(message, again)
        wait_until(lambda: any(i["type"] == "health" and i.get("sigfox") for i in items(sub)), 30, "a health report")
        health = [i for i in items(sub) if i["type"] == "health" and i.get("sigfox")][-1]
        assert health["sigfox"]["sigfox"]["used"] == 1 and health["sigfox"]["sigfox"]["limit"] == 140
        wait_until(lambda: daemon.status()["outbox"]["pending"] == 0, 30, "nothing pending for any uplink")
        # Twenty plain readings, and the one alarm was all Sigfox carried.
        assert len(sigfox.sent) == 1
    finally:
        sub.close()


def test_main_uplink_up_the_trap_stays_off_sigfox_and_only_the_danger_stage_goes_always(
        tmp_path, modules, daemons, persistent_mosquitto):
    rylr, sigfox = modules
    broker = persistent_mosquitto
    config = write_config(tmp_path, rylr.link, broker.port, extra=sigfox_uplink(sigfox.link) + RIVER_STAGES)
    sub = Subscriber("127.0.0.1", broker.port, TOPIC, client_id="platform")
    try:
        daemon = Daemon(config)
        daemons.append(daemon.start())
        daemon.wait_receiving()
        daemon.wait_uplinks_up()
        sub.wait_subscribed(timeout=20)
        sender = Sender(rylr)
        sender.send("trap-01", ARMED)
        sender.send("trap-01", SPRUNG)
        sender.send("river-01", {"level": 2100, "water_temperature": 12.0, "battery": 3.6})  # caution: medium
        wait_until(lambda: {"trap_sprung", "water_level_alarm"} <= {i.get("alarm") for i in items(sub)}, 30,
                   "the alarms over the main uplink")

        def released() -> set:
            return {e["alarm"] for e in daemon.log_events() if e.get("event") == "alarm not sent over Sigfox"}
        wait_until(lambda: released() == {"trap_sprung", "water_level_alarm"}, DELAY + 30,
                   "the trap (acknowledged in time) and the caution stage (below critical) released from Sigfox")
        assert sigfox.sent == []

        sender.send("river-01", {"level": 3200, "water_temperature": 12.0, "battery": 3.6})  # danger: critical
        wait_until(lambda: sigfox.sent, 30, "the danger stage over Sigfox")
        [(at, payload)] = sigfox.sent
        message = codec.decode(payload, at, DEVICE_IDS)
        assert (message.kind, message.severity, message.value, message.device) == (
            "water_level_alarm", "critical", 3200, "river-01")
        assert not message.fallback
    finally:
        sub.close()


def test_the_budget_holds_across_a_restart_and_each_refusal_is_logged_and_shown(tmp_path, modules, daemons):
    rylr, sigfox = modules
    config = write_config(tmp_path, rylr.link, None, extra=sigfox_uplink(sigfox.link, limit=2, reserve=0,
                                                                          trap="always"))
    sender = Sender(rylr)

    def catch(daemon: Daemon, sent: int) -> None:
        sender.send("trap-01", ARMED)
        sender.send("trap-01", SPRUNG)
        wait_until(lambda: len(sigfox.sent) == sent, 30, f"{sent} Sigfox sends (log: {daemon.log_tail()})")

    first = Daemon(config)
    daemons.append(first.start())
    first.wait_receiving()
    catch(first, 1)
    catch(first, 2)
    assert first.stop() == 0

    second = Daemon(config)
    daemons.append(second.start())
    second.wait_receiving()
    sender.send("trap-01", ARMED)
    sender.send("trap-01", SPRUNG)

    def refused() -> list[dict]:
        return [e for e in second.log_events() if e.get("event") == "Sigfox budget refused an alarm; it waits for "
                "the main uplinks"]
    [refusal] = wait_until(refused, 30, f"a budget refusal (log: {second.log_tail()})")
    assert (refusal["alarm"], refusal["used"], refusal["limit"]) == ("trap_sprung", 2, 2)
    detail = wait_until(lambda: "refused" in (d := sigfox_status(second).get("detail") or "") and d, 10,
                        "the refusal in status")
    assert "budget 2/2 in 24 h" in detail and "1 refused in 24 h, last trap_sprung trap-01" in detail
    assert len(sigfox.sent) == 2
    # Refused by Sigfox is not lost: it stays in the outbox, and the alarm log has it.
    assert [a["kind"] for a in alarms(second.db)["recent"]].count("trap_sprung") == 3


def test_an_unplugged_module_is_shown_down_and_the_alarm_waiting_for_it_goes_once_it_is_back(
        tmp_path, modules, daemons):
    rylr, sigfox = modules
    config = write_config(tmp_path, rylr.link, None, extra=sigfox_uplink(sigfox.link, trap="always"))
    daemon = Daemon(config)
    daemons.append(daemon.start())
    daemon.wait_receiving()
    wait_until(lambda: sigfox_status(daemon).get("state") == "up", 20, "the module up")
    sigfox.unplug()
    sender = Sender(rylr)
    sender.send("trap-01", ARMED)
    sender.send("trap-01", SPRUNG)
    wait_until(lambda: sigfox_status(daemon).get("state") == "down", 30, f"the module down ({daemon.log_tail()})")
    sigfox.plug()
    wait_until(lambda: sigfox.sent, 60, f"the send once the module is back ({daemon.log_tail()})")
    assert codec.decode(sigfox.sent[0][1], sigfox.sent[0][0]).kind == "trap_sprung"
    wait_until(lambda: sigfox_status(daemon).get("state") == "up", 20, "the module up again")
