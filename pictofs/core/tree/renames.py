"""Folders and renames of one dataset in a mount (filesystem §5 "Other operations", §6).

``Renamer`` carries out every row of the rename table: a pending upload is retargeted; an
image moved to another folder under the same name is a server-side move (same id, annotations
kept); an image given a new name is uploaded under it with its annotations, status, split and
tags, and the old one archived; an image renamed to a local-only name is held by that name
(``WriteLayer.hold_image``); anything renamed onto an image replaces it; folders are renamed on
the service, or moved level by level to another parent.
"""

from __future__ import annotations

import io
import logging

from pictofs import imaging, names
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.view import DatasetView, DirEntry, FileEntry
from pictofs.core.tree.writes import WriteLayer
from pictofs.errors import (AlreadyExists, InvalidArgument, IsADirectory, NotADirectory,
                            NotEmpty, NotFound, Unsupported)
from pictofs.model import Image, join_path, split_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4

Thing = Pending | Image | DirEntry


class Renamer:
    def __init__(self, view: DatasetView, remote: Remote, writes: WriteLayer) -> None:
        self.view = view
        self.remote = remote
        self.writes = writes

    @property
    def dataset_id(self) -> str:
        return self.view.dataset_id

    # ------------------------------------------------------------------ folders

    def mkdir(self, path: str) -> None:
        parent, name = split_path(path)
        names.check_name(name)
        if self.what(path) is not None:
            raise AlreadyExists(path)
        if self.writes.in_local_folder(path):
            self._require_dir(parent)
            self.writes.add_local_dir(path)
            return
        self._require_dir(parent)
        folder = self.remote.make_folder(self.dataset_id, path)
        self.view.note_folder(path, folder, new=True)

    def rmdir(self, path: str) -> None:
        if self.writes.is_local_dir(path):
            self.writes.remove_local_dir(path)
            return
        self._require_dir(path)
        if self.writes.pending_under(path) or self.writes.local_dirs_in(path):
            raise NotEmpty(path)
        self.remote.delete_folder(self.dataset_id, path)
        self.view.note_folder_gone(path)

    # ------------------------------------------------------------------ rename

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if flags & (RENAME_EXCHANGE | RENAME_WHITEOUT):
            raise InvalidArgument("RENAME_EXCHANGE and RENAME_WHITEOUT are not supported")
        if old == new:
            return
        names.check_name(split_path(new)[1])
        source = self.what(old)
        if source is None:
            raise NotFound(old)
        target = self.what(new)
        if target is not None and flags & RENAME_NOREPLACE:
            raise AlreadyExists(new)
        if isinstance(source, Image) and isinstance(target, Image) and source.id == target.id:
            return  # two names of one image (x.heic and the x.png it became): as rename(2)
            # of two links to one file, nothing to do
        self._require_dir(split_path(new)[0])
        if isinstance(source, DirEntry) or self.writes.is_local_dir(old):
            self._rename_folder(old, new, target)
        elif isinstance(target, DirEntry):
            raise IsADirectory(new)
        elif isinstance(source, Pending):
            self._rename_pending(source, new, target)
        else:
            self._rename_image(old, source, new, target)

    def _rename_pending(self, pending: Pending, new: str, target: Thing | None,
                        moved_along: bool = False) -> None:
        """``moved_along``: a folder rename moved the image this file replaces with it."""
        folder, name = split_path(new)
        if isinstance(target, Pending) and target is not pending:
            self.writes.unlink(new)  # first: its upload (and the image it replaced) are gone
            target = None  # when this one uploads, so nothing on the service is in the way
        replaced_id = target.id if isinstance(target, Image) else None
        old_path, left_behind = pending.path, pending.replaced_id
        if moved_along:
            replaced_id, left_behind = pending.replaced_id, None
        if pending.holds is not None and new == pending.holds.path:
            self._restore_held(pending)
            return
        if self.writes.is_local_file(new):
            self._make_local(pending)
            pending.replaced_id = None
        elif not names.is_supported(name):
            raise Unsupported(f"{name}: unsupported file type")
        elif pending.local:
            self._upload_local(pending, folder, name, replaced_id)
        else:
            assert pending.entry_id is not None
            landed = self.writes.queue.retarget(pending.entry_id, folder, name, replaced_id)
            if landed is not None:  # it became an image meanwhile: rename the image
                old_path = pending.path
                self.writes.forget(pending, cancel=False)  # the rename shows where it went
                self._rename_image(old_path, landed, new, target)
                return
            pending.replaced_id = replaced_id
        self.writes.archive_left_behind(left_behind, old_path)
        self.writes.move_pending(pending, new)
        self.writes.schedule_closed(pending)  # closed and renamed: as a close

    def _make_local(self, pending: Pending) -> None:
        """A staged upload renamed to a local-only name stays here and uploads nothing."""
        if pending.entry_id is None:
            return
        pending.move_file(self.writes.local_dir / f"{pending.entry_id}.local")
        self.writes.queue.cancel(pending.entry_id)
        pending.entry_id = None

    def _upload_local(self, pending: Pending, folder: str, name: str,
                      replaced_id: str | None) -> None:
        """A local-only file renamed to a supported name becomes an upload, due
        ``--write-back`` after the rename if it is closed, as after a close (an editor's
        save writes a temp name and renames it over the real one; ``rsync`` does that for
        every file, whose uploads then go up together)."""
        self.writes.materialize(pending)
        [entry_id] = self.writes.queue.stage_many([(folder, name, replaced_id)],
                                                  create_files=False)
        pending.move_file(self.writes.queue.staging_path(entry_id))
        self.writes.journal.name_staging_file(entry_id, join_path(folder, name))
        pending.replaced_id = replaced_id
        pending.written = True
        self.writes.attach_entry(pending, entry_id)
        if pending.size > 0:
            pending.dirty = True
            self.writes.flush(pending)
            self.writes.schedule_closed(pending)
        if pending.opens == 0:
            pending.close_descriptor()  # closed and waiting: no descriptor held (release)

    def _restore_held(self, pending: Pending) -> None:
        """A local name renamed back to the path of the image it holds: the image returns
        (restored from the archive if it was archived meanwhile)."""
        image = pending.holds
        assert image is not None
        if self.writes.release_orphan(image.path) is None:
            self.remote.restore(self.dataset_id, [image.id])
            self.view.note_image(image)
            self.writes.on_archived()  # the archive changed: it leaves .archive/
        self.writes.forget(pending, cancel=False)

    def _rename_image(self, old: str, image: Image, new: str, target: Thing | None) -> None:
        if old != image.path and names.stored_as(split_path(old)[1]) == image.filename:
            self._rename_written(old, image, new, target)
            return
        folder, name = split_path(new)
        if self.writes.is_local_file(new):
            if isinstance(target, Pending):
                self.writes.unlink(new)
            self.writes.hold_image(old, image, new)
            return
        if not names.is_supported(name):
            raise Unsupported(f"{name}: unsupported file type")
        if isinstance(target, Pending):
            self.writes.unlink(new)
        elif isinstance(target, Image):
            self.remote.archive(self.dataset_id, [target.id])
            self.view.note_gone(new)
            self.writes.on_archived()
        if name == image.filename:
            renamed = self.remote.move(self.dataset_id, [image.id], folder)
            if renamed:
                log.warning("%s: the service renamed the image on arrival in %s", old, folder)
            moved = Image.from_json({**image.to_json(), "directory_path": folder})
            self.view.note_gone(old)
            self.view.note_image(moved)
            return
        self._copy_under_new_name(old, image, folder, name)

    def _rename_written(self, old: str, image: Image, new: str, target: Thing | None) -> None:
        """``old`` is a name written here that the service stored as ``image.path`` (HEIC
        ``x.heic`` as ``x.png``): the stored image is renamed, to the name the service
        stores ``new`` under, and ``new`` is remembered for it as ``old`` was."""
        folder, name = split_path(new)
        stored = join_path(folder, names.stored_as(name))
        if self.writes.in_local_folder(new):
            stored = new
        if isinstance(target, Pending):  # at the name given, not at the one stored
            self.writes.unlink(new)
            target = None
        self._rename_image(image.path, image, stored, target)
        if stored != new:
            entry = self.view.resolve(stored)
            if isinstance(entry, FileEntry):
                self.writes.remember_renamed(old, new, entry.image)
        self.view.note_gone(old)

    def _copy_under_new_name(self, old: str, image: Image, folder: str, name: str) -> None:
        """Upload the bytes under the new name, carry the metadata over, archive the old."""
        data = self._read_all(image)
        dims = imaging.probe(io.BytesIO(data))
        width, height = dims if dims else (None, None)
        new_image = self.remote.upload(self.dataset_id, folder, name, io.BytesIO(data),
                                       len(data), names.content_type_for(name), width, height)
        annotations = self.remote.get_annotations(image)
        if annotations:
            self.remote.save_annotations(new_image, annotations)
        if image.status != "new":
            self.remote.set_status(self.dataset_id, [new_image.id], image.status)
        if image.split:
            new_image = self.remote.set_split(new_image, image.split)
        if image.tags:
            self.remote.set_tags(self.dataset_id, new_image.id, list(image.tags), [])
        self.remote.archive(self.dataset_id, [image.id])
        self.writes.on_archived()
        mtime = self.writes.image_mtime(image)
        if mtime is not None:
            self.writes.set_mtime(new_image, mtime)
        self.view.note_gone(old)
        self.view.note_image(new_image)
        log.info("renamed %s to %s (new image %s)", old, new_image.path, new_image.id)

    def _read_all(self, image: Image) -> bytes:
        reader = self.writes.downloader.open(image.id, image.file_size)
        try:
            return reader.read(0, image.file_size)
        finally:
            reader.close()

    # ------------------------------------------------------------------ folder renames

    def _rename_folder(self, old: str, new: str, target: Thing | None) -> None:
        if target is not None:
            if not isinstance(target, DirEntry):
                raise NotADirectory(new)
            self.rmdir(new)  # an empty folder is replaced; a full one is ENOTEMPTY
        if self.writes.is_local_dir(old) or self.writes.in_local_folder(new):
            raise InvalidArgument("local-only folders cannot be renamed to or from")
        old_parent, _ = split_path(old)
        new_parent, new_name = split_path(new)
        held = [p for p in self.writes.pending_under(old) if p.entry_id is not None]
        for pending in held:  # no upload may register in (and so re-create) the old folder
            self.writes.queue.hold(pending.entry_id)
        try:
            if old_parent == new_parent:
                self.remote.rename_folder(self.dataset_id, old, new_name)
            else:
                self._move_folder(old, new)
        except BaseException:
            for pending in held:
                self.writes.schedule_closed(pending)
            raise
        for pending in self.writes.pending_under(old):
            self._rename_pending(pending, new + pending.path[len(old):], None,
                                 moved_along=True)
        self.writes.move_written(old, new)
        self.view.note_folder_gone(old)
        self.view.note_folder(new)

    def _move_folder(self, old: str, new: str) -> None:
        """Create the target, move the images level by level, delete the emptied source."""
        self.remote.make_folder(self.dataset_id, new)
        listing = self.view.listing(old)
        ids = [image.id for image in list(listing.images.values())]  # updated in place
        for start in range(0, len(ids), 10_000):
            self.remote.move(self.dataset_id, ids[start:start + 10_000], new)
        for name in list(listing.folders):
            self._move_folder(join_path(old, name), join_path(new, name))
        self.remote.delete_folder(self.dataset_id, old)

    # ------------------------------------------------------------------ helpers

    def what(self, path: str) -> Thing | None:
        pending = self.writes.pending_at(path)
        if pending is not None:
            return pending
        if self.writes.is_local_dir(path):
            return DirEntry(path)
        if self.writes.is_hidden(path):
            return None
        try:
            entry = self.view.resolve(path)
        except NotFound:
            return None
        return entry.image if isinstance(entry, FileEntry) else entry

    def _require_dir(self, path: str) -> None:
        if path == "/" or self.writes.is_local_dir(path):
            return
        entry = self.what(path)
        if entry is None:
            raise NotFound(path)
        if not isinstance(entry, DirEntry):
            raise NotADirectory(path)

