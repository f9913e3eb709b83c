"""Every error edgegw raises on purpose.

    EdgegwError
    ├── ConfigError            the config file is wrong; carries every problem at once
    ├── DriverLoadError        a driver module could not be loaded or clashes with another
    ├── DecodeError            a payload is not what the driver expects (reason: wrong_length, bad_value, ...)
    ├── ModuleError            a radio module answered +ERR / NG / nothing to a command
    ├── OutboxError            a maintainer's outbox command cannot be done (no database, unknown id, ...)
    ├── StoreError             the database cannot be brought up to date (no room to convert it)
    └── UplinkError            delivering a batch failed
        ├── TransientUplinkError   retry later with backoff (broker down, timeout)
        └── PermanentUplinkError   retrying the same batch cannot help (payload refused)

Radio frames that fail are not exceptions to the daemon: they become Reject records, counted by reason.
"""

from __future__ import annotations


class EdgegwError(Exception):
    """Base class of edgegw's own errors."""


class ConfigError(EdgegwError):
    """A config file with one or more problems; ``problems`` holds one line per problem."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class DriverLoadError(EdgegwError):
    """A driver could not be loaded, or two drivers share one name."""


class DecodeError(EdgegwError):
    """A payload the driver cannot decode. ``reason`` is a short counter key, ``detail`` says why."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class FrameRefused(EdgegwError):
    """A frame the gateway refuses before any driver sees it (not authentic, over its rate).
    ``reason`` is the counter key, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ModuleError(EdgegwError):
    """A radio module rejected a command or did not answer."""


class OutboxError(EdgegwError):
    """An ``edgegw outbox`` operation cannot be done: no database, an unknown item or uplink, nothing
    parked, the database locked for too long. The message is one line, meant for the maintainer."""


class StoreError(EdgegwError):
    """The gateway database cannot be opened as it must be; the message says why, in one line."""


class UplinkError(EdgegwError):
    """Delivering a batch failed."""


class TransientUplinkError(UplinkError):
    """The platform could not be reached or was busy; the batch will be retried.

    ``retry_after`` is the platform's own hint (HTTP ``Retry-After``), in seconds, when it gave one.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentUplinkError(UplinkError):
    """The platform refused the batch itself; retrying it unchanged cannot succeed."""
