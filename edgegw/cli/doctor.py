"""``edgegw doctor``: the field faults of this gateway, each with its fix (the checks live in edgegw.doctor)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgegw.cli.common import cli, config_option, json_option, load_config_or_exit

EXIT_FAULTS = 1

user_option = click.option(
    "--user", "user_name", metavar="NAME",
    help="judge file and port permissions as NAME (default: you; as root, the service user edgegw with the"
         " systemd unit's dialout group, where that user exists)")


def service_user(name: str | None):
    from edgegw.doctor.access import ServiceUser

    if name is None:
        return ServiceUser.default()
    try:
        return ServiceUser.named(name)
    except KeyError:
        raise click.BadParameter(f"no user {name!r} on this machine", param_hint="--user") from None


def print_findings(findings: list, everything: bool = True) -> None:
    """One line per finding (``everything=False``: faults and warnings only), its fix indented below."""
    for f in findings:
        if not everything and f.status in ("ok", "skipped"):
            continue
        label = {"fault": "FAULT", "warning": "warn", "ok": "ok", "skipped": "skip"}[f.status]
        click.echo(f"{label:<6}{f.check.replace('_', ' ')}: {f.subject}: {f.message}")
        if f.fix:
            click.echo(f"{'':<6}fix: {f.fix}")


@cli.command()
@config_option
@json_option
@user_option
@click.option("--no-radio", is_flag=True, help="do not open the radio modules' ports to talk to them")
def doctor(config_path: Path, as_json: bool, user_name: str | None, no_radio: bool) -> None:
    """Check this gateway for the commonest field faults and say how to fix each: serial port and
    radio module (baud rate, refused settings), data directory and disk, clock, a Pi's power,
    uplink endpoints and TLS, secrets and their permissions, devices without keys.

    The modules are talked to only when no daemon runs on the data directory (it holds the ports).

    Exit status: 0 when there is no fault (warnings alone exit 0), 1 when there is at least one
    fault, 2 when the config itself has errors (listed as by edgegw config check).

    Example: sudo edgegw doctor -c /etc/edgegw/gateway.toml
    """
    from edgegw.doctor import diagnose, faults, report
    from edgegw.log import configure

    configure("warning")  # the modules' own log lines go to stderr, never into --json
    config, _ = load_config_or_exit(config_path, keys=False)  # doctor explains a bad keys file itself
    user = service_user(user_name)
    findings = diagnose(config, config_path, user, probe_radio=not no_radio)
    if as_json:
        click.echo(json.dumps(report(findings, config_path, user), indent=2))
    else:
        click.echo(f"edgegw doctor: {config_path}, permissions judged for {user.describe()}")
        print_findings(findings)
        bad = faults(findings)
        warnings = sum(f.status == "warning" for f in findings)
        click.echo(f"{len(bad)} fault(s), {warnings} warning(s)" + (": fix the faults above" if bad else ""))
    if faults(findings):
        sys.exit(EXIT_FAULTS)
