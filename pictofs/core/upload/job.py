"""One upload of one journal entry, step by step (filesystem spec §5 "Replace", "Names the
service changes", "Durability"), and the pure decisions around it.

A run of ``UploadJob.run``:

1. local checks: size ≤ 50 MB, Pillow identifies the bytes, dimensions, sha256 (recorded,
   with the state ``uploading``, in the same commit as the first step that goes out); the
   Pillow read is skipped when the writer's flush already made it (``Header``, kept by the
   queue) and the staged bytes hash to the sha256 that flush recorded. An
   entry read from its source file (``Entry.source``) keeps the sha256 recorded when it was
   hashed; its PUT hashes the bytes it sends (``SourceBody``), and bytes that are not the
   recorded ones end the run with ``SourceChanged`` before anything is registered;
2. a replace (``replaced_id`` set) first looks at the name: another id there → conflict,
   nothing archived; the same size and sha256 → nothing uploaded, the existing image is the
   answer; otherwise the old id is archived (the journal says ``archived`` first);
3. upload URL (a fresh key, recorded first; a resumed entry always gets a fresh URL), PUT,
   register (its key recorded before it is sent and reused by a resumed entry, so a replayed
   register returns the first answer);
4. a 409 at any step reads the image at the name and adopts it when size and sha256 match;
   bytes stored under another name (HEIC as ``<stem>.png``) are not the bytes sent, so the
   journal's ``converted`` names (what was written under which name became which image) answer
   instead: the same bytes written again under the same name are the remembered image, for
   the replace check of 2. too, and an entry that lands under another name is remembered;
5. a replace whose upload fails for good restores the archived image.

The job talks to the queue through a ``Control``: every journal write goes through it (so a
retarget or cancel that changed the entry makes the job stop at its next step instead of
overwriting the change), and the register runs inside ``Control.register`` so the queue knows
when a register is in flight. Crash points (``pictofs.faults``) sit at the step boundaries.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from pictofs import imaging, names
from pictofs.core.upload.journal import Converted, Entry, Journal
from pictofs.core.upload.states import JobState, Step
from pictofs.errors import (AlreadyExists, NoSpace, NotFound, PermissionDenied, PictofsError,
                            Unavailable)
from pictofs.faults import fault_point
from pictofs.hashing import sha256_chunks, sha256_file
from pictofs.model import Image, join_path
from pictofs.remote import Remote, UploadTicket

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- pure decisions


class Disposition(enum.Enum):
    TRANSIENT = "transient"  # retry with backoff, forever
    AUTH = "auth"  # 401: pause the whole queue until the key works
    PERMANENT = "permanent"  # the entry fails; never retried


def classify(exc: BaseException) -> Disposition:
    """How the queue treats a failed step (filesystem spec §5 "Failures")."""
    status = getattr(exc, "status", None)
    if status == 401:
        return Disposition.AUTH
    if isinstance(exc, (Unavailable, NoSpace)):  # NoSpace: the state disk is full, for now
        return Disposition.TRANSIENT
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return Disposition.TRANSIENT
    return Disposition.PERMANENT


def retry_delay(attempt: int, cap: float, jitter: float = 1.0,
                retry_after: float | None = None) -> float:
    """Backoff before retry number ``attempt`` (1, 2, ...): 1 s doubling, times ``jitter``
    (drawn in [0.75, 1.25]), at least the service's ``Retry-After``, never over ``cap``."""
    backoff = min(2.0 ** max(attempt - 1, 0), cap) * jitter
    return min(cap, max(backoff, retry_after or 0.0))


def draw_jitter(rng: random.Random) -> float:
    return rng.uniform(0.75, 1.25)


def service_name(filename: str) -> str:
    """The name the service stores: HEIC is converted and stored as ``<stem>.png``."""
    if names.extension(filename) == ".heic":
        return filename[: -len(".heic")] + ".png"
    return filename


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def is_unexpected(exc: BaseException) -> bool:
    """Not a failure the code expects (a bug): worth a traceback in the log."""
    return not isinstance(exc, (PictofsError, OSError))


def new_key() -> str:
    """A fresh idempotency key (32 lowercase hex)."""
    return uuid.uuid4().hex


EMPTY_FILE = "empty file: nothing to upload"  # why a 0-byte file fails


# why an entry whose staging file lost bytes fails (the machine stopped before the group
# commit made the file durable)
TORN = ("its staged bytes are not the ones written (the machine stopped before they reached "
        "the disk); copy the file again")


class UploadFailed(PictofsError):
    """A permanent failure found by the job itself (local checks, an unadoptable conflict)."""


class SourceChanged(PictofsError):
    """The source file of an entry uploaded from its source (``Entry.source``) is not the one
    the journal recorded (another size, mtime or sha256, or gone), found before the entry was
    registered: its bytes are not registered, and the caller stages the file again."""


class Interrupted(Exception):
    """The entry changed under the job (hold, retarget, cancel) or the queue is stopping:
    the job stops at this step boundary and the queue decides what comes next."""


class ExactBody:
    """A staging file as a PUT body: exactly ``size`` bytes (the declared Content-Length).
    A file rewritten shorter meanwhile (``O_TRUNC`` of a file being uploaded; the writer's
    hold made this upload stale anyway) ends the request at once with Interrupted, instead
    of leaving the service waiting for the missing bytes until the read timeout, retried.
    Rewound per attempt by the transport."""

    def __init__(self, path: Path, size: int, entry_id: str) -> None:
        self._file = open(path, "rb")
        self._size = size
        self._entry_id = entry_id

    def __enter__(self) -> "ExactBody":
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Any:  # requests streams a body that has __iter__; it calls read()
        while chunk := self.read(1 << 16):
            yield chunk

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._file.tell()
        want = left if n is None or n < 0 else min(n, left)
        data = self._file.read(want) if want > 0 else b""
        if len(data) < want:
            raise Interrupted(self._entry_id)  # the file was cut shorter while being sent
        return data


class SourceBody(ExactBody):
    """A source file as a PUT body, hashed as it is sent: ``check`` (after the PUT) says
    whether the bytes sent are the ones the journal recorded (``staged``'s size and sha256)
    and the file still has the recorded size and mtime. Rewinding starts the hash over."""

    def __init__(self, staged: StagedFile, entry_id: str) -> None:
        try:
            super().__init__(staged.path, staged.size, entry_id)
        except FileNotFoundError:
            raise SourceChanged(f"{staged.path} is gone") from None
        self._staged = staged
        self._digest = hashlib.sha256()
        self._sent = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        position = super().seek(offset, whence)
        if position == 0:
            self._digest, self._sent = hashlib.sha256(), 0
        return position

    def read(self, n: int = -1) -> bytes:
        try:
            data = super().read(n)
        except Interrupted:
            raise SourceChanged(f"{self._staged.path} was cut shorter while it was sent")
        self._digest.update(data)
        self._sent += len(data)
        return data

    def check(self) -> None:
        info = os.fstat(self._file.fileno())
        staged = self._staged
        if ((self._sent, self._digest.hexdigest()) != (staged.size, staged.sha256)
                or (info.st_size, info.st_mtime_ns) != (staged.size, staged.source_mtime_ns)):
            raise SourceChanged(f"{staged.path} changed while it was sent")


def send_bytes(remote: Remote, ticket: UploadTicket, staged: StagedFile,
               entry_id: str) -> None:
    """PUT the staged bytes: a staging file as it is; a source checked against what the
    journal recorded (SourceChanged, after the PUT, when it does not match)."""
    if staged.source_mtime_ns is None:
        with ExactBody(staged.path, staged.size, entry_id) as body:
            remote.put_upload(ticket, body, staged.size)  # type: ignore[arg-type]
        return
    with SourceBody(staged, entry_id) as source:
        remote.put_upload(ticket, source, staged.size)  # type: ignore[arg-type]
        source.check()


# ---------------------------------------------------------------------- local facts


@dataclass(frozen=True)
class Header:
    """What Pillow read from the header of bytes a writer flushed (``imaging.describe`` at
    the flush): their sha256 and oriented dimensions (None: Pillow could not tell). Valid
    for bytes that hash to ``sha256``."""

    sha256: str
    dimensions: tuple[int, int] | None


@dataclass(frozen=True)
class StagedFile:
    path: Path
    size: int
    sha256: str
    content_type: str
    width: int | None
    height: int | None
    source_mtime_ns: int | None = None  # a source's recorded mtime; None: a staging file


def inspect_entry(journal: Journal, entry: Entry, header: Header | None = None) -> StagedFile:
    """``inspect_staged`` of the entry's bytes: its staging file, or its source (which must
    still be what the journal recorded, else SourceChanged; its sha256 is the recorded one,
    checked against the bytes sent by ``SourceBody``). A staging file whose flush recorded
    a size and sha256 must still have them, else the entry fails for good (``TORN``): its
    bytes did not all reach the disk before a crash of the machine, and a torn image is
    never sent. ``header``: what the writer's flush read from the header, used when it is
    of the recorded sha256 and the staged bytes still hash to it."""
    if entry.source is None:
        known = header if header is not None and header.sha256 == entry.sha256 else None
        staged = inspect_staged(journal.staging_path(entry.id), entry.filename, known=known)
        if entry.sha256 is not None and (staged.size, staged.sha256) != (entry.size,
                                                                          entry.sha256):
            raise UploadFailed(TORN)
        return staged
    assert entry.size is not None and entry.sha256 is not None
    path = Path(entry.source)
    try:
        info = os.stat(path)
        staged = inspect_staged(path, entry.filename, entry.sha256)
    except FileNotFoundError:
        raise SourceChanged(f"{path} is gone") from None
    if (info.st_size, info.st_mtime_ns) != (entry.size, entry.source_mtime_ns):
        raise SourceChanged(f"{path} changed since it was hashed")
    return StagedFile(path=path, size=entry.size, sha256=entry.sha256,
                      content_type=staged.content_type, width=staged.width,
                      height=staged.height, source_mtime_ns=entry.source_mtime_ns)


def inspect_staged(path: Path, filename: str, sha256: str | None = None,
                   known: Header | None = None) -> StagedFile:
    """The checks made before any request; raises a permanent error for a doomed file. The
    file is opened once for all of them. ``sha256``: already known (not computed again).
    ``known``: Pillow's answer for bytes of that sha256; the file is hashed first, and
    Pillow reads it only when the hash is another."""
    if not names.is_supported(filename):
        raise UploadFailed(f"unsupported file type {names.extension(filename) or '(none)'}")
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise UploadFailed(EMPTY_FILE)
        if size > names.MAX_IMAGE_BYTES:
            raise UploadFailed(f"too large: {size:,} bytes, over the 50 MB limit "
                               f"({names.MAX_IMAGE_BYTES:,} bytes)")
        if known is not None and sha256 is None:
            sha256 = sha256_file(handle)  # pread: the file's position stays at 0
        if known is not None and known.sha256 == sha256:
            dimensions = known.dimensions
        else:
            try:
                _format, dimensions = imaging.describe(handle)
            except PictofsError as exc:
                raise UploadFailed(f"not an image: {exc}") from None
        if sha256 is None:
            sha256 = sha256_file(handle)
    width, height = dimensions if dimensions else (None, None)
    return StagedFile(path=path, size=size, sha256=sha256,
                      content_type=names.content_type_for(filename), width=width, height=height)


def remember_converted(journal: Journal, entry: Entry, image: Image, staged: StagedFile) -> None:
    """An entry that landed under another name than it was written as (the service
    converted it): remember which image the bytes written became (``Journal.converted``)."""
    if (image.directory_path, image.filename) != (entry.folder, entry.filename):
        journal.remember_converted(Converted(entry.folder, entry.filename, image.id,
                                             staged.size, staged.sha256))


# ---------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Landed:
    """How an entry ended on the service."""

    image: Image
    how: str  # "uploaded", "identical" (replace with the same bytes), "adopted" (after a 409)

    @property
    def uploaded(self) -> bool:
        return self.how == "uploaded"


class Control(Protocol):
    """What the queue lends a running job."""

    def checkpoint(self) -> None:
        """Raise Interrupted if the entry changed or the queue is stopping."""

    def record(self, **changes: Any) -> Entry:
        """Write to the entry's journal row, unless the entry changed (Interrupted)."""

    def put_done(self) -> bool:
        """The PUT of these bytes to this target already finished in this process (a
        register that failed for a while needs no new URL and no second PUT)."""

    def mark_put(self) -> None:
        """Say that the PUT finished."""

    def register(self, step: Callable[[], Landed]) -> Landed:
        """Run the step that makes the entry an image, marked as in flight (a retarget or
        hold waits for it), after a last checkpoint."""

    def begin_register(self) -> None:
        """``register`` in two halves, for a batch that registers many entries in one call:
        a last checkpoint, then marked in flight until ``end_register``."""

    def end_register(self, landed: Landed | None) -> None:
        """The register of ``begin_register`` ended (``landed``: its answer, if any)."""

    def header(self) -> Header | None:
        """What the writer's last flush read from the bytes' header, if this process saw
        it."""


class UploadJob:
    def __init__(self, remote: Remote, journal: Journal, dataset_id: str,
                 control: Control) -> None:
        self._remote = remote
        self._journal = journal
        self._dataset_id = dataset_id
        self._control = control
        # changes waiting to go into the journal with the run's next record: what a run
        # found out before its first request that changes anything (size, sha256, the state
        # 'uploading') needs no commit of its own
        self._carried: dict[str, Any] = {}

    # ---------------------------------------------------------------- upload

    def run(self, entry: Entry) -> Landed:
        """Upload one entry; returns once the journal records it as done."""
        self._control.checkpoint()  # not a file its writer has opened again
        staged = inspect_entry(self._journal, entry, self._control.header())
        self._control.checkpoint()
        self._carried = dict(state=JobState.UPLOADING, size=staged.size, sha256=staged.sha256)
        if entry.replaced_id is not None and entry.step == Step.NONE:
            landed = self._prepare_replace(entry, staged)
            if landed is not None:
                return self._done(entry, landed, staged)
            entry = self._journal.get(entry.id) or entry
        if entry.replaced_id is not None and entry.step == Step.ARCHIVED:
            self._archive_replaced(entry)
        try:
            landed = self._send(entry, staged)
        except Interrupted:
            raise
        except Exception as exc:
            if self._archived(entry) and classify(exc) is Disposition.PERMANENT:
                self._restore_replaced(entry)
            raise
        return self._done(entry, landed, staged)

    def _done(self, entry: Entry, landed: Landed, staged: StagedFile) -> Landed:
        fault_point("after_register")
        self._journal.record_registered(entry.id, landed.image.id)
        remember_converted(self._journal, entry, landed.image, staged)
        return landed

    def _remembered(self, entry: Entry, current: Image, staged: StagedFile) -> bool:
        """``current`` is the image these bytes, written under this name, became before
        (the service stored them under another name, so they cannot be compared)."""
        source = self._journal.converted_at(entry.folder, entry.filename)
        return source is not None and source.image_id == current.id \
            and (source.size, source.sha256) == (staged.size, staged.sha256)

    def _prepare_replace(self, entry: Entry, staged: StagedFile) -> Landed | None:
        """The replace checks; a Landed when the bytes are already there."""
        current = self._remote.find_image(self._dataset_id, entry.folder,
                                          service_name(entry.filename))
        if current is None:
            log.info("%s: the image it replaces is gone; uploading it as a new file", entry.path)
            self._record(replaced_id=None)
            return None
        if current.id != entry.replaced_id:
            raise UploadFailed("conflict: replaced by another client "
                               f"({entry.path} is now image {current.id})")
        if self._remembered(entry, current, staged) or self._same_bytes(current, staged):
            log.debug("%s: same bytes as image %s; nothing to upload", entry.path, current.id)
            return self._control.register(lambda: Landed(current, "identical"))
        self._record(step=Step.ARCHIVED)
        return None

    def _archive_replaced(self, entry: Entry) -> None:
        assert entry.replaced_id is not None
        self._control.checkpoint()
        try:
            self._remote.archive(self._dataset_id, [entry.replaced_id])
        except NotFound:
            log.info("%s: replaced image %s is already gone", entry.path, entry.replaced_id)
        fault_point("after_archive")

    def _send(self, entry: Entry, staged: StagedFile) -> Landed:
        """Upload URL, PUT, register; a 409 on the way ends in adoption or a conflict. A
        resumed entry always gets a fresh URL; its saved register key is reused."""
        if entry.step == Step.PUT and entry.register_key and self._control.put_done():
            register_key = entry.register_key
            if self._carried:
                self._record()  # what this run found out, before its register goes out
        else:
            try:
                ticket = self._ticket(entry, staged)
                self._put(entry, staged, ticket)
            except AlreadyExists:
                return self._control.register(lambda: self._adopt(entry, staged))
            register_key = entry.register_key or new_key()
            self._record(step=Step.PUT, register_key=register_key)
            self._control.mark_put()
            fault_point("after_put")
        sent_before = entry.register_key is not None  # by an earlier run, maybe a crashed one
        return self._control.register(
            lambda: self._register(entry, staged, register_key, sent_before))

    def _record(self, **changes: Any) -> Entry:
        """Write ``changes`` (with what the run carried so far) to the entry's row, in one
        commit, before the request they announce is sent."""
        changes, self._carried = {**self._carried, **changes}, {}
        return self._control.record(**changes)

    def _ticket(self, entry: Entry, staged: StagedFile) -> UploadTicket:
        key = new_key()
        self._record(url_key=key)
        self._control.checkpoint()
        fault_point("before_upload_url")
        ticket = self._remote.request_upload(self._dataset_id, entry.folder, entry.filename,
                                             staged.content_type, idempotency_key=key)
        return ticket

    def _put(self, entry: Entry, staged: StagedFile, ticket: UploadTicket) -> None:
        self._control.checkpoint()
        try:
            send_bytes(self._remote, ticket, staged, entry.id)
        except PermissionDenied as exc:
            if classify(exc) is Disposition.AUTH:
                raise
            log.info("%s: upload URL refused (expired?); asking for a fresh one", entry.path)
            ticket = self._ticket(entry, staged)
            self._control.checkpoint()
            send_bytes(self._remote, ticket, staged, entry.id)

    def _register(self, entry: Entry, staged: StagedFile, key: str,
                  sent_before: bool = False) -> Landed:
        try:
            image = self._remote.register_upload(
                self._dataset_id, entry.folder, entry.filename, staged.size,
                staged.content_type, staged.width, staged.height, idempotency_key=key)
        except AlreadyExists:
            return self._adopt(entry, staged)
        except PictofsError as exc:
            # A key sent before can hold the service's answer to a request it could not
            # read (its sender was killed mid-request): 400 "error parsing the body", replayed
            # for 24 h. A 400/422 means that request created nothing, so one more register
            # with a fresh key cannot make a second image.
            if not sent_before or getattr(exc, "status", None) not in (400, 422):
                raise
            log.info("%s: register with the saved key refused (%s); trying once with a "
                     "fresh key", entry.path, describe(exc))
            fresh = new_key()
            self._record(register_key=fresh)
            return self._register(entry, staged, fresh)
        return Landed(image, "uploaded")

    def adopt(self, entry: Entry, staged: StagedFile) -> Landed:
        """After a 409 on a register sent by someone else (a batch): adopt or fail."""
        return self._adopt(entry, staged)

    def _adopt(self, entry: Entry, staged: StagedFile) -> Landed:
        """After a 409: the image at the name is ours when its size and sha256 match."""
        current = self._remote.find_image(self._dataset_id, entry.folder,
                                          service_name(entry.filename))
        if current is not None and (self._remembered(entry, current, staged)
                                    or self._same_bytes(current, staged)):
            log.info("%s: already on the service as image %s (same bytes): adopted",
                     entry.path, current.id)
            return Landed(current, "adopted")
        stored = join_path(entry.folder, service_name(entry.filename))
        if stored != entry.path:
            raise UploadFailed(f"conflict: the service stores {entry.path} as {stored}, "
                               "and that image exists with other bytes")
        raise UploadFailed(f"conflict: {entry.path} already exists on the service "
                           "with other bytes")

    def _same_bytes(self, image: Image, staged: StagedFile) -> bool:
        if image.file_size != staged.size:
            return False
        with self._remote.open_bytes(image.id) as chunks:
            return sha256_chunks(chunks) == staged.sha256

    # ---------------------------------------------------------------- replace undo

    def _archived(self, entry: Entry) -> bool:
        current = self._journal.get(entry.id) or entry
        return (current.replaced_id is not None
                and Step(current.step).reached(Step.ARCHIVED))

    def _restore_replaced(self, entry: Entry) -> None:
        """The upload failed for good: bring the replaced image back."""
        assert entry.replaced_id is not None
        try:
            self._remote.restore(self._dataset_id, [entry.replaced_id])
        except PictofsError as exc:
            log.error("%s: could not restore the replaced image %s (%s); it stays in "
                      ".archive/", entry.path, entry.replaced_id, describe(exc))
            return
        self._journal.update(entry.id, step=Step.NONE)
        log.warning("%s: upload failed for good; restored the replaced image %s",
                    entry.path, entry.replaced_id)

    # ---------------------------------------------------------------- cancel

    def finish_cancel(self, entry: Entry) -> None:
        """Undo what a cancelled entry put on the service: archive its image, registered or
        possibly registered before a crash (found by name, size and sha256)."""
        image_id = entry.image_id
        if image_id is None and entry.maybe_registered and entry.sha256 is not None:
            current = self._remote.find_image(self._dataset_id, entry.folder,
                                              service_name(entry.filename))
            staged = StagedFile(path=self._journal.staging_path(entry.id), size=entry.size or 0,
                                sha256=entry.sha256, content_type="", width=None, height=None)
            if current is not None and self._same_bytes(current, staged):
                image_id = current.id
        if image_id is None:
            return
        try:
            self._remote.archive(self._dataset_id, [image_id])
        except NotFound:
            return
        log.info("%s: cancelled after it was registered; archived image %s",
                 join_path(entry.folder, entry.filename), image_id)

