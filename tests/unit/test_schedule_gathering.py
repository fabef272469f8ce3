"""Gathering a batch (``Schedule.gather_wait``): while a writer keeps closing files, a worker
waits for the next closes before it takes what is due, so that a ``cp -r`` goes up in few
large batches; the wait ends when the closes pause, when a batch's worth has closed, after
GATHER_MAX, or at once when ``pictofs sync`` hurries the queue."""

from __future__ import annotations

from pictofs.core.upload.schedule import GATHER_MAX, GATHER_QUIET, Schedule


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def schedule_with(clock: Clock, batch: int = 10) -> Schedule:
    schedule = Schedule(clock, pause=30.0)
    schedule.gather_batch = batch
    return schedule


def close(schedule: Schedule, name: str, delay: float = 0.0) -> None:
    schedule.due_in(schedule.add(name), delay)
    schedule.note_closes(1)


def test_a_due_file_waits_while_closes_keep_coming_then_goes_with_the_others() -> None:
    clock = Clock()
    schedule = schedule_with(clock)
    close(schedule, "a")
    assert abs(schedule.gather_wait() - GATHER_QUIET) < 1e-9  # just closed: more may come
    clock.now += 0.2
    close(schedule, "b")
    assert abs(schedule.gather_wait() - GATHER_QUIET) < 1e-9  # the quiet starts again
    clock.now += GATHER_QUIET  # the closes paused
    assert schedule.gather_wait() is None
    task, _ = schedule.take()
    assert task is not None and task.entry_id == "a"


def test_no_file_waits_longer_than_gather_max() -> None:
    clock = Clock()
    schedule = schedule_with(clock, batch=1000)
    close(schedule, "first")
    for n in range(int(GATHER_MAX / 0.1) + 5):  # a close every 100 ms, for longer
        clock.now += 0.1
        close(schedule, f"f{n}")
        wait = schedule.gather_wait()
        if wait is None:
            break
        assert clock.now + wait <= 100.0 + GATHER_MAX + 1e-9
    assert schedule.gather_wait() is None
    assert clock.now - 100.0 <= GATHER_MAX + 0.1


def test_a_batch_worth_of_closes_goes_at_once() -> None:
    clock = Clock()
    schedule = schedule_with(clock, batch=3)
    for name in "abc":
        close(schedule, name)
    assert schedule.gather_wait() is None


def test_nothing_due_means_nothing_to_gather() -> None:
    clock = Clock()
    schedule = schedule_with(clock)
    close(schedule, "a", delay=2.0)  # the write-back delay runs first
    assert schedule.gather_wait() is None
    assert schedule.take() == (None, 2.0)


def test_sync_hurries_the_queue_and_single_file_uploads_never_gather() -> None:
    clock = Clock()
    schedule = schedule_with(clock)
    close(schedule, "a")
    schedule.hurry = True  # what expedite (pictofs sync) sets
    assert schedule.gather_wait() is None
    single = schedule_with(clock, batch=1)
    close(single, "a")
    assert single.gather_wait() is None
