"""systemd's readiness protocol (``sd_notify``) with the standard library only.

A service started with ``Type=notify`` gets ``$NOTIFY_SOCKET``: a unix datagram socket, by
path (``/run/systemd/notify``) or in the abstract namespace (written ``@name``). The mount
daemon sends ``READY=1`` once the filesystem answers and ``STOPPING=1`` when it unmounts, so
``systemctl start pictofs-mount@…`` returns exactly when the mount is usable. Outside systemd
the variable is unset and ``notify`` does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def socket_address(value: str) -> str | None:
    """The ``connect`` address for a ``$NOTIFY_SOCKET`` value; None when it names no unix
    socket this module can use (empty, relative, or another family such as ``vsock:``)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(*assignments: str) -> bool:
    """Send ``VAR=value`` lines (``"READY=1"``, ``"STATUS=…"``) to the service manager.

    Returns True when a message was sent, False when not running under a manager that asked
    for notifications or when sending failed (logged at DEBUG: readiness is a courtesy, never
    a reason for the mount to fail).
    """
    value = os.environ.get(ENV, "")
    address = socket_address(value)
    if address is None:
        if value:
            log.debug("%s=%r is not a unix socket address; not notifying", ENV, value)
        return False
    message = "\n".join(assignments).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.debug("notifying the service manager failed: %s", exc)
        return False
    return True
