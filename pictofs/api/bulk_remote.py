"""``BulkApiRemote``: ``ApiRemote`` plus the bulk upload verbs the upload queue batches with
(``pictofs.core.upload.batch.BulkRemote``).

``request_uploads`` is one ``bulk-upload-url`` call (≤ 500 files of one folder);
``register_uploads`` is one ``bulk-register`` call whose per-file answers are matched back to
the request order: a success is the Image, a failure becomes the typed error the single
register would have raised (a name taken → ``ConflictError``, the rest → ``ValidationError``,
permanent for the queue).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, Sequence

from pictofs import names
from pictofs.api import images as images_api
from pictofs.api.errors import ApiError, ConflictError, ValidationError
from pictofs.api.remote import ApiRemote
from pictofs.model import Image


class PutFileLike(Protocol):
    """One file whose bytes were PUT, to register (``pictofs.core.upload.batch.PutFile`` is
    one)."""

    @property
    def filename(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def content_type(self) -> str: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...


class BulkApiRemote(ApiRemote):
    def request_uploads(self, dataset_id: str, folder: str,
                        files: Sequence[tuple[str, str]]) -> list[images_api.UploadTicket]:
        return images_api.bulk_upload_urls(self.transport, dataset_id, folder, files)

    def register_uploads(self, dataset_id: str, folder: str,
                         items: Sequence[PutFileLike]) -> list[Image | Exception]:
        request = [images_api.RegisterItem(filename=i.filename, directory_path=folder,
                                           file_size=i.size, content_type=i.content_type,
                                           width=i.width, height=i.height) for i in items]
        result = images_api.bulk_register(self.transport, dataset_id, request)
        succeeded = deque(result.succeeded)
        failures = {}
        for failure in result.failed:
            failures.setdefault(failure.filename, failure.error)
        answers: list[Image | Exception] = []
        for item in items:
            error = failures.pop(item.filename, None)
            if error is None:
                error = failures.pop(_stored_name(item.filename), None)
            if error is not None:
                answers.append(_register_error(error))
            elif succeeded:
                answers.append(succeeded.popleft())
            else:
                answers.append(ApiError(None, "missing_answer",
                                        f"bulk register said nothing about {item.filename}"))
        return answers


def _register_error(message: str) -> ApiError:
    if "already exists" in message.lower():
        return ConflictError(409, "conflict", message)
    return ValidationError(400, "register_failed", message)


def _stored_name(filename: str) -> str:
    """HEIC is stored (and may be reported) as ``<stem>.png``."""
    if names.extension(filename) == ".heic":
        return filename[: -len(".heic")] + ".png"
    return filename
