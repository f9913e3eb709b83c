"""``edgegw doctor``: the commonest field faults of a gateway, each found on this machine and told
with its fix in plain words.

Every check is a plain function returning :class:`Finding` s; :func:`diagnose` runs them all,
:func:`machine_findings` only the fast ones a service start depends on (``edgegw config check
--machine``, the systemd unit's ExecStartPre). A *fault* stops the gateway working (exit 1); a
*warning* is worth fixing but the gateway runs (exit 0); *ok* and *skipped* say what was checked
and what could not be.

Permissions are judged for a :class:`~edgegw.doctor.access.ServiceUser` from owners and mode
bits, not by trying as the current user: an installer runs ``sudo edgegw doctor``, and root may
open what the service user may not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from edgegw.config import Config
from edgegw.doctor.access import ServiceUser

Status = Literal["ok", "warning", "fault", "skipped"]


@dataclass(frozen=True)
class Finding:
    """One checked thing: what (``check``, ``subject``), how it is (``status``, ``message``), and
    what to do about it (``fix``, empty where there is nothing to do)."""

    check: str
    subject: str
    status: Status
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def diagnose(config: Config, config_path: Path, user: ServiceUser, probe_radio: bool = True) -> list[Finding]:
    """Every check, in the order a field technician would look: the radio, storage, the machine, the
    uplinks, the secrets. ``probe_radio=False`` leaves the modules untalked to (their ports are at
    most opened and closed, nothing is sent)."""
    from edgegw.doctor import host, network, radio, security, storage

    running = host.daemon_running(config)
    findings = [running]
    findings += radio.ports(config, user, probe=probe_radio and running.status == "ok")
    if running.status == "warning":  # a daemon runs: it knows how its modules are
        findings += radio.daemon_sources(config)
    findings += storage.data_dir(config, user)
    findings.append(storage.database(config))
    findings += [host.clock(config), *host.throttling()]
    findings += network.uplinks(config, user)
    if running.status == "warning":
        findings += network.daemon_uplinks(config)
    findings += security.secrets(config, config_path, user)
    findings += security.devices(config)
    return findings


def machine_findings(config: Config, config_path: Path, user: ServiceUser) -> list[Finding]:
    """The fast checks a start depends on: ports exist and may be opened, the data directory may be
    written, secrets may be read and nobody else may. No module is talked to, no network is used."""
    from edgegw.doctor import radio, security, storage

    findings = radio.ports(config, user, probe=False)
    findings += storage.data_dir(config, user, space=False)
    findings += [f for f in security.secrets(config, config_path, user) if f.check == "secret_file"]
    return findings


def faults(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == "fault"]


def report(findings: list[Finding], config_path: Path, user: ServiceUser) -> dict[str, Any]:
    """The JSON form: ``ok`` is false when any finding is a fault."""
    counts = {s: sum(f.status == s for f in findings) for s in ("fault", "warning", "ok", "skipped")}
    return {"config": str(config_path), "user": user.describe(), "ok": counts["fault"] == 0,
            "faults": counts["fault"], "warnings": counts["warning"],
            "findings": [f.as_dict() for f in findings]}
