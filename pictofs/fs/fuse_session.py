"""The FUSE session of a mount: the mountpoint checks, FUSE options, libfuse's loop and its
signals, unmounting with fusermount3 (what libfuse calls ``fuse_session_mount``, ``_loop``
and ``_unmount``). ``pictofs.mounting`` builds the operations it serves.

- ``prepare_mountpoint`` refuses a missing or busy mountpoint and lazily unmounts a stale one
  left by a killed daemon (``ENOTCONN``), with a log line.
- ``serve`` runs libfuse in the calling thread until unmount. What libfuse and fusermount3
  write on stderr while mounting is captured (``MountMessages``): a refused mount then
  fails with fusermount3's own reason and, for the refusals a user can fix, the fix
  (``explain_refusal``), and what they said on a mount that worked goes to the log. SIGHUP is blocked first and
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
import tempfile
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


class MountMessages:
    """What libfuse and fusermount3 write on stderr (file descriptor 2) while mounting.

    libfuse reports a refused mount only there (fusermount3's "user has no write access to
    mountpoint", "option allow_other only allowed if 'user_allow_other' is set in
    /etc/fuse.conf"), and the daemon's stderr is /dev/null. ``start`` points descriptor 2
    at a temporary file; ``release`` (from ``init``, once mounted, or when libfuse gives
    up) points it back, writes what was captured to the original stderr too, and returns
    it. Only libfuse's own thread runs between the two: the mount's threads start in
    ``init``."""

    def __init__(self) -> None:
        self._saved: int | None = None
        self._file: Any = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)

    def release(self) -> str:
        """Restore stderr and return what was captured ("" once released)."""
        with self._lock:
            if self._saved is None:
                return ""
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
            self._file.seek(0)
            data = self._file.read()
            self._file.close()
        if data:
            try:
                os.write(2, data)
            except OSError:
                pass
        return data.decode("utf-8", "replace").strip()


# fusermount3's refusals a user can fix, and the fix
_FIXES = (
    ("user_allow_other", "as root, add the line user_allow_other to /etc/fuse.conf, or "
                         "mount without --allow-other"),
    ("no write access to mountpoint", "mount on a folder you own (mkdir ~/mnt), or make "
                                      "this one yours (chown)"),
    ("mountpoint is not a directory", "mount on a folder"),
    ("too many FUSE filesystems mounted", "as root, raise mount_max in /etc/fuse.conf"),
    ("failed to open /dev/fuse", "make /dev/fuse readable and writable by you (its udev "
                                 "rule, or chmod 0666 /dev/fuse)"),
)


def explain_refusal(mountpoint: str, code: object, messages: str) -> str:
    """One line for a mount libfuse refused: fusermount3's (or libfuse's) own last line,
    and the fix when it is one a user can make; the libfuse code when nothing was said."""
    lines = [line.strip() for line in messages.splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if line.startswith("fusermount3:")),
                  lines[-1] if lines else "")
    if not reason:
        return f"mounting {mountpoint} failed (libfuse error {code}, with no message)"
    fix = next((fix for needle, fix in _FIXES if needle in reason), None)
    return f"mounting {mountpoint} failed: {reason}" + (f" ({fix})" if fix else "")


def serve(operations: Any, settings: MountSettings,
          messages: MountMessages | None = None) -> None:
    """Mount and serve until unmounted (blocks). Raises ConfigError if libfuse refuses,
    with fusermount3's reason. ``messages`` is released by the caller's ``init`` once
    mounted (what libfuse said then is logged)."""
    from pictofs.fs.operations import PictoFUSE

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    messages = messages or MountMessages()
    messages.start()
    try:
        PictoFUSE(operations, settings.mountpoint, raw_fi=True, **fuse_options(settings))
    except RuntimeError as exc:
        raise ConfigError(explain_refusal(settings.mountpoint, exc, messages.release())
                          ) from None
    finally:
        messages.release()


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


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo: the filesystem mounted at a mountpoint."""

    device: tuple[int, int]  # (major, minor)
    fstype: str  # "fuse.pictofs" for every pictofs mount (its FUSE subtype)
    source: str
    options: dict[str, str]  # the superblock's options: FUSE's user_id, group_id, ...

    @property
    def is_pictofs(self) -> bool:
        return self.fstype == "fuse.pictofs"

    @property
    def owner(self) -> int | None:
        """The uid that mounted it (FUSE's ``user_id``), if said."""
        value = self.options.get("user_id", "")
        return int(value) if value.isdigit() else None


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mount_entry(mountpoint: str) -> MountEntry | None:
    """What is mounted at ``mountpoint`` (the last mount there), read from
    /proc/self/mountinfo (never stats the mountpoint, which may hang); None if nothing."""
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
            lines = info.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) < 5 or _unescape(fields[4]) != target:
            continue
        major, minor = fields[2].split(":")
        tail = line.split(" - ", 1)[1].split() if " - " in line else []
        options = dict(option.partition("=")[::2] for option in
                       (tail[2].split(",") if len(tail) > 2 else []))
        found = MountEntry((int(major), int(minor)), tail[0] if tail else "",
                           _unescape(tail[1]) if len(tail) > 1 else "", options)
    return found


def mount_device(mountpoint: str) -> tuple[int, int] | None:
    """(major, minor) of the filesystem mounted at ``mountpoint`` (None: nothing there)."""
    entry = mount_entry(mountpoint)
    return entry.device if entry is not None else None


def whose_mount(mountpoint: str) -> str | None:
    """Why ``mountpoint`` has no pictofs control socket for this user, in words: it is not a
    mount, not a pictofs mount, or another user's; None when it is this user's own pictofs
    mount (its socket is elsewhere, or its daemon died)."""
    path = os.path.abspath(mountpoint)
    entry = mount_entry(path)
    if entry is None:
        return f"{path} is not a mountpoint"
    if not entry.is_pictofs:
        return f"{path} is not a pictofs mount (it is a {entry.fstype or 'different'} mount)"
    if entry.owner is not None and entry.owner != os.getuid():
        return (f"{path} is a pictofs mount of another user ({_user_name(entry.owner)}), "
                "not yours: only that user (or root, for unmounting) can manage it")
    return None


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"


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
