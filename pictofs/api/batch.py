"""Thin wrappers over the batch routes (protocol §4): archive/delete, update, move — by id.

Batch routes take up to 10,000 ids and answer a bare
``{"success", "processed", "failed": [{"id", "reason"}], "renamed", "operation"}``.
Longer id lists are sent in several calls and their results merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from pictofs.api.transport import Transport

BATCH_LIMIT = 10_000


@dataclass(frozen=True)
class BatchFailure:
    id: str
    reason: str


@dataclass(frozen=True)
class BatchResult:
    processed: int = 0
    failed: list[BatchFailure] = field(default_factory=list)
    renamed: int = 0
    operation: str | None = None

    @property
    def success(self) -> bool:
        return not self.failed

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchResult:
        failed = [BatchFailure(id=str(f.get("id", "")), reason=str(f.get("reason", "")))
                  for f in data.get("failed") or ()]
        renamed = data.get("renamed") or 0
        return cls(processed=int(data.get("processed") or 0), failed=failed,
                   renamed=renamed if isinstance(renamed, int) else len(renamed),
                   operation=data.get("operation"))

    def merged(self, other: BatchResult) -> BatchResult:
        return BatchResult(processed=self.processed + other.processed,
                           failed=self.failed + other.failed,
                           renamed=self.renamed + other.renamed,
                           operation=other.operation or self.operation)


def delete(t: Transport, dataset: str, image_ids: Sequence[str], *,
           permanent: bool = False) -> BatchResult:
    """Archive (``operation == "archived"``) or permanently delete (``"deleted"``) by id."""
    return _batched(t, "POST", "/batch/images/delete", image_ids,
                    {"dataset_name": dataset, "permanent": permanent})


def update(t: Transport, dataset: str, image_ids: Sequence[str], *,
           is_archived: bool | None = None, status: str | None = None) -> BatchResult:
    """``is_archived=False`` restores from the archive; ``status`` sets the annotation stage."""
    updates: dict[str, Any] = {}
    if is_archived is not None:
        updates["is_archived"] = is_archived
    if status is not None:
        updates["status"] = status
    if not updates:
        raise ValueError("nothing to update: give is_archived and/or status")
    return _batched(t, "PATCH", "/batch/images/update", image_ids,
                    {"dataset_name": dataset, "updates": updates})


def restore(t: Transport, dataset: str, image_ids: Sequence[str]) -> BatchResult:
    return update(t, dataset, image_ids, is_archived=False)


def move(t: Transport, dataset: str, image_ids: Sequence[str],
         target_directory_path: str) -> BatchResult:
    """Move images to another folder; a clash is auto-renamed ``x-1.jpg`` (``renamed``)."""
    return _batched(t, "POST", "/batch/images/move", image_ids,
                    {"dataset_name": dataset, "target_directory_path": target_directory_path})


def _batched(t: Transport, method: str, path: str, image_ids: Sequence[str],
             fields: dict[str, Any]) -> BatchResult:
    ids = list(image_ids)
    result = BatchResult()
    for start in range(0, max(len(ids), 1), BATCH_LIMIT):
        chunk = ids[start:start + BATCH_LIMIT]
        body, _ = t.request_json(method, path, json={**fields, "image_ids": chunk})
        result = result.merged(BatchResult.from_json(body or {}))
    return result
