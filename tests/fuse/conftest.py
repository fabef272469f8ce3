"""Real FUSE mounts for tests: ``pictofs mount`` as a user runs it, against the session's
reference server (or a fault proxy in front of it), torn down even when a test hangs.

Every mount gets its own cache folder and log file; teardown unmounts with ``pictofs umount``
and, if the daemon is stuck, aborts the FUSE connection and lazily unmounts, so a hung daemon
cannot stall the run. The log of every mount is checked for tracebacks (a bug) at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pictofs.fs.fuse_session import abort_connection

from mountkit import daemon_pids, wait_for_daemon_exit


def pictofs(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                            text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"pictofs {' '.join(args)}: {result.stderr}"
    return result


@dataclass
class Mount:
    path: Path
    dataset: str | None
    cache_dir: Path
    log_file: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    mounted: bool = True

    def status(self) -> dict:  # type: ignore[type-arg]
        result = pictofs("status", "--json", str(self.path), env=self.env, check=True)
        return json.loads(result.stdout)

    def refresh(self) -> None:
        pictofs("refresh", str(self.path), env=self.env, check=True)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def umount(self, *extra: str) -> subprocess.CompletedProcess[str]:
        result = pictofs("umount", str(self.path), *extra, env=self.env, timeout=120)
        if result.returncode == 0:
            self.mounted = False
        return result


def force_unmount(path: Path) -> None:
    """Abort the FUSE connection, unmount lazily and kill the daemon if it is still there,
    so a hung daemon cannot outlive its test (or hold its journal lock for the next one)."""
    abort_connection(str(path))
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    pids = daemon_pids(path)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for_daemon_exit(pids, f"the daemon of {path} killed by the forced unmount")


@pytest.fixture(scope="session", autouse=True)
def fusectl() -> None:
    """Mount the FUSE control filesystem where it is missing (some containers do not mount
    it), so that a hung daemon's connection can be aborted: without it, a mount whose daemon
    cannot exit hangs every process that touches it, the test run included."""
    connections = Path("/sys/fs/fuse/connections")
    if os.geteuid() == 0 and connections.is_dir() and not any(connections.iterdir()) \
            and not os.path.ismount(connections):
        subprocess.run(["mount", "-t", "fusectl", "none", str(connections)],
                       capture_output=True)


@pytest.fixture()
def mount_env(server) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env["PICTOGRAPH_API_KEY"] = server.key
    env["PICTOGRAPH_BASE_URL"] = server.base_url
    return env


@pytest.fixture()
def mount(server, tmp_path: Path, mount_env: dict[str, str]  # type: ignore[no-untyped-def]
          ) -> Iterator[Callable[..., Mount]]:
    """``mount(dataset_name_or_None, *options, base_url=..., cache_dir=..., env=...,
    mountpoint=...)`` → Mount. ``env`` adds variables to the daemon's environment (and to
    the ``pictofs`` commands of the Mount); ``mountpoint`` mounts again on a folder used
    before (a stale mount of a killed daemon is cleaned by ``pictofs mount`` itself);
    ``expect_fail=None``: the mount may fail (the handle says so: ``mounted`` is False)."""
    made: list[Mount] = []
    attempts = iter(range(1000))

    def make(dataset: str | None, *options: str, base_url: str | None = None,
             cache_dir: Path | None = None, expect_fail: bool | None = False,
             env: dict[str, str] | None = None, mountpoint: Path | None = None) -> Mount:
        index = next(attempts)
        if mountpoint is None:
            mountpoint = tmp_path / f"mnt{index}"
            mountpoint.mkdir(exist_ok=True)
        cache = cache_dir or tmp_path / "cache"
        log_file = tmp_path / f"mount{index}.log"
        env = {**mount_env, **(env or {})}
        if base_url:
            env["PICTOGRAPH_BASE_URL"] = base_url
        args = ["mount", *([dataset] if dataset else []), str(mountpoint),
                "--cache-dir", str(cache), "--log-file", str(log_file), "-v", *options]
        result = pictofs(*args, env=env, timeout=120)
        handle = Mount(mountpoint, dataset, cache, log_file, env, args)
        if expect_fail or (expect_fail is None and result.returncode != 0):
            assert result.returncode != 0, "mount was expected to fail"
            handle.mounted = False
            handle.args.append(result.stderr)
            return handle
        assert result.returncode == 0, f"mount failed: {result.stderr}\n{handle.log()}"
        made.append(handle)
        return handle

    yield make
    problems = []
    for handle in made:
        if handle.mounted:
            try:
                result = handle.umount()
                failure = result.stderr if result.returncode != 0 else None
            except subprocess.TimeoutExpired as exc:
                failure = f"no answer in {exc.timeout:.0f} s"
            if failure is not None:
                force_unmount(handle.path)
                problems.append(f"umount {handle.path}: {failure}")
        if "Traceback" in handle.log():
            problems.append(f"traceback in {handle.log_file}:\n{handle.log()[-3000:]}")
    assert not problems, "\n".join(problems)
