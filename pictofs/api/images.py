"""Thin wrappers over the image routes of protocol §4 ("Images"), returning model objects.

Each function takes the ``Transport`` first and does one request (``iter_images`` pages).
``dataset`` is a dataset name or UUID everywhere. Paths are full image paths inside the
dataset (``/cars/x.jpg``). The batch routes (by id) live in ``batch.py``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator, Sequence

from pictofs.api.transport import Body, Transport
from pictofs.api.wire import (ByteStream, dataset_ref, dataset_segment, image_segment, iter_pages,
                              page_of, path_segments, unwrap)
from pictofs.model import Image, Page

PAGE_LIMIT = 1000
BULK_LIMIT = 500


@dataclass(frozen=True)
class UploadTicket:
    """Step 1's answer: where to PUT one file. ``issued_at`` is ``time.monotonic()``."""

    filename: str
    directory_path: str
    upload_url: str
    content_type: str
    expires_in_minutes: float = 15.0
    issued_at: float = field(default_factory=time.monotonic)

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.issued_at

    def __repr__(self) -> str:  # the URL is a credential: keep it out of reprs and logs
        return (f"UploadTicket(filename={self.filename!r}, "
                f"directory_path={self.directory_path!r}, content_type={self.content_type!r})")


@dataclass(frozen=True)
class RegisterItem:
    """One file of step 3."""

    filename: str
    directory_path: str
    file_size: int
    content_type: str
    width: int | None = None
    height: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "directory_path": self.directory_path,
                "file_size": self.file_size, "content_type": self.content_type,
                "width": self.width, "height": self.height}


@dataclass(frozen=True)
class RegisterFailure:
    filename: str
    directory_path: str
    error: str


@dataclass(frozen=True)
class BulkRegisterResult:
    succeeded: list[Image]
    failed: list[RegisterFailure]


# ---------------------------------------------------------------------- reading


def list_page(
    t: Transport,
    dataset: str,
    *,
    directory_path: str | None = None,
    filename: str | None = None,
    include_archived: bool = False,
    limit: int = PAGE_LIMIT,
    offset: int = 0,
    parse: Callable[[dict[str, Any]], Image] = Image.from_json,
) -> Page[Image]:
    """One page of images, newest first. ``directory_path`` is an exact (not recursive) match.
    ``parse`` makes each image (``Image.from_listing``: without its URLs)."""
    params: dict[str, Any] = {"dataset": dataset_ref(dataset), "limit": limit, "offset": offset}
    if directory_path is not None:
        params["directory_path"] = directory_path
    if filename is not None:
        params["filename"] = filename
    if include_archived:
        params["include_archived"] = "true"
    body, _ = t.request_json("GET", "/images/", params=params)
    return page_of(body, parse)


def iter_images(
    t: Transport,
    dataset: str,
    *,
    directory_path: str | None = None,
    include_archived: bool = False,
    page_size: int = PAGE_LIMIT,
) -> Iterator[Image]:
    """Every image, page after page: the offset advances by the items received, paging stops
    when ``has_more`` is false, and an image seen twice (the listing moved) is yielded once."""
    return iter_pages(lambda offset: list_page(
        t, dataset, directory_path=directory_path, include_archived=include_archived,
        limit=page_size, offset=offset))


def get_metadata(t: Transport, image_id: str) -> Image:
    body, _ = t.request_json("GET", f"/images/{image_segment(image_id)}/metadata")
    return Image.from_json(unwrap(body))


def get_metadata_by_path(t: Transport, dataset: str, path: str) -> Image:
    """By full path (non-archived images only)."""
    body, _ = t.request_json(
        "GET", f"/images/{dataset_segment(dataset)}/{path_segments(path)}/metadata")
    return Image.from_json(unwrap(body))


def open_bytes(t: Transport, image_id: str) -> contextlib.AbstractContextManager[ByteStream]:
    """Stream an image's bytes by id: ``with open_bytes(t, id) as stream: for chunk in stream``."""
    return t.stream("GET", f"/images/{image_segment(image_id)}")


def open_bytes_by_path(
    t: Transport, dataset: str, path: str
) -> contextlib.AbstractContextManager[ByteStream]:
    return t.stream("GET", f"/images/{dataset_segment(dataset)}/{path_segments(path)}")


def download_to(t: Transport, image_id: str, out: IO[bytes]) -> None:
    """Write an image's bytes into ``out`` (starting over if the stream is cut short)."""
    t.download(f"/images/{image_segment(image_id)}", out)


def open_url(t: Transport, url: str) -> contextlib.AbstractContextManager[ByteStream]:
    """Stream an ``image_url`` from an answer (re-based on the configured base URL)."""
    return t.stream("GET", url)


# ---------------------------------------------------------------------- uploading


def request_upload_url(
    t: Transport,
    dataset: str,
    filename: str,
    directory_path: str,
    content_type: str,
    *,
    idempotency_key: str | None = None,
) -> UploadTicket:
    """Step 1: the service checks extension (415), name (400) and collision (409)."""
    payload = {"dataset": dataset_ref(dataset), "filename": filename,
               "directory_path": directory_path, "content_type": content_type}
    body, _ = t.request_json("POST", "/images/upload-url", json=payload,
                             idempotency_key=idempotency_key)
    data = unwrap(body)
    return UploadTicket(
        filename=data.get("filename", filename),
        directory_path=data.get("directory_path", directory_path),
        upload_url=data["upload_url"],
        content_type=content_type,
        expires_in_minutes=float(data.get("expires_in_minutes") or 15),
    )


def put_bytes(t: Transport, ticket: UploadTicket, body: Body, size: int) -> None:
    """Step 2: the bytes to the signed URL (no API key), with the ticket's content type."""
    t.put_signed(ticket.upload_url, body, ticket.content_type, size)


def register(t: Transport, dataset: str, item: RegisterItem, *,
             idempotency_key: str | None = None) -> Image:
    """Step 3: 201 + the Image (409 collision, 413 too large, 415 not an image)."""
    payload = {"dataset": dataset_ref(dataset), **item.to_json()}
    body, _ = t.request_json("POST", "/images/register", json=payload,
                             idempotency_key=idempotency_key)
    return Image.from_json(unwrap(body))


def bulk_upload_urls(
    t: Transport,
    dataset: str,
    directory_path: str,
    files: Sequence[tuple[str, str]],
    *,
    idempotency_key: str | None = None,
) -> list[UploadTicket]:
    """Step 1 for up to 500 ``(filename, content_type)`` pairs of ONE folder, in order."""
    if len(files) > BULK_LIMIT:
        raise ValueError(f"at most {BULK_LIMIT} files per bulk upload-url call")
    images = [{"filename": name, "directory_path": directory_path, "content_type": ctype}
              for name, ctype in files]
    body, _ = t.request_json("POST", "/images/bulk-upload-url",
                             json={"dataset": dataset_ref(dataset), "images": images},
                             idempotency_key=idempotency_key)
    data = unwrap(body)
    minutes = float(data.get("expires_in_minutes") or 15)
    issued = time.monotonic()
    return [
        UploadTicket(filename=entry.get("filename", name),
                     directory_path=entry.get("directory_path", directory_path),
                     upload_url=entry["upload_url"], content_type=ctype,
                     expires_in_minutes=minutes, issued_at=issued)
        for entry, (name, ctype) in zip(data["upload_urls"], files)
    ]


def bulk_register(
    t: Transport, dataset: str, items: Sequence[RegisterItem], *,
    idempotency_key: str | None = None,
) -> BulkRegisterResult:
    """Step 3 for many files: per-file successes and failures, in request order."""
    body, _ = t.request_json("POST", "/images/bulk-register",
                             json={"dataset": dataset_ref(dataset),
                                   "images": [i.to_json() for i in items]},
                             idempotency_key=idempotency_key)
    data = unwrap(body)
    return BulkRegisterResult(
        succeeded=[Image.from_json(x) for x in data.get("succeeded") or ()],
        failed=[RegisterFailure(filename=str(x.get("filename", "")),
                                directory_path=str(x.get("directory_path", "")),
                                error=str(x.get("error", "")))
                for x in data.get("failed") or ()],
    )


# ---------------------------------------------------------------------- changing


def delete_by_path(t: Transport, dataset: str, path: str, *, permanent: bool = False) -> str:
    """Archive (or permanently delete) the image at ``path``; returns the service's message."""
    params = {"permanent": "true"} if permanent else None
    body, _ = t.request_json(
        "DELETE", f"/images/{dataset_segment(dataset)}/{path_segments(path)}", params=params)
    return str((body or {}).get("message", ""))


def set_split(t: Transport, dataset: str, path: str, split: str | None) -> Image:
    body, _ = t.request_json(
        "POST", f"/images/{dataset_segment(dataset)}/{path_segments(path)}/split",
        json={"split": split})
    return Image.from_json(unwrap(body))


def bulk_tag(t: Transport, dataset: str, image_ids: Sequence[str], tags: Sequence[str], *,
             add: bool = True) -> int:
    """Add (or remove) user tags; returns how many images were processed."""
    body, _ = t.request_json("POST", "/images/bulk-tag", json={
        "dataset": dataset_ref(dataset), "image_ids": list(image_ids), "tags": list(tags),
        "add": add})
    return int(unwrap(body).get("processed", 0))

