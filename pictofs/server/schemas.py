"""Pydantic models of every request body and response of the server (for validation and a
complete OpenAPI schema). Field names follow protocol §3 and §4.

Request models ignore unknown fields (the official SDK sends a few the reference server does not
use, such as ``readme``). Responses are validated against these models by FastAPI.

The size limits of request bodies and of their strings and lists are declared here, once
(docs/server.md "Limits"): a field past its limit is a 422, a body past ``MAX_JSON_BODY_BYTES``
a 413 (``middleware.RequestGate``).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

T = TypeVar("T")

# ---- limits ------------------------------------------------------------------------------

MAX_JSON_BODY_BYTES = 4 * 1024 * 1024  # every request body but the storage PUT's (413)
# Names are at most 255 bytes of UTF-8 (rules.MAX_NAME_BYTES: 400 name_too_long, protocol
# §3); more than 255 characters cannot be 255 bytes, and is refused at validation already.
MAX_NAME_CHARS = 255
MAX_PATH_CHARS = 4096  # rules.MAX_PATH_BYTES for a whole folder path
MAX_REF_CHARS = 255  # a dataset named or identified in a body (a name, or a 36-char UUID)
MAX_ID_CHARS = 64  # an image id (a 36-char UUID)
MAX_CONTENT_TYPE_CHARS = 255  # RFC 6838: 127 for the type, 127 for the subtype
MAX_DESCRIPTION_CHARS = 4096
MAX_ANNOTATION_TYPES = 64
MAX_LABEL_CHARS = 255  # an annotation type, a class given as a string
MAX_CLASSES = 1000
MAX_CLASS_KEYS = 32  # keys of one class object
MAX_CLASSES_JSON_BYTES = 64 * 1024  # all of a dataset's classes, as stored and listed
MAX_TAGS = 100  # tags in one bulk-tag call
MAX_TAG_CHARS = 200
MAX_ANNOTATIONS = 10_000  # annotations of one image (their size is bounded by the body's)
MAX_ANNOTATION_KEYS = 64  # keys of one annotation object
MAX_BATCH_IDS = 10_000
MAX_BULK_FILES = 500

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
FolderPath = Annotated[str, Field(max_length=MAX_PATH_CHARS)]
DatasetRef = Annotated[str, Field(max_length=MAX_REF_CHARS)]
ImageId = Annotated[str, Field(max_length=MAX_ID_CHARS)]
ContentType = Annotated[str, Field(max_length=MAX_CONTENT_TYPE_CHARS)]
Label = Annotated[str, Field(max_length=MAX_LABEL_CHARS)]
Tag = Annotated[str, Field(max_length=MAX_TAG_CHARS)]
ClassObject = Annotated[dict[str, Any], Field(max_length=MAX_CLASS_KEYS)]
Annotation = Annotated[dict[str, Any], Field(max_length=MAX_ANNOTATION_KEYS)]

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
    name: Name
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    annotation_types: Annotated[list[Label], Field(max_length=MAX_ANNOTATION_TYPES)] | None = None
    classes: Annotated[list[ClassObject | Label], Field(max_length=MAX_CLASSES)] | None = None

    @field_validator("classes")
    @classmethod
    def _classes_fit(cls, classes: list[Any] | None) -> list[Any] | None:
        """Every dataset listing answers the classes: their total is bounded too."""
        if classes is not None:
            size = len(json.dumps(classes, ensure_ascii=False).encode("utf-8"))
            if size > MAX_CLASSES_JSON_BYTES:
                raise ValueError(f"classes take {size} bytes as JSON; at most "
                                 f"{MAX_CLASSES_JSON_BYTES}")
        return classes


# ---- directories -------------------------------------------------------------------------

class DirectoryCreate(_In):
    dataset: DatasetRef
    directory_path: FolderPath


class DirectoryRename(_In):
    new_name: Name


class DirectoryDeleted(BaseModel):
    full_path: str
    deleted: bool


# ---- uploads -----------------------------------------------------------------------------

class UploadUrlRequest(_In):
    dataset: DatasetRef
    filename: Name
    directory_path: FolderPath | None = "/"
    content_type: ContentType


class UploadUrlOut(BaseModel):
    filename: str
    directory_path: str
    upload_url: str
    expires_in_minutes: int


class BulkUploadItem(_In):
    filename: Name
    directory_path: FolderPath | None = "/"
    content_type: ContentType


class BulkUploadUrlRequest(_In):
    dataset: DatasetRef
    images: list[BulkUploadItem] = Field(min_length=1, max_length=MAX_BULK_FILES)


class BulkUploadUrl(BaseModel):
    filename: str
    directory_path: str
    upload_url: str


class BulkUploadUrlOut(BaseModel):
    upload_urls: list[BulkUploadUrl]
    expires_in_minutes: int


class RegisterItem(_In):
    filename: Name
    directory_path: FolderPath | None = "/"
    file_size: int | None = Field(default=None, ge=0)
    content_type: ContentType
    width: int | None = Field(default=None, ge=0)
    height: int | None = Field(default=None, ge=0)


class RegisterRequest(RegisterItem):
    dataset: DatasetRef


class BulkRegisterRequest(_In):
    dataset: DatasetRef
    images: list[RegisterItem] = Field(min_length=1, max_length=MAX_BULK_FILES)


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
    dataset: DatasetRef
    image_ids: list[ImageId] = Field(max_length=MAX_BATCH_IDS)
    tags: list[Tag] = Field(max_length=MAX_TAGS)
    add: bool = True


class ProcessedOut(BaseModel):
    processed: int


class BatchDeleteRequest(_In):
    dataset_name: DatasetRef
    image_ids: list[ImageId] = Field(max_length=MAX_BATCH_IDS)
    permanent: bool = False


class BatchUpdates(_In):
    is_archived: bool | None = None
    status: Status | None = None


class BatchUpdateRequest(_In):
    dataset_name: DatasetRef
    image_ids: list[ImageId] = Field(max_length=MAX_BATCH_IDS)
    updates: BatchUpdates


class BatchMoveRequest(_In):
    dataset_name: DatasetRef
    image_ids: list[ImageId] = Field(max_length=MAX_BATCH_IDS)
    target_directory_path: FolderPath


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
    annotations: list[Annotation] = Field(max_length=MAX_ANNOTATIONS)


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
        (413, "Over 50 MB (an image), or a request body over 4 MiB"),
        (415, "Unsupported extension or not an image"),
        (422, "Validation error"),
    )
}
