"""``upload_dataset_from_folder``: upload a local folder of images into an existing dataset.

Importable as ``pictofs.workflows`` (the product docs call it ``pictograph.workflows``). It uses
the bulk routes: signed URLs for up to 500 files of one virtual folder per call, the PUTs in
parallel threads, then one bulk register per batch. It creates nothing but images.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from pictofs import names
from pictofs.api import datasets as datasets_api
from pictofs.api import images as images_api
from pictofs.api import uploads
from pictofs.api.errors import (
    ApiError,
    AuthError,
    ForbiddenError,
    NetworkError,
    NotFoundError,
)
from pictofs.api.transport import Transport
from pictofs.errors import PictofsError
from pictofs.model import join_path

if TYPE_CHECKING:
    from pictofs.api.client import Client

log = logging.getLogger(__name__)

URL_MAX_AGE = 600.0  # signed URLs live 15 minutes; older than 10 are asked for again
# No point going on after these: a bad key, a dataset gone, the network down; and for calls
# about a whole batch, a role too low (a 403 on one PUT is an expired URL instead).
_FATAL = (AuthError, NotFoundError, NetworkError)
_FATAL_FOR_BATCH = (*_FATAL, ForbiddenError)


@dataclass(frozen=True)
class Failure:
    path: str
    reason: str


@dataclass
class UploadReport:
    """``images_attempted`` = files an upload was tried for = ``images_uploaded`` +
    ``len(failures)``; ``images_skipped`` = files already in the dataset, unsupported files
    and symlinks (none of them is a failure)."""

    images_attempted: int = 0
    images_uploaded: int = 0
    images_skipped: int = 0
    failures: list[Failure] = field(default_factory=list)

    def fail(self, path: str | Path, reason: str) -> None:
        self.images_attempted += 1
        self.failures.append(Failure(str(path), reason))
        log.info("not uploaded: %s: %s", path, reason)


@dataclass(frozen=True)
class _Candidate:
    path: Path
    size: int

    @property
    def filename(self) -> str:
        return self.path.name


def upload_dataset_from_folder(
    client: Client,
    dataset: str,
    folder: str | os.PathLike[str],
    organize_by_class: bool = True,
    parallel: bool = True,
    max_workers: int = 8,
    *,
    url_max_age: float = URL_MAX_AGE,
) -> UploadReport:
    """Upload every image under ``folder`` into ``dataset`` (a name or id; it must exist, else
    ``NotFoundError``).

    - ``organize_by_class=True``: a first-level subfolder ``cats/`` becomes the virtual folder
      ``/cats`` and deeper files go to that same folder; files at the top go to ``/``.
      ``False``: the whole relative folder path is kept (``a/b/x.jpg`` → ``/a/b``).
    - Skipped, not failed (counted in ``images_skipped``): files whose extension the service
      does not take, symlinks, and files already there (same name and size in the target
      folder; a HEIC file whose ``<stem>.png`` is there). Hidden and temp names
      (``.DS_Store``, ``x.jpg~``, ``*.part``) and hidden folders are ignored altogether.
    - Failed (``failures``, with the reason): files over 50 MB, bad names, a name taken by a
      different image, two local files landing on one name, and any upload or register error.
    - ``parallel=False`` sends one PUT at a time; otherwise ``max_workers`` at once.
    """
    t = client.transport
    target = datasets_api.get(t, dataset)
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    report = UploadReport()
    plan = _plan(root, organize_by_class, report)
    with ThreadPoolExecutor(max_workers=max_workers if parallel else 1) as pool:
        for directory in sorted(plan):
            todo = _not_yet_there(t, target.id, directory, plan[directory], report)
            for start in range(0, len(todo), images_api.BULK_LIMIT):
                batch = todo[start:start + images_api.BULK_LIMIT]
                _upload_batch(t, target.id, directory, batch, pool, report, url_max_age)
    log.info("upload of %s into %s: %d uploaded, %d skipped, %d failed", root, target.name,
             report.images_uploaded, report.images_skipped, len(report.failures))
    return report


# ---------------------------------------------------------------------- planning (local only)


def _plan(root: Path, organize_by_class: bool, report: UploadReport) -> dict[str, list[_Candidate]]:
    """Local files by target virtual folder."""
    plan: dict[str, list[_Candidate]] = {}
    first_seen: dict[tuple[str, str], Path] = {}
    for path, parts in _walk(root):
        if path.is_symlink() or not names.is_supported(path.name):
            log.debug("skipped %s (a symlink or an unsupported type)", path)
            report.images_skipped += 1
            continue
        try:
            directory = _target_folder(parts, organize_by_class)
            uploads.check_filename(path.name)
            size = path.stat().st_size
        except (PictofsError, OSError) as exc:
            report.fail(path, str(exc))
            continue
        key = (directory, path.name)
        if key in first_seen:
            report.fail(path, f"same name as {first_seen[key]} in {directory}")
            continue
        first_seen[key] = path
        plan.setdefault(directory, []).append(_Candidate(path, size))
    return plan


def _walk(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Files under ``root`` with their folder parts relative to it; hidden and local-only
    names are left out, symlinked folders are not followed."""
    for current, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not names.is_local_only(d))
        parts = Path(current).relative_to(root).parts
        for name in sorted(filenames):
            if not names.is_local_only(name):
                yield Path(current) / name, parts


def _target_folder(parts: tuple[str, ...], organize_by_class: bool) -> str:
    if organize_by_class:
        parts = parts[:1]
    return uploads.folder_path("/".join(parts))


def _not_yet_there(t: Transport, dataset_id: str, directory: str,
                   candidates: list[_Candidate], report: UploadReport) -> list[_Candidate]:
    """Drop files already in the folder (same name and size); oversize and name clashes with
    a different image are failures."""
    existing = {image.filename: image.file_size
                for image in images_api.iter_images(t, dataset_id, directory_path=directory)}
    todo = []
    for candidate in candidates:
        stored_name = _stored_name(candidate.filename)
        if candidate.filename != stored_name and stored_name in existing:
            report.images_skipped += 1  # a HEIC already converted: sizes cannot be compared
        elif existing.get(candidate.filename) == candidate.size:
            report.images_skipped += 1
        elif candidate.filename in existing:
            report.fail(candidate.path, f"a different image named {candidate.filename} "
                                        f"already exists in {directory}")
        elif candidate.size > names.MAX_IMAGE_BYTES:
            report.fail(candidate.path, f"{candidate.size:,} bytes is over the 50 MB limit")
        else:
            todo.append(candidate)
    return todo


def _stored_name(filename: str) -> str:
    """The name the service stores a file under (HEIC becomes ``<stem>.png``)."""
    if names.extension(filename) == ".heic":
        return filename[: -len(".heic")] + ".png"
    return filename


# ---------------------------------------------------------------------- uploading


def _upload_batch(t: Transport, dataset_id: str, directory: str, batch: Sequence[_Candidate],
                  pool: ThreadPoolExecutor, report: UploadReport, url_max_age: float) -> None:
    """Bulk upload URLs → parallel PUTs → bulk register, for ≤ 500 files of one folder."""
    tickets = _tickets(t, dataset_id, directory, batch, report)
    futures: list[tuple[_Candidate, Future[images_api.RegisterItem]]] = [
        (c, pool.submit(_put_one, t, dataset_id, directory, c, ticket, url_max_age))
        for c, ticket in tickets
    ]
    sent: list[tuple[_Candidate, images_api.RegisterItem]] = []
    for candidate, future in futures:
        try:
            sent.append((candidate, future.result()))
        except _FATAL:
            raise
        except (PictofsError, OSError) as exc:
            report.fail(candidate.path, f"upload failed: {exc}")
    if sent:
        _register(t, dataset_id, directory, sent, report)


def _tickets(t: Transport, dataset_id: str, directory: str, batch: Sequence[_Candidate],
             report: UploadReport) -> list[tuple[_Candidate, images_api.UploadTicket]]:
    """Signed URLs for the batch in one call; when the call is refused as a whole, one call
    per file, so one bad file does not sink the others."""
    files = [(c.filename, names.content_type_for(c.filename)) for c in batch]
    try:
        return list(zip(batch, images_api.bulk_upload_urls(t, dataset_id, directory, files)))
    except _FATAL_FOR_BATCH:
        raise
    except ApiError as exc:
        log.info("bulk upload-url for %s refused (%s); asking file by file", directory, exc)
    tickets = []
    for candidate, (filename, content_type) in zip(batch, files):
        try:
            ticket = images_api.request_upload_url(t, dataset_id, filename, directory, content_type)
        except _FATAL_FOR_BATCH:
            raise
        except ApiError as exc:
            report.fail(candidate.path, str(exc))
            continue
        tickets.append((candidate, ticket))
    return tickets


def _put_one(t: Transport, dataset_id: str, directory: str, candidate: _Candidate,
             ticket: images_api.UploadTicket, url_max_age: float) -> images_api.RegisterItem:
    """Check and probe the file, PUT it (with a fresh URL when the batch's is old or refused)."""
    local = uploads.prepare(candidate.path)
    if ticket.age() > url_max_age:
        ticket = _fresh_ticket(t, dataset_id, directory, local)
    try:
        images_api.put_bytes(t, ticket, local.path, local.size)
    except ForbiddenError:
        log.info("upload URL refused for %s; asking for a fresh one", candidate.path)
        ticket = _fresh_ticket(t, dataset_id, directory, local)
        images_api.put_bytes(t, ticket, local.path, local.size)
    return local.register_item(directory)


def _fresh_ticket(t: Transport, dataset_id: str, directory: str,
                  local: uploads.LocalImage) -> images_api.UploadTicket:
    return images_api.request_upload_url(t, dataset_id, local.filename, directory,
                                         local.content_type)


def _register(t: Transport, dataset_id: str, directory: str,
              sent: list[tuple[_Candidate, images_api.RegisterItem]], report: UploadReport) -> None:
    try:
        result = images_api.bulk_register(t, dataset_id, [item for _, item in sent])
    except _FATAL_FOR_BATCH:
        raise
    except ApiError as exc:
        for candidate, _ in sent:
            report.fail(candidate.path, f"register failed: {exc}")
        return
    by_name: dict[str, Path] = {}
    for candidate, _ in sent:
        by_name[candidate.filename] = candidate.path
        by_name.setdefault(_stored_name(candidate.filename), candidate.path)
    report.images_attempted += len(result.succeeded)
    report.images_uploaded += len(result.succeeded)
    for failed in result.failed:
        where = by_name.get(failed.filename) or join_path(directory, failed.filename)
        report.fail(where, f"register failed: {failed.error}")


__all__ = ["Failure", "UploadReport", "upload_dataset_from_folder"]
