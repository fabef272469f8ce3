"""The desktop trash of a dataset in a mount: ``.Trash-UID/`` at the dataset's root, kept
in the mount's state folder, over the service's archive (filesystem "The desktop trash").

A file manager (GLib's ``gio trash``, pcmanfm, Nautilus, Thunar) trashes on a mount that
is not the home's by making ``$topdir/.Trash-$uid/`` with ``files/`` and ``info/``, writing
``info/NAME.trashinfo`` (``[Trash Info]``, ``Path=``, ``DeletionDate=``), then renaming the
file or folder to ``files/NAME``; "Restore" renames it back and removes the trashinfo;
emptying removes both. Here:

- ``.Trash-UID/`` (any number) exists once made (``mkdir``); its ``files/`` and ``info/``
  come with it.
- ``info/`` is a real folder of small local files in the state folder (created, written,
  renamed and removed as on any disk).
- A rename into ``files/NAME`` trashes: the images of the file or folder are archived on
  the service (as ``rm`` does), the service's folders of it deleted, and the entry (``NAME``
  → original path, image records, subfolders) recorded. Files not uploaded yet are not
  uploaded: their bytes move into the state folder and stay there, shown in the entry.
- ``files/`` lists the entries: a trashed file as a file, a trashed folder as a folder
  with its images and subfolders, readable (archived images are read from the service).
- A rename of ``files/NAME`` out of the trash restores: the same image ids are restored at
  their old paths (folders made again), files never uploaded are uploaded, then the whole
  is moved to the destination if it is not the original path.
- ``unlink``/``rmdir`` inside ``files/``, and a move into ``expunged/`` (how gvfs empties
  the trash), forget (part of) an entry: the images stay archived on the service
  (reachable in ``.archive/``); bytes never uploaded are removed.

The state is one JSON file (written whole, atomically, at each change) next to the folders
``local/`` (bytes of trashed files never uploaded) and ``<trash name>/info/``. ``_lock``
guards ``_state``; no request is sent while it is held.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pictofs.core.tree.pending import Pending
from pictofs.core.tree.view import DirEntry
from pictofs.dirs import replace_private
from pictofs.errors import (AlreadyExists, InvalidArgument, IsADirectory, NotADirectory,
                            NotEmpty, NotFound, NotPermitted, PictofsError)
from pictofs.model import Image, join_path, split_path

log = logging.getLogger(__name__)

TRASH_NAME = re.compile(r"^\.Trash-[0-9]+$")
FILES, INFO = "files", "info"
EXPUNGED = "expunged"  # where GLib's trash backend moves entries to delete them (forgotten)
AREAS = (FILES, EXPUNGED)  # the folders of a trash that hold entries
STATE_FILE = "trash.json"


def trash_parts(path: str) -> tuple[str, str, str] | None:
    """``/.Trash-0/files/cars/a.png`` → ``(".Trash-0", "files", "cars/a.png")``;
    ``/.Trash-0`` → ``(".Trash-0", "", "")``; None for a path outside a trash. Pure."""
    parts = path.strip("/").split("/")
    if not parts or not TRASH_NAME.match(parts[0]):
        return None
    return parts[0], parts[1] if len(parts) > 1 else "", "/".join(parts[2:])


class InfoFile(Pending):
    """An open file of ``info/``: a local file of the state folder (its descriptor is
    closed at the last release, ``Vfs.release``)."""


@dataclass
class Entry:
    """One trashed file or folder. ``images``: path inside the entry ("" for a trashed
    file itself, ``sub/a.png`` in a folder) → the archived image; ``local``: the same for
    bytes never uploaded → their file in ``local/``; ``folders``: subfolders inside a
    trashed folder (``sub``, ``sub/deeper``)."""

    path: str
    is_dir: bool
    deleted_at: float
    images: dict[str, Image] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "is_dir": self.is_dir, "deleted_at": self.deleted_at,
                "images": {k: v.to_json() for k, v in self.images.items()},
                "local": self.local, "folders": sorted(self.folders)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(data["path"], bool(data["is_dir"]), float(data["deleted_at"]),
                   {k: Image.from_json(v) for k, v in data.get("images", {}).items()},
                   dict(data.get("local", {})), set(data.get("folders", [])))

    def is_folder(self, rel: str) -> bool:
        return self.is_dir and (rel == "" or rel in self.folders)

    def children(self, rel: str) -> tuple[list[str], dict[str, str]]:
        """(subfolder names, file name → inside path) directly in folder ``rel``."""
        prefix = rel + "/" if rel else ""
        folders = sorted({f[len(prefix):] for f in self.folders
                          if f.startswith(prefix) and "/" not in f[len(prefix):]})
        files = {k[len(prefix):]: k for k in [*self.images, *self.local]
                 if k and k.startswith(prefix) and "/" not in k[len(prefix):]}
        return folders, files

    def holds_under(self, rel: str) -> bool:
        prefix = rel + "/"
        return any(k.startswith(prefix) for k in [*self.images, *self.local, *self.folders])


@dataclass
class Contents:
    """What a file or folder of the dataset holds, walked before it is trashed."""

    images: dict[str, Image] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)  # inside paths, parents first
    local_dirs: list[str] = field(default_factory=list)  # dataset paths, parents first


class Trash:
    def __init__(self, view: Any, remote: Any, writes: Any, renamer: Any, folder: Path,
                 wall: Callable[[], float] = time.time) -> None:
        """``view``: the DatasetView; ``writes``: the WriteLayer; ``renamer``: the Renamer;
        ``folder``: where the trash keeps its state (in the dataset's state folder)."""
        self.view = view
        self.remote = remote
        self.writes = writes
        self.renamer = renamer
        self.folder = folder
        self.wall = wall
        self.on_archived: Callable[[], None] = lambda: None  # the VFS sets it
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / "local").mkdir(exist_ok=True, mode=0o700)
        self._lock = threading.Lock()  # guards _state
        # trash name → area (files, expunged) → entry name → entry
        self._state: dict[str, dict[str, dict[str, Entry]]] = self._load()
        for top in self._state:
            self._make_info_dir(top)

    # ------------------------------------------------------------------ the state file

    def _load(self) -> dict[str, dict[str, dict[str, Entry]]]:
        path = self.folder / STATE_FILE
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text())
            return {top: {area: {name: Entry.from_json(e) for name, e in entries.items()}
                          for area, entries in areas.items()}
                    for top, areas in raw["trash"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            kept = path.with_name(f"{STATE_FILE}.damaged-{int(self.wall())}")
            os.replace(path, kept)
            log.warning("the trash's state could not be read (%s); kept as %s, the trash "
                        "starts empty (its images stay in .archive/)", exc, kept.name)
            return {}

    def _save(self) -> None:
        """Called with ``_lock`` held: the whole state, written to a new file, fsynced, then
        renamed over the old one."""
        data = {"version": 1, "trash": {
            top: {area: {name: e.to_json() for name, e in entries.items()}
                  for area, entries in areas.items()}
            for top, areas in self._state.items()}}
        replace_private(self.folder / STATE_FILE, json.dumps(data), durable=True)

    def info_dir(self, top: str) -> Path:
        return self.folder / top / INFO

    def _make_info_dir(self, top: str) -> None:
        """``info/`` of a trash and the folder holding it, both 0700 (private, as all the
        state folder)."""
        for folder in (self.folder / top, self.info_dir(top)):
            folder.mkdir(exist_ok=True, mode=0o700)

    # ------------------------------------------------------------------ what is there

    def exists(self, top: str) -> bool:
        with self._lock:
            return top in self._state

    def areas(self, top: str) -> list[str]:
        """The folders of the trash that hold entries: ``files``, and ``expunged`` while
        GLib empties the trash."""
        with self._lock:
            if top not in self._state:
                raise NotFound(top)
            return sorted(self._state[top])

    def entries(self, top: str, area: str = FILES) -> dict[str, Entry]:
        with self._lock:
            if area not in self._state.get(top, {}):
                raise NotFound(f"{top}/{area}")
            return dict(self._state[top][area])

    def entry(self, top: str, name: str) -> Entry:
        entry = self.entries(top).get(name)
        if entry is None:
            raise NotFound(f"{top}/{FILES}/{name}")
        return entry

    def count(self) -> int:
        """Trashed entries in every trash of the dataset (``pictofs status``)."""
        with self._lock:
            return sum(len(areas.get(FILES, {})) for areas in self._state.values())

    def local_file(self, stored: str) -> Path:
        return self.folder / "local" / stored

    # ------------------------------------------------------------------ folders

    def mkdir(self, path: str) -> None:
        top, part, rest = self._parts(path)
        with self._lock:
            areas = self._state.get(top)
            if part and areas is None:
                raise NotFound(path)
            if part and (rest or part not in (*AREAS, INFO)):
                raise NotPermitted(f"{path}: folders are made in the trash only by trashing "
                                   "one")
            if (not part and areas is not None) or part == INFO or \
                    (part and areas is not None and part in areas):
                raise AlreadyExists(path)
            if part:
                areas[part] = {}  # type: ignore[index]
            else:
                self._state[top] = {FILES: {}}
            self._save()
        self._make_info_dir(top)

    def rmdir(self, path: str) -> None:
        top, part, rest = self._parts(path)
        areas = self.areas(top)
        if not part:
            if any(self.entries(top, area) for area in areas) or \
                    any(self.info_dir(top).iterdir()):
                raise NotEmpty(path)
            with self._lock:
                self._state.pop(top, None)
                self._save()
            shutil.rmtree(self.folder / top, ignore_errors=True)
            return
        if part == INFO and not rest:
            if any(self.info_dir(top).iterdir()):
                raise NotEmpty(path)
            return  # comes back with the trash: nothing to remove
        if part not in areas:
            raise NotFound(path)
        if not rest:
            if self.entries(top, part):
                raise NotEmpty(path)
            if part != FILES:
                with self._lock:
                    self._state.get(top, {}).pop(part, None)
                    self._save()
            return
        name, _, rel = rest.partition("/")
        self._forget(top, part, name, rel, folder=True)

    # ------------------------------------------------------------------ info/ files

    def create(self, path: str, exclusive: bool) -> InfoFile:
        """A new file in ``info/`` (open for writing); anywhere else in the trash: EPERM."""
        file = self._info_path(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        if exclusive:
            flags |= os.O_EXCL
        try:
            fd = os.open(file, flags, 0o600)
        except FileExistsError:
            raise AlreadyExists(path) from None
        pending = InfoFile(path, file, None, mtime=self.wall(), opens=1)
        pending.fd = fd
        return pending

    def info_file(self, path: str) -> InfoFile:
        """An existing file of ``info/``."""
        file = self._info_path(path)
        try:
            found = file.stat()
        except FileNotFoundError:
            raise NotFound(path) from None
        return InfoFile(path, file, None, mtime=found.st_mtime, size=found.st_size)

    def info_names(self, top: str) -> list[str]:
        self.entries(top)  # NotFound without the trash
        return sorted(p.name for p in self.info_dir(top).iterdir() if p.is_file())

    def _info_path(self, path: str) -> Path:
        top, part, rest = self._parts(path)
        if not self.exists(top):
            raise NotFound(path)
        if part != INFO or not rest or "/" in rest:
            raise NotPermitted(f"{path}: only the trash's info/ takes new files")
        return self.info_dir(top) / rest

    # ------------------------------------------------------------------ unlink

    def unlink(self, path: str) -> None:
        top, part, rest = self._parts(path)
        if part == INFO and rest:
            try:
                self._info_path(path).unlink()
            except FileNotFoundError:
                raise NotFound(path) from None
            return
        if part not in AREAS or not rest:
            raise NotFound(path) if not self.exists(top) else NotPermitted(path)
        name, _, rel = rest.partition("/")
        self._forget(top, part, name, rel, folder=False)

    def _forget(self, top: str, area: str, name: str, rel: str, folder: bool) -> None:
        """``rm``/``rmdir`` in ``files/``: forget that part of the entry; its images stay
        archived; bytes never uploaded are removed with it (emptying the trash)."""
        removed: str | None = None
        with self._lock:
            entries = self._state.get(top, {}).get(area, {})
            entry = entries.get(name)
            shown = f"{top}/{area}/{name}" + (f"/{rel}" if rel else "")
            if entry is None:
                raise NotFound(shown)
            is_folder = entry.is_folder(rel)
            if folder != is_folder:
                raise NotADirectory(rel or name) if folder else IsADirectory(rel or name)
            if is_folder:
                if entry.holds_under(rel) if rel else (entry.images or entry.local or
                                                       entry.folders):
                    raise NotEmpty(shown)
                if rel:
                    entry.folders.discard(rel)
                else:
                    del entries[name]
            else:
                if rel not in entry.images and rel not in entry.local:
                    raise NotFound(shown)
                entry.images.pop(rel, None)
                removed = entry.local.pop(rel, None)
                if not entry.is_dir:
                    del entries[name]
            if not rel or removed is not None:
                self._save()
            # else an image or subfolder inside a trashed folder (emptying goes one by one):
            # written with the next change, not each time (the whole file, fsynced); lost
            # in a crash, it shows in the trash again, and its image is archived all the same
        if removed is not None:
            self.local_file(removed).unlink(missing_ok=True)
        if rel:  # a part of a trashed folder (emptying goes file by file): no line each
            log.debug("removed %s from the trash", shown)
        else:
            log.info("removed %s (%s) from the trash%s", shown, entry.path,
                     "; its images stay archived" if entry.images or entry.is_dir else "")

    # ------------------------------------------------------------------ rename

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """A rename with either side in a trash (dataset paths)."""
        source, target = trash_parts(old), trash_parts(new)
        if source and target:
            self._rename_inside(old, new, source, target)
        elif target:
            top, part, rest = target
            if part != FILES or not rest or "/" in rest:
                raise NotPermitted(f"{new}: things go into the trash as {top}/{FILES}/NAME")
            self.put(old, top, rest)
        else:
            assert source is not None
            top, part, rest = source
            if part != FILES or not rest or "/" in rest:
                raise NotPermitted(f"{old}: only whole entries of {top}/{FILES}/ are restored")
            self.restore(top, rest, new)

    def _rename_inside(self, old: str, new: str, source: tuple[str, str, str],
                       target: tuple[str, str, str]) -> None:
        if source[:2] == target[:2] and source[1] == INFO and source[2] and target[2]:
            try:
                os.replace(self._info_path(old), self._info_path(new))
            except FileNotFoundError:
                raise NotFound(old) from None
            return
        top, part, name = source
        if source[0] == target[0] and part in AREAS and target[1] in AREAS and name \
                and target[2] and "/" not in name + target[2]:
            with self._lock:
                areas = self._state.get(top, {})
                entries, into = areas.get(part, {}), areas.get(target[1])
                if name not in entries or into is None:
                    raise NotFound(old if name not in entries else new)
                if target[2] in into:
                    raise AlreadyExists(new)
                entry = entries.pop(name)
                if target[1] != EXPUNGED:
                    into[target[2]] = entry
                self._save()
            if target[1] == EXPUNGED:
                self._expunged(old, entry)
            return
        raise NotPermitted(f"{old} → {new}: not a move the trash makes")

    def _expunged(self, old: str, entry: Entry) -> None:
        """GLib empties the trash by moving each entry into ``expunged/``, then deleting
        what is there in a thread of its daemon (which may not live to finish): the entry
        is forgotten at the move, so ``expunged/`` stays empty and nothing is left
        half-deleted. Its images stay archived; bytes never uploaded go."""
        for stored in entry.local.values():
            self.local_file(stored).unlink(missing_ok=True)
        log.info("removed %s (%s) from the trash%s", old, entry.path,
                 "; its images stay archived" if entry.images or entry.is_dir else "")

    # ------------------------------------------------------------------ trashing

    def put(self, old: str, top: str, name: str) -> None:
        """``mv PATH .Trash-UID/files/NAME``: archive what ``PATH`` holds and record it."""
        if not self.exists(top):
            raise NotFound(f"/{top}")
        if name in self.entries(top):
            raise AlreadyExists(f"/{top}/{FILES}/{name}")
        source = self.renamer.what(old)
        if source is None:
            raise NotFound(old)
        is_dir = isinstance(source, DirEntry)
        contents = self._walk(old) if is_dir else \
            Contents(pending={"": source}) if isinstance(source, Pending) else \
            Contents(images={"": source})
        entry = Entry(old, is_dir, self.wall(), dict(contents.images),
                      folders=set(contents.folders))
        entry.local = self._keep_bytes(contents.pending)
        try:
            if contents.images:
                self.remote.archive(self.view.dataset_id,
                                    [image.id for image in contents.images.values()])
        except BaseException:
            for stored in entry.local.values():
                self.local_file(stored).unlink(missing_ok=True)
            raise
        with self._lock:
            entries = self._state.setdefault(top, {}).setdefault(FILES, {})
            kept_as, n = name, 1
            while kept_as in entries:  # trashed under this name meanwhile: keep both
                n += 1
                kept_as = f"{name}.{n}"
            entries[kept_as] = entry
            self._save()
        self._take_away(old, is_dir, contents)
        self.on_archived()
        log.info("trashed %s (%d image(s) archived%s)", old, len(contents.images),
                 f", {len(entry.local)} file(s) never uploaded kept" if entry.local else "")

    def _walk(self, root: str) -> Contents:
        """Every image, file not uploaded yet and folder under ``root``."""
        found = Contents()
        todo = [root]
        while todo:
            folder = todo.pop(0)
            inside = folder[len(root) + 1:]
            if folder != root:
                found.folders.append(inside)
            if self.writes.is_local_dir(folder):
                found.local_dirs.append(folder)
                sub = self.writes.local_dirs_in(folder)
            else:
                listing = self.view.listing(folder)
                for image_name, image in list(listing.images.items()):
                    path = join_path(folder, image_name)
                    if not self.writes.is_hidden(path):
                        found.images[path[len(root) + 1:]] = image
                sub = sorted({*listing.folders, *self.writes.local_dirs_in(folder)})
            for pending_name, pending in self.writes.pending_in(folder).items():
                found.pending[join_path(folder, pending_name)[len(root) + 1:]] = pending
            todo.extend(join_path(folder, s) for s in sub)
        return found

    def _keep_bytes(self, pending: dict[str, Pending]) -> dict[str, str]:
        """Copy the bytes of files not uploaded yet into ``local/`` (fsynced) before their
        uploads are cancelled: nothing written is lost by trashing it."""
        kept: dict[str, str] = {}
        try:
            for rel, file in pending.items():
                if file.holds is not None:
                    self.writes.materialize(file)
                stored = uuid.uuid4().hex
                target = self.local_file(stored)
                shutil.copyfile(file.file, target)
                with open(target, "rb+") as out:
                    os.fsync(out.fileno())
                kept[rel] = stored
        except BaseException:
            for stored in kept.values():
                self.local_file(stored).unlink(missing_ok=True)
            raise
        return kept

    def _take_away(self, old: str, is_dir: bool, contents: Contents) -> None:
        """The trashed things leave the dataset: uploads cancelled, the service's folders
        (empty now) deleted, the view told."""
        for rel in contents.pending:
            try:
                self.writes.unlink(join_path(old, rel) if rel else old)
            except NotFound:
                pass
        if not is_dir:
            self.view.note_gone(old)
            image = contents.images.get("")
            if image is not None and image.path != old:  # x.heic, listed for its x.png
                self.view.note_gone(image.path)
            return
        on_service = not self.writes.is_local_dir(old)
        for path in reversed(contents.local_dirs):
            self.writes.remove_local_dir(path)
        if on_service:
            service = [join_path(old, rel) for rel in contents.folders] + [old]
            for path in sorted(set(service) - set(contents.local_dirs),
                               key=lambda p: -p.count("/")):
                try:
                    self.remote.delete_folder(self.view.dataset_id, path)
                except NotFound:
                    pass
                except PictofsError as exc:  # another client put something there meanwhile
                    log.warning("trashed %s, but its folder %s stays: %s", old, path, exc)
        self.view.note_folder_gone(old)

    # ------------------------------------------------------------------ restoring

    def restore(self, top: str, name: str, new: str) -> None:
        """``mv .Trash-UID/files/NAME PATH``: the same image ids are restored at the
        original path (folders made again), bytes never uploaded are uploaded again, then
        it is moved to ``PATH`` if that is another path. A taken name: EEXIST."""
        entry = self.entry(top, name)
        if self.renamer.what(new) is not None:
            raise AlreadyExists(new)
        if new != entry.path and self.renamer.what(entry.path) is not None:
            raise AlreadyExists(f"{entry.path} (the original path, restored first)")
        parent = split_path(new)[0]
        if self.renamer.what(parent) is None:
            raise NotFound(parent)
        if entry.is_dir:
            for rel in [""] + sorted(entry.folders, key=lambda f: f.count("/")):
                self.remote.make_folder(self.view.dataset_id, join_path(entry.path, rel)
                                        if rel else entry.path)
        if entry.images:
            self.remote.restore(self.view.dataset_id,
                                [image.id for image in entry.images.values()])
        for image in entry.images.values():
            self.view.note_image(Image.from_json({**image.to_json(), "is_archived": False}))
        if entry.is_dir:
            self.view.note_folder_gone(entry.path)  # listed afresh, as the service has it
            self.view.note_folder(entry.path)
        self.on_archived()
        restored = len(entry.images)
        left, error = self._upload_all_again(entry)
        written_back = [stored for rel, stored in entry.local.items() if rel not in left]
        with self._lock:
            if left:  # only those stay in the trash: their bytes are there alone
                entry.images, entry.local = {}, left
            else:
                self._state.get(top, {}).get(FILES, {}).pop(name, None)
            self._save()
        for stored in written_back:
            self.local_file(stored).unlink(missing_ok=True)
        log.info("restored %s from the trash (%d image(s))", entry.path, restored)
        if error is not None:  # said for each file in the log; this one is the errno
            raise error
        if new != entry.path:
            self.renamer.rename(entry.path, new)

    def _upload_all_again(self, entry: Entry) -> tuple[dict[str, str], PictofsError | None]:
        """Write the files of ``entry`` that were never uploaded back at their paths;
        returns those that could not be (inside path → stored file) and the first error."""
        left: dict[str, str] = {}
        first: PictofsError | None = None
        for rel, stored in entry.local.items():
            path = join_path(entry.path, rel) if rel else entry.path
            try:
                self._upload_again(path, stored)
            except PictofsError as exc:
                log.warning("%s: not restored from the trash, kept there: %s", path, exc)
                left[rel] = stored
                first = first or exc
        return left, first

    def _upload_again(self, path: str, stored: str) -> None:
        """A trashed file that was never uploaded: written at ``path`` as a new file."""
        pending = self.writes.create(path, exclusive=True)
        try:
            with open(self.local_file(stored), "rb") as source:
                offset = 0
                while chunk := source.read(1 << 20):
                    self.writes.write(pending, chunk, offset)
                    offset += len(chunk)
            self.writes.flush(pending)
        except PictofsError as exc:  # e.g. bytes that are not an image: kept as they were
            log.warning("%s restored from the trash, but it will not upload: %s", path, exc)
        finally:
            self.writes.release(pending)

    # ------------------------------------------------------------------ helpers

    def _parts(self, path: str) -> tuple[str, str, str]:
        parts = trash_parts(path)
        if parts is None:
            raise InvalidArgument(f"{path} is not in a trash")
        return parts

