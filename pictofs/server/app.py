"""``create_app``: the FastAPI application of the reference server, wired from its parts.

Also the service routes: ``GET /healthz`` and ``GET /metrics`` (no key) and
``GET /api/v1/developer/me``. With a storage port, ``app.state.storage_app`` is a second,
small application (the storage PUT and ``/healthz``) sharing the same state; the storage PUT
is served on the main port too.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from pictofs import __version__
from pictofs.model import CHALLENGE_HEADER, PROOF_FILE, PROOF_HEADER, server_proof
from pictofs.server import decode, handlers, routes_batch, routes_datasets, routes_images
from pictofs.server import routes_uploads
from pictofs.server.db import DB_FILE, Caller, Database
from pictofs.server.deps import ServerState, caller
from pictofs.server.profiles import REFERENCE, Profile
from pictofs.server.middleware import RequestContext, RequestGate
from pictofs.server.schemas import ERROR_RESPONSES, MAX_JSON_BODY_BYTES, Envelope, HealthOut, MeOut

log = logging.getLogger(__name__)

API = "/api/v1/developer"
service = APIRouter(tags=["service"])
me_router = APIRouter(prefix=API, responses=ERROR_RESPONSES, tags=["service"])


@service.get("/healthz", response_model=HealthOut)
def healthz(request: Request, response: Response) -> dict[str, Any]:
    """200 without a key. With a challenge (hex, at most 128 characters), the answer
    carries HMAC-SHA256(the data folder's secret, challenge): a client that can read the
    secret (the same user, 0600) knows the server is the one over that folder before it
    sends that folder's owner key (the embedded default, ``pictofs.embedded``)."""
    challenge = request.headers.get(CHALLENGE_HEADER, "")
    if challenge and len(challenge) <= 128 and all(c in HEX for c in challenge.lower()):
        secret: bytes = request.app.state.proof_secret
        response.headers[PROOF_HEADER] = server_proof(secret, challenge)
    return {"status": "ok"}


HEX = frozenset("0123456789abcdef")


def proof_secret(data_dir: Path) -> bytes:
    """The data folder's proof secret, created (0600, 32 random bytes) if missing."""
    path = data_dir / PROOF_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    return path.read_bytes().strip()


@service.get("/metrics", response_class=PlainTextResponse, response_model=None,
             responses={200: {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> PlainTextResponse:
    text = request.app.state.server.metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


@me_router.get("/me", response_model=Envelope[MeOut])
def me(who: Caller = Depends(caller)) -> dict[str, Any]:
    return {"data": {"organization_id": who.organization_id,
                     "organization_name": who.organization_name, "role": who.role,
                     "key_prefix": who.key_prefix}}


def _application(state: ServerState, title: str, refuse_key: bool = False) -> FastAPI:
    app = FastAPI(title=title, version=__version__)
    app.state.server = state
    app.state.proof_secret = proof_secret(state.data_dir)
    handlers.install(app)
    # The last one added runs first: request id and metrics wrap the gate's refusals too.
    app.add_middleware(RequestGate, authenticate=state.db.caller_for_key, api_prefix=API + "/",
                       streamed_prefix=routes_uploads.STORAGE_PATH + "/",
                       limit=MAX_JSON_BODY_BYTES, refuse_key=refuse_key)
    app.add_middleware(RequestContext, metrics=state.metrics)
    return app


def create_app(data_dir: Path, storage_port: int | None = None,
               profile: Profile = REFERENCE, storage_base: str | None = None) -> FastAPI:
    """The API application over ``data_dir`` (its database is created if missing).

    ``profile`` (``profiles.py``) says where the answers follow the hosted service instead
    of the reference server. With ``storage_base`` (the storage listener's own URL, the
    hosted profile), storage is served on the storage listener only, and it refuses API
    keys."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / DB_FILE)
    db.initialize()
    decode.configure()
    state = ServerState.open(data_dir, db, storage_port, profile, storage_base)

    app = _application(state, "pictofs reference server")
    app.include_router(service)
    if profile.me_route:
        app.include_router(me_router)
    app.include_router(routes_datasets.router)
    app.include_router(routes_images.router)
    app.include_router(routes_uploads.router)
    app.include_router(routes_batch.router)
    if storage_base is None:
        app.include_router(routes_uploads.storage_router)

    storage_app = None
    if storage_port is not None:
        storage_app = _application(state, "pictofs reference storage",
                                   refuse_key=storage_base is not None)
        storage_app.include_router(service)
        storage_app.include_router(routes_uploads.storage_router)
        if storage_base is not None:
            storage_app.include_router(routes_images.storage_reads)
    app.state.storage_app = storage_app
    return app
