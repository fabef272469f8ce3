"""The journal's entries read from their source file (the mirror's uploads without a staging
copy): a journal of the version before them opens upgraded with its entries kept, and an
entry added with ``add_sources`` is resumable at once with what it recorded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from journalkit import journal_meta
from pictofs.core.upload import journal as journal_module
from pictofs.core.upload.journal import Journal, ResumeAction, SourceRow, resume_action

VERSION_1_ENTRIES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id TEXT PRIMARY KEY, folder TEXT NOT NULL, filename TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('staged', 'queued', 'uploading', 'failed', 'done')),
    flushed INTEGER NOT NULL DEFAULT 0, cancelled INTEGER NOT NULL DEFAULT 0, size INTEGER,
    sha256 TEXT, mtime REAL, replaced_id TEXT, url_key TEXT, register_key TEXT,
    step TEXT NOT NULL DEFAULT 'none'
        CHECK (step IN ('none', 'archived', 'url', 'put', 'registered')),
    error TEXT, image_id TEXT, created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE mtimes (image_id TEXT PRIMARY KEY, mtime REAL NOT NULL);
INSERT INTO meta VALUES ('version', '1');
INSERT INTO entries (id, folder, filename, state, flushed, size, created, updated)
    VALUES ('old', '/a', 'x.png', 'queued', 1, 10, 0, 0);
"""


def test_a_version_1_journal_opens_upgraded_with_its_entries(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    folder.mkdir(mode=0o700)
    with sqlite3.connect(folder / "journal.db") as db:
        db.executescript(VERSION_1_ENTRIES)

    with Journal(folder) as journal:
        assert journal_meta(journal)["version"] == str(journal_module.VERSION) == "3"
        entry = journal.get("old")
        assert entry is not None and (entry.folder, entry.size) == ("/a", 10)
        assert entry.source is None and resume_action(entry) is ResumeAction.QUEUE
    with Journal(folder) as journal:  # opened again: nothing left to upgrade
        assert journal.get("old") is not None


def test_an_entry_read_from_its_source_is_resumable_at_once(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal") as journal:
        journal.add_sources([SourceRow("e1", "/", "y.png", None, "/data/y.png", 7, 123,
                                       "ab" * 32)])
    with Journal(tmp_path / "journal") as journal:  # as a restart sees it
        entry = journal.get("e1")
        assert entry is not None
        assert (entry.source, entry.size, entry.source_mtime_ns, entry.sha256) == (
            "/data/y.png", 7, 123, "ab" * 32)
        assert resume_action(entry) is ResumeAction.QUEUE
        assert not (tmp_path / "journal" / "staging" / "e1").exists()
