"""Uplinks: adapters that carry a batch to the platform and report its acknowledgement.

An uplink is asynchronous: :meth:`Uplink.send` hands a batch over and returns at once; the uplink
later calls ``on_result(batch_id, error)`` exactly once per batch, with ``error`` None when the
platform acknowledged it (MQTT PUBACK, fsync of a file). The forwarder marks items delivered only
then, so a batch lost in a crash is simply sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from edgegw.errors import UplinkError
from edgegw.model import Batch

if TYPE_CHECKING:
    from edgegw.config import Config, UplinkConfig

# s: an uplink with items waiting that acknowledged nothing for this long is shown as stalled (the
# default of each uplink's ``stalled_after``).
STALLED_AFTER = 120.0

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


def build_uplink(uplink: UplinkConfig, config: Config) -> Uplink:
    """The uplink object for one ``[[uplinks]]`` entry of ``config`` (which gives the gateway id,
    the data directory and the device locations FIWARE entities carry)."""
    # Imported here: edgegw.config imports edgegw.uplink.fiware, and each uplink its own client library.
    from edgegw.config import FileUplink, IotAgentHttpUplink, IotAgentUplink, MqttUplink, NgsiConnection
    if isinstance(uplink, FileUplink):
        from edgegw.uplink.file import FileWriterUplink
        return FileWriterUplink(uplink, config.data_dir)
    if isinstance(uplink, MqttUplink):
        from edgegw.uplink.mqtt import MqttBatchUplink
        return MqttBatchUplink(uplink, config.gateway_id)
    mapping = uplink.fiware_mapping(config.gateway_id, config.devices)
    if isinstance(uplink, IotAgentUplink):
        from edgegw.uplink.iota import IotAgentMqttUplink
        return IotAgentMqttUplink(uplink, mapping, config.gateway_id)
    if isinstance(uplink, IotAgentHttpUplink):
        from edgegw.uplink.iota_http import IotAgentHttpUplink as AgentHttp
        return AgentHttp(uplink, mapping)
    if isinstance(uplink, NgsiConnection):
        from edgegw.uplink.ngsi import NgsiUplink
        return NgsiUplink(uplink, mapping)
    raise TypeError(f"no uplink for {type(uplink).__name__}")
