"""The lines a user reads when something is refused, from real mounts (troubleshooting.md):
``pictofs umount`` of a folder that is no pictofs mount, a file created at the top of an
organization mount, an unmount by ``fusermount3 -u`` with uploads pending, ``-o`` before the
dataset, and the labelled cache lines of an organization mount's status. The non-root ones
(a refused mount, another user's mount) are in test_unprivileged.py."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import pictofs

from imagegen import png_bytes
from mountkit import daemon_pids, live, sync, wait_for, wait_for_daemon_exit
from seed import seed_images

pytestmark = pytest.mark.fuse


def test_umount_of_what_is_no_pictofs_mount_says_so_plainly(tmp_path: Path, mount_env):
    plain = pictofs("umount", str(tmp_path), env=mount_env)
    assert plain.returncode == 1
    assert plain.stderr == f"pictofs: {tmp_path} is not a mountpoint; nothing to unmount\n"
    other = pictofs("umount", "/proc", env=mount_env)
    assert other.returncode == 1
    assert other.stderr == "pictofs: /proc is not a pictofs mount (it is a proc mount)\n"
    assert os.path.ismount("/proc")  # refused before fusermount3 was asked
    status = pictofs("status", str(tmp_path), env=mount_env)
    assert (status.returncode, status.stderr) == (
        1, f"pictofs: {tmp_path} is not a mountpoint\n")


def test_a_file_at_the_top_of_an_organization_mount_is_eperm_with_a_log_line(
        mount, dataset):
    m = mount(None)
    touched = subprocess.run(["touch", str(m.path / "stray.png")], capture_output=True,
                             text=True)
    assert touched.returncode == 1
    assert "Operation not permitted" in touched.stderr, touched.stderr
    with pytest.raises(PermissionError) as raised:
        os.open(m.path / "stray.png", os.O_CREAT | os.O_WRONLY, 0o644)
    assert raised.value.errno == errno.EPERM
    lines = [line for line in m.log().splitlines()
             if "/stray.png: not created: the top of an organization mount" in line]
    assert len(lines) == 2 and all("WARNING" in line for line in lines), m.log()[-2000:]
    assert dataset.name in os.listdir(m.path)  # a dataset folder is there, files are not
    assert "stray.png" not in os.listdir(m.path)


def test_an_unmount_by_fusermount3_logs_the_uploads_left_pending(mount, client, dataset):
    m = mount(dataset.name, "--write-back", "1h")
    (m.path / "late.png").write_bytes(png_bytes(1501))
    wait_for(lambda: m.status()["uploads"]["pending"] == 1, "one pending upload")
    pids = daemon_pids(m.path)
    assert subprocess.run(["fusermount3", "-u", str(m.path)]).returncode == 0
    m.mounted = False
    wait_for_daemon_exit(pids, "the daemon unmounted by fusermount3")
    last = m.log().strip().splitlines()[-1]
    assert "WARNING" in last and f"unmounted {m.path} with 1 upload(s) pending; they stay " \
        "in the journal and resume at the next mount" in last, last
    # they do: the next mount uploads it
    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path)
    sync(again)
    assert set(live(client, dataset)) == {"/late.png"}
    assert again.umount().returncode == 0
    assert again.log().strip().splitlines()[-1].endswith(f"unmounted {again.path}")
    # the queue's busy diagnosis (asked every second by umount and sync) is no INFO line
    assert not [line for line in again.log().splitlines()
                if "still busy after" in line and "DEBUG" not in line]


def test_dash_o_before_the_dataset_mounts_read_only(mount, dataset, tmp_path: Path,
                                                    mount_env):
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    result = pictofs("mount", "-o", "ro,dir_cache_time=5s", dataset.name, str(mountpoint),
                     "--cache-dir", str(tmp_path / "cache"), "--log-file",
                     str(tmp_path / "ro.log"), env=mount_env)
    try:
        assert result.returncode == 0, result.stderr
        entry = next(line.split() for line in Path("/proc/mounts").read_text().splitlines()
                     if line.split()[1] == str(mountpoint))
        assert "ro" in entry[3].split(","), entry
        with pytest.raises(OSError) as raised:
            (mountpoint / "x.png").write_bytes(png_bytes(1))
        assert raised.value.errno == errno.EROFS
    finally:
        done = pictofs("umount", str(mountpoint), env=mount_env)
    assert done.returncode == 0, done.stderr


def test_an_organization_status_names_the_dataset_of_each_cache_line(mount, client, dataset):
    seed_images(client, dataset.id, "/", ["a.png"])
    m = mount(None)
    assert (m.path / dataset.name / "a.png").read_bytes()[:4] == b"\x89PNG"
    text = pictofs("status", str(m.path), env=m.env, check=True).stdout
    lines = [line for line in text.splitlines() if line.startswith("cache:")]
    assert lines and any(line.startswith(f"cache:      {dataset.name}: ") for line in lines), \
        text
    assert all(": " in line.removeprefix("cache:").strip() for line in lines), text
    assert {c["dataset"] for c in m.status()["cache"]} >= {dataset.name}
