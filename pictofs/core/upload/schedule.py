"""The upload queue's in-memory table: which entries are due when, held, in flight or
registering, the pause after a rejected API key, and the counters of ``pictofs status``.

``Schedule`` does no I/O and takes no lock: ``UploadQueue`` guards it with its one lock (which
its ``Workers`` and every ``TaskControl`` share) and keeps the durable side in the journal.
Time comes from the injected ``clock``, so the decisions (what is due, how long to wait, when
the key may be tried again) are tested with a fake clock and no threads. ``TaskControl`` is
what one run of an upload job may do to its task: it goes stale as soon as the task's
generation moves.
"""

from __future__ import annotations

import collections
import heapq
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from pictofs.core.upload.journal import Entry, Journal
from pictofs.core.upload.job import Header, Interrupted, Landed
from pictofs.model import Image

RATE_WINDOW = 10.0  # seconds of history behind the upload rate
LANDED_MEMORY = 4096  # recently registered entries remembered for hold/retarget


@dataclass
class Task:
    """The in-memory side of one live entry."""

    entry_id: str
    due: float | None = None  # when a worker may take it; None: not scheduled
    held: bool = False  # open for writing again: not scheduled until released
    running: bool = False
    registering: bool = False  # a register (or adoption) is in flight
    generation: int = 0  # bumped by every change a running job must notice
    flushes: int = 0  # flushes seen (the journal write of an older one is skipped)
    attempts: int = 0  # transient failures in a row
    cancelled: bool = False
    source_changed: bool = False  # cancelled because its source file changed
    image: Image | None = None  # the register answer, as soon as it arrived
    put_generation: int | None = None  # the generation whose PUT finished in this process
    taken: int = 0  # times a worker took it (tells one run of it from the next)
    trouble: str | None = None  # the last unrecorded failure logged for it (logged once)
    header: Header | None = None  # what the last flush's Pillow read found (job.Header)

    @property
    def busy(self) -> bool:
        return self.running or self.due is not None


@dataclass(frozen=True)
class QueueStats:
    pending: int  # scheduled, or waiting for a retry
    in_flight: int
    failed: int
    bytes_uploaded: int
    rate: float  # bytes per second over the last RATE_WINDOW seconds
    paused: bool  # the API key was rejected
    workers: int = 0  # worker threads running


# Gathering (``gather_wait``): while a writer keeps closing files, a due file waits for the
# next ones to go up with it in one batch, until the closes pause for GATHER_QUIET seconds,
# a batch's worth has closed, or it has waited GATHER_MAX seconds.
GATHER_QUIET = 0.3
GATHER_MAX = 2.0


class Schedule:
    def __init__(self, clock: Callable[[], float], pause: float) -> None:
        self._clock = clock
        self._pause = pause
        # gathering: the batch size (0: off, set by the workers), the last close, the closes
        # since a worker last took a task, and whether pictofs sync asked to hurry
        self.gather_batch = 0
        self._last_close = -math.inf
        self._closes = 0
        self.hurry = False
        self.tasks: dict[str, Task] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._landed: collections.OrderedDict[str, Image] = collections.OrderedDict()
        self._paused_until: float | None = None
        self._probing = False
        self._bytes = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        # landings whose ``on_registered`` callback has not returned yet: the queue is not
        # idle until the caller has heard of every landing (``pictofs sync`` then sees them)
        self.reporting = 0

    # ---------------------------------------------------------------- tasks

    def task(self, entry_id: str) -> Task | None:
        return self.tasks.get(entry_id)

    def add(self, entry_id: str) -> Task:
        return self.tasks.setdefault(entry_id, Task(entry_id))

    def remove(self, entry_id: str) -> None:
        self.tasks.pop(entry_id, None)

    def due_in(self, task: Task, delay: float) -> None:
        """Make ``task`` due ``delay`` seconds from now (replacing an earlier due time)."""
        task.held = False
        task.due = self._clock() + delay
        if not task.running:
            self._push(task)

    def note_closes(self, count: int) -> None:
        """A writer closed ``count`` files just now (their uploads are scheduled)."""
        self._last_close = self._clock()
        self._closes += count
        self.hurry = False

    def gather_wait(self) -> float | None:
        """How long a worker should wait before taking what is due, so that files still
        being closed go up in the same batch (see GATHER_QUIET); None: take it now."""
        if self.hurry or self.gather_batch < 2 or self._closes >= self.gather_batch \
                or not self._heap or self._paused_until is not None:
            return None
        now = self._clock()
        oldest = self._heap[0][0]  # a stale item is earlier: then it gathers less
        if oldest > now:
            return None  # nothing due yet: take() says how long to wait
        wait = min(self._last_close + GATHER_QUIET, oldest + GATHER_MAX) - now
        return wait if wait > 0 else None

    def requeue(self, task: Task) -> None:
        """A task whose run ended: due again at its due time, or now."""
        if task.due is None:
            task.due = self._clock()
        self._push(task)

    def busy(self) -> bool:
        return self.reporting > 0 or any(t.busy for t in self.tasks.values())

    def take(self) -> tuple[Task | None, float | None]:
        """The next due task, marked running; else how long to wait (None: until told)."""
        now = self._clock()
        wait = self._pause_wait(now)
        if wait is not None:
            return None, wait
        while self._heap:
            due, _, entry_id = self._heap[0]
            task = self.tasks.get(entry_id)
            if task is None or task.due != due or task.running or task.held:
                heapq.heappop(self._heap)  # stale: rescheduled, held, taken or gone
                continue
            if due > now:
                return None, due - now
            heapq.heappop(self._heap)
            task.running, task.due = True, None
            task.taken += 1
            self._probing = self._paused_until is not None
            self._closes = 0
            return task, None
        return None, None

    def next_wake(self) -> float | None:
        """The earliest clock time ``take`` may find a task (a stale heap item may make it
        early: the worker woken then finds nothing and sleeps again); None: nothing is due
        at any time."""
        now = self._clock()
        wait = self._pause_wait(now)
        if wait is not None:
            return now + wait
        return self._heap[0][0] if self._heap else None

    def due_count(self, slack: float = 0.0) -> int:
        """How many tasks a worker could take now (or within ``slack`` seconds)."""
        now = self._clock() + slack
        return sum(1 for t in self.tasks.values()
                   if t.due is not None and t.due <= now and not t.running and not t.held)

    def take_matching(self, limit: int, fits: Callable[[Task], bool],
                      slack: float = 0.0) -> list[Task]:
        """Up to ``limit`` more tasks due now (or within ``slack`` seconds) that ``fits``
        accepts (asked in due order), marked running: the companions of a batch. Tasks it
        passes over stay due."""
        now = self._clock() + slack
        taken: list[Task] = []
        passed: list[tuple[float, int, str]] = []
        while self._heap and len(taken) < limit and len(passed) < 4 * limit:
            due, seq, entry_id = heapq.heappop(self._heap)
            task = self.tasks.get(entry_id)
            if task is None or task.due != due or task.running or task.held:
                continue  # stale
            if due > now:
                passed.append((due, seq, entry_id))
                break
            if fits(task):
                task.running, task.due = True, None
                task.taken += 1
                taken.append(task)
            else:
                passed.append((due, seq, entry_id))
        for item in passed:
            heapq.heappush(self._heap, item)
        return taken

    def _push(self, task: Task) -> None:
        assert task.due is not None
        self._seq += 1
        heapq.heappush(self._heap, (task.due, self._seq, task.entry_id))

    # ---------------------------------------------------------------- landed entries

    def remember_landed(self, entry_id: str, image: Image) -> None:
        self._landed[entry_id] = image
        while len(self._landed) > LANDED_MEMORY:
            self._landed.popitem(last=False)

    def landed(self, entry_id: str) -> Image | None:
        task = self.tasks.get(entry_id)
        if task is not None and task.image is not None:
            return task.image
        return self._landed.get(entry_id)

    # ---------------------------------------------------------------- the key pause

    @property
    def paused(self) -> bool:
        return self._paused_until is not None

    def key_rejected(self) -> bool:
        """Pause every upload for ``pause`` seconds; True when this starts a pause."""
        starts = self._paused_until is None
        self._paused_until = self._clock() + self._pause
        self._probing = False
        return starts

    def key_works(self) -> bool:
        """An answer other than 401; True when this ends a pause."""
        ends = self._paused_until is not None
        self._paused_until = None
        self._probing = False
        return ends

    def run_ended(self) -> None:
        """A run ended without saying anything about the key."""
        self._probing = False

    def _pause_wait(self, now: float) -> float | None:
        """While paused: how long until one upload may try the key; None: go ahead."""
        if self._paused_until is None:
            return None
        if self._probing:
            return self._pause
        return None if now >= self._paused_until else self._paused_until - now

    # ---------------------------------------------------------------- counters

    def count_bytes(self, size: int) -> None:
        now = self._clock()
        self._bytes += size
        self._recent.append((now, size))
        self._trim(now)

    def stats(self, failed: int, workers: int = 0) -> QueueStats:
        self._trim(self._clock())
        tasks = self.tasks.values()
        return QueueStats(pending=sum(1 for t in tasks if t.due is not None),
                          in_flight=sum(1 for t in tasks if t.running),
                          failed=failed, bytes_uploaded=self._bytes,
                          rate=sum(n for _, n in self._recent) / RATE_WINDOW,
                          paused=self.paused, workers=workers)

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW:
            self._recent.popleft()


class TaskControl:
    """The ``job.Control`` of one run: valid while the task's generation is the one
    the run started with (hold, retarget, cancel and a new flush move it), the task is not
    held (open for writing again) and the queue is not stopping. ``changed`` is the queue's
    condition (its lock guards the task)."""

    def __init__(self, changed: threading.Condition, journal: Journal, task: Task,
                 stopping: Callable[[], bool]) -> None:
        self._changed = changed
        self._journal = journal
        self._task = task
        self._generation = task.generation
        self._stopping = stopping

    @property
    def current(self) -> bool:
        with self._changed:
            return self._current()

    def _current(self) -> bool:
        """(Reads three fields; called with the queue's lock, or from ``record`` with the
        journal's, where a value a moment old is still safe, see there.) A held task is
        never current: a hold that lands after the task was taken but before its run read
        the generation (a batch waiting for a slot) must still stop the run, or it would
        hash a staging file its writer is rewriting and fail it as torn."""
        task = self._task
        return task.generation == self._generation and not task.held and not self._stopping()

    def checkpoint(self) -> None:
        if not self.current:
            raise Interrupted(self._task.entry_id)

    def put_done(self) -> bool:
        with self._changed:
            return self._task.put_generation == self._generation

    def mark_put(self) -> None:
        with self._changed:
            self._task.put_generation = self._generation

    def record(self, **changes: Any) -> Entry:
        """Write the run's changes, unless the task changed (Interrupted). Whether it did is
        asked under the journal's lock, not the queue's: whoever moves the generation does
        so before writing the journal, so no write of this run can land after theirs, and
        the queue's lock is not held while the journal commits."""
        entry_id = self._task.entry_id
        if not self._journal.update_if({entry_id: changes}, lambda _: self._current()):
            raise Interrupted(entry_id)
        entry = self._journal.get(entry_id)
        if entry is None:
            raise Interrupted(entry_id)
        return entry

    def register(self, step: Callable[[], Landed]) -> Landed:
        self.begin_register()
        landed: Landed | None = None
        try:
            landed = step()
            return landed
        finally:
            self.end_register(landed)

    def begin_register(self) -> None:
        with self._changed:
            if not self._current():
                raise Interrupted(self._task.entry_id)
            self._task.registering = True

    def header(self) -> Header | None:
        with self._changed:
            return self._task.header

    def end_register(self, landed: Landed | None) -> None:
        with self._changed:
            self._task.registering = False
            if landed is not None:
                self._task.image = landed.image
            self._changed.notify_all()


def record_together(members: Sequence[tuple[TaskControl, Mapping[str, Any]]]) -> list[bool]:
    """``TaskControl.record`` for the runs of a batch at once: one lock, one transaction.
    Per member, whether it was still current (False: nothing was written for it, and its run
    is to stop as ``record`` would have raised Interrupted)."""
    if not members:
        return []
    journal = members[0][0]._journal
    controls = {control._task.entry_id: control for control, _ in members}
    written = set(journal.update_if(
        {control._task.entry_id: changes for control, changes in members},
        lambda entry_id: controls[entry_id]._current()))
    return [control._task.entry_id in written for control, _ in members]
