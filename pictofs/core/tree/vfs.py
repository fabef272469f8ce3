"""The filesystem core: paths in, domain answers out; no FUSE, no HTTP.

``Vfs`` is what the FUSE adapter calls, one verb per callback. It routes a path to the
``Side`` of its dataset (a dataset mount has one; an organization mount has one per dataset
directory): the ``DatasetView`` (listings), the ``Downloader`` (reads through the cache), and,
unless the mount is read-only, the ``WriteLayer`` (files being written, local-only files,
uploads) and the ``Renamer``. Pending files are laid over the service's listing. Attributes
come from listings, so ``ls -l`` makes no per-image request (filesystem §1–§6). The
extended-attribute verbs live in ``vfs_xattrs``, the ``.archive/`` folder in ``vfs_archive``
and the control verbs (status and its counters, refresh, close, statfs) in ``vfs_control``,
mixed in.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from pictofs.core.tree import attrs
from pictofs.core.tree.archive import is_archive_path
from pictofs.core.tree.attrs import AttrPolicy
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.archive_verbs import ArchiveVerbs
from pictofs.core.tree.status import ControlVerbs, Counters, KernelNotes
from pictofs.core.tree.xattr_verbs import XattrVerbs
from pictofs.core.tree.view import DatasetView, DirEntry, FileEntry
from pictofs.errors import (AlreadyExists, BadHandle, CrossDevice, IsADirectory,
                            NotADirectory, NotFound, NotPermitted, ReadOnly, Unavailable)
from pictofs.model import Dataset, Image, join_path, parse_timestamp, split_path
from pictofs.names import check_name
from pictofs.remote import Remote

log = logging.getLogger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
STAT_CACHE_SIZE = 100_000  # images whose stat dict is kept (some 60 MB at most)


@dataclass(frozen=True)
class VfsOptions:
    policy: AttrPolicy
    dir_cache_time: float = 30.0
    staging_dir: str = "/"  # statfs reports this disk's free space


@dataclass
class Side:
    """Everything of one dataset: listings, reads, and (writable mounts) writes."""

    view: DatasetView
    downloader: Any
    writes: Any = None  # pictofs.core.tree.writes.WriteLayer
    renamer: Any = None  # pictofs.core.tree.renames.Renamer
    archive: Any = None  # pictofs.core.tree.archive.ArchiveView


SideFactory = Callable[[DatasetView], Side]


@dataclass
class Handle:
    """An open file: a reader streaming an image, or a pending file (written or read)."""

    path: str
    side: Side
    image: Image | None = None
    reader: Any = None
    pending: Pending | None = None


class Vfs(ArchiveVerbs, XattrVerbs, ControlVerbs):
    def __init__(self, remote: Remote, options: VfsOptions, side_for: SideFactory,
                 dataset: Dataset | None = None, clock: Callable[[], float] = time.monotonic,
                 is_online: Callable[[], bool] = lambda: True) -> None:
        """``dataset`` set: a dataset mount; None: an organization mount. ``side_for``
        builds a dataset's Side. ``is_online`` says whether the service is believed
        reachable (the circuit breaker is closed)."""
        self.remote = remote
        self.options = options
        self.clock = clock
        self.is_online = is_online
        self._side_for = side_for
        self._single = DatasetView(remote, dataset, options.dir_cache_time, clock) \
            if dataset else None
        self.mounted_at = time.time()
        # _lock guards _views, _datasets_at, _sides, _handles, _last_open_id and counters.
        self._lock = threading.Lock()
        self._views: dict[str, DatasetView] = {}
        self._datasets_at = -1e18
        self._sides: dict[str, Side] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._last_open_id: dict[str, str] = {}
        self.counters = Counters()
        # image id → (the Image, the mtime a writer recorded, its stat dict): a listing
        # keeps its Image objects, so a readdir or getattr of an unchanged image reuses the
        # dict (no timestamp parsing); read-only for everyone. Plain dict operations, atomic
        # under the GIL; emptied when it grows past STAT_CACHE_SIZE.
        self._file_stats: dict[str, tuple[Image, float | None, dict[str, Any]]] = {}
        # what the kernel was handed, to take back when it stops being fresh: set by the
        # FUSE adapter when the kernel's timeouts are long (pictofs.fs.kernel_cache)
        self.kernel: KernelNotes = KernelNotes()

    # ------------------------------------------------------------------ routing

    def open_dataset(self) -> None:
        """A dataset mount: set up its dataset now (resumes its upload journal); an
        organization mount sets each dataset up when it is first reached."""
        if self._single is not None:
            self.side(self._single)

    def _route(self, path: str) -> tuple[Side | None, str]:
        """(side, path inside the dataset); (None, "/") is the organization root."""
        if self._single is not None:
            return self.side(self._single), path
        if path == "/":
            return None, "/"
        name, _, rest = path[1:].partition("/")
        return self.side(self._dataset_view(name)), "/" + rest

    def side(self, view: DatasetView) -> Side:
        with self._lock:
            found = self._sides.get(view.dataset_id)
            if found is None:
                found = self._sides[view.dataset_id] = self._side_for(view)
                self._tell_kernel_of_changes(view)
                if found.writes is not None and found.archive is not None:
                    found.writes.on_archived = found.archive.forget  # show new archives
            return found

    def _tell_kernel_of_changes(self, view: DatasetView) -> None:
        """Changes this mount notes in ``view`` take back what the kernel holds of them."""
        prefix = "" if view is self._single else "/" + view.dataset.name

        def outer(path: str) -> str:
            return prefix + path if path != "/" else (prefix or "/")

        view.on_change = lambda paths: self.kernel.forget_soon([outer(p) for p in paths])
        view.on_folder_gone = lambda path: self.kernel.forget_under_soon(outer(path))

    def sides(self) -> list[Side]:
        with self._lock:
            return list(self._sides.values())

    def _dataset_view(self, name: str) -> DatasetView:
        views = self._dataset_views()
        if name not in views:
            raise NotFound(f"no dataset named {name!r}")
        return views[name]

    def _dataset_views(self) -> dict[str, DatasetView]:
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
                    DatasetView(self.remote, ds, self.options.dir_cache_time, self.clock)
            self._views = fresh
            self._datasets_at = self.clock()
            return self._views

    def _resolve(self, path: str) -> tuple[Side | None, DirEntry | FileEntry | Pending]:
        side, _inner, entry = self._locate(path)
        return side, entry

    def _locate(self, path: str) -> tuple[Side | None, str, DirEntry | FileEntry | Pending]:
        """(side, path inside the dataset, what is there)."""
        side, inner = self._route(path)
        if side is None:
            return None, "/", DirEntry("/")
        if side.archive is not None and is_archive_path(inner):
            return side, inner, side.archive.resolve(inner)
        writes = side.writes
        if writes is not None:
            pending = writes.pending_at(inner)
            if pending is not None:
                return side, inner, pending
            if writes.is_local_dir(inner):
                return side, inner, DirEntry(inner)
            if writes.is_hidden(inner):
                raise NotFound(path)
        return side, inner, side.view.resolve(inner)

    def _writes(self, side: Side | None, what: str) -> Any:
        if side is None:
            raise NotPermitted(f"{what}: not at the top of an organization mount")
        if side.writes is None:
            raise ReadOnly(f"{what}: this mount is read-only")
        return side.writes

    # --------------------------------------------------------------- attributes

    def _dir_attrs(self, side: Side | None, entry: DirEntry) -> dict[str, Any]:
        policy = self.options.policy
        if side is None:
            return attrs.dir_stat(policy, len(self._dataset_views()), self.mounted_at)
        listing = side.view.cached_listing(entry.path)
        subfolders = len(listing.folders) if listing else 0
        created = entry.folder.created_at if entry.folder else None
        if entry.path == "/":
            created = side.view.dataset.created_at
        mtime = parse_timestamp(created) or self.mounted_at
        return attrs.dir_stat(policy, subfolders, mtime)

    def _file_attrs(self, side: Side | None, image: Image) -> dict[str, Any]:
        recorded = side.writes.image_mtime(image) if side and side.writes else None
        cached = self._file_stats.get(image.id)
        if cached is not None and cached[0] is image and cached[1] == recorded:
            return cached[2]
        stat = attrs.file_stat(self.options.policy, image.file_size,
                               attrs.image_mtime(image, recorded))
        if len(self._file_stats) >= STAT_CACHE_SIZE:
            self._file_stats = {}
        self._file_stats[image.id] = (image, recorded, stat)
        return stat

    def _pending_attrs(self, pending: Pending) -> dict[str, Any]:
        return attrs.file_stat(self.options.policy, pending.size, pending.mtime)

    def _attrs(self, side: Side | None, entry: DirEntry | FileEntry | Pending) -> dict[str, Any]:
        if isinstance(entry, Pending):
            return self._pending_attrs(entry)
        if is_archive_path(entry.path):
            return self._archive_attrs(entry)
        if isinstance(entry, FileEntry):
            return self._file_attrs(side, entry.image)
        return self._dir_attrs(side, entry)

    def getattr(self, path: str) -> dict[str, Any]:
        side, entry = self._resolve(path)
        return self._attrs(side, entry)

    def lookup(self, path: str) -> dict[str, Any]:
        """``getattr`` for the kernel, which caches the answer: recorded with the time its
        source stops being fresh, to be taken back then."""
        if not self.kernel.active:
            return self.getattr(path)
        # how fresh the sources are, asked before the answer is worked out from them
        side, inner = self._route(path)
        parent = split_path(inner)[0]
        expires = side.view.expires_at(inner) if side is not None else 0.0
        changes = side.view.changes_in(parent) if side is not None else 0
        side, inner, entry = self._locate(path)
        found = self._attrs(side, entry)
        if side is not None and side.view.changes_in(parent) != changes:
            expires = 0.0  # a change noted meanwhile: the answer may predate it
        self.kernel.handed_out(path, self._fresh_for(side, inner, entry, expires),
                               is_dir=isinstance(entry, DirEntry))
        return found

    def _fresh_for(self, side: Side | None, inner: str, entry: DirEntry | FileEntry | Pending,
                   expires: float) -> float:
        """Seconds the kernel may keep this answer: until ``expires``, when the listing (or
        single-name answer) it comes from stops being fresh. This mount's pending files,
        local-only folders, the archive, an organization mount's top two levels, an answer
        that may predate a change and any answer while the service is unreachable get 1 s,
        the kernel's timeout before long timeouts (their answers come from state that
        changes behind the kernel's back, or may be stale)."""
        short = min(1.0, self.options.dir_cache_time)
        if side is None or isinstance(entry, Pending) or is_archive_path(inner):
            return short
        if not self.is_online():  # maybe a stale answer, kept while the service is away
            return short
        if isinstance(entry, DirEntry):
            local_dir = entry.folder is None and inner != "/"
            dataset_folder = inner == "/" and self._single is None
            if local_dir or dataset_folder:
                return short
        return max(expires - self.clock(), short)

    def handle_attrs(self, fh: int) -> dict[str, Any]:
        """Attributes of an open file from its handle (the path may be gone)."""
        handle = self._handle(fh)
        if handle.pending is not None:
            return self._pending_attrs(handle.pending)
        assert handle.image is not None
        return self._file_attrs(handle.side, handle.image)

    def readdir(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """Names with their attributes, from one listing (no per-entry request), with the
        pending files of this mount laid over it."""
        side, entry = self._resolve(path)
        if not isinstance(entry, DirEntry):
            raise NotADirectory(path)
        if side is None or (is_archive_path(entry.path) and side.archive is not None):
            if side is None:
                found = [(name, self._dir_attrs(self.side(v), DirEntry("/")))
                         for name, v in sorted(self._dataset_views().items())]
            else:
                found = self._archive_rows(side, entry.path)
            if self.kernel.active:  # answers from elsewhere than a listing: 1 s
                self._hand_out_rows(path, None, entry.path, dict(found), [])
            return found
        rows: dict[str, dict[str, Any]] = {}
        writes = side.writes
        # the pending files before the listing: one that lands while the listing is fetched
        # is then in one of the two, never in neither
        pendings = writes.pending_in(entry.path) if writes is not None else {}
        changes = side.view.changes_in(entry.path)
        listing = None
        if writes is None or not writes.is_local_dir(entry.path):
            listing = side.view.listing(entry.path)
            # copies (one C call each, atomic under the GIL): the cached listing is updated
            # in place by this mount's changes while we iterate
            for name, folder in list(listing.folders.items()):
                rows[name] = self._dir_attrs(side, DirEntry(join_path(entry.path, name), folder))
            for name, image in list(listing.images.items()):
                if writes is None or not writes.is_hidden(join_path(entry.path, name)):
                    rows[name] = self._file_attrs(side, image)
        short: list[str] = []
        if writes is not None:
            for name in writes.local_dirs_in(entry.path):
                rows[name] = self._dir_attrs(side, DirEntry(join_path(entry.path, name)))
                short.append(name)
            for name, pending in pendings.items():
                rows[name] = self._pending_attrs(pending)
                short.append(name)
        if self.kernel.active:
            kept = listing is not None and side.view.cached_listing(entry.path) is listing \
                and side.view.changes_in(entry.path) == changes
            self._hand_out_rows(path, side if kept else None, entry.path, rows, short,
                                listing.fetched_at if kept and listing else 0.0)
        return sorted(rows.items())

    def _hand_out_rows(self, path: str, side: Side | None, inner: str,
                       rows: dict[str, dict[str, Any]], short: list[str],
                       fetched_at: float = 0.0) -> None:
        """Record the rows of a READDIRPLUS. With ``side``, the rows not in ``short`` come
        from the listing fetched at ``fetched_at``, still kept and with no change noted
        while they were worked out: they stay as long as it stays fresh (a folder as long
        as its own answers, which give its link count). Every other row: 1 s."""
        prefix = path.rstrip("/") + "/"
        held = min(1.0, self.options.dir_cache_time)
        local = set(short) if side is not None else set(rows)
        files = []
        for name, found in rows.items():
            is_dir = stat.S_ISDIR(found["st_mode"])
            if name in local:
                self.kernel.handed_out(prefix + name, held, is_dir=is_dir)
            elif is_dir:
                assert side is not None
                expires = min(fetched_at + self.options.dir_cache_time,
                              side.view.expires_at(join_path(inner, name)))
                self.kernel.handed_out(prefix + name, max(expires - self.clock(), held),
                                       is_dir=True)
            else:
                files.append(prefix + name)
        self.kernel.handed_out_many(
            files, max(fetched_at + self.options.dir_cache_time - self.clock(), held))

    # ------------------------------------------------------------------- opening

    def open(self, path: str, flags: int) -> tuple[int, bool]:
        """Open a file; returns (handle, keep the kernel page cache)."""
        side, inner, entry = self._locate(path)
        if isinstance(entry, DirEntry):
            raise IsADirectory(path)
        assert side is not None
        if flags & WRITE_FLAGS:
            if is_archive_path(inner):
                raise ReadOnly(f"{path}: the archive is read-only")
            writes = self._writes(side, "open for writing")
            target = entry if isinstance(entry, Pending) else entry.image
            pending = writes.open_for_write(inner, target, truncate=bool(flags & os.O_TRUNC))
            return self._add(Handle(path, side, pending=pending)), False
        if isinstance(entry, Pending):
            entry.opens += 1
            return self._add(Handle(path, side, pending=entry)), False
        image = entry.image
        reader = side.downloader.open(image.id, image.file_size, inner)
        if not reader.from_cache and not self.is_online():
            reader.close()
            raise Unavailable(f"{path} is not cached and the service is unreachable")
        fh = self._add(Handle(path, side, image=image, reader=reader))
        with self._lock:
            keep = self._last_open_id.get(path) == image.id
            self._last_open_id[path] = image.id
            self.counters.opens += 1
        return fh, keep

    def create(self, path: str, flags: int) -> int:
        side, inner = self._route(path)
        writes = self._writes(side, "create")
        if is_archive_path(inner):
            raise ReadOnly("the archive is read-only")
        pending = writes.create(inner, exclusive=bool(flags & os.O_EXCL))
        return self._add(Handle(path, side, pending=pending))  # type: ignore[arg-type]

    def _add(self, handle: Handle) -> int:
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = handle
        return fh

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
            data = handle.side.writes.read(handle.pending, size, offset) \
                if handle.side.writes else handle.pending.pread(size, offset)
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
        return self._writes(handle.side, "write").write(handle.pending, data, offset)

    def needs_flush(self, fh: int) -> bool:
        """Whether ``flush`` of this handle does anything (a pending file: written, or
        read while staged); an image opened for reading does not need it."""
        return self._handle(fh).pending is not None

    def flush(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.pending is not None and handle.side.writes is not None:
            handle.side.writes.flush(handle.pending)

    def fsync(self, fh: int) -> None:
        handle = self._handle(fh)
        if handle.pending is not None and handle.side.writes is not None:
            handle.side.writes.fsync(handle.pending)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if handle.reader is not None:
            handle.reader.close()
        if handle.pending is not None:
            if handle.side.writes is not None:
                handle.side.writes.release(handle.pending)
            else:
                handle.pending.opens -= 1

    def truncate(self, path: str | None, length: int, fh: int | None) -> None:
        if fh is not None:
            handle = self._handle(fh)
            if handle.pending is None:
                raise BadHandle("the file is not open for writing")
            self._writes(handle.side, "truncate").truncate(handle.pending, length)
            return
        assert path is not None
        side, inner, entry = self._locate(path)
        writes = self._writes(side, "truncate")
        if isinstance(entry, DirEntry):
            raise IsADirectory(path)
        if isinstance(entry, Pending):
            writes.truncate(entry, length)
        else:
            writes.truncate_image(inner, entry.image, length)

    # ------------------------------------------------------------ changing the tree

    def unlink(self, path: str) -> None:
        side, inner = self._route(path)
        writes = self._writes(side, "unlink")
        if is_archive_path(inner):
            self._delete_for_good(side, inner)  # type: ignore[arg-type]
            return
        writes.unlink(inner)

    def mkdir(self, path: str) -> None:
        """A folder; in an organization mount, ``mkdir /name`` creates a dataset."""
        if self._single is None and path.count("/") == 1:
            name = path[1:]
            check_name(name)
            if name in self._dataset_views():
                raise AlreadyExists(name)
            self.remote.create_dataset(name)
            with self._lock:
                self._datasets_at = -1e18
            return
        side, inner = self._route(path)
        self._writes(side, "mkdir")
        if is_archive_path(inner):
            raise ReadOnly("the archive is read-only")
        side.renamer.mkdir(inner)  # type: ignore[union-attr]

    def rmdir(self, path: str) -> None:
        if self._single is None and path.count("/") == 1:
            raise NotPermitted("a dataset directory cannot be removed through the mount")
        side, inner = self._route(path)
        self._writes(side, "rmdir")
        if is_archive_path(inner):
            raise ReadOnly("the archive is read-only")
        side.renamer.rmdir(inner)  # type: ignore[union-attr]

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        if self._single is None and (old.count("/") == 1 or new.count("/") == 1):
            raise NotPermitted("a dataset directory cannot be renamed through the mount")
        old_side, old_inner = self._route(old)
        new_side, new_inner = self._route(new)
        if old_side is not new_side:
            raise CrossDevice("rename across datasets")
        self._writes(old_side, "rename")
        assert old_side is not None
        if is_archive_path(old_inner):
            self._restore(old_side, old_inner, new_inner, flags)
            return
        if is_archive_path(new_inner):
            raise ReadOnly("the archive is read-only")
        old_side.renamer.rename(old_inner, new_inner, flags)

    def utimens(self, path: str | None, mtime: float | None, fh: int | None = None) -> None:
        when = time.time() if mtime is None else mtime
        if path is None and fh is not None:
            handle = self._handle(fh)
            target: Pending | Image | None = handle.pending or handle.image
            side = handle.side
        else:
            assert path is not None
            side, entry = self._resolve(path)
            if isinstance(entry, DirEntry):
                return  # folders keep their creation time
            target = entry if isinstance(entry, Pending) else entry.image
        assert target is not None
        self._writes(side, "utimens").set_mtime(target, when)

    def touch_metadata(self, path: str | None) -> None:
        """chmod/chown: accepted (rsync -a, cp -p exit 0) and not stored; the file must exist."""
        if path is not None:
            self.getattr(path)
