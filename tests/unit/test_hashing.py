"""The one sha256 helper for whole files and whole streams."""

import hashlib
from pathlib import Path

from pictofs.hashing import sha256_chunks, sha256_file


def test_sha256_helper_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_an_open_file_is_hashed_whole_and_left_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5_000
    path.write_bytes(data)
    with open(path, "rb") as handle:
        handle.seek(1234)
        assert sha256_file(handle) == hashlib.sha256(data).hexdigest()
        assert handle.tell() == 1234


def test_chunks_are_hashed_as_one_stream() -> None:
    assert sha256_chunks([b"ab", b"", b"c"]) == hashlib.sha256(b"abc").hexdigest()
    assert sha256_chunks([]) == hashlib.sha256(b"").hexdigest()
