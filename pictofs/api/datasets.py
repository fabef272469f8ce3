"""Thin wrappers over the dataset routes of protocol §4, and ``GET /me``."""

from __future__ import annotations

from typing import Any, Iterator

from pictofs.api.errors import NotFoundError
from pictofs.api.transport import Transport
from pictofs.api.wire import dataset_segment, iter_pages, page_of, unwrap
from pictofs.model import Dataset, Page

PAGE_LIMIT = 1000


def list_page(t: Transport, *, limit: int = PAGE_LIMIT, offset: int = 0) -> Page[Dataset]:
    body, _ = t.request_json("GET", "/datasets/", params={"limit": limit, "offset": offset})
    return page_of(body, Dataset.from_json)


def iter_datasets(t: Transport, *, page_size: int = PAGE_LIMIT) -> Iterator[Dataset]:
    """Every dataset of the key's organization, de-duplicated by id."""
    return iter_pages(lambda offset: list_page(t, limit=page_size, offset=offset))


def get(t: Transport, dataset: str) -> Dataset:
    """By name or UUID; ``NotFoundError`` if missing or in another organization."""
    body, _ = t.request_json("GET", f"/datasets/{dataset_segment(dataset)}")
    return Dataset.from_json(unwrap(body))


def create(t: Transport, name: str, description: str | None = None) -> Dataset:
    """A new dataset; ``ConflictError`` if the name exists."""
    payload: dict[str, Any] = {"name": name}
    if description is not None:
        payload["description"] = description
    body, _ = t.request_json("POST", "/datasets/", json=payload)
    return Dataset.from_json(unwrap(body))


def me(t: Transport) -> dict[str, Any] | None:
    """The key's organization and role, or None where the service has no ``/me`` (404)."""
    try:
        body, _ = t.request_json("GET", "/me")
    except NotFoundError:
        return None
    data = unwrap(body)
    return dict(data) if isinstance(data, dict) else None
