"""The filesystem core: paths in, domain answers out; no FUSE, no HTTP.

``Vfs`` is what the FUSE adapter calls, one verb per callback. It owns the mount's shape
(a dataset mount shows one dataset; an organization mount one folder per dataset), the
``DatasetTree`` of each dataset it reached, and the table of open files. ``resolve`` turns a
path into a node (``pictofs.core.tree.nodes``) and a verb of a path is one call on it; the
verbs that change the tree route the path to its dataset's ``writes`` and ``renamer``.
Attributes come from listings, so ``ls -l`` makes no per-image request (filesystem §1–§6).

What caches the answers (the kernel) is not known here: ``stat_and_validity`` and
``readdir_with_validity`` say until when each answer may be kept, and a ``ChangeListener``
is told of the changes this mount makes behind its back (``pictofs.fs.kernel_cache``).

Paths inside a dataset are the service's: ``_route`` translates the root names that differ
in the mount (``rootnames``: the service's own ``.archive`` folder is ``.archive~service``)
and tells the virtual ``.archive/`` apart; what goes back to the listener is translated back.
A path in ``.Trash-UID/`` at a dataset's root (a writable mount) goes to the dataset's
``trash`` (``pictofs.core.tree.trash``): its nodes, and every verb that changes it.

Locks: ``_lock`` guards ``_views``, ``_datasets_at``, ``_datasets``, ``_handles``,
``_last_open_id`` and ``counters``; it is never held while calling into a dataset.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pictofs.core.tree import attrs, rootnames, trash_nodes
from pictofs.core.tree.archive import ARCHIVE, is_archive_path
from pictofs.core.tree.attrs import AttrPolicy
from pictofs.core.tree.budget import DEFAULT_LISTING_IMAGES, ListingBudget
from pictofs.core.tree.nodes import (ArchivedImage, ArchiveFolder, DatasetFolder, ImageFile,
                                     Node, OrganizationRoot, PendingFile, Rows)
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.dataset import DatasetTree
from pictofs.core.tree.status import Counters, mount_status
from pictofs.core.tree.trash import InfoFile, trash_parts
from pictofs.core.tree.view import DatasetView, DirEntry
from pictofs.errors import (AlreadyExists, BadHandle, CrossDevice, NoAttribute, NotFound,
                            NotPermitted, ReadOnly)
from pictofs.model import Dataset, Image, split_path
from pictofs.names import check_name
from pictofs.remote import Remote

log = logging.getLogger(__name__)

STAT_CACHE_SIZE = 10_000  # images whose stat dict is kept apart from the rows of listings


@dataclass(frozen=True)
class VfsOptions:
    policy: AttrPolicy
    dir_cache_time: float = 30.0
    staging_dir: str = "/"  # statfs reports this disk's free space
    listing_cache_images: int = DEFAULT_LISTING_IMAGES  # the listings' budget (budget.py)


DatasetTreeFactory = Callable[[DatasetView], DatasetTree]


class ChangeListener:
    """Told of the changes this mount makes behind the back of whoever keeps its answers
    (the kernel: ``pictofs.fs.kernel_cache.KernelCache``). Paths are paths in the mount.
    This one, the default, listens to nothing."""

    def changed(self, paths: Iterable[str]) -> None:
        """These paths changed (may be called inside a FUSE callback or under locks)."""

    def changed_under(self, folder: str) -> None:
        """``folder`` and everything under it changed."""

    def refreshed(self) -> None:
        """Every listing was dropped (``pictofs refresh``); never from a FUSE callback."""

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until what the listener was told so far has been acted on."""


@dataclass
class Handle:
    """An open file: a reader streaming an image, or a pending file (written or read)."""

    path: str
    dataset: DatasetTree
    image: Image | None = None
    reader: Any = None
    pending: Pending | None = None


class Vfs:
    def __init__(self, remote: Remote, options: VfsOptions, dataset_tree: DatasetTreeFactory,
                 dataset: Dataset | None = None, clock: Callable[[], float] = time.monotonic,
                 is_online: Callable[[], bool] = lambda: True) -> None:
        """``dataset`` set: a dataset mount; None: an organization mount. ``dataset_tree``
        builds a dataset's DatasetTree. ``is_online`` says whether the service is believed
        reachable (the circuit breaker is closed)."""
        self.remote = remote
        self.options = options
        self.clock = clock
        self.is_online = is_online
        self._dataset_tree = dataset_tree
        self.budget = ListingBudget(options.listing_cache_images)
        self._single = DatasetView(remote, dataset, options.dir_cache_time, clock,
                                   self.budget) if dataset else None
        self.mounted_at = time.time()
        self._lock = threading.Lock()
        self._views: dict[str, DatasetView] = {}
        self._datasets_at = -1e18
        self._datasets: dict[str, DatasetTree] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._last_open_id: dict[str, str] = {}
        self.counters = Counters()
        # image id → (the Image, the mtime a writer recorded, its stat dict): a listing
        # keeps its Image objects, so a readdir or getattr of an unchanged image reuses the
        # dict (no timestamp parsing); read-only for everyone. Plain dict operations, atomic
        # under the GIL; emptied when it grows past STAT_CACHE_SIZE.
        self._file_stats: dict[str, tuple[Image, float | None, dict[str, Any]]] = {}
        self._file_stat = attrs.file_stats(options.policy)
        self.listener = ChangeListener()

    @property
    def is_organization(self) -> bool:
        return self._single is None

    # ------------------------------------------------------------------ datasets

    def open_dataset(self) -> None:
        """A dataset mount: set up its dataset now (resumes its upload journal); an
        organization mount sets each dataset up when it is first reached."""
        if self._single is not None:
            self.dataset_tree(self._single)

    def open_datasets(self, dataset_ids: set[str]) -> set[str]:
        """An organization mount: set up these datasets now (each resumes its upload
        journal); returns the ids the organization has no dataset for."""
        if not dataset_ids:
            return set()
        views = {view.dataset_id: view for view in self.dataset_names().values()}
        for dataset_id in sorted(dataset_ids & set(views)):
            self.dataset_tree(views[dataset_id])
        return dataset_ids - set(views)

    def dataset_tree(self, view: DatasetView) -> DatasetTree:
        with self._lock:
            found = self._datasets.get(view.dataset_id)
            if found is None:
                found = self._datasets[view.dataset_id] = self._dataset_tree(view)
                self._tell_listener_of_changes(view)
                found.writes.on_archived = found.archive.forget  # show new archives
                if found.trash is not None:
                    found.trash.on_archived = found.archive.forget
            return found

    def dataset_trees(self) -> list[DatasetTree]:
        with self._lock:
            return list(self._datasets.values())

    def wait_idle(self, timeout: float) -> bool:
        """``pictofs sync``: start every waiting upload now and wait until none is pending
        or in flight in any dataset (failed ones and open files do not count)."""
        deadline = time.monotonic() + timeout
        idle = True
        for dataset in self.dataset_trees():
            idle = dataset.writes.wait_idle(max(0.0, deadline - time.monotonic())) and idle
        return idle

    def _tell_listener_of_changes(self, view: DatasetView) -> None:
        """Changes this mount notes in ``view`` are told to the listener, as mount paths."""
        prefix = "" if view is self._single else "/" + view.dataset.name

        def outer(path: str) -> str:
            return prefix + rootnames.to_mount(path) if path != "/" else (prefix or "/")

        view.on_change = lambda paths: self.listener.changed([outer(p) for p in paths])
        view.on_folder_gone = lambda path: self.listener.changed_under(outer(path))

    def dataset_names(self) -> dict[str, DatasetView]:
        """An organization mount's datasets by name (listed again after
        ``--dir-cache-time``)."""
        with self._lock:
            if self.clock() - self._datasets_at < self.options.dir_cache_time:
                return self._views
        datasets = self.remote.list_datasets()
        with self._lock:
            fresh: dict[str, DatasetView] = {}
            for ds in datasets:
                if "/" in ds.name or len(ds.name.encode()) > 255 or ds.is_archived:
                    continue
                old = self._views.get(ds.name)
                fresh[ds.name] = old if old is not None and old.dataset_id == ds.id else \
                    DatasetView(self.remote, ds, self.options.dir_cache_time, self.clock,
                                self.budget)
            self._views = fresh
            self._datasets_at = self.clock()
            return self._views

    # ------------------------------------------------------------------ resolving

    def _route(self, path: str) -> tuple[DatasetTree | None, str, bool]:
        """(dataset, path inside it, whether that is in the virtual ``.archive/``);
        (None, "/", False) is the organization root. The path inside the dataset is the
        service's (``rootnames.to_service``: ``/.archive~service/x.jpg`` → ``/.archive/x.jpg``);
        in the virtual archive, which lays the dataset out again, it is ``/.archive``
        followed by the service's path (``/.archive/.archive~service/x.jpg`` →
        ``/.archive/.archive/x.jpg``)."""
        if self._single is not None:
            dataset, inner = self.dataset_tree(self._single), path
        elif path == "/":
            return None, "/", False
        else:
            name, _, rest = path[1:].partition("/")
            views = self.dataset_names()
            if name not in views:
                raise NotFound(f"no dataset named {name!r}")
            dataset, inner = self.dataset_tree(views[name]), "/" + rest
        if is_archive_path(inner):
            within = inner[len(ARCHIVE):]
            return dataset, ARCHIVE + (rootnames.to_service(within) if within else ""), True
        return dataset, rootnames.to_service(inner), False

    def resolve(self, path: str) -> Node:
        """The node at ``path`` (NotFound if nothing is there)."""
        dataset, inner, archived = self._route(path)
        if dataset is None:
            return OrganizationRoot(self, None, path, "/")
        if archived:
            entry = dataset.archive.resolve(inner)
            if isinstance(entry, DirEntry):
                return ArchiveFolder(self, dataset, path, inner)
            return ArchivedImage(self, dataset, path, entry)
        if self._in_trash(dataset, inner):
            return trash_nodes.resolve(self, dataset, path, inner)
        writes = dataset.writes
        pending = writes.pending_at(inner)
        if pending is not None:
            return PendingFile(self, dataset, path, inner, pending)
        if writes.is_local_dir(inner):
            return DatasetFolder(self, dataset, path, DirEntry(inner))
        if writes.is_hidden(inner):
            raise NotFound(path)
        entry = dataset.view.resolve(inner)
        if isinstance(entry, DirEntry):
            return DatasetFolder(self, dataset, path, entry)
        return ImageFile(self, dataset, path, entry)

    @staticmethod
    def _in_trash(dataset: DatasetTree | None, inner: str) -> bool:
        """A path in the dataset's desktop trash (``.Trash-UID/``; a writable mount)."""
        return dataset is not None and dataset.trash is not None \
            and trash_parts(inner) is not None

    def _writes(self, dataset: DatasetTree | None, what: str) -> Any:
        """The dataset's write side, if ``what`` may change it."""
        if dataset is None:
            raise NotPermitted(f"{what}: not at the top of an organization mount")
        dataset.writes.check_writable(what)
        return dataset.writes

    # --------------------------------------------------------------- attributes

    def read_only_policy(self) -> AttrPolicy:
        return dataclasses.replace(self.options.policy, read_only=True)

    def image_attrs(self, dataset: DatasetTree, image: Image,
                    mtimes: dict[str, float] | None = None) -> dict[str, Any]:
        """An image's stat dict, reused while its record and recorded mtime are the same.
        ``mtimes``: the recorded ones (``WriteLayer.image_mtimes``), for a whole listing."""
        recorded = dataset.writes.image_mtime(image) if mtimes is None \
            else mtimes.get(image.id)
        cached = self._file_stats.get(image.id)
        if cached is not None and cached[0] is image and cached[1] == recorded:
            return cached[2]
        stat = self._file_stat(image.file_size, attrs.image_mtime(image, recorded))
        if len(self._file_stats) >= STAT_CACHE_SIZE:
            if mtimes is not None:  # a listing's rows: a big folder would only churn it
                return stat
            self._file_stats = {}
        self._file_stats[image.id] = (image, recorded, stat)
        return stat

    def getattr(self, path: str) -> dict[str, Any]:
        return self.resolve(path).attrs()

    def stat_and_validity(self, path: str) -> tuple[dict[str, Any], float, bool]:
        """(``getattr``, until when the answer may be kept, whether it is a folder). The
        freshness of the sources is read before the answer is worked out from them: a
        change noted meanwhile makes it valid for no time (it may predate the change)."""
        dataset, inner, _archived = self._route(path)
        parent = split_path(inner)[0]
        expires = dataset.view.expires_at(inner) if dataset is not None else 0.0
        changes = dataset.view.changes_in(parent) if dataset is not None else 0
        node = self.resolve(path)
        found = node.attrs()
        if dataset is not None and dataset.view.changes_in(parent) != changes:
            expires = 0.0
        if not self.is_online():  # maybe a stale answer, kept while the service is away
            expires = 0.0
        return found, node.valid_until(expires), node.is_dir

    def handle_attrs(self, fh: int) -> dict[str, Any]:
        """Attributes of an open file from its handle (the path may be gone)."""
        handle = self._handle(fh)
        if handle.pending is not None:
            return PendingFile.stat_of(self, handle.pending)
        assert handle.image is not None
        return self.image_attrs(handle.dataset, handle.image)

    def hold_dir(self, path: str) -> Callable[[], None]:
        """An open directory: the listing of its folder is kept (``ListingBudget``) until
        the returned function is called (at ``releasedir``)."""
        dataset, inner, archived = self._route(path)
        if dataset is None or archived:
            return lambda: None
        view = dataset.view
        view.hold(inner)
        return lambda: view.release(inner)

    def readdir(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """Names with their attributes, sorted, from one listing (no per-entry request)."""
        return [(name, found) for name, found, _valid in self.resolve(path).readdir()]

    def readdir_with_validity(self, path: str) -> Rows:
        """``readdir`` with, for each row, until when it may be kept (0.0: no time)."""
        return self.resolve(path).readdir()

    # ------------------------------------------------------------------- opening

    def open(self, path: str, flags: int) -> tuple[int, bool]:
        """Open a file; returns (handle, keep the kernel page cache)."""
        return self.resolve(path).open(flags)

    def create(self, path: str, flags: int) -> int:
        if self._single is None and path.count("/") == 1:
            # the top of an organization mount holds only dataset folders: a file there is
            # "not allowed here" (EPERM, as a link or an rmdir of a dataset), not "missing"
            log.warning("%s: not created: the top of an organization mount holds one folder "
                        "per dataset (mkdir makes a dataset); put files inside one", path)
            raise NotPermitted(f"{path}: files cannot be created at the top of an "
                               "organization mount")
        dataset, inner, archived = self._route(path)
        writes = self._writes(dataset, "create")
        if archived:
            raise ReadOnly("the archive is read-only")
        assert dataset is not None
        if self._in_trash(dataset, inner):
            info = dataset.trash.create(inner, exclusive=bool(flags & os.O_EXCL))
            return self.add_handle(path, dataset, pending=info)
        pending = writes.create(inner, exclusive=bool(flags & os.O_EXCL))
        return self.add_handle(path, dataset, pending=pending)

    def add_handle(self, path: str, dataset: DatasetTree, image: Image | None = None,
                   reader: Any = None, pending: Pending | None = None) -> int:
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = Handle(path, dataset, image, reader, pending)
        return fh

    def opened_image(self, path: str, image: Image) -> bool:
        """Count an open of ``image`` for reading; whether the kernel may keep the pages it
        has of ``path`` (it still shows the image it showed at the last open)."""
        with self._lock:
            keep = self._last_open_id.get(path) == image.id
            self._last_open_id[path] = image.id
            self.counters.opens += 1
        return keep

    def _handle(self, fh: int) -> Handle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise BadHandle(f"no open file {fh}")
        return handle

    # ------------------------------------------------------------------- bytes

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        if handle.pending is not None:
            data = handle.dataset.writes.read(handle.pending, size, offset)
        else:
            assert handle.image is not None
            if offset >= handle.image.file_size:
                return b""
            data = handle.reader.read(offset, min(size, handle.image.file_size - offset))
        with self._lock:
            self.counters.reads += 1
            self.counters.bytes_read += len(data)
        return data

    def write(self, fh: int, data: bytes, offset: int) -> int:
        handle = self._handle(fh)
        if handle.pending is None:
            raise BadHandle("the file is not open for writing")
        return self._writes(handle.dataset, "write").write(handle.pending, data, offset)

    def needs_flush(self, fh: int) -> bool:
        """Whether ``flush`` of this handle does anything (a pending file: written, or
        read while staged); an image opened for reading does not need it."""
        return self._handle(fh).pending is not None

    def flush(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.pending is not None:
            handle.dataset.writes.flush(handle.pending)

    def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.pending is not None:
            handle.dataset.writes.fsync(handle.pending)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()
        if handle.pending is not None:
            handle.dataset.writes.release(handle.pending)
            if isinstance(handle.pending, InfoFile) and handle.pending.opens == 0:
                handle.pending.close_descriptor()  # a file of the trash, kept in no table

    def truncate(self, path: str | None, length: int, fh: int | None) -> None:
        if fh is not None:
            handle = self._handle(fh)
            if handle.pending is None:
                raise BadHandle("the file is not open for writing")
            self._writes(handle.dataset, "truncate").truncate(handle.pending, length)
            return
        assert path is not None
        node = self.resolve(path)
        self._writes(node.dataset, "truncate")
        node.truncate(length)

    # ------------------------------------------------------------ changing the tree

    def unlink(self, path: str) -> None:
        dataset, inner, archived = self._route(path)
        writes = self._writes(dataset, "unlink")
        if archived:
            self.resolve(path).delete_for_good()
            return
        if self._in_trash(dataset, inner):
            dataset.trash.unlink(inner)  # type: ignore[union-attr]
            return
        writes.unlink(inner)

    def mkdir(self, path: str) -> None:
        """A folder; in an organization mount, ``mkdir /name`` creates a dataset."""
        if self._single is None and path.count("/") == 1:
            name = path[1:]
            check_name(name)
            if trash_parts(path) is not None or name == ".Trash":
                log.warning("mkdir %s: a desktop trash is kept per dataset, in a dataset "
                            "mount; not made at the top of an organization mount", path)
                raise NotPermitted(f"{name}: the desktop trash needs a dataset mount")
            if name in self.dataset_names():
                raise AlreadyExists(name)
            self.remote.create_dataset(name)
            with self._lock:
                self._datasets_at = -1e18
            return
        dataset, inner, archived = self._route(path)
        self._writes(dataset, "mkdir")
        if archived:
            raise ReadOnly("the archive is read-only")
        if self._in_trash(dataset, inner):
            dataset.trash.mkdir(inner)  # type: ignore[union-attr]
            return
        dataset.renamer.mkdir(inner)  # type: ignore[union-attr]

    def rmdir(self, path: str) -> None:
        if self._single is None and path.count("/") == 1:
            raise NotPermitted("a dataset directory cannot be removed through the mount")
        dataset, inner, archived = self._route(path)
        self._writes(dataset, "rmdir")
        if archived:
            raise ReadOnly("the archive is read-only")
        if self._in_trash(dataset, inner):
            dataset.trash.rmdir(inner)  # type: ignore[union-attr]
            return
        dataset.renamer.rmdir(inner)  # type: ignore[union-attr]

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if self._single is None and (old.count("/") == 1 or new.count("/") == 1):
            raise NotPermitted("a dataset directory cannot be renamed through the mount")
        old_dataset, old_inner, old_archived = self._route(old)
        new_dataset, new_inner, new_archived = self._route(new)
        if old_dataset is not new_dataset:
            raise CrossDevice("rename across datasets")
        self._writes(old_dataset, "rename")
        assert old_dataset is not None
        if old_archived:
            if self._in_trash(old_dataset, new_inner):
                raise NotPermitted("an archived image is restored out of .archive/ first")
            node = self.resolve(old)
            if new_archived and not node.is_dir:  # a folder of it: EPERM, said by restore
                raise ReadOnly("the archive is read-only")
            node.restore(new_inner, flags)
            return
        if new_archived:
            raise ReadOnly("the archive is read-only")
        if self._in_trash(old_dataset, old_inner) or self._in_trash(old_dataset, new_inner):
            old_dataset.trash.rename(old_inner, new_inner, flags)
            return
        old_dataset.renamer.rename(old_inner, new_inner, flags)

    def utimens(self, path: str | None, mtime: float | None, fh: int | None = None) -> None:
        when = time.time() if mtime is None else mtime
        if path is None and fh is not None:
            handle = self._handle(fh)
            target: Pending | Image | None = handle.pending or handle.image
            assert target is not None
            self._writes(handle.dataset, "utimens").set_mtime(target, when)
            handle.dataset.view.note_mtime()  # after: rows worked out meanwhile go
            return
        assert path is not None
        node = self.resolve(path)
        if node.is_dir:
            return  # folders keep their creation time
        self._writes(node.dataset, "utimens")
        node.set_mtime(when)
        if node.dataset is not None:
            node.dataset.view.note_mtime()

    # --------------------------------------------------------- extended attributes

    def listxattr(self, path: str) -> list[str]:
        return self.resolve(path).listxattr()

    def getxattr(self, path: str, name: str) -> bytes:
        return self.resolve(path).getxattr(name)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        if name.startswith(("security.", "system.")):
            return  # capability and ACL probes of cp -p: accepted and ignored
        self.resolve(path).setxattr(name, value)

    def removexattr(self, path: str, name: str) -> None:
        if name.startswith(("security.", "system.")):
            raise NoAttribute(name)
        self.resolve(path).removexattr(name)

    # ------------------------------------------------------------------ the mount

    def statfs(self) -> dict[str, int]:
        disk = os.statvfs(self.options.staging_dir)
        return {
            "f_bsize": disk.f_bsize, "f_frsize": disk.f_frsize, "f_blocks": disk.f_blocks,
            "f_bfree": max(disk.f_bfree, 1), "f_bavail": max(disk.f_bavail, 1),
            "f_files": 1 << 20, "f_ffree": 1 << 20, "f_favail": 1 << 20, "f_namemax": 255,
        }

    def close(self) -> None:
        """At unmount, after the writes stopped: end the listings ahead and the downloads,
        close the caches (their batched LRU times and lingering pins are written and
        removed)."""
        for dataset in self.dataset_trees():
            dataset.view.close()
            try:
                dataset.downloader.close(timeout=5)
                dataset.downloader.cache.close()
            except Exception:
                log.exception("closing the cache of %s failed", dataset.view.dataset.name)

    def refresh(self) -> None:
        """Drop every listing now (``pictofs refresh``, SIGHUP), then tell the listener
        (called from the control or signal thread, never a FUSE callback)."""
        for dataset in self.dataset_trees():
            dataset.view.forget()
            dataset.archive.forget()
        with self._lock:
            self._datasets_at = -1e18
        self.listener.refreshed()
        log.info("listing cache dropped")

    def status(self) -> dict[str, Any]:
        # what this mount changed behind the listener's back is acted on before the status
        # says so (``pictofs sync`` returns with it)
        self.listener.settle()
        with self._lock:
            counters = dataclasses.replace(self.counters)
            open_files = len(self._handles)
        # the listings kept in memory (``--listing-cache-images``) and how many were dropped
        return {**mount_status(self.dataset_trees(), counters, open_files),
                "listing_cache": self.budget.status()}
