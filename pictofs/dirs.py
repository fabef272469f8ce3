"""Where pictofs keeps things (filesystem spec §8), following the XDG base directories.

- cache: ``$XDG_CACHE_HOME/pictofs`` (disposable)
- state: ``$XDG_STATE_HOME/pictofs`` (journal, staging, mtimes, mirror databases; not disposable)
- data:  ``$XDG_DATA_HOME/pictofs/server`` (the embedded server's data)
- runtime: ``$XDG_RUNTIME_DIR/pictofs`` (control sockets), else the state dir

Folders that may hold keys are created 0700.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pictofs.config import home_dir


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return home_dir() / fallback


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "pictofs"


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state") / "pictofs"


def server_data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "pictofs" / "server"


def runtime_dir() -> Path:
    value = os.environ.get("XDG_RUNTIME_DIR")
    if value and os.path.isabs(value):
        return Path(value) / "pictofs"
    return state_dir() / "run"


def private_dirs(base: Path, path: Path) -> Path:
    """Create every missing folder from ``base`` (which exists) down to ``path`` (below it),
    each 0700 as it is made; returns ``path``."""
    folder = base
    for part in path.relative_to(base).parts:
        folder = folder / part
        folder.mkdir(exist_ok=True, mode=0o700)
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents, with the default mode) and make it 0700; returns it.
    A new folder is created 0700, so it is never readable by others, even briefly."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def replace_private(path: Path, text: str, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` at once: written to a new 0600 file beside it (fsync'd
    when ``durable``), then renamed over it, so a reader finds the old text or the new one,
    never part of it. OSError as the filesystem says."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
