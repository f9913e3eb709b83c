"""Who the service runs as, and what the mode bits of a file let that user do, with the reason why not.

Judged from owner, group and mode bits (POSIX ACLs are not read): this answers for the service
user even when the command runs as root, who may open anything.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass

SERVICE_USER = "edgegw"  # systemd/edgegw.service: User=edgegw
SERVICE_GROUPS = ("dialout",)  # and SupplementaryGroups=dialout

READ, WRITE, SEARCH = 4, 2, 1


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class ServiceUser:
    """A user and the groups it has, as a process running as it would."""

    name: str
    uid: int
    gids: frozenset[int]
    how: str = ""  # where the groups come from, for the report

    @classmethod
    def current(cls) -> ServiceUser:
        """The user running this command, with the groups this process has."""
        uid = os.geteuid()
        return cls(_user_name(uid), uid, frozenset({os.getegid(), *os.getgroups()}))

    @classmethod
    def named(cls, name: str, extra_groups: tuple[str, ...] = ()) -> ServiceUser:
        """``name`` with its groups from the group database, plus ``extra_groups`` (KeyError if unknown)."""
        pw = pwd.getpwnam(name)
        gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        for group in extra_groups:
            try:
                gids.add(grp.getgrnam(group).gr_gid)
            except KeyError:
                pass
        how = f" (and {', '.join(extra_groups)} from the systemd unit)" if extra_groups else ""
        return cls(name, pw.pw_uid, frozenset(gids), how)

    @classmethod
    def default(cls) -> ServiceUser:
        """You; as root, the service user as systemd runs it (when that user exists): root may open
        anything, the question is whether the service may."""
        if os.geteuid() == 0:
            try:
                return cls.named(SERVICE_USER, SERVICE_GROUPS)
            except KeyError:
                pass
        return cls.current()

    def describe(self) -> str:
        groups = ", ".join(sorted(_group_name(g) for g in self.gids))
        return f"{self.name} (groups {groups}){self.how}"

    def may(self, st: os.stat_result, want: int) -> bool:
        """Whether the mode bits of ``st`` grant this user every bit of ``want`` (READ|WRITE|SEARCH)."""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid in self.gids:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    def why_not(self, st: os.stat_result, want: int) -> str:
        """Why :meth:`may` said no, in the file's own terms: owner, group, mode, and which applies."""
        owner, group = _user_name(st.st_uid), _group_name(st.st_gid)
        mode = stat.filemode(st.st_mode)
        what = "/".join(w for bit, w in ((READ, "read"), (WRITE, "write"), (SEARCH, "enter")) if want & bit)
        if st.st_uid == self.uid:
            role = f"{self.name} owns it, but the owner bits do not allow {what}"
        elif st.st_gid in self.gids:
            role = f"{self.name} is in group {group}, but the group bits do not allow {what}"
        else:
            role = f"{self.name} is neither its owner nor in group {group}, and others may not {what}"
        return f"owned by {owner}:{group}, mode {mode}; {role}"


def owner_name(st: os.stat_result) -> str:
    return _user_name(st.st_uid)


def group_name(st: os.stat_result) -> str:
    return _group_name(st.st_gid)
