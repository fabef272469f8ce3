"""The filesystem core: paths in, domain answers out; no FUSE, no HTTP.

``Vfs`` is what the FUSE adapter calls, one verb per callback. It routes a path to a
``DatasetView`` (a dataset mount has one; an organization mount has one per dataset directory),
builds attributes from listings (so ``ls -l`` makes no per-image request), serves reads through
the shared ``Downloader`` and answers extended attributes (filesystem §1–§4).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pictofs.core import attrs
from pictofs.core.attrs import AttrPolicy
from pictofs.core.view import DatasetView, DirEntry, Entry, FileEntry
from pictofs.errors import (AlreadyExists, BadHandle, IsADirectory, NoAttribute, NotADirectory,
                            NotFound, NotPermitted, ReadOnly, Unavailable, ValueTooLarge)
from pictofs.model import Dataset, Image, parse_timestamp
from pictofs.names import check_name
from pictofs.remote import Remote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VfsOptions:
    policy: AttrPolicy
    dir_cache_time: float = 30.0
    staging_dir: str = "/"  # statfs reports this disk's free space


@dataclass
class Handle:
    """An open file: the reader streaming its image, and what it was opened as."""

    path: str
    image: Image
    reader: Any  # pictofs.core.downloads.Reader


@dataclass
class Counters:
    opens: int = 0
    reads: int = 0
    bytes_read: int = 0
    started: float = field(default_factory=time.time)


class Vfs:
    def __init__(self, remote: Remote, options: VfsOptions,
                 downloader_for: Callable[[Dataset], Any], dataset: Dataset | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 is_online: Callable[[], bool] = lambda: True) -> None:
        """``dataset`` set: a dataset mount; None: an organization mount. ``downloader_for``
        gives the Downloader (with its cache) of a dataset. ``is_online`` says whether the
        service is believed reachable (the circuit breaker is closed)."""
        self.is_online = is_online
        self.remote = remote
        self.options = options
        self.clock = clock
        self._downloader_for = downloader_for
        self._single = DatasetView(remote, dataset, options.dir_cache_time, clock) \
            if dataset else None
        self.mounted_at = time.time()
        # _lock guards _views, _datasets_at, _handles, _last_open_id, counters.
        self._lock = threading.Lock()
        self._views: dict[str, DatasetView] = {}
        self._datasets_at = -1e18
        self._downloaders: dict[str, Any] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._last_open_id: dict[str, str] = {}
        self.counters = Counters()

    # ------------------------------------------------------------------ routing

    def _route(self, path: str) -> tuple[DatasetView | None, str]:
        """(view, path inside the dataset); (None, "/") is the organization root."""
        if self._single is not None:
            return self._single, path
        if path == "/":
            return None, "/"
        name, _, rest = path[1:].partition("/")
        return self._dataset_view(name), "/" + rest

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

    def _resolve(self, path: str) -> tuple[DatasetView | None, Entry]:
        view, inner = self._route(path)
        if view is None:
            return None, DirEntry("/")
        return view, view.resolve(inner)

    def _downloader(self, view: DatasetView) -> Any:
        with self._lock:
            found = self._downloaders.get(view.dataset_id)
            if found is None:
                found = self._downloaders[view.dataset_id] = self._downloader_for(view.dataset)
            return found

    # --------------------------------------------------------------- attributes

    def _dir_attrs(self, view: DatasetView | None, entry: DirEntry) -> dict[str, Any]:
        policy = self.options.policy
        if view is None:
            return attrs.dir_stat(policy, len(self._dataset_views()), self.mounted_at)
        listing = view.cached_listing(entry.path)
        subfolders = len(listing.folders) if listing else 0
        created = entry.folder.created_at if entry.folder else None
        if entry.path == "/":
            created = view.dataset.created_at
        mtime = parse_timestamp(created) or self.mounted_at
        return attrs.dir_stat(policy, subfolders, mtime)

    def _file_attrs(self, image: Image) -> dict[str, Any]:
        return attrs.file_stat(self.options.policy, image.file_size, attrs.image_mtime(image))

    def getattr(self, path: str) -> dict[str, Any]:
        view, entry = self._resolve(path)
        if isinstance(entry, FileEntry):
            return self._file_attrs(entry.image)
        return self._dir_attrs(view, entry)

    def readdir(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """Names with their attributes, from one listing (no per-entry request)."""
        view, entry = self._resolve(path)
        if not isinstance(entry, DirEntry):
            raise NotADirectory(path)
        if view is None:
            return [(name, self._dir_attrs(v, DirEntry("/")))
                    for name, v in sorted(self._dataset_views().items())]
        listing = view.listing(entry.path)
        rows = [(name, self._dir_attrs(view, DirEntry(_join(entry.path, name), folder)))
                for name, folder in sorted(listing.folders.items())]
        rows += [(name, self._file_attrs(image)) for name, image in sorted(listing.images.items())]
        return rows

    # ------------------------------------------------------------------- reading

    def open(self, path: str, flags: int) -> tuple[int, bool]:
        """Open for reading; returns (handle, keep the kernel page cache)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise self._read_only("open for writing")
        view, entry = self._resolve(path)
        if not isinstance(entry, FileEntry):
            raise IsADirectory(path)
        reader = self._downloader(view).open(entry.image.id, entry.image.file_size)
        if not reader.from_cache and not self.is_online():
            reader.close()
            raise Unavailable(f"{path} is not cached and the service is unreachable")
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = Handle(path, entry.image, reader)
            keep = self._last_open_id.get(path) == entry.image.id
            self._last_open_id[path] = entry.image.id
            self.counters.opens += 1
        return fh, keep

    def read(self, fh: int, size: int, offset: int) -> bytes:
        handle = self._handle(fh)
        if offset >= handle.image.file_size:
            return b""
        data = handle.reader.read(offset, min(size, handle.image.file_size - offset))
        with self._lock:
            self.counters.reads += 1
            self.counters.bytes_read += len(data)
        return data

    def handle_attrs(self, fh: int) -> dict[str, Any]:
        """Attributes of an open file from its handle (the path may be gone)."""
        return self._file_attrs(self._handle(fh).image)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.reader.close()

    def _handle(self, fh: int) -> Handle:
        with self._lock:
            handle = self._handles.get(fh)
        if handle is None:
            raise BadHandle(f"no open file {fh}")
        return handle

    # ------------------------------------------------------------ extended attributes

    def listxattr(self, path: str) -> list[str]:
        _view, entry = self._resolve(path)
        return attrs.xattr_names(entry.image) if isinstance(entry, FileEntry) else []

    def getxattr(self, path: str, name: str) -> bytes:
        view, entry = self._resolve(path)
        if not isinstance(entry, FileEntry):
            raise NoAttribute(name)
        if name == attrs.ANNOTATIONS_XATTR:
            value = json.dumps(self.remote.get_annotations(entry.image),
                               ensure_ascii=False).encode()
            if len(value) > attrs.MAX_XATTR_SIZE:
                raise ValueTooLarge(f"annotations of {path} are larger than 64 KiB")
            return value
        value = attrs.xattr_value(entry.image, name)
        if value is None:
            raise NoAttribute(name)
        return value

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        if name.startswith(("security.", "system.")):
            return  # capability and ACL probes of cp -p: accepted and ignored
        view, entry = self._resolve(path)
        if not isinstance(entry, FileEntry) or not name.startswith(attrs.XATTR_PREFIX):
            raise NotPermitted(f"{name} cannot be set here")
        current = attrs.xattr_value(entry.image, name)
        if current is not None and current == value:
            return
        raise self._read_only("setxattr")

    def removexattr(self, path: str, name: str) -> None:
        if name.startswith(("security.", "system.")):
            raise NoAttribute(name)
        raise NotPermitted(f"{name} cannot be removed")

    # -------------------------------------------------------------------- the rest

    def statfs(self) -> dict[str, int]:
        disk = os.statvfs(self.options.staging_dir)
        return {
            "f_bsize": disk.f_bsize, "f_frsize": disk.f_frsize, "f_blocks": disk.f_blocks,
            "f_bfree": max(disk.f_bfree, 1), "f_bavail": max(disk.f_bavail, 1),
            "f_files": 1 << 20, "f_ffree": 1 << 20, "f_favail": 1 << 20, "f_namemax": 255,
        }

    def refresh(self) -> None:
        """Drop every listing now (``pictofs refresh``, SIGHUP)."""
        views = [self._single] if self._single else list(self._views.values())
        for view in views:
            if view is not None:
                view.forget()
        with self._lock:
            self._datasets_at = -1e18
        log.info("listing cache dropped")

    def mkdir(self, path: str) -> None:
        """In an organization mount, ``mkdir /name`` creates a dataset."""
        if self._single is None and path.count("/") == 1:
            name = path[1:]
            check_name(name)
            if name in self._dataset_views():
                raise AlreadyExists(name)
            self.remote.create_dataset(name)
            with self._lock:
                self._datasets_at = -1e18
            return
        raise self._read_only("mkdir")

    # Until the write side lands (journaled uploads), every change but creating a dataset
    # in an organization mount answers EROFS, as a read-only mount does.

    def _read_only(self, what: str) -> ReadOnly:
        return ReadOnly(f"{what}: this mount is read-only")

    def create(self, path: str, flags: int) -> int:
        raise self._read_only("create")

    def write(self, fh: int, data: bytes, offset: int) -> int:
        raise self._read_only("write")

    def truncate(self, path: str | None, length: int, fh: int | None) -> None:
        raise self._read_only("truncate")

    def unlink(self, path: str) -> None:
        raise self._read_only("unlink")

    def rmdir(self, path: str) -> None:
        if self._single is None and path.count("/") == 1:
            raise NotPermitted("a dataset directory cannot be removed through the mount")
        raise self._read_only("rmdir")

    def rename(self, old: str, new: str) -> None:
        if self._single is None and old.count("/") == 1:
            raise NotPermitted("a dataset directory cannot be renamed through the mount")
        raise self._read_only("rename")

    def utimens(self, path: str | None, times: Any) -> None:
        raise self._read_only("utimens")

    def status(self) -> dict[str, Any]:
        with self._lock:
            downloaders = list(self._downloaders.values())
            counters = self.counters
            open_files = len(self._handles)
        stats = [d.cache.stats() for d in downloaders]
        cache = [{**dataclasses.asdict(s), "hit_ratio": s.hit_ratio} for s in stats]
        return {
            "open_files": open_files,
            "opens": counters.opens,
            "reads": counters.reads,
            "bytes_read": counters.bytes_read,
            "cache": cache,
        }


def _join(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name
