"""The write side of a dataset on a read-only mount: nothing is pending or local, and
every verb that would change something raises ``ReadOnly`` (EROFS) naming the verb.

It answers the same questions as ``WriteLayer`` so that no caller asks whether a mount is
writable: the tree's nodes and verbs, the composition root's ``sync`` and unmount. It holds
no state and takes no lock.
"""

from __future__ import annotations

from typing import Any, Callable

from pictofs.core.tree.pending import Pending
from pictofs.errors import ReadOnly
from pictofs.model import Image


class ReadOnlyWrites:
    def __init__(self) -> None:
        self.on_archived: Callable[[], None] = lambda: None

    # ---------------------------------------------------------------- questions

    def pending_at(self, path: str) -> Pending | None:
        return None

    def pending_in(self, folder: str) -> dict[str, Pending]:
        return {}

    def is_local_dir(self, path: str) -> bool:
        return False

    def local_dirs_in(self, folder: str) -> list[str]:
        return []

    def is_hidden(self, path: str) -> bool:
        return False

    def hidden_in(self, folder: str) -> set[str]:
        return set()

    def image_mtime(self, image: Image) -> float | None:
        return None

    def image_mtimes(self) -> dict[str, float]:
        return {}

    # ---------------------------------------------------------------- changes

    def check_writable(self, what: str) -> None:
        raise ReadOnly(f"{what}: this mount is read-only")

    def create(self, path: str, exclusive: bool) -> Pending:
        raise ReadOnly("create: this mount is read-only")

    def open_for_write(self, path: str, existing: Pending | Image, truncate: bool) -> Pending:
        raise ReadOnly("open for writing: this mount is read-only")

    def write(self, pending: Pending, data: bytes, offset: int) -> int:
        raise ReadOnly("write: this mount is read-only")

    def truncate(self, pending: Pending, length: int) -> None:
        raise ReadOnly("truncate: this mount is read-only")

    def truncate_closed(self, path: str, existing: Pending | Image, length: int) -> Pending:
        raise ReadOnly("truncate: this mount is read-only")

    def set_mtime(self, target: Pending | Image, mtime: float) -> None:
        raise ReadOnly("utimens: this mount is read-only")

    def unlink(self, path: str) -> None:
        raise ReadOnly("unlink: this mount is read-only")

    def set_attr_after_register(self, pending: Pending, field_name: str, value: Any) -> bool:
        raise ReadOnly("setxattr: this mount is read-only")

    # ------------------------------------------------------- handles of pending files

    def read(self, pending: Pending, size: int, offset: int) -> bytes:
        return pending.pread(size, offset)

    def flush(self, pending: Pending) -> None:
        pass

    def fsync(self, pending: Pending) -> None:
        pass

    def release(self, pending: Pending) -> None:
        pending.drop_open()

    # ---------------------------------------------------------------- the mount

    def status(self) -> dict[str, Any]:
        return {"pending": 0, "in_flight": 0, "failed": [], "bytes_uploaded": 0,
                "upload_rate": 0.0, "paused": False, "kept_aside": [], "stranded": [],
                "workers": 0}

    def local_status(self) -> dict[str, int]:
        return {"files": 0, "bytes": 0}

    def wait_idle(self, timeout: float) -> bool:
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        return True
