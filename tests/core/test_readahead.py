"""Read-ahead across files (``pictofs.core.cache.readahead`` and the ``Downloader``'s read-ahead
downloads), with the in-test byte source of ``test_downloads`` standing in for the network.
The FUSE tests in ``tests/fuse/test_read.py`` check the same through a real mount."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from pictofs.core.cache.store import ImageCache, NullCache
from pictofs.core.cache.downloads import Downloader
from pictofs.core.tree.listing import FolderListing
from pictofs.core.cache.readahead import FAR_DEEPEST, NEAR_DEEPEST, SWEEP_AFTER, ReadAhead
from pictofs.model import Image
from tests.core.test_downloads import CHUNK, SAFETY, ByteSource, image

pytestmark = pytest.mark.timeout(60)

NAMES = ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg"]
DATA = {f"id-{name}": image(5 * CHUNK, number) for number, name in enumerate(NAMES)}


def listing_of(folder: str, names: list[str]) -> FolderListing:
    images = {name: Image(id=f"id-{name}", dataset_id="ds", filename=name,
                          directory_path=folder, file_size=5 * CHUNK) for name in names}
    return FolderListing(folder, images, {}, True, 0.0)


@pytest.fixture()
def source() -> Iterator[ByteSource]:
    byte_source = ByteSource(dict(DATA))
    yield byte_source
    byte_source.release_all()


@pytest.fixture()
def make_downloader(source: ByteSource, tmp_path: Path) -> Iterator:
    made: list[tuple[Downloader, ImageCache | NullCache]] = []
    folder = listing_of("/seq", NAMES)

    def make(depth: int = 1, cap: int = 1 << 24, cache: ImageCache | NullCache | None = None,
             online: bool = True) -> Downloader:
        cache = cache or ImageCache(tmp_path / "cache", "http://127.0.0.1:9", "ds", cap)
        read_ahead = ReadAhead(depth, lambda path: folder if path == "/seq" else None)
        downloader = Downloader(cache, source, read_ahead=read_ahead,
                                is_online=lambda: online)
        made.append((downloader, cache))
        return downloader

    yield make
    for downloader, cache in made:
        downloader.close(timeout=SAFETY)
        cache.close()


def read_through(downloader: Downloader, name: str) -> None:
    """Open ``/seq/name``, read it whole in order, close."""
    size = 5 * CHUNK
    with downloader.open(f"id-{name}", size, f"/seq/{name}") as reader:
        data = b"".join(reader.read(offset, 1024) for offset in range(0, size, 1024))
    assert data == DATA[f"id-{name}"]


def test_the_second_image_of_a_pass_in_name_order_starts_the_next(make_downloader,
                                                                  source) -> None:
    downloader = make_downloader(depth=2)
    read_through(downloader, "p1.jpg")  # not the folder's first image: no pass yet
    assert downloader.wait(SAFETY)
    assert dict(source.calls) == {"id-p1.jpg": 1}
    read_through(downloader, "p2.jpg")
    assert downloader.wait(SAFETY)
    assert dict(source.calls) == {"id-p1.jpg": 1, "id-p2.jpg": 1, "id-p3.jpg": 1,
                                  "id-p4.jpg": 1}
    for name in ("p3.jpg", "p4.jpg"):  # served from the cache: no other request
        with downloader.open(f"id-{name}", 5 * CHUNK) as reader:
            assert reader.from_cache
    assert source.calls["id-p0.jpg"] == 0


def test_an_open_of_the_folders_first_image_starts_a_pass(make_downloader, source) -> None:
    """A pass in name order starts at the first image (``cat dir/*``, an epoch over sorted
    names): the next ones are on their way while it is read, also when an earlier pass
    ended elsewhere in the folder."""
    downloader = make_downloader(depth=2)
    read_through(downloader, "p0.jpg")
    assert downloader.wait(SAFETY)
    assert dict(source.calls) == {"id-p0.jpg": 1, "id-p1.jpg": 1, "id-p2.jpg": 1}
    read_through(downloader, "p4.jpg")  # the last read-through is now p4
    read_through(downloader, "p0.jpg")  # a second epoch: p1 and p2 are cached already
    read_through(downloader, "p1.jpg")  # p0 was read through: p2 and p3 next
    assert downloader.wait(SAFETY)
    assert dict(source.calls) == {f"id-p{n}.jpg": 1 for n in range(5)}


def test_a_download_that_ends_while_the_read_ahead_looks_is_not_requested_again(
        make_downloader, source, tmp_path: Path) -> None:
    """The read-ahead looks at the cache, then at the downloads in flight: a reader's download
    of the same image that ends in between (cached, and gone from the table) is not started
    again. The cache below answers its first look at p3 as it was, then lets the reader's
    download of p3 end before the read-ahead goes on."""
    gate = source.hold("id-p3.jpg", before_chunk=0)
    downloader: Downloader | None = None

    class LateCache(ImageCache):
        looked = False

        def has_file(self, image_id: str) -> bool:
            answer = super().has_file(image_id)
            if image_id == "id-p3.jpg" and not self.looked:
                self.looked = True
                gate.release()
                assert downloader is not None and downloader.wait(SAFETY)
            return answer

    cache = LateCache(tmp_path / "late-cache", "http://127.0.0.1:9", "ds", 1 << 24)
    downloader = make_downloader(depth=2, cache=cache)
    with downloader.open("id-p3.jpg", 5 * CHUNK) as reader:  # a reader's download, held
        assert gate.reached.wait(SAFETY)
        read_through(downloader, "p1.jpg")
        read_through(downloader, "p2.jpg")  # a pass: p3 and p4 next
        assert reader.read(0, 5 * CHUNK) == DATA["id-p3.jpg"]
    assert downloader.wait(SAFETY)
    assert cache.looked
    assert dict(source.calls) == {"id-p1.jpg": 1, "id-p2.jpg": 1, "id-p3.jpg": 1,
                                  "id-p4.jpg": 1}


def test_out_of_order_opens_and_partial_reads_start_nothing(make_downloader, source) -> None:
    downloader = make_downloader(depth=2)
    for name in ("p3.jpg", "p1.jpg", "p4.jpg", "p0.jpg"):
        read_through(downloader, name)
    for name in ("p0.jpg", "p1.jpg"):  # only the start of each (p0 is cached by now)
        with downloader.open(f"id-{name}", 5 * CHUNK, f"/seq/{name}") as reader:
            reader.read(0, 100)
    with downloader.open("id-p2.jpg", 5 * CHUNK, "/seq/p2.jpg") as reader:
        reader.read(0, 100)  # p1 was not read through: p3 and p4 are not fetched ahead
    assert downloader.wait(SAFETY)
    assert source.calls["id-p2.jpg"] == 1
    assert sum(source.calls.values()) == 5


def test_reads_answered_out_of_order_still_count_as_read_through(make_downloader,
                                                                 source) -> None:
    downloader = make_downloader(depth=1)
    size = 5 * CHUNK
    with downloader.open("id-p0.jpg", size, "/seq/p0.jpg") as reader:
        for offset in sorted(range(0, size, 1024), reverse=True):  # the last piece first
            reader.read(offset, 1024)
    read_through(downloader, "p1.jpg")
    assert downloader.wait(SAFETY)
    assert source.calls["id-p2.jpg"] == 1


def test_depth_0_and_opens_without_a_path_start_nothing(make_downloader, source,
                                                       tmp_path: Path) -> None:
    other_cache = ImageCache(tmp_path / "other", "http://127.0.0.1:9", "ds", 1 << 24)
    size = 5 * CHUNK
    for downloader, with_path in ((make_downloader(depth=0), True),
                                  (make_downloader(depth=1, cache=other_cache), False)):
        for name in ("p0.jpg", "p1.jpg", "p2.jpg"):
            path = f"/seq/{name}" if with_path else None  # no path: not a program's open
            with downloader.open(f"id-{name}", size, path) as reader:
                reader.read(0, size)
        assert downloader.wait(SAFETY)
    assert dict(source.calls) == {f"id-p{n}.jpg": 2 for n in range(3)}


def test_no_read_ahead_while_the_service_is_unreachable(make_downloader, source) -> None:
    downloader = make_downloader(depth=1, online=False)
    read_through(downloader, "p0.jpg")
    read_through(downloader, "p1.jpg")
    assert downloader.wait(SAFETY)
    assert source.calls["id-p2.jpg"] == 0


def test_no_read_ahead_without_a_cache(make_downloader, source) -> None:
    downloader = make_downloader(depth=1, cache=NullCache())
    read_through(downloader, "p0.jpg")
    read_through(downloader, "p1.jpg")
    assert downloader.wait(SAFETY)
    assert source.calls["id-p2.jpg"] == 0


def test_a_read_ahead_nobody_reads_completes_and_pins_nothing(make_downloader, source,
                                                              tmp_path: Path) -> None:
    downloader = make_downloader(depth=1)
    gate = source.hold("id-p2.jpg", before_chunk=1)
    read_through(downloader, "p0.jpg")
    read_through(downloader, "p1.jpg")
    assert gate.reached.wait(SAFETY)
    # a reader opens and leaves early: a download of its own would be cancelled, the
    # read-ahead goes on to the end
    with downloader.open("id-p2.jpg", 5 * CHUNK) as reader:
        assert not reader.from_cache
    gate.release()
    assert downloader.wait(SAFETY)
    assert source.calls["id-p2.jpg"] == 1
    assert downloader.cache.contains("id-p2.jpg")
    assert not any((downloader.cache.folder / "pins").glob("id-p2.jpg.*"))


def test_a_reader_catching_up_with_the_read_ahead_deepens_it(make_downloader,
                                                             source) -> None:
    downloader = make_downloader(depth=1)
    gate = source.hold("id-p2.jpg", before_chunk=0)  # a round trip that has not ended
    read_through(downloader, "p0.jpg")
    read_through(downloader, "p1.jpg")  # fetches p2 ahead
    assert gate.reached.wait(SAFETY)
    size = 5 * CHUNK
    with downloader.open("id-p2.jpg", size, "/seq/p2.jpg") as reader:
        gate.release()  # the reader waited for p2's first byte: the depth goes to 8
        assert reader.read(0, size) == DATA["id-p2.jpg"]
    assert downloader.wait(SAFETY)
    assert source.calls["id-p3.jpg"] == 1 and source.calls["id-p4.jpg"] == 1


def test_images_that_arrived_in_time_keep_the_depth(make_downloader, source) -> None:
    downloader = make_downloader(depth=1)
    for name in ("p0.jpg", "p1.jpg", "p2.jpg"):
        read_through(downloader, name)
        assert downloader.wait(SAFETY)  # each read-ahead done before the next open
    assert source.calls["id-p3.jpg"] == 1
    assert source.calls["id-p4.jpg"] == 0


def test_the_depth_goes_to_the_deepest_at_the_first_wait_and_resets_when_the_pass_breaks(
        ) -> None:
    names = [f"q{i:02d}.jpg" for i in range(40)]
    images = {name: Image(id=f"id-{name}", dataset_id="ds", filename=name,
                          directory_path="/q", file_size=1000) for name in names}
    listing = FolderListing("/q", images, {}, True, 0.0)
    read_ahead = ReadAhead(1, lambda path: listing if path == "/q" else None)
    assert (read_ahead.deepest, read_ahead.far_deepest) == (NEAR_DEEPEST, FAR_DEEPEST) == (8, 16)

    def open_next(i: int, caught_up: bool, far: bool = False) -> int:
        read_ahead.note_read_through(f"/q/{names[i - 1]}")
        return len(read_ahead.images_after(f"/q/{names[i]}", caught_up, far))

    assert [open_next(i, False) for i in range(1, 3)] == [1, 1]  # in time: depth N
    assert [open_next(i, True) for i in range(3, 7)] == [8, 8, 8, 8]  # one wait: deepest
    assert open_next(7, False) == 8  # arrived in time: the depth stays
    assert open_next(8, True, far=True) == 16  # a wait on a distant service: farther
    assert open_next(9, True) == 16  # never shallower while the pass goes on
    assert read_ahead.images_after("/q/q03.jpg") == []  # out of order: the pass ends
    assert open_next(20, False) == 1
    assert open_next(21, True, far=True) == 16  # far away, the first wait goes to 16 at once
    assert ReadAhead(20, lambda path: listing).deepest == 20  # asked for more: no deepening


@pytest.mark.parametrize("delay, deepest", [(0.0, NEAR_DEEPEST), (0.03, FAR_DEEPEST)])
def test_a_reader_catching_up_goes_deeper_where_the_service_answers_slowly(
        source, tmp_path: Path, delay: float, deepest: int) -> None:
    """The ``Downloader`` times each download's wait for its answer: where the service
    answers in ``FAR_LATENCY`` or more, a reader that caught up deepens the pass to
    ``FAR_DEEPEST``; close by, to ``NEAR_DEEPEST``."""
    names = [f"s{i:02d}.jpg" for i in range(24)]
    source.images.update({f"id-{name}": image(5 * CHUNK, 200 + i)
                          for i, name in enumerate(names)})
    listing = listing_of("/s", names)
    source.answer_delay = delay
    cache = ImageCache(tmp_path / "cache", "http://127.0.0.1:9", "ds", 1 << 24)
    downloader = Downloader(cache, source, read_ahead=ReadAhead(1, lambda path: listing))
    size = 5 * CHUNK
    try:
        for name in names[:2]:  # s00 starts the pass and fetches s01 ahead; s01: s02
            gate = source.hold("id-s02.jpg", before_chunk=0) if name == "s01.jpg" else None
            with downloader.open(f"id-{name}", size, f"/s/{name}") as reader:
                assert reader.read(0, size) == source.images[f"id-{name}"]
        assert gate is not None and gate.reached.wait(SAFETY)
        with downloader.open("id-s02.jpg", size, "/s/s02.jpg") as reader:
            gate.release()  # the reader caught up with s02, which had no byte yet
            assert reader.read(0, size) == source.images["id-s02.jpg"]
        assert downloader.wait(SAFETY)
        fetched = [name for name in names[3:] if source.calls[f"id-{name}"]]
        assert fetched == names[3:3 + deepest]
    finally:
        source.release_all()
        downloader.close(timeout=SAFETY)
        cache.close()


def test_read_ahead_without_readers_holds_half_the_download_threads_at_most(source,
                                                                           tmp_path: Path
                                                                           ) -> None:
    names = [f"r{i:02d}.jpg" for i in range(20)]
    source.images.update({f"id-{name}": image(5 * CHUNK, 100 + i)
                          for i, name in enumerate(names)})
    listing = listing_of("/r", names)
    gates = [source.hold(f"id-{name}", before_chunk=0) for name in names[3:]]
    cache = ImageCache(tmp_path / "cache", "http://127.0.0.1:9", "ds", 1 << 24)
    downloader = Downloader(cache, source, max_workers=16,
                            read_ahead=ReadAhead(12, lambda path: listing))
    try:
        for name in names[1:3]:  # the second starts a pass asking for 12 ahead (the
            # folder's first image, which starts one too, is left alone)
            with downloader.open(f"id-{name}", 5 * CHUNK, f"/r/{name}") as reader:
                reader.read(0, 5 * CHUNK)
        assert all(gate.reached.wait(SAFETY) for gate in gates[:8])
        time.sleep(0.2)  # room for a ninth to start, if anything let it
        assert sum(source.calls[f"id-{name}"] for name in names[3:]) == 8
    finally:
        source.release_all()
        downloader.close(timeout=SAFETY)
        cache.close()


# ---------------------------------------------------------------------- a sweep

SWEPT = [f"s{n:02d}.jpg" for n in range(64)]
# read in an order of its own: every other name from the top, so never a name right after
# the one read before it (no pass) and never the folder's first name
OWN_ORDER = SWEPT[::-2]


def test_a_folder_read_in_an_order_of_its_own_is_swept_within_its_budget() -> None:
    """After ``SWEEP_AFTER`` distinct read-throughs out of order, an open outside a pass
    offers the next unread names from where the sweep left off, as many as the deepest
    pass (16 far away) and never more in all than the images read through."""
    listing = listing_of("/s", SWEPT)
    read_ahead = ReadAhead(1, lambda path: listing if path == "/s" else None)

    def read(name: str) -> list[str]:
        path = f"/s/{name}"
        assert read_ahead.images_after(path) == []  # no pass
        offered = [image.filename for image in read_ahead.sweep_after(path)]
        read_ahead.note_read_through(path)
        return offered

    assert all(read(name) == [] for name in OWN_ORDER[:SWEEP_AFTER])  # 16 read, none offered
    unread = [name for name in SWEPT if name not in OWN_ORDER[:SWEEP_AFTER + 1]]
    assert read(OWN_ORDER[SWEEP_AFTER]) == unread[:NEAR_DEEPEST]
    far = [image.filename for image in read_ahead.sweep_after("/s/x.jpg", far=True)]
    assert far == unread[:FAR_DEEPEST]
    read_ahead.swept("/s/x.jpg", read_ahead.sweep_after("/s/x.jpg")[:5], 3)  # 3 of 5 started
    assert [i.filename for i in read_ahead.sweep_after("/s/x.jpg")] == unread[5:5 + NEAR_DEEPEST]
    read_ahead.swept("/s/x.jpg", [], SWEEP_AFTER + 1 - 3)  # the budget: 17 read through
    assert read_ahead.sweep_after("/s/x.jpg") == []
    read(OWN_ORDER[SWEEP_AFTER + 1])  # one more read through: room for one more
    assert len(read_ahead.sweep_after("/s/x.jpg")) == 1
    assert ReadAhead(0, lambda path: listing).sweep_after("/s/s01.jpg") == []


def test_a_sweep_fetches_unread_images_once_and_no_more_than_were_read(source,
                                                                       tmp_path: Path) -> None:
    """Through the ``Downloader``: readers in an order of their own get the folder's other
    images fetched ahead once ``SWEEP_AFTER`` were read; every image is requested once
    (a reader shares the sweep's download, or finds it cached), and the images fetched
    ahead and never read are no more than those read."""
    source.images.update({f"id-{name}": image(5 * CHUNK, 200 + i)
                          for i, name in enumerate(SWEPT)})
    listing = listing_of("/s", SWEPT)
    cache = ImageCache(tmp_path / "cache", "http://127.0.0.1:9", "ds", 1 << 26)
    downloader = Downloader(cache, source, read_ahead=ReadAhead(1, lambda path: listing))
    read = OWN_ORDER[:SWEEP_AFTER + 8]
    try:
        for name in read:
            with downloader.open(f"id-{name}", 5 * CHUNK, f"/s/{name}") as reader:
                assert reader.read(0, 5 * CHUNK) == source.images[f"id-{name}"]
            assert downloader.wait(SAFETY)
        requested = {name for name in SWEPT if source.calls[f"id-{name}"]}
        assert all(source.calls[f"id-{name}"] == 1 for name in requested)
        ahead = requested - set(read)
        assert 0 < len(ahead) <= len(read), (len(ahead), len(read))
        assert ahead == set([name for name in SWEPT if name not in read][:len(ahead)])
    finally:
        downloader.close(timeout=SAFETY)
        cache.close()
