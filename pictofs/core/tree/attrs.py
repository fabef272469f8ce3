"""Pure attribute building: ``stat`` dictionaries and extended attributes (filesystem §2).

Nothing here does I/O. ``AttrPolicy`` carries the mount's owner and modes; ``file_stat`` and
``dir_stat`` turn an image or a folder into the dictionary fusepy expects; the xattr helpers
answer ``listxattr``/``getxattr`` from an ``Image`` of a listing, so ``getfattr -d`` costs no
request.
"""

from __future__ import annotations

import functools
import json
import stat as statmod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable

from pictofs.model import Image

XATTR_PREFIX = "user.pictograph."
LISTED_XATTRS = ("id", "status", "split", "tags", "annotation_count", "width", "height",
                 "content_type", "created_at")
ANNOTATIONS_XATTR = XATTR_PREFIX + "annotations"
WRITABLE_XATTRS = ("split", "tags")
MAX_XATTR_SIZE = 64 * 1024
ERROR_XATTR = "user.pictofs.error"
# on a file kept on this machine only (filesystem §5 "Names that stay local"); its value
LOCAL_ONLY_XATTR = "user.pictofs.local_only"
LOCAL_ONLY_VALUE = b"not on the service"
# what pictofs works out itself (the service's record, the upload's state, where a file is
# kept): setting or removing one is accepted and ignored, whatever the value, so a copy of a
# file that came out of a mount (cp -a, rsync -aX, mv across datasets) goes back in without
# an error per attribute, and rsync -aX can clear what its source does not have
DERIVED_XATTRS = frozenset([XATTR_PREFIX + name for name in LISTED_XATTRS
                            if name not in WRITABLE_XATTRS]
                           + [ANNOTATIONS_XATTR, ERROR_XATTR, LOCAL_ONLY_XATTR])


@dataclass(frozen=True)
class AttrPolicy:
    """Owner and permission bits shown for every node of a mount."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755
    umask: int = 0
    read_only: bool = False

    def _bits(self, mode: int) -> int:
        bits = mode & ~self.umask & 0o7777
        if self.read_only:
            bits &= ~0o222
        return bits

    @property
    def file_bits(self) -> int:
        return self._bits(self.file_mode)

    @property
    def dir_bits(self) -> int:
        return self._bits(self.dir_mode)


def _ns(seconds: float) -> int:
    """fusepy with ``use_ns`` takes times as integer nanoseconds."""
    return int(round(seconds * 1_000_000_000))


FILE_STAT_KEYS = ("st_mode", "st_nlink", "st_size", "st_blocks", "st_blksize", "st_uid",
                  "st_gid", "st_mtime", "st_ctime", "st_atime")
_TIMES = frozenset(("st_mtime", "st_ctime", "st_atime"))


class FileStat(Mapping[str, Any]):
    """A file's stat, read as the dict ``dir_stat`` gives (fusepy takes any mapping), but
    compact: what every file of a mount shares (``fixed``: mode, link count, block size,
    owner) is one dict per policy, and each file holds its size and mtime (nanoseconds)
    alone. Kept for every listed image (a folder's rows), it takes about 120 bytes instead
    of a dict's 550. Immutable."""

    __slots__ = ("fixed", "st_size", "st_mtime")

    def __init__(self, fixed: dict[str, int], size: int, mtime_ns: int) -> None:
        self.fixed = fixed
        self.st_size = size
        self.st_mtime = mtime_ns

    @property
    def st_blocks(self) -> int:
        return -(-self.st_size // 512)

    def __getitem__(self, key: str) -> Any:
        if key == "st_size":
            return self.st_size
        if key in _TIMES:
            return self.st_mtime
        if key == "st_blocks":
            return self.st_blocks
        return self.fixed[key]

    def __iter__(self) -> Iterator[str]:
        return iter(FILE_STAT_KEYS)

    def __len__(self) -> int:
        return len(FILE_STAT_KEYS)

    def __repr__(self) -> str:
        return f"FileStat({dict(self)!r})"


@functools.lru_cache(maxsize=64)
def _file_fixed(policy: AttrPolicy) -> dict[str, int]:
    """What every file of a mount with ``policy`` shows alike (one dict, shared)."""
    return {"st_mode": statmod.S_IFREG | policy.file_bits, "st_nlink": 1,
            "st_blksize": 131072, "st_uid": policy.uid, "st_gid": policy.gid}


def file_stat(policy: AttrPolicy, size: int, mtime: float) -> FileStat:
    return FileStat(_file_fixed(policy), size, _ns(mtime))


def file_stats(policy: AttrPolicy) -> Callable[[int, float], FileStat]:
    """``file_stat`` for one policy, its shared fields looked up once: for the rows of a
    listing of 100,000 images, where hashing the policy per image showed."""
    fixed = _file_fixed(policy)
    return lambda size, mtime: FileStat(fixed, size, _ns(mtime))


def dir_stat(policy: AttrPolicy, subfolders: int, mtime: float) -> dict[str, Any]:
    return {
        "st_mode": statmod.S_IFDIR | policy.dir_bits,
        "st_nlink": 2 + subfolders,
        "st_size": 4096,
        "st_blocks": 8,
        "st_blksize": 4096,
        "st_uid": policy.uid,
        "st_gid": policy.gid,
        "st_mtime": _ns(mtime),
        "st_ctime": _ns(mtime),
        "st_atime": _ns(mtime),
    }


def image_mtime(image: Image, recorded: float | None = None) -> float:
    """The mtime a writer set (recorded per image id), else ``created_at``."""
    if recorded is not None:
        return recorded
    return image.created_ts or 0.0


def xattr_names(image: Image) -> list[str]:
    """What ``listxattr`` shows: the cheap attributes only (not ``.annotations``)."""
    return [XATTR_PREFIX + name for name in LISTED_XATTRS]


def xattr_value(image: Image, name: str) -> bytes | None:
    """The value of a listed attribute from the image record, or None if ``name`` is not one
    of them (``.annotations`` is fetched by the caller)."""
    if not name.startswith(XATTR_PREFIX):
        return None
    field = name[len(XATTR_PREFIX):]
    if field not in LISTED_XATTRS:
        return None
    value = getattr(image, field)
    if field == "tags":
        return json.dumps(list(value), ensure_ascii=False).encode()
    if value is None:
        return b""
    return str(value).encode()


def writable_field(name: str) -> str | None:
    """``split`` or ``tags`` for their attribute names, else None."""
    field = name[len(XATTR_PREFIX):] if name.startswith(XATTR_PREFIX) else ""
    return field if field in WRITABLE_XATTRS else None


def is_shown(name: str) -> bool:
    """An attribute pictofs shows on a file (derived or writable): removing one is accepted
    and ignored (filesystem §2)."""
    return name in DERIVED_XATTRS or writable_field(name) is not None


def parse_writable(field: str, raw: bytes) -> Any:
    """The value of ``split`` or ``tags`` (ValueError if it is not one)."""
    return parse_split(raw) if field == "split" else parse_tags(raw)


def writable_value(field: str, value: Any) -> bytes:
    """How a kept ``split``/``tags`` value reads back (as ``xattr_value`` shows it)."""
    if field == "tags":
        return json.dumps(list(value), ensure_ascii=False).encode()
    return b"" if value is None else str(value).encode()


def parse_tags(raw: bytes) -> list[str]:
    """A ``user.pictograph.tags`` value: a JSON array of strings. ValueError otherwise."""
    value = json.loads(raw.decode("utf-8"))
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError("tags must be a JSON array of strings")
    return value


def parse_split(raw: bytes) -> str | None:
    """A ``user.pictograph.split`` value: train, val, test, or empty for none."""
    text = raw.decode("utf-8").strip()
    if text in ("", "null", "none"):
        return None
    if text not in ("train", "val", "test"):
        raise ValueError("split must be train, val, test or empty")
    return text
