"""Opening the gateway database, and the one way a transaction is written.

Every connection, the daemon's writer and a maintainer's alike, gets the same pragmas (WAL, small
pages, a bounded WAL, the statement journal in memory): see :func:`connect`. Readers (forwarders,
``edgegw status``, the health report) open read-only connections with :func:`open_reader`; WAL lets
them read while the writer writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

DB_NAME = "edgegw.db"
WAL_LIMIT = 8_000_000
# Page cache per connection, KiB. SQLite's default is 2 MiB; the writer appends at the end of its
# tables and the forwarder reads the head of the queue, so a quarter of that does the same work.
CACHE_KIB = 512
# Every commit appends each page it changed to the WAL, whole: a reading, a device's registry row and
# a rule's state are a few dozen bytes each, on pages of their own. With 1 KiB pages instead of
# SQLite's 4 KiB, a commit at field rate (one reading) writes a quarter of the bytes to the SD card.
PAGE_SIZE = 1024
# SQLite checkpoints every 1,000 pages: with small pages, keep the 4 MiB WAL that is its default.
CHECKPOINT_PAGES = 4 * 1024 * 1024 // PAGE_SIZE


class Queries(Protocol):
    """What read-only helpers need of a connection: a ``sqlite3.Connection``, or sqlite-utils'
    ``Database`` wrapping one (the maintainer's tools)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> sqlite3.Cursor: ...


def db_path(data_dir: Path) -> Path:
    """Where the gateway database of a data directory lives."""
    return Path(data_dir) / DB_NAME


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection that may write, configured as the daemon's writer is."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        _configure(conn, synchronous)
    except BaseException:
        conn.close()  # a damaged file is moved aside next: no handle of ours may touch its new name
        raise
    return conn


def _configure(conn: sqlite3.Connection, synchronous: str) -> None:
    # Only a new database takes it (an existing one keeps its page size). See PAGE_SIZE.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    # After each checkpoint the WAL file is cut back to this, so a long outage cannot grow it unbounded.
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    # A multi-row UPDATE in a transaction (every acknowledgement) keeps a statement journal, and
    # past 64 KiB SQLite spills it to a file in /var/tmp: on a Pi, the SD card. In memory it is the
    # pages of one statement, a few hundred KiB at most.
    conn.execute("PRAGMA temp_store=MEMORY")


def open_reader(path: Path) -> sqlite3.Connection:
    """A connection for reading while the daemon writes (status, forwarders); rows as sqlite3.Row."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    conn.row_factory = sqlite3.Row
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception: the one shape of a
    transaction on a connection in autocommit mode (see :meth:`Store.transaction` for the writer's)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every query inside sees the same committed state."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def full(exc: sqlite3.OperationalError) -> bool:
    """SQLite's "database or disk is full"."""
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_FULL


def file_size(path: Path) -> int:
    """A file's size, 0 when it is not there."""
    try:  # the writer may remove it at any moment (a checkpoint's truncation, the reserve given back)
        return path.stat().st_size
    except FileNotFoundError:
        return 0
