"""The mirror's state database, opened by the journal's helpers: WAL with
``synchronous=NORMAL``, 0600, one of an unknown version refused and kept as it is."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from pictofs.errors import ConfigError
from pictofs.mirror.plan import Row
from pictofs.mirror.state import MirrorState, Identity

IDENTITY = Identity("/home/u/photos", "http://service", "ds1", "/photos", False)


def test_rows_survive_a_reopen_and_the_database_is_private(tmp_path: Path) -> None:
    state = MirrorState.open(tmp_path, IDENTITY)
    state.put(Row("a.jpg", 10, 5, "ab" * 32, "img1", "/photos", "a.jpg"))
    database = state.directory / "mirror.db"
    with state._lock:
        assert state._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert state._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    state.close()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.directory.stat().st_mode) == 0o700
    again = MirrorState.open(tmp_path, IDENTITY)
    assert again.row("a.jpg") == Row("a.jpg", 10, 5, "ab" * 32, "img1", "/photos", "a.jpg")
    again.close()


def test_a_state_of_an_unknown_version_is_refused_kept_and_unlocked(tmp_path: Path) -> None:
    state = MirrorState.open(tmp_path, IDENTITY)
    database = state.directory / "mirror.db"
    state.close()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE meta SET value = '7' WHERE key = 'version'")
    db.close()
    before = database.read_bytes()
    for _ in range(2):  # the lock was let go: the second try gets the same answer
        with pytest.raises(ConfigError, match="version 7 is unknown"):
            MirrorState.open(tmp_path, IDENTITY)
    assert database.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "mirror" / IDENTITY.digest()
    folder.mkdir(parents=True)
    (folder / "mirror.db").write_bytes(b"not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a readable"):
        MirrorState.open(tmp_path, IDENTITY)
    assert (folder / "mirror.db").read_bytes() == b"not sqlite" * 100
