"""The ``edgegw`` command: thin over the library (parse options, call one function, print)."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import click

from edgegw import __version__
from edgegw.config import Config, load_config
from edgegw.drivers import DriverRegistry, load_drivers
from edgegw.errors import ConfigError, DecodeError, DriverLoadError

EXIT_CONFIG = 2

config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="gateway config file (TOML), e.g. configs/demo.toml",
)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def _load(path: Path) -> tuple[Config, DriverRegistry]:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"{len(exc.problems)} problem(s) in {exc.path}:", err=True)
        for p in exc.problems:
            click.echo(f"  {exc.path}: {p}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
@click.version_option(__version__, prog_name="edgegw")
def cli() -> None:
    """edgegw: field gateway for LPWA sensors (radio -> SQLite outbox -> platform)."""


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Run the gateway daemon until SIGTERM or Ctrl-C.

    Example: edgegw run -c configs/demo.toml
    """
    config, drivers = _load(config_path)
    from edgegw import daemon, log

    log.configure(config.log.level, config.log.format)
    daemon.run(config, drivers)


@cli.command()
@config_option
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """Show devices, radio sources, outbox and uplinks of a (running) gateway.

    Example: edgegw status -c configs/demo.toml --json
    """
    config, _ = _load(config_path)
    from edgegw.daemon import db_path
    from edgegw.store import status as read_status

    path = db_path(config)
    if not path.exists():
        raise click.ClickException(f"no database at {path}: has `edgegw run -c {config_path}` run yet?")
    st = read_status(path)
    st["gateway"] = config.gateway_id
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        click.echo(_format_status(st))


def _ago(now: float, t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0.0, now - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _format_alarm(now: float, a: dict) -> str:
    late = " (late)" if a["late"] else ""
    return f"  {a['severity']:<13} {a['kind']:<18} {a['device_id']:<20} {_ago(now, a['raised_at']):>10}{late}  {a['message']}"


def _format_open(now: float, open_alarms: list[dict]) -> list[str]:
    head = f"open alarms ({len(open_alarms)})" if open_alarms else "open alarms: none"
    return [head] + [_format_alarm(now, a) for a in open_alarms]


def _format_status(st: dict) -> str:
    now, ob = st["now"], st["outbox"]
    out = [f"gateway {st['gateway']}"]
    out += _format_open(now, st["open_alarms"])  # what a maintainer must act on comes first
    out += [f"outbox   {ob['pending']} pending, {ob['delivered']} delivered, oldest pending "
            f"{_ago(now, ob['oldest_pending_at']) if ob['oldest_pending_at'] else '-'}", "uplinks"]
    for u in st["uplinks"]:
        out.append(f"  {u['name']:<12} {u['state']:<10} {u['pending']} pending, {u['items']} delivered in "
                   f"{u['batches']} batches, last ack {_ago(now, u['last_ack_at'])}  {u['detail'] or ''}")
    out.append("sources")
    for s in st["sources"]:
        out.append(f"  {s['name']:<12} {s['state'] or '-':<10} {s['frames']} frames, last "
                   f"{_ago(now, s['last_frame_at'])}  {s['detail'] or ''}")
    out.append(f"devices\n  {'ID':<20} {'ADDR':>5} {'DRIVER':<12} {'LAST SEEN':>10} {'RSSI':>5} {'SNR':>5}"
               f" {'READINGS':>8} {'DUP':>5} {'REJ':>5}")
    for d in st["devices"]:
        out.append(f"  {d['id']:<20} {d['address']:>5} {d['driver']:<12} {_ago(now, d['last_seen']):>10}"
                   f" {d['last_rssi'] if d['last_rssi'] is not None else '-':>5}"
                   f" {d['last_snr'] if d['last_snr'] is not None else '-':>5}"
                   f" {d['readings']:>8} {d['duplicates']:>5} {d['rejects']:>5}")
    by_reason = st["rejects"]["by_reason"]
    if st.get("dropped"):
        out.append("dropped  " + ", ".join(f"{n} {k}s" for k, n in st["dropped"].items()) + " (disk cap reached)")
    out.append("rejects  " + (", ".join(f"{k} {v}" for k, v in by_reason.items()) if by_reason else "none"))
    return "\n".join(out)


@cli.command("alarms")
@config_option
@json_option
@click.option("--recent", default=20, show_default=True, help="how many recent alarms (open or closed) to list")
def alarms_command(config_path: Path, as_json: bool, recent: int) -> None:
    """List open alarms, then the most recent ones (a running gateway's database is read, not locked).

    Example: edgegw alarms -c configs/demo.toml --json
    """
    config, _ = _load(config_path)
    from edgegw.daemon import db_path
    from edgegw.store import alarms

    path = db_path(config)
    if not path.exists():
        raise click.ClickException(f"no database at {path}: has `edgegw run -c {config_path}` run yet?")
    found = alarms(path, recent)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    now = time.time()
    click.echo("\n".join(_format_open(now, found["open"])))
    click.echo(f"recent alarms ({len(found['recent'])})")
    for a in found["recent"]:
        closed = f"  [closed by {a['closed_by']}]" if a["closed_by"] else ""
        click.echo(_format_alarm(now, a) + closed)


@cli.group("config")
def config_group() -> None:
    """Check gateway config files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """List every problem in FILE at once (exit 2), or summarise it.

    Example: edgegw config check /etc/edgegw/gateway.toml
    """
    config, drivers = _load(file)
    uplinks = ", ".join(f"{u.name} ({u.type})" for u in config.effective_uplinks())
    click.echo(f"{file}: OK: gateway {config.gateway_id}, {len(config.sources)} source(s), "
               f"{len(config.devices)} device(s), uplinks: {uplinks}, data in {config.data_dir}")


@cli.command()
@click.option("--field", "field_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="virtual field description (TOML), e.g. configs/demo-field.toml")
@click.option("--link", required=True, type=click.Path(path_type=Path),
              help="path of the symlink to the emulated serial port, e.g. /tmp/rylr0")
@click.option("-c", "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="gateway config, for its drivers_dir and layouts")
@click.option("--speed", default=1.0, show_default=True, help="time acceleration of the field")
@click.option("--seed", type=int, help="random seed, for a repeatable field")
@click.option("--duration", type=float, help="stop after this many seconds")
def simulate(field_file: Path, link: Path, config_path: Path | None, speed: float, seed: int | None,
             duration: float | None) -> None:
    """Emulate a REYAX RYLR module on a pseudo-terminal, fed by a virtual field of sensors.

    Point a gateway's source at the link (port = "/tmp/rylr0"). Faults to inject (garbage,
    truncated lines, bad hex, wrong lengths, duplicates) are set in the field file's [faults].

    Example: edgegw simulate --field configs/demo-field.toml --link /tmp/rylr0
    """
    from edgegw.radio.emulator import RylrEmulator
    from edgegw.radio.field import VirtualField, load_field

    drivers = _drivers(config_path)
    try:
        spec = load_field(field_file)
        emulator = RylrEmulator(link)
        vfield = VirtualField(spec, drivers, emulator, seed=seed)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    emulator.plug()
    click.echo(f"emulated RYLR module at {link}; Ctrl-C to stop", err=True)
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


def _drivers(config_path: Path | None) -> DriverRegistry:
    """The config's drivers (bundled, drivers_dir, layouts), or the bundled ones without a config."""
    if config_path is not None:
        return _load(config_path)[1]
    try:
        return load_drivers()
    except DriverLoadError as exc:
        raise click.ClickException(str(exc)) from None


@cli.group("drivers")
def drivers_group() -> None:
    """Device drivers."""


@drivers_group.command("list")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also list the config's drivers_dir and layouts")
@json_option
def drivers_list(config_path: Path | None, as_json: bool) -> None:
    """List the drivers this gateway can use, with their values, units and ranges.

    Example: edgegw drivers list -c configs/demo.toml
    """
    registry = _drivers(config_path)
    rows = [
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
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="config with drivers_dir/layouts")
@click.argument("payload_hex", nargs=-1, required=True)
def decode(driver: str, config_path: Path | None, payload_hex: tuple[str, ...]) -> None:
    """Decode one payload (hex, spaces allowed) with a driver and print the values as JSON.

    Example: edgegw decode --driver water_level 01 09C4 05AA 0E74 0007
    """
    registry = _drivers(config_path)
    if driver not in registry:
        raise click.ClickException(f"unknown driver {driver!r}; known: {', '.join(registry.names())}")
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


def main() -> None:
    cli()

