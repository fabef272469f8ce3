"""One run of the mirror (filesystem spec §9): the start-up comparison, then — unless
``--once`` — watching until a signal stops it.

The loop runs in one thread. Watchdog's thread and the upload queue's workers only put
messages in ``inbox``: events go into the ``Coalescer``; a settled batch is scanned
(``local.scan_paths``), planned (``plan.plan_sync`` against the state database) and carried
out by the ``Engine``. A landed upload is looked at again (the file may have changed while it
was uploading); paths whose move or archive failed are tried again every ``RETRY_EVERY``
seconds; with inotify the whole tree is compared with the state database every
``RESCAN_EVERY`` seconds, in case events were lost (a queue overflow).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from pictofs.hashing import sha256_file
from pictofs.mirror import local, remote_tree
from pictofs.mirror.coalesce import Coalescer, Event
from pictofs.mirror.engine import Engine, Stopped
from pictofs.mirror.plan import LocalFile, Plan, Policy, RemoteListing, plan_sync
from pictofs.remote import Remote
from pictofs.units import format_size

if TYPE_CHECKING:  # imported when watching: --once does without watchdog
    from pictofs.mirror.events import Watcher

log = logging.getLogger(__name__)

RESCAN_EVERY = 600.0
RETRY_EVERY = 30.0
CHECK_EVERY = 5.0  # the watcher's check for unwatched folders, after folders appeared
LOST = "lost"  # inbox message: the mirrored folder itself went away


class Session:
    def __init__(self, root: Path, engine: Engine, remote: Remote, dataset_id: str,
                 policy: Policy, *, settle: float, poll: bool, workers: int) -> None:
        self.root = root
        self.engine = engine
        self._remote = remote
        self._dataset_id = dataset_id
        self.policy = policy
        self.settle = settle
        self.poll = poll
        self._workers = workers
        self.inbox: queue.Queue[object] = queue.Queue()
        self.signal: int | None = None
        self.lost = False

    def request_stop(self, signum: int) -> None:
        """From a signal handler: finish the step in flight, then stop."""
        self.signal = signum
        self.engine.stopping.set()
        self.inbox.put(None)

    # ---------------------------------------------------------------- the two modes

    def run_once(self) -> int:
        try:
            self.engine.recover()
            self.reconcile()
            self.engine.wait_done()
            retry = self.engine.take_retry_later()  # changed, or a move that failed for now
            if retry:
                self.sync(retry)
                self.engine.wait_done()
                self.engine.give_up(self.engine.take_retry_later(),
                                    "still changing, or the service refused it for now")
        except Stopped:
            pass
        finally:
            self.engine.progress.finish()
        for line in self.engine.report.lines():
            print(line, flush=True)
        if self.signal is not None:
            return 128 + self.signal
        return 0 if self.engine.report.ok else 1

    def run_watch(self) -> int:
        from pictofs.mirror.events import Watcher  # (watchdog: only needed here)

        self.engine.recover()
        watcher = Watcher(self.root, self.inbox.put, poll=self.poll,
                          poll_interval=min(1.0, max(0.1, self.settle / 2)),
                          lost=lambda: self.inbox.put(LOST))
        watcher.start()
        try:
            self.reconcile()
            self.engine.announce = True
            self._loop(watcher)
        except Stopped:
            pass
        finally:
            watcher.stop()
            self.engine.progress.finish()
        report = self.engine.report
        log.info("stopping: %d uploaded, %d moved, %d renamed, %d archived, %d failed",
                 report.uploaded, report.moved, report.renamed, report.archived,
                 len(report.failed))
        return 1 if self.lost else 0

    # ---------------------------------------------------------------- start-up

    def reconcile(self) -> Plan:
        """Compare the local tree with the service and the state database; carry it out."""
        started = time.monotonic()
        scan = local.scan(self.root, self.policy.target)
        self.engine.note_left_out(scan.left_out)
        listing, _ = remote_tree.list_tree(self._remote, self._dataset_id,
                                           self.policy.target.folder, self._workers)
        plan = self.plan(scan.files, remote=listing)
        size = sum(u.file.size for u in plan.uploads)
        log.info("%s: %d files (%s) here, %d images there; %d to upload (%s), %d moves, "
                 "%d in step (%.1fs)", self.root, len(scan.files), format_size(scan.bytes),
                 len(listing), len(plan.uploads), format_size(size), len(plan.moves),
                 plan.unchanged + len(plan.touches) + len(plan.adopts),
                 time.monotonic() - started)
        self.engine.progress.begin(len(plan.uploads), size)
        self.engine.apply(plan)
        return plan

    def plan(self, files: dict[str, LocalFile], *, remote: RemoteListing | None = None,
             scope: Collection[str] | None = None) -> Plan:
        """Plan, hashing the files whose decision needs it first."""
        files = dict(files)
        for _ in range(2):
            plan = plan_sync(files, self.engine.state.rows(), self.policy, remote=remote,
                             pending=self.engine.pending_rels(),
                             known=self.engine.known_failures(),
                             scope=scope)
            if not plan.hash_first:
                break
            for f in plan.hash_first:
                try:
                    files[f.rel] = dataclasses.replace(
                        f, sha256=sha256_file(self.root / f.rel))
                except OSError:
                    del files[f.rel]  # gone meanwhile
        return plan

    # ---------------------------------------------------------------- watching

    def _loop(self, watcher: Watcher) -> None:
        coalescer = Coalescer(self.settle, close_write=watcher.mode == "inotify")
        now = time.monotonic()
        last_rescan = last_retry = last_check = now
        folders_changed = False
        while self.signal is None and not self.lost:
            landed: set[str] = set()
            for item in self._messages(coalescer):
                if isinstance(item, Event):
                    coalescer.add(item, time.monotonic())
                    folders_changed = folders_changed or item.kind.startswith("dir_")
                elif isinstance(item, tuple):
                    landed.add(item[1])
                elif item == LOST:
                    log.error("%s is gone: stopping (nothing was archived)", self.root)
                    self.lost = True
            if self.signal is not None or self.lost:
                break
            now = time.monotonic()
            settled = coalescer.due(now)
            if settled:
                self.sync(settled.files, settled.folders)
            if landed:
                self.sync(self._changed_since_landing(landed, coalescer))
            if folders_changed and now - last_check >= CHECK_EVERY:
                last_check, folders_changed = now, False
                if watcher.check():
                    coalescer = Coalescer(self.settle, close_write=False)
                    last_rescan = now - RESCAN_EVERY  # look at everything now
            if watcher.mode == "inotify" and now - last_rescan >= RESCAN_EVERY:
                last_rescan = now
                self.rescan(coalescer)
            if self.engine.has_retry_later() and now - last_retry >= RETRY_EVERY:
                last_retry = now
                self.sync(self.engine.take_retry_later())
            if self.engine.busy():
                self.engine.progress.tick()
            else:
                self.engine.progress.finish()

    def _messages(self, coalescer: Coalescer) -> list[object]:
        """Wait for the next message (or until something settles) and take all waiting."""
        due = coalescer.next_due()
        timeout = 1.0 if due is None else min(1.0, max(0.01, due - time.monotonic()))
        try:
            items = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                return items

    def landed(self, rel: str) -> None:
        """The engine's hook (worker threads): an upload of ``rel`` landed."""
        self.inbox.put(("landed", rel))

    def _changed_since_landing(self, rels: set[str], coalescer: Coalescer) -> set[str]:
        changed = set()
        for rel in rels:
            if coalescer.tracking(rel):
                continue  # its events will bring it back
            row = self.engine.state.row(rel)
            try:
                info = (self.root / rel).lstat()
            except OSError:
                changed.add(rel)
                continue
            if row is None or (info.st_size, info.st_mtime_ns) != (row.size, row.mtime_ns):
                changed.add(rel)
        return changed

    def sync(self, files: Collection[str], folders: Collection[str] = ()) -> None:
        """Bring these paths (and everything under ``folders``) in step."""
        if not files and not folders:
            return
        scan = local.scan_paths(self.root, self.policy.target, files, folders)
        self.engine.note_left_out(scan.left_out)
        scope = set(files) | set(scan.files) | set(scan.left_out)
        if folders:
            prefixes = tuple(folder + "/" for folder in folders)
            scope.update(rel for rel in self.engine.state.rows() if rel.startswith(prefixes))
        self.engine.apply(self.plan(scan.files, scope=scope))

    def rescan(self, coalescer: Coalescer) -> None:
        """Compare the whole tree with the state database (events may have been lost)."""
        scan = local.scan(self.root, self.policy.target)
        self.engine.note_left_out(scan.left_out)
        scope = {rel for rel in set(scan.files) | set(self.engine.state.rows())
                 if not coalescer.tracking(rel)}
        self.engine.apply(self.plan(scan.files, scope=scope))
