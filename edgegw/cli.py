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
from edgegw.errors import ConfigError, DecodeError, DriverLoadError, StoreError
from edgegw.keys import load_keys
from edgegw.uplink import acknowledgement_level, acknowledgement_note

EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3  # systemd/edgegw.service: RestartPreventExitStatus, as for a config error
EXIT_DATA_DIR = 4  # the data directory cannot be written: also not restarted (see edgegw.dbfile)
EXIT_DATABASE_DAMAGED = 5  # restarted by systemd: the next start sets the damaged database aside

config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="gateway config file (TOML), e.g. configs/demo.toml",
)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def _load(path: Path, keys: bool = False) -> tuple[Config, DriverRegistry]:
    # keys: only what uses them (run, config check) needs the keys file, which others may not read.
    try:
        return load_config(path, keys)
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
    config, drivers = _load(config_path, keys=True)
    from edgegw import daemon, log

    from edgegw.dbfile import DatabaseDamaged, DataDirUnusable
    from edgegw.running import AlreadyRunning

    log.configure(config.log.level, config.log.format)
    try:
        daemon.run(config, drivers)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except AlreadyRunning as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_ALREADY_RUNNING)
    except DataDirUnusable as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_DATA_DIR)
    except DatabaseDamaged as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_DATABASE_DAMAGED)


@cli.command()
@config_option
@json_option
def status(config_path: Path, as_json: bool) -> None:
    """Show devices, radio sources, outbox and uplinks of a (running) gateway.

    Example: edgegw status -c configs/demo.toml --json
    """
    config, _ = _load(config_path)
    from edgegw.daemon import db_path
    from edgegw.running import daemon_state
    from edgegw.store import status as read_status

    path = db_path(config)
    if not path.exists():
        raise click.ClickException(f"no database at {path}: has `edgegw run -c {config_path}` run yet?")
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
        st["not_authenticated"] = [d.id for d in config.devices if d.id not in keyed]
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


def _format_daemon(now: float, d: dict) -> list[str]:
    from edgegw.running import HEARTBEAT_EVERY
    if d["running"] is None:
        return ["daemon   cannot tell whether it runs (the lock file is not readable)"]
    if not d["running"]:
        last = f" (last: pid {d['pid']}, started {_ago(now, d['started_at'])})" if d.get("pid") else ""
        return [f"daemon   NOT RUNNING{last}: the states below are as it last recorded them"]
    beat = d.get("heartbeat") or {}
    age = now - beat["at"] if "at" in beat else None
    out = [f"daemon   running: pid {d['pid']}, version {d['version']}, up {_ago(now, d['started_at'])[:-4]},"
           f" heartbeat {_ago(now, beat.get('at'))}"
           + (" (LATE: the daemon may hang)" if age is None or age > 3 * HEARTBEAT_EVERY else "")]
    for name, stage in beat.get("stages", {}).items():
        if stage["state"] != "alive" or stage["restarts"]:
            out.append(f"  stage {name}: {stage['state']}, {stage['restarts']} restart(s)"
                       + (f", last error: {stage['last_error']}" if stage["last_error"] else ""))
    if full := beat.get("disk_full"):
        out.append(f"  DISK FULL since {_ago(now, full['since'])}: {full['events']} events wait for room to commit"
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
        out.append(f"  last FULL {_ago(now, last['since'])}: {last['events']} events waited"
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
        out.append(f"{head}{d['part']} found {_ago(now, d['at'])}{lost}; kept as {d['kept_as']}: {d['problem']}")
    out += _format_open(now, st["open_alarms"])  # what a maintainer must act on comes first
    out += _format_disk(now, disk)
    out += [f"outbox   {ob['pending']} pending ({ob['in_flight']} in flight), {ob['delivered']} delivered, oldest pending "
            f"{_ago(now, ob['oldest_pending_at']) if ob['oldest_pending_at'] else '-'}",
            f"uplinks (deliveries counted every {COUNTS_EVERY:g} s)"]
    for u in st["uplinks"]:
        out.append(f"  {u['name']:<12} {u['state']:<10} {u['pending']} pending ({u['in_flight']} in flight), "
                   f"{u['items']} delivered in "
                   f"{u['batches']} batches, last ack {_ago(now, u['last_ack_at'])} ({u.get('ack', '?')}-level)"
                   f"  {u['detail'] or ''}")
    out.append(f"sources (frames counted every {COUNTS_EVERY:g} s)")
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
    if st["not_authenticated"] is None:
        out.append("not authenticated: unknown (the keys file cannot be read by this user)")
    elif st["not_authenticated"]:
        out.append("not authenticated: " + ", ".join(st["not_authenticated"])
                   + " (no key: anyone in radio range can send as them; see edgegw keys new)")
    if st["never_heard"]:
        out.append("never heard: " + ", ".join(st["never_heard"]) + " (configured, no frame yet: range, address, radio settings?)")
    for u in st["unknown_addresses"]:
        out.append(f"unknown  address {u['address']} on {u['source']}: {u['frames']} frames, last {_ago(now, u['last_at'])}"
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


# -- outbox -----------------------------------------------------------------------------------------

class _OutboxGroup(click.Group):
    """Turns the library's OutboxError (no database, unknown id, ...) into a one-line error and exit 1."""

    def invoke(self, ctx: click.Context):
        from edgegw.errors import OutboxError

        try:
            return super().invoke(ctx)
        except OutboxError as exc:
            raise click.ClickException(str(exc)) from None


@cli.group("outbox", cls=_OutboxGroup)
def outbox_group() -> None:
    """Inspect the outbox, retry parked items, purge delivered ones (safe while the daemon runs)."""


def _outbox(config_path: Path):
    config, _ = _load(config_path)
    from edgegw.daemon import db_path
    from edgegw.outbox import Outbox

    path = db_path(config)
    if not path.exists():
        raise click.ClickException(f"no database at {path}: has `edgegw run -c {config_path}` run yet?")
    return Outbox(path, synchronous=config.store.synchronous)


def _as_json(value) -> str:
    from dataclasses import asdict

    data = [asdict(v) for v in value] if isinstance(value, list) else asdict(value)
    return json.dumps(data, indent=2, ensure_ascii=False)


def _utc(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t))


def _size(n: int) -> str:
    return f"{n} B" if n < 1000 else f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB" if n < 1e9 \
        else f"{n / 1e9:.2f} GB"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    return [("  ".join(str(c).ljust(w) for c, w in zip(r, widths))).rstrip() for r in [head, *rows]]


kind_option = click.option("--kind", type=click.Choice(["reading", "alarm", "health"]), help="only items of this kind")
device_option = click.option("--device", help="only items of this device id")


@outbox_group.command("stats")
@config_option
@json_option
def outbox_stats(config_path: Path, as_json: bool) -> None:
    """Count pending, delivered and parked items, per uplink and per kind; sizes on disk.

    Example: edgegw outbox stats -c /etc/edgegw/gateway.toml
    """
    st = _outbox(config_path).stats()
    if as_json:
        click.echo(_as_json(st))
        return
    oldest = _ago(st.now, st.oldest_pending_at) if st.oldest_pending_at is not None else "-"
    out = [f"outbox   {st.pending} pending, {st.delivered} delivered, {st.parked} parked; "
           f"oldest pending accepted {oldest}", "uplinks"]
    for name, u in st.by_uplink.items():
        if not u.configured:
            out.append(f"  {name:<12} {'(removed)':<10} {u.parked} parked (no longer configured)")
            continue
        first = f" (oldest {_ago(st.now, u.oldest_pending_at)})" if u.oldest_pending_at is not None else ""
        out.append(f"  {name:<12} {u.state or '-':<10} {u.pending} pending{first}, {u.parked} parked")
    out.append("kinds")
    out += [f"  {kind:<12} {k.pending} pending, {k.delivered} delivered" for kind, k in st.by_kind.items()]
    d = st.disk
    out.append(f"disk     database {_size(d.database_bytes)}, WAL {_size(d.wal_bytes)}, "
               f"{_size(d.free_bytes)} free inside the database")
    click.echo("\n".join(out))


@outbox_group.command("list")
@config_option
@click.option("--pending", "state", flag_value="pending", help="pending items, in the order they are sent")
@click.option("--delivered", "state", flag_value="delivered", help="delivered items, the latest first")
@click.option("--parked", "state", flag_value="parked", help="items an uplink refused, with its error")
@kind_option
@device_option
@click.option("--uplink", help="only items pending for (or parked by) this uplink")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0), help="at most N rows; 0 = all")
@json_option
def outbox_list(config_path: Path, state: str | None, kind: str | None, device: str | None, uplink: str | None,
                limit: int, as_json: bool) -> None:
    """List outbox items: pending in send order (priority, then age), otherwise the newest first.

    Example: edgegw outbox list -c /etc/edgegw/gateway.toml --pending --kind alarm
    """
    ob = _outbox(config_path)
    if state == "parked":
        parked = ob.parked(kind=kind, device=device, uplink=uplink, limit=limit or None)
        if as_json:
            click.echo(_as_json(parked))
            return
        rows = [[str(p.seq) if p.seq is not None else "purged", p.item_id, p.kind, p.device_id or "-", p.uplink,
                 _utc(p.parked_at), (p.error.splitlines() or [""])[0][:100]] for p in parked]
        lines = _table(["SEQ", "ITEM ID", "KIND", "DEVICE", "UPLINK", "PARKED", "ERROR"], rows)
    else:
        items = ob.items(state=state, kind=kind, device=device, uplink=uplink,  # type: ignore[arg-type]
                         limit=limit or None)
        if as_json:
            click.echo(_as_json(items))
            return
        rows = [[str(i.seq), i.item_id, i.kind, i.device_id or "-", _utc(i.observed_at), _utc(i.accepted_at),
                 (("pending: " + ",".join(i.pending)) if i.pending else f"delivered {_utc(i.delivered_at)}")
                 + (f"  parked: {','.join(i.parked)}" if i.parked else "")] for i in items]
        lines = _table(["SEQ", "ITEM ID", "KIND", "DEVICE", "OBSERVED", "ACCEPTED", "STATE"], rows)
    if not rows:
        click.echo("no items")
        return
    click.echo("\n".join(lines))
    if limit and len(rows) == limit:
        click.echo(f"(the first {limit}; --limit 0 lists all)")


@outbox_group.command("show")
@config_option
@json_option
@click.argument("ident", metavar="ID")
def outbox_show(config_path: Path, as_json: bool, ident: str) -> None:
    """Show one item (by item id or seq): its JSON, and its delivery state per uplink.

    Example: edgegw outbox show -c /etc/edgegw/gateway.toml river-03:0:4711
    """
    item = _outbox(config_path).show(ident)
    if as_json:
        click.echo(_as_json(item))
        return
    where = f"seq {item.seq}" if item.in_outbox else "outbox row purged, kept as parked"
    out = [f"item       {item.item_id} ({where}, {item.kind}, device {item.device_id or '-'})"]
    if item.in_outbox:
        out.append(f"observed   {_utc(item.observed_at)}  accepted {_utc(item.accepted_at)}  "
                   f"delivered {_utc(item.delivered_at)}")
    out.append("uplinks")
    for name, d in item.uplinks.items():
        state = {"pending": "pending", "done": "done (acknowledged, or the uplink came later)"}.get(d.state)
        out.append(f"  {name:<12} " + (state or f"parked {_utc(d.parked_at)}: {d.error}"))
    out.append(json.dumps(item.body, indent=2, ensure_ascii=False))
    click.echo("\n".join(out))


@outbox_group.command("retry")
@config_option
@click.option("--all-parked", is_flag=True, help="every parked item (of --uplink)")
@click.option("--uplink", help="only for this uplink (default: every uplink that parked the item)")
@click.argument("ids", nargs=-1, metavar="[ID]...")
def outbox_retry(config_path: Path, all_parked: bool, uplink: str | None, ids: tuple[str, ...]) -> None:
    """Put parked items (by item id or seq) back in the queue, once the platform accepts them again.

    Example: edgegw outbox retry -c /etc/edgegw/gateway.toml --all-parked --uplink orion
    """
    if bool(ids) == all_parked:
        raise click.UsageError("name the items to retry (ID...) or give --all-parked, not both")
    done = _outbox(config_path).retry(ids, all_parked=all_parked, uplink=uplink)
    for r in done.requeued:
        note = "; its outbox row had been purged: rebuilt from the parked copy" if r.reinserted else ""
        click.echo(f"re-queued {r.item_id} for {r.uplink} (seq {r.seq}{note})")
    for name, n in done.not_configured.items():
        click.echo(f"left {n} parked for {name}: that uplink is no longer configured")
    click.echo(f"{len(done.requeued)} item(s) back in the queue; a running gateway sends them within seconds")


def _older_than(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from edgegw.outbox import parse_duration

    try:
        return None if value is None else parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@outbox_group.command("purge")
@config_option
@click.option("--delivered", is_flag=True, help="delete delivered items (pending ones are never purged)")
@click.option("--older-than", callback=_older_than, metavar="DURATION",
              help="only those delivered longer ago than this, e.g. 7d, 12h (default: all delivered)")
def outbox_purge(config_path: Path, delivered: bool, older_than: float | None) -> None:
    """Delete delivered items, and closed alarms, in short transactions with a progress bar.

    Example: edgegw outbox purge -c /etc/edgegw/gateway.toml --delivered --older-than 7d
    """
    if not delivered:
        raise click.UsageError("say what to purge: --delivered (pending items are never purged)")
    purge = _outbox(config_path).purge_delivered(older_than)
    before = f"delivered before {_utc(purge.cutoff)}" if older_than is not None else "all delivered"
    if purge.total == 0:
        click.echo("nothing to purge: no " + (f"items {before}" if older_than is not None else "delivered items"))
        return
    with click.progressbar(length=purge.total, label="purging", file=sys.stderr, show_pos=True) as bar:
        for n in purge:
            bar.update(n)
    b, a = purge.before, purge.after or purge.before
    click.echo(f"purged {purge.deleted_items} delivered item(s) and {purge.deleted_alarms} closed alarm(s) ({before})")
    click.echo(f"on disk: database {_size(b.database_bytes)} + WAL {_size(b.wal_bytes)} before, "
               f"{_size(a.database_bytes)} + WAL {_size(a.wal_bytes)} after; {_size(a.free_bytes)} free inside "
               "the database is reused by new items (the file shrinks only by VACUUM, with the daemon stopped)")


@cli.group("config")
def config_group() -> None:
    """Check gateway config files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """List every problem in FILE at once (exit 2), or summarise it.

    Example: edgegw config check /etc/edgegw/gateway.toml
    """
    config, drivers = _load(file, keys=True)
    uplinks = ", ".join(f"{u.name} ({u.type})" for u in config.effective_uplinks())
    click.echo(f"{file}: OK: gateway {config.gateway_id}, {len(config.sources)} source(s), "
               f"{len(config.devices)} device(s), uplinks: {uplinks}, data in {config.data_dir}")
    keyed = set(load_keys(config.keys_file)) if config.keys_file is not None else set()
    for note in filter(None, map(acknowledgement_note, config.effective_uplinks())):
        click.echo(note)
    plain = [d.id for d in config.devices if d.id not in keyed]
    if plain:
        click.echo(f"not authenticated (anyone in radio range can send as them): {', '.join(plain)};"
                   " see edgegw keys new")
    from edgegw.daemon import db_path
    from edgegw.errors import OutboxError
    from edgegw.outbox import Outbox

    db = db_path(config)
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

    config, _ = _load(config_path)
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
    from edgegw.daemon import db_path
    from edgegw.running import AlreadyRunning, DataDirLock
    from edgegw.store import Store

    config, _ = _load(config_path)
    _keyed_device(config, device_id)
    try:
        lock = DataDirLock(config.data_dir, __version__)  # also keeps a daemon from starting meanwhile
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}. Stop it first: systemctl stop edgegw") from None
    try:
        store = Store(db_path(config))
        forgotten = store.reset_counter(device_id)
        store.close()
    finally:
        lock.release()
    if forgotten is None:
        click.echo(f"{device_id}: no authenticated frame accepted yet; nothing to reset")
    else:
        click.echo(f"{device_id}: counter {forgotten} forgotten; the next authenticated frame starts it again")


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

