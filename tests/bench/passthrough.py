"""A minimal read-only mfusepy passthrough of a local folder: the baseline of the benchmark.

It does the least an honest FUSE filesystem in Python can do: ``getattr`` is ``os.lstat``,
``readdir`` is ``os.listdir``, ``open``/``read``/``release`` are ``os.open``/``os.pread``/
``os.close``. Everything else keeps mfusepy's defaults. Like pictofs it uses libfuse 3 and
libfuse's default (multi-threaded) loop.

With ``--keep-cache`` every open keeps the kernel page cache (``keep_cache``), as pictofs
does when a path still maps to the image it mapped to at the last open: the floor of a
repeat read whose bytes come from the page cache of a FUSE mount.

With ``--writable`` it also does what ``cp -r`` and ``rsync -a`` ask of a filesystem, each
call the one system call it names (``create`` is ``os.open(O_CREAT)``, ``write`` is
``os.pwrite``, ``rename``, ``utimens``, ``chmod``, ``chown``, ``truncate``, ``mkdir``,
``unlink``, ``rmdir``; ``fsync`` is ``os.fsync``, ``flush`` does nothing): the floor of a copy
into a FUSE mount, the baseline of the write benchmark. Nothing is fsync'd unless the writer
asks.

Run: ``python tests/bench/passthrough.py [--keep-cache|--writable] ROOT MOUNTPOINT`` (stays in
the foreground until unmounted with ``fusermount3 -u MOUNTPOINT``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

if not os.environ.get("FUSE_LIBRARY_PATH"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"  # before the import: mfusepy picks it then

import mfusepy  # noqa: E402

STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")
TIME_FIELDS = ("st_atime", "st_mtime", "st_ctime")


class Passthrough(mfusepy.Operations):
    use_ns = True  # times in integer nanoseconds, as pictofs reports them

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._real(path))
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None
        attrs = {name: getattr(st, name) for name in STAT_FIELDS}
        attrs.update((name, getattr(st, name + "_ns")) for name in TIME_FIELDS)
        return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def open(self, path: str, flags: int) -> int:
        try:
            return os.open(self._real(path), os.O_RDONLY)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


class KeepCachePassthrough(Passthrough):
    """The same, with the file info of each open (``raw_fi``) to set ``keep_cache``."""

    def open(self, path: str, fi: Any) -> int:  # type: ignore[override]
        fi.fh = super().open(path, fi.flags)
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:  # type: ignore[override]
        return os.pread(fi.fh, size, offset)

    def release(self, path: str, fi: Any) -> int:  # type: ignore[override]
        os.close(fi.fh)
        return 0


class WritablePassthrough(Passthrough):
    """The read-only passthrough plus the calls a copy into the mount makes."""

    def _call(self, function: Any, *args: Any) -> int:
        try:
            function(*args)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        try:
            return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None

    def open(self, path: str, flags: int) -> int:
        try:
            return os.open(self._real(path), flags & ~(os.O_CREAT | os.O_EXCL))
        except OSError as exc:
            raise mfusepy.FuseOSError(exc.errno) from None

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if fh is not None:
            return self._call(os.ftruncate, fh, length)
        return self._call(os.truncate, self._real(path), length)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return self._call(os.fdatasync if datasync else os.fsync, fh)

    def mkdir(self, path: str, mode: int) -> int:
        return self._call(os.mkdir, self._real(path), mode)

    def rmdir(self, path: str) -> int:
        return self._call(os.rmdir, self._real(path))

    def unlink(self, path: str) -> int:
        return self._call(os.unlink, self._real(path))

    def rename(self, old: str, new: str) -> int:
        return self._call(os.rename, self._real(old), self._real(new))

    def chmod(self, path: str, mode: int) -> int:
        return self._call(os.chmod, self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> int:
        return self._call(os.lchown, self._real(path), uid, gid)

    def utimens(self, path: str, times: Any = None) -> int:
        real = self._real(path)
        if times is None:
            return self._call(os.utime, real)
        return self._call(lambda: os.utime(real, ns=tuple(times), follow_symlinks=False))


def main(argv: list[str]) -> int:
    mode = argv[0] if argv[:1] in (["--keep-cache"], ["--writable"]) else ""
    if mode:
        argv = argv[1:]
    if len(argv) != 2:
        print("usage: passthrough.py [--keep-cache|--writable] ROOT MOUNTPOINT",
              file=sys.stderr)
        return 2
    root, mountpoint = argv
    if mode == "--writable":
        mfusepy.FUSE(WritablePassthrough(root), mountpoint, foreground=True,
                     fsname="passthrough", subtype="passthrough")
        return 0
    keep_cache = mode == "--keep-cache"
    operations = KeepCachePassthrough(root) if keep_cache else Passthrough(root)
    mfusepy.FUSE(operations, mountpoint, raw_fi=keep_cache, foreground=True, ro=True,
                 fsname="passthrough", subtype="passthrough")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
