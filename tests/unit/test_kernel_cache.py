"""What ``KernelCache`` takes back and when, without a mount: its calls into libfuse are
replaced by a list, and its clock by a number the test moves."""

from __future__ import annotations

from pictofs.fs.kernel_cache import KernelCache, kernel_timeouts


class Recorded(KernelCache):
    def __init__(self) -> None:
        self.now = 100.0
        super().__init__(clock=lambda: self.now)
        self.taken: list[str] = []

    def _call(self, paths: list[str]) -> None:
        self.taken.extend(paths)

    def due(self) -> list[str]:
        """What the worker would take back now."""
        with self._lock:
            paths = self._take_due()
        self._call(paths)
        taken, self.taken = self.taken, []
        return sorted(taken)


def test_timeouts_long_only_above_one_second():
    assert kernel_timeouts(30.0) == (30.0, 1.0)
    assert kernel_timeouts(1.0) == (1.0, 1.0)
    assert kernel_timeouts(0.5) == (0.5, 0.5)
    assert kernel_timeouts(0.0) == (0.0, 0.0)


def test_paths_are_taken_back_at_their_deadline_the_earliest_one_counting():
    cache = Recorded()
    cache.handed_out_many(["/a.png", "/b.png"], 30.0)
    cache.handed_out("/b.png", 1.0)  # e.g. pending now: the earlier deadline wins
    cache.handed_out("/a.png", 60.0)  # a later one does not push the first back
    assert cache.due() == []
    cache.now += 1.0
    assert cache.due() == ["/b.png"]
    cache.now += 29.0
    assert cache.due() == ["/a.png"]
    cache.now += 100.0
    assert cache.due() == []


def test_a_rename_carries_the_deadlines_along_with_a_folders_contents():
    cache = Recorded()
    cache.handed_out("/d", 10.0, is_dir=True)
    cache.handed_out_many(["/d/x.png", "/d/sub/y.png"], 5.0)
    cache.renamed("/d", "/e")
    cache.now += 5.0
    assert cache.due() == ["/e/sub/y.png", "/e/x.png"]
    cache.now += 5.0
    assert cache.due() == ["/e"]


def test_refresh_takes_back_everything_at_once_and_forgets_the_deadlines():
    cache = Recorded()
    cache.handed_out_many(["/a.png", "/b.png"], 30.0)
    cache.handed_out("/d", 30.0, is_dir=True)
    cache.forget_all()
    assert sorted(cache.taken) == ["/a.png", "/b.png", "/d"]
    cache.taken.clear()
    cache.now += 31.0
    assert cache.due() == []


def test_forget_under_soon_includes_the_folder_and_what_is_recorded_under_it():
    cache = Recorded()
    cache.handed_out_many(["/d/x.png", "/dx.png"], 30.0)
    cache.forget_under_soon("/d")
    with cache._lock:
        queued = [p for _seq, paths in cache._soon for p in paths]
    assert sorted(queued) == ["/d", "/d/x.png"]
