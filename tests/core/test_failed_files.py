"""Files the mount will not upload stay visible as failed uploads (filesystem §5 "What the
writer sees"): bytes that are not an image (``EINVAL`` at close) and a 0-byte file present at
unmount. Each keeps its staging file and journal row, shows its reason in
``user.pictofs.error`` and under ``failed`` in the status, through a remount (the tree built
again on the same state folder), until ``rm``; written again with an image, it uploads.
In-process, against the session's reference server (``tests/fuse/test_write.py`` has the
same through a real mount)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from imagegen import png_bytes
from scenarios import WRITE, Service, errno_of

from .treekit import TreeDriver, build

ERROR_XATTR = "user.pictofs.error"


def failed(driver: TreeDriver) -> dict[str, str]:
    return {item["path"]: item["error"] for item in driver.vfs.status()["uploads"]["failed"]}


def unmount(tree: Any) -> None:
    """What the daemon's exit adds to ``close``: the journals' locks go, so that the next
    mount of this process may open them."""
    tree.close(timeout=10)
    for dataset_tree in tree.vfs.dataset_trees():
        dataset_tree.writes.journal.close()


def test_failed_files_stay_through_a_remount_until_rm_or_written_again(
        server: Any, dataset: Any, client: Any, tmp_path: Path) -> None:
    service = Service(client, dataset)
    tree = build(server, dataset, tmp_path)
    fs = TreeDriver(tree.vfs)
    try:
        for path in ("/text.png", "/text2.png"):
            fd = fs.open(path, WRITE)
            fs.write(fd, b"plain text, not an image", 0)
            assert errno_of(lambda: fs.close(fd)) == errno.EINVAL
        for path in ("/empty.png", "/empty2.png"):
            fs.close(fs.open(path, WRITE))
        assert fs.getxattr("/text.png", ERROR_XATTR) == b"not an image Pillow can read"
        assert errno_of(lambda: fs.getxattr("/empty.png", ERROR_XATTR)) == errno.ENODATA
        assert failed(fs) == {"/text.png": "not an image Pillow can read",
                              "/text2.png": "not an image Pillow can read"}
    finally:
        unmount(tree)  # the 0-byte files become failed uploads
    assert not fs.bugs, fs.bugs

    tree = build(server, dataset, tmp_path)  # the next mount
    fs = TreeDriver(tree.vfs)
    try:
        assert {name: attrs.size for name, attrs in fs.listdir("/").items()} == {
            "text.png": 24, "text2.png": 24, "empty.png": 0, "empty2.png": 0}
        assert fs.read_file("/text.png") == b"plain text, not an image"
        assert fs.getxattr("/empty.png", ERROR_XATTR) == b"empty file: nothing to upload"
        assert failed(fs) == {"/text.png": "not an image Pillow can read",
                              "/text2.png": "not an image Pillow can read",
                              "/empty.png": "empty file: nothing to upload",
                              "/empty2.png": "empty file: nothing to upload"}
        fs.unlink("/text2.png")
        fs.unlink("/empty2.png")
        images = {"/text.png": png_bytes(120), "/empty.png": png_bytes(121)}
        for path, data in images.items():  # written again, with images: uploads
            fs.write_file(path, data)
            assert errno_of(lambda: fs.getxattr(path, ERROR_XATTR)) == errno.ENODATA
        fs.sync()
        assert failed(fs) == {}
        landed = service.live()
        assert set(landed) == set(images)
        assert {p: i.file_size for p, i in landed.items()} \
            == {p: len(d) for p, d in images.items()}
        assert set(fs.listdir("/")) == {"text.png", "empty.png"}
        staging = tree.vfs.dataset_trees()[0].writes.journal.staging_dir
    finally:
        unmount(tree)
    assert not fs.bugs, fs.bugs
    assert os.listdir(staging) == []
