"""One entry of the image cache on disk: its index record, its file names, the stamp and the
sha256 that check it, and the writer that creates it (``CacheWriter``). The cache itself
(``ImageCache``: opening, inserting, evicting, pins) is in ``store``, which imports this
module; the writer reaches it only through the ``WriterOwner`` protocol, so this module
imports nothing from ``store``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import diskcache

log = logging.getLogger("pictofs.core.cache.store")  # one logger for the cache's lines

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")

Stamp = tuple[int, int, int]  # (inode, mtime ns, ctime ns) of a data file


def stamp_of(result: os.stat_result) -> Stamp:
    return (result.st_ino, result.st_mtime_ns, result.st_ctime_ns)


class CacheWriteFailed(Exception):
    """A cache file could not be written; the entry is dropped and was logged once."""


@dataclass(frozen=True)
class EntryRecord:
    """One index row. ``pid`` is the process that last wrote it (only meaningful while
    ``complete`` is false: an insert in progress). ``stamp`` is the data file's inode,
    mtime and ctime once in place (None: unknown, the first open hashes the file)."""

    size: int
    sha256: str
    last_open: float
    complete: bool
    pid: int
    stamp: Stamp | None = None

    def to_dict(self) -> dict[str, object]:
        return {"size": self.size, "sha256": self.sha256, "last_open": self.last_open,
                "complete": self.complete, "pid": self.pid,
                "stamp": list(self.stamp) if self.stamp else None}

    @classmethod
    def from_dict(cls, data: object) -> EntryRecord | None:
        if not isinstance(data, dict):
            return None
        try:
            stamp = data.get("stamp")
            return cls(int(data["size"]), str(data["sha256"]), float(data["last_open"]),
                       bool(data["complete"]), int(data["pid"]),
                       (int(stamp[0]), int(stamp[1]), int(stamp[2])) if stamp else None)
        except (KeyError, TypeError, ValueError, IndexError):
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


class WriterOwner(Protocol):
    """What a ``CacheWriter`` needs from the cache that made it (``store.ImageCache``)."""

    def _insert(self, image_id: str, partial: Path, size: int, sha256: str,
                within_cap: bool = False, unread: bool = False) -> bool: ...

    def unpin(self, image_id: str, linger: bool = False) -> None: ...


class CacheWriter:
    """One entry being written. The writing thread calls ``write`` then ``commit`` or
    ``discard``; ``read`` may be called from any thread for bytes already written; ``close``
    (once, after the last read) releases the file and the pin."""

    def __init__(self, cache: WriterOwner, image_id: str, path: Path,
                 handle: BinaryIO) -> None:
        self.image_id = image_id
        self._cache = cache
        self._path = path
        self._handle = handle
        self._sha = hashlib.sha256()
        self._written = 0
        self._unhashed: list[bytes] = []
        self._closed = False

    @property
    def written(self) -> int:
        return self._written

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; it is hashed by ``hash_written`` (which a caller may run after
        waking its readers) or at ``commit``. On failure the entry is dropped (one log line)
        and ``CacheWriteFailed`` is raised; bytes written before stay readable until
        ``close``."""
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
        self._written += len(chunk)
        self._unhashed.append(chunk)

    def hash_written(self) -> None:
        """Hash the chunks written since the last call."""
        for chunk in self._unhashed:
            self._sha.update(chunk)
        self._unhashed.clear()

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._handle.fileno(), size, offset)

    def commit(self, within_cap: bool = False, unread: bool = False) -> bool:
        """Insert the entry (sha256 of the bytes written); False if it could not be stored.
        ``within_cap``: only if it fits under the cap (an image fetched ahead); ``unread``:
        fetched ahead and not read by anyone yet."""
        self.hash_written()
        return self._cache._insert(self.image_id, self._path, self._written,
                                   self._sha.hexdigest(), within_cap, unread)

    def discard(self) -> None:
        """Drop the partial file (an open descriptor keeps its bytes readable)."""
        self._path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._handle.close()
        self._cache.unpin(self.image_id)


def pid_of_partial(name: str) -> int | None:
    """``<id>.<pid>.<token>`` → pid."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return int(parts[1])


def failure_reason(exc: BaseException, folder: Path) -> str:
    """Why an entry could not be stored, for the user. diskcache turns any failure to start
    a write transaction (a full disk as well as a lock held too long) into a bare
    ``Timeout``; the free space of ``folder`` tells which."""
    if isinstance(exc, diskcache.Timeout):
        try:
            full = os.statvfs(folder).f_bavail == 0
        except OSError:
            full = False
        return os.strerror(errno.ENOSPC) if full else "the cache index stayed locked"
    return getattr(exc, "strerror", None) or str(exc)
