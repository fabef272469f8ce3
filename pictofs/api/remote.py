"""``ApiRemote``: the core's ``Remote`` protocol over the HTTP routes.

Translates domain verbs (paths inside a dataset, image ids) into route calls of
``pictofs.api.images``/``folders``/``datasets``/``batch``/``annotations``. Errors arrive
already typed by the transport (each a subclass of a domain error). ``ping`` uses a second
transport without retries and with short timeouts, so the circuit breaker's probe answers fast.
``without_retries`` gives the upload queue a twin whose failed requests come back at once: the
queue retries the step itself, with the same backoff, while its worker goes on with other files.
"""

from __future__ import annotations

import contextlib
import copy
from typing import BinaryIO, Iterator, Sequence

from pictofs.api import annotations as annotations_api
from pictofs.api import batch as batch_api
from pictofs.api import datasets as datasets_api
from pictofs.api import folders as folders_api
from pictofs.api import images as images_api
from pictofs.api.errors import ApiError, ConflictError, NotFoundError
from pictofs.api.retry import RetryPolicy
from pictofs.api.transport import Body, Transport
from pictofs.config import Connection
from pictofs.model import Dataset, Folder, Image, Page

PROBE_TIMEOUT = (2.0, 5.0)


class ApiRemote:
    def __init__(self, connection: Connection, timeout: float = 30.0, retries: int = 3,
                 retry_max_wait: float = 30.0, pool_size: int = 16) -> None:
        if not connection.api_key:
            raise ValueError("ApiRemote needs a connection with a key")
        policy = RetryPolicy(max_retries=retries, max_delay=retry_max_wait)
        self.transport = Transport(connection.base_url, connection.api_key,
                                   timeout=(5.0, timeout), retry=policy, pool_size=pool_size)
        self._probe = Transport(connection.base_url, connection.api_key, timeout=PROBE_TIMEOUT,
                                retry=RetryPolicy(max_retries=0), pool_size=1)

    def close(self) -> None:
        self.transport.close()
        self._probe.close()

    def without_retries(self) -> "ApiRemote":
        """This remote (same class, same connection pool) with no transport retries. Closing
        this remote closes the twin; the twin itself is never closed on its own."""
        twin = copy.copy(self)
        twin.transport = copy.copy(self.transport)
        twin.transport.retry = RetryPolicy(max_retries=0,
                                           max_delay=self.transport.retry.max_delay)
        return twin

    def ping(self) -> None:
        datasets_api.list_page(self._probe, limit=1)

    # ----------------------------------------------------------------- datasets

    def list_datasets(self) -> list[Dataset]:
        return list(datasets_api.iter_datasets(self.transport))

    def get_dataset(self, name_or_id: str) -> Dataset:
        return datasets_api.get(self.transport, name_or_id)

    def create_dataset(self, name: str) -> Dataset:
        return datasets_api.create(self.transport, name)

    # ------------------------------------------------------------------ listing

    def list_images_page(self, dataset_id: str, folder: str, *, offset: int = 0,
                         limit: int = 1000, include_archived: bool = False) -> Page[Image]:
        # the mount keeps listed images for a while: without their URLs (unused here)
        return images_api.list_page(self.transport, dataset_id, directory_path=folder,
                                    include_archived=include_archived, limit=limit,
                                    offset=offset, parse=Image.from_listing)

    def find_image(self, dataset_id: str, folder: str, filename: str) -> Image | None:
        page = images_api.list_page(self.transport, dataset_id, directory_path=folder,
                                    filename=filename, limit=10)
        for image in page.items:
            if (image.filename == filename and image.directory_path == folder
                    and not image.is_archived):
                return image
        return None

    def list_folders(self, dataset_id: str, parent: str | None) -> list[Folder]:
        parent_path = None if parent is None else ("" if parent == "/" else parent)
        return folders_api.list_folders(self.transport, dataset_id, parent_path)

    def get_image(self, image_id: str) -> Image:
        return images_api.get_metadata(self.transport, image_id)

    # -------------------------------------------------------------------- bytes

    @contextlib.contextmanager
    def open_bytes(self, image_id: str) -> Iterator[Iterator[bytes]]:
        with images_api.open_bytes(self.transport, image_id) as stream:
            yield iter(stream)

    # ------------------------------------------------------------------ writing

    def upload(self, dataset_id: str, folder: str, filename: str, data: BinaryIO, size: int,
               content_type: str, width: int | None, height: int | None,
               idempotency_keys: Sequence[str] | None = None) -> Image:
        """The three steps; ``idempotency_keys`` = (upload-url key, register key)."""
        keys = list(idempotency_keys or ())
        url_key = keys[0] if keys else None
        register_key = keys[1] if len(keys) > 1 else None
        ticket = self.request_upload(dataset_id, folder, filename, content_type, url_key)
        self.put_upload(ticket, data, size)
        return self.register_upload(dataset_id, folder, filename, size, content_type, width,
                                    height, register_key)

    def request_upload(self, dataset_id: str, folder: str, filename: str, content_type: str,
                       idempotency_key: str | None = None) -> images_api.UploadTicket:
        return images_api.request_upload_url(self.transport, dataset_id, filename, folder,
                                             content_type, idempotency_key=idempotency_key)

    def put_upload(self, ticket: images_api.UploadTicket, data: Body, size: int) -> None:
        images_api.put_bytes(self.transport, ticket, data, size)

    def register_upload(self, dataset_id: str, folder: str, filename: str, size: int,
                        content_type: str, width: int | None, height: int | None,
                        idempotency_key: str | None = None) -> Image:
        item = images_api.RegisterItem(filename=filename, directory_path=folder,
                                       file_size=size, content_type=content_type,
                                       width=width, height=height)
        return images_api.register(self.transport, dataset_id, item,
                                   idempotency_key=idempotency_key)

    def archive(self, dataset_id: str, image_ids: Sequence[str], permanent: bool = False
                ) -> None:
        result = batch_api.delete(self.transport, dataset_id, image_ids, permanent=permanent)
        _raise_first_failure(result, "archive" if not permanent else "delete")

    def restore(self, dataset_id: str, image_ids: Sequence[str]) -> None:
        _raise_first_failure(batch_api.restore(self.transport, dataset_id, image_ids),
                             "restore")

    def move(self, dataset_id: str, image_ids: Sequence[str], target_folder: str) -> int:
        """Returns how many images the service renamed on arrival (a name clash)."""
        return batch_api.move(self.transport, dataset_id, image_ids, target_folder).renamed

    def make_folder(self, dataset_id: str, path: str) -> Folder:
        return folders_api.create_folder(self.transport, dataset_id, path)

    def rename_folder(self, dataset_id: str, path: str, new_name: str) -> None:
        folders_api.rename_folder(self.transport, dataset_id, path, new_name)

    def delete_folder(self, dataset_id: str, path: str) -> None:
        folders_api.delete_folder(self.transport, dataset_id, path)

    # ----------------------------------------------------------------- metadata

    def get_annotations(self, image: Image) -> list[dict]:
        return annotations_api.get_annotations(self.transport, image.dataset_id, image.path)

    def save_annotations(self, image: Image, annotations: list[dict]) -> None:
        annotations_api.save_annotations(self.transport, image.dataset_id, image.path,
                                         annotations)

    def set_split(self, image: Image, split: str | None) -> Image:
        return images_api.set_split(self.transport, image.dataset_id, image.path, split)

    def set_tags(self, dataset_id: str, image_id: str, add: Sequence[str],
                 remove: Sequence[str]) -> None:
        if add:
            images_api.bulk_tag(self.transport, dataset_id, [image_id], add, add=True)
        if remove:
            images_api.bulk_tag(self.transport, dataset_id, [image_id], remove, add=False)

    def set_status(self, dataset_id: str, image_ids: Sequence[str], status: str) -> None:
        batch_api.update(self.transport, dataset_id, image_ids, status=status)


def _raise_first_failure(result: batch_api.BatchResult, verb: str) -> None:
    """A batch answers 200 with per-id failures: the first one becomes a typed error (the
    other ids were processed)."""
    if not result.failed:
        return
    failure = result.failed[0]
    reason = failure.reason.lower()
    if "already exists" in reason:
        cls: type[ApiError] = ConflictError
    elif "not found" in reason:
        cls = NotFoundError
    else:
        cls = ApiError
    raise cls(None, "batch_item_failed", f"cannot {verb} image {failure.id}: {failure.reason}")
