"""``pictofs mount``: build the objects of one mount, wire them, and run it.

The CLI parent process checks everything that can be checked before mounting (``/dev/fuse``,
the mountpoint, the key, the dataset) and prints one line on failure. It then starts the
daemon (this same command with ``--foreground``, in a new session) and waits until the daemon
says the mount is ready on an inherited pipe, or prints the daemon's one-line error. So
``pictofs mount`` returns exactly when the mount is usable, and no Python threads are ever
forked.

``build_tree`` builds the object graph of a mount (remotes, circuit breaker, side builder,
``Vfs``) without FUSE; ``_serve`` hands it to the FUSE adapter, and tests drive it in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pictofs import control, dirs, sdnotify
from pictofs.config import Connection
from pictofs import known_datasets
from pictofs.errors import ConfigError, NotFound, PictofsError, Unavailable
from pictofs.model import Dataset

log = logging.getLogger(__name__)

# what libfuse prints on a mount that works, and means nothing to a user
HARMLESS_LIBFUSE_LINES = ("Ignoring invalid max threads value",)

READY_FD_ENV = "PICTOFS_READY_FD"
# the dataset the parent found, handed to its daemon so that it does not ask again (a round
# trip saved on every mount: the parent checked the key and the dataset a moment before)
DATASET_ENV = "PICTOFS_MOUNT_DATASET"
READY_TIMEOUT = 120.0


@dataclass
class MountTarget:
    """What to mount: one dataset, or (``dataset`` None) the whole organization."""

    connection: Connection
    dataset: Dataset | None
    mountpoint: str
    offline: bool = False  # the service was unreachable at start (breaker starts open)


def _client(conn: Connection, args: argparse.Namespace) -> Any:
    from pictofs.api import Client

    return Client(api_key=conn.api_key, base_url=conn.base_url, timeout=(5.0, args.timeout),
                  max_retries=args.retries)


def resolve_target(args: argparse.Namespace, announce: bool) -> MountTarget:
    """Check the key and find (or, on the local server, create) the dataset. While the
    service is unreachable this retries for ``--timeout``; then a dataset this machine
    mounted before is mounted from what it remembers, with the circuit breaker open."""
    from pictofs.embedded import connect
    from pictofs.fs.fuse_session import check_fuse_device, prepare_mountpoint

    check_fuse_device()
    mountpoint = prepare_mountpoint(args.mountpoint)
    conn = connect(base_url=args.base_url, key_file=args.key_file,
                   announce=sys.stderr if announce else None)
    handed = _handed_dataset(args)
    if handed is not None:
        target = MountTarget(conn, handed, mountpoint)
        if not args.read_only:
            check_journal_free(target)
        return target
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            dataset = _find_dataset(conn, args, announce)
            break
        except Unavailable as exc:
            if time.monotonic() < deadline:
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
                continue
            remembered = known_datasets.get(conn.base_url, args.dataset) if args.dataset \
                else None
            if remembered is None:
                raise ConfigError(f"the service at {conn.base_url} is unreachable: "
                                  f"{exc}") from None
            if announce:
                print(f"the service is unreachable: mounting {remembered.name} from what "
                      f"this machine remembers; it reconnects when the service is back",
                      file=sys.stderr)
            dataset, offline = remembered, True
            target = MountTarget(conn, dataset, mountpoint, offline=offline)
            if not args.read_only:
                check_journal_free(target)
            return target
    if dataset is not None:
        known_datasets.put(conn.base_url, dataset)
    target = MountTarget(conn, dataset, mountpoint)
    if not args.read_only:
        check_journal_free(target)
    return target


def _handed_dataset(args: argparse.Namespace) -> Dataset | None:
    """The dataset the parent found, if it handed one to this daemon (``DATASET_ENV``, taken
    out of the environment so that nothing started later sees it)."""
    text = os.environ.pop(DATASET_ENV, None)
    if text is None or READY_FD_ENV not in os.environ:
        return None
    try:
        dataset = Dataset.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring the dataset handed over by pictofs mount: %s", exc)
        return None
    return dataset if dataset.name == args.dataset or dataset.id == args.dataset else None


def _find_dataset(conn: Connection, args: argparse.Namespace, announce: bool
                  ) -> Dataset | None:
    client = _client(conn, args)
    try:
        if args.dataset is None:
            client.projects.list()
            return None
        try:
            return client.projects.get(args.dataset)
        except NotFound:
            if conn.key_source != "local server":
                raise ConfigError(f"no dataset named {args.dataset!r}") from None
            dataset = client.projects.create(args.dataset)
            if announce:
                print(f"created dataset {dataset.name} on the local server", file=sys.stderr)
            return dataset
    finally:
        client.close()


# ------------------------------------------------------------------- the parent side


def mount_in_background(args: argparse.Namespace, argv: list[str]) -> int:
    """Check, start the daemon, and return once the mount is ready (or print why not)."""
    target = resolve_target(args, announce=True)
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, **{READY_FD_ENV: str(write_fd)})
    if target.dataset is not None and not target.offline:
        env[DATASET_ENV] = json.dumps(target.dataset.to_json())
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
                if not chunk:  # the daemon closed it: it is exiting (its exit may lag)
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
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
    daemon = READY_FD_ENV in os.environ
    try:
        target = resolve_target(args, announce=not daemon)
        return _serve(target, args)
    except PictofsError as exc:
        if daemon:  # the parent prints it; the log keeps it too
            log.error("%s", exc)
        _tell_parent(str(exc))
        raise


@dataclass
class BuiltTree:
    """The object graph of one mount, without FUSE: what ``_serve`` hands to the adapter and
    what tests drive in-process. ``vfs`` is the core; ``breaker`` guards the service;
    ``api_remote`` is the HTTP remote beneath both (closed by ``close``)."""

    vfs: Any  # pictofs.core.tree.vfs.Vfs
    breaker: Any  # pictofs.remote.breaker.CircuitBreaker
    api_remote: Any  # pictofs.api.bulk_remote.BulkApiRemote
    sides: "DatasetTreeBuilder"

    def stop_uploads(self, timeout: float = 60) -> None:
        """Stop every dataset's upload workers, letting the steps in flight finish (what
        the rest of the queue holds resumes at the next mount)."""
        for dataset in self.vfs.dataset_trees():
            if not dataset.writes.stop(timeout=timeout):
                log.warning("an upload step was still running at unmount; it resumes at "
                            "the next mount")

    def close(self, timeout: float = 60) -> None:
        """Everything a mount's teardown does to the tree, in its order: stop the uploads,
        close the breaker, the caches and downloads, then the HTTP remote."""
        try:
            self.stop_uploads(timeout)
            self.breaker.close()
            self.vfs.close()
        finally:
            self.api_remote.close()


def build_tree(target: MountTarget, args: argparse.Namespace,
               state_dir: Path | None = None) -> BuiltTree:
    """Build the remotes, the circuit breaker, the side builder and the ``Vfs`` of a mount
    of ``target`` with the options ``args`` (a ``mount`` Namespace, defaults filled).
    ``state_dir``: where journals live (default: the user's state dir). Imports no FUSE
    module; a dataset's side (journal, upload workers) is set up when first reached, or by
    ``vfs.open_dataset()``."""
    from pictofs.api.bulk_remote import BulkApiRemote
    from pictofs.core.cache.readahead import DOWNLOAD_THREADS
    from pictofs.core.tree.attrs import AttrPolicy
    from pictofs.core.tree.view import LIST_AHEAD
    from pictofs.remote.breaker import CircuitBreaker, GuardedRemote
    from pictofs.core.tree.vfs import Vfs, VfsOptions

    # the bulk verbs let the upload queue send new files of a folder together (one PUT per
    # file, one upload-url call per batch and its registers: one, or one per 64 files of a
    # large batch). The pool keeps a connection for every thread that may send at once: the
    # downloads, the upload workers and their PUTs, and the listings ahead of a walk (a page
    # and a folders call each); a connection it cannot keep is opened and closed per request.
    api_remote = BulkApiRemote(target.connection, timeout=args.timeout, retries=args.retries,
                               retry_max_wait=args.retry_max_wait,
                               pool_size=DOWNLOAD_THREADS + 2 * args.transfers + 2 * LIST_AHEAD)
    breaker = CircuitBreaker(probe=api_remote.ping)
    remote = GuardedRemote(api_remote, breaker)
    # the upload queue retries a failed step itself (the protocol's backoff, without holding
    # a worker), so its requests are sent once; and one failed upload request must not open
    # the breaker for the read side
    upload_remote = GuardedRemote(api_remote.without_retries(), breaker, trips=False)
    if target.offline:
        breaker.trip()
    state = dirs.private_dir(state_dir if state_dir is not None else dirs.state_dir())
    policy = AttrPolicy(
        uid=args.uid if args.uid is not None else os.getuid(),
        gid=args.gid if args.gid is not None else os.getgid(),
        file_mode=args.file_mode, dir_mode=args.dir_mode, umask=args.umask or 0,
        read_only=args.read_only,
    )
    sides = DatasetTreeBuilder(target, args, remote, state, upload_remote)
    vfs = Vfs(remote, VfsOptions(policy, args.dir_cache_time, str(state),
                                 args.listing_cache_images), sides.build,
              dataset=target.dataset, is_online=breaker.allows_requests)
    return BuiltTree(vfs, breaker, api_remote, sides)


def _serve(target: MountTarget, args: argparse.Namespace) -> int:
    from pictofs.fs.fuse_session import (MountMessages, MountSettings, serve,
                                         start_sighup_thread)
    from pictofs.fs.operations import PictoOperations
    from pictofs.gcpolicy import settle_daemon_heap

    tree = build_tree(target, args)
    settle_daemon_heap()
    vfs, breaker = tree.vfs, tree.breaker
    name = target.dataset.name if target.dataset else "organization"
    ctl = control.ControlServer(target.mountpoint, {
        "status": lambda _req: _status(vfs, operations, breaker, target),
        "refresh": lambda _req: (vfs.refresh(), {})[1],
        "sync": lambda req: _sync(vfs, req.get("timeout")),
    })

    messages = MountMessages()

    def give_up(why: str) -> None:
        """End a mount whose set-up failed in ``init``: ``pictofs mount`` is told why (never
        left waiting for "ready"), and libfuse ends its loop and unmounts."""
        _tell_parent(f"cannot mount {name}: {why}")
        os.kill(os.getpid(), signal.SIGTERM)

    def on_init() -> None:
        said = [line for line in messages.release().splitlines() if line.strip()]
        # libfuse 3 complains of the thread limit mfusepy leaves unset on every mount: noise
        noise = [line for line in said if line.startswith(HARMLESS_LIBFUSE_LINES)]
        if noise:
            log.debug("libfuse said while mounting: %s", " / ".join(noise))
        if len(said) > len(noise):
            log.info("libfuse said while mounting: %s",
                     " / ".join(line for line in said if line not in noise))
        try:
            ctl.start()
        except OSError as exc:
            log.error("cannot open the control socket %s: %s", ctl.path, exc)
            give_up(f"cannot open the control socket {ctl.path}: {exc}")
            return
        start_sighup_thread(vfs.refresh)
        if target.dataset is None:
            _resume_organization(vfs)
        else:
            try:
                vfs.open_dataset()  # resume this dataset's journal now
            except Exception as exc:
                log.exception("cannot set up %s", name)
                give_up(str(exc))
                return
        log.info("mounted %s on %s", name, target.mountpoint)
        _tell_parent("ready")
        sdnotify.notify("READY=1", f"STATUS=mounted {name} on {target.mountpoint}")

    def on_destroy() -> None:
        sdnotify.notify("STOPPING=1", "STATUS=unmounting; finishing the upload steps in flight")
        tree.stop_uploads(timeout=60)
        ctl.stop()
        breaker.close()
        _log_unmounted(vfs, target.mountpoint)

    operations = PictoOperations(vfs, on_init=on_init, on_destroy=on_destroy)
    settings = MountSettings(target.mountpoint, f"pictofs:{name}", args.dir_cache_time,
                             read_only=args.read_only, allow_other=args.allow_other)
    try:
        serve(operations, settings, messages)
    finally:
        tree.api_remote.close()
    return 0


def _log_unmounted(vfs: Any, mountpoint: str) -> None:
    """The last line of a mount's log: unmounted, and how many uploads wait in the journal
    (an unmount by ``fusermount3 -u`` or ``umount`` does not wait for them)."""
    from pictofs.core.tree.status import merge_upload_status

    uploads = merge_upload_status([d.writes.status() for d in vfs.dataset_trees()])
    waiting = uploads["pending"] + uploads["in_flight"]
    if waiting:
        log.warning("unmounted %s with %d upload(s) pending; they stay in the journal and "
                    "resume at the next mount", mountpoint, waiting)
    else:
        log.info("unmounted %s", mountpoint)


class DatasetTreeBuilder:
    """Builds the DatasetTree of a dataset: cache and downloader, and for writable mounts the
    journal, the write layer (with its upload workers, started here) and the renamer."""

    def __init__(self, target: MountTarget, args: argparse.Namespace, remote: Any,
                 state: Path, upload_remote: Any) -> None:
        self.target = target
        self.args = args
        self.remote = remote
        self.upload_remote = upload_remote
        self.state = state
        self.cache_root = Path(args.cache_dir).expanduser() if args.cache_dir \
            else dirs.cache_dir()

    def build(self, view: Any) -> Any:
        from pictofs.api import images as images_api
        from pictofs.core.tree.archive import ArchiveView
        from pictofs.core.cache.store import open_cache
        from pictofs.core.cache.downloads import Downloader
        from pictofs.core.upload.journal import Journal
        from pictofs.core.cache.readahead import ReadAhead
        from pictofs.core.tree.renames import Renamer
        from pictofs.core.tree.trash import Trash
        from pictofs.core.tree.dataset import DatasetTree
        from pictofs.core.tree.writes import WriteLayer, WriteOptions

        conn = self.target.connection
        cache = open_cache(self.cache_root, conn.base_url, view.dataset_id, self.args.cache_size)
        downloader = Downloader(cache, self.remote,
                                read_ahead=ReadAhead(self.args.prefetch, view.cached_listing),
                                is_online=self.remote.breaker.allows_requests)
        archive = ArchiveView(self.remote, view.dataset_id, self.args.dir_cache_time)
        if self.args.read_only:
            return DatasetTree(view, downloader, archive)
        assert conn.api_key is not None
        try:
            journal = Journal.for_dataset(self.state, conn.base_url, view.dataset_id,
                                          conn.api_key)
        except ConfigError as exc:
            log.warning("%s: read-only in this mount: %s", view.dataset.name, exc)
            return DatasetTree(view, downloader, archive)
        options = WriteOptions(write_back=self.args.write_back, transfers=self.args.transfers,
                               retry_max_wait=self.args.retry_max_wait,
                               min_free_space=self.args.min_free_space,
                               permanent_delete=self.args.permanent_delete,
                               local_only_max=self.args.local_only_max,
                               refuse_non_images=self.args.refuse_non_images,
                               batch=images_api.BULK_LIMIT,
                               commit_interval=self.args.commit_interval)
        writes = WriteLayer(view, self.remote, journal, downloader, journal.directory / "local",
                            options, upload_remote=self.upload_remote)
        writes.start()
        renamer = Renamer(view, self.remote, writes)
        trash = Trash(view, self.remote, writes, renamer, journal.directory / "trash")
        return DatasetTree(view, downloader, archive, writes, renamer, trash)


def _resume_organization(vfs: Any) -> None:
    """An organization mount resumes, at mount, every dataset that has uploads in a journal
    (not only those a user reaches); a journal of a dataset the organization does not have
    is reported."""
    from pictofs.core.upload.journal import find_journals

    waiting = {info.dataset_id: info for info in find_journals(dirs.state_dir())
               if info.live or info.staged_files}
    try:
        missing = vfs.open_datasets(set(waiting))
    except PictofsError as exc:
        log.warning("cannot resume the uploads of %d dataset(s) now: %s", len(waiting), exc)
        return
    for dataset_id in sorted(missing):
        log.warning("%d pending upload(s) in %s are for dataset %s, which this organization "
                    "does not have; they stay there", waiting[dataset_id].live,
                    waiting[dataset_id].folder, dataset_id)


def check_journal_free(target: MountTarget) -> None:
    """A writable dataset mount needs the dataset's journal: refuse at start, in one line,
    when another process holds it (the same dataset mounted twice on this machine)."""
    from pictofs.core.upload.journal import Journal

    conn = target.connection
    if target.dataset is None or conn.api_key is None:
        return
    try:
        journal = Journal.for_dataset(dirs.private_dir(dirs.state_dir()), conn.base_url,
                                      target.dataset.id, conn.api_key)
    except OSError as exc:
        raise ConfigError(f"cannot open the upload journal in {dirs.state_dir()}: "
                          f"{exc.strerror or exc}") from None
    journal.close()


def _sync(vfs: Any, timeout: float | None) -> dict[str, Any]:
    """Wait until no upload is pending or in flight (failed ones do not count)."""
    idle = vfs.wait_idle(timeout if timeout is not None else 1e9)
    status = vfs.status()["uploads"]
    return {"idle": idle, "failed": status["failed"], "pending": status["pending"],
            "in_flight": status["in_flight"]}


def _status(vfs: Any, operations: Any, breaker: Any, target: MountTarget) -> dict[str, Any]:
    status = vfs.status()
    status.update(operations.status())
    status.update({
        "pid": os.getpid(),
        "mountpoint": target.mountpoint,
        "dataset": target.dataset.name if target.dataset else None,
        "base_url": target.connection.base_url,
        "service": "unreachable" if breaker.is_open else "ok",
        "breaker": {"trips": breaker.trips, "refused": breaker.refused},
    })
    return status
