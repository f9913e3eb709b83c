"""``edgegw run``: the daemon in the foreground (systemd's unit runs it)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgegw.cli.common import (
    EXIT_ALREADY_RUNNING,
    EXIT_DATA_DIR,
    EXIT_DATABASE_DAMAGED,
    cli,
    config_option,
    load_config_or_exit,
)
from edgegw.errors import StoreError


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Run the gateway daemon until SIGTERM or Ctrl-C; SIGHUP reloads the config file.

    Example: edgegw run -c configs/demo.toml
    """
    config, drivers = load_config_or_exit(config_path, keys=True)
    from edgegw import daemon, log
    from edgegw.dbfile import DatabaseDamaged, DataDirFull, DataDirUnusable
    from edgegw.running import AlreadyRunning

    log.configure(config.log.level, config.log.format)
    try:
        daemon.run(config, drivers, config_path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except AlreadyRunning as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_ALREADY_RUNNING)
    except DataDirUnusable as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_DATA_DIR)
    except DataDirFull as exc:  # restarted by systemd: room may come back
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except DatabaseDamaged as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_DATABASE_DAMAGED)


