"""Real photo folders copied into a mount (filesystem §5 "Names that stay local").

A camera or phone folder holds more than images: sidecars (``IMG_0001.xmp``,
``IMG_0001.json``), notes, and the junk desktops leave (``.DS_Store``, ``Thumbs.db``). The
images go to the service; the rest is kept on this machine only, across remounts, so the
tools people copy with (``cp -r``, ``rsync -a``, ``tar -x``, ``unzip``,
``shutil.copytree``) exit 0, and a second ``rsync -a`` transfers nothing, also after a
remount. Kept files are listed, read back with their bytes, marked with
``user.pictofs.local_only`` and counted by ``pictofs status``; ``--local-only-max`` caps them
(``ENOSPC``) and ``--refuse-non-images`` refuses them (``ENOTSUP``) as before.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imagegen import jpeg_bytes, sized_jpeg
from mountkit import (Counts, journal_folder, kill_daemon, live, pictofs_cmd, service_bytes,
                      sync)

pytestmark = pytest.mark.fuse

FAST = ("--write-back", "0.2s")
IMAGES = {f"IMG_000{i}.jpg": jpeg_bytes(7100 + i) for i in range(1, 4)}
SIDECARS = {
    "IMG_0001.xmp": b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>\n',
    "IMG_0001.json": b'{"title": "IMG_0001.jpg", "photoTakenTime": {"timestamp": "1"}}\n',
    "notes.txt": b"beach, day two\n",
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(range(64)),
    "Thumbs.db": b"\xd0\xcf\x11\xe0" + b"\x00" * 60,
}
THUMB = (".thumbnails", "IMG_0001.jpg")  # a hidden folder: local-only, with what is in it
THUMB_BYTES = jpeg_bytes(7150)
LOCAL_ONLY = "user.pictofs.local_only"


def camera_folder(root: Path) -> Path:
    """A folder as a camera and a desktop leave it; mtimes in the past, as copied ones are."""
    folder = root / "DCIM"
    folder.mkdir(parents=True)
    for index, (name, data) in enumerate({**IMAGES, **SIDECARS}.items()):
        (folder / name).write_bytes(data)
        os.utime(folder / name, (1_600_000_000 + index, 1_600_000_000 + index))
    (folder / THUMB[0]).mkdir()
    (folder / THUMB[0] / THUMB[1]).write_bytes(THUMB_BYTES)
    return folder


def run(*args: str, cwd: Path | None = None) -> str:
    """Run a tool that must exit 0; its stdout."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}: " \
        f"{result.stderr}"
    return result.stdout


def rsync_transferred(source: Path, target: Path) -> int:
    """``rsync -a --stats SOURCE/ TARGET/`` (must exit 0): regular files transferred."""
    out = run("rsync", "-a", "--stats", f"{source}/", f"{target}/")
    found = re.search(r"Number of regular files transferred: (\d+)", out)
    assert found, out
    return int(found.group(1))


def assert_copied(folder: Path) -> None:
    """Every file of the camera folder is there with its bytes; sidecars are marked."""
    listed = set(os.listdir(folder))
    assert listed == set(IMAGES) | set(SIDECARS) | {THUMB[0]}, listed
    assert os.listdir(folder / THUMB[0]) == [THUMB[1]]
    assert (folder / THUMB[0] / THUMB[1]).read_bytes() == THUMB_BYTES
    for name, data in {**IMAGES, **SIDECARS}.items():
        assert (folder / name).read_bytes() == data, name
    for name in SIDECARS:
        assert os.getxattr(folder / name, LOCAL_ONLY) == b"not on the service", name
        assert LOCAL_ONLY in os.listxattr(folder / name)
    for name in IMAGES:
        assert LOCAL_ONLY not in os.listxattr(folder / name)


def assert_images_only_on_service(client, dataset, folder: str,  # type: ignore[no-untyped-def]
                                  scratch: Path) -> None:
    images = live(client, dataset, folder)
    assert sorted(img.filename for img in images.values()) == sorted(IMAGES), images
    for image in images.values():
        assert service_bytes(client, image.id, scratch) == IMAGES[image.filename]


def test_cp_and_rsync_of_a_camera_folder_converge_across_a_remount(client, dataset, mount,
                                                                    server, tmp_path):
    source = camera_folder(tmp_path / "src")
    m = mount(dataset.name, *FAST)
    run("cp", "-r", str(source), str(m.path / "cp"))
    assert rsync_transferred(source, m.path / "rs") == len(IMAGES) + len(SIDECARS) + 1
    assert rsync_transferred(source, m.path / "rs") == 0
    sync(m)
    for folder in ("cp", "rs"):
        assert_images_only_on_service(client, dataset, f"/{folder}", tmp_path)
        assert_copied(m.path / folder)
    status = m.status()["local_only"]
    kept = 2 * (len(SIDECARS) + 1)  # in two folders: the sidecars and the thumbnail
    assert status == {"files": kept, "bytes": 2 * (sum(len(d) for d in SIDECARS.values())
                                                   + len(THUMB_BYTES))}, status
    assert f"{kept} local-only files, not on the service" \
        in pictofs_cmd(m, "status", str(m.path)).stdout
    (m.path / "cp" / "notes.txt").unlink()  # rm: gone for good
    assert m.umount().returncode == 0

    counts = Counts(server)
    again = mount(dataset.name, *FAST, mountpoint=m.path)
    assert_copied(again.path / "rs")
    assert not (again.path / "cp" / "notes.txt").exists()
    assert os.stat(again.path / "rs" / "IMG_0001.xmp").st_mtime \
        == os.stat(source / "IMG_0001.xmp").st_mtime
    assert rsync_transferred(source, again.path / "rs") == 0
    run("cp", "-r", f"{source}/.", str(again.path / "cp"))  # cp again over the same files
    sync(again)
    assert counts.uploads() == 0, counts.since()
    assert again.status()["local_only"]["files"] == kept
    assert_copied(again.path / "cp")
    assert_images_only_on_service(client, dataset, "/rs", tmp_path)
    assert not [img for img in client.images.list(dataset.id, include_archived=True)
                if img.is_archived], "nothing may be archived"


def test_tar_unzip_and_copytree_of_a_camera_folder_exit_0(client, dataset, mount, tmp_path):
    source = camera_folder(tmp_path / "src")
    run("tar", "-cf", str(tmp_path / "dcim.tar"), "-C", str(source), ".")
    run("zip", "-qr", str(tmp_path / "dcim.zip"), ".", cwd=source)
    m = mount(dataset.name, *FAST)
    for folder in ("tar", "zip"):
        (m.path / folder).mkdir()
    run("tar", "-xf", str(tmp_path / "dcim.tar"), "-C", str(m.path / "tar"))
    run("unzip", "-q", str(tmp_path / "dcim.zip"), "-d", str(m.path / "zip"))
    shutil.copytree(source, m.path / "py")
    sync(m)
    for folder in ("tar", "zip", "py"):
        assert_images_only_on_service(client, dataset, f"/{folder}", tmp_path)
        assert_copied(m.path / folder)
    run("rm", "-r", str(m.path / "tar"))  # kept files go with rm, their folder too
    assert not (m.path / "tar").exists()
    assert m.status()["local_only"]["files"] == 2 * (len(SIDECARS) + 1)


def test_kept_files_survive_a_killed_daemon_and_transient_left_overs_do_not(dataset, mount):
    """What a killed ``rsync`` or editor leaves (a temporary name, a swap file) is gone at
    the next mount; a file a user copied in is there, with its bytes and mtime."""
    m = mount(dataset.name, *FAST)
    (m.path / "notes.txt").write_bytes(b"kept")
    os.utime(m.path / "notes.txt", (1_500_000_000, 1_500_000_000))
    (m.path / ".IMG_0009.jpg.AbC123").write_bytes(b"cut off")
    (m.path / "x.txt.swp").write_bytes(b"swap")
    kill_daemon(m)

    again = mount(dataset.name, *FAST, mountpoint=m.path)
    assert os.listdir(again.path) == ["notes.txt"]
    assert (again.path / "notes.txt").read_bytes() == b"kept"
    assert os.stat(again.path / "notes.txt").st_mtime == 1_500_000_000
    assert len(list((journal_folder(again, dataset) / "local").iterdir())) == 1
    assert "removed 2 left-over local file(s)" in again.log()


def test_local_only_max_gives_enospc_with_one_log_line(client, dataset, mount, tmp_path):
    m = mount(dataset.name, *FAST, "--local-only-max", "10K")
    (m.path / "a.txt").write_bytes(b"a" * 8192)
    with pytest.raises(OSError) as info:
        (m.path / "b.bin").write_bytes(b"b" * 4096)
    assert info.value.errno == errno.ENOSPC
    lines = [line for line in m.log().splitlines() if "--local-only-max" in line]
    assert len(lines) == 1 and "/b.bin" in lines[0], lines
    # an image rsync writes under a temporary name is on its way up: not counted
    big = sized_jpeg(30 * 1024, seed=7199)
    (tmp_path / "big.jpg").write_bytes(big)
    run("rsync", "-a", str(tmp_path / "big.jpg"), f"{m.path}/")
    (m.path / "a.txt").unlink()  # room again
    (m.path / "b.bin").write_bytes(b"b" * 4096)
    sync(m)
    assert [img.filename for img in live(client, dataset).values()] == ["big.jpg"]


def test_refuse_non_images_restores_enotsup(client, dataset, mount, server):
    m = mount(dataset.name, *FAST, "--refuse-non-images")
    counts = Counts(server)
    with pytest.raises(OSError) as info:
        (m.path / "notes.txt").write_text("hello")
    assert info.value.errno == errno.ENOTSUP
    assert not (m.path / "notes.txt").exists()
    lines = [line for line in m.log().splitlines()
             if "notes.txt" in line and "unsupported" in line]
    assert lines and all(ext in lines[0] for ext in (".jpg", ".png", ".heic")), lines
    (m.path / ".DS_Store").write_bytes(b"junk")  # local-only names are still kept
    assert (m.path / ".DS_Store").read_bytes() == b"junk"
    assert counts.uploads() == 0
