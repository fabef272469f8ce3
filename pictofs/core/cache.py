"""The image cache (filesystem spec §4): complete images on local disk, keyed by image id.

This module owns the cache folder of one (base URL, dataset id) pair and is the only user of
diskcache in pictofs. Layout under ``root``::

    <digest of base URL + dataset id>/
        origin.json           which base URL and dataset the folder belongs to
        data/<id>             complete images (owned by pictofs, never by diskcache)
        partial/<id>.<pid>.<token>   images being written (discarded at start when <pid> is dead)
        pins/<id>.<pid>       an entry open or downloading in process <pid>
        index/                diskcache: one record per id (size, sha256, last open, complete)

Images never change for an id, so an entry is written once and only ever dropped. Rules:

- The cap is checked on insert: least recently *opened* entries that are complete and not
  pinned by any live process are evicted until the new entry fits. Pinned entries are never
  evicted, so the cache can be over its cap while they stay pinned.
- The sha256 recorded at insert is checked on the first open of each entry by this instance
  (one instance per mount); a mismatch drops the entry and the open reports a miss.
- A failed write (ENOSPC, EIO) drops the entry with one log line; the caller keeps its bytes.
- A cache folder that cannot be set up at all (a full or read-only disk) gives a
  ``NullCache`` (``open_cache``, one log line): nothing is cached, every read is streamed.
  An index that becomes unreadable later (sqlite cannot open it on a full disk) makes opens
  misses and ``stats`` zeros, never an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Callable

import diskcache

from pictofs.core.pins import PinTable, pid_alive

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_HASH_BLOCK = 1 << 20

Opener = Callable[[Path], BinaryIO]


class CacheWriteFailed(Exception):
    """A cache file could not be written; the entry is dropped and was logged once."""


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


@dataclass(frozen=True)
class _Record:
    """One index row. ``pid`` is the process that last wrote it (only meaningful while
    ``complete`` is false: an insert in progress)."""

    size: int
    sha256: str
    last_open: float
    complete: bool
    pid: int

    def to_dict(self) -> dict[str, object]:
        return {"size": self.size, "sha256": self.sha256, "last_open": self.last_open,
                "complete": self.complete, "pid": self.pid}

    @classmethod
    def from_dict(cls, data: object) -> _Record | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(int(data["size"]), str(data["sha256"]), float(data["last_open"]),
                       bool(data["complete"]), int(data["pid"]))
        except (KeyError, TypeError, ValueError):
            return None


def file_name(image_id: str) -> str:
    """The file name of an image id: the id itself when it is a safe name, else a digest."""
    if _SAFE_NAME.fullmatch(image_id):
        return image_id
    return "x-" + hashlib.sha256(image_id.encode()).hexdigest()


def folder_name(base_url: str, dataset_id: str) -> str:
    """The subfolder of one (base URL, dataset id) pair: a filesystem-safe digest."""
    origin = f"{base_url.rstrip('/')}\n{dataset_id}"
    return hashlib.sha256(origin.encode()).hexdigest()[:32]


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
        self._index = diskcache.Cache(str(self.folder / "index"), eviction_policy="none")
        # guards _verified (ids whose sha256 this instance has checked), _hits and _misses
        self._lock = threading.Lock()
        self._verified: set[str] = set()
        self._hits = 0
        self._misses = 0
        self._recover()

    # -- public verbs ------------------------------------------------------------------------

    def pin(self, image_id: str) -> None:
        """Keep ``image_id`` from eviction (by any process) until the matching ``unpin``."""
        self._pins.pin(file_name(image_id))

    def unpin(self, image_id: str) -> None:
        self._pins.unpin(file_name(image_id))

    def contains(self, image_id: str) -> bool:
        """Whether a complete entry is recorded (no check of its bytes)."""
        record = self._record(image_id)
        return record is not None and record.complete

    def open_cached(self, image_id: str) -> BinaryIO | None:
        """Open a complete entry for reading and mark it recently opened; ``None`` on a miss.

        The first open of an entry by this instance checks its sha256; a mismatch drops the
        entry (one log line) and is a miss. The caller should hold a pin while reading.
        """
        handle = self._open_valid(image_id)
        with self._lock:
            if handle is None:
                self._misses += 1
            else:
                self._hits += 1
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
        self._index.close()

    # -- opening -----------------------------------------------------------------------------

    def _open_valid(self, image_id: str) -> BinaryIO | None:
        try:
            record = self._record(image_id)
        except (OSError, sqlite3.Error) as exc:  # a full disk: sqlite cannot open the index
            log.debug("cache: cannot look up image %s: %s; a miss", image_id, exc)
            return None
        if record is None or not record.complete:
            return None
        try:
            handle: BinaryIO = open(self.data_path(image_id), "rb", buffering=0)
        except FileNotFoundError:
            self._drop_if_unchanged(image_id, record)  # evicted by another process
            return None
        except OSError as exc:
            log.warning("cache: dropping image %s: cannot open it (%s)", image_id,
                        exc.strerror or exc)
            self._drop_if_unchanged(image_id, record)
            return None
        try:
            problem = self._check(image_id, handle, record)
        except OSError as exc:
            problem = f"cannot read it ({exc.strerror or exc})"
        if problem:
            handle.close()
            log.warning("cache: dropping image %s: %s", image_id, problem)
            self._drop_if_unchanged(image_id, record)
            return None
        self._touch(image_id, record)
        return handle

    def _check(self, image_id: str, handle: BinaryIO, record: _Record) -> str | None:
        """Size on every open, sha256 on the first open by this instance."""
        size = os.fstat(handle.fileno()).st_size
        if size != record.size:
            return f"size {size} differs from the recorded {record.size}"
        with self._lock:
            if image_id in self._verified:
                return None
        digest = _sha256_of(handle)
        if digest != record.sha256:
            return "sha256 differs from the one recorded at insert"
        with self._lock:
            self._verified.add(image_id)
        return None

    def _touch(self, image_id: str, record: _Record) -> None:
        """Record the open for LRU order (on open only, never per read). A full disk only
        costs the LRU update."""
        try:
            with self._index.transact():
                current = self._record(image_id)
                if current is not None and current.sha256 == record.sha256:
                    self._put(image_id, replace(current, last_open=self._clock()))
        except (OSError, sqlite3.Error) as exc:
            log.debug("cache: cannot record the open of image %s: %s", image_id, exc)

    # -- inserting ---------------------------------------------------------------------------

    def _insert(self, image_id: str, partial: Path, size: int, sha256: str) -> bool:
        """Move a written partial file into place, evicting to stay under the cap.
        False (logged once, partial file dropped) when it cannot be stored."""
        try:
            with self._index.transact():
                self._insert_locked(image_id, partial, size, sha256)
        except (OSError, sqlite3.Error) as exc:
            partial.unlink(missing_ok=True)
            log.warning("cache: cannot store image %s (%s); not caching it", image_id,
                        getattr(exc, "strerror", None) or exc)
            return False
        with self._lock:
            self._verified.discard(image_id)
        return True

    def _insert_locked(self, image_id: str, partial: Path, size: int, sha256: str) -> None:
        current = self._record(image_id)
        if current is not None and current.complete and current.sha256 == sha256 \
                and self.data_path(image_id).exists():
            partial.unlink(missing_ok=True)  # another process stored it meanwhile
            return
        self._make_room(size, image_id)
        now = self._clock()
        self._put(image_id, _Record(size, sha256, now, False, os.getpid()))
        try:
            os.replace(partial, self.data_path(image_id))
        except OSError:
            self._index.delete(image_id)
            raise
        self._put(image_id, _Record(size, sha256, now, True, os.getpid()))

    def _make_room(self, size: int, inserting: str) -> None:
        """Evict least recently opened, unpinned, complete entries until ``size`` fits.
        Runs inside the index transaction, so two processes never evict at once."""
        records = [(i, r) for i, r in self._records() if r.complete and i != inserting]
        total = sum(r.size for _i, r in records)
        if total + size <= self.cap_bytes:
            return
        pinned = self._pins.pinned_names()
        for image_id, record in sorted(records, key=lambda item: item[1].last_open):
            if total + size <= self.cap_bytes:
                break
            if file_name(image_id) in pinned:
                continue
            self._remove(image_id)
            total -= record.size
            log.debug("cache: evicted image %s (%d bytes)", image_id, record.size)

    # -- index helpers -----------------------------------------------------------------------

    def _record(self, image_id: str) -> _Record | None:
        return _Record.from_dict(self._index.get(image_id))

    def _put(self, image_id: str, record: _Record) -> None:
        self._index.set(image_id, record.to_dict())

    def _records(self) -> list[tuple[str, _Record]]:
        rows = []
        for key in list(self._index):
            record = _Record.from_dict(self._index.get(key))
            if isinstance(key, str) and record is not None:
                rows.append((key, record))
        return rows

    def _remove(self, image_id: str) -> None:
        """Forget an entry: the record first (no one opens it after), then the file."""
        self._index.delete(image_id)
        self.data_path(image_id).unlink(missing_ok=True)
        with self._lock:
            self._verified.discard(image_id)

    def _drop_if_unchanged(self, image_id: str, seen: _Record) -> None:
        """Drop an entry found bad, unless another process replaced it meanwhile."""
        try:
            with self._index.transact():
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
            pid = _pid_of_partial(path.name)
            if pid is None or not pid_alive(pid):
                path.unlink(missing_ok=True)
        with self._index.transact():
            known = set()
            for image_id, record in self._records():
                if not record.complete and not pid_alive(record.pid):
                    self._remove(image_id)
                else:
                    known.add(file_name(image_id))
            for path in self._data.iterdir():
                if path.name not in known:
                    path.unlink(missing_ok=True)


class NullCache:
    """The cache of a mount whose cache folder could not be set up: it holds nothing, every
    open is a miss and every write is refused, so readers are served from the stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _misses
        self._misses = 0

    def pin(self, image_id: str) -> None:
        pass

    def unpin(self, image_id: str) -> None:
        pass

    def contains(self, image_id: str) -> bool:
        return False

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


class CacheWriter:
    """One entry being written. The writing thread calls ``write`` then ``commit`` or
    ``discard``; ``read`` may be called from any thread for bytes already written; ``close``
    (once, after the last read) releases the file and the pin."""

    def __init__(self, cache: ImageCache, image_id: str, path: Path, handle: BinaryIO) -> None:
        self.image_id = image_id
        self._cache = cache
        self._path = path
        self._handle = handle
        self._sha = hashlib.sha256()
        self._written = 0
        self._closed = False

    @property
    def written(self) -> int:
        return self._written

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``. On failure the entry is dropped (one log line) and
        ``CacheWriteFailed`` is raised; bytes written before stay readable until ``close``."""
        view = memoryview(chunk)
        try:
            while view:
                count = self._handle.write(view)
                if not count:
                    raise OSError("short write")
                view = view[count:]
        except OSError as exc:
            self.discard()
            log.warning("cache: cannot write image %s (%s); not caching it, serving it from "
                        "memory", self.image_id, exc.strerror or exc)
            raise CacheWriteFailed(str(exc)) from exc
        self._sha.update(chunk)
        self._written += len(chunk)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._handle.fileno(), size, offset)

    def commit(self) -> bool:
        """Insert the entry (sha256 of the bytes written); False if it could not be stored."""
        return self._cache._insert(self.image_id, self._path, self._written,
                                   self._sha.hexdigest())

    def discard(self) -> None:
        """Drop the partial file (an open descriptor keeps its bytes readable)."""
        self._path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._handle.close()
        self._cache.unpin(self.image_id)


def _sha256_of(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(handle.fileno(), _HASH_BLOCK, offset)
        if not block:
            return digest.hexdigest()
        digest.update(block)
        offset += len(block)


def _pid_of_partial(name: str) -> int | None:
    """``<id>.<pid>.<token>`` → pid."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])
