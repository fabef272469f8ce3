"""Security of the mount (filesystem §2, §5, §7, §8), through real mounts.

- The mount daemon logs no key at ``-v`` and carries none in its command line (``ps``,
  ``/proc/PID/cmdline``): keys reach it through the environment or a key file only.
- Its files are private: control socket 0600 in a 0700 folder; journal database, staging
  files, local folder and known-datasets file 0600 in 0700 folders.
- A viewer key: reads work; ``mkdir``, ``rm``, ``mv`` (synchronous requests) fail with
  ``EACCES``; a written file ends ``failed`` with the 403 reason (permanent), which
  ``pictofs sync`` names, and ``rm`` discards.
- Names: over 255 bytes → ``ENAMETOOLONG`` (create, mkdir, rename, lookup); C0/C1/DEL
  control characters and bytes that are not UTF-8 → ``EINVAL`` at create/mkdir with no
  request; a lookup of a non-UTF-8 name is ``ENOENT`` with no request. (``/`` and NUL cannot
  reach a FUSE daemon: the kernel splits paths at ``/`` and ends them at NUL; ``.`` and
  ``..`` are resolved by the kernel.)
- Decompression bombs: a header over twice Pillow's pixel limit fails at close with
  ``EINVAL``, is never sent, and stays as a failed upload until removed; one between the
  limit and twice it ends ``failed`` with the server's 415 reason.
- ``--allow-other`` (with ``default_permissions``): another user reads, and cannot create,
  overwrite, remove or make folders (``EACCES``); without it, the other user cannot even look.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from imagegen import png_bytes
from mountkit import Counts, journal_folder, pictofs_cmd, wait_for
from pictofs import control
from pictofs.api import folders as folders_api
from securitykit import (as_user, assert_no_key, mode, png_bomb, process_args,
                         unprivileged_user)

pytestmark = pytest.mark.fuse

FAST = ("--write-back", "0.2s")


def _errno_of(action) -> int | None:  # type: ignore[no-untyped-def]
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def _write(path: Path | bytes, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _upload(client, dataset, name: str, data: bytes, tmp_path: Path):  # type: ignore[no-untyped-def]
    local = tmp_path / name
    local.write_bytes(data)
    return client.images.upload(dataset.id, local)


# ---------------------------------------------------------------------- key and files

def test_daemon_logs_no_key_and_its_argv_holds_none(mount, server, client, dataset,
                                                    tmp_path):
    _upload(client, dataset, "seen.png", png_bytes(1), tmp_path)
    m = mount(dataset.name, *FAST)
    assert (m.path / "seen.png").read_bytes() == png_bytes(1)
    (m.path / "new.png").write_bytes(png_bytes(2))
    (m.path / "folder").mkdir()
    assert pictofs_cmd(m, "sync", str(m.path)).returncode == 0
    assert pictofs_cmd(m, "refresh", str(m.path)).returncode == 0
    pid = int(m.status()["pid"])

    cmdline, ps_line = process_args(pid)
    everything = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                check=True).stdout
    for text, where in ((cmdline, "/proc/PID/cmdline"), (ps_line, "ps line"),
                        (everything, "ps -eo args of every process")):
        assert_no_key(text, server.key, where)
    assert "mount" in cmdline and str(m.path) in cmdline
    # The key is in the daemon's environment, readable by its owner (and root) only.
    environ = Path(f"/proc/{pid}/environ")
    assert f"PICTOGRAPH_API_KEY={server.key}".encode() in environ.read_bytes()
    assert mode(environ) & 0o077 == 0

    assert m.umount().returncode == 0
    log = m.log()
    assert "DEBUG pictofs.fs.operations" in log  # the mount ran at -v
    assert_no_key(log, server.key, "mount log")


def test_state_files_and_control_socket_are_private(mount, server, client, dataset):
    viewer = server.create_key("viewer")
    m = mount(dataset.name, *FAST, env={"PICTOGRAPH_API_KEY": viewer})
    (m.path / "kept.png").write_bytes(png_bytes(3))  # fails for good: its staging file stays
    assert pictofs_cmd(m, "sync", str(m.path)).returncode == 1

    sock = control.socket_path(m.path)
    assert sock.is_socket()
    assert mode(sock) == 0o600 and mode(sock.parent) == 0o700
    state = Path(m.env["XDG_STATE_HOME"]) / "pictofs"
    folder = journal_folder(m, dataset)
    staged = list((folder / "staging").iterdir())
    assert staged, "the failed file's staging copy is expected to stay"
    files = [folder / "journal.db", folder / "journal.db-wal", folder / "journal.db-shm",
             folder / "journal.lock", state / "known-datasets.json", *staged]
    folders = [state, state / "datasets", folder, folder / "staging", folder / "local"]
    for path in files:
        assert mode(path) == 0o600, path
    for path in folders:
        assert mode(path) == 0o700, path
    # Nothing under the state folder is open to others, whatever it is.
    for path in state.rglob("*"):
        assert mode(path) & 0o077 == 0, path
    # Cached image bytes are the dataset's too: each dataset's cache folder is private.
    cached = [p.parent for p in m.cache_dir.rglob("data") if p.is_dir()]
    assert cached
    for folder_ in cached:
        assert mode(folder_) & 0o077 == 0, folder_
    (m.path / "kept.png").unlink()  # discard the failed file so the mount ends cleanly


def test_a_runtime_folder_too_deep_for_a_socket_path_still_gets_a_control_socket(
        mount, dataset, tmp_path):
    """A unix socket's path holds 107 bytes; a runtime folder deeper than that (a test
    runner's or a container's temporary tree) used to fail the mount's start after libfuse
    had mounted, and ``pictofs mount`` waited for "ready" until its timeout. The socket is
    bound and reached through a descriptor of its folder instead."""
    runtime = tmp_path / ("deep-" + "r" * 60) / ("er-" + "r" * 60)
    runtime.mkdir(parents=True, mode=0o700)
    m = mount(dataset.name, *FAST, env={"XDG_RUNTIME_DIR": str(runtime)})
    sock = control.socket_path(m.path, runtime / "pictofs")
    assert len(os.fsencode(sock)) > 107 and sock.is_socket()
    assert mode(sock) == 0o600
    (m.path / "deep.png").write_bytes(png_bytes(6))
    assert pictofs_cmd(m, "sync", str(m.path)).returncode == 0
    assert m.status()["dataset"] == dataset.name
    assert m.umount().returncode == 0


def test_a_mount_without_a_control_socket_fails_at_once_and_says_why(mount, dataset,
                                                                    tmp_path):
    """Where the control socket cannot be made (here the runtime folder is a file), the
    mount fails with the reason, and leaves nothing mounted, instead of waiting for
    "ready" until its timeout."""
    runtime = tmp_path / "runtime-is-a-file"
    runtime.write_text("")
    m = mount(dataset.name, *FAST, env={"XDG_RUNTIME_DIR": str(runtime)}, expect_fail=True)
    said = m.args[-1]
    assert "control socket" in said and "Traceback" not in said, said
    assert not os.path.ismount(m.path)


# ---------------------------------------------------------------------- a viewer's mount

def test_viewer_mount_reads_and_every_write_is_refused(mount, server, client, dataset,
                                                       tmp_path):
    image = _upload(client, dataset, "v.png", png_bytes(4), tmp_path)
    client.images.upload(dataset.id, _local(tmp_path, "w.png", png_bytes(5)),
                         folder_path="/sub")
    folders_api.create_folder(client.transport, dataset.id, "/empty")
    viewer = server.create_key("viewer")
    m = mount(dataset.name, *FAST, env={"PICTOGRAPH_API_KEY": viewer})
    assert (m.path / "v.png").read_bytes() == png_bytes(4)

    assert _errno_of(lambda: (m.path / "d").mkdir()) == errno.EACCES
    assert _errno_of(lambda: (m.path / "v.png").unlink()) == errno.EACCES
    assert _errno_of(lambda: os.rename(m.path / "sub" / "w.png", m.path / "w.png")) \
        == errno.EACCES
    assert _errno_of(lambda: (m.path / "empty").rmdir()) == errno.EACCES
    assert _errno_of(lambda: (m.path / "empty").rename(m.path / "emptier")) == errno.EACCES

    (m.path / "new.png").write_bytes(png_bytes(6))  # accepted locally, refused by the service
    result = pictofs_cmd(m, "sync", str(m.path))
    assert result.returncode == 1
    assert "/new.png" in result.stderr and "HTTP 403" in result.stderr, result.stderr
    error = subprocess.run(["getfattr", "--only-values", "-n", "user.pictofs.error",
                            str(m.path / "new.png")], capture_output=True, text=True)
    assert "403" in error.stdout or "member role" in error.stdout, error
    (m.path / "new.png").unlink()  # rm discards a failed file
    assert not (m.path / "new.png").exists()
    assert pictofs_cmd(m, "sync", str(m.path)).returncode == 0

    listed = {i.path: i.id for i in client.images.list(dataset.id)}
    assert listed == {"/v.png": image.id, "/sub/w.png": listed["/sub/w.png"]}


def test_another_organizations_key_neither_mounts_nor_lists_the_dataset(mount, server,
                                                                        dataset):
    org = f"sec-other-{os.getpid()}-{dataset.id[:6]}"
    server.create_org(org)
    other = server.create_key("owner", org)
    failed = mount(dataset.name, expect_fail=True, env={"PICTOGRAPH_API_KEY": other})
    assert "Traceback" not in failed.args[-1]
    m = mount(None, env={"PICTOGRAPH_API_KEY": other})
    assert dataset.name not in os.listdir(m.path)
    assert _errno_of(lambda: os.stat(m.path / dataset.name)) == errno.ENOENT
    assert _errno_of(lambda: os.stat(m.path / dataset.id)) == errno.ENOENT


def _local(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------- names

def test_bad_names_are_refused_at_the_syscall_with_no_request(mount, server, client, dataset):
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    root = os.fsencode(m.path)
    longest = "é" * 125 + "a.png"  # 255 bytes: fine
    too_long = "é" * 126 + ".png"  # 256 bytes
    assert len(longest.encode()) == 255 and len(too_long.encode()) == 256

    assert _errno_of(lambda: _write(m.path / too_long, png_bytes(7))) == errno.ENAMETOOLONG
    assert _errno_of(lambda: (m.path / ("é" * 128)).mkdir()) == errno.ENAMETOOLONG
    assert _errno_of(lambda: os.stat(m.path / too_long)) == errno.ENAMETOOLONG
    for bad in ("bell\x07.png", "nl\n.png", "del\x7f.png", "c1\x85.png", "esc\x1b[31m.png"):
        assert _errno_of(lambda: _write(m.path / bad, png_bytes(8))) == errno.EINVAL, bad
        assert _errno_of(lambda: (m.path / bad.replace(".png", "")).mkdir()) == errno.EINVAL
    not_utf8 = root + b"/bad\xff.png"
    assert _errno_of(lambda: os.stat(not_utf8)) == errno.ENOENT
    assert _errno_of(lambda: _write(not_utf8, png_bytes(9))) == errno.EINVAL
    assert _errno_of(lambda: os.mkdir(root + b"/dir\xfe")) == errno.EINVAL

    (m.path / longest).write_bytes(png_bytes(10))
    assert _errno_of(lambda: os.rename(m.path / longest, m.path / too_long)) \
        == errno.ENAMETOOLONG
    assert _errno_of(lambda: os.rename(m.path / longest, m.path / "x\x07.png")) \
        == errno.EINVAL
    assert pictofs_cmd(m, "sync", str(m.path)).returncode == 0
    assert [i.filename for i in client.images.list(dataset.id)] == [longest]
    assert counts.since()["upload_url"] == 1  # the 255-byte name only
    assert sorted(os.listdir(m.path)) == [longest]
    assert "Traceback" not in m.log()


def test_bad_names_in_an_organization_mount(mount, server, dataset):
    m = mount(None)
    root = os.fsencode(m.path)
    assert _errno_of(lambda: os.stat(root + b"/bad\xff")) == errno.ENOENT
    assert _errno_of(lambda: os.mkdir(root + b"/bad\xff")) == errno.EINVAL
    assert _errno_of(lambda: (m.path / "bell\x07").mkdir()) == errno.EINVAL
    assert _errno_of(lambda: (m.path / ("d" * 256)).mkdir()) == errno.ENAMETOOLONG
    assert _errno_of(lambda: os.stat(root + b"/" + dataset.name.encode() + b"/x\xff.png")) \
        == errno.ENOENT
    assert "Traceback" not in m.log()


# ---------------------------------------------------------------------- bombs

def test_decompression_bombs_through_the_mount(mount, server, client, dataset):
    m = mount(dataset.name, *FAST)
    counts = Counts(server)
    # Over twice the pixel limit: Pillow refuses the header; close fails, nothing is sent,
    # and the file stays as a failed upload (its error in an xattr) until it is removed.
    assert _errno_of(lambda: _write(m.path / "huge.png", png_bomb(20_000, 20_000))) \
        == errno.EINVAL
    wait_for(lambda: b"not an image" in os.getxattr(m.path / "huge.png", "user.pictofs.error"),
             "the refused file to show its error")
    # Between the limit and twice it: an image to the header check; the service's 415 makes
    # the entry fail for good.
    (m.path / "big.png").write_bytes(png_bomb(10_000, 10_000))
    result = pictofs_cmd(m, "sync", str(m.path))
    assert result.returncode == 1
    assert "/big.png" in result.stderr and "decompression" in result.stderr, result.stderr
    assert "/huge.png" in result.stderr and "not an image" in result.stderr, result.stderr
    assert not list(client.images.list(dataset.id))
    assert counts.since()["upload_url"] + counts.since()["bulk_upload_url"] == 1
    (m.path / "big.png").unlink()
    (m.path / "huge.png").unlink()


# ---------------------------------------------------------------------- --allow-other

@pytest.fixture()
def shared_dir():  # type: ignore[no-untyped-def]
    """A folder other users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pictofs-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_allow_other_lets_others_read_and_refuses_their_writes(mount, client, dataset,
                                                                tmp_path, shared_dir):
    _upload(client, dataset, "r.png", png_bytes(11), tmp_path)
    with unprivileged_user() as user:
        closed = shared_dir / "closed"
        closed.mkdir()
        private = mount(dataset.name, mountpoint=closed)
        denied = as_user(user, "ls", str(closed))
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
        assert private.umount().returncode == 0

        open_mp = shared_dir / "open"
        open_mp.mkdir()
        m = mount(dataset.name, "--allow-other", mountpoint=open_mp)
        options = next(line.split()[3] for line in Path("/proc/mounts").read_text().splitlines()
                       if line.split()[1] == str(open_mp))
        assert "allow_other" in options and "default_permissions" in options

        assert as_user(user, "ls", str(open_mp)).stdout.split() == [b"r.png"]
        assert as_user(user, "cat", str(open_mp / "r.png")).stdout == png_bytes(11)
        for argv in (["sh", "-c", f"echo hi > '{open_mp}/x.jpg'"],
                     ["sh", "-c", f"cat /dev/null > '{open_mp}/r.png'"],
                     ["rm", "-f", str(open_mp / "r.png")],
                     ["mkdir", str(open_mp / "d")],
                     ["mv", str(open_mp / "r.png"), str(open_mp / "s.png")],
                     ["touch", str(open_mp / "t.png")]):
            result = as_user(user, *argv)
            assert result.returncode != 0, argv
            assert b"Permission denied" in result.stderr, (argv, result.stderr)
        # The owner (root here) still writes; nothing the other user tried reached the service.
        (open_mp / "mine.png").write_bytes(png_bytes(12))
        assert pictofs_cmd(m, "sync", str(open_mp)).returncode == 0
        assert sorted(i.path for i in client.images.list(dataset.id)) == ["/mine.png", "/r.png"]
        assert m.umount().returncode == 0
