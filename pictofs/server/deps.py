"""What route handlers receive: the server state, the caller (from ``X-API-Key``, resolved by
``middleware.RequestGate`` before the body is read), role checks, and small rendering helpers
shared by the route modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from pictofs.server.auth import UploadSigner, require_role
from pictofs.server.blobs import BlobStore
from pictofs.server.catalog import Catalog
from pictofs.server.db import Caller, Database
from pictofs.server.edits import Edits
from pictofs.server.failures import ApiFailure
from pictofs.server.folders import Folders
from pictofs.server.ingest import Ingest
from pictofs.server.middleware import KeyedLocks, Metrics
from pictofs.server.profiles import REFERENCE, Profile

# The largest ``offset`` a listing takes: SQLite integers are 64-bit, and a larger offset
# would fail in the query (a 500) instead of answering an empty page.
MAX_OFFSET = 2**63 - 1


@dataclass
class ServerState:
    """Everything a request may touch; one per ``create_app``."""

    data_dir: Path
    db: Database
    blobs: BlobStore
    signer: UploadSigner
    catalog: Catalog
    folders: Folders
    ingest: Ingest
    edits: Edits
    metrics: Metrics
    storage_port: int | None = None
    profile: Profile = REFERENCE
    storage_base: str | None = None  # the storage listener's own URL (hosted profile)
    idempotency_locks: KeyedLocks = field(default_factory=KeyedLocks)

    @classmethod
    def open(cls, data_dir: Path, db: Database, storage_port: int | None,
             profile: Profile = REFERENCE, storage_base: str | None = None) -> ServerState:
        blobs = BlobStore(data_dir / "blobs")
        signer = UploadSigner.for_data_dir(data_dir)
        catalog = Catalog(db)
        folders = Folders(db)
        return cls(
            data_dir=data_dir, db=db, blobs=blobs, signer=signer, catalog=catalog,
            folders=folders, ingest=Ingest(db, catalog, folders, blobs, signer),
            edits=Edits(db, catalog, folders, blobs), metrics=Metrics(),
            storage_port=storage_port, profile=profile, storage_base=storage_base)


api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An API key: pk_live_...")


def state(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]


def caller(request: Request, key: str | None = Depends(api_key_header)) -> Caller:
    """The organization and role of the presented key; 401 if it is missing or unknown.
    ``middleware.RequestGate`` has looked it up already, before the body was read."""
    found: Caller | None = request.scope.get("state", {}).get("caller")
    if found is not None:
        return found
    if not key:
        raise ApiFailure(401, "unauthorized", "missing X-API-Key header")
    found = state(request).db.caller_for_key(key)
    if found is None:
        raise ApiFailure(401, "unauthorized", "invalid API key")
    return found


def member(who: Caller = Depends(caller)) -> Caller:
    """A caller with the member role or higher (every write)."""
    require_role(who.role, "member")
    return who


def base_url(request: Request) -> str:
    """``scheme://host[:port]`` as the client addressed this server (its Host header)."""
    return str(request.base_url).rstrip("/")


def page(st: ServerState, items: list[Any], limit: int, offset: int, total: int,
         checked: bool = True) -> Any:
    """A list answer: the items and the pagination block, as the profile words it.
    ``checked=False``: the JSON answer as it is, not checked against the route's response
    model (for items made by a function whose every answer is checked on another route:
    a page of 1,000 images spent a fifth of its time there)."""
    block = {"limit": limit, "offset": offset, "total": total,
             "has_more": offset + len(items) < total}
    body = {"data": items, "pagination": st.profile.pagination(block)}
    if not checked:
        return JSONResponse(body)
    return shaped(st, body)


def shaped(st: ServerState, body: Any, status_code: int = 200) -> Any:
    """``body`` for the route's response model to check, or, where the profile reshapes
    answers (the hosted profile drops or renames keys the response model declares), the
    JSON answer as it is, with ``status_code``."""
    if st.profile.sdk_fields_only:
        return JSONResponse(body, status_code=status_code)  # plain JSON values already
    return body
