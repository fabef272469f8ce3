"""The sha256 of a whole file or a whole stream of bytes, as lowercase hex: the one place
that loops over blocks for the cache's check, the upload's local checks and adoption, and
the mirror's fingerprints. Callers that hash bytes while they copy or send them keep their
own ``hashlib`` object. Imports nothing from pictofs; no locks.
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Iterable, Iterator, Union

BLOCK = 1 << 20

FileLike = Union[str, "os.PathLike[str]", BinaryIO]


def sha256_file(file: FileLike) -> str:
    """The sha256 of a whole file: a path (opened and closed here), or an open binary file,
    read with ``pread`` from offset 0, so its position is neither used nor moved."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as handle:
            return sha256_chunks(_blocks(handle.fileno()))
    return sha256_chunks(_blocks(file.fileno()))


def sha256_chunks(chunks: Iterable[bytes]) -> str:
    """The sha256 of the concatenation of ``chunks`` (e.g. a download's body)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _blocks(fd: int) -> Iterator[bytes]:
    offset = 0
    while block := os.pread(fd, BLOCK, offset):
        yield block
        offset += len(block)
