"""The mirror's state database (filesystem spec §9): what this mirror put on the service.

One folder per mirror under ``STATE_DIR/mirror/<digest>/``, the digest naming (local real
path, base URL, dataset id, target folder, ``--organize-by-class``), holds:

- ``mirror.db``: SQLite (WAL, ``synchronous=NORMAL``: it survives ``kill -9``; after a power
  loss its last transactions may be missing, and the next start settles them from the
  service listing and the upload journal, which is ``FULL``) with
  ``files`` — one row per mirrored file: relative path, size, mtime (ns), sha256, image id and
  where the image is (folder and name as the service answered, so a HEIC file ``x.heic``
  remembers its ``x.png``: the pair that keeps a restart from uploading it again), and
  ``superseded``, the upload entry that replaces this row's image (a rename in flight);
  ``pending`` — one row per upload handed to the queue: the entry id, the local file it
  carries (size, mtime, sha256 at staging time) and the row it retires when it lands;
- ``mirror.lock``: an ``flock`` held while the mirror runs (two mirrors of one pair refuse);
- ``journal/``: the upload queue's journal and staging files (``pictofs.core.upload.journal``).

Every method commits before it returns. Thread-safe (the queue's callbacks write from worker
threads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from pictofs.core.upload.journal_files import open_database, take_lock
from pictofs.dirs import private_dir
from pictofs.errors import ConfigError
from pictofs.mirror.plan import Row
from pictofs.model import Image

VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    image_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    superseded TEXT
);
CREATE TABLE IF NOT EXISTS pending (
    entry_id TEXT PRIMARY KEY,
    rel TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    retire_rel TEXT,
    archive INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Identity:
    """What one mirror is: the state folder is named after it."""

    local_dir: str  # real path
    base_url: str
    dataset_id: str
    folder: str
    organize_by_class: bool

    def digest(self) -> str:
        text = "\n".join((self.local_dir, self.base_url.rstrip("/"), self.dataset_id,
                          self.folder, "by-class" if self.organize_by_class else "tree"))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:24]


@dataclass(frozen=True)
class QueuedUpload:
    """An upload handed to the queue, and the local file it carries."""

    entry_id: str
    rel: str
    size: int
    mtime_ns: int
    sha256: str
    retire_rel: str | None = None  # a row this upload takes the place of
    archive: bool = False  # archive the retired row's image once this lands


@dataclass(frozen=True)
class Landing:
    """What a landed upload leaves to do: archive the image of the row it retired."""

    pending: QueuedUpload
    row: Row
    archive: Row | None


class MirrorState:
    def __init__(self, directory: Path, identity: Identity) -> None:
        self.directory = directory
        private_dir(directory.parent)
        private_dir(directory)
        self._lock_file = take_lock(
            directory / "mirror.lock",
            lambda pid: f"another pictofs mirror (pid {pid}) already mirrors "
                        f"{identity.local_dir} into {identity.folder}")
        self._lock = threading.Lock()  # guards _db (one connection shared by threads)
        try:
            # Created 0600 (SQLite gives the -wal and -shm files the database's mode); one of
            # an unknown version is refused and kept. NORMAL: see the module doc.
            self._db = open_database(directory / "mirror.db", VERSION, synchronous="NORMAL",
                                     kind="mirror state", refusing="mirror")
            self._init(identity)
        except sqlite3.DatabaseError as exc:
            self._lock_file.close()
            raise ConfigError(f"{directory / 'mirror.db'}: not a readable mirror state "
                              f"database ({exc}); it is kept as it is") from None
        except BaseException:
            self._lock_file.close()
            raise
        os.chmod(directory / "mirror.db", 0o600)

    @classmethod
    def open(cls, state_dir: Path, identity: Identity) -> MirrorState:
        private_dir(state_dir)
        return cls(state_dir / "mirror" / identity.digest(), identity)

    @property
    def journal_dir(self) -> Path:
        return self.directory / "journal"

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lock_file.close()

    # ---------------------------------------------------------------- files

    def rows(self) -> dict[str, Row]:
        with self._lock:
            cursor = self._db.execute("SELECT rel, size, mtime_ns, sha256, image_id, folder, "
                                      "name, superseded FROM files")
            return {r[0]: Row(*r[:7], superseded=r[7] is not None) for r in cursor}

    def row(self, rel: str) -> Row | None:
        with self._lock:
            r = self._db.execute("SELECT rel, size, mtime_ns, sha256, image_id, folder, name, "
                                 "superseded FROM files WHERE rel = ?", (rel,)).fetchone()
        return Row(*r[:7], superseded=r[7] is not None) if r else None

    def superseded(self) -> dict[str, str]:
        """Rows a rename retires: rel → the entry id of the upload that replaces them."""
        with self._lock:
            return dict(self._db.execute(
                "SELECT rel, superseded FROM files WHERE superseded IS NOT NULL").fetchall())

    def put(self, row: Row) -> None:
        with self._write() as db:
            _upsert(db, row)

    def delete(self, rels: list[str]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM files WHERE rel = ?", [(rel,) for rel in rels])

    def touch(self, rel: str, size: int, mtime_ns: int) -> None:
        with self._write() as db:
            db.execute("UPDATE files SET size = ?, mtime_ns = ? WHERE rel = ?",
                       (size, mtime_ns, rel))

    def relink(self, old_rel: str, row: Row) -> None:
        """The image of ``old_rel`` now belongs to another local path (a move)."""
        with self._write() as db:
            db.execute("DELETE FROM files WHERE rel = ?", (old_rel,))
            _upsert(db, row)

    # ---------------------------------------------------------------- uploads

    def add_pending(self, entries: list[QueuedUpload]) -> None:
        """Before the entries are scheduled, in one transaction; a row an entry retires is
        marked superseded by it."""
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO pending (entry_id, rel, size, mtime_ns, "
                           "sha256, retire_rel, archive) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(p.entry_id, p.rel, p.size, p.mtime_ns, p.sha256, p.retire_rel,
                             int(p.archive)) for p in entries])
            db.executemany("UPDATE files SET superseded = ? WHERE rel = ?",
                           [(p.entry_id, p.retire_rel) for p in entries
                            if p.retire_rel is not None])

    def pending(self) -> dict[str, QueuedUpload]:
        with self._lock:
            cursor = self._db.execute("SELECT entry_id, rel, size, mtime_ns, sha256, "
                                      "retire_rel, archive FROM pending")
            return {r[0]: QueuedUpload(*r[:6], archive=bool(r[6])) for r in cursor}

    def land(self, entry_id: str, image: Image) -> Landing | None:
        """The entry registered as ``image``: its row, and the retired row to archive (the
        retired row stays, superseded, until ``delete`` after the archive). None for an
        entry this mirror did not hand over (or already landed)."""
        return self.land_many([(entry_id, image)])[0]

    def land_many(self, landed: Sequence[tuple[str, Image]]) -> list[Landing | None]:
        """``land`` for the entries of a batch, in one transaction."""
        with self._write() as db:
            return [_land(db, entry_id, image) for entry_id, image in landed]

    def fail(self, entry_id: str) -> QueuedUpload | None:
        """The entry failed for good: forget it; a row it would have retired is live again."""
        with self._write() as db:
            pending = _pop_pending(db, entry_id)
            if pending is not None and pending.retire_rel is not None:
                db.execute("UPDATE files SET superseded = NULL WHERE rel = ? AND "
                           "superseded = ?", (pending.retire_rel, entry_id))
        return pending

    # ---------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def _init(self, identity: Identity) -> None:
        """Create the tables and record the identity (the version was checked at open)."""
        with self._lock:
            self._db.executescript(_SCHEMA)
        with self._write() as db:
            values = {"version": str(VERSION), **{k: json.dumps(v) for k, v in
                                                  identity.__dict__.items()}}
            db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                           values.items())


def _upsert(db: sqlite3.Connection, row: Row) -> None:
    db.execute("INSERT OR REPLACE INTO files (rel, size, mtime_ns, sha256, image_id, folder, "
               "name, superseded) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
               (row.rel, row.size, row.mtime_ns, row.sha256, row.image_id, row.folder,
                row.name))


def _land(db: sqlite3.Connection, entry_id: str, image: Image) -> Landing | None:
    pending = _pop_pending(db, entry_id)
    if pending is None:
        return None
    row = Row(pending.rel, pending.size, pending.mtime_ns, pending.sha256, image.id,
              image.directory_path, image.filename)
    retired = None
    if pending.retire_rel is not None and pending.retire_rel != pending.rel:
        found = db.execute("SELECT rel, size, mtime_ns, sha256, image_id, folder, "
                           "name FROM files WHERE rel = ? AND superseded = ?",
                           (pending.retire_rel, entry_id)).fetchone()
        if found is not None and pending.archive:
            retired = Row(*found, superseded=True)
        elif found is not None:
            db.execute("DELETE FROM files WHERE rel = ?", (pending.retire_rel,))
    _upsert(db, row)
    return Landing(pending, row, retired)


def _pop_pending(db: sqlite3.Connection, entry_id: str) -> QueuedUpload | None:
    found = db.execute("SELECT entry_id, rel, size, mtime_ns, sha256, retire_rel, archive "
                       "FROM pending WHERE entry_id = ?", (entry_id,)).fetchone()
    if found is None:
        return None
    db.execute("DELETE FROM pending WHERE entry_id = ?", (entry_id,))
    return QueuedUpload(*found[:6], archive=bool(found[6]))
