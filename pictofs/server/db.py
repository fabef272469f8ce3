"""SQLite storage of the server: schema, connections, organizations, API keys, idempotency.

One database file ``DIR/pictofs.db`` in WAL mode with a busy timeout, so the admin verbs
(``--create-org``, ``--create-key``) can write while a server runs. Each thread gets its own
connection (uvicorn runs sync routes in a thread pool); ``write()`` opens a
``BEGIN IMMEDIATE`` transaction so check-then-insert sequences are atomic across threads and
processes. Dataset, folder and image queries live with their domain verbs (``catalog``,
``folders``, ``ingest``, ``edits``), which use ``read()`` and ``write()`` from here.

The schema is versioned (``meta.schema_version``): ``_SCHEMA`` is the current one, created as a
whole in a new database; an older database is brought up to date by the steps of
``_MIGRATIONS`` (version → statements), in one write transaction, before anything else.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pictofs.server import auth

log = logging.getLogger(__name__)

DB_FILE = "pictofs.db"
SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 15.0
IDEMPOTENCY_TTL_S = 24 * 3600

_SCHEMA = """
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
    created_at REAL NOT NULL,
    revoked_at REAL
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
CREATE INDEX IF NOT EXISTS images_live_by_folder ON images (dataset_id, directory_path,
                                                            is_archived);
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
    nonce TEXT,
    url_expires_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (dataset_id, directory_path, filename)
);
CREATE INDEX IF NOT EXISTS uploads_by_blob ON uploads (blob);
CREATE INDEX IF NOT EXISTS uploads_by_expiry ON uploads (url_expires_at);
CREATE TABLE IF NOT EXISTS spent_uploads (
    nonce TEXT PRIMARY KEY,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    url_expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spent_uploads_by_expiry ON spent_uploads (url_expires_at);
CREATE TABLE IF NOT EXISTS idempotency (
    api_key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
"""

# Version N: what turns a version N-1 database into a version N one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # Idempotency records are scoped by API key and carry the request's fingerprint; the
    # records of version 1 (scoped by organization and path) cannot be, and are dropped.
    2: ("DROP TABLE idempotency",
        """CREATE TABLE idempotency (
            api_key_id TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            status INTEGER NOT NULL,
            body BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (api_key_id, key))""",
        "CREATE INDEX idempotency_by_age ON idempotency (created_at)"),
    # Keys can be revoked (``pictofs serve --revoke-key``).
    3: ("ALTER TABLE api_keys ADD COLUMN revoked_at REAL",),
    # A pending upload remembers the URL that put it (its nonce and expiry), so that its
    # register spends the URL and an unregistered one expires; the URLs spent are kept until
    # they expire. Pending uploads of version 1 expire as if their URL was signed at the PUT.
    4: ("ALTER TABLE uploads ADD COLUMN nonce TEXT",
        "ALTER TABLE uploads ADD COLUMN url_expires_at REAL NOT NULL DEFAULT 0",
        f"UPDATE uploads SET url_expires_at = created_at + {auth.UPLOAD_TTL_SECONDS}",
        "CREATE INDEX uploads_by_expiry ON uploads (url_expires_at)",
        """CREATE TABLE spent_uploads (
            nonce TEXT PRIMARY KEY,
            blob TEXT NOT NULL,
            size INTEGER NOT NULL,
            url_expires_at REAL NOT NULL)""",
        "CREATE INDEX spent_uploads_by_expiry ON spent_uploads (url_expires_at)"),
}


@dataclass(frozen=True)
class Organization:
    id: str
    name: str


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of an API key: never the key, nor its hash."""

    id: str
    organization_name: str
    role: str
    key_prefix: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class Caller:
    """Who is asking: the organization and role of the presented key, and the key's id."""

    organization_id: str
    organization_name: str
    role: str
    key_prefix: str
    key_id: str


def new_id() -> str:
    return str(uuid.uuid4())


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _connections
        self._connections: list[sqlite3.Connection] = []

    # ---- connections -------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection, in autocommit mode (one statement, one transaction)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():
                # SQLite gives the -wal and -shm files the mode of the database file.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        conn = self._begin("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction, committed on success, rolled back on error."""
        conn = self._begin("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _begin(self, statement: str) -> sqlite3.Connection:
        conn = self.connection()
        if conn.in_transaction:
            raise RuntimeError("nested transaction: pass the open connection down instead")
        conn.execute(statement)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # ---- schema ------------------------------------------------------------------------

    def exists(self) -> bool:
        """True if the file holds an initialized schema."""
        if not self.path.exists():
            return False
        conn = self.connection()
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if row is None:
            return False
        version = conn.execute("SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone()
        return version is not None

    def initialize(self) -> None:
        """Create the schema if missing, migrate an older one; refuse a database from a
        newer version."""
        if self.exists():
            self._migrate()
        conn = self.connection()
        conn.executescript(_SCHEMA)
        with self.write() as tx:
            row = tx.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                tx.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise RuntimeError(f"database schema {row['value']} is newer than this server "
                                   f"({SCHEMA_VERSION}); upgrade pictofs")

    def _migrate(self) -> None:
        """Run the steps from the stored version to ``SCHEMA_VERSION`` in one transaction
        (another process migrating at the same moment waits, then finds nothing to do)."""
        with self.write() as tx:
            version = int(tx.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()["value"])
            if version >= SCHEMA_VERSION:
                return
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    tx.execute(statement)
            tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                       (str(SCHEMA_VERSION),))
        log.info("database migrated from schema %d to %d", version, SCHEMA_VERSION)

    # ---- organizations and keys --------------------------------------------------------

    def create_organization(self, name: str) -> Organization | None:
        """A new organization, or None if the name is taken."""
        org = Organization(new_id(), name)
        try:
            with self.write() as tx:
                tx.execute("INSERT INTO organizations (id, name, created_at) VALUES (?, ?, ?)",
                           (org.id, org.name, time.time()))
        except sqlite3.IntegrityError:
            return None
        return org

    def organization_by_name(self, name: str) -> Organization | None:
        row = self.connection().execute(
            "SELECT id, name FROM organizations WHERE name = ?", (name,)).fetchone()
        return Organization(row["id"], row["name"]) if row else None

    def organizations(self) -> list[Organization]:
        rows = self.connection().execute(
            "SELECT id, name FROM organizations ORDER BY created_at").fetchall()
        return [Organization(r["id"], r["name"]) for r in rows]

    def add_api_key(self, organization_id: str, role: str) -> str:
        """Create a key with ``role`` in the organization; returns the key (shown once)."""
        auth.check_role(role)
        key = auth.new_api_key()
        with self.write() as tx:
            tx.execute(
                "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, role, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (new_id(), organization_id, auth.hash_key(key), auth.key_prefix(key), role,
                 time.time()))
        return key

    def caller_for_key(self, key: str) -> Caller | None:
        """The caller of a key; None for an unknown or revoked one. Read on every request,
        so a key revoked by another process is refused from its next request on."""
        row = self.connection().execute(
            "SELECT k.organization_id, o.name, k.role, k.key_prefix, k.id FROM api_keys k"
            " JOIN organizations o ON o.id = k.organization_id"
            " WHERE k.key_hash = ? AND k.revoked_at IS NULL",
            (auth.hash_key(key),)).fetchone()
        if row is None:
            return None
        return Caller(row[0], row[1], row[2], row[3], row[4])

    def keys(self, organization_id: str | None = None) -> list[KeyInfo]:
        """The keys (of one organization, or all), oldest first."""
        if organization_id is None:
            return self._keys("", ())
        return self._keys(" WHERE k.organization_id = ?", (organization_id,))

    def revoke_key(self, key_id: str) -> KeyInfo | None:
        """Revoke a key (once: a second revoke keeps the first time); returns it as it is
        now, or None if there is no key with that id."""
        with self.write() as tx:
            tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                       (time.time(), key_id))
        found = self._keys(" WHERE k.id = ?", (key_id,))
        return found[0] if found else None

    def _keys(self, where: str, params: tuple[str, ...]) -> list[KeyInfo]:
        rows = self.connection().execute(
            "SELECT k.id, o.name, k.role, k.key_prefix, k.created_at, k.revoked_at"
            " FROM api_keys k JOIN organizations o ON o.id = k.organization_id"
            + where + " ORDER BY k.created_at, k.id", params).fetchall()
        return [KeyInfo(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    # ---- idempotency records -----------------------------------------------------------

    def idempotent_response(self, api_key_id: str, key: str
                            ) -> tuple[str, int, bytes] | None:
        """The (fingerprint, status, body) recorded under this API key and idempotency key
        in the last 24 hours, if any."""
        row = self.connection().execute(
            "SELECT fingerprint, status, body, created_at FROM idempotency"
            " WHERE api_key_id = ? AND key = ?", (api_key_id, key)).fetchone()
        if row is None or row["created_at"] < time.time() - IDEMPOTENCY_TTL_S:
            return None
        return str(row["fingerprint"]), int(row["status"]), bytes(row["body"])

    def remember_response(self, api_key_id: str, key: str, fingerprint: str, status: int,
                          body: bytes) -> None:
        now = time.time()
        with self.write() as tx:
            tx.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_TTL_S,))
            tx.execute(
                "INSERT OR REPLACE INTO idempotency (api_key_id, key, fingerprint, status, body,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (api_key_id, key, fingerprint, status, body, now))
