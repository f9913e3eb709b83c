"""Frame -> Reading: find the device, run its driver, give the reading its stable id.

Reading ids come from what the device sent: ``<device>:<epoch>:<counter>``. The counter epoch starts
at 0 and moves on when the counter goes backwards for real (wrap-around or device reset); a frame
whose counter was already seen with the same bytes within :data:`DUPLICATE_WINDOW` is a
retransmission (or a second copy of the line) and yields no new reading. A device without a counter
gets ``<device>:h:<hash of payload>:<minute>``.

Which counters arrived is the device's registry row (``DeviceState.seen``, the last
:data:`LATE_WINDOW` counters), and where the device's frames of the last hour are (its last
:data:`RECENT_FRAMES` at most) is kept here, in memory: the outbox has no index on the ids of
counted readings (see the store).
A copy of an older frame of the same epoch, or one accepted more than an hour ago, starts a new
epoch as any other counter that went back does.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from edgegw.clock import SyncWait, plausible
from edgegw.config import Config, Device
from edgegw.drivers import Decoded, Driver, DriverRegistry
from edgegw.envelope import EnvelopeError, Opened, looks_sealed, open_envelope
from edgegw.errors import DecodeError, FrameRefused
from edgegw.keys import load_keys
from edgegw.log import Throttle
from edgegw.model import Frame, Reading, Reject, boot_id
from edgegw.store import LATE_WINDOW, DeviceState, Store

log = structlog.get_logger("edgegw.ingest")

DUPLICATE_WINDOW = 3600.0  # s: a copy of a frame older than this with the same counter is a new epoch
SEEN_MASK = (1 << LATE_WINDOW + 1) - 1  # DeviceState.seen: the last counter and LATE_WINDOW before it
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
RECENT_FRAMES = LATE_WINDOW  # per device, at most: the frames a copy is checked against
# Rows read at most at start, newest first, to find the recent frames again (within the hour):
# 0.12 s here when a backlog that large arrived in the last hour; its older copies count as new.
RECENT_SCAN = 100_000


@dataclass(frozen=True, slots=True)
class Auth:
    """What a device's frames must be: sealed with ``key`` (see edgegw.envelope), or may be plain."""

    key: bytes | None
    required: bool  # plain frames are refused...
    plain_until: float | None  # ...except until then (the rollout window), marked unverified


class Allowance:
    """How many frames each device may still send: a token bucket of ``rate_limit`` frames,
    refilled at ``rate_limit`` per ``interval`` (monotonic time, so a clock step changes nothing)."""

    def __init__(self) -> None:
        self._left: dict[str, tuple[float, float]] = {}  # device id -> (frames left, at)

    def take(self, device: Device, mono: float) -> None:
        """Take one frame from the device's allowance; raise :class:`FrameRefused` when there is none."""
        if device.rate_limit == 0:
            return
        left, since = self._left.get(device.id, (float(device.rate_limit), mono))
        left = min(float(device.rate_limit), left + (mono - since) * device.rate_limit / device.interval)
        if left < 1.0:
            self._left[device.id] = (left, mono)
            raise FrameRefused("rate_limited", f"more than {device.rate_limit} frames per {device.interval:g} s")
        self._left[device.id] = (left - 1.0, mono)


@dataclass(frozen=True, slots=True)
class Duplicate:
    device_id: str
    reading_id: str


def unfit(decoded: object) -> str | None:
    """What makes a driver's result unfit to store and send, if anything."""
    if not isinstance(decoded, Decoded) or not isinstance(decoded.values, dict):
        return f"returned {decoded!r:.80}, not Decoded(values={{...}})"
    for name, n in (("counter", decoded.counter), ("epoch", decoded.epoch)):
        if n is not None and (type(n) is not int or not 0 <= n <= INT64_MAX):
            return f"{name} {n!r:.40} is not an integer from 0 to 2**63-1"
    for key, value in decoded.values.items():
        # The common case by exact type: isinstance against a union, for every value, was a tenth
        # of the writer's time per reading.
        kind = type(value)
        if type(key) is str and (kind is str or kind is bool or (kind is float and math.isfinite(value))  # type: ignore[arg-type]
                                 or (kind is int and INT64_MIN <= value <= INT64_MAX)):  # type: ignore[operator]
            continue
        if (problem := _unfit_value(key, value)) is not None:
            return problem
    return None


def _unfit_value(key: object, value: object) -> str | None:
    if not isinstance(key, str):
        return f"value name {key!r:.40} is not a string"
    if not isinstance(value, bool | int | float | str):
        return f"{key} is a {type(value).__name__}, not a number, string or boolean"
    if (isinstance(value, float) and not math.isfinite(value)) or (
            isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX):
        return f"{key} is {value!r:.40}: not a finite number within 64 bits"
    return None


class Ingest:
    """Turns frames into readings and stores them; used only by the writer thread."""

    def __init__(self, config: Config, drivers: DriverRegistry, store: Store, uplink_mask: int | Callable[[str], int],
                 sync: SyncWait | None = None):
        self.store = store
        self.sync = sync or SyncWait(0)  # until NTP set the clock, readings are stamped unsynced
        self.boot_id = boot_id()
        store.note_boot(self.boot_id)
        self.configure(config, drivers, uplink_mask)
        self.allowance = Allowance()
        self.throttle = Throttle(60.0)  # new counter epochs logged, by device
        # device id -> {counter: (seq, accepted at)} of its recent frames in the current epoch, oldest first
        self.recent: dict[str, dict[int, tuple[int, float]]] = self._recent_frames(store)

    def configure(self, config: Config, drivers: DriverRegistry, uplink_mask: int | Callable[[str], int]) -> None:
        """Take the devices, drivers, keys and routes of ``config`` (at start, and at a reload); what
        was heard so far (counters, recent frames, allowances) is kept."""
        self.store.describe(config.gateway_id, {name: driver.units() for name, driver in drivers.drivers.items()})
        self.uplink_mask = uplink_mask if callable(uplink_mask) else lambda _device: uplink_mask  # per device: routes
        self.by_address: dict[tuple[str, int], tuple[Device, Driver]] = {
            (config.device_source(d), d.address): (d, drivers[d.driver]) for d in config.devices
        }
        keys = load_keys(config.keys_file) if config.keys_file is not None else {}
        self.auth = {d.id: Auth(keys.get(d.id), d.require_auth if d.require_auth is not None else d.id in keys,
                                d.accept_plain_until.timestamp() if d.accept_plain_until else None)
                     for d in config.devices}

    @staticmethod
    def _recent_frames(store: Store) -> dict[str, dict[int, tuple[int, float]]]:
        """Each device's recent frames, as the outbox holds them (at start)."""
        newest_first: dict[str, dict[int, tuple[int, float]]] = {}
        rows = store.latest_counted(time.time() - DUPLICATE_WINDOW, RECENT_SCAN)
        for seq, device_id, item_id, counter, accepted_at in rows:
            state = store.devices.get(device_id)
            frames = newest_first.setdefault(device_id, {})
            if state is not None and item_id == f"{device_id}:{state.epoch}:{counter}" and len(frames) < RECENT_FRAMES:
                frames.setdefault(counter, (seq, accepted_at))
        return {device_id: dict(reversed(frames.items())) for device_id, frames in newest_first.items()}

    def handle(self, frame: Frame) -> Reading | Reject | Duplicate:
        """Decode and store one frame inside the writer's open transaction."""
        self.store.frame_heard(frame.source, frame.wall)
        known = self.by_address.get((frame.source, frame.address)) if frame.address is not None else None
        if known is None:
            return Reject(frame.source, "unknown_device", f"no device configured at address {frame.address}",
                          frame.address, None, frame.payload, frame.wall, frame.rssi, frame.snr)
        device, driver = known
        state = self.store.device(device.id, frame.source, frame.address, device.driver, frame.wall)
        try:
            # Before any driver sees it: a forged, replayed or plain frame is never decoded.
            opened = self._authenticate(self.auth[device.id], frame, device, state)
            if isinstance(opened, Duplicate):
                return opened
            # After the MIC check: forged frames must not use up a keyed device's allowance.
            self.allowance.take(device, frame.mono)
            decoded = driver.decode(frame.payload if opened is None else opened.payload)
        except (DecodeError, FrameRefused) as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # a driver bug must cost one frame, never the daemon
            reason, detail = "driver_error", f"{type(exc).__name__}: {exc}"
        else:
            # What a driver returns is checked as a frame is: a NaN, an object or a counter past 64
            # bits failed the whole commit (every frame of the group), or the batch that rendered it.
            if (problem := unfit(decoded)) is None:
                if opened is not None:  # the envelope's counter, not the payload's: it is the one authenticated
                    return self._store_reading(frame, device, state, decoded.values, opened.counter, None, True)
                return self._store_reading(frame, device, state, decoded.values, decoded.counter, decoded.epoch)
            reason, detail = "driver_error", f"{device.driver}: {problem}"
        state.rejects += 1
        self.store.touch(state)
        return Reject(frame.source, reason, detail, frame.address, device.id, frame.payload, frame.wall, frame.rssi,
                      frame.snr)

    def _authenticate(self, auth: Auth, frame: Frame, device: Device, state: DeviceState) -> Opened | Duplicate | None:
        """The frame's envelope, opened and fresh; None for a plain frame the device may send.

        Raises :class:`EnvelopeError` with the reason to count. The counter accepted is kept in the
        device's registry row, written in the same transaction as the reading. A second copy of a
        recent frame (two modules, a repeated line) is a duplicate, as for plain frames; any other
        frame whose counter is not newer is a replay.
        """
        if auth.key is not None and looks_sealed(frame.payload, frame.address or 0):
            opened = open_envelope(auth.key, frame.address or 0, frame.payload)
            if state.auth_counter is not None and opened.counter <= state.auth_counter:
                earlier = f"{device.id}:{state.epoch}:{opened.counter}"
                if self._copy(device.id, earlier, opened.counter, frame.payload, time.time()):
                    return self._duplicate(state, earlier)
                raise EnvelopeError("replayed", f"frame counter {opened.counter}; the last accepted was"
                                                f" {state.auth_counter}")
            state.auth_counter = opened.counter
            return opened
        if auth.required and (auth.plain_until is None or frame.wall > auth.plain_until):
            raise EnvelopeError("unauthenticated", "not an authenticated frame; this device must send them")
        return None

    def _store_reading(self, frame: Frame, device: Device, state: DeviceState, values, counter: int | None,
                       device_epoch: int | None, verified: bool = False) -> Reading | Duplicate:
        now = time.time()
        if counter is None:
            reading_id = f"{device.id}:h:{hashlib.sha256(frame.payload).hexdigest()[:16]}:{int(frame.wall // 60)}"
        else:
            if device_epoch is not None and device_epoch != state.epoch:
                self._new_epoch(state, device_epoch, None)
            last = state.last_counter
            if last is None or counter > last:
                ahead = counter - last if last is not None else LATE_WINDOW + 1
                state.seen = (state.seen << ahead | 1) & SEEN_MASK if ahead <= LATE_WINDOW else 1
                state.last_counter = counter
                if ahead <= LATE_WINDOW:  # a longer jump is a counter that skipped, not frames lost (see DeviceState.lost)
                    state.lost += ahead - 1
            else:
                behind = last - counter
                seen = behind <= LATE_WINDOW and state.seen >> behind & 1
                if seen or behind > LATE_WINDOW:
                    earlier_id = f"{device.id}:{state.epoch}:{counter}"
                    if self._copy(device.id, earlier_id, counter, frame.payload, now):
                        return self._duplicate(state, earlier_id)
                    # Same counter with other bytes, or far behind: the counter wrapped or the device restarted.
                    # (Or anyone in range sends its address random counters: a line a minute, not a frame.)
                    if (suppressed := self.throttle.allow(device.id)) is not None:
                        log.info("frame counter went back: new counter epoch", device=device.id, source=frame.source,
                                 last_counter=last, counter=counter, epoch=state.epoch + 1, seen_before=bool(seen),
                                 similar_suppressed=suppressed)
                    self._new_epoch(state, state.epoch + 1, counter)
                else:  # a late frame, never seen, within the window: it keeps the current epoch
                    state.seen |= 1 << behind
                    state.lost = max(0, state.lost - 1)  # counted lost when the gap opened
            reading_id = f"{device.id}:{state.epoch}:{counter}"
        observed = frame.wall
        reading = Reading(
            reading_id=reading_id, device_id=device.id, driver=device.driver, observed_at=observed,
            time_quality="synced" if plausible(observed) and self.sync.synced else "unsynced", counter=counter,
            values=values, source=frame.source, address=frame.address, rssi=frame.rssi,
            snr=frame.snr, mono=frame.mono, boot_id=self.boot_id, verified=verified,
        )
        seq = self.store.add_reading(reading, frame.payload, self.uplink_mask(device.id), now)
        if seq is None:
            return self._duplicate(state, reading_id)
        if counter is not None:
            frames = self.recent.setdefault(device.id, {})
            frames.pop(counter, None)
            frames[counter] = (seq, now)
            # A town's device sends a few frames an hour: it keeps those few, not 256.
            while len(frames) > RECENT_FRAMES or now - next(iter(frames.values()))[1] >= DUPLICATE_WINDOW:
                del frames[next(iter(frames))]
        state.readings += 1
        state.last_seen, state.last_rssi, state.last_snr = frame.wall, frame.rssi, frame.snr
        self.store.touch(state)
        return reading

    def _copy(self, device_id: str, reading_id: str, counter: int, payload: bytes, now: float) -> bool:
        """Is this a copy of one of the device's recent frames, accepted within the duplicate window?"""
        seq, _ = self.recent.get(device_id, {}).get(counter, (None, None))
        earlier = self.store.frame_at(seq, reading_id) if seq is not None else None
        return earlier is not None and earlier[0] == payload and now - earlier[1] < DUPLICATE_WINDOW

    def _new_epoch(self, state: DeviceState, epoch: int, counter: int | None) -> None:
        state.epoch, state.last_counter, state.seen = epoch, counter, 1 if counter is not None else 0
        self.recent.pop(state.id, None)  # its frames have ids of the old epoch

    def _duplicate(self, state: DeviceState, reading_id: str) -> Duplicate:
        # Counted only: anyone in range can replay a copy, so it must not make a dead sensor look heard.
        state.duplicates += 1
        self.store.touch(state)
        return Duplicate(state.id, reading_id)

