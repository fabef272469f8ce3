"""Listing ahead of a walk (``DatasetView``, filesystem §3 "Walking a tree"): the folders after
one listed right after its previous sibling are listed in the background, one page at most
each, ``LIST_AHEAD`` at a time; a listing on its way is waited for, not asked again."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from pictofs.core.tree.view import LIST_AHEAD, DatasetView
from pictofs.model import Image, Page
from tests.core.test_view import Service, view_of

pytestmark = pytest.mark.timeout(60)


class WalkedService(Service):
    """Counts image pages per folder; ``hold`` keeps the pages of a folder back until set."""

    def __init__(self, folders: dict[str, int]) -> None:
        super().__init__(folders)
        self.pages: Counter[str] = Counter()
        self.hold: dict[str, threading.Event] = {}
        self._count_lock = threading.Lock()

    def list_images_page(self, dataset_id: str, folder: str, *, offset: int = 0,
                         limit: int = 1000, include_archived: bool = False) -> Page[Image]:
        gate = self.hold.get(folder)
        if gate is not None:
            assert gate.wait(30)
        with self._count_lock:
            self.pages[folder] += 1
        return super().list_images_page(dataset_id, folder, offset=offset, limit=limit,
                                        include_archived=include_archived)


WALKED = 2 + 2 * LIST_AHEAD  # two listed, then as many as one window slides over


def tree(count: int = WALKED) -> WalkedService:
    return WalkedService({"/": 0, **{f"/d{i:02d}": 2 for i in range(count)}})


def listed(view: DatasetView, *paths: str) -> bool:
    """Wait until every path has a fresh listing."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(view.cached_listing(p) is not None for p in paths):
            return True
        time.sleep(0.01)
    return False


def test_a_walk_lists_the_next_siblings_ahead_and_reads_them_without_asking():
    service = tree()
    view = view_of(service)
    view.listing("/")
    view.listing("/d00")  # the first subfolder alone: nothing ahead yet
    assert set(service.pages) == {"/", "/d00"}
    view.listing("/d01")  # right after its previous sibling: a walk
    ahead = [f"/d{i:02d}" for i in range(2, 2 + LIST_AHEAD)]
    assert listed(view, *ahead)
    assert view.cached_listing(f"/d{2 + LIST_AHEAD:02d}") is None
    asked = sum(service.pages.values())
    assert all(view.listing(p).images.keys() == {"img0.png", "img1.png"} for p in ahead)
    assert listed(view, *(f"/d{i:02d}" for i in range(2, WALKED)))  # the window slid along
    assert all(service.pages[f"/d{i:02d}"] == 1 for i in range(WALKED))  # each asked once
    assert sum(service.pages.values()) == asked + WALKED - 2 - LIST_AHEAD
    view.close()


def test_a_folder_listed_on_its_own_lists_nothing_ahead():
    service = tree()
    view = view_of(service)
    view.listing("/")
    view.listing("/d05")
    view.listing("/d03")  # its previous sibling, /d02, was not listed
    time.sleep(0.1)
    assert set(service.pages) == {"/", "/d05", "/d03"}
    view.close()


def test_folders_of_more_than_one_page_are_not_listed_ahead():
    service = WalkedService({"/": 0, "/a": 1, "/b": 1, "/c": 1001, "/d": 1})
    view = view_of(service)
    view.listing("/")
    view.listing("/a")
    view.listing("/b")
    assert listed(view, "/d")
    assert "/c" not in service.pages
    view.close()


def test_a_listing_on_its_way_is_waited_for_not_asked_again():
    service = tree()
    service.hold["/d02"] = threading.Event()
    view = view_of(service)
    view.listing("/")
    view.listing("/d00")
    view.listing("/d01")  # /d02 is listed ahead, and held back
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(view.listing("/d02")))
    reader.start()
    time.sleep(0.1)
    assert not got  # the reader waits for the listing ahead
    service.hold["/d02"].set()
    reader.join(10)
    assert got and got[0] is view.cached_listing("/d02")
    assert service.pages["/d02"] == 1
    view.close()
