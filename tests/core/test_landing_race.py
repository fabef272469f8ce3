"""A file whose upload lands while someone opens it (filesystem §5 "Writing"): the open that
found the staged file just before it landed reads the image's bytes, never ``ENOENT`` and
never empty bytes. The landing shows the image in the file's place before the staging file
goes, so the open that finds no staging file finds the image on a second look. In-process,
against the session's reference server (``tests/fuse/test_load.py`` meets the same race
with 8 writers and 8 readers on a real mount)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from imagegen import png_bytes
from scenarios import WRITE

from .treekit import TreeDriver, build


def test_an_open_that_found_the_staged_file_reads_the_landed_image(
        server: Any, dataset: Any, tmp_path: Path) -> None:
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    data = png_bytes(7, (32, 32))
    try:
        fd = fs.open("/a.png", WRITE)
        fs.write(fd, data, 0)
        node = tree.vfs.resolve("/a.png")  # the lookup: the staged file, its upload to come
        fs.close(fd)
        staging = node.pending.file
        fs.sync()  # it lands: its staging file is gone
        assert not staging.exists()
        fh, _keep = node.open(os.O_RDONLY)  # the open that follows that lookup
        try:
            assert tree.vfs.read(fh, len(data) + 10, 0) == data
        finally:
            tree.vfs.release(fh)
    finally:
        tree.close(timeout=10)
    assert not fs.bugs, fs.bugs


def test_the_staging_file_stays_until_the_image_is_shown_in_its_place(
        server: Any, dataset: Any, tmp_path: Path) -> None:
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    [side] = tree.vfs.dataset_trees()
    view = side.writes.view
    shown: list[tuple[str, bool]] = []
    note_image = view.note_image

    def noting(image: Any) -> None:  # the landing shows the image: its bytes still there
        pending = side.writes.pending_at(image.path)
        shown.append((image.path, pending is not None and pending.file.exists()))
        note_image(image)

    view.note_image = noting
    try:
        for n in range(3):
            fd = fs.open(f"/f{n}.png", WRITE)
            fs.write(fd, png_bytes(n, (16, 16)), 0)
            fs.close(fd)
        fs.sync()
    finally:
        tree.close(timeout=10)
    assert sorted(shown) == [(f"/f{n}.png", True) for n in range(3)]
    assert not fs.bugs, fs.bugs
