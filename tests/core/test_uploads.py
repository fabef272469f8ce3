"""The upload queue (filesystem spec §5 "Writing") against the real reference server over
loopback, through ``ApiRemote``: staging and write-back, parallel transfers, the local checks,
replace (identical, new bytes, conflict, undo), cancel, retarget, hold, the pause after a
rejected key, transient failures through the fault proxy, and crashes at every step boundary
(a driver process killed by ``PICTOFS_FAULT``, then a resume in this process). The pure
decisions (error classes, backoff, the schedule) have table-driven tests at the end."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from faultproxy import FaultProxy
from harness import ServerHandle
from imagegen import jpeg_bytes, png_bytes, sized_jpeg
from pictofs.api import Client
from pictofs.api import errors as api_errors
from pictofs.api.remote import ApiRemote
from pictofs.config import Connection
from pictofs.core.upload.journal import Journal
from pictofs.core.upload.job import Disposition, classify, retry_delay, service_name
from pictofs.core.upload.schedule import Schedule
from pictofs.core.upload.queue import UploadQueue
from pictofs.errors import ConfigError, NoSpace, NotAnImage, Unavailable
from pictofs.model import Dataset, Image
from pictofs.names import MAX_IMAGE_BYTES

pytestmark = pytest.mark.timeout(180)

WAIT = 60.0  # seconds: only so that a broken test fails instead of hanging
UPLOAD_URL = ("POST", "images/upload-url")
PUT = ("PUT", "storage/upload")
REGISTER = ("POST", "images/register")
ARCHIVE = ("POST", "batch/images/delete")
ROUTES = {"url": UPLOAD_URL, "put": PUT, "register": REGISTER, "archive": ARCHIVE}


# ---------------------------------------------------------------------- harness


class Recorder:
    """The queue's callbacks, recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards registered and failures
        self.registered: dict[str, Image] = {}
        self.failures: dict[str, str] = {}

    def on_registered(self, entry_id: str, image: Image) -> None:
        with self._lock:
            self.registered[entry_id] = image

    def on_failed(self, entry_id: str, reason: str) -> None:
        with self._lock:
            self.failures[entry_id] = reason


class Harness:
    """A started queue over its own journal, with its callbacks recorded."""

    def __init__(self, remote: Any, journal: Journal, dataset_id: str, **options: Any) -> None:
        self.journal = journal
        self.recorder = Recorder()
        options.setdefault("write_back", 0.0)
        options.setdefault("retry_max_wait", 0.05)
        self.queue = UploadQueue(remote, journal, dataset_id,
                                 on_registered=self.recorder.on_registered,
                                 on_failed=self.recorder.on_failed, **options)

    def put(self, folder: str, filename: str, data: bytes, *, replaced_id: str | None = None,
            mtime: float | None = None, delay: float | None = None) -> str:
        """What the VFS does for ``cp``: stage, write, flush, (set times), release."""
        entry_id = self.queue.stage(folder, filename, replaced_id)
        self.queue.staging_path(entry_id).write_bytes(data)
        self.queue.flushed(entry_id, len(data))
        if mtime is not None:
            self.queue.set_mtime(entry_id, mtime)
        self.queue.schedule(entry_id, delay)
        return entry_id

    def settle(self) -> None:
        assert self.queue.wait_idle(WAIT), self.queue.entries()

    def close(self) -> None:
        assert self.queue.stop(WAIT)
        self.journal.close()


@pytest.fixture()
def connection(server: ServerHandle) -> Connection:
    return Connection(server.base_url, server.key, "argument")


@pytest.fixture()
def remote(connection: Connection) -> Iterator[ApiRemote]:
    api = ApiRemote(connection, timeout=30.0, retries=3, retry_max_wait=0.2)
    yield api
    api.close()


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture()
def open_journal(state_dir: Path, server: ServerHandle,
                 dataset: Dataset) -> Callable[[], Journal]:
    return lambda: Journal.for_dataset(state_dir, server.base_url, dataset.id, server.key)


@pytest.fixture()
def make_harness(open_journal: Callable[[], Journal], dataset: Dataset,
                 remote: ApiRemote) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(remote_: Any = None, *, start: bool = True, **options: Any) -> Harness:
        harness = Harness(remote_ or remote, open_journal(), dataset.id, **options)
        made.append(harness)
        if start:
            harness.queue.start()
        return harness

    yield make
    for harness in made:
        harness.close()


def counts(server: ServerHandle) -> dict[str, int]:
    return {name: server.calls(*route) for name, route in ROUTES.items()}


def delta(server: ServerHandle, before: dict[str, int]) -> dict[str, int]:
    after = counts(server)
    return {name: after[name] - before[name] for name in ROUTES}


def images_in(client: Client, dataset: Dataset, folder: str, *,
              archived: bool = False) -> list[Image]:
    return [i for i in client.images.list(dataset.id, folder_path=folder,
                                          include_archived=archived)
            if i.directory_path == folder]


def names_in(client: Client, dataset: Dataset, folder: str) -> list[str]:
    return sorted(i.filename for i in images_in(client, dataset, folder))


def bytes_of(remote: ApiRemote, image_id: str) -> bytes:
    with remote.open_bytes(image_id) as chunks:
        return b"".join(chunks)


def upload_directly(client: Client, dataset: Dataset, tmp_path: Path, folder: str, name: str,
                    data: bytes) -> Image:
    """An image put there by "another client" (the Python client, not the queue)."""
    source = tmp_path / "direct" / folder.strip("/") / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    return client.images.upload(dataset_id=dataset.id, file_path=source, folder_path=folder)


# ---------------------------------------------------------------------- uploading


def test_a_flushed_and_released_file_is_uploaded_once(make_harness, server, client, dataset,
                                                      remote) -> None:
    harness = make_harness(write_back=0.05)
    data = png_bytes(1)
    before = counts(server)

    entry_id = harness.put("/cars", "red.png", data, mtime=1_600_000_000.0)
    harness.settle()

    assert delta(server, before) == {"url": 1, "put": 1, "register": 1, "archive": 0}
    image = harness.recorder.registered[entry_id]
    assert (image.directory_path, image.filename, image.file_size) == ("/cars", "red.png",
                                                                       len(data))
    assert [i.id for i in images_in(client, dataset, "/cars")] == [image.id]
    assert bytes_of(remote, image.id) == data
    assert harness.queue.mtime(image.id) == 1_600_000_000.0
    assert harness.queue.get(entry_id).state == "done"  # type: ignore[union-attr]
    assert harness.journal.staging_names() == []
    stats = harness.queue.stats()
    assert (stats.pending, stats.in_flight, stats.failed) == (0, 0, 0)
    assert stats.bytes_uploaded == len(data) and stats.rate > 0


def test_wait_idle_returns_only_after_the_landed_callback_returned(
        open_journal, dataset, remote) -> None:
    """``pictofs sync`` waits for ``wait_idle``; a landing its caller has not heard of yet
    (the callback that updates the listing, or the mirror's state) keeps the queue busy."""
    in_callback, release = threading.Event(), threading.Event()
    heard: list[str] = []

    def slow_callback(entry_id: str, image: Image) -> None:
        in_callback.set()
        release.wait(WAIT)
        heard.append(entry_id)

    queue = UploadQueue(remote, open_journal(), dataset.id, write_back=0.0,
                        on_registered=slow_callback)
    queue.start()
    try:
        entry_id = queue.stage("/idle", "a.png")
        queue.staging_path(entry_id).write_bytes(png_bytes(7))
        queue.flushed(entry_id, len(png_bytes(7)))
        queue.schedule(entry_id)
        assert in_callback.wait(WAIT)
        assert not queue.wait_idle(0.2)  # landed, but the callback has not returned
        release.set()
        assert queue.wait_idle(WAIT)
        assert heard == [entry_id]
    finally:
        release.set()
        assert queue.stop(WAIT)


def voluntary_switches(threads: list[threading.Thread]) -> int:
    """How many times these threads have gone to sleep so far (Linux: the kernel's count of
    voluntary context switches of each): a thread blocked on a condition adds none until
    something wakes it."""
    total = 0
    for thread in threads:
        status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        total += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
    return total


def test_closes_due_an_hour_later_wake_no_upload_worker(open_journal, dataset,
                                                        remote) -> None:
    """A close schedules its upload ``write_back`` later; the idle workers sleep until the
    first one is due. A close that is due no sooner must not wake any of them: each wake
    takes the interpreter lock from the mount's callbacks (it did, twice per close, while
    a sleeper's wake time was read a hair after the due time it waited for)."""
    before = set(threading.enumerate())
    queue = UploadQueue(remote, open_journal(), dataset.id, write_back=3600.0, transfers=8)
    queue.start()
    try:
        workers = [t for t in threading.enumerate() if t not in before]
        assert len(workers) >= 8
        data = png_bytes(11)
        entry_id = queue.stage("/quiet", "first.png")  # the first one wakes a worker
        queue.staging_path(entry_id).write_bytes(data)
        queue.flushed(entry_id, len(data))
        queue.schedule(entry_id)
        time.sleep(0.2)  # that worker notes when the first upload is due, and sleeps
        switches = voluntary_switches(workers)
        for number in range(200):
            entry_id = queue.stage("/quiet", f"{number}.png")
            queue.staging_path(entry_id).write_bytes(data)
            queue.flushed(entry_id, len(data))
            queue.schedule(entry_id)
        time.sleep(0.2)
        woken = voluntary_switches(workers) - switches
        assert woken < 20, f"200 closes due an hour later woke the upload workers {woken} times"
    finally:
        assert queue.stop(WAIT)


class ConcurrencyRemote:
    """Passes every call to ``inner``; records how many PUTs ran at once."""

    def __init__(self, inner: ApiRemote) -> None:
        self._inner = inner
        self._lock = threading.Lock()  # guards active and most
        self.active = 0
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put_upload(self, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            self._inner.put_upload(*args, **kwargs)
        finally:
            with self._lock:
                self.active -= 1


def test_fifty_files_with_eight_transfers_all_land_once(make_harness, server, client, dataset,
                                                        remote) -> None:
    counting = ConcurrencyRemote(remote)
    harness = make_harness(counting, transfers=8)
    files = {f"f{n:02d}.png": png_bytes(1000 + n) for n in range(50)}
    before = counts(server)

    for name, data in files.items():
        harness.put("/many", name, data)
    harness.settle()

    assert delta(server, before) == {"url": 50, "put": 50, "register": 50, "archive": 0}
    landed = images_in(client, dataset, "/many")
    assert sorted(i.filename for i in landed) == sorted(files)
    assert {i.filename: i.file_size for i in landed} == {n: len(d) for n, d in files.items()}
    assert 1 <= counting.most <= 8
    assert len(harness.recorder.registered) == 50 and not harness.recorder.failures
    assert harness.journal.staging_names() == []


def test_bytes_that_are_not_an_image_fail_and_are_never_sent(make_harness, server) -> None:
    harness = make_harness()
    before = counts(server)

    entry_id = harness.put("/", "notes.jpg", b"definitely not an image\n" * 40)
    harness.settle()

    assert delta(server, before) == {"url": 0, "put": 0, "register": 0, "archive": 0}
    reason = harness.recorder.failures[entry_id]
    assert reason.startswith("not an image")
    assert [(e.id, e.state, e.error) for e in harness.queue.failed()] == \
        [(entry_id, "failed", reason)]
    assert harness.queue.stats().failed == 1
    assert harness.journal.staging_names() == [entry_id]  # the file stays until rm
    harness.queue.discard(entry_id)
    assert harness.queue.failed() == [] and harness.journal.staging_names() == []


def test_a_file_over_50_mb_fails_and_is_never_sent(make_harness, server) -> None:
    harness = make_harness()
    before = counts(server)

    entry_id = harness.put("/", "huge.jpg", sized_jpeg(MAX_IMAGE_BYTES + 1))
    harness.settle()

    assert delta(server, before) == {"url": 0, "put": 0, "register": 0, "archive": 0}
    assert harness.recorder.failures[entry_id].startswith("too large")
    assert harness.queue.get(entry_id).state == "failed"  # type: ignore[union-attr]


# ---------------------------------------------------------------------- replace


def test_replace_with_identical_bytes_uploads_nothing_and_keeps_the_id(
        make_harness, server, client, dataset, tmp_path) -> None:
    data = jpeg_bytes(7)
    original = upload_directly(client, dataset, tmp_path, "/r", "same.jpg", data)
    harness = make_harness()
    before = counts(server)

    entry_id = harness.put("/r", "same.jpg", data, replaced_id=original.id, mtime=1_234_567.0)
    harness.settle()

    assert delta(server, before) == {"url": 0, "put": 0, "register": 0, "archive": 0}
    assert harness.recorder.registered[entry_id].id == original.id
    assert [i.id for i in images_in(client, dataset, "/r")] == [original.id]
    assert harness.queue.mtime(original.id) == 1_234_567.0
    assert harness.journal.staging_names() == []


def test_replace_with_new_bytes_archives_the_old_image_by_id(
        make_harness, server, client, dataset, remote, tmp_path) -> None:
    original = upload_directly(client, dataset, tmp_path, "/r", "x.jpg", jpeg_bytes(1))
    new_data = jpeg_bytes(2)
    harness = make_harness()
    before = counts(server)

    entry_id = harness.put("/r", "x.jpg", new_data, replaced_id=original.id)
    harness.settle()

    assert delta(server, before) == {"url": 1, "put": 1, "register": 1, "archive": 1}
    new = harness.recorder.registered[entry_id]
    assert new.id != original.id
    assert [i.id for i in images_in(client, dataset, "/r")] == [new.id]
    assert bytes_of(remote, new.id) == new_data
    archived = {i.id: i.is_archived for i in images_in(client, dataset, "/r", archived=True)}
    assert archived == {original.id: True, new.id: False}


def test_replace_fails_as_a_conflict_when_another_client_replaced_the_name(
        make_harness, server, client, dataset, tmp_path) -> None:
    original = upload_directly(client, dataset, tmp_path, "/c", "x.jpg", jpeg_bytes(3))
    client.images.delete(original.id)
    theirs = upload_directly(client, dataset, tmp_path, "/c", "x.jpg", jpeg_bytes(4))
    harness = make_harness()
    before = counts(server)

    entry_id = harness.put("/c", "x.jpg", jpeg_bytes(5), replaced_id=original.id)
    harness.settle()

    assert harness.recorder.failures[entry_id].startswith("conflict: replaced by another client")
    assert delta(server, before) == {"url": 0, "put": 0, "register": 0, "archive": 0}
    assert [i.id for i in images_in(client, dataset, "/c")] == [theirs.id]
    assert client.images.get(theirs.id).is_archived is False


def test_a_replace_whose_upload_fails_for_good_restores_the_old_image(
        make_harness, server, client, dataset, tmp_path) -> None:
    original = upload_directly(client, dataset, tmp_path, "/u", "x.jpg", jpeg_bytes(8))
    with FaultProxy(upstream=server.base_url) as proxy:
        through_proxy = ApiRemote(Connection(proxy.url, server.key, "argument"), retries=0)
        proxy.fail_next(400, count=1, method="POST", path=r"/images/register$")
        harness = make_harness(through_proxy)

        entry_id = harness.put("/u", "x.jpg", jpeg_bytes(9), replaced_id=original.id)
        harness.settle()
        through_proxy.close()

    assert "fault injected" in harness.recorder.failures[entry_id]
    assert [i.id for i in images_in(client, dataset, "/u")] == [original.id]
    assert client.images.get(original.id).is_archived is False


# ---------------------------------------------------------------------- cancel, retarget, hold


def test_cancel_of_a_queued_entry_uploads_nothing(make_harness, server, client,
                                                  dataset) -> None:
    harness = make_harness()
    before = counts(server)
    entry_id = harness.put("/k", "gone.png", png_bytes(2), delay=3600.0)
    assert harness.queue.stats().pending == 1

    harness.queue.cancel(entry_id)
    harness.settle()

    assert delta(server, before) == {"url": 0, "put": 0, "register": 0, "archive": 0}
    assert harness.queue.get(entry_id) is None
    assert harness.journal.staging_names() == []
    assert names_in(client, dataset, "/k") == []


def test_cancel_after_register_archives_the_image(make_harness, client, dataset) -> None:
    harness = make_harness()
    entry_id = harness.put("/k", "late.png", png_bytes(3))
    harness.settle()
    image = harness.recorder.registered[entry_id]

    harness.queue.cancel(entry_id)
    harness.settle()

    assert client.images.get(image.id).is_archived is True
    assert harness.queue.get(entry_id) is None


def test_retarget_before_the_upload_lands_under_the_new_name(make_harness, client, dataset,
                                                             remote) -> None:
    harness = make_harness()
    data = png_bytes(4)
    entry_id = harness.put("/inbox", "a.png", data, delay=3600.0)

    assert harness.queue.retarget(entry_id, "/sorted", "b.png") is None
    harness.queue.schedule(entry_id, 0.0)
    harness.settle()

    image = harness.recorder.registered[entry_id]
    assert image.path == "/sorted/b.png"
    assert names_in(client, dataset, "/inbox") == []
    assert names_in(client, dataset, "/sorted") == ["b.png"]
    assert bytes_of(remote, image.id) == data


def test_retarget_after_register_hands_the_image_to_the_caller(make_harness, client,
                                                               dataset) -> None:
    harness = make_harness()
    entry_id = harness.put("/t", "done.png", png_bytes(5))
    harness.settle()

    image = harness.queue.retarget(entry_id, "/t", "renamed.png")

    assert image is not None and image.id == harness.recorder.registered[entry_id].id
    assert names_in(client, dataset, "/t") == ["done.png"]  # renaming is the caller's job


def test_a_held_entry_waits_until_it_is_released_again(make_harness, server, client,
                                                       dataset) -> None:
    harness = make_harness(start=False)
    before = counts(server)
    entry_id = harness.put("/h", "open.png", png_bytes(6), delay=3600.0)

    assert harness.queue.hold(entry_id) is None
    assert harness.queue.stats().pending == 0 and harness.queue.wait_idle(0.0)
    assert harness.queue.get(entry_id).state == "staged"  # type: ignore[union-attr]
    new_data = png_bytes(7)
    harness.queue.staging_path(entry_id).write_bytes(new_data)
    harness.queue.flushed(entry_id, len(new_data))
    harness.queue.schedule(entry_id, 0.0)
    harness.queue.start()
    harness.settle()

    assert delta(server, before)["register"] == 1
    assert harness.recorder.registered[entry_id].file_size == len(new_data)
    assert names_in(client, dataset, "/h") == ["open.png"]


# ---------------------------------------------------------------------- failures


class SwitchableRemote:
    """Passes every call to ``current`` (swapped by the test); counts upload-url requests."""

    def __init__(self, current: ApiRemote) -> None:
        self.current = current
        self._asked = threading.Condition()  # guards url_requests
        self.url_requests = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)

    def request_upload(self, *args: Any, **kwargs: Any) -> Any:
        with self._asked:
            self.url_requests += 1
            self._asked.notify_all()
        return self.current.request_upload(*args, **kwargs)

    def wait_for_requests(self, count: int) -> bool:
        with self._asked:
            return self._asked.wait_for(lambda: self.url_requests >= count, WAIT)


def test_a_rejected_key_pauses_the_queue_with_one_log_line_until_it_works(
        make_harness, server, client, dataset, remote, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pictofs")
    wrong_key = "pk_live_" + "0" * 32
    rejected = ApiRemote(Connection(server.base_url, wrong_key, "argument"))
    switch = SwitchableRemote(rejected)
    harness = make_harness(switch, retry_max_wait=0.05)

    first = harness.put("/auth", "a.png", png_bytes(10))
    second = harness.put("/auth", "b.png", png_bytes(11))
    assert switch.wait_for_requests(6)  # the first tries, then several probes

    assert harness.queue.stats().paused
    assert names_in(client, dataset, "/auth") == []
    waiting = {e.id: (e.state, e.error) for e in harness.queue.entries()}
    assert waiting.keys() == {first, second}
    assert {error for _, error in waiting.values()} == {"API key rejected"}
    assert not harness.recorder.failures
    switch.current = remote  # the key works again
    harness.settle()

    assert names_in(client, dataset, "/auth") == ["a.png", "b.png"]
    assert not harness.queue.stats().paused
    messages = [r.getMessage() for r in caplog.records]
    assert sum("API key rejected" in m for m in messages) == 1
    assert any("API key accepted again" in m for m in messages)
    assert server.key not in caplog.text and wrong_key not in caplog.text
    rejected.close()


def test_transient_failures_are_retried_and_the_file_lands_once(
        make_harness, server, client, dataset, remote) -> None:
    with FaultProxy(upstream=server.base_url) as proxy:
        through_proxy = ApiRemote(Connection(proxy.url, server.key, "argument"), retries=0)
        proxy.fail_next(503, count=2, method="POST", path=r"/images/upload-url$")
        proxy.fail_next(503, count=2, method="PUT", path=r"^/storage/upload/")
        proxy.fail_next(503, count=2, method="POST", path=r"/images/register$")
        harness = make_harness(through_proxy)
        before = counts(server)
        data = png_bytes(12)

        entry_id = harness.put("/flaky", "x.png", data)
        harness.settle()
        stats = proxy.stats
        through_proxy.close()

    assert stats.faults["503"] == 6
    assert stats.count("POST", r"/images/register$") == 3
    # url: two refused, then one per run that reached the PUT (two refused PUTs, one good);
    # the register failures are retried without a new URL or a second PUT
    assert delta(server, before) == {"url": 3, "put": 1, "register": 1, "archive": 0}
    image = harness.recorder.registered[entry_id]
    assert [i.id for i in images_in(client, dataset, "/flaky")] == [image.id]
    assert bytes_of(remote, image.id) == data
    assert harness.queue.get(entry_id).error is None  # type: ignore[union-attr]


class FullDisk:
    """The journal's connection, whose commits fail as SQLite's do on a full disk
    (``SQLITE_FULL``, "database or disk is full", the transaction rolled back) while
    ``full`` is set; ``refused`` counts them."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.full = threading.Event()
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def __enter__(self) -> Any:
        return self._db.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if exc[0] is None and self.full.is_set():
            self._db.rollback()
            self.refused += 1
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        return self._db.__exit__(*exc)


def upload_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if re.fullmatch(r"upload-\d+", t.name)]


def test_a_full_journal_disk_kills_no_worker_and_the_uploads_resume(
        make_harness, server, client, dataset, caplog) -> None:
    """Every journal commit fails as on a full disk while the workers run: the runs that
    cannot record a step are retried with backoff (the first one, ``url_key``, is recorded
    before any request), a permanent failure that cannot be written is given back too; no
    worker thread ends, nothing is left in flight, and once commits work again every file
    lands exactly once and the bad one fails."""
    caplog.set_level(logging.DEBUG, logger="pictofs")
    harness = make_harness(start=False, transfers=2, retry_max_wait=0.05)
    disk = FullDisk(harness.journal._db)
    harness.journal._db = disk  # type: ignore[assignment]
    good = {f"g{n}.png": png_bytes(900 + n) for n in range(3)}
    ids = {name: harness.put("/full", name, data) for name, data in good.items()}
    bad = harness.put("/full", "bad.png", b"not an image, and no room to say so\n" * 20)
    before = counts(server)
    disk.full.set()
    harness.queue.start()
    deadline = time.monotonic() + WAIT
    while disk.refused < 40:  # every entry tried several times
        assert time.monotonic() < deadline, disk.refused
        time.sleep(0.01)

    assert len(upload_workers()) == 2 and harness.queue.stats().workers == 2
    assert delta(server, before) == {"url": 0, "put": 0, "register": 0, "archive": 0}
    assert not harness.recorder.registered and not harness.recorder.failures
    disk.full.clear()
    harness.settle()

    assert len(upload_workers()) == 2
    assert set(harness.recorder.registered) == set(ids.values())
    assert names_in(client, dataset, "/full") == sorted(good)
    assert delta(server, before)["register"] == 3
    assert harness.recorder.failures[bad].startswith("not an image")
    stats = harness.queue.stats()
    assert (stats.pending, stats.in_flight, stats.failed) == (0, 0, 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # the write of the bad file's failure, given back: logged once (then only at DEBUG)
    given_back = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and "trying again" in r.getMessage()]
    assert len(given_back) == 1 and "/full/bad.png" in given_back[0], given_back
    assert "the state disk is full" in given_back[0]


# ---------------------------------------------------------------------- crashes

_DRIVER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from pictofs.api.remote import ApiRemote
    from pictofs.config import Connection
    from pictofs.core.upload.journal import Journal
    from pictofs.core.upload.queue import UploadQueue

    plan = json.loads(sys.argv[1])
    connection = Connection(plan["base_url"], os.environ["PICTOGRAPH_API_KEY"], "environment")
    journal = Journal.for_dataset(Path(plan["state_dir"]), plan["base_url"],
                                  plan["dataset_id"], connection.api_key)
    queue = UploadQueue(ApiRemote(connection), journal, plan["dataset_id"], transfers=2,
                        write_back=0.0)
    for item in plan["files"]:
        data = Path(item["source"]).read_bytes()
        entry_id = queue.stage(item["folder"], item["filename"], item["replaced_id"])
        queue.staging_path(entry_id).write_bytes(data)
        queue.flushed(entry_id, len(data))
        queue.schedule(entry_id, 0.0)
    queue.start()
    sys.exit(0 if queue.wait_idle(120) else 4)
""")


@pytest.mark.parametrize("point", ["before_upload_url", "after_put", "after_register",
                                   "after_archive"])
def test_a_crash_at_a_step_boundary_resumes_to_exactly_one_copy_of_each_file(
        point, make_harness, open_journal, state_dir, server, client, dataset, remote,
        tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pictofs")
    folder = "/crash"
    original = upload_directly(client, dataset, tmp_path, folder, "old.jpg", jpeg_bytes(20))
    wanted = {f"n{n}.png": png_bytes(200 + n) for n in range(4)}
    wanted["old.jpg"] = jpeg_bytes(21)
    files = []
    for name, data in wanted.items():
        source = tmp_path / "sources" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(data)
        files.append({"folder": folder, "filename": name, "source": str(source),
                      "replaced_id": original.id if name == "old.jpg" else None})
    plan = {"base_url": server.base_url, "dataset_id": dataset.id,
            "state_dir": str(state_dir), "files": files}
    env = {**os.environ, "PICTOGRAPH_API_KEY": server.key, "PICTOFS_FAULT": f"crash:{point}"}

    driver = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(plan)], env=env,
                            capture_output=True, text=True, timeout=WAIT)

    assert driver.returncode == -signal.SIGKILL, driver.stderr
    assert f"crashing at {point}" in driver.stderr
    harness = make_harness(start=False)
    resumed = harness.queue.resume()
    assert resumed, "the crash left nothing to resume"
    harness.queue.start()
    harness.settle()

    live = images_in(client, dataset, folder)
    assert sorted(i.filename for i in live) == sorted(wanted)
    assert {i.filename: bytes_of(remote, i.id) for i in live} == wanted
    everything = images_in(client, dataset, folder, archived=True)
    assert len(everything) == len(wanted) + 1  # plus the replaced original, archived
    assert client.images.get(original.id).is_archived is True
    assert bytes_of(remote, original.id) == jpeg_bytes(20)  # archived, never lost
    assert harness.queue.entries() == [] and not harness.recorder.failures
    assert harness.journal.staging_names() == []
    if point == "after_register":
        assert any("adopted" in r.getMessage() for r in caplog.records)


def test_a_second_queue_cannot_open_a_journal_in_use(make_harness, open_journal) -> None:
    harness = make_harness(start=False)
    with pytest.raises(ConfigError, match=f"journal in use by pid {os.getpid()}"):
        open_journal()
    assert harness.queue.entries() == []


# ---------------------------------------------------------------------- pure decisions


@pytest.mark.parametrize("error, disposition", [
    (api_errors.NetworkError("connection refused"), Disposition.TRANSIENT),
    (Unavailable("breaker open"), Disposition.TRANSIENT),
    (api_errors.ServerError(503, None, "unavailable"), Disposition.TRANSIENT),
    (api_errors.ServerError(500, None, "boom"), Disposition.TRANSIENT),
    (api_errors.ApiError(408, None, "request timeout"), Disposition.TRANSIENT),
    (api_errors.RateLimitError(429, None, "slow down", retry_after=3), Disposition.TRANSIENT),
    (api_errors.AuthError(401, None, "bad key"), Disposition.AUTH),
    (api_errors.ForbiddenError(403, None, "role too low"), Disposition.PERMANENT),
    (api_errors.ValidationError(400, None, "bad name"), Disposition.PERMANENT),
    (api_errors.PayloadTooLargeError(413, None, "too big"), Disposition.PERMANENT),
    (api_errors.UnsupportedMediaError(415, None, "no"), Disposition.PERMANENT),
    (api_errors.ConflictError(409, None, "taken"), Disposition.PERMANENT),
    (api_errors.NotFoundError(404, None, "no dataset"), Disposition.PERMANENT),
    (NotAnImage("text"), Disposition.PERMANENT),
    (NoSpace("the state disk is full"), Disposition.TRANSIENT),
    (OSError("staging file unreadable"), Disposition.PERMANENT),
])
def test_classify(error: BaseException, disposition: Disposition) -> None:
    assert classify(error) is disposition


@pytest.mark.parametrize("attempt, cap, jitter, retry_after, expected", [
    (1, 30.0, 1.0, None, 1.0),
    (2, 30.0, 1.0, None, 2.0),
    (5, 30.0, 1.0, None, 16.0),
    (6, 30.0, 1.0, None, 30.0),
    (40, 30.0, 1.0, None, 30.0),
    (3, 30.0, 0.75, None, 3.0),
    (6, 30.0, 1.25, None, 30.0),
    (3, 0.05, 1.25, None, 0.05),
    (1, 30.0, 1.0, 7.0, 7.0),  # 429: the service's Retry-After when longer
    (5, 30.0, 1.0, 7.0, 16.0),
    (1, 30.0, 1.0, 120.0, 30.0),  # still capped
])
def test_retry_delay(attempt: int, cap: float, jitter: float, retry_after: float | None,
                     expected: float) -> None:
    assert retry_delay(attempt, cap, jitter, retry_after) == pytest.approx(expected)


@pytest.mark.parametrize("name, stored", [
    ("x.jpg", "x.jpg"), ("IMG_1.heic", "IMG_1.png"), ("a.HEIC", "a.png"), ("h.heic.jpg",
                                                                             "h.heic.jpg"),
])
def test_service_name(name: str, stored: str) -> None:
    assert service_name(name) == stored


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_takes_tasks_in_due_order_and_a_later_schedule_pushes_back() -> None:
    clock = FakeClock()
    schedule = Schedule(clock, pause=30.0)
    a, b = schedule.add("a"), schedule.add("b")
    schedule.due_in(a, 2.0)
    schedule.due_in(b, 1.0)
    schedule.due_in(a, 5.0)  # released again: pushed back

    assert schedule.take() == (None, 1.0)
    clock.now += 1.0
    assert schedule.take() == (b, None) and b.running
    assert schedule.take() == (None, 4.0)
    clock.now += 4.0
    assert schedule.take() == (a, None)
    assert schedule.take() == (None, None)
    assert schedule.stats(failed=0).in_flight == 2


def test_schedule_never_hands_out_a_held_task() -> None:
    clock = FakeClock()
    schedule = Schedule(clock, pause=30.0)
    task = schedule.add("a")
    schedule.due_in(task, 0.0)
    task.held, task.due = True, None

    assert schedule.take() == (None, None)
    assert not schedule.busy()
    schedule.due_in(task, 0.0)
    assert schedule.take() == (task, None)


def test_schedule_pause_lets_one_probe_through_when_it_ends() -> None:
    clock = FakeClock()
    schedule = Schedule(clock, pause=30.0)
    tasks = [schedule.add(name) for name in "abc"]
    for task in tasks:
        schedule.due_in(task, 0.0)

    assert schedule.key_rejected() is True
    assert schedule.key_rejected() is False  # one log line per pause
    assert schedule.take() == (None, 30.0)
    clock.now += 30.0
    probe, _ = schedule.take()
    assert probe is tasks[0]
    assert schedule.take() == (None, 30.0)  # the others wait for the probe's answer
    assert schedule.key_works() is True
    assert schedule.take() == (tasks[1], None)
    assert schedule.stats(failed=0).paused is False


def test_schedule_rate_counts_the_last_ten_seconds() -> None:
    clock = FakeClock()
    schedule = Schedule(clock, pause=30.0)
    schedule.count_bytes(5_000)
    clock.now += 8.0
    schedule.count_bytes(1_000)
    assert schedule.stats(failed=0).rate == pytest.approx(600.0)
    clock.now += 5.0
    stats = schedule.stats(failed=2)
    assert (stats.rate, stats.bytes_uploaded, stats.failed) == (pytest.approx(100.0), 6_000, 2)
