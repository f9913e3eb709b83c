"""``edgegw simulate``, ``edgegw drivers list`` and ``edgegw decode``: tools for the bench and the field."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import click

from edgegw.cli.common import cli, json_option, load_config_or_exit, optional_config_option
from edgegw.config import Config
from edgegw.drivers import DriverRegistry, load_drivers
from edgegw.errors import ConfigError, DecodeError, DriverLoadError

_NO_CONFIG = " (a driver of a config's layouts or drivers_dir? name the config: -c FILE)"


@cli.command()
@click.option("--field", "field_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="virtual field description (TOML), e.g. configs/demo-field.toml")
@click.option("--link", required=True, type=click.Path(path_type=Path),
              help="path of the symlink to the emulated serial port, e.g. /tmp/rylr0")
@optional_config_option("for its drivers_dir, layouts and device keys")
@click.option("--speed", default=1.0, show_default=True, help="time acceleration of the field")
@click.option("--seed", type=int, help="random seed, for a repeatable field")
@click.option("--duration", type=float, help="stop after this many seconds")
@click.option("--module", default="rylr", show_default=True,
              type=click.Choice(["rylr", "es920lr", "im920sl", "e220", "sx127x"]),
              help="the module type to emulate (e220: M0/M1 tied to normal mode, set up with the example's settings;"
                   " its source needs mode_pins = false; sx127x: on SPI, emulated by the daemon instead)")
def simulate(field_file: Path, link: Path, config_path: Path | None, speed: float, seed: int | None,
             duration: float | None, module: str) -> None:
    """Emulate a radio module (REYAX RYLR by default) on a pseudo-terminal, fed by a virtual field of sensors.

    Point a gateway's source at the link (port = "/tmp/rylr0"). Faults to inject (garbage,
    truncated lines, bad hex, wrong lengths, duplicates) are set in the field file's [faults].
    With a config, the sensors that have a key in its keys_file seal their frames with it, as
    flashed sensors do.

    Example: edgegw simulate --field configs/demo-field.toml --link /tmp/rylr0 -c configs/demo.toml
    """
    from edgegw.radio.field import VirtualField, load_field
    from edgegw.radio.registry import standalone_emulator

    config, drivers = _config_and_drivers(config_path)
    keys = _keys_by_address(config) if config is not None else {}
    try:
        emulator = standalone_emulator(module, link)  # refused, with what to do instead, for an SPI chip
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        vfield = VirtualField(load_field(field_file), drivers, emulator, seed=seed, keys=keys)
    except ConfigError as exc:
        raise click.ClickException(str(exc) + ("" if config is not None else _NO_CONFIG)) from None
    emulator.plug()
    click.echo(f"emulated {module} module at {link}; Ctrl-C to stop", err=True)
    stop = threading.Event()
    if duration:
        threading.Timer(duration, stop.set).start()
    try:
        vfield.run(stop, speed)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        emulator.unplug()
        click.echo(f"frames on the air {len(vfield.sent)}, lines to the host {emulator.written}, "
                   f"dropped {emulator.dropped}, faults {vfield.faults_sent}",
                   err=True)


def _config_and_drivers(config_path: Path | None) -> tuple[Config | None, DriverRegistry]:
    """The config and its drivers (bundled, drivers_dir, layouts), or the bundled ones without a config."""
    if config_path is not None:
        return load_config_or_exit(config_path)
    try:
        return None, load_drivers()
    except DriverLoadError as exc:
        raise click.ClickException(str(exc)) from None


def _keys_by_address(config: Config) -> dict[int, bytes]:
    """The keys of the config's devices, by radio address (the field knows its sensors by address)."""
    from edgegw.keys import load_keys

    try:
        keys = load_keys(config.keys_file) if config.keys_file is not None else {}
    except ConfigError as exc:
        raise click.ClickException(f"keys_file: {exc}") from None
    return {d.address: keys[d.id] for d in config.devices if d.id in keys}


@cli.group("drivers")
def drivers_group() -> None:
    """Device drivers."""


@drivers_group.command("list")
@optional_config_option("to list its drivers_dir and layouts too")
@json_option
def drivers_list(config_path: Path | None, as_json: bool) -> None:
    """List the drivers this gateway can use, with their values, units and ranges.

    Example: edgegw drivers list -c configs/demo.toml
    """
    registry = _config_and_drivers(config_path)[1]
    rows: list[dict[str, Any]] = [
        {"name": name, "origin": registry.origins[name], "description": registry[name].description,
         "values": {k: {"unit": v.unit, "min": v.minimum, "max": v.maximum, "choices": list(v.choices)}
                    for k, v in registry[name].values.items()}}
        for name in registry.names()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']}  ({r['origin']})  {r['description'].splitlines()[0] if r['description'] else ''}")
        for k, v in r["values"].items():
            rng = ("|".join(v["choices"]) if v["choices"] else "-" if v["min"] is None and v["max"] is None
                   else f"{_num(v['min'])}..{_num(v['max'])}")
            click.echo(f"    {k:<20} {v['unit'] or '-':<6} {rng}")


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


@cli.command()
@click.option("--driver", required=True, help="driver name, see `edgegw drivers list`")
@optional_config_option("for its drivers_dir and layouts")
@click.argument("payload_hex", nargs=-1, required=True)
def decode(driver: str, config_path: Path | None, payload_hex: tuple[str, ...]) -> None:
    """Decode one payload (hex, spaces allowed) with a driver and print the values as JSON.

    Example: edgegw decode --driver water_level 01 09C4 05AA 0E74 0007
    """
    config, registry = _config_and_drivers(config_path)
    if driver not in registry:
        raise click.ClickException(f"unknown driver {driver!r}; known: {', '.join(registry.names())}"
                                   + ("" if config is not None else _NO_CONFIG))
    try:
        payload = bytes.fromhex("".join(payload_hex))
    except ValueError:
        raise click.ClickException(f"not hexadecimal: {' '.join(payload_hex)!r}") from None
    try:
        decoded = registry[driver].decode(payload)
    except DecodeError as exc:
        raise click.ClickException(f"{driver} cannot decode {payload.hex()}: {exc}") from None
    click.echo(json.dumps({"driver": driver, "counter": decoded.counter, "values": decoded.values,
                           "units": registry[driver].units()}, indent=2))


