"""A damaged database file never stops the gateway, and never goes unnoticed.

Before SQLite opens the database, :func:`check_wal` reads its WAL as SQLite's recovery will (the
format is documented at https://sqlite.org/fileformat2.html#the_write_ahead_log): a 32-byte header
(magic, version, page size, checkpoint sequence, two salts, a checksum), then frames of a 24-byte
header (page number, database size after commit, non-zero for the last frame of a transaction, the
salts, a checksum carried on from the frame before over the header and the page) and the page.
SQLite keeps the frames up to the last commit before the first frame that does not verify, and
silently drops the rest: a byte flipped in the middle of the WAL loses every transaction after it
while ``integrity_check`` says ok. The checker counts what will be dropped; the WAL is copied aside
first, and the loss is logged and recorded.

:func:`open_store` then opens the database. One that is not a database, is malformed, or whose path
cannot be opened as a file is moved aside with its -wal and -shm (never deleted) and a fresh one is
started, so frames and alarms keep flowing. Damage found while the database is in use (SQLite says
"malformed" to a stage) is noted beside it by :func:`mark_damaged`; the daemon exits and, restarted,
sets it aside the same way. Every such incident is written to the ``damage`` table
of the database in use (``edgegw status``, the health report) and queued as a ``database_damaged``
alarm for every uplink by :func:`record`.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import structlog

from edgegw.errors import EdgegwError
from edgegw.model import Alarm

if TYPE_CHECKING:
    from edgegw.store import Store

log = structlog.get_logger("edgegw.dbfile")

WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit: checksums over big-endian words
WAL_VERSION = 3007000
WAL_HEADER = 32
FRAME_HEADER = 24
SHM_HEADER = 48  # one copy of the wal-index header at the start of the -shm file (native byte order)
MASK = 0xFFFFFFFF
# SQLite's primary result codes that mean the file itself is bad (extended codes carry them in the low byte).
DAMAGED_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class DataDirUnusable(EdgegwError):
    """The data directory cannot hold a database (not writable, not a directory): restarting cannot help."""


class DataDirFull(EdgegwError):
    """The data directory's filesystem has no room to start in, and no reserve of ours to give back:
    another start (systemd's, every few seconds) may find room."""


class DatabaseDamaged(EdgegwError):
    """SQLite found damage in the database in use; the next start sets it aside (see :func:`mark_damaged`)."""


@dataclass(frozen=True)
class WalReport:
    """What SQLite's recovery will make of a WAL file (all counts in frames, as in the file)."""

    frames: int = 0  # complete frames in the file
    kept_frames: int = 0  # those SQLite will use: up to the last commit before the first bad frame
    kept_commits: int = 0
    discarded_frames: int = 0  # frames of this WAL's generation after the kept ones (not stale frames)
    discarded_commits: int = 0  # commit frames among them: transactions that were committed and are lost
    torn_bytes: int = 0  # a partial frame at the end
    committed_frames: int | None = None  # the frames the -shm says were committed, when it matches this WAL
    problem: str | None = None  # the first reason a frame or the header does not verify

    @property
    def loses_committed(self) -> bool:
        """Committed transactions will be dropped (not only an unfinished one at the end)."""
        return self.discarded_commits > 0 or (self.committed_frames or 0) > self.kept_frames

    @property
    def discards(self) -> bool:
        """SQLite will drop something of this WAL."""
        return bool(self.discarded_frames or self.torn_bytes or self.loses_committed)


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum: Fibonacci-weighted sums of 32-bit word pairs, carried on from (s0, s1)."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    it = iter(words)
    for x0, x1 in zip(it, it):
        s0 = (s0 + x0 + s1) & MASK
        s1 = (s1 + x1 + s0) & MASK
    return s0, s1


def _page_size(value: int) -> int | None:
    return value if 512 <= value <= 65536 and value & (value - 1) == 0 else None


def _db_page_size(db: Path) -> int | None:
    """The page size from the database header (offset 16, big-endian; 1 means 65536), if readable."""
    try:
        with open(db, "rb") as f:
            head = f.read(18)
    except OSError:
        return None
    if len(head) < 18:
        return None
    (value,) = struct.unpack(">H", head[16:18])
    return _page_size(65536 if value == 1 else value)


def _shm_frames(shm: Path, salts: bytes) -> int | None:
    """mxFrame of the wal-index header in the -shm, if it is intact and about this WAL (same salts).

    SQLite resets the -shm when the first connection opens the database, and rebuilds it from the
    WAL; until then it still says how many frames were committed before the crash, so a WAL cut
    short shows as frames missing. After a power cut it may be stale (never more than the truth).
    """
    try:
        with open(shm, "rb") as f:
            head = f.read(2 * SHM_HEADER)
    except OSError:
        return None
    if len(head) < 2 * SHM_HEADER or head[:SHM_HEADER] != head[SHM_HEADER:]:
        return None
    version, _, _, init, _, _, mx_frame = struct.unpack("=IIIBBHI", head[:20])
    native_big = struct.pack("=I", 1) == struct.pack(">I", 1)
    if version != WAL_VERSION or init != 1 or head[32:40] != salts:
        return None
    if _checksum(head[:40], 0, 0, native_big) != struct.unpack("=2I", head[40:48]):
        return None
    return mx_frame


def check_wal(db: Path) -> WalReport:
    """Read ``db``'s WAL (``<db>-wal``) as SQLite's recovery will, before SQLite opens it."""
    wal = db.with_name(db.name + "-wal")
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return WalReport()
    if len(data) < WAL_HEADER:
        return WalReport(torn_bytes=len(data), problem="the WAL is shorter than its header") if data else WalReport()
    magic, version, size, _, _, _, c0, c1 = struct.unpack(">8I", data[:WAL_HEADER])
    big = bool(magic & 1)
    page = _page_size(size)
    problem = None
    if magic not in WAL_MAGIC or version != WAL_VERSION or page is None:
        problem = "the WAL header is not valid (magic, version or page size)"
    elif _checksum(data[:24], 0, 0, big) != (c0, c1):
        problem = "the WAL header's checksum does not match"
    page = page or _db_page_size(db)  # a bad header: count its frames by the database's page size
    if page is None:
        return WalReport(torn_bytes=len(data) - WAL_HEADER, problem=problem)
    frame_size = FRAME_HEADER + page
    frames = (len(data) - WAL_HEADER) // frame_size
    salts = data[16:24]
    seed = (c0, c1)
    kept = kept_commits = last_ours = 0
    commits: list[int] = []  # 1-based numbers of the commit frames of this generation
    for n in range(1, frames + 1):
        at = WAL_HEADER + (n - 1) * frame_size
        header = data[at:at + FRAME_HEADER]
        pgno, commit = struct.unpack(">2I", header[:8])
        # A WAL restarted after a checkpoint keeps older frames beyond its end, with other salts
        # (salt-2 is random): those are stale, not lost. One damaged byte still leaves 7 of 8 equal.
        ours = sum(a != b for a, b in zip(header[8:16], salts)) <= 1
        if ours:
            last_ours = n
            if commit:
                commits.append(n)
        if problem is None:
            sums = _checksum(header[:8] + data[at + FRAME_HEADER:at + frame_size], *seed, big)
            if header[8:16] != salts:
                problem = f"frame {n}: its salts are not the header's"
            elif pgno == 0 or sums != struct.unpack(">2I", header[16:24]):
                problem = f"frame {n}: its checksum does not match"
            else:
                seed = sums
                if commit:
                    kept, kept_commits = n, kept_commits + 1
    committed = _shm_frames(db.with_name(db.name + "-shm"), salts)
    if problem is None and frames > kept:
        problem = f"frames {kept + 1}-{frames} are not followed by a commit"
    torn = (len(data) - WAL_HEADER) % frame_size
    if problem is None and torn:
        problem = f"the WAL ends in a partial frame ({torn} of {frame_size} bytes)"
    if committed is not None and committed > kept and problem is None:
        problem = f"the WAL is shorter than the {committed} frames committed"
    return WalReport(frames, kept, kept_commits, max(0, last_ours - kept), sum(1 for n in commits if n > kept),
                     torn, committed, problem)


@dataclass(frozen=True)
class Incident:
    """A damaged database or WAL found at start: what, why, where the damaged file was kept."""

    part: str  # "database" or "wal"
    problem: str
    kept_as: str | None
    at: float
    frames: int = 0  # WAL frames dropped
    commits: int = 0  # committed transactions among them (a WAL cut short: unknown, 0)
    alarm: bool = True  # committed data lost or the database replaced: an alarm, not only a log line


def _stamp(at: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(at))


def _aside(db: Path, label: str, at: float) -> Path:
    """A free name beside ``db`` for a kept copy: ``<db>.<label>-<UTC time>`` (``.2`` etc. if taken)."""
    base = db.with_name(f"{db.name}.{label}-{_stamp(at)}")
    target, n = base, 1
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        target = Path(f"{base}.{n}")
    return target


def _copy_wal(db: Path, at: float) -> str | None:
    """Copy the WAL (and -shm) aside before SQLite rewrites it; None if there is no room (said in the log)."""
    target = _aside(db, "wal-damaged", at)
    try:
        for suffix in ("-wal", "-shm"):
            if (src := Path(f"{db}{suffix}")).exists():
                shutil.copyfile(src, f"{target}{suffix}")
    except OSError as exc:
        log.error("could not keep a copy of the damaged WAL", error=str(exc))
        return None
    return f"{target.name}-wal"


def _move_aside(db: Path, at: float) -> Path:
    """Rename the database and its -wal/-shm to ``<db>.damaged-<UTC time>``: kept, never deleted."""
    target = _aside(db, "damaged", at)
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if os.path.lexists(src):
            try:
                src.rename(f"{target}{suffix}")
            except OSError as exc:
                raise DataDirUnusable(f"cannot move the damaged database {src} aside: {exc.strerror}") from None
    return target


def is_damage(exc: BaseException) -> bool:
    """The error says the database file is bad (not busy, full or failing I/O, which a new file would not cure)."""
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in DAMAGED_CODES


def explain(db: Path, exc: BaseException) -> str:
    """One line for a maintainer whose command could not read the gateway database: what went
    wrong and what to do (a traceback said neither)."""
    text = str(exc)
    if isinstance(exc, PermissionError) or any(s in text for s in ("readonly", "unable to open", "access")):
        # A reader needs the directory too: WAL readers map the -shm beside the database.
        return (f"cannot read the gateway database {db} as this user ({text}): run the command as the"
                " gateway's user (sudo -u edgegw edgegw ...) or with sudo")
    if is_damage(exc):
        return (f"the gateway database {db} is damaged ({text}): the daemon sets it aside and starts a fresh"
                " one when it next starts (sudo systemctl restart edgegw)")
    return f"the gateway database {db} could not be read: {text}"


def _damaged(exc: sqlite3.Error, db: Path) -> bool:
    # CANTOPEN on a path that exists: a directory or another non-file where the database should be.
    return is_damage(exc) or ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF == sqlite3.SQLITE_CANTOPEN
                              and os.path.lexists(db) and not db.is_file())


def _mark(db: Path) -> Path:
    return db.with_name(f"{db.name}.corrupt")


def mark_damaged(db: Path, exc: BaseException) -> str:
    """Damage found in a database in use: note it beside the file, so that the next start sets the
    database aside, and return the problem as the note says it. The caller then exits: SQLite may
    spread damage it is writing over, and the gateway's connections all point into this file."""
    problem = f"{exc} ({getattr(exc, 'sqlite_errorname', type(exc).__name__)})"
    log.error("the database is damaged; the gateway exits, and restarted it sets the database aside"
              " (kept, not deleted) and starts a fresh one", problem=problem)
    try:
        _mark(db).write_text(json.dumps({"problem": problem, "at": time.time()}))
    except OSError as error:  # the next start's checks (open, quick_check) find the damage again, later
        log.error("could not note the damaged database for the next start", error=str(error))
    return problem


def check_data_dir(data_dir: Path) -> None:
    """Raise :class:`DataDirUnusable` (one line, for the installer) unless ``data_dir`` takes a new file."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".edgegw-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = "not a directory" if data_dir.exists() and not data_dir.is_dir() else exc.strerror
        raise DataDirUnusable(f"the data directory {data_dir} cannot be written ({why}):"
                              " fix data_dir in the config, its owner or its filesystem") from None


def _read_mark(db: Path) -> str | None:
    """The problem noted by :func:`mark_damaged` when the database was last in use, if any."""
    try:
        note = _mark(db).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"noted as damaged; the note cannot be read ({exc.strerror})"
    try:
        return str(json.loads(note)["problem"])
    except (ValueError, KeyError, TypeError):
        return "noted as damaged while in use"


S = TypeVar("S")


def open_store(db: Path, opener: Callable[[Path], S]) -> tuple[S, list[Incident]]:
    """Open ``db`` with ``opener`` after checking its WAL; set a damaged database aside and start a
    fresh one. Returns the store and the incidents, for :func:`record` once the uplinks are known.

    Raises :class:`DataDirUnusable` when even a fresh database cannot be made.
    """
    check_data_dir(db.parent)
    incidents: list[Incident] = []
    now = time.time()
    wal = check_wal(db)
    if wal.discards:
        kept_as = _copy_wal(db, now)
        lost = wal.loses_committed
        (log.error if lost else log.warning)(
            "the WAL is damaged: SQLite will drop what follows the last good commit" if lost else
            "the WAL ends in an unfinished transaction (a crash during a commit, or a cut file): SQLite drops it",
            problem=wal.problem, kept_frames=wal.kept_frames, discarded_frames=wal.discarded_frames,
            discarded_commits=wal.discarded_commits, committed_frames=wal.committed_frames,
            torn_bytes=wal.torn_bytes, kept_as=kept_as)
        lost_frames = max(wal.discarded_frames, (wal.committed_frames or 0) - wal.kept_frames)
        incidents.append(Incident("wal", wal.problem or "", kept_as, now, lost_frames, wal.discarded_commits, lost))
    problem = _read_mark(db)
    if problem is None:
        try:
            return opener(db), incidents
        except sqlite3.Error as exc:
            if not _damaged(exc, db):
                raise
            problem = f"{exc} ({exc.sqlite_errorname})"
    target = _move_aside(db, now)
    _mark(db).unlink(missing_ok=True)  # said in the log and the damage table from here on
    log.error("the database is damaged: moved aside (kept, not deleted) and a fresh one started",
              problem=problem, kept_as=target.name)
    incidents.append(Incident("database", problem, target.name, now))
    try:
        return opener(db), incidents
    except sqlite3.Error as exc:
        raise DataDirUnusable(f"cannot start a fresh database at {db}: {exc}") from None


def record(store: Store, incidents: list[Incident], gateway_id: str, pending: int) -> list[Alarm]:
    """Write the incidents to the ``damage`` table and queue an alarm for each that lost data, for
    every uplink in ``pending``; returns the alarms queued."""
    if not incidents:
        return []
    alarms = []
    with store.transaction():
        for i in incidents:
            store.record_damage(i.at, i.part, i.problem, i.kept_as, i.frames, i.commits, i.alarm)
            if not i.alarm:
                continue
            what = ("the database was damaged and set aside; a fresh one was started" if i.part == "database" else
                    f"the WAL was damaged: {i.commits} committed transactions ({i.frames} frames) were dropped")
            alarm = Alarm(f"{gateway_id}:database_damaged:{i.part}:{int(i.at * 1000)}", "database_damaged", "high",
                          gateway_id, "store", i.at, f"{what} (kept as {i.kept_as}): {i.problem}",
                          {"part": i.part, "kept_as": i.kept_as, "problem": i.problem, "frames": i.frames,
                           "commits": i.commits})
            if store.add_alarm(alarm, pending, time.time()):
                alarms.append(alarm)
    return alarms
