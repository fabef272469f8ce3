"""The three-step upload: hand out signed URLs, keep what the storage PUT received, register it.

Step 1 (``prepare``) checks the name, extension, content type and collision before signing.
Step 2 (the storage PUT, in ``routes_uploads``) streams the body into a ``BlobWriter``;
``keep_upload`` commits it and records it as the pending upload of that (dataset, folder,
filename). Step 3 (``register``) checks the declared size against the stored bytes, decodes
them with Pillow (which also names their content type), converts HEIC to PNG, and inserts the
image in one transaction with its folders, consuming the pending upload.

An upload URL is spent by its register: the same transaction records its nonce (with the
digest and size of the bytes it put) in ``spent_uploads``, and a later PUT on it is refused
(``spent``). A PUT retried before the register is taken (it replaces the pending upload).
A pending upload expires ``REGISTER_GRACE_S`` after its URL: register refuses it, and
``sweep`` (at start and periodically, a bounded batch at a time) drops it and its bytes when
nothing else holds them, and forgets spent URLs once they have expired.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from pictofs.server import decode, rules
from pictofs.server.auth import UPLOAD_TTL_SECONDS, UploadGrant, UploadSigner
from pictofs.server.blobs import BlobStore, BlobWriter
from pictofs.server.catalog import Catalog
from pictofs.server.db import Database, new_id
from pictofs.server.failures import ApiFailure, bad_request, conflict, forbidden, too_large
from pictofs.server.folders import Folders

log = logging.getLogger(__name__)

# How long after its URL expired a pending upload may still be registered (a batch registers
# after all its PUTs, which can outlast the first URLs).
REGISTER_GRACE_S = UPLOAD_TTL_SECONDS
SWEEP_BATCH = 500  # rows of each kind one sweep looks at


@dataclass(frozen=True)
class Spent:
    """A URL whose upload was registered: what it put."""

    blob: str
    size: int


def spent_url() -> ApiFailure:
    return forbidden("this upload URL was spent by its register; ask for a new one",
                     reason="spent")


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

    def spent(self, nonce: str) -> Spent | None:
        """What the URL named by ``nonce`` put, if its upload was registered."""
        row = self.db.connection().execute(
            "SELECT blob, size FROM spent_uploads WHERE nonce = ?", (nonce,)).fetchone()
        return Spent(row["blob"], int(row["size"])) if row else None

    def keep_upload(self, grant: UploadGrant, writer: BlobWriter) -> str:
        """Commit the PUT body and record it as the pending upload of its path; 403 if the
        URL was spent meanwhile (its bytes are dropped then)."""
        with self.blobs.lock:
            digest = writer.commit()
            try:
                with self.db.write() as conn:
                    if conn.execute("SELECT 1 FROM spent_uploads WHERE nonce = ?",
                                    (grant.nonce,)).fetchone():
                        raise spent_url()
                    previous = conn.execute(
                        "SELECT blob FROM uploads WHERE dataset_id = ? AND directory_path = ?"
                        " AND filename = ?",
                        (grant.dataset_id, grant.directory_path, grant.filename)).fetchone()
                    conn.execute(
                        "INSERT OR REPLACE INTO uploads (dataset_id, directory_path, filename,"
                        " blob, size, content_type, created_at, nonce, url_expires_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (grant.dataset_id, grant.directory_path, grant.filename, digest,
                         writer.size, grant.content_type, time.time(), grant.nonce,
                         grant.expires_at))
                    if previous and previous["blob"] != digest:
                        self._release(conn, previous["blob"])
            except ApiFailure:
                self._release(self.db.connection(), digest)
                raise
        return digest

    def sweep(self, now: float | None = None, limit: int = SWEEP_BATCH) -> int:
        """Drop up to ``limit`` expired pending uploads (and their bytes, when nothing else
        holds them) and forget up to ``limit`` expired spent URLs; returns how many rows
        went (``limit`` or more: call again)."""
        now = time.time() if now is None else now
        with self.blobs.lock, self.db.write() as conn:
            expired = conn.execute(
                "SELECT dataset_id, directory_path, filename, blob FROM uploads"
                " WHERE url_expires_at < ? LIMIT ?", (now - REGISTER_GRACE_S, limit)).fetchall()
            for row in expired:
                conn.execute("DELETE FROM uploads WHERE dataset_id = ? AND directory_path = ?"
                             " AND filename = ?",
                             (row["dataset_id"], row["directory_path"], row["filename"]))
            for digest in {row["blob"] for row in expired}:
                self._release(conn, digest)
            forgotten = conn.execute(
                "DELETE FROM spent_uploads WHERE nonce IN (SELECT nonce FROM spent_uploads"
                " WHERE url_expires_at < ? LIMIT ?)", (now, limit)).rowcount
        if expired:
            log.info("dropped %d expired pending upload(s)", len(expired))
        return max(len(expired), forgotten)

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
            "SELECT blob, size, content_type, url_expires_at FROM uploads WHERE dataset_id = ?"
            " AND directory_path = ? AND filename = ?", (dataset_id, directory, name)).fetchone()
        if pending is None:
            raise bad_request(f"no uploaded bytes for {rules.join(directory, name)!r}; PUT them "
                              "to the upload_url first", code="upload_missing")
        if pending["url_expires_at"] + REGISTER_GRACE_S < time.time():
            self._drop_pending(dataset_id, directory, name, pending["blob"])
            raise bad_request(f"the upload of {rules.join(directory, name)!r} expired before "
                              "it was registered; upload it again", code="upload_expired")
        stored, size = pending["blob"], int(pending["size"])
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
        # The stored type is the one the bytes have (PNG bytes in x.jpg are image/png), not
        # the one the name, the upload URL or the PUT said.
        return self._insert(dataset_id, directory, name, final, stored, size,
                            decoded.content_type, width, height, stored)

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
                "SELECT blob, size, nonce, url_expires_at FROM uploads WHERE dataset_id = ? AND"
                " directory_path = ? AND filename = ?", (dataset_id, directory, name)).fetchone()
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
            if still["nonce"] is not None:  # the URL is spent (rows of version 1 have none)
                conn.execute(
                    "INSERT OR REPLACE INTO spent_uploads (nonce, blob, size, url_expires_at)"
                    " VALUES (?, ?, ?, ?)",
                    (still["nonce"], pending_blob, still["size"], still["url_expires_at"]))
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
