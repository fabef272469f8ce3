"""Helpers for the API client's contract tests: make image files, fill datasets quickly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imagegen import png_bytes

from pictofs.api import images as images_api
from pictofs.api.transport import Transport
from pictofs.model import Image


def write_png(path: Path, seed: int = 0, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(seed, size))
    return path


def bulk_fill(t: Transport, dataset_id: str, count: int, *, folder: str = "/",
              prefix: str = "img", seed: int = 0, workers: int = 16) -> list[Image]:
    """``count`` small distinct PNGs in ``folder``, through the bulk routes."""
    images: list[Image] = []
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, count, images_api.BULK_LIMIT):
            numbers = range(start, min(count, start + images_api.BULK_LIMIT))
            names = [f"{prefix}{n:05d}.png" for n in numbers]
            blobs = [png_bytes(seed + n) for n in numbers]
            tickets = images_api.bulk_upload_urls(
                t, dataset_id, folder, [(name, "image/png") for name in names])
            list(pool.map(lambda pair: images_api.put_bytes(t, pair[0], pair[1], len(pair[1])),
                          zip(tickets, blobs)))
            items = [images_api.RegisterItem(name, folder, len(blob), "image/png", 8, 6)
                     for name, blob in zip(names, blobs)]
            result = images_api.bulk_register(t, dataset_id, items)
            assert not result.failed, result.failed[:3]
            images.extend(result.succeeded)
    return images
