"""One filesystem suite, several harnesses: scenario functions over a ``Driver``.

A scenario is a plain function ``scenario_x(fs, service)``: it drives the filesystem with
``fs`` (paths are absolute inside one dataset mount: ``/cats/x.png``) and checks the service
with ``service`` (the API client and the dataset). The same functions run against the core
in-process (``tests/core/test_tree_scenarios.py``: ``TreeDriver`` calls the ``Vfs`` verbs the
FUSE adapter calls) and through a real mount (``tests/fuse/test_tree_scenarios.py``:
``MountDriver`` makes ``os`` calls under a mountpoint), as rclone's vfstest does.

Errors are ``OSError`` with an errno in both harnesses (the tree driver translates domain
errors with ``pictofs.fs.errno_map`` as the adapter does), so a scenario asserts errnos once.
After what uploads, a scenario calls ``fs.sync()`` (``pictofs sync`` for a mount) before it
looks at the service. Every scenario starts on an empty dataset and is quick: images are a
few hundred bytes, nothing waits on the clock except polls with a deadline.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from imagegen import png_bytes

from pictofs.model import Image

WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True)
class Attrs:
    """What a scenario looks at in a ``stat``: the type and permission bits, and the size."""

    mode: int
    size: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


class Driver:
    """The verbs a scenario may use; both harnesses implement the abstract ones with the
    errno semantics of ``os`` (failures raise ``OSError`` with ``errno`` set)."""

    def stat(self, path: str) -> Attrs:
        raise NotImplementedError

    def listdir(self, path: str) -> dict[str, Attrs]:
        """Name → attributes of a folder's entries (without ``.`` and ``..``)."""
        raise NotImplementedError

    def mkdir(self, path: str) -> None:
        raise NotImplementedError

    def rmdir(self, path: str) -> None:
        raise NotImplementedError

    def unlink(self, path: str) -> None:
        raise NotImplementedError

    def rename(self, old: str, new: str) -> None:
        raise NotImplementedError

    def open(self, path: str, flags: int) -> int:
        """``os.open``: with ``O_CREAT``, a missing file is created."""
        raise NotImplementedError

    def read(self, fd: int, size: int, offset: int) -> bytes:
        raise NotImplementedError

    def write(self, fd: int, data: bytes, offset: int) -> int:
        raise NotImplementedError

    def close(self, fd: int) -> None:
        """Flush (its error is raised, as ``close(2)`` returns it) and release."""
        raise NotImplementedError

    def truncate(self, path: str, length: int) -> None:
        raise NotImplementedError

    def getxattr(self, path: str, name: str) -> bytes:
        raise NotImplementedError

    def listxattr(self, path: str) -> list[str]:
        raise NotImplementedError

    def statfs(self) -> dict[str, int]:
        """``statvfs`` of the mount: ``f_bsize``, ``f_blocks``, ``f_bavail``, ``f_namemax``..."""
        raise NotImplementedError

    def sync(self) -> None:
        """Return once every upload of the mount has landed (fail if one failed)."""
        raise NotImplementedError

    # -------------------------------------------------------------- built on the above

    def write_file(self, path: str, data: bytes) -> None:
        fd = self.open(path, WRITE)
        try:
            offset = 0
            while offset < len(data):
                offset += self.write(fd, data[offset:offset + (1 << 20)], offset)
        except BaseException:
            self._close_quietly(fd)
            raise
        self.close(fd)

    def read_file(self, path: str) -> bytes:
        fd = self.open(path, os.O_RDONLY)
        try:
            chunks = []
            offset = 0
            while True:
                chunk = self.read(fd, 1 << 20, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
        finally:
            self.close(fd)
        return b"".join(chunks)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FileNotFoundError:
            return False
        return True

    def _close_quietly(self, fd: int) -> None:
        try:
            self.close(fd)
        except OSError:
            pass


@dataclass
class Service:
    """The service side of a scenario: the dataset, seen through the API client."""

    client: Any  # pictofs.api.Client
    dataset: Any  # pictofs.model.Dataset

    def live(self) -> dict[str, Image]:
        """Path → live image."""
        return {img.path: img for img in self.client.images.list(self.dataset.id)}

    def archived(self) -> dict[str, Image]:
        """Path → archived image (the newest when several share a path)."""
        found: dict[str, Image] = {}
        for img in self.client.images.list(self.dataset.id, include_archived=True):
            if img.is_archived:
                found[img.path] = img
        return found


def errno_of(func: Callable[[], object]) -> int:
    """The errno ``func`` fails with (the scenario fails if it succeeds)."""
    with pytest.raises(OSError) as info:
        func()
    return info.value.errno  # type: ignore[return-value]


# --------------------------------------------------------------------------- scenarios


def scenario_write_read_list(fs: Driver, service: Service) -> None:
    """A new image reads back, is listed with its size while pending and once landed."""
    data = png_bytes(101)
    fs.write_file("/a.png", data)
    attrs = fs.stat("/a.png")
    assert attrs.is_file and attrs.size == len(data)
    assert fs.listdir("/")["a.png"].size == len(data)
    assert fs.read_file("/a.png") == data
    fs.sync()
    landed = service.live()
    assert set(landed) == {"/a.png"}
    assert landed["/a.png"].file_size == len(data)
    assert fs.listdir("/")["a.png"].size == len(data)
    assert fs.read_file("/a.png") == data


def scenario_mkdir_write_listdir(fs: Driver, service: Service) -> None:
    fs.mkdir("/cats")
    assert fs.stat("/cats").is_dir
    assert fs.listdir("/cats") == {}
    data = png_bytes(102)
    fs.write_file("/cats/x.png", data)
    assert set(fs.listdir("/cats")) == {"x.png"}
    root = fs.listdir("/")
    assert root["cats"].is_dir and "x.png" not in root
    fs.sync()
    assert set(service.live()) == {"/cats/x.png"}
    assert fs.read_file("/cats/x.png") == data


def scenario_rename_file_within_folder(fs: Driver, service: Service) -> None:
    """An image renamed in its folder, and a file renamed before its upload landed."""
    landed_bytes, pending_bytes = png_bytes(103), png_bytes(104)
    fs.write_file("/a.png", landed_bytes)
    fs.sync()
    fs.rename("/a.png", "/b.png")
    fs.write_file("/c.png", pending_bytes)
    fs.rename("/c.png", "/d.png")
    assert set(fs.listdir("/")) == {"b.png", "d.png"}
    assert errno_of(lambda: fs.stat("/a.png")) == errno.ENOENT
    assert errno_of(lambda: fs.stat("/c.png")) == errno.ENOENT
    assert fs.read_file("/b.png") == landed_bytes
    assert fs.read_file("/d.png") == pending_bytes
    fs.sync()
    live = service.live()
    assert set(live) == {"/b.png", "/d.png"}
    assert live["/b.png"].file_size == len(landed_bytes)
    assert "/a.png" in service.archived()  # renamed to a new name: uploaded, the old archived


def scenario_rename_file_across_folders(fs: Driver, service: Service) -> None:
    """Same name, another folder: a move on the service (same id)."""
    fs.mkdir("/src")
    fs.mkdir("/dst")
    data = png_bytes(105)
    fs.write_file("/src/a.png", data)
    fs.sync()
    before = service.live()["/src/a.png"]
    fs.rename("/src/a.png", "/dst/a.png")
    assert fs.listdir("/src") == {}
    assert fs.listdir("/dst")["a.png"].size == len(data)
    assert fs.read_file("/dst/a.png") == data
    fs.sync()
    after = service.live()
    assert set(after) == {"/dst/a.png"}
    assert after["/dst/a.png"].id == before.id


def scenario_rename_folder(fs: Driver, service: Service) -> None:
    fs.mkdir("/old")
    images = {"a.png": png_bytes(106), "b.png": png_bytes(107)}
    for name, data in images.items():
        fs.write_file(f"/old/{name}", data)
    fs.sync()
    ids = {img.filename: img.id for img in service.live().values()}
    fs.rename("/old", "/new")
    assert errno_of(lambda: fs.stat("/old")) == errno.ENOENT
    assert fs.stat("/new").is_dir
    assert {n: a.size for n, a in fs.listdir("/new").items()} == \
        {n: len(d) for n, d in images.items()}
    assert fs.read_file("/new/b.png") == images["b.png"]
    fs.sync()
    live = service.live()
    assert set(live) == {"/new/a.png", "/new/b.png"}
    assert {img.filename: img.id for img in live.values()} == ids


def scenario_unlink_archives(fs: Driver, service: Service) -> None:
    """``rm`` of an image archives it: gone from its folder, listed in ``.archive/``."""
    data = png_bytes(108)
    fs.write_file("/a.png", data)
    fs.sync()
    image_id = service.live()["/a.png"].id
    fs.unlink("/a.png")
    assert errno_of(lambda: fs.stat("/a.png")) == errno.ENOENT
    assert "a.png" not in fs.listdir("/")
    assert ".archive" not in fs.listdir("/")
    assert fs.listdir("/.archive")["a.png"].size == len(data)
    assert service.live() == {}
    assert service.archived()["/a.png"].id == image_id


def scenario_rmdir(fs: Driver, service: Service) -> None:
    """An empty folder goes; one holding a file (pending, then landed) is ENOTEMPTY."""
    fs.mkdir("/empty")
    fs.rmdir("/empty")
    assert errno_of(lambda: fs.stat("/empty")) == errno.ENOENT
    fs.mkdir("/full")
    fs.write_file("/full/x.png", png_bytes(109))
    assert errno_of(lambda: fs.rmdir("/full")) == errno.ENOTEMPTY
    fs.sync()
    assert errno_of(lambda: fs.rmdir("/full")) == errno.ENOTEMPTY
    assert set(service.live()) == {"/full/x.png"}
    assert fs.listdir("/").keys() == {"full"}


def scenario_missing_paths_are_enoent(fs: Driver, service: Service) -> None:
    assert errno_of(lambda: fs.stat("/nope.png")) == errno.ENOENT
    assert errno_of(lambda: fs.listdir("/nope")) == errno.ENOENT
    assert errno_of(lambda: fs.open("/nope.png", os.O_RDONLY)) == errno.ENOENT
    assert errno_of(lambda: fs.unlink("/nope.png")) == errno.ENOENT
    assert errno_of(lambda: fs.rmdir("/nope")) == errno.ENOENT
    assert errno_of(lambda: fs.rename("/nope.png", "/x.png")) == errno.ENOENT
    assert errno_of(lambda: fs.truncate("/nope.png", 0)) == errno.ENOENT
    assert errno_of(lambda: fs.getxattr("/nope.png", "user.pictograph.id")) == errno.ENOENT
    assert errno_of(lambda: fs.open("/nofolder/x.png", WRITE)) == errno.ENOENT
    assert errno_of(lambda: fs.mkdir("/nofolder/sub")) == errno.ENOENT
    assert fs.listdir("/") == {}


def scenario_mkdir_existing_is_eexist(fs: Driver, service: Service) -> None:
    fs.mkdir("/d")
    assert errno_of(lambda: fs.mkdir("/d")) == errno.EEXIST
    fs.write_file("/f.png", png_bytes(110))
    assert errno_of(lambda: fs.mkdir("/f.png")) == errno.EEXIST
    assert errno_of(lambda: fs.open("/f.png", WRITE | os.O_EXCL)) == errno.EEXIST
    fs.sync()
    assert errno_of(lambda: fs.mkdir("/f.png")) == errno.EEXIST
    assert fs.stat("/f.png").is_file and fs.stat("/d").is_dir


def scenario_a_non_image_name_stays_local(fs: Driver, service: Service) -> None:
    """A name the service does not take is kept on this machine: listed, read back,
    marked ``user.pictofs.local_only``, never uploaded; ``rm`` removes it."""
    fs.write_file("/notes.txt", b"hello")
    fs.write_file("/a.png", png_bytes(113))
    assert fs.listdir("/")["notes.txt"].size == 5
    assert fs.read_file("/notes.txt") == b"hello"
    assert "user.pictofs.local_only" in fs.listxattr("/notes.txt")
    assert fs.getxattr("/notes.txt", "user.pictofs.local_only") == b"not on the service"
    fs.sync()
    assert set(service.live()) == {"/a.png"}
    fs.unlink("/notes.txt")
    assert errno_of(lambda: fs.stat("/notes.txt")) == errno.ENOENT


def scenario_not_an_image_is_einval_at_close_and_kept_as_failed(fs: Driver,
                                                                service: Service) -> None:
    """Bytes Pillow cannot identify: EINVAL at close; the file stays, as a failed upload
    with its reason in ``user.pictofs.error``, until ``rm`` or until it is written again
    with an image (which then uploads)."""
    text = b"this is not an image at all"
    for path in ("/bad.png", "/gone.png"):
        fd = fs.open(path, WRITE)
        fs.write(fd, text, 0)
        assert errno_of(lambda: fs.close(fd)) == errno.EINVAL
        assert fs.stat(path).size == len(text)
        assert fs.read_file(path) == text
        assert b"not an image" in fs.getxattr(path, "user.pictofs.error")
        assert "user.pictofs.error" in fs.listxattr(path)
    fs.unlink("/gone.png")
    assert not fs.exists("/gone.png")
    assert set(fs.listdir("/")) == {"bad.png"}
    good = png_bytes(111)
    fs.write_file("/bad.png", good)  # an image now: an upload again
    assert errno_of(lambda: fs.getxattr("/bad.png", "user.pictofs.error")) == errno.ENODATA
    fs.sync()
    assert set(service.live()) == {"/bad.png"}
    assert service.live()["/bad.png"].file_size == len(good)
    assert fs.read_file("/bad.png") == good
    assert not service.archived()


def scenario_empty_file_stays_local(fs: Driver, service: Service) -> None:
    """A 0-byte file is listed (size 0) and never uploaded."""
    fd = fs.open("/empty.png", WRITE)
    fs.close(fd)
    assert fs.stat("/empty.png").size == 0
    fs.write_file("/real.png", png_bytes(112))
    fs.sync()
    assert set(service.live()) == {"/real.png"}
    assert fs.listdir("/")["empty.png"].size == 0
    assert fs.read_file("/empty.png") == b""
    # Removed, so that its failed upload at unmount (filesystem.md) is not left in the
    # journal of the shared state folder for the organization mounts of later tests.
    fs.unlink("/empty.png")
    assert "empty.png" not in fs.listdir("/")


def scenario_xattrs_of_an_image(fs: Driver, service: Service) -> None:
    fs.write_file("/a.png", png_bytes(113, size=(8, 6)))
    fs.sync()
    image = service.live()["/a.png"]
    names = fs.listxattr("/a.png")
    for field in ("id", "status", "split", "tags", "width", "height", "content_type"):
        assert f"user.pictograph.{field}" in names, names
    assert fs.getxattr("/a.png", "user.pictograph.id") == image.id.encode()
    assert fs.getxattr("/a.png", "user.pictograph.width") == b"8"
    assert fs.getxattr("/a.png", "user.pictograph.height") == b"6"
    assert errno_of(lambda: fs.getxattr("/a.png", "user.pictograph.nope")) == errno.ENODATA
    fs.mkdir("/d")
    assert [n for n in fs.listxattr("/d") if n.startswith("user.pictograph.")] == []


def scenario_truncate_pending_file(fs: Driver, service: Service) -> None:
    """A file being written is cut back by ``truncate`` (path) before it is closed."""
    data = png_bytes(114)
    fd = fs.open("/t.png", WRITE)
    fs.write(fd, data + b"\0" * 5000, 0)
    assert fs.stat("/t.png").size == len(data) + 5000
    fs.truncate("/t.png", len(data))
    assert fs.stat("/t.png").size == len(data)
    fs.close(fd)
    assert fs.read_file("/t.png") == data
    fs.sync()
    assert service.live()["/t.png"].file_size == len(data)
    assert fs.read_file("/t.png") == data


def scenario_truncate_closed_file_waiting_for_its_upload(fs: Driver, service: Service) -> None:
    """A closed file whose upload waits for the write-back is grown by ``truncate`` (path,
    no handle, as ``truncate -s``): held, recorded and uploaded as a close would, with the
    new bytes (a JPEG or PNG with zeros after its end is still an image)."""
    data = png_bytes(115)
    fs.write_file("/w.png", data)
    fs.truncate("/w.png", len(data) + 3000)
    assert fs.stat("/w.png").size == len(data) + 3000
    fs.sync()  # (no read first: the close of a read would record the bytes anyway)
    assert service.live()["/w.png"].file_size == len(data) + 3000
    assert fs.read_file("/w.png") == data + b"\0" * 3000


def scenario_statfs(fs: Driver, service: Service) -> None:
    found = fs.statfs()
    assert found["f_namemax"] == 255
    assert found["f_bsize"] > 0 and found["f_blocks"] > 0
    assert 1 <= found["f_bavail"] <= found["f_blocks"]
    assert found["f_files"] > 0


SCENARIOS: list[Callable[[Driver, Service], None]] = [
    scenario_write_read_list,
    scenario_mkdir_write_listdir,
    scenario_rename_file_within_folder,
    scenario_rename_file_across_folders,
    scenario_rename_folder,
    scenario_unlink_archives,
    scenario_rmdir,
    scenario_missing_paths_are_enoent,
    scenario_mkdir_existing_is_eexist,
    scenario_a_non_image_name_stays_local,
    scenario_not_an_image_is_einval_at_close_and_kept_as_failed,
    scenario_empty_file_stays_local,
    scenario_xattrs_of_an_image,
    scenario_truncate_pending_file,
    scenario_truncate_closed_file_waiting_for_its_upload,
    scenario_statfs,
]


def scenario_id(scenario: Callable[..., Any]) -> str:
    return scenario.__name__.removeprefix("scenario_")
