"""The nodes of a dataset's desktop trash (``.Trash-UID/``, ``pictofs.core.tree.trash``):
its folders, ``info/`` files (local files of the state folder, written like any file), and
the trashed files of ``files/`` (an archived image read from the service, or bytes never
uploaded kept in the state folder). Trashed files are read-only; ``rm`` and ``mv`` of them
go through ``Trash`` (``Vfs`` routes those verbs there).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pictofs.core.tree import attrs
from pictofs.core.tree.nodes import WRITE_FLAGS, ImageFile, Node, PendingFile, Rows, Tree
from pictofs.core.tree.trash import INFO, Entry, InfoFile, trash_parts
from pictofs.core.tree.view import FileEntry
from pictofs.errors import NotFound, NotPermitted
from pictofs.model import join_path

if TYPE_CHECKING:
    from pictofs.core.tree.dataset import DatasetTree
    from pictofs.core.tree.trash import Trash


def resolve(tree: Tree, dataset: DatasetTree, path: str, inner: str) -> Node:
    """The node at ``inner``, a path in a trash of ``dataset`` (NotFound if nothing)."""
    trash: Trash = dataset.trash
    parts = trash_parts(inner)
    assert parts is not None
    top, part, rest = parts
    areas = trash.areas(top)
    if part not in ("", INFO, *areas):
        raise NotFound(path)
    if not part or not rest:
        return TrashFolder(tree, dataset, path, inner)
    if part == INFO:
        return TrashInfo(tree, dataset, path, inner, trash.info_file(inner))
    entries = trash.entries(top, part)
    name, _, rel = rest.partition("/")
    entry = entries.get(name)
    if entry is None:
        raise NotFound(path)
    if entry.is_folder(rel):
        return TrashFolder(tree, dataset, path, inner, entry)
    if rel in entry.images:
        return TrashedImage(tree, dataset, path, FileEntry(inner, entry.images[rel]))
    if rel in entry.local:
        return TrashedLocalFile(tree, dataset, path, inner, entry.local[rel])
    raise NotFound(path)


class TrashFolder(Node):
    """``.Trash-UID``, its ``files`` and ``info``, or a folder of a trashed folder."""

    is_dir = True

    def __init__(self, tree: Tree, dataset: DatasetTree, path: str, inner: str,
                 entry: Entry | None = None) -> None:
        super().__init__(tree, dataset, path, inner)
        self.side: DatasetTree = dataset
        self.entry = entry

    def attrs(self) -> dict[str, Any]:
        folders = self._folders()
        mtime = self.entry.deleted_at if self.entry is not None else self.tree.mounted_at
        return attrs.dir_stat(self.tree.options.policy, len(folders), mtime)

    def _folders(self) -> list[str]:
        top, part, rest = trash_parts(self.inner)  # type: ignore[misc]
        trash = self.side.trash
        if not part:
            return [*trash.areas(top), INFO]
        if part == INFO:
            return []
        if not rest:
            return [name for name, e in trash.entries(top, part).items() if e.is_dir]
        assert self.entry is not None
        return self.entry.children(rest.partition("/")[2])[0]

    def readdir(self) -> Rows:
        top, part, rest = trash_parts(self.inner)  # type: ignore[misc]
        trash, policy = self.side.trash, self.tree.options.policy
        rows: dict[str, dict[str, Any]] = {}
        if not part:
            rows = {name: TrashFolder(self.tree, self.side, "", f"/{top}/{name}").attrs()
                    for name in (*trash.areas(top), INFO)}
        elif part == INFO:
            for name in trash.info_names(top):
                try:
                    rows[name] = PendingFile.stat_of(self.tree,
                                                     trash.info_file(join_path(self.inner, name)))
                except NotFound:  # removed meanwhile
                    pass
        elif not rest:
            for name, entry in trash.entries(top, part).items():
                rows[name] = self._entry_row(entry, "", policy)
        else:
            assert self.entry is not None
            rel = rest.partition("/")[2]
            folders, files = self.entry.children(rel)
            for name in folders:
                inside = f"{rel}/{name}" if rel else name
                rows[name] = attrs.dir_stat(policy, len(self.entry.children(inside)[0]),
                                            self.entry.deleted_at)
            for name, inside in files.items():
                rows[name] = self._entry_row(self.entry, inside, policy)
        return [(name, found, 0.0) for name, found in sorted(rows.items())]

    def _entry_row(self, entry: Entry, rel: str, policy: Any) -> dict[str, Any]:
        if entry.is_folder(rel):
            return attrs.dir_stat(policy, len(entry.children(rel)[0]), entry.deleted_at)
        if rel in entry.images:
            return self.tree.image_attrs(self.side, entry.images[rel])
        return TrashedLocalFile.stat_of(self.tree, self.side.trash.local_file(entry.local[rel]),
                                        entry.deleted_at)


class TrashInfo(PendingFile):
    """A file of ``info/``: written, read, renamed and removed as on any disk."""

    def open(self, flags: int) -> tuple[int, bool]:
        pending = self.pending
        pending.add_open()  # first: a release of another handle keeps the descriptor
        if flags & os.O_TRUNC:
            try:
                pending.truncate(0)
            except BaseException:
                pending.drop_open()
                raise
        return self.tree.add_handle(self.path, self.side, pending=pending), False

    def truncate(self, length: int) -> None:
        os.truncate(self.pending.file, length)

    def set_mtime(self, when: float) -> None:
        os.utime(self.pending.file, (when, when))


class TrashedImage(ImageFile):
    """An image in ``files/`` (archived on the service): readable, not writable."""

    def open(self, flags: int) -> tuple[int, bool]:
        if flags & WRITE_FLAGS:
            raise NotPermitted(f"{self.path}: files in the trash cannot be written; "
                               "restore it first")
        return super().open(flags)

    def truncate(self, length: int) -> None:
        raise NotPermitted(f"{self.path}: files in the trash cannot be written")

    def set_mtime(self, when: float) -> None:
        """Files in the trash keep their time."""

    def setxattr(self, name: str, value: bytes) -> None:
        raise NotPermitted(f"{self.path}: files in the trash cannot be changed")


class TrashedLocalFile(Node):
    """A trashed file that was never uploaded: its bytes in the state folder, readable."""

    def __init__(self, tree: Tree, dataset: DatasetTree, path: str, inner: str,
                 stored: str) -> None:
        super().__init__(tree, dataset, path, inner)
        self.side: DatasetTree = dataset
        self.file = dataset.trash.local_file(stored)

    @staticmethod
    def stat_of(tree: Tree, file: Any, deleted_at: float) -> dict[str, Any]:
        try:
            found = os.stat(file)
        except FileNotFoundError:
            return attrs.file_stat(tree.options.policy, 0, deleted_at)
        return attrs.file_stat(tree.options.policy, found.st_size, found.st_mtime)

    def attrs(self) -> dict[str, Any]:
        return self.stat_of(self.tree, self.file, self.tree.mounted_at)

    def open(self, flags: int) -> tuple[int, bool]:
        if flags & WRITE_FLAGS:
            raise NotPermitted(f"{self.path}: files in the trash cannot be written; "
                               "restore it first")
        found = self.attrs()
        pending = InfoFile(self.inner, self.file, None, mtime=0.0, size=found["st_size"],
                           opens=1)
        return self.tree.add_handle(self.path, self.side, pending=pending), False

    def truncate(self, length: int) -> None:
        raise NotPermitted(f"{self.path}: files in the trash cannot be written")
