"""A file opened for writing again while the kernel releases its previous handle
(filesystem §5 "Writing"): a program that writes a file, closes it and at once opens it
again (a loader rewriting its output, the load test's writers). The kernel answers
``close`` after the flush and sends the release without waiting for it, so the release of
the first handle can run beside the open of the second.

- The release used to decide "last handle closed" and then schedule the upload after the
  open had held it: the hold was lost, the upload ran while the writer was still writing,
  found the staged bytes unlike the ones the last flush recorded and failed the file for
  good as torn (``pictofs sync`` then reported "its staged bytes are not the ones
  written"; seen in CI).
- An image opened for writing and closed unwritten ends its replace at that release: an
  open meanwhile would have written into the ended replace, and its bytes were lost.

In-process, against the session's reference server, with the open made to come inside the
release."""

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
from seed import seed_images

from pictofs.core.tree.pending import Pending

from .treekit import WRITE_BACK, TreeDriver, build

WAIT = 5 * float(WRITE_BACK.rstrip("s"))  # long enough for a wrongly due upload to start
REWRITE = os.O_WRONLY | os.O_TRUNC


def landed_bytes(client: Any, dataset: Any, name: str, scratch: Path) -> bytes:
    [image] = [i for i in client.images.list(dataset.id) if i.filename == name]
    return service_bytes(client, image.id, scratch)


def test_an_open_during_the_release_of_the_last_handle_holds_the_upload(
        server: Any, client: Any, dataset: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    [side] = tree.vfs.dataset_trees()
    first, second = png_bytes(21, (48, 48)), png_bytes(22, (64, 64))
    half = len(second) // 2
    try:
        fd = fs.open("/a.png", WRITE)
        fs.write(fd, first, 0)
        tree.vfs.flush(fd)  # close(2) returns here; the kernel's release comes later
        pending = side.writes.pending_at("/a.png")
        assert pending is not None
        real_drop_open = Pending.drop_open
        counted, reopened = threading.Event(), threading.Event()

        def drop_open(one: Pending) -> int:
            left = real_drop_open(one)
            if one is pending and not counted.is_set():  # the first handle's release:
                counted.set()  # paused after its count while the writer opens again
                reopened.wait(10)
            return left

        monkeypatch.setattr(Pending, "drop_open", drop_open)
        releasing = threading.Thread(target=tree.vfs.release, args=(fd,))
        releasing.start()
        assert counted.wait(10)
        again = fs.open("/a.png", REWRITE)  # the writer's next open, and half its bytes
        fs.write(again, second[:half], 0)
        reopened.set()
        releasing.join(10)
        assert not releasing.is_alive()
        monkeypatch.undo()

        time.sleep(WAIT)  # the file is open for writing: no upload may run meanwhile
        assert tree.vfs.status()["uploads"]["failed"] == []
        fs.write(again, second[half:], half)
        fs.close(again)
        fs.sync()
        assert landed_bytes(client, dataset, "a.png", tmp_path) == second
    finally:
        tree.close(timeout=10)
    assert not fs.bugs, fs.bugs


class Pausing:
    """A file's ``turns`` that the releasing thread waits at until ``go``, after saying so
    (``waiting``); every other thread takes it as it is."""

    def __init__(self, inner: Any, waiting: threading.Event, go: threading.Event) -> None:
        self.inner, self.waiting, self.go = inner, waiting, go

    def __enter__(self) -> "Pausing":
        if threading.current_thread().name == "releasing":
            self.waiting.set()
            self.go.wait(10)
        self.inner.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


def test_an_image_opened_again_while_its_unwritten_replace_ends_keeps_the_new_bytes(
        server: Any, client: Any, dataset: Any, tmp_path: Path) -> None:
    original, new = png_bytes(23, (40, 40)), png_bytes(24, (56, 56))
    seed_images(client, dataset.id, "/", ["b.png"], data_for=lambda _name: original)
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    [side] = tree.vfs.dataset_trees()
    try:
        fd = fs.open("/b.png", os.O_WRONLY)  # a replace is staged, with the image's bytes
        tree.vfs.flush(fd)  # closed unwritten: its release ends the replace
        pending = side.writes.pending_at("/b.png")
        assert pending is not None and pending.replaced_id is not None
        waiting, go = threading.Event(), threading.Event()
        pending.turns = Pausing(pending.turns, waiting, go)
        releasing = threading.Thread(target=tree.vfs.release, args=(fd,), name="releasing")
        releasing.start()
        assert waiting.wait(10)  # the release is about to end the replace
        again = fs.open("/b.png", REWRITE)  # opened and written again first
        fs.write(again, new, 0)
        go.set()
        releasing.join(10)
        assert not releasing.is_alive()
        fs.close(again)
        fs.sync()
        assert landed_bytes(client, dataset, "b.png", tmp_path) == new
        assert fs.read_file("/b.png") == new
    finally:
        tree.close(timeout=10)
    assert not fs.bugs, fs.bugs
