"""The worker threads of one ``queue.UploadQueue``: ``Workers`` owns them (started by
``start``, stopped by ``stop``), the pool the PUTs of batches share, and what a worker does:
take a due task (and, with ``batch``, due fresh companions of its folder), run it as a
``job.UploadJob`` or a ``batch.BatchJob``, and record how the run ended: landed (the staging
file goes, the ``on_registered`` callback runs), interrupted (queued again, or held, or the
cancel goes on), or failed (retried after a backoff, paused while the API key is rejected, or
failed for good).

Nothing ends a worker thread: an exception a run could not record (the journal's commit on a
full state disk, ``NoSpace``, which is also a transient failure of the upload itself; a bug)
is caught in the worker's loop, logged once per task and reason, and every task the run left
neither scheduled, held nor ended is given back, due again after its backoff: never left "in
flight". What the journal could not record is written by a later run (a restart queues every
flushed entry whatever its state), so the uploads go on once the disk has room.

``Workers`` gets what it uses in its constructor: the remote and the journal, the queue's
``Schedule`` and the condition (on the queue's lock) that guards it, and the ``Callbacks``.

Locks (the order is the queue's, see ``queue``): ``changed`` (the queue's lock) guards the
schedule and its tasks, ``_stopping``, ``_threads`` and ``_last_prune``; journal calls may be
made with it held, never the other way round, and no request is sent with it held. A batch
waits for a slot (``_batch_slots``) without it, and may take it while it holds a slot. The
callbacks run outside every lock.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from pictofs.core.upload import batch as upload_batch
from pictofs.core.upload import job as upload_job
from pictofs.core.upload.journal import Entry, Journal
from pictofs.core.upload.job import Disposition, Interrupted, Landed, UploadJob
from pictofs.core.upload.schedule import Schedule, Task, TaskControl
from pictofs.core.upload.states import JobState
from pictofs.errors import NoSpace
from pictofs.model import Image
from pictofs.remote import Remote

log = logging.getLogger(__name__)

DONE_KEEP = 3600.0  # seconds a done journal row is kept before it is pruned
PRUNE_EVERY = 60.0  # seconds between two prunings
SLOT_POLL = 0.2  # seconds between two looks at the stop flag while a batch waits its turn
# With parallel PUTs, batches that run at once: the second's PUTs queue behind the first's in
# the shared pool, so the transfers stay busy while the first registers. More only put more
# bulk registers in flight at once, which compete with the PUTs on the service and finish no
# sooner (measured: docs/performance.md, "Mirror"); fewer idle the transfers at each
# register. Holding the slot through the register measured better than releasing it after
# the PUTs (which piles the registers up).
BATCHES_AT_ONCE = 2
# A nudge wakes an idle worker only for a task due this much sooner than the worker wakes by
# itself: a sleeper notes its wake-up as the clock read after the schedule's (``clock() +
# wait``), a hair later than the due time it waits for, and without the slack every close
# woke a worker to find that same task not yet due.
WAKE_SLACK = 0.005  # seconds

RegisteredCallback = Callable[[str, Image], None]
RegisteredManyCallback = Callable[[list[tuple[str, Image]]], None]
FailedCallback = Callable[[str, str], None]
ChangedCallback = Callable[[str], None]


@dataclass(frozen=True)
class Callbacks:
    """What the queue's owner hears from the workers (in worker threads, outside every
    lock); see ``queue``."""

    on_registered: RegisteredCallback | None = None
    on_registered_many: RegisteredManyCallback | None = None
    on_failed: FailedCallback | None = None
    on_changed: ChangedCallback | None = None


def drop(journal: Journal, entry_id: str) -> None:
    """Forget an entry: its row and its staging file."""
    journal.delete(entry_id)
    journal.remove_staging_file(entry_id)


def continue_cancel(schedule: Schedule, journal: Journal, task: Task, entry: Entry) -> None:
    """A cancelled entry not running: drop it now, or let a worker archive its image (the
    queue's lock held). A full disk (``NoSpace``) leaves the task as it was."""
    if entry.image_id is None and task.image is None and not entry.maybe_registered:
        drop(journal, task.entry_id)
        schedule.remove(task.entry_id)
    else:
        schedule.due_in(task, 0.0)


class Changed(threading.Condition):
    """The queue's condition, signalled on every change: ``notify_all`` wakes whoever waits
    on it (``wait_idle``, a ``hold`` waiting for a register) and then calls ``on_notify``
    (``Workers._nudge``), which wakes an idle worker only when it may have work sooner, so
    that a close does not wake every worker."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.lock = lock
        self.on_notify: Callable[[], None] = lambda: None

    def notify_all(self) -> None:
        super().notify_all()
        self.on_notify()


class Workers:
    """The ``transfers`` worker threads of one queue and what they do with a task."""

    def __init__(self, remote: Remote, journal: Journal, dataset_id: str, schedule: Schedule,
                 changed: Changed, callbacks: Callbacks, *, transfers: int,
                 retry_max_wait: float, clock: Callable[[], float], rng: random.Random,
                 batch: int, parallel_puts: bool) -> None:
        self._remote = remote
        self._journal = journal
        self._dataset_id = dataset_id
        self._schedule = schedule
        self._changed = changed
        self._callbacks = callbacks
        self._transfers = transfers
        self._retry_max_wait = retry_max_wait
        self._clock = clock
        self._rng = rng
        self._batch = batch
        # The PUTs of batches (threads are started at the first one, not before start()).
        self._senders = (ThreadPoolExecutor(transfers, thread_name_prefix="upload-put")
                         if parallel_puts and batch > 1 else None)
        self._batch_slots = (threading.BoundedSemaphore(BATCHES_AT_ONCE)
                             if self._senders is not None else None)
        # guarded by changed's lock
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._last_prune = clock()
        # idle workers wait here (changed's lock), each until the clock time it noted in
        # _sleepers (inf: until told); changed.notify_all() calls _nudge
        self._idle = threading.Condition(changed.lock)
        self._sleepers: dict[int, float] = {}
        changed.on_notify = self._nudge
        schedule.gather_batch = batch

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the threads (once; not after ``stop``)."""
        with self._changed:
            if self._threads or self._stopping:
                return
            self._threads = [threading.Thread(target=self._work, name=f"upload-{n}",
                                              daemon=True) for n in range(self._transfers)]
            threads = list(self._threads)
        for thread in threads:
            thread.start()

    def stop(self, timeout: float) -> bool:
        """Let the steps in flight finish; True if every thread ended within ``timeout``.
        Not restartable."""
        with self._changed:
            self._stopping = True
            threads = self._threads
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        ended = not any(t.is_alive() for t in threads)
        if ended and self._senders is not None:  # (a worker still running may yet use it)
            self._senders.shutdown(wait=False)
        return ended

    def alive(self) -> int:
        """How many worker threads are running (``transfers`` from ``start`` to ``stop``)."""
        with self._changed:
            threads = list(self._threads)
        return sum(1 for thread in threads if thread.is_alive())

    # ---------------------------------------------------------------- a worker

    def _work(self) -> None:
        while (tasks := self._take()) is not None:
            taken = [task.taken for task in tasks]
            try:
                if len(tasks) == 1:
                    self._run(tasks[0])
                else:
                    self._run_batch(tasks)
            except Exception as exc:  # nothing ends a worker (see the module doc)
                self._give_back(list(zip(tasks, taken)), exc)

    def _give_back(self, runs: list[tuple[Task, int]], exc: Exception) -> None:
        """After a run that raised: each of its tasks (``(task, task.taken)`` when it was
        taken) that the run left neither due, held, ended nor taken again is due again
        after its backoff. Logged once per task and reason: a full disk in one line, a bug
        with its traceback; the same again only at DEBUG."""
        reason = upload_job.describe(exc)
        given: list[tuple[Task, float]] = []
        with self._changed:
            self._schedule.run_ended()
            for task, taken in runs:
                if task.taken != taken or self._schedule.task(task.entry_id) is not task:
                    continue  # taken by another run since, or ended
                task.running = task.registering = False
                if task.due is not None:  # made due while it ran: (again) in the heap now
                    self._schedule.requeue(task)  # (a second entry there is skipped as stale)
                    continue
                if (task.held and not task.cancelled) or self._stopping:
                    continue  # waiting for its writer, or left to the next mount
                task.attempts += 1
                delay = upload_job.retry_delay(task.attempts, self._retry_max_wait,
                                               upload_job.draw_jitter(self._rng))
                self._schedule.due_in(task, delay)
                repeated = task.trouble == reason
                task.trouble = reason
                if not repeated:
                    given.append((task, delay))
            self._changed.notify_all()
        for task, delay in given:
            entry = self._journal.get(task.entry_id)
            path = entry.path if entry is not None else task.entry_id
            if isinstance(exc, NoSpace):
                log.warning("upload of %s: %s; trying again in %.1fs", path, reason, delay)
            else:
                log.error("upload of %s: unexpected error; trying again in %.1fs", path,
                          delay, exc_info=exc)
        if not given:
            log.debug("upload run failed again (%s)", reason)

    def _take(self) -> list[Task] | None:
        """The next due task (and its batch companions), marked running; None when
        stopping. An idle worker sleeps until the next task is due (or it is nudged); one
        that takes a task wakes another when more are due."""
        with self._changed:
            while not self._stopping:
                wait = self._schedule.gather_wait()
                task = None
                if wait is None:
                    task, wait = self._schedule.take()
                if task is not None:
                    tasks = [task, *self._companions(task)]
                    upcoming = self._schedule.next_wake()
                    if upcoming is not None and upcoming <= self._clock():
                        self._idle.notify()
                    return tasks
                me = threading.get_ident()
                self._sleepers[me] = math.inf if wait is None else self._clock() + wait
                try:
                    self._idle.wait(wait)
                finally:
                    del self._sleepers[me]
            return None

    def _nudge(self) -> None:
        """Something changed (``changed`` was notified; its lock is held): wake one idle
        worker if a task may be due before any idle worker wakes by itself (while a batch
        gathers, see ``Schedule.gather_wait``: before it is done gathering), all of them
        when stopping. A flush or a ``schedule`` due seconds later wakes nobody."""
        if not self._sleepers:
            return
        if self._stopping:
            self._idle.notify_all()
            return
        gather = self._schedule.gather_wait()
        if gather is not None:  # a batch is gathering: one worker must wake when it ends
            if min(self._sleepers.values()) > self._clock() + gather:
                self._idle.notify()
            return
        upcoming = self._schedule.next_wake()
        if upcoming is not None and upcoming < min(self._sleepers.values()) - WAKE_SLACK:
            self._idle.notify()

    def _companions(self, task: Task) -> list[Task]:
        """Due fresh entries to send in one batch with ``task`` (lock held)."""
        if self._batch < 2:
            return []
        # With the PUTs of a batch sent side by side, one batch keeps every transfer busy:
        # no need to share what is due between the workers.
        workers = 1 if self._senders is not None else self._transfers
        return upload_batch.companions(self._schedule, self._journal, task,
                                       limit=self._batch, workers=workers)

    def _run_batch(self, tasks: list[Task]) -> None:
        """Run a batch, once one of the ``BATCHES_AT_ONCE`` slots is free when its PUTs go
        to the shared pool (a stop while it waits queues its members again)."""
        if self._batch_slots is None:
            self._run_batch_now(tasks)
            return
        while not self._batch_slots.acquire(timeout=SLOT_POLL):
            if self._stopping:  # read without the lock (a slot comes before it)
                for task in tasks:
                    self._after_interrupt(task)
                return
        try:
            self._run_batch_now(tasks)
        finally:
            self._batch_slots.release()

    def _run_batch_now(self, tasks: list[Task]) -> None:
        """Run the batch's members that are still alike: the same folder, distinct names,
        fresh. One renamed, moved, written over or removed since it was taken (while the
        batch waited for a slot) goes back to the queue, as after an interrupt."""
        members, gone, strays = [], [], []
        names: set[str] = set()
        for task in tasks:
            entry, control = self._begin(task)
            if entry is None:
                gone.append(task)
            elif (not upload_batch.batchable(entry, task) or entry.filename in names
                  or (members and entry.folder != members[0][1].folder)):
                strays.append(task)
            else:
                names.add(entry.filename)
                members.append((task, entry, control))
        for task in gone:
            self._end(task)
        for task in strays:
            self._after_interrupt(task)
        bulk: Any = self._remote  # batch > 1 is only given with a BulkRemote
        job = upload_batch.BatchJob(bulk, self._journal, self._dataset_id, self._senders)
        outcomes = job.run([(entry, control) for _, entry, control in members])
        landed: list[tuple[str, Image]] = []
        try:
            for task, entry, control in members:
                outcome = outcomes.get(entry.id, Interrupted(entry.id))
                if isinstance(outcome, Landed):
                    if self._after_landed(task, entry, outcome):
                        landed.append((task.entry_id, outcome.image))
                elif isinstance(outcome, Interrupted) or not control.current:
                    self._after_interrupt(task)
                else:
                    self._after_error(task, entry, outcome)  # type: ignore[arg-type]
        finally:  # the members that landed are reported even when a later one raised
            self._report_landed(landed)

    def _begin(self, task: Task) -> tuple[Entry | None, TaskControl]:
        """The run's control and the entry as of its generation, read together under the
        queue's lock: a rename, hold or cancel moves the generation and writes the journal
        under that lock, so the run never starts from a name older than its control."""
        with self._changed:
            control = TaskControl(self._changed, self._journal, task, lambda: self._stopping)
            return self._journal.get(task.entry_id), control

    def _run(self, task: Task) -> None:
        entry, control = self._begin(task)
        if entry is None:
            self._end(task)
            return
        job = UploadJob(self._remote, self._journal, self._dataset_id, control)
        try:
            if task.cancelled:
                job.finish_cancel(entry)
                drop(self._journal, task.entry_id)
                self._end(task)
                self._cancel_ended(task)
                return
            landed = job.run(entry)
        except Interrupted:
            self._after_interrupt(task)
        except Exception as exc:  # every failure is classified; a bug too (logged, failed)
            if control.current:
                self._after_error(task, entry, exc)
            else:  # the entry changed meanwhile: what failed no longer matters
                self._after_interrupt(task)
        else:
            if self._after_landed(task, entry, landed):
                self._report_landed([(task.entry_id, landed.image)])

    def _after_landed(self, task: Task, entry: Entry, landed: Landed) -> bool:
        """Record a landing; whether to report it to the caller (``_report_landed``): not
        when the entry was cancelled meanwhile. A reported entry's staging file goes after
        the report (``_report_landed``): until the caller has shown the image in its place,
        an open of the file it still shows finds the bytes."""
        image = landed.image
        with self._changed:
            if self._schedule.key_works():
                log.info("API key accepted again: uploads resumed")
            task.running = False
            if task.cancelled:  # unlinked while registering: a worker archives it, at once
                self._schedule.due_in(task, 0.0)  # (not at a write-back due time set meanwhile)
            else:
                self._schedule.remember_landed(task.entry_id, image)
                self._schedule.remove(task.entry_id)
                self._schedule.reporting += 1  # until _report_landed has told the caller
            if landed.uploaded:
                self._schedule.count_bytes(image.file_size or entry.size or 0)
            prune = self._prune_due()
            self._changed.notify_all()
            cancelled = task.cancelled
        if cancelled:
            self._journal.remove_staging_file(task.entry_id, sync=False)  # done: see resume()
        if prune:
            try:
                self._journal.delete_done(before=time.time() - DONE_KEEP)
            except NoSpace as exc:  # housekeeping: a later landing prunes them
                log.debug("done entries not pruned: %s", exc)
        if cancelled:
            return False
        if landed.uploaded and (image.filename, image.directory_path) != (entry.filename,
                                                                          entry.folder):
            log.info("%s was stored by the service as %s", entry.path, image.path)
        else:
            log.debug("%s: %s as image %s", entry.path, landed.how, image.id)
        return True

    def _report_landed(self, landed: list[tuple[str, Image]]) -> None:
        """The ``on_registered_many`` callback, once for them all; else ``on_registered``
        for each."""
        if not landed:
            return
        try:
            if self._callbacks.on_registered_many is not None:
                self._callback(self._callbacks.on_registered_many, landed)
            else:
                for entry_id, image in landed:
                    self._callback(self._callbacks.on_registered, entry_id, image)
        finally:
            try:
                for entry_id, _image in landed:  # done: a restart removes any left (resume())
                    self._journal.remove_staging_file(entry_id, sync=False)
            finally:
                with self._changed:
                    self._schedule.reporting -= len(landed)
                    self._changed.notify_all()

    def _after_interrupt(self, task: Task) -> None:
        with self._changed:
            self._schedule.run_ended()
            task.running = False
            entry = self._journal.get(task.entry_id)
            if entry is None:
                self._schedule.remove(task.entry_id)
            elif self._schedule.task(task.entry_id) is not task:
                pass  # taken away meanwhile (failed by the writer's side): nothing to add
            elif task.cancelled:
                continue_cancel(self._schedule, self._journal, task, entry)
            elif task.held:
                self._journal.update(task.entry_id, state=JobState.STAGED)
            else:
                self._journal.update(task.entry_id, state=JobState.QUEUED)
                if not self._stopping:
                    self._schedule.requeue(task)
            self._changed.notify_all()

    def _after_error(self, task: Task, entry: Entry, exc: Exception) -> None:
        disposition = upload_job.classify(exc)
        reason = upload_job.describe(exc)
        if disposition is Disposition.PERMANENT and upload_job.is_unexpected(exc):
            log.error("unexpected error uploading %s", entry.path, exc_info=exc)
        if isinstance(exc, upload_job.SourceChanged) and not task.cancelled:
            self._source_changed(task, entry, reason)
        elif disposition is Disposition.AUTH:
            self._retry(task, "API key rejected", None)
        elif disposition is Disposition.TRANSIENT:
            now = self._journal.get(task.entry_id)
            if now is not None and now.step != entry.step:
                # it got further this time (its PUT went through): the request that failed
                # is a new one, whose backoff starts again, as the transport's would
                with self._changed:
                    task.attempts = 0
            delay = upload_job.retry_delay(task.attempts + 1, self._retry_max_wait,
                                           upload_job.draw_jitter(self._rng),
                                           getattr(exc, "retry_after", None))
            log.info("upload of %s failed (%s); retry %d in %.1fs", entry.path, reason,
                     task.attempts + 1, delay)
            self._retry(task, reason, delay)
        elif task.cancelled:
            log.warning("could not undo the cancelled upload of %s: %s", entry.path, reason)
            drop(self._journal, task.entry_id)
            self._end(task)
            self._cancel_ended(task)
        else:
            self._fail(task, entry, reason)

    def _retry(self, task: Task, reason: str, delay: float | None) -> None:
        """Queue the task again: after ``delay`` seconds, or (None: the key was rejected)
        when the queue's pause ends."""
        with self._changed:
            task.running = False
            if delay is None:
                if self._schedule.key_rejected():
                    log.warning("API key rejected: uploads paused; trying again every %gs",
                                self._retry_max_wait)
                delay = 0.0
            else:
                self._schedule.run_ended()
                task.attempts += 1
            try:
                self._journal.update(task.entry_id, state=JobState.QUEUED, error=reason)
            except NoSpace:  # the row keeps its state: a restart queues it all the same
                pass
            if not self._stopping and not task.held:
                self._schedule.due_in(task, delay)
            self._changed.notify_all()

    def _source_changed(self, task: Task, entry: Entry, reason: str) -> None:
        """An entry's source file changed before its bytes were registered: the entry ends
        as a cancel does (an image an earlier, crashed run may have registered is archived
        by a worker first), then the caller is told to stage the file again."""
        log.info("%s: %s; it is to be staged again", entry.path, reason)
        with self._changed:
            self._schedule.run_ended()
            task.running = False
            task.cancelled, task.held = True, False
            task.source_changed = True
            task.generation += 1
            current = self._journal.update(task.entry_id, cancelled=True)
            continue_cancel(self._schedule, self._journal, task, current)
            ended = self._schedule.task(task.entry_id) is None
            self._changed.notify_all()
        if ended:
            self._cancel_ended(task)

    def _cancel_ended(self, task: Task) -> None:
        """A cancel is over (the entry is gone): the caller hears of a changed source only
        now, so that a new upload of the file cannot meet the image being archived."""
        if not task.source_changed:
            return
        if self._callbacks.on_changed is not None:
            self._callback(self._callbacks.on_changed, task.entry_id)
        else:
            self._callback(self._callbacks.on_failed, task.entry_id, "its source file changed")

    def _fail(self, task: Task, entry: Entry, reason: str) -> None:
        log.warning("upload of %s failed: %s", entry.path, reason)
        with self._changed:
            self._schedule.run_ended()
            self._journal.update(task.entry_id, state=JobState.FAILED, error=reason)
            self._schedule.remove(task.entry_id)
            self._changed.notify_all()
        self._callback(self._callbacks.on_failed, task.entry_id, reason)

    def _end(self, task: Task) -> None:
        """The task is over with nothing more to record."""
        with self._changed:
            self._schedule.run_ended()
            self._schedule.remove(task.entry_id)
            self._changed.notify_all()

    def _prune_due(self) -> bool:
        """Whether to forget done rows older than DONE_KEEP now: at most every PRUNE_EVERY
        (lock held; the caller deletes them after releasing it)."""
        now = self._clock()
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            return True
        return False

    @staticmethod
    def _callback(fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # a listener's bug must not stop the queue
            log.exception("upload callback %r failed", fn)

