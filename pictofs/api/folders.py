"""Thin wrappers over the directory (virtual folder) routes of protocol §4.

Folder paths are absolute inside the dataset (``/cars/red``); in a route they become
``{dir}`` = the path without the leading slash, percent-encoded with ``/`` kept.
"""

from __future__ import annotations

from typing import Any

from pictofs.api.errors import NetworkError
from pictofs.api.transport import Transport
from pictofs.api.wire import dataset_ref, dataset_segment, path_segments, unwrap
from pictofs.model import Folder


def list_folders(t: Transport, dataset: str, parent_path: str | None = None) -> list[Folder]:
    """Folders of a dataset: all of them (``parent_path=None``), the root level (``""``), or
    the children of ``parent_path``. The route answers a bare array."""
    params = None if parent_path is None else {"parent_path": parent_path}
    body, _ = t.request_json("GET", f"/directories/{dataset_segment(dataset)}", params=params)
    if isinstance(body, dict) and "data" in body:  # tolerate an enveloped answer
        body = body["data"]
    if not isinstance(body, list):
        raise NetworkError(f"expected a list of directories, got {type(body).__name__}")
    return [Folder.from_json(item) for item in body]


def create_folder(t: Transport, dataset: str, path: str) -> Folder:
    """Create ``path`` and its parents; creating an existing folder is not an error."""
    body, _ = t.request_json("POST", "/directories/",
                             json={"dataset": dataset_ref(dataset), "directory_path": path})
    return Folder.from_json(unwrap(body))


def rename_folder(t: Transport, dataset: str, path: str, new_name: str) -> Folder | None:
    """Rename the last segment of ``path`` (its subfolders and images follow); 409 if a
    sibling has that name. Returns the renamed folder when the answer includes it."""
    body, _ = t.request_json(
        "PATCH", f"/directories/{dataset_segment(dataset)}/{path_segments(path)}/rename",
        json={"new_name": new_name})
    return _folder_or_none(body)


def delete_folder(t: Transport, dataset: str, path: str) -> None:
    """Delete an empty folder (``FolderNotEmptyError`` otherwise, ``NotFoundError`` if unknown)."""
    t.request_json("DELETE", f"/directories/{dataset_segment(dataset)}/{path_segments(path)}")


def _folder_or_none(body: Any) -> Folder | None:
    data = body.get("data", body) if isinstance(body, dict) else None
    if isinstance(data, dict) and "id" in data and "full_path" in data:
        return Folder.from_json(data)
    return None
