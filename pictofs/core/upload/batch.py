"""Several fresh journal entries of one folder uploaded with the bulk routes: one call for the
upload URLs, the PUTs, one call to register them all, or for a large batch with parallel
PUTs one call per ``REGISTER_PIECE`` files whose PUTs landed (protocol §4
"bulk-upload-url", "bulk-register").

A batch is an optimisation of ``job.UploadJob`` for many new files at once (a mirror's
start-up, ``cp -r`` onto a mount): three requests per file become one PUT per file plus two
per batch (a few more for a large one). It keeps every promise of the single job: each
member records in its own journal row, before the register that names it is sent, its size
and sha256 and the ``put`` step with a fresh register key (one transaction for the batch or
the piece; the bulk upload-url call has no key and a resumed entry asks for fresh URLs
anyway, so nothing before it needs a commit), and the register answers (a second
transaction). Every journal write goes through the member's
``Control`` (a member that was held, retargeted or cancelled meanwhile drops out of the
batch at the next step boundary), and the crash points sit at the same boundaries. A member
resumed after a crash is retried on its own: a register the service already took answers
409 and the single job adopts the image when size and sha256 match.

Only *fresh* entries are batched (``batchable``): no replace, never sent before, not
cancelled. The queue picks the members (one folder, distinct names); this module runs them
and returns one outcome per member: a ``Landed``, ``Interrupted``, or the exception that
failed it, which the queue classifies as it does for a single job.
"""

from __future__ import annotations

import logging
import math
import queue
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, Union

from pictofs.core.upload.journal import Entry, Journal
from pictofs.core.upload.job import (
    Disposition,
    Interrupted,
    Landed,
    StagedFile,
    UploadJob,
    classify,
    inspect_entry,
    new_key,
    remember_converted,
    send_bytes,
)
from pictofs.core.upload.schedule import Schedule, Task, TaskControl, record_together
from pictofs.core.upload.states import JobState, Step
from pictofs.errors import AlreadyExists, PermissionDenied
from pictofs.faults import fault_point
from pictofs.model import Image
from pictofs.remote import Remote, UploadTicket

log = logging.getLogger(__name__)

# transient PUT failures in one batch after which its PUTs not started yet are not sent
TROUBLE_AFTER = 3

MemberOutcome = Union[Landed, BaseException]  # how one member ended (Interrupted: it stopped)
MIN_SHARE = 8
SLACK = 0.05  # seconds: entries due this close together travel together
# A batch of more than twice REGISTER_PIECE with parallel PUTs registers the members whose
# PUTs landed REGISTER_PIECE at a time (``BatchJob._pipelined``; measured:
# docs/performance.md, "Registering while the PUTs go").
REGISTER_PIECE = 64


@dataclass(frozen=True)
class PutFile:
    """What bulk-register needs to know about one file whose bytes were PUT."""

    filename: str
    size: int
    content_type: str
    width: int | None
    height: int | None


class BulkRemote(Remote, Protocol):
    """A ``Remote`` that also speaks the bulk upload routes."""

    def request_uploads(self, dataset_id: str, folder: str,
                        files: Sequence[tuple[str, str]]) -> list[UploadTicket]:
        """Upload tickets for ``(filename, content_type)`` pairs of one folder, in order."""
        ...

    def register_uploads(self, dataset_id: str, folder: str,
                         items: Sequence[PutFile]) -> list[Image | Exception]:
        """Register PUT files of one folder; per item, in order, the Image or the error
        (``AlreadyExists`` for a name taken meanwhile)."""
        ...


def batchable(entry: Entry, task: Task) -> bool:
    """Whether an entry may travel in a batch: new bytes under a new name, never sent."""
    return (entry.replaced_id is None and entry.step == Step.NONE
            and entry.register_key is None and entry.image_id is None and not entry.cancelled
            and not task.cancelled and entry.state != JobState.DONE)


def companions(schedule: Schedule, journal: Journal, task: Task, *, limit: int,
               workers: int) -> list[Task]:
    """The due fresh entries of ``task``'s folder (distinct names) to send in one batch with
    it, marked running: up to ``limit`` in all, and about an equal share of what is due per
    worker (so that the workers run batches side by side), but not fewer than ``MIN_SHARE``
    (so that the last few do not trickle out one by one). Called with the queue's lock."""
    if schedule.paused:
        return []
    first = journal.get(task.entry_id)
    if first is None or not batchable(first, task):
        return []
    names = {first.filename}

    def fits(other: Task) -> bool:
        entry = journal.get(other.entry_id)
        if (entry is None or entry.folder != first.folder or entry.filename in names
                or not batchable(entry, other)):
            return False
        names.add(entry.filename)
        return True

    due = schedule.due_count(SLACK) + 1
    share = max(math.ceil(due / max(1, workers)), min(due, MIN_SHARE))
    return schedule.take_matching(min(limit, share) - 1, fits, SLACK)


@dataclass
class _Member:
    entry: Entry
    control: TaskControl
    staged: StagedFile
    ticket: UploadTicket | None = None


class BatchJob:
    def __init__(self, remote: BulkRemote, journal: Journal, dataset_id: str,
                 senders: Executor | None = None) -> None:
        """``senders``: a pool the members' PUTs are sent in side by side (the queue's,
        shared by its workers, so that the PUTs in flight stay bounded); None: one after
        the other in the calling thread."""
        self._remote = remote
        self._journal = journal
        self._dataset_id = dataset_id
        self._senders = senders

    def run(self, members: Sequence[tuple[Entry, TaskControl]]) -> dict[str, MemberOutcome]:
        """Upload the members (one folder); returns each member's outcome by entry id."""
        outcomes: dict[str, MemberOutcome] = {}
        live = self._inspect(members, outcomes)
        if live and self._senders is not None and len(live) > 2 * REGISTER_PIECE:
            self._pipelined(live, outcomes)
            return outcomes
        if live:
            live = self._tickets(live, outcomes)
        if live:
            live = self._put_all(live, outcomes)
        if live:
            self._register_all(live, outcomes)
        return outcomes

    def _pipelined(self, live: list[_Member], outcomes: dict[str, MemberOutcome]) -> None:
        """A large batch with parallel PUTs, registered a piece at a time: the members
        whose PUTs have landed, ``REGISTER_PIECE`` at a time (and whatever is left at the
        end), while the other PUTs are in flight. A register costs a round trip plus the
        service's work per file, which then overlaps the PUTs instead of following the last
        of them (docs/performance.md, "Registering while the PUTs go"). Each member keeps its
        promises: its ``put`` step is recorded before the register that names it."""
        assert self._senders is not None
        put = self._putter()
        landed: queue.SimpleQueue[tuple[_Member, MemberOutcome | None]] = queue.SimpleQueue()

        def send(member: _Member) -> None:
            result: MemberOutcome | None = Interrupted(member.entry.id)
            try:
                result = put(member)
            finally:  # always answered, so that the loop below ends
                landed.put((member, result))

        sending = self._tickets(live, outcomes)
        for member in sending:
            self._senders.submit(send, member)
        piece: list[_Member] = []
        for left in range(len(sending), 0, -1):
            member, result = landed.get()
            if result is None:
                piece.append(member)
            else:
                outcomes[member.entry.id] = result
            if len(piece) >= REGISTER_PIECE or (piece and left == 1):
                self._register_all(self._recorded_put(piece, outcomes), outcomes)
                piece = []

    # ---------------------------------------------------------------- steps

    def _inspect(self, members: Sequence[tuple[Entry, TaskControl]],
                 outcomes: dict[str, MemberOutcome]) -> list[_Member]:
        live = []
        for entry, control in members:
            if not control.current:  # opened for writing again: its file is not hashed
                outcomes[entry.id] = Interrupted(entry.id)
                continue
            try:
                staged = inspect_entry(self._journal, entry, control.header())
            except Exception as exc:  # each member fails on its own
                outcomes[entry.id] = exc
                continue
            live.append(_Member(entry, control, staged))
        return self._checkpoint(live, outcomes)

    def _tickets(self, live: list[_Member], outcomes: dict[str, MemberOutcome]) -> list[_Member]:
        live = self._checkpoint(live, outcomes)
        if not live:
            return live
        fault_point("before_upload_url", len(live))
        folder = live[0].entry.folder
        try:
            tickets = self._remote.request_uploads(
                self._dataset_id, folder,
                [(m.entry.filename, m.staged.content_type) for m in live])
        except Exception as exc:  # the call failed as a whole: every member shares it
            return self._fail_all(live, exc, outcomes)
        for member, ticket in zip(live, tickets):
            member.ticket = ticket
        return live

    def _put_all(self, live: list[_Member], outcomes: dict[str, MemberOutcome]) -> list[_Member]:
        """PUT every member's bytes (in the ``senders`` pool when there is one, else one
        after the other); then record the ``put`` step of those sent in one transaction."""
        put = self._putter()
        if self._senders is None:
            results = [put(member) for member in live]
        else:
            results = list(self._senders.map(put, live))
        sent = []
        for member, result in zip(live, results):
            if result is None:
                sent.append(member)
            else:
                outcomes[member.entry.id] = result
        return self._recorded_put(sent, outcomes)

    def _putter(self) -> Callable[[_Member], MemberOutcome | None]:
        """What sends one member's bytes: None when they landed, else how it ended.

        Failures that say the service or the key is in trouble (a rejected key at once, or
        TROUBLE_AFTER transient failures): the PUTs not started yet would fail the same way,
        so they are not sent and share it. One transient failure (a 503, a reset connection:
        the queue's requests are not retried by the transport) fails only its own member,
        which the queue retries after its backoff."""
        trouble: list[Exception] = []
        transient: list[Exception] = []

        def put(member: _Member) -> MemberOutcome | None:
            if trouble:
                return trouble[0]
            try:
                member.control.checkpoint()
                self._put(member)
            except Interrupted as exc:
                return exc
            except Exception as exc:
                disposition = classify(exc)
                if disposition is Disposition.TRANSIENT:
                    transient.append(exc)
                if disposition is Disposition.AUTH or len(transient) >= TROUBLE_AFTER:
                    trouble.append(exc)
                return exc
            return None

        return put

    def _recorded_put(self, sent: list[_Member], outcomes: dict[str, MemberOutcome]
                      ) -> list[_Member]:
        """Record the ``put`` step of members whose bytes landed (one transaction), each
        with a fresh register key; the members still current."""
        sent = self._record(sent, outcomes,
                            lambda m: {"state": JobState.UPLOADING, "size": m.staged.size,
                                       "sha256": m.staged.sha256, "step": Step.PUT,
                                       "register_key": new_key()})
        for member in sent:
            member.control.mark_put()
        if sent:
            fault_point("after_put", len(sent))
        return sent

    def _put(self, member: _Member) -> None:
        assert member.ticket is not None
        staged = member.staged
        try:
            self._send(member)
        except PermissionDenied as exc:
            if classify(exc) is Disposition.AUTH:
                raise
            log.info("%s: upload URL refused (expired?); asking for a fresh one",
                     member.entry.path)
            member.ticket = self._remote.request_upload(
                self._dataset_id, member.entry.folder, member.entry.filename,
                staged.content_type)
            member.control.checkpoint()
            self._send(member)

    def _send(self, member: _Member) -> None:
        """One PUT, as the single job sends it (``job.send_bytes``): a staging file cut
        shorter meanwhile ends it at once, a source is checked as it is sent."""
        assert member.ticket is not None
        send_bytes(self._remote, member.ticket, member.staged, member.entry.id)

    def _register_all(self, live: list[_Member], outcomes: dict[str, MemberOutcome]) -> None:
        registering = []
        for member in live:
            try:
                member.control.begin_register()
            except Interrupted as exc:
                outcomes[member.entry.id] = exc
                continue
            registering.append(member)
        if not registering:
            return
        landed: dict[str, Landed] = {}
        try:
            results = self._remote.register_uploads(
                self._dataset_id, registering[0].entry.folder,
                [PutFile(m.entry.filename, m.staged.size, m.staged.content_type,
                         m.staged.width, m.staged.height) for m in registering])
            for member, result in zip(registering, results):
                outcome = self._settle(member, result)
                if isinstance(outcome, Landed):
                    landed[member.entry.id] = outcome
                else:
                    outcomes[member.entry.id] = outcome
            if landed:
                fault_point("after_register", len(landed))
                self._journal.record_registered_many(
                    {entry_id: landing.image.id for entry_id, landing in landed.items()})
                for member in registering:  # HEIC stored as .png: which image it became
                    if member.entry.id in landed:
                        remember_converted(self._journal, member.entry,
                                           landed[member.entry.id].image, member.staged)
                outcomes.update(landed)
        except Exception as exc:  # the call failed as a whole
            landed.clear()
            self._fail_all([m for m in registering if m.entry.id not in outcomes], exc,
                           outcomes)
        finally:
            for member in registering:
                member.control.end_register(landed.get(member.entry.id))

    def _settle(self, member: _Member, result: Image | Exception) -> MemberOutcome:
        """One member's register answer, or its adoption after a 409."""
        if isinstance(result, AlreadyExists):
            job = UploadJob(self._remote, self._journal, self._dataset_id, member.control)
            try:
                return job.adopt(member.entry, member.staged)
            except Exception as exc:  # an unadoptable conflict, or the lookup failed
                return exc
        if isinstance(result, Exception):
            return result
        return Landed(result, "uploaded")

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _checkpoint(live: list[_Member], outcomes: dict[str, MemberOutcome]) -> list[_Member]:
        kept = []
        for member in live:
            try:
                member.control.checkpoint()
            except Interrupted as exc:
                outcomes[member.entry.id] = exc
                continue
            kept.append(member)
        return kept

    @staticmethod
    def _record(live: list[_Member], outcomes: dict[str, MemberOutcome],
                changes: Callable[[_Member], dict[str, Any]]) -> list[_Member]:
        """Write each member's journal changes in one transaction; a member that changed
        meanwhile drops out of the batch (Interrupted)."""
        kept = []
        current = record_together([(m.control, changes(m)) for m in live])
        for member, ok in zip(live, current):
            if ok:
                kept.append(member)
            else:
                outcomes[member.entry.id] = Interrupted(member.entry.id)
        return kept

    @staticmethod
    def _fail_all(members: list[_Member], exc: BaseException,
                  outcomes: dict[str, MemberOutcome]) -> list[_Member]:
        for member in members:
            outcomes.setdefault(member.entry.id, exc)
        return []
