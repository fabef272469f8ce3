"""The upload journal: the durable write-back state of one dataset.

Filesystem spec §5 "Durability" and §8. One folder per dataset id under
``STATE_DIR/datasets/<dataset id>/``, whatever the base URL or key (the embedded server's
port changes at every start, a key can be rotated: pending work must still be found;
``for_dataset`` adopts a folder an older pictofs named by base URL and key), holds:

- ``journal.db``: SQLite (WAL, ``synchronous=NORMAL``) with a ``meta`` table (schema
  ``version``, base URL, dataset id, key fingerprint), the ``entries`` table (one row per
  staged file: target, state, size, sha256, mtime, replaced id, idempotency keys, the step
  reached, the error, the registered image id, and ``attrs``: the writable extended
  attributes, ``split`` and ``tags``, set on the file before it landed, as one JSON object,
  set on the image after its register and then cleared), the ``mtimes`` table (image id →
  the mtime a writer set, reported by ``stat`` so a second ``rsync -a`` transfers nothing)
  and the ``converted`` table, made when first needed (a name written that the service
  stored under another name, HEIC ``x.heic`` as ``x.png``: folder and written name → image
  id, size and sha256 of the bytes written; see ``Converted``);
- ``staging/``: one file per entry, named by the entry id, except for an entry uploaded
  from its *source* (``add_sources``): a file of the caller's that nobody is writing to (the
  mirror's), whose size, mtime and sha256 the row records; the upload checks the bytes it
  sends against them (``job.SourceBody``) and drops the entry when they changed;
- ``journal.lock``: an ``flock`` held for the life of the ``Journal`` object, so two
  processes never resume the same entries;
- ``quarantine/``: staging files no row accounts for (a journal deleted, emptied or cut
  short by a damaged WAL), kept aside under the name they were written as (recorded beside
  the bytes in the extended attribute ``user.pictofs.path``) or their entry id, never
  deleted: ``pictofs status`` counts them, and copying one back into the mount uploads it.

Every method that changes a row commits before it returns, so a caller that records a step
and then sends it never sends a step the journal does not know about. Two exceptions, both
the mount's, so that a file written costs no commit of its own: the row of a new entry
(``add_many(deferred=True)``, the ``create``) holds nothing to resume until the file's first
flush; and a flush (``defer_flushed``, the close) is written beside the bytes first, as the
staging file's extended attribute ``user.pictofs.flushed`` (size, sha256, the image
replaced, and the journal's ``incarnation``), which a crash of the daemon does not lose. Both
are written into the rows by the next commit of any kind, the group commit at the latest;
until then ``get`` and ``entries`` show them as that commit will write them, and a restart
finds a flush its row missed beside the bytes (``recover_flushes``). A commit is written to
the WAL and survives a crash of the process at once; none is fsync'd on its own. Against a
crash of the machine, ``make_durable`` (the group commit, ``commits.GroupCommit``, at most
``--commit-interval`` after a change and at once on fsync, ``pictofs sync`` and unmount)
syncs the journal's filesystem: every commit before it, the staging files and their folder.
What such a crash can lose is the last interval's rows and bytes; a row that survived with
bytes that did not is found by the sha256 the flush recorded (``job.inspect_entry``), and a
resumed step whose key was lost gets a fresh one and adopts what the service already has
(a 409 on the name, size and sha256 matching). The rare paths below that move or keep bytes
aside (``fail_staged``, ``keep_aside``, ``absorb``) still fsync what they move.

A full disk is ``NoSpace`` (the domain error, ENOSPC at a syscall), whatever found it: a
commit SQLite could not write ("database or disk is full", rolled back: the row is as it
was), a staging file that could not be created, an fsync. Nothing else changes then, and the
same call works again once the disk has room.

A journal of a version this code does not know refuses to open (``ConfigError``) and is left
untouched (``journal_files``). Files are 0600, folders 0700. Reads go through a second
connection, so they never wait for a commit in progress. ``resume_action`` is the pure decision
of what a restart does with each entry.

States and steps are the enums of ``states``; every write that changes a row's state is
checked against its transition table (``states.check_transition``, under the journal's lock,
in the writing transaction): an illegal one raises ``IllegalTransition`` and writes nothing.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from pictofs.core.upload.journal_files import (disk_full, fsync_dir, open_database,
                                               sync_filesystem, take_lock)
from pictofs.core.upload.states import INITIAL, JobState, Step, check_transition
from pictofs.dirs import private_dir, private_dirs
from pictofs.errors import ConfigError, NoSpace
from pictofs.model import split_path

log = logging.getLogger(__name__)

VERSION = 3
# what turns a journal of an older version into this one (version 1 had no sources,
# version 2 no attrs)
_ADD_ATTRS = "ALTER TABLE entries ADD COLUMN attrs TEXT;"
UPGRADES = {1: "ALTER TABLE entries ADD COLUMN source TEXT;"
               "ALTER TABLE entries ADD COLUMN source_mtime_ns INTEGER;" + _ADD_ATTRS,
            2: _ADD_ATTRS}
# Created when a first name is remembered (``remember_converted``): a journal that never
# needed it is as before, and a pictofs without it still opens one that has it.
_CONVERTED_TABLE = """CREATE TABLE IF NOT EXISTS converted (
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    image_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (folder, name)
)"""

# The on-disk format of VERSION: its CHECK constraints spell the values of JobState and Step
# (tests/unit/test_upload_states.py checks that they agree).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    filename TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('staged', 'queued', 'uploading', 'failed', 'done')),
    flushed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    size INTEGER,
    sha256 TEXT,
    mtime REAL,
    replaced_id TEXT,
    url_key TEXT,
    register_key TEXT,
    step TEXT NOT NULL DEFAULT 'none'
        CHECK (step IN ('none', 'archived', 'url', 'put', 'registered')),
    error TEXT,
    image_id TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    source TEXT,
    source_mtime_ns INTEGER,
    attrs TEXT
);
CREATE TABLE IF NOT EXISTS mtimes (image_id TEXT PRIMARY KEY, mtime REAL NOT NULL);
"""


@dataclass(frozen=True)
class Converted:
    """A file written as ``folder``/``name`` that the service stored as image ``image_id``
    under another name (HEIC ``x.heic`` as ``x.png``): the size and sha256 of the bytes
    written. Bytes written again under that name with this sha256 are that image."""

    folder: str
    name: str
    image_id: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Entry:
    """A snapshot of one journal row."""

    id: str
    folder: str
    filename: str
    state: JobState
    flushed: bool
    cancelled: bool
    size: int | None
    sha256: str | None
    mtime: float | None
    replaced_id: str | None
    url_key: str | None
    register_key: str | None
    step: Step
    error: str | None
    image_id: str | None
    created: float
    updated: float
    source: str | None = None  # the file the bytes are read from (else the staging file)
    source_mtime_ns: int | None = None  # the source's mtime when it was hashed

    @property
    def path(self) -> str:
        return ("" if self.folder == "/" else self.folder) + "/" + self.filename

    @property
    def maybe_registered(self) -> bool:
        """A register may have reached the service without the journal hearing the answer."""
        return (self.image_id is None and self.step == Step.PUT
                and self.register_key is not None)


_COLUMNS = tuple(f.name for f in fields(Entry))
# a source and what it was are set once, by add_sources
_UPDATABLE = frozenset(_COLUMNS) - {"id", "created", "updated", "source", "source_mtime_ns"}


@dataclass(frozen=True)
class SourceRow:
    """A new entry uploaded from its source file: ``size``, ``mtime_ns`` and ``sha256`` are
    the file's when it was hashed."""

    entry_id: str
    folder: str
    filename: str
    replaced_id: str | None
    source: str
    size: int
    mtime_ns: int
    sha256: str


def key_fingerprint(api_key: str) -> str:
    """The first 12 hex digits of the key's sha256: names the key without revealing it."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_XATTR = "user.pictofs.path"  # on a staging file: the path it was written as
# on a staging file: its last flush, when the row records it later (``defer_flushed``)
FLUSH_XATTR = "user.pictofs.flushed"
QUARANTINE = "quarantine"


def journal_dir(state_dir: Path, dataset_id: str) -> Path:
    """``STATE_DIR/datasets/<dataset id>`` (an id that is not a plain name: its digest)."""
    name = dataset_id if _SAFE_ID.fullmatch(dataset_id) \
        else "id-" + hashlib.sha256(dataset_id.encode("utf-8")).hexdigest()[:24]
    return state_dir / "datasets" / name


def legacy_journal_dir(state_dir: Path, base_url: str, dataset_id: str, api_key: str) -> Path:
    """Where pictofs 0.1 kept a journal: a digest of (base URL, dataset id, key)."""
    identity = "\n".join((base_url.rstrip("/"), dataset_id, key_fingerprint(api_key)))
    return state_dir / "datasets" / hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class JournalInfo:
    """A journal folder found under a state folder, read without opening it for writing."""

    folder: Path
    dataset_id: str
    base_url: str
    live: int  # entries not done: pending, in flight or failed
    staged_files: int  # files in its staging folder


def find_journals(state_dir: Path) -> list[JournalInfo]:
    """Every journal under ``state_dir`` (read-only; a journal that cannot be read is
    left out, with a log line)."""
    found = []
    root = state_dir / "datasets"
    try:
        folders = sorted(p for p in root.iterdir() if (p / "journal.db").is_file())
    except OSError:
        return []
    for folder in folders:
        try:
            db = sqlite3.connect(f"file:{folder / 'journal.db'}?mode=ro", uri=True)
            try:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                live = db.execute("SELECT COUNT(*) FROM entries WHERE state != ?",
                                  (JobState.DONE,)).fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.warning("cannot read the upload journal in %s: %s", folder, exc)
            continue
        try:
            staged = sum(1 for p in (folder / "staging").iterdir() if p.is_file())
        except OSError:
            staged = 0
        found.append(JournalInfo(folder, meta.get("dataset_id", ""),
                                 meta.get("base_url", ""), live, staged))
    return found


def kept_aside(folder: Path) -> list[Path]:
    """The files a journal folder keeps in quarantine."""
    quarantine = folder / QUARANTINE
    if not quarantine.is_dir():
        return []
    return sorted(p for p in quarantine.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- resume plan


class ResumeAction(enum.Enum):
    QUEUE = "queue"  # upload it (again)
    DROP = "drop"  # never flushed, or cancelled with nothing on the service: row and file go
    PRUNE = "prune"  # done: the row (and any left-over staging file) go
    KEEP_FAILED = "keep_failed"  # failed for good: listed until discarded
    FINISH_CANCEL = "finish_cancel"  # cancelled, but an image may exist: a worker archives it


def resume_action(entry: Entry) -> ResumeAction:
    """What a restart does with one entry (filesystem spec §5 "Durability")."""
    if entry.cancelled:
        if entry.image_id is not None or entry.maybe_registered:
            return ResumeAction.FINISH_CANCEL
        return ResumeAction.DROP
    if entry.state == JobState.DONE:
        return ResumeAction.PRUNE
    if entry.state == JobState.FAILED:
        return ResumeAction.KEEP_FAILED
    if entry.state == JobState.STAGED and not entry.flushed:
        return ResumeAction.DROP
    return ResumeAction.QUEUE


def orphan_staging_files(entries: Iterable[Entry], staging_names: Iterable[str]) -> list[str]:
    """Staging files no live entry owns (a crash between creating the file and the row)."""
    owned = {e.id for e in entries if e.state != JobState.DONE}
    return sorted(name for name in staging_names if name not in owned)


# ---------------------------------------------------------------------- the journal


class Journal:
    """One dataset's journal. Thread-safe; open it once per process (the lock says so)."""

    def __init__(self, directory: Path, *, base_url: str = "", dataset_id: str = "",
                 fingerprint: str = "") -> None:
        self.directory = Path(directory)
        self.staging_dir = self.directory / "staging"
        for folder in (self.directory.parent, self.directory, self.staging_dir):
            private_dir(folder)
        self._lock_file = take_lock(self.directory / "journal.lock")
        self._lock = threading.Lock()  # guards _db (one connection shared by threads)
        # reads go through a connection of their own: in WAL mode they see the last commit
        # without waiting for a commit in progress (and its fsync)
        self._read_lock = threading.Lock()  # guards _reader
        # staging files created so far, and how many of them a folder fsync covers
        # (guarded by _folder_lock)
        self._folder_lock = threading.Lock()
        self._created = 0
        self._folder_synced = 0
        # rows add_many deferred, by entry id, until the next commit writes them (guarded by
        # _unwritten_lock, never held around a commit; get reads it without: one dict lookup)
        self._unwritten_lock = threading.Lock()
        self._unwritten: dict[str, Entry] = {}
        # flushes defer_flushed recorded beside the bytes and not in a row yet, by entry id:
        # (flush number, size, sha256); guarded by _unwritten_lock, as _unwritten
        self._unflushed: dict[str, tuple[int, int, str | None]] = {}
        # whether the staging folder takes user xattrs (else every flush commits at once)
        self._marks = True
        self._incarnation = ""  # set by _init_meta
        self.dataset_id = dataset_id
        try:
            self._db = open_database(self.directory / "journal.db", VERSION, UPGRADES,
                                     synchronous="NORMAL")
            self._init_meta(base_url=base_url, dataset_id=dataset_id, fingerprint=fingerprint)
            self._reader = sqlite3.connect(self.directory / "journal.db",
                                           check_same_thread=False, isolation_level=None)
        except BaseException:
            self._lock_file.close()
            raise

    @classmethod
    def for_dataset(cls, state_dir: Path, base_url: str, dataset_id: str,
                    api_key: str) -> Journal:
        """The dataset's journal. A journal of this dataset that an older pictofs kept
        under a (base URL, key) digest is adopted (renamed into place) when this dataset
        has none yet; one that cannot be adopted is reported by ``stranded``."""
        folder = journal_dir(state_dir, dataset_id)
        if not folder.exists():
            _adopt_legacy(state_dir, dataset_id, folder)
        return cls(folder, base_url=base_url.rstrip("/"), dataset_id=dataset_id,
                   fingerprint=key_fingerprint(api_key))

    def absorb(self, other: Path) -> int:
        """Take over the live entries of another journal of this dataset (one an older
        pictofs kept under another name): their rows, staging files and recorded mtimes
        move here, then the other folder is removed. ConfigError if another process holds
        it.
        Returns how many entries moved."""
        with contextlib.closing(take_lock(other / "journal.lock")):
            with self._lock:
                self._db.execute("ATTACH DATABASE ? AS other", (str(other / "journal.db"),))
                try:
                    mine = [r[1] for r in self._db.execute("PRAGMA main.table_info(entries)")]
                    theirs = {r[1] for r in self._db.execute("PRAGMA other.table_info(entries)")}
                    columns = ", ".join(c for c in mine if c in theirs)
                    moving = [r[0] for r in self._db.execute(
                        "SELECT id FROM other.entries WHERE state != ? AND id NOT IN "
                        "(SELECT id FROM main.entries)", (JobState.DONE,))]
                    with self._db:
                        self._db.execute(
                            f"INSERT INTO main.entries ({columns}) SELECT {columns} FROM "
                            "other.entries WHERE state != ? AND id NOT IN "
                            "(SELECT id FROM main.entries)", (JobState.DONE,))
                        self._db.execute("INSERT OR IGNORE INTO main.mtimes SELECT image_id, "
                                         "mtime FROM other.mtimes")
                finally:
                    self._db.execute("DETACH DATABASE other")
            for entry_id in moving:
                staged = other / "staging" / entry_id
                if staged.exists():
                    os.rename(staged, self.staging_path(entry_id))
            for name in kept_aside(other):  # its quarantine comes along too
                target = self.directory / QUARANTINE / name.relative_to(other / QUARANTINE)
                private_dirs(self.directory, target.parent)
                os.rename(name, target)
            fsync_dir(self.staging_dir)
        shutil.rmtree(other)
        fsync_dir(other.parent)
        log.info("took over %d pending upload(s) of dataset %s from the journal %s",
                 len(moving), self.dataset_id, other.name)
        return len(moving)

    def stranded(self) -> list[JournalInfo]:
        """Other journals under this state folder that hold live entries of this dataset
        (left by an older pictofs next to this one): reported, never merged silently."""
        state_dir = self.directory.parent.parent
        return [info for info in find_journals(state_dir)
                if info.dataset_id == self.dataset_id and info.folder != self.directory
                and (info.live or info.staged_files)]

    def close(self) -> None:
        if self._unwritten or self._unflushed:  # deferred and not written yet: written now
            try:
                with self._write():
                    pass
            except NoSpace as exc:  # the next mount finds them beside the staged bytes
                log.warning("%d staged file(s) not recorded in the journal: %s",
                            len(self._unwritten) + len(self._unflushed), exc)
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()
        self._lock_file.close()  # releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- entries

    def add_many(self, rows: Sequence[tuple[str, str, str, str | None]],
                 deferred: bool = False) -> None:
        """New ``staged`` entries, ``(entry_id, folder, filename, replaced_id)`` each, in one
        transaction. ``deferred``: no transaction of their own; the rows are written by the
        next commit of any kind (a file's first flush, typically), and until then ``get``
        and ``entries`` show them from memory. For entries not flushed yet, which a restart
        drops anyway: a crash before that commit leaves their staging files without a row,
        and resume removes an empty one and keeps any other aside (``keep_aside``), as it
        does for an unflushed row's."""
        now = time.time()
        if not deferred:
            with self._write() as db:
                _insert_staged(db, [(*row[:3], INITIAL, row[3], None, now, now)
                                    for row in rows])
            return
        with self._unwritten_lock:
            for entry_id, folder, filename, replaced_id in rows:
                self._unwritten[entry_id] = Entry(
                    entry_id, folder, filename, JobState(INITIAL), False, False, None, None,
                    None, replaced_id, None, None, Step.NONE, None, None, now, now)

    def add_sources(self, rows: Sequence[SourceRow]) -> None:
        """New entries whose bytes stay in their source file (no staging file): resumable at
        once (``flushed``), with the size, mtime and sha256 the upload must find. One
        durable transaction."""
        now = time.time()
        with self._write() as db:
            db.executemany("INSERT INTO entries (id, folder, filename, state, flushed, "
                           "replaced_id, size, sha256, source, source_mtime_ns, created, "
                           "updated) VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                           [(r.entry_id, r.folder, r.filename, INITIAL, r.replaced_id, r.size,
                             r.sha256, r.source, r.mtime_ns, now, now) for r in rows])

    def get(self, entry_id: str) -> Entry | None:
        # Asked before the database: a deferred row leaves ``_unwritten`` only after the
        # commit that wrote it, so one not found there is in the database (or never was).
        if entry_id in self._unflushed:  # a flush deferred: the row as it will be
            with self._unwritten_lock:  # held: no commit after the flush's can come between
                return self._with_flush(entry_id, self._read_one(entry_id))
        unwritten = self._unwritten.get(entry_id)
        return self._read_one(entry_id) or unwritten

    def _read_one(self, entry_id: str) -> Entry | None:
        """The row in the database, or the deferred one (asked first, as in ``get``)."""
        unwritten = self._unwritten.get(entry_id)
        with self._read_lock:
            row = self._reader.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries "
                                       "WHERE id = ?", (entry_id,)).fetchone()
        return _entry(row) if row else unwritten

    def _with_flush(self, entry_id: str, entry: Entry | None) -> Entry | None:
        """``entry`` with the flush ``defer_flushed`` keeps for it applied, as the commit
        writes it (``_apply_flush``). Under ``_unwritten_lock``."""
        deferred = self._unflushed.get(entry_id)
        if entry is None or deferred is None:
            return entry
        _flush_number, size, sha256 = deferred
        return replace(entry, flushed=True, size=size, sha256=sha256, url_key=None,
                       register_key=None, error=None,
                       step=Step.ARCHIVED if entry.replaced_id is not None
                       and entry.step != Step.NONE else Step.NONE,
                       state=JobState.STAGED if entry.state == JobState.FAILED
                       else entry.state)

    def entries(self, state: JobState | None = None) -> list[Entry]:
        if not self._unflushed:
            return self._entries(None if state is None else (state,))
        # flushes deferred: the rows as they will be (a flush only ever turns failed into
        # staged, so those are the rows that may change state)
        states = None if state is None else (state, JobState.FAILED) \
            if state == JobState.STAGED else (state,)
        with self._unwritten_lock:
            found = [self._with_flush(e.id, e) for e in self._entries(states)]
        return [e for e in found if e is not None and (state is None or e.state == state)]

    def _entries(self, states: tuple[JobState, ...] | None) -> list[Entry]:
        query = f"SELECT {', '.join(_COLUMNS)} FROM entries"
        args: tuple[Any, ...] = ()
        if states is not None:
            query += f" WHERE state IN ({', '.join('?' * len(states))})"
            args = tuple(states)
        unwritten = [e for e in list(self._unwritten.values())  # first, as in get
                     if states is None or e.state in states]
        with self._read_lock:
            rows = self._reader.execute(query + " ORDER BY created, id", args).fetchall()
        found = [_entry(row) for row in rows]
        if not unwritten:
            return found
        written = {e.id for e in found}
        found += [e for e in unwritten if e.id not in written]
        return sorted(found, key=lambda e: (e.created, e.id))

    def update(self, entry_id: str, **changes: Any) -> Entry:
        """Change columns of one row and commit; returns the new row."""
        self.update_many({entry_id: changes})
        return self._require(entry_id)

    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """``update`` of many rows (entry id → columns) in one transaction; KeyError (and
        nothing changed) when a row is missing."""
        for columns in changes.values():
            _check_columns(columns)
        with self._write() as db:
            self._apply(db, changes)

    def update_if(self, changes: Mapping[str, Mapping[str, Any]],
                  still: Callable[[str], bool]) -> list[str]:
        """``update_many`` of the rows for which ``still(entry_id)`` is true, asked under the
        journal's lock (so no other write comes between the question and the write); returns
        the ids written. ``still`` must take no lock that is held around journal calls."""
        for columns in changes.values():
            _check_columns(columns)
        with self._write() as db:
            kept = {entry_id: columns for entry_id, columns in changes.items()
                    if still(entry_id)}
            self._apply(db, kept)
        return list(kept)

    @staticmethod
    def _apply(db: sqlite3.Connection, changes: Mapping[str, Mapping[str, Any]]) -> None:
        now = time.time()
        for entry_id, columns in changes.items():
            if "state" in columns:
                _check_state_write(db, entry_id, columns["state"])
            assignments = ", ".join(f"{name} = ?" for name in columns)
            cursor = db.execute(f"UPDATE entries SET {assignments}, updated = ? "
                                "WHERE id = ?", (*columns.values(), now, entry_id))
            if cursor.rowcount == 0:
                raise KeyError(entry_id)

    def record_flushed(self, sizes: Mapping[str, int],
                       still: Callable[[str], bool] = lambda entry_id: True,
                       digests: Mapping[str, str] | None = None) -> None:
        """New bytes of these entries (entry id → size) were flushed: each becomes resumable
        and its upload starts over (hash, keys and error forgotten; a replace whose old image
        is already archived, its step past ``none``, goes back to ``archived``, everything
        else to ``none``; a failed entry is staged again). The step and state are worked out from the row as it is at the write,
        so the write commutes with a retarget, hold or cancel made between the caller's
        decision and the write. Rows for which ``still(entry_id)`` is false (a newer flush
        will write them) or that are gone are skipped. ``digests``: the sha256 of the bytes
        flushed (entry id → hex), which the upload then finds in the staging file or fails
        the entry (bytes a crash of the machine cut short are never sent); without one the
        upload hashes what it finds. One transaction."""
        digests = digests or {}
        with self._write() as db:
            now = time.time()
            for entry_id, size in sizes.items():
                if still(entry_id):
                    _apply_flush(db, entry_id, size, digests.get(entry_id), now)

    def defer_flushed(self, flushes: Mapping[str, tuple[int, int, str | None]],
                      fds: Mapping[str, int] | None = None) -> None:
        """``record_flushed`` without a commit of its own (the mount's close): entry id →
        (flush number, size, sha256). Each flush is written beside its bytes first, as the
        extended attribute ``user.pictofs.flushed`` of the staging file (one
        ``fsetxattr``: ``fds`` has the writer's descriptor of it, else it is opened), so it
        survives a crash of the daemon at once; the row follows with the next commit of any
        kind (the group commit at the latest, which also makes it durable), and ``get`` and
        ``entries`` show it until then. A restart finds a flush its row missed in the
        attribute (``recover_flushes``). A flush older than one already kept for the same
        entry (two handles closed at once) is passed over. Where the staging folder takes no
        user xattrs, the flushes are committed at once, as ``record_flushed``."""
        if self._marks:
            self._mark_flushes(flushes, fds or {})
        if not self._marks:  # none here, or found out just now
            self.record_flushed({e: size for e, (_n, size, _h) in flushes.items()},
                                digests={e: h for e, (_n, _s, h) in flushes.items() if h})

    def _mark_flushes(self, flushes: Mapping[str, tuple[int, int, str | None]],
                      fds: Mapping[str, int]) -> None:
        """``defer_flushed``'s marks and kept flushes; stops at a folder without xattrs."""
        with self._unwritten_lock:
            for entry_id, (number, size, sha256) in flushes.items():
                kept = self._unflushed.get(entry_id)
                if kept is not None and kept[0] > number:
                    continue
                unwritten = self._unwritten.get(entry_id)
                mark = _flush_mark(self._incarnation, size, sha256, unwritten)
                if not self._set_mark(entry_id, mark, fds.get(entry_id)):
                    break  # no user xattrs here: the caller commits them
                self._unflushed[entry_id] = (number, size, sha256)

    def _set_mark(self, entry_id: str, mark: bytes, fd: int | None) -> bool:
        """Write a flush beside its bytes; False (and flushes commit from now on) where the
        filesystem has no user xattrs. A full disk is ``NoSpace``."""
        with self._no_space("recording a flush"):
            try:
                if fd is not None:
                    os.setxattr(fd, FLUSH_XATTR, mark)
                else:
                    os.setxattr(self.staging_path(entry_id), FLUSH_XATTR, mark)
                return True
            except OSError as exc:
                if exc.errno not in _NO_XATTRS:
                    raise
        log.info("%s takes no user xattrs: every close commits the journal",
                 self.staging_dir)
        self._marks = False
        return False

    def clear_flush_marks(self, entry_ids: Iterable[str]) -> None:
        """Forget the flushes written beside these entries' bytes (their row says more now:
        failed, ``fail_staged``), so a restart does not take them for newer."""
        for entry_id in entry_ids:
            try:
                os.removexattr(self.staging_path(entry_id), FLUSH_XATTR)
            except OSError:
                pass  # none, or no staging file

    def recover_flushes(self) -> list[str]:
        """At resume, before anything reads the rows: the flushes a crash of the daemon
        (kill -9) left beside the bytes only (``defer_flushed``) are written into their rows,
        and a staging file whose row was never written gets one, named by the path recorded
        with it. Only flushes of this journal count: a journal removed or emptied leaves
        its staging files unaccounted for, kept aside (``keep_aside``). A row that is done
        or cancelled, or that records the same flush, is left as it is. Returns the entry
        ids recovered."""
        marks: dict[str, tuple[int, str | None, str | None, float | None]] = {}
        for name in self.staging_names():
            mark = _get_mark(self.staging_path(name), self._incarnation)
            if mark is not None:
                marks[name] = mark
        if not marks:
            return []
        rows = {e.id: e for e in self.entries()}
        now = time.time()
        new: list[tuple[Any, ...]] = []
        flushes: dict[str, tuple[int, str | None]] = {}
        for entry_id, (size, sha256, replaced_id, mtime) in marks.items():
            entry = rows.get(entry_id)
            if entry is None:
                path = _get_name(self.staging_path(entry_id))
                if not path:
                    continue
                folder, filename = split_path(path)
                new.append((entry_id, folder, filename, INITIAL, replaced_id, mtime, now, now))
            elif entry.cancelled or entry.state == JobState.DONE or (
                    entry.flushed and (entry.size, entry.sha256) == (size, sha256)):
                continue
            flushes[entry_id] = (size, sha256)
        if flushes:
            with self._write() as db:
                _insert_staged(db, new)
                for entry_id, (size, sha256) in flushes.items():
                    _apply_flush(db, entry_id, size, sha256, now)
        return sorted(flushes)

    def delete(self, entry_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))

    def record_registered(self, entry_id: str, image_id: str) -> Entry:
        """The entry is done as ``image_id``; its mtime (if a writer set one) now belongs to
        that image. One transaction."""
        self.record_registered_many({entry_id: image_id})
        return self._require(entry_id)

    def record_registered_many(self, image_ids: Mapping[str, str]) -> None:
        """``record_registered`` of many entries (entry id → image id), one transaction."""
        now = time.time()
        with self._write() as db:
            for entry_id, image_id in image_ids.items():
                _check_state_write(db, entry_id, JobState.DONE)
                db.execute("UPDATE entries SET state = ?, step = ?, "
                           "image_id = ?, error = NULL, updated = ? WHERE id = ?",
                           (JobState.DONE, Step.REGISTERED, image_id, now, entry_id))
                db.execute("INSERT OR REPLACE INTO mtimes (image_id, mtime) SELECT image_id, "
                           "mtime FROM entries WHERE id = ? AND mtime IS NOT NULL", (entry_id,))

    def set_entry_mtime(self, entry_id: str, mtime: float | None) -> None:
        """Record the mtime a writer set (None: forget it); an entry already registered
        passes it to its image. An entry whose row is still deferred (``add_many``) takes it
        into that row, and into its flush written beside the bytes (``defer_flushed``), so
        that a crash of the daemon keeps it as it keeps the flush: no commit of its own
        (``rsync`` sets the mtime of every file it writes, and its rename makes the upload)."""
        if self._defer_mtime(entry_id, mtime):
            return
        with self._write() as db:
            db.execute("UPDATE entries SET mtime = ?, updated = ? WHERE id = ?",
                       (mtime, time.time(), entry_id))
            if mtime is None:
                return
            db.execute("INSERT OR REPLACE INTO mtimes (image_id, mtime) SELECT image_id, mtime"
                       " FROM entries WHERE id = ? AND image_id IS NOT NULL", (entry_id,))

    def _defer_mtime(self, entry_id: str, mtime: float | None) -> bool:
        """``set_entry_mtime`` of a deferred row, kept in memory with it (and rewritten into
        its flush's mark, when it has one); False when its row is written already. Under the
        write lock: no commit takes the rows between the look and the change."""
        with self._lock, self._unwritten_lock:
            unwritten = self._unwritten.get(entry_id)
            if unwritten is None:
                return False
            changed = replace(unwritten, mtime=mtime)
            flush = self._unflushed.get(entry_id)
            if flush is not None and self._marks:
                _number, size, sha256 = flush
                mark = _flush_mark(self._incarnation, size, sha256, changed)
                try:
                    if not self._set_mark(entry_id, mark, None):
                        return False  # no user xattrs here after all: committed
                except OSError:
                    return False  # no staging file any more: committed, as before
            self._unwritten[entry_id] = changed
            return True

    def delete_done(self, before: float | None = None) -> int:
        """Forget done entries (updated before ``before``, or all); returns how many."""
        query, args = "DELETE FROM entries WHERE state = ?", (JobState.DONE,)
        if before is not None:
            query, args = query + " AND updated < ?", (*args, before)
        with self._write() as db:
            return db.execute(query, args).rowcount

    # ---------------------------------------------------------------- mtimes

    def set_mtime(self, image_id: str, mtime: float) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO mtimes (image_id, mtime) VALUES (?, ?)",
                       (image_id, mtime))

    def mtime(self, image_id: str) -> float | None:
        with self._read_lock:
            row = self._reader.execute("SELECT mtime FROM mtimes WHERE image_id = ?",
                                       (image_id,)).fetchone()
        return row[0] if row else None

    def mtimes(self) -> dict[str, float]:
        with self._read_lock:
            return dict(self._reader.execute("SELECT image_id, mtime FROM mtimes").fetchall())

    # ---------------------------------------------------------------- converted names

    def remember_converted(self, source: Converted) -> None:
        """``source.name`` written in ``source.folder`` became image ``source.image_id``
        under another name (the service converted it). An image has one such name: one
        remembered before for it (a rename) is forgotten."""
        with self._write() as db:
            db.execute(_CONVERTED_TABLE)
            db.execute("DELETE FROM converted WHERE image_id = ?", (source.image_id,))
            db.execute("INSERT OR REPLACE INTO converted (folder, name, image_id, size, sha256)"
                       " VALUES (?, ?, ?, ?, ?)", (source.folder, source.name, source.image_id,
                                                   source.size, source.sha256))

    def move_converted(self, old: str, new: str) -> None:
        """Folder ``old`` was renamed or moved to ``new``: so were the names remembered in
        it and below."""
        if not self._converted_rows(" LIMIT 1"):
            return
        with self._write() as db:
            db.execute("UPDATE converted SET folder = ? || substr(folder, ?) WHERE folder = ? "
                       "OR substr(folder, 1, ?) = ?",
                       (new, len(old) + 1, old, len(old) + 1, old + "/"))

    def converted(self) -> list[Converted]:
        """Every name remembered by ``remember_converted``."""
        return [Converted(*row) for row in self._converted_rows("")]

    def converted_at(self, folder: str, name: str) -> Converted | None:
        rows = self._converted_rows(" WHERE folder = ? AND name = ?", folder, name)
        return Converted(*rows[0]) if rows else None

    def _converted_rows(self, where: str, *args: str) -> list[tuple[Any, ...]]:
        """Rows of the ``converted`` table (none before it is created)."""
        with self._read_lock:
            try:
                return self._reader.execute(
                    "SELECT folder, name, image_id, size, sha256 FROM converted" + where,
                    args).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    # ---------------------------------------------------------------- attributes

    def set_attrs(self, entry_id: str, values: Mapping[str, Any]) -> None:
        """Keep writable attributes (``split``, ``tags``: JSON values) set on an entry not
        landed yet, with those kept before; nothing is kept for an entry that is done or
        gone. A commit as any other (the group commit makes it durable)."""
        with self._write() as db:
            row = db.execute("SELECT attrs FROM entries WHERE id = ? AND state != ?",
                             (entry_id, JobState.DONE)).fetchone()
            if row is None:
                return
            kept = {**json.loads(row[0] or "{}"), **values}
            db.execute("UPDATE entries SET attrs = ? WHERE id = ?",
                       (json.dumps(kept, ensure_ascii=False), entry_id))

    def clear_attrs(self, entry_id: str) -> None:
        """They were set on the image the entry became."""
        with self._write() as db:
            db.execute("UPDATE entries SET attrs = NULL WHERE id = ?", (entry_id,))

    def attrs(self) -> dict[str, dict[str, Any]]:
        """Entry id → the attributes kept for it (a value that is not a JSON object, which
        only damage makes, is left out with a warning)."""
        with self._read_lock:
            rows = self._reader.execute("SELECT id, attrs, folder, filename FROM entries "
                                        "WHERE attrs IS NOT NULL").fetchall()
        kept = {}
        for entry_id, value, folder, filename in rows:
            try:
                values = json.loads(value)
            except ValueError:
                values = None
            if isinstance(values, dict):
                kept[entry_id] = values
            else:
                log.warning("%s/%s: the split/tags kept in the upload journal cannot be read; "
                            "the file uploads without them", folder.rstrip("/"), filename)
        return kept

    # ---------------------------------------------------------------- staging files

    def staging_path(self, entry_id: str) -> Path:
        return self.staging_dir / entry_id

    def create_staging_files(self, entry_ids: Iterable[str], sync: bool = True,
                             paths: Iterable[str] | None = None,
                             keep_open: bool = False) -> list[int]:
        """An empty 0600 staging file for each entry, durable in its folder by one fsync of
        the folder; ``sync=False`` leaves that fsync to ``sync_staging_files`` (the entries'
        first flush). ``paths``: the path each is written as, recorded beside its bytes
        (``name_staging_file``). ``keep_open``: each file is opened for reading and writing
        and its descriptor returned (the caller's to close), so the writer does not open it
        a second time; else they are closed and nothing is returned."""
        opened: list[int] = []
        flags = os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | (os.O_RDWR if keep_open
                                                         else os.O_WRONLY)
        with self._no_space("creating a staging file"):
            entry_ids = list(entry_ids)
            named = list(paths) if paths is not None else [None] * len(entry_ids)
            try:
                for entry_id, path in zip(entry_ids, named):
                    fd = os.open(self.staging_path(entry_id), flags, 0o600)
                    try:
                        if path is not None:
                            _set_name(fd, path)
                    finally:
                        if keep_open:
                            opened.append(fd)
                        else:
                            os.close(fd)
                    with self._folder_lock:
                        self._created += 1
            except BaseException:
                for fd in opened:
                    os.close(fd)
                raise
        if sync:
            self.sync_staging_folder()
        return opened

    def sync_staging_files(self, entry_ids: Iterable[str], missing_ok: bool = False) -> None:
        """Make the staged bytes of these entries durable, and their staging files' folder
        entries (a flush that returned can be resumed). ``missing_ok``: a staging file gone
        meanwhile (uploaded and removed, or dropped) is passed over."""
        with self._no_space("writing the staged bytes"):
            for entry_id in entry_ids:
                try:
                    fd = os.open(self.staging_path(entry_id), os.O_RDONLY)
                except FileNotFoundError:
                    if not missing_ok:
                        raise
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.sync_staging_folder()

    def make_durable(self, entry_ids: Iterable[str]) -> None:
        """The group commit: the staged bytes of these entries, the staging folder and every
        commit made so far reach the disk, so they survive a crash of the machine. One
        ``syncfs`` of the journal's filesystem does it all (the staging files are in the
        journal's folder); where there is none, each staging file still there, the folder
        and the WAL are fsync'd (one WAL fsync covers every earlier commit: the WAL is
        written in order)."""
        if self._unwritten or self._unflushed:  # rows still kept in memory: written first
            with self._write():
                pass
        with self._no_space("making the staged bytes durable"):
            if sync_filesystem(self.directory):
                return
        self.sync_staging_files(entry_ids, missing_ok=True)
        with self._write(durable=True) as db:  # the WAL is fsync'd up to here
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('committed', ?)",
                       (repr(time.time()),))

    def sync_staging_folder(self) -> None:
        """fsync the staging folder, unless a folder fsync already covers every staging file
        created so far (one fsync then serves many files)."""
        with self._folder_lock:
            created = self._created
            if self._folder_synced >= created:
                return
        with self._no_space("writing the staging folder"):
            fsync_dir(self.staging_dir)
        with self._folder_lock:  # every file counted in `created` existed before the fsync
            self._folder_synced = max(self._folder_synced, created)

    def remove_staging_file(self, entry_id: str, sync: bool = True) -> bool:
        """Remove an entry's staging file; ``sync=False`` skips the folder fsync, for a file
        whose reappearance after a crash is harmless (a done entry's: a restart removes it)."""
        try:
            self.staging_path(entry_id).unlink()
        except FileNotFoundError:
            return False
        if sync:
            fsync_dir(self.staging_dir)
        return True

    def staging_names(self) -> list[str]:
        return sorted(p.name for p in self.staging_dir.iterdir() if p.is_file())

    def name_staging_file(self, entry_id: str, path: str) -> None:
        """Record the path an entry is written as beside its bytes (after a rename), so
        that the file is still known by name if its row is ever lost."""
        try:
            fd = os.open(self.staging_path(entry_id), os.O_RDONLY)
        except OSError:
            return  # an entry uploaded from its source has no staging file
        try:
            _set_name(fd, path)
        finally:
            os.close(fd)

    def keep_aside(self, name: str) -> Path:
        """Move a staging file no row accounts for into ``quarantine/``, under the path it
        was written as when that was recorded (made unique), else its entry id."""
        source = self.staging_path(name)
        recorded = _get_name(source)
        parts = [p for p in (recorded or "").split("/") if p not in ("", ".", "..")]
        target = self.directory / QUARANTINE / Path(*parts) if parts \
            else self.directory / QUARANTINE / name
        private_dir(self.directory / QUARANTINE)
        private_dirs(self.directory / QUARANTINE, target.parent)
        if target.exists():
            target = target.with_name(f"{target.stem}.{name[:8]}{target.suffix}")
        os.rename(source, target)
        fsync_dir(self.staging_dir)
        fsync_dir(target.parent)
        return target

    # ---------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _no_space(self, doing: str) -> Iterator[None]:
        """A full disk met while ``doing`` something is ``NoSpace`` (any other error is
        raised as it is)."""
        try:
            yield
        except (OSError, sqlite3.Error) as exc:
            if not disk_full(exc):
                raise
            raise NoSpace(f"the state disk is full ({self.directory}): {doing} failed: "
                          f"{exc.strerror if isinstance(exc, OSError) else exc}") from None

    @contextlib.contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One committed transaction under the lock: written to the WAL, not fsync'd (the
        group commit does that, ``make_durable``) unless ``durable``. The rows ``add_many``
        deferred are written first, in it. A full disk rolls it back (the deferred rows
        wait for the next one) and raises ``NoSpace``."""
        with self._lock, self._no_space("a journal commit"):
            with self._unwritten_lock:
                unwritten = list(self._unwritten.values())
                unflushed = dict(self._unflushed)
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")  # WAL: this commit fsyncs it
            try:
                with self._db:
                    _insert_staged(self._db, [_staged_row(e) for e in unwritten])
                    now = time.time()
                    for entry_id, (_number, size, sha256) in unflushed.items():
                        _apply_flush(self._db, entry_id, size, sha256, now)
                    yield self._db
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            if unwritten or unflushed:  # committed: the database shows them from now on
                with self._unwritten_lock:
                    for entry in unwritten:
                        del self._unwritten[entry.id]
                    for entry_id, kept in unflushed.items():
                        if self._unflushed.get(entry_id) == kept:  # not a newer flush
                            del self._unflushed[entry_id]

    def _require(self, entry_id: str) -> Entry:
        entry = self.get(entry_id)
        if entry is None:
            raise KeyError(entry_id)
        return entry

    def _init_meta(self, **identity: str) -> None:
        """The schema, the version, and the identity the journal is used with now: the
        base URL and key fingerprint are updated (a port or key change is not a new
        journal), the dataset id is the folder's and never changes."""
        with self._lock:
            self._db.executescript(_SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('version', ?)",
                       (str(VERSION),))
            # names this journal in the flushes written beside staged bytes (FLUSH_XATTR):
            # a journal made anew (the old one removed or emptied) does not trust them
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('incarnation', ?)",
                       (uuid.uuid4().hex,))
            self._incarnation = str(db.execute(
                "SELECT value FROM meta WHERE key = 'incarnation'").fetchone()[0])
            for key, value in identity.items():
                if not value:
                    continue
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] != value and key == "dataset_id":
                    raise ConfigError(f"{self.directory}: the journal of dataset {row[0]}, "
                                      f"not of {value}; refusing to use it")
                if row is not None and row[0] != value and key == "base_url":
                    log.info("the upload journal of %s was last used with %s; now %s",
                             identity.get("dataset_id", "?"), row[0], value)
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           (key, value))


def _set_name(fd: int, path: str) -> None:
    """Best effort: a filesystem without user xattrs keeps the bytes unnamed."""
    try:
        os.setxattr(fd, NAME_XATTR, path.encode("utf-8", "surrogateescape"))
    except OSError:
        pass


def _get_name(path: Path) -> str | None:
    try:
        return os.getxattr(path, NAME_XATTR).decode("utf-8", "surrogateescape")
    except OSError:
        return None


def _adopt_legacy(state_dir: Path, dataset_id: str, folder: Path) -> None:
    """Rename the first journal an older pictofs kept for ``dataset_id`` (under a digest
    of base URL and key) into ``folder``; the others stay and are reported as stranded."""
    for info in find_journals(state_dir):
        if info.dataset_id != dataset_id or info.folder.name == folder.name:
            continue
        try:
            with contextlib.closing(take_lock(info.folder / "journal.lock")):
                os.rename(info.folder, folder)
        except (OSError, ConfigError) as exc:
            log.warning("cannot adopt the upload journal %s of dataset %s: %s",
                        info.folder, dataset_id, exc)
            continue
        fsync_dir(folder.parent)
        log.info("adopted the upload journal %s of dataset %s (%d pending)", info.folder.name,
                 dataset_id, info.live)
        return


def _apply_flush(db: sqlite3.Connection, entry_id: str, size: int, sha256: str | None,
                 now: float) -> None:
    """One flush written into its row (``record_flushed``); ``Journal._with_flush`` shows a
    deferred one the same way. The step goes back to none, or stays archived for a replace
    past that step; the state: failed → staged (an allowed transition, the only one this
    write makes). A missing row (removed since) is passed over."""
    db.execute("UPDATE entries SET flushed = 1, size = ?, sha256 = ?, "
               "url_key = NULL, register_key = NULL, error = NULL, "
               "step = CASE WHEN replaced_id IS NOT NULL AND step != ? "
               "THEN ? ELSE ? END, "
               "state = CASE WHEN state = ? THEN ? ELSE state END, "
               "updated = ? WHERE id = ?",
               (size, sha256, Step.NONE, Step.ARCHIVED, Step.NONE,
                JobState.FAILED, JobState.STAGED, now, entry_id))


# errnos of a filesystem without user xattrs
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})


def _flush_mark(incarnation: str, size: int, sha256: str | None,
                unwritten: Entry | None) -> bytes:
    """The ``FLUSH_XATTR`` value: ``incarnation size sha256 replaced_id mtime`` ('-' for
    none; ``mtime`` as ``repr`` writes it). ``unwritten``: the entry's row while it is
    deferred, whose replaced image and mtime the mark carries (a row in the database has
    them already)."""
    replaced_id = unwritten.replaced_id if unwritten is not None else None
    mtime = unwritten.mtime if unwritten is not None else None
    return (f"{incarnation} {size} {sha256 or '-'} {replaced_id or '-'} "
            f"{'-' if mtime is None else repr(mtime)}").encode("ascii")


def _get_mark(path: Path, incarnation: str
              ) -> tuple[int, str | None, str | None, float | None] | None:
    """``(size, sha256, replaced_id, mtime)`` of the flush written beside ``path``'s bytes
    by this journal (``incarnation``); None when there is none, or another journal wrote
    it. A mark of four fields (before the mtime was carried) has no mtime."""
    try:
        parts = os.getxattr(path, FLUSH_XATTR).decode("ascii").split(" ")
    except (OSError, UnicodeDecodeError):
        return None
    if len(parts) not in (4, 5) or parts[0] != incarnation or not parts[1].isdigit():
        return None
    mtime = None
    if len(parts) == 5 and parts[4] != "-":
        try:
            mtime = float(parts[4])
        except ValueError:
            return None
    return (int(parts[1]), None if parts[2] == "-" else parts[2],
            None if parts[3] == "-" else parts[3], mtime)


def _staged_row(entry: Entry) -> tuple[Any, ...]:
    """A row deferred by ``add_many``, as ``_insert_staged`` writes it."""
    return (entry.id, entry.folder, entry.filename, entry.state, entry.replaced_id,
            entry.mtime, entry.created, entry.updated)


def _insert_staged(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """New ``staged`` rows: ``(id, folder, filename, state, replaced_id, mtime, created,
    updated)`` each."""
    if rows:
        db.executemany("INSERT INTO entries (id, folder, filename, state, replaced_id, "
                       "mtime, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _check_columns(changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError(f"not journal columns: {sorted(unknown)}")
    if "state" in changes and changes["state"] not in set(JobState):
        raise ValueError(f"unknown state {changes['state']!r}")
    if "step" in changes and changes["step"] not in set(Step):
        raise ValueError(f"unknown step {changes['step']!r}")


def _check_state_write(db: sqlite3.Connection, entry_id: str, new: JobState | str) -> None:
    """``check_transition`` from the row's state (in the writing transaction) to ``new``;
    nothing to check for a missing row (the write finds no row either)."""
    row = db.execute("SELECT state FROM entries WHERE id = ?", (entry_id,)).fetchone()
    if row is not None:
        check_transition(row[0], new)


def _entry(row: tuple[Any, ...]) -> Entry:
    values = dict(zip(_COLUMNS, row))
    values["state"] = JobState(values["state"])
    values["step"] = Step(values["step"])
    values["flushed"] = bool(values["flushed"])
    values["cancelled"] = bool(values["cancelled"])
    return Entry(**values)
