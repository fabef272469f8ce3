"""The desktop trash in-process (``pictofs.core.tree.trash``; filesystem "The desktop
trash"): the verbs a file manager does not make but a user can, each with its errno, a
restore to another folder, and a damaged state file, against the reference server.
``tests/fuse/test_trash.py`` drives the same through a real mount with GLib's tools.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from mountkit import everything, live
from seed import seed_images

from .treekit import TreeDriver, build


def write(driver: TreeDriver, path: str, data: bytes) -> None:
    fd = driver.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    driver.write(fd, data, 0)
    driver.close(fd)


def read(driver: TreeDriver, path: str) -> bytes:
    fd = driver.open(path, os.O_RDONLY)
    try:
        return driver.read(fd, 1 << 20, 0)
    finally:
        driver.close(fd)


def unmount(tree) -> None:  # type: ignore[no-untyped-def]
    """``close`` and what the daemon's exit adds: the journals' locks go, so that the next
    mount of this process may open them."""
    tree.close(timeout=10)
    for dataset_tree in tree.vfs.dataset_trees():
        dataset_tree.writes.journal.close()


def errno_of(call, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as raised:
        call(*args)
    return raised.value.errno  # type: ignore[return-value]


def test_trash_verbs_errnos_and_a_restore_to_another_folder(client, dataset, tree_of
                                                            ):  # type: ignore[no-untyped-def]
    made = seed_images(client, dataset.id, "/cars", ["a.png"])
    seed_images(client, dataset.id, "/boats", ["b.png"])
    driver, _vfs = tree_of()
    assert errno_of(driver.stat, "/.Trash-0") == errno.ENOENT
    driver.mkdir("/.Trash-0")
    assert errno_of(driver.mkdir, "/.Trash-0") == errno.EEXIST
    assert errno_of(driver.mkdir, "/.Trash-0/files") == errno.EEXIST
    assert errno_of(driver.mkdir, "/.Trash-0/info/x") == errno.EPERM
    assert sorted(driver.listdir("/.Trash-0")) == ["files", "info"]

    write(driver, "/.Trash-0/info/cars.trashinfo.tmp", b"[Trash Info]\nPath=cars\n")
    driver.rename("/.Trash-0/info/cars.trashinfo.tmp", "/.Trash-0/info/cars.trashinfo")
    assert read(driver, "/.Trash-0/info/cars.trashinfo") == b"[Trash Info]\nPath=cars\n"
    driver.rename("/cars", "/.Trash-0/files/cars")
    assert errno_of(driver.unlink, "/.Trash-0/files/cars") == errno.EISDIR
    assert errno_of(driver.rmdir, "/.Trash-0/files/cars") == errno.ENOTEMPTY
    assert errno_of(driver.rmdir, "/.Trash-0") == errno.ENOTEMPTY
    assert errno_of(driver.rename, "/.Trash-0/files/cars/a.png", "/a.png") == errno.EPERM
    assert errno_of(driver.rename, "/boats/b.png", "/.Trash-0/files/cars/b.png") == \
        errno.EPERM
    fd = driver.open("/.Trash-0/files/cars/a.png", os.O_RDONLY)
    assert driver.read(fd, 1 << 20, 0) == made["a.png"][1]
    driver.close(fd)
    assert errno_of(driver.open, "/.Trash-0/files/cars/a.png", os.O_WRONLY) == errno.EPERM

    # renamed inside the trash, then restored into another folder: the same image
    driver.rename("/.Trash-0/files/cars", "/.Trash-0/files/cars.2")
    driver.rename("/.Trash-0/files/cars.2", "/boats/cars")
    assert {p: i.id for p, i in live(client, dataset).items()} == {
        "/boats/b.png": live(client, dataset)["/boats/b.png"].id,
        "/boats/cars/a.png": made["a.png"][0].id}
    assert driver.listdir("/.Trash-0/files") == {}
    driver.unlink("/.Trash-0/info/cars.trashinfo")
    driver.rmdir("/.Trash-0")
    assert errno_of(driver.stat, "/.Trash-0") == errno.ENOENT


def test_a_damaged_trash_state_is_kept_aside_and_the_images_stay_archived(
        server, client, dataset, tmp_path: Path, caplog):  # type: ignore[no-untyped-def]
    made = seed_images(client, dataset.id, "/", ["c.png"])
    root = tmp_path / "tree"
    tree = build(server, dataset, root)
    try:
        driver = TreeDriver(tree.vfs)
        driver.mkdir("/.Trash-0")
        driver.rename("/c.png", "/.Trash-0/files/c.png")
    finally:
        unmount(tree)
    [state] = list((root / "state").rglob("trash.json"))
    state.write_text("{not json")
    caplog.set_level(logging.WARNING, logger="pictofs.core.tree.trash")
    tree = build(server, dataset, root)
    try:
        driver = TreeDriver(tree.vfs)
        assert errno_of(driver.stat, "/.Trash-0") == errno.ENOENT
        assert driver.listdir("/.archive") == {"c.png": driver.stat("/.archive/c.png")}
        assert not driver.bugs
    finally:
        unmount(tree)
    assert [i.id for i in everything(client, dataset) if i.is_archived] == \
        [made["c.png"][0].id]
    kept = [p.name for p in state.parent.iterdir() if p.name.startswith("trash.json.damaged")]
    assert len(kept) == 1
    lines = [r.getMessage() for r in caplog.records if "trash's state" in r.getMessage()]
    assert len(lines) == 1 and kept[0] in lines[0], lines
