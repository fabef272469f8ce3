"""Folder listings: reading a folder consistently from the service, and which names show.

Filesystem §3: a listing is the images route (pages of 1,000, ``directory_path`` exact, rows
re-filtered by exact path, de-duplicated by id) plus the folders route. Offset paging is
newest-first while the service changes, so the count received is compared with the first
page's ``total``; if they differ or the total moved, the folder is listed again once, and a
listing that still does not add up is marked incomplete: no negative answer may be drawn from
it. Once the first page gives the total, the other pages are asked ``PARALLEL_PAGES`` at a
time; a folder that moves meanwhile is paged again in turn, which repairs shifted rows. §1: images named like a sibling folder (the folder wins) and older duplicates are hidden;
names that cannot be a name in the mount at all (``unshowable``: over 255 bytes, not one path
segment, not UTF-8) are skipped, and the rest of the folder shows. ``NameNotes`` logs each
hidden or skipped name once and counts the skipped ones (``pictofs status``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from pictofs.model import Folder, Image, Page
from pictofs.names import MAX_NAME_BYTES
from pictofs.remote import Remote

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
ATTEMPTS = 3
GAP_SLACK = 16  # rows re-read on each side of a gap: the folder may move again meanwhile
PARALLEL_PAGES = 4  # pages of one folder asked at once, once the first page gives the total


@dataclass
class FolderListing:
    """What one folder shows: visible images by name, subfolders by name."""

    path: str
    images: dict[str, Image] = field(default_factory=dict)
    folders: dict[str, Folder] = field(default_factory=dict)
    complete: bool = True
    fetched_at: float = 0.0
    # (its size then, the names sorted) of images and of folders, for the readers that walk
    # a folder in name order (read-ahead, listing ahead)
    _sorted_images: tuple[int, list[str]] = field(default=(-1, []), repr=False,
                                                  compare=False)
    _sorted_folders: tuple[int, list[str]] = field(default=(-1, []), repr=False,
                                                   compare=False)

    def image_names(self) -> list[str]:
        """The image names in order, sorted once per listing (a listing gains a name in
        place when this mount creates an image: its size tells)."""
        size, names = self._sorted_images
        if size != len(self.images):
            images = dict(self.images)  # a copy: another thread may add to it
            names = sorted(images)
            self._sorted_images = (len(images), names)  # one assignment: atomic
        return names

    def folder_names(self) -> list[str]:
        """The subfolder names in order, sorted once per listing (as ``image_names``)."""
        size, names = self._sorted_folders
        if size != len(self.folders):
            folders = dict(self.folders)
            names = sorted(folders)
            self._sorted_folders = (len(folders), names)
        return names


@dataclass
class Hidden:
    """A name the listing hides, and why (for the one log line). ``skipped``: the name
    cannot be a name in the mount at all (``unshowable``), not merely shadowed by another."""

    path: str
    name: str
    reason: str
    skipped: bool = False


def unshowable(name: str) -> str | None:
    """Why a name the service sent cannot be an entry of a folder in the mount, or None.

    The kernel takes 1 to 255 bytes without ``/`` or NUL, other than ``.`` and ``..``, and
    fails the whole listing (EIO) on an entry that breaks this; a name that is not UTF-8 (a
    lone surrogate in the JSON) could be neither listed nor looked up. Control characters
    are valid names on Linux and show as stored."""
    if name in ("", ".", ".."):
        return "not a name"
    if "/" in name or "\0" in name:
        return "not one path segment"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


class NameNotes:
    """The names hidden or skipped so far: each logged once (not once per listing), and the
    skipped ones counted. Thread-safe (``_lock`` guards ``_logged`` and ``_skipped``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self._skipped: set[tuple[str, str]] = set()

    def note(self, hidden: list[Hidden]) -> None:
        for item in hidden:
            key = (item.path, item.name)
            with self._lock:
                if key in self._logged:
                    continue
                self._logged.add(key)
                if item.skipped:
                    self._skipped.add(key)
            if item.skipped:
                log.warning("skipped in %s: %r (%s: not a name the mount can show)",
                            item.path, item.name, item.reason)
            else:
                log.warning("hidden in %s: %r (%s)", item.path, item.name, item.reason)

    def skipped(self) -> int:
        """How many distinct names were skipped so far."""
        with self._lock:
            return len(self._skipped)


def showable_folders(path: str, folders: list[Folder]
                     ) -> tuple[dict[str, Folder], list[Hidden]]:
    """The folders route's answer for ``path`` by name, without the names the mount cannot
    show (returned as skipped). Pure."""
    shown: dict[str, Folder] = {}
    skipped: list[Hidden] = []
    for folder in folders:
        reason = unshowable(folder.name)
        if reason is not None:
            skipped.append(Hidden(path, folder.name, reason, skipped=True))
        else:
            shown[folder.name] = folder
    return shown, skipped


def list_images_consistent(remote: Remote, dataset_id: str, path: str
                           ) -> tuple[dict[str, Image], bool]:
    """All non-archived images directly in ``path``, by id, and whether the pages added up.

    Newest-first offset paging skips a row at a page boundary when an image is removed while
    the folder is read. A listing that does not add up is read again, up to ``ATTEMPTS`` times;
    if none adds up, the union of the attempts is returned (marked incomplete): a row seen in
    one attempt and skipped in another still shows, and an image archived meanwhile shows
    until the next listing, which is the lesser harm.
    """
    union: dict[str, Image] = {}
    for attempt in range(ATTEMPTS):
        rows, consistent = _page_through(remote, dataset_id, path)
        if consistent:
            return rows, True
        union.update(rows)
        log.debug("listing of %s changed while paged (attempt %d)", path, attempt + 1)
    return union, False


def _page_through(remote: Remote, dataset_id: str, path: str) -> tuple[dict[str, Image], bool]:
    first = remote.list_images_page(dataset_id, path, offset=0, limit=PAGE_SIZE)
    if first.has_more and first.items and first.total is not None:
        received, consistent = _pages_at_once(remote, dataset_id, path, first)
        if consistent:
            return _exactly_in(path, received), True
        log.debug("listing of %s moved while its pages were read at once; paging in turn",
                  path)
    return _pages_in_turn(remote, dataset_id, path, first)


def _pages_at_once(remote: Remote, dataset_id: str, path: str, first: Page[Image]
                   ) -> tuple[dict[str, Image], bool]:
    """Every page after the first, ``PARALLEL_PAGES`` at a time, once the first page's total
    says how many there are. Consistent only if every page gives the same total, none says
    more follow the last, and the rows add up to it (a folder that changes meanwhile is
    paged in turn instead, which repairs shifts)."""
    assert first.total is not None
    step = len(first.items)
    offsets = range(step, first.total, step)

    def fetch(offset: int) -> Page[Image]:
        return remote.list_images_page(dataset_id, path, offset=offset, limit=PAGE_SIZE)

    with ThreadPoolExecutor(max_workers=PARALLEL_PAGES,
                            thread_name_prefix="pictofs-pages") as pool:
        pages = list(pool.map(fetch, offsets))
    received = {image.id: image for image in first.items}
    moved = False
    for page in pages:
        moved = moved or page.total != first.total
        for image in page.items:
            received[image.id] = image
    if pages and pages[-1].has_more:
        moved = True
    return received, (not moved and len(received) == first.total)


def _pages_in_turn(remote: Remote, dataset_id: str, path: str, first: Page[Image]
                   ) -> tuple[dict[str, Image], bool]:
    received: dict[str, Image] = {}
    first_total = first.total
    last_total: int | None = None
    moved = False
    offset = 0
    page = first
    while True:
        if offset:
            page = remote.list_images_page(dataset_id, path, offset=offset, limit=PAGE_SIZE)
            if page.total != first_total:
                moved = True
        if last_total is not None and page.total is not None and page.total < last_total \
                and offset > 0:
            # Rows removed since the last page shifted the rest left by at most the drop in
            # total (new images go to the front): read that many rows before the boundary
            # again, so none is skipped. Costs a request only when the folder changed.
            drop = last_total - page.total
            gap = remote.list_images_page(dataset_id, path,
                                          offset=max(0, offset - drop - GAP_SLACK),
                                          limit=min(drop + 2 * GAP_SLACK, PAGE_SIZE))
            for image in gap.items:
                received[image.id] = image
        last_total = page.total
        for image in page.items:
            received[image.id] = image
        if not page.has_more or not page.items:
            break
        offset += len(page.items)
        if page.total is None and len(page.items) > GAP_SLACK:
            # No total to notice removals by: the next page starts GAP_SLACK rows early, so
            # up to that many rows removed meanwhile shift no row past the boundary.
            offset -= GAP_SLACK
    exact = _exactly_in(path, received)
    if first_total is None:  # the service gives no total: nothing to check the pages against
        return exact, True
    return exact, (not moved and len(received) == first_total)


def _exactly_in(path: str, received: dict[str, Image]) -> dict[str, Image]:
    return {i: img for i, img in received.items()
            if img.directory_path == path and not img.is_archived}


def visible_entries(path: str, images: dict[str, Image], folders: list[Folder]
                    ) -> tuple[dict[str, Image], dict[str, Folder], list[Hidden]]:
    """Which names a folder shows. Pure: the caller logs what is hidden."""
    shown_folders, hidden = showable_folders(path, folders)
    shown_images: dict[str, Image] = {}
    for image in sorted(images.values(), key=lambda i: (i.created_at or "", i.id)):
        name = image.filename
        reason = unshowable(name)
        if reason is not None:
            hidden.append(Hidden(path, name, reason, skipped=True))
        elif name in shown_folders:
            hidden.append(Hidden(path, name, "a folder of the same name wins"))
        elif name in shown_images:
            hidden.append(Hidden(path, name, f"older duplicate {shown_images[name].id} hidden"))
            shown_images[name] = image  # newest wins (sorted oldest first)
        else:
            shown_images[name] = image
    return shown_images, shown_folders, hidden


def fetch_listing(remote: Remote, dataset_id: str, path: str,
                  clock: Callable[[], float] = time.monotonic
                  ) -> tuple[FolderListing, list[Hidden]]:
    """One folder from the service: ⌈N/1000⌉ image pages plus one folders call, the folders
    call sent alongside the pages (it does not depend on them)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pictofs-folders") as pool:
        asked = pool.submit(remote.list_folders, dataset_id, path)
        images, consistent = list_images_consistent(remote, dataset_id, path)
        folders = asked.result()
    shown_images, shown_folders, hidden = visible_entries(path, images, folders)
    listing = FolderListing(path, shown_images, shown_folders, consistent, clock())
    return listing, hidden
