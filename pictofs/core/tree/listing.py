"""Folder listings: reading a folder consistently from the service, and which names show.

Filesystem §3: a listing is the images route (pages of 1,000, ``directory_path`` exact, rows
re-filtered by exact path, de-duplicated by id) plus the folders route. Offset paging is
newest-first while the service changes, so the count received is compared with the first
page's ``total``; if they differ or the total moved, the folder is listed again once, and a
listing that still does not add up is marked incomplete: no negative answer may be drawn from
it. §1: names over 255 bytes, and images named like a sibling folder (the folder wins), are
hidden and logged once.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from pictofs.model import Folder, Image
from pictofs.names import MAX_NAME_BYTES
from pictofs.remote import Remote

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
ATTEMPTS = 3
GAP_SLACK = 16  # rows re-read on each side of a gap: the folder may move again meanwhile


@dataclass
class FolderListing:
    """What one folder shows: visible images by name, subfolders by name."""

    path: str
    images: dict[str, Image] = field(default_factory=dict)
    folders: dict[str, Folder] = field(default_factory=dict)
    complete: bool = True
    fetched_at: float = 0.0


@dataclass
class Hidden:
    """A name the listing hides, and why (for the one log line)."""

    path: str
    name: str
    reason: str


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
    received: dict[str, Image] = {}
    first_total: int | None = None
    last_total: int | None = None
    moved = False
    offset = 0
    while True:
        page = remote.list_images_page(dataset_id, path, offset=offset, limit=PAGE_SIZE)
        if first_total is None:
            first_total = page.total
        elif page.total != first_total:
            moved = True
        if last_total is not None and page.total < last_total and offset > 0:
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
        offset += len(page.items)
        if not page.has_more or not page.items:
            break
    exact = {i: img for i, img in received.items()
             if img.directory_path == path and not img.is_archived}
    return exact, (not moved and len(received) == first_total)


def visible_entries(path: str, images: dict[str, Image], folders: list[Folder]
                    ) -> tuple[dict[str, Image], dict[str, Folder], list[Hidden]]:
    """Which names a folder shows. Pure: the caller logs what is hidden."""
    hidden: list[Hidden] = []
    shown_folders: dict[str, Folder] = {}
    for folder in folders:
        if len(folder.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            hidden.append(Hidden(path, folder.name, "name longer than 255 bytes"))
        elif folder.name and "/" not in folder.name:
            shown_folders[folder.name] = folder
    shown_images: dict[str, Image] = {}
    for image in sorted(images.values(), key=lambda i: (i.created_at or "", i.id)):
        name = image.filename
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            hidden.append(Hidden(path, name, "name longer than 255 bytes"))
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
