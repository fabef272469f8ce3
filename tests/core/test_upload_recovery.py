"""Two recoveries of the upload queue against the real reference server (filesystem §5
"Durability", §8 ``sync``):

- a resumed entry whose saved register key the service already answered with an error — as
  it does for a register whose sender was killed mid-request (the body never arrived; the
  answer, 400, is replayed for that key for 24 h) — registers once more with a fresh key
  instead of failing for good; an error answer means nothing was created, so the file still
  lands exactly once;
- ``expedite`` (what ``pictofs sync`` does first) starts uploads that only wait for their
  ``write_back`` delay, and leaves retries and held files alone.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from harness import ServerHandle
from imagegen import png_bytes
from journalkit import add_entry, create_staging_file
from pictofs.core.upload.journal import Journal, kept_aside
from pictofs.core.upload.queue import UploadQueue
from pictofs.model import Dataset, Image

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0  # seconds: only so that a broken test fails instead of hanging
REGISTER = "/api/v1/developer/images/register"


@pytest.fixture()
def journal(tmp_path: Path, server: ServerHandle, dataset: Dataset) -> Iterator[Journal]:
    opened = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id, server.key)
    yield opened
    opened.close()


def spoil_key(server: ServerHandle, key: str, dataset_id: str) -> int:
    """Send a register the service refuses under ``key`` (a 400 for a name it does not
    take; 400s are kept for the key, as the answer to a register whose body was cut short
    is); returns the status."""
    answer = requests.post(server.base_url + REGISTER,
                           json={"dataset": dataset_id, "filename": "..",
                                 "directory_path": "/kept", "file_size": 10,
                                 "content_type": "image/png"},
                           headers={**server.headers(), "Idempotency-Key": key}, timeout=30)
    return answer.status_code


def test_a_resumed_register_whose_key_holds_an_error_lands_once_with_a_fresh_key(
        server, client, dataset, remote, journal) -> None:
    data = png_bytes(7001)
    key = uuid.uuid4().hex
    assert spoil_key(server, key, dataset.id) == 400
    # the journal of a process killed after its PUT, with the register key already saved
    entry_id = uuid.uuid4().hex
    add_entry(journal, entry_id, "/kept", "one.png")
    create_staging_file(journal, entry_id)
    journal.staging_path(entry_id).write_bytes(data)
    journal.update(entry_id, flushed=True, size=len(data), state="uploading", step="put",
                   register_key=key)

    landed: dict[str, Image] = {}
    failed: dict[str, str] = {}
    queue = UploadQueue(remote, journal, dataset.id, write_back=0.0, retry_max_wait=0.05,
                        on_registered=lambda e, image: landed.update({e: image}),
                        on_failed=lambda e, reason: failed.update({e: reason}))
    assert queue.resume() == [entry_id]
    queue.start()
    try:
        assert queue.wait_idle(WAIT)
    finally:
        assert queue.stop(WAIT)
    assert failed == {}
    assert [i.filename for i in client.images.list(dataset.id, include_archived=True)] == \
        ["one.png"]
    assert landed[entry_id].filename == "one.png"
    entry = journal.get(entry_id)
    assert entry is not None and entry.state == "done" and entry.register_key != key


def test_expedite_starts_what_waits_for_write_back_only(remote, journal, dataset) -> None:
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    waiting = queue.stage("/", "waiting.png")
    journal.staging_path(waiting).write_bytes(png_bytes(7002))
    queue.flushed(waiting, len(png_bytes(7002)))
    queue.schedule(waiting)
    held = queue.stage("/", "held.png")
    journal.staging_path(held).write_bytes(png_bytes(7003))
    queue.flushed(held, len(png_bytes(7003)))
    queue.schedule(held)
    queue.hold(held)  # open for writing again
    queue.start()
    try:
        assert not queue.wait_idle(0.2)
        assert queue.expedite() == 1
        assert queue.wait_idle(WAIT)
        assert journal.get(waiting).state == "done"  # type: ignore[union-attr]
        assert journal.get(held).state == "staged"  # type: ignore[union-attr]
    finally:
        assert queue.stop(WAIT)


@pytest.mark.parametrize("damage", ["journal removed", "journal emptied", "wal removed",
                                    "wal cut in half", "wal byte flipped"])
def test_staged_files_a_damaged_journal_lost_are_kept_aside_never_deleted(
        tmp_path, server, dataset, remote, caplog, damage) -> None:
    """A journal that lost rows (deleted, emptied, its WAL gone, cut or damaged) after a
    crash must not cost the staged bytes: every flushed file is either still an entry of the
    journal or kept aside under the name it was written as; none is deleted."""
    state = tmp_path / "state"
    journal = Journal.for_dataset(state, server.base_url, dataset.id, server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    datas = {f"{n}.png": png_bytes(7100 + n) for n in range(6)}
    for name, data in datas.items():  # one commit each, as six closes would make
        [entry_id] = queue.stage_many([("/cams", name, None)])
        journal.staging_path(entry_id).write_bytes(data)
        queue.flushed_many({entry_id: len(data)})
    empty_id = queue.stage("/cams", "never-written.png")  # nothing in it: nothing to keep
    # the files as a kill -9 leaves them (the WAL not checkpointed): a copy while open
    crashed = tmp_path / "crashed"
    shutil.copytree(state, crashed, ignore=shutil.ignore_patterns("journal.lock"))
    journal.close()
    folder = crashed / "datasets" / journal.directory.name
    database, wal = folder / "journal.db", folder / "journal.db-wal"
    assert wal.stat().st_size > 0
    if damage == "journal removed":
        for path in (database, wal, folder / "journal.db-shm"):
            path.unlink(missing_ok=True)
    elif damage == "journal emptied":
        database.write_bytes(b"")
        wal.unlink()
    elif damage == "wal removed":
        wal.unlink()
    elif damage == "wal cut in half":
        os.truncate(wal, wal.stat().st_size // 2)
    else:
        raw = bytearray(wal.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        wal.write_bytes(bytes(raw))

    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        queue = UploadQueue(remote, reopened, dataset.id, write_back=3600.0)
        with caplog.at_level("WARNING", logger="pictofs.core.upload.queue"):
            queue.resume()
        kept = {p.relative_to(folder / "quarantine").as_posix(): p.read_bytes()
                for p in kept_aside(folder)}
        live = {f"{e.folder.strip('/')}/{e.filename}": reopened.staging_path(e.id).read_bytes()
                for e in reopened.entries() if e.flushed}
        assert {**live, **kept} == {f"cams/{name}": data for name, data in datas.items()}
        assert not set(live) & set(kept)
        if damage in ("journal removed", "journal emptied", "wal removed"):
            assert live == {}
            assert "6 staged file(s) the upload journal has no record of" in caplog.text
        assert not reopened.staging_path(empty_id).exists()
    finally:
        reopened.close()


def test_a_staging_file_torn_by_a_crash_of_the_machine_fails_and_is_never_sent(
        remote, journal, dataset, client) -> None:
    """A flush recorded the size and sha256 of its bytes; after a crash of the machine
    before the group commit, the staging file may hold fewer bytes. The resumed upload finds that out before any request: the entry fails for
    good with the reason, its bytes kept, and nothing reaches the service. An entry whose
    bytes match lands."""
    import hashlib

    whole = png_bytes(7201)
    entries = {}
    for name, data in (("torn.png", whole), ("whole.png", whole)):
        entry_id = uuid.uuid4().hex
        add_entry(journal, entry_id, "/cams", name)
        create_staging_file(journal, entry_id)
        journal.staging_path(entry_id).write_bytes(data)
        journal.record_flushed({entry_id: len(data)},
                               digests={entry_id: hashlib.sha256(data).hexdigest()})
        entries[name] = entry_id
    # what the disk held after the crash: the first half of the bytes
    journal.staging_path(entries["torn.png"]).write_bytes(whole[:len(whole) // 2])
    failed: dict[str, str] = {}
    queue = UploadQueue(remote, journal, dataset.id, write_back=0.0, retry_max_wait=0.05,
                        on_failed=lambda e, reason: failed.update({e: reason}))
    assert sorted(queue.resume()) == sorted(entries.values())
    queue.start()
    try:
        assert queue.wait_idle(WAIT)
    finally:
        assert queue.stop(WAIT)
    assert "not the ones written" in failed[entries["torn.png"]]
    torn_entry = journal.get(entries["torn.png"])
    assert torn_entry is not None and torn_entry.state == "failed"
    assert journal.staging_path(entries["torn.png"]).read_bytes() == whole[:len(whole) // 2]
    assert [i.filename for i in client.images.list(dataset.id, include_archived=True)] == \
        ["whole.png"]


def test_bytes_whose_flush_was_never_recorded_are_kept_aside_not_deleted(
        remote, journal, dataset) -> None:
    """At resume, an entry the journal never saw flushed: its bytes were being written when
    the daemon died, or a crash of the machine lost the commit of its close. They are not
    uploaded (they may be cut short) but kept aside under the name they were written as;
    an entry that holds no byte, or that was removed (cancelled), is forgotten."""
    queue = UploadQueue(remote, journal, dataset.id, write_back=0.0)
    written = queue.stage("/cams", "half.png")
    journal.staging_path(written).write_bytes(png_bytes(7301)[:500])
    queue.stage("/cams", "empty.png")  # created, never written
    removed = queue.stage("/cams", "removed.png")
    journal.staging_path(removed).write_bytes(png_bytes(7302))
    journal.update(removed, cancelled=True)
    journal.close()  # the daemon is gone; a new one resumes
    reopened = Journal(journal.directory, dataset_id=dataset.id)
    try:
        assert UploadQueue(remote, reopened, dataset.id).resume() == []
        assert reopened.entries() == []
        assert reopened.staging_names() == []
        kept = kept_aside(reopened.directory)
        assert [p.relative_to(reopened.directory / "quarantine").as_posix() for p in kept] \
            == ["cams/half.png"]
        assert kept[0].read_bytes() == png_bytes(7301)[:500]
        for path in (reopened.directory / "quarantine").rglob("*"):  # private, folders too
            assert path.stat().st_mode & 0o077 == 0, path
    finally:
        reopened.close()


def test_bytes_written_before_the_first_flush_survive_a_kill_9_without_a_row(
        tmp_path, server, dataset, remote) -> None:
    """A new file's row waits for the commit of its first flush (one commit per file). A
    kill -9 between the create and that flush leaves the staging file without a row: its
    bytes are kept aside under the name they were written as, never deleted; an empty one
    goes; a file flushed before the crash resumes."""
    state = tmp_path / "state"
    journal = Journal.for_dataset(state, server.base_url, dataset.id, server.key)
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    whole = queue.stage("/cams", "whole.png")
    journal.staging_path(whole).write_bytes(png_bytes(7401))
    queue.flushed(whole, len(png_bytes(7401)))
    written = queue.stage("/cams", "half.png")  # created after that flush's commit
    journal.staging_path(written).write_bytes(png_bytes(7402)[:700])
    empty = queue.stage("/cams", "empty.png")
    crashed = tmp_path / "crashed"  # the state folder as kill -9 leaves it: a copy while open
    shutil.copytree(state, crashed, ignore=shutil.ignore_patterns("journal.lock"))
    journal.close()
    reopened = Journal.for_dataset(crashed, server.base_url, dataset.id, server.key)
    try:
        assert [e.filename for e in reopened.entries()] == ["whole.png"]
        assert UploadQueue(remote, reopened, dataset.id).resume() == [whole]
        kept = kept_aside(reopened.directory)
        assert [p.relative_to(reopened.directory / "quarantine").as_posix() for p in kept] \
            == ["cams/half.png"]
        assert kept[0].read_bytes() == png_bytes(7402)[:700]
        assert reopened.staging_names() == [whole]
        assert not reopened.staging_path(empty).exists() and not reopened.staging_path(
            written).exists()
    finally:
        reopened.close()


def test_a_flush_after_the_upload_landed_or_was_cancelled_is_ignored(
        remote, journal, dataset, caplog) -> None:
    """The writer's side holds an entry before writing it again; a flush that comes after
    its upload ended (landed, or cancelled) changes nothing and says so (the queue asks the
    journal whenever its task is not a live one)."""
    queue = UploadQueue(remote, journal, dataset.id, write_back=0.0)
    data = png_bytes(7501)
    landed = queue.stage("/late", "landed.png")
    journal.staging_path(landed).write_bytes(data)
    queue.flushed(landed, len(data))
    queue.schedule(landed)
    queue.start()
    try:
        assert queue.wait_idle(WAIT)
        cancelled = queue.stage("/late", "cancelled.png")
        journal.staging_path(cancelled).write_bytes(data)
        queue.flushed(cancelled, len(data))  # held: never scheduled
        journal.update(cancelled, cancelled=True)  # as a cancel the disk took half of
        with caplog.at_level("WARNING", logger="pictofs.core.upload.queue"):
            queue.flushed(landed, 3)
            with queue._changed:
                queue._schedule.add(cancelled).cancelled = True
            queue.flushed(cancelled, 4)
    finally:
        assert queue.stop(WAIT)
    done = journal.get(landed)
    assert done is not None and done.state == "done" and done.size == len(data)
    gone = journal.get(cancelled)
    assert gone is not None and gone.size == len(data)
    assert caplog.text.count("after its upload ended is ignored") == 2
