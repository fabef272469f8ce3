"""Helpers of the security tests: where a key may hide in text and process tables, file
modes, loopback listeners, decompression-bomb headers, and an unprivileged user to act as.

- ``assert_no_key(text, key)``: neither the key, nor its secret part, nor a 12-character
  piece of it, nor the redaction mask (which would mean the code *tried* to log a key).
- ``process_args(pid)``: ``/proc/PID/cmdline`` and the ``ps -eo args`` line of a process.
- ``mode(path)``: permission bits.
- ``listeners(port)``: the local addresses of the TCP sockets listening on ``port``
  (``/proc/net/tcp`` and ``tcp6``).
- ``png_bomb(w, h)``, ``bmp_bomb(w, h)``, ``gif_bomb(w, h)``: headers claiming a huge image
  with almost no pixel data.
- ``unprivileged_user()``: ``nobody`` when it exists, else a user made with ``useradd -M``
  and removed afterwards; ``as_user(user, *argv, env=...)`` runs a command as that user with
  ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

KEY_SCHEME = "pk_live_"
MASK = "pk_live_***"  # what logsetup.KeyRedactingFilter writes over a key


def assert_no_key(text: str, key: str, where: str = "output") -> None:
    secret = key[len(KEY_SCHEME):] if key.startswith(KEY_SCHEME) else key
    assert key not in text, f"the API key is in the {where}"
    assert secret not in text, f"the API key's secret part is in the {where}"
    for start in range(0, len(secret) - 12, 6):
        assert secret[start:start + 12] not in text, f"a piece of the API key is in the {where}"
    assert MASK not in text, f"the {where} holds a masked key: the code tried to log it"


def process_args(pid: int) -> tuple[str, str]:
    """(``/proc/PID/cmdline`` with NULs as spaces, the ``ps -eo pid,args`` line of PID)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    ps = subprocess.run(["ps", "-eo", "pid,args", "--no-headers"], capture_output=True,
                        text=True, check=True).stdout
    line = next((ln for ln in ps.splitlines() if ln.split(None, 1)[0] == str(pid)), "")
    assert line, f"pid {pid} is not in ps"
    return cmdline, line


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _hex_address(text: str, v6: bool) -> str:
    raw = bytes.fromhex(text)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listeners(port: int) -> list[str]:
    """Local addresses of the sockets in LISTEN state on ``port``."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:
                found.append(_hex_address(address, v6))
    return found


def outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# ---------------------------------------------------------------------- bombs

def png_bomb(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` RGB pixels with a few rows of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)


def bmp_bomb(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming ``width`` x ``height`` with 64 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\0" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) \
        + info + pixels


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame claim ``width`` x ``height``."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return head + frame + b"\x02\x02\x44\x01\x00;"


# ---------------------------------------------------------------------- another user

@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@contextlib.contextmanager
def unprivileged_user() -> Iterator[User]:
    """``nobody`` if the system has it; otherwise a fresh system user, deleted afterwards."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        entry = None
    if entry is not None:
        yield User(entry.pw_name, entry.pw_uid, entry.pw_gid)
        return
    name = f"pfs{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "-M", "-r", "-s", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        entry = pwd.getpwnam(name)
        yield User(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def as_user(user: User, *argv: str, env: dict[str, str] | None = None, timeout: float = 120,
            input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as ``user`` (``runuser -u USER --``), with exactly ``env`` when given."""
    command = ["runuser", "-u", user.name, "--"]
    if env is not None:
        command += ["env", "-i", *[f"{k}={v}" for k, v in sorted(env.items())]]
    return subprocess.run([*command, *argv], capture_output=True, timeout=timeout,
                          input=input_bytes, stdin=None if input_bytes else subprocess.DEVNULL)
