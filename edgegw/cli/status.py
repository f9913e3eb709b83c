"""``edgegw status`` and ``edgegw alarms``: what a running (or stopped) gateway says of itself."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from edgegw.cli.common import (
    cli,
    config_option,
    json_option,
    load_config_or_exit,
    plain_list,
    reading_database,
    shown,
)
from edgegw.errors import ConfigError
from edgegw.keys import load_keys, plain_frames_accepted


@cli.command()
@config_option
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """Show devices, radio sources, outbox and uplinks of a (running) gateway.

    Example: edgegw status -c configs/demo.toml --json
    """
    config, _ = load_config_or_exit(config_path)
    from edgegw.running import daemon_state
    from edgegw.store import status as read_status
    from edgegw.store.connection import db_path
    from edgegw.uplink import acknowledgement_level

    path = db_path(config.data_dir)
    if not path.exists():
        raise click.ClickException(f"no database at {path}: has `edgegw run -c {config_path}` run yet?")
    with reading_database(path):
        st = read_status(path)
    st["gateway"] = config.gateway_id
    levels = {u.name: acknowledgement_level(u.type) for u in config.effective_uplinks()}
    for u in st["uplinks"]:  # how far an acknowledged item got: an MQTT agent's PUBACK is only the broker's
        u["ack"] = levels.get(u["name"], "unknown")
    st["daemon"] = daemon_state(config.data_dir)
    if st["daemon"]["running"] is False:  # what the database says was up is not any more
        for part in (*st["uplinks"], *st["sources"]):
            part["recorded_state"], part["state"] = part["state"], "not running"
    heard = {d["id"] for d in st["devices"]}
    st["never_heard"] = [d.id for d in config.devices if d.id not in heard]
    try:
        keyed = set(load_keys(config.keys_file)) if config.keys_file is not None else set()
        # id -> why its plain frames are taken: no key, require_auth = false, a rollout window
        st["not_authenticated"] = plain_frames_accepted(config.devices, keyed, datetime.now(UTC))
    except ConfigError:  # not readable by this user, as it should be for most: run and config check say more
        st["not_authenticated"] = None
    disk = st["disk"]
    disk.update(max_bytes=config.store.max_bytes, min_free=config.store.min_free)
    beat = st["daemon"].get("heartbeat") or {} if st["daemon"]["running"] else {}
    disk["state"] = ("full" if beat.get("disk_full") else
                     "low" if disk["free_bytes"] + disk["reserve_bytes"] < disk["min_free"] or not disk["reserve_bytes"]
                     else "ok")
    if as_json:
        click.echo(json.dumps(st, indent=2))
    else:
        click.echo(shown(_format_status(st)))


def ago(now: float, t: float | None) -> str:
    if not t:  # a device known only by its rejected frames has last_seen 0
        return "never"
    s = max(0.0, now - t)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


def _format_alarm(now: float, a: dict) -> str:
    late = " (late)" if a["late"] else ""
    return f"  {a['severity']:<13} {a['kind']:<18} {a['device_id']:<20} {ago(now, a['raised_at']):>10}{late}  {a['message']}"


def _format_open(now: float, open_alarms: list[dict]) -> list[str]:
    head = f"open alarms ({len(open_alarms)})" if open_alarms else "open alarms: none"
    return [head] + [_format_alarm(now, a) for a in open_alarms]


def _format_daemon(now: float, d: dict) -> list[str]:
    from edgegw.running import HEARTBEAT_EVERY
    if d["running"] is None:
        return ["daemon   cannot tell whether it runs (the lock file is not readable)"]
    if not d["running"]:
        last = f" (last: pid {d['pid']}, started {ago(now, d['started_at'])})" if d.get("pid") else ""
        return [f"daemon   NOT RUNNING{last}: the states below are as it last recorded them"]
    beat = d.get("heartbeat") or {}
    # A daemon that just started has not beaten yet (its first beat follows its first second).
    age = now - (beat["at"] if "at" in beat else d["started_at"])
    out = [f"daemon   running: pid {d['pid']}, version {d['version']}, up {ago(now, d['started_at'])[:-4]},"
           f" heartbeat {ago(now, beat['at']) if 'at' in beat else 'none yet'}"
           + (" (LATE: the daemon may hang)" if age > 3 * HEARTBEAT_EVERY else "")]
    for name, stage in beat.get("stages", {}).items():
        if stage["state"] != "alive" or stage["restarts"]:
            out.append(f"  stage {name}: {stage['state']}, {stage['restarts']} restart(s)"
                       + (f", last error: {stage['last_error']}" if stage["last_error"] else ""))
    if clock := beat.get("clock"):
        left = clock.get("held_for_s", 0)
        out.append("  CLOCK not set by NTP yet: " + (
            f"this boot's readings are held, {f'{left} s' if left < 120 else f'{left / 60:.0f} min'} more at most"
            " ([clock] await_sync)" if "held_for_s" in clock else "readings are sent marked unsynced"))
    if full := beat.get("disk_full"):
        out.append(f"  DISK FULL since {ago(now, full['since'])}: {full['events']} events wait for room to commit"
                   f" ({full['tries']} tries)")
    return out


def _mb(n: int) -> str:
    return f"{n / 1e3:,.0f} kB" if n < 1e6 else f"{n / 1e6:,.1f} MB"


def _format_disk(now: float, disk: dict) -> list[str]:
    head = {"full": "disk     FULL: commits wait for room;", "ok": "disk    ",
            "low": "disk     LOW: the disk cap and full commits drop the oldest readings (never alarms) to keep room"
                   " inside the database;"}[disk["state"]]
    reserve = (f"reserve {_mb(disk['reserve_bytes'])}" if disk["reserve_bytes"] else
               "no reserve (given back when the disk filled, made again when there is room)")
    out = [f"{head} database {_mb(disk['db_bytes'])} ({_mb(disk['reusable_bytes'])} of it reusable) + WAL"
           f" {_mb(disk['wal_bytes'])} of {_mb(disk['max_bytes'])}; {_mb(disk['free_bytes'])} free on its filesystem,"
           f" {_mb(disk['min_free'])} kept free; {reserve}"]
    if last := disk.get("last_full"):
        freed = ", ".join(f"{k} {v}" for k, v in last["freed"].items()) or "nothing"
        out.append(f"  last FULL {ago(now, last['since'])}: {last['events']} events waited"
                   f" {last['until'] - last['since']:.1f} s ({last['tries']} tries); made room: {freed}")
    return out


def _format_status(st: dict) -> str:
    from edgegw.store import COUNTS_EVERY
    now, ob, disk = st["now"], st["outbox"], st["disk"]
    out = [f"gateway {st['gateway']}"]
    out += _format_daemon(now, st["daemon"])
    for d in st.get("damage", []):  # before the alarms: what was lost at start is the first thing to know
        lost = (" (a fresh one was started)" if d["part"] == "database" else
                f": {d['commits']} committed transactions, {d['frames']} frames dropped" if d["lost"] else
                ": an unfinished transaction dropped (a crash during a commit)")
        head = "DAMAGED  " if d["lost"] else "note     "
        out.append(f"{head}{d['part']} found {ago(now, d['at'])}{lost}; kept as {d['kept_as']}: {d['problem']}")
    out += _format_open(now, st["open_alarms"])  # what a maintainer must act on comes first
    out += _format_disk(now, disk)
    parked = f", {ob['parked']} parked (refused for good: edgegw outbox list --parked)" if ob.get("parked") else ""
    out += [f"outbox   {ob['pending']} pending ({ob['in_flight']} in flight), {ob['delivered']} delivered{parked}, oldest pending "
            f"{ago(now, ob['oldest_pending_at']) if ob['oldest_pending_at'] else '-'}",
            f"uplinks (deliveries counted every {COUNTS_EVERY:g} s)"]
    for u in st["uplinks"]:
        out.append(f"  {u['name']:<12} {u['state']:<10} {u['pending']} pending ({u['in_flight']} in flight), "
                   f"{u['items']} delivered in "
                   f"{u['batches']} batches, last ack {ago(now, u['last_ack_at'])} ({u.get('ack', '?')}-level)"
                   f"  {u['detail'] or ''}")
    out.append(f"sources (frames counted every {COUNTS_EVERY:g} s)")
    for s in st["sources"]:
        out.append(f"  {s['name']:<12} {s['state'] or '-':<10} {s['frames']} frames, last "
                   f"{ago(now, s['last_frame_at'])}  {s['detail'] or ''}")
    out.append(f"devices\n  {'ID':<20} {'ADDR':>5} {'DRIVER':<12} {'LAST SEEN':>10} {'RSSI':>5} {'SNR':>5}"
               f" {'READINGS':>8} {'DUP':>5} {'REJ':>5}")
    for d in st["devices"]:
        out.append(f"  {d['id']:<20} {d['address']:>5} {d['driver']:<12} {ago(now, d['last_seen']):>10}"
                   f" {d['last_rssi'] if d['last_rssi'] is not None else '-':>5}"
                   f" {d['last_snr'] if d['last_snr'] is not None else '-':>5}"
                   f" {d['readings']:>8} {d['duplicates']:>5} {d['rejects']:>5}")
    if st["not_authenticated"] is None:
        out.append("not authenticated: unknown (the keys file cannot be read by this user)")
    elif st["not_authenticated"]:
        out.append("not authenticated: " + plain_list(st["not_authenticated"])
                   + " (no key: anyone in radio range can send as them; see edgegw keys new)")
    if st["never_heard"]:
        out.append("never heard: " + ", ".join(st["never_heard"]) + " (configured, no frame yet: range, address, radio settings?)")
    for u in st["unknown_addresses"]:
        out.append(f"unknown  address {u['address']} on {u['source']}: {u['frames']} frames, last {ago(now, u['last_at'])}"
                   " (no device configured there)")
    by_reason = st["rejects"]["by_reason"]
    if st["parked"]["by_uplink"]:
        out.append("parked   " + ", ".join(f"{n} for {u}" for u, n in st["parked"]["by_uplink"].items())
                   + " (refused by the platform: edgegw outbox list --parked)")
    if st.get("dropped"):
        out.append("dropped  " + ", ".join(f"{n} {k}s" for k, n in st["dropped"].items()) + " (disk cap reached)")
    if st.get("released"):
        out.append("released " + ", ".join(f"{n} {k}s" for k, n in st["released"].items())
                   + " unsent (the only uplink they waited for left the config)")
    out.append("rejects  " + (", ".join(f"{k} {v}" for k, v in by_reason.items()) if by_reason else "none"))
    return "\n".join(out)


@cli.command("alarms")
@config_option
@json_option
@click.option("--recent", default=20, show_default=True, type=click.IntRange(0, 1_000_000),
              help="how many recent alarms (open or closed) to list")
def alarms_command(config_path: Path, as_json: bool, recent: int) -> None:
    """List open alarms, then the most recent ones (a running gateway's database is read, not locked).

    Example: edgegw alarms -c configs/demo.toml --json
    """
    config, _ = load_config_or_exit(config_path)
    from edgegw.store import alarms
    from edgegw.store.connection import db_path

    path = db_path(config.data_dir)
    if not path.exists():
        raise click.ClickException(f"no database at {path}: has `edgegw run -c {config_path}` run yet?")
    with reading_database(path):
        found = alarms(path, recent)
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    now = time.time()
    click.echo(shown("\n".join(_format_open(now, found["open"]))))
    click.echo(f"recent alarms ({len(found['recent'])})")
    for a in found["recent"]:
        closed = f"  [closed by {a['closed_by']}]" if a["closed_by"] else ""
        click.echo(shown(_format_alarm(now, a) + closed))


# -- outbox -----------------------------------------------------------------------------------------

