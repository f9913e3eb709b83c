"""The device registry: each device's last radio figures, its frame counter and counts.

Cached in memory (the writer reads it for every frame) and written back at each commit, only the
rows that changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgegw.store.transactions import Tables

# Counters this far behind the last one, never seen, are late frames, not a reset (see edgegw.ingest).
LATE_WINDOW = 256


@dataclass
class DeviceState:
    """The registry row of one device, cached in memory and written back at each commit."""

    id: str
    source: str
    address: int | None
    driver: str
    first_seen: float
    last_seen: float = 0.0
    last_rssi: float | None = None
    last_snr: float | None = None
    last_counter: int | None = None
    epoch: int = 0
    readings: int = 0
    duplicates: int = 0
    rejects: int = 0
    # Bit i: the counter ``last_counter - i`` arrived in this epoch (0 <= i <= LATE_WINDOW). It stands
    # in for an index on the ids of counted readings: such an index took a fifth of what a burst
    # wrote to the SD card, for the rare frame whose counter went back.
    seen: int = 0
    # The frame counter of the last authenticated frame accepted (see edgegw.envelope): committed
    # with its reading, so a replay is rejected after any restart or power cut.
    auth_counter: int | None = None
    # Frames never received, by the gaps in the device's counter (a late frame that fills one takes
    # it back): what an installer walking the field reads as link quality, beside RSSI and SNR. A
    # jump of more than LATE_WINDOW is not counted: a sensor that saves its counter in steps skips
    # ahead at each reboot, and frames sent while the gateway was down for days say nothing of the link.
    lost: int = 0

    @classmethod
    def of(cls, row: dict[str, Any]) -> DeviceState:
        # lost: NULL in the rows of a database older than schema 7
        return cls(**{**row, "seen": int.from_bytes(row["seen"] or b"", "little"), "lost": row.get("lost") or 0})

    def row(self) -> dict[str, Any]:
        return {**vars(self), "seen": blob(self.seen)}


def blob(bits: int) -> bytes:
    """A bit set as the little-endian bytes it is stored as."""
    return bits.to_bytes((bits.bit_length() + 7) // 8, "little")


COLUMNS = tuple(DeviceState.__dataclass_fields__)
# An upsert changes the row in place; INSERT OR REPLACE deleted and re-inserted it, and so also
# rewrote a page of the primary key's index in every commit.
UPSERT = (f"INSERT INTO devices VALUES ({', '.join(':' + c for c in COLUMNS)}) ON CONFLICT(id) DO UPDATE SET "
          + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c != "id"))


class DeviceRegistry(Tables):
    """The ``devices`` table, through its cache: :meth:`device` to get a row, :meth:`touch` once changed."""

    devices: dict[str, DeviceState]
    _dirty_devices: set[str]

    def _load_devices(self) -> None:
        cur = self.conn.execute("SELECT * FROM devices")
        names = [c[0] for c in cur.description]
        self.devices = {row[0]: DeviceState.of(dict(zip(names, row))) for row in cur}
        self._dirty_devices = set()

    def _write_devices(self) -> None:
        if self._dirty_devices:
            self.conn.executemany(UPSERT, [self.devices[d].row() for d in self._dirty_devices])
            self._dirty_devices.clear()

    def device(self, device_id: str, source: str, address: int | None, driver: str, now: float) -> DeviceState:
        """The registry row of a device, made if it was never heard."""
        state = self.devices.get(device_id)
        if state is None:
            state = self.devices[device_id] = DeviceState(device_id, source, address, driver, first_seen=now)
        return state

    def touch(self, state: DeviceState) -> None:
        """The row changed: write it back at the commit."""
        self._dirty_devices.add(state.id)

    def reset_counter(self, device_id: str) -> int | None:
        """Forget the device's last authenticated frame counter (a sensor whose counter restarted):
        its next frames start a new counter epoch, so their ids do not repeat older readings'.
        Returns the counter forgotten; None when the device never sent an authenticated frame."""
        state = self.devices.get(device_id)
        if state is None or state.auth_counter is None:
            return None
        forgotten = state.auth_counter
        with self.transaction():
            state.auth_counter, state.last_counter, state.seen, state.epoch = None, None, 0, state.epoch + 1
            self.touch(state)
        return forgotten
