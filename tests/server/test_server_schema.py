"""Databases of older schema versions are migrated in place when a server (or an admin verb)
opens them: nothing is lost but what a version says it drops."""

from __future__ import annotations

import hashlib
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Callable

from pictofs.server.auth import hash_key, key_prefix, new_api_key
from pictofs.server import run
from pictofs.server.db import DB_FILE, SCHEMA_VERSION

# The schema of version 1, as the first release created it.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'member', 'admin', 'owner')),
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id),
    name TEXT NOT NULL,
    description TEXT,
    annotation_types TEXT NOT NULL DEFAULT '[]',
    classes TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (organization_id, name)
);
CREATE TABLE IF NOT EXISTS directories (
    id TEXT PRIMARY KEY,
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    full_path TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (dataset_id, full_path)
);
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    directory_path TEXT NOT NULL,
    filename TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new',
    split TEXT,
    annotations TEXT NOT NULL DEFAULT '[]',
    annotation_count INTEGER NOT NULL DEFAULT 0,
    min_confidence REAL,
    file_size INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    content_type TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    is_archived INTEGER NOT NULL DEFAULT 0,
    blob TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS images_live_name
    ON images (dataset_id, directory_path, filename) WHERE is_archived = 0;
CREATE INDEX IF NOT EXISTS images_by_dataset ON images (dataset_id, is_archived, seq);
CREATE INDEX IF NOT EXISTS images_by_folder ON images (dataset_id, directory_path);
CREATE INDEX IF NOT EXISTS images_by_name ON images (dataset_id, filename);
CREATE INDEX IF NOT EXISTS images_by_blob ON images (blob);
CREATE TABLE IF NOT EXISTS uploads (
    dataset_id TEXT NOT NULL,
    directory_path TEXT NOT NULL,
    filename TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (dataset_id, directory_path, filename)
);
CREATE INDEX IF NOT EXISTS uploads_by_blob ON uploads (blob);
CREATE TABLE IF NOT EXISTS idempotency (
    organization_id TEXT NOT NULL,
    key TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (organization_id, key, route)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
"""


def blob_path(data_dir: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / digest[:2] / digest[2:4] / digest


def make_v1_database(data_dir: Path, png_bytes: Callable[[str], bytes]) -> tuple[str, str]:
    """A version 1 data folder: one organization, its owner key (also in owner.key), an
    idempotency record, and a dataset with two pending uploads (bytes PUT, not registered):
    ``old.png`` from two hours ago and ``new.png`` from now. Returns (organization id, key)."""
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / DB_FILE)
    conn.executescript(V1_SCHEMA)
    org_id, key = str(uuid.uuid4()), new_api_key()
    now = time.time()
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, 'default', ?)",
                 (org_id, now))
    conn.execute("INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, role,"
                 " created_at) VALUES (?, ?, ?, ?, 'owner', ?)",
                 (str(uuid.uuid4()), org_id, hash_key(key), key_prefix(key), now))
    conn.execute("INSERT INTO idempotency (organization_id, key, route, status, body, created_at)"
                 " VALUES (?, ?, 'POST /api/v1/developer/datasets/', 201, ?, ?)",
                 (org_id, "k" * 32, b'{"data": "stale"}', now))
    conn.execute("INSERT INTO datasets (id, organization_id, name, created_at, updated_at)"
                 " VALUES (?, ?, 'old-data', ?, ?)", (str(uuid.uuid4()), org_id, now, now))
    ds_id = conn.execute("SELECT id FROM datasets").fetchone()[0]
    for filename, when in (("old.png", now - 7200), ("new.png", now)):
        data = png_bytes(filename)
        blob_path(data_dir, data).parent.mkdir(parents=True)
        blob_path(data_dir, data).write_bytes(data)
        conn.execute("INSERT INTO uploads (dataset_id, directory_path, filename, blob, size,"
                     " content_type, created_at) VALUES (?, '/', ?, ?, ?, 'image/png', ?)",
                     (ds_id, filename, hashlib.sha256(data).hexdigest(), len(data), when))
    conn.commit()
    conn.close()
    (data_dir / "owner.key").write_text(key + "\n")
    return org_id, key


def schema_version(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / DB_FILE)
    try:
        return int(conn.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    finally:
        conn.close()


def test_a_version_1_database_is_migrated(tmp_path, spawn_server, api_for, make_png):
    data = tmp_path / "data"
    org_id, key = make_v1_database(data, make_png)
    server = spawn_server(data)
    api = api_for(server, key)
    assert api.get("/me").json()["data"]["organization_id"] == org_id
    assert schema_version(data) == SCHEMA_VERSION
    # Version 2: the organization-wide idempotency records are gone, never replayed.
    made = api.post("/datasets/", json={"name": "after-migration"},
                    headers={"Idempotency-Key": "k" * 32})
    assert made.status_code == 201 and "Idempotent-Replayed" not in made.headers
    assert made.json()["data"]["name"] == "after-migration"
    # Version 3: keys can be revoked; the old key is listed, not revoked.
    [listed] = run.list_keys(data)
    assert (listed.role, listed.key_prefix, listed.revoked_at) == ("owner", key[:12], None)
    # Version 4: pending uploads expire with their URL (for version 1 rows: 15 minutes after
    # their PUT); the old one was swept at start, the new one can still be registered.
    assert not blob_path(data, make_png("old.png")).exists()
    assert blob_path(data, make_png("new.png")).exists()
    registered = api.post("/images/register", json={
        "dataset": "old-data", "filename": "new.png", "directory_path": "/",
        "file_size": len(make_png("new.png")), "content_type": "image/png"})
    assert registered.status_code == 201, registered.text
    assert api.post("/images/register", json={
        "dataset": "old-data", "filename": "old.png", "directory_path": "/",
        "content_type": "image/png"}).json()["error"]["code"] == "upload_missing"

