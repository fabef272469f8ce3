"""Read-side benchmark of the pictofs mount against the plain alternatives, in one run.

Run: ``python tests/bench/bench_read.py [--quick]`` (needs /dev/fuse and fusermount3). The
name keeps it out of pytest's collection (``test_*.py``): it is a script, not a test.

It starts its own reference server in a temporary folder, seeds a dataset, mounts it with
``pictofs mount`` and measures, each as the median of several repetitions:

1. cold read of N × 2 MB images through a fresh mount with an empty cache (``cat big/*``:
   list the folder, then read every file sequentially) vs ``client.images.download`` of the
   same images one after the other; target ≤ 1.2×;
2. repeat read of the cached images vs reading the same bytes from local disk; target ≤ 1.1×:
   (a) on the same mount with the kernel page cache dropped before every run (when
   ``/proc/sys/vm/drop_caches`` can be written; the local read is then cold too),
   (b) on a fresh remount over the same cache folder, which guarantees the kernel page cache
   of the mount is not used (the folder is listed before the timed read; the local files and
   the cache files are both in the page cache), and (c) on the same mount, read before, so
   the kernel keeps its page cache across opens (``keep_cache``) as users see on a repeat
   read; (a) and (b) stay as the harsher reference;
3. the first ``ls -l`` of a 10,000-image folder on a fresh mount vs paging the API the way the
   mount must (``list_page`` pages of 1000 until ``has_more`` is false, plus the folders
   call); target ≤ 1.5×;
4. a warm ``ls -l`` (the same mount, within ``--dir-cache-time`` but after the kernel's 1 s
   attribute timeout, so the kernel asks the daemon again and gets its answers from the
   listing cache: one READDIRPLUS pass, no lookup per entry) vs ``ls -l``
   through a minimal mfusepy passthrough of a local folder of 10,000 files (``passthrough.py``,
   measured the same way); target ≤ 1.0×.

Every ratio is pictofs time / baseline time, printed with its target and PASS or MISS. Under
the table: reference timings that locate the floor (the same work through the passthrough,
the API stream alone, the local folder without FUSE) and the requests the server saw during
the first repetition of each measurement, compared with what they should be. The report is
printed as plain text and again as Markdown for the docs. Everything (mounts, daemons, the
server, temporary folders) is cleaned up, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # harness, seed, imagegen

from harness import ServerHandle, start_server, stop_server  # noqa: E402
from imagegen import sized_jpeg  # noqa: E402
from seed import seed_images  # noqa: E402

from pictofs.api import Client  # noqa: E402
from pictofs.api import folders as folders_api  # noqa: E402
from pictofs.api import images as images_api  # noqa: E402
from pictofs.fs.fuse_session import abort_connection, mount_device  # noqa: E402

PASSTHROUGH = Path(__file__).resolve().parent / "passthrough.py"
IMAGE_SIZE = 2 * 1024 * 1024
READ_BUFFER = 128 * 1024  # what cat uses
KERNEL_ATTR_TIMEOUT = 1.0  # pictofs: min(1 s, --dir-cache-time); libfuse's default: 1 s
DIR_CACHE_TIME = "5m"  # long enough that no listing expires during a measurement
API = "/api/v1/developer"
LIST_IMAGES = "GET /images/"
FOLDERS = "GET /directories/{dataset}"
IMAGE_BYTES = "GET /images/{image_id}"


@dataclass(frozen=True)
class Sizes:
    repetitions: int
    images: int
    listing: int


FULL = Sizes(repetitions=5, images=20, listing=10_000)
QUICK = Sizes(repetitions=2, images=5, listing=2_000)


@dataclass
class Row:
    """One line of the table: pictofs against its baseline."""

    key: str
    name: str
    baseline: str
    target: float
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def measured(self) -> bool:
        return bool(self.ours and self.base)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.base)

    @property
    def verdict(self) -> str:
        return "PASS" if self.ratio <= self.target else "MISS"


@dataclass
class Requests:
    """What the server saw during one measurement, and what it should have seen."""

    what: str
    seen: Counter[str]
    expected: Counter[str]
    why: str = ""


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def spread(times: list[float]) -> str:
    """Median with the range of the repetitions: ``12.3 ms (11–15)``."""
    return f"{ms(statistics.median(times))} ({min(times) * 1000:.0f}–{max(times) * 1000:.0f})"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def cat(paths: list[Path]) -> int:
    """Read every file sequentially in 128 KiB reads, as ``cat`` does; returns the bytes."""
    buffer = bytearray(READ_BUFFER)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total


def open_close(paths: list[Path]) -> None:
    for path in paths:
        os.close(os.open(path, os.O_RDONLY))


def ls_l(folder: Path, expected: int) -> None:
    """``ls -l folder``; checks that every entry was listed."""
    result = subprocess.run(["ls", "-l", str(folder)], capture_output=True, text=True,
                            env=dict(os.environ, LC_ALL="C"), timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"ls -l {folder}: {result.stderr.strip()[:500]}")
    rows = sum(1 for line in result.stdout.splitlines() if line.startswith("-"))
    if rows != expected:
        raise RuntimeError(f"ls -l {folder} listed {rows} files, expected {expected}")


def drop_page_cache() -> str | None:
    """Drop the kernel page cache; None when that worked, else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def route_counts(server: ServerHandle) -> Counter[str]:
    """Requests so far by "METHOD route", without the benchmark's own /metrics reads."""
    counts: Counter[str] = Counter()
    for (method, route, _status), n in server.metrics().items():
        if route != "/metrics":
            counts[f"{method} {route.removeprefix(API)}"] += n
    return counts


def force_unmount(path: Path) -> None:
    abort_connection(str(path))
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


def wait_for_mount(path: Path, process: subprocess.Popen[bytes], timeout: float = 30,
                   what: str = "passthrough") -> None:
    """Wait until ``process`` (a foreground FUSE daemon, ``what``) has mounted ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mount_device(str(path)) is not None:
            return
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode} before mounting")
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not mount {path} in {timeout}s")


# --------------------------------------------------------------------------- the run


class Workspace:
    """A bench's temporary folder (``root``), the numbered folders made in it, and the logs
    of the mounts made there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.counter = 0  # folders made so far (it numbers the mounts' logs too)
        self.logs: list[Path] = []  # the mounts' log files

    def fresh_dir(self, name: str) -> Path:
        self.counter += 1
        path = self.root / f"{name}{self.counter}"
        path.mkdir()
        return path

    def tracebacks(self) -> list[Path]:
        """The mount logs that hold a traceback."""
        return [p for p in self.logs if p.exists() and "Traceback" in p.read_text()]

    def start_reference_server(self) -> tuple[ServerHandle, Client]:
        """The reference server, its data in ``root/server`` and its log beside, and a
        client of it."""
        server = start_server(self.root / "server", self.root / "server.log")
        return server, Client(api_key=server.key, base_url=server.base_url)


def exit_on_sigterm() -> None:
    """SIGTERM ends a run as an exception does, so that its mounts and servers go too."""
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def run_and_report(bench: Any, measure: Callable[[], None], render: Callable[[bool], str],
                   on_failure: Callable[[], None] | None = None) -> int:
    """How every bench's run ends: ``measure`` (its rows and notes), then a note naming the
    mount logs that hold a traceback (``Workspace.tracebacks``); ``bench`` is closed and
    its temporary folder removed however that went (``on_failure`` first, when it raised);
    then the report, as text and as Markdown."""
    try:
        measure()
        broken = bench.tracebacks()
        if broken:
            bench.notes.append("Tracebacks in the mount logs: "
                               + ", ".join(p.name for p in broken))
    except BaseException:
        if on_failure is not None:
            on_failure()
        raise
    finally:
        bench.close()
        shutil.rmtree(bench.root, ignore_errors=True)
    print(render(False))
    print("\n--- Markdown ---\n")
    print(render(True))
    return 0


class Bench(Workspace):
    """The temporary world of one run, its measurements, and everything to tear down."""

    def __init__(self, root: Path, sizes: Sizes, mount_options: tuple[str, ...] = ()) -> None:
        super().__init__(root)
        self.sizes = sizes
        self.mount_options = mount_options  # extra `pictofs mount` options (--mount-option)
        self.server: ServerHandle | None = None
        self.client: Client | None = None
        self.env: dict[str, str] = {}
        self.dataset = "bench"
        self.dataset_id = ""
        self.mounts: list[Path] = []
        self.passthrough: tuple[Path, subprocess.Popen[bytes]] | None = None
        self.rows: list[Row] = []
        self.references: list[tuple[str, list[float]]] = []
        self.requests: list[Requests] = []
        self.notes: list[str] = []

    # -- setup ------------------------------------------------------------------------------

    def start(self) -> None:
        log("starting the reference server")
        self.server, self.client = self.start_reference_server()
        self.env = dict(os.environ, PICTOGRAPH_API_KEY=self.server.key,
                        PICTOGRAPH_BASE_URL=self.server.base_url)
        self.dataset_id = self.client.projects.create(self.dataset).id

    def seed(self, listing: bool = True) -> None:
        """``listing``: also the folder of rows 3 and 4 (not needed for row 1 alone)."""
        assert self.client is not None
        n, count = self.sizes.images, self.sizes.listing if listing else 0
        log(f"seeding {n} × 2 MB images into /big and {count} images into /many")
        big = seed_images(self.client, self.dataset_id, "/big",
                          [f"photo{i:03d}.jpg" for i in range(n)],
                          data_for=lambda name: sized_jpeg(IMAGE_SIZE, int(name[5:8])))
        many = seed_images(self.client, self.dataset_id, "/many",
                           [f"img{i:05d}.png" for i in range(count)])
        self.big = {name: image for name, (image, _data) in big.items()}
        self.big_data = {name: data for name, (_image, data) in big.items()}
        self.local_big = self.fresh_dir("local-big")
        self.local_many = self.fresh_dir("local-many")
        for name, data in self.big_data.items():
            (self.local_big / name).write_bytes(data)
        for name, (_image, data) in many.items():
            (self.local_many / name).write_bytes(data)

    # -- mounts -----------------------------------------------------------------------------

    def pictofs(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def mount(self, cache_dir: Path) -> Path:
        mountpoint = self.fresh_dir("mnt")
        log_file = self.root / f"mount{self.counter}.log"
        self.logs.append(log_file)
        result = self.pictofs("mount", self.dataset, str(mountpoint), "--cache-dir",
                              str(cache_dir), "--dir-cache-time", DIR_CACHE_TIME,
                              "--log-file", str(log_file), *self.mount_options)
        if result.returncode != 0:
            raise RuntimeError(f"pictofs mount failed: {result.stderr.strip()}")
        self.mounts.append(mountpoint)
        return mountpoint

    def daemon_reads(self, mountpoint: Path) -> int:
        """How many ``read`` callbacks the mount's daemon has served (``pictofs status``)."""
        result = self.pictofs("status", "--json", str(mountpoint))
        if result.returncode != 0:
            raise RuntimeError(f"pictofs status failed: {result.stderr.strip()}")
        return int(json.loads(result.stdout)["reads"])

    def umount(self, mountpoint: Path) -> None:
        self.mounts.remove(mountpoint)
        result = self.pictofs("umount", str(mountpoint))
        if result.returncode != 0:
            log(f"pictofs umount {mountpoint} failed ({result.stderr.strip()}); forcing it")
            force_unmount(mountpoint)

    def mount_passthrough(self, source: Path, *options: str) -> Path:
        mountpoint = self.fresh_dir("passthrough")
        with open(self.root / "passthrough.log", "ab") as log_file:
            process = subprocess.Popen([sys.executable, str(PASSTHROUGH), *options, str(source),
                                        str(mountpoint)], stdin=subprocess.DEVNULL,
                                       stdout=log_file, stderr=subprocess.STDOUT)
        self.passthrough = (mountpoint, process)
        wait_for_mount(mountpoint, process)
        return mountpoint

    def stop_passthrough(self) -> None:
        if self.passthrough is None:
            return
        mountpoint, process = self.passthrough
        self.passthrough = None
        if mount_device(str(mountpoint)) is not None:
            result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
            if result.returncode != 0:
                force_unmount(mountpoint)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Tear everything down; never raises."""
        for mountpoint in list(self.mounts):
            try:
                self.umount(mountpoint)
            except Exception as exc:  # keep cleaning up
                log(f"cleanup: {mountpoint}: {exc}")
        try:
            self.stop_passthrough()
        except Exception as exc:
            log(f"cleanup: passthrough: {exc}")
        for path in self.root.iterdir():  # anything still mounted below the temp folder
            if mount_device(str(path)) is not None:
                force_unmount(path)
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            stop_server(self.server)

    # -- bookkeeping ------------------------------------------------------------------------

    def record_requests(self, what: str, before: Counter[str], expected: dict[str, int],
                        why: str = "") -> None:
        assert self.server is not None
        after = route_counts(self.server)
        seen = Counter({k: after[k] - before[k] for k in after if after[k] != before[k]})
        self.requests.append(Requests(what, seen, Counter(expected), why))

    def reference(self, what: str, action: Callable[[], object],
                  before_each: Callable[[], object] | None = None) -> None:
        times = []
        for _ in range(self.sizes.repetitions):
            if before_each:
                before_each()
            times.append(timed(action))
        self.references.append((what, times))

    # -- 1. cold read -----------------------------------------------------------------------

    def cold_read(self) -> Path:
        """Returns a cache folder filled by the last repetition (for the repeat reads)."""
        assert self.client is not None and self.server is not None
        client = self.client
        n, reps = self.sizes.images, self.sizes.repetitions
        row = Row("1", f"Cold read, {n} × 2 MB (`cat big/*`, empty cache)",
                  "`client.images.download` of each, sequential", 1.2)
        expected = n * IMAGE_SIZE
        cache = self.root
        for rep in range(reps):
            log(f"cold read {rep + 1}/{reps}")
            cache = self.fresh_dir("cache")
            mountpoint = self.mount(cache)
            before = route_counts(self.server)

            def read_through_mount() -> None:
                folder = mountpoint / "big"
                got = cat([folder / name for name in sorted(os.listdir(folder))])
                if got != expected:
                    raise RuntimeError(f"read {got} bytes through the mount, expected {expected}")

            row.ours.append(timed(read_through_mount))
            if rep == 0:
                self.record_requests(row.name, before,
                                     {IMAGE_BYTES: n, LIST_IMAGES: 1, FOLDERS: 2},
                                     "a folders call to find `big` in the root, then the "
                                     "listing of `big` (one page + its folders call)")
                for name, data in self.big_data.items():  # untimed: the bytes are right
                    if (mountpoint / "big" / name).read_bytes() != data:
                        raise RuntimeError(f"big/{name} read through the mount differs")
            self.umount(mountpoint)
            if rep + 1 < reps:
                shutil.rmtree(cache)

            out = self.fresh_dir("downloads")

            def download() -> None:
                for name, image in sorted(self.big.items()):
                    client.images.download(image.id, output_path=out / name)

            row.base.append(timed(download))
            shutil.rmtree(out)
        self.rows.append(row)

        def stream_only() -> None:
            for _name, image in sorted(self.big.items()):
                with images_api.open_bytes(client.transport, image.id) as stream:
                    for _chunk in stream:
                        pass

        self.reference(f"API stream of the {n} images, bytes dropped (no file, no fsync)",
                       stream_only)
        return cache

    # -- 2. repeat read ---------------------------------------------------------------------

    def repeat_read(self, cache: Path) -> None:
        assert self.server is not None
        n, reps = self.sizes.images, self.sizes.repetitions
        names = sorted(self.big)
        local = [self.local_big / name for name in names]

        dropped = Row("2a", f"Repeat read, {n} × 2 MB, same mount, page cache dropped",
                      "the same files on local disk, page cache dropped", 1.1)
        mountpoint = self.mount(cache)
        paths = [mountpoint / "big" / name for name in names]
        cat(paths)  # the listing is known and every cache entry has been opened once
        problem = drop_page_cache()
        if problem is None:
            self.notes.append("Kernel page cache: dropped before every run of 2a "
                              "(`echo 3 > /proc/sys/vm/drop_caches` worked).")
            for rep in range(reps):
                log(f"repeat read, page cache dropped {rep + 1}/{reps}")
                before = route_counts(self.server)
                drop_page_cache()
                dropped.ours.append(timed(lambda: cat(paths)))
                if rep == 0:
                    self.record_requests(dropped.name, before, {})
                drop_page_cache()
                dropped.base.append(timed(lambda: cat(local)))
        else:
            dropped.note = f"drop_caches refused: {problem}"
            self.notes.append(f"Kernel page cache: could NOT be dropped ({problem}); "
                              "2a is not measured, 2b (fresh remount) still is.")
        self.umount(mountpoint)
        self.rows.append(dropped)

        remount = Row("2b", f"Repeat read, {n} × 2 MB, fresh remount (mount's page cache empty)",
                      "the same files on local disk (in page cache)", 1.1)
        cat(local)  # the local files are in the page cache, as the cache files are
        for rep in range(reps):
            log(f"repeat read, fresh remount {rep + 1}/{reps}")
            mountpoint = self.mount(cache)
            folder = mountpoint / "big"
            os.listdir(folder)  # as after an `ls`: the listing is known, not timed
            paths = [folder / name for name in names]
            before = route_counts(self.server)
            remount.ours.append(timed(lambda: cat(paths)))
            if rep == 0:
                self.record_requests(remount.name, before, {})
            self.umount(mountpoint)
            remount.base.append(timed(lambda: cat(local)))
        self.rows.append(remount)

        kept = Row("2c", f"Repeat read, {n} × 2 MB, same mount (kernel page cache kept)",
                   "the same files on local disk (in page cache)", 1.1)
        mountpoint = self.mount(cache)
        paths = [mountpoint / "big" / name for name in names]
        cat(paths)  # the first open of a path after a mount does not keep the page cache;
        cat(paths)  # from the second on the path maps to the same image id, and it is kept
        reads_before = self.daemon_reads(mountpoint)
        for rep in range(reps):
            log(f"repeat read, same mount, page cache kept {rep + 1}/{reps}")
            before = route_counts(self.server)
            kept.ours.append(timed(lambda: cat(paths)))
            if rep == 0:
                self.record_requests(kept.name, before, {})
            kept.base.append(timed(lambda: cat(local)))
        reads = self.daemon_reads(mountpoint) - reads_before
        self.notes.append(f"Repeat read on the same mount (2c): {reads} read callbacks reached "
                          f"the daemon during its {reps} timed runs (0: every byte came from "
                          "the kernel page cache).")
        self.umount(mountpoint)
        self.rows.append(kept)

        log("repeat read through the passthrough")
        passthrough = self.mount_passthrough(self.local_big)
        through = [passthrough / name for name in names]
        cat(through)
        if problem is None:
            self.reference(f"Passthrough read of the {n} local files, page cache dropped "
                           "(the FUSE floor of 2a)", lambda: cat(through), drop_page_cache)
        self.reference(f"Passthrough read of the {n} local files, backing files in page cache "
                       "(the FUSE floor of 2b)", lambda: cat(through))
        self.reference(f"Passthrough open and close of the {n} local files, no read (an "
                       "OPEN and a RELEASE per file reach the daemon in 2c too)",
                       lambda: open_close(through))
        self.stop_passthrough()

        log("repeat read through the passthrough, kernel page cache kept")
        passthrough = self.mount_passthrough(self.local_big, "--keep-cache")
        through = [passthrough / name for name in names]
        cat(through)
        cat(through)
        self.reference(f"Passthrough read of the {n} local files, read before, its kernel "
                       "page cache kept (the FUSE floor of 2c)", lambda: cat(through))
        self.stop_passthrough()

    # -- 3 and 4. ls -l ---------------------------------------------------------------------

    def listings(self) -> None:
        assert self.client is not None and self.server is not None
        count, reps = self.sizes.listing, self.sizes.repetitions
        pages = -(-count // images_api.PAGE_LIMIT)
        cold = Row("3", f"Cold `ls -l` of {count:,} images (fresh mount)",
                   f"API: {pages} `list_page` pages of 1000 + the folders call", 1.5)
        warm = Row("4", f"Warm `ls -l` of {count:,} images (same mount, listing cached)",
                   f"`ls -l` through the mfusepy passthrough of {count:,} local files", 1.0)
        transport = self.client.transport
        cache = self.fresh_dir("cache")

        def page_the_api() -> None:
            got, offset = 0, 0
            while True:
                page = images_api.list_page(transport, self.dataset_id, directory_path="/many",
                                            limit=images_api.PAGE_LIMIT, offset=offset)
                got += len(page.items)
                offset += len(page.items)
                if not page.has_more or not page.items:
                    break
            folders_api.list_folders(transport, self.dataset_id)
            if got != count:
                raise RuntimeError(f"the API listed {got} images, expected {count}")

        for rep in range(reps):
            log(f"cold and warm ls -l {rep + 1}/{reps}")
            mountpoint = self.mount(cache)
            before = route_counts(self.server)
            cold.ours.append(timed(lambda: ls_l(mountpoint / "many", count)))
            if rep == 0:
                self.record_requests(cold.name, before, {LIST_IMAGES: pages, FOLDERS: 2},
                                     f"{pages} image pages + 1 folders call for the listing, "
                                     "and 1 folders call to find `many` in the root")
            time.sleep(KERNEL_ATTR_TIMEOUT + 0.2)  # the kernel forgets; the daemon does not
            before = route_counts(self.server)
            warm.ours.append(timed(lambda: ls_l(mountpoint / "many", count)))
            if rep == 0:
                self.record_requests(warm.name, before, {})
            self.umount(mountpoint)
            cold.base.append(timed(page_the_api))

        log("ls -l through the passthrough")
        passthrough = self.mount_passthrough(self.local_many)
        ls_l(passthrough, count)  # the local folder's own caches are warm from here on
        for rep in range(reps):
            time.sleep(KERNEL_ATTR_TIMEOUT + 0.2)
            warm.base.append(timed(lambda: ls_l(passthrough, count)))
        self.stop_passthrough()
        self.rows.extend([cold, warm])
        self.reference(f"`ls -l` of the {count:,} local files without FUSE",
                       lambda: ls_l(self.local_many, count))


# --------------------------------------------------------------------------- the report


def table(rows: list[Row], markdown: bool) -> str:
    head = ["#", "Measurement", "pictofs", "Baseline", "Baseline time", "Ratio", "Target",
            "Result"]
    lines = []
    for row in rows:
        target = f"≤ {row.target:.1f}×"
        if row.measured:
            lines.append([row.key, row.name, spread(row.ours), row.baseline, spread(row.base),
                          f"{row.ratio:.2f}×", target, row.verdict])
        else:
            lines.append([row.key, row.name, "—", row.baseline, "—", "—", target,
                          f"not measured ({row.note})"])
    return grid(head, lines, markdown)


def grid(head: list[str], lines: list[list[str]], markdown: bool) -> str:
    """A table of strings: Markdown, or plain text in aligned columns."""
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*cells).rstrip() for cells in lines])


def counts_text(counts: Counter[str], markdown: bool) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{n} × `{k}`" if markdown else f"{n} x {k}"
                     for k, n in sorted(counts.items()))


def report(bench: Bench, sizes: Sizes, quick: bool, markdown: bool) -> str:
    bullet = "- " if markdown else "  "
    lines = [f"Medians of {sizes.repetitions} repetitions"
             f"{' (--quick: fewer and smaller)' if quick else ''}, range in parentheses (ms); "
             "ratio = pictofs median / baseline median, lower is better.", "",
             table(bench.rows, markdown), ""]
    lines.append("Reference timings (no target):")
    lines += [f"{bullet}{what}: {spread(times)}" for what, times in bench.references]
    lines += ["", "Requests the server saw during the first repetition:"]
    for r in bench.requests:
        verdict = "as expected" if r.seen == r.expected else \
            f"EXPECTED {counts_text(r.expected, markdown)}"
        why = f" — {r.why}" if r.why and r.seen == r.expected else ""
        lines.append(f"{bullet}{r.what}: {counts_text(r.seen, markdown)} ({verdict}){why}")
    if bench.notes:
        lines.append("")
        lines += [f"{bullet}{note}" for note in bench.notes]
    return "\n".join(lines)


def isolate_environment(root: Path) -> None:
    """Point HOME and XDG_* at ``root`` and drop PICTOGRAPH_*/PICTOFS_*, so the run cannot
    touch a real account, config file, cache or state folder."""
    for name, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "xdg-cache"),
                      ("XDG_STATE_HOME", "xdg-state"), ("XDG_DATA_HOME", "xdg-data"),
                      ("XDG_CONFIG_HOME", "xdg-config"), ("XDG_RUNTIME_DIR", "xdg-run")):
        path = root / sub
        path.mkdir(mode=0o700)
        os.environ[name] = str(path)
    for name in list(os.environ):
        if name.startswith(("PICTOGRAPH_", "PICTOFS_")):
            del os.environ[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.repetitions} repetitions, {QUICK.images} images, "
                             f"{QUICK.listing:,} files in the listing folder")
    parser.add_argument("--cold-only", action="store_true",
                        help="measure row 1 (the cold read) and its references only")
    parser.add_argument("--mount-option", action="append", default=[], metavar="OPTION",
                        help="pass OPTION to every `pictofs mount` (repeatable), e.g. "
                             "--mount-option=--prefetch=0")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    exit_on_sigterm()
    bench = Bench(Path(tempfile.mkdtemp(prefix="pictofs-bench-")), sizes,
                  tuple(args.mount_option))
    load_before = load_average()

    def measure() -> None:
        isolate_environment(bench.root)
        bench.start()
        bench.seed(listing=not args.cold_only)
        cache = bench.cold_read()
        if not args.cold_only:
            bench.repeat_read(cache)
            bench.listings()
        bench.notes.append(f"Load average (1 min) at start / end: {load_before} / "
                           f"{load_average()} on {os.cpu_count()} CPUs.")

    return run_and_report(bench, measure,
                          lambda markdown: report(bench, sizes, args.quick, markdown=markdown))


if __name__ == "__main__":
    sys.exit(main())
