"""The group commit (``core.upload.commits``, filesystem spec §5 "Durability"): a flush is
made durable against a crash of the machine within ``--commit-interval``, at once when a
writer asks (fsync), at every flush with an interval of 0, and by the unmount; a commit the
disk refuses keeps its flushes for the next one."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from pictofs.core.upload.commits import GroupCommit
from pictofs.core.upload.journal import Journal
from pictofs.errors import NoSpace

WAIT = 10.0


class RecordingJournal(Journal):
    """The real journal, with each group commit recorded (and made to fail on demand)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, dataset_id="ds")
        self.durable: list[set[str]] = []
        self.refuse: OSError | None = None
        self.done = threading.Event()

    def make_durable(self, entry_ids):  # type: ignore[no-untyped-def]
        entry_ids = set(entry_ids)
        if self.refuse is not None:
            raise NoSpace(str(self.refuse))
        super().make_durable(entry_ids)
        self.durable.append(entry_ids)
        self.done.set()


@pytest.fixture()
def journal(tmp_path: Path) -> Iterator[RecordingJournal]:
    opened = RecordingJournal(tmp_path / "journal")
    yield opened
    opened.close()


def test_flushes_become_durable_together_within_the_interval(journal) -> None:
    commits = GroupCommit(journal, interval=0.3)
    commits.start()
    try:
        started = time.monotonic()
        commits.note(["a"])
        commits.note(["b", "c"])
        assert commits.waiting() == 3
        assert journal.done.wait(WAIT)
        assert time.monotonic() - started >= 0.25  # not before the interval
        assert journal.durable == [{"a", "b", "c"}]  # one commit for all three
        assert commits.waiting() == 0
    finally:
        commits.stop()
    assert journal.durable == [{"a", "b", "c"}]  # nothing left for the last commit


def test_a_writer_asking_gets_its_commit_at_once(journal) -> None:
    commits = GroupCommit(journal, interval=3600)
    commits.start()
    try:
        commits.note(["a"])
        commits.commit()  # fsync(2) of a file in the mount
        assert journal.durable == [{"a"}]
        commits.commit()  # nothing new: nothing to do
        assert journal.durable == [{"a"}]
    finally:
        commits.stop()


def test_an_interval_of_zero_commits_every_flush_in_the_flushing_thread(journal) -> None:
    commits = GroupCommit(journal, interval=0)
    commits.start()  # no thread
    commits.note(["a"])
    assert journal.durable == [{"a"}]
    commits.note(["b"])
    assert journal.durable == [{"a"}, {"b"}]
    commits.stop()


def test_the_unmount_commits_what_waits(journal) -> None:
    commits = GroupCommit(journal, interval=3600)
    commits.start()
    commits.note(["a", "b"])
    commits.stop()
    assert journal.durable == [{"a", "b"}]


def test_a_refused_commit_keeps_its_flushes_for_the_next_one(journal, caplog) -> None:
    commits = GroupCommit(journal, interval=0.05)
    journal.refuse = OSError(errno.ENOSPC, "No space left on device")
    commits.start()
    try:
        commits.note(["a"])
        with pytest.raises(NoSpace):
            commits.commit()  # the writer who asked is told
        assert commits.waiting() == 1
        time.sleep(0.3)  # the thread tried again (and logged once)
        assert commits.waiting() == 1
        journal.refuse = None
        assert journal.done.wait(WAIT)
        assert journal.durable == [{"a"}]
    finally:
        commits.stop()
    failures = [r for r in caplog.records if "group commit failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
