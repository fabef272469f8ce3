"""A pending file's sha256 (what a flush records and the upload checks after a crash of the
machine) is the sha256 of its bytes as they are, whatever order the writes came in: taken
from the writes themselves when they came in order, else read from the file."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from pictofs.core.tree.pending import Pending


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("writes", [
    "in order", "in order, twice over", "reversed", "random", "with a gap filled later",
    "truncated to 0 and rewritten", "cut shorter", "extended by truncate", "appended after"])
def test_the_sha256_is_that_of_the_bytes_on_disk(tmp_path: Path, writes: str) -> None:
    rng = random.Random(writes)
    data = rng.randbytes(300_000)
    chunks = [(offset, data[offset:offset + 65_536]) for offset in range(0, len(data), 65_536)]
    (tmp_path / "staged").touch()  # a staged file's staging file is made by its create
    pending = Pending("/a.jpg", tmp_path / "staged", "entry", mtime=0.0)
    try:
        if writes == "reversed":
            chunks.reverse()
        elif writes == "random":
            rng.shuffle(chunks)
        elif writes == "with a gap filled later":
            chunks = chunks[:2] + chunks[3:] + chunks[2:3]
        elif writes == "in order, twice over":
            chunks = chunks + chunks
        for offset, chunk in chunks:
            pending.pwrite(chunk, offset)
        if writes == "truncated to 0 and rewritten":
            pending.truncate(0)
            pending.pwrite(b"new bytes", 0)
        elif writes == "cut shorter":
            pending.truncate(100_000)
        elif writes == "extended by truncate":
            pending.truncate(400_000)
        elif writes == "appended after":
            pending.pwrite(b"tail", pending.size)
        assert pending.sha256() == file_sha(pending.file)
    finally:
        pending.close_descriptor()


def test_writes_in_order_are_hashed_without_reading_the_file(tmp_path: Path) -> None:
    (tmp_path / "staged").touch()  # a staged file's staging file is made by its create
    pending = Pending("/a.jpg", tmp_path / "staged", "entry", mtime=0.0)
    try:
        pending.pwrite(b"abc", 0)
        pending.pwrite(b"def", 3)
        expected = hashlib.sha256(b"abcdef").hexdigest()
        pending.file.write_bytes(b"XXXXXX")  # not read: the digest came from the writes
        assert pending.sha256() == expected
    finally:
        pending.close_descriptor()


def test_the_descriptor_stays_while_a_handle_is_open(tmp_path: Path) -> None:
    """The last release closes a waiting file's descriptor (thousands may wait), but only
    when no handle is open: an open counted in between keeps it, so a handle never finds
    its descriptor closed under it (its number reused by another file). At unmount it is
    closed whatever is open."""
    (tmp_path / "staged").touch()
    pending = Pending("/a.jpg", tmp_path / "staged", "entry", mtime=0.0)
    pending.add_open()  # a writer's handle
    fd = pending.descriptor()
    pending.add_open()  # another open, counted before the first handle's release ends
    assert pending.drop_open() == 1
    pending.close_descriptor()  # what the release of the last handle would do: not now
    assert pending.descriptor() == fd
    assert pending.pwrite(b"bytes", 0) == 5
    assert pending.drop_open() == 0
    pending.close_descriptor()
    assert pending.fd is None
    pending.add_open()
    pending.descriptor()
    pending.close_descriptor(force=True)  # the unmount
    assert pending.fd is None
    assert (tmp_path / "staged").read_bytes() == b"bytes"
