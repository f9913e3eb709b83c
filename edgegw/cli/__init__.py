"""The ``edgegw`` command: thin over the library (parse options, call one function, print).

One module per group of commands; each command imports what it needs when it runs, so that
``edgegw status`` does not load the daemon, nor ``edgegw outbox`` the radios.
"""

from __future__ import annotations

from edgegw.cli import doctor, monitor, outbox, run, setup, status, tools  # noqa: F401  (each registers its commands)
from edgegw.cli.common import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli()
