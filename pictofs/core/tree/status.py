"""The control verbs of ``Vfs``: ``status`` (with the counters behind it), ``refresh``,
``close`` at unmount, and ``statfs``. ``ControlVerbs`` is mixed into ``Vfs``, which provides
``sides``, ``options``, ``counters``, ``_handles``, ``_datasets_at`` and ``_lock``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

log = logging.getLogger(__name__)


@dataclass
class Counters:
    opens: int = 0
    reads: int = 0
    bytes_read: int = 0
    started: float = field(default_factory=time.time)
    # FUSE callbacks by name, as counted by the adapter (``getattr`` includes the kernel's
    # lookups, which libfuse's high-level API turns into getattr): shows in ``status``
    callbacks: dict[str, int] = field(default_factory=dict)


class KernelNotes:
    """What ``Vfs`` tells about the answers the kernel caches. This one, used while the
    kernel's timeouts are short (at most 1 s), records nothing; the FUSE adapter puts a
    ``pictofs.fs.kernel_cache.KernelCache`` in its place when they are long. The paths say
    what the kernel got; the adapter may take back more than they name (it takes back
    everything at once)."""

    active = False
    raises = 0  # how many times everything was taken back (``status``: kernel_takebacks)

    def handed_out(self, path: str, delay: float, is_dir: bool = False) -> None:
        """The kernel got ``path``'s attributes; take them back in ``delay`` seconds."""

    def handed_out_many(self, paths: list[str], delay: float) -> None:
        """``handed_out`` for files, all with one delay."""

    def forget_soon(self, paths: Iterable[str]) -> None:
        """Take these paths back now (may be called inside a FUSE callback)."""

    def forget_under_soon(self, folder: str) -> None:
        """Take back ``folder`` and everything under it."""

    def forget_all(self) -> None:
        """Take back everything, before returning (never from a FUSE callback)."""

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until what ``forget_soon`` was given so far has been taken back."""

    def close(self) -> None:
        """At unmount."""


class ControlVerbs:
    options: Any  # VfsOptions
    counters: Counters
    kernel: KernelNotes
    _handles: dict[int, Any]
    _datasets_at: float
    _lock: threading.Lock

    def sides(self) -> list[Any]:
        raise NotImplementedError  # Vfs

    def count_callback(self, name: str) -> None:
        with self._lock:
            self.counters.callbacks[name] = self.counters.callbacks.get(name, 0) + 1

    def statfs(self) -> dict[str, int]:
        disk = os.statvfs(self.options.staging_dir)
        return {
            "f_bsize": disk.f_bsize, "f_frsize": disk.f_frsize, "f_blocks": disk.f_blocks,
            "f_bfree": max(disk.f_bfree, 1), "f_bavail": max(disk.f_bavail, 1),
            "f_files": 1 << 20, "f_ffree": 1 << 20, "f_favail": 1 << 20, "f_namemax": 255,
        }

    def close(self) -> None:
        """At unmount, after the writes stopped: end the downloads and close the caches
        (their batched LRU times and lingering pins are written and removed)."""
        for side in self.sides():
            try:
                side.downloader.close(timeout=5)
                side.downloader.cache.close()
            except Exception:
                log.exception("closing the cache of %s failed", side.view.dataset.name)

    def refresh(self) -> None:
        """Drop every listing now (``pictofs refresh``, SIGHUP), then what the kernel holds
        of them (called from the control or signal thread, never a FUSE callback)."""
        for side in self.sides():
            side.view.forget()
            if side.archive is not None:
                side.archive.forget()
        with self._lock:
            self._datasets_at = -1e18
        self.kernel.forget_all()
        log.info("listing cache dropped")

    def status(self) -> dict[str, Any]:
        # what this mount changed behind the kernel's back is taken back before the status
        # says so (``pictofs sync`` returns with it)
        self.kernel.settle()
        with self._lock:
            counters = dataclasses.replace(self.counters,
                                           callbacks=dict(self.counters.callbacks))
            open_files = len(self._handles)
        sides = self.sides()
        cache = [s.downloader.cache.stats() for s in sides]
        uploads = [s.writes.status() for s in sides if s.writes is not None]
        return {
            "open_files": open_files,
            "opens": counters.opens,
            "reads": counters.reads,
            "bytes_read": counters.bytes_read,
            "callbacks": dict(counters.callbacks),
            "kernel_takebacks": self.kernel.raises,
            "cache": [{**dataclasses.asdict(c), "hit_ratio": c.hit_ratio} for c in cache],
            "uploads": _merge_upload_status(uploads),
        }


def _merge_upload_status(items: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"pending": 0, "in_flight": 0, "failed": [], "bytes_uploaded": 0,
                              "upload_rate": 0.0, "paused": False}
    for item in items:
        merged["pending"] += item["pending"]
        merged["in_flight"] += item["in_flight"]
        merged["failed"] += item["failed"]
        merged["bytes_uploaded"] += item["bytes_uploaded"]
        merged["upload_rate"] += item["upload_rate"]
        merged["paused"] = merged["paused"] or item["paused"]
    return merged
