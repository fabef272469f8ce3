"""What the reference server would refuse to make, written straight into its database
(``DATA/pictofs.db``) while it runs: names a hosted service might send anyway. The server
reads every answer from the database, so the next request sees the rows."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any


def server_db(server: Any) -> sqlite3.Connection:
    """The session server's database (WAL mode, so writing beside the server is safe)."""
    return sqlite3.connect(Path(server.data_dir) / "pictofs.db", timeout=15)


def rename_images(server: Any, renames: dict[str, str]) -> None:
    """Image id → the filename the service sends for it from now on."""
    with server_db(server) as db:
        for image_id, name in renames.items():
            db.execute("UPDATE images SET filename = ? WHERE id = ?", (name, image_id))


def add_folders(server: Any, dataset_id: str, paths: list[str]) -> None:
    """Folder rows with these ``full_path`` values: the folders route answers each with the
    part after its last ``/`` as its name (``"/.."`` is a folder named ``..`` in the root,
    ``""`` one named ``""``)."""
    now = time.time()
    with server_db(server) as db:
        for i, path in enumerate(paths):
            db.execute("INSERT INTO directories (id, dataset_id, full_path, created_at,"
                       " updated_at) VALUES (?, ?, ?, ?, ?)",
                       (f"{dataset_id}-added-{i}-{time.monotonic_ns()}", dataset_id, path,
                        now, now))
