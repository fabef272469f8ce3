"""Changes to existing images: archive, restore, permanent delete, move, status, split, tags,
annotations.

Batch verbs take ids and report per-id failures instead of failing the call (an id that is not
in the dataset, or of another organization, is "not found"). Permanent deletes remove the row,
then the blob if no other image or pending upload shares those bytes. A move never touches
bytes; a name clash in the target folder is resolved by renaming ``x.jpg`` → ``x-1.jpg``; the
target folder is made only when the move takes at least one image.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from pictofs.model import IMAGE_STATUSES, SPLITS
from pictofs.server import rules
from pictofs.server.blobs import BlobStore
from pictofs.server.catalog import Catalog
from pictofs.server.db import Database
from pictofs.server.failures import bad_request
from pictofs.server.folders import Folders


@dataclass
class BatchOutcome:
    operation: str | None = None
    processed: int = 0
    renamed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    affected: set[str] = field(default_factory=set)

    def fail(self, image_id: str, reason: str) -> None:
        self.failed.append({"id": image_id, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        return {"success": not self.failed, "processed": self.processed, "failed": self.failed,
                "renamed": self.renamed, "operation": self.operation,
                "affected_directories": sorted(self.affected)}


def _unique(ids: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for image_id in ids:
        key = image_id.lower()
        if key not in seen:
            seen.add(key)
            out.append(image_id)
    return out


def _min_confidence(annotations: list[dict[str, Any]]) -> float | None:
    values = [a["confidence"] for a in annotations
              if isinstance(a.get("confidence"), (int, float)) and not isinstance(
                  a.get("confidence"), bool)]
    return float(min(values)) if values else None


class Edits:
    def __init__(self, db: Database, catalog: Catalog, folders: Folders,
                 blobs: BlobStore) -> None:
        self.db = db
        self.catalog = catalog
        self.folders = folders
        self.blobs = blobs

    # ---- archive and delete ------------------------------------------------------------

    def _purge(self, conn: sqlite3.Connection, rows: list[sqlite3.Row]) -> None:
        """Delete rows and any blob left unreferenced (caller holds ``blobs.lock``)."""
        for row in rows:
            conn.execute("DELETE FROM images WHERE id = ?", (row["id"],))
        for digest in {row["blob"] for row in rows}:
            if not self.catalog.blob_in_use(conn, digest):
                self.blobs.remove(digest)

    def delete_path(self, dataset_id: str, img_path: str, permanent: bool) -> str:
        """Archive (or permanently delete) the image at a path; returns the message."""
        with self.blobs.lock, self.db.write() as conn:
            row = self.catalog.image_by_path(dataset_id, img_path, conn)
            if permanent:
                self._purge(conn, [row])
                return "Image permanently deleted"
            conn.execute("UPDATE images SET is_archived = 1 WHERE id = ?", (row["id"],))
            return "Image archived"

    def delete_ids(self, dataset_id: str, image_ids: list[str], permanent: bool) -> BatchOutcome:
        outcome = BatchOutcome(operation="deleted" if permanent else "archived")
        with self.blobs.lock, self.db.write() as conn:
            found = self.catalog.images_by_ids(conn, dataset_id, image_ids)
            doomed = []
            for image_id in _unique(image_ids):
                row = found.get(image_id.lower())
                if row is None:
                    outcome.fail(image_id, "not found in this dataset")
                    continue
                outcome.processed += 1
                outcome.affected.add(row["directory_path"])
                if permanent:
                    doomed.append(row)
                else:
                    conn.execute("UPDATE images SET is_archived = 1 WHERE id = ?", (row["id"],))
            self._purge(conn, doomed)
        return outcome

    # ---- restore and status ------------------------------------------------------------

    def update_ids(self, dataset_id: str, image_ids: list[str], is_archived: bool | None,
                   status: str | None) -> BatchOutcome:
        if is_archived is None and status is None:
            raise bad_request("updates must set is_archived or status")
        if status is not None and status not in IMAGE_STATUSES:
            raise bad_request(f"status must be one of {', '.join(IMAGE_STATUSES)}",
                              code="validation_error")
        outcome = BatchOutcome(operation="updated")
        with self.db.write() as conn:
            found = self.catalog.images_by_ids(conn, dataset_id, image_ids)
            for image_id in _unique(image_ids):
                row = found.get(image_id.lower())
                if row is None:
                    outcome.fail(image_id, "not found in this dataset")
                    continue
                if is_archived is False and row["is_archived"]:
                    if self.catalog.name_taken(conn, dataset_id, row["directory_path"],
                                               row["filename"]):
                        outcome.fail(image_id, f"cannot restore: an image named "
                                     f"{row['filename']!r} already exists in "
                                     f"{row['directory_path']!r}")
                        continue
                    conn.execute("UPDATE images SET is_archived = 0 WHERE id = ?", (row["id"],))
                    self.folders.ensure(conn, dataset_id, row["directory_path"])
                elif is_archived is True:
                    conn.execute("UPDATE images SET is_archived = 1 WHERE id = ?", (row["id"],))
                if status is not None:
                    conn.execute("UPDATE images SET status = ? WHERE id = ?", (status, row["id"]))
                outcome.processed += 1
                outcome.affected.add(row["directory_path"])
        return outcome

    # ---- move --------------------------------------------------------------------------

    def move_ids(self, dataset_id: str, image_ids: list[str], target_path: str) -> BatchOutcome:
        target = rules.normalize_directory(target_path)
        outcome = BatchOutcome(operation="moved")
        with self.db.write() as conn:
            found = self.catalog.images_by_ids(conn, dataset_id, image_ids)
            for image_id in _unique(image_ids):
                row = found.get(image_id.lower())
                if row is None:
                    outcome.fail(image_id, "not found in this dataset")
                    continue
                outcome.processed += 1
                if row["directory_path"] == target:
                    continue
                name = row["filename"]
                if not row["is_archived"]:
                    n = 0
                    while self.catalog.name_taken(conn, dataset_id, target, name):
                        n += 1
                        name = rules.suffixed_name(row["filename"], n)
                    if n:
                        outcome.renamed += 1
                conn.execute("UPDATE images SET directory_path = ?, filename = ? WHERE id = ?",
                             (target, name, row["id"]))
                outcome.affected.update((row["directory_path"], target))
            if outcome.processed:  # a move of nothing makes no folder
                self.folders.ensure(conn, dataset_id, target)
        return outcome

    # ---- split and tags ----------------------------------------------------------------

    def set_split(self, dataset_id: str, img_path: str, split: str | None) -> sqlite3.Row:
        if split is not None and split not in SPLITS:
            raise bad_request(f"split must be one of {', '.join(SPLITS)} or null",
                              code="validation_error")
        with self.db.write() as conn:
            row = self.catalog.image_by_path(dataset_id, img_path, conn)
            conn.execute("UPDATE images SET split = ? WHERE id = ?", (split, row["id"]))
            return self.catalog.image_row(conn, row["id"])

    def tag(self, dataset_id: str, image_ids: list[str], tags: list[str], add: bool) -> int:
        clean = []
        for tag in tags:
            if not isinstance(tag, str) or not tag.strip() or len(tag) > 200:
                raise bad_request("tags must be non-empty strings of at most 200 characters",
                                  code="validation_error")
            if tag.strip() not in clean:
                clean.append(tag.strip())
        processed = 0
        with self.db.write() as conn:
            found = self.catalog.images_by_ids(conn, dataset_id, image_ids)
            for row in found.values():
                current = json.loads(row["tags"])
                if add:
                    updated = current + [t for t in clean if t not in current]
                else:
                    updated = [t for t in current if t not in clean]
                conn.execute("UPDATE images SET tags = ? WHERE id = ?",
                             (json.dumps(updated), row["id"]))
                processed += 1
        return processed

    # ---- annotations -------------------------------------------------------------------

    def annotations(self, dataset_id: str, img_path: str) -> list[dict[str, Any]]:
        conn = self.db.connection()
        row = self.catalog.image_by_path(dataset_id, img_path, conn)
        stored = conn.execute("SELECT annotations FROM images WHERE id = ?",
                              (row["id"],)).fetchone()
        return list(json.loads(stored[0]))

    def save_annotations(self, dataset_id: str, img_path: str,
                         annotations: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace the annotations of an image; returns the save summary."""
        with self.db.write() as conn:
            row = self.catalog.image_by_path(dataset_id, img_path, conn)
            conn.execute(
                "UPDATE images SET annotations = ?, annotation_count = ?, min_confidence = ?"
                " WHERE id = ?",
                (json.dumps(annotations), len(annotations), _min_confidence(annotations),
                 row["id"]))
            return {"image_id": row["id"], "previous_count": row["annotation_count"],
                    "new_count": len(annotations), "status": row["status"]}
