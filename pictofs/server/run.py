"""Running the reference server, and the admin verbs the CLI calls.

- ``serve``: first start on a missing or empty data folder creates it (0700), the ``default``
  organization and an ``owner`` key written alone to ``DIR/owner.key`` (0600) before any
  socket is opened. It binds the sockets itself (port 0 picks a free port), writes
  ``DIR/server.json`` once listening, and removes it on SIGTERM/SIGINT (exit 0). A lock
  (``DIR/server.lock``) keeps a second server off the same folder. Expired pending uploads
  are swept at start and then every ``PICTOFS_SWEEP_INTERVAL`` seconds (default 60), a
  bounded batch at a time, in the thread pool.
- ``create_org``, ``create_key``, ``list_keys``, ``revoke_key``: read and write the database
  directly; safe while a server runs (SQLite WAL and a busy timeout). A running server reads
  a key's revocation on its next request.
- ``stop``: SIGTERM the server named in ``server.json`` and wait until it has let go of its
  lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import uvicorn

from pictofs.errors import ConfigError
from pictofs.model import ROLES
from pictofs.server.db import DB_FILE, Database, KeyInfo
from pictofs.server.profiles import REFERENCE, Profile, profile_named

log = logging.getLogger(__name__)

DEFAULT_ORG = "default"
SWEEP_INTERVAL_ENV = "PICTOFS_SWEEP_INTERVAL"
SWEEP_INTERVAL_S = 60.0
SWEEP_ROUNDS = 20  # batches one sweep runs at most (the next sweep takes the rest)
OWNER_KEY_FILE = "owner.key"
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"


# ---- data folder ---------------------------------------------------------------------------

def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) atomically: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _open_database(data_dir: Path) -> Database:
    """Open (creating if needed) the database; on first creation make the folder private,
    create the default organization and the owner key, and say where the key is."""
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / DB_FILE)
    fresh = not db.exists()
    if fresh:
        _private_dir(data_dir)
    db.initialize()
    if fresh and not db.organizations():
        org = db.create_organization(DEFAULT_ORG)
        if org is not None:
            key = db.add_api_key(org.id, "owner")
            key_path = data_dir / OWNER_KEY_FILE
            _write_private(key_path, key + "\n")
            message = f"created organization '{DEFAULT_ORG}'; owner key written to {key_path}"
            print(message, flush=True)
    return db


# ---- admin verbs ---------------------------------------------------------------------------

def create_org(data_dir: Path, name: str) -> str:
    """Add an organization; returns its id. ConfigError if the name is taken."""
    name = name.strip()
    if not name:
        raise ConfigError("an organization needs a name")
    db = _open_database(Path(data_dir))
    try:
        org = db.create_organization(name)
        if org is None:
            raise ConfigError(f"organization {name!r} already exists")
        return org.id
    finally:
        db.close()


def create_key(data_dir: Path, role: str, org: str | None = None) -> str:
    """A new API key with ``role`` in organization ``org`` (default: the first one)."""
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    db = _open_database(Path(data_dir))
    try:
        if org is None:
            found = db.organization_by_name(DEFAULT_ORG) or next(iter(db.organizations()), None)
        else:
            found = db.organization_by_name(org)
        if found is None:
            raise ConfigError(f"no organization named {org or DEFAULT_ORG!r}")
        return db.add_api_key(found.id, role)
    finally:
        db.close()


def _existing_database(data_dir: Path) -> Database:
    """The database of a data folder that has one (migrated if older); ConfigError if not."""
    db = Database(Path(data_dir) / DB_FILE)
    if not db.exists():
        db.close()
        raise ConfigError(f"no server data in {data_dir}")
    db.initialize()
    return db


def list_keys(data_dir: Path, org: str | None = None) -> list[KeyInfo]:
    """The API keys (of organization ``org``, or all), oldest first; never the keys."""
    db = _existing_database(data_dir)
    try:
        if org is None:
            return db.keys()
        found = db.organization_by_name(org)
        if found is None:
            raise ConfigError(f"no organization named {org!r}")
        return db.keys(found.id)
    finally:
        db.close()


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_keys(keys: list[KeyInfo]) -> str:
    """``--list-keys`` output: one line per key under a header, columns aligned."""
    rows = [("ID", "ORGANIZATION", "ROLE", "PREFIX", "CREATED", "REVOKED")]
    rows += [(k.id, k.organization_name, k.role, k.key_prefix, _when(k.created_at),
              _when(k.revoked_at) if k.revoked_at is not None else "-")
             for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def revoke_key(data_dir: Path, key_id: str) -> str:
    """Revoke the key with id ``key_id``; returns what to print. A running server refuses
    the key from its next request on. ConfigError if there is no such key."""
    db = _existing_database(data_dir)
    try:
        key = db.revoke_key(key_id.strip())
    finally:
        db.close()
    if key is None:
        raise ConfigError(f"no API key with id {key_id!r} (see --list-keys)")
    assert key.revoked_at is not None
    return (f"revoked key {key.id} ({key.role}, {key.key_prefix}..., organization "
            f"{key.organization_name!r}) at {_when(key.revoked_at)}")


# ---- the lock and server.json --------------------------------------------------------------

@contextlib.contextmanager
def _server_lock(data_dir: Path) -> Iterator[IO[str]]:
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    handle = open(fd, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"a server is already running on {data_dir}") from None
        yield handle
    finally:
        handle.close()


def _lock_held(data_dir: Path) -> bool:
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _read_state(data_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stop(data_dir: Path, timeout: float = 10) -> bool:
    """SIGTERM the server running on ``data_dir`` and wait; False if none is running."""
    data_dir = Path(data_dir)
    info = _read_state(data_dir)
    pid = info.get("pid") if info else None
    if not isinstance(pid, int) or not _lock_held(data_dir):
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _lock_held(data_dir):
            return True
        time.sleep(0.05)
    raise ConfigError(f"the server (pid {pid}) did not stop within {timeout:g}s")


# ---- sockets -------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def _apart_from(host: str) -> str:
    """A storage host other than the API's: 127.0.0.2 beside IPv4 loopback (the whole
    127.0.0.0/8 is loopback on Linux), else the same host (another port only)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 4 and address.is_loopback:
        return "127.0.0.2" if host != "127.0.0.2" else "127.0.0.3"
    return host


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve()`` owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _sweep_interval() -> float:
    text = os.environ.get(SWEEP_INTERVAL_ENV)
    try:
        value = float(text) if text else SWEEP_INTERVAL_S
    except ValueError:
        raise ConfigError(f"{SWEEP_INTERVAL_ENV}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{SWEEP_INTERVAL_ENV} must be more than 0 seconds")
    return value


def _sweep(sweep_once: Callable[[], int]) -> None:
    """Up to ``SWEEP_ROUNDS`` batches of expired uploads (bounded work)."""
    from pictofs.server.ingest import SWEEP_BATCH

    for _ in range(SWEEP_ROUNDS):
        if sweep_once() < SWEEP_BATCH:
            return


async def _sweep_forever(sweep_once: Callable[[], int], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(_sweep, sweep_once)
        except Exception:  # a locked database, a full disk: try again next time
            log.exception("sweeping expired uploads failed")


async def _run(servers: list[tuple[_Server, socket.socket]],
               on_started: Callable[[], None], housekeeping: Callable[[], Any]) -> None:
    """Serve every (server, socket) pair in one loop; call ``on_started`` once all listen;
    run the ``housekeeping()`` coroutine meanwhile."""
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
    chores = asyncio.create_task(housekeeping())
    try:
        while not all(server.started for server, _ in servers):
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.01)
        else:
            on_started()
        await asyncio.gather(*tasks)
    finally:
        chores.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chores


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 8790,
          storage_port: int | None = None, profile: str = "reference",
          storage_host: str | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit code (0 on a clean stop).

    With the ``hosted`` profile, storage always has its own listener (``storage_port`` 0
    picks a free port) on its own host: ``storage_host``, by default ``127.0.0.2`` when the
    API listens on IPv4 loopback (another host to a client, as the hosted service's
    storage is), else the API's host."""
    data_dir = Path(data_dir).absolute()
    try:
        chosen = profile_named(profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if chosen.storage_apart:
        storage_port = 0 if storage_port is None else storage_port
        storage_host = storage_host or _apart_from(host)
    elif storage_host is not None:
        raise ConfigError("--storage-host goes with --profile hosted")
    interval = _sweep_interval()
    data_dir.mkdir(parents=True, exist_ok=True)
    servers: list[tuple[_Server, socket.socket]] = []
    stopping: list[int] = []

    def request_exit(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stopping.append(signum)
        for server, _ in servers:
            if server.should_exit:
                server.force_exit = True
            server.should_exit = True

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request_exit)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _server_lock(data_dir):
            _open_database(data_dir).close()
            if not _is_loopback(host):
                log.warning("listening on %s: the API is reachable from other machines", host)
            sockets = [_bind(host, port)]
            if storage_port is not None:
                sockets.append(_bind(storage_host or host, storage_port))
            try:
                _serve_on(data_dir, host, sockets, servers, stopping, interval, chosen,
                          storage_host)
            finally:
                for sock in sockets:
                    sock.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _serve_on(data_dir: Path, host: str, sockets: list[socket.socket],
              servers: list[tuple[_Server, socket.socket]], stopping: list[int],
              sweep_interval: float, profile: Profile = REFERENCE,
              storage_host: str | None = None) -> None:
    """Build the apps over the bound sockets and serve until asked to stop."""
    from pictofs.server.app import create_app

    port = sockets[0].getsockname()[1]
    storage_port = sockets[1].getsockname()[1] if len(sockets) > 1 else None
    storage_base = (f"http://{_url_host(storage_host)}:{storage_port}"
                    if storage_host is not None and storage_port is not None else None)
    app = create_app(data_dir, storage_port=storage_port, profile=profile,
                     storage_base=storage_base)
    app.state.server.blobs.clean_temporary()  # safe: this process holds the server lock
    sweep_once = app.state.server.ingest.sweep
    _sweep(sweep_once)
    apps = [app] + ([app.state.storage_app] if storage_port is not None else [])
    for application, sock in zip(apps, sockets):
        config = uvicorn.Config(application, log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=5)
        servers.append((_Server(config), sock))
    base_url = f"http://{_url_host(host)}:{port}"
    # What startup made (FastAPI, pydantic, the routes' models) lives as long as the server:
    # moved out of the collector's reach, so that a full collection, which a page of 1,000
    # images can set off, scans what the requests made and not all of that again (a page's
    # p99 at 100,000 images: 63-76 ms with it scanned, 27-39 ms without).
    gc.collect()
    gc.freeze()

    def on_started() -> None:
        _write_private(data_dir / STATE_FILE, json.dumps({
            "pid": os.getpid(), "host": host, "port": port, "storage_port": storage_port,
            "base_url": base_url, "profile": profile.name, "storage_url": storage_base})
            + "\n")
        print(f"pictofs server listening on {base_url} (data: {data_dir})", flush=True)

    try:
        if not stopping:
            asyncio.run(_run(servers, on_started,
                             lambda: _sweep_forever(sweep_once, sweep_interval)))
    finally:
        info = _read_state(data_dir)
        if info and info.get("pid") == os.getpid():
            (data_dir / STATE_FILE).unlink(missing_ok=True)
        app.state.server.db.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m pictofs.server.run DIR [PORT]``: a bare launcher (the CLI is richer)."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args:
        print("usage: python -m pictofs.server.run DATA_DIR [PORT [STORAGE_PORT]]",
              file=sys.stderr)
        return 2
    try:
        return serve(Path(args[0]), port=int(args[1]) if len(args) > 1 else 8790,
                     storage_port=int(args[2]) if len(args) > 2 else None)
    except ConfigError as exc:
        print(f"pictofs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
