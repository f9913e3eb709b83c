"""What one frame of a radio module can carry, and how long it stays on air: the facts
``edgegw config check`` holds each device's largest frame against.

A source config tells its limits through a ``frame_limits()`` method returning :class:`FrameLimits`
(plugins may define it too; a source without it is not checked). ``verified`` says whether the
size limit is a datasheet fact (exceeding it is an error) or a number not confirmed without the
hardware (a warning).

ARIB STD-T108 binds whoever transmits. The gateway never transmits on a LoRa module: it configures
the module and listens. So the time-on-air notes are about the *sensors* sending the device's
frames with the source's radio settings, never about the gateway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from edgegw.radio.airtime import LONG_SENSE_MAX_S, SHORT_SENSE_MAX_S

ARIB_BAND_HZ = (920_500_000, 928_100_000)  # 特定小電力 920 MHz band (domain brief §5)


@dataclass(frozen=True)
class FrameLimits:
    """One module's limits for the frames a device sends through it."""

    max_payload: int | None  # bytes of the device's payload one frame carries (after the module's text encoding)
    why: str  # where that number comes from, as the message says it
    verified: bool  # a datasheet fact, or unverified without hardware
    airtime: Callable[[int], float] | None = None  # seconds on air of a frame with this many payload bytes,
    #                                              under ARIB STD-T108 (None: not in its band, or unknown)


def text_chars(payload: int, encoding: str) -> int:
    """Characters a text module carries for ``payload`` bytes written as ``encoding``."""
    if encoding == "hex":
        return 2 * payload
    if encoding == "base64":
        return 4 * math.ceil(payload / 3)
    return payload


def text_payload(chars: int, encoding: str) -> int:
    """The largest payload, in bytes, that ``chars`` characters carry written as ``encoding``."""
    if encoding == "hex":
        return chars // 2
    if encoding == "base64":
        return chars // 4 * 3
    return chars


def frame_problems(device: str, driver: str, payload: int, keyed: bool, source: str, family: str,
                   limits: FrameLimits) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a device whose largest payload is ``payload`` bytes, sealed in the
    authenticated envelope when ``keyed``, sent through ``source`` (a ``family`` module)."""
    from edgegw.envelope import OVERHEAD

    size = payload + (OVERHEAD if keyed else 0)
    what = f"{size} bytes ({payload} of driver {driver!r} + {OVERHEAD} of the authentication envelope)" if keyed \
        else f"{size} bytes (driver {driver!r})"
    errors: list[str] = []
    warnings: list[str] = []
    if limits.max_payload is not None and size > limits.max_payload:
        line = (f"its largest frame is {what}, more than the {limits.max_payload} bytes one {family} frame carries"
                f" on source {source!r} ({limits.why})")
        (errors if limits.verified else warnings).append(line)
    if limits.airtime is not None:
        seconds = limits.airtime(size)
        if seconds > LONG_SENSE_MAX_S:
            errors.append(f"its largest frame ({size} bytes) takes {seconds:.2f} s on air with the settings of"
                          f" source {source!r}, over the {LONG_SENSE_MAX_S:g} s ARIB STD-T108 allows any transmission: use a"
                          " lower spreading factor or a wider bandwidth (the sensors' and the module's alike)")
        elif seconds > SHORT_SENSE_MAX_S:
            warnings.append(f"its largest frame ({size} bytes) takes {seconds * 1000:.0f} ms on air with the"
                            f" settings of source {source!r}: over {SHORT_SENSE_MAX_S:g} s, ARIB STD-T108 asks the sensor for"
                            " 5 ms of carrier sense before each frame (not 128 µs); check its firmware does")
    return errors, warnings
