#!/usr/bin/env python3
"""Print what to provision on the town's IoT Agent for a gateway config (``POST /iot/devices``).

Usage: python scripts/iota-provisioning.py -c configs/uplink-iota-json.toml [--uplink NAME]

The devices' entities get the ids and types the NGSI uplinks use for the same config, their
attributes typed (a WaterObserved's level as waterLevel, a Number in metres, as the gateway sends
it), and the gateway's own device (its health report) every number typed Number.
Send it to the agent's north port with the service group's tenant, e.g.
  curl -X POST http://iota.town.example:4041/iot/devices -H 'Content-Type: application/json' \\
       -H 'fiware-service: kamikawa' -H 'fiware-servicepath: /rivers' -d @devices.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegw.config import IotAgentHttpUplink, IotAgentUplink, load_config
from edgegw.errors import ConfigError
from edgegw.uplink.provisioning import agent_devices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True, help="the gateway's config file")
    parser.add_argument("--uplink", help="the IoT Agent uplink's name, when the config has several")
    args = parser.parse_args()
    try:
        config, drivers = load_config(args.config, keys=False)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    agents = [u for u in config.uplinks if isinstance(u, (IotAgentUplink, IotAgentHttpUplink))
              and args.uplink in (None, u.name)]
    if len(agents) != 1:
        names = [u.name for u in config.uplinks if isinstance(u, (IotAgentUplink, IotAgentHttpUplink))]
        print(f"{args.config}: expected one IoT Agent uplink{' named ' + args.uplink if args.uplink else ''}; "
              f"the IoT Agent uplinks are {names} (choose with --uplink)", file=sys.stderr)
        return 2
    json.dump(agent_devices(config, drivers, agents[0]), sys.stdout, ensure_ascii=False, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
