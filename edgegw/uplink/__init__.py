"""Uplinks: adapters that carry a batch to the platform and report its acknowledgement.

An uplink is asynchronous: :meth:`Uplink.send` hands a batch over and returns at once; the uplink
later calls ``on_result(batch_id, error)`` exactly once per batch, with ``error`` None when the
platform acknowledged it (MQTT PUBACK, HTTP 2xx, fsync of a file). The forwarder marks items
delivered only then, so a batch lost in a crash is simply sent again. What that acknowledgement
proves differs per uplink type: :data:`ACKNOWLEDGEMENTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from edgegw.errors import UplinkError
from edgegw.items import Batch

if TYPE_CHECKING:
    from edgegw.config import Config, UplinkConfig

# s: an uplink with items waiting that acknowledged nothing for this long is shown as stalled (the
# default of each uplink's ``stalled_after``).
STALLED_AFTER = 120.0

# What an uplink type's acknowledgement proves: (level shown by `edgegw status`, what it means).
# "platform": the platform itself stored the item before answering; "broker": an MQTT broker has it,
# and whoever consumes it there may not (yet); "local": it is on this gateway's own storage; "radio":
# it was transmitted, unacknowledged (Sigfox).
ACKNOWLEDGEMENTS: dict[str, tuple[str, str]] = {
    "ngsi-v2": ("platform", "HTTP 2xx from the context broker: the entities are stored"),
    "ngsi-ld": ("platform", "HTTP 2xx from the context broker for every upsert: the entities are stored"),
    "iota-json-http": ("platform", "HTTP 2xx from the IoT Agent, sent after its update of the context broker "
                                   "succeeded"),
    "iota-ul-http": ("platform", "HTTP 2xx from the IoT Agent, sent after its update of the context broker "
                                 "succeeded"),
    "mqtt": ("broker", "PUBACK from the MQTT broker: the broker has the batch"),
    "iota-json": ("broker", "PUBACK from the MQTT broker, not from the IoT Agent: the agent gets the measures only "
                            "if it is subscribed at QoS 1 with a persistent session"),
    "iota-ul": ("broker", "PUBACK from the MQTT broker, not from the IoT Agent: the agent gets the measures only "
                          "if it is subscribed at QoS 1 with a persistent session"),
    "file": ("local", "the batch file is fsynced on this gateway"),
    "sigfox": ("radio", "OK from the Sigfox module: the message went on the air, and nothing acknowledges it (a "
                        "daily downlink proves the network hears the module); the alarm goes over the main uplinks too"),
}


def acknowledgement_level(uplink_type: str) -> str:
    """``platform``, ``broker`` or ``local``: how far an item had got when this uplink type acknowledged it."""
    return ACKNOWLEDGEMENTS.get(uplink_type, ("unknown", ""))[0]


def acknowledgement_note(uplink: UplinkConfig) -> str | None:
    """What an installer must know about an uplink's acknowledgement, or None when it proves the
    platform stored the item (``edgegw config check`` prints it)."""
    if uplink.type in ("iota-json", "iota-ul"):
        return (f"note: uplink {uplink.name!r} ({uplink.type}): {ACKNOWLEDGEMENTS[uplink.type][1]}. An agent with "
                "its defaults (clean session, QoS 0) drops every measure published while it is down, and it takes "
                "a measure off MQTT whether or not the context broker then stored it; edgegw still counts them "
                "delivered. IOTA_MQTT_CLEAN=false does not help: the agents connect with a new client id each time, "
                f'so their old session is never resumed. Use type = "{uplink.type}-http" (its answer comes after '
                "the context broker stored the measure).")
    return None


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
    from edgegw.config import FileUplink, IotAgentHttpUplink, IotAgentUplink, MqttUplink, NgsiConnection, SigfoxUplink
    if isinstance(uplink, SigfoxUplink):  # one alarm a message, not batches: see edgegw.uplink.sigfox.sender
        raise TypeError("a Sigfox uplink is driven by SigfoxSender, not by a batch forwarder")
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
