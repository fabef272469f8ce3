"""The FUSE session of a mount: the mountpoint checks, FUSE options, libfuse's loop and its
signals, unmounting with fusermount3 (what libfuse calls ``fuse_session_mount``, ``_loop``
and ``_unmount``). ``pictofs.mounting`` builds the operations it serves.

- ``prepare_mountpoint`` refuses a missing or busy mountpoint and lazily unmounts a stale one
  left by a killed daemon (``ENOTCONN``), with a log line.
- ``serve`` runs libfuse in the calling thread until unmount. SIGHUP is blocked first and
  served by a ``sigwait`` thread (``start_sighup_thread``, started from ``init``): libfuse
  would otherwise end its loop on SIGHUP, and Python handlers never run while the main thread
  is inside ``FUSE()``. SIGINT/SIGTERM end the loop and unmount (libfuse's own handlers).
- Options follow the practical notes of the architecture: ``hard_remove`` and nullpath
  handles, kernel timeouts of min(1 s, ``--dir-cache-time``), never ``kernel_cache``,
  ``direct_io`` or ``use_ino``, and none of libfuse 2's ``big_writes``/``max_read`` options.
  With ``--dir-cache-time`` above 1 s, ``PictoOperations.init_with_config`` raises the entry
  and attribute timeouts to ``--dir-cache-time`` once ``kernel_cache`` can take answers back
  (the negative timeout stays min(1 s, ``--dir-cache-time``)).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from pictofs.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountSettings:
    mountpoint: str
    fsname: str
    dir_cache_time: float = 30.0
    read_only: bool = False
    allow_other: bool = False


def check_fuse_device() -> None:
    if not os.path.exists("/dev/fuse"):
        raise ConfigError("/dev/fuse is missing: load the fuse module (modprobe fuse) or, in a "
                          "container, pass the device (--device /dev/fuse)")


def fusermount() -> str:
    found = shutil.which("fusermount3")
    if not found:
        raise ConfigError("fusermount3 not found: install the fuse3 package")
    return found


def prepare_mountpoint(mountpoint: str) -> str:
    """The mountpoint's absolute path, after cleaning a stale mount; ConfigError when it
    cannot be used."""
    path = os.path.abspath(mountpoint)
    if mount_device(path) is not None:
        try:
            os.statvfs(path)  # statfs always reaches the daemon: no kernel cache answers it
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.ECONNABORTED):
                raise ConfigError(f"mountpoint {path}: {exc.strerror}") from None
            log.warning("%s: stale mount of a daemon that died; unmounting it", path)
            unmount(path, lazy=True)
        else:
            raise ConfigError(f"{path} is already a mountpoint (busy); unmount it first")
    if not os.path.exists(path):
        raise ConfigError(f"mountpoint {path} does not exist (create it with mkdir)")
    if not os.path.isdir(path):
        raise ConfigError(f"mountpoint {path} is not a directory")
    return path


def fuse_options(settings: MountSettings) -> dict[str, Any]:
    timeout = min(1.0, settings.dir_cache_time)
    options: dict[str, Any] = {
        "foreground": True,
        "fsname": settings.fsname,
        "subtype": "pictofs",
        "hard_remove": True,
        "attr_timeout": timeout,
        "entry_timeout": timeout,
        "negative_timeout": timeout,
    }
    if settings.read_only:
        options["ro"] = True
    if settings.allow_other:
        options["allow_other"] = True
        options["default_permissions"] = True
    return options


def serve(operations: Any, settings: MountSettings) -> None:
    """Mount and serve until unmounted (blocks). Raises ConfigError if libfuse refuses."""
    from pictofs.fs.operations import PictoFUSE

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        PictoFUSE(operations, settings.mountpoint, raw_fi=True, **fuse_options(settings))
    except RuntimeError as exc:
        raise ConfigError(f"mounting {settings.mountpoint} failed (libfuse error {exc}); "
                          f"see the log for libfuse's message") from None


def start_sighup_thread(on_hup: Callable[[], None]) -> threading.Thread:
    """Serve SIGHUP (blocked in every thread by ``serve``) from a dedicated thread."""

    def wait_for_hup() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            log.info("SIGHUP: dropping the listing cache and reopening the log")
            try:
                on_hup()
            except Exception:
                log.exception("SIGHUP handling failed")

    thread = threading.Thread(target=wait_for_hup, name="pictofs-sighup", daemon=True)
    thread.start()
    return thread


BUSY_RETRIES = 5  # attempts of ``unmount`` while the kernel says the mount is busy


def unmount(mountpoint: str, lazy: bool = False) -> None:
    """``fusermount3 -u``. "Device or resource busy" is tried again a few times, 0.1 s
    apart: a process that has just finished with the mount (a ``stat`` or ``ls`` still
    returning, a shell leaving the folder) may hold it for a moment, and an unmount right
    after a test or script should not fail for that. A mount kept busy longer still fails.
    The daemon itself never makes its mount busy: it sends no request through it."""
    args = [fusermount(), "-u"] + (["-z"] if lazy else []) + [mountpoint]
    for attempt in range(BUSY_RETRIES):
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode == 0:
            return
        if "busy" not in result.stderr or attempt == BUSY_RETRIES - 1:
            break
        time.sleep(0.1)
    message = result.stderr.strip() or f"fusermount3 exited {result.returncode}"
    raise ConfigError(f"unmounting {mountpoint} failed: {message}")


def mount_device(mountpoint: str) -> tuple[int, int] | None:
    """(major, minor) of the filesystem mounted at ``mountpoint``, read from
    /proc/self/mountinfo (never stats the mountpoint, which may hang)."""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape") if "\\" in fields[4] else fields[4]
        if point == target:
            major, minor = fields[2].split(":")
            found = (int(major), int(minor))
    return found


def abort_connection(mountpoint: str) -> bool:
    """Abort a hung FUSE connection (``/sys/fs/fuse/connections/N/abort``); True if done."""
    device = mount_device(mountpoint)
    if device is None:
        return False
    try:
        with open(f"/sys/fs/fuse/connections/{device[1]}/abort", "w") as handle:
            handle.write("1")
    except OSError:
        return False
    return True
