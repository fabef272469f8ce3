"""Differential random operations: a real mount against a plain-Python model (filesystem
§3, §5, §6).

A Hypothesis ``RuleBasedStateMachine`` drives one real mount per example (a fresh dataset
each time) with the operations people do through a mount, and changes made meanwhile by
another client through the API. The model is a dict (path → bytes), a set of folders and the
mtimes set with ``utime``. After every step the mount's whole tree (folder names, file names,
sizes, every file's bytes, the mtimes set) must equal the model; after ``pictofs sync`` (a
rule, and at the end of each example) the service's live images and folders must equal the
model's uploadable part, and after ``pictofs umount`` they still must.

Each example draws its mount's timing: ``--write-back`` 0 s (uploads race the next steps),
0.3 s, or 1 h (files stay staged until a ``sync`` step, so renames of staged files and of
uploaded images are both reached deterministically); and the listing cache: ``--dir-cache-time
0`` (API changes show at once), or 30 s with ``pictofs refresh`` after each API change and a
wait of the kernel's 1 s entry timeout (the staleness the spec allows, modelled).

Names: folders ``p``/``q`` (nested up to three levels), supported images ``a.png``,
``b.png``, ``c.jpg``, ``d.jpg`` and local-only names ``.e.png``, ``f.png~``, ``.g.jpg.part``
(never uploaded; renaming one to a supported name uploads it, as an editor's save does). A
supported file is never renamed to a local-only name (that hands the image to an orphan timer,
§6, which this model does not time). Contents are small PNGs/JPEGs from ``imagegen`` whose kind
follows the extension.

Profiles: CI runs ``EXAMPLES`` × ``STEPS`` with a fixed seed (``pytest --hypothesis-seed=N``
runs another); ``PICTOFS_LONG=1`` runs the long profile. See docs/reliability.md.
"""

from __future__ import annotations

import errno
import functools
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from imagegen import jpeg_bytes, png_bytes
from mountkit import pictofs_cmd, service_bytes
from pictofs import control
from pictofs.api import folders as folders_api
from pictofs.names import is_local_only

pytestmark = pytest.mark.fuse

LONG = os.environ.get("PICTOFS_LONG", "") not in ("", "0")
SEED = 20240611  # pytest --hypothesis-seed=N runs another seed
EXAMPLES = 150 if LONG else 10
STEPS = 50 if LONG else 20

FOLDER_NAMES = ("p", "q")
MAX_DEPTH = 3  # folders nest at most this deep (mkdir adds up to 2; renames may add one)
UPLOADABLE = ("a.png", "b.png", "c.jpg", "d.jpg")
LOCAL = (".e.png", "f.png~", ".g.jpg.part")
FILE_NAMES = UPLOADABLE + LOCAL
OLD = 1_000_000_000  # utime sets mtimes in 2001-2002; a file's own mtime is always later

# What the examples did, for docs/reliability.md (printed at the end, visible with -s).
FIGURES: dict[str, Any] = {"examples": 0, "steps": 0, "checks": 0, "service_checks": 0,
                           "mount_seconds": 0.0, "rules": {}}


def kind(name: str) -> str:
    return "png" if ".png" in name else "jpg"


def content(name: str, number: int) -> bytes:
    return png_bytes(number) if kind(name) == "png" else jpeg_bytes(number)


def join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def depth(folder: str) -> int:
    return folder.count("/") + 1 if folder else 0


def uploadable(path: str) -> bool:
    return not any(is_local_only(part) for part in path.split("/"))


def errno_of(func: Callable[[], object]) -> int | None:
    try:
        func()
    except OSError as exc:
        return exc.errno
    return None


def write_file(path: Path, data: bytes, flags: int, pieces: int) -> None:
    """``open`` with ``flags``, the bytes in ``pieces`` writes, ``close``."""
    fd = os.open(path, flags, 0o644)
    try:
        step = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), step):
            view = memoryview(data)[start:start + step]
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def step(func: Callable[..., None]) -> Callable[..., None]:
    """Count the rule, and mark the machine broken if it raises (teardown then only
    unmounts: a failed step is the report, not what the teardown finds after it)."""

    @functools.wraps(func)
    def wrapper(self: "MountMachine", **kwargs: Any) -> None:
        self.broken = True
        func(self, **kwargs)
        self.broken = False
        self.since_sync += 1
        FIGURES["steps"] += 1
        FIGURES["rules"][func.__name__] = FIGURES["rules"].get(func.__name__, 0) + 1

    return wrapper


class MountMachine(RuleBasedStateMachine):
    """Bound to the test's fixtures (class attributes) by the test function."""

    client: Any
    mount: Any
    scratch: Path

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, bytes] = {}
        self.folders: set[str] = set()
        self.mtimes: dict[str, int] = {}
        self.m: Any = None
        self.dataset: Any = None
        self.cached = False
        self.broken = False
        self.since_sync = 0

    # ------------------------------------------------------------------ set-up

    @initialize(write_back=st.sampled_from(["0s", "0.3s", "1h"]),
                cached=st.sampled_from([False, False, True]),  # cached costs 1 s per API step
                tree=st.lists(st.tuples(st.sampled_from(["", "p", "q", "p/q"]),
                                        st.sampled_from(UPLOADABLE), st.integers(0, 60)),
                              max_size=5))
    def start(self, write_back: str, cached: bool,
              tree: list[tuple[str, str, int]]) -> None:
        """A fresh dataset holding ``tree`` (uploaded images, their folders), mounted."""
        self.broken = True
        started = time.monotonic()
        self.cached = cached
        name = f"diff-{uuid.uuid4().hex[:10]}"
        self.dataset = self.client.projects.create(name)
        for folder, filename, number in tree:
            if folder and folder not in self.folders:
                folders_api.create_folder(self.client.transport, self.dataset.id, "/" + folder)
                self.folders.update({folder, parent_of(folder)} - {""})
            if join(folder, filename) not in self.files:
                self.files[join(folder, filename)] = self.api_put(folder, filename, number)
        # --refuse-non-images: the model has no local-only files (test_local_only.py has)
        self.m = self.mount(name, "--write-back", write_back, "--refuse-non-images",
                            "--dir-cache-time", "30s" if cached else "0")
        FIGURES["examples"] += 1
        FIGURES["mount_seconds"] += time.monotonic() - started
        self.broken = False

    def teardown(self) -> None:
        if self.m is None:
            return
        try:
            if not self.broken:
                result = pictofs_cmd(self.m, "sync", "--timeout", "60s", str(self.m.path))
                assert result.returncode == 0, f"pictofs sync: {result.stderr}\n" \
                    f"{self.m.status()['uploads']}\n{self.m.log()[-3000:]}"
                self.check_service()
                result = self.m.umount("--timeout", "120")
                assert result.returncode == 0, f"umount: {result.stderr}\n{self.m.log()[-3000:]}"
                self.check_service()  # unmounting changes nothing more
        finally:
            if self.m.mounted:
                self.m.umount("--timeout", "30", "--force")

    # ------------------------------------------------------------------ helpers

    def p(self, path: str) -> Path:
        return self.m.path / path if path else self.m.path

    def all_folders(self) -> list[str]:
        return ["", *sorted(self.folders)]

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.folders

    def empty(self, folder: str) -> bool:
        prefix = folder + "/"
        return not any(p.startswith(prefix) for p in [*self.files, *self.folders])

    def sync(self) -> None:
        """What ``pictofs sync`` does, through the control socket (no process start per
        step; the teardown runs the command itself)."""
        reply = control.request(str(self.m.path), "sync", socket_timeout=150, timeout=120)
        assert reply["idle"] and not reply["failed"], f"sync: {reply}\n{self.m.log()[-3000:]}"
        self.since_sync = 0

    def after_api_change(self) -> None:
        """A change by another client shows now (dir cache 0), or after ``pictofs refresh``
        plus the kernel's entry/attr timeout of min(1 s, --dir-cache-time) (§2, §3)."""
        if self.cached:
            control.request(str(self.m.path), "refresh")
            time.sleep(1.1)

    def api_put(self, folder: str, name: str, number: int) -> bytes:
        """Another client uploads ``name`` into ``folder``; returns the bytes."""
        blob = content(name, number)
        source = self.scratch / "api" / name
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(blob)
        # a conflict here is a bug: a name the mount removed holds an image on the service
        self.client.images.upload(self.dataset.id, source, "/" + folder)
        return blob

    def service_images(self) -> dict[str, Any]:
        return {img.path.lstrip("/"): img for img in self.client.images.list(self.dataset.id)}

    def check_service(self) -> None:
        FIGURES["service_checks"] += 1
        expected = {p: d for p, d in self.files.items() if uploadable(p)}
        images = self.service_images()
        assert sorted(images) == sorted(expected), "service images differ from the model"
        for path, image in images.items():
            assert service_bytes(self.client, image.id, self.scratch) == expected[path], path
        folders = {f.full_path.strip("/") for f in
                   folders_api.list_folders(self.client.transport, self.dataset.id)}
        assert folders == {f for f in self.folders if uploadable(f)}, \
            "service folders differ from the model"

    # ------------------------------------------------------------------ invariant

    @invariant()
    def mount_matches_model(self) -> None:
        if self.m is None:
            return
        self.broken = True
        self._check_tree()
        self.broken = False
        FIGURES["checks"] += 1

    def _check_tree(self) -> None:
        folders: set[str] = set()
        files: dict[str, bytes] = {}
        for dirpath, dirnames, filenames in os.walk(self.m.path):
            rel = os.path.relpath(dirpath, self.m.path)
            rel = "" if rel == "." else rel
            folders.update(join(rel, d) for d in dirnames)
            for name in filenames:
                path = join(rel, name)
                full = self.p(path)
                data = full.read_bytes()
                info = os.stat(full)
                assert info.st_size == len(data), f"{path}: st_size {info.st_size} but " \
                    f"{len(data)} bytes read"
                if path in self.mtimes:
                    assert info.st_mtime == self.mtimes[path], \
                        f"{path}: mtime {info.st_mtime}, set to {self.mtimes[path]}"
                else:
                    assert info.st_mtime > OLD + 10_000_000, \
                        f"{path}: mtime {info.st_mtime} is an old utime, not the last write"
                files[path] = data
        assert folders == self.folders, "mount folders differ from the model"
        assert sorted(files) == sorted(self.files), "mount files differ from the model"
        for path, data in files.items():
            assert data == self.files[path], f"{path}: bytes differ from the model"

    # ------------------------------------------------------------------ files

    @rule(data=st.data(), number=st.integers(0, 60), pieces=st.integers(1, 3))
    @step
    def create(self, data: st.DataObject, number: int, pieces: int) -> None:
        """A new file (``O_CREAT|O_EXCL``, 1-3 writes, close); an existing name: EEXIST; an
        unsupported name: ENOTSUP (``--refuse-non-images``)."""
        folder = data.draw(st.sampled_from(self.all_folders()), "folder")
        name = data.draw(st.sampled_from([*FILE_NAMES, "notes.txt"]), "name")
        path = join(folder, name)
        if name == "notes.txt":
            code = errno_of(lambda: write_file(self.p(path), b"hello",
                                               os.O_WRONLY | os.O_CREAT, 1))
            assert code == errno.ENOTSUP, f"create {path}: {code}"
            return
        blob = content(name, number)
        if self.exists(path):
            code = errno_of(lambda: write_file(self.p(path), blob,
                                               os.O_WRONLY | os.O_CREAT | os.O_EXCL, 1))
            assert code == errno.EEXIST, f"create O_EXCL of existing {path}: {code}"
            return
        write_file(self.p(path), blob, os.O_WRONLY | os.O_CREAT | os.O_EXCL, pieces)
        self.files[path] = blob
        self.mtimes.pop(path, None)

    @precondition(lambda self: any(not is_local_only(p.rpartition("/")[2])
                                   for p in self.files))
    @rule(data=st.data(), number=st.integers(0, 60))
    @step
    def editor_save(self, data: st.DataObject, number: int) -> None:
        """An editor's save: write a local-only temp name next to the file, rename it over
        the file (a replace, §5/§6)."""
        path = data.draw(st.sampled_from(sorted(p for p in self.files
                                                if not is_local_only(p.rpartition("/")[2]))),
                         "path")
        folder, name = parent_of(path), path.rpartition("/")[2]
        temp = join(folder, f".{name}.{number}.tmp")
        blob = content(name, number)
        write_file(self.p(temp), blob, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 1)
        os.rename(self.p(temp), self.p(path))
        self.files[path] = blob
        self.mtimes.pop(path, None)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), number=st.integers(0, 60), pieces=st.integers(1, 3),
          same=st.booleans())
    @step
    def overwrite(self, data: st.DataObject, number: int, pieces: int, same: bool) -> None:
        """``O_TRUNC`` and new bytes, or (``same``) the bytes it has: a replace that uploads
        nothing (§5) but is still a write, so the mtime is the write's."""
        path = data.draw(st.sampled_from(sorted(self.files)), "path")
        blob = self.files[path] if same else content(path, number)
        write_file(self.p(path), blob, os.O_WRONLY | os.O_TRUNC, pieces)
        self.files[path] = blob
        self.mtimes.pop(path, None)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    @step
    def rename_file(self, data: st.DataObject) -> None:
        src = data.draw(st.sampled_from(sorted(self.files)), "src")
        name = src.rpartition("/")[2]
        choices = [n for n in (FILE_NAMES if is_local_only(name) else UPLOADABLE)
                   if kind(n) == kind(name)]
        folder = data.draw(st.sampled_from(self.all_folders()), "folder")
        dst = join(folder, data.draw(st.sampled_from(choices), "name"))
        if dst == src:
            return
        os.rename(self.p(src), self.p(dst))
        self.files[dst] = self.files.pop(src)
        if src in self.mtimes:
            self.mtimes[dst] = self.mtimes.pop(src)
        else:
            self.mtimes.pop(dst, None)

    @precondition(lambda self: len(self.files) >= 2)
    @rule(data=st.data())
    @step
    def rename_onto_file(self, data: st.DataObject) -> None:
        """``mv a b`` onto an existing file of the same kind: a replace (§6)."""
        src = data.draw(st.sampled_from(sorted(self.files)), "src")
        name = src.rpartition("/")[2]
        targets = sorted(p for p in self.files if p != src and kind(p) == kind(name)
                         and (is_local_only(name) or uploadable(p)))
        if not targets:
            return
        dst = data.draw(st.sampled_from(targets), "dst")
        os.rename(self.p(src), self.p(dst))
        self.files[dst] = self.files.pop(src)
        if src in self.mtimes:
            self.mtimes[dst] = self.mtimes.pop(src)
        else:
            self.mtimes.pop(dst, None)

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    @step
    def unlink(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)), "path")
        os.unlink(self.p(path))
        del self.files[path]
        self.mtimes.pop(path, None)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), when=st.integers(0, 50_000_000))
    @step
    def utime(self, data: st.DataObject, when: int) -> None:
        path = data.draw(st.sampled_from(sorted(self.files)), "path")
        os.utime(self.p(path), (OLD + when, OLD + when))
        self.mtimes[path] = OLD + when

    # ------------------------------------------------------------------ folders

    @rule(data=st.data())
    @step
    def mkdir(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from([f for f in self.all_folders() if depth(f) < 2]),
                           "parent")
        path = join(parent, data.draw(st.sampled_from(FOLDER_NAMES), "name"))
        if self.exists(path):
            assert errno_of(lambda: os.mkdir(self.p(path))) == errno.EEXIST
            return
        os.mkdir(self.p(path))
        self.folders.add(path)

    @precondition(lambda self: self.folders)
    @rule(data=st.data())
    @step
    def rmdir(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(self.folders)), "path")
        if not self.empty(path):
            code = errno_of(lambda: os.rmdir(self.p(path)))
            assert code == errno.ENOTEMPTY, f"rmdir of non-empty {path}: {code}"
            return
        os.rmdir(self.p(path))
        self.folders.discard(path)

    @precondition(lambda self: self.folders)
    @rule(data=st.data())
    @step
    def rename_folder(self, data: st.DataObject) -> None:
        src = data.draw(st.sampled_from(sorted(self.folders)), "src")
        below = [f for f in self.folders if f.startswith(src + "/")]
        height = max([depth(f) for f in below], default=depth(src)) - depth(src) + 1
        parents = [f for f in self.all_folders()
                   if f != src and not f.startswith(src + "/") and depth(f) + height <= MAX_DEPTH]
        if not parents:
            return
        parent = data.draw(st.sampled_from(parents), "parent")
        dst = join(parent, data.draw(st.sampled_from(FOLDER_NAMES), "name"))
        if dst == src:
            return
        if dst in self.folders and not self.empty(dst):
            code = errno_of(lambda: os.rename(self.p(src), self.p(dst)))
            assert code == errno.ENOTEMPTY, f"rename {src} onto non-empty {dst}: {code}"
            return
        os.rename(self.p(src), self.p(dst))
        self.folders.discard(dst)

        def moved(path: str) -> str:
            return dst + path[len(src):]

        under = src + "/"
        self.folders = {moved(f) if f == src or f.startswith(under) else f
                        for f in self.folders}
        self.files = {moved(p) if p.startswith(under) else p: d for p, d in self.files.items()}
        self.mtimes = {moved(p) if p.startswith(under) else p: t for p, t in self.mtimes.items()}

    # ------------------------------------------------------------------ another client

    def free_file_slots(self) -> list[str]:
        return [join(f, n) for f in self.all_folders() for n in UPLOADABLE
                if not self.exists(join(f, n))]

    def free_folder_slots(self) -> list[str]:
        return [join(f, n) for f in self.all_folders() if depth(f) < 2 for n in FOLDER_NAMES
                if not self.exists(join(f, n))]

    @precondition(lambda self: self.free_file_slots())
    @rule(data=st.data(), number=st.integers(0, 60))
    @step
    def api_upload(self, data: st.DataObject, number: int) -> None:
        path = data.draw(st.sampled_from(self.free_file_slots()), "path")
        self.files[path] = self.api_put(parent_of(path), path.rpartition("/")[2], number)
        self.after_api_change()

    @precondition(lambda self: any(uploadable(p) for p in self.files))
    @rule(data=st.data())
    @step
    def api_archive(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(sorted(p for p in self.files if uploadable(p))),
                         "path")
        self.sync()  # so the image at that path is the one the model holds
        image = self.service_images()[path]
        self.client.images.delete(image.id)
        del self.files[path]
        self.mtimes.pop(path, None)
        self.after_api_change()

    @precondition(lambda self: self.free_folder_slots())
    @rule(data=st.data())
    @step
    def api_mkdir(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(self.free_folder_slots()), "path")
        folders_api.create_folder(self.client.transport, self.dataset.id, "/" + path)
        self.folders.add(path)
        self.after_api_change()

    # ------------------------------------------------------------------ the service

    @precondition(lambda self: self.since_sync >= 4)
    @rule()
    @step
    def sync_and_compare(self) -> None:
        self.sync()
        self.check_service()


@pytest.mark.timeout(900 if not LONG else 7200)  # a failure shrinks for up to 5 minutes
def test_mount_agrees_with_a_model_under_random_operations(client, mount, tmp_path, request):
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    class Bound(MountMachine):
        pass

    Bound.client, Bound.mount, Bound.scratch = client, staticmethod(mount), scratch
    chosen = request.config.getoption("hypothesis_seed", None)
    used = int(chosen) if chosen is not None else SEED
    seed(used)(Bound)
    started = time.monotonic()
    run_state_machine_as_test(Bound, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
        suppress_health_check=list(HealthCheck), print_blob=True))
    FIGURES["seconds"] = round(time.monotonic() - started, 1)
    print(f"\ndifferential: seed {used}, long={LONG}, {FIGURES}")
    assert FIGURES["examples"] >= 1 and FIGURES["steps"] > 0
