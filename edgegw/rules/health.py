"""Device health: silent devices, low batteries, implausible readings.

A trap sensor that stops reporting is an unchecked trap, so silence is an alarm of its own:
``device_silent`` once the device missed ``silent_after`` of its reporting intervals, ``device_back``
when it is heard again. ``battery_low`` / ``battery_ok`` use hysteresis. ``sensor_fault`` reports a
value outside the range its driver declares, a value stuck for ``stuck`` readings, or a jump
larger than ``max_jump`` between two readings; once per episode, re-armed by a plausible reading.
Stuck and jump checks apply only to the values named in the rule: a battery voltage is steady.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from edgegw.config import Device, DeviceHealthRule
from edgegw.drivers import ValueSpec
from edgegw.rules.engine import Context, Observation, spoken


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is float or kind is int:  # nearly always: the isinstance tests below took twice as long
        return value
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else value


class Checks(NamedTuple):
    """What is checked of one value: its plausible range (the driver's), the rule's jump and stuck limits."""

    minimum: float | None
    maximum: float | None
    max_jump: float | None
    stuck: int | None


class HealthWatch:
    # When the device was last heard, and its reading. A power cut may set them back to what they were
    # up to a minute before it, one report back: a device that then stays silent is told silent up to
    # one report early, never late. The registry's last_seen (edgegw status) is written with every reading.
    progress = frozenset({"heard", "last", "deaf"})

    def __init__(self, rule: DeviceHealthRule, device: Device, specs: Mapping[str, ValueSpec]):
        self.rule = rule
        self.silent_after = rule.silent_after * device.interval
        # Decided once per device, not for every value of every reading: most values have no check.
        ranges = {name: (spec.minimum, spec.maximum) for name, spec in specs.items()
                  if rule.plausible and (spec.minimum is not None or spec.maximum is not None)}
        self.checks = {name: Checks(*ranges.get(name, (None, None)), rule.max_jump.get(name), rule.stuck.get(name))
                       for name in [*ranges, *rule.max_jump, *rule.stuck]}

    def reading(self, ctx: Context, state: dict[str, Any], obs: Observation) -> None:
        if state.get("silent"):
            ctx.raise_alarm(
                "device_back", "informational", obs.reading_id, obs.observed_at,
                f"{ctx.label()} heard again after {spoken(obs.observed_at - state['heard'])}"
                if state.get("heard") else f"{ctx.label()} heard for the first time", obs,
                closes=(state["silent"],),
            )
            state["silent"] = None
        state["heard"], state["last"] = obs.observed_at, obs.reading_id
        state.pop("deaf", None)  # of the silence before this reading
        self._battery(ctx, state, obs)
        faults = self._faults(state, obs)
        if faults or state.get("faults"):
            open_faults = set(state.get("faults", []))
            for key, message, details in faults:
                if key not in open_faults:
                    ctx.raise_alarm("sensor_fault", "medium", f"{obs.reading_id}:{key}", obs.observed_at,
                                    f"{ctx.label()}: {message}", obs, details)
            state["faults"] = sorted(key for key, _, _ in faults)

    def _battery(self, ctx: Context, state: dict[str, Any], obs: Observation) -> None:
        low = self.rule.battery_low
        volts = _number(obs.values.get(self.rule.battery)) if low is not None else None
        if volts is None or low is None:
            return
        open_alarm = state.get("battery_low")
        if not open_alarm and volts <= low:
            state["battery_low"] = ctx.raise_alarm(
                "battery_low", "low", obs.reading_id, obs.observed_at,
                f"{ctx.label()}: battery {volts} V (low at {low} V)", obs, {"battery": volts}, opens=True,
            )
        elif open_alarm and volts > low + self.rule.battery_hysteresis:
            ctx.raise_alarm("battery_ok", "informational", obs.reading_id, obs.observed_at,
                            f"{ctx.label()}: battery {volts} V again", obs, {"battery": volts},
                            closes=(open_alarm,))
            state["battery_low"] = None

    def _faults(self, state: dict[str, Any], obs: Observation) -> list[tuple[str, str, dict]]:
        faults = []
        previous = dict(state.get("previous", {}))  # new dicts, not changed in place: see Watch
        stuck = dict(state.get("stuck", {}))
        for name, raw in obs.values.items():
            check = self.checks.get(name)
            value = _number(raw) if check is not None else None
            if value is None or check is None:
                continue
            minimum, maximum, limit, readings = check
            if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
                faults.append((f"{name}.range", f"{name} {value} outside {minimum}..{maximum}",
                               {"value": name, "reading": value, "minimum": minimum, "maximum": maximum}))
            if limit is not None:
                if name in previous and abs(value - previous[name]) > limit:
                    faults.append((f"{name}.jump", f"{name} jumped from {previous[name]} to {value}",
                                   {"value": name, "reading": value, "previous": previous[name], "max_jump": limit}))
                previous[name] = value
            if readings:
                same = stuck.get(name, [None, 0])
                stuck[name] = [value, same[1] + 1 if same[0] == value else 1]
                if stuck[name][1] >= readings:
                    faults.append((f"{name}.stuck", f"{name} stuck at {value} for {stuck[name][1]} readings",
                                   {"value": name, "reading": value, "readings": stuck[name][1]}))
        if previous:
            state["previous"] = previous
        if stuck:
            state["stuck"] = stuck
        return faults

    def clock_back(self, state: dict[str, Any], now: float) -> None:
        if state.get("heard", 0.0) > now:
            state["heard"] = now  # silence is counted afresh, as after any clock jump

    def clock_ahead(self, state: dict[str, Any], jump: float) -> None:
        if "heard" in state:
            state["heard"] += jump

    def deaf(self, state: dict[str, Any], seconds: float) -> bool:
        # Kept apart from "heard", which the alarm reports as when the device was last heard.
        if "heard" not in state or state.get("silent"):
            return False
        state["deaf"] = state.get("deaf", 0.0) + seconds
        return True

    def tick(self, ctx: Context, state: dict[str, Any], now: float) -> None:
        if state.get("silent"):
            return
        # Silence counts the time the gateway listened: not what it spent stopped (see RuleEngine.deaf).
        since = max(state.get("heard", 0.0) + state.get("deaf", 0.0), ctx.listening_since)
        if now - since <= self.silent_after:
            return
        key = state.get("last") or f"{ctx.device.id}:never:{int(ctx.listening_since)}"
        said = now - state.get("heard", since)  # since last heard, by the wall clock
        state["silent"] = ctx.raise_alarm(
            "device_silent", self.rule.silent_severity, key, since + self.silent_after,
            f"{ctx.label()} silent for {spoken(said)} (expected every {spoken(ctx.device.interval)})",
            None, {"last_heard": state.get("heard"), "interval_s": ctx.device.interval}, opens=True,
        )
