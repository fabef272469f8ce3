"""Write-side benchmark of the pictofs mount against the plain alternatives, in one run.

Run: ``python tests/bench/bench_write.py [--quick] [--rsync-only] [--rows 1f,1h]
[--repetitions N]`` (needs /dev/fuse, fusermount3, ``cp`` and ``rsync``). The name keeps it
out of pytest's collection (``test_*.py``): it is a script, not a test. ``--rows`` measures
only the rows named (with their baselines), ``--repetitions`` sets how many times each copy
is made.

It starts its own reference server in a temporary folder, writes N distinct 100 KB JPEGs into
a local folder ``photos/`` and measures, each as the median of several repetitions:

1. the copy, against the floor every FUSE filesystem in Python pays: the same copy through
   the minimal writable mfusepy passthrough (``passthrough.py --writable``, one system call
   per callback, nothing fsync'd), and against the bulk workflow:
   - 1a/1b ``cp -r photos MOUNT/`` then ``pictofs sync MOUNT`` (total wall time, both
     commands) vs ``upload_dataset_from_folder(max_workers=8)`` of the same folder (which
     also lands the files in ``/photos``), each repetition into a fresh dataset, with
     ``--write-back`` at its default (2s) and short (200ms); target ≤ 1.3×;
   - 1c/1d the ``cp -r`` alone of 1a/1b (uploads start while it runs) vs ``cp -r`` through
     the passthrough; target ≤ 1.3×. Under the table, 1d's floor: the passthrough's ``cp -r``
     while ``upload_dataset_from_folder`` uploads the same files (a copy sharing the machine
     with an upload, as 1d's does);
   - 1e ``cp -r`` through a mount whose uploads are held back (``--write-back 1h``) with a
     proxy that delays every request by 50 ms vs without: the copy must not wait on the
     network; target ≤ 1.2×;
   - 1f that ``cp -r`` with uploads held back, without the proxy, vs the passthrough's
     ``cp -r``; target ≤ 1.2×;
   - 1g the first ``rsync -a photos MOUNT/`` into a fresh dataset vs the first ``rsync -a``
     into the passthrough; target ≤ 1.3× (under the table, the same ``rsync -a`` through the
     checked passthrough of 1i, 1g's floor of the promises);
   - 1h the daemon's CPU time (user + system, ``/proc/PID/stat``) for 1a's ``cp -r`` and
     ``pictofs sync`` together, per image; target ≤ 1.5 ms. Under the table, two floors
     measured in the same run: the minimal passthrough's daemon CPU for the ``cp -r`` plus
     the bulk workflow's (client side) for the upload, and the same with the checked
     passthrough of 1i (the floor of the promises);
   - 1i (no target: the floor of what pictofs promises) 1f's ``cp -r`` vs the same copy
     through the *checked* passthrough (``passthrough.py --checked``): the writable one plus
     the work a copy into pictofs cannot skip, per file: sha256 of the bytes as they are
     written, Pillow's check of the header at the flush, the flush recorded beside the
     bytes (one ``fsetxattr``), and a filesystem with extended attributes (the kernel then
     asks for ``security.capability`` before every write). Under the table, its daemon's CPU
     per file.
   Where ``strace`` is installed, one more (untimed) ``cp -r`` + ``pictofs sync`` counts the
   daemon's fsync-family system calls (under the table);
2. the second ``rsync -a photos MOUNT/`` (after a first ``rsync -a`` into a fresh dataset and
   ``pictofs sync``) vs the second ``rsync -a`` from the local folder to another local folder:
   target ≤ 3× and no upload at all (upload-url, register and storage PUT requests counted
   from the server's ``/metrics`` during every second run; ``rsync --stats`` must report 0
   files transferred). Measured on the same mount with the folder's listing cached (before
   every run, untimed: ``pictofs refresh`` and a listing of the folder, so the listing cannot
   expire during the run; then 1.2 s pass, longer than the kernel's 1 s timeouts of short
   ones, so what still answers from the kernel is what the listing handed it and the mount
   keeps for ``--dir-cache-time``; ``--rsync-only`` measures these rows alone) and on a
   fresh remount, where nothing is cached, as on the
   same mount once ``--dir-cache-time`` has passed (the mtimes that ``rsync -a`` set come from
   the state folder). ``rsync`` looks up each name of the target without listing it, so on a
   fresh mount the kernel asks the daemon about every file: under the table, 2b's floor is
   the same second ``rsync -a`` through a fresh mount of the minimal passthrough, measured
   in every repetition, with the names each 2b run had the daemon look up.

Where the run is root and ``mkfs.ext4`` is installed, every folder of the run (the source,
the server's data, the mounts' state and cache, the passthroughs' folders) is on a scratch
ext4 with a journal, the default of ``mkfs.ext4``, made in a sparse file and loop-mounted for
the run (``--no-scratch``: in the temporary folder's filesystem instead). The reason: on an
ext4 *without* a journal, creating a file skips every free inode deleted in the last minute
(five when its block is dirty), and reads each of them to learn it (the kernel's
``recently_deleted``); every copy of the run creates 1,000 files right after others were
deleted (the passthrough's copy removed, staging files of uploads done), so whichever copy
came after a removal paid for it: up to 0.6 ms of the daemon's CPU per created file, and
±30 % between repetitions. A journaled filesystem, what users run, does not do that.

Every ratio is pictofs time / baseline time, printed with its target and PASS or MISS.
Under the table: every repetition; reference timings (``pictofs sync`` with nothing pending,
the first ``rsync -a`` and its sync); the requests the server saw during the first
repetition of each measurement, next to what the bulk routes or a single listing would cost;
the machine, its load and the revision measured. The report is printed as plain text and
again as Markdown for the docs. The server, mount and teardown machinery is the read
benchmark's (``bench_read.py``). Everything (mounts, daemons, the proxy, the server,
temporary folders) is cleaned up, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

# bench_read (beside this script) puts tests/ on sys.path for faultproxy and imagegen
from bench_read import (
    KERNEL_ATTR_TIMEOUT,
    Bench,
    counts_text,
    exit_on_sigterm,
    force_unmount,
    grid,
    isolate_environment,
    log,
    route_counts,
    run_and_report,
)
from faultproxy import FaultProxy
from imagegen import sized_jpeg

from pictofs import workflows
from pictofs.api import images as images_api
from pictofs.core.upload.batch import REGISTER_PIECE

IMAGE_SIZE = 100_000
FOLDER = "photos"
WRITE_BACKS = ("2s", "200ms")  # the default, and a short one
ADDED_LATENCY = 0.05  # seconds the proxy adds to every request in the latency check
HELD_BACK = "1h"  # a write-back that keeps uploads from starting during a measurement
UPLOAD_ROUTES = ("POST /images/upload-url", "POST /images/bulk-upload-url",
                 "POST /images/register", "POST /images/bulk-register",
                 "PUT /storage/upload/{token}")


@dataclass(frozen=True)
class Sizes:
    repetitions: int  # of the copies (each uploads every file again)
    cheap_repetitions: int  # of the second rsync (no upload: seconds each)
    files: int


FULL = Sizes(repetitions=3, cheap_repetitions=9, files=1000)
QUICK = Sizes(repetitions=2, cheap_repetitions=3, files=100)
SCRATCH_BYTES = 16 * 1024**3  # the scratch filesystem's size (sparse: only what is written)


@contextlib.contextmanager
def scratch_filesystem(wanted: bool) -> Iterator[tuple[Path | None, str]]:
    """(the folder to make the run's temporary folder in, or None for the default; what it
    is, for the report): a journaled ext4 loop-mounted for the run (see the module
    docstring), unmounted and removed after it."""
    if not wanted:
        yield None, "the temporary folder's own filesystem (--no-scratch)"
        return
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        yield None, ("the temporary folder's own filesystem (a scratch ext4 needs root and "
                     "mkfs.ext4)")
        return
    holder = Path(tempfile.mkdtemp(prefix="pfs-scratch-"))
    image, mountpoint = holder / "ext4.img", holder / "fs"
    mountpoint.mkdir()
    try:
        with open(image, "wb") as sparse:
            sparse.truncate(SCRATCH_BYTES)
        run("mkfs.ext4", "-q", "-F", image)
        run("mount", "-o", "loop", image, mountpoint)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        shutil.rmtree(holder, ignore_errors=True)
        log(f"no scratch ext4 ({exc}); the run uses the temporary folder's filesystem")
        yield None, f"the temporary folder's own filesystem (no scratch ext4: {exc})"
        return
    try:
        yield mountpoint, "a scratch ext4 with a journal (mkfs.ext4's defaults, on a loop device)"
    finally:
        if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mountpoint], capture_output=True)
        shutil.rmtree(holder, ignore_errors=True)


# --------------------------------------------------------------------------- the table


def duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


@dataclass
class TimeRow:
    """pictofs time against a baseline time; ``target`` None: for information only."""

    key: str
    name: str
    baseline: str
    target: float | None
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.base)

    def cells(self) -> list[str]:
        if not (self.ours and self.base):
            return [self.key, self.name, "—", self.baseline, "—", "—", self.target_text(),
                    "not measured"]
        result = "—" if self.target is None else \
            "PASS" if self.ratio <= self.target else "MISS"
        return [self.key, self.name, duration(statistics.median(self.ours)), self.baseline,
                duration(statistics.median(self.base)), f"{self.ratio:.2f}×",
                self.target_text(), result]

    def target_text(self) -> str:
        return "—" if self.target is None else f"≤ {self.target:.1f}×"

    def spread(self) -> str:
        return (f"pictofs {', '.join(duration(t) for t in self.ours)}; "
                f"baseline {', '.join(duration(t) for t in self.base)}")


@dataclass
class CountRow:
    """Requests counted per repetition; the target is that none happens."""

    key: str
    name: str
    counts: list[int] = field(default_factory=list)

    def cells(self) -> list[str]:
        if not self.counts:
            return [self.key, self.name, "—", "—", "—", "—", "0", "not measured"]
        worst = max(self.counts)
        return [self.key, self.name, f"{worst} (worst of {len(self.counts)})", "—", "—", "—",
                "0", "PASS" if worst == 0 else "MISS"]

    def spread(self) -> str:
        return f"per run: {', '.join(str(n) for n in self.counts)}"


@dataclass
class ValueRow:
    """A figure measured per repetition (the daemon's CPU per file) against a fixed target."""

    key: str
    name: str
    unit: str
    target: float
    values: list[float] = field(default_factory=list)

    def cells(self) -> list[str]:
        if not self.values:
            return [self.key, self.name, "—", "—", "—", "—", self.target_text(),
                    "not measured"]
        median = statistics.median(self.values)
        return [self.key, self.name, f"{median:.2f} {self.unit}", "—", "—", "—",
                self.target_text(), "PASS" if median <= self.target else "MISS"]

    def target_text(self) -> str:
        return f"≤ {self.target:g} {self.unit}"

    def spread(self) -> str:
        return f"per run: {', '.join(f'{v:.2f} {self.unit}' for v in self.values)}"


Row = TimeRow | CountRow | ValueRow


@dataclass
class Seen:
    """The requests the server saw during one measurement; ``compare`` (with ``why``) is
    what they are held against, None when they are shown for information."""

    what: str
    seen: Counter[str]
    compare: Counter[str] | None = None
    why: str = ""

    def text(self, markdown: bool) -> str:
        line = f"{self.what}: {counts_text(self.seen, markdown)}"
        if self.compare is None:
            return line
        if self.seen == self.compare:
            return f"{line} (as expected)"
        return f"{line} (compare: {counts_text(self.compare, markdown)} — {self.why})"


def table(rows: list[Row], markdown: bool) -> str:
    head = ["#", "Measurement", "pictofs", "Baseline", "Baseline time", "Ratio", "Target",
            "Result"]
    lines = [row.cells() for row in rows]
    return grid(head, lines, markdown)


# --------------------------------------------------------------------------- helpers


def run(*command: str | Path, timeout: float = 900) -> str:
    """Run a command; its stdout, or RuntimeError with its stderr."""
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True,
                            env=dict(os.environ, LC_ALL="C"), timeout=timeout,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} exited {result.returncode}: "
                           f"{result.stderr.strip()[:1000]}")
    return result.stdout


def rsync(source: Path, target: Path) -> int:
    """``rsync -a source target/``; returns the number of regular files it transferred."""
    out = run("rsync", "-a", "--stats", source, f"{target}/")
    match = re.search(r"Number of regular files transferred: ([\d,]+)", out)
    if match is None:
        raise RuntimeError(f"no transfer count in the rsync --stats output: {out[:500]}")
    return int(match[1].replace(",", ""))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uploads_in(counts: Counter[str]) -> int:
    return sum(counts[route] for route in UPLOAD_ROUTES)


def diff(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before[k] for k in after if after[k] != before[k]})


def ideal_registers(n: int) -> int:
    """The bulk-register calls for ``n`` files in full batches (``images_api.BULK_LIMIT``):
    one per batch, or one per ``REGISTER_PIECE`` in a batch that registers in pieces."""
    calls = 0
    for start in range(0, n, images_api.BULK_LIMIT):
        size = min(images_api.BULK_LIMIT, n - start)
        calls += -(-size // REGISTER_PIECE) if size > 2 * REGISTER_PIECE else 1
    return calls


# --------------------------------------------------------------------------- the run


class WriteBench(Bench):
    """The temporary world of one run (server, mounts, teardown as for the read benchmark)
    with the write measurements."""

    def __init__(self, root: Path, sizes: Sizes) -> None:
        super().__init__(root, sizes)  # type: ignore[arg-type]  # only root/counter matter
        self.files = sizes.files
        self.reps = sizes.repetitions
        self.cheap_reps = sizes.cheap_repetitions
        self.write_rows: list[Row] = []
        self.proxy: FaultProxy | None = None
        self.datasets = 0
        self.seen: list[Seen] = []
        self.source_parent = root  # set by make_source
        self.source = root / FOLDER
        self.expected: dict[str, int] = {}  # file name → size, of the source folder
        self.local_copies: list[float] = []  # cp -r to local disk, per repetition
        self.shared_copies: list[float] = []  # row 1d's floor, per repetition
        self.checked_rsyncs: list[float] = []  # row 1g's floor of the promises
        # CPU per file (ms): the bulk workflow's process, the passthrough's daemon for cp -r
        self.workflow_cpu: list[float] = []
        self.passthrough_cpu: list[float] = []
        self.checked_cpu: list[float] = []  # the checked passthrough's, for row 1i
        self.held_cpu: list[float] = []  # the daemon's, for 1f's cp -r (uploads held back)
        self.rows: frozenset[str] | None = None  # --rows: the rows to measure (None: all)

    def wanted(self, *keys: str) -> bool:
        """Whether any of these rows is measured in this run (``--rows``)."""
        return self.rows is None or any(key in self.rows for key in keys)

    # -- setup ------------------------------------------------------------------------------

    def make_source(self) -> None:
        log(f"writing {self.files} × {IMAGE_SIZE // 1000} KB distinct JPEGs")
        self.source_parent = self.fresh_dir("source")
        self.source = self.source_parent / FOLDER
        self.source.mkdir()
        for i in range(self.files):
            name = f"photo{i:05d}.jpg"
            (self.source / name).write_bytes(sized_jpeg(IMAGE_SIZE, i))
            self.expected[name] = IMAGE_SIZE

    def new_dataset(self, kind: str) -> str:
        assert self.client is not None
        self.datasets += 1
        name = f"{kind}-{self.datasets}"
        self.client.projects.create(name)
        return name

    def check_landed(self, dataset: str) -> None:
        """Untimed: every file is in ``/photos`` of the dataset with its size, nothing else."""
        assert self.client is not None
        got = {image.filename: image.file_size for image in
               images_api.iter_images(self.client.transport, dataset,
                                      directory_path=f"/{FOLDER}")}
        if got != self.expected:
            missing = sorted(set(self.expected) - set(got))[:5]
            extra = sorted(set(got) - set(self.expected))[:5]
            raise RuntimeError(f"{dataset}: {len(got)} images landed, expected {self.files} "
                               f"(missing {missing}, unexpected {extra})")

    # -- mounts -----------------------------------------------------------------------------

    def mount_dataset(self, dataset: str, write_back: str = "2s", *,
                      base_url: str | None = None, cache: Path | None = None) -> Path:
        mountpoint = self.fresh_dir("mnt")
        log_file = self.root / f"mount{self.counter}.log"
        self.logs.append(log_file)
        env = dict(self.env, PICTOGRAPH_BASE_URL=base_url or self.env["PICTOGRAPH_BASE_URL"])
        result = subprocess.run(
            [sys.executable, "-m", "pictofs", "mount", dataset, str(mountpoint),
             "--cache-dir", str(cache or self.fresh_dir("cache")), "--write-back", write_back,
             "--log-file", str(log_file)],
            capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"pictofs mount failed: {result.stderr.strip()}")
        self.mounts.append(mountpoint)
        return mountpoint

    def sync(self, mountpoint: Path) -> None:
        result = self.pictofs("sync", str(mountpoint), timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"pictofs sync failed: {(result.stderr or result.stdout)[:1000]}")

    def lookups(self, mountpoint: Path) -> int:
        """The daemon's ``getattr`` callbacks so far (libfuse turns the kernel's lookups
        into them): how many names the kernel had to ask about."""
        result = self.pictofs("status", "--json", str(mountpoint))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs status failed: {(result.stderr or result.stdout)[:500]}")
        return int(json.loads(result.stdout)["callbacks"].get("getattr", 0))

    def refresh(self, mountpoint: Path) -> None:
        result = self.pictofs("refresh", str(mountpoint))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs refresh failed: {(result.stderr or result.stdout)[:500]}")

    def close(self) -> None:
        super().close()  # unmounts first: their daemons may still be talking to the proxy
        if self.proxy is not None:
            try:
                self.proxy.stop()
            except Exception as exc:
                log(f"cleanup: proxy: {exc}")

    # -- bookkeeping ------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        assert self.server is not None
        return route_counts(self.server)

    def record(self, what: str, before: Counter[str], compare: dict[str, int] | None = None,
               why: str = "") -> None:
        """Requests seen since ``before``."""
        self.seen.append(Seen(what, diff(self.counts(), before),
                              None if compare is None else Counter(compare), why))

    # -- 1. cp -r + sync vs upload_dataset_from_folder ---------------------------------------

    def copy(self) -> None:
        assert self.server is not None
        n = self.files
        keys = dict(zip(WRITE_BACKS, "ab"))
        totals = {wb: TimeRow(f"1{key}", f"`cp -r` {n:,} × 100 KB + `pictofs sync`, "
                                         f"`--write-back {wb}`",
                              "`upload_dataset_from_folder`, 8 workers", 1.3)
                  for wb, key in keys.items()}
        alone = {wb: TimeRow(f"1{'cd'[i]}", f"`cp -r` alone (the first part of 1{key}), "
                                            "uploads running",
                             "`cp -r` through the minimal passthrough", 1.3)
                 for i, (wb, key) in enumerate(keys.items())}
        latency = TimeRow("1e", f"`cp -r` alone, uploads held back (`--write-back {HELD_BACK}`), "
                                f"+{ADDED_LATENCY * 1000:.0f} ms on every request",
                          "the same without the added delay", 1.2)
        held = TimeRow("1f", f"`cp -r` alone, uploads held back (`--write-back {HELD_BACK}`)",
                       "`cp -r` through the minimal passthrough", 1.2)
        first_rsync = TimeRow("1g", f"First `rsync -a` of {n:,} files into a fresh dataset",
                              "first `rsync -a` through the minimal passthrough", 1.3)
        cpu = ValueRow("1h", "Daemon CPU per image, `cp -r` + upload (1a)", "ms", 1.5)
        promised = TimeRow("1i", "`cp -r` alone, uploads held back (1f)",
                           "`cp -r` through the checked passthrough (the floor of the promises)",
                           None)
        self.proxy = FaultProxy(self.server.base_url).start()
        self.proxy.delay_next(ADDED_LATENCY, count=10**9)  # every request, for the whole run
        want = self.wanted
        checked = None
        if want("1i", "1h", "1g"):  # mounted first, set aside: self.passthrough is the plain one
            checked = (self.mount_passthrough(self.fresh_dir("checked-data"), "--checked"),
                       self.passthrough[1] if self.passthrough else None)
            self.passthrough = None
        try:
            self._copies(keys, totals, alone, latency, held, first_rsync, cpu, promised,
                         checked)
        finally:
            if checked is not None:
                self.stop_passthrough()
                self.passthrough = checked  # type: ignore[assignment]
                self.stop_passthrough()
        self.references.append(("`cp -r` to local disk", self.local_copies))
        self.against_floor(
            "1g", first_rsync.ours, self.checked_rsyncs,
            "first `rsync -a` through the checked passthrough (row 1g's floor of the promises)")
        self.against_floor(
            "1d", alone[WRITE_BACKS[1]].ours, self.shared_copies,
            "`cp -r` through the minimal passthrough while `upload_dataset_from_folder` "
            "uploads the same files (row 1d's floor: a copy sharing the machine with an "
            "upload, as 1d's does with the uploads it starts)")
        # row 1h's floors: a passthrough's daemon CPU for the copy plus the workflow's
        floors = [("the passthrough's", self.passthrough_cpu,
                   "the floor of a FUSE copy plus an upload in Python"),
                  ("with what pictofs promises per file, the checked passthrough's",
                   self.checked_cpu if want("1h") else [], "the floor of the promises")]
        for whose, copy_cpu, what in floors:
            if copy_cpu and self.workflow_cpu:
                floor = statistics.median(copy_cpu) + statistics.median(self.workflow_cpu)
                than = (f"; 1h is {statistics.median(cpu.values) / floor:.2f}× that"
                        if cpu.values else "")
                self.notes.append(
                    f"CPU per image, for row 1h: {whose} daemon for `cp -r` "
                    f"{statistics.median(copy_cpu):.2f} ms, the bulk workflow's process "
                    f"(client side) for the upload {statistics.median(self.workflow_cpu):.2f}"
                    f" ms: {floor:.2f} ms together, {what}{than}.")
        if self.held_cpu and self.passthrough_cpu:
            self.notes.append(
                "CPU per file of the daemon for the `cp -r` of 1f (uploads held back): "
                f"{statistics.median(self.held_cpu):.2f} ms "
                f"({', '.join(f'{v:.2f}' for v in self.held_cpu)}), the passthrough's "
                f"{statistics.median(self.passthrough_cpu):.2f} ms "
                f"({', '.join(f'{v:.2f}' for v in self.passthrough_cpu)}).")
        if shutil.which("strace") and want("1h"):
            self.count_fsyncs()
        if self.checked_cpu and self.held_cpu:
            self.notes.append(
                "CPU per file of the checked passthrough for its `cp -r` (row 1i): "
                f"{statistics.median(self.checked_cpu):.2f} ms "
                f"({', '.join(f'{v:.2f}' for v in self.checked_cpu)}).")
        rows: list[Row] = [*totals.values(), *alone.values(), latency, held, first_rsync, cpu,
                           promised]
        self.write_rows += [row for row in rows if want(row.key)]

    def _copies(self, keys: dict[str, str], totals: dict[str, TimeRow],
                alone: dict[str, TimeRow], latency: TimeRow, held: TimeRow,
                first_rsync: TimeRow, cpu: ValueRow, promised: TimeRow,
                checked: tuple[Path, subprocess.Popen[bytes] | None] | None) -> None:
        """The repetitions of rows 1a to 1i (``checked``: the checked passthrough, set
        aside while the plain one is ``self.passthrough``)."""
        assert self.server is not None
        n = self.files
        want = self.wanted
        passthrough = self.mount_passthrough(self.fresh_dir("passthrough-data"), "--writable")
        for rep in range(self.reps):
            first = rep == 0
            log(f"copy {rep + 1}/{self.reps}: upload_dataset_from_folder; cp -r and rsync -a "
                "through the passthrough; cp -r to local disk")
            upload = self.upload_with_workflow(first) if want("1a", "1b", "1h") else 0.0
            cp_passthrough = self.passthrough_copy(passthrough, "cp") \
                if want("1c", "1d", "1f", "1h") else 0.0
            rsync_passthrough = self.passthrough_copy(passthrough, "rsync") \
                if want("1g") else 0.0
            if want("1d"):
                self.shared_copies.append(self.passthrough_copy_beside_upload(passthrough))
            local = self.fresh_dir("local-copy")
            cp_local = timed_run(lambda: run("cp", "-r", self.source, f"{local}/"))
            shutil.rmtree(local)
            self.local_copies.append(cp_local)
            for wb, key in keys.items():
                if not want(f"1{key}", f"1{'cd'[key == 'b']}",
                            *(["1h"] if wb == WRITE_BACKS[0] else [])):
                    continue
                log(f"copy {rep + 1}/{self.reps}: cp -r + sync, --write-back {wb}")
                copied, synced, cpu_used = self.copy_and_sync(wb, key, first)
                totals[wb].ours.append(synced)
                totals[wb].base.append(upload)
                alone[wb].ours.append(copied)
                alone[wb].base.append(cp_passthrough)
                if wb == WRITE_BACKS[0]:
                    cpu.values.append(cpu_used * 1000 / n)

            if want("1e", "1f", "1i"):
                log(f"copy {rep + 1}/{self.reps}: cp -r with the uploads held back")
                without_delay = self.copy_without_uploads(record=first)
                held.ours.append(without_delay)
                held.base.append(cp_passthrough)
            if checked is not None:
                log(f"copy {rep + 1}/{self.reps}: cp -r through the checked passthrough")
                plain, self.passthrough = self.passthrough, checked  # type: ignore[assignment]
                try:
                    checked_copy = self.passthrough_copy(checked[0], "cp", self.checked_cpu)
                finally:
                    self.passthrough = plain
                if want("1i"):
                    promised.base.append(checked_copy)
                    promised.ours.append(without_delay)
                if want("1g"):
                    self.checked_rsyncs.append(self.passthrough_copy(checked[0], "rsync"))
            if want("1e"):
                log(f"copy {rep + 1}/{self.reps}: cp -r with the uploads held back, "
                    f"+{ADDED_LATENCY * 1000:.0f} ms on every request")
                latency.base.append(without_delay)
                latency.ours.append(self.copy_without_uploads(base_url=self.proxy.url))

            if want("1g"):
                log(f"copy {rep + 1}/{self.reps}: the first rsync -a into a fresh dataset")
                first_rsync.ours.append(self.first_rsync())
                first_rsync.base.append(rsync_passthrough)
        self.stop_passthrough()

    def passthrough_copy(self, passthrough: Path, tool: str,
                         cpu: list[float] | None = None) -> float:
        """``cp -r`` or ``rsync -a`` of the source into a new folder of the writable
        passthrough (the floor of a copy through FUSE); its time."""
        target = passthrough / f"{tool}-{self.counter}"
        self.counter += 1
        target.mkdir()  # untimed, as the dataset is for pictofs
        if tool == "cp":
            assert self.passthrough is not None
            pid = self.passthrough[1].pid
            cpu_before = cpu_seconds(pid)
            elapsed = timed_run(lambda: run("cp", "-r", self.source, f"{target}/"))
            (self.passthrough_cpu if cpu is None else cpu).append(
                (cpu_seconds(pid) - cpu_before) * 1000 / self.files)
        else:
            elapsed = timed_run(lambda: rsync(self.source, target))
        shutil.rmtree(target)
        return elapsed

    def against_floor(self, key: str, ours: list[float], floor: list[float],
                      what: str) -> None:
        """Under the table: the floor's times (``what``) among the references, and row
        ``key``'s median against the floor's (when both were measured)."""
        if not floor:
            return
        self.references.append((what, floor))
        if ours:
            mine, theirs = statistics.median(ours), statistics.median(floor)
            self.notes.append(f"Row {key} against its floor, the {what.split(' (')[0]}: "
                              f"{duration(mine)} / {duration(theirs)} = {mine / theirs:.2f}×.")

    def passthrough_copy_beside_upload(self, passthrough: Path) -> float:
        """``cp -r`` through the passthrough while ``upload_dataset_from_folder`` uploads the
        same files into a fresh dataset, started just before it: the floor of row 1d, a copy
        through FUSE sharing the machine (the CPUs, the reference server) with an upload, as
        1d's copy shares it with the uploads it starts. Its time; the upload's is not
        counted (the copy ends first)."""
        dataset = self.new_dataset("beside")
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                self.workflow_upload(dataset)
            except BaseException as exc:  # reported below, after the copy
                errors.append(exc)

        uploading = threading.Thread(target=upload)
        uploading.start()
        try:
            elapsed = self.passthrough_copy(passthrough, "cp", cpu=[])
        finally:
            uploading.join()
        if errors:
            raise errors[0]
        self.check_landed(dataset)
        return elapsed

    def first_rsync(self) -> float:
        """The first ``rsync -a`` into a fresh dataset (default ``--write-back``); its time.
        Then, untimed, ``pictofs sync``, the unmount and the check that everything landed."""
        dataset = self.new_dataset("rsync-first")
        mountpoint = self.mount_dataset(dataset)
        start = time.perf_counter()
        transferred = rsync(self.source, mountpoint)
        elapsed = time.perf_counter() - start
        if transferred != self.files:
            raise RuntimeError(f"the first rsync transferred {transferred} files, expected "
                               f"{self.files}")
        self.sync(mountpoint)
        self.umount(mountpoint)
        self.check_landed(dataset)
        return elapsed

    def count_fsyncs(self) -> None:
        """Untimed: the fsync-family calls the daemon makes for one ``cp -r`` + ``pictofs
        sync`` (strace attached to every thread of the daemon)."""
        mountpoint = self.mount_dataset(self.new_dataset("cp-strace"))
        pid = self.daemon_pid(mountpoint)
        out = self.root / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(out), "-e",
                                   "trace=fsync,fdatasync,syncfs,sync_file_range,sync",
                                   "-p", str(pid)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # attached to every thread
            run("cp", "-r", self.source, f"{mountpoint}/")
            self.sync(mountpoint)
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        self.umount(mountpoint)
        calls = {m[2]: int(m[1]) for m in re.finditer(
            r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$",
            out.read_text(), re.M)} if out.exists() else {}
        summary = ", ".join(f"{calls.get(name, 0)} {name}" for name in
                            ("fsync", "fdatasync", "syncfs", "sync_file_range"))
        self.notes.append(f"fsync-family calls of the daemon (strace -f -c) for one `cp -r` of "
                          f"{self.files:,} files + `pictofs sync`: {summary}.")

    def daemon_pid(self, mountpoint: Path) -> int:
        result = self.pictofs("status", "--json", str(mountpoint))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs status failed: {(result.stderr or result.stdout)[:500]}")
        return int(json.loads(result.stdout)["pid"])

    def upload_with_workflow(self, first: bool) -> float:
        """The baseline: ``upload_dataset_from_folder`` into a fresh dataset; its time."""
        dataset = self.new_dataset("upload")
        before = self.counts()
        start, cpu_start = time.perf_counter(), time.process_time()
        self.workflow_upload(dataset)
        elapsed = time.perf_counter() - start
        self.workflow_cpu.append((time.process_time() - cpu_start) * 1000 / self.files)
        if first:
            self.record("1 baseline, `upload_dataset_from_folder`", before)
        self.check_landed(dataset)
        return elapsed

    def workflow_upload(self, dataset: str) -> None:
        """``upload_dataset_from_folder`` of the source into ``dataset``; every file must
        be uploaded."""
        assert self.client is not None
        result = workflows.upload_dataset_from_folder(
            self.client, dataset, folder=self.source_parent, organize_by_class=True,
            parallel=True, max_workers=8)
        if result.images_uploaded != self.files or result.failures:
            raise RuntimeError(f"upload_dataset_from_folder: {result}")

    def copy_and_sync(self, write_back: str, key: str, first: bool) -> tuple[float, float, float]:
        """``cp -r`` into a fresh mount, then ``pictofs sync``; the time of the ``cp -r`` and
        of both, and the CPU time the daemon used for both."""
        n = self.files
        dataset = self.new_dataset(f"cp-{write_back}")
        mountpoint = self.mount_dataset(dataset, write_back)
        pid = self.daemon_pid(mountpoint)
        before = self.counts()
        cpu_before = cpu_seconds(pid)
        start = time.perf_counter()
        run("cp", "-r", self.source, f"{mountpoint}/")
        copied = time.perf_counter()
        during_cp = self.counts()
        self.sync(mountpoint)
        synced = time.perf_counter()
        cpu_used = cpu_seconds(pid) - cpu_before
        if first:
            self.seen.append(Seen(f"1{key} during `cp -r` (before `pictofs sync`)",
                                  diff(during_cp, before)))
            self.record(f"1{key} `cp -r` + `pictofs sync`, in all", before,
                        {"PUT /storage/upload/{token}": n,
                         "POST /images/bulk-upload-url": -(-n // images_api.BULK_LIMIT),
                         "POST /images/bulk-register": ideal_registers(n),
                         "POST /directories/": 1},
                        "the bulk routes: one PUT per file, one upload-url call per "
                        f"{images_api.BULK_LIMIT} files and its registers (a batch of over "
                        f"{2 * REGISTER_PIECE} registers {REGISTER_PIECE} at a time as its "
                        "PUTs land), and the `mkdir`")
        self.umount(mountpoint)
        self.check_landed(dataset)
        if first and write_back == WRITE_BACKS[0]:
            self.idle_sync_reference(dataset)
        return copied - start, synced - start, cpu_used

    def copy_without_uploads(self, base_url: str | None = None, record: bool = False
                             ) -> float:
        """``cp -r`` through a mount whose uploads do not start during the run (so that only
        the requests ``cp`` itself waits for can depend on the network); then unmount with
        ``--force`` (the staged files stay in this run's temporary state folder)."""
        mountpoint = self.mount_dataset(self.new_dataset("cp-held"), HELD_BACK,
                                        base_url=base_url)
        pid = self.daemon_pid(mountpoint)
        before = self.counts()
        cpu_before = cpu_seconds(pid)
        elapsed = timed_run(lambda: run("cp", "-r", self.source, f"{mountpoint}/"))
        if base_url is None:
            self.held_cpu.append((cpu_seconds(pid) - cpu_before) * 1000 / self.files)
        if record:
            self.record("1e during `cp -r` with the uploads held back: what `cp` waits for",
                        before, {"GET /directories/{dataset}": 1, "POST /directories/": 1},
                        "the `mkdir` and finding `photos` absent in the root; nothing per file")
        self.mounts.remove(mountpoint)
        result = self.pictofs("umount", "--force", str(mountpoint))
        if result.returncode != 0:
            log(f"pictofs umount --force {mountpoint} failed ({result.stderr.strip()}); "
                "forcing it")
            force_unmount(mountpoint)
        return elapsed

    def idle_sync_reference(self, dataset: str) -> None:
        """``pictofs sync`` with nothing pending: the fixed cost inside rows 1a/1b."""
        mountpoint = self.mount_dataset(dataset)
        self.reference("`pictofs sync` with nothing pending (a CLI start-up)",
                       lambda: self.sync(mountpoint))
        self.umount(mountpoint)

    def reference(self, what: str, action: Callable[[], object],
                  before_each: Callable[[], object] | None = None) -> None:
        times = []
        for _ in range(self.reps):
            if before_each:
                before_each()
            times.append(timed_run(action))
        self.references.append((what, times))

    # -- 2. the second rsync -a -------------------------------------------------------------

    def second_rsync(self) -> None:
        n, reps = self.files, self.cheap_reps
        warm = TimeRow("2a", f"Second `rsync -a` of {n:,} files, same mount, listing cached",
                       "second `rsync -a` local → local", 3.0)
        cold = TimeRow("2b", f"Second `rsync -a` of {n:,} files, fresh remount (as after "
                             "`--dir-cache-time`)", "second `rsync -a` local → local", 3.0)
        uploads = CountRow("2c", "Upload requests during each second `rsync -a` (2a and 2b)")

        log("first rsync -a to local disk")
        local = self.fresh_dir("local-rsync")
        rsync(self.source, local)

        log("first rsync -a into a fresh dataset, then sync")
        dataset = self.new_dataset("rsync")
        cache = self.fresh_dir("cache")
        mountpoint = self.mount_dataset(dataset, cache=cache)
        before = self.counts()
        start = time.perf_counter()
        transferred = rsync(self.source, mountpoint)
        copied = time.perf_counter()
        self.sync(mountpoint)
        done = time.perf_counter()
        if transferred != n:
            raise RuntimeError(f"the first rsync transferred {transferred} files, expected {n}")
        self.references += [("first `rsync -a` into the mount (one run)", [copied - start]),
                            ("first `rsync -a` + `pictofs sync` (one run)", [done - start])]
        self.record("2 first `rsync -a` + `pictofs sync`", before)
        self.check_landed(dataset)

        def second_run(row: TimeRow, target: Path, seen: Counter[str]) -> None:
            before = self.counts()
            start = time.perf_counter()
            transferred = rsync(self.source, target)
            row.ours.append(time.perf_counter() - start)
            requests = diff(self.counts(), before)
            seen.update(requests)
            uploads.counts.append(uploads_in(requests))
            if transferred:
                raise RuntimeError(f"a second rsync -a ({row.key}) transferred {transferred} "
                                   "files, expected 0")
            row.base.append(timed_run(lambda: rsync(self.source, local)))

        seen_warm: Counter[str] = Counter()
        asked: list[int] = []
        for rep in range(reps):
            log(f"second rsync -a, same mount, listing cached {rep + 1}/{reps}")
            self.refresh(mountpoint)  # untimed: the listing is fetched again here, so it
            os.listdir(mountpoint / FOLDER)  # cannot expire during the run
            # past the kernel's 1 s timeout of old: what still answers from the kernel is
            # what the listing handed it, kept while the listing is fresh (performance.md)
            time.sleep(KERNEL_ATTR_TIMEOUT + 0.2)
            lookups = self.lookups(mountpoint)
            second_run(warm, mountpoint, seen_warm)
            asked.append(self.lookups(mountpoint) - lookups)
        self.umount(mountpoint)
        self.seen.append(Seen(f"2a second `rsync -a`, listing cached, all {reps} runs",
                              seen_warm, Counter(), "every name is in the cached listing"))
        self.notes.append("Names the kernel asked the daemon about (`getattr` callbacks) "
                          f"during each 2a run: {', '.join(map(str, asked))}.")

        seen_cold: Counter[str] = Counter()
        pages = -(-n // images_api.PAGE_LIMIT)
        # 2b's floor: the same second rsync -a through a fresh mount of the minimal
        # passthrough, whose kernel knows no name either and looks up every one
        floor_data = self.fresh_dir("passthrough-rsync")
        rsync(self.source, floor_data)
        floor: list[float] = []
        asked_cold: list[int] = []
        for rep in range(reps):
            log(f"second rsync -a, fresh remount {rep + 1}/{reps}")
            mountpoint = self.mount_dataset(dataset, cache=cache)
            time.sleep(KERNEL_ATTR_TIMEOUT + 0.2)  # as for 2a
            lookups = self.lookups(mountpoint)
            second_run(cold, mountpoint, seen_cold)
            asked_cold.append(self.lookups(mountpoint) - lookups)
            self.umount(mountpoint)
            passthrough = self.mount_passthrough(floor_data, "--writable")
            time.sleep(KERNEL_ATTR_TIMEOUT + 0.2)
            floor.append(timed_run(lambda: rsync(self.source, passthrough)))
            self.stop_passthrough()
        self.notes.append(
            "2b's floor: the second `rsync -a` through a fresh mount of the minimal passthrough "
            f"(its kernel looks up every name too): {duration(statistics.median(floor))} "
            f"({', '.join(duration(v) for v in floor)}); 2b is "
            f"{statistics.median(cold.ours) / statistics.median(floor):.2f}× that. Names the "
            "kernel asked the daemon about during each 2b run: "
            f"{', '.join(map(str, asked_cold))}.")
        self.seen.append(Seen(
            f"2b second `rsync -a`, fresh remount, all {reps} runs", seen_cold,
            Counter({"GET /images/": pages * reps, "GET /directories/{dataset}": 2 * reps}),
            f"listing the folder once per run: {pages} image page(s) and its folders call, "
            "and a folders call to find it in the root, as for `ls` on a fresh mount"))
        self.check_landed(dataset)
        self.write_rows += [warm, cold, uploads]


def timed_run(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- the report


def report(bench: WriteBench, quick: bool, markdown: bool) -> str:
    bullet = "- " if markdown else "  "
    lines = [f"{bench.files:,} distinct JPEGs of 100 KB; medians of {bench.reps} repetitions "
             f"(each into a fresh dataset), of {bench.cheap_reps} for 2a and 2b"
             f"{' (--quick: fewer files and repetitions)' if quick else ''}; "
             "ratio = pictofs / baseline, lower is better.", "",
             table(bench.write_rows, markdown), "", "Every repetition:"]
    lines += [f"{bullet}{row.key}: {row.spread()}" for row in bench.write_rows]
    lines += ["", "Reference timings (medians; no target):"]
    lines += [f"{bullet}{what}: {duration(statistics.median(times))}"
              for what, times in bench.references]
    lines += ["", "Requests the server saw (during the first repetition unless said otherwise):"]
    lines += [f"{bullet}{seen.text(markdown)}" for seen in bench.seen]
    if bench.notes:
        lines.append("")
        lines += [f"{bullet}{note}" for note in bench.notes]
    return "\n".join(lines)


def machine() -> str:
    """CPU, CPU count, kernel and Python, for the record."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def revision() -> str:
    """The commit measured, and whether the package had uncommitted changes."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "pictofs"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head} with uncommitted changes in pictofs/" if dirty.strip() else head


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def show_mount_logs(bench: WriteBench, lines: int = 40) -> None:
    """On failure: the end of the last mount log, and of every log with a traceback."""
    shown = [p for p in bench.logs if p.exists()][-1:] + bench.tracebacks()
    for path in dict.fromkeys(shown):
        log(f"--- the end of {path.name}:")
        log("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))


COPY_ROWS = ("1a", "1b", "1c", "1d", "1e", "1f", "1g", "1h", "1i")
RSYNC_ROWS = ("2a", "2b", "2c")


def parse_rows(text: str) -> frozenset[str]:
    """``--rows 1f,1h``: the row keys, each one of the table's."""
    keys = frozenset(key.strip() for key in text.split(",") if key.strip())
    unknown = keys - set(COPY_ROWS) - set(RSYNC_ROWS)
    if not keys or unknown:
        raise argparse.ArgumentTypeError(
            f"rows are {', '.join(COPY_ROWS + RSYNC_ROWS)}; not {', '.join(sorted(unknown))}")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.files} files, {QUICK.repetitions} and "
                             f"{QUICK.cheap_repetitions} repetitions (default: "
                             f"{FULL.files:,} files, {FULL.repetitions} and "
                             f"{FULL.cheap_repetitions})")
    parser.add_argument("--rsync-only", action="store_true",
                        help="measure only the second rsync -a (rows 2a to 2c)")
    parser.add_argument("--rows", type=parse_rows, default=None, metavar="KEYS",
                        help="measure only these rows, e.g. --rows 1f,1h (a row's baseline "
                             "is measured with it; 2a to 2c go together)")
    parser.add_argument("--repetitions", type=int, default=None, metavar="N",
                        help="repetitions of the copies (default: 3, --quick 2)")
    parser.add_argument("--no-scratch", action="store_true",
                        help="run in the temporary folder's filesystem, not on a scratch "
                             "journaled ext4 (see the module docstring)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.repetitions:
        sizes = dataclasses.replace(sizes, repetitions=args.repetitions)

    exit_on_sigterm()
    with scratch_filesystem(not args.no_scratch) as (scratch, where):
        return measure(args, sizes, scratch, where)


def measure(args: argparse.Namespace, sizes: Sizes, scratch: Path | None, where: str) -> int:
    bench = WriteBench(Path(tempfile.mkdtemp(prefix="pictofs-bench-write-", dir=scratch)), sizes)
    bench.rows = frozenset({"2a", "2b", "2c"}) if args.rsync_only else args.rows
    load_before, measured = load_average(), revision()

    def run() -> None:
        isolate_environment(bench.root)
        bench.start()
        bench.make_source()
        if bench.wanted(*COPY_ROWS):
            bench.copy()
        if bench.wanted(*RSYNC_ROWS):
            bench.second_rsync()
        bench.notes.append(f"Machine: {machine()}; load average (1 min) at start / end: "
                           f"{load_before} / {load_average()}. Revision: {measured}. "
                           f"The run's folders: {where}.")

    return run_and_report(bench, run, lambda markdown: report(bench, args.quick, markdown=markdown),
                          on_failure=lambda: show_mount_logs(bench))  # before the folder goes


if __name__ == "__main__":
    sys.exit(main())
