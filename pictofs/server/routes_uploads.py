"""Routes: the three-step upload (upload-url, the storage PUT, register) and its bulk forms.

The signed ``upload_url`` is built from the request's ``Host`` header, so a proxy in front of
the server sees the PUTs; with a storage port, it points at that port on the same host. The
storage PUT takes no API key: the token in its path is the permission, until it expires or
its upload is registered. A PUT on a spent URL is refused (403 ``spent``), except one that
carries exactly the bytes its register took: the retry of an upload already done (a client
repeating a whole idempotent upload), answered 200 without storing anything.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pictofs.server import rules
from pictofs.server.auth import UPLOAD_TTL_SECONDS
from pictofs.server.catalog import image_json
from pictofs.server.db import Caller
from pictofs.server.deps import ServerState, base_url, member, shaped, state
from pictofs.server.failures import ApiFailure, bad_request, forbidden, too_large
from pictofs.server.idempotency import IdempotentRoute
from pictofs.server.ingest import Registration, Spent, spent_url
from pictofs.server.schemas import (
    ERROR_RESPONSES,
    BulkRegisterOut,
    BulkRegisterRequest,
    BulkUploadUrlOut,
    BulkUploadUrlRequest,
    Envelope,
    ErrorBody,
    ImageOut,
    RegisterRequest,
    StoredOut,
    UploadUrlOut,
    UploadUrlRequest,
)

log = logging.getLogger(__name__)

API = "/api/v1/developer"
STORAGE_PATH = "/storage/upload"
router = APIRouter(prefix=API, route_class=IdempotentRoute, responses=ERROR_RESPONSES,
                   tags=["uploads"])
storage_router = APIRouter(responses=ERROR_RESPONSES, tags=["storage"])
_DRAIN_LIMIT = 2 * rules.MAX_IMAGE_BYTES + (1 << 20)


def _with_port(host: str, port: int) -> str:
    """``example.org:8790`` / ``[::1]:8790`` / ``example.org`` with the port replaced."""
    if host.startswith("["):
        name = host[: host.index("]") + 1]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return f"{name}:{port}"


def upload_url(request: Request, st: ServerState, token: str) -> str:
    if st.storage_base is not None:  # storage on its own host (the hosted profile)
        return f"{st.storage_base}{STORAGE_PATH}/{token}"
    host = request.headers.get("host") or base_url(request).split("://", 1)[1]
    if st.storage_port is not None:
        host = _with_port(host, st.storage_port)
    return f"{request.url.scheme}://{host}{STORAGE_PATH}/{token}"


@router.post("/images/upload-url", response_model=Envelope[UploadUrlOut])
def create_upload_url(request: Request, body: UploadUrlRequest, who: Caller = Depends(member),
                      st: ServerState = Depends(state)) -> Any:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset)
    grant = st.ingest.prepare(ds["id"], body.filename, body.directory_path, body.content_type)
    return shaped(st, {"data": st.profile.upload_ticket({
        "filename": grant.filename, "directory_path": grant.directory_path,
        "upload_url": upload_url(request, st, st.signer.sign(grant)),
        "expires_in_minutes": UPLOAD_TTL_SECONDS // 60})})


@router.post("/images/bulk-upload-url", response_model=Envelope[BulkUploadUrlOut])
def create_bulk_upload_urls(request: Request, body: BulkUploadUrlRequest,
                            who: Caller = Depends(member),
                            st: ServerState = Depends(state)) -> Any:
    """Signed URLs for up to 500 files of one folder, in request order. Names and extensions
    are checked here; collisions are reported per file by bulk-register."""
    ds = st.catalog.find_dataset(who.organization_id, body.dataset)
    folders = {rules.normalize_directory(item.directory_path) for item in body.images}
    if len(folders) > 1:
        raise bad_request("one bulk-upload-url call takes files of one directory_path only",
                          directory_paths=sorted(folders))
    names = [item.filename for item in body.images]
    if len(set(names)) != len(names):
        raise bad_request("a filename appears twice in this request")
    urls = []
    for item in body.images:
        grant = st.ingest.prepare(ds["id"], item.filename, item.directory_path,
                                  item.content_type, check_collision=False)
        urls.append(st.profile.upload_ticket({
            "filename": grant.filename, "directory_path": grant.directory_path,
            "upload_url": upload_url(request, st, st.signer.sign(grant))}))
    answer: dict[str, Any] = {"upload_urls": urls}
    if not st.profile.sdk_fields_only:
        answer["expires_in_minutes"] = UPLOAD_TTL_SECONDS // 60
    return shaped(st, {"data": answer})


@router.post("/images/register", response_model=Envelope[ImageOut], status_code=201)
def register_image(request: Request, body: RegisterRequest, who: Caller = Depends(member),
                   st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset)
    row = st.ingest.register(ds["id"], Registration(
        body.filename, body.directory_path, body.content_type, body.file_size, body.width,
        body.height))
    return {"data": image_json(row, base_url(request))}


@router.post("/images/bulk-register", response_model=Envelope[BulkRegisterOut])
def bulk_register(request: Request, body: BulkRegisterRequest, who: Caller = Depends(member),
                  st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset)
    items = [Registration(i.filename, i.directory_path, i.content_type, i.file_size, i.width,
                          i.height) for i in body.images]
    succeeded, failed = st.ingest.register_many(ds["id"], items)
    base = base_url(request)
    return {"data": {"succeeded": [image_json(r, base) for r in succeeded], "failed": failed,
                     "count": len(succeeded)}}


async def _drain(request: Request) -> None:
    """Read and drop a refused body (up to a bound) so the client gets to read our answer."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > _DRAIN_LIMIT:
                return
    except ClientDisconnect:
        return


async def _same_bytes_again(request: Request, spent: Spent, length: int) -> None:
    """Return if the body is exactly what the spent URL put (nothing is stored); 403
    otherwise, before reading when the length already differs."""
    if length != spent.size:
        raise spent_url()
    digest = hashlib.sha256()
    try:
        async for chunk in request.stream():
            digest.update(chunk)
    except ClientDisconnect:
        raise bad_request("the client disconnected before the whole body arrived",
                          code="incomplete_body") from None
    if digest.hexdigest() != spent.blob:
        raise spent_url()


_PUT_BODY = {"required": True, "description": "The image bytes, with the signed Content-Type",
             "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}


@storage_router.put(STORAGE_PATH + "/{token}", response_model=Envelope[StoredOut],
                    responses={411: {"model": ErrorBody,
                                     "description": "Content-Length is missing"}},
                    openapi_extra={"requestBody": _PUT_BODY})
async def storage_put(token: str, request: Request) -> dict[str, Any]:
    """Step 2: the bytes, streamed to disk. No API key; the signed token is the permission."""
    st: ServerState = request.app.state.server
    grant = st.signer.verify(token)
    sent_type = request.headers.get("content-type", "").strip()
    if sent_type.lower() != grant.content_type.lower():
        raise forbidden(f"Content-Type {sent_type!r} does not match the signed "
                        f"{grant.content_type!r}", reason="content_type")
    length_text = request.headers.get("content-length")
    if length_text is None:
        raise ApiFailure(411, "length_required", "Content-Length is required")
    try:
        length = int(length_text)
    except ValueError:
        raise bad_request("Content-Length is not a number") from None
    if length > rules.MAX_IMAGE_BYTES:
        await _drain(request)
        raise too_large(f"{length} bytes is over the limit of {rules.MAX_IMAGE_BYTES} bytes",
                        limit=rules.MAX_IMAGE_BYTES)
    spent = await run_in_threadpool(st.ingest.spent, grant.nonce)
    if spent is not None:
        await _same_bytes_again(request, spent, length)
        return {"data": {"file_size": length, "content_type": grant.content_type}}
    writer = await run_in_threadpool(st.blobs.writer)
    try:
        async for chunk in request.stream():
            if writer.size + len(chunk) > length:
                raise bad_request("the body is longer than Content-Length")
            writer.write(chunk)
        if writer.size != length:
            raise bad_request(f"the body has {writer.size} bytes, Content-Length says {length}")
        await run_in_threadpool(st.ingest.keep_upload, grant, writer)
    except ClientDisconnect:
        log.info("upload of %s abandoned by the client", grant.filename)
        raise bad_request("the client disconnected before the whole body arrived",
                          code="incomplete_body") from None
    finally:
        writer.abort()  # no-op once committed
    return {"data": {"file_size": length, "content_type": grant.content_type}}
