"""Pure decisions of the mirror (filesystem spec §9): where a local file goes on the service,
which local files count, and what to do to bring the service in step.

``plan_sync`` compares three views of the mirrored files and returns the actions:

- the local files (relative path, size, mtime; the sha256 when it was computed),
- the state database's rows (what this mirror uploaded or adopted: relative path, size,
  mtime, sha256, image id, where the image is),
- the service's listing under the target folder (at start-up; ``None`` while watching, when
  the rows are trusted and the upload queue checks names itself),

restricted to ``scope`` (the paths a burst of events touched; ``None``: everything). It does
no I/O. When a decision needs a file's sha256 (same size, new mtime; a possible move) the
plan lists the files in ``hash_first`` and nothing else; the caller plans again with the
hashes filled in.

The rules, in the order they are tried for each local file:

1. a live upload for the path: left to the queue (the path is looked at again when it lands);
2. a failure already reported for these bytes (same size and mtime): reported, not retried;
3. a row whose image is still there: same size and mtime → unchanged; same size and sha256 →
   only the mtime is recorded; else → replace (§5) of that image id;
4. a row of a file that vanished in the same scope, with the same target → a new local path
   for the same image (same bytes) or a replace of it (new bytes);
5. a vanished row with the same size and sha256 → the file moved: same name, other folder →
   server-side move; other name → upload under the new name, then archive the old image;
6. otherwise a new file: a name another mirrored file owns → failed (collision); an image
   there this mirror does not know → adopted when the size matches (or the name was
   converted, HEIC), else failed (the mirror never archives what it did not upload);
   else → upload.

Rows left without a local file are archived with ``delete`` (at most ``max_delete`` in one go
unless ``force``) or kept; rows whose image is gone from the service are forgotten.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Collection, Mapping

from pictofs import names
from pictofs.core.upload.job import service_name
from pictofs.errors import InvalidName
from pictofs.model import Image, join_path

RemoteListing = Mapping[tuple[str, str], Image]  # (folder, filename) → image


# ---------------------------------------------------------------------- where files go


@dataclass(frozen=True)
class Destination:
    """The dataset folder a local folder is mirrored into."""

    folder: str = "/"
    organize_by_class: bool = False

    def folder_for(self, rel: str) -> str:
        """The service folder of a local relative path (``a/b/x.jpg`` → ``/a/b``, or
        ``/a`` with ``organize_by_class``), under the target folder."""
        parts = rel.split("/")[:-1]
        if self.organize_by_class:
            parts = parts[:1]
        return join_path(self.folder, "/".join(parts)) if parts else self.folder

    def place(self, rel: str) -> tuple[str, str]:
        """(service folder, the name the service will store)."""
        return self.folder_for(rel), service_name(rel.rsplit("/", 1)[-1])


class Verdict(enum.Enum):
    CANDIDATE = "candidate"  # mirrored
    IGNORED = "ignored"  # a local-only name (§5), or inside a local-only folder: silent
    SYMLINK = "symlink"  # skipped with a log line
    UNSUPPORTED = "unsupported"  # not an image type the service takes: skipped, reported once
    EMPTY = "empty"  # 0 bytes: stays local until it has content
    NOT_REGULAR = "not a regular file"
    TOO_LARGE = "too large"  # failed, reported once
    BAD_NAME = "bad name"  # failed, reported once


FAILED_VERDICTS = frozenset({Verdict.TOO_LARGE, Verdict.BAD_NAME})


def ignored_folder(rel: str) -> bool:
    """A local-only folder (``.git``, ``.Trash-1000``), or one inside such a folder."""
    return any(names.is_local_only(part) for part in rel.split("/"))


def classify(rel: str, *, is_symlink: bool, is_file: bool, size: int,
             target: Destination | None = None) -> tuple[Verdict, str]:
    """What the mirror does with one local entry, and why (for the report)."""
    parts = rel.split("/")
    if ignored_folder(rel):
        return Verdict.IGNORED, "a local-only name"
    if is_symlink:
        return Verdict.SYMLINK, "a symbolic link (not followed)"
    if not is_file:
        return Verdict.NOT_REGULAR, "not a regular file"
    if not names.is_supported(parts[-1]):
        return Verdict.UNSUPPORTED, (f"unsupported file type "
                                     f"{names.extension(parts[-1]) or '(none)'}")
    used = parts[-1:] + (parts[:1] if target and target.organize_by_class else parts[:-1])
    try:
        for part in used:
            names.check_name(part)
    except InvalidName as exc:
        return Verdict.BAD_NAME, str(exc)
    if size > names.MAX_IMAGE_BYTES:
        return Verdict.TOO_LARGE, (f"{size:,} bytes is over the 50 MB limit "
                                   f"({names.MAX_IMAGE_BYTES:,} bytes)")
    if size == 0:
        return Verdict.EMPTY, "empty (uploaded once it has content)"
    return Verdict.CANDIDATE, ""


# ---------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class LocalFile:
    rel: str  # POSIX path relative to the mirrored folder
    size: int
    mtime_ns: int
    sha256: str | None = None


@dataclass(frozen=True)
class Row:
    """What the state database knows about one mirrored file."""

    rel: str
    size: int
    mtime_ns: int
    sha256: str
    image_id: str
    folder: str  # where the image is (as the service answered)
    name: str
    superseded: bool = False  # a rename in flight archives this image once it lands


@dataclass(frozen=True)
class Known:
    """A failure already reported for these bytes (not retried until the file changes)."""

    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class Policy:
    target: Destination = field(default_factory=Destination)
    delete: bool = False
    max_delete: int = 100
    force: bool = False


# ---------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Upload:
    """Upload ``file`` (replacing ``replaced_id`` when set). ``retire``: a row this upload
    takes the place of, deleted when it lands (its image archived with ``archive``)."""

    file: LocalFile
    folder: str
    replaced_id: str | None = None
    retire: Row | None = None
    archive: bool = False


@dataclass(frozen=True)
class Touch:
    """Same bytes, new mtime: record it."""

    file: LocalFile


@dataclass(frozen=True)
class Adopt:
    """The service already has this file's bytes at its name: remember the pair."""

    file: LocalFile
    image: Image


@dataclass(frozen=True)
class Move:
    """Server-side move of ``row``'s image to ``folder`` (same name, same bytes)."""

    row: Row
    file: LocalFile
    folder: str


@dataclass(frozen=True)
class Relink:
    """Same image, same service path, another local path (``--organize-by-class``)."""

    row: Row
    file: LocalFile


@dataclass(frozen=True)
class Failure:
    rel: str
    reason: str
    known: bool = False  # reported before: do not log it again


@dataclass
class Plan:
    uploads: list[Upload] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    adopts: list[Adopt] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    relinks: list[Relink] = field(default_factory=list)
    archives: list[Row] = field(default_factory=list)  # deleted locally, --delete
    kept: list[Row] = field(default_factory=list)  # deleted locally, left on the service
    forgets: list[Row] = field(default_factory=list)  # image gone from the service
    failures: list[Failure] = field(default_factory=list)
    hash_first: list[LocalFile] = field(default_factory=list)
    unchanged: int = 0
    in_flight: int = 0
    refused: str | None = None  # the --max-delete guard said no

    @property
    def empty(self) -> bool:
        return not (self.uploads or self.touches or self.adopts or self.moves or self.relinks
                    or self.archives or self.forgets or self.hash_first)


# ---------------------------------------------------------------------- planning


def plan_sync(local: Mapping[str, LocalFile], rows: Mapping[str, Row], policy: Policy, *,
              remote: RemoteListing | None = None, pending: Collection[str] = (),
              known: Mapping[str, Known] | None = None,
              scope: Collection[str] | None = None) -> Plan:
    """The actions that bring the service in step with ``local`` (see the module doc)."""
    planner = _Planner(local, rows, policy, remote, pending, known or {}, scope)
    return planner.run()


class _Planner:
    def __init__(self, local: Mapping[str, LocalFile], rows: Mapping[str, Row],
                 policy: Policy, remote: RemoteListing | None, pending: Collection[str],
                 known: Mapping[str, Known], scope: Collection[str] | None) -> None:
        self.policy = policy
        self.remote = remote
        self.pending = set(pending)
        self.known = known
        in_scope = (lambda rel: True) if scope is None else set(scope).__contains__
        self.files = {rel: f for rel, f in local.items() if in_scope(rel)}
        self.rows = {rel: r for rel, r in rows.items() if in_scope(rel)}
        self.owner = {(r.folder, r.name): r for r in rows.values()}
        self.plan = Plan()
        self.claimed: dict[tuple[str, str], str] = {}  # targets taken by this plan

    def run(self) -> Plan:
        new = [f for f in sorted(self.files.values(), key=_exact_names_first)
               if not self._settled_file(f)]
        vanished = [r for r in sorted(self.rows.values(), key=lambda r: r.rel)
                    if self._vanished(r)]
        paired = self._pair(new, vanished)
        if self.plan.hash_first:  # no action before every decision could be made
            return Plan(hash_first=self.plan.hash_first)
        for row in vanished:
            if row.rel not in paired:
                (self.plan.archives if self.policy.delete else self.plan.kept).append(row)
        self._guard_deletions()
        return self.plan

    # ---------------------------------------------------------------- local files

    def _settled_file(self, f: LocalFile) -> bool:
        """Decide a file that has a live row (or needs no plan); False: it is new here."""
        if f.rel in self.pending:
            self.plan.in_flight += 1
            return True
        known = self.known.get(f.rel)
        if known is not None and (known.size, known.mtime_ns) == (f.size, f.mtime_ns):
            self.plan.failures.append(Failure(f.rel, known.reason, known=True))
            return True
        row = self.rows.get(f.rel)
        folder = self.policy.target.folder_for(f.rel)
        if row is None or row.folder != folder or not self._present(row):
            return False
        if row.superseded:
            self.plan.in_flight += 1
        elif (f.size, f.mtime_ns) == (row.size, row.mtime_ns):
            self.plan.unchanged += 1
        elif f.size == row.size and f.sha256 is None:
            self.plan.hash_first.append(f)
        elif f.size == row.size and f.sha256 == row.sha256:
            self.plan.touches.append(Touch(f))
        else:
            self.plan.uploads.append(Upload(f, folder, replaced_id=row.image_id))
        self.claimed[(row.folder, row.name)] = f.rel
        return True

    def _present(self, row: Row) -> bool:
        """The row's image is where the row says (always believed while watching)."""
        if self.remote is None:
            return True
        image = self.remote.get((row.folder, row.name))
        return image is not None and image.id == row.image_id

    def _vanished(self, row: Row) -> bool:
        """A row without its local file, to pair, archive or keep; forgets dead rows."""
        if row.rel in self.files or row.rel in self.pending or row.superseded:
            return False
        if not self._present(row):
            self.plan.forgets.append(row)
            return False
        return True

    # ---------------------------------------------------------------- new files

    def _pair(self, new: list[LocalFile], vanished: list[Row]) -> set[str]:
        """Plan the new files, pairing them with vanished rows; returns the rows used."""
        free = {row.rel: row for row in vanished}
        sizes = {row.size for row in vanished}
        for f in new:
            folder, name = self.policy.target.place(f.rel)
            if f.sha256 is None and f.size in sizes:
                self.plan.hash_first.append(f)
                continue
            row = self._same_target(free, (folder, name))
            if row is None:
                row = self._same_bytes(free, f, name, folder)
                if row is not None and not self._free(folder, name):
                    row = None  # the target is taken: f is judged as a new file
            if row is None:
                self._new(f, folder, name)
                continue
            del free[row.rel]
            self._reuse(f, row, folder, name)
        return {row.rel for row in vanished if row.rel not in free}

    @staticmethod
    def _same_target(free: dict[str, Row], key: tuple[str, str]) -> Row | None:
        return next((r for r in free.values() if (r.folder, r.name) == key), None)

    @staticmethod
    def _same_bytes(free: dict[str, Row], f: LocalFile, name: str, folder: str
                    ) -> Row | None:
        """A vanished row with these bytes: the same name first, then the same folder."""
        matches = [r for r in free.values() if (r.size, r.sha256) == (f.size, f.sha256)]
        matches.sort(key=lambda r: (r.name != name, r.folder != folder, r.rel))
        return matches[0] if matches else None

    def _reuse(self, f: LocalFile, row: Row, folder: str, name: str) -> None:
        """``f`` takes the place of the vanished ``row``."""
        if (row.folder, row.name) == (folder, name):
            if (f.size, f.sha256) == (row.size, row.sha256):
                self.plan.relinks.append(Relink(row, f))
            else:
                self.plan.uploads.append(Upload(f, folder, replaced_id=row.image_id,
                                                retire=row))
        elif row.name == name:
            self.plan.moves.append(Move(row, f, folder))
        else:
            self.plan.uploads.append(Upload(f, folder, retire=row, archive=True))
        self.claimed[(folder, name)] = f.rel

    def _free(self, folder: str, name: str) -> bool:
        """Nothing else goes to, or is at, this service path."""
        key = (folder, name)
        owner = self.owner.get(key)
        if key in self.claimed or (owner is not None and not self._gone(owner)):
            return False
        if self.remote is None or key not in self.remote:
            return True
        return owner is not None and owner.image_id == self.remote[key].id

    def _new(self, f: LocalFile, folder: str, name: str) -> None:
        key = (folder, name)
        owner = self.owner.get(key)
        if key in self.claimed or (owner is not None and owner.rel != f.rel
                                   and not self._gone(owner)):
            other = self.claimed.get(key) or (owner.rel if owner else "another file")
            self.plan.failures.append(Failure(
                f.rel, f"{other} already goes to {join_path(folder, name)}"))
            return
        occupant = self.remote.get(key) if self.remote is not None else None
        if occupant is None:
            self.plan.uploads.append(Upload(f, folder))
        elif owner is not None and owner.rel != f.rel and owner.image_id == occupant.id:
            self.plan.failures.append(Failure(
                f.rel, f"{join_path(folder, name)} is still image {occupant.id} of "
                       f"{owner.rel}, which moved; tried again when {f.rel} changes"))
            return
        elif occupant.file_size == f.size or name != f.rel.rsplit("/", 1)[-1]:
            self.plan.adopts.append(Adopt(f, occupant))
        else:
            self.plan.failures.append(Failure(
                f.rel, f"a different image named {name} already exists in {folder} "
                       "(not uploaded by this mirror: rename or archive it)"))
            return
        self.claimed[key] = f.rel

    def _gone(self, row: Row) -> bool:
        """The row's local file is known to be gone (it is in scope and absent)."""
        return row.rel in self.rows and row.rel not in self.files

    # ---------------------------------------------------------------- deletions

    def _guard_deletions(self) -> None:
        count, limit = len(self.plan.archives), self.policy.max_delete
        if count > limit and not self.policy.force:
            self.plan.refused = (f"refusing to archive {count} images deleted locally (more "
                                 f"than --max-delete {limit}); run with --force to archive "
                                 "them")
            self.plan.kept.extend(self.plan.archives)
            self.plan.archives = []


def _exact_names_first(f: LocalFile) -> tuple[bool, str]:
    """A name the service keeps as it is wins a collision with a converted one (HEIC)."""
    return names.extension(f.rel) == ".heic", f.rel
