"""The group commit of one journal (filesystem spec §5 "Durability").

A writer's close records its flush without an fsync and without a commit: the bytes are in
the staging file (the page cache) and the flush is written beside them
(``Journal.defer_flushed``: one ``fsetxattr``), so a crash of the daemon (kill -9, the OOM
killer) loses nothing, and a close costs no disk wait. The group commit writes those flushes
into the journal's rows, and what a crash of the *machine* could still lose, the flushes
since the last group commit, is made durable here for all of them at once
(``Journal.make_durable``: one commit and one ``syncfs``):

- at most ``interval`` seconds after the oldest flush not yet durable (``--commit-interval``,
  default 5 s, as ext4's ``commit=``); with nothing flushed, nothing is done;
- at once when asked (``commit``): a writer's ``fsync``/``fdatasync``, ``pictofs sync``, the
  unmount. ``commit`` returns once everything flushed before the call is durable;
- with ``interval`` 0, at every flush, in the flushing thread (each close then waits for the
  disk, as before the group commit).

A flush a crash of the machine cut short is found by the upload: the journal recorded the
sha256 of the flushed bytes, and a staging file that does not have it fails instead of going
up (``job.inspect_entry``).

A commit that fails (a full or failing disk) keeps its entries waiting for the next one, with
one log line per distinct error; the caller who asked for it gets the error.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Callable, Iterable

from pictofs.core.upload.journal import Journal
from pictofs.errors import PictofsError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0


class GroupCommit:
    def __init__(self, journal: Journal, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._journal = journal
        self.interval = max(0.0, interval)
        self._clock = clock
        # _lock guards _waiting, _oldest, _stopping and the counters; _committing makes
        # commits one at a time (a caller's commit waits for the one in progress, whose
        # entries it may need)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._committing = threading.Lock()
        self._waiting: set[str] = set()
        self._oldest: float | None = None  # when the oldest flush still waiting was noted
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self.commits = 0

    def note(self, entry_ids: Iterable[str]) -> None:
        """Flushes just recorded (not durable yet); with ``interval`` 0, made durable now."""
        with self._changed:
            self._waiting.update(entry_ids)
            if self._oldest is None:
                self._oldest = self._clock()
                self._changed.notify_all()
        if self.interval == 0:
            self.commit()

    def waiting(self) -> int:
        """Flushes not durable yet (``pictofs status``)."""
        with self._lock:
            return len(self._waiting)

    def commit(self) -> None:
        """Make every flush noted so far durable; raises what the disk said (the flushes
        then wait for the next commit)."""
        with self._committing:
            with self._lock:
                if self._oldest is None:
                    return
                waiting, self._waiting, self._oldest = self._waiting, set(), None
            try:
                self._journal.make_durable(waiting)
            except BaseException:
                with self._lock:
                    self._waiting |= waiting
                    self._oldest = self._clock()
                raise
            with self._lock:
                self.commits += 1
                self._last_error = None

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        if self.interval == 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pictofs-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The last commit (the unmount's): every flush so far is durable when it returns,
        unless the disk refused (logged)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._commit_logged()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._stopping and (
                        self._oldest is None
                        or self._clock() < self._oldest + self.interval):
                    timeout = None if self._oldest is None \
                        else self._oldest + self.interval - self._clock()
                    self._changed.wait(timeout)
                if self._stopping:
                    return
            self._commit_logged()

    def _commit_logged(self) -> None:
        try:
            self.commit()
        except (PictofsError, OSError, sqlite3.Error) as exc:
            text = str(exc)
            with self._lock:
                repeated, self._last_error = self._last_error == text, text
            if not repeated:
                log.warning("group commit failed, retried in %gs (the flushed files are "
                            "safe from a crash of pictofs, not yet from one of the machine): "
                            "%s", self.interval, text)
