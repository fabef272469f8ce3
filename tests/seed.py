"""Filling datasets for tests through the real API, fast: bulk upload-url, parallel PUTs,
bulk register (the same routes the workflows use)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from imagegen import png_bytes
from pictofs.api import images as images_api
from pictofs.model import Image
from pictofs.names import content_type_for


def seed_images(client, dataset_id: str, folder: str, names: list[str],  # type: ignore[no-untyped-def]
                data_for: Callable[[str], bytes] | None = None, workers: int = 8
                ) -> dict[str, tuple[Image, bytes]]:
    """Upload ``names`` into ``folder``; returns name → (image, bytes)."""
    t = client.transport
    made: dict[str, tuple[Image, bytes]] = {}
    for start in range(0, len(names), images_api.BULK_LIMIT):
        batch = names[start:start + images_api.BULK_LIMIT]
        payloads = {n: (data_for(n) if data_for else png_bytes(hash((folder, n)) & 0xFFFFFF))
                    for n in batch}
        tickets = images_api.bulk_upload_urls(
            t, dataset_id, folder, [(n, content_type_for(n)) for n in batch])
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda tk: images_api.put_bytes(t, tk, payloads[tk.filename],
                                                          len(payloads[tk.filename])), tickets))
        items = [images_api.RegisterItem(n, folder, len(payloads[n]), content_type_for(n))
                 for n in batch]
        result = images_api.bulk_register(t, dataset_id, items)
        assert not result.failed, result.failed
        for image in result.succeeded:
            made[image.filename] = (image, payloads[image.filename])
    return made
