"""The journaled write-back upload queue shared by the mount and the mirror (filesystem spec
§5 "Writing", §8 "status").

``UploadQueue`` owns the in-memory scheduling of the entries of one ``Journal``: when each
upload is due (``write_back`` seconds after the last release), which ones are held open, which
are in flight, the retry backoff, the pause after a rejected key, and the counters
``pictofs status`` shows (the ``schedule.Schedule`` it guards). What one upload does is
``job.UploadJob``; what survives a crash is the journal. The queue owns a ``workers.Workers``
(``transfers`` threads), started by ``start()`` (the mount's ``init``, never before: libfuse
forks after mounting) and stopped by ``stop()``, which lets the step in flight finish and
leaves the rest queued in the journal for the next mount; what a worker does with a task is
there.

With ``batch`` > 1 (and a remote with the bulk verbs of ``batch.BulkRemote``), a worker that
takes a fresh entry also takes other due fresh entries of its folder and sends them together
with the bulk routes (``batch.BatchJob``), up to ``batch`` at a time and about an equal share
per worker. With ``parallel_puts`` too, the PUTs of a batch go out side by side in a pool of
``transfers`` threads the workers share, so a worker takes every due fresh entry of its
folder (up to ``batch``) instead of a share: fewer, larger bulk calls with as many PUTs in
flight (the mirror's start-up); at most ``workers.BATCHES_AT_ONCE`` such batches run at a
time (a worker that took another one waits for its turn).

Callers (FUSE threads, the mirror) use ``stage``/``flushed``/``set_mtime``/``schedule`` while
writing, ``hold`` when a staged file is opened again, ``retarget`` on rename, ``cancel`` on
unlink, ``discard`` on ``rm`` of a failed file, ``fail_staged`` for files the writer's side
will not upload (kept as failed, with their reason, until discarded or written again).
``hold`` and ``retarget`` wait while a register is in flight and return the registered image
when the entry already became one: from then on the change is the caller's (a replace or an
image rename). Callbacks ``on_registered`` and ``on_failed`` run in worker threads, outside
every lock. ``on_registered_many``, when given, is called instead of ``on_registered``: once
per batch with the ``(entry id, image)`` of every member that landed (once per single upload
with one pair), so that a caller can record them in one transaction.

A full state disk is ``NoSpace`` from the journal: a caller's call that could not record its
change raises it and leaves the journal as it was, except ``hold`` (its state write is left
out: a restart treats the states it writes alike) and ``cancel``/``discard`` (the entry is
cancelled here and a worker removes it from the journal once the disk has room). The
workers retry what they could not record (see ``workers``).

``stage_sources`` queues files that stay where they are (no staging file; the mirror's): the
journal records each one's size, mtime and sha256, and the upload checks the bytes it sends
against them. One that changed before it was registered ends as a cancel, and
``on_changed`` tells the caller to stage it again (``on_failed`` when there is none).

Locks, in the only order in which they may be held together:

1. a batch slot (``Workers._batch_slots``, with parallel PUTs): a worker waits for one
   holding no other lock;
2. the queue's lock (``_lock``, with the condition ``_changed`` signalled on every change;
   idle workers wait on a condition of their own on the same lock, and a change wakes one
   of them only when it may have work sooner than they would wake by themselves, see
   ``workers.Changed``): guards the ``Schedule`` (the task table and every ``Task``'s fields, due times, key
   pause, counters) and the workers' ``_stopping``, ``_threads`` and ``_last_prune``. The
   queue, the workers and each run's ``schedule.TaskControl`` (also called from the PUT
   pool's threads) share it. Three reads are made without it, each explained where it is
   made: ``_flushes`` and ``TaskControl._current`` (called under the journal's lock), and
   the stop flag a batch polls while it waits for a slot;
3. the journal's locks (``Journal._lock``, its reader's, its staging folder's, its new
   rows'): journal calls may be made with the queue's lock held, never the other way round,
   so the ``still`` questions passed to ``Journal.update_if`` and ``record_flushed`` take
   no lock.
   The frequent writes (stage, flush, the steps of a running upload) are made without the
   queue's lock, so the workers and the writers do not wait for each other's fsyncs.

No request is sent to the remote with the queue's lock held, and the callbacks run with no
lock held.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pictofs.core.upload.commits import DEFAULT_INTERVAL, GroupCommit
from pictofs.core.upload.journal import (
    QUARANTINE, Entry, Journal, ResumeAction, SourceRow, kept_aside, orphan_staging_files,
)
from pictofs.core.upload.journal import resume_action
from pictofs.core.upload.job import Header
from pictofs.core.upload.schedule import QueueStats, Schedule, Task
from pictofs.core.upload.states import JobState, Step
from pictofs.core.upload.workers import (
    Callbacks, Changed, ChangedCallback, FailedCallback, RegisteredCallback,
    RegisteredManyCallback, Workers, continue_cancel, drop,
)
from pictofs.errors import ConfigError, NoSpace
from pictofs.model import Image, join_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)

__all__ = ["QueueStats", "SourceFile", "UploadQueue"]



@dataclass(frozen=True)
class SourceFile:
    """A file to upload from where it is (``stage_sources``): its size, mtime and sha256
    when it was hashed."""

    folder: str
    filename: str
    replaced_id: str | None
    path: str
    size: int
    mtime_ns: int
    sha256: str


class UploadQueue:
    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        dataset_id: str,
        *,
        transfers: int = 16,
        write_back: float = 2.0,
        retry_max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_registered: RegisteredCallback | None = None,
        on_registered_many: RegisteredManyCallback | None = None,
        on_failed: FailedCallback | None = None,
        on_changed: ChangedCallback | None = None,
        rng: random.Random | None = None,
        batch: int = 1,
        parallel_puts: bool = False,
        commit_interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self._journal = journal
        self._commits = GroupCommit(journal, commit_interval, clock)
        # journals of this dataset that resume could not take over: {"folder", "pending"}
        self._stranded: list[dict[str, Any]] = []
        self._write_back = write_back
        self._clock = clock
        self._lock = threading.Lock()  # guards _schedule (see the module doc)
        self._changed = Changed(self._lock)
        self._schedule = Schedule(clock, pause=retry_max_wait)
        self._workers = Workers(
            remote, journal, dataset_id, self._schedule, self._changed,
            Callbacks(on_registered, on_registered_many, on_failed, on_changed),
            transfers=max(1, transfers), retry_max_wait=retry_max_wait, clock=clock,
            rng=rng or random.Random(), batch=max(1, batch), parallel_puts=parallel_puts)

    # ---------------------------------------------------------------- writing side

    def stage(self, folder: str, filename: str, replaced_id: str | None = None) -> str:
        """A new entry (state ``staged``) and its empty staging file (see ``stage_many``)."""
        return self.stage_many([(folder, filename, replaced_id)])[0]

    def stage_open(self, folder: str, filename: str,
                   replaced_id: str | None = None) -> tuple[str, int]:
        """``stage``, with the staging file left open for reading and writing: the entry id
        and the descriptor (the caller's to close)."""
        entry_ids, opened = self._stage([(folder, filename, replaced_id)], True, True)
        return entry_ids[0], opened[0]

    def stage_many(self, targets: Sequence[tuple[str, str, str | None]],
                   create_files: bool = True) -> list[str]:
        """``stage`` for many ``(folder, filename, replaced_id)`` at once. No commit and no
        fsync here: the rows are written with the journal's next commit (the first flush's,
        typically: ``Journal.add_many(deferred=True)``), as an entry not flushed yet holds
        nothing a restart resumes. A crash before that leaves a staging file without a row:
        resume removes it when empty and keeps it aside otherwise, as for a row never
        flushed. The group commit makes what was flushed durable.
        ``create_files=False``: the caller moves each entry's bytes to its ``staging_path``
        (and names them, ``Journal.name_staging_file``) before its first flush."""
        return self._stage(targets, create_files, False)[0]

    def _stage(self, targets: Sequence[tuple[str, str, str | None]], create_files: bool,
               keep_open: bool) -> tuple[list[str], list[int]]:
        entry_ids = [uuid.uuid4().hex for _ in targets]
        opened: list[int] = []
        try:
            if create_files:
                opened = self._journal.create_staging_files(
                    entry_ids, sync=False, keep_open=keep_open,
                    paths=[join_path(folder, filename) for folder, filename, _replaced
                           in targets])
            self._journal.add_many([(entry_id, *target) for entry_id, target
                                    in zip(entry_ids, targets)], deferred=True)
        except BaseException:  # a full disk: no entry, and no staging file either
            for fd in opened:
                os.close(fd)
            for entry_id in entry_ids if create_files else ():
                self._journal.remove_staging_file(entry_id, sync=False)
            raise
        with self._lock:
            for entry_id in entry_ids:
                self._schedule.add(entry_id)
        for entry_id, (folder, filename, _) in zip(entry_ids, targets):
            log.debug("staged %s in %s as entry %s", filename, folder, entry_id)
        return entry_ids, opened

    def stage_sources(self, sources: Sequence[SourceFile]) -> list[str]:
        """New entries uploaded from their source files, without staging copies: resumable
        at once (one durable transaction), due when ``schedule``d. For files nobody is
        writing to: one that changed before its bytes were registered is dropped (its
        ``on_changed``) instead of uploaded."""
        entry_ids = [uuid.uuid4().hex for _ in sources]
        self._journal.add_sources([SourceRow(entry_id, s.folder, s.filename, s.replaced_id,
                                             s.path, s.size, s.mtime_ns, s.sha256)
                                   for entry_id, s in zip(entry_ids, sources)])
        with self._lock:
            for entry_id in entry_ids:
                self._schedule.add(entry_id)
        return entry_ids

    def staging_path(self, entry_id: str) -> Path:
        return self._journal.staging_path(entry_id)

    def flushed(self, entry_id: str, size: int, sha256: str | None = None,
                header: Header | None = None, deferred: bool = False,
                fd: int | None = None) -> None:
        """The writer's flush returned with new bytes (``sha256``: theirs, when the writer
        knows it): the entry is resumable from now on, and an upload of older bytes starts
        over. Durable against a crash of the daemon at once, against one of the machine at
        the next group commit (``make_durable``, at most ``commit_interval`` later).
        ``header``: what Pillow read from the bytes at the flush, kept (in memory) so the
        upload of bytes that hash the same needs no second read. ``deferred``: the flush is
        recorded beside the bytes and its row written by a later commit
        (``Journal.defer_flushed``: the mount's close costs no commit); ``fd``, the writer's
        descriptor of the staging file, saves opening it."""
        self.flushed_many({entry_id: size}, None if sha256 is None else {entry_id: sha256},
                          None if header is None else {entry_id: header},
                          {} if fd is None else {entry_id: fd}, deferred=deferred)

    def flushed_many(self, sizes: Mapping[str, int],
                     digests: Mapping[str, str] | None = None,
                     headers: Mapping[str, Header] | None = None,
                     fds: Mapping[str, int] | None = None, deferred: bool = False) -> None:
        """``flushed`` for many entries (entry id → size, and → sha256 in ``digests`` and
        → ``Header`` in ``headers`` where known) at once: one transaction, not fsync'd
        (``commits``); ``deferred``, no transaction: recorded beside the bytes
        (``Journal.defer_flushed``; ``fds``: entry id → the writer's descriptor)."""
        flushes: dict[str, int] = {}
        with self._changed:
            for entry_id in sizes:
                if self._ended(entry_id):
                    continue
                task = self._schedule.add(entry_id)
                task.generation += 1  # a running upload of older bytes stops at its next step
                task.flushes += 1
                task.header = headers.get(entry_id) if headers else None
                flushes[entry_id] = task.flushes
            self._changed.notify_all()
        # Outside the queue's lock: the generation moved first, so a running upload writes
        # no step after this (TaskControl.record asks under the journal's lock).
        if deferred:
            self._journal.defer_flushed(
                {e: (number, sizes[e], (digests or {}).get(e))
                 for e, number in flushes.items()}, fds)
        else:
            self._journal.record_flushed({e: sizes[e] for e in flushes},
                                         still=lambda e: self._flushes(e) == flushes[e],
                                         digests=digests)
        self._commits.note(flushes)

    def make_durable(self) -> None:
        """Every flush so far survives a crash of the machine when this returns (a writer's
        fsync, ``pictofs sync``): the group commit, now. NoSpace or OSError from the disk."""
        self._commits.commit()

    def not_durable(self) -> int:
        """Flushes waiting for the next group commit."""
        return self._commits.waiting()

    def fail_staged(self, failures: Mapping[str, tuple[int, str]]) -> None:
        """Entries whose bytes the writer's side will not upload (entry id → (size,
        reason)): a file not an image, a 0-byte file at unmount. Each is failed for good
        now, its staging file and row kept (durable, as a flush makes them) with the
        reason, listed until discarded, written again (a flush stages it again) or renamed.
        An upload of older bytes in flight stops at its next step."""
        self._journal.clear_flush_marks(failures)  # the row says more now
        self._journal.sync_staging_files(failures)
        with self._changed:
            for entry_id in failures:
                task = self._schedule.task(entry_id)
                if task is not None:  # first: a running upload writes no step after this
                    task.generation += 1
            self._journal.update_many({
                entry_id: {"state": JobState.FAILED, "flushed": True, "size": size,
                           "error": reason}
                for entry_id, (size, reason) in failures.items()})
            for entry_id in failures:
                self._schedule.remove(entry_id)
            self._changed.notify_all()

    def set_mtime(self, entry_id: str, mtime: float | None) -> None:
        """The mtime a writer set (utimensat); it follows the entry to its image. None: a
        write came after it (the image then gets none from the entry)."""
        self._journal.set_entry_mtime(entry_id, mtime)

    def schedule(self, entry_id: str, delay: float | None = None,
                 unless: Callable[[], bool] | None = None) -> None:
        """Upload ``delay`` (default ``write_back``) seconds from now; a later call for the
        same entry pushes the upload back. ``unless``: asked under the queue's lock, where
        ``hold`` works; true, nothing is scheduled (the last close of a file that a writer
        has meanwhile opened again: its open counted itself before it held the upload, so
        either that hold comes after this, or this sees the count and leaves it)."""
        self.schedule_many([entry_id], delay, unless)

    def schedule_many(self, entry_ids: Iterable[str], delay: float | None = None,
                      unless: Callable[[], bool] | None = None) -> None:
        """``schedule`` for many entries at once: a worker finds them due together (and can
        send them in one batch)."""
        # Nothing is written to the journal: a restart queues every flushed entry whatever
        # its state (journal.resume_action), so 'queued' would add a commit and no safety.
        closed = 0
        with self._changed:
            if unless is not None and unless():
                return
            for entry_id in entry_ids:
                task = self._schedule.task(entry_id)
                if task is None or task.cancelled:
                    continue
                self._schedule.due_in(task, self._write_back if delay is None else delay)
                closed += 1
            self._schedule.note_closes(closed)
            self._changed.notify_all()

    def hold(self, entry_id: str) -> Image | None:
        """The staged file is open for writing again: no upload until ``schedule``. Returns
        the image when the entry already registered (further writes are then a replace)."""
        with self._changed:
            task = self._settled(entry_id)
            if task is None or task.image is not None:
                return self._schedule.landed(entry_id)
            task.held, task.due = True, None
            task.generation += 1
            if not task.running:
                try:
                    self._journal.update(entry_id, state=JobState.STAGED)
                except NoSpace:  # the row keeps its state: a restart treats both alike
                    pass
            self._changed.notify_all()
            return None

    def retarget(self, entry_id: str, folder: str, filename: str,
                 replaced_id: str | None = None) -> Image | None:
        """Upload under another name (``replaced_id``: the image now at that name). Returns
        the image when the entry already registered: renaming it is then the caller's job."""
        with self._changed:
            task = self._settled(entry_id)
            entry = self._journal.get(entry_id)
            if (task is not None and task.image is not None) or entry is None \
                    or entry.state == JobState.DONE:
                return self._schedule.landed(entry_id)
            if task is not None:  # first: a running upload writes no step after this
                task.generation += 1
            self._journal.name_staging_file(entry_id, join_path(folder, filename))
            self._journal.update(entry_id, folder=folder, filename=filename,
                                 replaced_id=replaced_id, url_key=None, register_key=None,
                                 step=Step.NONE, error=None,
                                 state=JobState.QUEUED if entry.state == JobState.FAILED
                                 else entry.state)
            if task is None:  # a failed entry: a new name is a new try
                task = self._schedule.add(entry_id)
                self._schedule.due_in(task, 0.0)
            self._changed.notify_all()
        log.debug("entry %s retargeted to %s in %s", entry_id, filename, folder)
        return None

    def cancel(self, entry_id: str) -> None:
        """Drop the entry (unlink). An upload already registered is archived by a worker."""
        with self._changed:
            entry = self._journal.get(entry_id)
            if entry is None:
                return
            task = self._schedule.add(entry_id)
            task.cancelled, task.held = True, False
            task.generation += 1  # first: a running upload writes no step after this
            try:
                entry = self._journal.update(entry_id, cancelled=True)
                if not task.running:
                    continue_cancel(self._schedule, self._journal, task, entry)
            except NoSpace as exc:
                self._finish_later(task, entry, exc)
            self._changed.notify_all()

    def discard(self, entry_id: str) -> None:
        """``rm`` of a failed file: forget it and its staging file (others: ``cancel``)."""
        entry = self._journal.get(entry_id)
        if entry is not None and entry.state == JobState.FAILED:
            try:
                drop(self._journal, entry_id)
            except NoSpace as exc:
                with self._changed:
                    self._finish_later(self._schedule.add(entry_id), entry, exc)
                    self._changed.notify_all()
        else:
            self.cancel(entry_id)

    def _finish_later(self, task: Task, entry: Entry, exc: NoSpace) -> None:
        """A cancel or discard the journal could not record (its disk is full): the task is
        cancelled, and a worker ends it as it ends any cancel, retried with backoff until
        the journal takes the write (lock held)."""
        log.warning("%s: %s; it is removed from the journal once the disk has room",
                    entry.path, exc)
        task.cancelled, task.held = True, False
        if not task.running:
            self._schedule.due_in(task, 0.0)

    # ---------------------------------------------------------------- reading side

    def get(self, entry_id: str) -> Entry | None:
        return self._journal.get(entry_id)

    def entries(self) -> list[Entry]:
        """Every entry not done yet (staged, queued, uploading, failed)."""
        return [e for e in self._journal.entries() if e.state != JobState.DONE]

    def failed(self) -> list[Entry]:
        return self._journal.entries(JobState.FAILED)

    def mtime(self, image_id: str) -> float | None:
        """The mtime a writer set for an image on this machine, if any (for ``stat``)."""
        return self._journal.mtime(image_id)

    def set_image_mtime(self, image_id: str, mtime: float) -> None:
        self._journal.set_mtime(image_id, mtime)

    def stats(self) -> QueueStats:
        failed = len(self.failed())
        workers = self._workers.alive()
        with self._lock:
            return self._schedule.stats(failed, workers)

    def expedite(self) -> int:
        """Start now every upload that only waits for its ``write_back`` delay (``pictofs
        sync`` and ``umount`` ask for the service now); a retry keeps its backoff and a file
        open for writing stays held. Returns how many were moved up."""
        with self._changed:
            self._schedule.hurry = True  # and no gathering of a batch (schedule.gather_wait)
            now = self._clock()
            moved = [t for t in self._schedule.tasks.values()
                     if t.due is not None and t.due > now and not t.running and not t.held
                     and not t.attempts and not t.cancelled]
            for task in moved:
                self._schedule.due_in(task, 0.0)
            if moved:
                self._changed.notify_all()
            return len(moved)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is scheduled or in flight (failed and held entries do not
        count); False if that did not happen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._schedule.busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    busy = [t for t in self._schedule.tasks.values() if t.busy]
                    # a diagnosis, not news: `pictofs umount` and `sync` ask every second
                    log.debug("still busy after %gs: %s", timeout, "; ".join(
                        f"{t.entry_id} due={t.due} running={t.running} held={t.held} "
                        f"cancelled={t.cancelled} landed={t.image is not None}"
                        for t in busy[:10]))
                    return False
                self._changed.wait(remaining)
            return True

    # ---------------------------------------------------------------- life cycle

    def resume(self) -> list[str]:
        """At mount, before ``start``: queue every entry whose last flush returned, drop the
        others with their staging files, forget done entries and orphan staging files.
        Returns the ids queued."""
        self._take_over_stranded()
        recovered = self._journal.recover_flushes()
        if recovered:
            log.info("%d flush(es) found beside the staged bytes, not in the journal's rows "
                     "(pictofs was stopped before their commit): resumed", len(recovered))
        entries = self._journal.entries()
        self._put_orphans_aside(entries)
        queued: list[Entry] = []
        for entry in entries:
            action = resume_action(entry)
            if action is ResumeAction.PRUNE:
                self._journal.remove_staging_file(entry.id)
                self._journal.delete(entry.id)
            elif action is ResumeAction.DROP:
                self._drop_unflushed(entry)
            elif action in (ResumeAction.QUEUE, ResumeAction.FINISH_CANCEL):
                queued.append(entry)
        self._journal.update_many({entry.id: {"state": JobState.QUEUED} for entry in queued})
        with self._changed:
            for entry in queued:
                task = self._schedule.add(entry.id)
                task.cancelled = entry.cancelled
                self._schedule.due_in(task, 0.0)
            self._changed.notify_all()
        if queued:
            log.info("resuming %d upload(s) from the journal", len(queued))
        return [entry.id for entry in queued]

    def _drop_unflushed(self, entry: Entry) -> None:
        """At resume: an entry whose flush the journal never recorded. A cancelled one
        (``rm``) or one with no bytes is forgotten with its staging file; bytes that were
        being written (the daemon died before the close), or whose recorded flush a crash
        of the machine lost, are kept aside in the quarantine, never deleted."""
        path = self._journal.staging_path(entry.id)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if entry.cancelled or size == 0:
            log.info("dropping %s: its writer never flushed it", entry.path)
            drop(self._journal, entry.id)
            return
        kept = self._journal.keep_aside(entry.id)
        self._journal.delete(entry.id)
        log.warning("%s (%d bytes) was being written when pictofs stopped, or its close was "
                    "lost in a crash of the machine: not uploaded, kept aside as %s",
                    entry.path, size, kept)

    def _take_over_stranded(self) -> None:
        """Other journals of this dataset (kept by an older pictofs under a name of base
        URL and key): their pending uploads move into this one; one that cannot (another
        process holds it) is reported, and again by ``status`` (found once, here: a status
        reads no other journal)."""
        self._stranded = []
        for info in self._journal.stranded():
            try:
                self._journal.absorb(info.folder)
            except (OSError, sqlite3.Error, ConfigError) as exc:
                self._stranded.append({"folder": str(info.folder), "pending": info.live})
                log.warning("%d pending upload(s) of this dataset wait in another journal, "
                            "%s, which cannot be taken over now (%s); they are not lost",
                            info.live, info.folder, exc)

    def report(self) -> dict[str, Any]:
        """What ``pictofs status`` says of the journal beyond the queue: files kept aside
        and journals of this dataset that could not be taken over."""
        return {"kept_aside": [str(p) for p in kept_aside(self._journal.directory)],
                "stranded": self._stranded}

    def _put_orphans_aside(self, entries: Sequence[Entry]) -> None:
        """Staging files no live row owns: a done entry's file is removed (its image
        landed), an empty one too (nothing to lose); any other is kept aside in the
        journal's quarantine, never deleted (its row was lost: a damaged or removed
        journal), with one log line saying where."""
        landed = {e.id for e in entries if e.state == JobState.DONE}
        kept = []
        for name in orphan_staging_files(entries, self._journal.staging_names()):
            path = self._journal.staging_path(name)
            try:
                empty = path.stat().st_size == 0
            except OSError:
                continue
            if name in landed or empty:
                self._journal.remove_staging_file(name)
            else:
                kept.append(self._journal.keep_aside(name))
        if kept:
            log.warning("%d staged file(s) the upload journal has no record of (a damaged "
                        "or removed journal) were kept aside in %s, not uploaded: copy them "
                        "back into the mount to upload them", len(kept),
                        self._journal.directory / QUARANTINE)

    def start(self) -> None:
        """Start the workers and the group commit (once; the mount's init calls it)."""
        self._workers.start()
        self._commits.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Let the steps in flight finish and leave the rest queued in the journal for the
        next mount; True if every worker ended within ``timeout``. The last group commit
        makes every flush durable. Not restartable."""
        done = self._workers.stop(timeout)
        self._commits.stop()
        return done

    # ---------------------------------------------------------------- helpers

    def _settled(self, entry_id: str) -> Task | None:
        """The task once no register of it is in flight (waits for one that is). Lock held."""
        while True:
            task = self._schedule.task(entry_id)
            if task is None or not task.registering:
                return task
            self._changed.wait()

    def _ended(self, entry_id: str) -> bool:
        """Whether a flush of the entry comes after its upload ended (landed or cancelled:
        ignored, with a warning; KeyError for an unknown entry). A live task that has not
        landed and is not cancelled answers without reading the journal (the common case:
        the writer's own file); any other asks the journal's row. Lock held."""
        task = self._schedule.task(entry_id)
        if task is not None and task.image is None and not task.cancelled:
            return False
        entry = self._require(entry_id)
        if entry.state == JobState.DONE or entry.cancelled:
            log.warning("flush of %s after its upload ended is ignored (hold() it before "
                        "writing again)", entry.path)
            return True
        return False

    def _flushes(self, entry_id: str) -> int:
        """How many flushes of the entry this process saw (read without the lock: an int,
        and only compared with a count the same caller took under it)."""
        task = self._schedule.tasks.get(entry_id)
        return task.flushes if task is not None else -1

    def _require(self, entry_id: str) -> Entry:
        entry = self._journal.get(entry_id)
        if entry is None:
            raise KeyError(f"no upload entry {entry_id}")
        return entry
