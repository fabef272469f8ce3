"""The server's own name and path rules (protocol §3), deliberately independent of the client's.

A filename is one path segment of 1 to 255 bytes of UTF-8, with no ``/``, no NUL or other
control character, and not ``.`` or ``..``. Folder paths are ``/`` or ``/a/b``; every segment
follows the filename rules (without the extension rule). Dataset names follow the segment rules
too, so a name always fits in one URL segment.

These are pure functions that raise ``ApiFailure`` (400 for a bad name, 415 for an extension
or content type the service does not take).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from pictofs.server.failures import ApiFailure, bad_request, unsupported

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_IMAGE_BYTES = 52_428_800  # 50 MB
SUPPORTED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic")
HEIC_EXTENSIONS = (".heic",)
ROOT = "/"

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                      re.IGNORECASE)


def is_uuid(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def check_segment(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid single path segment, else raise 400 ``invalid_name``."""
    if not isinstance(name, str) or not name:
        raise bad_request(f"{what} must be a non-empty string", code="invalid_name")
    if name in (".", ".."):
        raise bad_request(f"{what} cannot be '.' or '..'", code="invalid_name", name=name)
    if "/" in name:
        raise bad_request(f"{what} cannot contain '/'", code="invalid_name", name=name)
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise bad_request(f"{what} cannot contain control characters", code="invalid_name",
                          name=name.encode("unicode_escape").decode("ascii"))
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise bad_request(f"{what} is longer than {MAX_NAME_BYTES} bytes", code="name_too_long")
    return name


def extension(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def check_filename(name: object) -> str:
    """A valid segment with a supported extension (400 for the name, 415 for the extension)."""
    checked = check_segment(name, "filename")
    if extension(checked) not in SUPPORTED_EXTENSIONS:
        raise unsupported(
            f"unsupported file type {extension(checked) or '(none)'!r}; supported: "
            + " ".join(SUPPORTED_EXTENSIONS),
            code="unsupported_extension", filename=checked)
    return checked


def is_heic(name: str) -> bool:
    return extension(name) in HEIC_EXTENSIONS


def check_content_type(content_type: object) -> str:
    """Only ``image/*`` content types are taken (415 otherwise)."""
    if not isinstance(content_type, str) or not content_type.strip():
        raise bad_request("content_type is required", code="validation_error")
    value = content_type.strip()
    if not value.lower().startswith("image/"):
        raise unsupported(f"content type {value!r} is not an image type", content_type=value)
    return value


def normalize_directory(path: object) -> str:
    """``""``, ``"/"``, ``"a/b/"``, ``"/a//b"`` → ``"/"``, ``"/"``, ``"/a/b"``, ``"/a/b"``.

    Every segment must be a valid name; ``.`` and ``..`` are refused, never resolved.
    """
    if path is None:
        return ROOT
    if not isinstance(path, str):
        raise bad_request("directory_path must be a string", code="invalid_name")
    parts = [part for part in path.split("/") if part]
    for part in parts:
        check_segment(part, "folder name")
    normalized = "/" + "/".join(parts)
    if len(normalized.encode("utf-8")) > MAX_PATH_BYTES:
        raise bad_request(f"directory_path is longer than {MAX_PATH_BYTES} bytes",
                          code="name_too_long")
    return normalized


def check_dataset_name(name: object) -> str:
    return check_segment(name.strip() if isinstance(name, str) else name, "dataset name")


def split_image_path(img_path: str) -> tuple[str, str]:
    """The ``{img_path}`` of a route (``cars/red/x.jpg`` or ``x.jpg``) → (folder, filename).

    Raises 404 rather than 400 for a malformed path: such a path names no image.
    """
    head, _, tail = img_path.strip("/").rpartition("/")
    try:
        return normalize_directory(head), check_segment(tail, "filename")
    except ApiFailure:
        raise ApiFailure(404, "not_found", f"no image at {img_path!r}") from None


def join(directory: str, name: str) -> str:
    return (directory.rstrip("/") or "") + "/" + name


def parent(directory: str) -> str:
    head = directory.rstrip("/").rpartition("/")[0]
    return head or ROOT


def basename(directory: str) -> str:
    return directory.rstrip("/").rpartition("/")[2]


def ancestors(directory: str) -> list[str]:
    """``/a/b/c`` → ``["/a", "/a/b", "/a/b/c"]``; ``/`` → ``[]``."""
    parts = [p for p in directory.split("/") if p]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def is_within(path: str, directory: str) -> bool:
    """True if ``path`` is ``directory`` or below it."""
    if directory == ROOT:
        return True
    return path == directory or path.startswith(directory + "/")


def suffixed_name(filename: str, n: int) -> str:
    """``x.jpg``, 1 → ``x-1.jpg``, keeping the result within 255 bytes of UTF-8."""
    stem, ext = posixpath.splitext(filename)
    suffix = f"-{n}{ext}"
    room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    encoded = stem.encode("utf-8")
    if len(encoded) > room:
        stem = encoded[:room].decode("utf-8", errors="ignore")
    return stem + suffix


def png_name(filename: str) -> str:
    """``photo.heic`` → ``photo.png`` (HEIC uploads are stored as PNG)."""
    return posixpath.splitext(filename)[0] + ".png"
