"""Packaging against the real system: ``mount -t fuse.pictofs``, an ``/etc/fstab`` line
mounted with ``mount MOUNTPOINT``, ``mount.fuse3``'s fallback, systemd's readiness protocol,
the unit files under ``systemd-analyze verify``, and ``packaging/install.sh``.

mount(8) runs helpers from ``/sbin`` only, so these tests install the links there (and
``/usr/local/bin/pictofs``, which the units run) with ``packaging/install.sh``, and put back
whatever was at those paths before, even when a test fails. The fstab test restores
``/etc/fstab`` byte for byte. They need root, like every test that mounts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from fuse.conftest import force_unmount, pictofs
from imagegen import png_bytes
from seed import seed_images

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "packaging" / "install.sh"
UNITS = ROOT / "packaging" / "systemd"
VENV_BIN = Path(sys.executable).parent  # pip put the console scripts next to the interpreter
PART_PATHS = {
    "bin": ["/usr/local/bin/pictofs"],
    "helpers": ["/sbin/mount.fuse.pictofs", "/sbin/mount.pictofs"],
}


@contextmanager
def system_install(*parts: str, hidden: tuple[str, ...] = ()) -> Iterator[None]:
    """Install ``parts`` on the real root with install.sh; paths of ``hidden`` parts are
    moved aside (so mount(8) cannot find them). Everything is put back afterwards."""
    touched = [path for part in (*parts, *hidden) for path in PART_PATHS[part]]
    saved: dict[str, str] = {}
    for path in touched:
        if os.path.lexists(path):
            saved[path] = path + ".pictofs-test-saved"
            os.rename(path, saved[path])
    try:
        if parts:
            result = subprocess.run(["sh", str(INSTALL), "--bindir", str(VENV_BIN), *parts],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
        yield
    finally:
        for path in touched:
            if os.path.islink(path):
                os.unlink(path)
        for path, backup in saved.items():
            os.rename(backup, path)


def mount_type(mountpoint: Path) -> str | None:
    """The filesystem type mounted at ``mountpoint``, from /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if before.split()[4] == str(mountpoint):
            return after.split()[0]
    return None


def wait_gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def key_file(server, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "key"
    path.write_text(server.key + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture()
def plain_env() -> dict[str, str]:
    """The test session's environment (isolated XDG folders) with no ``PICTOGRAPH_*``: the
    mount options must carry the connection."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PICTOGRAPH_")}


@pytest.fixture()
def mountpoint(tmp_path: Path, plain_env: dict[str, str], server  # type: ignore[no-untyped-def]
               ) -> Iterator[Path]:
    """An empty mountpoint, unmounted at the end whatever happened; its mount's log is
    checked for tracebacks."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    log = tmp_path / "mount.log"
    if mount_type(path) is not None:
        env = dict(plain_env, PICTOGRAPH_BASE_URL=server.base_url)
        if pictofs("umount", str(path), env=env, timeout=120).returncode != 0:
            force_unmount(path)
    assert mount_type(path) is None, f"{path} is still mounted"
    assert not log.exists() or "Traceback" not in log.read_text(), log.read_text()


def options(server, key_file: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
            *extra: str) -> str:
    """A mount option string carrying the connection, cache and log of one test."""
    return ",".join([*extra, f"key_file={key_file}", f"base_url={server.base_url}",
                     f"cache_dir={tmp_path / 'cache'}", f"log_file={tmp_path / 'mount.log'}"])


def status(mountpoint: Path, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    import json

    result = pictofs("status", "--json", str(mountpoint), env=env, check=True)
    return json.loads(result.stdout)


# ------------------------------------------------------------------ mount(8) and fstab


@pytest.mark.fuse
def test_mount_t_fuse_pictofs_runs_the_helper(client, dataset, server, key_file, tmp_path,
                                              mountpoint, plain_env):
    seed_images(client, dataset.id, "/", ["a.png", "b.png"])
    with system_install("helpers"):
        result = subprocess.run(
            ["mount", "-t", "fuse.pictofs", dataset.name, str(mountpoint), "-o",
             options(server, key_file, tmp_path, "ro", "allow_other", "cache_size=20M")],
            capture_output=True, text=True, timeout=120, env=plain_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert mount_type(mountpoint) == "fuse.pictofs"
    assert sorted(os.listdir(mountpoint)) == ["a.png", "b.png"]
    with pytest.raises(OSError) as caught:
        (mountpoint / "new.png").write_bytes(png_bytes(1))
    assert caught.value.errno == 30  # EROFS: ro became --read-only
    info = status(mountpoint, plain_env)
    assert info["dataset"] == dataset.name and info["base_url"] == server.base_url


@pytest.mark.fuse
def test_mount_t_pictofs_mounts_the_organization(client, dataset, server, key_file, tmp_path,
                                                 mountpoint, plain_env):
    with system_install("helpers"):
        result = subprocess.run(
            ["mount", "-t", "pictofs", "/", str(mountpoint), "-o",
             options(server, key_file, tmp_path, "ro")],
            capture_output=True, text=True, timeout=120, env=plain_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert mount_type(mountpoint) == "fuse.pictofs"
    assert dataset.name in os.listdir(mountpoint)
    assert status(mountpoint, plain_env)["dataset"] is None


@pytest.mark.fuse
def test_fstab_line_with_netdev_and_automount(client, dataset, server, key_file, tmp_path,
                                              mountpoint, plain_env):
    fstab = Path("/etc/fstab")
    original = fstab.read_bytes()
    fields = options(server, key_file, tmp_path, "_netdev", "x-systemd.automount", "nofail",
                     "write_back=100ms")
    line = f"{dataset.name}  {mountpoint}  fuse.pictofs  {fields}  0  0\n"
    try:
        fstab.write_bytes(original + (b"" if original.endswith(b"\n") or not original
                                      else b"\n") + line.encode())
        with system_install("helpers"):
            result = subprocess.run(["mount", str(mountpoint)], capture_output=True, text=True,
                                    timeout=120, env=plain_env, cwd=tmp_path)
    finally:
        fstab.write_bytes(original)
    assert fstab.read_bytes() == original
    assert result.returncode == 0, result.stderr
    assert mount_type(mountpoint) == "fuse.pictofs"

    # the daemon found its home without HOME and writes through to the service
    data = png_bytes(7)
    (tmp_path / "copied.png").write_bytes(data)
    subprocess.run(["cp", str(tmp_path / "copied.png"), str(mountpoint)], check=True)
    assert pictofs("sync", str(mountpoint), "--timeout", "60", env=plain_env).returncode == 0
    assert [i.filename for i in client.images.list(dataset.id)] == ["copied.png"]

    pid = status(mountpoint, plain_env)["pid"]
    result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert wait_gone(pid), "the daemon did not exit after umount(8)"


@pytest.mark.fuse
def test_api_key_option_is_refused(dataset, tmp_path, mountpoint, plain_env):
    with system_install("helpers"):
        result = subprocess.run(
            ["mount", "-t", "fuse.pictofs", dataset.name, str(mountpoint), "-o",
             "ro,api_key=pk_test_NOT_IN_FSTAB"],
            capture_output=True, text=True, timeout=60, env=plain_env, cwd=tmp_path)
    assert result.returncode != 0
    assert "api_key= is refused" in result.stderr and "key_file=" in result.stderr
    assert "NOT_IN_FSTAB" not in result.stderr
    assert mount_type(mountpoint) is None


@pytest.mark.fuse
def test_mount_fuse3_fallback_runs_pictofs_without_a_subcommand(
        client, dataset, server, key_file, tmp_path, mountpoint, plain_env):
    """With no /sbin/mount.fuse.pictofs, mount.fuse3 runs ``pictofs SOURCE MP -o OPTS`` from
    a minimal PATH (which has /usr/local/bin)."""
    seed_images(client, dataset.id, "/", ["c.png"])
    with system_install("bin", hidden=("helpers",)):
        assert not os.path.lexists("/sbin/mount.fuse.pictofs")
        result = subprocess.run(
            ["mount", "-t", "fuse.pictofs", dataset.name, str(mountpoint), "-o",
             options(server, key_file, tmp_path, "ro")],
            capture_output=True, text=True, timeout=120, env=plain_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert mount_type(mountpoint) == "fuse.pictofs"
    assert os.listdir(mountpoint) == ["c.png"]


# ------------------------------------------------------------------ systemd


@pytest.mark.fuse
def test_foreground_mount_notifies_systemd(client, dataset, server, tmp_path, mountpoint,
                                           plain_env):
    """``Type=notify``: READY=1 arrives when the mount answers, STOPPING=1 at unmount."""
    seed_images(client, dataset.id, "/", ["d.png"])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(90)
    env = dict(plain_env, NOTIFY_SOCKET=str(tmp_path / "notify"),
               PICTOGRAPH_API_KEY=server.key, PICTOGRAPH_BASE_URL=server.base_url)
    stderr = open(tmp_path / "stderr", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "pictofs", "mount", "--foreground", dataset.name,
         str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
         "--log-file", str(tmp_path / "mount.log")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    stderr.close()
    try:
        try:
            ready = listener.recv(4096).decode().splitlines()
        except TimeoutError:
            pytest.fail(f"no READY=1 within 90s: {(tmp_path / 'stderr').read_text()}")
        assert "READY=1" in ready
        assert os.listdir(mountpoint) == ["d.png"]  # usable the moment READY=1 is sent
        # umount waits for the daemon to exit, and the daemon is this test's child: reap it
        # while umount runs, or umount would wait on a zombie
        umount = subprocess.Popen([sys.executable, "-m", "pictofs", "umount", str(mountpoint)],
                                  env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        stopping = listener.recv(4096).decode().splitlines()
        assert "STOPPING=1" in stopping
        assert process.wait(60) == 0
        assert umount.wait(60) == 0
    finally:
        listener.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def unit_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.service"))


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: .ci/run installs the systemd package"
    system_units, user_units = unit_files(UNITS), unit_files(UNITS / "user")
    assert [u.name for u in system_units] == [u.name for u in user_units] == [
        "pictofs-mirror@.service", "pictofs-mount@.service", "pictofs-serve.service"]
    runtime = tmp_path / "runtime"  # the user manager wants a runtime folder
    runtime.mkdir(mode=0o700)
    # --man=no: the man page check would need man(1) and the page installed
    with system_install("bin"):
        system = subprocess.run([analyze, "verify", "--man=no", *map(str, system_units)],
                                capture_output=True, text=True, timeout=120)
        user = subprocess.run([analyze, "--user", "verify", "--man=no",
                               *map(str, user_units)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, XDG_RUNTIME_DIR=str(runtime)))
    assert system.returncode == 0 and system.stderr == "", system.stderr
    assert user.returncode == 0 and user.stderr == "", user.stderr


def test_units_run_what_install_sh_installs():
    for unit in unit_files(UNITS) + unit_files(UNITS / "user"):
        text = unit.read_text()
        commands = [line.split("=", 1)[1].lstrip("-") for line in text.splitlines()
                    if line.startswith(("ExecStart=", "ExecStop="))]
        assert commands and all(c.split()[0] == "/usr/local/bin/pictofs" for c in commands)
        if unit.name == "pictofs-mount@.service":
            assert "Type=notify" in text.splitlines()
            assert "mount --foreground" in text and "umount --timeout" in text
            assert "TimeoutStopSec=" in text


def test_install_sh_stages_under_destdir_and_uninstalls(tmp_path):
    env = dict(os.environ, DESTDIR=str(tmp_path))
    result = subprocess.run(["sh", str(INSTALL), "--bindir", str(VENV_BIN)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    links = {"/sbin/mount.fuse.pictofs": "mount.fuse.pictofs",
             "/sbin/mount.pictofs": "mount.pictofs", "/usr/local/bin/pictofs": "pictofs"}
    for path, script in links.items():
        assert os.readlink(tmp_path / path.lstrip("/")) == str(VENV_BIN / script)
    installed = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"etc/systemd/system/pictofs-mount@.service",
            "etc/systemd/user/pictofs-mount@.service",
            "etc/systemd/system/pictofs-serve.service",
            "usr/local/share/bash-completion/completions/pictofs",
            "usr/local/share/man/man1/pictofs.1"} <= installed
    result = subprocess.run(["sh", str(INSTALL), "--uninstall"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []


def test_helper_scripts_are_installed_next_to_pictofs():
    """pip made both helpers from the one entry point; they answer without a mount."""
    for name in ("mount.fuse.pictofs", "mount.pictofs"):
        result = subprocess.run([str(VENV_BIN / name), "ds", "/mnt/x", "-f", "-o", "ro"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"{name}: pictofs mount ds /mnt/x --read-only" in result.stderr
