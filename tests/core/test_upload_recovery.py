"""Two recoveries of the upload queue against the real reference server (filesystem §5
"Durability", §8 ``sync``):

- a resumed entry whose saved register key the service already answered with an error — as
  it does for a register whose sender was killed mid-request (the body never arrived; the
  answer, 400, is replayed for that key for 24 h) — registers once more with a fresh key
  instead of failing for good; an error answer means nothing was created, so the file still
  lands exactly once;
- ``expedite`` (what ``pictofs sync`` does first) starts uploads that only wait for their
  ``write_back`` delay, and leaves retries and held files alone.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
import requests

from harness import ServerHandle
from imagegen import png_bytes
from journalkit import add_entry, create_staging_file
from pictofs.api.remote import ApiRemote
from pictofs.config import Connection
from pictofs.core.upload.journal import Journal
from pictofs.core.upload.queue import UploadQueue
from pictofs.model import Dataset, Image

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0  # seconds: only so that a broken test fails instead of hanging
REGISTER = "/api/v1/developer/images/register"


@pytest.fixture()
def remote(server: ServerHandle) -> Iterator[ApiRemote]:
    api = ApiRemote(Connection(server.base_url, server.key, "argument"), timeout=30.0,
                    retries=3, retry_max_wait=0.2)
    yield api
    api.close()


@pytest.fixture()
def journal(tmp_path: Path, server: ServerHandle, dataset: Dataset) -> Iterator[Journal]:
    opened = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id, server.key)
    yield opened
    opened.close()


def spoil_key(server: ServerHandle, key: str) -> int:
    """Send a register the service cannot read under ``key``; returns the status it kept."""
    answer = requests.post(server.base_url + REGISTER, data=b'{"dataset": ',
                           headers={**server.headers(), "Idempotency-Key": key,
                                    "Content-Type": "application/json"}, timeout=30)
    return answer.status_code


def test_a_resumed_register_whose_key_holds_an_error_lands_once_with_a_fresh_key(
        server, client, dataset, remote, journal) -> None:
    data = png_bytes(7001)
    key = uuid.uuid4().hex
    assert spoil_key(server, key) in (400, 422)
    # the journal of a process killed after its PUT, with the register key already saved
    entry_id = uuid.uuid4().hex
    add_entry(journal, entry_id, "/kept", "one.png")
    create_staging_file(journal, entry_id)
    journal.staging_path(entry_id).write_bytes(data)
    journal.update(entry_id, flushed=True, size=len(data), state="uploading", step="put",
                   register_key=key)

    landed: dict[str, Image] = {}
    failed: dict[str, str] = {}
    queue = UploadQueue(remote, journal, dataset.id, write_back=0.0, retry_max_wait=0.05,
                        on_registered=lambda e, image: landed.update({e: image}),
                        on_failed=lambda e, reason: failed.update({e: reason}))
    assert queue.resume() == [entry_id]
    queue.start()
    try:
        assert queue.wait_idle(WAIT)
    finally:
        assert queue.stop(WAIT)
    assert failed == {}
    assert [i.filename for i in client.images.list(dataset.id, include_archived=True)] == \
        ["one.png"]
    assert landed[entry_id].filename == "one.png"
    entry = journal.get(entry_id)
    assert entry is not None and entry.state == "done" and entry.register_key != key


def test_expedite_starts_what_waits_for_write_back_only(remote, journal, dataset) -> None:
    queue = UploadQueue(remote, journal, dataset.id, write_back=3600.0)
    waiting = queue.stage("/", "waiting.png")
    journal.staging_path(waiting).write_bytes(png_bytes(7002))
    queue.flushed(waiting, len(png_bytes(7002)))
    queue.schedule(waiting)
    held = queue.stage("/", "held.png")
    journal.staging_path(held).write_bytes(png_bytes(7003))
    queue.flushed(held, len(png_bytes(7003)))
    queue.schedule(held)
    queue.hold(held)  # open for writing again
    queue.start()
    try:
        assert not queue.wait_idle(0.2)
        assert queue.expedite() == 1
        assert queue.wait_idle(WAIT)
        assert journal.get(waiting).state == "done"  # type: ignore[union-attr]
        assert journal.get(held).state == "staged"  # type: ignore[union-attr]
    finally:
        assert queue.stop(WAIT)
