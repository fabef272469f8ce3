"""Deterministic crash points for tests: ``PICTOFS_FAULT=crash:after_put``.

Code calls ``fault_point("after_put")`` at a step boundary. When the environment variable
``PICTOFS_FAULT`` names that point, the process kills itself with SIGKILL right there, as
``kill -9`` would, so tests hit an exact step instead of racing a timed kill.

Syntax: comma-separated rules ``crash:NAME`` (first time the point is reached) or
``crash:NAME:N`` (the N-th time). A batch of uploads reaches a point together:
``fault_point(NAME, count=K)`` counts K arrivals at once, so ``crash:after_put:3`` crashes
once the third upload has been sent, whether uploads go one by one or in batches. Unset,
``fault_point`` costs one dict lookup.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()  # guards _hits
_hits: dict[str, int] = {}


def _rules() -> dict[str, int]:
    rules: dict[str, int] = {}
    for item in os.environ.get("PICTOFS_FAULT", "").split(","):
        parts = item.strip().split(":")
        if len(parts) >= 2 and parts[0] == "crash" and parts[1]:
            rules[parts[1]] = int(parts[2]) if len(parts) > 2 and parts[2] else 1
    return rules


def fault_point(name: str, count: int = 1) -> None:
    """Crash here (SIGKILL) if ``PICTOFS_FAULT`` asks for it: ``count`` arrivals at once
    (the members of a batch)."""
    if "PICTOFS_FAULT" not in os.environ:
        return
    target = _rules().get(name)
    if target is None:
        return
    with _lock:
        before = _hits.get(name, 0)
        _hits[name] = hit = before + count
    if before < target <= hit:
        log.warning("fault injection: crashing at %s (hit %d)", name, hit)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
