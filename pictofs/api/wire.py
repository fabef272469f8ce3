"""Small wire details: path segments, envelopes, paging, idempotency keys, streamed bodies.

- ``{ds}`` (a dataset name or UUID) is percent-encoded as ONE segment; ``{img_path}`` is the
  image's folder and filename without the leading slash, percent-encoded with ``/`` kept.
- Most answers wrap their payload as ``{"data": ...}``; lists add ``"pagination"``, and
  ``iter_pages`` walks a paged list to its end.
- Idempotency keys are 32 lowercase hex digits. A caller's own key (any text) is turned into
  one per step, so ``upload(..., idempotency_key="job-7")`` sends the same step keys each time.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Protocol, TypeVar
from urllib.parse import quote

from pictofs.api.errors import NetworkError
from pictofs.model import Page

T = TypeVar("T")


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


Item = TypeVar("Item", bound=_HasId)

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
KEYED_METHODS = frozenset({"POST", "PATCH"})


def dataset_ref(dataset: str) -> str:
    """A dataset name or UUID as given, checked: anything else (a ``Dataset`` as
    ``projects.create`` returns it, say) is a ``TypeError`` that says so, before any request
    (in a path, a query or a JSON body alike)."""
    return _ref(dataset, "a dataset is given by its name or id")


def image_ref(image_id: str) -> str:
    """An image's UUID as given, checked as ``dataset_ref`` checks a dataset."""
    return _ref(image_id, "an image is given by its id")


def _ref(value: str, what: str) -> str:
    if not isinstance(value, str):
        hint = f": pass its .id ({value.id!r})" if isinstance(getattr(value, "id", None),
                                                           str) else ""
        raise TypeError(f"{what} (a str), not a {type(value).__name__}{hint}")
    return value


def dataset_segment(dataset: str) -> str:
    """A dataset name or UUID as one percent-encoded path segment (``dataset_ref``)."""
    return quote(dataset_ref(dataset), safe="")


def image_segment(image_id: str) -> str:
    """An image's UUID as one percent-encoded path segment (``image_ref``)."""
    return quote(image_ref(image_id), safe="")


def path_segments(path: str) -> str:
    """``/cars/red/x.jpg`` → ``cars/red/x.jpg``, percent-encoded with ``/`` kept."""
    return quote(path.strip("/"), safe="/")


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def is_idempotency_key(text: str) -> bool:
    return bool(_KEY_RE.match(text))


def derive_idempotency_key(seed: str, step: str = "") -> str:
    """A stable 32-hex key for ``step`` of an operation the caller keyed with ``seed``.
    A seed that already is a valid key is used as it is for the unnamed step."""
    if not step and is_idempotency_key(seed):
        return seed
    digest = hashlib.sha256(f"{seed}\x00{step}".encode("utf-8")).hexdigest()
    return digest[:32]


def idempotency_key_for(method: str, given: str | None) -> str | None:
    """The ``Idempotency-Key`` a request carries: none for GET/PUT/DELETE, the caller's (as
    a valid key) or a fresh one for POST/PATCH."""
    if method.upper() not in KEYED_METHODS:
        return None
    if given is None:
        return new_idempotency_key()
    return given if is_idempotency_key(given) else derive_idempotency_key(given)


@dataclass
class ByteStream:
    """An open download: iterate it (or ``chunks``) for the bytes."""

    headers: Mapping[str, str]
    chunks: Iterator[bytes]

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    @property
    def content_length(self) -> int | None:
        return announced_length(self.headers)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")


def announced_length(headers: Mapping[str, str]) -> int | None:
    """Content-Length as a count of body bytes, or None (absent, or a compressed body)."""
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    value = headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def unwrap(body: Any) -> Any:
    """The payload of a ``{"data": ...}`` envelope."""
    if isinstance(body, dict) and "data" in body:
        return body["data"]
    raise NetworkError(f"unexpected answer shape (no 'data'): {_preview(body)}")


def page_of(body: Any, from_json: Callable[[dict[str, Any]], T]) -> Page[T]:
    """A ``Page`` from a paged envelope. Only ``has_more`` is sure to be there (the
    official SDK reads nothing else): a missing ``total`` is None, a missing ``limit`` or
    ``offset`` 0."""
    items = unwrap(body)
    if not isinstance(items, list):
        raise NetworkError(f"expected a list in 'data': {_preview(body)}")
    pagination = body.get("pagination") or {}
    total = pagination.get("total")
    return Page(
        items=[from_json(item) for item in items],
        limit=int(pagination.get("limit") or 0),
        offset=int(pagination.get("offset") or 0),
        total=int(total) if total is not None else None,
        has_more=bool(pagination.get("has_more")),
    )


def iter_pages(fetch: Callable[[int], Page[Item]]) -> Iterator[Item]:
    """Every item of a paged list, ``fetch(offset)`` giving one page: the offset advances by
    the items received, paging stops when ``has_more`` is false (or a page is empty), and an
    item seen twice (the listing moved) is yielded once, by id."""
    seen: set[str] = set()
    offset = 0
    while True:
        page = fetch(offset)
        for item in page.items:
            if item.id not in seen:
                seen.add(item.id)
                yield item
        offset += len(page.items)
        if not page.has_more or not page.items:
            return


def _preview(body: Any) -> str:
    text = repr(body)
    return text if len(text) <= 200 else text[:200] + "…"
