"""The kernel's entry and attribute cache, kept as fresh as the listing cache (filesystem §3).

With ``--dir-cache-time`` above 1 s the kernel keeps the names and attributes the daemon
hands out for the whole ``--dir-cache-time`` (set in ``init``), so a second ``stat`` of a
name makes no round trip into the daemon. libfuse's high-level API has one timeout for all
entries, so freshness is kept by taking answers back instead: the adapter records, for every
answer it hands out, when that answer stops being fresh (``Vfs.stat_and_validity`` and
``readdir_with_validity`` say it) (the listing's age, or 1 s for this
mount's pending files, as the kernel's timeout was before), and at the earliest such
deadline ``KernelCache`` takes back *every* name the kernel holds at once, by raising the
connection's epoch (``FUSE_NOTIFY_INC_EPOCH``, Linux 6.16, FUSE protocol 7.44). A name
looked up before the raise is then asked again at its next use (a LOOKUP, which also brings
its attributes back up to date); the root folder's own attributes, which no name stands
for, are dropped with ``fuse_lowlevel_notify_inval_inode`` (node id 1, attributes only).
It also takes everything back:

- at once on ``pictofs refresh`` and SIGHUP (``forget_all``, called from the control or
  signal thread after the listings were dropped);
- soon after this mount changed something behind the kernel's back (the image an upload
  stored, an orphan archived by its timer, attributes applied after a register):
  ``forget_soon``, which the worker thread serves, since the callers may be inside a FUSE
  callback or hold locks a FUSE callback waits for. ``settle`` waits for that work
  (``pictofs sync`` and ``status``).

Why the whole mount and not name by name: taking back one name
(``fuse_lowlevel_notify_expire_entry``) needs its folder's node id, which the high-level API
never gives (reading it means a request through the mount), and the kernel serves it under
the folder's inode lock. A daemon killed while its thread waits for either can never exit:
the thread sleeps uninterruptibly, keeps ``/dev/fuse`` open, and the connection is never
aborted. Raising the epoch takes no lock and needs no node id, so the writes here never
wait for a request and a killed daemon always goes away. The cost is that a deadline takes
back every name, not only the one that expired: on a mount that keeps changing this comes
close to the 1 s timeouts of before, and a quiet mount keeps its names for
``--dir-cache-time``.

READDIRPLUS: the kernel stamps the names of a listing page with the epoch current when it
reads the reply, which may be after a raise if the page was answered just before it. So a
page is sent with its attributes only while the epoch is the one its rows were worked out
under (``generation``, ``plus_allowed``), and a raise that may have crossed a page in
flight is followed by a second one a second later (``FOLLOW_UP``).
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import os
import struct
import threading
import time
from typing import Any, Callable, Iterable

from pictofs.core.tree.vfs import ChangeListener

log = logging.getLogger(__name__)

# Kernel timeouts of at most this many seconds are left as they were: min(1 s,
# --dir-cache-time) for everything, nothing recorded.
SHORT_TIMEOUT = 1.0
INC_EPOCH_MINOR = 44  # FUSE protocol 7.44 (Linux 6.16): FUSE_NOTIFY_INC_EPOCH
FUSE_NOTIFY_INC_EPOCH = 8
# struct fuse_out_header {len, error, unique}: a notification has unique 0 and its code
# in ``error``; raising the epoch carries nothing else
INC_EPOCH_MESSAGE = struct.pack("<IiQ", 16, FUSE_NOTIFY_INC_EPOCH, 0)
ROOT_ID = 1  # FUSE_ROOT_ID
# deadlines this close together are served by one raise (early by at most this much)
COALESCE = 0.02
# at most one raise per this many seconds for ``forget_soon`` (a burst of uploads)
SOON_INTERVAL = 0.05
# a second raise this long after one that a READDIRPLUS page may have crossed
FOLLOW_UP = 1.0


def kernel_timeouts(dir_cache_time: float) -> tuple[float, float]:
    """(entry and attribute timeout, negative timeout) the kernel gets once ``KernelCache``
    runs: ``--dir-cache-time`` for names and attributes (taken back when they stop being
    fresh), and min(1 s, ``--dir-cache-time``) for "not there", which the daemon records
    nowhere (a raise of the epoch takes it back too)."""
    short = min(SHORT_TIMEOUT, dir_cache_time)
    return (dir_cache_time if takes_back(dir_cache_time) else short), short


def takes_back(dir_cache_time: float) -> bool:
    """Whether the mount hands out long kernel timeouts and takes answers back."""
    return dir_cache_time > SHORT_TIMEOUT


class KernelCache(ChangeListener):
    """Deadlines of what the kernel holds, and the thread that takes it all back."""

    active = True

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # _lock guards every field below but the libfuse handles
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[float] = []  # deadlines, earliest first
        self._queued: set[float] = set()  # the same, to skip repeats
        self._soon_seq = 0  # the last ``forget_soon`` asked
        self._done_seq = 0  # every ``forget_soon`` up to this one is served
        self._last_raise = -1e18
        # the epoch as this daemon counts it: raised once per take-back
        self.generation = 0
        # (generation, time) of the last listing page sent with attributes
        self._plus: tuple[int, float] = (-1, -1e18)
        self.raises = 0  # how many take-backs were sent (``status``, tests)
        self._closed = False
        # _calls is held while writing to the kernel, so close() waits for a write under way
        # (none ever waits for a request: see the module's docstring)
        self._calls = threading.Lock()
        self._fd: int | None = None
        self._session: ctypes.c_void_p | None = None
        self._inval_inode: Any = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ set-up

    def attach(self, libfuse: ctypes.CDLL, fuse_pointer: int | None, proto_minor: int) -> bool:
        """Bind to the mount's session (``fuse_pointer`` is read in ``init``, in a FUSE
        thread: the context is per thread) and start the worker; False if that is not
        possible: the kernel must know ``FUSE_NOTIFY_INC_EPOCH`` (protocol 7.44)."""
        if not fuse_pointer or proto_minor < INC_EPOCH_MINOR:
            return False
        try:
            get_session = libfuse.fuse_get_session
            session_fd = libfuse.fuse_session_fd
            inval_inode = libfuse.fuse_lowlevel_notify_inval_inode
        except AttributeError:
            return False
        get_session.argtypes = [ctypes.c_void_p]
        get_session.restype = ctypes.c_void_p
        session_fd.argtypes = [ctypes.c_void_p]
        session_fd.restype = ctypes.c_int
        inval_inode.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64,
                                ctypes.c_int64]
        inval_inode.restype = ctypes.c_int
        session = get_session(ctypes.c_void_p(fuse_pointer))
        if not session:
            return False
        fd = session_fd(ctypes.c_void_p(session))
        if fd < 0:
            return False
        self._session = ctypes.c_void_p(session)
        self._fd = fd
        self._inval_inode = inval_inode
        self._thread = threading.Thread(target=self._run, name="pictofs-kernel-cache",
                                        daemon=True)
        self._thread.start()
        return True

    @property
    def running(self) -> bool:
        """Attached to a mount and not closed: the kernel holds answers for long."""
        return self._thread is not None and not self._closed

    def close(self) -> None:
        """At unmount (``destroy``, before libfuse closes ``/dev/fuse``): stop, and never
        write to the kernel again."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        with self._calls:  # a write under way ends before the descriptor may be closed
            self._fd = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- recording

    def handed_out(self, path: str, delay: float, is_dir: bool = False) -> None:
        """The kernel got ``path``'s attributes, which stop being fresh in ``delay``
        seconds."""
        self._at(self.clock() + max(0.0, delay))

    def handed_out_many(self, paths: list[str], delay: float) -> None:
        """Files of one listing, all with one deadline (``readdir``)."""
        if paths:
            self._at(self.clock() + max(0.0, delay))

    def _at(self, deadline: float) -> None:
        # rounded down (earlier is safe), so the answers of one listing share one entry
        deadline = int(deadline / COALESCE) * COALESCE
        with self._lock:
            if deadline in self._queued:
                return
            self._queued.add(deadline)
            first = not self._heap or deadline < self._heap[0]
            heapq.heappush(self._heap, deadline)
            if first:
                self._wake.notify()

    # ------------------------------------------------------------- listing pages

    def plus_allowed(self, generation: int) -> bool:
        """Whether a listing page whose rows were worked out under ``generation`` may go
        to the kernel with its attributes now (no take-back since); recorded, so a
        take-back that may cross the page's reply is followed by a second one."""
        with self._lock:
            if generation != self.generation:
                return False
            self._plus = (generation, self.clock())
            return True

    # ---------------------------------------------------------------- taking back

    # the tree's ChangeListener verbs: what this mount changed is taken back
    def changed(self, paths: Iterable[str]) -> None:
        self.forget_soon(paths)

    def changed_under(self, folder: str) -> None:
        self.forget_under_soon(folder)

    def refreshed(self) -> None:
        self.forget_all()

    def forget_soon(self, paths: Iterable[str] = ()) -> None:
        """Take everything back soon, from the worker (safe inside a FUSE callback)."""
        with self._lock:
            self._soon_seq += 1
            self._wake.notify()

    def forget_under_soon(self, folder: str) -> None:
        """A folder and what is under it changed: take everything back soon."""
        self.forget_soon()

    def forget_all(self) -> None:
        """Take back everything the kernel may hold, before returning (``refresh``; never
        from a FUSE callback)."""
        self._raise()

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until what ``forget_soon`` was asked before this call has been served."""
        with self._lock:
            target = self._soon_seq
            end = self.clock() + timeout
            while self._done_seq < target and not self._closed:
                left = end - self.clock()
                if left <= 0:
                    log.warning("kernel cache: a take-back still queued after %.0f s",
                                timeout)
                    return
                self._wake.wait(left)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closed:
                    now = self.clock()
                    soon_wait = (self._last_raise + SOON_INTERVAL - now
                                 if self._soon_seq > self._done_seq else None)
                    due_wait = self._heap[0] - now if self._heap else None
                    waits = [w for w in (soon_wait, due_wait) if w is not None]
                    if waits and min(waits) <= 0:
                        break
                    self._wake.wait(min(waits) if waits else None)
                if self._closed:
                    return
                serving = self._soon_seq
            self._raise()
            with self._lock:
                self._done_seq = max(self._done_seq, serving)
                self._wake.notify_all()

    def _raise(self) -> None:
        """Take back every name and attribute the kernel holds: raise the epoch, then drop
        the root folder's attributes. Clears the deadlines it serves (all of them: every
        answer handed out before is gone from the kernel) and schedules a second raise
        if a listing page sent with attributes may cross this one."""
        with self._lock:
            now = self.clock()
            self._heap = []
            self._queued = set()
            self.generation += 1
            self._last_raise = now
            self.raises += 1
            plus_generation, plus_at = self._plus
            if plus_generation == self.generation - 1 and now - plus_at < FOLLOW_UP:
                follow_up = int((now + FOLLOW_UP) / COALESCE) * COALESCE
                self._heap = [follow_up]
                self._queued = {follow_up}
        with self._calls:
            if self._fd is None:
                return
            try:
                os.write(self._fd, INC_EPOCH_MESSAGE)
            except OSError as exc:
                log.error("kernel cache: raising the epoch failed: %s", exc)
            assert self._session is not None
            self._inval_inode(self._session, ROOT_ID, -1, 0)
