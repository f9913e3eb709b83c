"""The data directory: there (or creatable), writable by the service user, on a filesystem that is
writable and has room."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from edgegw.config import Config
from edgegw.dbfile import explain, is_damage
from edgegw.doctor import Finding
from edgegw.doctor.access import SEARCH, WRITE, ServiceUser

NEARLY_FULL = 0.05  # below this share of the filesystem free, a warning, before the cap policy starts dropping


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def data_dir(config: Config, user: ServiceUser, space: bool = True) -> list[Finding]:
    """The data directory may be written by ``user``; with ``space``, its filesystem's room too."""
    path = config.data_dir
    subject = f"data_dir {path}"
    where = _existing(path)
    findings = []
    try:
        fs = os.statvfs(where)
        st = os.stat(where)
    except OSError as exc:
        return [Finding("data_dir", subject, "fault", f"cannot look at {where}: {exc.strerror}",
                        "check the path in data_dir")]
    if fs.f_flag & os.ST_RDONLY:
        return [Finding("data_dir", subject, "fault", f"the filesystem holding {where} is mounted read-only",
                        "an SD card remounted read-only after errors is failing: check dmesg, replace the card;"
                        " otherwise remount it writable (mount -o remount,rw)")]
    if not where.is_dir():
        findings.append(Finding("data_dir", subject, "fault", f"{where} is not a directory",
                                "set data_dir to a directory (the systemd unit's is /var/lib/edgegw)"))
    elif not user.may(st, WRITE | SEARCH):
        made = "" if where == path else f" (it does not exist; {where} is where it would be made)"
        findings.append(Finding("data_dir", subject, "fault",
                                f"{user.name} may not write {where}{made}: {user.why_not(st, WRITE | SEARCH)}",
                                f"sudo chown -R {user.name} {where} && sudo chmod u+rwx {where}"))
    else:
        findings.append(_try_write(subject, where, user))
    if space:
        findings.append(_room(subject, where, fs, config.store.min_free))
    return findings


def _try_write(subject: str, where: Path, user: ServiceUser) -> Finding:
    """Write a file there when this process is the user asked about: the mode bits said yes, the
    filesystem may still say no (full, quota, an ACL)."""
    if user.uid != os.geteuid():
        return Finding("data_dir", subject, "ok", f"{user.name} may write {where} (by its owner and mode)")
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Finding("data_dir", subject, "fault", f"cannot create a file in {where}: {exc.strerror}",
                       "free space on that filesystem, or check its mount options and ACLs (getfacl)")
    return Finding("data_dir", subject, "ok", f"{user.name} may write {where}")


def _room(subject: str, where: Path, fs: os.statvfs_result, min_free: int) -> Finding:
    free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
    text = f"{free / 1e6:,.0f} MB free of {total / 1e6:,.0f} MB on the filesystem of {where}"
    if free < min_free:
        return Finding("disk", subject, "fault", f"{text}: below [store] min_free ({min_free / 1e6:,.0f} MB), so the"
                       " disk cap is deleting delivered items and then the oldest readings",
                       "free space there (journalctl --vacuum-size=50M, apt-get clean, old files), or move"
                       " data_dir to a bigger disk")
    if total and free < NEARLY_FULL * total:
        return Finding("disk", subject, "warning", f"{text}: nearly full",
                       "free space there before the disk cap starts deleting the oldest readings")
    return Finding("disk", subject, "ok", text)


def database(config: Config) -> Finding:
    """The gateway database opens and reads as one (the daemon sets a damaged one aside at its
    start, and stops when it finds damage in use: a maintainer should know before restarting it)."""
    from edgegw.store.connection import db_path, open_reader

    path = db_path(config.data_dir)
    subject = f"database {path}"
    if not path.exists():
        return Finding("database", subject, "ok", "not made yet: the daemon makes it at its first start")
    try:
        conn = open_reader(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except (sqlite3.DatabaseError, PermissionError) as exc:
        if is_damage(exc):
            return Finding("database", subject, "fault", f"damaged: {exc}",
                           "sudo systemctl restart edgegw: the daemon sets it aside (kept, never deleted) and"
                           " starts a fresh one; what it held is lost unless it was already delivered")
        return Finding("database", subject, "skipped", explain(path, exc))
    return Finding("database", subject, "ok", "opens and reads")
