"""Thin wrappers over the annotation routes of protocol §4 (top-level keys, no envelope)."""

from __future__ import annotations

from typing import Any, Sequence

from pictofs.api.errors import NetworkError
from pictofs.api.transport import Transport
from pictofs.api.wire import dataset_segment, path_segments


def get_annotations(t: Transport, dataset: str, path: str) -> list[dict[str, Any]]:
    """The annotations of the image at ``path`` (an empty list if none)."""
    body, _ = t.request_json(
        "GET", f"/annotations/{dataset_segment(dataset)}/{path_segments(path)}")
    annotations = (body or {}).get("annotations", [])
    if not isinstance(annotations, list):
        raise NetworkError(f"expected a list of annotations, got {type(annotations).__name__}")
    return annotations


def save_annotations(t: Transport, dataset: str, path: str,
                     annotations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Replace all annotations of the image; ``{"image_id", "previous_count", "new_count"}``."""
    body, _ = t.request_json(
        "POST", f"/annotations/{dataset_segment(dataset)}/{path_segments(path)}",
        json={"annotations": list(annotations)})
    return dict(body or {})
