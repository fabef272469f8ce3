"""Pure name rules of the client side: valid filenames, supported extensions, local-only names.

Protocol §3: a filename is one path segment of 1 to 255 bytes of UTF-8, with no ``/``, no NUL
or other control character, and not ``.`` or ``..``. Filesystem §5: names that stay local
(editor and desktop temp files) and never reach the service. The reference server applies the
same protocol rules with its own code, so a bug here cannot hide a bug there.
"""

from __future__ import annotations

import posixpath
import re

from pictofs.errors import InvalidName, NameTooLong, Unsupported

SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic")
MAX_NAME_BYTES = 255
MAX_IMAGE_BYTES = 50 * 1024 * 1024  # 52,428,800

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".gif": "image/gif",
    ".heic": "image/heic",
}

_LOCAL_SUFFIXES = (".part", ".crdownload", ".tmp", ".swp", ".swx", ".kate-swp")
_LOCAL_NAMES = frozenset({"Thumbs.db", "desktop.ini"})
# rsync's temporary name of NAME: ".NAME." and six random letters or digits (mkstemp's)
_RSYNC_TEMP = re.compile(r"^\.(.+)\.[A-Za-z0-9]{6}$", re.DOTALL)
_TRASH = re.compile(r"^\.Trash(-\d+)?$")  # a desktop's trash folder (freedesktop.org)


def check_name(name: str) -> None:
    """Raise InvalidName / NameTooLong unless ``name`` is a valid single segment."""
    if not name or name in (".", ".."):
        raise InvalidName(f"invalid name {name!r}")
    if "/" in name:
        raise InvalidName(f"a name cannot contain '/': {name!r}")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in name):  # C0, DEL, C1
        raise InvalidName(f"a name cannot contain control characters: {name!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"a name must be valid UTF-8: {name!r}") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise NameTooLong(f"name longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}…")


def extension(name: str) -> str:
    """Lower-cased extension with the dot, or ``""``."""
    return posixpath.splitext(name)[1].lower()


def stored_as(name: str) -> str:
    """The name the service stores a file written as ``name`` under: HEIC is converted and
    stored as ``<stem>.png``; every other name as it is."""
    if extension(name) == ".heic":
        return name[: -len(".heic")] + ".png"
    return name


def is_supported(name: str) -> bool:
    return extension(name) in SUPPORTED_EXTENSIONS


def check_supported(name: str) -> None:
    """Raise Unsupported for an extension the service does not take."""
    check_name(name)
    if not is_supported(name):
        raise Unsupported(
            f"{name!r}: unsupported file type; supported: {' '.join(SUPPORTED_EXTENSIONS)}"
        )


def content_type_for(name: str) -> str:
    """The Content-Type the upload announces for ``name`` (by extension)."""
    return CONTENT_TYPES.get(extension(name), "application/octet-stream")


def is_local_only(name: str) -> bool:
    """Editor, browser and desktop temp names that never reach the service (filesystem §5)."""
    return (
        name.startswith(".")
        or name.endswith("~")
        or name.endswith(_LOCAL_SUFFIXES)
        or name in _LOCAL_NAMES
    )


def is_transient(name: str) -> bool:
    """Local-only names that are a step on a file's way, not a file a user keeps: rsync's
    temporary names (``.x.jpg.AbC123``), editor swap files and partial downloads (the
    suffixes ``.part``, ``.crdownload``, ``.tmp``, ``.swp``, ``.swx``, ``.kate-swp``). A
    mount removes one an hour after its last close, and does not keep one across a remount;
    every other local-only file stays until ``rm`` (filesystem §5 "Names that stay local")."""
    return name.endswith(_LOCAL_SUFFIXES) or _RSYNC_TEMP.match(name) is not None


def is_transient_path(path: str) -> bool:
    """A transient name (``is_transient``), or anything in a desktop's trash folder
    (``.Trash``, ``.Trash-1000``), which lives as long as the mount that made it."""
    parts = [p for p in path.split("/") if p]
    return bool(parts) and (is_transient(parts[-1]) or any(_TRASH.match(p) for p in parts))


def is_image_on_its_way(name: str) -> bool:
    """rsync's temporary name of an image (``.x.jpg.AbC123``): its bytes become an upload
    when rsync renames it, so they do not count against ``--local-only-max``."""
    match = _RSYNC_TEMP.match(name)
    return match is not None and is_supported(match.group(1))


def normalize_folder(path: str) -> str:
    """``""``, ``"/"``, ``"cars/"``, ``"/cars//red/"`` → ``"/"``, ``"/"``, ``"/cars"``,
    ``"/cars/red"``. Raises InvalidName for ``.``/``..`` segments or bad characters."""
    parts = [p for p in path.split("/") if p]
    for part in parts:
        check_name(part)
    return "/" + "/".join(parts)


def printable(text: str) -> str:
    """``text`` for one line of a log or a report: control characters (a newline in a file
    name must not start a forged line) and other unprintable characters are escaped like
    Python does (``\\x07``, ``\\n``), and bytes that were not UTF-8 (decoded with
    ``surrogateescape``) are shown as the bytes they were (``\\xff``)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)
