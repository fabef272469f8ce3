"""The memory budget of folder listings: how many listed images a mount keeps at most.

A listing is kept for ``--dir-cache-time`` so that the next ``ls`` or lookup in its folder
asks nothing; but a walk of a large tree (``find`` over an organization of a million images)
would keep every image it passed, some 700 bytes each. ``ListingBudget`` counts what the
listings kept by every dataset view of a mount hold (one per folder plus one per image) and,
past ``--listing-cache-images``, drops the least recently used ones. A dropped folder is
simply listed again on its next use (filesystem §3, "At scale").

Never dropped: a listing in use (``hold``: an open directory handle, a ``readdir`` being
worked out), and the listing used last, so a single folder larger than the whole budget
still lists, and is kept until another folder is used.

What this mount wrote is not in the listings alone: pending files, local-only files and
folders, HEIC written names and recorded mtimes live in the write side and are laid over the
listing at every ``readdir``; an image this mount created is on the service before it is
noted in a listing. Dropping a listing therefore loses nothing a user wrote.

Locks: ``_lock`` guards ``_order``, ``_holds`` and ``_total``. It is never held while
calling a view (a view calls in here outside its own lock, and ``evict`` takes the view's).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pictofs.core.tree.listing import FolderListing

DEFAULT_LISTING_IMAGES = 100_000  # images (and folders) kept in listings across a mount


class Evictable(Protocol):
    """What the budget asks of a view: drop this listing if it still holds it."""

    def evict(self, path: str, listing: FolderListing) -> None: ...


Key = tuple[int, str]  # (id of the view, folder path)


def cost(listing: FolderListing) -> int:
    """What a listing counts for: its folder and each image in it."""
    return 1 + len(listing.images)


class ListingBudget:
    """The listings kept by the views of one mount, least recently used first."""

    def __init__(self, images: int = DEFAULT_LISTING_IMAGES) -> None:
        self.limit = images
        self._lock = threading.Lock()
        # key → (view, listing, its cost when counted); in order of use, oldest first
        self._order: OrderedDict[Key, tuple[Evictable, FolderListing, int]] = OrderedDict()
        self._holds: dict[Key, int] = {}
        self._total = 0
        self.evicted = 0  # listings dropped so far (``pictofs status``)

    def kept(self, view: Evictable, path: str, listing: FolderListing) -> None:
        """``view`` keeps ``listing`` for ``path`` now (the one it held before, if any,
        is replaced); then the oldest listings beyond the budget go."""
        key = (id(view), path)
        size = cost(listing)
        with self._lock:
            old = self._order.pop(key, None)
            if old is not None:
                self._total -= old[2]
            self._order[key] = (view, listing, size)
            self._total += size
            victims = self._over_budget()
        self._drop(victims)

    def used(self, view: Evictable, path: str) -> None:
        """The listing of ``path`` answered again: it is the most recently used."""
        key = (id(view), path)
        with self._lock:
            if key in self._order:
                self._order.move_to_end(key)

    def dropped(self, view: Evictable, paths: list[str]) -> None:
        """``view`` no longer keeps these listings (forgotten, or their folder went)."""
        with self._lock:
            for path in paths:
                old = self._order.pop((id(view), path), None)
                if old is not None:
                    self._total -= old[2]

    def dropped_all(self, view: Evictable) -> None:
        """``view`` dropped every listing (``pictofs refresh``)."""
        with self._lock:
            for key in [k for k in self._order if k[0] == id(view)]:
                self._total -= self._order.pop(key)[2]

    def hold(self, view: Evictable, path: str) -> None:
        """A reader uses the listing of ``path`` (an open directory, a ``readdir``): it is
        not dropped until ``release``."""
        key = (id(view), path)
        with self._lock:
            self._holds[key] = self._holds.get(key, 0) + 1

    def release(self, view: Evictable, path: str) -> None:
        key = (id(view), path)
        with self._lock:
            left = self._holds.get(key, 0) - 1
            if left > 0:
                self._holds[key] = left
            else:
                self._holds.pop(key, None)
            victims = self._over_budget()
        self._drop(victims)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"listings": len(self._order), "listed_images": self._total,
                    "listings_evicted": self.evicted}

    def _over_budget(self) -> list[tuple[Evictable, str, FolderListing]]:
        """The oldest listings to drop (under ``_lock``): never a held one, nor the one
        used last."""
        victims: list[tuple[Evictable, str, FolderListing]] = []
        if self._total <= self.limit:
            return victims
        last = next(reversed(self._order))
        excess = self._total - self.limit
        chosen: list[Key] = []
        for key, (_view, _listing, size) in self._order.items():  # the oldest first
            if excess <= 0 or key == last:
                break
            if key not in self._holds:
                chosen.append(key)
                excess -= size
        for key in chosen:
            view, listing, size = self._order.pop(key)
            self._total -= size
            victims.append((view, key[1], listing))
        self.evicted += len(victims)
        return victims

    @staticmethod
    def _drop(victims: list[tuple[Evictable, str, FolderListing]]) -> None:
        for view, path, listing in victims:
            view.evict(path, listing)
