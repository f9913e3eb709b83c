"""Frame -> Reading: find the device, run its driver, give the reading its stable id.

Reading ids come from what the device sent: ``<device>:<epoch>:<counter>``. The counter epoch starts
at 0 and moves on when the counter goes backwards for real (wrap-around or device reset); a frame
whose counter was already seen with the same bytes within :data:`DUPLICATE_WINDOW` is a
retransmission (or a second copy of the line) and yields no new reading. A device without a counter
gets ``<device>:h:<hash of payload>:<minute>``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import structlog

from edgegw.clock import plausible
from edgegw.config import Config, Device
from edgegw.drivers import DriverRegistry
from edgegw.errors import DecodeError
from edgegw.model import Frame, Reading, Reject, boot_id
from edgegw.store import DeviceState, Store

log = structlog.get_logger("edgegw.ingest")

DUPLICATE_WINDOW = 3600.0  # s: a copy of a frame older than this with the same counter is a new epoch
LATE_WINDOW = 256  # counters this far behind the last one, never seen, are late frames, not a reset


@dataclass(frozen=True, slots=True)
class Duplicate:
    device_id: str
    reading_id: str


class Ingest:
    """Turns frames into readings and stores them; used only by the writer thread."""

    def __init__(self, config: Config, drivers: DriverRegistry, store: Store, uplink_mask: int):
        self.drivers = drivers
        self.store = store
        store.describe(config.gateway_id, {name: driver.units() for name, driver in drivers.drivers.items()})
        self.uplink_mask = uplink_mask
        self.boot_id = boot_id()
        store.note_boot(self.boot_id)
        self.by_address: dict[tuple[str, int], Device] = {
            (config.device_source(d), d.address): d for d in config.devices
        }

    def handle(self, frame: Frame) -> Reading | Reject | Duplicate:
        """Decode and store one frame inside the writer's open transaction."""
        self.store.frame_heard(frame.source, frame.wall)
        device = self.by_address.get((frame.source, frame.address)) if frame.address is not None else None
        if device is None:
            return Reject(frame.source, "unknown_device", f"no device configured at address {frame.address}",
                          frame.address, None, frame.payload, frame.wall)
        driver = self.drivers[device.driver]
        state = self.store.device(device.id, frame.source, frame.address, device.driver, frame.wall)
        try:
            decoded = driver.decode(frame.payload)
        except DecodeError as exc:
            reason, detail = exc.reason, exc.detail
        except Exception as exc:  # a driver bug must cost one frame, never the daemon
            reason, detail = "driver_error", f"{type(exc).__name__}: {exc}"
        else:
            return self._store_reading(frame, device, state, decoded.values, decoded.counter, decoded.epoch)
        state.rejects += 1
        self.store.touch(state)
        return Reject(frame.source, reason, detail, frame.address, device.id, frame.payload, frame.wall)

    def _store_reading(self, frame: Frame, device: Device, state: DeviceState, values, counter: int | None,
                       device_epoch: int | None) -> Reading | Duplicate:
        now = time.time()
        if counter is None:
            reading_id = f"{device.id}:h:{hashlib.sha256(frame.payload).hexdigest()[:16]}:{int(frame.wall // 60)}"
        else:
            if device_epoch is not None and device_epoch != state.epoch:
                state.epoch, state.last_counter = device_epoch, None
            last = state.last_counter
            if last is None or counter > last:
                state.last_counter = counter
            else:
                earlier = self.store.earlier(f"{device.id}:{state.epoch}:{counter}")
                if earlier is not None and earlier[0] == frame.payload and now - earlier[1] < DUPLICATE_WINDOW:
                    return self._duplicate(state, frame, f"{device.id}:{state.epoch}:{counter}")
                if earlier is not None or last - counter > LATE_WINDOW:
                    # Same counter with other bytes, or far behind: the counter wrapped or the device restarted.
                    log.info("frame counter went back: new counter epoch", device=device.id, source=frame.source,
                             last_counter=last, counter=counter, epoch=state.epoch + 1,
                             seen_before=earlier is not None)
                    state.epoch, state.last_counter = state.epoch + 1, counter
                # else: a late frame, never seen, within the window: it keeps the current epoch.
            reading_id = f"{device.id}:{state.epoch}:{counter}"
        observed = frame.wall
        reading = Reading(
            reading_id=reading_id, device_id=device.id, driver=device.driver, observed_at=observed,
            time_quality="synced" if plausible(observed) else "unsynced", counter=counter,
            values=values, source=frame.source, address=frame.address, rssi=frame.rssi,
            snr=frame.snr, mono=frame.mono, boot_id=self.boot_id,
        )
        if not self.store.add_reading(reading, frame.payload, self.uplink_mask, now):
            return self._duplicate(state, frame, reading_id)
        state.readings += 1
        state.last_seen, state.last_rssi, state.last_snr = frame.wall, frame.rssi, frame.snr
        self.store.touch(state)
        return reading

    def _duplicate(self, state: DeviceState, frame: Frame, reading_id: str) -> Duplicate:
        state.duplicates += 1
        state.last_seen, state.last_rssi, state.last_snr = frame.wall, frame.rssi, frame.snr
        self.store.touch(state)
        return Duplicate(state.id, reading_id)

