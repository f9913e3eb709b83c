"""Logging: structlog, readable on a terminal, JSON lines otherwise (systemd's journal, files)."""

from __future__ import annotations

import logging
import sys
import time

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # The console renderer prints tracebacks itself; JSON needs them rendered into the event first,
    # or log.exception() says only "exc_info": true.
    renderers = ([structlog.processors.format_exc_info, structlog.processors.JSONRenderer()] if as_json
                 else [structlog.dev.ConsoleRenderer(colors=False)])
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
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
