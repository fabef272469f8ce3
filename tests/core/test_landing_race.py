"""A file whose upload lands while someone opens it (filesystem §5 "Writing"): the open that
found the staged file just before it landed reads the image's bytes, never ``ENOENT`` and
never empty bytes. The landing shows the image in the file's place before the staging file
goes, so the open that finds no staging file finds the image on a second look. In-process,
against the session's reference server (``tests/fuse/test_load.py`` meets the same race
with 8 writers and 8 readers on a real mount)."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from imagegen import png_bytes
from scenarios import WRITE, errno_of

from pictofs.core.tree.writes import WriteLayer

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


def test_an_image_left_behind_before_its_landing_was_reported_is_not_shown_again(
        server: Any, client: Any, dataset: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file lands, is written over at once (a replace of the image it became is staged)
    and the replace is renamed away, which archives the image left behind, all before the
    worker has reported the landing (it reports a batch's landings after the batch). The
    late report used to list the archived image at its old path again: the load test's
    "the mount lost or invented files". In-process, the report held back until then."""
    real = WriteLayer._registered
    landing, go = threading.Event(), threading.Event()

    def registered(writes: WriteLayer, entry_id: str, image: Any) -> None:
        if image.filename == "c.png" and not landing.is_set():
            landing.set()  # landed; its report waits
            go.wait(10)
        real(writes, entry_id, image)

    monkeypatch.setattr(WriteLayer, "_registered", registered)
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    first, second = png_bytes(31, (32, 32)), png_bytes(32, (40, 40))
    try:
        fs.write_file("/c.png", first)
        assert landing.wait(30)
        assert sorted(fs.listdir("/")) == ["c.png"]  # listed (a reader's ls): kept a while
        fs.write_file("/c.png", second)  # over the landed image: a replace of it
        fs.rename("/c.png", "/d.png")  # the image left behind at /c.png is archived
        go.set()
        fs.sync()
        assert sorted(fs.listdir("/")) == ["d.png"]
        assert errno_of(lambda: fs.stat("/c.png")) == errno.ENOENT
        assert fs.read_file("/d.png") == second
        live = {i.filename: i for i in client.images.list(dataset.id)}
        assert sorted(live) == ["d.png"]
    finally:
        go.set()
        tree.close(timeout=10)
    assert not fs.bugs, fs.bugs
