"""Secrets and who can see them: the keys file and password/token files readable by the service user
and nobody else, no secret written into the config itself or sent without TLS, and no device left
unauthenticated once others have keys."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

from edgegw.config import Config, HttpConnection, MqttConnection
from edgegw.doctor import Finding
from edgegw.doctor.access import READ, ServiceUser, owner_name
from edgegw.errors import ConfigError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_files(config: Config) -> list[tuple[str, Path, str, str, str | None]]:
    """(subject, path, how it is made, what its reader can do, what it must hold or None) of every
    secrets file the config names. A keys file may be empty until the first device gets a key."""
    out: list[tuple[str, Path, str, str, str | None]] = []
    if config.keys_file is not None:
        out.append(("keys_file", config.keys_file, "make it with: edgegw keys new DEVICE -c CONFIG",
                    "forge the frames of the sensors it holds keys for", None))
    for u in config.uplinks:
        for key in ("password_file", "token_file"):
            path = getattr(u, key, None)
            if path is not None:
                secret = key.removesuffix("_file")
                out.append((f"uplinks {u.name} {key}", path, f"write the {secret} there (one line), as the service user",
                            f"pose as this gateway to uplink {u.name}", f"the {secret} uplink {u.name} sends"))
    return out


def _blank(path: Path) -> bool:
    """True for a file of nothing but white space (the gateway strips it). One this process may not
    read is not judged here: whether the service user may is another finding."""
    try:
        return not path.read_bytes().strip()
    except OSError:
        return False


def secret_file(subject: str, path: Path, make: str, risk: str, holds: str | None, user: ServiceUser) -> Finding:
    """``path`` exists, ``user`` may read it, and nobody else may (as the gateway requires of its keys);
    where it ``holds`` a secret, it is not empty."""
    mine = f"sudo chown {user.name} {path} && sudo chmod 600 {path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Finding("secret_file", subject, "fault", f"{path} does not exist", make)
    except OSError as exc:
        return Finding("secret_file", subject, "fault", f"cannot look at {path}: {exc.strerror}",
                       f"{user.name} must be able to enter every directory on the way to it")
    if not user.may(st, READ):
        return Finding("secret_file", subject, "fault", f"{user.name} may not read {path}: {user.why_not(st, READ)}",
                       mine)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Finding("secret_file", subject, "fault",
                       f"{path} may be read by group or others (mode {stat.filemode(st.st_mode)}): whoever reads it can"
                       f" {risk}", mine)
    if holds is not None and _blank(path):
        return Finding("secret_file", subject, "fault", f"{path} is empty: it should hold {holds}", make)
    if st.st_uid not in (user.uid, 0):
        return Finding("secret_file", subject, "warning",
                       f"{path} is owned by {owner_name(st)}, who may read and change it", mine)
    return Finding("secret_file", subject, "ok", f"{path}: readable by {user.name} only")


def secrets(config: Config, config_path: Path, user: ServiceUser) -> list[Finding]:
    """Secrets files, secrets written inline in the config, and secrets sent without TLS."""
    findings = [secret_file(*found, user=user) for found in secret_files(config)]
    try:
        config_mode = stat.filemode(config_path.stat().st_mode)
        shown = config_path.stat().st_mode & stat.S_IROTH
    except OSError:
        config_mode, shown = "?", True
    for u in config.uplinks:
        for key in ("password", "token"):
            if getattr(u, key, None) is not None:
                findings.append(Finding(
                    "inline_secret", f"uplinks {u.name} {key}", "warning" if not shown else "fault",
                    f"the {key} is written in {config_path} (mode {config_mode})"
                    + (": every user of this machine can read it" if shown else ""),
                    f"move it to a file: {key}_file = \"/etc/edgegw/{u.name}.{key}\" (chmod 600, owned by"
                    f" {user.name}), and delete the {key} line"))
    for u in config.uplinks:
        if isinstance(u, MqttConnection) and (u.password or u.password_file) and not u.tls and not _loopback(u.host):
            findings.append(Finding("plain_secret", f"uplinks {u.name} {u.host}:{u.port}", "fault",
                                    "the MQTT password is sent without TLS (tls = false): anyone on the path can"
                                    " read it", "set tls = true and the broker's TLS port (usually 8883), with"
                                    " ca_file if its CA is not a public one"))
        if isinstance(u, HttpConnection) and (u.token or u.token_file):
            parts = urlsplit(u.url)
            if parts.scheme == "http" and not _loopback(parts.hostname or ""):
                findings.append(Finding("plain_secret", f"uplinks {u.name} {u.url}", "fault",
                                        "the X-Auth-Token is sent over plain http: anyone on the path can read it",
                                        "use the platform's https:// URL (ask the platform team for it)"))
    return findings


def devices(config: Config) -> list[Finding]:
    """Once some devices have frame keys, the ones without: anyone in radio range can send as them."""
    if config.keys_file is None:
        return []
    from edgegw.keys import load_keys

    try:
        keyed = set(load_keys(config.keys_file))
    except ConfigError:
        return []  # the keys file's own finding says why
    if not keyed:
        return []
    plain = [d.id for d in config.devices if d.id not in keyed]
    if not plain:
        return [Finding("device_keys", "devices", "ok", f"every device ({len(keyed)}) authenticates its frames")]
    return [Finding("device_keys", "devices", "warning",
                    f"{len(plain)} device(s) without a frame key, while {len(keyed)} {'has' if len(keyed) == 1 else 'have'}"
                    " one: anyone in radio range"
                    f" can send as {', '.join(plain)} (their readings say \"verified\": false)",
                    "give each a key: edgegw keys new DEVICE -c CONFIG, and flash it into the sensor")]
