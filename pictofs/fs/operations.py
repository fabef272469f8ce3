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

import ctypes
import errno
import functools
import logging
import stat
import threading
from typing import Any, Callable, TypeVar

from pictofs.core.tree.attrs import FileStat
from pictofs.core.tree.vfs import Vfs
from pictofs.errors import PictofsError
from pictofs.fs.errno_map import errno_for
from pictofs.fs.fuselib import FUSE, FuseOSError, Operations, fuse
from pictofs.fs.kernel_cache import SHORT_TIMEOUT, KernelCache, kernel_timeouts, takes_back

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


FUSE_CAP_READDIRPLUS = 1 << 13  # libfuse 3 capability: READDIRPLUS
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # ... only when the kernel's heuristic wants it
FUSE_READDIR_PLUS = 1 << 0  # readdir flag: the kernel asked for READDIRPLUS
FUSE_FILL_DIR_PLUS = 1 << 1  # filler flag: this entry comes with its full attributes

DirRow = tuple[str, "dict[str, Any] | None"]


_STAT_FIELDS = ("st_mode", "st_nlink", "st_size", "st_blocks", "st_blksize", "st_uid", "st_gid")
_STAT_TIMES = ("st_atime", "st_mtime", "st_ctime")


def _fill_stat(st: Any, attrs: dict[str, Any]) -> None:
    """``attrs`` (an ``attrs.file_stat``/``dir_stat`` dict, times in nanoseconds) into a
    ``struct stat``: mfusepy's ``set_st_attrs`` for exactly the fields pictofs sets, about
    twice as fast, which counts at 10,000 entries per listing."""
    if isinstance(attrs, FileStat):  # a file's compact stat: its fields straight in
        fixed = attrs.fixed
        st.st_mode = fixed["st_mode"]
        st.st_nlink = fixed["st_nlink"]
        st.st_blksize = fixed["st_blksize"]
        st.st_uid = fixed["st_uid"]
        st.st_gid = fixed["st_gid"]
        st.st_size = attrs.st_size
        st.st_blocks = attrs.st_blocks
        seconds, nanoseconds = divmod(attrs.st_mtime, 1_000_000_000)
        for spec in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
            spec.tv_sec, spec.tv_nsec = seconds, nanoseconds
        return
    try:
        for name in _STAT_FIELDS:
            setattr(st, name, attrs[name])
        for name in _STAT_TIMES:
            spec = getattr(st, name + "spec")
            spec.tv_sec, spec.tv_nsec = divmod(attrs[name], 1_000_000_000)
    except KeyError:  # a dictionary with other fields: the general way
        fuse.set_st_attrs(st, attrs, use_ns=True)


# A libfuse worker thread is not a Python thread: ctypes makes a Python thread state for
# each callback it runs there (``PyGILState_Ensure``) and frees it after (an ``mmap`` and a
# ``munmap`` of its frame stack, a ``gettid``, the interpreter's list locked twice), six times
# per copied file. One ``PyGILState_Ensure`` never released, on a thread's first callback,
# keeps its thread state for the thread's life, so the callbacks after it only take and
# drop the interpreter lock. libfuse's worker threads are bounded (``max_threads``) and, with
# its default ``max_idle_threads``, never end before the unmount.
_PyGILState_Ensure = ctypes.pythonapi.PyGILState_Ensure
_PyGILState_Ensure.argtypes = ()
_PyGILState_Ensure.restype = ctypes.c_int
_adopted = threading.local()


def _keep_thread_state() -> None:
    """Called once per libfuse thread, with the interpreter lock held (see above)."""
    _PyGILState_Ensure()
    _adopted.kept = True


class PictoFUSE(FUSE):
    """mfusepy's FUSE with the flags of ``rename`` passed on (3.1.1 drops them), so
    ``RENAME_NOREPLACE`` is honoured and ``RENAME_EXCHANGE``/``RENAME_WHITEOUT`` refused;
    with the file handle of ``ftruncate`` passed on (3.1.1 drops it too, and with
    ``nopath`` the path is None then: vim's and ``cp``'s truncate of an open file); and with
    READDIRPLUS (3.1.1 ignores the flag and hands the filler only the file type).

    READDIRPLUS: when the kernel asks for it (``FUSE_READDIR_PLUS``), every entry is filled
    with its full attributes and ``FUSE_FILL_DIR_PLUS``, so libfuse creates the kernel's
    dentry and attributes with the entry and attribute timeouts, and an ``ls -l`` after the
    listing makes no ``lookup``/``getattr`` per entry. Entries carry their position + 1 as
    offset: libfuse 3.14 only sends the attributes in that mode (entries filled with offset
    0 are buffered and sent with node id 0, which tells the kernel to ignore them). The
    kernel then asks page by page with the offset it got; ``readdir_rows`` answers each from
    the rows computed for the handle at offset 0, so a directory is listed once per
    ``opendir``/``rewinddir``.
    """

    def _wrapper(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not getattr(_adopted, "kept", False):
            _keep_thread_state()
        return super()._wrapper(func, *args, **kwargs)

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                       fip: Any, flags: int) -> int:
        rows = self.operations.readdir_rows(fip.contents.fh, offset)
        plus = bool(flags & FUSE_READDIR_PLUS) and self.operations.plus_allowed(
            fip.contents.fh)
        for position in range(offset, len(rows)):
            name, attrs = rows[position]
            st = fuse.c_stat()
            fill_flags = 0
            if attrs is None:  # "." and "..": the type only
                st.st_mode = stat.S_IFDIR
            elif plus:
                _fill_stat(st, attrs)
                fill_flags = FUSE_FILL_DIR_PLUS
            else:
                st.st_mode = attrs["st_mode"]
            if filler(buf, name.encode(self.encoding, self.errors), st, position + 1,
                      fill_flags) != 0:
                break  # the kernel's buffer is full: it asks again from this offset
        return 0

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.ftruncate(path, length, fip)

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        """A name outside ``user.`` is ``ENOTSUP`` here, before the path and name are
        decoded or an exception is raised (``PictoOperations.getxattr`` says why): the
        kernel asks ``security.capability`` before every ``write``, so a copy asks once per
        file."""
        if not name.startswith(b"user."):
            return -errno.ENOTSUP
        return super().getxattr(path, name, value, size, *args)


class _OpenDir:
    """An open directory: its path, the rows of the current pass, and the kernel cache's
    generation they were worked out under (``KernelCache.plus_allowed``)."""

    __slots__ = ("path", "rows", "generation", "release")

    def __init__(self, path: str, release: Callable[[], None]) -> None:
        self.path = path
        self.rows: list[DirRow] | None = None
        self.generation = 0
        self.release = release  # lets the folder's listing go (``Vfs.hold_dir``)


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
        # _lock guards _dirs (open directory handles), _next_dir and callbacks.
        self._lock = threading.Lock()
        self._dirs: dict[int, _OpenDir] = {}
        self._next_dir = 1
        # callbacks by name (``getattr`` includes the kernel's lookups, which libfuse's
        # high-level API turns into getattr): shows in ``pictofs status``
        self.callbacks: dict[str, int] = {}
        dir_cache_time = vfs.options.dir_cache_time
        self._short = min(SHORT_TIMEOUT, dir_cache_time)
        self.kernel = KernelCache() if takes_back(dir_cache_time) else None
        # the kernel cache once attached: the kernel then keeps answers for long, and every
        # answer handed out is recorded with the time it stops being valid
        self.kept: KernelCache | None = None

    # lifecycle: worker threads start here, after libfuse has set up the mount
    def init_with_config(self, conn: Any, config: Any) -> None:
        """Long kernel timeouts (``--dir-cache-time`` above 1 s) once the answers handed
        out can be taken back (``kernel_cache``); the mount options set min(1 s,
        ``--dir-cache-time``), which stay if that cannot be set up."""
        if self.kernel is not None and config is not None:
            context = fuse._libfuse.fuse_get_context().contents  # per thread: only here
            if self.kernel.attach(fuse._libfuse, context.fuse,
                                  conn.proto_minor if conn is not None else 0):
                self.kept = self.kernel
                self.vfs.listener = self.kernel
                timeout, _negative = kernel_timeouts(self.vfs.options.dir_cache_time)
                config.entry_timeout = timeout
                config.attr_timeout = timeout
                if conn.capable & FUSE_CAP_READDIRPLUS:
                    # every page of a listing with its attributes, not only the first
                    # (the kernel's "auto" mode asks the others without them unless names
                    # in the folder were looked up): what `ls` lists is then kept too
                    conn.want = (conn.want | FUSE_CAP_READDIRPLUS) & ~FUSE_CAP_READDIRPLUS_AUTO
            else:
                log.warning("the kernel cannot take cached names back (Linux 6.16 needed): "
                            "it keeps names and attributes for 1 s")
        self.init("/")

    def init(self, path: str) -> None:
        if self._on_init:
            self._on_init()

    def destroy(self, path: str) -> None:
        if self.kernel is not None:
            self.kernel.close()
        if self._on_destroy:
            self._on_destroy()
        self.vfs.close()

    # ----------------------------------------------------------------- metadata

    def count(self, name: str) -> None:
        with self._lock:
            self.callbacks[name] = self.callbacks.get(name, 0) + 1

    def status(self) -> dict[str, Any]:
        """The adapter's part of ``pictofs status``."""
        with self._lock:
            callbacks = dict(self.callbacks)
        return {"callbacks": callbacks,
                "kernel_takebacks": self.kept.raises if self.kept is not None else 0}

    def _keep_for(self, valid_until: float) -> float:
        """Seconds the kernel may keep an answer valid until ``valid_until`` (never less
        than the short timeout it had before long ones)."""
        return max(valid_until - self.vfs.clock(), self._short)

    @translated
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        self.count("getattr")
        if path is None:  # an open file whose name is gone: nothing to take back by path
            return self.vfs.handle_attrs(fh.fh)
        if self.kept is None:
            return self.vfs.getattr(path)
        found, valid_until, is_dir = self.vfs.stat_and_validity(path)
        self.kept.handed_out(path, self._keep_for(valid_until), is_dir=is_dir)
        return found

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
        release = self.vfs.hold_dir(path)
        with self._lock:
            handle = self._next_dir
            self._next_dir += 1
            self._dirs[handle] = _OpenDir(path, release)
        return handle

    @translated
    def readdir_rows(self, fh: int, offset: int) -> list[DirRow]:
        """The rows of an open directory, ``.`` and ``..`` first (no attributes): listed
        afresh at offset 0 (``opendir``, ``rewinddir``), else the rows listed then, so
        the pages of one pass agree with each other."""
        with self._lock:
            opened = self._dirs.get(fh)
        if opened is None:
            raise FuseOSError(errno.EBADF)
        rows = opened.rows
        if offset == 0 or rows is None:
            self.count("readdir")
            if self.kernel is not None:  # read before the rows: a take-back meanwhile shows
                opened.generation = self.kernel.generation
            rows = [(".", None), ("..", None)]
            if self.kept is None:
                rows.extend(self.vfs.readdir(opened.path))
            else:
                listed = self.vfs.readdir_with_validity(opened.path)
                self._hand_out(opened.path, listed)
                rows.extend((name, found) for name, found, _valid in listed)
            opened.rows = rows
        return rows

    def _hand_out(self, path: str, rows: list[tuple[str, dict[str, Any], float]]) -> None:
        """Record the rows of a READDIRPLUS with the time each stops being valid (files
        valid until the same time, as those of one listing are, in one call)."""
        assert self.kept is not None
        prefix = path.rstrip("/") + "/"
        # deadline → one file valid until then: only the deadline is recorded (a raise
        # takes back every name), so 100,000 rows cost no 100,000 paths
        files: dict[float, str] = {}
        for name, found, valid_until in rows:
            if not valid_until or stat.S_ISDIR(found["st_mode"]):
                self.kept.handed_out(prefix + name, self._keep_for(valid_until),
                                     is_dir=stat.S_ISDIR(found["st_mode"]))
            elif valid_until not in files:
                files[valid_until] = name
        for valid_until, name in files.items():
            self.kept.handed_out_many([prefix + name], self._keep_for(valid_until))

    def plus_allowed(self, fh: int) -> bool:
        """Whether this page of an open directory may give the kernel its entries'
        attributes: always with short kernel timeouts; with long ones, only if nothing was
        taken back from the kernel since the rows were worked out (the kernel would keep
        what they say as if it were current, see ``kernel_cache``). Without them the
        kernel gets the names alone and looks each one up when it is used."""
        if self.kernel is None or not self.kernel.running:
            return True
        with self._lock:
            opened = self._dirs.get(fh)
        return opened is not None and self.kernel.plus_allowed(opened.generation)

    def readdir(self, path: str | None, fh: int) -> list[Any]:
        """mfusepy's plain readdir (not called by ``PictoFUSE``, which fills from
        ``readdir_rows``; its presence registers the callback)."""
        return [(name, attrs, 0) if attrs else name for name, attrs in self.readdir_rows(fh, 0)]

    @translated
    def releasedir(self, path: str | None, fh: int) -> int:
        with self._lock:
            opened = self._dirs.pop(fh, None)
        if opened is not None:
            opened.release()
        return 0

    # -------------------------------------------------------------------- files

    @translated
    def open(self, path: str, fi: Any) -> int:
        fi.fh, keep = self.vfs.open(path, fi.flags)
        fi.keep_cache = 1 if keep else 0
        # an image opened for reading has nothing to flush: the kernel skips the FLUSH call
        # at close (one round trip through the daemon less per open)
        fi.noflush = 0 if self.vfs.needs_flush(fi.fh) else 1
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
        self.count("flush")
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
        if path is not None:  # accepted (rsync -a, cp -p) and not stored; it must exist
            self.vfs.getattr(path)
        return 0

    @translated
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        if path is not None:
            self.vfs.getattr(path)
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
