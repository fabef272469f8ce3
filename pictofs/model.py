"""The objects every layer shares: Image, Dataset, Folder, Page, and the local server's
proof of identity (``server_proof``).

These mirror the wire objects of the protocol (shared/spec/protocol.md §3). The API client
builds them from JSON with ``from_json``; the reference server renders them with
``to_json``. They are plain frozen dataclasses: no I/O, no HTTP, no FUSE.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

IMAGE_STATUSES = ("new", "annotate", "review", "complete")
SPLITS = ("train", "val", "test")
ROLES = ("viewer", "member", "admin", "owner")


def parse_timestamp(value: str | None) -> float | None:
    """ISO-8601 (with ``Z`` or an offset, or naive meaning UTC) → POSIX seconds."""
    if not value:
        return None
    moment = datetime.fromisoformat(value.strip())  # Python 3.11 reads "Z" and offsets
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_timestamp(seconds: float) -> str:
    """POSIX seconds → ISO-8601 UTC with a ``Z``, microsecond precision."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Keep only the keys the dataclass declares (the service may add fields)."""
    names = _field_names(cls)
    return {k: v for k, v in data.items() if k in names}


# Values many images share (one dataset, a few folders, statuses, content types): one copy
# each instead of one per image. A listing of 100,000 images kept about 1 KB per image.
_SHARED = ("dataset_id", "directory_path", "status", "split", "content_type")
_URL_FIELDS = frozenset({"image_url", "thumbnail_url", "annotation_url"})


def _interned(value: Any) -> Any:
    """A string shared by many images (a dataset id, a folder, a status) kept once."""
    return sys.intern(value) if type(value) is str else value


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    dataset_id: str
    filename: str
    directory_path: str = "/"
    status: str = "new"
    split: str | None = None
    annotation_count: int = 0
    min_confidence: float | None = None
    file_size: int = 0
    width: int | None = None
    height: int | None = None
    content_type: str = "application/octet-stream"
    tags: tuple[str, ...] = ()
    is_archived: bool = False
    image_url: str | None = None
    thumbnail_url: str | None = None
    annotation_url: str | None = None
    created_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Image:
        values = _known(cls, data)
        values["tags"] = tuple(values.get("tags") or ())
        values["directory_path"] = values.get("directory_path") or "/"
        values["annotation_count"] = values.get("annotation_count") or 0
        values["file_size"] = values.get("file_size") or 0
        for key in _SHARED:
            value = values.get(key)
            if type(value) is str:
                values[key] = sys.intern(value)
        return cls(**values)

    @classmethod
    def from_listing(cls, data: dict[str, Any]) -> Image:
        """``from_json`` without the URLs (``image_url``, ``thumbnail_url``,
        ``annotation_url``): what a mount keeps of a listed image. It fetches bytes and
        annotations by id and path, and the URLs, unique to each image, were about 300
        bytes of every listed image's memory (30 MB in a folder of 100,000). Made in one
        pass (a listing makes 100,000 of them: the general path took 6.6 µs each, this one
        about a third of that); the same image as ``from_json`` of the data without its
        URLs."""
        get = data.get
        if "id" not in data or "dataset_id" not in data or "filename" not in data:
            return cls.from_json({key: value for key, value in data.items()
                                  if key not in _URL_FIELDS})  # its error for what is missing
        tags = get("tags")
        return cls(id=data["id"], dataset_id=_interned(data["dataset_id"]),
                   filename=data["filename"],
                   directory_path=_interned(get("directory_path") or "/"),
                   status=_interned(get("status", "new")), split=_interned(get("split")),
                   annotation_count=get("annotation_count") or 0,
                   min_confidence=get("min_confidence"), file_size=get("file_size") or 0,
                   width=get("width"), height=get("height"),
                   content_type=_interned(get("content_type", "application/octet-stream")),
                   tags=tuple(tags) if tags else (), is_archived=get("is_archived", False),
                   created_at=get("created_at"))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        return data

    @property
    def path(self) -> str:
        """Full path inside the dataset: ``/cars/x.jpg`` or ``/x.jpg``."""
        return join_path(self.directory_path, self.filename)

    @property
    def created_ts(self) -> float | None:
        return parse_timestamp(self.created_at)


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    organization_id: str | None = None
    description: str | None = None
    annotation_types: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    image_count: int = 0
    archived_image_count: int = 0
    total_size: int = 0
    is_archived: bool = False
    created_at: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dataset:
        values = _known(cls, data)
        values["annotation_types"] = tuple(values.get("annotation_types") or ())
        values["classes"] = tuple(
            c if isinstance(c, str) else str(c.get("name", c)) for c in (values.get("classes") or ())
        )
        for key in ("image_count", "archived_image_count", "total_size"):
            values[key] = values.get(key) or 0
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["annotation_types"] = list(self.annotation_types)
        data["classes"] = list(self.classes)
        return data


@dataclass(frozen=True)
class Folder:
    """A virtual folder (the wire calls it a Directory)."""

    id: str
    dataset_id: str
    name: str
    full_path: str
    parent_directory_id: str | None = None
    image_count: int = 0
    nested_image_count: int = 0
    created_at: str | None = None
    updated_at: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Folder:
        """Either wire shape: folder reads on the hosted service say ``project_id`` (and
        ``full_path``), its create and rename answers ``dataset_id`` and ``directory_path``
        (the official SDK's ``Directory`` takes both)."""
        data = dict(data)
        for canonical, legacy in (("dataset_id", "project_id"), ("full_path", "directory_path")):
            if canonical not in data and legacy in data:
                data[canonical] = data[legacy]
        values = _known(cls, data)
        values["image_count"] = values.get("image_count") or 0
        values["nested_image_count"] = values.get("nested_image_count") or 0
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a paged list, with the pagination block of the envelope."""

    items: list[T] = field(default_factory=list)
    limit: int = 0
    offset: int = 0
    total: int | None = None  # None when the service does not say
    has_more: bool = False


def join_path(directory: str, name: str) -> str:
    """``("/", "x.jpg")`` → ``/x.jpg``; ``("/a/b", "x.jpg")`` → ``/a/b/x.jpg``."""
    return ("" if directory == "/" else directory) + "/" + name


def split_path(path: str) -> tuple[str, str]:
    """``/a/b/x.jpg`` → ``("/a/b", "x.jpg")``; ``/x.jpg`` → ``("/", "x.jpg")``."""
    head, _, tail = path.rstrip("/").rpartition("/")
    return (head or "/"), tail


# The embedded default's proof of identity (pictofs.embedded asks, the reference server
# answers): the HMAC-SHA256 of a challenge under the secret in the data folder's PROOF_FILE.
PROOF_FILE = "server.secret"
CHALLENGE_HEADER = "X-Pictofs-Challenge"
PROOF_HEADER = "X-Pictofs-Proof"


def server_proof(secret: bytes, challenge: str) -> str:
    import hashlib
    import hmac

    return hmac.new(secret, challenge.encode("ascii"), hashlib.sha256).hexdigest()
