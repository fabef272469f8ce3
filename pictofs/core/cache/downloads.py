"""Reading images (filesystem spec §4): from the cache when complete, else from one shared
background stream per image that fills the cache while readers read what has arrived.

This module owns the in-flight downloads of one mount. Rules:

- ``open`` never waits for the whole image; ``Reader.read(offset, size)`` blocks only until
  that range has arrived (or the stream failed).
- One stream per image id: readers opened while it runs share it.
- When the last reader closes before half the image has arrived, the download is cancelled
  and its partial file dropped; from half on it completes into the cache.
- Readers are woken as soon as a chunk is written, before it is hashed.
- A stream cut short after bytes arrived is asked again (up to ``_RESUMES`` times) and the
  bytes already received are skipped: the bytes of an image id never change. The transport
  itself retries a cut inside the first chunk, before anything was handed over.
- A stream that fails, ends early or delivers more than the expected size is never cached;
  readers of ranges that did not arrive get the error (``Unavailable`` or what the remote
  raised) and the next ``open`` starts a new download.
- If the cache file cannot be written, the bytes are kept in memory (an image is at most
  50 MB) for the readers of this download, so a full cache disk never fails a read.

Read-ahead (``pictofs.core.cache.readahead`` decides which images): an open made with its path
may start downloads of the next images of its folder with no reader yet. Such a download
(``ahead``) holds no pin of its own (only the cache writer's, while it writes), is never
cancelled by a reader leaving, and is only inserted into the cache if it fits under the cap
(``commit(within_cap=True)``; with ``unread`` when no reader attached, so the cache
evicts it last). Just before its request, it is dropped when nobody has opened the image
meanwhile and the service is unreachable, memory is low, or the cache has no room for it
next to what is pinned, downloading, or fetched ahead and unread; it is also dropped, not
kept in memory, when its cache file cannot be written. A reader opening the image attaches
to it as to any download; one opening it after it was dropped starts a new one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from typing import BinaryIO, Callable, Protocol

from pictofs.core.cache.store import CacheWriteFailed, CacheWriter, ImageCache
from pictofs.core.cache.readahead import (DOWNLOAD_THREADS, FAR_LATENCY, MAX_IMAGE_BYTES,
                                          NEAR_DEEPEST, ReadAhead, memory_low)
from pictofs.errors import CutShort, PictofsError, Unavailable
from pictofs.model import Image
from pictofs.remote import Remote

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 16  # downloads whose wait for an answer tells the service's distance

_OPEN_ATTEMPTS = 3
_RESUMES = 2  # new requests for a stream cut short after bytes arrived


class Reader(ABC):
    """An open image. ``read`` may be called from several threads; ``close`` once, last.
    ``from_cache`` tells whether it reads a complete cache entry (no request).

    A reader opened with a path reports, once, when it has been read through (a read at
    offset 0 and at least the image's size in bytes served, in any order: the kernel's
    read-ahead requests may be answered out of order), for the read-ahead's detection."""

    image_id: str
    from_cache: bool
    _on_read_through: Callable[[], None] | None = None
    _size = 0
    _served = 0
    _from_start = False
    _track_lock: threading.Lock | None = None

    def watch_read_through(self, size: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the reader has served the whole image from offset 0."""
        self._size = size
        self._track_lock = threading.Lock()
        self._on_read_through = callback

    def _note_served(self, offset: int, count: int) -> None:
        if self._track_lock is None or not count:
            return
        with self._track_lock:
            callback = self._on_read_through
            if callback is None:
                return
            self._served += count
            self._from_start = self._from_start or offset == 0
            if not (self._from_start and self._served >= self._size):
                return
            self._on_read_through = None
        callback()

    @abstractmethod
    def read(self, offset: int, size: int) -> bytes:
        """The bytes at ``offset`` (fewer at the end of the image); blocks until they
        arrived, raises the download's error when they never will."""

    @abstractmethod
    def close(self) -> None:
        """Release the reader (idempotent)."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Store(Protocol):
    """Where a download's bytes go: a cache file (``CacheWriter``) or memory."""

    def write(self, chunk: bytes) -> None: ...
    def hash_written(self) -> None: ...
    def read(self, offset: int, size: int) -> bytes: ...
    def close(self) -> None: ...


class _MemoryStore:
    """The bytes of one download in memory, used when the cache file cannot be written."""

    def __init__(self, initial: bytes = b"") -> None:
        self._buffer = bytearray(initial)

    def write(self, chunk: bytes) -> None:
        self._buffer += chunk

    def hash_written(self) -> None:
        pass  # nothing to hash: memory is never cached

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._buffer[offset:offset + size])

    def close(self) -> None:
        self._buffer = bytearray()


class _Download:
    """One stream of one image, shared by its readers. The stream runs in one worker thread,
    which alone writes to the store; readers wait on the condition for their range."""

    def __init__(self, image_id: str, expected_size: int, ahead: bool = False) -> None:
        self.image_id = image_id
        self.expected_size = expected_size
        self.ahead = ahead  # started by read-ahead, not by a reader (see the module doc)
        self._answered = False  # a request was answered (only the worker thread uses it)
        self._had_reader = False  # guarded by _cond
        # guards every field below: progress, outcome, reader count and the stores
        self._cond = threading.Condition()
        self._arrived = 0
        self._readers = 0
        self._cancelled = False
        self._finished = False
        self._released = False
        self._error: BaseException | None = None
        self._store: _Store = _MemoryStore()
        self._writer: CacheWriter | None = None
        self._retired: list[_Store] = []

    # -- readers -----------------------------------------------------------------------------

    def attach(self) -> bool:
        """Add a reader; False when the download is cancelled (start a new one)."""
        with self._cond:
            if self._cancelled:
                return False
            self._readers += 1
            self._had_reader = True
            return True

    def detach(self) -> bool:
        """Remove a reader; True when that cancelled the download (the caller forgets it)."""
        with self._cond:
            self._readers -= 1
            if self._readers > 0:
                return False
            if self._finished:
                self._release()
                return False
            if self.ahead or self._arrived * 2 >= self.expected_size:
                return False
            self._cancelled = True
            self._cond.notify_all()
            return True

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.expected_size)
        if offset >= end:
            return b""
        with self._cond:
            while self._arrived < end and not self._done():
                self._cond.wait()
            if self._arrived < end:
                raise self._error or Unavailable(f"image {self.image_id}: download stopped")
            store = self._store
        # a replaced store stays open until release, so reading outside the lock is safe
        return store.read(offset, end - offset)

    def has_readers(self) -> bool:
        with self._cond:
            return self._readers > 0

    def never_opened(self) -> bool:
        """No reader has attached so far (a read-ahead nobody has opened yet)."""
        with self._cond:
            return not self._had_reader

    def nothing_arrived(self) -> bool:
        """Whether the stream is still waiting for its first byte."""
        with self._cond:
            return self._arrived == 0 and not self._finished

    def drop_if_unread(self) -> bool:
        """Cancel the download if no reader is attached (a read-ahead that is not wanted any
        more); True when it was cancelled. A reader attaching afterwards starts a new one."""
        with self._cond:
            if self._readers:
                return False
            self._cancelled = True
            self._cond.notify_all()
            return True

    def abort(self, error: BaseException) -> None:
        """Stop the download and fail readers still waiting (shutdown)."""
        with self._cond:
            self._cancelled = True
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    # -- the stream (worker thread) ----------------------------------------------------------

    def stream(self, remote: Remote, cache: ImageCache,
               on_answer: Callable[[float], None] = lambda seconds: None) -> None:
        """Receive the bytes into the store (the cache's entry, else memory); ``on_answer``
        hears how long the first request waited for its answer, as soon as it came."""
        if self._is_cancelled():
            return
        try:
            self._open_store(cache)
            if self.ahead and self._writer is None and self.drop_if_unread():
                return  # read-ahead goes to the cache or nowhere, never to memory
            resumes = 0
            while True:
                try:
                    self._receive(remote, on_answer)
                    break
                except CutShort as exc:
                    if resumes == _RESUMES or self._arrived == 0 or self._is_cancelled():
                        raise
                    resumes += 1
                    log.info("download of image %s cut short after %d bytes (%s); asking "
                             "again", self.image_id, self._arrived, exc)
            self._settle()
        except Exception as exc:  # any failure of the remote must reach the readers
            self._fail(exc)

    def _receive(self, remote: Remote, on_answer: Callable[[float], None]) -> None:
        """One request for the bytes, skipping those that arrived before (a resume); the
        first one tells ``on_answer`` how long the service took to answer."""
        skip = self._arrived  # only this worker thread changes it
        asked = time.monotonic()
        with remote.open_bytes(self.image_id) as chunks:
            if not self._answered:
                self._answered = True
                on_answer(time.monotonic() - asked)
            for chunk in chunks:
                if self._is_cancelled():
                    break
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                if chunk:
                    self._accept(chunk)

    def finish(self) -> None:
        """The worker is done: wake every reader; release now if none is left."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()
            if self._readers == 0:
                self._release()

    def _open_store(self, cache: ImageCache) -> None:
        try:
            writer = cache.begin(self.image_id)
        except CacheWriteFailed:
            return  # logged by the cache; the memory store stays
        with self._cond:
            self._writer = writer
            self._store = writer

    def _accept(self, chunk: bytes) -> None:
        if self._arrived + len(chunk) > self.expected_size:
            raise Unavailable(f"image {self.image_id}: the stream is longer than the expected "
                              f"{self.expected_size} bytes")
        store = self._store
        try:
            store.write(chunk)
        except CacheWriteFailed:
            self._to_memory(chunk)
            store = self._store
            if self.ahead:
                self.drop_if_unread()  # nobody to keep these bytes in memory for
        with self._cond:
            self._arrived += len(chunk)
            self._cond.notify_all()
        store.hash_written()  # after the readers were woken

    def _to_memory(self, chunk: bytes) -> None:
        """The cache file failed (logged by the cache): go on in memory."""
        writer = self._writer
        assert writer is not None
        memory = _MemoryStore(writer.read(0, self._arrived))
        memory.write(chunk)
        with self._cond:
            self._retired.append(writer)
            self._store = memory
            self._writer = None

    def _settle(self) -> None:
        if self._is_cancelled():
            self._drop_partial()
            log.debug("download of image %s cancelled at %d of %d bytes", self.image_id,
                      self._arrived, self.expected_size)
            return
        if self._arrived < self.expected_size:
            raise Unavailable(f"image {self.image_id}: the stream ended after "
                              f"{self._arrived} of {self.expected_size} bytes")
        if self._writer is not None:
            with self._cond:
                unread = self.ahead and not self._had_reader
            self._writer.commit(within_cap=self.ahead, unread=unread)

    def _fail(self, error: Exception) -> None:
        if isinstance(error, PictofsError):
            log.warning("download of image %s failed: %s", self.image_id, error)
        else:
            log.error("download of image %s failed", self.image_id, exc_info=error)
        self._drop_partial()
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _drop_partial(self) -> None:
        if self._writer is not None:
            self._writer.discard()

    # -- helpers (callers hold the condition where noted) ------------------------------------

    def _is_cancelled(self) -> bool:
        with self._cond:
            return self._cancelled

    def _done(self) -> bool:
        """Nothing more will arrive (condition held)."""
        return self._finished or self._cancelled or self._error is not None

    def _release(self) -> None:
        """Close the stores once no reader and no worker needs them (condition held)."""
        if self._released:
            return
        self._released = True
        for store in [*self._retired, self._store]:
            store.close()
        self._retired.clear()


class _CachedReader(Reader):
    """A complete cache entry: reads go to the data file, no request."""

    def __init__(self, cache: ImageCache, image_id: str, handle: BinaryIO) -> None:
        self.image_id = image_id
        self.from_cache = True
        self._cache = cache
        self._handle = handle

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._handle.fileno(), size, offset)
        self._note_served(offset, len(data))
        return data

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.close()
        self._cache.unpin(self.image_id, linger=True)


class _StreamReader(Reader):
    """A reader of a download in progress (or just finished)."""

    def __init__(self, downloader: Downloader, download: _Download) -> None:
        self.image_id = download.image_id
        self.from_cache = False
        self._downloader = downloader
        self._download = download
        self._closed = False

    def read(self, offset: int, size: int) -> bytes:
        if self._closed:
            raise ValueError("read of a closed reader")
        data = self._download.read(offset, size)
        self._note_served(offset, len(data))
        return data

    def waits_on_read_ahead(self) -> bool:
        """Whether this reader caught up with a read-ahead download that has not received
        its first byte yet (the read-ahead was not deep enough for the latency)."""
        return self._download.ahead and self._download.nothing_arrived()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._downloader._detach(self._download)


class Downloader:
    """Opens images for reading; owns the in-flight downloads of one mount.

    ``read_ahead``: the read-ahead policy (None: none); ``is_online`` tells whether the
    service is believed reachable (the circuit breaker is closed): read-ahead sends nothing
    while it is not."""

    def __init__(self, cache: ImageCache, remote: Remote, executor: Executor | None = None,
                 *, max_workers: int = DOWNLOAD_THREADS, read_ahead: ReadAhead | None = None,
                 is_online: Callable[[], bool] = lambda: True) -> None:
        self._cache = cache
        self._remote = remote
        self._read_ahead = read_ahead if read_ahead is not None and read_ahead.depth else None
        self._is_online = is_online
        # read-ahead without a reader may hold half the workers at most (the rest stay free
        # for the images readers open), and close by no more than NEAR_DEEPEST
        self._ahead_cap = max(1, max_workers // 2)
        # the seconds the last LATENCY_SAMPLES downloads waited for their answer: their
        # least is the service's distance (a busy service makes some wait longer, never all)
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="pictofs-download")
        # guards _downloads (image id → its running download) and _futures (workers started)
        self._lock = threading.Lock()
        self._downloads: dict[str, _Download] = {}
        self._futures: set[Future[None]] = set()

    @property
    def cache(self) -> ImageCache:
        return self._cache

    def open(self, image_id: str, expected_size: int, path: str | None = None) -> Reader:
        """Open an image of ``expected_size`` bytes; returns at once, reading from the cache
        when it holds the image and from a (shared) download otherwise. ``path`` (inside the
        dataset) is given by opens of a program reading the mount: it feeds the read-ahead,
        which may start downloads of the next images of the folder."""
        self._cache.pin(image_id)
        try:
            reader = self._open_pinned(image_id, expected_size)
        except BaseException:
            self._cache.unpin(image_id)
            raise
        read_ahead = self._read_ahead
        if read_ahead is not None and path is not None:
            caught_up = isinstance(reader, _StreamReader) and reader.waits_on_read_ahead()
            reader.watch_read_through(expected_size,
                                      lambda: read_ahead.note_read_through(path))
            far = self._far()
            ahead = read_ahead.images_after(path, caught_up, far)
            if ahead:
                self._fetch_ahead(ahead, far)
            elif swept := read_ahead.sweep_after(path, far):
                handled, started = self._fetch_ahead(swept, far)
                read_ahead.swept(path, swept[:handled], started)
        return reader

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every download started so far has ended; False on timeout."""
        with self._lock:
            pending = set(self._futures)
        _done, not_done = wait(pending, timeout)
        return not not_done

    def close(self, timeout: float | None = None) -> None:
        """Stop every download (their waiting readers get ``Unavailable``) and wait for the
        workers; shuts down the executor when the downloader made it."""
        with self._lock:
            downloads = list(self._downloads.values())
        for download in downloads:
            download.abort(Unavailable("pictofs is shutting down"))
        self.wait(timeout)
        if self._own_executor:
            self._executor.shutdown(wait=False)

    def _open_pinned(self, image_id: str, expected_size: int) -> Reader:
        for attempt in range(_OPEN_ATTEMPTS):
            handle = self._cache.open_cached(image_id)
            if handle is not None:
                return _CachedReader(self._cache, image_id, handle)
            with self._lock:
                download = self._downloads.get(image_id)
                if download is not None and download.attach():
                    return _StreamReader(self, download)
                # a download may have completed into the cache since our look-up
                if attempt == _OPEN_ATTEMPTS - 1 or not self._cache.contains(image_id):
                    download = self._register(image_id, expected_size)
                    break
        self._submit(download)
        return _StreamReader(self, download)

    def _note_latency(self, seconds: float) -> None:
        """A download's first request was answered after ``seconds`` (a worker thread)."""
        with self._lock:
            self._latencies.append(seconds)

    def _far(self) -> bool:
        """Whether the service is far away: even the quickest of the last downloads waited
        ``FAR_LATENCY`` or more for its answer."""
        with self._lock:
            return bool(self._latencies) and min(self._latencies) >= FAR_LATENCY

    def _fetch_ahead(self, images: list[Image], far: bool = False) -> tuple[int, int]:
        """Start downloads of ``images`` with no reader (read-ahead), skipping those too big,
        cached or already downloading, up to twice the pass's depth unread at a time and
        never more than half the workers. Runs in the
        open that triggered it, so it must stay cheap: a file check per image; what needs
        the index or the disk waits for the worker (``_why_not_ahead``). Returns how many
        of ``images`` it dealt with (started or skipped) before it stopped, and how many
        downloads it started."""
        assert self._read_ahead is not None
        cap = self._ahead_cap if far else min(self._ahead_cap, NEAR_DEEPEST)
        limit = min(2 * max(self._read_ahead.depth, len(images)), cap)
        started = 0
        for handled, image in enumerate(images):
            if not 0 < image.file_size <= MAX_IMAGE_BYTES or self._cache.has_file(image.id):
                continue
            with self._lock:
                # the look at the cache above is stale if a download of the image ended
                # since: it inserts before it leaves the table, so look again in here
                if image.id in self._downloads or self._cache.has_file(image.id):
                    continue
                unread = sum(1 for d in self._downloads.values()
                             if d.ahead and d.never_opened())
                if unread >= limit:
                    return handled, started
                download = _Download(image.id, image.file_size, ahead=True)
                self._downloads[image.id] = download
            log.debug("read-ahead: fetching %s (image %s)", image.path, image.id)
            try:
                self._submit(download)
            except Unavailable:  # shutting down
                return handled, started
            started += 1
        return len(images), started

    def _why_not_ahead(self, download: _Download) -> str | None:
        """Why a read-ahead download should not be sent now (None: send it): checked in the
        worker, just before the request."""
        if not self._is_online():
            return "the service is unreachable"
        if memory_low():
            return "memory is low"
        with self._lock:
            busy = sum(d.expected_size for d in self._downloads.values() if d is not download)
        return self._cache.no_room_ahead(download.expected_size, busy)

    def _register(self, image_id: str, expected_size: int) -> _Download:
        """A new download with one reader, in the table (lock held)."""
        download = _Download(image_id, expected_size)
        download.attach()
        self._downloads[image_id] = download
        return download

    def _submit(self, download: _Download) -> None:
        try:
            future = self._executor.submit(self._run, download)
        except RuntimeError:  # the executor is shut down
            with self._lock:
                if self._downloads.get(download.image_id) is download:
                    del self._downloads[download.image_id]
            raise Unavailable("pictofs is shutting down") from None
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget_future)

    def _run(self, download: _Download) -> None:
        try:
            if download.ahead and not download.has_readers():
                reason = self._why_not_ahead(download)
                if reason is not None and download.drop_if_unread():
                    log.debug("read-ahead: not fetching image %s: %s", download.image_id,
                              reason)
                    return
            download.stream(self._remote, self._cache, self._note_latency)
        finally:
            with self._lock:
                if self._downloads.get(download.image_id) is download:
                    del self._downloads[download.image_id]
            download.finish()

    def _detach(self, download: _Download) -> None:
        with self._lock:
            if download.detach() and self._downloads.get(download.image_id) is download:
                del self._downloads[download.image_id]
        self._cache.unpin(download.image_id)

    def _forget_future(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
