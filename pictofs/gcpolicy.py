"""The mount daemon's garbage-collector settings.

A mount keeps big, long-lived, acyclic structures: a folder of 100,000 images is 100,000
``Image`` records, their stat rows and the dicts that index them. CPython's cyclic collector
(3.11) scans every tracked object of the oldest generation whenever the objects that
survived into it since its last pass outnumber a quarter of it, and considers that every
70,000 net allocations with its default thresholds (700, 10, 10). Building such a listing
therefore ran several full passes over a heap that only grew: in-process, a cold listing of
100,000 images spent 0.55 s of its 1.9 s of CPU in the collector, and the rows alone went
from 0.26 s to 0.62 s.

Nothing the mount keeps relies on the collector to be freed (reference counting frees it),
so the daemon asks for collections less often, and sets aside what exists once it is
built (its modules, classes and functions) so that no full pass scans them again. Cycles
still get collected: the youngest generation every 50,000 net allocations, the oldest
after 400 of those. ``docs/performance.md`` ("The collector and big listings") has the
figures.
"""

from __future__ import annotations

import gc

# Net allocations of tracked objects between collections of the youngest generation, and
# how many collections of each generation before the next one is collected (CPython's
# defaults: 700, 10, 10).
THRESHOLDS = (50_000, 20, 20)


def settle_daemon_heap() -> None:
    """Collect once, move every object that exists now to the permanent generation (never
    scanned again; still freed by reference counting when no longer used), and collect
    less often from now on. Called once, when the mount's object graph is built."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
