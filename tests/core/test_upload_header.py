"""The upload uses what the writer's flush read from the header (``job.Header``) instead of
opening the staged bytes with Pillow again, and only for the bytes it was read from: the
staging file is hashed first, and bytes with another sha256 are read again. Against the
real reference server, single uploads and batches.

The header handed over here claims dimensions the PNG does not have, so the image the
service registers shows which answer the upload used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import pytest

from harness import ServerHandle
from imagegen import png_bytes
from pictofs.api.bulk_remote import BulkApiRemote
from pictofs.config import Connection
from pictofs.core.upload.job import Header
from pictofs.core.upload.journal import Journal
from pictofs.core.upload.queue import UploadQueue
from pictofs.model import Dataset, Image

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0  # seconds: only so that a broken test fails instead of hanging
CLAIMED = (1234, 567)  # not the PNGs' 8 × 6


@pytest.fixture()
def remote(server: ServerHandle) -> Iterator[BulkApiRemote]:
    api = BulkApiRemote(Connection(server.base_url, server.key, "argument"), timeout=30.0,
                    retries=3, retry_max_wait=0.2)
    yield api
    api.close()


@pytest.mark.parametrize("batch", [1, 8])
def test_the_upload_uses_the_flushs_header_only_for_the_bytes_it_was_read_from(
        tmp_path: Path, server: ServerHandle, dataset: Dataset, remote: BulkApiRemote,
        batch: int) -> None:
    journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id, server.key)
    landed: dict[str, Image] = {}
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0, batch=batch,
                        on_registered=lambda e, image: landed.update({e: image}))
    headers = {"same.png": lambda sha256: Header(sha256, CLAIMED),
               "other.png": lambda sha256: Header("0" * 64, CLAIMED),  # bytes changed since
               "none.png": lambda sha256: None}
    ids = {}
    try:
        for n, (name, header) in enumerate(headers.items()):
            data = png_bytes(7600 + n)
            sha256 = hashlib.sha256(data).hexdigest()
            entry_id = queue.stage("/h", name)
            journal.staging_path(entry_id).write_bytes(data)
            queue.flushed(entry_id, len(data), sha256, header(sha256))
            queue.schedule(entry_id, 0.0)
            ids[name] = entry_id
        queue.start()
        assert queue.wait_idle(WAIT)
    finally:
        assert queue.stop(WAIT)
        journal.close()
    sizes = {name: (landed[entry_id].width, landed[entry_id].height)
             for name, entry_id in ids.items()}
    assert sizes == {"same.png": CLAIMED, "other.png": (8, 6), "none.png": (8, 6)}
