"""Types every config section shares: durations, sizes, and sections that refuse unknown keys."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: Any) -> Any:
    """Accept seconds as a number or a string such as "90s", "10m", "1h", "2d"."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"expected a duration such as 30, \"90s\", \"10m\", \"1h\" (got {value!r})")
        return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]

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
