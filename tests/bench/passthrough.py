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

With ``--checked`` it is the writable passthrough plus the work a copy into pictofs cannot
skip, the floor of what pictofs promises for each file written (filesystem spec §5): the
bytes are hashed (sha256) as they are written in order, a flush with new bytes has Pillow
identify the header from the first 64 KB (``EINVAL`` for bytes that are not an image), and
records the size and hash beside the bytes (one ``fsetxattr``, as the journal's record of the
close that a crash of the daemon does not lose); it answers ``getxattr`` (``ENODATA``) as a
filesystem with extended attributes must, so the kernel asks for ``security.capability``
before every write, as it does of pictofs.

Run: ``python tests/bench/passthrough.py [--keep-cache|--writable|--checked] ROOT
MOUNTPOINT`` (stays in the foreground until unmounted with ``fusermount3 -u MOUNTPOINT``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
import threading
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


class CheckedPassthrough(WritablePassthrough):
    """The writable passthrough plus the per-file work of pictofs's promises (see above)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        from PIL import Image  # only this mode needs Pillow
        self._image = Image
        self._lock = threading.Lock()
        # per open descriptor: [running sha256 or None, bytes hashed, size, new bytes?]
        self._files: dict[int, list[Any]] = {}

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = super().create(path, mode, fi)
        with self._lock:
            self._files[fd] = [hashlib.sha256(), 0, 0, False]
        return fd

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        written = os.pwrite(fh, data, offset)
        state = self._files.get(fh)
        if state is not None:
            if state[0] is not None and offset == state[1]:
                state[0].update(data)
                state[1] += written
            elif offset < state[1]:
                state[0] = None
            state[2], state[3] = max(state[2], offset + written), True
        return written

    def flush(self, path: str, fh: int) -> int:
        state = self._files.get(fh)
        if state is None or not state[3]:
            return 0
        state[3] = False
        try:
            with self._image.open(io.BytesIO(os.pread(fh, 64 * 1024, 0))) as img:
                img.size
        except Exception:
            raise mfusepy.FuseOSError(errno.EINVAL) from None
        digest = state[0].hexdigest() if state[0] is not None and state[1] == state[2] \
            else hashlib.sha256(os.pread(fh, state[2], 0)).hexdigest()
        os.setxattr(fh, "user.passthrough.flushed", f"{state[2]} {digest}".encode())
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._files.pop(fh, None)
        return super().release(path, fh)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise mfusepy.FuseOSError(errno.ENODATA)


def main(argv: list[str]) -> int:
    mode = argv[0] if argv[:1] in (["--keep-cache"], ["--writable"], ["--checked"]) else ""
    if mode:
        argv = argv[1:]
    if len(argv) != 2:
        print("usage: passthrough.py [--keep-cache|--writable|--checked] ROOT MOUNTPOINT",
              file=sys.stderr)
        return 2
    root, mountpoint = argv
    if mode in ("--writable", "--checked"):
        operations = CheckedPassthrough(root) if mode == "--checked" \
            else WritablePassthrough(root)
        mfusepy.FUSE(operations, mountpoint, foreground=True,
                     fsname="passthrough", subtype="passthrough")
        return 0
    keep_cache = mode == "--keep-cache"
    operations = KeepCachePassthrough(root) if keep_cache else Passthrough(root)
    mfusepy.FUSE(operations, mountpoint, raw_fi=keep_cache, foreground=True, ro=True,
                 fsname="passthrough", subtype="passthrough")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
