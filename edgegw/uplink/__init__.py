"""Uplinks: adapters that carry a batch to the platform and report its acknowledgement.

An uplink is asynchronous: :meth:`Uplink.send` hands a batch over and returns at once; the uplink
later calls ``on_result(batch_id, error)`` exactly once per batch, with ``error`` None when the
platform acknowledged it (MQTT PUBACK, fsync of a file). The forwarder marks items delivered only
then, so a batch lost in a crash is simply sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edgegw.errors import UplinkError
from edgegw.model import Batch

OnResult = Callable[[str, UplinkError | None], None]
OnState = Callable[[str, str], None]  # (state, detail): "up" | "down" | "connecting"


class Uplink(Protocol):
    name: str

    def start(self, on_result: OnResult, on_state: OnState) -> None:
        """Begin connecting in the background."""

    def ready(self) -> bool:
        """True when a batch sent now can be delivered."""

    def send(self, batch: Batch) -> None:
        """Hand one batch over; its result arrives through ``on_result(batch.batch_id, error)``."""

    def stop(self) -> None:
        """Disconnect; batches not yet acknowledged will be resent after restart."""


def build_uplink(config, gateway_id: str, data_dir) -> Uplink:
    """The uplink object for one ``[[uplinks]]`` entry."""
    from edgegw.config import FileUplink
    if isinstance(config, FileUplink):
        from edgegw.uplink.file import FileWriterUplink
        return FileWriterUplink(config, data_dir)
    from edgegw.uplink.mqtt import MqttBatchUplink
    return MqttBatchUplink(config, gateway_id)
