"""The image cache on its own (filesystem spec §4): layout, hits and misses, the cap and LRU
order, pins (also held by another process), sha256 checks, restart and crash recovery, and
failed writes."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import pytest

import pictofs
from pictofs.core.cache import store as cache_module
from pictofs.core.cache import pins as pins_module
from pictofs.core.cache.store import CacheWriteFailed, ImageCache, file_name

BASE_URL = "http://127.0.0.1:9/"
DATASET = "ds-1"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def make_cache(tmp_path: Path, clock: FakeClock) -> Iterator:
    caches: list[ImageCache] = []

    def make(cap: int = 1 << 20, **kwargs: object) -> ImageCache:
        kwargs.setdefault("clock", clock)
        cache = ImageCache(tmp_path / "cache", BASE_URL, DATASET, cap, **kwargs)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def image(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def store(cache: ImageCache, image_id: str, data: bytes) -> bool:
    """Insert an entry the way a download does: begin, write, commit, close."""
    writer = cache.begin(image_id)
    try:
        writer.write(data)
        return writer.commit()
    finally:
        writer.close()


def read_cached(cache: ImageCache, image_id: str) -> bytes | None:
    handle = cache.open_cached(image_id)
    if handle is None:
        return None
    with handle:
        return handle.read()


def child_env() -> dict[str, str]:
    """Environment for a child Python that imports this checkout of pictofs."""
    source_root = str(Path(pictofs.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    return env


def start_child(script: str, *args: str) -> subprocess.Popen[str]:
    """A child process running ``script``; it prints one line when it is ready."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=child_env())
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def kill_child(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


# -- hits, misses, layout ------------------------------------------------------------------


def test_miss_then_hit_and_stats(make_cache) -> None:
    cache = make_cache()
    data = image(5000)

    assert cache.open_cached("a") is None
    assert store(cache, "a", data)
    assert read_cached(cache, "a") == data
    assert read_cached(cache, "a") == data

    stats = cache.stats()
    assert (stats.size_bytes, stats.entries, stats.hits, stats.misses) == (5000, 1, 2, 1)
    assert stats.hit_ratio == pytest.approx(2 / 3)


def test_layout_one_folder_per_service_and_dataset(tmp_path: Path, make_cache) -> None:
    cache = make_cache()
    other = ImageCache(tmp_path / "cache", BASE_URL, "ds-2", 1 << 20)
    try:
        store(cache, "a", b"first")
        assert cache.folder != other.folder
        assert cache.folder.parent == other.folder.parent == tmp_path / "cache"
        origin = json.loads((cache.folder / "origin.json").read_text())
        assert origin == {"base_url": BASE_URL, "dataset_id": DATASET}
        assert cache.data_path("a") == cache.folder / "data" / "a"
        assert cache.data_path("a").read_bytes() == b"first"
        assert other.open_cached("a") is None
    finally:
        other.close()


@pytest.mark.parametrize("image_id", ["../escape", "a/b", ".hidden", "x" * 300])
def test_ids_that_are_not_safe_file_names(make_cache, image_id: str) -> None:
    cache = make_cache()
    assert store(cache, image_id, b"bytes")
    path = cache.data_path(image_id)
    assert path.parent == cache.folder / "data"
    assert path.name == file_name(image_id) != image_id
    assert read_cached(cache, image_id) == b"bytes"


def test_restart_keeps_complete_entries(make_cache) -> None:
    first = make_cache()
    data = image(3000)
    store(first, "a", data)
    first.close()

    second = make_cache()
    assert second.contains("a")
    assert read_cached(second, "a") == data
    assert second.stats().entries == 1


def test_discarded_writer_leaves_nothing(make_cache) -> None:
    cache = make_cache()
    writer = cache.begin("a")
    writer.write(b"half")
    writer.discard()
    writer.close()
    assert not cache.contains("a")
    assert list((cache.folder / "partial").iterdir()) == []
    assert list((cache.folder / "pins").iterdir()) == []


# -- cap and LRU ---------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_opened(make_cache, clock: FakeClock) -> None:
    cache = make_cache(cap=3000)
    for image_id in ("a", "b", "c"):
        store(cache, image_id, image(1000))
        clock.tick()
    read_cached(cache, "a")  # a is now the most recently opened
    clock.tick()

    store(cache, "d", image(1000))

    assert [i for i in "abcd" if cache.contains(i)] == ["a", "c", "d"]
    assert not cache.data_path("b").exists()
    assert cache.stats().size_bytes == 3000


def test_has_file_knows_this_instance_s_entries_without_the_disk(make_cache, clock: FakeClock,
                                                                 monkeypatch) -> None:
    """``has_file`` (asked by the read-ahead at every open of a pass) answers from memory for
    entries inserted or opened here, and sees the ones it evicted go."""
    cache = make_cache(cap=3000)
    for image_id in ("a", "b", "c"):
        store(cache, image_id, image(1000))
        clock.tick()
    read_cached(cache, "a")
    clock.tick()
    other = make_cache(cap=3000)  # another instance of the same cache: it inserted nothing
    looked: list[str] = []
    real = ImageCache.data_path
    monkeypatch.setattr(ImageCache, "data_path",
                        lambda self, image_id: looked.append(image_id) or real(self, image_id))
    assert [i for i in "abc" if cache.has_file(i)] == ["a", "b", "c"]
    assert looked == []
    assert [i for i in "abc" if other.has_file(i)] == ["a", "b", "c"]
    assert looked == ["a", "b", "c"]

    store(cache, "d", image(1000))  # evicts b, the least recently opened
    looked.clear()
    assert [i for i in "abcd" if cache.has_file(i)] == ["a", "c", "d"]
    assert looked == ["b"]


def test_a_lingering_pin_stays_for_others_but_not_for_this_process(make_cache) -> None:
    cache = make_cache(cap=3000)
    store(cache, "a", image(1000))
    cache.pin("a")
    cache.unpin("a", linger=True)  # a reader of the cached entry closed
    pins = cache.folder / "pins"
    assert [p.name for p in pins.iterdir()] == [f"a.{os.getpid()}"]  # other processes see it
    cache.pin("a")  # reopened: the same file serves
    cache.unpin("a", linger=True)
    store(cache, "big", image(2500))  # this process evicts it all the same
    assert not cache.contains("a") and cache.contains("big")
    cache.close()
    assert list(pins.iterdir()) == []


def test_lingering_pins_are_removed_when_their_time_is_up(make_cache, monkeypatch) -> None:
    monkeypatch.setattr(pins_module, "LINGER_SECONDS", 0.0)
    cache = make_cache()
    store(cache, "a", image(1000))
    cache.pin("a")
    cache.unpin("a", linger=True)
    pins = cache.folder / "pins"
    deadline = time.monotonic() + 30  # only so that a broken sweeper fails instead of hanging
    while list(pins.iterdir()):
        assert time.monotonic() < deadline, "the lingering pin was never removed"
        time.sleep(0.01)


def test_cap_respected_under_a_flood_of_inserts(make_cache, clock: FakeClock) -> None:
    cap = 20_000
    cache = make_cache(cap=cap)
    sizes = random.Random(7).choices(range(100, 6000), k=200)
    for number, size in enumerate(sizes):
        store(cache, f"img{number}", image(size, number))
        clock.tick()
        stats = cache.stats()
        assert stats.size_bytes <= cap
        assert cache.contains(f"img{number}")
    on_disk = sum(p.stat().st_size for p in (cache.folder / "data").iterdir())
    assert on_disk == cache.stats().size_bytes


def test_cap_respected_by_concurrent_inserts(make_cache) -> None:
    cap = 50_000
    cache = make_cache(cap=cap)
    threads = 8
    biggest = 4000

    def flood(worker: int) -> None:
        sizes = random.Random(worker).choices(range(500, biggest), k=40)
        for number, size in enumerate(sizes):
            store(cache, f"w{worker}-{number}", image(size, number))

    workers = [threading.Thread(target=flood, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    # every writer has closed: nothing is pinned any more, so the last inserts kept the cap
    # except for entries other writers still held at that moment
    assert cache.stats().size_bytes <= cap + threads * biggest
    store(cache, "last", b"x")
    assert cache.stats().size_bytes <= cap


def test_pinned_entries_are_never_evicted(make_cache, clock: FakeClock) -> None:
    cache = make_cache(cap=5000)
    store(cache, "held", image(2000))
    cache.pin("held")
    clock.tick()
    for number in range(20):
        store(cache, f"img{number}", image(1000, number))
        clock.tick()
        assert cache.contains("held")
        assert cache.stats().size_bytes <= 5000
    assert read_cached(cache, "held") == image(2000)

    cache.unpin("held")
    store(cache, "after", image(5000))  # takes the whole cap: everything else goes
    assert not cache.contains("held")
    assert cache.stats().entries == 1


def store_ahead(cache: ImageCache, image_id: str, data: bytes) -> bool:
    """Insert an entry the way a read-ahead download does: only within the cap."""
    writer = cache.begin(image_id)
    try:
        writer.write(data)
        return writer.commit(within_cap=True, unread=True)
    finally:
        writer.close()


def test_an_image_fetched_ahead_evicts_like_any_insert(make_cache, clock: FakeClock) -> None:
    cache = make_cache(cap=5000)
    for number in range(5):
        store(cache, f"img{number}", image(1000, number))
        clock.tick()
    assert store_ahead(cache, "ahead", image(2000))
    assert not cache.contains("img0") and not cache.contains("img1")
    assert cache.stats().size_bytes == 5000
    assert read_cached(cache, "ahead") == image(2000)


def test_an_image_fetched_ahead_never_takes_the_cache_over_its_cap(make_cache,
                                                                    clock: FakeClock) -> None:
    """Pinned entries fill the cap: a normal insert goes over it, one fetched ahead is not
    stored and evicts nothing."""
    cache = make_cache(cap=5000)
    for number in range(4):
        store(cache, f"img{number}", image(1000, number))
        clock.tick()
    for number in range(3):
        cache.pin(f"img{number}")
    assert cache.no_room_ahead(1000, busy=0) is None  # the unpinned img3 can go
    assert cache.no_room_ahead(3000, busy=0) == "the cache is full of images in use"
    assert cache.no_room_ahead(1000, busy=2000) == "the cache is full of images in use"
    assert not store_ahead(cache, "ahead", image(3000))
    assert not cache.contains("ahead")
    assert [cache.contains(f"img{n}") for n in range(4)] == [True] * 4
    assert not any(cache.folder.glob("partial/*"))
    assert cache.stats().size_bytes == 4000


def test_an_image_fetched_ahead_and_not_opened_is_evicted_last(make_cache,
                                                                clock: FakeClock) -> None:
    """Until it is opened, an entry fetched ahead goes after every other candidate, and
    never to make room for another image fetched ahead."""
    cache = make_cache(cap=3000)
    assert store_ahead(cache, "ahead1", image(1000, 1))
    clock.tick()
    store(cache, "read", image(1000, 2))
    clock.tick()
    store(cache, "read2", image(1000, 3))
    clock.tick()
    store(cache, "next", image(1000, 4))  # a reader's insert: "read" goes, not "ahead1"
    assert not cache.contains("read") and cache.contains("ahead1")
    clock.tick()
    assert store_ahead(cache, "ahead2", image(1000, 5))  # "read2" goes
    assert not cache.contains("read2")
    clock.tick()
    assert store_ahead(cache, "ahead3", image(1000, 6))  # "next" goes
    assert not store_ahead(cache, "ahead4", image(1000, 7))  # only images fetched ahead left
    assert cache.no_room_ahead(1000, busy=0) == "the cache is full of images in use"
    assert [cache.contains(f"ahead{n}") for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert read_cached(cache, "ahead1") == image(1000, 1)  # opened: an ordinary entry now
    assert store_ahead(cache, "ahead4", image(1000, 7))  # so "ahead1" may go for it
    assert not cache.contains("ahead1")


def test_no_room_ahead_without_a_cache_folder() -> None:
    from pictofs.core.cache.store import NullCache

    assert NullCache().no_room_ahead(1, busy=0) == "there is no usable cache"


def test_entry_larger_than_the_cap_is_kept_while_pinned(make_cache, clock: FakeClock) -> None:
    cache = make_cache(cap=1000)
    big = image(5000)
    writer = cache.begin("big")  # a download pins its entry
    writer.write(big)
    assert writer.commit()
    assert read_cached(cache, "big") == big
    clock.tick()

    store(cache, "small", b"s" * 10)
    assert cache.contains("big")  # still pinned by its writer
    assert cache.stats().size_bytes == 5010

    writer.close()
    store(cache, "small2", b"t" * 10)
    assert not cache.contains("big")
    assert cache.stats().size_bytes == 20


PIN_HOLDER = """
    import sys
    from pathlib import Path
    from pictofs.core.cache.store import ImageCache
    root, base_url, dataset, image_id = sys.argv[1:5]
    cache = ImageCache(Path(root), base_url, dataset, 1)
    cache.pin(image_id)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_pin_held_by_another_process(tmp_path: Path, make_cache, clock: FakeClock) -> None:
    cache = make_cache(cap=4000)
    store(cache, "held", image(1000))  # the oldest entry: first in line for eviction
    clock.tick()
    child = start_child(PIN_HOLDER, str(tmp_path / "cache"), BASE_URL, DATASET, "held")
    try:
        for number in range(10):
            store(cache, f"img{number}", image(1000, number))
            clock.tick()
            assert cache.contains("held")
        assert cache.stats().size_bytes <= 4000
    finally:
        kill_child(child)

    # the holder died without unpinning: its pin is stale and no longer protects the entry
    store(cache, "after", image(1000))
    assert not cache.contains("held")


# -- sha256 checks -------------------------------------------------------------------------


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 3] ^= 0x01
        path.write_bytes(bytes(data))
    assert path.stat().st_size == (len(data) if how == "flipped" else len(data) // 2)


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_corrupt_entry_is_dropped_on_first_open_of_a_mount(make_cache, how: str,
                                                            caplog) -> None:
    first = make_cache()
    store(first, "a", image(4000))
    first.close()
    corrupt(first.data_path("a"), how)

    second = make_cache()
    with caplog.at_level(logging.WARNING, logger="pictofs.core.cache.store"):
        assert second.open_cached("a") is None
    assert not second.contains("a")
    assert not second.data_path("a").exists()
    assert second.stats().misses == 1
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "image a" in caplog.records[0].getMessage()


def test_truncation_is_caught_even_after_the_first_open(make_cache) -> None:
    cache = make_cache()
    store(cache, "a", image(4000))
    assert read_cached(cache, "a") == image(4000)  # verified now
    corrupt(cache.data_path("a"), "truncated")
    assert cache.open_cached("a") is None
    assert not cache.contains("a")


def test_the_check_runs_on_the_first_open_after_insert(make_cache) -> None:
    cache = make_cache()
    store(cache, "a", image(4000))
    corrupt(cache.data_path("a"), "flipped")  # the file went bad after it was written
    assert cache.open_cached("a") is None


def test_the_first_open_after_an_insert_here_checks_the_file_without_the_index(
        make_cache, monkeypatch) -> None:
    cache = make_cache()
    store(cache, "a", image(4000))
    store(cache, "b", image(4000, 1))
    looked: list[str] = []
    real = ImageCache._record
    monkeypatch.setattr(ImageCache, "_record",
                        lambda self, image_id: looked.append(image_id) or real(self, image_id))
    assert read_cached(cache, "a") == image(4000)  # a cold read: the record written here
    assert looked == []
    corrupt(cache.data_path("b"), "flipped")  # still checked against that record
    assert cache.open_cached("b") is None
    assert not cache.data_path("b").exists()
    other = make_cache()  # another mount of the same cache reads the index
    assert read_cached(other, "a") == image(4000)
    assert "a" in looked


def test_an_intact_entry_is_not_hashed_again_unless_its_file_changed(make_cache,
                                                                     monkeypatch) -> None:
    hashed: list[str] = []
    real = cache_module.sha256_file

    def counting(handle: BinaryIO) -> str:
        hashed.append("x")
        return real(handle)

    monkeypatch.setattr(cache_module, "sha256_file", counting)
    first = make_cache()
    store(first, "a", image(4000))
    first.close()
    second = make_cache()  # a new mount: size, inode, mtime and ctime as recorded
    assert read_cached(second, "a") == image(4000)
    assert hashed == []
    second.close()
    os.utime(second.data_path("a"))  # touched, bytes intact: hashed once, then trusted
    third = make_cache()
    assert read_cached(third, "a") == image(4000)
    assert read_cached(third, "a") == image(4000)
    assert hashed == ["x"]
    third.close()
    fourth = make_cache()
    assert read_cached(fourth, "a") == image(4000)
    assert hashed == ["x"], "the stamp of the file found intact was not recorded"


def test_an_insert_that_fits_reads_no_other_record(make_cache, monkeypatch) -> None:
    cache = make_cache(cap=1 << 20)
    for n in range(5):
        store(cache, f"i{n}", image(1000, n))
    scans: list[str] = []
    real = ImageCache._records
    monkeypatch.setattr(ImageCache, "_records", lambda self: scans.append("x") or real(self))
    store(cache, "fits", image(1000, 9))
    assert scans == []
    store(cache, "too-big", image((1 << 20) - 3000, 10))  # over the cap: evicts, reads all
    assert scans and cache.stats().size_bytes <= 1 << 20


def test_an_insert_pickles_no_key(make_cache, monkeypatch) -> None:
    """The index's keys (image ids, the total's) are kept as they are: diskcache pickles any
    other key and runs ``pickletools.optimize`` over it, at every get and set."""
    import pickletools
    cache = make_cache(cap=1 << 20)
    store(cache, "first", image(1000, 1))
    optimized: list[bytes] = []
    real = pickletools.optimize
    monkeypatch.setattr(pickletools, "optimize", lambda data: optimized.append(data) or real(data))
    store(cache, "second", image(1000, 2))
    assert read_cached(cache, "second") == image(1000, 2)
    assert optimized == []


def test_the_total_an_earlier_version_kept_is_replaced_by_a_recount(tmp_path: Path,
                                                                     make_cache) -> None:
    """Earlier versions kept the total under a tuple key: a cache they left is recounted at
    start, and their key goes (a process of such a version recounts in turn)."""
    first = make_cache()
    store(first, "a", image(3000, 1))
    store(first, "b", image(2000, 2))
    index = first._index
    index.delete(cache_module._TOTAL_KEY)
    index.set(cache_module._OLD_TOTAL_KEY, 123)  # stale, as another version may leave it
    first.close()

    second = make_cache()
    assert second.stats().size_bytes == 5000
    assert cache_module._OLD_TOTAL_KEY not in second._index
    assert second._index.get(cache_module._TOTAL_KEY) == 5000
    assert sorted(image_id for image_id, _record in second._records()) == ["a", "b"]



# -- crash recovery ------------------------------------------------------------------------


CRASHING_WRITER = """
    import os, sys
    from pathlib import Path
    from pictofs.core.cache.store import ImageCache
    root, base_url, dataset = sys.argv[1:4]
    cache = ImageCache(Path(root), base_url, dataset, 1 << 20)
    writer = cache.begin("partial")
    writer.write(b"p" * 1000)
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_partial_files_of_a_crashed_process_are_discarded(tmp_path: Path, make_cache) -> None:
    cache = make_cache()
    store(cache, "kept", b"kept")
    partial = cache.folder / "partial"
    child = start_child(CRASHING_WRITER, str(tmp_path / "cache"), BASE_URL, DATASET)
    try:
        make_cache()  # a start while the writer lives leaves its partial file alone
        assert len(list(partial.iterdir())) == 1
    finally:
        kill_child(child)

    restarted = make_cache()
    assert list(partial.iterdir()) == []
    assert list((cache.folder / "pins").iterdir()) == []
    assert not restarted.contains("partial")
    assert read_cached(restarted, "kept") == b"kept"


def test_data_files_without_a_record_are_removed_at_start(make_cache) -> None:
    cache = make_cache()
    stray = cache.data_path("stray")
    stray.write_bytes(b"left over")
    make_cache()
    assert not stray.exists()


# -- failed writes -------------------------------------------------------------------------


class FailingFile(io.FileIO):
    """A cache file whose writes fail with EIO once ``limit`` bytes are written."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), "r+")
        self.limit = limit

    def write(self, data) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.limit:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().write(data)


def failing_opener(limit: int):
    def opener(path: Path) -> BinaryIO:
        return FailingFile(path, limit)
    return opener


def test_failed_write_drops_the_entry_with_one_log_line(make_cache, caplog) -> None:
    cache = make_cache(opener=failing_opener(1500))
    writer = cache.begin("a")
    writer.write(b"x" * 1000)
    with caplog.at_level(logging.WARNING, logger="pictofs.core.cache.store"):
        with pytest.raises(CacheWriteFailed):
            writer.write(b"y" * 1000)
    assert writer.read(0, 1000) == b"x" * 1000  # what was written stays readable
    writer.close()

    assert not cache.contains("a")
    assert list((cache.folder / "partial").iterdir()) == []
    assert len(caplog.records) == 1
    assert "Input/output error" in caplog.records[0].getMessage()


def test_cache_file_that_cannot_be_created(make_cache, caplog) -> None:
    def refuse(path: Path) -> BinaryIO:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cache = make_cache(opener=refuse)
    with caplog.at_level(logging.WARNING, logger="pictofs.core.cache.store"):
        with pytest.raises(CacheWriteFailed):
            cache.begin("a")
    assert len(caplog.records) == 1
    assert list((cache.folder / "pins").iterdir()) == []
