"""Types every config section shares: durations, sizes, and sections that refuse unknown keys."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

# Validation context of what a person wrote (a config or field file, a command-line option), as
# opposed to Python code, which passes durations as seconds.
WRITTEN = {"written": True}


def _duration(value: Any, info: ValidationInfo) -> Any:
    """Seconds from a string such as "90s", "10m", "1h", "2d", "500ms".

    A bare number is refused where a person wrote it: ``interval = 10`` has been read as 10 seconds
    by an installer who meant minutes. 0 needs no unit; Python callers pass seconds.
    """
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m and value.strip().startswith("-"):
            raise ValueError(f"a duration cannot be negative (got {value!r})")
        if not m:
            raise ValueError(f'expected a duration with a unit, such as "90s", "10m", "1h", "2d" (got {value!r})')
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if (info.context or {}).get("written") and isinstance(value, int | float) and not isinstance(value, bool) \
            and value != 0:
        raise ValueError(f'a duration needs a unit: write "{value:g}s", "{value:g}m" or "{value:g}h" (got {value!r})')
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Delay = Annotated[float, BeforeValidator(_duration), Field(ge=0)]  # a duration that may be 0: none

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB)?\s*$")
_UNIT_BYTES = {"B": 1, "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, None: 1}


def _size(value: Any) -> Any:
    """Accept bytes as a number or a string such as "500MB", "2GB"."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError(f"expected a size such as 1000000, \"500MB\", \"2GB\" (got {value!r})")
        return int(float(m.group(1)) * _UNIT_BYTES[m.group(2)])
    return value


Size = Annotated[int, BeforeValidator(_size), Field(ge=1_000_000)]


class _Section(BaseModel):
    # A misspelt key is the most common installer mistake: refuse it instead of silently ignoring it.
    model_config = ConfigDict(extra="forbid", frozen=True)


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """`` (did you mean 'trap'?)`` when ``word`` is close to one of ``choices``, else ""."""
    # Case-blind: a device id typed "River-03" is as close to "river-03" as a name can be.
    by_folded = {str(c).casefold(): str(c) for c in choices}
    close = difflib.get_close_matches(str(word).casefold(), list(by_folded), n=1, cutoff=0.6)
    return f" (did you mean {by_folded[close[0]]!r}?)" if close else ""
