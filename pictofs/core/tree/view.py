"""One dataset as a tree of folders and images, with the listing cache (filesystem §1, §3).

``DatasetView`` answers "what is at this path" for one dataset: from a fresh cached listing
when there is one; otherwise for a folder not yet listed with one cheap question (the folders
route for folder names, ``filename=`` for an image name), except where the listing is the
cheaper answer: the folder holds at most one page of images (its ``image_count`` from the
folders route), or this is the ``LOOKUPS_BEFORE_LISTING``-th image name asked in
it (``rsync`` or ``cp -r`` into a folder asks every name). Listings are
kept for ``dir_cache_time``; past it they are refreshed on the next ``readdir``, and while the
service is unreachable a stale listing keeps answering. Negative answers are cached for
``dir_cache_time`` too, and never drawn from a listing that did not add up.

Listing ahead (filesystem §3, "Walking a tree"): a program that lists a folder right after its
previous sibling in name order is walking the tree (``ls -R``, ``find``, ``du``, ``rsync``),
and each listing would cost it a round trip to the service. So the next siblings (those the
parent's listing counts at most one page of images in) are listed in the background, at
most ``LIST_AHEAD`` at a time per dataset; a ``readdir`` of one of them waits for that
listing instead of asking again. Nothing is listed ahead of a folder listed on its own, or
of a parent whose listing is not held (no request is made to find siblings).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from pictofs.core.tree.budget import ListingBudget
from pictofs.core.tree.listing import (PAGE_SIZE, FolderListing, NameNotes, fetch_listing,
                                       showable_folders)
from pictofs.errors import NameTooLong, NotFound, Unavailable
from pictofs.model import Dataset, Folder, Image, join_path, split_path
from pictofs.names import MAX_NAME_BYTES, is_supported, stored_as
from pictofs.remote import Remote

log = logging.getLogger(__name__)

LOOKUPS_BEFORE_LISTING = 4  # image names asked one by one in a folder before listing it
LIST_AHEAD = 8  # sibling folders listed in the background ahead of a walk, at most, at once


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class DirEntry:
    """A folder at ``path`` (``folder`` is None for the root and for folders known only
    by name)."""

    path: str
    folder: Folder | None = None


@dataclass(frozen=True)
class FileEntry:
    path: str
    image: Image


ViewEntry = DirEntry | FileEntry


class WrittenNames:
    """Names written in this mount that the service stored under another name (HEIC
    ``x.heic`` as ``x.png``; the upload journal's ``converted``): (folder, written name) →
    image id. While that image is live under the name the written one became, the folder
    lists it under the written name, and both names resolve to it (filesystem §5 "Names
    the service changes"). Thread-safe: ``_lock`` guards ``_by_name`` and ``_by_image``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[tuple[str, str], str] = {}
        self._by_image: dict[str, tuple[str, str]] = {}
        self.version = 0  # counts the changes: rows worked out before one are not reused

    def remember(self, folder: str, name: str, image_id: str) -> None:
        """One name per image: one it had before (a rename) is forgotten."""
        with self._lock:
            old = self._by_name.get((folder, name))
            if old is not None and self._by_image.get(old) == (folder, name):
                del self._by_image[old]
            before = self._by_image.get(image_id)
            if before is not None and self._by_name.get(before) == image_id:
                del self._by_name[before]
            self._by_name[(folder, name)] = image_id
            self._by_image[image_id] = (folder, name)
            self.version += 1

    def move_folder(self, old: str, new: str) -> None:
        """Folder ``old`` is ``new`` now: so are the names remembered in it and below."""
        with self._lock:
            moved = {key: image_id for key, image_id in self._by_name.items()
                     if key[0] == old or key[0].startswith(old + "/")}
            for (folder, name), image_id in moved.items():
                del self._by_name[(folder, name)]
                key = (new + folder[len(old):], name)
                self._by_name[key] = image_id
                self._by_image[image_id] = key
            self.version += 1

    def image_at(self, folder: str, name: str) -> str | None:
        """The id of the image ``name`` written in ``folder`` became, if remembered."""
        if not self._by_name:
            return None
        with self._lock:
            return self._by_name.get((folder, name))

    def shown_name(self, image: Image) -> str:
        """The name ``image`` is listed under: the name it was written as, when it is
        still where that name was stored; else its own."""
        if not self._by_image:  # nothing remembered (most mounts): no lock per image
            return image.filename
        with self._lock:
            written = self._by_image.get(image.id)
        if written is None:
            return image.filename
        folder, name = written
        if folder == image.directory_path and stored_as(name) == image.filename:
            return name
        return image.filename


@dataclass
class _Lookup:
    """A single-name answer (image, or None for "not there") and when it was asked."""

    image: Image | None
    at: float


@dataclass
class _Children:
    """The subfolders of a folder (from the folders route alone) and when they were asked."""

    folders: dict[str, Folder]
    at: float


Stamp = tuple[int, int, int]  # what rows of a folder were worked out under (``rows_stamp``)
FileRows = list[tuple[str, dict[str, Any], float]]


class DatasetView:
    def __init__(self, remote: Remote, dataset: Dataset, dir_cache_time: float,
                 clock: Callable[[], float] = time.monotonic,
                 budget: ListingBudget | None = None) -> None:
        """``budget``: the mount's bound on the listings kept (shared by its views)."""
        self.remote = remote
        self.budget = budget if budget is not None else ListingBudget()
        self.dataset = dataset
        self.ttl = dir_cache_time
        self.clock = clock
        # _lock guards _listings, _rows, _children, _lookups, _asked, _changes, _ahead, _pool
        # and _mtimes_set.
        self._lock = threading.Lock()
        self._ahead: dict[str, Future[FolderListing]] = {}  # folders being listed ahead
        self._pool: ThreadPoolExecutor | None = None  # made at the first listing ahead
        self._closed = False
        self._listings: dict[str, FolderListing] = {}
        # folder → (its listing, the stamp, the image rows worked out from them): an ``ls``
        # of an unchanged folder reuses them (``kept_rows``)
        self._rows: dict[str, tuple[FolderListing, Stamp, FileRows]] = {}
        self._mtimes_set = 0  # mtimes a writer set on images (``note_mtime``)
        self._children: dict[str, _Children] = {}
        self._lookups: dict[tuple[str, str], _Lookup] = {}
        self._asked: dict[str, int] = {}  # folder → image names asked one by one
        self.names = NameNotes()  # names hidden or skipped: logged once, skipped counted
        # folder → how many changes this mount noted in it: an answer fetched while one was
        # noted may predate it, and is not kept (else it would hide the change for the TTL)
        self._changes: dict[str, int] = {}
        # told the paths this mount changed (``note_*``), outside the lock, so the kernel's
        # cached attributes of them are taken back (``KernelCache.forget_soon``)
        self.on_change: Callable[[list[str]], None] = lambda paths: None
        self.on_folder_gone: Callable[[str], None] = lambda path: None
        # names written here that the service stored under another name (the write side
        # fills it from its journal)
        self.written = WrittenNames()

    @property
    def dataset_id(self) -> str:
        return self.dataset.id

    # ------------------------------------------------------------------ cache control

    def forget(self) -> None:
        """Drop every cached listing and answer (``pictofs refresh``, SIGHUP)."""
        with self._lock:
            self._listings.clear()
            self._rows.clear()
            self._children.clear()
            self._lookups.clear()
            self._asked.clear()
        self.budget.dropped_all(self)

    def evict(self, path: str, listing: FolderListing) -> None:
        """The budget drops ``listing`` (``ListingBudget``): forgotten if it is still the
        one held for ``path``; the folder is listed again on its next use."""
        with self._lock:
            if self._listings.get(path) is listing:
                del self._listings[path]
                self._rows.pop(path, None)

    def hold(self, path: str) -> None:
        """A reader uses the listing of ``path``: the budget keeps it until ``release``."""
        self.budget.hold(self, path)

    def release(self, path: str) -> None:
        self.budget.release(self, path)

    def _fresh(self, at: float) -> bool:
        return self.clock() - at < self.ttl

    def changes_in(self, folder: str) -> int:
        """How many changes this mount noted in ``folder`` so far: an answer worked out while
        this moved may predate a change (see ``_changes``)."""
        with self._lock:
            return self._changes.get(folder, 0)

    def expires_at(self, path: str) -> float:
        """When what this view answers about ``path`` stops being fresh: the earliest time a
        fresh cached answer it may come from was fetched (its folder's listing, subfolders
        or single-name answer; a folder's own listing, which gives its link count), plus
        the TTL. An answer drawn from nothing cached was fetched just now. Asked before the
        answer is worked out, it is never later than the answer's own expiry (a listing
        fetched meanwhile is newer)."""
        now = self.clock()
        parent, name = split_path(path)
        with self._lock:
            listing = self._listings.get(parent)
            children = self._children.get(parent)
            lookup = self._lookups.get((parent, name))
            own = self._listings.get(path)
            own_children = self._children.get(path)
        times = [listing.fetched_at if listing else None, children.at if children else None,
                 lookup.at if lookup else None, own.fetched_at if own else None,
                 own_children.at if own_children else None]
        fresh = [at for at in times if at is not None and now - at < self.ttl]
        return min(fresh, default=now) + self.ttl

    # ---------------------------------------------------------------------- listings

    def listing(self, path: str) -> FolderListing:
        """The folder's full listing: cached if fresh, else from the service (or from the
        listing ahead of a walk, when one is on its way); a stale one while the service is
        unreachable."""
        with self._lock:
            cached = self._listings.get(path)
            running = self._ahead.get(path)
        if cached is not None and self._fresh(cached.fetched_at):
            self.budget.used(self, path)
            self._list_ahead(path)
            return cached
        if running is not None:
            try:
                running.result()
            except Exception as exc:  # asked again below, and answered or raised as usual
                log.debug("listing %s ahead failed: %s", path, exc)
            fetched = self.cached_listing(path)
            if fetched is not None:
                self._list_ahead(path)
                return fetched
        listing = self._fetch(path, cached)
        self._list_ahead(path)
        return listing

    def _fetch(self, path: str, cached: FolderListing | None) -> FolderListing:
        """Ask the service for the folder's listing and keep it, unless this mount changed
        the folder meanwhile; ``cached`` (a stale listing) answers while it is unreachable."""
        with self._lock:
            before = self._changes.get(path, 0)
        for _attempt in range(3):
            try:
                listing, hidden = fetch_listing(self.remote, self.dataset_id, path, self.clock)
            except Unavailable:
                if cached is not None:
                    return cached
                raise
            self.names.note(hidden)
            with self._lock:
                kept = self._changes.get(path, 0) == before
                if kept:
                    self._listings[path] = listing
                    self._rows.pop(path, None)
                    self._children[path] = _Children(listing.folders, listing.fetched_at)
                    self._asked.pop(path, None)
            if kept:
                self.budget.kept(self, path, listing)
                return listing
            with self._lock:
                before = self._changes.get(path, 0)  # noted meanwhile: ask again
        return listing  # changing all along: this answer, kept for no one

    def _list_ahead(self, path: str) -> None:
        """If the previous sibling of ``path`` has a fresh listing (a walk), list the next
        siblings of one page at most in the background, up to ``LIST_AHEAD`` at once."""
        if path == "/":
            return
        parent, name = split_path(path)
        siblings = self.cached_listing(parent)
        if siblings is None or len(siblings.folders) < 3:
            return
        names = siblings.folder_names()
        at = bisect_left(names, name)
        if at == 0 or at == len(names) or names[at] != name:
            return
        previous = self.cached_listing(join_path(parent, names[at - 1]))
        if previous is None:
            return
        for sibling in names[at + 1:at + 1 + LIST_AHEAD]:
            folder = siblings.folders.get(sibling)
            if folder is None or not folder.id or folder.image_count > PAGE_SIZE:
                continue
            if not self._start_ahead(join_path(parent, sibling)):
                return

    def _start_ahead(self, path: str) -> bool:
        """List ``path`` in the background unless it is fresh or on its way; False when
        ``LIST_AHEAD`` are on their way already."""
        with self._lock:
            known = self._listings.get(path)
            if path in self._ahead or (known is not None and self._fresh(known.fetched_at)):
                return True
            if len(self._ahead) >= LIST_AHEAD or self._closed:
                return False
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=LIST_AHEAD,
                                                thread_name_prefix="pictofs-listahead")
            try:  # submitting sends nothing; the task waits for this lock to end
                self._ahead[path] = self._pool.submit(self._run_ahead, path)
            except RuntimeError:  # shut down: the mount is going away
                return False
        return True

    def _run_ahead(self, path: str) -> FolderListing:
        """A listing ahead (in the pool); its error is the waiting reader's to ignore (it
        asks again)."""
        try:
            return self._fetch(path, None)
        finally:
            with self._lock:
                del self._ahead[path]  # its own entry: another is made only once it is gone

    def close(self) -> None:
        """At unmount: listings ahead not started yet are dropped, running ones end."""
        with self._lock:
            pool, self._closed = self._pool, True
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def cached_listing(self, path: str) -> FolderListing | None:
        """The folder's listing if one is held and fresh (no request)."""
        with self._lock:
            cached = self._listings.get(path)
        return cached if cached is not None and self._fresh(cached.fetched_at) else None

    # -------------------------------------------------------------- rows of a folder

    def rows_stamp(self, folder: str) -> Stamp:
        """What the image rows of ``folder`` depend on besides its listing: the changes this
        mount noted in it, the names written as another (``WrittenNames``) and the mtimes set
        on images (``note_mtime``). Rows worked out under one stamp hold while it stays."""
        with self._lock:
            return self._changes.get(folder, 0), self.written.version, self._mtimes_set

    def kept_rows(self, folder: str, listing: FolderListing, stamp: Stamp) -> FileRows | None:
        """The image rows of ``folder`` worked out from ``listing`` under ``stamp``, if
        kept (read-only: shared by every reader)."""
        with self._lock:
            kept = self._rows.get(folder)
        if kept is not None and kept[0] is listing and kept[1] == stamp:
            return kept[2]
        return None

    def keep_rows(self, folder: str, listing: FolderListing, stamp: Stamp,
                  rows: FileRows) -> None:
        """Keep the image rows of ``folder`` worked out from ``listing`` under ``stamp``,
        while that listing is the one held and nothing changed meanwhile; they go with it."""
        with self._lock:
            if self._listings.get(folder) is listing and \
                    stamp == (self._changes.get(folder, 0), self.written.version,
                              self._mtimes_set):
                self._rows[folder] = (listing, stamp, rows)

    def note_mtime(self) -> None:
        """A writer set the mtime of an image (``utimens``): rows worked out before show
        the old one, and are worked out again."""
        with self._lock:
            self._mtimes_set += 1

    # ------------------------------------------------------------------------ lookup

    def resolve(self, path: str) -> ViewEntry:
        """What is at ``path``: a DirEntry or a FileEntry. Raises NotFound, NameTooLong,
        Unavailable. The names are checked from the last up, then the path is walked from
        the root down, one level at a time (a loop: a path may be deeper than Python's
        recursion limit)."""
        steps: list[tuple[str, str]] = []  # (parent, name), the deepest first
        while path != "/":
            parent, name = split_path(path)
            if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes")
            if not _is_utf8(name):
                # Bytes that are not UTF-8 (decoded with surrogateescape) name nothing on
                # the service, and could not even be put in a request.
                raise NotFound(f"{path!r} is not a UTF-8 name")
            steps.append((parent, name))
            path = parent
        entry: ViewEntry = DirEntry("/")
        for parent, name in reversed(steps):
            if not isinstance(entry, DirEntry):
                raise NotFound(f"{parent} is not a folder")
            entry = self._child(parent, name, entry.folder)
        return entry

    def _child(self, parent: str, name: str, parent_folder: Folder | None = None) -> ViewEntry:
        path = join_path(parent, name)
        written_as = self._written_alias(parent, name, parent_folder)
        if written_as is not None:
            return written_as
        listing = self.cached_listing(parent)
        if listing is None and self._list_instead(parent, name, parent_folder):
            listing = self.listing(parent)
        if listing is not None:
            if name in listing.folders:
                return DirEntry(path, listing.folders[name])
            if name in listing.images:
                return FileEntry(path, listing.images[name])
            if listing.complete:
                raise NotFound(path)
        if is_supported(name):
            # an image name: one filename= question, unless the folder's subfolders are
            # already known to include that name (the folder wins)
            known = self._known_subfolders(parent)
            if known is not None and name in known:
                return DirEntry(path, known[name])
            image = self._find_image(parent, name)
            if image is not None:
                return FileEntry(path, image)
        folders = self._subfolders(parent)
        if name in folders:
            return DirEntry(path, folders[name])
        raise NotFound(path)

    def _written_alias(self, parent: str, name: str, parent_folder: Folder | None
                       ) -> FileEntry | None:
        """``name`` written here became an image under another name (``WrittenNames``):
        that image at ``name`` while it is still live where it was stored."""
        image_id = self.written.image_at(parent, name)
        if image_id is None or stored_as(name) == name:
            return None
        try:
            entry = self._child(parent, stored_as(name), parent_folder)
        except NotFound:
            return None
        if isinstance(entry, FileEntry) and entry.image.id == image_id:
            return FileEntry(join_path(parent, name), entry.image)
        return None

    def _list_instead(self, parent: str, name: str, folder: Folder | None) -> bool:
        """Whether to answer an image name in a folder not listed yet from its listing
        rather than with a ``filename=`` question: when the listing is one page (the
        folder's image count from the folders route is at most a page; the root has no such
        count), or when this is the ``LOOKUPS_BEFORE_LISTING``-th name asked in the folder. Names
        answered from the lookup cache or the subfolders, and non-image names (answered by
        the folders route), ask nothing and do not count."""
        if not is_supported(name):
            return False
        with self._lock:
            known = self._lookups.get((parent, name))
        if known is not None and self._fresh(known.at):
            return False
        subfolders = self._known_subfolders(parent)
        if subfolders is not None and name in subfolders:
            return False
        if folder is not None and folder.id and folder.image_count <= PAGE_SIZE:
            return True
        with self._lock:
            asked = self._asked[parent] = self._asked.get(parent, 0) + 1
        return asked >= LOOKUPS_BEFORE_LISTING

    def _known_subfolders(self, parent: str) -> dict[str, Folder] | None:
        with self._lock:
            known = self._children.get(parent)
        return known.folders if known is not None and self._fresh(known.at) else None

    def _subfolders(self, parent: str) -> dict[str, Folder]:
        with self._lock:
            known = self._children.get(parent)
        if known is not None and self._fresh(known.at):
            return known.folders
        with self._lock:
            before = self._changes.get(parent, 0)
        try:
            folders = self.remote.list_folders(self.dataset_id, parent)
        except Unavailable:
            if known is not None:
                return known.folders
            raise
        children, skipped = showable_folders(parent, folders)
        self.names.note(skipped)
        with self._lock:
            if self._changes.get(parent, 0) == before:
                self._children[parent] = _Children(children, self.clock())
        return children

    def _find_image(self, parent: str, name: str) -> Image | None:
        key = (parent, name)
        with self._lock:
            known = self._lookups.get(key)
        if known is not None and self._fresh(known.at):
            return known.image
        with self._lock:
            before = self._changes.get(parent, 0)
        try:
            image = self.remote.find_image(self.dataset_id, parent, name)
        except Unavailable:
            if known is not None:
                return known.image
            raise
        with self._lock:
            if self._changes.get(parent, 0) == before:
                self._lookups[key] = _Lookup(image, self.clock())
        return image

    # ------------------------------------------------------- what this mount changed

    def note_image(self, image: Image) -> None:
        """An image this mount created, moved or restored: show it at once."""
        path = image.path
        parent, name = split_path(path)
        with self._lock:
            self._changes[parent] = self._changes.get(parent, 0) + 1
            listing = self._listings.get(parent)
            if listing is not None:
                listing.images[name] = image
            self._lookups[(parent, name)] = _Lookup(image, self.clock())
        self.on_change([path])

    def note_gone(self, path: str) -> None:
        """An image this mount archived or moved away: hide it at once."""
        parent, name = split_path(path)
        with self._lock:
            self._changes[parent] = self._changes.get(parent, 0) + 1
            listing = self._listings.get(parent)
            if listing is not None:
                listing.images.pop(name, None)
            self._lookups[(parent, name)] = _Lookup(None, self.clock())
        self.on_change([path])

    def note_folder(self, path: str, folder: Folder | None = None, *, new: bool = False
                    ) -> None:
        """A folder this mount created: show it at once. ``new``: nothing was at ``path``
        before (``mkdir`` checked), so the folder is known to be empty and names in it are
        answered without a request for ``dir_cache_time`` (``cp -r`` into it asks nothing
        per file)."""
        parent, name = split_path(path)
        entry = folder or Folder(id="", dataset_id=self.dataset_id, name=name, full_path=path)
        empty = FolderListing(path, fetched_at=self.clock()) if new else None
        with self._lock:
            self._changes[parent] = self._changes.get(parent, 0) + 1
            if empty is not None:
                self._listings[path] = empty
                self._children[path] = _Children({}, empty.fetched_at)
            listing = self._listings.get(parent)
            if listing is not None:
                listing.folders[name] = entry
            children = self._children.get(parent)
            if children is not None:
                children.folders[name] = entry
        if empty is not None:
            self.budget.kept(self, path, empty)
        self.on_change([path, parent])

    def note_folder_gone(self, path: str) -> None:
        """A folder this mount removed or renamed: hide it and forget what was under it."""
        parent, name = split_path(path)
        prefix = path + "/"
        with self._lock:
            self._changes[parent] = self._changes.get(parent, 0) + 1
            listing = self._listings.get(parent)
            if listing is not None:
                listing.folders.pop(name, None)
            children = self._children.get(parent)
            if children is not None:
                children.folders.pop(name, None)
            gone = [k for k in self._listings if k == path or k.startswith(prefix)]
            for key in gone:
                del self._listings[key]
                self._rows.pop(key, None)
            for key in [k for k in self._children if k == path or k.startswith(prefix)]:
                del self._children[key]
            for key in [k for k in self._lookups if k[0] == path or k[0].startswith(prefix)]:
                del self._lookups[key]
        self.budget.dropped(self, gone)
        self.on_folder_gone(path)
        self.on_change([parent])
