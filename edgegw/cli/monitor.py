"""``edgegw monitor``: the installer's live view of what the radio hears (see edgegw.monitor)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgegw.cli.common import cli, config_option, load_config_or_exit, reading_database

if TYPE_CHECKING:
    from rich.console import Group


@cli.command()
@config_option
@click.option("--once", is_flag=True, help="print the view once and exit (for scripts and notes)")
def monitor(config_path: Path, once: bool) -> None:
    """Live view for walking the field: every configured device with the age of its last frame, its
    RSSI/SNR and frames lost, and the unknown addresses heard; redrawn as frames arrive. Reads the
    running gateway's database (read-only). Ctrl-C to quit.

    Example: edgegw monitor -c /etc/edgegw/gateway.toml
    """
    config, _ = load_config_or_exit(config_path)
    from rich.console import Console
    from rich.live import Live

    from edgegw.monitor import AGE_EVERY, POLL_EVERY, Watch, render
    from edgegw.running import daemon_state
    from edgegw.store import db_path

    console = Console()
    if not console.is_terminal:  # a pipe or a file: wide enough for every column
        console = Console(width=120)
    path = db_path(config.data_dir)
    watch = Watch(path)
    seen = None

    def frame() -> Group:
        nonlocal seen
        with reading_database(path):
            if watch.changed():
                seen = watch.read()
        d = daemon_state(config.data_dir)
        daemon = ("daemon running" + (f" (pid {d['pid']})" if d.get("pid") else "") if d["running"] else
                  "daemon NOT RUNNING: what it last recorded" if d["running"] is False else "daemon state unknown")
        return render(config, seen, time.time(), daemon)

    try:
        if once:
            console.print(frame())
            return
        with Live(frame(), console=console, auto_refresh=False) as live:
            drawn = time.monotonic()
            while True:
                time.sleep(POLL_EVERY)
                if watch.changed() or time.monotonic() - drawn >= AGE_EVERY:
                    live.update(frame(), refresh=True)
                    drawn = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        watch.close()
