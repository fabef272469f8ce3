"""When ``KernelCache`` takes back what the kernel holds, without a mount: its write to the
kernel is replaced by a counter, its clock by a number the test moves, and the worker thread
by calling ``due`` by hand."""

from __future__ import annotations

from pictofs.fs.kernel_cache import FOLLOW_UP, KernelCache, kernel_timeouts


class Recorded(KernelCache):
    def __init__(self) -> None:
        self.now = 100.0
        super().__init__(clock=lambda: self.now)

    def due(self) -> bool:
        """What the worker would do now: take back if a deadline has come."""
        with self._lock:
            come = bool(self._heap) and self._heap[0] <= self.now
        if come:
            self._raise()
        return come


def test_timeouts_long_only_above_one_second():
    assert kernel_timeouts(30.0) == (30.0, 1.0)
    assert kernel_timeouts(1.0) == (1.0, 1.0)
    assert kernel_timeouts(0.5) == (0.5, 0.5)
    assert kernel_timeouts(0.0) == (0.0, 0.0)


def test_the_earliest_deadline_takes_back_everything_once():
    cache = Recorded()
    cache.handed_out_many(["/a.png", "/b.png"], 30.0)
    cache.handed_out("/c.png", 1.0)  # e.g. a pending file: 1 s
    assert not cache.due()
    cache.now += 1.0
    assert cache.due()
    assert cache.raises == 1
    # what was handed out before is gone from the kernel with it: no second raise at 30 s
    cache.now += 29.0
    assert not cache.due()
    assert cache.raises == 1


def test_a_listing_hands_out_one_deadline_not_one_per_name():
    cache = Recorded()
    cache.handed_out_many([f"/{i}.png" for i in range(1000)], 30.0)
    for i in range(1000):
        cache.handed_out(f"/d/{i}.png", 30.0)
    assert len(cache._heap) <= 2


def test_refresh_takes_back_at_once_and_moves_the_generation():
    cache = Recorded()
    cache.handed_out_many(["/a.png"], 30.0)
    generation = cache.generation
    cache.forget_all()
    assert cache.raises == 1
    assert cache.generation == generation + 1
    cache.now += 31.0
    assert not cache.due()


def test_a_listing_page_keeps_its_attributes_only_under_its_generation():
    cache = Recorded()
    generation = cache.generation
    assert cache.plus_allowed(generation)
    cache.forget_all()
    assert not cache.plus_allowed(generation)
    assert cache.plus_allowed(cache.generation)


def test_a_take_back_right_after_a_listing_page_is_done_again_a_second_later():
    """The kernel stamps a page's names when it reads the reply, maybe after the raise."""
    cache = Recorded()
    assert cache.plus_allowed(cache.generation)
    cache.now += 0.5
    cache.forget_all()
    assert cache.raises == 1
    cache.now += FOLLOW_UP / 2
    assert not cache.due()
    cache.now += FOLLOW_UP / 2
    assert cache.due()
    assert cache.raises == 2
    # no page went out since: no third one
    cache.now += 10 * FOLLOW_UP
    assert not cache.due()


def test_no_follow_up_when_the_last_page_is_old():
    cache = Recorded()
    assert cache.plus_allowed(cache.generation)
    cache.now += 2 * FOLLOW_UP
    cache.forget_all()
    cache.now += 10 * FOLLOW_UP
    assert not cache.due()
    assert cache.raises == 1


def test_settle_returns_once_the_worker_served_forget_soon():
    cache = Recorded()
    cache.forget_soon(["/a.png"])
    with cache._lock:
        assert cache._soon_seq > cache._done_seq
    # served as the worker does
    with cache._lock:
        serving = cache._soon_seq
    cache._raise()
    with cache._lock:
        cache._done_seq = serving
    cache.settle(timeout=0.1)
    assert cache.raises == 1
