"""The rows of a folder kept with its listing (``DatasetFolder.readdir``, filesystem §3 "At
scale"): a second ``ls`` of an unchanged folder reuses the image rows worked out by the
first, and any change this mount makes in the folder (an mtime set, a new file landing
under another name, an image renamed to a local name, removed, or a new version) shows at
the next ``ls``. In-process against the session server."""

from __future__ import annotations

import os
from typing import Any

import pytest
from imagegen import heic_bytes, png_bytes
from seed import seed_images

pytestmark = pytest.mark.timeout(60)

IMAGES = ["i0.png", "i1.png", "i2.png", "i3.png"]


def rows_of(vfs: Any, folder: str) -> dict[str, dict[str, Any]]:
    return {name: found for name, found, _valid in vfs.readdir_with_validity(folder)}


def test_an_unchanged_folder_reuses_its_rows_and_every_change_shows(
        client, dataset, tree_of):  # type: ignore[no-untyped-def]
    seed_images(client, dataset.id, "/a", IMAGES)
    fs, vfs = tree_of()
    first = rows_of(vfs, "/a")
    again = rows_of(vfs, "/a")
    assert set(again) == set(IMAGES)
    assert all(again[name] is first[name] for name in IMAGES)  # worked out once

    set_at = 1_500_000_000.0
    vfs.utimens("/a/i1.png", set_at)
    assert rows_of(vfs, "/a")["i1.png"]["st_mtime"] == int(set_at * 1_000_000_000)

    fs.write_file("/a/photo.heic", heic_bytes(5))  # stored as photo.png
    fd = fs.open("/a/open.png", os.O_CREAT | os.O_WRONLY)  # pending while open
    fs.write(fd, png_bytes(8), 0)
    assert set(rows_of(vfs, "/a")) == {*IMAGES, "photo.heic", "open.png"}
    fs.close(fd)
    fs.sync()
    assert set(rows_of(vfs, "/a")) == {*IMAGES, "photo.heic", "open.png"}

    fs.rename("/a/i2.png", "/a/i2.png.part")  # a local name: the image hidden meanwhile
    fs.unlink("/a/i0.png")
    rows = rows_of(vfs, "/a")
    assert set(rows) == {"i1.png", "i3.png", "i2.png.part", "photo.heic", "open.png"}

    fs.write_file("/a/i3.png", png_bytes(77) * 3)  # a new version, larger
    fs.sync()
    assert rows_of(vfs, "/a")["i3.png"]["st_size"] == len(png_bytes(77) * 3)
    assert rows_of(vfs, "/a")["i1.png"]["st_mtime"] == int(set_at * 1_000_000_000)
