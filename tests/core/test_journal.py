"""The upload journal (filesystem spec §5 "Durability", §8): layout and modes, versioning,
the one-process lock, the resume decisions, mtimes, and what a restarted queue does with
each kind of entry (no service involved)."""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from journalkit import add_entry, create_staging_file, journal_meta
from pictofs.core.upload.journal import (
    VERSION,
    Converted,
    Entry,
    Journal,
    ResumeAction,
    find_journals,
    journal_dir,
    legacy_journal_dir,
    key_fingerprint,
    orphan_staging_files,
    resume_action,
)
from pictofs.core.upload.queue import UploadQueue
import pictofs.core.upload.journal as journal_module
from pictofs.core.upload.states import IllegalTransition, JobState
from pictofs.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

BASE_URL = "http://127.0.0.1:9"
DATASET = "3f1c8a52-5b8e-4d58-9a53-d1a9c0e4b001"
KEY = "pk_live_journaltestkey"


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture()
def journal(state_dir: Path) -> Iterator[Journal]:
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as opened:
        yield opened


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_entry(**values: Any) -> Entry:
    base = dict(id="e1", folder="/", filename="x.jpg", state="queued", flushed=True,
                cancelled=False, size=10, sha256=None, mtime=None, replaced_id=None,
                url_key=None, register_key=None, step="none", error=None, image_id=None,
                created=0.0, updated=0.0)
    base.update(values)
    return Entry(**base)


# ---------------------------------------------------------------------- layout and identity


def test_layout_is_private_and_named_by_the_dataset(journal: Journal,
                                                    state_dir: Path) -> None:
    expected = journal_dir(state_dir, DATASET)
    assert journal.directory == expected
    assert expected.parent == state_dir / "datasets"
    add_entry(journal, "e1", "/", "x.jpg")
    staged = create_staging_file(journal, "e1")
    for folder in (state_dir / "datasets", expected, journal.staging_dir):
        assert mode(folder) == 0o700, folder
    for file in (expected / "journal.db", expected / "journal.lock", staged):
        assert mode(file) == 0o600, file
    wal = expected / "journal.db-wal"
    if wal.exists():
        assert mode(wal) == 0o600
    meta = journal_meta(journal)
    assert re.fullmatch(r"[0-9a-f]{32}", meta.pop("incarnation"))  # names flush marks
    assert meta == {"version": str(VERSION), "base_url": BASE_URL, "dataset_id": DATASET,
                    "fingerprint": key_fingerprint(KEY)}


def test_one_folder_per_dataset_whatever_the_base_url_or_key(state_dir: Path) -> None:
    """The embedded server's port changes at every start and keys are rotated: the
    journal of a dataset must be found again, so only the dataset id names it."""
    assert journal_dir(state_dir, DATASET) == state_dir / "datasets" / DATASET
    odd = journal_dir(state_dir, "../x/y")
    assert odd.parent == state_dir / "datasets" and odd.name.startswith("id-")
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as first:
        add_entry(first, "e1", "/", "x.jpg")
    with Journal.for_dataset(state_dir, "http://127.0.0.1:41999", DATASET,
                             "pk_live_rotated") as second:
        assert [e.id for e in second.entries()] == ["e1"]
        assert journal_meta(second)["base_url"] == "http://127.0.0.1:41999"
        assert journal_meta(second)["fingerprint"] == key_fingerprint("pk_live_rotated")
    assert all(KEY not in str(p) for p in state_dir.rglob("*"))


def test_a_journal_an_older_pictofs_named_by_url_and_key_is_adopted(state_dir: Path) -> None:
    legacy = legacy_journal_dir(state_dir, BASE_URL, DATASET, KEY)
    with Journal(legacy, base_url=BASE_URL, dataset_id=DATASET,
                 fingerprint=key_fingerprint(KEY)) as old:
        add_entry(old, "e1", "/", "x.jpg")
    with Journal.for_dataset(state_dir, "http://127.0.0.1:5", DATASET, "pk_live_new") as now:
        assert now.directory == journal_dir(state_dir, DATASET)
        assert [e.id for e in now.entries()] == ["e1"]
        assert now.stranded() == []
    assert not legacy.exists()


def test_a_second_journal_of_the_dataset_is_reported_as_stranded(state_dir: Path) -> None:
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as current:
        add_entry(current, "e1", "/", "x.jpg")
    legacy = legacy_journal_dir(state_dir, BASE_URL, DATASET, "pk_live_other")
    with Journal(legacy, base_url=BASE_URL, dataset_id=DATASET,
                 fingerprint=key_fingerprint("pk_live_other")) as old:
        add_entry(old, "e2", "/", "y.jpg")
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as current:
        [stranded] = current.stranded()
        assert stranded.folder == legacy and stranded.live == 1
    assert {i.dataset_id for i in find_journals(state_dir)} == {DATASET}


def test_entries_and_mtimes_survive_reopening(state_dir: Path) -> None:
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as first:
        add_entry(first, "e1", "/cars", "a.jpg", replaced_id="old")
        first.update("e1", flushed=True, size=42, state="queued", step="archived",
                     register_key="k" * 32)
        first.set_mtime("img-1", 1_600_000_000.5)
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as second:
        entry = second.get("e1")
        assert entry is not None
        assert (entry.folder, entry.filename, entry.state, entry.size, entry.step,
                entry.replaced_id, entry.register_key, entry.flushed) == \
            ("/cars", "a.jpg", "queued", 42, "archived", "old", "k" * 32, True)
        assert entry.path == "/cars/a.jpg"
        assert second.mtime("img-1") == 1_600_000_000.5


def test_update_refuses_unknown_columns_states_and_steps(journal: Journal) -> None:
    add_entry(journal, "e1", "/", "x.jpg")
    with pytest.raises(ValueError):
        journal.update("e1", colour="red")
    with pytest.raises(ValueError):
        journal.update("e1", state="lost")
    with pytest.raises(ValueError):
        journal.update("e1", step="teleported")
    with pytest.raises(KeyError):
        journal.update("missing", state="queued")


def test_a_state_change_the_table_refuses_writes_nothing(journal: Journal) -> None:
    for entry_id in ("e1", "e2"):
        add_entry(journal, entry_id, "/", f"{entry_id}.jpg")
    journal.record_registered("e2", "img-2")
    with pytest.raises(IllegalTransition):
        journal.update_many({"e1": {"state": JobState.QUEUED},
                             "e2": {"state": JobState.UPLOADING}})
    assert [(e.id, e.state) for e in journal.entries()] == [("e1", "staged"), ("e2", "done")]
    journal.update("e1", state=JobState.FAILED, error="boom")
    with pytest.raises(IllegalTransition):
        journal.record_registered("e1", "img-1")
    assert journal.get("e1").state is JobState.FAILED  # type: ignore[union-attr]


# ---------------------------------------------------------------------- versioning


def test_a_journal_of_an_unknown_version_refuses_to_open_and_is_kept(state_dir: Path) -> None:
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as journal:
        add_entry(journal, "e1", "/", "keep-me.jpg")
        database = journal.directory / "journal.db"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    db.close()
    before = database.read_bytes()
    with pytest.raises(ConfigError, match="refusing to mount") as caught:
        Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY)
    assert "version 99" in str(caught.value)
    assert database.read_bytes() == before
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT filename FROM entries").fetchall() == [("keep-me.jpg",)]
    db.close()


def test_a_file_that_is_not_a_journal_refuses_to_open_and_is_kept(state_dir: Path) -> None:
    folder = journal_dir(state_dir, DATASET)
    folder.mkdir(parents=True)
    database = folder / "journal.db"
    database.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="refusing to mount"):
        Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY)
    assert database.read_bytes() == b"this is not sqlite at all" * 100


# ---------------------------------------------------------------------- the lock

_OPEN_JOURNAL = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pictofs.core.upload.journal import Journal
    from pictofs.errors import ConfigError
    try:
        journal = Journal(Path(sys.argv[1]))
    except ConfigError as exc:
        print(exc)
        sys.exit(3)
    print("opened", flush=True)
    sys.stdin.read()  # hold the journal until the test closes our stdin
    journal.close()
""")


def test_a_second_process_gets_a_clear_error_naming_the_holder(journal: Journal) -> None:
    result = subprocess.run([sys.executable, "-c", _OPEN_JOURNAL, str(journal.directory)],
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 3, result.stderr
    assert f"journal in use by pid {os.getpid()}" in result.stdout


def test_the_lock_is_released_when_the_holding_process_ends(state_dir: Path) -> None:
    folder = journal_dir(state_dir, DATASET)
    holder = subprocess.Popen([sys.executable, "-c", _OPEN_JOURNAL, str(folder)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "opened"
        with pytest.raises(ConfigError, match=f"journal in use by pid {holder.pid}"):
            Journal(folder)
    finally:
        holder.kill()  # as a crash would: the kernel drops the flock with the process
        holder.communicate(timeout=30)
    with Journal(folder) as reopened:
        assert reopened.entries() == []


def test_one_process_cannot_open_the_same_journal_twice(journal: Journal) -> None:
    with pytest.raises(ConfigError, match="journal in use"):
        Journal(journal.directory)


# ---------------------------------------------------------------------- resume decisions


@pytest.mark.parametrize("values, action", [
    (dict(state="staged", flushed=False), ResumeAction.DROP),
    (dict(state="staged", flushed=True), ResumeAction.QUEUE),
    (dict(state="queued"), ResumeAction.QUEUE),
    (dict(state="uploading", step="url"), ResumeAction.QUEUE),
    (dict(state="uploading", step="put", register_key="k" * 32), ResumeAction.QUEUE),
    (dict(state="queued", step="archived", replaced_id="old"), ResumeAction.QUEUE),
    (dict(state="failed", error="not an image"), ResumeAction.KEEP_FAILED),
    (dict(state="done", step="registered", image_id="img"), ResumeAction.PRUNE),
    (dict(state="queued", cancelled=True), ResumeAction.DROP),
    (dict(state="uploading", cancelled=True, step="url"), ResumeAction.DROP),
    (dict(state="uploading", cancelled=True, step="put", register_key="k" * 32),
     ResumeAction.FINISH_CANCEL),
    (dict(state="done", cancelled=True, step="registered", image_id="img"),
     ResumeAction.FINISH_CANCEL),
])
def test_resume_action(values: dict[str, Any], action: ResumeAction) -> None:
    assert resume_action(make_entry(**values)) is action


def test_orphan_staging_files_are_the_ones_no_live_entry_owns() -> None:
    entries = [make_entry(id="live"), make_entry(id="done", state="done")]
    assert orphan_staging_files(entries, ["live", "done", "stray"]) == ["done", "stray"]


def test_resume_queues_flushed_entries_and_drops_the_rest(journal: Journal) -> None:
    def staged(entry_id: str, **changes: Any) -> None:
        add_entry(journal, entry_id, "/", f"{entry_id}.jpg")
        create_staging_file(journal, entry_id)
        if changes:
            journal.update(entry_id, **changes)

    staged("never-flushed")
    staged("flushed", flushed=True)
    staged("queued", flushed=True, state="queued")
    staged("uploading", flushed=True, state="uploading", step="put", register_key="k" * 32)
    staged("failed", flushed=True, state="failed", error="conflict")
    staged("done", flushed=True)
    journal.record_registered("done", "img-done")
    (journal.staging_dir / "stray").write_bytes(b"left by a crash")

    queue = UploadQueue(remote=None, journal=journal, dataset_id=DATASET)  # type: ignore[arg-type]
    resumed = queue.resume()

    assert sorted(resumed) == ["flushed", "queued", "uploading"]
    assert {e.id: e.state for e in journal.entries()} == {
        "flushed": "queued", "queued": "queued", "uploading": "queued", "failed": "failed"}
    assert journal.staging_names() == ["failed", "flushed", "queued", "uploading"]
    assert [e.id for e in queue.failed()] == ["failed"]
    assert queue.stats().pending == 3
    assert journal.get("uploading") is not None
    assert journal.get("uploading").register_key == "k" * 32  # type: ignore[union-attr]


# ---------------------------------------------------------------------- mtimes


def test_registering_moves_the_entry_mtime_to_the_image(journal: Journal) -> None:
    add_entry(journal, "e1", "/", "x.jpg")
    journal.set_entry_mtime("e1", 1_500_000_000.0)
    assert journal.mtime("img-1") is None
    done = journal.record_registered("e1", "img-1")
    assert (done.state, done.step, done.image_id) == ("done", "registered", "img-1")
    assert journal.mtime("img-1") == 1_500_000_000.0
    journal.set_entry_mtime("e1", 1_500_000_123.0)  # rsync sets times after the upload
    assert journal.mtime("img-1") == 1_500_000_123.0


def test_registering_without_an_mtime_records_none(journal: Journal) -> None:
    add_entry(journal, "e1", "/", "x.jpg")
    journal.record_registered("e1", "img-1")
    assert journal.mtime("img-1") is None
    assert journal.mtimes() == {}


def test_mtimes_are_set_and_replaced_by_image_id(journal: Journal) -> None:
    journal.set_mtime("a", 1.0)
    journal.set_mtime("b", 2.0)
    journal.set_mtime("a", 3.0)
    assert journal.mtimes() == {"a": 3.0, "b": 2.0}


def test_done_entries_are_pruned_by_age(journal: Journal) -> None:
    for entry_id in ("done", "live"):
        add_entry(journal, entry_id, "/", f"{entry_id}.jpg")
    done = journal.record_registered("done", "img-done")
    assert journal.delete_done(before=done.updated) == 0  # not older than the cut-off
    assert journal.delete_done(before=done.updated + 3600) == 1
    assert [e.id for e in journal.entries()] == ["live"]
    assert journal.mtimes() == {}  # pruning an entry keeps nothing it did not have


def test_entry_snapshots_are_immutable(journal: Journal) -> None:
    entry = add_entry(journal, "e1", "/", "x.jpg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.state = "done"  # type: ignore[misc]
    assert entry.state == "staged" and not entry.flushed and entry.step == "none"


# ---------------------------------------------------------------------- fewer commits and fsyncs


@pytest.mark.parametrize("before, step, state", [
    (dict(), "none", "staged"),
    (dict(step="put"), "none", "staged"),
    (dict(replaced_id="old"), "none", "staged"),
    (dict(replaced_id="old", step="archived"), "archived", "staged"),
    (dict(replaced_id="old", step="put", register_key="k" * 32), "archived", "staged"),
    (dict(state="failed", error="boom", step="put"), "none", "staged"),
    (dict(state="uploading", step="put", url_key="u" * 32), "none", "uploading"),
])
def test_record_flushed_starts_the_upload_over_from_the_row_as_it_is(
        journal: Journal, before: dict[str, Any], step: str, state: str) -> None:
    add_entry(journal, "e1", "/", "x.jpg")
    if before:
        journal.update("e1", **before)
    journal.record_flushed({"e1": 42})
    entry = journal.get("e1")
    assert entry is not None
    assert (entry.flushed, entry.size, entry.step, entry.state) == (True, 42, step, state)
    assert (entry.sha256, entry.url_key, entry.register_key, entry.error) == (None,) * 4


def test_record_flushed_after_a_retarget_keeps_the_retarget(journal: Journal) -> None:
    """The write is worked out from the row at the time it is made: a retarget that came
    between the flush's decision and its write (a new name, no replace) is not undone."""
    add_entry(journal, "e1", "/", "x.jpg", replaced_id="old")
    journal.update("e1", step="archived")
    journal.update("e1", filename="y.jpg", replaced_id=None, step="none")  # the retarget
    journal.record_flushed({"e1": 7})
    entry = journal.get("e1")
    assert entry is not None and (entry.filename, entry.replaced_id, entry.step) == \
        ("y.jpg", None, "none")


def test_record_flushed_skips_rows_a_newer_flush_will_write(journal: Journal) -> None:
    add_entry(journal, "e1", "/", "a.jpg")
    add_entry(journal, "e2", "/", "b.jpg")
    journal.record_flushed({"e1": 1, "e2": 2}, still=lambda entry_id: entry_id == "e2")
    one, two = journal.get("e1"), journal.get("e2")
    assert one is not None and two is not None
    assert (one.flushed, two.flushed, two.size) == (False, True, 2)


def test_update_if_writes_only_the_rows_still_wanted(journal: Journal) -> None:
    add_entry(journal, "e1", "/", "a.jpg")
    add_entry(journal, "e2", "/", "b.jpg")
    written = journal.update_if({"e1": {"step": "put"}, "e2": {"step": "put"}},
                                lambda entry_id: entry_id == "e1")
    assert written == ["e1"]
    assert [e.step for e in journal.entries()] == ["put", "none"]


def test_commits_are_not_fsynced_except_the_group_commits(journal: Journal) -> None:
    journal.add_many([("e1", "/", "a.jpg", None)])
    assert journal.get("e1") is not None
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    journal.make_durable(["e1"])
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL again


def test_one_folder_fsync_covers_every_staging_file_created_before_it(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real = journal_module.fsync_dir
    monkeypatch.setattr(journal_module, "fsync_dir", lambda path: (synced.append(path),
                                                                   real(path)))
    journal.create_staging_files(["a", "b"], sync=False)
    assert synced == []  # not at creation
    journal.sync_staging_files(["a"])
    assert synced == [journal.staging_dir]
    journal.sync_staging_files(["b"])  # created before that fsync: covered
    assert synced == [journal.staging_dir]
    journal.create_staging_files(["c"], sync=False)
    journal.sync_staging_files(["c"])
    assert synced == [journal.staging_dir] * 2


def test_writing_a_file_costs_no_fsync_until_the_group_commit(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the mount's create, flush and release do to the journal: no commit and no fsync
    (a crash of the daemon loses nothing: the bytes are in the page cache, the flush is
    recorded beside them). The group commit then writes the row and makes it durable with
    one commit and one syncfs of the journal's filesystem, and a restart resumes the
    entry."""
    queue = UploadQueue(remote=None, journal=journal, dataset_id=DATASET)  # type: ignore[arg-type]
    commits: list[bool] = []  # durable or not, each
    real_write = Journal._write

    def counting_write(self: Journal, durable: bool = False) -> Any:
        commits.append(durable)
        return real_write(self, durable)

    fsyncs: list[int] = []
    syncfs: list[Path] = []
    real_fsync, real_syncfs = os.fsync, journal_module.sync_filesystem
    monkeypatch.setattr(Journal, "_write", counting_write)
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    monkeypatch.setattr(journal_module, "sync_filesystem",
                        lambda path: (syncfs.append(path), real_syncfs(path))[1])
    entry_id = queue.stage("/", "a.png")  # create
    assert commits == []  # the row waits for the flush's commit
    journal.staging_path(entry_id).write_bytes(b"x" * 100)
    queue.flushed(entry_id, 100, "ab" * 32, deferred=True)  # flush
    queue.schedule(entry_id)  # release
    assert commits == []  # the flush is recorded beside the bytes
    assert os.getxattr(journal.staging_path(entry_id), journal_module.FLUSH_XATTR)
    assert fsyncs == [] and syncfs == []
    assert queue.not_durable() == 1
    queue.make_durable()  # the group commit (a writer's fsync asks for it now)
    assert commits == [False]  # the row and its flush, in one commit for all the files
    assert syncfs == [journal.directory]
    assert queue.not_durable() == 0
    queue.make_durable()  # nothing flushed since: nothing to do
    assert syncfs == [journal.directory]
    monkeypatch.undo()
    entry = journal.get(entry_id)
    assert entry is not None and resume_action(entry) is ResumeAction.QUEUE
    assert entry.sha256 == "ab" * 32


def test_the_group_commit_without_syncfs_fsyncs_each_file_the_folder_and_the_wal(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library has no syncfs: the staging files flushed since the last group
    commit (those still there), their folder, and one durable commit (the WAL's fsync)."""
    queue = UploadQueue(remote=None, journal=journal, dataset_id=DATASET)  # type: ignore[arg-type]
    first, second = queue.stage("/", "a.png"), queue.stage("/", "b.png")
    for entry_id in (first, second):
        journal.staging_path(entry_id).write_bytes(b"x" * 10)
        queue.flushed(entry_id, 10)
    journal.remove_staging_file(second, sync=False)  # uploaded meanwhile
    commits: list[bool] = []  # durable or not, each
    real_write = Journal._write

    def counting_write(self: Journal, durable: bool = False) -> Any:
        commits.append(durable)
        return real_write(self, durable)

    fsynced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_module, "sync_filesystem", lambda path: False)
    monkeypatch.setattr(Journal, "_write", counting_write)
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(os.readlink(
        f"/proc/self/fd/{fd}")), real_fsync(fd)))
    queue.make_durable()
    assert fsynced == [str(journal.staging_path(first)), str(journal.staging_dir)]
    assert commits == [True]


def test_converted_names_are_remembered_in_a_table_made_when_first_needed(
        state_dir: Path) -> None:
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as journal:
        assert journal.converted() == [] and journal.converted_at("/", "x.heic") is None
        database = journal.directory / "journal.db"
    with sqlite3.connect(database) as db:  # a journal that never needed it: as before
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'converted'"
                          ).fetchall() == []
    db.close()
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as journal:
        journal.remember_converted(Converted("/cam", "IMG_1.heic", "img-1", 466, "ab" * 32))
    with Journal.for_dataset(state_dir, BASE_URL, DATASET, KEY) as journal:
        assert journal_meta(journal)["version"] == str(VERSION)
        assert journal.converted_at("/cam", "IMG_1.heic") == \
            Converted("/cam", "IMG_1.heic", "img-1", 466, "ab" * 32)
        # one name per image: a rename of the written name forgets the old one
        journal.remember_converted(Converted("/new", "IMG_1.heic", "img-1", 466, "ab" * 32))
        assert [c.folder for c in journal.converted()] == ["/new"]
        assert journal.converted_at("/cam", "IMG_1.heic") is None
        # a folder renamed or moved takes the names in it and below along, no other
        journal.remember_converted(Converted("/new/sub", "b.heic", "img-2", 1, "cd" * 32))
        journal.remember_converted(Converted("/newer", "c.heic", "img-3", 1, "ef" * 32))
        journal.move_converted("/new", "/moved/here")
        assert sorted((c.folder, c.name) for c in journal.converted()) == [
            ("/moved/here", "IMG_1.heic"), ("/moved/here/sub", "b.heic"), ("/newer", "c.heic")]


def test_a_new_entry_is_written_by_the_next_commit_and_shown_until_then(
        journal: Journal) -> None:
    """``add_many(deferred=True)`` (the mount's create): no commit of its own; ``get`` and
    ``entries`` show the row from memory, and any next commit writes it (then the database
    has it, whatever that commit was about)."""
    journal.add_many([("e1", "/", "a.jpg", None), ("e2", "/cars", "b.jpg", "old")],
                     deferred=True)
    assert read_ids(journal) == []
    first = journal.get("e1")
    assert first is not None and first.state == JobState.STAGED and not first.flushed
    assert [e.id for e in journal.entries()] == ["e1", "e2"]
    assert [e.replaced_id for e in journal.entries(JobState.STAGED)] == [None, "old"]
    assert journal.entries(JobState.FAILED) == []
    journal.record_flushed({"e1": 5})  # the first flush: both rows go with its commit
    assert read_ids(journal) == ["e1", "e2"]
    flushed = journal.get("e1")
    assert flushed is not None and flushed.flushed and flushed.size == 5
    second = journal.get("e2")
    assert second is not None and second.replaced_id == "old" and not second.flushed


def test_a_commit_that_fails_keeps_the_new_rows_for_the_next(journal: Journal) -> None:
    """A transaction rolled back (here a row it updates does not exist) takes the deferred
    rows back with it: they are still shown, and written by the next commit."""
    journal.add_many([("e1", "/", "a.jpg", None)], deferred=True)
    with pytest.raises(KeyError):
        journal.update_many({"missing": {"error": "x"}})
    assert read_ids(journal) == [] and journal.get("e1") is not None
    journal.update("e1", cancelled=True)
    assert read_ids(journal) == ["e1"]
    entry = journal.get("e1")
    assert entry is not None and entry.cancelled


def read_ids(journal: Journal) -> list[str]:
    """The ids of the rows in the database, read through a connection of the test's own."""
    db = sqlite3.connect(f"file:{journal.directory / 'journal.db'}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT id FROM entries ORDER BY id")]
    finally:
        db.close()
