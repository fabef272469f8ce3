"""What the mirror tells its user: the start-up progress (a bar on a terminal, log lines
otherwise) and the report of ``--once`` (filesystem spec §9).

``Progress`` is fed by the upload queue's callbacks (any thread) and drawn by the mirror's
loop (``tick``): on a terminal one line redrawn at most five times a second — files, bytes,
rate, ETA; otherwise one log line every ``LOG_EVERY`` seconds. ``Report`` counts what a run
did and renders the final report.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

from pictofs.names import printable
from pictofs.units import format_size

log = logging.getLogger(__name__)

DRAW_EVERY = 0.2  # seconds between two redraws of the bar
LOG_EVERY = 10.0  # seconds between two progress log lines


@dataclass
class Report:
    attempted: int = 0  # uploads handed to the queue
    uploaded: int = 0  # uploads that landed
    same: int = 0  # already in step: unchanged, only a new mtime, or a new local path
    adopted: int = 0  # already on the service (same name and size), now remembered
    moved: int = 0
    renamed: int = 0
    archived: int = 0
    kept: int = 0  # deleted locally, left on the service (no --delete, or refused)
    left_out: dict[str, str] = field(default_factory=dict)  # path → why (symlink, type, ...)
    failed: dict[str, str] = field(default_factory=dict)  # path → reason
    refused: str | None = None

    @property
    def skipped(self) -> int:
        return self.same + self.adopted + len(self.left_out)

    @property
    def ok(self) -> bool:
        return not self.failed and self.refused is None

    def lines(self) -> list[str]:
        lines = [f"attempted {self.attempted}, uploaded {self.uploaded}, skipped "
                 f"{self.skipped}, failed {len(self.failed)}"]
        extra = [f"{label} {count}" for label, count in (
            ("adopted", self.adopted), ("moved", self.moved), ("renamed", self.renamed),
            ("archived", self.archived), ("kept on the service", self.kept)) if count]
        if extra:
            lines.append(", ".join(extra))
        for path, reason in sorted(self.left_out.items()):
            lines.append(f"skipped {printable(path)}: {printable(reason)}")
        for path, reason in sorted(self.failed.items()):
            lines.append(f"failed {printable(path)}: {printable(reason)}")
        if self.refused:
            lines.append(self.refused)
        return lines


class Progress:
    def __init__(self, stream: TextIO, tty: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._lock = threading.Lock()  # guards the counters below
        self._files = self._bytes = 0
        self._total_files = self._total_bytes = 0
        self._started = clock()
        self._last_draw = float("-inf")
        self._active = False

    def begin(self, files: int, size: int) -> None:
        with self._lock:
            self._files = self._bytes = 0
            self._total_files, self._total_bytes = files, size
            self._started = self._clock()
            self._last_draw = float("-inf") if self._tty else self._started
            self._active = files > 0
        if files:
            log.info("uploading %d files (%s)", files, format_size(size))

    def advance(self, size: int) -> None:
        with self._lock:
            self._files += 1
            self._bytes += size

    def tick(self, force: bool = False) -> None:
        now = self._clock()
        with self._lock:
            if not self._active:
                return
            every = DRAW_EVERY if self._tty else LOG_EVERY
            if not force and now - self._last_draw < every:
                return
            self._last_draw = now
            line = self.line(now)
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
            self._stream.flush()
        else:
            log.info("%s", line)

    def finish(self) -> None:
        """The last drawing; a terminal gets its line ended."""
        if not self._active:
            return
        self.tick(force=True)
        with self._lock:
            self._active = False
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def line(self, now: float | None = None) -> str:
        """``120/1000 files, 1.2M/10.0M, 350.0K/s, ETA 0:25`` (lock held or not: reads
        only)."""
        elapsed = max(1e-6, (self._clock() if now is None else now) - self._started)
        rate = self._bytes / elapsed
        left_files = self._total_files - self._files
        if self._bytes and self._total_bytes:
            eta = (self._total_bytes - self._bytes) / max(rate, 1e-6)
        elif self._files:
            eta = left_files * elapsed / self._files
        else:
            eta = None
        return (f"{self._files}/{self._total_files} files, {format_size(self._bytes)}/"
                f"{format_size(self._total_bytes)}, {format_size(int(rate))}/s, "
                f"ETA {format_eta(eta)}")


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
