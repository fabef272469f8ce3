"""The server's only Pillow user: decode stored bytes, measure them, name their type, convert
HEIC to PNG.

The decompression-bomb guard stays on: Pillow's default ``Image.MAX_IMAGE_PIXELS``, with
``DecompressionBombWarning`` promoted to an error process-wide by ``configure()`` (so a
warning-sized bomb is refused like an error-sized one), plus an explicit pixel check. Any
refusal is a 415.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from pictofs.server.failures import unsupported

log = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)
_configure_lock = threading.Lock()  # guards _configured
_configured = False


def configure() -> None:
    """Register the HEIF opener and make decompression-bomb warnings errors (idempotent)."""
    global _configured
    with _configure_lock:
        if _configured:
            return
        import pillow_heif

        pillow_heif.register_heif_opener()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _configured = True


# The types of the formats the service takes, by Pillow's format name (MPO: a camera's JPEG
# with extra frames, which any JPEG reader shows).
_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
          "BMP": "image/bmp", "DIB": "image/bmp", "TIFF": "image/tiff", "GIF": "image/gif",
          "HEIF": "image/heic"}


@dataclass(frozen=True)
class Decoded:
    """What decoding found: displayed (EXIF-oriented) size and Pillow's format name."""

    width: int
    height: int
    format: str

    @property
    def content_type(self) -> str:
        """The MIME type of the bytes, whatever their name or the client said."""
        found = _TYPES.get(self.format) or Image.MIME.get(self.format, "")
        return found if found.startswith("image/") else "application/octet-stream"


def _refuse_bomb(width: int, height: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise unsupported(f"image of {width}x{height} pixels exceeds the limit of {limit} pixels",
                          code="decompression_bomb")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise unsupported(f"refused as a decompression bomb: {exc}",
                          code="decompression_bomb") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise unsupported("the uploaded bytes are not a decodable image",
                          code="not_an_image") from None
    return image


def inspect(path: Path) -> Decoded:
    """Fully decode the image at ``path``; 415 if it is not an image or is too large."""
    configure()
    with _open(path) as image:
        _refuse_bomb(*image.size)
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise unsupported(f"refused as a decompression bomb: {exc}",
                              code="decompression_bomb") from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise unsupported("the uploaded bytes are not a decodable image",
                              code="not_an_image") from None
        width, height = image.size
        try:
            orientation = image.getexif().get(_ORIENTATION_TAG)
        except (OSError, ValueError, SyntaxError):
            orientation = None
        if orientation in _SWAPPED_ORIENTATIONS:
            width, height = height, width
        return Decoded(width, height, image.format or "")


def heic_to_png(path: Path) -> tuple[bytes, int, int]:
    """Decode a HEIC file; returns PNG bytes (pixels EXIF-oriented), width and height."""
    configure()
    with _open(path) as image:
        _refuse_bomb(*image.size)
        try:
            oriented = ImageOps.exif_transpose(image) or image
            if oriented.mode not in ("RGB", "RGBA", "L", "LA", "I;16"):
                oriented = oriented.convert("RGBA" if "A" in oriented.mode else "RGB")
            out = io.BytesIO()
            oriented.save(out, format="PNG")
            width, height = oriented.size
        except (OSError, ValueError, SyntaxError, EOFError):
            raise unsupported("the uploaded HEIC bytes cannot be decoded",
                              code="not_an_image") from None
    return out.getvalue(), width, height
