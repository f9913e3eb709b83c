"""Trap sprung: one alarm per catch, reminders while nobody re-arms the trap, and the re-arm.

A sprung trap holds a live animal: leaving it unchecked is an animal-welfare and legal problem, so
the alarm is repeated every ``reminder`` until a reading says the trap is armed again. Repeated
sprung frames (the device reports its state each interval) change nothing, but for one: an
authenticated catch after an unverified one (a keyed trap in its rollout window, whose plain frames
anyone may forge) is an alarm of its own, since a siren told to trust only verified alarms must
hear it.
"""

from __future__ import annotations

from typing import Any

from edgegw.config import TrapRule
from edgegw.rules.engine import Context, Observation, spoken


class TrapWatch:
    progress: frozenset[str] = frozenset()

    def __init__(self, rule: TrapRule):
        self.rule = rule

    def reading(self, ctx: Context, state: dict[str, Any], obs: Observation) -> None:
        value = obs.values.get(self.rule.value)
        if value is None:
            return
        sprung = value == self.rule.sprung
        # A catch told by an unverified frame before this authenticated one: a state from before
        # "verified" was kept counts as this frame's.
        confirmed = sprung and state.get("sprung") and obs.verified and not state.get("verified", True)
        if sprung and (not state.get("sprung") or confirmed):
            alarm = ctx.raise_alarm(
                "trap_sprung", "high", obs.reading_id, obs.observed_at, f"{ctx.label()}: trap sprung", obs,
                {self.rule.value: value}, opens=True, closes=(state["alarm"],) if confirmed else (),
            )
            state.update(sprung=True, since=state["since"] if confirmed else obs.observed_at, alarm=alarm,
                         cause=obs.reading_id, reminders=state.get("reminders", 0) if confirmed else 0)
            state["verified"] = obs.verified
        elif not sprung and state.get("sprung"):
            ctx.raise_alarm(
                "trap_rearmed", "informational", obs.reading_id, obs.observed_at,
                f"{ctx.label()}: trap re-armed", obs,
                {self.rule.value: value, "sprung_for_s": round(obs.observed_at - state["since"], 1)},
                closes=(state["alarm"],),
            )
            state.update(sprung=False, alarm=None, cause=None, reminders=0, verified=None)
        elif not sprung:
            state["sprung"] = False

    def clock_back(self, state: dict[str, Any], now: float) -> None:
        if state.get("sprung") and state["since"] > now:
            # Reminders are numbered from the catch: keep the count, so none is raised twice and the
            # next is due one interval from now, not when the wrong clock's catch time comes round.
            state["since"] = now - state["reminders"] * (self.rule.reminder or 0)

    def clock_ahead(self, state: dict[str, Any], jump: float) -> None:
        if state.get("sprung"):  # the catch's time by the true clock: no reminder "after 20,791 days"
            state["since"] += jump

    def deaf(self, state: dict[str, Any], seconds: float) -> bool:
        return False  # a sprung trap waits for its hunter in wall time, heard or not

    def tick(self, ctx: Context, state: dict[str, Any], now: float) -> None:
        every = self.rule.reminder
        if not state.get("sprung") or not every:
            return
        n = int((now - state["since"]) // every)
        if n > state["reminders"]:
            # Stamped at the due time, not at the tick: a restart mid-interval yields the same alarm.
            # One due long ago (the gateway was off) is about the trap as it is now, still sprung: it
            # is stamped now, so that it is not late and its siren sounds.
            due = state["since"] + n * every
            at = due if now - due <= ctx.late_after else now
            ctx.raise_alarm(
                "trap_reminder", "high", f"{state['cause']}:{n}", at,
                f"{ctx.label()}: trap still sprung after {spoken(at - state['since'])}", None, {"reminder": n},
            )
            state["reminders"] = n
