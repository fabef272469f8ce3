"""The desktop trash through a real mount, driven by GLib's own tools (filesystem "The
desktop trash"): ``gio trash`` of a file and of a folder, the trash as ``gio trash
--list`` (gvfs) and ``ls`` see it, after a remount too, ``gio trash --restore`` bringing
back the same image ids at their old paths, and ``gio trash --empty`` leaving the images
archived on the service. Before, a folder renamed into ``.Trash-0/files/`` failed with
``EINVAL`` and the trash lived only as long as the mount.

``gio trash --list``, ``--restore`` and ``--empty`` go through gvfs's trash backend, which
needs a session bus: each runs in its own ``dbus-run-session``. One test drives pcmanfm
under Xvfb with xdotool: its own Delete on a folder, its confirmation answered, its trash
view shown and kept as a screenshot (``build/test-artifacts/pcmanfm-trash.png``).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pytest
from PIL import ImageGrab

from imagegen import png_bytes
from mountkit import Counts, everything, live, sync, wait_for
from seed import seed_images

pytestmark = pytest.mark.fuse

WRITE_BACK = ("--write-back", "0.2s")


def gio(*args: str) -> subprocess.CompletedProcess[str]:
    """``gio ARGS``; ``trash`` with an option (``--list``, ``--restore``, ``--empty``) in a
    session bus of its own, as gvfs's trash backend needs one (``gio trash FILE`` is GLib
    alone, as in a file manager's process)."""
    bus = ["dbus-run-session", "--"] if args[0] == "trash" and args[1].startswith("--") \
        else []
    return subprocess.run([*bus, "gio", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, LC_ALL="C.UTF-8"))


def trash_list(m) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """``gio trash --list`` of this mount: name in the trash → original path."""
    result = gio("trash", "--list")
    assert result.returncode == 0, result.stderr
    listed = {}
    for line in result.stdout.splitlines():
        uri, _, original = line.partition("\t")
        location = unquote(uri[len("trash:///"):]).replace("\\", "/")
        if location.startswith(f"{m.path}/.Trash-0/files/"):
            listed[location.rsplit("/", 1)[1]] = original
    return listed


def archived_ids(client, dataset) -> set[str]:  # type: ignore[no-untyped-def]
    return {image.id for image in everything(client, dataset) if image.is_archived}


def remount(mount, m):  # type: ignore[no-untyped-def]
    result = m.umount()
    assert result.returncode == 0, result.stderr
    return mount(m.dataset, *WRITE_BACK, mountpoint=m.path)


def seed(client, dataset) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """/c.png, /cars/a.png, /cars/red/b.png on the service; path → image id."""
    made = {"/c.png": seed_images(client, dataset.id, "/", ["c.png"])["c.png"][0]}
    made["/cars/a.png"] = seed_images(client, dataset.id, "/cars", ["a.png"])["a.png"][0]
    made["/cars/red/b.png"] = seed_images(client, dataset.id, "/cars/red",
                                          ["b.png"])["b.png"][0]
    return {path: image.id for path, image in made.items()}


@pytest.mark.profiles("reference", "hosted")
def test_gio_trash_of_a_file_and_a_folder_survives_a_remount_and_restores_the_same_ids(
        client, dataset, mount, server):  # type: ignore[no-untyped-def]
    ids = seed(client, dataset)
    m = mount(dataset.name, *WRITE_BACK)
    counts = Counts(server)
    for name in ("c.png", "cars"):
        result = gio("trash", str(m.path / name))
        assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(m.path)) == []
    trash = m.path / ".Trash-0"
    assert sorted(os.listdir(trash / "files")) == ["c.png", "cars"]
    assert sorted(os.listdir(trash / "info")) == ["c.png.trashinfo", "cars.trashinfo"]
    assert "Path=cars\n" in (trash / "info" / "cars.trashinfo").read_text()
    assert live(client, dataset) == {}
    assert archived_ids(client, dataset) == set(ids.values())
    assert counts.uploads() == 0, counts.since()
    # the trash's state (trash.json, info/, kept bytes) is private, as all the state folder
    state = Path(m.env["XDG_STATE_HOME"]) / "pictofs"
    assert any(p.name == "trash.json" for p in state.rglob("*"))
    for path in state.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path

    m = remount(mount, m)
    trash = m.path / ".Trash-0"
    assert sorted(os.listdir(trash / "files" / "cars")) == ["a.png", "red"]
    assert os.listdir(trash / "files" / "cars" / "red") == ["b.png"]
    assert (trash / "files" / "c.png").stat().st_size > 0
    assert (trash / "files" / "cars" / "red" / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert trash_list(m) == {"c.png": str(m.path / "c.png"), "cars": str(m.path / "cars")}
    assert m.status()["trashed"] == 2

    for name in ("c.png", "cars"):
        listed = gio("trash", "--list").stdout
        uri = next(line.split("\t")[0] for line in listed.splitlines()
                   if line.endswith("\t" + str(m.path / name)))
        result = gio("trash", "--restore", uri)
        assert result.returncode == 0, result.stderr
    assert {path: image.id for path, image in live(client, dataset).items()} == ids
    assert sorted(os.listdir(m.path)) == ["c.png", "cars"]
    assert sorted(os.listdir(m.path / "cars")) == ["a.png", "red"]
    assert os.listdir(trash / "files") == [] and os.listdir(trash / "info") == []
    assert counts.uploads() == 0, counts.since()

    assert sorted(os.listdir(m.path / "cars" / "red")) == ["b.png"]


def test_emptying_the_trash_leaves_the_images_archived_and_files_never_uploaded_restore(
        client, dataset, mount, server):  # type: ignore[no-untyped-def]
    ids = seed(client, dataset)
    m = mount(dataset.name, "--write-back", "60s")  # the new files stay staged
    new_bytes, staged_bytes = png_bytes(4242), png_bytes(4244)
    (m.path / "new.png").write_bytes(new_bytes)
    (m.path / "kept.png").write_bytes(png_bytes(4243))
    (m.path / "cars" / "staged.png").write_bytes(staged_bytes)
    counts = Counts(server)
    for name in ("c.png", "cars", "new.png", "kept.png"):
        result = gio("trash", str(m.path / name))
        assert result.returncode == 0, result.stderr
    assert (m.path / ".Trash-0" / "files" / "new.png").read_bytes() == new_bytes
    sync(m)
    assert counts.uploads() == 0, counts.since()  # trashed before they went up: not sent

    m = remount(mount, m)
    trash = m.path / ".Trash-0"
    assert (trash / "files" / "new.png").read_bytes() == new_bytes
    assert (trash / "files" / "cars" / "staged.png").read_bytes() == staged_bytes
    # a file manager's "Restore" is a rename back (and the trashinfo removed)
    for name in ("new.png", "cars"):
        os.rename(trash / "files" / name, m.path / name)
        os.unlink(trash / "info" / f"{name}.trashinfo")
    sync(m)
    landed = {path: image.id for path, image in live(client, dataset).items()}
    assert sorted(landed) == ["/cars/a.png", "/cars/red/b.png", "/cars/staged.png", "/new.png"]
    assert {p: landed[p] for p in ("/cars/a.png", "/cars/red/b.png")} == \
        {p: ids[p] for p in ("/cars/a.png", "/cars/red/b.png")}  # the same images
    assert (m.path / "new.png").read_bytes() == new_bytes
    assert (m.path / "cars" / "staged.png").read_bytes() == staged_bytes

    result = gio("trash", "--empty")
    assert result.returncode == 0, result.stderr
    assert os.listdir(trash / "files") == [] and os.listdir(trash / "info") == []
    assert archived_ids(client, dataset) == {ids["/c.png"]}  # archived, not deleted
    assert os.listdir(m.path / ".archive") == ["c.png"]
    assert sorted(os.listdir(m.path)) == ["cars", "new.png"]
    sync(m)
    assert counts.uploads() == 2, counts.since()  # new.png and staged.png; kept.png never


def test_trash_refusals_and_rm_r_of_the_trash(client, dataset, mount):  # type: ignore[no-untyped-def]
    """What the trash does not take fails with the right errno and changes nothing; ``rm
    -r`` in it forgets entries and leaves their images archived."""
    ids = seed(client, dataset)
    m = mount(dataset.name, *WRITE_BACK)
    trash = m.path / ".Trash-0"
    assert not trash.exists()
    os.mkdir(trash)
    assert sorted(os.listdir(trash)) == ["files", "info"]
    with pytest.raises(PermissionError):  # EPERM: only a rename puts things in files/
        (trash / "files" / "x.png").write_bytes(png_bytes(1))
    with pytest.raises(PermissionError):  # not as files/NAME
        os.rename(m.path / "c.png", trash / "c.png")
    os.rename(m.path / "c.png", trash / "files" / "c.png")
    with pytest.raises(FileExistsError):  # the name is taken in the trash
        os.rename(m.path / "cars" / "a.png", trash / "files" / "c.png")
    (m.path / "c.png").write_bytes(png_bytes(77))
    sync(m)
    with pytest.raises(FileExistsError):  # restoring onto a taken path
        os.rename(trash / "files" / "c.png", m.path / "c.png")
    with pytest.raises(OSError):  # a trashed file is read-only
        open(trash / "files" / "c.png", "r+b")
    assert {i.id for i in live(client, dataset).values()} >= {ids["/cars/a.png"]}
    assert ids["/c.png"] in archived_ids(client, dataset)
    assert os.listdir(trash / "files") == ["c.png"]

    # rm -r of the trash (a folder in it, then all of it) forgets; the images stay archived
    os.rename(m.path / "cars", trash / "files" / "cars")
    with pytest.raises(OSError) as refused:
        os.rmdir(trash / "files" / "cars")
    assert refused.value.errno == errno.ENOTEMPTY
    subprocess.run(["rm", "-r", str(trash / "files" / "cars")], check=True, timeout=60)
    assert os.listdir(trash / "files") == ["c.png"]
    subprocess.run(["rm", "-r", str(trash)], check=True, timeout=60)
    assert not trash.exists()
    assert archived_ids(client, dataset) == {ids["/c.png"], ids["/cars/a.png"],
                                             ids["/cars/red/b.png"]}


def test_an_organization_mount_makes_no_dataset_for_a_trash(client, mount, tmp_path
                                                             ):  # type: ignore[no-untyped-def]
    """GLib puts the trash at the top of the mount; at the top of an organization mount a
    ``mkdir .Trash-0`` created a dataset of that name. It is refused (EPERM, one log line):
    the trash is a dataset mount's."""
    # a state folder of its own: an organization mount resumes every journal it finds, and
    # other tests leave failed uploads in theirs (which would make its unmount exit 1)
    m = mount(None, *WRITE_BACK, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    before = {d.name for d in client.projects.list()}
    with pytest.raises(PermissionError):
        os.mkdir(m.path / ".Trash-0")
    assert {d.name for d in client.projects.list()} == before
    assert "a desktop trash is kept per dataset, in a dataset mount" in m.log()


# ------------------------------------------------------------- a real file manager

DESKTOP_TOOLS = ("Xvfb", "pcmanfm", "xdotool", "dbus-run-session")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"


def xdotool(display: str, *args: str) -> str:
    result = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, DISPLAY=display))
    return result.stdout


def wait_window(display: str, name: str, timeout: float = 30.0) -> str:
    """The id of the first window whose title is ``name``."""
    found = wait_for(lambda: xdotool(display, "search", "--name", f"^{name}$").split(),
                     f"a window named {name!r}", timeout)
    return found[0]


@pytest.fixture()
def display(tmp_path: Path) -> Iterator[str]:
    """An X display of its own (Xvfb), stopped at teardown."""
    missing = [tool for tool in DESKTOP_TOOLS if shutil.which(tool) is None]
    if missing:  # .ci/run installs them; a machine without them cannot run a display
        pytest.skip(f"no display server here: {', '.join(missing)} not installed "
                    "(apt-get install xvfb pcmanfm xdotool dbus)")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0",
                               "1024x768x24", "-nolisten", "tcp"], pass_fds=(write_fd,),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as answer:
            number = answer.readline().strip()
        assert number, "Xvfb did not start"
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_folder_deleted_in_pcmanfm_goes_to_the_trash_and_is_archived(
        client, dataset, mount, display, tmp_path):  # type: ignore[no-untyped-def]
    """pcmanfm's own Delete action on a folder (its confirmation answered Yes): the folder
    is in the trash, its images archived on the service; the screenshot of the trash view
    is kept in build/test-artifacts/."""
    made = seed_images(client, dataset.id, "/cats", ["x.png", "y.png"])
    m = mount(dataset.name, *WRITE_BACK)
    env = dict(os.environ, DISPLAY=display, GVFS_DISABLE_FUSE="1", NO_AT_BRIDGE="1")
    manager = subprocess.Popen(["dbus-run-session", "--", "pcmanfm", "--no-desktop",
                                str(m.path)], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "pcmanfm-trash.png"
    try:
        window = wait_window(display, m.path.name)
        xdotool(display, "mousemove", "--window", window, "300", "200", "click", "1")
        xdotool(display, "key", "--window", window, "ctrl+a")
        xdotool(display, "key", "--window", window, "Delete")
        wait_window(display, "Confirm")
        xdotool(display, "key", "Return")  # "Do you want to move the file 'cats' to trash can?"
        trashed = m.path / ".Trash-0" / "files" / "cats"
        wait_for(trashed.exists, "the folder in the trash")
        assert sorted(os.listdir(trashed)) == ["x.png", "y.png"]
        assert os.listdir(m.path) == []
        assert archived_ids(client, dataset) == {image.id for image, _ in made.values()}
        # the trash view: "Trash Can" under Places (gvfs's trash:///)
        xdotool(display, "mousemove", "--window", window, "64", "133", "click", "1")
        time.sleep(1.5)  # drawn
        ImageGrab.grab(xdisplay=display).save(shot)
        assert trash_list(m) == {"cats": str(m.path / "cats")}
    finally:
        os.killpg(manager.pid, signal.SIGTERM)
        manager.wait(timeout=30)
    assert shot.stat().st_size > 0
