"""The writable attributes (``split``, ``tags``) set on a file before it landed, as the
upload journal keeps them (filesystem §2, §5 "Durability"): across a reopen, gone with their
entry, not kept for an entry that is done, brought along by an upgrade and a takeover; and a
restart that finds an entry landed with its attributes not set yet sets them."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from journalkit import add_entry, journal_meta
from pictofs.core.upload.journal import VERSION, Journal, journal_dir
from pictofs.core.upload.states import JobState
from seed import seed_images

pytestmark = pytest.mark.timeout(60)

VERSION_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id TEXT PRIMARY KEY, folder TEXT NOT NULL, filename TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('staged', 'queued', 'uploading', 'failed', 'done')),
    flushed INTEGER NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0, size INTEGER,
    sha256 TEXT, mtime REAL, replaced_id TEXT, url_key TEXT, register_key TEXT,
    step TEXT NOT NULL DEFAULT 'none'
        CHECK (step IN ('none', 'archived', 'url', 'put', 'registered')),
    error TEXT, image_id TEXT, created REAL NOT NULL, updated REAL NOT NULL,
    source TEXT, source_mtime_ns INTEGER
);
CREATE TABLE mtimes (image_id TEXT PRIMARY KEY, mtime REAL NOT NULL);
INSERT INTO meta VALUES ('version', '2');
INSERT INTO entries (id, folder, filename, state, flushed, size, created, updated)
    VALUES ('old', '/a', 'x.png', 'queued', 1, 10, 0, 0);
"""


def land(journal: Journal, entry_id: str, image_id: str) -> None:
    journal.update(entry_id, state=JobState.UPLOADING, flushed=True)
    journal.record_registered(entry_id, image_id)


def test_kept_across_a_reopen_and_gone_with_their_entry(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        add_entry(journal, "e1", "/", "x.png")
        add_entry(journal, "e2", "/", "y.png")
        journal.set_attrs("e1", {"split": "train"})
        journal.set_attrs("e1", {"tags": ["a", "b"], "split": None})
        journal.set_attrs("e2", {"tags": ["c"]})
        journal.set_attrs("nobody", {"tags": ["d"]})  # no such entry: nothing kept
    with Journal(tmp_path / "j") as journal:
        assert journal.attrs() == {"e1": {"split": None, "tags": ["a", "b"]},
                                   "e2": {"tags": ["c"]}}
        journal.delete("e2")
        journal.clear_attrs("e1")
        assert journal.attrs() == {}


def test_nothing_is_kept_for_an_entry_that_landed(tmp_path: Path) -> None:
    with Journal(tmp_path / "j") as journal:
        add_entry(journal, "e1", "/", "x.png")
        land(journal, "e1", "img-1")
        journal.set_attrs("e1", {"split": "val"})
        assert journal.attrs() == {}


def test_a_version_2_journal_opens_upgraded_and_keeps_its_entries(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    folder.mkdir(mode=0o700)
    with sqlite3.connect(folder / "journal.db") as db:
        db.executescript(VERSION_2)
    with Journal(folder) as journal:
        assert journal_meta(journal)["version"] == str(VERSION) == "3"
        assert journal.get("old") is not None
        journal.set_attrs("old", {"tags": ["t"]})
    with Journal(folder) as journal:
        assert journal.attrs() == {"old": {"tags": ["t"]}}


def test_a_takeover_brings_the_attributes_along(tmp_path: Path) -> None:
    with Journal(tmp_path / "other") as other:
        add_entry(other, "e1", "/", "x.png")
        other.update("e1", flushed=True)
        other.set_attrs("e1", {"split": "test"})
    with Journal(tmp_path / "mine") as journal:
        assert journal.absorb(tmp_path / "other") == 1
        assert journal.attrs() == {"e1": {"split": "test"}}


def test_a_restart_sets_the_attributes_of_an_upload_that_landed_before_it(
        client, server, dataset, tree_of, tmp_path: Path) -> None:
    """The daemon died after the register was recorded and before split/tags were set: the
    next start sets them on the image (and the entry, done, is forgotten as usual)."""
    image = seed_images(client, dataset.id, "/", ["x.png"])["x.png"][0]
    with Journal(journal_dir(tmp_path / "tree0" / "state", dataset.id),
                 dataset_id=dataset.id) as journal:
        add_entry(journal, "e1", "/", "x.png")
        journal.set_attrs("e1", {"split": "val", "tags": ["late"]})
        land(journal, "e1", image.id)
    tree_of()
    deadline = time.monotonic() + 30
    while True:
        stored = client.images.get(image.id)
        if (stored.split, list(stored.tags)) == ("val", ["late"]):
            break
        assert time.monotonic() < deadline, stored
        time.sleep(0.05)
