"""Uploading one local file: the checks made before any request, and the three steps.

``prepare`` checks a local file the way the service would (name rules, extension, the 50 MB
limit) and probes its dimensions from the header, so a doomed upload sends nothing. The
errors it raises are the ones the service would answer with (``UnsupportedMediaError`` =
415, ``PayloadTooLargeError`` = 413, ``InvalidNameError`` = 400) with ``request_id`` None.
``upload_one`` then does upload-url → PUT → register; with a caller's idempotency key every
step's key is derived from it, so repeating the call returns the first image.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pictofs import imaging, names
from pictofs.api import images as images_api
from pictofs.api.errors import (
    ForbiddenError,
    InvalidNameError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from pictofs.api.transport import Transport
from pictofs.api.wire import derive_idempotency_key
from pictofs.errors import InvalidName
from pictofs.model import Image, join_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalImage:
    """A local file checked and ready to upload."""

    path: Path
    filename: str
    size: int
    content_type: str
    width: int | None
    height: int | None

    def register_item(self, directory_path: str) -> images_api.RegisterItem:
        return images_api.RegisterItem(
            filename=self.filename, directory_path=directory_path,
            file_size=self.size, content_type=self.content_type,
            width=self.width, height=self.height)


def prepare(file_path: str | os.PathLike[str]) -> LocalImage:
    """Check a local file before any request and probe its dimensions."""
    path = Path(file_path)
    name = path.name
    check_filename(name)
    size = path.stat().st_size  # FileNotFoundError / IsADirectoryError pass through as they are
    if not path.is_file():
        raise IsADirectoryError(f"not a regular file: {path}")
    if size > names.MAX_IMAGE_BYTES:
        raise PayloadTooLargeError(
            413, "payload_too_large",
            f"{name} is {size:,} bytes; the limit is {names.MAX_IMAGE_BYTES:,} bytes (50 MB); "
            "nothing was sent")
    dimensions = imaging.probe(path)
    width, height = dimensions if dimensions else (None, None)
    return LocalImage(path=path, filename=name, size=size,
                      content_type=names.content_type_for(name), width=width, height=height)


def check_filename(name: str) -> None:
    """Name rules and supported extension, as typed API errors (400 / 415)."""
    try:
        names.check_name(name)
    except InvalidName as exc:
        raise InvalidNameError(400, "invalid_name", str(exc)) from None
    if not names.is_supported(name):
        raise UnsupportedMediaError(
            415, "unsupported_media_type",
            f"{name!r}: unsupported file type; supported: {' '.join(names.SUPPORTED_EXTENSIONS)}")


def folder_path(path: str) -> str:
    """A virtual folder path in canonical form, or ``InvalidNameError``."""
    try:
        return names.normalize_folder(path)
    except InvalidName as exc:
        raise InvalidNameError(400, "invalid_name", str(exc)) from None


def upload_one(
    t: Transport,
    dataset: str,
    local: LocalImage,
    directory_path: str,
    *,
    idempotency_key: str | None = None,
) -> Image:
    """The three steps for one file. A signed URL refused with 403 (expired) is asked for
    again once."""
    ticket_key = derive_idempotency_key(idempotency_key, "upload-url") if idempotency_key else None
    register_key = derive_idempotency_key(idempotency_key, "register") if idempotency_key else None
    ticket = images_api.request_upload_url(t, dataset, local.filename, directory_path,
                                           local.content_type, idempotency_key=ticket_key)
    try:
        images_api.put_bytes(t, ticket, local.path, local.size)
    except ForbiddenError:
        log.info("upload URL for %s refused; asking for a fresh one",
                 join_path(directory_path, local.filename))
        ticket = images_api.request_upload_url(t, dataset, local.filename, directory_path,
                                               local.content_type)
        images_api.put_bytes(t, ticket, local.path, local.size)
    image = images_api.register(t, dataset, local.register_item(directory_path),
                                idempotency_key=register_key)
    log.debug("uploaded %s as %s (%s)", local.path.name, image.path, image.id)
    return image
