"""Read-ahead across files: when a program reads a folder's images one after the other in
name order (``cat big/*``, a training loop over sorted names, an image viewer stepping to
the next picture), the next images are downloaded into the cache while it reads the current
one, so its next open finds the download running or done.

This module decides *which* images to fetch and *whether* the machine can afford it; the
``Downloader`` runs the downloads (one per image, shared with readers as always).

Detection, deliberately simple and cheap (it runs in every ``open``): the mount remembers,
per folder, the last image that was *read through* (a read at offset 0 and at least its size
in bytes served: what a whole-file reader does, whatever order the kernel's read-ahead
requests arrive in). Opening an image whose predecessor in the folder's sorted listing is
that image is the signal: the next ``depth`` images after the one opened are fetched. So the
second and every later image of a sequential pass triggers, and so does an open of the
folder's *first* image, where a pass in name order starts (``cat dir/*``, an epoch of a
training loop over sorted names): the second image is then on its way while the first is
read, which saves a round trip at the start of every pass on a distant service. Random
access and a program reading only headers (``file *``) fetch at most the ``depth`` images
after the first; opens of folders not listed recently (no listing held: the read-ahead never
asks the service for one) trigger nothing.

The depth deepens with latency: when the image opened in a pass was fetched ahead but has not
received its first byte yet, the reader has caught up with the read-ahead and waits a round
trip (the service is far away, or slow to answer), so that folder's depth goes to
``max(depth, DEEPEST)`` at once. Doubling instead cost the reader one more round trip at
every step (1, 2, 4, 8: three waits, 0.2 s of a 2-second pass at 40 ms); a reader that
caught up once waits at every depth short of the round trip over its time per image, which
the mount cannot know in advance. A reader that finds its images arrived keeps the depth; an
open that breaks the pass resets it. On a fast service the first byte comes long before the
reader gets there and the depth stays as configured.

How deep: ``NEAR_DEEPEST`` (8) while the service answers quickly, ``FAR_DEEPEST`` (16) once
even the quickest of the last 16 downloads waited ``FAR_LATENCY`` or more for its answer
(the least, not the average: a busy service close by makes some answers wait behind others,
never all of them). On a distant service a stream spends most of
its time waiting for that answer, so the streams in flight set the pace: at 40 ms, 8 (as
many as the official SDK's download threads) made a ``cat`` of 200 images of 500 KB take
1.95-2.0 s, 16 took 1.44-1.50 s. Close by, the reader and the downloads share the CPU, and 16
streams only cost more of it per file (docs/performance.md, "Sixteen streams ahead on a
distant service").

A sweep, for programs that read a whole folder in an order of their own (a training data
loader's workers, each epoch a new shuffle): once ``SWEEP_AFTER`` distinct images of a
folder have been read through, an open that is not part of a pass fetches the folder's next
unread images in name order (from where the sweep left off: any unread image is as likely
to be read next as any other), as many as the deepest pass would. The order cannot be
guessed, but the program will read them all, so the streams in flight are the mount's and
not only the readers'. The waste is bounded: a sweep never fetches more images ahead than
have been read through in that folder, so a program that was only sampling a big folder, or
stops, has cost at most twice the images it read. A sweep goes through a folder once: a
name already read is never fetched by it, and it ends at the folder's last name.

Names are ordered by code point (``sorted``), as ``ls`` and shell globs order them in the C
locale; a program using another collation (mixed-case names under a UTF-8 locale) may not
match our order, and then read-ahead simply does not start.

Bounds: images above ``MAX_IMAGE_BYTES`` are never fetched ahead; the ``Downloader`` keeps
at most twice the current depth of read-ahead downloads nobody has opened in flight, and never
more than the pass's deepest (8 close by, 16 far away), and just before each
request checks the breaker, ``memory_low`` and the cache's room (``no_room_ahead``).
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from pictofs.core.tree.listing import FolderListing
from pictofs.model import Image, split_path

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 16 * 1024 * 1024  # larger images are read on demand only
MIN_FREE_MEMORY = 256 * 1024 * 1024  # below this much available memory, no read-ahead
FOLDERS_REMEMBERED = 64  # folders whose last read-through image is remembered
SWEEP_AFTER = 16  # distinct images of a folder read through before a sweep starts
SWEEP_NAMES = 4096  # names remembered per folder as read through (past it, reads just count)
# the depth a pass deepens to at its first wait (when --prefetch asks for less): close by,
# and where the service's first byte takes FAR_LATENCY (seconds) or more
NEAR_DEEPEST = 8
FAR_DEEPEST = 16
FAR_LATENCY = 0.020
# a mount's download threads (and connections): the read-ahead holds half of them at most,
# the rest stay free for the images readers open
DOWNLOAD_THREADS = 2 * FAR_DEEPEST

Listings = Callable[[str], "FolderListing | None"]


@dataclass
class _Sweep:
    """What a folder's sweep knows: the images read through, and where it left off."""

    read: set[str] = field(default_factory=set)  # up to SWEEP_NAMES names
    reads: int = 0  # distinct images read through (past SWEEP_NAMES, every read counts)
    fetched: int = 0  # downloads the sweep started
    after: str = ""  # the last name the sweep handed out ("": none yet)


class ReadAhead:
    """The read-ahead policy of one dataset. ``depth`` images ahead (0: off); ``listing``
    answers a folder's listing if one is held and fresh, without a request."""

    def __init__(self, depth: int, listing: Listings) -> None:
        self.depth = max(0, depth)
        self.deepest = max(self.depth, NEAR_DEEPEST)
        self.far_deepest = max(self.depth, FAR_DEEPEST)
        self._listing = listing
        # guards _read_through (folder → name of the image read through last, oldest folder
        # first) and _depths (folder → the depth of its pass, where latency deepened it)
        self._lock = threading.Lock()
        self._read_through: OrderedDict[str, str] = OrderedDict()
        self._depths: dict[str, int] = {}
        self._sweeps: OrderedDict[str, _Sweep] = OrderedDict()  # (guarded too) oldest first

    def note_read_through(self, path: str) -> None:
        """The image at ``path`` (inside the dataset) was read from start to end."""
        if not self.depth:
            return
        folder, name = split_path(path)
        with self._lock:
            self._read_through[folder] = name
            self._read_through.move_to_end(folder)
            while len(self._read_through) > FOLDERS_REMEMBERED:
                forgotten, _name = self._read_through.popitem(last=False)
                self._depths.pop(forgotten, None)
            sweep = self._sweeps.get(folder)
            if sweep is None:
                sweep = self._sweeps[folder] = _Sweep()
                while len(self._sweeps) > FOLDERS_REMEMBERED:
                    self._sweeps.popitem(last=False)
            else:
                self._sweeps.move_to_end(folder)
            if name not in sweep.read:
                sweep.reads += 1
                if len(sweep.read) < SWEEP_NAMES:
                    sweep.read.add(name)

    def images_after(self, path: str, caught_up: bool = False, far: bool = False
                     ) -> list[Image]:
        """The images to fetch ahead of an open of ``path``: the next ones in the folder's
        name order (as many as the pass's depth) when the image read through last in this
        folder is the one just before ``path``; else none. ``caught_up``: the open found
        the image fetched ahead and still waiting for its first byte, which deepens the
        pass (to ``far_deepest`` when ``far``: the service answers in ``FAR_LATENCY`` or
        more). Cached or running ones are the caller's to skip."""
        if not self.depth:
            return []
        folder, name = split_path(path)
        with self._lock:
            previous = self._read_through.get(folder)
        listing = self._listing(folder)
        if listing is None:
            self._end_pass(folder)
            return []
        names = listing.image_names()
        at = bisect_left(names, name)
        if at == len(names) or names[at] != name:
            self._end_pass(folder)
            return []
        if at == 0:  # the folder's first image: a pass in name order may start here
            self._end_pass(folder)
        elif names[at - 1] != previous:
            self._end_pass(folder)
            return []
        depth = self._pass_depth(folder, caught_up, far)
        ahead = names[at + 1:at + 1 + depth]
        return [listing.images[n] for n in ahead if n in listing.images]

    def sweep_after(self, path: str, far: bool = False) -> list[Image]:
        """The images a sweep of the folder fetches ahead of an open of ``path`` that
        ``images_after`` found no pass in: once ``SWEEP_AFTER`` distinct images of the folder
        were read through, its next unread names after the sweep's last, as many as the
        deepest pass (``far``: on a distant service) and as the sweep's budget (the images
        read through, less those it fetched) allow. The caller says which it took
        (``swept``); cached or running ones are the caller's to skip."""
        if not self.depth:
            return []
        folder, _name = split_path(path)
        with self._lock:
            sweep = self._sweeps.get(folder)
            if sweep is None or sweep.reads < SWEEP_AFTER:
                return []
            room = min(self._deepest(far), sweep.reads - sweep.fetched)
            after, read = sweep.after, sweep.read  # (the set only grows: read without the lock)
        if room <= 0:
            return []
        listing = self._listing(folder)
        if listing is None:
            return []
        names = listing.image_names()
        chosen: list[Image] = []
        for at in range(bisect_right(names, after) if after else 0, len(names)):
            image = listing.images.get(names[at])
            if image is not None and names[at] not in read:
                chosen.append(image)
                if len(chosen) == room:
                    break
        return chosen

    def swept(self, path: str, handled: list[Image], started: int) -> None:
        """The caller of ``sweep_after`` took ``handled`` (the first of what it was given,
        in order: started, or skipped as cached or running) and started ``started``
        downloads of them."""
        folder, _name = split_path(path)
        with self._lock:
            sweep = self._sweeps.get(folder)
            if sweep is None:
                return
            sweep.fetched += started
            if handled and handled[-1].filename > sweep.after:
                sweep.after = handled[-1].filename
        if started:
            log.debug("read-ahead: sweeping %s (%d read through, %d fetched ahead)", folder,
                      sweep.reads, sweep.fetched)

    def _pass_depth(self, folder: str, caught_up: bool, far: bool) -> int:
        """The depth of the pass in ``folder``: ``deepest`` (``far_deepest`` on a distant
        service) once the reader caught up with it."""
        deepest = self._deepest(far)
        with self._lock:
            depth = self._depths.get(folder, self.depth)
            if caught_up and depth < deepest:
                depth = deepest
                log.debug("read-ahead: %s deepened to %d", folder, depth)
            if depth != self.depth:
                self._depths[folder] = depth
            return depth

    def _deepest(self, far: bool) -> int:
        """How deep a pass may go (and how many a sweep fetches at once): ``far_deepest`` on
        a distant service, else ``deepest``."""
        return self.far_deepest if far else self.deepest

    def _end_pass(self, folder: str) -> None:
        with self._lock:
            self._depths.pop(folder, None)


MEMORY_CHECK_SECONDS = 0.5  # how long an answer of ``memory_low`` is reused

_memory_checked = (-MEMORY_CHECK_SECONDS, False)  # (monotonic time, answer) of the last read


def memory_low() -> bool:
    """Whether the machine has less than ``MIN_FREE_MEMORY`` available (``/proc/meminfo``'s
    MemAvailable): read-ahead fills the page cache and, under pressure, would evict pages
    someone is using. Unknown (no ``/proc``) counts as enough. Read at most every
    ``MEMORY_CHECK_SECONDS`` (a sequential read asks before each image fetched ahead)."""
    global _memory_checked
    now = time.monotonic()
    checked_at, answer = _memory_checked
    if now - checked_at < MEMORY_CHECK_SECONDS:
        return answer
    answer = _read_memory_low()
    _memory_checked = (now, answer)
    return answer


def _read_memory_low() -> bool:
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024 < MIN_FREE_MEMORY
    except (OSError, ValueError, IndexError):
        pass
    return False
