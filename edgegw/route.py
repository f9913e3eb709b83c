"""Routing: which uplinks an outbox item waits for, decided once, when the item is accepted.

Each configured uplink owns a bit in ``queue.pending``; an item's mask is the bits of the uplinks
whose route takes it. A route names up to three facets, each optional (left out: every value):

``kinds``    item kinds: ``reading``, ``alarm``, ``health``
``alarms``   alarm kinds (``trap_sprung``, ``water_level_alarm``, ...); items that are not alarms pass
``devices``  device ids; the gateway's own items (its health report, a damaged database) pass

So a town can send readings of the river gauges to the river office's broker only, and the Sigfox
module takes only trap and danger-stage alarms. Delivery state stays per uplink: each bit is cleared
by its own uplink's acknowledgement, whatever the others do.

Pure: no I/O, no config types; :class:`Routing` caches each answer, as a reading's mask is asked for
on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ITEM_KINDS = ("reading", "alarm", "health")


@dataclass(frozen=True, slots=True)
class Route:
    """Which items one uplink takes; a facet that is None takes every value."""

    kinds: frozenset[str] | None = None
    alarms: frozenset[str] | None = None
    devices: frozenset[str] | None = None

    def takes(self, kind: str, device: str | None = None, alarm: str | None = None) -> bool:
        """Whether an item of ``kind`` about ``device`` (None: the gateway's own) goes this way."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        if kind == "alarm" and self.alarms is not None and alarm not in self.alarms:
            return False
        return self.devices is None or device is None or device in self.devices

    def matches_any(self, items: Iterable[tuple[str, str | None, str | None]]) -> bool:
        """Whether any of ``items`` (kind, device, alarm kind) goes this way: a route that takes
        none of what the gateway can produce is a config mistake, said by ``config check``."""
        return any(self.takes(*item) for item in items)


EVERYTHING = Route()


class Routing:
    """The routes of all uplinks, by bit: answers an item's pending mask."""

    def __init__(self, routes: Mapping[int, Route], local: int = 0):
        self.routes = dict(routes)
        self.local = local  # the bits of uplinks whose acknowledgement stays on the gateway (files)
        self._masks: dict[tuple[str, str | None, str | None], int] = {}

    def mask(self, kind: str, device: str | None = None, alarm: str | None = None) -> int:
        """The bits of the uplinks that take this item (0: none; the store then counts it delivered)."""
        key = (kind, device, alarm)
        mask = self._masks.get(key)
        if mask is None:
            mask = sum(bit for bit, route in self.routes.items() if route.takes(kind, device, alarm))
            if len(self._masks) < 100_000:  # bounded: device ids come from the config, alarm kinds are few
                self._masks[key] = mask
        return mask

    def reading(self, device: str) -> int:
        """The mask of a plain reading of ``device``: what :class:`edgegw.ingest.Ingest` asks per reading."""
        return self.mask("reading", device)

    def others(self, bit: int, kind: str, device: str | None = None, alarm: str | None = None) -> int:
        """The bits, other than ``bit``, that this item was routed to and that take it off the gateway:
        for the Sigfox uplink, the main uplinks (a file on a USB stick tells nobody of a catch)."""
        return self.mask(kind, device, alarm) & ~bit & ~self.local
