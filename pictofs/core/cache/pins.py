"""Pins that other processes can see: which cache entries are open or downloading.

A pin is a file ``<name>.<pid>`` in the pins folder of one cache folder, present while
process ``<pid>`` holds the entry ``<name>`` at least once; inside the process a count says
how many holders there are. Pins of dead processes (a crash, ``kill -9``) are ignored and
removed at start. A reused pid can make a stale pin look alive: that only keeps an entry
longer, never evicts one in use.

An unpin may ``linger`` (a cache entry closed by its last reader): its file stays for
``LINGER_SECONDS`` more, so reopening the entry (a training loop reading the same images
again) costs no file creation and removal. Other processes see the entry pinned meanwhile;
this process does not (its own pins come from its counts). A sweeper thread, alive only
while lingering pins exist, removes them when their time is up; ``close`` removes them at
once.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state letter follows the command name, which is in parentheses and may hold spaces
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _parse(file_name: str) -> tuple[str, int] | None:
    """``<name>.<pid>`` → (name, pid)."""
    name, dot, pid = file_name.rpartition(".")
    if not dot or not name or not pid.isdigit():
        return None
    return name, int(pid)


class PinTable:
    """Pins of this process in one folder, and a view of every live process's pins."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # guards _counts (entry name → holders in this process), _lingering (name → when
        # its last holder left, oldest first), _sweeping and the pin files of this process
        self._lock = threading.Condition()
        self._counts: dict[str, int] = {}
        self._lingering: dict[str, float] = {}
        self._sweeping = False

    def pin(self, name: str) -> None:
        with self._lock:
            count = self._counts.get(name, 0)
            if count == 0 and self._lingering.pop(name, None) is None:
                self._create(name)
            self._counts[name] = count + 1

    def unpin(self, name: str, linger: bool = False) -> None:
        """Drop one hold; the last one removes the pin file, or with ``linger`` leaves it
        for ``LINGER_SECONDS``."""
        with self._lock:
            count = self._counts.get(name, 0)
            if count <= 0:
                log.debug("unpin of %s without a pin", name)
                return
            if count > 1:
                self._counts[name] = count - 1
                return
            del self._counts[name]
            if not linger:
                self._path(name).unlink(missing_ok=True)
                return
            self._lingering[name] = time.monotonic()
            if not self._sweeping:
                self._sweeping = True
                threading.Thread(target=self._sweep, name="pictofs-pins",
                                 daemon=True).start()

    def close(self) -> None:
        """Remove the lingering pins now (the cache is closed)."""
        with self._lock:
            for name in self._lingering:
                self._path(name).unlink(missing_ok=True)
            self._lingering.clear()
            self._lock.notify_all()

    def pinned_names(self) -> set[str]:
        """Names pinned by any live process (this one by its counts: its lingering pins
        do not keep it from evicting)."""
        own = os.getpid()
        with self._lock:
            names = set(self._counts)
        for entry, pid in self._scan():
            if pid != own and pid_alive(pid):
                names.add(entry)
        return names

    def _sweep(self) -> None:
        """Remove lingering pins as their time is up; ends when none is left."""
        with self._lock:
            while self._lingering:
                name, since = next(iter(self._lingering.items()))
                wait = since + LINGER_SECONDS - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                del self._lingering[name]
                self._path(name).unlink(missing_ok=True)
            self._sweeping = False

    def remove_stale(self) -> int:
        """Remove the pins of dead processes; returns how many."""
        removed = 0
        for entry, pid in self._scan():
            if not pid_alive(pid):
                self._path(entry, pid).unlink(missing_ok=True)
                removed += 1
        return removed

    def _create(self, name: str) -> None:
        """Create the pin file (lock held). On a full disk the pin still holds in this
        process; other processes cannot see it."""
        try:
            os.close(os.open(self._path(name), os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            log.debug("cannot create the pin file of %s: %s", name, exc)

    def _scan(self) -> list[tuple[str, int]]:
        pins = []
        try:
            names = os.listdir(self._folder)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return pins
        for file_name in names:
            parsed = _parse(file_name)
            if parsed is not None:
                pins.append(parsed)
        return pins

    def _path(self, name: str, pid: int | None = None) -> Path:
        return self._folder / f"{name}.{os.getpid() if pid is None else pid}"
