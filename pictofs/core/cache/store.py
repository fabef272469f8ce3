"""The image cache (filesystem spec §4): complete images on local disk, keyed by image id.

This module owns the cache folder of one (base URL, dataset id) pair and is the only user of
diskcache in pictofs; one entry's record, file names, checks and writer are in
``entry``. Layout under ``root``::

    <digest of base URL + dataset id>/
        origin.json           which base URL and dataset the folder belongs to
        data/<id>             complete images (owned by pictofs, never by diskcache)
        partial/<id>.<pid>.<token>   images being written (discarded at start when <pid> is dead)
        pins/<id>.<pid>       an entry open or downloading in process <pid>
        index/                diskcache: one record per id (size, sha256, last open, complete)

Images never change for an id, so an entry is written once and only ever dropped. Rules:

- The cap is checked on insert: least recently *opened* entries that are complete and not
  pinned by any live process are evicted until the new entry fits. Pinned entries are never
  evicted, so the cache can be over its cap while they stay pinned. An image fetched ahead
  of its reader (read-ahead) is inserted ``within_cap`` only: when evicting every unpinned
  entry would not make room, nothing is evicted and it is not cached; ``no_room_ahead``
  tells before its download whether it has a chance. Until this instance opens it, such an
  entry is evicted by this instance only after every other candidate, and never to make
  room for another image fetched ahead (one read-ahead evicting the next would download
  images twice in a small cache); it holds no pin, so other processes evict it as usual.
- Every open checks the entry's size. The first open of an entry by this instance (one
  instance per mount) also compares the data file's inode, mtime and ctime with those
  recorded at insert: unchanged, the entry is trusted; changed (the file was written to,
  replaced or touched since), its sha256 is computed and compared with the one recorded at
  insert, and a mismatch drops the entry and the open reports a miss. Entries recorded
  without that stamp (by an older version) are hashed.
- Later opens of an entry this instance checked use the record it keeps in memory (the
  file's size is still checked on every open), and their LRU times are written to the index
  in batches: before an insert that must evict (in its transaction, so eviction sees them),
  on the first open ``OPENS_FLUSH_SECONDS`` after the last batch, and at ``close``. Other
  processes see them late, which only makes their LRU order less exact. A hit then costs no
  index access: diskcache keeps one sqlite connection per thread (in a thread-local), and
  Python gives each FUSE callback on libfuse's threads a fresh thread state, so there every
  index access opens a new connection (and sets its pragmas). The first open of an entry
  this instance inserted itself (a cold read: the download's worker inserted it) checks the
  file against the record it wrote, kept in memory until then (at most
  ``INSERTED_REMEMBERED`` of them), with no index access either.
- An insert is one index transaction of a few statements: the entry's record (written
  complete, after its file is in place: a crash before the commit leaves a data file no
  record names, which the next start removes) and the total. Records never expire, so
  diskcache's culling of expired keys on every write is off (``cull_limit=0``). The
  threads of one process take their transactions in turn on a lock (``_transaction``),
  not on sqlite's write lock, whose waiters sleep and poll.
- The index keeps the total size of the complete entries (``_TOTAL_KEY``, an int: never an
  image id, and kept by diskcache without pickling), updated in the
  same transactions as the records, so an insert that fits reads one row, not all of them.
- A failed write (ENOSPC, EIO) drops the entry with one log line; the caller keeps its bytes.
- A cache folder that cannot be set up at all (a full or read-only disk) gives a
  ``NullCache`` (``open_cache``, one log line): nothing is cached, every read is streamed.
  An index that becomes unreadable later (sqlite cannot open it on a full disk) makes opens
  misses and ``stats`` zeros, never an error.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import diskcache

from pictofs.core.cache.entry import (CacheWriteFailed, CacheWriter, EntryRecord, Stamp,
                                      failure_reason, file_name, folder_name, pid_of_partial,
                                      stamp_of)
from pictofs.core.cache.pins import PinTable, pid_alive
from pictofs.hashing import sha256_file

log = logging.getLogger(__name__)

__all__ = ["CacheStats", "CacheWriteFailed", "CacheWriter", "ImageCache", "NullCache",
           "file_name", "open_cache"]

# The total's key: an int, never an image id (a str). diskcache keeps ints as they are; a
# tuple key (what earlier versions used, ``_OLD_TOTAL_KEY``) is pickled and run through
# ``pickletools.optimize`` at every get and set (7.6 µs against 0.1 µs for an int), and an
# insert reads and writes the total.
_TOTAL_KEY = 0
_OLD_TOTAL_KEY = ("total size of complete entries",)
OPENS_FLUSH_SECONDS = 30.0
INSERTED_REMEMBERED = 4096  # records of entries inserted here and not opened yet, kept
AHEAD_DISK_MARGIN = 64 * 1024 * 1024  # free disk left after an image fetched ahead

Opener = Callable[[Path], BinaryIO]


@dataclass(frozen=True)
class CacheStats:
    """What ``pictofs status`` shows about the cache."""

    size_bytes: int
    entries: int
    hits: int
    misses: int

    @property
    def hit_ratio(self) -> float:
        opens = self.hits + self.misses
        return self.hits / opens if opens else 0.0


def _open_partial(path: Path) -> BinaryIO:
    """Create a partial file for unbuffered writing (errors surface at ``write``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    return io.FileIO(fd, "r+", closefd=True)


class ImageCache:
    """The cache of one dataset on one service. Thread-safe; several processes may share
    the folder."""

    def __init__(self, root: Path, base_url: str, dataset_id: str, cap_bytes: int,
                 clock: Callable[[], float] = time.time, opener: Opener = _open_partial) -> None:
        self.folder = Path(root) / folder_name(base_url, dataset_id)
        self.cap_bytes = cap_bytes
        self._clock = clock
        self._opener = opener
        self._data = self.folder / "data"
        self._partial = self.folder / "partial"
        for folder in (self.folder, self._data, self._partial):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_origin(base_url, dataset_id)
        self._pins = PinTable(self.folder / "pins")
        self._index = diskcache.Cache(str(self.folder / "index"), eviction_policy="none",
                                      cull_limit=0)
        # this process's index transactions, one at a time (see _transaction)
        self._writing = threading.RLock()
        # guards _verified (the records of entries this instance has checked), _inserted
        # (the records it wrote, not opened since), _unopened_ahead, _opened (LRU times of
        # opens not written to the index yet), _opened_flushed, _hits and _misses
        self._lock = threading.Lock()
        self._verified: dict[str, EntryRecord] = {}
        self._inserted: dict[str, EntryRecord] = {}
        self._unopened_ahead: set[str] = set()  # fetched ahead, not opened since
        self._opened: dict[str, float] = {}
        self._opened_flushed = clock()
        self._hits = 0
        self._misses = 0
        self._recover()

    # -- public verbs ------------------------------------------------------------------------

    def pin(self, image_id: str) -> None:
        """Keep ``image_id`` from eviction (by any process) until the matching ``unpin``."""
        self._pins.pin(file_name(image_id))

    def unpin(self, image_id: str, linger: bool = False) -> None:
        """Drop a pin; ``linger``: a reader of the complete entry closed, and the entry may
        well be opened again soon, so its pin file stays a moment (``pins.LINGER_SECONDS``)."""
        self._pins.unpin(file_name(image_id), linger)

    def contains(self, image_id: str) -> bool:
        """Whether a complete entry is recorded and its file is there (no check of its
        bytes). No data file answers without the index."""
        if not self.data_path(image_id).exists():
            return False
        record = self._record(image_id)
        return record is not None and record.complete

    def open_cached(self, image_id: str) -> BinaryIO | None:
        """Open a complete entry for reading and mark it recently opened; ``None`` on a miss.

        The first open of an entry by this instance checks it (size, stamp, sha256 when the
        stamp changed); a damaged entry is dropped (one log line) and is a miss. The caller
        should hold a pin while reading.
        """
        handle = self._open_valid(image_id)
        with self._lock:
            if handle is None:
                self._misses += 1
            else:
                self._hits += 1
                self._unopened_ahead.discard(image_id)
        return handle

    def begin(self, image_id: str) -> CacheWriter:
        """Start writing an entry: a partial file, pinned until the writer is closed.
        Raises ``CacheWriteFailed`` (logged) when the file cannot be created."""
        name = file_name(image_id)
        path = self._partial / f"{name}.{os.getpid()}.{secrets.token_hex(4)}"
        self._pins.pin(name)
        try:
            handle = self._opener(path)
        except OSError as exc:
            self._pins.unpin(name)
            log.warning("cache: cannot create a cache file for image %s (%s); not caching it",
                        image_id, exc.strerror or exc)
            raise CacheWriteFailed(str(exc)) from exc
        return CacheWriter(self, image_id, path, handle)

    def has_file(self, image_id: str) -> bool:
        """Whether the data file of ``image_id`` is there: a complete entry, unchecked, with
        no index access (cheap enough for a FUSE callback). An entry this instance inserted
        or checked, and has not seen go, answers without looking at the disk: the
        read-ahead asks this of the next images at every open of a pass, and they are
        mostly its own inserts (one ``stat`` each was 7 per open of a sequential read, and
        each let another thread take the interpreter). Another process's eviction is not
        seen here; the caller only skips a read-ahead of it."""
        if image_id in self._inserted or image_id in self._verified:  # atomic look-ups
            return True
        return self.data_path(image_id).exists()

    def no_room_ahead(self, size: int, busy: int) -> str | None:
        """Why an image of ``size`` bytes should not be fetched ahead of its reader now
        (None: it may): the cache disk is nearly full, or the cap cannot take it next to the
        entries it may not evict (pinned, or fetched ahead and not opened yet) and ``busy``
        bytes of downloads in flight, which will be inserted too. Reads the index only when
        the cache is near its cap."""
        try:
            disk = os.statvfs(self.folder)
            total = self._total()
        except (OSError, sqlite3.Error) as exc:
            return f"the cache cannot be read ({exc})"
        if disk.f_bavail * disk.f_frsize < size + AHEAD_DISK_MARGIN:
            return "the cache disk is nearly full"
        if total + busy + size <= self.cap_bytes:
            return None
        pinned = self._pins.pinned_names()
        with self._lock:
            unopened = set(self._unopened_ahead)
        try:
            held = sum(r.size for i, r in self._records()
                       if r.complete and (file_name(i) in pinned or i in unopened))
        except (OSError, sqlite3.Error) as exc:
            return f"the cache cannot be read ({exc})"
        if held + busy + size > self.cap_bytes:
            return "the cache is full of images in use"
        return None

    def data_path(self, image_id: str) -> Path:
        """Where the complete entry of ``image_id`` lives (whether or not it exists)."""
        return self._data / file_name(image_id)

    def stats(self) -> CacheStats:
        size = entries = 0
        try:
            records = self._records()
        except (OSError, sqlite3.Error) as exc:  # a full disk: sqlite cannot open the index
            log.debug("cache: cannot read the index for stats: %s", exc)
            records = []
        for _image_id, record in records:
            if record.complete:
                size += record.size
                entries += 1
        with self._lock:
            return CacheStats(size, entries, self._hits, self._misses)

    def close(self) -> None:
        self._flush_opens()
        self._pins.close()
        self._index.close()

    # -- opening -----------------------------------------------------------------------------

    def _open_valid(self, image_id: str) -> BinaryIO | None:
        with self._lock:
            known = self._verified.get(image_id)
        if known is not None:
            handle = self._open_known(image_id, known)
            if handle is not None:
                return handle
            with self._lock:  # gone or changed: the full check decides
                self._verified.pop(image_id, None)
        return self._open_checked(image_id)

    def _open_known(self, image_id: str, record: EntryRecord) -> BinaryIO | None:
        """An entry this instance checked before: its file, if it still has the size of
        the record; no index access."""
        try:
            handle: BinaryIO = open(self.data_path(image_id), "rb", buffering=0)
        except OSError:
            return None
        try:
            same_size = os.fstat(handle.fileno()).st_size == record.size
        except OSError:
            same_size = False
        if not same_size:
            handle.close()
            return None
        self._note_open(image_id)
        return handle

    def _open_checked(self, image_id: str) -> BinaryIO | None:
        """The first open of an entry by this instance: its file, its record (the one this
        instance wrote when it inserted the entry, else the index's) and the checks of
        ``_check``. No data file is a miss without the index (a file is only ever in place
        with its record complete)."""
        try:
            handle: BinaryIO = open(self.data_path(image_id), "rb", buffering=0)
        except FileNotFoundError:
            return None  # not cached, or evicted (record and file go together)
        except OSError as exc:
            log.warning("cache: dropping image %s: cannot open it (%s)", image_id,
                        exc.strerror or exc)
            record = self._record_or_none(image_id)
            if record is not None:
                self._drop_if_unchanged(image_id, record)
            return None
        with self._lock:
            record = self._inserted.pop(image_id, None)
        if record is None:
            record = self._record_or_none(image_id)
        if record is None or not record.complete:
            handle.close()
            return None
        try:
            problem, stamp = self._check(handle, record)
        except OSError as exc:
            problem, stamp = f"cannot read it ({exc.strerror or exc})", record.stamp
        if problem:
            handle.close()
            log.warning("cache: dropping image %s: %s", image_id, problem)
            self._drop_if_unchanged(image_id, record)
            return None
        if stamp != record.stamp:  # hashed and found right: trust the file as it is now
            record = self._restamp(image_id, record, stamp)
        with self._lock:
            self._verified[image_id] = record
        self._note_open(image_id)
        return handle

    def _check(self, handle: BinaryIO, record: EntryRecord) -> tuple[str | None, Stamp | None]:
        """(what is wrong or None, the file's stamp): the size, then the stamp recorded at
        insert, and the sha256 when the stamp changed."""
        found = os.fstat(handle.fileno())
        if found.st_size != record.size:
            return f"size {found.st_size} differs from the recorded {record.size}", None
        stamp = stamp_of(found)
        if stamp != record.stamp and sha256_file(handle) != record.sha256:
            return "sha256 differs from the one recorded at insert", None
        return None, stamp

    def _restamp(self, image_id: str, record: EntryRecord, stamp: Stamp | None) -> EntryRecord:
        """Record the stamp of a file whose sha256 was just found right."""
        updated = replace(record, stamp=stamp)
        try:
            with self._transaction():
                current = self._record(image_id)
                if current is not None and current.sha256 == record.sha256:
                    self._put(image_id, replace(current, stamp=stamp))
        except (OSError, sqlite3.Error) as exc:
            log.debug("cache: cannot record the stamp of image %s: %s", image_id, exc)
        return updated

    def _note_open(self, image_id: str) -> None:
        """Remember the open for LRU order (on open only, never per read); written to the
        index in batches."""
        now = self._clock()
        with self._lock:
            self._opened[image_id] = now
            due = now - self._opened_flushed >= OPENS_FLUSH_SECONDS
        if due:
            self._flush_opens()

    def _flush_opens(self) -> None:
        try:
            with self._transaction():
                self._write_opens()
        except (OSError, sqlite3.Error) as exc:  # a full disk only costs the LRU update
            log.debug("cache: cannot record opens: %s", exc)

    def _write_opens(self) -> None:
        """Write the LRU times of the opens noted since the last time (inside the index
        transaction)."""
        with self._lock:
            opened, self._opened = self._opened, {}
            self._opened_flushed = self._clock()
        for image_id, when in opened.items():
            current = self._record(image_id)
            if current is not None and current.complete and current.last_open < when:
                self._put(image_id, replace(current, last_open=when))

    # -- inserting ---------------------------------------------------------------------------

    def _insert(self, image_id: str, partial: Path, size: int, sha256: str,
                within_cap: bool = False, unread: bool = False) -> bool:
        """Move a written partial file into place, evicting to stay under the cap.
        False (logged once, partial file dropped) when it cannot be stored; with
        ``within_cap``, also when it would take the cache over its cap (logged at debug).
        ``unread``: fetched ahead and nobody has read it yet (evicted last)."""
        try:
            with self._transaction():
                stored = self._insert_locked(image_id, partial, size, sha256, within_cap)
        except (OSError, sqlite3.Error, diskcache.Timeout) as exc:
            partial.unlink(missing_ok=True)
            log.warning("cache: cannot store image %s (%s); not caching it", image_id,
                        failure_reason(exc, self.folder))
            return False
        if not stored:
            partial.unlink(missing_ok=True)
            log.debug("cache: not caching image %s fetched ahead: no room under the cap",
                      image_id)
            return False
        with self._lock:
            if unread:
                self._unopened_ahead.add(image_id)
            self._verified.pop(image_id, None)
            if stored is not True:  # the record this instance wrote: its first open's check
                if len(self._inserted) >= INSERTED_REMEMBERED:
                    self._inserted.clear()  # those first opens read the index instead
                self._inserted[image_id] = stored
        return True

    def _insert_locked(self, image_id: str, partial: Path, size: int, sha256: str,
                       within_cap: bool) -> EntryRecord | bool:
        """The record written; True when another process stored the same entry meanwhile;
        False: not stored, because it does not fit ``within_cap``. The record is written
        complete once the file is in place: the transaction makes both visible together,
        and a crash before its commit leaves only a data file that no record names."""
        current = self._record(image_id)
        if current is not None and current.complete and current.sha256 == sha256 \
                and self.data_path(image_id).exists():
            partial.unlink(missing_ok=True)  # another process stored it meanwhile
            return True
        replaced = current.size if current is not None and current.complete else 0
        if replaced:
            self._add_to_total(-replaced)  # replaced below
        total = self._make_room(size, image_id, within_cap)
        if total is None:
            if replaced:
                self._add_to_total(replaced)
            return False
        target = self.data_path(image_id)
        os.replace(partial, target)
        try:
            record = EntryRecord(size, sha256, self._clock(), True, os.getpid(),
                                 stamp_of(os.stat(target)))
            self._put(image_id, record)
            self._index.set(_TOTAL_KEY, total + size)
        except BaseException:
            target.unlink(missing_ok=True)  # the transaction is rolled back: no record
            raise
        return record

    def _total(self) -> int:
        value = self._index.get(_TOTAL_KEY)
        return value if isinstance(value, int) else self._recount()

    def _add_to_total(self, change: int) -> None:
        """(Inside the index transaction.)"""
        self._index.set(_TOTAL_KEY, max(0, self._total() + change))

    def _recount(self) -> int:
        """The total from every record (start-up, or a missing total); stores it."""
        total = sum(r.size for _i, r in self._records() if r.complete)
        self._index.set(_TOTAL_KEY, total)
        return total

    def _make_room(self, size: int, inserting: str, within_cap: bool = False) -> int | None:
        """Evict least recently opened, unpinned, complete entries until ``size`` fits.
        Runs inside the index transaction, so two processes never evict at once. Reads
        every record only when something must go. With ``within_cap``, evicts nothing and
        returns None when evicting every unpinned entry would not be enough. Returns the
        total size of the complete entries once room is made (the new entry not counted)."""
        total = self._total()
        if total + size <= self.cap_bytes:
            return total
        self._write_opens()  # so that eviction goes by the latest opens
        records = [(i, r) for i, r in self._records() if r.complete and i != inserting]
        total = sum(r.size for _i, r in records)
        pinned = self._pins.pinned_names()
        with self._lock:
            unopened = set(self._unopened_ahead)
        victims = []
        # entries fetched ahead and not opened yet go last, and never for another one
        for image_id, record in sorted(records, key=lambda item: (item[0] in unopened,
                                                                  item[1].last_open)):
            if total + size <= self.cap_bytes:
                break
            if file_name(image_id) in pinned or (within_cap and image_id in unopened):
                continue
            victims.append((image_id, record.size))
            total -= record.size
        if within_cap and total + size > self.cap_bytes:
            return None
        for image_id, victim_size in victims:
            self._remove(image_id)
            log.debug("cache: evicted image %s (%d bytes)", image_id, victim_size)
        return self._total()

    # -- index helpers -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """An index transaction, after the other threads' of this process: they queue on a
        lock, woken as soon as the one before commits. Left to sqlite, a thread that finds
        the write lock taken sleeps and polls for it (1, 2, 5, 10, 25 ms...), so when many
        downloads ended together some inserts waited hundreds of milliseconds for commits
        of a millisecond. Other processes sharing the cache still meet sqlite's wait."""
        with self._writing, self._index.transact():
            yield

    def _record_or_none(self, image_id: str) -> EntryRecord | None:
        """The record, or None also when the index cannot be read (a full disk: sqlite
        cannot open it): a miss."""
        try:
            return self._record(image_id)
        except (OSError, sqlite3.Error) as exc:
            log.debug("cache: cannot look up image %s: %s; a miss", image_id, exc)
            return None

    def _record(self, image_id: str) -> EntryRecord | None:
        return EntryRecord.from_dict(self._index.get(image_id))

    def _put(self, image_id: str, record: EntryRecord) -> None:
        self._index.set(image_id, record.to_dict())

    def _records(self) -> list[tuple[str, EntryRecord]]:
        rows = []
        for key in list(self._index):
            record = EntryRecord.from_dict(self._index.get(key))
            if isinstance(key, str) and record is not None:
                rows.append((key, record))
        return rows

    def _remove(self, image_id: str) -> None:
        """Forget an entry: the record first (no one opens it after), then the file
        (inside the index transaction)."""
        record = self._record(image_id)
        self._index.delete(image_id)
        if record is not None and record.complete:
            self._add_to_total(-record.size)
        self.data_path(image_id).unlink(missing_ok=True)
        with self._lock:
            self._verified.pop(image_id, None)
            self._inserted.pop(image_id, None)
            self._unopened_ahead.discard(image_id)

    def _drop_if_unchanged(self, image_id: str, seen: EntryRecord) -> None:
        """Drop an entry found bad, unless another process replaced it meanwhile."""
        try:
            with self._transaction():
                if self._record(image_id) == seen:
                    self._remove(image_id)
        except (OSError, sqlite3.Error) as exc:
            log.debug("cache: cannot drop image %s now: %s", image_id, exc)

    # -- start-up ----------------------------------------------------------------------------

    def _write_origin(self, base_url: str, dataset_id: str) -> None:
        origin = self.folder / "origin.json"
        if origin.exists():
            return
        scratch = origin.with_name(f"origin.json.{os.getpid()}.tmp")
        scratch.write_text(json.dumps({"base_url": base_url, "dataset_id": dataset_id}) + "\n")
        os.replace(scratch, origin)

    def _recover(self) -> None:
        """Discard what a crashed process left: partial files, unfinished inserts, stale pins
        and data files that no record names."""
        self._pins.remove_stale()
        for path in self._partial.iterdir():
            pid = pid_of_partial(path.name)
            if pid is None or not pid_alive(pid):
                path.unlink(missing_ok=True)
        with self._transaction():
            known = set()
            for image_id, record in self._records():
                if not record.complete and not pid_alive(record.pid):
                    self._remove(image_id)
                else:
                    known.add(file_name(image_id))
            for path in self._data.iterdir():
                if path.name not in known:
                    path.unlink(missing_ok=True)
            self._index.delete(_OLD_TOTAL_KEY)  # an earlier version's total: recounted here
            self._recount()


class NullCache:
    """The cache of a mount whose cache folder could not be set up: it holds nothing, every
    open is a miss and every write is refused, so readers are served from the stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _misses
        self._misses = 0

    def pin(self, image_id: str) -> None:
        pass

    def unpin(self, image_id: str, linger: bool = False) -> None:
        pass

    def contains(self, image_id: str) -> bool:
        return False

    def has_file(self, image_id: str) -> bool:
        return False

    def no_room_ahead(self, size: int, busy: int) -> str | None:
        return "there is no usable cache"  # read-ahead goes to the cache or nowhere

    def open_cached(self, image_id: str) -> BinaryIO | None:
        with self._lock:
            self._misses += 1
        return None

    def begin(self, image_id: str) -> CacheWriter:
        raise CacheWriteFailed("no usable cache folder")  # logged once, by open_cache

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(0, 0, 0, self._misses)

    def close(self) -> None:
        pass


def open_cache(root: Path, base_url: str, dataset_id: str,
               cap_bytes: int) -> ImageCache | NullCache:
    """The cache of one dataset on one service, or a ``NullCache`` (one log line) when its
    folder cannot be set up (filesystem §4: a full cache disk never fails a read)."""
    try:
        return ImageCache(root, base_url, dataset_id, cap_bytes)
    except (OSError, sqlite3.Error) as exc:
        log.warning("cache: cannot use the cache folder %s (%s); images are read from the "
                    "service without caching them", root, getattr(exc, "strerror", None) or exc)
        return NullCache()
