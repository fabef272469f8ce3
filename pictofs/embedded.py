"""The embedded default: with no API key configured anywhere, use a local reference server.

One server per user runs detached with its data in ``$XDG_DATA_HOME/pictofs/server``;
``server.json`` (written by the server once it listens) and a lock file in that folder stop two
commands from starting two servers. Every command that uses it prints one line saying so
(filesystem spec §8).

The server recorded in ``server.json`` must prove it is the one over that folder before it
gets the folder's owner key: ``/healthz`` is asked with a random challenge and must answer
the HMAC of it under ``server.secret``, a 0600 file only this user can read. A process that
merely holds the recorded pid or port (another user's, after a crash) never receives a key.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import logging
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pictofs import dirs
from pictofs.core.cache.pins import pid_alive
from pictofs.config import ENV_BASE_URL, ENV_KEY, Connection, resolve_connection
from pictofs.errors import ConfigError
from pictofs.model import CHALLENGE_HEADER, PROOF_FILE, PROOF_HEADER, server_proof

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0


@dataclass(frozen=True)
class LocalServer:
    base_url: str
    key: str
    data_dir: Path
    pid: int


def _proves_itself(base_url: str, data_dir: Path) -> bool:
    """The server at ``base_url`` answers ``/healthz`` with the proof only the server over
    ``data_dir`` can give (no key is sent)."""
    try:
        secret = (data_dir / PROOF_FILE).read_bytes().strip()
    except OSError:
        return False
    challenge = secrets.token_hex(16)
    request = urllib.request.Request(base_url + "/healthz",
                                     headers={CHALLENGE_HEADER: challenge})
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            proof = answer.headers.get(PROOF_HEADER, "")
            ok = answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
    if ok and not hmac.compare_digest(proof, server_proof(secret, challenge)):
        log.warning("%s answers but is not the local server of %s (no proof); not using it",
                    base_url, data_dir)
        return False
    return ok


def running_server(data_dir: Path) -> LocalServer | None:
    """The server recorded in ``data_dir/server.json`` if it is alive and answers."""
    try:
        info = json.loads((data_dir / "server.json").read_text())
        pid, base_url = int(info["pid"]), str(info["base_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(pid) or not _proves_itself(base_url, data_dir):
        return None
    try:
        key = (data_dir / "owner.key").read_text().strip()
    except OSError:
        return None
    return LocalServer(base_url, key, data_dir, pid)


def ensure_local_server(data_dir: Path | None = None) -> LocalServer:
    """Reuse the user's local server or start one detached; wait until it answers."""
    data_dir = dirs.private_dir(data_dir or dirs.server_data_dir())
    with open(data_dir / "launch.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = running_server(data_dir)
        if found:
            return found
        (data_dir / "server.json").unlink(missing_ok=True)
        with open(data_dir / "server.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "pictofs", "serve", "--data", str(data_dir),
                 "--port", "0"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = running_server(data_dir)
            if found:
                return found
            if process.poll() is not None:
                raise ConfigError(
                    f"the local server failed to start (exit {process.returncode}); "
                    f"see {data_dir / 'server.log'}"
                )
            time.sleep(0.05)
        process.terminate()
        raise ConfigError(f"the local server did not start within {START_TIMEOUT:.0f}s; "
                          f"see {data_dir / 'server.log'}")


def connect(base_url: str | None = None, key_file: str | None = None,
            announce: TextIO | None = sys.stderr) -> Connection:
    """Resolve the connection; with no key anywhere, fall back to the local server and say
    so in one line on ``announce``."""
    conn = resolve_connection(base_url=base_url, key_file=key_file)
    if conn.has_key:
        return conn
    explicit_url = base_url or os.environ.get(ENV_BASE_URL)
    if explicit_url:
        raise ConfigError(f"no API key configured for {explicit_url}: set {ENV_KEY} or "
                          f"use --key-file")
    local = ensure_local_server()
    if announce is not None:
        print(f"no account configured: using the local server at {local.base_url} "
              f"(data: {local.data_dir})", file=announce)
    return Connection(base_url=local.base_url, api_key=local.key, key_source="local server")
