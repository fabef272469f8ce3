"""``pictofs mount``: build the objects of one mount, wire them, and run it.

The CLI parent process checks everything that can be checked before mounting (``/dev/fuse``,
the mountpoint, the key, the dataset) and prints one line on failure. It then starts the
daemon (this same command with ``--foreground``, in a new session) and waits until the daemon
says the mount is ready on an inherited pipe, or prints the daemon's one-line error. So
``pictofs mount`` returns exactly when the mount is usable, and no Python threads are ever
forked.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pictofs import control, dirs
from pictofs.config import Connection
from pictofs.errors import ConfigError, NotFound, PictofsError
from pictofs.model import Dataset

log = logging.getLogger(__name__)

READY_FD_ENV = "PICTOFS_READY_FD"
READY_TIMEOUT = 120.0


@dataclass
class Target:
    """What to mount: one dataset, or (``dataset`` None) the whole organization."""

    connection: Connection
    dataset: Dataset | None
    mountpoint: str


def _client(conn: Connection, args: argparse.Namespace) -> Any:
    from pictofs.api import Client

    return Client(api_key=conn.api_key, base_url=conn.base_url, timeout=(5.0, args.timeout),
                  max_retries=args.retries)


def resolve_target(args: argparse.Namespace, announce: bool) -> Target:
    """Check the key and find (or, on the local server, create) the dataset."""
    from pictofs.embedded import connect
    from pictofs.fs.mount import check_fuse_device, prepare_mountpoint

    check_fuse_device()
    mountpoint = prepare_mountpoint(args.mountpoint)
    conn = connect(base_url=args.base_url, key_file=args.key_file,
                   announce=sys.stderr if announce else None)
    client = _client(conn, args)
    try:
        if args.dataset is None:
            client.projects.list()
            return Target(conn, None, mountpoint)
        try:
            dataset = client.projects.get(args.dataset)
        except NotFound:
            if conn.key_source != "local server":
                raise ConfigError(f"no dataset named {args.dataset!r}") from None
            dataset = client.projects.create(args.dataset)
            if announce:
                print(f"created dataset {dataset.name} on the local server", file=sys.stderr)
        return Target(conn, dataset, mountpoint)
    finally:
        client.close()


# ------------------------------------------------------------------- the parent side


def mount_in_background(args: argparse.Namespace, argv: list[str]) -> int:
    """Check, start the daemon, and return once the mount is ready (or print why not)."""
    resolve_target(args, announce=True)
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{READY_FD_ENV: str(write_fd)})
    process = subprocess.Popen(
        [sys.executable, "-m", "pictofs", *argv, "--foreground"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        pass_fds=(write_fd,), env=env, start_new_session=True,
    )
    os.close(write_fd)
    message = _wait_ready(read_fd, process)
    if message == "ready":
        print(f"mounted on {args.mountpoint}", file=sys.stderr)
        return 0
    raise ConfigError(message)


def _wait_ready(read_fd: int, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([pipe], [], [], 0.5)
            if readable:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"\n"):
                    break
            elif process.poll() is not None:
                break
    text = data.decode("utf-8", "replace").strip()
    if text:
        return text
    if process.poll() is None:
        process.terminate()
        return f"the mount did not become ready within {READY_TIMEOUT:.0f}s"
    return f"the mount daemon exited with status {process.returncode} before mounting"


def _tell_parent(message: str) -> None:
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), message.encode("utf-8", "replace") + b"\n")
        os.close(int(fd))
    except OSError:
        pass


# ------------------------------------------------------------------- the daemon side


def run_foreground(args: argparse.Namespace) -> int:
    """Build and serve the mount in this process until it is unmounted."""
    try:
        target = resolve_target(args, announce=READY_FD_ENV not in os.environ)
        return _serve(target, args)
    except PictofsError as exc:
        _tell_parent(str(exc))
        raise


def _serve(target: Target, args: argparse.Namespace) -> int:
    from pictofs.api.remote import ApiRemote
    from pictofs.core.attrs import AttrPolicy
    from pictofs.core.breaker import CircuitBreaker, GuardedRemote
    from pictofs.core.cache import ImageCache
    from pictofs.core.downloads import Downloader
    from pictofs.core.vfs import Vfs, VfsOptions
    from pictofs.fs.mount import MountSettings, serve, start_sighup_thread
    from pictofs.fs.operations import PictoOperations

    api_remote = ApiRemote(target.connection, timeout=args.timeout, retries=args.retries,
                           retry_max_wait=args.retry_max_wait)
    breaker = CircuitBreaker(probe=api_remote.ping)
    remote = GuardedRemote(api_remote, breaker)
    cache_root = Path(args.cache_dir).expanduser() if args.cache_dir else dirs.cache_dir()
    state = dirs.private_dir(dirs.state_dir())

    def downloader_for(dataset: Dataset) -> Downloader:
        cache = ImageCache(cache_root, target.connection.base_url, dataset.id, args.cache_size)
        return Downloader(cache, remote)

    read_only = True  # the write side (journaled uploads) is not part of this mount yet
    policy = AttrPolicy(
        uid=args.uid if args.uid is not None else os.getuid(),
        gid=args.gid if args.gid is not None else os.getgid(),
        file_mode=args.file_mode, dir_mode=args.dir_mode, umask=args.umask or 0,
        read_only=read_only or args.read_only,
    )
    vfs = Vfs(remote, VfsOptions(policy, args.dir_cache_time, str(state)), downloader_for,
              dataset=target.dataset, is_online=breaker.allows_requests)
    name = target.dataset.name if target.dataset else "organization"
    ctl = control.ControlServer(target.mountpoint, {
        "status": lambda _req: _status(vfs, breaker, target),
        "refresh": lambda _req: (vfs.refresh(), {})[1],
    })

    def on_init() -> None:
        ctl.start()
        start_sighup_thread(vfs.refresh)
        log.info("mounted %s on %s", name, target.mountpoint)
        _tell_parent("ready")

    def on_destroy() -> None:
        ctl.stop()
        breaker.close()
        log.info("unmounted %s", target.mountpoint)

    operations = PictoOperations(vfs, on_init=on_init, on_destroy=on_destroy)
    settings = MountSettings(target.mountpoint, f"pictofs:{name}", args.dir_cache_time,
                             read_only=args.read_only, allow_other=args.allow_other)
    try:
        serve(operations, settings)
    finally:
        api_remote.close()
    return 0


def _status(vfs: Any, breaker: Any, target: Target) -> dict[str, Any]:
    status = vfs.status()
    status.update({
        "pid": os.getpid(),
        "mountpoint": target.mountpoint,
        "dataset": target.dataset.name if target.dataset else None,
        "base_url": target.connection.base_url,
        "service": "unreachable" if breaker.is_open else "ok",
        "breaker": {"trips": breaker.trips, "refused": breaker.refused},
    })
    return status
