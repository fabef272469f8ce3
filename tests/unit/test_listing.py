"""Which names a folder shows, and when a paged listing adds up (filesystem §1, §3)."""

from __future__ import annotations

import threading
import time

import pytest

from pictofs.core.tree.listing import (
    GAP_SLACK,
    PARALLEL_PAGES,
    list_images_consistent,
    unshowable,
    visible_entries,
)
from pictofs.model import Folder, Image, Page


def img(name: str, id_: str, created: str = "2026-01-01T00:00:00Z", folder: str = "/") -> Image:
    return Image(id=id_, dataset_id="d", filename=name, directory_path=folder, created_at=created)


def fold(name: str) -> Folder:
    return Folder(id="f-" + name, dataset_id="d", name=name, full_path="/" + name)


def test_plain_names_show():
    images = {"1": img("a.jpg", "1"), "2": img("b.jpg", "2")}
    shown, folders, hidden = visible_entries("/", images, [fold("cars")])
    assert sorted(shown) == ["a.jpg", "b.jpg"] and list(folders) == ["cars"] and hidden == []


def test_folder_wins_over_image_of_the_same_name():
    shown, folders, hidden = visible_entries("/", {"1": img("cars", "1")}, [fold("cars")])
    assert shown == {} and list(folders) == ["cars"]
    assert [(h.name, h.reason) for h in hidden] == [("cars", "a folder of the same name wins")]


def test_names_over_255_bytes_are_hidden():
    long_name = "é" * 128 + ".jpg"
    shown, folders, hidden = visible_entries("/", {"1": img(long_name, "1")}, [fold("x" * 256)])
    assert shown == {} and folders == {}
    assert len(hidden) == 2


@pytest.mark.parametrize("name", ["", ".", "..", "../../x.png", "sub/x.png", "/abs.png",
                                  "nul\0.png", "lone\ud800.png", "é" * 128 + ".jpg"])
def test_names_the_mount_cannot_show_are_skipped_and_the_rest_shows(name):
    images = {"1": img(name, "1"), "2": img("ok.png", "2")}
    shown, folders, hidden = visible_entries("/", images, [fold(name), fold("cars")])
    assert set(shown) == {"ok.png"} and set(folders) == {"cars"}
    assert [(h.name, h.skipped) for h in hidden] == [(name, True), (name, True)]
    assert unshowable(name) is not None


@pytest.mark.parametrize("name", ["x.png", ".x.png", "...", "new\nline.png", "é.jpg",
                                  "a" * 251 + ".png"])
def test_names_linux_takes_show(name):
    assert unshowable(name) is None


def test_newest_of_two_same_names_wins():
    images = {"old": img("a.jpg", "old", "2026-01-01T00:00:00Z"),
              "new": img("a.jpg", "new", "2026-02-01T00:00:00Z")}
    shown, _, hidden = visible_entries("/", images, [])
    assert shown["a.jpg"].id == "new" and len(hidden) == 1


def test_unicode_spellings_are_two_names():
    nfc, nfd = "\u00e9.jpg", "e\u0301.jpg"
    shown, _, _ = visible_entries("/", {"1": img(nfc, "1"), "2": img(nfd, "2")}, [])
    assert set(shown) == {nfc, nfd}


class ScriptedPages:
    """A page source that answers from a script of (items, total, has_more) per page of each
    listing attempt. A call at offset 0 starts the next attempt; a call at another offset gets
    the page of the current attempt that starts there (pages may be asked in any order and
    from several threads), or an empty last page past the script's end."""

    def __init__(self, script: list[list[tuple[list[Image], int, bool]]],
                 gaps: dict[tuple[int, int], list[Image]] | None = None) -> None:
        self.script = script  # one list of pages per listing attempt
        self.gaps = gaps or {}  # (attempt, offset) → rows answered to a re-read of a gap
        self.gap_calls: list[tuple[int, int]] = []
        self.calls = 0
        self.attempt = -1
        self.lock = threading.Lock()

    def list_images_page(self, dataset_id, folder, *, offset=0, limit=1000,  # type: ignore[no-untyped-def]
                         include_archived=False):
        with self.lock:
            self.calls += 1
            if limit < 1000:  # a gap re-read
                self.gap_calls.append((offset, limit))
                return Page(items=self.gaps.get((self.attempt, offset), []), limit=limit,
                            offset=offset, total=0, has_more=True)
            if offset == 0:
                self.attempt += 1
            start = 0
            pages = self.script[self.attempt]
            for items, total, more in pages:
                if start == offset:
                    return Page(items=items, limit=limit, offset=offset, total=total,
                                has_more=more)
                start += len(items)
            return Page(items=[], limit=limit, offset=offset, total=pages[-1][1],
                        has_more=False)


def test_consistent_listing_is_read_once():
    pages = ScriptedPages([[([img("a.jpg", "1"), img("b.jpg", "2")], 2, False)]])
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert complete and sorted(rows) == ["1", "2"] and pages.calls == 1


def test_total_that_moves_lists_again_once():
    first = [([img("a.jpg", "1")], 2, True), ([img("a.jpg", "1"), img("c.jpg", "3")], 3, False)]
    second = [([img("c.jpg", "3"), img("a.jpg", "1"), img("b.jpg", "2")], 3, False)]
    pages = ScriptedPages([first, second])
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert complete and sorted(rows) == ["1", "2", "3"] and pages.attempt == 1


def test_listing_that_never_adds_up_is_the_union_marked_incomplete():
    skipped_b = [([img("a.jpg", "1")], 3, True), ([img("c.jpg", "3")], 2, False)]
    skipped_c = [([img("a.jpg", "1")], 3, True), ([img("b.jpg", "2")], 2, False)]
    pages = ScriptedPages([skipped_b, skipped_c, skipped_b])
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert not complete and sorted(rows) == ["1", "2", "3"] and pages.attempt == 2


def test_rows_of_other_folders_and_archived_rows_are_filtered():
    rows_in = [img("a.jpg", "1"), img("b.jpg", "2", folder="/sub"),
               Image(id="3", dataset_id="d", filename="c.jpg", is_archived=True)]
    pages = ScriptedPages([[(rows_in, 3, False)]])
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert complete and list(rows) == ["1"]


def test_a_row_skipped_by_a_removal_is_read_again_from_the_gap():
    page1 = ([img("d.jpg", "4"), img("c.jpg", "3")], 4, True)
    page2 = ([img("a.jpg", "1")], 3, False)  # "d" was removed: "b" moved into page 1, unseen
    pages = ScriptedPages([[page1, page2]] * 3, gaps={(a, 0): [img("b.jpg", "2")]
                                                     for a in range(3)})
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert (0, 33) in pages.gap_calls  # the dropped row and GAP_SLACK rows on each side
    assert {"1", "2", "3", "4"} <= set(rows) and not complete


class FolderPages:
    """A folder of ``count`` images answered in pages of ``size``, with or without a total;
    it records the offsets asked and how many calls were in flight at once."""

    def __init__(self, count: int, size: int, with_total: bool, delay: float = 0.0) -> None:
        self.images = [img(f"{i:04d}.jpg", str(i)) for i in range(count)]
        self.size = size
        self.with_total = with_total
        self.delay = delay
        self.offsets: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def list_images_page(self, dataset_id, folder, *, offset=0, limit=1000,  # type: ignore[no-untyped-def]
                         include_archived=False):
        with self.lock:
            self.offsets.append(offset)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        items = self.images[offset:offset + self.size]
        return Page(items=items, limit=limit, offset=offset,
                    total=len(self.images) if self.with_total else None,
                    has_more=offset + len(items) < len(self.images))


def test_once_the_total_is_known_the_other_pages_are_asked_at_once():
    pages = FolderPages(count=1000, size=100, with_total=True, delay=0.05)
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert complete and len(rows) == 1000
    assert sorted(pages.offsets) == list(range(0, 1000, 100))  # each page once
    assert pages.most_in_flight == PARALLEL_PAGES


def test_pages_without_a_total_overlap_and_add_up():
    pages = FolderPages(count=250, size=100, with_total=False)
    rows, complete = list_images_consistent(pages, "d", "/")  # type: ignore[arg-type]
    assert complete and len(rows) == 250
    assert pages.offsets == [0, 100 - GAP_SLACK, 200 - 2 * GAP_SLACK]
    assert pages.most_in_flight == 1  # no total: paged in turn


@pytest.mark.parametrize("data", [
    {"id": "i1", "dataset_id": "d1", "filename": "a.jpg"},  # the least the service sends
    {"id": "i2", "dataset_id": "d1", "filename": "b.png", "directory_path": "/x/y",
     "status": "review", "split": "train", "annotation_count": 3, "min_confidence": 0.5,
     "file_size": 12, "width": 4, "height": 3, "content_type": "image/png",
     "tags": ["a", "b"], "is_archived": True, "image_url": "http://h/i2",
     "thumbnail_url": "http://h/t2", "annotation_url": "http://h/a2",
     "created_at": "2026-12-07T04:20:01.123456Z", "added_later": {"x": 1}},
    {"id": "i3", "dataset_id": "d1", "filename": "c.jpg", "directory_path": None,
     "status": None, "split": None, "annotation_count": None, "file_size": None,
     "tags": None, "content_type": None},  # nulls where a field has a default
])
def test_a_listed_image_is_the_client_image_without_its_urls(data) -> None:
    """``Image.from_listing`` (the mount's listings) builds in one pass what ``from_json``
    builds from the same data without its URLs: same values, whatever is missing or null
    and whatever the service adds."""
    lean = {k: v for k, v in data.items()
            if k not in ("image_url", "thumbnail_url", "annotation_url")}
    assert Image.from_listing(data) == Image.from_json(lean)
    assert Image.from_listing(data).image_url is None


def test_a_listed_image_missing_its_id_is_refused_as_by_from_json() -> None:
    with pytest.raises(TypeError):
        Image.from_listing({"dataset_id": "d1", "filename": "a.jpg"})
