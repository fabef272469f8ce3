"""The seed documentation's resource objects: ``client.images``, ``client.projects`` (alias
``client.datasets``) and ``client.annotations``.

Each method is a few lines over the route modules; the shape (image ids first,
``dataset_id=``, ``file_path=``, ``folder_path=``) is the one users know from the product docs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator

from pictofs.api import annotations as annotations_api
from pictofs.api import batch
from pictofs.api import datasets as datasets_api
from pictofs.api import images as images_api
from pictofs.api import uploads
from pictofs.api.errors import ApiError, NotFoundError
from pictofs.api.transport import Transport
from pictofs.model import Dataset, Image

log = logging.getLogger(__name__)


class ImagesResource:
    """Single-image operations: get, upload, download, delete, list."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, image_id: str) -> Image:
        """Metadata of one image (archived images answer with ``is_archived`` True)."""
        return images_api.get_metadata(self._t, image_id)

    def upload(
        self,
        dataset_id: str,
        file_path: str | os.PathLike[str],
        folder_path: str = "/",
        idempotency_key: str | None = None,
    ) -> Image:
        """Upload a local file: upload URL → PUT → register. Unsupported extensions
        (``ValidationError``) and files over 50 MB (``ApiError``, status 413) fail before any
        request; a taken name raises ``ConflictError``. HEIC comes back as ``<stem>.png``."""
        local = uploads.prepare(file_path)
        return uploads.upload_one(self._t, dataset_id, local, uploads.folder_path(folder_path),
                          idempotency_key=idempotency_key)

    def download(self, image_id: str, output_path: str | os.PathLike[str]) -> Path:
        """Stream the original bytes to ``output_path``: written to ``<output>.part``, then
        renamed into place; a stream cut short starts over; on any failure the ``.part``
        file is removed."""
        target = Path(output_path)
        part = target.with_name(target.name + ".part")
        try:
            with open(part, "wb") as out:
                images_api.download_to(self._t, image_id, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        log.debug("downloaded %s to %s", image_id, target)
        return target

    def delete(self, image_id: str, permanent: bool = False) -> None:
        """Archive the image (recoverable), or with ``permanent=True`` delete it for good."""
        image = images_api.get_metadata(self._t, image_id)
        result = batch.delete(self._t, image.dataset_id, [image.id], permanent=permanent)
        if result.failed:
            reason = result.failed[0].reason
            cls = NotFoundError if "not found" in reason.lower() else ApiError
            raise cls(None, "batch_item_failed", f"cannot delete image {image_id}: {reason}")

    def list(
        self,
        dataset_id: str,
        folder_path: str | None = None,
        include_archived: bool = False,
    ) -> Iterator[Image]:
        """Every image of the dataset (or of one folder, not recursive), newest first, paged
        1000 at a time and de-duplicated by id."""
        directory = uploads.folder_path(folder_path) if folder_path is not None else None
        return images_api.iter_images(self._t, dataset_id, directory_path=directory,
                                      include_archived=include_archived)


class ProjectsResource:
    """Datasets ("projects" in the product docs)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, name_or_id: str) -> Dataset:
        return datasets_api.get(self._t, name_or_id)

    def list(self) -> list[Dataset]:
        return list(datasets_api.iter_datasets(self._t))

    def create(self, name: str, description: str | None = None) -> Dataset:
        return datasets_api.create(self._t, name, description)


class AnnotationsResource:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, image_id: str) -> list[dict[str, Any]]:
        """The annotations of one image (an empty list if none)."""
        image = images_api.get_metadata(self._t, image_id)
        return annotations_api.get_annotations(self._t, image.dataset_id, image.path)

