"""The files under a journal's folder, below what the journal records: the SQLite database
(WAL; one of an unknown version is refused and left as it is), the ``flock`` that keeps a
second process out, a folder's fsync, a filesystem's ``syncfs``, and what a full disk looks like
(``disk_full``: an ``OSError`` ENOSPC/EDQUOT, or SQLite's "database or disk is full"). The
mirror's state database (``pictofs.mirror.state``) is opened and locked by the same
helpers."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Mapping

from pictofs.errors import ConfigError

# the errnos of a disk with no room left: no free block, or the user's quota used up
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk is full: an ``OSError`` with ENOSPC or EDQUOT, or a
    SQLite error whose primary code is ``SQLITE_FULL`` ("database or disk is full")."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_DISK_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF == sqlite3.SQLITE_FULL
        return "database or disk is full" in str(exc)
    return False


def open_database(path: Path, version: int, upgrades: Mapping[int, str] | None = None, *,
                  synchronous: str = "FULL", kind: str = "journal",
                  refusing: str = "mount") -> sqlite3.Connection:
    """Open (or create, 0600) the database; refuse an unknown version before changing
    anything. ``upgrades`` maps an older version to the SQL that brings it to ``version``
    (run in one transaction with the new version number). WAL, ``synchronous`` (``FULL``
    or ``NORMAL``), a 5 s busy timeout. ``kind`` and ``refusing`` word the errors: "not a
    readable pictofs {kind}", "refusing to {refusing}"."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous={synchronous!r}")
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
        stored = _stored_version(db)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a readable pictofs {kind} ({exc}); "
                          f"refusing to {refusing} (the file is kept as it is)") from None
    if isinstance(stored, int) and stored in (upgrades or {}):
        _upgrade(db, (upgrades or {})[stored], version)
    elif stored is not None and stored != version:
        db.close()
        raise ConfigError(f"{path}: {kind} version {stored} is unknown to this pictofs "
                          f"(it knows version {version}); refusing to {refusing} (the {kind} "
                          "is kept as it is: use the pictofs that wrote it)")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _upgrade(db: sqlite3.Connection, script: str, version: int) -> None:
    """Run an upgrade and record the new version, all or nothing."""
    db.execute("BEGIN IMMEDIATE")  # DDL too is transactional in SQLite
    try:
        for statement in filter(None, (part.strip() for part in script.split(";"))):
            db.execute(statement)
        db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
    except BaseException:
        db.rollback()
        raise
    db.commit()


def _stored_version(db: sqlite3.Connection) -> int | str | None:
    """The version in ``meta``; None for a new (empty) database."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "meta" not in tables:
        return "(none)"
    row = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    if row is None:
        return "(none)"
    try:
        return int(row[0])
    except ValueError:
        return str(row[0])


def take_lock(path: Path, busy: Callable[[str], str] | None = None) -> Any:
    """Hold an exclusive flock on ``path`` (with our pid in it) or raise ConfigError with
    ``busy(holder_pid)`` (by default: the dataset is mounted by another pictofs)."""
    handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+", encoding="ascii")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = handle.read().strip() or "unknown"
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            message = busy(holder) if busy else (
                f"journal in use by pid {holder} ({path.parent}): another pictofs has this "
                "dataset mounted")
            raise ConfigError(message) from None
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def sync_filesystem(path: Path) -> bool:
    """``syncfs(2)`` of the filesystem holding ``path``: every file written there so far
    reaches the disk in one call (ext4's ``commit=``, on demand). False where the C library
    has no ``syncfs`` (the caller then fsyncs file by file); an error is an ``OSError``
    (ENOSPC, EDQUOT, EIO: Linux 5.8 and later report a failed writeback)."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
    return True
