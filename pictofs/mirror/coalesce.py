"""Event coalescing for the mirror (filesystem spec §9): a stream of file events becomes
settled batches of paths to look at, so that a burst of events for one file makes one upload.

Pure and clock-free: ``Coalescer.add(event, now)`` and ``Coalescer.due(now)`` take the time
from the caller, so the tests feed literal event lists with literal times. ``coalesce`` runs a
whole list at once.

When a path is settled:

- with close-write events (inotify): ``--settle`` seconds after its last event, and only if
  no write happened since the last close-write (a writer that pauses longer than ``--settle``
  with the file open keeps it waiting). A file created or moved in without writes (a rename
  into place, a hard link) needs no close;
- without them (the polling observer): ``--settle`` seconds after its last event, i.e. once
  size and mtime were stable that long (polling cannot see that a file is still open);
- deletions settle together, ``--settle`` after the last deletion of the burst, so that
  ``rm -r`` is one batch for the ``--max-delete`` guard and can be paired with new files;
- the two ends of a move settle together (in one batch), so the plan sees the move.

A batch (``Settled``) lists the file paths and the folder paths (created, deleted or moved:
their whole content is looked at again); it says nothing about what happened, because the
plan compares the disk with the state database anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = frozenset({"created", "modified", "attrib", "closed", "deleted", "moved",
                   "dir_created", "dir_deleted", "dir_moved"})


@dataclass(frozen=True)
class Event:
    """One file-system event, relative to the mirrored folder (POSIX separators)."""

    kind: str
    path: str
    dest: str | None = None  # moves only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")
        if self.kind in ("moved", "dir_moved") and self.dest is None:
            raise ValueError("a move needs a destination")


@dataclass(frozen=True)
class Settled:
    files: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.files or self.folders)


@dataclass
class _State:
    last: float
    writing: bool = False  # written since the last close-write (close-write mode only)
    gone: bool = False  # deleted or moved away: settles with the deletions
    folder: bool = False
    group: set[str] = field(default_factory=set)  # other paths that settle with this one


class Coalescer:
    def __init__(self, settle: float, close_write: bool = True) -> None:
        self.settle = settle
        self.close_write = close_write
        self._paths: dict[str, _State] = {}
        self._last_gone: float | None = None  # the last deletion of the current burst

    def __len__(self) -> int:
        return len(self._paths)

    def tracking(self, path: str) -> bool:
        """The path has events that did not settle yet."""
        return path in self._paths

    def add(self, event: Event, now: float) -> None:
        kind = event.kind
        if kind in ("moved", "dir_moved"):
            assert event.dest is not None
            source = self._touch(event.path, now, folder=kind == "dir_moved")
            dest = self._touch(event.dest, now, folder=kind == "dir_moved")
            dest.writing, dest.gone = source.writing, False
            source.writing, source.gone = False, True
            self._last_gone = now
            self._join(event.path, event.dest)
            return
        state = self._touch(event.path, now, folder=kind.startswith("dir_"))
        if kind in ("deleted", "dir_deleted"):
            state.gone, state.writing = True, False
            self._last_gone = now
            return
        state.gone = False
        if kind == "modified" and self.close_write:
            state.writing = True
        elif kind == "closed":
            state.writing = False

    def due(self, now: float) -> Settled:
        """Every path settled at ``now`` (forgotten from here on), as one batch."""
        ready = {path for path in self._paths if self._ready(path, now)}
        for path in list(ready):  # a group settles whole or not at all
            group = self._group_of(path)
            if not group <= ready:
                ready -= group
        files = sorted(p for p in ready if not self._paths[p].folder)
        folders = sorted(p for p in ready if self._paths[p].folder)
        for path in ready:
            del self._paths[path]
        if not any(s.gone for s in self._paths.values()):
            self._last_gone = None
        return Settled(tuple(files), tuple(folders))

    def next_due(self) -> float | None:
        """When ``due`` may next return something (None: nothing can settle by waiting)."""
        times = [self._due_time(s) for s in self._paths.values() if not s.writing]
        return min(times) if times else None

    # ---------------------------------------------------------------- internals

    def _touch(self, path: str, now: float, folder: bool) -> _State:
        state = self._paths.get(path)
        if state is None:
            state = self._paths[path] = _State(last=now, folder=folder)
        state.last, state.folder = now, state.folder or folder
        return state

    def _join(self, a: str, b: str) -> None:
        members = self._group_of(a) | self._group_of(b)
        for path in members:
            self._paths[path].group = members - {path}

    def _group_of(self, path: str) -> set[str]:
        state = self._paths.get(path)
        return {path} | (state.group if state else set())

    def _due_time(self, state: _State) -> float:
        if state.gone and self._last_gone is not None:
            return max(state.last, self._last_gone) + self.settle
        return state.last + self.settle

    def _ready(self, path: str, now: float) -> bool:
        state = self._paths[path]
        return not state.writing and now >= self._due_time(state)


def coalesce(events: list[tuple[float, Event]], now: float, settle: float,
             close_write: bool = True) -> tuple[Settled, Coalescer]:
    """Feed timed events in order and return what is settled at ``now`` (and the coalescer,
    holding what is not)."""
    coalescer = Coalescer(settle, close_write)
    for when, event in events:
        coalescer.add(event, when)
    return coalescer.due(now), coalescer
