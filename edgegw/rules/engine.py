"""The rule engine: which rules watch which device, their persistent state, and evaluation order.

The writer thread calls :meth:`RuleEngine.observe` for every committed reading and
:meth:`RuleEngine.tick` about once a second, then :meth:`RuleEngine.save` inside its open
transaction. A rule is a small object with ``reading(ctx, state, obs)`` and ``tick(ctx, state, now)``;
``state`` is a plain JSON-able dict per (rule, device) that the engine loads and stores.

Order. Rules see a device's readings in observation order. With ``reorder_window`` = 0 (radio
readings are stamped on arrival, so arrival order is observation order) a reading is evaluated at
once. With a window W, readings wait until the clock passes their observation time + W and are then
evaluated oldest first: any arrival order within W gives the same alarms. A reading older than one
already evaluated for the same rule and device cannot be placed in the past; it is skipped and
counted, not allowed to flip a state machine backwards.

A clock that steps back. Readings are stamped on arrival, so nothing the rules have seen can lie
ahead of now unless the clock went back (NTP correcting a clock that ran ahead, a hand step, also
while the daemon was down). Then those marks would skip every new reading until the clock caught
up, perhaps a day later. So when anything seen lies more than ``STEP`` ahead of now, the engine says
so once, evaluates what it holds back at once (all of it was observed before the step), drops the
order marks from the future and lets each rule bring its remembered times back to now.

Time. Alarms about readings observed more than ``late_after`` before evaluation are marked ``late``.
Timers (silence, reminders) only run while the clock is plausible, and silence is measured only over
time the gateway was listening: after more than ten minutes down, or a clock jump, every device gets
a fresh interval; a trap's reminders keep their count across a step back.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import structlog

from edgegw.clock import STEP, plausible
from edgegw.config import Config, Device, DeviceHealthRule, TrapRule, WaterLevelRule
from edgegw.drivers import DriverRegistry, ValueSpec
from edgegw.log import Throttle
from edgegw.model import Alarm, Reading, Value
from edgegw.store.rulestate import RuleStateTables

log = structlog.get_logger("edgegw.rules")

CLOCK_JUMP = 120.0  # s the wall clock moved against the monotonic one: silence timers start afresh
CLOCK_WRITE_EVERY = 60.0  # s: the rules' clock is written at most this often (a page per commit wears the card)
# State that a reading moves on every time and that a power cut may set back (to its last write, at most
# CLOCK_WRITE_EVERY old) without silencing an alarm: the order mark. Rules add their own (Watch.progress).
# Written with the clock, not in every reading's commit: at field rate that page was a quarter of what
# each reading wrote to the SD card.
PROGRESS = frozenset({"t"})


class Observation(NamedTuple):
    """What rules need of a reading; small enough to hold back in ``rule_buffer`` as JSON."""

    reading_id: str
    device_id: str
    observed_at: float
    time_quality: str
    values: dict[str, Value]
    verified: bool = False

    @classmethod
    def of(cls, r: Reading) -> Observation:
        return cls(r.reading_id, r.device_id, r.observed_at, r.time_quality, r.values, r.verified)


@dataclass(slots=True)
class Context:
    """What a rule knows while it evaluates one device, and where its alarms go."""

    device: Device
    rule: str
    now: float
    late_after: float
    listening_since: float = 0.0
    alarms: list[Alarm] = field(default_factory=list)

    def raise_alarm(self, kind: str, severity: str, key: str, at: float, message: str,
                    obs: Observation | None = None, details: dict[str, Value | None] | None = None,
                    opens: bool = False, closes: tuple[str, ...] = ()) -> str:
        """Raise an alarm; ``key`` names its cause (a reading id, an episode) and makes the id stable."""
        alarm_id = f"{key}:{self.rule}:{kind}"
        self.alarms.append(Alarm(
            alarm_id=alarm_id, kind=kind, severity=severity, device_id=self.device.id, rule=self.rule,
            raised_at=at, message=message, details=details or {},
            reading_id=obs.reading_id if obs else None,
            time_quality=obs.time_quality if obs else "synced", verified=obs.verified if obs else None,
            late=self.now - at > self.late_after,
            name=self.device.name or None, location=self.device.location, opens=opens, closes=tuple(closes),
        ))
        return alarm_id

    def label(self) -> str:
        """The device as a person knows it: 'Box trap by the shrine (trap-shrine)'."""
        return f"{self.device.name} ({self.device.id})" if self.device.name else self.device.id


def spoken(seconds: float) -> str:
    """A duration as an alarm's reader says it: "45 s", "5 min", "2.5 h", "3 days"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3570:  # what would round to 60 min is said in hours
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h".replace(".0 h", " h")
    return f"{seconds / 86400:.1f} days".replace(".0 days", " days")


class Watch(Protocol):
    """One configured rule, as the engine drives it.

    ``progress``: keys of its state that may be written late (see :data:`PROGRESS`): a change to
    any other key is written in the transaction of the reading that made it. A rule replaces a
    list or dict in its state rather than changing it in place: the engine tells a change by
    comparing the state with a shallow copy of it as last written.
    """

    progress: frozenset[str]

    def reading(self, ctx: Context, state: dict[str, Any], obs: Observation) -> None: ...

    def tick(self, ctx: Context, state: dict[str, Any], now: float) -> None: ...

    def clock_back(self, state: dict[str, Any], now: float) -> None:
        """The clock went back: times in ``state`` later than ``now`` came from the wrong clock; bring them to now."""

    def clock_ahead(self, state: dict[str, Any], jump: float) -> None:
        """The clock was set ``jump`` seconds ahead (NTP after a boot in 1970, or a stale fake-hwclock):
        times in ``state`` came from the wrong clock; move them by as much."""

    def deaf(self, state: dict[str, Any], seconds: float) -> bool:
        """The gateway heard nothing for the last ``seconds`` (see :meth:`RuleEngine.deaf`): True if
        ``state`` changed."""


def build_watch(rule: TrapRule | WaterLevelRule | DeviceHealthRule, device: Device,
                specs: Mapping[str, ValueSpec]) -> Watch:
    from edgegw.rules.health import HealthWatch
    from edgegw.rules.trap import TrapWatch
    from edgegw.rules.water import WaterWatch
    if isinstance(rule, TrapRule):
        return TrapWatch(rule)
    if isinstance(rule, WaterLevelRule):
        return WaterWatch(rule, specs.get(rule.value))
    return HealthWatch(rule, device, specs)


class RuleEngine:
    """Evaluates rules for one gateway; used by the writer thread only."""

    def __init__(self, config: Config, drivers: DriverRegistry, store: RuleStateTables, now: float, mono: float):
        self.store = store
        self.window = config.alarms.reorder_window
        # Time spent in the reorder window is ours, not lateness of the reading.
        self.late_after = config.alarms.late_after + self.window
        self.devices = {d.id: d for d in config.devices}
        self.specs = {d.id: drivers[d.driver].values for d in config.devices}
        self.watches: dict[str, list[tuple[str, Watch]]] = {d.id: [] for d in config.devices}
        self.progress: dict[tuple[str, str], frozenset[str]] = {}  # (rule, device id) -> keys written late
        for rule in config.effective_rules():
            for device in config.devices:
                if rule.applies_to(device):
                    watch = build_watch(rule, device, self.specs[device.id])
                    self.watches[device.id].append((rule.name, watch))
                    self.progress[(rule.name, device.id)] = PROGRESS | watch.progress
        self.skipped_out_of_order = 0
        self._throttle = Throttle(60.0)
        # (rule, device id) -> its progress keys as committed and not yet written (see _on_commit)
        self._kept: dict[tuple[str, str], dict[str, Any]] = {}
        self.reload()
        # The memory of a device or rule the config no longer has goes: should it come back, what it
        # remembered may be long untrue (a trap re-armed and sprung meanwhile unheard would be silent).
        # Its open alarms close: nothing would ever close them, and status and the health report
        # would count them open for good.
        gone = [key for key in self.states if key not in self.progress]
        closing = store.unwatched_alarms(self.progress)
        if gone or closing:
            with store.transaction():
                store.forget_rule_states(gone)
                store.close_alarms([a[0] for a in closing], now)
            for key in gone:
                del self.states[key]
            for alarm_id, kind, rule_name, device_id in closing:
                log.warning("open alarm closed: no rule watches its device any more (the config changed)",
                            alarm=kind, id=alarm_id, rule=rule_name, device=device_id)
        store.on_rollback.append(self.reload)  # what a rolled-back group changed is undone here too
        store.on_commit.append(self._on_commit)
        last = store.rules_clock()
        # A clock behind the last save (a Pi without RTC, 1970): its times mean nothing yet.
        self.listening_since = last["since"] if last and now >= last["wall"] else now
        self._clock_since = self.listening_since
        self._clock = (now, mono)
        if last is None:  # a first start: remember when listening began before anything else happens
            self.save(now)
        elif now >= last["wall"]:
            # Silence counts only while we listened: not the time the gateway was down. After a
            # stop that is since the save at the stop; after a power cut or a kill, since up to
            # CLOCK_WRITE_EVERY after the last save (it may have run that long unsaved): a device
            # that stays silent is then told so up to a minute early, never late.
            self.deaf(now - last["wall"] - (0.0 if last.get("stopped") else CLOCK_WRITE_EVERY))

    def reload(self) -> None:
        """(Re)load state from the database: at start, and after the writer rolled a group back.
        Progress that earlier groups committed but the database does not hold yet (see
        :data:`PROGRESS`) is kept: a commit that fails for want of space must not set back when each
        device was last heard by up to a minute (a device with a short interval was told silent)."""
        self.states = self.store.rule_states()
        self._dirty: set[tuple[str, str]] = set()
        for key, kept in self._kept.items():
            if key in self.states:
                self.states[key].update(kept)
                self._dirty.add(key)  # written with the next commit
        self._late_now: set[tuple[str, str]] = set()  # made late in the open transaction
        self._saved_now: set[tuple[str, str]] = set()  # written in the open transaction
        self.buffer: list[tuple[float, str, Observation]] = [
            (obs.observed_at, obs.reading_id, obs) for obs in (Observation(*held) for held in self.store.held_readings())
        ]
        heapq.heapify(self.buffer)
        # The newest observation time the rules have seen: more than STEP ahead of now means the clock went back.
        self._newest = max([self._latest_mark(), *(t for t, _, _ in self.buffer)])
        self._late: set[tuple[str, str]] = set()  # changed in progress keys only: written with the clock
        # (rule, device id) -> its state but for the progress keys, as last written: what a change is told against
        self._written: dict[tuple[str, str], dict[str, Any]] = {}
        self._clock_written = float("-inf")  # a rolled-back group may have held the last write
        self._buffered: list[Observation] = []
        self._released: list[str] = []

    # -- evaluation -----------------------------------------------------------------------------

    def observe(self, reading: Reading, now: float) -> list[Alarm]:
        """A committed reading: evaluate it now, or hold it back for the reorder window."""
        obs = Observation.of(reading)
        if obs.device_id not in self.watches:
            return []
        alarms = self._clock_went_back(now) if self._newest > now + STEP else []
        self._newest = max(self._newest, obs.observed_at)
        if self.window <= 0:
            return alarms + self._evaluate(obs, now)
        heapq.heappush(self.buffer, (obs.observed_at, obs.reading_id, obs))
        self._buffered.append(obs)
        return alarms + self._release(now)

    def tick(self, now: float, mono: float) -> list[Alarm]:
        """Time passed: release held readings, then run the timers (silence, reminders)."""
        wall0, mono0 = self._clock
        # The monotonic clock tells a step back even when no mark lies a second ahead of now yet,
        # e.g. one device's last reading, stamped by the wrong clock, just behind now.
        stepped_back = (now - wall0) - (mono - mono0) < -STEP and self._newest > now - STEP
        alarms = self._clock_went_back(now) if stepped_back or self._newest > now + STEP else []
        alarms += self._release(now)
        jump = (now - wall0) - (mono - mono0)
        if abs(jump) > CLOCK_JUMP:
            log.warning("system clock jumped; silence timers start afresh", jump_s=round(jump))
            self.listening_since = now
            if jump > 0:  # what the rules stamped before is as far behind as the readings re-stamped now
                for key, state, watch in self._watched():
                    watch.clock_ahead(state, jump)
                    self._dirty.add(key)
        self._clock = (now, mono)
        if not plausible(now):
            return alarms  # no RTC, no NTP yet: "an hour since" means nothing
        for device_id, watches in self.watches.items():
            for rule, watch in watches:
                ctx = self._context(device_id, rule, now)
                watch.tick(ctx, self._state(rule, device_id), now)
                if ctx.alarms:  # a tick changes state only together with an alarm
                    self._dirty.add((rule, device_id))
                    alarms += ctx.alarms
        return alarms

    def _release(self, now: float) -> list[Alarm]:
        alarms: list[Alarm] = []
        while self.buffer and self.buffer[0][0] <= now - self.window:
            _, reading_id, obs = heapq.heappop(self.buffer)
            self._released.append(reading_id)
            alarms += self._evaluate(obs, now)
        return alarms

    def _release_all(self, now: float) -> list[Alarm]:
        """Evaluate every held reading now (the clock went back)."""
        alarms: list[Alarm] = []
        while self.buffer:
            _, reading_id, obs = heapq.heappop(self.buffer)
            self._released.append(reading_id)
            alarms += self._evaluate(obs, now)
        return alarms

    def _clock_went_back(self, now: float) -> list[Alarm]:
        """Readings seen lie ahead of ``now``: the clock went back. Stop trusting what the wrong clock stamped."""
        ahead, held = self._newest - now, len(self.buffer)
        # Everything held was observed before the step, so before any reading still to come: in its
        # own order, now, rather than a step's length later.
        alarms = self._release_all(now)
        marks = 0
        for (rule, device_id), state in self.states.items():
            # Not only the marks ahead of now: a wrong-clock mark within a second of now would still
            # turn away the next reading, which the true clock stamps just before or after now.
            if state.get("t", -math.inf) > now - STEP:
                del state["t"]
                marks += 1
                for name, watch in self.watches.get(device_id, ()):
                    if name == rule:
                        watch.clock_back(state, now)
                self._dirty.add((rule, device_id))
        self._newest = self._latest_mark()
        log.warning("system clock is behind readings the rules have seen; their order marks are reset"
                    " and held readings evaluated now", behind_s=round(ahead), marks_reset=marks, released=held)
        return alarms

    def _latest_mark(self) -> float:
        return max((s.get("t", -math.inf) for s in self.states.values()), default=-math.inf)

    def _evaluate(self, obs: Observation, now: float) -> list[Alarm]:
        alarms: list[Alarm] = []
        device_id = obs.device_id
        for rule, watch in self.watches[device_id]:
            key = (rule, device_id)
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = {}
            elif obs.observed_at < state.get("t", -math.inf):
                self.skipped_out_of_order += 1
                suppressed = self._throttle.allow(key)
                if suppressed is not None:
                    log.info("reading older than one already evaluated; rule skips it", rule=rule,
                             device=device_id, reading=obs.reading_id, similar_suppressed=suppressed)
                continue
            state["t"] = obs.observed_at
            ctx = self._context(device_id, rule, now)
            watch.reading(ctx, state, obs)
            if self._written.get(key) == self._lasting(key, state):
                self._late.add(key)
                self._late_now.add(key)
            else:
                self._dirty.add(key)
            if ctx.alarms:
                alarms += ctx.alarms
        return alarms

    def _context(self, device_id: str, rule: str, now: float) -> Context:
        return Context(self.devices[device_id], rule, now, self.late_after, self.listening_since)

    def _state(self, rule: str, device_id: str) -> dict[str, Any]:
        return self.states.setdefault((rule, device_id), {})

    def _lasting(self, key: tuple[str, str], state: dict[str, Any]) -> dict[str, Any]:
        """The state but for its progress keys (a shallow copy: a JSON dump took 5 us a reading and
        rule): changes here are written at once."""
        progress = self.progress.get(key, PROGRESS)
        return {k: v for k, v in state.items() if k not in progress}

    # -- persistence ----------------------------------------------------------------------------

    def dirty(self, now: float) -> bool:
        """True when state changed since the last :meth:`save` and is due to be written."""
        return bool(self._dirty or self._buffered or self._released
                    or (self._late and now - self._clock_written >= CLOCK_WRITE_EVERY))

    def deaf(self, seconds: float) -> None:
        """The gateway heard nothing for the last ``seconds``: it was stopped, or its writer waited
        for disk space while the sources read nothing. Silence timers leave that time out."""
        if seconds <= 0:
            return
        self.listening_since += seconds
        for key, state, watch in self._watched():
            if watch.deaf(state, seconds):
                self._dirty.add(key)

    def detach(self) -> None:
        """Stop following the store's commits and rollbacks: another engine takes over (a reload)."""
        self.store.on_rollback.remove(self.reload)
        self.store.on_commit.remove(self._on_commit)

    def _on_commit(self) -> None:
        """The writer's transaction committed: keep the progress it made and did not write, for a
        rollback to come back to (see :meth:`reload`)."""
        for key in self._saved_now:
            self._kept.pop(key, None)
        for key in self._late_now & self._late:
            progress = self.progress.get(key, PROGRESS)
            self._kept[key] = {k: v for k, v in self.states[key].items() if k in progress}
        self._late_now.clear()
        self._saved_now.clear()

    def _watched(self) -> Iterator[tuple[tuple[str, str], dict[str, Any], Watch]]:
        """Each rule's state for each device, with the watch that keeps it."""
        for key, state in self.states.items():
            for name, watch in self.watches.get(key[1], ()):
                if name == key[0]:
                    yield key, state, watch

    def save(self, now: float, everything: bool = False, stopping: bool = False) -> None:
        """Write changed state inside the writer's open transaction: changes to progress keys alone
        (see :data:`PROGRESS`) only with the clock, every :data:`CLOCK_WRITE_EVERY`, or ``everything``
        (at a stop or a reload). ``stopping``: the daemon stops now, so the next start knows the
        gateway listened until ``now``."""
        clock: dict[str, float] | None = None
        if (everything or now - self._clock_written >= CLOCK_WRITE_EVERY
                or self._clock_since != self.listening_since):
            clock = {"wall": now, "since": self.listening_since}
            if stopping:
                clock["stopped"] = True
        keys = self._dirty | self._late if clock is not None else self._dirty
        self.store.save_rules(clock, [(r, d, self.states[(r, d)]) for r, d in keys],
                              [(o.reading_id, o.observed_at, o) for o in self._buffered], self._released)
        for key in keys:
            self._written[key] = self._lasting(key, self.states[key])
        self._late -= keys
        self._saved_now |= keys
        if clock is not None:
            self._clock_written, self._clock_since = now, self.listening_since
        self._dirty.clear()
        self._buffered.clear()
        self._released.clear()
