"""``pictofs.mirror.events``: watchdog events translated into the mirror's plain events (fed
literal watchdog events), and the watcher's fall-back to polling when inotify runs out of
watches — at start-up and later — with the log line that gives the fix. Running out is
simulated by making ``inotify_add_watch`` fail with ENOSPC past a number of watches, which
is what the kernel does at ``fs.inotify.max_user_watches``."""

from __future__ import annotations

import ctypes
import errno
import logging
import queue
from pathlib import Path

import pytest
from watchdog.events import (
    DirCreatedEvent, DirDeletedEvent, DirModifiedEvent, DirMovedEvent, FileClosedEvent,
    FileClosedNoWriteEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
    FileMovedEvent, FileOpenedEvent,
)
from watchdog.observers import inotify_c

from pictofs.mirror.coalesce import Event
from pictofs.mirror.events import Watcher, count_folders, folder_inodes, translate, watched_inodes

pytestmark = pytest.mark.timeout(60)

ROOT = "/data/photos"


@pytest.mark.parametrize("event, expected", [
    (FileCreatedEvent(f"{ROOT}/a/x.jpg"), Event("created", "a/x.jpg")),
    (FileModifiedEvent(f"{ROOT}/x.jpg"), Event("modified", "x.jpg")),
    (FileClosedEvent(f"{ROOT}/x.jpg"), Event("closed", "x.jpg")),
    (FileDeletedEvent(f"{ROOT}/x.jpg"), Event("deleted", "x.jpg")),
    (FileMovedEvent(f"{ROOT}/.x.jpg.tmp", f"{ROOT}/x.jpg"),
     Event("moved", ".x.jpg.tmp", "x.jpg")),
    (FileMovedEvent(f"{ROOT}/x.jpg", "/elsewhere/x.jpg"), Event("deleted", "x.jpg")),
    (FileMovedEvent("/elsewhere/x.jpg", f"{ROOT}/x.jpg"), Event("created", "x.jpg")),
    (DirCreatedEvent(f"{ROOT}/new"), Event("dir_created", "new")),
    (DirDeletedEvent(f"{ROOT}/old"), Event("dir_deleted", "old")),
    (DirMovedEvent(f"{ROOT}/a", f"{ROOT}/b/a"), Event("dir_moved", "a", "b/a")),
    (DirMovedEvent(f"{ROOT}/a", "/elsewhere/a"), Event("dir_deleted", "a")),
    (FileOpenedEvent(f"{ROOT}/x.jpg"), None),
    (FileClosedNoWriteEvent(f"{ROOT}/x.jpg"), None),
    (DirModifiedEvent(f"{ROOT}/a"), None),
    (DirModifiedEvent(ROOT), None),
    (FileCreatedEvent("/elsewhere/y.jpg"), None),
])
def test_translate(event, expected: Event | None) -> None:  # type: ignore[no-untyped-def]
    assert translate(event, ROOT) == expected


def limit_watches(monkeypatch: pytest.MonkeyPatch, allowed: int) -> None:
    """Every inotify watch past ``allowed`` more fails with ENOSPC, as at the kernel limit."""
    real = inotify_c.inotify_add_watch
    left = {"n": allowed}

    def add_watch(fd, path, mask):  # type: ignore[no-untyped-def]
        if left["n"] <= 0:
            ctypes.set_errno(errno.ENOSPC)
            return -1
        left["n"] -= 1
        return real(fd, path, mask)

    monkeypatch.setattr(inotify_c, "inotify_add_watch", add_watch)


def collect(events: queue.Queue, wanted: Event, timeout: float = 10.0) -> None:
    """Wait until ``wanted`` arrives."""
    while True:
        try:
            if events.get(timeout=timeout) == wanted:
                return
        except queue.Empty:
            raise AssertionError(f"{wanted} never arrived") from None


def test_inotify_watches_every_folder(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    events: queue.Queue = queue.Queue()
    watcher = Watcher(tmp_path, events.put, poll=False, poll_interval=0.1)
    try:
        assert watcher.start() == "inotify"
        assert len(folder_inodes(str(tmp_path))) == count_folders(str(tmp_path)) == 3
        assert folder_inodes(str(tmp_path)) <= (watched_inodes() or set())
        (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"x")
        collect(events, Event("closed", "a/b/x.jpg"))
    finally:
        watcher.stop()


def test_no_watches_left_at_start_up_falls_back_to_polling_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    limit_watches(monkeypatch, allowed=1)  # the top folder only
    events: queue.Queue = queue.Queue()
    watcher = Watcher(tmp_path, events.put, poll=False, poll_interval=0.1)
    with caplog.at_level(logging.WARNING, logger="pictofs.mirror.events"):
        try:
            assert watcher.start() == "polling"
            (tmp_path / "b" / "y.jpg").write_bytes(b"y")
            collect(events, Event("created", "b/y.jpg"))
        finally:
            watcher.stop()
    [line] = [r.getMessage() for r in caplog.records]
    assert "inotify limit reached (fs.inotify.max_user_watches" in line
    assert f"{watcher.root} has 3 folders, one watch each" in line
    # watchdog < 7.1.1 skips the unwatchable subfolders (the mirror counts them); 7.1.1 gives
    # up at once (nothing to count). Whatever the count, it must be the true one.
    assert "could not be watched" not in line or "2 of them could not be watched" in line
    assert "sysctl fs.inotify.max_user_watches=" in line


def test_watches_held_by_another_observer_do_not_hide_a_gap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """Another watcher in the same process holds plenty of watches; a tree this watcher
    could only partly watch must still be found short."""
    other_root = tmp_path / "other"
    for name in "abcdef":
        (other_root / name).mkdir(parents=True)
    mine = tmp_path / "mine"
    (mine / "a").mkdir(parents=True)
    other = Watcher(other_root, lambda event: None, poll=False, poll_interval=0.1)
    watcher = Watcher(mine, lambda event: None, poll=False, poll_interval=0.1)
    try:
        assert other.start() == "inotify"
        assert watcher.start() == "inotify"
        assert watcher.check() is False
        limit_watches(monkeypatch, allowed=0)
        (mine / "new").mkdir()
        with caplog.at_level(logging.WARNING, logger="pictofs.mirror.events"):
            watcher.check()
            assert watcher.check() is True
        assert watcher.mode == "polling" and other.mode == "inotify"
        assert "1 of them could not be watched" in caplog.text
    finally:
        watcher.stop()
        other.stop()


def test_an_observer_that_cannot_start_falls_back_to_polling(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def exhausted() -> None:
        raise OSError(errno.EMFILE, "inotify instance limit reached")

    watcher = Watcher(tmp_path, lambda event: None, poll=False, poll_interval=0.1,
                      inotify_factory=exhausted)
    with caplog.at_level(logging.WARNING, logger="pictofs.mirror.events"):
        try:
            assert watcher.start() == "polling"
        finally:
            watcher.stop()
    assert "sysctl fs.inotify.max_user_instances=" in caplog.text


def test_running_out_later_is_found_by_check_and_switches_to_polling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    events: queue.Queue = queue.Queue()
    watcher = Watcher(tmp_path, events.put, poll=False, poll_interval=0.1)
    try:
        assert watcher.start() == "inotify"
        assert watcher.check() is False
        limit_watches(monkeypatch, allowed=0)
        (tmp_path / "new").mkdir()  # watchdog cannot watch it, and says nothing
        collect(events, Event("dir_created", "new"))
        with caplog.at_level(logging.WARNING, logger="pictofs.mirror.events"):
            assert watcher.check() is False  # once may be a folder not watched *yet*
            assert watcher.check() is True
        assert watcher.mode == "polling"
        assert "1 of them could not be watched" in caplog.text
        (tmp_path / "new" / "z.jpg").write_bytes(b"z")
        collect(events, Event("created", "new/z.jpg"))
    finally:
        watcher.stop()


def test_poll_forces_the_polling_observer(tmp_path: Path) -> None:
    events: queue.Queue = queue.Queue()
    watcher = Watcher(tmp_path, events.put, poll=True, poll_interval=0.1)
    try:
        assert watcher.start() == "polling"
        (tmp_path / "p.jpg").write_bytes(b"p")
        collect(events, Event("created", "p.jpg"))
    finally:
        watcher.stop()


def test_losing_the_mirrored_folder_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    root.mkdir()
    lost: queue.Queue = queue.Queue()
    watcher = Watcher(root, lambda event: None, poll=False, poll_interval=0.1,
                      lost=lambda: lost.put(True))
    try:
        watcher.start()
        root.rmdir()
        assert lost.get(timeout=10) is True
    finally:
        watcher.stop()
