"""Small, unique, valid image files for tests, made with Pillow (no fixtures on disk)."""

from __future__ import annotations

import io
import random

from PIL import Image


def png_bytes(seed: int = 0, size: tuple[int, int] = (8, 6)) -> bytes:
    """A PNG whose pixels depend on ``seed`` (so every seed gives different bytes)."""
    rng = random.Random(seed)
    image = Image.new("RGB", size)
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                   for _ in range(size[0] * size[1])])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (16, 12), quality: int = 90) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def sized_jpeg(total_bytes: int, seed: int = 0) -> bytes:
    """A valid JPEG padded to exactly ``total_bytes`` (trailing bytes after EOI are ignored
    by decoders), for tests that need big images cheaply."""
    head = jpeg_bytes(seed)
    if total_bytes < len(head):
        raise ValueError("too small for a JPEG")
    rng = random.Random(seed)
    return head + rng.randbytes(total_bytes - len(head))


def heic_bytes(seed: int = 0, size: tuple[int, int] = (16, 12)) -> bytes:
    """A HEIC file (as phones write them; the service stores it as a PNG), one colour per
    ``seed``."""
    import pillow_heif  # slow to import: only the tests that make HEIC pay for it

    pillow_heif.register_heif_opener()
    rng = random.Random(seed)
    image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, format="HEIF")
    return out.getvalue()
