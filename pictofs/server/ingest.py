"""The three-step upload: hand out signed URLs, keep what the storage PUT received, register it.

Step 1 (``prepare``) checks the name, extension, content type and collision before signing.
Step 2 (the storage PUT, in ``routes_uploads``) streams the body into a ``BlobWriter``;
``keep_upload`` commits it and records it as the pending upload of that (dataset, folder,
filename). Step 3 (``register``) checks the declared size against the stored bytes, decodes
them with Pillow, converts HEIC to PNG, and inserts the image in one transaction with its
folders, consuming the pending upload.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pictofs.server import decode, rules
from pictofs.server.auth import UploadGrant, UploadSigner
from pictofs.server.blobs import BlobStore, BlobWriter
from pictofs.server.catalog import Catalog
from pictofs.server.db import Database, new_id
from pictofs.server.failures import ApiFailure, bad_request, conflict, too_large
from pictofs.server.folders import Folders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    """One image to register, as the client describes it."""

    filename: str
    directory_path: str | None
    content_type: str
    file_size: int | None = None
    width: int | None = None
    height: int | None = None


class Ingest:
    def __init__(self, db: Database, catalog: Catalog, folders: Folders, blobs: BlobStore,
                 signer: UploadSigner) -> None:
        self.db = db
        self.catalog = catalog
        self.folders = folders
        self.blobs = blobs
        self.signer = signer

    # ---- step 1 ------------------------------------------------------------------------

    def prepare(self, dataset_id: str, filename: Any, directory_path: Any, content_type: Any,
                check_collision: bool = True) -> UploadGrant:
        name = rules.check_filename(filename)
        directory = rules.normalize_directory(directory_path)
        ctype = rules.check_content_type(content_type)
        final = rules.png_name(name) if rules.is_heic(name) else name
        if check_collision and self.catalog.name_taken(self.db.connection(), dataset_id,
                                                       directory, final):
            raise conflict(f"an image named {final!r} already exists in {directory!r}",
                           filename=final, directory_path=directory)
        return self.signer.grant(dataset_id, directory, name, ctype)

    # ---- step 2 ------------------------------------------------------------------------

    def keep_upload(self, grant: UploadGrant, writer: BlobWriter) -> str:
        """Commit the PUT body and record it as the pending upload of its path."""
        with self.blobs.lock:
            digest = writer.commit()
            with self.db.write() as conn:
                previous = conn.execute(
                    "SELECT blob FROM uploads WHERE dataset_id = ? AND directory_path = ?"
                    " AND filename = ?",
                    (grant.dataset_id, grant.directory_path, grant.filename)).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO uploads (dataset_id, directory_path, filename, blob,"
                    " size, content_type, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (grant.dataset_id, grant.directory_path, grant.filename, digest, writer.size,
                     grant.content_type, time.time()))
                if previous and previous["blob"] != digest:
                    self._release(conn, previous["blob"])
        return digest

    def _release(self, conn: sqlite3.Connection, digest: str) -> None:
        """Remove a blob nothing references any more (caller holds ``blobs.lock``)."""
        if not self.catalog.blob_in_use(conn, digest):
            self.blobs.remove(digest)

    def release(self, digest: str) -> None:
        with self.blobs.lock:
            self._release(self.db.connection(), digest)

    def _drop_pending(self, dataset_id: str, directory: str, filename: str, digest: str) -> None:
        with self.blobs.lock:
            with self.db.write() as conn:
                conn.execute("DELETE FROM uploads WHERE dataset_id = ? AND directory_path = ?"
                             " AND filename = ? AND blob = ?",
                             (dataset_id, directory, filename, digest))
                self._release(conn, digest)

    # ---- step 3 ------------------------------------------------------------------------

    def register(self, dataset_id: str, item: Registration) -> sqlite3.Row:
        name = rules.check_filename(item.filename)
        directory = rules.normalize_directory(item.directory_path)
        rules.check_content_type(item.content_type)
        heic = rules.is_heic(name)
        final = rules.png_name(name) if heic else name
        conn = self.db.connection()
        if self.catalog.name_taken(conn, dataset_id, directory, final):
            raise conflict(f"an image named {final!r} already exists in {directory!r}",
                           filename=final, directory_path=directory)
        if item.file_size is not None and item.file_size > rules.MAX_IMAGE_BYTES:
            raise too_large(f"file_size {item.file_size} is over the limit of "
                            f"{rules.MAX_IMAGE_BYTES} bytes", limit=rules.MAX_IMAGE_BYTES)
        pending = conn.execute(
            "SELECT blob, size, content_type FROM uploads WHERE dataset_id = ? AND"
            " directory_path = ? AND filename = ?", (dataset_id, directory, name)).fetchone()
        if pending is None:
            raise bad_request(f"no uploaded bytes for {rules.join(directory, name)!r}; PUT them "
                              "to the upload_url first", code="upload_missing")
        # The stored type is the one the upload URL was signed for and the PUT carried.
        stored, size, ctype = pending["blob"], int(pending["size"]), pending["content_type"]
        if item.file_size is not None and item.file_size != size:
            raise bad_request(f"file_size {item.file_size} differs from the {size} bytes stored",
                              code="file_size_mismatch", stored=size, declared=item.file_size)
        try:
            decoded = decode.inspect(self.blobs.path_for(stored))
        except ApiFailure:
            self._drop_pending(dataset_id, directory, name, stored)
            raise
        width, height = item.width, item.height
        if width is None or height is None:
            width, height = decoded.width, decoded.height
        if heic:
            return self._insert_converted(dataset_id, directory, name, final, stored)
        return self._insert(dataset_id, directory, name, final, stored, size, ctype,
                            width, height, stored)

    def _insert_converted(self, dataset_id: str, directory: str, name: str, final: str,
                          original: str) -> sqlite3.Row:
        try:
            png, width, height = decode.heic_to_png(self.blobs.path_for(original))
        except ApiFailure:
            self._drop_pending(dataset_id, directory, name, original)
            raise
        with self.blobs.writer() as writer:
            writer.write(png)
            return self._insert(dataset_id, directory, name, final, None, len(png), "image/png",
                                width, height, original, writer=writer)

    def _insert(self, dataset_id: str, directory: str, name: str, final: str,
                blob: str | None, size: int, content_type: str, width: int | None,
                height: int | None, pending_blob: str, writer: BlobWriter | None = None
                ) -> sqlite3.Row:
        """Insert the image (committing ``writer`` first when converting) in one transaction."""
        image_id = new_id()
        with self.blobs.lock:
            if writer is not None:
                blob = writer.commit()
            assert blob is not None
            try:
                return self._insert_row(image_id, dataset_id, directory, name, final, blob, size,
                                        content_type, width, height, pending_blob)
            except ApiFailure:
                if writer is not None:
                    self._release(self.db.connection(), blob)
                raise

    def _insert_row(self, image_id: str, dataset_id: str, directory: str, name: str, final: str,
                    blob: str, size: int, content_type: str, width: int | None,
                    height: int | None, pending_blob: str) -> sqlite3.Row:
        """The insert transaction proper (caller holds ``blobs.lock``)."""
        with self.db.write() as conn:
            still = conn.execute(
                "SELECT blob FROM uploads WHERE dataset_id = ? AND directory_path = ? AND"
                " filename = ?", (dataset_id, directory, name)).fetchone()
            if still is None or still["blob"] != pending_blob:
                raise conflict("the upload changed while it was being registered; "
                               "register again", filename=name)
            if self.catalog.name_taken(conn, dataset_id, directory, final):
                raise conflict(f"an image named {final!r} already exists in {directory!r}",
                               filename=final, directory_path=directory)
            conn.execute(
                "INSERT INTO images (id, dataset_id, directory_path, filename, file_size,"
                " width, height, content_type, blob, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image_id, dataset_id, directory, final, size, width, height, content_type,
                 blob, time.time()))
            self.folders.ensure(conn, dataset_id, directory)
            conn.execute("DELETE FROM uploads WHERE dataset_id = ? AND directory_path = ?"
                         " AND filename = ?", (dataset_id, directory, name))
            if pending_blob != blob:
                self._release(conn, pending_blob)
            return self.catalog.image_row(conn, image_id)

    def register_many(self, dataset_id: str, items: list[Registration]
                      ) -> tuple[list[sqlite3.Row], list[dict[str, Any]]]:
        """Register each item on its own; failures are reported, not raised."""
        succeeded: list[sqlite3.Row] = []
        failed: list[dict[str, Any]] = []
        for item in items:
            try:
                succeeded.append(self.register(dataset_id, item))
            except ApiFailure as failure:
                failed.append({"filename": item.filename,
                               "directory_path": _display_directory(item.directory_path),
                               "error": failure.message, "code": failure.code,
                               "status": failure.status})
        return succeeded, failed


def _display_directory(path: str | None) -> str:
    try:
        return rules.normalize_directory(path)
    except ApiFailure:
        return str(path)
