"""Local-only names of a dataset in a mount (filesystem §5 "Names", §6): files and folders
that never reach the service, images held by a local name after a rename to one (an
"orphan": archived after ``write_back`` unless a new file at the old path replaces it), and
the janitor thread that archives due orphans and removes left-over local files.

``LocalNames`` is the part of ``writes.WriteLayer`` that does this; the layer's tables and
their lock are described there. Of the layer's ``WriteOptions`` it reads only ``write_back``
(the ``OrphanOptions`` protocol), so this module imports nothing from ``writes``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from pictofs import names
from pictofs.core.tree import rootnames
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.view import DatasetView
from pictofs.errors import NotEmpty, PictofsError
from pictofs.model import Image, split_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)

LEFTOVER_AGE = 3600.0  # local-only files are removed this long after their last close
JANITOR_EVERY = 0.5


@dataclass
class Orphan:
    """An image renamed to a local-only name: archived at ``deadline`` unless a file written
    at its old path replaces it first (§6, an editor's ``x.jpg`` → ``x.jpg~``)."""

    image: Image
    deadline: float


class OrphanOptions(Protocol):
    """What ``LocalNames`` reads of the layer's options (``writes.WriteOptions``)."""

    @property
    def write_back(self) -> float: ...


class LocalNames:
    """Local-only files and folders, orphans and the janitor (``WriteLayer`` sets every
    attribute below)."""

    view: DatasetView
    remote: Remote
    local_dir: Path
    options: OrphanOptions
    clock: Callable[[], float]
    wall: Callable[[], float]
    on_archived: Callable[[], None]
    _lock: threading.RLock
    _pending: dict[str, Pending]
    _local_dirs: set[str]
    _orphans: dict[str, Orphan]
    _stop: threading.Event
    _janitor: threading.Thread | None

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

    def is_local_dir(self, path: str) -> bool:
        with self._lock:
            return path in self._local_dirs

    def local_dirs_in(self, folder: str) -> list[str]:
        with self._lock:
            return [split_path(d)[1] for d in self._local_dirs if split_path(d)[0] == folder]

    def add_local_dir(self, path: str) -> None:
        with self._lock:
            self._local_dirs.add(path)

    def remove_local_dir(self, path: str) -> None:
        with self._lock:
            if any(p.startswith(path + "/") for p in self._pending) or \
                    any(d.startswith(path + "/") for d in self._local_dirs):
                raise NotEmpty(path)
            self._local_dirs.discard(path)

    def _new_local(self, path: str, holds: Image | None = None) -> Pending:
        pending = Pending(path, self.local_dir / uuid.uuid4().hex, None, mtime=self.wall(),
                          opens=0 if holds else 1, holds=holds,
                          size=holds.file_size if holds else 0)
        if holds is None:
            pending.descriptor()
        with self._lock:
            self._pending[path] = pending
        return pending

    # ------------------------------------------------------------------ orphans

    def materialize(self, pending: Pending) -> None:
        """A local name that holds an image gets the image's bytes before it changes."""
        image = pending.holds
        if image is None:
            return
        self._copy_image_into(image, pending)
        pending.holds = None

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

    def _remove_stale_local_files(self) -> None:
        """Local-only files live as long as the mount that made them: the ones an earlier
        mount left (unmounted or killed) are unreachable now."""
        stale = [p for p in self.local_dir.iterdir() if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d local-only file(s) left by an earlier mount", len(stale))

    def _remove_leftovers(self) -> None:
        now = self.clock()
        with self._lock:
            old = [p for p in self._pending.values()
                   if p.local and p.opens == 0 and p.last_close
                   and now - p.last_close > LEFTOVER_AGE]
        for pending in old:
            log.info("removing left-over local file %s", pending.path)
            self.forget(pending, cancel=False)
