"""The local side of the mirror: walking the mirrored folder, hashing files, and copying a
file into an upload entry's staging file as one consistent snapshot.

``scan`` walks the whole tree (``os.scandir``, one ``lstat`` per entry, symlinks never
followed) or only some paths (``scan_paths``, after a burst of events), and sorts every entry
with the pure ``plan.classify``. ``fingerprint`` hashes a file and checks that its size and
mtime did not move meanwhile (a file still being written is not uploaded); ``snapshot`` does
the same while copying it into a staging file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from pictofs.mirror.plan import LocalFile, Destination, Verdict, classify, ignored_folder

CHUNK = 1 << 20


@dataclass
class Scan:
    """Files to mirror by relative path, and the entries left out with the reason."""

    files: dict[str, LocalFile] = field(default_factory=dict)
    left_out: dict[str, tuple[Verdict, str, int, int]] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)  # asked for, not there (scan_paths)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def add(self, rel: str, info: os.stat_result, target: Destination) -> None:
        is_link = stat.S_ISLNK(info.st_mode)
        verdict, reason = classify(rel, is_symlink=is_link, is_file=stat.S_ISREG(info.st_mode),
                                   size=info.st_size, target=target)
        if verdict is Verdict.CANDIDATE:
            self.files[rel] = LocalFile(rel, info.st_size, info.st_mtime_ns)
        elif verdict is not Verdict.IGNORED:
            self.left_out[rel] = (verdict, reason, info.st_size, info.st_mtime_ns)


def scan(root: Path, target: Destination) -> Scan:
    """Every entry under ``root``."""
    result = Scan()
    for rel, info in _walk(str(root), ""):
        result.add(rel, info, target)
    return result


def scan_paths(root: Path, target: Destination, files: Iterable[str],
               folders: Iterable[str] = ()) -> Scan:
    """Only ``files`` (absent ones are listed in ``absent``) and everything under
    ``folders``."""
    result = Scan()
    base = str(root)
    for rel in files:
        try:
            info = os.lstat(os.path.join(base, rel))
        except (FileNotFoundError, NotADirectoryError):
            result.absent.add(rel)
            continue
        if stat.S_ISDIR(info.st_mode):
            folders = [*folders, rel]
            continue
        result.add(rel, info, target)
    for folder in folders:
        if ignored_folder(folder):
            continue
        for rel, info in _walk(os.path.join(base, folder), folder + "/"):
            result.add(rel, info, target)
    return result


def _walk(path: str, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every file-like entry below ``path``; local-only folders
    and symlinked folders are not entered (a symlink is reported as an entry)."""
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for entry in entries:
        rel = prefix + entry.name
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            if not ignored_folder(rel):
                yield from _walk(entry.path, rel + "/")
        else:
            yield rel, info


class Changed(Exception):
    """The file is not what was planned, or changed while it was read."""


def fingerprint(source: Path, expected: LocalFile) -> LocalFile:
    """``expected`` with its sha256, read from ``source``: one consistent state of the file,
    the one planned (same size and mtime), else Changed."""
    return _read(source, expected, None)


def snapshot(source: Path, expected: LocalFile, dest: Path) -> LocalFile:
    """``fingerprint``, copying the bytes into ``dest`` (an existing staging file) as they
    are read: the copy is the state of the file that was hashed."""
    with open(dest, "wb") as out:
        return _read(source, expected, out)


def _read(source: Path, expected: LocalFile, out: BinaryIO | None) -> LocalFile:
    digest = hashlib.sha256()
    try:
        handle = open(source, "rb")
    except FileNotFoundError:
        raise Changed(f"{expected.rel} is gone") from None
    with handle:
        before = os.fstat(handle.fileno())
        if (before.st_size, before.st_mtime_ns) != (expected.size, expected.mtime_ns):
            raise Changed(f"{expected.rel} changed since it was looked at")
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
        after = os.fstat(handle.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise Changed(f"{expected.rel} changed while it was read")
    return LocalFile(expected.rel, expected.size, expected.mtime_ns, digest.hexdigest())
