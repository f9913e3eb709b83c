"""``edgegw config check`` and ``edgegw keys``: what an installer runs before the daemon."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from edgegw import __version__
from edgegw.cli.common import check_config_or_exit, cli, config_argument, config_option, load_config_or_exit, plain_list
from edgegw.cli.doctor import EXIT_FAULTS, print_findings, service_user, user_option
from edgegw.config import Config
from edgegw.errors import ConfigError
from edgegw.keys import load_keys, plain_frames_accepted


@cli.group("config")
def config_group() -> None:
    """Check gateway config files."""


@config_group.command("check")
@config_argument
@click.option("--machine", is_flag=True,
              help="also check this machine against the config, fast and without network or radio: serial ports"
                   " there and openable, data directory writable, secrets readable by the service user only"
                   " (exit 1 with the fixes if not); the systemd unit runs this before each start")
@user_option
def config_check(file: Path, machine: bool, user_name: str | None) -> None:
    """List every problem in FILE (default: $EDGEGW_CONFIG, else /etc/edgegw/gateway.toml) at once
    (exit 2), or summarise it.

    With --machine, a config that is right but that this machine cannot run (no such port, a data
    directory or secret the service user may not use) exits 1, each fault with its fix;
    edgegw doctor checks more.

    Example: edgegw config check --machine /etc/edgegw/gateway.toml
    """
    config, _, warnings = check_config_or_exit(file, keys=True)
    _summarise(config, file, warnings)
    if machine:
        _check_machine(config, file, user_name)


def _summarise(config: Config, file: Path, warnings: list[str]) -> None:
    """What the config sets up, its warnings, what its uplinks' acknowledgements prove, its devices
    without a key, and the unsent items of uplinks it no longer has."""
    uplinks = ", ".join(f"{u.name} ({u.type})" for u in config.effective_uplinks())
    click.echo(f"{file}: OK: gateway {config.gateway_id}, {len(config.sources)} source(s), "
               f"{len(config.devices)} device(s), uplinks: {uplinks}, data in {config.data_dir}")
    for warning in warnings:
        click.echo(f"warning: {file}: {warning}", err=True)
    keyed = set(load_keys(config.keys_file)) if config.keys_file is not None else set()
    from edgegw.uplink import acknowledgement_note  # here: the command's start stays free of uplink imports

    for note in filter(None, map(acknowledgement_note, config.effective_uplinks())):
        click.echo(note)
    plain = plain_frames_accepted(config.devices, keyed, datetime.now(UTC))
    if plain:
        click.echo(f"not authenticated (anyone in radio range can send as them): {plain_list(plain)};"
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
        click.echo(f"warning: {exc}", err=True)
        return
    for name, n in orphans.items():
        if n:
            click.echo(f"warning: uplink {name!r} is not in this config, and {n} unsent item(s) in {db} wait for"
                       " it alone: the daemon will release them unsent. Keep its [[uplinks]] entry (same name)"
                       " until they are delivered.", err=True)


def _check_machine(config: Config, file: Path, user_name: str | None) -> None:
    from edgegw.doctor import faults, machine_findings

    user = service_user(user_name)
    findings = machine_findings(config, file, user)
    print_findings(findings, everything=False)
    if faults(findings):
        click.echo(f"{file}: this machine cannot run it as {user.name}: fix the faults above"
                   " (edgegw doctor -c FILE checks more)", err=True)
        sys.exit(EXIT_FAULTS)
    click.echo(f"{file}: machine OK for {user.name}: {sum(f.status == 'ok' for f in findings)} check(s) passed")


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
    config, _ = load_config_or_exit(config_path)
    device = _keyed_device(config, device_id)
    assert config.keys_file is not None
    if not replace and config.keys_file.exists() and device_id in _keys(config.keys_file):
        raise click.ClickException(f"{device_id} already has a key in {config.keys_file}; --replace makes a"
                                   " new one (and the sensor must then be given it)")
    _give_new_key(config, device)
    click.echo("Reload the gateway (systemctl reload edgegw) for it to take the key.")


def _keys(path: Path) -> dict[str, bytes]:
    try:
        return load_keys(path)
    except ConfigError as exc:
        raise _unreadable(exc) from None


def _unreadable(exc: ConfigError) -> click.ClickException:
    return click.ClickException("; ".join(f"{exc.path}: {p}" for p in exc.problems))


def _give_new_key(config: Config, device) -> None:
    """Write a new key for ``device`` into the keys file and print what the sensor's firmware needs."""
    from edgegw.keys import new_key

    device_id = device.id
    assert config.keys_file is not None
    try:
        key = new_key(config.keys_file, device_id)
    except ConfigError as exc:
        raise _unreadable(exc) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {config.keys_file}: {exc.strerror}") from None
    click.echo(f"{device_id}: key written to {config.keys_file} (readable by its owner only)\n"
               f"  key        {key.hex()}\n"
               f"  device id  {device.address} (its radio address: 4 bytes, big-endian, in every frame)\n"
               "  counter    start at 1, add 1 before every frame, keep it in non-volatile memory, never reuse one\n"
               f"  firmware   firmware/edgegw_frame.c: edgegw_seal(key, {device.address}, counter, payload, len,"
               " out, sizeof out)")


@keys_group.command("reset-counter")
@click.argument("device_id")
@config_option
def keys_reset_counter(device_id: str, config_path: Path) -> None:
    """Accept DEVICE_ID's frame counter from the start again, under a new key: for a sensor whose
    counter restarted (a new battery without non-volatile memory, a reflashed board). Run on site,
    with the daemon stopped; nothing sent over the air can do this. The sensor must be given the new
    key: under the old one, every frame recorded from it before would be accepted again.

    Example: systemctl stop edgegw; edgegw keys reset-counter trap-01 -c /etc/edgegw/gateway.toml
    """
    from edgegw.running import AlreadyRunning, DataDirLock
    from edgegw.store import Store
    from edgegw.store.connection import db_path

    config, _ = load_config_or_exit(config_path)
    device = _keyed_device(config, device_id)
    try:
        lock = DataDirLock(config.data_dir, __version__)  # also keeps a daemon from starting meanwhile
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}. Stop it first: systemctl stop edgegw") from None
    try:
        # The key first: a counter started again under the old key would let recorded frames back in.
        _give_new_key(config, device)
        store = Store(db_path(config.data_dir))
        forgotten = store.reset_counter(device_id)
        store.close()
    finally:
        lock.release()
    if forgotten is None:
        click.echo(f"{device_id}: no authenticated frame accepted yet; the counter starts with the new key")
    else:
        click.echo(f"{device_id}: counter {forgotten} forgotten; the next frame sealed with the new key starts it"
                   " again")


