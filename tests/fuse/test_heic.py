"""HEIC through a real mount (filesystem §5 "Names the service changes"): the service stores
``x.heic`` as ``x.png``; the mount remembers which written file became which image, lists
the image under the name written, and a copy of the same phone folder again, with ``cp -r``,
``rsync -a`` or ``rsync -a --delete``, before and after a remount, exits 0, uploads nothing
and archives nothing. Request counts come from the server's ``/metrics`` (``mountkit``)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from imagegen import heic_bytes, jpeg_bytes, png_bytes
from mountkit import Counts, pictofs_cmd

pytestmark = pytest.mark.fuse

FAST = ("--write-back", "0.2s")
PHONE = {"IMG_2001.heic": heic_bytes(1), "IMG_2002.HEIC": heic_bytes(2),
         "IMG_3000.jpg": jpeg_bytes(3)}
STORED = {"/iphone/IMG_2001.png", "/iphone/IMG_2002.png", "/iphone/IMG_3000.jpg"}

COPIES = {
    "cp": lambda src, m: ["cp", "-r", str(src), str(m)],
    "rsync": lambda src, m: ["rsync", "-a", str(src), str(m)],
    "rsync-delete": lambda src, m: ["rsync", "-a", "--delete", f"{src}/", f"{m}/iphone/"],
}


def phone_folder(root: Path) -> Path:
    folder = root / "iphone"
    folder.mkdir(parents=True)
    for name, data in PHONE.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, (1_700_000_000, 1_700_000_000))
    return folder


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def sync(m) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return pictofs_cmd(m, "sync", str(m.path))


def live(client, dataset) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Path → id of the live images."""
    return {img.path: img.id for img in client.images.list(dataset.id)}


def archived(client, dataset) -> list[str]:  # type: ignore[no-untyped-def]
    return [img.path for img in client.images.list(dataset.id, include_archived=True)
            if img.is_archived]


def copy_again_changes_nothing(copy: list[str], m, server) -> None:  # type: ignore[no-untyped-def]
    counts = Counts(server)
    done = run(*copy)
    assert done.returncode == 0, done.stderr
    synced = sync(m)
    assert synced.returncode == 0, synced.stderr + m.log()[-2000:]
    changes = counts.since()
    assert counts.uploads() == 0 and counts.puts() == 0, changes
    assert changes["register"] == changes["bulk_register"] == changes["archive"] == 0, changes


@pytest.mark.parametrize("tool", sorted(COPIES))
def test_a_phone_folder_copied_again_uploads_nothing_across_a_remount(
        tool, client, dataset, mount, server, tmp_path):
    source = phone_folder(tmp_path / "src")
    m = mount(dataset.name, *FAST)
    if tool == "rsync-delete":
        (m.path / "iphone").mkdir()
    copy = COPIES[tool](source, m.path)
    first = run(*copy)
    assert first.returncode == 0, first.stderr
    assert sync(m).returncode == 0, m.log()[-2000:]
    ids = live(client, dataset)
    assert set(ids) == STORED
    # listed under the names written; the stored name answers too, for the same image
    assert sorted(os.listdir(m.path / "iphone")) == sorted(PHONE)
    heic, png = m.path / "iphone" / "IMG_2001.heic", m.path / "iphone" / "IMG_2001.png"
    assert heic.read_bytes() == png.read_bytes()
    assert os.stat(heic).st_size == os.stat(png).st_size
    assert os.stat(heic).st_mtime == 1_700_000_000 or tool == "cp"

    copy_again_changes_nothing(copy, m, server)
    assert m.log().count("/iphone/IMG_2001.heic was stored by the service as "
                         "/iphone/IMG_2001.png") == 1  # when it was, not at every copy
    assert m.umount().returncode == 0
    again = mount(dataset.name, *FAST, mountpoint=m.path)
    assert sorted(os.listdir(again.path / "iphone")) == sorted(PHONE)
    copy_again_changes_nothing(copy, again, server)
    assert live(client, dataset) == ids
    assert archived(client, dataset) == []
    assert "already exists" not in again.log()


def test_an_edited_heic_replaces_its_image_and_rm_archives_it(client, dataset, mount,
                                                              server, tmp_path):
    source = phone_folder(tmp_path / "src")
    m = mount(dataset.name, *FAST)
    assert run("rsync", "-a", str(source), str(m.path)).returncode == 0
    assert sync(m).returncode == 0
    old = live(client, dataset)["/iphone/IMG_2001.png"]

    (source / "IMG_2001.heic").write_bytes(heic_bytes(11))  # a real edit
    os.utime(source / "IMG_2001.heic", (time.time() + 10, time.time() + 10))
    counts = Counts(server)
    assert run("rsync", "-a", "--delete", f"{source}/", f"{m.path}/iphone/").returncode == 0
    assert sync(m).returncode == 0, m.log()[-2000:]
    assert counts.puts() == 1 and counts.since()["archive"] == 1, counts.since()
    now = live(client, dataset)
    assert set(now) == STORED and now["/iphone/IMG_2001.png"] != old
    assert archived(client, dataset) == ["/iphone/IMG_2001.png"]
    assert sorted(os.listdir(m.path / "iphone")) == sorted(PHONE)

    os.unlink(m.path / "iphone" / "IMG_2002.HEIC")  # rm of the name written archives it
    assert sorted(os.listdir(m.path / "iphone")) == ["IMG_2001.heic", "IMG_3000.jpg"]
    assert not (m.path / "iphone" / "IMG_2002.png").exists()
    assert "/iphone/IMG_2002.png" not in live(client, dataset)

    edited = live(client, dataset)["/iphone/IMG_2001.png"]  # the desktop trash, and back
    trashed = run("gio", "trash", str(m.path / "iphone" / "IMG_2001.heic"))
    assert trashed.returncode == 0, trashed.stderr
    assert sorted(os.listdir(m.path / "iphone")) == ["IMG_3000.jpg"]
    assert "/iphone/IMG_2001.png" not in live(client, dataset)
    os.rename(m.path / ".Trash-0" / "files" / "IMG_2001.heic",
              m.path / "iphone" / "IMG_2001.heic")
    assert sorted(os.listdir(m.path / "iphone")) == ["IMG_2001.heic", "IMG_3000.jpg"]
    assert live(client, dataset)["/iphone/IMG_2001.png"] == edited


@pytest.mark.profiles("reference", "hosted")
def test_a_heic_and_a_real_png_of_one_stem_share_one_name_and_nothing_is_lost(
        client, dataset, mount, tmp_path):
    """A .heic whose .png name holds an image no memory links it to (a real x.png, or one
    this machine did not write) fails as a conflict that names the stored name, and nothing
    is archived; a .png written over the image a .heic became replaces it."""
    m = mount(dataset.name, *FAST)
    (m.path / "cam").mkdir()
    (m.path / "cam" / "IMG_1.png").write_bytes(png_bytes(1))
    assert sync(m).returncode == 0
    (m.path / "cam" / "IMG_1.heic").write_bytes(heic_bytes(1))
    failed = sync(m)
    assert failed.returncode != 0
    assert "the service stores /cam/IMG_1.heic as /cam/IMG_1.png" in failed.stderr, \
        failed.stderr
    assert set(live(client, dataset)) == {"/cam/IMG_1.png"}
    assert archived(client, dataset) == []
    os.unlink(m.path / "cam" / "IMG_1.heic")  # a failed upload is discarded by rm
    assert sync(m).returncode == 0

    # the other order: a .png written over the image a .heic became replaces it
    (m.path / "cam" / "IMG_2.heic").write_bytes(heic_bytes(2))
    assert sync(m).returncode == 0
    converted = live(client, dataset)["/cam/IMG_2.png"]
    (m.path / "cam" / "IMG_2.png").write_bytes(png_bytes(2))
    assert sync(m).returncode == 0
    assert sorted(os.listdir(m.path / "cam")) == ["IMG_1.png", "IMG_2.png"]
    assert (m.path / "cam" / "IMG_2.png").read_bytes() == png_bytes(2)
    assert live(client, dataset)["/cam/IMG_2.png"] != converted
    assert archived(client, dataset) == ["/cam/IMG_2.png"]


def test_renaming_the_name_written_renames_its_image(client, dataset, mount, server, tmp_path):
    source = phone_folder(tmp_path / "src")
    m = mount(dataset.name, *FAST)
    assert run("cp", "-r", str(source), str(m.path)).returncode == 0
    assert sync(m).returncode == 0
    ids = live(client, dataset)
    phone = m.path / "iphone"
    (phone / "sub").mkdir()
    counts = Counts(server)
    os.rename(phone / "IMG_2001.heic", phone / "sub" / "IMG_2001.heic")  # a server-side move
    assert os.listdir(phone / "sub") == ["IMG_2001.heic"]
    assert counts.puts() == 0 and counts.since()["move"] == 1, counts.since()
    # two names of one image: as rename(2) of two links to one file, nothing happens
    os.rename(phone / "sub" / "IMG_2001.heic", phone / "sub" / "IMG_2001.png")
    os.rename(phone / "IMG_2002.HEIC", phone / "renamed.heic")  # a new name: a new image
    assert sync(m).returncode == 0
    now = live(client, dataset)
    assert now["/iphone/sub/IMG_2001.png"] == ids["/iphone/IMG_2001.png"]
    assert set(now) == {"/iphone/sub/IMG_2001.png", "/iphone/renamed.png",
                        "/iphone/IMG_3000.jpg"}
    assert archived(client, dataset) == ["/iphone/IMG_2002.png"]
    os.rename(phone, m.path / "phone2")  # a folder rename takes the names along
    assert sorted(os.listdir(m.path / "phone2")) == ["IMG_3000.jpg", "renamed.heic", "sub"]
    assert m.umount().returncode == 0
    again = mount(dataset.name, *FAST, mountpoint=m.path)
    assert sorted(os.listdir(again.path / "phone2")) == ["IMG_3000.jpg", "renamed.heic", "sub"]
    assert os.listdir(again.path / "phone2" / "sub") == ["IMG_2001.heic"]
    assert live(client, dataset)["/phone2/sub/IMG_2001.png"] == ids["/iphone/IMG_2001.png"]
