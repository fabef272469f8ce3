"""Datasets and the read side of images: lookups, listings, and rendering to wire objects.

Every lookup is scoped to the caller's organization: a dataset or image of another
organization is answered exactly like one that does not exist (404). Wire objects are built
with ``pictofs.model`` (``Image``, ``Dataset``) and their ``to_json``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pictofs.model import Dataset, Image, format_timestamp
from pictofs.server import rules
from pictofs.server.db import Database, new_id
from pictofs.server.failures import ApiFailure, conflict, not_found

API = "/api/v1/developer"
_PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
            "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff")
_IMAGE_COLUMNS = ("id, dataset_id, directory_path, filename, status, split, annotation_count,"
                  " min_confidence, file_size, width, height, content_type, tags, is_archived,"
                  " blob, created_at, seq")


@dataclass(frozen=True)
class ImageFilter:
    directory_path: str | None = None
    filename: str | None = None
    include_archived: bool = False
    status: str | None = None
    split: str | None = None
    min_confidence_lt: float | None = None


def normalize_classes(classes: list[Any] | None) -> list[dict[str, Any]]:
    """Class definitions as objects ``{"name", "type"?, "color"}`` (strings are accepted)."""
    out: list[dict[str, Any]] = []
    for index, item in enumerate(classes or []):
        entry = {"name": item} if isinstance(item, str) else dict(item)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiFailure(400, "validation_error", "every class needs a non-empty name")
        entry.setdefault("color", _PALETTE[index % len(_PALETTE)])
        out.append(entry)
    return out


def image_model(row: sqlite3.Row, base_url: str) -> Image:
    return Image.from_json(image_json(row, base_url))


def image_json(row: sqlite3.Row, base_url: str) -> dict[str, Any]:
    """The wire Image of a row (protocol §3), built straight as a dict: a list page renders
    a thousand of them, and going through the dataclass (``asdict``) cost 60 µs each."""
    path = rules.join(row["directory_path"], row["filename"]).lstrip("/")
    return {
        "id": row["id"],
        "dataset_id": row["dataset_id"],
        "filename": row["filename"],
        "directory_path": row["directory_path"],
        "status": row["status"],
        "split": row["split"],
        "annotation_count": row["annotation_count"],
        "min_confidence": row["min_confidence"],
        "file_size": row["file_size"],
        "width": row["width"],
        "height": row["height"],
        "content_type": row["content_type"],
        "tags": [] if row["tags"] == "[]" else json.loads(row["tags"]),  # most have none
        "is_archived": bool(row["is_archived"]),
        "image_url": f"{base_url}{API}/images/{row['id']}",
        "thumbnail_url": None,
        "annotation_url": f"{base_url}{API}/annotations/{row['dataset_id']}/"
                          f"{quote(path, safe='/')}",
        "created_at": format_timestamp(row["created_at"]),
    }


class Catalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        # list_images's counts, per connection (``_count``): id → (the connection, the
        # database's state they were counted in, (condition, params) → count)
        self._counts: dict[int, tuple[sqlite3.Connection, tuple[int, int],
                                      dict[tuple[str, tuple[Any, ...]], int]]] = {}

    # ---- datasets ----------------------------------------------------------------------

    def find_dataset(self, organization_id: str, ref: str,
                     conn: sqlite3.Connection | None = None) -> sqlite3.Row:
        """A dataset by UUID or by name within the organization; 404 otherwise."""
        c = conn or self.db.connection()
        row: sqlite3.Row | None = None
        if rules.is_uuid(ref):
            row = c.execute("SELECT * FROM datasets WHERE id = ? AND organization_id = ?",
                            (ref.lower(), organization_id)).fetchone()
        if row is None:
            row = c.execute("SELECT * FROM datasets WHERE name = ? AND organization_id = ?",
                            (ref, organization_id)).fetchone()
        if row is None:
            raise not_found(f"no dataset {ref!r}", dataset=ref)
        return row

    def create_dataset(self, organization_id: str, name: str, description: str | None,
                       annotation_types: list[str] | None, classes: list[Any] | None
                       ) -> sqlite3.Row:
        name = rules.check_dataset_name(name)
        normalized = normalize_classes(classes)
        now = time.time()
        dataset_id = new_id()
        try:
            with self.db.write() as tx:
                tx.execute(
                    "INSERT INTO datasets (id, organization_id, name, description,"
                    " annotation_types, classes, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (dataset_id, organization_id, name, description,
                     json.dumps(list(annotation_types) if annotation_types is not None
                                else ["bbox"]),
                     json.dumps(normalized), now, now))
        except sqlite3.IntegrityError:
            raise conflict(f"a dataset named {name!r} already exists", name=name) from None
        return self.find_dataset(organization_id, dataset_id)

    def list_datasets(self, organization_id: str, limit: int, offset: int
                      ) -> tuple[list[sqlite3.Row], int]:
        with self.db.read() as conn:
            total = conn.execute("SELECT COUNT(*) FROM datasets WHERE organization_id = ?",
                                 (organization_id,)).fetchone()[0]
            rows = conn.execute(
                "SELECT * FROM datasets WHERE organization_id = ? ORDER BY created_at, id"
                " LIMIT ? OFFSET ?", (organization_id, limit, offset)).fetchall()
        return rows, total

    def dataset_json(self, rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
        """Render datasets with their counters (one aggregate query for the whole page)."""
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        marks = ",".join("?" * len(ids))
        stats = {
            r["dataset_id"]: r for r in self.db.connection().execute(
                "SELECT dataset_id,"
                " SUM(CASE WHEN is_archived = 0 THEN 1 ELSE 0 END) AS live,"
                " SUM(CASE WHEN is_archived = 1 THEN 1 ELSE 0 END) AS archived,"
                " SUM(CASE WHEN is_archived = 0 THEN file_size ELSE 0 END) AS size,"
                " SUM(CASE WHEN is_archived = 0 AND status = 'complete' THEN 1 ELSE 0 END)"
                " AS complete"
                f" FROM images WHERE dataset_id IN ({marks}) GROUP BY dataset_id", ids)
        }
        out = []
        for row in rows:
            stat = stats.get(row["id"])
            dataset = Dataset(
                id=row["id"],
                name=row["name"],
                organization_id=row["organization_id"],
                description=row["description"],
                annotation_types=tuple(json.loads(row["annotation_types"])),
                image_count=int(stat["live"] or 0) if stat else 0,
                archived_image_count=int(stat["archived"] or 0) if stat else 0,
                total_size=int(stat["size"] or 0) if stat else 0,
                is_archived=False,
                created_at=format_timestamp(row["created_at"]),
                updated_at=format_timestamp(row["updated_at"]),
            )
            data = dataset.to_json()
            # Classes travel as objects (what the official SDK validates), not bare names.
            data["classes"] = json.loads(row["classes"])
            data["completed_image_count"] = int(stat["complete"] or 0) if stat else 0
            out.append(data)
        return out

    # ---- images ------------------------------------------------------------------------

    def image_by_id(self, organization_id: str, image_id: str,
                    conn: sqlite3.Connection | None = None) -> sqlite3.Row:
        if not rules.is_uuid(image_id):
            raise not_found(f"no image {image_id!r}")
        c = conn or self.db.connection()
        row: sqlite3.Row | None = c.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = ? AND dataset_id IN"
            " (SELECT id FROM datasets WHERE organization_id = ?)",
            (image_id.lower(), organization_id)).fetchone()
        if row is None:
            raise not_found(f"no image {image_id!r}", image_id=image_id)
        return row

    def image_row(self, conn: sqlite3.Connection, image_id: str) -> sqlite3.Row:
        """An image by id with no organization check (for ids the server just made)."""
        row: sqlite3.Row | None = conn.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise not_found(f"no image {image_id!r}")
        return row

    def image_by_path(self, dataset_id: str, img_path: str,
                      conn: sqlite3.Connection | None = None) -> sqlite3.Row:
        """The non-archived image at ``cars/red/x.jpg`` (or ``x.jpg``) in the dataset."""
        directory, filename = rules.split_image_path(img_path)
        c = conn or self.db.connection()
        row: sqlite3.Row | None = c.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE dataset_id = ? AND directory_path = ?"
            " AND filename = ? AND is_archived = 0", (dataset_id, directory, filename)).fetchone()
        if row is None:
            raise not_found(f"no image at {rules.join(directory, filename)!r}",
                            path=rules.join(directory, filename))
        return row

    def images_by_ids(self, conn: sqlite3.Connection, dataset_id: str, image_ids: list[str]
                      ) -> dict[str, sqlite3.Row]:
        """The dataset's images among ``image_ids`` (others are simply absent)."""
        wanted = [i.lower() for i in image_ids if isinstance(i, str) and rules.is_uuid(i)]
        found: dict[str, sqlite3.Row] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                    f"SELECT {_IMAGE_COLUMNS} FROM images WHERE dataset_id = ? AND id IN ({marks})",
                    [dataset_id, *chunk]):
                found[row["id"]] = row
        return found

    def list_images(self, dataset_id: str, where: ImageFilter, limit: int, offset: int
                    ) -> tuple[list[sqlite3.Row], int]:
        """A page of images, newest first."""
        clauses = ["dataset_id = ?"]
        params: list[Any] = [dataset_id]
        if not where.include_archived:
            clauses.append("is_archived = 0")
        if where.directory_path is not None:
            clauses.append("directory_path = ?")
            params.append(rules.normalize_directory(where.directory_path))
        if where.filename is not None:
            clauses.append("filename = ?")
            params.append(where.filename)
        if where.status is not None:
            clauses.append("status = ?")
            params.append(where.status)
        if where.split is not None:
            clauses.append("split = ?")
            params.append(where.split)
        if where.min_confidence_lt is not None:
            clauses.append("min_confidence IS NOT NULL AND min_confidence < ?")
            params.append(where.min_confidence_lt)
        condition = " AND ".join(clauses)
        with self.db.read() as conn:
            total = self._count(conn, condition, params)
            rows = conn.execute(
                f"SELECT {_IMAGE_COLUMNS} FROM images WHERE {condition}"
                " ORDER BY seq DESC LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
        return rows, total

    def _count(self, conn: sqlite3.Connection, condition: str, params: list[Any]) -> int:
        """``COUNT(*)`` of the images matching, remembered per connection until anything
        changes the database: a page of a folder of 100,000 counted them all again (a third
        of its answer time), and a lister asks for 100 pages of it. A change is seen by
        ``PRAGMA data_version`` (a commit by any other connection, of any process) and by
        this connection's ``total_changes`` (its own), read in the caller's transaction.
        Each connection is one thread's (``Database.connection``), so is its entry."""
        stamp = (conn.execute("PRAGMA data_version").fetchone()[0], conn.total_changes)
        key = (condition, tuple(params))
        kept = self._counts.get(id(conn))
        if kept is not None and kept[0] is conn and kept[1] == stamp:
            cache = kept[2]
            if key in cache:
                return cache[key]
        else:
            cache = {}
        total = int(conn.execute(f"SELECT COUNT(*) FROM images WHERE {condition}",
                                 params).fetchone()[0])
        if len(cache) >= 256:  # many filters asked: start over rather than grow
            cache = {}
        cache[key] = total
        self._counts[id(conn)] = (conn, stamp, cache)
        return total

    def name_taken(self, conn: sqlite3.Connection, dataset_id: str, directory: str,
                   filename: str) -> bool:
        """True if a non-archived image already has this name in this folder."""
        return conn.execute(
            "SELECT 1 FROM images WHERE dataset_id = ? AND directory_path = ? AND filename = ?"
            " AND is_archived = 0", (dataset_id, directory, filename)).fetchone() is not None

    def blob_in_use(self, conn: sqlite3.Connection, digest: str) -> bool:
        return (conn.execute("SELECT 1 FROM images WHERE blob = ? LIMIT 1", (digest,)).fetchone()
                is not None
                or conn.execute("SELECT 1 FROM uploads WHERE blob = ? LIMIT 1",
                                (digest,)).fetchone() is not None)
