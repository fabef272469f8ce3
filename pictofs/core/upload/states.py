"""The closed sets a journal row moves through: its ``JobState`` with the transition table
``TRANSITIONS``, and its ``Step`` (how far the upload got, in order).

Both are ``StrEnum``: a member is its string, so the journal's SQLite columns (and anything
formatted or dumped to JSON) read exactly as the plain strings did. The journal's schema
spells the same values in its ``CHECK`` constraints (the on-disk format, frozen by its version
number). Pure: no I/O, no lock.

The states, and who moves an entry between them (``journal``, ``queue``, ``workers``,
``job``, ``batch``)::

    staged     created (stage, stage_sources); held again (hold, an interrupted run whose file
               was reopened); a flush of new bytes into a failed entry
    queued     due for (another) upload: resume, a retry, an interrupted run, a retarget of
               a failed entry
    uploading  a run recorded its first step (with the size and sha256)
    failed     failed for good; listed until discarded, written again (flush) or renamed
    done       registered as an image; pruned later

``done`` is left only by a cancelled entry (unlinked once registered, or before a crash that
may have registered it) that a worker still has to archive: resume and a retry of that
archive write ``queued``. A write of the state a row already has changes nothing and is
always allowed (a retarget writes the state back as it was).
"""

from __future__ import annotations

import enum
from typing import Mapping


class JobState(enum.StrEnum):
    """The journal's ``state`` column."""

    STAGED = "staged"
    QUEUED = "queued"
    UPLOADING = "uploading"
    FAILED = "failed"
    DONE = "done"


class Step(enum.StrEnum):
    """The journal's ``step`` column: the last step of the upload recorded, in the order they
    are reached (the schema allows ``URL``; nothing here writes it)."""

    NONE = "none"
    ARCHIVED = "archived"
    URL = "url"
    PUT = "put"
    REGISTERED = "registered"

    def reached(self, other: Step) -> bool:
        """Whether this step is ``other`` or one after it."""
        order = list(Step)
        return order.index(self) >= order.index(other)


INITIAL = JobState.STAGED  # the state of every new row

# state → the states that may follow it (besides itself, see the module doc)
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.STAGED: frozenset({JobState.QUEUED, JobState.UPLOADING, JobState.FAILED,
                                # a replace whose bytes the image already has (no request)
                                JobState.DONE}),
    JobState.QUEUED: frozenset({JobState.STAGED, JobState.UPLOADING, JobState.FAILED,
                                JobState.DONE}),
    JobState.UPLOADING: frozenset({JobState.STAGED, JobState.QUEUED, JobState.FAILED,
                                   JobState.DONE}),
    JobState.FAILED: frozenset({JobState.STAGED, JobState.QUEUED}),
    JobState.DONE: frozenset({JobState.QUEUED}),  # a cancelled entry whose image is archived
}


class IllegalTransition(RuntimeError):
    """A state write the table refuses: a bug in the code that asked for it."""


def allowed(old: JobState | str, new: JobState | str) -> bool:
    """Whether a row in state ``old`` may be written with state ``new``."""
    old, new = JobState(old), JobState(new)
    return new == old or new in TRANSITIONS[old]


def check_transition(old: JobState | str, new: JobState | str) -> None:
    """Raise IllegalTransition unless ``allowed(old, new)`` (ValueError: not a state)."""
    if not allowed(old, new):
        raise IllegalTransition(f"upload entry state {JobState(old).value!r} may not become "
                                f"{JobState(new).value!r} (allowed: "
                                f"{sorted(s.value for s in TRANSITIONS[JobState(old)])})")
