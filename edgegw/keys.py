"""Device keys: the secrets file that says which sensors authenticate their frames.

A TOML file with one 128-bit key per device id, in hex::

    [keys]
    "trap-01" = "2b7e151628aed2a6abf7158809cf4f3c"

Anyone who can read it can forge that device's frames, so it must be readable only by the service
user: the gateway refuses a file that group or others may read, and says how to fix it.
``edgegw keys new`` writes it that way.
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edgegw.envelope import KEY_BYTES
from edgegw.errors import ConfigError

if TYPE_CHECKING:
    from edgegw.config.radio import Device

HEADER = ("# edgegw device keys (see edgegw/envelope.py). Whoever reads this file can forge these\n"
          "# devices' frames: keep it readable only by the service user (chmod 600).\n")


def load_keys(path: Path) -> dict[str, bytes]:
    """The keys in ``path``, by device id; :class:`ConfigError` names every problem at once."""
    name = str(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, ["file not found (create it with: edgegw keys new DEVICE -c CONFIG)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, [f"cannot read: {exc}"]) from None
    problems = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(f"group or others may read it (mode {stat.filemode(mode)}); only the service user may:"
                        f" chmod 600 {path}")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [*problems, f"not valid TOML: {exc}"]) from None
    keys: dict[str, bytes] = {}
    table = raw.get("keys", {})
    if not isinstance(table, dict) or set(raw) - {"keys"}:
        problems.append('expected only a [keys] table of "device id" = "32 hex digits"')
        table = table if isinstance(table, dict) else {}
    for device_id, value in table.items():
        try:
            key = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            problems.append(f"keys.{device_id}: expected {2 * KEY_BYTES} hex digits (a 128-bit key)")
        else:
            keys[device_id] = key
    if problems:
        raise ConfigError(name, problems)
    return keys


def new_key(path: Path, device_id: str) -> bytes:
    """Make a random key for ``device_id`` and write it into ``path`` (created, or rewritten with the
    others kept), readable by its owner only; returns the key. An existing key of the device is
    replaced: the sensor must then be given the new one. A rewritten file keeps its owner, so that
    `sudo edgegw keys new` leaves it readable by the service user it belongs to."""
    owner = path.stat() if path.exists() else None
    keys = load_keys(path) if owner is not None else {}
    keys[device_id] = secrets.token_bytes(KEY_BYTES)
    body = HEADER + "[keys]\n" + "".join(f'"{d}" = "{k.hex()}"\n' for d, k in sorted(keys.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # Created 0600 from the start: never a moment in which the key is readable by others.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover temporary file keeps its old mode through O_TRUNC
    if owner is not None and (owner.st_uid, owner.st_gid) != (os.geteuid(), os.getegid()):
        os.fchown(fd, owner.st_uid, owner.st_gid)  # only root may; anyone else is refused (PermissionError)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return keys[device_id]


def plain_frames_accepted(devices: Iterable[Device], keyed: set[str], now: datetime) -> dict[str, str]:
    """The devices whose plain (unsealed) frames the gateway takes, by id, with why: no key, a key
    with ``require_auth = false``, or a rollout window still open. Anyone in radio range can send
    such frames as them; a keyed device's are marked unverified."""
    plain = {}
    for d in devices:
        if d.id not in keyed:
            plain[d.id] = "no key"
        elif d.require_auth is False:
            plain[d.id] = "require_auth = false"
        elif d.accept_plain_until is not None and d.accept_plain_until > now:
            plain[d.id] = f"accept_plain_until {d.accept_plain_until.isoformat()}"
    return plain
