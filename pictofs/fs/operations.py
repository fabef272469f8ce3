"""fusepy Operations: each callback traces, makes one call into the core, and returns.

Errors are translated at one border (``errno_map``): a domain error becomes its errno; an
error of pictofs's own without a table entry becomes ``EIO`` with one log line; anything else
is a bug and becomes ``EIO`` with its traceback (never fusepy's default ``EINVAL``).

The mount runs with ``nullpath_ok``/``nopath`` (``flag_nopath``, ``flag_nullpath_ok``) and
``hard_remove``: handle-based calls (``read``, ``write``, ``flush``, ``release``, ``fsync``,
``readdir``) work from the handle alone, so ``rm`` or ``mv`` of an open file keeps the handle
working.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
from typing import Any, Callable, TypeVar

from pictofs.core.vfs import Vfs
from pictofs.errors import PictofsError
from pictofs.fs.errno_map import errno_for
from pictofs.fs.fuselib import FUSE, FuseOSError, Operations

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def translated(func: F) -> F:
    """Trace the call at DEBUG and turn exceptions into FuseOSError with the right errno."""

    @functools.wraps(func)
    def wrapper(self: "PictoOperations", *args: Any) -> Any:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s%r", func.__name__, args if func.__name__ != "write" else args[:1])
        try:
            return func(self, *args)
        except FuseOSError:
            raise
        except PictofsError as exc:
            code = errno_for(exc)
            if code is None:
                log.error("%s %s: %s", func.__name__, args[:1], exc)
                code = errno.EIO
            elif code == errno.EIO:
                log.warning("%s %s: %s", func.__name__, args[:1], exc)
            raise FuseOSError(code) from None
        except OSError as exc:
            if exc.errno:
                raise FuseOSError(exc.errno) from None
            log.exception("%s %s failed", func.__name__, args[:1])
            raise FuseOSError(errno.EIO) from None
        except Exception:
            log.exception("bug in %s %s", func.__name__, args[:1])
            raise FuseOSError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def mtime_of(times: Any) -> float | None:
    """The mtime of a utimensat call in seconds (``use_ns``: nanoseconds, with libfuse's
    ``UTIME_NOW`` passed through); None means now."""
    if times is None:
        return None
    _atime, mtime = times
    return None if mtime == UTIME_NOW else mtime / 1e9


class PictoFUSE(FUSE):
    """mfusepy's FUSE with the flags of ``rename`` passed on (3.1.1 drops them), so
    ``RENAME_NOREPLACE`` is honoured and ``RENAME_EXCHANGE``/``RENAME_WHITEOUT`` refused;
    and with the file handle of ``ftruncate`` passed on (3.1.1 drops it too, and with
    ``nopath`` the path is None then: vim's and ``cp``'s truncate of an open file)."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.ftruncate(path, length, fip)


class PictoOperations(Operations):
    """The callbacks libfuse makes, each a thin adapter over ``Vfs``."""

    flag_nopath = True
    flag_nullpath_ok = True
    use_ns = True

    def __init__(self, vfs: Vfs, on_init: Callable[[], None] | None = None,
                 on_destroy: Callable[[], None] | None = None) -> None:
        self.vfs = vfs
        self._on_init = on_init
        self._on_destroy = on_destroy
        # _lock guards _dirs (open directory handles → path) and _next_dir.
        self._lock = threading.Lock()
        self._dirs: dict[int, str] = {}
        self._next_dir = 1

    # lifecycle: worker threads start here, after libfuse has set up the mount
    def init(self, path: str) -> None:
        if self._on_init:
            self._on_init()

    def destroy(self, path: str) -> None:
        if self._on_destroy:
            self._on_destroy()

    # ----------------------------------------------------------------- metadata

    @translated
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        if path is None:
            return self.vfs.handle_attrs(fh.fh)
        return self.vfs.getattr(path)

    @translated
    def access(self, path: str, amode: int) -> int:
        self.vfs.getattr(path)
        return 0

    @translated
    def statfs(self, path: str) -> dict[str, int]:
        return self.vfs.statfs()

    @translated
    def opendir(self, path: str) -> int:
        self.vfs.getattr(path)
        with self._lock:
            handle = self._next_dir
            self._next_dir += 1
            self._dirs[handle] = path
        return handle

    @translated
    def readdir(self, path: str | None, fh: int) -> list[Any]:
        with self._lock:
            dir_path = self._dirs.get(fh, path)
        if dir_path is None:
            raise FuseOSError(errno.EBADF)
        rows: list[Any] = [".", ".."]
        rows.extend((name, st, 0) for name, st in self.vfs.readdir(dir_path))
        return rows

    @translated
    def releasedir(self, path: str | None, fh: int) -> int:
        with self._lock:
            self._dirs.pop(fh, None)
        return 0

    # -------------------------------------------------------------------- files

    @translated
    def open(self, path: str, fi: Any) -> int:
        fi.fh, keep = self.vfs.open(path, fi.flags)
        fi.keep_cache = 1 if keep else 0
        return 0

    @translated
    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        return self.vfs.read(fi.fh, size, offset)

    @translated
    def release(self, path: str | None, fi: Any) -> int:
        self.vfs.release(fi.fh)
        return 0

    @translated
    def flush(self, path: str | None, fi: Any) -> int:
        self.vfs.flush(fi.fh)
        return 0

    # ---------------------------------------------------------- extended attributes

    @translated
    def listxattr(self, path: str) -> list[str]:
        return self.vfs.listxattr(path)

    @translated
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not name.startswith("user."):
            # ``ls -l`` asks every file for security.selinux and system.posix_acl_access:
            # ENOTSUP, answered without resolving the path, makes it stop asking (ENOSYS
            # would switch getxattr off for the whole mount, user.pictograph.* included).
            raise FuseOSError(errno.ENOTSUP)
        return self.vfs.getxattr(path, name)

    @translated
    def setxattr(self, path: str, name: str, value: bytes, options: int,
                 position: int = 0) -> int:
        self.vfs.setxattr(path, name, value)
        return 0

    @translated
    def removexattr(self, path: str, name: str) -> int:
        self.vfs.removexattr(path, name)
        return 0

    # ------------------------------------------------------------ changing things

    @translated
    def mkdir(self, path: str, mode: int) -> int:
        self.vfs.mkdir(path)
        return 0

    @translated
    def create(self, path: str, mode: int, fi: Any) -> int:
        fi.fh = self.vfs.create(path, fi.flags)
        return 0

    @translated
    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        return self.vfs.write(fi.fh, data, offset)

    @translated
    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        self.vfs.truncate(path, length, fh.fh if fh is not None else None)
        return 0

    @translated
    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        self.vfs.fsync(fi.fh)
        return 0

    @translated
    def unlink(self, path: str) -> int:
        self.vfs.unlink(path)
        return 0

    @translated
    def rmdir(self, path: str) -> int:
        self.vfs.rmdir(path)
        return 0

    @translated
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self.vfs.rename(old, new, flags)
        return 0

    @translated
    def utimens(self, path: str | None, times: Any = None) -> int:
        if path is not None and not (times is not None and times[1] == UTIME_OMIT):
            self.vfs.utimens(path, mtime_of(times))
        return 0

    @translated
    def chmod(self, path: str | None, mode: int) -> int:
        self.vfs.touch_metadata(path)
        return 0

    @translated
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self.vfs.touch_metadata(path)
        return 0

    # ------------------------------------------------------------------ refused

    def link(self, target: str, source: str) -> int:
        raise FuseOSError(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise FuseOSError(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise FuseOSError(errno.EPERM)

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fi: Any) -> int:
        raise FuseOSError(errno.EOPNOTSUPP)
