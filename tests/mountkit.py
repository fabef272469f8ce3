"""Helpers for the write-side mount tests: request counts, ``pictofs`` commands against a
mount, what the service holds, the mount's journal folder, and a killed daemon.

Counts come from the reference server's ``/metrics`` (route templates, so they do not depend
on ids); everything that waits polls a condition with a deadline.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pictofs.core.upload.batch import REGISTER_PIECE
from pictofs.core.upload.journal import journal_dir
from pictofs.model import Image

API = "/api/v1/developer"
UPLOAD_URL = f"{API}/images/upload-url"
BULK_UPLOAD_URL = f"{API}/images/bulk-upload-url"
REGISTER = f"{API}/images/register"
BULK_REGISTER = f"{API}/images/bulk-register"
BATCH_DELETE = f"{API}/batch/images/delete"
BATCH_MOVE = f"{API}/batch/images/move"
PUT = "/storage/upload/{token}"


class Counts:
    """POST counts of the upload and batch routes since construction, by route; ``since()``
    counts every answer, ``succeeded()`` only 2xx answers."""

    ROUTES = {"upload_url": UPLOAD_URL, "bulk_upload_url": BULK_UPLOAD_URL,
              "register": REGISTER, "bulk_register": BULK_REGISTER,
              "archive": BATCH_DELETE, "move": BATCH_MOVE}

    def __init__(self, server: Any) -> None:
        self.server = server
        self.start_all = self._now(ok_only=False)
        self.start_ok = self._now(ok_only=True)
        self.start_puts = 0
        self.start_puts = self.puts()

    def _now(self, ok_only: bool) -> dict[str, int]:
        metrics = self.server.metrics()
        return {key: sum(n for (method, r, status), n in metrics.items()
                         if method == "POST" and r == route
                         and (not ok_only or 200 <= status < 300))
                for key, route in self.ROUTES.items()}

    def since(self) -> dict[str, int]:
        now = self._now(ok_only=False)
        return {key: now[key] - self.start_all[key] for key in now}

    def succeeded(self) -> dict[str, int]:
        now = self._now(ok_only=True)
        return {key: now[key] - self.start_ok[key] for key in now}

    def puts(self) -> int:
        """Storage PUTs answered 2xx since construction: one per file whose bytes went up,
        whether its upload-URL and register requests were single or bulk."""
        now = sum(n for (method, route, status), n in self.server.metrics().items()
                  if method == "PUT" and route == PUT and 200 <= status < 300)
        return now - self.start_puts

    def uploads(self) -> int:
        """Upload-URL requests of any kind: zero means nothing was sent."""
        changes = self.since()
        return changes["upload_url"] + changes["bulk_upload_url"]



def assert_registers_follow_urls(changes: dict[str, int], puts: int) -> None:
    """Every upload-URL request was followed by its register requests: exactly one for a
    single file; for a batch one or more, at most one per ``REGISTER_PIECE`` files (a large
    batch registers what landed while its other PUTs are in flight)."""
    assert changes["upload_url"] == changes["register"], changes
    assert changes["bulk_upload_url"] <= changes["bulk_register"] \
        <= changes["bulk_upload_url"] + puts // REGISTER_PIECE, changes

def pictofs_cmd(m: Any, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``pictofs ARGS`` with the mount's environment (never hangs the test run)."""
    return subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                          text=True, env=m.env, timeout=timeout, stdin=subprocess.DEVNULL)


def sync(m: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``pictofs sync MOUNTPOINT``, expected to succeed."""
    result = pictofs_cmd(m, "sync", str(m.path), timeout=timeout)
    assert result.returncode == 0, f"pictofs sync failed: {result.stderr}\n{m.log()[-3000:]}"
    return result


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def live(client: Any, dataset: Any, folder: str | None = None) -> dict[str, Image]:
    """Path → image of the dataset's live images (or of one folder)."""
    return {img.path: img for img in client.images.list(dataset.id, folder_path=folder)}


def everything(client: Any, dataset: Any) -> list[Image]:
    """Every image of the dataset, archived ones included."""
    return list(client.images.list(dataset.id, include_archived=True))


def service_bytes(client: Any, image_id: str, scratch: Path) -> bytes:
    target = scratch / f"download-{image_id}"
    client.images.download(image_id, target)
    data = target.read_bytes()
    target.unlink()
    return data


def journal_folder(m: Any, dataset: Any) -> Path:
    """The state folder of the mount's journal (``journal.db``, ``staging/``, ``local/``)."""
    state = Path(m.env["XDG_STATE_HOME"]) / "pictofs"
    return journal_dir(state, dataset.id)


def staging_files(m: Any, dataset: Any) -> list[str]:
    staging = journal_folder(m, dataset) / "staging"
    return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []


def is_dead_mount(path: Path) -> bool:
    """The daemon behind ``path`` is gone: the kernel answers ENOTCONN."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def daemon_pids(path: Path) -> list[int]:
    """The ``pictofs mount`` processes serving ``path`` (found by their command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if b"pictofs" in argv and b"mount" in argv and str(path).encode() in argv:
            pids.append(int(proc.name))
    return pids


def is_running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a reaped or zombie daemon has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kernel_stacks(pid: int) -> str:
    """Where each thread of ``pid`` waits in the kernel: ``wchan`` and ``stack`` per task
    (the stack needs root; what cannot be read is said, not skipped)."""
    lines = [f"process {pid} is still alive:"]
    tasks = sorted(Path(f"/proc/{pid}/task").glob("*"), key=lambda t: int(t.name))
    for task in tasks:
        parts = []
        for name in ("comm", "wchan", "stat", "stack"):
            try:
                parts.append(f"{name}: {(task / name).read_text().strip()}")
            except OSError as exc:
                parts.append(f"{name}: unreadable ({exc.strerror})")
        lines.append(f"  task {task.name}\n    " + "\n    ".join(parts))
    return "\n".join(lines)


def wait_for_daemon_exit(pids: list[int], what: str, timeout: float = 120.0,
                         explain_after: float = 5.0) -> None:
    """Wait until every pid has exited; a daemon that outlives its kill by more than
    ``explain_after`` seconds has its threads' kernel stacks printed (once), so a hang
    explains itself in the test's output; fail after ``timeout``."""
    start = time.monotonic()
    explained = False
    while True:
        alive = [pid for pid in pids if is_running(pid)]
        if not alive:
            return
        waited = time.monotonic() - start
        if waited > explain_after and not explained:
            explained = True
            for pid in alive:
                print(f"{what}: {kernel_stacks(pid)}", file=sys.stderr, flush=True)
        assert waited < timeout, f"timed out waiting for {what}: {alive} still alive"
        time.sleep(0.05)


def kill_daemon(m: Any) -> None:
    """``kill -9`` the mount's daemon (pid from ``pictofs status``) and wait until it has
    exited and the mount is dead; the Mount is then left to be cleaned by the next
    ``pictofs mount``."""
    pid = int(m.status()["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_for_daemon_exit([pid], "the killed daemon")
    wait_for(lambda: is_dead_mount(m.path), "the killed daemon's mount to go stale")
    m.mounted = False


def crash_mount(mount: Any, m: Any, dataset_name: str, point: str, hit: int) -> Any:
    """Mount again on ``m``'s mountpoint with ``PICTOFS_FAULT=crash:POINT:HIT`` and wait for
    the daemon to kill itself there, leaving a stale mount. The daemon resumes its journal
    while it sets the mount up, so the crash may come before it tells ``pictofs mount`` it
    is ready: that command then fails, naming the signal, which is right too."""
    crashing = mount(dataset_name, "--write-back", "0.2s", mountpoint=m.path,
                     env={"PICTOFS_FAULT": f"crash:{point}:{hit}"}, expect_fail=None)
    wait_for(lambda: f"fault injection: crashing at {point}" in crashing.log(),
             f"the daemon to crash at {point}")
    if not crashing.mounted:
        assert "exited with status -9 before mounting" in crashing.args[-1], crashing.args[-1]
    wait_for_daemon_exit(daemon_pids(crashing.path), "the daemon that crashed itself")
    wait_for(lambda: is_dead_mount(crashing.path), "the crashed daemon's mount to go stale")
    crashing.mounted = False
    return crashing
