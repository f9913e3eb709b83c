"""Authenticated frames: what a sensor with a key sends, and how the gateway checks it.

Anyone in radio range can transmit, and the modules' own "encryption" has no integrity check. A
device with a key wraps its payload in an envelope::

    version (1) | device id (4, big-endian) | frame counter (4, big-endian) | payload | MIC (4)

The MIC is AES-CMAC (RFC 4493) with the device's own 128-bit key over every byte before it,
truncated to its first 4 bytes, as LoRaWAN does: a forger's odds are 2**-32 per try, and the
airtime rules limit the tries. The device id is the device's radio address, so a frame recorded
from one sensor and sent from another's address fails the MIC as well as any changed bit does.
The counter must grow from frame to frame: the gateway keeps the last one it accepted (committed
with the reading) and rejects any frame that is not newer, across restarts and power cuts.

:func:`seal` is the reference encoder for sensor firmware (``firmware/edgegw_frame.c`` is the same
in C); :func:`open_envelope` is the gateway's check.
"""

from __future__ import annotations

import functools
import hmac
import struct
from dataclasses import dataclass
from typing import Any

from edgegw.errors import FrameRefused

VERSION = 0x01
HEADER = struct.Struct(">BII")  # version, device id, frame counter
MIC_BYTES = 4
OVERHEAD = HEADER.size + MIC_BYTES  # 13 bytes on air besides the payload
KEY_BYTES = 16
COUNTER_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Opened:
    """An envelope whose MIC verified: the device's frame counter and its payload for the driver."""

    counter: int
    payload: bytes


class EnvelopeError(FrameRefused):
    """Why a frame is not a valid envelope of this device; ``reason`` is the reject reason counted."""


@functools.cache
def _cmac() -> tuple[Any, Any]:
    # Imported at the first key used: cryptography's OpenSSL bindings cost 6.6 MB of RSS, which a
    # gateway whose devices have no keys should not pay on a 512 MB Pi.
    from cryptography.hazmat.primitives.ciphers.algorithms import AES
    from cryptography.hazmat.primitives.cmac import CMAC

    return CMAC, AES


def mic(key: bytes, data: bytes) -> bytes:
    """The first 4 bytes of AES-CMAC(key, data)."""
    cmac, aes = _cmac()
    c = cmac(aes(key))
    c.update(data)
    return c.finalize()[:MIC_BYTES]


def seal(key: bytes, device_id: int, counter: int, payload: bytes) -> bytes:
    """The frame a sensor with ``key`` sends: ``payload`` in an envelope (the reference encoder)."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key is {KEY_BYTES} bytes, not {len(key)}")
    if not 0 <= counter <= COUNTER_MAX:
        raise ValueError(f"the frame counter is 32 bits: 0 to {COUNTER_MAX}, not {counter}")
    body = HEADER.pack(VERSION, device_id, counter) + payload
    return body + mic(key, body)


def looks_sealed(frame: bytes, device_id: int) -> bool:
    """Is ``frame`` laid out as this device's envelope (before any check of its MIC)?"""
    return len(frame) >= OVERHEAD and frame[0] == VERSION and frame[1:5] == device_id.to_bytes(4, "big")


def open_envelope(key: bytes, device_id: int, frame: bytes) -> Opened:
    """Check ``frame``'s MIC with the device's key; raise :class:`EnvelopeError` unless it verifies.

    The counter's freshness is the caller's to check: it needs the last counter accepted, which
    lives in the store.
    """
    if len(frame) < OVERHEAD:
        raise EnvelopeError("truncated", f"{len(frame)} bytes; an authenticated frame has at least {OVERHEAD}")
    version, sender, counter = HEADER.unpack_from(frame)
    if version != VERSION:
        raise EnvelopeError("unauthenticated", f"envelope version {version}, expected {VERSION}")
    if sender != device_id:
        raise EnvelopeError("bad_mic", f"device id {sender} in the envelope, heard at address {device_id}")
    # Constant time is not needed against a radio attacker who gets no answer, but costs nothing.
    if not hmac.compare_digest(mic(key, frame[:-MIC_BYTES]), frame[-MIC_BYTES:]):
        raise EnvelopeError("bad_mic", "the MIC does not verify with the device's key")
    return Opened(counter, frame[HEADER.size:-MIC_BYTES])

