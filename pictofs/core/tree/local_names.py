"""Local-only names of a dataset in a mount (filesystem §5 "Names", §6): files and folders
that never reach the service, images held by a local name after a rename to one (an
"orphan": archived after ``write_back`` unless a new file at the old path replaces it), and
the janitor thread that archives due orphans and removes left-over transient files.

A local-only file is a local-only name (``names.is_local_only``: dot-names, ``~``, OS
junk), anything in a local-only folder, or (unless ``--refuse-non-images``) a name the
service does not take (``notes.txt``, ``IMG_0001.xmp``). Its bytes are a file of the mount's
local folder (``<journal folder>/local``), and the file itself records where it is shown
and its mtime (the xattr ``LOCAL_RECORD``), so the next mount shows it again: a local-only
file stays until ``rm``, across remounts, except transient ones
(``names.is_transient_path``: rsync's temporary names, swap files, partial downloads, and
anything in a desktop's trash folder, which lives as long as the mount): the janitor removes
those an hour after their last close, and a remount does not bring them back. Local-only
folders are kept in ``FOLDERS_FILE``. Together the files may hold at most
``local_only_max`` bytes (``ENOSPC`` past it; rsync's temporary names of images, on their
way to an upload, do not count).

``LocalNames`` is the part of ``writes.WriteLayer`` that does this; the layer's tables and
their lock are described there. Of the layer's ``WriteOptions`` it reads only what
``LocalOptions`` names, so this module imports nothing from ``writes``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from pictofs import names
from pictofs.core.tree import rootnames
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.view import DatasetView
from pictofs.dirs import replace_private
from pictofs.errors import NoSpace, NotEmpty, PictofsError
from pictofs.model import Image, split_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)

LEFTOVER_AGE = 3600.0  # transient local files are removed this long after their last close
JANITOR_EVERY = 0.5
LOCAL_RECORD = "user.pictofs.local"  # on a local file: {"path": ..., "mtime": ...} as JSON
FOLDERS_FILE = "folders.json"  # in the local folder: the local-only folders, a JSON list


@dataclass
class Orphan:
    """An image renamed to a local-only name: archived at ``deadline`` unless a file written
    at its old path replaces it first (§6, an editor's ``x.jpg`` → ``x.jpg~``)."""

    image: Image
    deadline: float


class LocalOptions(Protocol):
    """What ``LocalNames`` reads of the layer's options (``writes.WriteOptions``)."""

    @property
    def write_back(self) -> float: ...

    @property
    def local_only_max(self) -> int: ...

    @property
    def refuse_non_images(self) -> bool: ...


class LocalNames:
    """Local-only files and folders, orphans and the janitor (``WriteLayer`` sets every
    attribute below)."""

    view: DatasetView
    remote: Remote
    local_dir: Path
    options: LocalOptions
    clock: Callable[[], float]
    wall: Callable[[], float]
    on_archived: Callable[[], None]
    _lock: threading.RLock
    _pending: dict[str, Pending]
    _local_dirs: set[str]
    _orphans: dict[str, Orphan]
    _stop: threading.Event
    _janitor: threading.Thread | None
    _unrecorded = False  # a local file could not be recorded for the next mount (logged)

    def forget(self, pending: Pending, cancel: bool) -> None:
        raise NotImplementedError

    def _copy_image_into(self, image: Image, pending: Pending) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ local-only names

    def in_local_folder(self, path: str) -> bool:
        """True for names that never reach the service: local-only names and anything inside
        a local-only folder. A root name the mount shows under another name (the service's
        ``.archive``, reached as ``.archive~service``: ``rootnames``) is the service's."""
        parts = [p for p in path.split("/") if p]
        if parts and rootnames.is_translated(parts[0]):
            parts = parts[1:]
        return any(names.is_local_only(p) for p in parts)

    def is_local_file(self, path: str) -> bool:
        """A file at ``path`` stays on this machine: in a local-only folder or named so, or
        a name the service does not take (unless ``--refuse-non-images``: then such a name
        is refused, ``ENOTSUP``, as the callers do for a name that is not local)."""
        if self.in_local_folder(path):
            return True
        return not self.options.refuse_non_images \
            and not names.is_supported(split_path(path)[1])

    def is_local_dir(self, path: str) -> bool:
        with self._lock:
            return path in self._local_dirs

    def local_dirs_in(self, folder: str) -> list[str]:
        with self._lock:
            return [split_path(d)[1] for d in self._local_dirs if split_path(d)[0] == folder]

    def add_local_dir(self, path: str) -> None:
        with self._lock:
            self._local_dirs.add(path)
            self._save_local_dirs()

    def remove_local_dir(self, path: str) -> None:
        with self._lock:
            if any(p.startswith(path + "/") for p in self._pending) or \
                    any(d.startswith(path + "/") for d in self._local_dirs):
                raise NotEmpty(path)
            self._local_dirs.discard(path)
            self._save_local_dirs()

    def _new_local(self, path: str, holds: Image | None = None) -> Pending:
        pending = Pending(path, self.local_dir / uuid.uuid4().hex, None, mtime=self.wall(),
                          opens=0 if holds else 1, holds=holds,
                          size=holds.file_size if holds else 0)
        if holds is None:
            pending.descriptor()
        with self._lock:
            self._pending[path] = pending
        self.record_local(pending)
        return pending

    # ------------------------------------------------------------------ kept across remounts

    def record_local(self, pending: Pending) -> None:
        """Record on a local file's bytes where it is shown and its mtime, for the next
        mount (at create, last close, utimens, rename). A state disk without user xattrs
        keeps it for this mount only (one log line)."""
        if not pending.local or pending.removed or pending.holds is not None:
            return
        record = json.dumps({"path": pending.path, "mtime": pending.mtime}).encode()
        try:
            os.setxattr(pending.file, LOCAL_RECORD, record)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if not self._unrecorded:  # one line per mount: the next ones would say the same
                log.warning("%s (and the local-only files after it): kept for this mount "
                            "only: the state disk stores no user xattrs: %s", pending.path,
                            exc.strerror)
            self._unrecorded = True

    def _save_local_dirs(self) -> None:
        """Write the local-only folders (under ``_lock``), replacing the file at once."""
        target = self.local_dir / FOLDERS_FILE
        kept = sorted(d for d in self._local_dirs if not names.is_transient_path(d))
        try:
            if not kept:
                target.unlink(missing_ok=True)
                return
            replace_private(target, json.dumps(kept))
        except OSError as exc:
            log.warning("local-only folders kept for this mount only: %s", exc.strerror)

    def _load_local(self) -> None:
        """At start: the local-only folders and files an earlier mount kept come back.
        Transient files, and files with no record (cut off before their create returned),
        are removed."""
        try:
            folders = json.loads((self.local_dir / FOLDERS_FILE).read_text())
        except FileNotFoundError:
            folders = []
        except (OSError, ValueError) as exc:
            log.warning("local-only folders of an earlier mount not read: %s", exc)
            folders = []
        removed = 0
        with self._lock:
            self._local_dirs.update(f for f in folders if isinstance(f, str))
            for file in sorted(self.local_dir.iterdir()):
                if not file.is_file() or file.name.startswith(FOLDERS_FILE):
                    continue
                path, mtime = _read_record(file)
                if path is None or path in self._pending \
                        or names.is_transient_path(path):
                    file.unlink(missing_ok=True)
                    removed += 1
                    continue
                self._pending[path] = Pending(path, file, None, mtime=mtime,
                                              size=file.stat().st_size, written=True)
            kept = sum(1 for p in self._pending.values() if p.local)
        if removed:
            log.info("removed %d left-over local file(s) of an earlier mount", removed)
        if kept:
            log.info("%d local-only file(s) kept from an earlier mount", kept)

    # ------------------------------------------------------------------ the cap

    def check_local_cap(self, pending: Pending, end: int) -> None:
        """``NoSpace`` (ENOSPC) when growing ``pending`` to ``end`` bytes would take the
        local-only files past ``--local-only-max``."""
        growth = end - pending.size
        if growth <= 0 or names.is_image_on_its_way(split_path(pending.path)[1]):
            return
        with self._lock:
            used = sum(p.size for p in self._pending.values()
                       if p.local and p.holds is None
                       and not names.is_image_on_its_way(split_path(p.path)[1]))
        if used + growth > self.options.local_only_max:
            raise NoSpace(f"local-only files (not on the service) would take more than "
                          f"{self.options.local_only_max} bytes (--local-only-max); "
                          f"{used} are in use")

    def local_status(self) -> dict[str, int]:
        """``pictofs status``: the local-only files, and their bytes."""
        with self._lock:
            files = [p for p in self._pending.values() if p.local]
        return {"files": len(files), "bytes": sum(p.size for p in files)}

    # ------------------------------------------------------------------ orphans

    def materialize(self, pending: Pending) -> None:
        """A local name that holds an image gets the image's bytes before it changes."""
        image = pending.holds
        if image is None:
            return
        with pending.borrowed():  # a rename's: no handle keeps the descriptor
            self._copy_image_into(image, pending)
        pending.holds = None
        self.record_local(pending)

    def hold_image(self, path: str, image: Image, local_path: str) -> Pending:
        """An image renamed to a local-only name: the local name holds it; the image is
        archived after ``write_back`` unless a new file at ``path`` replaces it."""
        pending = self._new_local(local_path, holds=image)
        with self._lock:
            self._orphans[path] = Orphan(image, self.clock() + self.options.write_back)
        self.view.note_gone(path)
        return pending

    def _take_orphan(self, path: str) -> Orphan | None:
        with self._lock:
            return self._orphans.pop(path, None)

    def release_orphan(self, path: str) -> Orphan | None:
        """A local name renamed back to the image's path: the image stays where it was."""
        orphan = self._take_orphan(path)
        if orphan is not None:
            self.view.note_image(orphan.image)
        return orphan

    def is_hidden(self, path: str) -> bool:
        """An image renamed away to a local name: not at its old path any more."""
        with self._lock:
            return path in self._orphans

    def hidden_in(self, folder: str) -> set[str]:
        """The names in ``folder`` that ``is_hidden`` is true for: one lock for a whole
        listing, not one per image (a folder of 100,000 took that lock 100,000 times)."""
        with self._lock:
            if not self._orphans:
                return set()
            prefix = ("" if folder == "/" else folder) + "/"
            return {path[len(prefix):] for path in self._orphans
                    if path.startswith(prefix) and "/" not in path[len(prefix):]}

    # ------------------------------------------------------------------ the janitor

    def _start_janitor(self) -> None:
        self._janitor = threading.Thread(target=self._tidy, name="pictofs-janitor", daemon=True)
        self._janitor.start()

    def _stop_janitor(self, timeout: float) -> None:
        """Stop the janitor, then archive every orphan: at unmount no new file can take an
        orphan's place any more (§6)."""
        self._stop.set()
        if self._janitor is not None:
            self._janitor.join(timeout)
        try:
            self._archive_due_orphans(every=True)
        except PictofsError as exc:
            log.warning("images renamed to local names could not be archived at unmount "
                        "(%s); they stay where they were", exc)

    def _tidy(self) -> None:
        while not self._stop.wait(JANITOR_EVERY):
            try:
                self._archive_due_orphans()
                self._remove_leftovers()
            except PictofsError as exc:
                log.warning("background tidying: %s", exc)
            except Exception:
                log.exception("background tidying failed")

    def _archive_due_orphans(self, every: bool = False) -> None:
        now = self.clock()
        with self._lock:
            due = [(p, o) for p, o in self._orphans.items() if every or o.deadline <= now]
        for path, orphan in due:
            self.remote.archive(self.view.dataset_id, [orphan.image.id])
            with self._lock:
                if self._orphans.get(path) is orphan:
                    del self._orphans[path]
            self.on_archived()
            log.info("archived %s (renamed to a local name and not written back)", path)

    def _remove_leftovers(self) -> None:
        now = self.clock()
        with self._lock:
            old = [p for p in self._pending.values()
                   if p.local and p.opens == 0 and p.last_close
                   and now - p.last_close > LEFTOVER_AGE
                   and names.is_transient_path(p.path)]
        for pending in old:
            log.info("removing left-over local file %s", pending.path)
            self.forget(pending, cancel=False)


def _read_record(file: Path) -> tuple[str | None, float]:
    """The path and mtime a local file's record names, or ``(None, 0.0)``."""
    try:
        record = json.loads(os.getxattr(file, LOCAL_RECORD))
        return str(record["path"]), float(record["mtime"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, 0.0
