"""Pydantic models of every request body and response of the server (for validation and a
complete OpenAPI schema). Field names follow protocol §3 and §4.

Request models ignore unknown fields (the official SDK sends a few the reference server does not
use, such as ``readme``). Responses are validated against these models by FastAPI.
"""

from __future__ import annotations

import math
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

Status = Literal["new", "annotate", "review", "complete"]
Split = Literal["train", "val", "test"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


_INT64 = (-(2**63), 2**63 - 1)
MAX_JSON_DEPTH = 64  # far beyond any annotation; pydantic cannot serialize a few hundred


def _unstorable(value: Any, depth: int = 0) -> str | None:
    """Why a decoded JSON value cannot be stored and answered as sent, or None if it can."""
    if isinstance(value, str):
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return "strings cannot contain unpaired surrogates"
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return "integers must fit in 64 bits"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "numbers must be finite (no NaN, Infinity or overflowing literals)"
    elif isinstance(value, (dict, list, tuple)):
        if depth >= MAX_JSON_DEPTH:
            return f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for item in items:
            reason = _unstorable(item, depth + 1)
            if reason:
                return reason
    return None


class _In(BaseModel):
    """A request body. Python's JSON decoder takes what SQLite and a JSON answer cannot hold:
    unpaired UTF-16 surrogates (``"\\ud800"``), ``NaN``/``Infinity``, ``1e999``, integers
    beyond 64 bits, and nesting deeper than the response serializer goes. Each is a 422 here
    instead of a 500 (or a stored row that no later answer can render)."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        reason = _unstorable(data)
        if reason:
            raise ValueError(reason)
        return data


# ---- wire objects ------------------------------------------------------------------------

class ImageOut(_Out):
    id: str
    dataset_id: str
    filename: str
    directory_path: str
    status: Status
    split: Split | None
    annotation_count: int
    min_confidence: float | None
    file_size: int
    width: int | None
    height: int | None
    content_type: str
    tags: list[str]
    is_archived: bool
    image_url: str | None
    thumbnail_url: str | None
    annotation_url: str | None
    created_at: str


class DatasetOut(_Out):
    id: str
    organization_id: str | None
    name: str
    description: str | None
    annotation_types: list[str]
    classes: list[dict[str, Any]]
    image_count: int
    completed_image_count: int
    archived_image_count: int
    total_size: int
    is_archived: bool
    created_at: str
    updated_at: str | None
    images: list[ImageOut] | None = None  # only with ?include_images=true


class DirectoryOut(_Out):
    id: str
    dataset_id: str
    name: str
    parent_directory_id: str | None
    full_path: str
    image_count: int
    nested_image_count: int
    created_at: str | None
    updated_at: str | None


class Pagination(BaseModel):
    limit: int
    offset: int
    total: int
    has_more: bool


class Envelope(BaseModel, Generic[T]):
    data: T


class Page(BaseModel, Generic[T]):
    data: list[T]
    pagination: Pagination


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: ErrorDetail


# ---- datasets ----------------------------------------------------------------------------

class DatasetCreate(_In):
    name: str
    description: str | None = None
    annotation_types: list[str] | None = None
    classes: list[dict[str, Any] | str] | None = None


# ---- directories -------------------------------------------------------------------------

class DirectoryCreate(_In):
    dataset: str
    directory_path: str


class DirectoryRename(_In):
    new_name: str


class DirectoryDeleted(BaseModel):
    full_path: str
    deleted: bool


# ---- uploads -----------------------------------------------------------------------------

class UploadUrlRequest(_In):
    dataset: str
    filename: str
    directory_path: str | None = "/"
    content_type: str


class UploadUrlOut(BaseModel):
    filename: str
    directory_path: str
    upload_url: str
    expires_in_minutes: int


class BulkUploadItem(_In):
    filename: str
    directory_path: str | None = "/"
    content_type: str


class BulkUploadUrlRequest(_In):
    dataset: str
    images: list[BulkUploadItem] = Field(min_length=1, max_length=500)


class BulkUploadUrl(BaseModel):
    filename: str
    directory_path: str
    upload_url: str


class BulkUploadUrlOut(BaseModel):
    upload_urls: list[BulkUploadUrl]
    expires_in_minutes: int


class RegisterItem(_In):
    filename: str
    directory_path: str | None = "/"
    file_size: int | None = Field(default=None, ge=0)
    content_type: str
    width: int | None = Field(default=None, ge=0)
    height: int | None = Field(default=None, ge=0)


class RegisterRequest(RegisterItem):
    dataset: str


class BulkRegisterRequest(_In):
    dataset: str
    images: list[RegisterItem] = Field(min_length=1, max_length=500)


class BulkFailure(_Out):
    filename: str
    directory_path: str
    error: str


class BulkRegisterOut(BaseModel):
    succeeded: list[ImageOut]
    failed: list[BulkFailure]
    count: int


class StoredOut(BaseModel):
    file_size: int
    content_type: str


# ---- image changes -----------------------------------------------------------------------

class DeleteResult(BaseModel):
    success: bool
    message: str


class SplitRequest(_In):
    split: Split | None = None


class BulkTagRequest(_In):
    dataset: str
    image_ids: list[str] = Field(max_length=10_000)
    tags: list[str]
    add: bool = True


class ProcessedOut(BaseModel):
    processed: int


class BatchDeleteRequest(_In):
    dataset_name: str
    image_ids: list[str] = Field(max_length=10_000)
    permanent: bool = False


class BatchUpdates(_In):
    is_archived: bool | None = None
    status: Status | None = None


class BatchUpdateRequest(_In):
    dataset_name: str
    image_ids: list[str] = Field(max_length=10_000)
    updates: BatchUpdates


class BatchMoveRequest(_In):
    dataset_name: str
    image_ids: list[str] = Field(max_length=10_000)
    target_directory_path: str


class BatchFailure(BaseModel):
    id: str
    reason: str


class BatchResult(BaseModel):
    success: bool
    processed: int
    failed: list[BatchFailure]
    renamed: int
    operation: str | None
    affected_directories: list[str] = Field(default_factory=list)


# ---- annotations -------------------------------------------------------------------------

class AnnotationsOut(BaseModel):
    annotations: list[dict[str, Any]]


class AnnotationsSave(_In):
    annotations: list[dict[str, Any]]


class AnnotationsSaved(BaseModel):
    image_id: str
    previous_count: int
    new_count: int
    status: Status


# ---- service -----------------------------------------------------------------------------

class MeOut(BaseModel):
    organization_id: str
    organization_name: str
    role: Literal["viewer", "member", "admin", "owner"]
    key_prefix: str


class HealthOut(BaseModel):
    status: Literal["ok"]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Bad request (invalid name, folder not empty, size mismatch)"),
        (401, "Missing or unknown API key"),
        (403, "Role too low"),
        (404, "No such thing, or it belongs to another organization"),
        (409, "Name collision"),
        (413, "Over 50 MB"),
        (415, "Unsupported extension or not an image"),
        (422, "Validation error"),
    )
}
