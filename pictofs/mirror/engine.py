"""Carries out the mirror's plans: uploads through the journaled upload queue (the one the
mount uses), server-side moves and archives, and the state database around them.

Uploads are staged in chunks: each file hashed as one consistent state (``local.fingerprint``)
into a new entry that reads its bytes from the file itself (``UploadQueue.stage_sources``),
the chunk recorded in the state database as *pending* with the entry ids, then made due
together (so that the queue's workers send it with the bulk routes); at most
``WINDOW_FILES`` (and ``WINDOW_BYTES``) are staged and not landed at a time. The queue checks
the bytes it sends against the size, mtime and sha256 recorded here; a file that changed
before its bytes were registered comes back (``_source_changed``) and is looked at again,
and its next upload is copied into a staging file first (``local.snapshot``), so that a file
that keeps changing is sent as one consistent state of it.
The queue's callbacks (worker threads) turn the entries a batch landed into rows (one
transaction) — and archive the image a rename retires — or a failed one into a known
failure, reported once and not retried until the file changes.

``recover`` runs before the queue resumes its journal after a crash: an entry the journal
saw land is recorded, a dropped one is forgotten (its file is looked at again), a rename
whose upload landed gets its old image archived.

Staging files are made durable by the queue's group commit only (``core.upload.commits``):
the mirrored file itself is the durable copy. After a crash of the machine a staging file may have lost bytes,
so ``recover`` checks every waiting entry's staging file against the sha256 taken when it was
staged (and an entry read from its file, that file's size and mtime); an entry that does not
match, or that the state database does not know, is cancelled (an image it may have
registered is archived by the queue) and its file is looked at again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pictofs.core.upload.journal import Journal
from pictofs.core.tree.listing import list_images_consistent
from pictofs.core.upload.queue import SourceFile, UploadQueue
from pictofs.core.upload.states import JobState
from pictofs.errors import NotFound, PictofsError
from pictofs.hashing import sha256_file
from pictofs.mirror import local
from pictofs.mirror.plan import (
    FAILED_VERDICTS, Failure, Known, LocalFile, Move, Plan, Row, Upload, Verdict,
)
from pictofs.mirror.progress import Progress, Report
from pictofs.mirror.state import MirrorState, QueuedUpload
from pictofs.model import Image, join_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)

CHUNK_FILES, CHUNK_BYTES = 250, 64 << 20  # staged and scheduled together
FIRST_CHUNK_FILES = 16
WINDOW_FILES, WINDOW_BYTES = 1000, 256 << 20  # staged and not landed, at most
ARCHIVE_CHUNK = 1000


class Stopped(Exception):
    """A stop was asked for: no more steps are started."""


class Engine:
    def __init__(self, root: Path, remote: Remote, dataset_id: str, state: MirrorState,
                 journal: Journal, *, transfers: int, retry_max_wait: float, batch: int,
                 progress: Progress, report: Report,
                 landed: Callable[[str], None] = lambda rel: None,
                 upload_remote: Remote | None = None) -> None:
        """``upload_remote`` (default ``remote``) is the one the upload queue sends with:
        ``pictofs.mirroring`` gives it one without transport retries (the queue retries a
        failed step itself while its worker goes on with other files)."""
        self.root = root
        self._remote = remote
        self._dataset_id = dataset_id
        self.state = state
        self.progress = progress
        self.report = report
        self._landed = landed
        self._journal = journal
        self._batch = batch
        self.queue = UploadQueue(upload_remote or remote, journal, dataset_id,
                                 transfers=transfers,
                                 write_back=0.0, retry_max_wait=retry_max_wait,
                                 on_registered_many=self._registered,
                                 on_failed=self._failed, on_changed=self._source_changed,
                                 batch=batch, parallel_puts=True)
        # _lock guards _live, _known, _noted, _said, _retry_later, _copy and report; _changed
        # is signalled when an upload lands or fails.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._live: dict[str, tuple[str, int]] = {}  # entry id → (rel, size) in flight
        self._known: dict[str, Known] = {}  # rel → a failure reported for these bytes
        self._noted: set[tuple[str, int, int]] = set()  # left-out files already logged
        self._said: set[tuple[str, str]] = set()  # plan failures already logged
        self._folders: set[str] = set()  # folders made on the service by this process
        self.stopping = threading.Event()
        self._retry_later: set[str] = set()  # changed while read, or a move that failed
        self._copy: set[str] = set()  # changed while uploaded: staged as a copy next time
        self.announce = False  # log each upload as it lands (while watching)

    # ---------------------------------------------------------------- life cycle

    def recover(self) -> None:
        """Settle what a previous run left in flight; then resume and start the queue."""
        for entry in self.queue.failed():
            self.queue.discard(entry.id)
        pending_now = self.state.pending()
        for entry in self.queue.entries():  # a staging file no pending row vouches for
            if entry.flushed and not entry.cancelled and entry.id not in pending_now:
                log.info("restaging %s: its entry is unknown to the mirror state", entry.path)
                self.queue.discard(entry.id)
        for entry_id, pending in pending_now.items():
            entry = self.queue.get(entry_id)
            if entry is not None and entry.state == JobState.DONE and entry.image_id:
                self._recover_landed(entry_id, entry.image_id)
            elif entry is None or entry.cancelled or not entry.flushed:
                self.state.fail(entry_id)
            elif not self._staged_intact(entry_id, pending):
                log.info("restaging %s: its staging copy did not survive the crash intact",
                         pending.rel)
                self.queue.discard(entry_id)
                self.state.fail(entry_id)
            else:
                self._live[entry_id] = (pending.rel, pending.size)
        waiting = set(self.state.pending())
        for rel, entry_id in self.state.superseded().items():
            row = self.state.row(rel)
            if entry_id not in waiting and row is not None:
                self._retire(row)
        self._journal.delete_done()  # settled above; at once rather than one by one
        self.queue.resume()
        self.queue.start()

    def _staged_intact(self, entry_id: str, pending: QueuedUpload) -> bool:
        """The entry's staging file still has the sha256 taken when it was staged. An entry
        read from its file is resumed as it is: the queue checks that file against what it
        recorded before anything is registered, and one that changed comes back through
        ``_source_changed`` once an image the crashed run may have registered is archived."""
        entry = self.queue.get(entry_id)
        if entry is not None and entry.source is not None:
            return True
        try:
            return sha256_file(self.queue.staging_path(entry_id)) == pending.sha256
        except OSError:
            return False

    def _recover_landed(self, entry_id: str, image_id: str) -> None:
        try:
            image = self._remote.get_image(image_id)
        except NotFound:
            self.state.fail(entry_id)
            return
        landing = self.state.land(entry_id, image)
        if landing is not None and landing.archive is not None:
            self._retire(landing.archive)

    def stop(self, timeout: float = 30.0) -> bool:
        self.stopping.set()
        return self.queue.stop(timeout)

    def pending_rels(self) -> set[str]:
        with self._lock:
            return {rel for rel, _ in self._live.values()}

    def retry_later(self, rels: Iterable[str]) -> None:
        """Paths to look at again later (``take_retry_later``)."""
        with self._lock:
            self._retry_later.update(rels)

    def has_retry_later(self) -> bool:
        with self._lock:
            return bool(self._retry_later)

    def take_retry_later(self) -> set[str]:
        """The paths to look at again, forgotten here."""
        with self._lock:
            rels, self._retry_later = self._retry_later, set()
            return rels

    def known_failures(self) -> dict[str, Known]:
        with self._lock:
            return dict(self._known)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._live)

    def wait_done(self, poll: float = 0.2) -> bool:
        """Until every upload handed over landed or failed; False when stopped first."""
        while True:
            with self._changed:
                if self.stopping.is_set():
                    return False
                if self._live:
                    self._changed.wait(poll)
                    idle = False
                else:
                    idle = True
            if idle and self.queue.wait_idle(poll):  # resumed entries this run did not stage
                return True
            self.progress.tick()

    # ---------------------------------------------------------------- plans

    def note_left_out(self, left_out: dict[str, tuple[Verdict, str, int, int]]) -> None:
        """Symlinks, unsupported, empty, oversize or badly named files: reported once."""
        for rel, (verdict, reason, size, mtime_ns) in left_out.items():
            if verdict in FAILED_VERDICTS:
                self._fail_known(rel, size, mtime_ns, reason)
                continue
            with self._lock:
                self.report.left_out[rel] = reason
                first = (rel, size, mtime_ns) not in self._noted
                self._noted.add((rel, size, mtime_ns))
            if first and verdict is not Verdict.EMPTY:
                log.info("skipped %s: %s", rel, reason)

    def apply(self, plan: Plan) -> None:
        """Carry out a plan; raises Stopped when a stop interrupts it (what is not staged
        yet is left for the next run)."""
        for failure in plan.failures:
            self._report_failure(failure)
        with self._lock:
            self.report.same += plan.unchanged + len(plan.touches) + len(plan.relinks)
            self.report.kept += len(plan.kept)
            if plan.refused:
                self.report.refused = plan.refused
        if plan.refused:
            log.error("%s", plan.refused)
        for touch in plan.touches:
            self.state.touch(touch.file.rel, touch.file.size, touch.file.mtime_ns)
        for relink in plan.relinks:
            row = relink.row
            self.state.relink(row.rel, _row(relink.file, row.image_id, row.folder, row.name))
        for adopt in plan.adopts:
            self._adopt(adopt.file, adopt.image)
        if plan.forgets:
            self.state.delete([row.rel for row in plan.forgets])
        self._move_all(plan.moves)
        self._upload_all(plan.uploads)
        self._archive(plan.archives)

    def _adopt(self, f: LocalFile, image: Image) -> None:
        try:
            sha = f.sha256 or sha256_file(self.root / f.rel)
        except OSError:
            return  # gone meanwhile: the next look at it decides
        self.state.put(_row(f, image.id, image.directory_path, image.filename, sha))
        with self._lock:
            self.report.adopted += 1
        log.debug("%s is already on the service as image %s: adopted", f.rel, image.id)

    def _move_all(self, moves: list[Move]) -> None:
        """Server-side moves, one batch call per target folder."""
        by_folder: dict[str, list[Move]] = {}
        for move in moves:
            by_folder.setdefault(move.folder, []).append(move)
        for folder, group in sorted(by_folder.items()):
            self._check_stop()
            self._move_into(folder, group)

    def _move_into(self, folder: str, group: list[Move]) -> None:
        try:
            there, _ = list_images_consistent(self._remote, self._dataset_id, folder)
            taken = {image.filename: image.id for image in there.values()}
            ready = []
            for move in group:
                other = taken.get(move.row.name)
                if other is not None and other != move.row.image_id:
                    self._report_failure(Failure(
                        move.file.rel, f"cannot move image {move.row.image_id} to "
                                       f"{join_path(folder, move.row.name)}: taken"))
                else:
                    ready.append(move)
            if not ready:
                return
            self._make_folder(folder)
            renamed = self._remote.move(self._dataset_id, [m.row.image_id for m in ready],
                                        folder)
            names = {m.row.image_id: (self._remote.get_image(m.row.image_id).filename
                                      if renamed else m.row.name) for m in ready}
        except PictofsError as exc:
            log.warning("could not move %d images to %s (%s); trying again later",
                        len(group), folder, exc)
            self.retry_later(r for m in group for r in (m.row.rel, m.file.rel))
            return
        for move in ready:
            row, f, name = move.row, move.file, names[move.row.image_id]
            if name != row.name:
                log.warning("moved %s to %s, but the service renamed it %s (a name clash)",
                            row.rel, f.rel, name)
            self.state.relink(row.rel, _row(f, row.image_id, folder, name))
            log.info("moved %s → %s (same image %s)", row.rel, f.rel, row.image_id)
        with self._lock:
            self.report.moved += len(ready)

    def _make_folder(self, folder: str) -> None:
        if folder != "/" and folder not in self._folders:
            self._remote.make_folder(self._dataset_id, folder)
            self._folders.add(folder)

    def _archive(self, rows: list[Row]) -> None:
        for start in range(0, len(rows), ARCHIVE_CHUNK):
            self._check_stop()
            chunk = rows[start:start + ARCHIVE_CHUNK]
            try:
                self._remote.archive(self._dataset_id, [row.image_id for row in chunk])
            except NotFound:
                pass  # some were gone already; the others were archived
            except PictofsError as exc:
                log.warning("could not archive %d images (%s); trying again later",
                            len(chunk), exc)
                self.retry_later(row.rel for row in chunk)
                continue
            self.state.delete([row.rel for row in chunk])
            with self._lock:
                self.report.archived += len(chunk)
            for row in chunk:
                log.info("archived %s (deleted locally): image %s", row.rel, row.image_id)

    # ---------------------------------------------------------------- uploads

    def _upload_all(self, uploads: list[Upload]) -> None:
        for chunk in chunks(uploads, self._batch):
            self._stage(chunk)

    def _stage(self, uploads: list[Upload]) -> None:
        """Stage a chunk of files into new entries and make them due together: read from
        the files themselves, except those that changed while they were uploaded (copied)."""
        self._wait_for_room()
        with self._lock:
            copies = [u for u in uploads if u.file.rel in self._copy]
            self._copy.difference_update(u.file.rel for u in copies)
        sources = [u for u in uploads if u.file.rel not in {c.file.rel for c in copies}]
        pending = self._stage_sources(sources) + self._stage_copies(copies)
        self.queue.schedule_many([p.entry_id for p in pending], 0.0)

    def _stage_sources(self, uploads: list[Upload]) -> list[QueuedUpload]:
        """Hash each file into an entry that reads it where it is (one journal commit)."""
        hashed = [(u, f) for u in uploads if (f := self._fingerprint(u.file)) is not None]
        entry_ids = self.queue.stage_sources([
            SourceFile(u.folder, f.rel.rsplit("/", 1)[-1], u.replaced_id, str(self.root / f.rel),
                   f.size, f.mtime_ns, f.sha256 or "") for u, f in hashed])
        pending = [_pending(entry_id, u, f) for entry_id, (u, f) in zip(entry_ids, hashed)]
        self._add_pending(pending)
        return pending

    def _fingerprint(self, f: LocalFile) -> LocalFile | None:
        try:
            return local.fingerprint(self.root / f.rel, f)
        except (local.Changed, OSError) as exc:
            log.debug("not staged: %s", exc)
            self.retry_later([f.rel])
            return None

    def _stage_copies(self, uploads: list[Upload]) -> list[QueuedUpload]:
        """Copy each file into a new entry's staging file while hashing it."""
        if not uploads:
            return []
        entry_ids = self.queue.stage_many([(u.folder, u.file.rel.rsplit("/", 1)[-1],
                                            u.replaced_id) for u in uploads])
        staged = [self._snapshot(entry_id, upload) for entry_id, upload
                  in zip(entry_ids, uploads)]
        pending = [p for p in staged if p is not None]
        self._add_pending(pending)
        # no fsync: the source file is still there to stage again (see recover)
        self.queue.flushed_many({p.entry_id: p.size for p in pending},
                                {p.entry_id: p.sha256 for p in pending if p.sha256})
        return pending

    def _add_pending(self, pending: list[QueuedUpload]) -> None:
        self.state.add_pending(pending)
        with self._lock:
            for p in pending:
                self._live[p.entry_id] = (p.rel, p.size)
            self.report.attempted += len(pending)

    def _snapshot(self, entry_id: str, upload: Upload) -> QueuedUpload | None:
        f = upload.file
        try:
            snap = local.snapshot(self.root / f.rel, f, self.queue.staging_path(entry_id))
        except (local.Changed, OSError) as exc:
            self.queue.discard(entry_id)
            log.debug("not staged: %s", exc)
            self.retry_later([f.rel])
            return None
        return _pending(entry_id, upload, snap)

    def _wait_for_room(self) -> None:
        while True:
            self._check_stop()
            with self._changed:
                if (len(self._live) < WINDOW_FILES
                        and sum(size for _, size in self._live.values()) < WINDOW_BYTES):
                    return
                self._changed.wait(0.2)
            self.progress.tick()

    def _check_stop(self) -> None:
        if self.stopping.is_set():
            raise Stopped()

    # ---------------------------------------------------------------- callbacks

    def _registered(self, landed: list[tuple[str, Image]]) -> None:
        """Uploads that landed (a batch's, recorded in one transaction)."""
        try:
            for (_, image), landing in zip(landed, self.state.land_many(landed)):
                if landing is None:
                    continue
                self.progress.advance(landing.row.size)
                if self.announce:
                    log.info("uploaded %s as %s", landing.row.rel, image.path)
                if landing.archive is not None:
                    self._retire(landing.archive)
                with self._lock:
                    self.report.uploaded += 1
                self._landed(landing.row.rel)
        finally:  # done with them only now: a --once report waits for the retires above
            with self._changed:
                for entry_id, _ in landed:
                    self._live.pop(entry_id, None)
                self._changed.notify_all()

    def _failed(self, entry_id: str, reason: str) -> None:
        pending = self.state.fail(entry_id)
        self.queue.discard(entry_id)
        with self._changed:
            self._live.pop(entry_id, None)
            self._changed.notify_all()
        if pending is not None:
            self._fail_known(pending.rel, pending.size, pending.mtime_ns, reason, logged=True)

    def _source_changed(self, entry_id: str) -> None:
        """The file of an upload read from where it is changed before its bytes were
        registered (the queue dropped the entry): look at it again, and copy it next time."""
        pending = self.state.fail(entry_id)
        with self._changed:
            if pending is not None:
                self._retry_later.add(pending.rel)  # before it leaves _live: see wait_done
                self._copy.add(pending.rel)
            self._live.pop(entry_id, None)
            self._changed.notify_all()
        if pending is not None:
            log.info("%s changed while it was uploaded: looking at it again", pending.rel)

    def _retire(self, row: Row) -> None:
        """Archive the image a rename replaced, then forget its row."""
        try:
            self._remote.archive(self._dataset_id, [row.image_id])
        except NotFound:
            pass
        except PictofsError as exc:
            log.warning("could not archive image %s of %s (%s); trying again at the next "
                        "start", row.image_id, row.rel, exc)
            return
        self.state.delete([row.rel])
        with self._lock:
            self.report.renamed += 1
        log.info("renamed %s: archived its old image %s", row.rel, row.image_id)

    # ---------------------------------------------------------------- failures

    def _report_failure(self, failure: Failure) -> None:
        """A failure the plan found. A collision or a name taken depends on other files, so
        it is planned again at the next event (logged once), unlike a failure of the bytes
        themselves (``_fail_known``)."""
        with self._lock:
            self.report.failed[failure.rel] = failure.reason
            first = (failure.rel, failure.reason) not in self._said
            self._said.add((failure.rel, failure.reason))
        if first and not failure.known:
            log.warning("not uploaded: %s: %s", failure.rel, failure.reason)

    def give_up(self, rels: set[str], reason: str) -> None:
        """Report paths that could not be brought in step in this run."""
        with self._lock:
            for rel in rels:
                self.report.failed[rel] = reason
        for rel in sorted(rels):
            log.warning("not in step: %s: %s", rel, reason)

    def _fail_known(self, rel: str, size: int, mtime_ns: int, reason: str,
                    logged: bool = False) -> None:
        with self._lock:
            first = self._known.get(rel) != Known(size, mtime_ns, reason)
            self._known[rel] = Known(size, mtime_ns, reason)
            self.report.failed[rel] = reason
        if first and not logged:
            log.warning("not uploaded: %s: %s", rel, reason)


def chunks(uploads: list[Upload], batch: int) -> Iterator[list[Upload]]:
    """The uploads in chunks to stage together. A chunk ends where a folder ends once it
    holds ``batch`` files (``FIRST_CHUNK_FILES`` for the first, so that the workers start
    sooner): the queue sends a folder's due entries in one batch of up to ``batch``, so a
    folder cut across two chunks would cost two bulk calls of each kind where one does. A
    chunk never passes ``CHUNK_FILES`` files or ``CHUNK_BYTES`` bytes."""
    chunk: list[Upload] = []
    size, least = 0, FIRST_CHUNK_FILES
    for upload in uploads:
        if chunk and ((len(chunk) >= least and upload.folder != chunk[-1].folder)
                      or len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES):
            yield chunk
            chunk, size, least = [], 0, batch
        chunk.append(upload)
        size += upload.file.size
    if chunk:
        yield chunk


def _pending(entry_id: str, upload: Upload, hashed: LocalFile) -> QueuedUpload:
    retire = upload.retire.rel if upload.retire is not None else None
    return QueuedUpload(entry_id, hashed.rel, hashed.size, hashed.mtime_ns, hashed.sha256 or "",
                   retire, upload.archive)


def _row(f: LocalFile, image_id: str, folder: str, name: str, sha: str | None = None) -> Row:
    return Row(f.rel, f.size, f.mtime_ns, sha or f.sha256 or "", image_id, folder, name)
