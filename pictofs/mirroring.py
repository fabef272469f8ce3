"""``pictofs mirror LOCAL_DIR DATASET[:/folder]``: build the objects of one mirror, wire them,
and run it (the composition root of mirror mode, as ``pictofs.mounting`` is of a mount).

Options → objects → run: parses the target (split at the first ``:/``, or else at the
first ``:``), connects (the
embedded local server when no key is configured), opens the state database and the upload
journal of this mirror, builds the engine and the session of ``pictofs.mirror``, installs the
SIGINT/SIGTERM handlers (finish the step in flight, then stop) and runs ``--once`` or the
watch loop. Everything it closes at the end it opened itself; ``pictofs.mirror`` receives its
collaborators and never builds a connection, a journal or a state database.

Exit codes: 0 — in step (``--once``) or stopped by a signal (watching); 1 — user errors (one
line, via the CLI), ``--once`` with failures or refused deletions, or the mirrored folder
went away while watching; 128 + the signal — ``--once`` stopped by a signal before it was
done.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from pictofs import dirs
from pictofs.api.bulk_remote import BulkApiRemote
from pictofs.core.upload.journal import Journal, key_fingerprint
from pictofs.embedded import connect
from pictofs.errors import ConfigError, InvalidName, NotFound
from pictofs.mirror.engine import Engine
from pictofs.mirror.plan import Policy, Destination
from pictofs.mirror.progress import Progress, Report
from pictofs.mirror.session import Session
from pictofs.mirror.state import Identity, MirrorState
from pictofs.model import Dataset
from pictofs.names import normalize_folder

log = logging.getLogger(__name__)

BATCH = 100  # entries per bulk call at most (the service takes 500)
STOP_TIMEOUT = 60.0  # seconds the steps in flight get to finish after a signal


def parse_target(text: str) -> tuple[str, str]:
    """``DATASET[:/folder]`` → (dataset, folder); split at the first ``:/``. Without a
    ``:/``, the first ``:`` splits (``ds:cams`` is ``ds:/cams``, as scp and rsync write
    it), unless a dataset has the whole text as its name (``_find_dataset``)."""
    name, sep, rest = text.partition(":/")
    if not sep and ":" in text:
        name, _, rest = text.partition(":")
        sep = ":"
    if not name:
        raise ConfigError(f"{text!r}: expected DATASET or DATASET:/folder")
    try:
        return name, normalize_folder("/" + rest if sep else "/")
    except InvalidName as exc:
        raise ConfigError(f"{text!r}: bad folder: {exc}") from None


def _find_dataset(remote: BulkApiRemote, target: str, name: str, folder: str
                  ) -> tuple[Dataset, str]:
    """(dataset, folder) of a target ``parse_target`` split into ``name`` and ``folder``.
    A target split at a bare colon names a dataset whole when one has that very name
    (a colon is allowed in dataset names); otherwise the part before the colon does."""
    if name != target and ":/" not in target:
        try:
            return remote.get_dataset(target), "/"
        except NotFound:
            pass
    return remote.get_dataset(name), folder


def run_mirror(args: argparse.Namespace) -> int:
    root = Path(os.path.realpath(os.path.expanduser(args.local_dir)))
    if not root.is_dir():
        raise ConfigError(f"{args.local_dir}: not a folder")
    name, folder = parse_target(args.target)
    if args.settle < 0 or args.transfers < 1 or args.max_delete < 0:
        raise ConfigError("--settle and --max-delete cannot be negative, --transfers must be "
                          "at least 1")
    connection = connect(base_url=args.base_url, key_file=args.key_file)
    assert connection.api_key is not None
    remote = BulkApiRemote(connection, timeout=args.timeout, retries=args.retries,
                           retry_max_wait=args.retry_max_wait,
                           pool_size=max(16, 2 * args.transfers))
    try:
        dataset, folder = _find_dataset(remote, args.target, name, folder)
    except NotFound:
        raise ConfigError(f"no dataset {name!r} at {connection.base_url} (create it with: "
                          f"pictofs datasets create {name})") from None
    identity = Identity(str(root), connection.base_url, dataset.id, folder,
                        bool(args.organize_by_class))
    state = MirrorState.open(dirs.state_dir(), identity)
    journal = None
    try:
        journal = Journal(state.journal_dir, base_url=connection.base_url,
                          dataset_id=dataset.id,
                          fingerprint=key_fingerprint(connection.api_key))
        return _run(args, root, remote, dataset.id, state, journal,
                    Policy(Destination(folder, bool(args.organize_by_class)), bool(args.delete),
                           args.max_delete, bool(args.force)), dataset.name)
    finally:
        if journal is not None:
            journal.close()
        state.close()
        remote.close()


def _run(args: argparse.Namespace, root: Path, remote: BulkApiRemote, dataset_id: str,
         state: MirrorState, journal: Journal, policy: Policy, dataset_name: str) -> int:
    tty = sys.stderr.isatty() and not args.log_file
    progress = Progress(sys.stderr, tty)
    session: Session | None = None

    def landed(rel: str) -> None:
        if session is not None and not args.once:
            session.landed(rel)

    engine = Engine(root, remote, dataset_id, state, journal, transfers=args.transfers,
                    retry_max_wait=args.retry_max_wait, batch=BATCH, progress=progress,
                    report=Report(), landed=landed, upload_remote=remote.without_retries())
    session = Session(root, engine, remote, dataset_id, policy, settle=args.settle,
                      poll=bool(args.poll), workers=args.transfers)
    log.info("mirroring %s into %s:%s%s", root, dataset_name, policy.target.folder,
             " (once)" if args.once else "")

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: finishing the step in flight, then stopping",
                 signal.Signals(signum).name)
        assert session is not None
        session.request_stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return session.run_once() if args.once else session.run_watch()
    finally:
        if not engine.stop(STOP_TIMEOUT):
            log.warning("uploads still in flight after %.0fs; they resume at the next start",
                        STOP_TIMEOUT)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
