"""Logging: structlog, readable on a terminal, JSON lines otherwise (systemd's journal, files)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

import structlog
from structlog.typing import Processor


def as_json(fmt: str = "auto", stream: TextIO | None = None) -> bool:
    """Whether log lines are JSON: asked for, or ``auto`` and written for a machine: systemd's journal
    (it sets JOURNAL_STREAM for the services it starts) or anything that is not a terminal."""
    stream = sys.stderr if stream is None else stream
    return fmt == "json" or (fmt == "auto" and ("JOURNAL_STREAM" in os.environ or not stream.isatty()))


def configure(level: str = "info", fmt: str = "auto") -> None:
    """JSON lines with UTC ISO times for the journal; on a terminal, aligned text in local time (the
    person at the gateway reads the clock on the wall, not UTC). See :func:`as_json`."""
    json_lines = as_json(fmt)
    # The console renderer prints tracebacks itself; JSON needs them rendered into the event first,
    # or log.exception() says only "exc_info": true.
    renderers: list[Processor] = ([structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.format_exc_info,
                  structlog.processors.JSONRenderer()] if json_lines
                 else [structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
                       structlog.dev.ConsoleRenderer(colors=False)])
    structlog.configure(
        processors=[structlog.processors.add_log_level, *renderers],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


class Throttle:
    """Lets the first event of a kind through, then at most one per ``interval`` with a count of the rest.

    A flood of garbage frames must not flood the journal (and wear the SD card) as well.
    """

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def allow(self, key: object, now: float | None = None) -> int | None:
        """None to stay silent; otherwise how many events of this kind were suppressed since the last one."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
