"""Clock repair: a Pi without RTC stamps readings in 1970 until NTP steps the clock; they are held,
then re-stamped from the monotonic clock and marked estimated."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgegw.clock import CLOCK_SANE_AFTER, STEP, ClockWatch, SyncWait, kernel_synchronized
from edgegw.model import Reading
from edgegw.radio.emulator import RylrEmulator
from edgegw.store import Store
from tests.broker import Subscriber
from tests.gateway import Daemon, Sender, wait_until, write_config

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), Path("/nonexistent"))


@given(st.lists(st.floats(-STEP * 0.9, STEP * 0.9), max_size=50))
def test_slewing_is_followed_silently_and_a_step_is_reported_once(slews):
    watch, offset = ClockWatch(86400.0, 10.0), 86390.0
    for i, slew in enumerate(slews):
        offset += slew
        assert watch.step(offset + 11.0 + i, 11.0 + i) is None
    assert watch.step(1_790_000_000.0, 100.0) == pytest.approx(offset)
    assert watch.step(1_790_000_001.0, 101.0) is None


def test_restamp_touches_only_this_boots_unsent_readings_from_before_the_step(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.register_uplinks(["town"])
    store.begin()
    for item_id, observed, mono, boot, pending in [
        ("old", 86400.0, 100.0, "boot-a", 1),    # before the step: re-stamped
        ("sent", 86401.0, 101.0, "boot-a", 0),   # already delivered: history, left alone
        ("other", 86402.0, 102.0, "boot-b", 1),  # another boot: its monotonic clock means nothing now
        ("new", 1_790_000_103.0, 103.0, "boot-a", 1),  # after the step: already right
    ]:
        reading = Reading(item_id, "river-01", "water_level", observed, "unsynced", 1, {"level": 1}, "lora0", 21,
                          None, None, mono, boot)
        store.add_reading(reading, b"", pending, 0.0)
    assert store.restamp("boot-a", 1_790_000_000.0) == 1
    store.commit()
    rows = {r[0]: (r[1], json.loads(r[2])) for r in store.conn.execute("SELECT item_id, observed_at, item FROM outbox_items")}
    assert rows["old"][0] == 1_790_000_100.0
    assert rows["old"][1]["observed_at"] == "2026-09-21T14:15:00.000Z" and rows["old"][1]["time_quality"] == "estimated"
    assert rows["sent"][0] == 86401.0 and rows["other"][0] == 86402.0 and rows["new"][0] == 1_790_000_103.0
    assert rows["sent"][1]["time_quality"] == "unsynced"


def _unsynced(store: Store, item_id: str, mono: float, boot: str) -> None:
    reading = Reading(item_id, "river-01", "water_level", 86400.0 + mono, "unsynced", 1, {"level": 1}, "lora0", 21,
                      None, None, mono, boot)
    store.begin()
    store.add_reading(reading, b"", 1, 0.0)
    store.commit()


def test_restamp_reads_only_the_rows_of_this_boot(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.register_uplinks(["town"])
    store.note_boot("boot-a")
    for i in range(5000):  # a backlog left by an earlier boot
        _unsynced(store, f"a{i}", float(i), "boot-a")
    store.note_boot("boot-b")
    _unsynced(store, "b0", 10.0, "boot-b")
    steps = []
    store.conn.set_progress_handler(lambda: steps.append(1), 100)  # called every 100 VM instructions
    store.begin()
    assert store.restamp("boot-b", 1_790_000_000.0) == 1
    store.commit()
    store.conn.set_progress_handler(None, 0)
    assert len(steps) < 20  # reading the 5,000 rows of boot-a takes thousands

    again = Store(tmp_path / "gw.db")  # the daemon restarts within boot-b: its mark holds
    again.note_boot("boot-b")
    _unsynced(again, "b1", 11.0, "boot-b")
    again.begin()
    assert again.restamp("boot-b", 1_790_000_000.0) == 1  # b1; b0 is right already
    again.commit()


def test_a_row_of_this_boot_below_its_mark_is_still_restamped(tmp_path):
    # seq is the highest left plus one: once every row of this boot has gone, new ones start lower.
    store = Store(tmp_path / "gw.db")
    store.register_uplinks(["town"])
    store.note_boot("boot-a")
    for i in range(3):
        _unsynced(store, f"old{i}", float(i), "boot-a")
    store.note_boot("boot-b")
    store._forget([1, 2, 3])  # dropped at the cap (or delivered long ago, and purged)
    _unsynced(store, "b0", 10.0, "boot-b")
    store.begin()
    assert store.restamp("boot-b", 1_790_000_000.0) == 1
    store.commit()


def _sent(sub: Subscriber, kind: str) -> list[dict]:
    """The items of ``kind`` the broker got so far."""
    return [i for b in sub.json_messages() for i in b["items"] if i["type"] == kind]


def _observed(item: dict) -> float:
    return time.mktime(time.strptime(item["observed_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone


def _three_river_readings(daemon: Daemon, emulator: RylrEmulator) -> tuple[Sender, dict[str, float]]:
    """Start the daemon, have the river gauge send three readings (each id with the test's own, true
    time), and wait until they are committed and the uplink is up."""
    daemon.start().wait_receiving()
    sender = Sender(emulator)
    sent_at = {sender.send("river-01"): time.time() for _ in range(3)}
    daemon.wait_committed(3)
    wait_until(lambda: any(u["state"] == "up" for u in daemon.status()["uplinks"]), 20, "uplink up")
    return sender, sent_at


@pytest.mark.skipif(not LIBFAKETIME.exists() or not shutil.which("faketime"), reason="needs libfaketime (apt-get install faketime)")
def test_readings_stamped_before_ntp_are_held_then_restamped_and_marked_estimated(tmp_path, mosquitto):
    clock = tmp_path / "faketime"
    clock.write_text("@1970-01-02 00:00:00\n")  # a Pi booted without RTC, before NTP
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, mosquitto.port, log_level="info"), env)
    sub = Subscriber("127.0.0.1", mosquitto.port, "test/gw-test/batches")
    try:
        _, sent_at = _three_river_readings(daemon, emulator)
        assert _sent(sub, "reading") == []  # held

        clock.write_text("+0\n")  # NTP steps the clock to the true time
        readings = wait_until(lambda: _sent(sub, "reading"), 20, "the held readings, re-stamped")
        assert {r["id"] for r in readings} == set(sent_at)
        for r in readings:
            assert r["time_quality"] == "estimated"
            assert abs(_observed(r) - sent_at[r["id"]]) < 2.0, r
        wait_until(lambda: "system clock stepped" in daemon.log.read_text(), 10, "the step logged")
    finally:
        sub.close()
        daemon.stop()
        emulator.unplug()


RIVER_STAGES = """
[[rules]]
type = "water_level"
devices = ["river-01"]
hysteresis = 50
stages = [{ name = "standby", above = 1500 }, { name = "caution", above = 2000 },
          { name = "evacuation_decision", above = 2500 }, { name = "danger", above = 3000 }]
"""
ARMED, SPRUNG = ({"state": s, "tamper": False, "battery": 3.6} for s in ("armed", "sprung"))


def _level(mm: int) -> dict:
    return {"level": mm, "water_temperature": 12.5, "battery": 3.6}


def _rows(db: Path, sql: str, *args) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def _committed(db: Path, reading_id: str) -> bool:
    return bool(_rows(db, "SELECT 1 FROM outbox WHERE item_id = ?", reading_id))


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs libfaketime (apt-get install faketime)")
def test_a_day_ahead_then_restarted_on_the_true_clock_raises_every_alarm_of_the_field_once(tmp_path, mosquitto):
    """A Pi whose clock started a day ahead, stopped, and restarted once NTP corrected it: a sprung trap
    and a river at 3,500 mm still alarm, and nothing the field caused is raised twice or not at all."""
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    config = write_config(tmp_path, emulator.link, mosquitto.port, extra=RIVER_STAGES, log_level="info")
    ahead = Daemon(config, {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+1d", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    true = Daemon(config)
    sub = Subscriber("127.0.0.1", mosquitto.port, "test/gw-test/batches")
    sender = Sender(emulator)

    db = true.db  # the same data directory, both times

    def alarms() -> list[tuple]:
        return _rows(db, "SELECT kind, json_extract(body, '$.details.stage') FROM alarms ORDER BY rowid")

    try:
        ahead.start().wait_receiving()
        sender.send("trap-01", ARMED)
        first = sender.send("river-01", _level(1000))
        last = sender.send("river-01", _level(1600))  # standby, raised on the wrong clock
        wait_until(lambda: _committed(db, last), 20, "the readings of the day-ahead clock")
        [(stamped,)] = _rows(db, "SELECT observed_at FROM outbox WHERE item_id = ?", first)
        assert stamped > time.time() + 86000  # libfaketime did put the daemon a day ahead
        assert ahead.stop() == 0

        true.start().wait_receiving()
        sent_at = time.time()
        for _ in range(2):  # the field repeats its state: each catch and each stage alarms once
            sender.send("trap-01", SPRUNG)
            sender.send("river-01", _level(3500))
        last = sender.send("river-02", _level(1000))
        wait_until(lambda: _committed(db, last), 20, "the readings of the true clock")
        assert alarms() == [("water_level_alarm", "standby"), ("trap_sprung", None), ("water_level_alarm", "danger")]
        [(count, raised_at)] = _rows(db, "SELECT count(*), max(observed_at) FROM outbox WHERE kind = 'alarm'"
                                         " AND item_id LIKE 'trap-01:%'")
        assert count == 1 and abs(raised_at - sent_at) < 10  # stamped by the true clock
        stepped = [e for e in true.log_events() if e.get("event", "").startswith("system clock is behind readings")]
        assert len(stepped) == 1 and stepped[0]["level"] == "warning" and stepped[0]["behind_s"] > 86000

        def heard() -> set[str]:
            return {i["id"] for i in _sent(sub, "alarm")}
        wait_until(lambda: len(heard()) == 3, 20, "the three alarms at the platform")
    finally:
        sub.close()
        ahead.stop()
        true.stop()
        emulator.unplug()


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs libfaketime (apt-get install faketime)")
def test_a_catch_held_in_the_reorder_window_alarms_as_soon_as_ntp_steps_a_day_ahead_clock_back(tmp_path, mosquitto):
    clock = tmp_path / "faketime"
    clock.write_text("+1d\n")
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    daemon = Daemon(write_config(tmp_path, emulator.link, mosquitto.port, log_level="info",
                                 extra='\n[alarms]\nreorder_window = "3s"\n'), env)

    def alarms() -> list[str]:
        return [kind for (kind,) in _rows(daemon.db, "SELECT kind FROM alarms ORDER BY rowid")]

    def held() -> int:
        return _rows(daemon.db, "SELECT count(*) FROM rule_buffer")[0][0]

    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        sender.send("trap-01", ARMED)
        sender.send("trap-01", SPRUNG)
        daemon.wait_committed(2)
        assert alarms() == [] and held() == 2  # for the window; the wrong clock would make it last a day

        clock.write_text("+0\n")  # NTP steps the clock back to the true time
        wait_until(lambda: alarms() == ["trap_sprung"], 20, "the held catch evaluated after the step")
        repeat = sender.send("trap-01", SPRUNG)  # the trap repeats its state on the true clock: no second alarm
        wait_until(lambda: _committed(daemon.db, repeat), 20, "the repeat")
        wait_until(lambda: held() == 0, 20, "the repeat evaluated after its window")
        stepped = wait_until(lambda: [e for e in daemon.log_events()
                                      if e.get("event", "").startswith("system clock is behind readings")],
                             10, "the step said")
        assert len(stepped) == 1 and stepped[0]["released"] == 2
        assert daemon.stop() == 0
        assert alarms() == ["trap_sprung"]
    finally:
        daemon.stop()
        emulator.unplug()


def test_sync_wait_holds_until_the_kernel_says_synchronised_twice_or_the_wait_ends():
    said: list[bool | None] = [False]
    wait = SyncWait(100.0, lambda: said[0], mono=lambda: 10.0)
    assert (wait.synced, wait.holding, wait.held_before) == (False, True, float("inf"))
    assert wait.check(11.0) is None
    said[0] = True
    assert wait.check(12.0) is None  # once: the NTP client may set the clock only after telling the kernel
    assert wait.holding and not wait.synced
    assert wait.check(13.0) == "synced"
    assert (wait.synced, wait.holding, wait.held_before) == (True, False, CLOCK_SANE_AFTER)
    said[0] = False  # nine hours without NTP: the kernel calls it unsynchronised again, the daemon does not
    assert wait.check(14.0) is None and wait.synced

    expiring = SyncWait(100.0, lambda: False, mono=lambda: 10.0)
    assert expiring.check(99.0) is None
    assert expiring.check(100.0) == "expired"
    assert (expiring.synced, expiring.holding, expiring.held_before) == (False, False, CLOCK_SANE_AFTER)
    assert expiring.check(101.0) is None  # readings go marked unsynced until NTP comes

    assert SyncWait(100.0, lambda: False, mono=lambda: 200.0).holding is False  # a restart long after boot
    assert SyncWait(100.0, lambda: None, mono=lambda: 10.0).synced  # cannot ask the kernel: a plausible clock counts
    assert SyncWait(0.0, lambda: False).synced  # off
    assert SyncWait(100.0, lambda: False, mono=lambda: 10.0, synced_this_boot=True).synced  # a restart after NTP


def test_mark_synced_marks_only_this_boots_unsent_readings_stamped_by_the_clock_ntp_kept(tmp_path):
    store = Store(tmp_path / "gw.db")
    store.register_uplinks(["town"])
    store.note_boot("boot-a")
    offset = 1_790_000_000.0
    store.begin()
    for item_id, observed, mono, boot, pending, quality in [
        ("kept", offset + 100.2, 100.0, "boot-a", 1, "unsynced"),      # NTP found the clock right: synced
        ("stepped", offset - 3600.0 + 101.0, 101.0, "boot-a", 1, "estimated"),  # re-stamped: left alone
        ("far", offset - 7200.0 + 102.0, 102.0, "boot-a", 1, "unsynced"),  # another clock: restamp's, not this
        ("sent", offset + 103.0, 103.0, "boot-a", 0, "unsynced"),      # delivered: history, left alone
        ("other", offset + 104.0, 104.0, "boot-b", 1, "unsynced"),     # another boot
        ("1970", 86400.0 + 105.0, 105.0, "boot-a", 1, "unsynced"),    # never plausible
    ]:
        store.add_reading(Reading(item_id, "river-01", "water_level", observed, quality, 1, {"level": 1}, "lora0", 21,
                                  None, None, mono, boot), b"", pending, 0.0)
    assert store.mark_synced("boot-a", offset) == 1
    store.commit()
    rows = {r[0]: json.loads(r[1])["time_quality"] for r in store.conn.execute("SELECT item_id, item FROM outbox_items")}
    assert rows == {"kept": "synced", "stepped": "estimated", "far": "unsynced", "sent": "unsynced",
                    "other": "unsynced", "1970": "unsynced"}
    assert Store(tmp_path / "gw.db").boot_synced("boot-a")  # remembered for a restart within the boot
    store.note_boot("boot-b")  # the next boot starts unsynced
    assert not store.boot_synced("boot-b") and not store.boot_synced("boot-a")


def _cli_status(config: Path) -> str:
    return subprocess.run([sys.executable, "-m", "edgegw", "status", "-c", str(config)], capture_output=True, text=True,
                          timeout=60, check=True).stdout


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs libfaketime (apt-get install faketime)")
@pytest.mark.skipif(kernel_synchronized() is not False, reason="needs a kernel that calls the clock unsynchronised")
def test_a_fake_hwclock_boot_holds_readings_not_alarms_until_await_sync_ends_then_sends_them_unsynced(tmp_path, mosquitto):
    """fake-hwclock: the clock is plausible but six hours behind and NTP has not set it (this machine's
    kernel says so). [clock] await_sync holds this boot's readings, never an alarm; when the wait ends
    they go, marked unsynced."""
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    # CLOCK_MONOTONIC counts from boot (this machine's, long ago): the wait ends 25 s from now.
    ends = int(time.monotonic()) + 25
    await_sync = f'health_every = "3s"\n[clock]\nawait_sync = "{ends}s"\n'
    config = write_config(tmp_path, emulator.link, mosquitto.port, top=await_sync, extra='\n[[rules]]\ntype = "trap"\n',
                          log_level="info")
    daemon = Daemon(config, {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "-6h", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    sub = Subscriber("127.0.0.1", mosquitto.port, "test/gw-test/batches")

    try:
        daemon.start().wait_receiving()
        sender = Sender(emulator)
        held = [sender.send("river-01"), sender.send("trap-01", ARMED)]
        sprung = sender.send("trap-01", SPRUNG)
        [alarm] = wait_until(lambda: _sent(sub, "alarm"), 10, "the trap alarm, not held")
        assert alarm["reading"] == sprung
        assert _sent(sub, "reading") == [] and time.monotonic() < ends
        shown = wait_until(lambda: "CLOCK not set by NTP yet" in (text := _cli_status(config)) and text, 15,
                           "status showing the clock")
        assert "this boot's readings are held" in shown and time.monotonic() < ends, shown
        wait_until(lambda: any(h["clock"] == "held" for h in _sent(sub, "health")), 10, "a health report: clock held")

        readings = wait_until(lambda: len(r := _sent(sub, "reading")) >= 3 and r, 40, "the held readings, once the wait ended")
        assert {r["id"] for r in readings} == {*held, sprung}
        for r in readings:  # as the wrong clock stamped them, and saying so
            assert r["time_quality"] == "unsynced" and abs(_observed(r) - (time.time() - 6 * 3600)) < 120, r
        assert "clock still not synchronised after [clock] await_sync" in daemon.log.read_text()
        wait_until(lambda: "readings are sent marked unsynced" in _cli_status(config), 15, "status after the wait")
        wait_until(lambda: _sent(sub, "health")[-1]["clock"] == "unsynced", 10, "a health report: clock unsynced")
    finally:
        sub.close()
        daemon.stop()
        emulator.unplug()


@pytest.fixture
def ntp_synced(tmp_path) -> tuple[Path, Path]:
    """A library to preload whose adjtimex says synchronised once the flag file exists (tests/ntp_synced.c)."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build tests/ntp_synced.c")
    lib = tmp_path / "ntp_synced.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(Path(__file__).parent / "ntp_synced.c")],
                   check=True)
    return lib, tmp_path / "ntp-synced"


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="needs libfaketime (apt-get install faketime)")
@pytest.mark.parametrize("behind", [6 * 3600, 0])
def test_readings_held_for_ntp_go_once_it_set_the_clock_restamped_or_marked_synced(tmp_path, mosquitto, ntp_synced,
                                                                                  behind):
    """[clock] await_sync on a fake-hwclock boot six hours behind (or on a clock that happens to be
    right): NTP steps the clock and tells the kernel (a preloaded adjtimex); the held readings go
    re-stamped from the monotonic clock and marked estimated (or, with no step, marked synced), and
    a reading after it is synced."""
    lib, flag = ntp_synced
    clock = tmp_path / "faketime"
    clock.write_text(f"-{behind}s\n")
    env = {"LD_PRELOAD": f"{LIBFAKETIME}:{lib}", "FAKETIME_TIMESTAMP_FILE": str(clock), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKE_NTP_SYNCED": str(flag)}
    emulator = RylrEmulator(tmp_path / "rylr0")
    emulator.plug()
    await_sync = f'[clock]\nawait_sync = "{int(time.monotonic()) + 600}s"\n'  # NTP ends the wait, not the time
    daemon = Daemon(write_config(tmp_path, emulator.link, mosquitto.port, top=await_sync,
                                 extra='\n[[rules]]\ntype = "trap"\n', log_level="info"), env)
    sub = Subscriber("127.0.0.1", mosquitto.port, "test/gw-test/batches")

    def readings() -> list[dict]:
        return _sent(sub, "reading")

    try:
        sender, sent_at = _three_river_readings(daemon, emulator)
        for state in (ARMED, SPRUNG):
            sent_at[sender.send("trap-01", state)] = time.time()
        # The alarm goes at once, and would take every sendable reading with it: none goes.
        wait_until(lambda: _sent(sub, "alarm"), 10, "the trap alarm, not held")
        assert readings() == []

        clock.write_text("+0\n")  # NTP steps the clock to the true time...
        flag.touch()  # ...and tells the kernel
        held = wait_until(lambda: len(r := readings()) >= len(sent_at) and r, 20, "the held readings")
        assert {r["id"] for r in held} == set(sent_at)
        for r in held:
            assert abs(_observed(r) - sent_at[r["id"]]) < 2.0, r
            assert r["time_quality"] == ("estimated" if behind else "synced"), r
        wait_until(lambda: "clock synchronised by NTP" in daemon.log.read_text(), 10, "the sync logged")

        after = sender.send("river-01")
        [last] = wait_until(lambda: [r for r in readings() if r["id"] == after], 20, "a reading after NTP")
        assert last["time_quality"] == "synced"

        # Restarted hours later with the uplink (and NTP) gone for nine: the kernel calls the clock
        # unsynchronised again; the daemon remembers NTP set it in this boot.
        assert daemon.stop() == 0
        flag.unlink()
        daemon.start().wait_receiving()
        again = sender.send("river-01")
        [last] = wait_until(lambda: [r for r in readings() if r["id"] == again], 20, "a reading after the restart")
        assert last["time_quality"] == "synced"
    finally:
        sub.close()
        daemon.stop()
        emulator.unplug()
