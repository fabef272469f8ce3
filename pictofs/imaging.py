"""The only Pillow user on the client side: image dimensions and "is this an image?".

``probe`` reads only an image's header (``Image.open`` is lazy; pixels are never decoded)
and returns the EXIF-oriented ``(width, height)`` — swapped for orientations 5 to 8 — or None
when it cannot tell. ``identify`` says which format some bytes are, or raises
``pictofs.errors.NotAnImage``; ``describe`` does both from one read. pillow-heif's opener is registered when it is installed, so
HEIC headers are probed too.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from typing import IO, Iterator, Union

from PIL import Image, UnidentifiedImageError

from pictofs.errors import NotAnImage

log = logging.getLogger(__name__)

Source = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

ORIENTATION_TAG = 0x0112
_IMAGE_WIDTH, _IMAGE_LENGTH = 0x0100, 0x0101  # TIFF tags
_TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Formats whose EXIF lives in the header; for the others Pillow would decode to find it.
_HEADER_EXIF_FORMATS = frozenset({"JPEG", "MPO", "TIFF", "WEBP", "HEIF", "AVIF"})


@functools.cache
def _register_plugins() -> bool:
    """Register pillow-heif's opener once; False when pillow-heif is not installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        log.debug("pillow-heif not installed: HEIC headers cannot be probed")
        return False
    register_heif_opener()
    return True


def probe(source: Source) -> tuple[int, int] | None:
    """``(width, height)`` as displayed (EXIF orientation applied), from the header only;
    None when the source is not an image Pillow can read. A file object is left where it
    was."""
    _register_plugins()
    try:
        with _reading(source) as fp, Image.open(fp) as img:
            width, height = _stored_size(img)
            if _orientation(img) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            return width, height
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        log.debug("cannot probe image dimensions: %s", exc)
        return None


@contextlib.contextmanager
def _identified(source: Source) -> Iterator[Image.Image]:
    """The image Pillow opens (its header only) from ``source``; ``NotAnImage`` when it
    cannot."""
    _register_plugins()
    try:
        with _reading(source) as fp, Image.open(fp) as img:
            yield img
    except UnidentifiedImageError:
        raise NotAnImage("not an image: Pillow cannot identify these bytes") from None
    except Image.DecompressionBombError as exc:
        raise NotAnImage(f"refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise NotAnImage(f"not a readable image: {exc}") from None


def identify(source: Source) -> str:
    """The Pillow format name (``"JPEG"``, ``"PNG"``, ``"HEIF"``, ...) of the bytes, read from
    the header; raises ``NotAnImage`` for bytes Pillow cannot identify."""
    with _identified(source) as img:
        return str(img.format or "unknown")


def describe(source: Source) -> tuple[str, tuple[int, int] | None]:
    """``identify`` and ``probe`` from one read of the header: the format name, and the
    oriented ``(width, height)`` or None; ``NotAnImage`` as ``identify``."""
    with _identified(source) as img:
        image_format = str(img.format or "unknown")
        try:
            width, height = _stored_size(img)
            if _orientation(img) in _TRANSPOSED_ORIENTATIONS:
                width, height = height, width
            return image_format, (width, height)
        except (OSError, ValueError, SyntaxError) as exc:
            log.debug("cannot probe image dimensions: %s", exc)
            return image_format, None


# How much of a file ``describe_head`` hands Pillow at first: every header of an ordinary
# image (EXIF is at most 64 KB in a JPEG; PNG's IHDR comes first), in one read.
HEAD_BYTES = 64 * 1024


def describe_head(head: bytes, size: int, source: Source) -> tuple[str, tuple[int, int] | None]:
    """``describe`` from the first bytes of a file of ``size`` bytes (``head``: up to
    ``HEAD_BYTES``, read by the caller with one ``pread``), and from ``source`` (the whole
    file) only when Pillow needs more than them: a header that runs past them (large ICC
    profiles, text chunks before the pixels). ``NotAnImage`` as ``describe``."""
    try:
        return describe(head)
    except NotAnImage:
        if len(head) >= size:
            raise
    return describe(source)


def is_image(source: Source) -> bool:
    try:
        identify(source)
    except NotAnImage:
        return False
    return True


def _stored_size(img: Image.Image) -> tuple[int, int]:
    """The size as stored, before orientation. Recent Pillow versions already report a TIFF's
    size oriented; its width and length tags are the stored size on every version."""
    tags = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tags is not None and _IMAGE_WIDTH in tags and _IMAGE_LENGTH in tags:
        return int(tags[_IMAGE_WIDTH]), int(tags[_IMAGE_LENGTH])
    return img.size


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 when absent), without decoding pixels."""
    if img.format not in _HEADER_EXIF_FORMATS and "exif" not in img.info:
        return 1
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as exc:
        log.debug("unreadable EXIF: %s", exc)
        return 1
    return value if isinstance(value, int) else 1


@contextlib.contextmanager
def _reading(source: Source) -> Iterator[IO[bytes]]:
    """A readable binary file for any ``Source``: a path is opened (and closed), bytes are
    wrapped, and a caller's file object is put back where it was."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as handle:
            yield handle
    else:
        position = source.tell()
        try:
            yield source
        finally:
            source.seek(position)
