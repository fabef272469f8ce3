"""Routes: batch verbs by image id (delete/archive, update: restore and status, move) and the
annotations of one image by path.

Batch routes answer a bare result object ``{"success", "processed", "failed", "renamed",
"operation"}``; annotations routes answer top-level keys (protocol §2).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from pictofs.server.db import Caller
from pictofs.server.deps import ServerState, caller, member, state
from pictofs.server.idempotency import IdempotentRoute
from pictofs.server.schemas import (
    ERROR_RESPONSES,
    AnnotationsOut,
    AnnotationsSave,
    AnnotationsSaved,
    BatchDeleteRequest,
    BatchMoveRequest,
    BatchResult,
    BatchUpdateRequest,
)

API = "/api/v1/developer"
router = APIRouter(prefix=API, route_class=IdempotentRoute, responses=ERROR_RESPONSES)


@router.post("/batch/images/delete", response_model=BatchResult, tags=["batch"])
def batch_delete(body: BatchDeleteRequest, who: Caller = Depends(member),
                 st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset_name)
    return st.edits.delete_ids(ds["id"], body.image_ids, body.permanent).to_json()


@router.patch("/batch/images/update", response_model=BatchResult, tags=["batch"])
def batch_update(body: BatchUpdateRequest, who: Caller = Depends(member),
                 st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset_name)
    return st.edits.update_ids(ds["id"], body.image_ids, body.updates.is_archived,
                               body.updates.status).to_json()


@router.post("/batch/images/move", response_model=BatchResult, tags=["batch"])
def batch_move(body: BatchMoveRequest, who: Caller = Depends(member),
               st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset_name)
    return st.edits.move_ids(ds["id"], body.image_ids, body.target_directory_path).to_json()


@router.get("/annotations/{dataset}/{img_path:path}", response_model=AnnotationsOut,
            tags=["annotations"])
def get_annotations(dataset: str, img_path: str, who: Caller = Depends(caller),
                    st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return {"annotations": st.edits.annotations(ds["id"], img_path)}


@router.post("/annotations/{dataset}/{img_path:path}", response_model=AnnotationsSaved,
             tags=["annotations"])
def save_annotations(dataset: str, img_path: str, body: AnnotationsSave,
                     who: Caller = Depends(member),
                     st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return st.edits.save_annotations(ds["id"], img_path, body.annotations)
