"""Listings through READDIRPLUS, and the calls the kernel skips on reads, on a real mount
(filesystem §2–§4).

The daemon counts its FUSE callbacks (``callbacks`` in ``pictofs status --json``); libfuse's
high-level API turns every kernel lookup into a ``getattr`` callback, so "no ``getattr`` per
entry" means the kernel took each entry's attributes from the listing itself.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from imagegen import png_bytes
from seed import seed_images

pytestmark = pytest.mark.fuse


def callbacks(m, name: str) -> int:  # type: ignore[no-untyped-def]
    return int(m.status()["callbacks"].get(name, 0))


def ls_l(folder: Path) -> dict[str, tuple[str, int]]:
    """name → (type letter, size) from GNU ``ls -l``."""
    out = subprocess.run(["ls", "-l", "--time-style=+%s", str(folder)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    rows = {}
    for line in out.splitlines()[1:]:  # "total N" first
        fields = line.split(maxsplit=6)
        rows[fields[6]] = (fields[0][0], int(fields[4]))
    return rows


def test_ls_l_makes_no_getattr_per_entry_and_shows_the_listing_attributes(client, dataset,
                                                                          mount):
    # 300 entries: more than one READDIRPLUS buffer, so the kernel asks again with offsets
    names = [f"p{i:03d}.png" for i in range(300)]
    made = seed_images(client, dataset.id, "/many", names)
    seed_images(client, dataset.id, "/many/sub", ["s.png"])
    m = mount(dataset.name, "--read-only")
    os.listdir(m.path)  # the root first, so "many" is known
    getattrs = callbacks(m, "getattr")
    rows = ls_l(m.path / "many")
    # the folder itself may be looked up; its 301 entries may not
    assert callbacks(m, "getattr") - getattrs <= 2
    assert sorted(rows) == sorted(names + ["sub"])
    assert rows["sub"][0] == "d"
    for name, (image, data) in made.items():
        assert rows[name] == ("-", len(data)), name
    # stat right after the listing: the kernel's attributes from it, equal to the image's
    getattrs = callbacks(m, "getattr")
    for name, (image, data) in made.items():
        st = os.stat(m.path / "many" / name)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(data)
        assert abs(st.st_mtime - image.created_ts) < 1e-3
    assert callbacks(m, "getattr") - getattrs <= 2


def test_every_entry_listed_once_across_readdir_pages(client, dataset, mount):
    names = [f"n{i:04d}-{'x' * 40}.png" for i in range(700)]  # long names: many pages
    seed_images(client, dataset.id, "/", names)
    m = mount(dataset.name, "--read-only")
    listed = os.listdir(m.path)
    assert sorted(listed) == sorted(names)  # no duplicate, none missing, no .archive
    # a second pass through a fresh handle lists the same again
    with os.scandir(m.path) as entries:
        again = [(e.name, e.is_file(follow_symlinks=False)) for e in entries]
    assert sorted(again) == [(n, True) for n in sorted(names)]


def test_files_written_through_the_mount_show_with_their_size_in_ls_l(client, dataset, mount):
    seed_images(client, dataset.id, "/w", ["old.png"])
    m = mount(dataset.name)
    data = png_bytes(7)
    (m.path / "w" / "new.png").write_bytes(data)
    (m.path / "w" / "localdir").mkdir()
    os.unlink(m.path / "w" / "old.png")
    rows = ls_l(m.path / "w")
    assert rows["new.png"] == ("-", len(data))
    assert rows["localdir"][0] == "d"
    assert "old.png" not in rows


def test_reading_an_image_makes_no_flush_call_and_keeps_the_page_cache(client, dataset, mount):
    made = seed_images(client, dataset.id, "/", ["k.png"])
    m = mount(dataset.name, "--read-only")
    data = made["k.png"][1]
    assert (m.path / "k.png").read_bytes() == data
    before = m.status()
    for _ in range(3):
        assert (m.path / "k.png").read_bytes() == data
    after = m.status()
    assert after["callbacks"].get("flush", 0) == before["callbacks"].get("flush", 0)
    assert after["reads"] == before["reads"], "a repeat read did not come from the page cache"


def test_the_archive_lists_with_its_read_only_attributes(client, dataset, mount):
    made = seed_images(client, dataset.id, "/old", ["gone.png", "kept.png"])
    client.images.delete(made["gone.png"][0].id)  # archived
    m = mount(dataset.name)
    rows = ls_l(m.path / ".archive" / "old")
    assert rows == {"gone.png": ("-", len(made["gone.png"][1]))}
    st = os.stat(m.path / ".archive" / "old" / "gone.png")
    assert st.st_mode & 0o222 == 0  # read-only, as the listing said
    assert sorted(os.listdir(m.path / "old")) == ["kept.png"]
