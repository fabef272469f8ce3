"""A file opened for writing again while the kernel releases its previous handle
(filesystem §3 "Writing"): a program that writes a file, closes it and at once opens it
again with ``O_TRUNC`` (a loader rewriting its output, the load test's writers). The kernel
answers ``close`` after the flush and sends the release without waiting for it, so the
release of the first handle can run beside the open of the second. The release used to
decide "last handle closed" and schedule the upload after the open had held it: the hold was
lost, the upload ran while the writer was still writing, found the staged bytes unlike the
ones the last flush recorded and failed the file for good as torn (``pictofs sync`` then
reported "its staged bytes are not the ones written"). In-process, against the session's
reference server, with the open made to come inside the release."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from imagegen import png_bytes
from mountkit import service_bytes
from scenarios import WRITE

from pictofs.core.tree.pending import Pending

from .treekit import WRITE_BACK, TreeDriver, build

WAIT = 5 * float(WRITE_BACK.rstrip("s"))  # long enough for a wrongly due upload to start


class Announcing:
    """A file's ``turns`` that says when the reopening thread starts waiting for it."""

    def __init__(self, inner: Any, waiting: threading.Event) -> None:
        self.inner, self.waiting = inner, waiting

    def __enter__(self) -> "Announcing":
        if threading.current_thread().name == "reopening":
            self.waiting.set()
        self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_an_open_during_the_release_of_the_last_handle_holds_the_upload(
        server: Any, client: Any, dataset: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    [side] = tree.vfs.dataset_trees()
    first, second = png_bytes(21, (48, 48)), png_bytes(22, (64, 64))
    try:
        fd = fs.open("/a.png", WRITE)
        fs.write(fd, first, 0)
        tree.vfs.flush(fd)  # close(2) returns here; the kernel's release comes later

        pending = side.writes.pending_at("/a.png")
        assert pending is not None
        real_drop_open = Pending.drop_open
        dropped, opening = threading.Event(), threading.Event()
        opened: list[int] = []
        half = len(second) // 2

        def drop_open(one: Pending) -> int:
            left = real_drop_open(one)
            if one is pending and not dropped.is_set():  # the first handle's release:
                dropped.set()  # paused after its count until the open came in (or waits)
                opening.wait(10)
            return left

        def open_again() -> None:  # and write the first half of the new bytes
            opened.append(fs.open("/a.png", os.O_WRONLY | os.O_TRUNC))
            fs.write(opened[0], second[:half], 0)
            opening.set()  # through (with nothing in its way)

        monkeypatch.setattr(Pending, "drop_open", drop_open)
        pending.turns = Announcing(pending.turns, opening)  # or waiting for its turn
        releasing = threading.Thread(target=tree.vfs.release, args=(fd,))
        releasing.start()
        assert dropped.wait(10)
        # the writer's next open of the file, now
        reopening = threading.Thread(target=open_again, name="reopening")
        reopening.start()
        for thread in (releasing, reopening):
            thread.join(10)
            assert not thread.is_alive()
        monkeypatch.undo()
        assert opening.is_set() and len(opened) == 1
        [again] = opened

        time.sleep(WAIT)  # the file is open for writing: no upload may run meanwhile
        assert tree.vfs.status()["uploads"]["failed"] == []
        fs.write(again, second[half:], half)
        fs.close(again)
        fs.sync()
        [image] = [i for i in client.images.list(dataset.id) if i.filename == "a.png"]
        assert service_bytes(client, image.id, tmp_path) == second
    finally:
        tree.close(timeout=10)
    assert not fs.bugs, fs.bugs
