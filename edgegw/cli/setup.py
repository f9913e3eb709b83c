"""``edgegw config check`` and ``edgegw keys``: what an installer runs before the daemon."""

from __future__ import annotations

from pathlib import Path

import click

from edgegw import __version__
from edgegw.cli.common import check_config_or_exit, cli, config_option, load_config_or_exit
from edgegw.config import Config
from edgegw.errors import ConfigError
from edgegw.keys import load_keys


@cli.group("config")
def config_group() -> None:
    """Check gateway config files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """List every problem in FILE at once (exit 2), or summarise it.

    Example: edgegw config check /etc/edgegw/gateway.toml
    """
    config, _, warnings = check_config_or_exit(file, keys=True)
    uplinks = ", ".join(f"{u.name} ({u.type})" for u in config.effective_uplinks())
    click.echo(f"{file}: OK: gateway {config.gateway_id}, {len(config.sources)} source(s), "
               f"{len(config.devices)} device(s), uplinks: {uplinks}, data in {config.data_dir}")
    for warning in warnings:
        click.echo(f"warning: {file}: {warning}", err=True)
    keyed = set(load_keys(config.keys_file)) if config.keys_file is not None else set()
    from edgegw.uplink import acknowledgement_note  # here: the command's start stays free of uplink imports

    for note in filter(None, map(acknowledgement_note, config.effective_uplinks())):
        click.echo(note)
    plain = [d.id for d in config.devices if d.id not in keyed]
    if plain:
        click.echo(f"not authenticated (anyone in radio range can send as them): {', '.join(plain)};"
                   " see edgegw keys new")
    from edgegw.errors import OutboxError
    from edgegw.outbox import Outbox
    from edgegw.store.connection import db_path

    db = db_path(config.data_dir)
    if not db.exists():
        return
    # An uplink renamed or removed lets go of its queue when the daemon starts: say so before.
    try:
        orphans = Outbox(db).waiting_only_for([u.name for u in config.effective_uplinks()])
    except OutboxError as exc:
        click.echo(f"warning: could not read {db}: {exc}", err=True)
        return
    for name, n in orphans.items():
        if n:
            click.echo(f"warning: uplink {name!r} is not in this config, and {n} unsent item(s) in {db} wait for"
                       " it alone: the daemon will release them unsent. Keep its [[uplinks]] entry (same name)"
                       " until they are delivered.", err=True)


@cli.group("keys")
def keys_group() -> None:
    """Provision the keys of sensors that authenticate their frames."""


def _keyed_device(config: Config, device_id: str):
    device = next((d for d in config.devices if d.id == device_id), None)
    if device is None:
        raise click.ClickException(f"no device {device_id!r} in the config; devices: "
                                   f"{', '.join(d.id for d in config.devices) or 'none'}")
    if config.keys_file is None:
        raise click.ClickException('the config has no keys_file: add one at the top, e.g.'
                                   ' keys_file = "/etc/edgegw/keys.toml"')
    return device


@keys_group.command("new")
@click.argument("device_id")
@config_option
@click.option("--replace", is_flag=True, help="replace the device's existing key (the sensor needs the new one)")
def keys_new(device_id: str, config_path: Path, replace: bool) -> None:
    """Make a key for DEVICE_ID, store it in the config's keys_file (readable by its owner only),
    and print what the sensor's firmware needs.

    Example: edgegw keys new trap-01 -c /etc/edgegw/gateway.toml
    """
    from edgegw.keys import new_key

    config, _ = load_config_or_exit(config_path)
    device = _keyed_device(config, device_id)
    assert config.keys_file is not None
    try:
        if not replace and config.keys_file.exists() and device_id in load_keys(config.keys_file):
            raise click.ClickException(f"{device_id} already has a key in {config.keys_file}; --replace makes a"
                                       " new one (and the sensor must then be given it)")
        key = new_key(config.keys_file, device_id)
    except ConfigError as exc:
        raise click.ClickException("; ".join(f"{exc.path}: {p}" for p in exc.problems)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {config.keys_file}: {exc.strerror}") from None
    click.echo(f"{device_id}: key written to {config.keys_file} (readable by its owner only)\n"
               f"  key        {key.hex()}\n"
               f"  device id  {device.address} (its radio address: 4 bytes, big-endian, in every frame)\n"
               "  counter    start at 1, add 1 before every frame, keep it in non-volatile memory, never reuse one\n"
               f"  firmware   firmware/edgegw_frame.c: edgegw_seal(key, {device.address}, counter, payload, len,"
               " out, sizeof out)\n"
               "Restart the gateway (systemctl restart edgegw) for it to take the key.")


@keys_group.command("reset-counter")
@click.argument("device_id")
@config_option
def keys_reset_counter(device_id: str, config_path: Path) -> None:
    """Accept DEVICE_ID's frame counter from the start again: for a sensor whose counter restarted
    (a new battery without non-volatile memory, a reflashed board). Run on site, with the daemon
    stopped; nothing sent over the air can do this.

    Example: systemctl stop edgegw; edgegw keys reset-counter trap-01 -c /etc/edgegw/gateway.toml
    """
    from edgegw.running import AlreadyRunning, DataDirLock
    from edgegw.store import Store
    from edgegw.store.connection import db_path

    config, _ = load_config_or_exit(config_path)
    _keyed_device(config, device_id)
    try:
        lock = DataDirLock(config.data_dir, __version__)  # also keeps a daemon from starting meanwhile
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}. Stop it first: systemctl stop edgegw") from None
    try:
        store = Store(db_path(config.data_dir))
        forgotten = store.reset_counter(device_id)
        store.close()
    finally:
        lock.release()
    if forgotten is None:
        click.echo(f"{device_id}: no authenticated frame accepted yet; nothing to reset")
    else:
        click.echo(f"{device_id}: counter {forgotten} forgotten; the next authenticated frame starts it again")


