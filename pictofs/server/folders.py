"""Virtual folders (the wire's "directories"): create, list, rename, delete.

A folder exists if it was created or if any non-archived image lives in it or below it. Every
verb that puts an image somewhere (register, move, restore, rename) calls ``ensure`` in the
same transaction, so both kinds of folder have a row (and a stable id). Rename moves the
folder, its subfolders and its images' paths (archived ones too) in one transaction; delete
takes only an empty folder.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from pictofs.model import Folder, format_timestamp
from pictofs.server import rules
from pictofs.server.db import Database, new_id
from pictofs.server.failures import ApiFailure, bad_request, conflict, not_found


def _below(column: str) -> str:
    """SQL condition: ``column`` is strictly below the folder given as (length+1, prefix/)."""
    return f"substr({column}, 1, ?) = ?"


class Folders:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- helpers used inside other transactions ---------------------------------------

    def ensure(self, conn: sqlite3.Connection, dataset_id: str, directory: str) -> None:
        """Create rows for ``directory`` and every ancestor that lacks one."""
        now = time.time()
        for path in rules.ancestors(directory):
            conn.execute(
                "INSERT OR IGNORE INTO directories (id, dataset_id, full_path, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?)", (new_id(), dataset_id, path, now, now))

    def _exists(self, conn: sqlite3.Connection, dataset_id: str, directory: str) -> bool:
        if conn.execute("SELECT 1 FROM directories WHERE dataset_id = ? AND full_path = ?",
                        (dataset_id, directory)).fetchone():
            return True
        prefix = directory + "/"
        return conn.execute(
            "SELECT 1 FROM images WHERE dataset_id = ? AND is_archived = 0 AND"
            f" (directory_path = ? OR {_below('directory_path')}) LIMIT 1",
            (dataset_id, directory, len(prefix), prefix)).fetchone() is not None

    def _render(self, conn: sqlite3.Connection, dataset_id: str,
                rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
        counts = {r[0]: r[1] for r in conn.execute(
            "SELECT directory_path, COUNT(*) FROM images WHERE dataset_id = ? AND is_archived = 0"
            " GROUP BY directory_path", (dataset_id,))}
        wanted_parents = {rules.parent(r["full_path"]) for r in rows} - {rules.ROOT}
        parent_ids: dict[str, str] = {}
        for path in wanted_parents:
            found = conn.execute(
                "SELECT id FROM directories WHERE dataset_id = ? AND full_path = ?",
                (dataset_id, path)).fetchone()
            if found:
                parent_ids[path] = found[0]
        out = []
        for row in rows:
            path = row["full_path"]
            nested = sum(n for p, n in counts.items() if rules.is_within(p, path))
            folder = Folder(
                id=row["id"],
                dataset_id=dataset_id,
                name=rules.basename(path),
                full_path=path,
                parent_directory_id=parent_ids.get(rules.parent(path)),
                image_count=counts.get(path, 0),
                nested_image_count=nested,
                created_at=format_timestamp(row["created_at"]),
                updated_at=format_timestamp(row["updated_at"]),
            )
            out.append(folder.to_json())
        return out

    def _one(self, conn: sqlite3.Connection, dataset_id: str, directory: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM directories WHERE dataset_id = ? AND full_path = ?",
                           (dataset_id, directory)).fetchone()
        if row is None:
            raise not_found(f"no folder {directory!r}", directory_path=directory)
        return self._render(conn, dataset_id, [row])[0]

    def _existing(self, conn: sqlite3.Connection, dataset_id: str, dir_path: str) -> str:
        """Normalize a route's folder path and check it exists (404 otherwise)."""
        try:
            directory = rules.normalize_directory(dir_path)
        except ApiFailure:
            raise not_found(f"no folder {dir_path!r}") from None
        if directory == rules.ROOT:
            raise bad_request("the root folder cannot be renamed or deleted")
        if not self._exists(conn, dataset_id, directory):
            raise not_found(f"no folder {directory!r}", directory_path=directory)
        self.ensure(conn, dataset_id, directory)
        return directory

    # ---- verbs -------------------------------------------------------------------------

    def list(self, dataset_id: str, parent_path: str | None) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT * FROM directories WHERE dataset_id = ? ORDER BY full_path",
                                (dataset_id,)).fetchall()
            if parent_path is not None:
                parent = rules.normalize_directory(parent_path)
                rows = [r for r in rows if rules.parent(r["full_path"]) == parent]
            return self._render(conn, dataset_id, rows)

    def create(self, dataset_id: str, directory_path: str) -> tuple[dict[str, Any], bool]:
        """Create the folder and its parents; returns (folder, created)."""
        directory = rules.normalize_directory(directory_path)
        if directory == rules.ROOT:
            raise bad_request("the root folder always exists", directory_path=directory_path)
        with self.db.write() as conn:
            existed = conn.execute(
                "SELECT 1 FROM directories WHERE dataset_id = ? AND full_path = ?",
                (dataset_id, directory)).fetchone() is not None
            self.ensure(conn, dataset_id, directory)
            return self._one(conn, dataset_id, directory), not existed

    def rename(self, dataset_id: str, dir_path: str, new_name: str) -> dict[str, Any]:
        new_name = rules.check_segment(new_name, "folder name")
        with self.db.write() as conn:
            old = self._existing(conn, dataset_id, dir_path)
            new = rules.join(rules.parent(old), new_name)
            if new == old:
                return self._one(conn, dataset_id, old)
            if self._exists(conn, dataset_id, new):
                raise conflict(f"a folder named {new_name!r} already exists in "
                               f"{rules.parent(old)!r}", directory_path=new)
            prefix = old + "/"
            now = time.time()
            for table, column, extra in (("directories", "full_path", ", updated_at = ?"),
                                         ("images", "directory_path", "")):
                params: list[Any] = [new, len(old) + 1]
                if extra:
                    params.append(now)
                conn.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?){extra}"
                    f" WHERE dataset_id = ? AND ({column} = ? OR {_below(column)})",
                    [*params, dataset_id, old, len(prefix), prefix])
            return self._one(conn, dataset_id, new)

    def delete(self, dataset_id: str, dir_path: str) -> str:
        """Delete an empty folder (no non-archived images, no subfolders); returns its path."""
        with self.db.write() as conn:
            directory = self._existing(conn, dataset_id, dir_path)
            prefix = directory + "/"
            if conn.execute("SELECT 1 FROM images WHERE dataset_id = ? AND directory_path = ?"
                            " AND is_archived = 0 LIMIT 1", (dataset_id, directory)).fetchone():
                raise bad_request(f"folder {directory!r} is not empty: it holds images",
                                  code="not_empty", directory_path=directory)
            below = (dataset_id, len(prefix), prefix)
            subfolder = conn.execute(
                f"SELECT 1 FROM directories WHERE dataset_id = ? AND {_below('full_path')} LIMIT 1",
                below).fetchone()
            nested_image = conn.execute(
                "SELECT 1 FROM images WHERE dataset_id = ? AND is_archived = 0 AND"
                f" {_below('directory_path')} LIMIT 1", below).fetchone()
            if subfolder or nested_image:
                raise bad_request(f"folder {directory!r} is not empty: it holds folders",
                                  code="not_empty", directory_path=directory)
            conn.execute("DELETE FROM directories WHERE dataset_id = ? AND full_path = ?",
                         (dataset_id, directory))
            return directory
