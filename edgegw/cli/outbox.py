"""``edgegw outbox``: the maintainer's view of the outbox, and retry, purge, export (see edgegw.outbox)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from edgegw.cli.common import cli, config_option, json_option, load_config_or_exit, shown
from edgegw.cli.status import ago


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
    config, _ = load_config_or_exit(config_path)
    from edgegw.outbox import Outbox
    from edgegw.store.connection import db_path

    path = db_path(config.data_dir)
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
    oldest = ago(st.now, st.oldest_pending_at) if st.oldest_pending_at is not None else "-"
    out = [f"outbox   {st.pending} pending, {st.delivered} delivered, {st.parked} parked; "
           f"oldest pending accepted {oldest}", "uplinks"]
    for name, u in st.by_uplink.items():
        if not u.configured:
            out.append(f"  {name:<12} {'(removed)':<10} {u.parked} parked (no longer configured)")
            continue
        first = f" (oldest {ago(st.now, u.oldest_pending_at)})" if u.oldest_pending_at is not None else ""
        out.append(f"  {name:<12} {u.state or '-':<10} {u.pending} pending{first}, {u.parked} parked")
    out.append("kinds")
    out += [f"  {kind:<12} {k.pending} pending, {k.delivered} delivered" for kind, k in st.by_kind.items()]
    d = st.disk
    out.append(f"disk     database {_size(d.database_bytes)}, WAL {_size(d.wal_bytes)}, "
               f"{_size(d.free_bytes)} free inside the database")
    click.echo(shown("\n".join(out)))


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
        items = ob.items(state=state, kind=kind, device=device, uplink=uplink, limit=limit or None)
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
    click.echo(shown("\n".join(lines)))
    if limit and len(rows) == limit:
        click.echo(f"(the first {limit}; --limit 0 lists all)")


@outbox_group.command("export")
@config_option
@click.option("--pending", "state", flag_value="pending", help="only items some uplink still waits for")
@click.option("--delivered", "state", flag_value="delivered", help="only delivered items")
@kind_option
@device_option
@click.option("--uplink", help="only items pending for this uplink")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="JSON lines (one object per row, the item as JSON) or CSV (the item as JSON text)")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default="-",
              help="file to write (default: stdout)")
def outbox_export(config_path: Path, state: str | None, kind: str | None, device: str | None, uplink: str | None,
                  fmt: str, output: Path) -> None:
    """Export outbox rows with their batch items, in seq order: to hand a backlog to a platform by
    hand, or to look at it in a spreadsheet. Streams; safe while the daemon runs. A file is whole or
    not there: written beside its name, synced, then renamed (a USB stick pulled at once keeps it).

    Example: edgegw outbox export -c /etc/edgegw/gateway.toml --pending --format csv -o backlog.csv
    """
    rows = _outbox(config_path).export(state=state, kind=kind, device=device, uplink=uplink)
    if str(output) == "-":
        _write_rows(sys.stdout, rows, fmt)
        return
    if output.exists() and not output.is_file():  # a pipe, /dev/stdout: written to, never replaced
        try:
            with open(output, "w", encoding="utf-8", newline="") as out:
                _write_rows(out, rows, fmt)
        except OSError as exc:
            raise click.ClickException(f"could not write {output}: {exc.strerror or exc}") from None
        return
    partial = output.with_name(f".{output.name}.partial")
    try:
        try:
            with open(partial, "w", encoding="utf-8", newline="") as out:
                written = _write_rows(out, rows, fmt)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, output)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        directory = os.open(output.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename too
        finally:
            os.close(directory)
    except OSError as exc:
        raise click.ClickException(f"could not write {output}: {exc.strerror or exc}; nothing was exported") from None
    click.echo(f"{written} row(s) written to {output}", err=True)


def _write_rows(out, rows, fmt: str) -> int:
    """Write the export's ``rows`` to ``out`` as ``fmt``; how many."""
    import csv

    from edgegw.outbox import EXPORT_COLUMNS

    written = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            written += 1
        return written
    for row in rows:
        out.write(json.dumps({**row, "item": json.loads(row["item"])}, ensure_ascii=False) + "\n")
        written += 1
    return written


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
    click.echo(shown("\n".join(out)))


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
    click.echo(f"purged {purge.deleted_items} delivered or parked item(s) and {purge.deleted_alarms} closed alarm(s)"
               f" ({before})")
    click.echo(f"on disk: database {_size(b.database_bytes)} + WAL {_size(b.wal_bytes)} before, "
               f"{_size(a.database_bytes)} + WAL {_size(a.wal_bytes)} after; {_size(a.free_bytes)} free inside "
               "the database is reused by new items (the file shrinks only by VACUUM, with the daemon stopped)")


