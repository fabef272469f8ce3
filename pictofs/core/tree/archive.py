"""``.archive/`` at a dataset's root: archived images in their folder layout (filesystem §6).

Read-only. When several archived images share a path, the newest is ``x.jpg`` and older ones
are ``x.<first 8 characters of the id>.jpg``. Moving a file out of ``.archive/`` restores the
image (same id, annotations kept); ``unlink`` inside it deletes the image permanently. The
view is built from one listing of the dataset with archived images included, kept for
``dir_cache_time`` like other listings; ``.archive`` is never returned by ``readdir`` of the
root, so ``find``, ``du`` and ``rsync`` never walk into it. An archived image whose name or
folder path the mount cannot show (``listing.unshowable``) is skipped like in a listing.
A real folder the service has under the name ``.archive`` shows as ``.archive~service``, at
the dataset's root and at the top of this view alike (``rootnames``; ``Vfs`` translates the
paths, this view holds the service's).
"""

from __future__ import annotations

import posixpath
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from pictofs.core.tree.listing import PAGE_SIZE, Hidden, NameNotes, unshowable
from pictofs.core.tree.view import DirEntry, FileEntry
from pictofs.errors import NotADirectory, NotFound
from pictofs.model import Image, split_path
from pictofs.remote import Remote

ARCHIVE = "/.archive"


def is_archive_path(path: str) -> bool:
    return path == ARCHIVE or path.startswith(ARCHIVE + "/")


@dataclass
class ArchiveTree:
    """Folder path (inside the archive) → files by shown name, and subfolder names."""

    files: dict[str, dict[str, Image]] = field(default_factory=dict)
    folders: dict[str, set[str]] = field(default_factory=dict)
    at: float = 0.0
    skipped: list[Hidden] = field(default_factory=list)


def archive_names(images: list[Image]) -> dict[str, Image]:
    """Shown names of archived images of one folder: the newest keeps its name, older ones
    get the first 8 characters of their id before the extension. Pure."""
    by_name: dict[str, list[Image]] = {}
    for image in images:
        by_name.setdefault(image.filename, []).append(image)
    shown: dict[str, Image] = {}
    for name, group in by_name.items():
        group.sort(key=lambda i: (i.created_at or "", i.id), reverse=True)
        shown[name] = group[0]
        stem, ext = posixpath.splitext(name)
        for older in group[1:]:
            shown[f"{stem}.{older.id[:8]}{ext}"] = older
    return shown


def _unshowable_path(image: Image) -> str | None:
    """Why an archived image cannot show at its path in ``.archive/``, or None."""
    folder = image.directory_path
    if folder != "/":
        if not folder.startswith("/"):
            return "folder path not absolute"
        for part in folder[1:].split("/"):
            reason = unshowable(part)
            if reason is not None:
                return f"folder {part!r}: {reason}"
    return unshowable(image.filename)


def build_tree(images: list[Image], clock: float) -> ArchiveTree:
    tree = ArchiveTree(at=clock)
    tree.folders["/"] = set()
    per_folder: dict[str, list[Image]] = {}
    for image in images:
        if not image.is_archived:
            continue
        reason = _unshowable_path(image)
        if reason is not None:
            shown_in = ARCHIVE + ("" if image.directory_path == "/" else image.directory_path)
            tree.skipped.append(Hidden(shown_in, image.filename, reason, skipped=True))
            continue
        per_folder.setdefault(image.directory_path, []).append(image)
    for folder, group in per_folder.items():
        tree.files[folder] = archive_names(group)
        path = folder
        while path != "/":
            parent, name = split_path(path)
            tree.folders.setdefault(parent, set()).add(name)
            tree.folders.setdefault(path, set())
            path = parent
    return tree


class ArchiveView:
    def __init__(self, remote: Remote, dataset_id: str, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.remote = remote
        self.dataset_id = dataset_id
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()  # guards _tree
        self._tree: ArchiveTree | None = None
        self.names = NameNotes()  # archived images skipped: logged once, counted

    def forget(self) -> None:
        with self._lock:
            self._tree = None

    def tree(self) -> ArchiveTree:
        with self._lock:
            tree = self._tree
        if tree is not None and self.clock() - tree.at < self.ttl:
            return tree
        images: dict[str, Image] = {}
        offset = 0
        while True:
            page = self.remote.list_images_page(self.dataset_id, None,  # type: ignore[arg-type]
                                                offset=offset, limit=PAGE_SIZE,
                                                include_archived=True)
            for image in page.items:
                images[image.id] = image
            offset += len(page.items)
            if not page.has_more or not page.items:
                break
        tree = build_tree(list(images.values()), self.clock())
        self.names.note(tree.skipped)
        with self._lock:
            self._tree = tree
        return tree

    def resolve(self, path: str) -> DirEntry | FileEntry:
        """``path`` starts with ``/.archive``."""
        inner = path[len(ARCHIVE):] or "/"
        tree = self.tree()
        if inner in tree.folders:
            return DirEntry(path)
        folder, name = split_path(inner)
        image = tree.files.get(folder, {}).get(name)
        if image is None:
            raise NotFound(path)
        return FileEntry(path, image)

    def readdir(self, path: str) -> tuple[list[str], dict[str, Image]]:
        inner = path[len(ARCHIVE):] or "/"
        tree = self.tree()
        if inner not in tree.folders:
            raise NotADirectory(path)
        return sorted(tree.folders[inner]), dict(tree.files.get(inner, {}))

    def dropped(self, image: Image) -> None:
        """An image restored or deleted for good: it leaves the archive view."""
        with self._lock:
            if self._tree is None:
                return
            files = self._tree.files.get(image.directory_path, {})
            for name, held in list(files.items()):
                if held.id == image.id:
                    del files[name]

