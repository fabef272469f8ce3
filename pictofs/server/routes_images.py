"""Routes: image listing, metadata and bytes (by id and by path), delete by path, split,
bulk tags.

Route order matters: the ``.../metadata`` forms are declared before the bytes forms that
would otherwise swallow them (a filename always has an extension, so ``metadata`` is never an
image name).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Iterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from pictofs.server.auth import sign_read, verify_read
from pictofs.server.catalog import ImageFilter, image_json
from pictofs.server.db import Caller
from pictofs.server.deps import MAX_OFFSET, ServerState, base_url, caller, member, page, state
from pictofs.server.failures import ApiFailure
from pictofs.server.idempotency import IdempotentRoute
from pictofs.server.schemas import (
    ERROR_RESPONSES,
    BulkTagRequest,
    DeleteResult,
    Envelope,
    ImageOut,
    Page,
    ProcessedOut,
    Split,
    SplitRequest,
    Status,
)

API = "/api/v1/developer"
router = APIRouter(prefix=API, route_class=IdempotentRoute, responses=ERROR_RESPONSES,
                   tags=["images"])
storage_reads = APIRouter(responses=ERROR_RESPONSES, tags=["storage"])
STORAGE_READ_PATH = "/storage/object"
_BYTES: dict[int | str, dict[str, Any]] = {200: {"description": "The image bytes", "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}


def _stream(request: Request, st: ServerState, row: sqlite3.Row) -> Response:
    """The image bytes with Content-Type and Content-Length (no Range support); HEAD gets
    the headers only. The hosted profile answers 307 to a signed storage URL instead."""
    if st.profile.bytes_by_redirect and st.storage_base is not None:
        token = sign_read(st.signer, row["blob"], row["content_type"])
        return RedirectResponse(f"{st.storage_base}{STORAGE_READ_PATH}/{token}",
                                status_code=307)
    return _blob(request, st, row["blob"], row["content_type"], {"image_id": row["id"]})


def _blob(request: Request, st: ServerState, blob: str, content_type: str,
          about: dict[str, Any]) -> Response:
    try:
        handle = st.blobs.open(blob)
    except FileNotFoundError:
        raise ApiFailure(500, "blob_missing", "the stored bytes of this image are missing",
                         about) from None
    headers = {"Content-Length": str(os.fstat(handle.fileno()).st_size)}
    if request.method == "HEAD":
        handle.close()
        return Response(media_type=content_type, headers=headers)

    def chunks() -> Iterator[bytes]:
        with handle:
            while data := handle.read(256 * 1024):
                yield data

    return StreamingResponse(chunks(), media_type=content_type, headers=headers)


@storage_reads.api_route(STORAGE_READ_PATH + "/{token}", methods=["GET", "HEAD"],
                         response_class=StreamingResponse, response_model=None,
                         responses=_BYTES)
def storage_read(token: str, request: Request) -> Response:
    """An image's bytes at a signed storage URL (the hosted profile's redirect target). No
    API key: the token is the permission, until it expires."""
    st: ServerState = request.app.state.server
    grant = verify_read(st.signer, token)
    return _blob(request, st, grant.blob, grant.content_type, {})


@router.get("/images/", response_model=Page[ImageOut])
def list_images(request: Request, dataset: str,
                directory_path: str | None = None, filename: str | None = None,
                include_archived: bool = False, status: Status | None = None,
                split: Split | None = None, min_confidence_lt: float | None = None,
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                who: Caller = Depends(caller), st: ServerState = Depends(state)
                ) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    where = ImageFilter(directory_path=directory_path, filename=filename,
                        include_archived=include_archived, status=status, split=split,
                        min_confidence_lt=min_confidence_lt)
    rows, total = st.catalog.list_images(ds["id"], where, limit, offset)
    base = base_url(request)
    # image_json's answers are checked against ImageOut by the metadata routes
    return page(st, [image_json(r, base) for r in rows], limit, offset, total, checked=False)


@router.get("/images/{image_id}/metadata", response_model=Envelope[ImageOut])
def image_metadata_by_id(request: Request, image_id: str, who: Caller = Depends(caller),
                         st: ServerState = Depends(state)) -> dict[str, Any]:
    return {"data": image_json(st.catalog.image_by_id(who.organization_id, image_id),
                               base_url(request))}


@router.get("/images/{dataset}/{img_path:path}/metadata", response_model=Envelope[ImageOut])
def image_metadata_by_path(request: Request, dataset: str, img_path: str,
                           who: Caller = Depends(caller),
                           st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return {"data": image_json(st.catalog.image_by_path(ds["id"], img_path), base_url(request))}


@router.api_route("/images/{image_id}", methods=["GET", "HEAD"],
                  response_class=StreamingResponse, response_model=None, responses=_BYTES)
def image_bytes_by_id(request: Request, image_id: str, who: Caller = Depends(caller),
                      st: ServerState = Depends(state)) -> Response:
    return _stream(request, st, st.catalog.image_by_id(who.organization_id, image_id))


@router.api_route("/images/{dataset}/{img_path:path}", methods=["GET", "HEAD"],
                  response_class=StreamingResponse, response_model=None, responses=_BYTES)
def image_bytes_by_path(request: Request, dataset: str, img_path: str,
                        who: Caller = Depends(caller),
                        st: ServerState = Depends(state)) -> Response:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return _stream(request, st, st.catalog.image_by_path(ds["id"], img_path))


@router.delete("/images/{dataset}/{img_path:path}", response_model=DeleteResult)
def delete_image(dataset: str, img_path: str, permanent: bool = False,
                 who: Caller = Depends(member), st: ServerState = Depends(state)
                 ) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return {"success": True, "message": st.edits.delete_path(ds["id"], img_path, permanent)}


@router.post("/images/bulk-tag", response_model=Envelope[ProcessedOut])
def bulk_tag(body: BulkTagRequest, who: Caller = Depends(member),
             st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset)
    return {"data": {"processed": st.edits.tag(ds["id"], body.image_ids, body.tags, body.add)}}


@router.post("/images/{dataset}/{img_path:path}/split", response_model=Envelope[ImageOut])
def set_split(request: Request, dataset: str, img_path: str, body: SplitRequest,
              who: Caller = Depends(member), st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    row = st.edits.set_split(ds["id"], img_path, body.split)
    return {"data": image_json(row, base_url(request))}
