"""Routes: datasets (list, get by name or id, create) and virtual folders (list, create,
rename, delete)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from pictofs.server.catalog import ImageFilter, image_json
from pictofs.server.db import Caller
from pictofs.server.deps import (
    MAX_OFFSET,
    ServerState,
    base_url,
    caller,
    member,
    page,
    shaped,
    state,
)
from pictofs.server.idempotency import IdempotentRoute
from pictofs.server.schemas import (
    ERROR_RESPONSES,
    DatasetCreate,
    DatasetOut,
    DirectoryCreate,
    DirectoryDeleted,
    DirectoryOut,
    DirectoryRename,
    Envelope,
    Page,
)

API = "/api/v1/developer"
router = APIRouter(prefix=API, route_class=IdempotentRoute, responses=ERROR_RESPONSES)


# ---- datasets ----------------------------------------------------------------------------

@router.get("/datasets/", response_model=Page[DatasetOut], tags=["datasets"])
def list_datasets(limit: int = Query(100, ge=1, le=1000),
                  offset: int = Query(0, ge=0, le=MAX_OFFSET),
                  archived: bool = False, who: Caller = Depends(caller),
                  st: ServerState = Depends(state)) -> dict[str, Any]:
    if archived:  # datasets are never archived here
        return page(st, [], limit, offset, 0)
    rows, total = st.catalog.list_datasets(who.organization_id, limit, offset)
    return page(st, st.catalog.dataset_json(rows), limit, offset, total)


@router.get("/datasets/{dataset}", response_model=Envelope[DatasetOut],
            response_model_exclude_unset=True, tags=["datasets"])
def get_dataset(request: Request, dataset: str, include_images: bool = False,
                images_limit: int = Query(1000, ge=1, le=10_000),
                images_offset: int = Query(0, ge=0, le=MAX_OFFSET), who: Caller = Depends(caller),
                st: ServerState = Depends(state)) -> dict[str, Any]:
    """One dataset; with ``include_images=true`` (as the official SDK may ask) also a page of
    its images, newest first."""
    row = st.catalog.find_dataset(who.organization_id, dataset)
    data = st.catalog.dataset_json([row])[0]
    if include_images:
        rows, _total = st.catalog.list_images(row["id"], ImageFilter(), images_limit,
                                              images_offset)
        base = base_url(request)
        data["images"] = [image_json(r, base) for r in rows]
    return {"data": data}


@router.post("/datasets/", response_model=Envelope[DatasetOut], status_code=201,
             tags=["datasets"])
def create_dataset(body: DatasetCreate, who: Caller = Depends(member),
                   st: ServerState = Depends(state)) -> dict[str, Any]:
    row = st.catalog.create_dataset(who.organization_id, body.name, body.description,
                                    body.annotation_types, body.classes)
    return {"data": st.catalog.dataset_json([row])[0]}


# ---- directories -------------------------------------------------------------------------

@router.get("/directories/{dataset}", response_model=list[DirectoryOut], tags=["directories"])
def list_directories(dataset: str, parent_path: str | None = None,
                     who: Caller = Depends(caller),
                     st: ServerState = Depends(state)) -> Any:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return shaped(st, [st.profile.folder_read(f) for f in st.folders.list(ds["id"], parent_path)])


@router.post("/directories/", response_model=Envelope[DirectoryOut], status_code=201,
             responses={200: {"model": Envelope[DirectoryOut],
                              "description": "The folder already existed"}},
             tags=["directories"])
def create_directory(body: DirectoryCreate, response: Response, who: Caller = Depends(member),
                     st: ServerState = Depends(state)) -> Any:
    ds = st.catalog.find_dataset(who.organization_id, body.dataset)
    folder, created = st.folders.create(ds["id"], body.directory_path)
    if not created:
        response.status_code = 200
    return shaped(st, {"data": st.profile.folder_written(folder)}, 201 if created else 200)


@router.patch("/directories/{dataset}/{dir_path:path}/rename",
              response_model=Envelope[DirectoryOut], tags=["directories"])
def rename_directory(dataset: str, dir_path: str, body: DirectoryRename,
                     who: Caller = Depends(member),
                     st: ServerState = Depends(state)) -> Any:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    folder = st.folders.rename(ds["id"], dir_path, body.new_name)
    return shaped(st, {"data": st.profile.folder_written(folder)})


@router.delete("/directories/{dataset}/{dir_path:path}", response_model=Envelope[DirectoryDeleted],
               tags=["directories"])
def delete_directory(dataset: str, dir_path: str, who: Caller = Depends(member),
                     st: ServerState = Depends(state)) -> dict[str, Any]:
    ds = st.catalog.find_dataset(who.organization_id, dataset)
    return {"data": {"full_path": st.folders.delete(ds["id"], dir_path), "deleted": True}}
