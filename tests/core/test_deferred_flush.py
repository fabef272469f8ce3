"""A close that commits nothing (filesystem §5 "Durability"): the mount's flush is written
beside the staged bytes (the extended attribute ``user.pictofs.flushed`` of the staging
file) and its journal row follows with a later commit, the group commit at the latest.

What must hold: a kill -9 before that commit loses no closed file (the next mount finds the
flushes beside the bytes and resumes them, a file whose row was never written included); a
flush beside the bytes never outranks what the row says later (a file failed as not an
image stays failed) nor a journal made anew (its files are kept aside, as before); and until
the commit, the journal shows each row as the commit will write it.

The kill -9 is the state folder copied while the journal is open, as the other recovery
tests do: the WAL as it is, the staging files with their extended attributes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from imagegen import png_bytes
from journalkit import add_entry, create_staging_file
from pictofs.core.upload.journal import FLUSH_XATTR, Journal, kept_aside
from pictofs.core.upload.queue import UploadQueue
from pictofs.core.upload.states import JobState, Step
from pictofs.model import Dataset

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0  # seconds: only so that a broken test fails instead of hanging


@pytest.fixture()
def no_xattr_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a filesystem without user extended attributes: a ramfs mounted for the
    test (root: CI runs as root)."""
    folder = tmp_path / "ramfs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(folder)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a ramfs (root needed): {mounted.stderr}"
    probe = folder / "probe"
    probe.touch()
    with pytest.raises(OSError) as refused:
        os.setxattr(probe, FLUSH_XATTR, b"1")
    assert refused.value.errno == errno.ENOTSUP
    probe.unlink()
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def rows_in_database(journal: Journal) -> dict[str, tuple[int, int | None, str]]:
    """What the journal's database holds, read through a connection of the test's own:
    entry id → (flushed, size, state)."""
    db = sqlite3.connect(journal.directory / "journal.db")
    try:
        return {row[0]: tuple(row[1:]) for row in db.execute(
            "SELECT id, flushed, size, state FROM entries")}
    finally:
        db.close()


def close_written(queue: UploadQueue, folder: str, name: str, data: bytes,
                  replaced_id: str | None = None) -> str:
    """What the mount does for a new file: the staging file made and written through the
    descriptor the create returned, then the close's flush (deferred)."""
    entry_id, fd = queue.stage_open(folder, name, replaced_id=replaced_id)
    try:
        os.pwrite(fd, data, 0)
        queue.flushed(entry_id, len(data), hashlib.sha256(data).hexdigest(), deferred=True,
                      fd=fd)
    finally:
        os.close(fd)
    return entry_id


def crash_copy(journal: Journal, tmp_path: Path) -> Path:
    """The journal's state folder as a kill -9 leaves it (copied while open)."""
    state = journal.directory.parent.parent
    crashed = tmp_path / "crashed"
    shutil.copytree(state, crashed, ignore=shutil.ignore_patterns("journal.lock"))
    return crashed


def test_closed_files_survive_a_kill_9_before_any_commit_and_land(
        tmp_path, server, dataset: Dataset, remote, client) -> None:
    state = tmp_path / "state"
    journal = Journal.for_dataset(state, server.base_url, dataset.id, server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    first, second = png_bytes(8101), png_bytes(8102)
    # 1. a new file closed once: neither its row nor its flush is in the database
    fresh = close_written(queue, "/cams", "fresh.png", first)
    assert fresh not in rows_in_database(journal)
    entry = journal.get(fresh)
    assert entry is not None and (entry.flushed, entry.size) == (True, len(first))
    assert os.getxattr(journal.staging_path(fresh), FLUSH_XATTR)
    # 2. a file whose first flush was committed, written again and closed: the row in the
    # database has the first bytes, the journal shows the second
    again = close_written(queue, "/cams", "again.png", first)
    journal.make_durable([again])  # the group commit
    assert rows_in_database(journal)[again] == (1, len(first), "staged")
    with open(journal.staging_path(again), "r+b") as handle:
        handle.write(second)
        handle.truncate(len(second))
        queue.flushed(again, len(second), hashlib.sha256(second).hexdigest(), deferred=True,
                      fd=handle.fileno())
    assert rows_in_database(journal)[again] == (1, len(first), "staged")
    assert journal.get(again).size == len(second)  # type: ignore[union-attr]
    # 3. a file created and never closed: nothing to resume, its bytes are kept aside
    torn, fd = queue.stage_open("/cams", "open.png")
    os.pwrite(fd, second[:600], 0)
    os.close(fd)

    crashed = crash_copy(journal, tmp_path)
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        queue = UploadQueue(remote, reopened, dataset.id, write_back=0.0, retry_max_wait=0.05)
        assert sorted(queue.resume()) == sorted([fresh, again])
        resumed = {e.filename: e for e in reopened.entries()}
        assert set(resumed) == {"fresh.png", "again.png"}
        assert (resumed["fresh.png"].folder, resumed["fresh.png"].size,
                resumed["fresh.png"].sha256) == ("/cams", len(first),
                                                 hashlib.sha256(first).hexdigest())
        assert (resumed["again.png"].size, resumed["again.png"].sha256) == \
            (len(second), hashlib.sha256(second).hexdigest())
        kept = kept_aside(reopened.directory)
        assert [p.name for p in kept] == ["open.png"] and kept[0].read_bytes() == second[:600]
        assert not reopened.staging_path(torn).exists()
        queue.start()
        try:
            assert queue.wait_idle(WAIT)
        finally:
            assert queue.stop(WAIT)
        landed = {i.filename: i for i in client.images.list(dataset.id)}
        assert sorted(landed) == ["again.png", "fresh.png"]
        assert landed["again.png"].file_size == len(second)
        assert landed["fresh.png"].file_size == len(first)
        assert reopened.staging_names() == []
    finally:
        reopened.close()


def test_where_the_state_folder_takes_no_xattrs_every_close_commits_and_survives(
        no_xattr_folder, tmp_path, server, dataset: Dataset, remote, client, caplog) -> None:
    """Where the staging folder's filesystem has no user xattrs, a close cannot be recorded
    beside its bytes: it commits its row at once, as before the deferred flush, with one log
    line; a kill -9 right after loses nothing."""
    journal = Journal.for_dataset(no_xattr_folder / "state", server.base_url, dataset.id,
                                  server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    data = png_bytes(8201)
    with caplog.at_level(logging.INFO, logger="pictofs.core.upload.journal"):
        closed = [close_written(queue, "/bare", f"{n}.png", data) for n in range(3)]
    said = [r.getMessage() for r in caplog.records if "takes no user xattrs" in r.getMessage()]
    assert len(said) == 1, said
    in_database = rows_in_database(journal)
    assert all(in_database[entry_id] == (1, len(data), "staged") for entry_id in closed)

    crashed = crash_copy(journal, tmp_path)
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        queue = UploadQueue(remote, reopened, dataset.id, write_back=0.0, retry_max_wait=0.05)
        assert sorted(queue.resume()) == sorted(closed)
        queue.start()
        try:
            assert queue.wait_idle(WAIT)
        finally:
            assert queue.stop(WAIT)
        landed = {i.filename: i.file_size for i in client.images.list(dataset.id)}
        assert landed == {"0.png": len(data), "1.png": len(data), "2.png": len(data)}
    finally:
        reopened.close()


def test_a_replace_closed_before_its_row_was_written_resumes_as_a_replace(
        tmp_path, server, dataset: Dataset, remote) -> None:
    """The row of a file opened over an image is written with its first commit; the flush
    beside the bytes carries the image it replaces, so a kill -9 before that commit does
    not turn the replace into a second file of the same name."""
    journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id,
                                  server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    entry_id = close_written(queue, "/cams", "x.png", png_bytes(8201), replaced_id="img-1")
    crashed = crash_copy(journal, tmp_path)
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        assert reopened.recover_flushes() == [entry_id]
        entry = reopened.get(entry_id)
        assert entry is not None
        assert (entry.folder, entry.filename, entry.replaced_id, entry.flushed,
                entry.state) == ("/cams", "x.png", "img-1", True, JobState.STAGED)
    finally:
        reopened.close()


def test_a_file_failed_as_not_an_image_stays_failed_after_a_kill_9(
        tmp_path, server, dataset: Dataset, remote) -> None:
    """Valid bytes closed (their flush beside them), then bytes that are not an image
    written over them: the row says failed, and the restart must not take the older flush
    beside the bytes for a newer one and upload the junk."""
    journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id,
                                  server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    entry_id = close_written(queue, "/cams", "x.png", png_bytes(8301))
    journal.staging_path(entry_id).write_bytes(b"not an image")
    queue.fail_staged({entry_id: (12, "not an image")})
    crashed = crash_copy(journal, tmp_path)
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        assert UploadQueue(remote, reopened, dataset.id).resume() == []
        entry = reopened.get(entry_id)
        assert entry is not None
        assert (entry.state, entry.size, entry.error) == (JobState.FAILED, 12, "not an image")
    finally:
        reopened.close()


def test_flushes_beside_the_bytes_of_a_removed_journal_are_not_trusted(
        tmp_path, server, dataset: Dataset, remote) -> None:
    """A journal removed after a kill -9 is made anew with another name for itself: the
    flushes its predecessor left beside the bytes are not resumed, and the files are kept
    aside under the names they were written as, as any file no row accounts for."""
    journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id,
                                  server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    data = png_bytes(8401)
    entry_id = close_written(queue, "/cams", "x.png", data)
    crashed = crash_copy(journal, tmp_path)
    journal.close()
    folder = crashed / "datasets" / journal.directory.name
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        (folder / name).unlink(missing_ok=True)
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        assert UploadQueue(remote, reopened, dataset.id).resume() == []
        assert reopened.entries() == []
        kept = kept_aside(reopened.directory)
        assert [p.relative_to(folder / "quarantine").as_posix() for p in kept] == \
            ["cams/x.png"]
        assert kept[0].read_bytes() == data
        assert not reopened.staging_path(entry_id).exists()
    finally:
        reopened.close()


def test_until_its_commit_a_deferred_flush_shows_as_the_commit_writes_it(
        tmp_path, server, dataset: Dataset) -> None:
    """``get`` and ``entries`` apply a flush still kept in memory as the commit applies it
    to the row: a replace past its first step goes back to ``archived`` with its keys
    forgotten, a failed entry is staged again."""
    journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id,
                                  server.key)
    try:
        add_entry(journal, "replace", "/a", "x.png", replaced_id="img-1")
        add_entry(journal, "failed", "/a", "y.png")
        for entry_id in ("replace", "failed"):
            create_staging_file(journal, entry_id)
        journal.record_flushed({"replace": 10, "failed": 20})
        journal.update("replace", state=JobState.UPLOADING, step=Step.PUT, url_key="k1",
                       register_key="k2")
        journal.update("failed", state=JobState.FAILED, error="refused")
        journal.defer_flushed({"replace": (2, 11, "a" * 64), "failed": (2, 21, None)})
        shown = {e.id: e for e in journal.entries()}
        assert shown == {"replace": journal.get("replace"), "failed": journal.get("failed")}
        assert rows_in_database(journal) == {"replace": (1, 10, "uploading"),
                                             "failed": (1, 20, "failed")}
        replace = shown["replace"]
        assert (replace.size, replace.sha256, replace.step, replace.url_key,
                replace.register_key, replace.state) == \
            (11, "a" * 64, Step.ARCHIVED, None, None, JobState.UPLOADING)
        failed = shown["failed"]
        assert (failed.size, failed.state, failed.error) == (21, JobState.STAGED, None)
        # an older flush of the same entry arriving late changes nothing
        journal.defer_flushed({"failed": (1, 99, None)})
        assert journal.get("failed").size == 21  # type: ignore[union-attr]
        journal.make_durable(["replace", "failed"])  # the group commit writes them
        for entry_id, before in shown.items():
            after = journal.get(entry_id)
            assert after is not None
            assert dataclasses.replace(after, updated=0) == \
                dataclasses.replace(before, updated=0)
        assert rows_in_database(journal) == {"replace": (1, 11, "uploading"),
                                             "failed": (1, 21, "staged")}
    finally:
        journal.close()


def test_an_mtime_set_before_the_row_is_written_costs_no_commit_and_survives_a_kill_9(
        tmp_path, server, dataset: Dataset, remote) -> None:
    """``rsync -a`` sets the mtime of its temp file and renames it, which makes the upload:
    the mtime follows the new entry while its row is still deferred. It goes into that row
    and into the flush written beside the bytes, set before the flush (rsync's order) or
    after it (``cp -p``'s), without a commit; a kill -9 then keeps it with the flush."""
    state = tmp_path / "state"
    journal = Journal.for_dataset(state, server.base_url, dataset.id, server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    first, second = png_bytes(8201), png_bytes(8202)
    # set before the first flush (rsync: the temp file's mtime, then the rename)
    before, fd = queue.stage_open("/r", "before.png")
    try:
        queue.set_mtime(before, 1_600_000_000.25)
        os.pwrite(fd, first, 0)
        queue.flushed(before, len(first), hashlib.sha256(first).hexdigest(), deferred=True,
                      fd=fd)
    finally:
        os.close(fd)
    # set after it (cp -p: the close, then utimensat)
    after = close_written(queue, "/r", "after.png", second)
    queue.set_mtime(after, 1_500_000_000.5)
    assert rows_in_database(journal) == {}  # no commit for any of it
    assert {e: journal.get(e).mtime for e in (before, after)} == {  # type: ignore[union-attr]
        before: 1_600_000_000.25, after: 1_500_000_000.5}

    crashed = crash_copy(journal, tmp_path)
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        assert sorted(UploadQueue(remote, reopened, dataset.id).resume()) == \
            sorted([before, after])
        resumed = {e.filename: (e.mtime, e.size) for e in reopened.entries()}
        assert resumed == {"before.png": (1_600_000_000.25, len(first)),
                           "after.png": (1_500_000_000.5, len(second))}
    finally:
        reopened.close()


def test_a_flush_written_beside_the_bytes_before_marks_carried_the_mtime_is_still_read(
        tmp_path, server, dataset: Dataset, remote) -> None:
    """A mark of four fields (``incarnation size sha256 replaced_id``, as pictofs wrote it
    before the mtime was carried) left by a kill -9 is resumed as before: no mtime."""
    state = tmp_path / "state"
    journal = Journal.for_dataset(state, server.base_url, dataset.id, server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    data = png_bytes(8203)
    entry_id = close_written(queue, "/r", "old.png", data)
    path = journal.staging_path(entry_id)
    fields = os.getxattr(path, FLUSH_XATTR).decode("ascii").split(" ")
    assert len(fields) == 5 and fields[4] == "-"
    os.setxattr(path, FLUSH_XATTR, " ".join(fields[:4]).encode("ascii"))
    crashed = crash_copy(journal, tmp_path)
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        assert UploadQueue(remote, reopened, dataset.id).resume() == [entry_id]
        [entry] = reopened.entries()
        assert (entry.filename, entry.size, entry.sha256, entry.mtime) == \
            ("old.png", len(data), hashlib.sha256(data).hexdigest(), None)
    finally:
        reopened.close()
