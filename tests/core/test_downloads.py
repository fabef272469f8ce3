"""Reading images through the Downloader (filesystem spec §4), with an in-test byte source
standing in for the network in front of the server: chunk pacing by events, failure
injection, truncation and call counting."""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import pytest

from pictofs.core.cache.store import ImageCache
from pictofs.core.cache.downloads import Downloader, Reader
from pictofs.errors import CutShort, NotFound, Unavailable

pytestmark = pytest.mark.timeout(60)

CHUNK = 1000
SAFETY = 30  # seconds: only so that a broken test fails instead of hanging


@dataclass
class Gate:
    """Holds a stream before chunk ``index`` until released."""

    index: int
    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self.opened.set()


@dataclass
class Stream:
    """What one ``open_bytes`` call did."""

    image_id: str
    delivered: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


class ByteSource:
    """Serves images as chunks of ``CHUNK`` bytes. ``hold``, ``fail`` and ``truncate`` apply
    to the next stream of an image only."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images = images
        # guards calls, streams and the one-shot plans below
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.streams: list[Stream] = []
        self._gates: dict[str, Gate] = {}
        self._failures: dict[str, tuple[int, Exception]] = {}
        self._truncations: dict[str, int] = {}
        self._all_gates: list[Gate] = []
        self.answer_delay = 0.0  # seconds each stream waits before its answer (latency)

    def hold(self, image_id: str, before_chunk: int) -> Gate:
        gate = Gate(before_chunk)
        with self._lock:
            self._gates[image_id] = gate
            self._all_gates.append(gate)
        return gate

    def fail(self, image_id: str, at_chunk: int, error: Exception) -> None:
        with self._lock:
            self._failures[image_id] = (at_chunk, error)

    def truncate(self, image_id: str, keep: int) -> None:
        with self._lock:
            self._truncations[image_id] = keep

    def release_all(self) -> None:
        with self._lock:
            gates = list(self._all_gates)
        for gate in gates:
            gate.release()

    @contextmanager
    def open_bytes(self, image_id: str) -> Iterator[Iterator[bytes]]:
        with self._lock:
            self.calls[image_id] += 1
            gate = self._gates.pop(image_id, None)
            failure = self._failures.pop(image_id, None)
            keep = self._truncations.pop(image_id, None)
            stream = Stream(image_id)
            self.streams.append(stream)
        if image_id not in self.images:
            raise NotFound(f"no image {image_id}")
        data = self.images[image_id][:keep]
        if self.answer_delay:
            time.sleep(self.answer_delay)
        try:
            yield self._chunks(data, gate, failure, stream)
        finally:
            stream.closed.set()

    @staticmethod
    def _chunks(data: bytes, gate: Gate | None, failure: tuple[int, Exception] | None,
                stream: Stream) -> Iterator[bytes]:
        for index, start in enumerate(range(0, len(data), CHUNK)):
            if gate is not None and index == gate.index:
                gate.reached.set()
                assert gate.opened.wait(SAFETY)
            if failure is not None and index == failure[0]:
                raise failure[1]
            chunk = data[start:start + CHUNK]
            stream.delivered += len(chunk)
            yield chunk


def image(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


IMAGES = {"a": image(10 * CHUNK, 1), "b": image(10 * CHUNK + 123, 2), "small": image(300, 3)}


@pytest.fixture()
def source() -> Iterator[ByteSource]:
    byte_source = ByteSource(dict(IMAGES))
    yield byte_source
    byte_source.release_all()


@pytest.fixture()
def make_cache(tmp_path: Path) -> Iterator:
    caches: list[ImageCache] = []

    def make(root: Path | None = None, cap: int = 1 << 24, **kwargs: object) -> ImageCache:
        cache = ImageCache(root or tmp_path / "cache", "http://127.0.0.1:9", "ds", cap, **kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


@pytest.fixture()
def make_downloader(source: ByteSource, make_cache) -> Iterator:
    downloaders: list[Downloader] = []

    def make(cache: ImageCache | None = None) -> Downloader:
        downloader = Downloader(cache or make_cache(), source)
        downloaders.append(downloader)
        return downloader

    yield make
    source.release_all()
    for downloader in downloaders:
        downloader.close(timeout=SAFETY)


def read_all(reader: Reader, size: int, piece: int = 4096) -> bytes:
    return b"".join(reader.read(offset, piece) for offset in range(0, size, piece))


def fetch(downloader: Downloader, image_id: str) -> tuple[bytes, bool]:
    """Open, read everything, close: (bytes, served from the cache)."""
    size = len(IMAGES[image_id])
    with downloader.open(image_id, size) as reader:
        return read_all(reader, size), reader.from_cache


def settle(downloader: Downloader) -> None:
    assert downloader.wait(SAFETY)


# -- cache hits and misses -----------------------------------------------------------------


def test_uncached_image_is_streamed_then_served_from_the_cache(make_downloader,
                                                               source: ByteSource) -> None:
    downloader = make_downloader()

    assert fetch(downloader, "a") == (IMAGES["a"], False)
    settle(downloader)
    assert downloader.cache.contains("a")

    assert fetch(downloader, "a") == (IMAGES["a"], True)
    assert fetch(downloader, "a") == (IMAGES["a"], True)
    assert source.calls["a"] == 1
    stats = downloader.cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.size_bytes) == \
        (2, 1, 1, len(IMAGES["a"]))


def test_cache_survives_a_restart_with_no_request(make_downloader, make_cache,
                                                  source: ByteSource) -> None:
    first = make_downloader()
    fetch(first, "b")
    settle(first)
    first.close()
    first.cache.close()

    again = make_downloader(make_cache())
    assert fetch(again, "b") == (IMAGES["b"], True)
    assert source.calls["b"] == 1


def test_reads_past_the_end_and_of_an_empty_range(make_downloader) -> None:
    downloader = make_downloader()
    size = len(IMAGES["small"])
    with downloader.open("small", size) as reader:
        assert reader.read(size, 100) == b""
        assert reader.read(0, 0) == b""
        assert reader.read(250, 100) == IMAGES["small"][250:]
    with pytest.raises(ValueError):
        reader.read(0, 10)


# -- streaming -----------------------------------------------------------------------------


def test_first_bytes_are_read_before_the_stream_finishes(make_downloader,
                                                         source: ByteSource) -> None:
    gate = source.hold("a", before_chunk=2)
    downloader = make_downloader()
    with downloader.open("a", len(IMAGES["a"])) as reader:
        assert reader.read(0, 2 * CHUNK) == IMAGES["a"][: 2 * CHUNK]
        assert gate.reached.is_set() and not gate.opened.is_set()  # the source still waits
        assert source.streams[0].delivered == 2 * CHUNK
        gate.release()
        assert read_all(reader, len(IMAGES["a"])) == IMAGES["a"]


def test_two_readers_share_one_download(make_downloader, source: ByteSource) -> None:
    gate = source.hold("a", before_chunk=1)
    downloader = make_downloader()
    first = downloader.open("a", len(IMAGES["a"]))
    assert first.read(0, 10) == IMAGES["a"][:10]
    second = downloader.open("a", len(IMAGES["a"]))
    assert not second.from_cache
    assert second.read(0, 10) == IMAGES["a"][:10]
    gate.release()

    assert read_all(second, len(IMAGES["a"])) == IMAGES["a"]
    assert read_all(first, len(IMAGES["a"])) == IMAGES["a"]
    first.close()
    second.close()
    settle(downloader)
    assert source.calls["a"] == 1
    assert downloader.cache.contains("a")


def test_many_threads_reading_one_image_make_one_request(make_downloader,
                                                         source: ByteSource) -> None:
    gate = source.hold("b", before_chunk=1)
    downloader = make_downloader()
    size = len(IMAGES["b"])
    threads = 8
    opened = threading.Barrier(threads + 1)
    results: list[bytes] = []
    results_lock = threading.Lock()

    def reader_thread(seed: int) -> None:
        with downloader.open("b", size) as reader:
            opened.wait(SAFETY)
            pieces = list(range(0, size, 700))
            random.Random(seed).shuffle(pieces)  # out-of-order reads like readahead
            parts = {offset: reader.read(offset, 700) for offset in pieces}
        with results_lock:
            results.append(b"".join(parts[offset] for offset in sorted(parts)))

    workers = [threading.Thread(target=reader_thread, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    opened.wait(SAFETY)  # every reader has opened while the stream is held
    gate.release()
    for worker in workers:
        worker.join(SAFETY)

    assert results == [IMAGES["b"]] * threads
    assert source.calls["b"] == 1


# -- cancellation --------------------------------------------------------------------------


def test_download_is_cancelled_when_the_last_reader_leaves_early(make_downloader,
                                                                 source: ByteSource) -> None:
    gate = source.hold("a", before_chunk=2)  # 20% arrived
    downloader = make_downloader()
    with downloader.open("a", len(IMAGES["a"])) as reader:
        assert reader.read(0, 100) == IMAGES["a"][:100]
    gate.release()
    settle(downloader)

    stream = source.streams[0]
    assert stream.closed.is_set()
    assert stream.delivered < len(IMAGES["a"])  # the stream was not read to its end
    assert not downloader.cache.contains("a")
    assert list((downloader.cache.folder / "partial").iterdir()) == []

    assert fetch(downloader, "a") == (IMAGES["a"], False)  # a later open starts again
    assert source.calls["a"] == 2


def test_download_completes_when_the_last_reader_leaves_after_half(make_downloader,
                                                                   source: ByteSource) -> None:
    gate = source.hold("a", before_chunk=6)  # 60% arrived
    downloader = make_downloader()
    with downloader.open("a", len(IMAGES["a"])) as reader:
        assert reader.read(5 * CHUNK, CHUNK) == IMAGES["a"][5 * CHUNK: 6 * CHUNK]
    gate.release()
    settle(downloader)

    assert source.streams[0].delivered == len(IMAGES["a"])
    assert downloader.cache.contains("a")
    assert fetch(downloader, "a") == (IMAGES["a"], True)
    assert source.calls["a"] == 1


def test_reader_joining_a_download_keeps_it_alive(make_downloader,
                                                  source: ByteSource) -> None:
    gate = source.hold("a", before_chunk=1)
    downloader = make_downloader()
    first = downloader.open("a", len(IMAGES["a"]))
    second = downloader.open("a", len(IMAGES["a"]))
    first.close()  # one reader is left: no cancellation
    gate.release()
    assert read_all(second, len(IMAGES["a"])) == IMAGES["a"]
    second.close()
    settle(downloader)
    assert downloader.cache.contains("a")
    assert source.calls["a"] == 1


# -- errors --------------------------------------------------------------------------------


def test_stream_failure_wakes_a_waiting_reader_and_a_later_open_retries(
        make_downloader, source: ByteSource, caplog) -> None:
    gate = source.hold("a", before_chunk=3)
    source.fail("a", at_chunk=3, error=Unavailable("connection reset"))
    downloader = make_downloader()
    reader = downloader.open("a", len(IMAGES["a"]))
    assert reader.read(0, CHUNK) == IMAGES["a"][:CHUNK]

    outcome: list[BaseException | bytes] = []
    waiting = threading.Thread(target=lambda: outcome.append(_try_read(reader, 8 * CHUNK)))
    waiting.start()
    with caplog.at_level(logging.WARNING, logger="pictofs.core.cache.downloads"):
        gate.release()
        waiting.join(SAFETY)
        settle(downloader)

    assert len(outcome) == 1 and isinstance(outcome[0], Unavailable)
    assert "connection reset" in str(outcome[0])
    assert reader.read(CHUNK, CHUNK) == IMAGES["a"][CHUNK: 2 * CHUNK]  # arrived bytes stay
    reader.close()
    assert not downloader.cache.contains("a")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]

    assert fetch(downloader, "a") == (IMAGES["a"], False)
    assert source.calls["a"] == 2


def test_the_remote_error_reaches_the_reader(make_downloader, source: ByteSource) -> None:
    downloader = make_downloader()
    with downloader.open("gone", 100) as reader:
        with pytest.raises(NotFound):
            reader.read(0, 100)
    settle(downloader)
    assert not downloader.cache.contains("gone")
    assert list((downloader.cache.folder / "pins").iterdir()) == []


def test_truncated_stream_is_never_served_or_cached(make_downloader,
                                                    source: ByteSource) -> None:
    source.truncate("a", keep=7 * CHUNK + 10)
    downloader = make_downloader()
    size = len(IMAGES["a"])
    with downloader.open("a", size) as reader:
        assert reader.read(0, 7 * CHUNK) == IMAGES["a"][: 7 * CHUNK]
        with pytest.raises(Unavailable, match="ended after"):
            reader.read(7 * CHUNK, CHUNK)
        with pytest.raises(Unavailable):
            reader.read(size - 10, 10)
    settle(downloader)
    assert not downloader.cache.contains("a")
    assert list((downloader.cache.folder / "partial").iterdir()) == []

    assert fetch(downloader, "a") == (IMAGES["a"], False)
    settle(downloader)
    assert downloader.cache.contains("a")


def test_a_stream_cut_short_after_bytes_arrived_is_asked_again(make_downloader,
                                                               source: ByteSource) -> None:
    source.fail("a", at_chunk=4, error=CutShort("cut after 4 chunks"))
    downloader = make_downloader()
    assert fetch(downloader, "a") == (IMAGES["a"], False)
    settle(downloader)
    assert source.calls["a"] == 2
    assert downloader.cache.contains("a")
    assert fetch(downloader, "a") == (IMAGES["a"], True)  # the cached bytes are whole


def test_a_cut_before_any_byte_is_left_to_the_transport(make_downloader,
                                                        source: ByteSource) -> None:
    source.fail("a", at_chunk=0, error=CutShort("cut at once"))
    downloader = make_downloader()
    with downloader.open("a", len(IMAGES["a"])) as reader:
        with pytest.raises(CutShort):
            reader.read(0, CHUNK)
    settle(downloader)
    assert source.calls["a"] == 1
    assert not downloader.cache.contains("a")


def test_stream_longer_than_expected_is_an_error(make_downloader) -> None:
    downloader = make_downloader()
    with downloader.open("a", 5 * CHUNK - 1) as reader:
        with pytest.raises(Unavailable, match="longer"):
            reader.read(4 * CHUNK, CHUNK)
    settle(downloader)
    assert not downloader.cache.contains("a")


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_corrupt_cache_file_is_refetched(make_downloader, make_cache, source: ByteSource,
                                         how: str) -> None:
    first = make_downloader()
    fetch(first, "b")
    settle(first)
    path = first.cache.data_path("b")
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[-500:]
    else:
        data[4321] ^= 0x80
    path.write_bytes(bytes(data))

    remount = make_downloader(make_cache())  # the next mount checks the sha256
    assert fetch(remount, "b") == (IMAGES["b"], False)
    settle(remount)
    assert source.calls["b"] == 2
    assert path.read_bytes() == IMAGES["b"]
    assert fetch(remount, "b") == (IMAGES["b"], True)


# -- a cache disk that fails ---------------------------------------------------------------


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_full_cache_disk_still_serves_reads(small_tmpfs: Path, make_cache,
                                            source: ByteSource, caplog) -> None:
    big = image(3 * 1024 * 1024, 9)  # three times the disk
    source.images["big"] = big
    cache = make_cache(root=small_tmpfs)
    downloader = Downloader(cache, source)
    try:
        with caplog.at_level(logging.WARNING):
            with downloader.open("big", len(big)) as reader:
                assert read_all(reader, len(big), piece=128 * 1024) == big
            settle(downloader)
        assert [r.name for r in caplog.records] == ["pictofs.core.cache.store"]
        assert "No space left on device" in caplog.records[0].getMessage()
        assert not cache.contains("big")
        assert list((cache.folder / "partial").iterdir()) == []

        # the space came back: a small image is cached as usual
        source.images["tiny"] = b"t" * 5000
        with downloader.open("tiny", 5000) as reader:
            assert reader.read(0, 5000) == b"t" * 5000
        settle(downloader)
        assert cache.contains("tiny")
    finally:
        downloader.close(timeout=SAFETY)


class FailingFile(io.FileIO):
    """A cache file whose writes fail with EIO past ``limit`` bytes."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), "r+")
        self.limit = limit

    def write(self, data) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().write(data)


def test_cache_write_error_mid_stream_serves_from_memory(make_downloader, make_cache,
                                                         source: ByteSource, caplog) -> None:
    def opener(path: Path) -> BinaryIO:
        return FailingFile(path, limit=4 * CHUNK)

    gate = source.hold("a", before_chunk=6)
    downloader = make_downloader(make_cache(opener=opener))
    size = len(IMAGES["a"])
    with caplog.at_level(logging.WARNING):
        with downloader.open("a", size) as reader:
            assert reader.read(0, 3 * CHUNK) == IMAGES["a"][: 3 * CHUNK]
            assert reader.read(3 * CHUNK, 3 * CHUNK) == IMAGES["a"][3 * CHUNK: 6 * CHUNK]
            gate.release()
            assert read_all(reader, size) == IMAGES["a"]
        settle(downloader)
    assert len(caplog.records) == 1
    assert not downloader.cache.contains("a")


def test_cache_file_that_cannot_be_created_still_serves(make_downloader, make_cache,
                                                        source: ByteSource) -> None:
    def refuse(path: Path) -> BinaryIO:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    downloader = make_downloader(make_cache(opener=refuse))
    assert fetch(downloader, "b") == (IMAGES["b"], False)
    settle(downloader)
    assert not downloader.cache.contains("b")


# -- cap through downloads -----------------------------------------------------------------


def test_cap_holds_while_many_images_download(make_cache, source: ByteSource) -> None:
    for number in range(40):
        source.images[f"n{number}"] = image(3 * CHUNK + number, number)
    cap = 10 * CHUNK
    downloader = Downloader(make_cache(cap=cap), source, max_workers=4)
    try:
        def reader_thread(first: int) -> None:
            for number in range(first, 40, 4):
                data = source.images[f"n{number}"]
                with downloader.open(f"n{number}", len(data)) as reader:
                    assert read_all(reader, len(data), piece=1000) == data

        workers = [threading.Thread(target=reader_thread, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(SAFETY)
        settle(downloader)
        # entries other readers held at an insert may have kept the cache over its cap then;
        # the next insert with nothing held brings it back under
        assert downloader.cache.stats().size_bytes <= cap + 4 * len(source.images["n39"])
        source.images["last"] = image(CHUNK, 99)
        with downloader.open("last", CHUNK) as reader:
            assert reader.read(0, CHUNK) == source.images["last"]
        settle(downloader)
        assert downloader.cache.contains("last")
        assert downloader.cache.stats().size_bytes <= cap
        assert sum(source.calls.values()) == 41
    finally:
        downloader.close(timeout=SAFETY)


def _try_read(reader: Reader, offset: int) -> BaseException | bytes:
    try:
        return reader.read(offset, CHUNK)
    except Exception as exc:  # the test inspects what the reader got
        return exc
