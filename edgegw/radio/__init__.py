"""Radio sources: each runs in its own thread, reads one radio module, and emits Frames.

A source never touches the store. It calls ``emit`` with a list of events in the order they
happened: a :class:`~edgegw.model.Frame` for every frame heard, a :class:`~edgegw.model.Reject`
for every line it could not parse, and a :class:`SourceState` when its port comes or goes; the
writer thread takes it from there. One list per read turn: handing frames over one by one cost
the writer a wake-up and a lock round trip each.

``emit`` returns an Event the writer sets once that list is committed (or its commit failed, so
that a source never waits forever). A source waits for it before its next read turn: that is the
back-pressure that keeps a burst in the kernel's tty buffer instead of the daemon's memory, and
bounds what a crash loses to one read turn (and the fewer than 64 frames of a commit window, in
which the writer sets it before the commit: see edgegw.writer.Writer._group).
"""

from __future__ import annotations

import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from edgegw.model import Frame, Reject, SourceState

Emit = Callable[[list[Frame | Reject | SourceState]], threading.Event]

# s: a busy radio is read at most this often, in turns of what arrived meanwhile. Each wake-up of
# the source and then the writer cost more than the frame itself (about 36 us for the wake-up
# alone on a 2-core VM, then a cold cache): at 100 frames/s a turn per frame was half the
# gateway's CPU. A frame after a quiet spell of PACE is read at once; one in a busy spell waits
# PACE at most, in the kernel's buffer (read, it would wait in the writer's commit window anyway;
# an alarm's latency is what grows, by PACE at most).
PACE = 0.05
PACE_EVENTS = 16  # a turn with this many events is a burst: the next turn follows at once


class Source(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read frames until ``stop`` is set; recover from a lost port on its own.

        A source reads from its port only while it holds the gateway's read turn (a lock the writer
        holds while it commits), emits what it read before letting go, and reads again only once
        that was committed (:func:`wait_committed`): frames not yet read wait in the kernel's
        buffer, so a crash loses at most the frames of one read turn.
        """


STOP_LOOK = 0.5  # s: how often a source waiting on its port looks at a stop that has no fd (see Stop)


class Stop(threading.Event):
    """A source's stop that a select can wait on beside the port: :meth:`fileno` turns readable
    once it is set. An idle source then sleeps until a frame arrives or the daemon stops, instead
    of waking twice a second to look (a third of an idle gateway's wake-ups)."""

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe()
        self._once = threading.Lock()
        weakref.finalize(self, _close, self._read, self._write)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with self._once:  # one byte however often it is set: the pipe never fills
            if not self.is_set():
                os.write(self._write, b"\0")
            super().set()


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def wait_readable(fd: int, stop: threading.Event, timeout: float | None = None) -> bool:
    """True once ``fd`` has bytes to read, False after ``timeout`` (None: none) or at ``stop``.

    One select on both where ``stop`` is a :class:`Stop`; a plain Event is looked at every
    :data:`STOP_LOOK` (a check's port, a test's source)."""
    if isinstance(stop, Stop):
        return fd in select.select([fd, stop.fileno()], [], [], timeout)[0]
    deadline = None if timeout is None else time.monotonic() + timeout
    while not stop.is_set():
        left = STOP_LOOK if deadline is None else min(STOP_LOOK, deadline - time.monotonic())
        if left <= 0:
            return False
        if select.select([fd], [], [], left)[0]:
            return True
    return False


def wait_committed(committed: threading.Event, stop: threading.Event) -> None:
    """Wait until the writer is done with a hand-over (``committed``, as ``emit`` returned it), or ``stop``."""
    while not committed.wait(0.5) and not stop.is_set():
        pass


class Turns:
    """One source's read turns, in the order :class:`Source` asks: :meth:`take` each."""

    def __init__(self, read_turn: ReadTurn, emit: Emit, stop: threading.Event):
        self.read_turn, self.emit, self.stop = read_turn, emit, stop
        self.handed: threading.Event | None = None  # the last turn's hand-over, until committed
        self.began = -float("inf")  # monotonic: when the last turn that found anything began
        self.few = False  # it found fewer than PACE_EVENTS

    def take(self, take: Callable[[], Sequence[Frame | Reject | SourceState]]) -> None:
        """Wait until the last turn's hand-over is committed, then ``take`` what the port holds while
        no commit runs and hand it over at once.

        The wait comes before the read, not after the hand-over: at field rate the commit is long
        done when the next frame arrives, and the source sleeps once per frame instead of twice.
        A turn that follows a small one by less than :data:`PACE` waits for the rest of it: see there.
        """
        if self.handed is not None:
            wait_committed(self.handed, self.stop)
        if self.few and (rest := self.began + PACE - time.monotonic()) > 0:
            self.stop.wait(rest)
        with self.read_turn.read():  # not while the writer commits: unread frames stay in the kernel
            began = time.monotonic()
            events = take()
            self.handed = self.emit(list(events)) if events else None  # one hand-over per turn, not per frame
        if events:
            self.began, self.few = began, len(events) < PACE_EVENTS


class ReadTurn:
    """Takes turns between the writer's commits and the sources' reads of their ports.

    Sources read (all at once, if several) only while no commit runs, and a commit waits until the
    sources already waiting have had their turn: a plain lock would let the writer, busy with
    acknowledgements, take it back again and again while an alarm frame waits in the tty buffer.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writing = False
        self._waiting = self._reading = self._turns = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writing)
            self._waiting -= 1
            self._reading += 1
        try:
            yield
        finally:
            with self._cond:
                self._reading -= 1
                self._turns += 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            turns = self._turns
            # One turn for the sources waiting now, not for every frame that arrives meanwhile.
            self._cond.wait_for(lambda: not self._waiting or self._turns > turns)
            self._cond.wait_for(lambda: not self._reading)
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    @contextmanager
    def open(self) -> Iterator[None]:
        """Inside :meth:`write`: let the sources read meanwhile (the writer waits for more frames to
        commit with those it holds), then take the turn back as :meth:`write` does."""
        with self._cond:
            self._writing = False
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                turns = self._turns
                self._cond.wait_for(lambda: not self._waiting or self._turns > turns)
                self._cond.wait_for(lambda: not self._reading)
                self._writing = True


# The source families' config models build on edgegw.config.base, and edgegw.config collects them
# into its [[sources]] union: importing edgegw.config here, once this package is whole, makes the
# order the same whichever of the two packages a program imports first.
import edgegw.config  # noqa: E402,F401
