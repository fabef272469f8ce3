"""Files copied out of a mount carry its extended attributes; copying them back in must be
quiet (filesystem §2 "Extended attributes"), through real mounts and real tools.

``cp -a``, ``rsync -aX`` and ``mv`` across datasets set every ``user.pictograph.*`` attribute
the copy carries on the new file. The ones pictofs derives (id, width, status, ...) are
accepted and ignored: the new image shows its own. The writable ones (``split``, ``tags``)
are kept with the staged file, in the upload journal too, and set on the image once it
lands, also when the daemon was killed in between. Each test checks the service through the
API client.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from imagegen import png_bytes
from mountkit import kill_daemon, live, sync, wait_for
from pictofs.model import Image

pytestmark = pytest.mark.fuse

FAST = ("--write-back", "0.2s")
SPLIT, TAGS = "user.pictograph.split", "user.pictograph.tags"
LABELS = {"a.png": ("train", ["cat", "indoor"]), "b.png": ("val", ["dog"]),
          "c.png": (None, [])}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a tool that must succeed without a word on stderr."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, ""), f"{' '.join(args)}: {result}"
    return result


def uploads_pending(m) -> int:  # type: ignore[no-untyped-def]
    return int(m.status()["uploads"]["pending"])


def label(folder: Path) -> None:
    """Give the images of ``folder`` (in a mount) their split and tags, through setfattr."""
    for name, (split, tags) in LABELS.items():
        run("setfattr", "-n", SPLIT, "-v", split or "", str(folder / name))
        run("setfattr", "-n", TAGS, "-v", json.dumps(tags), str(folder / name))


def copied_out(m, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """``cp -a`` of the mount's labelled ``/src`` to a local folder: the copies carry every
    listed ``user.pictograph.*`` attribute."""
    out = tmp_path / "out"
    run("cp", "-a", str(m.path / "src"), str(out))
    carried = os.listxattr(out / "a.png")
    assert "user.pictograph.id" in carried and "user.pictograph.width" in carried
    assert os.getxattr(out / "a.png", SPLIT) == b"train"
    return out


def assert_labelled_copies(images: dict[str, Image], folder: str,
                           originals: dict[str, Image]) -> None:
    """The images of ``folder`` are new images with the originals' split and tags and
    their own derived attributes."""
    for name, (split, tags) in LABELS.items():
        new, old = images[f"{folder}/{name}"], originals[f"/src/{name}"]
        assert new.id != old.id, name
        assert (new.split, sorted(new.tags)) == (split, sorted(tags)), (name, new)
        assert (new.width, new.height) == (old.width, old.height)


def seed_labelled(client, dataset, mount):  # type: ignore[no-untyped-def]
    m = mount(dataset.name, *FAST)
    (m.path / "src").mkdir()
    for index, name in enumerate(LABELS):
        (m.path / "src" / name).write_bytes(png_bytes(7100 + index))
    sync(m)
    label(m.path / "src")
    return m, live(client, dataset, "/src")


def test_cp_a_and_rsync_ax_of_copies_land_with_their_split_and_tags(client, dataset, mount,
                                                                   tmp_path):
    m, originals = seed_labelled(client, dataset, mount)
    out = copied_out(m, tmp_path)
    other = client.projects.create(dataset.name[:50] + "-other")
    o = mount(other.name, *FAST)

    run("cp", "-a", str(out), str(m.path / "cp"))
    run("rsync", "-aX", str(out) + "/", str(m.path / "rsynced") + "/")
    run("rsync", "-aX", str(out) + "/", str(o.path / "rsynced") + "/")
    # staged or landed, a copy shows the split it has or will have
    assert os.getxattr(m.path / "cp" / "a.png", SPLIT) == b"train"
    sync(m)
    sync(o)

    mine = live(client, dataset)
    assert_labelled_copies(mine, "/cp", originals)
    assert_labelled_copies(mine, "/rsynced", originals)
    assert_labelled_copies(live(client, other), "/rsynced", originals)
    # what the mount shows of a copy is the new image's own
    copy = live(client, dataset, "/cp")["/cp/a.png"]
    assert os.getxattr(m.path / "cp" / "a.png", "user.pictograph.id") == copy.id.encode()
    assert sorted(json.loads(os.getxattr(m.path / "cp" / "a.png", TAGS))) == ["cat", "indoor"]
    # a second rsync -aX sends nothing and says nothing (its xattr updates are accepted)
    again = run("rsync", "-aXi", str(out) + "/", str(m.path / "rsynced") + "/")
    assert not [line for line in again.stdout.splitlines() if line.startswith(">f")]
    assert "Operation not permitted" not in m.log()


def test_mv_across_two_datasets_keeps_split_and_tags(client, dataset, mount):
    m, originals = seed_labelled(client, dataset, mount)
    m.umount()
    other = client.projects.create(dataset.name[:50] + "-to")
    org = mount(None, *FAST)
    run("mv", str(org.path / dataset.name / "src"), str(org.path / other.name / "moved"))
    sync(org)
    assert_labelled_copies(live(client, other), "/moved", originals)
    assert live(client, dataset, "/src") == {}  # moved, not copied: the old images archived


def test_split_and_tags_of_a_staged_file_survive_kill_9_and_land(client, dataset, mount,
                                                                tmp_path):
    """One file gets them from ``cp -a`` before its first close (kept with its flush), one
    from ``setfattr`` after it (kept at once); the write-back is far away, so both are
    staged when the daemon is killed."""
    source = tmp_path / "x.png"
    source.write_bytes(png_bytes(7200))
    os.setxattr(source, SPLIT, b"test")
    os.setxattr(source, TAGS, b'["kept"]')
    os.setxattr(source, "user.pictograph.id", b"an-old-id")
    m = mount(dataset.name, "--write-back", "1h")
    run("cp", "-a", str(source), str(m.path / "x.png"))
    (m.path / "y.png").write_bytes(png_bytes(7201))
    run("setfattr", "-n", TAGS, "-v", '["late"]', str(m.path / "y.png"))
    wait_for(lambda: uploads_pending(m) == 2, "2 pending uploads")
    assert live(client, dataset) == {}
    kill_daemon(m)

    again = mount(dataset.name, "--write-back", "1h", mountpoint=m.path)
    # resumed uploads start at once: staged, landing or landed, the files show them
    assert os.getxattr(again.path / "x.png", SPLIT) == b"test"
    assert json.loads(os.getxattr(again.path / "y.png", TAGS)) == ["late"]
    sync(again)
    landed = live(client, dataset)
    assert (landed["/x.png"].split, list(landed["/x.png"].tags)) == ("test", ["kept"])
    assert (landed["/y.png"].split, list(landed["/y.png"].tags)) == (None, ["late"])
    assert os.getxattr(again.path / "x.png", "user.pictograph.id") == landed["/x.png"].id.encode()


def test_derived_attributes_are_accepted_and_ignored_and_removing_one_changes_nothing(
        client, dataset, mount, tmp_path):
    m, originals = seed_labelled(client, dataset, mount)
    path = m.path / "src" / "a.png"
    image = originals["/src/a.png"]
    for name, value in (("id", b"another"), ("width", b"1"), ("status", b"done"),
                        ("annotations", b"[]")):
        os.setxattr(path, "user.pictograph." + name, value)
    for name in ("id", "width", SPLIT, TAGS):
        os.removexattr(path, name if name.startswith("user.") else "user.pictograph." + name)
    assert os.getxattr(path, "user.pictograph.id") == image.id.encode()
    assert os.getxattr(path, "user.pictograph.width") == str(image.width).encode()
    stored = client.images.get(image.id)
    assert (stored.split, sorted(stored.tags), stored.status) == \
        ("train", ["cat", "indoor"], image.status)
    # names pictofs does not show: setting one is not supported (which cp -a and mv pass
    # over in silence), removing one finds nothing
    download = tmp_path / "download.png"
    download.write_bytes(png_bytes(7300))
    os.setxattr(download, "user.xdg.origin.url", b"https://example.com/download.png")
    run("cp", "-a", str(download), str(m.path / "src" / "copied.png"))
    run("mv", str(download), str(m.path / "src" / "moved.png"))
    with pytest.raises(OSError) as info:
        os.setxattr(path, "user.pictograph.colour", b"red")
    assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.removexattr(path, "user.colour")
    assert info.value.errno == errno.ENODATA
    # a writable one still refuses a value it cannot take
    with pytest.raises(OSError) as info:
        os.setxattr(path, SPLIT, b"sometimes")
    assert info.value.errno == errno.EINVAL
