"""The Remote protocol: the verbs the core (VFS, cache, upload queue, mirror) needs from a
Pictograph service, in domain terms.

The core depends on this protocol only, never on HTTP: ``pictofs.api.remote.ApiRemote``
implements it over the API client, and core tests may use any other implementation. Errors are
the domain errors of ``pictofs.errors`` (NotFound, AlreadyExists, NotEmpty, PermissionDenied,
Unavailable, ...). Paths are dataset paths: folders ``/`` or ``/a/b``, images ``/a/b/x.jpg``.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import BinaryIO, Iterator, Protocol, Sequence, Union

from pictofs.model import Dataset, Folder, Image, Page

UploadBody = Union[bytes, "os.PathLike[str]", BinaryIO]


class UploadTicket(Protocol):
    """Step 1's answer: where step 2 sends the bytes. Opaque to the core but for the name the
    service will store (its URL is a credential: never log it)."""

    @property
    def filename(self) -> str: ...

    @property
    def directory_path(self) -> str: ...


class Remote(Protocol):
    def ping(self) -> None:
        """Return when the service answers; raise Unavailable when it cannot be reached."""
        ...

    # datasets
    def list_datasets(self) -> list[Dataset]: ...
    def get_dataset(self, name_or_id: str) -> Dataset: ...
    def create_dataset(self, name: str) -> Dataset: ...

    # listing
    def list_images_page(self, dataset_id: str, folder: str, *, offset: int = 0,
                         limit: int = 1000, include_archived: bool = False) -> Page[Image]: ...
    def find_image(self, dataset_id: str, folder: str, filename: str) -> Image | None: ...
    def list_folders(self, dataset_id: str, parent: str | None) -> list[Folder]: ...
    def get_image(self, image_id: str) -> Image: ...

    # bytes
    def open_bytes(self, image_id: str) -> AbstractContextManager[Iterator[bytes]]: ...

    # writing
    def upload(self, dataset_id: str, folder: str, filename: str, data: BinaryIO, size: int,
               content_type: str, width: int | None, height: int | None,
               idempotency_keys: Sequence[str] | None = None) -> Image:
        """The three steps below in one call; ``idempotency_keys`` = (url key, register key)."""
        ...

    def request_upload(self, dataset_id: str, folder: str, filename: str, content_type: str,
                       idempotency_key: str | None = None) -> UploadTicket:
        """Step 1: a signed place to PUT the bytes. AlreadyExists when the name is taken,
        Unsupported for an extension the service refuses."""
        ...

    def put_upload(self, ticket: UploadTicket, data: UploadBody, size: int) -> None:
        """Step 2: the bytes to the ticket's place (a path or file is reopened or rewound
        per attempt). PermissionDenied when the ticket expired."""
        ...

    def register_upload(self, dataset_id: str, folder: str, filename: str, size: int,
                        content_type: str, width: int | None, height: int | None,
                        idempotency_key: str | None = None) -> Image:
        """Step 3: the image as the service stored it (its name may differ: HEIC → PNG).
        A repeated ``idempotency_key`` returns the first answer."""
        ...

    def archive(self, dataset_id: str, image_ids: Sequence[str], permanent: bool = False
                ) -> None:
        """By id; NotFound for an id the dataset does not have (the others are processed)."""
        ...

    def restore(self, dataset_id: str, image_ids: Sequence[str]) -> None:
        """By id; AlreadyExists when the name is taken again, NotFound for an unknown id."""
        ...

    def move(self, dataset_id: str, image_ids: Sequence[str], target_folder: str) -> int: ...
    def make_folder(self, dataset_id: str, path: str) -> Folder: ...
    def rename_folder(self, dataset_id: str, path: str, new_name: str) -> None: ...
    def delete_folder(self, dataset_id: str, path: str) -> None: ...

    # metadata
    def get_annotations(self, image: Image) -> list[dict]: ...
    def save_annotations(self, image: Image, annotations: list[dict]) -> None: ...
    def set_split(self, image: Image, split: str | None) -> Image: ...
    def set_tags(self, dataset_id: str, image_id: str, add: Sequence[str],
                 remove: Sequence[str]) -> None: ...
    def set_status(self, dataset_id: str, image_ids: Sequence[str], status: str) -> None: ...
