"""The ``.archive/`` folder of ``Vfs`` (filesystem §6), kept apart from the rest of it:
attributes (everything read-only), listing rows, ``rm`` (a permanent delete) and ``mv`` out
of it (a restore). ``ArchiveVerbs`` is mixed into ``Vfs``, which provides ``remote``,
``options`` and ``mounted_at``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pictofs.core.tree import attrs
from pictofs.core.tree.archive import is_archive_path
from pictofs.core.tree.view import DirEntry, FileEntry
from pictofs.errors import AlreadyExists, IsADirectory, NotPermitted, ReadOnly
from pictofs.model import join_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)


class ArchiveVerbs:
    remote: Remote
    options: Any  # VfsOptions
    mounted_at: float

    def _archive_rows(self, side: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
        """The rows of a folder of ``.archive/``, sorted by name."""
        folders, files = side.archive.readdir(path)
        rows = {name: self._archive_attrs(DirEntry(join_path(path, name))) for name in folders}
        rows.update({name: self._archive_attrs(FileEntry(join_path(path, name), img))
                     for name, img in files.items()})
        return sorted(rows.items())

    def _archive_attrs(self, entry: DirEntry | FileEntry) -> dict[str, Any]:
        """Everything in ``.archive/`` is read-only."""
        policy = dataclasses.replace(self.options.policy, read_only=True)
        if isinstance(entry, FileEntry):
            return attrs.file_stat(policy, entry.image.file_size, attrs.image_mtime(entry.image))
        return attrs.dir_stat(policy, 0, self.mounted_at)

    def _delete_for_good(self, side: Any, inner: str) -> None:
        """``rm`` inside ``.archive/``: a permanent delete (EACCES if the role is too low)."""
        entry = side.archive.resolve(inner)
        if not isinstance(entry, FileEntry):
            raise IsADirectory(inner)
        self.remote.archive(side.view.dataset_id, [entry.image.id], permanent=True)
        side.archive.dropped(entry.image)
        log.info("deleted %s for good", inner)

    def _restore(self, side: Any, old: str, new: str, flags: int) -> None:
        """``mv .archive/cars/x.jpg cars/x.jpg`` restores the image (same id); to another
        folder or name it restores, then renames. A taken name → EEXIST."""
        entry = side.archive.resolve(old)
        if not isinstance(entry, FileEntry):
            raise NotPermitted("folders of the archive cannot be moved")
        if is_archive_path(new):
            raise ReadOnly("the archive is read-only")
        image = entry.image
        if side.renamer.what(new) is not None:
            raise AlreadyExists(new)
        self.remote.restore(side.view.dataset_id, [image.id])
        restored = dataclasses.replace(image, is_archived=False)
        side.archive.dropped(image)
        side.view.note_image(restored)
        log.info("restored %s", restored.path)
        if new != restored.path:
            side.renamer.rename(restored.path, new, flags)
