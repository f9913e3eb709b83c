"""What every ``edgegw`` command shares: the group, the config and JSON options, loading a config
with every problem listed, and the exit codes systemd's unit relies on."""

from __future__ import annotations

import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from edgegw import __version__
from edgegw.config import Config, check_config
from edgegw.dbfile import explain
from edgegw.drivers import DriverRegistry
from edgegw.errors import ConfigError

EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3  # systemd/edgegw.service: RestartPreventExitStatus, as for a config error
EXIT_DATA_DIR = 4  # the data directory cannot be written: also not restarted (see edgegw.dbfile)
EXIT_DATABASE_DAMAGED = 5  # restarted by systemd: the next start sets the damaged database aside

# Where scripts/install.sh puts an installed gateway's config: the commands a maintainer types over
# SSH then need no -c. Read when a command runs (tests point it elsewhere).
DEFAULT_CONFIG = Path("/etc/edgegw/gateway.toml")
CONFIG_ENV = "EDGEGW_CONFIG"
F = TypeVar("F", bound=Callable[..., Any])


def _config_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path:
    """The config to use: -c FILE (or the argument), else $EDGEGW_CONFIG (click reads it), else the
    installed gateway's, if there is one."""
    if value is not None:
        return value
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG
    given = "FILE" if isinstance(param, click.Argument) else "-c FILE"
    raise click.UsageError(f"no config file given: name one ({given}) or set {CONFIG_ENV}=FILE"
                           f" (the default, {DEFAULT_CONFIG}, does not exist)", ctx)


_CONFIG_TYPE = click.Path(dir_okay=False, path_type=Path)

config_option = click.option(
    "-c", "--config", "config_path", type=_CONFIG_TYPE, envvar=CONFIG_ENV, show_envvar=True, callback=_config_path,
    help=f"gateway config file (TOML), e.g. configs/demo.toml  [default: {DEFAULT_CONFIG}]",
)
# `edgegw config check [FILE]` takes the config as its argument, resolved the same way.
config_argument = click.argument("file", required=False, type=_CONFIG_TYPE, envvar=CONFIG_ENV, callback=_config_path)


def _optional_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """-c FILE, else $EDGEGW_CONFIG (click reads it), else the installed gateway's if there is one:
    these tools work without a config, on the bundled drivers."""
    return value if value is not None or not DEFAULT_CONFIG.exists() else DEFAULT_CONFIG


def optional_config_option(purpose: str) -> Callable[[F], F]:
    """-c FILE for the tools that also work without a config (simulate, decode, drivers list)."""
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        envvar=CONFIG_ENV, show_envvar=True, callback=_optional_config,
                        help=f"gateway config, {purpose}  [default: {DEFAULT_CONFIG} if it exists]")


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


# C0 controls but newline and tab, DEL and C1: what a terminal would act on rather than show.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """``text`` safe to print to a terminal: control characters written as escapes. What a peer
    answered (an error text) or a radio sent (a payload's string value) reaches status output, and
    ESC ] 0 ; ... BEL set the maintainer's terminal title."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@contextmanager
def reading_database(path: Path) -> Iterator[None]:
    """Around a command's reads of the gateway database at ``path``: what they may raise (a damaged
    file, a user who may not read it) becomes one line saying what to do, and exit status 1."""
    try:
        yield
    except (sqlite3.DatabaseError, PermissionError) as exc:
        raise click.ClickException(explain(path, exc)) from None


@click.group()
@click.version_option(__version__, prog_name="edgegw")
def cli() -> None:
    """edgegw: field gateway for LPWA sensors (radio -> SQLite outbox -> platform)."""




def plain_list(plain: dict[str, str]) -> str:
    """The devices that may send plain frames, for a person: a keyed one says why it still may."""
    return ", ".join(d if why == "no key" else f"{d} ({why})" for d, why in plain.items())
