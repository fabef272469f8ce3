"""The upload queue's batches (``batch`` > 1 with ``BulkApiRemote``): fresh entries of one
folder due together go out with one bulk upload-url and one bulk register call per share,
against the real reference server; a member that fails (bytes that are not an image, a name
taken by other bytes) fails alone, one taken by the same bytes is adopted, a cancelled one is
left out; replaces and single entries keep the single path. With ``parallel_puts`` a batch
takes the whole folder and sends its PUTs side by side; ``on_registered_many`` hears of a
batch once. The choice of companions is tested on the schedule alone with a fake clock."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from requests.utils import super_len

from harness import ServerHandle
from imagegen import png_bytes
from pictofs.api.bulk_remote import BulkApiRemote
from pictofs.api.errors import ServerError
from pictofs.config import Connection
from pictofs.core.upload.journal import Journal
from pictofs.core.upload.batch import REGISTER_PIECE, companions
from pictofs.core.upload.schedule import Schedule
from pictofs.core.upload.queue import UploadQueue
from pictofs.model import Dataset, Image

pytestmark = pytest.mark.timeout(120)

WAIT = 60.0
ROUTES = {"url": ("POST", "/api/v1/developer/images/upload-url"),
          "bulk_url": ("POST", "/api/v1/developer/images/bulk-upload-url"),
          "register": ("POST", "/api/v1/developer/images/register"),
          "bulk_register": ("POST", "/api/v1/developer/images/bulk-register"),
          "put": ("PUT", "storage/upload")}


def counts(server: ServerHandle) -> dict[str, int]:
    return {name: server.calls(*route) for name, route in ROUTES.items()}


def delta(server: ServerHandle, before: dict[str, int]) -> dict[str, int]:
    after = counts(server)
    return {name: after[name] - before[name] for name in ROUTES if after[name] != before[name]}


class Batches:
    """A queue with batches over its own journal; stage many, then make them due together
    (what the mirror does)."""

    def __init__(self, remote: BulkApiRemote, journal: Journal, dataset_id: str,
                 **options: Any) -> None:
        self.journal = journal
        self._lock = threading.Lock()  # guards registered and failures
        self.registered: dict[str, Image] = {}
        self.failures: dict[str, str] = {}
        options.setdefault("retry_max_wait", 0.05)
        self.queue = UploadQueue(remote, journal, dataset_id, write_back=0.0,
                                 on_registered=self._landed, on_failed=self._failed, **options)

    def _landed(self, entry_id: str, image: Image) -> None:
        with self._lock:
            self.registered[entry_id] = image

    def _failed(self, entry_id: str, reason: str) -> None:
        with self._lock:
            self.failures[entry_id] = reason

    def stage(self, folder: str, name: str, data: bytes, replaced_id: str | None = None,
              digest: bool = False) -> str:
        """``digest``: the flush records the bytes' sha256, as the mount's does."""
        entry_id = self.queue.stage(folder, name, replaced_id)
        self.queue.staging_path(entry_id).write_bytes(data)
        self.queue.flushed(entry_id, len(data),
                           hashlib.sha256(data).hexdigest() if digest else None)
        return entry_id

    def release(self, entry_ids: list[str]) -> None:
        due = time.monotonic() + 0.2
        for entry_id in entry_ids:
            self.queue.schedule(entry_id, max(0.0, due - time.monotonic()))

    def settle(self) -> None:
        assert self.queue.wait_idle(WAIT), self.queue.entries()


@pytest.fixture()
def bulk_remote(server: ServerHandle) -> Iterator[BulkApiRemote]:
    remote = BulkApiRemote(Connection(server.base_url, server.key, "argument"),
                           retry_max_wait=0.2)
    yield remote
    remote.close()


@pytest.fixture()
def batches(tmp_path: Path, server: ServerHandle, dataset: Dataset,
            bulk_remote: BulkApiRemote) -> Iterator[Callable[..., Batches]]:
    made: list[Batches] = []

    def make(**options: Any) -> Batches:
        journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id,
                                      server.key)
        made.append(Batches(bulk_remote, journal, dataset.id, **options))
        made[-1].queue.start()
        return made[-1]

    yield make
    for b in made:
        assert b.queue.stop(WAIT)
        b.journal.close()


def names(client, dataset: Dataset, folder: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {i.filename: i.file_size for i in client.images.list(dataset.id, folder_path=folder)
            if i.directory_path == folder}


def test_fresh_entries_due_together_go_out_in_bulk(batches, server, client, dataset) -> None:
    b = batches(transfers=2, batch=20)
    files = {(folder, f"f{n:02d}.png"): png_bytes(300 + n) for folder in ("/a", "/b")
             for n in range(30)}
    before = counts(server)

    ids = [b.stage(folder, name, data) for (folder, name), data in files.items()]
    b.release(ids)
    b.settle()

    calls = delta(server, before)
    assert calls["put"] == 60
    assert calls["bulk_url"] == calls["bulk_register"] >= 3  # at most 20 a call
    assert calls.get("url", 0) == calls.get("register", 0) <= 2  # a last one alone, maybe
    assert calls["bulk_url"] + calls.get("url", 0) <= 10  # not 60
    assert len(b.registered) == 60 and not b.failures
    for folder in ("/a", "/b"):
        assert names(client, dataset, folder) == {
            name: len(data) for (f, name), data in files.items() if f == folder}
    assert b.journal.staging_names() == []


def test_with_parallel_puts_a_folder_goes_out_in_one_batch_its_puts_side_by_side(
        batches, bulk_remote, server, client, dataset, monkeypatch) -> None:
    b = batches(transfers=4, batch=50, parallel_puts=True)
    put_upload = bulk_remote.put_upload
    both_sent = threading.Barrier(2, timeout=WAIT)  # the first two PUTs wait for each other
    first_two = iter(range(2))

    def put_in_step(*args: Any, **kwargs: Any) -> None:
        if next(first_two, None) is not None:
            both_sent.wait()  # raises (the PUT fails) unless another PUT is in flight too
        put_upload(*args, **kwargs)

    monkeypatch.setattr(bulk_remote, "put_upload", put_in_step)
    files = {f"p{n:02d}.png": png_bytes(400 + n) for n in range(40)}
    before = counts(server)

    ids = [b.stage("/p", name, data) for name, data in files.items()]
    b.release(ids)
    b.settle()
    deadline = time.monotonic() + WAIT  # the server counts a request after answering it
    while "bulk_register" not in delta(server, before) and time.monotonic() < deadline:
        time.sleep(0.01)

    calls = delta(server, before)
    assert calls == {"bulk_url": 1, "put": 40, "bulk_register": 1}  # not a share per worker
    assert len(b.registered) == 40 and not b.failures
    assert names(client, dataset, "/p") == {name: len(data) for name, data in files.items()}
    assert b.journal.staging_names() == []


def test_a_large_batch_registers_what_landed_while_its_other_puts_are_in_flight(
        batches, bulk_remote, server, client, dataset, monkeypatch) -> None:
    """Over 2 × REGISTER_PIECE members with parallel PUTs: the members whose PUTs landed are
    registered a piece at a time. The last PUT is held until a register has been answered,
    which the batch only sends before its last PUT if it registers in pieces."""
    b = batches(transfers=4, batch=500, parallel_puts=True)
    n = 2 * REGISTER_PIECE + 40
    put_upload, register_uploads = bulk_remote.put_upload, bulk_remote.register_uploads
    registered_once = threading.Event()
    sent = iter(range(n))
    pieces: list[int] = []

    def put_last_after_a_register(*args: Any, **kwargs: Any) -> None:
        if next(sent) == n - 1:
            assert registered_once.wait(WAIT), "no register before the last PUT"
        put_upload(*args, **kwargs)

    def register(dataset_id: str, folder: str, items: Any) -> Any:
        pieces.append(len(items))
        answers = register_uploads(dataset_id, folder, items)
        registered_once.set()
        return answers

    monkeypatch.setattr(bulk_remote, "put_upload", put_last_after_a_register)
    monkeypatch.setattr(bulk_remote, "register_uploads", register)
    files = {f"q{k:03d}.png": png_bytes(500 + k) for k in range(n)}
    before = counts(server)

    ids = [b.stage("/q", name, data) for name, data in files.items()]
    b.release(ids)
    b.settle()

    calls = delta(server, before)
    assert calls["bulk_url"] == 1 and calls["put"] == n and "register" not in calls
    assert sum(pieces) == n and len(pieces) == calls["bulk_register"] >= 2
    assert all(size >= REGISTER_PIECE for size in pieces[:-1]), pieces
    assert len(b.registered) == n and not b.failures
    assert names(client, dataset, "/q") == {name: len(data) for name, data in files.items()}
    assert b.journal.staging_names() == []


def batch_waiting_for_a_slot(b: Batches, bulk_remote: BulkApiRemote,
                             monkeypatch: pytest.MonkeyPatch,
                             digest: bool = False) -> tuple[threading.Event, list[str]]:
    """Two batches hold both slots (their upload-url calls wait until the returned gate is
    set); a third batch, of ``/y/y0.png`` to ``y2.png`` (staged with ``digest``), is taken
    and waits for a slot. Returns the gate and the third batch's entry ids."""
    request_uploads = bulk_remote.request_uploads
    gate, entered = threading.Event(), threading.Semaphore(0)

    def held(dataset_id: str, folder: str, items: Any) -> Any:
        if folder in ("/x1", "/x2"):
            entered.release()
            assert gate.wait(WAIT)
        return request_uploads(dataset_id, folder, items)

    monkeypatch.setattr(bulk_remote, "request_uploads", held)
    first = [b.stage(folder, f"x{n}.png", png_bytes(600 + n + (10 if folder == "/x2" else 0)))
             for folder in ("/x1", "/x2") for n in range(3)]
    b.release(first)
    assert entered.acquire(timeout=WAIT) and entered.acquire(timeout=WAIT)  # both slots held
    waiting = [b.stage("/y", f"y{n}.png", png_bytes(700 + n), digest=digest) for n in range(3)]
    b.release(waiting)
    deadline = time.monotonic() + WAIT
    while b.queue.stats().in_flight < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.queue.stats().in_flight == 9, "the third batch was not taken"
    return gate, waiting


def test_a_member_moved_while_its_batch_waits_for_a_slot_lands_where_it_went(
        batches, bulk_remote, client, dataset, monkeypatch) -> None:
    """A member of a batch waiting for a slot is moved to another folder meanwhile (``mv``
    on the mount). It must land in the folder it was moved to, and the rest of its batch
    where they were: a batch is one folder."""
    b = batches(transfers=3, batch=50, parallel_puts=True)
    gate, waiting = batch_waiting_for_a_slot(b, bulk_remote, monkeypatch)
    assert b.queue.retarget(waiting[0], "/z", "moved.png") is None  # not registered yet
    gate.set()
    b.settle()

    assert not b.failures
    assert names(client, dataset, "/z") == {"moved.png": len(png_bytes(700))}
    assert sorted(names(client, dataset, "/y")) == ["y1.png", "y2.png"]
    assert b.registered[waiting[0]].path == "/z/moved.png"


@pytest.mark.parametrize("digest", [False, True], ids=["size-only", "sha256-recorded"])
def test_a_member_opened_for_writing_while_its_batch_waits_for_a_slot_waits_for_its_writer(
        batches, bulk_remote, client, dataset, monkeypatch, digest: bool) -> None:
    """A member of a batch waiting for a slot is opened for writing again (a hold) and
    rewritten with other bytes, still open when the batch gets its slot. Its run must stop
    (an interrupt): neither send bytes still being written nor, where the flush recorded a
    sha256 (the mount's), find them unlike it and fail the file for good as torn. The new
    bytes land once the writer closes it."""
    b = batches(transfers=3, batch=50, parallel_puts=True)
    gate, waiting = batch_waiting_for_a_slot(b, bulk_remote, monkeypatch, digest)
    rewritten = png_bytes(750, (80, 80))
    assert b.queue.hold(waiting[0]) is None  # the writer's open
    b.queue.staging_path(waiting[0]).write_bytes(rewritten)  # its writes, not flushed yet
    gate.set()
    deadline = time.monotonic() + WAIT  # the rest of the batch lands: its run has ended
    while {waiting[1], waiting[2]} - b.registered.keys() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not b.failures, b.failures
    assert waiting[0] not in b.registered
    b.queue.flushed(waiting[0], len(rewritten))  # the writer's close
    b.queue.schedule(waiting[0], 0.0)
    b.settle()

    assert not b.failures
    assert names(client, dataset, "/y") == {"y0.png": len(rewritten),
                                            "y1.png": len(png_bytes(701)),
                                            "y2.png": len(png_bytes(702))}


class CutWhileSent:
    """A PUT body whose file a writer rewrites shorter (``O_TRUNC``, new bytes) once the
    request is under way: ``cut`` runs at the first read, after requests took the length."""

    def __init__(self, data: Any, cut: Callable[[], None]) -> None:
        self._data, self._cut, self._length = data, cut, super_len(data)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk

    def read(self, n: int = -1) -> bytes:
        if self._cut is not None:
            cut, self._cut = self._cut, None
            cut()
        return self._data.read(n)


def test_a_member_written_shorter_during_its_put_ends_that_put_at_once(
        batches, bulk_remote, client, dataset, monkeypatch) -> None:
    """A batch member's file is opened with ``O_TRUNC`` and written shorter while its PUT
    streams it: the PUT ends at once (the service would otherwise wait for the bytes the
    Content-Length promised until the read timeout, minutes, with the batch stuck), and the
    new bytes land once the writer closes the file."""
    b = batches(transfers=1, batch=10, parallel_puts=True)
    old, new = png_bytes(900, (96, 96)), png_bytes(901)
    assert len(new) < len(old)
    ids = {name: b.stage("/s", name, old if name == "s0.png" else png_bytes(910 + n))
           for n, name in enumerate(["s0.png", "s1.png", "s2.png"])}
    target = str(b.queue.staging_path(ids["s0.png"]))
    session = bulk_remote.transport._session
    put = session.put_direct  # how a signed PUT is sent (``Transport.put_signed``)
    rewritten = threading.Event()

    def rewrite() -> None:  # the writer's open (a hold), then its write
        b.queue.hold(ids["s0.png"])
        Path(target).write_bytes(new)
        rewritten.set()

    def cut_while_sent(url: str, data: Any, *args: Any) -> Any:
        name = getattr(getattr(data, "_file", data), "name", None)
        if name == target and not rewritten.is_set():
            data = CutWhileSent(data, rewrite)
        return put(url, data, *args)

    monkeypatch.setattr(session, "put_direct", cut_while_sent)
    b.release(list(ids.values()))
    assert rewritten.wait(WAIT)
    b.queue.flushed(ids["s0.png"], len(new))  # the writer's close
    b.queue.schedule(ids["s0.png"], 0.0)
    b.settle()

    assert not b.failures
    assert names(client, dataset, "/s") == {"s0.png": len(new), "s1.png": len(png_bytes(911)),
                                            "s2.png": len(png_bytes(912))}


def put_and_register_spies(monkeypatch, bulk_remote: BulkApiRemote,  # type: ignore[no-untyped-def]
                           failing: int) -> list[str]:
    """The first ``failing`` PUTs fail with a 503 (as one sent once, without transport
    retries, does); returns the events in order: ``put`` (one sent) and ``register N``."""
    events: list[str] = []
    put_upload, register_uploads = bulk_remote.put_upload, bulk_remote.register_uploads
    lock = threading.Lock()

    def put(*args: Any, **kwargs: Any) -> None:
        with lock:
            events.append("put")
            fail = events.count("put") <= failing
        if fail:
            raise ServerError(503, "unavailable", "injected by the test")
        put_upload(*args, **kwargs)

    def register(dataset_id: str, folder: str, items: Any) -> Any:
        with lock:
            events.append(f"register {len(items)}")
        return register_uploads(dataset_id, folder, items)

    monkeypatch.setattr(bulk_remote, "put_upload", put)
    monkeypatch.setattr(bulk_remote, "register_uploads", register)
    return events


def test_one_failed_put_fails_only_its_own_member(batches, bulk_remote, monkeypatch) -> None:
    b = batches(transfers=1, batch=50)
    events = put_and_register_spies(monkeypatch, bulk_remote, failing=1)
    ids = [b.stage("/o", f"o{n:02d}.png", png_bytes(500 + n)) for n in range(20)]
    b.release(ids)
    b.settle()
    assert events[:21] == ["put"] * 20 + ["register 19"]  # the other 19 went on
    assert len(b.registered) == 20 and not b.failures  # the failed one was retried


def test_a_batch_stops_sending_after_three_failed_puts(batches, bulk_remote,
                                                       monkeypatch) -> None:
    b = batches(transfers=1, batch=50)
    events = put_and_register_spies(monkeypatch, bulk_remote, failing=3)
    ids = [b.stage("/t", f"t{n:02d}.png", png_bytes(600 + n)) for n in range(20)]
    b.release(ids)
    b.settle()
    first = events.index(next(e for e in events if e.startswith("register")))
    assert events[:3] == ["put"] * 3 and first >= 3 + 20  # the rest waited for a new batch
    assert len(b.registered) == 20 and not b.failures


def test_the_backoff_starts_again_when_an_upload_got_further(
        batches, bulk_remote, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """The queue retries a step itself (its requests are sent once): a failure after the PUT
    went through is the first failure of a new request, so its retry waits the first backoff
    again, not the doubled one."""
    b = batches(transfers=1, batch=1)
    request_upload, register_upload = bulk_remote.request_upload, bulk_remote.register_upload
    failed = {"url": False, "register": False}

    def url_once(*args: Any, **kwargs: Any) -> Any:
        if not failed["url"]:
            failed["url"] = True
            raise ServerError(503, "unavailable", "injected by the test")
        return request_upload(*args, **kwargs)

    def register_once(*args: Any, **kwargs: Any) -> Any:
        if not failed["register"]:
            failed["register"] = True
            raise ServerError(503, "unavailable", "injected by the test")
        return register_upload(*args, **kwargs)

    monkeypatch.setattr(bulk_remote, "request_upload", url_once)
    monkeypatch.setattr(bulk_remote, "register_upload", register_once)
    with caplog.at_level(logging.INFO, logger="pictofs.core.upload.workers"):
        b.release([b.stage("/r", "r.png", png_bytes(700))])
        b.settle()
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert len(retries) == 2 and all("; retry 1 in" in line for line in retries), retries
    assert len(b.registered) == 1 and not b.failures


def test_on_registered_many_hears_of_a_batch_once(tmp_path: Path, server, dataset,
                                                   bulk_remote) -> None:
    heard: list[list[tuple[str, Image]]] = []
    journal = Journal.for_dataset(tmp_path / "state", server.base_url, dataset.id, server.key)
    queue = UploadQueue(bulk_remote, journal, dataset.id, write_back=0.0, transfers=1,
                        batch=10, on_registered_many=heard.append)
    ids = []
    for n in range(6):
        entry_id = queue.stage("/h", f"h{n}.png")
        data = png_bytes(500 + n)
        queue.staging_path(entry_id).write_bytes(data)
        queue.flushed(entry_id, len(data))
        ids.append(entry_id)
    queue.schedule_many(ids, 0.0)
    queue.start()
    try:
        assert queue.wait_idle(WAIT), queue.entries()
    finally:
        assert queue.stop(WAIT)
        journal.close()

    assert len(heard) == 1  # one call for the batch, not one per entry
    assert sorted(entry_id for entry_id, _ in heard[0]) == sorted(ids)
    assert sorted(image.filename for _, image in heard[0]) == [f"h{n}.png" for n in range(6)]


def test_a_member_that_fails_fails_alone_and_a_taken_name_is_adopted_or_a_conflict(
        batches, client, dataset, tmp_path: Path) -> None:
    taken_same, taken_other = png_bytes(1), png_bytes(2)
    for name, data in (("same.png", taken_same), ("other.png", taken_other)):
        (tmp_path / name).write_bytes(data)
        client.images.upload(dataset_id=dataset.id, file_path=tmp_path / name,
                             folder_path="/m")
    b = batches(transfers=1, batch=10)

    good = [b.stage("/m", f"g{n}.png", png_bytes(10 + n)) for n in range(3)]
    bad = b.stage("/m", "text.png", b"not an image at all")
    same = b.stage("/m", "same.png", taken_same)
    other = b.stage("/m", "other.png", png_bytes(3))
    b.release([*good, bad, same, other])
    b.settle()

    assert set(b.registered) == {*good, same}
    assert b.failures[bad].startswith("not an image")
    assert "already exists on the service with other bytes" in b.failures[other]
    assert sorted(names(client, dataset, "/m")) == ["g0.png", "g1.png", "g2.png", "other.png",
                                                    "same.png"]
    assert names(client, dataset, "/m")["other.png"] == len(taken_other)  # left as it was


def test_cancelled_replaces_and_lone_entries_keep_out_of_batches(
        batches, server, client, dataset, tmp_path: Path) -> None:
    (tmp_path / "old.png").write_bytes(png_bytes(50))
    registered = counts(server)["register"]
    old = client.images.upload(dataset_id=dataset.id, file_path=tmp_path / "old.png",
                               folder_path="/r")
    b = batches(transfers=1, batch=10)
    deadline = time.monotonic() + WAIT  # the server counts a request after answering it
    while counts(server)["register"] == registered and time.monotonic() < deadline:
        time.sleep(0.01)
    before = counts(server)

    fresh = [b.stage("/r", f"n{n}.png", png_bytes(60 + n)) for n in range(3)]
    gone = b.stage("/r", "gone.png", png_bytes(70))
    replace = b.stage("/r", "old.png", png_bytes(71), replaced_id=old.id)
    b.queue.cancel(gone)
    b.release([*fresh, gone, replace])
    b.settle()

    calls = delta(server, before)
    assert calls["bulk_url"] == calls["bulk_register"] == 1  # the three fresh ones
    assert calls["url"] == calls["register"] == 1, calls  # the replace, on its own
    assert set(b.registered) == {*fresh, replace} and not b.failures
    assert sorted(names(client, dataset, "/r")) == ["n0.png", "n1.png", "n2.png", "old.png"]

    lone = b.stage("/r", "lone.png", png_bytes(80))
    before = counts(server)
    b.release([lone])
    b.settle()
    assert delta(server, before) == {"url": 1, "put": 1, "register": 1}


# ---------------------------------------------------------------------- picking companions


class FakeJournal:
    """Just ``get``: entry id → a fresh entry in a folder."""

    def __init__(self, entries: dict[str, tuple[str, str]]) -> None:
        from pictofs.core.upload.journal import Entry

        self._entries = {i: Entry(i, folder, name, "queued", True, False, 1, None, None, None,
                                  None, None, "none", None, None, 0.0, 0.0)
                         for i, (folder, name) in entries.items()}

    def get(self, entry_id: str) -> Any:
        return self._entries.get(entry_id)


def test_companions_are_due_fresh_entries_of_the_folder_with_distinct_names() -> None:
    now = [0.0]
    schedule = Schedule(lambda: now[0], pause=1.0)
    journal = FakeJournal({"a1": ("/a", "1.png"), "a2": ("/a", "2.png"),
                           "a2bis": ("/a", "2.png"), "b1": ("/b", "1.png"),
                           "a3": ("/a", "3.png"), "later": ("/a", "4.png")})
    for entry_id in ("a1", "a2", "a2bis", "b1", "a3"):
        schedule.due_in(schedule.add(entry_id), 0.0)
    schedule.due_in(schedule.add("later"), 5.0)

    first, _ = schedule.take()
    assert first is not None and first.entry_id == "a1"
    taken = companions(schedule, journal, first, limit=10, workers=1)  # type: ignore[arg-type]

    assert [t.entry_id for t in taken] == ["a2", "a3"]
    assert all(t.running for t in taken)
    rest, _ = schedule.take()
    assert rest is not None and rest.entry_id == "a2bis"  # passed over, still due
    assert schedule.take()[0].entry_id == "b1"  # type: ignore[union-attr]


def test_companions_share_what_is_due_between_the_workers() -> None:
    schedule = Schedule(lambda: 0.0, pause=1.0)
    journal = FakeJournal({f"e{n}": ("/a", f"{n}.png") for n in range(40)})
    for n in range(40):
        schedule.due_in(schedule.add(f"e{n}"), 0.0)
    first, _ = schedule.take()
    assert first is not None
    taken = companions(schedule, journal, first, limit=100, workers=4)  # type: ignore[arg-type]
    assert len(taken) + 1 == 10  # 40 due, 4 workers
