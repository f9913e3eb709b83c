"""``edgegw monitor``: the installer's live view of what the radio hears, read from a running
gateway's database by a second process.

Every configured device is a row, heard or not: the age of its last frame, that frame's RSSI and
SNR, frames received and frames lost (gaps in its counter). Below, the addresses heard that no
device is configured at (a sensor flashed with the wrong address, or a neighbour's).

Refreshing as frames arrive without slowing the daemon: ``PRAGMA data_version`` on one read-only
connection, asked every :data:`POLL_EVERY`, changes when another connection committed. Asking it
reads the WAL index in shared memory, not the file, and holds a read lock for that statement only
(between polls no transaction is open); only when it changed is the database read, in one short
snapshot (a few hundred rows), so a WAL checkpoint is never held up. Between changes the ages are
redrawn every second from what was read.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgegw.config import Config
from edgegw.store import heard, open_reader

POLL_EVERY = 0.25  # s: how often the database is asked whether it changed
AGE_EVERY = 1.0  # s: how often the ages are redrawn when nothing changed
OVERDUE = 2.0  # intervals without a frame after which a device's age is shown as overdue


@dataclass(frozen=True)
class DeviceRow:
    """One configured device as the monitor shows it; ``last_seen`` None: never heard."""

    id: str
    name: str
    source: str
    address: int
    interval: float
    last_seen: float | None = None
    rssi: float | None = None
    snr: float | None = None
    frames: int = 0
    lost: int = 0


class Watch:
    """The gateway database, read again only when another connection committed to it."""

    def __init__(self, path: Path):
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.version: int | None = None

    def changed(self) -> bool:
        """Has anything been committed since the last :meth:`read`? (True before the first.)"""
        if self.conn is None:
            if not self.path.exists():
                return False
            self.conn = open_reader(self.path)
        return self.conn.execute("PRAGMA data_version").fetchone()[0] != self.version

    def read(self) -> dict[str, Any]:
        """Devices and unknown addresses as committed now (see :func:`edgegw.store.heard`)."""
        assert self.conn is not None, "changed() opens the database"
        self.version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        return heard(self.conn)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def device_rows(config: Config, seen: dict[str, Any]) -> list[DeviceRow]:
    """Every configured device, in the config's order, with what its registry row says of it."""
    registry = {d["id"]: d for d in seen["devices"]}
    rows = []
    for d in config.devices:
        r = registry.get(d.id)
        source = config.device_source(d)
        if r is None or not r["last_seen"]:
            rows.append(DeviceRow(d.id, d.name, source, d.address, d.interval))
        else:
            rows.append(DeviceRow(d.id, d.name, source, d.address, d.interval, r["last_seen"], r["last_rssi"],
                                  r["last_snr"], r["readings"] + r["duplicates"] + r["rejects"], r["lost"]))
    return rows


def age(seconds: float) -> str:
    """``7s``, ``3m05s``, ``2h04m``, ``3d02h``."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _figure(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:g} {unit}"


def render(config: Config, seen: dict[str, Any] | None, now: float, daemon: str) -> Group:
    """One frame of the view: a head line, the devices, the unknown addresses."""
    head = Text.assemble(("edgegw monitor", "bold"), f"  gateway {config.gateway_id}  {daemon}  ",
                         time.strftime("%H:%M:%S", time.localtime(now)))
    if seen is None:
        return Group(head, Text("no database yet: is the gateway running (edgegw run)?", style="yellow"))
    devices = Table(title="devices (configured)", title_justify="left", expand=False)
    for column, justify in (("DEVICE", "left"), ("ADDR", "right"), ("SOURCE", "left"), ("LAST FRAME", "right"),
                            ("RSSI", "right"), ("SNR", "right"), ("FRAMES", "right"), ("LOST", "right"),
                            ("NAME", "left")):
        # Only the name gives way on a narrow screen: an id or a figure cut short is no use in the field.
        devices.add_column(column, justify=justify, no_wrap=column != "NAME")  # type: ignore[arg-type]
    for d in device_rows(config, seen):
        if d.last_seen is None:
            last = Text("never heard", style="bold red")
        else:
            late = now - d.last_seen > OVERDUE * d.interval
            last = Text(age(now - d.last_seen) + (" overdue" if late else ""), style="yellow" if late else "green")
        share = f" ({100 * d.lost / (d.lost + d.frames):.0f}%)" if d.lost else ""
        devices.add_row(d.id, str(d.address), d.source, last, _figure(d.rssi, "dBm"), _figure(d.snr, "dB"),
                        str(d.frames), f"{d.lost}{share}", d.name)
    parts: list[Any] = [head, devices]
    if seen["unknown"]:
        unknown = Table(title="unknown addresses heard (no device configured there)", title_justify="left")
        for column in ("SOURCE", "ADDR", "FRAMES", "LAST FRAME", "RSSI", "SNR"):
            unknown.add_column(column, justify="left" if column == "SOURCE" else "right", no_wrap=True)
        for u in seen["unknown"]:
            unknown.add_row(u["source"], str(u["address"]), str(u["frames"]), age(now - u["last_at"]),
                            _figure(u["rssi"], "dBm"), _figure(u["snr"], "dB"))
        parts.append(unknown)
    else:
        parts.append(Text("unknown addresses heard: none"))
    return Group(*parts)
