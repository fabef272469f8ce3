"""Unprivileged use: a normal user mounts with ``fusermount3``, copies an image in, lists,
waits with ``pictofs sync`` and unmounts with ``pictofs umount`` (filesystem §8).

The test acts as distributions do for their users: ``/dev/fuse`` is made 0666 (as udev rules
ship it) and its mode restored afterwards. The user is ``nobody`` (or a user made for the test)
with its own HOME and XDG folders; every command runs through ``runuser`` with a clean
environment holding only those folders, ``PATH`` and the key. The interpreter and the project
must be readable by that user: when an ancestor folder of theirs is not traversable by others
(``/root`` holding a pyenv interpreter, for one), the test adds the traverse bit (``o+x``, not
read) to that folder for its duration and restores the mode.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import pictofs
from pictofs.fs.fuse_session import abort_connection
from imagegen import png_bytes
from securitykit import User, as_user, unprivileged_user

pytestmark = pytest.mark.fuse

DEV_FUSE = Path("/dev/fuse")


def _blocking_ancestors(paths: list[Path]) -> list[Path]:
    """Folders on the way to ``paths`` that others cannot traverse."""
    found: list[Path] = []
    for path in paths:
        for folder in [*reversed(path.parents)]:
            if folder == Path("/") or folder in found:
                continue
            if not os.stat(folder).st_mode & stat.S_IXOTH:
                found.append(folder)
    return found


@pytest.fixture()
def fuse_for_everyone() -> Iterator[None]:
    """``/dev/fuse`` 0666 for the test, its mode restored after."""
    before = stat.S_IMODE(DEV_FUSE.stat().st_mode)
    DEV_FUSE.chmod(0o666)
    try:
        yield
    finally:
        DEV_FUSE.chmod(before)
    assert stat.S_IMODE(DEV_FUSE.stat().st_mode) == before


@pytest.fixture()
def reachable_interpreter() -> Iterator[list[Path]]:
    """Make the interpreter, the standard library, the venv and the project traversable by
    others (``o+x`` on the folders that are not), restoring their modes after. Yields the
    folders it changed."""
    needed = [Path(os.path.realpath(sys.executable)), Path(sysconfig.get_paths()["stdlib"]),
              Path(sysconfig.get_paths()["purelib"]), Path(pictofs.__file__).resolve().parent]
    changed = {folder: stat.S_IMODE(os.stat(folder).st_mode)
               for folder in _blocking_ancestors(needed)}
    try:
        for folder, before in changed.items():
            folder.chmod(before | stat.S_IXOTH)
        yield list(changed)
    finally:
        for folder, before in changed.items():
            folder.chmod(before)


@pytest.fixture()
def user_home() -> Iterator[tuple[User, Path]]:
    """An unprivileged user and a folder tree it owns: home, XDG folders, a mountpoint."""
    with unprivileged_user() as user:
        base = Path(tempfile.mkdtemp(prefix="pictofs-unprivileged-"))
        base.chmod(0o755)
        try:
            for name in ("home", "cache", "state", "data", "config", "run", "mnt"):
                (base / name).mkdir(mode=0o700)
            for path in [base, *base.iterdir()]:
                os.chown(path, user.uid, user.gid)
            yield user, base
        finally:
            mountpoint = base / "mnt"
            if any(line.split()[1] == str(mountpoint)
                   for line in Path("/proc/mounts").read_text().splitlines()):
                abort_connection(str(mountpoint))
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)


def user_env(base: Path, server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The whole environment of the user's commands: its folders, PATH and the key."""
    return {"HOME": str(base / "home"), "XDG_CACHE_HOME": str(base / "cache"),
            "XDG_STATE_HOME": str(base / "state"), "XDG_DATA_HOME": str(base / "data"),
            "XDG_CONFIG_HOME": str(base / "config"), "XDG_RUNTIME_DIR": str(base / "run"),
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
            "PICTOGRAPH_API_KEY": server.key, "PICTOGRAPH_BASE_URL": server.base_url}


def test_a_normal_user_mounts_copies_lists_syncs_and_unmounts(
        fuse_for_everyone, reachable_interpreter, user_home, server, client, dataset):
    user, base = user_home
    assert user.uid != 0
    env = user_env(base, server)
    mountpoint = base / "mnt"
    source = base / "home" / "photo.png"
    source.write_bytes(png_bytes(42))
    os.chown(source, user.uid, user.gid)
    log = base / "home" / "mount.log"

    def pictofs_as_user(*args: str) -> subprocess.CompletedProcess[bytes]:
        return as_user(user, sys.executable, "-m", "pictofs", *args, env=env)

    check = as_user(user, sys.executable, "-c", "import pictofs.cli, mfusepy", env=env)
    assert check.returncode == 0, check.stderr.decode()

    mounted = pictofs_as_user("mount", dataset.name, str(mountpoint), "--log-file", str(log),
                              "-v", "--write-back", "0.2s")
    assert mounted.returncode == 0, mounted.stderr.decode() + as_user(
        user, "cat", str(log)).stdout.decode()
    entry = next(line.split() for line in Path("/proc/mounts").read_text().splitlines()
                 if line.split()[1] == str(mountpoint))
    assert entry[2] == "fuse.pictofs" or entry[2].startswith("fuse"), entry
    assert f"user_id={user.uid}" in entry[3], entry  # mounted by the user, via fusermount3
    assert "allow_other" not in entry[3]

    copied = as_user(user, "cp", str(source), str(mountpoint / "photo.png"))
    assert copied.returncode == 0, copied.stderr
    listed = as_user(user, "ls", "-l", str(mountpoint))
    assert listed.returncode == 0 and b"photo.png" in listed.stdout, listed
    synced = pictofs_as_user("sync", str(mountpoint))
    assert synced.returncode == 0, synced.stderr.decode()
    # Root is another user here: without --allow-other the kernel keeps it out.
    with pytest.raises(PermissionError):
        os.listdir(mountpoint)
    unmounted = pictofs_as_user("umount", str(mountpoint))
    assert unmounted.returncode == 0, unmounted.stderr.decode()
    assert not any(line.split()[1] == str(mountpoint)
                   for line in Path("/proc/mounts").read_text().splitlines())

    images = {i.path: i for i in client.images.list(dataset.id)}
    assert set(images) == {"/photo.png"}
    download = base / "check.png"
    client.images.download(images["/photo.png"].id, download)
    assert download.read_bytes() == png_bytes(42)
    text = log.read_text()
    assert "Traceback" not in text and server.key not in text
    # The user's state stayed the user's: everything it made is owned by it.
    for path in (base / "state").rglob("*"):
        assert path.lstat().st_uid == user.uid, path


def test_a_refused_mount_says_fusermount3s_reason_and_the_fix_in_one_line(
        fuse_for_everyone, reachable_interpreter, user_home, server, dataset):
    """libfuse reports a refusal on stderr only (the daemon's is /dev/null): the one line
    ``pictofs mount`` prints carries fusermount3's reason and the fix, and the log has it."""
    user, base = user_home
    env = user_env(base, server)
    roots = base / "roots"  # a folder of root's, 0755: the user may enter it, not write
    roots.mkdir(mode=0o755)
    log = base / "home" / "refused.log"

    def mount_as_user(mountpoint: Path, *options: str) -> subprocess.CompletedProcess[bytes]:
        return as_user(user, sys.executable, "-m", "pictofs", "mount", dataset.name,
                       str(mountpoint), "--log-file", str(log), *options, env=env)

    refused = mount_as_user(roots)
    assert refused.returncode == 1
    assert refused.stderr.decode() == (
        f"pictofs: mounting {roots} failed: fusermount3: user has no write access to "
        f"mountpoint {roots} (mount on a folder you own (mkdir ~/mnt), or make this one "
        "yours (chown))\n")
    assert f"fusermount3: user has no write access to mountpoint {roots}" in \
        as_user(user, "cat", str(log)).stdout.decode()

    fuse_conf = Path("/etc/fuse.conf")
    conf = fuse_conf.read_text() if fuse_conf.exists() else ""
    assert "user_allow_other" not in [line.strip() for line in conf.splitlines()], \
        "this test needs /etc/fuse.conf without user_allow_other (the default)"
    other = mount_as_user(base / "mnt", "--allow-other")
    assert other.returncode == 1
    line = other.stderr.decode()
    assert line.count("\n") == 1 and line.startswith(
        f"pictofs: mounting {base / 'mnt'} failed: fusermount3: option allow_other only "
        "allowed if 'user_allow_other' is set in /etc/fuse.conf"), line
    assert line.endswith("(as root, add the line user_allow_other to /etc/fuse.conf, or "
                         "mount without --allow-other)\n"), line
    assert not any(entry.split()[1] in (str(roots), str(base / "mnt"))
                   for entry in Path("/proc/mounts").read_text().splitlines())
    assert "Traceback" not in as_user(user, "cat", str(log)).stdout.decode()


def test_another_users_mount_is_named_so_by_status_and_umount(
        fuse_for_everyone, reachable_interpreter, user_home, server, dataset, mount):
    """A user asking about root's mount is told whose it is, not "not a pictofs mount"."""
    user, base = user_home
    env = user_env(base, server)
    m = mount(dataset.name)
    for command in ("status", "umount"):
        result = as_user(user, sys.executable, "-m", "pictofs", command, str(m.path), env=env)
        assert result.returncode == 1, result
        assert result.stderr.decode() == (
            f"pictofs: {m.path} is a pictofs mount of another user (root, uid 0), not "
            "yours: only that user (or root, for unmounting) can manage it\n")
    assert m.status()["dataset"] == dataset.name  # still mounted, still root's
