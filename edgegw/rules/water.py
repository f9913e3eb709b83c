"""Water level: stages with hysteresis, and rate of rise.

Stages form two ladders: ``above`` stages for rising water (a river's standby, caution, evacuation
decision, danger) and ``below`` stages for water running out (a paddy too low). Entering a higher
stage raises ``water_level_alarm`` for the highest stage reached; a stage is left only when the level
is ``hysteresis`` past its threshold, which raises ``water_level_clear``. A level hovering around a
threshold therefore alarms once.

Rate of rise: ``water_rise`` when the level is more than ``amount`` above the lowest level seen in
the last ``within``; it may fire again once the rise has fallen to half of ``amount``.

A level outside the range the driver declares possible is a sensor's fault (the health rule says
so), not water: it moves no stage and counts toward no rise, so one glitch cannot call an
evacuation-grade alarm and its all-clear.
"""

from __future__ import annotations

from typing import Any

from edgegw.config import Stage, WaterLevelRule
from edgegw.drivers import ValueSpec
from edgegw.rules.engine import Context, Observation, spoken

RANK_SEVERITY = ("low", "medium", "high", "critical")
MAX_SAMPLES = 256  # rise window memory per device; more than one reading a minute for four hours


class WaterWatch:
    progress: frozenset[str] = frozenset()

    def __init__(self, rule: WaterLevelRule, spec: ValueSpec | None = None):
        self.rule = rule
        self.low = spec.minimum if spec is not None and spec.minimum is not None else float("-inf")
        self.high = spec.maximum if spec is not None and spec.maximum is not None else float("inf")
        # Each ladder in "higher is worse" form: rising compares the level, falling its negation.
        up = sorted(((s.above, s) for s in rule.stages if s.above is not None), key=lambda p: p[0])
        down = sorted(((-s.below, s) for s in rule.stages if s.below is not None), key=lambda p: p[0])
        self.ladders: dict[str, tuple[int, list[Stage], list[float]]] = {
            "up": (1, [s for _, s in up], [level for level, _ in up]),
            "down": (-1, [s for _, s in down], [level for level, _ in down]),
        }

    def reading(self, ctx: Context, state: dict[str, Any], obs: Observation) -> None:
        value = obs.values.get(self.rule.value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not self.low <= value <= self.high:
            return
        for ladder, (sign, stages, levels) in self.ladders.items():
            if stages:
                self._stage(ctx, state, obs, ladder, stages, levels, sign * value, value)
        if self.rule.rise is not None:
            self._rise(ctx, state, obs, value)

    def _stage(self, ctx: Context, state: dict[str, Any], obs: Observation, ladder: str, stages: list[Stage],
               levels: list[float], x: float, value: float) -> None:
        current = state.get(ladder, -1)
        new = max((i for i, level in enumerate(levels) if x >= level), default=-1)
        if new <= current:
            new = current
            while new >= 0 and x < levels[new] - self.rule.hysteresis:
                new -= 1
        if new == current:
            return
        open_alarm = state.get(f"{ladder}_alarm")
        closes = (open_alarm,) if open_alarm else ()
        details = {"stage": stages[new].name if new >= 0 else None, "value": value,
                   "previous_stage": stages[current].name if current >= 0 else None}
        if new > current:
            stage = stages[new]
            bound = "above" if stage.above is not None else "below"
            threshold = stage.above if stage.above is not None else stage.below
            severity = stage.severity or RANK_SEVERITY[min(new, len(RANK_SEVERITY) - 1)]
            state[f"{ladder}_alarm"] = ctx.raise_alarm(
                "water_level_alarm", severity, obs.reading_id, obs.observed_at,
                f"{ctx.label()}: {self.rule.value} {value} reached stage {stage.name} ({bound} {threshold:g})",
                obs, {**details, "threshold": threshold}, opens=True, closes=closes,
            )
        else:
            # Back to a lower stage is still a stage: that clear stays open until the next change.
            clear = ctx.raise_alarm(
                "water_level_clear", "informational", obs.reading_id, obs.observed_at,
                f"{ctx.label()}: {self.rule.value} {value} back to "
                f"{stages[new].name if new >= 0 else 'normal'}", obs, details, opens=new >= 0, closes=closes,
            )
            state[f"{ladder}_alarm"] = clear if new >= 0 else None
        state[ladder] = new

    def _rise(self, ctx: Context, state: dict[str, Any], obs: Observation, value: float) -> None:
        rise = self.rule.rise
        assert rise is not None
        t = obs.observed_at
        samples = [s for s in state.get("samples", []) if s[0] >= t - rise.within][-(MAX_SAMPLES - 1):]
        samples.append([t, value])
        state["samples"] = samples
        low = min(v for _, v in samples)
        if value - low > rise.amount and not state.get("rising"):
            state["rising"] = True
            ctx.raise_alarm(
                "water_rise", rise.severity, obs.reading_id, t,
                f"{ctx.label()}: {self.rule.value} rose {value - low:g} in {spoken(rise.within)}", obs,
                {"rise": value - low, "within_s": rise.within, "value": value},
            )
        elif value - low <= rise.amount / 2:
            state["rising"] = False

    def clock_back(self, state: dict[str, Any], now: float) -> None:
        if "samples" in state:
            # Kept, as if seen just now: a rise against them may still be told, none waits for the wrong clock.
            state["samples"] = [[min(t, now), v] for t, v in state["samples"]]

    def clock_ahead(self, state: dict[str, Any], jump: float) -> None:
        if "samples" in state:
            state["samples"] = [[t + jump, v] for t, v in state["samples"]]

    def deaf(self, state: dict[str, Any], seconds: float) -> bool:
        return False  # a rise is measured between readings, by when they were observed

    def tick(self, ctx: Context, state: dict[str, Any], now: float) -> None:
        pass
