"""Content-addressed blob store: image bytes under ``DIR/blobs/ab/cd/<sha256>``.

Writes go to a temporary file in ``DIR/blobs/tmp``, are hashed while they stream, fsynced,
and renamed into place (the folder is fsynced too), so a blob is either complete or absent.
Identical bytes are stored once. Reads open the blob's file (``open``).

``lock`` serializes "commit a blob and record who references it" against "find a blob
unreferenced and remove it", so a concurrent upload of the same bytes never loses its file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobWriter:
    """One blob being written: ``write`` chunks, then ``commit`` (→ sha256) or ``abort``."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="put-")
        self._path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "writer already closed"
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def commit(self) -> str:
        """fsync, rename into place and return the sha256. Call with ``store.lock`` held
        when the blob must survive a concurrent garbage collection."""
        assert self._file is not None, "writer already closed"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        digest = self._hash.hexdigest()
        target = self._store.path_for(digest)
        if target.exists():
            self._path.unlink()
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, target)
        _fsync_dir(target.parent)
        return digest

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            self._path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()  # no-op after a commit


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()  # guards commit+reference against unreferenced removal

    def clean_temporary(self) -> int:
        """Remove temp files left by a crash; returns how many."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d unfinished upload(s)", removed)
        return removed

    def path_for(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256: {digest!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes) -> str:
        with self.writer() as writer:
            writer.write(data)
            with self.lock:
                return writer.commit()

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path_for(digest).stat().st_size

    def open(self, digest: str) -> BinaryIO:
        return open(self.path_for(digest), "rb")

    def remove(self, digest: str) -> None:
        """Remove a blob (caller holds ``lock`` and has checked nothing references it)."""
        self.path_for(digest).unlink(missing_ok=True)
