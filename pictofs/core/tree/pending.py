"""Files that exist on this machine only for now: being written, waiting to upload, or
local-only (editor and desktop temp names, filesystem §5).

A ``Pending`` is one such file: its path in the dataset, the file holding its bytes (a staging
file of the upload journal, or a file in the mount's local folder), and what the writer did to
it. Every handle of one path shares one ``Pending`` and one descriptor, so ``O_APPEND`` and
writes at any offset work across handles, and a handle keeps working after ``rm`` or ``mv``.

A ``Pending`` hashes its bytes as they are written in order (``cp``, ``rsync`` and editors
write a file from its start to its end), so the sha256 that a flush records (and that the
upload checks the staging file against after a crash of the machine) costs no second read;
a write over bytes already hashed (or a truncate into them, other than to 0 bytes) leaves
``sha256`` to read the file once.
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pictofs.errors import PictofsError
from pictofs.hashing import sha256_file
from pictofs.model import Image


@dataclass(eq=False)
class Pending:
    path: str
    file: Path
    entry_id: str | None  # the upload journal's entry; None for a local-only file
    mtime: float
    size: int = 0
    opens: int = 0
    written: bool = False  # written since staged (a file closed unwritten uploads nothing)
    dirty: bool = False  # bytes written since the last flush
    poison: PictofsError | None = None  # EFBIG/ENOSPC: repeated, never uploaded, removed
    error: str | None = None  # why the upload failed for good (kept until rm or new bytes)
    holds: Image | None = None  # a local name that holds an uploaded image (§6)
    replaced_id: str | None = None
    mtime_set: bool = False  # the mtime came from utimensat (rsync -a, cp -p, touch -d)
    last_close: float = 0.0
    removed: bool = False  # unlinked or landed: open handles go on, nothing more is queued
    after_register: dict = field(default_factory=dict)  # split/tags set while staged (§2)
    fd: int | None = None
    # io_lock guards fd (opening and closing it), _borrowed and _close_when_returned;
    # pread/pwrite on it need no lock.
    io_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # turns orders an open for writing (its count, its hold of the upload) against the end
    # of an unwritten replace by the release of the last handle: the kernel sends a release
    # without waiting for it, so a writer's next open can come while it runs (see
    # WriteLayer.release)
    turns: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _borrowed: int = 0  # uses of fd outside any handle (``borrowed``), going on now
    _close_when_returned: bool = False  # a last close came during one: the last one closes
    # the sha256 of bytes [0, _hashed) while writes came in order; None: ask the file
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)
    _hashed: int = 0
    _hash_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def local(self) -> bool:
        return self.entry_id is None

    def descriptor(self) -> int:
        """The file's descriptor, opened if need be. A local file is made here; a staged
        file's staging file is made by the create and removed once its upload landed and the
        image is shown in its place, so it is never made again: an open that comes too late
        gets ``ENOENT`` (``PendingFile.open`` then opens the image), never empty bytes."""
        with self.io_lock:
            if self.fd is None:
                flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if self.local else 0)
                self.fd = os.open(self.file, flags, 0o600)
            return self.fd

    def is_open(self) -> bool:
        """Whether a handle has the file open (or an open is counting itself)."""
        return self.opens > 0

    def add_open(self) -> None:
        """A handle opens the file: counted before it uses the descriptor, so that no close
        of the last handle (``close_descriptor``) takes the descriptor from under it."""
        with self.io_lock:
            self.opens += 1

    def drop_open(self) -> int:
        """A handle is released; how many stay open."""
        with self.io_lock:
            self.opens = max(0, self.opens - 1)
            return self.opens

    def close_descriptor(self, force: bool = False) -> None:
        """Close the descriptor when no handle is open (a handle opened meanwhile keeps
        it: closed under a handle, its number could be reused by another file before the
        handle's next ``pread``/``pwrite``); ``force``: at unmount, whatever is open. While
        it is ``borrowed``, the last of those uses closes it instead."""
        with self.io_lock:
            if self.fd is None or not (force or self.opens == 0):
                return
            if self._borrowed and not force:
                self._close_when_returned = True
                return
            os.close(self.fd)
            self.fd = None

    @contextmanager
    def borrowed(self) -> Iterator[None]:
        """The descriptor kept open for a use outside any handle: a ``rename`` of a file
        whose last handle the kernel is releasing meanwhile (``rsync`` closes its temp file
        and renames it at once, and the kernel sends the release without waiting for it)
        looks at its header and records its flush; a last close in between used to close
        the descriptor under that look (``EBADF``, and ``rsync`` failed the file)."""
        with self.io_lock:
            self._borrowed += 1
        try:
            yield
        finally:
            with self.io_lock:
                self._borrowed -= 1
                closing = not self._borrowed and self._close_when_returned
                if closing:
                    self._close_when_returned = False
            if closing:
                self.close_descriptor()  # unless a handle opened (or a use began) meanwhile

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.descriptor(), size, offset)

    def pwrite(self, data: bytes, offset: int) -> int:
        written = os.pwrite(self.descriptor(), data, offset)
        self.size = max(self.size, offset + written)
        with self._hash_lock:
            if self._digest is not None and offset == self._hashed:
                self._digest.update(data[:written] if written < len(data) else data)
                self._hashed += written
            elif offset < self._hashed:
                self._digest = None  # bytes hashed already were written over
        return written

    def truncate(self, length: int) -> None:
        os.ftruncate(self.descriptor(), length)
        self.size = length
        with self._hash_lock:
            if length == 0:
                self._digest, self._hashed = hashlib.sha256(), 0
            elif length < self._hashed:
                self._digest = None

    def sha256(self) -> str:
        """The sha256 of the bytes as they are now (the writer's flush: no write is running
        on this file's other handles, or the digest is of some moment during it)."""
        with self._hash_lock:
            if self._digest is not None and self._hashed == self.size:
                return self._digest.copy().hexdigest()
        return sha256_file(self.file)

    def fsync(self) -> None:
        os.fsync(self.descriptor())

    def move_file(self, target: Path) -> None:
        """Move the bytes to ``target`` (same filesystem); the descriptor stays valid."""
        os.replace(self.file, target)
        self.file = target
