"""The system clock of a gateway without a real-time clock.

A Raspberry Pi boots in 1970 (or at the time fake-hwclock saved at shutdown) and learns the real
time from NTP once the uplink is up, which may be hours later. Every reading carries the monotonic
time and boot id next to its wall-clock stamp, so when the clock steps, the readings of this boot
stamped before the step can be re-stamped from the monotonic clock (``mono + new offset``) and
marked ``estimated``. Until the clock is plausible the forwarder holds this boot's readings back,
so a reading stamped in 1970 is never sent as if it were good.
"""

from __future__ import annotations

CLOCK_SANE_AFTER = 1_704_067_200  # 2024-01-01: a wall clock before this has not been set
STEP = 1.0  # s: a change of the wall-minus-monotonic offset larger than this is a step, not a slew


def plausible(wall: float) -> bool:
    """Whether a wall-clock time can have been set by NTP (it is not the 1970 of a Pi without RTC)."""
    return wall >= CLOCK_SANE_AFTER


class ClockWatch:
    """Notices steps of the wall clock against the monotonic clock."""

    def __init__(self, wall: float, mono: float):
        self.offset = wall - mono

    def step(self, wall: float, mono: float) -> float | None:
        """The offset before a step, if the clock stepped since the last call; None otherwise.

        Small changes (NTP slewing) are followed silently, so only real steps count.
        """
        offset, before = wall - mono, self.offset
        self.offset = offset
        return before if abs(offset - before) > STEP else None
