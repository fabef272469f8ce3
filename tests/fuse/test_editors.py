"""Editors and desktops saving through the mount (filesystem §5 "Names", "Replace"; §6 rename
to a local-only name).

- The classic safe save: write a dot-named temp file, ``fsync`` it, rename it over the image.
  It is one replace upload; the same bytes upload nothing and keep the id.
- ``vim -b`` writing an image back unchanged. Its default ``backupcopy=auto`` first probes
  the folder with a file named ``4913`` (not an image name: kept on this machine only, and
  deleted by vim at once), then saves the ``backupcopy=yes`` way: copy ``x.jpg`` to
  ``x.jpg~``, truncate and rewrite ``x.jpg``, delete the backup. With ``backupcopy=no`` vim renames
  ``x.jpg`` to ``x.jpg~`` and writes a new ``x.jpg``. Either way the image keeps its id and
  annotations and nothing is uploaded.
- GIO, the library behind GNOME Files (``GIO_USE_VFS=local``, no gvfs daemons): ``gio copy``
  in, ``gio move`` within, ``gio remove``, ``gio save`` over an image (GIO's replace: a
  ``.goutputstream-XXXXXX`` temp renamed over it), and ``gio trash``. Trash goes to the
  mount's own ``.Trash-0`` folder (filesystem "The desktop trash"): the trashed image is
  archived on the service at once and shown there, also after a remount; moving it back
  out of the trash restores the same image (``tests/fuse/test_trash.py`` drives the rest:
  folders, ``gio trash --list``, ``--restore``, ``--empty``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagegen import jpeg_bytes, png_bytes
from mountkit import Counts, everything, journal_folder, live, service_bytes, sync, wait_for
from pictofs.api.annotations import save_annotations
from seed import seed_images

pytestmark = pytest.mark.fuse

BOX = {"type": "bbox", "class": "cat", "bbox": [1, 2, 3, 4]}


def seed_annotated(client, dataset, folder: str,  # type: ignore[no-untyped-def]
                   name: str, data: bytes):
    """One image with one annotation; returns the image."""
    image, _ = seed_images(client, dataset.id, folder, [name], data_for=lambda n: data)[name]
    save_annotations(client.transport, dataset.id, image.path, [BOX])
    return image


def annotation_classes(client, image_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [a.get("class") for a in client.annotations.get(image_id)]


def no_local_names_on_service(client, dataset) -> None:  # type: ignore[no-untyped-def]
    """No image of the dataset, archived or not, carries an editor's or desktop's temp name
    or lives in a local-only folder."""
    for image in everything(client, dataset):
        parts = [p for p in image.path.split("/") if p]
        assert not any(p.startswith(".") or p.endswith("~") for p in parts), image.path
        assert image.filename != "4913", image.path


# ---------------------------------------------------------------------- write-temp, rename over


def save_via_temp(folder: Path, name: str, data: bytes) -> None:
    """What many editors do: write ``.NAME.tmpNNN``, fsync it, rename it over ``NAME``."""
    temp = folder / f".{name}.tmp123"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, folder / name)


def test_temp_file_renamed_over_an_image_is_one_replace_upload(client, dataset, mount, server,
                                                                tmp_path):
    old = seed_annotated(client, dataset, "/edit", "x.jpg", jpeg_bytes(1))
    m = mount(dataset.name, "--write-back", "0.2s")
    folder = m.path / "edit"
    assert (folder / "x.jpg").read_bytes() == jpeg_bytes(1)
    counts = Counts(server)
    new_bytes = jpeg_bytes(2)
    save_via_temp(folder, "x.jpg", new_bytes)
    assert sorted(os.listdir(folder)) == ["x.jpg"]
    assert (folder / "x.jpg").read_bytes() == new_bytes
    sync(m)
    changes = counts.since()
    assert (changes["upload_url"], changes["register"], changes["archive"]) == (1, 1, 1), changes
    now = live(client, dataset, "/edit")
    assert list(now) == ["/edit/x.jpg"]
    assert now["/edit/x.jpg"].id != old.id
    assert service_bytes(client, now["/edit/x.jpg"].id, tmp_path) == new_bytes
    archived = {img.id: img for img in everything(client, dataset)}
    assert archived[old.id].is_archived
    no_local_names_on_service(client, dataset)


def test_temp_file_with_the_same_bytes_uploads_nothing_and_keeps_the_id(client, dataset, mount,
                                                                         server):
    data = jpeg_bytes(3)
    old = seed_annotated(client, dataset, "/edit", "x.jpg", data)
    m = mount(dataset.name, "--write-back", "0.2s")
    folder = m.path / "edit"
    os.listdir(folder)
    counts = Counts(server)
    save_via_temp(folder, "x.jpg", data)
    sync(m)
    assert counts.since()["upload_url"] == 0 and counts.since()["register"] == 0
    assert counts.since()["archive"] == 0
    assert {p: i.id for p, i in live(client, dataset, "/edit").items()} == {"/edit/x.jpg": old.id}
    assert annotation_classes(client, old.id) == ["cat"]
    assert os.getxattr(folder / "x.jpg", "user.pictograph.id").decode() == old.id
    no_local_names_on_service(client, dataset)


# ---------------------------------------------------------------------- vim


def vim_write(folder: Path, name: str, backupcopy: str) -> subprocess.CompletedProcess[str]:
    """``vim -b`` writing the file back unchanged, non-interactively, with Vim's defaults
    (``-u NONE`` and ``nocompatible``: ``writebackup`` on, ``backupcopy=auto``).
    ``backupskip`` is emptied because the test's mount lives under /tmp, which the default
    ``backupskip`` exempts from backups; a user's mount (``/mnt/p``) is not exempt."""
    settings = "set nocompatible backupskip= backupcopy=" + backupcopy
    return subprocess.run(["vim", "-b", "-n", "-es", "-u", "NONE", "-i", "NONE",
                           "-c", settings, "-c", "wq", name],
                          cwd=folder, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.mark.skipif(shutil.which("vim") is None, reason="vim is not installed")
@pytest.mark.parametrize("backupcopy", ["auto", "yes", "no"])
def test_vim_writing_an_image_back_keeps_its_id_and_uploads_nothing(client, dataset, mount,
                                                                     server, backupcopy):
    data = jpeg_bytes(4)
    old = seed_annotated(client, dataset, "/pics", "x.jpg", data)
    # vim's rename-away and re-create take milliseconds; a 1 s --write-back is the window in
    # which the new x.jpg takes the place of the image renamed to x.jpg~ (filesystem §6)
    m = mount(dataset.name, "--write-back", "1s")
    folder = m.path / "pics"
    assert (folder / "x.jpg").read_bytes() == data
    counts = Counts(server)
    result = vim_write(folder, "x.jpg", backupcopy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(folder)) == ["x.jpg"], "vim's backup x.jpg~ was left behind"
    assert (folder / "x.jpg").read_bytes() == data
    sync(m)
    assert counts.uploads() == 0 and counts.since()["register"] == 0, counts.since()
    assert counts.since()["archive"] == 0, counts.since()
    assert {p: i.id for p, i in live(client, dataset, "/pics").items()} == {"/pics/x.jpg": old.id}
    assert annotation_classes(client, old.id) == ["cat"]
    assert not any(img.is_archived for img in everything(client, dataset))
    no_local_names_on_service(client, dataset)


# ---------------------------------------------------------------------- GIO


def gio(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIO_USE_VFS="local")
    return subprocess.run(["gio", *args], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.mark.skipif(shutil.which("gio") is None, reason="gio (libglib2.0-bin) is not installed")
def test_gio_copy_move_remove_and_trash(client, dataset, mount, server, tmp_path):
    m = mount(dataset.name, "--write-back", "0.5s")
    source = tmp_path / "src"
    source.mkdir()
    a_bytes, b_bytes = png_bytes(21), png_bytes(22)
    (source / "a.png").write_bytes(a_bytes)
    (source / "b.png").write_bytes(b_bytes)
    for folder in ("in", "out"):
        result = gio("mkdir", str(m.path / folder))
        assert result.returncode == 0, result.stderr

    # copy in: one upload each, the bytes as they were
    for name in ("a.png", "b.png"):
        result = gio("copy", str(source / name), str(m.path / "in") + "/")
        assert result.returncode == 0, result.stderr
    sync(m)
    landed = live(client, dataset, "/in")
    assert sorted(landed) == ["/in/a.png", "/in/b.png"]
    assert service_bytes(client, landed["/in/a.png"].id, tmp_path) == a_bytes
    a_id = landed["/in/a.png"].id

    # move within the mount: a server-side move, same id, nothing uploaded
    counts = Counts(server)
    result = gio("move", str(m.path / "in" / "a.png"), str(m.path / "out") + "/")
    assert result.returncode == 0, result.stderr
    assert counts.uploads() == 0 and counts.since()["move"] == 1, counts.since()
    assert {p: i.id for p, i in live(client, dataset, "/out").items()} == {"/out/a.png": a_id}

    # remove: archived on the service
    result = gio("remove", str(m.path / "in" / "b.png"))
    assert result.returncode == 0, result.stderr
    assert not (m.path / "in" / "b.png").exists()
    assert live(client, dataset, "/in") == {}
    b_id = landed["/in/b.png"].id
    assert {i.id: i.is_archived for i in everything(client, dataset)}[b_id] is True

    # trash: into the mount's own .Trash-0; the image is archived at once and the trash
    # copy keeps reading its bytes
    result = gio("trash", str(m.path / "out" / "a.png"))
    assert result.returncode == 0, result.stderr
    assert not (m.path / "out" / "a.png").exists()
    trashed = m.path / ".Trash-0" / "files" / "a.png"
    assert trashed.read_bytes() == a_bytes
    info = (m.path / ".Trash-0" / "info" / "a.png.trashinfo").read_text()
    assert "Path=" in info and "a.png" in info
    wait_for(lambda: {i.id: i.is_archived for i in everything(client, dataset)}[a_id],
             "the trashed image to be archived")
    assert (m.path / ".archive" / "out" / "a.png").read_bytes() == a_bytes
    assert live(client, dataset, "/out") == {}
    assert trashed.read_bytes() == a_bytes
    assert counts.uploads() == 0, counts.since()
    no_local_names_on_service(client, dataset)

    # restore from the trash (what a file manager's "Restore" does: move it back):
    # the same image returns, nothing uploaded
    result = gio("move", str(trashed), str(m.path / "out" / "a.png"))
    assert result.returncode == 0, result.stderr
    result = gio("remove", str(m.path / ".Trash-0" / "info" / "a.png.trashinfo"))
    assert result.returncode == 0, result.stderr
    assert {p: i.id for p, i in live(client, dataset, "/out").items()} == {"/out/a.png": a_id}
    assert (m.path / "out" / "a.png").read_bytes() == a_bytes
    assert not (m.path / ".archive" / "out" / "a.png").exists()
    sync(m)
    assert counts.uploads() == 0, counts.since()
    assert os.listdir(m.path / ".Trash-0" / "files") == []
    no_local_names_on_service(client, dataset)


@pytest.mark.skipif(shutil.which("gio") is None, reason="gio (libglib2.0-bin) is not installed")
def test_gio_save_over_an_image_replaces_it_once(client, dataset, mount, server, tmp_path):
    """``gio save`` (GIO's replace: write ``.goutputstream-XXXXXX``, rename it over the
    target) is one replace upload; saving the same bytes again uploads nothing."""
    old, _ = seed_images(client, dataset.id, "/", ["s.png"], data_for=png_bytes)["s.png"]
    m = mount(dataset.name, "--write-back", "0.2s")
    os.listdir(m.path)
    new_bytes = png_bytes(23)
    counts = Counts(server)
    env = dict(os.environ, GIO_USE_VFS="local")
    result = subprocess.run(["gio", "save", str(m.path / "s.png")], input=new_bytes,
                            capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert os.listdir(m.path) == ["s.png"]
    sync(m)
    changes = counts.since()
    assert (changes["upload_url"], changes["register"], changes["archive"]) == (1, 1, 1), changes
    now = live(client, dataset)
    assert list(now) == ["/s.png"] and now["/s.png"].id != old.id
    assert service_bytes(client, now["/s.png"].id, tmp_path) == new_bytes

    counts = Counts(server)
    result = subprocess.run(["gio", "save", str(m.path / "s.png")], input=new_bytes,
                            capture_output=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    sync(m)
    assert counts.uploads() == 0 and counts.since()["archive"] == 0, counts.since()
    assert {p: i.id for p, i in live(client, dataset).items()} == {"/s.png": now["/s.png"].id}
    no_local_names_on_service(client, dataset)


@pytest.mark.skipif(shutil.which("gio") is None, reason="gio (libglib2.0-bin) is not installed")
def test_trash_is_archived_at_once_and_kept_across_an_unmount(client, dataset, mount, server):
    image, data = seed_images(client, dataset.id, "/", ["t.png"], data_for=png_bytes)["t.png"]
    # a long --write-back: trashing does not wait for it (the trash is the archive)
    m = mount(dataset.name, "--write-back", "1h")
    assert (m.path / "t.png").read_bytes() == data
    counts = Counts(server)
    result = gio("trash", str(m.path / "t.png"))
    assert result.returncode == 0, result.stderr
    assert counts.since()["archive"] == 1 and counts.uploads() == 0, counts.since()
    assert {i.id: i.is_archived for i in everything(client, dataset)} == {image.id: True}
    assert (m.path / ".Trash-0" / "files" / "t.png").read_bytes() == data
    assert m.umount().returncode == 0

    again = mount(dataset.name, "--write-back", "1h", mountpoint=m.path)
    assert os.listdir(again.path) == []  # the trash is reached by name, like .archive
    assert (again.path / ".Trash-0" / "files" / "t.png").read_bytes() == data
    assert os.listdir(again.path / ".Trash-0" / "info") == ["t.png.trashinfo"]
    assert (again.path / ".archive" / "t.png").read_bytes() == data
    local = journal_folder(again, dataset) / "local"
    assert list(local.iterdir()) == []
