"""The filesystem core in-process, for the shared scenarios (``tests/scenarios.py``).

``build`` makes a dataset mount's object graph with ``pictofs.mounting.build_tree``, as
``pictofs mount`` does but with no kernel and no root: the options are the real defaults of
``mount`` (``mount_args``), against the session's reference server, with the cache, the state
(journals) and a short ``--write-back`` set explicitly. ``TreeDriver`` then makes the calls
the FUSE adapter (``pictofs.fs.operations``) makes, in the order the kernel makes them, and
turns domain errors into ``OSError`` with the adapter's errno (``errno_map.errno_for``;
anything without an entry is ``EIO``). An exception that is not a domain error is a bug: it
becomes ``EIO`` as in the adapter, and is also kept in ``bugs`` so the test fails on it, as
a mount test fails on a traceback in the daemon's log.
"""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from scenarios import Attrs, Driver

from pictofs.config import Connection, finish_options, options_for
from pictofs.errors import PictofsError
from pictofs.fs.errno_map import errno_for
from pictofs.mounting import BuiltTree, MountTarget, build_tree

T = TypeVar("T")

WRITE_BACK = "0.2s"
SYNC_TIMEOUT = 60.0


def mount_args(**raw: Any) -> argparse.Namespace:
    """A ``mount`` Namespace as the CLI makes it: every option of ``mount`` at its default
    (switches off), ``raw`` given as on the command line (``write_back="0.2s"``)."""
    args = argparse.Namespace(**{opt.dest: False if opt.flag else None
                                 for opt in options_for("mount")})
    for name, value in raw.items():
        if not hasattr(args, name):
            raise TypeError(f"mount has no option {name!r}")
        setattr(args, name, value)
    return finish_options(args, "mount")


def build(server: Any, dataset: Any, root: Path, **options: Any) -> BuiltTree:
    """A dataset mount of ``dataset`` on the session server, without FUSE; its journal is
    resumed and its upload workers started, as the mount's ``init`` does."""
    raw = {"cache_dir": str(root / "cache"), "write_back": WRITE_BACK, **options}
    args = mount_args(**raw)
    args.dataset, args.mountpoint = dataset.name, str(root / "mnt")
    target = MountTarget(Connection(server.base_url, server.key, "argument"), dataset,
                    args.mountpoint)
    tree = build_tree(target, args, state_dir=root / "state")
    try:
        tree.vfs.open_dataset()
    except BaseException:
        tree.close(timeout=10)
        raise
    return tree


class TreeDriver(Driver):
    """The scenario verbs as ``Vfs`` calls (see the module docstring)."""

    def __init__(self, vfs: Any) -> None:
        self.vfs = vfs
        self.bugs: list[BaseException] = []
        self._flushes: dict[int, bool] = {}  # handle → the adapter asks flush at close

    def _call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` with the adapter's error translation (``operations.translated``)."""
        try:
            return func(*args)
        except PictofsError as exc:
            code = errno_for(exc) or errno.EIO
            raise OSError(code, f"{os.strerror(code)}: {exc}") from exc
        except OSError as exc:
            if exc.errno:
                raise OSError(exc.errno, os.strerror(exc.errno)) from exc
            self.bugs.append(exc)
            raise OSError(errno.EIO, os.strerror(errno.EIO)) from exc
        except Exception as exc:
            self.bugs.append(exc)
            raise OSError(errno.EIO, f"bug in {func.__name__}: {exc!r}") from exc

    @staticmethod
    def _attrs(found: dict[str, Any]) -> Attrs:
        return Attrs(found["st_mode"], found["st_size"])

    # ------------------------------------------------------------------- metadata

    def stat(self, path: str) -> Attrs:
        return self._attrs(self._call(self.vfs.getattr, path))

    def listdir(self, path: str) -> dict[str, Attrs]:
        self._call(self.vfs.getattr, path)  # opendir
        rows = self._call(self.vfs.readdir, path)
        return {name: self._attrs(found) for name, found in rows}

    def statfs(self) -> dict[str, int]:
        return dict(self._call(self.vfs.statfs))

    def getxattr(self, path: str, name: str) -> bytes:
        if not name.startswith("user."):  # the adapter answers these without the core
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP))
        return self._call(self.vfs.getxattr, path, name)

    def listxattr(self, path: str) -> list[str]:
        return list(self._call(self.vfs.listxattr, path))

    # ---------------------------------------------------------------- the tree

    def mkdir(self, path: str) -> None:
        self._call(self.vfs.mkdir, path)

    def rmdir(self, path: str) -> None:
        self._call(self.vfs.rmdir, path)

    def unlink(self, path: str) -> None:
        self._call(self.vfs.unlink, path)

    def rename(self, old: str, new: str) -> None:
        self._call(self.vfs.rename, old, new, 0)

    def truncate(self, path: str, length: int) -> None:
        self._call(self.vfs.truncate, path, length, None)

    # ------------------------------------------------------------------- files

    def open(self, path: str, flags: int) -> int:
        """As the kernel: with ``O_CREAT``, a lookup first; ``create`` when nothing is
        there, EEXIST with ``O_EXCL``, else ``open`` of what is there."""
        if flags & os.O_CREAT:
            try:
                self._call(self.vfs.getattr, path)
            except FileNotFoundError:
                fh = self._call(self.vfs.create, path, flags)
                self._flushes[fh] = True
                return fh
            if flags & os.O_EXCL:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            flags &= ~(os.O_CREAT | os.O_EXCL)
        fh, _keep_cache = self._call(self.vfs.open, path, flags)
        self._flushes[fh] = self.vfs.needs_flush(fh)
        return fh

    def read(self, fd: int, size: int, offset: int) -> bytes:
        return self._call(self.vfs.read, fd, size, offset)

    def write(self, fd: int, data: bytes, offset: int) -> int:
        return self._call(self.vfs.write, fd, data, offset)

    def close(self, fd: int) -> None:
        """``flush`` (its errno is what ``close`` returns), then ``release``, whose answer
        the kernel drops."""
        try:
            if self._flushes.pop(fd, True):
                self._call(self.vfs.flush, fd)
        finally:
            try:
                self._call(self.vfs.release, fd)
            except OSError:
                pass

    # ------------------------------------------------------------------- uploads

    def sync(self) -> None:
        """What ``pictofs sync`` asks of the mount: every dataset's uploads idle, none
        failed."""
        assert self.vfs.wait_idle(SYNC_TIMEOUT), "uploads still pending"
        failed = self.vfs.status()["uploads"]["failed"]
        assert not failed, f"uploads failed: {failed}"
