"""What one path of a mount is: a node that answers the verbs of that kind of thing.

``Vfs.resolve`` turns a path into one node, and a verb of a path is then one call on it:
the node, not a switch on the kind of entry, knows how a folder of the service, a folder
known only here, an image, a file not uploaded yet, or something in ``.archive/``
answers ``attrs``, ``readdir``, ``open``, the extended attributes and ``truncate``. A node
is made for one call and not kept: it holds what the resolution found (the entry, the
dataset it belongs to) and the tree (``Tree``, which ``Vfs`` is) for what the whole mount
shares (the options, the stat cache, the handle table, whether the service is reachable).

Every verb that changes something goes through the dataset's ``writes`` (a ``WriteLayer``,
or ``ReadOnlyWrites`` on a read-only mount, which refuses with ``ReadOnly``), so no node
asks whether the mount is writable.

Nodes take no lock of their own; what they touch locks itself (``Vfs._lock`` for the
handle table, the view's and the write layer's locks for theirs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Protocol

from pictofs.core.tree import attrs, rootnames
from pictofs.core.tree.archive import ARCHIVE
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.view import DatasetView, DirEntry, FileEntry, FileRows, Stamp
from pictofs.errors import (AlreadyExists, InvalidArgument, IsADirectory, NoAttribute,
                            NotADirectory, NotPermitted, ReadOnly, Unavailable, Unsupported,
                            ValueTooLarge)
from pictofs.model import Image, join_path, parse_timestamp

if TYPE_CHECKING:
    from pictofs.core.tree.attrs import AttrPolicy
    from pictofs.core.tree.dataset import DatasetTree
    from pictofs.core.tree.listing import FolderListing
    from pictofs.remote import Remote

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND

Rows = list[tuple[str, dict[str, Any], float]]  # (name, attributes, valid until)


def field_to_set(path: str, name: str) -> str | None:
    """The writable field (``split``, ``tags``) an attribute being set names; None for one
    pictofs derives (accepted and ignored, whatever the value: a copy brings the old
    image's); ``not_kept`` for any other."""
    if name in attrs.DERIVED_XATTRS:
        log.debug("%s: %s is derived; setting it changes nothing", path, name)
        return None
    field_name = attrs.writable_field(name)
    if field_name is None:
        raise not_kept(name)
    return field_name


def not_kept(name: str) -> Unsupported:
    """Setting an attribute the service has no place for (``user.xdg.origin.url`` of a
    download, ...): ENOTSUP, which ``cp -a`` and ``mv`` pass over in silence."""
    return Unsupported(f"{name}: only user.pictograph.split and .tags can be set here")


class Tree(Protocol):
    """What a node needs of the whole mount (``Vfs`` is one)."""

    remote: Remote
    options: Any  # VfsOptions: policy, dir_cache_time
    mounted_at: float
    is_organization: bool

    def is_online(self) -> bool: ...
    def resolve(self, path: str) -> Node: ...
    def dataset_names(self) -> dict[str, Any]: ...
    def image_attrs(self, dataset: DatasetTree, image: Image) -> dict[str, Any]: ...
    def read_only_policy(self) -> AttrPolicy: ...
    def add_handle(self, path: str, dataset: DatasetTree, image: Image | None = None,
                   reader: Any = None, pending: Pending | None = None) -> int: ...
    def opened_image(self, path: str, image: Image) -> bool: ...


class Node:
    """The verbs every node answers; a kind of node overrides what it does otherwise.
    ``path`` is the path in the mount, ``inner`` the path inside its dataset."""

    is_dir = False

    def __init__(self, tree: Tree, dataset: DatasetTree | None, path: str, inner: str) -> None:
        self.tree = tree
        self.dataset = dataset
        self.path = path
        self.inner = inner

    def attrs(self) -> dict[str, Any]:
        raise NotImplementedError

    def valid_until(self, expires: float) -> float:
        """Until when (``Vfs.clock``) an answer about this node may be kept by whoever
        caches it, given that its source is fresh until ``expires``; 0.0: it may change at
        any moment behind the cache's back (this mount's own files, the archive, the
        organization's top levels)."""
        return 0.0

    def readdir(self) -> Rows:
        raise NotADirectory(self.path)

    def open(self, flags: int) -> tuple[int, bool]:
        raise IsADirectory(self.path)

    def truncate(self, length: int) -> None:
        raise IsADirectory(self.path)

    def set_mtime(self, when: float) -> None:
        """Folders keep their creation time."""

    def listxattr(self) -> list[str]:
        return []

    def getxattr(self, name: str) -> bytes:
        raise NoAttribute(name)

    def setxattr(self, name: str, value: bytes) -> None:
        raise not_kept(name)

    def removexattr(self, name: str) -> None:
        raise NoAttribute(name)

    # in .archive/ only: the folders there answer these; an archived image overrides them
    def delete_for_good(self) -> None:
        raise IsADirectory(self.inner)

    def restore(self, new: str, flags: int) -> None:
        raise NotPermitted("folders of the archive cannot be moved")


# ---------------------------------------------------------------------------- folders


class OrganizationRoot(Node):
    """The top of an organization mount: one folder per dataset."""

    is_dir = True

    def attrs(self) -> dict[str, Any]:
        return attrs.dir_stat(self.tree.options.policy, len(self.tree.dataset_names()),
                              self.tree.mounted_at)

    def readdir(self) -> Rows:
        """One folder per dataset, from the datasets' listing alone: listing the top of an
        organization sets none of them up (no cache, journal or upload workers)."""
        return [(name, DatasetFolder.attrs_of(self.tree, view, DirEntry("/")), 0.0)
                for name, view in sorted(self.tree.dataset_names().items())]


class DatasetFolder(Node):
    """A folder of a dataset: of the service, the dataset's root, or a folder known only
    to this mount (``mkdir`` of a local-only name, or not created on the service yet)."""

    is_dir = True

    def __init__(self, tree: Tree, dataset: DatasetTree, path: str, entry: DirEntry) -> None:
        super().__init__(tree, dataset, path, entry.path)
        self.entry = entry
        self.side: DatasetTree = dataset

    @staticmethod
    def attrs_of(tree: Tree, view: DatasetView, entry: DirEntry) -> dict[str, Any]:
        """A folder's attributes: its subfolders from the listing held (no request), its
        time the folder's (the dataset's for its root)."""
        listing = view.cached_listing(entry.path)
        subfolders = len(listing.folders) if listing else 0
        created = entry.folder.created_at if entry.folder else None
        if entry.path == "/":
            created = view.dataset.created_at
        mtime = parse_timestamp(created) or tree.mounted_at
        return attrs.dir_stat(tree.options.policy, subfolders, mtime)

    def attrs(self) -> dict[str, Any]:
        return self.attrs_of(self.tree, self.side.view, self.entry)

    def valid_until(self, expires: float) -> float:
        local = self.entry.folder is None and self.inner != "/"
        dataset_folder = self.inner == "/" and self.tree.is_organization
        return 0.0 if local or dataset_folder else expires

    def readdir(self) -> Rows:
        """Names with their attributes from one listing (no per-entry request), with the
        pending files and local folders of this mount laid over it. Rows from a listing
        still kept, with no change noted while they were worked out, are valid while it
        stays fresh; the others may change at any moment.

        The image rows of a listing are worked out once and kept with it (``kept_rows``)
        while nothing they show changes (``rows_stamp``: the changes noted in the folder,
        the names written as another, the mtimes set): a second ``ls`` of a folder of
        100,000 reuses them. Subfolders, local folders and pending files are laid over
        them at every ``readdir``."""
        writes, view, folder = self.side.writes, self.side.view, self.inner
        # the pending files before the listing: one that lands while the listing is fetched
        # is then in one of the two, never in neither
        pendings = writes.pending_in(folder)
        stamp = view.rows_stamp(folder)
        view.hold(folder)  # the budget keeps the listing while the rows are worked out
        try:
            listing = None if writes.is_local_dir(folder) else view.listing(folder)
            files = self._image_rows(listing, stamp) if listing is not None else []
            others = self._other_rows(listing, pendings)
            kept = listing is not None and view.cached_listing(folder) is listing \
                and view.rows_stamp(folder) == stamp
        finally:
            view.release(folder)
        if not kept:  # the listing went, or changed, while the rows were worked out
            files = [(name, found, 0.0) for name, found, _valid in files]
            others = {name: (found, 0.0) for name, (found, _valid) in others.items()}
        return merged(files, others)

    def _image_rows(self, listing: FolderListing, stamp: Stamp) -> FileRows:
        """The rows of the listing's images (in mount names, sorted): kept ones if they
        were worked out from this listing under this stamp, else worked out and kept."""
        side, folder, tree = self.side, self.inner, self.tree
        writes, view = side.writes, side.view
        kept = view.kept_rows(folder, listing, stamp)
        if kept is not None:
            return kept
        fetched_until = listing.fetched_at + tree.options.dir_cache_time
        rows: dict[str, tuple[dict[str, Any], float]] = {}
        hidden, mtimes = writes.hidden_in(folder), writes.image_mtimes()  # once, not per image
        # a copy (one C call, atomic under the GIL): the cached listing is updated in place
        # by this mount's changes while we iterate
        for name, image in list(listing.images.items()):
            if name not in hidden:
                shown = view.written.shown_name(image)  # x.heic for its x.png
                rows[name if shown == image.filename else shown] = (
                    tree.image_attrs(side, image, mtimes), fetched_until)
        if folder == "/":  # the service's .archive is .archive~service here (rootnames)
            rows = {rootnames.name_to_mount(name): row for name, row in rows.items()}
        result = [(name, *rows[name]) for name in sorted(rows)]
        view.keep_rows(folder, listing, stamp, result)
        return result

    def _other_rows(self, listing: FolderListing | None, pendings: dict[str, Pending]
                    ) -> dict[str, tuple[dict[str, Any], float]]:
        """The rows of the subfolders, local folders and pending files (in mount names),
        each taking the place of an image row of the same name."""
        side, folder, tree = self.side, self.inner, self.tree
        writes, view = side.writes, side.view
        rows: dict[str, tuple[dict[str, Any], float]] = {}
        if listing is not None:
            fetched_until = listing.fetched_at + tree.options.dir_cache_time
            for name, sub in list(listing.folders.items()):
                child = join_path(folder, name)
                found = DatasetFolder.attrs_of(tree, view, DirEntry(child, sub))
                rows[name] = (found, min(fetched_until, view.expires_at(child)))
        for name in writes.local_dirs_in(folder):
            child = join_path(folder, name)
            rows[name] = (DatasetFolder.attrs_of(tree, view, DirEntry(child)), 0.0)
        for name, pending in pendings.items():
            rows[name] = (PendingFile.stat_of(tree, pending), 0.0)
        if folder == "/":
            rows = {rootnames.name_to_mount(name): row for name, row in rows.items()}
        return rows


FEW_OTHERS = 64  # rows laid over the image rows one by one (more: merged by sorting)


def merged(files: FileRows, others: dict[str, tuple[dict[str, Any], float]]) -> Rows:
    """The sorted image rows with the other rows laid over them (same name: the other's),
    sorted. ``files`` is not changed (it may be kept and shared)."""
    if not others:
        return files if isinstance(files, list) else list(files)
    if len(others) > FEW_OTHERS:
        table = {name: (found, valid) for name, found, valid in files}
        table.update(others)
        return [(name, *table[name]) for name in sorted(table)]
    rows = list(files)
    for name in sorted(others):
        at = bisect_left(rows, name, key=_name_of)
        row = (name, *others[name])
        if at < len(rows) and rows[at][0] == name:
            rows[at] = row
        else:
            rows.insert(at, row)
    return rows


def _name_of(row: tuple[str, dict[str, Any], float]) -> str:
    return row[0]


class ArchiveFolder(Node):
    """A folder of ``.archive/``: archived images in their folder layout, read-only."""

    is_dir = True

    def __init__(self, tree: Tree, dataset: DatasetTree, path: str, inner: str) -> None:
        super().__init__(tree, dataset, path, inner)
        self.side: DatasetTree = dataset

    def attrs(self) -> dict[str, Any]:
        return attrs.dir_stat(self.tree.read_only_policy(), 0, self.tree.mounted_at)

    def readdir(self) -> Rows:
        folders, files = self.side.archive.readdir(self.inner)
        rows = {name: ArchiveFolder(self.tree, self.side, "", join_path(self.inner, name)
                                    ).attrs() for name in folders}
        rows.update({name: ArchivedImage.stat_of(self.tree, image)
                     for name, image in files.items()})
        if self.inner == ARCHIVE:  # laid out as the dataset's root: the same names (rootnames)
            rows = {rootnames.name_to_mount(name): found for name, found in rows.items()}
        return [(name, found, 0.0) for name, found in sorted(rows.items())]


# ------------------------------------------------------------------------------ files


class ImageFile(Node):
    """An image of the service: its bytes read through the cache; writing it stages a
    new version (filesystem §5 "Replace")."""

    def __init__(self, tree: Tree, dataset: DatasetTree, path: str, entry: FileEntry) -> None:
        super().__init__(tree, dataset, path, entry.path)
        self.image: Image = entry.image
        self.side: DatasetTree = dataset

    def attrs(self) -> dict[str, Any]:
        return self.tree.image_attrs(self.side, self.image)

    def valid_until(self, expires: float) -> float:
        return expires

    def open(self, flags: int) -> tuple[int, bool]:
        if flags & WRITE_FLAGS:
            pending = self.side.writes.open_for_write(self.inner, self.image,
                                                      truncate=bool(flags & os.O_TRUNC))
            return self.tree.add_handle(self.path, self.side, pending=pending), False
        image = self.image
        reader = self.side.downloader.open(image.id, image.file_size, self.inner)
        if not reader.from_cache and not self.tree.is_online():
            reader.close()
            raise Unavailable(f"{self.path} is not cached and the service is unreachable")
        fh = self.tree.add_handle(self.path, self.side, image=image, reader=reader)
        return fh, self.tree.opened_image(self.path, image)

    def truncate(self, length: int) -> None:
        self.side.writes.truncate_closed(self.inner, self.image, length)

    def set_mtime(self, when: float) -> None:
        self.side.writes.set_mtime(self.image, when)

    def listxattr(self) -> list[str]:
        return attrs.xattr_names(self.image)

    def getxattr(self, name: str) -> bytes:
        if name == attrs.ANNOTATIONS_XATTR:
            value = json.dumps(self.tree.remote.get_annotations(self.image),
                               ensure_ascii=False).encode()
            if len(value) > attrs.MAX_XATTR_SIZE:
                raise ValueTooLarge(f"annotations of {self.path} are larger than 64 KiB")
            return value
        value = attrs.xattr_value(self.image, name)
        if value is None:
            raise NoAttribute(name)
        return value

    def setxattr(self, name: str, value: bytes) -> None:
        """``split``/``tags`` change the image on the service; an attribute pictofs derives
        is accepted and ignored, whatever the value (a copy brings the old image's)."""
        field_name = field_to_set(self.path, name)
        if field_name is None:
            return
        if attrs.xattr_value(self.image, name) == value:
            return
        self.side.writes.check_writable("setxattr")
        image, remote = self.image, self.tree.remote
        try:
            if field_name == "split":
                updated = remote.set_split(image, attrs.parse_split(value))
            else:
                tags = attrs.parse_tags(value)
                remote.set_tags(image.dataset_id, image.id,
                                [t for t in tags if t not in image.tags],
                                [t for t in image.tags if t not in tags])
                updated = dataclasses.replace(image, tags=tuple(tags))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        self.side.view.note_image(updated)

    def removexattr(self, name: str) -> None:
        """An attribute the image shows is always there: removing one is accepted and
        ignored (``split``/``tags`` are cleared by setting them empty), so ``rsync -aX`` from
        files without them changes nothing on the service."""
        if not attrs.is_shown(name):
            raise NoAttribute(name)
        log.debug("%s: removing %s changes nothing", self.path, name)


class ArchivedImage(ImageFile):
    """An image in ``.archive/``: readable, read-only; ``rm`` deletes it for good and
    ``mv`` out of the archive restores it (filesystem §6)."""

    @staticmethod
    def stat_of(tree: Tree, image: Image) -> dict[str, Any]:
        return attrs.file_stat(tree.read_only_policy(), image.file_size,
                               attrs.image_mtime(image))

    def attrs(self) -> dict[str, Any]:
        return self.stat_of(self.tree, self.image)

    def valid_until(self, expires: float) -> float:
        return 0.0

    def open(self, flags: int) -> tuple[int, bool]:
        if flags & WRITE_FLAGS:
            raise ReadOnly(f"{self.path}: the archive is read-only")
        return super().open(flags)

    def truncate(self, length: int) -> None:
        self.side.writes.check_writable("truncate")
        raise ReadOnly(f"{self.path}: the archive is read-only")

    def delete_for_good(self) -> None:
        """``rm`` inside ``.archive/``: a permanent delete (EACCES if the role is too low)."""
        self.tree.remote.archive(self.side.view.dataset_id, [self.image.id], permanent=True)
        self.side.archive.dropped(self.image)
        log.info("deleted %s for good", self.inner)

    def restore(self, new: str, flags: int) -> None:
        """``mv .archive/cars/x.jpg cars/x.jpg`` restores the image (same id); to another
        folder or name it restores, then renames. A taken name → EEXIST. ``new`` is a path
        of the service (``Vfs.rename`` refused one in the virtual archive)."""
        side, image = self.side, self.image
        if side.renamer.what(new) is not None:
            raise AlreadyExists(new)
        self.tree.remote.restore(side.view.dataset_id, [image.id])
        restored = dataclasses.replace(image, is_archived=False)
        side.archive.dropped(image)
        side.view.note_image(restored)
        log.info("restored %s", restored.path)
        if new != restored.path:
            side.renamer.rename(restored.path, new, flags)


class PendingFile(Node):
    """A file that exists on this machine only for now: being written, waiting to upload,
    failed, or local-only (``pictofs.core.tree.pending``)."""

    def __init__(self, tree: Tree, dataset: DatasetTree, path: str, inner: str,
                 pending: Pending) -> None:
        super().__init__(tree, dataset, path, inner)
        self.pending = pending
        self.side: DatasetTree = dataset

    @staticmethod
    def stat_of(tree: Tree, pending: Pending) -> dict[str, Any]:
        return attrs.file_stat(tree.options.policy, pending.size, pending.mtime)

    def attrs(self) -> dict[str, Any]:
        return self.stat_of(self.tree, self.pending)

    def open(self, flags: int) -> tuple[int, bool]:
        if flags & WRITE_FLAGS:
            pending = self.side.writes.open_for_write(self.inner, self.pending,
                                                      truncate=bool(flags & os.O_TRUNC))
        else:
            pending = self.pending
            pending.add_open()
            if not pending.local:  # a staged file: opened now, while its bytes are surely
                try:               # there (its landing removes them)
                    pending.descriptor()
                except OSError as exc:
                    pending.drop_open()
                    if isinstance(exc, FileNotFoundError) and pending.removed:
                        # it landed (or went) since the lookup: the path shows the image
                        # now (its staging file goes only after the image is shown)
                        return self.tree.resolve(self.path).open(flags)
                    raise
        return self.tree.add_handle(self.path, self.side, pending=pending), False

    def truncate(self, length: int) -> None:
        self.side.writes.truncate_closed(self.inner, self.pending, length)

    def set_mtime(self, when: float) -> None:
        self.side.writes.set_mtime(self.pending, when)

    def listxattr(self) -> list[str]:
        kept = [attrs.XATTR_PREFIX + field for field in dict(self.pending.after_register)]
        if self.pending.local:
            return [attrs.LOCAL_ONLY_XATTR] + kept
        return ([attrs.ERROR_XATTR] if self.pending.error else []) + kept

    def getxattr(self, name: str) -> bytes:
        if name == attrs.ERROR_XATTR and self.pending.error:
            return self.pending.error.encode()
        if name == attrs.LOCAL_ONLY_XATTR and self.pending.local:
            return attrs.LOCAL_ONLY_VALUE
        field_name = attrs.writable_field(name)
        kept = dict(self.pending.after_register)
        if field_name is not None and field_name in kept:
            return attrs.writable_value(field_name, kept[field_name])
        raise NoAttribute(name)

    def setxattr(self, name: str, value: bytes) -> None:
        """``split``/``tags`` on a staged file are kept (in the journal too) and apply right
        after register (§2); if it landed before the value was kept, they are set on the
        image it became. An attribute pictofs derives is accepted and ignored."""
        field_name = field_to_set(self.path, name)
        if field_name is None:
            return
        writes = self.side.writes
        writes.check_writable("setxattr")
        try:
            parsed = attrs.parse_writable(field_name, value)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if writes.set_attr_after_register(self.pending, field_name, parsed):
            return
        landed = self.tree.resolve(self.path)  # it landed meanwhile: set it on the image
        if isinstance(landed, PendingFile):
            raise NotPermitted(f"{name} cannot be set here")
        landed.setxattr(name, value)

    def removexattr(self, name: str) -> None:
        """As on an image: accepted and ignored (a value set here is cleared by setting it
        empty)."""
        if not attrs.is_shown(name):
            raise NoAttribute(name)
        log.debug("%s: removing %s changes nothing", self.path, name)
