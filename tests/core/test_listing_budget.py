"""The listings' memory budget (``ListingBudget``, ``--listing-cache-images``; filesystem §3
"At scale"): past it, the least recently used folder listings are dropped and listed again on
their next use; one in use, or the one used last, is kept even when larger than the budget;
and nothing this mount wrote (pending files, local-only files, HEIC written names, mtimes
set) leaves a listing with the listing dropped. In-process against the session server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from imagegen import heic_bytes, png_bytes
from seed import seed_images

from .treekit import TreeDriver, build

pytestmark = pytest.mark.timeout(60)

FOLDERS = ("/a", "/b", "/c", "/d")
IMAGES = ("i0.png", "i1.png", "i2.png")  # a folder of them counts 1 + 3 = 4


@pytest.fixture()
def small_budget(server, client, dataset, tmp_path: Path  # type: ignore[no-untyped-def]
                 ) -> Iterator[tuple[TreeDriver, Any]]:
    """A dataset of four folders of three images, mounted with room for two of them."""
    for folder in FOLDERS:
        seed_images(client, dataset.id, folder, list(IMAGES))
    tree = build(server, dataset, tmp_path / "tree", listing_cache_images="9")
    driver = TreeDriver(tree.vfs)
    yield driver, tree.vfs
    tree.close(timeout=10)
    assert not driver.bugs, f"unexpected exceptions in the core: {driver.bugs!r}"


def cached(vfs: Any, folder: str) -> bool:
    assert vfs._single is not None
    return vfs._single.cached_listing(folder) is not None


def test_the_least_recently_used_listings_go_and_are_listed_again(small_budget):  # type: ignore[no-untyped-def]
    fs, vfs = small_budget
    for folder in FOLDERS:
        assert set(fs.listdir(folder)) == set(IMAGES)
    assert not cached(vfs, "/a") and not cached(vfs, "/b")  # the oldest went
    assert cached(vfs, "/c") and cached(vfs, "/d")
    status = vfs.status()["listing_cache"]
    assert status["listings_evicted"] >= 2 and status["listed_images"] <= 9, status
    assert set(fs.listdir("/a")) == set(IMAGES)  # listed again, whole
    assert cached(vfs, "/a") and not cached(vfs, "/c")
    assert fs.read_file("/b/i1.png") == png_bytes(hash(("/b", "i1.png")) & 0xFFFFFF)


def test_a_folder_larger_than_the_budget_lists_and_is_kept_while_in_use(
        server, client, dataset, tmp_path):  # type: ignore[no-untyped-def]
    names = [f"n{i}.png" for i in range(6)]
    seed_images(client, dataset.id, "/big", names)
    seed_images(client, dataset.id, "/other", ["o.png"])
    tree = build(server, dataset, tmp_path / "tree", listing_cache_images="2")
    try:
        fs, vfs = TreeDriver(tree.vfs), tree.vfs
        release = vfs.hold_dir("/big")  # an open directory handle
        assert set(fs.listdir("/big")) == set(names)
        assert cached(vfs, "/big")  # the one used last, over budget alone
        assert set(fs.listdir("/other")) == {"o.png"}
        assert cached(vfs, "/big")  # still held open: kept
        release()
        assert set(fs.listdir("/other")) == {"o.png"}
        assert set(fs.listdir("/")) == {"big", "other"}
        assert not cached(vfs, "/big")  # let go: the budget drops it
        assert set(fs.listdir("/big")) == set(names)
        assert not fs.bugs
    finally:
        tree.close(timeout=10)


def test_what_this_mount_wrote_stays_listed_when_its_folder_listing_goes(small_budget):  # type: ignore[no-untyped-def]
    fs, vfs = small_budget
    fs.write_file("/a/photo.heic", heic_bytes(3))  # stored as photo.png, listed as written
    fs.write_file("/a/notes.txt", b"kept here")  # not an image: local-only
    fs.sync()
    fs.write_file("/a/i0.png", png_bytes(99))  # a new version, landed below
    fs.sync()
    set_at = 1_600_000_000.0
    vfs.utimens("/a/i1.png", set_at)
    open_fd = fs.open("/a/open.png", os.O_CREAT | os.O_WRONLY)  # pending while open
    fs.write(open_fd, png_bytes(7), 0)
    expected = {*IMAGES, "photo.heic", "notes.txt", "open.png"}
    assert set(fs.listdir("/a")) == expected
    for folder in FOLDERS[1:]:
        fs.listdir(folder)
    assert not cached(vfs, "/a")
    after = fs.listdir("/a")
    assert set(after) == expected
    mtimes = {name: found["st_mtime"] for name, found in vfs.readdir("/a")}
    assert mtimes["i1.png"] == int(set_at * 1_000_000_000)
    assert fs.read_file("/a/i0.png") == png_bytes(99)
    assert fs.read_file("/a/notes.txt") == b"kept here"
    fs.close(open_fd)
    fs.sync()
    for folder in FOLDERS[1:]:
        fs.listdir(folder)
    assert set(fs.listdir("/a")) == expected
