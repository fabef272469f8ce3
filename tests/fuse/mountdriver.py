"""The shared filesystem scenarios' verbs (``tests/scenarios.py``) through a real mount:
``os`` calls on paths under the mountpoint, and ``pictofs sync MOUNTPOINT`` to wait for the
uploads. The in-process twin is ``tests/core/treekit.py``'s ``TreeDriver``."""

from __future__ import annotations

import os
from typing import Any

from mountkit import sync
from scenarios import Attrs, Driver

STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax")


class MountDriver(Driver):
    def __init__(self, mount: Any) -> None:
        self.mount = mount  # tests/fuse/conftest.py's Mount
        self.root = str(mount.path)

    def _p(self, path: str) -> str:
        assert path.startswith("/"), path
        return self.root + path.rstrip("/") if path != "/" else self.root

    def stat(self, path: str) -> Attrs:
        found = os.stat(self._p(path))
        return Attrs(found.st_mode, found.st_size)

    def listdir(self, path: str) -> dict[str, Attrs]:
        rows = {}
        with os.scandir(self._p(path)) as entries:
            for entry in entries:
                found = entry.stat(follow_symlinks=False)
                rows[entry.name] = Attrs(found.st_mode, found.st_size)
        return rows

    def statfs(self) -> dict[str, int]:
        found = os.statvfs(self.root)
        return {name: getattr(found, name) for name in STATVFS_FIELDS}

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self._p(path), name)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._p(path))

    def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._p(old), self._p(new))

    def truncate(self, path: str, length: int) -> None:
        os.truncate(self._p(path), length)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._p(path), flags, 0o644)

    def read(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def write(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def close(self, fd: int) -> None:
        os.close(fd)

    def sync(self) -> None:
        sync(self.mount)
