"""Radio sources: each runs in its own thread, reads one radio module, and emits Frames.

A source never touches the store. It calls ``emit`` with a :class:`~edgegw.model.Frame` for every
frame heard, a :class:`~edgegw.model.Reject` for every line it could not parse, and a
:class:`SourceState` when its port comes or goes; the writer thread takes it from there.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edgegw.model import Frame, Reject


@dataclass(frozen=True, slots=True)
class SourceState:
    source: str
    state: str  # "starting" | "receiving" | "down"
    detail: str = ""
    wall: float = field(default_factory=time.time)


Emit = Callable[[Frame | Reject | SourceState], None]


class Source(Protocol):
    name: str

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read frames until ``stop`` is set; recover from a lost port on its own.

        A source reads from its port only while it holds the gateway's read turn (a lock the writer
        holds while it commits), and emits what it read before letting go: frames not yet read wait
        in the kernel's buffer, so a crash loses at most the frames of the commit in progress.
        """


class Backoff:
    """Exponential backoff with full jitter, so thirty gateways do not retry in step."""

    def __init__(self, first: float = 0.5, limit: float = 30.0):
        self.first, self.limit, self.attempt = first, limit, 0

    def next(self) -> float:
        delay = min(self.limit, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0
