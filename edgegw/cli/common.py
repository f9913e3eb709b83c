"""What every ``edgegw`` command shares: the group, the config and JSON options, loading a config
with every problem listed, and the exit codes systemd's unit relies on."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgegw import __version__
from edgegw.config import Config, check_config
from edgegw.drivers import DriverRegistry
from edgegw.errors import ConfigError

EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3  # systemd/edgegw.service: RestartPreventExitStatus, as for a config error
EXIT_DATA_DIR = 4  # the data directory cannot be written: also not restarted (see edgegw.dbfile)
EXIT_DATABASE_DAMAGED = 5  # restarted by systemd: the next start sets the damaged database aside

config_option = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="gateway config file (TOML), e.g. configs/demo.toml",
)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def load_config_or_exit(path: Path, keys: bool = False) -> tuple[Config, DriverRegistry]:
    # keys: only what uses them (run, config check) needs the keys file, which others may not read.
    config, drivers, _ = check_config_or_exit(path, keys)
    return config, drivers


def check_config_or_exit(path: Path, keys: bool = False) -> tuple[Config, DriverRegistry, list[str]]:
    """The config, its drivers and its warnings; or every problem on stderr and exit 2."""
    try:
        return check_config(path, keys)
    except ConfigError as exc:
        click.echo(f"{len(exc.problems)} problem(s) in {exc.path}:", err=True)
        for p in exc.problems:
            click.echo(f"  {exc.path}: {p}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group()
@click.version_option(__version__, prog_name="edgegw")
def cli() -> None:
    """edgegw: field gateway for LPWA sensors (radio -> SQLite outbox -> platform)."""


