"""Edge rules on real SQLite: trap, water level, device health; ordering, lateness and restarts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from edgegw.config import Config
from edgegw.drivers import load_drivers
from edgegw.items import BATCH_SCHEMA_FILE, alarm_item
from edgegw.model import Alarm, Reading
from edgegw.rules import RuleEngine
from edgegw.rules.engine import CLOCK_WRITE_EVERY, spoken
from edgegw.store import Store
from edgegw.store.rulestate import CLOSED_BY_CONFIG

DRIVERS = load_drivers()
T0 = 1_790_000_000.0  # 2026-09: a plausible clock
BATCH = jsonschema.Draft202012Validator(json.loads(BATCH_SCHEMA_FILE.read_text()))

RIVER_STAGES = [
    {"name": "standby", "above": 1500}, {"name": "caution", "above": 2000},
    {"name": "evacuation_decision", "above": 2500}, {"name": "danger", "above": 3000},
]


def config(rules: list[dict] | None = None, **alarms) -> Config:
    return Config.model_validate({
        "gateway_id": "gw",
        "sources": [{"type": "rylr", "name": "lora0", "port": "/dev/null"}],
        "devices": [
            {"id": "trap-01", "address": 17, "driver": "trap", "name": "Shrine box trap", "location": [35.98, 138.15],
             "interval": "10m"},
            {"id": "river-01", "address": 21, "driver": "water_level", "interval": "10m"},
        ],
        "rules": rules or [],
        "alarms": alarms,
    }, context={"drivers": DRIVERS})


class Rig:
    """A rule engine on a real database, fed the way the writer feeds it: one transaction per step."""

    def __init__(self, path: Path, cfg: Config, now: float = T0, ahead: float = 0.0):
        self.path, self.cfg = path, cfg
        self.ahead = ahead  # how far the gateway's wall clock runs ahead of the true time (the monotonic clock's)
        self.store = Store(path)
        self.engine = RuleEngine(cfg, DRIVERS, self.store, now, self.mono(now))
        self.alarms: list[Alarm] = []
        self.counter = 0
        self.last_step = now

    def _commit(self, alarms: list[Alarm], now: float) -> list[Alarm]:
        new = [a for a in alarms if self.store.add_alarm(a, 1, now)]
        self.engine.save(now)
        self.store.commit()
        self.last_step = now
        self.alarms += new
        return new

    def read(self, device: str, values: dict, at: float, now: float | None = None, verified: bool = False) -> list[Alarm]:
        self.counter += 1
        driver = "trap" if device.startswith("trap") else "water_level"
        reading = Reading(f"{device}:0:{self.counter}", device, driver, at, "synced", self.counter, values,
                          "lora0", 17, None, None, 0.0, "boot", verified=verified)
        now = at if now is None else now
        self.store.begin()
        return self._commit(self.engine.observe(reading, now), now)

    def mono(self, now: float) -> float:
        return now - self.ahead - T0

    def tick(self, now: float) -> list[Alarm]:
        self.store.begin()
        return self._commit(self.engine.tick(now, self.mono(now)), now)

    def restart(self, now: float, power_cut: bool = False) -> None:
        """A stop after the last step (the writer's last commit writes what the rules hold back), or a
        power cut, and a start at ``now``."""
        if not power_cut:
            self.store.begin()
            self.engine.save(self.last_step, everything=True, stopping=True)
            self.store.commit()
        self.store.close()
        self.store = Store(self.path)
        self.engine = RuleEngine(self.cfg, DRIVERS, self.store, now, self.mono(now))

    def kinds(self, prefix: str = "") -> list[str]:
        return [a.kind for a in self.alarms if a.kind.startswith(prefix)]


def trap(state: str, battery: float = 3.6) -> dict:
    return {"state": state, "tamper": False, "battery": battery}


def level(mm: float) -> dict:
    return {"level": mm, "water_temperature": 15.0, "battery": 3.6}


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path / "gw.db", config())
    yield r
    r.store.close()


# -- trap -------------------------------------------------------------------------------------------

def test_trap_sprung_raises_once_with_device_location_and_first_frame_time(rig):
    rig.read("trap-01", trap("armed"), T0)
    (alarm,) = rig.read("trap-01", trap("sprung"), T0 + 60)
    rig.read("trap-01", trap("sprung"), T0 + 61)  # the device repeats its state
    rig.read("trap-01", trap("sprung"), T0 + 600)
    assert rig.kinds() == ["trap_sprung"]
    assert (alarm.severity, alarm.device_id, alarm.location, alarm.raised_at) == ("high", "trap-01", (35.98, 138.15), T0 + 60)
    assert alarm.name == "Shrine box trap" and "Shrine box trap" in alarm.message and not alarm.late
    BATCH.validate({"schema": "edgegw.batch/1", "batch_id": "b" * 32, "gateway": "gw", "sent_at": "2026-01-01T00:00:00Z",
                    "items": [alarm_item(alarm)]})


def test_reminders_until_rearmed_then_rearmed_closes_the_alarm(rig):
    rig.read("trap-01", trap("sprung"), T0)  # the first report already sprung: a catch all the same
    for minute in range(1, 200):
        rig.tick(T0 + 60 * minute)
    assert rig.kinds("trap") == ["trap_sprung", "trap_reminder", "trap_reminder", "trap_reminder"]
    assert [a.raised_at for a in rig.alarms if a.kind == "trap_reminder"] == [T0 + 3600, T0 + 7200, T0 + 10800]
    assert rig.alarms[-1].message.endswith(": trap still sprung after 3 h")
    (rearmed,) = [a for a in rig.read("trap-01", trap("armed"), T0 + 12000) if a.kind.startswith("trap")]
    assert rearmed.kind == "trap_rearmed" and rearmed.closes == (rig.alarms[0].alarm_id,)
    assert rig.store.conn.execute("SELECT count(*) FROM alarms WHERE open = 1 AND kind = 'trap_sprung'").fetchone()[0] == 0
    rig.tick(T0 + 20000)
    assert rig.kinds("trap")[-1] == "trap_rearmed"


def test_restart_while_sprung_raises_no_second_alarm(rig):
    rig.read("trap-01", trap("armed"), T0)
    rig.read("trap-01", trap("sprung"), T0 + 10)
    rig.restart(T0 + 20)
    rig.read("trap-01", trap("sprung"), T0 + 30)
    rig.tick(T0 + 40)
    assert rig.kinds() == ["trap_sprung"]


def test_alarm_ids_are_the_same_when_the_same_readings_are_evaluated_again(tmp_path):
    def run(path):
        r = Rig(path, config())
        r.read("trap-01", trap("armed"), T0)
        r.read("trap-01", trap("sprung"), T0 + 5)
        r.tick(T0 + 3700)
        return [a.alarm_id for a in r.alarms if a.kind.startswith("trap")]
    first, second = run(tmp_path / "a.db"), run(tmp_path / "b.db")
    assert first == second and len(set(first)) == 2


# -- water level ------------------------------------------------------------------------------------

RIVER = [{"type": "water_level", "devices": ["river-01"], "hysteresis": 50, "stages": RIVER_STAGES}]


def test_river_stages_alarm_on_entering_and_clear_below_threshold_minus_hysteresis(tmp_path):
    rig = Rig(tmp_path / "gw.db", config(RIVER))
    for i, mm in enumerate([1000, 1600, 1700, 2100, 3200, 3100, 2960, 2940, 1400, 1000]):
        rig.read("river-01", level(mm), T0 + 600 * i)
    got = [(a.kind, a.details.get("stage"), a.severity) for a in rig.alarms]
    assert got == [
        ("water_level_alarm", "standby", "low"), ("water_level_alarm", "caution", "medium"),
        ("water_level_alarm", "danger", "critical"),  # straight past evacuation_decision: one alarm
        ("water_level_clear", "evacuation_decision", "informational"),  # 2940 < 3000 - 50
        ("water_level_clear", None, "informational"),  # 1400 < 1500 - 50: back to normal
    ]
    assert rig.store.conn.execute("SELECT count(*) FROM alarms WHERE open = 1").fetchone()[0] == 0


def test_a_level_the_driver_calls_impossible_moves_no_stage_and_no_rise(tmp_path):
    # water_level declares 0..10000 mm: a glitch of 10500 once raised the danger alarm (critical, what
    # Sigfox sends), a rise, and the all-clear at the next true reading.
    rule = [{**RIVER[0], "rise": {"amount": 300, "within": "30m"}}]
    rig = Rig(tmp_path / "gw.db", config(rule))
    for i, mm in enumerate([1000, 1010, 10500, 1000, -20, 1020]):
        rig.read("river-01", level(mm), T0 + 60 * i)
    assert rig.kinds("water") == []
    faults = [a.message for a in rig.alarms if a.kind == "sensor_fault"]
    assert len(faults) == 2 and "level 10500 outside 0..10000" in faults[0] and "level -20 outside" in faults[1]


def test_paddy_too_low_and_overflow_are_two_ladders(tmp_path):
    paddy = [{"type": "water_level", "devices": ["river-01"], "hysteresis": 5,
              "stages": [{"name": "too_low", "below": 30}, {"name": "overflow", "above": 120}]}]
    rig = Rig(tmp_path / "gw.db", config(paddy))
    for i, mm in enumerate([60, 29, 33, 36, 130, 100]):
        rig.read("river-01", level(mm), T0 + 600 * i)
    assert [(a.kind, a.details.get("stage")) for a in rig.alarms] == [
        ("water_level_alarm", "too_low"), ("water_level_clear", None),
        ("water_level_alarm", "overflow"), ("water_level_clear", None),
    ]


def test_rate_of_rise(tmp_path):
    rule = [{"type": "water_level", "devices": ["river-01"], "rise": {"amount": 300, "within": "30m"}}]
    rig = Rig(tmp_path / "gw.db", config(rule))
    for i, mm in enumerate([1000, 1100, 1200, 1350, 1400, 1450, 1450, 1450, 1450, 1450, 1900]):
        rig.read("river-01", level(mm), T0 + 600 * i)
    # 1000 -> 1350 within 30 min; flat long enough to re-arm; then +450 in 10 min.
    assert [(a.kind, a.details["rise"]) for a in rig.alarms] == [("water_rise", 350), ("water_rise", 450)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(min_value=1950, max_value=2050, allow_nan=False), min_size=1, max_size=60))
def test_a_level_within_the_hysteresis_band_alarms_at_most_once(tmp_path_factory, levels):
    rule = [{"type": "water_level", "devices": ["river-01"], "hysteresis": 50, "stages": [{"name": "caution", "above": 2000}]}]
    rig = Rig(tmp_path_factory.mktemp("band") / "gw.db", config(rule))
    for i, mm in enumerate(levels):
        rig.read("river-01", level(mm), T0 + i)
    assert rig.kinds().count("water_level_alarm") <= 1 and "water_level_clear" not in rig.kinds()


walks = st.lists(st.integers(min_value=-400, max_value=400), min_size=1, max_size=50).map(
    lambda steps: [max(0, 1500 + sum(steps[:i + 1])) for i in range(len(steps))])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(walks)
def test_every_clear_follows_an_alarm(tmp_path_factory, levels):
    rig = Rig(tmp_path_factory.mktemp("walk") / "gw.db", config(RIVER))
    for i, mm in enumerate(levels):
        rig.read("river-01", level(mm), T0 + i)
    open_alarm = None
    for a in rig.alarms:
        if a.kind == "water_level_clear":
            assert open_alarm is not None and a.closes == (open_alarm,)
        open_alarm = a.alarm_id if a.details.get("stage") is not None else None


def _signal(seed: int, n: int) -> list[tuple[str, dict, float]]:
    rnd = random.Random(seed)
    out, mm, state = [], 1500, "armed"
    for i in range(n):
        mm = max(0, mm + rnd.randint(-400, 400))
        if rnd.random() < 0.2:
            state = "sprung" if state == "armed" else "armed"
        t = T0 + 60 * i + rnd.random() * 30
        out.append(("river-01", level(mm), t) if rnd.random() < 0.6 else ("trap-01", trap(state), t))
    return out


RULES_ALL = [*RIVER, {"type": "water_level", "name": "rise", "devices": ["river-01"],
                      "rise": {"amount": 500, "within": "5m"}}]


def _ids(alarms: list[Alarm]) -> list[tuple[str, str]]:
    return [(a.alarm_id, a.kind) for a in alarms]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.integers(2, 40), st.data())
def test_shuffled_within_the_reorder_window_gives_the_same_alarms(tmp_path_factory, seed, n, data):
    window = 600.0
    signal = _signal(seed, n)
    in_order = Rig(tmp_path_factory.mktemp("a") / "gw.db", config(RULES_ALL, reorder_window=window))
    for device, values, t in signal:
        in_order.read(device, values, t, now=t)
    in_order.tick(signal[-1][2] + window + 1)
    # Each reading arrives up to `window` after it was observed, so arrival order is a shuffle.
    delays = data.draw(st.lists(st.floats(0, window - 1), min_size=n, max_size=n))
    arrivals = sorted(((t + d, device, values, t) for (device, values, t), d in zip(signal, delays, strict=True)),
                      key=lambda x: x[0])
    shuffled = Rig(tmp_path_factory.mktemp("b") / "gw.db", config(RULES_ALL, reorder_window=window))
    for now, device, values, t in arrivals:
        shuffled.read(device, values, t, now=now)
    shuffled.tick(signal[-1][2] + window + 1)
    # The rig numbers readings in arrival order: compare by cause instead of reading id.
    assert [(a.kind, a.raised_at) for a in shuffled.alarms] == [(a.kind, a.raised_at) for a in in_order.alarms]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.integers(2, 40), st.integers(0, 40))
def test_restarting_at_any_point_gives_the_same_alarms(tmp_path_factory, seed, n, cut):
    signal = _signal(seed, n)

    def run(restart_at: int | None) -> list:
        rig = Rig(tmp_path_factory.mktemp("r") / "gw.db", config(RULES_ALL))
        for i, (device, values, t) in enumerate(signal):
            if i == restart_at:
                rig.restart(rig.last_step)  # at once: downtime is not listening (see below)
            rig.read(device, values, t)
            rig.tick(t + 1)
        rig.tick(signal[-1][2] + 7200)
        return _ids(rig.alarms)

    assert run(cut % n) == run(None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.integers(2, 40), st.integers(0, 40))
def test_a_power_cut_at_any_point_loses_no_alarm(tmp_path_factory, seed, n, cut):
    """After a power cut, what the rules write late (when a device was last heard, the order marks)
    is as last written: a silence may be told earlier, never later, and every other alarm is the same."""
    signal = _signal(seed, n)

    def run(cut_at: int | None) -> list[Alarm]:
        rig = Rig(tmp_path_factory.mktemp("p") / "gw.db", config(RULES_ALL))
        for i, (device, values, t) in enumerate(signal):
            if i == cut_at:
                rig.restart(rig.last_step, power_cut=True)  # and up at once
            rig.read(device, values, t)
            rig.tick(t + 1)
        rig.tick(signal[-1][2] + 7200)
        return rig.alarms

    clean, cut_off = run(None), run(cut % n)
    silence = ("device_silent", "device_back")
    assert [(a.alarm_id, a.kind) for a in cut_off if a.kind not in silence] == \
        [(a.alarm_id, a.kind) for a in clean if a.kind not in silence]
    told = [(a.kind, a.device_id, a.raised_at) for a in cut_off if a.kind in silence]
    assert [k[:2] for k in told] == [(a.kind, a.device_id) for a in clean if a.kind in silence]
    # Counted from a report before the last one at worst: earlier, never later.
    assert all(at <= a.raised_at for (_, _, at), a in zip(told, [a for a in clean if a.kind in silence], strict=True))


def test_progress_is_written_with_the_clock_not_in_every_readings_commit(tmp_path):
    rig = Rig(tmp_path / "gw.db", config())

    def heard() -> float:
        return json.loads(rig.store.conn.execute(
            "SELECT state FROM rule_state WHERE device_id = 'trap-01' AND rule = 'device_health'").fetchone()[0])["heard"]

    rig.read("trap-01", trap("armed"), T0)  # a first state is written at once
    assert heard() == T0
    rig.read("trap-01", trap("armed"), T0 + 10)
    assert heard() == T0 and not rig.engine.dirty(T0 + 10)
    assert rig.engine.dirty(T0 + CLOCK_WRITE_EVERY)  # the writer's tick commits it then, readings or not
    rig.tick(T0 + CLOCK_WRITE_EVERY)
    assert heard() == T0 + 10
    rig.read("trap-01", trap("armed", battery=3.0), T0 + 70)  # opens battery_low: written at once, heard with it
    assert heard() == T0 + 70
    rig.read("trap-01", trap("armed", battery=3.0), T0 + 80)
    rig.restart(T0 + 81)  # a stop writes what was held back
    assert heard() == T0 + 80


# -- lateness ---------------------------------------------------------------------------------------

def test_a_reading_observed_long_ago_raises_a_late_alarm_and_skips_local_actions_by_default(rig):
    rig.read("trap-01", trap("armed"), T0)
    (alarm,) = rig.read("trap-01", trap("sprung"), T0 + 60, now=T0 + 3 * 3600)
    assert alarm.late and alarm_item(alarm)["late"] is True


def test_a_reading_older_than_one_already_evaluated_is_skipped_not_allowed_to_rearm(rig):
    rig.read("trap-01", trap("armed"), T0)
    rig.read("trap-01", trap("sprung"), T0 + 100)
    assert rig.read("trap-01", trap("armed"), T0 + 50, now=T0 + 101) == []
    assert rig.engine.skipped_out_of_order == 2  # the trap rule and the health rule
    assert rig.kinds() == ["trap_sprung"]


# -- a clock that steps back -----------------------------------------------------------------------

DAY = 86400.0
TIMED = ("trap_reminder", "device_silent", "device_back")  # raised by ticks: when depends on the clock
STEPPED_BACK = "system clock is behind readings the rules have seen"


def _stepped_back(logs: list[dict]) -> int:
    return sum(e["event"].startswith(STEPPED_BACK) and e["log_level"] == "warning" for e in logs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.integers(2, 40), st.integers(0, 40), st.none() | st.integers(0, 40),
       st.sampled_from([120.0, 3600.0, DAY, 2 * DAY]), st.sampled_from([0.0, 600.0]))
def test_a_clock_ahead_then_stepped_back_raises_every_alarm_once(tmp_path_factory, seed, n, cut, restart_at,
                                                                 ahead, window):
    """The same field, once on a true clock and once on a clock ``ahead`` until reading ``step`` (NTP, or a
    restart on a corrected clock at ``restart_at``): the alarms readings cause are the same, none twice."""
    signal = _signal(seed, n)  # true observation times, at least 30 s apart
    step = 1 + cut % n  # the first reading stamped by the corrected clock; n: corrected after the last

    def run(ahead: float, restart_at: int | None) -> Rig:
        rig = Rig(tmp_path_factory.mktemp("step") / "gw.db", config(RIVER, reorder_window=window),
                  now=signal[0][2] + ahead, ahead=ahead)
        for i, (device, values, t) in enumerate(signal):
            if i == step:
                rig.ahead = 0.0
            if i == restart_at:
                rig.restart(t + rig.ahead)
            rig.read(device, values, t + rig.ahead)
            rig.tick(t + rig.ahead + 1)
        rig.ahead = 0.0
        # Time goes on in minutes, as the daemon's ticks would (a single late tick would make the true
        # run's held readings "late"). A step shorter than the window leaves what it held no longer
        # ahead of now: it waits out its window.
        end = signal[-1][2] + window + min(ahead, window) + 2
        for t in range(int(signal[-1][2]) + 60, int(end) + 60, 60):
            rig.tick(min(t, end))
        return rig

    def caused_by_readings(rig: Rig) -> list[tuple[str, str, bool]]:
        return [(a.alarm_id, a.kind, a.late) for a in rig.alarms if a.kind not in TIMED]

    true, stepped = run(0.0, None), run(ahead, None if restart_at is None else restart_at % n)
    assert caused_by_readings(stepped) == caused_by_readings(true)
    assert stepped.engine.skipped_out_of_order == 0
    for cause in {a.alarm_id for a in stepped.alarms if a.kind == "trap_sprung"}:
        numbers = [a.details["reminder"] for a in stepped.alarms
                   if a.kind == "trap_reminder" and a.alarm_id.startswith(cause.split(":trap:")[0] + ":")]
        assert numbers == sorted(set(numbers))  # none twice


@pytest.mark.parametrize("restart", [False, True], ids=["ntp-step", "restart-on-the-true-clock"])
def test_after_a_day_ahead_a_sprung_trap_and_a_river_at_3500_mm_alarm_and_the_step_is_said_once(tmp_path, restart):
    rig = Rig(tmp_path / "gw.db", config(RIVER), now=T0 + DAY, ahead=DAY)
    rig.read("trap-01", trap("armed"), T0 + DAY)
    rig.read("river-01", level(1000), T0 + DAY + 10)
    rig.ahead = 0.0
    with capture_logs() as logs:
        if restart:
            rig.restart(T0 + 30)
        rig.tick(T0 + 31)
        sprung = rig.read("trap-01", trap("sprung"), T0 + 60)
        river = rig.read("river-01", level(3500), T0 + 70)
        rig.read("trap-01", trap("sprung"), T0 + 80)
        rig.read("river-01", level(3500), T0 + 90)
        rig.tick(T0 + 91)
    assert [a.kind for a in sprung] == ["trap_sprung"] and not sprung[0].late
    assert [(a.kind, a.details["stage"]) for a in river] == [("water_level_alarm", "danger")]
    assert rig.kinds() == ["trap_sprung", "water_level_alarm"]
    assert rig.engine.skipped_out_of_order == 0
    assert _stepped_back(logs) == 1


@pytest.mark.parametrize("restart", [False, True], ids=["ntp-step", "restart-on-the-true-clock"])
def test_held_readings_stamped_a_day_ahead_do_not_wait_a_day_in_the_reorder_window(tmp_path, restart):
    rig = Rig(tmp_path / "gw.db", config(reorder_window=600), now=T0 + DAY, ahead=DAY)
    rig.read("trap-01", trap("armed"), T0 + DAY)
    assert rig.read("trap-01", trap("sprung"), T0 + DAY + 60) == []  # held for the window
    rig.ahead = 0.0
    if restart:
        rig.restart(T0 + 100)  # the held readings wait in rule_buffer
    (alarm,) = rig.tick(T0 + 101)
    assert alarm.kind == "trap_sprung" and alarm.raised_at == T0 + DAY + 60 and not alarm.late
    rig.read("trap-01", trap("armed"), T0 + 200)
    rig.tick(T0 + 801)  # the window's order holds after the step: the re-arm comes after the catch
    assert rig.kinds("trap") == ["trap_sprung", "trap_rearmed"]
    assert rig.store.conn.execute("SELECT count(*) FROM rule_buffer").fetchone()[0] == 0


@pytest.mark.parametrize(("tick_at", "stamped_at"), [(119.5, 119.6), (120.3, 119.9)],
                         ids=["mark-just-ahead-of-now", "mark-just-behind-now"])
def test_a_wrong_clock_mark_within_a_second_of_the_corrected_clock_turns_no_reading_away(tmp_path, tick_at,
                                                                                           stamped_at):
    """Found by the property test below: the step is two minutes, but the trap's last reading, stamped by
    the wrong clock, lies within a second of the corrected now, so it is not "ahead" by the rule of thumb;
    the next reading, stamped by the true clock just before that mark, must still be evaluated."""
    rig = Rig(tmp_path / "gw.db", config(), now=T0 + 120, ahead=120)
    rig.read("trap-01", trap("armed"), T0 + 120)
    rig.ahead = 0.0
    rig.tick(T0 + tick_at)  # the monotonic clock shows the step
    (alarm,) = rig.read("trap-01", trap("sprung"), T0 + stamped_at, now=T0 + tick_at + 0.1)
    assert alarm.kind == "trap_sprung"
    assert rig.engine.skipped_out_of_order == 0


def test_reminders_keep_their_count_across_a_step_back(tmp_path):
    rig = Rig(tmp_path / "gw.db", config(), now=T0 + DAY, ahead=DAY)
    rig.read("trap-01", trap("sprung"), T0 + DAY)
    for minute in range(1, 130):
        rig.tick(T0 + DAY + 60 * minute)
    assert rig.kinds("trap") == ["trap_sprung", "trap_reminder", "trap_reminder"]
    rig.ahead = 0.0
    for minute in range(125):  # two hours on the true clock
        rig.tick(T0 + 60 * minute)
    reminders = [a for a in rig.alarms if a.kind == "trap_reminder"]
    assert [a.details["reminder"] for a in reminders] == [1, 2, 3, 4]
    assert [a.raised_at for a in reminders[2:]] == [T0 + 3600, T0 + 7200]  # an interval after the step, then each


def test_silence_is_told_on_the_true_clock_after_a_step_back(tmp_path):
    rig = Rig(tmp_path / "gw.db", config(), now=T0 + DAY, ahead=DAY)
    rig.read("trap-01", trap("armed"), T0 + DAY)
    rig.read("river-01", level(1000), T0 + DAY)
    rig.ahead = 0.0
    for minute in range(40):  # the trap falls silent at the step; the river keeps reporting
        rig.tick(T0 + 60 * minute)
        if minute % 5 == 0:
            rig.read("river-01", level(1000), T0 + 60 * minute)
    (silent,) = [a for a in rig.alarms if a.kind == "device_silent"]
    assert silent.device_id == "trap-01" and silent.raised_at == T0 + 1800  # 3 x 10 min from the step


@pytest.mark.parametrize(("seconds", "said"), [
    (0, "0 s"), (5, "5 s"), (89, "89 s"), (90, "2 min"), (300, "5 min"), (3569, "59 min"), (3570, "1 h"), (5400, "1.5 h"),
    (7200, "2 h"), (172800, "2 days"), (3 * 86400 + 43200, "3.5 days"),
])
def test_alarm_texts_say_durations_as_a_reader_would(seconds, said):
    # "silent for 0 min (expected every 0.0833333 min)" was what a 5 s sensor's alarm said.
    assert spoken(seconds) == said


# -- device health ----------------------------------------------------------------------------------

def test_silent_device_alarms_once_and_back_closes_it_across_a_restart(rig):
    rig.read("trap-01", trap("armed"), T0)
    rig.read("river-01", level(1000), T0)
    for minute in range(1, 40):
        rig.tick(T0 + 60 * minute)
        if minute % 5 == 0:
            rig.read("river-01", level(1000), T0 + 60 * minute)
    (silent,) = [a for a in rig.alarms if a.kind == "device_silent"]
    assert silent.device_id == "trap-01" and silent.raised_at == T0 + 1800  # 3 x 10 min
    assert silent.message.endswith("silent for 31 min (expected every 10 min)")
    rig.restart(T0 + 60 * 40)  # restarted within the gap: still the same listening
    rig.tick(T0 + 60 * 41)
    (back,) = rig.read("trap-01", trap("armed"), T0 + 60 * 42)
    assert back.kind == "device_back" and back.closes == (silent.alarm_id,)
    assert rig.kinds().count("device_silent") == 1


def test_after_downtime_every_device_gets_a_fresh_interval(rig):
    rig.read("trap-01", trap("armed"), T0)
    rig.read("river-01", level(1000), T0)
    rig.restart(T0 + 5 * 3600)  # the gateway was off for five hours: we were not listening
    rig.tick(T0 + 5 * 3600 + 60)
    assert rig.kinds() == []
    rig.tick(T0 + 5 * 3600 + 1801)
    assert sorted(a.device_id for a in rig.alarms if a.kind == "device_silent") == ["river-01", "trap-01"]


@pytest.mark.parametrize("stop", [60, 8 * 60, 5 * 3600])
def test_silence_counts_the_time_listened_before_a_stop_and_not_the_stop(rig, stop):
    # A stop of under 10 minutes used to count as listening: a restart (an upgrade, `keys
    # reset-counter`) told every device with a short interval silent at once, falsely.
    rig.read("trap-01", trap("armed"), T0)
    rig.read("river-01", level(1000), T0 + 60 * 4)
    rig.tick(T0 + 60 * 25)  # 25 of its 30 min of silence heard before the stop
    rig.restart(T0 + 60 * 25 + stop)
    back = T0 + 60 * 25 + stop
    rig.tick(back + 60 * 5)
    assert rig.kinds() == []
    rig.tick(back + 60 * 5 + 1)
    (silent,) = [a for a in rig.alarms if a.kind == "device_silent"]
    assert silent.raised_at == back + 60 * 5  # 30 min listened: 25 before the stop, 5 after
    assert f"silent for {spoken(60 * 30 + stop + 1)}" in silent.message  # since last heard, by the wall clock


def test_after_a_power_cut_silence_is_told_up_to_a_minute_early_never_late(rig):
    rig.read("trap-01", trap("armed"), T0)
    rig.read("river-01", level(1000), T0 + 60 * 4)
    rig.tick(T0 + 60 * 20)  # the rules' clock is saved at most once a minute: this is the last save
    rig.restart(T0 + 60 * 20 + 3600, power_cut=True)  # it may have run up to a minute longer unsaved
    back = T0 + 60 * 20 + 3600
    rig.tick(back + 60 * 9 - 1)
    assert rig.kinds() == []
    rig.tick(back + 60 * 9 + 1)
    (silent,) = [a for a in rig.alarms if a.kind == "device_silent"]
    assert silent.raised_at == back + 60 * 9  # 20 min + the minute it may have listened + 9


def test_time_the_gateway_was_deaf_is_not_silence(rig):
    # The writer waited for disk space: the sources read nothing, the devices kept sending.
    rig.read("trap-01", trap("armed"), T0)
    rig.read("river-01", level(1000), T0 + 60 * 35)
    rig.tick(T0 + 60 * 25)
    rig.engine.deaf(60 * 10)
    rig.tick(T0 + 60 * 35)
    assert rig.kinds() == []
    rig.read("trap-01", trap("armed"), T0 + 60 * 36)  # its frames come in after the wait
    rig.read("river-01", level(1000), T0 + 60 * 50)
    rig.tick(T0 + 60 * 36 + 60 * 30)
    assert rig.kinds() == []  # a reading ends what was deaf of the silence before it
    rig.tick(T0 + 60 * 36 + 60 * 30 + 1)
    assert rig.kinds() == ["device_silent"]


def test_a_rolled_back_group_keeps_when_devices_were_last_heard_before_it(rig):
    # A commit that failed for want of space reloaded the rules' state from the database, where
    # when each device was last heard is written once a minute: a device with a short interval was
    # told silent as the disk came back (an outside harness: "silent for 42 s", then "back").
    for at in (T0, T0 + 50):  # the second committed; when it was heard is written with the next clock
        rig.read("trap-01", trap("armed"), at)
        rig.read("river-01", level(1000), at)
    rig.store.begin()  # the next group fails
    rig.store.rollback()
    rig.tick(T0 + 50 + 1800)
    assert rig.kinds() == []
    rig.tick(T0 + 50 + 1801)
    assert sorted(a.device_id for a in rig.alarms if a.kind == "device_silent") == ["river-01", "trap-01"]


def test_an_engine_replaced_at_a_reload_stops_following_the_store(tmp_path):
    # Each SIGHUP built an engine whose hooks the store kept calling after the next replaced it.
    store = Store(tmp_path / "gw.db")
    first = RuleEngine(config(), DRIVERS, store, T0, 0.0)
    second = RuleEngine(config(), DRIVERS, store, T0, 0.0)
    first.detach()
    assert store.on_commit == [second._on_commit] and store.on_rollback == [second.reload]


def test_no_timers_while_the_clock_is_implausible(tmp_path):
    rig = Rig(tmp_path / "gw.db", config(), now=1000.0)  # a Pi booted without RTC: 1970
    rig.tick(1000.0 + 86400)
    assert rig.alarms == []


def test_an_authenticated_catch_after_an_unverified_one_is_an_alarm_of_its_own(tmp_path):
    # A keyed trap in its rollout window takes plain frames too: one forged "sprung" raised an
    # unverified alarm, and the real, sealed catch after it was a repeat, ignored. A siren told to
    # trust only verified alarms never sounded (an outside attack harness).
    rig = Rig(tmp_path / "gw.db", config(RULES_ALL))
    (forged,) = rig.read("trap-01", trap("sprung"), T0)
    assert forged.kind == "trap_sprung" and forged.verified is False
    (real,) = rig.read("trap-01", trap("sprung"), T0 + 60, verified=True)
    assert real.kind == "trap_sprung" and real.verified is True and real.closes == (forged.alarm_id,)
    assert rig.read("trap-01", trap("sprung"), T0 + 120, verified=True) == []  # its repeats change nothing
    assert rig.read("trap-01", trap("sprung"), T0 + 180) == []  # nor does an unverified one now
    (rearmed,) = rig.read("trap-01", trap("armed"), T0 + 240, verified=True)
    assert rearmed.kind == "trap_rearmed" and rearmed.closes == (real.alarm_id,)
    assert rearmed.details["sprung_for_s"] == 240  # since the first word of the catch


def test_a_trap_taken_out_of_the_config_and_back_forgets_its_old_catch(tmp_path):
    # Out of the config, its re-arming and new catch were rejected unheard; back in, its old memory
    # ("sprung") silenced the new catch.
    rig = Rig(tmp_path / "gw.db", config())
    rig.read("trap-01", trap("sprung"), T0)
    full = rig.cfg
    rig.cfg = full.model_copy(update={"devices": [d for d in full.devices if d.id != "trap-01"]})
    rig.restart(T0 + 600)
    rig.cfg = full
    rig.restart(T0 + 1200)
    rig.read("trap-01", trap("sprung"), T0 + 1260)
    assert [(a.kind, a.raised_at) for a in rig.alarms if a.kind == "trap_sprung"] == [("trap_sprung", T0),
                                                                                   ("trap_sprung", T0 + 1260)]


def test_the_open_alarms_of_a_device_taken_out_of_the_config_are_closed_and_no_other(tmp_path):
    # Nothing would close them: status and the health report counted them open for good.
    rig = Rig(tmp_path / "gw.db", config(RIVER))
    rig.read("trap-01", trap("sprung"), T0)
    rig.read("river-01", level(4000), T0 + 1)

    def open_alarms() -> list[tuple[str, str, str | None]]:
        return rig.store.conn.execute("SELECT device_id, kind, closed_by FROM alarms WHERE open = 1"
                                      " ORDER BY device_id").fetchall()
    before = open_alarms()
    assert [(d, k, c) for d, k, c in before if d == "trap-01"] == [("trap-01", "trap_sprung", None)]
    assert any(d == "river-01" for d, _, _ in before)
    full = rig.cfg
    rig.cfg = full.model_copy(update={"devices": [d for d in full.devices if d.id != "trap-01"]})
    rig.restart(T0 + 600)
    assert open_alarms() == [a for a in before if a[0] == "river-01"]  # the river's stays open
    closed = rig.store.conn.execute("SELECT closed_by, closed_at FROM alarms WHERE kind = 'trap_sprung'").fetchall()
    assert closed == [(CLOSED_BY_CONFIG, T0 + 600)]
    rig.restart(T0 + 700)  # said once: the next start finds nothing to close
    assert open_alarms() == [a for a in before if a[0] == "river-01"]


def test_a_reminder_due_while_the_gateway_was_off_is_not_late_and_runs_its_siren(tmp_path):
    # Off from 10 min after the catch to 3.5 h after it: the trap is sprung now, so the reminder the
    # start owes is about now; stamped at its due time (30 min ago) it was late and ran no action.
    rig = Rig(tmp_path / "gw.db", config())
    rig.read("trap-01", trap("sprung"), T0)
    rig.tick(T0 + 600)
    rig.restart(T0 + 3.5 * 3600, power_cut=True)
    rig.tick(T0 + 3.5 * 3600)
    (reminder,) = [a for a in rig.alarms if a.kind == "trap_reminder"]
    assert not reminder.late and reminder.raised_at == T0 + 3.5 * 3600 and reminder.details == {"reminder": 3}
    assert reminder.message.endswith("trap still sprung after 3.5 h")


def test_a_catch_before_ntp_set_the_clock_is_reminded_of_on_the_true_clock(tmp_path):
    # A Pi booted in 1970: the catch is stamped 1970. When NTP steps the clock, the reminder must come
    # an hour after the catch, not at once "after 20,791 days" (with its siren).
    rig = Rig(tmp_path / "gw.db", config(), now=1000.0, ahead=1000.0 - T0)
    rig.read("trap-01", trap("sprung"), 1010.0)
    rig.tick(1020.0)
    rig.ahead = 0.0  # NTP
    for minute in range(1, 70):
        rig.tick(T0 + 60 * minute)
    reminders = [a for a in rig.alarms if a.kind == "trap_reminder"]
    assert [(a.raised_at, a.message.rsplit(" after ", 1)[1]) for a in reminders] == [(T0 + 10 + 3600, "1 h")]


def test_battery_low_with_hysteresis(rig):
    for i, volts in enumerate([3.6, 3.2, 3.25, 3.15, 3.28, 3.31, 3.1]):
        rig.read("trap-01", trap("armed", volts), T0 + 60 * i)
    assert [(a.kind, a.details["battery"]) for a in rig.alarms] == [
        ("battery_low", 3.2), ("battery_ok", 3.31), ("battery_low", 3.1)]


@pytest.mark.parametrize("power_cut", [None, *range(1, 10)])
def test_sensor_faults_out_of_range_stuck_and_jump_once_per_episode(tmp_path, power_cut):
    """The same alarms with a power cut before any reading: what the checks remember is written at once."""
    rule = [{"type": "device_health", "devices": ["river-01"], "stuck": {"level": 3}, "max_jump": {"level": 500}}]
    rig = Rig(tmp_path / "gw.db", config(rule))
    for i, mm in enumerate([1000, 12000, 12000, 1000, 1100, 1100, 1100, 1100, 1200, 2500]):
        if i == power_cut:  # within a minute of the last write of the rules' clock
            rig.restart(T0 + 5 * i, power_cut=True)
        rig.read("river-01", level(mm), T0 + 5 * i)
    # reading number: fault
    got = [":".join(a.alarm_id.split(":")[2:4]) for a in rig.alarms if a.kind == "sensor_fault"]
    assert got == ["2:level.range", "2:level.jump", "4:level.jump", "7:level.stuck", "10:level.jump"]


# -- config -----------------------------------------------------------------------------------------

def test_default_rules_watch_traps_and_every_device_health():
    names = {(r.type, r.name) for r in config().effective_rules()}
    assert names == {("trap", "trap"), ("device_health", "device_health")}
