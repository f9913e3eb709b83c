"""What a town provisions on its IoT Agent for this gateway: the body of ``POST /iot/devices``.

The agent makes the entities on the IoT Agent paths; provisioned from the same config as the NGSI
uplinks, a device is the same entity (id and type) on every path, and numbers arrive typed
``Number`` (the agent gives an attribute it does not know a default text type). ``scripts/iota-provisioning.py``
prints it.
"""

from __future__ import annotations

from typing import Any

from edgegw.config import Config, IotAgentHttpUplink, IotAgentUplink
from edgegw.drivers import DriverRegistry, ValueSpec
from edgegw.uplink.fiware import iota_provisioning


def value_type(spec: ValueSpec) -> str | None:
    """The NGSI-v2 type of a driver value, when its spec tells: a choice is Text, a unit or range a Number."""
    if spec.choices:
        return "Text"
    if spec.unit or spec.minimum is not None or spec.maximum is not None:
        return "Number"
    return None  # a flag or a free value: left to the agent's default type


def agent_devices(config: Config, drivers: DriverRegistry, uplink: IotAgentUplink | IotAgentHttpUplink) -> dict[str, Any]:
    """The ``POST /iot/devices`` body for every ``[[devices]]`` entry of ``config`` and the gateway itself."""
    devices = []
    for device in config.devices:
        values = drivers[device.driver].values
        kinds = {name: kind for name, spec in values.items() if (kind := value_type(spec)) is not None}
        devices.append((device.id, device.driver, kinds))
    mapping = uplink.fiware_mapping(config.gateway_id, config.devices)
    return iota_provisioning(mapping, devices, uplinks=[u.name for u in config.effective_uplinks()],
                             sources=[s.name for s in config.sources])
