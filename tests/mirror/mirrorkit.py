"""Helpers of the mirror tests: the real ``pictofs mirror`` command in a subprocess against
the session's reference server, real folders, and waiting for the service to reach a state
(polling it with a deadline, never sleeping a fixed time)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from harness import ServerHandle
from imagegen import png_bytes
from pictofs.api import images as images_api
from pictofs.model import Image

WAIT = 60.0  # seconds: only so that a broken test fails instead of hanging
UPLOAD_ROUTES = (("POST", "upload-url"), ("POST", "register"), ("PUT", "storage/upload"))
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = WAIT, every: float = 0.1,
             what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def upload_calls(server: ServerHandle) -> int:
    """Requests of the upload routes (single and bulk) the server has seen."""
    return sum(server.calls(method, route) for method, route in UPLOAD_ROUTES)


def service_images(client, dataset_id: str, archived: bool = False  # type: ignore[no-untyped-def]
                   ) -> dict[str, Image]:
    """Path → image of the dataset's images (with ``archived``, the archived ones only)."""
    images = client.images.list(dataset_id, include_archived=archived)
    return {i.path: i for i in images if i.is_archived == archived}


def all_paths(client, dataset_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every image path, archived or not, with repeats: duplicates show."""
    return sorted(i.path for i in client.images.list(dataset_id, include_archived=True))


def image_bytes(client, image_id: str) -> bytes:  # type: ignore[no-untyped-def]
    with images_api.open_bytes(client.transport, image_id) as stream:
        return b"".join(stream)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_image(path: Path, seed: int, size: tuple[int, int] = (8, 6)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = png_bytes(seed, size)
    path.write_bytes(data)
    return data


def make_tree(root: Path, count: int, *, depth_of: Callable[[int], str]) -> dict[str, bytes]:
    """``count`` small distinct PNGs under ``root``; relative path → bytes."""
    made = {}
    for n in range(count):
        rel = f"{depth_of(n)}img{n:04d}.png"
        made[rel] = write_image(root / rel, seed=10_000 + n)
    return made


class Mirror:
    """``pictofs mirror`` as a subprocess; its stderr goes to a log file."""

    def __init__(self, server: ServerHandle, local: Path, target: str, *options: str,
                 log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "pictofs", "mirror", str(local), target, *options]
        self.env = {**os.environ, "PICTOGRAPH_API_KEY": server.key,
                    "PICTOGRAPH_BASE_URL": server.base_url, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run to the end (``--once``); stdout is the report."""
        with open(self.log_path, "a") as log:
            return subprocess.run(self.args, env=self.env, stdout=subprocess.PIPE,
                                  stderr=log, text=True, timeout=timeout)

    def spawn(self, stdout: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """Start it without waiting for anything."""
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=stdout,
                                            stderr=log, text=True)
        return self.process

    def start(self) -> Mirror:
        """Start watching; returns once the start-up comparison is planned."""
        process = self.spawn()
        wait_for(lambda: "to upload" in self.log() or process.poll() is not None,
                 what="the mirror's start-up comparison")
        assert process.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the mirror did not stop on {sig}: {self.log()}") from None
