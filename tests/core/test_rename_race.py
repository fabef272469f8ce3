"""A file renamed while the kernel releases its last handle (filesystem §5 "Local-only
names"): ``rsync`` writes each file under a temp name, closes it and renames it at once. The
kernel answers ``close`` after the flush and sends the release without waiting for it, so the
release of the temp file can run while its rename looks at the header and records the
flush. The release used to close the file's descriptor under that look: the rename failed
with ``EBADF`` and ``rsync`` reported the file as not transferred (a write benchmark met it
one ``rsync`` in three while a profiler slowed the daemon). In-process, against the
session's reference server, with the release made to come at that moment."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from imagegen import png_bytes
from scenarios import WRITE

from .treekit import TreeDriver, build

TEMP = "/.a.png.Xy12Ab"  # rsync's temp name: a local-only name until it is renamed


def open_descriptors_under(folder: Path) -> list[str]:
    """What this process's open descriptors name inside ``folder`` (deleted files too)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(folder)):
            found.append(target)
    return found


def test_a_rename_while_the_last_handle_is_released_keeps_the_file(
        server: Any, dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    [side] = tree.vfs.dataset_trees()
    data = png_bytes(11, (32, 32))
    try:
        fd = fs.open(TEMP, WRITE)
        fs.write(fd, data, 0)
        tree.vfs.flush(fd)  # close(2) returns after the flush; the release comes after
        pending = side.writes.pending_at(TEMP)
        assert pending is not None and pending.fd is not None
        real_pread = os.pread
        released: list[bool] = []

        def pread(descriptor: int, size: int, offset: int) -> bytes:
            if descriptor == pending.fd and not released:  # the rename looks at the header
                released.append(True)
                releasing = threading.Thread(target=tree.vfs.release, args=(fd,))
                releasing.start()  # the kernel's release of the temp file, now
                releasing.join(10)
                assert not releasing.is_alive()
            return real_pread(descriptor, size, offset)

        monkeypatch.setattr(os, "pread", pread)
        fs.rename(TEMP, "/a.png")
        monkeypatch.undo()
        assert released, "the rename did not look at the file's header"
        assert pending.fd is None  # the release's close, done when the rename was through
        fs.sync()
        assert fs.stat("/a.png").size == len(data)
        assert TEMP[1:] not in fs.listdir("/")
        for folder in (side.writes.journal.staging_dir, side.writes.local_dir):
            assert open_descriptors_under(folder) == []  # none left open, none leaked
    finally:
        tree.close(timeout=10)
    assert not fs.bugs, fs.bugs
