"""Names and paths from the service that a mount cannot take as they are, through a real
mount (filesystem "What you see", "Names the mount cannot show"; "Renaming and the
archive", "A service folder named .archive"):

- an image whose name is not one path segment made the kernel fail the whole ``ls`` with
  EIO, with no log line: it is skipped (one log line, ``skipped_names`` in ``pictofs
  status``) and the rest listed;
- a folder 1,500 levels deep (deeper than Python's recursion limit) failed with EIO and a
  RecursionError in the log: it is reached;
- the service's own folder ``.archive`` at a dataset's root was hidden by the virtual
  archive: it shows as ``.archive~service``, listed, read and written into.

The reference server refuses the bad names, so they are written into its database
(``servicedb``); the ``.archive`` folder and the deep one are made through its folders route.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from imagegen import png_bytes
from mountkit import live, sync
from seed import seed_images
from servicedb import rename_images

from pictofs.api import folders as folders_api

pytestmark = pytest.mark.fuse

WRITE_BACK = ("--write-back", "0.2s")
BAD_NAMES = ["../../x.png", "sub/x.png", "/abs.png", ""]


def test_ls_of_a_folder_holding_names_that_are_not_one_segment_lists_the_rest(
        server, client, dataset, mount):  # type: ignore[no-untyped-def]
    made = seed_images(client, dataset.id, "/",
                       ["good.png", *[f"b{i}.png" for i in range(len(BAD_NAMES))]])
    rename_images(server, {made[f"b{i}.png"][0].id: name for i, name in enumerate(BAD_NAMES)})
    m = mount(dataset.name, "--read-only")
    assert os.listdir(m.path) == ["good.png"]
    assert (m.path / "good.png").read_bytes() == made["good.png"][1]
    m.refresh()
    ls = subprocess.run(["ls", "-la", str(m.path)], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert m.status()["skipped_names"] == len(BAD_NAMES)
    text = subprocess.run([sys.executable, "-m", "pictofs", "status", str(m.path)],
                          capture_output=True, text=True, env=m.env, timeout=60)
    assert f"skipped:    {len(BAD_NAMES)} names" in text.stdout, text.stdout
    lines = [line for line in m.log().splitlines() if "skipped in" in line]
    assert len(lines) == len(BAD_NAMES), lines  # once per name, not once per listing


def test_a_folder_1500_levels_deep_is_reached(client, dataset, mount
                                              ):  # type: ignore[no-untyped-def]
    deep = "a/" * 1499 + "a"
    folders_api.create_folder(client.transport, dataset.id, "/" + deep)
    m = mount(dataset.name, *WRITE_BACK)
    folder = m.path / deep
    assert len(os.fsencode(folder / "x.png")) < 4096  # PATH_MAX
    # walked once by the kernel; then relative to the open folder, so each call below is
    # not a walk of 1,500 lookups again
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        assert os.listdir(fd) == []
        data = png_bytes(601)
        out = os.open("x.png", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=fd)
        try:
            assert os.write(out, data) == len(data)
        finally:
            os.close(out)
        sync(m)
        assert os.stat("x.png", dir_fd=fd).st_size == len(data)
        into = os.open("x.png", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.read(into, len(data) + 1) == data
        finally:
            os.close(into)
    finally:
        os.close(fd)
    assert f"/{deep}/x.png" in live(client, dataset)


def test_the_service_folder_named_archive_is_listed_read_and_written_as_archive_service(
        client, dataset, mount):  # type: ignore[no-untyped-def]
    inside = seed_images(client, dataset.id, "/.archive", ["in.png"])
    gone = seed_images(client, dataset.id, "/", ["gone.png"])
    client.images.delete(gone["gone.png"][0].id)
    m = mount(dataset.name, *WRITE_BACK)
    alias = m.path / ".archive~service"
    assert os.listdir(m.path) == [".archive~service"]
    assert os.listdir(m.path / ".archive") == ["gone.png"]  # the virtual archive
    assert os.listdir(alias) == ["in.png"]
    assert (alias / "in.png").read_bytes() == inside["in.png"][1]
    data = png_bytes(602)
    (alias / "new.png").write_bytes(data)
    sync(m)
    landed = live(client, dataset)
    assert set(landed) == {"/.archive/in.png", "/.archive/new.png"}
    assert landed["/.archive/new.png"].file_size == len(data)
    m.refresh()
    assert sorted(os.listdir(alias)) == ["in.png", "new.png"]
    assert (alias / "new.png").read_bytes() == data
