"""The mount's control channel: a 0600 unix socket that ``pictofs status``, ``refresh``,
``sync`` and ``umount`` talk to (filesystem §8).

One request per connection: a JSON object on one line (``{"cmd": "status"}``); one JSON answer
on one line (``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). The socket lives in
``$XDG_RUNTIME_DIR/pictofs/`` (0700), named by a digest of the mountpoint's real path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from pictofs import dirs
from pictofs.errors import ConfigError, PictofsError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
MAX_ADDRESS = 107  # bytes of a unix socket's path (sun_path, 108 with its NUL)


def socket_path(mountpoint: str | os.PathLike[str], folder: Path | None = None) -> Path:
    """Where the mount at ``mountpoint`` listens (in ``folder``, default the runtime dir)."""
    real = os.path.realpath(mountpoint)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return (folder or dirs.runtime_dir()) / f"mount-{digest}.sock"


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """The address to bind or connect ``path`` by: itself, or, where it is longer than a
    unix socket's path may be (a runtime folder deep in the tree), the same file reached
    through a descriptor of its folder (``/proc/self/fd/N/name``), open while in use."""
    if len(os.fsencode(path)) <= MAX_ADDRESS:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def _find_socket(mountpoint: str) -> Path:
    """The runtime dir first, then the state dir's fallback: a mount started by a system
    unit or mount(8) has no ``XDG_RUNTIME_DIR``, a login shell asking about it does."""
    primary = socket_path(mountpoint)
    fallback = socket_path(mountpoint, dirs.state_dir() / "run")
    return primary if primary.exists() or not fallback.exists() else fallback


class ControlServer:
    """Serves control requests in a thread; ``handlers`` maps a command to a function."""

    def __init__(self, mountpoint: str, handlers: dict[str, Handler]) -> None:
        self.path = socket_path(mountpoint)
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        dirs.private_dir(self.path.parent)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with _address(self.path) as address:
                sock.bind(address)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="pictofs-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed at unmount
            threading.Thread(target=self._answer, args=(conn,), daemon=True,
                             name="pictofs-control-request").start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = json.loads(_read_line(conn))
                handler = self.handlers.get(str(request.get("cmd")))
                if handler is None:
                    reply: dict[str, Any] = {"ok": False,
                                             "error": f"unknown command {request.get('cmd')!r}"}
                else:
                    reply = {"ok": True, **handler(request)}
            except PictofsError as exc:
                reply = {"ok": False, "error": str(exc)}
            except (ValueError, OSError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except Exception:
                log.exception("control request failed")
                reply = {"ok": False, "error": "internal error (see the mount's log)"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    return data


def no_socket_reason(mountpoint: str) -> str:
    """Why no mount answers for ``mountpoint``: not a mount, not a pictofs mount, another
    user's pictofs mount, or this user's without a control socket here."""
    from pictofs.fs.fuse_session import whose_mount

    reason = whose_mount(mountpoint)
    if reason is not None:
        return reason
    return (f"{mountpoint} is a pictofs mount, but no control socket answers for it "
            f"in {dirs.runtime_dir()} (its daemon has exited, or it runs with another "
            "XDG_RUNTIME_DIR)")


def request(mountpoint: str, cmd: str, socket_timeout: float | None = 30, **fields: Any
            ) -> dict[str, Any]:
    """Send one command (with ``fields``) to the mount at ``mountpoint`` and wait up to
    ``socket_timeout`` for the answer; ConfigError if no mount listens there."""
    path = _find_socket(mountpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(socket_timeout)
    try:
        with _address(path) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError):
        sock.close()
        raise ConfigError(no_socket_reason(mountpoint)) from None
    with sock:
        try:
            sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            reply = json.loads(_read_line(sock) or b"{}")
        except TimeoutError:
            raise ConfigError(f"{mountpoint}: the mount did not answer {cmd!r} within "
                              f"{socket_timeout:.0f} s (busy or hung: see its log)") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{mountpoint}: the mount's answer to {cmd!r} was cut short "
                              f"({exc})") from None
    if not reply.get("ok"):
        raise ConfigError(f"{mountpoint}: {reply.get('error', 'no answer')}")
    return reply
