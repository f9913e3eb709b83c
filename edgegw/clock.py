"""The system clock of a gateway without a real-time clock.

A Raspberry Pi boots in 1970 (or at the time fake-hwclock saved at shutdown) and learns the real
time from NTP once the uplink is up, which may be hours later. Every reading carries the monotonic
time and boot id next to its wall-clock stamp, so when the clock steps, the readings of this boot
stamped before the step can be re-stamped from the monotonic clock (``mono + new offset``) and
marked ``estimated``. Until the clock is plausible the forwarder holds this boot's readings back,
so a reading stamped in 1970 is never sent as if it were good.

A plausible clock is not always a set one: Raspberry Pi OS's fake-hwclock boots the Pi at the time
it saved at shutdown, hours or days behind after a power cut. ``[clock] await_sync`` (see
:class:`SyncWait`) holds this boot's readings until the kernel says an NTP client set the clock.
"""

from __future__ import annotations

import ctypes
import functools
import math
import time
from collections.abc import Callable

TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
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


def kernel_synchronized() -> bool | None:
    """Whether the kernel holds the clock synchronised (adjtimex(2), what timedatectl shows as "System
    clock synchronized"): systemd-timesyncd and chrony tell it so once they set the clock. None
    where it cannot be asked."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    timex = ctypes.create_string_buffer(512)  # struct timex (about 208 bytes); modes = 0: only read
    state = adjtimex(timex)
    return None if state < 0 else state != TIME_ERROR


@functools.cache
def _adjtimex() -> Callable[[ctypes.Array[ctypes.c_char]], int] | None:
    # The process's own symbols, libc's among them: ctypes.util.find_library would run ldconfig at
    # every call, and the writer asks once a second while it waits.
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):  # not Linux
        return None


class SyncWait:
    """``[clock] await_sync``: until that long after boot, this boot's readings wait unsent until
    the kernel says the clock is synchronised; they are stamped ``unsynced`` until it is.

    When it is, the writer re-stamps those stamped by another clock (the step it sees, as
    :class:`ClockWatch`) and marks the others synced; after ``wait`` they go as stamped, marked
    unsynced. Off (``wait`` 0), or where the kernel cannot be asked, a plausible clock counts as set.
    Seen synchronised once in a boot (``synced_this_boot``: by an earlier run of the daemon), the
    clock stays trusted: the kernel calls it unsynchronised again after about nine hours without NTP
    (an uplink down), a drift of seconds.
    """

    def __init__(self, wait: float, synchronized: Callable[[], bool | None] = kernel_synchronized,
                 mono: Callable[[], float] = time.monotonic, synced_this_boot: bool = False):
        self.wait = wait  # s after boot: CLOCK_MONOTONIC counts from it
        self._synchronized = synchronized
        self.synced = wait <= 0 or synced_this_boot or synchronized() is not False
        self.holding = not self.synced and mono() < wait
        self._seen = False  # the last check saw it synchronised: the next confirms it

    def state(self, wall: float) -> str:
        """For the health report: ``held`` while this boot's readings wait for a clock (1970, or
        await_sync), ``unsynced`` once they go marked so, else ``ok``."""
        if self.holding or not plausible(wall):
            return "held"
        return "ok" if self.synced else "unsynced"

    @property
    def held_before(self) -> float:
        """This boot's readings stamped before this wall time are not sent: all of them while holding."""
        return math.inf if self.holding else CLOCK_SANE_AFTER

    def check(self, mono: float) -> str | None:
        """Call once a tick: ``"synced"`` or ``"expired"`` the first time the wait ends that way, else None.

        Synchronised at two checks in a row: an NTP client sets the clock and then tells the kernel,
        so by the second check the writer has seen the step and re-stamped what it concerns.
        """
        if self.synced:
            return None
        seen, self._seen = self._seen, bool(self._synchronized())
        if seen and self._seen:
            self.synced, self.holding = True, False
            return "synced"
        if self.holding and mono >= self.wait:
            self.holding = False
            return "expired"
        return None
