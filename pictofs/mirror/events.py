"""The mirror's only watchdog user: watch a folder tree and hand plain ``Event`` records on.

``translate`` turns one watchdog event into an ``Event(kind, path, dest)`` with paths relative
to the mirrored folder, or None for the events the mirror does not need (opens, closes
without a write, folder mtime changes). ``Watcher`` runs an observer: inotify by default, the
polling observer with ``poll=True``, and polling as the fallback when inotify runs out of
watches (filesystem spec §9), with one log line giving the fix.

Running out of watches is not always an error watchdog reports: it raises for the top
folder, but a subfolder it cannot watch is skipped silently. So after starting, and again in
``check`` (the session calls it after folders were created), the watcher compares the inotify
watches this process holds (``/proc/self/fdinfo``) with the folders under the root; when
watches are missing twice in a row it switches to polling and says so. Events are delivered
from watchdog's thread through ``sink``, which must be thread-safe.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from pictofs.mirror.coalesce import Event

log = logging.getLogger(__name__)


class _StoppedEmitterNoise(logging.Filter):
    """watchdog logs an ERROR when an inotify emitter it is stopping still had events queued
    ("queue_events() called when the thread is inactive"), which happens when the mirror
    gives up inotify for polling; nothing is lost (polling takes over), so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_StoppedEmitterNoise())

WATCHES_SYSCTL = "fs.inotify.max_user_watches"
INSTANCES_SYSCTL = "fs.inotify.max_user_instances"
_KINDS = {"created": "created", "modified": "modified", "attrib": "attrib",
          "closed": "closed", "deleted": "deleted", "moved": "moved"}


def translate(event: FileSystemEvent, root: str) -> Event | None:
    """The mirror's view of one watchdog event (None: not needed)."""
    kind = _KINDS.get(event.event_type)
    if kind is None or (event.is_directory and kind in ("modified", "attrib", "closed")):
        return None
    path = _relative(event.src_path, root)
    dest = _relative(event.dest_path, root) if kind == "moved" else None
    if event.is_directory:
        kind = "dir_" + kind
    if kind in ("moved", "dir_moved"):
        if path is None and dest is None:
            return None
        if path is None:  # moved in from outside the tree: a creation
            return Event("dir_created" if event.is_directory else "created", dest or "")
        if dest is None:  # moved out of the tree: a deletion
            return Event("dir_deleted" if event.is_directory else "deleted", path)
        return Event(kind, path, dest)
    if path is None:
        return None
    return Event(kind, path)


def _relative(raw: bytes | str, root: str) -> str | None:
    """``root/a/b.jpg`` → ``a/b.jpg``; None for the root itself or a path outside it."""
    if not raw:
        return None
    path = os.fsdecode(raw)
    rel = os.path.relpath(path, root)
    if rel == "." or rel.startswith(".." + os.sep) or rel == "..":
        return None
    return rel.replace(os.sep, "/")


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, sink: Callable[[Event], None],
                 lost: Callable[[], None]) -> None:
        self._root = root
        self._sink = sink
        self._lost = lost

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "deleted" and os.fsdecode(event.src_path) == self._root:
            self._lost()
            return
        translated = translate(event, self._root)
        if translated is not None:
            self._sink(translated)


class Watcher:
    """Watches ``root`` recursively; ``mode`` is "inotify" or "polling"."""

    def __init__(self, root: Path, sink: Callable[[Event], None], *, poll: bool,
                 poll_interval: float, lost: Callable[[], None] = lambda: None,
                 inotify_factory: Callable[[], Any] = InotifyObserver) -> None:
        self.root = os.path.realpath(root)
        self._handler = _Handler(self.root, sink, lost)
        self._poll = poll
        self._interval = poll_interval
        self._inotify_factory = inotify_factory
        self._observer: Any = None
        self._short = 0  # consecutive checks that found watches missing
        self.mode = ""

    def start(self) -> str:
        if not self._poll:
            try:
                self._observer = self._started(self._inotify_factory())
                self.mode = "inotify"
            except OSError as exc:
                # watchdog before 7.1.1 raises only for the top folder; 7.1.1 also raises
                # for a subfolder at start-up. Either way no watch is left: poll instead.
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                self._fall_back(exc.errno)
            else:
                missing = self._missing_watches()
                if missing:
                    self._observer.stop()
                    self._observer.join()
                    self._observer = None
                    self._fall_back(errno.ENOSPC, missing)
        if self._observer is None:
            self._observer = self._started(PollingObserver(timeout=self._interval))
            self.mode = "polling"
        log.info("watching %s (%s)", self.root, self.mode)
        return self.mode

    def check(self) -> bool:
        """Look for folders inotify could not watch; True when this switched to polling
        (events may have been missed: the caller looks at the whole tree again)."""
        if self.mode != "inotify":
            return False
        missing = self._missing_watches()
        self._short = self._short + 1 if missing else 0
        if self._short < 2:
            return False
        self._observer.stop()
        self._observer.join()
        self._fall_back(errno.ENOSPC, missing)
        self._observer = self._started(PollingObserver(timeout=self._interval))
        self.mode = "polling"
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    # ---------------------------------------------------------------- internals

    def _started(self, observer: Any) -> Any:
        observer.schedule(self._handler, self.root, recursive=True)
        try:
            observer.start()
        except BaseException:
            observer.stop()
            raise
        return observer

    def _missing_watches(self) -> int:
        """Folders under the root that no inotify watch of this process covers. Watches
        are matched to folders by (device, inode), so watches of other observers on other
        folders never hide a gap, whether watchdog gives each observer its own inotify
        descriptor (7.1.1) or shares one (7.0)."""
        watched = watched_inodes()
        if watched is None:  # no /proc: nothing to compare with
            return 0
        return len(folder_inodes(self.root) - watched)

    def _fall_back(self, code: int, missing: int = 0) -> None:
        setting = INSTANCES_SYSCTL if code == errno.EMFILE else WATCHES_SYSCTL
        current = _read_int(Path("/proc/sys") / setting.replace(".", "/"))
        suggested = max(524288 if code == errno.ENOSPC else 1024, 2 * (current or 0))
        folders = count_folders(self.root)
        detail = f"{missing} of them could not be watched; " if missing else ""
        log.warning("inotify limit reached (%s = %s): %s has %d %s, one watch each; %s"
                    "watching it by polling instead (slower, and it cannot see that a file "
                    "is still open). Fix: sysctl %s=%d (add it to /etc/sysctl.d/ to keep "
                    "it), then restart the mirror", setting,
                    current if current is not None else "?", self.root, folders,
                    "folder" if folders == 1 else "folders", detail, setting, suggested)


def _inotify_fds() -> set[int]:
    """This process's open inotify descriptors (empty when /proc cannot tell)."""
    found = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                found.add(int(fd))
        except OSError:
            continue
    return found


def watched_inodes() -> set[tuple[int, int]] | None:
    """(device, inode) of every folder or file an inotify watch of this process is on, in
    the kernel's device numbering (``sdev``); None when /proc cannot tell."""
    if not os.path.isdir("/proc/self/fdinfo"):
        return None
    found = set()
    for fd in _inotify_fds():
        try:
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                for line in info:
                    if line.startswith("inotify wd:"):
                        fields = dict(part.split(":", 1) for part in line.split()[1:]
                                      if ":" in part)
                        found.add((int(fields["sdev"], 16), int(fields["ino"], 16)))
        except (OSError, KeyError, ValueError):
            continue
    return found


def folder_inodes(root: str) -> set[tuple[int, int]]:
    """(device, inode) of every folder a recursive watch of ``root`` needs, the device in
    the kernel's numbering (major << 20 | minor), as /proc shows a watch's."""
    found = set()
    for current, dirnames, _files in os.walk(root):
        try:
            st = os.stat(current)
        except OSError:
            continue
        found.add(((os.major(st.st_dev) << 20) | os.minor(st.st_dev), st.st_ino))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(current, d))]
    return found


def count_folders(root: str) -> int:
    """The folders a recursive inotify watch of ``root`` needs (symlinks not followed)."""
    return len(folder_inodes(root))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
