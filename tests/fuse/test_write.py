"""The write side of the mount, through a real FUSE mount and real tools (filesystem §5–§7).

Each test drives the mount with the tools people use (``cp``, ``rsync``, ``mv``, ``rm``,
``mkdir``, ``rmdir``, ``touch``, ``setfattr``, shell redirection), waits for the uploads with
``pictofs sync``, and checks the service through the API client: which images exist, under
which id, with which bytes. Request counts come from the server's ``/metrics``, so "exactly
one upload" or "a server-side move, no upload" is checked exactly. Most mounts use a short
``--write-back`` so uploads start quickly; a few use a very long one, so that what they check
cannot be an upload that simply came due. Nothing waits on the wall clock except polls with a
deadline.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from imagegen import jpeg_bytes, png_bytes, sized_jpeg
from mountkit import assert_registers_follow_urls, staging_files
from pictofs.api import folders as folders_api
from pictofs.model import Image
from seed import seed_images

pytestmark = pytest.mark.fuse

API = "/api/v1/developer"
UPLOAD_URL = f"{API}/images/upload-url"
BULK_UPLOAD_URL = f"{API}/images/bulk-upload-url"
REGISTER = f"{API}/images/register"
BULK_REGISTER = f"{API}/images/bulk-register"
PUT = "/storage/upload/{token}"
BATCH_DELETE = f"{API}/batch/images/delete"
BATCH_MOVE = f"{API}/batch/images/move"

FAST = ("--write-back", "0.2s")

MB = 1024 * 1024


# ---------------------------------------------------------------------- helpers


class Counts:
    """POST counts of the upload and batch routes, taken at construction; ``.since()`` gives
    what was added after."""

    ROUTES = {"upload_url": UPLOAD_URL, "bulk_upload_url": BULK_UPLOAD_URL,
              "register": REGISTER, "bulk_register": BULK_REGISTER,
              "delete": BATCH_DELETE, "move": BATCH_MOVE}

    def __init__(self, server) -> None:  # type: ignore[no-untyped-def]
        self.server = server
        self.start = self._now()

    def _now(self) -> dict[str, int]:
        metrics = self.server.metrics()
        counts = {key: sum(n for (method, r, _s), n in metrics.items()
                           if method == "POST" and r == route)
                  for key, route in self.ROUTES.items()}
        counts["put"] = sum(n for (method, r, _s), n in metrics.items()
                            if method == "PUT" and r == PUT)
        return counts

    def since(self) -> dict[str, int]:
        now = self._now()
        return {key: now[key] - self.start[key] for key in now}

    def uploads(self) -> int:
        """Upload-URL requests, single or bulk (one bulk request serves many files)."""
        changes = self.since()
        return changes["upload_url"] + changes["bulk_upload_url"]

    def files_sent(self) -> int:
        """Files whose bytes went up (one storage PUT each); checks that every upload-URL
        request was followed by one register request of its kind: exactly one for a single
        file, one or more for a batch (one per ``REGISTER_PIECE`` files at most, as a large
        batch registers what landed while its other PUTs are in flight)."""
        changes = self.since()
        assert_registers_follow_urls(changes, changes["put"])
        return changes["put"]


def sync(m, timeout: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """``pictofs sync MOUNTPOINT``: returns when the mount's uploads have landed (and fails
    the test if they have not within ``timeout``, when given)."""
    extra = ["--timeout", timeout] if timeout else []
    result = subprocess.run([sys.executable, "-m", "pictofs", "sync", str(m.path), *extra],
                            capture_output=True, text=True, env=m.env, timeout=180,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"pictofs sync failed: {result.stderr}\n{m.log()[-3000:]}"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; with ``check``, fail the test (with its stderr) if it fails."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result


def live(client, dataset,  # type: ignore[no-untyped-def]
         folder: str | None = None) -> dict[str, Image]:
    """Path → image of the dataset's live images (or of one folder)."""
    return {img.path: img for img in client.images.list(dataset.id, folder_path=folder)}


def everything(client, dataset) -> dict[str, Image]:  # type: ignore[no-untyped-def]
    """Id → image, archived ones included."""
    return {img.id: img for img in client.images.list(dataset.id, include_archived=True)}


def service_bytes(client, image_id: str, tmp_path: Path) -> bytes:  # type: ignore[no-untyped-def]
    target = tmp_path / f"download-{image_id}"
    client.images.download(image_id, target)
    data = target.read_bytes()
    target.unlink()
    return data


def folder_paths(client, dataset) -> set[str]:  # type: ignore[no-untyped-def]
    return {f.full_path for f in folders_api.list_folders(client.transport, dataset.id)}


def errno_of(func: Callable[[], object]) -> int:
    """The errno ``func`` fails with (the test fails if it succeeds)."""
    with pytest.raises(OSError) as info:
        func()
    return info.value.errno  # type: ignore[return-value]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def write_tree(root: Path, names: list[str], data_for: Callable[[str], bytes]) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in names:
        made[name] = data_for(name)
        (root / name).write_bytes(made[name])
    return made


AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276}


def renameat2(old: Path, new: Path, flags: int) -> None:
    """rename(2) with flags, through libc's ``renameat2`` or the raw system call."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
        rc = func(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    else:
        number = SYS_RENAMEAT2.get(platform.machine())
        if number is None:
            pytest.skip("no renameat2 on this platform")
        libc.syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p, ctypes.c_uint]
        rc = libc.syscall(number, AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new),
                          flags)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old))


# ---------------------------------------------------------------------- copying in


def test_cp_r_of_300_images_uploads_each_once(client, dataset, mount, server, tmp_path):
    names = [f"p{i:03d}.png" for i in range(300)]
    made = write_tree(tmp_path / "src" / "shots", names, lambda n: png_bytes(1000 + int(n[1:4])))
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("cp", "-r", str(tmp_path / "src" / "shots"), str(m.path))
    sync(m)
    images = live(client, dataset, "/shots")
    assert sorted(img.filename for img in images.values()) == names
    for image in images.values():
        assert service_bytes(client, image.id, tmp_path) == made[image.filename], image.path
    assert counts.files_sent() == 300, counts.since()  # each file once, singly or in a batch
    assert sorted(os.listdir(m.path / "shots")) == names
    assert m.status()["uploads"]["pending"] == 0


@pytest.mark.profiles("reference", "hosted")
def test_files_due_together_go_up_with_the_bulk_routes(client, dataset, mount, server,
                                                      tmp_path):
    """Uploads held back until ``pictofs sync`` are all due at once: the workers send them in
    batches, one storage PUT per file and one bulk upload-url and bulk register call per
    batch, never a file twice."""
    names = [f"b{i:02d}.png" for i in range(40)]
    made = write_tree(tmp_path / "src" / "bulk", names, lambda n: png_bytes(5000 + int(n[1:3])))
    m = mount(dataset.name, "--write-back", "1h")
    counts = Counts(server)
    run("cp", "-r", str(tmp_path / "src" / "bulk"), str(m.path))
    assert counts.uploads() == 0, counts.since()  # held back until the sync
    sync(m, timeout="120")  # starts them at once: it does not wait for the hour
    images = live(client, dataset, "/bulk")
    assert sorted(img.filename for img in images.values()) == names
    for image in list(images.values())[::8]:
        assert service_bytes(client, image.id, tmp_path) == made[image.filename], image.path
    assert counts.files_sent() == 40, counts.since()
    changes = counts.since()
    assert changes["bulk_upload_url"] >= 1, changes
    assert counts.uploads() <= 40 // 8 + 1, changes  # batches of 8 files or more, bar one


@pytest.mark.profiles("reference", "hosted")
def test_rsync_twice_transfers_nothing_and_a_changed_file_replaces_its_image(
        client, dataset, mount, server, tmp_path):
    names = [f"r{i}.png" for i in range(6)]
    source = tmp_path / "src" / "photos"
    write_tree(source, names, lambda n: png_bytes(2000 + int(n[1])))
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("rsync", "-a", str(source), str(m.path))
    out = run("rsync", "-ai", str(source), str(m.path)).stdout  # uploads may be pending
    assert not [line for line in out.splitlines() if line.startswith(">f")], out
    sync(m)
    assert counts.files_sent() == 6, counts.since()
    first = live(client, dataset, "/photos")
    assert sorted(img.filename for img in first.values()) == names

    counts = Counts(server)
    out = run("rsync", "-ai", str(source), str(m.path)).stdout
    assert not [line for line in out.splitlines() if line.startswith(">f")], out
    sync(m)
    assert counts.uploads() == 0 and counts.since()["register"] == 0, counts.since()

    changed = png_bytes(2999)
    (source / "r3.png").write_bytes(changed)
    os.utime(source / "r3.png", (time.time() + 10, time.time() + 10))
    counts = Counts(server)
    out = run("rsync", "-ai", str(source), str(m.path)).stdout
    assert [line.split()[-1] for line in out.splitlines() if line.startswith(">f")] \
        == ["photos/r3.png"], out
    sync(m)
    changes = counts.since()
    assert changes["upload_url"] == 1 and changes["register"] == 1, changes
    now = live(client, dataset, "/photos")
    old_id = first["/photos/r3.png"].id
    new_id = now["/photos/r3.png"].id
    assert new_id != old_id
    assert service_bytes(client, new_id, tmp_path) == changed
    assert {p: i.id for p, i in now.items() if p != "/photos/r3.png"} == \
        {p: i.id for p, i in first.items() if p != "/photos/r3.png"}
    assert everything(client, dataset)[old_id].is_archived
    assert (m.path / ".archive" / "photos" / "r3.png").read_bytes() == png_bytes(2003)
    assert (m.path / "photos" / "r3.png").read_bytes() == changed


def test_cp_p_keeps_the_mtime(client, dataset, mount, tmp_path):
    source = tmp_path / "old.jpg"
    source.write_bytes(jpeg_bytes(5))
    when = 1_600_000_000.25
    os.utime(source, (when, when))
    m = mount(dataset.name, *FAST)
    run("cp", "-p", str(source), str(m.path / "old.jpg"))
    assert os.stat(m.path / "old.jpg").st_mtime == pytest.approx(when, abs=1e-4)
    sync(m)
    m.refresh()
    assert "/old.jpg" in live(client, dataset)
    assert os.stat(m.path / "old.jpg").st_mtime == pytest.approx(when, abs=1e-4)
    assert (m.path / "old.jpg").read_bytes() == source.read_bytes()
    # touch -d on an image: recorded for its id, nothing uploaded
    image = live(client, dataset)["/old.jpg"]
    run("touch", "-d", "@1500000000", str(m.path / "old.jpg"))
    assert os.stat(m.path / "old.jpg").st_mtime == 1_500_000_000
    assert live(client, dataset)["/old.jpg"].id == image.id


@pytest.mark.profiles("reference", "hosted")
def test_cp_over_an_image_replaces_it_unless_the_bytes_are_the_same(client, dataset, mount,
                                                                    server, tmp_path):
    made = seed_images(client, dataset.id, "/", ["same.png", "diff.png"])
    (tmp_path / "same.png").write_bytes(made["same.png"][1])
    (tmp_path / "diff.png").write_bytes(png_bytes(5150))
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("cp", str(tmp_path / "same.png"), str(m.path / "same.png"))
    run("cp", str(tmp_path / "diff.png"), str(m.path / "diff.png"))
    sync(m)
    assert counts.uploads() == 1, counts.since()
    images = live(client, dataset)
    assert images["/same.png"].id == made["same.png"][0].id
    assert images["/diff.png"].id != made["diff.png"][0].id
    assert service_bytes(client, images["/diff.png"].id, tmp_path) == png_bytes(5150)
    assert everything(client, dataset)[made["diff.png"][0].id].is_archived
    assert (m.path / "diff.png").read_bytes() == png_bytes(5150)


# ---------------------------------------------------------------------- moving


@pytest.mark.profiles("reference", "hosted")
def test_mv_between_folders_is_one_server_side_move(client, dataset, mount, server):
    made = seed_images(client, dataset.id, "/a", ["x.png"])
    seed_images(client, dataset.id, "/b", ["other.png"])
    taken = seed_images(client, dataset.id, "/c", ["x.png"])["x.png"][0]
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("mv", str(m.path / "a" / "x.png"), str(m.path / "b" / "x.png"))
    changes = counts.since()
    assert changes["move"] == 1 and counts.uploads() == 0, changes
    assert live(client, dataset)["/b/x.png"].id == made["x.png"][0].id
    assert os.listdir(m.path / "a") == []
    assert (m.path / "b" / "x.png").read_bytes() == made["x.png"][1]
    # onto an image of the same name in another folder: that one is replaced (archived)
    counts = Counts(server)
    run("mv", str(m.path / "b" / "x.png"), str(m.path / "c" / "x.png"))
    assert counts.uploads() == 0, counts.since()
    assert live(client, dataset)["/c/x.png"].id == made["x.png"][0].id
    assert everything(client, dataset)[taken.id].is_archived


@pytest.mark.profiles("reference", "hosted")
def test_mv_to_a_new_name_keeps_annotations(client, dataset, mount, server, tmp_path):
    made = seed_images(client, dataset.id, "/", ["x.png"])
    old = made["x.png"][0]
    boxes = [{"type": "bbox", "label": "car", "bbox": [1, 2, 3, 4]}]
    client.transport.request_json("POST", f"/annotations/{dataset.id}/x.png",
                                  json={"annotations": boxes})
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("mv", str(m.path / "x.png"), str(m.path / "y.png"))
    sync(m)
    assert counts.uploads() == 1, counts.since()
    images = live(client, dataset)
    assert "/x.png" not in images
    renamed = images["/y.png"]
    assert service_bytes(client, renamed.id, tmp_path) == made["x.png"][1]
    assert [a["label"] for a in client.annotations.get(renamed.id)] == ["car"]
    assert everything(client, dataset)[old.id].is_archived
    assert sorted(os.listdir(m.path)) == ["y.png"]


@pytest.mark.profiles("reference", "hosted")
def test_folder_rename_and_move_keep_ids(client, dataset, mount, server):
    ids = {f"/f/{n}": img.id for n, (img, _d) in
           seed_images(client, dataset.id, "/f", ["a.png", "b.png"]).items()}
    ids.update({f"/f/sub/{n}": img.id for n, (img, _d) in
                seed_images(client, dataset.id, "/f/sub", ["c.png"]).items()})
    seed_images(client, dataset.id, "/parent", ["p.png"])
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("mv", str(m.path / "f"), str(m.path / "g"))
    assert {p: i.id for p, i in live(client, dataset).items() if p != "/parent/p.png"} == \
        {"/g" + p[2:]: i for p, i in ids.items()}
    run("mv", str(m.path / "g"), str(m.path / "parent" / "g"))
    assert {p: i.id for p, i in live(client, dataset).items() if p != "/parent/p.png"} == \
        {"/parent/g" + p[2:]: i for p, i in ids.items()}
    assert counts.uploads() == 0, counts.since()
    assert "/f" not in folder_paths(client, dataset) and "/g" not in folder_paths(client, dataset)
    assert sorted(os.listdir(m.path)) == ["parent"]
    assert sorted(os.listdir(m.path / "parent" / "g")) == ["a.png", "b.png", "sub"]
    assert os.listdir(m.path / "parent" / "g" / "sub") == ["c.png"]


# ---------------------------------------------------------------------- rm and the archive


@pytest.mark.profiles("reference", "hosted")
def test_rm_archives_and_the_archive_restores_and_deletes(client, dataset, mount, server,
                                                         tmp_path):
    first = seed_images(client, dataset.id, "/", ["x.png"])["x.png"][0]
    m = mount(dataset.name, *FAST)
    run("rm", str(m.path / "x.png"))
    assert "/x.png" not in live(client, dataset)
    assert everything(client, dataset)[first.id].is_archived
    assert os.listdir(m.path / ".archive") == ["x.png"]
    assert os.listdir(m.path) == []

    # restore: same id, back under its name
    run("mv", str(m.path / ".archive" / "x.png"), str(m.path / "x.png"))
    assert live(client, dataset)["/x.png"].id == first.id
    assert os.listdir(m.path / ".archive") == []

    # a second image of that name, then both archived: newest keeps the name
    run("rm", str(m.path / "x.png"))
    (tmp_path / "x.png").write_bytes(png_bytes(77))
    run("cp", str(tmp_path / "x.png"), str(m.path / "x.png"))
    sync(m)
    second = live(client, dataset)["/x.png"]
    assert second.id != first.id
    run("rm", str(m.path / "x.png"))
    older = f"x.{first.id[:8]}.png"
    assert sorted(os.listdir(m.path / ".archive")) == sorted(["x.png", older])
    assert (m.path / ".archive" / "x.png").read_bytes() == png_bytes(77)

    # restoring onto a taken name is refused
    (tmp_path / "y.png").write_bytes(png_bytes(78))
    run("cp", str(tmp_path / "y.png"), str(m.path / "x.png"))
    sync(m)
    assert errno_of(lambda: os.rename(m.path / ".archive" / "x.png", m.path / "x.png")) \
        == errno.EEXIST
    assert everything(client, dataset)[second.id].is_archived

    # rm inside the archive deletes for good
    run("rm", str(m.path / ".archive" / older))
    assert first.id not in everything(client, dataset)
    assert older not in os.listdir(m.path / ".archive")


def test_restore_into_another_folder_keeps_the_id(client, dataset, mount, server):
    image = seed_images(client, dataset.id, "/d", ["a.png"])["a.png"][0]
    seed_images(client, dataset.id, "/e", ["other.png"])
    m = mount(dataset.name, *FAST)
    run("rm", str(m.path / "d" / "a.png"))
    counts = Counts(server)
    run("mv", str(m.path / ".archive" / "d" / "a.png"), str(m.path / "e" / "a.png"))
    assert counts.uploads() == 0, counts.since()
    assert live(client, dataset)["/e/a.png"].id == image.id
    assert os.listdir(m.path / "d") == []
    assert sorted(os.listdir(m.path / "e")) == ["a.png", "other.png"]


def test_permanent_delete_mount_deletes_for_good(client, dataset, mount):
    made = seed_images(client, dataset.id, "/", ["gone.png", "kept.png"])
    m = mount(dataset.name, *FAST, "--permanent-delete")
    run("rm", str(m.path / "gone.png"))
    ids = everything(client, dataset)
    assert made["gone.png"][0].id not in ids and made["kept.png"][0].id in ids
    assert os.listdir(m.path) == ["kept.png"]
    assert os.listdir(m.path / ".archive") == []


def test_archive_is_hidden_from_listings_but_reachable(client, dataset, mount):
    seed_images(client, dataset.id, "/d", ["a.png", "b.png"])
    m = mount(dataset.name, *FAST)
    run("rm", str(m.path / "d" / "a.png"))
    listing = run("ls", "-a", str(m.path)).stdout.split()
    assert ".archive" not in listing and "d" in listing
    found = run("find", str(m.path)).stdout.splitlines()
    assert not [p for p in found if ".archive" in p], found
    assert sorted(Path(p).name for p in found if p.endswith(".png")) == ["b.png"]
    assert os.listdir(m.path / ".archive" / "d") == ["a.png"]
    assert errno_of(lambda: (m.path / ".archive" / "d" / "new.png").write_bytes(b"x")) \
        == errno.EROFS


# ---------------------------------------------------------------------- folders


@pytest.mark.profiles("reference", "hosted")
def test_mkdir_p_rmdir_and_rm_r(client, dataset, mount):
    seed_images(client, dataset.id, "/full", ["k.png"])
    seed_images(client, dataset.id, "/tree", ["t1.png"])
    seed_images(client, dataset.id, "/tree/deep", ["t2.png"])
    seed_images(client, dataset.id, "/emptied", ["e.png"])
    m = mount(dataset.name, *FAST)
    run("mkdir", "-p", str(m.path / "a" / "b" / "c"))
    assert {"/a", "/a/b", "/a/b/c"} <= folder_paths(client, dataset)
    run("rmdir", str(m.path / "a" / "b" / "c"))
    assert "/a/b/c" not in folder_paths(client, dataset)
    assert os.listdir(m.path / "a" / "b") == []
    assert errno_of(lambda: os.rmdir(m.path / "full")) == errno.ENOTEMPTY
    result = run("rmdir", str(m.path / "full"), check=False)
    assert result.returncode != 0 and "not empty" in result.stderr.lower()
    assert "/full/k.png" in live(client, dataset)
    run("rm", "-r", str(m.path / "tree"))
    assert not [p for p in live(client, dataset) if p.startswith("/tree/")]
    assert not [p for p in folder_paths(client, dataset) if p.startswith("/tree")]
    assert "tree" not in os.listdir(m.path)
    # archived images do not count; a file just written does
    run("rm", str(m.path / "emptied" / "e.png"))
    run("rmdir", str(m.path / "emptied"))
    assert "/emptied" not in folder_paths(client, dataset)
    (m.path / "a" / "b" / "new.png").write_bytes(png_bytes(8100))
    assert errno_of(lambda: os.rmdir(m.path / "a" / "b")) == errno.ENOTEMPTY
    sync(m)
    assert "/a/b/new.png" in live(client, dataset)


# ---------------------------------------------------------------------- bad input


def test_write_past_50_mb_is_efbig_and_uploads_nothing(client, dataset, mount, server):
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    head = jpeg_bytes(9)
    chunk = bytes(MB)
    fd = os.open(m.path / "huge.jpg", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    written, failure = 0, None
    try:
        os.write(fd, head)
        written = len(head)
        while written < 60 * MB:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                failure = exc
                break
    finally:
        close_errno = errno_of(lambda: os.close(fd))
    assert failure is not None and failure.errno == errno.EFBIG
    assert written <= 50 * MB < written + len(chunk), written
    assert close_errno == errno.EFBIG
    sync(m)
    assert counts.uploads() == 0, counts.since()
    assert "huge.jpg" not in os.listdir(m.path)
    assert "/huge.jpg" not in live(client, dataset)


ERROR_XATTR = "user.pictofs.error"
NOT_AN_IMAGE = b"not an image Pillow can read"
EMPTY_FILE = b"empty file: nothing to upload"


def failed_paths(m) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(item["path"] for item in m.status()["uploads"]["failed"])


@pytest.mark.profiles("reference", "hosted")
def test_text_named_jpg_fails_at_close_and_stays_failed_until_rm(client, dataset, mount,
                                                                 server, tmp_path):
    """Bytes that are not an image: EINVAL at close (so ``cp`` reports it), and the file
    stays, as a failed upload with its reason, through a remount, until ``rm``; written
    again with an image, it uploads. ``echo x > a.jpg`` (bash ignores the close error)
    leaves such a file too."""
    source = tmp_path / "fake.jpg"
    source.write_text("this is not an image\n" * 100)
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    result = run("cp", str(source), str(m.path / "fake.jpg"), check=False)
    assert result.returncode != 0 and "Invalid argument" in result.stderr, result.stderr
    fd = os.open(m.path / "fake2.jpg", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"plain text")
    assert errno_of(lambda: os.close(fd)) == errno.EINVAL
    run("bash", "-c", f"echo x > '{m.path / 'echo.jpg'}'", check=False)
    kept = {"fake.jpg": source.read_bytes(), "fake2.jpg": b"plain text", "echo.jpg": b"x\n"}
    for name, data in kept.items():
        assert (m.path / name).read_bytes() == data
        assert os.getxattr(m.path / name, ERROR_XATTR) == NOT_AN_IMAGE
    assert failed_paths(m) == ["/echo.jpg", "/fake.jpg", "/fake2.jpg"]
    text = run(sys.executable, "-m", "pictofs", "status", str(m.path), check=False)
    assert f"/fake.jpg: {NOT_AN_IMAGE.decode()}" in text.stdout, text.stdout

    os.unlink(m.path / "fake2.jpg")  # rm discards it
    good = jpeg_bytes(14)
    (m.path / "echo.jpg").write_bytes(good)  # an image now: an upload again
    assert errno_of(lambda: os.getxattr(m.path / "echo.jpg", ERROR_XATTR)) == errno.ENODATA
    wait_for(lambda: "/echo.jpg" in live(client, dataset), "echo.jpg to land")
    result = m.umount()  # names the one still failed
    m.mounted = False
    assert result.returncode != 0 and "/fake.jpg" in result.stderr, result.stderr

    again = mount(dataset.name, *FAST, mountpoint=m.path)
    assert sorted(os.listdir(again.path)) == ["echo.jpg", "fake.jpg"]
    assert (again.path / "fake.jpg").read_bytes() == kept["fake.jpg"]
    assert os.getxattr(again.path / "fake.jpg", ERROR_XATTR) == NOT_AN_IMAGE
    assert failed_paths(again) == ["/fake.jpg"]
    os.unlink(again.path / "fake.jpg")
    sync(again)
    landed = live(client, dataset)
    assert {p: service_bytes(client, i.id, tmp_path) for p, i in landed.items()} \
        == {"/echo.jpg": good}
    assert counts.files_sent() == 1, counts.since()
    assert again.umount().returncode == 0
    assert staging_files(again, dataset) == []


def test_a_0_byte_file_at_unmount_stays_failed_and_uploads_once_written(client, dataset,
                                                                         mount, server,
                                                                         tmp_path):
    """A 0-byte file stays local while mounted; at unmount it becomes a failed upload
    ("empty file"), kept in the journal: the next mount shows it (size 0, the reason in
    ``user.pictofs.error``, in ``pictofs status``) until ``rm``, and written with content
    it uploads as any file."""
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("touch", str(m.path / "empty.jpg"), str(m.path / "gone.jpg"))
    sync(m)  # not a failure while mounted: it may get content yet
    assert failed_paths(m) == []
    assert m.umount().returncode == 0
    assert "/empty.jpg: empty file: nothing to upload" in m.log()

    again = mount(dataset.name, *FAST, mountpoint=m.path)
    assert sorted(os.listdir(again.path)) == ["empty.jpg", "gone.jpg"]
    for name in ("empty.jpg", "gone.jpg"):
        assert os.stat(again.path / name).st_size == 0
        assert os.getxattr(again.path / name, ERROR_XATTR) == EMPTY_FILE
    assert failed_paths(again) == ["/empty.jpg", "/gone.jpg"]
    os.unlink(again.path / "gone.jpg")
    data = jpeg_bytes(15)
    (again.path / "empty.jpg").write_bytes(data)
    assert errno_of(lambda: os.getxattr(again.path / "empty.jpg", ERROR_XATTR)) \
        == errno.ENODATA
    sync(again)
    assert failed_paths(again) == []
    image = live(client, dataset)["/empty.jpg"]
    assert service_bytes(client, image.id, tmp_path) == data
    assert list(live(client, dataset)) == ["/empty.jpg"]
    assert counts.files_sent() == 1, counts.since()
    assert again.umount().returncode == 0
    assert staging_files(again, dataset) == []


def test_touch_then_write_uploads_once(client, dataset, mount, server, tmp_path):
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("touch", str(m.path / "a.jpg"))
    assert os.stat(m.path / "a.jpg").st_size == 0
    sync(m)
    assert counts.uploads() == 0, "a 0-byte file was uploaded"
    data = jpeg_bytes(11)
    with open(m.path / "a.jpg", "wb") as out:
        out.write(data)
    sync(m)
    assert counts.uploads() == 1, counts.since()
    image = live(client, dataset)["/a.jpg"]
    assert service_bytes(client, image.id, tmp_path) == data


def test_shell_redirection_writes_whole_images(client, dataset, mount, server, tmp_path):
    whole = sized_jpeg(300_000, seed=4)
    (tmp_path / "img.jpg").write_bytes(whole)
    (tmp_path / "part1").write_bytes(whole[:100_000])
    (tmp_path / "part2").write_bytes(whole[100_000:])
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    run("bash", "-c", 'cat "$1" > "$2"', "_", str(tmp_path / "img.jpg"), str(m.path / "one.jpg"))
    run("bash", "-c", '{ cat "$1"; cat "$2"; } > "$3"', "_", str(tmp_path / "part1"),
        str(tmp_path / "part2"), str(m.path / "two.jpg"))
    assert (m.path / "two.jpg").read_bytes() == whole
    sync(m)
    assert counts.files_sent() == 2, counts.since()
    images = live(client, dataset)
    for path in ("/one.jpg", "/two.jpg"):
        assert service_bytes(client, images[path].id, tmp_path) == whole, path


# ---------------------------------------------------------------------- concurrency


def test_two_parallel_cp_r_into_one_folder_all_land(client, dataset, mount, server, tmp_path):
    left = write_tree(tmp_path / "left", [f"l{i:02d}.png" for i in range(40)],
                      lambda n: png_bytes(3000 + int(n[1:3])))
    right = write_tree(tmp_path / "right", [f"r{i:02d}.png" for i in range(40)],
                       lambda n: png_bytes(4000 + int(n[1:3])))
    m = mount(dataset.name, *FAST)
    os.mkdir(m.path / "both")
    counts = Counts(server)
    copies = [subprocess.Popen(["cp", "-r", f"{tmp_path / side}/.", str(m.path / "both")],
                               stderr=subprocess.PIPE, text=True)
              for side in ("left", "right")]
    for copy in copies:
        _out, err = copy.communicate(timeout=180)
        assert copy.returncode == 0, err
    sync(m)
    made = {**left, **right}
    images = live(client, dataset, "/both")
    assert sorted(i.filename for i in images.values()) == sorted(made)
    assert counts.files_sent() == 80, counts.since()
    for image in list(images.values())[::10]:
        assert service_bytes(client, image.id, tmp_path) == made[image.filename]


def test_a_reader_sees_what_a_writer_has_written_so_far(client, dataset, mount, tmp_path):
    data = sized_jpeg(600_000, seed=6)
    m = mount(dataset.name, *FAST)
    target = m.path / "growing.jpg"
    fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data[:250_000])
        seen = subprocess.run(["cat", str(target)], capture_output=True, timeout=60).stdout
        assert seen == data[:250_000]
        os.write(fd, data[250_000:])
        seen = subprocess.run(["cat", str(target)], capture_output=True, timeout=60).stdout
        assert seen == data
    finally:
        os.close(fd)
    sync(m)
    assert subprocess.run(["cat", str(target)], capture_output=True).stdout == data
    image = live(client, dataset)["/growing.jpg"]
    assert service_bytes(client, image.id, tmp_path) == data


def test_mv_of_a_file_being_written_uploads_under_the_new_name(client, dataset, mount, server,
                                                               tmp_path):
    data = sized_jpeg(200_000, seed=7)
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    with open(m.path / "draft.jpg", "w+b") as handle:
        handle.write(data[:80_000])
        handle.flush()
        run("mv", str(m.path / "draft.jpg"), str(m.path / "final.jpg"))
        handle.write(data[80_000:])
        handle.flush()
        handle.seek(0)
        assert handle.read() == data
    sync(m)
    images = live(client, dataset)
    assert sorted(images) == ["/final.jpg"]
    assert service_bytes(client, images["/final.jpg"].id, tmp_path) == data
    assert counts.uploads() == 1, counts.since()
    assert sorted(os.listdir(m.path)) == ["final.jpg"]


def test_rm_of_a_file_being_written_uploads_nothing(client, dataset, mount, server):
    data = sized_jpeg(200_000, seed=8)
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    with open(m.path / "scratch.jpg", "w+b") as handle:
        handle.write(data[:50_000])
        handle.flush()
        run("rm", str(m.path / "scratch.jpg"))
        assert "scratch.jpg" not in os.listdir(m.path)
        handle.write(data[50_000:])
        handle.flush()
        handle.seek(0)
        assert handle.read() == data
    sync(m)
    assert counts.uploads() == 0, counts.since()
    assert live(client, dataset) == {}
    assert os.listdir(m.path) == []


@pytest.mark.profiles("reference", "hosted")
def test_closed_staged_files_renamed_upload_at_once_and_removed_upload_nothing(
        client, dataset, mount, server, tmp_path):
    """With a write-back far away, the only way these uploads happen within the sync's
    timeout is the rename rule (queued at once); ``rm`` cancels before anything is sent."""
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(12))
    (tmp_path / "c.jpg").write_bytes(jpeg_bytes(13))
    m = mount(dataset.name, "--write-back", "1h")
    os.mkdir(m.path / "sub")
    counts = Counts(server)
    run("cp", str(tmp_path / "a.jpg"), str(tmp_path / "c.jpg"), str(m.path))
    run("mv", str(m.path / "a.jpg"), str(m.path / "sub" / "b.jpg"))
    run("rm", str(m.path / "c.jpg"))
    assert os.listdir(m.path / "sub") == ["b.jpg"] and os.listdir(m.path) == ["sub"]
    sync(m, timeout="60s")
    assert counts.uploads() == 1, counts.since()
    images = live(client, dataset)
    assert sorted(images) == ["/sub/b.jpg"]
    assert service_bytes(client, images["/sub/b.jpg"].id, tmp_path) == jpeg_bytes(12)


def test_rm_and_mv_of_an_image_being_read_keep_the_handle_reading(client, dataset, mount):
    made = seed_images(client, dataset.id, "/", ["r.jpg", "s.jpg"],
                       data_for=lambda n: sized_jpeg(400_000, seed=ord(n[0])))
    m = mount(dataset.name, *FAST)
    with open(m.path / "r.jpg", "rb") as removed, open(m.path / "s.jpg", "rb") as moved:
        head_r, head_s = removed.read(1000), moved.read(1000)
        run("rm", str(m.path / "r.jpg"))
        run("mv", str(m.path / "s.jpg"), str(m.path / "t.jpg"))
        assert head_r + removed.read() == made["r.jpg"][1]
        assert head_s + moved.read() == made["s.jpg"][1]
    assert sorted(os.listdir(m.path)) == ["t.jpg"]
    assert sorted(live(client, dataset)) == ["/t.jpg"]


# ---------------------------------------------------------------------- rename flags


def test_renameat2_noreplace_and_exchange(client, dataset, mount, server):
    made = seed_images(client, dataset.id, "/", ["a.png", "b.png"])
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    assert errno_of(lambda: renameat2(m.path / "a.png", m.path / "b.png", RENAME_NOREPLACE)) \
        == errno.EEXIST
    assert errno_of(lambda: renameat2(m.path / "a.png", m.path / "b.png", RENAME_EXCHANGE)) \
        == errno.EINVAL
    assert {p: i.id for p, i in live(client, dataset).items()} == \
        {"/a.png": made["a.png"][0].id, "/b.png": made["b.png"][0].id}
    assert counts.since() == {k: 0 for k in [*Counts.ROUTES, "put"]}
    os.mkdir(m.path / "sub")
    renameat2(m.path / "a.png", m.path / "sub" / "a.png", RENAME_NOREPLACE)
    assert live(client, dataset)["/sub/a.png"].id == made["a.png"][0].id


# ---------------------------------------------------------------------- extended attributes


def test_setfattr_split_and_tags_reach_the_service(client, dataset, mount):
    image = seed_images(client, dataset.id, "/", ["x.png"])["x.png"][0]
    m = mount(dataset.name, *FAST)
    path = str(m.path / "x.png")
    run("setfattr", "-n", "user.pictograph.split", "-v", "train", path)
    run("setfattr", "-n", "user.pictograph.tags", "-v", '["a","b"]', path)
    stored = client.images.get(image.id)
    assert stored.split == "train" and sorted(stored.tags) == ["a", "b"]
    out = run("getfattr", "--only-values", "-n", "user.pictograph.tags", path).stdout
    assert sorted(json.loads(out)) == ["a", "b"]
    run("setfattr", "-n", "user.pictograph.tags", "-v", '["b"]', path)
    assert list(client.images.get(image.id).tags) == ["b"]


def test_split_and_tags_set_on_a_staged_file_apply_after_register(client, dataset, mount,
                                                                  tmp_path):
    """The write-back is far away, so the attributes are surely set while the file is staged;
    the rename then queues the upload at once, and the attributes follow it."""
    m = mount(dataset.name, "--write-back", "1h")
    (tmp_path / "new.png").write_bytes(png_bytes(6100))
    run("cp", str(tmp_path / "new.png"), str(m.path / "new.png"))
    run("setfattr", "-n", "user.pictograph.split", "-v", "val", str(m.path / "new.png"))
    run("setfattr", "-n", "user.pictograph.tags", "-v", '["fresh"]', str(m.path / "new.png"))
    assert live(client, dataset) == {}
    run("mv", str(m.path / "new.png"), str(m.path / "final.png"))
    sync(m, timeout="60s")
    stored = live(client, dataset)["/final.png"]
    assert stored.split == "val" and list(stored.tags) == ["fresh"]
    assert errno_of(lambda: os.setxattr(m.path / "final.png", "user.pictograph.split",
                                        b"sometimes")) == errno.EINVAL


def test_files_waiting_for_their_upload_hold_no_descriptor(client, dataset, mount, tmp_path):
    """Thousands of closed files may wait for their uploads (held back here, or a slow
    service): each used to keep its staging file open until it landed, and a process may
    open only so many. Closed files, images and sidecars alike, hold none; they still read
    back whole, and land."""
    source = tmp_path / "DCIM"
    source.mkdir()
    for i in range(150):
        (source / f"IMG_{i:04d}.jpg").write_bytes(jpeg_bytes(1000 + i))
        (source / f"IMG_{i:04d}.xmp").write_bytes(b"<x:xmpmeta/>" * (i + 1))
    m = mount(dataset.name, "--write-back", "1h")
    pid = int(m.status()["pid"])
    before = len(os.listdir(f"/proc/{pid}/fd"))
    run("cp", "-r", str(source), str(m.path))
    held = len(os.listdir(f"/proc/{pid}/fd")) - before
    assert held < 20, f"{held} more descriptors open after copying 300 closed files"
    assert (m.path / "DCIM" / "IMG_0007.jpg").read_bytes() == jpeg_bytes(1007)
    assert (m.path / "DCIM" / "IMG_0007.xmp").read_bytes() == b"<x:xmpmeta/>" * 8
    sync(m, timeout="120s")
    images = live(client, dataset)
    assert len([p for p in images if p.startswith("/DCIM/")]) == 150
    assert service_bytes(client, images["/DCIM/IMG_0149.jpg"].id, tmp_path) == jpeg_bytes(1149)
