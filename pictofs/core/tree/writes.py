"""The write side of one dataset in a mount (filesystem §5): creating and writing files,
flush-time checks, write-back uploads through the journaled queue, replace, unlink, utimens.

``WriteLayer`` keeps the table of ``Pending`` files (path → file being written, waiting to
upload, or local-only) that the VFS lays over the service's listing. Bytes go to a staging
file of the upload journal (or, for local-only names, to the mount's local folder); the
upload starts ``write_back`` seconds after the last release. The queue's callbacks swap a
pending file for the image the service registered. Renames and folders are in ``renames.py``;
local-only names, images held by them, and the janitor in ``local_names.py``.

Files that will not upload: bytes that are not an image fail at close (``EINVAL``) and a
0-byte file fails at unmount; either stays listed as a failed upload (its reason in
``user.pictofs.error``, its staging file and journal row kept) until ``rm``, and writing it
again makes it an upload. A file cut off by a full disk (``--min-free-space``, or the disk
itself: ``NoSpace``, ``ENOSPC``) or over 50 MB (``EFBIG``) is poisoned instead: never
uploaded, gone when closed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pictofs import imaging, names
from pictofs.core.upload.job import EMPTY_FILE, Header
from pictofs.core.upload.journal import Entry, Journal
from pictofs.core.upload.journal_files import disk_full
from pictofs.core.tree.local_names import LocalNames, Orphan
from pictofs.core.tree.pending import Pending
from pictofs.core.upload.queue import UploadQueue
from pictofs.core.upload.states import JobState
from pictofs.core.tree.view import DatasetView, DirEntry, FileEntry
from pictofs.errors import (AlreadyExists, IsADirectory, NoSpace, NotADirectory, NotAnImage,
                            NotFound, PictofsError, TooLarge, Unsupported)
from pictofs.model import Image, split_path
from pictofs.remote import Remote

log = logging.getLogger(__name__)

NOT_AN_IMAGE = "not an image Pillow can read"  # why bytes failed at close
SPACE_RECHECK = 0.5  # seconds: how long an answer of statvfs is used (see _check_space)
LEFT_BEHIND_MEMORY = 4096  # images archived as left behind that are remembered (_registered)


@dataclass(frozen=True)
class WriteOptions:
    write_back: float = 2.0
    transfers: int = 16
    retry_max_wait: float = 30.0
    min_free_space: int = 1 << 30
    permanent_delete: bool = False
    # > 1: new files of a folder due together go up together with the bulk routes (the
    # remote must then have the verbs of batch.BulkRemote); 1: one file at a time
    batch: int = 1
    # the group commit's period (commits.py): how long a closed file may wait before it
    # survives a crash of the machine; 0: at every close
    commit_interval: float = 5.0
    # local-only files (local_names.py): at most this many bytes; refuse non-image names
    local_only_max: int = 1 << 30
    refuse_non_images: bool = False


class WriteLayer(LocalNames):
    options: WriteOptions  # all of them; LocalNames reads only LocalOptions

    def __init__(self, view: DatasetView, remote: Remote, journal: Journal, downloader: Any,
                 local_dir: Path, options: WriteOptions,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 upload_remote: Remote | None = None) -> None:
        """``upload_remote`` (default ``remote``) is the one the upload queue sends with: the
        mount gives it one without transport retries, as the queue retries a failed step
        itself and its worker goes on with other files meanwhile."""
        self.view = view
        self.remote = remote
        self.journal = journal
        self.downloader = downloader
        self.local_dir = local_dir
        self.options = options
        self.clock = clock
        self.wall = wall
        self.queue = UploadQueue(upload_remote or remote, journal, view.dataset_id,
                                 transfers=options.transfers, write_back=options.write_back,
                                 retry_max_wait=options.retry_max_wait,
                                 on_registered=self._registered, on_failed=self._failed,
                                 batch=options.batch, parallel_puts=True,
                                 commit_interval=options.commit_interval)
        local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # _lock guards _pending, _by_entry, _local_dirs, _orphans, _mtimes and _left_behind.
        self._lock = threading.RLock()
        self._pending: dict[str, Pending] = {}
        self._by_entry: dict[str, Pending] = {}
        self._local_dirs: set[str] = set()
        self._orphans: dict[str, Orphan] = {}
        self._mtimes: dict[str, float] = journal.mtimes()
        # images archived because the file replacing them left their path, newest last: a
        # landing reported after that must not show them there again (_registered)
        self._left_behind: OrderedDict[str, None] = OrderedDict()
        for source in journal.converted():  # x.heic written here, stored as x.png
            view.written.remember(source.folder, source.name, source.image_id)
        self._stop = threading.Event()  # the janitor's
        # the staging disk's free space at the last statvfs, and bytes written since
        self._space_lock = threading.Lock()
        self._free_space, self._written_since, self._space_checked_at = 0, 0, -1e9
        self._janitor: threading.Thread | None = None
        # called after this layer archives an image (unlink, a replace registered, an orphan
        # archived), so a view of the archive shows it at once; the VFS sets it
        self.on_archived: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Resume the journal and start the workers (from the mount's init)."""
        self._load_local()
        kept = self.journal.attrs()
        unapplied = self._landed_with_attrs(kept)
        self.queue.resume()
        for entry in self.queue.entries():
            pending = Pending(entry.path, self.queue.staging_path(entry.id), entry.id,
                              mtime=entry.mtime or self.wall(), size=entry.size or 0,
                              written=True, error=entry.error if entry.state == JobState.FAILED
                              else None, replaced_id=entry.replaced_id,
                              after_register=dict(kept.get(entry.id, {})))
            with self._lock:
                self._pending[entry.path] = pending
                self._by_entry[entry.id] = pending
        self.queue.start()
        self._start_janitor()
        if unapplied:
            threading.Thread(target=self._apply_unapplied, args=(unapplied,), daemon=True,
                             name="pictofs-attrs").start()

    def stop(self, timeout: float = 30.0) -> bool:
        self._stop_janitor(timeout)
        done = self.queue.stop(timeout)
        self._fail_empty_files()
        with self._lock:
            for pending in self._pending.values():
                pending.close_descriptor(force=True)
        return done

    def _fail_empty_files(self) -> None:
        """At unmount: a 0-byte file (kept here until it had content) becomes a failed
        upload, kept in the journal, so the next mount still shows it (a failed file cut
        to 0 bytes too: the journal then says why it fails now, and its size)."""
        with self._lock:
            empty = [p for p in self._pending.values()
                     if p.entry_id is not None and not p.removed and p.size == 0
                     and p.poison is None and p.error != EMPTY_FILE]
        if not empty:
            return
        try:
            self.queue.fail_staged({p.entry_id: (0, EMPTY_FILE) for p in empty
                                    if p.entry_id is not None})
        except NoSpace as exc:
            log.warning("0-byte files dropped at unmount (%s): %s", exc,
                        ", ".join(p.path for p in empty))
            return
        except Exception:  # a bug: the unmount goes on
            log.exception("0-byte files dropped at unmount: %s",
                          ", ".join(p.path for p in empty))
            return
        for pending in empty:
            pending.error = EMPTY_FILE
            log.warning("%s: %s; kept as a failed upload until removed", pending.path,
                        EMPTY_FILE)

    # ------------------------------------------------------------------ lookups

    def check_writable(self, what: str) -> None:
        """Every change may be made here (``ReadOnlyWrites`` refuses them)."""

    def pending_at(self, path: str) -> Pending | None:
        with self._lock:
            return self._pending.get(path)

    def pending_in(self, folder: str) -> dict[str, Pending]:
        with self._lock:
            return {split_path(p)[1]: v for p, v in self._pending.items()
                    if split_path(p)[0] == folder}

    def image_mtime(self, image: Image) -> float | None:
        with self._lock:
            return self._mtimes.get(image.id)

    def image_mtimes(self) -> dict[str, float]:
        """Every mtime a writer set (image id → mtime), a copy: for a whole listing at
        once, as ``image_mtime`` for each of its images."""
        with self._lock:
            return dict(self._mtimes)

    # ------------------------------------------------------------------ creating

    def create(self, path: str, exclusive: bool) -> Pending:
        """A new file at ``path`` (open for writing). ``exclusive``: O_EXCL."""
        folder, name = split_path(path)
        names.check_name(name)
        self._require_folder(folder)
        existing = self._existing(path)
        if existing is not None:
            if exclusive:
                raise AlreadyExists(path)
            return self.open_for_write(path, existing, truncate=True)
        self._check_space(0)
        if self.is_local_file(path):  # kept on this machine (local_names.py)
            return self._new_local(path)
        if not names.is_supported(name):
            log.warning("%s: not created: unsupported file type (supported: %s)", path,
                        " ".join(names.SUPPORTED_EXTENSIONS))
            raise Unsupported(f"{name}: unsupported file type")
        orphan = self._take_orphan(path)
        return self._stage(path, replaced_id=orphan.image.id if orphan else None)

    def open_for_write(self, path: str, existing: Pending | Image, truncate: bool) -> Pending:
        """Open an existing file for writing: a pending one is held (no upload until it is
        closed again); an image is staged as a replace, with its bytes unless truncated."""
        if isinstance(existing, Pending):
            pending = existing
            with pending.turns:  # not while a release ends the file (an unwritten replace)
                if pending.removed:  # it ended just now: open what the path shows instead
                    return self.open_for_write(path, self._shown_instead(path, pending),
                                               truncate)
                pending.add_open()  # first: a release of another handle keeps the descriptor
                try:
                    if pending.entry_id is not None:
                        landed = self.queue.hold(pending.entry_id)
                        if landed is not None:  # it became an image meanwhile: a replace
                            self.release(pending)
                            return self.open_for_write(path, landed, truncate)
                    elif pending.holds is not None:
                        self.materialize(pending)
                    if truncate:
                        pending.truncate(0)
                        pending.written = pending.dirty = True
                except BaseException:
                    self.release(pending)
                    raise
            return pending
        pending = self._stage(path, replaced_id=existing.id)
        if not truncate:
            self._copy_image_into(existing, pending)
        return pending

    def _stage(self, path: str, replaced_id: str | None) -> Pending:
        folder, name = split_path(path)
        entry_id, fd = self.queue.stage_open(folder, name, replaced_id=replaced_id)
        pending = Pending(path, self.queue.staging_path(entry_id), entry_id, mtime=self.wall(),
                          opens=1, replaced_id=replaced_id, fd=fd)
        with self._lock:
            self._pending[path] = pending
            self._by_entry[entry_id] = pending
        return pending

    def _existing(self, path: str) -> Pending | Image | None:
        pending = self.pending_at(path)
        if pending is not None:
            return pending
        if self.is_hidden(path):
            return None
        try:
            entry = self.view.resolve(path)
        except NotFound:
            return None
        if isinstance(entry, DirEntry):
            raise IsADirectory(path)
        return entry.image

    def _shown_instead(self, path: str, ended: Pending) -> Pending | Image:
        """What ``path`` shows now that ``ended`` is over (landed, removed, or an unwritten
        replace that ended: the image); NotFound if nothing, or ``ended`` still."""
        found = self._existing(path)
        if found is None or found is ended:
            raise NotFound(path)
        return found

    def _require_folder(self, folder: str) -> None:
        if folder == "/" or self.is_local_dir(folder):
            return
        entry = self.view.resolve(folder)
        if not isinstance(entry, DirEntry):
            raise NotADirectory(folder)

    # ------------------------------------------------------------------ bytes

    def write(self, pending: Pending, data: bytes, offset: int) -> int:
        if pending.poison is not None:
            raise pending.poison
        if pending.holds is not None:
            self.materialize(pending)
        if offset + len(data) > names.MAX_IMAGE_BYTES and not pending.local:
            pending.poison = TooLarge(f"{pending.path}: over the 50 MB limit of the service")
            log.warning("%s", pending.poison)
            raise pending.poison
        try:
            if pending.local:
                self.check_local_cap(pending, offset + len(data))
            self._check_space(len(data))
            written = self._pwrite(pending, data, offset)
        except NoSpace as exc:
            # the file is incomplete: like EFBIG, it is never uploaded (a cut-off image
            # must not reach the service) and disappears when closed; other files are kept
            if not pending.local:
                pending.poison = exc
            log.warning("%s: %s", pending.path, exc)
            raise
        pending.written = pending.dirty = True
        self._written_now(pending)
        return written

    def _pwrite(self, pending: Pending, data: bytes, offset: int) -> int:
        """``pending.pwrite``; a full disk (ENOSPC, EDQUOT) is ``NoSpace``."""
        try:
            return pending.pwrite(data, offset)
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise NoSpace(f"the state disk is full ({self.local_dir.parent}): "
                          f"{exc.strerror}") from None

    def _written_now(self, pending: Pending) -> None:
        """A write or truncate: the mtime is now, and one set before with utimensat is no
        longer what the image gets when it registers."""
        if pending.mtime_set and pending.entry_id is not None:
            self.queue.set_mtime(pending.entry_id, None)
        pending.mtime, pending.mtime_set = self.wall(), False

    def read(self, pending: Pending, size: int, offset: int) -> bytes:
        if pending.holds is not None and pending.fd is None:
            reader = self.downloader.open(pending.holds.id, pending.holds.file_size)
            try:
                return reader.read(offset, max(0, min(size, pending.holds.file_size - offset)))
            finally:
                reader.close()
        return pending.pread(size, offset)

    def truncate(self, pending: Pending, length: int) -> None:
        if pending.holds is not None:
            self.materialize(pending)
        if length > names.MAX_IMAGE_BYTES and not pending.local:
            raise TooLarge(f"{pending.path}: over the 50 MB limit of the service")
        if pending.local:
            try:
                self.check_local_cap(pending, length)
            except NoSpace as exc:
                log.warning("%s: %s", pending.path, exc)
                raise
        pending.truncate(length)
        pending.written = pending.dirty = True
        self._written_now(pending)

    def truncate_closed(self, path: str, existing: Pending | Image, length: int) -> Pending:
        """``truncate`` by path, with no handle of the caller's (``truncate -s``): an open for
        writing, the cut and a close. An image is staged cut to ``length``; a file waiting
        for its upload is held meanwhile and its close records the new bytes and schedules
        it again (cut without that, its upload found bytes unlike the ones recorded and
        failed the file as torn). Where other handles are open, the last of their closes
        records them instead."""
        pending = self.open_for_write(path, existing, truncate=length == 0)
        try:
            self.truncate(pending, length)
            if pending.opens == 1:  # no other handle: this close records the bytes
                self.flush(pending)
        finally:
            self.release(pending)
        return pending

    def flush(self, pending: Pending) -> None:
        """New bytes since the last flush: the cheap checks (size, Pillow identifies the
        header), then the journal records them (resumable from now on); what Pillow read
        (the dimensions) goes to the queue with the sha256, so the upload does not read the
        header again. Bytes that are
        not an image fail (EINVAL) and are kept as a failed upload; a full disk poisons
        the file (ENOSPC)."""
        if pending.poison is not None:
            raise pending.poison
        if not pending.dirty or pending.local or pending.removed:
            return
        pending.dirty = False
        if pending.size == 0:
            return  # 0-byte files stay local until they have content (or the unmount)
        assert pending.entry_id is not None
        with pending.borrowed():  # a rename's flush has no handle: a release may come now
            try:
                _format, dimensions = imaging.describe_head(
                    pending.pread(imaging.HEAD_BYTES, 0), pending.size, pending.file)
            except NotAnImage:
                refused = NotAnImage(f"{pending.path}: {NOT_AN_IMAGE}")
                self._keep_failed(pending, refused)
                raise refused from None
            try:
                sha256 = pending.sha256()
                self.queue.flushed(pending.entry_id, pending.size, sha256,
                                   Header(sha256, dimensions), deferred=True,
                                   fd=pending.fd)
            except NoSpace as exc:  # not recorded: a cut-off file, as in write
                pending.poison = exc
                log.warning("%s: %s", pending.path, exc)
                raise
        pending.error = None  # an upload again (a failed file written anew)

    def _keep_failed(self, pending: Pending, refused: NotAnImage) -> None:
        """Bytes the service would refuse: the file stays, as a failed upload with the
        reason, until ``rm`` or new bytes; if the journal cannot record that (a full
        disk), it is poisoned (gone when closed)."""
        assert pending.entry_id is not None
        try:
            self.queue.fail_staged({pending.entry_id: (pending.size, NOT_AN_IMAGE)})
        except NoSpace as exc:
            pending.poison = refused
            log.warning("%s; it will not be uploaded, and is not kept (%s)", refused, exc)
            return
        pending.error = NOT_AN_IMAGE
        log.warning("%s; kept as a failed upload until removed or written again", refused)

    def fsync(self, pending: Pending) -> None:
        """Durable in the local journal (the group commit, now): survives a crash of the
        machine; never waits for the network."""
        if pending.local:
            pending.fsync()
            return
        self.flush(pending)
        self.queue.make_durable()  # NoSpace, or the disk's OSError (EIO), to the caller

    def release(self, pending: Pending) -> None:
        """A handle is closed; the last one's close schedules the upload (or ends the
        file). The kernel sends the release of a closed handle without waiting for it, so a
        writer's next open of the file may come while this runs: that open counts itself,
        then holds the upload. The schedule here is passed over when the count says the file
        is open again (asked where the hold works, ``UploadQueue.schedule``), and the end of
        an unwritten replace is decided in the file's ``turns``, which that open takes too:
        either way, the open's hold stands."""
        if pending.drop_open():
            return
        pending.last_close = self.clock()
        if pending.removed:  # rm of an open file (or landed while read): the last close
            pending.close_descriptor()
            return
        if pending.poison is not None:
            self.forget(pending, cancel=True)
            return
        if pending.local or pending.entry_id is None:
            self.record_local(pending)  # its mtime now, for the next mount
            pending.close_descriptor()  # reopened by the next open (sidecars may be many)
            return
        if not pending.written:
            if pending.replaced_id is None:
                return
            with pending.turns:  # opened for writing, closed unwritten: the replace ends,
                if pending.opens == 0 and not pending.written:  # unless opened again
                    self.forget(pending, cancel=True)
                    return
        if pending.size > 0:
            self.queue.schedule(pending.entry_id, unless=pending.is_open)
        # A closed file waiting for its upload holds no descriptor: thousands may wait
        # (uploads held back, a slow or distant service), more than a process may open.
        pending.close_descriptor()

    def schedule_closed(self, pending: Pending) -> None:
        """Schedule the upload of a written file no handle has open (renamed, or a rename
        of its folder failed), as its last close would; an open for writing that comes
        meanwhile holds it instead (as in ``release``)."""
        if pending.entry_id is not None and pending.opens == 0 and pending.written \
                and pending.size > 0:
            self.queue.schedule(pending.entry_id, unless=pending.is_open)

    def _copy_image_into(self, image: Image, pending: Pending) -> None:
        reader = self.downloader.open(image.id, image.file_size)
        try:
            offset, chunk = 0, 1 << 20
            while offset < image.file_size:
                data = reader.read(offset, min(chunk, image.file_size - offset))
                if not data:
                    break
                pending.pwrite(data, offset)
                offset += len(data)
        finally:
            reader.close()
        pending.size = image.file_size

    def _check_space(self, adding: int) -> None:
        """ENOSPC (``NoSpace``) when ``adding`` more bytes would leave less than
        ``--min-free-space`` free on the staging disk. The disk is asked (``statvfs``) at
        most every ``SPACE_RECHECK`` seconds, and at once when what was written since
        could have crossed the line; in between, the bytes written since the last answer
        are counted as gone from it."""
        now = self.clock()
        with self._space_lock:
            estimate = self._free_space - self._written_since
            if now - self._space_checked_at > SPACE_RECHECK \
                    or estimate - adding < self.options.min_free_space:
                disk = os.statvfs(self.local_dir)
                self._free_space = estimate = disk.f_bavail * disk.f_frsize
                self._written_since, self._space_checked_at = 0, now
            if estimate - adding < self.options.min_free_space:
                raise NoSpace(f"the staging disk has {estimate} bytes free; pictofs keeps "
                              f"{self.options.min_free_space} free (--min-free-space)")
            self._written_since += adding

    # ------------------------------------------------------------------ metadata

    def set_mtime(self, target: Pending | Image, mtime: float) -> None:
        if isinstance(target, Pending):
            target.mtime = mtime
            target.mtime_set = True
            self.record_local(target)
            if target.entry_id is not None:
                self.queue.set_mtime(target.entry_id, mtime)
                entry = self.queue.get(target.entry_id)
                if entry is not None and entry.image_id is not None:
                    # it registered meanwhile (the journal passed the mtime on): so does stat
                    with self._lock:
                        self._mtimes[entry.image_id] = mtime
            return
        with self._lock:
            self._mtimes[target.id] = mtime
        self.queue.set_image_mtime(target.id, mtime)

    # ------------------------------------------------------------------ removing

    def unlink(self, path: str) -> None:
        pending = self.pending_at(path)
        if pending is not None:
            # no register of it may be in flight or start: when rm returns, nothing of the
            # file is left on the service (an upload that registered is archived here)
            landed = self.queue.hold(pending.entry_id) if pending.entry_id else None
            self.forget(pending, cancel=True)
            replaced, pending.replaced_id = pending.replaced_id, None
            if landed is not None and landed.id != replaced:
                self.archive_left_behind(landed.id, path, self.options.permanent_delete)
            self.archive_left_behind(replaced, path, permanent=self.options.permanent_delete)
            return
        if self.is_hidden(path):
            raise NotFound(path)
        entry = self.view.resolve(path)
        if not isinstance(entry, FileEntry):
            raise IsADirectory(path)
        self.remote.archive(self.view.dataset_id, [entry.image.id],
                            permanent=self.options.permanent_delete)
        self.view.note_gone(path)
        if entry.image.path != path:  # x.heic, listed for the x.png it became
            self.view.note_gone(entry.image.path)
        self.on_archived()
        log.info("%s %s", "deleted" if self.options.permanent_delete else "archived", path)

    def archive_left_behind(self, replaced: str | None, path: str,
                            permanent: bool = False) -> None:
        """A file staged over image ``replaced`` left the image's path (``rm``, ``mv``)
        before its upload took the image's place: the image goes too, as it would with the
        file it showed (one the upload's replace step archived already stays archived)."""
        if replaced is None:
            return
        try:
            self.remote.archive(self.view.dataset_id, [replaced], permanent=permanent)
        except NotFound:
            pass
        with self._lock:
            self._left_behind[replaced] = None
            while len(self._left_behind) > LEFT_BEHIND_MEMORY:
                self._left_behind.popitem(last=False)
        self.view.note_gone(path)
        self.on_archived()
        log.info("archived %s: the file replacing it was removed or renamed", path)

    def forget(self, pending: Pending, cancel: bool) -> None:
        pending.removed = True
        with self._lock:
            if self._pending.get(pending.path) is pending:
                del self._pending[pending.path]
            if pending.entry_id is not None:
                self._by_entry.pop(pending.entry_id, None)
        if pending.opens == 0:
            pending.close_descriptor()
        if pending.entry_id is not None and cancel:
            if pending.error is not None:
                self.queue.discard(pending.entry_id)
            else:
                self.queue.cancel(pending.entry_id)
        elif pending.local:
            pending.file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ queue callbacks

    def _registered(self, entry_id: str, image: Image) -> None:
        with self._lock:
            pending = self._by_entry.pop(entry_id, None)
            if pending is not None:  # else rm or mv took it over and showed what they did
                if pending.path != image.path:  # first: never listed under the stored name
                    self._remember_written(pending.path, image)
                # before the pending goes, so a lookup finds one; with the split/tags set on
                # the file, so getfattr shows them while they are being set on the image.
                # Unless it is gone already: written over at once (a replace of it staged
                # before this report came) and that replace moved away, which archived it
                if image.id not in self._left_behind:
                    self.view.note_image(_with_kept(image, pending.after_register))
                pending.removed = True
            if pending is not None and self._pending.get(pending.path) is pending:
                del self._pending[pending.path]
            mtime = self.journal.mtime(image.id)
            written_over = pending is not None and image.id == pending.replaced_id \
                and not pending.mtime_set
            if written_over:  # identical bytes kept the image, but it was written: the
                mtime = pending.mtime  # mtime is the write's, not one set before it (§2, §5)
            if mtime is not None:
                self._mtimes[image.id] = mtime
        if written_over and pending is not None:
            try:
                self.journal.set_mtime(image.id, pending.mtime)
            except NoSpace as exc:  # stat shows it until the unmount all the same
                log.warning("%s: mtime not recorded: %s", image.path, exc)
        if pending is not None and pending.opens == 0:
            pending.close_descriptor()
        if pending is not None and pending.after_register:
            try:
                image = self._apply_attrs(image, dict(pending.after_register))
            except PictofsError as exc:  # kept: the next mount tries again
                log.warning("%s: split/tags not set after upload: %s", image.path, exc)
            else:
                self._clear_attrs(entry_id)
            self.view.note_image(image)  # as the service has it
        elif pending is None:  # rm or mv took it over: what was kept for it goes
            self._clear_attrs(entry_id)
        if pending is not None:  # its replaced_id follows the entry's (renames.py)
            replaced = pending.replaced_id is not None
        else:
            entry = self.queue.get(entry_id)
            replaced = entry is None or entry.replaced_id is not None
        if replaced:
            self.on_archived()  # a replace archived the image it replaced

    def _remember_written(self, path: str, image: Image) -> None:
        """The service stored the file written at ``path`` under another name (the upload
        logged it): the folder lists it under ``path`` from now on (the journal remembers
        it too: ``job.remember_converted``)."""
        folder, name = split_path(path)
        self.view.written.remember(folder, name, image.id)

    def move_written(self, old: str, new: str) -> None:
        """Folder ``old`` was renamed or moved to ``new``: the names written in it (and
        below) that the service stored under others go with their images."""
        try:
            self.journal.move_converted(old, new)
        except NoSpace as exc:  # listed under them until the unmount all the same
            log.warning("%s: the HEIC names in it are not remembered at %s: %s", old, new, exc)
        self.view.written.move_folder(old, new)

    def remember_renamed(self, old: str, new: str, image: Image) -> None:
        """A name written here for an image stored under another name was renamed to
        ``new``, also stored under another name as ``image``: ``new`` is listed for it."""
        source = self.journal.converted_at(*split_path(old))
        folder, name = split_path(new)
        if source is not None:
            try:
                self.journal.remember_converted(dataclasses.replace(
                    source, folder=folder, name=name, image_id=image.id))
            except NoSpace as exc:  # listed under it until the unmount all the same
                log.warning("%s: not remembered as %s: %s", image.path, new, exc)
        self.view.written.remember(folder, name, image.id)

    def set_attr_after_register(self, pending: Pending, field_name: str, value: Any) -> bool:
        """``split``/``tags`` set on a staged file: kept (in the journal too, so a restart
        keeps them: they are part of what the writer wrote) and applied right after register.
        False when the file has landed meanwhile (the caller then sets it on the image)."""
        with self._lock:
            if pending.removed:
                return False
            pending.after_register[field_name] = value
            entry_id = pending.entry_id
        if entry_id is not None:  # a local-only file keeps them until it becomes an upload
            self.journal.set_attrs(entry_id, {field_name: value})
        return True

    def _apply_attrs(self, image: Image, values: dict[str, Any]) -> Image:
        """Set ``split``/``tags`` on the image (the requests setxattr sends); PictofsError
        when the service refuses."""
        if "split" in values and values["split"] != image.split:
            image = self.remote.set_split(image, values["split"])
        if "tags" in values:
            tags = list(values["tags"])
            add = [t for t in tags if t not in image.tags]
            remove = [t for t in image.tags if t not in tags]
            if add or remove:
                self.remote.set_tags(image.dataset_id, image.id, add, remove)
            image = dataclasses.replace(image, tags=tuple(tags))
        return image

    def _clear_attrs(self, entry_id: str) -> None:
        """Forget what was kept for a landed entry (a crash of the machine that undoes it
        makes the next mount set the same values again)."""
        try:
            self.journal.clear_attrs(entry_id)
        except NoSpace as exc:
            log.warning("split/tags of a landed upload not cleared from the journal: %s", exc)

    def _landed_with_attrs(self, kept: dict[str, dict[str, Any]]
                           ) -> list[tuple[str, Entry, dict[str, Any]]]:
        """Entries that landed with attributes still kept: the mount stopped between the
        register and setting them (the resume about to run forgets these entries)."""
        if not kept:
            return []
        return [(entry.image_id, entry, kept[entry.id])
                for entry in self.journal.entries(JobState.DONE)
                if entry.id in kept and entry.image_id is not None and not entry.cancelled]

    def _apply_unapplied(self, landed: list[tuple[str, Entry, dict[str, Any]]]) -> None:
        """Set them now (best effort: one try, a warning if it fails)."""
        for image_id, entry, values in landed:
            try:
                image = self._apply_attrs(self.remote.get_image(image_id), values)
            except PictofsError as exc:
                log.warning("%s: split/tags not set after upload: %s", entry.path, exc)
                continue
            self.view.note_image(image)
            log.info("%s: split/tags set after the upload that landed before the restart",
                     image.path)

    def _failed(self, entry_id: str, reason: str) -> None:
        with self._lock:
            pending = self._by_entry.get(entry_id)
        if pending is not None:
            pending.error = reason
        log.warning("upload failed for good: %s", reason)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        stats = self.queue.stats()
        failed = [{"path": e.path, "error": e.error} for e in self.queue.failed()]
        return {"pending": stats.pending, "in_flight": stats.in_flight, "failed": failed,
                "bytes_uploaded": stats.bytes_uploaded, "upload_rate": stats.rate,
                "paused": stats.paused, "workers": stats.workers,
                "not_durable": self.queue.not_durable(), **self.queue.report()}

    def wait_idle(self, timeout: float) -> bool:
        """``pictofs sync``/``umount``: uploads waiting for ``write_back`` start now; then
        wait until nothing is scheduled or in flight (failed and open files do not count).
        What stays local (failed, held) is made durable first (the group commit)."""
        self.queue.expedite()
        try:
            self.queue.make_durable()
        except (NoSpace, OSError) as exc:
            log.warning("pictofs sync: the staged files are not durable yet: %s", exc)
        return self.queue.wait_idle(timeout)

    def move_pending(self, pending: Pending, new_path: str) -> None:
        """Re-key a pending file under ``new_path`` (the rename itself is the caller's)."""
        with self._lock:
            if self._pending.get(pending.path) is pending:
                del self._pending[pending.path]
            old = self._pending.pop(new_path, None)
            pending.path = new_path
            self._pending[new_path] = pending
        if old is not None and old is not pending:
            self.forget(old, cancel=True)
        self.record_local(pending)

    def attach_entry(self, pending: Pending, entry_id: str) -> None:
        """A local file that became an upload: the queue's callbacks find it by entry id,
        and an mtime set on the local name follows it."""
        with self._lock:
            pending.entry_id = entry_id
            self._by_entry[entry_id] = pending
            kept = dict(pending.after_register)
        if pending.mtime_set:
            self.queue.set_mtime(entry_id, pending.mtime)
        if kept:  # split/tags set on the local name follow it
            try:
                self.journal.set_attrs(entry_id, kept)
            except NoSpace as exc:  # they still apply when it lands, unless a restart comes
                log.warning("%s: split/tags not kept in the journal: %s", pending.path, exc)

    def pending_under(self, folder: str) -> list[Pending]:
        prefix = folder + "/"
        with self._lock:
            return [p for path, p in self._pending.items() if path.startswith(prefix)]


def _with_kept(image: Image, kept: dict[str, Any]) -> Image:
    """The image as it will be once the split/tags kept for it are set."""
    values = dict(kept)
    return dataclasses.replace(image, split=values.get("split", image.split),
                               tags=tuple(values.get("tags", image.tags)))
