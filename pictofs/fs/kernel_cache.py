"""The kernel's entry and attribute cache, kept as fresh as the listing cache (filesystem §3).

With ``--dir-cache-time`` above 1 s the kernel keeps the names and attributes the daemon
hands out for the whole ``--dir-cache-time`` (set in ``init``), so a second ``stat`` of a
name makes no round trip into the daemon. libfuse's high-level API has one timeout for all
entries, so freshness is kept by taking answers back instead: every path whose attributes
the daemon hands out is recorded with a deadline, the moment the daemon's own answer for it
stops being fresh (``Vfs`` works it out: the listing's age, or 1 s for this mount's pending
files, as the kernel's timeout was before), and at that deadline ``KernelCache`` takes it
back: the attributes and pages of its node (``fuse_invalidate_path``) and its dentry, marked
expired (``fuse_lowlevel_notify_expire_entry``), so the next ``stat``, ``open`` or create of
the name asks the daemon again. It also takes back:

- every recorded path at once on ``pictofs refresh`` and SIGHUP (``forget_all``, called from
  the control or signal thread after the listings were dropped);
- what this mount changed behind the kernel's back (the image an upload stored, an orphan
  archived by its timer, attributes applied after a register): ``forget_soon``, which a
  worker thread serves, since the callers may be inside a FUSE callback or hold locks a
  FUSE callback waits for. ``settle`` waits for that work (``pictofs sync`` and ``status``).
  A pending file's own name is taken back 1 s after it was handed out, so one the service
  stored under another name (HEIC → PNG) is gone from the kernel by then, as before.

Deadlocks: the kernel side of taking back may wait for the parent folder's lock (expiring a
dentry) or a page lock (dropping pages), held by a process whose request a FUSE thread is
serving, so it is never done from a FUSE callback, nor while holding a lock a callback may
take: only from the worker, the control thread and the SIGHUP thread.

A path renamed through the mount keeps its deadline under its new name (``renamed``): the
kernel moved its dentry and kept its attributes.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

from pictofs.core.vfs_control import KernelNotes

log = logging.getLogger(__name__)

# Kernel timeouts of at most this many seconds are left as they were: min(1 s,
# --dir-cache-time) for everything, nothing recorded.
SHORT_TIMEOUT = 1.0
EXPIRE_ONLY_MINOR = 36  # FUSE protocol 7.36: FUSE_EXPIRE_ONLY
ROOT_ID = 1  # FUSE_ROOT_ID; libfuse reports node ids as inode numbers (no use_ino)


def kernel_timeouts(dir_cache_time: float) -> tuple[float, float]:
    """(entry and attribute timeout, negative timeout) the kernel gets once ``KernelCache``
    runs: ``--dir-cache-time`` for names and attributes (taken back when they stop being
    fresh), and min(1 s, ``--dir-cache-time``) for "not there", which nothing takes back."""
    short = min(SHORT_TIMEOUT, dir_cache_time)
    return (dir_cache_time if takes_back(dir_cache_time) else short), short


def takes_back(dir_cache_time: float) -> bool:
    """Whether the mount hands out long kernel timeouts and takes answers back."""
    return dir_cache_time > SHORT_TIMEOUT


class KernelCache(KernelNotes):
    """Deadlines of what the kernel holds, and the thread that takes it back."""

    active = True

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # _lock guards _deadline, _folders, _heap, _soon, the sequences and _closed.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._deadline: dict[str, float] = {}  # path → earliest deadline not yet served
        # paths handed out as folders (kept past their deadline: a folder renamed later
        # carries what is recorded under it)
        self._folders: set[str] = set()
        self._heap: list[tuple[float, int, list[str]]] = []
        self._soon: list[tuple[int, list[str]]] = []  # (sequence, paths) to forget now
        self._seq = itertools.count(1)
        self._queued_seq = 0  # the last _soon item queued
        self._done_seq = 0  # every _soon item up to this one is served
        self._closed = False
        # _calls is held while calling into libfuse, so close() waits for a call under way
        self._calls = threading.Lock()
        self._fuse: ctypes.c_void_p | None = None
        self._session: ctypes.c_void_p | None = None
        self._mountpoint = ""
        self._invalidate: Any = None
        self._expire: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ set-up

    def attach(self, libfuse: ctypes.CDLL, fuse_pointer: int | None, mountpoint: str,
               proto_minor: int) -> bool:
        """Bind to the mount's ``struct fuse`` (read in ``init``, in a FUSE thread: the
        context is per thread) and start the worker; False if that is not possible: the
        kernel must know ``FUSE_EXPIRE_ONLY`` (protocol 7.36, Linux 6.2), and libfuse must
        offer ``fuse_invalidate_path`` and ``fuse_lowlevel_notify_expire_entry`` (3.12)."""
        if not fuse_pointer or proto_minor < EXPIRE_ONLY_MINOR:
            return False
        try:
            invalidate = libfuse.fuse_invalidate_path
            expire = libfuse.fuse_lowlevel_notify_expire_entry
            get_session = libfuse.fuse_get_session
        except AttributeError:
            return False
        invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        invalidate.restype = ctypes.c_int
        get_session.argtypes = [ctypes.c_void_p]
        get_session.restype = ctypes.c_void_p
        expire.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
        expire.restype = ctypes.c_int
        self._invalidate = invalidate
        self._expire = expire
        self._fuse = ctypes.c_void_p(fuse_pointer)
        self._session = ctypes.c_void_p(get_session(self._fuse))
        self._mountpoint = mountpoint.rstrip("/")
        self._thread = threading.Thread(target=self._run, name="pictofs-kernel-cache",
                                        daemon=True)
        self._thread.start()
        return True

    def close(self) -> None:
        """At unmount: stop, and never call libfuse again."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        # a call under way may wait for the kernel, which may wait for a request the
        # ending loop no longer serves: wait a little, then drop the pointer regardless
        got = self._calls.acquire(timeout=5)
        self._fuse = None
        if got:
            self._calls.release()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- recording

    def handed_out(self, path: str, delay: float, is_dir: bool = False) -> None:
        """The kernel got ``path``'s attributes, to be taken back in ``delay`` seconds."""
        deadline = self.clock() + max(0.0, delay)
        with self._lock:
            known = self._deadline.get(path)
            if is_dir:
                self._folders.add(path)
            if known is not None and known <= deadline:
                return
            self._deadline[path] = deadline
            self._push(deadline, [path])

    def handed_out_many(self, paths: list[str], delay: float) -> None:
        """Files of one listing, all with one deadline (``readdir``)."""
        if not paths:
            return
        deadline = self.clock() + max(0.0, delay)
        with self._lock:
            table = self._deadline
            added = []
            for path in paths:
                known = table.get(path)
                if known is None or known > deadline:
                    table[path] = deadline
                    added.append(path)
            if added:
                self._push(deadline, added)

    def _push(self, deadline: float, paths: list[str]) -> None:
        first = not self._heap or deadline < self._heap[0][0]
        heapq.heappush(self._heap, (deadline, next(self._seq), paths))
        if first:
            self._wake.notify()

    def renamed(self, old: str, new: str) -> None:
        """``old`` was renamed to ``new`` through the mount: the kernel moved the dentry
        (and, for a folder, everything under it) with its attributes."""
        with self._lock:
            moves = [(old, new)]
            if old in self._folders:
                prefix = old + "/"
                moves += [(p, new + p[len(old):]) for p in self._deadline if p.startswith(prefix)]
            for source, target in moves:
                deadline = self._deadline.pop(source, None)
                if source in self._folders:
                    self._folders.discard(source)
                    self._folders.add(target)
                if deadline is None:
                    continue
                known = self._deadline.get(target)
                if known is None or known > deadline:
                    self._deadline[target] = deadline
                    self._push(deadline, [target])

    # ---------------------------------------------------------------- taking back

    def forget_soon(self, paths: Iterable[str]) -> None:
        """Take these paths back now, from the worker (safe inside a FUSE callback)."""
        paths = list(paths)
        if not paths:
            return
        with self._lock:
            self._queue_soon(paths)

    def _queue_soon(self, paths: list[str]) -> None:
        self._queued_seq = next(self._seq)
        self._soon.append((self._queued_seq, paths))
        self._wake.notify()

    def forget_under_soon(self, folder: str) -> None:
        """Take back ``folder`` and every recorded path under it, from the worker."""
        prefix = folder + "/"
        with self._lock:
            self._queue_soon([folder] + [p for p in self._deadline if p.startswith(prefix)])

    def forget_all(self) -> None:
        """Take back everything the kernel may hold, before returning (``refresh``; never
        from a FUSE callback)."""
        with self._lock:
            paths = list(self._deadline)
            self._deadline.clear()
            self._folders.clear()
            self._heap.clear()
        self._call(paths)

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until what ``forget_soon`` was given before this call has been served."""
        with self._lock:
            target = self._queued_seq
            end = self.clock() + timeout
            while self._done_seq < target and not self._closed:
                left = end - self.clock()
                if left <= 0:
                    log.warning("kernel cache: invalidations still queued after %.0f s",
                                timeout)
                    return
                self._wake.wait(left)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._soon and not self._due():
                    wait = self._heap[0][0] - self.clock() if self._heap else None
                    self._wake.wait(wait)
                if self._closed:
                    return
                soon, self._soon = self._soon, []
                paths = [p for _seq, batch in soon for p in batch]
                paths += self._take_due()
            self._call(paths)
            if soon:
                with self._lock:
                    self._done_seq = max(self._done_seq, soon[-1][0])
                    self._wake.notify_all()

    def _due(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= self.clock()

    def _take_due(self) -> list[str]:
        now = self.clock()
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _deadline, _seq, paths = heapq.heappop(self._heap)
            for path in paths:
                deadline = self._deadline.get(path)
                if deadline is not None and deadline <= now:
                    del self._deadline[path]
                    due.append(path)
        return due

    def _call(self, paths: list[str]) -> None:
        """For each path: the kernel's attributes (and page cache) of its node
        (``fuse_invalidate_path``; -ENOENT when libfuse holds no node for it: nothing to take
        back), then its dentry marked expired, so the next use of the name asks the daemon
        again (``FUSE_EXPIRE_ONLY``: the dentry stays in place if the answer is the same,
        so a shell whose working folder it is keeps it)."""
        if not paths:
            return
        parents: dict[str, int | None] = {"/": ROOT_ID}
        with self._calls:
            for path in paths:
                fuse, session = self._fuse, self._session
                if fuse is None:
                    return
                self._invalidate(fuse, _raw(path))
                parent, _, name = path.rpartition("/")
                parent = parent or "/"
                if parent not in parents:
                    parents[parent] = self._node_id(parent)
                node = parents[parent]
                if node is not None and name:
                    raw = _raw(name)
                    self._expire(session, node, raw, len(raw))

    def _node_id(self, folder: str) -> int | None:
        """The node id of a folder: its inode number as the mount reports it (libfuse's
        high-level API numbers inodes by node id); None if it is gone. A ``stat`` through
        the mount, from this thread (never a FUSE callback)."""
        try:
            return os.lstat(self._mountpoint + folder).st_ino
        except OSError:
            return None


def _raw(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")
