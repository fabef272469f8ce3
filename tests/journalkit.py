"""Helpers for tests that set up or look into an upload journal directly: one entry at a
time, one staging file, and the ``meta`` table read through a connection of the test's own
(the product only ever writes rows in batches and never reads ``meta`` back).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pictofs.core.upload.journal import Entry, Journal


def add_entry(journal: Journal, entry_id: str, folder: str, filename: str,
              replaced_id: str | None = None) -> Entry:
    """A new ``staged`` entry (``Journal.add_many`` of one row), as it is now."""
    journal.add_many([(entry_id, folder, filename, replaced_id)])
    entry = journal.get(entry_id)
    assert entry is not None
    return entry


def create_staging_file(journal: Journal, entry_id: str) -> Path:
    """An empty 0600 staging file, durable in its folder."""
    journal.create_staging_files([entry_id])
    return journal.staging_path(entry_id)


def journal_meta(journal: Journal) -> dict[str, str]:
    """The journal's ``meta`` table (version and identity), read-only."""
    database = journal.directory / "journal.db"
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()
