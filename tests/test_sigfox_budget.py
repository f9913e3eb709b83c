"""The Sigfox budget: the reserve for urgent alarms, the rolling 24 hours, clock steps, restarts."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from edgegw.uplink.sigfox.budget import WINDOW, Budget, Spend, read_summary

# Now, as the budget's own pruning at open (a week before the real clock) sees it: a fixed date
# here became a week old on 2026-12-07 and the restart test lost its sends.
NOW, MONO = float(int(time.time())), 5_000.0


def spend(budget: Budget, n: int, at: float = NOW, mono: float = MONO) -> None:
    for i in range(n):
        budget.spend(Spend(f"a{i}", "trap_sprung", "trap-01", "00000000", True, False), at, mono)


def test_the_reserve_is_for_urgent_alarms_and_the_limit_for_all(tmp_path):
    budget = Budget(tmp_path / "b.db", limit=3, reserve=1)
    spend(budget, 2)
    assert not budget.allows("normal", NOW, MONO) and budget.allows("urgent", NOW, MONO)
    spend(budget, 1)
    assert not budget.allows("urgent", NOW, MONO)
    assert budget.refuse("a9", "trap_sprung", "trap-01", "urgent", NOW, MONO) == 3


def test_the_count_survives_a_restart_and_is_read_by_status(tmp_path):
    budget = Budget(tmp_path / "b.db", limit=2, reserve=0)
    spend(budget, 2)
    budget.refuse("a9", "water_level_alarm", "river-01", "urgent", NOW, MONO)
    budget.close()
    again = Budget(tmp_path / "b.db", limit=2, reserve=0)  # another boot: only the wall clock counts
    again.boot = "another"
    assert again.used(NOW + 60, 10.0) == 2 and not again.allows("urgent", NOW + 60, 10.0)
    summary = read_summary(tmp_path / "b.db", 2, 0, NOW + 60)
    assert summary is not None
    assert (summary["used"], summary["refused_24h"], summary["last_refused"]["alarm"]) == (2, 1, "water_level_alarm")


def test_the_send_being_made_is_not_shown_failed_and_one_never_answered_is(tmp_path):
    """A send is counted before the module is asked: while the module works on it (seconds, a minute
    with a downlink) status must not call it failed; once the sender moved on without an OK, it is."""
    budget = Budget(tmp_path / "b.db", limit=5, reserve=0)
    spend(budget, 1)  # a0: never answered
    budget.spend(Spend("a1", "trap_sprung", "trap-02", "00000001", False, False), NOW + 60, MONO + 60)
    sending = budget.summary(NOW + 61, MONO + 61, sending=("a1", NOW + 60))
    assert (sending["failed_24h"], sending["last_failed"]["device"], sending["used"]) == (1, "trap-01", 2)
    after = budget.summary(NOW + 120, MONO + 120)  # the module never said OK to a1 either
    assert (after["failed_24h"], after["last_failed"]["device"]) == (2, "trap-02")
    budget.done("a0", NOW)
    assert budget.summary(NOW + 120, MONO + 120, sending=("a1", NOW + 60))["last_failed"] is None


def test_the_window_rolls_and_a_clock_step_within_a_boot_does_not_reset_it(tmp_path):
    budget = Budget(tmp_path / "b.db", limit=1, reserve=0)
    spend(budget, 1)
    later = NOW + WINDOW + 1
    assert budget.allows("urgent", later, MONO + WINDOW + 1)  # a day on by both clocks: free again
    assert not budget.allows("urgent", later, MONO + 60)  # the wall clock jumped a day, a minute went by
    assert not budget.allows("urgent", NOW - 3600, MONO + WINDOW + 1)  # the clock went back an hour: still in
    budget.boot = "another"  # after a reboot, a send stamped ahead of a clock that went back still counts
    assert budget.used(NOW - 3600, 0.0) == 1


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(0, 19), st.lists(st.sampled_from(["urgent", "normal"]), max_size=40))
def test_spending_only_what_is_allowed_never_passes_the_limit_or_the_reserve(tmp_path_factory, limit, reserve,
                                                                            asks):
    reserve = min(reserve, limit - 1)
    budget = Budget(tmp_path_factory.mktemp("b") / "b.db", limit, reserve)
    for priority in asks:
        before = budget.used(NOW, MONO)
        if budget.allows(priority, NOW, MONO):
            spend(budget, 1)
            assert before < (limit if priority == "urgent" else limit - reserve)
        assert budget.used(NOW, MONO) <= limit
    budget.close()
